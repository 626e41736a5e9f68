"""A simulated Instagram that Instaloader 4.16's real code crawls offline.

Two halves:

- :class:`DemoWorld` is pure: photographers, their posts and the photos' pixels, all derived
  from ``(seed, username)`` by hashing, so a world is byte-identical on every run. Adding a
  user never changes another user; moving the clock (``until``) forward only publishes the
  posts made in between (and lets followers and the likes of young posts grow).
- :func:`serve` registers, on a ``requests_mock.Mocker``, every endpoint that Instaloader
  4.16 calls when logged out: the start page, the profile pages with their embedded JSON,
  ``api/graphql`` (post metadata and further timeline pages) and a fake CDN. Any other URL
  is left unregistered, so requests-mock raises ``NoMockAddress`` and a missing endpoint
  shows up at once. With a :class:`FaultConfig` it misbehaves as Instagram does (429, 401
  "Please wait", 5xx, resets, timeouts, truncated images, slow answers), and it always refuses
  users named ``*throttled*``: the crawler's test bed.

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
import json
import logging
import math
import random
import re
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from imgrate.errors import DataError, ParamsError, UsersFileError

if TYPE_CHECKING:
    import requests_mock

log = logging.getLogger(__name__)

DAY = 86_400
YEAR = 365.25 * DAY
IG_EPOCH_MS = 1_314_220_021_721  # Instagram's media ids count milliseconds from here
LIKES_SETTLE_DAYS = 7  # likes and comments grow for a week (most in the first day or two), then stay fixed
_FAST_DAYS, _SLOW_DAYS, _FAST_SHARE = 0.5, 2.5, 0.8  # the two time scales of likes_fraction
HIDDEN_LIKES_RATE = 0.03  # share of posts whose owner hides the like count
APPEAL_NOISE = 0.45  # sd of the invisible part of appeal (the visible part has sd ~0.9)
USERNAME_RE = re.compile(r"^[a-z0-9._]{1,30}$")


# ----------------------------------------------------------------------------------------
# The world: users, posts, pixels


@dataclass(frozen=True)
class WorldConfig:
    """Everything a world depends on besides the usernames."""

    seed: int = 0
    start: str = "2025-01-01"  # ISO date: first day anyone may post
    until: str = "2026-06-30"  # ISO date (its end, 23:59:59 UTC) or datetime (UTC if naive)
    image_size: int = 320  # longest side in px of the drawn images
    mean_interval_days: float = 5.0  # average posting interval; users vary 0.5x..2.5x
    sidecar_rate: float = 0.15
    video_rate: float = 0.08

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ParamsError(f"image_size must be at least 16, got {self.image_size}")
        if self.mean_interval_days <= 0:
            raise ParamsError(f"mean_interval_days must be > 0, got {self.mean_interval_days}")
        if not (0 <= self.sidecar_rate and 0 <= self.video_rate and self.sidecar_rate + self.video_rate <= 1):
            raise ParamsError("sidecar_rate and video_rate must be >= 0 and add up to at most 1")
        if _parse_time(self.start, end_of_day=False) < _parse_time("2016-01-01", end_of_day=False):
            raise ParamsError(f"start must be 2016 or later (11-character shortcodes), got {self.start}")
        if self.start_ts > self.until_ts:
            raise ParamsError(f"until ({self.until}) is before start ({self.start})")

    @property
    def start_ts(self) -> int:
        """Unix seconds of the first moment anyone may post."""
        return _parse_time(self.start, end_of_day=False)

    @property
    def until_ts(self) -> int:
        """Unix seconds of the world's clock."""
        return _parse_time(self.until, end_of_day=True)


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
            moment = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            return int(moment.timestamp()) + (DAY - 1 if end_of_day else 0)
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise ParamsError(f"expected an ISO date or datetime, got {text!r}") from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=16).digest()


def _rng(*parts: object) -> np.random.Generator:
    """A numpy Generator seeded by a hash of ``parts`` (e.g. seed, username, purpose)."""
    return np.random.default_rng(int.from_bytes(_digest(*parts), "little"))


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


