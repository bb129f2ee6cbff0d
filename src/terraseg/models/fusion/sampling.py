"""Reading per-pixel feature maps at the pixels where LiDAR points project (2D -> 3D lifting).

An image network's features live on a grid of stride ``s`` over its zero-padded input
(:class:`~terraseg.models.image.base.PixelFeatures`): feature cell ``(i, j)`` sits at input pixel
``((j + 0.5) * Wp / w - 0.5, (i + 0.5) * Hp / h - 0.5)``, exactly where the model's own bilinear
upsampling (``F.interpolate(..., align_corners=False)``) puts it. A point at input pixel
coordinates ``(u, v)`` (u right, v down, integer = pixel centre) therefore reads the map at
feature coordinates::

    fx = (u + 0.5) * w / Wp - 0.5        fy = (v + 0.5) * h / Hp - 0.5

Two modes:

- ``bilinear``: bilinear interpolation at the point's sub-pixel position ``(u, v)``.
- ``nearest``: the value of the point's pixel ``(col, row) = floor((u, v) + 0.5)``, i.e. exactly
  what the model's upsampled full-resolution map holds at that pixel (as xMUDA reads its
  full-resolution U-Net features at integer ``img_indices``).

Outside the map the border value is used (the clamping ``F.interpolate`` does). Both are gathers
with weights, so gradients flow to the features.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from terraseg.errors import ConfigError, DataError

SamplingMode = Literal["bilinear", "nearest"]
SAMPLING_MODES: tuple[str, ...] = ("bilinear", "nearest")


def check_sampling(mode: str) -> SamplingMode:
    """``mode`` if it is a known sampling mode, else a ConfigError listing them."""
    if mode not in SAMPLING_MODES:
        raise ConfigError(f"unknown point-to-pixel sampling {mode!r} (known: {', '.join(SAMPLING_MODES)})")
    return mode  # type: ignore[return-value]


def sample_pixels(maps: Tensor, uv: Tensor, batch_index: Tensor, padded_size: tuple[int, int],
                  mode: SamplingMode = "bilinear") -> Tensor:
    """Values of ``maps`` at input-pixel positions.

    Args:
        maps: ``(B, C, h, w)`` feature (or logit) maps at stride ``Hp / h`` of the padded input.
        uv: ``(M, 2)`` float input pixel coordinates ``(u, v)`` of M points (any batch order).
        batch_index: ``(M,)`` int64 image of each point in the batch.
        padded_size: ``(Hp, Wp)`` of the padded network input.
        mode: ``bilinear`` or ``nearest`` (see the module docstring).

    Returns:
        ``(M, C)`` values in the dtype of ``maps``.
    """
    check_sampling(mode)
    if maps.dim() != 4:
        raise DataError(f"sample_pixels: maps must be (B, C, h, w), got shape {tuple(maps.shape)}")
    if uv.dim() != 2 or uv.shape[1] != 2 or batch_index.shape != uv.shape[:1]:
        raise DataError(f"sample_pixels: uv must be (M, 2) with a (M,) batch index, got {tuple(uv.shape)} and "
                        f"{tuple(batch_index.shape)}")
    b, c, h, w = maps.shape
    if len(uv) and (int(batch_index.min()) < 0 or int(batch_index.max()) >= b):
        raise DataError(f"sample_pixels: batch index out of range for {b} images")
    hp, wp = padded_size
    p = uv.to(torch.float64)
    if mode == "nearest":
        p = torch.floor(p + 0.5)
    fx = (p[:, 0] + 0.5) * (w / wp) - 0.5
    fy = (p[:, 1] + 0.5) * (h / hp) - 0.5
    x0f, y0f = torch.floor(fx), torch.floor(fy)
    ax = (fx - x0f).to(maps.dtype)
    ay = (fy - y0f).to(maps.dtype)
    x0 = x0f.to(torch.int64)
    y0 = y0f.to(torch.int64)
    x1 = (x0 + 1).clamp_(0, w - 1)
    y1 = (y0 + 1).clamp_(0, h - 1)
    x0 = x0.clamp_(0, w - 1)
    y0 = y0.clamp_(0, h - 1)
    flat = maps.permute(0, 2, 3, 1).reshape(b * h * w, c)
    base = batch_index.to(torch.int64) * (h * w)

    def at(yy: Tensor, xx: Tensor) -> Tensor:
        return flat.index_select(0, base + yy * w + xx)

    top = at(y0, x0) * (1 - ax)[:, None] + at(y0, x1) * ax[:, None]
    bottom = at(y1, x0) * (1 - ax)[:, None] + at(y1, x1) * ax[:, None]
    return top * (1 - ay)[:, None] + bottom * ay[:, None]
