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

import datetime as dt
import functools
import hashlib
import io
import json
import re
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
CHECK_VERSION = 3  # bump when what check_shard_cached stores changes


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
        listed = sum(1 for name in members if POST_METADATA_RE.fullmatch(name))
        if posts != listed:
            raise ValueError(f"it says {posts} posts but lists the metadata of {listed}")
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
                        _opener(f.path)))
    return _write(dest, entries, meta, tmp_dir)


def _opener(path: Path) -> Callable[[], BinaryIO]:
    def open_binary() -> BinaryIO:
        return open(path, "rb")

    return open_binary


def pack_shard(dest: Path, entries: Sequence[tuple[str, bytes, int]], meta: dict[str, str],
               tmp_dir: Path | None = None) -> Path:
    """Write ``(name, bytes, mtime)`` entries, in the order given, as a new shard with its
    manifest (atomically); :func:`write_shard` for files on disk."""
    return _write(dest, [(name, len(data), mtime, hashlib.sha256(data).hexdigest(),
                          functools.partial(io.BytesIO, data)) for name, data, mtime in entries], meta, tmp_dir)


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
    with (atomic_path(dest, tmp_dir=tmp_dir) as tmp,
          tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT, pax_headers=pax) as tar):
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
    """Read a whole shard through :func:`iter_members`: what it holds, or why it is damaged.

    For a damaged shard, ``members`` is what it held: its manifest when that reads whole,
    else every name that :func:`salvage` recovers (the manifest's surviving text and the
    member headers that survive), with ``complete`` saying whether that is provably all."""
    names: list[str] = []
    try:
        for name, _ in iter_members(shard):
            names.append(name)
    except DataError as err:  # damaged, or not a tar file at all
        detail, member = (err.detail, err.member) if isinstance(err, ShardDamaged) else (str(err), None)
        manifest = _safe_manifest(shard)
        found = salvage(shard)
        if manifest is not None:
            return ShardCheck(shard.name, FORMAT, list(manifest.members), detail, member,
                              crawled_at=found.meta.get("crawled_at"))
        return ShardCheck(shard.name, FORMAT if found.manifest else 1, found.names, detail, member,
                          complete=found.complete, covered=[list(c) for c in found.covered],
                          crawled_at=found.meta.get("crawled_at"))
    manifest = _safe_manifest(shard)
    meta = shard_meta(shard)
    # a shard whose posts cannot be dated is not used (export skips it): its posts are fetched again
    return ShardCheck(shard.name, FORMAT if manifest else 1, names, crawl_time_problem(meta.get("crawled_at"), _MAX_TIME),
                      crawled_at=meta.get("crawled_at"))


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
    complete: bool = True  # ``members`` is all the shard held (always, when it is intact)
    # when not complete: the ranges of member names known whole ([lo, hi], null = open end)
    covered: list[list[str | None]] = field(default_factory=list)
    crawled_at: str | None = None  # the shard's header says so (None when lost or absent)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def user_known(self, user: str) -> bool:
        """Whether every member of ``user`` the shard held is in ``members``."""
        return self.complete or _in_ranges(user, self.covered)


def check_shard_cached(shard: Path, cache_dir: Path) -> ShardCheck:
    """:func:`check_shard` through a cache keyed by the shard's name, size and mtime (zeroing
    bytes keeps the size, not the mtime). ``imgrate verify`` never uses the cache."""
    st = shard.stat()
    cache = cache_dir / f"{shard.name}.{st.st_size}.{st.st_mtime_ns}.v{CHECK_VERSION}.json"
    if cache.exists():
        try:
            doc = json.loads(cache.read_text(encoding="utf-8"))
            return ShardCheck(**{k: doc[k] for k in ShardCheck.__dataclass_fields__})
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



# --- salvage: what a damaged shard held -----------------------------------------------------

# One manifest entry as json.dumps writes it: ["<name>",<size>,"<sha256>"]
_ENTRY_RE = re.compile(rb'\["((?:[^"\\\x00-\x1f]|\\.){1,4096})",(\d{1,15}),"([0-9a-f]{64})"\]')
_MANIFEST_START_RE = re.compile(rb'imgrate\.manifest=\{"posts":\d{1,12},"members":\[')
_META_RE = re.compile(rb"(?<![^\n\x00])\d{1,12} imgrate\.([a-z_]{1,40})=([^\n\x00]{0,400})\n")
_MAX_SALVAGE_SCAN = MAX_MEMBER_BYTES  # bytes of manifest text looked at, at most


