"""Benchmark: daily crawls against one crawl at the last day (issue 11), on the default world.

Crawls the simulated Instagram with ``crawl.demo.until`` ``--days`` days before the end, then
moves the clock one day at a time and crawls each day (what a cron job does), once with
``crawl.refresh_days`` as params.yaml sets it and once with 0 (no count is read again: the
crawler before issue 11). Exports and preprocesses each (``imgrate export``, ``imgrate
preprocess``), and compares them with one crawl at the last day: posts whose stored likes
differ, dataset rows and targets that differ, how much of their final likes the posts first
stored young hold, and what each daily crawl cost in requests (the simulated Instagram's own
count, against 1 + 5 per user + 3 per new post). Then crawls once more at the last clock
(nothing new: it must write nothing). Prints JSON.

The crawls run in this process (the crawl library's ``run``, as ``imgrate crawl`` calls it),
since only there can the simulated Instagram's own request count be read.

    python bench/labels.py [--days 30] [--users-file users.txt] [--users 0] [--image-size 64]
    python bench/labels.py --smoke                      # 3 users, 2 days: seconds
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("IMGRATE_QUIET", "1")

from imgrate.crawl.stage import run
from imgrate.crawl.users import read_users
from imgrate.crawl.verify import verify_raw
from imgrate.io import read_jsonl
from imgrate.params import CrawlParams
from imgrate.paths import Paths

from _common import ROOT, count_servers, imgrate, load, parser, record, with_params, write_params

NAME = "labels"


def main() -> None:
    ap = parser(__doc__, NAME)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--users-file", type=Path, default=ROOT / "users.txt")
    ap.add_argument("--users", type=int, default=0, help="only the first N users of the file; 0 = all")
    ap.add_argument("--image-size", type=int, default=64, help="px of the drawn photos (params.yaml: 320)")
    args = ap.parse_args()
    if args.smoke:
        args.days, args.users, args.image_size = 2, 3, 32
    logging.basicConfig(level=logging.ERROR)

    users = read_users(args.users_file)[: args.users or None]
    # the stages' params (written into each folder's params.yaml) and the crawl's, typed
    params = with_params(load(), {"crawl.demo.image_size": args.image_size, "crawl.users_file": "users.txt",
                                  "preprocess.size": 16, "export.mongo_uri": None})
    end = dt.date.fromisoformat(params.crawl.demo.until)
    clocks = [(end - dt.timedelta(days=args.days - i)).isoformat() for i in range(args.days + 1)]
    servers = count_servers()  # the simulated Instagram's own request count

    def crawl_params(until: str, refresh_days: int) -> CrawlParams:
        # refresh_days 0 (the crawler before issue 11) is below preprocess.min_age_days, which the
        # params refuse for a pipeline; the crawl reads neither, and each folder's preprocess keeps 3
        return with_params(params, {"crawl.demo.until": until, "crawl.refresh_days": refresh_days,
                                    "preprocess.min_age_days": min(params.preprocess.min_age_days, refresh_days)}).crawl

    def project(paths: Paths) -> Paths:
        paths.root.mkdir(parents=True, exist_ok=True)
        (paths.root / "users.txt").write_text("\n".join(users) + "\n")
        write_params(paths.root, params)
        return paths

    def tables(paths: Paths) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
        imgrate(paths.root, "export")
        imgrate(paths.root, "preprocess")
        metrics = json.loads(paths.stage_report("preprocess").read_text())
        posts = {p["shortcode"]: p for p in read_jsonl(paths.posts_table)}
        index = [(r["shortcode"], r["target"], r["split"]) for r in read_jsonl(paths.dataset_index)]
        return posts, index, metrics

    with record(args, NAME, users=len(users), days=args.days, image_size=args.image_size, **{"from": clocks[0]},
                until=clocks[-1], refresh_days=params.crawl.refresh_days,
                min_age_days=params.preprocess.min_age_days) as r, \
            tempfile.TemporaryDirectory(prefix="imgrate-bench-labels-") as tmp:
        t0 = time.monotonic()
        once = project(Paths(Path(tmp) / "once"))
        run(crawl_params(clocks[-1], params.crawl.refresh_days), once, users)
        r["one_crawl"] = {"requests": servers[-1].requests, "seconds": round(time.monotonic() - t0, 1)}
        ref_posts, ref_index, ref_metrics = tables(once)
        r["one_crawl"].update(posts=len(ref_posts), dataset=len(ref_index), too_young=ref_metrics["too_young"],
                              likes_hidden=ref_metrics["likes_hidden"],
                              users_likes_hidden=ref_metrics["users_likes_hidden"])
        r.step("one crawl at the last day")

        first = project(Paths(Path(tmp) / "first"))
        run(crawl_params(clocks[0], params.crawl.refresh_days), first, users)
        imgrate(first.root, "export")
        first_codes = {p["shortcode"] for p in read_jsonl(first.posts_table)}
        for name, refresh in (("daily_refresh", params.crawl.refresh_days), ("daily_no_refresh", 0)):
            paths = project(Paths(Path(tmp) / name))
            shutil.copytree(first.raw, paths.raw)
            shutil.copytree(first.cache, paths.cache)
            runs = []
            t1 = time.monotonic()
            for until in clocks[1:]:
                report = run(crawl_params(until, refresh), paths, users)
                totals = report.to_metrics()["totals"]
                budget = 1 + 5 * len(users) + 3 * totals["new_posts"]
                runs.append({"requests": servers[-1].requests, "budget": budget, "new_posts": totals["new_posts"],
                             "observations": totals["observations"], "recount_requests": totals["recount_requests"]})
            seconds = time.monotonic() - t1
            raw_before = _digest(paths.raw)
            again = run(crawl_params(clocks[-1], refresh), paths, users)  # the same clock once more
            noop = {"requests": servers[-1].requests, "shards_written": len(again.shards),
                    "raw_unchanged": _digest(paths.raw) == raw_before}
            posts, index, metrics = tables(paths)
            young = [c for c in posts if c not in first_codes and ref_posts[c]["likes"]]
            held = [posts[c]["likes"] / ref_posts[c]["likes"] for c in young if posts[c]["likes"] is not None]
            same_rows = [x[0] for x in index] == [x[0] for x in ref_index]
            r[name] = {
                "requests_per_crawl": {"max": max(x["requests"] for x in runs),
                                       "mean": round(statistics.mean(x["requests"] for x in runs), 1),
                                       "over_budget": sum(x["requests"] > x["budget"] for x in runs)},
                "recount_requests": sum(x["recount_requests"] for x in runs),
                "observations": sum(x["observations"] for x in runs),
                "new_posts": sum(x["new_posts"] for x in runs),
                "seconds_per_crawl": round(seconds / len(runs), 2),
                "same_clock_again": noop,
                "posts_first_stored_young": len(young),
                "their_likes_over_final": {"median": round(statistics.median(held), 3) if held else None,
                                           "under_half": round(sum(h < 0.5 for h in held) / max(len(held), 1), 3)},
                "posts_with_other_likes": sum(posts[c]["likes"] != ref_posts[c]["likes"] for c in ref_posts),
                "dataset_rows": len(index),
                "same_dataset_rows": same_rows,
                "targets_differing": (sum(a[1] != b[1] for a, b in zip(index, ref_index)) if same_rows
                                      else len(set(index) ^ set(ref_index))),
                "verify_ok": verify_raw(paths).ok,
            }
            r.step(name)


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


if __name__ == "__main__":
    main()
