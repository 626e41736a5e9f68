"""Observations of a post's counts: the labels that stay true as the crawl goes on.

Likes grow for days after posting, and Instaloader's latest-stamps never revisit a stored
post. So each crawl re-reads the counts of the posts whose latest stored count was read
before they were ``crawl.refresh_days`` old (the timeline pages it walks anyway carry them),
and stores a count that changed as a new *observation*: one shard member per user and crawl,

    <user>/<user>_counts_<YYYY-MM-DD_HH-MM-SS>_UTC.json
    {"imgrate_counts": 1, "user": ..., "observed_at": <unix s>,
     "posts": [{"shortcode", "taken_at", "likes", "comments", "likes_hidden"}, ...]}

written into a new shard like any other member (never rewriting one). A post's first
observation is its metadata file (observed when its shard was crawled); the latest one wins,
and on the same second a re-read wins over the metadata. A count is also stored unchanged
once per whole day of a post's age, so the tables know how old a post was when its count was
last confirmed (``preprocess.min_age_days`` holds back posts confirmed too young).

A like count the owner hides is stored as ``likes: null, likes_hidden: true``: Instagram then
says ``like_and_view_counts_disabled`` and serves a meaningless number (-1, or a small one).

:func:`parse_counts_member` is the one place where a counts member read from a shard is
parsed and validated.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import lzma
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imgrate.crawl.shards import iter_members, post_key, shard_meta
from imgrate.errors import DataError
from imgrate.io import atomic_path

log = logging.getLogger(__name__)

DAY = 86_400
COUNTS_VERSION = 1
CACHE_VERSION = 1  # bump when what the per-shard cache holds changes
MAX_COUNTS_BYTES = 4 * 1024 * 1024  # a counts member is a few hundred bytes per post
MAX_COUNTS_POSTS = 20_000  # posts re-read for one user in one crawl, at most
_USER = r"[a-z0-9._]{1,30}"
COUNTS_NAME_RE = re.compile(rf"^(?P<user>{_USER})/(?P=user)_counts_"
                            r"(?P<when>\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2})_UTC\.json$")
_SHORTCODE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MIN_TS, _MAX_TS = 946_684_800, 4_102_444_800  # 2000-01-01 .. 2100-01-01


@dataclass(frozen=True)
class Counts:
    """A post's counts as one read shows them; ``likes`` is None when the owner hides them."""

    likes: int | None
    comments: int | None
    hidden: bool


@dataclass(frozen=True)
class Observation:
    """One reading of one post's counts."""

    shortcode: str
    user: str
    taken_at: int  # unix s
    observed_at: int  # unix s
    likes: int | None
    comments: int | None
    hidden: bool
    recount: bool  # a re-read (counts member), not the post's metadata file

    @property
    def order(self) -> tuple[int, int]:
        """Sort key: later wins; on the same second a re-read wins over the metadata."""
        return self.observed_at, int(self.recount)

    @property
    def counts(self) -> Counts:
        return Counts(self.likes, self.comments, self.hidden)

    @property
    def age_days(self) -> float:
        return (self.observed_at - self.taken_at) / DAY


def _dig(node: dict[str, Any], *paths: str) -> Any:
    """The first of the dotted ``paths`` present in ``node`` (None if none is)."""
    for path in paths:
        cur: Any = node
        for part in path.split("."):
            if not isinstance(cur, dict) or part not in cur:
                cur = None
                break
            cur = cur[part]
        if cur is not None:
            return cur
    return None


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return int(value)


def counts_of_node(node: dict[str, Any]) -> Counts | None:
    """The counts a post node (saved metadata or a timeline node) shows; None if it has none.

    Likes are hidden when the node says ``like_and_view_counts_disabled`` (the count is then
    meaningless) or when the count is negative (Instagram's -1).
    """
    likes = _count(_dig(node, "edge_media_preview_like.count", "edge_liked_by.count", "like_count",
                        "iphone_struct.like_count"))
    comments = _count(_dig(node, "edge_media_to_comment.count", "edge_media_to_parent_comment.count",
                           "comments", "iphone_struct.comment_count", "comment_count"))
    disabled = _dig(node, "like_and_view_counts_disabled", "iphone_struct.like_and_view_counts_disabled")
    if likes is None and disabled is not True:
        return None
    hidden = disabled is True or (likes is not None and likes < 0)
    if comments is not None and comments < 0:
        comments = None
    return Counts(None if hidden else likes, comments, hidden)


