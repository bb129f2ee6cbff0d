"""Scores from a matrix, evaluation presets (GOOSE challenge), category folding, published table."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import yaml

from terraseg.errors import ConfigError
from terraseg.metrics import ClassScores, ConfusionMatrix, EvalPreset, fold_matrix, get_preset, list_presets


def test_hand_computed_scores() -> None:
    # rows = truth, cols = prediction
    m = np.array([[3, 1, 0, 0],
                  [2, 4, 0, 0],
                  [0, 0, 0, 0],    # class 2: absent everywhere -> NaN, left out of means
                  [0, 1, 0, 0]])   # class 3: only in ground truth, never predicted -> IoU 0
    s = ClassScores.from_matrix(m, class_names=["a", "b", "c", "d"])
    # a: TP 3, FN 1, FP 2 -> IoU 3/6, acc 3/4, prec 3/5, F1 6/9
    assert s.iou[0] == pytest.approx(0.5)
    assert s.acc[0] == pytest.approx(0.75)
    assert s.precision[0] == pytest.approx(0.6)
    assert s.f1[0] == pytest.approx(2 / 3)
    # b: TP 4, FN 2, FP 2 -> IoU 4/8
    assert s.iou[1] == pytest.approx(0.5)
    assert math.isnan(s.iou[2]) and math.isnan(s.acc[2]) and math.isnan(s.precision[2])
    assert s.iou[3] == 0.0 and s.acc[3] == 0.0 and math.isnan(s.precision[3])
    assert s.aacc == pytest.approx(7 / 11)
    assert s.miou == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert s.macc == pytest.approx((0.75 + 4 / 6 + 0.0) / 3)
    assert any("c" in n and "NaN" in n for n in s.notes)


def test_class_only_in_prediction_scores_zero() -> None:
    m = np.array([[5, 2], [0, 0]])  # class 1 never in truth but predicted twice
    s = ClassScores.from_matrix(m)
    assert s.iou[1] == 0.0
    assert math.isnan(s.acc[1])
    assert s.miou == pytest.approx((5 / 7 + 0.0) / 2)
    assert s.macc == pytest.approx(5 / 7)  # accuracy of class 1 is undefined


def test_exclude_ids_are_scored_but_not_averaged() -> None:
    m = np.diag([1, 1, 1])
    m[2, 0] = 3
    s = ClassScores.from_matrix(m, exclude_ids=[2])
    assert s.iou[2] == pytest.approx(0.25)
    assert s.miou == pytest.approx((0.25 + 1.0) / 2)  # class 0: TP1 FP3 -> 0.25


def test_scores_match_torchmetrics_jaccard() -> None:
    from torchmetrics.classification import MulticlassJaccardIndex

    rng = np.random.default_rng(5)
    gt = rng.integers(0, 6, 5000)
    pred = np.where(rng.random(5000) < 0.6, gt, rng.integers(0, 6, 5000))
    s = ConfusionMatrix(6).update(pred, gt).scores()
    tm = MulticlassJaccardIndex(num_classes=6, average="none")(torch.from_numpy(pred), torch.from_numpy(gt))
    np.testing.assert_allclose(s.iou, tm.numpy(), rtol=1e-6)


def test_fold_matrix() -> None:
    m = np.arange(16).reshape(4, 4)
    f = fold_matrix(m, np.array([0, 0, 1, -1]), 2)
    assert f.tolist() == [[0 + 1 + 4 + 5, 2 + 6], [8 + 9, 10]]


# --------------------------------------------------------------------------- presets
def test_builtin_presets_are_listed_and_checked() -> None:
    assert {"goose-challenge", "goose-challenge-reduced", "goose-icra2025"} <= set(list_presets())
    with pytest.raises(ConfigError, match="unknown evaluation preset 'nope'"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="is for ontology 'goose', not 'rellis3d'"):
        get_preset("goose-challenge", "rellis3d")
    with pytest.raises(ConfigError, match="composite score needs a category grouping"):
        EvalPreset("x", "goose", composite=True)
    d = get_preset(None, "rellis3d")
    assert d.effective_ignore_ids() == (0,) and d.grouping == "coarse"


def test_goose_challenge_counts_class_zero_and_composite_is_the_mean() -> None:
    p = get_preset("goose-challenge")
    cm = p.confusion_matrix()
    gt = np.array([0, 0, 16, 16, 53, 53, 38], dtype=np.uint8)    # undefined, forest, sky, building
    pred = np.array([0, 16, 16, 16, 53, 53, 39], dtype=np.uint8)  # one undefined->forest, building->wall
    cm.update(pred, gt)
    r = p.evaluate(cm)
    ious = dict(zip(r.scores.class_names, r.scores.iou))
    assert ious["undefined"] == pytest.approx(0.5)
    assert ious["forest"] == pytest.approx(2 / 3)
    assert ious["sky"] == 1.0 and ious["building"] == 0.0 and ious["wall"] == 0.0
    assert r.fine_miou == pytest.approx((0.5 + 2 / 3 + 1 + 0 + 0) / 5)  # 59 absent classes dropped
    cats = dict(zip(r.category_scores.class_names, r.category_scores.iou))
    # building and wall are both Construction: the miss disappears at category level
    assert cats["Construction"] == 1.0 and cats["Sky"] == 1.0
    # forest (Vegetation) got one undefined pixel as FP: undefined is in the unscored bucket
    assert cats["Vegetation"] == pytest.approx(2 / 3)
    assert math.isnan(cats["Water"])
    assert r.category_miou == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert r.composite == pytest.approx((r.fine_miou + r.category_miou) / 2)
    s = r.summary()
    assert s["composite_mIoU"] == pytest.approx(100 * r.composite, abs=1e-3)


def test_reduced_goose_variant_ignores_zero_and_excludes_ids() -> None:
    p = get_preset("goose-challenge-reduced")
    cm = p.confusion_matrix()
    gt = np.array([0, 0, 8, 16], dtype=np.uint8)     # undefined ignored, ego_vehicle excluded
    pred = np.array([16, 16, 8, 16], dtype=np.uint8)
    cm.update(pred, gt)
    r = p.evaluate(cm)
    assert 0 not in r.scores.class_ids.tolist()
    ious = dict(zip(r.scores.class_names, r.scores.iou))
    assert ious["ego_vehicle"] == 1.0 and ious["forest"] == 1.0
    assert r.fine_miou == pytest.approx(1.0)
    assert any("excluded" in n for n in r.notes)


def _tiny_ontology(tmp_path) -> str:
    data = {
        "name": "tiny", "void": ["void"], "ignore": [],
        "classes": [{"id": 0, "name": "void", "color": "#000000"},
                    {"id": 1, "name": "grass", "color": "#00ff00", "category": "veg"},
                    {"id": 2, "name": "tree", "color": "#008800", "category": "veg"},
                    {"id": 3, "name": "road", "color": "#888888", "category": "ground"}],
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_uncategorized_bucket_versus_drop(tmp_path) -> None:
    onto = _tiny_ontology(tmp_path)
    gt = np.array([1, 1, 2, 3, 0, 0])
    pred = np.array([2, 0, 2, 3, 3, 0])  # grass->tree (same category), grass->void, void->road
    results = {}
    for mode in ("bucket", "drop"):
        p = EvalPreset(f"t-{mode}", onto, ignore_ids=(), grouping="default", uncategorized=mode)
        cm = p.confusion_matrix().update(pred, gt)
        results[mode] = dict(zip(p.evaluate(cm).category_scores.class_names, p.evaluate(cm).category_scores.iou))
    # bucket: veg TP 2, FN 1 (grass->void) -> 2/3; ground TP 1, FP 1 (void->road) -> 1/2
    assert results["bucket"]["veg"] == pytest.approx(2 / 3)
    assert results["bucket"]["ground"] == pytest.approx(0.5)
    # drop: void rows and columns removed -> both categories perfect
    assert results["drop"]["veg"] == 1.0 and results["drop"]["ground"] == 1.0


# --------------------------------------------------------------------------- published table
# Official GOOSE fine-grained challenge test results (reference 004): per-class IoU in percent;
# classes 7, 9, 44, 56, 62, 63 were absent from the test set (listed as 0.00, NaN here).
GOOSE_TEST_IOU = [
    25.56, 0.00, 67.67, 87.26, 53.99, 19.74, 49.20, None, 91.97, None, 71.51, 72.07, 93.73, 70.06, 86.77,
    87.79, 70.40, 38.97, 1.27, 70.61, 42.61, 66.88, 63.23, 92.28, 31.68, 35.35, 78.25, 53.52, 65.07, 25.62,
    77.21, 61.59, 44.85, 30.41, 51.78, 84.62, 80.90, 27.69, 85.81, 54.83, 20.05, 84.46, 62.40, 7.62, None,
    50.44, 70.61, 70.84, 27.02, 1.44, 73.01, 59.68, 33.35, 97.54, 51.23, 31.55, None, 48.78, 59.42, 48.98,
    92.30, 0.00, None, None,
]
GOOSE_TEST_CATEGORIES = {"Animal": 30.41, "Construction": 78.37, "Human": 86.67, "Object": 40.42, "Road": 69.99,
                         "Sign": 72.07, "Sky": 97.54, "Terrain": 89.14, "Vegetation": 93.39, "Vehicle": 86.77,
                         "Water": 51.23}


def test_goose_challenge_aggregation_reproduces_the_published_table() -> None:
    p = get_preset("goose-challenge")
    class_iou = np.array([np.nan if v is None else v / 100 for v in GOOSE_TEST_IOU])
    assert len(class_iou) == 64 and np.isnan(class_iou).sum() == 6
    cat_names = list(p.onto.grouping("goose-11"))
    assert cat_names == list(GOOSE_TEST_CATEGORIES)
    fine, cat, comp = p.aggregate(class_iou, [GOOSE_TEST_CATEGORIES[c] / 100 for c in cat_names])
    assert 55.23 <= 100 * fine <= 55.25
    assert 100 * cat == pytest.approx(72.36, abs=0.01)
    assert 100 * comp == pytest.approx(63.80, abs=0.01)


def test_published_table_transcription_matches_reference(reference_dir) -> None:
    text = (reference_dir / "004_a90aa16824868e43.txt").read_text()
    rows = re.findall(r"^\| (\d+) \| (\w+) \| ([\d.]+) \|$", text, re.M)
    assert len(rows) == 64
    from terraseg.ontology import get_ontology

    goose = get_ontology("goose")
    for (cid, name, val), ours in zip(rows, GOOSE_TEST_IOU):
        assert goose.name_of(int(cid)) == name
        assert float(val) == (0.0 if ours is None else ours)
    cats = dict(re.findall(r"^\| ([A-Z]\w+) \| ([\d.]+) \|$", text, re.M))
    assert {k: float(v) for k, v in cats.items()} == GOOSE_TEST_CATEGORIES
    assert "mIoU composite: 63.80" in text
