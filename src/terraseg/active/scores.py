"""Per-point uncertainty scores and the deterministic ranking every strategy uses.

Scores (higher = more worth labelling unless said otherwise), on (N, C) softmax probabilities:

- :func:`softmax_entropy`: ``-sum_c p_c log2 p_c`` in bits (``0 log 0 = 0``).
- :func:`max_confidence`: ``max_c p_c`` (lower = more uncertain).
- :func:`top2_margin`: difference of the two largest probabilities (lower = more uncertain).
- :func:`knn_label_entropy`: the entropy (bits) of the predicted-label histogram of a point's
  ``k`` nearest neighbours in feature space, the reference's (ActiveSFDA) "feature entropy".

Two modalities combine as in the reference: the ensemble confidence is the maximum of
``(p2d + p3d) / 2``, entropies and margins are summed over the 2D and 3D networks.

:func:`rank` orders candidates by a primary score, then a secondary score, then the point index
(ascending), so equal scores (common: with ``k = 4`` the kNN entropy of one network takes only
five values, 0, 0.811, 1, 1.5 and 2 bits) always resolve the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from terraseg.errors import DataError

try:  # torch is a dependency; kept optional here so the numpy paths never need it
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]


def as_numpy(x: Any, what: str) -> np.ndarray:
    """A numpy view of a numpy array or a torch tensor (detached, on the CPU)."""
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: not an array ({exc})") from None


def check_probs(probs: Any, what: str = "probabilities") -> np.ndarray:
    """(N, C) finite probabilities as a float array (each row a softmax, not checked to sum to 1)."""
    p = as_numpy(probs, what)
    if p.ndim != 2 or p.shape[1] < 1:
        raise DataError(f"{what}: expected (N, C) class probabilities, got shape {p.shape}")
    if p.dtype.kind != "f":
        raise DataError(f"{what}: expected floating-point probabilities, got dtype {p.dtype}")
    if p.size and not np.isfinite(p).all():
        bad = int(np.argmax(~np.isfinite(p).all(axis=1)))
        raise DataError(f"{what}: NaN or infinite probability at point {bad}")
    return p


def softmax_entropy(probs: np.ndarray) -> np.ndarray:
    """(N,) entropy in bits of (N, C) probabilities (``0 log 0 = 0``), float64."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return -t.sum(axis=1)


def max_confidence(probs: np.ndarray) -> np.ndarray:
    """(N,) largest class probability, float64."""
    return np.asarray(probs, dtype=np.float64).max(axis=1)


def top2_margin(probs: np.ndarray) -> np.ndarray:
    """(N,) difference between the largest and second-largest probability (1 class: the largest)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[1] == 1:
        return p[:, 0].copy()
    top = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def ensemble_probs(probs_2d: np.ndarray | None, probs_3d: np.ndarray | None) -> np.ndarray:
    """``(p2d + p3d) / 2`` when both are given, else the one given (float64)."""
    given = [np.asarray(p, dtype=np.float64) for p in (probs_2d, probs_3d) if p is not None]
    if not given:
        raise DataError("no class probabilities given (need probs_2d and/or probs_3d)")
    return given[0] if len(given) == 1 else (given[0] + given[1]) / 2.0


def ensemble_labels(probs_2d: np.ndarray | None, probs_3d: np.ndarray | None) -> np.ndarray:
    """(N,) int64 ``argmax(p2d + p3d)`` (or of the one given); ties go to the lower class id."""
    return np.argmax(ensemble_probs(probs_2d, probs_3d), axis=1).astype(np.int64)


def summed(fn: Any, probs_2d: np.ndarray | None, probs_3d: np.ndarray | None) -> np.ndarray:
    """``fn(p2d) + fn(p3d)`` over the modalities given (the reference's entropy / margin mix)."""
    parts = [fn(p) for p in (probs_2d, probs_3d) if p is not None]
    if not parts:
        raise DataError("no class probabilities given (need probs_2d and/or probs_3d)")
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def rank(primary: np.ndarray, candidates: np.ndarray | None = None,
         secondary: np.ndarray | None = None) -> np.ndarray:
    """Candidate indices ordered best first: primary descending, secondary descending, index ascending.

    Args:
        primary: (N,) score, higher first (negate a score where lower is better).
        candidates: indices (or an (N,) bool mask) to rank; default all N.
        secondary: (N,) tie-break score, higher first; ties left after it go to the lower index.

    Returns:
        int64 indices into the N points.
    """
    primary = np.asarray(primary, dtype=np.float64)
    idx = np.arange(len(primary), dtype=np.int64) if candidates is None else np.asarray(candidates)
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64, copy=False)
    keys = [idx]
    if secondary is not None:
        keys.append(-np.asarray(secondary, dtype=np.float64)[idx])
    keys.append(-primary[idx])
    return idx[np.lexsort(keys)]


# ----------------------------------------------------------------------- feature-space kNN
def _snap_tolerance(dtype: Any) -> float:
    return 1e-5 if dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-12


