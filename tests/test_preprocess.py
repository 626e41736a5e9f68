"""preprocess: decoding, targets, balance, splits, incremental decoding."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrate.crawl.stage import run as crawl
from imgrate.errors import ImageError
from imgrate.export import run_stage as export
from imgrate.io import read_jsonl
from imgrate.paths import Paths
from imgrate.preprocess import assign_splits, balance, compute_targets, load_thumbnail, run_stage

from conftest import TINY_USERS


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _test_image(w: int = 120, h: int = 80) -> Image.Image:
    """Left half red, right half blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(a)


def test_jpeg_is_resized_to_rgb_square() -> None:
    out = load_thumbnail(_encode(_test_image(), "JPEG"), 50)
    assert out.shape == (50, 50, 3) and out.dtype == np.uint8
    assert out[25, 5, 0] > 200 and out[25, 45, 2] > 200  # red left, blue right


def test_grayscale_cmyk_png_and_alpha_become_rgb() -> None:
    gray = load_thumbnail(_encode(_test_image().convert("L"), "JPEG"), 32)
    assert gray.shape == (32, 32, 3) and np.all(gray[..., 0] == gray[..., 1])
    cmyk = load_thumbnail(_encode(_test_image().convert("CMYK"), "JPEG"), 32)
    assert cmyk[16, 3, 0] > 200 and cmyk[16, 28, 2] > 200
    png = load_thumbnail(_encode(_test_image(), "PNG"), 32)
    assert png[16, 3].tolist() == [255, 0, 0]
    rgba = _test_image().convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited on white
    assert load_thumbnail(_encode(rgba, "PNG"), 16).min() == 255


def test_exif_orientation_is_applied() -> None:
    im = _test_image(120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = load_thumbnail(_encode(im, "JPEG", exif=exif.tobytes()), 40)
    # after rotating clockwise, red (left) is on top and blue at the bottom
    assert out[3, 20, 0] > 200 and out[36, 20, 2] > 200


@pytest.mark.parametrize("data", [b"", b"not an image", None])
def test_corrupt_and_truncated_images_raise_image_error(data) -> None:
    if data is None:
        full = _encode(_test_image(400, 400), "JPEG")
        data = full[: len(full) // 3]
    with pytest.raises(ImageError):
        load_thumbnail(data, 50)


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
    later = dataclasses.replace(params.crawl, demo=dataclasses.replace(params.crawl.demo, until="2025-03-20"))
    report = crawl(later, paths)
    export(params.export, paths)
    second = run_stage(params.preprocess, paths)
    assert report.new_posts > 0
    assert second["from_cache"] == first["decoded"]
    assert second["decoded"] == second["kept"] - first["kept"]  # only the new posts' images
    new_split = {r["shortcode"]: r["split"] for r in read_jsonl(paths.dataset_index)}
    assert all(new_split[s] == v for s, v in old_split.items())
    # a third run decodes nothing
    assert run_stage(params.preprocess, paths)["decoded"] == 0
    shutil.rmtree(paths.cache / "thumbs")
    assert run_stage(params.preprocess, paths)["decoded"] == second["kept"]
