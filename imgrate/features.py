"""The feature-file format of ``data/features/`` (written by the featurize stage), and the
``features`` model input that reads it.

``data/features/`` holds, for each shard that the posts table names, ``<shard>.npy``
(float32, one row of feature columns per image) and ``<shard>.json`` (the shard, a key of the
images' content, the members in row order, the members that could not be decoded), plus
``meta.json`` (:class:`FeatureMeta`: backbone, input size, width, resampling filter, format
version, and the named blocks of columns). Models, ``predict`` and ``evaluate`` read
features through :func:`load_features` (or :data:`FEATURES`) and never import the stage.

Columns come in named blocks (:attr:`FeatureMeta.blocks`, in column order): ``pooled`` (the
backbone's 1280 pooled channels), then optionally ``grid`` (its mid-level map pooled over g x g
cells, ``featurize.grid``) and ``photo`` (photo descriptors, ``featurize.photo``). A block
added later is a new entry there and new columns in :func:`compute`,
which both the stage and ``imgrate rank`` call, so that a new photo gets exactly the
columns the stored images got.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from imgrate.errors import DataError, safe_text
from imgrate.images import RESAMPLE
from imgrate.inputs import DatasetRows, InputSpec, ModelInput
from imgrate.io import atomic_path, write_json
from imgrate.paths import Paths

if TYPE_CHECKING:
    from imgrate.backbones import Backbone

FORMAT_VERSION = 1  # bump when the stored features change for the same params
META = "meta.json"


@dataclass(frozen=True)
class Block:
    """A named run of feature columns (``width`` of them), in :attr:`FeatureMeta.blocks` order."""

    name: str
    width: int


@dataclass(frozen=True)
class FeatureMeta:
    """What the features in ``data/features/`` are (``meta.json``)."""

    backbone: str
    input_size: int
    width: int
    resample: str = RESAMPLE
    version: int = FORMAT_VERSION
    blocks: tuple[Block, ...] = field(default=())  # empty: one block "pooled" of every column

    def __post_init__(self) -> None:
        if not self.blocks:
            object.__setattr__(self, "blocks", (Block("pooled", self.width),))
        if sum(b.width for b in self.blocks) != self.width:
            raise DataError(f"feature meta: the blocks {[b.name for b in self.blocks]} hold "
                            f"{sum(b.width for b in self.blocks)} columns, not {self.width}")

    def columns(self, block: str) -> slice:
        """The columns of ``block``."""
        start = 0
        for b in self.blocks:
            if b.name == block:
                return slice(start, start + b.width)
            start += b.width
        raise DataError(f"the features have no block {block!r} (blocks: {', '.join(b.name for b in self.blocks)})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> FeatureMeta:
        try:
            blocks = tuple(Block(str(b["name"]), int(b["width"])) for b in d.get("blocks", []))
            return cls(str(d["backbone"]), int(d["input_size"]), int(d["width"]), str(d["resample"]),
                       int(d["version"]), blocks)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise DataError(f"{where}: not a features index ({type(err).__name__}: {err})") from None


@dataclass
class ShardFeatures:
    """Features of one shard: row ``i`` of ``features`` is ``members[i]``."""

    members: list[str]
    features: np.ndarray  # float32 len(members) x width
    failed: dict[str, str]  # member -> why it could not be decoded


PHOTO = "photo"  # the block of photo descriptors (imgrate.photo.PROPERTIES), after the backbone's
GRID = "grid"  # the backbone's mid-level map averaged over a g x g grid (imgrate.backbones.Backbone)


def grid_size(meta: FeatureMeta) -> int:
    """g of the meta's ``grid`` block (0 without one), from its width and the backbone's."""
    from imgrate.backbones import backbone_spec

    for b in meta.blocks:
        if b.name == GRID:
            mid = backbone_spec(meta.backbone).mid_width
            g = math.isqrt(b.width // mid)
            if g < 1 or mid * g * g != b.width:
                raise DataError(f"feature meta: a grid block of {b.width} columns is no square grid "
                                f"of {meta.backbone}'s {mid} mid-level channels")
            return g
    return 0


def compute(meta: FeatureMeta, backbone: Backbone, images: np.ndarray, device: torch.device) -> np.ndarray:
    """The feature columns of uint8 N x S x S x 3 images decoded at ``meta.input_size``: what
    the featurize stage stores and what ``imgrate rank`` computes for a new photo. The
    backbone's pooled features, then, when the meta has a ``photo`` block, the photo
    descriptors of :func:`imgrate.photo.describe` (exposure, contrast, clipping, saturation,
    colourfulness, warmth, sharpness: measured as on any real photograph). With a ``grid``
    block, the backbone's grid columns come right after its pooled ones (before ``photo``)."""
    from imgrate.backbones import embed

    pooled = embed(backbone, images, device, grid_size(meta))
    if not any(b.name == PHOTO for b in meta.blocks):
        return pooled
    from imgrate.photo import describe

    return np.concatenate([pooled, describe(np.asarray(images, dtype=np.uint8))], axis=1)


