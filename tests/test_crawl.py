"""crawl: users.txt validation, Instaloader into append-only shards, incremental runs."""

from __future__ import annotations

import dataclasses
import hashlib
import lzma
import tarfile
from pathlib import Path

import instaloader
import pytest

from imgrate.crawl.demo import DemoWorld, WorldConfig
from imgrate.crawl.shards import list_shards, member_names
from imgrate.crawl.stage import run
from imgrate.crawl.users import parse_users, read_users
from imgrate.errors import UsersFileError
from imgrate.params import CrawlParams, DemoParams
from imgrate.paths import Paths

USERS = ["alpha_lens_demo", "bravo_frames_demo"]


def crawl_params(until: str = "2025-02-15", **kw) -> CrawlParams:
    demo = DemoParams(seed=7, start="2025-01-01", until=until, image_size=48, mean_interval_days=4.0)
    return CrawlParams(demo=demo, shard_size=8, **kw)


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def world_for(params: CrawlParams, users: list[str]) -> DemoWorld:
    d = params.demo
    return DemoWorld(users, WorldConfig(seed=d.seed, start=d.start, until=d.until, image_size=d.image_size,
                                        mean_interval_days=d.mean_interval_days))


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
