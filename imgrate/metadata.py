"""The one boundary for metadata read from shards: untrusted bytes -> typed, validated records.

Shards come from other crawlers and from Instagram, so nothing in them is trusted. Every
``.json.xz`` member is parsed here, by verify, export and the crawler alike, so all three
agree on what a bad post is:

- member names must be Instaloader's layout under a valid username (``<user>/<date>_UTC...``,
  ``<user>/<user>_<id>.json.xz``); nothing read from a shard is ever used as a path;
- decompression is capped at :data:`MAX_METADATA_BYTES` (a post's JSON is a few KB, a
  profile's a few dozen): an xz bomb costs that much memory, not what it inflates to;
- shortcodes are base64url characters, usernames Instagram's (letters, digits, ``.`` and
  ``_``, at most 30), counts non-negative integers (not booleans, not strings) no larger than
  their plausibility cap (:data:`PLAUSIBLE`: above anything Instagram has ever shown), times
  integer seconds between Instagram's launch and 2100, ``__typename`` one of the three post types.

What a member says is also checked against the shard that carries it
(:func:`observation_problem`): a count observed after the shard's crawl, or a post published
after it, is forged or from a broken clock, and is never used.

A bad member raises :class:`BadMetadata` whose ``reason`` is a short category (for
metrics) and ``detail`` the specifics (for logs and ``imgrate verify``).
New kinds of members get their parser here, so they cross the same boundary: the counts a
crawl re-read (``<user>/<user>_counts_<date>_UTC.json``, :func:`parse_counts_member`), and the
counts of a timeline node read from the network (:func:`counts_of_node`). A like count the
owner hides (``like_and_view_counts_disabled``, or Instagram's -1) is ``None``.
"""

from __future__ import annotations

import datetime as dt
import json
import lzma
import re
from dataclasses import dataclass
from typing import Any

from imgrate.errors import DataError

# Instagram usernames: letters, digits, '.' and '_', at most 30 characters.
USERNAME_RE = re.compile(r"^[A-Za-z0-9._]{1,30}$")

MAX_METADATA_BYTES = 4 * 2**20  # decompressed; Instaloader's post JSON is 2-20 KB, a profile's < 200 KB
SHORTCODE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # base64url, as Instagram encodes media ids
POST_TYPENAMES = ("GraphImage", "GraphVideo", "GraphSidecar")
MIN_TIMESTAMP = int(dt.datetime(2010, 1, 1, tzinfo=dt.UTC).timestamp())  # Instagram: Oct 2010
MAX_TIMESTAMP = int(dt.datetime(2100, 1, 1, tzinfo=dt.UTC).timestamp())
# Plausibility caps: a count above its cap is refused (reason "implausible count"). Each is
# above anything Instagram has shown: the most-liked post has ~61 million likes and the
# most-commented a few tens of millions of comments, the largest account ~700 million
# followers, Instagram lets an account follow 7,500, and the most prolific post ~100,000 times.
# So a forged count (10^12 likes) cannot squash a user's targets or win over real observations.
PLAUSIBLE: dict[str, int] = {
    "likes": 10**8,
    "comments": 10**8,
    "followers": 2 * 10**9,
    "followees": 10**6,
    "media_count": 10**7,
}
# A crawl's posts are stamped with the time it started (imgrate.crawled_at); a post published
# while a long crawl runs is newer than that, by at most this much (a crawl of the paper's
# 71,747 posts takes hours, days when rate limited). A post dated later is not believed.
CRAWL_SLACK_S = 7 * 86_400
_DATE = r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_UTC"
COUNTS_FILE_RE = re.compile(rf"^(?P<user>[^/]+)/(?P=user)_counts_(?P<when>{_DATE})\.json$")
MAX_COUNTS_BYTES = 4 * 2**20  # a counts member holds ~100 bytes per post
MAX_COUNTS_POSTS = 20_000  # posts re-read for one user in one crawl, at most
DAY = 86_400
POST_FILE_RE = re.compile(rf"^(?P<user>[^/]+)/(?P<key>{_DATE})(?:_\d+)?\.(?:jpg|jpeg|png|webp|json\.xz)$")
PROFILE_FILE_RE = re.compile(r"^(?P<user>[^/]+)/(?P=user)_\d+\.json\.xz$")


