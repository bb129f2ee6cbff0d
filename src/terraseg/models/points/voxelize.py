"""Voxelisation of LiDAR scans for the sparse voxel networks: every point keeps its voxel.

:func:`voxelize_scan` turns one scan into its occupied voxels on a regular grid of
``voxel_size`` metres (5 cm is the usual outdoor value):

- ``coords`` (M, 3) int64: the voxel's integer grid position ``floor(xyz / voxel_size)`` minus
  the scan's smallest one, so every coordinate is ``>= 0`` (the grid stays aligned to multiples
  of ``voxel_size`` in the sensor frame; ``origin`` is the subtracted corner in metres). Voxels
  are sorted by (x, y, z), which is the order of their packed int64 keys.
- ``feats`` (M, F) float32: the mean over the voxel's points of x, y, z (metres, sensor frame),
  of the further point channels up to ``in_channels`` (intensity, ...), and, with
  ``centre_offsets``, of each point's offset from the voxel centre in voxel units (in
  ``[-0.5, 0.5)``). ``F = in_channels + 3`` with centre offsets, else ``in_channels``.
- ``inverse`` (N,) int64: the voxel of every input point, so ``per_voxel[inverse]`` gives every
  point of the scan its voxel's prediction (points that share a voxel share a prediction).

:func:`collate_voxels` batches voxelised scans: ``coords`` becomes (M, 4) ``[b, x, y, z]`` with
the scan's index ``b`` in front (scans never share a voxel), ``inverse`` is offset so it indexes
the batch's voxels, and per-point tensors (``target`` ...) are concatenated in scan order.
:func:`voxelize` does both for a list of scans.

Everything is deterministic: the same points give the same voxels, order and features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from terraseg.errors import DataError

DEFAULT_VOXEL_SIZE = 0.05
"""Voxel edge in metres (MinkUNet, SPVNAS, Cylinder3D and xMUDA use 5 cm outdoors)."""

COORD_BITS = 18
"""Bits per axis of the packed int64 voxel keys (see :func:`terraseg.models.points.sparse_conv.pack_keys`)."""

KEY_PAD = 8
"""Margin added to every coordinate inside a packed key, so neighbour offsets up to 8 never borrow
from the next field."""

MAX_EXTENT = (1 << COORD_BITS) - 2 * KEY_PAD
"""Largest number of voxels a scan may span along one axis (13 km at 5 cm)."""

VoxelInputs = dict[str, Any]
"""``{"coords", "feats", "inverse", ...}`` of one scan (:func:`voxelize_scan`) or a batch
(:func:`collate_voxels`); see the module docstring for shapes."""

POINT_KEYS = ("target",)
"""Per-point tensors that :func:`collate_voxels` concatenates in scan order."""


def voxel_feature_channels(in_channels: int, centre_offsets: bool = True) -> int:
    """Width F of the voxel features of :func:`voxelize_scan` for ``in_channels`` point columns."""
    return int(in_channels) + (3 if centre_offsets else 0)


def _check_points(points: np.ndarray, in_channels: int, source: str) -> np.ndarray:
    arr = np.asarray(points)
    if arr.ndim != 2 or arr.shape[1] < 3 or arr.dtype.kind not in "fiu":
        raise DataError(f"{source}: expected an (N, C>=3) array of x, y, z[, intensity, ...], got shape "
                        f"{arr.shape} dtype {arr.dtype}")
    if in_channels < 3:
        raise DataError(f"{source}: in_channels must be at least 3 (x, y, z), got {in_channels}")
    if arr.shape[1] < in_channels:
        raise DataError(f"{source}: the voxel features use {in_channels} point channels but the points have only "
                        f"{arr.shape[1]} columns")
    if len(arr) == 0:
        raise DataError(f"{source}: the scan has no points to voxelise")
    arr = np.ascontiguousarray(arr[:, :in_channels], dtype=np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        bad = int(np.argmin(finite))
        what = "coordinates" if not np.isfinite(arr[bad, :3]).all() else "point features"
        raise DataError(f"{source}: {what} hold NaN or infinite values (first at point {bad}); drop points "
                        "without a return first")
    return arr


def voxelize_scan(points: np.ndarray, voxel_size: float = DEFAULT_VOXEL_SIZE, in_channels: int = 4,
                  centre_offsets: bool = True, source: str = "points") -> VoxelInputs:
    """The occupied voxels of one scan, their mean features and every point's voxel.

    Args:
        points: (N, C) float points, x, y, z in metres (sensor frame) first, then intensity ...
        voxel_size: voxel edge in metres.
        in_channels: point columns averaged into the features (3 = x, y, z; 4 adds intensity).
        centre_offsets: append the mean offset of the points from the voxel centre (voxel units).
        source: name of the scan in error messages.

    Returns:
        ``{"coords": (M, 3) int64, "feats": (M, F) float32, "inverse": (N,) int64,
        "origin": (3,) float64}`` as torch tensors (``origin`` in metres: the corner of voxel
        (0, 0, 0)); see the module docstring.

    Raises:
        DataError: naming ``source``, for an empty scan, NaN or infinite values, too few columns,
            or a scan wider than :data:`MAX_EXTENT` voxels.
    """
    if not (isinstance(voxel_size, int | float) and np.isfinite(voxel_size) and voxel_size > 0):
        raise DataError(f"{source}: voxel_size must be a positive number of metres, got {voxel_size!r}")
    arr = _check_points(points, in_channels, source)
    xyz = arr[:, :3].astype(np.float64)
    scaled = xyz / float(voxel_size)
    grid = np.floor(scaled).astype(np.int64)
    low = grid.min(axis=0)
    grid -= low
    extent = grid.max(axis=0) + 1
    if (extent > MAX_EXTENT).any():
        span = float(extent.max()) * voxel_size
        raise DataError(f"{source}: the scan spans {span:.0f} m, more than {MAX_EXTENT} voxels of {voxel_size} m "
                        "along one axis (wrong units, or outliers far away?)")
    keys = (grid[:, 0] << (2 * COORD_BITS)) | (grid[:, 1] << COORD_BITS) | grid[:, 2]
    uniq, inverse, counts = torch.unique(torch.from_numpy(keys), sorted=True, return_inverse=True,
                                         return_counts=True)
    m = len(uniq)
    mask = (1 << COORD_BITS) - 1
    coords = torch.stack([uniq >> (2 * COORD_BITS), (uniq >> COORD_BITS) & mask, uniq & mask], dim=1)
    cols = [torch.from_numpy(arr)]
    if centre_offsets:
        cols.append(torch.from_numpy((scaled - np.floor(scaled) - 0.5).astype(np.float32)))
    pf = torch.cat(cols, dim=1) if len(cols) > 1 else cols[0]
    sums = torch.zeros(m, pf.shape[1], dtype=torch.float64).index_add_(0, inverse, pf.double())
    feats = (sums / counts.unsqueeze(1).double()).float()
    origin = torch.from_numpy(low.astype(np.float64) * float(voxel_size))
    return {"coords": coords, "feats": feats, "inverse": inverse, "origin": origin}


def collate_voxels(samples: Sequence[VoxelInputs]) -> VoxelInputs:
    """Batch voxelised scans (see the module docstring).

    Returns:
        ``{"coords": (M, 4) int64 [b, x, y, z], "feats": (M, F), "inverse": (N,) int64 into the
        batch's voxels, "point_counts": (B,) int64, "voxel_counts": (B,) int64, "origin": (B, 3),
        "batch_size": B}``, plus every key of :data:`POINT_KEYS` present in the samples
        (concatenated) and any other key gathered into a list.
    """
    if not samples:
        raise DataError("collate_voxels: no samples to collate")
    widths = {int(s["feats"].shape[1]) for s in samples}
    if len(widths) > 1:
        raise DataError(f"collate_voxels: the scans have different voxel feature widths {sorted(widths)}")
    coords, inverse, voxel_counts, point_counts = [], [], [], []
    offset = 0
    for b, s in enumerate(samples):
        c = s["coords"]
        if c.shape[1] == 4:
            raise DataError("collate_voxels: sample already batched (coords have a batch column)")
        coords.append(torch.cat([torch.full((len(c), 1), b, dtype=torch.int64), c.to(torch.int64)], dim=1))
        inverse.append(s["inverse"] + offset)
        voxel_counts.append(len(c))
        point_counts.append(len(s["inverse"]))
        offset += len(c)
    out: VoxelInputs = {
        "coords": torch.cat(coords), "feats": torch.cat([s["feats"] for s in samples]), "inverse": torch.cat(inverse),
        "point_counts": torch.tensor(point_counts, dtype=torch.int64),
        "voxel_counts": torch.tensor(voxel_counts, dtype=torch.int64),
        "origin": torch.stack([s["origin"] for s in samples]) if all("origin" in s for s in samples) else None,
        "batch_size": len(samples),
    }
    for key in samples[0]:
        if key in out or key in ("coords", "feats", "inverse"):
            continue
        vals = [s.get(key) for s in samples]
        if key in POINT_KEYS and all(isinstance(v, torch.Tensor) for v in vals):
            out[key] = torch.cat(vals)  # type: ignore[arg-type]
        else:
            out[key] = vals
    if out["origin"] is None:
        del out["origin"]
    return out


def voxelize(scans: Sequence[np.ndarray], voxel_size: float = DEFAULT_VOXEL_SIZE, in_channels: int = 4,
             centre_offsets: bool = True, sources: Sequence[str] | None = None) -> VoxelInputs:
    """Voxelise several scans and batch them (:func:`voxelize_scan` then :func:`collate_voxels`).

    ``sources`` names the scans in error messages (default ``scan 0``, ``scan 1``, ...).
    """
    names = list(sources) if sources is not None else [f"scan {i}" for i in range(len(scans))]
    if len(names) != len(scans):
        raise DataError(f"voxelize: {len(scans)} scans but {len(names)} names")
    return collate_voxels([voxelize_scan(p, voxel_size, in_channels, centre_offsets, n) for p, n in zip(scans, names)])


def inputs_to_device(inputs: VoxelInputs, device: torch.device | str) -> VoxelInputs:
    """Move every tensor of a voxel inputs dict to ``device`` (other values unchanged)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
