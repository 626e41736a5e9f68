"""crawl: users.txt validation, Instaloader into append-only shards, incremental runs."""

from __future__ import annotations

import dataclasses
import hashlib
import lzma
import tarfile
from pathlib import Path

import instaloader
import pytest

from imgrate.crawl.stage import run
from imgrate.crawl.users import parse_users, read_users
from imgrate.demo.world import DemoWorld
from imgrate.errors import UsersFileError
from imgrate.params import CrawlParams, DemoParams
from imgrate.paths import Paths
from imgrate.shards import list_shards, member_names, read_manifest

USERS = ["alpha_lens_demo", "bravo_frames_demo"]


def crawl_params(until: str = "2025-02-15", **kw) -> CrawlParams:
    demo = DemoParams(seed=7, start="2025-01-01", until=until, image_size=48, mean_interval_days=4.0)
    return CrawlParams(demo=demo, shard_size=8, **kw)


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def world_for(params: CrawlParams, users: list[str]) -> DemoWorld:
    return DemoWorld(users, params.demo)


def test_users_file_ignores_blanks_comments_and_duplicates() -> None:
    text = "# photographers\n\nAlpha_Lens_Demo\n  bravo.frames  # trailing comment\n@alpha_lens_demo\n"
    assert parse_users(text) == ["alpha_lens_demo", "bravo.frames"]


@pytest.mark.parametrize("bad", ["../etc", "a" * 31, "white space", "semi;colon", "...", "ünïcode"])
def test_invalid_username_is_rejected_naming_the_line(bad: str) -> None:
    with pytest.raises(UsersFileError, match=r"users.txt:3: invalid Instagram username"):
        parse_users(f"# header\nalpha_lens_demo\n{bad}\n")


