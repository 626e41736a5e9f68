"""The crawl stage: users.txt -> new tar shards in data/raw + metrics/crawl.json.

Incremental through Instaloader's own latest-stamps: only posts newer than a user's stamp
are fetched. Each user is crawled into its own work folder (``.imgrate-cache/crawl/<user>``,
outside data/raw). Only when a user's crawl finishes are its files checked (every image and
metadata file must decode), packed into new shards (temporary name, then rename), and then
its stamp committed and its work folder removed. So:

- a user whose crawl stops (faults, rate limits, the request budget, kill -9) keeps its
  files and Instaloader's resume file in its work folder, and its stamp does not move: the
  next run continues where it stopped (resume file) or walks the same posts again and finds
  the images already there (after a kill);
- during a user's crawl, its verified posts are committed to a shard every
  ``crawl.commit_every_posts`` posts, or after ``crawl.commit_every_s`` seconds with at least a
  fifth of that many (:class:`_ProgressCommits`), so a crawl killed before its first full shard
  keeps what it verified. The stamp still moves only when the user is done (posts come
  newest first: the stamp may only pass the posts once none older is missing); the files
  stay in the work folder, so a crawl after a kill finds them and does not download them
  again, and the shards are "already stored" for it;
- a post already in a shard (a run killed between a shard and the stamps) is not stored
  twice; no partial shard is ever visible;
- a crawl that finds nothing new writes nothing: data/raw stays byte-identical;
- a damaged shard (cut, a zeroed header, altered; see imgrate.shards) counts as not
  stored: its members are not "already stored", and a user's stamp is taken back to just
  before the oldest of its posts that no intact shard holds, so this crawl fetches them
  again (metrics: ``shards_damaged``).

``--part I/N`` crawls a deterministic 1/N of the users, writes shards named
``partIofN-NNNNNN.tar`` and its own ``latest-stamps.partIofN.ini``: the data/raw folders of N
crawlers merge by union, and readers take each user's newest stamp over all stamps files.
"""

from __future__ import annotations

import configparser
import dataclasses
import datetime as dt
import fcntl
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import instaloader

from imgrate.crawl.instagram import (
    RESUME_PREFIX,
    STATUSES,
    BudgetExhausted,
    BudgetRateController,
    RunHealth,
    RunStatus,
    UserResult,
    crawl_user,
    make_loader,
    read_counts,
)
from imgrate.crawl.observations import (
    COUNTS_NAME_RE,
    Observation,
    Stored,
    changed,
    counts_member_name,
    needs_recount,
    profile_counts,
    render_counts,
    stored_facts,
)
from imgrate.crawl.session import SESSION_ENV, SESSION_USER_ENV, load_session, session_from_env
from imgrate.crawl.stamps import (
    ISO_FORMAT,
    POST_TIMESTAMP,
    merged_stamps,
    part_tag,
    post_timestamp,
    read_stamps,
    render,
)
from imgrate.crawl.users import read_users, select_part
from imgrate.crawl.verify import file_problem
from imgrate.errors import CrawlError, safe_text
from imgrate.io import atomic_open, remove_stale_tmp, write_json
from imgrate.metadata import BadMetadata, is_username, load_document, parse_member
from imgrate.params import CrawlParams
from imgrate.paths import Paths
from imgrate.progress import track
from imgrate.shards import (
    ShardCheck,
    StagedFile,
    check_shard_cached,
    clock_limit,
    crawl_time,
    crawl_time_problem,
    list_shards,
    next_shard_path,
    post_key,
    read_ledger,
    record_shards,
    write_shard,
)

log = logging.getLogger(__name__)

__all__ = ["SESSION_ENV", "SESSION_USER_ENV", "CrawlReport", "run", "run_stage"]

# Files of Instaloader's layout that go into shards; anything else in a work folder (resume
# files, .temp downloads) stays out.
_POST_FILE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_UTC(?:_\d+)?\.(?:jpg|jpeg|png|webp|json\.xz)$")
# Names in the work root that no username can take ("-" is not allowed in usernames).
_LOCK_NAME = "run-lock"


