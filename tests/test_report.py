"""``terraseg report``: data gathering, rendering, curves, the HTML page, the CLI and a headless browser."""

from __future__ import annotations

import base64
import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from terraseg.errors import ConfigError, DataError
from terraseg.io import write_bin, write_image, write_label, write_label_png
from terraseg.ontology import get_ontology
from terraseg.report import (
    SECTION_IDS,
    agreement_from_histogram,
    bev_extent,
    build_report,
    choose_frames,
    elevation_range,
    gather,
    load_rules,
    read_curves,
    render_bev,
    render_range,
    scalar_colors,
)
from terraseg.report.data import FrameStat
from terraseg.report.render3d import BevExtent, label_colors

PNG = b"\x89PNG\r\n\x1a\n"
SIM = get_ontology("sim")
BG = np.array([38, 38, 42], dtype=np.uint8)


# ---------------------------------------------------------------------- fixtures
def _frames_2d(n: int = 5, h: int = 48, w: int = 64, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """(gt, m1, m2, ensemble) id masks of the sim ontology: bands of sky / tree_crown / low_grass / dirt,
    a rock, a void corner; model 1 confuses tree_crown with bush (more in later frames), model 2
    low_grass with high_grass; the ensemble trusts model 2 where model 1 says bush and model 2 tree_crown."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        gt = np.zeros((h, w), np.uint8)
        gt[:12], gt[12:24], gt[24:36], gt[36:] = 1, 9, 5, 2
        r0, c0 = int(rng.integers(26, 40)), int(rng.integers(0, 50))
        gt[r0:r0 + 6, c0:c0 + 10] = 11
        gt[0:2, 0:4] = 0
        m1, m2 = gt.copy(), gt.copy()
        m1[12:18, :20 + 8 * i] = 7
        m2[30:36, 40:] = 6
        m1[rng.random((h, w)) < 0.03] = 3
        ens = m1.copy()
        sel = (m1 == 7) & (m2 == 9)
        ens[sel] = 9
        out.append((gt, m1, m2, ens))
    return out


def _write_2d(root: Path, frames: list[tuple[np.ndarray, ...]]) -> Path:
    for i, arrays in enumerate(frames):
        for d, a in zip(("gt", "m1", "m2", "ens"), arrays):
            write_label_png(root / d / "seq" / f"{i:06d}.png", a)
        gt = arrays[0]
        write_image(root / "images" / "seq" / f"{i:06d}.png",
                    np.stack([gt * 12, 255 - gt * 10, (gt * 37) % 255], -1).astype(np.uint8))
    return root


def _rules(names: list[str]) -> dict:
    n = len(names)
    return {
        "format": "terraseg-ensemble-rules", "version": 1, "ontology": "sim", "class_names": names, "ignore_ids": [0],
        "options": {"min_pixels": 500, "precision_margin": 0.05, "max_class_drop": 0.005, "min_gain": 5e-05},
        "atoms": [
            {"m1": "bush", "m2": "tree_crown", "m1_id": 7, "m2_id": 9, "pixels": 900, "m1_correct": 0,
             "m2_correct": 900, "gain": 0.03, "miou_after": 0.73, "iou_change": {"tree_crown": 0.2, "bush": 0.0}},
            {"m1": "gravel", "m2": "dirt", "m1_id": 3, "m2_id": 2, "pixels": 100, "m1_correct": 10, "m2_correct": 60,
             "gain": 0.004, "miou_after": 0.734, "iou_change": {"dirt": 0.01, "gravel": -0.002}},
        ],
        "rules": [{"when_m2": "tree_crown", "when_m1": ["bush"], "trust": "m2"},
                  {"when_m2": "dirt", "when_m1": ["gravel"], "trust": "m2"}],
        "scores": {
            "tuning": {"frames": 4, "miou_m1": 0.70, "miou_m2": 0.65, "miou_ensemble": 0.734, "gain": 0.034,
                       "iou_m1": [None] + [0.7] * (n - 1), "iou_m2": [None] + [0.6] * (n - 1),
                       "iou_ensemble": [None] + [0.7] * 8 + [0.9] + [0.7] * (n - 10)},
            "holdout": {"frames": 2, "miou_m1": 0.69, "miou_m2": 0.64, "miou_ensemble": 0.70, "gain": 0.01,
                        "iou_m1": [None] + [0.7] * (n - 1), "iou_m2": [None] + [0.6] * (n - 1),
                        "iou_ensemble": [None] + [0.7] * 8 + [0.75] + [0.7] * (n - 10)},
            "kfold": {"folds": 3, "tuning_gain": [0.03, 0.035, 0.032], "heldout_gain": [0.01, -0.002, 0.005],
                      "mean_tuning_gain": 0.0323, "mean_heldout_gain": 0.0043},
        },
    }


def _run_dir(root: Path) -> Path:
    """A Lightning-CSVLogger-like metrics.csv: training rows and validation rows with empty cells."""
    run = root / "run-a"
    run.mkdir(parents=True)
    lines = ["epoch,step,train/acc,train/loss,train/lr,val/aAcc,val/mAcc,val/mIoU"]
    for e in range(3):
        lines.append(f"{e},{e * 20 + 9},{50 + e},{1.0 / (e + 1):.4f},0.01,,,")
        lines.append(f"{e},{e * 20 + 19},,,,{60 + 5 * e},{40 + 5 * e},{30 + 6 * e}")
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    return run


class _Page(HTMLParser):
    """Collects section ids, img srcs and every attribute value of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.imgs: list[str] = []
        self.attrs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        self.attrs += [v for v in a.values() if v]
        if tag == "section":
            self.sections.append(a.get("id") or "")
        if tag == "img":
            self.imgs.append(a.get("src") or "")


def _decode_png(src: str) -> bytes:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data.startswith(PNG)
    return data


@pytest.fixture(scope="module")
def report2d(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[np.ndarray, ...]], object]:
    root = tmp_path_factory.mktemp("report2d")
    frames = _frames_2d()
    _write_2d(root, frames)
    (root / "rules.json").write_text(json.dumps(_rules(SIM.names)))
    run = _run_dir(root)
    res = build_report(root / "out", root / "gt", root / "m1", "sim", pred2=root / "m2", name1="upernet",
                       name2="mask2former", images=root / "images", rules=root / "rules.json",
                       ensemble=root / "ens", runs=[run], num_frames=3)
    return root, frames, res


