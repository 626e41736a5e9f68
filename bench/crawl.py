"""Benchmark: the crawler under a request budget, on the simulated Instagram.

Crawls a world that needs more requests than the budget allows, run after run, until every
post is stored. Checks that each run uses at least 90% of the budget while posts remain and
never exceeds it (the simulated Instagram's own count, not the crawler's), and reports posts
per second, requests per new post, and what the budget costs over one unlimited crawl of the
same world (resume files make an interrupted user continue rather than start over). Prints
JSON; exits 1 when a check fails.

The crawls run in this process (the crawl library's ``run``, as ``imgrate crawl`` calls it),
since only there can the simulated Instagram's own request count be read.

    python bench/crawl.py [--users 10] [--budget 300] [--until 2025-04-15] [--faults 0.0]
    python bench/crawl.py --smoke                       # 3 users, a month: seconds
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("IMGRATE_QUIET", "1")

from imgrate.crawl.stage import run
from imgrate.crawl.verify import verify_raw
from imgrate.params import CrawlParams
from imgrate.paths import Paths

from _common import count_servers, load, parser, record, with_params

NAME = "crawl"


def main() -> None:
    ap = parser(__doc__, NAME)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--budget", type=int, default=300, help="crawl.budget.max_requests")
    ap.add_argument("--until", default="2025-04-15", help="the world's clock (start: 2025-01-01)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--faults", type=float, default=0.0, help="fault rate (every kind)")
    ap.add_argument("--max-runs", type=int, default=50)
    args = ap.parse_args()
    if args.smoke:
        args.users, args.budget, args.until, args.image_size = 3, 40, "2025-02-01", 32
    logging.basicConfig(level=logging.ERROR)  # users stopped by the budget are expected here

    users = [f"bench_{i:02d}_lens" for i in range(args.users)]
    base = with_params(load(), {"crawl.shard_size": 100, "crawl.demo.seed": 3, "crawl.demo.start": "2025-01-01",
                                "crawl.demo.until": args.until, "crawl.demo.image_size": args.image_size,
                                "crawl.demo.mean_interval_days": 3.0, "crawl.demo.faults.rate": args.faults})

    def params(budget: int | None, seed: int) -> CrawlParams:
        return with_params(base, {"crawl.budget.max_requests": budget, "crawl.demo.faults.seed": seed}).crawl

    servers = count_servers()  # the simulated Instagram's own request count
    with record(args, NAME, world={"users": args.users, "until": args.until, "image_size": args.image_size,
                                   "fault_rate": args.faults}, budget=args.budget) as r, \
            tempfile.TemporaryDirectory(prefix="imgrate-bench-crawl-") as tmp:
        unlimited = run(params(None, 0), Paths(Path(tmp) / "unlimited"), users)
        total_posts = unlimited.new_posts
        r["world"]["posts"] = total_posts
        r["unlimited_crawl"] = {"requests": unlimited.requests,
                                "requests_per_post": round(unlimited.requests / max(total_posts, 1), 3),
                                "posts_per_second": round(total_posts / unlimited.seconds, 1),
                                "simulated_wait_s": round(sum(u.wait_s for u in unlimited.users), 1)}
        r.step("unlimited crawl")
        paths = Paths(Path(tmp) / "budgeted")
        runs: list[dict[str, Any]] = []
        r["per_run"] = runs
        t0 = time.perf_counter()
        for i in range(args.max_runs):
            start = time.perf_counter()
            report = run(params(args.budget, i), paths, users)
            seconds = time.perf_counter() - start
            runs.append({"requests": report.requests, "server_requests": servers[-1].requests,
                         "new_posts": report.new_posts, "seconds": round(seconds, 3),
                         "simulated_wait_s": round(sum(u.wait_s for u in report.users), 1),
                         "statuses": {s: n for s, n in report.to_metrics()["totals"].items()
                                      if s in ("ok", "skipped", "failed", "rate_limited") and n}})
            r["runs"] = len(runs)
            r.step(f"budgeted run {i + 1}: {report.new_posts} new posts")
            if all(u.status == "ok" for u in report.users):
                break
        wall = time.perf_counter() - t0
        stored = verify_raw(paths)

        busy = runs[:-1]  # every run but the last had posts left to fetch
        fractions = [x["server_requests"] / args.budget for x in busy]
        new_posts = sum(x["new_posts"] for x in runs)
        requests = sum(x["server_requests"] for x in runs)
        r.update({
            "min_budget_used_while_posts_remain": round(min(fractions), 4) if fractions else None,
            "max_requests_in_a_run": max(x["server_requests"] for x in runs),
            "never_exceeded": all(x["server_requests"] <= args.budget for x in runs),
            "crawler_count_matches_server": all(x["requests"] == x["server_requests"] for x in runs),
            "posts_per_second": round(new_posts / sum(x["seconds"] for x in runs), 1),
            "requests_per_new_post": round(requests / max(new_posts, 1), 3),
            "budget_overhead_requests": requests - unlimited.requests,
            "all_posts_stored": new_posts == total_posts and stored.ok and stored.posts == total_posts,
            "budgeted_wall_s": round(wall, 2),
        })
        r["targets_met"] = bool(r["never_exceeded"] and r["all_posts_stored"]
                                and (r["min_budget_used_while_posts_remain"] or 1.0) >= 0.9)
    raise SystemExit(0 if r["targets_met"] else 1)


if __name__ == "__main__":
    main()
