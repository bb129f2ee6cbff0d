"""LiDAR dataset readers: SemanticKITTI, RELLIS-3D (LiDAR + camera) and GOOSE 3D."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from terraseg.datasets.frame import invert_transform
from terraseg.datasets.goose3d import Goose3DDataset, parse_goose_name
from terraseg.datasets.rellis3d import (
    Rellis3DImageDataset,
    Rellis3DLidarDataset,
    find_rellis_calibration,
    parse_rellis_image_name,
    rellis_calibration_candidates,
)
from terraseg.datasets.semantickitti import SemanticKITTIDataset, kitti_lidar_poses
from terraseg.errors import DataError
from terraseg.io.calib import quaternion_to_matrix, read_pose_yaml, write_kitti_calib, write_kitti_poses
from terraseg.io.labels import write_label_png
from terraseg.io.scans import write_bin, write_label
from terraseg.ontology import LabelMap

RNG = np.random.default_rng(0)
SK_RAW = np.array([0, 1, 10, 40, 50, 70, 252, 254], dtype=np.uint16)
SK_TRAIN = np.array([0, 0, 1, 9, 13, 15, 1, 6], dtype=np.uint8)  # learning_map of SK_RAW
RELLIS_RAW = np.array([0, 1, 3, 4, 17, 19, 23, 34], dtype=np.uint16)
RELLIS_TRAIN = np.array([0, 1, 2, 3, 12, 14, 15, 19], dtype=np.uint8)


def rigid(seed: int) -> np.ndarray:
    """A random 4x4 rigid transform."""
    r = np.random.default_rng(seed)
    T = np.eye(4)
    T[:3, :3] = quaternion_to_matrix(*r.normal(size=4))
    T[:3, 3] = r.normal(size=3) * 5
    return T


def scan(n: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    pts = r.normal(size=(n, 4)).astype(np.float32) * 10
    pts[:, 3] = r.random(n)
    return pts


def link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


# ====================================================================== SemanticKITTI
TR = rigid(1)
P2 = np.array([[700.0, 0, 600, 45.0], [0, 700.0, 180, -0.3], [0, 0, 1, 0.004]])


def make_kitti(root: Path, seqs: dict[str, int], labels: bool = True, calib: bool = True,
               poses: bool = True, times: bool = True) -> dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Write a SemanticKITTI tree; returns per sequence [(points, raw semantic, instance), ...]."""
    out: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for s, (seq, n) in enumerate(seqs.items()):
        d = root / "sequences" / seq
        out[seq] = []
        for i in range(n):
            pts = scan(20 + i, seed=100 * s + i)
            sem = SK_RAW[np.arange(len(pts)) % len(SK_RAW)]
            inst = (np.arange(len(pts)) % 3).astype(np.uint16) * (7 + i)
            write_bin(d / "velodyne" / f"{i:06d}.bin", pts)
            if labels:
                write_label(d / "labels" / f"{i:06d}.label", sem, inst)
            out[seq].append((pts, sem, inst))
        if calib:
            write_kitti_calib(d / "calib.txt", P2, TR)
        if poses:
            cam = np.stack([np.eye(4)] + [rigid(1000 + 10 * s + i) for i in range(1, n)])
            write_kitti_poses(d / "poses.txt", cam)
        if times:
            (d / "times.txt").write_text("".join(f"{0.1 * i:.6e}\n" for i in range(n)))
    return out


@pytest.fixture
def kitti(tmp_path: Path) -> tuple[Path, dict]:
    data = make_kitti(tmp_path, {"00": 3, "08": 2, "11": 2})
    # test sequences have no labels and no poses, as in the official release
    shutil.rmtree(tmp_path / "sequences" / "11" / "labels", ignore_errors=True)
    (tmp_path / "sequences" / "11" / "poses.txt").unlink()
    return tmp_path, data


def test_semantickitti_splits_and_ids(kitti: tuple[Path, dict]) -> None:
    root, _ = kitti
    train = SemanticKITTIDataset(root, "train")
    assert len(train) == 3 and train.sequences == ("00",)
    assert train.missing_sequences == ("01", "02", "03", "04", "05", "06", "07", "09", "10")
    assert train.frame_ids() == ["00/000000", "00/000001", "00/000002"]
    assert len(SemanticKITTIDataset(root, "val")) == 2
    assert len(SemanticKITTIDataset(root, "all")) == 7
    custom = SemanticKITTIDataset(root, [0, "8"])
    assert custom.sequences == ("00", "08") and len(custom) == 5 and custom.split == "custom"
    assert custom[-1].frame_id == "08/000001" and custom[-1].sequence == "08"
    assert custom[3].frame_id == "08/000000" and custom[-5].frame_id == "00/000000"
    with pytest.raises(IndexError):
        custom[5]
    with pytest.raises(DataError, match=r"sequences \['05'\] not found"):
        SemanticKITTIDataset(root, ["05"])
    with pytest.raises(DataError, match="unknown split"):
        SemanticKITTIDataset(root, "training")