# ---------------------------------------------------------------------- render3d
def test_bev_puts_forward_up_left_left_and_the_highest_point_wins() -> None:
    pts = np.array([[5.0, 0.0, 0.0], [5.0, 0.0, 1.0], [0.0, 5.0, 0.0]], np.float32)
    col = np.array([[0, 0, 255], [255, 0, 0], [0, 255, 0]], np.uint8)
    ext = BevExtent(-10.0, 10.0, -10.0, 10.0)
    for order in ([0, 1, 2], [1, 0, 2]):  # draw order must not matter
        img = render_bev(pts[order], col[order], ext, size=20, point_px=1)
        assert img.shape == (20, 20, 3) and img.dtype == np.uint8
        assert img[5, 10].tolist() == [255, 0, 0]  # 5 m ahead: row (10 - 5) / 20 * 20; higher point on top
        assert img[10, 5].tolist() == [0, 255, 0]  # 5 m left: column (10 - 5) / 20 * 20
        assert (img.reshape(-1, 3) == BG).all(axis=1).sum() == 400 - 2
    big = render_bev(pts[:1], col[:1], ext, size=20, point_px=3)
    assert (big[4:7, 9:12] == [0, 0, 255]).all() and (big.reshape(-1, 3) != BG).any(axis=1).sum() == 9


def test_bev_extent_is_square_and_holds_the_sensor() -> None:
    pts = np.array([[2.0, 1.0, 0.0], [20.0, -3.0, 0.0], [300.0, 0.0, 0.0]])  # the far return is cut by max_range
    ext = bev_extent(pts, max_range=50.0, margin=1.0, quantile=0.0)
    assert ext.size_m[0] == pytest.approx(ext.size_m[1])
    assert ext.x_min <= -1.0 and ext.x_max == pytest.approx(21.0) and ext.x_max < 300


