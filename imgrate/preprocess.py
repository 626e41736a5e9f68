"""The preprocess stage: tables + shards -> ``data/dataset/`` (images, targets, splits).

The paper's recipe: the first image of each post (``_1`` of a sidecar; videos have none
unless the crawl kept their thumbnails), ``size`` x ``size`` RGB uint8, likes divided by the
user's most-liked post, per-user balance, a stable 8:1:1 split. The posts the balance
leaves out follow the kept ones in the arrays, marked ``balance: dropped`` with splits of
their own that never train on what the paper holds out (:func:`dropped_splits`):
:class:`imgrate.dataset.Dataset` keeps them apart, and only a model that balances users by
sample weights trains on them; evaluation never sees them. Images that fail to decode
are skipped and listed (``meta.json`` ``skipped``, ``reports/preprocess.json``), and so are
the posts of a shard that is damaged (checked through a cache keyed by the shard's name,
size and mtime; export already skips such shards, so this guards a shard damaged since).

Only settled labels: a post whose like count is hidden (``likes_hidden``) has no target and
never enters the dataset, and a post whose latest count was read before it was
``min_age_days`` old is held back (``too_young``) until a later crawl re-reads it. A user
whose posts are all hidden is reported (``users_likes_hidden``), not trained on.

Incremental: decoded thumbnails are cached per (shard, size, resampling) in
``.imgrate-cache/thumbs/`` (outside DVC's outputs, so ``dvc repro`` never deletes it) as one
``.npy`` per shard, memory-mapped when read. Shards are immutable, so a crawl that adds a
shard costs one decode of that shard's images; old shards cost two small file reads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgrate.dataset import DROPPED
from imgrate.entry import Dep, Output, Stage, Summary, clean_outputs
from imgrate.errors import DataError, ImageError
from imgrate.images import RESAMPLE, load_thumbnail
from imgrate.io import atomic_path, read_jsonl, remove_stale_tmp, reserve, write_json, write_jsonl
from imgrate.params import PreprocessParams
from imgrate.paths import Paths
from imgrate.progress import track
from imgrate.shards import ShardDamaged, check_shard_cached, iter_members

log = logging.getLogger(__name__)

THUMB_VERSION = 2  # bump when load_thumbnail's output changes, to invalidate the thumbnail cache
SPLITS = ("train", "val", "test")


@dataclass
class ShardThumbs:
    """Decoded thumbnails of one shard: row ``i`` of ``images`` is ``members[i]``."""

    members: list[str]
    images: np.ndarray  # N x S x S x 3 uint8, memory-mapped from the cache
    failed: dict[str, str]  # member -> why it could not be used
    decoded: int = 0  # members read from the shard and decoded by this call (failures too)
    from_cache: int = 0  # members answered from the cache (cached failures too)

    def row(self) -> dict[str, int]:
        return {m: i for i, m in enumerate(self.members)}


def _cache_stem(shard: Path, size: int) -> str:
    """Cache key: shards are immutable, so name and byte size identify one's content."""
    return f"{shard.name}.{shard.stat().st_size}.{size}.{RESAMPLE}.v{THUMB_VERSION}"


def _read_cache(cache_dir: Path, stem: str, size: int
                ) -> tuple[list[str], dict[str, str], np.ndarray, str | None] | None:
    """(members, failed, images, images file name) of a shard's cache entry, or None if it is
    absent or inconsistent (then the shard is decoded again)."""
    index = cache_dir / f"{stem}.json"
    if not index.exists():
        return None
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
        members, failed, name = list(doc["members"]), dict(doc["failed"]), doc["images"]
        if not members:
            return members, failed, np.zeros((0, size, size, 3), np.uint8), None
        images = np.load(cache_dir / name, mmap_mode="r")
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("thumbnail cache %s unreadable (%s); decoding again", index.name, err)
        return None
    if images.shape != (len(members), size, size, 3) or images.dtype != np.uint8:
        log.warning("thumbnail cache %s does not match its index; decoding again", index.name)
        return None
    return members, failed, images, name


