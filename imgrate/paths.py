"""Every path imgrate reads or writes, defined once.

All paths are relative to the project root, which is the current directory unless
``IMGRATE_ROOT`` says otherwise. dvc.yaml names the same paths; ``tests/test_dvc_yaml.py``
checks that the two agree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """The project's file layout under one root."""

    root: Path

    def rel(self, path: Path) -> str:
        """``path`` relative to the root, with forward slashes (as dvc.yaml names it)."""
        return path.relative_to(self.root).as_posix()

    # inputs
    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def users_file(self) -> Path:
        return self.root / "users.txt"

    # crawl: append-only raw data
    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def shards(self) -> Path:
        return self.raw / "shards"

    @property
    def stamps(self) -> Path:
        return self.raw / "latest-stamps.ini"

    def part_stamps(self, part: str) -> Path:
        """The stamps file that ``imgrate crawl --part I/N`` writes (``part`` = ``partIofN``)."""
        return self.raw / f"latest-stamps.{part}.ini"

    @property
    def ledger(self) -> Path:
        """The order the crawl stored shards in, and which it wrote (imgrate.shards.Ledger)."""
        return self.raw / "shard-ledger.txt"

    def part_ledger(self, part: str) -> Path:
        """The ledger that ``imgrate crawl --part I/N`` keeps (``part`` = ``partIofN``)."""
        return self.raw / f"shard-ledger.{part}.txt"

    # export
    @property
    def tables(self) -> Path:
        return self.root / "data" / "tables"

    @property
    def posts_table(self) -> Path:
        return self.tables / "posts.jsonl"

    @property
    def users_table(self) -> Path:
        return self.tables / "users.jsonl"

    @property
    def skipped_table(self) -> Path:
        """Shard members the export skipped: shard, member, reason."""
        return self.tables / "skipped.jsonl"

    # preprocess
    @property
    def dataset(self) -> Path:
        return self.root / "data" / "dataset"

    def images_array(self, size: int | str) -> Path:
        """The dataset's images at ``size`` px (``"${preprocess.size}"``: as dvc.yaml names it)."""
        return self.dataset / f"images_{size}.npy"

    @property
    def dataset_index(self) -> Path:
        return self.dataset / "index.jsonl"

    @property
    def dataset_meta(self) -> Path:
        return self.dataset / "meta.json"

    # featurize
    @property
    def features(self) -> Path:
        """Frozen backbone features, one ``.npy`` and one ``.json`` per shard, and ``meta.json``."""
        return self.root / "data" / "features"

    # train
    @property
    def models(self) -> Path:
        return self.root / "models"

    def model(self, name: str) -> Path:
        return self.models / f"{name}.pt"

    def live_dir(self, name: str) -> Path:
        return self.root / "dvclive" / name

    # metrics and plots (git-tracked, cache: false)
    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    def stage_metrics(self, stage: str) -> Path:
        return self.metrics / f"{stage}.json"

    @property
    def evaluate_metrics(self) -> Path:
        """One small metrics file per model and baseline (``<name>.json``), so that
        `dvc metrics show` prints one row per model: the leaderboard."""
        return self.metrics / "evaluate"

    # a stage's full report beside its metrics: git-tracked (cache: false), not a DVC metric
    def stage_report(self, stage: str) -> Path:
        return self.root / "reports" / f"{stage}.json"

    @property
    def leak_metrics(self) -> Path:
        """How well each model's outputs reveal the user (evaluate stage's report)."""
        return self.root / "reports" / "leak.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def figures(self) -> Path:
        """PNG copies of the evaluate stage's plots (a cached DVC output)."""
        return self.root / "reports" / "figures" / "evaluate"

    # analyze (cache: false, so git carries them)
    @property
    def data_figures(self) -> Path:
        """The analyze stage's PNG figures of the data (beside evaluate's: DVC forbids one
        stage's output inside another's)."""
        return self.root / "reports" / "figures" / "data"

    @property
    def data_report(self) -> Path:
        """The analyze stage's counts, in Markdown."""
        return self.root / "reports" / "data.md"

    @property
    def insights_page(self) -> Path:
        """The analyze stage's findings per photographer: one self-contained HTML page."""
        return self.root / "reports" / "insights.html"

    # persistent caches that DVC never deletes (git-ignored, not a DVC output)
    @property
    def cache(self) -> Path:
        return self.root / ".imgrate-cache"

    @property
    def crawl_work(self) -> Path:
        """Per-user folders of unfinished crawls: Instaloader's files and resume files."""
        return self.cache / "crawl"

    @property
    def crawl_logs(self) -> Path:
        """One JSON report per crawl run, with its timings (metrics/crawl.json has none, so a
        crawl that finds nothing new leaves it, and dvc.lock, unchanged)."""
        return self.stage_logs("crawl")

    def stage_logs(self, stage: str) -> Path:
        """One JSON file per run of ``stage`` with what depends on the run, not on the inputs
        (timings, cache hits): outside the DVC outputs, so the same inputs give the same bytes."""
        return self.cache / "logs" / stage

    @property
    def tmp(self) -> Path:
        """Scratch space on the same filesystem as the outputs, for atomic renames."""
        return self.cache / "tmp"


# What a copy of the project needs to run the pipeline (the imgrate package itself is
# installed): the tests' temporary projects and bench/ copy these.
PROJECT_FILES = ("dvc.yaml", "params.yaml", "users.txt", "stages", "imgrate", ".dvc/config",
                 ".dvc/.gitignore", ".dvc/plots-offline.html", ".dvcignore", ".gitignore")


def copy_project_files(source: Path, dest: Path) -> None:
    """Copy :data:`PROJECT_FILES` of the project at ``source`` into ``dest``."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def project_paths(root: Path | str | None = None) -> Paths:
    """The layout under ``root``, else ``$IMGRATE_ROOT``, else the current directory."""
    if root is None:
        root = os.environ.get("IMGRATE_ROOT") or Path.cwd()
    return Paths(Path(root).resolve())


PROJECT_MARKER = "dvc.yaml"  # a folder holding it is an imgrate project


def find_project(start: Path | str | None = None) -> Path | None:
    """The project that holds ``start`` (default: ``$IMGRATE_ROOT``, else the current folder),
    found by its files: the nearest folder upwards with a dvc.yaml. None outside any project."""
    if start is None:
        env = os.environ.get("IMGRATE_ROOT")
        start = env or Path.cwd()
    here = Path(start).expanduser().resolve()
    for folder in (here, *here.parents):
        if (folder / PROJECT_MARKER).is_file():
            return folder
    return None
