"""segmentation-models-pytorch architectures (UPerNet, DeepLabV3+, SegFormer, FPN) in the terraseg convention.

The smp model's ``encoder``, ``decoder`` and ``segmentation_head`` are kept under the same names,
so state dicts saved from a plain smp model (or downloaded with ``smp.from_pretrained``) load
without renaming. An optional FCN auxiliary head (``aux_head``) reads encoder stage 3 (the
stride-16 feature map of a 4-stage encoder, as in mmsegmentation's UPerNet configs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from terraseg.models.image.base import ImageSegmenter
from terraseg.models.image.blocks import FCNHead

#: terraseg arch name -> smp class name.
SMP_ARCHS: dict[str, str] = {
    "upernet": "UPerNet",
    "deeplabv3plus": "DeepLabV3Plus",
    "segformer": "Segformer",
    "fpn": "FPN",
}

# Constructor arguments terraseg sets itself (users pass them through build_image_model instead).
_MANAGED = {"encoder_name", "encoder_weights", "in_channels", "classes", "activation", "upsampling", "aux_params",
            "kwargs"}


def smp_arch_options(arch: str) -> list[str]:
    """The extra keyword arguments the smp class of ``arch`` accepts (``decoder_channels`` ...)."""
    import inspect

    import segmentation_models_pytorch as smp

    sig = inspect.signature(getattr(smp, SMP_ARCHS[arch]).__init__)
    return sorted(p for p in sig.parameters if p not in _MANAGED and p != "self")


class SMPSegmenter(ImageSegmenter):
    """An smp encoder-decoder model plus an optional stage-3 FCN auxiliary head.

    Args:
        net: the smp model, built with ``upsampling=1`` (this class resizes to input size).
        num_classes: number of classes of ``net``'s segmentation head.
        aux: add the auxiliary FCN head on encoder stage 3.
        aux_channels: hidden channels of the auxiliary head.
    """

    def __init__(self, net: nn.Module, num_classes: int, in_channels: int = 3, aux: bool = False,
                 aux_channels: int = 256) -> None:
        super().__init__(num_classes, in_channels, has_aux=aux)
        self.encoder = net.encoder
        self.decoder = net.decoder
        self.segmentation_head = net.segmentation_head
        self.class_heads = {"segmentation_head.0": 0}
        self.feature_channels = int(self.segmentation_head[0].in_channels)
        self.aux_head: FCNHead | None = None
        if aux:
            stage3_ch = int(self.encoder.out_channels[-2])
            self.aux_head = FCNHead(stage3_ch, num_classes, channels=aux_channels)
            self.class_heads["aux_head.classifier"] = 0

    def forward_raw_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(features)

    def forward_raw(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.encoder(x)
        logits = self.segmentation_head(self.decoder(features))
        aux = self.aux_head(features[-2]) if (with_aux and self.aux_head is not None) else None
        return logits, aux


def build_smp(arch: str, encoder: str, num_classes: int, in_channels: int, encoder_weights: Any,
              aux: bool, aux_channels: int = 256, **kwargs: Any) -> SMPSegmenter:
    """Build an smp architecture wrapped in :class:`SMPSegmenter` (``encoder_weights=None``: no download)."""
    import segmentation_models_pytorch as smp

    cls = getattr(smp, SMP_ARCHS[arch])
    net = cls(encoder_name=encoder, encoder_weights=encoder_weights, in_channels=in_channels, classes=num_classes,
              upsampling=1, **kwargs)
    return SMPSegmenter(net, num_classes, in_channels=in_channels, aux=aux, aux_channels=aux_channels)
