"""Benchmark: the data stages after a crawl that adds 1% posts, against a full rebuild,
and a no-op ``dvc repro`` (with ``dvc status`` alone beside it).

In a fresh copy of the project (git + DVC, the code copied too and put first on PYTHONPATH,
so edits made meanwhile in the working tree do not leak in), at ``--posts`` posts of the 27
users in users.txt, or of its first ``--users`` (the paper: 71,747; the simulated world's
``mean_interval_days`` is set to get there by ``crawl.demo.until``), driven as a user drives it (``dvc repro``, ``imgrate``):

1. crawl up to the moment that leaves the last ``--growth`` (1%) of posts unpublished;
   export, preprocess, analyze (cold caches); with ``--full``, train and evaluate too
   (1 epoch, few sets) so that a plain ``dvc repro`` has nothing to do;
2. move the clock to ``until``: crawl the new 1%, then time ``dvc repro -s export`` and
   ``dvc repro -s preprocess`` (incremental: warm per-shard caches);
3. delete the per-shard caches and force both stages again: the full rebuild of the same data;
   then ``--repeats`` alternating pairs (drop only the new shards' cache entries and force both
   stages; drop every cache and force both), so that load drift hits both sides alike;
4. time a no-op ``dvc repro`` (``dvc repro analyze`` without ``--full``: every data stage)
   and ``dvc status``, three times each (median); ``--smoke`` stops at preprocess, drawing
   no figures;
5. time ``imgrate export`` and ``imgrate preprocess`` with nothing new (the O(all posts)
   floor of each, when a params change makes DVC run them), beside the time Python takes to
   import them.

Every figure is a wall time on this machine, and the ratios come from the same run. Each
step's figures are saved as soon as it ends (``--out``), so a run that fails keeps them.

    python bench/incremental.py --posts 72000            # the paper's scale (~15-40 min)
    python bench/incremental.py --posts 10000 --full     # smaller, whole pipeline
    python bench/incremental.py --smoke                  # 3 users, 120 posts: seconds, for make test
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from imgrate.crawl.users import read_users
from imgrate.demo.world import DemoWorld
from imgrate.params import Params
from imgrate.paths import copy_project_files

from _common import ROOT, Failed, Record, bench_env, dvc, imgrate, load, parser, record, sh, with_params, write_params

NAME = "incremental"


def _last_run_log(project: Path, stage: str) -> dict[str, Any]:
    """The newest run log of a stage (.imgrate-cache/logs/<stage>/): cache hits, not metrics."""
    logs = sorted((project / ".imgrate-cache" / "logs" / stage).glob("*.json"))
    return json.loads(logs[-1].read_text()) if logs else {}


def plan_world(params: Params, users: list[str], posts: int, growth: float) -> tuple[float, str, int, int]:
    """(mean_interval_days, until of the first crawl, posts then, posts at until)."""

    def world(interval: float) -> DemoWorld:
        return DemoWorld(users, with_params(params, {"crawl.demo.mean_interval_days": interval}).crawl.demo)

    probe = 5.0
    n_probe = sum(len(world(probe).posts(u)) for u in users)
    interval = probe * n_probe / posts
    w = world(interval)
    times = sorted(p.taken_at for u in users for p in w.posts(u))
    cut = times[max(int(len(times) * (1 - growth)) - 1, 0)]
    first_until = dt.datetime.fromtimestamp(cut, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return interval, first_until, sum(1 for t in times if t <= cut), len(times)


def main() -> None:
    ap = parser(__doc__, NAME)
    ap.add_argument("--posts", type=int, default=72000, help="posts in the world at crawl.demo.until")
    ap.add_argument("--users", type=int, default=0, help="only the first N users of users.txt; 0 = all (27)")
    ap.add_argument("--growth", type=float, default=0.01, help="share of posts the second crawl adds")
    ap.add_argument("--image-size", type=int, default=320, help="crawl.demo.image_size")
    ap.add_argument("--repeats", type=int, default=3, help="alternating incremental/rebuild pairs (step 3b)")
    ap.add_argument("--noop-repeats", type=int, default=3, help="no-op repro and status timings (step 4)")
    ap.add_argument("--full", action="store_true", help="run train and evaluate too: the no-op is a plain `dvc repro`")
    ap.add_argument("--dir", type=Path, help="project folder (default: a temporary one, deleted unless --keep)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.posts, args.users, args.growth, args.image_size, args.repeats, args.noop_repeats = 120, 3, 0.03, 32, 0, 1

    # every params change first, through the typed params: a renamed key fails here, named
    base = load()
    params = with_params(base, {"train.paper_cnn.epochs": 1, "train.pretrained.epochs": 1,
                                "evaluate.n_sets": 200, "evaluate.n_boot": 20,
                                "crawl.demo.image_size": args.image_size, "export.mongo_uri": None})
    users = read_users(ROOT / "users.txt")[: args.users or None]
    final_until = params.crawl.demo.until
    project = args.dir or Path(tempfile.mkdtemp(prefix="imgrate-bench-"))
    with record(args, NAME, posts_asked=args.posts, users=len(users), image_size=args.image_size,
                until=final_until, project=str(project)) as r:
        interval, first_until, n_first, n_all = plan_world(params, users, args.posts, args.growth)
        params = with_params(params, {"crawl.demo.mean_interval_days": round(interval, 6),
                                      "crawl.demo.until": first_until})
        r.update(posts_first_crawl=n_first, posts_total=n_all, mean_interval_days=round(interval, 4),
                 first_until=first_until)
        copy_project_files(ROOT, project)  # the files the tests' project copies hold (imgrate.paths)
        write_params(project, params)
        (project / "users.txt").write_text("\n".join(users) + "\n")
        env = {**bench_env(project), "PYTHONPATH": str(project)}
        sh(["git", "init", "-q", "-b", "main"], project, env)
        sh(["git", "add", "-A"], project, env)
        sh(["git", "commit", "-q", "-m", "bench"], project, env)
        r.step("project ready")
        try:
            run(args, r, project, env, params, final_until)
        finally:
            if not args.keep and args.dir is None:
                shutil.rmtree(project, ignore_errors=True)


def run(args: Any, r: Record, project: Path, env: dict[str, str], params: Params, final_until: str) -> None:
    def repro(*a: str) -> float:
        return dvc(project, "repro", *a, env=env)

    # 1. the world up to 99%: crawl, then the data stages from cold caches
    r["crawl_first_s"] = round(repro("-s", "crawl"), 3)
    r.step("1. first crawl")
    r["first"] = {}
    last = "preprocess" if args.smoke else "analyze"  # --smoke: no figures drawn (seconds saved)
    for s in ("export", "preprocess", *(("analyze",) if last == "analyze" else ())):
        r["first"][s] = round(repro("-s", s), 3)
    full_pipeline = args.full
    if full_pipeline:
        try:
            r["first"]["rest"] = round(repro(), 3)  # train, evaluate (+ a crawl finding nothing)
        except Failed as err:  # another stage's code may be mid-change: measure the data stages only
            print(f"warning: the whole pipeline failed; the no-op check covers the data stages only\n{err}",
                  file=sys.stderr)
            r["full_pipeline_error"] = str(err)[-2000:]
            full_pipeline = False
    r.step("1. first data stages")

    # 2. +1%: crawl, then export and preprocess with warm caches
    write_params(project, with_params(params, {"crawl.demo.until": final_until}))
    shards_dir = project / "data" / "raw" / "shards"
    shards_before = {p.name for p in shards_dir.glob("*.tar")}
    r["crawl_growth_s"] = round(repro("-s", "crawl"), 3)
    new_shards = sorted({p.name for p in shards_dir.glob("*.tar")} - shards_before)
    r["new_shards"] = new_shards
    r["new_posts"] = json.loads((project / "metrics" / "crawl.json").read_text())["new_posts"]
    inc = {s: repro("-s", s) for s in ("export", "preprocess")}
    r["incremental"] = {**{s: round(v, 3) for s, v in inc.items()},
                        "preprocess_run_log": _last_run_log(project, "preprocess")}
    r.step("2. incremental")

    # 3. full rebuild of the same data: no per-shard caches, stages forced
    caches = [project / ".imgrate-cache" / c for c in ("export", "thumbs")]
    for cache in caches:
        shutil.rmtree(cache, ignore_errors=True)
    full = {s: repro("-s", "-f", "--no-run-cache", s) for s in ("export", "preprocess")}
    r["rebuild"] = {**{s: round(v, 3) for s, v in full.items()},
                    "preprocess_run_log": _last_run_log(project, "preprocess")}
    r["ratio_incremental_over_rebuild"] = round(sum(inc.values()) / sum(full.values()), 4)
    r.step("3. rebuild")

    # 3b. the same comparison repeated in alternation, so load drift on a shared machine hits
    # both alike: "incremental" = the new shards' cache entries dropped, both stages forced
    pairs: dict[str, list[float]] = {"incremental": [], "rebuild": []}
    for _ in range(args.repeats):
        for cache in caches:
            for name in new_shards:
                for f in cache.glob(f"{name}.*"):
                    f.unlink()
        pairs["incremental"].append(sum(repro("-s", "-f", "--no-run-cache", s) for s in ("export", "preprocess")))
        for cache in caches:
            shutil.rmtree(cache, ignore_errors=True)
        pairs["rebuild"].append(sum(repro("-s", "-f", "--no-run-cache", s) for s in ("export", "preprocess")))
        r["alternating"] = {k: [round(v, 3) for v in vs] for k, vs in pairs.items()}
        r["alternating_ratio_median"] = round(statistics.median(pairs["incremental"])
                                              / statistics.median(pairs["rebuild"]), 4)
        r.step("3b. alternating pair")

    # 4. no-op: everything up to date (analyze, and train/evaluate with --full, follow the new data first)
    target = [] if full_pipeline else [last]
    r["noop_target"] = " ".join(["dvc repro", *target])
    r["catch_up_s"] = round(repro(*target), 3)
    r["noop_repro_s"] = [round(repro(*target), 3) for _ in range(args.noop_repeats)]
    r["noop_repro_median_s"] = statistics.median(r["noop_repro_s"])
    r["status_s"] = [round(dvc(project, "status", *target, env=env), 3) for _ in range(args.noop_repeats)]
    r["status_median_s"] = statistics.median(r["status_s"])
    r["shards"] = len(list(shards_dir.glob("*.tar")))
    r["raw_mb"] = round(sum(p.stat().st_size for p in (project / "data" / "raw").rglob("*") if p.is_file()) / 2**20, 1)
    r.step("4. no-op repro")

    # 5. nothing new, the stages run anyway (as after a params change): what each pays for
    # the posts it already has, through the command a user runs; Python's imports beside it
    r["nothing_new"] = {
        "imgrate_export_s": round(imgrate(project, "export", env=env), 3),
        "imgrate_preprocess_s": round(imgrate(project, "preprocess", env=env), 3),
        "python_imports_s": round(sh([sys.executable, "-c", "import imgrate.cli, imgrate.export, imgrate.preprocess"],
                                     project, env), 3),
    }
    r.step("5. nothing new")


if __name__ == "__main__":
    main()
