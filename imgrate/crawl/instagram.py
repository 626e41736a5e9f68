"""Crawling with Instaloader's real code: one work folder per user, one result per user.

The same code crawls the real Instagram and the simulated one (imgrate.demo.server serves
Instaloader's endpoints through requests-mock); only the transport differs.

What imgrate adds to Instaloader 4.16 (pinned: the hooks below are its internals, and
tests/test_crawl_faults.py checks that they still exist):

- :class:`BudgetRateController` (Instaloader's ``rate_controller=`` seam): Instaloader's own
  sliding-window throttle, plus a request budget per run, exponential backoff with jitter
  when Instagram refuses (429, and 401 "Please wait a few minutes"), and a cap on the backoff
  per user, after which the user is reported ``rate_limited`` and the crawl moves on.
- :class:`CrawlContext` (replaces the loader's ``InstaloaderContext``): turns 401 "Please
  wait" into a 429 so that ``get_json``'s retry loop backs off through ``handle_429``;
  retries page loads, which Instaloader tries once; loads a user's profile page once per crawl
  (``Profile.from_username`` and ``get_posts`` both load it); counts CDN downloads against the
  budget; gives a downloaded image its final name only once it decodes fully, so a truncated
  body is fetched again by ``download_pic``'s retry loop; counts retries; logs through
  :mod:`logging` instead of printing.
- a changed endpoint and no network (:class:`RunHealth`): a user's first GraphQL query that
  Instagram rejects as it does revoked query ids is retried without a backoff, and several
  such users in a row stop the run (``endpoint_changed``); a request that never reached
  Instagram (``_watch`` on every session) leaves Instaloader's throttle windows, and before
  any answer it fails its user at once (``unreachable``); so do :data:`SILENT_AFTER` read
  timeouts in a row before any answer (a host or proxy that accepts and never answers).
- ``raise_all_errors``: a post that fails aborts its user's crawl instead of being skipped
  (Instaloader would log it and move on, and the stamp would then pass over it for good).
  Instaloader saves its resume file; the next run continues where this one stopped.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import instaloader
import requests
from instaloader.exceptions import (
    AbortDownloadException,
    ConnectionException,
    InstaloaderException,
    LoginRequiredException,
    PrivateProfileNotFollowedException,
    ProfileNotExistsException,
    QueryReturnedNotFoundException,
    TooManyRequestsException,
)
from instaloader.nodeiterator import NodeIterator

from imgrate.crawl.observations import Counts, counts_of_node
from imgrate.crawl.verify import file_problem
from imgrate.errors import one_line
from imgrate.params import BudgetParams, CrawlParams

log = logging.getLogger(__name__)

Status = Literal["ok", "not_found", "private", "login_required", "rate_limited", "failed", "skipped"]
STATUSES: tuple[Status, ...] = ("ok", "not_found", "private", "login_required", "rate_limited", "failed", "skipped")
RESUME_PREFIX = "iterator"  # Instaloader's resume files: <user>/iterator_<magic>.json.xz
_RETRY_NOTICE = "[retrying; skip with ^C]"  # how Instaloader's retry loops announce a retry
_PLEASE_WAIT = re.compile(r"wait a few minutes", re.IGNORECASE)
_REFUSAL_TEXT = re.compile(r"\b429\b|wait a few minutes", re.IGNORECASE)
# What Instagram answers every query with once it revoked the query ids (doc_id) an Instaloader
# release uses (Instaloader issues #2425, #2426, #2663, #2695, #2706): 401 "Please wait a few
# minutes" or 400 "invalid request" / "execution error" -- not a soft ban or a checkpoint.
_QUERY_ID_400 = re.compile(r"invalid request|execution error|invalid doc_id|persisted query", re.IGNORECASE)
_NOT_QUERY_ID = re.compile(r"feedback_required|checkpoint_required|challenge_required|login_required", re.IGNORECASE)
INSTALOADER_PIN = f"the pin is instaloader=={instaloader.__version__} in pyproject.toml"
# A host that accepts connections and never answers (a stuck proxy) costs each request its
# whole timeout, retried: ~5 minutes per user, hours per crawl. Until something of the run has
# answered, a request waits at most FIRST_ANSWER_TIMEOUT_S, and SILENT_AFTER of them timing
# out in a row make the run's requests "unreachable" (two users: the run stops): about 60 s.
FIRST_ANSWER_TIMEOUT_S = 15.0
SILENT_AFTER = 3
# Instaloader's rate-control buckets, named for messages (doc_ids of Instaloader 4.16)
QUERY_KINDS = {
    "27128499623469141": "post metadata",
    "28904005159232689": "timeline",
    "27937681195819736": "profile",
    "27234427476213202": "clip play count",
    "29104886249145907": "reels",
    "7845543455542541": "reels",
    "other": "page",
    "iphone": "iPhone API",
}


def query_kind(query_type: str) -> str:
    """A rate-control bucket as a person reads it: ``timeline``, not ``28904005159232689``."""
    return QUERY_KINDS.get(query_type, f"GraphQL {query_type}")


class PleaseWaitException(TooManyRequestsException):
    """Instagram's 401 "Please wait a few minutes before you try again": a rate limit."""


