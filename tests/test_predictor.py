"""One way to load and run any model: ``load_predictor`` for .pth and .onnx, camera and LiDAR; LiDAR
TTA; PLY scans in predict and run; the checkpoint's projection; intensity scale and its check."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from terraseg.cli import app
from terraseg.errors import ConfigError, DataError
from terraseg.inference import load_model, load_predictor, model_kind
from terraseg.io.ply import write_ply
from terraseg.io.scans import read_label, read_ply_scan, read_scan, write_bin
from terraseg.models.points import (
    IntensitySpec,
    IntensityStats,
    OrganizedLayout,
    RangePredictor,
    ScanPipeline,
    ScanTTAConfig,
    build_point_model,
    point_predictor,
    predict_scan,
)
from terraseg.models.points.intensity import intensity_mismatch, intensity_stats, normalize_intensity
from terraseg.models.points.tta import predict_views, view_points
from terraseg.models.surgery import save_checkpoint

runner = CliRunner()
PROJ = "sim-small"  # 32 x 512, +15 / -20 degrees
STATS = IntensityStats(low=0.0, high=0.65, max=0.99, mean=0.28, scans=4)


def sensor_scan(n: int = 3000, seed: int = 0, intensity: float = 0.6) -> np.ndarray:
    """(n, 4) float32 points inside the sim-small field of view, intensity uniform in [0, intensity)."""
    rng = np.random.default_rng(seed)
    az = rng.uniform(-np.pi, np.pi, n)
    el = np.radians(rng.uniform(-19.0, 14.0, n))
    r = rng.uniform(3.0, 30.0, n)
    xyz = np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)], axis=1)
    return np.concatenate([xyz, rng.uniform(0, intensity, (n, 1))], axis=1).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():  # type: ignore[no-untyped-def]
    """The tiny networks here run faster on one thread, and far faster on a shared machine (two
    threads on busy cores wait on each other); restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from terraseg.inference import export_range_checkpoint_onnx

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    salsa = build_point_model("salsanext", 20, preset="tiny")
    meta = {"task": "points", "preprocess": {"projection": PROJ,
                                             "intensity": IntensitySpec(None, STATS).to_meta()}}
    out = {"salsa": save_checkpoint(d / "salsa.pth", salsa, ontology="sim", meta=meta)}
    # an older checkpoint: no projection, no intensity fields in its metadata
    out["old"] = save_checkpoint(d / "old.pth", salsa, ontology="sim", meta={"task": "points"})
    randla = build_point_model("randlanet", 20, in_channels=4, preset="small")
    out["randla"] = save_checkpoint(d / "randla.pth", randla, ontology="sim",
                                    meta={"task": "points", "preprocess": {"projection": None}})
    export_range_checkpoint_onnx(out["salsa"], d / "salsa.onnx", exporter="torchscript")  # faster than dynamo
    out["onnx"] = d / "salsa.onnx"
    scans = d / "scans"
    scans.mkdir()
    for i in range(2):
        pts = sensor_scan(seed=i)
        write_bin(scans / f"{i:06d}.bin", pts)
        write_ply(d / f"{i:06d}.ply", pts[:, :3], fields={"intensity": pts[:, 3]})
    out["scans"], out["root"] = scans, d
    return out


