"""Forged shard data (issue 20): what a shard says is checked against the shard that carries
it. Each forgery is named by ``imgrate verify`` (exit 1, shard and member) and never overrides
real data: the first stored copy of a post keeps its identity, and its counts are those of its
latest *plausible* observation."""

from __future__ import annotations

import datetime as dt
import json
import lzma
import shutil
import statistics
import tarfile
from pathlib import Path

import pytest
from conftest import ROOT
from typer.testing import CliRunner

from imgrate.cli import app
from imgrate.crawl.observations import render_counts, stored_facts
from imgrate.crawl.stage import run
from imgrate.export import run_stage as export
from imgrate.io import read_jsonl
from imgrate.metadata import PLAUSIBLE, Observation, counts_member_name
from imgrate.params import CrawlParams, DemoParams, ExportParams, PreprocessParams
from imgrate.paths import Paths
from imgrate.preprocess import run_stage as preprocess
from imgrate.shards import FORMAT_KEY, MANIFEST_KEY, PAX_PREFIX, list_shards, pack_shard, read_ledger, shard_meta

USERS = ["alpha_lens_demo", "bravo_frames_demo", "charlie_grain_demo"]


def crawl_params() -> CrawlParams:
    demo = DemoParams(seed=11, start="2025-01-01", until="2025-02-20", image_size=40, mean_interval_days=3.0)
    return CrawlParams(demo=demo, shard_size=8)


@pytest.fixture(scope="module")
def crawled(tmp_path_factory: pytest.TempPathFactory) -> Paths:
    paths = Paths(tmp_path_factory.mktemp("crawled"))
    (paths.root / "users.txt").write_text("\n".join(USERS) + "\n")
    shutil.copy(ROOT / "params.yaml", paths.root / "params.yaml")
    run(crawl_params(), paths, USERS)
    export(ExportParams(), paths)
    return paths


@pytest.fixture
def world(crawled: Paths, tmp_path: Path) -> Paths:
    """A writable copy of the crawled world, exported."""
    paths = Paths(tmp_path)
    shutil.copytree(crawled.root, tmp_path, dirs_exist_ok=True)
    return paths


def members(shard: Path) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def a_post(paths: Paths) -> tuple[Path, str, dict]:
    """A stored post: its shard, its metadata member, and its row in the tables."""
    row = next(r for r in read_jsonl(paths.posts_table) if r["likes"] is not None and r["user"] == USERS[0])
    shard = paths.shards / row["shard"]
    meta = next(n for n in members(shard) if n.endswith("_UTC.json.xz") and
                json.loads(lzma.decompress(members(shard)[n]))["node"].get("shortcode") == row["shortcode"])
    return shard, meta, row


