"""The preprocess stage: tables + shards -> ``data/dataset/`` (images, targets, splits).

The paper's recipe: the first image of each post (videos have none unless the crawl kept
their thumbnails), ``size`` x ``size`` RGB uint8, likes divided by the user's most-liked
post, per-user balance, a stable 8:1:1 split. Decoded thumbnails are cached per
(shard, size, resampling) outside DVC's outputs, so a crawl that adds a shard decodes only
that shard's images.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from imgrate.crawl.shards import iter_members
from imgrate.errors import DataError, ImageError
from imgrate.io import atomic_path, read_jsonl, write_json, write_jsonl
from imgrate.params import PreprocessParams
from imgrate.paths import Paths
from imgrate.progress import track

log = logging.getLogger(__name__)

RESAMPLE = "bilinear"
SPLITS = ("train", "val", "test")


def load_thumbnail(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes to a ``size`` x ``size`` x 3 uint8 RGB array.

    JPEGs are decoded in draft mode (at 1/2, 1/4 or 1/8 scale, still at least ``size``),
    EXIF orientation is applied, grayscale/CMYK/palette/alpha images become RGB, and the
    whole frame is resized (not cropped), as the paper did.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (size, size))
            im = ImageOps.exif_transpose(im)
            if im.mode != "RGB":
                if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, im)
                im = im.convert("RGB")
            im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot decode image: {type(err).__name__}: {err}") from err


def load_image_file(path: Path, size: int) -> np.ndarray:
    """:func:`load_thumbnail` for a file, with an error that names the file."""
    try:
        return load_thumbnail(path.read_bytes(), size)
    except ImageError as err:
        raise ImageError(f"{path}: not a readable image ({err})") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot read file ({err.strerror})") from None


@dataclass
class ShardThumbs:
    """Decoded thumbnails of one shard's images."""

    members: list[str]
    images: np.ndarray  # N x S x S x 3 uint8
    failed: list[str]


def _cache_file(cache_dir: Path, shard: Path, size: int) -> Path:
    st = shard.stat()
    return cache_dir / f"{shard.name}.{st.st_size}.{size}.{RESAMPLE}.npz"


def decode_shard(shard: Path, members: set[str], size: int, cache_dir: Path) -> tuple[ShardThumbs, int, int]:
    """Thumbnails for ``members`` of ``shard``; returns (thumbs, decoded, from_cache)."""
    cache = _cache_file(cache_dir, shard, size)
    have: dict[str, np.ndarray] = {}
    failed: set[str] = set()
    if cache.exists():
        with np.load(cache, allow_pickle=False) as z:
            have = dict(zip(z["members"].tolist(), z["images"]))
            failed = set(z["failed"].tolist())
    todo = members - set(have) - failed
    from_cache = len(members & (set(have) | failed))
    for name, data in iter_members(shard, todo):
        try:
            have[name] = load_thumbnail(data, size)
        except ImageError as err:
            log.warning("shard %s member %s: %s", shard.name, name, err)
            failed.add(name)
    failed |= todo - set(have) - failed  # listed in the table but absent from the shard
    if todo:
        names = sorted(have)
        images = np.stack([have[n] for n in names]) if names else np.zeros((0, size, size, 3), np.uint8)
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, members=np.array(names, dtype=str), images=images,
                         failed=np.array(sorted(failed), dtype=str))
    names = sorted(m for m in members if m in have)
    images = np.stack([have[n] for n in names]) if names else np.zeros((0, size, size, 3), np.uint8)
    return ShardThumbs(names, images, sorted(members & failed)), len(todo), from_cache


