"""One way to turn any point network into ``predict(points) -> ScanPrediction``.

- :data:`POINT_PREDICTORS`: the whole-scan predictor of every point architecture, keyed by the
  model's ``arch`` (a closed table beside the factory: a new point network plugs in with one
  entry here and one in :mod:`terraseg.models.points.build`).
- :class:`ScanPipeline`: what every point model shares around its predictor, in this order:
  intensity scaling (:class:`~terraseg.models.points.intensity.IntensitySpec` ``max``), the
  check of the scan's intensities against the training data (one warning line, once per
  pipeline), and test-time augmentation (:class:`~terraseg.models.points.tta.ScanTTAConfig`:
  rotations about z and x / y mirrors, probabilities averaged).
- :func:`point_predictor` builds both for a model; :func:`predict_scan` runs it on one scan.

A model loaded from a checkpoint (:func:`terraseg.inference.load_model`) carries what its
training recorded: ``model.projection`` (range networks) and ``model.intensity`` (an
``IntensitySpec``), so ``predict_scan(model, points)`` projects and scales exactly as the
exported ONNX model and ``terraseg predict`` do.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from terraseg.errors import ConfigError, DataError
from terraseg.models.points.intensity import IntensitySpec, intensity_mismatch, normalize_intensity
from terraseg.models.points.predict import RandLAPredictor, RangePredictor, ScanPrediction, VoxelPredictor
from terraseg.models.points.tta import ScanFn, ScanTTAConfig, check_tta_support, predict_views

log = logging.getLogger(__name__)

POINT_PREDICTORS: dict[str, type] = {
    "randlanet": RandLAPredictor,
    "salsanext": RangePredictor,
    "voxelunet": VoxelPredictor,
}
"""Whole-scan predictor class of each point architecture (``model.arch``). A predictor is
constructed as ``cls(model, **options)`` and called as ``predictor(points, source=None) ->
ScanPrediction`` (``source``: the scan's name in error messages, default the predictor's own);
optional attributes ``uses_intensity`` (default True), ``tta_unsupported`` (a reason, default
None), ``fill`` and ``probabilities`` refine what :class:`ScanPipeline` does with it."""


def predictor_options(cls: type) -> tuple[str, ...]:
    """The keyword options a predictor class takes besides the model."""
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls) if f.init]
    else:
        names = [n for n, p in inspect.signature(cls).parameters.items()
                 if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return tuple(n for n in names if n != "model")


def predictor_class(model: nn.Module) -> type:
    """The :data:`POINT_PREDICTORS` entry of a point model.

    Raises:
        DataError: the model is not a known point network.
    """
    arch = getattr(model, "arch", None)
    cls = POINT_PREDICTORS.get(str(arch)) if arch is not None else None
    if cls is None:
        raise DataError(f"predict_scan: unsupported model {type(model).__name__} (expected a point network: "
                        f"{', '.join(POINT_PREDICTORS)})")
    return cls


@dataclass
class ScanPipeline:
    """``predict(points) -> ScanPrediction`` around any point predictor: intensity scaling and
    check, then test-time augmentation (see the module docstring).

    Attributes:
        base: the point predictor (``base(points) -> ScanPrediction``).
        intensity: scale and training statistics of the model's intensity input.
        tta: the LiDAR TTA views (default: none).
        source: name of the model in messages.
        mismatches: scans so far whose intensities were far from the training data's (the
            first one is logged as a warning).

    Attribute reads that the pipeline does not answer go to ``base`` (``pipeline.model``,
    ``pipeline.projection``, ...).
    """

    base: ScanFn
    intensity: IntensitySpec = field(default_factory=IntensitySpec)
    tta: ScanTTAConfig = field(default_factory=ScanTTAConfig)
    source: str = "points"
    mismatches: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.tta = ScanTTAConfig.parse(self.tta)
        if not self.tta.identity:
            check_tta_support(self.base, self.source)
            if getattr(self.base, "probabilities", True) is False:
                raise ConfigError(f"{self.source}: LiDAR TTA averages class probabilities; the predictor was made "
                                  "labels-only (probabilities=False)")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("base", "intensity", "tta", "source", "mismatches"):
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def uses_intensity(self) -> bool:
        return bool(getattr(self.base, "uses_intensity", True))

    def prepare(self, points: np.ndarray, source: str | None = None) -> np.ndarray:
        """The points as the network expects them (intensity scaled), after checking their
        intensities against the training data's (a warning for the first scan that is far off)."""
        if not self.uses_intensity:
            return points
        pts = normalize_intensity(points, self.intensity.max)
        msg = intensity_mismatch(pts, self.intensity.stats, scaled_by=self.intensity.max,
                                 source=source or self.source)
        if msg is not None:
            self.mismatches += 1
            if self.mismatches == 1:
                log.warning("%s (warned once; further scans are not reported)", msg)
        return pts

    def __call__(self, points: np.ndarray, source: str | None = None) -> ScanPrediction:
        """Label every point of one scan; ``source`` names it in messages (errors of the
        predictor too, where it takes a ``source`` argument: all of :data:`POINT_PREDICTORS`)."""
        pts = self.prepare(points, source)
        base = self.base
        if source is not None and takes_source(base):
            base = functools.partial(base, source=source)
        if self.tta.identity:
            return base(pts)
        return predict_views(base, pts, self.tta, fill=int(getattr(self.base, "fill", 0)),
                             source=source or self.source)


