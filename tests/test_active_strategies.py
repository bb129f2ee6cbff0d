"""Budgets, scores and every query strategy: exact budgets, no re-queries, hand-computed examples."""

from __future__ import annotations

import numpy as np
import pytest

from terraseg.active import (
    STRATEGIES,
    FrameContext,
    StrategyOptions,
    allocate_by_area,
    budget_count,
    feature_knn,
    importance_reweight,
    knn_entropy_scores,
    query_frame,
    region_membership,
    select,
    select_in_regions,
    select_redal,
    select_voxels,
    slic_regions,
)
from terraseg.active.scores import rank
from terraseg.errors import ConfigError, DataError

# ------------------------------------------------------------------------------------ budget


@pytest.mark.parametrize(("pct", "n", "count"), [
    (1.5, 50, 1),      # 0.75 rounds up
    (1, 250, 3),       # 2.5: half up
    (1, 249, 2),       # 2.49
    (0.1, 5, 1),       # 0.005 -> 0, but at least one
    (100, 7, 7),
    (0.57, 5000, 29),  # exactly 28.5; the float product is 28.499999999999996
    (3, 0, 0),
])
def test_budget_rounding_rule(pct: float, n: int, count: int) -> None:
    assert budget_count(pct, n) == count


@pytest.mark.parametrize("pct", [0, -1, 100.5, float("nan"), float("inf"), "abc"])
def test_budget_outside_range_is_one_clear_error(pct: object) -> None:
    with pytest.raises(ConfigError, match=r"budget must be a percentage in \(0, 100\]"):
        budget_count(pct, 10)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- a rich frame
def make_frame(n: int = 240, c: int = 4, seed: int = 0, name: str = "f0") -> FrameContext:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 2
    logits[::7] = logits[0]  # repeated rows: equal scores must still resolve deterministically
    p2 = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    l3 = logits + rng.normal(size=(n, c))
    p3 = np.exp(l3) / np.exp(l3).sum(1, keepdims=True)
    h, w = 40, 60
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, : w // 2] = (200, 40, 40)
    image[:, w // 2:] = (40, 40, 200)
    image[h // 2:, :, 1] = 180
    pixels = np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], 1)
    feats2 = rng.normal(size=(n, 8)).astype(np.float32)
    feats2[1::5] = feats2[0]  # several points sharing one pixel's features
    return FrameContext(name, probs_2d=p2, probs_3d=p3, feats_2d=feats2,
                        feats_3d=rng.normal(size=(n, 6)).astype(np.float32),
                        xyz=rng.uniform(0, 2, size=(n, 3)).astype(np.float32), pixels=pixels, image=image,
                        regions=rng.integers(0, 12, n), surface_variation=rng.uniform(0, 0.1, n))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_each_strategy_meets_budget_and_never_requeries(strategy: str) -> None:
    ctx = make_frame()
    labelled = np.zeros(ctx.n, dtype=bool)
    seen: list[np.ndarray] = []
    for pct in (10, 5, 12.5):
        sel = query_frame(strategy, ctx, pct, labelled)
        assert sel.budget == budget_count(pct, ctx.n)
        assert len(sel.indices) == sel.budget == len(np.unique(sel.indices))
        assert not labelled[sel.indices].any()
        assert sel.labelled_after == int(labelled.sum()) + sel.budget
        labelled[sel.indices] = True
        assert sel.fraction == pytest.approx(labelled.mean())
        seen.append(sel.indices)
    assert len(np.unique(np.concatenate(seen))) == sum(len(s) for s in seen)
    # deterministic: the same inputs give the same indices
    again = select(strategy, make_frame(), budget_count(10, 240))
    assert (again == seen[0]).all()


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategy_takes_every_remaining_point(strategy: str) -> None:
    ctx = make_frame(n=60)
    labelled = np.zeros(60, dtype=bool)
    labelled[::3] = True
    idx = select(strategy, ctx, 40, labelled)
    assert idx.tolist() == np.flatnonzero(~labelled).tolist()
    with pytest.raises(DataError, match="budget of 41 items exceeds the 40 unlabelled items"):
        select(strategy, ctx, 41, labelled)


