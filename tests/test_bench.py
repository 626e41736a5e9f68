"""Every bench script runs, at its smoke size, in `make test` (issue 22): a bench that breaks
fails the suite, instead of rotting until someone measures.

The contract of a bench (bench/README.md says the same): every ``bench/*.py`` whose name does
not start with ``_`` (those are helpers, e.g. ``bench/_common.py``) is a bench, found here by
itself, and

1. takes ``--smoke`` (sizes that finish in seconds) and ``--out PATH`` (where its JSON goes);
2. prints one JSON object on stdout (progress goes to stderr) and saves the same at ``--out``,
   through ``_common.record``: ``complete`` true, and the figures it promises, whose keys
   are listed in :data:`PROMISES` below (the keys, not the values: timings are noisy);
3. exits 0 when it ran (a bench whose checks fail, e.g. crawl.py's budget, exits 1);
4. when it fails part-way, still prints and saves what it measured so far, with
   ``complete`` false and the ``error``, and exits non-zero;
5. drives the pipeline as users do (``dvc repro``, the ``imgrate`` command) where it times a
   stage, and writes params through the typed params (``_common.with_params`` /
   ``write_params``), so a renamed key fails at its start, naming the key;
6. is run by ``make bench`` (or its own make target) and listed in the docs' performance
   section with what it measures, how long it takes at full size and the last full run's figures.

A new bench adds its promised keys to :data:`PROMISES`; until it does, its test fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from imgrate.errors import ParamsError

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BENCHES = sorted(p.stem for p in BENCH.glob("*.py") if not p.name.startswith("_"))

# what every bench's JSON holds (bench/_common.py: record)
COMMON = ["bench", "smoke", "started", "machine.cores", "machine.load_average_at_start", "complete", "wall_s"]

# the figures each bench promises at its smoke size (dotted keys into its JSON)
PROMISES: dict[str, list[str]] = {
    "crawl": ["world.posts", "budget", "runs", "per_run", "min_budget_used_while_posts_remain",
              "max_requests_in_a_run", "never_exceeded", "crawler_count_matches_server", "posts_per_second",
              "requests_per_new_post", "unlimited_crawl.requests", "unlimited_crawl.posts_per_second",
              "budget_overhead_requests", "all_posts_stored", "targets_met"],
    "featurize": ["images", "images_per_s.one_core", "images_per_s.all_cores", "images_per_s.backbone_only_one_core",
                  "all_cores_vs_one_core", "one_core_vs_backbone_only_one_core", "workers", "backbone"],
    "incremental": ["posts_total", "posts_first_crawl", "crawl_first_s", "first.export", "first.preprocess",
                    "crawl_growth_s", "new_posts", "new_shards", "incremental.export", "incremental.preprocess",
                    "incremental.preprocess_run_log.decoded", "incremental.preprocess_run_log.from_cache",
                    "rebuild.export", "rebuild.preprocess", "ratio_incremental_over_rebuild", "catch_up_s",
                    "noop_target", "noop_repro_median_s", "status_median_s", "shards", "raw_mb",
                    "nothing_new.imgrate_export_s", "nothing_new.imgrate_preprocess_s",
                    "nothing_new.python_imports_s"],
    "limits": ["silent_proxy.seconds_to_end", "silent_proxy.status", "silent_proxy.stop_reason",
               "silent_proxy.requests", "silent_proxy.users_failed", "silent_proxy.users_skipped",
               *(f"bounded.{case}.{k}" for case in ("train_nproc_1000", "evaluate_n_sets_1e9", "evaluate_n_boot_1e9",
                                                   "crawl_demo_until_9999_12_31", "model_file_hidden_500000")
                 for k in ("exit_code", "line", "peak_mb")),
               "bounded.train_nproc_1000.peak_over_baseline", "all_refused_in_one_line"],
    "labels": ["one_crawl.requests", "one_crawl.posts", "one_crawl.dataset",
               *(f"{v}.{k}" for v in ("daily_refresh", "daily_no_refresh")
                 for k in ("requests_per_crawl.max", "requests_per_crawl.over_budget", "recount_requests",
                           "observations", "new_posts", "same_clock_again.raw_unchanged",
                           "their_likes_over_final.median", "posts_with_other_likes", "dataset_rows",
                           "targets_differing", "verify_ok"))],
    "preprocess": ["images", "images_per_s_per_core.naive", "images_per_s_per_core.imgrate",
                   "images_per_s_per_core.full_decode", "images_per_s_per_core.draft_decode", "speedup",
                   "ceiling_naive_over_draft_decode"],
    "quality": ["seeds", "goal", "worlds", "summary.pretrained_over_image_ceiling.mean",
                "summary.pretrained_over_oracle.mean", "summary.spearman_within.image_ceiling.mean",
                "summary.spearman_within.oracle.mean", "summary.spearman_within.pretrained.mean",
                "summary.spearman_within.paper_cnn.mean", "summary.spearman_within.ridge_features.mean",
                "summary.val_spearman_within.pretrained.mean", "summary.order_holds_on_every_seed",
                "goal_met_on_mean"],
    "rank": ["photos", *(f"{f}.{k}" for f in ("small", "large", "sparse") for k in ("photos", "seconds", "peak_rss_mb")),
             "sparse.not_ranked", "rss_large_over_small", "rss_sparse_over_small",
             "seconds_per_photo_large_over_small", "html_mb"],
    "train": ["training.model", "training.train_images", "training.samples_per_s.fit",
              "training.samples_per_s.in_memory_nchw", "training.samples_per_s.in_memory_channels_last",
              "training.ratio"],
}


def _env(tmp: Path) -> dict[str, str]:
    """A bench's environment: the venv first on PATH, temporary folders under ``tmp`` (whose
    name holds a space), a narrow terminal, no project root or database from outside."""
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TMPDIR": str(tmp), "COLUMNS": "40", "DVC_NO_ANALYTICS": "1"}
    for var in ("IMGRATE_ROOT", "IMGRATE_MONGODB_URI"):
        env.pop(var, None)
    return env


def _bench(name: str, tmp: Path, *args: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess[str], Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    out = tmp / f"{name}.json"
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args, "--out", str(out)], cwd=ROOT,
                          env=_env(tmp / "tmp dir"), text=True, capture_output=True, timeout=timeout)
    return proc, out


def _get(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            raise KeyError(dotted)
        d = d[part]
    return d


def test_benches_are_found() -> None:
    assert {"crawl", "featurize", "incremental", "labels", "preprocess", "train"} <= set(BENCHES)


@pytest.fixture(scope="module")
def smoke_runs(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[tuple[Any, Path]]]]:
    """The selected benches' smoke runs, two at a time (most of a run is process start-up and
    waiting on DVC's subprocesses: two in parallel take about half the wall time on 2 cores)."""
    names = [item.callspec.params["name"] for item in request.session.items
             if getattr(item, "originalname", None) == "test_bench_smoke" and hasattr(item, "callspec")]
    tmp = tmp_path_factory.mktemp("bench")
    with ThreadPoolExecutor(max_workers=2) as pool:  # the longest first
        yield {name: pool.submit(_bench, name, tmp / name, "--smoke")
               for name in sorted(names, key=lambda n: n != "incremental")}


