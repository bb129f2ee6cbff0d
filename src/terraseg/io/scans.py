"""LiDAR scans in SemanticKITTI format: ``.bin`` point files and ``.label`` label files.

- ``.bin``: little-endian float32 records, by default 4 per point (x, y, z in metres in the
  sensor frame, and intensity / remission).
- ``.label``: one little-endian uint32 per point; semantic id = low 16 bits, instance id =
  high 16 bits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from terraseg.errors import DataError
from terraseg.io.atomic import atomic_path

log = logging.getLogger(__name__)


def read_bin(path: str | os.PathLike[str], num_fields: int = 4, check_finite: bool = True) -> np.ndarray:
    """Read a ``.bin`` scan as an (N, num_fields) float32 array.

    Raises :class:`DataError` when the file is missing, its size is not a multiple of the
    record size (a truncated file), or (with ``check_finite``) coordinates are NaN or infinite.
    An empty file is a scan of 0 points (a sensor that returned nothing); it is read, with a
    warning naming it (once per file and process), because it is more often a broken file.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{p}: scan file not found") from None
    except OSError as exc:
        raise DataError(f"{p}: unreadable scan file ({exc.strerror or exc})") from None
    record = 4 * num_fields
    if size % record:
        raise DataError(f"{p}: size {size} bytes is not a multiple of the point size "
                        f"({record} bytes = {num_fields} float32 fields): the file is truncated or not a scan")
    if size == 0:
        _warn_empty(p)
    try:
        pts = np.fromfile(p, dtype="<f4").reshape(-1, num_fields)
    except OSError as exc:
        raise DataError(f"{p}: unreadable scan file ({exc})") from exc
    # one contiguous pass over every value; the per-point test only runs when something is off
    if check_finite and not np.isfinite(pts).all():
        bad = ~np.isfinite(pts[:, :3]).all(axis=1)
        if bad.any():
            raise DataError(f"{p}: {int(bad.sum())} points have NaN or infinite coordinates "
                            f"(first at index {int(np.argmax(bad))})")
    return pts.astype(np.float32, copy=False)


_EMPTY_WARNED: set[str] = set()


def _warn_empty(path: Path) -> None:
    key = os.path.abspath(path)
    if key not in _EMPTY_WARNED:
        _EMPTY_WARNED.add(key)
        log.warning("%s: empty scan (0 points)", path)


def read_label(path: str | os.PathLike[str], num_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``.label`` file as (semantic uint16 (N,), instance uint16 (N,)).

    With ``num_points`` the count is checked against the scan.
    """
    p = Path(path)
    try:
        raw = np.fromfile(p, dtype="<u4")
    except FileNotFoundError:
        raise DataError(f"{p}: label file not found") from None
    if p.stat().st_size % 4:
        raise DataError(f"{p}: size {p.stat().st_size} bytes is not a multiple of 4 (uint32 labels): the file is "
                        "truncated or not a label file")
    if num_points is not None and raw.size != num_points:
        raise DataError(f"{p}: {raw.size} labels for a scan of {num_points} points")
    return (raw & 0xFFFF).astype(np.uint16), (raw >> 16).astype(np.uint16)


def write_bin(path: str | os.PathLike[str], points: np.ndarray) -> Path:
    """Write an (N, C) array as little-endian float32 ``.bin`` atomically."""
    arr = np.asarray(points)
    if arr.ndim != 2:
        raise DataError(f"{path}: points must be (N, C), got {arr.shape}")
    with atomic_path(path) as tmp:
        arr.astype("<f4").tofile(tmp)
    return Path(path)


def write_label(path: str | os.PathLike[str], semantic: np.ndarray, instance: np.ndarray | None = None) -> Path:
    """Write semantic (and instance) ids as a uint32 ``.label`` file atomically."""
    sem = np.asarray(semantic).astype(np.uint32)
    if sem.ndim != 1:
        raise DataError(f"{path}: semantic labels must be 1-D, got {sem.shape}")
    if sem.size and sem.max() > 0xFFFF:
        raise DataError(f"{path}: semantic ids must fit in 16 bits")
    word = sem
    if instance is not None:
        inst = np.asarray(instance).astype(np.uint32)
        if inst.shape != sem.shape:
            raise DataError(f"{path}: {inst.size} instance ids for {sem.size} semantic ids")
        word = sem | (inst << 16)
    with atomic_path(path) as tmp:
        word.astype("<u4").tofile(tmp)
    return Path(path)
