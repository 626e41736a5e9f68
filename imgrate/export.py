"""The export stage: shards -> ``data/tables/posts.jsonl`` and ``users.jsonl``.

Members that cannot be parsed are skipped (``export.strict: true`` fails instead) and listed
with their shard, member and reason in ``data/tables/skipped.jsonl``.

Instaloader's saved JSON is parsed directly (reading a missing field through Instaloader's
``Post`` would make it fetch over the network). Parsing is cached per shard, since shards
are never rewritten. Rows are also handed to every configured :class:`Sink`; the JSON
tables are always written first, so they are complete on disk even if a database is down.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import lzma
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from imgrate.crawl.shards import iter_members, list_shards, post_key, shard_meta
from imgrate.errors import DataError
from imgrate.io import write_json, write_jsonl
from imgrate.params import ExportParams
from imgrate.paths import Paths
from imgrate.progress import track

log = logging.getLogger(__name__)

PARSER_VERSION = 1  # bump when the row format changes, to invalidate the per-shard cache
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class Sink(Protocol):
    """Somewhere the tables go besides JSON (MongoDB: imgrate.mongo)."""

    def write(self, posts: list[dict[str, Any]], users: list[dict[str, Any]]) -> dict[str, int]: ...


@dataclass
class ShardRows:
    """What one shard holds, parsed."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {shard, member, reason}


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


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _post_row(node: dict[str, Any], crawled_at: dt.datetime) -> dict[str, Any]:
    """A post row from Instaloader's saved node; KeyError names a missing field."""
    fields = {
        "shortcode": _dig(node, "shortcode", "code"),
        "user": _dig(node, "owner.username", "user.username"),
        "timestamp": _dig(node, "taken_at_timestamp", "date", "taken_at"),
        "likes": _dig(node, "edge_media_preview_like.count", "edge_liked_by.count", "like_count"),
        "comments": _dig(
            node, "edge_media_to_comment.count", "edge_media_to_parent_comment.count",
            "comments", "iphone_struct.comment_count", "comment_count",
        ),
        "typename": _dig(node, "__typename"),
    }
    for name, value in fields.items():
        if value is None:
            raise KeyError(name)
    ts = int(fields.pop("timestamp"))
    return {
        **fields,
        "likes": int(fields["likes"]),
        "comments": int(fields["comments"]),
        "user": str(fields["user"]).lower(),
        "date": _iso(ts),
        "timestamp": ts,
        "days_since_post": round((crawled_at.timestamp() - ts) / 86400, 4),
        "crawled_at": crawled_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _user_row(node: dict[str, Any], crawled_at: dt.datetime) -> dict[str, Any]:
    fields = {
        "username": _dig(node, "username"),
        "id": _dig(node, "id", "pk"),
        "followers": _dig(node, "edge_followed_by.count", "follower_count"),
        "followees": _dig(node, "edge_follow.count", "following_count"),
        "media_count": _dig(node, "edge_owner_to_timeline_media.count", "media_count"),
    }
    for name, value in fields.items():
        if value is None:
            raise KeyError(name)
    return {
        "username": str(fields["username"]).lower(),
        "id": str(fields["id"]),
        "followers": int(fields["followers"]),
        "followees": int(fields["followees"]),
        "media_count": int(fields["media_count"]),
        "crawled_at": crawled_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _first_image(key: str, names: set[str]) -> str | None:
    """The post's first image: ``<key>_1.jpg`` for a sidecar, else ``<key>.jpg``."""
    for stem in (f"{key}_1", key):
        for suffix in IMAGE_SUFFIXES:
            if stem + suffix in names:
                return stem + suffix
    return None


def parse_shard(shard: Path, strict: bool = False) -> ShardRows:
    """Parse one shard into post and user rows; bad members are skipped (or raise if strict)."""
    meta = shard_meta(shard)
    crawled_at = dt.datetime.fromisoformat(meta.get("crawled_at", "1970-01-01T00:00:00+00:00"))
    members = dict(iter_members(shard))
    names = set(members)
    rows = ShardRows()

    def skip(member: str, reason: str) -> None:
        if strict:
            raise DataError(f"shard {shard.name}, member {member}: {reason}")
        log.warning("skipping shard %s member %s: %s", shard.name, member, reason)
        rows.skipped.append({"shard": shard.name, "member": member, "reason": reason})

    for name in sorted(n for n in names if n.endswith(".json.xz")):
        try:
            doc = json.loads(lzma.decompress(members[name]))
            node, node_type = doc["node"], doc["instaloader"]["node_type"]
        except (lzma.LZMAError, json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
            skip(name, f"corrupt metadata ({type(err).__name__})")
            continue
        try:
            if node_type == "Profile":
                rows.users.append(_user_row(node, crawled_at))
                continue
            if node_type != "Post":
                continue
            row = _post_row(node, crawled_at)
        except (KeyError, TypeError, ValueError) as err:
            skip(name, f"missing field {err}")
            continue
        key = post_key(name)
        image = _first_image(key, names) if key else None
        row.update(shard=shard.name, member=image, sha256=None, width=None, height=None)
        if image is not None:
            data = members[image]
            row["sha256"] = hashlib.sha256(data).hexdigest()
            try:
                with Image.open(io.BytesIO(data)) as im:
                    row["width"], row["height"] = im.size
            except (OSError, Image.DecompressionBombError) as err:
                skip(image, f"unreadable image ({type(err).__name__})")
                continue
        rows.posts.append(row)
    return rows


def _cached_parse(shard: Path, cache_dir: Path, strict: bool) -> ShardRows:
    """:func:`parse_shard` through a cache keyed by the shard's name, size and mtime."""
    st = shard.stat()
    cache = cache_dir / f"{shard.name}.{st.st_size}.{st.st_mtime_ns}.v{PARSER_VERSION}.json"
    if cache.exists():
        data = json.loads(cache.read_text(encoding="utf-8"))
        rows = ShardRows(data["posts"], data["users"], data["skipped"])
        if strict and rows.skipped:
            s = rows.skipped[0]
            raise DataError(f"shard {s['shard']}, member {s['member']}: {s['reason']}")
        return rows
    rows = parse_shard(shard, strict)
    write_json(cache, {"posts": rows.posts, "users": rows.users, "skipped": rows.skipped})
    return rows


@dataclass
class Tables:
    posts: list[dict[str, Any]]
    users: list[dict[str, Any]]
    skipped: list[dict[str, str]]


def build_tables(shards: Iterable[Path], cache_dir: Path, strict: bool = False) -> Tables:
    """Posts (first occurrence of a shortcode wins) and users (latest snapshot wins)."""
    posts: dict[str, dict[str, Any]] = {}
    users: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    shards = list(shards)
    for shard in track(shards, "export"):
        rows = _cached_parse(shard, cache_dir, strict)
        skipped.extend(rows.skipped)
        for row in rows.posts:
            if row["shortcode"] in posts:
                skipped.append({"shard": shard.name, "member": row["shortcode"], "reason": "duplicate shortcode"})
                continue
            posts[row["shortcode"]] = row
        for row in rows.users:
            users[row["username"]] = row
    post_counts = Counter(p["user"] for p in posts.values())
    for name, row in users.items():
        row["posts"] = post_counts.get(name, 0)
    return Tables(
        posts=sorted(posts.values(), key=lambda r: (r["user"], r["timestamp"], r["shortcode"])),
        users=sorted(users.values(), key=lambda r: r["username"]),
        skipped=skipped,
    )


def run_stage(params: ExportParams, paths: Paths, sinks: Iterable[Sink] = ()) -> dict[str, Any]:
    """The DVC stage: write the JSON tables, then any sinks, then metrics/export.json."""
    shards = list_shards(paths.shards)
    if not shards:
        raise DataError(f"no shards in {paths.shards}: run the crawl stage first")
    tables = build_tables(shards, paths.cache / "export", params.strict)
    write_jsonl(paths.posts_table, tables.posts)
    write_jsonl(paths.users_table, tables.users)
    write_jsonl(paths.skipped_table, tables.skipped)
    metrics: dict[str, Any] = {
        "shards": len(shards),
        "posts": len(tables.posts),
        "users": len(tables.users),
        "posts_skipped": len(tables.skipped),
        "skipped_reasons": dict(Counter(s["reason"] for s in tables.skipped)),
    }
    for sink in sinks:
        metrics.update(sink.write(tables.posts, tables.users))
    # `dvc metrics show` gets the two counts a comparison needs (one table line for every
    # stage must fit a terminal); reports/export.json has all of it (skips, MongoDB writes)
    write_json(paths.stage_report("export"), metrics)
    write_json(paths.stage_metrics("export"), {k: metrics[k] for k in METRIC_KEYS})
    return metrics


METRIC_KEYS = ("posts", "users")