# --------------------------------------------------------------------------- the store


# Robust standardisation of feature columns (the pretrained head, ridge_features): a column
# whose training spread is tiny (near-constant: a channel the photos rarely fire) would give
# test posts z-scores in the thousands, so each column's spread is floored at SPREAD_FLOOR x the
# median spread of the columns, and z-scores are clipped to +-Z_CLIP.
SPREAD_FLOOR = 0.1
Z_CLIP = 8.0


def robust_spread(std: np.ndarray) -> np.ndarray:
    """Per-column spreads to divide by: ``std`` floored at :data:`SPREAD_FLOOR` x the median of
    the positive ones (and at 1e-6), float64."""
    s = np.asarray(std, dtype=np.float64)
    positive = s[s > 0]
    floor = max(SPREAD_FLOOR * float(np.median(positive)) if positive.size else 0.0, 1e-6)
    return np.maximum(s, floor)


def standardise(x: np.ndarray, mean: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """``(x - mean) / spread`` clipped to +-:data:`Z_CLIP` (``spread`` from :func:`robust_spread`)."""
    out: np.ndarray = np.clip((np.asarray(x, np.float64) - mean) / spread, -Z_CLIP, Z_CLIP)
    return out


def _stem(shard: str) -> str:
    return shard.removesuffix(".tar")


def index_file(paths: Paths, shard: str) -> Path:
    return paths.features / f"{_stem(shard)}.json"


def array_file(paths: Paths, shard: str) -> Path:
    return paths.features / f"{_stem(shard)}.npy"


def read_meta(paths: Paths) -> FeatureMeta | None:
    """``meta.json``, or None when there is none."""
    path = paths.features / META
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a features index ({err})") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: not a features index (a JSON object expected)")
    return FeatureMeta.from_dict(doc, str(path))


def write_meta(paths: Paths, meta: FeatureMeta) -> None:
    write_json(paths.features / META, meta.to_dict())


