"""images: the one decoder (any file -> RGB thumbnail), JPEG thumbnails, tensor batches."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrate.errors import ImageError
from imgrate.images import jpeg_thumbnail, load_thumbnail, read_image, to_tensor_batch


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _test_image(w: int = 120, h: int = 80) -> Image.Image:
    """Left half red, right half blue."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = (255, 0, 0)
    a[:, w // 2 :] = (0, 0, 255)
    return Image.fromarray(a)


def test_jpeg_is_resized_to_rgb_square() -> None:
    out = load_thumbnail(_encode(_test_image(), "JPEG"), 50)
    assert out.shape == (50, 50, 3) and out.dtype == np.uint8
    assert out[25, 5, 0] > 200 and out[25, 45, 2] > 200  # red left, blue right


def test_grayscale_cmyk_png_and_alpha_become_rgb() -> None:
    gray = load_thumbnail(_encode(_test_image().convert("L"), "JPEG"), 32)
    assert gray.shape == (32, 32, 3) and np.all(gray[..., 0] == gray[..., 1])
    cmyk = load_thumbnail(_encode(_test_image().convert("CMYK"), "JPEG"), 32)
    assert cmyk[16, 3, 0] > 200 and cmyk[16, 28, 2] > 200
    png = load_thumbnail(_encode(_test_image(), "PNG"), 32)
    assert png[16, 3].tolist() == [255, 0, 0]
    rgba = _test_image().convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited on white
    assert load_thumbnail(_encode(rgba, "PNG"), 16).min() == 255


def test_exif_orientation_is_applied() -> None:
    im = _test_image(120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = load_thumbnail(_encode(im, "JPEG", exif=exif.tobytes()), 40)
    # after rotating clockwise, red (left) is on top and blue at the bottom
    assert out[3, 20, 0] > 200 and out[36, 20, 2] > 200


def test_16_bit_grayscale_png_is_scaled_not_clipped() -> None:
    a = np.full((20, 20), 32896, np.uint16)  # 128 * 257: mid gray
    out = load_thumbnail(_encode(Image.fromarray(a), "PNG"), 8)
    assert out.shape == (8, 8, 3) and np.all(np.abs(out.astype(int) - 128) <= 1)


def test_draft_decoding_stays_close_to_a_full_decode() -> None:
    """Draft mode (DCT scaling) + bilinear against a full decode + Lanczos: tiny differences."""
    from imgrate.demo.world import DemoWorld
    from imgrate.params import DemoParams

    world = DemoWorld(["quality_demo"], DemoParams(seed=3, image_size=1080))
    post = next(p for p in world.posts("quality_demo") if p.typename != "GraphVideo")
    data = world.image(post.shortcode)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((50, 50), Image.Resampling.LANCZOS))
    mse = np.mean((load_thumbnail(data, 50).astype(float) - ref) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35  # PSNR in dB (measured: ~48)


@pytest.mark.parametrize("data", [b"", b"not an image", None])
def test_corrupt_and_truncated_images_raise_image_error(data) -> None:
    if data is None:
        full = _encode(_test_image(400, 400), "JPEG")
        data = full[: len(full) // 3]
    with pytest.raises(ImageError):
        load_thumbnail(data, 50)


def test_jpeg_thumbnail_keeps_the_aspect_and_converts_like_the_decoder() -> None:
    rgba = _test_image(200, 100).convert("RGBA")
    rgba.putalpha(0)  # fully transparent: white, as load_thumbnail composites it
    with Image.open(io.BytesIO(jpeg_thumbnail(_encode(rgba, "PNG"), 64))) as im:
        assert im.format == "JPEG" and im.size == (64, 32) and im.mode == "RGB"
        assert np.asarray(im).min() >= 250


def test_read_image_names_the_file_and_tensor_batches_are_nchw(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match="notes.txt: not a readable image"):
        read_image(tmp_path / "notes.txt", 32)
    (tmp_path / "a.png").write_bytes(_encode(_test_image(), "PNG"))
    x = to_tensor_batch(read_image(tmp_path / "a.png", 32)[None])
    assert x.shape == (1, 3, 32, 32) and x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0


def test_read_file_refuses_what_is_not_a_photo_file_before_reading(tmp_path) -> None:
    """A FIFO (nothing waits on it), a device, a folder and a file over the limit are refused
    by os.stat before a byte is read; a photo file under the limit is read whole."""
    import os

    from imgrate.images import read_file

    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageError, match=r"pipe.jpg: not read: a FIFO \(named pipe\), not a photo file"):
        read_file(tmp_path / "pipe.jpg")
    with pytest.raises(ImageError, match="not read: a character device"):
        read_file(Path("/dev/zero"))
    with pytest.raises(ImageError, match="not read: a folder"):
        read_file(tmp_path)
    with open(tmp_path / "huge.jpg", "wb") as fh:
        fh.truncate(8 * 1024 ** 3)  # sparse
    with pytest.raises(ImageError, match=r"huge.jpg: not read: 8.0 GB, over the 64.0 MB limit"):
        read_file(tmp_path / "huge.jpg")
    data = _encode(_test_image(), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    assert read_file(tmp_path / "a.png") == data
    with pytest.raises(ImageError, match="over the"):
        read_file(tmp_path / "a.png", limit=len(data) - 1)
    with pytest.raises(ImageError, match="missing.jpg: cannot read the file"):
        read_file(tmp_path / "missing.jpg")