@pytest.mark.parametrize("strategy", ["entropy", "knn_entropy", "regions", "voxel_entropy", "redal"])
def test_random_fraction_takes_that_share_at_random_then_the_strategy(strategy: str) -> None:
    ctx = make_frame()
    labelled = np.zeros(ctx.n, dtype=bool)
    labelled[::4] = True
    budget = 25
    plain = select(strategy, ctx, budget, labelled)
    assert (select(strategy, ctx, budget, labelled, StrategyOptions(random_fraction=0.0)) == plain).all()
    mixed = select(strategy, ctx, budget, labelled, StrategyOptions(random_fraction=0.4))
    assert len(mixed) == budget == len(np.unique(mixed)) and not labelled[mixed].any()
    # round(0.4 * 25) = 10 points drawn as the random strategy draws them, then the strategy's 15
    # among the points left
    rand10 = select("random", ctx, 10, labelled)
    after = labelled.copy()
    after[rand10] = True
    rest = select(strategy, ctx, 15, after)
    assert mixed.tolist() == sorted(rand10.tolist() + rest.tolist())
    every = select(strategy, ctx, budget, labelled, StrategyOptions(random_fraction=1.0))
    assert (every == select("random", ctx, budget, labelled)).all()
    # the random strategy itself ignores the option
    assert (select("random", ctx, budget, labelled, StrategyOptions(random_fraction=0.4)) ==
            select("random", ctx, budget, labelled)).all()


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", True])
def test_random_fraction_outside_0_1_is_one_clear_error(bad: object) -> None:
    with pytest.raises(ConfigError, match="random_fraction must be a number in \\[0, 1\\], got"):
        StrategyOptions(random_fraction=bad)  # type: ignore[arg-type]


def test_uncertainty_strategies_rank_as_the_reference() -> None:
    p2 = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.99, 0.01], [0.7, 0.3]])
    p3 = np.array([[0.8, 0.2], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    ctx = FrameContext("f", probs_2d=p2, probs_3d=p3)
    # ensemble confidence max((p2 + p3) / 2): .85 .7 .6 .595 .7 -> lowest two: 3, 2
    assert select("confidence", ctx, 2).tolist() == [2, 3]
    # summed margins: .8+.6, 0+.8, .2+.2, .98+.6, .4+.4 -> lowest two: 2, 4
    assert select("margin", ctx, 2).tolist() == [2, 4]
    # summed entropies (bits): .469+.722, 1+.469, .971+.971, .081+.722, .881+.881 -> highest: 2, 4
    assert select("entropy", ctx, 2).tolist() == [2, 4]
    assert select("entropy", FrameContext("f", probs_3d=p3), 1).tolist() == [2]  # one modality: its own


def test_rank_breaks_ties_by_secondary_then_index() -> None:
    primary = np.array([1.0, 2.0, 2.0, 2.0, 0.5])
    assert rank(primary).tolist() == [1, 2, 3, 0, 4]
    assert rank(primary, secondary=np.array([0, 0, 1, 0, 9])).tolist() == [2, 1, 3, 0, 4]
    assert rank(primary, candidates=np.array([True, False, True, True, True])).tolist() == [2, 3, 0, 4]


# ---------------------------------------------------------------------------- kNN entropy
# Five points in a 2-D feature space: A at the origin, B, C, D, E at distance 1 around it.
#   A: B, C, D, E all at 1 -> k=4 takes itself and the three lowest indices B, C, D
#   B: A at 1, C and E at sqrt 2            -> B, A, C, E
#   C: A at 1, B and D at sqrt 2            -> C, A, B, D
#   D: A at 1, C and E at sqrt 2            -> D, A, C, E
#   E: A at 1, B and D at sqrt 2            -> E, A, B, D
KNN_FEATS = np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float32)
KNN_LABELS = [0, 0, 1, 2, 0]  # E shares A's label: taking E instead of D for A would change A's entropy


def test_feature_knn_tie_break_by_index() -> None:
    nb = feature_knn(KNN_FEATS, 4)
    assert nb.tolist() == [[0, 1, 2, 3], [1, 0, 2, 4], [2, 0, 1, 3], [3, 0, 2, 4], [4, 0, 1, 3]]
    dup = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 0.0], [0.0, 0.0], [0.1, 0.0]], dtype=np.float32)
    assert feature_knn(dup, 3).tolist()[0] == [0, 2, 3]  # identical features: exact ties, lower index
    assert feature_knn(dup, 3).tolist()[3] == [3, 0, 2]
    assert feature_knn(dup[:2], 4).shape == (2, 2)  # k above N: all points
    import torch  # tensors (any device) and float64 give the same neighbours

    assert (feature_knn(torch.from_numpy(KNN_FEATS), 4) == nb).all()
    assert (feature_knn(KNN_FEATS.astype(np.float64), 4) == nb).all()