class BudgetExhausted(AbortDownloadException):
    """The run's request budget is used up. Escapes Instaloader's handlers (a resume file is saved)."""


class UserRateLimited(AbortDownloadException):
    """Instagram keeps refusing one user's requests and the per-user backoff cap is reached."""


class Unreachable(AbortDownloadException):
    """No request of this run has reached Instagram (DNS, refused, unreachable): no retry, no wait."""


class FirstQueryRejected(ConnectionException):
    """Instagram rejected a user's first GraphQL query in the shape of revoked query ids
    (401 "Please wait" / 400 "invalid request"): retried without a backoff."""


def connect_failure(err: BaseException) -> str | None:
    """Why a request never reached the server (name resolution, refused, unreachable, proxy,
    connect timeout), or None when it did reach it (a reset or read timeout came after)."""
    seen: set[int] = set()
    stack: list[BaseException] = [err]
    found: str | None = None
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        name = type(e).__name__
        if isinstance(e, socket.gaierror) or name == "NameResolutionError":
            return "the name does not resolve (no DNS: is this machine offline?)"
        if isinstance(e, requests.exceptions.ProxyError):
            found = found or "the proxy (HTTPS_PROXY) refused or is down"
        elif isinstance(e, requests.exceptions.ConnectTimeout) or name == "ConnectTimeoutError":
            found = found or "the connection timed out"
        elif isinstance(e, ConnectionRefusedError):
            found = found or "connection refused"
        elif isinstance(e, OSError) and e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN):
            found = found or "the network is unreachable"
        elif name == "NewConnectionError":
            found = found or "no connection could be made"
        for nxt in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    return found


@dataclass
class UserStats:
    """What crawling the current user has cost so far."""

    requests: int = 0
    retries: int = 0
    refusals: int = 0  # 429 and 401 "Please wait" answers
    wait_s: float = 0.0  # rate-control waits: throttle and backoff (simulated in the demo world)
    backoff_s: float = 0.0  # the part of wait_s spent backing off after refusals
    streak: int = 0  # refusals since the last success: drives the backoff
    responses: int = 0  # answers from Instagram (any status)
    graphql_ok: int = 0  # GraphQL queries answered with success
    first_query_rejected: str | None = None  # how Instagram rejected the first GraphQL query, if it did
    unreachable: str | None = None  # the last request that never reached Instagram, and why


@dataclass
class UserResult:
    """What crawling one user gave."""

    username: str
    status: Status = "ok"
    reason: str | None = None
    new_posts: int = 0
    requests: int = 0
    retries: int = 0
    refusals: int = 0
    wait_s: float = 0.0
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)
    stops_run: bool = False  # the budget is used up, or Instagram wants no more requests
    recounted: int = 0  # stored posts whose counts this crawl re-read
    observations: int = 0  # of those, the counts stored as new observations
    recount_requests: int = 0  # requests the re-reading cost beyond the crawl itself
    reached: bool = False  # Instagram answered at least one request for this user
    graphql_ok: int = 0  # GraphQL queries answered with success
    first_query_rejected: str | None = None  # failed with Instagram rejecting its very first query
    unreachable: str | None = None  # failed because its requests never reached Instagram: why


