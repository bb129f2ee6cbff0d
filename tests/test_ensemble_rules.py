"""Rules JSON, applying rules to arrays and folders, held-out / k-fold estimates, eval-masks equality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from terraseg.ensemble import (
    PairHistogram,
    RuleAtom,
    RuleSet,
    SearchOptions,
    build_histogram,
    greedy_search,
    holdout_mask,
    kfold_scores,
    tune_folders,
    tune_histograms,
)
from terraseg.errors import ConfigError, DataError
from terraseg.io.labels import write_label_png
from terraseg.io.scans import read_label, write_label
from terraseg.metrics import evaluate_mask_folders
from terraseg.ontology import get_ontology

GOOSE = get_ontology("goose")
FENCE, CURB, GRAVEL, SKY = (GOOSE.id_of(n) for n in ("fence", "curb", "gravel", "sky"))


def frame(rng: np.random.Generator, shift: bool = False, shape: tuple[int, int] = (24, 32)
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground truth of four blocks; model 1 calls curb "fence"; model 2 gets curb right but is
    noisy elsewhere. With ``shift`` the scene has real fences that model 2 calls curb instead."""
    h, w = shape
    gt = np.full(shape, SKY, np.uint8)
    gt[h // 2:, : w // 2] = GRAVEL
    gt[h // 2:, w // 2:] = FENCE if shift else CURB
    gt[: h // 4, : w // 4] = FENCE
    m1 = gt.copy()
    m2 = gt.copy()
    if shift:
        m2[h // 2:, w // 2:] = CURB
    else:
        m1[h // 2:, w // 2:] = FENCE
    noise = rng.random(shape) < 0.1
    m2[noise] = GRAVEL
    return m1, m2, gt


def write_set(root: Path, frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]], kind: str = "png") -> None:
    for k, (m1, m2, gt) in enumerate(frames):
        for d, arr in (("m1", m1), ("m2", m2), ("gt", gt)):
            if kind == "png":
                write_label_png(root / d / f"f{k:02d}.png", arr)
            else:
                write_label(root / d / f"f{k:02d}.label", arr.ravel())


OPTS = SearchOptions(min_pixels=20)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    write_set(tmp_path, [frame(rng) for _ in range(4)])
    return tmp_path


def test_tune_apply_equals_eval_masks(data: Path) -> None:
    """The ensemble mIoU from H equals what eval-masks reports for the written predictions."""
    res = tune_folders(data / "m1", data / "m2", data / "gt", "goose", OPTS, holdout=0, kfold=0)
    rules = res.rules
    assert [(a.m1, a.m2) for a in rules.atoms][0] == ("fence", "curb")
    s = rules.scores.tuning
    assert s is not None and rules.scores.holdout is None and rules.scores.kfold is None
    summary = rules.apply_folders(data / "m1", data / "m2", data / "ens")
    assert summary.frames == 4 and summary.changed == sum(summary.atom_pixels) > 0
    ev_ens = evaluate_mask_folders(data / "ens", data / "gt", "goose")
    ev_m1 = evaluate_mask_folders(data / "m1", data / "gt", "goose")
    ev_m2 = evaluate_mask_folders(data / "m2", data / "gt", "goose")
    assert s.miou_ensemble == pytest.approx(ev_ens.result.fine_miou, abs=1e-12)
    assert s.miou_m1 == pytest.approx(ev_m1.result.fine_miou, abs=1e-12)
    assert s.miou_m2 == pytest.approx(ev_m2.result.fine_miou, abs=1e-12)
    assert s.gain == pytest.approx(ev_ens.result.fine_miou - ev_m1.result.fine_miou, abs=1e-12)
    got = [None if not np.isfinite(x) else x for x in ev_ens.result.scores.iou]
    np.testing.assert_allclose(np.array(s.iou_ensemble, dtype=float), np.array(got, dtype=float), atol=1e-12)
    doc = json.loads((data / "ens" / "summary.json").read_text())
    assert doc["frames"] == 4 and doc["changed"] == summary.changed and doc["rules"][0]["when_m2"] == "curb"


def test_apply_arrays_and_label_files(tmp_path: Path) -> None:
    rs = RuleSet(["a", "b", "c"], [0, 3, 7], [RuleAtom("a", "c", 0, 7), RuleAtom("b", "a", 3, 0)])
    m1 = np.array([[0, 0, 3], [3, 7, 0]], np.uint8)
    m2 = np.array([[7, 3, 0], [3, 0, 0]], np.uint8)
    out, counts = rs.apply_counts(m1, m2)
    assert out.dtype == np.uint8 and out.tolist() == [[7, 0, 0], [3, 7, 0]] and counts.tolist() == [1, 1]
    with pytest.raises(DataError, match=r"f\.png: 1 model-1 values are not class ids \(1\)"):
        rs.apply(np.array([1, 0]), np.array([0, 0]), source="f.png")
    with pytest.raises(DataError, match="shapes differ"):
        rs.apply(m1, m2[:, :2])
    # .label files keep model 1's instance ids
    write_label(tmp_path / "m1" / "s.label", m1.ravel(), np.arange(6))
    write_label(tmp_path / "m2" / "s.label", m2.ravel())
    s = rs.apply_folders(tmp_path / "m1", tmp_path / "m2", tmp_path / "out")
    sem, inst = read_label(tmp_path / "out" / "s.label")
    assert s.kind == "label" and sem.tolist() == out.ravel().tolist() and inst.tolist() == list(range(6))


def test_apply_folder_errors_before_writing(data: Path) -> None:
    rs = RuleSet.from_search(greedy_search(build_histogram(data / "m1", data / "m2", data / "gt", "goose")[0], OPTS),
                             build_histogram(data / "m1", data / "m2", data / "gt", "goose")[0])
    write_label_png(data / "m2" / "f01.png", np.zeros((5, 5), np.uint8))
    write_label_png(data / "m2" / "f03.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DataError, match=r"2 prediction pair\(s\) differ in size: .*m1/f01.png \(32x24\) vs "
                                        r".*m2/f01.png \(5x5\); .*f03.png"):
        rs.apply_folders(data / "m1", data / "m2", data / "out")
    assert not (data / "out").exists()
    (data / "m2" / "f01.png").unlink()
    with pytest.raises(DataError, match=r"model-2 folder .*m2 lacks 1 stem\(s\) present elsewhere: f01"):
        rs.apply_folders(data / "m1", data / "m2", data / "out")
    with pytest.raises(DataError, match="output folder must differ"):
        rs.apply_folders(data / "m1", data / "m2", data / "m1")


def test_rules_json_round_trip_and_validation(data: Path, tmp_path: Path) -> None:
    res = tune_folders(data / "m1", data / "m2", data / "gt", "goose", OPTS, holdout=0.5, kfold=2)
    p = res.rules.save(tmp_path / "rules.json")
    doc = json.loads(p.read_text())
    assert doc["format"] == "terraseg-ensemble-rules" and doc["version"] == 1 and doc["ontology"] == "goose"
    assert doc["class_names"] == GOOSE.names and doc["options"]["min_pixels"] == 20
    a0 = doc["atoms"][0]
    assert (a0["m1"], a0["m2"], a0["m1_id"], a0["m2_id"]) == ("fence", "curb", FENCE, CURB)
    assert set(a0) >= {"pixels", "m1_correct", "m2_correct", "gain", "miou_after", "iou_change"}
    assert doc["rules"][0] == {"when_m2": "curb", "when_m1": ["fence"], "trust": "m2"}
    assert set(doc["scores"]) == {"tuning", "holdout", "kfold"}
    assert len(doc["scores"]["tuning"]["iou_m1"]) == 64 and doc["scores"]["kfold"]["folds"] == 2
    back = RuleSet.load(p)
    assert back.to_dict() == res.rules.to_dict()
    assert back.pairs() == res.rules.pairs()

    def broken(edit: dict, name: str = "bad.json") -> Path:
        d = json.loads(p.read_text())
        d.update(edit)
        q = tmp_path / name
        q.write_text(json.dumps(d))
        return q

    atoms = doc["atoms"]
    cases = [
        ({"format": "x"}, "not a terraseg ensemble rules file"),
        ({"version": 2}, "unsupported rules version 2"),
        ({"atoms": [{**atoms[0], "m2": "kerb"}]}, r"atoms\[0\]\.m2 'kerb' is not one of the class names"),
        ({"atoms": [{**atoms[0], "m1_id": 3}]}, r"atoms\[0\]\.m1_id 3 does not match class 'fence'"),
        ({"atoms": [{**atoms[0], "m2": "fence", "m2_id": FENCE}], "rules": None}, r"atoms\[0\] overrides 'fence' with itself"),
        ({"atoms": [atoms[0], atoms[0]], "rules": None}, r"atoms\[1\] repeats the atom fence -> curb"),
        ({"rules": []}, "rules do not match atoms"),
        ({"options": {"min_pixels": 0}}, "options: min_pixels must be >= 1, got 0"),
        ({"class_names": ["a", "a"]}, "class_names holds duplicates"),
        ({"scores": {"tuning": {"frames": 1}}}, "scores: bad or missing field"),
    ]
    for edit, msg in cases:
        with pytest.raises(DataError, match=f"bad.json: {msg}"):
            RuleSet.load(broken(edit))
    (tmp_path / "bad.json").write_text("{\n  nope")
    with pytest.raises(DataError, match=r"bad.json: not valid JSON \(line 2"):
        RuleSet.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="missing.json: rules file not found"):
        RuleSet.load(tmp_path / "missing.json")


def test_holdout_mask() -> None:
    assert holdout_mask(10, 0.3).tolist() == [False] * 7 + [True] * 3
    assert np.nonzero(holdout_mask(10, 0.3, "index"))[0].tolist() == [1, 5, 8]
    assert not holdout_mask(5, 0.0).any()
    assert holdout_mask(3, 0.01).sum() == 1 and holdout_mask(3, 0.9).sum() == 2
    with pytest.raises(DataError, match="at least 2 frames"):
        holdout_mask(1, 0.5)
    with pytest.raises(ConfigError):
        holdout_mask(4, 1.0)


def test_heldout_gain_shows_the_gap(tmp_path: Path) -> None:
    """Rules tuned on scenes where model 2's "curb" is right do not carry over to scenes where it is wrong."""
    rng = np.random.default_rng(1)
    frames = [frame(rng) for _ in range(4)] + [frame(rng, shift=True) for _ in range(4)]
    write_set(tmp_path, frames)
    res = tune_folders(tmp_path / "m1", tmp_path / "m2", tmp_path / "gt", "goose", OPTS, holdout=0.5, kfold=2)
    tuning, held, kf = res.rules.scores.tuning, res.rules.scores.holdout, res.rules.scores.kfold
    assert tuning is not None and held is not None and kf is not None
    assert (tuning.frames, held.frames) == (4, 4) and res.tuning.stems == ["f00", "f01", "f02", "f03"]
    assert tuning.gain > 0.05 and held.gain < 0
    # the held-out gain is the re-scored gain of the rules on the held-out frames' pixels
    ens = [res.rules.apply(m1, m2) for m1, m2, _ in frames[4:]]
    from terraseg.metrics import ConfusionMatrix, default_preset

    preset = default_preset("goose")
    cm_e, cm_1 = preset.confusion_matrix(), preset.confusion_matrix()
    for e, (m1, _, gt) in zip(ens, frames[4:]):
        cm_e.update(e, gt)
        cm_1.update(m1, gt)
    assert held.gain == pytest.approx(preset.evaluate(cm_e).fine_miou - preset.evaluate(cm_1).fine_miou, abs=1e-12)
    assert isinstance(cm_e, ConfusionMatrix)
    # 2-fold by block: fold 0 = shifted-free scenes, fold 1 = shifted scenes
    assert kf.folds == 2 and kf.frames == [4, 4]
    assert kf.tuning_gain[0] == 0.0 and kf.heldout_gain[0] == 0.0 and kf.atoms[0] == 0
    assert kf.tuning_gain[1] > 0.05 and kf.heldout_gain[1] < 0
    folds = build_histogram(tmp_path / "m1", tmp_path / "m2", tmp_path / "gt", "goose", folds=2, split="block")
    again = kfold_scores(folds, OPTS)
    assert again.to_dict() == kf.to_dict()
    with pytest.raises(DataError, match="a 9-fold estimate needs at least 9 frames, found 8"):
        tune_folders(tmp_path / "m1", tmp_path / "m2", tmp_path / "gt", "goose", OPTS, kfold=9)


def test_tune_histograms_without_files() -> None:
    h = np.zeros((3, 3, 3), np.int64)
    h[0, 0, 0], h[1, 1, 1], h[2, 2, 2], h[0, 1, 1] = 5000, 5000, 5000, 800
    hist = PairHistogram(h, ["a", "b", "c"], frames=2)
    r = tune_histograms(hist, hist, [hist, hist])
    assert r.rules.scores.holdout is not None and r.rules.scores.tuning is not None
    assert r.rules.scores.holdout.gain == r.rules.scores.tuning.gain > 0
    assert r.total.frames == 4
    assert [str(x) for x in r.rules.rules] == ["if model 2 says b and model 1 says a, trust model 2"]
