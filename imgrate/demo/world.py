"""The simulated Instagram's world: photographers, their posts and the photos' pixels.

:class:`DemoWorld` is pure: everything is derived from ``(crawl.demo.seed, username)`` by
hashing (:class:`imgrate.params.DemoParams` is its whole configuration), so a world is
byte-identical on every run. Adding a user never changes another user; moving the clock
(``until``) forward only publishes the posts made in between (and lets followers and the
likes of young posts grow). :mod:`imgrate.demo.server` serves it to Instaloader; the
evaluate stage's oracle reads the hidden appeal from here, never from crawled data.

The hidden ground truth: each post's first image has an ``appeal`` made from what is visible
in it (colourfulness, contrast, exposure, rule-of-thirds composition, sharpness, how close
its hue is to the photographer's signature hue) plus noise, and its likes are

    likes = followers(at posting) * engagement * exp(sensitivity * appeal + likes_sigma * z) [* viral]

grown the way Instagram likes grow (:func:`likes_fraction`): ~77% in the first day, ~91% after
two, ~95% after three, then a long tail until they settle at :data:`LIKES_SETTLE_DAYS` (7) days
and stay fixed (comments likewise). A small share of posts (:data:`HIDDEN_LIKES_RATE`), and every
post of a user whose name contains ``hidden``, has its like count hidden by the owner: the
server then says ``like_and_view_counts_disabled: true`` and serves a meaningless count (-1 or
a small number), as Instagram does. Users differ in followers (2k..2M), engagement, how much
their audience rewards appeal (``appeal_sensitivity`` 0.35..1), likes noise (0.2..0.7) and
viral outliers, so who posted explains most of the likes across users, while appeal
explains a large part within a user. Appeal has sd ~0.97: ~0.9 visible, 0.45 noise.

Measured here: ~2-3 ms per 320 px image with its JPEG encode; Instaloader crawls ~100
posts/s against :func:`serve`; a small CNN on 50x50 downscales reaches a within-user
Spearman of ~0.55 with log-likes (the oracle appeal: ~0.8).
"""

from __future__ import annotations

import base64
import bisect
import colorsys
import hashlib
import io
import logging
import math
import re
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
from PIL import Image

from imgrate.errors import DataError, ParamsError, UsersFileError
from imgrate.metadata import is_username
from imgrate.params import DemoParams

log = logging.getLogger(__name__)

DAY = 86_400
YEAR = 365.25 * DAY
IG_EPOCH_MS = 1_314_220_021_721  # Instagram's media ids count milliseconds from here
LIKES_SETTLE_DAYS = 7  # likes and comments grow for a week (most in the first day or two), then stay fixed
_FAST_DAYS, _SLOW_DAYS, _FAST_SHARE = 0.5, 2.5, 0.8  # the two time scales of likes_fraction
HIDDEN_LIKES_RATE = 0.03  # share of posts whose owner hides the like count
APPEAL_NOISE = 0.45  # sd of the invisible part of appeal (the visible part has sd ~0.9)
SIDECAR_RATE = 0.15  # share of posts that are sidecars (2-5 images)
VIDEO_RATE = 0.08  # share of posts that are videos


# ----------------------------------------------------------------------------------------
# The world: users, posts, pixels


@dataclass(frozen=True)
class DemoUser:
    """A photographer as the world sees them (followers as at the world's clock)."""

    username: str
    id: int
    exists: bool
    is_private: bool
    followers: int
    followees: int
    engagement: float  # typical likes / followers
    interval_days: float  # mean gap between posts
    full_name: str = ""
    base_followers: float = 0.0  # followers at `start`; they grow by exp(growth * years)
    follower_growth: float = 0.0
    appeal_sensitivity: float = 0.7  # log-likes per unit of appeal
    likes_sigma: float = 0.5  # sd of log-likes noise between this user's posts
    viral_rate: float = 0.0  # chance that a post goes viral (x e^1.5..e^3 likes)
    comment_rate: float = 0.0  # typical comments / likes
    hue: float = 0.0  # signature hue in [0, 1)
    style_strength: float = 0.0  # appeal bonus for posts near the signature hue


