"""Rerun live view sink: .rrd contents read back with the rerun library, atomic output, serving."""

from __future__ import annotations

import os
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("RERUN_ANALYTICS", "0")
os.environ.setdefault("CI", "1")

rr = pytest.importorskip("rerun", reason="rerun-sdk (terraseg[live], Python >= 3.11) is not installed")
pa = pytest.importorskip("pyarrow")
from rerun.chunk import RrdReader  # noqa: E402

from terraseg.errors import ConfigError, DataError  # noqa: E402
from terraseg.inference.runtime.rerun_view import RerunSink, build_blueprint, entity_part  # noqa: E402
from terraseg.inference.runtime.types import Prediction, SensorMessage  # noqa: E402
from terraseg.ontology import get_ontology  # noqa: E402

T0 = 1_700_000_000_000_000_000  # 2023-11-14, a Unix-time stamp in ns
H, W, N = 24, 32, 200


def _pose(x: float, yaw: float = 0.0) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = [x, 0.5 * x, 0.1]
    return T


def _frames(n: int = 3, gt_every: int = 1) -> list[Prediction]:
    """n camera + n LiDAR predictions (rellis3d ids 0..4), GT on messages i % gt_every == 0."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        stamp = T0 + i * 100_000_000
        img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        cam = SensorMessage("camera", "/cam/image", i, stamp, f"{i:06d}", image=img, pose=_pose(float(i)),
                            gt=rng.integers(0, 5, (H, W)).astype(np.uint8) if i % gt_every == 0 else None,
                            ontology="rellis3d")
        out.append(Prediction(cam, rng.integers(0, 5, (H, W)).astype(np.uint8), "rellis3d",
                              {"preprocess": 1.0 + i, "infer": 10.0 + i, "total": 20.0 + i}))
        pts = rng.normal(0, 5, (N, 4)).astype(np.float32)
        lid = SensorMessage("lidar", "/os1/points", i, stamp + 5_000_000, f"{i:06d}", points=pts,
                            gt=rng.integers(0, 5, N).astype(np.int64) if i % gt_every == 0 else None,
                            ontology="rellis3d", pose=_pose(float(i), 0.1 * i))
        out.append(Prediction(lid, rng.integers(0, 5, N).astype(np.int64), "rellis3d", {"infer": 5.0 + i}))
    return out


def _read(path: Path) -> dict[tuple[str, bool], dict[str, list[Any]]]:
    """(entity path, static) -> column -> values, rows of all chunks in ``seq`` order."""
    rows: dict[tuple[str, bool], list[dict[str, Any]]] = defaultdict(list)
    for chunk in RrdReader(path).stream().to_chunks():
        rb = chunk.to_record_batch()
        cols = {}
        for name in rb.schema.names:
            col = rb.column(name)
            if pa.types.is_timestamp(col.type) or pa.types.is_duration(col.type):
                col = col.cast(pa.int64())
            cols[name] = col.to_pylist()
        for i in range(rb.num_rows):
            rows[(chunk.entity_path, chunk.is_static)].append({k: v[i] for k, v in cols.items()})
    out: dict[tuple[str, bool], dict[str, list[Any]]] = {}
    for key, rs in rows.items():
        rs.sort(key=lambda r: (r.get("seq", 0), r.get("log_time", 0)))
        names = dict.fromkeys(name for r in rs for name in r)
        out[key] = {name: [r.get(name) for r in rs] for name in names}
    return out


def test_rrd_has_every_entity_with_the_logged_values(tmp_path: Path) -> None:
    preds = _frames(3)
    path = tmp_path / "live" / "run.rrd"
    with RerunSink(save=path, ontology="rellis3d") as sink:
        for p in preds:
            sink.write(p)
        sink.on_drop(preds[0].message, "queue full")
        assert not path.exists()  # recorded under a temporary name until close
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["run.rrd"]  # no temporary left
    assert sink.frames_written == 6 and sink.messages_dropped == 1

    reader = RrdReader(path)
    assert [r.application_id for r in reader.recordings()] == ["terraseg"]
    assert reader.blueprints(), "the default blueprint is stored in the file"
    data = _read(path)

    cams = [p for p in preds if p.message.stream == "camera"]
    lids = [p for p in preds if p.message.stream == "lidar"]
    rgb = data[("/camera/cam_image/rgb", False)]
    assert len(rgb["Image:buffer"]) == 3
    assert np.array_equal(np.asarray(rgb["Image:buffer"][1], np.uint8).reshape(H, W, 3), cams[1].message.image)
    pred = data[("/camera/cam_image/pred", False)]
    gt = data[("/camera/cam_image/gt", False)]
    for i in range(3):
        assert np.array_equal(np.asarray(pred["SegmentationImage:buffer"][i], np.uint8).reshape(H, W), cams[i].labels)
        assert np.array_equal(np.asarray(gt["SegmentationImage:buffer"][i], np.uint8).reshape(H, W), cams[i].message.gt)
    assert pred["SegmentationImage:opacity"][0] == [0.5]

    lp = data[("/world/lidar/os1_points/pred", False)]
    lg = data[("/world/lidar/os1_points/gt", False)]
    assert len(lp["Points3D:class_ids"]) == len(lg["Points3D:class_ids"]) == 3
    for i in range(3):
        assert lp["Points3D:class_ids"][i] == lids[i].labels.tolist()
        assert lg["Points3D:class_ids"][i] == lids[i].message.gt.tolist()
        np.testing.assert_allclose(np.asarray(lp["Points3D:positions"][i]), lids[i].message.points[:, :3], rtol=1e-6)
    # each scan is placed in the world by its pose (LiDAR -> world transform)
    tf = data[("/world/lidar/os1_points", False)]
    for i in range(3):
        T = lids[i].message.pose
        np.testing.assert_allclose(tf["Transform3D:translation"][i][0], T[:3, 3], atol=1e-6)
        np.testing.assert_allclose(np.asarray(tf["Transform3D:mat3x3"][i][0]).reshape(3, 3).T, T[:3, :3], atol=1e-6)

    # vehicle follows the LiDAR poses once they arrive, the trajectory grows with it
    veh = data[("/world/vehicle", False)]
    np.testing.assert_allclose(veh["Transform3D:translation"][-1][0], lids[-1].message.pose[:3, 3], atol=1e-6)
    assert ("/world/vehicle", True) in data  # box and axes
    traj = data[("/world/trajectory", False)]["LineStrips3D:strips"]
    np.testing.assert_allclose(np.asarray(traj[-1][0]), [p.message.pose[:3, 3] for p in lids], atol=1e-6)

    # class names and colours from the ontology, once at the root
    ctx = data[("/", True)]["AnnotationContext:context"][0][0]
    onto = get_ontology("rellis3d")
    assert [c["class_description"]["info"]["label"] for c in ctx] == onto.names
    assert [c["class_id"] for c in ctx] == [c.id for c in onto.classes]

    # latency per stream and stage, in ms, on both timelines
    lat = data[("/latency/cam_image/infer", False)]
    assert lat["Scalars:scalars"] == [[10.0], [11.0], [12.0]]
    assert lat["seq"] == [0, 1, 2]
    assert lat["sensor_time"] == [T0, T0 + 100_000_000, T0 + 200_000_000]
    assert data[("/latency/os1_points/infer", False)]["Scalars:scalars"] == [[5.0], [6.0], [7.0]]
    assert data[("/latency/cam_image/total", True)]["SeriesLines:names"] == [["/cam/image total (ms)"]]

    log = data[("/log", False)]
    assert log["TextLog:text"] == [["dropped /cam/image message 0 (frame 000000): queue full"]]
    assert log["TextLog:level"] == [["WARN"]]
    assert data[("/stats/dropped/cam_image", False)]["Scalars:scalars"] == [[1.0]]


def test_stale_ground_truth_is_cleared_and_other_ontologies_get_their_context(tmp_path: Path) -> None:
    preds = _frames(2, gt_every=2)  # GT only on message 0
    preds[0].message.ontology = "rellis3d-raw"
    path = tmp_path / "run.rrd"
    with RerunSink(save=path) as sink:  # root context: the first prediction's ontology
        for p in preds:
            sink.write(p)
    data = _read(path)
    gt = data[("/camera/cam_image/gt", False)]
    assert gt["SegmentationImage:buffer"][0] is not None and gt["SegmentationImage:buffer"][1] is None
    assert gt["Clear:is_recursive"][1] == [False]
    ctx = data[("/camera/cam_image/gt", True)]["AnnotationContext:context"][0][0]
    assert [c["class_description"]["info"]["label"] for c in ctx] == get_ontology("rellis3d-raw").names
    root = data[("/", True)]["AnnotationContext:context"][0][0]
    assert len(root) == len(get_ontology("rellis3d").classes)


def test_masks_follow_the_image_size_points_are_decimated_and_time_can_be_relative(tmp_path: Path) -> None:
    img = np.zeros((8, 12, 3), np.uint8)
    small = np.arange(4 * 6, dtype=np.uint16).reshape(4, 6) % 5  # half resolution
    cam = SensorMessage("camera", "cam", 0, 5_000_000, "a", image=img)
    pts = np.zeros((10, 3), np.float32)
    lid = SensorMessage("lidar", "lidar", 1, 7_000_000, "b", points=pts, point_fields=("x", "y", "z"))
    path = tmp_path / "r.rrd"
    with RerunSink(save=path, max_points=4) as sink:
        sink.write(Prediction(cam, small, "rellis3d"))
        sink.write(Prediction(lid, np.array([-1, 1, 2, 3, 4, 0, 1, 2, 3, 4]), "rellis3d"))
    data = _read(path)
    mask = np.asarray(data[("/camera/cam/pred", False)]["SegmentationImage:buffer"][0], np.uint8).reshape(8, 12)
    assert np.array_equal(mask, np.repeat(np.repeat(small, 2, axis=0), 2, axis=1))
    ids = data[("/world/lidar/lidar/pred", False)]["Points3D:class_ids"][0]
    assert ids == [65535, 3, 1, 4]  # stride 3: points 0, 3, 6, 9; a negative id becomes "no class"
    assert data[("/camera/cam/pred", False)]["sensor_time"] == [5_000_000]  # a duration: stamps before 2000


def test_abort_and_errors_leave_no_file(tmp_path: Path) -> None:
    path = tmp_path / "run.rrd"
    preds = _frames(1)
    with pytest.raises(RuntimeError, match="boom"), RerunSink(save=path) as sink:
        sink.write(preds[0])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []

    bad = Prediction(preds[1].message, np.zeros(N - 1, np.int64), "rellis3d")
    with pytest.raises(DataError, match=r"/os1/points message 0 \(frame 000000\): \(199,\) predicted labels for 200"):
        with RerunSink(save=path) as sink:
            sink.write(bad)
    assert list(tmp_path.iterdir()) == []

    sink = RerunSink(save=path)
    sink.write(preds[0])
    sink.abort()
    sink.close()  # no-op after abort
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="after close"):
        sink.write(preds[0])


def test_bad_options_and_inputs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs an output"):
        RerunSink()
    with pytest.raises(ConfigError, match=r"\.rrd suffix"):
        RerunSink(save=tmp_path / "run.txt")
    with pytest.raises(ConfigError, match="jpeg_quality"):
        RerunSink(save=tmp_path / "a.rrd", jpeg_quality=0)
    msg = SensorMessage("camera", "/c", 3, T0, "x", image=np.zeros((4, 4), np.uint8))
    with RerunSink(save=tmp_path / "a.rrd") as sink:
        with pytest.raises(DataError, match=r"/c message 3 \(frame x\): image must be \(H, W, 3\) uint8"):
            sink.write(Prediction(msg, np.zeros((4, 4), np.uint8), "rellis3d"))
        msg.image = np.zeros((4, 4, 3), np.uint8)
        with pytest.raises(DataError, match="predicted labels must be integer class ids"):
            sink.write(Prediction(msg, np.zeros((4, 4), np.float32), "rellis3d"))
        sink.write(Prediction(msg, np.zeros((4, 4), np.uint8), "no-such-ontology"))  # logged, with a warning
    data = _read(tmp_path / "a.rrd")
    assert "unknown ontology 'no-such-ontology'" in data[("/log", False)]["TextLog:text"][0][0]


def test_entity_names_and_blueprint() -> None:
    assert entity_part("/os1/points") == "os1_points"
    assert entity_part("///") == "default"
    assert entity_part("/a b/c.d") == "a_b_c_d"
    bp = build_blueprint(["/cam/front", "/cam/rear"])
    assert isinstance(bp, rr.blueprint.Blueprint)


def _listening_ips(pid: int) -> set[str]:
    psutil = pytest.importorskip("psutil")
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def test_serve_web_viewer_on_localhost_and_shut_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "served.rrd"
    try:
        sink = RerunSink(save=path, serve=True, web_port=0, grpc_port=0)
    except ConfigError as exc:
        if "web viewer" in str(exc):
            pytest.skip(f"the Rerun web viewer cannot be served by this installation: {exc}")
        raise
    try:
        assert sink.url is not None and sink.url.startswith("http://127.0.0.1:")
        assert sink.url in capsys.readouterr().err
        assert sink.grpc_url is not None and sink.grpc_url.startswith("rerun+http://127.0.0.1:")
        with urllib.request.urlopen(sink.url.split("?")[0], timeout=10) as resp:
            assert resp.status == 200 and b"<html" in resp.read(4096).lower()
        server = sink._procs[0]
        assert _listening_ips(server.pid) == {"127.0.0.1"}

        # a second sink with spawn=True reuses the viewer server already listening on that port
        grpc_port = int(sink.grpc_url.rsplit(":", 1)[1].split("/")[0])
        with RerunSink(spawn=True, grpc_port=grpc_port) as viewer_sink:
            assert viewer_sink.grpc_url == sink.grpc_url and viewer_sink._procs == []
            viewer_sink.write(_frames(1)[0])
        for p in _frames(1):
            sink.write(p)
    finally:
        sink.close()
    assert server.poll() is not None, "the web viewer server stops on close"
    assert path.is_file() and ("/camera/cam_image/pred", False) in _read(path)


def test_camera_frustum_vehicle_pose_from_camera_or_meta_and_custom_ontology(tmp_path: Path) -> None:
    from terraseg.frame import Calibration
    from terraseg.ontology import Ontology

    K = np.array([[20.0, 0, 16], [0, 20, 12], [0, 0, 1]])
    cam_pose = np.eye(4)
    cam_pose[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]  # camera looking along +x of the world
    cam_pose[:3, 3] = [5, 1, 2]
    custom = Ontology.from_dict({"name": "mine", "classes": [{"id": 0, "name": "road", "color": "#ff0000"},
                                                             {"id": 7, "name": "tree", "color": "#00ff00"}]})
    msg = SensorMessage("camera", "/cam", 0, T0, "a", image=np.zeros((H, W, 3), np.uint8), pose=cam_pose,
                        calib=Calibration(K=K))
    path = tmp_path / "r.rrd"
    with RerunSink(save=path, jpeg_quality=80) as sink:
        sink.write(Prediction(msg, np.full((H, W), 7, np.uint8), "mine", ontology_def=custom))
        veh = SensorMessage("camera", "/cam", 1, T0 + 1, "b", image=np.zeros((H, W, 3), np.uint8),
                            meta={"vehicle_pose": _pose(3.0)})
        sink.write(Prediction(veh, np.zeros((H, W), np.uint8), "mine", ontology_def=custom))
    data = _read(path)
    assert data[("/camera/cam/rgb", False)]["EncodedImage:media_type"][0] == ["image/jpeg"]
    pin = data[("/world/camera/cam", False)]
    assert np.allclose(np.asarray(pin["Pinhole:image_from_camera"][0][0]).reshape(3, 3).T, K)
    assert pin["Pinhole:resolution"][0] == [[W, H]]
    np.testing.assert_allclose(pin["Transform3D:translation"][0][0], [5, 1, 2])
    # the camera pose without extrinsics is turned into a body frame: x forward, z up
    v = data[("/world/vehicle", False)]
    np.testing.assert_allclose(np.asarray(v["Transform3D:mat3x3"][0][0]).reshape(3, 3).T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(v["Transform3D:translation"][1][0], _pose(3.0)[:3, 3])  # meta vehicle pose
    body = data[("/world/vehicle/body", True)]
    offsets = [t[0] for t in body["Transform3D:translation"] if t is not None]
    np.testing.assert_allclose(offsets, [[-0.5, 0.0, -1.0], [1.0, 0.0, 0.75]])  # below the sensor, then on the ground
    ctx = data[("/", True)]["AnnotationContext:context"][0][0]
    assert [(c["class_id"], c["class_description"]["info"]["label"]) for c in ctx] == [(0, "road"), (7, "tree")]


@pytest.mark.skipif(bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")),
                    reason="a display is available: spawn would open a real viewer window")
def test_spawn_without_display_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot start the Rerun viewer \(exited with code \d+\)"):
        RerunSink(save=tmp_path / "run.rrd", spawn=True, grpc_port=0)
    assert list(tmp_path.iterdir()) == []