def read_index(paths: Paths, shard: str) -> dict[str, Any] | None:
    """The ``<shard>.json`` entry, or None when missing or unreadable (it is extracted again)."""
    try:
        doc = json.loads(index_file(paths, shard).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


class FeaturesDamaged(DataError):
    """Stored features that no image gives (:func:`features_problem`): damaged or altered."""

    def __init__(self, path: Path, problem: str) -> None:
        self.problem = problem
        super().__init__(f"{path} {problem}: the stored features are damaged or were altered; the featurize "
                         "stage extracts them again (dvc repro featurize)")


def features_problem(features: np.ndarray, members: list[str], width: int | None = None,
                     chunk: int = 4096) -> str | None:
    """Why stored features cannot be used (None when they can): not a float32 matrix of one
    row per member (of ``width`` columns), or rows that no image gives: NaN or infinite
    values, or all zeros (the backbone's pooled features of a photo are never all zero).
    Read in chunks of rows, so a memory-mapped file is never copied whole."""
    if features.dtype != np.float32 or features.ndim != 2:
        return f"holds {features.dtype} of {features.ndim} dimensions, not a float32 matrix"
    if features.shape[0] != len(members):
        return f"holds {features.shape[0]} rows for {len(members)} members"
    if width is not None and features.shape[1] != width:
        return f"has {features.shape[1]} columns, not {width}"
    for start in range(0, features.shape[0], chunk):
        rows = np.asarray(features[start:start + chunk])
        for what, bad in (("NaN or infinite values", ~np.isfinite(rows).all(axis=1)),
                          ("all zeros", ~rows.any(axis=1))):
            if bad.any():
                first = start + int(np.argmax(bad))
                return f"row {first} (member {safe_text(members[first])}) holds {what}, as no image's features do"
    return None


def read_shard(paths: Paths, shard: str, width: int | None = None) -> ShardFeatures:
    """The stored features of one shard (memory-mapped), checked (:func:`features_problem`): a
    damaged or altered file is a :class:`DataError` naming it, never numbers a model trains on."""
    doc = read_index(paths, shard)
    if doc is None:
        raise DataError(f"{paths.features} has no features of shard {shard}: run the featurize stage")
    try:
        features = np.load(array_file(paths, shard), mmap_mode="r")
    except (OSError, ValueError) as err:
        raise DataError(f"{array_file(paths, shard)}: cannot load the features ({err})") from None
    members = doc.get("members")
    failed = doc.get("failed", {})
    if not isinstance(members, list) or not isinstance(failed, dict):
        raise DataError(f"{index_file(paths, shard)}: not a features entry (members, failed)")
    names = [str(m) for m in members]
    if (problem := features_problem(features, names, width)) is not None:
        raise FeaturesDamaged(array_file(paths, shard), problem)
    return ShardFeatures(names, features, {str(k): str(v) for k, v in failed.items()})


def write_shard(paths: Paths, shard: str, key: str, got: ShardFeatures) -> None:
    """Write one shard's ``.npy`` and ``.json`` atomically (the array first)."""
    with atomic_path(array_file(paths, shard)) as tmp, open(tmp, "wb") as fh:  # np.save(path) would add ".npy"
        np.save(fh, np.ascontiguousarray(got.features, dtype=np.float32), allow_pickle=False)
    write_json(index_file(paths, shard), {"shard": shard, "key": key, "members": got.members, "failed": got.failed})


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
        raise DataError(f"{paths.features / META} not found: run the featurize stage first")
    by_shard: dict[str, list[int]] = defaultdict(list)
    for i, (shard, _) in enumerate(refs):
        by_shard[shard].append(i)
    x = np.zeros((len(refs), meta.width), np.float32)
    for shard, rows in by_shard.items():
        got = read_shard(paths, shard, meta.width)
        where = {m: i for i, m in enumerate(got.members)}
        for i in rows:
            member = refs[i][1]
            if member not in where:
                why = got.failed.get(member, "not in the posts table when featurize ran")
                raise DataError(f"no features of shard {shard} member {member} ({why}): run the featurize stage")
            x[i] = got.features[where[member]]
    return Features(meta, x)


# --------------------------------------------------------------------------- the model input


class FeaturesInput(ModelInput):
    """The featurize stage's features of each dataset image, fed to a model as float B x F."""

    kind = "features"
    module = __name__

    def __init__(self) -> None:
        self._backbones: dict[tuple[str, int, str], Backbone] = {}

    def data_dep(self, paths: Paths) -> str:
        return paths.rel(paths.features)

    def load(self, data: DatasetRows, paths: Paths) -> tuple[InputSpec, np.ndarray]:
        rows = (*data.index, *data.dropped)  # one row of features per row of the images array
        feats = load_features(paths, [(str(r["shard"]), str(r["member"])) for r in rows])
        m = feats.meta
        spec = InputSpec("features", m.input_size, str(data.meta["target"]), m.backbone, m.width, m.to_dict())
        return spec, feats.x

    def batch(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(device, non_blocking=True)

    def from_images(self, spec: InputSpec, images: np.ndarray, device: torch.device) -> np.ndarray:
        """The backbone named by ``spec`` in front of the model, as the featurize stage ran it."""
        from imgrate.backbones import load_backbone

        key = (str(spec.backbone), spec.size, str(device))
        if key not in self._backbones:
            self._backbones[key] = load_backbone(str(spec.backbone), spec.size).to(device)
        meta = (FeatureMeta.from_dict(spec.features, "the model file's input") if spec.features
                else FeatureMeta(str(spec.backbone), spec.size, int(spec.width or 0), RESAMPLE))
        return compute(meta, self._backbones[key], images, device)  # the columns the model was trained on


FEATURES = FeaturesInput()
