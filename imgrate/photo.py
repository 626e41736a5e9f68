"""Interpretable properties of a photo, measured from its pixels as photo tools measure them.

Each property means the same on a real photograph as on a simulated one (nothing here reads
:mod:`imgrate.demo`): brightness and contrast of the luma, how much of the frame is clipped
to black or to white, saturation, colourfulness (Hasler and Suesstrunk 2003), warmth (red
over blue) and sharpness (the variance of the Laplacian of the luma). Featurize may append
them to a model's inputs; analyze correlates them with likes per photographer.

The input is a batch of RGB thumbnails (uint8 N x S x S x 3, :mod:`imgrate.images`); every
value is a float32 on a fixed scale, so properties of photos of the same thumbnail size
compare. Sharpness depends on that size (a 50 px thumbnail of a sharp photo is less sharp
than its 256 px one): compare it only between photos measured at one size.
"""

from __future__ import annotations

import numpy as np

# The properties, in the order of :func:`describe`'s columns.
PROPERTIES: tuple[str, ...] = (
    "brightness",  # mean luma, 0 (black) .. 1 (white)
    "contrast",  # RMS contrast: standard deviation of the luma, 0 .. 0.5
    "shadows_clipped",  # share of the frame at luma <= 5/255 (crushed blacks)
    "highlights_clipped",  # share of the frame at luma >= 250/255 (blown highlights)
    "saturation",  # mean HSV saturation, 0 (gray) .. 1
    "colourfulness",  # Hasler-Suesstrunk M on the 0..1 scale (~0 gray, ~0.1 moderately colourful, ~0.4 extreme)
    "warmth",  # mean (red - blue), -1 (blue) .. 1 (red)
    "sharpness",  # log(1 + 1000 * variance of the 4-neighbour Laplacian of the luma)
)

# Words for each property, for people (analyze's sentences and tables).
WORDS: dict[str, tuple[str, str]] = {  # property -> (more of it, less of it)
    "brightness": ("brighter", "darker"),
    "contrast": ("higher-contrast", "flatter"),
    "shadows_clipped": ("more crushed-black", "less crushed-black"),
    "highlights_clipped": ("more blown-out", "less blown-out"),
    "saturation": ("more saturated", "less saturated"),
    "colourfulness": ("more colourful", "less colourful"),
    "warmth": ("warmer", "cooler"),
    "sharpness": ("sharper", "softer"),
}

_CHUNK = 256  # images per step: the float32 work arrays stay under ~60 MB at 128 px


def describe(images: np.ndarray) -> np.ndarray:
    """float32 N x len(:data:`PROPERTIES`) properties of uint8 N x S x S x 3 RGB images."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 N x H x W x 3 images, got {images.dtype} {images.shape}")
    out = np.empty((len(images), len(PROPERTIES)), dtype=np.float32)
    for start in range(0, len(images), _CHUNK):
        out[start:start + _CHUNK] = _describe(images[start:start + _CHUNK])
    return out


def _describe(images: np.ndarray) -> np.ndarray:
    rgb = images.astype(np.float32) / 255.0  # N,H,W,3 in [0, 1]
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b  # N,H,W (Rec. 601)
    flat = luma.reshape(len(luma), -1)
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    saturation = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)
    rg, yb = r - g, 0.5 * (r + g) - b
    rg, yb = rg.reshape(len(rg), -1), yb.reshape(len(yb), -1)
    colourfulness = np.sqrt(rg.var(axis=1) + yb.var(axis=1)) + 0.3 * np.sqrt(rg.mean(axis=1) ** 2 + yb.mean(axis=1) ** 2)
    lap = (luma[:, 1:-1, :-2] + luma[:, 1:-1, 2:] + luma[:, :-2, 1:-1] + luma[:, 2:, 1:-1]
           - 4.0 * luma[:, 1:-1, 1:-1])  # N,H-2,W-2
    sharpness = np.log1p(1000.0 * lap.reshape(len(lap), -1).var(axis=1))
    return np.stack([
        flat.mean(axis=1),
        flat.std(axis=1),
        (flat <= 5 / 255).mean(axis=1),
        (flat >= 250 / 255).mean(axis=1),
        saturation.reshape(len(saturation), -1).mean(axis=1),
        colourfulness,
        (r - b).reshape(len(r), -1).mean(axis=1),
        sharpness,
    ], axis=1).astype(np.float32)
