"""Voxelisation, the sparse voxel U-Net (presets, per-point outputs, training, checkpoints,
surgery) and whole-scan prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from terraseg.errors import ConfigError, DataError
from terraseg.models.points import (
    VOXEL_PRESETS,
    VoxelPredictor,
    VoxelUNet,
    build_point_model,
    collate_voxels,
    predict_scan,
    voxelize,
    voxelize_scan,
)

TINY = {"channels": (8, 16, 16, 16, 16), "layers": (1, 1, 1, 1), "voxel_size": 0.1}
"""A two-level residual net that trains in a second on the CPU."""


def toy_scan(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 4) x, y, z, intensity, labels (n,)): ground (0), a box (1), a pole (2)."""
    rng = np.random.default_rng(seed)
    k = n // 3
    ground = np.c_[rng.uniform(-4, 4, (k, 2)), rng.normal(0, 0.01, k)]
    box = np.c_[rng.uniform(0.5, 1.5, (k, 2)), rng.uniform(0.1, 1.0, k)]
    theta = rng.uniform(0, 2 * np.pi, n - 2 * k)
    pole = np.c_[-2 + 0.1 * np.cos(theta), -2 + 0.1 * np.sin(theta), rng.uniform(0.1, 2.5, n - 2 * k)]
    xyz = np.concatenate([ground, box, pole]).astype(np.float32)
    intensity = np.concatenate([np.full(k, 0.2), np.full(k, 0.6), np.full(n - 2 * k, 0.9)]).astype(np.float32)
    labels = np.repeat(np.arange(3), [k, k, n - 2 * k])
    return np.c_[xyz, intensity], labels


# ------------------------------------------------------------------------------- voxelisation
def test_every_point_maps_back_to_its_voxel() -> None:
    pts, _ = toy_scan()
    v = voxelize_scan(pts, 0.1, in_channels=4)
    coords, feats, inv = v["coords"], v["feats"], v["inverse"]
    assert inv.shape == (len(pts),) and int(inv.max()) == len(coords) - 1
    # the voxel of every point is floor(xyz / size) minus the scan's smallest voxel
    grid = np.floor(pts[:, :3].astype(np.float64) / 0.1).astype(np.int64)
    assert np.array_equal(coords[inv].numpy(), grid - grid.min(axis=0))
    np.testing.assert_allclose(v["origin"].numpy(), grid.min(axis=0) * 0.1)
    # features: mean x, y, z, intensity and the mean offset to the voxel centre (voxel units)
    assert feats.shape == (len(coords), 7)
    first = int(inv[0])
    members = pts[inv.numpy() == first]
    np.testing.assert_allclose(feats[first, :4].numpy(), members.mean(axis=0), rtol=1e-5, atol=1e-6)
    centre = (grid[0] + 0.5) * 0.1
    np.testing.assert_allclose(feats[first, 4:].numpy(), ((members[:, :3] - centre) / 0.1).mean(axis=0), atol=1e-4)
    assert float(feats[:, 4:].abs().max()) <= 0.5
    # sorted by (x, y, z), no duplicates
    keys = (coords[:, 0] << 40) | (coords[:, 1] << 20) | coords[:, 2]
    assert bool((keys[1:] > keys[:-1]).all())


def test_duplicate_points_share_a_voxel_and_voxelisation_is_deterministic() -> None:
    pts, _ = toy_scan(600)
    dup = np.concatenate([pts, pts[:50]])
    v = voxelize_scan(dup, 0.05)
    assert torch.equal(v["inverse"][:50], v["inverse"][-50:])
    again = voxelize_scan(dup, 0.05)
    for key in ("coords", "feats", "inverse"):
        assert torch.equal(v[key], again[key])
    no_offsets = voxelize_scan(dup, 0.05, in_channels=3, centre_offsets=False)
    assert no_offsets["feats"].shape[1] == 3


