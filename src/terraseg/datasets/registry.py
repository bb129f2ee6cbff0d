"""Open any supported dataset folder by kind, or detect the kind from the folder layout."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from terraseg.datasets.base import FrameDataset
from terraseg.errors import DataError

# kind -> (module, class, one-line layout description)
DATASET_KINDS: dict[str, tuple[str, str, str]] = {
    "semantickitti": ("terraseg.datasets.semantickitti", "SemanticKITTIDataset",
                      "sequences/NN/velodyne/*.bin + labels/*.label"),
    "rellis3d-lidar": ("terraseg.datasets.rellis3d", "Rellis3DLidarDataset",
                       "pt_train.lst / pt_val.lst / pt_test.lst + SemanticKITTI-format Ouster scans"),
    "rellis3d-image": ("terraseg.datasets.rellis3d", "Rellis3DImageDataset",
                       "train.lst / val.lst / test.lst + pylon_camera_node images and label ids"),
    "goose2d": ("terraseg.datasets.goose2d", "Goose2DDataset",
                "images/{split}/{scenario}/*_{camera}.png + labels/{split}/{scenario}/*_labelids.png"),
    "goose3d": ("terraseg.datasets.goose3d", "Goose3DDataset",
                "lidar/{split}/{scenario}/*_vls128.bin + labels/{split}/{scenario}/*_goose.label"),
    "carla": ("terraseg.datasets.carla", "CarlaCameraDataset", "rgb/ + semantic/ camera exports"),
    "carla-lidar": ("terraseg.datasets.carla", "CarlaLidarDataset", "semantic LiDAR exports"),
    "generic": ("terraseg.datasets.generic", "GenericDataset",
                "images/, masks/, points/, point_labels/ (optionally per split), calib.yaml"),
    "sim": ("terraseg.datasets.sim", "SimDataset",
            "`terraseg sim` output: sim.yaml + camera/ (generic) + lidar/ (SemanticKITTI), paired frames"),
    "nuscenes": ("terraseg.datasets.nuscenes", "NuScenesDataset",
                 "v1.0-*/ JSON tables + samples/LIDAR_TOP/*.pcd.bin + samples/CAM_FRONT/*.jpg + lidarseg/"),
}


def dataset_class(kind: str) -> type[FrameDataset]:
    """The reader class of a dataset kind (see :data:`DATASET_KINDS`)."""
    if kind not in DATASET_KINDS:
        raise DataError(f"unknown dataset kind {kind!r} (known: {', '.join(DATASET_KINDS)})")
    module, cls, _ = DATASET_KINDS[kind]
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def detect_kind(root: str | os.PathLike[str]) -> str:
    """Guess the dataset kind from the files at the top of ``root``."""
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{r}: dataset folder not found")
    names = {p.name for p in r.iterdir()}
    if "sim.yaml" in names and names & {"camera", "lidar"}:
        return "sim"
    if "samples" in names and any(n.startswith("v1.0-") for n in names):
        return "nuscenes"
    if "sequences" in names:
        return "semantickitti"
    if names & {"pt_train.lst", "pt_val.lst", "pt_test.lst"}:
        return "rellis3d-lidar"
    if names & {"train.lst", "val.lst", "test.lst"}:
        return "rellis3d-image"
    if "lidar" in names and "labels" in names:
        return "goose3d"
    if "images" in names and "labels" in names:
        return "goose2d"
    if "rgb" in names and "semantic" in names:
        return "carla"
    if names & {"images", "masks", "points"}:
        return "generic"
    layouts = "\n".join(f"  {k}: {v[2]}" for k, v in DATASET_KINDS.items())
    raise DataError(f"{r}: cannot tell which dataset layout this is; expected one of:\n{layouts}\n"
                    "(or pass the kind explicitly)")


def open_dataset(root: str | os.PathLike[str], kind: str = "auto", split: str = "all",
                 remap: Any = None, **kwargs: Any) -> FrameDataset:
    """Open a dataset folder as a :class:`FrameDataset`.

    Args:
        kind: one of :data:`DATASET_KINDS`, or ``auto`` to detect it from the layout.
        split: ``train``, ``val``, ``test`` or ``all``.
        remap: a LabelMap or target ontology name applied on load (``None`` keeps the reader's
            default, which for SemanticKITTI is the learning map to train ids).
        kwargs: reader-specific options (suffixes, camera, ontology ...).
    """
    k = detect_kind(root) if kind == "auto" else kind
    cls = dataset_class(k)
    if remap is not None:
        kwargs["remap"] = remap
    return cls(root, split=split, **kwargs)  # type: ignore[call-arg]
