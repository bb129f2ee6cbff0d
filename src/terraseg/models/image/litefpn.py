"""LiteFPN: a small real-time network for on-robot inference (CPU / ONNX Runtime).

Design (budget: ~15 FPS at 640x480 on 2 CPU cores through ONNX Runtime):

* **Encoder**: a light ImageNet encoder, by default timm's MobileNetV3-Large
  (``tu-mobilenetv3_large_100``; ``tu-mobilenetv3_large_075``, ``tu-tf_efficientnet_lite0`` or
  ``resnet18`` are drop-in alternatives). Only the stride-8, 16 and 32 features are used.
* **Context** (LR-ASPP, from "Searching for MobileNetV3"): on the stride-32 features, a
  ``1x1`` conv-BN-ReLU gated by a global-pooling sigmoid attention, so every pixel sees the
  whole image at the cost of one pooled vector.
* **Decoder**: a two-step top-down FPN: upsample, add a ``1x1`` lateral projection of the
  stride-16 (then stride-8) features, refine with a depthwise-separable ``3x3`` conv.
* **Classifier**: one ``1x1`` conv at stride 8; the base class upsamples the logits bilinearly
  to input resolution (runtimes may call ``forward_raw`` and argmax at stride 8 instead).
  ``output_stride=4`` adds a third FPN step on the stride-4 features, for small images where
  a stride-8 grid is coarser than thin objects (a 240 x 320 frame gives 30 x 40 logits at
  stride 8): poles, fence rails, trunks and distant people then get their own logits.

Only Conv/BN/ReLU/Sigmoid/Resize/Add/GlobalAveragePool: everything exports to ONNX opset 17
and fuses well in ONNX Runtime. An optional FCN aux head reads encoder stage 3 (stride 16).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from terraseg.errors import ConfigError
from terraseg.models.image.base import ImageSegmenter
from terraseg.models.image.blocks import ConvBNAct, FCNHead, SeparableConvBNAct, resize_to


class LRASPPContext(nn.Module):
    """``relu(bn(conv1x1(x))) * sigmoid(conv1x1(avgpool(x)))``: ``(N, in_ch, h, w) -> (N, out_ch, h, w)``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.proj = ConvBNAct(in_ch, out_ch, 1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) * self.gate(x)


class LiteFPN(ImageSegmenter):
    """Light encoder + LR-ASPP context + FPN decoder; logits at stride 8 (or 4).

    Args:
        encoder: an smp encoder with at least 5 stages (features at strides 8, 16, 32 used, and 4
            with ``output_stride=4``).
        num_classes: number of classes.
        channels: decoder width (96 keeps the decoder under ~10 % of the encoder's cost).
        aux: add an FCN auxiliary head on the stride-16 features (train mode only).
        output_stride: 8 (two FPN steps, the real-time default) or 4 (a third step on the
            encoder's stride-4 features; about 1.3x the decoder cost at stride 8 x 4 = 4x the cells).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, in_channels: int = 3, channels: int = 96,
                 aux: bool = False, aux_channels: int = 128, dropout: float = 0.1, output_stride: int = 8) -> None:
        super().__init__(num_classes, in_channels, has_aux=aux)
        if output_stride not in (4, 8):
            raise ConfigError(f"litefpn output_stride must be 4 or 8 (got {output_stride})")
        self.encoder = encoder
        self.output_stride = output_stride
        self.feature_channels = int(channels)
        c4, c8, c16, c32 = (int(c) for c in list(encoder.out_channels)[-4:])
        self.context = LRASPPContext(c32, channels)
        self.lateral16 = ConvBNAct(c16, channels, 1, act=False)
        self.lateral8 = ConvBNAct(c8, channels, 1, act=False)
        self.refine16 = SeparableConvBNAct(channels, channels, 3)
        self.refine8 = SeparableConvBNAct(channels, channels, 3)
        self.lateral4: nn.Module | None = None
        self.refine4: nn.Module | None = None
        if output_stride == 4:
            self.lateral4 = ConvBNAct(c4, channels, 1, act=False)
            self.refine4 = SeparableConvBNAct(channels, channels, 3)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
                                        nn.Conv2d(channels, num_classes, 1))
        self.class_heads = {"classifier.1": 0}
        self.aux_head: FCNHead | None = None
        if aux:
            self.aux_head = FCNHead(c16, num_classes, channels=aux_channels)
            self.class_heads["aux_head.classifier"] = 0

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder features at the output stride, encoder stride-16 features for the aux head)."""
        feats = self.encoder(x)
        f8, f16, f32 = feats[-3], feats[-2], feats[-1]
        y = self.context(f32)
        y = self.refine16(resize_to(y, f16) + self.lateral16(f16))
        y = self.refine8(resize_to(y, f8) + self.lateral8(f8))
        if self.lateral4 is not None and self.refine4 is not None:
            f4 = feats[-4]
            y = self.refine4(resize_to(y, f4) + self.lateral4(f4))
        return y, f16

    def forward_raw_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._decode(x)[0]

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward_raw(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, f16 = self._decode(x)
        logits = self.classifier(y)
        aux = self.aux_head(f16) if (with_aux and self.aux_head is not None) else None
        return logits, aux


def build_litefpn(encoder: str, num_classes: int, in_channels: int, encoder_weights: Any, aux: bool,
                  channels: int = 96, aux_channels: int = 128, dropout: float = 0.1, output_stride: int = 8) -> LiteFPN:
    """Build :class:`LiteFPN` on an smp/timm encoder (``encoder_weights=None``: no download)."""
    import segmentation_models_pytorch as smp

    enc = smp.encoders.get_encoder(encoder, in_channels=in_channels, depth=5, weights=encoder_weights)
    return LiteFPN(enc, num_classes, in_channels=in_channels, channels=channels, aux=aux,
                   aux_channels=aux_channels, dropout=dropout, output_stride=output_stride)