def test_batching_keeps_scans_apart() -> None:
    a, _ = toy_scan(500, seed=1)
    b = a.copy()  # the same points: they must not share voxels across scans
    batch = voxelize([a, b], voxel_size=0.1)
    na = len(voxelize_scan(a, 0.1)["coords"])
    assert batch["coords"].shape == (2 * na, 4) and batch["batch_size"] == 2
    assert torch.equal(batch["coords"][:na, 0], torch.zeros(na, dtype=torch.int64))
    assert torch.equal(batch["coords"][na:, 0], torch.ones(na, dtype=torch.int64))
    assert torch.equal(batch["inverse"][500:], batch["inverse"][:500] + na)
    assert batch["point_counts"].tolist() == [500, 500] and batch["voxel_counts"].tolist() == [na, na]
    s1, s2 = voxelize_scan(a, 0.1), voxelize_scan(b, 0.1)
    s1["target"], s2["target"] = torch.zeros(500, dtype=torch.int64), torch.ones(500, dtype=torch.int64)
    both = collate_voxels([s1, s2])
    assert both["target"].tolist() == [0] * 500 + [1] * 500


def test_bad_scans_are_clear_errors_naming_the_scan() -> None:
    pts, _ = toy_scan(100)
    with pytest.raises(DataError, match=r"scan_017\.bin: the scan has no points"):
        voxelize_scan(np.zeros((0, 4), np.float32), source="scan_017.bin")
    bad = pts.copy()
    bad[7, 1] = np.nan
    with pytest.raises(DataError, match=r"scan_018\.bin: coordinates hold NaN or infinite values \(first at point 7\)"):
        voxelize_scan(bad, source="scan_018.bin")
    with pytest.raises(DataError, match=r"scan 1: coordinates hold NaN"):
        voxelize([pts, bad])
    with pytest.raises(DataError, match="only 3 columns"):
        voxelize_scan(pts[:, :3], in_channels=4, source="s")
    far = pts.copy()
    far[0, 0] = 1e6
    with pytest.raises(DataError, match=r"spans 100000\d m, more than 262128 voxels"):
        voxelize_scan(far, 0.05, source="s")
    with pytest.raises(DataError, match="voxel_size must be a positive"):
        voxelize_scan(pts, 0.0)
    model = build_point_model("voxelunet", 3, preset="custom", **TINY)
    with pytest.raises(DataError, match=r"lidar/000104\.bin: no points with a return"):
        VoxelPredictor(model, source="lidar/000104.bin")(np.zeros((10, 4), np.float32))
    with pytest.raises(DataError, match=r"empty\.bin: no points with a return"):
        VoxelPredictor(model, source="empty.bin")(np.zeros((0, 4), np.float32))


# ------------------------------------------------------------------------------------ network
@pytest.mark.parametrize("preset,params,feature_dim", [("minkunet18", 21.73, 96), ("minkunet34", 37.88, 96),
                                                       ("small", 2.90, 48), ("scn", 2.69, 16)])
def test_presets_mirror_the_published_layouts(preset: str, params: float, feature_dim: int) -> None:
    m = build_point_model("minkunet", 20, preset=preset)
    assert isinstance(m, VoxelUNet) and m.spec["arch"] == "voxelunet" and m.spec["preset"] == preset
    assert sum(p.numel() for p in m.parameters()) / 1e6 == pytest.approx(params, abs=0.01)
    assert m.feature_dim == feature_dim and m.head.in_features == feature_dim
    assert m.class_heads == {"head": 0}
    assert build_point_model("spunet", 20).spec == build_point_model("voxelunet", 20, preset="default").spec
    if preset == "scn":  # xMUDA's UNetSCN: 7 levels of m (n + 1), one plain block per level
        assert m.config.channels == (16, 32, 48, 64, 80, 96, 112) and m.config.levels == 6
    if preset == "minkunet34":
        assert [len(e) for e in m.encoder] == [2, 3, 4, 6] and [len(d) for d in m.decoder] == [2, 2, 2, 2]


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="2 L \\+ 1 channels"):
        build_point_model("voxelunet", 4, preset="custom", channels=(8, 8, 8, 8), layers=(1, 1, 1))
    with pytest.raises(ConfigError, match="unknown voxelunet preset"):
        build_point_model("voxelunet", 4, preset="huge")
    with pytest.raises(ConfigError, match="voxelunet: .*unexpected keyword"):
        build_point_model("voxelunet", 4, kernel=3)
    with pytest.raises(ConfigError, match="unknown sparse convolution backend"):
        build_point_model("voxelunet", 4, backend="minkowski")
    m = build_point_model("voxelunet", 4, preset="custom", **TINY)
    v = voxelize([toy_scan(200)[0]], 0.1, in_channels=3)
    with pytest.raises(DataError, match=r"the model expects \(M, 7\)"):
        m(v)