def feature_knn(features: Any, k: int = 4, chunk_elements: int = 1 << 22) -> np.ndarray:
    """The ``k`` nearest neighbours of every point among the same points, in feature space.

    Euclidean distance on (N, D) features (numpy or torch; a CUDA tensor is searched on its
    GPU). As in the reference (cuML ``NearestNeighbors.kneighbors`` on the fitted set), a point
    is its own first neighbour, so ``k = 4`` means the point and its 3 nearest others.

    Deterministic: squared distances within a relative ``1e-5`` (float32) or ``1e-12`` (float64)
    of zero count as exact zeros (identical features, common in 2D where several points share
    a pixel, then tie exactly), and among equal distances the lower index wins.

    Args:
        features: (N, D) float features.
        k: neighbours per point, the point itself included (at most N are returned).
        chunk_elements: rows are processed in blocks of about this many distances.

    Returns:
        (N, min(k, N)) int64 indices, nearest first, column 0 the point itself.
    """
    if torch is None:  # pragma: no cover
        raise DataError("feature_knn needs PyTorch")
    if int(k) != k or k < 1:
        raise DataError(f"k must be a positive integer, got {k}")
    x = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(as_numpy(features, "features")))
    x = x.detach()
    if x.ndim != 2:
        raise DataError(f"features: expected (N, D), got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        x = x.double()
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise DataError("features: NaN or infinite values")
    n = x.shape[0]
    kk = min(int(k), n)
    if n == 0:
        return np.zeros((0, kk), dtype=np.int64)
    tol = _snap_tolerance(x.dtype)
    sq = (x * x).sum(dim=1)
    rows_per_chunk = max(1, chunk_elements // max(n, 1))
    out = torch.empty((n, kk), dtype=torch.int64, device=x.device)
    kk1 = min(kk + 8, n)  # spare candidates: a tie at the k-th distance is usually resolved among them
    for r0 in range(0, n, rows_per_chunk):
        r1 = min(n, r0 + rows_per_chunk)
        m = r1 - r0
        d = torch.addmm(sq[None, :], x[r0:r1], x.T, beta=1.0, alpha=-2.0).add_(sq[r0:r1, None])
        rr = torch.arange(m, device=x.device)
        d[rr, rr + r0] = -1.0  # the point itself first
        # near-zero (and rounding-negative) squared distances count as exact zeros: |a - b|^2 tiny
        # means |b|^2 ~ |a|^2, so the row's own norm sets the scale of the rounding error
        bound = (2.0 * tol) * sq[r0:r1, None]
        vals, idx = torch.topk(d, kk1, dim=1, largest=False, sorted=True)
        vals = torch.where((vals > -0.5) & (vals <= bound), torch.zeros_like(vals), vals)
        # order the candidates by (distance, index): sort by index, then stably by distance
        by_idx = torch.sort(idx, dim=1)
        vals = torch.gather(vals, 1, by_idx.indices)
        order = torch.sort(vals, dim=1, stable=True)
        best = torch.gather(by_idx.values, 1, order.indices)[:, :kk]
        if kk1 > kk:
            # rows whose k-th distance is shared beyond the spare candidates: every column decides
            wide = torch.nonzero(order.values[:, -1] == order.values[:, kk - 1]).flatten()
            if len(wide):
                ds = d[wide]
                ds = torch.where((ds > -0.5) & (ds <= bound[wide]), torch.zeros_like(ds), ds)
                ts = order.values[wide, kk - 1:kk]
                eq = ds == ts
                less = ds < ts
                take = less | (eq & (torch.cumsum(eq, dim=1) <= kk - less.sum(dim=1, keepdim=True)))
                cols = torch.arange(n, device=x.device).expand(len(wide), n)
                sel = cols[take].view(len(wide), kk)  # ascending index
                dsel = torch.gather(ds, 1, sel)
                best[wide] = torch.gather(sel, 1, torch.sort(dsel, dim=1, stable=True).indices)
        out[r0:r1] = best
    return out.cpu().numpy()


def label_histogram_entropy(neighbors: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) entropy in bits of the label histogram over each row of ``neighbors``.

    ``neighbors`` is (N, k) indices into ``labels`` (N,) ints in ``[0, num_classes)``; the
    proportions are counts / k (the reference's ``calculate_proportions``).
    """
    nb = np.asarray(neighbors, dtype=np.int64)
    lab = np.asarray(labels, dtype=np.int64)
    n, k = nb.shape
    if n == 0 or k == 0:
        return np.zeros(n, dtype=np.float64)
    nl = lab[nb]
    counts = np.zeros((n, num_classes), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(n), k), nl.ravel()), 1)
    return softmax_entropy(counts / k)


def knn_label_entropy(features: Any, labels: np.ndarray, num_classes: int, k: int = 4) -> np.ndarray:
    """The reference's feature entropy of one network: entropy of its kNN's label histogram.

    Args:
        features: (N, D) per-point features of one network (2D features sampled at the points'
            pixels, or 3D features).
        labels: (N,) the labels counted, the reference uses the 2D+3D ensemble prediction.
        num_classes: C.
        k: neighbours, the point itself included (reference: ``n_neighbors = 4``).

    Returns:
        (N,) float64 entropy in bits (``k = 4``: 0, 0.811, 1, 1.5 or 2).
    """
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.dtype.kind not in "ui":
        raise DataError(f"labels: expected (N,) integer labels, got shape {lab.shape} dtype {lab.dtype}")
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise DataError(f"labels: values must lie in [0, {num_classes}), got {int(lab.min())}..{int(lab.max())}")
    nb = feature_knn(features, k)
    if len(nb) != len(lab):
        raise DataError(f"features have {len(nb)} rows but labels {len(lab)}")
    return label_histogram_entropy(nb, lab, num_classes)