def test_invalid_users_file_fails_before_any_request(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("alpha_lens_demo\n../etc\n")
    with pytest.raises(UsersFileError, match="users.txt:2"):
        run(crawl_params(), Paths(tmp_path))
    assert not (tmp_path / "data" / "raw" / "shards").exists() or not list_shards(tmp_path / "data/raw/shards")
    with pytest.raises(UsersFileError, match="names no users"):
        (tmp_path / "users.txt").write_text("# nobody\n")
        read_users(tmp_path / "users.txt")


def test_crawl_writes_instaloader_files_into_shards(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    params = crawl_params()
    report = run(params, paths, USERS)
    world = world_for(params, USERS)
    expected = {p.shortcode for u in USERS for p in world.posts(u)}
    assert report.new_posts == len(expected) > 10
    shards = list_shards(paths.shards)
    assert [s.name for s in shards] == [f"{i:06d}.tar" for i in range(1, len(shards) + 1)]
    names = [n for s in shards for n in member_names(s)]
    assert len(names) == len(set(names)), "a member is stored twice"
    # Instaloader's own names: <user>/<date>_UTC.json.xz, .jpg, _1.jpg for sidecars, <user>_<id>.json.xz
    for name in names:
        user, fname = name.split("/")
        assert user in USERS
        assert fname.endswith(("_UTC.json.xz", "_UTC.jpg", "_UTC_1.jpg")) or fname.startswith(f"{user}_"), name
    # .json.xz members load with Instaloader's own loader, offline
    ctx = instaloader.InstaloaderContext(sleep=False, quiet=True)
    extracted = tmp_path / "x"
    with tarfile.open(shards[0]) as tar:
        tar.extractall(extracted, filter="data")
    loaded = [instaloader.load_structure_from_file(ctx, str(p)) for p in sorted(extracted.rglob("*_UTC.json.xz"))]
    assert loaded and all(isinstance(x, instaloader.Post) for x in loaded)
    for post in loaded:
        assert post.likes == world.post(post.shortcode).served_likes
    assert {p.shortcode for s in shards for p in _posts_in(s, ctx, tmp_path)} == expected


def _posts_in(shard: Path, ctx, tmp: Path) -> list[instaloader.Post]:
    out = tmp / f"x-{shard.stem}"
    with tarfile.open(shard) as tar:
        tar.extractall(out, filter="data")
    return [instaloader.load_structure_from_file(ctx, str(p)) for p in sorted(out.rglob("*_UTC.json.xz"))]


def test_rerun_with_nothing_new_leaves_raw_byte_identical(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    params = crawl_params()
    run(params, paths, USERS)
    before = tree_digest(paths.raw)
    report = run(params, paths, USERS)
    assert report.new_posts == 0 and report.shards == []
    assert tree_digest(paths.raw) == before
    # a no-op rerun costs a small constant number of requests per user (profile page, the
    # first three posts' metadata, which Instaloader checks because they may be pinned)
    assert all(u.status == "ok" and u.requests <= 6 for u in report.users), report.to_metrics()["users"]


def test_moving_the_clock_adds_only_new_posts_in_new_shards(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    old_params = crawl_params(until="2025-02-01")
    run(old_params, paths, USERS)
    old = tree_digest(paths.shards)
    new_params = crawl_params(until="2025-03-15")
    report = run(new_params, paths, USERS)
    now = tree_digest(paths.shards)
    assert {k: now[k] for k in old} == old, "an old shard changed"
    assert set(now) > set(old)
    old_world, new_world = world_for(old_params, USERS), world_for(new_params, USERS)
    added = {p.shortcode for u in USERS for p in new_world.posts(u)} - {
        p.shortcode for u in USERS for p in old_world.posts(u)}
    assert report.new_posts == len(added) > 0


def test_private_and_missing_users_are_reported_and_others_crawled(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    users = ["alpha_lens_demo", "quiet_private_lens", "ghost_of_nobody"]
    report = run(crawl_params(), paths, users)
    status = {u.username: u.status for u in report.users}
    assert status == {"alpha_lens_demo": "ok", "quiet_private_lens": "private", "ghost_of_nobody": "not_found"}
    assert report.new_posts > 0
    metrics = report.to_metrics()
    assert metrics["totals"]["private"] == 1 and metrics["totals"]["not_found"] == 1
    assert metrics["users"]["quiet_private_lens"]["reason"]


def test_max_posts_limits_each_run(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    params = dataclasses.replace(crawl_params(), max_posts=3)
    report = run(params, paths, USERS)
    assert all(1 <= u.new_posts <= 3 for u in report.users)
    assert report.new_posts < run(crawl_params(), Paths(tmp_path / 'all'), USERS).new_posts


def test_shard_json_members_are_xz(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    run(crawl_params(), paths, USERS[:1])
    with tarfile.open(list_shards(paths.shards)[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".json.xz"))
        assert lzma.decompress(tar.extractfile(member).read()).startswith(b"{")


# ---- durable progress within a user's crawl (issue 13: a kill before the first shard kept nothing)


def _verified(paths: Paths) -> list[str]:
    """Every post member stored, checked as verify checks it (nothing twice, stamps not ahead)."""
    from imgrate.crawl.verify import verify_raw

    report = verify_raw(paths)
    assert report.ok, report.problems[:3]
    return [n for s in list_shards(paths.shards) for n in member_names(s) if n.endswith("_UTC.json.xz")]


def test_progress_is_committed_to_shards_during_a_users_crawl(tmp_path: Path) -> None:
    user = ["alpha_lens_demo"]
    base = dataclasses.replace(crawl_params(until="2025-03-15"), shard_size=500)
    expected = {p.shortcode for p in world_for(base, user).posts(user[0])}
    # by post count: a shard every 4 posts, the last one with the rest and the profile
    paths = Paths(tmp_path / "posts")
    report = run(dataclasses.replace(base, commit_every_posts=4), paths, user)
    posts = [read_manifest(s).posts for s in list_shards(paths.shards)]
    assert len(expected) >= 12 and report.new_posts == len(expected) == len(_verified(paths))
    assert posts[:-1] == [4] * (len(posts) - 1) and 0 <= posts[-1] <= 4
    # by time, with the floor: commit_every_s 0 commits as soon as commit_every_posts // 5 posts are ready
    paths = Paths(tmp_path / "time")
    run(dataclasses.replace(base, commit_every_posts=10, commit_every_s=0.0), paths, user)
    posts = [read_manifest(s).posts for s in list_shards(paths.shards)]
    assert posts[:-1] == [2] * (len(posts) - 1) and len(_verified(paths)) == len(expected)
    # the default (100 posts) leaves a small user's crawl to one shard, as before
    paths = Paths(tmp_path / "default")
    run(base, paths, user)
    assert [read_manifest(s).posts for s in list_shards(paths.shards)] == [len(expected)]


_KILLED_CRAWL = r"""
import dataclasses, json, os, sys
from imgrate.crawl import instagram
from imgrate.crawl.stage import run
from pathlib import Path
from imgrate.params import CrawlParams, DemoParams, FaultParams
from imgrate.paths import Paths

args = json.loads(sys.argv[1])
count = instagram.BudgetRateController.count_request

def count_and_die(self, per_user=True):
    if self.requests + 1 == args["kill_at"]:
        os._exit(137)  # as kill -9: no finally, no flush, no resume file
    count(self, per_user)

instagram.BudgetRateController.count_request = count_and_die
demo = DemoParams(**{**args["demo"], "faults": FaultParams(**args["demo"]["faults"])})
run(CrawlParams(demo=demo, shard_size=500, commit_every_posts=args["commit_every_posts"]), Paths(Path(args["root"])),
    args["users"])
"""


@pytest.mark.parametrize("commit_every_posts", [3, 1000])
def test_a_crawl_killed_before_its_first_shard_keeps_what_it_verified(tmp_path: Path,
                                                                     commit_every_posts: int) -> None:
    import json
    import subprocess
    import sys

    user = ["alpha_lens_demo"]
    params = dataclasses.replace(crawl_params(until="2025-03-15"), shard_size=500, commit_every_posts=commit_every_posts)
    full = run(params, Paths(tmp_path / "full"), user)  # how many requests the whole crawl takes
    expected = {p.shortcode for p in world_for(params, user).posts(user[0])}
    paths = Paths(tmp_path / "killed")
    args = {"root": str(paths.root), "users": user, "commit_every_posts": commit_every_posts,
            "kill_at": full.requests * 2 // 3, "demo": dataclasses.asdict(params.demo)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_CRAWL, json.dumps(args)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 137, proc.stderr[-2000:]
    kept = _verified(paths) if paths.shards.exists() else []
    if commit_every_posts == 1000:
        assert kept == []  # the old behaviour: nothing durable before the user is done
    else:
        assert len(kept) >= len(expected) // 3 >= 3  # what was verified before the kill is in shards
        assert not paths.stamps.exists()  # and the stamp claims nothing: the user is not done
    again = run(params, paths, user)  # the next run completes the user, nothing twice
    stored = _verified(paths)
    assert len(stored) == len(set(stored)) == len(expected)
    assert again.new_posts == len(expected) - len(kept)


def test_the_crawl_sets_no_time_zone_and_stores_the_same_bytes_in_any(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Instaloader writes its stamps in the machine's local time; imgrate stores them in UTC,
    so a crawl in Chatham (UTC+12:45) writes data/raw byte for byte as one in UTC, and the crawl
    leaves the process's time zone as it found it (no TZ/tzset side effect)."""
    import os
    import time

    digests = []
    try:
        for zone in ("UTC", "Pacific/Chatham"):
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            paths = Paths(tmp_path / zone.replace("/", "_"))
            paths.root.mkdir()
            run(crawl_params(), paths, USERS)
            assert os.environ["TZ"] == zone  # the crawl set no time zone of its own
            stamps = paths.stamps.read_text()
            assert "+0000" in stamps and "+1245" not in stamps, stamps
            digests.append(tree_digest(paths.raw))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert digests[0] == digests[1]
