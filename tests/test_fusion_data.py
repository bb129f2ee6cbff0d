"""Paired camera + LiDAR frames: the readers (simulator, RELLIS-3D, SemanticKITTI with image_2,
nuScenes-lidarseg from its files), frame views and their errors, and the training samples."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from terraseg.errors import DataError
from terraseg.frame import Calibration, Frame
from terraseg.models.fusion import PointInputSpec, frame_view


# ------------------------------------------------------------------------------------- simulator
@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from terraseg.sim.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("simpair")
    simulate_dataset(root, frames=4, seed=7, camera="tiny", lidar="small", progress=False,
                     splits={"train": 0.5, "val": 0.5})
    return root


def test_sim_reader_pairs_camera_and_lidar(sim_root: Path) -> None:
    from terraseg.datasets import SimDataset, detect_kind, open_dataset

    assert detect_kind(sim_root) == "sim"
    ds = open_dataset(sim_root, split="train")
    assert isinstance(ds, SimDataset) and len(ds) == 2 and ds.frame_ids() == ["train/000000", "train/000001"]
    assert open_dataset(sim_root, split="all").frames_per_split == {"train": 2, "val": 2}
    f = ds[1]
    assert f.image.shape == (120, 160, 3) and f.image_labels.shape == (120, 160)
    assert f.points.shape[1] == 4 and len(f.point_labels) == len(f.points) and f.ontology == "sim"
    assert f.source["image"].name == "000001.png" and f.source["points"].parent.parent.name == "00"
    assert f.calib.image_size == (160, 120) and f.pose is not None
    # the calibration really maps this scan into this image: the mask agrees with the point labels
    v = frame_view(f)
    px = np.floor(v.uv + 0.5).astype(int)
    agree = float((f.image_labels[px[:, 1], px[:, 0]] == f.point_labels[v.index]).mean())
    assert 0.15 < v.fraction < 0.6 and agree > 0.75, (v.fraction, agree)
    # remapping applies to both label arrays
    g = open_dataset(sim_root, split="train", remap="traversability")[1]
    assert g.ontology == "traversability" and g.point_labels.max() < 8 and g.image_labels.max() < 8


def test_sim_reader_pair_mismatch_is_one_error(sim_root: Path, tmp_path: Path) -> None:
    from terraseg.datasets import SimDataset

    root = tmp_path / "sim"
    shutil.copytree(sim_root, root)
    scan = root / "lidar" / "sequences" / "08" / "velodyne" / "000001.bin"
    scan.unlink()
    with pytest.raises(DataError, match=r"camera/images/val/000001.png: image/scan pair mismatch: no scan .*"
                                        r"velodyne/000001.bin"):
        SimDataset(root, split="val")
    assert len(SimDataset(root, split="train")) == 2  # the other split is intact
    times = root / "lidar" / "sequences" / "00" / "times.txt"
    times.write_text("".join(f"{50.0 + i:.6e}\n" for i in range(2)))
    with pytest.raises(DataError, match=r"000000.bin: image/scan pair mismatch: the scan was taken at 50.0+ s"):
        SimDataset(root, split="train")[0]
    shutil.rmtree(root / "camera")
    with pytest.raises(DataError, match="no camera/ folder"):
        SimDataset(root, split="train")


# ------------------------------------------------------------------------------------- frame views
def _frame(points: np.ndarray, calib: Calibration | None, size: tuple[int, int] = (64, 48)) -> Frame:
    return Frame("seq/000007", image=np.zeros((size[1], size[0], 3), np.uint8), points=points.astype(np.float32),
                 point_labels=np.zeros(len(points), np.uint8), calib=calib, source={"points": Path("scan7.bin")})


def test_frame_view_by_hand_and_bad_frames() -> None:
    K = [[32.0, 0, 31.5], [0, 32.0, 23.5], [0, 0, 1]]
    cal = Calibration(K=K, T_cam_lidar=np.eye(4), image_size=(64, 48))
    pts = np.array([[0, 0, 4.0, 1], [2, 0, 4, 1], [0, 0, -3, 1], [40, 0, 4, 1], [0, 0, 0, 0]])
    v = frame_view(_frame(pts, cal))
    assert v.index.tolist() == [0, 1] and v.num_points == 5
    np.testing.assert_allclose(v.uv, [[31.5, 23.5], [47.5, 23.5]])
    # a half-size image of the same camera: the calibration is rescaled (pixel-centre convention)
    half = frame_view(_frame(pts, cal, (32, 24)))
    np.testing.assert_allclose(half.uv, [[15.5, 11.5], [23.5, 11.5]])
    with pytest.raises(DataError, match=r"scan7.bin \(frame seq/000007\): no calibration"):
        frame_view(_frame(pts, None))
    with pytest.raises(DataError, match="no LiDAR-to-camera transform T_cam_lidar"):
        frame_view(_frame(pts, Calibration(K=K, image_size=(64, 48))))
    with pytest.raises(DataError, match=r"frame seq/000007\): the image is 64x64 but the calibration is for 64x48"):
        frame_view(_frame(pts, cal, (64, 64)))
    flipped = Calibration(K=K, T_cam_lidar=np.diag([1.0, 1.0, -1.0, 1.0]) @ np.diag([-1.0, 1, 1, 1]), image_size=(64, 48))
    with pytest.raises(DataError, match=r"none of its 2 points projects into the 64x48 image"):
        frame_view(_frame(pts[:2], flipped))
    assert len(frame_view(_frame(pts[:2], flipped), require_points=False).index) == 0
    no_image = Frame("x", points=pts.astype(np.float32), calib=cal)
    with pytest.raises(DataError, match="need the camera image"):
        frame_view(no_image)


# ------------------------------------------------------------------------------------- RELLIS-3D
def _rellis_tree(shared: Path, root: Path) -> Path:
    d = shared / "rellis3d"
    seq = root / "00000"
    links = {"os1_cloud_node_kitti_bin/000104.bin": "000104.bin",
             "os1_cloud_node_semantickitti_label_id/000104.label": "000104.label",
             "pylon_camera_node/frame000104-1581624663_149.jpg": "frame000104-1581624663_149.jpg",
             "pylon_camera_node_label_id/frame000104-1581624663_149.png": "frame000104-1581624663_149.png",
             "transforms.yaml": "transforms.yaml", "camera_info.txt": "camera_info.txt"}
    for rel, name in links.items():
        (seq / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(d / name, seq / rel)
    (root / "pt_train.lst").write_text("00000/os1_cloud_node_kitti_bin/000104.bin "
                                       "00000/os1_cloud_node_semantickitti_label_id/000104.label\n")
    return root


@pytest.mark.realdata
def test_rellis_paired_frame_real_sample(shared_data: Path, tmp_path: Path) -> None:
    from terraseg.datasets import Rellis3DLidarDataset

    root = _rellis_tree(shared_data, tmp_path / "rellis")
    ds = Rellis3DLidarDataset(root, split="train", images=True)
    f = ds[0]
    assert f.image.shape == (1200, 1920, 3) and f.image_labels.shape == (1200, 1920) and len(f.points) == 131072
    assert f.meta["image_timestamp"] == pytest.approx(1581624663.149)
    v = frame_view(f)
    # PROVENANCE.md: 7,429 of the 131,072 points land in the image; 77 % carry the mask's label
    assert len(v.index) == 7429 and v.fraction == pytest.approx(7429 / 131072)
    px = np.floor(v.uv + 0.5).astype(int)
    agree = float((f.image_labels[px[:, 1], px[:, 0]] == f.point_labels[v.index]).mean())
    assert agree == pytest.approx(0.7726, abs=0.005)
    # without its image the scan is a pair mismatch (or skipped on request)
    (root / "00000" / "pylon_camera_node" / "frame000104-1581624663_149.jpg").unlink()
    with pytest.raises(DataError, match=r"000104.bin: image/scan pair mismatch: no camera image frame000104-\*.jpg"):
        Rellis3DLidarDataset(root, split="train", images=True)
    with pytest.raises(DataError, match="no scan of split 'train' has its camera image"):
        Rellis3DLidarDataset(root, split="train", images=True, missing_images="skip")
    assert Rellis3DLidarDataset(root, split="train")[0].image is None  # the LiDAR-only reader is unchanged


# ------------------------------------------------------------------------------------- SemanticKITTI
KITTI_00_CALIB = """\
P0: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 0.000000000000e+00 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P2: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 4.538225000000e+01 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 -1.130887000000e-01 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 3.779761000000e-03
Tr: 4.276802385584e-04 -9.999672484946e-01 -8.084491683471e-03 -1.198459927713e-02 -7.210626507497e-03 8.081198471645e-03 -9.999413164504e-01 -5.403984729748e-02 9.999738645903e-01 4.859485810390e-04 -7.206933692422e-03 -2.921968648686e-01
"""
"""KITTI odometry sequence 00 calib.txt (P0, P2, Tr), as the odometry calibration download gives it."""


@pytest.mark.realdata
def test_semantickitti_with_image_2_real_scan(shared_data: Path, tmp_path: Path) -> None:
    from terraseg.datasets import SemanticKITTIDataset
    from terraseg.io.images import write_image

    seq = tmp_path / "kitti" / "sequences" / "00"
    for sub in ("velodyne", "labels", "image_2"):
        (seq / sub).mkdir(parents=True)
    os.symlink(shared_data / "spvnas" / "000000.bin", seq / "velodyne" / "000000.bin")
    os.symlink(shared_data / "spvnas" / "000000.label", seq / "labels" / "000000.label")
    (seq / "calib.txt").write_text(KITTI_00_CALIB)
    # no colour image of this scan is in ../shared/data: a blank 1241 x 376 one (the size of image_2)
    write_image(seq / "image_2" / "000000.png", np.zeros((376, 1241, 3), np.uint8))
    ds = SemanticKITTIDataset(tmp_path / "kitti", split="train", images=True, poses=False)
    f = ds[0]
    assert f.image.shape == (376, 1241, 3) and f.calib.image_size == (1241, 376) and len(f.points) == 123389
    v = frame_view(f)
    # the front camera sees a 16 % slice of the 360-degree scan (xMUDA keeps ~20k points per KITTI scan)
    assert 19000 < len(v.index) < 21000, len(v.index)
    lab = np.bincount(f.point_labels[v.index], minlength=20)
    # in front of the car: mostly road (9), sidewalk (11) and vegetation / buildings, no point behind
    assert lab[9] > 5000 and lab[11] > 3000
    assert (f.points[v.index, 0] > 0).all()  # x forward in the Velodyne frame
    (seq / "image_2" / "000000.png").unlink()
    with pytest.raises(DataError, match=r"000000.bin: image/scan pair mismatch: no camera image .*image_2/000000.png"):
        SemanticKITTIDataset(tmp_path / "kitti", split="train", images=True, poses=False)
    with pytest.raises(DataError, match="needs the camera"):
        SemanticKITTIDataset(tmp_path / "kitti", split="train", images=True, camera=None)


# ------------------------------------------------------------------------------------- nuScenes
def _quat(R: np.ndarray) -> list[float]:
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()
    return [float(w), float(x), float(y), float(z)]


R_EGO_LIDAR = np.array([[0.0, 1, 0], [-1, 0, 0], [0, 0, 1]])   # LiDAR x right, y forward, z up
R_EGO_CAM = np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])    # camera x right, y down, z forward


def _ego_to_lidar(p_ego: np.ndarray) -> np.ndarray:
    return (p_ego - np.array([1.0, 0.0, 1.8])) @ R_EGO_LIDAR  # R^T (p - t), row vectors


def make_nuscenes(root: Path, drop_camera_of: str | None = None) -> dict[str, np.ndarray]:
    """A hand-written nuScenes-lidarseg tree: two scenes (Singapore at night, Boston by day), one key
    frame each, a 160 x 90 front camera (K: f = 80, centre (80, 45)), ego motion of 0.5 m between the
    LiDAR and camera times."""
    from terraseg.io.images import write_image

    v = root / "v1.0-mini"
    for d in (v, root / "samples" / "LIDAR_TOP", root / "samples" / "CAM_FRONT", root / "lidarseg" / "v1.0-mini"):
        d.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[dict]] = {k: [] for k in ("scene", "log", "sample", "sample_data", "calibrated_sensor",
                                                      "sensor", "ego_pose", "lidarseg", "category")}
    tables["sensor"] = [{"token": "s_lidar", "channel": "LIDAR_TOP", "modality": "lidar"},
                        {"token": "s_cam", "channel": "CAM_FRONT", "modality": "camera"}]
    tables["calibrated_sensor"] = [
        {"token": "cs_lidar", "sensor_token": "s_lidar", "translation": [1.0, 0.0, 1.8], "rotation": _quat(R_EGO_LIDAR),
         "camera_intrinsic": []},
        {"token": "cs_cam", "sensor_token": "s_cam", "translation": [1.5, 0.0, 1.5], "rotation": _quat(R_EGO_CAM),
         "camera_intrinsic": [[80.0, 0.0, 80.0], [0.0, 80.0, 45.0], [0.0, 0.0, 1.0]]}]
    names = ["noise", "vehicle.car", "flat.driveable_surface", "static.vegetation"]
    index = {"noise": 0, "vehicle.car": 17, "flat.driveable_surface": 24, "static.vegetation": 30}
    tables["category"] = [{"token": f"c{i}", "name": n, "description": "", "index": index[n]} for i, n in enumerate(names)]
    tables["log"] = [{"token": "log_sg", "location": "singapore-onenorth"}, {"token": "log_bos", "location": "boston-seaport"}]
    # points in the ego frame at the LiDAR time: straight ahead, 2 m to the right, behind, the ground
    p_ego = np.array([[20.0, 0.0, 1.5], [20.0, -2.0, 1.5], [-5.0, 0.0, 1.5], [10.0, 0.0, 0.0]])
    raw_labels = np.array([17, 30, 24, 24], np.uint8)
    pts = np.zeros((4, 5), np.float32)
    pts[:, :3] = _ego_to_lidar(p_ego)
    pts[:, 3] = [10, 20, 30, 40]
    pts[:, 4] = [1, 2, 3, 4]
    for k, (scene, log, desc) in enumerate((("scene-0061", "log_sg", "Night, rain, peds"),
                                            ("scene-0103", "log_bos", "Parking lot, day"))):
        tables["scene"].append({"token": f"sc{k}", "name": scene, "description": desc, "log_token": log})
        t0 = 1_532_402_927_000_000 + k * 10_000_000
        tables["sample"].append({"token": f"smp{k}", "scene_token": f"sc{k}", "timestamp": t0})
        tables["ego_pose"] += [{"token": f"ep_l{k}", "translation": [10.0, 5.0, 0.0], "rotation": [1.0, 0, 0, 0]},
                               {"token": f"ep_c{k}", "translation": [10.5, 5.0, 0.0], "rotation": [1.0, 0, 0, 0]}]
        lid = f"samples/LIDAR_TOP/scan{k}.pcd.bin"
        pts.tofile(root / lid)
        tables["sample_data"].append({"token": f"sd_l{k}", "sample_token": f"smp{k}", "ego_pose_token": f"ep_l{k}",
                                      "calibrated_sensor_token": "cs_lidar", "timestamp": t0, "fileformat": "pcd",
                                      "is_key_frame": True, "height": 0, "width": 0, "filename": lid})
        if drop_camera_of != f"smp{k}":
            cam = f"samples/CAM_FRONT/img{k}.jpg"
            write_image(root / cam, np.full((90, 160, 3), 40 * (k + 1), np.uint8))
            tables["sample_data"].append({"token": f"sd_c{k}", "sample_token": f"smp{k}", "ego_pose_token": f"ep_c{k}",
                                          "calibrated_sensor_token": "cs_cam", "timestamp": t0 + 40_000,
                                          "fileformat": "jpg", "is_key_frame": True, "height": 90, "width": 160,
                                          "filename": cam})
        tables["sample_data"].append({"token": f"sd_c{k}_sweep", "sample_token": f"smp{k}", "ego_pose_token": f"ep_c{k}",
                                      "calibrated_sensor_token": "cs_cam", "timestamp": t0 + 90_000, "fileformat": "jpg",
                                      "is_key_frame": False, "height": 90, "width": 160,
                                      "filename": f"sweeps/CAM_FRONT/none{k}.jpg"})
        lab = f"lidarseg/v1.0-mini/sd_l{k}_lidarseg.bin"
        raw_labels.tofile(root / lab)
        tables["lidarseg"].append({"token": f"ls{k}", "sample_data_token": f"sd_l{k}", "filename": lab})
    for name, rows in tables.items():
        (v / f"{name}.json").write_text(json.dumps(rows))
    return {"points": pts, "raw_labels": raw_labels}


def test_nuscenes_reader_on_a_hand_written_tree(tmp_path: Path) -> None:
    from terraseg.datasets import NuScenesDataset, detect_kind, open_dataset

    data = make_nuscenes(tmp_path)
    assert detect_kind(tmp_path) == "nuscenes"
    ds = open_dataset(tmp_path)
    assert isinstance(ds, NuScenesDataset) and len(ds) == 2
    assert ds.frame_ids() == ["scene-0061/smp0", "scene-0103/smp1"]
    f = ds[0]
    assert f.points.shape == (4, 5) and f.point_fields == ("x", "y", "z", "intensity", "ring")
    np.testing.assert_array_equal(f.points, data["points"])
    assert f.image.shape == (90, 160, 3) and f.calib.image_size == (160, 90)
    assert f.meta["location"] == "singapore-onenorth" and f.timestamp == pytest.approx(1532402927.0)
    # labels: raw index by category name -> nuscenes-raw -> the 16 challenge classes (car 4, driveable 11,
    # vegetation 16)
    assert f.ontology == "nuscenes" and f.point_labels.tolist() == [4, 16, 11, 11]
    raw = NuScenesDataset(tmp_path, remap=None)[0]
    assert raw.ontology == "nuscenes-raw" and raw.point_labels.tolist() == [17, 30, 24, 24]
    # projection through the two ego poses (the car moved 0.5 m between the scan and the image):
    # straight ahead lands on the principal point 18 m away; 2 m right of it at u = 80 + 80 * 2 / 18
    v = frame_view(f)
    assert v.index.tolist() == [0, 1, 3]
    np.testing.assert_allclose(v.uv[:2], [[80.0, 45.0], [80.0 + 80.0 * 2 / 18, 45.0]], atol=1e-6)
    np.testing.assert_allclose(v.depth[:2], [18.0, 18.0], atol=1e-9)
    # the domain filters of xMUDA: location and night
    assert NuScenesDataset(tmp_path, location="boston").frame_ids() == ["scene-0103/smp1"]
    assert NuScenesDataset(tmp_path, night=True).frame_ids() == ["scene-0061/smp0"]
    assert NuScenesDataset(tmp_path, split="mini_val").frame_ids() == ["scene-0103/smp1"]
    assert NuScenesDataset(tmp_path, scenes=["scene-0061"]).frame_ids() == ["scene-0061/smp0"]
    with pytest.raises(DataError, match="no samples for split 'all', location 'tokyo'"):
        NuScenesDataset(tmp_path, location="tokyo")
    with pytest.raises(DataError, match="no scene 'scene-9999'"):
        NuScenesDataset(tmp_path, scenes=["scene-9999"])


def test_nuscenes_pair_mismatch_and_bad_files(tmp_path: Path) -> None:
    from terraseg.datasets import NuScenesDataset

    make_nuscenes(tmp_path / "a", drop_camera_of="smp1")
    with pytest.raises(DataError, match=r"sample_data.json: image/scan pair mismatch: sample smp1 \(scene scene-0103\) "
                                        "has no CAM_FRONT key frame"):
        NuScenesDataset(tmp_path / "a")
    assert len(NuScenesDataset(tmp_path / "a", location="singapore")) == 1
    make_nuscenes(tmp_path / "b")
    (tmp_path / "b" / "lidarseg" / "v1.0-mini" / "sd_l0_lidarseg.bin").write_bytes(b"\x11\x11")
    with pytest.raises(DataError, match=r"sd_l0_lidarseg.bin: 2 labels for the 4 points"):
        NuScenesDataset(tmp_path / "b")[0]
    os.remove(tmp_path / "b" / "samples" / "CAM_FRONT" / "img1.jpg")
    with pytest.raises(DataError, match=r"img1.jpg: camera image not found \(image/scan pair mismatch"):
        NuScenesDataset(tmp_path / "b")[1]
    os.remove(tmp_path / "b" / "v1.0-mini" / "lidarseg.json")
    assert NuScenesDataset(tmp_path / "b")[0].point_labels is None
    with pytest.raises(DataError, match="lidarseg.json: not found"):
        NuScenesDataset(tmp_path / "b", labels=True)


# ------------------------------------------------------------------------------------- samples
def test_fusion_samples_follow_the_crop_and_flip(sim_root: Path) -> None:
    from terraseg.datasets import open_dataset
    from terraseg.models.image.preprocess import Normalization
    from terraseg.models.points import build_point_model
    from terraseg.ontology import get_ontology
    from terraseg.training.augment import ImageAugConfig, build_image_transform
    from terraseg.training.fusion_data import FusionCollate, FusionSamples

    ds = open_dataset(sim_root, split="train")
    spec = PointInputSpec.from_model(build_point_model("randlanet", 20, in_channels=4, preset="small"))
    norm = Normalization(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))  # x = the raw pixel values
    cfg = ImageAugConfig(scale=(1.0, 1.0), crop=(64, 96), hflip=1.0, photometric=False)
    samples = FusionSamples(ds, get_ontology("sim"), build_image_transform(cfg, True, norm), spec, train=True,
                            max_points=600, min_points=50)
    s = samples[0]
    f = ds[0]
    view = frame_view(f)
    assert s["image"].shape == (3, 64, 96) and s["uv"].shape == (600, 2) and s["valid"].all()
    uv = s["uv"].numpy().astype(np.float64)
    px = np.floor(uv + 0.5).astype(int)
    assert (px >= 0).all() and (px[:, 0] < 96).all() and (px[:, 1] < 64).all()
    # a pure crop + flip: each point's pixel in the sample holds the colour of its pixel in the frame
    src_px = {tuple(p) for p in np.floor(view.uv + 0.5).astype(int).tolist()}
    colours = s["image"].numpy()[:, px[:, 1], px[:, 0]].T
    # find each kept point's source pixel through the label + colour: every sampled colour exists at a
    # source pixel of an in-view point (the crop window and flip moved the pixels, not the content)
    src_colours = {tuple(f.image[r, c].tolist()) for c, r in src_px}
    assert all(tuple(np.round(c).astype(int).tolist()) in src_colours for c in colours)
    # labels are those of the in-view points the sample kept (point_index maps them back to the scan)
    pi = s["point_index"].numpy()
    assert np.isin(pi, view.index).all() and len(np.unique(pi)) == 600
    assert s["target"].tolist() == f.point_labels[pi].astype(np.int64).tolist()
    # per-point extras (e.g. each network's pseudo-labels) follow the same selection, padding included
    ext = FusionSamples(ds, get_ontology("sim"), build_image_transform(cfg, True, norm), spec, train=True,
                        max_points=20000, min_points=50,
                        extras=lambda i, fr: {"pl": np.arange(len(fr.points)), "conf": np.full(len(fr.points), 0.5)})[0]
    ok = ext["valid"].numpy()
    assert ext["point_extras"]["pl"][ok].tolist() == ext["point_index"][ok].tolist()
    assert (ext["point_extras"]["pl"][~ok] == -1).all() and (ext["point_extras"]["conf"][~ok] == 0).all()
    assert (ext["point_extras"]["conf"][ok] == 0.5).all()
    # RandLA-Net batches: padding to max_points marks the repeats invalid
    few = FusionSamples(ds, get_ontology("sim"), build_image_transform(cfg, True, norm), spec, train=True,
                        max_points=20000, min_points=50)[0]
    assert len(few["uv"]) == 20000 and 0 < int(few["valid"].sum()) < 20000
    assert (few["target"][~few["valid"]] == -1).all()
    batch = FusionCollate(spec)([s, samples[1]])
    assert batch["image"].shape == (2, 3, 64, 96) and batch["point_batch"].tolist() == [0] * 600 + [1] * 600
    assert batch["point_index"][:600].tolist() == pi.tolist()
    assert batch["points3d"]["features"].shape == (2, 600, 4)
    # every point projects to the bottom-right pixel of a 64 x 48 image; 1 x 1 crops miss it (10 draws of
    # 3,072 positions, seeded): one clear error naming the frame
    K = [[32.0, 0, 31.5], [0, 32.0, 23.5], [0, 0, 1]]
    corner = np.tile([[31.5 / 32 * 4, 23.5 / 32 * 4, 4.0, 1.0]], (300, 1))
    lone = _frame(corner, Calibration(K=K, T_cam_lidar=np.eye(4), image_size=(64, 48)))
    assert np.floor(frame_view(lone).uv + 0.5).astype(int).tolist()[0] == [63, 47]
    tiny = ImageAugConfig(scale=(1.0, 1.0), crop=(1, 1), hflip=0.0, photometric=False)
    bad = FusionSamples([lone], get_ontology("sim"), build_image_transform(tiny, True, norm), spec, train=True)
    with pytest.raises(DataError, match=r"scan7.bin \(frame seq/000007\): none of the 300 in-view points falls inside "
                                        r"the 1x1 training crop after 10 tries"):
        bad[0]
    # with target frames every sample also carries an unlabelled target sample
    withtrg = FusionSamples(ds, get_ontology("sim"), build_image_transform(cfg, True, norm), spec, train=True,
                            max_points=600, target_frames=open_dataset(sim_root, split="val"))
    t = withtrg[0]["target_domain"]
    assert (t["target"] == -1).all() and t["uv"].shape == (600, 2)
    assert torch.equal(withtrg[0]["uv"], withtrg[0]["uv"])  # deterministic per (seed, epoch, index)
    nocal = [f.replace(calib=None)]
    with pytest.raises(DataError, match=r"000000.bin \(frame train/000000\): no calibration"):
        FusionSamples(nocal, get_ontology("sim"), build_image_transform(cfg, True, norm), spec, train=True)[0]
