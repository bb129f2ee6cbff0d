"""``terraseg ensemble tune | apply | average | vote`` end to end on tiny folders made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import terraseg.cli.ensemble  # noqa: F401  (registers the sub-app before and after it is imported by terraseg.cli)
import terraseg.cli.eval_masks  # noqa: F401
from terraseg.cli.app import app
from terraseg.io.labels import read_label_png, write_label_png
from terraseg.ontology import get_ontology

runner = CliRunner()
GOOSE = get_ontology("goose")
FENCE, CURB, GRAVEL, SKY = (GOOSE.id_of(n) for n in ("fence", "curb", "gravel", "sky"))


def run(*args: object) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, " ".join(res.output.split())  # undo rich's line wrapping


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for k in range(6):
        gt = np.full((16, 20), SKY, np.uint8)
        gt[8:, :10] = GRAVEL
        gt[8:, 10:] = CURB
        gt[:4, :5] = FENCE
        m1, m2 = gt.copy(), gt.copy()
        m1[8:, 10:] = FENCE  # model 1 calls curb "fence"
        m2[rng.random(gt.shape) < 0.1] = GRAVEL
        write_label_png(tmp_path / "m1" / f"f{k}.png", m1)
        write_label_png(tmp_path / "m2" / f"f{k}.png", m2)
        write_label_png(tmp_path / "gt" / f"f{k}_labelids.png", gt)
    return tmp_path


def test_help_has_examples() -> None:
    code, out = run("ensemble", "--help")
    assert code == 0 and all(c in out for c in ("tune", "apply", "average", "vote"))
    for sub in ("tune", "apply", "average", "vote"):
        code, out = run("ensemble", sub, "--help")
        assert code == 0 and "Example: terraseg ensemble" in out


def test_tune_then_apply_matches_eval_masks(data: Path) -> None:
    rules = data / "rules.json"
    code, out = run("ensemble", "tune", "--m1", data / "m1", "--m2", data / "m2", "--gt", data / "gt", "-O", "goose",
                    "--gt-suffix", "_labelids", "--out", rules, "--min-pixels", "50", "--holdout", "0.5", "--kfold",
                    "3", "--histogram", data / "h.npz", "-q")
    assert code == 0, out
    doc = json.loads(rules.read_text())
    tuning, held = doc["scores"]["tuning"], doc["scores"]["holdout"]
    assert doc["rules"][0] == {"when_m2": "curb", "when_m1": ["fence"], "trust": "m2"}
    assert "if model 2 says curb and model 1 says fence, trust model 2" in out
    assert f"tuning {100 * tuning['gain']:+.2f} mIoU (3 frames), held-out {100 * held['gain']:+.2f} mIoU (3 frames)" in out
    assert "3-fold by frame: tuning +" in out and "held-out +" in out
    assert (data / "h.npz").is_file()

    code, out = run("ensemble", "apply", rules, "--m1", data / "m1", "--m2", data / "m2", "--out", data / "ens", "-q")
    assert code == 0, out
    assert "6 frame(s)" in out and "values changed" in out
    assert sorted(p.name for p in (data / "ens").iterdir()) == [*(f"f{k}.png" for k in range(6)), "summary.json"]
    assert (read_label_png(data / "ens" / "f0.png")[8:, 10:] == CURB).mean() > 0.8  # where model 2 says curb

    # eval-masks on the held-out frames reports the held-out ensemble mIoU of the rules file
    held_dir = data / "ens_held"
    held_dir.mkdir()
    for k in (3, 4, 5):
        (held_dir / f"f{k}.png").write_bytes((data / "ens" / f"f{k}.png").read_bytes())
    gt_held = data / "gt_held"
    gt_held.mkdir()
    for k in (3, 4, 5):
        (gt_held / f"f{k}_labelids.png").write_bytes((data / "gt" / f"f{k}_labelids.png").read_bytes())
    code, out = run("eval-masks", held_dir, gt_held, "-O", "goose", "--gt-suffix", "_labelids", "--out",
                    data / "ev", "-q")
    assert code == 0, out
    metrics = json.loads((data / "ev" / "metrics.json").read_text())
    assert metrics["summary"]["mIoU"] == pytest.approx(100 * held["miou_ensemble"], abs=1e-3)


def test_tune_errors_are_one_line(data: Path) -> None:
    code, out = run("ensemble", "tune", "--m1", data / "m1", "--m2", data / "m2", "--gt", data / "nope", "-O", "goose",
                    "--out", data / "r.json", "-q")
    assert code == 1 and out.startswith("error:") and "nope: ground-truth folder not found" in out
    code, out = run("ensemble", "tune", "--m1", data / "m1", "--m2", data / "m2", "--gt", data / "gt", "-O", "goose",
                    "--gt-suffix", "_labelids", "--out", data / "r.json", "--split", "random", "-q")
    assert code == 1 and "unknown split scheme 'random'" in out
    code, out = run("ensemble", "tune", "--m1", data / "m1", "--m2", data / "m2", "--gt", data / "gt", "-O", "goose",
                    "--out", data / "r.json", "-q")
    assert code == 1 and "no frame name is shared" in out and "--gt-suffix _labelids" in out
    (data / "bad.json").write_text("{}")
    code, out = run("ensemble", "apply", data / "bad.json", "--m1", data / "m1", "--m2", data / "m2", "--out",
                    data / "o")
    assert code == 1 and "bad.json: not a terraseg ensemble rules file" in out


def test_average_and_vote(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    probs = [rng.random((64, 4, 5)).astype(np.float32) for _ in range(2)]
    for k, p in enumerate(probs):
        (tmp_path / f"p{k}").mkdir()
        np.save(tmp_path / f"p{k}" / "x.npy", p / p.sum(axis=0))
    code, out = run("ensemble", "average", "-i", tmp_path / "p0", "-i", tmp_path / "p1", "--weight", "1",
                    "--weight", "3", "--out", tmp_path / "avg", "-O", "goose", "-q")
    assert code == 0, out
    assert "averaged 2 models (average-prob, weights 0.25, 0.75) over 1 frame(s)" in out
    expected = (0.25 * probs[0] / probs[0].sum(0) + 0.75 * probs[1] / probs[1].sum(0)).argmax(0)
    np.testing.assert_array_equal(read_label_png(tmp_path / "avg" / "x.png"), expected)

    labels = [rng.integers(0, 5, (4, 5)).astype(np.uint8) for _ in range(3)]
    for k, lab in enumerate(labels):
        write_label_png(tmp_path / f"l{k}" / "x.png", lab)
    code, out = run("ensemble", "vote", "-i", tmp_path / "l0", "-i", tmp_path / "l1", "-i", tmp_path / "l2",
                    "--out", tmp_path / "vote", "-q")
    assert code == 0 and "majority vote of 3 models over 1 frame(s)" in out
    from terraseg.ensemble import majority_vote

    np.testing.assert_array_equal(read_label_png(tmp_path / "vote" / "x.png"), majority_vote(labels))
    code, out = run("ensemble", "vote", "-i", tmp_path / "l0", "-i", tmp_path / "l1", "--weight", "1",
                    "--out", tmp_path / "v2", "-q")
    assert code == 1 and "error: 1 weight(s) for 2 model(s)" in out
