"""Runtime sources: bags (topic detection, ground truth, camera info), dataset folders, videos,
scans, the live simulator, real-time pacing and :func:`open_source`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from terraseg.errors import ConfigError, DataError
from terraseg.inference.runtime import (
    BagSource,
    DatasetSource,
    ImageSequenceSource,
    ScanFolderSource,
    SimSource,
    open_source,
    parse_sim_spec,
)
from terraseg.io.labels import read_label_png
from terraseg.io.scans import read_bin, read_label

FRAMES = 3


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from terraseg.sim.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("sim")
    simulate_dataset(root, frames=FRAMES, seed=2, camera="tiny", lidar="small", bag=True, progress=False,
                     splits={"train": 1.0})
    return root


def test_bag_source_detects_topics_and_attaches_ground_truth(sim_root: Path) -> None:
    with BagSource(sim_root / "bags" / "train", gt_ontology="sim") as src:
        assert src.topics == {"/sim/camera/image": "camera", "/sim/lidar/points": "lidar"}
        assert src.semantic_topic == "/sim/camera/semantic"
        assert src.info_topics == {"/sim/camera/image": "/sim/camera/camera_info"}
        msgs = list(src)
    cams = [m for m in msgs if m.stream == "camera"]
    lids = [m for m in msgs if m.stream == "lidar"]
    assert [m.seq for m in cams] == [m.seq for m in lids] == list(range(FRAMES))
    assert [m.stamp_ns for m in cams] == [1_000_000_000 + 100_000_000 * i for i in range(FRAMES)]
    for i, (c, lid) in enumerate(zip(cams, lids)):
        stem = f"{i:06d}"
        assert c.image is not None and c.image.shape == (120, 160, 3) and c.image.dtype == np.uint8
        np.testing.assert_array_equal(c.gt, read_label_png(sim_root / "camera" / "masks" / "train" / f"{stem}.png"))
        assert c.ontology == "sim" and c.frame_id == f"{c.stamp_ns // 10**9:010d}_{c.stamp_ns % 10**9:09d}"
        assert c.calib is not None and c.calib.K is not None and c.calib.image_size == (160, 120)  # the first too
        assert c.meta["header_frame_id"] == "sim_camera" and c.meta["read_ms"] >= 0 and c.received_ns > 0
        seq_dir = sim_root / "lidar" / "sequences" / "00"
        np.testing.assert_array_equal(lid.points, read_bin(seq_dir / "velodyne" / f"{stem}.bin"))
        np.testing.assert_array_equal(lid.gt, read_label(seq_dir / "labels" / f"{stem}.label")[0])
        assert lid.point_fields == ("x", "y", "z", "intensity") and lid.meta["header_frame_id"] == "sim_lidar"


def test_bag_source_only_reads_the_streams_asked_for(sim_root: Path) -> None:
    with BagSource(sim_root / "bags" / "train", lidar=False, semantic_topic="", max_frames=2) as src:
        msgs = list(src)
        assert src.topics == {"/sim/camera/image": "camera"} and src.semantic_topic is None
    assert [m.seq for m in msgs] == [0, 1] and all(m.gt is None for m in msgs)
    with BagSource(sim_root / "bags" / "train", camera=False, lidar_topics=["/sim/lidar/points"]) as src:
        assert [m.stream for m in src] == ["lidar"] * FRAMES


def test_bag_source_realtime_pacing_follows_the_stamps(sim_root: Path) -> None:
    with BagSource(sim_root / "bags" / "train", camera=False, realtime=True, speed=4.0) as src:
        msgs = list(src)
    sent = np.array([m.received_ns for m in msgs]) - msgs[0].received_ns
    due = (np.array([m.stamp_ns for m in msgs]) - msgs[0].stamp_ns) / 4.0  # 4x speed
    assert len(msgs) == FRAMES and (sent >= due - 1_000_000).all()  # on an absolute schedule, never early


def _two_camera_bag(path: Path) -> None:
    from terraseg.io.bags import BagWriter

    rgb = np.zeros((4, 6, 3), np.uint8)
    with BagWriter(path) as w:
        w.write_image("/left/image", rgb, 1_000, "left")
        w.write_compressed_image("/right/image/compressed", rgb, 1_000, "right", format="png")
        w.write_image("/left/depth", np.zeros((4, 6), np.uint16), 1_000, "left")
        w.write_image("/left/semantic", np.ones((4, 6), np.uint8), 1_000, "left")


def test_bag_source_topic_errors(tmp_path: Path) -> None:
    bag = tmp_path / "two_bag"
    _two_camera_bag(bag)
    with pytest.raises(DataError, match=r"several colour camera image topics \(/left/image, /right/image/compressed\)"):
        BagSource(bag, lidar=False)
    with pytest.raises(DataError, match="no PointCloud2 topic found"):
        BagSource(bag, camera=False)
    with pytest.raises(DataError, match="topic '/nope' not found; available topics: /left/depth"):
        BagSource(bag, camera_topics=["/nope"], lidar=False)
    with pytest.raises(ConfigError, match="exactly one camera topic"):
        BagSource(bag, camera_topics=["/left/image", "/right/image/compressed"], semantic_topic="/left/semantic",
                  lidar=False)
    with BagSource(bag, camera_topics=["/right/image/compressed"], semantic_topic="/left/semantic", lidar=False) as s:
        (m,) = list(s)
    assert m.image is not None and m.image.shape == (4, 6, 3) and m.gt is not None and (m.gt == 1).all()
    with BagSource(bag, camera_topics=["/left/image", "/right/image/compressed"], lidar=False) as s:
        assert sorted(m.topic for m in s) == ["/left/image", "/right/image/compressed"]


def test_dataset_sources_carry_ground_truth_pose_and_calibration(sim_root: Path) -> None:
    with DatasetSource(sim_root / "camera", lidar=False) as src:
        cams = list(src)
    assert [m.frame_id for m in cams] == [f"train/{i:06d}" for i in range(FRAMES)]
    assert all(m.topic == "images" and m.gt is not None and m.gt.shape == (120, 160) for m in cams)
    assert cams[1].stamp_ns - cams[0].stamp_ns == 100_000_000 and cams[0].calib is not None
    with DatasetSource(sim_root / "lidar", options={"ontology": "sim"}, camera=False) as src:
        lids = list(src)
    assert len(lids) == FRAMES and lids[0].pose is not None and lids[0].pose.shape == (4, 4)
    np.testing.assert_array_equal(lids[2].gt, read_label(sim_root / "lidar/sequences/00/labels/000002.label")[0])
    with pytest.raises(DataError, match="no point clouds for the LiDAR model"):
        DatasetSource(sim_root / "camera", lidar=True)


def test_video_image_folder_and_scan_sources(tmp_path: Path, sim_root: Path) -> None:
    import cv2

    video = tmp_path / "drive.avi"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (48, 32))
    for i in range(4):
        w.write(np.full((32, 48, 3), 40 * i, np.uint8))
    w.release()
    with ImageSequenceSource(video) as src:
        msgs = list(src)
    assert src.rate_hz == pytest.approx(5.0) and src.topics == {"drive.avi": "camera"}
    assert [m.frame_id for m in msgs] == [f"frame_{i:06d}" for i in range(4)]
    assert [m.stamp_ns for m in msgs] == [200_000_000 * i for i in range(4)]
    assert msgs[0].image is not None and msgs[0].image.shape == (32, 48, 3)
    with ImageSequenceSource(sim_root / "camera" / "images", rate_hz=20.0) as src:
        msgs = list(src)
    assert [m.frame_id for m in msgs] == [f"train/{i:06d}" for i in range(FRAMES)] and msgs[1].stamp_ns == 50_000_000
    with ScanFolderSource(sim_root / "lidar" / "sequences" / "00" / "velodyne") as src:
        scans = list(src)
    assert [m.frame_id for m in scans] == [f"{i:06d}" for i in range(FRAMES)] and scans[0].points.shape[1] == 4


def test_simulator_source_renders_live() -> None:
    opts = parse_sim_spec("sim:seed=1,frames=2,camera=tiny,lidar=small,rate=5")
    assert opts["frames"] == 2 and opts["rate"] == 5.0 and opts["domain"] == "forest-day"
    with SimSource(opts, lidar=True) as src:
        assert src.topics == {"/sim/camera/image": "camera", "/sim/lidar/points": "lidar"}
        msgs = list(src)
    cam = [m for m in msgs if m.stream == "camera"]
    lid = [m for m in msgs if m.stream == "lidar"]
    assert len(cam) == len(lid) == 2 and cam[1].stamp_ns - cam[0].stamp_ns == 200_000_000
    assert cam[0].image.shape == (120, 160, 3) and cam[0].gt.shape == (120, 160) and cam[0].ontology == "sim"
    assert lid[0].gt.shape == (len(lid[0].points),) and lid[0].pose.shape == (4, 4) and lid[0].calib is not None
    assert cam[0].meta["read_ms"] == 0.0 and cam[0].meta["render_ms"] > 0
    assert not np.allclose(cam[0].pose, lid[0].pose)  # camera pose vs LiDAR pose
    with SimSource("sim:frames=1,camera=tiny,lidar=none", lidar=False) as src:
        assert src.topics == {"/sim/camera/image": "camera"}
    with pytest.raises(ConfigError, match="keys seed, domain"):
        parse_sim_spec("sim:fps=3")
    with pytest.raises(ConfigError, match="frames must be a int"):
        parse_sim_spec("sim:frames=many")
    with pytest.raises(ConfigError, match="no LiDAR"):
        SimSource("sim:lidar=none", lidar=True)


def test_open_source_dispatch_and_errors(sim_root: Path, tmp_path: Path) -> None:
    cases = {
        str(sim_root / "bags" / "train"): BagSource,
        str(sim_root / "camera"): DatasetSource,
        str(sim_root / "camera" / "images" / "train"): ImageSequenceSource,
        "sim:frames=1,camera=tiny": SimSource,
    }
    for spec, cls in cases.items():
        src = open_source(spec, camera=True, lidar=False, realtime=True)
        assert type(src) is cls and src.realtime
        src.close()
    src = open_source(sim_root / "lidar" / "sequences" / "00" / "velodyne", camera=False, lidar=True)
    assert type(src) is ScanFolderSource
    src = open_source(sim_root / "lidar", camera=False, lidar=True, options={"ontology": "sim"}, max_frames=1)
    assert type(src) is DatasetSource and len(list(src)) == 1
    with pytest.raises(DataError, match="source not found"):
        open_source(tmp_path / "missing.bag")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="unknown source type '.txt'"):
        open_source(tmp_path / "notes.txt")
    with pytest.raises(ConfigError, match="camera_topics applies to bags"):
        open_source(sim_root / "camera", camera_topics=["/x"])
    with pytest.raises(ConfigError, match="no point clouds for the LiDAR model"):
        open_source(sim_root / "camera" / "images" / "train" / "000000.png", lidar=True)
    with pytest.raises(ConfigError, match="playback speed"):
        open_source("sim", speed=0)
