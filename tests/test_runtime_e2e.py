"""``terraseg run`` end to end on a small simulated bag with random-weight models: every frame
predicted or dropped, outputs readable (bag round trip, PNGs, .label files), statistics JSON,
frame dropping under an artificially slow model."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import terraseg.cli.run  # noqa: E402,F401  (registers the command before the CLI does)
from terraseg.cli.app import app  # noqa: E402
from terraseg.errors import ConfigError, DataError  # noqa: E402
from terraseg.inference.runtime import (  # noqa: E402
    Backend,
    BagSink,
    BagSource,
    ImageBackend,
    Prediction,
    SensorMessage,
    load_backend,
    model_kind,
    run_pipeline,
)
from terraseg.io.bags import decode_image, decode_pointcloud2, open_bag  # noqa: E402
from terraseg.io.labels import read_label_png  # noqa: E402
from terraseg.io.scans import read_label  # noqa: E402
from terraseg.ontology import get_ontology  # noqa: E402

runner = CliRunner()
FRAMES = 3
CAM, LIDAR = "/sim/camera/image", "/sim/lidar/points"


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny inputs; other test processes share the cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from terraseg.models.image import build_image_model
    from terraseg.models.points import build_point_model
    from terraseg.models.surgery import save_checkpoint
    from terraseg.sim.dataset import simulate_dataset

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rt")
    simulate_dataset(root / "sim", frames=FRAMES, seed=3, camera="tiny", lidar="small", bag=True, progress=False,
                     splits={"train": 1.0})
    torch.manual_seed(0)
    img = build_image_model("litefpn", "tu-mobilenetv3_small_100", ontology="sim", channels=16)
    save_checkpoint(root / "img.pth", img, meta={"preprocess": {"mean": [0.485, 0.456, 0.406],
                                                                "std": [0.229, 0.224, 0.225], "base_size": None}})
    salsa = build_point_model("salsanext", 20, preset="tiny")
    save_checkpoint(root / "salsa.pth", salsa, ontology="sim", meta={"preprocess": {"projection": "sim-small"}})
    return {"root": root, "bag": root / "sim" / "bags" / "train", "img": root / "img.pth", "salsa": root / "salsa.pth"}


def _messages(bag: Path, topic: str) -> list:
    with open_bag(bag) as b:
        return list(b.messages(topic))


def test_cli_run_bag_round_trip(data: dict[str, Path], tmp_path: Path) -> None:
    from terraseg.inference.image import ImagePredictor
    from terraseg.inference.models import load_model
    from terraseg.inference.scans import scan_predictor

    out_bag, files = tmp_path / "pred_bag", tmp_path / "files"
    r = runner.invoke(app, ["run", "--camera-model", str(data["img"]), "--lidar-model", str(data["salsa"]),
                            "--source", str(data["bag"]), "--no-realtime", "--out-bag", str(out_bag), "--bag-inputs",
                            "--out-dir", str(files), "--device", "cpu", "--threads", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert f"completed: {2 * FRAMES} message(s) in, {2 * FRAMES} predicted, 0 dropped" in r.output
    doc = json.loads((files / "runtime_stats.json").read_text())
    assert doc["status"] == "completed" and doc["settings"]["policy"] == "block"
    for topic in (CAM, LIDAR):
        s = doc["streams"][topic]
        assert s["frames_in"] == s["predicted"] == FRAMES and s["dropped"] == 0
        assert all(s["latency_ms"][k] > 0 for k in ("p50", "p95", "max"))
        assert {"read", "preprocess", "infer", "postprocess", "write", "total"} <= set(s["stages_ms"])
        assert s["throughput_fps"] > 0 and s["queue"]["high_water"] <= s["queue"]["capacity"] == 4

    sim = get_ontology("sim")
    with open_bag(out_bag) as b:
        assert {t: i.count for t, i in b.topics.items()} == {
            "/segmentation/ids/sim/camera/image": FRAMES, "/segmentation/rgb/sim/camera/image": FRAMES,
            "/segmentation/points/sim/lidar/points": FRAMES, CAM: FRAMES, LIDAR: FRAMES,
            "/sim/camera/camera_info": FRAMES}
    inputs = _messages(data["bag"], CAM)
    predictor = ImagePredictor.from_checkpoint(data["img"], device="cpu")
    for src, ids_msg, rgb_msg in zip(inputs, _messages(out_bag, "/segmentation/ids/sim/camera/image"),
                                     _messages(out_bag, "/segmentation/rgb/sim/camera/image")):
        assert ids_msg.stamp_ns == rgb_msg.stamp_ns == src.stamp_ns
        assert ids_msg.msg.encoding == "mono8" and ids_msg.msg.header.frame_id == "sim_camera"
        ids = decode_image(ids_msg.msg)
        np.testing.assert_array_equal(ids, predictor.predict(decode_image(src.msg)))
        np.testing.assert_array_equal(decode_image(rgb_msg.msg), sim.palette[ids])
        stem = f"{src.stamp_ns // 10**9:010d}_{src.stamp_ns % 10**9:09d}"
        np.testing.assert_array_equal(read_label_png(files / "sim_camera_image" / "ids" / f"{stem}.png"), ids)
        assert (files / "sim_camera_image" / "color" / f"{stem}.png").is_file()
    predict = scan_predictor(load_model(data["salsa"]), device="cpu")
    for src, out in zip(_messages(data["bag"], LIDAR), _messages(out_bag, "/segmentation/points/sim/lidar/points")):
        assert out.stamp_ns == src.stamp_ns and out.msg.header.frame_id == "sim_lidar"
        cloud, ref = decode_pointcloud2(out.msg), decode_pointcloud2(src.msg)
        assert cloud.names == ("x", "y", "z", "intensity", "label", "rgb")
        assert cloud.fields["label"].dtype == np.uint32
        np.testing.assert_array_equal(cloud.xyzi(), ref.xyzi())
        expected = predict(ref.xyzi()).labels
        np.testing.assert_array_equal(cloud.fields["label"], expected)
        rgb = cloud.fields["rgb"].view(np.uint32)
        np.testing.assert_array_equal(np.stack([rgb >> 16, (rgb >> 8) & 255, rgb & 255], 1), sim.palette[expected])
        stem = f"{src.stamp_ns // 10**9:010d}_{src.stamp_ns % 10**9:09d}"
        np.testing.assert_array_equal(read_label(files / "sim_lidar_points" / "labels" / f"{stem}.label")[0], expected)
    assert (files / "sim_lidar_points" / "ontology.yaml").is_file()


class SlowBackend(Backend):
    """A real backend made artificially slow."""

    def __init__(self, inner: Backend, delay_s: float) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.kind, self.name, self.ontology = inner.kind, "slow " + inner.name, inner.ontology

    def predict(self, message: SensorMessage) -> Prediction:
        time.sleep(self.delay_s)
        return self.inner.predict(message)


def test_slow_model_drops_frames_and_accounts_for_every_one(data: dict[str, Path], tmp_path: Path) -> None:
    backend = SlowBackend(load_backend(data["img"], "camera", device="cpu"), 0.15)
    src = BagSource(data["bag"], lidar=False, realtime=True, speed=20.0)  # a frame every 5 ms
    sink = BagSink(tmp_path / "out_bag")
    stats = run_pipeline(src, {"camera": backend}, [sink], stats_json=tmp_path / "stats.json")
    s = stats.streams[CAM]
    assert s.frames_in == FRAMES and s.predicted + s.dropped_total == FRAMES
    assert s.dropped_total >= 1 and set(s.dropped) == {"superseded"}
    assert s.queue_high_water <= s.queue_capacity == 1 and stats.in_flight_max <= 1 + 1 + 8 + 1
    with open_bag(tmp_path / "out_bag") as b:
        ids = list(b.messages("/segmentation/ids/sim/camera/image"))
    assert len(ids) == s.predicted and ids[-1].stamp_ns == _messages(data["bag"], CAM)[-1].stamp_ns  # newest kept
    doc = json.loads((tmp_path / "stats.json").read_text())
    assert doc["streams"][CAM]["dropped_by_reason"] == {"superseded": s.dropped_total}


def test_camera_backends_match_their_predictors(data: dict[str, Path]) -> None:
    from terraseg.inference.image import ImagePredictor

    with BagSource(data["bag"], lidar=False, semantic_topic="", max_frames=2) as src:
        msgs = list(src)
    torch_b = load_backend(data["img"], device="cpu", scores=True)
    assert isinstance(torch_b, ImageBackend) and torch_b.kind == "camera" and torch_b.name == "pytorch:cpu"
    tta_b = load_backend(data["img"], "camera", device="cpu", tta="flip", scores=True)
    ref = ImagePredictor.from_checkpoint(data["img"], device="cpu")
    tta_ref = ImagePredictor.from_checkpoint(data["img"], device="cpu", tta="flip")
    for m in msgs:
        p = torch_b.predict(m)
        assert p.labels.dtype == np.uint8 and p.ontology == "sim" and p.resolve_ontology().name == "sim"
        np.testing.assert_array_equal(p.labels, ref.predict(m.image))
        assert p.scores is not None and p.scores.shape == (120, 160) and 0 < p.scores.min() <= p.scores.max() <= 1
        assert set(p.timings_ms) == {"preprocess", "infer", "postprocess"} and min(p.timings_ms.values()) >= 0
        np.testing.assert_array_equal(tta_b.predict(m).labels, tta_ref.predict(m.image))
    lidar_msg = SensorMessage("lidar", LIDAR, 0, 0, "x", points=np.zeros((3, 4), np.float32))
    with pytest.raises(DataError, match="a lidar message for the camera model"):
        torch_b.predict(lidar_msg)


def test_load_backend_errors(data: dict[str, Path], tmp_path: Path) -> None:
    assert model_kind(data["salsa"]) == "lidar" and model_kind(data["img"]) == "camera"
    assert load_backend(data["salsa"], device="auto").kind == "lidar"
    with pytest.raises(ConfigError, match="a LiDAR model \\(salsanext\\) given as the camera model"):
        load_backend(data["salsa"], "camera")
    with pytest.raises(ConfigError, match="a camera model .* given as the LiDAR model"):
        load_backend(data["img"], "lidar")
    with pytest.raises(DataError, match="model file not found"):
        load_backend(tmp_path / "none.onnx", "camera")
    with pytest.raises(ConfigError, match="--amp applies to camera models"):
        load_backend(data["salsa"], "lidar", amp=True)
    with pytest.raises(ConfigError, match="projection applies to LiDAR"):
        load_backend(data["img"], "camera", projection="sim-small")


def test_cli_run_simulator_live_and_user_errors(data: dict[str, Path], tmp_path: Path) -> None:
    files = tmp_path / "files"
    r = runner.invoke(app, ["run", "--camera-model", str(data["img"]), "--source", "sim:frames=2,camera=tiny,seed=4",
                            "--no-realtime", "--out-dir", str(files), "--overlay", "--threads", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert "completed: 2 message(s) in, 2 predicted, 0 dropped" in r.output
    assert sorted(p.name for p in (files / "sim_camera_image" / "ids").iterdir()) == ["000000.png", "000001.png"]
    assert (files / "sim_camera_image" / "overlay" / "000001.jpg").is_file()
    assert json.loads((files / "runtime_stats.json").read_text())["settings"]["source"].startswith("sim:")

    def fails(*args: str) -> str:
        res = runner.invoke(app, ["run", *args])
        assert res.exit_code == 1, res.output
        return res.output

    assert "give --camera-model and/or --lidar-model" in fails("--source", str(data["bag"]))
    assert "--drop-policy must be one of latest, oldest, block" in fails(
        "--source", str(data["bag"]), "--camera-model", str(data["img"]), "--drop-policy", "newest")
    (tmp_path / "exists_bag").mkdir()
    assert "already exists" in fails("--source", str(data["bag"]), "--camera-model", str(data["img"]),
                                     "--out-bag", str(tmp_path / "exists_bag"))
    assert "topic '/nope' not found" in fails("--source", str(data["bag"]), "--camera-model", str(data["img"]),
                                              "--camera-topic", "/nope")


def test_cli_run_records_a_rerun_file(data: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("rerun")
    rrd = tmp_path / "run.rrd"
    r = runner.invoke(app, ["run", "--lidar-model", str(data["salsa"]), "--source", str(data["bag"]),
                            "--no-realtime", "--rerun-save", str(rrd), "--max-frames", "2", "-q"])
    assert r.exit_code == 0, r.output
    assert "completed: 2 message(s) in, 2 predicted" in r.output
    assert rrd.is_file() and rrd.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == ["run.rrd"]
