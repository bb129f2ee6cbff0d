"""Local surface shape by PCA over the k nearest neighbours: normals, curvature, eigenvalues.

For every point the covariance of its ``k`` nearest neighbours (the point itself included, as
in PCL's ``NormalEstimation``) is decomposed; with eigenvalues ``l0 <= l1 <= l2``:

- the **normal** is the eigenvector of ``l0`` (unit length), oriented towards ``viewpoint`` when
  one is given (the sensor origin for a LiDAR scan in its own frame), else with ``n_z >= 0``;
- the **curvature** is the *surface variation* ``l0 / (l0 + l1 + l2)`` (Pauly et al. 2002; what
  PCL stores as ``curvature``): 0 on a plane, 1/3 for an isotropic blob. The active-learning
  strategies read it as a geometric uncertainty cue.

Points whose neighbourhood has no spread (fewer than 3 distinct neighbours, all neighbours
collinear or identical, e.g. the zero points of missing returns) are marked ``valid=False``; their
normal is (0, 0, 0) and their curvature 1/3 (so region growing never seeds from them and no
normal-angle test passes for them).

Cost on 2 cores: the kNN query dominates (about 0.5 s for 131k points at k = 16, tree build
included); covariances are six vectorised products and the eigen-decomposition one batched
``numpy.linalg.eigh`` call (about 0.2 s for 130k points).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from terraseg.errors import DataError
from terraseg.geometry.neighbors import NeighborIndex, build_index, knn
from terraseg.geometry.projection import as_xyz

DEFAULT_K = 16
"""Neighbours per point for the PCA (a 64-beam LiDAR's ground rings are about 0.1-1 m apart; 16
points span a few rings and tens of centimetres along them)."""

_DEGENERATE_CURVATURE = 1.0 / 3.0


@dataclass(frozen=True)
class LocalShape:
    """Result of :func:`estimate_normals`; every array has one row per input point.

    Attributes:
        normals: (N, 3) float32 unit normals (0 for invalid points), in the points' frame.
        eigenvalues: (N, 3) float32 covariance eigenvalues ``l0 <= l1 <= l2`` in square metres.
        valid: (N,) bool, the neighbourhood spans a surface (``l1 > 0``).
        neighbors: (N, k) int64 indices of the neighbours used (-1 where missing), reusable for
            region growing and boundary targets.
    """

    normals: np.ndarray
    eigenvalues: np.ndarray
    valid: np.ndarray
    neighbors: np.ndarray

    @property
    def curvature(self) -> np.ndarray:
        """(N,) float32 surface variation ``l0 / (l0 + l1 + l2)`` in [0, 1/3] (1/3 where invalid)."""
        return curvature_from_eigenvalues(self.eigenvalues, self.valid)


def curvature_from_eigenvalues(eigenvalues: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Surface variation ``l0 / (l0 + l1 + l2)`` of (N, 3) ascending eigenvalues (1/3 where not ``valid``)."""
    ev = np.asarray(eigenvalues, dtype=np.float64)
    total = ev.sum(axis=1)
    ok = total > 0 if valid is None else (np.asarray(valid, dtype=bool) & (total > 0))
    out = np.full(len(ev), _DEGENERATE_CURVATURE, dtype=np.float64)
    out[ok] = ev[ok, 0] / total[ok]
    return out.astype(np.float32)


def _check_k(k: int) -> int:
    if int(k) != k or k < 3:
        raise DataError(f"k must be an integer >= 3 for a PCA over neighbours, got {k}")
    return int(k)


def estimate_normals(xyz: np.ndarray, k: int = DEFAULT_K, viewpoint: np.ndarray | tuple[float, float, float] | None
                     = (0.0, 0.0, 0.0), max_distance: float = np.inf, index: NeighborIndex | None = None,
                     neighbors: np.ndarray | None = None) -> LocalShape:
    """Normals, eigenvalues and validity of every point by PCA over its ``k`` nearest neighbours.

    Args:
        xyz: (N, 3) or (N, C>=3) points in metres.
        k: neighbours per point, the point itself included (>= 3).
        viewpoint: normals are flipped to face this point (same frame as ``xyz``; the default, the
            origin, is the sensor for a scan in the LiDAR frame), or None to orient them upwards
            (``n_z >= 0``).
        max_distance: neighbours farther than this (metres) are not used.
        index: a :class:`~terraseg.geometry.neighbors.NeighborIndex` over ``xyz`` to reuse.
        neighbors: precomputed (N, k') neighbour indices (-1 = missing) instead of a query.

    Returns:
        A :class:`LocalShape`.
    """
    p = as_xyz(xyz, "points").astype(np.float64, copy=False)
    n = len(p)
    if neighbors is None:
        k = _check_k(k)
        if n == 0:
            nb = np.zeros((0, k), dtype=np.int64)
        else:
            _, nb = knn(p, index if index is not None else build_index(p), min(k, n), max_distance)
    else:
        nb = np.asarray(neighbors, dtype=np.int64)
        if nb.ndim != 2 or len(nb) != n or (nb.size and nb.max() >= n):
            raise DataError(f"neighbors: expected ({n}, k) indices into the points, got shape {nb.shape}")
    has = nb >= 0
    safe = np.where(has, nb, 0)
    w = has.astype(np.float64)
    cnt = w.sum(axis=1)
    denom = np.maximum(cnt, 1.0)
    # centred coordinates per neighbourhood (centring first keeps float64 exact far from the origin)
    coords = [p[:, c][safe] for c in range(3)]
    mean = [(coords[c] * w).sum(axis=1) / denom for c in range(3)]
    d = [(coords[c] - mean[c][:, None]) * w for c in range(3)]
    cov = np.empty((n, 3, 3), dtype=np.float64)
    for a in range(3):
        for b in range(a, 3):
            v = (d[a] * d[b]).sum(axis=1) / denom
            cov[:, a, b] = v
            cov[:, b, a] = v
    evals, evecs = np.linalg.eigh(cov) if n else (np.zeros((0, 3)), np.zeros((0, 3, 3)))
    evals = np.maximum(evals, 0.0)
    normals = evecs[:, :, 0].copy()
    scale = np.maximum(evals[:, 2], 1e-300)
    valid = (cnt >= 3) & (evals[:, 1] > 1e-12 * scale) & (evals[:, 2] > 0)
    if viewpoint is not None:
        vp = np.asarray(viewpoint, dtype=np.float64).reshape(3)
        flip = ((vp[None, :] - p) * normals).sum(axis=1) < 0
    else:
        flip = normals[:, 2] < 0
    normals[flip] *= -1.0
    normals[~valid] = 0.0
    return LocalShape(normals=normals.astype(np.float32), eigenvalues=evals.astype(np.float32), valid=valid,
                      neighbors=nb)


def surface_variation(xyz: np.ndarray, k: int = DEFAULT_K, max_distance: float = np.inf,
                      index: NeighborIndex | None = None) -> np.ndarray:
    """(N,) float32 surface variation ``l0 / (l0 + l1 + l2)`` over the ``k`` nearest neighbours.

    0 on planes, up to 1/3 in scattered neighbourhoods (vegetation); 1/3 where the neighbourhood
    is degenerate. Same values as ``estimate_normals(xyz, k).curvature``.
    """
    return estimate_normals(xyz, k, None, max_distance, index).curvature
