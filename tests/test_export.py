"""export: shards -> JSON tables that agree with the simulated world."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from imgrate.crawl.demo import DemoWorld, WorldConfig
from imgrate.crawl.shards import list_shards
from imgrate.errors import DataError
from imgrate.export import build_tables, run_stage
from imgrate.io import read_jsonl
from imgrate.params import ExportParams
from imgrate.paths import Paths

from conftest import TINY_USERS, mangle_first_post


def _world(params) -> DemoWorld:
    d = params.crawl.demo
    return DemoWorld(TINY_USERS, WorldConfig(seed=d.seed, start=d.start, until=d.until, image_size=d.image_size,
                                             mean_interval_days=d.mean_interval_days))


def test_tables_match_the_world(tiny_world) -> None:
    params, paths = tiny_world
    world = _world(params)
    posts = read_jsonl(paths.posts_table)
    users = read_jsonl(paths.users_table)
    truth = {p.shortcode: p for u in TINY_USERS for p in world.posts(u)}
    assert {p["shortcode"] for p in posts} == set(truth)
    for row in posts:
        post = truth[row["shortcode"]]
        assert (row["user"], row["likes"], row["likes_hidden"], row["comments"], row["typename"],
                row["timestamp"]) == (post.username, None if post.likes_hidden else post.likes, post.likes_hidden,
                                      post.comments, post.typename, post.taken_at)
        # one crawl: every count was read at the world's clock
        assert row["likes_observed_at"] == row["crawled_at"] == "2025-03-01T23:59:59Z"
        assert row["age_at_observation_days"] == round((world.clock - post.taken_at) / 86400, 4) >= 0
        if row["typename"] == "GraphVideo":
            assert row["member"] is None  # videos are skipped unless crawl.video_thumbnails
        else:
            assert row["member"].endswith(".jpg") and len(row["sha256"]) == 64 and row["width"] > 0
        if row["typename"] == "GraphSidecar":
            assert row["member"].endswith("_UTC_1.jpg")
    assert [u["username"] for u in users] == sorted(TINY_USERS)
    for u in users:
        assert u["followers"] == world.user(u["username"]).followers
        assert u["posts"] == len(world.posts(u["username"]))


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda b: b[: len(b) // 2], "corrupt metadata"),
        (lambda b: lzma.compress(lzma.decompress(b).replace(b'"__typename"', b'"__typenamX"')), "missing field"),
    ],
)
def test_bad_member_is_skipped_and_counted_or_fails_when_strict(tiny_world, tmp_path: Path, mangle, reason) -> None:
    _, paths = tiny_world
    bad = mangle_first_post(paths, tmp_path, mangle)
    m = run_stage(ExportParams(strict=False), bad)
    assert m["posts_skipped"] == 1 and reason in next(iter(m["skipped_reasons"]))
    assert m["posts"] == len(read_jsonl(paths.posts_table)) - 1
    with pytest.raises(DataError, match=r"shard 000001\.tar, member .*_UTC\.json\.xz"):
        build_tables(list_shards(bad.shards), tmp_path / "cache2", strict=True)


def test_no_shards_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run the crawl stage first"):
        run_stage(ExportParams(strict=False), Paths(tmp_path))


def test_a_killed_run_leaves_no_temporary_file_in_the_tables(tiny_world, tmp_path: Path) -> None:
    from conftest import copy_world
    from test_io import leftover

    params, tiny = tiny_world
    paths = copy_world(tiny, tmp_path)
    stale = [leftover(paths.posts_table), leftover(paths.users_table), leftover(paths.stage_metrics("export"))]
    run_stage(params.export, paths)
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in paths.tables.iterdir()) == ["posts.jsonl", "skipped.jsonl", "users.jsonl"]