def test_forward_gives_per_point_logits_and_features() -> None:
    torch.manual_seed(0)
    pts, _ = toy_scan(800)
    m = build_point_model("voxelunet", 5, preset="custom", **TINY).eval()
    batch = voxelize([pts, pts[:300]], 0.1)
    with torch.no_grad():
        logits = m(batch)
        feats = m.forward_features(batch)
        vox, inv = m.voxel_features(batch)
    assert logits.shape == (1100, 5) and feats.shape == (1100, m.feature_dim) and vox.shape[0] == len(batch["coords"])
    torch.testing.assert_close(logits, m.classify(feats))
    # points that share a voxel share the prediction; the second scan does not see the first
    torch.testing.assert_close(logits[800:], m(voxelize([pts[:300]], 0.1)))
    # shuffled voxels (another order) give the same per-point outputs
    perm = torch.randperm(len(batch["coords"]))
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(len(perm))
    shuffled = {**batch, "coords": batch["coords"][perm], "feats": batch["feats"][perm], "inverse": rank[batch["inverse"]]}
    with torch.no_grad():
        torch.testing.assert_close(m(shuffled), logits)
    # without "inverse" the outputs are per voxel, in the order the voxels were given
    with torch.no_grad():
        per_voxel = m({k: v for k, v in batch.items() if k != "inverse"})
        per_voxel_shuffled = m({k: v for k, v in shuffled.items() if k != "inverse"})
    assert per_voxel.shape == (len(batch["coords"]), 5)
    torch.testing.assert_close(per_voxel_shuffled, per_voxel[perm])
    torch.testing.assert_close(per_voxel[batch["inverse"]], logits)


def test_eval_folds_batch_norm_into_the_convolutions() -> None:
    torch.manual_seed(1)
    m = build_point_model("voxelunet", 4, preset="custom", **TINY)
    batch = voxelize([toy_scan(600)[0]], 0.1)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(batch)  # running statistics away from their initial values
    m.eval()
    with torch.no_grad():
        fused = m(batch)
        ref = _unfused_forward(m, batch)  # convolution, then the batch norm with its running statistics
    assert not torch.equal(fused, ref)  # a different computation ...
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-4)  # ... of the same function


def _unfused_forward(m: VoxelUNet, batch: dict) -> torch.Tensor:
    from terraseg.models.points import voxelunet as vu

    orig = vu.ConvBN.forward, vu.LinearBN.forward

    def convbn(self, x):  # type: ignore[no-untyped-def]
        y = self.conv(x)
        f = self.bn(y.feats)
        return y.replace(torch.relu(f) if self.relu else f)

    def linbn(self, x):  # type: ignore[no-untyped-def]
        return self.bn(self.linear(x))

    vu.ConvBN.forward, vu.LinearBN.forward = convbn, linbn
    try:
        return m(batch)
    finally:
        vu.ConvBN.forward, vu.LinearBN.forward = orig


