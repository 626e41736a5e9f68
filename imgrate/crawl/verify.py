"""Checks of the crawled data: every file decodes, every post is stored once, stamps hold.

:func:`image_problem` and :func:`metadata_problem` are also the crawler's own checks: an
image is verified before it gets its final name (a truncated download is fetched again), and
every staged file is checked once more before it goes into a shard. :func:`verify_raw` is
``imgrate verify``.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import lzma
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageFile

from imgrate.crawl.observations import COUNTS_NAME_RE, parse_counts_member
from imgrate.crawl.shards import SHARD_RE, list_shards, post_key
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
    """Why ``data`` is not a complete ``.json.xz`` written by Instaloader, or None."""
    try:
        obj = json.loads(lzma.decompress(data))
    except (lzma.LZMAError, EOFError, ValueError) as err:
        return f"metadata does not decode: {err}"
    if not isinstance(obj, dict) or not isinstance(obj.get("node"), dict):
        return "metadata has no node"
    return None


def file_problem(name: str, data: bytes) -> str | None:
    """The check that fits a file of Instaloader's layout (or a counts file), by its name."""
    if COUNTS_NAME_RE.match(name):
        try:
            parse_counts_member(name, data)
        except DataError as err:
            return str(err)
        return None
    if name.endswith(".json.xz"):
        return metadata_problem(data)
    if name.lower().endswith(IMAGE_SUFFIXES):
        return image_problem(data)
    return None


def post_facts(node: dict[str, Any]) -> tuple[str | None, int | None, str | None]:
    """(shortcode, unix time, typename) of a saved post node, logged in or out."""
    shortcode = node.get("shortcode") or node.get("code")
    when = node.get("taken_at_timestamp") or node.get("date") or node.get("taken_at")
    return shortcode, int(when) if when is not None else None, node.get("__typename")


@dataclass
class Problem:
    """One thing wrong in data/raw."""

    kind: str  # unreadable_shard, stray_file, bad_file, duplicate, orphan, missing_image, stamp
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
        posts: dict[str, dict[str, Any]] = defaultdict(dict)  # post key -> facts of its members
        try:
            with tarfile.open(shard, "r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    fh = tar.extractfile(member)
                    data = fh.read() if fh is not None else b""
                    if len(data) != member.size:
                        raise tarfile.ReadError(f"{member.name}: {len(data)} of {member.size} bytes")
                    _check_member(report, shard.name, member.name, data, posts, seen_members, users)
        except (tarfile.TarError, OSError, EOFError) as err:
            report.problems.append(Problem("unreadable_shard", shard.name, str(err)))
            continue
        for key, facts in sorted(posts.items()):
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
            if facts.get("time") is not None:
                newest[user] = max(newest.get(user, 0), facts["time"])
    report.users = len(users)
    _check_stamps(report, paths, newest)
    return report


def _check_member(report: RawReport, shard: str, name: str, data: bytes,
                  posts: dict[str, dict[str, Any]], seen: dict[str, str], users: set[str]) -> None:
    where = f"{shard}:{name}"
    if (problem := file_problem(name, data)) is not None:
        report.problems.append(Problem("bad_file", where, problem))
        return
    users.add(name.split("/", 1)[0])
    key = post_key(name)
    if key is None and COUNTS_NAME_RE.match(name):  # re-read counts: one member per user and crawl
        if name in seen:
            report.problems.append(Problem("duplicate", where, f"counts member also in {seen[name]}"))
        seen[name] = shard
        report.observations += len(parse_counts_member(name, data))
        return
    if key is None:  # the profile's metadata: a new snapshot in every run that observed it
        return
    if name in seen:
        report.problems.append(Problem("duplicate", where, f"member also in {seen[name]}"))
    seen[name] = shard
    if name.endswith(".json.xz"):
        node = json.loads(lzma.decompress(data))["node"]
        shortcode, when, typename = post_facts(node)
        if shortcode is None:
            report.problems.append(Problem("bad_file", where, "post metadata without a shortcode"))
            return
        posts[key].update(shortcode=shortcode, time=when, typename=typename)
    elif name.lower().endswith(IMAGE_SUFFIXES):
        report.images += 1
        posts[key]["image"] = True


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
