"""LiDAR segmentation models: RandLA-Net (with its neighbour / sampling pipeline), SalsaNext,
the range-image kNN back-projection and whole-scan prediction.

Synthetic tests check the hierarchy against brute force, the networks' shapes, gradients and
batching, and the post-processing on a hand-built scene whose answers are known. Real-data
tests run both networks (random weights, small presets) on the RELLIS-3D Ouster scan and the
SemanticKITTI HDL-64E scan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from terraseg.errors import ConfigError, DataError
from terraseg.geometry import RangeProjection, project_scan
from terraseg.models.points import (
    NORMALIZATIONS,
    SOURCE_FALLBACK,
    SOURCE_NETWORK,
    SOURCE_NONE,
    SOURCE_VOTE,
    KNNPost,
    OrganizedLayout,
    RandLANet,
    RangePredictor,
    SalsaNext,
    build_point_model,
    collate_randla,
    level_sizes,
    points_from_pixels,
    predict_scan,
    randla_inputs,
    range_input,
)
from terraseg.models.points.randlanet import AttentivePooling, SharedMLP, gather


def cloud(n: int = 2048, seed: int = 0) -> np.ndarray:
    """(n, 4) float32 points: x, y, z uniform in a 20 m x 20 m x 4 m box, intensity in [0, 1)."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-10, -10, -2], [10, 10, 2], (n, 3))
    return np.concatenate([xyz, rng.uniform(0, 1, (n, 1))], axis=1).astype(np.float32)


