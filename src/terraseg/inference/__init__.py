"""Inference: loading checkpoints, evaluation on datasets, prediction, ONNX export and runtimes.

- :func:`load_model`: any terraseg checkpoint (camera or LiDAR) with its metadata.
- :func:`evaluate_frames`: score a prediction function on a dataset with a metrics preset.
- LiDAR: :func:`predict_scan_regular` (Open3D-ML-compatible regular crops), :func:`back_project`,
  :func:`export_range_onnx` and :class:`OrtRangePredictor` (range network on ONNX Runtime).
"""

from terraseg.inference.evaluate import Evaluation, evaluate_frames
from terraseg.inference.models import LoadedModel, load_model
from terraseg.inference.points import (
    DEFAULT_NUM_POINTS,
    RegularCropSampler,
    back_project,
    grid_subsample,
    predict_scan_regular,
)
from terraseg.inference.range_onnx import (
    OrtRangeNetwork,
    OrtRangePredictor,
    RangeExportReport,
    export_range_onnx,
    read_range_onnx_metadata,
)

__all__ = [
    "DEFAULT_NUM_POINTS",
    "Evaluation",
    "LoadedModel",
    "OrtRangeNetwork",
    "OrtRangePredictor",
    "RangeExportReport",
    "RegularCropSampler",
    "back_project",
    "evaluate_frames",
    "export_range_onnx",
    "grid_subsample",
    "load_model",
    "predict_scan_regular",
    "read_range_onnx_metadata",
]
