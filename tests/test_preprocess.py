"""preprocess: decoding, targets, balance, splits, incremental decoding."""

from __future__ import annotations

import dataclasses
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_USERS
from PIL import Image
from test_images import _encode, _test_image

from imgrate.crawl.stage import run as crawl
from imgrate.errors import DataError
from imgrate.export import run_stage as export
from imgrate.images import load_thumbnail
from imgrate.io import read_jsonl
from imgrate.paths import Paths
from imgrate.preprocess import assign_splits, balance, compute_targets, duplicate_groups, run_stage
from imgrate.shards import read_member


def test_targets_on_a_hand_built_table() -> None:
    likes = np.array([10, 20, 40, 5, 5, 10])
    users = np.array(["a", "a", "a", "b", "b", "b"])
    np.testing.assert_allclose(compute_targets(likes, users, "max_ratio"), [0.25, 0.5, 1, 0.5, 0.5, 1])
    np.testing.assert_allclose(compute_targets(likes, users, "follower_ratio", np.array([100] * 3 + [10] * 3)),
                               [0.1, 0.2, 0.4, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(compute_targets(likes, users, "percentile"), [0, 0.5, 1, 0.25, 0.25, 1])
    z = compute_targets(likes, users, "log_zscore")
    for u in "ab":
        assert abs(z[users == u].mean()) < 1e-9 and abs(z[users == u].std() - 1) < 1e-9


def test_target_edge_cases() -> None:
    likes = np.array([0, 0, 7, 3, 3, 9, 5])
    users = np.array(["zero", "zero", "one", "tie", "tie", "tie", "flat"])
    # a user whose best post has 0 likes divides by 1, not 0
    np.testing.assert_allclose(compute_targets(likes, users, "max_ratio"), [0, 0, 1, 1 / 3, 1 / 3, 1, 1])
    # ties share their average rank; a user with one post sits in the middle
    np.testing.assert_allclose(compute_targets(likes, users, "percentile"), [0.5, 0.5, 0.5, 0.25, 0.25, 1, 0.5])
    # no spread (or one post): 0; else (log1p(likes) - mean) / population sd
    z = compute_targets(likes, users, "log_zscore")
    assert z[[0, 1, 2, 6]].tolist() == [0, 0, 0, 0]
    lx = np.log1p([3, 3, 9])
    np.testing.assert_allclose(z[3:6], (lx - lx.mean()) / lx.std())
    with pytest.raises(DataError):
        compute_targets(likes, users, "follower_ratio")  # needs followers


def test_random_split_is_stable_and_near_8_1_1() -> None:
    rows = [{"shortcode": f"sc{i:05d}", "user": "u", "timestamp": i} for i in range(5000)]
    splits = assign_splits(rows, "random", [0.8, 0.1, 0.1], seed=0)
    share = {s: splits.count(s) / len(rows) for s in ("train", "val", "test")}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["test"] - 0.1) < 0.02
    # adding posts never moves old ones
    more = assign_splits(rows + [{"shortcode": "new", "user": "u", "timestamp": 9999}], "random", [0.8, 0.1, 0.1], 0)
    assert more[:-1] == splits


def test_temporal_and_user_splits() -> None:
    rows = [{"shortcode": f"{u}{i}", "user": u, "timestamp": i} for u in "ab" for i in range(10)]
    t = assign_splits(rows, "temporal", [0.8, 0.1, 0.1], 0)
    assert t[:10] == ["train"] * 8 + ["val", "test"]
    many = [{"shortcode": f"{u}-{i}", "user": f"user{u}", "timestamp": i} for u in range(40) for i in range(3)]
    s = assign_splits(many, "user", [0.8, 0.1, 0.1], 0)
    per_user = {}
    for r, split in zip(many, s):
        per_user.setdefault(r["user"], set()).add(split)
    assert all(len(v) == 1 for v in per_user.values()) and len({x for v in per_user.values() for x in v}) == 3


def test_identical_images_share_the_split_of_the_oldest_post() -> None:
    rows = [{"shortcode": f"sc{i:03d}", "user": "u", "timestamp": i, "sha256": f"h{i}"} for i in range(200)]
    rows.append({"shortcode": "repost", "user": "v", "timestamp": 500, "sha256": "h7"})  # h7 again
    for split in ("random", "temporal", "user"):
        s = assign_splits(rows, split, [0.8, 0.1, 0.1], seed=0)
        assert s[-1] == s[7], split
    assert duplicate_groups(rows) == [[7, 200]]
    # the old post keeps the split it had before the repost appeared
    assert assign_splits(rows, "random", [0.8, 0.1, 0.1], 0)[:200] == assign_splits(rows[:200], "random",
                                                                                     [0.8, 0.1, 0.1], 0)


def test_balance_caps_each_user_stably() -> None:
    rows = [{"shortcode": f"{u}{i}", "user": u} for u in "ab" for i in range(30)] + [{"shortcode": "c0", "user": "c"}]
    kept = balance(rows, 10, seed=0)
    assert [sum(r["user"] == u for r in kept) for u in "abc"] == [10, 10, 1]
    assert kept == balance(rows, 10, seed=0)


def test_dataset_outputs(tiny_world) -> None:
    params, paths = tiny_world
    images = np.load(paths.images_array(50), mmap_mode="r")
    index = read_jsonl(paths.dataset_index)
    meta = json.loads(paths.dataset_meta.read_text())
    assert images.dtype == np.uint8 and images.shape[1:] == (50, 50, 3) and len(index) == images.shape[0]
    assert {r["user"] for r in index} == set(TINY_USERS) and meta["n"] == len(index)
    for user in TINY_USERS:
        assert max(r["target"] for r in index if r["user"] == user) == pytest.approx(1.0)
    metrics = json.loads(paths.stage_metrics("preprocess").read_text())
    assert set(metrics) == {"posts", "kept", "users"}  # the rest in reports/preprocess.json
    report = json.loads(paths.stage_report("preprocess").read_text())
    assert "decoded" not in report and "from_cache" not in report  # cache state: in the run log only
    (run_log,) = sorted(paths.stage_logs("preprocess").glob("*.json"))[-1:]
    run = json.loads(run_log.read_text())
    assert run["posts"] == metrics["posts"] == report["posts"]
    # held back: hidden like counts, and posts read before they were min_age_days old
    assert run["decoded"] + run["from_cache"] + report["likes_hidden"] == report["posts"]
    assert report["too_young"] >= 1 and report["users_likes_hidden"] == []
    assert sum(report["splits"].values()) == metrics["kept"] == len(index)


def test_first_image_of_sidecars_and_no_videos(tiny_world) -> None:
    params, paths = tiny_world
    posts = {p["shortcode"]: p for p in read_jsonl(paths.posts_table)}
    index = read_jsonl(paths.dataset_index)
    images = np.load(paths.images_array(50), mmap_mode="r")
    assert any(p["typename"] == "GraphVideo" for p in posts.values())
    assert all(posts[r["shortcode"]]["typename"] != "GraphVideo" for r in index)
    sidecar = next(r for r in index if posts[r["shortcode"]]["typename"] == "GraphSidecar")
    assert sidecar["member"].endswith("_UTC_1.jpg")
    data = read_member(paths.shards / sidecar["shard"], sidecar["member"])
    assert np.array_equal(images[sidecar["row"]], load_thumbnail(data, 50))


def _rewrite_shard(shard: Path, replace: dict[str, bytes]) -> None:
    """Test only: swap some members' bytes, with a manifest that matches (real shards are
    never rewritten)."""
    from conftest import repack_shard

    repack_shard(shard, replace)


def test_odd_and_corrupt_images_inside_a_shard(tiny_world, tmp_path: Path) -> None:
    """Through export and preprocess: a truncated JPEG is skipped and counted; PNG, CMYK,
    grayscale and EXIF-rotated images are decoded as load_thumbnail decodes them."""
    params, tiny = tiny_world
    paths = Paths(tmp_path)
    shutil.copytree(tiny.raw, paths.raw)
    shard = paths.shards / "000001.tar"
    with tarfile.open(shard) as tar:
        jpgs = sorted(n for n in tar.getnames() if n.endswith(".jpg"))[:5]
    full = _encode(_test_image(400, 400), "JPEG")
    exif = Image.Exif()
    exif[0x0112] = 6
    odd = {
        jpgs[0]: full[: len(full) // 3],  # truncated: the header parses, the pixels do not
        jpgs[1]: _encode(_test_image(), "PNG"),
        jpgs[2]: _encode(_test_image().convert("CMYK"), "JPEG"),
        jpgs[3]: _encode(_test_image().convert("L"), "JPEG"),
        jpgs[4]: _encode(_test_image(), "JPEG", exif=exif.tobytes()),
    }
    _rewrite_shard(shard, odd)
    export(params.export, paths)
    m = run_stage(params.preprocess, paths)
    meta = json.loads(paths.dataset_meta.read_text())
    assert m["skipped"] == 1
    assert m["decoded"] + m["from_cache"] + m["likes_hidden"] == m["posts"]
    assert [(s["shard"], s["member"]) for s in meta["skipped"]] == [("000001.tar", jpgs[0])]
    assert "truncated" in meta["skipped"][0]["reason"] or "cannot decode" in meta["skipped"][0]["reason"]
    index = {r["member"]: r for r in read_jsonl(paths.dataset_index)}
    images = np.load(paths.images_array(50))
    assert jpgs[0] not in index
    assert m["kept"] == len(index) == m["posts"] - 1 - m["likes_hidden"] - m["too_young"]
    for member in jpgs[1:]:
        assert np.array_equal(images[index[member]["row"]], load_thumbnail(odd[member], 50)), member
    again = run_stage(params.preprocess, paths)  # the failure is cached too
    assert (again["decoded"], again["from_cache"], again["skipped"]) == (0, m["decoded"], 1)
    for npy in (paths.cache / "thumbs").glob("*.npy"):  # a damaged cache is rebuilt, not trusted
        npy.unlink()
    rebuilt = run_stage(params.preprocess, paths)
    assert (rebuilt["decoded"], rebuilt["skipped"]) == (m["decoded"], 1)
    assert np.array_equal(np.load(paths.images_array(50)), images)


def test_new_shard_decodes_only_new_images_and_keeps_splits(tmp_path: Path) -> None:
    from conftest import tiny_params

    from imgrate.params import parse_params

    params = parse_params(tiny_params())
    paths = Paths(tmp_path)
    (tmp_path / "users.txt").write_text("\n".join(TINY_USERS))
    crawl(params.crawl, paths)
    export(params.export, paths)
    first = run_stage(params.preprocess, paths)
    old_split = {r["shortcode"]: r["split"] for r in read_jsonl(paths.dataset_index)}
    cache_files = {f.name: f.stat().st_mtime_ns for f in (paths.cache / "thumbs").iterdir()}
    later = dataclasses.replace(params.crawl, demo=dataclasses.replace(params.crawl.demo, until="2025-03-20"))
    report = crawl(later, paths)
    export(params.export, paths)
    second = run_stage(params.preprocess, paths)
    # the old shards' cache files were not rewritten (or even touched): only new ones appeared
    after = {f.name: f.stat().st_mtime_ns for f in (paths.cache / "thumbs").iterdir()}
    assert {k: after[k] for k in cache_files} == cache_files and len(after) > len(cache_files)
    assert report.new_posts > 0
    assert second["from_cache"] == first["decoded"]
    # only the new posts' images (held-back young posts were decoded by the first run already)
    assert second["decoded"] == (second["kept"] + second["too_young"]) - (first["kept"] + first["too_young"])
    new_split = {r["shortcode"]: r["split"] for r in read_jsonl(paths.dataset_index)}
    assert all(new_split[s] == v for s, v in old_split.items())
    # a third run decodes nothing
    assert run_stage(params.preprocess, paths)["decoded"] == 0
    shutil.rmtree(paths.cache / "thumbs")
    assert run_stage(params.preprocess, paths)["decoded"] == second["kept"] + second["too_young"]


def test_a_killed_run_leaves_no_temporary_file_in_the_dataset(tiny_world, tmp_path: Path) -> None:
    """A kill -9 in the rename window leaves .images_50.npy.<random>.tmp inside the DVC output;
    the next run removes it before it writes (issue 13: 530 MB at the paper's scale)."""
    from conftest import copy_world
    from test_io import leftover

    params, tiny = tiny_world
    paths = copy_world(tiny, tmp_path)
    stale = [leftover(paths.images_array(50)), leftover(paths.dataset_index), leftover(paths.dataset_meta),
             leftover(paths.stage_metrics("preprocess"))]
    other = leftover(paths.stage_metrics("evaluate"))  # another stage's: not preprocess's to remove
    run_stage(params.preprocess, paths)
    assert not any(p.exists() for p in stale) and other.exists()
    assert sorted(p.name for p in paths.dataset.iterdir()) == ["images_50.npy", "index.jsonl", "meta.json"]


def test_the_posts_the_balance_drops_follow_the_kept_ones(tiny_world, tmp_path: Path) -> None:
    """With a cap, the paper's dataset (index, splits, images) is the same as if the dropped
    posts did not exist; the dropped ones follow it (``balance: dropped``, splits of their own)
    and load_dataset keeps them apart."""
    from conftest import copy_world

    from imgrate.dataset import load_dataset

    params, tiny = tiny_world
    paths = copy_world(tiny, tmp_path)
    full = load_dataset(paths)
    counts = {u: sum(r["user"] == u for r in full.index) for u in TINY_USERS}
    cap = sorted(counts.values())[len(counts) // 2]  # about half the users lose posts
    run_stage(dataclasses.replace(params.preprocess, max_posts_per_user=cap), paths)
    data = load_dataset(paths)
    assert data.meta["n"] == len(data.index) and data.images.shape[0] == len(data.index) + len(data.dropped)
    assert all(r["balance"] == "dropped" for r in data.dropped) and data.dropped
    assert all("balance" not in r for r in data.index)
    assert {u: sum(r["user"] == u for r in data.index) for u in TINY_USERS} == {u: min(n, cap) for u, n in counts.items()}
    assert {r["shortcode"] for r in data.index} | {r["shortcode"] for r in data.dropped} == {
        r["shortcode"] for r in full.index}
    assert sum(data.meta["dropped_by_balance"].values()) == len(data.dropped)
    report = json.loads(paths.stage_report("preprocess").read_text())
    assert report["dropped_by_balance"] == len(data.dropped) and report["kept"] == len(data.index)
    # the same split as without the cap (random split: a hash of the shortcode), for both
    before = {r["shortcode"]: r["split"] for r in full.index}
    assert all(r["split"] == before[r["shortcode"]] for r in (*data.index, *data.dropped))
    # the images of every row are the post's
    where = {r["shortcode"]: r["row"] for r in full.index}
    for r in (*data.index[:3], *data.dropped[:3]):
        assert np.array_equal(data.images[r["row"]], full.images[where[r["shortcode"]]])
    # split() leaves them out unless asked
    assert set(data.split("train")) == {r["row"] for r in data.index if r["split"] == "train"}
    assert set(data.split("train", dropped=True)) - set(data.split("train")) == {
        r["row"] for r in data.dropped if r["split"] == "train"}


def test_dropped_posts_never_train_on_what_the_paper_holds_out() -> None:
    """Temporal: a dropped post later than the user's first held-out kept post is held out;
    identical images take the kept post's split."""
    from imgrate.params import PreprocessParams
    from imgrate.preprocess import dropped_splits

    kept = [{"user": "a", "shortcode": f"k{i}", "timestamp": t, "sha256": f"h{i}"} for i, t in enumerate([1, 2, 3, 7, 9])]
    kept_splits = ["train", "train", "train", "val", "test"]
    dropped = [{"user": "a", "shortcode": f"d{i}", "timestamp": t, "sha256": f"x{i}"} for i, t in enumerate([0, 5, 8, 10])]
    dropped.append({"user": "a", "shortcode": "dup", "timestamp": 0, "sha256": "h4"})
    temporal = PreprocessParams(split="temporal")
    assert dropped_splits(kept, kept_splits, dropped, temporal) == ["train", "train", "val", "test", "test"]
    rnd = PreprocessParams(split="random")
    assert dropped_splits(kept, kept_splits, dropped, rnd)[:4] == assign_splits(dropped[:4], "random",
                                                                                rnd.split_ratios, rnd.seed)
    assert dropped_splits(kept, kept_splits, dropped, rnd)[4] == "test"
    assert dropped_splits(kept, kept_splits, [], rnd) == []
