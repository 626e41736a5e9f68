"""Append-only tar shards of Instaloader's files under ``data/raw/shards/``.

A shard is written once, under a temporary name outside the shards folder, then renamed
into place, and never rewritten. Members keep Instaloader's own names
(``<user>/<date>_UTC.jpg``, ``<user>/<date>_UTC.json.xz``, ``<user>/<user>_<id>.json.xz``),
so ``tar xf`` gives Instaloader's layout. Tar headers are deterministic (sorted members,
no owner names) and shard-wide facts (when and how it was crawled) live in a PAX global
header, which ``tar xf`` ignores.

Shards are input, not truth (they may come from another crawler, or be damaged on the way),
so each shard checks itself. The PAX global header, the first thing in the file, holds a
format marker (``imgrate.format``) and a manifest (``imgrate.manifest``): every member's
name, size and sha256, and the post count. Every reader (:func:`iter_members`) compares what
it reads with the manifest and raises :class:`ShardDamaged`, naming the shard and the member,
when a member is altered or missing: a file cut anywhere, or a member header zeroed (the tar
reader takes a zero block for the end of the archive and silently stops there), leaves
members that the manifest names unread. Because the manifest is at the start, it survives
the damage and says exactly which posts were lost, so the crawler can fetch them again.
Older shards without a manifest still read; for them (and for every shard) the bytes after
the last member must be the end-of-archive zero blocks, so a zeroed header or a cut is
noticed there too, only without the list of what was lost.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from imgrate.errors import DataError
from imgrate.io import atomic_path

SHARD_RE = re.compile(r"^(?:(?P<prefix>[a-z0-9-]+)-)?(?P<num>\d{6})\.tar$")
PAX_PREFIX = "imgrate."
FORMAT = 2  # 1: no manifest (shards written before it existed); 2: manifest in the PAX global header
FORMAT_KEY = PAX_PREFIX + "format"
MANIFEST_KEY = PAX_PREFIX + "manifest"
# A post's metadata member: <user>/<date>_UTC.json.xz (one per post; sidecar images add _1, _2)
POST_METADATA_RE = re.compile(r"^[^/]+/\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_UTC\.json\.xz$")
# No member of Instaloader's layout comes near this (photos are at most a few MB, metadata a
# few KB): a bigger one is not read into memory, and its shard is reported damaged.
MAX_MEMBER_BYTES = 64 * 2**20
_END_BLOCKS = 2 * tarfile.BLOCKSIZE  # a tar file ends with two zero blocks (then zero padding)
# The owner name of every member of a shard with a manifest: a second marker, in each member's
# own header, so a shard whose PAX header lost its manifest (zeroed) is not taken for an old one.
OWNER = "imgrate"


def _show(name: str) -> str:
    """A member name as messages quote it: as it is when short and printable, else an excerpt."""
    return name if len(name) <= 120 and name.isprintable() else repr(name[:100]) + "..."


class ShardDamaged(DataError):
    """A shard is cut, has a zeroed or damaged header, or a member differs from its manifest."""

    def __init__(self, shard: str, detail: str, member: str | None = None) -> None:
        self.shard, self.detail, self.member = shard, detail, member
        super().__init__(f"shard {shard} is damaged: {detail}")


class ShardUnreadable(ShardDamaged):
    """A shard that does not open as a tar file at all (empty, cut in its first header, not a tar)."""


@dataclass(frozen=True)
class Manifest:
    """What a shard says it holds (its PAX global header)."""

    members: dict[str, tuple[int, str]]  # name -> (size, sha256), in the order written
    posts: int

    def to_pax(self) -> dict[str, str]:
        doc = {"posts": self.posts, "members": [[n, size, sha] for n, (size, sha) in self.members.items()]}
        return {FORMAT_KEY: str(FORMAT), MANIFEST_KEY: json.dumps(doc, separators=(",", ":"))}


def _parse_manifest(shard: str, pax: dict[str, str]) -> Manifest | None:
    """The manifest in a shard's PAX global header; None for a shard without one (format 1)."""
    if FORMAT_KEY not in pax and MANIFEST_KEY not in pax:
        return None
    try:
        if pax.get(FORMAT_KEY) != str(FORMAT):
            raise ValueError(f"unknown format {pax.get(FORMAT_KEY)!r:.40}")
        doc = json.loads(pax[MANIFEST_KEY])
        members: dict[str, tuple[int, str]] = {}
        for name, size, sha in doc["members"]:
            if not (isinstance(name, str) and type(size) is int and size >= 0 and isinstance(sha, str)
                    and re.fullmatch(r"[0-9a-f]{64}", sha) and name not in members):
                raise ValueError("a member entry is not (name, size, sha256)")
            members[name] = (size, sha)
        posts = doc["posts"]
        if type(posts) is not int or posts < 0:
            raise ValueError("post count is not a count")
    except (KeyError, TypeError, ValueError, RecursionError) as err:
        raise ShardDamaged(shard, f"its manifest is unreadable ({type(err).__name__}: {str(err)[:100]})") from None
    return Manifest(members, posts)


