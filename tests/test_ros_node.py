"""ROS 2 node: pure conversions (numpy <-> sensor_msgs fields) without rclpy, and the missing-rclpy error."""

from __future__ import annotations

import array
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from terraseg.errors import ConfigError, DataError, TerrasegError
from terraseg.inference.runtime import ros_node
from terraseg.inference.runtime.ros_node import (
    RCLPY_MISSING,
    RclpyNotFoundError,
    SegmentationRelay,
    colour_image_fields,
    ids_image_fields,
    image_from_msg,
    labelled_cloud_fields,
    load_predictor,
    output_topic,
    points_from_msg,
    require_rclpy,
    sensor_message_from_image,
    sensor_message_from_pointcloud2,
    stamp_fields,
    to_ros_bytes,
)
from terraseg.inference.runtime.sinks import pack_rgb, unpack_rgb
from terraseg.inference.runtime.types import Prediction, SensorMessage
from terraseg.io.bags.decode import decode_image, decode_pointcloud2
from terraseg.io.bags.writer import image_payload, pointcloud_payload
from terraseg.ontology import get_ontology

STAMP = 1_700_000_000_123_456_789


def _header(stamp_ns: int = STAMP, frame_id: str = "cam") -> SimpleNamespace:
    return SimpleNamespace(stamp=SimpleNamespace(**stamp_fields(stamp_ns)), frame_id=frame_id)


def _image_msg(fields: dict[str, Any], data_as: str = "array") -> SimpleNamespace:
    """A fake sensor_msgs/Image; ``data`` as rclpy's array('B'), bytes, a list or numpy."""
    data = fields["data"]
    conv = {"array": to_ros_bytes, "bytes": lambda d: d.tobytes(), "list": lambda d: d.tolist(), "numpy": lambda d: d}
    return SimpleNamespace(header=_header(), **{**fields, "data": conv[data_as](data)})


def _cloud_msg(fields: dict[str, Any], frame_id: str = "os1") -> SimpleNamespace:
    """A fake sensor_msgs/PointCloud2 (PointField objects as namespaces, data as array('B'))."""
    pf = [SimpleNamespace(**f) for f in fields["fields"]]
    other = {k: v for k, v in fields.items() if k not in ("fields", "data")}
    return SimpleNamespace(header=_header(frame_id=frame_id), fields=pf, data=to_ros_bytes(fields["data"]), **other)


def test_missing_rclpy_gives_one_clear_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "rclpy", None)  # import rclpy -> ImportError, installed or not
    with pytest.raises(RclpyNotFoundError) as exc:
        require_rclpy()
    assert str(exc.value) == RCLPY_MISSING
    assert isinstance(exc.value, ImportError) and isinstance(exc.value, TerrasegError)
    assert RCLPY_MISSING == ("rclpy not found: source your ROS 2 installation "
                             "(the bag and folder paths of `terraseg run` do not need it)")
    assert ros_node.main(["--image-topic", "/cam/image"]) == 1
    assert capsys.readouterr().err.strip() == f"error: {RCLPY_MISSING}"


def test_module_imports_without_ros(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("rclpy", "sensor_msgs", "sensor_msgs.msg", "std_msgs"):
        monkeypatch.setitem(sys.modules, name, None)
    spec = importlib.util.spec_from_file_location("_ros_node_copy", Path(ros_node.__file__))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "_ros_node_copy", mod)
    spec.loader.exec_module(mod)  # would raise ImportError on a top-level ROS import
    assert mod.output_topic("ids", "/a/b") == "/segmentation/ids/a/b"


def test_output_topics_and_stamps() -> None:
    assert output_topic("ids", "/cam/image") == "/segmentation/ids/cam/image"
    assert output_topic("rgb", "cam/image", "/robot/seg/") == "/robot/seg/rgb/cam/image"
    assert output_topic("points", "/os1/points") == "/segmentation/points/os1/points"
    from terraseg.inference.runtime import sinks

    for topic in ("/cam/image", "00/velodyne", "drive 1.mp4"):  # the same names as the runtime's bag sink
        assert output_topic("ids", topic) == sinks.output_topic("ids", topic)
    assert stamp_fields(STAMP) == {"sec": 1_700_000_000, "nanosec": 123_456_789}