@dataclass(frozen=True)
class DemoPost:
    """A post as observed at the world's clock. ``appeal`` is hidden from Instaloader."""

    shortcode: str
    id: int
    username: str
    taken_at: int  # unix seconds UTC
    typename: str  # "GraphImage" | "GraphSidecar" | "GraphVideo"
    n_images: int  # 1 for image/video, 2..5 for sidecars
    likes: int
    comments: int
    appeal: float
    caption: str
    width: int = 0
    height: int = 0
    index: int = 0  # n-th post of its user, counting from 0 = oldest
    likes_hidden: bool = False  # the owner hides the like count: Instagram serves a meaningless one

    @property
    def served_likes(self) -> int:
        """The like count Instagram shows: the real one, or a meaningless one when hidden."""
        if not self.likes_hidden:
            return self.likes
        return -1 if self.id % 2 else self.id % 3  # what clients report: -1, or a small number


@dataclass(frozen=True)
class _Scene:
    """What one image shows; the pixels and the visible part of appeal derive from it."""

    hue: float  # background hue
    subject_hue: float
    sat: float  # colourfulness, 0..1
    contrast: float  # 0..1
    exposure: float  # 0..1
    cx: float  # subject centre, relative to width / height
    cy: float
    radius: float  # relative to the shorter side
    square: bool  # subject is a square rather than a disc
    composition: str  # "thirds" | "centre" | "edge"
    blurred: bool
    angle: float  # direction of the background gradient
    extras: tuple[tuple[float, float, float, float, float], ...]  # (x, y, r, hue, value)
    noise_xy: tuple[float, float]  # offset into the world's noise tile, 0..1


@dataclass(frozen=True)
class _PostModel:
    """A post before the clock is applied (final likes, not yet grown)."""

    index: int
    id: int
    shortcode: str
    taken_at: int
    typename: str
    n_images: int
    width: int
    height: int
    final_likes: float
    final_comments: float
    appeal: float
    caption: str
    likes_hidden: bool = False


def likes_fraction(age_s: float) -> float:
    """The share of its final likes (and comments) a post has ``age_s`` seconds after posting.

    Two exponential phases, as measured for Instagram engagement: 80% with a half-day time
    scale (the first day or two), 20% with a 2.5-day one (the long tail), rescaled to reach
    exactly 1 at :data:`LIKES_SETTLE_DAYS` and fixed afterwards, so that a crawl at any later
    clock reads the same count.
    """
    def raw(days: float) -> float:
        return (_FAST_SHARE * (1.0 - math.exp(-days / _FAST_DAYS))
                + (1.0 - _FAST_SHARE) * (1.0 - math.exp(-days / _SLOW_DAYS)))

    days = min(max(age_s, 0.0) / DAY, float(LIKES_SETTLE_DAYS))
    return raw(days) / raw(float(LIKES_SETTLE_DAYS))


def _parse_time(text: str, *, end_of_day: bool) -> int:
    """Unix seconds of an ISO date (its start, or its last second) or ISO datetime (UTC if naive)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return int(moment.timestamp()) + (DAY - 1 if end_of_day else 0)
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise ParamsError(f"expected an ISO date or datetime, got {text!r}") from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def digest(*parts: object) -> bytes:
    return hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=16).digest()


def _rng(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded by a hash of ``parts`` (e.g. seed, username, purpose)."""
    return np.random.default_rng(int.from_bytes(digest(*parts), "little"))


_SHORTCODE_RE = re.compile(r"^[A-Za-z0-9_-]{1,12}$")


