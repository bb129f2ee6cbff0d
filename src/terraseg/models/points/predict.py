"""Whole-scan inference: a label and class probabilities for every point of a LiDAR scan.

- :class:`RandLAPredictor`: all points with a return go through RandLA-Net in one pass (no
  repeated random crops as in the official test script): the pipeline builds the neighbour /
  sampling hierarchy of the whole scan (:func:`~terraseg.models.points.randla_data.randla_inputs`)
  and the network labels every point directly.
- :class:`RangePredictor`: the scan is projected into a range image (spherical projection for
  any cloud, or the sensor's own layout for organised scans such as the RELLIS-3D Ouster
  ``.bin`` files), the range network labels the pixels in one pass, and
  :func:`~terraseg.models.points.range_post.points_from_pixels` labels every point from them.
- :class:`VoxelPredictor`: the points with a return are voxelised
  (:func:`~terraseg.models.points.voxelize.voxelize_scan`), the sparse voxel U-Net labels every
  voxel in one pass, and every point reads its voxel's label and probabilities.
- :func:`predict_scan` / :func:`~terraseg.models.points.pipeline.point_predictor` pick the
  predictor of a model from one table (:data:`~terraseg.models.points.pipeline.POINT_PREDICTORS`)
  and add what every model shares: intensity scaling and its check, and test-time augmentation
  (:class:`~terraseg.models.points.pipeline.ScanPipeline`).

A range network projects with *its* sensor projection: the ``projection`` given, else the one
the model carries (``model.projection``, set by :func:`terraseg.inference.load_model` from the
checkpoint); a network that records none and is given none is an error, never a silent default.

Points without a return (zero or non-finite coordinates, such as the 53,364 zero points of an
organised RELLIS-3D scan) get the label ``fill`` (default 0), all-zero probabilities and
``source == SOURCE_NONE``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from terraseg.errors import ConfigError, DataError
from terraseg.geometry.projection import as_xyz
from terraseg.geometry.range_image import (
    Layout,
    RangeImage,
    RangeProjection,
    from_organized,
    organized_layout,
    parse_organized,
    project_scan,
)
from terraseg.models.points.randla_data import collate_randla, inputs_to, randla_inputs
from terraseg.models.points.randlanet import RandLANet
from terraseg.models.points.range_data import range_input
from terraseg.models.points.range_post import SOURCE_NETWORK, SOURCE_NONE, KNNPost, points_from_pixels
from terraseg.models.points.salsanext import SalsaNext
from terraseg.models.points.voxelize import collate_voxels, inputs_to_device, voxelize_scan
from terraseg.models.points.voxelunet import VoxelUNet

DEFAULT_MIN_RANGE = 1e-3
"""Points nearer than this (metres) count as no return."""


@dataclass(frozen=True)
class ScanPrediction:
    """Per-point output of a whole-scan prediction (N points, C classes).

    Attributes:
        labels: (N,) int64 labels in ``[0, C)`` (``fill`` for points without a return).
        probabilities: (N, C) float32 class probabilities (softmax); rows of points without a
            return are 0. None for a labels-only prediction (``RangePredictor(probabilities=False)``).
        source: (N,) uint8 where each label came from (``SOURCE_*`` of
            :mod:`terraseg.models.points.range_post`).
        timings: wall-clock seconds of ``"preprocess"`` (projection or neighbour hierarchy),
            ``"network"`` (forward pass, including host-device copies) and ``"postprocess"``.
        crops: network passes over parts of the scan (1 for whole-scan prediction; the number of
            regular crops of :func:`terraseg.inference.predict_scan_regular`).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    source: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    crops: int = 1

    @property
    def valid(self) -> np.ndarray:
        """(N,) bool, points with a return."""
        return self.source != SOURCE_NONE

    @property
    def num_classes(self) -> int:
        if self.probabilities is None:
            raise ValueError("a labels-only ScanPrediction does not know the number of classes")
        return int(self.probabilities.shape[1])


@dataclass(frozen=True)
class OrganizedLayout:
    """Projection of an organised scan: point ``i`` is a fixed pixel of an H x W sensor image
    (see :func:`terraseg.geometry.range_image.from_organized`); RELLIS-3D Ouster scans are
    ``OrganizedLayout(64, 2048)``."""

    height: int
    width: int
    layout: Layout = "auto"


Projection = RangeProjection | OrganizedLayout | str


