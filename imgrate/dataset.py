"""Reading what the preprocess stage wrote: images, index and meta of ``data/dataset/``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgrate.errors import DataError
from imgrate.io import read_jsonl
from imgrate.paths import Paths


@dataclass
class Dataset:
    images: np.ndarray  # N x S x S x 3 uint8 (memory-mapped)
    index: list[dict[str, Any]]  # one row per image: shortcode, user, date, likes, target, split
    meta: dict[str, Any]

    def split(self, name: str) -> np.ndarray:
        """Row numbers of a split ("train", "val", "test")."""
        return np.array([r["row"] for r in self.index if r["split"] == name], dtype=np.int64)

    def targets(self, rows: np.ndarray) -> np.ndarray:
        return np.array([self.index[i]["target"] for i in rows], dtype=np.float32)

    def users(self, rows: np.ndarray) -> np.ndarray:
        return np.array([self.index[i]["user"] for i in rows])


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
    index = read_jsonl(paths.dataset_index)
    if len(index) != images.shape[0]:
        raise DataError(
            f"{paths.dataset_index} has {len(index)} rows but {images_path.name} has {images.shape[0]} images"
        )
    return Dataset(images, index, meta)
