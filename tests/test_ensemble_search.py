"""Exact atom effects against re-scoring, and the greedy search's acceptance tests one by one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from terraseg.ensemble import (
    GroupStats,
    PairHistogram,
    SearchOptions,
    candidate_effects,
    class_counts,
    greedy_search,
    histogram_arrays,
    histogram_from_arrays,
    model_scores,
    override_mask,
    score_atoms,
)
from terraseg.ensemble.search import qualifying
from terraseg.errors import ConfigError
from terraseg.metrics import ClassScores, ConfusionMatrix, default_preset


def override_arrays(m1: np.ndarray, m2: np.ndarray, atoms: list[tuple[int, int]]) -> np.ndarray:
    out = m1.copy()
    for i, c in atoms:
        out[(m1 == i) & (m2 == c)] = c
    return out


def rescore(m1: np.ndarray, m2: np.ndarray, gt: np.ndarray, c: int, atoms: list[tuple[int, int]]) -> ClassScores:
    return ConfusionMatrix(c).update(override_arrays(m1, m2, atoms), gt).scores()


def sample(seed: int, c: int = 6, n: int = 4000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, c - 1, n)  # class c-1 never in the ground truth
    m1 = np.where(rng.random(n) < 0.6, gt, rng.integers(0, c, n))
    m2 = np.where(rng.random(n) < 0.5, gt, rng.integers(0, c, n))
    return m1, m2, gt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_atom_sets_match_rescoring(seed: int) -> None:
    m1, m2, gt = sample(seed)
    h = PairHistogram(histogram_arrays(m1, m2, gt, 6), list("abcdef"))
    rng = np.random.default_rng(seed + 10)
    pairs = [(i, c) for i in range(6) for c in range(6)]
    for size in (0, 1, 3, 8, 20):
        atoms = [pairs[k] for k in rng.choice(len(pairs), size, replace=False)]
        ref = rescore(m1, m2, gt, 6, atoms)
        got = score_atoms(h, atoms)
        np.testing.assert_allclose(got.iou, ref.iou, rtol=0, atol=1e-12)
        assert got.miou == pytest.approx(ref.miou, abs=1e-12)
        np.testing.assert_array_equal(got.tp, ref.tp)
        np.testing.assert_array_equal(got.pred, ref.pred_count)
    assert model_scores(h, 2).miou == pytest.approx(ConfusionMatrix(6).update(m2, gt).scores().miou, abs=1e-12)


def test_candidate_effects_match_rescoring_including_vanishing_classes() -> None:
    """Every single-atom step from a non-empty set, including classes whose union becomes 0
    (IoU -> NaN, mean over fewer classes) and classes that appear only in predictions (NaN -> 0)."""
    m1, m2, gt = sample(3, c=5, n=600)
    m1[m1 == 4] = 0
    m1[:7] = 4  # model 1 says class 4 (absent from the ground truth) only where model 2 says 2
    m2[:7] = 2
    m2[m2 == 3] = 1
    m2[10:13] = 3  # model 2 says 3 only here (3 is in the ground truth)
    base = [(0, 1)]
    h = PairHistogram(histogram_arrays(m1, m2, gt, 5), list("abcde"))
    stats = GroupStats.from_histogram(h)
    tp, pred = class_counts(stats, override_mask(base, 5))
    eff = candidate_effects(stats, tp, pred)
    assert eff.current_miou == pytest.approx(rescore(m1, m2, gt, 5, base).miou, abs=1e-12)
    for i, c in itertools.product(range(5), range(5)):
        if (i, c) in base:
            continue
        ref = rescore(m1, m2, gt, 5, [*base, (i, c)])
        assert eff.miou[i, c] == pytest.approx(ref.miou, abs=1e-12), (i, c)
        assert eff.gain[i, c] == pytest.approx(ref.miou - eff.current_miou, abs=1e-12)
        np.testing.assert_allclose([eff.iou_i[i, c], eff.iou_c[i, c]], [ref.iou[i], ref.iou[c]], atol=1e-12)
    assert np.isnan(eff.iou_i[4, 2])  # class 4 disappears from both truth and prediction
    assert eff.gain[2, 2] == 0.0


def test_ignored_and_sparse_classes_match_the_metrics_preset() -> None:
    """rellis3d-raw: void is ignored in the ground truth but still a prediction; ids are sparse."""
    ids = default_preset("rellis3d-raw").onto.ids
    rng = np.random.default_rng(5)
    g = rng.integers(0, 20, 3000)
    p1 = np.where(rng.random(3000) < 0.6, g, rng.integers(0, 20, 3000))
    p2 = np.where(rng.random(3000) < 0.5, g, rng.integers(0, 20, 3000))
    m1, m2, gt = ids[p1].astype(np.uint8), ids[p2].astype(np.uint8), ids[g].astype(np.uint8)
    h = histogram_from_arrays([(m1, m2, gt)], "rellis3d-raw")
    preset = default_preset("rellis3d-raw")
    for atoms in ([], [(0, 3), (5, 1), (7, 0)]):
        ens = override_arrays(p1, p2, atoms)
        cm = preset.confusion_matrix().update(ids[ens].astype(np.uint8), gt)
        expected = preset.evaluate(cm)
        got = score_atoms(h, atoms)
        assert got.miou == pytest.approx(expected.fine_miou, abs=1e-12)
        np.testing.assert_allclose(got.iou[1:], expected.scores.iou, atol=1e-12)
        assert np.isnan(got.iou[0])  # void is not scored


def reference_greedy(h: PairHistogram, opts: SearchOptions) -> list[tuple[int, int]]:
    """Slow greedy search by re-scoring every candidate set from scratch."""
    c = h.num_classes
    stats = GroupStats.from_histogram(h)
    base = model_scores(stats, 1)
    atoms: list[tuple[int, int]] = []
    while True:
        cur = score_atoms(stats, atoms)
        ref = base.iou if opts.drop_reference == "baseline" else cur.iou
        best, best_gain = None, -np.inf
        for i, k in itertools.product(range(c), range(c)):
            if i == k or (i, k) in atoms:
                continue
            n, t1, t2 = stats.n[i, k], stats.t1[i, k], stats.t2[i, k]
            if n < opts.min_pixels or (t2 - t1) / n < opts.precision_margin - 1e-12:
                continue
            new = score_atoms(stats, [*atoms, (i, k)])
            both = np.isfinite(new.iou) & np.isfinite(ref)
            if np.any(new.iou[both] < ref[both] - opts.max_class_drop - 1e-12):
                continue
            gain = new.miou - cur.miou
            if gain > opts.min_gain and gain > best_gain + 1e-15:
                best, best_gain = (i, k), gain
        if best is None:
            return atoms
        atoms.append(best)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("drop_reference", ["baseline", "step"])
def test_greedy_matches_slow_reference(seed: int, drop_reference: str) -> None:
    m1, m2, gt = sample(seed, c=7, n=20000)
    h = PairHistogram(histogram_arrays(m1, m2, gt, 7), list("abcdefg"))
    opts = SearchOptions(min_pixels=50, precision_margin=0.02, max_class_drop=0.02, min_gain=1e-5,
                         drop_reference=drop_reference)  # type: ignore[arg-type]
    res = greedy_search(h, opts)
    assert res.pairs() == reference_greedy(h, opts)
    assert len(res.atoms) >= 1
    # bookkeeping: the chain of miou_after values, the gains and the final score agree
    assert res.atoms[-1].miou_after == pytest.approx(res.ensemble.miou, abs=1e-12)
    assert sum(a.gain for a in res.atoms) == pytest.approx(res.gain, abs=1e-12)
    assert all(a.gain > 0 for a in res.atoms)
    assert res.ensemble.miou == pytest.approx(rescore(m1, m2, gt, 7, res.pairs()).miou, abs=1e-12)


# ---------------------------------------------------------------- one test rejects, nothing else
def base_hist(group: dict[int, int], big: int = 10000, a: int = 10000, b: int = 10000,
              extra: dict[tuple[int, int, int], int] | None = None) -> PairHistogram:
    """Three classes a, b, c that both models get right, plus one disagreement group (a -> b)
    whose ground truth is ``group`` (class -> pixels)."""
    h = np.zeros((3, 3, 3), dtype=np.int64)
    h[0, 0, 0], h[1, 1, 1], h[2, 2, 2] = a, b, big
    for g, n in group.items():
        h[0, 1, g] = n
    for k, n in (extra or {}).items():
        h[k] += n
    return PairHistogram(h, ["a", "b", "c"])


def failing_tests(h: PairHistogram, opts: SearchOptions) -> list[str]:
    stats = GroupStats.from_histogram(h)
    tp, pred = class_counts(stats, np.zeros((3, 3), bool))
    _, tests, _ = qualifying(stats, np.zeros((3, 3), bool), tp, pred, model_scores(stats, 1).iou, opts)
    return [name for name, ok in tests.items() if not ok[0, 1]]


CASES = {
    # name: (histogram, options that reject, options that accept)
    "min_pixels": (base_hist({1: 360, 0: 40}), SearchOptions(), SearchOptions(min_pixels=400)),
    "precision_margin": (base_hist({1: 520, 0: 480}), SearchOptions(), SearchOptions(precision_margin=0.03)),
    "max_class_drop": (base_hist({1: 600, 0: 400}, a=600, b=100, extra={(2, 2, 0): 1000}), SearchOptions(),
                       SearchOptions(max_class_drop=0.1)),
    "min_gain": (base_hist({1: 600}, big=10**7, a=10**7, b=10**7), SearchOptions(), SearchOptions(min_gain=1e-5)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_acceptance_test_alone_rejects(name: str) -> None:
    h, strict, relaxed = CASES[name]
    assert failing_tests(h, strict) == [name]
    assert greedy_search(h, strict).atoms == []
    res = greedy_search(h, relaxed)
    assert res.pairs() == [(0, 1)] and failing_tests(h, relaxed) == []
    a = res.atoms[0]
    assert (a.pixels, a.m1_correct, a.m2_correct) == (int(h.counts[0, 1].sum()), int(h.counts[0, 1, 0]),
                                                      int(h.counts[0, 1, 1]))
    if name == "max_class_drop":
        assert a.iou_change[0] < -0.005 < 0 < a.iou_change[1]
    if name == "min_gain":
        assert 1e-5 < a.gain < 5e-5


def test_drop_reference_baseline_stops_cumulative_drops() -> None:
    h = np.zeros((3, 3, 3), dtype=np.int64)
    h[0, 0, 0], h[1, 1, 1], h[2, 2, 2] = 1000, 300, 300
    h[0, 1, 0], h[0, 1, 1], h[0, 2, 0], h[0, 2, 2] = 370, 630, 370, 630
    hist = PairHistogram(h, ["a", "b", "c"])
    step = greedy_search(hist, SearchOptions(drop_reference="step"))
    base = greedy_search(hist, SearchOptions())
    assert len(step.atoms) == 2 and len(base.atoms) == 1
    drops = [a.iou_change[0] for a in step.atoms]
    assert all(-0.005 < d < 0 for d in drops) and sum(drops) < -0.005


def test_largest_gain_first_and_max_atoms() -> None:
    h = base_hist({1: 2000})
    h.counts[2, 1, 1] = 900  # a second, smaller fix: model 1 says c, model 2 says b (right)
    res = greedy_search(h, SearchOptions())
    assert res.pairs() == [(0, 1), (2, 1)] and res.atoms[0].gain > res.atoms[1].gain
    assert res.stop_reason == "no candidate atom passes every test" and res.steps == 3
    one = greedy_search(h, SearchOptions(max_atoms=1))
    assert one.pairs() == [(0, 1)] and "max_atoms" in one.stop_reason


def test_options_validation_and_round_trip() -> None:
    o = SearchOptions(min_pixels=10, max_atoms=3, drop_reference="step")
    assert SearchOptions.from_dict(o.to_dict()) == o
    with pytest.raises(ConfigError, match="unknown option"):
        SearchOptions.from_dict({"min_pixel": 3})
    with pytest.raises(ConfigError, match="min_pixels must be >= 1"):
        SearchOptions(min_pixels=0)
    with pytest.raises(ConfigError, match="drop_reference"):
        SearchOptions(drop_reference="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bad option value"):
        SearchOptions.from_dict({"min_gain": "lots"})


def test_no_op_atoms_are_ignored() -> None:
    assert not override_mask([(1, 1), (0, 2)], 3)[1, 1]
    h = base_hist({1: 10})
    assert score_atoms(h, [(1, 1)]).miou == model_scores(h, 1).miou
