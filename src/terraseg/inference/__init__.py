"""Inference: loading checkpoints, evaluation on datasets, prediction, ONNX export and runtimes.

- :func:`load_predictor`: any model file (``.pth`` or ``.onnx``, camera or LiDAR) ready to run,
  with its ontology, normalisation, projection and intensity scale (:class:`Predictor`);
  :func:`model_kind` decides camera or LiDAR.
- :func:`load_model`: the PyTorch network of a terraseg checkpoint with its metadata.
- :func:`evaluate_frames`: score a prediction function on a dataset with a metrics preset.
- Camera: :class:`ImagePredictor` (whole image or sliding window, softmax-averaged TTA),
  :func:`export_onnx` and :class:`OrtImagePredictor` (same interface on ONNX Runtime),
  :class:`PredictionWriter` / :func:`iter_inputs` (folders, images, videos) and
  :func:`write_goose_submission`.
- LiDAR: :func:`predict_scan_regular` (Open3D-ML-compatible regular crops), :func:`back_project`,
  :func:`export_range_onnx` and :class:`OrtRangePredictor` (range network on ONNX Runtime),
  :class:`ScanTTAConfig` (rotation / mirror TTA).

The in-memory predictors live next to their models (:mod:`terraseg.models.image.predict`,
:mod:`terraseg.models.points`); their names are re-exported here.
"""

from terraseg.inference.evaluate import Evaluation, evaluate_frames
from terraseg.inference.image import (
    BaseImagePredictor,
    ImagePredictor,
    TTAConfig,
    WindowConfig,
    infer_probabilities,
    window_starts,
)
from terraseg.inference.models import LoadedModel, load_model
from terraseg.inference.onnx_export import (
    ExportReport,
    OnnxModelInfo,
    OrtImagePredictor,
    export_checkpoint_onnx,
    export_onnx,
    read_onnx_metadata,
)
from terraseg.inference.points import (
    DEFAULT_NUM_POINTS,
    RegularCropSampler,
    back_project,
    grid_subsample,
    predict_scan_regular,
)
from terraseg.inference.predictor import ModelKind, Predictor, load_predictor, model_kind
from terraseg.inference.range_onnx import (
    OrtRangeNetwork,
    OrtRangePredictor,
    RangeExportReport,
    export_range_checkpoint_onnx,
    export_range_onnx,
    read_range_onnx_metadata,
)
from terraseg.inference.submission import SubmissionReport, submission_name, write_goose_submission
from terraseg.inference.writers import OverlayVideoWriter, PredictionWriter, count_inputs, iter_inputs, video_fps
from terraseg.models.points.tta import ScanTTAConfig

__all__ = [
    "BaseImagePredictor",
    "ModelKind",
    "Predictor",
    "ScanTTAConfig",
    "load_predictor",
    "model_kind",
    "ExportReport",
    "ImagePredictor",
    "OnnxModelInfo",
    "OrtImagePredictor",
    "OverlayVideoWriter",
    "PredictionWriter",
    "SubmissionReport",
    "TTAConfig",
    "WindowConfig",
    "count_inputs",
    "export_checkpoint_onnx",
    "export_onnx",
    "infer_probabilities",
    "iter_inputs",
    "read_onnx_metadata",
    "submission_name",
    "video_fps",
    "window_starts",
    "write_goose_submission",
    "DEFAULT_NUM_POINTS",
    "Evaluation",
    "LoadedModel",
    "OrtRangeNetwork",
    "OrtRangePredictor",
    "RangeExportReport",
    "RegularCropSampler",
    "back_project",
    "evaluate_frames",
    "export_range_checkpoint_onnx",
    "export_range_onnx",
    "grid_subsample",
    "load_model",
    "predict_scan_regular",
    "read_range_onnx_metadata",
]
