"""Fast, lossless PNG encoding for bulk extraction (8-bit grey / RGB / RGBA, 16-bit grey).

Pillow's PNG writer tries every PNG filter on every row, which costs about 140 ms for one
1024x768 RGB photo even at ``compress_level=1``. This encoder applies the PNG "Up" filter with
one vectorised numpy subtraction and deflates the result with ISA-L (the ``isal`` package, when
installed: about 8x faster than zlib at the same level, with smaller output than Pillow's level
1 on camera images) or the standard library's zlib. Both release the GIL, so encoding scales
with threads.

The output is a standard PNG (one IHDR, one IDAT, IEND) that every decoder reads. Bytes are
deterministic for a given array, level and backend (see :data:`PNG_BACKEND`).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from terraseg.errors import DataError
from terraseg.io.atomic import atomic_write_bytes

try:  # optional accelerator
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - depends on the environment
    _isal = None

PNG_BACKEND: str = "isal" if _isal is not None else "zlib"
"""Deflate backend used for levels 1-3: ``"isal"`` when the ``isal`` package is installed."""

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_crc32 = _isal.crc32 if _isal is not None else zlib.crc32


def _chunk(kind: bytes, data: bytes | memoryview) -> bytes:
    crc = _crc32(data, _crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + bytes(data) + struct.pack(">I", crc)


def _deflate(buf: np.ndarray, level: int) -> bytes:
    """zlib stream of ``buf``: level 0 stores, 1-3 use ISA-L when available, else zlib."""
    if 1 <= level <= 3 and _isal is not None:
        return _isal.compress(buf, level)
    return zlib.compress(buf, level)


_local = threading.local()


def _scratch(shape: tuple[int, int]) -> np.ndarray:
    """A per-thread reusable uint8 buffer (fresh multi-MB allocations cost page faults)."""
    size = shape[0] * shape[1]
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < size:
        buf = _local.buf = np.empty(size, dtype=np.uint8)
    return buf[:size].reshape(shape)


def _layout(arr: np.ndarray) -> tuple[np.ndarray, int, int]:
    """(rows as (H, W * bytes_per_pixel) uint8 big-endian bytes, bit depth, PNG colour type)."""
    if arr.ndim == 2 and arr.dtype == np.uint8:
        return arr, 8, 0
    if arr.ndim == 2 and arr.dtype == np.uint16:
        be = arr.astype(">u2", copy=False)
        return np.ascontiguousarray(be).view(np.uint8).reshape(arr.shape[0], -1), 16, 0
    if arr.ndim == 3 and arr.dtype == np.uint8 and arr.shape[2] in (3, 4):
        return arr.reshape(arr.shape[0], -1), 8, 2 if arr.shape[2] == 3 else 6
    raise DataError(f"cannot encode an array of shape {arr.shape} and dtype {arr.dtype} as PNG "
                    "(expected (H, W) uint8/uint16 or (H, W, 3|4) uint8)")


def encode_png(arr: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode an image as PNG bytes.

    Args:
        arr: (H, W) uint8 (grey), (H, W) uint16 (16-bit grey, e.g. id masks with ids > 255),
            (H, W, 3) uint8 RGB or (H, W, 4) uint8 RGBA.
        compress_level: 0 (stored, fastest, largest) to 9 (smallest, slowest). 1-3 use ISA-L
            when available; 1 is the extraction default.
    """
    if not 0 <= int(compress_level) <= 9:
        raise DataError(f"PNG compress_level must be 0..9, got {compress_level}")
    a = np.asarray(arr)
    if a.size == 0:
        raise DataError(f"cannot encode an empty image of shape {a.shape} as PNG")
    rows, depth, ctype = _layout(a)
    h, row_bytes = rows.shape
    filtered = _scratch((h, row_bytes + 1))
    filtered[:, 0] = 2  # PNG filter type "Up": byte minus the byte above (mod 256)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    ihdr = struct.pack(">IIBBBBB", a.shape[1], h, depth, ctype, 0, 0, 0)
    return b"".join((_SIGNATURE, _chunk(b"IHDR", ihdr), _chunk(b"IDAT", _deflate(filtered, int(compress_level))),
                     _chunk(b"IEND", b"")))


def write_png(path: str | os.PathLike[str], arr: np.ndarray, compress_level: int = 1) -> Path:
    """Encode ``arr`` with :func:`encode_png` and write it to ``path`` atomically."""
    try:
        data = encode_png(arr, compress_level)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return atomic_write_bytes(path, data)
