"""RandLA-Net whole-scan inference with Open3D-ML's *spatially regular* test-time sampling.

:func:`terraseg.models.points.predict_scan` labels a scan in one network pass over all of
its points. Published RandLA-Net numbers (the official code, and Open3D-ML's
``SemSegRandLANet`` pipeline used for example to fine-tune RandLA-Net on RELLIS-3D) come from a
different test procedure, which :func:`predict_scan_regular` reproduces:

1. optionally, voxel-grid sub-sampling (``grid_size``, 0.06 m in Open3D-ML's SemanticKITTI
   config): one point per occupied voxel, the barycentre of its points and their mean features
   (:func:`grid_subsample`);
2. every (sub-sampled) point gets a *possibility* ``U(0, 1e-3)``; repeatedly the point with the
   lowest possibility is the centre of a crop of its ``num_points`` nearest neighbours (45,056
   for SemanticKITTI; k-d tree), the crop is re-centred and labelled by the network, and each
   crop point's possibility grows by ``(1 - d^2 / d_max^2)^2`` (``d`` its distance to the
   centre, ``d_max`` the crop's largest): points near a crop centre are settled, points at its
   rim stay candidates for the next centres (:class:`RegularCropSampler`);
3. the loop ends when every possibility exceeds ``threshold`` (0.5); every point has then
   been inside at least one crop;
4. the per-point softmax probabilities of all crops containing a point are combined: the plain
   mean by default (``smoothing=None``), or Open3D-ML's exponential moving average
   ``p <- s p + (1 - s) p_crop`` with ``s = 0.95`` (``smoothing=0.95``; Open3D-ML starts from
   zeros, this module divides by the accumulated weight ``1 - s^m`` so rows still sum to 1,
   which does not change the argmax);
5. with grid sub-sampling, each original point takes the probabilities of its nearest
   sub-sampled point (:func:`back_project`, Open3D-ML's ``proj_inds``).

Crop coordinates are re-centred before the network (``recenter``): ``"mean-xy"`` subtracts the
crop's mean x and y (Open3D-ML >= 0.16, ``augment: recenter: dim: [0, 1]``), ``"center"`` the
centre point (official RandLA-Net and older Open3D-ML), ``"none"`` keeps sensor coordinates
(what the one-pass :func:`~terraseg.models.points.predict.predict_scan` feeds). Use the
convention the model was trained with. The network's features are the re-centred x, y, z
followed by the points' columns 3 ... ``in_channels - 1`` (intensity, ...), as in Open3D-ML.

Points without a return get ``fill``, zero probabilities and ``SOURCE_NONE`` as in
:func:`~terraseg.models.points.predict.predict_scan`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from terraseg.errors import ConfigError, DataError
from terraseg.geometry.neighbors import NeighborIndex, build_index, knn
from terraseg.models.points.predict import ScanPrediction, _EvalMode, _model_device, _points, _sync
from terraseg.models.points.randla_data import collate_randla, inputs_to, randla_inputs
from terraseg.models.points.randlanet import RandLANet
from terraseg.models.points.range_post import SOURCE_FALLBACK, SOURCE_NETWORK, SOURCE_VOTE
from terraseg.progress import ProgressBar

Recenter = Literal["mean-xy", "center", "none"]

DEFAULT_NUM_POINTS = 45_056
"""Points per crop of the official SemanticKITTI configuration (RandLA-Net and Open3D-ML)."""
POSSIBILITY_THRESHOLD = 0.5
"""Open3D-ML stops when every possibility exceeds this."""


def back_project(sub_xyz: np.ndarray, sub_probs: np.ndarray, xyz: np.ndarray,
                 index: NeighborIndex | None = None) -> np.ndarray:
    """Values of a sub-sampled cloud carried to every point of the full cloud (nearest neighbour).

    Args:
        sub_xyz: (M, 3) or (M, C>=3) coordinates in metres of the sub-sampled points.
        sub_probs: (M, ...) per-point values: (M, C) probabilities, (M,) labels, ...
        xyz: (N, 3) or (N, C>=3) coordinates in metres, same frame as ``sub_xyz``.
        index: optional k-d tree over ``sub_xyz`` (:func:`~terraseg.geometry.neighbors.build_index`)
            to reuse.

    Returns:
        (N, ...) values (dtype of ``sub_probs``) of each point's nearest sub-sampled point
        (Euclidean, scipy ``cKDTree`` on all cores; ties broken arbitrarily).
    """
    vals = np.asarray(sub_probs)
    n_sub = index.n if index is not None else len(np.asarray(sub_xyz))
    if vals.ndim == 0 or len(vals) != n_sub:
        raise DataError(f"back_project: {vals.shape[0] if vals.ndim else 0} values for {n_sub} sub-sampled points")
    q = np.asarray(xyz)
    if n_sub == 0:
        if len(q):
            raise DataError(f"back_project: no sub-sampled points to project {len(q)} points from")
        return np.empty((0,) + vals.shape[1:], dtype=vals.dtype)
    tree = index if index is not None else build_index(sub_xyz, "sub-sampled points")
    _, nearest = knn(q, tree, k=1)
    return vals[nearest[:, 0]]


def grid_subsample(xyz: np.ndarray, features: np.ndarray | None, grid_size: float
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Voxel-grid sub-sampling (Open3D-ML / KPConv ``grid_subsampling``): one point per voxel.

    Voxels are ``grid_size`` metre cubes aligned to ``floor(min(xyz) / grid_size) * grid_size``.

    Args:
        xyz: (N, 3) float coordinates in metres.
        features: optional (N, F) features averaged per voxel like the coordinates.
        grid_size: voxel edge in metres (> 0).

    Returns:
        ``(sub_xyz (M, 3) float32, sub_features (M, F) float32 or None, voxel (N,) int64)``:
        barycentres, mean features, and the voxel of every input point (``sub_xyz[voxel]`` is
        the barycentre of a point's voxel). Voxels are in increasing (x, y, z) key order.
    """
    if not grid_size > 0:
        raise ConfigError(f"grid_size must be > 0 metres, got {grid_size}")
    p = np.asarray(xyz, dtype=np.float64)[:, :3]
    if len(p) == 0:
        f0 = None if features is None else np.zeros((0, np.asarray(features).shape[1]), dtype=np.float32)
        return np.zeros((0, 3), dtype=np.float32), f0, np.zeros(0, dtype=np.int64)
    origin = np.floor(p.min(axis=0) / grid_size) * grid_size
    cell = np.floor((p - origin) / grid_size).astype(np.int64)
    dims = cell.max(axis=0) + 1
    if float(dims[0]) * float(dims[1]) * float(dims[2]) < 2**62:
        key = (cell[:, 0] * dims[1] + cell[:, 1]) * dims[2] + cell[:, 2]
        _, voxel, counts = np.unique(key, return_inverse=True, return_counts=True)
    else:  # astronomically large extents: row-wise unique
        _, voxel, counts = np.unique(cell, axis=0, return_inverse=True, return_counts=True)
    voxel = voxel.ravel().astype(np.int64)
    m = len(counts)

    def mean(cols: np.ndarray) -> np.ndarray:
        out = np.stack([np.bincount(voxel, weights=cols[:, j], minlength=m) for j in range(cols.shape[1])], axis=1)
        return (out / counts[:, None]).astype(np.float32)

    sub_f = None
    if features is not None:
        f = np.asarray(features, dtype=np.float64)
        sub_f = mean(f) if f.shape[1] else np.zeros((m, 0), dtype=np.float32)
    return mean(p), sub_f, voxel


