"""Synthetic data shared by the benchmarks (used when ../shared/data is absent)."""

from __future__ import annotations

import numpy as np


def organized_scan(seed: int = 0, intensity_max: float = 1.0) -> np.ndarray:
    """A synthetic organised 64 x 2048 scan, (131072, 4) float32 x, y, z, intensity, stored column by
    column like the RELLIS-3D Ouster scans, with ~40 % no-return zero points."""
    rng = np.random.default_rng(seed)
    el = np.radians(np.linspace(17.0, -16.4, 64))[:, None]
    yaw = np.radians(-np.arange(2048) * 360.0 / 2048)[None, :]
    r = np.where(el < 0, np.minimum(1.5 / np.maximum(np.sin(-el), 1e-3), 60.0), rng.uniform(3, 60, (64, 2048)))
    r = r * rng.uniform(0.95, 1.05, (64, 2048))
    pts = np.stack([r * np.cos(el) * np.cos(yaw), r * np.cos(el) * np.sin(yaw), r * np.sin(el) + 0 * yaw,
                    rng.uniform(0, intensity_max, (64, 2048))], axis=-1)
    pts[rng.random((64, 2048)) < 0.4] = 0.0
    return pts.transpose(1, 0, 2).reshape(-1, 4).astype(np.float32)
