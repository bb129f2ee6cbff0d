"""Over-segmentation of point clouds into regions, region purity and region borders.

Two partitions, both returning one integer region id per point (``0 .. R-1``, every point in
exactly one region):

- :func:`region_growing`: PCL-style smooth region growing on normals and curvature
  (:mod:`terraseg.geometry.normals`). Points are taken as seeds in order of increasing curvature;
  a region grows from its seed over the k-nearest-neighbour graph, adding every unassigned
  neighbour whose normal is within ``smoothness_deg`` of the current point's normal (the
  absolute cosine, so unoriented normals work), and continuing from the added points whose
  curvature is below ``curvature_threshold``. Regions smaller than ``min_size`` points are then
  merged into an adjacent larger region (the region of the nearest neighbour that is in one).
- :func:`voxel_regions`: supervoxels as a fast fallback: one region per occupied cube of side
  ``voxel_size`` on a grid anchored at the origin.

Defaults (region growing, for 64-beam LiDAR scans of outdoor scenes in metres): ``k = 16``,
``smoothness_deg = 10``, ``curvature_threshold = 0.05``, ``min_size = 10`` and ``max_radius = 3``
(a region takes no point farther than 3 m from its seed; ``None`` = PCL's unbounded growth). On
simulator scans the bound lifts purity from 0.86-0.87 to about 0.91 (terrain classes share one
smooth ground surface) at roughly 1.5x the regions; see ``benchmarks/bench_regions.py``. PCL's class defaults
are 30 neighbours, 30 degrees, curvature 0.05 (its tutorial uses 3 degrees and curvature 1.0,
which turns the curvature test off, on dense indoor clouds); 3 degrees fragments LiDAR ground
into rings, whose neighbours along a ring are a few centimetres apart but across rings tens of
centimetres, so noisy normals differ by more than 3 degrees. ``benchmarks/bench_regions.py``
prints purity, region count and time per scan for both methods so the thresholds can be tuned.

:func:`region_purity` scores a partition against ground truth: the share of (labelled) points
whose region's majority label is their own label. A partition into single points is trivially
pure, so read purity together with the number of regions.

:func:`region_boundaries` marks the points that have a neighbour (of their k nearest, optionally
within a radius) in another region: the targets of a boundary head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from terraseg.errors import DataError
from terraseg.geometry.neighbors import NeighborIndex, build_index, knn
from terraseg.geometry.normals import DEFAULT_K, LocalShape, estimate_normals
from terraseg.geometry.projection import as_xyz

DEFAULT_SMOOTHNESS_DEG = 10.0
DEFAULT_CURVATURE_THRESHOLD = 0.05
DEFAULT_MIN_SIZE = 10
DEFAULT_MAX_RADIUS = 3.0
DEFAULT_VOXEL_SIZE = 1.0
DEFAULT_BOUNDARY_K = 8


# ---------------------------------------------------------------------- region growing
@numba.njit(cache=True)
def _grow(nbr: np.ndarray, normals: np.ndarray, curvature: np.ndarray, order: np.ndarray, cos_thr: float,
          curv_thr: float, smooth: bool, xyz: np.ndarray, max_r2: float) -> tuple[np.ndarray, int]:  # pragma: no cover
    n, k = nbr.shape
    lab = np.full(n, -1, np.int64)
    queue = np.empty(n, np.int64)
    r = 0
    for oi in range(order.shape[0]):
        s = order[oi]
        if lab[s] >= 0:
            continue
        lab[s] = r
        head = 0
        tail = 1
        queue[0] = s
        while head < tail:
            p = queue[head]
            head += 1
            ref = p if smooth else s
            for j in range(k):
                q = nbr[p, j]
                if q < 0 or lab[q] >= 0:
                    continue
                dot = abs(normals[ref, 0] * normals[q, 0] + normals[ref, 1] * normals[q, 1]
                          + normals[ref, 2] * normals[q, 2])
                if dot < cos_thr:
                    continue
                if max_r2 >= 0.0:
                    dx = xyz[q, 0] - xyz[s, 0]
                    dy = xyz[q, 1] - xyz[s, 1]
                    dz = xyz[q, 2] - xyz[s, 2]
                    if dx * dx + dy * dy + dz * dz > max_r2:
                        continue
                lab[q] = r
                if curvature[q] < curv_thr:
                    queue[tail] = q
                    tail += 1
        r += 1
    return lab, r


def _compact(labels: np.ndarray) -> np.ndarray:
    """Region ids renumbered ``0 .. R-1`` by first occurrence order of the sorted ids (int64)."""
    if not len(labels):
        return labels.astype(np.int64)
    _, inv = np.unique(labels, return_inverse=True)
    return inv.astype(np.int64).ravel()


def merge_small_regions(regions: np.ndarray, neighbors: np.ndarray, min_size: int) -> np.ndarray:
    """Merge regions of fewer than ``min_size`` points into adjacent larger regions.

    Each point of a small region takes the region of its nearest neighbour (in the order of the
    rows of ``neighbors``) that lies in a large region; this repeats, so chains of small regions
    drain into the large ones. Points with no route to a large region keep their small region.

    Args:
        regions: (N,) int region ids.
        neighbors: (N, k) int64 neighbour indices, nearest first (-1 = missing).
        min_size: smallest size (points) a region may keep.

    Returns:
        (N,) int64 region ids ``0 .. R-1``.
    """
    reg = np.asarray(regions, dtype=np.int64).copy()
    if min_size <= 1 or not len(reg):
        return _compact(reg)
    nb = np.asarray(neighbors, dtype=np.int64)
    _, inv, counts = np.unique(reg, return_inverse=True, return_counts=True)
    small = counts[inv.ravel()] < min_size
    big = ~small
    for _ in range(nb.shape[1] + 1):
        todo = np.flatnonzero(small & ~big)
        if not len(todo):
            break
        cand = nb[todo]
        ok = cand >= 0
        ok[ok] = big[cand[ok]]
        has = ok.any(axis=1)
        if not has.any():
            break
        first = np.argmax(ok, axis=1)
        src = cand[np.arange(len(todo)), first]
        tgt = todo[has]
        reg[tgt] = reg[src[has]]
        big[tgt] = True
    return _compact(reg)


def region_growing(xyz: np.ndarray, k: int = DEFAULT_K, smoothness_deg: float = DEFAULT_SMOOTHNESS_DEG,
                   curvature_threshold: float = DEFAULT_CURVATURE_THRESHOLD, min_size: int = DEFAULT_MIN_SIZE,
                   smooth_mode: bool = True, max_distance: float = np.inf, max_radius: float | None = DEFAULT_MAX_RADIUS,
                   shape: LocalShape | None = None, index: NeighborIndex | None = None) -> np.ndarray:
    """Smooth-surface region growing (PCL ``RegionGrowing`` semantics, see the module docstring).

    Args:
        xyz: (N, 3) or (N, C>=3) points in metres.
        k: neighbours per point, for the normals and the growth graph.
        smoothness_deg: largest angle in degrees between the normals of a point and a neighbour
            that joins its region.
        curvature_threshold: a joined point continues the growth only if its surface variation
            (``l0 / (l0 + l1 + l2)``, 0 to 1/3) is below this; 1/3 or more turns the test off.
        min_size: regions with fewer points are merged into an adjacent larger one (1 = keep all).
        smooth_mode: compare with the current point's normal (True, PCL's default) or with the
            region seed's normal (False: flatter regions, more of them).
        max_distance: neighbours farther than this (metres) are not connected.
        max_radius: a region only takes points within this distance (metres) of its seed (default
            3), or None for no limit (PCL). Smooth ground runs through every terrain class (grass, dirt,
            gravel lie on one surface), so an unlimited ground region mixes them; a radius of a
            few metres bounds that (see ``benchmarks/bench_regions.py``).
        shape: a precomputed :func:`~terraseg.geometry.normals.estimate_normals` result for these
            points (its ``neighbors`` are the growth graph).
        index: a neighbour index over ``xyz`` to reuse.

    Returns:
        (N,) int64 region ids ``0 .. R-1``.
    """
    p = as_xyz(xyz, "points")
    if not 0.0 <= smoothness_deg <= 90.0:
        raise DataError(f"smoothness_deg must be in [0, 90] degrees, got {smoothness_deg}")
    if not np.isfinite(curvature_threshold) or curvature_threshold < 0:
        raise DataError(f"curvature_threshold must be a finite number >= 0, got {curvature_threshold}")
    if int(min_size) != min_size or min_size < 1:
        raise DataError(f"min_size must be a positive integer, got {min_size}")
    if max_radius is not None and not max_radius > 0:
        raise DataError(f"max_radius must be a positive number of metres or None, got {max_radius}")
    if shape is None:
        shape = estimate_normals(p, k, None, max_distance, index)
    elif len(shape.normals) != len(p):
        raise DataError(f"shape has {len(shape.normals)} points, the cloud {len(p)}")
    if not len(p):
        return np.zeros(0, dtype=np.int64)
    curv = shape.curvature.astype(np.float64)
    order = np.argsort(curv, kind="stable").astype(np.int64)
    cos_thr = float(np.cos(np.radians(smoothness_deg)))
    lab, _ = _grow(np.ascontiguousarray(shape.neighbors, dtype=np.int64),
                   np.ascontiguousarray(shape.normals, dtype=np.float64), curv, order, cos_thr,
                   float(curvature_threshold), bool(smooth_mode), np.ascontiguousarray(p[:, :3], dtype=np.float64),
                   -1.0 if max_radius is None else float(max_radius) ** 2)
    return merge_small_regions(lab, shape.neighbors, int(min_size))


# ---------------------------------------------------------------------- supervoxels
def voxel_regions(xyz: np.ndarray, voxel_size: float = DEFAULT_VOXEL_SIZE) -> np.ndarray:
    """Supervoxels: one region per occupied cube of side ``voxel_size`` metres (grid anchored at 0).

    Returns (N,) int64 region ids ``0 .. R-1`` (ordered by voxel key). About 10 ms per 130k points.
    """
    p = as_xyz(xyz, "points").astype(np.float64, copy=False)
    if not np.isfinite(voxel_size) or voxel_size <= 0:
        raise DataError(f"voxel_size must be a positive number of metres, got {voxel_size}")
    if not len(p):
        return np.zeros(0, dtype=np.int64)
    if not np.isfinite(p).all():
        raise DataError("points: coordinates hold NaN or infinite values")
    cell = np.floor(p / voxel_size).astype(np.int64)
    cell -= cell.min(axis=0)
    ext = cell.max(axis=0) + 1
    key = (cell[:, 0] * ext[1] + cell[:, 1]) * ext[2] + cell[:, 2]
    return _compact(key)


# ---------------------------------------------------------------------- scores and borders
@dataclass(frozen=True)
class RegionPurity:
    """Result of :func:`region_purity`.

    Attributes:
        purity: share of scored points whose region's majority label is their own (0-1).
        regions: number of regions holding at least one scored point.
        points: number of scored points (labels other than ``ignore_index``).
        mean_size: mean number of points (all, scored or not) per region.
    """

    purity: float
    regions: int
    points: int
    mean_size: float


def region_purity(regions: np.ndarray, labels: np.ndarray, ignore_index: int | None = None) -> RegionPurity:
    """How well a partition respects ground-truth labels.

    Each region's majority label is taken over its labelled points (ties: the lower label id);
    purity is the share of labelled points that carry their region's majority label. Points
    labelled ``ignore_index`` neither vote nor count.

    Args:
        regions: (N,) integer region ids (any values).
        labels: (N,) integer ground-truth labels.
        ignore_index: label excluded from scoring, or None.
    """
    reg = np.asarray(regions)
    lab = np.asarray(labels)
    if reg.shape != lab.shape or reg.ndim != 1:
        raise DataError(f"regions and labels must be (N,) arrays of the same length, got {reg.shape} and {lab.shape}")
    if reg.dtype.kind not in "ui" or lab.dtype.kind not in "ui":
        raise DataError(f"regions and labels must be integers, got {reg.dtype} and {lab.dtype}")
    all_regions = len(np.unique(reg)) if len(reg) else 0
    keep = np.ones(len(lab), dtype=bool) if ignore_index is None else lab != ignore_index
    if not keep.any():
        return RegionPurity(0.0, 0, 0, float(len(reg) / max(all_regions, 1)))
    r = reg[keep].astype(np.int64)
    y = lab[keep].astype(np.int64)
    _, r_inv = np.unique(r, return_inverse=True)
    y_vals, y_inv = np.unique(y, return_inverse=True)
    nr, ny = int(r_inv.max()) + 1, len(y_vals)
    table = np.bincount(r_inv.ravel() * ny + y_inv.ravel(), minlength=nr * ny).reshape(nr, ny)
    majority = table.max(axis=1)
    return RegionPurity(purity=float(majority.sum() / len(y)), regions=nr, points=int(len(y)),
                        mean_size=float(len(reg) / all_regions))


def region_boundaries(xyz: np.ndarray, regions: np.ndarray, k: int = DEFAULT_BOUNDARY_K,
                      max_distance: float = np.inf, index: NeighborIndex | None = None,
                      neighbors: np.ndarray | None = None) -> np.ndarray:
    """(N,) bool: True where one of the point's ``k`` nearest neighbours lies in another region.

    Args:
        xyz: (N, 3) or (N, C>=3) points in metres.
        regions: (N,) integer region ids (an over-segmentation, or ground-truth labels for
            semantic borders).
        k: neighbours inspected per point (the point itself included).
        max_distance: only neighbours within this radius (metres) count.
        index: a neighbour index over ``xyz`` to reuse.
        neighbors: precomputed (N, k') neighbour indices (-1 = missing) instead of a query.
    """
    p = as_xyz(xyz, "points")
    reg = np.asarray(regions)
    if reg.shape != (len(p),):
        raise DataError(f"regions: expected ({len(p)},) ids, got shape {reg.shape}")
    if neighbors is None:
        if int(k) != k or k < 2:
            raise DataError(f"k must be an integer >= 2 (the point itself and a neighbour), got {k}")
        if not len(p):
            return np.zeros(0, dtype=bool)
        _, nb = knn(p, index if index is not None else build_index(p), int(k), max_distance)
    else:
        nb = np.asarray(neighbors, dtype=np.int64)
        if nb.ndim != 2 or len(nb) != len(p):
            raise DataError(f"neighbors: expected ({len(p)}, k) indices, got shape {nb.shape}")
    has = nb >= 0
    other = reg[np.where(has, nb, 0)] != reg[:, None]
    return (other & has).any(axis=1)
