"""Benchmark: daily crawls against one crawl at the last day (issue 11), on the default world.

Crawls the simulated Instagram with ``crawl.demo.until`` ``--days`` days before the end, then
moves the clock one day at a time and crawls each day (what a cron job does), once with
``crawl.refresh_days`` as params.yaml sets it and once with 0 (no count is read again: the
crawler before issue 11). Exports and preprocesses each, and compares them with one crawl at
the last day: posts whose stored likes differ, dataset rows and targets that differ, how much
of their final likes the posts first stored young hold, and what each daily crawl cost in
requests (the simulated Instagram's own count, against 1 + 5 per user + 3 per new post).
Then crawls once more at the last clock (nothing new: it must write nothing). Prints JSON.

    python bench/labels.py [--days 30] [--users-file users.txt] [--image-size 64]
"""

from __future__ import annotations

import argparse
import dataclasses
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

os.environ.setdefault("IMGRATE_QUIET", "1")

from world import count_servers

from imgrate.crawl.stage import run
from imgrate.crawl.users import read_users
from imgrate.crawl.verify import verify_raw
from imgrate.export import run_stage as export
from imgrate.io import read_jsonl
from imgrate.params import load_params
from imgrate.paths import Paths
from imgrate.preprocess import run_stage as preprocess

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--users-file", type=Path, default=ROOT / "users.txt")
    ap.add_argument("--image-size", type=int, default=64, help="px of the drawn photos (params.yaml: 320)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    params = load_params(ROOT / "params.yaml")
    users = read_users(args.users_file)
    end = dt.date.fromisoformat(params.crawl.demo.until)
    clocks = [(end - dt.timedelta(days=args.days - i)).isoformat() for i in range(args.days + 1)]
    servers = count_servers()  # the simulated Instagram's own request count

    def crawl_params(until: str, refresh_days: int):
        d = dataclasses.replace(params.crawl.demo, until=until, image_size=args.image_size)
        return dataclasses.replace(params.crawl, demo=d, refresh_days=refresh_days)

    def tables(paths: Paths) -> tuple[dict, list, dict]:
        export(params.export, paths)
        metrics = preprocess(dataclasses.replace(params.preprocess, size=16), paths)
        posts = {p["shortcode"]: p for p in read_jsonl(paths.posts_table)}
        index = [(r["shortcode"], r["target"], r["split"]) for r in read_jsonl(paths.dataset_index)]
        return posts, index, metrics

    out: dict = {"users": len(users), "days": args.days, "from": clocks[0], "until": clocks[-1],
                 "refresh_days": params.crawl.refresh_days, "min_age_days": params.preprocess.min_age_days}
    with tempfile.TemporaryDirectory(prefix="imgrate-bench-labels-") as tmp:
        t0 = time.monotonic()
        once = Paths(Path(tmp) / "once")
        run(crawl_params(clocks[-1], params.crawl.refresh_days), once, users)
        out["one_crawl"] = {"requests": servers[-1].requests, "seconds": round(time.monotonic() - t0, 1)}
        ref_posts, ref_index, ref_metrics = tables(once)
        out["one_crawl"].update(posts=len(ref_posts), dataset=len(ref_index), too_young=ref_metrics["too_young"],
                                likes_hidden=ref_metrics["likes_hidden"],
                                users_likes_hidden=ref_metrics["users_likes_hidden"])

        first = Paths(Path(tmp) / "first")
        run(crawl_params(clocks[0], params.crawl.refresh_days), first, users)
        first_codes = {c for c in (p["shortcode"] for p in _posts_of(first, params))}
        for name, refresh in (("daily_refresh", params.crawl.refresh_days), ("daily_no_refresh", 0)):
            paths = Paths(Path(tmp) / name)
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
            same_rows = [r[0] for r in index] == [r[0] for r in ref_index]
            out[name] = {
                "requests_per_crawl": {"max": max(r["requests"] for r in runs),
                                       "mean": round(statistics.mean(r["requests"] for r in runs), 1),
                                       "over_budget": sum(r["requests"] > r["budget"] for r in runs)},
                "recount_requests": sum(r["recount_requests"] for r in runs),
                "observations": sum(r["observations"] for r in runs),
                "new_posts": sum(r["new_posts"] for r in runs),
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
    print(json.dumps(out, indent=2))


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _posts_of(paths: Paths, params) -> list[dict]:
    export(params.export, paths)
    return read_jsonl(paths.posts_table)


if __name__ == "__main__":
    main()
