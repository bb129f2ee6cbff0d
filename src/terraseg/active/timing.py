"""When to query: at fixed fractions of training, or when the pseudo-label agreement saturates.

The automatic rule of the reference (ActiveSFDA ``Querier.fit_and_decide``):

- during adaptation, the model's predictions on the target training set are scored against the
  pseudo-labels (mIoU) at every validation; one curve per modality (2D, 3D, 2D+3D);
- each curve is fitted with ``y = b ln(a x + 1) + c`` (``scipy.optimize.curve_fit``, weights
  ``sigma = geomspace(1, 0.1, n)`` so recent points count more), ``x`` the validation index;
- the slope is ``y'(x) = a b / (a x + 1)``; its relative change against the start,
  ``| |y'(x)| - |y'(x_start)| | / |y'(x_start)|``, is compared with ``r = 0.85`` (the paper's
  tau): above it, i.e. the slope has fallen below ``(1 - r) = 15 %`` of its start, the
  modality votes to query. The reference takes the start at ``x = 1`` (the second validation)
  and tests the points from the sixth on (``x[5:]``), so it needs at least 6 points;
- a query happens when at least 2 modalities vote.

Differences, all deliberate: the reference increments its vote count once per tested point
(so one modality alone can reach 2 votes); here each modality votes once. The start is the
curve's second ``x`` (``x = 1`` for validation indices) so any ``x`` units work (the slope
ratio does not depend on them). The fit is started from several initial guesses with ``a > 0``
and the lowest weighted residual is kept (the reference starts from ``a = b = c = 1`` and
sometimes fails). A curve whose fit rises by less than ``flat_tol`` of the curve's level over
the whole window is flat: it has saturated, so it votes to query. Since ``|y'|`` is monotone
for ``a > 0``, testing the newest point equals testing all of ``x[5:]``.

A consequence worth knowing: with the start at ``x = 1``, ``|y'(x)| / |y'(1)| = (a + 1) /
(a x + 1) > 1 / x``, so with ``r = 0.85`` a curve can only saturate from ``x = 7`` on (the
eighth validation), however sharply it bends; earlier only a flat curve triggers a query.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from terraseg.errors import ConfigError, DataError

R_THRESHOLD = 0.85
"""The reference's ``r_threshold`` (tau)."""

MIN_POINTS = 6
"""Fewest curve points before a decision (the reference tests ``x[5:]``)."""