def resolve_projection(projection: Projection | None, where: str = "range network") -> Projection:
    """A projection ready for :class:`RangePredictor`: ``organized:HxW`` text becomes an
    :class:`OrganizedLayout`, a preset name is checked; None is an error naming ``where``."""
    if projection is None:
        raise ConfigError(f"{where}: the range network records no sensor projection; give one (a preset such as "
                          "velodyne-hdl64e, or organized:HxW for scans stored in sensor order)")
    if isinstance(projection, str):
        hw = parse_organized(projection)
        if hw is not None:
            return OrganizedLayout(*hw)
        RangeProjection.preset(projection)  # an unknown name fails here, naming the known ones
    return projection


def _float_points(points: np.ndarray, source: str) -> np.ndarray:
    """The float32 (N, C>=3) array of a scan (no copy when it already is one)."""
    arr = np.asarray(points)
    as_xyz(arr, source)
    return arr.astype(np.float32, copy=False)


def _points(points: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32 array (N, C>=3), valid (N,) bool) of a scan."""
    arr = _float_points(points, source)
    xyz = arr[:, :3]
    with np.errstate(invalid="ignore", over="ignore"):
        rng2 = np.einsum("ij,ij->i", xyz, xyz, dtype=np.float64)
        valid = np.isfinite(rng2) & (rng2 > DEFAULT_MIN_RANGE**2)
    return arr, valid


def _network_points(points: np.ndarray, in_channels: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_points` of a scan for a network reading its first ``in_channels`` columns.

    Raises:
        DataError: the scan has fewer columns than the network reads.
    """
    arr, valid = _points(points, source)
    if arr.shape[1] < in_channels:
        raise DataError(f"{source}: the model uses {in_channels} input channels but the points have "
                        f"only {arr.shape[1]} columns")
    return arr, valid