@pytest.mark.parametrize("data_as", ["array", "bytes", "list", "numpy"])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "mono8"])
def test_image_messages_decode_to_numpy(encoding: str, data_as: str) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    src = rgb[..., 0].copy() if encoding == "mono8" else rgb
    msg = _image_msg(image_payload(src, encoding, row_padding=3), data_as)
    out = image_from_msg(msg, "cam")
    assert out.dtype == np.uint8 and np.array_equal(out, src)
    sm = sensor_message_from_image(msg, "/cam/image", 4, received_ns=11)
    assert (sm.stream, sm.topic, sm.seq, sm.stamp_ns, sm.frame_id, sm.received_ns) == (
        "camera", "/cam/image", 4, STAMP, "000004", 11)
    assert sm.meta == {"header_frame_id": "cam"}
    expected = np.repeat(src[..., None], 3, axis=2) if encoding == "mono8" else src
    assert sm.image is not None and sm.image.shape == (5, 7, 3) and np.array_equal(sm.image, expected)


def test_compressed_image_and_bad_image() -> None:
    import io

    from PIL import Image as PILImage

    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[:, 4:] = (10, 200, 30)
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG")
    msg = SimpleNamespace(header=_header(), format="png", data=array.array("B", buf.getvalue()))
    assert np.array_equal(image_from_msg(msg), rgb)
    bad = _image_msg({**image_payload(np.zeros((4, 4), np.float32), "32FC1")})
    with pytest.raises(DataError, match=r"/cam message 2: cannot segment an image of shape \(4, 4\) and dtype float32"):
        sensor_message_from_image(bad, "/cam", 2)


def test_id_and_colour_images_round_trip() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 20, (6, 9)).astype(np.int64)
    fields = ids_image_fields(labels)
    assert fields["encoding"] == "mono8" and fields["step"] == 9
    assert ids_image_fields(labels, "rellis3d")["encoding"] == "mono8"  # fixed by the ontology's ids
    with pytest.raises(DataError, match="id 300 is not a class of the ontology"):
        ids_image_fields(np.full((2, 2), 300), "rellis3d")
    assert np.array_equal(decode_image(_image_msg(fields)), labels)
    big = labels.astype(np.uint16) * 1000
    fields16 = ids_image_fields(big)
    assert fields16["encoding"] == "mono16"
    assert np.array_equal(decode_image(_image_msg(fields16)), big)
    onto = get_ontology("rellis3d")
    col = colour_image_fields(labels, "rellis3d")
    assert col["encoding"] == "rgb8"
    assert np.array_equal(decode_image(_image_msg(col)), onto.palette[labels])
    with pytest.raises(DataError, match=r"ids outside 0\.\.65535 \(-1\.\.19\)"):
        ids_image_fields(np.where(labels == 0, -1, labels))
    with pytest.raises(DataError, match=r"must be \(H, W\) integer class ids"):
        ids_image_fields(labels.astype(np.float32))


def test_labelled_cloud_round_trip() -> None:
    rng = np.random.default_rng(3)
    n = 50
    pts = rng.normal(size=(n, 5)).astype(np.float32)
    names = ("x", "y", "z", "intensity", "ring")
    labels = rng.integers(0, 20, n)
    fields = labelled_cloud_fields(pts, names, labels, "rellis3d")
    assert [f["name"] for f in fields["fields"]] == ["x", "y", "z", "intensity", "label", "rgb"]
    assert [f["datatype"] for f in fields["fields"]] == [7, 7, 7, 7, 6, 7]  # FLOAT32 x4, UINT32, FLOAT32
    pc = decode_pointcloud2(_cloud_msg(fields))
    assert pc.names == ("x", "y", "z", "intensity", "label", "rgb")
    assert np.array_equal(pc.points[:, :4], pts[:, :4])
    assert pc.fields["label"].dtype == np.uint32 and np.array_equal(pc.fields["label"], labels)
    assert np.array_equal(unpack_rgb(pc.fields["rgb"]), get_ontology("rellis3d").palette[labels])
    plain = labelled_cloud_fields(pts[:, :3], names[:3], labels)
    assert [f["name"] for f in plain["fields"]] == ["x", "y", "z", "label"]
    with pytest.raises(DataError, match="49 labels for 50 points"):
        labelled_cloud_fields(pts, names, labels[:-1])
    with pytest.raises(DataError, match="with x, y, z first"):
        labelled_cloud_fields(pts, ("i", "x", "y", "z", "r"), labels)