@pytest.mark.parametrize("style", ["residual", "scn"])
def test_the_network_overfits_a_tiny_scan(style: str) -> None:
    torch.manual_seed(0)
    pts, labels = toy_scan(1500)
    opts = TINY if style == "residual" else {"style": "scn", "channels": (8, 16, 24), "layers": (1, 1, 1),
                                             "voxel_size": 0.1}
    m = build_point_model("voxelunet", 3, preset="custom", **opts)
    batch = voxelize([pts], 0.1)
    target = torch.from_numpy(labels)
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    for _ in range(40):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(batch), target)
        loss.backward()
        opt.step()
    pred = predict_scan(m, pts)
    assert (pred.labels == labels).mean() > 0.97, float(loss)
    assert pred.probabilities is not None and pred.probabilities.shape == (1500, 3)
    np.testing.assert_allclose(pred.probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_predictor_fills_points_without_a_return() -> None:
    torch.manual_seed(2)
    pts, _ = toy_scan(400)
    scan = np.concatenate([pts, np.zeros((5, 4), np.float32), np.full((2, 4), np.nan, np.float32)])
    m = build_point_model("voxelunet", 3, preset="custom", **TINY)
    pred = VoxelPredictor(m, fill=2)(scan)
    assert pred.labels.shape == (407,) and pred.labels[400:].tolist() == [2] * 7
    assert pred.valid.sum() == 400 and not pred.probabilities[400:].any()
    labels_only = VoxelPredictor(m, probabilities=False)(scan)
    assert labels_only.probabilities is None
    assert np.array_equal(labels_only.labels[:400], pred.labels[:400])
    assert set(pred.timings) == {"preprocess", "network", "postprocess"}


# -------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path: Path) -> None:
    from terraseg.inference.models import load_model
    from terraseg.inference.scans import scan_predictor
    from terraseg.models.surgery import save_checkpoint

    torch.manual_seed(3)
    m = build_point_model("minkunet", 20, preset="custom", **TINY, in_channels=3, centre_offsets=False).eval()
    pts, _ = toy_scan(500)
    path = save_checkpoint(tmp_path / "vox.pth", m, ontology="sim", meta={"task": "points"})
    loaded = load_model(path)
    assert loaded.task == "points" and isinstance(loaded.model, VoxelUNet)
    assert loaded.model.config == m.config and loaded.ontology is not None and loaded.ontology.name == "sim"
    want = predict_scan(m, pts)
    got = scan_predictor(loaded)(pts)
    np.testing.assert_array_equal(got.labels, want.labels)
    np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=1e-5, atol=1e-6)
    preset = load_model(save_checkpoint(tmp_path / "scn.pth", build_point_model("voxelunet", 4, preset="scn")))
    assert preset.model.config.preset == "scn" and preset.model.config.style == "scn"
    with pytest.raises(ConfigError, match="--regular applies to RandLA-Net only"):
        scan_predictor(loaded, regular=True)


def test_checkpoint_surgery_across_label_sets(tmp_path: Path) -> None:
    from terraseg.models.surgery import load_weights, save_checkpoint
    from terraseg.ontology import get_ontology

    kitti, rellis = get_ontology("semantickitti"), get_ontology("rellis3d")
    torch.manual_seed(4)
    src = build_point_model("voxelunet", kitti.max_id + 1, preset="custom", **TINY)
    path = save_checkpoint(tmp_path / "kitti.pth", src, ontology=kitti)
    dst = build_point_model("voxelunet", rellis.max_id + 1, preset="custom", **TINY)
    dst.ontology = rellis
    before = dst.head.weight.detach().clone()
    rep = load_weights(dst, path)
    assert "head.weight" in rep.remapped and "head.bias" in rep.remapped
    torch.testing.assert_close(dst.head.weight[rellis["person"].id], src.head.weight[kitti["person"].id])
    fresh = rellis["mud"].id  # no SemanticKITTI class of that name: keeps its initialisation
    torch.testing.assert_close(dst.head.weight[fresh], before[fresh])
    torch.testing.assert_close(dst.stem[0].conv.weight, src.stem[0].conv.weight)  # the body is copied whole
    assert not rep.new or set(rep.new) <= {"head.weight", "head.bias"}


def test_export_says_sparse_convolution_is_not_supported(tmp_path: Path) -> None:
    from terraseg.inference.range_onnx import export_range_checkpoint_onnx
    from terraseg.models.surgery import save_checkpoint

    path = save_checkpoint(tmp_path / "v.pth", build_point_model("voxelunet", 3, preset="custom", **TINY))
    with pytest.raises(ConfigError, match="ONNX export of sparse voxel convolution is not supported"):
        export_range_checkpoint_onnx(path, tmp_path / "v.onnx")
    assert not (tmp_path / "v.onnx").exists()


def test_presets_table_lists_every_preset() -> None:
    assert set(VOXEL_PRESETS) == {"default", "minkunet18", "minkunet34", "small", "scn"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_training_step_in_bf16_and_prediction() -> None:
    """A mixed-precision training step on the GPU (the backend ``auto`` picks spconv when it is
    installed) and whole-scan prediction that agrees with the CPU."""
    torch.manual_seed(5)
    pts, labels = toy_scan(3000)
    m = build_point_model("voxelunet", 3, preset="small", voxel_size=0.1).cuda()
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in voxelize([pts, pts], 0.1).items()}
    target = torch.from_numpy(np.concatenate([labels, labels])).cuda()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(m(batch).float(), target)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.eval()
    gpu = predict_scan(m, pts)
    m.backend = "torch"
    cpu = predict_scan(m.cpu(), pts)
    assert (gpu.labels == cpu.labels).mean() > 0.99
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, atol=1e-3)