@dataclass(frozen=True)
class _Header:
    """A member header found by :func:`_walk_headers`."""

    start: int  # its first header block (a long name's extended header included)
    data: int  # where its data starts
    size: int
    name: str
    is_file: bool
    cut: bool  # the file ends inside its data

    @property
    def end(self) -> int:
        return self.data + -(-self.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _walk_headers(fh: BinaryIO, size: int) -> tuple[list[_Header], tarfile.TarInfo | None]:
    """Every member header that survives, found block by block (as ``tar --ignore-zeros``
    does: a zero or damaged block is stepped over), and the PAX global header at the start
    when it survives. Data blocks are skipped by the size their header gives; what a
    damaged header hid is stepped over block by block (its bytes fail the header checksum)."""
    found: list[_Header] = []
    global_header: tarfile.TarInfo | None = None
    offset, pending_start, pending_name = 0, None, None
    while offset + tarfile.BLOCKSIZE <= size:
        fh.seek(offset)
        try:
            info = tarfile.TarInfo.frombuf(fh.read(tarfile.BLOCKSIZE), "utf-8", "surrogateescape")
        except tarfile.HeaderError:  # zeros, or not a header (data whose header is gone)
            offset += tarfile.BLOCKSIZE
            pending_start = pending_name = None
            continue
        data = offset + tarfile.BLOCKSIZE
        end = data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME):
            if info.size > _MAX_SALVAGE_SCAN:  # not a header of ours: step over the block
                offset += tarfile.BLOCKSIZE
                continue
            fh.seek(data)
            text = fh.read(info.size)
            if info.type == tarfile.XGLTYPE:
                if offset == 0:
                    global_header = info
            elif info.type == tarfile.GNUTYPE_LONGNAME:
                pending_start, pending_name = offset, text.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif (m := re.search(rb"(?m)^\d+ path=([^\n]*)\n", text)) is not None:
                pending_start, pending_name = offset, m[1].decode("utf-8", "surrogateescape")
            offset = end
            continue
        found.append(_Header(pending_start if pending_start is not None else offset, data, info.size,
                             pending_name or info.name, info.isreg(), cut=data + info.size > size))
        pending_start = pending_name = None
        if data + info.size > size:
            break
        offset = end
    return found, global_header


def _zeros_to_end(fh: BinaryIO, start: int, size: int) -> bool:
    """Whether the file holds a tar file's end (at least two zero blocks, only zeros) from ``start``."""
    if size - start < _END_BLOCKS:
        return False
    fh.seek(start)
    while chunk := fh.read(1 << 16):
        if chunk.count(0) != len(chunk):
            return False
    return True


Range = tuple[str | None, str | None]  # member names from lo to hi, both included; None = open end


def _in_ranges(user: str, ranges: Sequence[Sequence[str | None]]) -> bool:
    """Whether every member name of ``user`` (``<user>/...``) lies inside one of ``ranges``."""
    first, past = user + "/", user + "0"  # "0" follows "/": every name of the user sorts between
    return any((lo is None or lo < first) and (hi is None or past <= hi) for lo, hi in ranges)


def _merge(ranges: list[Range]) -> list[Range]:
    """Overlapping or touching name ranges as one."""
    out: list[Range] = []
    for lo, hi in sorted(ranges, key=lambda r: (r[0] is not None, r[0] or "")):
        if out and (out[-1][1] is None or (lo is not None and lo <= out[-1][1])):
            prev_lo, prev_hi = out[-1]
            out[-1] = (prev_lo, None if prev_hi is None or hi is None else max(prev_hi, hi))
        else:
            out.append((lo, hi))
    return out


@dataclass(frozen=True)
class Salvage:
    """What :func:`salvage` recovered from a damaged shard."""

    names: list[str]  # every member name it is known to have held
    complete: bool  # ``names`` is provably every member
    covered: list[Range]  # name ranges known whole (every member named inside them is in ``names``)
    meta: dict[str, str]  # the ``imgrate.*`` facts of its header that survive (crawled_at, posts, ...)
    manifest: bool  # manifest text survives (a format-2 shard)


