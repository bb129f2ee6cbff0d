"""LiDAR point-cloud segmentation networks and whole-scan inference.

- :class:`RandLANet` (point-based, Hu et al. 2020) with its data pipeline
  :func:`randla_inputs` / :func:`collate_randla` (neighbours and sampling hierarchy computed
  outside the network, scipy k-d tree).
- :class:`SalsaNext` (range image, Cortinhal et al. 2020) with :func:`range_input`
  (normalised channels) and the RangeNet++-style kNN back-projection
  :func:`points_from_pixels`.
- :func:`point_predictor` / :class:`ScanPipeline`: the predictor of any point architecture
  (one table, :data:`POINT_PREDICTORS`) with what all share: intensity scaling and its check
  against the training data (:mod:`~terraseg.models.points.intensity`), and test-time
  augmentation by rotations about z and x / y mirrors (:class:`ScanTTAConfig`).
- :class:`RegularCropPredictor` / :func:`predict_scan_regular`: RandLA-Net with Open3D-ML's
  spatially regular crops.
- :class:`VoxelUNet` (sparse voxel U-Net: MinkUNet18/34, a real-time preset and xMUDA's
  SparseConvNet U-Net) on the pure-PyTorch sparse convolutions of
  :mod:`~terraseg.models.points.sparse_conv` (optional spconv backend), with the voxelisation
  :func:`voxelize_scan` / :func:`collate_voxels` (every point keeps its voxel).
- :func:`build_point_model` builds any of them from an architecture name and a width preset;
  :func:`predict_scan` labels every point of a scan in one network pass (per TTA view).

>>> import numpy as np
>>> from terraseg.models.points import build_point_model, predict_scan
>>> model = build_point_model("salsanext", num_classes=4, preset="tiny")
>>> pts = np.random.default_rng(0).normal(0, 10, (2000, 4)).astype(np.float32)
>>> pred = predict_scan(model, pts, projection="velodyne-hdl64e")
>>> pred.labels.shape, pred.probabilities.shape
((2000,), (2000, 4))
"""

from terraseg.models.points.build import PRESETS, PointModel, build_point_model, canonical_arch, is_point_arch
from terraseg.models.points.intensity import IntensitySpec, IntensityStats, intensity_mismatch, intensity_stats
from terraseg.models.points.pipeline import POINT_PREDICTORS, ScanPipeline, point_predictor, predict_scan
from terraseg.models.points.predict import (
    OrganizedLayout,
    RandLAPredictor,
    RangePredictor,
    ScanPrediction,
    VoxelPredictor,
    resolve_projection,
)
from terraseg.models.points.randla_data import collate_randla, inputs_to, level_sizes, randla_inputs
from terraseg.models.points.randlanet import RANDLA_PRESETS, RandLANet, RandLANetConfig
from terraseg.models.points.range_data import NORMALIZATIONS, normalization, range_input
from terraseg.models.points.range_post import (
    SOURCE_FALLBACK,
    SOURCE_NETWORK,
    SOURCE_NONE,
    SOURCE_VOTE,
    KNNPost,
    points_from_pixels,
)
from terraseg.models.points.regular import RegularCropPredictor, predict_scan_regular
from terraseg.models.points.salsanext import SALSANEXT_PRESETS, SalsaNext, SalsaNextConfig
from terraseg.models.points.sparse_conv import (
    SparseTensor,
    StridedConv3d,
    SubmanifoldConv3d,
    TransposedConv3d,
    sparse_conv,
    spconv_available,
)
from terraseg.models.points.tta import ScanTTAConfig
from terraseg.models.points.voxelize import DEFAULT_VOXEL_SIZE, collate_voxels, voxelize, voxelize_scan
from terraseg.models.points.voxelunet import VOXEL_PRESETS, VoxelUNet, VoxelUNetConfig

__all__ = [
    "DEFAULT_VOXEL_SIZE",
    "IntensitySpec",
    "IntensityStats",
    "NORMALIZATIONS",
    "POINT_PREDICTORS",
    "PRESETS",
    "RANDLA_PRESETS",
    "SALSANEXT_PRESETS",
    "VOXEL_PRESETS",
    "SOURCE_FALLBACK",
    "SOURCE_NETWORK",
    "SOURCE_NONE",
    "SOURCE_VOTE",
    "KNNPost",
    "OrganizedLayout",
    "PointModel",
    "RandLANet",
    "RandLANetConfig",
    "RandLAPredictor",
    "RangePredictor",
    "RegularCropPredictor",
    "SalsaNext",
    "SalsaNextConfig",
    "ScanPipeline",
    "ScanPrediction",
    "ScanTTAConfig",
    "SparseTensor",
    "StridedConv3d",
    "SubmanifoldConv3d",
    "TransposedConv3d",
    "VoxelPredictor",
    "VoxelUNet",
    "VoxelUNetConfig",
    "build_point_model",
    "canonical_arch",
    "collate_randla",
    "collate_voxels",
    "inputs_to",
    "intensity_mismatch",
    "intensity_stats",
    "is_point_arch",
    "level_sizes",
    "normalization",
    "point_predictor",
    "points_from_pixels",
    "predict_scan",
    "predict_scan_regular",
    "randla_inputs",
    "range_input",
    "resolve_projection",
    "sparse_conv",
    "spconv_available",
    "voxelize",
    "voxelize_scan",
]
