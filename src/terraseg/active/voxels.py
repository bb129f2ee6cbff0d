"""Voxel label entropy (Annotator's "voxel confusion degree", VCD).

Annotator (BIT-DA/Annotator, ``VCDSelect``) grids the scan into 0.25 m voxels, builds the
histogram of predicted labels of the points in each voxel and ranks voxels by its entropy: a
voxel where the network predicts several classes is confusing and worth labelling.

Here (following the reference's ActiveSFDA port, which counts the 2D+3D ensemble prediction):

- voxel of a point: ``floor((xyz - min(xyz)) / voxel_size)`` per axis (metres; the grid starts
  at the scan's minimum corner, as in Annotator);
- voxel score: entropy in bits of the predicted-label histogram of **all** its points;
- voxels are taken in decreasing entropy; equal entropies go to the voxel with the larger mean
  point score (softmax entropy), then the one holding the lower point index;
- a voxel holding an already labelled point is ranked after every voxel without one
  (Annotator skips such voxels; keeping them last lets the budget always be met);
- all unlabelled points of a voxel are taken before the next voxel; the last voxel is cut to
  meet the budget exactly, keeping its points of highest point score, then lowest index.

Annotator also caps a voxel at 100 points (the rest are neither counted nor labelled); here
every point counts.
"""

from __future__ import annotations

import numpy as np

from terraseg.active.scores import softmax_entropy
from terraseg.errors import DataError


def voxel_ids(xyz: np.ndarray, voxel_size: float = 0.25) -> np.ndarray:
    """(N,) int64 dense voxel index of each point (voxels numbered in lexicographic grid order)."""
    p = np.asarray(xyz, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 3:
        raise DataError(f"xyz: expected (N, 3) coordinates, got shape {p.shape}")
    if not voxel_size > 0:
        raise DataError(f"voxel_size must be positive (metres), got {voxel_size}")
    if len(p) == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.isfinite(p[:, :3]).all():
        raise DataError("xyz: NaN or infinite coordinates")
    g = np.floor((p[:, :3] - p[:, :3].min(axis=0)) / voxel_size).astype(np.int64)
    _, inv = np.unique(g, axis=0, return_inverse=True)
    return inv.ravel().astype(np.int64)


def voxel_label_entropy(voxels: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(V,) entropy in bits of the label histogram of each voxel (``voxels`` from :func:`voxel_ids`)."""
    v = np.asarray(voxels, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.int64)
    nv = int(v.max()) + 1 if v.size else 0
    counts = np.bincount(v * num_classes + lab, minlength=nv * num_classes).reshape(nv, num_classes)
    return softmax_entropy(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1))


def select_voxels(xyz: np.ndarray, labels: np.ndarray, num_classes: int, labelled: np.ndarray, budget: int,
                  point_score: np.ndarray | None = None, voxel_size: float = 0.25) -> np.ndarray:
    """Exactly ``budget`` unlabelled points from the voxels of highest label entropy (module doc).

    Args:
        xyz: (N, 3) point coordinates in metres.
        labels: (N,) predicted labels in ``[0, num_classes)``.
        num_classes: C.
        labelled: (N,) bool, points never to return.
        budget: points to return (at most the unlabelled ones).
        point_score: (N,) tie-break score (higher first), e.g. softmax entropy; default none.
        voxel_size: voxel edge in metres (Annotator: 0.25).

    Returns:
        sorted int64 point indices.
    """
    v = voxel_ids(xyz, voxel_size)
    n = len(v)
    ent = voxel_label_entropy(v, labels, num_classes)
    nv = len(ent)
    score = np.zeros(n) if point_score is None else np.asarray(point_score, dtype=np.float64)
    mean_score = np.bincount(v, weights=score, minlength=nv) / np.maximum(np.bincount(v, minlength=nv), 1)
    first = np.full(nv, n, dtype=np.int64)
    np.minimum.at(first, v, np.arange(n, dtype=np.int64))
    has_label = np.zeros(nv, dtype=bool)
    has_label[v[np.asarray(labelled, dtype=bool)]] = True
    voxel_order = np.lexsort((first, -mean_score, -ent, has_label))
    voxel_rank = np.empty(nv, dtype=np.int64)
    voxel_rank[voxel_order] = np.arange(nv)
    free = np.flatnonzero(~np.asarray(labelled, dtype=bool))
    order = free[np.lexsort((free, -score[free], voxel_rank[v[free]]))]
    return np.sort(order[:budget]).astype(np.int64)
