"""Crawling with Instaloader's real code: one staging folder per run, one result per user.

The same code crawls the real Instagram and the simulated one (imgrate.crawl.demo serves
Instaloader's endpoints through requests-mock); only the transport differs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import instaloader
from instaloader.exceptions import (
    ConnectionException,
    InstaloaderException,
    LoginRequiredException,
    PrivateProfileNotFollowedException,
    ProfileNotExistsException,
    QueryReturnedNotFoundException,
    TooManyRequestsException,
)

log = logging.getLogger(__name__)

Status = Literal["ok", "not_found", "private", "login_required", "rate_limited", "failed"]


@dataclass
class UserResult:
    """What crawling one user gave."""

    username: str
    status: Status = "ok"
    reason: str | None = None
    new_posts: int = 0
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    files: list[Path] = field(default_factory=list)


class CountingRateController(instaloader.RateController):
    """Instaloader's own rate control, counting the queries it lets through.

    With ``simulated=True`` (the demo world) waits are added up instead of slept: the
    simulated Instagram does not rate-limit, so real sleeping would only waste time.
    """

    def __init__(self, context: instaloader.InstaloaderContext, simulated: bool = False) -> None:
        super().__init__(context)
        self.simulated = simulated
        self.queries = 0
        self.waited = 0.0

    def sleep(self, secs: float) -> None:
        self.waited += secs
        if not self.simulated:
            super().sleep(secs)

    def wait_before_query(self, query_type: str) -> None:
        self.queries += 1
        super().wait_before_query(query_type)


def make_loader(
    staging: Path, *, sleep: bool, video_thumbnails: bool, simulated: bool = False
) -> tuple[instaloader.Instaloader, CountingRateController]:
    """An Instaloader that writes Instaloader's usual layout under ``staging/<user>/``.

    Only what the paper used is downloaded: the first image of a sidecar (``slide="1"``,
    saved as ``_1.jpg``), no videos (their thumbnails only when asked), no comments, no
    caption text files; metadata as ``.json.xz``. Returns the loader and its rate controller.
    """
    controllers: list[CountingRateController] = []

    def rate_controller(ctx: instaloader.InstaloaderContext) -> CountingRateController:
        controllers.append(CountingRateController(ctx, simulated))
        return controllers[-1]

    loader = instaloader.Instaloader(
        sleep=sleep,
        quiet=True,
        dirname_pattern=str(staging / "{target}"),
        filename_pattern="{date_utc}_UTC",
        download_pictures=True,
        download_videos=False,
        download_video_thumbnails=video_thumbnails,
        download_geotags=False,
        download_comments=False,
        save_metadata=True,
        compress_json=True,
        post_metadata_txt_pattern="",
        max_connection_attempts=3,
        request_timeout=60.0,
        slide="1",
        resume_prefix=None,
        rate_controller=rate_controller,
    )
    return loader, controllers[0]


def crawl_user(
    loader: instaloader.Instaloader,
    username: str,
    stamps: instaloader.LatestStamps,
    staging: Path,
    max_posts: int | None,
) -> UserResult:
    """Download the posts of ``username`` newer than its stamp into ``staging/<username>``.

    Never raises for a per-user problem: the result's status and reason say what happened.
    A user whose crawl did not finish keeps no files, so a later run fetches them again.
    """
    result = UserResult(username)
    start = time.monotonic()
    user_dir = staging / username
    try:
        profile = instaloader.Profile.from_username(loader.context, username)
        loader.download_profiles(
            {profile},
            profile_pic=False,
            posts=True,
            latest_stamps=stamps,
            raise_errors=True,
            max_count=max_posts,
        )
    except ProfileNotExistsException:
        result.status, result.reason = "not_found", "profile does not exist"
    except (LoginRequiredException, PrivateProfileNotFollowedException) as err:
        private = isinstance(err, PrivateProfileNotFollowedException) or "Login required" in str(err)
        result.status = "private" if private else "login_required"
        result.reason = "private profile: log in as a follower to crawl it" if private else str(err)
    except TooManyRequestsException as err:
        result.status, result.reason = "rate_limited", _short(err)
    except QueryReturnedNotFoundException as err:
        result.status, result.reason = "not_found", _short(err)
    except (ConnectionException, InstaloaderException, OSError) as err:
        result.status, result.reason = "failed", f"{type(err).__name__}: {_short(err)}"
    result.seconds = time.monotonic() - start
    if result.status == "ok":
        result.files = sorted(p for p in user_dir.rglob("*") if p.is_file()) if user_dir.is_dir() else []
    return result


def _short(err: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