def test_range_view_columns_rows_and_nearest_point() -> None:
    pts = np.array([[10.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 0.0]])
    col = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    img = render_range(pts, col, elevation=(-10.0, 10.0), width=16, rows=4, row_px=2)
    assert img.shape == (8, 16, 3)
    # elevation 0 -> bin (10 - 0) / 20 * 4 = 2 -> pixel rows 4 and 5; +x at the centre column 8
    assert img[4, 8].tolist() == [0, 255, 0] and img[5, 8].tolist() == [0, 255, 0]  # the nearer point wins
    assert img[4, 4].tolist() == [0, 0, 255]  # +y (left, yaw 90 degrees) -> column (180 - 90) / 360 * 16
    assert (img.reshape(-1, 3) != BG).any(axis=1).sum() == 4  # the point at the origin is not drawn
    lo, hi = elevation_range(pts[:3])
    assert lo < 0 < hi


def test_colour_helpers() -> None:
    c = scalar_colors(np.array([0.0, 1.0, np.nan]), "viridis", limits=(0.0, 1.0))
    assert c.shape == (3, 3) and c.dtype == np.uint8 and c[2].tolist() == c[0].tolist()
    lc = label_colors(np.array([1, 9, 99]), SIM.palette)
    assert lc[0].tolist() == list(SIM["sky"].color) and lc[2].tolist() == [255, 0, 255]
    with pytest.raises(DataError, match="expected \\(2, 3\\) uint8 colours"):
        render_bev(np.zeros((2, 3)), np.zeros((3, 3), np.uint8))


