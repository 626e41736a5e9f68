"""The one boundary for untrusted metadata: traversal shortcodes and usernames, badly typed
fields, odd member names and an xz bomb are rejected and counted, the same way by verify
and by export, and never reach the tables or a path."""

from __future__ import annotations

import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from imgrate.crawl.metadata import (
    MAX_METADATA_BYTES,
    BadMetadata,
    PostMeta,
    ProfileMeta,
    decompress,
    is_shortcode,
    is_username,
    member_kind,
    parse_member,
)
from imgrate.crawl.shards import list_shards, pack_shard, shard_meta
from imgrate.crawl.verify import verify_raw
from imgrate.export import run_stage as export
from imgrate.io import read_jsonl
from imgrate.params import ExportParams, PreprocessParams
from imgrate.paths import Paths
from imgrate.preprocess import run_stage as preprocess

from conftest import repack_shard


# ---- the rules


@pytest.mark.parametrize("code", ["DEVz5JhDtNg", "B-_a9", "A"])
def test_shortcodes_are_base64url(code: str) -> None:
    assert is_shortcode(code)


@pytest.mark.parametrize("code", ["../../../../tmp/x", "a/b", "", "a b", "x" * 65, "é", {"a": 1}, 12, None, "a\n"])
def test_other_shortcodes_are_rejected(code: Any) -> None:
    assert not is_shortcode(code)


@pytest.mark.parametrize("name", ["../../x", "..", ".", "a" * 31, "a/b", "", "a-b", "ü", 7, None])
def test_usernames_follow_instagram(name: Any) -> None:
    assert not is_username(name)
    assert is_username("alpha_lens.demo") and is_username("a" * 30)


@pytest.mark.parametrize("name", ["../x/2025-01-01_00-00-00_UTC.json.xz", "/abs/2025-01-01_00-00-00_UTC.jpg",
                                  "a/../2025-01-01_00-00-00_UTC.jpg", "alpha/x.json.xz", "alpha/sub/f.jpg",
                                  "alpha/2025-01-01_00-00-00_UTC.sh", "alpha/beta_1.json.xz"])
def test_member_names_outside_instaloaders_layout_are_not_used(name: str) -> None:
    assert member_kind(name) is None
    with pytest.raises(BadMetadata, match="bad member name"):
        parse_member(name, lzma.compress(b"{}"))


# ---- bad posts in a shard: verify and export agree, counted with shard and member


