"""Exact effect of override atoms on per-class intersection, union and IoU, from ``H`` alone.

An *atom* ``(i, c)`` (class indices, ``i != c``) overrides model 1 with model 2 on the group of
pixels where model 1 predicts ``i`` and model 2 predicts ``c``. Groups are disjoint, so a set of
atoms is a boolean ``(C, C)`` *override mask* and the ensemble prediction of group ``(i, c)``
is ``c`` where the mask is set and ``i`` elsewhere. With the group constants

- ``N[i, c] = sum_g H[i, c, g]`` (group size),
- ``T1[i, c] = H[i, c, i]`` (model 1 right), ``T2[i, c] = H[i, c, c]`` (model 2 right),
- ``gt[k] = sum_{i, c} H[i, c, k]``,

the ensemble's per-class counts are ``tp[k] = sum_c T1[k, c] (not overridden) + sum_i T2[i, k]
(overridden)`` and ``pred[k] = sum_c N[k, c] (not overridden) + sum_i N[i, k] (overridden)``;
``IoU = tp / (gt + pred - tp)``. Accepting one more atom ``(i, c)`` changes only classes ``i``
(``tp -= T1``, ``pred -= N``) and ``c`` (``tp += T2``, ``pred += N``), so the new mIoU of every
candidate atom is a handful of ``(C, C)`` array operations (:func:`candidate_effects`).

IoU conventions follow :mod:`terraseg.metrics.scores`: a class whose union is zero has NaN IoU
and is left out of the mean; IoUs are fractions in 0..1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from terraseg.ensemble.histogram import PairHistogram


@dataclass(frozen=True)
class GroupStats:
    """Per-group constants of a pair histogram (all int64 unless noted).

    Attributes:
        n: ``(C, C)`` group sizes ``N[i, c]``.
        t1: ``(C, C)`` pixels of the group where model 1 is right (``H[i, c, i]``).
        t2: ``(C, C)`` pixels of the group where model 2 is right (``H[i, c, c]``).
        gt: ``(C,)`` ground-truth pixels per class.
        scored: ``(C,)`` bool, classes with an IoU (not ignored).
        in_mean: ``(C,)`` bool, classes averaged into the mIoU.
    """

    n: np.ndarray
    t1: np.ndarray
    t2: np.ndarray
    gt: np.ndarray
    scored: np.ndarray
    in_mean: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.gt.shape[0])

    @classmethod
    def from_histogram(cls, hist: PairHistogram | np.ndarray, in_mean: np.ndarray | None = None,
                       scored: np.ndarray | None = None) -> GroupStats:
        """Constants of a :class:`PairHistogram` (or a bare ``(C, C, C)`` array, all classes scored)."""
        if isinstance(hist, PairHistogram):
            h = hist.counts
            scored = hist.scored if scored is None else scored
            in_mean = hist.in_mean if in_mean is None else in_mean
        else:
            h = np.asarray(hist, dtype=np.int64)
        c = h.shape[0]
        k = np.arange(c)
        scored = np.ones(c, bool) if scored is None else np.asarray(scored, bool)
        in_mean = scored.copy() if in_mean is None else np.asarray(in_mean, bool) & scored
        return cls(n=h.sum(axis=2), t1=np.ascontiguousarray(h[k, :, k]), t2=np.ascontiguousarray(h[:, k, k]),
                   gt=h.sum(axis=(0, 1)), scored=scored, in_mean=in_mean)


def override_mask(atoms: Iterable[tuple[int, int]], num_classes: int) -> np.ndarray:
    """``(C, C)`` bool mask of a set of atoms ``(i, c)``; ``(i, i)`` atoms are no-ops and dropped."""
    m = np.zeros((num_classes, num_classes), dtype=bool)
    pairs = np.asarray(list(atoms), dtype=np.int64).reshape(-1, 2)
    if pairs.size:
        if pairs.min() < 0 or pairs.max() >= num_classes:
            raise ValueError(f"atom class indices must lie in 0..{num_classes - 1}")
        m[pairs[:, 0], pairs[:, 1]] = True
    np.fill_diagonal(m, False)
    return m


def class_counts(stats: GroupStats, override: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tp, pred)`` per class, ``(C,)`` int64 each, of the ensemble given by an override mask."""
    ov = np.asarray(override, dtype=bool).copy()
    np.fill_diagonal(ov, False)
    keep = ~ov
    tp = (stats.t1 * keep).sum(axis=1) + (stats.t2 * ov).sum(axis=0)
    pred = (stats.n * keep).sum(axis=1) + (stats.n * ov).sum(axis=0)
    return tp, pred


