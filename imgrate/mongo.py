"""MongoDB: the export stage's second home for the tables, and the queries of ``imgrate db``.

The export stage hands its rows to :class:`MongoSink`, which upserts them into
``<database>.posts`` (key: shortcode) and ``<database>.users`` (key: username) in bulk. Each
document carries ``row_hash``, a hash of the row (and of the thumbnail setting); the sink
reads the stored hashes first and sends only new or changed rows, so a re-export with
nothing new writes nothing. A post document may also hold ``thumbnail``: small JPEG bytes
read from the image member of its shard, so a query can show pictures without the shards.

The URI comes from ``$IMGRATE_MONGODB_URI`` (where credentials belong) or
``export.mongo_uri`` (never with a password: params.yaml is in git). A password never
reaches a message, a log line, the metrics or an exception: :func:`mask_uri` and
:func:`redact` hide it, and pymongo's errors are re-raised as :class:`DatabaseError`
without chaining. pymongo is imported only when a database is actually used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import unquote, unquote_plus

from imgrate.errors import DatabaseError, ImageError
from imgrate.images import jpeg_thumbnail
from imgrate.params import ExportParams, uri_parts, uri_password, uri_secret_options
from imgrate.paths import Paths
from imgrate.progress import track
from imgrate.shards import iter_members

if TYPE_CHECKING:  # pragma: no cover
    from pymongo import MongoClient
    from pymongo.collection import Collection
    from pymongo.database import Database

log = logging.getLogger(__name__)

ENV_URI = "IMGRATE_MONGODB_URI"
DOC_VERSION = 1  # bump when the document layout changes: every document is rewritten once
HIDDEN_FIELDS = {"_id": 0, "row_hash": 0, "thumbnail": 0}  # what the query commands leave out
T = TypeVar("T")
Doc = dict[str, Any]  # a MongoDB document as pymongo returns it


# --- URIs and secrets ---------------------------------------------------------------------


def _secrets(uri: str) -> list[str]:
    """The secrets of ``uri`` (its password and secret options' values) as written and as decoded:
    what could show up in a message."""
    written = [v for v in (uri_password(uri), *(value for _, value in uri_secret_options(uri))) if v]
    found = {form for secret in written for form in (secret, unquote(secret), unquote_plus(secret))}
    return sorted(found, key=len, reverse=True)


def redact(text: str, uri: str | None) -> str:
    """``text`` with every occurrence of a secret of ``uri`` replaced by ``***``."""
    if not uri:
        return text
    for secret in _secrets(uri):
        text = text.replace(secret, "***")
    return text


def mask_uri(uri: str) -> str:
    """``mongodb://user:***@host:port/db?tlsCertificateKeyFilePassword=***``: the URI with its
    password and the values of its secret options hidden, for messages."""
    scheme, userinfo, rest = uri_parts(uri)
    head = ""
    if userinfo is not None:
        user, sep, password = userinfo.partition(":")
        head = f"{user}:***@" if sep and password else f"{userinfo}@"
    base, q, query = rest.partition("?")
    secret = {name for name, _ in uri_secret_options(uri)}
    if secret:
        query = "".join(f"{part.partition('=')[0]}=***" if part.partition("=")[0] in secret and "=" in part else part
                        for part in re.split(r"([&;])", query))
    return f"{scheme}{head}{base}{q}{query}"


def resolve_uri(params: ExportParams, env: Mapping[str, str] | None = None) -> str | None:
    """The MongoDB URI to use: ``$IMGRATE_MONGODB_URI``, else ``export.mongo_uri``, else None."""
    env = os.environ if env is None else env
    return env.get(ENV_URI) or params.mongo_uri or None


def _guarded(uri: str, action: str, fn: Callable[[], T], also: tuple[type[Exception], ...] = ()) -> T:
    """Run ``fn``; a pymongo error (or one of ``also``) becomes a :class:`DatabaseError`.

    The message names the masked URI. The new error is raised outside the ``except`` block,
    so it carries no chained pymongo exception (whose text or traceback could hold the URI).
    """
    from pymongo.errors import PyMongoError

    errors: tuple[type[BaseException], ...] = (PyMongoError, *also)
    try:
        return fn()
    except errors as err:
        text = str(err).split(", Topology Description:")[0]  # the rest repeats it per server
        message = redact(f"MongoDB at {mask_uri(uri)}: {action} failed: {type(err).__name__}: {text}", uri)
    raise DatabaseError(message)


def connect(uri: str, timeout_s: float) -> MongoClient[Doc]:
    """A client whose server selection, connects and socket operations give up after ``timeout_s``.

    The client connects lazily; call :func:`ping` to find out whether the server answers.
    """
    from pymongo import MongoClient

    ms = int(timeout_s * 1000)

    def make() -> MongoClient[Doc]:
        return MongoClient(uri, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms,
                           appname="imgrate")

    # pymongo checks URI options with ValueError and TypeError too
    return _guarded(uri, "connecting", make, also=(ValueError, TypeError))


def ping(client: MongoClient[Doc], uri: str) -> None:
    """Ask the server for ``ping`` (``server_info()`` needs ``buildinfo``, which not every server has)."""
    _guarded(uri, "reaching the server", lambda: client.admin.command("ping"))


# --- the export sink ----------------------------------------------------------------------


def row_hash(row: Mapping[str, Any], thumbnail_size: int | None = None) -> str:
    """A content hash of a table row and the settings that shape its document."""
    blob = json.dumps([DOC_VERSION, thumbnail_size or 0, row], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


def _batches(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class MongoSink:
    """Upserts the export's rows into ``<database>.posts`` and ``<database>.users``."""

    uri: str = field(repr=False)  # may hold a password: never in a repr, log line or message
    database: str = "imgrate"
    shards_dir: Path | None = None  # where the images for thumbnails are (needed if thumbnail_size)
    batch_size: int = 500
    timeout_s: float = 10.0
    thumbnail_size: int | None = None
    stats: dict[str, Any] = field(default_factory=dict, repr=False)  # timings of the last write

    def __post_init__(self) -> None:
        if self.thumbnail_size and self.shards_dir is None:
            raise ValueError("MongoSink: thumbnails need shards_dir")

    @property
    def where(self) -> str:
        """The masked URI and database, for messages."""
        return f"{mask_uri(self.uri)} database {self.database}"

    def write(self, posts: list[dict[str, Any]], users: list[dict[str, Any]]) -> dict[str, int]:
        """Upsert new and changed rows; return counts for reports/export.json."""
        client = connect(self.uri, self.timeout_s)
        try:
            ping(client, self.uri)
            db = client[self.database]
            _guarded(self.uri, "creating indexes", lambda: ensure_indexes(db))
            log.info("MongoDB %s: comparing %d posts and %d users", self.where, len(posts), len(users))
            t0 = time.perf_counter()
            p_written, p_same = self._upsert(db.posts, "shortcode", posts, thumbnails=True)
            u_written, u_same = self._upsert(db.users, "username", users, thumbnails=False)
            seconds = time.perf_counter() - t0
        finally:
            client.close()
        written = p_written + u_written
        self.stats = {"seconds": seconds, "documents_written": written,
                      "docs_per_s": written / seconds if written and seconds > 0 else None}
        log.info("MongoDB %s: wrote %d posts and %d users (%d and %d unchanged) in %.1f s",
                 self.where, p_written, u_written, p_same, u_same, seconds)
        return {"posts_written": p_written, "posts_unchanged": p_same,
                "users_written": u_written, "users_unchanged": u_same}

    def _upsert(self, coll: Collection[Doc], key: str, rows: list[dict[str, Any]], thumbnails: bool) -> tuple[int, int]:
        """Send the rows whose hash differs from the stored one; return (written, unchanged)."""
        from pymongo import ReplaceOne

        size = self.thumbnail_size if thumbnails else None
        stored = _guarded(self.uri, f"reading {coll.name} hashes", lambda: {
            d[key]: d.get("row_hash") for d in coll.find({}, {"_id": 0, key: 1, "row_hash": 1}) if key in d
        })
        todo = [(row, h) for row in rows if stored.get(row[key]) != (h := row_hash(row, size))]
        if thumbnails:  # group reads by shard
            todo.sort(key=lambda t: (t[0].get("shard") or "", t[0].get("member") or ""))
        for batch in track(_batches(todo, self.batch_size), f"mongo {coll.name}"):
            thumbs = self._thumbnails([row for row, _ in batch]) if size else {}
            ops = []
            for row, h in batch:
                doc = {**row, "row_hash": h}
                if row[key] in thumbs:
                    doc["thumbnail"] = thumbs[row[key]]
                ops.append(ReplaceOne({key: row[key]}, doc, upsert=True))
            result = _guarded(self.uri, f"writing {coll.name}",
                              lambda ops=ops: coll.bulk_write(ops, ordered=False))  # type: ignore[misc]
            if result.upserted_count + result.matched_count != len(ops):  # pragma: no cover - server bug
                raise DatabaseError(f"MongoDB {self.where}: {coll.name} bulk write acknowledged "
                                    f"{result.upserted_count + result.matched_count} of {len(ops)} documents")
        return len(todo), len(rows) - len(todo)

    def _thumbnails(self, rows: Iterable[dict[str, Any]]) -> dict[str, bytes]:
        """Thumbnails of the posts' first images, by shortcode (posts without an image get none)."""
        assert self.shards_dir is not None and self.thumbnail_size
        wanted: dict[str, dict[str, str]] = {}  # shard -> member -> shortcode
        for row in rows:
            if row.get("member") and row.get("shard"):
                wanted.setdefault(row["shard"], {})[row["member"]] = row["shortcode"]
        out: dict[str, bytes] = {}
        for shard, members in wanted.items():
            for name, data in iter_members(self.shards_dir / shard, set(members)):
                try:
                    out[members[name]] = jpeg_thumbnail(data, self.thumbnail_size)
                except ImageError as err:  # the post is still written, without a thumbnail
                    log.warning("no thumbnail for shard %s member %s: %s", shard, name, err)
        return out


def ensure_indexes(db: Database[Doc]) -> None:
    """Unique keys, and the indexes the ``imgrate db`` queries use (idempotent)."""
    from pymongo import ASCENDING, DESCENDING

    db.posts.create_index([("shortcode", ASCENDING)], unique=True, name="shortcode_unique")
    db.posts.create_index([("user", ASCENDING), ("likes", DESCENDING)], name="user_likes")
    db.posts.create_index([("likes", DESCENDING)], name="likes")
    db.users.create_index([("username", ASCENDING)], unique=True, name="username_unique")


def sink_from_params(params: ExportParams, paths: Paths, env: Mapping[str, str] | None = None) -> MongoSink | None:
    """The export's MongoDB sink when a URI is configured, else None (JSON tables only)."""
    uri = resolve_uri(params, env)
    if uri is None:
        return None
    return MongoSink(uri=uri, database=params.database, shards_dir=paths.shards, batch_size=params.batch_size,
                     timeout_s=params.timeout_s, thumbnail_size=params.thumbnail_size or None)


# --- queries (imgrate db) -----------------------------------------------------------------


def _query(uri: str, database: str, timeout_s: float, action: str, fn: Callable[[Database[Doc]], T]) -> T:
    client = connect(uri, timeout_s)
    try:
        ping(client, uri)
        return _guarded(uri, action, lambda: fn(client[database]))
    finally:
        client.close()


def extreme_posts(
    uri: str, database: str, *, n: int = 5, which: Literal["top", "bottom"] = "top",
    user: str | None = None, timeout_s: float = 10.0, thumbnails: bool = False,
) -> list[dict[str, Any]]:
    """The ``n`` most (``top``) or least (``bottom``) liked posts, of one user or of everyone
    (posts whose owner hides the like count, ``likes: null``, are not ranked).

    Ties are broken by shortcode so the answer is stable. With ``thumbnails``, a post that has
    one (``export.thumbnail_size``) carries its JPEG bytes under ``thumbnail``.
    """
    order = -1 if which == "top" else 1
    query: dict[str, Any] = {"likes": {"$ne": None}}
    if user:
        query["user"] = user.lower()
    hidden = {k: v for k, v in HIDDEN_FIELDS.items() if not (thumbnails and k == "thumbnail")}

    def run(db: Database[Doc]) -> list[dict[str, Any]]:
        cursor = db.posts.find(query, hidden).sort([("likes", order), ("shortcode", 1)]).limit(n)
        return list(cursor)

    return _query(uri, database, timeout_s, f"{which} posts", run)


USER_STATS_PIPELINE: list[dict[str, Any]] = [
    {"$lookup": {
        "from": "posts",
        "let": {"u": "$username"},
        "pipeline": [
            {"$match": {"$expr": {"$eq": ["$user", "$$u"]}}},
            {"$group": {
                "_id": None,
                "posts": {"$sum": 1},
                "likes_total": {"$sum": "$likes"},
                "likes_mean": {"$avg": "$likes"},
                "likes_std": {"$stdDevPop": "$likes"},
                "likes_min": {"$min": "$likes"},
                "likes_max": {"$max": "$likes"},
                "first_post": {"$min": "$date"},
                "last_post": {"$max": "$date"},
            }},
        ],
        "as": "stats",
    }},
    {"$unwind": {"path": "$stats", "preserveNullAndEmptyArrays": True}},
    {"$project": {
        "_id": 0,
        "username": 1,
        "followers": 1,
        "followees": 1,
        "media_count": 1,
        "posts": {"$ifNull": ["$stats.posts", 0]},
        "likes_total": {"$ifNull": ["$stats.likes_total", 0]},
        "likes_mean": "$stats.likes_mean",
        "likes_std": "$stats.likes_std",
        "likes_min": "$stats.likes_min",
        "likes_max": "$stats.likes_max",
        "first_post": "$stats.first_post",
        "last_post": "$stats.last_post",
    }},
    {"$sort": {"username": 1}},
]


def user_stats(uri: str, database: str, *, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """Per user: followers, posts stored, and likes statistics, from one aggregation.

    ``likes_per_follower`` is the mean likes divided by followers (None without followers).
    """

    def run(db: Database[Doc]) -> list[dict[str, Any]]:
        return list(db.users.aggregate(USER_STATS_PIPELINE))

    rows = _query(uri, database, timeout_s, "user statistics", run)
    for row in rows:  # stored documents are input: a count may be of any type
        mean, followers = row.get("likes_mean"), row.get("followers")
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (mean, followers))
        row["likes_per_follower"] = mean / followers if numbers and followers else None
    return rows