def _model_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _EvalMode:
    """Put a model in eval mode for a block and restore its previous mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.was_training = model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was_training)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class RandLAPredictor:
    """Whole-scan RandLA-Net inference.

    Attributes:
        model: the network; its ``config.in_channels`` first columns of the points are its
            features (x, y, z[, intensity, ...]), its ``config.k`` and ``config.ratios`` define
            the hierarchy.
        seed: seed of the random sub-sampling (results are deterministic for a seed).
        fill: label of points without a return.
        device: where to run (default: the model's device).
        source: name used in error messages.
    """

    model: RandLANet
    seed: int = 0
    fill: int = 0
    device: torch.device | str | None = None
    source: str = "points"

    @property
    def uses_intensity(self) -> bool:
        """Whether column 3 of the points (intensity) is a network input."""
        return int(self.model.config.in_channels) > 3

    def __call__(self, points: np.ndarray, source: str | None = None) -> ScanPrediction:
        """Label every point of one scan; ``source`` names it in messages (default: ``self.source``)."""
        where = source or self.source
        cfg = self.model.config
        t0 = time.perf_counter()
        arr, valid = _network_points(points, cfg.in_channels, where)
        idx = np.flatnonzero(valid)
        inputs = randla_inputs(arr[idx, :3], arr[idx, :cfg.in_channels], k=cfg.k, ratios=cfg.ratios, seed=self.seed,
                               source=where)
        batch = collate_randla([inputs])
        t1 = time.perf_counter()
        device = _model_device(self.model, self.device)
        with _EvalMode(self.model), torch.inference_mode():
            logits = self.model(inputs_to(batch, device))[0]
            prob = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        _sync(device)
        t2 = time.perf_counter()
        n, c = len(arr), cfg.num_classes
        labels = np.full(n, self.fill, dtype=np.int64)
        labels[idx] = prob.argmax(axis=1)
        probs = np.zeros((n, c), dtype=np.float32)
        probs[idx] = prob
        source = np.zeros(n, dtype=np.uint8)
        source[idx] = SOURCE_NETWORK
        t3 = time.perf_counter()
        return ScanPrediction(labels, probs, source, {"preprocess": t1 - t0, "network": t2 - t1, "postprocess": t3 - t2})


@dataclass
class RangePredictor:
    """Whole-scan inference with a range-image network (RangeNet++-style pipeline).

    Attributes:
        model: the range network (its config holds the input channels and normalisation).
        projection: a :class:`~terraseg.geometry.range_image.RangeProjection`, a preset name
            (``velodyne-hdl64e``, ``rellis3d-os1-64``, ...), an :class:`OrganizedLayout` (or its
            text ``organized:HxW``); None: the model's own (``model.projection``, recorded in its
            checkpoint), an error when it has none. The image size is the projection's (64 x 2048
            for the 64-beam presets).
        post: kNN post-processing (see :mod:`terraseg.models.points.range_post`).
        fill: label of points without a return.
        device: where to run (default: the model's device).
        channels_last: run the network in channels-last memory format (about 20 % faster on
            the CPU with oneDNN; the model's weights are converted in place on the first call,
            their values are unchanged).
        source: name used in error messages.
        probabilities: compute per-point class probabilities. False: labels only (no softmax,
            no (N, C) array; ``ScanPrediction.probabilities`` is None); networks with a
            ``labels(x) -> (H, W)`` method (the ONNX Runtime one) take the argmax themselves.
    """

    model: SalsaNext
    projection: Projection | None = None
    post: KNNPost = field(default_factory=KNNPost)
    fill: int = 0
    device: torch.device | str | None = None
    channels_last: bool = True
    source: str = "points"
    probabilities: bool = True
    _layouts: dict[OrganizedLayout, tuple[Any, bool]] = field(default_factory=dict, init=False, repr=False,
                                                               compare=False)

    def __post_init__(self) -> None:
        proj = self.projection if self.projection is not None else getattr(self.model, "projection", None)
        self.projection = resolve_projection(proj, self.source if self.source != "points" else
                                             type(self.model).__name__)

    @property
    def uses_intensity(self) -> bool:
        """Whether column 3 of the points (intensity) is a network input (5- and 6-channel inputs)."""
        return int(self.model.config.in_channels) >= 5

    @property
    def tta_unsupported(self) -> str | None:
        """Why rotation / mirror TTA cannot work with this predictor (None: it can)."""
        if isinstance(self.projection, OrganizedLayout):
            return ("its range image uses the organised sensor layout (organized:HxW), which places every point at "
                    "the pixel its index in the scan gives; rotating or mirroring the coordinates does not move it "
                    "in the image and would only corrupt the x / y input channels. Use a spherical projection preset "
                    "(--projection) for TTA")
        return None

    def project(self, points: np.ndarray, source: str | None = None) -> RangeImage:
        """The range image of a scan ((N, C>=3) float points); ``source`` names it in messages."""
        where = source or self.source
        p = self.projection
        if isinstance(p, OrganizedLayout):
            # a stream of scans from one sensor: decide "auto" layout and row order on the first scan
            resolved = self._layouts.get(p)
            if resolved is None:
                resolved = self._layouts[p] = organized_layout(points, p.height, p.width, p.layout,
                                                               min_range=DEFAULT_MIN_RANGE, source=where)
            return from_organized(points, p.height, p.width, layout=resolved[0], flip_rows=resolved[1],
                                  min_range=DEFAULT_MIN_RANGE, source=where)
        return project_scan(points, p, source=where)

    def _input(self, image: RangeImage) -> torch.Tensor:
        """The network input (1, C, H, W) of a range image, on the device and in the memory format."""
        cfg = self.model.config
        x = torch.from_numpy(range_input(image, cfg.means, cfg.stds, cfg.in_channels, self.source))[None]
        device = _model_device(self.model, self.device)
        x = x.to(device)
        if self.channels_last:
            fmt = torch.channels_last
            if not all(p.is_contiguous(memory_format=fmt) for p in self.model.parameters() if p.dim() == 4):
                self.model.to(memory_format=fmt)
            x = x.contiguous(memory_format=fmt)
        return x

    def predict_image(self, image: RangeImage) -> tuple[np.ndarray, np.ndarray]:
        """Network prediction of a range image: (labels (H, W) int64, probabilities (H, W, C) float32)."""
        x = self._input(image)
        with _EvalMode(self.model), torch.inference_mode():
            logits = self.model(x)[0]
            # softmax over the last axis of a channels-last copy, labels from its max: ~2x faster on
            # the CPU than softmax over channels, permute and numpy argmax (same ids)
            prob_t = torch.softmax(logits.float().permute(1, 2, 0).contiguous(), dim=-1)
            labels = prob_t.max(dim=-1).indices.cpu().numpy()
            prob = prob_t.cpu().numpy()
        _sync(x.device)
        return labels, prob

    def predict_labels(self, image: RangeImage) -> np.ndarray:
        """Network class ids (H, W) of a range image, without probabilities (the ids of
        :meth:`predict_image`)."""
        x = self._input(image)
        fused = getattr(self.model, "labels", None)
        if callable(fused):
            return np.asarray(fused(x)).astype(np.int64, copy=False)
        with _EvalMode(self.model), torch.inference_mode():
            logits = self.model(x)[0]
            labels = logits.float().permute(1, 2, 0).contiguous().max(dim=-1).indices.cpu().numpy()
        _sync(x.device)
        return labels

    def __call__(self, points: np.ndarray, source: str | None = None) -> ScanPrediction:
        """Label every point of one scan; ``source`` names it in messages (default: ``self.source``)."""
        where = source or self.source
        t0 = time.perf_counter()
        if isinstance(self.projection, OrganizedLayout):
            # the organised projection already tells every point's return (its row is -1 without)
            arr = _float_points(points, where)
            image = self.project(arr, where)
            valid = image.point_row >= 0
        else:
            arr, valid = _points(points, where)
            image = self.project(arr, where)
        t1 = time.perf_counter()
        if self.probabilities:
            pixel_labels, pixel_probs = self.predict_image(image)
        else:
            pixel_labels, pixel_probs = self.predict_labels(image), None
        t2 = time.perf_counter()
        labels, probs, source = points_from_pixels(image, pixel_labels, pixel_probs, arr[:, :3], valid, self.post,
                                                   self.fill)
        t3 = time.perf_counter()
        return ScanPrediction(labels, probs, source, {"preprocess": t1 - t0, "network": t2 - t1, "postprocess": t3 - t2})


@dataclass
class VoxelPredictor:
    """Whole-scan inference with the sparse voxel U-Net: one pass over every voxel of the scan.

    Attributes:
        model: the network; its config gives the voxel size, the point columns averaged into
            the voxel features (x, y, z[, intensity, ...]) and the centre offsets.
        fill: label of points without a return (zero or non-finite coordinates).
        device: where to run (default: the model's device).
        source: name of the scan in error messages.
        probabilities: compute per-point class probabilities (softmax per voxel). False: labels
            only (``ScanPrediction.probabilities`` is None).
    """

    model: VoxelUNet
    fill: int = 0
    device: torch.device | str | None = None
    source: str = "points"
    probabilities: bool = True

    def __call__(self, points: np.ndarray, source: str | None = None) -> ScanPrediction:
        """Label every point of one scan; ``source`` names it in messages (default: ``self.source``)."""
        where = source or self.source
        cfg = self.model.config
        t0 = time.perf_counter()
        arr, valid = _network_points(points, cfg.in_channels, where)
        idx = np.flatnonzero(valid)
        if len(idx) == 0:
            raise DataError(f"{where}: no points with a return (the scan is empty, or every point is zero "
                            "or non-finite)")
        vox = voxelize_scan(arr[idx], cfg.voxel_size, cfg.in_channels, cfg.centre_offsets, where)
        batch = collate_voxels([vox])
        t1 = time.perf_counter()
        device = _model_device(self.model, self.device)
        with _EvalMode(self.model), torch.inference_mode():
            feats, inverse = self.model.voxel_features(inputs_to_device(batch, device))
            logits = self.model.classify(feats).float()  # per voxel: the points read their voxel's row
            assert inverse is not None
            if self.probabilities:
                prob_v = torch.softmax(logits, dim=-1)
                lab_v = prob_v.max(dim=-1).indices
                prob = prob_v.index_select(0, inverse).cpu().numpy()
            else:
                lab_v, prob = logits.max(dim=-1).indices, None
            lab = lab_v.index_select(0, inverse).cpu().numpy()
        _sync(device)
        t2 = time.perf_counter()
        n = len(arr)
        labels = np.full(n, self.fill, dtype=np.int64)
        labels[idx] = lab
        probs = None
        if prob is not None:
            probs = np.zeros((n, cfg.num_classes), dtype=np.float32)
            probs[idx] = prob
        source = np.zeros(n, dtype=np.uint8)
        source[idx] = SOURCE_NETWORK
        t3 = time.perf_counter()
        return ScanPrediction(labels, probs, source, {"preprocess": t1 - t0, "network": t2 - t1, "postprocess": t3 - t2})


def predict_scan(model: nn.Module, points: np.ndarray, **options: Any) -> ScanPrediction:
    """Label every point of one scan with a point model (see
    :func:`terraseg.models.points.pipeline.predict_scan`, which this forwards to)."""
    from terraseg.models.points.pipeline import predict_scan as _predict_scan

    return _predict_scan(model, points, **options)
