"""The report's figures: one function per plot, each saving a PNG atomically and returning its path.

All figures use matplotlib's Agg backend and one style (:data:`STYLE`). Scores passed in are
fractions in 0..1 (NaN = undefined) and are drawn in percent. Per-class inputs are aligned
arrays: ``names[i]`` is the class of ``values[i]``; ``colors`` are (K, 3) uint8 RGB rows from the
ontology palette in the same order. Where two models are compared, the first model's bars are
solid and the second's hatched and lighter, each in the class colour.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from terraseg.io.atomic import atomic_path

STYLE: dict[str, Any] = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
}
"""matplotlib rc settings shared by every report figure."""

MODEL_HATCH = ("", "////", "..", "xx")
MODEL_MARKERS = ("o", "^", "s", "D")
EDGE = "#333333"

F = TypeVar("F", bound=Callable[..., Any])


def _mpl() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def styled(fn: F) -> F:
    """Run a plotting function under :data:`STYLE` (without touching global rc settings)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        _mpl()
        with matplotlib.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def figure(nrows: int = 1, ncols: int = 1, width: float = 8.0, height: float = 4.0, **kw: Any) -> tuple[Any, Any]:
    """``plt.subplots`` (size in inches); call it inside a :func:`styled` function."""
    return _mpl().subplots(nrows, ncols, figsize=(width, height), **kw)


def save_figure(fig: Any, path: str | os.PathLike[str], tight: bool = True,
                rect: tuple[float, float, float, float] | None = None) -> Path:
    """Save a figure as PNG atomically (after ``tight_layout`` within ``rect``), close it, return the path."""
    plt = _mpl()
    try:
        if tight:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "tight_layout not applied" on odd layouts
                fig.tight_layout(rect=rect) if rect else fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def _rgb01(colors: np.ndarray | None, n: int) -> np.ndarray:
    if colors is None:
        return np.tile(np.array([[0.35, 0.45, 0.65]]), (n, 1))
    return np.asarray(colors, dtype=np.float64).reshape(n, 3) / 255.0


def _pct(x: np.ndarray) -> np.ndarray:
    return 100.0 * np.asarray(x, dtype=np.float64)


def rank_classes(values: np.ndarray, top: int | None = None) -> np.ndarray:
    """Indices of classes by descending value, NaN last; the first ``top`` when given."""
    v = np.asarray(values, dtype=np.float64)
    order = np.lexsort((-np.nan_to_num(v, nan=-np.inf), ~np.isfinite(v)))
    return order[:top] if top is not None else order


@styled
def plot_per_class_iou(names: Sequence[str], iou: Mapping[str, np.ndarray], path: str | os.PathLike[str],
                       colors: np.ndarray | None = None, top: int | None = None, title: str | None = None) -> Path:
    """Horizontal per-class IoU bars, sorted by the first model's IoU; models side by side.

    Args:
        names: K class names.
        iou: model name -> (K,) IoU fractions (NaN = class absent; drawn last, without a bar).
        colors: (K, 3) uint8 class colours.
        top: draw only the ``top`` best classes of the first model.
    """
    models = list(iou)
    first = np.asarray(iou[models[0]], dtype=np.float64)
    idx = rank_classes(first, top)
    k, m = len(idx), len(models)
    rgb = _rgb01(colors, len(names))[idx]
    plt = _mpl()
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(8.5, max(2.5, 0.16 * k * max(m, 1.5) + 1.2)))
    h = 0.8 / m
    y = np.arange(k)
    for j, model in enumerate(models):
        vals = _pct(np.asarray(iou[model], dtype=np.float64)[idx])
        pos = y - 0.4 + h * (j + 0.5)
        face = np.concatenate([rgb, np.full((k, 1), 1.0 if j == 0 else 0.5)], axis=1)  # later models lighter
        ax.barh(pos, np.nan_to_num(vals), height=h, color=face, edgecolor=EDGE, linewidth=0.5,
                hatch=MODEL_HATCH[j % len(MODEL_HATCH)])
        if k <= 40:
            for p, v in zip(pos, vals):
                ax.text((v if np.isfinite(v) else 0) + 0.8, p, "-" if not np.isfinite(v) else f"{v:.1f}",
                        va="center", fontsize=6)
    ax.set_yticks(y, [names[i] for i in idx])
    ax.set_ylim(k - 0.5, -0.5)  # first class on top, half a bar of margin
    ax.set_xlim(0, 105)
    ax.set_xlabel("IoU (%)")
    ax.grid(axis="y", visible=False)
    ax.set_title(title or (f"top {k} classes by {models[0]} IoU" if top else "IoU of every class"))
    if m > 1:
        ax.legend(handles=[Patch(facecolor="#bbbbbb", edgecolor=EDGE, hatch=MODEL_HATCH[j % len(MODEL_HATCH)],
                                 label=model) for j, model in enumerate(models)], loc="lower right")
    return save_figure(fig, path)


