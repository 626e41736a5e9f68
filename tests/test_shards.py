"""Shards that check themselves: the manifest, and every way a shard is found damaged.

The breaks of issue 13, reproduced on a tiny world: 1 KiB zeroed at a member header (the tar
reader takes it for the end of the archive), a file cut at a member header or inside a
member, a member altered. Each is named by `imgrate verify` (exit 1), skipped by export and
preprocess, and its posts are crawled again. Shards written before manifests still read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgrate.cli import app
from imgrate.crawl.stage import run
from imgrate.crawl.stamps import merged_stamps, post_timestamp
from imgrate.crawl.verify import verify_raw
from imgrate.demo.world import DemoWorld
from imgrate.export import build_tables
from imgrate.export import run_stage as export
from imgrate.io import read_jsonl
from imgrate.params import CrawlParams, DemoParams, ExportParams, PreprocessParams
from imgrate.paths import Paths
from imgrate.preprocess import run_stage as preprocess
from imgrate.shards import (
    ShardDamaged,
    check_shard,
    iter_members,
    list_shards,
    read_manifest,
    salvage,
    shard_meta,
)

USERS = ["alpha_lens_demo", "bravo_frames_demo", "charlie_grain_demo"]


def crawl_params(until: str = "2025-02-20") -> CrawlParams:
    demo = DemoParams(seed=7, start="2025-01-01", until=until, image_size=40, mean_interval_days=3.0)
    return CrawlParams(demo=demo, shard_size=6)


def world_codes(params: CrawlParams) -> set[str]:
    world = DemoWorld(USERS, params.demo)
    return {p.shortcode for u in USERS for p in world.posts(u)}


def members_of(shard: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(shard) as tar:
        return [m for m in tar.getmembers() if m.isfile()]


def zero_header(shard: Path, k: int) -> str:
    """Zero 1 KiB at the header of the k-th member; return that member's name."""
    member = members_of(shard)[k]
    with open(shard, "r+b") as fh:
        fh.seek(member.offset)
        fh.write(b"\0" * 1024)
    return member.name


def cut_at_header(shard: Path, k: int) -> str:
    member = members_of(shard)[k]
    with open(shard, "r+b") as fh:
        fh.truncate(member.offset)
    return member.name