class ClockedRateController(instaloader.RateController):
    """Instaloader's own rate control (its sliding-window throttle) on a clock that can be simulated.

    With ``simulated=True`` (the demo world) waits are added up instead of slept, on a
    virtual clock that the sliding windows read, so a simulated run reports the time the
    real one would wait without spending it.
    """

    def __init__(self, context: instaloader.InstaloaderContext, simulated: bool = False) -> None:
        super().__init__(context)
        self.simulated = simulated
        self._clock_offset = 0.0

    def now(self) -> float:
        """Monotonic seconds, plus every simulated wait so far."""
        return time.monotonic() + self._clock_offset

    def sleep(self, secs: float) -> None:
        if self.simulated:
            self._clock_offset += secs
        else:
            super().sleep(secs)

    def wait_before_query(self, query_type: str) -> None:
        """Instaloader's ``RateController.wait_before_query``, on this controller's clock."""
        waittime = self.query_waittime(query_type, self.now(), False)
        if waittime > 15:
            if self.simulated:
                log.info("simulated throttle: %.0f s before the next %s query (Instaloader's limits; "
                         "added up, not slept)", waittime, query_kind(query_type))
            else:
                log.info("Instaloader's throttle: waiting %.0f s before the next %s query",
                         waittime, query_kind(query_type))
        if waittime > 0:
            self.sleep(waittime)
        self._query_timestamps.setdefault(query_type, []).append(self.now())
        self._last_query: str | None = query_type

    def forget_last_query(self) -> None:
        """The last query never reached Instagram (no connection): it does not count against
        Instaloader's sliding windows, so no throttle wait follows it."""
        query_type = getattr(self, "_last_query", None)
        if query_type is not None and self._query_timestamps.get(query_type):
            self._query_timestamps[query_type].pop()
        self._last_query = None


class BudgetRateController(ClockedRateController):
    """A request budget per run, and exponential backoff with jitter when Instagram refuses.

    Every HTTP request (pages, GraphQL queries, CDN downloads) counts against
    ``max_requests``; the request that would exceed it raises :class:`BudgetExhausted`
    instead. After a refusal (429, 401 "Please wait") the next try waits
    ``min(backoff_max_s, backoff_base_s * 2 ** (n - 1))`` times a random factor in [0.5, 1]
    (n = refusals since the last success). When a user's backoff would pass
    ``max_wait_per_user_s``, :class:`UserRateLimited` ends that user's crawl.
    """

    def __init__(
        self,
        context: instaloader.InstaloaderContext,
        budget: BudgetParams,
        *,
        simulated: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(context, simulated)
        self.max_requests = budget.max_requests
        self.max_wait_per_user_s = budget.max_wait_per_user_s
        self.backoff_base_s = budget.backoff_base_s
        self.backoff_max_s = budget.backoff_max_s
        self.rng = rng or random.Random()
        self.requests = 0  # every request of the run
        self.retries = 0
        self.responses = 0  # answers from Instagram in the run (any status)
        self.silent_timeouts = 0  # requests in a row that timed out before anything answered
        self.user = UserStats()

    def start_user(self) -> None:
        """Start counting for the next user."""
        self.user = UserStats()

    def count_request(self, per_user: bool = True) -> None:
        """Called before every request; raises :class:`BudgetExhausted` instead of passing the budget."""
        if self.max_requests is not None and self.requests >= self.max_requests:
            raise BudgetExhausted(f"request budget used up ({self.requests} requests, "
                                  f"crawl.budget.max_requests = {self.max_requests})")
        self.requests += 1
        if per_user:
            self.user.requests += 1

    def wait_before_query(self, query_type: str, per_user: bool = True) -> None:
        self.count_request(per_user)
        super().wait_before_query(query_type)

    def sleep(self, secs: float) -> None:
        self.user.wait_s += secs
        super().sleep(secs)

    def note_retry(self) -> None:
        self.retries += 1
        self.user.retries += 1

    def note_refusal(self) -> None:
        self.user.refusals += 1

    def note_success(self) -> None:
        self.user.streak = 0

    def note_response(self) -> None:
        """Instagram answered (any status): the network works."""
        self.responses += 1
        self.user.responses += 1
        self.user.unreachable = None
        self.silent_timeouts = 0

    def note_timeout(self, what: str) -> None:
        """A request timed out waiting for an answer. Before anything of this run was answered,
        :data:`SILENT_AFTER` of them in a row mean a host (or proxy) that accepts connections and
        never answers: no network, as far as the crawl goes (each would otherwise be retried,
        minutes per user)."""
        if self.responses:
            return
        self.silent_timeouts += 1
        if self.silent_timeouts >= SILENT_AFTER:
            self.note_unreachable(f"{what} ({self.silent_timeouts} requests in a row timed out after "
                                  f"{FIRST_ANSWER_TIMEOUT_S:g} s, none answered)")

    def note_unreachable(self, what: str) -> None:
        """A request never reached Instagram: forget its throttle slot, and remember why."""
        self.forget_last_query()
        self.user.unreachable = what
        if self.responses == 0:  # nothing ever got through: this is no network, not a bad moment
            raise Unreachable(what)

    def handle_429(self, query_type: str) -> None:
        """Back off before retrying a refused request (Instaloader would wait out its window)."""
        self.user.streak += 1
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** (self.user.streak - 1))
        delay *= self.rng.uniform(0.5, 1.0)
        if self.user.backoff_s + delay > self.max_wait_per_user_s:
            raise UserRateLimited(
                f"Instagram refused {self.user.refusals} requests (429 / 401 'Please wait'); backed off "
                f"{self.user.backoff_s:.0f} s, and the next wait ({delay:.0f} s) would pass "
                f"crawl.budget.max_wait_per_user_s = {self.max_wait_per_user_s:g} s"
            )
        log.info("Instagram refused a %s request (%d in a row): backing off %.0f s%s",
                 query_type, self.user.streak, delay, " (simulated)" if self.simulated else "")
        self.user.backoff_s += delay
        self.sleep(delay)