def verify_cli(paths: Paths, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    monkeypatch.chdir(paths.root)
    monkeypatch.delenv("IMGRATE_ROOT", raising=False)
    result = CliRunner().invoke(app, ["verify", "--json"])
    assert result.exit_code == 1, result.output
    return json.loads(result.stdout)["problems"]


def the_row(paths: Paths, code: str) -> dict:
    return next(r for r in read_jsonl(paths.posts_table) if r["shortcode"] == code)


def forged_counts(paths: Paths, row: dict, observed: dt.datetime, likes: int) -> tuple[str, bytes]:
    ts = int(observed.timestamp())
    o = Observation(row["shortcode"], row["user"], row["timestamp"], ts, likes, row["comments"], False, recount=True)
    return counts_member_name(row["user"], ts), render_counts(row["user"], ts, [o])


def test_counts_observed_after_their_shards_crawl_never_win(world: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    """A counts member dated 2098 in a shard crawled in 2025 won over every real observation
    for good. Now it is named and never used; a shard that claims a crawl in 2098 too is named
    for its clock, and none of it is used."""
    shard, _, row = a_post(world)
    real = row["likes"]
    name, data = forged_counts(world, row, dt.datetime(2098, 12, 30, tzinfo=dt.UTC), 9_999_999)
    pack_shard(world.shards / "000050.tar", [(name, data, 0)], shard_meta(shard))
    future = {**shard_meta(shard), "crawled_at": "2098-12-30T12:00:00+00:00"}
    name2, data2 = forged_counts(world, row, dt.datetime(2098, 12, 30, 11, tzinfo=dt.UTC), 8_888_888)
    pack_shard(world.shards / "000051.tar", [(name2, data2, 0)], future)

    problems = verify_cli(world, monkeypatch)
    kinds = {(p["kind"], p["where"]) for p in problems}
    assert ("forged_observation", f"000050.tar:{name}") in kinds
    assert ("crawl_time", "000051.tar") in kinds
    export(ExportParams(), world)
    assert the_row(world, row["shortcode"])["likes"] == real
    # the crawl: the shard from the future counts as damaged (not used), the other one's counts are left out
    report = run(crawl_params(), world, USERS)
    assert report.damaged == ["000051.tar"]
    intact = [s for s in read_ledger(world.raw).order(list_shards(world.shards)) if s.name not in report.damaged]
    assert stored_facts(intact, world.cache / "counts").posts[row["shortcode"]].likes == real


@pytest.mark.parametrize("where", ["metadata", "counts"])
def test_counts_beyond_the_plausibility_cap_are_named_and_never_squash_targets(
        world: Paths, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """10^12 likes were accepted and squashed the user's targets (median 2e-08)."""
    shard, meta, row = a_post(world)
    huge = 10**12
    if where == "metadata":  # the post's own metadata, in a shard of its own
        doc = json.loads(lzma.decompress(members(shard)[meta]))
        doc["node"]["edge_media_preview_like"] = {"count": huge}
        doc["node"]["shortcode"] = "ForgedPost01"
        name, data = meta, lzma.compress(json.dumps(doc).encode())
    else:  # a re-read of the real post's counts
        name, data = forged_counts(world, row, dt.datetime.fromisoformat(row["crawled_at"]), huge)
    pack_shard(world.shards / "000050.tar", [(name, data, 0)], shard_meta(shard))
    problems = verify_cli(world, monkeypatch)
    hit = [p for p in problems if p["where"] == f"000050.tar:{name}"]
    assert hit and hit[0]["kind"] == "bad_metadata" and f"{PLAUSIBLE['likes']:,}" in hit[0]["detail"]
    export(ExportParams(), world)
    assert max(r["likes"] or 0 for r in read_jsonl(world.posts_table)) <= PLAUSIBLE["likes"]
    assert the_row(world, row["shortcode"])["likes"] == row["likes"]
    preprocess(PreprocessParams(max_posts_per_user=None, min_age_days=0), world)
    targets = [r["target"] for r in read_jsonl(world.dataset_index) if r["user"] == row["user"]]
    assert statistics.median(targets) > 0.01


def test_a_shortcode_already_stored_keeps_its_first_stored_post(world: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hand-made 000000.tar (it sorts first) reusing a stored shortcode replaced the real post.
    The ledger says which shard was stored first: the real one keeps the post."""
    shard, meta, row = a_post(world)
    doc = json.loads(lzma.decompress(members(shard)[meta]))
    doc["node"]["edge_media_preview_like"] = {"count": 123}
    pack_shard(world.shards / "000000.tar", [(meta, lzma.compress(json.dumps(doc).encode()), 0)], shard_meta(shard))
    problems = verify_cli(world, monkeypatch)
    dup = {p["where"]: p["detail"] for p in problems if p["kind"] == "duplicate"}
    assert all(where.startswith("000000.tar:") for where in dup)  # the later stored copy is the duplicate
    post = f"000000.tar:{meta.removesuffix('.json.xz')}"
    assert shard.name in dup[post] and row["shortcode"] in dup[post]
    export(ExportParams(), world)
    kept = the_row(world, row["shortcode"])
    assert kept["shard"] == shard.name and kept["likes"] == row["likes"]
    skipped = [s for s in read_jsonl(world.skipped_table) if s["reason"] == "duplicate shortcode"]
    assert [s["shard"] for s in skipped] == ["000000.tar"]


def forge_manifest(shard: Path, *, extra: list[str] = (), posts: int | None = None) -> None:
    """Rewrite ``shard`` with a manifest that lists ``extra`` members it does not hold, or lies
    about its post count."""
    from imgrate.shards import read_manifest

    manifest = read_manifest(shard)
    meta = {PAX_PREFIX + k: v for k, v in shard_meta(shard).items()}
    entries = [[n, size, sha] for n, (size, sha) in manifest.members.items()]
    entries += [[n, 100, "0" * 64] for n in extra]
    entries.sort()
    doc = {"posts": manifest.posts + sum(n.endswith("_UTC.json.xz") for n in extra) if posts is None else posts,
           "members": entries}
    pax = {**meta, FORMAT_KEY: "2", MANIFEST_KEY: json.dumps(doc, separators=(",", ":"))}
    data = members(shard)
    with tarfile.open(shard) as tar:
        infos = [m for m in tar.getmembers() if m.isfile()]
    shard.unlink()
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT, pax_headers=pax) as out:
        for info in infos:
            import io

            out.addfile(info, io.BytesIO(data[info.name]))


def test_manifest_entries_with_no_member_cost_one_walk_not_one_per_crawl(
        world: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    """A manifest listing members that do not exist lowered the users' stamps on every crawl
    (5,709 requests per crawl instead of 136, forever). Now: named by verify; the crawl walks
    the users again once, then never again."""
    shard = list_shards(world.shards)[1]
    phantom = f"{USERS[0]}/2025-01-01_00-00-01_UTC.json.xz"
    forge_manifest(shard, extra=[phantom])
    posts = len(read_jsonl(world.posts_table))
    problems = verify_cli(world, monkeypatch)
    damaged = [p for p in problems if p["kind"] == "damaged_shard"]
    assert [p["where"] for p in damaged] == [shard.name] and phantom in damaged[0]["detail"]
    baseline = run(crawl_params(), Paths(world.root / "baseline"), USERS)  # a fresh crawl, for scale
    first = run(crawl_params(), world, USERS)
    assert first.stamps_lowered
    second = run(crawl_params(), world, USERS)
    third = run(crawl_params(), world, USERS)
    assert second.stamps_lowered == [] and second.new_posts == 0
    assert second.requests == third.requests < baseline.requests
    export(ExportParams(), world)
    assert len(read_jsonl(world.posts_table)) == posts  # its real posts were fetched again


def test_a_manifest_post_count_that_lies_is_named(world: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    shard = list_shards(world.shards)[0]
    forge_manifest(shard, posts=9999)
    problems = verify_cli(world, monkeypatch)
    damaged = [p for p in problems if p["kind"] == "damaged_shard"]
    assert [p["where"] for p in damaged] == [shard.name] and "9999 posts" in damaged[0]["detail"]


def test_a_foreign_shard_without_a_crawl_time_or_of_an_unlisted_user_is_named(
        world: Paths, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unlisted user's post from a foreign shard entered the tables with crawled_at 1970 and
    an age of -20,090 days. A shard without a crawl time is now not used (its posts cannot be
    dated); one with a crawl time, from a crawler other than this project's, has its posts of
    users outside users.txt named."""
    shard, meta, _ = a_post(world)
    doc = json.loads(lzma.decompress(members(shard)[meta]))
    doc["node"]["owner"]["username"] = "stranger"
    doc["node"]["shortcode"] = "StrangerPost"
    name = "stranger/" + meta.split("/", 1)[1]
    data = lzma.compress(json.dumps(doc).encode())
    pack_shard(world.shards / "000060.tar", [(name, data, 0)], {"source": "elsewhere"})
    pack_shard(world.shards / "000061.tar", [(name, data, 0)], shard_meta(shard))
    problems = verify_cli(world, monkeypatch)
    kinds = {(p["kind"], p["where"]) for p in problems}
    assert ("crawl_time", "000060.tar") in kinds
    assert ("unlisted_user", f"000061.tar:{name.removesuffix('.json.xz')}") in kinds
    export(ExportParams(), world)
    rows = read_jsonl(world.posts_table)
    assert all(r["crawled_at"] > "2020" and r["age_at_observation_days"] >= 0 for r in rows)
    assert [r["shard"] for r in rows if r["shortcode"] == "StrangerPost"] == ["000061.tar"]


def test_escape_sequences_in_member_names_never_reach_the_terminal(world: Paths, monkeypatch: pytest.MonkeyPatch,
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    """Issue 20: escape sequences in shard member names reached the terminal raw from `verify`
    and `export` (ESC[2J and a green "ALL CLEAN", OSC-8 links). Now they show escaped."""
    import logging
    import subprocess
    import sys

    shard = list_shards(world.shards)[0]
    evil = "alpha_lens_demo/\x1b[2J\x1b[32mALL CLEAN\x1b]8;;http://evil.example/\x07link\x1b]8;;\x07\u202e.jpg"
    pack_shard(world.shards / "000070.tar", [(evil, b"not an image", 0)], shard_meta(shard))
    monkeypatch.chdir(world.root)
    monkeypatch.delenv("IMGRATE_ROOT", raising=False)
    result = CliRunner().invoke(app, ["verify"], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    out = result.output + capfd.readouterr().err
    assert "ALL CLEAN" in out and "\\x1b[2J" in out
    assert not any(c in out for c in "\x1b\x07\u202e")
    env = {k: v for k, v in __import__("os").environ.items() if k != "IMGRATE_ROOT"}
    proc = subprocess.run([sys.executable, "-c", "from imgrate.export import main; main()"], cwd=world.root,
                          env={**env, "IMGRATE_QUIET": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ALL CLEAN" in proc.stderr and not any(c in proc.stderr for c in "\x1b\x07\u202e")
    logging.getLogger().handlers.clear()
