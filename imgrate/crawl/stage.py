"""The crawl stage: users.txt -> new tar shards in data/raw + metrics/crawl.json.

Incremental through Instaloader's own ``latest-stamps.ini``: only posts newer than a
user's stamp are fetched. Files are staged in a scratch folder, packed into new shards
(temporary name, then rename), and only then is the stamps file replaced, so a killed
crawl loses at most the work since its last shard and never leaves a partial shard. A
post already in a shard (a crawl killed between the shard and the stamps) is not stored
twice. A crawl that finds nothing new writes nothing: ``data/raw`` stays byte-identical.
"""

from __future__ import annotations

import configparser
import datetime as dt
import io
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import instaloader

from imgrate.crawl.instagram import UserResult, crawl_user, make_loader
from imgrate.crawl.shards import StagedFile, list_shards, member_names, next_shard_path, post_key, write_shard
from imgrate.crawl.users import read_users
from imgrate.errors import CrawlError
from imgrate.io import atomic_open, write_json
from imgrate.params import CrawlParams
from imgrate.paths import Paths
from imgrate.progress import track

log = logging.getLogger(__name__)

SESSION_ENV = "IMGRATE_INSTAGRAM_SESSION"  # path of an Instaloader session file
SESSION_USER_ENV = "IMGRATE_INSTAGRAM_USER"  # the account the session belongs to


@dataclass
class CrawlReport:
    """Per-user results of one crawl and the shards it wrote."""

    source: str
    crawled_at: dt.datetime
    users: list[UserResult] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def new_posts(self) -> int:
        return sum(u.new_posts for u in self.users)

    def to_metrics(self) -> dict[str, Any]:
        statuses = ("ok", "not_found", "private", "login_required", "rate_limited", "failed")
        totals: dict[str, Any] = {s: sum(u.status == s for u in self.users) for s in statuses}
        totals.update(
            users=len(self.users),
            new_posts=self.new_posts,
            requests=sum(u.requests for u in self.users),
            retries=sum(u.retries for u in self.users),
            shards_written=len(self.shards),
            seconds=round(self.seconds, 3),
        )
        users = {
            u.username: {
                "status": u.status,
                "reason": u.reason,
                "new_posts": u.new_posts,
                "requests": u.requests,
                "retries": u.retries,
                "seconds": round(u.seconds, 3),
            }
            for u in self.users
        }
        return {
            "source": self.source,
            "crawled_at": self.crawled_at.isoformat(),
            "shards_written": self.shards,
            "totals": totals,
            "users": users,
        }


@dataclass
class _Source:
    loader: instaloader.Instaloader
    crawled_at: dt.datetime
    requests_of: Any  # Callable[[str], int]: requests made so far for a user


@contextmanager
def open_source(params: CrawlParams, users: list[str], staging: Path) -> Iterator[_Source]:
    """An Instaloader wired to the configured source."""
    if params.source == "demo":
        import requests_mock

        from imgrate.crawl.demo import DemoWorld, WorldConfig, serve

        d = params.demo
        world = DemoWorld(
            users,
            WorldConfig(
                seed=d.seed,
                start=d.start,
                until=d.until,
                image_size=d.image_size,
                mean_interval_days=d.mean_interval_days,
            ),
        )
        loader, _ = make_loader(staging, sleep=False, video_thumbnails=params.video_thumbnails, simulated=True)
        with requests_mock.Mocker() as mocker:
            server = serve(world, mocker)
            # requests-mock does not store Set-Cookie; without it Instaloader re-fetches the
            # start page before every GraphQL call.
            loader.context._session.cookies.set("csrftoken", "demo-csrf")
            clock = dt.datetime.fromtimestamp(world.config.until_ts, dt.timezone.utc)
            yield _Source(loader, clock, lambda u: server.requests_by_user.get(u, 0))
        return

    loader, rate = make_loader(staging, sleep=True, video_thumbnails=params.video_thumbnails)
    session_file = os.environ.get(SESSION_ENV)
    if session_file:
        session_user = os.environ.get(SESSION_USER_ENV)
        if not session_user:
            raise CrawlError(f"{SESSION_ENV} is set but {SESSION_USER_ENV} (the account it belongs to) is not")
        try:
            loader.load_session_from_file(session_user, session_file)
        except (OSError, instaloader.InstaloaderException) as err:
            # The message names the variable, never the file's content.
            raise CrawlError(f"cannot load the Instagram session named by {SESSION_ENV}: {type(err).__name__}") from None
    yield _Source(loader, dt.datetime.now(dt.timezone.utc), lambda _user: rate.queries)