# ---------------------------------------------------------------------- curves
def test_curves_from_metrics_csv_and_history(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    (run / "history.jsonl").write_text(json.dumps({"epoch": 0, "step": 19, "val/mIoU": 30.0, "val/IoU/sky": 88.5})
                                       + "\n")
    c = read_curves(run)
    steps, vals = c.series["train/loss"]
    assert steps.tolist() == [9, 29, 49] and vals == pytest.approx([1.0, 0.5, 0.3333])
    assert c.series["val/mIoU"][0].tolist() == [19, 39, 59] and c.series["val/mIoU"][1].tolist() == [30, 36, 42]
    assert c.series["val/IoU/sky"][1].tolist() == [88.5]  # only in history.jsonl
    assert c.best("val/mIoU") == (59, 42.0) and c.last("train/acc") == 52.0
    assert [Path(s).name for s in c.sources] == ["metrics.csv", "history.jsonl"]


def test_curves_from_tensorboard_when_no_logs(tmp_path: Path) -> None:
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    run = tmp_path / "tbrun"
    wr = EventFileWriter(str(run / "tb"))
    for s in range(3):
        wr.add_event(Event(wall_time=1.0 + s, step=s,
                           summary=Summary(value=[Summary.Value(tag="train/loss", simple_value=1.0 / (s + 1))])))
    wr.close()
    c = read_curves(run)
    assert c.series["train/loss"][0].tolist() == [0, 1, 2]
    assert c.series["train/loss"][1] == pytest.approx([1.0, 0.5, 1 / 3])


def test_curves_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run folder not found"):
        read_curves(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no TensorBoard event files"):
        read_curves(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.csv").write_text("epoch,step,train/loss\n0,1,oops\n")
    with pytest.raises(DataError, match=r"metrics.csv: row 2, column 'train/loss': 'oops' is not a number"):
        read_curves(bad)


# ---------------------------------------------------------------------- data
def test_agreement_is_the_histograms_marginals() -> None:
    from terraseg.ensemble import histogram_arrays

    rng = np.random.default_rng(3)
    c = 5
    gt, m1, m2 = (rng.integers(0, c, 4000).astype(np.uint8) for _ in range(3))
    h = histogram_arrays(m1, m2, gt, c)
    names = [f"c{i}" for i in range(c)]
    ag = agreement_from_histogram(h, names, names[1:])  # class 0 as if ignored
    keep = gt != 0
    g, a, b = gt[keep], m1[keep], m2[keep]
    for k, n in enumerate(names[1:]):
        s = g == k + 1
        expect = [np.sum(s & (a == g) & (b == g)), np.sum(s & (a == b) & (a != g)), np.sum(s & (a == g) & (b != g)),
                  np.sum(s & (b == g) & (a != g)), np.sum(s & (a != b) & (a != g) & (b != g))]
        assert ag.parts[k].tolist() == expect, n
    assert ag.total == keep.sum() and ag.agree == np.sum(a == b)
    assert ag.m1_wins == np.sum((a == g) & (b != g)) and ag.m2_wins == np.sum((b == g) & (a != g))
    assert ag.rate() == pytest.approx(np.mean(a == b))
    with pytest.raises(DataError, match="has no class"):
        agreement_from_histogram(h, names, ["nope"])


def test_gather_scores_frames_and_agreement(tmp_path: Path) -> None:
    frames = _frames_2d(n=3)
    _write_2d(tmp_path, frames)
    data = gather(tmp_path / "gt", tmp_path / "m1", "sim", tmp_path / "m2", names=("a", "b"))
    assert data.kind == "image" and [m.name for m in data.models] == ["a", "b"] and data.ensemble is None
    gt = np.concatenate([f[0].ravel() for f in frames])
    m1 = np.concatenate([f[1].ravel() for f in frames])
    m2 = np.concatenate([f[2].ravel() for f in frames])
    keep = gt != 0  # void is the sim ontology's ignore id
    k = SIM.id_of("tree_crown")
    sc = data.models[0].scores
    i = sc.class_names.index("tree_crown")
    tp = np.sum(keep & (gt == k) & (m1 == k))
    assert sc.iou[i] == pytest.approx(tp / np.sum(keep & ((gt == k) | (m1 == k))))
    assert data.agreement is not None and data.agreement.total == keep.sum()
    assert data.agreement.rate() == pytest.approx(np.mean(m1[keep] == m2[keep]))
    f0 = frames[0]
    k0 = f0[0] != 0
    assert data.frames[0].key == "seq/000000"
    assert data.frames[0].disagreement == pytest.approx(np.mean(f0[1][k0] != f0[2][k0]))
    assert data.frames[0].counted == k0.sum() and len(data.frames[0].miou) == 2


def test_gather_rejects_unpaired_and_mismatched_files(tmp_path: Path) -> None:
    _write_2d(tmp_path, _frames_2d(n=2))
    (tmp_path / "m2" / "seq" / "000001.png").unlink()
    with pytest.raises(DataError, match=r"1 ground-truth file\(s\) have no prediction in .*m2"):
        gather(tmp_path / "gt", tmp_path / "m1", "sim", tmp_path / "m2")
    write_label_png(tmp_path / "m1" / "seq" / "000001.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"000001.png: prediction size .*\(10, 10\) differs from ground truth"):
        gather(tmp_path / "gt", tmp_path / "m1", "sim")
    write_label_png(tmp_path / "m1" / "seq" / "000001.png", np.full((48, 64), 77, np.uint8))
    with pytest.raises(DataError, match=r"m1/seq/000001.png: .*not ids of ontology 'sim': 77"):
        gather(tmp_path / "gt", tmp_path / "m1", "sim")


def test_choose_frames_auto_and_by_name() -> None:
    st = [FrameStat(f"s/{i}", 100, [m, m], [m, m], d)
          for i, (m, d) in enumerate([(0.9, 0.1), (0.2, 0.05), (0.8, 0.5), (0.7, 0.3)])]
    picked = choose_frames(st, 3)
    assert [k for k, _ in picked] == ["s/2", "s/3", "s/1"]
    assert "disagree on 50.0 %" in picked[0][1] and "worst frame" in picked[2][1]
    one = [FrameStat(f.key, f.counted, f.miou[:1], f.acc[:1]) for f in st]
    assert [k for k, _ in choose_frames(one, 2)][-1] == "s/1"
    assert choose_frames(st, 2, requested=["3", "s/0.png"]) == [("s/3", "chosen by name"), ("s/0", "chosen by name")]
    with pytest.raises(DataError, match=r"unknown frame\(s\) nope; frames look like s/0"):
        choose_frames(st, 2, requested=["nope"])


def test_find_companion(tmp_path: Path) -> None:
    from terraseg.report.data import find_companion

    for rel in ("a/x.png", "b/y.jpg", "c/z_windshield_vis.png", "d/w.png", "e/w.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    exts = (".png", ".jpg")
    assert find_companion(tmp_path, "a/x", exts) == tmp_path / "a/x.png"
    assert find_companion(tmp_path, "seq/y", exts) == tmp_path / "b/y.jpg"  # by stem anywhere
    assert find_companion(tmp_path, "z", exts) == tmp_path / "c/z_windshield_vis.png"  # GOOSE naming
    assert find_companion(tmp_path, "w", exts) is None  # ambiguous
    assert find_companion(tmp_path, "q", exts) is None


def test_load_rules_checks_the_file(tmp_path: Path) -> None:
    p = tmp_path / "rules.json"
    p.write_text("{not json")
    with pytest.raises(DataError, match=r"rules.json: not valid JSON \(line 1"):
        load_rules(p)
    p.write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a terraseg ensemble rules file"):
        load_rules(p)
    r = _rules(SIM.names)
    del r["atoms"][1]["gain"]
    p.write_text(json.dumps(r))
    with pytest.raises(DataError, match=r"atom #1 needs m1, m2 and gain"):
        load_rules(p)
    with pytest.raises(DataError, match="rules file not found"):
        load_rules(tmp_path / "missing.json")


# ---------------------------------------------------------------------- the report
def test_report_2d_two_models_writes_every_section_and_file(report2d: tuple) -> None:
    root, frames, res = report2d
    out = root / "out"
    for name in ("report.html", "summary.csv", "per_class.csv", "confusions.csv", "agreement.csv", "atoms.csv",
                 "frames.csv", "curves.csv", "per_class_top.png", "per_class_all.png", "frequency_iou.png",
                 "precision_recall.png", "confusion_m1.png", "confusion_m2.png", "agreement.png", "waterfall.png",
                 "ensemble_iou_change.png", "ensemble_gain.png", "curves.png", "sample_01.png", "sample_03.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".report-*")) and not list(out.glob(".*tmp*"))
    html = (out / "report.html").read_text()
    page = _Page()
    page.feed(html)
    assert page.sections == list(SECTION_IDS)
    pngs = sorted(out.glob("*.png"))
    assert len(page.imgs) == len(pngs) == 14  # 11 figures + 3 sample frames
    assert {_decode_png(s) for s in page.imgs} == {p.read_bytes() for p in pngs}
    for value in page.attrs:
        assert not value.startswith(("http:", "https:", "file:", "//")), value
    assert "http:" not in html and "https:" not in html and 'src="file' not in html
    assert not page.tags & {"script", "link", "iframe"}
    for sid in SECTION_IDS:
        assert f'href="#{sid}"' in html  # table of contents
    assert "Not available" not in html
    assert "over-fitting gap of 2.40 points" in html
    assert "tree_crown \u2192 bush" in html  # the most common confusion of model 1
    # CSV values are the evaluation's
    rows = {r["name"]: r for r in csv.DictReader(open(out / "per_class.csv"))}
    gt = np.concatenate([f[0].ravel() for f in frames])
    m1 = np.concatenate([f[1].ravel() for f in frames])
    k = SIM.id_of("tree_crown")
    iou = np.sum((gt == k) & (m1 == k)) / np.sum((gt != 0) & ((gt == k) | (m1 == k)))
    assert float(rows["tree_crown"]["upernet:iou"]) == pytest.approx(iou, abs=1e-6)
    assert set(rows) == set(SIM.names) - {"void"}
    ag = {r["class"]: r for r in csv.DictReader(open(out / "agreement.csv"))}
    assert int(ag["tree_crown"]["only_m2_correct"]) == np.sum((gt == k) & (m1 != k))  # model 2 is right there
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["model"] for r in summary] == ["upernet", "mask2former", "ensemble"]
    assert float(summary[2]["mIoU"]) > float(summary[0]["mIoU"])
    atoms = list(csv.DictReader(open(out / "atoms.csv")))
    assert [(a["m1"], a["m2"], float(a["gain"])) for a in atoms] == [("bush", "tree_crown", 0.03),
                                                                     ("gravel", "dirt", 0.004)]
    chosen = [r["key"] for r in csv.DictReader(open(out / "frames.csv")) if r["chosen_because"]]
    assert len(chosen) == 3 and [k for k, _ in res.frames] == ["seq/000003", "seq/000002", "seq/000004"]
    curves = list(csv.DictReader(open(out / "curves.csv")))
    assert ("run-a", "val/mIoU", "59", "42") in {(r["run"], r["tag"], r["step"], r["value"]) for r in curves}


def test_report_one_model_says_why_sections_do_not_apply(tmp_path: Path) -> None:
    _write_2d(tmp_path, _frames_2d(n=2))
    res = build_report(tmp_path / "out", tmp_path / "gt", tmp_path / "m1", "sim", num_frames=1)
    html = res.html.read_text()
    page = _Page()
    page.feed(html)
    assert page.sections == list(SECTION_IDS)
    for why in ("one model given", "no rules file", "no training run given", "No camera images given"):
        assert why in html
    assert not (tmp_path / "out" / "agreement.csv").exists() and res.data.agreement is None
    assert len(page.imgs) == len(list((tmp_path / "out").glob("*.png"))) == 6


def _write_3d(root: Path, n: int = 2, npts: int = 1500) -> None:
    rng = np.random.default_rng(1)
    for i in range(n):
        r, a = rng.uniform(3, 30, npts), rng.uniform(-np.pi, np.pi, npts)
        z = np.full(npts, -1.7)
        lab = np.where(a > 0, 2, 5).astype(np.uint32)
        tree = rng.random(npts) < 0.15
        r[tree], a[tree], z[tree] = 10.0, 0.3, rng.uniform(-1.7, 4, tree.sum())
        lab[tree] = np.where(z[tree] > 1, 9, 8)
        pts = np.stack([r * np.cos(a), r * np.sin(a), z, rng.random(npts)], 1).astype(np.float32)
        m1, m2 = lab.copy(), lab.copy()
        m1[(lab == 8) & (rng.random(npts) < 0.5)] = 9
        m2[(lab == 5) & (rng.random(npts) < 0.2)] = 6
        write_bin(root / "points" / f"{i:06d}.bin", pts)
        for d, lbl in (("gt", lab), ("m1", m1), ("m2", m2)):
            write_label(root / d / f"{i:06d}.label", lbl)


def test_report_3d_renders_point_clouds(tmp_path: Path) -> None:
    _write_3d(tmp_path)
    res = build_report(tmp_path / "out", tmp_path / "gt", tmp_path / "m1", "sim", pred2=tmp_path / "m2",
                       points=tmp_path / "points", frames=["000001"])
    assert res.data.kind == "points" and res.frames == [("000001", "chosen by name")]
    from PIL import Image

    with Image.open(tmp_path / "out" / "sample_01.png") as im:
        assert im.width >= 1000 and im.height > 1000  # 4 bird's-eye panels over 4 sensor strips
    page = _Page()
    page.feed(res.html.read_text())
    assert page.sections == list(SECTION_IDS) and all(_decode_png(s) for s in page.imgs)
    assert res.data.agreement is not None and res.data.agreement.total == 3000
    # without scans the samples section says what is missing
    res2 = build_report(tmp_path / "out2", tmp_path / "gt", tmp_path / "m1", "sim", num_frames=1)
    assert "pass --points DIR" in res2.html.read_text()


def test_bad_input_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_2d(tmp_path, _frames_2d(n=2))
    (tmp_path / "rules.json").write_text("[]")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="rules.json: not a terraseg ensemble rules file"):
        build_report(out, tmp_path / "gt", tmp_path / "m1", "sim", rules=tmp_path / "rules.json")
    assert not out.exists()
    with pytest.raises(ConfigError, match="--points is for point-cloud ground truth"):
        build_report(out, tmp_path / "gt", tmp_path / "m1", "sim", points=tmp_path / "images")
    from terraseg.report import plots

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("plot failed")

    monkeypatch.setattr(plots, "plot_precision_recall", boom)
    with pytest.raises(RuntimeError, match="plot failed"):
        build_report(out, tmp_path / "gt", tmp_path / "m1", "sim", num_frames=0)
    assert out.is_dir() and list(out.iterdir()) == []  # the staging folder is gone, nothing was moved in


def test_cli_report(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    import terraseg.cli.report  # noqa: F401  (registers the command before it is in terraseg.cli)
    from terraseg.cli.app import app

    _write_2d(tmp_path, _frames_2d(n=2))
    run = CliRunner()
    base = ["report", "--pred", str(tmp_path / "m1"), "--gt", str(tmp_path / "gt"), "-O", "sim"]
    r = run.invoke(app, [*base, "--pred2", str(tmp_path / "m2"), "--name1", "A", "--name2", "B", "--images",
                         str(tmp_path / "images"), "--frames", "000001", "--out", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 0, r.output
    assert "A: aAcc" in r.output and "agreement" in r.output and "report written to" in r.output
    html = (tmp_path / "out" / "report.html").read_text()
    assert "seq/000001: chosen by name" in html and "A vs B" in html
    r = run.invoke(app, [*base, "--images", "x", "--points", "y", "--out", str(tmp_path / "o2")])
    assert r.exit_code == 1 and "error:" in r.output and "not both" in r.output
    r = run.invoke(app, [*base, "--frames", "nope", "--out", str(tmp_path / "o3"), "-q"])
    assert r.exit_code == 1 and "unknown frame(s) nope" in r.output
    assert not (tmp_path / "o3" / "report.html").exists()


# ---------------------------------------------------------------------- headless browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_in_headless_chromium(report2d: tuple, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    html = (report2d[0] / "out" / "report.html").resolve()
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", html.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = _Page()
    page.feed(proc.stdout)
    assert page.sections == list(SECTION_IDS), proc.stderr[-2000:]
    assert len(page.imgs) == 14
    for src in page.imgs:
        _decode_png(src)


@pytest.mark.realdata
def test_report_on_a_real_semantickitti_scan(shared_data: Path, tmp_path: Path) -> None:
    """A real HDL-64E scan (123,389 points, raw SemanticKITTI ids incl. moving classes) as ground truth,
    with two corrupted copies as the models."""
    from terraseg.io import read_label

    src = shared_data / "spvnas"
    sem, _ = read_label(src / "000000.label")
    onto = get_ontology("semantickitti-raw")
    veg, terrain, road, parking = (onto.id_of(n) for n in ("vegetation", "terrain", "road", "parking"))
    m1, m2 = sem.copy(), sem.copy()
    m1[sem == veg] = terrain
    m2[sem == road] = parking
    (tmp_path / "points").mkdir()
    shutil.copy(src / "000000.bin", tmp_path / "points" / "000000.bin")
    for d, lbl in (("gt", sem), ("m1", m1), ("m2", m2)):
        write_label(tmp_path / d / "000000.label", lbl)
    res = build_report(tmp_path / "out", tmp_path / "gt", tmp_path / "m1", "semantickitti-raw",
                       pred2=tmp_path / "m2", points=tmp_path / "points")
    keep = ~np.isin(sem, sorted(onto.ignore_ids))
    ag = res.data.agreement
    assert ag is not None and ag.total == keep.sum()
    assert ag.rate() == pytest.approx(np.mean(m1[keep] == m2[keep]))
    assert ag.m1_wins == np.sum(keep & (sem == road)) and ag.m2_wins == np.sum(keep & (sem == veg))
    rows = {r["name"]: r for r in csv.DictReader(open(tmp_path / "out" / "per_class.csv"))}
    assert float(rows["vegetation"]["model 1:iou"]) == 0.0 and float(rows["road"]["model 2:iou"]) == 0.0
    page = _Page()
    page.feed(res.html.read_text())
    assert page.sections == list(SECTION_IDS) and len(page.imgs) == 8  # 7 figures + 1 frame
