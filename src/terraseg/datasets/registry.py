"""Open any supported dataset folder by kind, or detect the kind from the folder layout."""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from terraseg.datasets.base import FrameDataset
from terraseg.errors import ConfigError, DataError

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
                 remap: Any = None, *, labels_ontology: Any = None, **kwargs: Any) -> FrameDataset:
    """Open a dataset folder as a :class:`FrameDataset`.

    Args:
        kind: one of :data:`DATASET_KINDS`, or ``auto`` to detect it from the layout.
        split: ``train``, ``val``, ``test`` or ``all``.
        remap: a label map applied on load: a LabelMap, a map YAML, ``SOURCE->TARGET`` or a
            target ontology name (``None`` keeps the reader's default, which for SemanticKITTI is
            the learning map to train ids).
        labels_ontology: the ontology the caller expects the labels in (a recipe's
            ``data.ontology``, a checkpoint's ontology). Given to the generic reader when the
            folder names no ontology itself (``ontology.yaml`` / ``palette.*``), ``kwargs`` name
            none and there is no ``remap``, so a generic folder of colour masks is decoded with
            it. (Other readers know their label space; their ``ontology`` options mean other
            things and are never set from it.)
        kwargs: reader-specific options (suffixes, camera, ontology ...).
    """
    k = detect_kind(root) if kind == "auto" else kind
    cls = dataset_class(k)
    known = reader_options(k)
    if labels_ontology is not None and remap is None and k == "generic" and kwargs.get("ontology") is None \
            and kwargs.get("palette") is None and not _has_own_ontology(Path(root)):
        kwargs["ontology"] = labels_ontology
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ConfigError(f"dataset kind {k!r} has no option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                          f"(its options: {', '.join(known)})")
    if remap is not None:
        kwargs["remap"] = remap
    return cls(root, split=split, **kwargs)  # type: ignore[call-arg]


def reader_options(kind: str) -> list[str]:
    """The keyword options of a dataset kind's reader (``data.options`` / ``--data-option`` keys)."""
    params = inspect.signature(dataset_class(kind).__init__).parameters
    return [n for n, p in params.items() if n not in ("self", "root", "split")
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def parse_reader_options(items: Iterable[str], where: str = "--data-option") -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` from the command line as reader options.

    Values are read as YAML scalars, as in recipes: ``true`` / ``false`` are booleans, ``0`` is an
    int, ``null`` is None, anything else (``annotations``, ``palette.csv``, ``_mask``) a string.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{where} {item!r}: expected KEY=VALUE, e.g. masks_dir=annotations")
        try:
            v = yaml.safe_load(val) if val.strip() else ""
        except yaml.YAMLError:
            v = val
        out[key] = v if v is None or isinstance(v, (str, int, float, bool)) else val  # lists, dates: as written
    return out


def _has_own_ontology(root: Path) -> bool:
    """Whether a generic folder names its ontology itself (``ontology.yaml`` or ``palette.*``)."""
    from terraseg.ontology import PALETTE_SUFFIXES

    return (root / "ontology.yaml").is_file() or any((root / f"palette{s}").is_file() for s in PALETTE_SUFFIXES)