class CrawlContext(instaloader.InstaloaderContext):
    """Instaloader's context with imgrate's hooks (see the module docstring)."""

    _rate_controller: BudgetRateController

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: dict[str, str] = {}

    def _watch(self, session: requests.Session) -> requests.Session:
        """Count Instagram's answers, and tell a request that never reached it (no network) from
        one that did: the first forgets its throttle slot and, before any answer, fails at once."""
        if getattr(session, "_imgrate_watched", False):
            return session
        send = session.send

        def watched(request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
            controller = self._rate_controller
            if not controller.responses:  # nothing has answered yet: do not wait a full timeout to learn why
                timeout = kwargs.get("timeout")
                kwargs["timeout"] = FIRST_ANSWER_TIMEOUT_S if not isinstance(timeout, (int, float)) \
                    else min(float(timeout), FIRST_ANSWER_TIMEOUT_S)
            try:
                resp = send(request, **kwargs)
            except requests.exceptions.ReadTimeout:
                host = urllib.parse.urlsplit(request.url or "").hostname or "Instagram"
                controller.note_timeout(f"cannot reach {host}: it (or the proxy) accepts connections but never "
                                        f"answers")
                raise
            except requests.exceptions.ConnectionError as err:
                if (why := connect_failure(err)) is not None:
                    url = urllib.parse.urlsplit(request.url or "")
                    if isinstance(err, requests.exceptions.ProxyError):  # name it, never its credentials
                        proxy = urllib.parse.urlsplit((kwargs.get("proxies") or {}).get(url.scheme) or "")
                        if proxy.hostname:
                            why = why.replace("the proxy (HTTPS_PROXY)",
                                              f"the proxy {proxy.hostname}:{proxy.port or 'default port'}")
                    self._rate_controller.note_unreachable(f"cannot reach {url.hostname or 'Instagram'}: {why}")
                raise
            self._rate_controller.note_response()
            return resp

        session.send = watched  # type: ignore[method-assign]
        session._imgrate_watched = True  # type: ignore[attr-defined]
        return session

    def do_sleep(self) -> None:
        """Instaloader's pause between requests, skipped until Instagram has answered once."""
        if self._rate_controller.responses:
            super().do_sleep()

    def get_json(self, path: str, params: dict[str, Any], host: str = "www.instagram.com",
                 session: requests.Session | None = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._watch(session or self._session)
        return super().get_json(path, params, host, session, *args, **kwargs)

    @contextmanager
    def _graphql_session(self, *args: Any, **kwargs: Any) -> Iterator[requests.Session]:
        with super()._graphql_session(*args, **kwargs) as session:
            yield self._watch(session)

    @property
    def controller(self) -> BudgetRateController:
        return self._rate_controller

    def start_user(self) -> None:
        """Forget the previous user's pages and start counting for the next one."""
        self._pages.clear()
        self._rate_controller.start_user()

    def error(self, msg: str, repeat_at_end: bool = True) -> None:
        if msg.endswith(_RETRY_NOTICE):
            self._rate_controller.note_retry()
            log.debug("%s", msg)
        else:
            log.info("%s", msg)
        if repeat_at_end:
            self.error_log.append(msg)

    def _refusal(self, resp: requests.Response) -> TooManyRequestsException | None:
        """A 429, or a 401 "Please wait a few minutes", as the exception to retry after a backoff."""
        if resp.status_code == 429:
            error: TooManyRequestsException = TooManyRequestsException(self._response_error(resp))
        elif resp.status_code == 401 and _PLEASE_WAIT.search(resp.text[:2000]):
            error = PleaseWaitException(self._response_error(resp))
        else:
            return None
        self._rate_controller.note_refusal()
        return error

    def _first_query_rejection(self, resp: requests.Response) -> str | None:
        """How Instagram rejected this user's first GraphQL query, when it has the shape of
        revoked query ids (None otherwise, and once a query of the user succeeded)."""
        path = urllib.parse.urlsplit(resp.url or "").path
        if "graphql" not in path or self._rate_controller.user.graphql_ok:
            return None
        text = resp.text[:2000]
        if _NOT_QUERY_ID.search(text):
            return None
        if resp.status_code == 401 and _PLEASE_WAIT.search(text):
            return "401 'Please wait a few minutes'"
        if resp.status_code == 400 and (found := _QUERY_ID_400.search(text)):
            return f"400 '{found[0]}'"
        return None

    def _raise_for_status(self, resp: requests.Response) -> None:
        graphql = "graphql" in urllib.parse.urlsplit(resp.url or "").path
        if (rejection := self._first_query_rejection(resp)) is not None:
            # revoked query ids, or a refusal: tried again without a backoff; several users in a
            # row tell which (imgrate.crawl.stage stops with endpoint_changed)
            self._rate_controller.user.first_query_rejected = rejection
            raise FirstQueryRejected(f"{self._response_error(resp)} (first query of this user)")
        if (refusal := self._refusal(resp)) is not None:
            raise refusal
        super()._raise_for_status(resp)
        self._rate_controller.note_success()
        if graphql:
            self._rate_controller.user.graphql_ok += 1

    def _get_page(self, session: requests.Session, path: str) -> str:
        """Instaloader 4.16's ``_get_page``, retried like ``get_json`` and cached per user."""
        if path and path in self._pages:
            return self._pages[path]
        self._watch(session)
        url = f"https://www.instagram.com/{path}"
        # Instagram only embeds the data when the request looks like a browser's page navigation.
        headers = {"Accept": "text/html", "Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate",
                   "Sec-Fetch-Site": "none"}
        pending: ConnectionException | None = None
        for attempt in range(1, self.max_connection_attempts + 1):
            if isinstance(pending, TooManyRequestsException):
                self._rate_controller.handle_429("other")
            self.do_sleep()
            # the start page serves the whole run, not the user being crawled
            self._rate_controller.wait_before_query("other", per_user=bool(path))
            try:
                resp = session.get(url, headers=headers, allow_redirects=False)
            except requests.exceptions.RequestException as err:
                pending = ConnectionException(f"Page request to {url}: {err}")
            else:
                self._raise_if_login_redirect(resp)
                if resp.status_code == 404:
                    raise QueryReturnedNotFoundException(self._response_error(resp))
                if (refusal := self._refusal(resp)) is not None:
                    pending = refusal
                elif resp.status_code != 200:
                    pending = ConnectionException(self._response_error(resp))
                else:
                    self._rate_controller.note_success()
                    if path:
                        self._pages[path] = resp.text
                    return resp.text
            if attempt == self.max_connection_attempts:
                raise pending
            self.error(f"Page request to {url}: {pending} {_RETRY_NOTICE}", repeat_at_end=False)
        raise AssertionError("unreachable")  # pragma: no cover

    def get_raw(self, url: str) -> requests.Response:
        self._rate_controller.count_request()
        return super().get_raw(url)

    def head(self, url: str, allow_redirects: bool = False) -> requests.Response:
        self._rate_controller.count_request()
        return super().head(url, allow_redirects=allow_redirects)

    def _raise_for_download_status(self, resp: requests.Response) -> None:
        if (refusal := self._refusal(resp)) is not None:
            # download_pic's retry loop does not back off by itself: do it before it tries again
            self._rate_controller.handle_429("download")
            raise refusal
        super()._raise_for_download_status(resp)
        self._rate_controller.note_success()

    def write_raw(self, resp: bytes | requests.Response, filename: str) -> None:
        """Instaloader's ``write_raw``, renaming the file into place only once it decodes fully."""
        temp = filename + ".temp"
        with open(temp, "wb") as fh:
            if isinstance(resp, requests.Response):
                shutil.copyfileobj(resp.raw, fh)
            else:
                fh.write(resp)
        problem = file_problem(filename, Path(temp).read_bytes())
        if problem is not None:
            os.unlink(temp)
            # a ConnectionException: download_pic's retry loop fetches it again
            raise ConnectionException(f"{os.path.basename(filename)}: {problem}")
        os.replace(temp, filename)


def make_loader(
    work: Path,
    params: CrawlParams,
    *,
    sleep: bool,
    simulated: bool = False,
    rng: random.Random | None = None,
) -> tuple[instaloader.Instaloader, BudgetRateController]:
    """An Instaloader that writes Instaloader's usual layout under ``work/<user>/``, with
    ``params.max_attempts`` tries per request and ``params.budget``'s rate controller.

    Only what the paper used is downloaded: the first image of a sidecar (``slide="1"``,
    saved as ``_1.jpg``), no videos (their thumbnails only when asked), no comments, no
    caption text files; metadata as ``.json.xz``. Resume files are on. Returns the loader
    and its rate controller.
    """
    loader = instaloader.Instaloader(
        sleep=sleep,
        quiet=True,
        dirname_pattern=str(work / "{target}"),
        filename_pattern="{date_utc}_UTC",
        download_pictures=True,
        download_videos=False,
        download_video_thumbnails=params.video_thumbnails,
        download_geotags=False,
        download_comments=False,
        save_metadata=True,
        compress_json=True,
        post_metadata_txt_pattern="",
        max_connection_attempts=params.max_attempts,
        request_timeout=60.0,
        slide="1",
        resume_prefix=RESUME_PREFIX,
    )

    def rate_controller(ctx: instaloader.InstaloaderContext) -> BudgetRateController:
        return BudgetRateController(ctx, params.budget, simulated=simulated, rng=rng)

    # Instaloader takes no context class: replace the context it made, before any request.
    plain = loader.context
    loader.context = CrawlContext(
        sleep=plain.sleep, quiet=plain.quiet, user_agent=plain.user_agent,
        max_connection_attempts=plain.max_connection_attempts, request_timeout=plain.request_timeout,
        rate_controller=rate_controller, fatal_status_codes=plain.fatal_status_codes,
        iphone_support=plain.iphone_support,
    )
    plain.close()
    # A post that fails must abort its user's crawl (with a resume file), not be skipped.
    loader.context.raise_all_errors = True
    return loader, loader.context.controller


class ProgressCommitFailed(AbortDownloadException):
    """The ``on_post`` hook failed; :func:`crawl_user` raises the original error after
    Instaloader has saved its resume file."""


def crawl_user(
    loader: instaloader.Instaloader,
    username: str,
    stamps: instaloader.LatestStamps,
    work: Path,
    max_posts: int | None,
    on_post: Callable[[], None] | None = None,
) -> UserResult:
    """Download the posts of ``username`` newer than its stamp into ``work/<username>``.

    Never raises for a per-user problem: the result's status and reason say what happened.
    Only a crawl with status ``ok`` finished; an unfinished one leaves its files and
    Instaloader's resume file in the work folder, and the stamp where it was, so the next run
    continues (or, without a resume file, walks the same posts again, skipping the images
    already there).

    ``on_post`` is called before each post's download, when every post before it is
    complete on disk (Instaloader's ``post_filter`` seam); the crawl stage commits durable
    progress there. An error it raises ends the crawl and is raised again here.
    """
    context = loader.context
    hook_error: list[BaseException] = []

    def post_filter(_post: instaloader.Post) -> bool:
        if on_post is not None:
            try:
                on_post()
            except Exception as err:
                hook_error.append(err)
                raise ProgressCommitFailed(f"committing progress failed: {type(err).__name__}") from err
        return True

    assert isinstance(context, CrawlContext), "make the loader with make_loader()"
    context.start_user()
    result = UserResult(username)
    start = time.monotonic()
    profile: instaloader.Profile | None = None
    try:
        profile = instaloader.Profile.from_username(context, username)
        loader.download_profiles(
            {profile},
            profile_pic=False,
            posts=True,
            latest_stamps=stamps,
            raise_errors=True,
            max_count=max_posts,
            post_filter=post_filter,
        )
    except ProgressCommitFailed:
        raise hook_error[0] from None
    except BudgetExhausted as err:
        result.status, result.stops_run = "skipped", True
        result.reason = f"{err}; this user's crawl continues in the next run"
    except Unreachable as err:
        result.status, result.reason = "failed", str(err)
    except UserRateLimited as err:
        result.status, result.reason = "rate_limited", str(err)
    except AbortDownloadException as err:  # checkpoint / challenge / feedback_required, or logged out
        result.status, result.reason = _abort_reason(err)
        result.stops_run = True
    except ProfileNotExistsException:
        result.status, result.reason = "not_found", "profile does not exist"
    except (LoginRequiredException, PrivateProfileNotFollowedException) as err:
        private = isinstance(err, PrivateProfileNotFollowedException) or (profile is not None and profile.is_private)
        result.status = "private" if private else "login_required"
        result.reason = ("private profile: log in as a follower to crawl it" if private
                         else f"{one_line(err)} (log in: imgrate login <account>)")
    except (ConnectionException, InstaloaderException, OSError) as err:
        if _refused(err):
            result.status = "rate_limited"
            result.reason = (f"Instagram kept refusing (429 / 401 'Please wait'), {context.controller.user.refusals} "
                             f"times: {one_line(err)}")
        else:
            result.status, result.reason = "failed", f"{type(err).__name__}: {one_line(err)}"
    stats = context.controller.user
    result.requests, result.retries, result.refusals, result.wait_s = (
        stats.requests, stats.retries, stats.refusals, stats.wait_s)
    result.reached, result.graphql_ok = stats.responses > 0, stats.graphql_ok
    if result.status == "failed" and stats.unreachable is not None:
        result.unreachable = result.reason = stats.unreachable
    elif result.status in ("failed", "rate_limited") and stats.first_query_rejected and not stats.graphql_ok:
        # not counted as a rate limit: several users in a row like this mean revoked query ids
        result.status, result.first_query_rejected = "failed", stats.first_query_rejected
        result.reason = (f"Instagram rejected this user's first query on every try ({stats.first_query_rejected}); "
                         "tried again without a backoff")
    result.seconds = time.monotonic() - start
    user_dir = work / username
    if result.status == "ok" and user_dir.is_dir():
        result.files = sorted(p for p in user_dir.rglob("*") if p.is_file())
    return result


RunStatus = Literal["complete", "stopped", "endpoint_changed", "unreachable"]
ENDPOINT_CHANGED_AFTER = 3  # users in a row whose first query was rejected, no success in between
UNREACHABLE_AFTER = 2  # users in a row whose requests never reached Instagram


@dataclass
class RunHealth:
    """Tells a changed Instagram or no network from trouble with single users, over one run.

    - ``endpoint_changed``: :data:`ENDPOINT_CHANGED_AFTER` users in a row fail on their very
      first GraphQL query (401 "Please wait" / 400 "invalid request") with no successful query
      in between: Instagram has revoked the query ids of this Instaloader release, which no
      waiting fixes (a rate limit lets some queries through first).
    - ``unreachable``: :data:`UNREACHABLE_AFTER` users in a row whose requests never reached
      Instagram (name resolution, refused, unreachable).
    """

    rejected_in_a_row: int = 0
    unreachable_in_a_row: int = 0
    queries_ok: int = 0  # successful GraphQL queries earlier in the run

    def observe(self, result: UserResult) -> tuple[RunStatus, str] | None:
        """Count one user's result; ``(status, message)`` when the run must stop."""
        if result.graphql_ok or result.status == "ok":
            self.rejected_in_a_row = 0
        if result.first_query_rejected:
            self.rejected_in_a_row += 1
        if result.reached:
            self.unreachable_in_a_row = 0
        if result.unreachable:
            self.unreachable_in_a_row += 1
        if self.unreachable_in_a_row >= UNREACHABLE_AFTER and result.unreachable:
            return "unreachable", (f"{result.unreachable}; stopped after {self.unreachable_in_a_row} users in a "
                                   "row (no request reached Instagram): check the network, then crawl again")
        if self.rejected_in_a_row >= ENDPOINT_CHANGED_AFTER:
            hedge = (" (queries worked earlier in this run: if upgrading does not help, it is a rate limit: "
                     "pause for some hours)" if self.queries_ok else "")
            return "endpoint_changed", (
                f"Instagram rejected the first query of {self.rejected_in_a_row} users in a row with no success "
                f"in between ({result.first_query_rejected}): it has most likely changed the query ids that "
                f"Instaloader {instaloader.__version__} uses, and waiting will not help. Upgrade Instaloader "
                f"({INSTALOADER_PIN}: raise it to the newest release, make setup, make test) and crawl "
                f"again{hedge}")
        self.queries_ok += result.graphql_ok
        return None
TIMELINE_DOC_ID = "28904005159232689"  # the logged-out web app's further timeline pages (Profile.get_posts)


def _timeline_nodes(context: CrawlContext, username: str) -> Iterator[dict[str, Any]]:
    """The raw nodes of a profile's timeline, newest first, as Instaloader's own
    ``Profile.get_posts`` walks it: logged out, the first page is the profile page (already
    loaded and cached for this user) and further pages are GraphQL queries; logged in, the
    nodes are the iPhone structs of Instaloader's timeline query."""
    if context.is_logged_in:
        profile = instaloader.Profile.from_username(context, username)
        for post in profile.get_posts():
            yield post._node  # from_iphone_struct: the counts are in the node, no request per post
        return
    page = context.get_page_data(f"{username}/")
    user = next((d["xig_user_by_username"] for d in page
                 if "polaris_ordered_timeline_connection" in (d.get("xig_user_by_username") or {})), None)
    if user is None:
        raise instaloader.exceptions.BadResponseException(f"the page of {username} did not contain its posts")
    yield from NodeIterator(
        context=context, query_hash=None,
        edge_extractor=lambda d: d["data"]["node"]["polaris_ordered_timeline_connection"],
        node_wrapper=lambda n: n,
        query_variables={"id": user["id"], "__relay_internal__pv__PolarisSEOIsCrawlerrelayprovider": False},
        query_referer=f"https://www.instagram.com/{username}/",
        first_data=user["polaris_ordered_timeline_connection"], doc_id=TIMELINE_DOC_ID, web_api=True,
    )


def read_counts(loader: instaloader.Instaloader, username: str, wanted: dict[str, int]) -> dict[str, Counts]:
    """The current counts of the posts ``wanted`` (shortcode -> posting time) of ``username``.

    Read from the timeline pages, newest first, until every wanted post was seen or the walk
    passes the oldest one (the first 3 nodes may be pinned): the first page costs nothing
    (the crawl loaded it), each further page of 12 one request. A node without counts costs
    one post query. Posts not found (deleted, or archived) are left out.
    """
    context = loader.context
    assert isinstance(context, CrawlContext), "make the loader with make_loader()"
    if not wanted:
        return {}
    oldest = min(wanted.values())
    found: dict[str, Counts] = {}
    for i, node in enumerate(_timeline_nodes(context, username)):
        code = node.get("code") or node.get("shortcode")
        if code in wanted and code not in found:
            counts = counts_of_node(node)
            if counts is None:  # this timeline does not carry counts: ask for the post
                counts = counts_of_node(instaloader.Post.from_shortcode(context, code)._node)
            if counts is not None:
                found[code] = counts
        if len(found) == len(wanted):
            break
        taken = node.get("taken_at") or node.get("date") or node.get("taken_at_timestamp")
        if i >= 3 and isinstance(taken, int) and taken < oldest:
            break
    return found


def _refused(err: BaseException) -> bool:
    """Whether a failure came from Instagram refusing (429 / 401 "Please wait"), through any wrapping."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, TooManyRequestsException) or _REFUSAL_TEXT.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _abort_reason(err: AbortDownloadException) -> tuple[Status, str]:
    text = one_line(err)
    if "checkpoint_required" in text or "challenge_required" in text:
        return "login_required", (f"Instagram wants the account confirmed ({text}): confirm it in a browser, "
                                  "then log in again (imgrate login); the crawl stopped")
    if "feedback_required" in text:
        return "rate_limited", f"soft ban, feedback_required ({text}): pause the crawl for a day; it stopped"
    if "logged out" in text.lower() or "login" in text.lower():
        return "login_required", f"{text}; the crawl stopped"
    return "failed", f"{type(err).__name__}: {text}; the crawl stopped"
