"""Image normalisation shared by training, evaluation, prediction and export.

Images are ``(H, W, 3)`` uint8 RGB. Network inputs are ``(3, H, W)`` float32 (or a batch
``(N, 3, H, W)``) computed as ``(image / 255 - mean) / std`` per channel, with ImageNet
statistics by default (what the ImageNet-pretrained encoders expect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """Per-channel statistics on the 0-1 scale (RGB order)."""

    mean: tuple[float, ...] = field(default=IMAGENET_MEAN)
    std: tuple[float, ...] = field(default=IMAGENET_STD)

    @classmethod
    def from_meta(cls, meta: dict[str, Any] | None) -> Normalization:
        """The normalisation stored in a checkpoint's ``meta["preprocess"]`` (ImageNet if absent)."""
        pre = (meta or {}).get("preprocess") or {}
        return cls(tuple(map(float, pre.get("mean", IMAGENET_MEAN))), tuple(map(float, pre.get("std", IMAGENET_STD))))

    def to_meta(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    def numpy(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(3, H, W)`` float32 normalised."""
        return normalize_image(image, self.mean, self.std)

    def torch(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, H, W, 3)`` or ``(N, 3, H, W)`` uint8 tensor -> ``(N, 3, H, W)`` float32 normalised."""
        x = images
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        x = x.float().div_(255.0)
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s


def normalize_image(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(3, H, W)`` float32 ``(image / 255 - mean) / std``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
    scale = np.float32(1.0 / 255.0)
    m = np.asarray(mean, np.float32).reshape(1, 1, 3)
    s = np.asarray(std, np.float32).reshape(1, 1, 3)
    out = (image.astype(np.float32) * scale - m) / s
    return np.ascontiguousarray(out.transpose(2, 0, 1))