def iou_from_counts(tp: np.ndarray, pred: np.ndarray, gt: np.ndarray, scored: np.ndarray | None = None) -> np.ndarray:
    """``(C,)`` float64 IoU ``tp / (gt + pred - tp)``; NaN where the union is 0 or the class is not scored."""
    tp64 = np.asarray(tp, dtype=np.float64)
    union = np.asarray(gt, dtype=np.float64) + np.asarray(pred, dtype=np.float64) - tp64
    out = np.full(tp64.shape, np.nan)
    np.divide(tp64, union, out=out, where=union > 0)
    if scored is not None:
        out[~np.asarray(scored, bool)] = np.nan
    return out


def mean_iou(iou: np.ndarray, in_mean: np.ndarray) -> float:
    """Mean of the finite IoUs of the classes in the mean (NaN when there are none)."""
    v = np.asarray(iou, dtype=np.float64)[np.asarray(in_mean, bool)]
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


@dataclass(frozen=True)
class EnsembleScore:
    """Per-class counts and IoU of one ensemble (or single model) over a histogram."""

    tp: np.ndarray
    pred: np.ndarray
    gt: np.ndarray
    iou: np.ndarray
    miou: float


def score_override(stats: GroupStats, override: np.ndarray) -> EnsembleScore:
    """Exact scores of the ensemble given by an override mask."""
    tp, pred = class_counts(stats, override)
    iou = iou_from_counts(tp, pred, stats.gt, stats.scored)
    return EnsembleScore(tp, pred, stats.gt, iou, mean_iou(iou, stats.in_mean))


def score_atoms(hist: PairHistogram | GroupStats, atoms: Iterable[tuple[int, int]]) -> EnsembleScore:
    """Exact scores of model 1 overridden by model 2 on the atoms ``(i, c)`` (class indices)."""
    stats = hist if isinstance(hist, GroupStats) else GroupStats.from_histogram(hist)
    return score_override(stats, override_mask(atoms, stats.num_classes))


def model_scores(hist: PairHistogram | GroupStats, model: int) -> EnsembleScore:
    """Scores of model 1 alone (no override) or model 2 alone (every group overridden)."""
    stats = hist if isinstance(hist, GroupStats) else GroupStats.from_histogram(hist)
    c = stats.num_classes
    ov = np.zeros((c, c), bool) if model == 1 else ~np.eye(c, dtype=bool)
    if model not in (1, 2):
        raise ValueError("model must be 1 or 2")
    return score_override(stats, ov)


@dataclass(frozen=True)
class CandidateEffects:
    """What accepting each single atom ``(i, c)`` would do, given the current ensemble.

    All arrays are ``(C, C)`` float64 indexed by ``[i, c]``: ``iou_i`` / ``iou_c`` are the new
    IoUs of classes ``i`` and ``c`` (NaN when undefined), ``miou`` the new mean and ``gain`` the
    change of the mean (``miou - current``). Diagonal entries are no-ops with gain 0.
    """

    iou_i: np.ndarray
    iou_c: np.ndarray
    miou: np.ndarray
    gain: np.ndarray
    current_miou: float


def candidate_effects(stats: GroupStats, tp: np.ndarray, pred: np.ndarray) -> CandidateEffects:
    """Vectorised exact effect of adding each atom to the ensemble with counts ``(tp, pred)``.

    The effect assumes the group ``(i, c)`` currently predicts ``i`` (not yet overridden);
    callers mask out groups that already are.
    """
    tpf = np.asarray(tp, dtype=np.float64)
    prf = np.asarray(pred, dtype=np.float64)
    gtf = stats.gt.astype(np.float64)
    n = stats.n.astype(np.float64)
    t1 = stats.t1.astype(np.float64)
    t2 = stats.t2.astype(np.float64)
    c = stats.num_classes

    cur = iou_from_counts(tpf, prf, gtf, stats.scored)
    valid = np.isfinite(cur) & stats.in_mean
    s = float(cur[valid].sum())
    k = int(valid.sum())

    def new_iou(tp_new: np.ndarray, pred_new: np.ndarray, g: np.ndarray) -> np.ndarray:
        union = g + pred_new - tp_new
        out = np.full(union.shape, np.nan)
        np.divide(tp_new, union, out=out, where=union > 0)
        return out

    iou_i = new_iou(tpf[:, None] - t1, prf[:, None] - n, gtf[:, None])
    iou_c = new_iou(tpf[None, :] + t2, prf[None, :] + n, gtf[None, :])
    sc_i, sc_c = stats.scored[:, None], stats.scored[None, :]
    iou_i = np.where(sc_i, iou_i, np.nan)
    iou_c = np.where(sc_c, iou_c, np.nan)
    m_i, m_c = stats.in_mean[:, None], stats.in_mean[None, :]
    old_i = np.where(valid[:, None], cur[:, None], 0.0)
    old_c = np.where(valid[None, :], cur[None, :], 0.0)
    vi, vc = np.isfinite(iou_i) & m_i, np.isfinite(iou_c) & m_c
    s_new = s - old_i - old_c + np.where(vi, iou_i, 0.0) + np.where(vc, iou_c, 0.0)
    k_new = k - valid[:, None].astype(np.int64) - valid[None, :].astype(np.int64) + vi + vc
    miou = np.full((c, c), np.nan)
    np.divide(s_new, k_new, out=miou, where=k_new > 0)
    current = s / k if k else float("nan")
    gain = miou - current
    diag = np.eye(c, dtype=bool)
    gain[diag] = 0.0
    miou[diag] = current
    iou_i[diag] = cur[np.arange(c)]
    iou_c[diag] = cur[np.arange(c)]
    return CandidateEffects(iou_i=iou_i, iou_c=iou_c, miou=miou, gain=gain, current_miou=current)


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (NaN when there are none, without a warning)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