class BadMetadata(DataError):
    """A metadata member that cannot be used: ``reason`` is its category, ``detail`` the specifics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason, self.detail = reason, detail or reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class PostMeta:
    """A post as its saved node says, validated."""

    shortcode: str
    user: str  # lower-cased
    timestamp: int  # unix seconds, UTC
    likes: int | None  # None when the owner hides the count
    comments: int
    typename: str
    likes_hidden: bool = False


@dataclass(frozen=True)
class ProfileMeta:
    """A profile snapshot, validated."""

    username: str  # lower-cased
    id: str  # digits
    followers: int
    followees: int
    media_count: int


@dataclass(frozen=True)
class Counts:
    """A post's counts as one read shows them; ``likes`` is None when the owner hides them."""

    likes: int | None
    comments: int | None
    hidden: bool


@dataclass(frozen=True)
class Observation:
    """One reading of one post's counts: its metadata file, or a later re-read (a counts member)."""

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


def is_username(name: object) -> bool:
    """Instagram's rule: letters, digits, '.' and '_', 1-30 characters, not only dots."""
    return isinstance(name, str) and bool(USERNAME_RE.fullmatch(name)) and name.strip(".") != ""


def is_shortcode(code: object) -> bool:
    return isinstance(code, str) and bool(SHORTCODE_RE.fullmatch(code))


def member_kind(name: str) -> str | None:
    """``post`` or ``profile`` for a member name of Instaloader's layout under a valid
    username, else None (the member is not used)."""
    if (m := POST_FILE_RE.fullmatch(name)) and is_username(m["user"]):
        return "post"
    if (m := PROFILE_FILE_RE.fullmatch(name)) and is_username(m["user"]):
        return "profile"
    if (m := COUNTS_FILE_RE.fullmatch(name)) and is_username(m["user"]):
        return "counts"
    return None


def decompress(data: bytes, cap: int = MAX_METADATA_BYTES) -> bytes:
    """An ``.xz`` member's content, never more than ``cap`` bytes of it (then :class:`BadMetadata`)."""
    dec = lzma.LZMADecompressor()
    try:
        out = dec.decompress(data, max_length=cap + 1)
    except lzma.LZMAError as err:
        raise BadMetadata("corrupt metadata (LZMAError)", f"does not decompress: {err}") from None
    if len(out) > cap:
        raise BadMetadata("metadata too large", f"inflates to more than {cap} bytes (a post's is a few KB)")
    if not dec.eof:
        raise BadMetadata("corrupt metadata (EOFError)", "the xz stream is cut")
    if dec.unused_data:
        raise BadMetadata("corrupt metadata (trailing data)", "bytes follow the xz stream")
    return out


def load_document(data: bytes) -> tuple[dict[str, Any], str]:
    """(node, node_type) of a ``.json.xz`` that Instaloader wrote."""
    try:
        doc = json.loads(decompress(data))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadMetadata(f"corrupt metadata ({type(err).__name__})", str(err)[:200]) from None
    except RecursionError:
        raise BadMetadata("corrupt metadata (nesting)", "JSON nested too deeply") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("node"), dict):
        raise BadMetadata("missing field 'node'", "metadata has no node")
    info = doc.get("instaloader")
    node_type = info.get("node_type") if isinstance(info, dict) else None
    if not isinstance(node_type, str):
        raise BadMetadata("missing field 'node_type'", "metadata does not say what it holds")
    return doc["node"], node_type


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


def _field(node: dict[str, Any], name: str, *paths: str) -> Any:
    value = _dig(node, *paths)
    if value is None:
        raise BadMetadata(f"missing field '{name}'")
    return value


def _bad(name: str, value: Any, want: str) -> BadMetadata:
    shown = repr(value) if isinstance(value, (int, float, str, bool)) else type(value).__name__
    return BadMetadata(f"bad field '{name}'", f"{name} is {shown[:60]}, not {want}")


def _count(node: dict[str, Any], name: str, *paths: str) -> int:
    value = _field(node, name, *paths)
    if type(value) is not int or value < 0:
        raise _bad(name, value, "a count")
    if value > PLAUSIBLE[name]:
        raise BadMetadata("implausible count", f"{name} is {value:,}, above its plausibility cap "
                          f"{PLAUSIBLE[name]:,} (imgrate.metadata.PLAUSIBLE)")
    return value