@pytest.mark.parametrize("name", BENCHES)
def test_bench_smoke(name: str, smoke_runs: dict[str, Future[tuple[Any, Path]]]) -> None:
    """The bench runs at its smoke size, exits 0, prints and saves the figures it promises."""
    assert name in PROMISES, (f"bench/{name}.py has no entry in tests/test_bench.py PROMISES: list the keys "
                              "of the JSON it promises (the bench contract at the top of this module)")
    proc, out = smoke_runs[name].result()
    tmp_path = out.parent
    assert proc.returncode == 0, f"bench/{name}.py --smoke exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    printed = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == printed
    assert printed["complete"] is True and printed["smoke"] is True and printed["bench"] == name
    missing = []
    for key in COMMON + PROMISES[name]:
        try:
            _get(printed, key)
        except KeyError:
            missing.append(key)
    assert not missing, f"bench/{name}.py --smoke printed no {', '.join(missing)}"
    leftovers = [p.name for p in (tmp_path / "tmp dir").glob("imgrate-*")]  # torch keeps caches there too
    assert not leftovers, f"bench/{name}.py left temporary files behind: {leftovers}"


def test_a_bench_that_fails_part_way_prints_and_saves_what_it_measured(tmp_path: Path) -> None:
    """bench/train.py on a project without a dataset: the figures of its start, the error, exit 1."""
    empty = tmp_path / "empty project"
    empty.mkdir()
    proc, out = _bench("train", tmp_path, "--smoke", "--root", str(empty))
    assert proc.returncode != 0
    printed = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == printed
    assert printed["complete"] is False
    assert "dataset" in printed["error"]
    assert printed["torch"] and printed["threads"] >= 1 and "training" not in printed


def test_params_through_the_typed_params_name_a_renamed_key() -> None:
    """The bench helper refuses a key params.yaml no longer has, naming it (the old
    `train.epochs` crashed bench/incremental.py at its last step, after 25 minutes)."""
    sys.path.insert(0, str(BENCH))
    try:
        from _common import load, with_params
    finally:
        sys.path.remove(str(BENCH))
    params = load()
    with pytest.raises(ParamsError, match=r"train\.epochs"):
        with_params(params, {"train.epochs": 1})
    with pytest.raises(ParamsError, match=r"crawl\.demo\.until_day"):
        with_params(params, {"crawl.demo.until_day": "2025-01-01"})
    with pytest.raises(ParamsError, match=r"crawl\.shard_size"):
        with_params(params, {"crawl.shard_size": 0})  # the range checks of params.yaml apply too
    changed = with_params(params, {"train.paper_cnn.epochs": 1, "crawl.demo.until": "2025-02-01"})
    from imgrate.models import model_spec

    assert model_spec("paper_cnn").params_of(changed.train).epochs == 1 and changed.crawl.demo.until == "2025-02-01"
    assert changed.crawl.shard_size == params.crawl.shard_size


def test_make_bench_runs_every_bench() -> None:
    """`make bench` (or `make bench-incremental`) runs every bench, and the docs name each."""
    makefile = (ROOT / "Makefile").read_text()
    run = set(re.findall(r"bench/([a-z_]+)\.py", makefile))
    assert set(BENCHES) <= run, f"not run by make: {sorted(set(BENCHES) - run)}"
    page = (ROOT / "docs" / "performance.md").read_text()  # the table of what each bench measures
    assert all(f"bench/{name}.py" in page for name in BENCHES)
