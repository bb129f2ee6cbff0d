"""The rule ensemble on the real RELLIS-3D frame 104 mask and scan (raw, sparse ids; void ignored)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from terraseg.ensemble import SearchOptions, build_histogram, tune_folders
from terraseg.io.labels import read_label_png, write_label_png
from terraseg.io.scans import read_label, write_label
from terraseg.metrics import default_preset, evaluate_mask_folders

pytestmark = pytest.mark.realdata
GRASS, TREE, SKY, PUDDLE, MUD, BUSH, WATER = 3, 4, 7, 31, 33, 19, 6


def test_rellis_mask_rules_match_eval_masks(shared_data: Path, tmp_path: Path) -> None:
    gt = read_label_png(shared_data / "rellis3d" / "frame000104-1581624663_149.png")
    assert gt.shape == (1200, 1920)
    rows = np.arange(gt.shape[0])[:, None] >= 600
    m1 = gt.copy()
    m1[(gt == GRASS) & rows] = MUD  # model 1 calls grass "mud" in the lower half
    m2 = np.roll(gt, 6, axis=1)  # model 2: boundaries off by 6 px ...
    m2[m2 == PUDDLE] = WATER  # ... and puddles called water
    for k, flip in enumerate((False, True)):
        for d, a in (("m1", m1), ("m2", m2), ("gt", gt)):
            write_label_png(tmp_path / d / f"f{k}.png", a[:, ::-1] if flip else a)
    res = tune_folders(tmp_path / "m1", tmp_path / "m2", tmp_path / "gt", "rellis3d-raw", SearchOptions(),
                       holdout=0, kfold=0)
    rules = res.rules
    assert ("mud", "grass") in [(a.m1, a.m2) for a in rules.atoms]
    assert all(a.m2 != "water" for a in rules.atoms)  # model 2's puddle error is never trusted
    assert res.tuning.total == 2 * gt.size  # no void pixels in this mask
    # the histogram's model-1 confusion is the metrics engine's matrix on the class ids
    preset = default_preset("rellis3d-raw")
    cm = preset.confusion_matrix().update(m1, gt).update(m1[:, ::-1], gt[:, ::-1]).matrix
    ids = res.tuning.class_ids
    np.testing.assert_array_equal(res.tuning.confusion(1), cm[np.ix_(ids, ids)])
    rules.apply_folders(tmp_path / "m1", tmp_path / "m2", tmp_path / "ens")
    ev = evaluate_mask_folders(tmp_path / "ens", tmp_path / "gt", "rellis3d-raw")
    tuning = rules.scores.tuning
    assert tuning is not None and tuning.gain > 0.01
    assert tuning.miou_ensemble == pytest.approx(ev.result.fine_miou, abs=1e-12)
    assert tuning.miou_m1 == pytest.approx(evaluate_mask_folders(tmp_path / "m1", tmp_path / "gt",
                                                                 "rellis3d-raw").result.fine_miou, abs=1e-12)


def test_rellis_scan_labels(shared_data: Path, tmp_path: Path) -> None:
    gt, _ = read_label(shared_data / "rellis3d" / "000104.label")
    m1 = gt.copy()
    m1[(gt == TREE) & (np.arange(gt.size) % 3 == 0)] = BUSH
    write_label(tmp_path / "gt" / "000104.label", gt)
    write_label(tmp_path / "m1" / "000104.label", m1)
    write_label(tmp_path / "m2" / "000104.label", gt)
    (h,) = build_histogram(tmp_path / "m1", tmp_path / "m2", tmp_path / "gt", "rellis3d-raw")
    void = int((gt == 0).sum())
    assert void == 68284 and h.total == gt.size - void  # void points are ignored
    k = {int(i): n for n, i in enumerate(h.class_ids)}
    assert h.counts[k[BUSH], k[TREE], k[TREE]] == int(((gt == TREE) & (np.arange(gt.size) % 3 == 0)).sum())
    assert h.agreement_rate() < 1.0
