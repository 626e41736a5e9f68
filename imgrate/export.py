"""The export stage: shards -> ``data/tables/posts.jsonl`` and ``users.jsonl``.

A post's counts are its latest observation (imgrate.crawl.observations): its metadata file,
or a later re-read stored by a crawl in a counts member. Each row says when that was
(``likes_observed_at``) and how old the post was then (``age_at_observation_days``); a like
count the owner hides is ``likes: null, likes_hidden: true``.

Members that cannot be parsed are skipped (``export.strict: true`` fails instead) and listed
with their shard, member and reason in ``data/tables/skipped.jsonl``. Metadata is parsed and
validated by :mod:`imgrate.metadata`, the parser ``imgrate verify`` uses. A damaged
shard (cut, a zeroed header, a member that differs from its manifest) is skipped whole and
listed with member null (``reports/export.json``: ``shards_damaged``); its posts come back
with the next crawl.

Instaloader's saved JSON is parsed directly (reading a missing field through Instaloader's
``Post`` would make it fetch over the network). Parsing is cached per shard, since shards
are never rewritten. Rows are also handed to every configured :class:`Sink`; the JSON
tables are always written first, so they are complete on disk even if a database is down.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from imgrate.errors import DataError, ImageError, safe_text
from imgrate.images import image_info
from imgrate.io import remove_stale_tmp, write_json, write_jsonl
from imgrate.metadata import (
    BadMetadata,
    Observation,
    PostMeta,
    ProfileMeta,
    member_kind,
    observation_problem,
    parse_counts_member,
    parse_member,
)
from imgrate.params import ExportParams
from imgrate.paths import Paths
from imgrate.progress import track
from imgrate.shards import (
    ShardDamaged,
    clock_limit,
    crawl_time,
    crawl_time_problem,
    iter_members,
    list_shards,
    post_key,
    read_ledger,
    shard_meta,
)

log = logging.getLogger(__name__)

PARSER_VERSION = 4  # bump when the row format changes, to invalidate the per-shard cache
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


class Sink(Protocol):
    """Somewhere the tables go besides JSON (MongoDB: imgrate.mongo)."""

    def write(self, posts: list[dict[str, Any]], users: list[dict[str, Any]]) -> dict[str, int]: ...


@dataclass
class ShardRows:
    """What one shard holds, parsed."""

    posts: list[dict[str, Any]] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str | None]] = field(default_factory=list)  # {shard, member, reason}
    counts: list[dict[str, Any]] = field(default_factory=list)  # re-read counts (Observation fields)
    crawled_at: int | None = None  # the shard's crawl time (None: damaged, or it has none)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _post_row(post: PostMeta, crawled_at: dt.datetime) -> dict[str, Any]:
    """A post row from its validated metadata, with the counts it was crawled with (a later
    re-read replaces them: :func:`_apply_recounts`)."""
    row = {
        "shortcode": post.shortcode,
        "user": post.user,
        "typename": post.typename,
        "date": _iso(post.timestamp),
        "timestamp": post.timestamp,
        "crawled_at": crawled_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    _set_counts(row, post.likes, post.comments, post.likes_hidden, int(crawled_at.timestamp()))
    return row


def _set_counts(row: dict[str, Any], likes: int | None, comments: int | None, hidden: bool, observed_at: int) -> None:
    """Put one observation's counts into a post row."""
    row.update(likes=likes, likes_hidden=hidden, comments=comments, likes_observed_at=_iso(observed_at),
               age_at_observation_days=round((observed_at - row["timestamp"]) / 86400, 4))


