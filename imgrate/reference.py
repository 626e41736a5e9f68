"""What a model saw in training, kept in its model file so that a score can be read.

A model's raw output is a predicted target (likes / the photographer's best post, or a
ranking score): its scale depends on the model and on the training data, so "0.21" alone
tells a photographer nothing. At train time the model file gets one block,
``reference`` (:func:`build`), holding:

- ``scores``: the model's own scores of the training split's photos, sorted, for all
  photographers and per photographer. :func:`percentile` places a new photo's score among
  them: 80 means the model scores it above 80% of the photographer's own past posts.
- ``inputs``: simple statistics of the training photos (per-channel mean and spread,
  saturation, edge energy, on a 32 px copy), their mean and inverse covariance, and the
  training photos' own distances. :func:`input_check` gives a new photo's Mahalanobis
  distance and flags it ``unusual`` when it lies further out than 99% of the training
  photos: there the model's score is an extrapolation. (It sees only these statistics: a flat
  grey frame was not flagged against the default world's model.)

The block is plain lists and numbers (``torch.load(weights_only=True)`` reads it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

KEY = "reference"  # the block's name in the model file
VERSION = 1
STAT_SIZE = 32  # px: statistics are computed on this copy of any image, whatever its size
STATS = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation", "edges")
UNUSUAL_PERCENTILE = 99.0  # beyond the distance of 99% of the training photos


def image_stats(images: np.ndarray) -> np.ndarray:
    """float64 N x len(STATS) statistics of uint8 N x S x S x 3 images (any S)."""
    out = np.zeros((len(images), len(STATS)), dtype=np.float64)
    for i, img in enumerate(images):
        small = np.asarray(Image.fromarray(np.asarray(img, dtype=np.uint8)).resize(
            (STAT_SIZE, STAT_SIZE), Image.Resampling.BOX), dtype=np.float64) / 255.0
        pixels = small.reshape(-1, 3)
        gray = small.mean(axis=2)
        edges = np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean()
        out[i] = [*pixels.mean(axis=0), *pixels.std(axis=0), float((pixels.max(1) - pixels.min(1)).mean()), edges]
    return out


def _mahalanobis(x: np.ndarray, mean: np.ndarray, inv: np.ndarray) -> np.ndarray:
    d = x - mean
    return np.asarray(np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, inv, d), 0.0)))


def _rounded(values: np.ndarray, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in values]


def build(scores: np.ndarray, users: np.ndarray, images: np.ndarray) -> dict[str, Any]:
    """The ``reference`` block from the training split: the model's ``scores`` of its photos,
    their photographers (``users``) and the photos (uint8, any size)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    users = np.asarray(users)
    by_user = {str(u): _rounded(np.sort(scores[users == u])) for u in sorted(set(users.tolist()))}
    stats = image_stats(images)
    mean = stats.mean(axis=0)
    cov = np.cov(stats, rowvar=False) if len(stats) > 1 else np.eye(len(STATS))
    cov = np.atleast_2d(cov) + np.eye(len(STATS)) * (1e-6 + 1e-3 * float(np.trace(np.atleast_2d(cov))) / len(STATS))
    inv = np.linalg.inv(cov)
    distances = np.sort(_mahalanobis(stats, mean, inv))
    return {
        "version": VERSION,
        "split": "train",
        "scores": {"all": _rounded(np.sort(scores)), "by_user": by_user},
        "inputs": {"stats": list(STATS), "size": STAT_SIZE, "mean": _rounded(mean, 8),
                   "inverse_covariance": [_rounded(row, 8) for row in inv],
                   "distances": _rounded(distances)},
    }


def percentile(ref: dict[str, Any], score: float, user: str | None = None) -> float:
    """Where ``score`` falls among the training scores of ``user`` (all users when None or
    unknown), in [0, 100]: the share scored lower, ties counted half."""
    pool = ref["scores"]["by_user"].get(user) if user is not None else None
    values = np.asarray(pool if pool else ref["scores"]["all"], dtype=np.float64)
    if len(values) == 0:
        return 50.0
    below = np.searchsorted(values, score, side="left")
    at_or_below = np.searchsorted(values, score, side="right")
    return float(100.0 * (below + 0.5 * (at_or_below - below)) / len(values))


def input_check(ref: dict[str, Any], images: np.ndarray) -> list[dict[str, Any]]:
    """Per image: ``distance`` from the training photos (Mahalanobis, on :data:`STATS`),
    ``distance_percentile`` (share of training photos nearer the centre) and ``unusual``."""
    inputs = ref["inputs"]
    mean = np.asarray(inputs["mean"], dtype=np.float64)
    inv = np.asarray(inputs["inverse_covariance"], dtype=np.float64)
    train = np.asarray(inputs["distances"], dtype=np.float64)
    out = []
    for d in _mahalanobis(image_stats(images), mean, inv):
        pct = float(100.0 * np.searchsorted(train, d, side="right") / len(train)) if len(train) else 0.0
        out.append({"distance": round(float(d), 3), "distance_percentile": round(pct, 1),
                    "unusual": bool(pct > UNUSUAL_PERCENTILE)})
    return out
