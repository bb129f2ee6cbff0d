"""Training-time augmentation of LiDAR point clouds: yaw rotation, scaling, mirroring, jitter
and random point dropout, applied to x, y, z only.

Every transform is a rigid or similarity map of the sensor-frame coordinates (x forward, y
left, z up, metres) followed by optional Gaussian noise::

    xyz' = s * F * R_z(yaw) * xyz + clip(noise, -jitter_clip, jitter_clip)

with ``R_z`` a rotation about the vertical axis, ``F = diag(+-1, +-1, 1)`` the mirroring and
``s`` an isotropic scale. z never changes sign and the ground stays horizontal, so the height
above ground, which the networks rely on, survives every augmentation. Other channels
(intensity, ring, time, ...) are left untouched; labels follow their points through the dropout.

Range-image (organised) models: rotating about z moves points across range-image columns and
mirroring reverses the column order, so an augmented scan is no longer in sensor order. Train
range models on augmented scans with a *spherical* projection
(:func:`terraseg.geometry.range_image.project_scan`, for example the ``rellis3d-os1-64`` table
for the RELLIS-3D Ouster), which re-projects every point; do not combine augmentation with the
organised layout (:class:`terraseg.models.points.predict.OrganizedLayout` /
:func:`~terraseg.geometry.range_image.from_organized`), which reads row and column from the
point's index and would pair augmented coordinates with their old pixels. Dropout also breaks the
``H x W`` point count that the organised layout needs.

>>> import numpy as np
>>> aug = PointAugment(PointAugConfig(dropout=0.1))
>>> pts = np.random.default_rng(0).normal(size=(1000, 4)).astype(np.float32)
>>> out, labels, kept = aug(pts, np.arange(1000), np.random.default_rng(1))
>>> bool((labels == kept).all()) and out.shape[1] == 4 and 900 <= len(out) <= 1000
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from terraseg.errors import ConfigError, DataError


@dataclass(frozen=True)
class PointAugConfig:
    """Settings of :class:`PointAugment` (the defaults are a common LiDAR training recipe).

    Attributes:
        rotate_z: rotate by a uniform yaw in ``[0, 2 pi)`` about the sensor's z axis.
        scale: ``(low, high)``: isotropic scale factor drawn uniformly from this range
            (``(1, 1)`` disables scaling).
        flip_x: probability of mirroring ``x -> -x``.
        flip_y: probability of mirroring ``y -> -y``.
        jitter_sigma: standard deviation in metres of the Gaussian noise added to x, y, z
            (0 disables jitter).
        jitter_clip: the noise is clipped to ``[-jitter_clip, jitter_clip]`` metres.
        dropout: largest fraction of points dropped; each call drops ``floor(f * N)`` points with
            ``f`` uniform in ``[0, dropout]`` (0 disables dropout).
    """

    rotate_z: bool = True
    scale: tuple[float, float] = (0.95, 1.05)
    flip_x: float = 0.5
    flip_y: float = 0.5
    jitter_sigma: float = 0.01
    jitter_clip: float = 0.05
    dropout: float = 0.0

    def __post_init__(self) -> None:
        where = "point augmentation"
        if not isinstance(self.rotate_z, bool | np.bool_):
            raise ConfigError(f"{where}: rotate_z must be true or false, got {self.rotate_z!r}")
        object.__setattr__(self, "rotate_z", bool(self.rotate_z))
        try:
            lo, hi = (float(v) for v in self.scale)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: scale must be two numbers (low, high), got {self.scale!r}") from None
        if not (0 < lo <= hi) or not math.isfinite(hi):
            raise ConfigError(f"{where}: scale must satisfy 0 < low <= high, got ({lo}, {hi})")
        object.__setattr__(self, "scale", (lo, hi))
        for name in ("flip_x", "flip_y"):
            v = _number(getattr(self, name), name, where)
            if not 0 <= v <= 1:
                raise ConfigError(f"{where}: {name} is a probability in [0, 1], got {v}")
            object.__setattr__(self, name, v)
        for name in ("jitter_sigma", "jitter_clip"):
            v = _number(getattr(self, name), name, where)
            if not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"{where}: {name} must be a finite number >= 0 (metres), got {v}")
            object.__setattr__(self, name, v)
        d = _number(self.dropout, "dropout", where)
        if not 0 <= d < 1:
            raise ConfigError(f"{where}: dropout is a fraction in [0, 1), got {d}")
        object.__setattr__(self, "dropout", d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> PointAugConfig:
        """Build from a mapping (a YAML config section); missing keys keep their defaults.

        Raises:
            ConfigError: naming an unknown key or a bad value.
        """
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(f"point augmentation: expected a mapping of settings, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ConfigError(f"point augmentation: unknown key(s) {', '.join(map(repr, unknown))} "
                              f"(known: {', '.join(known)})")
        values = dict(d)
        if "scale" in values:
            s = values["scale"]
            if isinstance(s, int | float) and not isinstance(s, bool):
                raise ConfigError(f"point augmentation: scale must be a pair (low, high), got {s!r}")
            if isinstance(s, str) or not hasattr(s, "__len__") or len(s) != 2:
                raise ConfigError(f"point augmentation: scale must be a pair (low, high), got {s!r}")
            values["scale"] = tuple(s)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict; ``PointAugConfig.from_dict(cfg.to_dict()) == cfg``."""
        return {"rotate_z": self.rotate_z, "scale": list(self.scale), "flip_x": self.flip_x, "flip_y": self.flip_y,
                "jitter_sigma": self.jitter_sigma, "jitter_clip": self.jitter_clip, "dropout": self.dropout}


