"""LiDAR scans in SemanticKITTI format: ``.bin`` point files and ``.label`` label files.

- ``.bin``: little-endian float32 records, by default 4 per point (x, y, z in metres in the
  sensor frame, and intensity / remission).
- ``.label``: one little-endian uint32 per point; semantic id = low 16 bits, instance id =
  high 16 bits.

:func:`read_scan` reads any scan file terraseg predicts on (:data:`SCAN_SUFFIXES`): a ``.bin``
file, or a ``.ply`` cloud (for example an Ouster or CloudCompare export) whose ``vertex``
element has ``x``, ``y``, ``z`` and optionally an intensity property, read exactly by
:func:`terraseg.io.ply.read_ply`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from terraseg.errors import DataError
from terraseg.io.atomic import atomic_path

log = logging.getLogger(__name__)
SCAN_SUFFIXES = (".bin", ".ply")
"""Scan files :func:`read_scan` reads (SemanticKITTI ``.bin``, PLY)."""
PLY_INTENSITY_FIELDS = ("intensity", "reflectivity", "remission", "scalar_intensity", "signal", "i")
"""PLY vertex properties read as intensity, in order of preference (case-insensitive)."""


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


def read_ply_scan(path: str | os.PathLike[str], check_finite: bool = True,
                  intensity_field: str | None = None) -> np.ndarray:
    """Read a PLY point cloud as an (N, 4) float32 scan: x, y, z and intensity.

    Intensity is the first vertex property named in :data:`PLY_INTENSITY_FIELDS` (or
    ``intensity_field``); 0 when the cloud has none. Values are converted to float32 as they
    are (no rescaling: a model's own intensity scale is applied by its predictor).

    Raises:
        DataError: a missing or malformed file, no x / y / z, an unknown ``intensity_field``, or
            (with ``check_finite``) NaN / infinite coordinates, as :func:`read_bin`.
    """
    from terraseg.io.ply import read_ply

    p = Path(path)
    fields = read_ply(p)
    missing = [c for c in ("x", "y", "z") if c not in fields]
    if missing:
        raise DataError(f"{p}: a LiDAR scan needs vertex properties x, y, z; missing {', '.join(missing)} "
                        f"(the file has {', '.join(fields) or 'none'})")
    lower = {k.lower(): k for k in fields}
    if intensity_field is not None:
        if intensity_field.lower() not in lower:
            raise DataError(f"{p}: no vertex property {intensity_field!r} for the intensity (the file has "
                            f"{', '.join(fields)})")
        inten = lower[intensity_field.lower()]
    else:
        inten = next((lower[n] for n in PLY_INTENSITY_FIELDS if n in lower), None)
    n = len(fields["x"])
    out = np.zeros((n, 4), dtype=np.float32)
    for i, c in enumerate(("x", "y", "z")):
        out[:, i] = fields[c]
    if inten is not None:
        out[:, 3] = fields[inten]
    if check_finite and not np.isfinite(out[:, :3]).all():
        bad = ~np.isfinite(out[:, :3]).all(axis=1)
        raise DataError(f"{p}: {int(bad.sum())} points have NaN or infinite coordinates "
                        f"(first at index {int(np.argmax(bad))})")
    return out


def read_scan(path: str | os.PathLike[str], check_finite: bool = True) -> np.ndarray:
    """Read a LiDAR scan file by its suffix: ``.bin`` (:func:`read_bin`, 4 float32 fields) or
    ``.ply`` (:func:`read_ply_scan`), as an (N, 4) float32 x, y, z, intensity array.

    Raises:
        DataError: another suffix, or an unreadable file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".bin":
        return read_bin(p, check_finite=check_finite)
    if suffix == ".ply":
        return read_ply_scan(p, check_finite=check_finite)
    raise DataError(f"{p}: not a LiDAR scan (expected {' or '.join(SCAN_SUFFIXES)})")
