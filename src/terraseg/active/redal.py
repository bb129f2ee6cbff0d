"""ReDAL-style region selection: region information score with diversity across feature clusters.

ReDAL (Wu et al., ICCV 2021; tsunghan-wu/ReDAL, ported in ActiveSFDA's ``ADA/ReDAL``) scores
each region (supervoxel) of a scan and labels whole regions:

1. point score ``s = alpha * u + gamma * sv`` where ``u`` is the softmax entropy **averaged over
   classes** (``mean_c -p_c log2 p_c``, i.e. entropy / C, as ReDAL computes it) of the
   2D+3D ensemble probabilities and ``sv`` the surface variation ``lambda_min / (lambda_1 +
   lambda_2 + lambda_3)`` of a local PCA (ReDAL: 50 neighbours, clipped at 0.1; computed by
   :mod:`terraseg.geometry` and passed in). Reference weights: ``alpha = 1``, ``gamma = 0.05``
   (the colour-gradient term has weight 0 there and is left out);
2. region score: mean point score over the region;
3. regions that already hold a labelled point are dropped (here: ranked after all others, so a
   budget can always be met);
4. diversity ("importance re-weighting"): the regions' mean features are clustered with
   k-means (20 clusters); going through the regions by decreasing score, each region's score is
   multiplied by its cluster's current importance, which then decays by 0.95. A cluster that
   already supplied many high-scoring regions is penalised. With 2D and 3D features the two
   re-weighted scores are summed (ActiveSFDA). (ReDAL's code sorts the features by score but
   then multiplies the i-th region *in storage order* by the importance of the i-th best
   region's cluster, and ActiveSFDA's port skips the sort; here each region is re-weighted by
   its own cluster, in decreasing score, as the paper's section 3.3.2 describes);
5. regions are taken whole in decreasing re-weighted score (ties: lower region id); the last
   one is cut to meet the budget exactly, keeping its points of highest point score, then
   lowest index (ReDAL overshoots instead).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from terraseg.active.scores import as_numpy, softmax_entropy
from terraseg.errors import DataError


def kmeans(x: np.ndarray, k: int, seed: int = 0, max_iter: int = 100) -> np.ndarray:
    """(M,) cluster index of each row of (M, D) ``x``: k-means++ seeding then Lloyd iterations.

    Deterministic for a given ``seed``; ``k`` is reduced to the number of distinct rows.
    """
    x = np.asarray(x, dtype=np.float64)
    m = len(x)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    k = int(min(k, len(np.unique(x, axis=0))))
    if k <= 1:
        return np.zeros(m, dtype=np.int64)
    rng = np.random.default_rng(seed)
    centres = [x[int(rng.integers(m))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        i = int(rng.choice(m, p=d2 / total)) if total > 0 else int(rng.integers(m))
        centres.append(x[i])
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    c = np.stack(centres)
    assign = np.full(m, -1, dtype=np.int64)
    for _ in range(max_iter):
        dist = (x * x).sum(1)[:, None] + (c * c).sum(1)[None, :] - 2.0 * x @ c.T
        new = np.argmin(dist, axis=1)
        if (new == assign).all():
            break
        assign = new
        for j in range(k):
            sel = assign == j
            if sel.any():
                c[j] = x[sel].mean(0)
    return assign


def importance_reweight(scores: np.ndarray, features: np.ndarray, num_clusters: int = 20,
                        decay: float = 0.95, seed: int = 0) -> np.ndarray:
    """Scores of regions re-weighted for diversity (ReDAL section 3.3.2, module doc step 4).

    Args:
        scores: (M,) region scores.
        features: (M, D) region features (mean of the region's point features).

    Returns:
        (M,) re-weighted scores, in the input order.
    """
    s = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(s)), -s))  # decreasing score, lower region first on ties
    clusters = kmeans(np.asarray(features)[order], num_clusters, seed=seed)
    importance = np.ones(max(int(clusters.max()) + 1, 1) if len(clusters) else 1)
    out = s.copy()
    for pos, r in enumerate(order):
        c = clusters[pos]
        out[r] = s[r] * importance[c]
        importance[c] *= decay
    return out


def region_means(values: np.ndarray, region_index: np.ndarray, num_regions: int) -> np.ndarray:
    """(R, ...) mean of per-point ``values`` over each region (``region_index`` in [0, R))."""
    v = np.asarray(values, dtype=np.float64)
    cnt = np.maximum(np.bincount(region_index, minlength=num_regions), 1)
    if v.ndim == 1:
        return np.bincount(region_index, weights=v, minlength=num_regions) / cnt
    out = np.zeros((num_regions, v.shape[1]))
    np.add.at(out, region_index, v)
    return out / cnt[:, None]


def select_redal(probs: np.ndarray, regions: np.ndarray, labelled: np.ndarray, budget: int,
                 surface_variation: np.ndarray | None = None, features: list[Any] | tuple[Any, ...] = (),
                 alpha: float = 1.0, gamma: float = 0.05, num_clusters: int = 20, decay: float = 0.95,
                 seed: int = 0) -> np.ndarray:
    """Exactly ``budget`` unlabelled points chosen region by region, ReDAL-style (module doc).

    Args:
        probs: (N, C) class probabilities (the 2D+3D ensemble mean in the reference).
        regions: (N,) int region id of each point (supervoxels); ``< 0`` = no region, such
            points are only taken after every region.
        labelled: (N,) bool, points never to return.
        budget: points to return.
        surface_variation: (N,) per-point surface variation (0..1/3), or None for entropy only.
        features: per-point feature arrays (N, D) for the diversity term, e.g. ``[feats_2d,
            feats_3d]``; none: no re-weighting.
        alpha, gamma: weights of the uncertainty and surface-variation terms.
        num_clusters, decay, seed: k-means clusters, importance decay, k-means seed.

    Returns:
        sorted int64 point indices.
    """
    p = np.asarray(probs, dtype=np.float64)
    n = len(p)
    reg = np.asarray(regions)
    if reg.shape != (n,) or reg.dtype.kind not in "ui":
        raise DataError(f"regions: expected ({n},) integer region ids, got shape {reg.shape} dtype {reg.dtype}")
    point = alpha * softmax_entropy(p) / p.shape[1]
    if surface_variation is not None:
        point = point + gamma * np.asarray(surface_variation, dtype=np.float64)
    in_region = reg >= 0
    ids, ridx = np.unique(reg[in_region], return_inverse=True)
    nr = len(ids)
    lab = np.asarray(labelled, dtype=bool)
    region_of = np.full(n, -1, dtype=np.int64)
    region_of[in_region] = ridx
    if nr:
        score = region_means(point[in_region], ridx, nr)
        feats = [as_numpy(f, "features")[in_region] for f in features if f is not None]
        if feats:
            score = sum(importance_reweight(score, region_means(f, ridx, nr), num_clusters, decay, seed)
                        for f in feats)
        touched = np.zeros(nr, dtype=bool)
        touched[region_of[lab & in_region]] = True
        rorder = np.lexsort((ids, -score, touched))
        rrank = np.empty(nr + 1, dtype=np.int64)
        rrank[rorder] = np.arange(nr)
    else:
        rrank = np.zeros(1, dtype=np.int64)
    rrank[-1] = nr  # points without a region come last (region_of == -1 indexes the last slot)
    free = np.flatnonzero(~lab)
    order = free[np.lexsort((free, -point[free], rrank[region_of[free]]))]
    return np.sort(order[:budget]).astype(np.int64)
