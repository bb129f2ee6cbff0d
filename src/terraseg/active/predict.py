"""A cross-modal model over a target dataset: per-frame predictions, features and pseudo-label folders.

What ``terraseg pseudo-label`` and the query rounds of ``terraseg adapt`` read from a model:
for each paired frame, the in-view points (their indices in the scan, pixels, coordinates), the
2D and 3D softmax probabilities and, for the feature-space strategies, each network's features
at the points (:func:`predict_frame`). :func:`pseudo_label_dataset` writes the pseudo-label folder
of a whole dataset (:func:`terraseg.active.write_pseudo_labels`: the per-class median rule per
modality over the whole set) plus a per-class table (``classes.csv``).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terraseg.active.pseudo_labels import DEFAULT_CAP, PseudoLabelSummary, write_pseudo_labels
from terraseg.errors import DataError
from terraseg.frame import Frame
from terraseg.io.atomic import atomic_write_text
from terraseg.ontology import Ontology

CLASS_TABLE = "classes.csv"
"""Per-class table of a pseudo-label folder (next to ``summary.json``)."""


@dataclass
class FramePrediction:
    """A model's view of one frame's in-view points (M of the scan's N points, C classes).

    Attributes:
        name: the frame id (also the pseudo-label / query file name).
        frame: the frame itself.
        index: (M,) int64 indices of the in-view points in the scan.
        uv: (M, 2) float64 pixel coordinates ``(col, row)`` in the frame's image.
        probs_2d, probs_3d: (M, C) float32 softmax of each network.
        feats_2d, feats_3d: (M, D) float32 features of each network at the points, or None.
    """

    name: str
    frame: Frame
    index: np.ndarray
    uv: np.ndarray
    probs_2d: np.ndarray
    probs_3d: np.ndarray
    feats_2d: np.ndarray | None = None
    feats_3d: np.ndarray | None = None

    @property
    def num_points(self) -> int:
        assert self.frame.points is not None
        return len(self.frame.points)


def load_fusion_predictor(checkpoint: str | os.PathLike[str], device: str | torch.device | None = None) -> Any:
    """A :class:`~terraseg.models.fusion.FusionPredictor` of ``checkpoint``; one clear
    :class:`DataError` when it is a camera-only or LiDAR-only checkpoint."""
    from terraseg.models.fusion import FusionPredictor
    from terraseg.models.surgery import read_checkpoint

    p = Path(checkpoint)
    if not p.is_file():
        raise DataError(f"{p}: checkpoint not found")
    ck = read_checkpoint(p)
    arch = ck.spec.get("arch")
    if arch != "fusion":
        raise DataError(f"{p}: a {arch!r} checkpoint (one network); pseudo-labels and adaptation need a "
                        "cross-modal camera + LiDAR checkpoint (a task: fusion run, e.g. configs/sim_xmuda.yaml)")
    return FusionPredictor.from_checkpoint(p, device=device)


@torch.inference_mode()
def predict_frame(predictor: Any, frame: Frame, features: bool = False) -> FramePrediction:
    """2D / 3D probabilities (and features with ``features``) of a frame's in-view points.

    The model is run as :meth:`FusionPredictor.predict` runs it (eval mode, the checkpoint's
    preprocessing); its training / eval mode is restored afterwards.
    """
    from terraseg.models.fusion.predict import _to

    model = predictor.model
    was_training = model.training
    model.eval()
    try:
        batch, view = predictor.prepare(frame)
        out = model(_to(batch, predictor.device))
    finally:
        model.train(was_training)
    p2, p3, _ = out.probabilities()
    m = len(view.index)

    def np32(t: torch.Tensor) -> np.ndarray:
        return t[:m].float().cpu().numpy().astype(np.float32)

    return FramePrediction(str(frame.frame_id), frame, np.asarray(view.index, dtype=np.int64),
                           np.asarray(view.uv, dtype=np.float64), np32(p2), np32(p3),
                           np32(out.features_2d) if features else None, np32(out.features_3d) if features else None)


def iter_predictions(predictor: Any, frames: Iterable[Frame], features: bool = False) -> Iterator[FramePrediction]:
    """:func:`predict_frame` over ``frames``."""
    for frame in frames:
        yield predict_frame(predictor, frame, features)


def write_class_table(summary: PseudoLabelSummary, ontology: Ontology | None, path: str | os.PathLike[str]) -> Path:
    """``classes.csv``: ``modality,id,class,predicted,kept,kept_percent,median,threshold`` per class
    predicted at least once (written atomically)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["modality", "id", "class", "predicted", "kept", "kept_percent", "median", "threshold"])
    for m, s in summary.stats.items():
        for c in np.flatnonzero(s.predicted > 0):
            name = ontology.name_of(int(c)) if ontology is not None and int(c) in ontology.ids else str(c)
            w.writerow([m, int(c), name, int(s.predicted[c]), int(s.kept[c]),
                        f"{100.0 * s.kept[c] / s.predicted[c]:.2f}",
                        "" if math.isnan(s.median[c]) else f"{s.median[c]:.6f}",
                        "" if math.isnan(s.threshold[c]) else f"{s.threshold[c]:.6f}"])
    return atomic_write_text(path, buf.getvalue())


