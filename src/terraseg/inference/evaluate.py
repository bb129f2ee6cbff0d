"""Evaluating a trained model on a dataset: camera images (whole image or sliding window, TTA) and
LiDAR scans (one-pass whole-scan inference, or the Open3D-ML-compatible regular sampling).

Both return an :class:`Evaluation` (the preset's :class:`~terraseg.metrics.EvalResult` plus the
confusion matrix) that :func:`terraseg.metrics.write_reports` turns into the usual reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from terraseg.errors import DataError
from terraseg.frame import Frame
from terraseg.metrics import ConfusionMatrix, EvalPreset, EvalResult
from terraseg.ontology import Ontology
from terraseg.progress import ProgressBar

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Result of evaluating a model on a dataset.

    Attributes:
        result: scores of the preset (IoU per class, mIoU, mAcc, aAcc, category / composite).
        matrix: the accumulated confusion matrix (rows = truth).
        frames: frames evaluated.
        seconds: model time per frame (mean wall-clock seconds of the prediction call).
        per_frame: one row per frame with something to score (``frame``, ``pixels`` / ``points``,
            ``aAcc``, ``mIoU``).
        empty_frames: frames with nothing to score (an empty scan, or every label ignored): they
            count in :attr:`frames` but have no row (their scores would be NaN); a warning names each.
    """

    result: EvalResult
    matrix: ConfusionMatrix
    frames: int
    seconds: float
    per_frame: list[dict[str, Any]] = field(default_factory=list)
    empty_frames: list[str] = field(default_factory=list)


def _check(labels: np.ndarray, ontology: Ontology, where: str) -> None:
    ontology.check_ids(labels, source=where)


def evaluate_frames(frames: Sequence[Frame], predict: Callable[[Frame], np.ndarray], preset: EvalPreset,
                    modality: str, *, progress: bool = False, label: str = "evaluating") -> Evaluation:
    """Score ``predict(frame) -> labels`` against each frame's ground truth.

    Args:
        frames: frames with ``image_labels`` (modality ``image``) or ``point_labels`` (``points``).
        predict: returns an (H, W) id image or (N,) point labels in the preset's ontology.
        preset: the metrics preset (its ontology, ignore ids, grouping).
        modality: ``image`` or ``points``.
    """
    import time

    cm = preset.confusion_matrix()
    onto = preset.onto
    total_t = 0.0
    per_frame: list[dict[str, Any]] = []
    empty: list[str] = []
    with ProgressBar(len(frames), label, enabled=progress) as bar:
        for i in range(len(frames)):
            f = frames[i]
            gt = f.image_labels if modality == "image" else f.point_labels
            where = str(f.source.get("image_labels" if modality == "image" else "point_labels", f.frame_id))
            if gt is None:
                raise DataError(f"{where}: frame {f.frame_id} has no ground truth to evaluate against")
            _check(gt, onto, where)
            t0 = time.perf_counter()
            pred = predict(f)
            total_t += time.perf_counter() - t0
            if pred.shape != gt.shape:
                raise DataError(f"{where}: prediction shape {pred.shape} differs from the ground truth {gt.shape}")
            one = preset.confusion_matrix().update(pred, gt)
            cm += one
            bar.advance()
            if one.total == 0:  # nothing to score (an empty scan, or every label ignored): no NaN row
                empty.append(str(f.frame_id))
                log.warning("%s: frame %s has no %s to score (%s); left out of the per-frame table", where,
                            f.frame_id, "labelled pixels" if modality == "image" else "labelled points",
                            "empty scan" if gt.size == 0 else "every label is ignored")
                continue
            sc = one.scores()
            per_frame.append({"frame": f.frame_id, "pixels" if modality == "image" else "points": int(one.total),
                              "aAcc": float(sc.aacc), "mIoU": float(sc.miou)})
    if len(frames) == 0:
        raise DataError("no frames to evaluate")
    if cm.total == 0:
        raise DataError(f"none of the {len(frames)} frame(s) has {'pixels' if modality == 'image' else 'points'} "
                        "with a label to score (empty scans, or every label ignored)")
    return Evaluation(preset.evaluate(cm), cm, len(frames), total_t / len(frames), per_frame, empty)