def log_curve(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """``b * ln(a x + 1) + c``."""
    return b * np.log(a * np.asarray(x, dtype=np.float64) + 1.0) + c


@dataclass(frozen=True)
class CurveFit:
    """A fitted ``y = b ln(a x + 1) + c``, kept as ``(a, k = a b, c)`` so a straight line
    (``a -> 0``, ``b -> inf``) stays finite; ``ok`` is False when every start failed."""

    a: float
    k: float
    c: float
    ok: bool = True
    residual: float = math.nan
    rms: float = math.nan

    @property
    def b(self) -> float:
        return self.k / self.a if self.a else math.copysign(math.inf, self.k)

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        return _curve_ak(np.asarray(x, dtype=np.float64), self.a, self.k, self.c)

    def slope(self, x: np.ndarray | float) -> np.ndarray | float:
        """``dy/dx = a b / (a x + 1)``."""
        return self.k / (self.a * np.asarray(x, dtype=np.float64) + 1.0)


def _curve_ak(x: np.ndarray, a: float, k: float, c: float) -> np.ndarray:
    """``(k / a) ln(1 + a x) + c``, equal to ``b ln(a x + 1) + c`` with ``b = k / a``."""
    return k * np.log1p(a * x) / a + c


def fit_log_curve(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                  sigma: np.ndarray | None = None) -> CurveFit:
    """Fit ``y = b ln(a x + 1) + c`` robustly (module doc); ``x >= 0`` increasing.

    ``sigma`` defaults to the reference's ``geomspace(1, 0.1, n)``. The fit runs on ``x``
    scaled to [0, 1] with ``a`` in [1e-9, 1e6] (per unit of the scaled x), from six starts.
    """
    from scipy.optimize import curve_fit

    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    n = len(xs)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise DataError(f"curve: x and y must be equal-length 1-D sequences, got {xs.shape} and {ys.shape}")
    if n < 3:
        return CurveFit(math.nan, math.nan, math.nan, ok=False)
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise DataError("curve: NaN or infinite values")
    if xs.min() < 0 or (np.diff(xs) <= 0).any():
        raise DataError("curve: x must be non-negative and strictly increasing")
    sig = np.geomspace(1.0, 0.1, n) if sigma is None else np.asarray(sigma, dtype=np.float64)
    span = float(xs[-1])
    u = xs / span
    best: CurveFit | None = None
    for a0 in (1e-3, 1e-1, 1.0, 10.0, 100.0, 1000.0):
        g = math.log1p(a0 * u[-1]) - math.log1p(a0 * u[0])
        k0 = a0 * (ys[-1] - ys[0]) / g
        c0 = ys[0] - k0 * math.log1p(a0 * u[0]) / a0
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                popt, _ = curve_fit(_curve_ak, u, ys, p0=(a0, k0, c0), sigma=sig, absolute_sigma=True,
                                    bounds=([1e-9, -np.inf, -np.inf], [1e6, np.inf, np.inf]), maxfev=10000)
        except (RuntimeError, ValueError):
            continue
        resid = _curve_ak(u, *popt) - ys
        res = float(((resid / sig) ** 2).sum())
        if math.isfinite(res) and (best is None or res < best.residual - 1e-12 * max(1.0, abs(res))):
            best = CurveFit(float(popt[0]) / span, float(popt[1]) / span, float(popt[2]), True, res,
                            float(np.sqrt(np.mean(resid ** 2))))
    return best if best is not None else CurveFit(math.nan, math.nan, math.nan, ok=False)


@dataclass(frozen=True)
class CurveTrend:
    """One modality's verdict.

    Attributes:
        fit: the fitted curve.
        start_slope, slope: ``y'`` at the start and at the newest point.
        relative_change: ``| |y'| - |y'_start| | / |y'_start|`` (inf for a flat start).
        flat: the fit rises by less than ``flat_tol`` of the curve's level over the window.
        saturated: votes to query (``relative_change > r`` or ``flat``).
    """

    fit: CurveFit
    start_slope: float
    slope: float
    relative_change: float
    flat: bool
    saturated: bool


@dataclass(frozen=True)
class QueryDecision:
    """The outcome of :func:`decide_query`: ``query``, a one-line ``reason`` and each modality's trend."""

    query: bool
    reason: str
    trends: Mapping[str, CurveTrend] = field(default_factory=dict)
    votes: int = 0


def curve_trend(x: np.ndarray, y: np.ndarray, r: float = R_THRESHOLD, flat_tol: float = 1e-3,
                noise_factor: float = 3.0) -> CurveTrend | None:
    """The trend of one curve (None when the fit failed); see :func:`decide_query`."""
    fit = fit_log_curve(x, y)
    if not fit.ok:
        return None
    xs = np.asarray(x, dtype=np.float64)
    s0 = float(fit.slope(xs[1]))
    s1 = float(fit.slope(xs[-1]))
    level = max(float(np.abs(y).max()), 1e-12)
    rise = abs(float(fit(xs[-1]) - fit(xs[0])))
    flat = rise <= max(flat_tol * level, noise_factor * fit.rms)
    rc = abs(abs(s1) - abs(s0)) / abs(s0) if s0 != 0 else math.inf
    return CurveTrend(fit, s0, s1, rc, flat, bool(flat or rc > r))


def _describe(m: str, t: CurveTrend) -> str:
    if t.flat:
        return f"{m}: flat"
    ratio = abs(t.slope) / abs(t.start_slope) if t.start_slope else math.inf
    return f"{m}: slope at {100 * ratio:.0f}% of its start"


def decide_query(curves: Mapping[str, Sequence[float]], x: Sequence[float] | None = None, r: float = R_THRESHOLD,
                 min_points: int = MIN_POINTS, min_votes: int | None = None, flat_tol: float = 1e-3,
                 noise_factor: float = 3.0) -> QueryDecision:
    """Whether the pseudo-label agreement curves have saturated (module doc).

    Args:
        curves: modality -> agreement values (e.g. mIoU of predictions against pseudo-labels
            on the target training set) at each validation, oldest first; all equally long.
        x: where the values were taken (default ``0, 1, 2, ...``, the reference's index).
        r: relative slope change that counts as saturated (0.85).
        min_points: fewest points before any decision (6).
        min_votes: modalities that must vote (default 2, or 1 with a single curve).
        flat_tol, noise_factor: a curve is flat when its fitted rise over the window is at
            most ``flat_tol`` times its level or ``noise_factor`` times the fit's RMS residual
            (a rise within the noise); a flat curve votes to query.

    Returns:
        a :class:`QueryDecision`; ``query`` False with the reason when there are too few points.
    """
    if not 0 < r < 1:
        raise ConfigError(f"r must lie in (0, 1), got {r}")
    if not curves:
        raise DataError("no agreement curves given")
    lengths = {m: len(v) for m, v in curves.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"agreement curves differ in length: {lengths}")
    n = next(iter(lengths.values()))
    xs = np.arange(n, dtype=np.float64) if x is None else np.asarray(x, dtype=np.float64)
    if len(xs) != n:
        raise DataError(f"x has {len(xs)} values but the curves {n}")
    need = min_votes if min_votes is not None else min(2, len(curves))
    if n < max(min_points, 3):
        return QueryDecision(False, f"too few points ({n} < {max(min_points, 3)}): no query yet")
    trends: dict[str, CurveTrend] = {}
    failed = []
    for m, v in curves.items():
        t = curve_trend(xs, np.asarray(v, dtype=np.float64), r, flat_tol, noise_factor)
        if t is None:
            failed.append(m)
        else:
            trends[m] = t
    votes = sum(t.saturated for t in trends.values())
    parts = [_describe(m, t) for m, t in trends.items()]
    parts += [f"{m}: fit failed" for m in failed]
    query = votes >= need
    reason = f"{votes} of {len(curves)} modalities saturated (need {need}): " + "; ".join(parts)
    return QueryDecision(query, reason, trends, votes)


@dataclass(frozen=True)
class QuerySchedule:
    """When the query rounds happen during a run of ``max_steps`` steps.

    Attributes:
        fractions: fixed rounds at these fractions of training (0 = before the first step).
        auto_rounds: further rounds decided by :func:`decide_query` after the last fixed one.
        r: the saturation threshold of the automatic rounds.

    ``QuerySchedule.from_reference([0.0, -1.0])`` reads the reference's ``query_iters`` (-1.0
    marks an automatic round).
    """

    fractions: tuple[float, ...] = (0.0,)
    auto_rounds: int = 0
    r: float = R_THRESHOLD

    def __post_init__(self) -> None:
        fr = tuple(float(f) for f in self.fractions)
        if any(not 0.0 <= f <= 1.0 for f in fr):
            raise ConfigError(f"query fractions must lie in [0, 1], got {list(fr)}")
        if len(set(fr)) != len(fr):
            raise ConfigError(f"query fractions repeat: {list(fr)}")
        if self.auto_rounds < 0:
            raise ConfigError(f"auto_rounds must be >= 0, got {self.auto_rounds}")
        if not fr and not self.auto_rounds:
            raise ConfigError("a query schedule needs at least one fixed fraction or one automatic round")
        object.__setattr__(self, "fractions", tuple(sorted(fr)))

    @classmethod
    def from_reference(cls, query_iters: Sequence[float], r: float = R_THRESHOLD) -> QuerySchedule:
        return cls(tuple(f for f in query_iters if f != -1.0), sum(1 for f in query_iters if f == -1.0), r)

    @property
    def rounds(self) -> int:
        return len(self.fractions) + self.auto_rounds

    def steps(self, max_steps: int) -> tuple[int, ...]:
        """The steps of the fixed rounds: ``int(max_steps * fraction)`` (the reference's rule)."""
        return tuple(int(max_steps * f) for f in self.fractions)

    def is_due(self, step: int, max_steps: int, rounds_done: int,
               curves: Mapping[str, Sequence[float]] | None = None) -> QueryDecision:
        """Whether round ``rounds_done`` should run at ``step``.

        Fixed rounds run at their steps; once they are all done and automatic rounds remain,
        the curves decide (no curves: no query).
        """
        if rounds_done >= self.rounds:
            return QueryDecision(False, f"all {self.rounds} query rounds done")
        fixed = self.steps(max_steps)
        if rounds_done < len(fixed):
            due = step >= fixed[rounds_done]
            return QueryDecision(due, f"fixed round {rounds_done} at step {fixed[rounds_done]}"
                                 + ("" if due else " (not yet)"))
        if not curves:
            return QueryDecision(False, "automatic round: no agreement curve yet")
        return decide_query(curves, r=self.r)
