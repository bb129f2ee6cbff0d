"""Writing the generic layout: :func:`write_generic_frame` and :class:`GenericWriter`.

The single writer of the layout that :class:`terraseg.datasets.generic.GenericDataset` reads.
Frames (the simulator, dataset copies) go through :class:`GenericWriter`; bag extraction
(:mod:`terraseg.extract`), which decodes messages on worker threads and copies compressed images
byte for byte, builds its files with the same layout functions:

- :func:`layout_path` (where a modality's file of a stem goes), :data:`COMPLETE_SUFFIXES`
  (which file marks a stem's modality as written) and :func:`stamp_stem` (the stem of a
  timestamped frame);
- :func:`encode_id_mask` (id masks: 8-bit PNG, 16-bit when ids exceed 255) and
  :func:`encode_point_files` (``.bin`` x, y, z, intensity plus ``.fields.npz`` for the other
  fields, byte-identical for identical input);
- :func:`timestamps_text`, :func:`write_split_lists`, :func:`write_dataset_ontology`,
  :func:`write_dataset_calib` for the per-dataset files, and :func:`write_if_changed` so a rerun
  leaves identical files untouched.
"""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import yaml

from terraseg.datasets.base import SPLITS
from terraseg.datasets.generic import FIELDS_SUFFIX, MODALITY_DIRS, POINT_FIELDS_KEY, read_timestamps
from terraseg.errors import ConfigError, DataError, TerrasegError
from terraseg.frame import XYZI, Calibration, Frame
from terraseg.io.atomic import atomic_write_bytes
from terraseg.io.calib import calibration_to_dict, read_calib_yaml, write_calib_yaml
from terraseg.io.images import IMAGE_SUFFIXES, encode_image
from terraseg.io.palette import load_palette
from terraseg.io.png import encode_png
from terraseg.ontology import Ontology, get_ontology

_STEM_RE = re.compile(r"[^/\\\x00]+")

COMPLETE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "images": (".png", ".jpg", ".jpeg"), "masks": (".png",), "points": (".bin",), "point_labels": (".label",)}
"""Per modality folder, the suffixes of the file that marks a stem's modality as written (for
points the ``.bin``, written after its ``.fields.npz``)."""


# ============================================================================ the layout's files
def layout_path(root: str | os.PathLike[str], modality: str, stem: str, suffix: str, split: str | None = None) -> Path:
    """``root/<modality>/[<split>/]<stem><suffix>``: where a file of the layout goes."""
    if modality not in MODALITY_DIRS:
        raise DataError(f"unknown generic-layout folder {modality!r} (expected {', '.join(MODALITY_DIRS)})")
    base = Path(root) / modality
    return (base / split if split else base) / f"{_check_stem(stem)}{suffix}"


def stamp_stem(stamp_ns: int) -> str:
    """File stem of a frame stamp: ``<sec>_<nanosec>`` zero padded to 10 and 9 digits (bag
    extraction's stems, time-sortable as text)."""
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return f"{sec:010d}_{nsec:09d}"


def stamp_seconds_text(stamp_ns: int) -> str:
    """A stamp in seconds as exact text (``<sec>.<nanosec>``, no float rounding) for ``timestamps.csv``."""
    sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
    return f"{sec}.{nsec:09d}"


