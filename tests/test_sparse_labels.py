"""Sparse label budgets: exact sizes, reproducible draws, region clicks, storage and application."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from terraseg.errors import ConfigError, DataError
from terraseg.label_efficient import (
    SPARSE_LABELS_FILE,
    LabelBudget,
    SparseLabels,
    apply_label_mask,
    draw_label_mask,
)


@pytest.mark.parametrize(("spec", "fraction", "count"), [
    ("1%", 0.01, None), ("0.1%", 0.001, None), (" 10 % ", 0.1, None), ("100%", 1.0, None), (0.01, 0.01, None),
    ("0.5", 0.5, None), (20, None, 20), ("20", None, 20), ("20.0", None, 20),
])
def test_parse(spec: object, fraction: float | None, count: int | None) -> None:
    b = LabelBudget.parse(spec)  # type: ignore[arg-type]
    assert (b.fraction, b.count, b.strategy) == (fraction, count, "random")


@pytest.mark.parametrize("spec", ["0%", "150%", "-1", 0, -5, "abc", "", 1.5, "2.5", True, None, float("nan"), "1e400%"])
def test_invalid_budgets_give_one_clear_error(spec: object) -> None:
    with pytest.raises(ConfigError, match="invalid label budget") as err:
        LabelBudget.parse(spec)  # type: ignore[arg-type]
    assert "'0.1%', '1%' or '10%'" in str(err.value) and "20" in str(err.value)


def test_invalid_direct_construction() -> None:
    with pytest.raises(ConfigError, match="invalid label budget 1.5: a fraction must be in \\(0, 1\\]"):
        LabelBudget(fraction=1.5)
    with pytest.raises(ConfigError, match="a count must be a whole number >= 1"):
        LabelBudget(count=0)
    with pytest.raises(ConfigError, match="not both"):
        LabelBudget(fraction=0.1, count=3)
    with pytest.raises(ConfigError, match="unknown label strategy"):
        LabelBudget(count=3, strategy="grid")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="non-negative integer"):
        draw_label_mask(np.zeros(5, np.uint8), "a", LabelBudget(count=1), seed=-1)


def test_rounding_rule_is_exact() -> None:
    one = LabelBudget.parse("1%")
    assert [one.size(n) for n in (0, 1, 49, 50, 149, 150, 250, 251, 1000, 123389)] == \
        [0, 1, 1, 1, 1, 2, 3, 3, 10, 1234]
    tenth = LabelBudget.parse("0.1%")
    assert [tenth.size(n) for n in (499, 1500, 2500, 131072)] == [1, 2, 3, 131]
    # decimal fractions are exact: 7 % of 100 is 7 (7.000000000000001 in floats)
    assert LabelBudget.parse("7%").size(100) == 7 and LabelBudget(fraction=0.07).size(100) == 7
    assert LabelBudget(count=20).size(15) == 15 and LabelBudget(count=20).size(1000) == 20
    assert LabelBudget.parse("100%").size(17) == 17


def test_random_draw_is_exact_and_reproducible() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 20000).astype(np.uint8)
    labels[rng.random(20000) < 0.3] = 255
    n_ok = int((labels != 255).sum())
    for spec in ("0.1%", "1%", "10%", 20):
        b = LabelBudget.parse(spec)  # type: ignore[arg-type]
        m = draw_label_mask(labels, "seq00/000123", b, seed=7, ignore_index=255)
        assert m.dtype == bool and m.sum() == b.size(n_ok)
        assert (labels[m] != 255).all()  # void points are never labelled
        again = draw_label_mask(labels, "seq00/000123", b, seed=7, ignore_index=255)
        np.testing.assert_array_equal(m, again)
    a = draw_label_mask(labels, "f1", LabelBudget.parse("1%"), seed=0, ignore_index=255)
    assert not np.array_equal(a, draw_label_mask(labels, "f2", LabelBudget.parse("1%"), seed=0, ignore_index=255))
    assert not np.array_equal(a, draw_label_mask(labels, "f1", LabelBudget.parse("1%"), seed=1, ignore_index=255))
    # the draw depends on (seed, frame id) only, not on what was drawn before
    store = SparseLabels(LabelBudget.parse("1%"), 0, 255)
    store.add("f2", labels)
    np.testing.assert_array_equal(store.add("f1", labels), a)


def test_region_clicks_one_per_region_then_rounds() -> None:
    regions = np.repeat(np.arange(10), 50)
    labels = np.zeros(500, np.uint8)
    labels[regions == 9] = 255  # region 9 has no labellable point
    per_region = LabelBudget.parse("regions")
    m = draw_label_mask(labels, "f", per_region, seed=3, ignore_index=255, regions=regions)
    assert m.sum() == 9 and np.array_equal(np.bincount(regions[m], minlength=10), [1] * 9 + [0])
    # 4 clicks: four distinct regions; 20 clicks: two rounds of 9 plus 2 third clicks
    m4 = draw_label_mask(labels, "f", LabelBudget(count=4, strategy="regions"), 3, 255, regions)
    assert m4.sum() == 4 and len(np.unique(regions[m4])) == 4
    m20 = draw_label_mask(labels, "f", LabelBudget(count=20, strategy="regions"), 3, 255, regions)
    per = np.bincount(regions[m20], minlength=10)
    assert m20.sum() == 20 and sorted(per[:9].tolist()) == [2] * 7 + [3] * 2 and per[9] == 0
    # the first four clicks of the 20 are the 4-click draw (same visiting order)
    assert np.isin(np.flatnonzero(m4), np.flatnonzero(m20)).all()
    with pytest.raises(DataError, match="needs a region partition"):
        draw_label_mask(labels, "f", per_region, seed=0)


def test_center_clicks_land_near_region_centres() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0]], dtype=np.float64)
    regions = np.repeat(np.arange(3), 200)
    xyz = centres[regions] + rng.normal(0, 1, (600, 3))
    m = draw_label_mask(np.zeros(600, np.uint8), "f", LabelBudget(strategy="regions", click="center"), 0,
                        regions=regions, xyz=xyz)
    for r in range(3):
        sel = regions == r
        d = np.linalg.norm(xyz[sel] - xyz[sel].mean(0), axis=1)
        assert d[m[sel]][0] == d.min()
    with pytest.raises(DataError, match="needs the points' coordinates"):
        draw_label_mask(np.zeros(600, np.uint8), "f", LabelBudget(strategy="regions", click="center"), 0,
                        regions=regions)


def test_apply_mask() -> None:
    labels = np.array([1, 2, 3, 4], np.uint8)
    np.testing.assert_array_equal(apply_label_mask(labels, np.array([1, 0, 1, 0], bool), 255), [1, 255, 3, 255])
    wide = apply_label_mask(labels, np.zeros(4, bool), 300)
    assert wide.dtype == np.uint16 and (wide == 300).all()
    with pytest.raises(DataError, match="shape"):
        apply_label_mask(labels, np.zeros(3, bool), 255)


def test_store_round_trip_next_to_a_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [(f"{i:06d}", rng.integers(0, 4, 1000 + i).astype(np.uint8)) for i in range(5)]
    store = SparseLabels.draw(frames, LabelBudget.parse("1%"), seed=11, ignore_index=255)
    run = tmp_path / "run"
    path = store.save(run)
    assert path == run / SPARSE_LABELS_FILE and path.is_file()
    assert not [p for p in os.listdir(run) if p.startswith(".")]  # no temporary file left
    back = SparseLabels.load(run)
    assert back.budget == store.budget and back.seed == 11 and back.ignore_index == 255 and len(back) == 5
    assert back.labelled == 5 * 10 and back.points == sum(len(f[1]) for f in frames)
    assert "5 frames, 50 of 5,010 points labelled" in back.summary() and "1% of points, random" in back.summary()
    for fid, lab in frames:
        np.testing.assert_array_equal(back.mask(fid), store.mask(fid))
        out = back.apply(fid, lab)
        assert (out != 255).sum() == 10 and np.array_equal(out[back.mask(fid)], lab[back.mask(fid)])
    with pytest.raises(DataError, match="drawn for 1000 points, the scan has 999"):
        back.apply("000000", frames[0][1][:-1])
    with pytest.raises(DataError, match="no label mask for frame 'nope'"):
        back.mask("nope")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="bad.npz: not a terraseg sparse-label file"):
        SparseLabels.load(bad)
    with pytest.raises(DataError, match="file not found"):
        SparseLabels.load(tmp_path / "missing.npz")
