"""Any image file -> an RGB thumbnail or a tensor batch: the one decoder.

Every stage that reads pixels goes through here: preprocess (the dataset's 50 px images),
featurize (the backbone's input size), ``imgrate rank``/``predict`` (files of any format),
the MongoDB export's JPEG thumbnails, and analyze's pictures. Pillow decodes; JPEGs in draft
mode (a reduced-scale DCT), EXIF orientation applied, every mode made RGB the same way
(:func:`to_rgb`: alpha on white, 16-bit gray scaled).
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from imgrate.errors import ImageError, safe_text

RESAMPLE = "bilinear"  # the thumbnails' resampling filter (part of the caches' keys)
ORIENTATION = 0x0112  # the EXIF tag


def load_thumbnail(data: bytes, size: int) -> np.ndarray:
    """Decode image bytes to a ``size`` x ``size`` x 3 uint8 RGB array.

    JPEGs are decoded in draft mode: libjpeg scales the DCT by 1/2, 1/4 or 1/8, the smallest
    scale that still gives at least ``size`` px on each side, so a 1080 px photo is never
    decoded at full size. EXIF orientation is applied; grayscale, 16-bit, CMYK and palette
    images become RGB, and transparency is composited on white. The whole frame is then
    resized (not cropped, as the paper did) with a bilinear filter whose support widens
    with the scale factor, so the downscale is antialiased.
    """
    try:
        with Image.open(io.BytesIO(data)) as src:
            im = _oriented_rgb(src, size).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot decode image: {type(err).__name__}: {err}") from err


def _oriented_rgb(src: ImageFile.ImageFile, size: int) -> Image.Image:
    """``src`` decoded for at least ``size`` px (JPEG draft mode: a reduced-scale DCT; other
    formats ignore it), turned as its EXIF orientation says, in RGB."""
    src.draft("RGB", (size, size))
    im: Image.Image = src
    if src.getexif().get(ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(src)
    return im if im.mode == "RGB" else to_rgb(im)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: alpha on white, 16/32-bit integer gray scaled to 8 bits."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im).convert("RGB")
    if im.mode.startswith("I;16") or im.mode == "I":  # 16-bit PNG/TIFF gray: 0..65535
        im = im.convert("I").point(lambda v: v / 257)
        return im.convert("L").convert("RGB")
    return im.convert("RGB")


# A photo file larger than this is refused before it is read: the biggest camera JPEGs are
# ~30 MB, and a file is held in memory whole while it is decoded.
MAX_FILE_BYTES = 64 * 1024 * 1024

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int) -> str:
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def _megabytes(n: int) -> str:
    return f"{n / 1024 ** 3:,.1f} GB" if n >= 1024 ** 3 else f"{n / 1024 ** 2:,.1f} MB"


def read_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a user's photo file, refused by its type and size before any is read.

    ``os.stat`` first: a FIFO, a device (``/dev/zero``), a socket or a folder is not a photo,
    and a regular file over ``limit`` bytes (an 8 GB sparse file) is not read. The file is
    then opened with ``O_NONBLOCK`` (a FIFO swapped in after the check cannot make the open
    wait), checked again through its descriptor, and read up to ``limit`` + 1 bytes, so a file
    that grows meanwhile is refused too. Raises :class:`ImageError` naming the file."""
    name = safe_text(path)
    try:
        st = os.stat(path)
    except OSError as err:
        raise ImageError(f"{name}: cannot read the file ({err.strerror or type(err).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{name}: not read: {_not_regular(st.st_mode)}, not a photo file")
    if st.st_size > limit:
        raise ImageError(f"{name}: not read: {_megabytes(st.st_size)}, over the {_megabytes(limit)} limit for a photo")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        raise ImageError(f"{name}: cannot read the file ({err.strerror or type(err).__name__})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{name}: not read: {_not_regular(st.st_mode)}, not a photo file")
        try:
            data = fh.read(limit + 1)
        except OSError as err:
            raise ImageError(f"{name}: cannot read the file ({err.strerror or type(err).__name__})") from None
    if len(data) > limit:
        raise ImageError(f"{name}: not read: over the {_megabytes(limit)} limit for a photo (it grew while read)")
    return data


def decode_image(data: bytes, size: int, where: object) -> np.ndarray:
    """:func:`load_thumbnail` of a file's bytes, with an :class:`ImageError` that names the
    file (``where``) and says in words what is wrong with it."""
    from PIL import UnidentifiedImageError

    try:
        return load_thumbnail(data, size)
    except ImageError as err:
        name = safe_text(where)
        if isinstance(err.__cause__, UnidentifiedImageError):
            raise ImageError(f"{name}: not a readable image (no image format Pillow knows)") from None
        raise ImageError(f"{name}: not a readable image (damaged or unsupported: {err.__cause__ or err})") from None


def read_image(path: Path, size: int, limit: int = MAX_FILE_BYTES) -> np.ndarray:
    """A photo file of any format and size Pillow reads, as uint8 ``size`` x ``size`` x 3,
    with an :class:`ImageError` that says in words what is wrong with it (:func:`read_file`
    refuses what is not a photo file by its type and size before reading it)."""
    return decode_image(read_file(path, limit), size, path)


def fitted(data: bytes, size: int) -> Image.Image:
    """The image ``data`` shrunk to fit in ``size`` x ``size`` (aspect kept, Lanczos), decoded
    and made RGB as :func:`load_thumbnail` does, for display; :class:`ImageError` if it cannot."""
    try:
        with Image.open(io.BytesIO(data)) as src:
            im = _oriented_rgb(src, size)
            im.thumbnail((size, size), Image.Resampling.LANCZOS)
            im.load()
            return im
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot decode image: {type(err).__name__}: {err}") from err


def fitted_image(data: bytes, size: int, where: object) -> Image.Image:
    """:func:`fitted` of a file's bytes, with an :class:`ImageError` that names the file (``where``)."""
    try:
        return fitted(data, size)
    except ImageError as err:
        raise ImageError(f"{safe_text(where)}: not a readable image ({err.__cause__ or err})") from None


def image_info(data: bytes) -> tuple[str, tuple[int, int]]:
    """(format, (width, height)) of the image ``data`` from its header, without decoding it."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return str(im.format), im.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot read the image header: {type(err).__name__}: {err}") from err


def jpeg_thumbnail(data: bytes, size: int, quality: int = 85) -> bytes:
    """JPEG bytes of :func:`fitted` (the MongoDB export's thumbnails)."""
    buf = io.BytesIO()
    fitted(data, size).save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def to_tensor_batch(images: np.ndarray) -> np.ndarray:
    """uint8 N x S x S x 3 -> float32 N x 3 x S x S in [0, 1] (the models' input)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