def _media_id_of(shortcode: str) -> int | None:
    """The media id of a shortcode (Instaloader's ``shortcode_to_mediaid``); None if it is not one."""
    if not _SHORTCODE_RE.match(shortcode):
        return None
    return int.from_bytes(base64.b64decode(shortcode.rjust(12, "A"), b"-_"), "big")


def _posting_second(media_id: int) -> int:
    """The unix second a media id was made in (ids count milliseconds in their high bits)."""
    return ((media_id >> 23) + IG_EPOCH_MS) // 1000


def shortcode_of(media_id: int) -> str:
    """Instagram's shortcode of a media id (the same as ``Post.mediaid_to_shortcode``)."""
    code = base64.b64encode(media_id.to_bytes(9, "big"), b"-_").decode()
    return code.lstrip("A") or "A"


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32)


_ADJECTIVES = ["quiet", "golden", "misty", "electric", "soft", "bold", "late", "first", "blue", "wild"]
_SUBJECTS = ["light", "hour", "shadows", "reflections", "lines", "colours", "silence", "geometry", "morning"]
_PLACES = ["the harbour", "the old town", "the dunes", "the rooftops", "the market", "the pier", "the forest"]
_TAGS = ["photography", "streetphotography", "landscape", "colour", "minimal", "travel", "filmlook", "urban"]


# The params.yaml keys a world is built from (its whole configuration; fault injection is the
# server's): a stage that rebuilds the world (evaluate's oracle) tracks exactly these.
PARAMS_READ = ("crawl.demo.seed", "crawl.demo.start", "crawl.demo.until", "crawl.demo.image_size",
               "crawl.demo.mean_interval_days")


