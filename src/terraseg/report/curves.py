"""Training curves of a terraseg run folder: read them and plot loss, IoU and accuracy.

A run folder (see :mod:`terraseg.training.engine`) holds the same scalars in up to three places;
:func:`read_curves` reads them in this order:

1. ``metrics.csv`` (Lightning ``CSVLogger``): one row per logging step and per validation, columns
   ``epoch, step, train/loss, train/acc, train/lr, ..., val/mIoU, val/IoU/<class>, ...``, cells
   of scalars not logged on that row empty.
2. ``history.jsonl`` (one JSON object per validation: ``epoch, step, val/...``): adds the
   validation series ``metrics.csv`` lacks (or all of them when there is no CSV).
3. TensorBoard event files (``tb/events.out.tfevents.*``, read with tensorboard's
   ``EventAccumulator``) when neither file exists.

Units are those logged by terraseg: losses unitless, ``train/acc`` and every ``val/`` IoU or
accuracy in percent, ``train/lr`` as is. The x axis is the optimiser step.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from terraseg.errors import DataError
from terraseg.report.plots import figure, save_figure, styled

Series = tuple[np.ndarray, np.ndarray]
"""(steps int64 (T,), values float64 (T,)), sorted by step."""

_SKIP_COLUMNS = {"epoch", "step"}


@dataclass
class TrainingCurves:
    """Scalar series of one run.

    Attributes:
        name: label for plots (default: the run folder's name).
        run_dir: the run folder (or the log file given).
        sources: the files the series were read from, in reading order.
        series: tag (``train/loss``, ``val/mIoU`` ...) -> (steps int64, values float64), sorted by step.
    """

    name: str
    run_dir: Path
    sources: list[str] = field(default_factory=list)
    series: dict[str, Series] = field(default_factory=dict)

    def tags(self) -> list[str]:
        return sorted(self.series)

    def last(self, tag: str) -> float | None:
        """The last logged value of a tag (None when the tag is absent)."""
        s = self.series.get(tag)
        return None if s is None or s[1].size == 0 else float(s[1][-1])

    def best(self, tag: str, mode: str = "max") -> tuple[int, float] | None:
        """(step, value) of the best finite value of a tag, or None."""
        s = self.series.get(tag)
        if s is None or not np.isfinite(s[1]).any():
            return None
        v = np.where(np.isfinite(s[1]), s[1], -np.inf if mode == "max" else np.inf)
        i = int(np.argmax(v) if mode == "max" else np.argmin(v))
        return int(s[0][i]), float(s[1][i])


def _to_series(points: Mapping[str, list[tuple[int, float]]]) -> dict[str, Series]:
    out: dict[str, Series] = {}
    for tag, pts in points.items():
        if not pts:
            continue
        steps = np.array([p[0] for p in pts], dtype=np.int64)
        vals = np.array([p[1] for p in pts], dtype=np.float64)
        order = np.argsort(steps, kind="stable")
        out[tag] = (steps[order], vals[order])
    return out


def _float(cell: str) -> float | None:
    cell = cell.strip()
    if not cell:
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def read_metrics_csv(path: str | os.PathLike[str]) -> dict[str, Series]:
    """Series of a Lightning ``metrics.csv`` (empty cells skipped; rows without a step use their index).

    Raises :class:`DataError` naming the file when it has no header or a cell is not a number.
    """
    p = Path(path)
    points: dict[str, list[tuple[int, float]]] = {}
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                raise DataError(f"{p}: empty metrics CSV (no header row)")
            for i, row in enumerate(reader):
                step_v = _float(row.get("step") or "")
                step = int(step_v) if step_v is not None and math.isfinite(step_v) else i
                for key, cell in row.items():
                    if key is None or key in _SKIP_COLUMNS or cell is None or not cell.strip():
                        continue
                    v = _float(cell)
                    if v is None:
                        raise DataError(f"{p}: row {i + 2}, column {key!r}: {cell!r} is not a number")
                    points.setdefault(key, []).append((step, v))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{p}: unreadable metrics CSV ({exc})") from exc
    return _to_series(points)


def read_history_jsonl(path: str | os.PathLike[str]) -> dict[str, Series]:
    """Series of a terraseg ``history.jsonl`` (one JSON object per validation)."""
    p = Path(path)
    points: dict[str, list[tuple[int, float]]] = {}
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: unreadable history file ({exc})") from exc
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: line {i + 1} is not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{p}: line {i + 1} is not a JSON object")
        step = int(row.get("step", i))
        for key, v in row.items():
            if key in _SKIP_COLUMNS or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            points.setdefault(key, []).append((step, float(v)))
    return _to_series(points)


def read_tensorboard(log_dir: str | os.PathLike[str]) -> dict[str, Series]:
    """Scalar series of every TensorBoard event file under ``log_dir`` (searched recursively)."""
    root = Path(log_dir)
    files = sorted(root.rglob("events.out.tfevents.*")) if root.is_dir() else []
    if not files:
        raise DataError(f"{root}: no TensorBoard event files (events.out.tfevents.*)")
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:  # pragma: no cover - tensorboard is a dependency of training
        raise DataError(f"{root}: reading TensorBoard logs needs the tensorboard package ({exc})") from exc
    points: dict[str, list[tuple[int, float]]] = {}
    for d in sorted({f.parent for f in files}):
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        try:
            acc.Reload()
        except Exception as exc:  # corrupt event files raise assorted errors
            raise DataError(f"{d}: unreadable TensorBoard event file ({exc})") from exc
        for tag in acc.Tags().get("scalars", []):
            points.setdefault(tag, []).extend((int(e.step), float(e.value)) for e in acc.Scalars(tag))
    return _to_series(points)


def read_curves(run: str | os.PathLike[str], name: str | None = None) -> TrainingCurves:
    """Read the training curves of a run folder (or of one ``.csv`` / ``.jsonl`` log file).

    ``metrics.csv`` comes first; ``history.jsonl`` adds validation series the CSV lacks;
    TensorBoard event files are read only when neither exists. Raises :class:`DataError` when
    the folder does not exist or holds none of them.
    """
    p = Path(run)
    if not p.exists():
        raise DataError(f"{p}: run folder not found")
    curves = TrainingCurves(name=name or (p.name if p.is_dir() else p.stem), run_dir=p)
    if p.is_file():
        series = read_metrics_csv(p) if p.suffix.lower() == ".csv" else read_history_jsonl(p)
        curves.sources.append(str(p))
        curves.series = series
    else:
        if (p / "metrics.csv").is_file():
            curves.series.update(read_metrics_csv(p / "metrics.csv"))
            curves.sources.append(str(p / "metrics.csv"))
        if (p / "history.jsonl").is_file():
            hist = read_history_jsonl(p / "history.jsonl")
            added = {k: v for k, v in hist.items() if k not in curves.series}
            if added or not curves.sources:
                curves.series.update(added)
                curves.sources.append(str(p / "history.jsonl"))
        if not curves.sources:
            curves.series = read_tensorboard(p)
            curves.sources.append(str(p / "tb") if (p / "tb").is_dir() else str(p))
    if not curves.series:
        raise DataError(f"{p}: no training curves (metrics.csv, history.jsonl or TensorBoard events with scalars)")
    return curves


PANELS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "loss": ("loss", "loss", ("train/loss", "train/loss_main", "train/loss_aux", "val/loss")),
    "iou": ("IoU", "IoU (%)", ("val/mIoU", "val/category_mIoU", "val/composite_mIoU")),
    "accuracy": ("accuracy", "accuracy (%)", ("train/acc", "val/aAcc", "val/mAcc")),
}
"""Plot panels: key -> (title, y label, tags drawn when present)."""


@styled
def plot_training_curves(runs: Sequence[TrainingCurves], path: str | os.PathLike[str],
                         panels: Sequence[str] = ("loss", "iou", "accuracy"), smooth: int = 1) -> Path:
    """Save one PNG with a panel per quantity (loss, IoU, accuracy), every run overlaid.

    Colours tell runs apart, line styles tell tags apart (train solid, validation with markers).
    ``smooth`` > 1 applies a trailing moving average of that many points to training series.
    """
    keys = [k for k in panels if k in PANELS]
    fig, axes = figure(len(keys), 1, width=9.0, height=3.0 * len(keys), squeeze=False)
    colors = [f"C{i}" for i in range(10)]
    styles = ["-", "--", ":", "-."]
    for ax, key in zip(axes[:, 0], keys):
        ptitle, ylabel, tags = PANELS[key]
        drawn = 0
        for r, run in enumerate(runs):
            for t, tag in enumerate(tags):
                if tag not in run.series:
                    continue
                steps, vals = run.series[tag]
                if tag.startswith("train/") and smooth > 1 and vals.size >= smooth:
                    kernel = np.ones(smooth) / smooth
                    vals = np.convolve(vals, kernel, mode="valid")
                    steps = steps[smooth - 1:]
                marker = "o" if tag.startswith("val/") else None
                ax.plot(steps, vals, color=colors[r % 10], linestyle=styles[t % 4], marker=marker, markersize=3,
                        linewidth=1.4, label=f"{run.name}: {tag}" if len(runs) > 1 else tag)
                drawn += 1
        ax.set_ylabel(ylabel)
        ax.set_title(ptitle if drawn else f"{ptitle} (not logged)", loc="left", fontsize=10)
        if drawn:
            ax.legend(fontsize=7, loc="best", ncol=2 if drawn > 4 else 1)
    axes[-1, 0].set_xlabel("step")
    return save_figure(fig, path)