@dataclass(frozen=True)
class StagedFile:
    """A file Instaloader wrote, and its name inside a shard."""

    arcname: str  # "<user>/<file name>"
    path: Path


def list_shards(shard_dir: Path) -> list[Path]:
    """All complete shards, in the order they were written."""
    if not shard_dir.is_dir():
        return []
    return sorted(p for p in shard_dir.iterdir() if SHARD_RE.match(p.name))


def next_shard_path(shard_dir: Path, prefix: str | None = None) -> Path:
    """The name of the next shard: one more than the highest number written with ``prefix``."""
    numbers = [
        int(m["num"])
        for p in list_shards(shard_dir)
        if (m := SHARD_RE.match(p.name)) and m["prefix"] == prefix
    ]
    num = max(numbers, default=0) + 1
    return shard_dir / (f"{prefix}-{num:06d}.tar" if prefix else f"{num:06d}.tar")


def write_shard(
    dest: Path, files: Sequence[StagedFile], meta: dict[str, str], tmp_dir: Path, max_mtime: int
) -> Path:
    """Pack ``files`` into a new shard at ``dest`` atomically and return ``dest``.

    ``meta`` goes into the PAX global header under ``imgrate.<key>``, with the manifest of
    every member (name, size, sha256) and the post count (members named like a post's
    metadata). Member mtimes are the files' own (Instaloader sets a post's files to its date),
    capped at ``max_mtime`` so that files written during the crawl carry the crawl time, not
    the wall clock. Files are streamed twice (hash, then write), never held in memory.
    """
    entries: list[tuple[str, int, int, str, Callable[[], BinaryIO]]] = []
    for f in sorted(files, key=lambda f: f.arcname):
        stat = f.path.stat()
        with open(f.path, "rb") as fh:
            sha = hashlib.file_digest(fh, "sha256").hexdigest()
        entries.append((f.arcname, stat.st_size, min(int(stat.st_mtime), max_mtime), sha,
                        lambda path=f.path: open(path, "rb")))
    return _write(dest, entries, meta, tmp_dir)


def pack_shard(dest: Path, entries: Sequence[tuple[str, bytes, int]], meta: dict[str, str],
               tmp_dir: Path | None = None) -> Path:
    """Write ``(name, bytes, mtime)`` entries, in the order given, as a new shard with its
    manifest (atomically); :func:`write_shard` for files on disk."""
    return _write(dest, [(name, len(data), mtime, hashlib.sha256(data).hexdigest(),
                          lambda data=data: io.BytesIO(data)) for name, data, mtime in entries], meta, tmp_dir)


