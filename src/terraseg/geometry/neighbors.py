"""Nearest neighbours in 3-D and label voting (scipy ``cKDTree``, all cores).

Typical use: back-projecting labels from a subset of points to all points, for example from the
points that won their range-image pixel (and so got a prediction) to the points hidden behind
them, or from a voxel-downsampled cloud to the full cloud.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.spatial import cKDTree

from terraseg.errors import DataError
from terraseg.geometry.projection import as_xyz

Weights = Literal["uniform", "distance"]

SERIAL_QUERY_POINTS = 2048
"""``workers=-1`` queries with fewer points than this run on one thread: starting the query
threads costs more than they save there (RandLA-Net's hierarchy of an 8,192-point crop, whose
deeper levels and up-sampling misses are queries of 2-2,048 points, took 55-60 ms with every
query threaded and 36-46 ms this way on the 2-core development machine, median of 20, two
rounds; ``benchmarks/bench_geometry.py`` times one 512-point query both ways)."""


@dataclass(frozen=True)
class NeighborIndex:
    """A k-d tree over reference points, built once and reusable across queries.

    Exact duplicate points (for example the tens of thousands of zero points of missing
    returns in an organised Ouster scan) are stored once in the tree and expanded again in the
    results: a k-d tree cannot split identical points, and a leaf of 50,000 of them makes
    every query near it scan them all (seconds instead of milliseconds).

    Attributes:
        tree: ``cKDTree`` over the distinct points.
        n: number of reference points, duplicates included.
        members: (n,) original indices grouped by distinct point (None without duplicates).
        start, count: (U,) offset into ``members`` and size of each distinct point's group.
    """

    tree: cKDTree
    n: int
    members: np.ndarray | None = None
    start: np.ndarray | None = None
    count: np.ndarray | None = None


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (uint64, wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _group_duplicates(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(first index of each distinct point, inverse (n,), counts) or None when all points are distinct."""
    q = np.ascontiguousarray(p + 0.0)  # -0.0 -> 0.0 so equal coordinates have equal bits
    bits = q.view(np.uint64)
    h = _mix(_mix(_mix(bits[:, 0]) ^ bits[:, 1]) ^ bits[:, 2])
    order = np.argsort(h, kind="stable")
    hs = h[order]
    if (hs[1:] != hs[:-1]).all():
        return None  # the common case: all points distinct (equal points have equal hashes)
    _, first, inverse, counts = np.unique(h, return_index=True, return_inverse=True, return_counts=True)
    if not (q == q[first[inverse]]).all():  # a hash collision: fall back to exact row grouping
        _, first, inverse, counts = np.unique(q, axis=0, return_index=True, return_inverse=True, return_counts=True)
        if len(first) == len(p):
            return None
    return first, inverse.ravel(), counts


def build_index(ref: np.ndarray, what: str = "reference points") -> NeighborIndex:
    """A :class:`NeighborIndex` over (N, 3) or (N, C>=3) reference points (xyz used)."""
    p = as_xyz(ref, what).astype(np.float64, copy=False)
    if not np.isfinite(p).all():
        bad = int(np.argmax(~np.isfinite(p).all(axis=1)))
        raise DataError(f"{what}: coordinates hold NaN or infinite values (first at index {bad})")
    groups = _group_duplicates(p) if len(p) > 1 else None
    if groups is None:
        return NeighborIndex(cKDTree(p, balanced_tree=False, compact_nodes=False), len(p))
    first, inverse, counts = groups
    members = np.argsort(inverse, kind="stable").astype(np.int64)
    start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    tree = cKDTree(p[first], balanced_tree=False, compact_nodes=False)
    return NeighborIndex(tree, len(p), members, start, counts.astype(np.int64))