def test_semantickitti_points_labels_instances(kitti: tuple[Path, dict]) -> None:
    root, data = kitti
    f = SemanticKITTIDataset(root, "val")[1]
    pts, sem, inst = data["08"][1]
    assert f.points.dtype == np.float32 and f.points.shape == (21, 4)
    assert f.point_fields == ("x", "y", "z", "intensity")
    np.testing.assert_array_equal(f.points, pts)
    assert f.ontology == "semantickitti" and f.point_labels.dtype == np.uint8
    np.testing.assert_array_equal(f.point_labels, SK_TRAIN[np.arange(21) % len(SK_RAW)])
    assert f.point_instances.dtype == np.uint16
    np.testing.assert_array_equal(f.point_instances, inst)
    assert f.meta["scan_index"] == 1
    assert f.source["points"] == root / "sequences/08/velodyne/000001.bin"
    assert f.source["point_labels"] == root / "sequences/08/labels/000001.label"
    raw = SemanticKITTIDataset(root, "val", remap=None)[1]
    assert raw.ontology == "semantickitti-raw" and raw.point_labels.dtype == np.uint16
    np.testing.assert_array_equal(raw.point_labels, sem)
    assert SemanticKITTIDataset(root, "val", remap=None).ontology.name == "semantickitti-raw"


def test_semantickitti_test_split_has_no_labels(kitti: tuple[Path, dict]) -> None:
    root, _ = kitti
    ds = SemanticKITTIDataset(root, "test")
    f = ds[0]
    assert len(ds) == 2 and f.point_labels is None and f.point_instances is None
    assert f.pose is None  # no poses.txt for test sequences
    assert f.timestamp == pytest.approx(0.0) and ds[1].timestamp == pytest.approx(0.1)


def test_semantickitti_poses_are_lidar_poses(kitti: tuple[Path, dict]) -> None:
    root, data = kitti
    ds = SemanticKITTIDataset(root, ["00"])
    cam = np.stack([np.eye(4), rigid(1001), rigid(1002)])
    frames = list(ds)
    for i, f in enumerate(frames):
        assert f.pose.shape == (4, 4) and f.pose.dtype == np.float64
        np.testing.assert_allclose(f.pose, np.linalg.inv(TR) @ cam[i] @ TR, atol=1e-6)
    np.testing.assert_allclose(frames[0].pose, np.eye(4), atol=1e-9)
    # a static world point seen from each scan maps to the same world point with every pose
    X_cam0 = np.array([3.0, -1.0, 12.0, 1.0])
    worlds = [f.pose @ (np.linalg.inv(TR) @ np.linalg.inv(cam[i]) @ X_cam0) for i, f in enumerate(frames)]
    np.testing.assert_allclose(worlds, [np.linalg.inv(TR) @ X_cam0] * 3, atol=1e-6)
    np.testing.assert_allclose(kitti_lidar_poses(cam, TR)[2], frames[2].pose, atol=1e-12)
    frames[0].pose[0, 0] = 42.0  # frames get copies: the cache is untouched
    assert ds[0].pose[0, 0] == pytest.approx(1.0)


def test_semantickitti_calibration_projects_like_kitti(kitti: tuple[Path, dict]) -> None:
    root, _ = kitti
    f = SemanticKITTIDataset(root, "val")[0]
    assert f.source["calib"] == root / "sequences/08/calib.txt"
    p = np.array([[5.0, 1.0, -0.5, 1.0], [20.0, -3.0, 1.0, 1.0]]).T
    cam = f.calib.T_cam_lidar @ p
    uv_ours = (f.calib.K @ cam[:3]) / (f.calib.K @ cam[:3])[2]
    ref = P2 @ TR @ p
    np.testing.assert_allclose(uv_ours, ref / ref[2], atol=1e-6)
    np.testing.assert_allclose(f.calib.K, P2[:, :3])
    assert SemanticKITTIDataset(root, "val", camera=None)[0].calib is None


def test_semantickitti_missing_labels_and_wrong_root(tmp_path: Path) -> None:
    make_kitti(tmp_path, {"00": 1}, labels=False)
    with pytest.raises(DataError, match=r"sequences/00/labels: label folder not found .*labelled") as exc:
        SemanticKITTIDataset(tmp_path, "train")
    assert "labels=False" in str(exc.value)
    f = SemanticKITTIDataset(tmp_path, "train", labels=False)[0]
    assert f.point_labels is None and f.points.shape == (20, 4)
    with pytest.raises(DataError, match="no 'sequences' folder.*sequences/NN/velodyne"):
        SemanticKITTIDataset(tmp_path / "sequences" / "00", "train")
    with pytest.raises(DataError, match="pass its parent"):
        SemanticKITTIDataset(tmp_path / "sequences", "train")
    with pytest.raises(DataError, match="dataset root not found"):
        SemanticKITTIDataset(tmp_path / "nope", "train")
    with pytest.raises(DataError, match="none of the val sequences"):
        SemanticKITTIDataset(tmp_path, "val")


