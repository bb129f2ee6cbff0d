"""``terraseg run`` on bad data and at start-up: ``--skip-errors`` skips what cannot be read (bag
messages, scan / image files, dataset frames) or what the model rejects with one warning line
each and counts it per stream; the backends are warmed up before a real-time clock starts."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import terraseg.cli.run  # noqa: F401  (registers the command)
from terraseg.cli.app import app
from terraseg.errors import DataError
from terraseg.inference.runtime import (
    BagSource,
    DatasetSource,
    ImageSequenceSource,
    ScanBackend,
    ScanFolderSource,
    SensorMessage,
    Source,
    run_pipeline,
)
from terraseg.io.bags import BagWriter
from terraseg.models.points.predict import ScanPrediction
from terraseg.ontology import get_ontology

runner = CliRunner()
SIM = get_ontology("sim")
S = 1_000_000_000  # first stamp, ns


@pytest.fixture(scope="module")
def salsa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from terraseg.models.points import build_point_model
    from terraseg.models.surgery import save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "salsa.pth"
    save_checkpoint(path, build_point_model("salsanext", 20, preset="tiny"), ontology="sim",
                    meta={"preprocess": {"projection": "sim-small"}})
    return path


def _points(n: int = 300, seed: int = 0) -> np.ndarray:
    pts = np.random.default_rng(seed).normal(size=(n, 4)) * 5
    pts[:, 3] = np.abs(pts[:, 3]) % 0.5  # intensities the models were normalised for: no intensity warning
    return pts.astype(np.float32)


def _scan_bag(path: Path, n: int = 5, bad: int | None = None) -> Path:
    """A ROS 1 bag with ``n`` PointCloud2 scans at 10 Hz; message ``bad`` holds too few bytes."""
    with BagWriter(path) as w:
        for i in range(n):
            stamp = S + i * 100_000_000
            if i == bad:
                pf = [w.make("sensor_msgs/msg/PointField", name=c, offset=4 * k, datatype=7, count=1)
                      for k, c in enumerate("xyz")]
                msg = w.make("sensor_msgs/msg/PointCloud2", header=w.header("/velodyne_points", stamp, "velodyne"),
                             height=1, width=100, fields=pf, is_bigendian=False, point_step=12, row_step=1200,
                             data=np.zeros(30, np.uint8), is_dense=True)
                w.write("/velodyne_points", "sensor_msgs/msg/PointCloud2", msg, stamp)
            else:
                w.write_pointcloud("/velodyne_points", _points(seed=i), stamp_ns=stamp, frame_id="velodyne")
    return path


def _lines(output: str, prefix: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(prefix)]


def _flat(output: str) -> str:
    return " ".join(output.split())  # the summary line wraps at the console width


# ---------------------------------------------------------------------------------------------- --skip-errors
def test_skip_errors_in_a_bag_gives_one_warning_line_and_counts_the_message(salsa: Path, tmp_path: Path) -> None:
    bag = _scan_bag(tmp_path / "scans.bag", n=4, bad=2)
    out = tmp_path / "preds"
    r = runner.invoke(app, ["run", "--lidar-model", str(salsa), "--source", str(bag), "--no-realtime",
                            "--skip-errors", "--out-dir", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    warnings = _lines(r.output, "warning:")
    assert len(warnings) == 1, r.output
    assert f"skipped {bag}: /velodyne_points message 2: " in warnings[0] and "30 bytes" in warnings[0]
    assert "completed: 3 message(s) in, 3 predicted, 0 dropped, 1 skipped (bad data)" in _flat(r.output)
    doc = json.loads((out / "runtime_stats.json").read_text())
    s = doc["streams"]["/velodyne_points"]
    assert s["skipped"] == 1 and s["skipped_by_stage"] == {"read": 1}
    assert s["frames_in"] == s["predicted"] == 3 and doc["totals"]["skipped"] == 1
    assert len(list((out / "velodyne_points" / "labels").iterdir())) == 3
    # without --skip-errors the same bag is one error line naming the message
    r = runner.invoke(app, ["run", "--lidar-model", str(salsa), "--source", str(bag), "--no-realtime", "-q"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    (err,) = _lines(r.output, "error:")
    assert f"{bag}: /velodyne_points message 2" in err


def test_skip_errors_skips_a_bad_scan_in_a_folder(salsa: Path, tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(3):
        _points(seed=i).tofile(scans / f"{i:06d}.bin")
    bad = scans / "000001.bin"
    bad.write_bytes(bad.read_bytes()[:1000])  # cut in the middle of a point
    out = tmp_path / "preds"
    r = runner.invoke(app, ["run", "--lidar-model", str(salsa), "--source", str(scans), "--no-realtime",
                            "--skip-errors", "--out-dir", str(out), "-q"])
    assert r.exit_code == 0, r.output
    (warning,) = _lines(r.output, "warning:")
    assert warning == (f"warning: skipped {bad}: size 1000 bytes is not a multiple of the point size (16 bytes = "
                       "4 float32 fields): the file is truncated or not a scan")
    flat = _flat(r.output)
    assert "completed: 2 message(s) in, 2 predicted, 0 dropped, 1 skipped (bad data)" in flat
    assert "skip" in r.output.split("terraseg run: completed")[1].splitlines()[1]  # the table's skip column
    doc = json.loads((out / "runtime_stats.json").read_text())
    assert doc["streams"]["scans"]["skipped_by_stage"] == {"read": 1}
    assert sorted(p.name for p in (out / "scans" / "labels").iterdir()) == ["000000.label", "000002.label"]
    r = runner.invoke(app, ["run", "--lidar-model", str(salsa), "--source", str(scans), "--no-realtime", "-q"])
    assert r.exit_code == 1 and _lines(r.output, "error:") == [
        f"error: {bad}: size 1000 bytes is not a multiple of the point size (16 bytes = 4 float32 fields): the file "
        "is truncated or not a scan"]


def test_folder_sources_skip_unreadable_files_and_frames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 10, 3), i, np.uint8)).save(imgs / f"{i:06d}.png")
    (imgs / "000001.png").write_bytes(b"not a png")
    counted: list[tuple[str, int]] = []
    with ImageSequenceSource(imgs, skip_bad=True) as src, caplog.at_level(logging.WARNING):
        src.on_skip = lambda topic, n: counted.append((topic, n))
        assert [m.frame_id for m in src] == ["000000", "000002"]
    assert counted == [("imgs", 1)] and src.skipped_by_topic == {"imgs": 1}
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
        f"skipped {imgs / '000001.png'}: unreadable or truncated image (cannot identify image file "
        f"'{imgs / '000001.png'}')"]
    with pytest.raises(DataError, match="000001.png: unreadable"):
        list(ImageSequenceSource(imgs))

    # a dataset frame that cannot be read is skipped on every stream it would have fed
    seq = tmp_path / "kitti" / "sequences" / "00"
    for sub in ("velodyne", "labels"):
        (seq / sub).mkdir(parents=True)
    for i in range(3):
        _points(50, i).tofile(seq / "velodyne" / f"{i:06d}.bin")
        np.ones(50 if i != 1 else 40, np.uint32).tofile(seq / "labels" / f"{i:06d}.label")
    with DatasetSource(tmp_path / "kitti", kind="semantickitti", camera=False, skip_bad=True) as src:
        assert [m.frame_id for m in src] == ["00/000000", "00/000002"]
    assert src.skipped_by_topic == {"points": 1}
    with ScanFolderSource(seq / "velodyne", skip_bad=True) as scans:
        assert len(list(scans)) == 3 and scans.skipped == 0  # the scans themselves are fine


def test_model_rejections_are_skipped_with_one_line_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    def predict(points: np.ndarray) -> ScanPrediction:
        if len(points) == 7:
            raise DataError("the scan has 7 points; this model needs at least 8")
        return ScanPrediction(np.zeros(len(points), np.uint8), None, np.zeros(len(points), np.uint8))

    class Scans(Source):
        def __init__(self) -> None:
            super().__init__()
            self.description, self.topics = "scans", {"/lidar": "lidar"}

        def _generate(self):  # type: ignore[no-untyped-def]
            for i, n in enumerate((9, 7, 9)):
                yield SensorMessage("lidar", "/lidar", 0, i, f"{i:06d}", points=np.ones((n, 4), np.float32))

    with caplog.at_level(logging.WARNING):
        stats = run_pipeline(Scans(), {"lidar": ScanBackend(predict, SIM, name="fake")}, [], policy="block",
                             errors="skip")
    s = stats.streams["/lidar"]
    assert s.predicted == 2 and s.dropped == {"error": 1} and s.skipped == {"inference": 1} and stats.skipped == 1
    assert [r.getMessage() for r in caplog.records] == [
        "skipped /lidar message 1 (frame 000001): the scan has 7 points; this model needs at least 8"]
    assert all(r.exc_info is None for r in caplog.records)  # no traceback
    assert stats.to_dict()["streams"]["/lidar"]["skipped_by_stage"] == {"inference": 1}


# ---------------------------------------------------------------------------------------------- warm-up
class _SlowStart:
    """A LiDAR model whose first call takes 0.6 s (model set-up), later calls 1 ms."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, points: np.ndarray) -> ScanPrediction:
        self.calls += 1
        time.sleep(0.6 if self.calls == 1 else 0.001)
        return ScanPrediction(np.zeros(len(points), np.uint8), None, np.zeros(len(points), np.uint8))