class RegularCropSampler:
    """Open3D-ML's spatially regular test sampler over one cloud (see the module docstring).

    Attributes:
        xyz: (M, 3) float coordinates in metres.
        num_points: points per crop (all points when the cloud is smaller).
        possibility: (M,) float64 possibility of every point (starts at ``U(0, 1e-3)``).
        threshold: the sampler is :attr:`done` when every possibility exceeds it.
        crops: crops drawn so far.
    """

    def __init__(self, xyz: np.ndarray, num_points: int, rng: np.random.Generator,
                 threshold: float = POSSIBILITY_THRESHOLD, index: NeighborIndex | None = None) -> None:
        self.xyz = np.asarray(xyz)[:, :3]
        self.num_points = int(num_points)
        self.threshold = float(threshold)
        self.possibility = rng.random(len(self.xyz)) * 1e-3
        self.index = index if index is not None else build_index(self.xyz, "crop sampler points")
        self.crops = 0

    @property
    def done(self) -> bool:
        """True when every point's possibility exceeds the threshold."""
        return len(self.possibility) == 0 or bool(self.possibility.min() > self.threshold)

    def settled(self) -> int:
        """Number of points whose possibility exceeds the threshold."""
        return int(np.count_nonzero(self.possibility > self.threshold))

    def next_crop(self) -> tuple[int, np.ndarray]:
        """Draw the next crop and update the possibilities.

        Returns:
            ``(centre, crop)``: index of the centre point and (K,) int64 indices of its
            ``K = min(num_points, M)`` nearest points, by ascending distance (centre first).
        """
        m = len(self.xyz)
        if m == 0:
            raise DataError("crop sampler: the cloud is empty")
        centre = int(np.argmin(self.possibility))
        k = min(self.num_points, m)
        if k == m:
            crop = np.arange(m, dtype=np.int64)
            d2 = np.sum((self.xyz.astype(np.float64) - self.xyz[centre]) ** 2, axis=1)
        else:
            dist, nb = knn(self.xyz[centre:centre + 1], self.index, k=k)
            crop, d2 = nb[0], dist[0] ** 2
        far = d2.max()
        delta = np.square(1.0 - d2 / far) if far > 0 else np.ones_like(d2)
        self.possibility[crop] += delta
        self.crops += 1
        return centre, crop