# ------------------------------------------------------------------------------------------- which kind
def test_model_kind_and_loading_every_kind_of_file(models: dict[str, Path]) -> None:
    assert model_kind(models["salsa"]) == "lidar" and model_kind(models["onnx"]) == "lidar"
    assert model_kind(models["randla"]) == "lidar"
    pth, onnx = load_predictor(models["salsa"], device="cpu"), load_predictor(models["onnx"], device="cpu")
    for p, runtime in ((pth, "pytorch"), (onnx, "onnxruntime")):
        assert p.kind == "lidar" and p.runtime == runtime and p.arch == "salsanext"
        assert p.ontology is not None and p.ontology.name == "sim"
        assert p.projection == PROJ and p.intensity == IntensitySpec(None, STATS)  # carried by both files
        assert p.image is None and "projection sim-small" in p.describe()
    pts = sensor_scan(seed=7)
    a, b = pth.predict_scan(pts), onnx.predict_scan(pts)
    assert (a.labels == b.labels).mean() > 0.999
    with pytest.raises(ConfigError, match=r"a LiDAR model \(salsanext\) given as the camera model"):
        load_predictor(models["onnx"], kind="camera")
    with pytest.raises(ConfigError, match="a camera model cannot label LiDAR scans|a LiDAR model cannot label"):
        pth.predict_image(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ConfigError, match="projection applies to range networks, not to randlanet"):
        load_predictor(models["randla"], projection=PROJ)
    with pytest.raises(ConfigError, match="sliding windows"):
        load_predictor(models["salsa"], window="slide crop=32x32")
    with pytest.raises(ConfigError, match="--regular applies to RandLA-Net only"):
        load_predictor(models["salsa"], regular=True)
    with pytest.raises(DataError, match="checkpoint file not found"):
        load_predictor(models["root"] / "missing.pth")


def test_camera_checkpoint_kind_and_options(tmp_path: Path) -> None:
    from terraseg.models.image import build_image_model

    torch.manual_seed(0)
    img = build_image_model("litefpn", "tu-mobilenetv3_small_100", ontology="sim")
    ckpt = save_checkpoint(tmp_path / "img.pth", img, meta={"task": "image", "preprocess": {"base_size": [64, 96]}})
    assert model_kind(ckpt) == "camera"
    pred = load_predictor(ckpt, device="cpu", tta="flip=true")
    assert pred.kind == "camera" and pred.image is not None and pred.image.base_size == (64, 96)
    assert pred.image.tta.views == [(1.0, False), (1.0, True)] and pred.scan is None
    assert pred.predict_image(np.zeros((48, 80, 3), np.uint8)).shape == (48, 80)
    with pytest.raises(ConfigError, match="unknown keys \\['rotations'\\]"):
        load_predictor(ckpt, tta="rotations=4")  # LiDAR TTA text for a camera model
    with pytest.raises(ConfigError, match="--intensity-max applies to LiDAR models"):
        load_predictor(ckpt, intensity_max=255)
    with pytest.raises(ConfigError, match=r"a camera model \(litefpn\) given as the LiDAR model"):
        load_predictor(ckpt, kind="lidar")


# ------------------------------------------------------------------------------------------- projection
def test_predict_scan_uses_the_checkpoints_projection_like_the_onnx_model(models: dict[str, Path]) -> None:
    from terraseg.inference import OrtRangePredictor

    model = load_model(models["salsa"]).model
    assert model.projection == PROJ
    pts = sensor_scan(seed=3)
    ort = OrtRangePredictor(models["onnx"])(pts)
    ours = predict_scan(model, pts)  # was: a silent Velodyne HDL-64E projection, ~half the labels differed
    assert (ours.labels == ort.labels).mean() > 0.999
    # a network that records no projection and is given none: a clear error, no default sensor
    fresh = build_point_model("salsanext", 20, preset="tiny")
    with pytest.raises(ConfigError, match="records no sensor projection; give one"):
        predict_scan(fresh, pts)
    old = load_model(models["old"]).model
    assert old.projection is None and old.intensity.max is None  # older metadata still loads
    with pytest.raises(ConfigError, match="records no sensor projection"):
        load_predictor(models["old"])
    same = load_predictor(models["old"], projection=PROJ, device="cpu").predict_scan(pts)
    np.testing.assert_array_equal(same.labels, ours.labels)