def _model_handles(models: Sequence[str]) -> list[Any]:
    """Legend entries telling models apart by marker (grey, since colours are the classes')."""
    from matplotlib.lines import Line2D

    return [Line2D([], [], linestyle="", marker=MODEL_MARKERS[j % len(MODEL_MARKERS)], markersize=7,
                   markerfacecolor="#bbbbbb", markeredgecolor=EDGE, label=m) for j, m in enumerate(models)]


def _annotate(ax: Any, xs: np.ndarray, ys: np.ndarray, labels: Sequence[str], max_labels: int = 40) -> None:
    """Label points with small text, skipping labels that would overlap one already placed.

    Outliers (far from the centre of mass, in units of the spread) are labelled first, so crowded
    clusters keep their most extreme members' names.
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return
    sx = (np.nanmax(x[ok]) - np.nanmin(x[ok])) or 1.0
    sy = (np.nanmax(y[ok]) - np.nanmin(y[ok])) or 1.0
    nx, ny = (x - np.nanmean(x[ok])) / sx, (y - np.nanmean(y[ok])) / sy
    order = [int(i) for i in np.argsort(-np.nan_to_num(np.hypot(nx, ny), nan=-1.0), kind="stable") if ok[i]]
    placed: list[tuple[float, float]] = []
    for i in order:
        if len(placed) >= max_labels:
            break
        w = 0.012 * len(labels[i]) + 0.02  # label box in fractions of the data range
        if any(abs(nx[i] - px) < w and abs(ny[i] - py) < 0.035 for px, py in placed):
            continue
        placed.append((nx[i], ny[i]))
        ax.annotate(labels[i], (x[i], y[i]), xytext=(3, 2), textcoords="offset points", fontsize=6,
                    color="#222222")


@styled
def plot_frequency_iou(names: Sequence[str], frequency: np.ndarray, iou: Mapping[str, np.ndarray],
                       path: str | os.PathLike[str], colors: np.ndarray | None = None) -> Path:
    """Scatter of log10 class frequency (share of counted ground-truth elements) against IoU.

    Classes absent from the ground truth (frequency 0) are left out. Two models: one marker each,
    a thin line joins a class's two points.
    """
    freq = np.asarray(frequency, dtype=np.float64)
    ok = freq > 0
    x = np.log10(np.where(ok, freq, np.nan))
    rgb = _rgb01(colors, len(names))
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(10.0, 6.5))
    models = list(iou)
    ys = {m: _pct(np.asarray(iou[m], dtype=np.float64)) for m in models}
    if len(models) > 1:
        a, b = ys[models[0]], ys[models[1]]
        for i in np.nonzero(ok)[0]:
            ax.plot([x[i], x[i]], [a[i], b[i]], color="#999999", linewidth=0.6, zorder=1)
    for j, m in enumerate(models):
        sel = ok & np.isfinite(ys[m])
        ax.scatter(x[sel], ys[m][sel], c=rgb[sel], marker=MODEL_MARKERS[j % 4], s=42, edgecolors=EDGE,
                   linewidths=0.6, label=m, zorder=2)
    _annotate(ax, x[ok], ys[models[0]][ok], [n for n, k in zip(names, ok) if k])
    ax.set_xlabel("class frequency (log10 share of ground-truth elements)")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(-3, 103)
    ax.set_title("class frequency vs IoU")
    ax.legend(handles=_model_handles(models), loc="best")
    return save_figure(fig, path)


@styled
def plot_precision_recall(names: Sequence[str], precision: Mapping[str, np.ndarray], recall: Mapping[str, np.ndarray],
                          path: str | os.PathLike[str], colors: np.ndarray | None = None) -> Path:
    """Per-class precision (x) against recall (y); points below the diagonal are recall-limited."""
    rgb = _rgb01(colors, len(names))
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(6.5, 6.2))
    ax.plot([0, 100], [0, 100], color="#888888", linestyle="--", linewidth=0.8, zorder=1)
    ax.fill_between([0, 100], [0, 100], [0, 0], color="#f4d6d6", alpha=0.35, zorder=0)
    models = list(precision)
    for j, m in enumerate(models):
        p, r = _pct(precision[m]), _pct(recall[m])
        sel = np.isfinite(p) & np.isfinite(r)
        ax.scatter(p[sel], r[sel], c=rgb[sel], marker=MODEL_MARKERS[j % 4], s=40, edgecolors=EDGE,
                   linewidths=0.6, label=m, zorder=2)
        if j == 0:
            _annotate(ax, p, r, list(names))
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.set_xlabel("precision (%)")
    ax.set_ylabel("recall = class accuracy (%)")
    ax.set_title("precision vs recall per class")
    from matplotlib.patches import Patch

    ax.legend(handles=[*_model_handles(models), Patch(facecolor="#f4d6d6", label="recall < precision")],
              loc="upper left")
    return save_figure(fig, path)


def plot_confusion_top(matrix: np.ndarray, names: Sequence[str], path: str | os.PathLike[str], top_k: int = 20,
                       title: str = "row-normalised confusion") -> Path:
    """Row-normalised confusion heatmap of the ``top_k`` most frequent ground-truth classes.

    ``matrix`` is (K, K) counts aligned with ``names``, rows = ground truth, columns = prediction.
    Delegates to :func:`terraseg.metrics.plot_confusion`.
    """
    from terraseg.metrics import plot_confusion

    return plot_confusion(matrix, names, path, normalize="row", top_k=top_k, title=title)


AGREEMENT_PARTS = (
    ("both correct", "#4c9a5a"),
    ("agree, both wrong", "#9aa0a6"),
    ("only model 1 correct", "#3b6fb6"),
    ("only model 2 correct", "#e0892b"),
    ("disagree, both wrong", "#c0392b"),
)
"""Stacked segments of :func:`plot_agreement` (label, colour)."""


@styled
def plot_agreement(names: Sequence[str], parts: np.ndarray, path: str | os.PathLike[str],
                   model_names: tuple[str, str] = ("model 1", "model 2"), top: int | None = None) -> Path:
    """Per ground-truth class, how the two models' predictions split (stacked, as fractions).

    Args:
        parts: (K, 5) counts in the order of :data:`AGREEMENT_PARTS` (both correct, agree but
            wrong, only model 1 correct, only model 2 correct, disagree and both wrong).
        top: draw the ``top`` classes with the highest disagreement rate only.
    """
    cnt = np.asarray(parts, dtype=np.float64)
    tot = cnt.sum(axis=1)
    frac = np.divide(cnt, tot[:, None], out=np.zeros_like(cnt), where=tot[:, None] > 0)
    dis = np.where(tot > 0, frac[:, 2:].sum(axis=1), np.nan)
    idx = rank_classes(dis, top)
    idx = idx[tot[idx] > 0]
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(8.5, max(2.5, 0.22 * len(idx) + 1.4)))
    left = np.zeros(len(idx))
    y = np.arange(len(idx))
    labels = [lbl.replace("model 1", model_names[0]).replace("model 2", model_names[1]) for lbl, _ in AGREEMENT_PARTS]
    for j, (_, col) in enumerate(AGREEMENT_PARTS):
        w = 100.0 * frac[idx, j]
        ax.barh(y, w, left=left, color=col, height=0.75, label=labels[j], edgecolor="white", linewidth=0.3)
        left += w
    ax.set_yticks(y, [names[i] for i in idx])
    ax.set_ylim(len(idx) - 0.5, -0.5)
    ax.set_xlim(0, 100)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("share of the class's ground-truth elements (%)")
    ax.set_title("agreement per class, sorted by disagreement rate")
    axes_h = max(2.5, 0.22 * len(idx) + 1.4) - 1.4  # inches; the legend goes below the x label
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.55 / max(axes_h, 0.5)), ncol=3, fontsize=7)
    return save_figure(fig, path)


@styled
def plot_waterfall(start: tuple[str, float], steps: Sequence[tuple[str, float]], end: tuple[str, float],
                   path: str | os.PathLike[str], title: str = "mIoU gain of each accepted atom") -> Path:
    """Waterfall from model 1's mIoU through each accepted atom's gain to the ensemble's mIoU.

    ``start`` / ``end`` are (label, mIoU fraction); ``steps`` are (label, gain in mIoU fraction) in
    acceptance order. Gains are drawn as floating bars (green up, red down), totals as grey bars.
    """
    plt = _mpl()
    labels = [start[0], *[s[0] for s in steps], end[0]]
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.42 * n + 2.5), 4.8))
    level = 100.0 * start[1]
    bottoms, heights, cols = [0.0], [level], ["#7f8c8d"]
    for _, g in steps:
        d = 100.0 * g
        bottoms.append(level if d >= 0 else level + d)
        heights.append(abs(d))
        cols.append("#27ae60" if d >= 0 else "#c0392b")
        level += d
    bottoms.append(0.0)
    heights.append(100.0 * end[1])
    cols.append("#34495e")
    x = np.arange(n)
    ax.bar(x, heights, bottom=bottoms, color=cols, edgecolor=EDGE, linewidth=0.4, width=0.7)
    lo = min(100.0 * start[1], 100.0 * end[1], min(bottoms[1:-1], default=100.0 * start[1]))
    hi = max(100.0 * start[1], 100.0 * end[1], max((b + h for b, h in zip(bottoms[1:-1], heights[1:-1])),
                                                     default=100.0 * end[1]))
    pad = max(0.25 * (hi - lo), 0.2)
    ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad) if hi + pad > lo else lo + 1)
    for xi, (b, h) in enumerate(zip(bottoms, heights)):
        if xi in (0, n - 1):
            ax.text(xi, b + h, f"{b + h:.2f}", ha="center", va="bottom", fontsize=7)
        else:
            ax.text(xi, b + h, f"+{h:.2f}" if cols[xi] == "#27ae60" else f"-{h:.2f}", ha="center", va="bottom",
                    fontsize=6, rotation=90 if n > 14 else 0)
    # cumulative level line between bars
    lv = np.concatenate([[100.0 * start[1]], 100.0 * start[1] + np.cumsum([100.0 * g for _, g in steps])])
    for xi in range(len(lv)):
        ax.plot([xi - 0.35, xi + 1.35], [lv[xi], lv[xi]], color="#555555", linewidth=0.5, linestyle=":")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("mIoU (%)")
    ax.grid(axis="x", visible=False)
    ax.set_title(title)
    return save_figure(fig, path)


@styled
def plot_iou_change(names: Sequence[str], change: Mapping[str, np.ndarray], path: str | os.PathLike[str],
                    title: str = "per-class IoU change of the ensemble over model 1", top: int | None = None) -> Path:
    """Horizontal bars of per-class IoU change (percentage points), biggest changes first.

    ``change`` maps a split name (``tuning``, ``held-out`` ...) to (K,) IoU differences as
    fractions (NaN = undefined). Classes whose change is 0 or NaN in every split are left out.
    """
    splits = list(change)
    mat = np.array([_pct(change[s]) for s in splits])
    mag = np.nanmax(np.abs(np.where(np.isfinite(mat), mat, 0.0)), axis=0)
    keep = np.nonzero(mag > 1e-9)[0]
    order = keep[np.argsort(-np.nan_to_num(mat[0, keep]), kind="stable")]
    if top is not None and len(order) > top:
        order = order[np.argsort(-mag[order], kind="stable")[:top]]
        order = order[np.argsort(-np.nan_to_num(mat[0, order]), kind="stable")]
    plt = _mpl()
    from matplotlib.patches import Patch

    fig, ax = plt.subplots(figsize=(8.5, max(2.2, 0.2 * len(order) * len(splits) + 1.3)))
    if len(order) == 0:
        ax.text(0.5, 0.5, "no class changed", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return save_figure(fig, path)
    y = np.arange(len(order))
    h = 0.8 / len(splits)
    for j in range(len(splits)):
        v = np.nan_to_num(mat[j, order])
        ax.barh(y - 0.4 + h * (j + 0.5), v, height=h, color=np.where(v >= 0, "#27ae60", "#c0392b"),
                edgecolor=EDGE, linewidth=0.4, hatch=MODEL_HATCH[j % len(MODEL_HATCH)])
    ax.axvline(0, color="#333333", linewidth=0.8)
    ax.set_yticks(y, [names[i] for i in order])
    ax.set_ylim(len(order) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("IoU change (percentage points)")
    ax.set_title(title)
    if len(splits) > 1:
        ax.legend(handles=[Patch(facecolor="#bbbbbb", edgecolor=EDGE, hatch=MODEL_HATCH[j % len(MODEL_HATCH)],
                                 label=s) for j, s in enumerate(splits)], loc="lower right")
    return save_figure(fig, path)


@styled
def plot_gain_comparison(bars: Sequence[tuple[str, float]], path: str | os.PathLike[str],
                         folds: Mapping[str, Sequence[float]] | None = None,
                         title: str = "ensemble mIoU gain: tuning vs held-out") -> Path:
    """Bars of mIoU gains (fractions, drawn in points): tuning against held-out (the over-fitting gap).

    ``folds`` optionally maps a bar label to per-fold gains drawn as dots on that bar.
    Bars whose label contains ``tuning`` are light, ``held-out`` dark, others grey.
    """
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(bars) + 1.5), 4.0))
    x = np.arange(len(bars))
    vals = np.array([100.0 * v for _, v in bars])
    cols = ["#9ec5e8" if "tuning" in lbl else "#1f4e79" if "held-out" in lbl else "#9aa0a6" for lbl, _ in bars]
    ax.bar(x, vals, color=cols, edgecolor=EDGE, linewidth=0.6, width=0.6)
    for xi, v in zip(x, vals):
        ax.text(xi, v, f"{v:+.2f}", ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
    for xi, (lbl, _) in zip(x, bars):
        pts = (folds or {}).get(lbl)
        if pts:
            ax.scatter(np.full(len(pts), xi) + np.linspace(-0.15, 0.15, len(pts)), 100.0 * np.asarray(pts, float),
                       color="#222222", s=12, zorder=3)
    ax.axhline(0, color="#333333", linewidth=0.8)
    ax.set_xticks(x, [lbl for lbl, _ in bars], fontsize=8)
    ax.set_ylabel("mIoU gain over model 1 (points)")
    ax.grid(axis="x", visible=False)
    ax.set_title(title)
    return save_figure(fig, path)


def _legend_handles(legend: Sequence[tuple[str, tuple[int, int, int]]]) -> list[Any]:
    from matplotlib.patches import Patch

    return [Patch(facecolor=np.asarray(c) / 255.0, edgecolor=EDGE, linewidth=0.4, label=n) for n, c in legend]


@styled
def plot_sample_2d(panels: Sequence[tuple[str, np.ndarray]], path: str | os.PathLike[str],
                   legend: Sequence[tuple[str, tuple[int, int, int]]] = (), title: str = "") -> Path:
    """One row of images side by side (image | ground truth | model 1 | model 2 | ensemble).

    ``panels`` are (caption, (H, W, 3) uint8 RGB) pairs; ``legend`` lists (class name, RGB) of the
    classes shown, drawn under the row.
    """
    plt = _mpl()
    n = len(panels)
    h, w = panels[0][1].shape[:2]
    pw = 3.2
    ph = pw * h / max(w, 1)
    rows_legend = int(np.ceil(len(legend) / 6)) if legend else 0
    fig, axes = plt.subplots(1, n, figsize=(pw * n, ph + 0.55 + 0.22 * rows_legend), squeeze=False)
    for ax, (cap, img) in zip(axes[0], panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(cap, fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    if legend:
        fig.legend(handles=_legend_handles(legend), loc="lower center", ncol=min(6, len(legend)), fontsize=7)
        return save_figure(fig, path, rect=(0, 0.22 * rows_legend / (ph + 0.55 + 0.22 * rows_legend) + 0.02, 1, 1))
    return save_figure(fig, path)


@styled
def plot_sample_3d(bev: Sequence[tuple[str, np.ndarray]], sensor: Sequence[tuple[str, np.ndarray]],
                   path: str | os.PathLike[str], legend: Sequence[tuple[str, tuple[int, int, int]]] = (),
                   title: str = "") -> Path:
    """A frame of a point cloud: bird's-eye views side by side, then one sensor-view strip per source.

    ``bev`` and ``sensor`` are (caption, (H, W, 3) uint8 RGB) pairs (see :mod:`terraseg.report.render3d`).
    """
    plt = _mpl()
    n = len(bev)
    pw = 3.0
    sh, sw = sensor[0][1].shape[:2] if sensor else (1, 1)
    strip_h = pw * n * sh / max(sw, 1)
    rows_legend = int(np.ceil(len(legend) / 6)) if legend else 0
    title_h = 0.35 if title else 0.0
    total_h = pw + 0.4 + len(sensor) * (strip_h + 0.3) + 0.25 * rows_legend + 0.3 + title_h
    fig = plt.figure(figsize=(pw * n, total_h))
    gs = fig.add_gridspec(1 + len(sensor), n, height_ratios=[pw + 0.4] + [strip_h + 0.3] * len(sensor))
    for j, (cap, img) in enumerate(bev):
        ax = fig.add_subplot(gs[0, j])
        ax.imshow(img, interpolation="nearest")
        ax.set_title(f"{cap} (from above)", fontsize=8)
        ax.set_axis_off()
    for i, (cap, img) in enumerate(sensor):
        ax = fig.add_subplot(gs[1 + i, :])
        ax.imshow(img, interpolation="nearest", aspect="auto")
        ax.set_title(f"{cap} (from the sensor)", fontsize=8, loc="left")
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.12 / total_h, va="top")
    if legend:
        fig.legend(handles=_legend_handles(legend), loc="lower center", ncol=min(6, len(legend)), fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - (0.3 + title_h) / total_h, bottom=(0.25 * rows_legend + 0.3) / total_h,
                        hspace=0.35, wspace=0.04)
    return save_figure(fig, path, tight=False)