@dataclass
class CrawlReport:
    """Per-user results of one crawl and the shards it wrote."""

    source: str
    crawled_at: dt.datetime
    users: list[UserResult] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0
    part: str | None = None
    max_requests: int | None = None
    requests: int = 0  # every request of the run, the start page included
    simulated: bool = False  # waits were added up, not slept (the demo world)
    status: RunStatus = "complete"  # endpoint_changed / unreachable: the run stopped for that
    stop_reason: str | None = None
    damaged: list[str] = field(default_factory=list)  # shards found damaged: their posts are fetched again
    stamps_lowered: list[str] = field(default_factory=list)  # users whose stamp claimed a lost post

    @property
    def new_posts(self) -> int:
        return sum(u.new_posts for u in self.users)

    def to_metrics(self, *, timings: bool = False) -> dict[str, Any]:
        """The report as reports/crawl.json holds it; ``timings`` adds the wall-clock seconds and
        the waits (kept out of the tracked report: they differ from run to run, even simulated
        ones, since Instaloader's throttle windows follow the real time between requests, so
        two clones would commit different bytes)."""
        totals: dict[str, Any] = {s: sum(u.status == s for u in self.users) for s in STATUSES}
        totals.update(
            users=len(self.users),
            new_posts=self.new_posts,
            requests=self.requests,
            retries=sum(u.retries for u in self.users),
            refusals=sum(u.refusals for u in self.users),
            shards_written=len(self.shards),
            shards_damaged=len(self.damaged),
            recounted=sum(u.recounted for u in self.users),  # stored posts whose counts were re-read
            observations=sum(u.observations for u in self.users),  # changed counts stored
            recount_requests=sum(u.recount_requests for u in self.users),  # requests the re-reading cost
        )
        if timings:  # Instaloader's throttle waits follow the real time between requests, too
            totals.update(seconds=round(self.seconds, 3), wait_s=round(sum(u.wait_s for u in self.users), 3))
        users = {
            u.username: {
                "status": u.status,
                "reason": u.reason,
                "new_posts": u.new_posts,
                "requests": u.requests,
                "retries": u.retries,
                "refusals": u.refusals,
                "recounted": u.recounted,
                "observations": u.observations,
                "recount_requests": u.recount_requests,
                **({"seconds": round(u.seconds, 3), "wait_s": round(u.wait_s, 3)} if timings else {}),
            }
            for u in self.users
        }
        return {
            "source": self.source,
            "part": self.part,
            "crawled_at": self.crawled_at.isoformat(),
            "waits_simulated": self.simulated,
            "status": self.status,
            "stop_reason": self.stop_reason,
            "budget": {"max_requests": self.max_requests, "requests": self.requests},
            "shards_written": self.shards,
            "shards_damaged": self.damaged,
            "stamps_lowered": self.stamps_lowered,
            "totals": totals,
            "users": users,
        }


@dataclass
class _Source:
    loader: instaloader.Instaloader
    controller: BudgetRateController
    crawled_at: dt.datetime
    simulated: bool


@contextmanager
def open_source(params: CrawlParams, users: list[str], paths: Paths) -> Iterator[_Source]:
    """An Instaloader wired to the configured source, writing into ``paths.crawl_work``."""
    if params.source == "demo":
        import requests_mock

        from imgrate.demo.server import serve
        from imgrate.demo.world import DemoWorld

        world = DemoWorld(users, params.demo)
        loader, controller = make_loader(paths.crawl_work, params, sleep=False, simulated=True,
                                         rng=random.Random(params.demo.faults.seed))
        with requests_mock.Mocker() as mocker:
            serve(world, mocker, params.demo.faults)
            # requests-mock does not store Set-Cookie; without it Instaloader re-fetches the
            # start page before every GraphQL call.
            loader.context._session.cookies.set("csrftoken", "demo-csrf")
            clock = dt.datetime.fromtimestamp(world.clock, dt.UTC)
            yield _Source(loader, controller, clock, simulated=True)
        return

    loader, controller = make_loader(paths.crawl_work, params, sleep=True)
    session = session_from_env(paths.root)
    if session is not None:
        load_session(loader, *session)
        log.info("crawling logged in as %s", session[0])
    else:
        log.info("crawling anonymously (set %s to log in)", SESSION_USER_ENV)
    yield _Source(loader, controller, dt.datetime.now(dt.UTC), simulated=False)


