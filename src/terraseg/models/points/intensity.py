"""Intensity of LiDAR points: the scale a model expects, and a check that a scan matches it.

Sensors and datasets store intensity on very different scales: SemanticKITTI remission is 0-1
(99th percentile 0.61 on 00/000000), the RELLIS-3D Ouster ``.bin`` files about 0-0.012, a raw
Velodyne driver 0-255 and Ouster reflectivity up to 65535. A network trained on one scale and
fed another sees inputs hundreds of standard deviations off and labels most points with one
class, with no error. Two tools:

- :class:`IntensitySpec` ``max``: raw intensities are divided by it before the network (a
  recipe's ``data.intensity_max``, e.g. 255 for 8-bit intensities). Training applies it to every
  scan, the checkpoint records it, and every predictor applies it again automatically
  (:func:`normalize_intensity`).
- :class:`IntensityStats`: where the (scaled) training intensities lay, recorded in the
  checkpoint at train time (:func:`intensity_stats` over a sample of training scans). At
  prediction :func:`intensity_mismatch` compares a scan with it and returns one warning line
  when its 99th percentile is more than :data:`MISMATCH_FACTOR` times off (or all zero). For
  older checkpoints of range networks the expected range comes from the input normalisation
  (mean + 3 std of the intensity channel, :meth:`IntensityStats.from_normalization`).

Column 3 of an (N, C) point array is the intensity (:mod:`terraseg.frame` convention).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from terraseg.errors import ConfigError, DataError

INTENSITY_COLUMN = 3
MISMATCH_FACTOR = 4.0
"""A scan whose 99th-percentile intensity is more than this many times above or below the
training data's gets a warning."""
MIN_POINTS = 100
"""Scans with fewer points with a return are not checked (their percentiles say little)."""
_SAMPLE = 8192  # points per scan used for the percentiles (a strided subset)
_FULL_SCALES = (1.0, 100.0, 255.0, 1000.0, 4095.0, 65535.0)  # common full-scale values of sensor drivers


@dataclass(frozen=True)
class IntensityStats:
    """Where a model's training intensities lay (after scaling), for the prediction-time check.

    Attributes:
        low, high: 1st and 99th percentiles.
        max: largest value seen.
        mean: mean value.
        scans: scans they were computed from (0 when derived from a normalisation).
        source: ``training`` (measured at train time) or ``normalization`` (mean + 3 std of a
            range network's intensity channel, for checkpoints without measured statistics).
    """

    low: float
    high: float
    max: float
    mean: float
    scans: int = 0
    source: str = "training"

    def to_meta(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "max": self.max, "mean": self.mean, "scans": self.scans,
                "source": self.source}

    @classmethod
    def from_meta(cls, data: Mapping[str, Any], where: str) -> IntensityStats:
        try:
            return cls(float(data["low"]), float(data["high"]), float(data["max"]), float(data["mean"]),
                       int(data.get("scans", 0)), str(data.get("source", "training")))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: unreadable intensity statistics in the metadata ({exc!r})") from None

    @classmethod
    def from_normalization(cls, mean: float, std: float) -> IntensityStats | None:
        """The range a range network's input standardisation implies (mean +- 3 std, at least 0);
        None for the identity normalisation (mean 0, std 1), which says nothing."""
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0) or (mean == 0.0 and std == 1.0):
            return None
        return cls(max(0.0, mean - 3 * std), mean + 3 * std, mean + 3 * std, mean, 0, "normalization")

    def describe(self) -> str:
        what = (f"trained on intensities {self.low:.3g}-{self.high:.3g} (1st-99th percentile, max {self.max:.3g})"
                if self.source == "training" else
                f"normalised for intensities up to about {self.high:.3g} (mean + 3 std of its input statistics)")
        return what


@dataclass(frozen=True)
class IntensitySpec:
    """How a model's intensity input is prepared and checked.

    Attributes:
        max: raw intensities are divided by this before the network (None: used as they are).
        stats: the training distribution after that division (None: unknown, no check).
    """

    max: float | None = None
    stats: IntensityStats | None = None

    def __post_init__(self) -> None:
        if self.max is not None:
            m = float(self.max)
            if not (math.isfinite(m) and m > 0):
                raise ConfigError(f"intensity max must be a positive number (the raw value that becomes 1), "
                                  f"got {self.max!r}")
            object.__setattr__(self, "max", m)

    @property
    def identity(self) -> bool:
        """True when it neither scales nor checks anything."""
        return self.max is None and self.stats is None

    def to_meta(self) -> dict[str, Any]:
        """The checkpoint / ONNX metadata form (``meta["preprocess"]["intensity"]``)."""
        return {"max": self.max, "stats": None if self.stats is None else self.stats.to_meta()}

    @classmethod
    def from_meta(cls, data: Mapping[str, Any] | None, where: str) -> IntensitySpec:
        """Inverse of :meth:`to_meta`; None or an empty mapping (older checkpoints) give the identity."""
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise DataError(f"{where}: intensity metadata must be a mapping, got {data!r}")
        stats = data.get("stats")
        try:
            return cls(data.get("max"), None if not stats else IntensityStats.from_meta(stats, where))
        except ConfigError as exc:
            raise DataError(f"{where}: {exc}") from None

    def with_max(self, value: float | None) -> IntensitySpec:
        """The same statistics with another scale (a user's override at prediction time)."""
        return IntensitySpec(value, self.stats)


