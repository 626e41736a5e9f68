"""The featurize stage: frozen ImageNet backbone features of every post image, per shard.

It keeps ``data/features/`` (a DVC output with ``persist: true``; the format is
:mod:`imgrate.features`) up to date with the posts table and the shards. Shards are
append-only, so a shard whose images (by their manifest's sha256, see
:func:`content_key`) and member list are unchanged keeps its features: a
crawl that adds a shard extracts only that shard's images. Changing the backbone or the
input size extracts everything again. ``train@pretrained`` and evaluate read the features
through :mod:`imgrate.features`, so they depend on ``data/features`` and never on the shards
or on this module.

Backbones: :mod:`imgrate.backbones`. Images are decoded from the shards at ``input_size``
with the dataset's decoder (:func:`imgrate.images.load_thumbnail`) and embedded with every
core (``workers``): on the CPU by as many worker processes of one torch thread each, on a
GPU by decoding threads that feed the device (see :class:`Extractor`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgrate.backbones import Backbone, backbone_spec, grid_width, load_backbone
from imgrate.devices import pick_device
from imgrate.entry import Dep, Output, Stage, Summary, clean_outputs
from imgrate.errors import DataError, ImageError, safe_text
from imgrate.features import (
    GRID,
    PHOTO,
    Block,
    FeatureMeta,
    FeaturesDamaged,
    ShardFeatures,
    array_file,
    compute,
    index_file,
    read_index,
    read_meta,
    read_shard,
    write_meta,
    write_shard,
)
from imgrate.images import load_thumbnail
from imgrate.io import read_jsonl
from imgrate.lifetime import die_with_parent
from imgrate.params import FeaturizeParams
from imgrate.paths import Paths
from imgrate.progress import track
from imgrate.shards import ShardDamaged, iter_members, read_manifest

log = logging.getLogger(__name__)


def meta_for(params: FeaturizeParams) -> FeatureMeta:
    """What ``data/features/`` holds for these params: the backbone's pooled features, with
    ``grid`` its mid-level map pooled over a grid after them, and with ``photo`` the photo
    descriptors last (:func:`imgrate.features.compute`)."""
    spec = backbone_spec(params.backbone)
    if not params.photo and not params.grid:
        return FeatureMeta(params.backbone, params.input_size, spec.width)
    blocks = [Block("pooled", spec.width)]
    if params.grid:
        blocks.append(Block(GRID, grid_width(spec, params.grid)))
    if params.photo:
        from imgrate.photo import PROPERTIES

        blocks.append(Block(PHOTO, len(PROPERTIES)))
    return FeatureMeta(params.backbone, params.input_size, sum(b.width for b in blocks), blocks=tuple(blocks))


def content_key(path: Path, members: set[str]) -> str:
    """What identifies the images featurize reads from a shard: the sha256 of ``members`` as
    the shard's manifest states them (a digest of those digests), or the byte size of a
    shard written before manifests."""
    try:
        manifest = read_manifest(path)
    except ShardDamaged:
        return "damaged"
    if manifest is None:
        return f"bytes:{path.stat().st_size}"
    h = hashlib.sha256()
    for name in sorted(members):
        h.update(f"{name}\0{manifest.members.get(name, (0, '-'))[1]}\n".encode())
    return f"sha256:{h.hexdigest()}"


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- extraction


def _decode(data: bytes, size: int) -> np.ndarray | str:
    """The image at ``size`` px, or why it cannot be decoded."""
    try:
        return load_thumbnail(data, size)
    except ImageError as err:
        return str(err)


Batch = tuple[list[str], list[bytes]]  # member names and their bytes, in shard order

_worker: dict[str, Any] = {}  # the backbone of a worker process (set by _worker_init)


def _worker_init(meta: FeatureMeta, parent: int) -> None:
    die_with_parent(parent)  # a worker never outlives the stage (kill -9 included): imgrate.lifetime
    torch.set_num_threads(1)  # one core per process: the processes never wait on each other
    _worker["meta"] = meta
    _worker["backbone"] = load_backbone(meta.backbone, meta.input_size)


def _embed_batch(meta: FeatureMeta, backbone: Backbone, device: torch.device, batch: Batch
                 ) -> tuple[list[str], np.ndarray | None, dict[str, str]]:
    """Decode and embed one batch: (names decoded, their features, undecodable -> why)."""
    names, images, failed = [], [], {}
    for name, data in zip(*batch):
        img = _decode(data, meta.input_size)
        if isinstance(img, str):
            failed[name] = img
        else:
            names.append(name)
            images.append(img)
    return names, compute(meta, backbone, np.stack(images), device) if images else None, failed


def _worker_embed(batch: Batch) -> tuple[list[str], np.ndarray | None, dict[str, str]]:
    return _embed_batch(_worker["meta"], _worker["backbone"], torch.device("cpu"), batch)


class Extractor:
    """Decodes shard members and embeds them with the backbone, with ``workers`` cores.

    On the CPU with ``workers`` > 1: a pool of that many worker processes (started on first
    use), each with its own backbone and one torch thread, takes whole batches (decode and
    embed), a few batches ahead of the results; processes that never synchronise keep every
    core busy even on a machine shared with other work. On a GPU: ``workers`` threads decode
    (Pillow releases the GIL) while the device embeds. ``workers`` = 1: all in this process."""

    def __init__(self, meta: FeatureMeta, device: torch.device, batch_size: int, workers: int,
                 processes: bool | None = None) -> None:
        self.meta = meta
        self.device = device
        self.batch_size = batch_size
        self.workers = workers
        # worker processes on the CPU, decoding threads feeding a GPU (``processes`` overrides)
        self.processes = workers > 1 and (device.type == "cpu" if processes is None else processes)
        self._backbone: Backbone | None = None
        self._pool: Executor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Extractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = load_backbone(self.meta.backbone, self.meta.input_size).to(self.device)
        return self._backbone

    def _executor(self) -> Executor:
        if self._pool is None:
            if self.processes:
                import multiprocessing

                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_worker_init,
                                                 initargs=(self.meta, os.getpid()))
            else:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        return self._pool

    def warm(self) -> None:
        """Load the backbone and start the workers now (so that timings leave them out)."""
        if self.workers <= 1 or not self.processes:
            self.backbone  # noqa: B018
        if self.workers > 1:
            pool = self._executor()
            empty: Batch = ([], [])
            futures: list[Future[Any]] = [
                pool.submit(_worker_embed, empty) if self.processes else pool.submit(_decode, b"", 1)
                for _ in range(2 * self.workers)
            ]
            for f in futures:
                f.result()

    def _batches(self, shard: Path, members: set[str]) -> Iterator[Batch]:
        names: list[str] = []
        datas: list[bytes] = []
        for name, data in iter_members(shard, members):
            names.append(name)
            datas.append(data)
            if len(names) == self.batch_size:
                yield names, datas
                names, datas = [], []
        if names:
            yield names, datas

    def _results(self, shard: Path, members: set[str]
                 ) -> Iterator[tuple[list[str], np.ndarray | None, dict[str, str]]]:
        size = self.meta.input_size
        if self.workers <= 1:
            threads = torch.get_num_threads()
            if self.device.type == "cpu":
                torch.set_num_threads(1)  # one core
            try:
                for batch in self._batches(shard, members):
                    yield _embed_batch(self.meta, self.backbone, self.device, batch)
            finally:
                torch.set_num_threads(threads)
            return
        pool = self._executor()
        if self.processes:
            pending: deque[Future[tuple[list[str], np.ndarray | None, dict[str, str]]]] = deque()
            for batch in self._batches(shard, members):
                pending.append(pool.submit(_worker_embed, batch))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
            return
        decoding: deque[tuple[list[str], list[Future[np.ndarray | str]]]] = deque()

        def embed_next() -> tuple[list[str], np.ndarray | None, dict[str, str]]:
            names, futures = decoding.popleft()
            got = [(n, f.result()) for n, f in zip(names, futures)]
            ok = [(n, img) for n, img in got if isinstance(img, np.ndarray)]
            failed = {n: r for n, r in got if isinstance(r, str)}
            vecs = compute(self.meta, self.backbone, np.stack([img for _, img in ok]), self.device) if ok else None
            return [n for n, _ in ok], vecs, failed

        for names, datas in self._batches(shard, members):  # two batches decode while one embeds
            decoding.append((names, [pool.submit(_decode, d, size) for d in datas]))
            if len(decoding) > 2:
                yield embed_next()
        while decoding:
            yield embed_next()

    def shard(self, shard: Path, members: set[str]) -> ShardFeatures:
        """Features of ``members`` of ``shard`` (sorted by name); undecodable members are listed."""
        got: dict[str, np.ndarray] = {}
        failed: dict[str, str] = {}
        for names, vecs, bad in self._results(shard, members):
            failed.update(bad)
            if vecs is not None:
                got.update(zip(names, vecs))
        missing = members - set(got) - set(failed)
        if missing:
            raise DataError(f"shard {shard.name} has no member {sorted(missing)[0]}")
        names = sorted(got)
        width = self.meta.width
        feats = np.stack([got[n] for n in names]).astype(np.float32) if names else np.zeros((0, width), np.float32)
        return ShardFeatures(names, feats, failed)


# --------------------------------------------------------------------------- the stage


def _line(v: dict[str, Any]) -> str:
    rate = ""
    if v["images_extracted"] and v["seconds"]:
        rate = f", {v['images_extracted'] / v['seconds']:.0f} images/s"
    return (f"featurize: {v['images']} images of {v['shards']} shards ({v['images_extracted']} extracted from "
            f"{v['shards_extracted']} new shards{rate}, {v['failed']} undecodable); "
            f"{v['backbone']} at {v['input_size']}px on {v['device']}, {v['workers']} workers")


def wanted_members(paths: Paths) -> dict[str, set[str]]:
    """Shard -> the post images the posts table names in it (export's choice of the first image)."""
    if not paths.posts_table.exists():
        raise DataError(f"{paths.posts_table} not found: run the export stage first")
    by_shard: dict[str, set[str]] = defaultdict(set)
    for post in read_jsonl(paths.posts_table):
        if post.get("member"):
            by_shard[str(post["shard"])].add(str(post["member"]))
    return dict(by_shard)


def run_stage(params: FeaturizeParams, paths: Paths) -> Summary[None]:
    """The DVC stage: bring ``data/features/`` up to date with the posts table and the shards.

    Only shards without stored features (or whose size or member list changed) are
    extracted; entries of shards the table no longer names are removed, so the folder is
    a function of the shards, the table and the params, whatever ran before."""
    start = time.monotonic()
    clean_outputs(STAGE.outputs(paths, ""))  # left by a killed run
    meta = meta_for(params)
    workers = params.workers or cores()
    device = pick_device(params.device)
    wanted = wanted_members(paths)
    old = read_meta(paths)
    if old != meta and paths.features.exists():
        log.info("featurize: %s -> %s: extracting every shard again", old, meta)
        for stale in paths.features.iterdir():
            if stale.is_file():
                stale.unlink()
    paths.features.mkdir(parents=True, exist_ok=True)
    keep = {f(paths, s).name for s in wanted for f in (index_file, array_file)} | {"meta.json"}
    for stale in paths.features.iterdir():
        if stale.is_file() and stale.name not in keep:
            stale.unlink()
    write_meta(paths, meta)

    todo = []
    for shard in sorted(wanted):
        path = paths.shards / shard
        if not path.exists():
            raise DataError(f"the posts table names shard {shard}, which is not in {paths.shards}")
        doc = read_index(paths, shard)
        current = (doc is not None and doc.get("key") == content_key(path, wanted[shard])
                   and set(doc.get("members", [])) | set(doc.get("failed", {})) == wanted[shard]
                   and array_file(paths, shard).exists())
        if current and (problem := _stored_problem(paths, shard, meta)) is not None:
            log.warning("features of shard %s: %s: extracted again", shard, problem)
            current = False
        if not current:
            todo.append(shard)
    extracted = 0
    with Extractor(meta, device, params.batch_size, workers) as extractor:
        for shard in track(todo, f"featurize {meta.backbone} {meta.input_size}px"):
            path = paths.shards / shard
            try:
                got = extractor.shard(path, wanted[shard])
            except ShardDamaged as err:  # preprocess skips its posts too; verify names the damage
                log.warning("no features of %s", err)
                got = ShardFeatures([], np.zeros((0, meta.width), np.float32),
                                    {m: f"damaged shard: {err.detail}" for m in sorted(wanted[shard])})
            write_shard(paths, shard, content_key(path, wanted[shard]), got)
            extracted += len(got.members) + len(got.failed)
            log.info("features: shard %s, %d images, %d undecodable", shard, len(got.members), len(got.failed))
    failed = sum(len((read_index(paths, s) or {}).get("failed", {})) for s in wanted)
    values = {"shards": len(wanted), "shards_extracted": len(todo), "images": sum(len(m) for m in wanted.values()),
              "images_extracted": extracted, "failed": failed, "backbone": meta.backbone,
              "input_size": meta.input_size, "device": device.type, "workers": workers,
              "seconds": time.monotonic() - start}
    return Summary("featurize", values, _line(values))


def _stored_problem(paths: Paths, shard: str, meta: FeatureMeta) -> str | None:
    """Why the stored features of ``shard`` cannot be kept (None when they can): its own
    outputs are input too (a file altered or damaged since it was written is extracted again,
    not committed by DVC as it is). Checked: the entry names its shard, the array loads and is
    one finite, non-zero float32 row of ``meta.width`` per member (``features_problem``)."""
    doc = read_index(paths, shard) or {}
    if doc.get("shard") != shard:
        return f"{index_file(paths, shard).name} names shard {safe_text(str(doc.get('shard'))[:40])}"
    try:
        read_shard(paths, shard, meta.width)
    except FeaturesDamaged as err:
        return f"{array_file(paths, shard).name} {err.problem}"
    except DataError as err:
        return str(err)
    return None


STAGE = Stage(
    name="featurize",
    about="tables + shards -> frozen backbone features per shard in data/features/ (new shards only)",
    sections=("featurize",),
    reads=lambda paths, item: [Dep(paths.rel(paths.raw)),
                               Dep(paths.rel(paths.tables), "which member is each post's image")],
    outputs=lambda paths, item: [
        Output(paths.features, folder=True, persist=True, note="incremental: only new shards are extracted"),
    ],
    run=lambda params, paths: run_stage(params.featurize, paths),
)