def test_knn_entropy_hand_example() -> None:
    probs = np.eye(3)[KNN_LABELS] * 0.8 + 0.2 / 3
    ctx = FrameContext("knn", probs_3d=probs, feats_3d=KNN_FEATS)
    # A: labels 0 0 1 2 -> 1.5 bits; B: 0 0 1 0 -> 0.811; C: 1 0 0 2 -> 1.5; D: 2 0 1 0 -> 1.5; E: 0 0 0 2 -> 0.811
    h = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25))
    np.testing.assert_allclose(knn_entropy_scores(ctx), [1.5, h, 1.5, 1.5, h], atol=1e-12)
    # 2D and 3D entropies are summed (same features in both: twice the values)
    both = FrameContext("knn", probs_2d=probs, probs_3d=probs, feats_2d=KNN_FEATS, feats_3d=KNN_FEATS)
    np.testing.assert_allclose(knn_entropy_scores(both), 2 * np.array([1.5, h, 1.5, 1.5, h]), atol=1e-12)
    # three points tie at 1.5 bits; with equal softmax entropy the lower indices win
    assert select("knn_entropy", ctx, 2).tolist() == [0, 2]
    sharper = probs.copy()
    sharper[0] = [0.98, 0.01, 0.01]  # A is now more confident: the tie goes to C and D
    assert select("knn_entropy", FrameContext("knn", probs_3d=sharper, feats_3d=KNN_FEATS), 2).tolist() == [2, 3]


