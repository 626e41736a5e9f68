"""Labels that stay true as the crawl goes on (issue 11): counts re-read from the timeline,
stored as observations, the latest one exported, hidden like counts never a target, unsettled
labels held back. The guarantee: daily crawls give exactly what one crawl at the last day gives."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgrate.crawl.demo import LIKES_SETTLE_DAYS, DemoWorld, WorldConfig, likes_fraction
from imgrate.crawl.observations import (
    COUNTS_NAME_RE,
    Observation,
    changed,
    counts_member_name,
    counts_of_node,
    needs_recount,
    parse_counts_member,
    render_counts,
)
from imgrate.crawl.shards import iter_members, list_shards
from imgrate.crawl.stage import run
from imgrate.crawl.verify import verify_raw
from imgrate.errors import DataError, ParamsError
from imgrate.export import run_stage as export
from imgrate.io import read_jsonl
from imgrate.params import CrawlParams, DemoParams, ExportParams, PreprocessParams, parse_params
from imgrate.paths import Paths
from imgrate.preprocess import run_stage as preprocess

from conftest import dvc, git, tiny_params, write_params

USERS = ["alpha_lens_demo", "bravo_frames_demo", "hidden_charlie_demo"]
TARGETS = ["max_ratio", "follower_ratio", "log_zscore", "percentile"]
DAY = 86_400


def crawl_params(until: str, **kw) -> CrawlParams:
    demo = DemoParams(seed=7, start="2025-01-01", until=until, image_size=32, mean_interval_days=2.5)
    return CrawlParams(demo=demo, shard_size=kw.pop("shard_size", 8), **kw)


def days(first: dt.date, n: int) -> list[str]:
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(n)]


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def stored_observations(paths: Paths) -> list[tuple[str, int, int | None, int | None, bool]]:
    """Every re-read count in every shard, in shard order (one stored twice shows twice)."""
    out = []
    for shard in list_shards(paths.shards):
        for name, data in iter_members(shard):
            if COUNTS_NAME_RE.match(name):
                out += [(o.shortcode, o.observed_at, o.likes, o.comments, o.hidden)
                        for o in parse_counts_member(name, data)]
    return out


def tables_and_datasets(paths: Paths, min_age_days: int = 3) -> tuple[dict, dict]:
    """Posts table rows by shortcode, and the dataset index per target kind."""
    export(ExportParams(), paths)
    table = {p["shortcode"]: p for p in read_jsonl(paths.posts_table)}
    datasets = {}
    for target in TARGETS:
        metrics = preprocess(PreprocessParams(size=16, target=target, max_posts_per_user=None,
                                              min_age_days=min_age_days), paths)
        index = read_jsonl(paths.dataset_index)
        datasets[target] = ([(r["shortcode"], r["likes"], r["target"], r["split"]) for r in index], metrics)
    return table, datasets


# ---- the simulated world


def test_likes_grow_like_instagram_and_settle_after_a_week() -> None:
    grid = [likes_fraction(h * 3600) for h in range(0, 24 * 9)]
    assert grid[0] == 0.0 and all(a <= b for a, b in zip(grid, grid[1:]))
    assert 0.7 < likes_fraction(DAY) < 0.85 and 0.85 < likes_fraction(2 * DAY) < 0.95  # most in a day or two
    assert likes_fraction(5 * DAY) < 0.995  # ... and a long tail
    assert likes_fraction(LIKES_SETTLE_DAYS * DAY) == likes_fraction(30 * DAY) == 1.0


def test_hidden_like_counts_are_served_as_instagram_does() -> None:
    users = ["alpha_lens_demo", "hidden_charlie_demo", *[f"user{i}_demo" for i in range(20)]]
    world = DemoWorld(users, WorldConfig(seed=3, until="2026-06-30", image_size=16))
    hidden_user = world.posts("hidden_charlie_demo")
    assert hidden_user and all(p.likes_hidden for p in hidden_user)
    others = [p for u in users if u != "hidden_charlie_demo" for p in world.posts(u)]
    share = sum(p.likes_hidden for p in others) / len(others)
    assert 0.01 < share < 0.06, share  # a small share of everybody's posts
    for p in hidden_user[:20]:
        assert p.served_likes == -1 or 0 <= p.served_likes < 3  # meaningless, not the real count
        assert p.likes > 10  # the world knows the real one


def test_default_users_file_has_exactly_one_user_who_hides_likes() -> None:
    from conftest import ROOT
    from imgrate.crawl.users import read_users

    users = read_users(ROOT / "users.txt")
    assert len(users) == 27 and [u for u in users if "hidden" in u] == ["amber_hidden_demo"]


# ---- observations: parsing, naming, the decision


def _obs(likes: int | None, observed_days: float, hidden: bool = False, taken_at: int = 1_740_000_000) -> Observation:
    return Observation("Cabc", "alpha_lens_demo", taken_at, taken_at + int(observed_days * DAY), likes, 3,
                       hidden, recount=False)


def test_counts_of_nodes_know_hidden_and_meaningless_counts() -> None:
    assert counts_of_node({"like_count": 12, "comment_count": 3}).likes == 12
    assert counts_of_node({"edge_media_preview_like": {"count": -1}, "comments": 2}).hidden
    small = counts_of_node({"like_count": 2, "comment_count": 1, "like_and_view_counts_disabled": True})
    assert (small.likes, small.comments, small.hidden) == (None, 1, True)
    assert counts_of_node({"code": "x"}) is None  # a timeline node without counts: ask for the post
    assert counts_of_node({"like_count": -5, "comment_count": 1}) is None  # not Instagram's -1: bad data
    assert counts_of_node({"like_count": True, "comment_count": 1}) is None


def test_a_count_is_stored_when_it_changed_or_a_day_of_age_passed() -> None:
    latest = _obs(100, 1.2)
    now = latest.observed_at + 3600
    assert not changed(latest, latest.counts, now)  # same count, same day of age: nothing
    assert changed(latest, dataclasses.replace(latest, likes=101).counts, now)
    assert changed(latest, latest.counts, latest.taken_at + 2 * DAY + 1)  # confirmed at a new day of age
    assert needs_recount(_obs(100, 6.9), 7, latest.taken_at + 30 * DAY)  # read young: read again
    assert not needs_recount(_obs(100, 7.0), 7, latest.taken_at + 30 * DAY)  # read settled: never again
    assert not needs_recount(_obs(100, 0.5), 0, latest.taken_at + DAY)  # refresh_days 0: never


def test_counts_members_round_trip_and_bad_ones_are_named(tmp_path: Path) -> None:
    o = Observation("CabcDEF12", "alpha_lens_demo", 1_740_000_000, 1_740_100_000, 5, 1, False, recount=True)
    h = dataclasses.replace(o, shortcode="CzzzHidden", likes=None, hidden=True)
    name = counts_member_name("alpha_lens_demo", o.observed_at)
    data = render_counts("alpha_lens_demo", o.observed_at, [h, o])
    assert parse_counts_member(name, data) == [o, h]
    assert render_counts("alpha_lens_demo", o.observed_at, [o, h]) == data  # same reads, same bytes
    doc = json.loads(data)
    bad = {
        "wrong user": {**doc, "user": "bravo_frames_demo"},
        "name and time disagree": {**doc, "observed_at": doc["observed_at"] + 1},
        "negative likes": {**doc, "posts": [{**doc["posts"][0], "likes": -1}]},
        "hidden with a count": {**doc, "posts": [{**doc["posts"][1], "likes": 3}]},
        "a path as shortcode": {**doc, "posts": [{**doc["posts"][0], "shortcode": "../../etc"}]},
        "too many posts": {**doc, "posts": doc["posts"] * 20_001},
    }
    for what, broken in bad.items():
        with pytest.raises(DataError, match=r"alpha_lens_demo/alpha_lens_demo_counts_"):
            parse_counts_member(name, json.dumps(broken).encode())
    with pytest.raises(DataError, match="not JSON"):
        parse_counts_member(name, b"\xff\xfe{")
    with pytest.raises(DataError, match="bad member name"):
        parse_counts_member("alpha_lens_demo/../x_counts_.json", data)


def test_refresh_days_and_min_age_days_are_checked_by_name() -> None:
    params = tiny_params()
    params["preprocess"]["min_age_days"] = -1
    with pytest.raises(ParamsError, match="preprocess.min_age_days"):
        parse_params(params)
    params["preprocess"]["min_age_days"] = 8
    with pytest.raises(ParamsError, match="preprocess.min_age_days: must be at most crawl.refresh_days"):
        parse_params(params)
    params["preprocess"]["min_age_days"] = 3
    params["crawl"]["refresh_days"] = -2
    with pytest.raises(ParamsError, match="crawl.refresh_days"):
        parse_params(params)


# ---- crawls


def test_daily_crawls_give_exactly_what_one_crawl_at_the_last_day_gives(tmp_path: Path) -> None:
    daily, once = Paths(tmp_path / "daily"), Paths(tmp_path / "once")
    clocks = days(dt.date(2025, 2, 1), 31)  # a first crawl, then thirty daily ones
    reports = [run(crawl_params(until), daily, USERS) for until in clocks]
    run(crawl_params(clocks[-1]), once, USERS)

    for report in reports[1:]:
        totals = report.to_metrics()["totals"]
        # the counts come from the pages the crawl loads anyway
        assert totals["requests"] <= 1 + 5 * len(USERS) + 3 * totals["new_posts"], totals
        assert totals["recount_requests"] == 0
    assert sum(r.to_metrics()["totals"]["observations"] for r in reports) > 20
    assert sum(r.new_posts for r in reports[1:]) > 10

    t_daily, d_daily = tables_and_datasets(daily, min_age_days=5)
    t_once, d_once = tables_and_datasets(once, min_age_days=5)
    assert set(t_daily) == set(t_once)
    for code, row in t_once.items():
        mine = t_daily[code]
        assert (mine["likes"], mine["likes_hidden"], mine["comments"]) == (
            row["likes"], row["likes_hidden"], row["comments"]), code
    for target in TARGETS:
        rows_daily, m_daily = d_daily[target]
        rows_once, m_once = d_once[target]
        assert rows_daily == rows_once, target
        assert (m_daily["too_young"], m_daily["likes_hidden"]) == (m_once["too_young"], m_once["likes_hidden"])
        assert m_once["too_young"] > 0 and m_once["likes_hidden"] > 0
        assert m_once["users_likes_hidden"] == ["hidden_charlie_demo"]
    # the young posts were stored young, and the tables show when their count was confirmed
    young = [r for r in t_daily.values() if r["crawled_at"] != r["likes_observed_at"]]
    assert young and all(r["age_at_observation_days"] >= 0 for r in young)
    assert verify_raw(daily).ok


def test_a_crawl_at_the_same_clock_writes_nothing(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    run(crawl_params("2025-02-10"), paths, USERS)
    first = run(crawl_params("2025-02-11"), paths, USERS)
    assert first.to_metrics()["totals"]["observations"] > 0
    before = tree_digest(paths.raw)
    again = run(crawl_params("2025-02-11"), paths, USERS)
    totals = again.to_metrics()["totals"]
    assert totals["recounted"] > 0 and totals["observations"] == 0 and again.shards == []
    assert tree_digest(paths.raw) == before


def test_refresh_days_zero_reads_no_count_again(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    run(crawl_params("2025-02-10", refresh_days=0), paths, USERS)
    report = run(crawl_params("2025-02-11", refresh_days=0), paths, USERS)
    assert report.to_metrics()["totals"]["recounted"] == 0 and stored_observations(paths) == []


def test_a_long_pause_reads_the_older_pages_it_needs(tmp_path: Path) -> None:
    """After a month without crawling, posts read young are deeper than the first page: the
    crawl walks further pages (one request per 12 posts) and stores their settled counts."""
    paths, once = Paths(tmp_path / "paused"), Paths(tmp_path / "once")
    run(crawl_params("2025-02-10"), paths, USERS)
    report = run(crawl_params("2025-04-10"), paths, USERS)
    assert report.to_metrics()["totals"]["recount_requests"] > 0
    run(crawl_params("2025-04-10"), once, USERS)
    t_paused, _ = tables_and_datasets(paths)
    t_once, _ = tables_and_datasets(once)
    assert {c: r["likes"] for c, r in t_paused.items()} == {c: r["likes"] for c, r in t_once.items()}


_KILLER = r"""
import os, signal, sys
from pathlib import Path
import imgrate.crawl.stage as stage
from imgrate.params import CrawlParams, DemoParams
from imgrate.paths import Paths

