"""Test-time augmentation (TTA) for LiDAR scans: rotations about z and x / y mirror views.

Every view is the whole scan with its x, y coordinates mirrored and / or rotated about the
sensor's z axis (z, intensity and the other columns unchanged); the point predictor labels each
view, and the per-point class probabilities of all views are averaged (labels: their argmax).
Because every predictor returns one row per input point in input order, no inverse transform is
needed: any ``predict(points) -> ScanPrediction`` with probabilities works (RandLA-Net, range
networks with a spherical projection, the ONNX Runtime range predictor, and any new point
network's predictor), which is why TTA lives here and not in one model's predictor.

Text form (``--tta`` of a LiDAR model)::

    rotations=4              4 views, 0 / 90 / 180 / 270 degrees about z
    angles=0,120,240         explicit rotation angles in degrees
    flip=y                   also every rotation mirrored left-right (y -> -y); flip=true is the same
    flip=x,y                 also mirrored front-back (x -> -x) and left-right, separately
    rotations=4 flip=y       8 views

A predictor can refuse TTA by exposing ``tta_unsupported`` (a reason, or None): a range network
on the organised sensor layout (``organized:HxW``) places every point at the pixel its index in
the scan gives, so rotating or mirroring the coordinates does not move it in the image; the
views would only corrupt the x / y input channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.specs import parse_bool, parse_numbers, spec_items

ScanFn = Callable[[np.ndarray], Any]
"""``(N, C) float32 points -> ScanPrediction``."""

_KEYS = {"rotations", "angles", "flip"}
_IMAGE_KEYS = {"scales", "scale", "hflip"}
MAX_VIEWS = 64


@dataclass(frozen=True)
class ScanTTAConfig:
    """LiDAR test-time augmentation views: every rotation angle, each also mirrored per ``flips``.

    Attributes:
        angles: rotations about the sensor's z axis in degrees (counter-clockwise seen from above);
            ``(0,)`` is the scan as it is.
        flips: extra mirrored views per angle: ``"x"`` (x -> -x) and / or ``"y"`` (y -> -y).
    """

    angles: tuple[float, ...] = (0.0,)
    flips: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            angles = tuple(float(a) for a in self.angles)
        except (TypeError, ValueError):
            raise ConfigError(f"LiDAR TTA angles must be numbers (degrees), got {self.angles!r}") from None
        if not angles:
            raise ConfigError("LiDAR TTA needs at least one angle")
        if not all(math.isfinite(a) for a in angles):
            raise ConfigError(f"LiDAR TTA angles must be finite, got {list(angles)}")
        wrapped = [round(a % 360.0, 9) % 360.0 for a in angles]
        if len(set(wrapped)) != len(wrapped):
            raise ConfigError(f"LiDAR TTA angles repeat a rotation (modulo 360 degrees): {list(angles)}")
        flips = tuple(str(f).strip().lower() for f in self.flips)
        bad = [f for f in flips if f not in ("x", "y")]
        if bad:
            raise ConfigError(f"LiDAR TTA flips must be 'x' and / or 'y', got {bad}")
        if len(set(flips)) != len(flips):
            raise ConfigError(f"LiDAR TTA flips repeat an axis: {list(flips)}")
        if len(angles) * (1 + len(flips)) > MAX_VIEWS:
            raise ConfigError(f"LiDAR TTA with {len(angles) * (1 + len(flips))} views; at most {MAX_VIEWS}")
        object.__setattr__(self, "angles", angles)
        object.__setattr__(self, "flips", flips)

    @classmethod
    def parse(cls, spec: ScanTTAConfig | str | Sequence[str] | Mapping[str, Any] | None) -> ScanTTAConfig:
        """Parse ``"rotations=4 flip=y"``, ``"angles=0,90 flip=x,y"``, a list of such words or a mapping.

        ``None`` or ``""`` gives one view (no TTA). ``flip=true`` means ``flip=y`` (the left-right
        mirror, the LiDAR analogue of a camera's horizontal flip); ``flip=false`` no mirror.

        Raises:
            ConfigError: unknown keys (camera keys such as ``scales`` included) or bad values.
        """
        if isinstance(spec, ScanTTAConfig):
            return spec
        where = f"LiDAR TTA spec {spec!r}"
        items = spec_items(spec, where)
        camera = sorted(set(items) & _IMAGE_KEYS)
        if camera:
            raise ConfigError(f"{where}: {', '.join(camera)} is camera TTA; a LiDAR model takes rotations=N, "
                              "angles=a,b,... (degrees) and flip=x|y|x,y|true|false")
        unknown = sorted(set(items) - _KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown} (expected rotations=N, angles=a,b,... (degrees), "
                              "flip=x|y|x,y|true|false)")
        kw: dict[str, Any] = {}
        if "rotations" in items and "angles" in items:
            raise ConfigError(f"{where}: give rotations=N or angles=..., not both")
        if "rotations" in items:
            raw = items["rotations"]
            try:
                n = int(str(raw).strip()) if not isinstance(raw, (int, np.integer)) else int(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: rotations must be a whole number of views, e.g. rotations=4, "
                                  f"got {raw!r}") from None
            if not 1 <= n <= MAX_VIEWS:
                raise ConfigError(f"{where}: rotations must be 1 to {MAX_VIEWS}, got {n}")
            kw["angles"] = tuple(360.0 * k / n for k in range(n))
        if "angles" in items:
            if items["angles"] is None:
                raise ConfigError(f"{where}: 'angles' needs values, e.g. angles=0,90,180,270")
            kw["angles"] = parse_numbers(items["angles"], where, "angles")
        if "flip" in items:
            raw = items["flip"]
            if raw is None:
                kw["flips"] = ("y",)
            elif isinstance(raw, (list, tuple)):
                kw["flips"] = tuple(str(f) for f in raw)
            else:
                text = str(raw).strip().lower()
                if text in ("x", "y", "xy", "x,y", "y,x"):
                    kw["flips"] = tuple(c for c in text if c in "xy")
                else:
                    kw["flips"] = ("y",) if parse_bool(raw, f"{where}: flip") else ()
        return cls(**kw)

    @property
    def views(self) -> list[tuple[float, str]]:
        """``(angle in degrees, flip axis or "")`` of every view, in the order they are run."""
        return [(a, f) for a in self.angles for f in ("", *self.flips)]

    @property
    def identity(self) -> bool:
        """One view of the scan as it is (no TTA)."""
        return self.views == [(0.0, "")]

    def __str__(self) -> str:
        return f"angles={','.join(f'{a:g}' for a in self.angles)} flip={','.join(self.flips) or 'none'}"


def view_points(points: np.ndarray, angle: float, flip: str = "") -> np.ndarray:
    """A copy of ``points`` (N, C>=3) with x / y mirrored (``flip`` ``"x"``: x -> -x, ``"y"``:
    y -> -y) and then rotated by ``angle`` degrees about z (counter-clockwise seen from above).
    Other columns are unchanged; zero points (no return) stay zero."""
    arr = np.asarray(points)
    out = np.array(arr, dtype=np.float32, copy=True)
    x = arr[:, 0].astype(np.float64)
    y = arr[:, 1].astype(np.float64)
    if flip == "x":
        x = -x
    elif flip == "y":
        y = -y
    elif flip:
        raise ConfigError(f"flip must be '', 'x' or 'y', got {flip!r}")
    t = math.radians(angle)
    c, s = math.cos(t), math.sin(t)
    out[:, 0] = c * x - s * y
    out[:, 1] = s * x + c * y
    return out


def check_tta_support(predictor: Any, where: str) -> None:
    """Raise ConfigError when a point predictor says it cannot use TTA (``tta_unsupported``)."""
    reason = getattr(predictor, "tta_unsupported", None)
    if reason:
        raise ConfigError(f"{where}: LiDAR TTA is not possible for this model: {reason}")


def predict_views(predict: ScanFn, points: np.ndarray, tta: ScanTTAConfig, *, fill: int = 0,
                  source: str = "scan") -> Any:
    """One ``ScanPrediction`` from the probability-average of ``predict`` over the TTA views.

    The first view fixes ``source`` (which points have a return and where their label came
    from); ``timings`` and ``crops`` are summed over the views.

    Raises:
        DataError: ``predict`` returned no probabilities or rows that do not match the points.
    """
    from terraseg.models.points.predict import ScanPrediction

    first = None
    acc: np.ndarray | None = None
    timings: dict[str, float] = {}
    crops = 0
    for angle, flip in tta.views:
        pts = points if (angle == 0.0 and not flip) else view_points(points, angle, flip)
        pred = predict(pts)
        if pred.probabilities is None:
            raise DataError(f"{source}: LiDAR TTA averages class probabilities, but the predictor returns labels only")
        if len(pred.probabilities) != len(points):
            raise DataError(f"{source}: the predictor returned {len(pred.probabilities)} rows for {len(points)} points")
        if first is None:
            first = pred
            acc = pred.probabilities.astype(np.float32, copy=True)
        else:
            assert acc is not None
            acc += pred.probabilities
        for k, v in (pred.timings or {}).items():
            timings[k] = timings.get(k, 0.0) + float(v)
        crops += int(getattr(pred, "crops", 1))
    assert first is not None and acc is not None
    acc /= float(len(tta.views))
    valid = first.valid
    labels = np.full(len(points), fill, dtype=np.int64)
    labels[valid] = acc[valid].argmax(axis=1)
    acc[~valid] = 0.0
    return ScanPrediction(labels, acc, first.source, timings, crops)