def _write(dest: Path, entries: Sequence[tuple[str, int, int, str, Callable[[], BinaryIO]]],
           meta: dict[str, str], tmp_dir: Path | None) -> Path:
    if dest.exists():
        raise DataError(f"shard {dest.name} already exists; shards are never rewritten")
    names = [e[0] for e in entries]
    if len(set(names)) != len(names):
        raise DataError(f"shard {dest.name}: a member name is given twice")
    manifest = Manifest({name: (size, sha) for name, size, _, sha, _ in entries},
                        posts=sum(1 for n in names if POST_METADATA_RE.fullmatch(n)))
    pax = {PAX_PREFIX + k: str(v) for k, v in sorted(meta.items())}
    pax.update(manifest.to_pax())
    with atomic_path(dest, tmp_dir=tmp_dir) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT, pax_headers=pax) as tar:
            for name, size, mtime, _, source in entries:
                info = tarfile.TarInfo(name)
                info.size = size
                info.mtime = mtime
                info.mode = 0o644
                info.uname = info.gname = OWNER
                with source() as fh:
                    tar.addfile(info, fh)
    return dest


def shard_meta(shard: Path) -> dict[str, str]:
    """The ``imgrate.*`` facts stored in a shard's PAX global header."""
    with open_shard(shard) as tar:
        return {
            k[len(PAX_PREFIX):]: v for k, v in tar.pax_headers.items()
            if k.startswith(PAX_PREFIX) and k not in (FORMAT_KEY, MANIFEST_KEY)
        }


def read_manifest(shard: Path) -> Manifest | None:
    """A shard's manifest (None for a shard written before manifests); :class:`ShardDamaged`
    when the header that holds it is unreadable."""
    with open_shard(shard) as tar:
        return _parse_manifest(shard.name, dict(tar.pax_headers))


def open_shard(shard: Path) -> tarfile.TarFile:
    """Open a shard for reading, with a :class:`ShardUnreadable` naming it when it is unreadable."""
    try:
        return tarfile.open(shard, "r:")
    except (tarfile.TarError, OSError) as err:
        raise ShardUnreadable(shard.name, f"not a readable tar file: {err}") from err


def member_names(shard: Path) -> list[str]:
    """Names of the files in a shard."""
    with open_shard(shard) as tar:
        return [m.name for m in tar.getmembers() if m.isfile()]