def _user_row(profile: ProfileMeta, crawled_at: dt.datetime) -> dict[str, Any]:
    return {
        "username": profile.username,
        "id": profile.id,
        "followers": profile.followers,
        "followees": profile.followees,
        "media_count": profile.media_count,
        "crawled_at": crawled_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _crawled_at(shard: Path) -> dt.datetime:
    """When the shard's crawl ran (its PAX header); :class:`ShardDamaged` if it does not say, or
    says something that is not a time (a foreign shard: its posts cannot be dated)."""
    text = shard_meta(shard).get("crawled_at")
    when = crawl_time(text)
    if when is None:
        raise ShardDamaged(shard.name, crawl_time_problem(text, 0) or "no crawl time")
    return dt.datetime.fromtimestamp(when, dt.UTC)


def _first_image(key: str, names: set[str]) -> str | None:
    """The post's first image: ``<key>_1.jpg`` for a sidecar, else ``<key>.jpg``."""
    for stem in (f"{key}_1", key):
        for suffix in IMAGE_SUFFIXES:
            if stem + suffix in names:
                return stem + suffix
    return None


def parse_shard(shard: Path, strict: bool = False) -> ShardRows:
    """Parse one shard into post and user rows; bad members are skipped (or raise if strict),
    and so is a damaged shard, whole."""
    rows = ShardRows()

    def skip(member: str, reason: str, detail: str = "") -> None:
        if strict:
            raise DataError(f"shard {shard.name}, member {safe_text(member)}: {safe_text(detail or reason)}")
        log.warning("skipping shard %s member %s: %s", shard.name, safe_text(member), safe_text(detail or reason))
        rows.skipped.append({"shard": shard.name, "member": member, "reason": reason})

    try:
        crawled_at = _crawled_at(shard)
        members = dict(iter_members(shard))
    except ShardDamaged as err:
        if strict:
            raise
        log.warning("skipping %s", safe_text(err))
        rows.skipped.append({"shard": shard.name, "member": None, "reason": "damaged shard", "detail": err.detail})
        return rows
    rows.crawled_at = int(crawled_at.timestamp())
    names = set(members)
    for name in sorted(names):
        if member_kind(name) is None:
            skip(name[:200], "bad member name", f"{name[:80]!r} is not a file of Instaloader's layout")
    for name in sorted(n for n in names if member_kind(n) == "counts"):
        try:
            observations = parse_counts_member(name, members[name])
        except BadMetadata as err:
            skip(name, err.reason, err.detail)
            continue
        forged = [p for o in observations if (p := observation_problem(o, rows.crawled_at)) is not None]
        if forged:  # a member that says it was read after its own shard was crawled: none of it is used
            skip(name, "observed after its shard's crawl", f"{len(forged)} of its counts: {forged[0]}")
            continue
        rows.counts.extend(dataclasses.asdict(o) for o in observations)
    for name in sorted(n for n in names if n.endswith(".json.xz") and member_kind(n) is not None):
        try:
            record = parse_member(name, members[name])
        except BadMetadata as err:
            skip(name, err.reason, err.detail)
            continue
        if isinstance(record, ProfileMeta):
            rows.users.append(_user_row(record, crawled_at))
            continue
        if record is None:
            continue
        row = _post_row(record, crawled_at)
        posted = Observation(record.shortcode, record.user, record.timestamp, rows.crawled_at, None, None, False,
                             recount=False)
        if (problem := observation_problem(posted, rows.crawled_at)) is not None:
            skip(name, "posted after its shard's crawl", problem)
            continue
        key = post_key(name)
        image = _first_image(key, names) if key else None
        row.update(shard=shard.name, member=image, sha256=None, width=None, height=None)
        if image is not None:
            data = members[image]
            row["sha256"] = hashlib.sha256(data).hexdigest()
            try:
                _, (row["width"], row["height"]) = image_info(data)
            except ImageError as err:
                skip(image, f"unreadable image ({type(err.__cause__ or err).__name__})")
                continue
        rows.posts.append(row)
    return rows


def _cached_parse(shard: Path, cache_dir: Path, strict: bool) -> ShardRows:
    """:func:`parse_shard` through a cache keyed by the shard's name, size and mtime."""
    st = shard.stat()
    cache = cache_dir / f"{shard.name}.{st.st_size}.{st.st_mtime_ns}.v{PARSER_VERSION}.json"
    if cache.exists():
        data = json.loads(cache.read_text(encoding="utf-8"))
        rows = ShardRows(data["posts"], data["users"], data["skipped"], data["counts"], data["crawled_at"])
        if strict and rows.skipped:
            s = rows.skipped[0]
            if s["member"] is None:
                raise ShardDamaged(str(s["shard"]), str(s.get("detail") or s["reason"]))
            raise DataError(f"shard {s['shard']}, member {s['member']}: {s['reason']}")
        return rows
    rows = parse_shard(shard, strict)
    write_json(cache, {"posts": rows.posts, "users": rows.users, "skipped": rows.skipped, "counts": rows.counts,
                       "crawled_at": rows.crawled_at})
    return rows


@dataclass
class Tables:
    posts: list[dict[str, Any]]
    users: list[dict[str, Any]]
    skipped: list[dict[str, str | None]]


def build_tables(shards: Iterable[Path], cache_dir: Path, strict: bool = False,
                 written: Collection[str] = ()) -> Tables:
    """Posts (the first stored copy of a shortcode wins, with the counts of its latest
    plausible observation) and users (latest snapshot wins). ``shards`` come in the order they
    were stored (:class:`imgrate.shards.Ledger`); ``written`` names those this project's crawler
    wrote, whose crawl times set how far the clock may go (:func:`imgrate.shards.clock_limit`):
    a shard that claims a later crawl is skipped whole."""
    posts: dict[str, dict[str, Any]] = {}
    users: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, str | None]] = []
    recounts: list[tuple[str, Observation]] = []
    parsed = [(shard, _cached_parse(shard, cache_dir, strict)) for shard in track(list(shards), "export")]
    limit = clock_limit(r.crawled_at for s, r in parsed if s.name in written and r.crawled_at is not None)
    for shard, rows in parsed:
        if rows.crawled_at is not None and rows.crawled_at > limit:
            problem = crawl_time_problem(_iso(rows.crawled_at), limit) or "crawled in the future"
            if strict:
                raise ShardDamaged(shard.name, problem)
            log.warning("skipping shard %s: %s", shard.name, problem)
            skipped.append({"shard": shard.name, "member": None, "reason": "damaged shard", "detail": problem})
            continue
        skipped.extend(rows.skipped)
        for row in rows.posts:
            if row["shortcode"] in posts:  # first stored wins: a later copy never replaces it
                skipped.append({"shard": shard.name, "member": row["member"] or row["shortcode"],
                                "reason": "duplicate shortcode",
                                "detail": f"post {row['shortcode']} is already stored by {posts[row['shortcode']]['shard']}"})
                continue
            posts[row["shortcode"]] = row
        for row in rows.users:
            users[row["username"]] = row
        recounts.extend((shard.name, Observation(**o)) for o in rows.counts)
    _apply_recounts(posts, recounts, skipped)
    post_counts = Counter(p["user"] for p in posts.values())
    for name, row in users.items():
        row["posts"] = post_counts.get(name, 0)
    return Tables(
        posts=sorted(posts.values(), key=lambda r: (r["user"], r["timestamp"], r["shortcode"])),
        users=sorted(users.values(), key=lambda r: r["username"]),
        skipped=skipped,
    )