def _number(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


class PointAugment:
    """Random augmentation of one point cloud (see the module docstring).

    The random draws come from the generator passed to each call, in a fixed order (yaw,
    scale, flips, dropout fraction, dropped points, noise), so a seeded generator gives the same
    result every time.
    """

    def __init__(self, cfg: PointAugConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else PointAugConfig()

    def __repr__(self) -> str:
        return f"PointAugment({self.cfg!r})"

    def matrix(self, rng: np.random.Generator) -> np.ndarray:
        """Draw the (3, 3) float64 linear part ``s * F * R_z`` (maps column vectors of xyz)."""
        cfg = self.cfg
        yaw = rng.uniform(0.0, 2.0 * np.pi) if cfg.rotate_z else 0.0
        s = rng.uniform(*cfg.scale) if cfg.scale[0] < cfg.scale[1] else cfg.scale[0]
        fx = -1.0 if cfg.flip_x > 0 and rng.random() < cfg.flip_x else 1.0
        fy = -1.0 if cfg.flip_y > 0 and rng.random() < cfg.flip_y else 1.0
        c, sn = np.cos(yaw), np.sin(yaw)
        rot = np.array([[c, -sn, 0.0], [sn, c, 0.0], [0.0, 0.0, 1.0]])
        return s * np.diag([fx, fy, 1.0]) @ rot

    def __call__(self, points: np.ndarray, labels: np.ndarray | None, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Augment one cloud.

        Args:
            points: (N, C>=3) float points, x, y, z in metres first; not modified.
            labels: (N,) or (N, ...) per-point labels (any dtype), or None; not modified.
            rng: the random generator (``numpy.random.default_rng(seed)``).

        Returns:
            ``(points', labels', kept)``: (M, C) float32 augmented points, the labels of the kept
            points (None when ``labels`` is None) and (M,) int64 increasing indices of the kept
            points into the input (``M = N`` without dropout).

        Raises:
            DataError: on a wrong shape or dtype, or labels that do not match the points.
        """
        arr = np.asarray(points)
        if arr.ndim != 2 or arr.shape[1] < 3 or arr.dtype.kind not in "fiu":
            raise DataError(f"point augmentation: expected (N, C>=3) numeric points, got shape {arr.shape} "
                            f"dtype {arr.dtype}")
        n = len(arr)
        lab = None if labels is None else np.asarray(labels)
        if lab is not None and (lab.ndim == 0 or len(lab) != n):
            raise DataError(f"point augmentation: {lab.size if lab.ndim == 0 else len(lab)} labels for {n} points")
        m = self.matrix(rng)
        kept = self._kept(n, rng)
        out = arr[kept].astype(np.float32)  # fancy indexing copies: the input is never modified
        if n:
            xyz = out[:, :3].astype(np.float64) @ m.T
            cfg = self.cfg
            if cfg.jitter_sigma > 0:
                noise = rng.normal(0.0, cfg.jitter_sigma, size=xyz.shape)
                xyz += np.clip(noise, -cfg.jitter_clip, cfg.jitter_clip)
            out[:, :3] = xyz
        return out, (None if lab is None else lab[kept]), kept

    def _kept(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(M,) int64 increasing indices of the points that survive dropout."""
        if self.cfg.dropout <= 0 or n == 0:
            return np.arange(n, dtype=np.int64)
        frac = rng.uniform(0.0, self.cfg.dropout)
        drop = min(int(np.floor(frac * n)), n - 1)  # always keep at least one point
        if drop == 0:
            return np.arange(n, dtype=np.int64)
        return np.sort(rng.choice(n, size=n - drop, replace=False)).astype(np.int64)