def salvage(shard: Path) -> Salvage:
    """Name what a damaged shard held, from everything that survives of it.

    Two sources, neither trusted whole: the manifest's text (whatever part of the PAX global
    header survives: a cut keeps its start, a zeroed start keeps the rest; each entry is
    read on its own) and the member headers read one by one (:func:`_walk_headers`). Both
    list members in name order (:func:`write_shard` sorts them), so each unbroken run of
    entries, and each unbroken chain of member headers, covers the range of names from its
    first to its last: a chain that starts right after the PAX header covers everything
    before it, one that ends in the end-of-archive blocks everything after. When the ranges
    cover every name, the list is complete; else :meth:`ShardCheck.user_known` tells the
    users whose posts are all named from those who may have lost some that no one can name.
    """
    size = shard.stat().st_size
    with open(shard, "rb") as fh:
        headers, global_header = _walk_headers(fh, size)
        first = headers[0].start if headers else size
        fh.seek(0)
        text = fh.read(min(first, _MAX_SALVAGE_SCAN))
        tail_ok = bool(headers) and not headers[-1].cut and _zeros_to_end(fh, headers[-1].end, size)
    meta = {k.decode(): v.decode("utf-8", "replace") for k, v in _META_RE.findall(text)
            if k not in (b"format", b"manifest")}
    ranges: list[Range] = []
    # the manifest's text: each unbroken run of entries covers the names from its first to its last
    start = _MANIFEST_START_RE.search(text)
    listed: list[str] = []
    manifest_end: int | None = None
    runs: list[list[tuple[str, int, int]]] = []  # (name, start, end) of the entries of each run
    for m in _ENTRY_RE.finditer(text):
        try:
            name = json.loads(b'"' + m[1] + b'"')
        except ValueError:
            continue
        if runs and m.start() == runs[-1][-1][2] + 1 and text[m.start() - 1:m.start()] == b",":
            runs[-1].append((name, m.start(), m.end()))
        else:
            runs.append([(name, m.start(), m.end())])
        listed.append(name)
    for entries in runs:
        end = entries[-1][2]
        closed = text[end:end + 3] == b"]}\n"
        if closed:
            manifest_end = end + 3
        ranges.append((None if start is not None and entries[0][1] == start.end() else entries[0][0],
                       None if closed else entries[-1][0]))
    if start is not None and text[start.end():start.end() + 3] == b"]}\n":  # a manifest of no member
        ranges.append((None, None))
        manifest_end = start.end() + 3
    if listed != sorted(listed):
        ranges = []  # not written by write_shard: runs say nothing about the names between
    # the member headers: each unbroken chain covers the names from its first to its last
    if global_header is not None:
        members_start: int | None = tarfile.BLOCKSIZE + -(-global_header.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    elif manifest_end is not None:
        members_start = -(-manifest_end // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    else:
        members_start = None
    read = [h.name for h in headers if h.is_file]
    chains: list[list[_Header]] = []
    for h in headers:
        if chains and not chains[-1][-1].cut and h.start == chains[-1][-1].end:
            chains[-1].append(h)
        else:
            chains.append([h])
    if read == sorted(read):
        for chain in chains:
            files = [c.name for c in chain if c.is_file]
            lo = None if chain[0].start == members_start else (files[0] if files else None)
            hi = None if chain is chains[-1] and tail_ok else (files[-1] if files else None)
            if files or (lo is None and hi is None):
                ranges.append((lo, hi))
    if not headers and members_start is not None and _zeros_tail(shard, members_start, size):
        ranges.append((None, None))  # the header says where members start, and only the end follows
    merged = _merge(ranges)
    return Salvage(list(dict.fromkeys([*listed, *read])), merged == [(None, None)], merged, meta,
                   start is not None or bool(listed))


def _zeros_tail(shard: Path, start: int, size: int) -> bool:
    with open(shard, "rb") as fh:
        return _zeros_to_end(fh, start, size)


# --- the ledger: the order shards were stored in, and which this project's crawler wrote ---

LEDGER_RE = re.compile(r"^shard-ledger(?:\.(?P<part>part\d+of\d+))?\.txt$")
_LEDGER_LINE = re.compile(r"^(?P<name>\S+) (?P<how>written|seen)$")
DAY = 86_400


@dataclass(frozen=True)
class Ledger:
    """The order shards were stored in (``data/raw/shard-ledger*.txt``).

    A shard's name says nothing about when it was stored (a hand-made ``000000.tar`` sorts
    first), so the crawl keeps a ledger: a line per shard it wrote (``<name> written``, put
    down just before the shard appears) and per shard it found in the folder that no ledger
    listed (``<name> seen``, when the crawl starts). Readers take shards in ledger order, then
    the unlisted ones by name: "first stored wins" means first stored here. Each crawl part
    (``--part I/N``) keeps its own file, as with stamps, so data/raw folders merge by union.
    """

    position: dict[str, tuple[int, str]]  # name -> (line in its file, file name)
    written: frozenset[str]  # shards this project's crawler wrote

    def order(self, shards: Sequence[Path]) -> list[Path]:
        """``shards`` in the order they were stored."""
        end = (1 << 62, "")
        return sorted(shards, key=lambda p: (self.position.get(p.name, end), p.name))


def ledger_files(raw: Path) -> list[Path]:
    """Every ledger file in ``raw`` (the full crawl's and each part's), sorted by name."""
    if not raw.is_dir():
        return []
    return sorted(p for p in raw.iterdir() if LEDGER_RE.match(p.name) and p.is_file())


def read_ledger(raw: Path) -> Ledger:
    """The ledgers in ``raw`` as one; a line that is not ``<shard> written|seen`` is ignored
    (logged by the crawl, which rewrites its file)."""
    position: dict[str, tuple[int, str]] = {}
    written: set[str] = set()
    for path in ledger_files(raw):
        for i, name, how in _ledger_lines(path):
            position[name] = min(position.get(name, (i, path.name)), (i, path.name))
            if how == "written":
                written.add(name)
    return Ledger(position, frozenset(written))


def _ledger_lines(path: Path) -> list[tuple[int, str, str]]:
    try:
        text = path.read_bytes()[: 64 * 2**20].decode("utf-8", "replace")
    except OSError:
        return []
    return [(i, m["name"], m["how"]) for i, line in enumerate(text.splitlines())
            if (m := _LEDGER_LINE.fullmatch(line)) and SHARD_RE.match(m["name"])]


def record_shards(path: Path, names: Sequence[str], how: str, tmp_dir: Path | None = None) -> None:
    """Add ``names`` (not yet in the file) to the ledger file at ``path``, as ``written`` or ``seen``."""
    lines = [f"{name} {h}" for _, name, h in _ledger_lines(path)] if path.exists() else []
    listed = {line.split(" ", 1)[0] for line in lines}
    new = [f"{name} {how}" for name in dict.fromkeys(names) if name not in listed]
    if not new:
        return
    with atomic_path(path, tmp_dir=tmp_dir) as tmp:
        tmp.write_text("".join(line + "\n" for line in [*lines, *new]), encoding="utf-8")


def crawl_time(text: str | None) -> int | None:
    """A shard's crawl time (its header's ``imgrate.crawled_at``) in unix seconds; None when its
    header has none, or one that is no time between Instagram's launch and 2100."""
    if text is None:
        return None
    try:
        when = dt.datetime.fromisoformat(text[:64])
    except ValueError:
        return None
    ts = int((when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp())
    return ts if _MIN_TIME <= ts < _MAX_TIME else None


_MIN_TIME = int(dt.datetime(2010, 1, 1, tzinfo=dt.UTC).timestamp())
_MAX_TIME = int(dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp())


def clock_limit(written_times: Iterable[int], now: float | None = None) -> int:
    """The latest crawl time a shard may claim: now (a day of clock skew allowed), or the newest
    crawl of a shard this project's crawler wrote (the simulated world's clock runs ahead of the
    wall clock when asked to). A shard that claims a later crawl is from a broken clock or forged."""
    now = time.time() if now is None else now
    return max([int(now), *written_times]) + DAY


def crawl_time_problem(shown: str | None, limit: int) -> str | None:
    """Why a shard's crawl time (``imgrate.crawled_at``, as its header says) cannot be used (None when it can)."""
    when = crawl_time(shown)
    if when is None:
        return ("its header has no crawl time (imgrate.crawled_at): its posts cannot be dated" if shown is None
                else f"its header's crawled_at {shown[:40]!r} is not a time between 2010 and 2100")
    if when > limit:
        return (f"its header says it was crawled at {dt.datetime.fromtimestamp(when, dt.UTC):%Y-%m-%dT%H:%M:%SZ}, "
                "in the future (after this machine's clock and every crawl here): forged or a broken clock")
    return None