def _read_stamps(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(interpolation=None)
    if path.exists():
        cp.read(path, encoding="utf-8")
    return cp


def _render(cp: configparser.ConfigParser) -> str:
    buf = io.StringIO()
    cp.write(buf)
    return buf.getvalue()


class _ShardWriter:
    """Collects finished users' files and writes them as shards of ``shard_size`` posts."""

    def __init__(self, paths: Paths, shard_size: int, crawled_at: dt.datetime, source: str) -> None:
        self.paths = paths
        self.shard_size = shard_size
        self.crawled_at = crawled_at
        self.source = source
        self.pending: list[tuple[str, list[StagedFile]]] = []  # (user, files of one post or profile)
        self.written: list[str] = []

    @property
    def pending_posts(self) -> int:
        return sum(1 for _, group in self.pending if post_key(group[0].arcname))

    def add(self, user: str, groups: list[list[StagedFile]]) -> None:
        self.pending.extend((user, g) for g in groups)

    @property
    def pending_users(self) -> set[str]:
        return {user for user, _ in self.pending}

    def flush(self, final: bool) -> None:
        """Write every full shard, and the rest too when ``final``."""
        while self.pending and (final or self.pending_posts >= self.shard_size):
            take, posts = 0, 0
            while take < len(self.pending) and posts < self.shard_size:
                if post_key(self.pending[take][1][0].arcname):
                    posts += 1
                take += 1
            # keep a user's trailing profile file with its posts
            while take < len(self.pending) and not post_key(self.pending[take][1][0].arcname):
                take += 1
            batch, self.pending = self.pending[:take], self.pending[take:]
            files = [f for _, group in batch for f in group]
            dest = next_shard_path(self.paths.shards)
            meta = {"crawled_at": self.crawled_at.isoformat(), "source": self.source,
                    "instaloader": instaloader.__version__, "posts": str(posts)}
            write_shard(dest, files, meta, self.paths.tmp, int(self.crawled_at.timestamp()))
            log.info("wrote shard %s (%d posts)", dest.name, posts)
            self.written.append(dest.name)


def _group_files(user: str, files: list[Path], user_dir: Path, known: set[str]) -> list[list[StagedFile]]:
    """Files of one user grouped per post (profile file last), minus posts already stored."""
    groups: dict[str, list[StagedFile]] = {}
    profile: list[StagedFile] = []
    for path in files:
        arcname = f"{user}/{path.relative_to(user_dir).as_posix()}"
        key = post_key(arcname)
        if key is None:
            profile.append(StagedFile(arcname, path))
        elif arcname not in known:
            groups.setdefault(key, []).append(StagedFile(arcname, path))
    # a post counts only with its metadata; a stray image without it is dropped
    posts = [sorted(g, key=lambda f: f.arcname) for k, g in sorted(groups.items())
             if any(f.arcname.endswith(".json.xz") for f in g)]
    if posts and profile:
        posts.append(profile)
    return posts


def run(params: CrawlParams, paths: Paths, users: list[str] | None = None) -> CrawlReport:
    """Crawl every user (``users``, else the users file) for posts newer than its stamp."""
    os.environ["TZ"] = "UTC"  # Instaloader's stamps use local time; keep them machine-independent
    time.tzset()
    if users is None:
        users = read_users(paths.root / params.users_file)
    paths.shards.mkdir(parents=True, exist_ok=True)
    paths.tmp.mkdir(parents=True, exist_ok=True)
    known = {name for shard in list_shards(paths.shards) for name in member_names(shard)}
    old_stamps_text = paths.stamps.read_text(encoding="utf-8") if paths.stamps.exists() else None
    committed = _read_stamps(paths.stamps)
    start = time.monotonic()
    run_dir = Path(tempfile.mkdtemp(prefix="crawl-", dir=paths.tmp))
    try:
        staging = run_dir / "staging"
        staged_stamps = run_dir / "latest-stamps.ini"
        if paths.stamps.exists():
            shutil.copyfile(paths.stamps, staged_stamps)
        stamps = instaloader.LatestStamps(str(staged_stamps))
        with open_source(params, users, staging) as source:
            report = CrawlReport(params.source, source.crawled_at)
            writer = _ShardWriter(paths, params.shard_size, source.crawled_at, params.source)
            finished: list[str] = []

            def commit(done: set[str]) -> None:
                staged = _read_stamps(staged_stamps)
                for user in done:
                    if staged.has_section(user):
                        if not committed.has_section(user):
                            committed.add_section(user)
                        for key, value in staged.items(user):
                            committed.set(user, key, value)
                _write_stamps(paths, committed, old_stamps_text)

            for user in track(users, "crawl"):
                before = source.requests_of(user)
                result = crawl_user(source.loader, user, stamps, staging, params.max_posts)
                result.requests = source.requests_of(user) - before
                report.users.append(result)
                if result.status != "ok":
                    log.warning("%s: %s (%s)", user, result.status, result.reason)
                    if params.strict:
                        raise CrawlError(f"user {user}: {result.status}: {result.reason}")
                    continue
                groups = _group_files(user, result.files, staging / user, known)
                result.new_posts = sum(1 for g in groups if post_key(g[0].arcname))
                if result.new_posts:
                    writer.add(user, groups)
                finished.append(user)
                writer.flush(final=False)
                commit(set(finished) - writer.pending_users)
            writer.flush(final=True)
            commit(set(finished))
            report.shards = writer.written
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    report.seconds = time.monotonic() - start
    return report


def _write_stamps(paths: Paths, stamps: configparser.ConfigParser, old_text: str | None) -> None:
    """Replace the stamps file atomically, only when its content changes."""
    text = _render(stamps)
    current = paths.stamps.read_text(encoding="utf-8") if paths.stamps.exists() else old_text
    if text == current or (current is None and not stamps.sections()):
        return
    with atomic_open(paths.stamps, tmp_dir=paths.tmp) as fh:
        fh.write(text)


def run_stage(params: CrawlParams, paths: Paths) -> CrawlReport:
    """The DVC stage: crawl, then write metrics/crawl.json."""
    report = run(params, paths)
    write_json(paths.stage_metrics("crawl"), report.to_metrics())
    return report
