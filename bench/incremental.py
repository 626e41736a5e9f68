"""Benchmark: the data stages after a crawl that adds 1% posts, against a full rebuild,
and a no-op ``dvc repro`` (with ``dvc status`` alone beside it).

In a fresh copy of the project (git + DVC, the code copied too and put first on PYTHONPATH,
so edits made meanwhile in the working tree do not leak in), at ``--posts`` posts of the 27
users in users.txt (the paper: 71,747; the simulated world's ``mean_interval_days`` is set
to get there by ``crawl.demo.until``):

1. crawl up to the moment that leaves the last ``--growth`` (1%) of posts unpublished;
   export, preprocess, analyze (cold caches); with ``--full``, train and evaluate too
   (1 epoch, few sets) so that a plain ``dvc repro`` has nothing to do;
2. move the clock to ``until``: crawl the new 1%, then time ``dvc repro -s export`` and
   ``dvc repro -s preprocess`` (incremental: warm per-shard caches);
3. delete the per-shard caches and force both stages again: the full rebuild of the same data;
   then ``--repeats`` alternating pairs (drop only the new shards' cache entries and force both
   stages; drop every cache and force both), so that load drift hits both sides alike;
4. time a no-op ``dvc repro`` (``dvc repro analyze`` without ``--full``: every data stage)
   and ``dvc status``, three times each (median);
5. time export and preprocess in-process with nothing new (the O(all posts) floor of each).

Every figure is a wall time on this machine, and the ratios come from the same run.

    python bench/incremental.py --posts 72000            # the paper's scale (~15-25 min)
    python bench/incremental.py --posts 10000 --full     # smaller, whole pipeline
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import copy_project_files, write_params  # noqa: E402  (the tests' project copy)


class Failed(Exception):
    pass


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Run a command; return its wall time in seconds (:class:`Failed`, with its output, if it fails)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise Failed(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def _last_run_log(project: Path, stage: str) -> dict[str, Any]:
    """The newest run log of a stage (.imgrate-cache/logs/<stage>/): cache hits, not metrics."""
    return json.loads(sorted((project / ".imgrate-cache" / "logs" / stage).glob("*.json"))[-1].read_text())


def make_project(dest: Path, params: dict[str, Any]) -> None:
    copy_project_files(dest)
    write_params(dest, params)


def plan_world(params: dict[str, Any], users: list[str], posts: int, growth: float) -> tuple[float, str, int, int]:
    """(mean_interval_days, until of the first crawl, posts then, posts at until)."""
    from imgrate.crawl.demo import DemoWorld, WorldConfig

    demo = params["crawl"]["demo"]

    def world(interval: float, until: str) -> DemoWorld:
        return DemoWorld(users, WorldConfig(seed=demo["seed"], start=str(demo["start"]), until=until,
                                            image_size=demo["image_size"], mean_interval_days=interval))

    until = str(demo["until"])
    probe = 5.0
    n_probe = sum(len(world(probe, until).posts(u)) for u in users)
    interval = probe * n_probe / posts
    w = world(interval, until)
    times = sorted(p.taken_at for u in users for p in w.posts(u))
    cut = times[int(len(times) * (1 - growth)) - 1]
    first_until = dt.datetime.fromtimestamp(cut, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return interval, first_until, sum(1 for t in times if t <= cut), len(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posts", type=int, default=72000, help="posts in the world at crawl.demo.until")
    ap.add_argument("--growth", type=float, default=0.01, help="share of posts the second crawl adds")
    ap.add_argument("--image-size", type=int, default=320, help="crawl.demo.image_size")
    ap.add_argument("--repeats", type=int, default=3, help="alternating incremental/rebuild pairs (step 3b)")
    ap.add_argument("--full", action="store_true", help="run train and evaluate too: the no-op is a plain `dvc repro`")
    ap.add_argument("--dir", type=Path, help="project folder (default: a temporary one, deleted unless --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path, help="also write the JSON result here")
    args = ap.parse_args()

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    users = [line.strip() for line in (ROOT / "users.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    interval, first_until, n_first, n_all = plan_world(params, users, args.posts, args.growth)
    params["crawl"]["demo"].update(mean_interval_days=round(interval, 6), image_size=args.image_size,
                                   until=first_until)
    params["train"]["epochs"] = 1
    params["evaluate"].update(n_sets=200, n_boot=20)
    final_until = str(yaml.safe_load((ROOT / "params.yaml").read_text())["crawl"]["demo"]["until"])

    project = args.dir or Path(tempfile.mkdtemp(prefix="imgrate-bench-"))
    make_project(project, params)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "IMGRATE_QUIET": "1",
           "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(project), "GIT_AUTHOR_NAME": "bench",
           "GIT_AUTHOR_EMAIL": "bench@example.invalid", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
    env.pop("IMGRATE_ROOT", None)
    dvc = str(BIN / "dvc")
    sh(["git", "init", "-q", "-b", "main"], project, env)
    sh(["git", "add", "-A"], project, env)
    sh(["git", "commit", "-q", "-m", "bench"], project, env)
    r: dict[str, Any] = {"posts_first_crawl": n_first, "posts_total": n_all, "users": len(users),
                         "mean_interval_days": round(interval, 4), "image_size": args.image_size,
                         "first_until": first_until, "until": final_until, "project": str(project)}
    print(json.dumps(r), flush=True)

    # 1. the world up to 99%: crawl, then the data stages from cold caches
    r["crawl_first_s"] = sh([dvc, "repro", "-s", "crawl"], project, env)
    r["first"] = {s: sh([dvc, "repro", "-s", s], project, env) for s in ("export", "preprocess", "analyze")}
    full_pipeline = args.full
    if full_pipeline:
        try:
            r["first"]["rest"] = sh([dvc, "repro"], project, env)  # train, evaluate (+ a crawl finding nothing)
        except Failed as err:  # another stage's code may be mid-change: measure the data stages only
            print(f"warning: the whole pipeline failed; the no-op check covers the data stages only\n{err}",
                  file=sys.stderr)
            r["full_pipeline_error"] = str(err)[-2000:]
            full_pipeline = False
    print(json.dumps(r), flush=True)

    # 2. +1%: crawl, then export and preprocess with warm caches
    params["crawl"]["demo"]["until"] = final_until
    write_params(project, params)
    shards_before = {p.name for p in (project / "data/raw/shards").glob("*.tar")}
    r["crawl_growth_s"] = sh([dvc, "repro", "-s", "crawl"], project, env)
    new_shards = sorted({p.name for p in (project / "data/raw/shards").glob("*.tar")} - shards_before)
    r["new_shards"] = new_shards
    crawl = json.loads((project / "metrics/crawl.json").read_text())
    r["new_posts"] = crawl["new_posts"]
    inc = {s: sh([dvc, "repro", "-s", s], project, env) for s in ("export", "preprocess")}
    r["incremental"] = {**inc, "preprocess_metrics": _last_run_log(project, "preprocess")}

    # 3. full rebuild of the same data: no per-shard caches, stages forced
    for cache in ("export", "thumbs"):
        shutil.rmtree(project / ".imgrate-cache" / cache, ignore_errors=True)
    full = {s: sh([dvc, "repro", "-s", "-f", "--no-run-cache", s], project, env) for s in ("export", "preprocess")}
    r["rebuild"] = {**full, "preprocess_metrics": _last_run_log(project, "preprocess")}
    r["ratio_incremental_over_rebuild"] = round(sum(inc.values()) / sum(full.values()), 4)
    print(json.dumps(r), flush=True)

    # 3b. the same comparison repeated in alternation, so load drift on a shared machine hits
    # both alike: "incremental" = the new shards' cache entries dropped, both stages forced
    pairs: dict[str, list[float]] = {"incremental": [], "rebuild": []}
    for _ in range(args.repeats):
        for cache in ("export", "thumbs"):
            for name in new_shards:
                for f in (project / ".imgrate-cache" / cache).glob(f"{name}.*"):
                    f.unlink()
        pairs["incremental"].append(sum(sh([dvc, "repro", "-s", "-f", "--no-run-cache", s], project, env)
                                        for s in ("export", "preprocess")))
        for cache in ("export", "thumbs"):
            shutil.rmtree(project / ".imgrate-cache" / cache, ignore_errors=True)
        pairs["rebuild"].append(sum(sh([dvc, "repro", "-s", "-f", "--no-run-cache", s], project, env)
                                    for s in ("export", "preprocess")))
    if args.repeats:
        r["alternating"] = {k: [round(v, 3) for v in vs] for k, vs in pairs.items()}
        r["alternating_ratio_median"] = round(statistics.median(pairs["incremental"])
                                              / statistics.median(pairs["rebuild"]), 4)

    # 4. no-op: everything up to date (analyze, and train/evaluate with --full, follow the new data first)
    target = [] if full_pipeline else ["analyze"]
    r["catch_up_s"] = sh([dvc, "repro", *target], project, env)
    r["noop_repro_s"] = [round(sh([dvc, "repro", *target], project, env), 3) for _ in range(3)]
    r["status_s"] = [round(sh([dvc, "status", *target], project, env), 3) for _ in range(3)]
    r["noop_repro_median_s"] = statistics.median(r["noop_repro_s"])
    r["status_median_s"] = statistics.median(r["status_s"])
    r["noop_target"] = "dvc repro" + ("" if full_pipeline else " analyze")
    r["shards"] = len(list((project / "data/raw/shards").glob("*.tar")))
    r["raw_mb"] = round(sum(p.stat().st_size for p in (project / "data/raw").rglob("*") if p.is_file()) / 2**20, 1)

    # 5. in-process, nothing new: what each stage pays for the posts it already has
    code = ("import json, time; from imgrate.params import load_params; from imgrate.paths import Paths; "
            "from imgrate import export, preprocess; p = load_params(Paths(__import__('pathlib').Path('.')).params); "
            "paths = Paths(__import__('pathlib').Path('.').resolve()); t = time.perf_counter(); "
            "export.run_stage(p.export, paths); e = time.perf_counter() - t; t = time.perf_counter(); "
            "preprocess.run_stage(p.preprocess, paths); print(json.dumps({'export_s': round(e, 3), "
            "'preprocess_s': round(time.perf_counter() - t, 3)}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, text=True, capture_output=True, check=True)
    r["in_process_nothing_new"] = json.loads(out.stdout.strip().splitlines()[-1])
    for k in ("first", "incremental", "rebuild"):
        r[k] = {s: round(v, 3) if isinstance(v, float) else v for s, v in r[k].items()}
    print(json.dumps(r, indent=2))
    if args.out:
        args.out.write_text(json.dumps(r, indent=2) + "\n")
    if not args.keep and args.dir is None:
        shutil.rmtree(project, ignore_errors=True)


if __name__ == "__main__":
    main()
