"""Checks of the crawled data: shards intact, every file decodes, every post is stored once,
stamps hold.

:func:`image_problem` and :func:`metadata_problem` are also the crawler's own checks: an
image is verified before it gets its final name (a truncated download is fetched again), and
every staged file is checked once more before it goes into a shard. :func:`verify_raw` is
``imgrate verify``: it reads every shard through the shard reader's checks (manifest, end of
archive) and every metadata member through :mod:`imgrate.crawl.metadata`, the parser export
uses, so the two agree on what a bad post is. A damaged shard is named and none of its posts
count (export skips it whole, and the crawler fetches its posts again).
"""

from __future__ import annotations

import datetime as dt
import io
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile

from imgrate.crawl.metadata import (
    BadMetadata,
    PostMeta,
    ProfileMeta,
    load_document,
    member_kind,
    parse_counts_member,
    parse_member,
)
from imgrate.crawl.shards import (
    SHARD_RE,
    ShardDamaged,
    ShardUnreadable,
    iter_members,
    list_shards,
    post_key,
    read_manifest,
)
from imgrate.crawl.stamps import post_timestamp, read_stamps, stamps_files
from imgrate.errors import DataError
from imgrate.paths import Paths
from imgrate.progress import track

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def image_problem(data: bytes) -> str | None:
    """Why ``data`` is not a complete image, or None when it decodes fully."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone relaxed Pillow globally: a cut JPEG would pass
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; image checks would miss truncation")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"image does not decode: {err}"
    return None


def metadata_problem(data: bytes) -> str | None:
    """Why ``data`` is not a complete ``.json.xz`` written by Instaloader, or None (decoding
    only, within the size cap; :func:`imgrate.crawl.metadata.parse_member` validates fields)."""
    try:
        load_document(data)
    except BadMetadata as err:
        return f"metadata does not decode: {err}"
    return None


def file_problem(name: str, data: bytes) -> str | None:
    """The check that fits a file of Instaloader's layout (or a counts file), by its name."""
    if member_kind(name) == "counts":
        try:
            parse_counts_member(name, data)
        except BadMetadata as err:
            return str(err)
        return None
    if name.endswith(".json.xz"):
        return metadata_problem(data)
    if name.lower().endswith(IMAGE_SUFFIXES):
        return image_problem(data)
    return None


@dataclass
class Problem:
    """One thing wrong in data/raw."""

    # damaged_shard, unreadable_shard, stray_file, bad_member, bad_metadata, bad_file, duplicate,
    # orphan, missing_image, stamp
    kind: str
    where: str
    detail: str


@dataclass
class RawReport:
    """What :func:`verify_raw` found."""

    shards: int = 0
    posts: int = 0
    images: int = 0
    users: int = 0
    observations: int = 0  # re-read counts stored in counts members
    stamps_files: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "shards": self.shards, "posts": self.posts, "images": self.images,
                "users": self.users, "observations": self.observations, "stamps_files": self.stamps_files,
                "problems": [vars(p) for p in self.problems]}


def verify_raw(paths: Paths) -> RawReport:
    """Check ``data/raw``: shards readable, files decode, one copy of each post, stamps not ahead."""
    report = RawReport()
    if paths.shards.is_dir():
        for p in sorted(paths.shards.iterdir()):
            if not SHARD_RE.match(p.name):
                report.problems.append(Problem("stray_file", p.name, "not a complete shard (a partial write?)"))
    shards = list_shards(paths.shards)
    report.shards = len(shards)
    seen_members: dict[str, str] = {}
    seen_codes: dict[str, str] = {}
    newest: dict[str, int] = {}
    users: set[str] = set()
    for shard in track(shards, "verify"):
        found = _ShardFindings()
        try:
            for name, data in iter_members(shard):
                _check_member(found, shard.name, name, data)
        except ShardUnreadable as err:  # not a tar file at all
            report.problems.append(Problem("unreadable_shard", shard.name, err.detail))
            continue
        except ShardDamaged as err:
            report.problems.append(Problem("damaged_shard", shard.name, _damage_detail(shard, err)))
            continue
        report.problems += found.problems
        report.images += found.images
        report.observations += found.observations
        users |= found.users
        for name in found.members:
            if name in seen_members:
                report.problems.append(Problem("duplicate", f"{shard.name}:{name}",
                                               f"member also in {seen_members[name]}"))
            seen_members[name] = shard.name
        for key, facts in sorted(found.posts.items()):
            where = f"{shard.name}:{key}"
            if "shortcode" not in facts:
                report.problems.append(Problem("orphan", where, "image without the post's metadata"))
                continue
            report.posts += 1
            code = facts["shortcode"]
            if code in seen_codes:
                report.problems.append(Problem("duplicate", where, f"shortcode {code} also in {seen_codes[code]}"))
            seen_codes[code] = where
            if facts.get("typename") == "GraphImage" and not facts.get("image"):
                report.problems.append(Problem("missing_image", where, f"post {code} has no image"))
            user = key.split("/", 1)[0]
            newest[user] = max(newest.get(user, 0), facts["time"])
    report.users = len(users)
    _check_stamps(report, paths, newest)
    return report