def test_pack_rgb_round_trip() -> None:
    rgb = np.array([[0, 0, 0], [255, 255, 255], [1, 2, 3], [255, 0, 128]], np.uint8)
    packed = pack_rgb(rgb)
    assert packed.dtype == np.float32
    assert packed.view(np.uint32).tolist() == [0, 0xFFFFFF, 0x010203, 0xFF0080]
    assert np.array_equal(unpack_rgb(packed), rgb)


def test_pointcloud_message_to_sensor_message() -> None:
    pts = np.array([[1, 2, 3, 0.5], [np.nan, 0, 0, 1], [4, 5, 6, 0.25]], np.float32)
    fields, payload = pointcloud_payload(pts, ("x", "y", "z", "intensity"), extra={"t": np.arange(3, dtype=np.uint32)})
    msg = _cloud_msg({**payload, "fields": [dict(zip(("name", "offset", "datatype", "count"), f)) for f in fields]})
    xyz, names = points_from_msg(msg)
    assert names == ("x", "y", "z", "intensity", "t")
    assert np.array_equal(xyz, [[1, 2, 3, 0.5, 0], [4, 5, 6, 0.25, 2]])  # the NaN point is dropped
    sm = sensor_message_from_pointcloud2(msg, "/os1/points", 0, received_ns=5)
    assert (sm.stream, sm.stamp_ns, sm.frame_id, sm.point_fields) == ("lidar", STAMP, "000000", names)
    assert sm.meta == {"header_frame_id": "os1"} and sm.points is not None and sm.points.shape == (2, 5)


