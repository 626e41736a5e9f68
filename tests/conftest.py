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

TINY_USERS = ["alpha_lens_demo", "bravo_frames_demo", "charlie_grain_demo"]

# A developer's own database is never written by the tests (stages and the CLI read this
# variable); tests/test_mongo.py sets it where it wants a server, from the mongo_uri fixture.
os.environ.pop("IMGRATE_MONGODB_URI", None)


def tiny_params() -> dict[str, Any]:
    """params.yaml for a world of a few users and a few dozen small posts."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["crawl"]["demo"].update(start="2025-01-01", until="2025-03-01", image_size=64, mean_interval_days=4.0)
    params["crawl"]["shard_size"] = 20
    params["preprocess"]["max_posts_per_user"] = None
    params["featurize"].update(input_size=64, batch_size=32)
    for section in params["train"].values():  # every model of the registry: a quick fit
        if isinstance(section, dict):
            section.update({k: v for k, v in {"epochs": 2, "patience": 2, "batch_size": 16}.items() if k in section})
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


def copy_project_files(dest: Path) -> None:
    """Copy what the pipeline needs (imgrate.paths.PROJECT_FILES) into ``dest``."""
    from imgrate.paths import copy_project_files as copy

    copy(ROOT, dest)


def make_project(dest: Path, params: dict[str, Any] | None = None, users: list[str] | None = None) -> Path:
    """A git-initialised copy of the project with tiny params, committed once."""
    copy_project_files(dest)
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
    """A tiny world crawled, exported, preprocessed and featurized once (in-process); treat as read-only."""
    from imgrate.crawl.stage import run_stage as crawl
    from imgrate.export import run_stage as export
    from imgrate.featurize import run_stage as featurize
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
    featurize(params.featurize, paths)
    return params, paths


def copy_world(paths: Any, dest: Path) -> Any:
    """A writable copy of a world's raw data, tables, dataset and features under ``dest``; returns its Paths."""
    from imgrate.paths import Paths

    local = Paths(dest)
    for src, dst in ((paths.raw, local.raw), (paths.tables, local.tables), (paths.dataset, local.dataset),
                     (paths.features, local.features)):
        if src.exists():
            shutil.copytree(src, dst)
    return local


# --- MongoDB: a wire-protocol server in its own process (tests/mongo_server.py) -----------

# the Python that has mongoeco[wire] (>= 3.13): `make mongo-venv` makes .venv-mongo
MONGO_PYTHON = Path(os.environ.get("IMGRATE_TEST_MONGO_PYTHON") or ROOT / ".venv-mongo" / "bin" / "python")
MONGO_SERVER = ROOT / "tests" / "mongo_server.py"
TEST_MONGODB_ENV = "IMGRATE_TEST_MONGODB_URI"


def _start_mongo_server(log: Path, timeout_s: float = 60.0) -> tuple[subprocess.Popen[str], str]:
    """Start tests/mongo_server.py under .venv-mongo's Python; return it and the URI it printed."""
    import select
    import time

    with open(log, "w") as err:
        # stdin stays open: the server exits when it closes, so it dies with this pytest run
        proc = subprocess.Popen([str(MONGO_PYTHON), str(MONGO_SERVER), "--port", "0"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline().strip()
            if line.startswith("mongodb://"):
                return proc, line
            break
        if proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    pytest.fail(f"the test MongoDB server did not start; {log}:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory):
    """The URI of a MongoDB server for this session: $IMGRATE_TEST_MONGODB_URI, else a fresh
    mongoeco wire-protocol server (``make mongo-venv``) on a free port of 127.0.0.1, killed at the end.

    Without either, the test fails when $CI is set and is skipped otherwise.
    """
    import time

    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    proc = None
    uri = os.environ.get(TEST_MONGODB_ENV)
    if not uri:
        if not MONGO_PYTHON.exists():
            msg = (f"no MongoDB for the tests: {MONGO_PYTHON} is missing (run `make mongo-venv`; it needs "
                   f"Python >= 3.13) and {TEST_MONGODB_ENV} is not set")
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
        proc, uri = _start_mongo_server(tmp_path_factory.mktemp("mongo") / "server.log")
    try:
        client: MongoClient = MongoClient(uri, serverSelectionTimeoutMS=2000)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.admin.command("ping")  # server_info() needs buildinfo, which mongoeco lacks
                break
            except PyMongoError as err:
                if time.monotonic() > deadline:
                    pytest.fail(f"no answer to ping from the test MongoDB server: {type(err).__name__}")
                time.sleep(0.2)
        client.close()
        yield uri
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def mongo_db(mongo_uri: str, request: pytest.FixtureRequest):
    """A pymongo Database with a name unique to this test, dropped afterwards."""
    import re
    import uuid

    from pymongo import MongoClient

    name = "imgrate_test_" + re.sub(r"\W", "_", request.node.name)[:30] + "_" + uuid.uuid4().hex[:8]
    client: MongoClient = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()


def repack_shard(shard: Path, replace: dict[str, bytes]) -> None:
    """Test only: rewrite a shard with some members' bytes swapped, and a manifest that
    matches them (as a crawler that stored bad content would write it; real shards are never
    rewritten)."""
    import tarfile

    from imgrate.shards import pack_shard, shard_meta

    meta = shard_meta(shard)
    with tarfile.open(shard) as tar:
        entries = [(m.name, replace.get(m.name, tar.extractfile(m).read()), int(m.mtime))
                   for m in tar.getmembers() if m.isfile()]
    shard.unlink()
    pack_shard(shard, entries, meta)


def mangle_first_post(paths, dest: Path, mangle):
    """A copy of ``paths``' raw data whose first shard has one post's metadata passed
    through ``mangle`` (bytes -> bytes), for tests of corrupt or incomplete members."""
    import tarfile

    from imgrate.paths import Paths
    from imgrate.shards import list_shards

    out = Paths(dest)
    shutil.copytree(paths.raw, out.raw)
    shard = list_shards(out.shards)[0]
    with tarfile.open(shard) as tar:
        victim = next(m.name for m in tar.getmembers() if m.name.endswith("_UTC.json.xz"))
        data = tar.extractfile(victim).read()
    repack_shard(shard, {victim: mangle(data)})
    return out
