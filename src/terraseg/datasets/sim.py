"""The simulator's output read as paired camera + LiDAR frames (dataset kind ``sim``).

``terraseg sim --out DIR`` writes one drive per split with the camera and the LiDAR of the same
rig (:mod:`terraseg.sim.dataset`)::

    DIR/sim.yaml                              the run's configuration (splits -> sequences)
    DIR/camera/images/<split>/<stem>.png      generic layout, calib.yaml (K, T_cam_lidar), timestamps.csv
    DIR/camera/masks/<split>/<stem>.png
    DIR/lidar/sequences/<seq>/velodyne/<stem>.bin, labels/<stem>.label, poses.txt, times.txt

:class:`SimDataset` pairs them by split and frame stem (train = sequence 00, val = 08, test = 11,
as ``sim.yaml`` says): each frame has the image and its mask, the scan and its labels, the LiDAR
pose and ``camera/calib.yaml``'s calibration (``T_cam_lidar`` maps LiDAR points into the camera
frame). A frame present on one side only, or whose camera and LiDAR times differ, is a pair
mismatch: one :class:`~terraseg.errors.DataError` naming both files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terraseg.datasets.base import SPLITS, FrameDataset
from terraseg.datasets.generic import GenericDataset
from terraseg.datasets.semantickitti import SemanticKITTIDataset
from terraseg.errors import DataError
from terraseg.frame import Frame
from terraseg.ontology import LabelMap
from terraseg.yamlio import read_yaml

#: Sequence of each split when sim.yaml does not say (terraseg.sim.dataset.SPLIT_SEQUENCES).
DEFAULT_SEQUENCES = {"train": "00", "val": "08", "test": "11"}
TIME_TOLERANCE_S = 0.01
"""Largest difference between the camera and LiDAR times of one paired frame (seconds)."""


@dataclass(frozen=True)
class _Pair:
    split: str
    stem: str
    camera: int  # index into the camera reader of the split
    lidar: int   # index into the LiDAR reader of the split


class SimDataset(FrameDataset):
    """Paired camera + LiDAR frames of a simulated dataset (see the module docstring).

    Frames: ``image`` (H, W, 3), ``image_labels`` (H, W), ``points`` (N, 4) x, y, z, intensity
    (LiDAR frame), ``point_labels`` (N,), ``point_instances``, ``calib`` (K, T_cam_lidar,
    image_size), ``pose`` (LiDAR to world), ``timestamp``, ``sequence`` (the split's LiDAR
    sequence), ``frame_id`` ``"<split>/<stem>"``, ``meta`` ``{"split", "stem"}``.

    Args:
        root: the folder ``terraseg sim --out`` wrote (holding ``sim.yaml``, ``camera/``, ``lidar/``).
        split: ``train``, ``val``, ``test`` or ``all``.
        remap: label map from ``sim`` applied to both label arrays.
    """

    name = "sim"
    source_ontology_name = "sim"

    def __init__(self, root: str | os.PathLike[str], split: str = "train", remap: LabelMap | str | None = None) -> None:
        super().__init__(root, split, remap)
        cam_root, lidar_root = self.root / "camera", self.root / "lidar"
        missing = [p.name + "/" for p in (cam_root, lidar_root) if not p.is_dir()]
        if missing:
            raise DataError(f"{self.root}: no {' or '.join(missing)} folder; paired frames need the camera and the "
                            f"LiDAR of the rig ({self.describe_layout()})")
        self.sequences = self._sequences()
        splits = [s for s in SPLITS if s in self.sequences] if split == "all" else [split]
        if split != "all" and split not in self.sequences:
            raise DataError(f"{self.root}: the simulated dataset has no split {split!r} "
                            f"(splits: {', '.join(self.sequences)})")
        self._camera: dict[str, GenericDataset] = {}
        self._lidar: dict[str, SemanticKITTIDataset] = {}
        for s in splits:
            self._camera[s] = GenericDataset(cam_root, split=s, ontology="sim")
            self._lidar[s] = SemanticKITTIDataset(lidar_root, split=[self.sequences[s]], remap=None, ontology="sim",
                                                  camera=None)
            self._items.extend(self._pair(s))

    @classmethod
    def describe_layout(cls) -> str:
        return ("expected the output of `terraseg sim`: ROOT/sim.yaml, ROOT/camera/images/<split>/*.png (+ masks, "
                "calib.yaml) and ROOT/lidar/sequences/<seq>/velodyne/*.bin (+ labels)")

    def _sequences(self) -> dict[str, str]:
        cfg_path = self.root / "sim.yaml"
        seqs = dict(DEFAULT_SEQUENCES)
        if cfg_path.is_file():
            cfg: Any = read_yaml(cfg_path, "simulator configuration", DataError) or {}
            given = cfg.get("sequences") if isinstance(cfg, dict) else None
            if isinstance(given, dict) and given:
                seqs = {str(k): str(v) for k, v in given.items()}
        return seqs

    def _pair(self, split: str) -> list[_Pair]:
        cam, lid = self._camera[split], self._lidar[split]
        cam_ids = {fid.split("/", 1)[-1]: i for i, fid in enumerate(cam.frame_ids())}
        lid_ids = {fid.split("/", 1)[-1]: i for i, fid in enumerate(lid.frame_ids())}
        seq_dir = self.root / "lidar" / "sequences" / self.sequences[split]
        only_cam = sorted(set(cam_ids) - set(lid_ids))
        only_lid = sorted(set(lid_ids) - set(cam_ids))
        if only_cam:
            s = only_cam[0]
            raise DataError(f"{self.root / 'camera' / 'images' / split / s}.png: image/scan pair mismatch: no scan "
                            f"{seq_dir / 'velodyne' / s}.bin ({len(only_cam)} images of split {split!r} lack a scan)")
        if only_lid:
            s = only_lid[0]
            raise DataError(f"{seq_dir / 'velodyne' / s}.bin: image/scan pair mismatch: no camera image "
                            f"{self.root / 'camera' / 'images' / split / s}.png ({len(only_lid)} scans of split "
                            f"{split!r} lack an image)")
        return [_Pair(split, s, cam_ids[s], lid_ids[s]) for s in sorted(cam_ids)]

    def _item_id(self, item: object) -> str:
        assert isinstance(item, _Pair)
        return f"{item.split}/{item.stem}"

    def _load(self, item: object) -> Frame:
        assert isinstance(item, _Pair)
        c = self._camera[item.split][item.camera]
        p = self._lidar[item.split][item.lidar]
        if c.timestamp is not None and p.timestamp is not None and abs(c.timestamp - p.timestamp) > TIME_TOLERANCE_S:
            raise DataError(f"{p.source.get('points')}: image/scan pair mismatch: the scan was taken at "
                            f"{p.timestamp:.6f} s and its image {c.source.get('image')} at {c.timestamp:.6f} s")
        return Frame(
            frame_id=self._item_id(item), image=c.image, image_labels=c.image_labels, points=p.points,
            point_fields=p.point_fields, point_labels=p.point_labels, point_instances=p.point_instances,
            ontology=self.source_ontology_name, calib=c.calib, pose=p.pose,
            timestamp=p.timestamp if p.timestamp is not None else c.timestamp, sequence=p.sequence,
            source={**c.source, **p.source}, meta={"split": item.split, "stem": item.stem},
        ).validate()

    @property
    def frames_per_split(self) -> dict[str, int]:
        """Number of paired frames per split."""
        out: dict[str, int] = {}
        for it in self._items:
            assert isinstance(it, _Pair)
            out[it.split] = out.get(it.split, 0) + 1
        return out


def is_sim_root(root: Path) -> bool:
    """Whether ``root`` looks like a simulator output folder (sim.yaml, camera/ or lidar/)."""
    return (root / "sim.yaml").is_file() and ((root / "camera").is_dir() or (root / "lidar").is_dir())
