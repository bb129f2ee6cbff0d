"""Reports: Markdown (rows and columns), CSV, JSON and the confusion heatmap PNG."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
from PIL import Image

from terraseg.metrics import (
    csv_per_class,
    get_preset,
    markdown_columns,
    markdown_report,
    markdown_rows,
    plot_confusion,
    write_reports,
)


def _rellis_result(seed: int = 0):
    p = get_preset(None, "rellis3d")
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 20, 20000).astype(np.uint8)
    gt[gt == 11] = 2  # log absent from truth
    pred = np.where(rng.random(gt.size) < 0.7, gt, rng.integers(1, 20, gt.size)).astype(np.uint8)
    pred[pred == 11] = 3  # and never predicted -> NaN
    cm = p.confusion_matrix().update(pred, gt)
    return p.evaluate(cm), cm


def test_markdown_columns_layout_like_the_rellis_table() -> None:
    r1, _ = _rellis_result(0)
    r2, _ = _rellis_result(1)
    md = markdown_columns({"A": r1, "B": r2})
    lines = md.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["Model", "mIoU (%)", "dirt"]
    assert "void" not in header  # ignored class is not scored
    assert len(header) == 2 + 19
    row_a = [c.strip() for c in lines[2].strip("|").split("|")]
    assert row_a[0] == "A"
    log_col = header.index("log")
    assert row_a[log_col] == "-"
    assert "**" in md  # best per column is bold when comparing models
    grass = header.index("grass")
    vals = [float(lines[i].strip("|").split("|")[grass].strip().strip("*")) for i in (2, 3)]
    assert vals == [round(100 * r1.scores.iou_of("grass"), 2), round(100 * r2.scores.iou_of("grass"), 2)]


def test_markdown_rows_and_report() -> None:
    r, _ = _rellis_result()
    rows = markdown_rows(r).strip().splitlines()
    assert len(rows) == 2 + 19
    assert rows[2].startswith("| 1 | dirt | ")
    rep = markdown_report(r, "My eval")
    assert rep.startswith("# My eval")
    assert "ignored ground-truth ids: void" in rep
    assert "## Categories" in rep and "| vegetation |" in rep
    assert "log" in rep.split("## Notes")[1]  # the NaN class is named in the notes


def test_csv_is_parseable_with_empty_for_nan() -> None:
    r, _ = _rellis_result()
    rows = list(csv.DictReader(io.StringIO(csv_per_class(r))))
    assert len(rows) == 19
    log = next(x for x in rows if x["name"] == "log")
    assert log["iou"] == "" and log["gt_count"] == "0"
    grass = next(x for x in rows if x["name"] == "grass")
    assert float(grass["iou"]) == round(r.scores.iou_of("grass"), 6)


def test_plot_confusion_writes_a_png(tmp_path) -> None:
    m = np.random.default_rng(0).integers(0, 100, (30, 30))
    names = [f"c{i}" for i in range(30)]
    for norm in ("row", "col", "none"):
        path = plot_confusion(m, names, tmp_path / f"cm_{norm}.png", normalize=norm, top_k=20)
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300


def test_write_reports_writes_every_file_atomically(tmp_path) -> None:
    r, cm = _rellis_result()
    paths = write_reports(r, tmp_path / "out", cm, title="t")
    assert set(paths) == {"report", "per_class_rows", "per_class_columns", "csv", "json", "matrix", "heatmap"}
    data = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["preset"]["ontology"] == "rellis3d"
    assert data["summary"]["mIoU"] == round(100 * r.fine_miou, 4)
    assert data["classes"]["log"]["iou"] is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["report.md", "per_class.md", "per_class_columns.md", "per_class.csv", "metrics.json", "confusion.npz",
         "confusion.png"])


def test_markdown_columns_can_skip_classes_absent_everywhere() -> None:
    r, _ = _rellis_result()
    header = markdown_columns({"A": r}, skip_absent=True).splitlines()[0]
    assert "log" not in header and "grass" in header
