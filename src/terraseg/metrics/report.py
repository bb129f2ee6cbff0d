"""Reports of evaluation results: Markdown, CSV, JSON and a confusion-matrix heatmap PNG.

Values in tables are percentages with two decimals; ``-`` marks an undefined value (a class
absent from both ground truth and prediction).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from terraseg.io.atomic import atomic_path, atomic_write_text
from terraseg.metrics.presets import EvalResult


def _pct(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{100.0 * x:.2f}"


def markdown_summary(result: EvalResult) -> str:
    """A one-row table of the headline numbers (aAcc, mIoU, mAcc, category, composite)."""
    s = result.summary()
    keys = list(s)
    head = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    return head + "| " + " | ".join("-" if s[k] is None else f"{s[k]:.2f}" for k in keys) + " |\n"


def markdown_rows(result: EvalResult) -> str:
    """Per-class table with one row per class (suits 64 classes)."""
    sc = result.scores
    lines = ["| ID | Class | IoU (%) | Acc (%) | Precision (%) | F1 (%) | GT count | Pred count |",
             "|---|---|---|---|---|---|---|---|"]
    for i, name in enumerate(sc.class_names):
        mark = " (excluded)" if int(sc.class_ids[i]) in sc.excluded_ids else ""
        lines.append(f"| {sc.class_ids[i]} | {name}{mark} | {_pct(sc.iou[i])} | {_pct(sc.acc[i])} | "
                     f"{_pct(sc.precision[i])} | {_pct(sc.f1[i])} | {sc.gt_count[i]} | {sc.pred_count[i]} |")
    return "\n".join(lines) + "\n"


def markdown_columns(results: Mapping[str, EvalResult], bold_best: bool = True, skip_absent: bool = False) -> str:
    """Per-class IoU with classes as columns and one row per model (the RELLIS-3D paper layout).

    ``results`` maps a model name to its result; all must share the preset's class list.
    With ``bold_best``, the best value of each column is bold when several models are compared.
    With ``skip_absent``, classes that are undefined (``-``) for every model get no column.
    """
    names = list(results)
    first = results[names[0]].scores
    classes = first.class_names
    iou = np.array([results[n].scores.iou for n in names])
    if skip_absent:
        keep = ~np.all(np.isnan(iou), axis=0)
        iou = iou[:, keep]
        classes = [c for c, k in zip(classes, keep) if k]
    miou = np.array([results[n].fine_miou for n in names])
    header = "| Model | mIoU (%) | " + " | ".join(classes) + " |"
    sep = "|" + " --- |" * (len(classes) + 2)
    lines = [header, sep]

    def cell(col: np.ndarray, r: int) -> str:
        txt = _pct(col[r])
        if bold_best and len(names) > 1 and np.isfinite(col[r]) and col[r] == np.nanmax(col):
            return f"**{txt}**"
        return txt

    for r, n in enumerate(names):
        cells = [cell(miou, r)] + [cell(iou[:, j], r) for j in range(len(classes))]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_categories(result: EvalResult) -> str:
    """Category IoU table (empty string when the preset has no grouping)."""
    cs = result.category_scores
    if cs is None:
        return ""
    lines = ["| Category | IoU (%) | Acc (%) | Precision (%) |", "|---|---|---|---|"]
    for i, name in enumerate(cs.class_names):
        lines.append(f"| {name} | {_pct(cs.iou[i])} | {_pct(cs.acc[i])} | {_pct(cs.precision[i])} |")
    return "\n".join(lines) + "\n"


def markdown_report(result: EvalResult, title: str = "Evaluation") -> str:
    """A full Markdown report: preset, headline numbers, categories, per-class rows, notes."""
    d = result.preset.describe()
    parts = [f"# {title}\n",
             f"Preset `{d['name']}` on ontology `{d['ontology']}`: {d['description']}\n",
             f"- ignored ground-truth ids: {', '.join(map(str, d['ignore'])) or 'none'}",
             f"- left out of the mean: {', '.join(d['exclude_from_mean']) or 'none'}",
             f"- category grouping: {d['grouping'] or 'none'} (uncategorized classes: {d['uncategorized']})",
             f"- counted elements: {result.scores.total}\n",
             "## Summary (%)\n", markdown_summary(result)]
    if result.category_scores is not None:
        parts += ["## Categories\n", markdown_categories(result)]
    parts += ["## Per class\n", markdown_rows(result)]
    if result.notes:
        parts += ["## Notes\n", "\n".join(f"- {n}" for n in result.notes) + "\n"]
    return "\n".join(parts)


def csv_per_class(result: EvalResult) -> str:
    """Per-class CSV: id, name, iou, acc, precision, f1 (fractions, empty = undefined), counts."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "name", "iou", "acc", "precision", "f1", "gt_count", "pred_count", "excluded"])
    sc = result.scores
    for i, name in enumerate(sc.class_names):
        vals = [sc.iou[i], sc.acc[i], sc.precision[i], sc.f1[i]]
        w.writerow([int(sc.class_ids[i]), name, *("" if not np.isfinite(v) else f"{v:.6f}" for v in vals),
                    int(sc.gt_count[i]), int(sc.pred_count[i]), int(sc.class_ids[i]) in sc.excluded_ids])
    return buf.getvalue()


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | os.PathLike[str],
                   normalize: str = "row", top_k: int | None = None, title: str = "Confusion matrix") -> Path:
    """Save a heatmap PNG of a confusion matrix (rows = ground truth, columns = prediction).

    Args:
        matrix: (C, C) counts aligned with ``class_names``.
        normalize: ``"row"`` (recall per true class, the default), ``"col"`` (precision), or
            ``"none"`` (log-scaled counts).
        top_k: keep only the k classes with the most ground-truth elements.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    m = np.asarray(matrix, dtype=np.float64)
    names = list(class_names)
    if top_k is not None and top_k < len(names):
        keep = np.sort(np.argsort(-m.sum(axis=1), kind="stable")[:top_k])
        m = m[np.ix_(keep, keep)]
        names = [names[i] for i in keep]
    if normalize == "row":
        den = m.sum(axis=1, keepdims=True)
        data, norm, label = np.divide(m, den, out=np.zeros_like(m), where=den > 0), None, "fraction of true class"
    elif normalize == "col":
        den = m.sum(axis=0, keepdims=True)
        data, norm, label = np.divide(m, den, out=np.zeros_like(m), where=den > 0), None, "fraction of predicted"
    elif normalize == "none":
        data, norm, label = np.where(m > 0, m, np.nan), LogNorm(vmin=1, vmax=max(m.max(), 1)), "count"
    else:
        raise ValueError("normalize must be 'row', 'col' or 'none'")
    n = len(names)
    size = max(5.0, min(0.28 * n + 3, 26.0))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(data, cmap="viridis", norm=norm, vmin=None if norm else 0.0, vmax=None if norm else 1.0,
                   interpolation="nearest")
    ax.set_xticks(range(n), names, rotation=90, fontsize=max(5, 10 - n // 10))
    ax.set_yticks(range(n), names, fontsize=max(5, 10 - n // 10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if n <= 25 and normalize != "none":
        for r in range(n):
            for c in range(n):
                if data[r, c] >= 0.01:
                    ax.text(c, r, f"{data[r, c]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if data[r, c] < 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=label)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def write_reports(result: EvalResult, out_dir: str | os.PathLike[str], matrix_cm: object | None = None,
                  title: str = "Evaluation", model_name: str = "model") -> dict[str, Path]:
    """Write every report of a result into ``out_dir`` and return their paths by kind.

    Files: ``report.md`` (full), ``per_class.md`` (classes as rows), ``per_class_columns.md``
    (classes as columns), ``per_class.csv``, ``metrics.json``, and when ``matrix_cm`` (a
    :class:`~terraseg.metrics.ConfusionMatrix`) is given, ``confusion.npz`` and ``confusion.png``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "report": atomic_write_text(out / "report.md", markdown_report(result, title)),
        "per_class_rows": atomic_write_text(out / "per_class.md", markdown_rows(result)),
        "per_class_columns": atomic_write_text(out / "per_class_columns.md", markdown_columns({model_name: result})),
        "csv": atomic_write_text(out / "per_class.csv", csv_per_class(result)),
        "json": atomic_write_text(out / "metrics.json", json.dumps(result.to_dict(), indent=2) + "\n"),
    }
    if matrix_cm is not None:
        from terraseg.metrics.confusion import ConfusionMatrix

        assert isinstance(matrix_cm, ConfusionMatrix)
        paths["matrix"] = matrix_cm.save(out / "confusion.npz")
        sc = result.scores
        present = (sc.gt_count + sc.pred_count) > 0  # classes absent everywhere would be empty rows
        ids = sc.class_ids[present] if present.any() else sc.class_ids
        names = [n for n, k in zip(sc.class_names, present) if k] if present.any() else sc.class_names
        sub = matrix_cm.matrix[np.ix_(ids, ids)]
        paths["heatmap"] = plot_confusion(sub, names, out / "confusion.png",
                                          title=f"{title}: row-normalised confusion")
    return paths
