"""Reading and writing label images (id PNGs and RGB colour PNGs).

Id masks are single-channel PNGs (mode ``L`` for ids up to 255, ``I;16`` for up to 65535) where
the pixel value is the class id. Colour masks are RGB PNGs with one colour per class.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from terraseg.errors import DataError
from terraseg.io.png import write_png


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from exc
    return img


def read_label_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an id mask as an (H, W) array of class ids (uint8 or uint16).

    Palette ("P") PNGs give their palette indices, which is how many datasets store ids.
    A three-channel image is rejected with a hint to read it as a colour mask instead.
    """
    p = Path(path)
    img = _open(p)
    if img.mode in ("L", "P"):
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(img).astype(np.uint16, copy=False)
    if img.mode == "I":
        arr = np.asarray(img)
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
            raise DataError(f"{p}: 32-bit label image with values outside 0..65535")
        return arr.astype(np.uint16)
    if img.mode in ("RGB", "RGBA"):
        arr = np.asarray(img)
        if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            return np.ascontiguousarray(arr[..., 0])  # grey stored as RGB
        raise DataError(f"{p}: expected a single-channel id mask but got an {img.mode} colour image "
                        "(use colour decoding, e.g. `--color`, for RGB masks)")
    raise DataError(f"{p}: unsupported label image mode {img.mode!r}")


def read_color_png(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a colour mask as an (H, W, 3) uint8 RGB array (alpha is dropped)."""
    p = Path(path)
    img = _open(p)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def write_label_png(path: str | os.PathLike[str], ids: np.ndarray) -> Path:
    """Write an (H, W) id mask atomically as an 8-bit (ids <= 255) or 16-bit PNG."""
    arr = np.asarray(ids)
    if arr.ndim != 2:
        raise DataError(f"{path}: id mask must be 2-D (H, W), got shape {arr.shape}")
    if arr.size == 0:
        raise DataError(f"{path}: cannot write an empty id mask")
    if arr.min() < 0 or arr.max() > 65535:
        raise DataError(f"{path}: ids must be in 0..65535")
    out = arr.astype(np.uint8) if arr.max() <= 255 else arr.astype(np.uint16)
    return write_png(path, out, compress_level=3)


def write_color_png(path: str | os.PathLike[str], rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB image atomically as PNG."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{path}: colour image must be (H, W, 3), got shape {arr.shape}")
    return write_png(path, arr.astype(np.uint8), compress_level=3)