class DemoWorld:
    """A deterministic simulated Instagram: users, posts, and the photos' JPEG bytes.

    Each user's attributes and posts depend only on ``(config.seed, username)`` and the
    config's fixed parts (start, rates, image size), never on the other users or on
    ``until``, which only decides which posts exist yet and what the counts read.
    """

    def __init__(self, usernames: list[str], config: WorldConfig) -> None:
        self.config = config
        self.clock = config.until_ts  # unix seconds
        self.start = config.start_ts
        self.usernames: list[str] = []
        for name in usernames:
            name = name.strip().lower()
            if not USERNAME_RE.match(name):
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
        return f"DemoWorld({len(self.usernames)} users, seed={self.config.seed}, until={self.config.until})"

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
        rng = _rng(self.config.seed, name, "user")
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
            interval_days=self.config.mean_interval_days * math.exp(rng.uniform(math.log(0.5), math.log(2.5))),
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
        rng = _rng(self.config.seed, user.username, "times")
        mean_gap = user.interval_days * DAY
        t = self.start + rng.uniform(0.0, mean_gap)
        times: list[int] = []
        while t <= self.clock:
            if not times or int(t) > times[-1]:
                times.append(int(t))
            t += max(rng.gamma(2.0, mean_gap / 2.0), 600.0)
        return times

    def _make_post(self, user: DemoUser, index: int, taken_at: int) -> _PostModel:
        cfg = self.config
        rng = _rng(cfg.seed, user.username, "post", index)
        u = rng.uniform()
        if u < cfg.video_rate:
            typename, n_images = "GraphVideo", 1
        elif u < cfg.video_rate + cfg.sidecar_rate:
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
        low_bits = int.from_bytes(_digest(cfg.seed, user.username, "id", index)[:3], "big") & 0x7FFFFF
        media_id = ((taken_at * 1000 + ms - IG_EPOCH_MS) << 23) | low_bits
        tags = rng.choice(_TAGS, size=int(rng.integers(1, 4)), replace=False)
        caption = "{} {} at {}\n{}".format(
            rng.choice(_ADJECTIVES).capitalize(), rng.choice(_SUBJECTS), rng.choice(_PLACES),
            " ".join(f"#{t}" for t in tags),
        )
        # drawn apart from the post's other draws, so hiding likes changes nothing else
        hidden = "hidden" in user.username or (
            int.from_bytes(_digest(cfg.seed, user.username, "hidden", index)[:4], "big") < HIDDEN_LIKES_RATE * 2**32)
        return _PostModel(
            index=index, id=media_id, shortcode=shortcode_of(media_id), taken_at=taken_at,
            typename=typename, n_images=n_images, width=width, height=height,
            final_likes=final_likes, final_comments=final_comments, appeal=float(appeal), caption=caption,
            likes_hidden=hidden,
        )

    # ---- images

    def _scene(self, user: DemoUser, index: int, image: int) -> _Scene:
        """Draw what image ``image`` of post ``index`` shows."""
        rng = _rng(self.config.seed, user.username, "scene", index, image)
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
            n = 2 * self.config.image_size
            self._noise_tile = _rng(self.config.seed, "noise").normal(0.0, 0.03, (n, n)).astype(np.float32)
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
            small = Image.fromarray(pixels).resize((max(2, w // 12), max(2, h // 12)), Image.BILINEAR)
            pixels = np.asarray(small.resize((w, h), Image.BILINEAR))
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
        return b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + _digest(shortcode) * 64


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


# ----------------------------------------------------------------------------------------
# Serving the world to Instaloader 4.16 (logged out) through requests-mock

CDN = "https://scontent.demo.invalid"
POST_DOC_ID = "27128499623469141"  # PolarisPostRootQuery: one post's metadata by shortcode
TIMELINE_DOC_ID = "28904005159232689"  # a profile's further timeline pages, by cursor
PAGE_SIZE = 12  # posts per timeline page, as the web app asks
LSD_TOKEN = "AVqDemoLsdTokenX1"
CSRF_TOKEN = "demoCsrfToken0123456789abcdef"

_START_RE = re.compile(r"^https://www\.instagram\.com/(\?.*)?$")
_PROFILE_RE = re.compile(r"^https://www\.instagram\.com/(?P<user>[A-Za-z0-9._]+)/(\?.*)?$")
_GRAPHQL_RE = re.compile(r"^https://www\.instagram\.com/api/graphql/?(\?.*)?$")
_CDN_RE = re.compile(r"^https://scontent\.demo\.invalid/(?P<kind>img|vid|pic)/(?P<user>[a-z0-9._]+)/"
                     r"(?P<file>[^/?]+)(\?.*)?$")
_IMAGE_FILE_RE = re.compile(r"^(?P<code>[A-Za-z0-9_-]+)_(?P<index>\d+)\.jpg$")
FAULT_KINDS = ("429", "401", "500", "503", "reset", "timeout", "truncated", "slow", "endpoint_changed")
_FAULT_KINDS = FAULT_KINDS
_CDN_KINDS = frozenset({"image", "profile_pic"})  # endpoints whose body can arrive truncated
_GRAPHQL_KINDS = frozenset({"post", "timeline"})  # endpoints that take a query id (doc_id)
# What Instagram answers a query whose id it revoked (Instaloader issues #2426, #2695, #2711)
QUERY_ID_400 = "invalid request"
PLEASE_WAIT = "Please wait a few minutes before you try again."
SLOW_SECONDS = 0.02  # real delay of a "slow" response: enough to show, too little to slow tests


@dataclass(frozen=True)
class FaultConfig:
    """Faults the server injects: ``rate`` is the chance per request (0 = none).

    Decisions are drawn from ``random.Random(seed)`` in request order, so a single-threaded
    crawl sees the same faults every run (change the seed between runs to see others). Kinds:

    - ``429``: Too Many Requests; ``401``: Unauthorized, "Please wait a few minutes before you
      try again." (Instagram's soft rate limit); ``500`` / ``503``: server errors;
    - ``reset``: the callback raises ``requests.exceptions.ConnectionError`` (connection reset);
      ``timeout``: it raises ``requests.exceptions.ReadTimeout``;
    - ``truncated``: an image served with valid headers and a cut JPEG body (image and
      profile-picture downloads only; other requests draw among the remaining kinds);
    - ``slow``: served correctly after a real :data:`SLOW_SECONDS` delay;
    - ``endpoint_changed``: a GraphQL query answered as after Instagram revoked the query ids
      Instaloader uses: 401 "Please wait a few minutes" or 400 "invalid request", in turn
      (GraphQL queries only; other requests draw among the remaining kinds). With ``rate: 1``
      and only this kind, every query fails and every page loads: a changed endpoint.

    Users whose name contains ``throttled`` are always refused (429 / 401 "Please wait"), whatever
    the rate: the test bed for a user that stays rate limited.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = ("500",)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ParamsError(f"fault rate must be in [0, 1], got {self.rate}")
        unknown = [k for k in self.kinds if k not in _FAULT_KINDS]
        if unknown or not self.kinds:
            raise ParamsError(f"unknown fault kinds {unknown or self.kinds}; known: {list(_FAULT_KINDS)}")


@dataclass(eq=False)
class DemoServer:
    """The endpoints of one world on one ``requests_mock.Mocker``, with request counters.

    ``requests``: all requests; ``requests_by_user``: those attributable to a username;
    ``requests_by_kind``: by endpoint (start, profile, timeline, post, image, video,
    profile_pic, bad_query); ``log``: (kind, username or None, method, url) in order.
    """

    world: DemoWorld
    faults: FaultConfig = field(default_factory=FaultConfig)
    requests: int = 0
    requests_by_user: Counter[str] = field(default_factory=Counter)
    requests_by_kind: Counter[str] = field(default_factory=Counter)
    faults_by_kind: Counter[str] = field(default_factory=Counter)
    log: list[tuple[str, str | None, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._fault_rng = random.Random(self.faults.seed)
        self._throttle_count = 0
        self._endpoint_count = 0
        self._page_ids = {self._page_id(name): name for name in self.world.usernames}

    def count(self, kind: str | None = None, username: str | None = None) -> int:
        """Number of requests of that kind (any if None) for that user (any if None)."""
        return sum(1 for k, u, _, _ in self.log
                   if (kind is None or k == kind) and (username is None or u == username))

    def reset_counts(self) -> None:
        """Forget all requests so far."""
        with self._lock:
            self.requests = 0
            self.requests_by_user.clear()
            self.requests_by_kind.clear()
            self.faults_by_kind.clear()
            self.log.clear()

    def register(self, mocker: requests_mock.Mocker) -> DemoServer:
        """Register one callback per URL prefix; anything else stays unmatched (NoMockAddress)."""
        mocker.register_uri("GET", _START_RE, content=self._start_page)
        mocker.register_uri("GET", _PROFILE_RE, content=self._profile_page)
        mocker.register_uri("POST", _GRAPHQL_RE, content=self._graphql)
        mocker.register_uri("GET", _CDN_RE, content=self._cdn)
        mocker.register_uri("HEAD", _CDN_RE, content=self._cdn)
        return self

    # ---- bookkeeping

    def _record(self, kind: str, username: str | None, request: Any) -> None:
        with self._lock:
            self.requests += 1
            self.requests_by_kind[kind] += 1
            if username is not None:
                self.requests_by_user[username] += 1
            self.log.append((kind, username, request.method, request.url))
        log.debug("demo %s %s (%s)", request.method, request.url, kind)

    def _draw_fault(self, endpoint: str, username: str | None) -> str | None:
        """The fault kind this request gets, or None to serve it normally."""
        if username is not None and "throttled" in username:
            with self._lock:
                self._throttle_count += 1
                kind = "429" if self._throttle_count % 2 else "401"
                self.faults_by_kind[kind] += 1
            return kind
        if self.faults.rate <= 0.0:
            return None
        with self._lock:
            if self._fault_rng.random() >= self.faults.rate:
                return None
            kinds = [k for k in self.faults.kinds if (k != "truncated" or endpoint in _CDN_KINDS)
                     and (k != "endpoint_changed" or endpoint in _GRAPHQL_KINDS)]
            if not kinds:
                return None
            kind = self._fault_rng.choice(kinds)
            self.faults_by_kind[kind] += 1
        return kind

    def _fault(self, context: Any, endpoint: str = "", username: str | None = None) -> bytes | None:
        """A fault response for this request, or None to serve it normally (maybe late).

        Raises requests' own exceptions for ``reset`` and ``timeout``. A ``truncated`` draw is
        answered here only for endpoints without an image body; :meth:`_cdn` cuts its images.
        """
        kind = self._draw_fault(endpoint, username)
        if kind is None or kind == "truncated":
            return None
        if kind == "slow":
            time.sleep(SLOW_SECONDS)
            return None
        if kind == "endpoint_changed":
            with self._lock:
                self._endpoint_count += 1
                kind = "401" if self._endpoint_count % 2 else "query_id_400"
        return _fault_response(kind, context)

    # ---- URLs

    def _page_id(self, username: str) -> str:
        """The profile page's own "id" of a user, which is not the user id (pk)."""
        return str(17_841_400_000_000_000 + self.world.user(username).id)

    @staticmethod
    def image_url(post: DemoPost, index: int) -> str:
        sig = _digest("url", post.shortcode, index).hex()[:16]
        return f"{CDN}/img/{post.username}/{post.shortcode}_{index}.jpg?stp=dst-jpg_e35&oh={sig}"

    @staticmethod
    def video_url(post: DemoPost) -> str:
        return f"{CDN}/vid/{post.username}/{post.shortcode}.mp4?efg=demo&_nc_ht=scontent.demo.invalid"

    def profile_pic_url(self, user: DemoUser) -> str:
        return f"{CDN}/pic/{user.username}/{user.id}_profile.jpg?stp=dst-jpg_s150x150"

    # ---- endpoints

    def _start_page(self, request: Any, context: Any) -> bytes:
        """www.instagram.com/: the tokens the web app sends with api/graphql, and a csrftoken cookie."""
        self._record("start", None, request)
        if (body := self._fault(context, "start")) is not None:
            return body
        context.headers["Content-Type"] = "text/html; charset=utf-8"
        context.headers["Set-Cookie"] = f"csrftoken={CSRF_TOKEN}; Path=/; Domain=.instagram.com; Secure"
        config = {"require": [["ScheduledServerJS", "handle", None, [{"define": [
            ["LSD", [], {"token": LSD_TOKEN}, 323],
            ["CurrentUserInitialData", [], {"IG_USER_EIMU": "0", "USER_ID": "0"}, 270],
        ]}]]]}
        html = ('<!DOCTYPE html><html lang="en"><head><title>Instagram</title></head><body>'
                f'<script type="application/json" data-sjs>{_script_json(config)}</script>'
                "</body></html>")
        return html.encode()

    def _profile_page(self, request: Any, context: Any) -> bytes:
        """www.instagram.com/<user>/: the profile and its first timeline page, embedded as JSON."""
        username = _PROFILE_RE.match(request.url)["user"].lower()
        self._record("profile", username, request)
        if (body := self._fault(context, "profile", username)) is not None:
            return body
        user = self.world.user(username)
        context.headers["Content-Type"] = "text/html; charset=utf-8"
        if not user.exists:
            context.status_code = 404
            context.reason = "Not Found"
            return b"<!DOCTYPE html><html><body>Sorry, this page isn't available.</body></html>"
        profile = {
            "pk": str(user.id), "id": self._page_id(username), "username": username,
            "full_name": user.full_name, "biography": "Fictional photographer (imgrate demo world).",
            "is_private": user.is_private, "is_verified": False, "is_business": False, "category": None,
            "media_count": self.world.post_count(username), "follower_count": user.followers, "following_count": user.followees,
            "profile_pic_url": self.profile_pic_url(user),
            "hd_profile_pic_url_info": {"url": self.profile_pic_url(user)},
            "external_url": None, "bio_links": [], "friendship_status": None, "total_clips_count": 0,
        }
        blocks = [_bbox_block("PolarisProfilePageContentQuery", {"xig_user_by_username": profile})]
        if not user.is_private:  # a private profile's page shows no posts
            timeline = {"id": self._page_id(username),
                        "polaris_ordered_timeline_connection": self._timeline(user, None, PAGE_SIZE)}
            blocks.append(_bbox_block("PolarisProfilePostsTabContentQuery", {"xig_user_by_username": timeline}))
        scripts = "".join(f'<script type="application/json" data-sjs>{_script_json(b)}</script>' for b in blocks)
        html = (f'<!DOCTYPE html><html lang="en"><head><title>{user.full_name} (@{username})</title></head>'
                f"<body>{scripts}</body></html>")
        return html.encode()

    def _timeline(self, user: DemoUser, after: str | None, first: int) -> dict[str, Any]:
        """One page of a timeline connection: posts older than the cursor (the last media id seen)."""
        older_than = int(after.split("_")[0]) if after is not None else None
        page, more = self.world.timeline_page(user.username, older_than, first)
        # each node carries the post's current counts, as the web app's timeline does
        edges = [{"node": {"code": p.shortcode, "pk": str(p.id), "id": f"{p.id}_{user.id}",
                           "media_type": _MEDIA_TYPES[p.typename], "taken_at": p.taken_at,
                           "like_count": p.served_likes, "comment_count": p.comments,
                           "like_and_view_counts_disabled": p.likes_hidden,
                           "__typename": "XDTMediaDict"},
                  "cursor": f"{p.id}_{user.id}"} for p in page]
        return {"edges": edges,
                "page_info": {"has_next_page": more,
                              "end_cursor": f"{page[-1].id}_{user.id}" if page else None,
                              "has_previous_page": after is not None, "start_cursor": None}}

    def _graphql(self, request: Any, context: Any) -> bytes:
        """POST api/graphql: post metadata by shortcode, or a further timeline page."""
        form = urllib.parse.parse_qs(request.text or "")
        doc_id = (form.get("doc_id") or [""])[0]
        try:
            variables = json.loads((form.get("variables") or ["{}"])[0])
        except json.JSONDecodeError:
            variables = {}
        context.headers["Content-Type"] = "application/json; charset=utf-8"
        lsd = (form.get("lsd") or [""])[0]
        if doc_id == POST_DOC_ID:
            return self._post_query(request, context, lsd, str(variables.get("shortcode", "")))
        if doc_id == TIMELINE_DOC_ID:
            return self._timeline_query(request, context, lsd, variables)
        self._record("bad_query", None, request)
        return _json_error(context, 400, f"demo server: unknown doc_id {doc_id!r} (serves {POST_DOC_ID} "
                                         f"post metadata and {TIMELINE_DOC_ID} timeline pages only)")

    @staticmethod
    def _check_lsd(context: Any, lsd: str) -> bytes | None:
        """The web app's queries carry the start page's LSD token; refuse them without it."""
        if lsd != LSD_TOKEN:
            return _json_error(context, 400, "demo server: missing or wrong lsd token (from the start page)")
        return None

    def _post_query(self, request: Any, context: Any, lsd: str, shortcode: str) -> bytes:
        try:
            post: DemoPost | None = self.world.post(shortcode)
        except DataError:
            post = None
        self._record("post", post.username if post else None, request)
        if ((body := self._fault(context, "post", post.username if post else None)) is not None
                or (body := self._check_lsd(context, lsd)) is not None):
            return body
        items = []
        if post is not None and post.taken_at <= self.world.clock and not self.world.user(post.username).is_private:
            items.append(self._media(post))
        data = {"xdt_api__v1__media__shortcode__web_info": {"items": items}}
        return json.dumps({"data": data, "extensions": {"is_final": True}}).encode()

    def _timeline_query(self, request: Any, context: Any, lsd: str, variables: dict[str, Any]) -> bytes:
        username = self._page_ids.get(str(variables.get("id", "")))
        self._record("timeline", username, request)
        if ((body := self._fault(context, "timeline", username)) is not None
                or (body := self._check_lsd(context, lsd)) is not None):
            return body
        if username is None or not self.world.user(username).exists or self.world.user(username).is_private:
            return _json_error(context, 400, f"demo server: no public profile has page id {variables.get('id')!r}")
        after = variables.get("after")
        try:
            first = min(max(int(variables.get("first") or PAGE_SIZE), 1), 50)
            if after:
                int(str(after).split("_")[0])
        except ValueError:
            return _json_error(context, 400, f"demo server: bad first/after in {variables!r}")
        user = self.world.user(username)
        connection = self._timeline(user, str(after) if after else None, first)
        return json.dumps({"data": {"node": {"polaris_ordered_timeline_connection": connection}},
                           "extensions": {"is_final": True}}).encode()

    def _media(self, post: DemoPost) -> dict[str, Any]:
        """A post as the web app's GraphQL gives it (the raw fields Instaloader normalises)."""
        user = self.world.user(post.username)
        owner = {"pk": str(user.id), "id": str(user.id), "username": user.username,
                 "full_name": user.full_name, "profile_pic_url": self.profile_pic_url(user),
                 "is_private": user.is_private, "is_verified": False}

        def versions(i: int) -> dict[str, Any]:
            return {"candidates": [{"url": self.image_url(post, i), "width": post.width, "height": post.height}]}

        media: dict[str, Any] = {
            "code": post.shortcode, "pk": str(post.id), "id": f"{post.id}_{user.id}",
            "media_type": _MEDIA_TYPES[post.typename], "product_type": _PRODUCT_TYPES[post.typename],
            "taken_at": post.taken_at, "like_count": post.served_likes, "comment_count": post.comments,
            "like_and_view_counts_disabled": post.likes_hidden, "has_liked": None,
            "caption": {"pk": str(post.id + 1), "text": post.caption, "created_at": post.taken_at},
            "user": owner, "owner": owner, "image_versions2": versions(0),
            "original_width": post.width, "original_height": post.height,
            "accessibility_caption": None, "usertags": None, "location": None,
            "carousel_media_count": None, "carousel_media": None, "video_versions": None,
        }
        if post.typename == "GraphSidecar":
            media["carousel_media_count"] = post.n_images
            media["carousel_media"] = [
                {"pk": str(post.id + i + 1), "id": f"{post.id + i + 1}_{user.id}", "media_type": 1,
                 "image_versions2": versions(i), "original_width": post.width, "original_height": post.height,
                 "accessibility_caption": None, "video_versions": None}
                for i in range(post.n_images)
            ]
        if post.typename == "GraphVideo":
            media["video_versions"] = [{"url": self.video_url(post), "width": post.width, "height": post.height,
                                        "type": 101}]
            media["video_duration"] = round(5.0 + (post.id % 5500) / 100.0, 2)
            media["view_count"] = None  # logged out, Instagram shows no view counts
            media["play_count"] = None
        return media

    def _cdn(self, request: Any, context: Any) -> bytes:
        """The fake CDN: post images, video stand-ins, profile pictures."""
        m = _CDN_RE.match(request.url)
        kind, username, filename = m["kind"], m["user"], m["file"]
        endpoint = {"img": "image", "vid": "video", "pic": "profile_pic"}[kind]
        self._record(endpoint, username, request)
        fault = self._draw_fault(endpoint, username)
        if fault == "slow":
            time.sleep(SLOW_SECONDS)
        elif fault is not None and fault != "truncated":
            return _fault_response(fault, context)
        try:
            if kind == "pic":
                user = self.world.user(username)
                if not user.exists or filename != f"{user.id}_profile.jpg":
                    raise DataError(filename)
                content, content_type, mtime = self.world.profile_picture(username), "image/jpeg", self.world.start
            elif kind == "vid":
                post = self._visible_post(filename.removesuffix(".mp4"), username)
                content, content_type, mtime = self.world.video(post.shortcode), "video/mp4", post.taken_at
            else:
                match = _IMAGE_FILE_RE.match(filename)
                if match is None:
                    raise DataError(filename)
                post = self._visible_post(match["code"], username)
                content = self.world.image(post.shortcode, int(match["index"]))
                content_type, mtime = "image/jpeg", post.taken_at
        except DataError:
            context.status_code = 404
            context.reason = "Not Found"
            context.headers["Content-Type"] = "text/plain"
            return b"URL signature mismatch or object not found (demo CDN)"
        if fault == "truncated":  # valid headers, a JPEG cut short: only decoding it shows
            content = content[: max(len(content) * 3 // 4, 64)]
        context.headers["Content-Type"] = content_type
        context.headers["Last-Modified"] = formatdate(mtime, usegmt=True)
        context.headers["Content-Length"] = str(len(content))
        return content

    def _visible_post(self, shortcode: str, username: str) -> DemoPost:
        """The post, if its URL could have been handed out (public, published, right owner)."""
        post = self.world.post(shortcode)
        if post.username != username or post.taken_at > self.world.clock or self.world.user(username).is_private:
            raise DataError(shortcode)
        return post


_MEDIA_TYPES = {"GraphImage": 1, "GraphVideo": 2, "GraphSidecar": 8}
_PRODUCT_TYPES = {"GraphImage": "feed", "GraphVideo": "clips", "GraphSidecar": "carousel_container"}


def _script_json(obj: Any) -> str:
    """JSON safe to put inside a <script> element."""
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")


def _bbox_block(query: str, data: dict[str, Any]) -> dict[str, Any]:
    """A query result as the web app embeds it: RelayPrefetchedStreamCache inside ScheduledServerJS."""
    result = {"__bbox": {"complete": True, "result": {"data": data, "extensions": {"is_final": True}}}}
    cache = ["RelayPrefetchedStreamCache", "next", [], [f"adp_{query}RelayPreloader_demo", result]]
    return {"require": [["ScheduledServerJS", "handle", None, [{"__bbox": {"require": [cache]}}]]]}


def _fault_response(kind: str, context: Any) -> bytes:
    """The response of an injected fault (or the exception requests would raise)."""
    import requests

    if kind == "reset":
        raise requests.exceptions.ConnectionError(
            "('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer')) (demo fault)")
    if kind == "timeout":
        raise requests.exceptions.ReadTimeout("Read timed out. (demo fault)")
    if kind in ("429", "401"):
        # What Instagram answers when it wants a client to slow down.
        context.status_code = int(kind)
        context.reason = "Too Many Requests" if kind == "429" else "Unauthorized"
        context.headers["Content-Type"] = "application/json; charset=utf-8"
        message = PLEASE_WAIT if kind == "401" else "rate limited (demo fault)"
        return json.dumps({"message": message, "require_login": kind == "401", "status": "fail"}).encode()
    if kind == "query_id_400":
        return _json_error(context, 400, QUERY_ID_400)
    if kind in ("500", "503"):
        context.status_code = int(kind)
        context.reason = "Internal Server Error" if kind == "500" else "Service Unavailable"
        context.headers["Content-Type"] = "text/html; charset=utf-8"
        return f"<html><body>{kind} {context.reason} (demo fault)</body></html>".encode()
    raise AssertionError(kind)


def _json_error(context: Any, status: int, message: str) -> bytes:
    context.status_code = status
    context.reason = "Bad Request" if status == 400 else "Error"
    context.headers["Content-Type"] = "application/json; charset=utf-8"
    return json.dumps({"message": message, "status": "fail"}).encode()


def serve(world: DemoWorld, mocker: requests_mock.Mocker, faults: FaultConfig | None = None) -> DemoServer:
    """Register every endpoint Instaloader 4.16 calls (logged out) on ``mocker``.

    Returns the :class:`DemoServer`, which counts requests (``server.requests``,
    ``server.requests_by_user``, ``server.requests_by_kind``). URLs it does not serve raise
    ``requests_mock.exceptions.NoMockAddress`` (unless the mocker was made with real_http).
    Two things to do on the Instaloader side:

    - Instaloader keeps no csrftoken cookie from a mocked response, so set one yourself
      (``L.context._session.cookies.set("csrftoken", "x")``), or it fetches the start page
      again before every GraphQL request.
    - Its default RateController allows 200 post queries per 11 minutes and then really
      sleeps (~11 min per request); pass ``rate_controller=`` a subclass whose ``sleep`` does
      nothing, or crawling a whole demo world takes hours.
    """
    return DemoServer(world, faults or FaultConfig()).register(mocker)
