"""Small building blocks shared by the terraseg 2D heads (all plain, ONNX-exportable ops)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNAct(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> ReLU`` (padding keeps the spatial size for odd kernels)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, dilation: int = 1, groups: int = 1,
                 act: bool = True) -> None:
        pad = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True) if act else nn.Identity(),
        )


class SeparableConvBNAct(nn.Sequential):
    """Depthwise ``k x k`` conv + BN + ReLU, then pointwise ``1 x 1`` conv + BN + ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__(
            ConvBNAct(in_ch, in_ch, kernel_size, dilation=dilation, groups=in_ch),
            ConvBNAct(in_ch, out_ch, 1),
        )


class FCNHead(nn.Module):
    """The FCN auxiliary head of mmsegmentation's UPerNet configs: ``3x3 conv-BN-ReLU, dropout, 1x1``.

    Input ``(N, in_ch, h, w)``, output ``(N, num_classes, h, w)`` logits. The class layer is
    ``classifier`` (its name matters for checkpoint surgery).
    """

    def __init__(self, in_ch: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_ch, channels, 3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling with depthwise-separable dilated branches.

    Branches: ``1x1``, one separable ``3x3`` per rate in ``rates``, and global average pooling;
    concatenated and projected to ``out_ch``. Input ``(N, in_ch, h, w)``, output ``(N, out_ch, h, w)``.
    """

    def __init__(self, in_ch: int, out_ch: int, rates: Sequence[int] = (6, 12, 18), dropout: float = 0.1) -> None:
        super().__init__()
        self.branches = nn.ModuleList([ConvBNAct(in_ch, out_ch, 1)]
                                      + [SeparableConvBNAct(in_ch, out_ch, 3, dilation=int(r)) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.ReLU(inplace=True))
        self.project = nn.Sequential(ConvBNAct(out_ch * (len(rates) + 2), out_ch, 1),
                                     nn.Dropout2d(dropout) if dropout > 0 else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [b(x) for b in self.branches]
        feats.append(self.pool(x).expand(-1, -1, x.shape[-2], x.shape[-1]))
        return self.project(torch.cat(feats, dim=1))


def resize_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Bilinearly resize ``x`` to the spatial size of ``ref`` (no-op when they already agree)."""
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)
