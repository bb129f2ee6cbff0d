"""Evaluating and writing the predictions of cross-modal (camera + LiDAR) checkpoints.

:func:`evaluate_fusion` scores the 2D, 3D and 2D+3D predictions of a
:class:`~terraseg.models.fusion.FusionPredictor` on the in-view points of every frame (the points
the model labels, as in xMUDA), one confusion matrix per modality;
:func:`write_fusion_reports` writes the usual report files for each (2D+3D at the top of the
folder, ``2d/`` and ``3d/`` below) and a side-by-side table ``modalities.md`` / ``.json``.
:func:`write_fusion_prediction` writes one frame's labels: ``labels/<frame>.label`` (2D+3D, the
whole scan, ``fill`` for points outside the view), ``labels_2d/`` and ``labels_3d/``, an
``in_view/<frame>.npy`` index of the labelled points, optionally ``ply/`` (the in-view points,
coloured) and ``overlay/<frame>.jpg`` (the image with the points drawn in their predicted
colours).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.errors import DataError
from terraseg.frame import Frame
from terraseg.inference.evaluate import Evaluation
from terraseg.metrics import EvalPreset
from terraseg.models.fusion.predict import MODALITIES, FusionPrediction, FusionPredictor
from terraseg.ontology import Ontology
from terraseg.progress import ProgressBar

TITLES = {"2d": "2D", "3d": "3D", "2d+3d": "2D+3D"}


@dataclass
class FusionEvaluation:
    """Scores of a cross-modal model on a dataset.

    Attributes:
        results: modality (``2d``, ``3d``, ``2d+3d``) -> :class:`~terraseg.inference.evaluate.Evaluation`.
        frames: frames evaluated.
        points_in_view: points in the camera's view (the ones scored, minus the preset's ignored
            labels); ``points_total``: all points of the frames.
        seconds: mean prediction time per frame.
        per_frame: one row per frame (in-view points, mIoU and aAcc of each modality).
    """

    results: dict[str, Evaluation]
    frames: int
    points_in_view: int
    points_total: int
    seconds: float
    per_frame: list[dict[str, Any]] = field(default_factory=list)

    @property
    def in_view_fraction(self) -> float:
        return self.points_in_view / self.points_total if self.points_total else 0.0


def evaluate_fusion(predictor: FusionPredictor, frames: Sequence[Frame], preset: EvalPreset, *,
                    progress: bool = False) -> FusionEvaluation:
    """Score 2D, 3D and 2D+3D on the in-view points of ``frames`` (which need ``point_labels``).

    Raises:
        DataError: a frame without point labels, labels outside the preset's ontology, or any
            problem of :func:`~terraseg.models.fusion.frame_view` (naming the frame).
    """
    if len(frames) == 0:
        raise DataError("no frames to evaluate")
    cms = {m: preset.confusion_matrix() for m in MODALITIES}
    rows: list[dict[str, Any]] = []
    total_t, n_view, n_all = 0.0, 0, 0
    with ProgressBar(len(frames), "evaluating 2D / 3D / 2D+3D", enabled=progress) as bar:
        for i in range(len(frames)):
            f = frames[i]
            where = str(f.source.get("point_labels", f.frame_id))
            if f.point_labels is None:
                raise DataError(f"{where}: frame {f.frame_id} has no point labels to evaluate against")
            preset.onto.check_ids(np.asarray(f.point_labels), source=where)
            t0 = time.perf_counter()
            pred = predictor.predict(f)
            total_t += time.perf_counter() - t0
            gt = np.asarray(f.point_labels)[pred.index]
            row: dict[str, Any] = {"frame": f.frame_id, "points": pred.num_points, "in_view": len(pred.index)}
            for m in MODALITIES:
                one = preset.confusion_matrix().update(pred.labels_of(m), gt)
                cms[m] += one
                sc = one.scores()
                row[f"mIoU_{m}"] = float(sc.miou)
                row[f"aAcc_{m}"] = float(sc.aacc)
            rows.append(row)
            n_view += len(pred.index)
            n_all += pred.num_points
            bar.advance()
    sec = total_t / len(frames)
    results = {m: Evaluation(preset.evaluate(cms[m]), cms[m], len(frames), sec) for m in MODALITIES}
    return FusionEvaluation(results, len(frames), n_view, n_all, sec, rows)


def modality_table(ev: FusionEvaluation) -> dict[str, dict[str, float | None]]:
    """``{"2D": {"mIoU": ..., "mAcc": ..., "aAcc": ...}, "3D": ..., "2D+3D": ...}`` in percent."""
    return {TITLES[m]: {k: v for k, v in ev.results[m].result.summary().items()} for m in MODALITIES}


def write_fusion_reports(ev: FusionEvaluation, out_dir: str | os.PathLike[str], title: str = "Evaluation",
                         model_name: str = "model") -> dict[str, Path]:
    """The report files of each modality (2D+3D in ``out_dir``, 2D and 3D in ``out_dir/2d``, ``/3d``),
    ``modalities.md`` / ``modalities.json`` (the three side by side, classes as columns) and
    ``per_frame.csv``."""
    from terraseg.io.atomic import atomic_write_text
    from terraseg.metrics import write_reports
    from terraseg.metrics.report import markdown_columns

    out = Path(out_dir)
    paths: dict[str, Path] = {}
    for m, sub in (("2d+3d", out), ("2d", out / "2d"), ("3d", out / "3d")):
        r = write_reports(ev.results[m].result, sub, ev.results[m].matrix, title=f"{title}, {TITLES[m]}",
                          model_name=f"{model_name} {TITLES[m]}")
        paths[m] = r["report"]
    cols = markdown_columns({f"{model_name} {TITLES[m]}": ev.results[m].result for m in MODALITIES})
    head = (f"# {title}: 2D, 3D and 2D+3D\n\n{ev.frames} frames; {ev.points_in_view} of {ev.points_total} points "
            f"in the camera's view ({100 * ev.in_view_fraction:.1f} %) are scored.\n\n")
    summary_rows = ["| prediction | mIoU | mAcc | aAcc |", "|---|---:|---:|---:|"]
    for name, s in modality_table(ev).items():
        def f(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"
        summary_rows.append(f"| {name} | {f(s.get('mIoU'))} | {f(s.get('mAcc'))} | {f(s.get('aAcc'))} |")
    paths["modalities"] = atomic_write_text(out / "modalities.md", head + "\n".join(summary_rows) + "\n\n" + cols)
    paths["modalities_json"] = atomic_write_text(out / "modalities.json", json.dumps(
        {"frames": ev.frames, "points_in_view": ev.points_in_view, "points_total": ev.points_total,
         "results": {m: ev.results[m].result.to_dict() for m in MODALITIES}}, indent=2) + "\n")
    keys = ["frame", "points", "in_view"] + [f"{k}_{m}" for m in MODALITIES for k in ("mIoU", "aAcc")]
    lines = [",".join(keys)] + [",".join(str(r[k]) if not isinstance(r[k], float) else f"{r[k]:.6f}" for k in keys)
                                for r in ev.per_frame]
    paths["per_frame"] = atomic_write_text(out / "per_frame.csv", "\n".join(lines) + "\n")
    return paths


def draw_points(image: np.ndarray, uv: np.ndarray, depth_order: np.ndarray | None, colors: np.ndarray,
                radius: int = 1) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) with squares of side ``2 radius + 1`` at the pixels ``uv`` (M, 2),
    coloured ``colors`` (M, 3) uint8; nearer points (smaller ``depth_order``) are drawn last."""
    out = image.copy()
    h, w = out.shape[:2]
    px = np.floor(uv + 0.5).astype(np.int64)
    order = np.argsort(-depth_order) if depth_order is not None else np.arange(len(px))
    px, col = px[order], colors[order]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            r, c = px[:, 1] + dy, px[:, 0] + dx
            ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            out[r[ok], c[ok]] = col[ok]
    return out