def _node_set(node: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value


# (what was done, the fields set on the node, the export reason)
BAD_POSTS = [
    ("traversal shortcode", {"shortcode": "../../../../tmp/x", "code": "../../../../tmp/x"}, "bad field 'shortcode'"),
    ("traversal user", {"owner.username": "../../x", "user.username": "../../x"}, "bad field 'user'"),
    ("timestamp not an int", {"taken_at_timestamp": "notanint", "taken_at": "notanint"}, "bad field 'timestamp'"),
    ("shortcode an object", {"shortcode": {"a": 1}}, "bad field 'shortcode'"),
    ("likes a word", {"edge_media_preview_like.count": "many", "like_count": "many"}, "bad field 'likes'"),
    ("likes a boolean", {"edge_media_preview_like.count": True, "like_count": True}, "bad field 'likes'"),
    ("likes negative", {"edge_media_preview_like.count": -5, "like_count": -5}, "bad field 'likes'"),
    ("unknown type", {"__typename": "GraphEvil"}, "bad field 'typename'"),
]


@pytest.fixture(scope="module")
def bad_world(tiny_world, tmp_path_factory: pytest.TempPathFactory) -> tuple[Paths, dict[str, str], dict[str, str]]:
    """The tiny world with one shard holding each bad post of BAD_POSTS, a profile with a
    traversal username, and a member named outside Instaloader's layout."""
    _, good = tiny_world
    paths = Paths(tmp_path_factory.mktemp("bad-world"))
    shutil.copytree(good.raw, paths.raw)
    shard = list_shards(paths.shards)[0]
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    posts = sorted(n for n in members if n.endswith("_UTC.json.xz"))
    profile = next(n for n in members if n.endswith(".json.xz") and not n.endswith("_UTC.json.xz"))
    assert len(posts) >= len(BAD_POSTS)
    replace, expected = {}, {}
    for name, (_, fields, reason) in zip(posts, BAD_POSTS):
        doc = json.loads(lzma.decompress(members[name]))
        for dotted, value in fields.items():
            _node_set(doc["node"], dotted, value)
        replace[name] = lzma.compress(json.dumps(doc).encode())
        expected[name] = reason
    doc = json.loads(lzma.decompress(members[profile]))
    doc["node"]["username"] = "../x"
    replace[profile] = lzma.compress(json.dumps(doc).encode())
    expected[profile] = "bad field 'username'"
    repack_shard(shard, replace)
    evil = "../../evil/2025-01-01_00-00-00_UTC.json.xz"
    meta = shard_meta(shard)
    pack_shard(paths.shards / "000090.tar", [(evil, members[posts[-1]], 0)], meta)
    export(ExportParams(), paths)
    return paths, expected, {"000090.tar": evil}


def test_bad_posts_are_skipped_and_counted_with_shard_and_member(bad_world) -> None:
    paths, expected, odd = bad_world
    skipped = read_jsonl(paths.skipped_table)
    got = {s["member"]: s["reason"] for s in skipped if s["shard"] == "000001.tar"}
    assert got == expected
    assert [(s["shard"], s["member"]) for s in skipped if s["shard"] in odd] == list(odd.items())
    report = json.loads(paths.stage_report("export").read_text())
    assert report["posts_skipped"] == len(expected) + len(odd)
    posts = read_jsonl(paths.posts_table)
    users = read_jsonl(paths.users_table)
    assert all(is_shortcode(p["shortcode"]) and is_username(p["user"]) for p in posts)
    assert all(is_username(u["username"]) for u in users)
    assert not any(".." in json.dumps(row) for row in posts + users)


def test_verify_names_the_same_bad_posts_as_export(bad_world) -> None:
    paths, expected, odd = bad_world
    report = verify_raw(paths)  # no crash on any of them
    bad = {p.where.split(":", 1)[1]: p for p in report.problems if p.kind == "bad_metadata"}
    assert set(bad) == set(expected)
    for member, reason in expected.items():
        assert bad[member].detail.startswith(reason)
    assert [(p.kind, p.where) for p in report.problems if p.kind == "bad_member"] == [
        ("bad_member", f"{shard}:{name}") for shard, name in odd.items()]
    exported = {s["member"] for s in read_jsonl(paths.skipped_table)}
    assert {p.where.split(":", 1)[1] for p in report.problems if p.kind in ("bad_metadata", "bad_member")} == exported


def test_bad_posts_never_reach_the_dataset(bad_world, tmp_path: Path) -> None:
    paths, _, _ = bad_world
    local = Paths(tmp_path)
    shutil.copytree(paths.raw, local.raw)
    shutil.copytree(paths.tables, local.tables)
    preprocess(PreprocessParams(max_posts_per_user=None), local)
    rows = read_jsonl(local.dataset_index)
    assert rows and all(is_shortcode(r["shortcode"]) and is_username(r["user"]) for r in rows)


def test_good_metadata_parses_to_typed_records(tiny_world) -> None:
    _, paths = tiny_world
    shard = list_shards(paths.shards)[0]
    with tarfile.open(shard) as tar:
        records = [parse_member(m.name, tar.extractfile(m).read()) for m in tar.getmembers()
                   if m.name.endswith(".json.xz")]
    posts = [r for r in records if isinstance(r, PostMeta)]
    assert posts and any(isinstance(r, ProfileMeta) for r in records)
    assert all(type(p.likes) is int and type(p.timestamp) is int and is_shortcode(p.shortcode) for p in posts)


# ---- the xz bomb


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = buf[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i


def xz_bomb(total: int, block: int = 16 << 20) -> bytes:
    """A valid .xz of ``total`` zero bytes, built in well under a second: one compressed
    block of zeros repeated (xz blocks are independent), with the index rebuilt to match."""
    one = lzma.compress(b"\0" * block, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE)
    header, footer = one[:12], one[-12:]
    index_size = (struct.unpack("<I", footer[4:8])[0] + 1) * 4
    index, body = one[-12 - index_size:-12], one[12:-12 - index_size]
    count, i = _read_varint(index, 1)
    unpadded, i = _read_varint(index, i)
    assert count == 1 and _read_varint(index, i)[0] == block
    n = total // block
    idx = bytearray(b"\0" + _varint(n) + (_varint(unpadded) + _varint(block)) * n)
    idx += b"\0" * (-len(idx) % 4)
    idx += struct.pack("<I", zlib.crc32(idx))
    tail = struct.pack("<I", len(idx) // 4 - 1) + footer[8:10]
    return header + body * n + bytes(idx) + struct.pack("<I", zlib.crc32(tail)) + tail + b"YZ"


def test_the_bomb_is_real() -> None:
    bomb = xz_bomb(64 << 20, block=4 << 20)  # the same construction, small enough to inflate here
    assert len(lzma.decompress(bomb)) == 64 << 20
    with pytest.raises(BadMetadata, match="metadata too large"):
        decompress(bomb)


_CHILD = r"""
import json, resource, sys
from pathlib import Path
from imgrate.crawl.verify import verify_raw
from imgrate.export import parse_shard
from imgrate.paths import Paths

def vm_bytes():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

bound = vm_bytes() + (256 << 20)  # what the process holds now, plus 256 MiB
resource.setrlimit(resource.RLIMIT_AS, (bound, bound))
paths = Paths(Path(sys.argv[1]))
out = {}
try:  # the control: inflating the bomb whole does not fit under the bound
    import lzma
    lzma.decompress(open(sys.argv[2], "rb").read())
    out["control"] = "inflated"
except MemoryError:
    out["control"] = "MemoryError"
report = verify_raw(paths)
out["verify"] = [p.__dict__ for p in report.problems]
out["export"] = parse_shard(paths.shards / "000001.tar").skipped
print(json.dumps(out))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to measure the bound")
def test_an_xz_bomb_is_skipped_under_a_small_memory_bound(tmp_path: Path) -> None:
    """A 2 GiB xz bomb (about 310 KB) as a post's metadata: verify and export read at most
    MAX_METADATA_BYTES of it, in a process allowed 256 MiB more than it holds at the start."""
    bomb = xz_bomb(2 << 30)
    assert len(bomb) < 400_000
    (tmp_path / "bomb.xz").write_bytes(bomb)
    paths = Paths(tmp_path / "project")
    name = "alpha_lens_demo/2025-01-01_00-00-00_UTC.json.xz"
    pack_shard(paths.shards / "000001.tar", [(name, bomb, 0)], {"crawled_at": "2025-02-01T00:00:00+00:00"})
    env = {**os.environ, "IMGRATE_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(paths.root), str(tmp_path / "bomb.xz")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["control"] == "MemoryError"
    assert [(p["kind"], p["where"]) for p in out["verify"] if p["kind"] != "stamp"] == [
        ("bad_metadata", f"000001.tar:{name}")]
    assert "metadata too large" in out["verify"][0]["detail"]
    assert out["export"] == [{"shard": "000001.tar", "member": name, "reason": "metadata too large"}]
    assert MAX_METADATA_BYTES < 256 << 20


def test_the_crawler_leaves_out_a_post_whose_metadata_is_not_valid(tiny_world, tmp_path: Path) -> None:
    """Instagram's answers cross the same boundary before they go into a shard."""
    from imgrate.crawl.stage import _group_files

    _, paths = tiny_world
    shard = list_shards(paths.shards)[0]
    with tarfile.open(shard) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    user = next(iter(members)).split("/")[0]
    metas = sorted(n for n in members if n.startswith(user) and n.endswith("_UTC.json.xz"))[:2]
    user_dir = tmp_path / user
    user_dir.mkdir()
    for name in metas:
        data = members[name]
        if name == metas[1]:
            doc = json.loads(lzma.decompress(data))
            doc["node"]["shortcode"] = doc["node"]["code"] = "../../../../tmp/x"
            data = lzma.compress(json.dumps(doc).encode())
        (tmp_path / name).write_bytes(data)
    groups, bad, rejected = _group_files(user, sorted(user_dir.iterdir()), user_dir, set())
    assert [[f.arcname for f in g] for g in groups] == [[metas[0]]]
    assert bad == [] and len(rejected) == 1 and metas[1] in rejected[0] and "shortcode" in rejected[0]
