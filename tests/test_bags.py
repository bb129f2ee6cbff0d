"""ROS 1 / ROS 2 bags: writing, reading, decoding, PNG encoding and stamp synchronisation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from terraseg.errors import DataError
from terraseg.frame import Calibration
from terraseg.io.bags import (
    BagWriter,
    decode_camera_info,
    decode_compressed_image,
    decode_image,
    decode_message,
    decode_pointcloud2,
    open_bag,
    synchronize,
)
from terraseg.io.bags.decode import parse_image_raw
from terraseg.io.png import encode_png, write_png

KINDS = ("ros2-sqlite3", "ros2-mcap", "ros1")
S = 1_000_000_000


def bag_path(tmp_path: Path, kind: str, name: str = "run") -> Path:
    return tmp_path / (f"{name}.bag" if kind == "ros1" else name)


def writer(tmp_path: Path, kind: str, name: str = "run") -> BagWriter:
    return BagWriter(bag_path(tmp_path, kind, name), storage="mcap" if kind == "ros2-mcap" else "sqlite3")


def read_all(path: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    with open_bag(path) as bag:
        for m in bag.messages():
            out.setdefault(m.topic, []).append(m)
    return out


# ---------------------------------------------------------------------------- images
@pytest.mark.parametrize("kind", KINDS)
def test_image_roundtrip_every_encoding(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    deep = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    depth = rng.random((5, 7), dtype=np.float32) * 50
    cases = {  # topic: (array written, encoding, big-endian, expected decode)
        "/rgb8": (rgb, "rgb8", False, rgb),
        "/bgr8": (rgb, "bgr8", False, rgb),
        "/rgba8": (rgba, "rgba8", False, rgba[..., :3]),
        "/bgra8": (rgba, "bgra8", False, rgba[..., :3]),
        "/mono8": (grey, "mono8", False, grey),
        "/8uc1": (grey, "8UC1", False, grey),
        "/mono16": (deep, "mono16", False, deep),
        "/mono16be": (deep, "mono16", True, deep),
        "/16uc1be": (deep, "16UC1", True, deep),
        "/32fc1": (depth, "32FC1", False, depth),
        "/32fc1be": (depth, "32FC1", True, depth),
    }
    with writer(tmp_path, kind) as w:
        for k, (topic, (arr, enc, be, _)) in enumerate(cases.items()):
            w.write_image(topic, arr, stamp_ns=5 * S + k, frame_id="cam", encoding=enc, bigendian=be,
                          row_padding=3 * (k % 3))
    msgs = read_all(bag_path(tmp_path, kind))
    assert set(msgs) == set(cases)
    for k, (topic, (arr, enc, be, expected)) in enumerate(cases.items()):
        (m,) = msgs[topic]
        assert m.msg.encoding == enc and bool(m.msg.is_bigendian) == be
        assert m.stamp_ns == 5 * S + k and m.timestamp_ns == 5 * S + k and m.index == 0
        assert m.msg.header.frame_id == "cam"
        assert m.msg.step == 7 * arr.itemsize * (arr.shape[2] if arr.ndim == 3 else 1) + 3 * (k % 3)
        out = decode_image(m.msg, topic)
        assert out.dtype == expected.dtype and out.shape == expected.shape, topic
        np.testing.assert_array_equal(out, expected, err_msg=topic)
        assert out.flags.writeable and out.flags.c_contiguous
    rgba_out = decode_image(msgs["/bgra8"][0].msg, keep_alpha=True)
    np.testing.assert_array_equal(rgba_out, rgba)


@pytest.mark.parametrize("kind", KINDS)
def test_parse_image_raw_matches_full_deserialiser(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(1)
    with writer(tmp_path, kind) as w:
        for k, fid in enumerate(["", "c", "ca", "cam", "came"]):  # every alignment of the strings
            w.write_image("/i", rng.integers(0, 65536, (3, 4), dtype=np.uint16), k * S + k, fid,
                          encoding="16UC1", bigendian=bool(k % 2), row_padding=k)
    with open_bag(bag_path(tmp_path, kind)) as bag:
        for _, msgtype, _, _, raw in bag.raw_messages("/i"):
            full, fast = bag.deserialize(raw, msgtype), parse_image_raw(raw, bag.ros_version)
            assert fast is not None
            assert fast.header.frame_id == full.header.frame_id
            assert (fast.header.stamp.sec, fast.header.stamp.nanosec) == (full.header.stamp.sec,
                                                                          full.header.stamp.nanosec)
            assert (fast.height, fast.width, fast.encoding, fast.is_bigendian, fast.step) == \
                (full.height, full.width, full.encoding, full.is_bigendian, full.step)
            np.testing.assert_array_equal(decode_image(fast, copy=False), decode_image(full))
            assert bag.peek_stamp(raw, msgtype) == full.header.stamp.sec * S + full.header.stamp.nanosec
    assert parse_image_raw(b"\x00\x01\x00\x00\x01", 2) is None  # truncated


def test_unsupported_image_encoding_names_where_and_encoding(tmp_path: Path) -> None:
    with writer(tmp_path, "ros2-sqlite3") as w:
        for i in range(3):
            msg = w.make("sensor_msgs/msg/Image", header=w.header("/cam", i * S), height=2, width=2,
                         encoding="yuv422" if i == 2 else "mono8", is_bigendian=0, step=4 if i == 2 else 2,
                         data=np.zeros(8 if i == 2 else 4, np.uint8))
            w.write("/cam", "sensor_msgs/msg/Image", msg, i * S)
    with open_bag(tmp_path / "run") as bag:
        msgs = list(bag.messages("/cam"))
        assert decode_image(msgs[1].msg).shape == (2, 2)
        with pytest.raises(DataError) as err:
            decode_image(msgs[2].msg, bag.where("/cam", msgs[2].index))
    text = str(err.value)
    assert str(tmp_path / "run") in text and "/cam" in text and "message 2" in text and "'yuv422'" in text
    assert "rgb8" in text  # lists the supported encodings


def test_image_buffer_too_small_is_a_data_error(tmp_path: Path) -> None:
    with writer(tmp_path, "ros1") as w:
        msg = w.make("sensor_msgs/msg/Image", header=w.header("/cam", S), height=4, width=4, encoding="rgb8",
                     is_bigendian=0, step=12, data=np.zeros(40, np.uint8))
        w.write("/cam", "sensor_msgs/msg/Image", msg, S)
    (m,) = read_all(tmp_path / "run.bag")["/cam"]
    with pytest.raises(DataError, match="holds 40 bytes, expected at least 48"):
        decode_image(m.msg, "bag: /cam message 0")


@pytest.mark.parametrize("kind", ["ros2-sqlite3", "ros1"])
def test_compressed_image_roundtrip(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:32, 0:40]
    rgb = np.stack([xx * 6, yy * 7, xx * 2 + yy * 3], axis=2).astype(np.uint8)  # smooth: JPEG-friendly
    grey = rng.integers(0, 256, (6, 9), dtype=np.uint8)
    deep = rng.integers(0, 65536, (6, 9), dtype=np.uint16)
    with writer(tmp_path, kind) as w:
        w.write_compressed_image("/png", rgb, S, "cam", format="png")
        w.write_compressed_image("/jpg", rgb, S, "cam", format="jpeg", quality=95)
        w.write_compressed_image("/grey", grey, S, format="png")
        w.write_compressed_image("/deep", deep, S, format="png")
    msgs = read_all(bag_path(tmp_path, kind))
    np.testing.assert_array_equal(decode_compressed_image(msgs["/png"][0].msg), rgb)
    jpg = decode_compressed_image(msgs["/jpg"][0].msg)
    assert jpg.shape == rgb.shape and jpg.dtype == np.uint8
    assert np.abs(jpg.astype(int) - rgb).mean() < 3
    assert msgs["/jpg"][0].msg.format == "jpeg"
    g = decode_compressed_image(msgs["/grey"][0].msg)
    assert g.dtype == np.uint8 and g.shape == (6, 9)
    np.testing.assert_array_equal(g, grey)
    d = decode_message(msgs["/deep"][0].msg, msgs["/deep"][0].msgtype)
    assert d.dtype == np.uint16
    np.testing.assert_array_equal(d, deep)


def test_corrupt_compressed_image_is_a_data_error(tmp_path: Path) -> None:
    with writer(tmp_path, "ros2-sqlite3") as w:
        w.write_compressed_image("/c", b"\xff\xd8\xff not really a jpeg", S)
    (m,) = read_all(tmp_path / "run")["/c"]
    with pytest.raises(DataError, match=r"bag: /c message 0: cannot decode compressed image \(format 'jpeg'"):
        decode_compressed_image(m.msg, "bag: /c message 0")


# ---------------------------------------------------------------------------- point clouds
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bigendian", [False, True])
def test_pointcloud_roundtrip_padding_organised_nan_extra_fields(tmp_path: Path, kind: str, bigendian: bool) -> None:
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(12, 4)).astype(np.float32)
    pts[[2, 7], 1] = np.nan
    label = rng.integers(0, 2**32, 12, dtype=np.uint32)
    ring = np.arange(12, dtype=np.uint16)
    with writer(tmp_path, kind) as w:
        w.write_pointcloud("/lidar", pts, ("x", "y", "z", "intensity"), stamp_ns=7 * S + 11, frame_id="os1",
                           extra={"label": label, "ring": ring}, height=3, bigendian=bigendian, point_padding=6)
    (m,) = read_all(bag_path(tmp_path, kind))["/lidar"]
    assert m.msg.height == 3 and m.msg.width == 4 and bool(m.msg.is_bigendian) == bigendian
    assert not m.msg.is_dense and m.msg.point_step > 4 * 4 + 4 + 2
    assert m.stamp_ns == 7 * S + 11 and m.msg.header.frame_id == "os1"

    cloud = decode_pointcloud2(m.msg)
    keep = np.ones(12, bool)
    keep[[2, 7]] = False
    assert cloud.names == ("x", "y", "z", "intensity", "label", "ring")
    assert cloud.points.dtype == np.float32 and cloud.points.shape == (10, 6)
    np.testing.assert_array_equal(cloud.points[:, :4], pts[keep])
    np.testing.assert_array_equal(cloud.valid, keep)
    assert cloud.fields["label"].dtype == np.uint32 and cloud.fields["ring"].dtype == np.uint16
    assert cloud.fields["label"].dtype.isnative
    np.testing.assert_array_equal(cloud.fields["label"], label[keep])
    np.testing.assert_array_equal(cloud.fields["ring"], ring[keep])
    assert cloud.organized and (cloud.height, cloud.width) == (3, 4)
    np.testing.assert_array_equal(cloud.xyzi(), pts[keep])
    assert set(cloud.extra_fields()) == {"label", "ring"}

    whole = decode_pointcloud2(m.msg, drop_invalid=False)
    assert whole.points.shape == (12, 6)
    np.testing.assert_array_equal(whole.points[:, :4], pts)  # NaN compare equal in assert_array_equal


def test_pointcloud_built_by_hand_unusual_layout(tmp_path: Path) -> None:
    """Fields out of order with gaps, float64/int8/count>1 fields, row padding, big-endian."""
    n_rows, width, point_step, row_step = 2, 3, 40, 3 * 40 + 8
    rng = np.random.default_rng(4)
    xyz = rng.normal(size=(6, 3))
    t = rng.random(6)
    flag = rng.integers(-100, 100, 6).astype(np.int8)
    rgb = rng.integers(0, 256, (6, 3)).astype(np.uint8)
    layout = np.dtype({"names": ["z", "t", "x", "flag", "y", "rgb"],
                       "formats": [">f4", ">f8", ">f4", "i1", ">f4", ("u1", (3,))],
                       "offsets": [0, 8, 16, 20, 24, 30], "itemsize": point_step})
    rec = np.zeros(6, layout)
    rec["x"], rec["y"], rec["z"], rec["t"], rec["flag"], rec["rgb"] = xyz[:, 0], xyz[:, 1], xyz[:, 2], t, flag, rgb
    rows = rec.view(np.uint8).reshape(n_rows, width * point_step)
    data = np.concatenate([rows, np.full((n_rows, 8), 0xAB, np.uint8)], axis=1).reshape(-1)
    with writer(tmp_path, "ros2-sqlite3") as w:
        fields = [w.make("sensor_msgs/msg/PointField", name=nm, offset=o, datatype=d, count=c)
                  for nm, o, d, c in [("z", 0, 7, 1), ("t", 8, 8, 1), ("x", 16, 7, 1), ("flag", 20, 1, 1),
                                      ("y", 24, 7, 1), ("rgb", 30, 2, 3)]]
        msg = w.make("sensor_msgs/msg/PointCloud2", header=w.header("/pc", S), height=n_rows, width=width,
                     fields=fields, is_bigendian=True, point_step=point_step, row_step=row_step, data=data,
                     is_dense=True)
        w.write("/pc", "sensor_msgs/msg/PointCloud2", msg, S)
    (m,) = read_all(tmp_path / "run")["/pc"]
    cloud = decode_pointcloud2(m.msg)
    assert cloud.names == ("x", "y", "z", "t", "flag")  # count > 1 fields are only in .fields
    np.testing.assert_allclose(cloud.points[:, :3], xyz.astype(np.float32), rtol=0, atol=0)
    np.testing.assert_array_equal(cloud.fields["t"], t)
    assert cloud.fields["t"].dtype == np.float64 and cloud.fields["flag"].dtype == np.int8
    np.testing.assert_array_equal(cloud.fields["flag"], flag)
    assert cloud.fields["rgb"].shape == (6, 3)
    np.testing.assert_array_equal(cloud.fields["rgb"], rgb)
    np.testing.assert_array_equal(cloud.intensity(), np.zeros(6, np.float32))
    np.testing.assert_array_equal(cloud.xyzi()[:, 3], 0)


def _cloud_msg(w: BagWriter, fields: list[tuple[str, int, int, int]], point_step: int, data: np.ndarray,
               width: int) -> object:
    pf = [w.make("sensor_msgs/msg/PointField", name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields]
    return w.make("sensor_msgs/msg/PointCloud2", header=w.header("/pc", 0), height=1, width=width, fields=pf,
                  is_bigendian=False, point_step=point_step, row_step=point_step * width, data=data, is_dense=True)


def test_pointcloud_errors(tmp_path: Path) -> None:
    w = BagWriter(tmp_path / "unused")
    no_z = _cloud_msg(w, [("x", 0, 7, 1), ("y", 4, 7, 1)], 8, np.zeros(16, np.uint8), 2)
    with pytest.raises(DataError, match=r"w: point cloud has no z field \(fields: x, y\)"):
        decode_pointcloud2(no_z, "w")
    past = _cloud_msg(w, [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 8, 1)], 12, np.zeros(24, np.uint8), 2)
    with pytest.raises(DataError, match="field 'z' .* extends past point_step 12"):
        decode_pointcloud2(past, "w")
    short = _cloud_msg(w, [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1)], 12, np.zeros(20, np.uint8), 2)
    with pytest.raises(DataError, match="holds 20 bytes, expected at least 24"):
        decode_pointcloud2(short, "w")
    badtype = _cloud_msg(w, [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 9, 1)], 12, np.zeros(24, np.uint8), 2)
    with pytest.raises(DataError, match="unknown PointField datatype 9"):
        decode_pointcloud2(badtype, "w")


# ---------------------------------------------------------------------------- camera info
@pytest.mark.parametrize("kind", KINDS)
def test_camera_info_roundtrip(tmp_path: Path, kind: str) -> None:
    K = np.array([[700.0, 0, 640.5], [0, 710.0, 360.25], [0, 0, 1]])
    calib = Calibration(K=K, dist=[-0.1, 0.02, 0.001, -0.002, 0.0003], image_size=(1280, 720))
    with writer(tmp_path, kind) as w:
        w.write_camera_info("/cam/info", calib, 3 * S, "cam")
        w.write_camera_info("/cam/raw_info", Calibration(K=K), 3 * S, "cam")
    msgs = read_all(bag_path(tmp_path, kind))
    out = decode_camera_info(msgs["/cam/info"][0].msg, "info")
    np.testing.assert_array_equal(out.K, K)
    np.testing.assert_array_equal(out.dist, calib.dist)
    assert out.image_size == (1280, 720) and out.T_cam_lidar is None
    plain = decode_message(msgs["/cam/raw_info"][0].msg, msgs["/cam/raw_info"][0].msgtype)
    assert plain.dist is None and plain.image_size is None


def test_camera_info_rejects_fisheye_and_uncalibrated(tmp_path: Path) -> None:
    with writer(tmp_path, "ros2-sqlite3") as w:
        w.write_camera_info("/fish", Calibration(K=np.eye(3), dist=[0.1, 0.2, 0.3, 0.4]), S,
                            distortion_model="equidistant")
        msg = w.make("sensor_msgs/msg/CameraInfo", header=w.header("/zero", S), height=2, width=2,
                     distortion_model="", d=np.zeros(0), k=np.zeros(9), r=np.zeros(9), p=np.zeros(12),
                     binning_x=0, binning_y=0,
                     roi=w.make("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0,
                                do_rectify=False))
        w.write("/zero", "sensor_msgs/msg/CameraInfo", msg, S)
    msgs = read_all(tmp_path / "run")
    with pytest.raises(DataError, match="distortion model 'equidistant' is not supported"):
        decode_camera_info(msgs["/fish"][0].msg)
    with pytest.raises(DataError, match="not calibrated"):
        decode_camera_info(msgs["/zero"][0].msg)


# ---------------------------------------------------------------------------- reader
@pytest.mark.parametrize("kind", KINDS)
def test_topics_counts_and_time_order(tmp_path: Path, kind: str) -> None:
    with writer(tmp_path, kind) as w:
        for k in range(4):
            w.write_image("/a", np.full((2, 2), k, np.uint8), stamp_ns=k * S, timestamp_ns=10 * S + k * S)
        for k in range(3):  # record times interleave with /a
            w.write_image("/b", np.full((2, 2), k, np.uint16), stamp_ns=k * S + 1, timestamp_ns=10 * S + k * S + S // 2)
    path = bag_path(tmp_path, kind)
    with open_bag(path) as bag:
        assert bag.ros_version == (1 if kind == "ros1" else 2)
        assert bag.storage == {"ros1": "rosbag1", "ros2-mcap": "mcap", "ros2-sqlite3": "sqlite3"}[kind]
        assert {t.name: (t.msgtype, t.count) for t in bag.topics.values()} == {
            "/a": ("sensor_msgs/msg/Image", 4), "/b": ("sensor_msgs/msg/Image", 3)}
        assert bag.message_count == 7 and bag.start_ns == 10 * S
        msgs = list(bag.messages())
        assert [m.timestamp_ns for m in msgs] == sorted(m.timestamp_ns for m in msgs)
        assert [(m.topic, m.index) for m in msgs] == [("/a", 0), ("/b", 0), ("/a", 1), ("/b", 1), ("/a", 2),
                                                      ("/b", 2), ("/a", 3)]
        assert [int(decode_image(m.msg)[0, 0]) for m in msgs if m.topic == "/b"] == [0, 1, 2]
        raw = list(bag.messages("/b", decode=False))
        assert [m.stamp_ns for m in raw] == [1, S + 1, 2 * S + 1] and isinstance(raw[0].msg, bytes)


def test_missing_topic_error_lists_available_topics(tmp_path: Path) -> None:
    with writer(tmp_path, "ros2-mcap") as w:
        w.write_image("/cam/image", np.zeros((2, 2, 3), np.uint8), S)
        w.write_pointcloud("/lidar", np.zeros((3, 3), np.float32), ("x", "y", "z"), S)
    with open_bag(tmp_path / "run") as bag:
        with pytest.raises(DataError) as err:
            list(bag.messages(["/cam/image", "/cam/labels"]))
        text = str(err.value)
        assert str(tmp_path / "run") in text and "'/cam/labels' not found" in text
        assert "/cam/image (sensor_msgs/msg/Image, 1 msgs)" in text and "/lidar (sensor_msgs/msg/PointCloud2" in text
        with pytest.raises(DataError, match="has type sensor_msgs/msg/PointCloud2, expected sensor_msgs/msg/Image"):
            bag.topic("/lidar", ["sensor_msgs/msg/Image"])


def test_open_bag_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="bag not found"):
        open_bag(tmp_path / "nope.bag")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="not a ROS 2 bag folder"):
        open_bag(tmp_path / "folder")
    (tmp_path / "junk.bag").write_bytes(b"#ROSBAG V2.0\ngarbage")
    with pytest.raises(DataError, match="junk.bag"):
        open_bag(tmp_path / "junk.bag")


def test_ros2_storage_file_can_be_opened_directly(tmp_path: Path) -> None:
    with writer(tmp_path, "ros2-mcap") as w:
        w.write_image("/i", np.zeros((2, 2), np.uint8), S)
    (mcap,) = (tmp_path / "run").glob("*.mcap")
    with open_bag(mcap) as bag:
        assert bag.storage == "mcap" and bag.topics["/i"].count == 1


# ---------------------------------------------------------------------------- writer
def test_writer_is_atomic_and_refuses_to_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), BagWriter(target) as w:
        w.write_image("/i", np.zeros((2, 2), np.uint8), S)
        raise RuntimeError("simulated crash")
    assert list(tmp_path.iterdir()) == []  # neither the bag nor a temporary folder
    with BagWriter(target) as w:
        w.write_image("/i", np.zeros((2, 2), np.uint8), S)
    with pytest.raises(DataError, match="already exists"):
        BagWriter(target).open()
    with BagWriter(target, overwrite=True) as w:
        w.write_image("/j", np.zeros((2, 2), np.uint8), S)
        w.write_image("/j", np.zeros((2, 2), np.uint8), 2 * S)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with open_bag(target) as bag:
        assert list(bag.topics) == ["/j"] and bag.topics["/j"].count == 2
    with BagWriter(tmp_path / "r1.bag") as w:
        assert w.ros_version == 1
        with pytest.raises(DataError, match="already carries sensor_msgs/msg/PointCloud2, cannot write sensor_msgs/msg/Image"):
            w.write_pointcloud("/i", np.zeros((1, 3), np.float32), ("x", "y", "z"))
            w.write_image("/i", np.zeros((2, 2), np.uint8), S)


def test_writer_rejects_bad_arrays(tmp_path: Path) -> None:
    with BagWriter(tmp_path / "b") as w:
        with pytest.raises(DataError, match="rgb8 needs an"):
            w.write_image("/i", np.zeros((2, 2), np.uint8), S, encoding="rgb8")
        with pytest.raises(DataError, match="unsupported image encoding 'yuv422'"):
            w.write_image("/i", np.zeros((2, 2), np.uint8), S, encoding="yuv422")
        with pytest.raises(DataError, match=r"points must be \(N, 3\)"):
            w.write_pointcloud("/p", np.zeros((4, 4), np.float32), ("x", "y", "z"))
        with pytest.raises(DataError, match="extra point field 'label' has dtype int64"):
            w.write_pointcloud("/p", np.zeros((4, 3), np.float32), ("x", "y", "z"),
                               extra={"label": np.zeros(4, np.int64)})
        with pytest.raises(DataError, match="cannot form an organised cloud of height 3"):
            w.write_pointcloud("/p", np.zeros((4, 3), np.float32), ("x", "y", "z"), height=3)


# ---------------------------------------------------------------------------- PNG
@pytest.mark.parametrize("level", [0, 1, 6])
def test_encode_png_roundtrip_and_deterministic(tmp_path: Path, level: int) -> None:
    rng = np.random.default_rng(5)
    arrays = {
        "L": rng.integers(0, 256, (13, 17), dtype=np.uint8),
        "I;16": rng.integers(0, 65536, (13, 17), dtype=np.uint16),
        "RGB": rng.integers(0, 256, (13, 17, 3), dtype=np.uint8),
        "RGBA": rng.integers(0, 256, (13, 17, 4), dtype=np.uint8),
    }
    for mode, arr in arrays.items():
        data = encode_png(arr, level)
        assert data == encode_png(arr.copy(), level)
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.mode == mode, mode
        np.testing.assert_array_equal(np.asarray(img).astype(arr.dtype), arr)
    path = write_png(tmp_path / "m.png", arrays["L"], level)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), arrays["L"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


def test_encode_png_rejects_unsupported_arrays(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot encode an array of shape"):
        encode_png(np.zeros((2, 2), np.float32))
    with pytest.raises(DataError, match="compress_level must be 0..9"):
        encode_png(np.zeros((2, 2), np.uint8), 12)
    with pytest.raises(DataError, match=r"x.png: cannot encode"):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 2), np.uint8))
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------- synchronisation
def test_synchronize_exact_and_tolerance() -> None:
    ms = 1_000_000
    img = np.array([0, 100, 200, 300, 400]) * ms
    mask = np.array([0, 103, 200, 400, 400, 700]) * ms  # 103: 3 ms late; second 400 is a duplicate
    exact = synchronize([img, mask], 0)
    np.testing.assert_array_equal(exact.frames, [[0, 0], [2, 2], [4, 3]])
    np.testing.assert_array_equal(exact.stamps, [0, 200 * ms, 400 * ms])
    assert list(exact.reasons[0]) == ["kept", "out_of_tolerance", "kept", "no_partner", "kept"]
    assert list(exact.reasons[1]) == ["kept", "out_of_tolerance", "kept", "kept", "duplicate_stamp", "no_partner"]

    loose = synchronize([img, mask], 5 * ms)
    np.testing.assert_array_equal(loose.frames, [[0, 0], [1, 1], [2, 2], [4, 3]])
    np.testing.assert_array_equal(loose.dt_ns[:, 1], [0, 3 * ms, 0, 0])


def test_synchronize_pairs_closest_first_one_to_one() -> None:
    ms = 1_000_000
    ref = np.array([0, 10]) * ms
    other = np.array([6]) * ms  # 6 ms from the first, 4 ms from the second reference message
    res = synchronize([ref, other], 8 * ms)
    np.testing.assert_array_equal(res.frames, [[1, 0]])
    assert list(res.reasons[0]) == ["partner_taken", "kept"]
    three = synchronize([ref, np.array([0, 10]) * ms, np.array([10]) * ms], 0)
    np.testing.assert_array_equal(three.frames, [[1, 1, 0]])
    assert list(three.reasons[1]) == ["no_partner", "kept"]
    single = synchronize([np.array([5, 3, 5])], 0)
    np.testing.assert_array_equal(single.frames[:, 0], [1, 0])
    assert list(single.reasons[0]) == ["kept", "kept", "duplicate_stamp"]


@pytest.mark.parametrize("kind", KINDS)
def test_stamps_scan_matches_full_read(tmp_path: Path, kind: str) -> None:
    with writer(tmp_path, kind) as w:
        for k in range(5):  # equal record times across topics, header stamps differ from them
            w.write_image("/a", np.zeros((2, 3), np.uint8), stamp_ns=k * S + 7, frame_id="x" * k, timestamp_ns=k * S)
            w.write_pointcloud("/b", np.zeros((2, 3), np.float32), ("x", "y", "z"), stamp_ns=k * S + 9,
                               timestamp_ns=k * S)
            w.write_camera_info("/c", Calibration(K=np.eye(3)), k * S + 11, timestamp_ns=k * S)
    with open_bag(bag_path(tmp_path, kind)) as bag:
        topics = ["/a", "/b"]
        assert (bag._sqlite_heads(topics, 64) is not None) == (kind == "ros2-sqlite3")
        fast = list(bag.stamps(topics))
        slow = [(t, i, ts, bag.peek_stamp(raw, m), None) for t, m, i, ts, raw in bag.raw_messages(topics)]
        assert fast == slow and len(fast) == 10
        assert sorted(st for t, _, _, st, _ in fast if t == "/a") == [k * S + 7 for k in range(5)]
        received = list(bag.stamps(["/c"], receive_time=True))
        assert [st for _, _, _, st, _ in received] == [k * S for k in range(5)]