def counts_member_name(user: str, observed_at: int) -> str:
    """The shard member of the counts a crawl re-read for ``user``."""
    when = dt.datetime.fromtimestamp(observed_at, dt.timezone.utc).strftime("%Y-%m-%d_%H-%M-%S")
    return f"{user}/{user}_counts_{when}_UTC.json"


def render_counts(user: str, observed_at: int, observations: Iterable[Observation]) -> bytes:
    """The bytes of a counts member (sorted, so the same reads give the same bytes)."""
    posts = [{"shortcode": o.shortcode, "taken_at": o.taken_at, "likes": o.likes, "comments": o.comments,
              "likes_hidden": o.hidden} for o in sorted(observations, key=lambda o: o.shortcode)]
    doc = {"imgrate_counts": COUNTS_VERSION, "user": user, "observed_at": observed_at, "posts": posts}
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()


def parse_counts_member(name: str, data: bytes) -> list[Observation]:
    """The observations of a counts member, validated; a :class:`DataError` names what is wrong."""
    m = COUNTS_NAME_RE.match(name)
    if m is None:
        raise DataError(f"{name}: not a counts member name (<user>/<user>_counts_<date>_UTC.json)")
    if len(data) > MAX_COUNTS_BYTES:
        raise DataError(f"{name}: counts member of {len(data)} bytes (at most {MAX_COUNTS_BYTES})")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{name}: counts member is not JSON ({type(err).__name__})") from None
    user = m["user"]
    if not isinstance(doc, dict) or doc.get("imgrate_counts") != COUNTS_VERSION:
        raise DataError(f"{name}: not a version-{COUNTS_VERSION} counts member")
    observed_at = doc.get("observed_at")
    if doc.get("user") != user:
        raise DataError(f"{name}: names user {str(doc.get('user'))[:40]!r}, not {user}")
    if not isinstance(observed_at, int) or isinstance(observed_at, bool) or not _MIN_TS <= observed_at <= _MAX_TS:
        raise DataError(f"{name}: observed_at is not a unix time")
    if counts_member_name(user, observed_at) != name:
        raise DataError(f"{name}: observed_at {observed_at} does not match the member's name")
    posts = doc.get("posts")
    if not isinstance(posts, list) or len(posts) > MAX_COUNTS_POSTS:
        raise DataError(f"{name}: posts must be a list of at most {MAX_COUNTS_POSTS}")
    out = []
    for i, p in enumerate(posts):
        where = f"{name}: posts[{i}]"
        if not isinstance(p, dict):
            raise DataError(f"{where} is not an object")
        code, taken_at, hidden = p.get("shortcode"), p.get("taken_at"), p.get("likes_hidden")
        likes, comments = p.get("likes"), p.get("comments")
        if not isinstance(code, str) or not _SHORTCODE_RE.match(code):
            raise DataError(f"{where}: shortcode is not one")
        if not isinstance(taken_at, int) or isinstance(taken_at, bool) or not _MIN_TS <= taken_at <= observed_at:
            raise DataError(f"{where}: taken_at is not a unix time before observed_at")
        if not isinstance(hidden, bool):
            raise DataError(f"{where}: likes_hidden is not true or false")
        for key, value in (("likes", likes), ("comments", comments)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise DataError(f"{where}: {key} is not a count")
        if hidden != (likes is None):
            raise DataError(f"{where}: likes must be null exactly when likes_hidden is true")
        out.append(Observation(code, user, taken_at, observed_at, likes, comments, hidden, recount=True))
    return out


def metadata_observation(name: str, node: dict[str, Any], observed_at: int) -> Observation | None:
    """The observation a post's metadata file is (None when the node lacks what it needs)."""
    code = node.get("shortcode") or node.get("code")
    when = _count(_dig(node, "taken_at_timestamp", "date", "taken_at"))
    counts = counts_of_node(node)
    if not isinstance(code, str) or not _SHORTCODE_RE.match(code) or when is None or counts is None:
        return None
    return Observation(code, name.split("/", 1)[0], when, observed_at, counts.likes, counts.comments,
                       counts.hidden, recount=False)


def profile_counts(node: dict[str, Any]) -> dict[str, int] | None:
    """Followers, followees and post count of a saved profile node (None if one is missing)."""
    counts = {
        "followers": _count(_dig(node, "edge_followed_by.count", "follower_count")),
        "followees": _count(_dig(node, "edge_follow.count", "following_count")),
        "media_count": _count(_dig(node, "edge_owner_to_timeline_media.count", "media_count")),
    }
    return None if any(v is None for v in counts.values()) else counts  # type: ignore[return-value]


def _profile_re(user: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(user)}/{re.escape(user)}_\d+\.json\.xz$")


def shard_facts(shard: Path) -> tuple[list[Observation], dict[str, dict[str, int]]]:
    """Every observation a shard holds (its posts' metadata, at the shard's crawl time, and its
    counts members) and its profile snapshots' counts per user. Unreadable members are left
    out (export and verify name them)."""
    meta = shard_meta(shard)
    try:
        crawled_at: int | None = int(dt.datetime.fromisoformat(meta.get("crawled_at", "")).timestamp())
    except ValueError:
        crawled_at = None
    out: list[Observation] = []
    profiles: dict[str, dict[str, int]] = {}
    for name, data in iter_members(shard):
        if COUNTS_NAME_RE.match(name):
            try:
                out.extend(parse_counts_member(name, data))
            except DataError as err:
                log.warning("shard %s: %s", shard.name, err)
            continue
        if not name.endswith(".json.xz"):
            continue
        user = name.split("/", 1)[0]
        is_post = post_key(name) is not None
        if not is_post and not _profile_re(user).match(name):
            continue
        try:
            node = json.loads(lzma.decompress(data))["node"]
        except (lzma.LZMAError, EOFError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(node, dict):
            continue
        if is_post:
            if crawled_at is not None and (o := metadata_observation(name, node, crawled_at)) is not None:
                out.append(o)
        elif (counts := profile_counts(node)) is not None:
            profiles[user] = counts
    return out, profiles


def _shard_facts_cached(shard: Path, cache_dir: Path) -> tuple[list[Observation], dict[str, dict[str, int]]]:
    """:func:`shard_facts` through a cache keyed by the shard's name and size."""
    cache = cache_dir / f"{shard.name}.{shard.stat().st_size}.v{CACHE_VERSION}.json"
    if cache.exists():
        try:
            doc = json.loads(cache.read_text(encoding="utf-8"))
            return [Observation(**row) for row in doc["observations"]], dict(doc["profiles"])
        except (OSError, ValueError, TypeError, KeyError):
            pass  # a damaged cache entry is rebuilt below
    found, profiles = shard_facts(shard)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as tmp:
        tmp.write_text(json.dumps({"observations": [asdict(o) for o in found], "profiles": profiles}),
                       encoding="utf-8")
    return found, profiles


@dataclass
class Stored:
    """What the shards already hold: each post's latest observation, each user's latest
    profile counts (followers, followees, media_count)."""

    posts: dict[str, Observation]
    profiles: dict[str, dict[str, int]]

    def of_user(self, user: str) -> list[Observation]:
        return [o for o in self.posts.values() if o.user == user]


def stored_facts(shards: Iterable[Path], cache_dir: Path) -> Stored:
    """The latest observation per shortcode and the latest profile counts per user in ``shards``."""
    latest: dict[str, Observation] = {}
    profiles: dict[str, dict[str, int]] = {}
    for shard in shards:
        observations, snapshot = _shard_facts_cached(shard, cache_dir)
        profiles.update(snapshot)  # shards are listed in the order they were written
        for o in observations:
            old = latest.get(o.shortcode)
            if old is None or o.order > old.order:
                latest[o.shortcode] = o
    return Stored(latest, profiles)


def needs_recount(latest: Observation, refresh_days: int, now: int) -> bool:
    """Whether a crawl at ``now`` re-reads the post: its latest stored count was read before
    the post was ``refresh_days`` old (so its likes may still have been growing)."""
    return latest.taken_at <= now and latest.age_days < refresh_days


def changed(latest: Observation, current: Counts, now: int) -> bool:
    """Whether a re-read at ``now`` is stored: the counts changed, or the post has passed a
    whole day of age since its latest stored count (the count is confirmed at that age)."""
    if current != latest.counts:
        return True
    return (now - latest.taken_at) // DAY > (latest.observed_at - latest.taken_at) // DAY
