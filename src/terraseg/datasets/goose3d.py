"""GOOSE 3D reader: Velodyne VLS-128 scans with 64-class GOOSE labels.

Layout (each download, e.g. ``goose_3d_val``, unpacks into one such root)::

    ROOT/lidar/{split}/{scenario}/{name}_vls128.bin     float32 x, y, z, intensity (metres, LiDAR frame)
    ROOT/labels/{split}/{scenario}/{name}_goose.label   uint32: semantic id (low 16 bits) | instance << 16

where ``name`` is ``{scenario}__{frame:04d}_{timestamp_ns}`` (for example
``2023-05-17_neubiberg_sunny__0366_1684329686270285947``). The scan and label suffixes differ
(``_vls128.bin`` vs ``_goose.label``) and are configurable (GOOSE-Ex uses ``_pcl.bin``). Labels are
published for the train and val splits only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from terraseg.datasets.base import SPLITS, FrameDataset
from terraseg.datasets.semantickitti import list_scans, read_scan_with_labels
from terraseg.errors import DataError
from terraseg.frame import XYZI, Frame
from terraseg.ontology import LabelMap

_NAME = re.compile(r"__(\d+)_(\d{19})$")


def parse_goose_name(name: str) -> tuple[int, int] | None:
    """(frame number, timestamp in ns) from a GOOSE name ``<scenario>__<frame>_<timestamp_ns>``;
    None when the name does not end that way."""
    m = _NAME.search(name)
    return None if m is None else (int(m.group(1)), int(m.group(2)))


class GooseItem(NamedTuple):
    """One listed GOOSE scan: split, scenario, name (without suffix), scan and label paths."""

    split: str
    scenario: str
    name: str
    scan: Path
    label: Path | None


class Goose3DDataset(FrameDataset):
    """GOOSE 3D LiDAR scans with GOOSE labels.

    Frames carry ``points`` (N, 4) float32 (x, y, z in metres in the LiDAR frame, intensity),
    ``point_labels`` (N,) uint16 GOOSE ids (ontology ``goose``; or remapped), ``point_instances``
    (N,) uint16, ``timestamp`` in seconds parsed from the file name (nanoseconds in
    ``meta["timestamp_ns"]``, exact), ``meta["frame_index"]``, ``meta["split"]``,
    ``sequence`` = scenario and ``frame_id`` ``"<scenario>/<name>"``. No poses or calibration.

    Args:
        root: the folder holding ``lidar/`` and ``labels/``.
        split: ``train``, ``val``, ``test`` or ``all`` (every split folder present under ``lidar/``).
        remap: label map applied to the labels (for example ``"traversability"``); None keeps
            the GOOSE ids.
        scan_suffix, label_suffix: file name endings of scans and labels.
        labels: None requires labels for train and val (a missing ``labels/<split>`` folder is
            an error) and reads them for test only when present; True requires them
            everywhere; False never reads them.
        lidar_dir, label_dir: names of the scan and label folders under ``root``.
    """

    name = "goose3d"
    source_ontology_name = "goose"

    def __init__(self, root: str | os.PathLike[str], split: str = "train", remap: LabelMap | str | None = None,
                 scan_suffix: str = "_vls128.bin", label_suffix: str = "_goose.label",
                 labels: bool | None = None, lidar_dir: str = "lidar", label_dir: str = "labels") -> None:
        super().__init__(root, split, remap)
        self.scan_suffix, self.label_suffix = scan_suffix, label_suffix
        lidar_root = self.root / lidar_dir
        if not lidar_root.is_dir():
            raise DataError(f"{self.root}: no '{lidar_dir}' folder; {self.describe_layout()}")
        if split == "all":
            splits = [s for s in SPLITS if (lidar_root / s).is_dir()]
            if not splits:
                raise DataError(f"{lidar_root}: no split folders ({', '.join(SPLITS)}); {self.describe_layout()}")
        else:
            if not (lidar_root / split).is_dir():
                present = [s for s in SPLITS if (lidar_root / s).is_dir()]
                raise DataError(f"{lidar_root / split}: split folder not found (present: "
                                f"{', '.join(present) or 'none'}); {self.describe_layout()}")
            splits = [split]
        self.splits = tuple(splits)
        for s in splits:
            lab_root = self.root / label_dir / s
            use_labels = labels is not False and lab_root.is_dir()
            if not use_labels and (labels is True or (labels is None and s in ("train", "val"))):
                why = "labels=True" if labels else f"the GOOSE {s} split is labelled"
                raise DataError(f"{lab_root}: label folder not found ({why}; pass labels=False to read "
                                "the scans only)")
            for scenario in sorted(e.name for e in os.scandir(lidar_root / s) if e.is_dir()):
                for name, _ in list_scans(lidar_root / s / scenario, scan_suffix):
                    lab = lab_root / scenario / f"{name}{label_suffix}" if use_labels else None
                    self._items.append(GooseItem(s, scenario, name, lidar_root / s / scenario / f"{name}{scan_suffix}", lab))
        if not self._items:
            raise DataError(f"{lidar_root}: no '*{scan_suffix}' scans in {', '.join(splits)}/<scenario>/ "
                            "(set scan_suffix for other file names)")

    @classmethod
    def describe_layout(cls) -> str:
        return ("expected the GOOSE 3D layout ROOT/lidar/{split}/{scenario}/<name>_vls128.bin with labels in "
                "ROOT/labels/{split}/{scenario}/<name>_goose.label")

    def _item_id(self, item: object) -> str:
        it: GooseItem = item  # type: ignore[assignment]
        return f"{it.scenario}/{it.name}"

    def _load(self, item: object) -> Frame:
        it: GooseItem = item  # type: ignore[assignment]
        points, sem, inst, source = read_scan_with_labels(it.scan, it.label)
        meta: dict[str, object] = {"split": it.split}
        parsed = parse_goose_name(it.name)
        timestamp = None
        if parsed is not None:
            meta["frame_index"], meta["timestamp_ns"] = parsed
            timestamp = parsed[1] / 1e9
        return Frame(
            frame_id=self._item_id(it), points=points, point_fields=XYZI, point_labels=sem, point_instances=inst,
            ontology=self.source_ontology_name, timestamp=timestamp, sequence=it.scenario, source=source, meta=meta,
        ).validate()
