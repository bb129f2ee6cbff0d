"""LiDAR inference: Open3D-ML-style spatially regular RandLA-Net sampling, back-projection and
grid sub-sampling, and the range network's ONNX export and ONNX Runtime predictor.

A per-point toy RandLA-Net (its logits depend only on each point's intensity, not on the
neighbourhood or the crop) must give the same probabilities with crops as in one pass; a real
(small, random) RandLA-Net checks coverage, valid probabilities, determinism and batching. The ONNX
tests export a tiny SalsaNext for 32 x 256 range images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from terraseg.errors import ConfigError, DataError
from terraseg.geometry import RangeProjection
from terraseg.inference import range_onnx
from terraseg.inference.points import RegularCropSampler, back_project, grid_subsample, predict_scan_regular
from terraseg.inference.range_onnx import (
    OrtRangeNetwork,
    OrtRangePredictor,
    export_range_onnx,
    read_range_onnx_metadata,
)
from terraseg.models.points import (
    SOURCE_FALLBACK,
    SOURCE_NETWORK,
    SOURCE_NONE,
    SOURCE_VOTE,
    RandLANet,
    RandLANetConfig,
    RangePredictor,
    build_point_model,
    predict_scan,
)
from terraseg.ontology import Ontology

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
torch.set_num_threads(2)


def scan(n: int = 3000, seed: int = 0) -> np.ndarray:
    """(n, 4) float32 points on a 40 m x 40 m patch of gently rolling ground, intensity in [0, 1];
    points 0 and 1 have no return (zero, NaN)."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-20, 20, (n, 2))
    z = 0.5 * np.sin(xy[:, :1] / 5.0) + rng.normal(0, 0.05, (n, 1))
    pts = np.concatenate([xy, z, rng.uniform(0, 1, (n, 1))], axis=1).astype(np.float32)
    pts[0, :3] = 0.0
    pts[1, 0] = np.nan
    return pts