class DemoWorld:
    """A deterministic simulated Instagram: users, posts, and the photos' JPEG bytes.

    Each user's attributes and posts depend only on ``(params.seed, username)`` and the
    world's fixed parts (start, image size, posting interval), never on the other users or
    on ``until``, which only decides which posts exist yet and what the counts read. The
    params are checked where params.yaml is read (:mod:`imgrate.params`).
    """

    def __init__(self, usernames: list[str], params: DemoParams) -> None:
        self.params = params
        self.start = _parse_time(params.start, end_of_day=False)  # unix seconds
        self.clock = _parse_time(params.until, end_of_day=True)  # the world's clock
        self.usernames: list[str] = []
        for name in usernames:
            name = name.strip().lower()
            if not is_username(name):
                raise UsersFileError(f"invalid Instagram username {name!r}")
            if name not in self.usernames:
                self.usernames.append(name)
        self._lock = threading.Lock()
        self._users: dict[str, DemoUser] = {}
        # Built lazily, post by post: a crawl that finds nothing new looks at a dozen posts
        # per user, not at the tens of thousands a paper-sized world holds (13 s for 71k).
        self._times: dict[str, list[int]] = {}  # posting times up to the clock, oldest first
        self._models: dict[tuple[str, int], _PostModel] = {}  # (username, index) -> post
        self._noise_tile: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"DemoWorld({len(self.usernames)} users, seed={self.params.seed}, until={self.params.until})"

    # ---- users

    def user(self, username: str) -> DemoUser:
        """The user of that name; ``exists=False`` for names not in the world, ``ghost`` or ``missing``."""
        name = username.lower()
        with self._lock:
            if name not in self._users:
                self._users[name] = self._make_user(name)
            return self._users[name]

    def _make_user(self, name: str) -> DemoUser:
        if name not in self.usernames or "ghost" in name or "missing" in name:
            return DemoUser(name, id=0, exists=False, is_private=False, followers=0, followees=0,
                            engagement=0.0, interval_days=0.0)
        rng = _rng(self.params.seed, name, "user")
        base_followers = math.exp(rng.uniform(math.log(2e3), math.log(2e6)))
        growth = float(rng.uniform(0.0, 0.35))
        years = (self.clock - self.start) / YEAR
        return DemoUser(
            username=name,
            id=int(rng.integers(1_000_000_000, 70_000_000_000)),
            exists=True,
            is_private="private" in name,
            followers=round(base_followers * math.exp(growth * years)),
            followees=round(math.exp(rng.uniform(math.log(80), math.log(3000)))),
            engagement=float(math.exp(rng.normal(math.log(0.025), 0.45))),
            interval_days=self.params.mean_interval_days * math.exp(rng.uniform(math.log(0.5), math.log(2.5))),
            full_name=" ".join(part.capitalize() for part in re.split(r"[._]+", name) if part),
            base_followers=base_followers,
            follower_growth=growth,
            appeal_sensitivity=float(rng.uniform(0.35, 1.0)),
            likes_sigma=float(rng.uniform(0.2, 0.7)),
            viral_rate=float(rng.choice([0.0, 0.0, 0.01, 0.03])),
            comment_rate=float(math.exp(rng.uniform(math.log(0.004), math.log(0.03)))),
            hue=float(rng.uniform(0.0, 1.0)),
            style_strength=float(rng.uniform(0.0, 0.3)),
        )

    def followers_at(self, username: str, ts: int) -> float:
        """The user's (unrounded) follower count at unix time ``ts``."""
        u = self.user(username)
        if not u.exists:
            return 0.0
        return u.base_followers * math.exp(u.follower_growth * (ts - self.start) / YEAR)

    # ---- posts

    def posts(self, username: str) -> list[DemoPost]:
        """The user's posts up to the clock, newest first (empty for users that do not exist)."""
        name = username.lower()
        return [self._observe(name, self._model(name, i)) for i in reversed(range(self.post_count(name)))]

    def post_count(self, username: str) -> int:
        """How many posts the user has made up to the clock."""
        return len(self._post_times_of(username.lower()))

    def timeline_page(self, username: str, older_than: int | None, n: int) -> tuple[list[DemoPost], bool]:
        """Up to ``n`` of the user's posts with ids below ``older_than`` (all if None), newest
        first, and whether older ones remain. Builds only the posts it returns."""
        name = username.lower()
        times = self._post_times_of(name)
        stop = len(times)
        if older_than is not None:
            second = _posting_second(older_than)  # ids grow with the posting time
            stop = bisect.bisect_left(times, second)
            if stop < len(times) and times[stop] == second and self._model(name, stop).id < older_than:
                stop += 1
        first = max(stop - max(n, 0), 0)
        page = [self._observe(name, self._model(name, i)) for i in reversed(range(first, stop))]
        return page, bool(page) and first > 0

    def post(self, shortcode: str) -> DemoPost:
        """The post with that shortcode, among the world's users. Raises DataError if unknown."""
        username, index = self._lookup(shortcode)
        return self._observe(username, self._model(username, index))

    def appeal(self, shortcode: str) -> float:
        """The post's true appeal (an oracle baseline; never served to Instaloader)."""
        username, index = self._lookup(shortcode)
        return self._model(username, index).appeal

    def visible_appeal(self, shortcode: str) -> float:
        """The part of the post's appeal that its (first) image shows: the true appeal before the
        invisible noise of sd ``APPEAL_NOISE`` (the image_ceiling bound; never served to Instaloader)."""
        username, index = self._lookup(shortcode)
        user = self.user(username)
        return self._visible_appeal(user, self._scene(user, index, 0))

    def _lookup(self, shortcode: str) -> tuple[str, int]:
        """(username, index) of a shortcode: its media id holds the posting time, so a
        bisection per user finds it, building only the posts made in that second."""
        media_id = _media_id_of(shortcode)
        if media_id is not None:
            second = _posting_second(media_id)
            for name in self.usernames:
                times = self._post_times_of(name)
                i = bisect.bisect_left(times, second)
                if i < len(times) and times[i] == second and self._model(name, i).shortcode == shortcode:
                    return name, i
        raise DataError(f"no post with shortcode {shortcode!r} in the demo world")

    def _observe(self, username: str, m: _PostModel) -> DemoPost:
        """The post as seen at the clock: counts grow (:func:`likes_fraction`), then stay fixed."""
        grown = likes_fraction(self.clock - m.taken_at)
        return DemoPost(
            shortcode=m.shortcode, id=m.id, username=username, taken_at=m.taken_at, typename=m.typename,
            n_images=m.n_images, likes=round(m.final_likes * grown), comments=round(m.final_comments * grown),
            appeal=m.appeal, caption=m.caption, width=m.width, height=m.height, index=m.index,
            likes_hidden=m.likes_hidden,
        )

    def _post_times_of(self, name: str) -> list[int]:
        with self._lock:
            if name in self._times:
                return self._times[name]
        user = self.user(name)
        times = self._post_times(user) if user.exists else []
        with self._lock:
            return self._times.setdefault(name, times)

    def _model(self, name: str, index: int) -> _PostModel:
        key = (name, index)
        with self._lock:
            if key in self._models:
                return self._models[key]
        model = self._make_post(self.user(name), index, self._post_times_of(name)[index])
        with self._lock:
            return self._models.setdefault(key, model)

    def _post_times(self, user: DemoUser) -> list[int]:
        """Posting times up to the clock: gamma(2) gaps drawn one by one, so the clock only cuts."""
        rng = _rng(self.params.seed, user.username, "times")
        mean_gap = user.interval_days * DAY
        t = self.start + rng.uniform(0.0, mean_gap)
        times: list[int] = []
        while t <= self.clock:
            if not times or int(t) > times[-1]:
                times.append(int(t))
            t += max(rng.gamma(2.0, mean_gap / 2.0), 600.0)
        return times

    def _make_post(self, user: DemoUser, index: int, taken_at: int) -> _PostModel:
        cfg = self.params
        rng = _rng(cfg.seed, user.username, "post", index)
        u = rng.uniform()
        if u < VIDEO_RATE:
            typename, n_images = "GraphVideo", 1
        elif u < VIDEO_RATE + SIDECAR_RATE:
            typename, n_images = "GraphSidecar", int(rng.integers(2, 6))
        else:
            typename, n_images = "GraphImage", 1
        shape = rng.uniform()
        size = cfg.image_size
        if shape < 0.7:
            width, height = size, size
        elif shape < 0.9:
            width, height = round(size * 0.8), size  # 4:5 portrait
        else:
            width, height = size, round(size / 1.91)  # 1.91:1 landscape
        appeal = self._visible_appeal(user, self._scene(user, index, 0)) + APPEAL_NOISE * rng.normal()
        log_likes = user.appeal_sensitivity * appeal + user.likes_sigma * rng.normal()
        if rng.uniform() < user.viral_rate:
            log_likes += rng.uniform(1.5, 3.0)
        final_likes = self.followers_at(user.username, taken_at) * user.engagement * math.exp(log_likes)
        final_comments = final_likes * user.comment_rate * math.exp(rng.normal(0.0, 0.35))
        ms = int(rng.integers(0, 1000))
        low_bits = int.from_bytes(digest(cfg.seed, user.username, "id", index)[:3], "big") & 0x7FFFFF
        media_id = ((taken_at * 1000 + ms - IG_EPOCH_MS) << 23) | low_bits
        tags = rng.choice(_TAGS, size=int(rng.integers(1, 4)), replace=False)
        caption = "{} {} at {}\n{}".format(
            rng.choice(_ADJECTIVES).capitalize(), rng.choice(_SUBJECTS), rng.choice(_PLACES),
            " ".join(f"#{t}" for t in tags),
        )
        # drawn apart from the post's other draws, so hiding likes changes nothing else
        hidden = "hidden" in user.username or (
            int.from_bytes(digest(cfg.seed, user.username, "hidden", index)[:4], "big") < HIDDEN_LIKES_RATE * 2**32)
        return _PostModel(
            index=index, id=media_id, shortcode=shortcode_of(media_id), taken_at=taken_at,
            typename=typename, n_images=n_images, width=width, height=height,
            final_likes=final_likes, final_comments=final_comments, appeal=float(appeal), caption=caption,
            likes_hidden=hidden,
        )

    # ---- images

    def _scene(self, user: DemoUser, index: int, image: int) -> _Scene:
        """Draw what image ``image`` of post ``index`` shows."""
        rng = _rng(self.params.seed, user.username, "scene", index, image)
        if rng.uniform() < 0.75:
            hue = (user.hue + rng.normal(0.0, 0.06)) % 1.0  # the photographer's signature palette
        else:
            hue = rng.uniform()
        subject_hue = (hue + (0.5 if rng.uniform() < 0.5 else rng.normal(0.0, 0.1))) % 1.0
        composition = str(rng.choice(["thirds", "centre", "edge"], p=[0.4, 0.35, 0.25]))
        if composition == "thirds":
            cx = rng.choice([1 / 3, 2 / 3]) + rng.normal(0.0, 0.025)
            cy = rng.choice([1 / 3, 2 / 3]) + rng.normal(0.0, 0.025)
        elif composition == "centre":
            cx, cy = 0.5 + rng.normal(0.0, 0.025, size=2)
        else:
            cx, cy = rng.uniform(0.2, 0.8, size=2)
            if rng.uniform() < 0.5:
                cx = rng.choice([0.06, 0.94]) + rng.normal(0.0, 0.02)
            else:
                cy = rng.choice([0.06, 0.94]) + rng.normal(0.0, 0.02)
        extras = tuple(
            (float(rng.uniform()), float(rng.uniform()), float(rng.uniform(0.03, 0.07)),
             float((hue + rng.normal(0.0, 0.15)) % 1.0), float(rng.uniform(-1.0, 1.0)))
            for _ in range(int(rng.integers(2, 5)))
        )
        return _Scene(
            hue=float(hue), subject_hue=float(subject_hue),
            sat=float(rng.beta(2, 2)), contrast=float(rng.beta(2, 2)), exposure=float(rng.beta(2, 2)),
            cx=float(cx), cy=float(cy), radius=float(rng.uniform(0.12, 0.2)), square=bool(rng.uniform() < 0.4),
            composition=composition, blurred=bool(rng.uniform() < 0.25), angle=float(rng.uniform(0, 2 * math.pi)),
            extras=extras, noise_xy=(float(rng.uniform()), float(rng.uniform())),
        )

    @staticmethod
    def _visible_appeal(user: DemoUser, s: _Scene) -> float:
        """The part of appeal that the image shows (sd ~0.9 over posts)."""

        def z(x: float) -> float:  # standardise a Beta(2, 2) draw
            return (x - 0.5) / 0.2236

        d_thirds = min(math.hypot(s.cx - x, s.cy - y) for x in (1 / 3, 2 / 3) for y in (1 / 3, 2 / 3))
        edge = min(s.cx, s.cy, 1 - s.cx, 1 - s.cy) < 0.12
        composition = math.exp(-((d_thirds / 0.08) ** 2)) - (1.0 if edge else 0.0)
        style = math.cos(2 * math.pi * (s.hue - user.hue))
        return (0.5 * z(s.sat) + 0.4 * z(s.contrast) + 0.25 * z(s.exposure) + 0.55 * composition
                - 0.8 * s.blurred + user.style_strength * style)

    def _noise(self) -> np.ndarray:
        """A fixed tile of luminance noise (twice the image size), cropped at random per image."""
        if self._noise_tile is None:
            n = 2 * self.params.image_size
            self._noise_tile = _rng(self.params.seed, "noise").normal(0.0, 0.03, (n, n)).astype(np.float32)
        return self._noise_tile

    def image(self, shortcode: str, index: int = 0) -> bytes:
        """JPEG bytes of image ``index`` of a post (a video's thumbnail is image 0); deterministic."""
        username, post_index = self._lookup(shortcode)
        m = self._model(username, post_index)
        if not 0 <= index < m.n_images:
            raise DataError(f"post {shortcode} has {m.n_images} image(s), no index {index}")
        pixels = self._draw(self._scene(self.user(username), post_index, index), m.width, m.height)
        return _jpeg(pixels)

    def _draw(self, s: _Scene, w: int, h: int) -> np.ndarray:
        """Render a scene: gradient background, a few small shapes, the subject, noise, maybe blur."""
        level = 0.25 + 0.55 * s.exposure  # overall brightness
        bg_lo = _hsv(s.hue, 0.6 * s.sat, level - 0.2 * s.contrast)
        bg_hi = _hsv(s.hue + 0.04, 0.5 * s.sat, level + 0.2 * s.contrast)
        # t in [0, 1] along the gradient's direction, from the corner where it starts
        cos, sin = math.cos(s.angle), math.sin(s.angle)
        span = abs(cos) + abs(sin)
        ys = np.linspace(0.0, sin / span, h, dtype=np.float32)[:, None]
        xs = np.linspace(0.0, cos / span, w, dtype=np.float32)[None, :]
        t = xs + (ys + (max(-cos, 0.0) + max(-sin, 0.0)) / span)
        img = np.empty((h, w, 3), np.float32)
        for c in range(3):
            np.multiply(t, bg_hi[c] - bg_lo[c], out=img[:, :, c])
            img[:, :, c] += bg_lo[c]
        short = min(w, h)
        for x, y, r, hue, value in s.extras:
            colour = _hsv(hue, 0.7 * s.sat, level + 0.2 * s.contrast * value)
            _paint(img, x * w, y * h, r * short, colour, square=False)
        subject = _hsv(s.subject_hue, s.sat, level + 0.05 + 0.4 * s.contrast)
        _paint(img, s.cx * w, s.cy * h, s.radius * short, subject, square=s.square)
        tile = self._noise()
        oy = int(s.noise_xy[1] * (tile.shape[0] - h))
        ox = int(s.noise_xy[0] * (tile.shape[1] - w))
        img += tile[oy:oy + h, ox:ox + w, None]
        np.clip(img, 0.0, 1.0, out=img)
        img *= 255.0
        img += 0.5
        pixels = img.astype(np.uint8)
        if s.blurred:  # a strong defocus, still visible after a downscale to 50 px
            small = Image.fromarray(pixels).resize((max(2, w // 12), max(2, h // 12)), Image.Resampling.BILINEAR)
            pixels = np.asarray(small.resize((w, h), Image.Resampling.BILINEAR))
        return pixels

    def profile_picture(self, username: str) -> bytes:
        """JPEG bytes of a user's profile picture (a disc in the signature hue)."""
        user = self.user(username)
        img = np.empty((150, 150, 3), np.float32)
        img[:] = _hsv(user.hue + 0.5, 0.3, 0.9)
        _paint(img, 75, 75, 55, _hsv(user.hue, 0.8, 0.7), square=False)
        return _jpeg((img * 255).astype(np.uint8))

    def video(self, shortcode: str) -> bytes:
        """Stand-in bytes for a video post's MP4 (an ``ftyp`` box and padding; not playable)."""
        post = self.post(shortcode)
        if post.typename != "GraphVideo":
            raise DataError(f"post {shortcode} is not a video")
        return b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + digest(shortcode) * 64


def _paint(img: np.ndarray, cx: float, cy: float, r: float, colour: np.ndarray, *, square: bool) -> None:
    """Paint a disc (or square) of radius ``r`` px at (cx, cy) px, touching only its bounding box."""
    h, w = img.shape[:2]
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, w)
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    if square:
        img[y0:y1, x0:x1] = colour
        return
    yy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    xx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    mask = xx * xx + yy * yy <= r * r
    img[y0:y1, x0:x1][mask] = colour


def _jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=85)
    return out.getvalue()