def write_if_changed(path: str | os.PathLike[str], data: bytes) -> bool:
    """Write ``data`` atomically unless ``path`` already holds exactly these bytes (a rerun then
    leaves the file and its mtime untouched). Returns whether it wrote."""
    p = Path(path)
    try:
        if p.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write_bytes(p, data)
    return True


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` (readable by ``np.load``) with fixed zip timestamps, so the
    same arrays always give the same bytes (``np.savez`` stamps the current time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            one = io.BytesIO()
            np.lib.format.write_array(one, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), one.getvalue())
    return buf.getvalue()


def encode_id_mask(ids: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an (H, W) id mask: 8-bit, or 16-bit when the array is uint16 or holds ids
    above 255 (so dtypes round-trip). ``compress_level`` 0-9 (1: fast, ISA-L when installed)."""
    a = np.asarray(ids)
    wide = a.dtype == np.uint16 or (a.size > 0 and int(a.max()) > 255)
    return encode_png(a.astype(np.uint16) if wide else a.astype(np.uint8), compress_level)


def encode_point_files(xyzi: np.ndarray, extra: Mapping[str, np.ndarray] | None = None,
                       order: Sequence[str] | None = None) -> list[tuple[str, bytes]]:
    """The files of one point cloud: ``[(".fields.npz", bytes)]`` when there are other fields,
    then ``(".bin", bytes)`` (written last: it marks the points complete).

    Args:
        xyzi: (N, 4) x, y, z, intensity (0 for clouds without intensity), stored as float32.
        extra: every other per-point field, (N,) arrays kept in their own dtype.
        order: the cloud's original field order, stored as ``__point_fields__`` when it is not
            ``x, y, z, intensity`` followed by ``extra`` (e.g. a cloud without intensity).
    """
    arr = np.asarray(xyzi)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DataError(f"points must be (N, 4) x, y, z, intensity, got {arr.shape}")
    files: list[tuple[str, bytes]] = []
    arrays = {k: np.asarray(v) for k, v in (extra or {}).items()}
    for k, v in arrays.items():
        if v.shape[:1] != (len(arr),):
            raise DataError(f"point field {k!r} has {v.shape[0] if v.ndim else 0} values for {len(arr)} points")
    if order is not None and list(order) != list(XYZI) + list(arrays):
        arrays[POINT_FIELDS_KEY] = np.array([str(n) for n in order])
    if arrays:
        files.append((FIELDS_SUFFIX, npz_bytes(arrays)))
    files.append((".bin", np.ascontiguousarray(arr, dtype="<f4").tobytes()))
    return files


def timestamps_text(rows: Iterable[tuple[str, float | str, str | None]]) -> str:
    """``timestamps.csv`` text of ``(stem, seconds, split)`` rows in the given order: a header,
    and the split column only when a row has a split. Seconds are a float (written exactly with
    ``repr``) or already-formatted text (:func:`stamp_seconds_text`)."""
    rows = list(rows)
    has_split = any(sp for _, _, sp in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["stem", "timestamp_s", "split"] if has_split else ["stem", "timestamp_s"])
    for stem, t, split in rows:
        text = t if isinstance(t, str) else repr(float(t))
        w.writerow([stem, text, split or ""] if has_split else [stem, text])
    return buf.getvalue()


def write_split_lists(root: str | os.PathLike[str], members: Mapping[str, Sequence[str]]) -> dict[str, Path]:
    """``root/splits/<split>.txt`` (one stem per line) for flat folders (rewritten only on change)."""
    out: dict[str, Path] = {}
    for name, stems in members.items():
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r} (expected {', '.join(SPLITS)})")
        path = Path(root) / "splits" / f"{name}.txt"
        write_if_changed(path, "".join(f"{s}\n" for s in stems).encode())
        out[name] = path
    return out


def write_dataset_ontology(root: str | os.PathLike[str], ontology: Ontology, *, replace: bool = False) -> Path:
    """``root/ontology.yaml`` (rewritten only on change). An existing file with other classes is
    an error unless ``replace``."""
    path = Path(root) / "ontology.yaml"
    if not replace and path.is_file():
        old = load_palette(path)
        if [(c.id, c.name, c.color) for c in old] != [(c.id, c.name, c.color) for c in ontology]:
            raise DataError(f"{path}: existing ontology {old.name!r} differs from {ontology.name!r}")
    write_if_changed(path, yaml.safe_dump(ontology.to_dict(), sort_keys=False, allow_unicode=True).encode())
    return path


def write_dataset_calib(root: str | os.PathLike[str], calib: Calibration, *, replace: bool = False) -> Path:
    """``root/calib.yaml`` (left untouched when it holds the same calibration). An existing file
    with another calibration is an error unless ``replace``."""
    path = Path(root) / "calib.yaml"
    if path.is_file():
        try:
            same = _calib_equal(read_calib_yaml(path), calib)
        except DataError:
            same = False
        if same:
            return path
        if not replace:
            raise DataError(f"{path}: existing calibration differs from the frames' calibration")
    return write_calib_yaml(path, calib)



def _check_stem(stem: str) -> str:
    if not stem or not _STEM_RE.fullmatch(stem) or stem.startswith(".") or stem.endswith(".fields"):
        raise DataError(f"invalid frame stem {stem!r} (no path separators, no leading '.', not ending in '.fields')")
    return stem


def _int_array(arr: np.ndarray, what: str, where: str, ndim: int) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim != ndim or a.dtype.kind not in "ui":
        raise DataError(f"{where}: {what} must be a {ndim}-D integer array, got {a.shape} {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 0xFFFF):
        raise DataError(f"{where}: {what} values must be in 0..65535 (got {a.min()}..{a.max()})")
    return a


def _encode_frame(frame: Frame, image_format: str, jpeg_quality: int, where: str) -> dict[str, tuple[str, bytes]]:
    """Validate a frame and encode its files: modality -> (file suffix, bytes). Nothing touches disk."""
    frame.validate()
    out: dict[str, tuple[str, bytes]] = {}
    if frame.image is not None:
        suffix = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg"}.get(image_format.lower().lstrip("."))
        if suffix is None:
            raise DataError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
        out["images"] = (suffix, encode_image(frame.image, suffix, jpeg_quality, where=f"{where} image"))
    if frame.image_labels is not None:
        ids = _int_array(frame.image_labels, "image labels", where, 2)
        out["masks"] = (".png", encode_id_mask(ids))
    if frame.points is not None:
        pts = np.asarray(frame.points)
        names = list(frame.point_fields)
        if names[:3] != ["x", "y", "z"]:
            raise DataError(f"{where}: point fields must start with x, y, z, got {names}")
        if len(set(names)) != len(names) or POINT_FIELDS_KEY in names:
            raise DataError(f"{where}: invalid point field names {names}")
        if pts.dtype.kind != "f":
            raise DataError(f"{where}: points must be floating point, got {pts.dtype}")
        bad = ~np.isfinite(pts[:, :3]).all(axis=1)
        if bad.any():
            raise DataError(f"{where}: {int(bad.sum())} points have NaN or infinite coordinates "
                            f"(first at index {int(np.argmax(bad))})")
        xyzi = np.zeros((len(pts), 4), dtype="<f4")
        xyzi[:, :3] = pts[:, :3]
        if "intensity" in names:
            xyzi[:, 3] = pts[:, names.index("intensity")]
        extra = {n: np.ascontiguousarray(pts[:, names.index(n)], dtype=np.float32) for n in names[3:] if n != "intensity"}
        for suffix, data in encode_point_files(xyzi, extra, names):
            out["fields" if suffix == FIELDS_SUFFIX else "points"] = (suffix, data)
    if frame.point_labels is not None:
        sem = _int_array(frame.point_labels, "point labels", where, 1).astype("<u4")
        if frame.points is None:
            raise DataError(f"{where}: point labels without points")
        if frame.point_instances is not None:
            inst = _int_array(frame.point_instances, "point instances", where, 1).astype("<u4")
            if inst.shape != sem.shape:
                raise DataError(f"{where}: {len(inst)} point instances for {len(sem)} point labels")
            sem = sem | (inst << 16)
        out["point_labels"] = (".label", sem.astype("<u4").tobytes())
    if not out:
        raise DataError(f"{where}: frame has no image, mask, points or point labels to write")
    return out


_MODALITY_SUFFIXES = {"images": (*IMAGE_SUFFIXES, *(s.upper() for s in IMAGE_SUFFIXES)), "masks": (".png", ".PNG"),
                      "points": (".bin", FIELDS_SUFFIX), "point_labels": (".label",)}


def _stem_files(folder: Path, modality: str, stem: str) -> list[Path]:
    """Existing files of ``stem`` in one modality folder (the suffixes that modality uses)."""
    if not folder.is_dir():
        return []
    return [folder / (stem + s) for s in _MODALITY_SUFFIXES[modality] if (folder / (stem + s)).is_file()]


def default_stem(frame: Frame, stem: str | None = None) -> str:
    """The file stem a frame is written under: ``stem``, else ``meta["stem"]``, else the id with / -> _."""
    return _check_stem(stem if stem is not None else str(frame.meta.get("stem") or frame.frame_id.replace("/", "_")))


def write_generic_frame(root: str | os.PathLike[str], frame: Frame, split: str | None = None,
                        stem: str | None = None, *, image_format: str = "png", jpeg_quality: int = 95) -> dict[str, Path]:
    """Write one frame into the generic layout under ``root``; return the written paths by modality.

    Writes ``images/[split/]<stem>.png`` (or ``.jpg``), ``masks/...<stem>.png`` (8-bit ids when the
    label dtype is uint8 and ids fit, else 16-bit), ``points/...<stem>.bin`` (x, y, z, intensity;
    intensity 0 when the frame has none) plus ``<stem>.fields.npz`` for every other point field
    (float32) and ``point_labels/...<stem>.label`` (semantic | instance << 16).

    The frame is validated and every file encoded in memory before anything is written, and each
    file is written atomically, so a bad frame leaves nothing behind. Files of the same stem from an
    earlier write that this frame does not produce (another image suffix, a mask the frame no
    longer has) are removed. Per-dataset files (calib.yaml, ontology.yaml, timestamps.csv) are
    written by :class:`GenericWriter`.

    Args:
        split: None (flat folders) or ``train`` / ``val`` / ``test`` (sub-folders).
        stem: file stem; default ``frame.meta["stem"]``, else the frame id with ``/`` -> ``_``.
    """
    rootp = Path(root)
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split {split!r} (expected None or one of {', '.join(SPLITS)})")
    stem = default_stem(frame, stem)
    encoded = _encode_frame(frame, image_format, jpeg_quality, where=f"frame {frame.frame_id}")
    dirs = {m: rootp / m / split if split else rootp / m for m in MODALITY_DIRS}
    written: dict[str, Path] = {}
    for key, (suffix, data) in encoded.items():
        folder = dirs["points" if key == "fields" else key]
        written[key] = atomic_write_bytes(folder / f"{stem}{suffix}", data)
    keep = set(written.values())
    for m in MODALITY_DIRS:
        for old in _stem_files(dirs[m], m, stem):
            if old not in keep:
                old.unlink()
    return written


def _calib_equal(a: Calibration, b: Calibration) -> bool:
    da, db = calibration_to_dict(a), calibration_to_dict(b)
    return da.keys() == db.keys() and all(np.allclose(da[k], db[k], rtol=0, atol=1e-12) for k in da)


class GenericWriter:
    """Writes a whole generic dataset: frames plus ``calib.yaml``, ``ontology.yaml`` and ``timestamps.csv``.

    Use as a context manager; the per-dataset files are written on :meth:`close` (also after an
    error, for the frames written so far)::

        with GenericWriter(out_dir, ontology="goose") as w:
            for frame in frames:
                w.write(frame, split="train")

    Args:
        root: output folder (created as needed).
        ontology: the label ontology to store as ``ontology.yaml``; default: the built-in ontology
            named by the frames (frames naming different ontologies are an error).
        calib: the calibration to store as ``calib.yaml``; default: the first frame's. A frame
            with a different calibration is an error (the layout has one per dataset).
        image_format, jpeg_quality: image encoding (``"png"`` or ``"jpg"``).

    An existing ``calib.yaml`` / ``ontology.yaml`` that differs is an error; existing
    ``timestamps.csv`` rows are kept and updated.
    """

    def __init__(self, root: str | os.PathLike[str], ontology: Ontology | str | None = None,
                 calib: Calibration | None = None, *, image_format: str = "png", jpeg_quality: int = 95) -> None:
        self.root = Path(root)
        self.ontology = get_ontology(ontology) if ontology is not None else None
        self.calib = calib
        self.image_format, self.jpeg_quality = image_format, jpeg_quality
        self.timestamps: dict[tuple[str | None, str], float] = {}
        self.count = 0
        self._closed = False

    def __enter__(self) -> GenericWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
            return
        try:  # keep the original error in front; metadata for the frames written so far is still written
            self.close()
        except TerrasegError:
            pass

    def write(self, frame: Frame, split: str | None = None, stem: str | None = None) -> dict[str, Path]:
        """Write one frame (see :func:`write_generic_frame`) and remember its calibration and time."""
        if self._closed:
            raise DataError(f"{self.root}: writer already closed")
        if frame.ontology is not None:
            if self.ontology is None:
                try:
                    self.ontology = get_ontology(frame.ontology)
                except ConfigError:
                    raise DataError(f"frame {frame.frame_id}: ontology {frame.ontology!r} is not built in; pass the "
                                    "Ontology to GenericWriter(ontology=...)") from None
            elif frame.ontology != self.ontology.name:
                raise DataError(f"frame {frame.frame_id}: ontology {frame.ontology!r} differs from the dataset's "
                                f"{self.ontology.name!r}")
        if frame.calib is not None:
            if self.calib is None:
                self.calib = frame.calib
            elif not _calib_equal(frame.calib, self.calib):
                raise DataError(f"frame {frame.frame_id}: calibration differs from the dataset's (one calib.yaml "
                                "per dataset; write frames with other calibrations to another folder)")
        written = write_generic_frame(self.root, frame, split, stem, image_format=self.image_format,
                                      jpeg_quality=self.jpeg_quality)
        if frame.timestamp is not None:
            self.timestamps[(split, default_stem(frame, stem))] = float(frame.timestamp)
        self.count += 1
        return written

    def close(self) -> None:
        """Write ``calib.yaml``, ``ontology.yaml`` and ``timestamps.csv`` (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.root.mkdir(parents=True, exist_ok=True)
        if self.calib is not None:
            write_dataset_calib(self.root, self.calib)
        if self.ontology is not None:
            write_dataset_ontology(self.root, self.ontology)
        if self.timestamps:
            path = self.root / "timestamps.csv"
            rows = read_timestamps(path) if path.is_file() else {}
            rows.update(self.timestamps)
            order = {s: i for i, s in enumerate(SPLITS)}
            ordered = sorted(rows.items(), key=lambda kv: (order.get(kv[0][0] or "", -1), kv[0][1]))
            write_if_changed(path, timestamps_text((stem, t, split) for (split, stem), t in ordered).encode())