def plausible(name: str, value: object) -> bool:
    """Whether ``value`` is a count that Instagram could show for ``name`` (see :data:`PLAUSIBLE`)."""
    return type(value) is int and 0 <= value <= PLAUSIBLE[name]


def observation_problem(o: Observation, crawled_at: int) -> str | None:
    """Why an observation cannot come from the shard crawled at ``crawled_at`` (None when it can):
    counts observed after the crawl, or a post published after it (beyond :data:`CRAWL_SLACK_S`)."""
    if o.recount and o.observed_at > crawled_at:
        return (f"counts of post {o.shortcode} observed at {_utc(o.observed_at)}, after the shard's crawl "
                f"({_utc(crawled_at)}): never used")
    if o.taken_at > crawled_at + CRAWL_SLACK_S:
        return (f"post {o.shortcode} dated {_utc(o.taken_at)}, after the shard's crawl ({_utc(crawled_at)}): "
                "never used")
    return None


def _utc(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_post(node: dict[str, Any]) -> PostMeta:
    """A post from Instaloader's saved node (logged in or out); :class:`BadMetadata` if unusable."""
    shortcode = _field(node, "shortcode", "shortcode", "code")
    if not is_shortcode(shortcode):
        raise _bad("shortcode", shortcode, "base64url characters")
    user = _field(node, "user", "owner.username", "user.username")
    if not is_username(user):
        raise _bad("user", user, "an Instagram username")
    when = _field(node, "timestamp", "taken_at_timestamp", "date", "taken_at")
    if type(when) is not int or not MIN_TIMESTAMP <= when < MAX_TIMESTAMP:
        raise _bad("timestamp", when, "unix seconds")
    hidden = _likes_hidden(node)
    likes = None if hidden else _count(node, "likes", *_LIKES)
    comments = _count(node, "comments", *_COMMENTS)
    typename = _field(node, "typename", "__typename")
    if typename not in POST_TYPENAMES:
        raise _bad("typename", typename, "a post type")
    return PostMeta(shortcode, user.lower(), when, likes, comments, typename, likes_hidden=hidden)


_LIKES = ("edge_media_preview_like.count", "edge_liked_by.count", "like_count", "iphone_struct.like_count")
_COMMENTS = ("edge_media_to_comment.count", "edge_media_to_parent_comment.count", "comments",
             "iphone_struct.comment_count", "comment_count")


def _likes_hidden(node: dict[str, Any]) -> bool:
    """Whether the owner hides the like count: the node says so (the count is then
    meaningless), or the count is Instagram's -1 (any other negative count is bad data)."""
    if _dig(node, "like_and_view_counts_disabled", "iphone_struct.like_and_view_counts_disabled") is True:
        return True
    likes = _dig(node, *_LIKES)
    return type(likes) is int and likes == -1


def counts_of_node(node: dict[str, Any]) -> Counts | None:
    """The counts a post node shows (saved metadata, or a timeline node from the network);
    None when it carries no valid like count (and does not say it hides it)."""
    comments = _dig(node, *_COMMENTS)
    comments = comments if plausible("comments", comments) else None
    if _likes_hidden(node):
        return Counts(None, comments, True)
    likes = _dig(node, *_LIKES)
    if not plausible("likes", likes):
        return None
    return Counts(likes, comments, False)


def counts_member_name(user: str, observed_at: int) -> str:
    """The shard member of the counts a crawl re-read for ``user`` at ``observed_at``."""
    when = dt.datetime.fromtimestamp(observed_at, dt.UTC).strftime("%Y-%m-%d_%H-%M-%S")
    return f"{user}/{user}_counts_{when}_UTC.json"


def parse_counts_member(name: str, data: bytes) -> list[Observation]:
    """The observations of a counts member, validated; :class:`BadMetadata` names what is wrong."""
    m = COUNTS_FILE_RE.fullmatch(name)
    if m is None or not is_username(m["user"]):
        raise BadMetadata("bad member name", f"{name[:80]!r} is not <user>/<user>_counts_<date>_UTC.json")
    if len(data) > MAX_COUNTS_BYTES:
        raise BadMetadata("counts too large", f"{name}: {len(data)} bytes (at most {MAX_COUNTS_BYTES})")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise BadMetadata("corrupt counts", f"{name}: not JSON ({type(err).__name__})") from None
    user = m["user"]

    def bad(detail: str) -> BadMetadata:
        return BadMetadata("bad counts", f"{name}: {detail}")

    if not isinstance(doc, dict) or doc.get("imgrate_counts") != 1:
        raise bad("not a version-1 counts member")
    if doc.get("user") != user:
        raise bad(f"names user {str(doc.get('user'))[:40]!r}, not {user}")
    observed_at = doc.get("observed_at")
    if type(observed_at) is not int or not MIN_TIMESTAMP <= observed_at < MAX_TIMESTAMP:
        raise bad("observed_at is not a unix time")
    if counts_member_name(user, observed_at) != name:
        raise bad(f"observed_at {observed_at} does not match the member's name")
    posts = doc.get("posts")
    if not isinstance(posts, list) or len(posts) > MAX_COUNTS_POSTS:
        raise bad(f"posts must be a list of at most {MAX_COUNTS_POSTS}")
    out = []
    for i, p in enumerate(posts):
        if not isinstance(p, dict):
            raise bad(f"posts[{i}] is not an object")
        code, taken_at, hidden = p.get("shortcode"), p.get("taken_at"), p.get("likes_hidden")
        likes, comments = p.get("likes"), p.get("comments")
        if not is_shortcode(code):
            raise bad(f"posts[{i}]: shortcode is not base64url characters")
        if type(taken_at) is not int or not MIN_TIMESTAMP <= taken_at <= observed_at:
            raise bad(f"posts[{i}]: taken_at is not a unix time before observed_at")
        if type(hidden) is not bool:
            raise bad(f"posts[{i}]: likes_hidden is not true or false")
        for key, value in (("likes", likes), ("comments", comments)):
            if value is not None and (type(value) is not int or value < 0):
                raise bad(f"posts[{i}]: {key} is not a count")
            if value is not None and not plausible(key, value):
                raise BadMetadata("implausible count", f"{name}: posts[{i}]: {key} is {value:,}, above its "
                                  f"plausibility cap {PLAUSIBLE[key]:,} (imgrate.metadata.PLAUSIBLE)")
        if hidden != (likes is None):
            raise bad(f"posts[{i}]: likes must be null exactly when likes_hidden is true")
        out.append(Observation(str(code), user, taken_at, observed_at, likes, comments, hidden, recount=True))
    return out


def parse_profile(node: dict[str, Any]) -> ProfileMeta:
    """A profile from Instaloader's saved node; :class:`BadMetadata` if unusable."""
    username = _field(node, "username", "username")
    if not is_username(username):
        raise _bad("username", username, "an Instagram username")
    pid = _field(node, "id", "id", "pk")
    if type(pid) is int and pid >= 0:
        pid = str(pid)
    if not isinstance(pid, str) or not pid.isascii() or not pid.isdigit() or len(pid) > 40:
        raise _bad("id", pid, "digits")
    return ProfileMeta(
        username.lower(), pid,
        _count(node, "followers", "edge_followed_by.count", "follower_count"),
        _count(node, "followees", "edge_follow.count", "following_count"),
        _count(node, "media_count", "edge_owner_to_timeline_media.count", "media_count"),
    )


def parse_member(name: str, data: bytes) -> PostMeta | ProfileMeta | None:
    """A ``.json.xz`` member of a shard as a typed record; None for a kind that holds neither
    (Instaloader's other structures). :class:`BadMetadata` for anything unusable."""
    kind = member_kind(name)
    if kind is None or not name.endswith(".json.xz"):
        raise BadMetadata("bad member name", f"{name[:80]!r} is not a metadata file of Instaloader's layout")
    node, node_type = load_document(data)
    if node_type == "Post":
        if kind != "post":
            raise BadMetadata("bad member name", f"a post saved under a profile's name {name[:80]!r}")
        return parse_post(node)
    if node_type == "Profile":
        return parse_profile(node)
    return None
