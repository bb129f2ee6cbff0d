"""Scores from a confusion matrix: IoU, accuracy (recall), precision, F1 and their means.

Conventions (the ones used by MMSegmentation and the GOOSE / RELLIS-3D papers):

- ``IoU = TP / (TP + FP + FN)``, ``Acc = recall = TP / (TP + FN)``,
  ``Precision = TP / (TP + FP)``, ``F1 = Dice = 2 TP / (2 TP + FP + FN)``.
- A class whose union ``TP + FP + FN`` is zero (absent from both ground truth and prediction)
  has NaN IoU and is left out of the means. A class present only in predictions has IoU 0
  and counts. Accuracy is NaN for classes absent from the ground truth, precision is NaN for
  classes never predicted.
- ``aAcc`` = all correct / all counted; ``mIoU``, ``mAcc``, ``mF1`` are means over the classes
  with a defined value, leaving out excluded ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def nanmean_or_nan(values: np.ndarray) -> float:
    """Mean of the finite entries, NaN when there are none (no RuntimeWarning)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


@dataclass
class ClassScores:
    """Per-class scores of one confusion matrix and their means.

    Arrays are aligned with ``class_ids`` (the ids of the scored classes, ascending). Values are
    fractions in 0..1 (multiply by 100 for percent); NaN means undefined (see module docstring).
    """

    class_ids: np.ndarray
    class_names: list[str]
    tp: np.ndarray
    gt_count: np.ndarray
    pred_count: np.ndarray
    iou: np.ndarray
    acc: np.ndarray
    precision: np.ndarray
    f1: np.ndarray
    aacc: float
    miou: float
    macc: float
    mf1: float
    excluded_ids: tuple[int, ...] = ()
    total: int = 0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, class_ids: Sequence[int] | np.ndarray | None = None,
                    class_names: Sequence[str | None] | None = None,
                    exclude_ids: Iterable[int] = ()) -> ClassScores:
        """Score the classes ``class_ids`` (default: all rows) of a (C, C) matrix (rows = truth).

        Counts in rows or columns of ids outside ``class_ids`` still count as false negatives /
        false positives of the scored classes. ``exclude_ids`` are scored but left out of means.
        """
        m = np.asarray(matrix, dtype=np.int64)
        c = m.shape[0]
        ids = np.arange(c) if class_ids is None else np.asarray(class_ids, dtype=np.int64)
        names = [(class_names[i] if class_names is not None and class_names[i] else str(i)) for i in ids]
        diag = np.diag(m)
        gt = m.sum(axis=1)
        pr = m.sum(axis=0)
        tp, g, p = diag[ids], gt[ids], pr[ids]
        union = g + p - tp
        iou = _div(tp.astype(np.float64), union)
        acc = _div(tp.astype(np.float64), g)
        prec = _div(tp.astype(np.float64), p)
        f1 = _div(2.0 * tp, g + p)
        excluded = tuple(sorted({int(e) for e in exclude_ids}))
        keep = ~np.isin(ids, excluded)
        total = int(m.sum())
        aacc = float(diag.sum() / total) if total else float("nan")
        notes = []
        absent = [n for n, u, k in zip(names, union, keep) if u == 0 and k]
        if absent:
            notes.append(f"{len(absent)} class(es) absent from both ground truth and prediction have NaN IoU "
                         f"and are left out of the means: {', '.join(absent)}")
        if excluded:
            notes.append(f"excluded from the means by the preset: {', '.join(n for n, k in zip(names, keep) if not k)}")
        return cls(class_ids=ids, class_names=names, tp=tp, gt_count=g, pred_count=p, iou=iou, acc=acc,
                   precision=prec, f1=f1, aacc=aacc, miou=nanmean_or_nan(iou[keep]), macc=nanmean_or_nan(acc[keep]),
                   mf1=nanmean_or_nan(f1[keep]), excluded_ids=excluded, total=total, notes=notes)

    def __len__(self) -> int:
        return len(self.class_ids)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """``{class name: {iou, acc, precision, f1, gt_count, pred_count}}`` with None for NaN."""
        out = {}
        for i, n in enumerate(self.class_names):
            out[n] = {"id": int(self.class_ids[i]), "iou": _f(self.iou[i]), "acc": _f(self.acc[i]),
                      "precision": _f(self.precision[i]), "f1": _f(self.f1[i]),
                      "gt_count": int(self.gt_count[i]), "pred_count": int(self.pred_count[i]),
                      "excluded": int(self.class_ids[i]) in self.excluded_ids}
        return out

    def iou_of(self, name: str) -> float:
        return float(self.iou[self.class_names.index(name)])


def _f(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def fold_matrix(matrix: np.ndarray, assignment: np.ndarray, num_groups: int) -> np.ndarray:
    """Fold a (C, C) class matrix into a (G, G) group matrix.

    ``assignment[i]`` is the group index of class id ``i`` (0..G-1). Rows and columns of classes
    assigned to ``-1`` are dropped entirely.
    """
    m = np.asarray(matrix, dtype=np.int64)
    a = np.asarray(assignment, dtype=np.int64)
    keep = a >= 0
    onehot = np.zeros((m.shape[0], num_groups), dtype=np.int64)
    onehot[np.nonzero(keep)[0], a[keep]] = 1
    return onehot.T @ m @ onehot
