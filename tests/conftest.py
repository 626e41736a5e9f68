"""Shared fixtures: tiny worlds and temporary copies of the project for real DVC runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# what a project copy needs to run the pipeline (the imgrate package itself is installed)
PROJECT_FILES = ["dvc.yaml", "params.yaml", "users.txt", "stages", "imgrate", ".dvc/config",
                 ".dvc/.gitignore", ".dvcignore", ".gitignore"]

TINY_USERS = ["alpha_lens_demo", "bravo_frames_demo", "charlie_grain_demo"]


def tiny_params() -> dict[str, Any]:
    """params.yaml for a world of a few users and a few dozen small posts."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["crawl"]["demo"].update(start="2025-01-01", until="2025-03-01", image_size=64, mean_interval_days=4.0)
    params["crawl"]["shard_size"] = 20
    params["preprocess"]["max_posts_per_user"] = None
    params["train"].update(epochs=2, batch_size=16)
    params["evaluate"].update(n_sets=200, n_boot=50, min_items=3)
    return params


def write_params(project: Path, params: dict[str, Any]) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run(cmd: list[str], cwd: Path, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command in a project copy with the test venv first on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "IMGRATE_QUIET": "1",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "imgrate-test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
           "GIT_COMMITTER_NAME": "imgrate-test", "GIT_COMMITTER_EMAIL": "test@example.invalid"}
    env.pop("IMGRATE_ROOT", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([str(BIN / "dvc"), *args], project, check=check)


def git(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(["git", *args], project)


def make_project(dest: Path, params: dict[str, Any] | None = None, users: list[str] | None = None) -> Path:
    """A git-initialised copy of the project with tiny params, committed once."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    write_params(dest, params or tiny_params())
    (dest / "users.txt").write_text("\n".join(users or TINY_USERS) + "\n")
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "tiny project")
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh tiny project (git repo, DVC, tiny params) for one test."""
    return make_project(tmp_path / "project")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory):
    """A tiny world crawled, exported and preprocessed once (in-process); treat as read-only."""
    from imgrate.crawl.stage import run_stage as crawl
    from imgrate.export import run_stage as export
    from imgrate.params import parse_params
    from imgrate.paths import Paths
    from imgrate.preprocess import run_stage as preprocess

    root = tmp_path_factory.mktemp("tiny-world")
    (root / "users.txt").write_text("\n".join(TINY_USERS) + "\n")
    params = parse_params(tiny_params())
    paths = Paths(root)
    crawl(params.crawl, paths)
    export(params.export, paths)
    preprocess(params.preprocess, paths)
    return params, paths