where, nth, root, until = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
calls = [0]

def wrap(original, after):
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if not after and calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if after and calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapped

name, _, moment = where.partition(":")
if name == "commit":
    stage._Committer.commit = wrap(stage._Committer.commit, moment == "after")
else:
    setattr(stage, name, wrap(getattr(stage, name), moment == "after"))
demo = DemoParams(seed=7, start="2025-01-01", until=until, image_size=32, mean_interval_days=2.5)
stage.run(CrawlParams(demo=demo, shard_size=2), Paths(root), USERS)
""".replace("USERS", repr(USERS))


@pytest.mark.parametrize(("where", "nth"), [
    ("read_counts:before", 1), ("read_counts:after", 1), ("read_counts:after", 3),  # reading a user's counts
    ("write_shard:before", 1), ("write_shard:after", 1),  # writing the shard that holds them
    ("commit:before", 2), ("commit:after", 2), ("commit:before", 4),  # moving the stamps on
])
def test_kill_9_during_a_crawl_that_rereads_counts_loses_and_duplicates_nothing(
        tmp_path: Path, where: str, nth: int) -> None:
    clean, killed = Paths(tmp_path / "clean"), Paths(tmp_path / "killed")
    for paths in (clean, killed):
        run(crawl_params("2025-02-08", shard_size=2), paths, USERS)
    run(crawl_params("2025-02-09", shard_size=2), clean, USERS)
    env = {**os.environ, "IMGRATE_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLER, where, str(nth), str(killed.root), "2025-02-09"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert verify_raw(killed).ok, verify_raw(killed).problems[:3]  # what a kill leaves is consistent
    run(crawl_params("2025-02-09", shard_size=2), killed, USERS)  # the next crawl finishes the work
    report = verify_raw(killed)
    assert report.ok, report.problems[:3]
    assert sorted(stored_observations(killed)) == sorted(stored_observations(clean))  # none lost, none twice
    assert stored_observations(clean) and report.observations == len(stored_observations(clean))
    counts = {}
    for paths in (clean, killed):
        export(ExportParams(), paths)
        counts[paths] = {r["shortcode"]: (r["likes"], r["likes_hidden"], r["comments"], r["likes_observed_at"])
                         for r in read_jsonl(paths.posts_table)}
    assert counts[killed] == counts[clean]


# ---- hidden like counts and targets


@pytest.mark.parametrize("target", TARGETS)
def test_hidden_likes_never_reach_the_dataset_and_every_target_is_finite(tiny_hidden: Paths, target: str) -> None:
    paths = tiny_hidden
    table = {p["shortcode"]: p for p in read_jsonl(paths.posts_table)}
    hidden = {c for c, p in table.items() if p["likes_hidden"]}
    assert {table[c]["user"] for c in hidden} >= {"hidden_charlie_demo"}
    assert all(table[c]["likes"] is None for c in hidden)
    metrics = preprocess(PreprocessParams(size=16, target=target, max_posts_per_user=None), paths)
    index = read_jsonl(paths.dataset_index)
    assert index and not {r["shortcode"] for r in index} & hidden
    assert all(math.isfinite(r["target"]) for r in index)
    assert "hidden_charlie_demo" not in {r["user"] for r in index}
    assert metrics["users_likes_hidden"] == ["hidden_charlie_demo"]
    assert metrics["likes_hidden"] == sum(1 for c in hidden if table[c].get("member"))
    if target == "max_ratio":
        for user in {r["user"] for r in index}:
            assert max(r["target"] for r in index if r["user"] == user) == pytest.approx(1.0)
    if target in ("max_ratio", "percentile"):
        assert all(0.0 <= r["target"] <= 1.0 for r in index)
    images = np.load(paths.images_array(16), mmap_mode="r")
    assert images.shape[0] == len(index)


def test_min_age_days_holds_back_posts_read_young_until_read_again(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    run(crawl_params("2025-02-10"), paths, USERS)
    export(ExportParams(), paths)
    first = preprocess(PreprocessParams(size=16, max_posts_per_user=None, min_age_days=3), paths)
    young = {p["shortcode"] for p in read_jsonl(paths.posts_table)
             if not p["likes_hidden"] and p["member"] and p["age_at_observation_days"] < 3}
    assert first["too_young"] == len(young) > 0
    assert not young & {r["shortcode"] for r in read_jsonl(paths.dataset_index)}
    assert preprocess(PreprocessParams(size=16, max_posts_per_user=None, min_age_days=0), paths)["too_young"] == 0
    run(crawl_params("2025-02-14"), paths, USERS)  # four days later: read again, old enough now
    export(ExportParams(), paths)
    second = preprocess(PreprocessParams(size=16, max_posts_per_user=None, min_age_days=3), paths)
    assert young <= {r["shortcode"] for r in read_jsonl(paths.dataset_index)}
    assert second["decoded"] < second["kept"]  # the held-back images were decoded the first time


@pytest.fixture
def tiny_hidden(tmp_path: Path) -> Paths:
    paths = Paths(tmp_path)
    run(crawl_params("2025-03-01"), paths, USERS)
    export(ExportParams(), paths)
    return paths


# ---- DVC


@pytest.mark.slow
def test_a_no_op_repro_after_a_re_reading_crawl_leaves_git_clean(project: Path) -> None:
    (project / "users.txt").write_text("\n".join(USERS) + "\n")
    params = tiny_params()
    params["crawl"]["demo"]["until"] = "2025-02-10"
    write_params(project, params)
    dvc(project, "repro", "preprocess")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "first crawl")
    params["crawl"]["demo"]["until"] = "2025-02-11"  # a day later: counts re-read, observations stored
    write_params(project, params)
    out = dvc(project, "repro", "preprocess").stdout
    assert "Running stage 'export'" in out and "Running stage 'preprocess'" in out
    crawl = json.loads((project / "reports/crawl.json").read_text())
    assert crawl["totals"]["observations"] > 0
    assert json.loads((project / "reports/preprocess.json").read_text())["likes_hidden"] > 0
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "a day later")
    raw = tree_digest(project / "data/raw")
    out = dvc(project, "repro", "preprocess").stdout  # the same clock again: nothing new
    assert "Running stage 'export'" not in out and "Running stage 'preprocess'" not in out
    assert tree_digest(project / "data/raw") == raw
    # the crawl's metrics and report describe the crawl that last changed data/raw: a crawl
    # that finds nothing leaves them, and git, as they were
    assert json.loads((project / "reports/crawl.json").read_text()) == crawl
    assert git(project, "status", "--porcelain").stdout == ""
    out = dvc(project, "repro", "preprocess").stdout
    assert "Running stage 'export'" not in out and tree_digest(project / "data/raw") == raw
    assert git(project, "status", "--porcelain").stdout == ""


def test_mongodb_holds_hidden_likes_as_null_and_ranks_only_shown_ones(tiny_hidden: Paths, mongo_uri: str,
                                                                      mongo_db) -> None:
    from imgrate.mongo import MongoSink, extreme_posts

    sink = MongoSink(uri=mongo_uri, database=mongo_db.name, shards_dir=tiny_hidden.shards)
    export(ExportParams(), tiny_hidden, sinks=[sink])
    hidden = list(mongo_db.posts.find({"likes_hidden": True}))
    assert hidden and all(d["likes"] is None for d in hidden)
    assert {d["user"] for d in hidden} >= {"hidden_charlie_demo"}
    shown = mongo_db.posts.find_one({"likes_hidden": False})
    assert isinstance(shown["likes"], int) and shown["age_at_observation_days"] >= 0 and shown["likes_observed_at"]
    for which in ("top", "bottom"):
        ranked = extreme_posts(mongo_uri, mongo_db.name, n=100, which=which)
        assert ranked and all(r["likes"] is not None for r in ranked), which