@dataclass
class SplitScores:
    """Scores of model 1, model 2 and the ensemble on one part of the data (IoU fractions 0..1).

    ``iou_*`` are per-class lists in class order with None for undefined (NaN) IoUs; ``gain``
    is ``miou_ensemble - miou_m1``.
    """

    frames: int
    miou_m1: float
    miou_m2: float
    miou_ensemble: float
    gain: float
    iou_m1: list[float | None]
    iou_m2: list[float | None]
    iou_ensemble: list[float | None]
    pixels: int = 0

    @classmethod
    def from_histogram(cls, hist: PairHistogram, atoms: Iterable[tuple[int, int]]) -> SplitScores:
        """Score a set of atoms (class indices) on a histogram."""
        stats = GroupStats.from_histogram(hist)
        s1, s2 = model_scores(stats, 1), model_scores(stats, 2)
        se = score_atoms(stats, atoms)
        return cls(frames=int(hist.frames), miou_m1=s1.miou, miou_m2=s2.miou, miou_ensemble=se.miou,
                   gain=se.miou - s1.miou, iou_m1=[_f(x) for x in s1.iou], iou_m2=[_f(x) for x in s2.iou],
                   iou_ensemble=[_f(x) for x in se.iou], pixels=hist.total)

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "pixels": self.pixels, "miou_m1": _f(self.miou_m1),
                "miou_m2": _f(self.miou_m2), "miou_ensemble": _f(self.miou_ensemble), "gain": _f(self.gain),
                "iou_m1": list(self.iou_m1), "iou_m2": list(self.iou_m2), "iou_ensemble": list(self.iou_ensemble)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SplitScores:
        def num(key: str) -> float:
            v = d[key]
            return float("nan") if v is None else float(v)

        def lst(key: str) -> list[float | None]:
            return [None if v is None else float(v) for v in d[key]]

        return cls(frames=int(d["frames"]), miou_m1=num("miou_m1"), miou_m2=num("miou_m2"),
                   miou_ensemble=num("miou_ensemble"), gain=num("gain"), iou_m1=lst("iou_m1"),
                   iou_m2=lst("iou_m2"), iou_ensemble=lst("iou_ensemble"), pixels=int(d.get("pixels", 0)))


@dataclass
class KFoldScores:
    """k-fold estimate: for each fold, rules tuned on the other folds, scored on both.

    ``tuning_gain[k]`` is the mIoU gain on the folds the rules were tuned on (in-sample),
    ``heldout_gain[k]`` the gain on fold ``k`` (out-of-sample); fractions of mIoU.
    """

    folds: int
    tuning_gain: list[float]
    heldout_gain: list[float]
    atoms: list[int]
    frames: list[int]

    @property
    def mean_tuning_gain(self) -> float:
        return finite_mean(self.tuning_gain)

    @property
    def mean_heldout_gain(self) -> float:
        return finite_mean(self.heldout_gain)

    def to_dict(self) -> dict[str, Any]:
        return {"folds": self.folds, "tuning_gain": [_f(x) for x in self.tuning_gain],
                "heldout_gain": [_f(x) for x in self.heldout_gain], "atoms": list(self.atoms),
                "frames": list(self.frames), "mean_tuning_gain": _f(self.mean_tuning_gain),
                "mean_heldout_gain": _f(self.mean_heldout_gain)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KFoldScores:
        def fl(v: Sequence[Any]) -> list[float]:
            return [float("nan") if x is None else float(x) for x in v]

        k = int(d["folds"])
        return cls(folds=k, tuning_gain=fl(d["tuning_gain"]), heldout_gain=fl(d["heldout_gain"]),
                   atoms=[int(x) for x in d.get("atoms", [0] * k)], frames=[int(x) for x in d.get("frames", [0] * k)])
