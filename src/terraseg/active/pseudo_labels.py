"""Pseudo-labels from a source model: per-class median thresholds over the whole target set.

The rule (xMUDA's ``refine_pseudo_labels``, used by ActiveSFDA): for each modality, a point's
predicted label is kept when its confidence is at least

    ``min(median confidence of the points predicted as its class, 0.9)``.

Facts taken from the reference code (valeoai/xmuda_journal):

- the median is computed **per class over the whole target training set**: the dataloader
  concatenates the confidences of every frame before thresholding, so a class's threshold does
  not depend on the frame;
- the median is ``torch.Tensor.median``, which for an even count returns the **lower** of the
  two middle values (not their mean): sorted ``[0.2, 0.4, 0.6, 0.8]`` has median 0.4;
- a label is dropped when ``confidence < threshold`` (so a confidence equal to it is kept), the
  comparison made in float32;
- modalities: ``2d`` and ``3d`` (confidence = the network's softmax maximum) and, here also,
  ``ensemble``: label ``argmax(p2d + p3d)``, confidence ``max((p2d + p3d) / 2)``.

Streaming use (the whole set need not fit in memory as probabilities, only the confidences,
4 bytes per point and modality)::

    acc = {m: ClassConfidences(C) for m in MODALITIES}
    for frame in frames:                           # pass 1: collect
        for m, pred in predict_modalities(p2d, p3d).items():
            acc[m].add(pred.label, pred.confidence)
    thresholds = {m: a.thresholds() for m, a in acc.items()}
    for frame in frames:                           # pass 2: filter
        keep = pred.confidence >= thresholds[m][pred.label]

:func:`write_pseudo_labels` does both passes over an iterable of frames and writes one file per
frame (:class:`PseudoLabels`, ``.npz``, written atomically) and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.active.scores import as_numpy, check_probs
from terraseg.errors import DataError
from terraseg.io.atomic import atomic_path, atomic_write_text
from terraseg.progress import ProgressBar

MODALITIES = ("2d", "3d", "ensemble")
"""Modalities with pseudo-labels: each network alone and the 2D+3D ensemble."""

DEFAULT_CAP = 0.9
"""Upper bound of a class threshold (the xMUDA ``min(median, 0.9)``)."""

FORMAT = "terraseg-pseudo-labels/1"
SUMMARY_NAME = "summary.json"


@dataclass(frozen=True)
class Prediction:
    """One modality's prediction: (N,) int64 label and (N,) float32 confidence."""

    label: np.ndarray
    confidence: np.ndarray


def predict_modalities(probs_2d: Any = None, probs_3d: Any = None) -> dict[str, Prediction]:
    """Labels and confidences of each modality available from (N, C) softmax probabilities.

    ``2d`` / ``3d``: argmax and maximum of the network's probabilities; ``ensemble`` (both
    given): argmax of ``p2d + p3d`` and maximum of ``(p2d + p3d) / 2``. Ties go to the lower id.
    """
    out: dict[str, Prediction] = {}
    probs = {}
    for m, p in (("2d", probs_2d), ("3d", probs_3d)):
        if p is not None:
            probs[m] = check_probs(p, f"probs_{m}")
    if not probs:
        raise DataError("no class probabilities given (need probs_2d and/or probs_3d)")
    if len(probs) == 2 and probs["2d"].shape != probs["3d"].shape:
        raise DataError(f"probs_2d {probs['2d'].shape} and probs_3d {probs['3d'].shape} differ in shape")
    for m, p in probs.items():
        lab = np.argmax(p, axis=1)
        out[m] = Prediction(lab.astype(np.int64), p[np.arange(len(p)), lab].astype(np.float32))
    if len(probs) == 2:
        s = (probs["2d"].astype(np.float32) + probs["3d"].astype(np.float32))
        lab = np.argmax(s, axis=1)
        out["ensemble"] = Prediction(lab.astype(np.int64), (s[np.arange(len(s)), lab] / 2).astype(np.float32))
    return out


def lower_median(values: np.ndarray) -> float:
    """The lower median (``torch.median`` semantics): element ``(n - 1) // 2`` of the sorted values."""
    v = np.asarray(values)
    if v.size == 0:
        return math.nan
    k = (v.size - 1) // 2
    return float(np.partition(v, k)[k])