# ------------------------------------------------------------------------------------------- TTA
def test_scan_tta_spec_parsing_and_errors() -> None:
    cfg = ScanTTAConfig.parse("rotations=4 flip=y")
    assert cfg.angles == (0.0, 90.0, 180.0, 270.0) and cfg.flips == ("y",) and len(cfg.views) == 8
    assert ScanTTAConfig.parse("angles=0,120 flip=x,y").views == [(0.0, ""), (0.0, "x"), (0.0, "y"),
                                                                  (120.0, ""), (120.0, "x"), (120.0, "y")]
    assert ScanTTAConfig.parse("flip=true").flips == ("y",) and ScanTTAConfig.parse("flip").flips == ("y",)
    assert ScanTTAConfig.parse({"rotations": 2}).angles == (0.0, 180.0)
    assert ScanTTAConfig.parse(None).identity and ScanTTAConfig.parse("flip=false").identity
    for bad, msg in (("garbage", "unknown keys \\['garbage'\\]"), ("scales=1,2", "scales is camera TTA"),
                     ("rotations=abc", "rotations must be a whole number"), ("rotations=0", "rotations must be 1"),
                     ("angles=0,360", "repeat a rotation"), ("flip=z", "expected true or false"),
                     ("rotations=2 angles=0", "not both"), ("rotations=2 rotations=3", "given twice")):
        with pytest.raises(ConfigError, match=msg):
            ScanTTAConfig.parse(bad)


