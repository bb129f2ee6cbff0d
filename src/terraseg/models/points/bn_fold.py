"""Folding an eval-mode batch norm into the layer before it (inference speed-ups of the point
networks: RandLA-Net's shared MLPs, the voxel U-Net's sparse convolutions)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def batch_norm_affine(bn: nn.BatchNorm1d, bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` per output channel with ``bn(y + bias) == y * scale + shift`` in eval
    mode (running statistics; ``bias`` is the preceding layer's bias, None when it has none)."""
    assert bn.running_var is not None and bn.running_mean is not None
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift
