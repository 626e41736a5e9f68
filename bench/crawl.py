"""Benchmark: the crawler under a request budget, on the simulated Instagram.

Crawls a world that needs more requests than the budget allows, run after run, until every
post is stored. Checks that each run uses at least 90% of the budget while posts remain and
never exceeds it (the simulated Instagram's own count, not the crawler's), and reports posts
per second, requests per new post, and what the budget costs over one unlimited crawl of the
same world (resume files make an interrupted user continue rather than start over). Prints
JSON.

    python bench/crawl.py [--users 10] [--budget 300] [--until 2025-04-15] [--faults 0.0]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("IMGRATE_QUIET", "1")

from world import count_servers

from imgrate.crawl.stage import run
from imgrate.crawl.verify import verify_raw
from imgrate.params import BudgetParams, CrawlParams, DemoParams, FaultParams
from imgrate.paths import Paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--budget", type=int, default=300, help="crawl.budget.max_requests")
    ap.add_argument("--until", default="2025-04-15", help="the world's clock (start: 2025-01-01)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--faults", type=float, default=0.0, help="fault rate (every kind)")
    ap.add_argument("--max-runs", type=int, default=50)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # users stopped by the budget are expected here

    users = [f"bench_{i:02d}_lens" for i in range(args.users)]
    servers = count_servers()  # the simulated Instagram's own request count

    def params(budget: int | None, seed: int) -> CrawlParams:
        world = DemoParams(seed=3, start="2025-01-01", until=args.until, image_size=args.image_size,
                           mean_interval_days=3.0, faults=FaultParams(rate=args.faults, seed=seed))
        return CrawlParams(shard_size=100, budget=BudgetParams(max_requests=budget), demo=world)

    with tempfile.TemporaryDirectory(prefix="imgrate-bench-crawl-") as tmp:
        unlimited = run(params(None, 0), Paths(Path(tmp) / "unlimited"), users)
        total_posts = unlimited.new_posts
        paths = Paths(Path(tmp) / "budgeted")
        runs = []
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
            if all(u.status == "ok" for u in report.users):
                break
        wall = time.perf_counter() - t0
        stored = verify_raw(paths)

    busy = runs[:-1]  # every run but the last had posts left to fetch
    fractions = [r["server_requests"] / args.budget for r in busy]
    new_posts = sum(r["new_posts"] for r in runs)
    requests = sum(r["server_requests"] for r in runs)
    result = {
        "world": {"users": args.users, "until": args.until, "posts": total_posts, "image_size": args.image_size,
                  "fault_rate": args.faults},
        "budget": args.budget,
        "runs": len(runs),
        "per_run": runs,
        "min_budget_used_while_posts_remain": round(min(fractions), 4) if fractions else None,
        "max_requests_in_a_run": max(r["server_requests"] for r in runs),
        "never_exceeded": all(r["server_requests"] <= args.budget for r in runs),
        "crawler_count_matches_server": all(r["requests"] == r["server_requests"] for r in runs),
        "posts_per_second": round(new_posts / sum(r["seconds"] for r in runs), 1),
        "requests_per_new_post": round(requests / max(new_posts, 1), 3),
        "unlimited_crawl": {"requests": unlimited.requests,
                            "requests_per_post": round(unlimited.requests / max(total_posts, 1), 3),
                            "posts_per_second": round(total_posts / unlimited.seconds, 1),
                            "simulated_wait_s": round(sum(u.wait_s for u in unlimited.users), 1)},
        "budget_overhead_requests": requests - unlimited.requests,
        "all_posts_stored": new_posts == total_posts and stored.ok and stored.posts == total_posts,
        "wall_s": round(wall, 2),
    }
    print(json.dumps(result, indent=2))
    ok = (result["never_exceeded"] and result["all_posts_stored"]
          and (result["min_budget_used_while_posts_remain"] or 1.0) >= 0.9)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
