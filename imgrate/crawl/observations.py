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

:func:`imgrate.metadata.parse_counts_member` is where a counts member read from a shard
is parsed and validated (the one boundary for shard metadata).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imgrate.errors import DataError, safe_text
from imgrate.io import atomic_path
from imgrate.metadata import (
    COUNTS_FILE_RE,
    DAY,
    BadMetadata,
    Counts,
    Observation,
    PostMeta,
    ProfileMeta,
    counts_member_name,
    counts_of_node,
    member_kind,
    observation_problem,
    parse_counts_member,
    parse_member,
    parse_profile,
)
from imgrate.shards import crawl_time, iter_members, shard_meta

__all__ = ["COUNTS_NAME_RE", "Counts", "Observation", "Stored", "changed", "counts_member_name", "counts_of_node",
           "needs_recount", "parse_counts_member", "profile_counts", "render_counts", "stored_facts"]

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when what the per-shard cache holds changes
COUNTS_NAME_RE = COUNTS_FILE_RE


def profile_counts(node: dict[str, Any]) -> dict[str, int] | None:
    """Followers, followees and post count of a profile node (None when it is not valid)."""
    try:
        p = parse_profile(node)
    except BadMetadata:
        return None
    return {"followers": p.followers, "followees": p.followees, "media_count": p.media_count}


def render_counts(user: str, observed_at: int, observations: Iterable[Observation]) -> bytes:
    """The bytes of a counts member (sorted, so the same reads give the same bytes)."""
    posts = [{"shortcode": o.shortcode, "taken_at": o.taken_at, "likes": o.likes, "comments": o.comments,
              "likes_hidden": o.hidden} for o in sorted(observations, key=lambda o: o.shortcode)]
    doc = {"imgrate_counts": 1, "user": user, "observed_at": observed_at, "posts": posts}
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()


def shard_facts(shard: Path) -> tuple[list[Observation], dict[str, dict[str, int]]]:
    """Every observation a shard holds (its posts' metadata, at the shard's crawl time, and its
    counts members) and its profile snapshots' counts per user, read through the metadata
    boundary. Bad members are left out, and a damaged shard gives nothing (export and verify
    name them; the crawl fetches a damaged shard's posts again)."""
    out: list[Observation] = []
    profiles: dict[str, dict[str, int]] = {}
    try:
        crawled_at = crawl_time(shard_meta(shard).get("crawled_at"))
        members = list(iter_members(shard)) if crawled_at is not None else []
    except DataError as err:
        log.warning("shard %s: no counts read (%s)", shard.name, safe_text(err))
        return [], {}
    if crawled_at is None:
        log.warning("shard %s: no counts read (its header has no valid crawl time)", shard.name)
        return [], {}
    for name, data in members:
        kind = member_kind(name)
        try:
            if kind == "counts":  # counts observed after the shard's crawl are forged: never used
                out.extend(o for o in parse_counts_member(name, data) if observation_problem(o, crawled_at) is None)
                continue
            if kind is None or not name.endswith(".json.xz"):
                continue
            record = parse_member(name, data)
        except BadMetadata:
            continue
        if isinstance(record, PostMeta):
            o = Observation(record.shortcode, record.user, record.timestamp, crawled_at, record.likes,
                            record.comments, record.likes_hidden, recount=False)
            if observation_problem(o, crawled_at) is None:
                out.append(o)
        elif isinstance(record, ProfileMeta):
            profiles[record.username] = {"followers": record.followers, "followees": record.followees,
                                         "media_count": record.media_count}
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

    def __post_init__(self) -> None:
        self._by_user: dict[str, list[Observation]] = {}
        for o in self.posts.values():
            self._by_user.setdefault(o.user, []).append(o)

    def of_user(self, user: str) -> list[Observation]:
        return self._by_user.get(user, [])


def stored_facts(shards: Iterable[Path], cache_dir: Path) -> Stored:
    """The latest observation per shortcode and the latest profile counts per user in ``shards``
    (given in the order they were stored). A post belongs to the user whose shard stored its
    metadata first; counts of it stored under another user are not its counts."""
    latest: dict[str, Observation] = {}
    owner: dict[str, str] = {}
    profiles: dict[str, dict[str, int]] = {}
    found = []
    for shard in shards:
        observations, snapshot = _shard_facts_cached(shard, cache_dir)
        profiles.update(snapshot)  # shards come in the order they were stored
        found.append(observations)
        for o in observations:
            if not o.recount:
                owner.setdefault(o.shortcode, o.user)
    for observations in found:
        for o in observations:
            old = latest.get(o.shortcode)
            if owner.get(o.shortcode, o.user) == o.user and (old is None or o.order > old.order):
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
