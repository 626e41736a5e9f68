"""Atomic file writes: a killed stage never leaves a half-written file that looks complete."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from imgrate.errors import DataError, StorageFull


def _file_mode() -> int:
    """The mode a plain ``open()`` would give a new file (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


_FULL = (errno.ENOSPC, errno.EDQUOT)


def _full(path: Path) -> StorageFull:
    return StorageFull(f"no space left on the device to write {path}: free some space there "
                       f"(df -h {path.parent}) and run again; nothing was left half-written")


@contextmanager
def atomic_path(path: Path, tmp_dir: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path; on success it is renamed onto ``path``, else removed.

    The temporary file lives beside ``path`` (or in ``tmp_dir``, which must be on the same
    filesystem) under a hidden name, so a reader never sees a partial file under the real name.
    A full device (or quota) while writing it raises :class:`StorageFull`, one line naming
    ``path``, and the temporary file is removed.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        where = tmp_dir or path.parent
        where.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=where)
    except OSError as err:
        if err.errno in _FULL:
            raise _full(path) from None
        raise
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        # numpy's short writes carry no errno ("6400 requested and 4064 written"): ask the device
        if err.errno in _FULL or (err.errno is None and _nearly_full(where)):
            raise _full(path) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _nearly_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def reserve(path: Path, nbytes: int, shown: Path | None = None) -> None:
    """Allocate ``nbytes`` of disk for the file at ``path`` now, so that a memory-mapped write
    into it never meets a full device page by page: that is a SIGBUS ("Bus error"), which kills
    the process with no message and leaves its temporary file. A full device raises
    :class:`StorageFull` here instead, naming ``shown`` (the file the temporary one becomes).
    Filesystems that cannot allocate ahead are left as they are."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, max(nbytes, 1))
    except OSError as err:
        if err.errno in _FULL:
            raise _full(shown or path) from None
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


# what atomic_path's mkstemp names look like: ".<name>.<8 random characters>.tmp"
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")


def remove_stale_tmp(folder: Path, names: Iterable[str] | None = None) -> list[str]:
    """Remove the temporary files that :func:`atomic_path` leaves in ``folder`` when its
    process is killed between creating one and renaming it, for the outputs ``names`` (every
    one when None); return the names removed.

    A stage calls it on its own outputs before it writes them, so a kill -9 never leaves a
    temporary file inside a DVC output for good. DVC runs one stage of a project at a time,
    so no live write is touched (the same stage run by hand beside ``dvc repro`` could be).
    """
    if not folder.is_dir():
        return []
    wanted = None if names is None else set(names)
    removed = []
    for p in sorted(folder.iterdir()):
        m = _TMP_RE.match(p.name)
        if m and (wanted is None or m["name"] in wanted) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


@contextmanager
def atomic_open(path: Path, mode: str = "w", tmp_dir: Path | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces ``path`` only when closed cleanly."""
    with atomic_path(path, tmp_dir) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as fh:
            yield fh


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_open(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line, atomically; return the number of rows."""
    n = 0
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True, ensure_ascii=False))
            fh.write("\n")
            n += 1
    return n


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file written by :func:`write_jsonl`.

    A line that is not a JSON object (a cut or edited file) raises :class:`DataError` naming
    the file and the line, with a hint to rebuild it.
    """
    rows = []
    for lineno, line in enumerate(read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{lineno}: not a JSON line ({err.msg} at column {err.colno}); the file "
                            "is cut or was edited: rebuild it (dvc repro, or the stage that writes it)") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}; "
                            "rebuild the file (dvc repro)")
        rows.append(row)
    return rows


def read_utf8(path: Path) -> str:
    """The text of ``path``; bytes that are not UTF-8 raise :class:`DataError` naming the file and line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column {column}); "
                        "save the file as UTF-8") from None