def normalize_intensity(points: np.ndarray, max_value: float | None) -> np.ndarray:
    """``points`` with column 3 divided by ``max_value`` (a new float32 array; ``points`` itself
    when there is nothing to do: ``max_value`` None or fewer than 4 columns)."""
    arr = np.asarray(points)
    if max_value is None or arr.ndim != 2 or arr.shape[1] <= INTENSITY_COLUMN:
        return arr
    out = np.array(arr, dtype=np.float32, copy=True)
    out[:, INTENSITY_COLUMN] *= np.float32(1.0 / float(max_value))
    return out


def _valid_intensity(points: np.ndarray) -> np.ndarray:
    """Intensities of the points with a return (non-zero, finite xyz), from a strided subset of
    at most about ``_SAMPLE`` points (well under a millisecond on a 131k-point scan)."""
    arr = np.asarray(points)
    if arr.ndim != 2 or arr.shape[1] <= INTENSITY_COLUMN or len(arr) == 0:
        return np.zeros(0, dtype=np.float32)
    sub = arr[::max(1, len(arr) // _SAMPLE)]
    xyz = sub[:, :3]
    with np.errstate(invalid="ignore", over="ignore"):
        r2 = np.einsum("ij,ij->i", xyz, xyz)
        ok = np.isfinite(r2) & (r2 > 1e-6)
    vals = sub[ok, INTENSITY_COLUMN]
    return vals[np.isfinite(vals)]


def _q99(vals: np.ndarray) -> float:
    """The 99th percentile (nearest rank, one partial sort)."""
    k = min(len(vals) - 1, int(round(0.99 * (len(vals) - 1))))
    return float(np.partition(vals, k)[k])


def intensity_stats(scans: Iterable[np.ndarray], max_value: float | None = None) -> IntensityStats | None:
    """Statistics of the intensities of ``scans`` after division by ``max_value``; None when the
    scans have no intensity column or no points with a return."""
    parts: list[np.ndarray] = []
    count = 0
    for pts in scans:
        vals = _valid_intensity(normalize_intensity(pts, max_value))
        if vals.size:
            parts.append(vals)
            count += 1
    if not parts:
        return None
    v = np.concatenate(parts).astype(np.float64)
    lo, hi = np.percentile(v, [1.0, 99.0])
    return IntensityStats(float(lo), float(hi), float(v.max()), float(v.mean()), count, "training")


def _suggest_max(raw_q: float, raw_max: float, ref: float) -> float | None:
    """A divisor for raw intensities whose 99th percentile is ``raw_q`` and maximum ``raw_max`` that
    brings them near a training 99th percentile ``ref``: the smallest common sensor full scale
    at or above the maximum when that works, else the ratio itself (3 significant digits)."""
    if not (raw_q > 0 and ref > 0):
        return None
    scale = next((s for s in _FULL_SCALES if s >= raw_max), None)
    if scale is not None and ref / MISMATCH_FACTOR <= raw_q / scale <= ref * MISMATCH_FACTOR:
        return scale
    return float(f"{raw_q / ref:.3g}")


def intensity_mismatch(points: np.ndarray, stats: IntensityStats | None, *, scaled_by: float | None = None,
                       source: str = "scan") -> str | None:
    """One warning line when a scan's (already scaled) intensities are far from ``stats``, else None.

    The 99th percentile of the scan's intensities (points with a return) is compared with the
    training data's: more than :data:`MISMATCH_FACTOR` times above or below it (or all zero
    when the model saw non-zero intensities) is reported, with a suggested ``--intensity-max``
    when the scan is too bright.

    Args:
        points: (N, C) points after the model's intensity scaling.
        stats: the model's training statistics (None: nothing to compare with).
        scaled_by: the division already applied (named in the message).
        source: the scan's name for the message.
    """
    if stats is None or not stats.high > 0:
        return None
    vals = _valid_intensity(points)
    if vals.size < MIN_POINTS:
        return None
    q = _q99(vals)
    ref = stats.high
    scale = "" if scaled_by is None else f" after dividing by {scaled_by:g}"
    if q > MISMATCH_FACTOR * ref:
        raw = scaled_by or 1.0
        hint = _suggest_max(q * raw, float(vals.max()) * raw, ref)
        fix = (f"divide the raw intensities (e.g. --intensity-max {hint:g}) or retrain with data.intensity_max"
               if hint is not None else "rescale the intensities or retrain on this sensor")
        return (f"{source}: intensities reach {q:.3g} (99th percentile{scale}), {q / ref:.0f}x what the model was "
                f"{stats.describe()}; predictions will be unreliable: {fix}")
    if q * MISMATCH_FACTOR < ref:
        what = "are all 0 (the cloud may have no intensity field)" if q == 0 else \
            f"reach only {q:.3g} (99th percentile{scale}), 1/{ref / q:.0f} of what the model was {stats.describe()}"
        return (f"{source}: intensities {what}{'' if q else f'; the model was {stats.describe()}'}; predictions will "
                "be unreliable: rescale the intensities (--intensity-max) or retrain on this sensor")
    return None


def model_intensity_spec(meta: Mapping[str, Any] | None, config: Any = None, where: str = "model") -> IntensitySpec:
    """The :class:`IntensitySpec` of a model from its metadata (``meta["preprocess"]["intensity"]``
    of a checkpoint or ONNX file), with statistics implied by a range network's input
    normalisation (``config.means[4]`` / ``config.stds[4]``) when none were measured."""
    pre = (meta or {}).get("preprocess") or {}
    spec = IntensitySpec.from_meta(pre.get("intensity") if isinstance(pre, Mapping) else None, where)
    if spec.stats is None and config is not None:
        means, stds = tuple(getattr(config, "means", ()) or ()), tuple(getattr(config, "stds", ()) or ())
        if len(means) >= 5 and len(stds) >= 5:
            spec = IntensitySpec(spec.max, IntensityStats.from_normalization(float(means[4]), float(stds[4])))
    return spec
