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
