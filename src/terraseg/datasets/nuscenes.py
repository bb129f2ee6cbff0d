"""nuScenes-lidarseg reader: paired front-camera images and LiDAR scans with point labels, read
from the dataset's own files (no devkit needed).

Layout (``ROOT`` is the nuScenes ``dataroot``; ``VERSION`` is ``v1.0-trainval``, ``v1.0-mini`` ...)::

    ROOT/VERSION/{scene,log,sample,sample_data,calibrated_sensor,sensor,ego_pose}.json
    ROOT/VERSION/{lidarseg,category}.json                    nuScenes-lidarseg (labels)
    ROOT/samples/LIDAR_TOP/<name>.pcd.bin                    float32 x, y, z, intensity, ring (LiDAR frame)
    ROOT/samples/CAM_FRONT/<name>.jpg                        1600 x 900 RGB
    ROOT/lidarseg/VERSION/<sample_data token>_lidarseg.bin   uint8 per point: the category's ``index``

Every key-frame *sample* is one frame: the ``LIDAR_TOP`` scan and the ``camera`` image of that
sample (the key frames of both sensors), as xMUDA's preprocessing pairs them. The calibration
maps the LiDAR into the camera through the ego poses at the two sensors' times (the vehicle moves
between them)::

    T_cam_lidar = inv(T_ego_cam) @ inv(T_world_ego(t_cam)) @ T_world_ego(t_lidar) @ T_ego_lidar

with each ``T`` built from a table row's ``translation`` (metres) and ``rotation`` (quaternion
``w, x, y, z``, sensor to parent frame). ``K`` is the camera's ``camera_intrinsic``; there is no
distortion (the images are undistorted).

Labels: the raw lidarseg index of each point is mapped by *category name* to the 32 classes of
ontology ``nuscenes-raw``, then (default ``remap="nuscenes"``) to the 16 challenge classes + noise.

Splits: ``all``, or ``train`` / ``val`` / ``test`` (``mini_train`` / ``mini_val`` for
``v1.0-mini``) through the devkit's scene lists when ``nuscenes-devkit`` is installed; the two
mini lists are built in; ``scenes=[...]`` selects scenes by name with any version. The domain
splits of xMUDA and reference 002 are filters: ``location="boston"`` / ``"singapore"`` (a
substring of the log's location) and ``night=True`` / ``False`` (whether the scene description
mentions night).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.datasets.base import FrameDataset
from terraseg.errors import DataError
from terraseg.frame import Calibration, Frame
from terraseg.io.calib import quaternion_to_matrix
from terraseg.io.images import read_image
from terraseg.ontology import LabelMap, get_ontology

NUSCENES_FIELDS = ("x", "y", "z", "intensity", "ring")
"""Columns of a ``.pcd.bin`` scan."""

#: The v1.0-mini scene lists (nuscenes-devkit ``splits.py``).
MINI_SPLITS: dict[str, tuple[str, ...]] = {
    "mini_train": ("scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077",
                   "scene-1094", "scene-1100"),
    "mini_val": ("scene-0103", "scene-0916"),
}
TABLES = ("scene", "log", "sample", "sample_data", "calibrated_sensor", "sensor", "ego_pose")


def transform_of(row: dict[str, Any], where: str) -> np.ndarray:
    """(4, 4) transform of a calibrated_sensor / ego_pose row (``translation`` metres, ``rotation``
    quaternion ``w, x, y, z``), mapping the child frame into the parent frame."""
    try:
        t = np.asarray(row["translation"], dtype=np.float64).reshape(3)
        q = [float(v) for v in row["rotation"]]
        if len(q) != 4:
            raise ValueError("rotation must have 4 numbers")
        T = np.eye(4)
        T[:3, :3] = quaternion_to_matrix(*q)
        T[:3, 3] = t
        return T
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: bad translation / rotation ({exc})") from None


@dataclass(frozen=True)
class _Sample:
    token: str
    scene: str
    lidar: dict[str, Any]
    camera: dict[str, Any]
    label: str | None


class NuScenesDataset(FrameDataset):
    """nuScenes-lidarseg paired frames (see the module docstring).

    Frames: ``image`` (900, 1600, 3) uint8, ``points`` (N, 5) float32 (x, y, z, intensity, ring in
    the LiDAR frame), ``point_labels`` (N,) (16 classes + noise after the default remap; raw 32
    with ``remap=None``), ``calib`` (K, T_cam_lidar, image_size), ``pose`` (LiDAR to world at the
    scan time), ``timestamp`` (s), ``sequence`` (the scene name), ``frame_id``
    ``"<scene>/<sample token>"``, ``meta`` ``{"sample", "location", "description", "camera_time"}``.

    Args:
        root: the nuScenes dataroot.
        split: ``all``, ``train``, ``val``, ``test``, ``mini_train``, ``mini_val``.
        remap: label map (default ``"nuscenes"``, the 16 challenge classes); None keeps raw ids.
        version: the table folder (default: the only ``v1.0-*`` folder under ``root``).
        camera: the camera channel paired with the scan.
        lidar: the LiDAR channel.
        scenes: scene names to read (instead of, or within, ``split``).
        location: keep scenes whose log location contains this text (``boston``, ``singapore``).
        night: True keeps scenes whose description mentions night, False the others.
        labels: None reads labels when the version has ``lidarseg.json``; True requires them;
            False never reads them.
        max_time_diff: largest camera / LiDAR time difference (s) of a pair.
    """

    name = "nuscenes"
    source_ontology_name = "nuscenes-raw"

    def __init__(self, root: str | os.PathLike[str], split: str = "all", remap: LabelMap | str | None = "nuscenes",
                 version: str | None = None, camera: str = "CAM_FRONT", lidar: str = "LIDAR_TOP",
                 scenes: Sequence[str] | None = None, location: str | None = None, night: bool | None = None,
                 labels: bool | None = None, max_time_diff: float = 0.1) -> None:
        split_name = split
        super().__init__(root, "all" if split not in ("train", "val", "test", "all") else split, remap)
        self.split = split_name
        self.version = version or self._find_version()
        self.table_dir = self.root / self.version
        if not self.table_dir.is_dir():
            raise DataError(f"{self.table_dir}: table folder not found; {self.describe_layout()}")
        self.camera, self.lidar = camera, lidar
        self.max_time_diff = float(max_time_diff)
        t = {name: self._table(name) for name in TABLES}
        self._label_lut, lidarseg = self._lidarseg(labels)
        sensors = {r["token"]: r for r in t["sensor"]}
        calib = {r["token"]: r for r in t["calibrated_sensor"]}
        self._calib_rows = calib
        self._poses = {r["token"]: r for r in t["ego_pose"]}
        channel_of = {tok: sensors.get(r.get("sensor_token"), {}).get("channel") for tok, r in calib.items()}
        logs = {r["token"]: r for r in t["log"]}
        scene_rows = {r["token"]: r for r in t["scene"]}
        wanted = self._wanted_scenes(split_name, scenes, [r["name"] for r in t["scene"]])
        self._scene_meta: dict[str, dict[str, Any]] = {}
        for tok, sc in scene_rows.items():
            loc = str(logs.get(sc.get("log_token"), {}).get("location", ""))
            desc = str(sc.get("description", ""))
            if wanted is not None and sc["name"] not in wanted:
                continue
            if location is not None and location.lower() not in loc.lower():
                continue
            if night is not None and (("night" in desc.lower()) != bool(night)):
                continue
            self._scene_meta[tok] = {"name": sc["name"], "location": loc, "description": desc}
        keyframes: dict[str, dict[str, dict[str, Any]]] = {}
        for r in t["sample_data"]:
            if r.get("is_key_frame"):
                ch = channel_of.get(r.get("calibrated_sensor_token"))
                if ch in (camera, lidar):
                    keyframes.setdefault(r["sample_token"], {})[ch] = r
        samples = sorted((r for r in t["sample"] if r.get("scene_token") in self._scene_meta),
                         key=lambda r: (self._scene_meta[r["scene_token"]]["name"], r.get("timestamp", 0)))
        for smp in samples:
            kf = keyframes.get(smp["token"], {})
            scene = self._scene_meta[smp["scene_token"]]["name"]
            for ch in (lidar, camera):
                if ch not in kf:
                    raise DataError(f"{self.table_dir / 'sample_data.json'}: image/scan pair mismatch: sample "
                                    f"{smp['token']} (scene {scene}) has no {ch} key frame")
            lab = lidarseg.get(kf[lidar]["token"]) if lidarseg is not None else None
            if lidarseg is not None and lab is None and labels:
                raise DataError(f"{self.table_dir / 'lidarseg.json'}: no labels for the {lidar} scan "
                                f"{kf[lidar].get('filename')} (sample {smp['token']}); labels=True")
            self._items.append(_Sample(smp["token"], scene, kf[lidar], kf[camera], lab))
        self._scene_of_sample = {s["token"]: s["scene_token"] for s in samples}
        if not self._items:
            raise DataError(f"{self.root}: no samples for split {split_name!r}"
                            f"{f', location {location!r}' if location else ''}"
                            f"{'' if night is None else f', night={night}'} in {self.version}")

    # ------------------------------------------------------------------ tables
    @classmethod
    def describe_layout(cls) -> str:
        return ("expected the nuScenes layout: ROOT/v1.0-<version>/*.json tables, ROOT/samples/LIDAR_TOP/*.pcd.bin, "
                "ROOT/samples/CAM_FRONT/*.jpg and, for labels, ROOT/lidarseg/v1.0-<version>/*_lidarseg.bin")

    def _find_version(self) -> str:
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name.startswith("v1.0-"))
        if not found:
            raise DataError(f"{self.root}: no v1.0-* table folder; {self.describe_layout()}")
        if len(found) > 1:
            raise DataError(f"{self.root}: several table folders ({', '.join(found)}); pass version=")
        return found[0]

    def _table(self, name: str, required: bool = True) -> list[dict[str, Any]]:
        p = self.table_dir / f"{name}.json"
        if not p.is_file():
            if required:
                raise DataError(f"{p}: table not found; {self.describe_layout()}")
            return []
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: not a readable JSON table ({exc})") from None
        if not isinstance(data, list):
            raise DataError(f"{p}: expected a JSON list of records, got {type(data).__name__}")
        return data

    def _lidarseg(self, labels: bool | None) -> tuple[np.ndarray | None, dict[str, str] | None]:
        """(raw index -> nuscenes-raw id look-up table, scan token -> label file) or (None, None)."""
        if labels is False:
            return None, None
        p = self.table_dir / "lidarseg.json"
        if not p.is_file():
            if labels:
                raise DataError(f"{p}: not found (labels=True); the nuScenes-lidarseg download adds it")
            return None, None
        rows = self._table("lidarseg")
        cats = self._table("category")
        onto = get_ontology("nuscenes-raw")
        lut = np.full(256, -1, dtype=np.int64)
        for c in cats:
            if "index" not in c:
                continue
            name = str(c.get("name"))
            if name not in onto:
                raise DataError(f"{self.table_dir / 'category.json'}: category {name!r} (index {c['index']}) is not a "
                                "class of ontology nuscenes-raw")
            lut[int(c["index"])] = onto[name].id
        if (lut < 0).all():
            raise DataError(f"{self.table_dir / 'category.json'}: no category has an 'index' (the lidarseg version of "
                            "the table has one per class)")
        return lut, {r["sample_data_token"]: r["filename"] for r in rows}

    def _wanted_scenes(self, split: str, scenes: Sequence[str] | None, all_names: list[str]) -> set[str] | None:
        if split == "all":
            chosen: set[str] | None = None
        elif split in MINI_SPLITS:
            chosen = set(MINI_SPLITS[split])
        elif split in ("train", "val", "test"):
            try:
                from nuscenes.utils.splits import create_splits_scenes  # type: ignore[import-not-found]
            except ImportError:
                if scenes is None:
                    raise DataError(f"split {split!r} of nuScenes needs the scene lists of nuscenes-devkit (pip install "
                                    "nuscenes-devkit), or pass scenes=[...] (or split='all' with filters such as "
                                    "location= / night=)") from None
                chosen = None
            else:
                key = split if self.version != "v1.0-mini" else f"mini_{split}"
                chosen = set(create_splits_scenes().get(key, ()))
        else:
            raise DataError(f"unknown nuScenes split {split!r} (known: all, train, val, test, mini_train, mini_val)")
        if scenes is not None:
            given = {str(s) for s in scenes}
            unknown = sorted(given - set(all_names))
            if unknown:
                raise DataError(f"{self.table_dir / 'scene.json'}: no scene {unknown[0]!r}")
            chosen = given if chosen is None else chosen & given
        return chosen

    # ------------------------------------------------------------------ frames
    def _item_id(self, item: object) -> str:
        assert isinstance(item, _Sample)
        return f"{item.scene}/{item.token}"

    def _sensor_to_world(self, sd: dict[str, Any]) -> np.ndarray:
        cs = self._calib_rows.get(sd.get("calibrated_sensor_token"))
        ep = self._poses.get(sd.get("ego_pose_token"))
        where = f"{self.table_dir / 'sample_data.json'} ({sd.get('filename')})"
        if cs is None or ep is None:
            raise DataError(f"{where}: calibrated_sensor or ego_pose record missing")
        return transform_of(ep, where) @ transform_of(cs, where)

    def calibration(self, item: _Sample) -> Calibration:
        """K, T_cam_lidar (LiDAR -> camera through the ego poses) and image size of a sample."""
        cs_cam = self._calib_rows.get(item.camera.get("calibrated_sensor_token"), {})
        K = cs_cam.get("camera_intrinsic")
        if not K or np.asarray(K).shape != (3, 3):
            raise DataError(f"{self.table_dir / 'calibrated_sensor.json'}: the {self.camera} record has no 3x3 "
                            f"camera_intrinsic (sample {item.token})")
        T_world_lidar = self._sensor_to_world(item.lidar)
        T_world_cam = self._sensor_to_world(item.camera)
        T = np.linalg.inv(T_world_cam) @ T_world_lidar
        w, h = item.camera.get("width"), item.camera.get("height")
        return Calibration(K=np.asarray(K, dtype=np.float64), T_cam_lidar=T,
                           image_size=(int(w), int(h)) if w and h else None)

    def _load(self, item: object) -> Frame:
        assert isinstance(item, _Sample)
        scan = self.root / item.lidar["filename"]
        img_path = self.root / item.camera["filename"]
        if not scan.is_file():
            raise DataError(f"{scan}: scan file not found (sample {item.token})")
        raw = np.fromfile(scan, dtype=np.float32)
        if raw.size % len(NUSCENES_FIELDS):
            raise DataError(f"{scan}: {raw.size} float32 values, not a multiple of {len(NUSCENES_FIELDS)} "
                            "(x, y, z, intensity, ring)")
        points = raw.reshape(-1, len(NUSCENES_FIELDS))
        if not img_path.is_file():
            raise DataError(f"{img_path}: camera image not found (image/scan pair mismatch for {scan})")
        image = read_image(img_path)
        source: dict[str, Path] = {"points": scan, "image": img_path}
        t_lidar = float(item.lidar.get("timestamp", 0)) / 1e6
        t_cam = float(item.camera.get("timestamp", 0)) / 1e6
        if abs(t_lidar - t_cam) > self.max_time_diff:
            raise DataError(f"{scan}: image/scan pair mismatch: the image {img_path.name} was taken "
                            f"{abs(t_lidar - t_cam):.3f} s apart (limit {self.max_time_diff} s)")
        labels = None
        if item.label is not None and self._label_lut is not None:
            lp = self.root / item.label
            if not lp.is_file():
                raise DataError(f"{lp}: label file not found (scan {scan})")
            raw_lab = np.fromfile(lp, dtype=np.uint8)
            if len(raw_lab) != len(points):
                raise DataError(f"{lp}: {len(raw_lab)} labels for the {len(points)} points of {scan}")
            mapped = self._label_lut[raw_lab]
            if (mapped < 0).any():
                bad = np.unique(raw_lab[mapped < 0])[:8].tolist()
                raise DataError(f"{lp}: label indices {bad} are not in category.json")
            labels = mapped.astype(np.uint8)
            source["point_labels"] = lp
        calib = self.calibration(item)
        meta = self._scene_meta[self._scene_of_sample[item.token]]
        return Frame(frame_id=self._item_id(item), image=image, points=points, point_fields=NUSCENES_FIELDS,
                     point_labels=labels, ontology=self.source_ontology_name, calib=calib,
                     pose=self._sensor_to_world(item.lidar), timestamp=t_lidar, sequence=item.scene, source=source,
                     meta={"sample": item.token, "location": meta["location"], "description": meta["description"],
                           "camera_time": t_cam}).validate()