def iter_members(shard: Path, names: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, bytes)`` for the files of a shard (only ``names`` when given), in order,
    checking the shard on the way (see the module docstring).

    Raises :class:`ShardDamaged` naming the shard (and the member) when a member read differs
    from the manifest, is larger than :data:`MAX_MEMBER_BYTES`, or is cut, and, once every
    header has been walked, when members that the manifest names were never reached or the
    archive does not end as a tar file ends. A caller that must not use part of a damaged
    shard collects what it reads and uses it only when the iteration ends normally.
    """
    with open_shard(shard) as tar:
        manifest = _parse_manifest(shard.name, dict(tar.pax_headers))
        seen: set[str] = set()
        last: str | None = None
        try:
            for member in tar:
                last = member.name
                if not member.isfile():
                    continue
                if manifest is None and member.uname == OWNER:
                    raise ShardDamaged(shard.name, "its members were written with a manifest, and the header "
                                       "that held it is damaged", member.name)
                if manifest is not None:
                    if member.name not in manifest.members or member.name in seen:
                        raise ShardDamaged(shard.name, f"member {_show(member.name)} is not in its manifest",
                                           member.name)
                    if member.size != manifest.members[member.name][0]:
                        raise ShardDamaged(shard.name, f"member {_show(member.name)} is {member.size} bytes, its "
                                           f"manifest says {manifest.members[member.name][0]}", member.name)
                seen.add(member.name)
                if member.size > MAX_MEMBER_BYTES:
                    raise ShardDamaged(shard.name, f"member {_show(member.name)} is {member.size} bytes, more than "
                                       f"any photo or metadata file ({MAX_MEMBER_BYTES} at most); not read",
                                       member.name)
                if names is not None and member.name not in names:
                    continue
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else b""
                if len(data) != member.size:
                    raise ShardDamaged(shard.name, f"cut inside member {_show(member.name)} "
                                       f"({len(data)} of {member.size} bytes)", member.name)
                if manifest is not None and hashlib.sha256(data).hexdigest() != manifest.members[member.name][1]:
                    raise ShardDamaged(shard.name, f"member {_show(member.name)} differs from its manifest (sha256)",
                                       member.name)
                yield member.name, data
            end = tar.offset
        except tarfile.TarError as err:  # a cut inside a member, a damaged header
            where = f" after member {_show(last)}" if last else ""
            raise ShardDamaged(shard.name, f"unreadable{where}: {err}", last) from None
    if manifest is not None and (missing := [n for n in manifest.members if n not in seen]):
        raise ShardDamaged(shard.name, f"{len(missing)} of {len(manifest.members)} members never reached, from "
                           f"{_show(missing[0])} on: the file is cut or a header is zeroed", missing[0])
    _check_end(shard, end, last)


def _check_end(shard: Path, end: int, last: str | None) -> None:
    """After the last member a tar file holds only its end-of-archive zero blocks."""
    size = shard.stat().st_size
    after = f" after member {_show(last)}" if last else " before its first member"
    if size - end < _END_BLOCKS:
        raise ShardDamaged(shard.name, f"cut{after} (no end-of-archive blocks)")
    with open(shard, "rb") as fh:
        fh.seek(end)
        while chunk := fh.read(1 << 16):
            if chunk.count(0) != len(chunk):
                raise ShardDamaged(shard.name, f"the archive seems to end{after} (byte {end}), but data "
                                   "follows: a member header is zeroed or damaged")


def check_shard(shard: Path) -> ShardCheck:
    """Read a whole shard through :func:`iter_members`: what it holds, or why it is damaged."""
    names: list[str] = []
    try:
        for name, _ in iter_members(shard):
            names.append(name)
    except ShardDamaged as err:
        manifest = _safe_manifest(shard)
        held = list(manifest.members) if manifest else names
        return ShardCheck(shard.name, FORMAT if manifest else 1, held, err.detail, err.member)
    except DataError as err:  # not a tar file at all
        return ShardCheck(shard.name, 1, [], str(err))
    manifest = _safe_manifest(shard)
    return ShardCheck(shard.name, FORMAT if manifest else 1, names)


def _safe_manifest(shard: Path) -> Manifest | None:
    try:
        return read_manifest(shard)
    except DataError:
        return None


@dataclass
class ShardCheck:
    """What :func:`check_shard` found. ``members`` is what the shard holds: every member when
    it is intact; when it is damaged, what its manifest names (what was lost), or for a shard
    without a manifest the members read before the damage."""

    shard: str
    format: int
    members: list[str] = field(default_factory=list)
    problem: str | None = None
    member: str | None = None  # where the damage was noticed, when known

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_shard_cached(shard: Path, cache_dir: Path) -> ShardCheck:
    """:func:`check_shard` through a cache keyed by the shard's name, size and mtime (zeroing
    bytes keeps the size, not the mtime). ``imgrate verify`` never uses the cache."""
    st = shard.stat()
    cache = cache_dir / f"{shard.name}.{st.st_size}.{st.st_mtime_ns}.v{FORMAT}.json"
    if cache.exists():
        try:
            doc = json.loads(cache.read_text(encoding="utf-8"))
            return ShardCheck(doc["shard"], doc["format"], list(doc["members"]), doc["problem"], doc["member"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache entry is rebuilt below
    result = check_shard(shard)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for old in cache_dir.glob(f"{shard.name}.*.json"):  # entries of the shard's earlier states
        old.unlink(missing_ok=True)
    with atomic_path(cache) as tmp:
        tmp.write_text(json.dumps(vars(result)), encoding="utf-8")
    return result


def read_member(shard: Path, name: str) -> bytes:
    """One member's bytes, checked like :func:`iter_members` checks them."""
    for _, data in iter_members(shard, {name}):
        return data
    raise DataError(f"shard {shard.name} has no member {name}")


def post_key(arcname: str) -> str | None:
    """The post a member belongs to (``<user>/<date>_UTC``), or None for a profile file."""
    m = re.match(r"^(?P<key>[^/]+/\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_UTC)", arcname)
    return m["key"] if m else None