class _FakeBackend:
    """A runtime backend: class = (x > 0) for points, (column // 4) for image pixels."""

    def __init__(self) -> None:
        self.seen: list[SensorMessage] = []

    def predict(self, message: SensorMessage) -> Prediction:
        self.seen.append(message)
        if message.stream == "camera":
            assert message.image is not None
            h, w = message.image.shape[:2]
            return Prediction(message, np.tile(np.arange(w) // 4, (h, 1)).astype(np.uint8), "rellis3d",
                              {"infer": 1.5})
        assert message.points is not None
        return Prediction(message, (message.points[:, 0] > 0).astype(np.int64), "rellis3d")


def test_relay_turns_messages_into_outputs() -> None:
    backend = _FakeBackend()
    relay = SegmentationRelay(backend)
    img = np.random.default_rng(4).integers(0, 256, (6, 12, 3), dtype=np.uint8)
    msg = _image_msg(image_payload(img, "bgr8"))
    outs = relay.on_image(msg, "/cam/image")
    assert [(o.topic, o.kind) for o in outs] == [("/segmentation/ids/cam/image", "image"),
                                                ("/segmentation/rgb/cam/image", "image")]
    expected = np.tile(np.arange(12) // 4, (6, 1))
    assert all(o.header is msg.header for o in outs)
    assert np.array_equal(decode_image(_image_msg(outs[0].fields)), expected)
    assert np.array_equal(decode_image(_image_msg(outs[1].fields)), get_ontology("rellis3d").palette[expected])
    assert np.array_equal(backend.seen[0].image, img)
    assert relay.last_timings_ms["infer"] == 1.5 and relay.last_timings_ms["total"] >= 0
    relay.on_image(msg, "/cam/image")
    assert [m.seq for m in backend.seen] == [0, 1]

    pts = np.array([[1, 0, 0, 9], [-1, 0, 0, 8]], np.float32)
    fields, payload = pointcloud_payload(pts, ("x", "y", "z", "intensity"))
    cloud = _cloud_msg({**payload, "fields": [dict(zip(("name", "offset", "datatype", "count"), f)) for f in fields]})
    (out,) = SegmentationRelay(backend.predict, namespace="/seg", publish=("points",)).on_pointcloud(cloud, "/os1")
    assert out.topic == "/seg/points/os1" and out.kind == "pointcloud"
    pc = decode_pointcloud2(_cloud_msg(out.fields))
    assert pc.fields["label"].tolist() == [1, 0]
    assert pc.points[:, 3].tolist() == [9.0, 8.0]


def test_relay_errors() -> None:
    def wrong_size(message: SensorMessage) -> Prediction:
        return Prediction(message, np.zeros((2, 2), np.uint8), "rellis3d")

    msg = _image_msg(image_payload(np.zeros((3, 4, 3), np.uint8), "rgb8"))
    with pytest.raises(DataError, match=r"/cam message 0: prediction is 2x2, the image 4x3"):
        SegmentationRelay(wrong_size).on_image(msg, "/cam")
    with pytest.raises(ConfigError, match=r"unknown outputs \['depth'\]"):
        SegmentationRelay(wrong_size, publish=("ids", "depth"))
    with pytest.raises(ConfigError, match="no predict"):
        SegmentationRelay(object())  # type: ignore[arg-type]


def test_load_predictor_errors() -> None:
    with pytest.raises(ConfigError, match="must be 'module:function'"):
        load_predictor("just_a_module", "m.onnx")
    with pytest.raises(ConfigError, match="cannot load the backend factory 'terraseg_no_such_module:f'"):
        load_predictor("terraseg_no_such_module:f", "m.onnx")
    with pytest.raises(ConfigError, match="no camera model file given"):
        load_predictor("json:loads", "", kind="camera")


def test_load_predictor_calls_the_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import ModuleType

    calls: list[tuple[Any, ...]] = []
    fake = ModuleType("_terraseg_fake_backends")

    def factory(model: str, kind: str | None = None, *, device: str | None = None) -> _FakeBackend:
        calls.append((model, kind, device))
        return _FakeBackend()

    fake.make = factory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "_terraseg_fake_backends", fake)
    fn = load_predictor("_terraseg_fake_backends:make", "cam.onnx", "cpu", "camera")
    assert calls == [("cam.onnx", "camera", "cpu")]
    assert fn.__self__.__class__ is _FakeBackend  # type: ignore[attr-defined]
    assert ros_node.DEFAULT_BACKEND == "terraseg.inference.runtime.backends:load_backend"
    from terraseg.inference.runtime import backends

    assert callable(backends.load_backend)


# --------------------------------------------------------------------------- the node, on a fake rclpy
class _Msg:
    """Stand-in for an rclpy message class: attributes set by keyword or later."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


def _fake_ros(monkeypatch: pytest.MonkeyPatch, params: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """Install fake rclpy / sensor_msgs modules; ``spin`` feeds ``inputs`` (topic -> message) to the node."""
    from types import ModuleType

    state: dict[str, Any] = {"published": {}, "logs": [], "init_args": None, "shutdown": False}

    class Node:
        def __init__(self, name: str) -> None:
            self.name, self.subs, state["node"] = name, [], self

        def declare_parameter(self, name: str, default: Any) -> SimpleNamespace:
            return SimpleNamespace(value=params.get(name, default))

        def create_subscription(self, msg_type: type, topic: str, cb: Any, qos: Any) -> None:
            self.subs.append((msg_type.__name__, topic, cb, qos))

        def create_publisher(self, msg_type: type, topic: str, qos: Any) -> Any:
            return SimpleNamespace(publish=lambda m: state["published"].setdefault(topic, []).append(m))

        def get_logger(self) -> Any:
            return SimpleNamespace(**{lvl: (lambda m, lvl=lvl, **kw: state["logs"].append((lvl, m)))
                                      for lvl in ("debug", "info", "warning", "error")})

        def destroy_node(self) -> None:
            state["destroyed"] = True

    def spin(node: Node) -> None:
        for _, topic, cb, _ in node.subs:
            cb(inputs[topic])

    rclpy = ModuleType("rclpy")
    rclpy.init = lambda args=None: state.update(init_args=args)  # type: ignore[attr-defined]
    rclpy.spin = spin  # type: ignore[attr-defined]
    rclpy.ok = lambda: not state["shutdown"]  # type: ignore[attr-defined]
    rclpy.shutdown = lambda: state.update(shutdown=True)  # type: ignore[attr-defined]
    node_mod, qos, utilities = ModuleType("rclpy.node"), ModuleType("rclpy.qos"), ModuleType("rclpy.utilities")
    node_mod.Node = Node  # type: ignore[attr-defined]
    qos.QoSProfile = lambda depth, reliability=None: SimpleNamespace(depth=depth, reliability=reliability)  # type: ignore[attr-defined]
    qos.ReliabilityPolicy = SimpleNamespace(BEST_EFFORT="best_effort")  # type: ignore[attr-defined]

    def remove_ros_args(args: list[str]) -> list[str]:
        if "--ros-args" not in args:
            return list(args)
        i = args.index("--ros-args")
        rest = args[i + 1:]
        return args[:i] + (rest[rest.index("--") + 1:] if "--" in rest else [])

    utilities.remove_ros_args = remove_ros_args  # type: ignore[attr-defined]
    sensor_msgs, msg = ModuleType("sensor_msgs"), ModuleType("sensor_msgs.msg")
    for name in ("Image", "CompressedImage", "PointCloud2", "PointField"):
        setattr(msg, name, type(name, (_Msg,), {}))
    for name, mod in {"rclpy": rclpy, "rclpy.node": node_mod, "rclpy.qos": qos, "rclpy.utilities": utilities,
                      "sensor_msgs": sensor_msgs, "sensor_msgs.msg": msg}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return state


def test_node_subscribes_predicts_and_publishes(monkeypatch: pytest.MonkeyPatch) -> None:
    img = np.random.default_rng(5).integers(0, 256, (4, 8, 3), dtype=np.uint8)
    cam = _image_msg(image_payload(img, "rgb8"))
    pts = np.array([[1, 0, 0, 9], [-1, 0, 0, 8]], np.float32)
    fields, payload = pointcloud_payload(pts, ("x", "y", "z", "intensity"))
    cloud = _cloud_msg({**payload, "fields": [dict(zip(("name", "offset", "datatype", "count"), f)) for f in fields]})
    state = _fake_ros(monkeypatch, {"publish_rgb": False, "queue_depth": 2},
                      {"/cam/image": cam, "/os1/points": cloud})
    backend = _FakeBackend()
    argv = ["--image-topic", "/cam/image", "--pointcloud-topic", "/os1/points", "--ros-args", "-r", "__ns:=/r"]
    assert ros_node.main(argv, predictor=backend) == 0
    assert state["init_args"] == ["terraseg-ros", *argv]
    node = state["node"]
    assert [(t, topic, q.depth, q.reliability) for t, topic, _, q in node.subs] == [
        ("Image", "/cam/image", 2, "best_effort"), ("PointCloud2", "/os1/points", 2, "best_effort")]
    assert sorted(state["published"]) == ["/segmentation/ids/cam/image", "/segmentation/points/os1/points"]
    (ids_msg,) = state["published"]["/segmentation/ids/cam/image"]
    assert isinstance(ids_msg.data, array.array) and ids_msg.header is cam.header
    assert np.array_equal(decode_image(ids_msg), np.tile(np.arange(8) // 4, (4, 1)))
    (pc_msg,) = state["published"]["/segmentation/points/os1/points"]
    assert [f.name for f in pc_msg.fields] == ["x", "y", "z", "intensity", "label", "rgb"]
    assert decode_pointcloud2(pc_msg).fields["label"].tolist() == [1, 0]
    assert state["destroyed"] and state["shutdown"]
    assert any(lvl == "info" and "segmenting /cam/image, /os1/points" in m for lvl, m in state["logs"])


def test_node_reports_bad_setup_and_bad_messages(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _fake_ros(monkeypatch, {}, {})
    assert ros_node.main([], predictor=_FakeBackend()) == 1
    assert "error: no input topics" in capsys.readouterr().err
    _fake_ros(monkeypatch, {}, {})
    assert ros_node.main(["--image-topic", "/cam"]) == 1
    assert capsys.readouterr().err.strip() == ("error: image topics need a camera model: set camera_model "
                                               "(or --camera-model)")
    _fake_ros(monkeypatch, {"camera_model": str(Path("/nonexistent/cam.onnx"))}, {})
    assert ros_node.main(["--image-topic", "/cam"]) == 1
    assert "cam.onnx: model file not found" in capsys.readouterr().err  # from the runtime's load_backend
    bad = _image_msg(image_payload(np.zeros((2, 2), np.float32), "32FC1"))
    state = _fake_ros(monkeypatch, {"image_topics": ["/cam"]}, {"/cam": bad})
    assert ros_node.main([], predictor=_FakeBackend()) == 0  # a bad message is logged, the node goes on
    assert state["published"] == {}
    assert [lvl for lvl, m in state["logs"] if "/cam message 0: cannot segment" in m] == ["error"]
