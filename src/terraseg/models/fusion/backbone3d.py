"""The 3D half of a cross-modal model: what a point network must offer, and how points become its input.

Any LiDAR network that exposes the three members of :class:`PointFeatureNet` plugs into
:class:`~terraseg.models.fusion.model.CrossModalModel`:

- ``feature_dim``: width ``F`` of its per-point features;
- ``forward_features(inputs)``: the features before its classifier, ``(B, N, F)`` (one row per
  input point of each of ``B`` equal-size clouds, RandLA-Net) or ``(N_total, F)`` (the points of
  all clouds of the batch concatenated in cloud order, the sparse voxel U-Net);
- ``classify(features)``: its own classifier (the *main* 3D head), features -> logits.

Building the inputs is architecture-specific (neighbour hierarchy, voxelisation), so
:class:`PointInputSpec` does it from the network's config: :meth:`PointInputSpec.build` turns the
in-view points of one frame into one sample, :meth:`PointInputSpec.collate` batches samples. The
rows of ``forward_features`` then follow the points of the samples in order, which is what the
cross-modal model pairs with the image pixels.

======================  ===================================================  ====================
arch                    inputs                                               batches
======================  ===================================================  ====================
``randlanet``           :func:`~terraseg.models.points.randla_data.randla_inputs`  equal point counts
``voxelunet``           ``voxelize_scan`` (:mod:`terraseg.models.points.voxelize`)   any point counts
======================  ===================================================  ====================
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import Tensor, nn

from terraseg.errors import ConfigError, DataError

#: 3D architectures a cross-modal model accepts.
FUSION_POINT_ARCHS: tuple[str, ...] = ("randlanet", "voxelunet")


@runtime_checkable
class PointFeatureNet(Protocol):
    """What a LiDAR network offers to a cross-modal model (see the module docstring)."""

    num_classes: int
    in_channels: int

    @property
    def feature_dim(self) -> int: ...

    def forward_features(self, inputs: dict[str, Any]) -> Tensor: ...

    def classify(self, features: Tensor) -> Tensor: ...


def check_point_net(net: nn.Module) -> None:
    """Raise ConfigError unless ``net`` offers ``feature_dim``, ``forward_features`` and ``classify``."""
    missing = [m for m in ("feature_dim", "forward_features", "classify") if not hasattr(net, m)]
    if missing:
        arch = getattr(net, "arch", type(net).__name__)
        raise ConfigError(f"3D network {arch!r} cannot be the 3D half of a cross-modal model: it lacks "
                          f"{', '.join(missing)} (supported: {', '.join(FUSION_POINT_ARCHS)})")


@dataclass(frozen=True)
class PointInputSpec:
    """How the in-view points of a frame become the 3D network's input (see the module docstring).

    Attributes:
        arch: ``randlanet`` or ``voxelunet``.
        in_channels: point columns the network reads (x, y, z first; 4 adds intensity).
        k, ratios: RandLA-Net neighbours per point and sub-sampling ratios.
        voxel_size, centre_offsets: voxel U-Net voxel edge (metres) and offset features.
    """

    arch: str
    in_channels: int
    k: int = 16
    ratios: tuple[int, ...] = (4, 4, 4, 4)
    voxel_size: float = 0.05
    centre_offsets: bool = True

    @classmethod
    def from_model(cls, net: nn.Module) -> PointInputSpec:
        """The spec of a built point network (its ``arch`` and ``config``)."""
        arch = str(getattr(net, "arch", ""))
        if arch not in FUSION_POINT_ARCHS:
            raise ConfigError(f"3D network {arch or type(net).__name__!r} is not supported in a cross-modal model "
                              f"(supported: {', '.join(FUSION_POINT_ARCHS)})")
        cfg = getattr(net, "config", None)
        return cls(arch=arch, in_channels=int(net.in_channels),
                   k=int(getattr(cfg, "k", 16)), ratios=tuple(int(r) for r in getattr(cfg, "ratios", (4, 4, 4, 4))),
                   voxel_size=float(getattr(cfg, "voxel_size", 0.05)),
                   centre_offsets=bool(getattr(cfg, "centre_offsets", True)))

    @property
    def equal_sizes(self) -> bool:
        """True when the clouds of one batch must have the same number of points (RandLA-Net)."""
        return self.arch == "randlanet"

    @property
    def min_points(self) -> int:
        """Fewest points one sample may have (RandLA-Net: the product of its sub-sampling ratios)."""
        return int(np.prod(self.ratios)) if self.arch == "randlanet" else 1

    def build(self, points: np.ndarray, rng: np.random.Generator | int = 0, source: str = "points") -> dict[str, Any]:
        """One sample from ``points`` (N, C >= in_channels) float32 (metres, LiDAR frame)."""
        pts = np.ascontiguousarray(points, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] < self.in_channels:
            raise DataError(f"{source}: the 3D network reads {self.in_channels} point columns, the points have "
                            f"shape {pts.shape}")
        if self.arch == "randlanet":
            from terraseg.models.points.randla_data import randla_inputs

            return randla_inputs(pts[:, :3], pts[:, :self.in_channels], k=self.k, ratios=self.ratios, seed=rng,
                                 source=source)
        vox = _voxelize_module()
        return dict(vox.voxelize_scan(pts, self.voxel_size, self.in_channels, self.centre_offsets, source=source))

    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Batch samples of :meth:`build` (RandLA-Net: equal point counts)."""
        if self.arch == "randlanet":
            from terraseg.models.points.randla_data import collate_randla

            sizes = sorted({int(s["features"].shape[0]) for s in samples})
            if len(sizes) > 1:
                raise DataError(f"RandLA-Net batches need the same number of points per sample, got {sizes}; set "
                                "data.max_points (training) and data.val_batch_size: 1")
            return collate_randla(samples)
        return dict(_voxelize_module().collate_voxels(samples))

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "in_channels": self.in_channels, "k": self.k, "ratios": list(self.ratios),
                "voxel_size": self.voxel_size, "centre_offsets": self.centre_offsets}


def _voxelize_module() -> Any:
    try:
        return importlib.import_module("terraseg.models.points.voxelize")
    except ImportError:  # pragma: no cover - depends on the sparse voxel network being present
        raise ConfigError("the voxel U-Net inputs need terraseg.models.points.voxelize (the sparse voxel network), "
                          "which this installation lacks") from None


def flat_point_features(features: Tensor) -> Tensor:
    """``(B, N, F)`` or ``(N_total, F)`` -> ``(B * N or N_total, F)`` in cloud order."""
    if features.dim() == 3:
        return features.reshape(-1, features.shape[-1])
    if features.dim() != 2:
        raise DataError(f"3D features must be (B, N, F) or (N, F), got shape {tuple(features.shape)}")
    return features