class PerPointToy(RandLANet):
    """Logits ``-10 (intensity - c / (C - 1))^2`` per class c: no dependence on neighbours or crops."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__(RandLANetConfig(num_classes=num_classes, in_channels=4, d_out=(8, 8), ratios=(4, 4), k=4))
        self.centres = nn.Parameter(torch.linspace(0, 1, num_classes), requires_grad=False)

    def forward(self, inputs: dict[str, object]) -> torch.Tensor:
        self._check(inputs)
        f = inputs["features"]
        assert isinstance(f, torch.Tensor)
        f = f[None] if f.dim() == 2 else f
        return -10.0 * (f[..., 3:4] - self.centres) ** 2


# ---------------------------------------------------------------------- regular sampling
def test_regular_sampling_matches_one_pass_for_a_per_point_model() -> None:
    pts = scan()
    model = PerPointToy()
    one = predict_scan(model, pts)
    for smoothing in (None, 0.95):
        reg = predict_scan_regular(model, pts, num_points=512, smoothing=smoothing, seed=3)
        assert reg.crops >= np.ceil(2998 / 512)
        np.testing.assert_array_equal(reg.source, one.source)  # every point with a return was in a crop
        np.testing.assert_allclose(reg.probabilities, one.probabilities, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(reg.labels, one.labels)
    assert (one.labels[2:] == np.rint(pts[2:, 3] * 3)).mean() > 0.99  # the toy's answer: nearest centre


def test_regular_sampling_real_randlanet_coverage_determinism_batching() -> None:
    torch.manual_seed(0)
    pts = scan(1500)
    model = build_point_model("randlanet", num_classes=5, in_channels=4, preset="custom", d_out=(8, 16),
                              ratios=(4, 4), k=8)
    pred = predict_scan_regular(model, pts, num_points=512, seed=1)
    n = len(pts)
    assert pred.labels.shape == (n,) and pred.probabilities.shape == (n, 5) and pred.probabilities.dtype == np.float32
    assert pred.labels.dtype == np.int64
    assert set(pred.timings) == {"preprocess", "network", "postprocess"}
    crops = pred.crops
    assert 3 <= crops <= 30, crops  # 1,498 points, 512 per crop: every point settled, no runaway loop
    assert (pred.source[2:] == SOURCE_NETWORK).all() and (pred.source[:2] == SOURCE_NONE).all()
    assert (pred.labels[:2] == 0).all() and (pred.probabilities[:2] == 0).all()
    np.testing.assert_allclose(pred.probabilities[2:].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(pred.labels[2:], pred.probabilities[2:].argmax(axis=1))
    assert model.training  # the caller's mode is restored
    again = predict_scan_regular(model, pts, num_points=512, seed=1)
    np.testing.assert_array_equal(again.probabilities, pred.probabilities)
    batched = predict_scan_regular(model, pts, num_points=512, seed=1, batch_size=3)
    assert batched.crops == crops
    np.testing.assert_allclose(batched.probabilities, pred.probabilities, rtol=1e-4, atol=1e-5)
    other = predict_scan_regular(model, pts, num_points=512, seed=1, recenter="center")
    assert other.crops == crops  # the crops do not depend on the frame
    np.testing.assert_allclose(other.probabilities[2:].sum(axis=1), 1.0, rtol=1e-5)
    assert np.abs(other.probabilities - pred.probabilities).max() > 1e-4  # but the network's input does


def test_small_scan_is_one_pass_and_equals_predict_scan() -> None:
    torch.manual_seed(0)
    pts = scan(600)
    model = build_point_model("randlanet", num_classes=3, in_channels=4, preset="small")
    reg = predict_scan_regular(model, pts, num_points=1024, seed=5, recenter="none")
    assert reg.crops == 1.0
    one = predict_scan(model, pts, seed=5)
    np.testing.assert_allclose(reg.probabilities, one.probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(reg.source, one.source)
    with pytest.raises(DataError, match="too few for sub-sampling ratios"):
        predict_scan_regular(model, pts[:100], num_points=1024)


def test_max_crops_falls_back_to_nearest_visited_point() -> None:
    pts = scan()
    pred = predict_scan_regular(PerPointToy(), pts, num_points=512, max_crops=2)
    assert pred.crops == 2.0
    counts = np.bincount(pred.source, minlength=4)
    assert counts[SOURCE_NONE] == 2 and counts[SOURCE_VOTE] == 0
    assert 512 <= counts[SOURCE_NETWORK] <= 1024 and counts[SOURCE_FALLBACK] == 2998 - counts[SOURCE_NETWORK]
    np.testing.assert_allclose(pred.probabilities[2:].sum(axis=1), 1.0, rtol=1e-5)


def test_grid_subsampling_path() -> None:
    pts = scan(4000)
    pred = predict_scan_regular(PerPointToy(), pts, num_points=256, grid_size=2.0)
    assert (pred.source[2:] == SOURCE_VOTE).all() and (pred.source[:2] == SOURCE_NONE).all()
    np.testing.assert_allclose(pred.probabilities[2:].sum(axis=1), 1.0, rtol=1e-5)
    # each point carries the prediction for its nearest voxel barycentre (mean intensity of the voxel)
    sub_xyz, sub_f, _ = grid_subsample(pts[2:, :3], pts[2:, 3:], 2.0)
    assert sub_f is not None
    expected = np.rint(back_project(sub_xyz, sub_f[:, 0], pts[2:, :3]) * 3)
    assert (pred.labels[2:] == expected).mean() > 0.99


def test_option_errors() -> None:
    pts = scan(600)
    toy = PerPointToy()
    with pytest.raises(ConfigError, match=r"num_points must be an integer >= 16"):
        predict_scan_regular(toy, pts, num_points=8)
    with pytest.raises(ConfigError, match="max_crops must be a positive integer"):
        predict_scan_regular(toy, pts, max_crops=0)
    with pytest.raises(ConfigError, match="smoothing must be in"):
        predict_scan_regular(toy, pts, smoothing=1.0)
    with pytest.raises(ConfigError, match="recenter must be"):
        predict_scan_regular(toy, pts, recenter="origin")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="expects a RandLANet, got SalsaNext"):
        predict_scan_regular(build_point_model("salsanext", num_classes=3, preset="tiny"), pts)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="uses 4 input channels but the points have only 3 columns"):
        predict_scan_regular(toy, pts[:, :3])


def test_crop_sampler_visits_everything() -> None:
    xyz = scan(2000)[2:, :3]
    sampler = RegularCropSampler(xyz, 300, np.random.default_rng(0))
    start = sampler.possibility.copy()
    assert start.max() < 1e-3
    seen = np.zeros(len(xyz), dtype=bool)
    first = True
    while not sampler.done:
        centre, crop = sampler.next_crop()
        if first:
            assert centre == int(np.argmin(start))
            assert sampler.possibility[centre] == pytest.approx(start[centre] + 1.0)  # the centre gains 1
            first = False
        assert crop.shape == (300,) and crop[0] == centre and len(np.unique(crop)) == 300
        d = np.linalg.norm(xyz[crop] - xyz[centre], axis=1)
        assert (np.diff(d) >= -1e-6).all()  # nearest first
        outside = np.delete(np.arange(len(xyz)), crop)
        assert np.linalg.norm(xyz[outside] - xyz[centre], axis=1).min() >= d.max() - 1e-6  # a true kNN ball
        seen[crop] = True
    assert seen.all() and sampler.settled() == len(xyz) and sampler.possibility.min() > 0.5


def test_back_project_and_grid_subsample() -> None:
    sub = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0]], dtype=np.float32)
    probs = np.array([[1, 0], [0, 1], [0.5, 0.5]], dtype=np.float32)
    q = np.array([[1, 1, 0], [9, 0, 1], [0, 7, 0], [100, 0, 0]], dtype=np.float32)
    np.testing.assert_array_equal(back_project(sub, probs, q), probs[[0, 1, 2, 1]])
    np.testing.assert_array_equal(back_project(sub, np.array([4, 5, 6]), q), [4, 5, 6, 5])
    assert back_project(sub, probs, q[:0]).shape == (0, 2)
    with pytest.raises(DataError, match="2 values for 3 sub-sampled points"):
        back_project(sub, probs[:2], q)
    with pytest.raises(DataError, match="no sub-sampled points"):
        back_project(sub[:0], probs[:0], q)

    xyz = np.array([[0.1, 0.1, 0.1], [0.3, 0.3, 0.3], [1.5, 0.2, 0.2], [-0.9, 0.0, 0.0]])
    feat = np.array([[1.0], [3.0], [5.0], [7.0]])
    sub_xyz, sub_f, voxel = grid_subsample(xyz, feat, 1.0)
    # origin floor(min / 1) = (-1, 0, 0): voxels (1,0,0) <- points 0, 1; (2,0,0) <- 2; (0,0,0) <- 3
    assert voxel.tolist() == [1, 1, 2, 0]
    np.testing.assert_allclose(sub_xyz, [[-0.9, 0, 0], [0.2, 0.2, 0.2], [1.5, 0.2, 0.2]], rtol=1e-6)
    assert sub_f is not None and sub_f[:, 0].tolist() == [7.0, 2.0, 5.0]
    assert sub_xyz.dtype == np.float32 and sub_f.dtype == np.float32
    with pytest.raises(ConfigError, match="grid_size must be > 0"):
        grid_subsample(xyz, None, 0.0)


@pytest.mark.realdata
def test_real_rellis_scan_regular_sampling_with_grid(shared_data: Path) -> None:
    from terraseg.io.scans import read_bin

    path = shared_data / "rellis3d" / "000104.bin"
    if not path.is_file():
        pytest.skip(f"real scan {path} not found (the ../shared/data checkout is absent)")
    pts = read_bin(path)
    torch.manual_seed(0)
    model = build_point_model("randlanet", num_classes=20, in_channels=4, preset="custom", d_out=(8, 16),
                              ratios=(4, 4), k=8)
    pred = predict_scan_regular(model, pts, num_points=4096, grid_size=0.5, batch_size=2)
    # the 53,364 zero points of the organised Ouster scan have no return; every return is labelled
    # from its nearest 0.5 m voxel (8,180 of them), each voxel having been in at least one crop
    assert np.bincount(pred.source, minlength=4).tolist() == [53_364, 0, 77_708, 0]
    assert 2 <= pred.crops <= 40
    np.testing.assert_allclose(pred.probabilities[pred.valid].sum(axis=1), 1.0, rtol=1e-4)
    assert pred.labels.min() >= 0 and pred.labels.max() < 20


# ---------------------------------------------------------------------- range network ONNX
PROJ = RangeProjection(32, 256, fov_up=10.0, fov_down=-20.0, name="test32")
FIVE = Ontology.from_dict({"name": "five", "classes": [{"id": i, "name": f"c{i}", "color": [40 * i, 0, 0]}
                                                       for i in range(5)]})


def range_scan(seed: int = 0) -> np.ndarray:
    """(N, 4) points: one return per pixel direction at 5-40 m, 2,000 extra points hidden behind
    others (they share pixels), and 3 points without a return."""
    rng = np.random.default_rng(seed)
    dirs = PROJ.pixel_directions().reshape(-1, 3)
    keep = rng.random(len(dirs)) < 0.8
    r = rng.uniform(5, 40, keep.sum())
    xyz = dirs[keep] * r[:, None]
    hidden = xyz[rng.choice(len(xyz), 2000)] * rng.uniform(1.02, 1.3, (2000, 1))
    pts = np.concatenate([xyz, hidden, np.zeros((3, 3))])
    inten = rng.uniform(0, 1, (len(pts), 1))
    return np.concatenate([pts, inten], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, range_onnx.RangeExportReport]:
    torch.manual_seed(0)
    model = build_point_model("salsanext", num_classes=5, preset="tiny", normalization="none")
    model.ontology = FIVE
    model.eval()
    path = tmp_path_factory.mktemp("onnx") / "salsa.onnx"
    report = export_range_onnx(model, path, (32, 256), projection=PROJ)
    return model, path, report


def test_export_agreement_and_metadata(exported: tuple[nn.Module, Path, range_onnx.RangeExportReport]) -> None:
    model, path, report = exported
    assert report.path == path and path.is_file() and report.size == (32, 256) and report.opset == 18
    assert report.agreement >= 0.999 and report.max_abs_diff < 1e-3
    assert [p.name for p in path.parent.iterdir()] == ["salsa.onnx"]  # no temporary or external-data file
    import onnx

    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["range"] and [o.name for o in proto.graph.output] == ["logits"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 5, 32, 256]
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["terraseg"])
    assert meta == read_range_onnx_metadata(path)
    cfg = meta["config"]
    assert meta["arch"] == "salsanext" and cfg["num_classes"] == 5 and cfg["in_channels"] == 5
    assert cfg["normalization"] == "none" and cfg["means"] == [0.0] * 5 and cfg["stds"] == [1.0] * 5
    assert cfg["preset"] == "tiny" and cfg["base_channels"] == 8
    assert meta["projection"]["projection"]["height"] == 32 and meta["projection"]["projection"]["max_range"] is None
    # a checksum of the weights, verified whenever a session opens the file
    from terraseg.inference.onnx_integrity import DIGEST_KEY, onnx_weights_digest

    assert {p.key: p.value for p in proto.metadata_props}[DIGEST_KEY] == onnx_weights_digest(proto)


def test_ort_predictor_matches_torch_predictor(exported: tuple[nn.Module, Path, range_onnx.RangeExportReport]
                                               ) -> None:
    model, path, _ = exported
    pts = range_scan()
    ort_pred = OrtRangePredictor(path, threads=2)  # the projection recorded at export
    assert ort_pred.projection == PROJ and isinstance(ort_pred.model, OrtRangeNetwork)
    assert ort_pred.network.ontology == FIVE and ort_pred.network.config == model.config
    got = ort_pred.predict(pts)
    ref = RangePredictor(model, projection=PROJ, channels_last=False)(pts)
    assert (got.labels == ref.labels).mean() >= 0.999
    np.testing.assert_array_equal(got.source, ref.source)
    assert set(np.unique(got.source)) >= {SOURCE_NONE, SOURCE_NETWORK}
    np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-4)
    assert set(got.timings) == {"preprocess", "network", "postprocess"}
    # an explicit projection of the wrong size is refused
    with pytest.raises(ConfigError, match="exported for 32 x 256 range images"):
        OrtRangePredictor(path, projection="velodyne-hdl64e")


def test_failed_check_leaves_no_file(exported: tuple[nn.Module, Path, range_onnx.RangeExportReport],
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    model, path, _ = exported

    def cached_export(net: nn.Module, x: torch.Tensor, opset: int) -> onnx.ModelProto:
        proto = onnx.load(str(path))  # the fixture's export (exporting again is slow)
        del proto.metadata_props[:]
        return proto

    monkeypatch.setattr(range_onnx, "_export_proto", cached_export)
    model.train()
    try:
        ok = export_range_onnx(model, tmp_path / "ok.onnx", (32, 256))
        assert model.training  # the export works on an eval-mode copy
    finally:
        model.eval()
    assert ok.agreement >= 0.999 and (tmp_path / "ok.onnx").is_file()
    # ONNX Runtime disagreeing with PyTorch (negated logits): DataError, nothing written
    monkeypatch.setattr(range_onnx, "_run_session", lambda session, x: -np.asarray(session.run(None, {"range": x})[0]))
    with pytest.raises(DataError, match=r"bad\.onnx: the ONNX export agrees with PyTorch on only .*nothing was written"):
        export_range_onnx(model, tmp_path / "bad.onnx", (32, 256))
    assert [p.name for p in tmp_path.iterdir()] == ["ok.onnx"]


def test_export_and_load_errors(tmp_path: Path) -> None:
    salsa = build_point_model("salsanext", num_classes=5, preset="tiny")
    with pytest.raises(DataError, match="expects a SalsaNext range network, got RandLANet"):
        export_range_onnx(build_point_model("randlanet", num_classes=3), tmp_path / "r.onnx", (32, 256))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="projection makes"):
        export_range_onnx(salsa, tmp_path / "p.onnx", (32, 256), projection="velodyne-hdl64e")
    with pytest.raises(DataError, match=r"sample must be \(5, 32, 256\)"):
        export_range_onnx(salsa, tmp_path / "s.onnx", (32, 256), sample=np.zeros((4, 32, 256)))
    with pytest.raises(DataError, match=r"nothing\.onnx: ONNX file not found"):
        OrtRangePredictor(tmp_path / "nothing.onnx", projection=PROJ)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"junk\.onnx: not a readable ONNX model"):
        OrtRangePredictor(tmp_path / "junk.onnx", projection=PROJ)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx"]


def _organised_scan(h: int, w: int, seed: int) -> np.ndarray:
    """(h * w, 4) float32 organised scan stored column by column, bottom beam first (both must
    be detected), ~15 % no-return zero points."""
    rng = np.random.default_rng(seed)
    el = np.radians(np.linspace(-15.0, 15.0, h))[:, None]
    yaw = np.radians(-np.arange(w) * 360.0 / w)[None, :]
    r = rng.uniform(3.0, 40.0, (h, w))
    pts = np.stack([r * np.cos(el) * np.cos(yaw), r * np.cos(el) * np.sin(yaw), r * np.sin(el) + 0 * yaw,
                    rng.uniform(0, 1, (h, w))], axis=-1)
    pts[rng.random((h, w)) < 0.15] = 0.0
    return pts.transpose(1, 0, 2).reshape(-1, 4).astype(np.float32)


def test_scan_predictor_keeps_one_range_predictor_and_labels_only_on_request(tmp_path: Path) -> None:
    from terraseg.inference.models import load_model
    from terraseg.inference.runtime import load_backend
    from terraseg.inference.scans import scan_predictor
    from terraseg.models.points import OrganizedLayout
    from terraseg.models.surgery import save_checkpoint
    from terraseg.ontology import get_ontology

    onto = get_ontology("sim")
    torch.manual_seed(0)
    model = build_point_model("salsanext", onto.num_classes, preset="tiny").eval()
    ckpt = save_checkpoint(tmp_path / "salsa.pth", model, ontology=onto,
                           meta={"preprocess": {"projection": "organized:8x256"}})
    scans = [_organised_scan(8, 256, s) for s in (1, 2)]
    predict = scan_predictor(load_model(ckpt))
    assert isinstance(predict.base, RangePredictor) and predict.probabilities  # inside the ScanPipeline
    first = predict(scans[0])
    # the layout (column-major, bottom beam first) was decided once, on the first scan
    assert predict._layouts == {OrganizedLayout(8, 256): ("column-major", True)}
    for pts in scans:
        out = predict(pts)
        ref = predict_scan(model, pts, projection=OrganizedLayout(8, 256))
        np.testing.assert_array_equal(out.labels, ref.labels)
        np.testing.assert_allclose(out.probabilities, ref.probabilities, rtol=1e-6, atol=1e-7)
    empty = np.linalg.norm(scans[0][:, :3], axis=1) == 0
    assert (first.source[empty] == SOURCE_NONE).all() and (first.source[~empty] == SOURCE_NETWORK).all()
    labels_only = scan_predictor(load_model(ckpt), probabilities=False)(scans[0])
    assert labels_only.probabilities is None
    np.testing.assert_array_equal(labels_only.labels, first.labels)
    # the runtime's PyTorch LiDAR backend asks for probabilities only when scores are wanted
    assert load_backend(ckpt, device="cpu").predict_fn.probabilities is False
    assert load_backend(ckpt, device="cpu", scores=True).predict_fn.probabilities is True
