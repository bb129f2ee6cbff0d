"""Segmentation models and checkpoint surgery.

* :mod:`terraseg.models.image`: 2D (camera) models, :func:`build_image_model`.
* :mod:`terraseg.models.points`: 3D (LiDAR) models, :func:`~terraseg.models.points.build_point_model`.
* :mod:`terraseg.models.surgery`: loading checkpoints across label sets (any ``nn.Module``; a
  model lists its classifier layers in a ``class_heads`` attribute so rows can be remapped even
  when both label sets have the same number of classes).

Importing this package imports torch but not segmentation-models-pytorch, timm or
transformers; those load when a model is built.
"""

from terraseg.models.image import (
    ImageSegmenter,
    build_image_model,
    describe_image_archs,
    list_image_archs,
    list_image_encoders,
    load_image_model,
    unpack_outputs,
)
from terraseg.models.ops import class_ids
from terraseg.models.points import build_point_model, predict_scan
from terraseg.models.surgery import (
    Checkpoint,
    TransferReport,
    load_weights,
    read_checkpoint,
    save_checkpoint,
)

__all__ = [
    "Checkpoint",
    "ImageSegmenter",
    "TransferReport",
    "build_image_model",
    "build_point_model",
    "class_ids",
    "describe_image_archs",
    "list_image_archs",
    "list_image_encoders",
    "load_image_model",
    "load_weights",
    "predict_scan",
    "read_checkpoint",
    "save_checkpoint",
    "unpack_outputs",
]