class _ShardWriter:
    """Collects finished users' files and writes them as shards of ``shard_size`` posts."""

    def __init__(self, paths: Paths, shard_size: int, meta: dict[str, str], mtime: int, prefix: str | None) -> None:
        self.paths = paths
        self.ledger = paths.part_ledger(prefix) if prefix else paths.ledger
        self.shard_size = shard_size
        self.meta = meta
        self.mtime = mtime
        self.prefix = prefix
        self.pending: list[tuple[str, list[StagedFile]]] = []  # (user, files of one post or profile)
        self.written: list[str] = []

    @property
    def pending_posts(self) -> int:
        return sum(1 for _, group in self.pending if post_key(group[0].arcname))

    @property
    def pending_users(self) -> set[str]:
        return {user for user, _ in self.pending}

    def add(self, user: str, groups: list[list[StagedFile]]) -> None:
        self.pending.extend((user, g) for g in groups)

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
            dest = next_shard_path(self.paths.shards, self.prefix)
            # into the ledger first: a shard is never seen unlisted (a kill in between lists a name
            # that the next shard written takes)
            record_shards(self.ledger, [dest.name], "written", self.paths.tmp)
            write_shard(dest, files, {**self.meta, "posts": str(posts)}, self.paths.tmp, self.mtime)
            log.info("wrote shard %s (%d posts)", dest.name, posts)
            self.written.append(dest.name)


def _group_files(
    user: str, files: list[Path], user_dir: Path, known: set[str], stored_profile: dict[str, int] | None = None,
) -> tuple[list[list[StagedFile]], list[tuple[Path, str]], list[str]]:
    """A user's new files grouped per post (then the profile file, then the counts the crawl
    re-read), the files that do not decode, and the posts left out because their metadata,
    though complete, is not valid.

    Posts already stored in a shard are left out; a post counts only with its metadata (a
    stray image without it is dropped); resume files and ``.temp`` downloads are ignored.
    A file that does not decode may be a cut download (fetched again); metadata that decodes
    but fails :mod:`imgrate.metadata`'s checks would fail every time, so its post is
    left out (and named) rather than stored for export to skip. The profile snapshot goes
    with new posts or counts, or alone when its counts (followers, followees, posts) differ
    from ``stored_profile``, the latest one in the shards.
    """
    groups: dict[str, list[StagedFile]] = {}
    profile: list[StagedFile] = []
    counts: list[StagedFile] = []
    bad: list[tuple[Path, str]] = []
    rejected: dict[str, str] = {}  # post key (or profile file) -> why
    profile_re = re.compile(rf"^{re.escape(user)}_\d+\.json\.xz$")
    for path in files:
        rel = path.relative_to(user_dir).as_posix()
        arcname = f"{user}/{rel}"
        key = post_key(arcname)
        if key is None and profile_re.match(rel):
            target = profile
        elif key is None and COUNTS_NAME_RE.match(arcname) and arcname not in known:
            target = counts
        elif key is not None and _POST_FILE_RE.match(rel) and arcname not in known:
            target = groups.setdefault(key, [])
        else:
            continue
        data = path.read_bytes()
        if (problem := file_problem(arcname, data)) is not None:
            bad.append((path, problem))
            continue
        if rel.endswith(".json.xz"):
            try:
                parse_member(arcname, data)
            except BadMetadata as err:
                rejected[key or arcname] = f"{arcname}: {err}"
                continue
        target.append(StagedFile(arcname, path))
    posts = [sorted(g, key=lambda f: f.arcname) for k, g in sorted(groups.items())
             if k not in rejected and any(f.arcname.endswith(".json.xz") for f in g)]
    # the profile also goes in when no intact shard holds one (stored_profile None): e.g. all
    # of a user's new posts went in at progress commits, in this run or in one that was killed
    if profile and (posts or counts or _profile_changed(profile[0].path, stored_profile)):
        posts.append(profile)
    if counts:
        posts.append(counts)
    for why in rejected.values():
        log.warning("%s: left out, its metadata is not valid (%s)", user, why)
    return posts, bad, sorted(rejected.values())


def _profile_changed(path: Path, stored: dict[str, int] | None) -> bool:
    """Whether a profile snapshot's counts differ from the latest stored ones."""
    try:
        node, _ = load_document(path.read_bytes())
    except (OSError, BadMetadata):
        return True  # the file checks name what is wrong
    return profile_counts(node) != stored


def _same_section(a: configparser.ConfigParser, b: configparser.ConfigParser, user: str) -> bool:
    return (a.has_section(user) and b.has_section(user) and dict(a.items(user)) == dict(b.items(user))) or (
        not a.has_section(user) and not b.has_section(user))


def _write_stamps(path: Path, stamps: configparser.ConfigParser, tmp: Path) -> None:
    """Replace a stamps file atomically, only when what it says changes."""
    current = read_stamps(path)
    if {s: dict(current.items(s)) for s in current.sections()} == {s: dict(stamps.items(s)) for s in stamps.sections()}:
        return
    with atomic_open(path, tmp_dir=tmp) as fh:
        fh.write(render(stamps))