class ClassConfidences:
    """Collects confidences per predicted class over many frames; medians and thresholds at the end.

    Memory: 4 bytes per point added. Two collectors can be merged (:meth:`merge`), e.g. from
    parallel workers.
    """

    def __init__(self, num_classes: int) -> None:
        if int(num_classes) != num_classes or num_classes < 1:
            raise DataError(f"num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self._parts: list[list[np.ndarray]] = [[] for _ in range(self.num_classes)]

    def add(self, labels: Any, confidence: Any) -> None:
        """Add (N,) predicted labels in ``[0, C)`` and their (N,) confidences."""
        lab = as_numpy(labels, "labels")
        conf = as_numpy(confidence, "confidence").astype(np.float32, copy=False)
        if lab.ndim != 1 or conf.shape != lab.shape:
            raise DataError(f"labels {lab.shape} and confidence {conf.shape} must be equal-length 1-D arrays")
        if lab.size == 0:
            return
        if lab.dtype.kind not in "ui" or lab.min() < 0 or lab.max() >= self.num_classes:
            raise DataError(f"labels must be integers in [0, {self.num_classes}), got {lab.dtype} "
                            f"{lab.min()}..{lab.max()}")
        order = np.argsort(lab, kind="stable")
        bounds = np.searchsorted(lab[order], np.arange(self.num_classes + 1))
        for c in range(self.num_classes):
            if bounds[c + 1] > bounds[c]:
                self._parts[c].append(conf[order[bounds[c]:bounds[c + 1]]].copy())

    def merge(self, other: ClassConfidences) -> None:
        """Add everything ``other`` collected."""
        if other.num_classes != self.num_classes:
            raise DataError(f"cannot merge {other.num_classes}-class confidences into {self.num_classes}-class ones")
        for c in range(self.num_classes):
            self._parts[c].extend(other._parts[c])

    def counts(self) -> np.ndarray:
        """(C,) int64 points predicted as each class."""
        return np.asarray([sum(len(p) for p in parts) for parts in self._parts], dtype=np.int64)

    def medians(self) -> np.ndarray:
        """(C,) float32 lower median confidence per class (NaN for a class never predicted)."""
        return np.asarray([lower_median(np.concatenate(parts)) if parts else math.nan
                           for parts in self._parts], dtype=np.float32)

    def thresholds(self, cap: float = DEFAULT_CAP) -> np.ndarray:
        """(C,) float32 ``min(median, cap)`` (NaN for a class never predicted)."""
        return class_thresholds(self.medians(), cap)


def class_thresholds(medians: np.ndarray, cap: float = DEFAULT_CAP) -> np.ndarray:
    """(C,) float32 ``min(median, cap)``; NaN medians stay NaN."""
    m = np.asarray(medians, dtype=np.float32)
    return np.where(np.isnan(m), m, np.minimum(m, np.float32(cap))).astype(np.float32)


def keep_mask(labels: np.ndarray, confidence: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(N,) bool: ``confidence >= thresholds[label]`` in float32 (NaN threshold: dropped)."""
    thr = np.asarray(thresholds, dtype=np.float32)
    return np.asarray(confidence, dtype=np.float32) >= thr[np.asarray(labels, dtype=np.int64)]


def refine_pseudo_labels(labels: Any, confidence: Any, num_classes: int,
                         cap: float = DEFAULT_CAP) -> tuple[np.ndarray, np.ndarray]:
    """The threshold rule over one set of points (e.g. the concatenation of every frame).

    Returns ``(keep, thresholds)``: (N,) bool kept mask and (C,) float32 thresholds.
    """
    acc = ClassConfidences(num_classes)
    acc.add(labels, confidence)
    thr = acc.thresholds(cap)
    return keep_mask(as_numpy(labels, "labels"), as_numpy(confidence, "confidence"), thr), thr


# --------------------------------------------------------------------------- per-frame file
@dataclass(frozen=True)
class ModalityLabels:
    """One modality's pseudo-labels of a frame.

    Attributes:
        label: (N,) predicted class (kept or not).
        confidence: (N,) float32 confidence of that prediction.
        keep: (N,) bool, passed the class threshold.
    """

    label: np.ndarray
    confidence: np.ndarray
    keep: np.ndarray

    def labels(self, ignore_index: int = 255) -> np.ndarray:
        """(N,) int64 labels with ``ignore_index`` where the label was not kept."""
        return np.where(self.keep, self.label.astype(np.int64), np.int64(ignore_index))


@dataclass(frozen=True)
class PseudoLabels:
    """The pseudo-labels of one frame in every modality available.

    Attributes:
        modalities: modality name (:data:`MODALITIES`) -> :class:`ModalityLabels`.
        thresholds: modality -> (C,) float32 thresholds used for ``keep``.
        num_classes: C.
        index: (N,) int64 index of each labelled point in its scan (the in-view points), or None.
        num_points: points in the whole scan, or None.
    """

    modalities: Mapping[str, ModalityLabels]
    thresholds: Mapping[str, np.ndarray]
    num_classes: int
    index: np.ndarray | None = None
    num_points: int | None = None

    def __len__(self) -> int:
        return len(next(iter(self.modalities.values())).label)

    def labels(self, modality: str = "ensemble", ignore_index: int = 255) -> np.ndarray:
        """(N,) int64 kept labels of ``modality`` (``ignore_index`` elsewhere)."""
        if modality not in self.modalities:
            raise DataError(f"no {modality!r} pseudo-labels (have {', '.join(self.modalities)})")
        return self.modalities[modality].labels(ignore_index)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to ``path`` (``.npz``) atomically (arrays ``label_<m>``, ``conf_<m>``, ``keep_<m>``, ``thr_<m>``)."""
        return _save_npz(path, self.modalities, self.thresholds, self.num_classes, final=True,
                         extra=_point_arrays(self.index, self.num_points))

    def full_labels(self, modality: str = "ensemble", ignore_index: int = 255) -> np.ndarray:
        """(num_points,) int64 kept labels of ``modality`` spread over the whole scan
        (``ignore_index`` at points without a kept label or out of view); needs ``index``."""
        if self.index is None or self.num_points is None:
            raise DataError("these pseudo-labels do not record the scan indices of their points")
        out = np.full(self.num_points, np.int64(ignore_index), dtype=np.int64)
        out[self.index] = self.labels(modality, ignore_index)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PseudoLabels:
        """Read a file written by :meth:`save` (one :class:`DataError` naming the file if it is bad)."""
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: pseudo-label file not found")
        try:
            with np.load(p, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: not a readable pseudo-label file ({exc})") from None
        if str(data.get("format", "")) != FORMAT:
            raise DataError(f"{p}: not a terraseg pseudo-label file (format {data.get('format')!r})")
        if not bool(data.get("final", False)):
            raise DataError(f"{p}: pseudo-labels were not finalised (the thresholding pass did not run); "
                            "generate them again")
        mods = [str(m) for m in data["modalities"]]
        num_classes = int(data["num_classes"])
        out: dict[str, ModalityLabels] = {}
        thr: dict[str, np.ndarray] = {}
        n = None
        for m in mods:
            try:
                ml = ModalityLabels(data[f"label_{m}"], data[f"conf_{m}"], data[f"keep_{m}"])
                thr[m] = data[f"thr_{m}"]
            except KeyError as exc:
                raise DataError(f"{p}: missing array {exc.args[0]}") from None
            lens = {len(ml.label), len(ml.confidence), len(ml.keep)}
            if len(lens) != 1 or (n is not None and lens != {n}) or thr[m].shape != (num_classes,):
                raise DataError(f"{p}: arrays of modality {m!r} have inconsistent lengths")
            n = lens.pop()
            out[m] = ml
        index = data.get("index")
        num_points = int(data["num_points"]) if "num_points" in data else None
        if index is not None and (len(index) != n or num_points is None or
                                  (len(index) and (index.min() < 0 or index.max() >= num_points))):
            raise DataError(f"{p}: point indices do not match the labels (or lie outside the scan)")
        return cls(out, thr, num_classes, None if index is None else index.astype(np.int64), num_points)


def _point_arrays(index: Any, num_points: int | None) -> dict[str, np.ndarray]:
    if index is None:
        return {}
    idx = np.asarray(index, dtype=np.int64)
    if num_points is None:
        raise DataError("pseudo-labels with point indices need the scan's number of points")
    return {"index": idx, "num_points": np.array(int(num_points))}


def _save_npz(path: str | os.PathLike[str], mods: Mapping[str, ModalityLabels | Prediction],
              thresholds: Mapping[str, np.ndarray] | None, num_classes: int, final: bool,
              extra: Mapping[str, np.ndarray] | None = None) -> Path:
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    arrays: dict[str, np.ndarray] = {"format": np.array(FORMAT), "final": np.array(final),
                                     "modalities": np.array(list(mods)), "num_classes": np.array(num_classes),
                                     **dict(extra or {})}
    for m, v in mods.items():
        arrays[f"label_{m}"] = np.asarray(v.label).astype(dtype)
        arrays[f"conf_{m}"] = np.asarray(v.confidence, dtype=np.float32)
        if isinstance(v, ModalityLabels):
            arrays[f"keep_{m}"] = np.asarray(v.keep, dtype=bool)
        if thresholds is not None:
            arrays[f"thr_{m}"] = np.asarray(thresholds[m], dtype=np.float32)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return Path(path)


def frame_file(out_dir: str | os.PathLike[str], name: str, suffix: str = ".npz") -> Path:
    """``out_dir / name + suffix`` for a frame name (``/`` makes subfolders; no ``..`` or absolute names)."""
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\\" in name:
        raise DataError(f"frame name {name!r} cannot be used as a file name (empty, absolute or with '..')")
    return Path(out_dir) / (name + suffix)


# --------------------------------------------------------------------------- whole-set writer
@dataclass(frozen=True)
class ModalityStats:
    """Per-class figures of one modality over the whole set.

    Attributes:
        predicted: (C,) points predicted as each class.
        kept: (C,) of those, kept by the threshold.
        median: (C,) lower median confidence (NaN: never predicted).
        threshold: (C,) ``min(median, cap)``.
    """

    predicted: np.ndarray
    kept: np.ndarray
    median: np.ndarray
    threshold: np.ndarray

    @property
    def kept_fraction(self) -> float:
        total = int(self.predicted.sum())
        return int(self.kept.sum()) / total if total else 0.0


@dataclass(frozen=True)
class PseudoLabelSummary:
    """What :func:`write_pseudo_labels` wrote: frames, cap and per-modality class statistics."""

    out_dir: Path
    frames: tuple[str, ...]
    num_classes: int
    cap: float
    stats: Mapping[str, ModalityStats]

    def to_dict(self) -> dict[str, Any]:
        def num(v: Any) -> Any:
            return None if isinstance(v, float) and math.isnan(v) else v

        return {
            "format": FORMAT, "frames": list(self.frames), "num_classes": self.num_classes, "cap": self.cap,
            "modalities": {m: {"predicted": s.predicted.tolist(), "kept": s.kept.tolist(),
                               "median": [num(float(v)) for v in s.median],
                               "threshold": [num(float(v)) for v in s.threshold]}
                           for m, s in self.stats.items()},
        }

    @classmethod
    def load(cls, out_dir: str | os.PathLike[str]) -> PseudoLabelSummary:
        """Read ``out_dir/summary.json``."""
        p = Path(out_dir) / SUMMARY_NAME
        if not p.is_file():
            raise DataError(f"{p}: no pseudo-label summary (an unfinished or missing pseudo-label folder)")
        try:
            d = json.loads(p.read_text())
            stats = {m: ModalityStats(np.asarray(s["predicted"], dtype=np.int64), np.asarray(s["kept"], dtype=np.int64),
                                      np.asarray([np.nan if v is None else v for v in s["median"]], dtype=np.float32),
                                      np.asarray([np.nan if v is None else v for v in s["threshold"]], dtype=np.float32))
                     for m, s in d["modalities"].items()}
            return cls(Path(out_dir), tuple(d["frames"]), int(d["num_classes"]), float(d["cap"]), stats)
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{p}: malformed pseudo-label summary ({exc})") from None


FrameProbs = tuple[Any, ...]
"""``(frame name, probs_2d or None, probs_3d or None)`` with (N, C) softmax probabilities, optionally
followed by ``index`` ((N,) indices of the points in their scan) and ``num_points`` (the scan's size),
which the files then record (:meth:`PseudoLabels.full_labels`)."""


def write_pseudo_labels(frames: Iterable[FrameProbs], out_dir: str | os.PathLike[str], num_classes: int,
                        cap: float = DEFAULT_CAP, modalities: Sequence[str] | None = None,
                        progress: bool = False, total: int | None = None,
                        log: Callable[[str], None] | None = None) -> PseudoLabelSummary:
    """Pseudo-labels of a whole target set, one ``<name>.npz`` per frame plus ``summary.json``.

    Pass 1 predicts every frame, writes its labels and confidences (not yet final) and
    collects confidences per class; pass 2 reads each file back, applies the set-wide
    thresholds and rewrites it (atomically) as final. Only the confidences are held in memory.

    Args:
        frames: iterable of ``(name, probs_2d, probs_3d)`` (see :data:`FrameProbs`); iterated once.
        out_dir: output folder (frame names with ``/`` make subfolders).
        num_classes: C.
        cap: upper bound of a threshold (0.9).
        modalities: which of :data:`MODALITIES` to keep (default: every one available).
        progress: show progress bars; ``total``: number of frames for the bar.
        log: optional callable receiving one line per finished pass.

    Returns:
        the :class:`PseudoLabelSummary` (also written to ``out_dir/summary.json``).
    """
    out = Path(out_dir)
    want = tuple(modalities) if modalities is not None else MODALITIES
    bad = [m for m in want if m not in MODALITIES]
    if bad:
        raise DataError(f"unknown pseudo-label modality {bad[0]!r}; known: {', '.join(MODALITIES)}")
    acc: dict[str, ClassConfidences] = {}
    names: list[str] = []
    summary_path = out / SUMMARY_NAME
    if summary_path.exists():
        summary_path.unlink()  # the folder is incomplete until pass 2 writes it again
    with ProgressBar(total, "pseudo-labels: predict", enabled=progress) as bar:
        for item in frames:
            name, p2, p3 = item[:3]
            extra = _point_arrays(item[3], item[4]) if len(item) >= 5 else {}
            if extra and len(extra["index"]) != len(p2 if p2 is not None else p3):
                raise DataError(f"frame {name}: {len(extra['index'])} point indices for "
                                f"{len(p2 if p2 is not None else p3)} predictions")
            if name in names:
                raise DataError(f"frame {name!r} appears twice")
            try:
                preds = {m: v for m, v in predict_modalities(p2, p3).items() if m in want}
            except DataError as exc:
                raise DataError(f"frame {name}: {exc}") from None
            if not preds:
                raise DataError(f"frame {name}: none of the modalities {', '.join(want)} can be computed from "
                                "the probabilities given")
            if names and set(preds) != set(acc):
                raise DataError(f"frame {name}: modalities {sorted(preds)} differ from the first frame's {sorted(acc)}")
            for m, pr in preds.items():
                if m not in acc:
                    acc[m] = ClassConfidences(num_classes)
                acc[m].add(pr.label, pr.confidence)
            _save_npz(frame_file(out, name), preds, None, num_classes, final=False, extra=extra)
            names.append(name)
            bar.advance()
    if not names:
        raise DataError("no frames to pseudo-label")
    if all(int(a.counts().sum()) == 0 for a in acc.values()):
        raise DataError(f"none of the {len(names)} target frame(s) has a point in the camera's view; "
                        "nothing to pseudo-label")
    medians = {m: a.medians() for m, a in acc.items()}
    thresholds = {m: class_thresholds(med, cap) for m, med in medians.items()}
    if log:
        log(f"pseudo-labels: {len(names)} frames predicted; class thresholds computed")
    kept = {m: np.zeros(num_classes, dtype=np.int64) for m in acc}
    with ProgressBar(len(names), "pseudo-labels: threshold", enabled=progress) as bar:
        for name in names:
            path = frame_file(out, name)
            with np.load(path, allow_pickle=False) as z:
                index = z["index"] if "index" in z.files else None
                num_points = int(z["num_points"]) if "num_points" in z.files else None
                mods: dict[str, ModalityLabels] = {}
                for m in acc:
                    lab, conf = z[f"label_{m}"].astype(np.int64), z[f"conf_{m}"]
                    keep = keep_mask(lab, conf, thresholds[m])
                    kept[m] += np.bincount(lab[keep], minlength=num_classes)
                    mods[m] = ModalityLabels(lab, conf, keep)
            PseudoLabels(mods, thresholds, num_classes, index, num_points).save(path)
            bar.advance()
    summary = PseudoLabelSummary(out, tuple(names), num_classes, float(cap),
                                 {m: ModalityStats(acc[m].counts(), kept[m], medians[m], thresholds[m]) for m in acc})
    atomic_write_text(summary_path, json.dumps(summary.to_dict(), indent=1) + "\n")
    if log:
        log(f"pseudo-labels: {len(names)} frames written to {out}")
    return summary


def read_pseudo_labels(out_dir: str | os.PathLike[str], name: str) -> PseudoLabels:
    """The pseudo-labels of frame ``name`` from a folder written by :func:`write_pseudo_labels`."""
    return PseudoLabels.load(frame_file(out_dir, name))
