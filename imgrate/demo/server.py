"""The simulated Instagram's server: the endpoints Instaloader 4.16 calls, for one world.

:func:`serve` registers, on a ``requests_mock.Mocker``, every endpoint that Instaloader 4.16
calls when logged out: the start page, the profile pages with their embedded JSON,
``api/graphql`` (post metadata and further timeline pages) and a fake CDN, all answered from
a :class:`imgrate.demo.world.DemoWorld`. Any other URL is left unregistered, so requests-mock
raises ``NoMockAddress`` and a missing endpoint shows up at once. With fault injection
(``crawl.demo.faults``, :class:`imgrate.params.FaultParams`) it misbehaves as Instagram does
(429, 401 "Please wait", 5xx, resets, timeouts, truncated images, slow answers, a changed
endpoint), and it always refuses users named ``*throttled*``: the crawler's test bed.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

from imgrate.demo.world import DemoPost, DemoUser, DemoWorld, digest
from imgrate.errors import DataError
from imgrate.params import FaultParams

if TYPE_CHECKING:
    import requests_mock

log = logging.getLogger(__name__)

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
_CDN_KINDS = frozenset({"image", "profile_pic"})  # endpoints whose body can arrive truncated
_GRAPHQL_KINDS = frozenset({"post", "timeline"})  # endpoints that take a query id (doc_id)
# What Instagram answers a query whose id it revoked (Instaloader issues #2426, #2695, #2711)
QUERY_ID_400 = "invalid request"
PLEASE_WAIT = "Please wait a few minutes before you try again."
SLOW_SECONDS = 0.02  # real delay of a "slow" response: enough to show, too little to slow tests


@dataclass(eq=False)
class DemoServer:
    """The endpoints of one world on one ``requests_mock.Mocker``, with request counters.

    ``requests``: all requests; ``requests_by_user``: those attributable to a username;
    ``requests_by_kind``: by endpoint (start, profile, timeline, post, image, video,
    profile_pic, bad_query); ``log``: (kind, username or None, method, url) in order.
    """

    world: DemoWorld
    faults: FaultParams = field(default_factory=FaultParams)
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
        sig = digest("url", post.shortcode, index).hex()[:16]
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
        username = _match(_PROFILE_RE, request.url)["user"].lower()
        self._record("profile", username, request)
        if (body := self._fault(context, "profile", username)) is not None:
            return body
        user = self.world.user(username)
        context.headers["Content-Type"] = "text/html; charset=utf-8"
        if not user.exists:
            context.status_code = 404
            context.reason = "Not Found"
            return b"<!DOCTYPE html><html><body>Sorry, this page isn't available.</body></html>"
        profile: dict[str, Any] = {
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
        m = _match(_CDN_RE, request.url)
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


def _match(pattern: re.Pattern[str], url: str) -> re.Match[str]:
    """``pattern`` on a URL that requests-mock routed here because it matched."""
    m = pattern.match(url)
    assert m is not None, url
    return m


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


def serve(world: DemoWorld, mocker: requests_mock.Mocker, faults: FaultParams | None = None) -> DemoServer:
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
    return DemoServer(world, faults or FaultParams()).register(mocker)