def test_semantickitti_labels_true_requires_labels_everywhere(tmp_path: Path) -> None:
    make_kitti(tmp_path, {"11": 1}, labels=False, poses=False)
    assert SemanticKITTIDataset(tmp_path, "test")[0].point_labels is None
    with pytest.raises(DataError, match="labels=True"):
        SemanticKITTIDataset(tmp_path, "test", labels=True)


def test_semantickitti_bad_files(kitti: tuple[Path, dict]) -> None:
    root, _ = kitti
    seq = root / "sequences" / "00"
    (seq / "velodyne" / "000001.bin").write_bytes(b"\0" * 10)
    ds = SemanticKITTIDataset(root, "train")
    with pytest.raises(DataError, match=r"000001\.bin: size 10 bytes is not a multiple of the point size"):
        ds[1]
    write_label(seq / "labels" / "000002.label", np.zeros(5, np.uint16))
    with pytest.raises(DataError, match=r"000002\.label: 5 labels for a scan of 22 points"):
        ds[2]
    pts = scan(6, 1)
    pts[2, 1] = np.nan
    pts[4, 0] = np.inf
    write_bin(seq / "velodyne" / "000000.bin", pts)
    write_label(seq / "labels" / "000000.label", np.zeros(6, np.uint16))
    with pytest.raises(DataError, match=r"000000\.bin: 2 points have NaN or infinite coordinates \(first at index 2\)"):
        ds[0]
    pts = scan(6, 1)
    pts[3, 3] = np.nan  # a NaN intensity is not a coordinate error
    write_bin(seq / "velodyne" / "000000.bin", pts)
    assert np.isnan(ds[0].points[3, 3])


def test_semantickitti_unknown_raw_id_names_file(kitti: tuple[Path, dict]) -> None:
    root, _ = kitti
    write_label(root / "sequences/08/labels/000000.label", np.full(20, 7, np.uint16))
    with pytest.raises(DataError, match=r"08/labels/000000\.label: 20 values are not ids"):
        SemanticKITTIDataset(root, "val")[0]
    assert SemanticKITTIDataset(root, "val", remap=None)[0].point_labels[0] == 7


def test_semantickitti_pose_problems(tmp_path: Path) -> None:
    make_kitti(tmp_path, {"00": 2}, calib=False)
    with pytest.raises(DataError, match=r"poses\.txt: KITTI poses are cam0 poses.*'Tr'.*calib\.txt"):
        SemanticKITTIDataset(tmp_path, "train")[0]
    assert SemanticKITTIDataset(tmp_path, "train", poses=False)[0].pose is None
    write_kitti_calib(tmp_path / "sequences/00/calib.txt", P2, TR)
    write_kitti_poses(tmp_path / "sequences/00/poses.txt", np.eye(4)[None])
    ds = SemanticKITTIDataset(tmp_path, "train")
    assert ds[0].pose is not None
    with pytest.raises(DataError, match=r"poses\.txt: no pose for scan 1 \(the file has 1\)"):
        ds[1]