def _apply_recounts(posts: dict[str, dict[str, Any]], recounts: list[tuple[str, Observation]],
                    skipped: list[dict[str, str | None]]) -> None:
    """Give each post the counts of its latest observation: a re-read wins over the metadata
    when it is later, or of the same second."""
    for shard, o in sorted(recounts, key=lambda item: item[1].order):
        row = posts.get(o.shortcode)
        if row is None or row["user"] != o.user:
            skipped.append({"shard": shard, "member": o.shortcode, "reason": "counts of a post not stored"})
            continue
        observed = int(dt.datetime.strptime(row["likes_observed_at"], "%Y-%m-%dT%H:%M:%SZ")
                       .replace(tzinfo=dt.UTC).timestamp())
        if o.observed_at >= observed:
            _set_counts(row, o.likes, o.comments, o.hidden, o.observed_at)


def run_stage(params: ExportParams, paths: Paths, sinks: Iterable[Sink] = ()) -> dict[str, Any]:
    """The DVC stage: write the JSON tables, then any sinks, then metrics/export.json and reports/export.json."""
    remove_stale_tmp(paths.tables)  # left by a killed run: data/tables is this stage's alone
    for out in (paths.stage_metrics("export"), paths.stage_report("export")):
        remove_stale_tmp(out.parent, [out.name])
    ledger = read_ledger(paths.raw)
    shards = ledger.order(list_shards(paths.shards))
    if not shards:
        raise DataError(f"no shards in {paths.shards}: run the crawl stage first")
    tables = build_tables(shards, paths.cache / "export", params.strict, ledger.written)
    write_jsonl(paths.posts_table, tables.posts)
    write_jsonl(paths.users_table, tables.users)
    write_jsonl(paths.skipped_table, tables.skipped)
    metrics: dict[str, Any] = {
        "shards": len(shards),
        "posts": len(tables.posts),
        "users": len(tables.users),
        "posts_skipped": sum(s["member"] is not None for s in tables.skipped),
        "likes_hidden": sum(1 for p in tables.posts if p["likes_hidden"]),
        "skipped_reasons": dict(Counter(s["reason"] for s in tables.skipped if s["member"] is not None)),
        "shards_damaged": sum(s["member"] is None for s in tables.skipped),
    }
    for sink in sinks:
        metrics.update(sink.write(tables.posts, tables.users))
    # `dvc metrics show` gets the two counts a comparison needs (one table line for every
    # stage must fit a terminal); reports/export.json has all of it (skips, MongoDB writes)
    write_json(paths.stage_report("export"), metrics)
    write_json(paths.stage_metrics("export"), {k: metrics[k] for k in METRIC_KEYS})
    return metrics


METRIC_KEYS = ("posts", "users")


def main() -> None:
    """``python stages/export.py`` and ``imgrate export``: export, then a summary line."""
    from imgrate.mongo import sink_from_params
    from imgrate.params import load_params
    from imgrate.paths import project_paths
    from imgrate.progress import console, setup_logging

    setup_logging()
    paths = project_paths()
    params = load_params(paths.params, ["export"]).export
    sink = sink_from_params(params, paths)  # None unless $IMGRATE_MONGODB_URI or export.mongo_uri
    m = run_stage(params, paths, sinks=[sink] if sink else [])
    console.print(f"export: {m['posts']} posts, {m['users']} users, {m['posts_skipped']} skipped",
                  highlight=False, soft_wrap=True)
    if sink:
        console.print(f"MongoDB {sink.where}: {m['posts_written']} posts and {m['users_written']} users written",
                      markup=False, highlight=False, soft_wrap=True)
