"""Training utilities shared by camera and LiDAR models.

Losses (:mod:`terraseg.training.losses`) take logits ``(N, C, H, W)``, ``(N, C, P)`` or
``(P, C)`` with integer targets ``(N, H, W)``, ``(N, P)`` or ``(P,)``:

>>> import torch
>>> from terraseg.training import build_loss
>>> loss = build_loss([{"name": "ce", "weight": 1.0}, {"name": "lovasz", "weight": 0.5}])
>>> logits, target = torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
>>> round(float(loss(logits, target)), 4)  # ln 3 + 0.5 * (1 - 1/3)
1.4319
"""

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

__all__ = [
    "LOSS_NAMES",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LovaszSoftmaxLoss",
    "OhemCrossEntropyLoss",
    "SegLoss",
    "as_class_weights",
    "build_loss",
    "loss_options",
]