def _write_cache(cache_dir: Path, stem: str, members: list[str], failed: dict[str, str],
                 images: np.ndarray, old_images: str | None) -> np.ndarray:
    """Write a shard's thumbnails (``.npy``, named by a digest of its members) and then its
    index (``.json``), each atomically, so a reader sees the old pair or the new one."""
    name = None
    if members:
        digest = hashlib.blake2b("\n".join(members).encode(), digest_size=8).hexdigest()
        name = f"{stem}.{digest}.npy"
        with atomic_path(cache_dir / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, images)
    write_json(cache_dir / f"{stem}.json", {"members": members, "failed": failed, "images": name})
    if old_images and old_images != name:
        (cache_dir / old_images).unlink(missing_ok=True)
    return np.load(cache_dir / name, mmap_mode="r") if name else images


def decode_shard(shard: Path, members: set[str], size: int, cache_dir: Path) -> ShardThumbs:
    """Thumbnails of ``members`` of ``shard``, decoding only those not in the cache.

    The cache (one ``.npy`` + ``.json`` pair per (shard, size, resampling)) is read through a
    memory map, so an unchanged shard costs two small reads, not its images. It is rewritten
    only when this call decoded something, which for an immutable shard happens once.
    """
    stem = _cache_stem(shard, size)
    cached = _read_cache(cache_dir, stem, size)
    have, failed, images, old_name = cached or ([], {}, np.zeros((0, size, size, 3), np.uint8), None)
    known = set(have) | set(failed)
    todo = members - known
    if todo:
        new: dict[str, np.ndarray] = {}
        for name, data in iter_members(shard, todo):
            try:
                new[name] = load_thumbnail(data, size)
            except ImageError as err:
                log.warning("shard %s member %s: %s", shard.name, name, err)
                failed[name] = str(err)
        for name in todo - set(new) - set(failed):
            failed[name] = "not in the shard"
        names = sorted(new)
        if names:
            images = np.concatenate([np.asarray(images), np.stack([new[n] for n in names])])
            have = have + names
        images = _write_cache(cache_dir, stem, have, dict(sorted(failed.items())), images, old_name)
    return ShardThumbs(have, images, {m: r for m, r in failed.items() if m in members},
                       decoded=len(todo), from_cache=len(members & known))


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
    if target not in ("max_ratio", "log_zscore", "percentile"):
        raise DataError(f"unknown target {target!r}")
    _, inverse = np.unique(users, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    for idx in np.split(order, bounds) if len(order) else []:
        x = likes[idx]
        if target == "max_ratio":
            out[idx] = x / max(x.max(), 1.0)
        elif target == "log_zscore":
            lx = np.log1p(x)
            sd = lx.std()
            out[idx] = (lx - lx.mean()) / sd if sd > 0 else 0.0
        else:  # percentile
            from scipy.stats import rankdata

            out[idx] = (rankdata(x) - 1) / (len(x) - 1) if len(x) > 1 else 0.5
    return out


def settled_posts(posts: list[dict[str, Any]], min_age_days: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The posts whose label can be trusted, and what was held back: ``likes_hidden`` (the
    owner hides the count), ``too_young`` (latest count read before ``min_age_days``), and
    ``users_likes_hidden`` (users none of whose posts shows its likes)."""
    keep: list[dict[str, Any]] = []
    hidden = too_young = 0
    shown: dict[str, bool] = {}
    for p in posts:
        visible = not p.get("likes_hidden") and p.get("likes") is not None
        shown[p["user"]] = shown.get(p["user"], False) or visible
        if not visible:
            hidden += 1
        elif p.get("age_at_observation_days", min_age_days) < min_age_days:
            too_young += 1
        else:
            keep.append(p)
    all_hidden = sorted(u for u, any_shown in shown.items() if not any_shown)
    for user in all_hidden:
        log.warning("user %s hides the like count of every post: no target, not in the dataset", user)
    return keep, {"likes_hidden": hidden, "too_young": too_young, "users_likes_hidden": all_hidden}


def assign_splits(rows: list[dict[str, Any]], split: str, ratios: list[float], seed: int) -> list[str]:
    """The split of each row.

    ``random``: a stable hash of (seed, shortcode) against the ratios, so new posts never move
    old ones. ``user``: the same with the username, so each user is in one split only.
    ``temporal``: within each user, the latest ``round(n * ratios[2])`` posts go to test and
    the ``round(n * ratios[1])`` before them to validation (new posts do move old ones here).
    Then leakage of identical images: every post whose image has the same sha256 as an
    earlier post's takes that earlier post's split.
    """
    cut_train, cut_val = ratios[0], ratios[0] + ratios[1]

    def by_unit(u: float) -> str:
        return "train" if u < cut_train else "val" if u < cut_val else "test"

    if split == "random":
        out = [by_unit(stable_unit(seed, r["shortcode"])) for r in rows]
    elif split == "user":
        out = [by_unit(stable_unit(seed, "user", r["user"])) for r in rows]
    elif split == "temporal":
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
    else:
        raise DataError(f"unknown split {split!r}")
    for group in duplicate_groups(rows):
        for i in group[1:]:
            out[i] = out[group[0]]
    return out


def duplicate_groups(rows: list[dict[str, Any]]) -> list[list[int]]:
    """Row numbers of posts whose images are byte-identical (same ``sha256``), oldest first;
    only groups of two or more."""
    by_hash: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        if r.get("sha256"):
            by_hash[r["sha256"]].append(i)
    return [sorted(g, key=lambda i: (rows[i].get("timestamp", 0), rows[i]["shortcode"]))
            for g in by_hash.values() if len(g) > 1]


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


def dropped_splits(kept: list[dict[str, Any]], kept_splits: list[str], dropped: list[dict[str, Any]],
                   params: PreprocessParams) -> list[str]:
    """The split of each post the per-user balance dropped, so that a model that balances users
    by weights instead (every post trains) never trains on what the paper's split holds out.

    The kept posts' splits are the paper's, untouched. ``random`` and ``user``: the same stable
    hash as theirs. ``temporal``: a dropped post trains only when it is older than the user's
    first held-out kept post (else test when it is at least as late as their first test post,
    else val). Then a dropped post whose image is byte-identical to a kept one takes that
    post's split, as duplicates do among the kept posts."""
    if not dropped:
        return []
    if params.split == "temporal":
        first: dict[tuple[str, str], tuple[int, str]] = {}  # (user, split) -> earliest post
        for r, sp in zip(kept, kept_splits):
            key, when = (r["user"], sp), (r["timestamp"], r["shortcode"])
            if sp != "train" and (key not in first or when < first[key]):
                first[key] = when
        out = []
        for r in dropped:
            when = (r["timestamp"], r["shortcode"])
            test, val = first.get((r["user"], "test")), first.get((r["user"], "val"))
            out.append("test" if test is not None and when >= test else
                       "val" if (val is not None and when >= val) or (test is not None and when >= test) else "train")
    else:
        out = assign_splits(dropped, params.split, params.split_ratios, params.seed)
    by_hash = {r["sha256"]: sp for r, sp in zip(kept, kept_splits) if r.get("sha256")}
    return [by_hash.get(r.get("sha256") or "", sp) for r, sp in zip(dropped, out)]


def run_stage(params: PreprocessParams, paths: Paths) -> Summary[None]:
    """The DVC stage: write images_<size>.npy, index.jsonl, meta.json and metrics.

    Work is O(new images) for decoding and O(kept images) for the output array: thumbnails
    of unchanged shards are only memory-mapped, and only the rows kept after balancing are
    copied out of them.
    """
    clean_outputs(STAGE.outputs(paths, ""))  # left by a killed run (a 530 MB images array at the paper's scale)
    remove_stale_tmp(paths.cache / "thumbs")
    if not paths.posts_table.exists():
        raise DataError(f"{paths.posts_table} not found: run the export stage first")
    table = [p for p in read_jsonl(paths.posts_table) if p.get("member")]
    posts, held = settled_posts(table, params.min_age_days)
    # held-back young posts are decoded too: a later crawl releases them without touching old caches
    decode = [p for p in table if not p.get("likes_hidden") and p.get("likes") is not None]
    users_rows = {u["username"]: u for u in read_jsonl(paths.users_table)} if paths.users_table.exists() else {}
    by_shard: dict[str, set[str]] = defaultdict(set)
    for p in decode:
        by_shard[p["shard"]].add(p["member"])
    cache_dir = paths.cache / "thumbs"
    for legacy in cache_dir.glob("*.npz"):  # the cache format before THUMB_VERSION 2
        legacy.unlink()
    shards: dict[str, ShardThumbs] = {}
    where: dict[tuple[str, str], int] = {}  # (shard, member) -> row in that shard's thumbnails
    decoded = from_cache = 0
    skipped: list[dict[str, str | None]] = []
    damaged: list[str] = []
    for shard_name in track(sorted(by_shard), "decode"):
        shard = paths.shards / shard_name
        if not shard.exists():
            raise DataError(f"posts table names shard {shard_name}, which is not in {paths.shards}")
        try:
            check = check_shard_cached(shard, paths.cache / "shard-checks")
            if not check.ok:
                raise ShardDamaged(shard_name, check.problem or "", check.member)
            got = decode_shard(shard, by_shard[shard_name], params.size, cache_dir)
        except ShardDamaged as err:
            log.warning("skipping the posts of %s", err)
            damaged.append(shard_name)
            skipped.append({"shard": shard_name, "member": None, "reason": f"damaged shard: {err.detail}"})
            continue
        shards[shard_name] = got
        decoded += got.decoded
        from_cache += got.from_cache
        skipped += [{"shard": shard_name, "member": m, "reason": r} for m, r in sorted(got.failed.items())]
        where.update(((shard_name, m), i) for m, i in got.row().items() if m in by_shard[shard_name])
    usable = [p for p in posts if (p["shard"], p["member"]) in where]
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
    if not np.all(np.isfinite(targets)):
        bad = usable[int(np.flatnonzero(~np.isfinite(targets))[0])]
        raise DataError(f"target {params.target} is not finite for post {bad['shortcode']} ({bad['likes']} likes)")
    for p, t in zip(usable, targets):
        p["target"] = float(t)
    rows = balance(usable, params.max_posts_per_user, params.seed)
    splits = assign_splits(rows, params.split, params.split_ratios, params.seed)
    # the posts the balance left out follow the kept ones (rows after theirs, ``balance:
    # dropped``): models that balance users by weights train on them; no one tests on them
    kept_codes = {r["shortcode"] for r in rows}
    dropped = [r for r in usable if r["shortcode"] not in kept_codes]
    dropped_split = dropped_splits(rows, splits, dropped, params)

    _write_images(paths.images_array(params.size), rows + dropped, shards, where, params.size)
    index = [
        {"row": i, "shortcode": r["shortcode"], "user": r["user"], "date": r["date"],
         "timestamp": r["timestamp"], "likes": r["likes"], "target": round(r["target"], 8), "split": s,
         "shard": r["shard"], "member": r["member"], **({"balance": DROPPED} if i >= len(rows) else {})}
        for i, (r, s) in enumerate(zip(rows + dropped, splits + dropped_split))
    ]
    write_jsonl(paths.dataset_index, index)
    counts = Counter(splits)
    meta: dict[str, Any] = {
        "size": params.size, "target": params.target, "split": params.split,
        "split_ratios": params.split_ratios, "images": paths.images_array(params.size).name,
        "n": len(rows), "users": sorted({r["user"] for r in rows}),
        "splits": {s: counts.get(s, 0) for s in SPLITS},
        # the rows after the n kept ones: what the per-user balance left out, by split
        "dropped_by_balance": {s: dropped_split.count(s) for s in SPLITS},
        "skipped": skipped,  # images listed in the posts table that could not be decoded
        # from the posts with an image to the dataset's rows (reports/data.md prints it)
        "funnel": {"image_posts": len(table), "likes_hidden": held["likes_hidden"], "too_young": held["too_young"],
                   "undecodable": len(table) - held["likes_hidden"] - held["too_young"] - len(usable),
                   "with_target": len(usable), "dataset": len(rows),
                   "max_posts_per_user": params.max_posts_per_user},
    }
    write_json(paths.dataset_meta, meta)  # last: dataset readers open meta.json first
    metrics = {
        "posts": len(table), "likes_hidden": held["likes_hidden"], "too_young": held["too_young"],
        "users_likes_hidden": held["users_likes_hidden"],
        "skipped": sum(s["member"] is not None for s in skipped), "shards_damaged": len(damaged),
        "duplicate_images": sum(len(g) - 1 for g in duplicate_groups(rows)),
        "kept": len(rows), "users": len(meta["users"]), "splits": meta["splits"],
        "dropped_by_balance": len(dropped),
    }
    # `dvc metrics show` gets three counts (one table line for every stage must fit a
    # terminal); reports/preprocess.json has all of it (splits, skipped, duplicates)
    write_json(paths.stage_report("preprocess"), metrics)
    write_json(paths.stage_metrics("preprocess"), {k: metrics[k] for k in ("posts", "kept", "users")})
    # what the thumbnail cache saved depends on the cache, not on the inputs: a run log, not a metric
    run = {**metrics, "decoded": decoded, "from_cache": from_cache}
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    write_json(paths.stage_logs("preprocess") / f"{stamp}.json", run)
    line = (f"preprocess: {run['kept']} images ({run['decoded']} decoded, {run['from_cache']} from cache, "
            f"{run['skipped']} skipped), splits {run['splits']}")
    return Summary("preprocess", run, line)


def _write_images(dest: Path, rows: list[dict[str, Any]], shards: dict[str, ShardThumbs],
                  where: dict[tuple[str, str], int], size: int) -> None:
    """Copy the kept rows' thumbnails, shard by shard, into a new ``.npy`` at ``dest``."""
    for stale in dest.parent.glob("images_*.npy"):  # another size's array (outside DVC runs)
        if stale != dest:
            stale.unlink()
    per_shard: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for i, r in enumerate(rows):
        dst, src = per_shard[r["shard"]]
        dst.append(i)
        src.append(where[(r["shard"], r["member"])])
    with atomic_path(dest) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rows), size, size, 3))
        reserve(tmp, tmp.stat().st_size, dest)  # a full disk: one line now, not a Bus error while copying
        for shard_name, (dst, src) in per_shard.items():
            out[dst] = shards[shard_name].images[src]
        out.flush()
        del out


STAGE = Stage(
    name="preprocess",
    about="tables + shards -> data/dataset/ (images, targets, splits, index)",
    sections=("preprocess",),
    reads=lambda paths, item: [Dep(paths.rel(paths.raw)), Dep(paths.rel(paths.tables))],
    outputs=lambda paths, item: [
        Output(paths.dataset, folder=True),
        Output(paths.stage_report("preprocess"), cache=False, persist=True,
               note="splits, skipped and duplicate images: a report, not a metric"),
        Output(paths.stage_metrics("preprocess"), "metrics", cache=False, persist=True,
               note="written atomically at the end: a failing run leaves the last one"),
    ],
    run=lambda params, paths: run_stage(params.preprocess, paths),
)
