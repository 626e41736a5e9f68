"""Checks of the crawled data: shards intact, every file decodes, every post is stored once,
stamps hold.

:func:`image_problem` and :func:`metadata_problem` are also the crawler's own checks: an
image is verified before it gets its final name (a truncated download is fetched again), and
every staged file is checked once more before it goes into a shard. :func:`verify_raw` is
``imgrate verify``: it reads every shard through the shard reader's checks (manifest, end of
archive) and every metadata member through :mod:`imgrate.metadata`, the parser export
uses, so the two agree on what a bad post is. A damaged shard is named and none of its posts
count (export skips it whole, and the crawler fetches its posts again).
"""

from __future__ import annotations

import datetime as dt
import io
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageFile

from imgrate.crawl.stamps import post_timestamp, read_stamps, stamps_files
from imgrate.errors import DataError
from imgrate.metadata import (
    BadMetadata,
    Observation,
    PostMeta,
    ProfileMeta,
    load_document,
    member_kind,
    observation_problem,
    parse_counts_member,
    parse_member,
)
from imgrate.paths import Paths
from imgrate.progress import track
from imgrate.shards import (
    POST_METADATA_RE,
    SHARD_RE,
    ShardDamaged,
    ShardUnreadable,
    check_shard,
    clock_limit,
    crawl_time,
    crawl_time_problem,
    iter_members,
    list_shards,
    post_key,
    read_ledger,
    shard_meta,
)

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
    only, within the size cap; :func:`imgrate.metadata.parse_member` validates fields)."""
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

    # damaged_shard, unreadable_shard, crawl_time, stray_file, bad_member, bad_metadata, bad_file,
    # forged_observation, duplicate, unlisted_user, orphan, missing_image, stamp
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


def verify_raw(paths: Paths, listed: Collection[str] | None = None) -> RawReport:
    """Check ``data/raw``: shards readable and dated, files decode, counts plausible and
    observed no later than their shard's crawl, one copy of each post, stamps not ahead.

    ``listed``: the users of users.txt; a post of another user in a shard that this project's
    crawler did not write (another crawler's, or hand-made) is named too."""
    report = RawReport()
    if paths.shards.is_dir():
        for p in sorted(paths.shards.iterdir()):
            if not SHARD_RE.match(p.name):
                report.problems.append(Problem("stray_file", p.name, "not a complete shard (a partial write?)"))
    ledger = read_ledger(paths.raw)
    shards = ledger.order(list_shards(paths.shards))  # first stored first: a later copy is the duplicate
    report.shards = len(shards)
    metas = {s.name: _meta(s) for s in shards}
    limit = clock_limit(t for name, meta in metas.items()
                        if name in ledger.written and (t := crawl_time(meta.get("crawled_at"))) is not None)
    seen_members: dict[str, str] = {}
    seen_codes: dict[str, str] = {}
    newest: dict[str, int] = {}
    users: set[str] = set()
    for shard in track(shards, "verify"):
        crawled_at = crawl_time(metas[shard.name].get("crawled_at"))
        found = _ShardFindings(crawled_at=crawled_at or 0)
        try:
            for name, data in iter_members(shard):
                _check_member(found, shard.name, name, data)
        except ShardUnreadable as err:  # not a tar file at all
            report.problems.append(Problem("unreadable_shard", shard.name, _damage_detail(shard, err)))
            continue
        except ShardDamaged as err:
            report.problems.append(Problem("damaged_shard", shard.name, _damage_detail(shard, err)))
            continue
        if (problem := crawl_time_problem(metas[shard.name].get("crawled_at"), limit)) is not None:
            report.problems.append(Problem("crawl_time", shard.name, f"{problem}; none of its posts is used"))
            report.problems += found.problems
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
                report.problems.append(Problem("duplicate", where, f"post {code} is already stored by "
                                               f"{seen_codes[code]} (stored first, so that one is used)"))
                continue
            seen_codes[code] = where
            user = key.split("/", 1)[0]
            if listed is not None and user not in listed and shard.name not in ledger.written:
                report.problems.append(Problem("unlisted_user", where, f"post {code} of {user}, who is not in the "
                                               "users file, in a shard this project's crawler did not write"))
            if facts.get("typename") == "GraphImage" and not facts.get("image"):
                report.problems.append(Problem("missing_image", where, f"post {code} has no image"))
            user = key.split("/", 1)[0]
            newest[user] = max(newest.get(user, 0), facts["time"])
    report.users = len(users)
    _check_stamps(report, paths, newest)
    return report


def _meta(shard: Path) -> dict[str, str]:
    try:
        return shard_meta(shard)
    except DataError:
        return {}


@dataclass
class _ShardFindings:
    """What one shard holds; used only when the whole shard reads intact."""

    crawled_at: int  # the shard's crawl time (0 when it has none: then the shard is named for that)
    posts: dict[str, dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))
    members: list[str] = field(default_factory=list)  # members of posts and counts (not profile snapshots)
    users: set[str] = field(default_factory=set)
    images: int = 0
    observations: int = 0
    problems: list[Problem] = field(default_factory=list)


def _damage_detail(shard: Path, err: ShardDamaged) -> str:
    check = check_shard(shard)
    posts = sum(1 for name in check.members if POST_METADATA_RE.fullmatch(name))
    if check.complete:
        lost = f"none of its {posts} posts is used; the next crawl fetches them again"
    else:
        lost = (f"none of its posts is used; {posts} are named by what survives of its manifest and member "
                "headers, and the next crawl fetches them again and walks again the users whose posts it "
                "cannot name")
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
            observations = parse_counts_member(name, data)
        except BadMetadata as err:
            found.problems.append(Problem("bad_metadata", where, str(err)))
            return
        forged = [p for o in observations if (p := observation_problem(o, found.crawled_at)) is not None]
        if found.crawled_at and forged:
            found.problems.append(Problem("forged_observation", where, f"{len(forged)} of its "
                                          f"{len(observations)} counts: {forged[0]}"))
            return
        found.observations += len(observations)
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
        posted = Observation(record.shortcode, record.user, record.timestamp, found.crawled_at, None, None, False,
                             recount=False)
        if found.crawled_at and (problem := observation_problem(posted, found.crawled_at)) is not None:
            found.problems.append(Problem("forged_observation", where, problem))
            return
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
                    stored = dt.datetime.fromtimestamp(newest[user], dt.UTC).isoformat()
                    report.problems.append(Problem("stamp", f"{path.name}[{user}]",
                                                   f"stamp {stamp.isoformat()} is newer than the newest "
                                                   f"stored post ({stored}): posts in between would be lost"))
        except DataError as err:
            report.problems.append(Problem("stamp", path.name, str(err)))
