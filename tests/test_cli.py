"""The terraseg command end to end: ontology listing and eval-masks on PNG folders made here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from terraseg.cli import app
from terraseg.io import write_label_png
from terraseg.metrics import ConfusionMatrix, get_preset
from terraseg.ontology import encode_colors

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_commands_with_examples() -> None:
    res = run("--help")
    assert res.exit_code == 0
    assert "eval-masks" in res.output and "ontology" in res.output
    for sub in (["eval-masks"], ["ontology", "list"], ["ontology", "show"], ["ontology", "maps"]):
        r = run(*sub, "--help")
        assert r.exit_code == 0 and "Example: terraseg" in r.output


def test_ontology_list_and_show() -> None:
    res = run("ontology", "list")
    assert res.exit_code == 0
    for name in ("goose", "rellis3d", "semantickitti-raw", "traversability"):
        assert name in res.output
    res = run("ontology", "show", "goose", "--grouping", "goose-11")
    assert res.exit_code == 0
    assert "hedge" in res.output and "#e8d317" in res.output and "Vegetation" in res.output


def test_ontology_maps() -> None:
    res = run("ontology", "maps")
    assert "goose -> traversability" in res.output
    res = run("ontology", "maps", "rellis3d", "traversability")
    assert res.exit_code == 0 and "puddle" in res.output and "water" in res.output


def test_unknown_ontology_is_one_clear_error() -> None:
    res = run("ontology", "show", "gose")
    assert res.exit_code == 1
    assert "error: unknown ontology 'gose'" in res.output and "did you mean 'goose'" in res.output
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------- eval-masks
def _make_folders(root: Path, n: int = 4, seed: int = 0, gt_suffix: str = "", sub: str = "scene_a"):
    """GOOSE-id masks: ground truth with blobs of a few classes, predictions with errors."""
    rng = np.random.default_rng(seed)
    pred_dir, gt_dir = root / "pred", root / "gt"
    classes = np.array([0, 16, 23, 50, 53, 38, 39])
    ref = ConfusionMatrix.for_ontology("goose", ignore_ids=())
    for i in range(n):
        gt = classes[rng.integers(0, len(classes), (6, 8))].repeat(4, 0).repeat(4, 1).astype(np.uint8)
        pred = gt.copy()
        flip = rng.random(gt.shape) < 0.2
        pred[flip] = classes[rng.integers(0, len(classes), flip.sum())]
        write_label_png(gt_dir / sub / f"f{i:03d}{gt_suffix}.png", gt)
        write_label_png(pred_dir / sub / f"f{i:03d}.png", pred)
        ref.update(pred, gt)
    return pred_dir, gt_dir, ref


def test_eval_masks_end_to_end(tmp_path) -> None:
    pred_dir, gt_dir, ref = _make_folders(tmp_path, gt_suffix="_labelids")
    out = tmp_path / "report"
    res = run("eval-masks", str(pred_dir), str(gt_dir), "--ontology", "goose", "--preset", "goose-challenge",
              "--gt-suffix", "_labelids", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "evaluated 4 pair(s)" in res.output
    assert "composite_mIoU" in res.output
    data = json.loads((out / "metrics.json").read_text())
    expected = get_preset("goose-challenge").evaluate(ref)
    assert data["summary"]["mIoU"] == pytest.approx(100 * expected.fine_miou, abs=1e-3)
    assert data["summary"]["composite_mIoU"] == pytest.approx(100 * expected.composite, abs=1e-3)
    np.testing.assert_array_equal(ConfusionMatrix.load(out / "confusion.npz").matrix, ref.matrix)
    for f in ("report.md", "per_class.md", "per_class.csv", "per_class_columns.md", "confusion.png"):
        assert (out / f).stat().st_size > 0


def test_eval_masks_colour_masks(tmp_path) -> None:
    pred_dir, gt_dir, ref = _make_folders(tmp_path, n=2)
    for p in gt_dir.rglob("*.png"):  # turn ground truth into colour masks
        ids = np.asarray(Image.open(p))
        Image.fromarray(encode_colors(ids, "goose")).save(p)
    out = tmp_path / "r"
    res = run("eval-masks", str(pred_dir), str(gt_dir), "-O", "goose", "--gt-color", "--out", str(out), "-q")
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(ConfusionMatrix.load(out / "confusion.npz").matrix, ref.matrix)
    # an id PNG read as colour fails with the file name and the unknown colours
    res = run("eval-masks", str(pred_dir), str(gt_dir), "-O", "goose", "--color", "--out", str(out), "-q")
    assert res.exit_code == 1
    assert "pred/scene_a/f000.png" in res.output and "colours that are not in ontology 'goose'" in res.output


def test_missing_and_extra_files_are_named(tmp_path) -> None:
    pred_dir, gt_dir, _ = _make_folders(tmp_path)
    (pred_dir / "scene_a" / "f001.png").unlink()
    write_label_png(pred_dir / "scene_a" / "zzz.png", np.zeros((24, 32), np.uint8))
    res = run("eval-masks", str(pred_dir), str(gt_dir), "-O", "goose", "--out", str(tmp_path / "o"))
    assert res.exit_code == 1
    assert "1 ground-truth file(s) have no prediction" in res.output and "f001.png" in res.output
    assert "1 prediction file(s) have no ground truth" in res.output and "zzz.png" in res.output
    assert not (tmp_path / "o").exists(), "no partial report on error"


def test_size_mismatch_and_bad_ids_and_skip_bad(tmp_path) -> None:
    pred_dir, gt_dir, _ = _make_folders(tmp_path)
    write_label_png(pred_dir / "scene_a" / "f001.png", np.zeros((10, 10), np.uint8))
    bad = np.full((24, 32), 16, np.uint8)
    bad[0, :3] = 64  # not a GOOSE id
    write_label_png(pred_dir / "scene_a" / "f002.png", bad)
    (pred_dir / "scene_a" / "f003.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    res = run("eval-masks", str(pred_dir), str(gt_dir), "-O", "goose", "--out", str(tmp_path / "o"), "-q",
              "--workers", "1")
    assert res.exit_code == 1
    assert "f001.png: prediction size 10x10 differs from ground truth" in res.output
    assert "32x24" in res.output

    out = tmp_path / "o2"
    res = run("eval-masks", str(pred_dir), str(gt_dir), "-O", "goose", "--out", str(out), "--skip-bad", "-q")
    assert res.exit_code == 0, res.output
    assert "evaluated 1 pair(s), skipped 3" in res.output
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert len(skipped) == 3
    text = "\n".join(skipped)
    assert "f002.png: 3 values are not ids of ontology 'goose': 64 (3x)" in text
    assert "f003.png: unreadable or truncated image" in text


def test_everything_bad_is_an_error_even_with_skip_bad(tmp_path) -> None:
    pred_dir, gt_dir, _ = _make_folders(tmp_path, n=1)
    write_label_png(pred_dir / "scene_a" / "f000.png", np.zeros((3, 3), np.uint8))
    res = run("eval-masks", str(pred_dir), str(gt_dir), "-O", "goose", "--skip-bad", "-q")
    assert res.exit_code == 1 and "no valid prediction / ground-truth pairs" in res.output


def test_missing_folder(tmp_path) -> None:
    res = run("eval-masks", str(tmp_path / "nope"), str(tmp_path), "-O", "goose")
    assert res.exit_code == 1 and "prediction folder not found" in res.output


def test_ignore_id_option(tmp_path) -> None:
    pred_dir, gt_dir, _ = _make_folders(tmp_path, n=1)
    gt = np.asarray(Image.open(gt_dir / "scene_a" / "f000.png")).copy()
    gt[:4] = 255
    write_label_png(gt_dir / "scene_a" / "f000.png", gt)
    res = run("eval-masks", str(pred_dir), str(gt_dir), "-O", "goose", "-q", "--out", str(tmp_path / "a"))
    assert res.exit_code == 1 and "255" in res.output
    res = run("eval-masks", str(pred_dir), str(gt_dir), "-O", "goose", "-q", "--ignore-id", "255",
              "--out", str(tmp_path / "b"))
    assert res.exit_code == 0
    assert ConfusionMatrix.load(tmp_path / "b" / "confusion.npz").total == 24 * 32 - 4 * 32


def test_console_script_runs_as_a_subprocess(tmp_path) -> None:
    pred_dir, gt_dir, _ = _make_folders(tmp_path, n=2)
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.run([sys.executable, "-m", "terraseg", "eval-masks", str(pred_dir), str(gt_dir),
                           "--ontology", "goose", "--preset", "goose-challenge", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "reports written to" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "terraseg", "eval-masks", str(pred_dir), str(gt_dir),
                           "--ontology", "goose", "--preset", "nope"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("error: unknown evaluation preset 'nope'")
    assert "Traceback" not in proc.stderr
