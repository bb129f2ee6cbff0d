"""RandLA-Net input pipeline: neighbour indices and the random sub-sampling hierarchy.

RandLA-Net (Hu et al., CVPR 2020) never searches neighbours inside the network: the data
pipeline of the official implementation computes, for every encoder level, the k nearest
neighbours of each point, the random subset of points kept for the next level and, for
up-sampling, the nearest kept point of every point. :func:`randla_inputs` does the same with
:mod:`terraseg.geometry.neighbors` (scipy ``cKDTree``, all cores), so the network itself is only
gathers and shared MLPs.

Hierarchy for ``ratios = (r_0, ..., r_{L-1})`` and ``N`` input points::

    level 0: N points (the input, in input order)
    level l+1: N_{l+1} = N_l // r_l points, a uniformly random subset of level l
               (without replacement, drawn from ``numpy.random.default_rng(seed)``)

Per level ``l < L`` the returned dict holds:

- ``neighbors[l]``: (N_l, k) int64, indices into level l of each point's k nearest level-l
  points, ascending distance; the point itself (or an exact duplicate of it) comes first, at
  distance 0. At levels with fewer than ``k`` points the list is padded by repeating the found
  neighbours cyclically.
- ``sub[l]``: (N_{l+1},) int64, increasing indices into level l of the points kept for
  level l+1 (a uniformly random subset, kept in input order for memory locality).
- ``pool[l]``: (N_{l+1}, k) int64, ``neighbors[l][sub[l]]``: the neighbourhood each kept point
  max-pools its features over when going down (the official "random_sample" op).
- ``up[l]``: (N_l,) int64, index into level l+1 of the nearest level-(l+1) point of every
  level-l point (nearest up-sampling).

and ``xyz[l]`` (N_l, 3) float32 for ``l = 0 .. L`` (the last one is only informative).
``features`` is (N, C) float32. All values are torch tensors, unbatched; :func:`collate_randla`
stacks several clouds of equal size into a batch (leading dimension B).

Distances are Euclidean in metres on the given coordinates (sensor frame, unscaled).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from terraseg.errors import DataError
from terraseg.geometry.neighbors import NeighborIndex, build_index, knn

RandLAInputs = dict[str, Any]
"""``{"features": Tensor, "xyz": [Tensor], "neighbors": [Tensor], "sub": [Tensor], "pool": [Tensor],
"up": [Tensor]}`` (see the module docstring for shapes)."""

LIST_KEYS = ("xyz", "neighbors", "sub", "pool", "up")


def level_sizes(n: int, ratios: Sequence[int]) -> list[int]:
    """Points per level: ``[N, N // r_0, N // r_0 // r_1, ...]`` (length ``len(ratios) + 1``)."""
    sizes = [int(n)]
    for r in ratios:
        sizes.append(sizes[-1] // int(r))
    return sizes


def _check_params(k: int, ratios: Sequence[int]) -> None:
    if int(k) != k or k < 1:
        raise DataError(f"randla_inputs: k must be a positive integer, got {k}")
    if len(ratios) == 0 or any(int(r) != r or r < 1 for r in ratios):
        raise DataError(f"randla_inputs: ratios must be positive integers (one per level), got {tuple(ratios)}")


def _pad_neighbors(idx: np.ndarray, n_ref: int, k: int) -> np.ndarray:
    """Replace the -1 slots of a (M, k) kNN result (fewer than k reference points) cyclically."""
    if n_ref >= k:
        return idx
    cols = np.arange(k) % n_ref
    return idx[:, cols]


def _nearest_kept(q: np.ndarray, nb: np.ndarray, sub: np.ndarray, sub_index: NeighborIndex) -> np.ndarray:
    """(N_l,) index into the kept points of each level-l point's nearest kept point.

    The neighbour lists are sorted by distance, so the first kept point among a point's k
    nearest neighbours is its nearest kept point overall; only points with no kept point among
    their k neighbours (about ``(1 - 1/r)^k`` of them, 1 % for r = 4, k = 16) need a tree query.
    """
    pos = np.full(len(q), -1, dtype=np.int64)
    pos[sub] = np.arange(len(sub), dtype=np.int64)
    cand = pos[nb]
    kept = cand >= 0
    up = cand[np.arange(len(q)), np.argmax(kept, axis=1)]
    miss = np.flatnonzero(~kept.any(axis=1))
    if len(miss):
        up[miss] = knn(q[miss], sub_index, k=1)[1][:, 0]
    return up


def randla_inputs(xyz: np.ndarray, features: np.ndarray | None = None, k: int = 16,
                  ratios: Sequence[int] = (4, 4, 4, 4), seed: int | np.random.Generator | None = 0,
                  source: str = "points") -> RandLAInputs:
    """Neighbour indices and the sub-sampling hierarchy of one cloud, as torch tensors.

    Args:
        xyz: (N, 3) or (N, C>=3) float coordinates in metres (only x, y, z are used).
        features: (N, C) per-point input features (for example x, y, z, intensity); None uses
            ``xyz`` (the official SemanticKITTI configuration).
        k: neighbours per point (16 in the paper).
        ratios: sub-sampling ratio of each encoder level (``(4, 4, 4, 4)`` in the paper for
            SemanticKITTI); the number of levels is ``len(ratios)``.
        seed: seed or generator for the random sub-sampling (deterministic for a given seed).
        source: name used in error messages.

    Returns:
        A dict of tensors, see the module docstring: ``features`` (N, C) float32, lists
        ``xyz`` (L+1), ``neighbors``, ``sub``, ``pool``, ``up`` (L each).

    Raises:
        DataError: on a wrong shape, non-finite coordinates, or fewer points than the product
            of the ratios (the last level would be empty).
    """
    _check_params(k, ratios)
    p = np.asarray(xyz)
    if p.ndim != 2 or p.shape[1] < 3 or p.dtype.kind not in "fiu":
        raise DataError(f"{source}: expected an (N, 3) array of x, y, z, got shape {p.shape} dtype {p.dtype}")
    p = np.ascontiguousarray(p[:, :3], dtype=np.float32)
    if not np.isfinite(p).all():
        bad = int(np.argmax(~np.isfinite(p).all(axis=1)))
        raise DataError(f"{source}: coordinates hold NaN or infinite values (first at index {bad})")
    f = p if features is None else np.asarray(features)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2 or len(f) != len(p) or f.dtype.kind not in "fiub":
        raise DataError(f"{source}: features must be ({len(p)}, C) numbers, got shape {f.shape} dtype {f.dtype}")
    f = np.ascontiguousarray(f, dtype=np.float32)
    if not np.isfinite(f).all():
        bad = int(np.argmax(~np.isfinite(f).all(axis=1)))
        raise DataError(f"{source}: features hold NaN or infinite values (first at point {bad})")
    sizes = level_sizes(len(p), ratios)
    if sizes[-1] < 1:
        raise DataError(f"{source}: {len(p)} points are too few for sub-sampling ratios {tuple(ratios)} "
                        f"(need at least {int(np.prod(ratios))})")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    levels = [p]
    subs: list[np.ndarray] = []
    for n_next in sizes[1:]:
        # a uniform random subset, kept in input order (scan order gathers faster than random order)
        s = np.sort(rng.permutation(len(levels[-1]))[:n_next]).astype(np.int64)
        subs.append(s)
        levels.append(levels[-1][s])
    indexes = [build_index(q, f"{source} (level {i})") for i, q in enumerate(levels)]
    neighbors, pools, ups = [], [], []
    for lvl in range(len(ratios)):
        q = levels[lvl]
        _, nb = knn(q, indexes[lvl], k=k)
        nb = _pad_neighbors(nb, len(q), k)
        neighbors.append(nb)
        pools.append(nb[subs[lvl]])
        ups.append(_nearest_kept(q, nb, subs[lvl], indexes[lvl + 1]))
    t = torch.from_numpy
    return {
        "features": t(f),
        "xyz": [t(np.ascontiguousarray(q)) for q in levels],
        "neighbors": [t(np.ascontiguousarray(a, dtype=np.int64)) for a in neighbors],
        "sub": [t(a) for a in subs],
        "pool": [t(np.ascontiguousarray(a, dtype=np.int64)) for a in pools],
        "up": [t(np.ascontiguousarray(a, dtype=np.int64)) for a in ups],
    }


def collate_randla(samples: Sequence[RandLAInputs]) -> RandLAInputs:
    """Stack clouds of equal size into a batch: every tensor gets a leading batch dimension B.

    Extra keys holding tensors (for example ``labels`` of shape (N,)) are stacked too; other
    values are gathered into lists. Clouds of different sizes cannot be batched (their
    hierarchies differ): crop or sample them to a fixed number of points first (the paper
    trains on fixed crops of 45,056 points).
    """
    if not samples:
        raise DataError("collate_randla: no samples to collate")
    n0 = samples[0]["features"].shape[0]
    depth = len(samples[0]["neighbors"])
    for i, s in enumerate(samples):
        if s["features"].shape[0] != n0 or len(s["neighbors"]) != depth:
            raise DataError(f"collate_randla: sample {i} has {s['features'].shape[0]} points and {len(s['neighbors'])} "
                            f"levels, sample 0 has {n0} and {depth}; batch clouds of one size (crop or sample first)")
        if s["features"].shape[1] != samples[0]["features"].shape[1]:
            raise DataError(f"collate_randla: sample {i} has {s['features'].shape[1]} feature channels, "
                            f"sample 0 has {samples[0]['features'].shape[1]}")
    out: RandLAInputs = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        if key in LIST_KEYS:
            out[key] = [torch.stack([v[i] for v in vals]) for i in range(len(vals[0]))]
        elif isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        else:
            out[key] = vals
    return out


def inputs_to(inputs: RandLAInputs, device: torch.device | str) -> RandLAInputs:
    """Move every tensor of a (batched or unbatched) inputs dict to ``device``."""
    out: RandLAInputs = {}
    for key, v in inputs.items():
        if isinstance(v, torch.Tensor):
            out[key] = v.to(device, non_blocking=True)
        elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
            out[key] = [x.to(device, non_blocking=True) for x in v]
        else:
            out[key] = v
    return out