def takes_source(fn: ScanFn) -> bool:
    """Whether a predictor's call takes a ``source`` keyword (the scan's name in its errors)."""
    try:
        return "source" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and other callables without a signature
        return False


def point_predictor(model: nn.Module, *, tta: ScanTTAConfig | str | None = None,
                    intensity: IntensitySpec | None = None, intensity_max: float | None = None,
                    **options: Any) -> ScanPipeline:
    """The whole-scan predictor of a point model, wrapped in a :class:`ScanPipeline`.

    Args:
        model: a point network (``model.arch`` in :data:`POINT_PREDICTORS`).
        tta: LiDAR test-time augmentation (a :class:`ScanTTAConfig` or its text form).
        intensity: the model's intensity scale and statistics; default: ``model.intensity``
            (set when loaded from a checkpoint), else none.
        intensity_max: override the scale (raw intensities are divided by it).
        options: options of the architecture's predictor, e.g. ``projection``, ``seed``,
            ``fill``, ``device``, ``source``, ``probabilities``.

    Raises:
        DataError: not a point network.
        ConfigError: an option the architecture's predictor does not take, or TTA it cannot do.
    """
    cls = predictor_class(model)
    accepted = predictor_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"{getattr(model, 'arch', type(model).__name__)} predictor: unknown option(s) "
                          f"{', '.join(unknown)} (it takes {', '.join(accepted)})")
    tta_cfg = ScanTTAConfig.parse(tta)
    if not tta_cfg.identity and "probabilities" in accepted:
        options.setdefault("probabilities", True)
    base = cls(model, **options)
    spec = intensity if intensity is not None else getattr(model, "intensity", None)
    if not isinstance(spec, IntensitySpec):
        spec = IntensitySpec()
    if intensity_max is not None:
        spec = spec.with_max(intensity_max)
    return ScanPipeline(base, spec, tta_cfg, str(options.get("source", getattr(model, "path", None) or "points")))


def predict_scan(model: nn.Module, points: np.ndarray, **options: Any) -> ScanPrediction:
    """Label every point of one scan with a point model, in one network pass per TTA view.

    Args:
        model: a point network (:class:`~terraseg.models.points.randlanet.RandLANet`,
            :class:`~terraseg.models.points.salsanext.SalsaNext`, ... from
            :func:`~terraseg.models.points.build.build_point_model` or a checkpoint).
        points: (N, C>=3) float points (x, y, z in metres, sensor frame; then intensity, ...).
        options: as for :func:`point_predictor`: ``tta``, ``intensity_max`` and the
            architecture's predictor options (``seed``, ``fill``, ``device`` for RandLA-Net;
            ``projection``, ``post`` (a ``KNNPost``), ``fill``, ``device`` for range networks).

    Returns:
        A :class:`~terraseg.models.points.predict.ScanPrediction` with (N,) labels and (N, C)
        probabilities.
    """
    return point_predictor(model, **options)(points)
