"""Training shared by camera and LiDAR models: recipes, the Lightning engine, losses, augmentation.

>>> from terraseg.training import load_config, train          # doctest: +SKIP
>>> result = train(load_config("configs/sim_litefpn.yaml", ["trainer.max_epochs=2"]))  # doctest: +SKIP

Losses (:mod:`terraseg.training.losses`) take logits ``(N, C, H, W)``, ``(N, C, P)`` or
``(P, C)`` with integer targets ``(N, H, W)``, ``(N, P)`` or ``(P,)``:

>>> import torch
>>> from terraseg.training import build_loss
>>> loss = build_loss([{"name": "ce", "weight": 1.0}, {"name": "lovasz", "weight": 0.5}])
>>> logits, target = torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
>>> round(float(loss(logits, target)), 4)  # ln 3 + 0.5 * (1 - 1/3)
1.4319

Importing this package does not import Lightning; :func:`train` does.
"""

from typing import TYPE_CHECKING, Any

from terraseg.training.augment import ImageAugConfig, ImageTransform, build_image_transform
from terraseg.training.config import TrainConfig, apply_override, load_config
from terraseg.training.copypaste import CopyPaste, Instance, InstanceBank, Paste, copy_paste_offline
from terraseg.training.losses import (
    LOSS_NAMES,
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    SegLoss,
    as_class_weights,
    build_loss,
    loss_options,
)
from terraseg.training.point_augment import PointAugConfig, PointAugment
from terraseg.training.sampling import RepeatFactorSampler, class_presence, repeat_factors

if TYPE_CHECKING:
    from terraseg.training.engine import TrainResult


def train(config: TrainConfig, **kwargs: Any) -> "TrainResult":
    """Train from a recipe (see :func:`terraseg.training.engine.train`)."""
    from terraseg.training.engine import train as _train

    return _train(config, **kwargs)


__all__ = [
    "LOSS_NAMES",
    "CombinedLoss",
    "CopyPaste",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "ImageAugConfig",
    "ImageTransform",
    "Instance",
    "InstanceBank",
    "LovaszSoftmaxLoss",
    "OhemCrossEntropyLoss",
    "Paste",
    "PointAugConfig",
    "PointAugment",
    "RepeatFactorSampler",
    "SegLoss",
    "TrainConfig",
    "apply_override",
    "as_class_weights",
    "build_image_transform",
    "build_loss",
    "class_presence",
    "copy_paste_offline",
    "load_config",
    "loss_options",
    "repeat_factors",
    "train",
]
