"""io: atomic writes, and the removal of what a killed write leaves behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from imgrate.io import atomic_path, remove_stale_tmp, write_json


def leftover(path: Path) -> Path:
    """The temporary file atomic_path creates for ``path``, as a kill -9 before its rename leaves it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.write(fd, b"partial")
    os.close(fd)
    return Path(name)


def test_a_failed_write_leaves_nothing_and_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"] and target.read_text().startswith("{")


def test_stale_temporary_files_are_removed_only_for_the_outputs_named(tmp_path: Path) -> None:
    mine = leftover(tmp_path / "images_50.npy")
    theirs = leftover(tmp_path / "evaluate.json")
    keep = [tmp_path / "images_50.npy", tmp_path / ".gitignore", tmp_path / ".notes.tmp", tmp_path / "x.tmp"]
    for p in keep:
        p.write_text("kept")
    assert remove_stale_tmp(tmp_path, ["images_50.npy", "index.jsonl"]) == [mine.name]
    assert theirs.exists() and not mine.exists() and all(p.exists() for p in keep)
    assert remove_stale_tmp(tmp_path) == [theirs.name]  # no names: every output in the folder
    assert all(p.exists() for p in keep)
    assert remove_stale_tmp(tmp_path / "missing") == []


# --- a full disk (issue 20): one line naming the path, no temporary file left -------------------


def _mount_command() -> list[str] | None:
    """A prefix that runs a command in a new mount namespace where it may mount a tmpfs (root,
    or an unprivileged user namespace); None where neither is allowed."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return None
    with tempfile.TemporaryDirectory() as probe:
        for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
            proc = subprocess.run([*prefix, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {probe}"],
                                  capture_output=True)
            if proc.returncode == 0:
                return prefix
    return None


def run_on_full_disk(project: Path, folder: str, size_kib: int, stage: str) -> tuple[int, str, list[str]]:
    """Run ``stages/<stage>.py`` in ``project`` with ``folder`` a tmpfs of ``size_kib`` KiB (a disk
    that fills up); its exit code, stderr and what the folder held when it ended."""
    import subprocess
    import sys

    prefix = _mount_command()
    if prefix is None:
        pytest.skip("no mount namespace here (unshare --mount): a small tmpfs cannot stand in for a full disk")
    (project / folder).mkdir(parents=True, exist_ok=True)
    script = (f'mount -t tmpfs -o size={size_kib}k tmpfs "{folder}" || exit 99; '
              f'"{sys.executable}" stages/{stage}.py; echo "rc=$?" >&2; ls -A "{folder}"')
    env = {**os.environ, "IMGRATE_QUIET": "1"}
    env.pop("IMGRATE_ROOT", None)
    proc = subprocess.run([*prefix, "sh", "-c", script], cwd=project, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode != 99, proc.stderr
    rc = int(proc.stderr.rsplit("rc=", 1)[1].split()[0])
    return rc, proc.stderr.rsplit("rc=", 1)[0], proc.stdout.split()


@pytest.mark.parametrize("stage, folder, size_kib, output", [
    ("preprocess", "data/dataset", 64, "images_50.npy"),  # a memory-mapped write: was a Bus error
    ("featurize", "data/features", 8, ".npy"),  # was a 24-line traceback
])
def test_a_full_disk_gives_one_line_naming_the_path_and_leaves_no_temporary_file(
        tiny_world, tmp_path: Path, stage: str, folder: str, size_kib: int, output: str) -> None:
    from conftest import copy_project_files, copy_world, tiny_params, write_params

    _, paths = tiny_world
    project = tmp_path / "project with space"
    copy_project_files(project)
    params = tiny_params()
    params["preprocess"]["size"] = 50
    write_params(project, params)
    local = copy_world(paths, project)
    import shutil

    shutil.rmtree(local.root / folder)
    rc, stderr, left = run_on_full_disk(project, folder, size_kib, stage)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc == 2, stderr
    assert "Traceback" not in stderr and "Bus error" not in stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: no space left on the device to write {project / folder}/")
    assert output in errors[0]
    assert not [name for name in left if name.endswith(".tmp")], left
