"""Cross-modal (camera + LiDAR) segmentation: xMUDA's 2D and 3D networks with mimicry heads.

- :class:`CrossModalModel`: an image model of the factory whose per-pixel features are read at
  the pixels where the scan's points project, and a point network on the points in the camera's
  view; a main and a mimicry head per modality; 2D, 3D and 2D+3D predictions.
- :func:`build_fusion_model` / :func:`fusion_model_from_spec`: build one from network names or
  rebuild it from a checkpoint.
- :class:`CrossModalLoss`, :func:`cross_modal_kl`, :func:`entropy_loss`: xMUDA's losses.
- :func:`frame_view`: the in-view points of a paired frame (projection with distortion) with
  one clear error per bad frame; :func:`sample_pixels`: reading feature maps at points.
- :class:`PointFeatureNet` / :class:`PointInputSpec`: what a 3D network must offer, and how
  points become its input (RandLA-Net, the sparse voxel U-Net).
- :class:`FusionPredictor`: labels the in-view points of frames from a checkpoint.

>>> import numpy as np, torch
>>> from terraseg.models.fusion import build_fusion_model
>>> model = build_fusion_model({"arch": "fpn", "encoder": "resnet18"}, {"arch": "randlanet", "preset": "small"},
...                            num_classes=4).eval()
>>> spec = model_input_spec(model)
>>> pts = np.random.default_rng(0).uniform(-5, 5, (512, 3)).astype(np.float32)
>>> batch = {"image": torch.zeros(1, 3, 64, 96), "uv": torch.rand(512, 2) * 60,
...          "point_batch": torch.zeros(512, dtype=torch.int64), "points3d": spec.collate([spec.build(pts)])}
>>> out = model(batch)
>>> out.logits_2d.shape, out.logits_3d.shape, out.mimic_2d.shape
(torch.Size([512, 4]), torch.Size([512, 4]), torch.Size([512, 4]))
"""

from terraseg.models.fusion.backbone3d import (
    FUSION_POINT_ARCHS,
    PointFeatureNet,
    PointInputSpec,
    check_point_net,
    flat_point_features,
)
from terraseg.models.fusion.build import build_fusion_model, build_point_net, fusion_model_from_spec
from terraseg.models.fusion.losses import CrossModalLoss, LossTerms, cross_modal_kl, entropy_loss
from terraseg.models.fusion.model import CrossModalModel, FusionOutput
from terraseg.models.fusion.predict import MODALITIES, FusionPrediction, FusionPredictor
from terraseg.models.fusion.sampling import SAMPLING_MODES, SamplingMode, check_sampling, sample_pixels
from terraseg.models.fusion.view import FrameView, frame_calibration, frame_view, frame_where


def model_input_spec(model: CrossModalModel) -> PointInputSpec:
    """How points become the input of ``model``'s 3D network."""
    return PointInputSpec.from_model(model.net3d)


__all__ = [
    "FUSION_POINT_ARCHS",
    "MODALITIES",
    "SAMPLING_MODES",
    "CrossModalLoss",
    "CrossModalModel",
    "FrameView",
    "FusionOutput",
    "FusionPrediction",
    "FusionPredictor",
    "LossTerms",
    "PointFeatureNet",
    "PointInputSpec",
    "SamplingMode",
    "build_fusion_model",
    "build_point_net",
    "check_point_net",
    "check_sampling",
    "cross_modal_kl",
    "entropy_loss",
    "flat_point_features",
    "frame_calibration",
    "frame_view",
    "frame_where",
    "fusion_model_from_spec",
    "model_input_spec",
    "sample_pixels",
]