def write_fusion_prediction(out_dir: str | os.PathLike[str], frame: Frame, pred: FusionPrediction,
                            ontology: Ontology, *, fill: int = 0, ply: bool = False,
                            overlay: bool = True) -> dict[str, Path]:
    """Write one frame's predictions (see the module docstring); returns the paths by kind."""
    from terraseg.io.atomic import atomic_path
    from terraseg.io.images import write_image
    from terraseg.io.scans import write_label

    out = Path(out_dir)
    rel = Path(*frame.frame_id.split("/"))
    paths: dict[str, Path] = {}
    for key, m in (("labels", "2d+3d"), ("labels_2d", "2d"), ("labels_3d", "3d")):
        p = out / key / f"{rel}.label"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_label(p, pred.full(pred.labels_of(m).astype(np.uint32), fill))
        paths[key] = p
    p = out / "in_view" / f"{rel}.npy"
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, pred.index.astype(np.int64))
    paths["in_view"] = p
    labels = pred.labels
    if ply and frame.points is not None:
        from terraseg.io.ply import write_labeled_ply

        p = out / "ply" / f"{rel}.ply"
        p.parent.mkdir(parents=True, exist_ok=True)
        paths["ply"] = write_labeled_ply(p, np.asarray(frame.points)[pred.index], labels, ontology)
    if overlay and frame.image is not None:
        p = out / "overlay" / f"{rel}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        pal = ontology.palette
        colors = pal[np.clip(labels, 0, len(pal) - 1)]
        radius = max(1, int(round(min(frame.image.shape[:2]) / 400)))
        paths["overlay"] = write_image(p, draw_points(frame.image, pred.uv, None, colors, radius))
    return paths