@dataclass
class _ShardFindings:
    """What one shard holds; used only when the whole shard reads intact."""

    posts: dict[str, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))
    members: list[str] = field(default_factory=list)  # members of posts and counts (not profile snapshots)
    users: set[str] = field(default_factory=set)
    images: int = 0
    observations: int = 0
    problems: list[Problem] = field(default_factory=list)


def _damage_detail(shard: Path, err: ShardDamaged) -> str:
    try:
        manifest = read_manifest(shard)
    except DataError:
        manifest = None
    lost = (f"none of its {manifest.posts} posts is used; the next crawl fetches them again" if manifest
            else "none of its posts is used (a shard without a manifest: what was lost is not known)")
    return f"{err.detail}; {lost}"


def _check_member(found: _ShardFindings, shard: str, name: str, data: bytes) -> None:
    where = f"{shard}:{name}"
    kind = member_kind(name)
    if kind is None:
        found.problems.append(Problem("bad_member", where, "not a file of Instaloader's layout under a valid "
                                      "username (never used, never extracted)"))
        return
    if kind == "counts":  # re-read counts: one member per user and crawl, never twice
        try:
            found.observations += len(parse_counts_member(name, data))
        except BadMetadata as err:
            found.problems.append(Problem("bad_metadata", where, str(err)))
            return
        found.users.add(name.split("/", 1)[0])
        found.members.append(name)
        return
    if name.endswith(".json.xz"):
        try:
            record = parse_member(name, data)
        except BadMetadata as err:
            found.problems.append(Problem("bad_metadata", where, str(err)))
            return
    elif (problem := file_problem(name, data)) is not None:
        found.problems.append(Problem("bad_file", where, problem))
        return
    else:
        record = None
    found.users.add(name.split("/", 1)[0])
    if kind == "profile":  # the profile's metadata: a new snapshot in every run that observed it
        return
    key = post_key(name)
    assert key is not None
    found.members.append(name)
    if isinstance(record, PostMeta):
        found.posts[key].update(shortcode=record.shortcode, time=record.timestamp, typename=record.typename)
    elif isinstance(record, ProfileMeta):
        found.problems.append(Problem("bad_metadata", where, "a profile saved under a post's name"))
    elif name.lower().endswith(IMAGE_SUFFIXES):
        found.images += 1
        found.posts[key]["image"] = True


def _check_stamps(report: RawReport, paths: Paths, newest: dict[str, int]) -> None:
    files = stamps_files(paths.raw)
    report.stamps_files = [p.name for p in files]
    for path in files:
        try:
            stamps = read_stamps(path)
            for user in stamps.sections():
                stamp = post_timestamp(stamps, user)
                if stamp is None:
                    continue
                if user not in newest:
                    report.problems.append(Problem("stamp", f"{path.name}[{user}]",
                                                   f"stamp {stamp.isoformat()} but no post of {user} is stored"))
                elif stamp.timestamp() > newest[user]:
                    stored = dt.datetime.fromtimestamp(newest[user], dt.timezone.utc).isoformat()
                    report.problems.append(Problem("stamp", f"{path.name}[{user}]",
                                                   f"stamp {stamp.isoformat()} is newer than the newest "
                                                   f"stored post ({stored}): posts in between would be lost"))
        except DataError as err:
            report.problems.append(Problem("stamp", path.name, str(err)))
