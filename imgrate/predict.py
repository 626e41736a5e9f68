"""Scoring photos with a trained model file: decoded images (``imgrate predict``/``rank``,
through :mod:`imgrate.rank`) and dataset rows (the evaluate stage).

A :class:`Scorer` turns a model file into ``images -> scores`` whatever the model: its
registry entry says what it reads (:mod:`imgrate.inputs`) and the file what those inputs
were (:class:`imgrate.inputs.InputSpec`). A ``pixels`` model sees the image resized to its
dataset size; a ``features`` model sees it at the backbone's input size through that frozen
backbone, then its head. Dataset rows are scored from the dataset's pixels or the
featurize stage's stored features, never decoded again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgrate import reference
from imgrate.dataset import Dataset
from imgrate.models import load_model
from imgrate.paths import Paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """How to read one photo's score (:mod:`imgrate.reference`); all None/False for a model
    file without a reference block."""

    # where the score falls among the model's scores of the training photos (of the given
    # photographer, else of all), 0-100
    percentile: float | None = None
    # how far the photo lies from the training photos (imgrate.reference.input_check)
    distance_percentile: float | None = None
    unusual: bool = False


class Scorer:
    """A trained model file, ready to score uint8 RGB images of any size."""

    def __init__(self, model_file: Path, device: torch.device | None = None, batch_size: int = 64) -> None:
        self.path = model_file
        self.device = device or torch.device("cpu")
        self.batch_size = batch_size
        self.model, self.info = load_model(model_file, self.device)
        self.spec = self.info.spec
        self.input = self.info.input
        self.input_size = max(i.size for i in self.info.inputs)  # image files are read at this size
        self.reference: dict[str, Any] | None = self.info.extra.get(reference.KEY)

    def photographers(self) -> list[str]:
        """The photographers whose training photos the percentiles can be taken against."""
        return sorted(self.reference["scores"]["by_user"]) if self.reference else []

    def _head(self, xs: list[np.ndarray]) -> np.ndarray:
        """Scores of rows of each input (as :meth:`imgrate.inputs.ModelInput.load` gives them)."""
        with torch.inference_mode():
            batch = [inp.batch(x, self.device) for inp, x in zip(self.spec.reads, xs)]
            return self.model(*batch).float().cpu().numpy()  # type: ignore[no-any-return]

    def score_images(self, images: np.ndarray) -> np.ndarray:
        """Scores of uint8 N x S x S x 3 images at :attr:`input_size`; higher = more popular."""
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            xs = [inp.from_images(spec, _resized(chunk, spec.size), self.device)
                  for inp, spec in zip(self.spec.reads, self.info.inputs)]
            out.append(self._head(xs))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def place(self, scores: np.ndarray, images: np.ndarray, user: str | None = None) -> list[Placement]:
        """Where each score falls among the training photos' scores (of ``user`` when the
        model knows that photographer, else of all), and how far each image (uint8, any
        size) lies from the training photos; empty placements for a model without a
        reference block."""
        ref = self.reference
        if not ref:
            return [Placement() for _ in scores]
        pool = user if user in ref["scores"]["by_user"] else None
        checks = reference.input_check(ref, images) if len(images) else []
        return [Placement(round(reference.percentile(ref, float(s), pool), 1), c["distance_percentile"], c["unusual"])
                for s, c in zip(scores, checks)]

    def score_rows(self, data: Dataset, paths: Paths, rows: np.ndarray) -> np.ndarray:
        """Scores of dataset rows, from what the model reads: the dataset's pixels or the
        stored features of the same posts (``data/features``)."""
        specs, sources = self.spec.load_inputs(data, paths)
        for inp, have, trained in zip(self.spec.reads, specs, self.info.inputs):
            inp.check(have, trained, self.path.name)
        out = []
        for i in range(0, len(rows), 512):
            out.append(self._head([np.asarray(src[rows[i : i + 512]]) for src in sources]))
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def describe(self, user: str | None = None) -> dict[str, Any]:
        """The model and what its percentiles are taken against."""
        out: dict[str, Any] = {"model": str(self.path), "architecture": self.info.model,
                               "input_size": self.input_size}
        if self.reference:
            known = user in self.reference["scores"]["by_user"]
            out["percentile_of"] = (f"{user}'s training photos" if known else
                                    f"all {len(self.photographers())} photographers' training photos")
        return out


def _resized(images: np.ndarray, size: int) -> np.ndarray:
    """``images`` (uint8 N x S x S x 3) at ``size`` px: the same images when S is ``size``."""
    if images.shape[1] == size:
        return images
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
                     for img in images]) if len(images) else np.zeros((0, size, size, 3), np.uint8)