def _expand(index: NeighborIndex, dist_u: np.ndarray, idx_u: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Turn (M, ku) neighbours among distinct points into (M, k) neighbours among all points."""
    assert index.members is not None and index.start is not None and index.count is not None
    m, ku = idx_u.shape
    ok = idx_u < index.tree.n
    u = np.where(ok, idx_u, 0)
    c = np.where(ok, index.count[u], 0)
    cum = np.cumsum(c, axis=1)  # points covered by the first i+1 distinct neighbours
    stride = np.int64(max(index.n, k) + 1)
    rows = np.arange(m, dtype=np.int64)
    flat = (cum + rows[:, None] * stride).ravel()
    slots = np.arange(k, dtype=np.int64)
    target = (rows[:, None] * stride + slots[None, :]).ravel()
    g = np.searchsorted(flat, target, side="right") - np.repeat(rows * ku, k)  # distinct neighbour of each slot
    g = g.reshape(m, k)
    have = g < ku
    g = np.minimum(g, ku - 1)
    have &= np.take_along_axis(ok, g, axis=1)
    before = np.take_along_axis(cum - c, g, axis=1)
    ug = np.take_along_axis(u, g, axis=1)
    pos = index.start[ug] + (slots[None, :] - before)
    pos = np.where(have, pos, 0)
    idx = np.where(have, index.members[pos], -1)
    dist = np.where(have, np.take_along_axis(dist_u, g, axis=1), np.inf)
    return dist, idx


def knn(query: np.ndarray, ref: np.ndarray | NeighborIndex, k: int = 1, max_distance: float = np.inf,
        workers: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest reference points of every query point (Euclidean, metres).

    Args:
        query: (M, 3) or (M, C>=3) points.
        ref: (N, 3) or (N, C>=3) reference points, or a :class:`NeighborIndex` from
            :func:`build_index` (reuse it for several queries against the same points).
        k: number of neighbours.
        max_distance: neighbours farther than this are not returned.
        workers: threads for the query (-1 = all cores, or one thread below
            :data:`SERIAL_QUERY_POINTS` query points).

    Returns:
        ``(dist, idx)``: (M, k) float64 distances, ascending per row, and (M, k) int64 indices
        into ``ref``. Missing neighbours (fewer than k within ``max_distance`` or in ``ref``)
        have distance ``inf`` and index -1. Among equally distant points the order is
        unspecified.
    """
    if int(k) != k or k < 1:
        raise DataError(f"k must be a positive integer, got {k}")
    k = int(k)
    index = ref if isinstance(ref, NeighborIndex) else build_index(ref)
    q = as_xyz(query, "query points").astype(np.float64, copy=False)
    if len(q) == 0 or index.n == 0:
        return np.full((len(q), k), np.inf), np.full((len(q), k), -1, dtype=np.int64)
    tree = index.tree
    ku = min(k, tree.n) if index.members is not None else k
    if workers == -1 and len(q) < SERIAL_QUERY_POINTS:
        workers = 1
    dist, idx = tree.query(q, k=ku, distance_upper_bound=max_distance, workers=workers)
    dist = np.asarray(dist, dtype=np.float64).reshape(len(q), ku)
    idx = np.asarray(idx, dtype=np.int64).reshape(len(q), ku)
    if index.members is not None:
        return _expand(index, dist, idx, k)
    idx[idx >= tree.n] = -1
    return dist, idx


def knn_vote(query: np.ndarray, ref: np.ndarray | NeighborIndex, ref_labels: np.ndarray, k: int, num_classes: int,
             weights: Weights = "uniform", max_distance: float = np.inf, ignore_index: int | None = None,
             fill: int = 0, eps: float = 1e-6, return_scores: bool = False,
             workers: int = -1) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Label each query point by a vote of its ``k`` nearest labelled reference points.

    Args:
        query: (M, 3) points to label.
        ref: (N, 3) labelled points (or a :class:`NeighborIndex` built over them).
        ref_labels: (N,) integer labels in ``[0, num_classes)`` (``ignore_index`` allowed).
        k: neighbours per query point.
        num_classes: number of classes C (the vote table is M x C).
        weights: ``"uniform"`` (one vote each) or ``"distance"`` (weight ``1 / (d + eps)``).
        max_distance: neighbours farther than this (metres) do not vote.
        ignore_index: reference label that does not vote.
        fill: label of query points with no voting neighbour.
        eps: distance offset in metres for ``"distance"`` weights.
        return_scores: also return the (M, C) float64 vote shares (rows sum to 1, or 0 with no
            voter).

    Returns:
        (M,) labels (dtype of ``ref_labels``, widened for ``fill``); ties go to the class with
        the lower id. With ``return_scores``, ``(labels, scores)``.
    """
    if weights not in ("uniform", "distance"):
        raise DataError(f"weights must be 'uniform' or 'distance', got {weights!r}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise DataError(f"num_classes must be a positive integer, got {num_classes}")
    lab = np.asarray(ref_labels)
    n_ref = ref.n if isinstance(ref, NeighborIndex) else len(np.asarray(ref))
    if lab.ndim != 1 or len(lab) != n_ref or lab.dtype.kind not in "ui":
        raise DataError(f"ref_labels: expected ({n_ref},) integer labels, got shape {lab.shape} dtype {lab.dtype}")
    votes_ok = np.ones(len(lab), dtype=bool) if ignore_index is None else lab != ignore_index
    if lab.size and votes_ok.any():
        lv = lab[votes_ok]
        if (lv.dtype.kind == "i" and lv.min() < 0) or lv.max() >= num_classes:
            bad = int(np.flatnonzero(votes_ok & ((lab < 0) | (lab >= num_classes)))[0])
            raise DataError(f"ref_labels: label {int(lab[bad])} at index {bad} is outside [0, {num_classes})")
    dist, idx = knn(query, ref, k, max_distance, workers)
    m = len(dist)
    if n_ref == 0:
        idx[:] = -1
        lab, votes_ok = np.zeros(1, dtype=lab.dtype), np.zeros(1, dtype=bool)
    has = idx >= 0
    safe = np.where(has, idx, 0)
    voter = has & votes_ok[safe]
    w = np.ones_like(dist) if weights == "uniform" else 1.0 / (np.where(has, dist, 0.0) + eps)
    w = np.where(voter, w, 0.0)
    cls = np.where(voter, lab[safe], 0).astype(np.int64)
    rows = np.repeat(np.arange(m, dtype=np.int64), k)
    table = np.bincount((rows * num_classes + cls.ravel()), weights=w.ravel(), minlength=m * num_classes)
    table = table.reshape(m, num_classes)
    total = table.sum(axis=1)
    out_dtype = np.result_type(lab.dtype, np.min_scalar_type(fill))
    labels = np.where(total > 0, np.argmax(table, axis=1), fill).astype(out_dtype)
    if not return_scores:
        return labels
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(total[:, None] > 0, table / total[:, None], 0.0)
    return labels, scores


def nearest_labels(query: np.ndarray, ref: np.ndarray | NeighborIndex, ref_labels: np.ndarray,
                   max_distance: float = np.inf, fill: int = 0, workers: int = -1) -> np.ndarray:
    """Label of the single nearest reference point (``fill`` beyond ``max_distance``).

    Returns (M,) labels with the dtype of ``ref_labels`` (widened for ``fill``).
    """
    lab = np.asarray(ref_labels)
    n_ref = ref.n if isinstance(ref, NeighborIndex) else len(np.asarray(ref))
    if lab.ndim != 1 or len(lab) != n_ref:
        raise DataError(f"ref_labels: expected ({n_ref},) labels, got shape {lab.shape}")
    _, idx = knn(query, ref, 1, max_distance, workers)
    i = idx[:, 0]
    out = np.full(len(i), fill, dtype=np.result_type(lab.dtype, np.min_scalar_type(fill)))
    ok = i >= 0
    out[ok] = lab[i[ok]]
    return out
