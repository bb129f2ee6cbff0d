"""Calibration files: KITTI ``calib.txt`` / ``poses.txt``, RELLIS-3D camera and LiDAR files,
and terraseg's own ``calib.yaml``.

Direction conventions: ``T_cam_lidar`` maps LiDAR points into the camera frame
(``p_cam = T_cam_lidar @ p_lidar``); poses map the sensor frame into the world frame.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from terraseg.errors import DataError
from terraseg.frame import Calibration, invert_transform
from terraseg.io.atomic import atomic_write_text
from terraseg.yamlio import read_yaml


def _floats(values: list[str], path: Path, key: str, n: int) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        raise DataError(f"{path}: entry {key!r} holds non-numeric values") from None
    if arr.size != n:
        raise DataError(f"{path}: entry {key!r} has {arr.size} numbers, expected {n}")
    return arr


def read_kitti_calib(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a KITTI ``calib.txt``: ``P0..P3`` as (3, 4) projection matrices and ``Tr`` (velodyne
    to left camera, ``p_cam = Tr @ p_velo``) as a (4, 4) transform."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: calibration file not found")
    out: dict[str, np.ndarray] = {}
    for ln in p.read_text().splitlines():
        if ":" not in ln:
            continue
        key, _, rest = ln.partition(":")
        vals = rest.split()
        if key.startswith("P"):
            out[key] = _floats(vals, p, key, 12).reshape(3, 4)
        elif key == "Tr":
            T = np.eye(4)
            T[:3] = _floats(vals, p, key, 12).reshape(3, 4)
            out[key] = T
    if not out:
        raise DataError(f"{p}: no 'P0:' / 'Tr:' entries found (expected a KITTI calib.txt)")
    return out


def read_kitti_poses(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a KITTI ``poses.txt`` (12 numbers per line) as (N, 4, 4) camera-to-world poses."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: poses file not found")
    rows = [ln.split() for ln in p.read_text().splitlines() if ln.strip()]
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    for i, r in enumerate(rows):
        poses[i, :3] = _floats(r, p, f"line {i + 1}", 12).reshape(3, 4)
    return poses


def write_kitti_poses(path: str | os.PathLike[str], poses: np.ndarray) -> Path:
    """Write (N, 4, 4) poses as a KITTI ``poses.txt`` atomically."""
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
    text = "".join(" ".join(f"{v:.9e}" for v in T[:3].ravel()) + "\n" for T in poses)
    return atomic_write_text(path, text)


def write_kitti_calib(path: str | os.PathLike[str], P: np.ndarray, Tr: np.ndarray) -> Path:
    """Write a KITTI ``calib.txt`` with ``P0..P3`` = ``P`` (3, 4) and ``Tr`` (4, 4) atomically."""
    P = np.asarray(P, dtype=np.float64).reshape(3, 4)
    Tr = np.asarray(Tr, dtype=np.float64).reshape(4, 4)
    lines = [f"P{i}: " + " ".join(f"{v:.12e}" for v in P.ravel()) for i in range(4)]
    lines.append("Tr: " + " ".join(f"{v:.12e}" for v in Tr[:3].ravel()))
    return atomic_write_text(path, "\n".join(lines) + "\n")


def quaternion_to_matrix(w: float, x: float, y: float, z: float) -> np.ndarray:
    """(3, 3) rotation matrix of a (not necessarily normalised) quaternion."""
    q = np.array([w, x, y, z], dtype=np.float64)
    n = np.linalg.norm(q)
    if n == 0:
        raise DataError("zero quaternion")
    w, x, y, z = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def read_pose_yaml(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a RELLIS-3D ``transforms.yaml`` (one entry with ``q: {w,x,y,z}``, ``t: {x,y,z}``) as
    the (4, 4) transform it stores, without changing its direction.

    For the RELLIS-3D ``os1_cloud_node-pylon_camera_node`` entry this is the Ouster-to-camera
    *pose* (the camera frame expressed in LiDAR coordinates); projecting LiDAR points into the
    image needs its inverse, which :func:`read_rellis_calibration` applies.
    """
    p = Path(path)
    data = read_yaml(p, "transform file", DataError)
    if not isinstance(data, dict) or not data:
        raise DataError(f"{p}: expected one transform entry with q and t")
    entry = next(iter(data.values())) if "q" not in data else data
    try:
        q, t = entry["q"], entry["t"]
        T = np.eye(4)
        T[:3, :3] = quaternion_to_matrix(q["w"], q["x"], q["y"], q["z"])
        T[:3, 3] = [t["x"], t["y"], t["z"]]
    except (KeyError, TypeError) as exc:
        raise DataError(f"{p}: transform entry needs q: {{w, x, y, z}} and t: {{x, y, z}} ({exc})") from None
    return T


def read_rellis_camera_info(path: str | os.PathLike[str]) -> np.ndarray:
    """Read RELLIS-3D ``camera_info.txt`` (``fx fy cx cy``) as a (3, 3) camera matrix."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: camera info file not found")
    fx, fy, cx, cy = _floats(p.read_text().split(), p, "fx fy cx cy", 4)
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def read_rellis_calibration(camera_info: str | os.PathLike[str], transforms: str | os.PathLike[str],
                            image_size: tuple[int, int] | None = (1920, 1200)) -> Calibration:
    """RELLIS-3D camera + Ouster calibration with ``T_cam_lidar`` (the inverse of the stored pose).

    The RELLIS-3D images are rectified, so no distortion is returned.
    """
    return Calibration(K=read_rellis_camera_info(camera_info),
                       T_cam_lidar=invert_transform(read_pose_yaml(transforms)), image_size=image_size)


def calibration_to_dict(calib: Calibration) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if calib.K is not None:
        d["K"] = calib.K.tolist()
    if calib.dist is not None:
        d["dist"] = calib.dist.tolist()
    if calib.T_cam_lidar is not None:
        d["T_cam_lidar"] = calib.T_cam_lidar.tolist()
    if calib.image_size is not None:
        d["image_size"] = list(calib.image_size)
    return d


def write_calib_yaml(path: str | os.PathLike[str], calib: Calibration) -> Path:
    """Write terraseg's ``calib.yaml`` (K, dist, T_cam_lidar, image_size as [width, height])."""
    text = "# terraseg calibration: T_cam_lidar maps LiDAR points into the camera frame\n"
    return atomic_write_text(path, text + yaml.safe_dump(calibration_to_dict(calib), sort_keys=False))


def read_calib_yaml(path: str | os.PathLike[str]) -> Calibration:
    """Read terraseg's ``calib.yaml``; unknown keys are errors naming the file."""
    p = Path(path)
    data = read_yaml(p, "calibration file", DataError) or {}
    extra = sorted(set(data) - {"K", "dist", "T_cam_lidar", "image_size"})
    if extra:
        raise DataError(f"{p}: unknown calibration keys {extra} (known: K, dist, T_cam_lidar, image_size)")
    try:
        size = data.get("image_size")
        return Calibration(K=data.get("K"), dist=data.get("dist"), T_cam_lidar=data.get("T_cam_lidar"),
                           image_size=None if size is None else (int(size[0]), int(size[1])))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{p}: malformed calibration ({exc})") from exc