# ====================================================================== RELLIS-3D LiDAR
def make_rellis(root: Path) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Sequences 00000 (3 scans, train) and 00001 (2 scans, val; scan-only list for test)."""
    out: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for seq, n, split in (("00000", 3, "train"), ("00001", 2, "val")):
        out[seq] = []
        for i in range(n):
            pts = scan(12, seed=10 * int(seq) + i)
            pts[::3, :3] = 0.0  # no-return points at the origin
            pts[1, 0] = 0.0  # a point with x = 0 only is a real return
            sem = RELLIS_RAW[np.arange(12) % len(RELLIS_RAW)]
            sem[::3] = 0
            write_bin(root / seq / "os1_cloud_node_kitti_bin" / f"{i:06d}.bin", pts)
            write_label(root / seq / "os1_cloud_node_semantickitti_label_id" / f"{i:06d}.label", sem)
            lines[split].append(f"{seq}/os1_cloud_node_kitti_bin/{i:06d}.bin "
                                f"{seq}/os1_cloud_node_semantickitti_label_id/{i:06d}.label")
            out[seq].append((pts, sem))
    lines["test"] = ["# scan-only list", "00001/os1_cloud_node_kitti_bin/000001.bin", ""]
    for split, ls in lines.items():
        (root / f"pt_{split}.lst").write_text("\n".join(ls) + "\n")
    return out


def test_rellis_lidar_splits_ids_remap(tmp_path: Path) -> None:
    data = make_rellis(tmp_path)
    train = Rellis3DLidarDataset(tmp_path, "train")
    assert len(train) == 3 and train.frame_ids() == ["00000/000000", "00000/000001", "00000/000002"]
    assert len(Rellis3DLidarDataset(tmp_path, "val")) == 2
    alls = Rellis3DLidarDataset(tmp_path, "all")
    assert len(alls) == 6 and alls[-1].frame_id == "00001/000001"
    f = train[-1]
    assert f.frame_id == "00000/000002" and f.sequence == "00000" and f.ontology == "rellis3d"
    pts, sem = data["00000"][2]
    np.testing.assert_array_equal(f.points, pts)
    lut = dict(zip(RELLIS_RAW.tolist(), RELLIS_TRAIN.tolist()))
    np.testing.assert_array_equal(f.point_labels, [lut[v] for v in sem.tolist()])
    assert f.point_labels.dtype == np.uint8 and f.point_instances.dtype == np.uint16
    raw = Rellis3DLidarDataset(tmp_path, "train", remap=None)[2]
    assert raw.ontology == "rellis3d-raw"
    np.testing.assert_array_equal(raw.point_labels, sem)
    assert f.pose is None and f.timestamp is None and f.calib is None and "kept_index" not in f.meta


def test_rellis_lidar_drop_origin(tmp_path: Path) -> None:
    data = make_rellis(tmp_path)
    f = Rellis3DLidarDataset(tmp_path, "val", remap=None, drop_origin=True)[1]
    pts, sem = data["00001"][1]
    kept = f.meta["kept_index"]
    origin = np.arange(12) % 3 == 0
    np.testing.assert_array_equal(kept, np.flatnonzero(~origin))
    assert kept.dtype == np.int64 and f.meta["num_points_raw"] == 12
    assert f.points.shape == (8, 4) and not (f.points[:, :3] == 0).all(axis=1).any()
    np.testing.assert_array_equal(f.points, pts[kept])
    np.testing.assert_array_equal(f.point_labels, sem[kept])
    assert len(f.point_instances) == 8
    full = np.zeros(12, np.uint16)  # projecting predictions back
    full[kept] = f.point_labels
    np.testing.assert_array_equal(full, sem)


def test_rellis_lidar_scan_only_list_and_labels_option(tmp_path: Path) -> None:
    data = make_rellis(tmp_path)
    test = Rellis3DLidarDataset(tmp_path, "test", remap=None)
    assert len(test) == 1 and test.frame_ids() == ["00001/000001"]
    np.testing.assert_array_equal(test[0].point_labels, data["00001"][1][1])  # derived label path
    assert Rellis3DLidarDataset(tmp_path, "train", labels=False)[0].point_labels is None
    os.rename(tmp_path / "00001" / "os1_cloud_node_semantickitti_label_id", tmp_path / "00001" / "other")
    assert Rellis3DLidarDataset(tmp_path, "test")[0].point_labels is None
    with pytest.raises(DataError, match=r"os1_cloud_node_semantickitti_label_id: label folder not found .*line 2"):
        Rellis3DLidarDataset(tmp_path, "test", labels=True)
    ds = Rellis3DLidarDataset(tmp_path, "test", label_dir="other", remap=None)
    np.testing.assert_array_equal(ds[0].point_labels, data["00001"][1][1])
    with pytest.raises(DataError, match=r"000000\.label: label file not found"):
        Rellis3DLidarDataset(tmp_path, "val")[0]  # listed label column must exist


def test_rellis_list_and_root_errors(tmp_path: Path) -> None:
    make_rellis(tmp_path)
    absolute = tmp_path / "00001/os1_cloud_node_kitti_bin/000001.bin"
    (tmp_path / "pt_val.lst").write_text(f"{absolute}\n")
    assert Rellis3DLidarDataset(tmp_path, "val").frame_ids() == ["00001/000001"]
    (tmp_path / "pt_val.lst").write_text("00001/os1_cloud_node_kitti_bin/000000.bin\na b c\n")
    with pytest.raises(DataError, match=r"pt_val\.lst: line 2 has 3 columns"):
        Rellis3DLidarDataset(tmp_path, "val")
    (tmp_path / "pt_val.lst").unlink()
    with pytest.raises(DataError, match=r"pt_val\.lst: split list not found; expected the RELLIS-3D LiDAR layout"):
        Rellis3DLidarDataset(tmp_path, "val")
    with pytest.raises(DataError, match=r"000000\.bin: file not found \(line 1 of .*pt_train\.lst\); is .* the folder"):
        Rellis3DLidarDataset(_moved_lists(tmp_path), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no split lists"):
        Rellis3DLidarDataset(tmp_path / "empty", "all")


def _moved_lists(root: Path) -> Path:
    """A folder holding copies of the lists but not the sequence folders (a wrong ROOT)."""
    other = root / "lists_only"
    other.mkdir()
    (other / "pt_train.lst").write_text((root / "pt_train.lst").read_text())
    return other


def test_rellis_bad_scan_and_label_count(tmp_path: Path) -> None:
    make_rellis(tmp_path)
    write_label(tmp_path / "00000/os1_cloud_node_semantickitti_label_id/000001.label", np.zeros(3, np.uint16))
    ds = Rellis3DLidarDataset(tmp_path, "train", drop_origin=True)
    with pytest.raises(DataError, match=r"000001\.label: 3 labels for a scan of 12 points"):
        ds[1]
    (tmp_path / "00000/os1_cloud_node_kitti_bin/000002.bin").write_bytes(b"\0" * 6)
    with pytest.raises(DataError, match="not a multiple of the point size"):
        ds[2]


def write_transforms(path: Path, T: np.ndarray) -> None:
    """Write a RELLIS transforms.yaml storing the pose T (as quaternion + translation)."""
    R = T[:3, :3]
    w = np.sqrt(max(0.0, 1 + np.trace(R))) / 2
    x = (R[2, 1] - R[1, 2]) / (4 * w)
    y = (R[0, 2] - R[2, 0]) / (4 * w)
    z = (R[1, 0] - R[0, 1]) / (4 * w)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"os1_cloud_node-pylon_camera_node": {
        "q": {"w": float(w), "x": float(x), "y": float(y), "z": float(z)},
        "t": {"x": float(T[0, 3]), "y": float(T[1, 3]), "z": float(T[2, 3])}}}))


def small_rotation_pose(seed: int) -> np.ndarray:
    T = rigid(seed)
    T[:3, :3] = quaternion_to_matrix(1.0, 0.1 * seed, -0.05, 0.02)  # w > 0: stable conversion
    return T


def test_rellis_calibration_search_and_direction(tmp_path: Path) -> None:
    make_rellis(tmp_path)
    pose0, pose1, pose_dir = small_rotation_pose(1), small_rotation_pose(2), small_rotation_pose(3)
    write_transforms(tmp_path / "00000" / "transforms.yaml", pose0)
    write_transforms(tmp_path / "calib" / "00001_transforms.yaml", pose1)
    (tmp_path / "camera_info.txt").write_text("2813.6 2808.3 969.3 624.0\n")
    ds = Rellis3DLidarDataset(tmp_path, "all")
    f0, f1 = ds[0], ds[-1]
    np.testing.assert_allclose(f0.calib.T_cam_lidar, invert_transform(pose0), atol=1e-9)
    np.testing.assert_allclose(f1.calib.T_cam_lidar, invert_transform(pose1), atol=1e-9)
    np.testing.assert_allclose(f0.calib.K, [[2813.6, 0, 969.3], [0, 2808.3, 624.0], [0, 0, 1]])
    assert f0.calib.image_size == (1920, 1200)
    assert f0.source["transforms"] == tmp_path / "00000" / "transforms.yaml"
    assert f1.source["transforms"] == tmp_path / "calib" / "00001_transforms.yaml"
    assert f0.source["camera_info"] == tmp_path / "camera_info.txt"
    assert f0.calib is ds[1].calib  # read once per sequence ...
    with pytest.raises(ValueError):
        f0.calib.K[0, 0] = 1.0  # ... and shared read-only
    # calib_dir comes first
    cdir = tmp_path / "cam2lidar_transforms"
    write_transforms(cdir / "00000_transforms.yaml", pose_dir)
    f = Rellis3DLidarDataset(tmp_path, "train", calib_dir=cdir)[0]
    np.testing.assert_allclose(f.calib.T_cam_lidar, invert_transform(pose_dir), atol=1e-9)
    assert f.source["transforms"] == cdir / "00000_transforms.yaml"
    cands = rellis_calibration_candidates(tmp_path, "00000", cdir)
    assert cands["transforms"][:4] == [cdir / "00000_transforms.yaml", cdir / "00000" / "transforms.yaml",
                                       cdir / "transforms.yaml", tmp_path / "00000" / "transforms.yaml"]
    assert cands["camera_info"][-1] == tmp_path / "camera_info.txt"
    with pytest.raises(DataError, match="calibration folder not found"):
        Rellis3DLidarDataset(tmp_path, "train", calib_dir=tmp_path / "nope")
    # only intrinsics / nothing
    (tmp_path / "00000" / "transforms.yaml").unlink()
    calib, files = find_rellis_calibration(tmp_path, "00000")
    assert calib.T_cam_lidar is None and calib.K is not None and set(files) == {"camera_info"}
    (tmp_path / "camera_info.txt").unlink()
    assert find_rellis_calibration(tmp_path, "00000") == (None, {})


def test_rellis_poses_and_times(tmp_path: Path) -> None:
    make_rellis(tmp_path)
    poses = np.stack([rigid(50 + i) for i in range(3)])
    write_kitti_poses(tmp_path / "00000" / "poses.txt", poses)
    (tmp_path / "00000" / "times.txt").write_text("0.0\n0.1\n0.2\n")
    ds = Rellis3DLidarDataset(tmp_path, "train")
    np.testing.assert_allclose(ds[1].pose, poses[1], atol=1e-7)  # no calib.txt: LiDAR poses as they are
    assert ds[2].timestamp == pytest.approx(0.2)
    write_kitti_calib(tmp_path / "00000" / "calib.txt", np.eye(3, 4), np.eye(4))  # the RELLIS identity Tr
    np.testing.assert_allclose(Rellis3DLidarDataset(tmp_path, "train")[1].pose, poses[1], atol=1e-7)
    assert Rellis3DLidarDataset(tmp_path, "train", poses=False)[1].pose is None
    assert Rellis3DLidarDataset(tmp_path, "val")[0].pose is None  # 00001 has no poses.txt


# ====================================================================== RELLIS-3D camera
def make_rellis_images(root: Path) -> np.ndarray:
    mask = RELLIS_RAW[np.arange(6 * 8).reshape(6, 8) % len(RELLIS_RAW)].astype(np.uint8)
    names = ["frame000000-1581624652_750", "frame000001-1581624652_950", "frame000002-1581624653_050"]
    lines = []
    for i, n in enumerate(names):
        img = (np.arange(6 * 8 * 3).reshape(6, 8, 3) * (i + 1) % 256).astype(np.uint8)
        p = root / "00000" / "pylon_camera_node" / f"{n}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(p, quality=95)
        write_label_png(root / "00000" / "pylon_camera_node_label_id" / f"{n}.png", mask)
        lines.append(f"00000/pylon_camera_node/{n}.jpg 00000/pylon_camera_node_label_id/{n}.png")
    (root / "train.lst").write_text("\n".join(lines[:2]) + "\n")
    (root / "val.lst").write_text(lines[2].split()[0] + "\n")  # image-only list
    return mask


def test_rellis_image_dataset(tmp_path: Path) -> None:
    mask = make_rellis_images(tmp_path)
    ds = Rellis3DImageDataset(tmp_path, "train")
    assert len(ds) == 2 and ds.frame_ids() == ["00000/frame000000-1581624652_750", "00000/frame000001-1581624652_950"]
    f = ds[-1]
    assert f.image.shape == (6, 8, 3) and f.image.dtype == np.uint8
    assert f.timestamp == pytest.approx(1581624652.950, abs=1e-6) and f.meta["frame_index"] == 1
    assert f.ontology == "rellis3d" and f.sequence == "00000"
    np.testing.assert_array_equal(f.image_labels, LabelMap.builtin("rellis3d-raw", "rellis3d")(mask))
    raw = Rellis3DImageDataset(tmp_path, "train", remap=None)[0]
    np.testing.assert_array_equal(raw.image_labels, mask)
    assert raw.source["image_labels"].name == "frame000000-1581624652_750.png"
    val = Rellis3DImageDataset(tmp_path, "val", remap=None)[0]
    np.testing.assert_array_equal(val.image_labels, mask)  # derived from the image-only list
    assert len(Rellis3DImageDataset(tmp_path, "all")) == 3
    assert Rellis3DImageDataset(tmp_path, "train", labels=False)[0].image_labels is None
    write_label_png(tmp_path / "00000/pylon_camera_node_label_id/frame000000-1581624652_750.png", mask[:5])
    with pytest.raises(DataError, match="image 8x6 and mask 8x5 differ in size"):
        ds[0]


def test_parse_rellis_image_name() -> None:
    assert parse_rellis_image_name("frame000104-1581624663_149") == (104, pytest.approx(1581624663.149))
    assert parse_rellis_image_name("frame000001-1581624652_050")[1] == pytest.approx(1581624652.05)
    assert parse_rellis_image_name("image_0001") is None


# ====================================================================== GOOSE 3D
GOOSE_NAMES = {
    ("train", "2022-07-22_flight"): ["2022-07-22_flight__0071_1658494234334310308",
                                     "2022-07-22_flight__0072_1658494234434310308"],
    ("train", "2023-05-17_neubiberg_sunny"): ["2023-05-17_neubiberg_sunny__0366_1684329686270285947"],
    ("val", "2023-05-15_neubiberg_rain"): ["2023-05-15_neubiberg_rain__0630_1684157871182323213"],
    ("test", "2023-01-01_x"): ["2023-01-01_x__0001_1672531200000000001"],
}


def make_goose(root: Path, scan_suffix: str = "_vls128.bin") -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = {}
    for k, ((split, scen), names) in enumerate(GOOSE_NAMES.items()):
        for i, name in enumerate(names):
            pts = scan(9 + i, seed=k * 10 + i)
            sem = (np.arange(len(pts)) * 7 % 64).astype(np.uint16)
            inst = np.arange(len(pts), dtype=np.uint16)
            write_bin(root / "lidar" / split / scen / f"{name}{scan_suffix}", pts)
            if split != "test":
                write_label(root / "labels" / split / scen / f"{name}_goose.label", sem, inst)
            out[name] = (pts, sem, inst)
    return out


def test_goose_splits_ids_timestamps(tmp_path: Path) -> None:
    data = make_goose(tmp_path)
    ds = Goose3DDataset(tmp_path, "train")
    assert ds.frame_ids() == ["2022-07-22_flight/2022-07-22_flight__0071_1658494234334310308",
                              "2022-07-22_flight/2022-07-22_flight__0072_1658494234434310308",
                              "2023-05-17_neubiberg_sunny/2023-05-17_neubiberg_sunny__0366_1684329686270285947"]
    f = ds[-1]
    name = "2023-05-17_neubiberg_sunny__0366_1684329686270285947"
    pts, sem, inst = data[name]
    np.testing.assert_array_equal(f.points, pts)
    np.testing.assert_array_equal(f.point_labels, sem)
    np.testing.assert_array_equal(f.point_instances, inst)
    assert f.ontology == "goose" and f.sequence == "2023-05-17_neubiberg_sunny"
    assert f.meta == {"split": "train", "frame_index": 366, "timestamp_ns": 1684329686270285947}
    assert f.timestamp == pytest.approx(1684329686.270285947, abs=1e-6)
    assert f.source["point_labels"].name == f"{name}_goose.label"
    assert len(Goose3DDataset(tmp_path, "val")) == 1
    test = Goose3DDataset(tmp_path, "test")
    assert len(test) == 1 and test[0].point_labels is None
    alls = Goose3DDataset(tmp_path, "all")
    assert len(alls) == 5 and alls[-1].meta["split"] == "test" and alls.splits == ("train", "val", "test")
    assert parse_goose_name("a__0001_123") is None


def test_goose_remap_and_errors(tmp_path: Path) -> None:
    data = make_goose(tmp_path, scan_suffix="_pcl.bin")
    with pytest.raises(DataError, match=r"no '\*_vls128\.bin' scans"):
        Goose3DDataset(tmp_path, "train")
    ds = Goose3DDataset(tmp_path, "val", remap="traversability", scan_suffix="_pcl.bin")
    f = ds[0]
    sem = data["2023-05-15_neubiberg_rain__0630_1684157871182323213"][1]
    np.testing.assert_array_equal(f.point_labels, LabelMap.builtin("goose", "traversability")(sem))
    assert f.ontology == "traversability"
    shutil.rmtree(tmp_path / "labels" / "val")
    with pytest.raises(DataError, match=r"labels/val: label folder not found \(the GOOSE val split is labelled"):
        Goose3DDataset(tmp_path, "val", scan_suffix="_pcl.bin")
    assert Goose3DDataset(tmp_path, "val", scan_suffix="_pcl.bin", labels=False)[0].point_labels is None
    with pytest.raises(DataError, match="labels=True"):
        Goose3DDataset(tmp_path, "test", scan_suffix="_pcl.bin", labels=True)
    with pytest.raises(DataError, match=r"no 'lidar' folder; expected the GOOSE 3D layout"):
        Goose3DDataset(tmp_path / "labels", "train")
    shutil.rmtree(tmp_path / "lidar" / "val")
    with pytest.raises(DataError, match=r"lidar/val: split folder not found \(present: train, test\)"):
        Goose3DDataset(tmp_path, "val")


# ====================================================================== real data
def kitti_tree(tmp_path: Path, bin_file: Path, label_file: Path) -> Path:
    link(bin_file, tmp_path / "sequences" / "00" / "velodyne" / "000000.bin")
    link(label_file, tmp_path / "sequences" / "00" / "labels" / "000000.label")
    return tmp_path


@pytest.mark.realdata
def test_real_semantickitti_scan(shared_data: Path, tmp_path: Path) -> None:
    root = kitti_tree(tmp_path, shared_data / "spvnas/000000.bin", shared_data / "spvnas/000000.label")
    f = SemanticKITTIDataset(root, "train")[0]
    raw = SemanticKITTIDataset(root, "train", remap=None)[0]
    assert f.points.shape == (123389, 4) and f.points.dtype == np.float32
    assert f.frame_id == "00/000000"
    words = np.fromfile(shared_data / "spvnas/000000.label", dtype="<u4")
    np.testing.assert_array_equal(raw.point_labels, words & 0xFFFF)
    np.testing.assert_array_equal(raw.point_instances, words >> 16)
    for moving, train_id in ((252, 1), (254, 6)):  # moving-car -> car, moving-person -> person
        sel = raw.point_labels == moving
        assert sel.sum() > 0
        assert (f.point_labels[sel] == train_id).all()
    # the class histogram equals the upstream learning_map applied by hand
    cfg = yaml.safe_load((shared_data / "semantic-kitti-api/semantic-kitti.yaml").read_text())
    lut = np.zeros(max(cfg["learning_map"]) + 1, dtype=np.int64)
    for k, v in cfg["learning_map"].items():
        lut[k] = v
    expected = np.bincount(lut[raw.point_labels], minlength=20)
    np.testing.assert_array_equal(np.bincount(f.point_labels, minlength=20), expected)
    assert expected[1] > 0 and expected[6] > 0


@pytest.mark.realdata
def test_real_mmdet3d_50_points(shared_data: Path, tmp_path: Path) -> None:
    d = shared_data / "mmdet3d"
    root = kitti_tree(tmp_path, d / "semantickitti_000000_50pts.bin", d / "semantickitti_000000_50pts.label")
    f = SemanticKITTIDataset(root, ["00"])[0]
    raw = SemanticKITTIDataset(root, ["00"], remap=None)[0]
    assert f.points.shape == (50, 4)
    assert set(np.unique(raw.point_labels).tolist()) == {0, 50, 52, 70, 71, 80}
    lut = {0: 0, 50: 13, 52: 0, 70: 15, 71: 16, 80: 18}
    np.testing.assert_array_equal(f.point_labels, [lut[v] for v in raw.point_labels.tolist()])


def rellis_tree(root: Path, data: Path, seq: str = "00000") -> Path:
    link(data / "000104.bin", root / seq / "os1_cloud_node_kitti_bin" / "000104.bin")
    link(data / "000104.label", root / seq / "os1_cloud_node_semantickitti_label_id" / "000104.label")
    stem = "frame000104-1581624663_149"
    link(data / f"{stem}.jpg", root / seq / "pylon_camera_node" / f"{stem}.jpg")
    link(data / f"{stem}.png", root / seq / "pylon_camera_node_label_id" / f"{stem}.png")
    (root / "pt_val.lst").write_text(f"{seq}/os1_cloud_node_kitti_bin/000104.bin "
                                     f"{seq}/os1_cloud_node_semantickitti_label_id/000104.label\n")
    (root / "val.lst").write_text(f"{seq}/pylon_camera_node/{stem}.jpg {seq}/pylon_camera_node_label_id/{stem}.png\n")
    return root


@pytest.mark.realdata
def test_real_rellis_scan_and_image(shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "rellis3d"
    root = rellis_tree(tmp_path, data)
    link(data / "transforms.yaml", root / "00000" / "transforms.yaml")
    link(data / "camera_info.txt", root / "00000" / "camera_info.txt")
    full = Rellis3DLidarDataset(root, "val", remap=None)[0]
    assert full.points.shape == (131072, 4) and full.frame_id == "00000/000104"
    lidar = Rellis3DLidarDataset(root, "val", remap=None, drop_origin=True)[0]
    kept = lidar.meta["kept_index"]
    assert lidar.meta["num_points_raw"] == 131072 and len(lidar.points) == 131072 - 53364
    dropped = np.setdiff1d(np.arange(131072), kept)
    assert len(dropped) == 53364 and (full.points[dropped, :3] == 0).all()
    assert (full.point_labels[dropped] == 0).all()  # no-return points are void
    np.testing.assert_array_equal(lidar.point_labels, full.point_labels[kept])

    img = Rellis3DImageDataset(root, "val", remap=None)[0]
    assert img.image.shape == (1200, 1920, 3) and img.image_labels.shape == (1200, 1920)
    assert img.timestamp == pytest.approx(1581624663.149, abs=1e-6) and img.meta["frame_index"] == 104
    assert img.calib.image_size == (1920, 1200)
    np.testing.assert_allclose(img.calib.K[0], [2813.643275, 0, 969.285772])

    # T_cam_lidar (the inverse of the stored pose) projects LiDAR labels onto matching mask pixels
    def agreement(T: np.ndarray) -> tuple[int, float]:
        p = lidar.xyz.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        z = np.where(p[:, 2] > 0, p[:, 2], np.nan)
        u = img.calib.K[0, 0] * p[:, 0] / z + img.calib.K[0, 2]
        v = img.calib.K[1, 1] * p[:, 1] / z + img.calib.K[1, 2]
        ok = (z > 0) & (u >= 0) & (u < 1920) & (v >= 0) & (v < 1200)
        hit = img.image_labels[v[ok].astype(int), u[ok].astype(int)] == lidar.point_labels[ok]
        return int(ok.sum()), float(hit.mean()) if ok.any() else 0.0

    n, agree = agreement(lidar.calib.T_cam_lidar)
    assert 7300 < n < 7550 and agree > 0.75
    assert agreement(read_pose_yaml(data / "transforms.yaml"))[1] < 0.05  # the stored pose, not inverted: wrong


@pytest.mark.realdata
def test_real_rellis_official_calib_dir(shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "rellis3d"
    cdir = data / "ontology" / "cam2lidar_transforms"
    root = rellis_tree(tmp_path, data, seq="00001")
    link(data / "camera_info.txt", root / "camera_info.txt")
    link(data / "transforms.yaml", root / "00001" / "transforms.yaml")
    f = Rellis3DLidarDataset(root, "val", calib_dir=cdir)[0]
    assert f.source["transforms"] == cdir / "00001_transforms.yaml"
    np.testing.assert_allclose(f.calib.T_cam_lidar, invert_transform(read_pose_yaml(cdir / "00001_transforms.yaml")))
    example = Rellis3DLidarDataset(root, "val")[0].calib.T_cam_lidar
    shift = np.linalg.norm(invert_transform(f.calib.T_cam_lidar)[:3, 3] - invert_transform(example)[:3, 3])
    assert 0.2 < shift < 0.27  # the improved calibration moved the camera by about 0.23 m