def test_real_time_run_warms_the_backend_before_the_clock_starts(tmp_path: Path) -> None:
    """Five scans at 10 Hz: a 0.6 s start-up inside the clock superseded three of them."""
    bag = _scan_bag(tmp_path / "five.bag", n=5)
    model = _SlowStart()
    stats = run_pipeline(BagSource(bag, camera=False, realtime=True), {"lidar": ScanBackend(model, SIM, name="slow")},
                         [], policy="latest")
    s = stats.streams["/velodyne_points"]
    assert (s.frames_in, s.predicted, s.dropped_total) == (5, 5, 0)
    assert model.calls == 6  # one warm-up call on the first scan, then every scan once
    assert stats.settings["warmup_ms"]["/velodyne_points"] >= 600
    assert s.stages["total"].max < 600  # the first scan's latency does not include the start-up


def test_warm_up_falls_back_to_the_worker_when_the_first_message_is_bad(tmp_path: Path) -> None:
    bag = _scan_bag(tmp_path / "bad_first.bag", n=3, bad=0)
    model = _SlowStart()
    with pytest.raises(DataError, match="message 0"):
        run_pipeline(BagSource(bag, camera=False), {"lidar": ScanBackend(model, SIM, name="m")}, [], policy="block")
    src = BagSource(bag, camera=False, skip_bad=True)
    stats = run_pipeline(src, {"lidar": ScanBackend(model, SIM, name="m")}, [], policy="block", errors="skip")
    assert stats.streams["/velodyne_points"].predicted == 2 and stats.skipped == 1
    assert stats.settings["warmup_ms"] and src.skipped_by_topic == {"/velodyne_points": 1}