def _recentred(xyz: np.ndarray, centre: np.ndarray, mode: Recenter) -> np.ndarray:
    """(K, 3) float32 crop coordinates in the network's frame."""
    p = xyz.astype(np.float64)
    if mode == "mean-xy":
        p[:, :2] -= p[:, :2].mean(axis=0)
    elif mode == "center":
        p -= centre.astype(np.float64)
    return p.astype(np.float32)


def _check_options(model: RandLANet, num_points: int, max_crops: int | None, smoothing: float | None,
                   recenter: str, threshold: float, batch_size: int) -> None:
    if not isinstance(model, RandLANet):
        raise DataError(f"predict_scan_regular: expects a RandLANet, got {type(model).__name__}")
    need = int(np.prod(model.config.ratios))
    if int(num_points) != num_points or num_points < need:
        raise ConfigError(f"predict_scan_regular: num_points must be an integer >= {need} (the product of the "
                          f"model's sub-sampling ratios {model.config.ratios}), got {num_points}")
    if max_crops is not None and (int(max_crops) != max_crops or max_crops < 1):
        raise ConfigError(f"predict_scan_regular: max_crops must be a positive integer or None, got {max_crops}")
    if smoothing is not None and not 0 <= smoothing < 1:
        raise ConfigError(f"predict_scan_regular: smoothing must be in [0, 1) or None (plain mean), got {smoothing}")
    if recenter not in ("mean-xy", "center", "none"):
        raise ConfigError(f"predict_scan_regular: recenter must be 'mean-xy', 'center' or 'none', got {recenter!r}")
    if not threshold > 0:
        raise ConfigError(f"predict_scan_regular: threshold must be > 0, got {threshold}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"predict_scan_regular: batch_size must be a positive integer, got {batch_size}")


def predict_scan_regular(model: RandLANet, points: np.ndarray, *, num_points: int = DEFAULT_NUM_POINTS,
                         device: torch.device | str | None = None, max_crops: int | None = None, seed: int = 0,
                         progress: bool = False, grid_size: float | None = None, smoothing: float | None = None,
                         recenter: Recenter = "mean-xy", threshold: float = POSSIBILITY_THRESHOLD,
                         batch_size: int = 1, fill: int = 0, source: str = "points") -> ScanPrediction:
    """Label every point of a scan with RandLA-Net by spatially regular crops (Open3D-ML's test).

    Args:
        model: the network (its ``config.in_channels`` first features are the re-centred x, y, z
            and the points' columns 3 ...; ``config.k`` and ``config.ratios`` define the hierarchy).
        points: (N, C>=3) float points, x, y, z in metres (sensor frame), then intensity, ...
        num_points: points per crop (45,056 in the official SemanticKITTI setup). A scan (after
            grid sub-sampling) with at most this many points is labelled in one pass.
        device: where to run the network (default: the model's device).
        max_crops: stop after this many crops even if some points were never in a crop; those
            take the probabilities of the nearest point that was (``SOURCE_FALLBACK``).
        seed: seeds the initial possibilities and the random sub-sampling of the network inputs
            (deterministic for a seed).
        progress: show a progress bar over the settled points.
        grid_size: voxel size in metres of the optional grid sub-sampling (Open3D-ML: 0.06 for
            SemanticKITTI); None labels the points themselves.
        smoothing: None for the plain mean of the crops' probabilities, or Open3D-ML's moving
            average factor (0.95), normalised so rows sum to 1.
        recenter: crop coordinate frame, ``"mean-xy"``, ``"center"`` or ``"none"`` (module
            docstring).
        threshold: stop when every possibility exceeds it (Open3D-ML: 0.5).
        batch_size: crops per network call (same crops and result as one at a time, up to
            floating-point order; larger batches use the GPU better).
        fill: label of points without a return.
        source: name used in error messages.

    Returns:
        A :class:`~terraseg.models.points.predict.ScanPrediction`: (N,) labels, (N, C)
        probabilities, ``source`` ``SOURCE_NETWORK`` for points labelled by the network
        (``SOURCE_VOTE`` with grid sub-sampling: their nearest voxel's prediction,
        ``SOURCE_FALLBACK`` for points left out by ``max_crops``, ``SOURCE_NONE`` without a
        return), and ``timings`` ``"preprocess"`` (sub-sampling, crops, neighbour hierarchies),
        ``"network"``, ``"postprocess"`` in seconds, and ``crops``, the number of crops.
    """
    _check_options(model, num_points, max_crops, smoothing, recenter, threshold, batch_size)
    cfg = model.config
    t_pre = t_net = 0.0
    t0 = time.perf_counter()
    arr, valid = _points(points, source)
    if arr.shape[1] < cfg.in_channels:
        raise DataError(f"{source}: the model uses {cfg.in_channels} input channels but the points have "
                        f"only {arr.shape[1]} columns")
    idx = np.flatnonzero(valid)
    xyz = arr[idx, :3]
    extra = arr[idx, 3:max(cfg.in_channels, 3)]
    if grid_size is not None:
        sub_xyz, sub_extra, _ = grid_subsample(xyz, extra, grid_size)
        assert sub_extra is not None
    else:
        sub_xyz, sub_extra = xyz, extra
    m, c = len(sub_xyz), cfg.num_classes
    acc = np.zeros((m, c), dtype=np.float64)
    weight = np.zeros(m, dtype=np.float64)
    keep, add = (1.0, 1.0) if smoothing is None else (float(smoothing), 1.0 - float(smoothing))
    # two streams: the network's random sub-sampling draws from default_rng(seed) exactly like
    # RandLAPredictor, so a one-crop scan with recenter="none" is the one-pass prediction
    rng = np.random.default_rng(seed)
    index = build_index(sub_xyz, f"{source} (sub-sampled)") if m else None
    sampler = (RegularCropSampler(sub_xyz, int(num_points), np.random.default_rng([seed, 1]), threshold, index)
               if m else None)
    dev = _model_device(model, device)
    t_pre += time.perf_counter() - t0

    # a cloud of at most num_points points: one pass over all of it
    limit = 1 if m <= num_points else (max_crops if max_crops is not None else np.inf)
    with ProgressBar(m, "RandLA-Net crops", enabled=progress and m > 0) as bar, _EvalMode(model):
        settled = 0
        while sampler is not None and not sampler.done and sampler.crops < limit:
            t1 = time.perf_counter()
            crops: list[np.ndarray] = []
            samples = []
            while len(crops) < batch_size and not sampler.done and sampler.crops < limit:
                centre, crop = sampler.next_crop()
                q = _recentred(sub_xyz[crop], sub_xyz[centre], recenter)
                feats = np.concatenate([q, sub_extra[crop]], axis=1)[:, :cfg.in_channels]
                samples.append(randla_inputs(q, feats, k=cfg.k, ratios=cfg.ratios, seed=rng, source=source))
                crops.append(crop)
            t2 = time.perf_counter()
            with torch.inference_mode():
                logits = model(inputs_to(collate_randla(samples), dev))
                prob = torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64)
            _sync(dev)
            t3 = time.perf_counter()
            for crop, p in zip(crops, prob):  # a handful of crops per batch, vectorised inside
                acc[crop] = keep * acc[crop] + add * p
                weight[crop] = keep * weight[crop] + add
            now = sampler.settled()
            bar.advance(now - settled)
            settled = now
            t_pre += t2 - t1
            t_net += t3 - t2

    t4 = time.perf_counter()
    n = len(arr)
    labels = np.full(n, fill, dtype=np.int64)
    probs = np.zeros((n, c), dtype=np.float32)
    src = np.zeros(n, dtype=np.uint8)
    if m:
        visited = weight > 0
        sub_probs = np.zeros((m, c), dtype=np.float32)
        sub_probs[visited] = acc[visited] / weight[visited, None]
        sub_src = np.where(visited, SOURCE_NETWORK, SOURCE_FALLBACK).astype(np.uint8)
        if not visited.all():
            seen = np.flatnonzero(visited)
            missing = np.flatnonzero(~visited)
            sub_probs[missing] = back_project(sub_xyz[seen], sub_probs[seen], sub_xyz[missing])
        if grid_size is not None:
            assert index is not None
            nearest = back_project(sub_xyz, np.arange(m), xyz, index=index)
            pv, sv = sub_probs[nearest], sub_src[nearest]
            sv[sv == SOURCE_NETWORK] = SOURCE_VOTE
        else:
            pv, sv = sub_probs, sub_src
        probs[idx] = pv
        labels[idx] = pv.argmax(axis=1)
        src[idx] = sv
    t5 = time.perf_counter()
    crops_done = sampler.crops if sampler is not None else 0
    return ScanPrediction(labels, probs, src, {"preprocess": t_pre, "network": t_net, "postprocess": t5 - t4},
                          crops=int(crops_done))