def brute_knn(q: np.ndarray, ref: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = cdist(q.astype(np.float64), ref.astype(np.float64))
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


# ---------------------------------------------------------------------- RandLA-Net pipeline
def test_randla_hierarchy_sizes_and_brute_force_neighbours() -> None:
    pts = cloud(2048)
    inp = randla_inputs(pts[:, :3], pts, k=16, ratios=(4, 4, 4, 4), seed=3)
    sizes = [2048, 512, 128, 32, 8]
    assert level_sizes(2048, (4, 4, 4, 4)) == sizes
    assert [t.shape[0] for t in inp["xyz"]] == sizes
    assert inp["features"].shape == (2048, 4) and inp["features"].dtype == torch.float32
    assert torch.equal(inp["features"], torch.from_numpy(pts))
    for lvl in range(4):
        xyz, nxt = inp["xyz"][lvl].numpy(), inp["xyz"][lvl + 1].numpy()
        nb, sub, pool, up = (inp[key][lvl].numpy() for key in ("neighbors", "sub", "pool", "up"))
        assert nb.shape == (sizes[lvl], 16) and nb.dtype == np.int64
        assert sub.shape == (sizes[lvl + 1],) and pool.shape == (sizes[lvl + 1], 16) and up.shape == (sizes[lvl],)
        # the sub-sample is a subset without repetition, kept in input order
        assert (np.diff(sub) > 0).all() and sub.min() >= 0 and sub.max() < sizes[lvl]
        np.testing.assert_array_equal(nxt, xyz[sub])
        np.testing.assert_array_equal(pool, nb[sub])
        # neighbours: truly the k nearest, ascending, self first
        bd, bi = brute_knn(xyz, xyz, 16)
        got = np.linalg.norm(xyz[nb].astype(np.float64) - xyz[:, None, :], axis=2)
        np.testing.assert_allclose(got, bd, atol=1e-6)
        np.testing.assert_array_equal(np.sort(nb, axis=1), np.sort(bi, axis=1))
        np.testing.assert_array_equal(nb[:, 0], np.arange(sizes[lvl]))
        # up-sampling: the nearest point of the next level
        bd1, _ = brute_knn(xyz, nxt, 1)
        np.testing.assert_allclose(np.linalg.norm(xyz - nxt[up], axis=1), bd1[:, 0], atol=1e-6)
        assert (up[sub] == np.arange(sizes[lvl + 1])).all()  # kept points map to themselves


def test_randla_inputs_padding_determinism_and_errors() -> None:
    pts = cloud(48, seed=1)[:, :3]
    inp = randla_inputs(pts, None, k=16, ratios=(4, 4), seed=0)
    assert [t.shape[0] for t in inp["xyz"]] == [48, 12, 3]
    nb1 = inp["neighbors"][1].numpy()  # 12 points < k: every row lists all 12, then repeats
    assert nb1.shape == (12, 16)
    assert all(sorted(row[:12]) == list(range(12)) for row in nb1)
    np.testing.assert_array_equal(nb1[:, 12:], nb1[:, :4])
    assert torch.equal(inp["features"], inp["xyz"][0])  # features default to xyz
    again = randla_inputs(pts, None, k=16, ratios=(4, 4), seed=0)
    other = randla_inputs(pts, None, k=16, ratios=(4, 4), seed=1)
    assert torch.equal(inp["sub"][0], again["sub"][0])
    assert not torch.equal(inp["sub"][0], other["sub"][0])

    with pytest.raises(DataError, match="too few for sub-sampling ratios"):
        randla_inputs(cloud(200)[:, :3], ratios=(4, 4, 4, 4))
    bad = cloud(300)[:, :3].copy()
    bad[17, 1] = np.nan
    with pytest.raises(DataError, match="first at index 17"):
        randla_inputs(bad, source="scan.bin")
    with pytest.raises(DataError, match=r"features must be \(300, C\)"):
        randla_inputs(cloud(300)[:, :3], np.zeros((299, 2)))
    with pytest.raises(DataError, match="k must be a positive integer"):
        randla_inputs(cloud(300)[:, :3], k=0)


def test_collate_randla() -> None:
    a = randla_inputs(cloud(512, 0)[:, :3], ratios=(4, 4), seed=0)
    b = randla_inputs(cloud(512, 1)[:, :3], ratios=(4, 4), seed=1)
    a["labels"] = torch.zeros(512, dtype=torch.int64)
    b["labels"] = torch.ones(512, dtype=torch.int64)
    batch = collate_randla([a, b])
    assert batch["features"].shape == (2, 512, 3)
    assert [t.shape for t in batch["neighbors"]] == [(2, 512, 16), (2, 128, 16)]
    assert batch["up"][1].shape == (2, 128) and batch["labels"].shape == (2, 512)
    assert torch.equal(batch["pool"][0][1], b["pool"][0])
    c = randla_inputs(cloud(600, 2)[:, :3], ratios=(4, 4))
    with pytest.raises(DataError, match="sample 1 has 600 points"):
        collate_randla([a, c])


# ---------------------------------------------------------------------- RandLA-Net network
def test_attentive_pooling_fast_path_equals_reference() -> None:
    torch.manual_seed(0)
    att = AttentivePooling(16, 12)
    feats = torch.randn(2, 50, 8)
    f_xyz = torch.randn(2, 50, 16, 8)
    nb = torch.randint(0, 50, (2, 50, 16))
    for train in (True, False):
        att.train(train)
        ref = att(torch.cat([gather(feats, nb), f_xyz], dim=-1))
        fast = att.pool_neighbors(feats, nb, f_xyz)
        assert fast.shape == (2, 50, 12)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_norm", [False, True])
def test_shared_mlp_eval_folds_batch_norm(in_norm: bool) -> None:
    torch.manual_seed(0)
    m = SharedMLP(5, 7, bn=True, activation=None, in_norm=in_norm)
    x = torch.randn(4, 30, 5) * torch.tensor([50.0, 0.1, 1.0, 3.0, 1000.0]) + torch.tensor([10.0, 0.0, 0.0, 5.0, -3.0])
    m.train()
    for _ in range(20):  # give the running statistics non-trivial values
        m(x)
    m.bn.weight.data.uniform_(0.5, 2.0)
    m.bn.bias.data.uniform_(-1.0, 1.0)
    m.eval()
    # eval: the batch norms folded into one matrix product, the same function as applying them
    x2 = x.reshape(-1, 5)
    expected = m.bn(m.linear(m.in_bn(x2) if in_norm else x2)).reshape(4, 30, 7)
    torch.testing.assert_close(m(x), expected, rtol=1e-5, atol=1e-5)
    w, b = m.fused_weight()
    assert w.shape == (7, 5) and b is not None and b.shape == (7,)


def test_randlanet_shapes_batching_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_point_model("randlanet", num_classes=6, in_channels=4, preset="small")
    assert isinstance(model, RandLANet) and model.config.d_out == (8, 32, 64, 128)
    a, b = cloud(2048, 0), cloud(2048, 1)
    ia, ib = randla_inputs(a[:, :3], a, seed=0), randla_inputs(b[:, :3], b, seed=1)
    batch = collate_randla([ia, ib])
    model.train()
    out = model(batch)
    assert out.shape == (2, 2048, 6) and out.dtype == torch.float32
    labels = torch.from_numpy((a[:, 2] > 0).astype(np.int64)), torch.from_numpy((b[:, 0] > 0).astype(np.int64))
    loss = torch.nn.functional.cross_entropy(out.reshape(-1, 6), torch.cat(labels))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.fc0.linear.weight.grad.abs().sum() > 0
    assert model.encoder[0].lfa.att1.score.weight.grad.abs().sum() > 0
    # eval: a batch gives what each cloud gives alone (batch offsets in the gathers)
    model.eval()
    with torch.no_grad():
        both = model(batch)
        torch.testing.assert_close(both[0], model(ia)[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(both[1], model(ib)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(DataError, match="3 feature channels, the model expects 4"):
        model(randla_inputs(a[:, :3], seed=0))


def test_randlanet_default_widths_match_paper() -> None:
    model = build_point_model("randla-net", num_classes=20)
    cfg = model.config
    assert (cfg.d_out, cfg.ratios, cfg.k, cfg.in_channels) == ((16, 64, 128, 256), (4, 4, 4, 4), 16, 3)
    # encoder outputs 2 d: 32, 128, 256, 512 channels; decoder back to 32; head 64, 32, classes
    assert [blk.mlp2.linear.out_features for blk in model.encoder] == [32, 128, 256, 512]
    assert [dec.linear.out_features for dec in model.decoder] == [256, 128, 32, 32]
    assert model.head[-1].out_features == 20
    assert sum(p.numel() for p in model.parameters()) == 1_237_100  # the paper's 1.24 M
    large = build_point_model("randlanet", num_classes=5, preset="large").eval()  # S3DIS: five levels
    assert large.config.ratios == (4, 4, 4, 4, 2) and large.bottom.linear.in_features == 1024
    pts = cloud(2048)
    inp = randla_inputs(pts[:, :3], k=16, ratios=large.config.ratios)
    assert [t.shape[0] for t in inp["xyz"]] == [2048, 512, 128, 32, 8, 4]
    with torch.no_grad():
        assert large(inp).shape == (1, 2048, 5)
    with pytest.raises(DataError, match="must hold 5 levels"):
        large(randla_inputs(pts[:, :3], k=16, ratios=(4, 4, 4, 4)))


# ---------------------------------------------------------------------- SalsaNext
@pytest.mark.parametrize(("channels", "shape"), [(5, (16, 128)), (6, (32, 256)), (5, (20, 100))])
def test_salsanext_shapes_and_gradients(channels: int, shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_point_model("salsanext", num_classes=7, in_channels=channels, preset="tiny")
    assert isinstance(model, SalsaNext)
    x = torch.randn(1, channels, *shape)
    out = model(x)
    assert out.shape == (1, 7, *shape)
    target = torch.randint(0, 7, (1, *shape))
    torch.nn.functional.cross_entropy(out, target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.context[0].conv1.weight.grad.abs().sum() > 0
    with pytest.raises(DataError, match=rf"expected input \(B, {channels}, H, W\)"):
        model(torch.randn(1, channels + 1, *shape))


def test_salsanext_presets_and_normalisation() -> None:
    paper = build_point_model("salsanext", num_classes=20)
    assert sum(p.numel() for p in paper.parameters()) == 6_711_572  # SalsaNext: 6.7 M
    small = build_point_model("salsanext", num_classes=20, preset="small")
    assert (small.config.base_channels, small.config.context_blocks) == (16, 1)
    rellis = build_point_model("salsanext", num_classes=20, preset="tiny", normalization="rellis3d")
    assert (rellis.config.means, rellis.config.stds) == NORMALIZATIONS["rellis3d"]
    custom = build_point_model("salsanext", num_classes=3, preset="tiny", means=(0, 0, 0, 0, 0),
                               stds=(1, 2, 3, 4, 5))
    assert custom.config.normalization == "custom" and custom.config.stds == (1, 2, 3, 4, 5)
    for model in (paper, small, rellis, custom, build_point_model("randlanet", 4, preset="large"),
                  build_point_model("randlanet", 4, preset="custom", d_out=(8, 16), ratios=(2, 2))):
        again = build_point_model(**model.spec)  # the spec rebuilds the model
        assert type(again) is type(model) and again.config == model.config
        names = {n for n, _ in model.named_modules()}
        assert set(model.class_heads) <= names  # checkpoint surgery finds the class layers
        head = model.get_submodule(next(iter(model.class_heads)))
        assert head.weight.shape[0] == model.num_classes
    assert rellis.config.normalization == "rellis3d"
    with pytest.raises(ConfigError, match="unknown point-model architecture 'pointnet'"):
        build_point_model("pointnet", 3)
    with pytest.raises(ConfigError, match="unknown salsanext preset 'huge'"):
        build_point_model("salsanext", 3, preset="huge")
    with pytest.raises(ConfigError, match="unknown range-image normalisation 'kitti'"):
        build_point_model("salsanext", 3, normalization="kitti")
    with pytest.raises(ConfigError, match="randlanet: .*unexpected keyword argument 'width'"):
        build_point_model("randlanet", 3, width=2)
    with pytest.raises(ConfigError, match="in_channels must be 4"):
        build_point_model("salsanext", 3, in_channels=3)


def test_salsanext_width_fold_is_lossless_and_keeps_every_pixel() -> None:
    from terraseg.models.points.salsanext import fold_width, unfold_width

    x = torch.arange(2 * 3 * 4 * 16, dtype=torch.float32).reshape(2, 3, 4, 16)
    folded = fold_width(x, 4)
    assert folded.shape == (2, 12, 4, 4)
    # channel r * C + c of column j is channel c of column 4 j + r
    assert torch.equal(folded[1, 2 * 3 + 1, 3, 2], x[1, 1, 3, 4 * 2 + 2])
    assert torch.equal(unfold_width(folded, 4), x)
    torch.manual_seed(0)
    rt = build_point_model("salsanext", num_classes=7, preset="rt")
    assert (rt.config.base_channels, rt.config.width_fold) == (16, 4)
    assert rt.logits.weight.shape[0] == 7 * 4 and rt.class_heads == {}  # (class, sub-column) rows: no row surgery
    out = rt(torch.randn(1, 5, 16, 100))  # width padded to a multiple of 16 * 4 inside, cropped back
    assert out.shape == (1, 7, 16, 100)
    # neighbouring columns of one folded column still get their own logits
    assert not torch.allclose(out[..., 0], out[..., 1])
    torch.nn.functional.cross_entropy(out, torch.randint(0, 7, (1, 16, 100))).backward()
    assert rt.context[0].conv1.weight.grad.abs().sum() > 0
    assert build_point_model(**rt.spec).config == rt.config
    with pytest.raises(ConfigError, match="width_fold must be 1, 2, 4 or 8, got 3"):
        build_point_model("salsanext", 3, preset="tiny", width_fold=3)


def test_range_input_normalises_and_masks() -> None:
    pts = np.array([[10.0, 0.0, 0.0, 0.5], [0.0, 5.0, -1.0, 0.25]], dtype=np.float32)
    proj = RangeProjection(8, 64, fov_up=10.0, fov_down=-20.0)
    ri = project_scan(pts, proj)
    means, stds = (1.0, 2.0, 3.0, 4.0, 5.0), (2.0, 4.0, 8.0, 16.0, 32.0)
    x = range_input(ri, means, stds, in_channels=6)
    assert x.shape == (6, 8, 64) and x.dtype == np.float32
    r, c = ri.point_row[0], ri.point_col[0]
    np.testing.assert_allclose(x[:5, r, c], [(10 - 1) / 2, (10 - 2) / 4, (0 - 3) / 8, (0 - 4) / 16, (0.5 - 5) / 32])
    r1, c1 = ri.point_row[1], ri.point_col[1]
    np.testing.assert_allclose(x[0, r1, c1], (np.sqrt(26.0) - 1) / 2, rtol=1e-6)
    empty = ~ri.mask
    assert (x[:5][:, empty] == 0).all() and x[5].sum() == 2 and x[5, r, c] == 1
    four = range_input(ri, means, stds, in_channels=4)
    np.testing.assert_array_equal(four, x[:4])
    with pytest.raises(DataError, match="scan.bin: the model expects intensity"):
        range_input(project_scan(pts[:, :3], proj), means, stds, 5, source="scan.bin")


# ---------------------------------------------------------------------- kNN post-processing
PROJ = RangeProjection(16, 256, fov_up=8.0, fov_down=-8.0, max_range=50.0, out_of_fov="drop", name="test")


def stripe_label(col: int) -> int:
    return (col // 16) % 4


def synthetic_scene() -> tuple[np.ndarray, dict[str, int], np.ndarray]:
    """Background wall at 10 m on every pixel centre, a foreground point, hidden points, and
    points without a pixel. Returns (points (N, 4), named indices, (H, W) pixel labels)."""
    dirs = PROJ.pixel_directions()
    h, w = PROJ.height, PROJ.width
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    labels = stripe_label(cols)
    keep = ~((rows == 8) & (cols == 40))
    pts = [dirs[keep] * 10.0]
    extra = {
        "fg": dirs[8, 40] * 5.0,  # foreground object in front of the wall at pixel (8, 40)
        "behind_fg": dirs[8, 40] * 10.2,  # wall point hidden behind it: must not become "object"
        "hidden_near": dirs[4, 120] * 10.3,  # shares a wall pixel, 0.3 m behind it
        "hidden_far": dirs[12, 200] * 30.0,  # shares a wall pixel, 20 m behind: nobody votes
        "too_far": dirs[2, 10] * 60.0,  # beyond max_range: no pixel, nobody within 1 m
        "above_fov": None,  # just above the field of view, next to the top row: no pixel
        "zero": np.zeros(3),
        "nan": np.array([np.nan, 0.0, 0.0]),
    }
    el, yaw = np.radians(8.3), np.radians(PROJ.azimuth_start - (60 + 0.5) * 360 / w)
    extra["above_fov"] = 10.0 * np.array([np.cos(el) * np.cos(yaw), np.cos(el) * np.sin(yaw), np.sin(el)])
    n0 = int(keep.sum())
    names = {name: n0 + i for i, name in enumerate(extra)}
    xyz = np.concatenate([pts[0], np.stack(list(extra.values()))])
    inten = np.full((len(xyz), 1), 0.5)
    labels[8, 40] = 3 if stripe_label(40) != 3 else 0  # the object's own class
    return np.concatenate([xyz, inten], axis=1).astype(np.float32), names, labels


def one_hot_probs(labels: np.ndarray, c: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, 1, labels.shape + (c,)) + 6 * np.eye(c)[labels]
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("method", ["range", "kdtree"])
def test_points_from_pixels_known_scene(method: str) -> None:
    pts, idx, pix_lab = synthetic_scene()
    ri = project_scan(pts, PROJ)
    pix_prob = one_hot_probs(pix_lab, 4)
    valid = np.isfinite(pts[:, :3]).all(axis=1) & (np.linalg.norm(pts[:, :3], axis=1) > 1e-3)
    labels, probs, source = points_from_pixels(ri, pix_lab, pix_prob, pts[:, :3], valid, KNNPost(method=method),
                                               fill=0)
    n = len(pts)
    assert labels.shape == (n,) and labels.dtype == np.int64 and probs.shape == (n, 4) and source.dtype == np.uint8
    # every pixel owner keeps its pixel's prediction exactly
    owners = ri.index[ri.mask]
    assert (source[owners] == SOURCE_NETWORK).all() and len(owners) == 16 * 256
    np.testing.assert_array_equal(labels[owners], pix_lab[ri.mask])
    np.testing.assert_array_equal(probs[owners], pix_prob[ri.mask])
    assert labels[idx["fg"]] == pix_lab[8, 40] == 3
    # hidden behind the object: voted by the wall around it, not the object's label
    assert labels[idx["behind_fg"]] == stripe_label(40) and source[idx["behind_fg"]] == SOURCE_VOTE
    assert labels[idx["hidden_near"]] == stripe_label(120) and source[idx["hidden_near"]] == SOURCE_VOTE
    # 20 m behind its pixel: no voter within 1 m, falls back to its pixel
    assert labels[idx["hidden_far"]] == stripe_label(200) and source[idx["hidden_far"]] == SOURCE_FALLBACK
    # no pixel: 3-D vote among owners, or the nearest owner
    assert labels[idx["above_fov"]] == stripe_label(60) and source[idx["above_fov"]] == SOURCE_VOTE
    assert labels[idx["too_far"]] == stripe_label(10) and source[idx["too_far"]] == SOURCE_FALLBACK
    for name in ("zero", "nan"):
        assert labels[idx[name]] == 0 and source[idx[name]] == SOURCE_NONE and (probs[idx[name]] == 0).all()
    voted = source == SOURCE_VOTE
    np.testing.assert_allclose(probs[voted].sum(axis=1), 1.0, rtol=1e-5)
    assert (labels[valid] >= 0).all() and (labels < 4).all()


def test_knn_post_validation() -> None:
    with pytest.raises(ConfigError, match="search must be a positive odd integer"):
        KNNPost(search=4)
    with pytest.raises(ConfigError, match="method must be 'range' or 'kdtree'"):
        KNNPost(method="ball")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- whole-scan prediction
def test_predict_scan_range_model_labels_every_point() -> None:
    torch.manual_seed(0)
    pts, idx, _ = synthetic_scene()
    model = build_point_model("salsanext", num_classes=5, preset="tiny")
    model.train()
    pred = predict_scan(model, pts, projection=PROJ)
    assert model.training  # the caller's mode is restored
    n = len(pts)
    assert pred.labels.shape == (n,) and pred.probabilities.shape == (n, 5) and pred.num_classes == 5
    assert pred.labels.min() >= 0 and pred.labels.max() < 5
    assert set(pred.timings) == {"preprocess", "network", "postprocess"}
    # pixel owners carry the network's pixel labels
    predictor = RangePredictor(model, projection=PROJ)
    ri = predictor.project(pts)
    pix_lab, pix_prob = predictor.predict_image(ri)
    owners = ri.index[ri.mask]
    np.testing.assert_array_equal(pred.labels[owners], pix_lab[ri.mask])
    np.testing.assert_allclose(pred.probabilities[owners], pix_prob[ri.mask], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred.probabilities[pred.valid].sum(axis=1), 1.0, rtol=1e-5)
    assert list(np.flatnonzero(~pred.valid)) == [idx["zero"], idx["nan"]]
    # channels-last execution (the default) computes the same function
    plain = RangePredictor(build_point_model("salsanext", num_classes=5, preset="tiny"), projection=PROJ,
                           channels_last=False)
    plain.model.load_state_dict(model.state_dict())
    np.testing.assert_allclose(plain(pts).probabilities, pred.probabilities, rtol=1e-4, atol=1e-5)


def test_predict_scan_randlanet_and_errors() -> None:
    torch.manual_seed(0)
    pts = cloud(2048)
    pts[[5, 9]] = 0.0  # no returns
    model = build_point_model("randlanet", num_classes=4, in_channels=4, preset="small")
    pred = predict_scan(model, pts, seed=0, fill=3)
    assert pred.labels.shape == (2048,) and pred.probabilities.shape == (2048, 4)
    assert (pred.labels[[5, 9]] == 3).all() and (pred.source[[5, 9]] == SOURCE_NONE).all()
    assert (pred.source[pred.valid] == SOURCE_NETWORK).sum() == 2046
    np.testing.assert_array_equal(pred.labels[pred.valid], pred.probabilities[pred.valid].argmax(axis=1))
    np.testing.assert_allclose(pred.probabilities[pred.valid].sum(axis=1), 1.0, rtol=1e-5)
    again = predict_scan(model, pts, seed=0, fill=3)
    np.testing.assert_array_equal(again.probabilities, pred.probabilities)  # deterministic for a seed
    with pytest.raises(DataError, match="uses 4 input channels but the points have only 3 columns"):
        predict_scan(model, pts[:, :3])
    with pytest.raises(DataError, match="unsupported model Linear"):
        predict_scan(torch.nn.Linear(2, 2), pts)


# ---------------------------------------------------------------------- real scans
def read_scan(path: Path) -> np.ndarray:
    from terraseg.io.scans import read_bin

    if not path.is_file():
        pytest.skip(f"real scan {path} not found (the ../shared/data checkout is absent)")
    return read_bin(path)


@pytest.mark.realdata
def test_real_rellis_scan_both_models(shared_data: Path) -> None:
    pts = read_scan(shared_data / "rellis3d" / "000104.bin")
    assert len(pts) == 131_072
    torch.manual_seed(0)
    salsa = build_point_model("salsanext", num_classes=20, preset="tiny", normalization="rellis3d")
    rnet = build_point_model("randlanet", num_classes=20, preset="small")
    for pred in (predict_scan(salsa, pts, projection=OrganizedLayout(64, 2048)), predict_scan(rnet, pts)):
        assert pred.labels.shape == (131_072,) and pred.probabilities.shape == (131_072, 20)
        assert pred.labels.min() >= 0 and pred.labels.max() < 20
        # organised scan: every return owns its pixel; the 53,364 zero points have none
        assert np.bincount(pred.source, minlength=4).tolist() == [53_364, 77_708, 0, 0]
        np.testing.assert_allclose(pred.probabilities[pred.valid].sum(axis=1), 1.0, rtol=1e-4)


@pytest.mark.realdata
def test_real_semantickitti_scan_both_models(shared_data: Path) -> None:
    pts = read_scan(shared_data / "spvnas" / "000000.bin")
    assert len(pts) == 123_389
    torch.manual_seed(0)
    salsa = build_point_model("salsanext", num_classes=20, preset="tiny")
    pred = predict_scan(salsa, pts, projection="velodyne-hdl64e")
    owners = int(project_scan(pts, "velodyne-hdl64e").mask.sum())
    counts = np.bincount(pred.source, minlength=4)
    assert counts[SOURCE_NONE] == 0 and counts[SOURCE_NETWORK] == owners
    assert 0.75 < owners / len(pts) < 0.82  # 78.6 % of an HDL-64E scan owns a pixel
    assert counts[SOURCE_VOTE] + counts[SOURCE_FALLBACK] == len(pts) - owners
    assert pred.labels.min() >= 0 and pred.labels.max() < 20
    rnet = build_point_model("randlanet", num_classes=20, preset="small")
    pred = predict_scan(rnet, pts)
    assert pred.labels.shape == (123_389,) and (pred.source == SOURCE_NETWORK).all()
    assert pred.labels.min() >= 0 and pred.labels.max() < 20


def test_randlanet_bn_momentum_reaches_every_batch_norm_and_is_validated() -> None:
    from terraseg.models.points.randlanet import RandLANetConfig

    def momenta(model: torch.nn.Module) -> set[float | None]:
        return {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)}

    default = build_point_model("randlanet", 5, preset="small")
    assert default.config.bn_momentum == 0.1 and momenta(default) == {0.1}
    slow = build_point_model("randlanet", 5, preset="small", bn_momentum=0.01)
    assert momenta(slow) == {0.01}
    assert build_point_model(**slow.spec).config.bn_momentum == 0.01  # kept in checkpoints
    # a spec written before the field existed rebuilds with the default
    old = {k: v for k, v in slow.spec.items() if k != "bn_momentum"}
    assert momenta(build_point_model(**old)) == {0.1}
    # the running statistics used at inference follow the weights' batch statistics within a few
    # dozen steps with the default; the TF-style 0.01 is still far off after 60
    cloud = randla_inputs(np.random.default_rng(0).normal(size=(512, 3)).astype(np.float32) * 5.0 + 20.0,
                          k=8, ratios=(2, 2))

    def lag(momentum: float) -> float:
        torch.manual_seed(0)
        # no dropout: train and eval modes differ only by the batch-norm statistics
        model = build_point_model("randlanet", 5, preset="custom", d_out=(8, 16), ratios=(2, 2), k=8,
                                  bn_momentum=momentum, dropout=0.0)
        with torch.no_grad():
            for _ in range(60):
                batch_stats = model(cloud)
            model.eval()
            running = model(cloud)
        return float((running - batch_stats).abs().mean() / batch_stats.abs().mean())

    assert lag(0.1) < 0.2 and lag(0.01) > 0.5
    with pytest.raises(ConfigError, match=r"bn_momentum must be in \(0, 1\], got 0"):
        RandLANetConfig(num_classes=3, bn_momentum=0.0)


def test_shared_mlp_input_norm_standardises_each_channel() -> None:
    torch.manual_seed(0)
    scales = torch.tensor([50.0, 0.1, 1.0, 3.0, 1000.0])
    x = torch.randn(4, 30, 5) * scales + torch.tensor([10.0, 0.0, 0.0, 5.0, -3.0])
    m = SharedMLP(5, 7, bn=True, activation=None, in_norm=True)
    assert m.in_bn is not None and not m.in_bn.affine  # parameter-free: no new weights to learn
    m.train()
    # training mode: each input channel is standardised, so rescaling one changes nothing
    rescaled = x.clone()
    rescaled[..., 4] *= 1e-3
    rescaled[..., 0] += 100.0
    torch.testing.assert_close(m(rescaled), m(x), rtol=1e-4, atol=1e-4)
    plain = SharedMLP(5, 7, bn=True, activation=None)
    assert (plain(rescaled) - plain(x)).abs().max() > 0.1


def test_randlanet_input_norm_lets_the_local_shape_through() -> None:
    from terraseg.models.points.randlanet import relative_position_encoding

    off = build_point_model("randlanet", 5, preset="small", in_channels=4)
    on = build_point_model("randlanet", 5, preset="small", in_channels=4, input_norm=True)
    assert not off.config.input_norm and on.config.input_norm
    normed = {n for n, m in on.named_modules() if isinstance(m, SharedMLP) and m.in_bn is not None}
    assert normed == {"fc0"} | {f"encoder.{i}.lfa.pos1" for i in range(4)}
    assert not any(m.in_bn is not None for m in off.modules() if isinstance(m, SharedMLP))
    assert sum(p.numel() for p in on.parameters()) == sum(p.numel() for p in off.parameters())
    assert build_point_model(**on.spec).config.input_norm  # kept in checkpoints
    assert not build_point_model(**{k: v for k, v in on.spec.items() if k != "input_norm"}).config.input_norm
    # The cloud spreads over metres while neighbours sit a fraction of a metre apart (as in a
    # scan). Swap every point's offsets (distance and p_i - p_k) for another point's: without
    # input_norm the position MLP barely notices, with it the local shape is much of its output.
    pts = cloud(4096, 3)
    inp = randla_inputs(pts[:, :3], pts, seed=0)
    enc = relative_position_encoding(inp["xyz"][0][None], inp["neighbors"][0][None])
    assert float(enc[..., 0].mean()) < 0.2 * float(inp["xyz"][0][:, :2].std(dim=0).min())  # 0.85 m vs 5.8 m
    swapped = enc.clone()
    swapped[..., :4] = enc[:, torch.randperm(enc.shape[1], generator=torch.Generator().manual_seed(0)), :, :4]

    def change(input_norm: bool) -> float:
        torch.manual_seed(1)  # same weights for both
        pos1 = build_point_model("randlanet", 5, preset="small", in_channels=4,
                                 input_norm=input_norm).encoder[0].lfa.pos1
        pos1.train()
        with torch.no_grad():
            a, b = pos1(enc), pos1(swapped)
        return float((a - b).abs().mean() / a.abs().mean())

    assert change(False) < 0.2 and change(True) > 0.4 and change(True) > 4 * change(False)