def pseudo_label_frames(predictor: Any, frames: Iterable[Frame], out_dir: str | os.PathLike[str],
                        num_classes: int, ontology: Ontology | None = None, cap: float = DEFAULT_CAP,
                        progress: bool = False, total: int | None = None,
                        log: Callable[[str], None] | None = None) -> PseudoLabelSummary:
    """Pseudo-labels of ``frames`` with a model: ``<frame>.npz`` each (2D, 3D, ensemble; the scan
    indices of the in-view points), ``summary.json`` and ``classes.csv`` in ``out_dir``."""

    def items() -> Iterator[tuple[Any, ...]]:
        for pr in iter_predictions(predictor, frames):
            yield pr.name, pr.probs_2d, pr.probs_3d, pr.index, pr.num_points

    summary = write_pseudo_labels(items(), out_dir, num_classes, cap=cap, progress=progress, total=total, log=log)
    write_class_table(summary, ontology, Path(out_dir) / CLASS_TABLE)
    return summary


def pseudo_label_dataset(checkpoint: str | os.PathLike[str], data: str | os.PathLike[str],
                         out_dir: str | os.PathLike[str], split: str = "train", kind: str = "auto",
                         cap: float = DEFAULT_CAP, max_frames: int | None = None,
                         device: str | None = None, overwrite: bool = False, progress: bool = False,
                         log: Callable[[str], None] | None = None) -> PseudoLabelSummary:
    """``terraseg pseudo-label``: the pseudo-labels of a target dataset with a cross-modal checkpoint.

    Args:
        checkpoint: a ``task: fusion`` checkpoint (camera-only / LiDAR-only ones are refused).
        data: the target dataset folder (any paired reader: ``kind``); ``split``: its split.
        out_dir: output folder (must be empty or absent unless ``overwrite``).
        cap: the threshold cap of ``min(median, cap)`` (xMUDA 0.9).
        max_frames: only the first N frames.

    Returns:
        the :class:`PseudoLabelSummary` (also ``summary.json``; per class ``classes.csv``).
    """
    from terraseg.datasets import open_dataset

    if not 0.0 < cap <= 1.0:
        raise DataError(f"cap must lie in (0, 1], got {cap}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise DataError(f"{out}: exists and is not empty; pass --overwrite to replace its pseudo-labels")
    predictor = load_fusion_predictor(checkpoint, device)
    if not Path(data).exists():
        raise DataError(f"{data}: target dataset not found")
    ds = open_dataset(data, kind=kind, split=split)
    n = len(ds) if max_frames is None else min(len(ds), int(max_frames))
    if n == 0:
        raise DataError(f"{data}: no frames in split {split!r}")
    onto = predictor.ontology
    num_classes = int(onto.max_id + 1) if onto is not None else int(predictor.model.num_classes)
    return pseudo_label_frames(predictor, (ds[i] for i in range(n)), out, num_classes, onto, cap,
                               progress=progress, total=n, log=log)