def test_view_points_rotates_and_mirrors_xy_only() -> None:
    pts = np.array([[1.0, 2.0, 3.0, 0.5], [0.0, 0.0, 0.0, 0.0]], np.float32)
    np.testing.assert_allclose(view_points(pts, 90.0), [[-2.0, 1.0, 3.0, 0.5], [0, 0, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(view_points(pts, 0.0, "y"), [[1.0, -2.0, 3.0, 0.5], [0, 0, 0, 0]])
    np.testing.assert_allclose(view_points(pts, 90.0, "x"), [[-2.0, -1.0, 3.0, 0.5], [0, 0, 0, 0]], atol=1e-6)
    assert view_points(pts, 0.0) is not pts


def test_lidar_tta_averages_the_probabilities_of_every_view_for_any_point_predictor() -> None:
    torch.manual_seed(0)
    pts = sensor_scan(800, seed=2)
    pts[0, :3] = 0.0  # no return
    for model, opts, spec in ((build_point_model("randlanet", 5, in_channels=4, preset="small"), {"seed": 1},
                               "angles=0,90"),
                              (build_point_model("salsanext", 5, preset="tiny"), {"projection": PROJ},
                               "rotations=2 flip=x"),
                              (build_point_model("voxelunet", 5, preset="custom", channels=(8, 8, 8, 8, 8),
                                                 layers=(1, 1, 1, 1)), {}, "rotations=3 flip=y")):
        model.eval()
        base = point_predictor(model, **opts).base
        tta = ScanTTAConfig.parse(spec)
        got = point_predictor(model, tta=tta, **opts)(pts)
        views = [base(view_points(pts, a, f)).probabilities for a, f in tta.views]
        mean = np.mean(views, axis=0)
        mean[0] = 0.0
        np.testing.assert_allclose(got.probabilities, mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got.labels[1:], mean[1:].argmax(axis=1))
        assert got.labels[0] == 0 and got.source[0] == 0
        plain = base(pts)
        assert np.abs(got.probabilities - plain.probabilities).max() > 1e-3  # the views change the answer
        assert set(got.timings) == {"preprocess", "network", "postprocess"} and got.crops == len(tta.views)


def test_lidar_tta_needs_probabilities_and_organised_range_models_refuse() -> None:
    model = build_point_model("salsanext", 5, preset="tiny")
    with pytest.raises(ConfigError, match="organised sensor layout.*Use a spherical projection preset"):
        point_predictor(model, projection=OrganizedLayout(32, 512), tta="flip=y")
    with pytest.raises(ConfigError, match="labels-only"):
        ScanPipeline(RangePredictor(model, projection=PROJ, probabilities=False), tta=ScanTTAConfig.parse("flip"))
    with pytest.raises(DataError, match="returns labels only"):
        predict_views(RangePredictor(model, projection=PROJ, probabilities=False), sensor_scan(500),
                      ScanTTAConfig.parse("flip"))
    with pytest.raises(ConfigError, match="unknown option\\(s\\) projection"):
        point_predictor(build_point_model("randlanet", 5, preset="small"), projection=PROJ)


# ------------------------------------------------------------------------------------------- PLY + CLI
def test_ply_scans_read_like_bin_scans(models: dict[str, Path], tmp_path: Path) -> None:
    bin_pts = read_scan(models["scans"] / "000000.bin")
    np.testing.assert_array_equal(read_scan(models["root"] / "000000.ply"), bin_pts)
    write_ply(tmp_path / "refl.ply", bin_pts[:, :3], fields={"reflectivity": bin_pts[:, 3] * 100})
    np.testing.assert_allclose(read_ply_scan(tmp_path / "refl.ply")[:, 3], bin_pts[:, 3] * 100, rtol=1e-6)
    write_ply(tmp_path / "xyz.ply", bin_pts[:, :3])
    assert (read_ply_scan(tmp_path / "xyz.ply")[:, 3] == 0).all()
    write_ply(tmp_path / "flat.ply", np.zeros((3, 3), np.float32), fields={"intensity": np.zeros(3, np.float32)})
    with pytest.raises(DataError, match="no vertex property 'signal'"):
        read_ply_scan(tmp_path / "flat.ply", intensity_field="signal")
    with pytest.raises(DataError, match="not a LiDAR scan"):
        read_scan(tmp_path / "a.txt")
    from terraseg.inference.scans import list_scans

    (tmp_path / "000000.bin").write_bytes((models["scans"] / "000000.bin").read_bytes())
    with pytest.raises(DataError, match="refl.ply and refl.bin are the same scan stem|same scan stem"):
        (tmp_path / "refl.bin").write_bytes(b"")
        list_scans(tmp_path)
    (tmp_path / "refl.bin").unlink()
    assert [s for s, _ in list_scans(tmp_path)] == ["000000", "flat", "refl", "xyz"]


def test_cli_predict_range_onnx_ply_scans_and_lidar_tta(models: dict[str, Path], tmp_path: Path) -> None:
    root = models["root"]
    r = runner.invoke(app, ["predict", str(models["onnx"]), str(models["scans"]), "-o", str(tmp_path / "onnx"), "-q"])
    assert r.exit_code == 0, r.output  # was: "a LiDAR range-image model; use OrtRangePredictor"
    assert "predicted 2 scan(s)" in r.output
    r = runner.invoke(app, ["predict", str(models["salsa"]), str(root / "000000.ply"), "-o", str(tmp_path / "ply"),
                            "-q"])
    assert r.exit_code == 0, r.output  # was: "not a LiDAR scan (expected a SemanticKITTI .bin file)"
    from_ply, _ = read_label(tmp_path / "ply" / "labels" / "000000.label")
    from_onnx, _ = read_label(tmp_path / "onnx" / "labels" / "000000.label")
    assert len(from_ply) == 3000 and (from_ply == from_onnx).mean() > 0.999
    ref = load_predictor(models["salsa"], device="cpu", tta="rotations=2 flip=y")
    r = runner.invoke(app, ["predict", str(models["salsa"]), str(models["scans"]), "-o", str(tmp_path / "tta"), "-q",
                            "--tta", "rotations=2 flip=y", "--device", "cpu"])
    assert r.exit_code == 0, r.output  # was: --tta silently ignored for LiDAR
    got, _ = read_label(tmp_path / "tta" / "labels" / "000001.label")
    np.testing.assert_array_equal(got, ref.predict_scan(read_scan(models["scans"] / "000001.bin")).labels)
    r = runner.invoke(app, ["predict", str(models["salsa"]), str(models["scans"]), "-o", str(tmp_path / "bad"),
                            "--tta", "garbage"])
    assert r.exit_code == 1 and "error: LiDAR TTA spec 'garbage': unknown keys ['garbage']" in r.output
    assert not (tmp_path / "bad").exists()  # was: exit 0 with the garbage ignored
    r = runner.invoke(app, ["predict", str(models["salsa"]), str(models["scans"]), "-o",
                            str(models["scans"] / "out")])
    assert r.exit_code == 1 and "must not be inside the input folder" in r.output


def test_cli_run_reads_ply_sources(models: dict[str, Path], tmp_path: Path) -> None:
    plys = tmp_path / "plys"
    plys.mkdir()
    for i in range(2):
        (plys / f"{i:06d}.ply").write_bytes((models["root"] / f"{i:06d}.ply").read_bytes())
    r = runner.invoke(app, ["run", "--lidar-model", str(models["onnx"]), "--source", str(plys), "--no-realtime",
                            "--out-dir", str(tmp_path / "out"), "--threads", "1", "-q"])
    assert r.exit_code == 0, r.output  # was: "unknown source type" / no scans in the folder
    assert "2 message(s) in, 2 predicted" in r.output
    labels = sorted((tmp_path / "out").rglob("*.label"))
    assert len(labels) == 2
    ref = load_predictor(models["onnx"]).predict_scan(read_scan(plys / "000001.ply")).labels
    np.testing.assert_array_equal(read_label(labels[1])[0], ref)
    r = runner.invoke(app, ["run", "--lidar-model", str(models["salsa"]), "--source", str(plys / "000000.ply"),
                            "--no-realtime", "--lidar-tta", "rotations=2", "--intensity-max", "1", "-q",
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output


# ------------------------------------------------------------------------------------------- intensity
def test_intensity_statistics_scale_and_mismatch_message() -> None:
    scans = [sensor_scan(seed=s, intensity=255.0) for s in range(3)]
    stats = intensity_stats(scans, 255.0)
    assert stats is not None and stats.scans == 3 and 0.97 < stats.high <= 1.0 and stats.low < 0.02
    assert intensity_stats([np.zeros((10, 3), np.float32)]) is None  # no intensity column
    np.testing.assert_allclose(normalize_intensity(scans[0], 255.0)[:, 3], scans[0][:, 3] / 255.0, rtol=1e-6)
    assert normalize_intensity(scans[0], None) is scans[0]
    raw = sensor_scan(seed=9, intensity=235.0)  # a raw 8-bit Velodyne scan
    msg = intensity_mismatch(raw, STATS, source="raw.bin")
    assert msg is not None and msg.startswith("raw.bin: intensities reach 23") and "--intensity-max 255" in msg
    assert intensity_mismatch(normalize_intensity(raw, 255.0), STATS, scaled_by=255.0) is None
    dark = intensity_mismatch(sensor_scan(intensity=0.01), STATS)
    assert dark is not None and "reach only" in dark
    zero = sensor_scan()
    zero[:, 3] = 0
    assert "are all 0" in str(intensity_mismatch(zero, STATS))
    assert intensity_mismatch(sensor_scan(intensity=0.9), STATS) is None
    assert intensity_mismatch(raw, None) is None and intensity_mismatch(raw[:50], STATS) is None
    ref = IntensityStats.from_normalization(0.21, 0.16)  # SemanticKITTI range-image statistics
    assert ref is not None and ref.source == "normalization" and abs(ref.high - 0.69) < 1e-9
    assert IntensityStats.from_normalization(0.0, 1.0) is None
    with pytest.raises(ConfigError, match="intensity max must be a positive number"):
        IntensitySpec(0.0)
    assert IntensitySpec.from_meta(None, "x").identity  # older checkpoints
    assert IntensitySpec.from_meta(IntensitySpec(255.0, STATS).to_meta(), "x") == IntensitySpec(255.0, STATS)


def test_far_off_intensities_warn_once_and_intensity_max_fixes_them(models: dict[str, Path],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    pred = load_predictor(models["salsa"], device="cpu")
    raw = [sensor_scan(seed=s, intensity=235.0) for s in range(3)]
    with caplog.at_level(logging.WARNING, logger="terraseg"):
        for i, pts in enumerate(raw):
            pred.predict_scan(pts, source=f"scan{i}.bin")
    warnings = [r.getMessage() for r in caplog.records if "intensities" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("scan0.bin: intensities reach")
    assert pred.scan is not None and pred.scan.mismatches == 3
    caplog.clear()
    scaled = load_predictor(models["salsa"], device="cpu", intensity_max=255)
    with caplog.at_level(logging.WARNING, logger="terraseg"):
        got = scaled.predict_scan(raw[0])
    assert not [r for r in caplog.records if "intensities" in r.getMessage()]
    ref = pred.predict_scan(normalize_intensity(raw[0], 255.0))
    np.testing.assert_array_equal(got.labels, ref.labels)
    # the ONNX file carries the same statistics, so the runtime warns too
    onnx = load_predictor(models["onnx"])
    assert onnx.intensity == IntensitySpec(None, STATS)


def test_training_records_intensity_scale_and_statistics_for_the_predictor(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    from terraseg.io.scans import write_label
    from terraseg.models.surgery import read_checkpoint
    from terraseg.training import TrainConfig, train

    rng = np.random.default_rng(0)
    for seq in ("00", "08"):  # SemanticKITTI train / val sequences
        for i in range(2):
            pts = sensor_scan(1500, seed=10 * int(seq) + i, intensity=255.0)  # raw 8-bit intensities
            write_bin(tmp_path / "kitti" / "sequences" / seq / "velodyne" / f"{i:06d}.bin", pts)
            write_label(tmp_path / "kitti" / "sequences" / seq / "labels" / f"{i:06d}.label",
                        rng.integers(0, 20, len(pts)).astype(np.uint32))
    cfg = TrainConfig.from_dict({
        "task": "points", "name": "r", "output": str(tmp_path / "runs"),
        "data": {"root": str(tmp_path / "kitti"), "kind": "semantickitti", "options": {"ontology": "sim"},
                 "ontology": "sim", "projection": PROJ, "intensity_max": 255, "batch_size": 2},
        "model": {"arch": "salsanext", "preset": "tiny"}, "augment": {"enabled": False},
        "trainer": {"max_steps": 1, "val_every_steps": 1, "accelerator": "cpu"}})
    res = train(cfg, progress=False)
    assert res.best_checkpoint is not None
    meta = read_checkpoint(res.best_checkpoint).meta["preprocess"]["intensity"]
    assert meta["max"] == 255.0 and meta["stats"]["scans"] == 2  # the two training scans
    assert 0.95 < meta["stats"]["high"] <= 1.0 and meta["stats"]["source"] == "training"
    pred = load_predictor(res.best_checkpoint, device="cpu")
    assert pred.intensity is not None and pred.intensity.max == 255.0 and pred.projection == PROJ
    with caplog.at_level(logging.WARNING, logger="terraseg"):
        pred.predict_scan(sensor_scan(seed=5, intensity=255.0))  # raw scans, as trained: no warning
        assert not caplog.records
        pred.predict_scan(sensor_scan(seed=5, intensity=1.0), source="unit.bin")  # already 0-1: far too dark
    assert [r.getMessage()[:37] for r in caplog.records] == ["unit.bin: intensities reach only 0.00"]
    # terraseg eval loads the same way: LiDAR TTA applies (and garbage is refused)
    ev = tmp_path / "ev"
    r = runner.invoke(app, ["eval", str(res.best_checkpoint), "--split", "val", "--out", str(ev),
                            "--tta", "rotations=2 flip=y", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "tta angles=0,180 flip=y" in " ".join(r.output.split()) and (ev / "metrics.json").is_file()
    r = runner.invoke(app, ["eval", str(res.best_checkpoint), "--split", "val", "--out", str(ev), "--tta", "x=1"])
    assert r.exit_code == 1 and "LiDAR TTA spec 'x=1': unknown keys ['x']" in r.output
    with pytest.raises(ConfigError, match="data.intensity_max must be a positive number"):
        cfg.with_overrides(["data.intensity_max=-1"])
    with pytest.raises(ConfigError, match="data.intensity_max applies to the points task only"):
        TrainConfig.from_dict({"data": {"root": "x", "intensity_max": 255}})