@contextmanager
def _crawl_lock(paths: Paths) -> Iterator[None]:
    """One crawl at a time per project folder (the OS drops the lock when a crawl is killed)."""
    paths.crawl_work.mkdir(parents=True, exist_ok=True)
    with open(paths.crawl_work / _LOCK_NAME, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CrawlError("another crawl is running in this project folder") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean_stale(paths: Paths) -> None:
    """Scratch files of crawls that were killed (run under the crawl lock)."""
    stale = re.compile(r"^(crawl-.*|\.(?:[a-z0-9-]+-)?\d{6}\.tar\..*\.tmp"
                       r"|\.latest-stamps(?:\.[a-z0-9]+)?\.ini\..*\.tmp|\.shard-ledger(?:\.[a-z0-9]+)?\.txt\..*\.tmp|\.visits-[a-z0-9]+\.json\..*\.tmp)$")
    if not paths.tmp.is_dir():
        return
    for p in paths.tmp.iterdir():
        if stale.match(p.name):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def _visits_file(paths: Paths, tag: str | None) -> Path:
    return paths.crawl_work / f"visits-{tag or 'all'}.json"


class _Committer:
    """Moves the stamps of users whose files are all in shards into this crawl's stamps file."""

    def __init__(self, paths: Paths, own: Path, staged: Path, seen: configparser.ConfigParser) -> None:
        self.paths = paths
        self.own = own  # latest-stamps.ini, or latest-stamps.partIofN.ini
        self.committed = read_stamps(own)
        self.staged = staged  # the stamps file Instaloader updates during this run
        self.seen = seen  # every stamps file at the start of the run, merged
        self.done: set[str] = set()

    def commit(self, users: set[str]) -> None:
        """Write the stamps of ``users`` (only what changed), then drop their work folders."""
        users = users - self.done
        if not users:
            return
        staged = read_stamps(self.staged)
        for user in sorted(users):
            if _same_section(staged, self.seen, user) or not staged.has_section(user):
                continue
            old, new = post_timestamp(self.seen, user), post_timestamp(staged, user)
            if old is not None and (new is None or new < old):
                continue  # a stamp never moves back (a stale resume file from another part)
            if self.committed.has_section(user):
                self.committed.remove_section(user)
            self.committed.add_section(user)
            for key, value in staged.items(user):
                self.committed.set(user, key, value)
        _write_stamps(self.own, self.committed, self.paths.tmp)
        for user in users:
            shutil.rmtree(self.paths.crawl_work / user, ignore_errors=True)
        self.done |= users


def _crawl_order(users: list[str], paths: Paths, visits: dict[str, int]) -> list[str]:
    """Unfinished users first, then the least recently visited: no user starves under a budget."""
    def key(item: tuple[int, str]) -> tuple[int, int, int]:
        index, user = item
        unfinished = (paths.crawl_work / user).is_dir()
        return (0 if unfinished else 1, visits.get(user, -1), index)

    return [user for _, user in sorted(enumerate(users), key=key)]


def run(
    params: CrawlParams, paths: Paths, users: list[str] | None = None, part: tuple[int, int] | None = None
) -> CrawlReport:
    """Crawl every user (``users``, else the users file; its ``part`` I/N if given) for new posts."""
    os.environ["TZ"] = "UTC"  # Instaloader's stamps use local time; keep them machine-independent
    time.tzset()
    if users is None:
        users = read_users(paths.root / params.users_file)
    if part is not None:
        users = select_part(users, *part)
        if not users:
            log.warning("part %d/%d of the users file names no user", *part)
    tag = part_tag(part)
    own_stamps = paths.part_stamps(tag) if tag else paths.stamps
    paths.shards.mkdir(parents=True, exist_ok=True)
    paths.tmp.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with _crawl_lock(paths):
        _clean_stale(paths)
        # shards that no ledger lists (another crawler's, or stored before ledgers) come after
        # every listed one, in the order first seen
        ledger = read_ledger(paths.raw)
        record_shards(paths.part_ledger(tag) if tag else paths.ledger,
                      [s.name for s in list_shards(paths.shards) if s.name not in ledger.position], "seen", paths.tmp)
        intact, damaged = _stored(paths)
        known = {name for check in intact for name in check.members}
        # each stored post's latest counts, and each user's latest profile counts (intact shards only)
        stored = stored_facts([paths.shards / c.shard for c in intact], paths.cache / "counts")
        seen = merged_stamps(paths.raw)  # every crawler's stamps: the newest per user
        lowered = _lower_stamps(seen, damaged, intact,
                                {c.shard: (paths.shards / c.shard).stat().st_size for c in damaged})
        visits_path = _visits_file(paths, tag)
        visits: dict[str, int] = json.loads(visits_path.read_text()) if visits_path.exists() else {}
        run_no = max(visits.values(), default=0) + 1
        run_dir = Path(tempfile.mkdtemp(prefix="crawl-", dir=paths.tmp))
        try:
            staged_stamps = run_dir / "latest-stamps.ini"
            staged_stamps.write_text(render(seen), encoding="utf-8")
            stamps = instaloader.LatestStamps(str(staged_stamps))
            with open_source(params, users, paths) as source:
                report = CrawlReport(params.source, source.crawled_at, part=tag,
                                     max_requests=params.budget.max_requests, simulated=source.simulated,
                                     damaged=[c.shard for c in damaged], stamps_lowered=lowered)
                meta = {"crawled_at": source.crawled_at.isoformat(), "source": params.source,
                        "instaloader": instaloader.__version__}
                if tag:
                    meta["part"] = tag
                writer = _ShardWriter(paths, params.shard_size, meta, int(source.crawled_at.timestamp()), tag)
                finished: list[str] = []
                committer = _Committer(paths, own_stamps, staged_stamps, seen)
                progress = _ProgressCommits(paths, known, writer, committer, finished,
                                           params.commit_every_posts, params.commit_every_s)
                stopped: str | None = None
                limited_in_a_row = 0
                health = RunHealth()
                try:
                    for user in track(_crawl_order(users, paths, visits), "crawl"):
                        if stopped is not None:
                            report.users.append(UserResult(user, "skipped", f"not attempted: {stopped}"))
                            continue
                        progress.start(user)
                        result = crawl_user(source.loader, user, stamps, paths.crawl_work, params.max_posts,
                                            on_post=progress)
                        if result.status == "ok":
                            _recount(source.loader, result, stored.of_user(user), params.refresh_days,
                                     int(source.crawled_at.timestamp()), paths, known)
                        visits[user] = run_no
                        report.users.append(result)
                        if result.stops_run:
                            stopped = (result.reason or result.status).split(";")[0]
                            report.status, report.stop_reason = "stopped", stopped
                        if (verdict := health.observe(result)) is not None:
                            report.status, report.stop_reason = verdict
                            stopped = verdict[0]  # the front ends print the reason once
                        limited_in_a_row = limited_in_a_row + 1 if result.status == "rate_limited" else 0
                        if limited_in_a_row == params.budget.stop_after_rate_limited:
                            stopped = (f"{limited_in_a_row} users in a row were rate limited: Instagram is "
                                       "limiting this session or address, not these users")
                            report.status, report.stop_reason = "stopped", stopped
                        if result.status == "ok":
                            _take(result, paths, known, stored, writer, finished)  # fails it if a file is bad
                        result.new_posts += progress.stored
                        if result.status != "ok":
                            # a user that could not connect says nothing new: the run's verdict says it once
                            (log.debug if result.unreachable else log.warning)(
                                "%s: %s (%s)", user, result.status, result.reason)
                            if result.status in ("not_found", "private"):  # nothing worth keeping
                                shutil.rmtree(paths.crawl_work / user, ignore_errors=True)
                            if params.strict and result.status != "skipped":
                                raise CrawlError(f"user {user}: {result.status}: {result.reason}")
                            continue
                        writer.flush(final=False)
                        committer.commit(set(finished) - writer.pending_users)
                    writer.flush(final=True)
                    committer.commit(set(finished))
                finally:
                    report.requests = source.controller.requests
                    report.shards = writer.written
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
            with atomic_open(visits_path, tmp_dir=paths.tmp) as fh:
                json.dump(visits, fh, sort_keys=True)
    report.seconds = time.monotonic() - start
    return report


class _ProgressCommits:
    """Commits the current user's verified posts to shards while it is crawled.

    Called before each post's download (every post before it is complete on disk). A
    commit is due after ``every_posts`` posts, or after ``every_s`` seconds with at least
    ``floor`` (a fifth of ``every_posts``) posts, whichever comes first. Why these defaults
    (100 posts, 120 s, 20 posts): Instaloader's throttle lets a real crawl read at most about
    3.6 posts a second (200 timeline pages of 12 posts per 11 minutes), so 100 posts take
    half a minute or more and a kill loses at most about two minutes of work, while a shard
    still holds 20-100 posts (a few MB of photos): the paper's 71,747 posts make at most a
    few thousand files for DVC, typically hundreds, not 150,000. The demo world crawls far
    faster, so there the post count decides and runs stay deterministic.
    """

    def __init__(self, paths: Paths, known: set[str], writer: _ShardWriter, committer: _Committer,
                 finished: list[str], every_posts: int, every_s: float) -> None:
        self.paths, self.known, self.writer, self.committer, self.finished = paths, known, writer, committer, finished
        self.every_posts, self.every_s = every_posts, every_s
        self.floor = max(1, every_posts // 5)
        self.start("")

    def start(self, user: str) -> None:
        self.user, self.begun, self.since, self.stored = user, 0, time.monotonic(), 0

    def __call__(self) -> None:
        self.begun += 1  # the post about to be downloaded; those before it are complete
        complete = self.begun - 1
        if complete >= self.every_posts or (complete >= self.floor and time.monotonic() - self.since >= self.every_s):
            self.commit()

    def commit(self) -> None:
        user_dir = self.paths.crawl_work / self.user
        files = sorted(p for p in user_dir.rglob("*") if p.is_file())
        groups, bad, _ = _group_files(self.user, files, user_dir, self.known)
        posts = [g for g in groups if post_key(g[0].arcname)]  # the profile goes in with the last posts
        if bad:
            posts = []  # a file that does not decode: the end of the user's crawl deals with it
        if posts:
            self.writer.add(self.user, posts)
            self.writer.flush(final=True)
            self.known.update(f.arcname for g in posts for f in g)
            self.stored += len(posts)
            self.committer.commit(set(self.finished) - self.writer.pending_users)
            log.info("%s: progress committed, %d verified posts in shards so far", self.user, self.stored)
        self.begun, self.since = 1, time.monotonic()


def _stored(paths: Paths) -> tuple[list[ShardCheck], list[ShardCheck]]:
    """The intact shards and the damaged ones (each checked once, cached), in stored order. A
    shard that claims a crawl in the future (:func:`imgrate.shards.clock_limit`) counts as
    damaged: export does not use it, so its posts are fetched again."""
    intact: list[ShardCheck] = []
    damaged: list[ShardCheck] = []
    ledger = read_ledger(paths.raw)
    checks = [check_shard_cached(shard, paths.cache / "shard-checks")
              for shard in ledger.order(list_shards(paths.shards))]
    limit = clock_limit(t for c in checks if c.shard in ledger.written and (t := crawl_time(c.crawled_at)))
    for check in checks:
        if check.ok and (future := crawl_time_problem(check.crawled_at, limit)) is not None:
            check = dataclasses.replace(check, problem=future)
        if check.ok:
            intact.append(check)
            continue
        damaged.append(check)
        log.warning("shard %s is damaged (%s): its posts count as not stored and are fetched again",
                    check.shard, safe_text(check.problem))
        if not check.complete:
            log.warning("shard %s: what it held cannot all be named (%d members named from what survives of "
                        "its manifest and member headers); users it may have held are walked again from "
                        "before its crawl, once", check.shard, len(check.members))
    return intact, damaged


RECOVERED_KEY = "imgrate-recovered"  # in a user's stamps section: damaged shards already walked again


def _recovered(stamps: configparser.ConfigParser, user: str) -> set[str]:
    return set(stamps.get(user, RECOVERED_KEY, fallback="").split())


def _post_time(key: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(key.split("/", 1)[1], "%Y-%m-%d_%H-%M-%S_UTC").replace(tzinfo=dt.UTC)
    except (ValueError, IndexError):
        return None


def _when(text: str | None) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(text or "")
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _lower_stamps(stamps: configparser.ConfigParser, damaged: list[ShardCheck], intact: list[ShardCheck],
                  sizes: dict[str, int]) -> list[str]:
    """Take stamps back so that this crawl fetches again what damaged shards held; return the
    users whose stamp moved.

    A stamp says "every post up to here is stored". For each damaged shard: a user's stamp goes
    back to just before the oldest of its posts that the shard is known to have held (named by
    its manifest or by the member headers that survive) and no intact shard holds; a user
    whose posts the shard may have held without anything naming them (:meth:`ShardCheck.user_known`)
    goes back to its newest post in intact shards crawled before the damaged one (or loses its
    stamp: walked whole, when there is none or the shard's crawl time is lost). Either happens
    once per damaged shard (name and size) and user: the section remembers it under
    :data:`RECOVERED_KEY` when the user's crawl commits, so posts that no longer exist, or
    that a manifest lists but no crawl ever stored, do not cost a walk on every crawl. Only
    existing sections are touched: names from a shard are never trusted further than that."""
    held = {key for c in intact for name in c.members if (key := post_key(name))}
    target: dict[str, dt.datetime | None] = {}  # user -> new stamp (None: walk everything)
    tags: dict[str, set[str]] = {}

    def lower(user: str, when: dt.datetime | None, tag: str) -> None:
        if user in target:
            old = target[user]
            when = None if old is None or when is None else min(old, when)
        target[user] = when
        tags.setdefault(user, set()).add(tag)

    for check in damaged:
        tag = f"{check.shard}:{sizes.get(check.shard, 0)}"
        for name in check.members:
            key = post_key(name)
            if key is None or key in held:
                continue
            user = key.split("/", 1)[0]
            when = _post_time(key)
            if when is not None and is_username(user) and stamps.has_section(user) \
                    and tag not in _recovered(stamps, user):
                lower(user, when - dt.timedelta(seconds=1), tag)
        if check.complete:
            continue
        crawled = _when(check.crawled_at)
        for user in stamps.sections():
            if check.user_known(user) or tag in _recovered(stamps, user):
                continue
            earlier = [t for c in intact if crawled is not None and (w := _when(c.crawled_at)) is not None
                       and w < crawled for name in c.members if (k := post_key(name)) and k.startswith(user + "/")
                       and (t := _post_time(k)) is not None]
            lower(user, max(earlier) if earlier else None, tag)
    lowered = []
    for user, when in sorted(target.items()):
        stamp = post_timestamp(stamps, user)
        if stamp is None or (when is not None and stamp <= when):
            continue
        if when is None:
            stamps.remove_option(user, POST_TIMESTAMP)
        else:
            stamps.set(user, POST_TIMESTAMP, when.strftime(ISO_FORMAT))
        stamps.set(user, RECOVERED_KEY, " ".join(sorted(_recovered(stamps, user) | tags[user])))
        log.warning("%s: stamp taken back from %s to %s: posts of a damaged shard are fetched again", user,
                    stamp.isoformat(), when.isoformat() if when is not None else "the start (walked whole)")
        lowered.append(user)
    return lowered


def _recount(loader: instaloader.Instaloader, result: UserResult, stored: list[Observation], refresh_days: int,
             now: int, paths: Paths, known: set[str]) -> None:
    """Re-read the counts of the user's stored posts whose latest count was read before they
    were ``refresh_days`` old, and stage the changed ones as a counts file in the user's work
    folder (it goes into the shards with the user's other new files). Never fails the user:
    the posts it fetched are stored, and the next crawl reads the counts again."""
    user = result.username
    user_dir = paths.crawl_work / user
    for stale in user_dir.glob(f"{user}_counts_*_UTC.json"):  # of a crawl that was stopped
        stale.unlink()
    result.files = [f for f in result.files if not COUNTS_NAME_RE.match(f"{user}/{f.name}")]
    due = {o.shortcode: o for o in stored if needs_recount(o, refresh_days, now)}
    if not due:
        return
    controller = loader.context.controller  # type: ignore[attr-defined]
    before = controller.user.requests
    try:
        current = read_counts(loader, user, {code: o.taken_at for code, o in due.items()})
    except BudgetExhausted as err:
        result.stops_run, result.reason = True, f"{err}; the counts are read again in the next run"
        return
    except (instaloader.exceptions.InstaloaderException, instaloader.exceptions.AbortDownloadException,
            OSError, LookupError, TypeError, ValueError) as err:
        log.warning("%s: re-reading the counts of %d posts failed (%s: %s); the next crawl tries again",
                    user, len(due), type(err).__name__, str(err)[:200])
        return
    finally:
        result.recount_requests = controller.user.requests - before
        result.requests += result.recount_requests
    result.recounted = len(current)
    # a node that shows likes but no comment count keeps the stored one
    current = {code: c if c.comments is not None else dataclasses.replace(c, comments=due[code].comments)
               for code, c in current.items()}
    new = [Observation(code, user, due[code].taken_at, now, c.likes, c.comments, c.hidden, recount=True)
           for code, c in sorted(current.items()) if changed(due[code], c, now)]
    name = counts_member_name(user, now)
    if not new or name in known:
        return
    user_dir.mkdir(parents=True, exist_ok=True)
    path = user_dir / name.split("/", 1)[1]
    with atomic_open(path, "wb") as fh:  # its temporary file stays in the work folder
        fh.write(render_counts(user, now, new))
    result.files.append(path)
    result.observations = len(new)


def _take(result: UserResult, paths: Paths, known: set[str], stored: Stored, writer: _ShardWriter,
          finished: list[str]) -> None:
    """Queue a finished user's new posts for the shards, or fail it when a file does not decode."""
    user_dir = paths.crawl_work / result.username
    groups, bad, rejected = _group_files(result.username, result.files, user_dir, known,
                                         stored.profiles.get(result.username))
    if bad:
        for path, _ in bad:
            path.unlink(missing_ok=True)
        for resume in user_dir.glob(f"{RESUME_PREFIX}_*.json.xz"):  # walk all posts again next run
            resume.unlink()
        result.status = "failed"
        result.reason = (f"{len(bad)} downloaded file(s) did not decode ({bad[0][0].name}: {bad[0][1]}); "
                         "removed, fetched again next run")
        return
    result.new_posts = sum(1 for g in groups if post_key(g[0].arcname))
    if rejected:
        result.reason = f"{len(rejected)} post(s) left out, metadata not valid: {rejected[0]}"
    if groups:
        writer.add(result.username, groups)
    finished.append(result.username)


# The numbers metrics/crawl.json keeps for `dvc metrics show` / `diff`; everything else (per
# user status, reason, requests, retries, waits; the budget; the shards) is in reports/crawl.json.
METRIC_KEYS = ("users", "new_posts", "requests")


def crawl_metrics(full: dict[str, Any]) -> dict[str, Any]:
    """metrics/crawl.json from the full report (:meth:`CrawlReport.to_metrics`): the totals, and
    the run's status (complete, stopped, endpoint_changed, unreachable), so that a crawl that
    stopped for a changed Instagram or no network says so where `dvc metrics show` looks."""
    return {**{k: full["totals"][k] for k in METRIC_KEYS}, "status": full["status"]}


def run_stage(params: CrawlParams, paths: Paths, part: tuple[int, int] | None = None) -> CrawlReport:
    """The DVC stage: crawl, then write metrics/crawl.json and reports/crawl.json, and the
    report with timings under .imgrate-cache/logs/crawl/ (one file per run).

    metrics/crawl.json and reports/crawl.json describe the crawl that last changed data/raw
    (or the users' statuses): a crawl that finds nothing new and whose users fare as before
    leaves them as they are (its report goes to the log), so the same data gives the same
    bytes whether it was crawled now or pulled, and a no-op `dvc repro` leaves git clean.
    """
    for out in (paths.stage_metrics("crawl"), paths.stage_report("crawl")):  # left by a killed run
        remove_stale_tmp(out.parent, [out.name])
    report = run(params, paths, part=part)
    full = report.to_metrics()
    metrics_path, report_path = paths.stage_metrics("crawl"), paths.stage_report("crawl")
    if report.shards or not metrics_path.exists() or _statuses_differ(report_path, full):
        write_json(report_path, full)
        write_json(metrics_path, crawl_metrics(full))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    suffix = f".{report.part}" if report.part else ""
    write_json(paths.crawl_logs / f"{stamp}{suffix}.json", report.to_metrics(timings=True))
    return report


def _statuses_differ(path: Path, full: dict[str, Any]) -> bool:
    """True when the report at ``path`` is missing, unreadable, or gives the run or a user
    another status."""
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        return old.get("status") != full.get("status") or {u: v.get("status") for u, v in old["users"].items()} != {
            u: v["status"] for u, v in full["users"].items()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return True


def main(part: str | None = None) -> None:
    """``python stages/crawl.py`` and ``imgrate crawl [--part I/N]``: crawl, then one summary
    line, a line per user that did not crawl cleanly and, when the run stopped early, why."""
    from imgrate.crawl.users import parse_part
    from imgrate.params import load_params
    from imgrate.paths import project_paths
    from imgrate.progress import console, print_note, setup_logging

    setup_logging()
    paths = project_paths()
    report = run_stage(load_params(paths.params, ["crawl"]).crawl, paths, part=parse_part(part) if part else None)
    totals = report.to_metrics()["totals"]
    console.print(f"crawl: {totals['new_posts']} new posts from {totals['ok']}/{totals['users']} users, "
                  f"{totals['shards_written']} new shards, {totals['requests']} requests in {report.seconds:.1f} s; "
                  f"report in {paths.stage_report('crawl')}"
                  + (f"; stopped: {report.status}" if report.stop_reason else ""),
                  highlight=False, soft_wrap=True)
    for user in report.users:
        if user.status not in ("ok", "skipped") and not user.unreachable:
            print_note(user.username, f"{user.status}: {user.reason}")
    if report.stop_reason:
        skipped = sum(u.status == "skipped" for u in report.users)
        print_note(f"crawl stopped ({report.status})", f"{report.stop_reason}"
                   + (f"; {skipped} users not attempted" if skipped else ""), style="red")