def cut_inside(shard: Path, k: int) -> str:
    member = members_of(shard)[k]
    with open(shard, "r+b") as fh:
        fh.truncate(member.offset_data + member.size // 2)
    return member.name


def alter(shard: Path, k: int) -> str:
    """Flip one byte inside the k-th member's data (sizes unchanged)."""
    member = members_of(shard)[k]
    with open(shard, "r+b") as fh:
        fh.seek(member.offset_data + member.size // 2)
        byte = fh.read(1)
        fh.seek(-1, io.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    return member.name


def old_format_copy(shard: Path, dest: Path) -> Path:
    """The same members as a shard written before manifests (PAX header without them)."""
    meta = {f"imgrate.{k}": v for k, v in shard_meta(shard).items()}
    with tarfile.open(shard) as src, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT, pax_headers=meta) as dst:
        for m in src.getmembers():
            m.uname = m.gname = ""  # as written before manifests
            dst.addfile(m, src.extractfile(m))
    return dest


@pytest.fixture(scope="module")
def crawled(tmp_path_factory: pytest.TempPathFactory) -> Paths:
    paths = Paths(tmp_path_factory.mktemp("crawled"))
    run(crawl_params(), paths, USERS)
    return paths


def test_every_new_shard_carries_a_manifest_of_what_it_holds(crawled: Paths) -> None:
    shards = list_shards(crawled.shards)
    assert len(shards) >= 4
    for shard in shards:
        manifest = read_manifest(shard)
        assert manifest is not None
        members = members_of(shard)
        assert list(manifest.members) == [m.name for m in members], "the manifest covers every member, in order"
        with tarfile.open(shard) as tar:
            for m in members:
                data = tar.extractfile(m).read()
                assert manifest.members[m.name] == (len(data), hashlib.sha256(data).hexdigest())
        assert manifest.posts == sum(1 for m in members if m.name.endswith("_UTC.json.xz")) > 0
        assert check_shard(shard).ok
    # GNU tar reads it as a plain archive: Instaloader's layout, no manifest file among the members
    listing = subprocess.run(["tar", "tf", str(shards[0])], capture_output=True, text=True, check=True)
    assert listing.stdout.split() == [m.name for m in members_of(shards[0])] and not listing.stderr


@pytest.mark.parametrize("damage", [zero_header, cut_at_header, cut_inside, alter])
@pytest.mark.parametrize("fmt", ["manifest", "old"])
def test_each_kind_of_damage_is_noticed_and_names_the_shard(crawled: Paths, tmp_path: Path, damage, fmt) -> None:
    src = list_shards(crawled.shards)[0]
    shard = tmp_path / src.name
    if fmt == "old":
        old_format_copy(src, shard)
        assert read_manifest(shard) is None
        assert [n for n, _ in iter_members(shard)] == [n for n, _ in iter_members(src)]  # still reads
    else:
        shutil.copy(src, shard)
    n_members = len(members_of(shard))
    k = n_members // 2 if damage is not alter else next(
        i for i, m in enumerate(members_of(shard)) if m.name.endswith(".json.xz"))
    victim = damage(shard, k)
    check = check_shard(shard)
    if fmt == "old" and damage is alter:
        # without a manifest an altered byte shows only when the file no longer decodes: verify's
        # file checks (test_metadata) catch that; the shard itself reads to its end
        assert check.ok
        return
    assert not check.ok, f"{damage.__name__} went unnoticed"
    with pytest.raises(ShardDamaged) as err:
        list(iter_members(shard))
    message = str(err.value)
    assert message.startswith(f"shard {shard.name} is damaged: ") and "\n" not in message
    if fmt == "manifest":
        assert victim in message  # the first member that is missing, cut or altered
        assert len(check.members) == n_members  # the manifest still says what the shard held
    elif damage is cut_inside:
        assert victim in message


def test_a_lost_manifest_is_noticed_and_a_shard_that_is_no_tar_is_skipped(crawled: Paths, tmp_path: Path) -> None:
    """Zeroing the manifest's text leaves a tar file that reads to its end; the owner name in
    each member's header still says a manifest belongs to it. A file that is no tar file at
    all is named, and export (not strict) skips it like any damaged shard."""
    paths = Paths(tmp_path)
    shutil.copytree(crawled.raw, paths.raw)
    shards = list_shards(paths.shards)
    with tarfile.open(shards[0]) as tar:
        start = tar.firstmember.offset  # the PAX global header and its data come before it
    with open(shards[0], "r+b") as fh:
        fh.seek(512)
        fh.write(b"\0" * (start - 512))
    assert read_manifest(shards[0]) is None and not check_shard(shards[0]).ok
    (paths.shards / "000099.tar").write_bytes(b"not a tar file at all " * 100)
    kinds = {p.where: p.kind for p in verify_raw(paths).problems if p.where.endswith(".tar")}
    assert kinds == {shards[0].name: "damaged_shard", "000099.tar": "unreadable_shard"}
    m = export(ExportParams(), paths)
    assert m["shards_damaged"] == 2 and m["posts"] > 0


def _damage_three(paths: Paths) -> dict[str, str]:
    shards = list_shards(paths.shards)
    return {
        shards[0].name: zero_header(shards[0], 3),
        shards[1].name: cut_at_header(shards[1], 4),
        shards[2].name: cut_inside(shards[2], 2),
    }


def test_zeroed_and_cut_shards_are_named_skipped_and_crawled_again(crawled: Paths, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    params = crawl_params()
    paths = Paths(tmp_path)
    shutil.copytree(crawled.raw, paths.raw)
    full = export(ExportParams(), paths)
    expected = world_codes(params)
    assert full["posts"] == len(expected) and full["shards_damaged"] == 0
    preprocess(PreprocessParams(max_posts_per_user=None), paths)
    manifests = {s.name: read_manifest(s) for s in list_shards(paths.shards)}
    damaged = _damage_three(paths)
    lost = sum(manifests[name].posts for name in damaged)

    # preprocess, on a posts table written before the damage: the shards' posts are skipped
    m = preprocess(PreprocessParams(max_posts_per_user=None), paths)
    assert m["shards_damaged"] == 3
    assert {r["shard"] for r in read_jsonl(paths.dataset_index)}.isdisjoint(damaged)

    # imgrate verify names each damaged shard, exit 1
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("IMGRATE_ROOT", raising=False)
    result = CliRunner().invoke(app, ["verify", "--json"])
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    named = {p["where"]: p["detail"] for p in problems if p["kind"] == "damaged_shard"}
    assert set(named) == set(damaged)
    for shard, victim in damaged.items():
        assert victim in named[shard] and "fetches them again" in named[shard]
    assert CliRunner().invoke(app, ["verify"]).exit_code == 1

    # export skips them whole (strict: fails naming the shard)
    m = export(ExportParams(), paths)
    assert m["shards_damaged"] == 3 and m["posts"] == len(expected) - lost
    skipped = [s for s in read_jsonl(paths.skipped_table) if s["member"] is None]
    assert sorted(s["shard"] for s in skipped) == sorted(damaged)
    with pytest.raises(ShardDamaged, match=rf"shard {list(damaged)[0]} is damaged"):
        build_tables(list_shards(paths.shards), tmp_path / "strict-cache", strict=True)

    # the next crawl takes the stamps back and fetches the lost posts again, once
    before = merged_stamps(paths.raw)
    report = run(params, paths, USERS)
    assert sorted(report.damaged) == sorted(damaged)
    assert report.stamps_lowered and report.new_posts == lost
    after = merged_stamps(paths.raw)
    assert all(post_timestamp(after, u) == post_timestamp(before, u) for u in USERS)  # back where it was
    m = export(ExportParams(), paths)
    assert m["posts"] == len(expected) and {r["shortcode"] for r in read_jsonl(paths.posts_table)} == expected
    again = run(params, paths, USERS)  # the lost posts are held by intact shards now: nothing more to fetch
    assert again.new_posts == 0 and again.stamps_lowered == [] and sorted(again.damaged) == sorted(damaged)

    # verify keeps naming the damaged shards until they are removed; then all is well
    assert {p.where for p in verify_raw(paths).problems} == set(damaged)
    for name in damaged:
        (paths.shards / name).unlink()
    report = verify_raw(paths)
    assert report.ok and report.posts == len(expected)


def test_a_cut_old_shard_is_named_not_a_traceback(crawled: Paths, tmp_path: Path) -> None:
    """An old shard (no manifest) cut inside a member: export (not strict) skips it, and strict
    export and the crawl fail or go on with one line naming it."""
    paths = Paths(tmp_path)
    shutil.copytree(crawled.raw, paths.raw)
    shard = list_shards(paths.shards)[1]
    tmp = tmp_path / "old.tar"
    old_format_copy(shard, tmp)
    shutil.move(tmp, shard)
    victim = cut_inside(shard, 3)
    m = export(ExportParams(), paths)
    assert m["shards_damaged"] == 1
    with pytest.raises(ShardDamaged) as err:
        build_tables(list_shards(paths.shards), tmp_path / "c", strict=True)
    assert str(err.value).count("\n") == 0 and shard.name in str(err.value) and victim in str(err.value)
    report = run(crawl_params(), paths, USERS)
    assert report.damaged == [shard.name] and report.new_posts > 0
    assert {r["shortcode"] for r in read_jsonl(paths.posts_table)} <= world_codes(crawl_params())
    assert dataclasses.asdict(report.users[0])["status"] == "ok"


# --- issue 20: a damaged manifest still names every post; 0 lost -------------------------------


@pytest.fixture(scope="module")
def two_crawls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Paths, list[str]]:
    """A world crawled twice (the first crawl's shards are earlier than the second's); the
    names of the second crawl's shards."""
    paths = Paths(tmp_path_factory.mktemp("two-crawls"))
    run(crawl_params("2025-02-01"), paths, USERS)
    second = run(crawl_params(), paths, USERS).shards
    assert len(second) >= 2
    return paths, second


def zero_start(shard: Path) -> None:
    """Zero the first KiB: the PAX header that holds the manifest, and the start of its text."""
    with open(shard, "r+b") as fh:
        fh.write(b"\0" * 1024)


def cut_in_manifest(shard: Path) -> None:
    """Cut the file halfway through the manifest's text: no member header survives."""
    with tarfile.open(shard) as tar:
        first = tar.firstmember.offset
    with open(shard, "r+b") as fh:
        fh.truncate(first // 2)


def zero_manifest_and_a_member(shard: Path) -> None:
    """Zero the manifest's text and a member header in the middle: both sources are partial."""
    with tarfile.open(shard) as tar:
        first = tar.firstmember.offset
    zero_header(shard, len(members_of(shard)) // 2)
    with open(shard, "r+b") as fh:
        fh.seek(512)
        fh.write(b"\0" * (first - 512))


@pytest.mark.parametrize("damage", [zero_start, cut_in_manifest, zero_manifest_and_a_member])
def test_a_damaged_manifest_loses_no_post(two_crawls: tuple[Paths, list[str]], tmp_path: Path, damage) -> None:
    """Issue 20: zeroing a shard's first KiB, or cutting it inside its manifest, lost its posts
    for good ("cannot be named"). Now every member header that survives is read one by one, so
    is whatever survives of the manifest's text; the posts they name are fetched again, and the
    users whose posts nothing names are walked again from before the shard's crawl: 0 lost,
    and only once."""
    src, second = two_crawls
    paths = Paths(tmp_path)
    shutil.copytree(src.raw, paths.raw)
    expected = world_codes(crawl_params())
    victim = paths.shards / second[0]
    posts = read_manifest(victim).posts
    held = [m.name for m in members_of(victim)]
    damage(victim)
    check = check_shard(victim)
    assert not check.ok
    if damage is zero_start:  # every member header survives, and the manifest's end says where they start
        assert check.complete and sorted(check.members) == sorted(held)
    elif damage is cut_in_manifest:  # the manifest's first entries survive, nothing else
        assert not check.complete and 0 < len(check.members) < len(held) and set(check.members) <= set(held)
        assert check.crawled_at is not None  # the header's facts come before the manifest
    assert export(ExportParams(), paths)["posts"] == len(expected) - posts

    first = run(crawl_params(), paths, USERS)
    assert first.damaged == [victim.name] and first.stamps_lowered and first.new_posts == posts
    export(ExportParams(), paths)
    assert {r["shortcode"] for r in read_jsonl(paths.posts_table)} == expected  # 0 lost

    again = run(crawl_params(), paths, USERS)  # once: the stamps remember the shard was walked again
    assert again.new_posts == 0 and again.stamps_lowered == []
    assert again.requests <= first.requests and again.requests == run(crawl_params(), paths, USERS).requests


def test_salvage_names_a_cut_manifest_prefix_and_the_users_it_cannot_vouch_for(
        two_crawls: tuple[Paths, list[str]], tmp_path: Path) -> None:
    src, second = two_crawls
    shard = tmp_path / second[0]
    shutil.copy(src.shards / second[0], shard)
    held = [m.name for m in members_of(shard)]
    users = sorted({n.split("/", 1)[0] for n in held})
    cut_in_manifest(shard)
    found = salvage(shard)
    assert found.names == held[: len(found.names)] and not found.complete
    assert found.covered == [(None, found.names[-1])]  # everything up to the last name that survives
    last_user = found.names[-1].split("/", 1)[0]
    check = check_shard(shard)
    assert not check.user_known(last_user)  # its later posts may be lost
    assert all(check.user_known(u) for u in users if u < last_user)
    assert not any(check.user_known(u) for u in USERS if u > last_user)
