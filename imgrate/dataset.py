"""Reading what the preprocess stage wrote: images, index and meta of ``data/dataset/``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgrate.errors import DataError
from imgrate.io import read_jsonl
from imgrate.paths import Paths


@dataclass
class Dataset:
    """``index``: the paper's dataset (after its per-user balance), rows 0 .. n-1 of ``images``;
    ``dropped``: the posts that balance left out (rows n .. N-1, each with a split of its own),
    read only by models that balance users by sample weights (:meth:`split` with ``dropped``)."""

    images: np.ndarray  # N x S x S x 3 uint8 (memory-mapped)
    index: list[dict[str, Any]]  # one row per image: shortcode, user, date, likes, target, split
    meta: dict[str, Any]
    dropped: list[dict[str, Any]] = field(default_factory=list)  # as index, rows after it

    def split(self, name: str, dropped: bool = False) -> np.ndarray:
        """Row numbers of a split ("train", "val", "test"); with ``dropped``, followed by those of
        the posts the per-user balance left out that fall in that split."""
        rows = [r["row"] for r in (*self.index, *(self.dropped if dropped else ())) if r["split"] == name]
        return np.array(rows, dtype=np.int64)

    def row(self, i: int) -> dict[str, Any]:
        """The index entry of row ``i`` (a kept or a dropped post)."""
        return self.index[i] if i < len(self.index) else self.dropped[i - len(self.index)]

    def targets(self, rows: np.ndarray) -> np.ndarray:
        return np.array([self.row(int(i))["target"] for i in rows], dtype=np.float32)

    def users(self, rows: np.ndarray) -> np.ndarray:
        return np.array([self.row(int(i))["user"] for i in rows])


DROPPED = "dropped"  # index.jsonl's ``balance`` of a post the per-user balance left out


def load_dataset(paths: Paths) -> Dataset:
    """Open the dataset; a missing or inconsistent part raises :class:`DataError`."""
    if not paths.dataset_meta.exists():
        raise DataError(f"{paths.dataset_meta} not found: run the preprocess stage first")
    meta = json.loads(paths.dataset_meta.read_text(encoding="utf-8"))
    images_path = paths.dataset / meta["images"]
    try:
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise DataError(f"{images_path}: cannot load the image array ({err})") from err
    rows = read_jsonl(paths.dataset_index)
    if len(rows) != images.shape[0]:
        raise DataError(
            f"{paths.dataset_index} has {len(rows)} rows but {images_path.name} has {images.shape[0]} images"
        )
    index = [r for r in rows if r.get("balance") != DROPPED]
    dropped = rows[len(index):]
    if any(r.get("balance") != DROPPED for r in dropped) or any(r["row"] != i for i, r in enumerate(rows)):
        raise DataError(f"{paths.dataset_index}: the rows are out of order (kept posts first, then dropped ones)")
    return Dataset(images, index, meta, dropped)
