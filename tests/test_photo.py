"""imgrate.photo: interpretable photo properties, checked on images whose values are known."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from imgrate.photo import PROPERTIES, WORDS, describe


def _one(img: np.ndarray) -> dict[str, float]:
    return dict(zip(PROPERTIES, describe(img[None]).tolist()[0], strict=True))


def _solid(rgb: tuple[int, int, int], size: int = 32) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (size, size, 3)).copy()


def test_gray_white_and_black_frames() -> None:
    gray = _one(_solid((128, 128, 128)))
    assert gray["brightness"] == pytest.approx(128 / 255, abs=1e-4)
    for name in ("contrast", "saturation", "colourfulness", "warmth", "shadows_clipped", "highlights_clipped"):
        assert gray[name] == pytest.approx(0.0, abs=1e-5), name
    white, black = _one(_solid((255, 255, 255))), _one(_solid((0, 0, 0)))
    assert white["brightness"] == pytest.approx(1.0) and white["highlights_clipped"] == 1.0
    assert black["brightness"] == 0.0 and black["shadows_clipped"] == 1.0 and black["saturation"] == 0.0


def test_colour_warmth_and_saturation() -> None:
    red, blue = _one(_solid((255, 0, 0))), _one(_solid((0, 0, 255)))
    assert red["warmth"] == pytest.approx(1.0) and blue["warmth"] == pytest.approx(-1.0)
    assert red["saturation"] == pytest.approx(1.0) and blue["saturation"] == pytest.approx(1.0)
    pastel = _one(_solid((230, 200, 190)))
    assert 0 < pastel["saturation"] < red["saturation"]
    assert 0 < pastel["colourfulness"] < red["colourfulness"]


def test_contrast_of_a_checkerboard_and_sharpness_of_a_blur() -> None:
    board = (np.indices((64, 64)).sum(axis=0) // 8 % 2 * 255).astype(np.uint8)
    sharp = np.repeat(board[..., None], 3, axis=2)
    props = _one(sharp)
    assert props["contrast"] == pytest.approx(0.5, abs=1e-3)
    assert props["brightness"] == pytest.approx(0.5, abs=1e-3)
    blurred = np.asarray(Image.fromarray(sharp).filter(ImageFilter.GaussianBlur(3)))
    assert _one(blurred)["sharpness"] < props["sharpness"] - 1.0
    assert _one(_solid((90, 90, 90)))["sharpness"] == 0.0


def test_batches_match_single_images_across_chunks() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(300, 16, 16, 3), dtype=np.uint8)  # more than one chunk
    batch = describe(images)
    assert batch.shape == (300, len(PROPERTIES)) and batch.dtype == np.float32
    assert np.isfinite(batch).all()
    for i in (0, 255, 256, 299):
        np.testing.assert_allclose(batch[i], describe(images[i:i + 1])[0], rtol=1e-6)


def test_every_property_has_words_and_bad_input_is_named() -> None:
    assert set(WORDS) == set(PROPERTIES)
    with pytest.raises(ValueError, match="uint8 N x H x W x 3"):
        describe(np.zeros((2, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="float32"):
        describe(np.zeros((1, 8, 8, 3), dtype=np.float32))
