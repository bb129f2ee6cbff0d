"""RELLIS-3D readers: the Ouster OS1-64 LiDAR release (SemanticKITTI format) and the camera release.

Layout (``ROOT`` is the ``Rellis-3D`` folder that holds the sequence folders)::

    ROOT/pt_{train,val,test}.lst                         LiDAR split lists
    ROOT/{train,val,test}.lst                            camera split lists
    ROOT/00000/os1_cloud_node_kitti_bin/000104.bin       float32 x, y, z, intensity (Ouster frame)
    ROOT/00000/os1_cloud_node_semantickitti_label_id/000104.label   uint32, raw RELLIS ids
    ROOT/00000/pylon_camera_node/frame000104-1581624663_149.jpg     1920x1200 RGB
    ROOT/00000/pylon_camera_node_label_id/frame000104-1581624663_149.png   L-mode, raw RELLIS ids
    ROOT/00000/poses.txt, calib.txt, times.txt           optional, KITTI format
    ROOT/00000/transforms.yaml, camera_info.txt          optional calibration (see below)

Split lists hold one sample per line: the data path and the label path, separated by white
space, both relative to ``ROOT`` (absolute paths are kept as they are)::

    00000/os1_cloud_node_kitti_bin/000104.bin 00000/os1_cloud_node_semantickitti_label_id/000104.label
    00000/pylon_camera_node/frame000104-1581624663_149.jpg 00000/pylon_camera_node_label_id/frame000104-1581624663_149.png

Lists with only the data column are accepted: the label path is then derived as the sibling
label folder (``os1_cloud_node_semantickitti_label_id/<stem>.label`` or
``pylon_camera_node_label_id/<stem>.png``). The sequence is the folder above the data folder.

Calibration search (:func:`find_rellis_calibration`), for sequence ``S``, first file found wins:

    transforms (Ouster-to-camera pose, quaternion + translation):
        CALIB_DIR/S_transforms.yaml, CALIB_DIR/S/transforms.yaml, CALIB_DIR/transforms.yaml,
        ROOT/S/transforms.yaml, ROOT/calib/S_transforms.yaml, ROOT/calib/transforms.yaml,
        ROOT/transforms.yaml
    intrinsics (``fx fy cx cy``):
        CALIB_DIR/S_camera_info.txt, CALIB_DIR/S/camera_info.txt, CALIB_DIR/camera_info.txt,
        ROOT/S/camera_info.txt, ROOT/calib/S_camera_info.txt, ROOT/calib/camera_info.txt,
        ROOT/camera_info.txt

(``CALIB_DIR`` entries only when ``calib_dir`` is given; the official per-sequence download
``cam2lidar_transforms/0000N_transforms.yaml`` fits the first pattern.) The stored transform is
the camera pose in the LiDAR frame, so ``T_cam_lidar`` is its inverse
(:func:`terraseg.io.calib.read_rellis_calibration`). Poses (``poses.txt``) are LiDAR poses: the
RELLIS ``calib.txt`` has ``Tr`` = identity, and the KITTI conversion ``inv(Tr) @ P @ Tr`` is
applied when ``calib.txt`` is present; without it the poses are used as they are.

With ``images=True`` the LiDAR reader pairs each scan ``NNNNNN.bin`` with the camera image of the
same frame number (``<seq>/pylon_camera_node/frameNNNNNN-<time>.jpg``) and its id mask: paired
frames for cross-modal models (:mod:`terraseg.models.fusion`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from terraseg.datasets.base import SPLITS, FrameDataset
from terraseg.datasets.semantickitti import KittiSequenceFiles, ScanItem, read_scan_with_labels
from terraseg.errors import DataError
from terraseg.frame import XYZI, Calibration, Frame, invert_transform
from terraseg.io.calib import read_pose_yaml, read_rellis_calibration, read_rellis_camera_info
from terraseg.io.labels import read_color_png, read_label_png
from terraseg.ontology import LabelMap

#: Label folder of the Ouster scans in the official release.
RELLIS_LIDAR_LABEL_DIR = "os1_cloud_node_semantickitti_label_id"
#: Label folder of the camera images in the official release.
RELLIS_IMAGE_LABEL_DIR = "pylon_camera_node_label_id"
#: Camera image folder of each sequence in the official release.
RELLIS_IMAGE_DIR = "pylon_camera_node"
#: Size (width, height) of the RELLIS-3D Basler camera images, in pixels.
RELLIS_IMAGE_SIZE = (1920, 1200)

_FRAME_NAME = re.compile(r"^frame(\d+)-(\d+)_(\d+)$")


def parse_rellis_image_name(stem: str) -> tuple[int, float] | None:
    """(frame number, timestamp in s) from a camera file stem ``frameNNNNNN-<sec>_<msec>``.

    ``frame000104-1581624663_149`` gives ``(104, 1581624663.149)``: the part after ``_`` is a
    count of milliseconds. Returns None for names that do not follow the pattern.
    """
    m = _FRAME_NAME.match(stem)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)) + int(m.group(3)) / 1000.0


# ---------------------------------------------------------------------- calibration
def _calib_candidates(root: Path, sequence: str | None, calib_dir: Path | None, base: str,
                      ext: str) -> list[Path]:
    dirs: list[tuple[Path, bool]] = ([(calib_dir, True)] if calib_dir is not None else []) + [(root, False)]
    out: list[Path] = []
    for d, is_calib_dir in dirs:
        if sequence:
            if is_calib_dir:
                out += [d / f"{sequence}_{base}{ext}", d / sequence / f"{base}{ext}"]
            else:
                out += [d / sequence / f"{base}{ext}", d / "calib" / f"{sequence}_{base}{ext}"]
        out += [d / f"{base}{ext}"] if is_calib_dir else [d / "calib" / f"{base}{ext}", d / f"{base}{ext}"]
    return out


def rellis_calibration_candidates(root: Path, sequence: str | None,
                                  calib_dir: Path | None = None) -> dict[str, list[Path]]:
    """The files :func:`find_rellis_calibration` tries, in order: ``{"transforms": [...],
    "camera_info": [...]}`` (see the module docstring)."""
    return {"transforms": _calib_candidates(root, sequence, calib_dir, "transforms", ".yaml"),
            "camera_info": _calib_candidates(root, sequence, calib_dir, "camera_info", ".txt")}


def find_rellis_calibration(root: str | os.PathLike[str], sequence: str | None,
                            calib_dir: str | os.PathLike[str] | None = None
                            ) -> tuple[Calibration | None, dict[str, Path]]:
    """Find and read the calibration of one RELLIS-3D sequence.

    Returns ``(calibration, files)``. With both files the calibration has ``K`` (3, 3),
    ``T_cam_lidar`` (4, 4, maps Ouster points into the camera frame: the inverse of the stored
    pose) and ``image_size`` (1920, 1200); with only one of them, the part it gives; with neither,
    ``(None, {})``. ``files`` maps ``"transforms"`` / ``"camera_info"`` to the files used.
    """
    cands = rellis_calibration_candidates(Path(root), sequence, None if calib_dir is None else Path(calib_dir))
    found = {k: next((p for p in v if p.is_file()), None) for k, v in cands.items()}
    files = {k: p for k, p in found.items() if p is not None}
    tf, ci = found["transforms"], found["camera_info"]
    if tf is not None and ci is not None:
        calib = read_rellis_calibration(ci, tf, image_size=RELLIS_IMAGE_SIZE)
    elif tf is not None:
        calib = Calibration(T_cam_lidar=invert_transform(read_pose_yaml(tf)))
    elif ci is not None:
        calib = Calibration(K=read_rellis_camera_info(ci), image_size=RELLIS_IMAGE_SIZE)
    else:
        return None, {}
    for a in (calib.K, calib.T_cam_lidar):
        if a is not None:
            a.setflags(write=False)
    return calib, files


# ---------------------------------------------------------------------- split lists
@dataclass(frozen=True)
class ListEntry:
    """One line of a split list: data path, label path (None when derived), where it came from."""

    data: Path
    label: Path | None
    list_file: Path
    line: int


def read_rellis_list(path: Path, root: Path) -> list[ListEntry]:
    """Parse a RELLIS-3D split list: one or two ROOT-relative (or absolute) paths per line.

    Blank lines and lines starting with ``#`` are skipped; ``line`` numbers are those of the file.
    """
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    entries = []
    for i, ln in enumerate(path.read_text().splitlines()):
        cols = ln.split()
        if not cols or cols[0].startswith("#"):
            continue
        if len(cols) > 2:
            raise DataError(f"{path}: line {i + 1} has {len(cols)} columns, expected 'data_path [label_path]'")
        entries.append(ListEntry(root / cols[0], root / cols[1] if len(cols) == 2 else None, path, i + 1))
    return entries


class _RellisBase(FrameDataset):
    """Shared split-list handling and calibration cache of the two RELLIS-3D readers."""

    source_ontology_name = "rellis3d-raw"
    list_pattern = "{split}.lst"
    default_label_dir = ""

    def __init__(self, root: str | os.PathLike[str], split: str, remap: LabelMap | str | None,
                 calib_dir: str | os.PathLike[str] | None, labels: bool | None,
                 label_dir: str | None) -> None:
        super().__init__(root, split, remap)
        self.calib_dir = None if calib_dir is None else Path(calib_dir)
        if self.calib_dir is not None and not self.calib_dir.is_dir():
            raise DataError(f"{self.calib_dir}: calibration folder not found")
        self.label_dir = label_dir or self.default_label_dir
        self.labels = labels
        self._calibs: dict[str | None, tuple[Calibration | None, dict[str, Path]]] = {}
        self._label_dir_exists: dict[Path, bool] = {}
        splits = SPLITS if split == "all" else (split,)
        lists = [self.root / self.list_pattern.format(split=s) for s in splits]
        if split == "all":
            lists = [p for p in lists if p.is_file()]
            if not lists:
                raise DataError(f"{self.root}: no split lists "
                                f"({', '.join(self.list_pattern.format(split=s) for s in SPLITS)}); "
                                f"{self.describe_layout()}")
        elif not lists[0].is_file():
            raise DataError(f"{lists[0]}: split list not found; {self.describe_layout()}")
        self.entries = [e for p in lists for e in read_rellis_list(p, self.root)]
        if not self.entries:
            raise DataError(f"{', '.join(map(str, lists))}: split list is empty")
        first = self.entries[0]
        if not first.data.is_file():
            raise DataError(f"{first.data}: file not found (line {first.line} of {first.list_file}); "
                            f"is {self.root} the folder holding the sequence folders 00000 ... 00004?")

    def _label_path(self, entry: ListEntry, stem: str, ext: str) -> Path | None:
        """The label file of an entry, or None when it is read without labels."""
        if self.labels is False:
            return None
        if entry.label is not None:
            return entry.label
        ldir = entry.data.parent.parent / self.label_dir
        if ldir not in self._label_dir_exists:
            self._label_dir_exists[ldir] = ldir.is_dir()
        if self._label_dir_exists[ldir]:
            return ldir / f"{stem}{ext}"
        if self.labels:
            raise DataError(f"{ldir}: label folder not found for {entry.data} (line {entry.line} of "
                            f"{entry.list_file}; labels=True)")
        return None

    def calibration(self, sequence: str | None) -> Calibration | None:
        """The cached calibration of a sequence (see :func:`find_rellis_calibration`)."""
        return self._calibration(sequence)[0]

    def _calibration(self, sequence: str | None) -> tuple[Calibration | None, dict[str, Path]]:
        if sequence not in self._calibs:
            self._calibs[sequence] = find_rellis_calibration(self.root, sequence, self.calib_dir)
        return self._calibs[sequence]


def _sequence_of(data: Path, root: Path) -> str | None:
    """The folder above the data folder (``00000`` of ``00000/os1_cloud_node_kitti_bin/x.bin``)."""
    try:
        parts = data.relative_to(root).parts
    except ValueError:  # an absolute path outside ROOT
        parts = data.parts[1:]
    return parts[-3] if len(parts) >= 3 else None


class Rellis3DLidarDataset(_RellisBase):
    """RELLIS-3D Ouster OS1-64 scans (SemanticKITTI format) with raw RELLIS labels.

    Frames carry ``points`` (N, 4) float32 (x, y, z in metres in the Ouster frame, intensity),
    ``point_labels`` (N,) (raw RELLIS ids, or the 20 contiguous ids of ontology ``rellis3d``
    after the default ``remap``), ``point_instances`` (N,) uint16 (all 0 in the release),
    ``pose`` (4, 4) LiDAR-to-world when ``poses.txt`` exists, ``timestamp`` when ``times.txt``
    exists, ``calib`` (see the module docstring), ``sequence`` (``"00000"``) and ``frame_id``
    ``"00000/000104"``.

    The Ouster driver writes every pixel of its 64 x 2048 range image, so scans hold 131,072
    points of which those without a return sit exactly at (0, 0, 0) (53,364 in scan 000104,
    labelled void). ``drop_origin=True`` removes them from points and labels and records
    ``meta["kept_index"]``: (M,) int64 indices of the kept points in the original scan, so
    per-point predictions ``pred`` can be written back as ``full[kept_index] = pred``.
    ``meta["num_points_raw"]`` is the original count.

    Args:
        root: the folder holding ``pt_{train,val,test}.lst`` and the sequence folders.
        split: ``train``, ``val``, ``test`` or ``all`` (every list present, in that order).
        remap: label map (default ``"rellis3d"``); None keeps raw ids (ontology ``rellis3d-raw``).
        drop_origin: drop the points at exactly (0, 0, 0).
        calib_dir: a folder searched first for calibration files (e.g. the official
            ``cam2lidar_transforms/`` with ``0000N_transforms.yaml``).
        labels: None reads the label column of the list (the file must exist) or, for lists
            with only scans, the derived label file when the sequence has a label folder.
            True requires labels for every frame; False never reads them.
        label_dir: label folder name for lists without a label column.
        poses: read ``poses.txt`` into ``frame.pose`` when present.
        images: pair every scan with the camera image of the same frame number
            (``<seq>/pylon_camera_node/frameNNNNNN-<time>.jpg`` for scan ``NNNNNN.bin``) and its
            id mask when ``pylon_camera_node_label_id/`` has it: frames then also carry
            ``image``, ``image_labels`` (or None) and ``meta["image_timestamp"]``, the paired
            frames cross-modal models train on.
        image_dir: the camera folder inside each sequence.
        missing_images: ``error`` (a scan without its image is an image/scan pair mismatch naming
            both) or ``skip`` (leave such scans out; :attr:`skipped_scans` counts them).
    """

    name = "rellis3d-lidar"
    list_pattern = "pt_{split}.lst"
    default_label_dir = RELLIS_LIDAR_LABEL_DIR

    def __init__(self, root: str | os.PathLike[str], split: str = "train", remap: LabelMap | str | None = "rellis3d",
                 drop_origin: bool = False, calib_dir: str | os.PathLike[str] | None = None,
                 labels: bool | None = None, label_dir: str | None = None, poses: bool = True,
                 images: bool = False, image_dir: str = RELLIS_IMAGE_DIR, missing_images: str = "error") -> None:
        super().__init__(root, split, remap, calib_dir, labels, label_dir)
        if missing_images not in ("error", "skip"):
            raise DataError(f"missing_images must be 'error' or 'skip', got {missing_images!r}")
        self.drop_origin = drop_origin
        self.poses = poses
        self.images = bool(images)
        self.image_dir = image_dir
        self.skipped_scans = 0
        self._seq_files: dict[Path, KittiSequenceFiles] = {}
        self._frame_images: dict[Path, dict[int, Path]] = {}
        self._pairs: dict[tuple[Path, str], tuple[Path, Path | None]] = {}
        for e in self.entries:
            stem = e.data.stem
            seq_dir = e.data.parent.parent
            if seq_dir not in self._seq_files:
                self._seq_files[seq_dir] = KittiSequenceFiles(seq_dir, poses_need_tr=False)
            index = int(stem) if stem.isdigit() else -1
            label = self._label_path(e, stem, ".label")
            if self.images:
                pair = self._image_of(seq_dir, index)
                if pair is None:
                    if missing_images == "skip":
                        self.skipped_scans += 1
                        continue
                    raise DataError(f"{e.data}: image/scan pair mismatch: no camera image frame{max(index, 0):06d}-*.jpg "
                                    f"in {seq_dir / image_dir} (line {e.line} of {e.list_file}; pass "
                                    "missing_images='skip' to leave such scans out)")
                self._pairs[(seq_dir, stem)] = pair
            self._items.append(ScanItem(_sequence_of(e.data, self.root) or "", stem, index, e.data, label, seq_dir))
        if self.images and not self._items:
            raise DataError(f"{self.root}: no scan of split {split!r} has its camera image in {image_dir}/")

    def _image_of(self, seq_dir: Path, index: int) -> tuple[Path, Path | None] | None:
        """(image, mask or None) of frame ``index`` in a sequence, or None without an image."""
        if seq_dir not in self._frame_images:
            cam = seq_dir / self.image_dir
            table: dict[int, Path] = {}
            if cam.is_dir():
                for p in sorted(cam.iterdir()):
                    parsed = parse_rellis_image_name(p.stem)
                    if parsed is not None and p.suffix.lower() in (".jpg", ".jpeg", ".png"):
                        table.setdefault(parsed[0], p)
            self._frame_images[seq_dir] = table
        img = self._frame_images[seq_dir].get(index)
        if img is None:
            return None
        mask = seq_dir / RELLIS_IMAGE_LABEL_DIR / f"{img.stem}.png"
        return img, (mask if mask.is_file() else None)

    @classmethod
    def describe_layout(cls) -> str:
        return ("expected the RELLIS-3D LiDAR layout: ROOT/pt_{train,val,test}.lst listing ROOT-relative "
                "scan and label paths such as '00000/os1_cloud_node_kitti_bin/000104.bin "
                "00000/os1_cloud_node_semantickitti_label_id/000104.label'")

    def _item_id(self, item: object) -> str:
        it: ScanItem = item  # type: ignore[assignment]
        return f"{it.sequence}/{it.stem}" if it.sequence else it.stem

    def _load(self, item: object) -> Frame:
        it: ScanItem = item  # type: ignore[assignment]
        points, sem, inst, source = read_scan_with_labels(it.scan, it.label)
        meta: dict[str, object] = {"scan_index": it.index}
        if self.drop_origin:
            # three 1-D compares + take() are ~6x faster than any(axis=1) + fancy indexing
            kept = np.flatnonzero((points[:, 0] != 0) | (points[:, 1] != 0) | (points[:, 2] != 0))
            meta["num_points_raw"] = len(points)
            meta["kept_index"] = kept
            points = points.take(kept, axis=0)
            if sem is not None and inst is not None:
                sem, inst = sem.take(kept), inst.take(kept)
        files = self._seq_files[it.seq_dir]  # type: ignore[index]
        index_known = it.index >= 0
        calib, calib_files = self._calibration(it.sequence or None)
        source.update(calib_files)
        image = mask = None
        if self.images:
            img_path, mask_path = self._pairs[(it.seq_dir, it.stem)]  # type: ignore[index]
            image = read_color_png(img_path)
            source["image"] = img_path
            if mask_path is not None:
                mask = read_label_png(mask_path)
                source["image_labels"] = mask_path
            parsed = parse_rellis_image_name(img_path.stem)
            if parsed is not None:
                meta["image_timestamp"] = parsed[1]
        return Frame(
            frame_id=self._item_id(it), points=points, point_fields=XYZI, point_labels=sem, point_instances=inst,
            image=image, image_labels=mask, ontology=self.source_ontology_name, calib=calib,
            pose=files.pose(it.index) if (self.poses and index_known) else None,
            timestamp=files.time(it.index) if index_known else None,
            sequence=it.sequence or None, source=source, meta=meta,
        ).validate()


@dataclass(frozen=True)
class _ImageItem:
    sequence: str | None
    stem: str
    image: Path
    label: Path | None


class Rellis3DImageDataset(_RellisBase):
    """RELLIS-3D camera images with id masks (raw RELLIS ids in L-mode PNGs).

    Frames carry ``image`` (1200, 1920, 3) uint8 RGB, ``image_labels`` (1200, 1920) (raw ids, or
    the ``rellis3d`` ids after the default ``remap``), ``timestamp`` in seconds parsed from the
    file name (``frame000104-1581624663_149`` -> 1581624663.149), ``meta["frame_index"]`` (104),
    ``calib`` (see the module docstring), ``sequence`` and ``frame_id``
    ``"00000/frame000104-1581624663_149"``.

    Args:
        root: the folder holding ``{train,val,test}.lst`` and the sequence folders.
        split, remap, calib_dir, labels, label_dir: as for :class:`Rellis3DLidarDataset`
            (derived masks are ``pylon_camera_node_label_id/<stem>.png``).
    """

    name = "rellis3d-image"
    list_pattern = "{split}.lst"
    default_label_dir = RELLIS_IMAGE_LABEL_DIR

    def __init__(self, root: str | os.PathLike[str], split: str = "train", remap: LabelMap | str | None = "rellis3d",
                 calib_dir: str | os.PathLike[str] | None = None, labels: bool | None = None,
                 label_dir: str | None = None) -> None:
        super().__init__(root, split, remap, calib_dir, labels, label_dir)
        for e in self.entries:
            stem = e.data.stem
            self._items.append(_ImageItem(_sequence_of(e.data, self.root), stem, e.data, self._label_path(e, stem, ".png")))

    @classmethod
    def describe_layout(cls) -> str:
        return ("expected the RELLIS-3D camera layout: ROOT/{train,val,test}.lst listing ROOT-relative image "
                "and mask paths such as '00000/pylon_camera_node/frame000000-1581624652_750.jpg "
                "00000/pylon_camera_node_label_id/frame000000-1581624652_750.png'")

    def _item_id(self, item: object) -> str:
        it: _ImageItem = item  # type: ignore[assignment]
        return f"{it.sequence}/{it.stem}" if it.sequence else it.stem

    def _load(self, item: object) -> Frame:
        it: _ImageItem = item  # type: ignore[assignment]
        image = read_color_png(it.image)
        source: dict[str, Path] = {"image": it.image}
        mask = None
        if it.label is not None:
            mask = read_label_png(it.label)
            source["image_labels"] = it.label
        parsed = parse_rellis_image_name(it.stem)
        calib, calib_files = self._calibration(it.sequence)
        source.update(calib_files)
        return Frame(
            frame_id=self._item_id(it), image=image, image_labels=mask, ontology=self.source_ontology_name,
            calib=calib, timestamp=None if parsed is None else parsed[1], sequence=it.sequence,
            source=source, meta={} if parsed is None else {"frame_index": parsed[0]},
        ).validate()