def stable_unit(*parts: object) -> float:
    """A number in [0, 1) from a hash of ``parts``: the same on every machine and run."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def compute_targets(likes: np.ndarray, users: np.ndarray, target: str,
                    followers: np.ndarray | None = None) -> np.ndarray:
    """The training target of each post (see params.yaml ``preprocess.target``)."""
    likes = likes.astype(np.float64)
    out = np.zeros_like(likes)
    if target == "follower_ratio":
        if followers is None:
            raise DataError("target follower_ratio needs followers for every user")
        return likes / np.maximum(followers.astype(np.float64), 1.0)
    for user in np.unique(users):
        idx = np.flatnonzero(users == user)
        x = likes[idx]
        if target == "max_ratio":
            out[idx] = x / max(x.max(), 1.0)
        elif target == "log_zscore":
            lx = np.log1p(x)
            sd = lx.std()
            out[idx] = (lx - lx.mean()) / sd if sd > 0 else 0.0
        elif target == "percentile":
            from scipy.stats import rankdata

            out[idx] = (rankdata(x) - 1) / (len(x) - 1) if len(x) > 1 else 0.5
        else:
            raise DataError(f"unknown target {target!r}")
    return out


def assign_splits(rows: list[dict[str, Any]], split: str, ratios: list[float], seed: int) -> list[str]:
    """The split of each row. ``random`` and ``user`` depend only on the shortcode (or user)
    and the seed, so new posts never move old ones; ``temporal`` puts each user's latest
    posts in test and the ones before them in validation."""
    cut_train, cut_val = ratios[0], ratios[0] + ratios[1]

    def by_unit(u: float) -> str:
        return "train" if u < cut_train else "val" if u < cut_val else "test"

    if split == "random":
        return [by_unit(stable_unit(seed, r["shortcode"])) for r in rows]
    if split == "user":
        return [by_unit(stable_unit(seed, "user", r["user"])) for r in rows]
    if split == "temporal":
        out = ["train"] * len(rows)
        per_user: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            per_user[r["user"]].append(i)
        for idx in per_user.values():
            idx.sort(key=lambda i: (rows[i]["timestamp"], rows[i]["shortcode"]))
            n = len(idx)
            n_test = int(round(n * ratios[2]))
            n_val = int(round(n * ratios[1]))
            for j, i in enumerate(idx):
                out[i] = "test" if j >= n - n_test else "val" if j >= n - n_test - n_val else "train"
        return out
    raise DataError(f"unknown split {split!r}")


def balance(rows: list[dict[str, Any]], max_per_user: int | None, seed: int) -> list[dict[str, Any]]:
    """At most ``max_per_user`` posts per user, chosen by a stable hash of the shortcode."""
    if max_per_user is None:
        return rows
    per_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        per_user[r["user"]].append(r)
    keep: set[str] = set()
    for group in per_user.values():
        group = sorted(group, key=lambda r: stable_unit(seed, "balance", r["shortcode"]))
        keep.update(r["shortcode"] for r in group[:max_per_user])
    return [r for r in rows if r["shortcode"] in keep]


def run_stage(params: PreprocessParams, paths: Paths) -> dict[str, Any]:
    """The DVC stage: write images_<size>.npy, index.jsonl, meta.json and metrics."""
    if not paths.posts_table.exists():
        raise DataError(f"{paths.posts_table} not found: run the export stage first")
    posts = [p for p in read_jsonl(paths.posts_table) if p.get("member")]
    users_rows = {u["username"]: u for u in read_jsonl(paths.users_table)} if paths.users_table.exists() else {}
    by_shard: dict[str, set[str]] = defaultdict(set)
    for p in posts:
        by_shard[p["shard"]].add(p["member"])
    cache_dir = paths.cache / "thumbs"
    thumbs: dict[tuple[str, str], np.ndarray] = {}
    decoded = from_cache = 0
    failed: list[str] = []
    for shard_name in track(sorted(by_shard), "decode"):
        shard = paths.shards / shard_name
        if not shard.exists():
            raise DataError(f"posts table names shard {shard_name}, which is not in {paths.shards}")
        got, n_dec, n_cache = decode_shard(shard, by_shard[shard_name], params.size, cache_dir)
        decoded += n_dec
        from_cache += n_cache
        failed += [f"{shard_name}:{m}" for m in got.failed]
        thumbs.update({(shard_name, m): img for m, img in zip(got.members, got.images)})
    usable = [p for p in posts if (p["shard"], p["member"]) in thumbs]
    if not usable:
        raise DataError("no decodable images in the posts table")

    likes = np.array([p["likes"] for p in usable])
    users = np.array([p["user"] for p in usable])
    followers = None
    if params.target == "follower_ratio":
        missing = sorted({p["user"] for p in usable} - set(users_rows))
        if missing:
            raise DataError(f"target follower_ratio: no profile row for user {missing[0]}")
        followers = np.array([users_rows[p["user"]]["followers"] for p in usable])
    targets = compute_targets(likes, users, params.target, followers)
    for p, t in zip(usable, targets):
        p["target"] = float(t)
    rows = balance(usable, params.max_posts_per_user, params.seed)
    splits = assign_splits(rows, params.split, params.split_ratios, params.seed)

    images = np.stack([thumbs[(r["shard"], r["member"])] for r in rows])
    index = [
        {"row": i, "shortcode": r["shortcode"], "user": r["user"], "date": r["date"],
         "timestamp": r["timestamp"], "likes": r["likes"], "target": round(r["target"], 8), "split": s}
        for i, (r, s) in enumerate(zip(rows, splits))
    ]
    with atomic_path(paths.images_array(params.size)) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, images)
    write_jsonl(paths.dataset_index, index)
    counts = Counter(splits)
    meta = {
        "size": params.size, "target": params.target, "split": params.split,
        "split_ratios": params.split_ratios, "images": paths.images_array(params.size).name,
        "n": len(rows), "users": sorted(set(users.tolist())), "splits": {s: counts.get(s, 0) for s in SPLITS},
    }
    write_json(paths.dataset_meta, meta)
    metrics = {
        "posts": len(posts), "decoded": decoded, "from_cache": from_cache, "skipped": len(failed),
        "kept": len(rows), "users": len(meta["users"]), "splits": meta["splits"],
    }
    write_json(paths.stage_metrics("preprocess"), metrics)
    return metrics
