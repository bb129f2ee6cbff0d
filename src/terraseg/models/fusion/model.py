"""The cross-modal (camera + LiDAR) segmentation model of xMUDA, on terraseg's 2D and 3D networks.

Two independent networks label the same points (Jaritz et al., "xMUDA: Cross-Modal Unsupervised
Domain Adaptation for 3D Semantic Segmentation", CVPR 2020 / TPAMI 2022):

- **2D**: any image model of the factory with per-pixel features
  (:meth:`~terraseg.models.image.base.ImageSegmenter.forward_features`). Its features and its own
  classifier's logits are read at the pixels where the points project
  (:func:`~terraseg.models.fusion.sampling.sample_pixels`, bilinear or nearest pixel), so the
  2D main head is the image model's classifier, unchanged.
- **3D**: a point network (:class:`~terraseg.models.fusion.backbone3d.PointFeatureNet`: RandLA-Net,
  the sparse voxel U-Net) on the points in the camera's view; its main head is its own classifier.
- **Mimicry heads** (xMUDA's "dual head"): one linear layer per modality on the same features,
  trained to mimic the *other* modality's main prediction (the KL terms of
  :mod:`terraseg.models.fusion.losses`), so the main heads keep their own supervision.

Predictions: 2D (``softmax(logits_2d)``), 3D (``softmax(logits_3d)``) and 2D+3D, the argmax of the
sum of the two softmaxes (xMUDA's ensemble).

Batch layout (:meth:`CrossModalModel.forward`)::

    image        (B, 3, H, W) float   normalised network input
    uv           (M, 2) float         input-pixel coordinates (u, v) of the M points of the batch
    point_batch  (M,) int64           image of each point (points of sample 0 first, then 1 ...)
    points3d     dict                 the 3D network's batched input, same points in the same order
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from terraseg.errors import ConfigError, DataError
from terraseg.models.fusion.backbone3d import check_point_net, flat_point_features
from terraseg.models.fusion.sampling import SamplingMode, check_sampling, sample_pixels
from terraseg.models.image.base import ImageSegmenter


@dataclass
class FusionOutput:
    """Per-point outputs of a :class:`CrossModalModel` (M points of the batch, K classes).

    Attributes:
        logits_2d, logits_3d: (M, K) main-head logits of each modality.
        mimic_2d, mimic_3d: (M, K) mimicry-head logits (None for a model without mimicry heads).
        features_2d: (M, F2) image features at the points; features_3d: (M, F3) point features.
    """

    logits_2d: Tensor
    logits_3d: Tensor
    mimic_2d: Tensor | None
    mimic_3d: Tensor | None
    features_2d: Tensor
    features_3d: Tensor

    def probabilities(self) -> tuple[Tensor, Tensor, Tensor]:
        """(2D, 3D, 2D+3D) class probabilities, each (M, K); the ensemble is the mean of the two
        softmaxes (its argmax is that of their sum)."""
        p2 = torch.softmax(self.logits_2d.float(), dim=1)
        p3 = torch.softmax(self.logits_3d.float(), dim=1)
        return p2, p3, 0.5 * (p2 + p3)

    def labels(self) -> tuple[Tensor, Tensor, Tensor]:
        """(2D, 3D, 2D+3D) class ids, each (M,) int64."""
        p2, p3, pe = self.probabilities()
        return p2.argmax(1), p3.argmax(1), pe.argmax(1)


class CrossModalModel(nn.Module):
    """A 2D and a 3D network on the same points, each with a main and a mimicry head.

    Args:
        net2d: an image model with per-pixel features (every factory arch but Mask2Former).
        net3d: a point network with ``feature_dim`` / ``forward_features`` / ``classify``.
        sampling: how image features are read at the points (``bilinear`` or ``nearest``).
        mimicry: add the two mimicry heads (xMUDA's dual head); without them the KL terms act on
            the main heads directly.

    Attributes:
        num_classes: K (both networks predict the same K classes).
        spec: rebuilds the model (``arch: fusion``, the two networks' specs, sampling, mimicry).
        class_heads: the layers with one row per class (checkpoint surgery across label sets).
        ontology: the label ontology, when known.
    """

    arch = "fusion"

    def __init__(self, net2d: ImageSegmenter, net3d: nn.Module, sampling: SamplingMode = "bilinear",
                 mimicry: bool = True) -> None:
        super().__init__()
        if not isinstance(net2d, ImageSegmenter) or not net2d.supports_features:
            arch = getattr(net2d, "spec", {}).get("arch", type(net2d).__name__)
            raise ConfigError(f"2D network {arch!r} does not expose per-pixel features, so it cannot be the 2D half "
                              "of a cross-modal model (every image arch but mask2former can)")
        check_point_net(net3d)
        k2, k3 = int(net2d.num_classes), int(net3d.num_classes)
        if k2 != k3:
            raise ConfigError(f"the 2D network predicts {k2} classes and the 3D network {k3}; they must agree")
        self.net2d = net2d
        self.net3d = net3d
        self.sampling: SamplingMode = check_sampling(sampling)
        self.mimicry = bool(mimicry)
        self.num_classes = k2
        f2, f3 = int(net2d.feature_channels), int(net3d.feature_dim)
        self.mimic2d: nn.Linear | None = nn.Linear(f2, k2) if mimicry else None
        self.mimic3d: nn.Linear | None = nn.Linear(f3, k2) if mimicry else None
        self.class_heads: dict[str, int] = {f"net2d.{k}": v for k, v in net2d.class_heads.items()}
        self.class_heads.update({f"net3d.{k}": v for k, v in getattr(net3d, "class_heads", {}).items()})
        if mimicry:
            self.class_heads.update({"mimic2d": 0, "mimic3d": 0})
        self.spec: dict[str, Any] = {"arch": self.arch, "net2d": dict(net2d.spec),
                                     "net3d": dict(getattr(net3d, "spec", {})), "sampling": self.sampling,
                                     "mimicry": self.mimicry}
        self.ontology: Any = getattr(net2d, "ontology", None)
        self.load_report: Any = None

    @property
    def feature_dims(self) -> tuple[int, int]:
        """(F2, F3): widths of the 2D and 3D per-point features."""
        return int(self.net2d.feature_channels), int(self.net3d.feature_dim)

    def forward(self, batch: dict[str, Any]) -> FusionOutput:
        """Per-point outputs for a batch (see the module docstring for its keys)."""
        for key in ("image", "uv", "point_batch", "points3d"):
            if key not in batch:
                raise DataError(f"cross-modal model input: missing {key!r} (build batches with "
                                "terraseg.training.fusion_data or FusionPredictor)")
        uv: Tensor = batch["uv"]
        pb: Tensor = batch["point_batch"]
        pf = self.net2d.forward_features(batch["image"])
        feats_2d = sample_pixels(pf.features, uv, pb, pf.padded_size, self.sampling)
        logits_2d = sample_pixels(pf.logits, uv, pb, pf.padded_size, self.sampling)
        net3d: Any = self.net3d
        raw3d = net3d.forward_features(batch["points3d"])
        logits_3d = flat_point_features(net3d.classify(raw3d))
        feats_3d = flat_point_features(raw3d)
        if feats_3d.shape[0] != feats_2d.shape[0]:
            raise DataError(f"cross-modal batch: the 3D network returned {feats_3d.shape[0]} points but the batch "
                            f"pairs {feats_2d.shape[0]} points with pixels (points3d and uv must list the same "
                            "points in the same order)")
        feats_3d_f = feats_3d.float()
        return FusionOutput(
            logits_2d=logits_2d.float(), logits_3d=logits_3d.float(),
            mimic_2d=None if self.mimic2d is None else self.mimic2d(feats_2d.float()),
            mimic_3d=None if self.mimic3d is None else self.mimic3d(feats_3d_f),
            features_2d=feats_2d, features_3d=feats_3d)

    def extra_repr(self) -> str:
        return (f"net2d={self.spec['net2d'].get('arch')!r}, net3d={self.spec['net3d'].get('arch')!r}, "
                f"num_classes={self.num_classes}, sampling={self.sampling!r}, mimicry={self.mimicry}")
