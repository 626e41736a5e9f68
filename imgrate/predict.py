"""Scoring photos with a trained model file: image files (``imgrate predict``/``rank``) and
dataset rows (the evaluate stage).

A :class:`Scorer` turns a model file into ``images -> scores`` whatever the model: its
registry entry says what it reads (:mod:`imgrate.inputs`) and the file what those inputs
were (:class:`imgrate.inputs.InputSpec`). A ``pixels`` model sees the image resized to its
dataset size; a ``features`` model sees it at the backbone's input size through that frozen
backbone, then its head. Dataset rows are scored from the dataset's pixels or the
featurize stage's stored features, never decoded again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imgrate import reference
from imgrate.dataset import Dataset
from imgrate.errors import ImageError
from imgrate.images import read_image
from imgrate.models import load_model
from imgrate.paths import Paths

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scored:
    file: str
    score: float  # the model's raw output (its predicted target)
    # where the score falls among the model's scores of the training photos (of the given
    # photographer, else of all), 0-100; None for a model file without a reference block
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

    def score_files(self, files: Sequence[Path], user: str | None = None) -> tuple[list[Scored], list[dict[str, str]]]:
        """(scored files best first, errors): a file that is not a readable image is reported
        in the errors, the others are still scored. Percentiles are taken against ``user``'s
        training photos when the model knows that photographer, else against all of them."""
        names, arrays, errors = [], [], []
        for path in files:
            try:
                arrays.append(read_image(path, self.input_size))
                names.append(str(path))
            except ImageError as err:
                errors.append({"file": str(path), "error": str(err)})
        images = np.stack(arrays) if arrays else np.zeros((0, self.input_size, self.input_size, 3), np.uint8)
        scores = self.score_images(images) if arrays else np.zeros(0)
        ref = self.reference
        checks = reference.input_check(ref, images) if ref and arrays else [{} for _ in names]
        pool = user if ref and user in ref["scores"]["by_user"] else None
        found = [Scored(f, float(s), round(reference.percentile(ref, float(s), pool), 1) if ref else None,
                        c.get("distance_percentile"), bool(c.get("unusual", False)))
                 for f, s, c in zip(names, scores, checks)]
        ranked = sorted(found, key=lambda r: (-r.score, r.file))
        return ranked, errors

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


def image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Every regular, non-hidden file in ``folder`` (the scorer decides which are images)."""
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
