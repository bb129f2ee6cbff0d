"""Camera images: read any PNG / JPEG as (H, W, 3) uint8 RGB, write PNG / JPEG atomically.

Conversion rules of :func:`read_image` (so every reader sees the same pixels):

- RGB is returned as stored; RGBA / LA / PA drop the alpha channel (no compositing).
- Grey (``L``, ``1``) and palette (``P``) images are expanded to three equal channels.
- 16-bit grey (``I;16``, ``I``) keeps the high byte (``value >> 8``), i.e. the 0..65535 range
  is mapped linearly onto 0..255; values outside 0..65535 are clipped first.
- Other colour spaces (CMYK, YCbCr ...) are converted by Pillow.
- EXIF orientation is NOT applied: pixels stay in stored order so they line up with masks,
  calibration and projected LiDAR points, which all refer to the stored raster.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from terraseg.errors import DataError
from terraseg.io.atomic import atomic_write_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""File suffixes (lower case) :func:`write_image` can produce and the dataset readers list."""

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode an image file with Pillow.

    Raises :class:`DataError` naming the file when it is missing, not an image, or truncated.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: image file not found")
    try:
        img = Image.open(p)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{p}: unreadable or truncated image ({exc})") from exc
    return img


def image_to_rgb(img: Image.Image, where: str = "image") -> np.ndarray:
    """Convert a decoded Pillow image to an (H, W, 3) uint8 RGB array (rules in the module doc)."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I"):
        grey = np.asarray(img).astype(np.int64, copy=False)
        grey8 = (np.clip(grey, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey8[:, :, None], 3, axis=2)
    if mode == "F":
        raise DataError(f"{where}: floating-point images are not supported as camera images")
    if mode in ("RGBA", "RGBX", "RGBa"):
        return np.ascontiguousarray(np.asarray(img.convert("RGBA"), dtype=np.uint8)[:, :, :3])
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a PNG / JPEG camera image as an (H, W, 3) uint8 RGB array.

    Grey, palette, 16-bit and RGBA images are converted as described in the module docstring.
    Raises :class:`DataError` naming the file when it is missing, unreadable or truncated.
    """
    p = Path(path)
    img = open_image(p)
    try:
        return image_to_rgb(img, where=str(p))
    finally:
        img.close()


def _check_rgb(rgb: np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DataError(f"{where}: image must be an (H, W, 3) uint8 RGB array, got {arr.shape} {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{where}: image is empty ({arr.shape[1]}x{arr.shape[0]})")
    return np.ascontiguousarray(arr)


def image_format_of(path: str | os.PathLike[str]) -> str:
    """The Pillow format name (``PNG`` / ``JPEG``) for a file name, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise DataError(f"{path}: unsupported image suffix {suffix!r} (expected one of {', '.join(IMAGE_SUFFIXES)})")
    return _FORMATS[suffix]


def encode_image(rgb: np.ndarray, fmt: str, quality: int = 95, where: str = "image") -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as PNG or JPEG bytes.

    Args:
        fmt: ``"PNG"`` or ``"JPEG"`` (or a suffix such as ``".jpg"``).
        quality: JPEG quality 1..100 (ignored for PNG). Chroma is subsampled 4:2:0 below 90 and
            kept at full resolution (4:4:4) from 90 up.
    """
    arr = _check_rgb(rgb, where)
    fmt = _FORMATS.get(fmt.lower(), fmt.upper())
    if fmt not in ("PNG", "JPEG"):
        raise DataError(f"{where}: unsupported image format {fmt!r} (expected PNG or JPEG)")
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if fmt == "JPEG":
        if not 1 <= int(quality) <= 100:
            raise DataError(f"{where}: JPEG quality must be in 1..100, got {quality}")
        img.save(buf, format="JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def write_image(path: str | os.PathLike[str], rgb: np.ndarray, quality: int = 95) -> Path:
    """Write an (H, W, 3) uint8 RGB image atomically; the format comes from the suffix.

    ``.png`` is lossless; ``.jpg`` / ``.jpeg`` use ``quality`` (1..100). Nothing is written
    under ``path`` when encoding fails.
    """
    fmt = image_format_of(path)
    return atomic_write_bytes(path, encode_image(rgb, fmt, quality, where=str(path)))