def test_feature_knn_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    x[10] = x[20] = x[30]
    x[40:60] = x[40]  # a group larger than k (and than the spare candidates): itself, then the lowest indices
    nb = feature_knn(x, 4, chunk_elements=1000)  # several chunks
    d = ((x[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, -1)
    ref = np.stack([np.lexsort((np.arange(len(x)), row))[:4] for row in d])
    assert (nb == ref).all()
    assert nb[45].tolist() == [45, 40, 41, 42]


# ---------------------------------------------------------------------------- regions
def test_allocation_proportional_to_area_hand_example() -> None:
    # quotas 3.5, 2.1, 1.4 -> floors 3, 2, 1 (6); the remaining one goes to the largest remainder (.5)
    assert allocate_by_area([50, 30, 20], 7).tolist() == [4, 2, 1]
    # equal remainders: the larger area first, then the lower index
    assert allocate_by_area([30, 70], 5).tolist() == [1, 4]  # 1.5 and 3.5: tie at .5 -> larger (70)
    assert allocate_by_area([1, 1, 1], 2).tolist() == [1, 1, 0]
    # capacity: region 0 can hold 3, the rest is apportioned again over the others
    assert allocate_by_area([60, 40], 10, capacity=[3, 100]).tolist() == [3, 7]
    assert allocate_by_area([60, 30, 10], 10, capacity=[2, 100, 100]).tolist() == [2, 6, 2]
    assert allocate_by_area([0, 10], 4).tolist() == [0, 4]
    assert allocate_by_area([5, 5], 30, capacity=[10, 10]).tolist() == [10, 10]  # not enough room
    for total in range(0, 40):
        assert allocate_by_area([13, 7, 29, 1], total).sum() == total


def test_select_in_regions_spreads_by_area_and_takes_the_best_inside() -> None:
    region_map = np.zeros((10, 10), dtype=np.int32)
    region_map[:, 7:] = 1  # region 0: 70 pixels, region 1: 30 pixels
    pixels = np.array([[c % 7, r] for r, c in enumerate(range(10))] + [[7 + c % 3, r] for r, c in enumerate(range(10))])
    members, areas = region_membership(region_map, pixels)
    assert areas.tolist() == [70, 30]
    assert members[0].tolist() == list(range(10)) and members[1].tolist() == list(range(10, 20))
    score = np.arange(20, dtype=float)  # higher index = more uncertain
    # budget 5: 3.5 and 1.5, tie at .5 -> the larger region: 4 from region 0, 1 from region 1
    idx = select_in_regions(rank(score), members, areas, np.zeros(20, dtype=bool), 5)
    assert idx.tolist() == [6, 7, 8, 9, 19]
    # region 1 mostly labelled: its share moves to region 0
    lab = np.zeros(20, dtype=bool)
    lab[10:20] = True
    assert select_in_regions(rank(score), members, areas, lab, 5).tolist() == [5, 6, 7, 8, 9]


def test_overlapping_masks_and_uncovered_points_still_meet_the_budget() -> None:
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2] = True
    masks[1, :3] = True  # overlaps mask 0; row 3 is in no mask
    pixels = np.array([[c, r] for r in range(4) for c in range(4)])
    members, areas = region_membership(masks, pixels)
    assert areas.tolist() == [8, 12]
    score = -np.arange(16, dtype=float)
    for budget in range(0, 17):
        idx = select_in_regions(rank(score), members, areas, np.zeros(16, dtype=bool), budget)
        assert len(idx) == budget == len(np.unique(idx))


def test_regions_strategy_sources() -> None:
    ctx = make_frame()
    slic = slic_regions(ctx.image, n_segments=6)
    assert slic.shape == ctx.image.shape[:2] and slic.min() == 0
    opts = StrategyOptions(region_source="slic", slic_segments=6, region_score="entropy")
    assert len(select("regions", ctx, 17, options=opts)) == 17
    # SAM-style masks from a generator callable (dicts with 'segmentation', as SAM returns)
    h, w = ctx.image.shape[:2]
    calls = []

    def gen(img: np.ndarray) -> list[dict]:
        calls.append(img.shape)
        m = np.zeros((h, w), dtype=bool)
        m[: h // 2] = True
        return [{"segmentation": m}, {"segmentation": ~m}]

    idx = select("regions", ctx, 20, options=StrategyOptions(region_source="sam", mask_generator=gen))
    assert calls == [(h, w, 3)] and len(idx) == 20
    top = ctx.pixels[idx, 1] < h // 2
    n_top = int((ctx.pixels[:, 1] < h // 2).sum())
    assert int(top.sum()) == 10 or n_top < 10  # equal areas: 10 points each (when there are 10)
    # precomputed masks win in 'auto'
    pre = FrameContext(ctx.name, probs_2d=ctx.probs_2d, feats_2d=ctx.feats_2d, pixels=ctx.pixels,
                       image_regions=np.stack([np.ones((h, w), dtype=bool)]))
    assert len(select("regions", pre, 9)) == 9
    with pytest.raises(ConfigError, match="needs precomputed image_regions, a mask_generator or a sam_checkpoint"):
        select("regions", ctx, 5, options=StrategyOptions(region_source="sam"))
    with pytest.raises(DataError, match="region_source 'given' but the frame has no image_regions"):
        select("regions", ctx, 5, options=StrategyOptions(region_source="given"))


def test_sam_checkpoint_without_segment_anything_is_one_clear_error(tmp_path) -> None:
    pytest.importorskip("skimage")
    try:
        import segment_anything  # noqa: F401
        pytest.skip("segment_anything is installed here")
    except ImportError:
        pass
    ckpt = tmp_path / "sam_vit_b.pth"
    ckpt.write_bytes(b"x")
    with pytest.raises(ConfigError, match="SAM masks need the segment_anything package"):
        select("regions", make_frame(), 5, options=StrategyOptions(region_source="sam", sam_checkpoint=str(ckpt)))


# ---------------------------------------------------------------------------- voxels, ReDAL
def test_voxel_entropy_hand_example() -> None:
    # voxel V0 (around x = 0.1): labels 0 0 1 1 -> 1 bit; V1 (x = 0.6): 2 2 -> 0; V2 (x = 1.1): 0 1 2 3 -> 2 bits
    xyz = np.array([[0.1, 0, 0]] * 4 + [[0.6, 0, 0]] * 2 + [[1.1, 0, 0]] * 4, dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 3])
    free = np.zeros(10, dtype=bool)
    score = np.arange(10, dtype=float) / 10
    assert select_voxels(xyz, labels, 4, free, 4, score).tolist() == [6, 7, 8, 9]
    # one more: the 1-bit voxel next, its highest point score (index 3)
    assert select_voxels(xyz, labels, 4, free, 5, score).tolist() == [3, 6, 7, 8, 9]
    # a labelled point in V2 sends V2 after the others
    lab = free.copy()
    lab[9] = True
    assert select_voxels(xyz, labels, 4, lab, 4, score).tolist() == [0, 1, 2, 3]
    # through the strategy table (ensemble labels from the probabilities)
    ctx = FrameContext("v", probs_3d=np.eye(4)[labels] * 0.7 + 0.075, xyz=xyz)
    assert select("voxel_entropy", ctx, 4).tolist() == [6, 7, 8, 9]


def test_redal_importance_reweighting_hand_example() -> None:
    # regions 0 and 1 have the same feature (one cluster), region 2 another: with decay 0.5,
    # region 1 (second in its cluster) is halved: 0.9, 0.8 * 0.5, 0.7
    feats = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    out = importance_reweight(np.array([0.9, 0.8, 0.7]), feats, num_clusters=2, decay=0.5)
    np.testing.assert_allclose(out, [0.9, 0.4, 0.7])


def test_redal_selects_whole_regions_by_score() -> None:
    # three regions of 4 points; uniform probabilities in region 1 (highest entropy), then region 2
    probs = np.array([[0.97, 0.01, 0.01, 0.01]] * 4 + [[0.25] * 4] * 4 + [[0.4, 0.4, 0.1, 0.1]] * 4)
    regions = np.repeat([0, 1, 2], 4)
    free = np.zeros(12, dtype=bool)
    assert select_redal(probs, regions, free, 4).tolist() == [4, 5, 6, 7]
    assert select_redal(probs, regions, free, 6).tolist() == [4, 5, 6, 7, 8, 9]  # region 2 cut by index
    # region scores (entropy / C): 0.06, 0.5, 0.43; a surface variation of 0.4 (gamma 1) lifts
    # region 0 to 0.46, between regions 1 and 2
    sv = np.array([0.4] * 4 + [0.0] * 8)
    assert select_redal(probs, regions, free, 6, surface_variation=sv, gamma=1.0).tolist() == [0, 1, 4, 5, 6, 7]
    # a region with a labelled point goes last
    lab = free.copy()
    lab[4] = True
    assert select_redal(probs, regions, lab, 4).tolist() == [8, 9, 10, 11]
    # diversity: region 2 scores a little above region 0, but shares region 1's feature cluster,
    # so with decay 0.5 it is halved below region 0
    feats = np.repeat(np.array([[0.0], [10.0], [10.0]]), 4, axis=0)
    probs2 = np.array([[0.45, 0.35, 0.1, 0.1]] * 4 + [[0.25] * 4] * 4 + [[0.4, 0.4, 0.1, 0.1]] * 4)
    assert select_redal(probs2, regions, free, 8, features=[feats], num_clusters=2, decay=0.5).tolist() == \
        [0, 1, 2, 3, 4, 5, 6, 7]
    assert select_redal(probs2, regions, free, 8).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]  # without diversity


# ---------------------------------------------------------------------------- bad input
def test_bad_frames_give_one_clear_error() -> None:
    p = np.full((5, 3), 1 / 3)
    with pytest.raises(DataError, match=r"frame f: per-point arrays have different lengths \(probs_2d 5, xyz 4\)"):
        FrameContext("f", probs_2d=p, xyz=np.zeros((4, 3)))
    with pytest.raises(DataError, match="frame empty: no points in the camera's view"):
        FrameContext("empty", probs_2d=np.zeros((0, 3)), xyz=np.zeros((0, 3)))
    with pytest.raises(DataError, match="probs_2d .* and probs_3d .* differ in shape"):
        FrameContext("f", probs_2d=p, probs_3d=np.full((5, 4), 0.25))
    with pytest.raises(DataError, match="strategy 'voxel_entropy' needs xyz"):
        select("voxel_entropy", FrameContext("f", probs_2d=p), 1)
    with pytest.raises(DataError, match="strategy 'knn_entropy' needs feats_2d and/or feats_3d"):
        select("knn_entropy", FrameContext("f", probs_2d=p), 1)
    with pytest.raises(ConfigError, match="unknown query strategy 'entropie'; known: random, confidence"):
        select("entropie", FrameContext("f", probs_2d=p), 1)
    with pytest.raises(DataError, match=r"labelled mask must be \(5,\) bool"):
        select("entropy", FrameContext("f", probs_2d=p), 1, labelled=np.zeros(4, dtype=bool))
    with pytest.raises(DataError, match="NaN or infinite probability at point 2"):
        FrameContext("f", probs_2d=np.array([[0.5, 0.5], [1, 0], [np.nan, 0]]))
    with pytest.raises(DataError, match="lies outside the 60 x 40 region image"):
        ctx = make_frame(n=10)
        bad = ctx.pixels.copy()
        bad[3] = [60, 0]
        select("regions", FrameContext("f", probs_2d=ctx.probs_2d, pixels=bad, image=ctx.image), 2,
               options=StrategyOptions(region_score="entropy"))
    with pytest.raises(ConfigError, match="budget must be a percentage"):
        query_frame("random", FrameContext("f", probs_2d=p), 0)


def test_pixel_items_for_images() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(6, 8)).transpose(2, 0, 1)  # (C, H, W)
    ctx = FrameContext.for_image("img", probs, image=np.zeros((6, 8, 3), dtype=np.uint8))
    assert ctx.n == 48 and ctx.grid_shape == (6, 8)
    assert ctx.pixels[9].tolist() == [1, 1]  # item 9 = row 1, col 1
    sel = query_frame("entropy", ctx, 10)
    assert sel.budget == 5  # 4.8 -> 5 pixels
    ent = -(probs * np.log2(probs)).sum(0).ravel()
    assert set(sel.indices.tolist()) == set(np.argsort(-ent)[:5].tolist())
