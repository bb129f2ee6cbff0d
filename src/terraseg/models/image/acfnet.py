"""ACF-Net: Attentional Class Feature Network (Zhang et al., ICCV 2019), on an EfficientNet encoder.

The network first predicts a coarse segmentation, then refines every pixel with *class features*:

1. **Coarse segmentation** ``L = coarse_head(F)``: ``(N, K, h, w)`` logits from the decoder features
   ``F`` (``(N, C, h, w)``); ``P = softmax_K(L)`` are the per-pixel class probabilities.
2. **Class centres** (class centre block): for every class ``k`` the attention-weighted mean of the
   (reduced) features over all pixels, weighted by how much each pixel belongs to ``k``::

       centre_k = sum_i P[k, i] * G_i / (sum_i P[k, i] + eps)          (N, K, C')

   ``G = reduce(F)`` is a ``1x1`` conv-BN-ReLU to ``C'`` channels; the centres pass through a
   ``1x1`` transform. Nothing here has one parameter per class, so the module works for any ``K``.
3. **Class attention** (class feature block): every pixel gathers the centres weighted by its
   class attention ``A[:, i] = P[:, i]`` (a distribution over classes), which re-projects the
   centres to pixels::

       class_feature_i = sum_k A[k, i] * centre_k                      (N, C', h, w)

4. The class features are concatenated with ``F`` and classified into the final logits.

The coarse logits are the natural auxiliary output: the paper supervises them with the same
loss, so by default this model has an aux output (``{"out": fine, "aux": coarse}`` in train mode).

Backbone and decoder follow reference 001 (ACF-Net with an EfficientNet backbone pretrained on
ImageNet): an encoder made dilated to ``output_stride`` 16 (or 8), an ASPP context module on the
last stage, and a DeepLabV3+-style fusion with the stride-4 features so ``F`` is at stride 4.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from terraseg.models.image.base import ImageSegmenter
from terraseg.models.image.blocks import ASPP, ConvBNAct, SeparableConvBNAct, resize_to


class ACFModule(nn.Module):
    """Class centre + class attention block (steps 2-3 of the module docstring).

    Input: features ``(N, C, h, w)`` and coarse logits ``(N, K, h, w)``; output ``(N, C, h, w)``
    features: the concatenation of ``F`` and its class features, fused by a ``1x1`` conv.
    """

    def __init__(self, channels: int, mid_channels: int = 256, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.reduce = ConvBNAct(channels, mid_channels, 1)
        self.centre_transform = nn.Sequential(nn.Linear(mid_channels, mid_channels), nn.ReLU(inplace=True))
        self.fuse = ConvBNAct(channels + mid_channels, channels, 1)

    def class_centres(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Centres ``(N, K, C')`` from reduced features ``(N, C', h, w)`` and probabilities ``(N, K, h, w)``."""
        g = feats.flatten(2)                                  # (N, C', HW)
        p = probs.flatten(2)                                  # (N, K, HW)
        centres = torch.bmm(p, g.transpose(1, 2))             # (N, K, C')
        return centres / (p.sum(dim=2, keepdim=True) + self.eps)

    def forward(self, feats: torch.Tensor, coarse_logits: torch.Tensor) -> torch.Tensor:
        probs = coarse_logits.float().softmax(dim=1).to(feats.dtype)    # class attention A, (N, K, h, w)
        g = self.reduce(feats)                                          # (N, C', h, w)
        centres = self.centre_transform(self.class_centres(g, probs))   # (N, K, C')
        n, _, h, w = probs.shape
        class_feats = torch.bmm(centres.transpose(1, 2), probs.flatten(2)).view(n, -1, h, w)  # (N, C', h, w)
        return self.fuse(torch.cat([feats, class_feats], dim=1))


class ACFNet(ImageSegmenter):
    """ACF-Net segmenter: dilated encoder, ASPP, stride-4 fusion, coarse head, ACF module, classifier.

    Args:
        encoder: an smp encoder (``out_channels`` per stage, features list from ``forward``),
            already dilated to its output stride.
        num_classes: number of classes ``K``.
        channels: decoder width ``C``.
        aspp_rates: ASPP dilation rates at output stride 16 (scaled by ``16 / output_stride``).
        low_level_channels: channels the stride-4 skip is projected to.
        dropout: dropout before the classifiers.
        output_stride: the encoder's output stride (8, 16 or 32).
        aux: return the coarse logits as ``"aux"`` in train mode (they are computed either way).
    """

    def __init__(self, encoder: nn.Module, num_classes: int, in_channels: int = 3, channels: int = 256,
                 aspp_rates: Sequence[int] = (6, 12, 18), low_level_channels: int = 48, dropout: float = 0.1,
                 output_stride: int = 16, aux: bool = True) -> None:
        super().__init__(num_classes, in_channels, has_aux=aux)
        self.encoder = encoder
        enc_ch = list(encoder.out_channels)
        rates = [max(1, round(r * 16 / output_stride)) for r in aspp_rates]
        self.aspp = ASPP(enc_ch[-1], channels, rates)
        self.low_level = ConvBNAct(enc_ch[2], low_level_channels, 1)
        self.fuse = nn.Sequential(SeparableConvBNAct(channels + low_level_channels, channels, 3),
                                  SeparableConvBNAct(channels, channels, 3))
        self.coarse_head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))
        self.acf = ACFModule(channels, channels)
        self.classifier = nn.Sequential(ConvBNAct(channels, channels, 3), nn.Dropout2d(dropout),
                                        nn.Conv2d(channels, num_classes, 1))
        self.class_heads = {"coarse_head.1": 0, "classifier.2": 0}
        self.feature_channels = int(channels)

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class-feature-refined features at stride 4, coarse logits)."""
        features = self.encoder(x)
        low = self.low_level(features[2])                       # stride 4
        ctx = resize_to(self.aspp(features[-1]), low)
        feats = self.fuse(torch.cat([ctx, low], dim=1))         # (N, C, H/4, W/4)
        coarse = self.coarse_head(feats)
        return self.acf(feats, coarse), coarse

    def forward_raw_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._decode(x)[0]

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward_raw(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        refined, coarse = self._decode(x)
        return self.classifier(refined), (coarse if with_aux else None)


def build_acfnet(encoder: str, num_classes: int, in_channels: int, encoder_weights: Any, aux: bool,
                 output_stride: int = 16, channels: int = 256, aspp_rates: Sequence[int] = (6, 12, 18),
                 low_level_channels: int = 48, dropout: float = 0.1) -> ACFNet:
    """Build :class:`ACFNet` on an smp/timm encoder (``encoder_weights=None``: no download)."""
    import segmentation_models_pytorch as smp

    if output_stride not in (8, 16, 32):
        raise ValueError(f"acfnet output_stride must be 8, 16 or 32, got {output_stride}")
    enc = smp.encoders.get_encoder(encoder, in_channels=in_channels, depth=5, weights=encoder_weights,
                                   output_stride=output_stride)
    return ACFNet(enc, num_classes, in_channels=in_channels, channels=channels, aspp_rates=aspp_rates,
                  low_level_channels=low_level_channels, dropout=dropout, output_stride=output_stride, aux=aux)

