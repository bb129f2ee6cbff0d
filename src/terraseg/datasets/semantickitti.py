"""SemanticKITTI reader (and the KITTI-format sequence helpers shared with RELLIS-3D).

Layout (the official ``data_odometry_velodyne`` + ``data_odometry_labels`` +
``data_odometry_calib`` downloads unpacked into one folder)::

    ROOT/sequences/NN/velodyne/XXXXXX.bin   float32 records x, y, z, remission (metres, LiDAR frame)
    ROOT/sequences/NN/labels/XXXXXX.label   uint32 per point: semantic id (low 16 bits) | instance << 16
    ROOT/sequences/NN/calib.txt             KITTI calibration: P0..P3 (3x4) and Tr (velodyne -> cam0)
    ROOT/sequences/NN/poses.txt             one cam0 pose per scan (12 numbers per line), optional
    ROOT/sequences/NN/times.txt             one time per scan (s since the sequence start), optional

Standard splits: train = 00-07, 09, 10; val = 08; test = 11-21 (no labels are published for the
test sequences, so their frames have no ``point_labels``).

Poses. The KITTI ``poses.txt`` holds poses of the left grey camera cam0: ``P_i`` maps cam0 at scan
``i`` into the world frame, which is cam0 at scan 0. ``Tr`` from ``calib.txt`` maps LiDAR points
into cam0 (``p_cam = Tr @ p_lidar``). Frames carry the LiDAR pose

    pose_lidar_i = inv(Tr) @ P_i @ Tr

(see :func:`kitti_lidar_poses`), which maps LiDAR points of scan ``i`` into the world frame
*expressed in LiDAR axes at scan 0*: ``p_world = pose_lidar_i @ p_lidar`` (so scan 0 has the
identity pose). This is the convention of the semantic-kitti-api tools.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import numpy as np

from terraseg.datasets.base import FrameDataset
from terraseg.errors import DataError
from terraseg.frame import XYZI, Calibration, Frame
from terraseg.io.calib import read_kitti_calib, read_kitti_poses
from terraseg.io.images import read_image
from terraseg.io.scans import read_bin, read_label
from terraseg.ontology import LabelMap

#: The official SemanticKITTI sequence splits.
SEMANTICKITTI_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"),
    "val": ("08",),
    "test": tuple(f"{i:02d}" for i in range(11, 22)),
}
#: Sequences with published labels (the train and val splits).
LABELLED_SEQUENCES: frozenset[str] = frozenset(SEMANTICKITTI_SPLITS["train"] + SEMANTICKITTI_SPLITS["val"])


class ScanItem(NamedTuple):
    """One listed scan (file names only; nothing is read when listing).

    Attributes:
        sequence: sequence name (``"08"``, ``"00000"``, a GOOSE scenario ...).
        stem: file stem without the scan suffix (``"000104"``).
        index: row of this scan in the sequence's ``poses.txt`` / ``times.txt``: the stem as an
            integer when it is numeric, else the position in the sorted folder listing, or -1
            when unknown (then the frame gets no pose or time).
        scan: path of the ``.bin`` file.
        label: path of the ``.label`` file, or None when the frame is read without labels.
        seq_dir: the sequence folder holding ``poses.txt``, ``times.txt`` and ``calib.txt``.
    """

    sequence: str
    stem: str
    index: int
    scan: Path
    label: Path | None
    seq_dir: Path | None


def kitti_lidar_poses(poses_cam: np.ndarray, Tr: np.ndarray) -> np.ndarray:
    """Convert KITTI cam0 poses to LiDAR poses: ``inv(Tr) @ P_i @ Tr`` for every ``P_i``.

    Args:
        poses_cam: (M, 4, 4) float64 cam0-to-world poses from ``poses.txt``.
        Tr: (4, 4) velodyne-to-cam0 transform from ``calib.txt`` (``p_cam = Tr @ p_lidar``).

    Returns:
        (M, 4, 4) float64 LiDAR-to-world poses, world = LiDAR frame of scan 0 when ``P_0 = I``.
    """
    Tr = np.asarray(Tr, dtype=np.float64).reshape(4, 4)
    return np.linalg.inv(Tr) @ np.asarray(poses_cam, dtype=np.float64) @ Tr


def kitti_camera_calibration(calib: dict[str, np.ndarray], camera: str = "P2") -> Calibration:
    """A :class:`Calibration` for one KITTI camera from a parsed ``calib.txt``.

    The rectified projection ``P = K @ [I | b]`` of camera ``camera`` (``P2`` = left colour
    camera, ``image_2``) is split into ``K = P[:, :3]`` and the offset ``b = inv(K) @ P[:, 3]``
    (metres, in the rectified cam0 axes), so ``T_cam_lidar = [I | b] @ Tr`` maps LiDAR points
    into that camera and ``K @ (T_cam_lidar @ p)[:3]`` equals ``P @ Tr @ p``. No distortion
    (the images are rectified); ``image_size`` is unknown from ``calib.txt`` and left None.
    """
    if camera not in calib:
        raise DataError(f"no {camera!r} entry (entries: {', '.join(sorted(calib))})")
    if "Tr" not in calib:
        raise DataError("no 'Tr' entry (velodyne to cam0 transform)")
    P = calib[camera]
    K = P[:, :3]
    offset = np.eye(4)
    offset[:3, 3] = np.linalg.solve(K, P[:, 3])
    return Calibration(K=K, T_cam_lidar=offset @ calib["Tr"])


def read_times(path: Path) -> np.ndarray:
    """Read a KITTI ``times.txt`` (one float per line, seconds) as a (M,) float64 array."""
    values: list[float] = []
    for i, ln in enumerate(path.read_text().splitlines()):
        if not ln.strip():
            continue
        try:
            values.append(float(ln.split()[0]))
        except ValueError:
            raise DataError(f"{path}: line {i + 1} is not a number: {ln.strip()!r}") from None
    return np.asarray(values, dtype=np.float64)


def read_scan(path: Path, num_fields: int = 4) -> np.ndarray:
    """Read a ``.bin`` scan (see :func:`terraseg.io.scans.read_bin`)."""
    return read_bin(path, num_fields=num_fields)


def read_scan_with_labels(scan: Path, label: Path | None
                          ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, Path]]:
    """A scan, its semantic and instance ids when ``label`` is given (count checked), and the
    ``frame.source`` entries: ``(points, semantic or None, instance or None, source)``."""
    points = read_scan(scan)
    source: dict[str, Path] = {"points": scan}
    sem = inst = None
    if label is not None:
        sem, inst = read_label(label, num_points=len(points))
        source["point_labels"] = label
    return points, sem, inst, source


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class KittiSequenceFiles:
    """Lazily read per-sequence files of a KITTI-format sequence folder: poses, times, calib.

    Each file is read once, on first use, and cached. Missing optional files give None.

    Args:
        seq_dir: the sequence folder (holding ``calib.txt``, ``poses.txt``, ``times.txt``).
        poses_need_tr: True for KITTI (poses are cam0 poses, so ``Tr`` from ``calib.txt`` is
            needed to convert them and its absence is an error). False for datasets whose poses
            are already LiDAR poses when ``calib.txt`` is absent (RELLIS-3D, whose ``Tr`` is the
            identity): then the poses are used as they are.
    """

    def __init__(self, seq_dir: Path, poses_need_tr: bool = True) -> None:
        self.seq_dir = seq_dir
        self.poses_need_tr = poses_need_tr

    @cached_property
    def calib(self) -> dict[str, np.ndarray] | None:
        """Parsed ``calib.txt`` (see :func:`terraseg.io.calib.read_kitti_calib`) or None."""
        p = self.seq_dir / "calib.txt"
        return read_kitti_calib(p) if p.is_file() else None

    @cached_property
    def lidar_poses(self) -> np.ndarray | None:
        """(M, 4, 4) float64 LiDAR-to-world poses (read-only) or None without ``poses.txt``."""
        p = self.seq_dir / "poses.txt"
        if not p.is_file():
            return None
        poses = read_kitti_poses(p)
        calib = self.calib
        if calib is None or "Tr" not in calib:
            if self.poses_need_tr:
                raise DataError(f"{p}: KITTI poses are cam0 poses; converting them to LiDAR poses needs "
                                f"'Tr' from {self.seq_dir / 'calib.txt'}, which is missing "
                                "(pass poses=False to read the scans without poses)")
            return _readonly(poses)
        return _readonly(kitti_lidar_poses(poses, calib["Tr"]))

    @cached_property
    def times(self) -> np.ndarray | None:
        """(M,) float64 scan times in seconds (read-only) or None without ``times.txt``."""
        p = self.seq_dir / "times.txt"
        return _readonly(read_times(p)) if p.is_file() else None

    def pose(self, index: int) -> np.ndarray | None:
        """A (4, 4) float64 copy of the LiDAR pose of scan ``index`` (None without poses)."""
        poses = self.lidar_poses
        if poses is None:
            return None
        if not 0 <= index < len(poses):
            raise DataError(f"{self.seq_dir / 'poses.txt'}: no pose for scan {index} (the file has {len(poses)})")
        return poses[index].copy()

    def time(self, index: int) -> float | None:
        """The time of scan ``index`` in seconds (None without ``times.txt``)."""
        times = self.times
        if times is None:
            return None
        if not 0 <= index < len(times):
            raise DataError(f"{self.seq_dir / 'times.txt'}: no time for scan {index} (the file has {len(times)})")
        return float(times[index])


def list_scans(folder: Path, suffix: str) -> list[tuple[str, int]]:
    """(stem, index) of the files ``*<suffix>`` in ``folder``, sorted by name.

    ``index`` is the stem as an integer when it is numeric, else the position in the listing.
    """
    names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(suffix) and e.is_file())
    stems = [n[: len(n) - len(suffix)] for n in names]
    return [(s, int(s) if s.isdigit() else i) for i, s in enumerate(stems)]


def _normalise_sequences(seqs: Iterable[str | int]) -> tuple[str, ...]:
    out = []
    for s in seqs:
        if isinstance(s, (int, np.integer)):
            out.append(f"{int(s):02d}")
        else:
            s = str(s).strip()
            out.append(s.zfill(2) if s.isdigit() else s)
    if not out:
        raise DataError("empty list of sequences")
    return tuple(out)


class SemanticKITTIDataset(FrameDataset):
    """SemanticKITTI LiDAR scans with semantic and instance labels, poses and times.

    Frames carry ``points`` (N, 4) float32 (x, y, z in metres in the LiDAR frame, remission as
    ``intensity``), ``point_labels`` (N,) (raw SemanticKITTI ids, or train ids after ``remap``),
    ``point_instances`` (N,) uint16, ``pose`` (4, 4) float64 LiDAR-to-world (see the module
    docstring for the conversion from the KITTI cam0 poses), ``timestamp`` (s since the sequence
    start, from ``times.txt``), ``calib`` (the ``camera`` from ``calib.txt``), ``sequence``
    (``"08"``) and ``frame_id`` ``"NN/XXXXXX"``. ``meta["scan_index"]`` is the scan number.

    Args:
        root: folder holding ``sequences/``.
        split: ``train``, ``val``, ``test``, ``all`` (every sequence folder present) or an
            explicit list of sequences (``["00", "08"]`` or ``[0, 8]``). For the standard
            splits, sequences that are not on disk are skipped (listed in
            :attr:`missing_sequences`); an explicit sequence that is missing is an error.
        remap: label map applied to the raw labels; the default ``"semantickitti"`` gives the
            official 20 train ids (learning_map, 0 = unlabeled); None keeps the raw ids.
        labels: None (default) reads labels where they are published: they are required for
            sequences 00-10 (a missing ``labels/`` folder is an error) and read for any other
            sequence only when its ``labels/`` folder exists. True requires labels everywhere,
            False never reads them.
        poses: read ``poses.txt`` (when present) into ``frame.pose``.
        camera: which projection of ``calib.txt`` gives ``frame.calib`` (``"P2"``, the left
            colour camera); None leaves ``calib`` unset.
        scan_dir, label_dir, scan_suffix, label_suffix: folder names and file suffixes inside
            each sequence folder.
        ontology: the label space of the ``.label`` files; another name than
            ``semantickitti-raw`` (for example ``sim`` for the simulator's scans) reads
            SemanticKITTI-format data in that ontology, and then the default remap is none.
        images: pair every scan with its camera image ``sequences/NN/<image_dir>/XXXXXX.png``
            (the KITTI odometry colour images): frames then also carry ``image`` and the
            ``calib`` of ``camera`` (``P2`` and ``Tr`` of ``calib.txt``) with the image's size, the
            paired frames cross-modal models train on. A scan without its image is an image/scan
            pair mismatch (one error naming both files), as is a sequence without ``calib.txt``.
        image_dir: the image folder of each sequence (default: ``image_2`` for ``P2``,
            ``image_3`` for ``P3``).
    """

    name = "semantickitti"
    source_ontology_name = "semantickitti-raw"

    def __init__(self, root: str | os.PathLike[str], split: str | Sequence[str | int] = "train",
                 remap: LabelMap | str | None = "semantickitti", labels: bool | None = None,
                 poses: bool = True, camera: str | None = "P2", scan_dir: str = "velodyne",
                 label_dir: str = "labels", scan_suffix: str = ".bin", label_suffix: str = ".label",
                 ontology: str = "semantickitti-raw", images: bool = False, image_dir: str | None = None) -> None:
        if ontology != "semantickitti-raw":  # SemanticKITTI-format scans in another label space (e.g. the simulator's)
            self.source_ontology_name = ontology
            if remap == "semantickitti":
                remap = None
        explicit = not isinstance(split, str)
        super().__init__(root, "all" if explicit else split, remap)  # type: ignore[arg-type]
        seq_root = self.root / "sequences"
        if not seq_root.is_dir():
            hint = " (this looks like the sequences folder itself: pass its parent)" if self.root.name == "sequences" else ""
            raise DataError(f"{self.root}: no 'sequences' folder{hint}; {self.describe_layout()}")
        self.scan_dir, self.label_dir = scan_dir, label_dir
        self.scan_suffix, self.label_suffix = scan_suffix, label_suffix
        self.poses, self.camera = poses, camera
        self.images = bool(images)
        if self.images and camera is None:
            raise DataError("images=True needs the camera whose calibration projects the points (camera='P2')")
        self.image_dir = image_dir or {"P2": "image_2", "P3": "image_3", "P0": "image_0", "P1": "image_1"}.get(
            str(camera), "image_2")
        self.missing_sequences: tuple[str, ...] = ()

        present = sorted(e.name for e in os.scandir(seq_root) if e.is_dir())
        if explicit:
            self.sequences = _normalise_sequences(split)  # type: ignore[arg-type]
            absent = [s for s in self.sequences if s not in present]
            if absent:
                raise DataError(f"{seq_root}: sequences {absent} not found (present: {', '.join(present) or 'none'})")
            self.split = "custom"
        elif split == "all":
            self.sequences = tuple(present)
        else:
            wanted = SEMANTICKITTI_SPLITS[split]
            self.sequences = tuple(s for s in wanted if s in present)
            self.missing_sequences = tuple(s for s in wanted if s not in present)
        if not self.sequences:
            wanted_txt = "no sequence folders" if split == "all" else \
                f"none of the {split} sequences ({', '.join(SEMANTICKITTI_SPLITS[split])}) is present"
            raise DataError(f"{seq_root}: {wanted_txt}; {self.describe_layout()}")

        self._seq_files: dict[str, KittiSequenceFiles] = {}
        self._calibs: dict[str, Calibration | None] = {}
        self._images: dict[tuple[str, str], Path] = {}
        for seq in self.sequences:
            seq_dir = seq_root / seq
            vdir = seq_dir / scan_dir
            if not vdir.is_dir():
                raise DataError(f"{vdir}: scan folder not found (sequence {seq}); {self.describe_layout()}")
            ldir = seq_dir / label_dir
            use_labels = self._use_labels(labels, seq, ldir)
            self._seq_files[seq] = KittiSequenceFiles(seq_dir, poses_need_tr=True)
            images_here: dict[str, Path] = {}
            if self.images:
                idir = seq_dir / self.image_dir
                if not (seq_dir / "calib.txt").is_file():
                    raise DataError(f"{seq_dir / 'calib.txt'}: not found; images=True projects the scans into the "
                                    f"{self.image_dir} images with its {camera} and Tr")
                if idir.is_dir():
                    images_here = {p.stem: p for p in idir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")}
            for stem, index in list_scans(vdir, scan_suffix):
                lab = ldir / f"{stem}{label_suffix}" if use_labels else None
                if self.images and stem not in images_here:
                    raise DataError(f"{vdir / (stem + scan_suffix)}: image/scan pair mismatch: no camera image "
                                    f"{seq_dir / self.image_dir / stem}.png (images=True pairs every scan with the "
                                    f"{self.image_dir} image of the same number)")
                if self.images:
                    self._images[(seq, stem)] = images_here[stem]
                self._items.append(ScanItem(seq, stem, index, vdir / f"{stem}{scan_suffix}", lab, seq_dir))
        if not self._items:
            raise DataError(f"{seq_root}: no '*{scan_suffix}' scans in {scan_dir}/ of sequences "
                            f"{', '.join(self.sequences)}")

    @staticmethod
    def _use_labels(labels: bool | None, seq: str, ldir: Path) -> bool:
        if labels is False:
            return False
        if ldir.is_dir():
            return True
        if labels is True or seq in LABELLED_SEQUENCES:
            why = "labels=True" if labels else f"sequence {seq} is a labelled SemanticKITTI sequence"
            raise DataError(f"{ldir}: label folder not found ({why}; unpack data_odometry_labels "
                            "into the same folder, or pass labels=False to read the scans only)")
        return False

    @classmethod
    def describe_layout(cls) -> str:
        return ("expected the SemanticKITTI layout ROOT/sequences/NN/velodyne/XXXXXX.bin with labels in "
                "ROOT/sequences/NN/labels/XXXXXX.label (and calib.txt, poses.txt, times.txt per sequence)")

    def calibration(self, sequence: str) -> Calibration | None:
        """The :class:`Calibration` of ``camera`` for a sequence (cached, arrays read-only), or
        None when ``camera`` is None or the sequence has no ``calib.txt``."""
        if sequence not in self._calibs:
            files = self._seq_files[sequence]
            calib = None
            if self.camera is not None and files.calib is not None:
                try:
                    calib = kitti_camera_calibration(files.calib, self.camera)
                except DataError as exc:
                    raise DataError(f"{files.seq_dir / 'calib.txt'}: {exc}") from None
                for a in (calib.K, calib.T_cam_lidar):
                    _readonly(a)  # type: ignore[arg-type]
            self._calibs[sequence] = calib
        return self._calibs[sequence]

    def _item_id(self, item: object) -> str:
        it: ScanItem = item  # type: ignore[assignment]
        return f"{it.sequence}/{it.stem}"

    def _load(self, item: object) -> Frame:
        it: ScanItem = item  # type: ignore[assignment]
        points, sem, inst, source = read_scan_with_labels(it.scan, it.label)
        files = self._seq_files[it.sequence]
        calib = self.calibration(it.sequence)
        if calib is not None:
            source["calib"] = files.seq_dir / "calib.txt"
        image = None
        if self.images:
            img_path = self._images[(it.sequence, it.stem)]
            image = read_image(img_path)
            source["image"] = img_path
            if calib is not None:  # calib.txt does not say the image size; the image does
                calib = Calibration(K=calib.K, dist=calib.dist, T_cam_lidar=calib.T_cam_lidar,
                                    image_size=(int(image.shape[1]), int(image.shape[0])))
        return Frame(
            frame_id=self._item_id(it), points=points, point_fields=XYZI, point_labels=sem,
            point_instances=inst, image=image, ontology=self.source_ontology_name, calib=calib,
            pose=files.pose(it.index) if self.poses else None, timestamp=files.time(it.index),
            sequence=it.sequence, source=source, meta={"scan_index": it.index},
        ).validate()
