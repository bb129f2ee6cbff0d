"""``build_report``: evaluate, plot and write one self-contained HTML page plus its PNGs and CSVs.

Output folder (every file is complete or absent: the report is built in a hidden staging folder
inside ``out_dir`` and its files are moved in at the end, ``report.html`` last)::

    report.html          the page, every figure embedded (base64 PNG)
    summary.csv          headline numbers per model (percent)
    per_class.csv        per class and model: IoU, accuracy (recall), precision (fractions), counts
    confusions.csv       the most common confusions per model
    agreement.csv        per class: both correct / agree wrong / only model 1 / only model 2 / neither (2 models)
    atoms.csv            the ensemble's accepted atoms (with --rules)
    frames.csv           per-frame mIoU, accuracy and disagreement, and the chosen sample frames
    curves.csv           training curves, long format run, tag, step, value (with --run)
    *.png                the figures
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.metrics import EvalPreset
from terraseg.progress import ProgressBar
from terraseg.report import plots
from terraseg.report.curves import TrainingCurves, plot_training_curves, read_curves
from terraseg.report.data import (
    IMAGE_EXTS,
    Kind,
    ReportData,
    choose_frames,
    find_companion,
    gather,
    iou_vector,
    load_rules,
    read_ids,
)
from terraseg.report.html import (
    SECTION_IDS,
    Cell,
    Section,
    esc,
    figure_html,
    paragraph,
    render_page,
    swatch,
    table_html,
)


@dataclass
class ReportResult:
    """What :func:`build_report` wrote.

    Attributes:
        out_dir: the output folder.
        html: path of ``report.html``.
        files: every written file by name (``report.html``, ``per_class.csv``, ``per_class_top.png`` ...).
        frames: the sample frames and why each was chosen.
        data: the gathered evaluation (scores, frames, agreement).
    """

    out_dir: Path
    html: Path
    files: dict[str, Path]
    frames: list[tuple[str, str]]
    data: ReportData
    notes: list[str] = field(default_factory=list)


def _pct(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{100.0 * x:.2f}"


def _pts(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{100.0 * x:+.2f}"


def _f6(x: float | None) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.6f}"


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


class _Writer:
    """Writes the report's files into the staging folder and remembers them."""

    def __init__(self, stage: Path) -> None:
        self.stage = stage
        self.files: dict[str, str] = {}

    def path(self, name: str) -> Path:
        self.files[name] = name
        return self.stage / name

    def csv(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
        p = self.path(name)
        p.write_text(_csv_text(header, rows), encoding="utf-8")
        return p


# ---------------------------------------------------------------------- sections
def _summary_section(data: ReportData, w: _Writer, header: list[str]) -> Section:
    sec = Section("summary", "Metrics summary")
    p = data.preset.describe()
    evs = data.evaluated()
    counted = data.models[0].scores.total
    unit = "points" if data.kind == "points" else "pixels"
    sec.add(paragraph(f"{len(data.frames)} frame(s), {counted:,} counted ground-truth {unit}; ontology "
                      f"{data.ontology.name!r}, preset {p['name']!r}: {p['description']}"))
    sec.add(paragraph(f"Ignored ground-truth ids: {', '.join(map(str, p['ignore'])) or 'none'}; left out of the "
                      f"mean: {', '.join(p['exclude_from_mean']) or 'none'}; category grouping: "
                      f"{p['grouping'] or 'none'}."))
    keys = list(evs[0].result.summary())
    rows = []
    for ev in evs:
        s = ev.result.summary()
        rows.append([ev.name, *[s.get(k) for k in keys]])
    sec.add(table_html(["model", *[f"{k} (%)" for k in keys]], rows))
    w.csv("summary.csv", ["model", *keys], [[r[0], *["" if v is None else f"{v:.4f}" for v in r[1:]]] for r in rows])
    if evs[0].result.category_scores is not None:
        cats = evs[0].result.category_scores.class_names
        cat_rows = []
        for i, c in enumerate(cats):
            if c == "(uncategorized)":
                continue
            cat_rows.append([c, *[Cell(_pct(ev.result.category_scores.iou[i]), num=True)  # type: ignore[union-attr]
                                  for ev in evs]])
        sec.add("<h3>Category IoU (%)</h3>", table_html(["category", *[ev.name for ev in evs]], cat_rows))
    notes = [n for ev in evs[:1] for n in ev.result.notes] + data.notes
    if notes:
        sec.add("<h3>Notes</h3><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    header.append(" | ".join(f"{ev.name}: mIoU {_pct(ev.result.fine_miou)} %" for ev in evs))
    return sec


def _class_colors(data: ReportData, names: Sequence[str]) -> np.ndarray:
    onto = data.ontology
    return np.array([onto[n].color if n in onto else (128, 128, 128) for n in names], dtype=np.uint8)


def _seen(data: ReportData) -> np.ndarray:
    """(K,) bool: scored classes present in the ground truth or any model's prediction."""
    sc0 = data.models[0].scores
    seen = sc0.gt_count > 0
    for ev in data.evaluated():
        seen = seen | (ev.scores.pred_count > 0)
    return seen


def _per_class_section(data: ReportData, w: _Writer) -> Section:
    sec = Section("per-class", "Per-class IoU")
    evs = data.evaluated()
    sc0 = evs[0].scores
    names = sc0.class_names
    colors = _class_colors(data, names)
    seen = _seen(data)
    shown = [names[i] for i in np.nonzero(seen)[0]]
    iou = {ev.name: ev.scores.iou[seen] for ev in data.models}
    top = min(30, len(shown))
    sec.add(figure_html(plots.plot_per_class_iou(shown, iou, w.path("per_class_top.png"), colors[seen], top=top),
                        "per-class IoU, top classes",
                        f"The {top} classes with the highest {evs[0].name} IoU"
                        + (f", {data.models[1].name} hatched beside it." if len(data.models) > 1 else ".")))
    absent = [n for n, s in zip(names, seen) if not s]
    sec.add(figure_html(plots.plot_per_class_iou(shown, iou, w.path("per_class_all.png"), colors[seen]),
                        "per-class IoU, all classes", "Every class present in the ground truth or a prediction, "
                        "sorted by IoU" + (f"; not drawn (absent everywhere): {', '.join(absent)}." if absent
                                           else ".")))
    gt = sc0.gt_count.astype(np.float64)
    share = gt / gt.sum() if gt.sum() else np.zeros_like(gt)
    headers = ["id", "class", "GT share (%)"]
    for ev in evs:
        headers += [f"{ev.name} IoU", f"{ev.name} recall", f"{ev.name} precision"]
    if len(data.models) > 1:
        headers.append(f"IoU {data.models[1].name} - {data.models[0].name}")
    rows, csv_rows = [], []
    for i, n in enumerate(names):
        row: list[Any] = [Cell(str(int(sc0.class_ids[i])), num=True),
                          Cell(swatch(colors[i]) + esc(n), raw=True), Cell(f"{100 * share[i]:.3f}", num=True)]
        crow: list[Any] = [int(sc0.class_ids[i]), n, int(sc0.gt_count[i]), f"{share[i]:.6f}"]
        for ev in evs:
            s = ev.scores
            row += [Cell(_pct(s.iou[i]), num=True), Cell(_pct(s.acc[i]), num=True),
                    Cell(_pct(s.precision[i]), num=True)]
            crow += [_f6(s.iou[i]), _f6(s.acc[i]), _f6(s.precision[i]), int(s.pred_count[i])]
        if len(data.models) > 1:
            row.append(Cell(_pts(data.models[1].scores.iou[i] - data.models[0].scores.iou[i]), num=True))
        rows.append(row)
        csv_rows.append(crow)
    sec.add("<details><summary>Per-class table (%)</summary>" + table_html(headers, rows) + "</details>")
    csv_head = ["id", "name", "gt_count", "gt_share"]
    for ev in evs:
        csv_head += [f"{ev.name}:iou", f"{ev.name}:acc", f"{ev.name}:precision", f"{ev.name}:pred_count"]
    w.csv("per_class.csv", csv_head, csv_rows)
    if len(data.models) > 1:
        d = data.models[1].scores.iou - data.models[0].scores.iou
        wins = [names[i] for i in np.argsort(-np.nan_to_num(d, nan=-np.inf))[:5] if np.isfinite(d[i]) and d[i] > 0]
        if wins:
            sec.add(paragraph(f"{data.models[1].name} beats {data.models[0].name} most on: {', '.join(wins)}."))
    return sec


def _frequency_section(data: ReportData, w: _Writer) -> Section:
    sec = Section("frequency", "Class frequency vs IoU")
    sc0 = data.models[0].scores
    names = sc0.class_names
    gt = sc0.gt_count.astype(np.float64)
    freq = gt / gt.sum() if gt.sum() else np.zeros_like(gt)
    iou = {ev.name: ev.scores.iou for ev in data.models}
    sec.add(figure_html(plots.plot_frequency_iou(names, freq, iou, w.path("frequency_iou.png"),
                                                 _class_colors(data, names)),
                        "log class frequency vs IoU", "x: share of counted ground-truth elements (log10); y: IoU."))
    absent = [n for n, f in zip(names, freq) if f == 0]
    rare = (freq > 0) & (freq < 0.001)
    common = freq >= 0.001
    iou0 = sc0.iou
    txt = []
    if rare.any() and common.any():
        txt.append(f"{data.models[0].name}: classes under 0.1 % of the ground truth ({int(rare.sum())}) average "
                   f"{_pct(float(np.nanmean(iou0[rare])) if np.isfinite(iou0[rare]).any() else np.nan)} % IoU, "
                   f"the others ({int(common.sum())}) "
                   f"{_pct(float(np.nanmean(iou0[common])) if np.isfinite(iou0[common]).any() else np.nan)} %.")
    if absent:
        txt.append(f"{len(absent)} class(es) absent from the ground truth are not drawn: {', '.join(absent[:20])}"
                   + (" ..." if len(absent) > 20 else "") + ".")
    if txt:
        sec.add(paragraph(" ".join(txt)))
    return sec


def _pr_section(data: ReportData, w: _Writer) -> Section:
    sec = Section("precision-recall", "Precision vs recall")
    sc0 = data.models[0].scores
    names = sc0.class_names
    prec = {ev.name: ev.scores.precision for ev in data.models}
    rec = {ev.name: ev.scores.acc for ev in data.models}
    sec.add(figure_html(plots.plot_precision_recall(names, prec, rec, w.path("precision_recall.png"),
                                                    _class_colors(data, names)),
                        "precision vs recall per class", "Points below the diagonal have lower recall than "
                        "precision: the model misses more of the class than it wrongly adds."))
    for ev in data.models:
        s = ev.scores
        ok = np.isfinite(s.precision) & np.isfinite(s.acc)
        below = int(np.sum(s.acc[ok] < s.precision[ok]))
        if ok.any():
            verdict = "recall is the bottleneck" if below > ok.sum() / 2 else "precision is the bottleneck" \
                if below < ok.sum() / 2 else "recall and precision are balanced"
            sec.add(paragraph(f"{ev.name}: {below} of {int(ok.sum())} classes have recall below precision "
                              f"({verdict}); mean recall {_pct(s.macc)} %, mean precision "
                              f"{_pct(float(np.nanmean(s.precision)))} %."))
    return sec


def top_confusions(matrix: np.ndarray, names: Sequence[str], n: int = 15) -> list[tuple[str, str, int, float, float]]:
    """The ``n`` largest off-diagonal counts of a (K, K) matrix (rows = ground truth):
    ``(true class, predicted class, count, share of the true class, share of all errors)``."""
    m = np.asarray(matrix, dtype=np.int64)
    off = m.copy()
    np.fill_diagonal(off, 0)
    errors = int(off.sum())
    rows = m.sum(axis=1)
    flat = np.argsort(-off.ravel(), kind="stable")[:n]
    out = []
    for f in flat:
        g, p = divmod(int(f), m.shape[1])
        if off[g, p] == 0:
            break
        out.append((names[g], names[p], int(off[g, p]), off[g, p] / rows[g] if rows[g] else float("nan"),
                    off[g, p] / errors if errors else float("nan")))
    return out


def _confusion_section(data: ReportData, w: _Writer) -> Section:
    sec = Section("confusion", "Confusions")
    csv_rows = []
    seen = np.nonzero(_seen(data))[0]
    for j, ev in enumerate(data.models):
        m = ev.scored_matrix()[np.ix_(seen, seen)]
        names = [ev.scores.class_names[i] for i in seen]
        top_k = min(20, len(names))
        sec.add(figure_html(plots.plot_confusion_top(m, names, w.path(f"confusion_m{j + 1}.png"), top_k=top_k,
                                                     title=f"{ev.name}: row-normalised confusion, "
                                                           f"{top_k} most frequent classes"),
                            f"confusion matrix of {ev.name}", "Rows: ground truth, columns: prediction; each row "
                            "sums to 1 (the diagonal is the class's recall).", width=760))
    for ev in data.models:
        conf = top_confusions(ev.scored_matrix(), ev.scores.class_names)
        rows = [[f"{g} \u2192 {p}", Cell(f"{c:,}", num=True), Cell(_pct(sg), num=True), Cell(_pct(se), num=True)]
                for g, p, c, sg, se in conf]
        csv_rows += [[ev.name, g, p, c, _f6(sg), _f6(se)] for g, p, c, sg, se in conf]
        sec.add(f"<h3>{esc(ev.name)}: most common confusions</h3>",
                table_html(["true \u2192 predicted", "count", "of the true class (%)", "of all errors (%)"], rows)
                if rows else paragraph("no confusions: every counted element is right."))
    w.csv("confusions.csv", ["model", "true", "predicted", "count", "share_of_true", "share_of_errors"], csv_rows)
    return sec


def _agreement_section(data: ReportData, w: _Writer) -> Section:
    sec = Section("agreement", "Agreement of the two models")
    ag = data.agreement
    if ag is None or len(data.models) < 2:
        return sec.unavailable("one model given; pass a second prediction folder (--pred2) to compare two models.")
    n1, n2 = data.models[0].name, data.models[1].name
    dis = ag.disagree
    one_right = ag.m1_wins + ag.m2_wins
    sent = (f"{n1} and {n2} agree on {_pct(ag.rate())} % of the counted elements. Where they disagree "
            f"({dis:,} elements), {n1} alone is right on {_pct(ag.m1_wins / dis if dis else np.nan)} %, {n2} alone "
            f"on {_pct(ag.m2_wins / dis if dis else np.nan)} %, neither on "
            f"{_pct(ag.parts[:, 4].sum() / dis if dis else np.nan)} %.")
    if one_right:
        sent += (f" When exactly one of them is right, {n1} wins {_pct(ag.m1_wins / one_right)} % of the time; the "
                 f"{_pct(ag.m2_wins / one_right)} % where {n2} wins is what an ensemble can gain.")
    sec.add(paragraph(sent, "key"))
    sec.add(figure_html(plots.plot_agreement(ag.class_names, ag.parts, w.path("agreement.png"), (n1, n2)),
                        "agreement per class", "Per ground-truth class: both right, same wrong answer, only one "
                        "right, or different wrong answers; sorted by disagreement rate. Computed from the pair "
                        "histogram H[m1, m2, gt]."))
    rate = ag.per_class_disagreement()
    order = [i for i in plots.rank_classes(rate, 10) if np.isfinite(rate[i])]
    tot = ag.parts.sum(axis=1)
    rows = [[ag.class_names[i], Cell(_pct(rate[i]), num=True), Cell(f"{int(tot[i]):,}", num=True),
             Cell(_pct(ag.parts[i, 2] / tot[i]), num=True), Cell(_pct(ag.parts[i, 3] / tot[i]), num=True)]
            for i in order]
    sec.add("<h3>Highest disagreement rates</h3>",
            table_html(["class", "disagreement (%)", "elements", f"only {n1} right (%)", f"only {n2} right (%)"],
                       rows))
    w.csv("agreement.csv", ["class", "both_correct", "agree_wrong", "only_m1_correct", "only_m2_correct",
                            "disagree_both_wrong", "disagreement_rate"],
          [[n, *map(int, ag.parts[i]), _f6(rate[i])] for i, n in enumerate(ag.class_names)])
    return sec


def _gain(block: dict[str, Any] | None) -> float:
    if not block:
        return float("nan")
    if isinstance(block.get("gain"), (int, float)):
        return float(block["gain"])
    try:
        return float(block["miou_ensemble"]) - float(block["miou_m1"])
    except (KeyError, TypeError, ValueError):
        return float("nan")


def _ensemble_section(data: ReportData, w: _Writer, rules: dict[str, Any] | None, rules_path: Path | None) -> Section:
    sec = Section("ensemble", "Rule ensemble")
    ens = data.ensemble
    m1 = data.models[0]
    if rules is None and ens is None:
        return sec.unavailable("no rules file (--rules rules.json from `terraseg ensemble tune`) and no ensemble "
                               "predictions (--ensemble DIR) given.")
    if rules is not None:
        scores = rules.get("scores") or {}
        tuning, holdout, kfold = scores.get("tuning"), scores.get("holdout"), scores.get("kfold")
        atoms = rules.get("atoms") or []
        t_gain = _gain(tuning)
        bars: list[tuple[str, float]] = [(f"tuning ({tuning.get('frames', '?')} frames)", t_gain)]
        folds: dict[str, list[float]] = {}
        heldout = float("nan")
        if holdout:
            heldout = _gain(holdout)
            bars.append((f"held-out ({holdout.get('frames', '?')} frames)", heldout))
        if kfold:
            kt, kh = kfold.get("mean_tuning_gain"), kfold.get("mean_heldout_gain")
            k = kfold.get("folds", "k")
            if isinstance(kt, (int, float)):
                bars.append((f"{k}-fold tuning", float(kt)))
                folds[bars[-1][0]] = [float(v) for v in kfold.get("tuning_gain") or [] if v is not None]
            if isinstance(kh, (int, float)):
                bars.append((f"{k}-fold held-out", float(kh)))
                folds[bars[-1][0]] = [float(v) for v in kfold.get("heldout_gain") or [] if v is not None]
                if not np.isfinite(heldout):
                    heldout = float(kh)
        if ens is not None:
            bars.append(("report frames", ens.result.fine_miou - m1.result.fine_miou))
        if np.isfinite(heldout):
            gap = t_gain - heldout
            cls = "warn" if gap > 0.5 * abs(t_gain) and gap > 0 else "key"
            sec.add(paragraph(f"The rules gain {_pts(t_gain)} points of mIoU on the frames they were tuned on and "
                              f"{_pts(heldout)} points on held-out frames: an over-fitting gap of {100 * gap:.2f} "
                              "points. Trust the held-out number.", cls))
        else:
            sec.add(paragraph(f"The rules gain {_pts(t_gain)} points of mIoU on the frames they were tuned on. The "
                              "rules file has no held-out or k-fold score, so this gain is optimistic (measured on "
                              "the same frames the rules were chosen on); tune with a held-out split or k-fold.",
                              "warn"))
        sec.add(figure_html(plots.plot_gain_comparison(bars, w.path("ensemble_gain.png"), folds),
                            "ensemble gain, tuning vs held-out", "mIoU gain of the ensemble over model 1 on the "
                            "tuning frames (light) against held-out frames (dark); dots: single folds"
                            + ("; grey: the --ensemble predictions scored on this report's frames." if ens is not None
                               else "."), width=700))
        steps = [(f"{a['m1']}\u2192{a['m2']}", float(a["gain"])) for a in atoms]
        sec.add(paragraph(f"{len(atoms)} accepted atom(s) in {len(rules.get('rules') or [])} rule(s) "
                          f"(rules file {rules_path}). Each atom overrides model 1 with model 2 where model 1 says "
                          "the first class and model 2 the second."))
        sec.add(figure_html(plots.plot_waterfall((m1.name, float(tuning["miou_m1"])), steps,
                                                 ("ensemble", float(tuning["miou_ensemble"])), w.path("waterfall.png")),
                            "waterfall of atom gains", "Tuning-split mIoU from model 1 through each accepted atom "
                            "to the ensemble, in acceptance order."))
        names = list(rules.get("class_names") or [])
        if names:
            n = len(names)
            change = {"tuning": iou_vector(tuning, "iou_ensemble", n) - iou_vector(tuning, "iou_m1", n)}
            if holdout:
                change["held-out"] = iou_vector(holdout, "iou_ensemble", n) - iou_vector(holdout, "iou_m1", n)
            sec.add(figure_html(plots.plot_iou_change(names, change, w.path("ensemble_iou_change.png"), top=40),
                                "per-class IoU change", "IoU of the ensemble minus IoU of model 1 per class "
                                "(percentage points)."))
        atom_rows, csv_rows = [], []
        for i, a in enumerate(atoms):
            ch = a.get("iou_change") or {}
            big = sorted(ch.items(), key=lambda kv: -abs(kv[1] or 0))[:3]
            atom_rows.append([Cell(str(i + 1), num=True), f"{a['m1']} \u2192 {a['m2']}",
                              Cell(f"{a.get('pixels', '-')}", num=True),
                              Cell(_pts(float(a["gain"])), num=True),
                              Cell(_pct(a.get("miou_after")), num=True),
                              ", ".join(f"{k} {_pts(float(v))}" for k, v in big if v is not None)])
            csv_rows.append([i + 1, a["m1"], a["m2"], a.get("m1_id", ""), a.get("m2_id", ""), a.get("pixels", ""),
                             a.get("m1_correct", ""), a.get("m2_correct", ""), _f6(float(a["gain"])),
                             _f6(a.get("miou_after"))])
        sec.add("<h3>Accepted atoms</h3>",
                table_html(["#", "model 1 says \u2192 model 2 says", "elements", "gain (points)",
                            "mIoU after (%)", "largest class changes (points)"], atom_rows))
        w.csv("atoms.csv", ["order", "m1", "m2", "m1_id", "m2_id", "pixels", "m1_correct", "m2_correct", "gain",
                            "miou_after"], csv_rows)
        rule_rows = [[", ".join(r.get("when_m1") or []), str(r.get("when_m2", "")), str(r.get("trust", ""))]
                     for r in rules.get("rules") or []]
        if rule_rows:
            sec.add("<h3>Rules</h3>", table_html(["model 1 says any of", "model 2 says", "trust"], rule_rows))
    if ens is not None:
        d = ens.result.fine_miou - m1.result.fine_miou
        sec.add(paragraph(f"Ensemble predictions ({ens.pred_dir}) on this report's frames: mIoU "
                          f"{_pct(ens.result.fine_miou)} % against {_pct(m1.result.fine_miou)} % for {m1.name} "
                          f"({_pts(d)} points)."))
        if rules is None:
            names = m1.scores.class_names
            change = {"this report": ens.scores.iou - m1.scores.iou}
            sec.add(figure_html(plots.plot_iou_change(names, change, w.path("ensemble_iou_change.png"), top=40),
                                "per-class IoU change", "Ensemble IoU minus model 1 IoU per class on this report's "
                                "frames."))
            sec.add(paragraph("No rules file given (--rules): the waterfall of atom gains and the tuning vs held-out "
                              "comparison need it.", "note"))
    return sec


def _colorize(ids: np.ndarray, palette: np.ndarray) -> np.ndarray:
    from terraseg.report.render3d import label_colors

    return label_colors(ids, palette).reshape(*np.shape(ids), 3)


def _legend(data: ReportData, arrays: Sequence[np.ndarray], limit: int = 24) -> list[tuple[str, tuple[int, int, int]]]:
    onto = data.ontology
    cnt = np.zeros(onto.max_id + 1, dtype=np.int64)
    for a in arrays:
        v = np.asarray(a).ravel().astype(np.int64)
        v = v[(v >= 0) & (v <= onto.max_id)]
        cnt += np.bincount(v, minlength=onto.max_id + 1)
    ids = [int(i) for i in np.argsort(-cnt, kind="stable") if cnt[i] > 0 and int(i) in onto][:limit]
    return [(onto.name_of(i), onto[i].color) for i in sorted(ids)]


def _sample_frame(data: ReportData, key: str, reason: str, images: Path | None, points: Path | None,
                  path: Path) -> Path:
    gt = read_ids(data.gt_files[key], data.kind)
    evs = data.evaluated()
    preds = [read_ids(ev.files[key], data.kind) for ev in evs]
    stat = next(f for f in data.frames if f.key == key)
    pal = data.ontology.palette
    caps = [f"{ev.name} (frame mIoU {_pct(stat.miou[j])} %)" for j, ev in enumerate(evs)]
    legend = _legend(data, [gt, *preds])
    title = f"{key}: {reason}"
    if data.kind == "image":
        panels: list[tuple[str, np.ndarray]] = []
        if images is not None:
            img_path = find_companion(images, key, IMAGE_EXTS)
            if img_path is not None:
                from terraseg.io import read_image

                img = read_image(img_path)
                if img.shape[:2] != gt.shape:
                    from PIL import Image

                    img = np.asarray(Image.fromarray(img).resize((gt.shape[1], gt.shape[0]), Image.BILINEAR))
                panels.append(("image", img))
            else:
                panels.append(("image (not found)", np.full((*gt.shape, 3), 235, dtype=np.uint8)))
        panels.append(("ground truth", _colorize(gt, pal)))
        panels += [(c, _colorize(p, pal)) for c, p in zip(caps, preds)]
        return plots.plot_sample_2d(panels, path, legend, title)
    from terraseg.io import read_bin
    from terraseg.report import render3d

    assert points is not None
    bin_path = find_companion(points, key, (".bin",))
    if bin_path is None:
        raise DataError(f"{points}: no point file {key}.bin for frame {key!r}")
    pts = read_bin(bin_path)
    if pts.shape[0] != gt.shape[0]:
        raise DataError(f"{bin_path}: {pts.shape[0]} points but {data.gt_files[key]} has {gt.shape[0]} labels")
    ext = render3d.bev_extent(pts)
    elev = render3d.elevation_range(pts)
    sources = [("points (height)", render3d.scalar_colors(pts[:, 2], "rainbow")),
               ("ground truth", render3d.label_colors(gt, pal))]
    sources += [(c, render3d.label_colors(p, pal)) for c, p in zip(caps, preds)]
    bev = [(c, render3d.render_bev(pts, col, ext, size=360)) for c, col in sources]
    sensor = [(c, render3d.render_range(pts, col, elev, width=1024, rows=64, row_px=2)) for c, col in sources]
    return plots.plot_sample_3d(bev, sensor, path, legend, title)


def _samples_section(data: ReportData, w: _Writer, chosen: list[tuple[str, str]], images: Path | None,
                     points: Path | None, progress: bool) -> Section:
    sec = Section("samples", "Sample frames")
    w.csv("frames.csv", ["key", "counted", *[f"{ev.name}:miou" for ev in data.evaluated()],
                         *[f"{ev.name}:aacc" for ev in data.evaluated()], "disagreement", "chosen_because"],
          [[f.key, f.counted, *map(_f6, f.miou), *map(_f6, f.acc), _f6(f.disagreement),
            dict(chosen).get(f.key, "")] for f in data.frames])
    if data.kind == "points" and points is None:
        return sec.unavailable("point-cloud ground truth needs the scans to render; pass --points DIR (.bin files).")
    if not chosen:
        return sec.unavailable("no frames chosen (--num-frames 0).")
    cols = (["image"] if data.kind == "image" and images is not None else []) + ["ground truth"] + \
        [ev.name for ev in data.evaluated()]
    how = "chosen by name" if all(r == "chosen by name" for _, r in chosen) else \
        ("the frames where the two models disagree most, plus the worst frame of model 1"
         if len(data.models) > 1 else "the worst frame of model 1 plus frames spread over the sequence")
    sec.add(paragraph(f"{len(chosen)} frame(s): {how}. Columns: {' | '.join(cols)}; masks in the ontology's "
                      "colours" + (", point clouds from above and from the sensor." if data.kind == "points"
                                   else ".")))
    if data.kind == "image" and images is None:
        sec.add(paragraph("No camera images given (--images DIR): only masks are shown.", "note"))
    with ProgressBar(len(chosen), "drawing sample frames", enabled=progress) as bar:
        for i, (key, reason) in enumerate(chosen):
            p = _sample_frame(data, key, reason, images, points, w.path(f"sample_{i + 1:02d}.png"))
            sec.add(figure_html(p, f"frame {key}", f"{key}: {reason}"))
            bar.advance()
    return sec


def _curves_section(curves: list[TrainingCurves], w: _Writer) -> Section:
    sec = Section("curves", "Training curves")
    if not curves:
        return sec.unavailable("no training run given; pass --run RUNDIR (a terraseg run folder with metrics.csv, "
                               "history.jsonl or TensorBoard logs).")
    sec.add(figure_html(plot_training_curves(curves, w.path("curves.png")), "training curves",
                        "Loss, IoU and accuracy against the optimiser step (IoU and accuracy in percent as logged)."))
    rows = []
    for c in curves:
        best = c.best("val/mIoU")
        rows.append([c.name, ", ".join(Path(s).name for s in c.sources),
                     Cell("-" if best is None else f"{best[1]:.2f}", num=True),
                     Cell("-" if best is None else str(best[0]), num=True),
                     Cell("-" if c.last("train/loss") is None else f"{c.last('train/loss'):.4f}", num=True)])
    sec.add(table_html(["run", "read from", "best val mIoU (%)", "at step", "last train loss"], rows))
    w.csv("curves.csv", ["run", "tag", "step", "value"],
          [[c.name, tag, int(s), f"{v:.6g}"] for c in curves for tag in c.tags()
           for s, v in zip(*c.series[tag])])
    return sec


# ---------------------------------------------------------------------- entry point
def build_report(out_dir: str | os.PathLike[str], gt: str | os.PathLike[str], pred: str | os.PathLike[str],
                 ontology: str, *, pred2: str | os.PathLike[str] | None = None, name1: str = "model 1",
                 name2: str = "model 2", preset: EvalPreset | str | None = None,
                 images: str | os.PathLike[str] | None = None, points: str | os.PathLike[str] | None = None,
                 rules: str | os.PathLike[str] | None = None, ensemble: str | os.PathLike[str] | None = None,
                 runs: Sequence[str | os.PathLike[str]] = (), frames: Sequence[str] | None = None,
                 num_frames: int = 4, gt_suffix: str = "", extra_ignore: Sequence[int] = (),
                 kind: Kind | Literal["auto"] = "auto",
                 title: str | None = None, workers: int = 4, progress: bool = False,
                 on_stage: Callable[[str], None] | None = None) -> ReportResult:
    """Evaluate one or two models and write ``out_dir/report.html`` plus its PNGs and CSVs.

    Args:
        out_dir: output folder (created; existing files of the same names are replaced).
        gt: ground-truth folder (id PNGs, or SemanticKITTI ``.label`` files).
        pred, pred2: prediction folders of model 1 and (optionally) model 2, same relative names.
        ontology: ontology name or YAML path of the ids.
        name1, name2: the models' names on the page.
        preset: evaluation preset (default: the ontology's).
        images: camera images for the samples (2D), matched by relative name or stem.
        points: ``.bin`` scans for the samples (3D), matched the same way.
        rules: an ensemble rules JSON (``terraseg ensemble tune``) for the ensemble section.
        ensemble: a folder of the ensemble's predictions, scored and shown like a third model.
        runs: terraseg run folders for the training curves.
        frames: sample frames by name; default: chosen automatically (``num_frames`` of them).
        gt_suffix: suffix stripped from ground-truth stems (e.g. ``_labelids``).
        extra_ignore: more ground-truth ids not counted (e.g. 255 padding).
        kind: ``image``, ``points`` or ``auto``.
        on_stage: called with a short message before each stage (for CLI output).

    Raises:
        DataError / ConfigError: bad inputs, naming the file; nothing is written then.
    """
    say = on_stage or (lambda _m: None)
    out = Path(out_dir)
    for d, what in ((images, "--images"), (points, "--points")):
        if d is not None and not Path(d).is_dir():
            raise DataError(f"{d}: {what} folder not found")
    if num_frames < 0:
        raise ConfigError(f"num_frames must be >= 0, got {num_frames}")
    rules_data = load_rules(rules) if rules is not None else None
    say("reading training curves" if runs else "evaluating")
    curves: list[TrainingCurves] = []
    for r in runs:
        c = read_curves(r)
        if any(c.name == o.name for o in curves):
            c.name = f"{c.name} ({len(curves) + 1})"
        curves.append(c)
    say("evaluating predictions")
    data = gather(gt, pred, ontology, pred2, names=(name1, name2), ensemble=ensemble, preset=preset, kind=kind,
                  gt_suffix=gt_suffix, extra_ignore=extra_ignore, workers=workers, progress=progress)
    if data.kind == "image" and points is not None:
        raise ConfigError("--points is for point-cloud ground truth (.label files); camera masks take --images")
    if data.kind == "points" and images is not None:
        raise ConfigError("--images is for camera masks; point-cloud ground truth takes --points (.bin scans)")
    if rules_data is not None and rules_data.get("ontology") not in (None, data.ontology.name):
        data.notes.append(f"the rules file is for ontology {rules_data.get('ontology')!r}, the report for "
                          f"{data.ontology.name!r}")
    chosen = choose_frames(data.frames, num_frames, frames)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        w = _Writer(stage)
        header = [f"ground truth {Path(gt)} ({data.kind}), models: "
                  + ", ".join(f"{ev.name} = {ev.pred_dir}" for ev in data.evaluated())]
        say("drawing figures")
        sections = [_summary_section(data, w, header), _per_class_section(data, w), _frequency_section(data, w),
                    _pr_section(data, w), _confusion_section(data, w), _agreement_section(data, w),
                    _ensemble_section(data, w, rules_data, Path(rules) if rules is not None else None),
                    _samples_section(data, w, chosen, Path(images) if images else None,
                                     Path(points) if points else None, progress),
                    _curves_section(curves, w)]
        assert tuple(s.id for s in sections) == SECTION_IDS
        names = " vs ".join(ev.name for ev in data.models)
        page = render_page(title or f"terraseg report: {names}", sections, header)
        w.path("report.html").write_text(page, encoding="utf-8")
        files: dict[str, Path] = {}
        for name in sorted(w.files, key=lambda n: n == "report.html"):
            os.chmod(stage / name, 0o644)  # temp files are created 0600; a report is meant to be shared
            os.replace(stage / name, out / name)
            files[name] = out / name
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ReportResult(out_dir=out, html=out / "report.html", files=files, frames=chosen, data=data,
                        notes=list(data.notes))