@dataclass
class RegularCropPredictor:
    """``predict(points) -> ScanPrediction`` with :func:`predict_scan_regular` (RandLA-Net labelled
    by spatially regular crops, Open3D-ML's test procedure) instead of one pass over the scan.

    Attributes: as the keywords of :func:`predict_scan_regular`. ``recenter`` defaults to
    ``"none"``: terraseg's training feeds RandLA-Net sensor coordinates, as the one-pass
    predictor does.
    """

    model: RandLANet
    num_points: int = DEFAULT_NUM_POINTS
    seed: int = 0
    recenter: Recenter = "none"
    grid_size: float | None = None
    smoothing: float | None = None
    batch_size: int = 1
    max_crops: int | None = None
    fill: int = 0
    device: torch.device | str | None = None
    source: str = "points"

    def __post_init__(self) -> None:
        _check_options(self.model, self.num_points, self.max_crops, self.smoothing, self.recenter,
                       POSSIBILITY_THRESHOLD, self.batch_size)

    @property
    def uses_intensity(self) -> bool:
        """Whether column 3 of the points (intensity) is a network input."""
        return int(self.model.config.in_channels) > 3

    def __call__(self, points: np.ndarray, source: str | None = None) -> ScanPrediction:
        """Label every point of one scan; ``source`` names it in messages (default: ``self.source``)."""
        return predict_scan_regular(self.model, points, num_points=self.num_points, device=self.device,
                                    max_crops=self.max_crops, seed=self.seed, grid_size=self.grid_size,
                                    smoothing=self.smoothing, recenter=self.recenter, batch_size=self.batch_size,
                                    fill=self.fill, source=source or self.source)
