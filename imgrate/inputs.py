"""What a model reads: the contract between the data the stages wrote and a model's input.

A model of the registry (:mod:`imgrate.models`) names the inputs it reads, each a
:class:`ModelInput`: the dataset's pixels (:data:`imgrate.pixels.PIXELS`) or the featurize
stage's backbone features (:data:`imgrate.features.FEATURES`). An input says

- which data it reads beyond ``data/dataset`` (the DVC dependency of ``train@<model>``) and
  which module holds its code, so that a model depends on exactly what it reads;
- how to read one row per dataset row (:meth:`ModelInput.load`), what it read
  (:class:`InputSpec`, stored in the model file) and how a batch of those rows becomes the
  model's input tensor (:meth:`ModelInput.batch`);
- how image files become the same kind of rows (:meth:`ModelInput.from_images`), for
  ``imgrate predict`` and ``rank``.

Every model also reads ``data/dataset`` itself (targets, users, splits, and the training
photos' statistics of the model file's reference block).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

    from imgrate.paths import Paths


@dataclass(frozen=True)
class InputSpec:
    """What a model read: ``kind`` rows of images seen at ``size`` px (the dataset's pixels,
    or ``width`` features of a ``backbone``), and the target it learned."""

    kind: str
    size: int
    target: str
    backbone: str | None = None  # features only
    width: int | None = None  # features only
    features: dict[str, Any] | None = None  # features only: their meta.json (blocks of columns, ...)

    def describe(self) -> str:
        """``50px images`` or ``efficientnet-lite0 features of 128px images``."""
        return f"{self.backbone} features of {self.size}px images" if self.backbone else f"{self.size}px images"


class DatasetRows(Protocol):
    """What an input reads of the dataset (:class:`imgrate.dataset.Dataset` has it)."""

    images: np.ndarray  # N x S x S x 3 uint8
    index: list[dict[str, Any]]  # one row per image: shortcode, user, target, split, shard, member
    meta: dict[str, Any]  # size, target, ...
    dropped: list[dict[str, Any]]  # as index: the posts the per-user balance left out, rows after it


class ModelInput(ABC):
    """One kind of model input (see the module docstring)."""

    kind: str  # the name models and model files use: "pixels", "features"
    module: str  # the dotted module that declares it: its code, a dependency of every model reading it

    @abstractmethod
    def data_dep(self, paths: Paths) -> str:
        """The data it reads, as dvc.yaml names the dependency (relative to the project)."""

    @abstractmethod
    def load(self, data: DatasetRows, paths: Paths) -> tuple[InputSpec, np.ndarray]:
        """One row per dataset row (possibly memory-mapped), and what they are."""

    @abstractmethod
    def batch(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """The model's input tensor for rows of :meth:`load`'s array (on ``device``)."""

    @abstractmethod
    def from_images(self, spec: InputSpec, images: np.ndarray, device: torch.device) -> np.ndarray:
        """Rows like :meth:`load`'s for uint8 N x S x S x 3 images at ``spec.size`` px."""

    def check(self, spec: InputSpec, trained: InputSpec, model: str) -> None:
        """Raise :class:`imgrate.errors.DataError` when rows of ``spec`` are not what a model
        trained on ``trained`` reads (another size or backbone)."""
        from imgrate.errors import DataError

        blocks = (spec.features or {}).get("blocks"), (trained.features or {}).get("blocks")
        if (spec.kind, spec.size, spec.backbone, spec.width) != (trained.kind, trained.size, trained.backbone,
                                                                 trained.width) or (all(blocks) and blocks[0] != blocks[1]):
            raise DataError(f"{model} was trained on {trained.describe()} but the data has {spec.describe()}")
