"""Greedy search for override atoms (the rule-learning ensemble of the GOOSE challenge write-up).

Starting from model 1 alone, each step scores every candidate atom ``(i, c)`` exactly from the
histogram (:func:`terraseg.ensemble.atoms.candidate_effects`, a few ``(C, C)`` array operations)
and accepts the one with the largest mIoU gain among those that pass every test:

1. its group holds at least ``min_pixels`` pixels;
2. model 2 is right more often than model 1 in the group, by at least ``precision_margin``:
   ``(T2 - T1) / N >= precision_margin``;
3. no class IoU drops by more than ``max_class_drop`` (against model 1 alone by default, so
   drops cannot pile up over many atoms; ``drop_reference="step"`` checks each step alone);
4. the mIoU gain exceeds ``min_gain``.

The search stops when no candidate qualifies (or after ``max_atoms``). Accepted atoms change the
baseline for later ones; groups already overridden and ``(i, i)`` no-ops are never candidates.
All gains and IoUs are fractions (0.01 = one mIoU point).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from terraseg.ensemble.atoms import (
    EnsembleScore,
    GroupStats,
    candidate_effects,
    class_counts,
    iou_from_counts,
    model_scores,
    score_override,
)
from terraseg.ensemble.histogram import PairHistogram
from terraseg.errors import ConfigError

DropReference = Literal["baseline", "step"]
_EPS = 1e-12  # float slack for the IoU-drop test


@dataclass(frozen=True)
class SearchOptions:
    """Acceptance thresholds of the greedy search (defaults as in the GOOSE write-up).

    Attributes:
        min_pixels: smallest group (pixels where model 1 says ``i`` and model 2 says ``c``).
        precision_margin: how much more often model 2 must be right than model 1 in the
            group, as a fraction of the group (0.05 = five points).
        max_class_drop: largest allowed IoU drop of any class (fraction, 0.005 = half a point).
        min_gain: the mIoU gain (fraction) an atom must exceed.
        max_atoms: stop after this many atoms (None: no limit).
        drop_reference: ``"baseline"`` compares each class with model 1 alone (cumulative),
            ``"step"`` with the ensemble before the step.
    """

    min_pixels: int = 500
    precision_margin: float = 0.05
    max_class_drop: float = 0.005
    min_gain: float = 5e-5
    max_atoms: int | None = None
    drop_reference: DropReference = "baseline"

    def __post_init__(self) -> None:
        if self.min_pixels < 1:
            raise ConfigError(f"min_pixels must be >= 1, got {self.min_pixels}")
        if not -1.0 <= self.precision_margin <= 1.0:
            raise ConfigError(f"precision_margin must lie in -1..1, got {self.precision_margin}")
        if not 0.0 <= self.max_class_drop <= 1.0:
            raise ConfigError(f"max_class_drop must lie in 0..1, got {self.max_class_drop}")
        if not np.isfinite(self.min_gain):
            raise ConfigError(f"min_gain must be finite, got {self.min_gain}")
        if self.max_atoms is not None and self.max_atoms < 0:
            raise ConfigError(f"max_atoms must be >= 0, got {self.max_atoms}")
        if self.drop_reference not in ("baseline", "step"):
            raise ConfigError(f"drop_reference must be 'baseline' or 'step', got {self.drop_reference!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "options") -> SearchOptions:
        """Build from a mapping (unknown keys or wrong types raise :class:`ConfigError`)."""
        known = {f for f in cls.__dataclass_fields__}
        extra = sorted(set(d) - known)
        if extra:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(extra)} (known: {', '.join(sorted(known))})")
        try:
            kw: dict[str, Any] = {}
            for k, v in d.items():
                if k == "min_pixels":
                    kw[k] = int(v)
                elif k == "max_atoms":
                    kw[k] = None if v is None else int(v)
                elif k == "drop_reference":
                    kw[k] = str(v)
                else:
                    kw[k] = float(v)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: bad option value ({exc})") from exc
        try:
            return cls(**kw)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc


@dataclass(frozen=True)
class Atom:
    """One accepted override: where model 1 says class index ``m1`` and model 2 says ``m2``, use ``m2``.

    Counts are over the tuning histogram. ``gain`` is the mIoU change when the atom was
    accepted, ``miou_after`` the ensemble mIoU after it, ``iou_change`` the IoU change of the
    two affected classes (index -> change; absent where undefined).
    """

    m1: int
    m2: int
    pixels: int
    m1_correct: int
    m2_correct: int
    gain: float
    miou_after: float
    iou_change: dict[int, float] = field(default_factory=dict)

    @property
    def margin(self) -> float:
        """``(m2_correct - m1_correct) / pixels``."""
        return (self.m2_correct - self.m1_correct) / self.pixels if self.pixels else float("nan")


@dataclass
class SearchResult:
    """Outcome of :func:`greedy_search`.

    Attributes:
        atoms: accepted atoms in acceptance order.
        m1, m2, ensemble: exact scores of model 1, model 2 and the final ensemble on the histogram.
        steps: search steps run (accepted atoms + the final one that found nothing).
        seconds: wall time of the search.
        stop_reason: why the search stopped.
    """

    atoms: list[Atom]
    m1: EnsembleScore
    m2: EnsembleScore
    ensemble: EnsembleScore
    options: SearchOptions
    steps: int
    seconds: float
    stop_reason: str

    @property
    def gain(self) -> float:
        """mIoU of the ensemble minus mIoU of model 1 (fraction)."""
        return self.ensemble.miou - self.m1.miou

    def pairs(self) -> list[tuple[int, int]]:
        return [(a.m1, a.m2) for a in self.atoms]


def qualifying(stats: GroupStats, override: np.ndarray, tp: np.ndarray, pred: np.ndarray,
               reference_iou: np.ndarray, options: SearchOptions) -> tuple[np.ndarray, dict[str, np.ndarray], Any]:
    """Which candidate atoms pass every test, and each test's own ``(C, C)`` bool mask.

    Returns ``(ok, tests, effects)``; ``tests`` has keys ``available``, ``min_pixels``,
    ``precision_margin``, ``max_class_drop``, ``min_gain``.
    """
    eff = candidate_effects(stats, tp, pred)
    c = stats.num_classes
    available = ~override & ~np.eye(c, dtype=bool)
    big = stats.n >= options.min_pixels
    margin = np.full((c, c), -np.inf)
    np.divide((stats.t2 - stats.t1).astype(np.float64), stats.n, out=margin, where=stats.n > 0)
    precise = margin >= options.precision_margin - _EPS
    ref_i, ref_c = reference_iou[:, None], reference_iou[None, :]
    floor = options.max_class_drop + _EPS
    # a drop only counts where both values are defined (NaN -> 0 is charged to the mean instead)
    drop_i = np.isfinite(ref_i) & np.isfinite(eff.iou_i) & (eff.iou_i < ref_i - floor)
    drop_c = np.isfinite(ref_c) & np.isfinite(eff.iou_c) & (eff.iou_c < ref_c - floor)
    no_drop = ~(drop_i | drop_c)
    gains = np.isfinite(eff.gain) & (eff.gain > options.min_gain)
    tests = {"available": available, "min_pixels": big, "precision_margin": precise, "max_class_drop": no_drop,
             "min_gain": gains}
    ok = available & big & precise & no_drop & gains
    return ok, tests, eff


def greedy_search(hist: PairHistogram | GroupStats, options: SearchOptions | None = None) -> SearchResult:
    """Greedy atom search on a pair histogram (see the module docstring).

    Every step evaluates all ``C * C`` candidates at once, so a 64-class search takes a few
    milliseconds per accepted atom.
    """
    opts = options or SearchOptions()
    t0 = time.perf_counter()
    stats = hist if isinstance(hist, GroupStats) else GroupStats.from_histogram(hist)
    c = stats.num_classes
    override = np.zeros((c, c), dtype=bool)
    base = model_scores(stats, 1)
    tp, pred = class_counts(stats, override)
    atoms: list[Atom] = []
    steps = 0
    stop = "no candidate atom passes every test"
    while True:
        if opts.max_atoms is not None and len(atoms) >= opts.max_atoms:
            stop = f"max_atoms ({opts.max_atoms}) reached"
            break
        steps += 1
        cur_iou = iou_from_counts(tp, pred, stats.gt, stats.scored)
        ref = base.iou if opts.drop_reference == "baseline" else cur_iou
        ok, _, eff = qualifying(stats, override, tp, pred, ref, opts)
        if not ok.any():
            break
        score = np.where(ok, eff.gain, -np.inf)
        i, k = divmod(int(np.argmax(score)), c)
        n, t1, t2 = int(stats.n[i, k]), int(stats.t1[i, k]), int(stats.t2[i, k])
        change = {}
        for cls_idx, new in ((i, eff.iou_i[i, k]), (k, eff.iou_c[i, k])):
            if np.isfinite(new) and np.isfinite(cur_iou[cls_idx]):
                change[cls_idx] = float(new - cur_iou[cls_idx])
            elif np.isfinite(new):  # undefined -> defined: the whole value is new
                change[cls_idx] = float(new)
        atoms.append(Atom(m1=i, m2=k, pixels=n, m1_correct=t1, m2_correct=t2, gain=float(eff.gain[i, k]),
                          miou_after=float(eff.miou[i, k]), iou_change=change))
        override[i, k] = True
        tp[i] -= t1
        tp[k] += t2
        pred[i] -= n
        pred[k] += n
    return SearchResult(atoms=atoms, m1=base, m2=model_scores(stats, 2), ensemble=score_override(stats, override),
                        options=opts, steps=steps, seconds=time.perf_counter() - t0, stop_reason=stop)
