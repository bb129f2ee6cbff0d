"""CARLA simulator exports: RGB + semantic-segmentation camera images and semantic LiDAR scans.

CARLA has no dataset layout of its own; these readers expect what its Python API writes with the
obvious calls, one file per sensor tick named by frame number (folder names configurable)::

    ROOT/rgb/<frame>.png             sensor.camera.rgb:
                                        image.save_to_disk(f"ROOT/rgb/{image.frame:06d}.png")
    ROOT/semantic/<frame>.png        sensor.camera.semantic_segmentation, either
                                        image.save_to_disk(path)  (raw: class tag in the RED channel)
                                        -> semantic_format="raw" (default), or
                                        image.save_to_disk(path, carla.ColorConverter.CityScapesPalette)
                                        -> semantic_format="cityscapes" (colours decoded with the ontology)
    ROOT/semantic_lidar/<frame>.bin  sensor.lidar.ray_cast_semantic:
                                        open(path, "wb").write(bytes(measurement.raw_data))
                                     or <frame>.ply from measurement.save_to_disk(path), or <frame>.npy
                                     from np.save(path, np.frombuffer(measurement.raw_data, dtype=...))
    ROOT/calib.yaml                  optional terraseg calibration (terraseg.io.calib.write_calib_yaml)
    ROOT/splits/{train,val,test}.txt optional frame lists (keys such as ``000123`` or ``run1/000123``)

Files are paired by their path relative to the sensor folder without suffix, so sub-folders
(one per run) work too. Class ids follow the CARLA version: tags 0..28 of 0.9.14 and later
(ontology ``carla``) or 0..22 of 0.9.10-0.9.13 (``carla-legacy``); the tags were renumbered
in 0.9.14, so reading data with the wrong ``version`` gives wrong classes.

Semantic LiDAR raw buffer (``SemanticLidarDetection``, packed, little-endian, 24 bytes/point)::

    float32 x, y, z        metres, sensor frame (Unreal: x forward, y RIGHT, z up; left-handed)
    float32 cos_inc_angle  cosine of the angle between the ray and the surface normal
    uint32  object_idx     id of the actor that was hit (0 for the static world)
    uint32  object_tag     semantic tag (class id)

:func:`read_carla_semantic_lidar` returns coordinates as stored; :class:`CarlaLidarDataset`
by default flips y (``right_handed=True``) so clouds follow the x forward, y left, z up
convention of real LiDAR datasets.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from terraseg.datasets.base import FrameDataset, check_labels_shape
from terraseg.errors import ConfigError, DataError
from terraseg.frame import Calibration, Frame
from terraseg.io.atomic import atomic_path
from terraseg.io.calib import read_calib_yaml
from terraseg.io.images import IMAGE_SUFFIXES, image_to_rgb, open_image, read_image
from terraseg.ontology import LabelMap, Ontology, decode_colors, get_ontology

SEMANTIC_LIDAR_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("cos_inc_angle", "<f4"),
                                 ("object_idx", "<u4"), ("object_tag", "<u4")])
"""One point of CARLA's semantic LiDAR raw buffer (24 bytes, little-endian)."""

LIDAR_SUFFIXES = (".bin", ".npy", ".ply")
_ALIASES = {  # canonical field -> accepted names (lower case) in .npy / .ply exports
    "x": ("x",), "y": ("y",), "z": ("z",),
    "cos_inc_angle": ("cos_inc_angle", "cosangle", "cos_angle", "cos"),
    "object_idx": ("object_idx", "objidx", "obj_idx", "idx"),
    "object_tag": ("object_tag", "objtag", "obj_tag", "tag"),
}
_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def carla_ontology_name(version: str) -> str:
    """``carla`` for CARLA 0.9.14 and later, ``carla-legacy`` for 0.9.10-0.9.13 (or ``"legacy"``)."""
    v = str(version).strip().lower()
    if v in ("legacy", "carla-legacy"):
        return "carla-legacy"
    if v in ("carla", "latest"):
        return "carla"
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", v)
    if m is None:
        raise ConfigError(f"unknown CARLA version {version!r} (expected e.g. '0.9.14', '0.9.13' or 'legacy')")
    ver = (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))
    if ver >= (0, 9, 14):
        return "carla"
    if ver >= (0, 9, 10):
        return "carla-legacy"
    raise ConfigError(f"CARLA {version}: releases before 0.9.10 used a 13-tag label set that terraseg does not "
                      "define (supported: 0.9.10-0.9.13 as 'legacy', 0.9.14 and later)")


# ----------------------------------------------------------------------------- semantic LiDAR files
def _canonical_columns(names: Iterable[str], where: str) -> dict[str, str]:
    """Map canonical field names to the names used in a file (case-insensitive aliases)."""
    lower = {n.lower(): n for n in names}
    out, missing = {}, []
    for canon, aliases in _ALIASES.items():
        hit = next((lower[a] for a in aliases if a in lower), None)
        if hit is None:
            missing.append(canon)
        else:
            out[canon] = hit
    if missing:
        raise DataError(f"{where}: semantic LiDAR fields {missing} not found (fields: {', '.join(names)}; "
                        "expected x, y, z, CosAngle, ObjIdx, ObjTag)")
    return out


def _split_fields(get: dict[str, np.ndarray], where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pts = np.stack([np.asarray(get[k], dtype=np.float32) for k in ("x", "y", "z", "cos_inc_angle")], axis=1)
    ints = []
    for k in ("object_idx", "object_tag"):
        col = np.asarray(get[k])
        if col.dtype.kind == "f":
            if col.size and (not np.isfinite(col).all() or (col != np.round(col)).any()):
                raise DataError(f"{where}: field {k} holds non-integer values")
        if col.size and (col.min() < 0 or col.max() > 0xFFFFFFFF):
            raise DataError(f"{where}: field {k} holds values outside the uint32 range")
        ints.append(col.astype(np.uint32))
    return pts, ints[0], ints[1]


def _read_ply(p: Path) -> dict[str, np.ndarray]:
    data = p.read_bytes()
    end = re.search(rb"end_header\r?\n", data)
    if not data.startswith(b"ply") or end is None:
        raise DataError(f"{p}: not a PLY file (no 'ply' magic or no end_header)")
    header = data[: end.start()].decode("ascii", errors="replace").splitlines()
    body = data[end.end():]
    fmt, count, props, element = None, 0, [], None
    for ln in header[1:]:
        tok = ln.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            fmt = tok[1] if len(tok) > 1 else None
        elif tok[0] == "element":
            element = tok[1] if len(tok) > 1 else None
            if element == "vertex":
                count = int(tok[2])
            elif len(tok) > 2 and int(tok[2]) != 0:
                raise DataError(f"{p}: PLY element {element!r} is not supported (only 'vertex')")
        elif tok[0] == "property" and element == "vertex":
            if len(tok) != 3 or tok[1] == "list" or tok[1] not in _PLY_TYPES:
                raise DataError(f"{p}: unsupported PLY property line {ln.strip()!r}")
            props.append((tok[2], _PLY_TYPES[tok[1]]))
    if not props:
        raise DataError(f"{p}: PLY header defines no vertex properties")
    names = [n for n, _ in props]
    if fmt == "ascii":
        if count == 0:
            return {n: np.zeros(0, dtype=np.float64) for n in names}
        try:
            table = np.loadtxt(io.StringIO(body.decode("ascii")), dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise DataError(f"{p}: malformed PLY vertex data ({exc})") from None
        if table.shape != (count, len(props)):
            raise DataError(f"{p}: PLY header announces {count} points x {len(props)} properties, "
                            f"data has {table.shape[0]} x {table.shape[1] if table.ndim == 2 else 0}")
        return {n: table[:, i] for i, n in enumerate(names)}
    if fmt in ("binary_little_endian", "binary_big_endian"):
        order = "<" if fmt == "binary_little_endian" else ">"
        dt = np.dtype([(n, order + t) for n, t in props])
        if len(body) < count * dt.itemsize:
            raise DataError(f"{p}: PLY body has {len(body)} bytes, {count} points need {count * dt.itemsize}")
        rec = np.frombuffer(body, dtype=dt, count=count)
        return {n: rec[n] for n in names}
    raise DataError(f"{p}: unsupported PLY format {fmt!r}")


def read_carla_semantic_lidar(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one CARLA semantic LiDAR scan (``.bin`` raw buffer, ``.ply`` or ``.npy``).

    Returns:
        points: (N, 4) float32 ``x, y, z, cos_inc_angle``; coordinates in metres in CARLA's sensor
            frame as stored (x forward, y right, z up).
        object_idx: (N,) uint32 id of the actor hit by each ray.
        tag: (N,) uint32 semantic tag (class id of ``carla`` / ``carla-legacy``).

    ``.bin``: the packed 24-byte records of ``bytes(measurement.raw_data)``. ``.ply``: CARLA's
    ``save_to_disk`` output (ascii or binary, properties x y z CosAngle ObjIdx ObjTag). ``.npy``:
    a structured array with those fields (CARLA or terraseg names, any case) or an (N, 6)
    numeric array in that column order.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: semantic LiDAR file not found")
    suffix = p.suffix.lower()
    if suffix == ".bin":
        size = p.stat().st_size
        if size % SEMANTIC_LIDAR_DTYPE.itemsize:
            raise DataError(f"{p}: size {size} bytes is not a multiple of the {SEMANTIC_LIDAR_DTYPE.itemsize}-byte "
                            "semantic LiDAR point (x, y, z, cos_inc_angle float32; object_idx, object_tag uint32)")
        rec = np.fromfile(p, dtype=SEMANTIC_LIDAR_DTYPE)
        fields = {n: rec[n] for n in SEMANTIC_LIDAR_DTYPE.names or ()}
    elif suffix == ".ply":
        raw = _read_ply(p)
        cols = _canonical_columns(raw, str(p))
        fields = {k: raw[v] for k, v in cols.items()}
    elif suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{p}: unreadable .npy file ({exc})") from None
        if arr.dtype.names:
            cols = _canonical_columns(arr.dtype.names, str(p))
            fields = {k: arr[v].ravel() for k, v in cols.items()}
        elif arr.ndim == 2 and arr.shape[1] == 6 and arr.dtype.kind in "uif":
            fields = {k: arr[:, i] for i, k in enumerate(_ALIASES)}
        else:
            raise DataError(f"{p}: expected a structured array or an (N, 6) array, got {arr.shape} {arr.dtype}")
    else:
        raise DataError(f"{p}: unsupported semantic LiDAR file suffix {suffix!r} (expected .bin, .ply or .npy)")
    pts, idx, tag = _split_fields(fields, str(p))
    bad = ~np.isfinite(pts[:, :3]).all(axis=1)
    if bad.any():
        raise DataError(f"{p}: {int(bad.sum())} points have NaN or infinite coordinates (first at index "
                        f"{int(np.argmax(bad))})")
    return pts, idx, tag


def write_carla_semantic_lidar(path: str | os.PathLike[str], points: np.ndarray, object_idx: np.ndarray,
                               tag: np.ndarray) -> Path:
    """Write a semantic LiDAR scan atomically as the raw ``.bin`` buffer or a structured ``.npy``.

    Args:
        points: (N, 4) ``x, y, z, cos_inc_angle`` (stored as float32).
        object_idx, tag: (N,) non-negative integers (stored as uint32).
    """
    p = Path(path)
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 4:
        raise DataError(f"{p}: points must be (N, 4) x, y, z, cos_inc_angle, got {pts.shape}")
    rec = np.zeros(len(pts), dtype=SEMANTIC_LIDAR_DTYPE)
    for i, k in enumerate(("x", "y", "z", "cos_inc_angle")):
        rec[k] = pts[:, i]
    for k, v in (("object_idx", object_idx), ("object_tag", tag)):
        a = np.asarray(v)
        if a.shape != (len(pts),):
            raise DataError(f"{p}: {k} must have shape ({len(pts)},), got {a.shape}")
        if a.size and (a.min() < 0 or a.max() > 0xFFFFFFFF):
            raise DataError(f"{p}: {k} values must fit uint32")
        rec[k] = a
    suffix = p.suffix.lower()
    if suffix not in (".bin", ".npy"):
        raise DataError(f"{p}: can write .bin or .npy semantic LiDAR files, not {suffix!r}")
    with atomic_path(p) as tmp:
        if suffix == ".bin":
            rec.tofile(tmp)
        else:
            with open(tmp, "wb") as fh:
                np.save(fh, rec, allow_pickle=False)
    return p


# ----------------------------------------------------------------------------- semantic camera images
def read_carla_semantic_image(path: str | os.PathLike[str], ontology: Ontology | str = "carla",
                              semantic_format: str = "raw", unknown_color: str | int = "error",
                              tag_channel: int = 0) -> np.ndarray:
    """Read a CARLA semantic segmentation image as (H, W) class ids (``ontology.label_dtype``).

    Args:
        semantic_format: ``"raw"``: the tag is channel ``tag_channel`` (0 = red, as CARLA's
            ``save_to_disk`` writes it; single-channel images are taken as ids directly).
            ``"cityscapes"``: an RGB image in the ontology's CityScapes palette.
        unknown_color: for ``"cityscapes"``, see :func:`terraseg.ontology.decode_colors`.

    Raises :class:`DataError` naming the file for values that are not tags / colours of the
    ontology (with a hint when the other format seems to have been meant).
    """
    p = Path(path)
    onto = get_ontology(ontology)
    if semantic_format not in ("raw", "cityscapes"):
        raise ConfigError(f"semantic_format must be 'raw' or 'cityscapes', got {semantic_format!r}")
    img = open_image(p)
    try:
        if semantic_format == "cityscapes":
            return decode_colors(image_to_rgb(img, str(p)), onto, unknown_color, source=str(p))
        if img.mode in ("L", "P", "I;16", "I;16L", "I;16B", "I"):
            ids = np.asarray(img)
        else:
            if img.mode not in ("RGB", "RGBA"):
                img = img.convert("RGBA")
            ids = np.asarray(img)[:, :, tag_channel]
    finally:
        img.close()
    try:
        onto.check_ids(ids, source=str(p))
    except DataError as exc:
        raise DataError(f"{exc} (a CityScapes-palette image? use semantic_format='cityscapes'; "
                        f"data from another CARLA version? check version=)") from None
    return ids.astype(onto.label_dtype)


# ----------------------------------------------------------------------------- datasets
def _index(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Files under ``folder`` keyed by relative path without suffix; two files of one key are an error."""
    out: dict[str, Path] = {}
    for f in sorted(folder.rglob("*")):
        if f.suffix.lower() in suffixes and f.is_file() and not f.name.startswith("."):
            key = f.relative_to(folder).with_suffix("").as_posix()
            if key in out:
                raise DataError(f"{f}: same frame as {out[key]} (two files for one frame)")
            out[key] = f
    return out


def _frame_number(key: str) -> int | None:
    stem = key.rsplit("/", 1)[-1]
    return int(stem) if stem.isdigit() else None


def _select_split(root: Path, split: str, keys: list[str]) -> list[str]:
    """``keys`` for ``split="all"``, else the keys listed in ``root/splits/<split>.txt`` (in list order)."""
    if split == "all":
        return keys
    lst = root / "splits" / f"{split}.txt"
    if not lst.is_file():
        raise DataError(f"{root}: no split {split!r} (CARLA exports have splits only through {lst})")
    known, out = set(keys), []
    for lineno, line in enumerate(lst.read_text().splitlines(), start=1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if key not in known:
            raise DataError(f"{lst}, line {lineno}: frame {key!r} not found in the export")
        out.append(key)
    if len(set(out)) != len(out):
        raise DataError(f"{lst}: a frame is listed twice")
    if not out:
        raise DataError(f"{lst}: empty split list")
    return out


def _root_calib(root: Path) -> Calibration | None:
    return read_calib_yaml(root / "calib.yaml") if (root / "calib.yaml").is_file() else None


@dataclass(frozen=True)
class _CameraItem:
    key: str
    rgb: Path | None
    semantic: Path | None


class CarlaCameraDataset(FrameDataset):
    """CARLA RGB camera images with semantic segmentation images (layout in the module docstring).

    Args:
        root: export folder.
        rgb_dir, semantic_dir: sensor folders under ``root``; either may be absent (frames
            without image or without labels) but not both.
        semantic_format: ``"raw"`` (tag in the red channel) or ``"cityscapes"`` (palette colours).
        version: CARLA version of the export (``"0.9.14"`` and later, or ``"legacy"`` /
            ``"0.9.10"``-``"0.9.13"``); selects ontology ``carla`` or ``carla-legacy``.
        remap: label map applied on load.
        unknown_color: for ``"cityscapes"``: ``"error"`` / ``"void"`` / an id.
        allow_unpaired: with both folders present, keep only frames found in both instead of
            raising an error for frames missing from one of them.
        tag_channel: channel of the tag in raw images (0 = red).
        split: ``all``, or a split listed in ``root/splits/<split>.txt``.
    """

    name = "carla-camera"

    def __init__(self, root: str | os.PathLike[str], rgb_dir: str = "rgb", semantic_dir: str = "semantic",
                 semantic_format: str = "raw", version: str = "0.9.14", remap: LabelMap | str | None = None, *,
                 unknown_color: str | int = "error", allow_unpaired: bool = False, tag_channel: int = 0,
                 split: str = "all") -> None:
        self.source_ontology_name = carla_ontology_name(version)
        if semantic_format not in ("raw", "cityscapes"):
            raise ConfigError(f"semantic_format must be 'raw' or 'cityscapes', got {semantic_format!r}")
        if tag_channel not in (0, 1, 2):
            raise ConfigError(f"tag_channel must be 0 (red), 1 or 2, got {tag_channel!r}")
        super().__init__(root, split, remap)
        self.semantic_format, self.unknown_color, self.tag_channel = semantic_format, unknown_color, tag_channel
        rgb_root, sem_root = self.root / rgb_dir, self.root / semantic_dir
        if not rgb_root.is_dir() and not sem_root.is_dir():
            raise DataError(f"{self.root}: neither {rgb_dir}/ nor {semantic_dir}/ found ({self.describe_layout()})")
        rgb = _index(rgb_root, IMAGE_SUFFIXES) if rgb_root.is_dir() else None
        sem = _index(sem_root, (".png",)) if sem_root.is_dir() else None
        if rgb is not None and sem is not None:
            only_rgb = sorted(set(rgb) - set(sem))
            only_sem = sorted(set(sem) - set(rgb))
            if (only_rgb or only_sem) and not allow_unpaired:
                if only_rgb:
                    raise DataError(f"{rgb_root}: {len(only_rgb)} images have no semantic image (first: "
                                    f"{rgb[only_rgb[0]]}, expected {sem_root / only_rgb[0]}.png); "
                                    "pass allow_unpaired=True to skip them")
                raise DataError(f"{sem_root}: {len(only_sem)} semantic images have no RGB image (first: "
                                f"{sem[only_sem[0]]}); pass allow_unpaired=True to skip them")
            keys = sorted(set(rgb) & set(sem))
        else:
            keys = sorted(rgb or sem or {})
        if not keys:
            raise DataError(f"{self.root}: no frames found in {rgb_dir}/ or {semantic_dir}/ ({self.describe_layout()})")
        keys = _select_split(self.root, split, keys)
        self._items = [_CameraItem(k, rgb.get(k) if rgb else None, sem.get(k) if sem else None) for k in keys]
        self.calib = _root_calib(self.root)

    @classmethod
    def describe_layout(cls) -> str:
        return "expected rgb/<frame>.png and/or semantic/<frame>.png (folder names configurable)"

    def _item_id(self, item: object) -> str:
        assert isinstance(item, _CameraItem)
        return item.key

    def _load(self, item: object) -> Frame:
        assert isinstance(item, _CameraItem)
        source: dict[str, Path] = {}
        image = labels = None
        if item.rgb is not None:
            image = read_image(item.rgb)
            source["image"] = item.rgb
        if item.semantic is not None:
            labels = read_carla_semantic_image(item.semantic, self.source_ontology_name or "carla",
                                               self.semantic_format, self.unknown_color, self.tag_channel)
            if image is not None:
                check_labels_shape(labels, image.shape[:2], item.semantic, f"semantic image (for {item.rgb})")
            source["image_labels"] = item.semantic
        return Frame(frame_id=item.key, image=image, image_labels=labels, ontology=self.source_ontology_name,
                     calib=self.calib, source=source,
                     meta={"frame": _frame_number(item.key), "semantic_format": self.semantic_format})


class CarlaLidarDataset(FrameDataset):
    """A folder of CARLA semantic LiDAR scans (``.bin`` / ``.ply`` / ``.npy``, see the module docstring).

    Frames: ``points`` (N, 4) float32 with fields ``x, y, z, cos_inc_angle``, ``point_labels``
    the semantic tags (``ontology.label_dtype``), ``point_instances`` the hit actor ids (uint32).

    Args:
        root: export folder.
        lidar_dir: scan folder under ``root`` (``"."`` for ``root`` itself).
        version: CARLA version, as for :class:`CarlaCameraDataset`.
        remap: label map applied on load.
        right_handed: negate y, turning CARLA's left-handed (x forward, y right, z up) frame into
            x forward, y left, z up. Recorded in ``meta["right_handed"]``.
        split: ``all``, or a split listed in ``root/splits/<split>.txt``.
    """

    name = "carla-lidar"

    def __init__(self, root: str | os.PathLike[str], lidar_dir: str = "semantic_lidar", version: str = "0.9.14",
                 remap: LabelMap | str | None = None, *, right_handed: bool = True, split: str = "all") -> None:
        self.source_ontology_name = carla_ontology_name(version)
        super().__init__(root, split, remap)
        self.right_handed = right_handed
        folder = self.root / lidar_dir
        if not folder.is_dir():
            raise DataError(f"{folder}: semantic LiDAR folder not found ({self.describe_layout()})")
        files = _index(folder, LIDAR_SUFFIXES)
        if not files:
            raise DataError(f"{folder}: no .bin, .ply or .npy semantic LiDAR files")
        self._items = [(k, files[k]) for k in _select_split(self.root, split, sorted(files))]
        self.calib = _root_calib(self.root)

    @classmethod
    def describe_layout(cls) -> str:
        return "expected semantic_lidar/<frame>.bin (or .ply / .npy; folder name configurable)"

    def _item_id(self, item: object) -> str:
        return str(item[0])  # type: ignore[index]

    def _load(self, item: object) -> Frame:
        key, path = item  # type: ignore[misc]
        pts, idx, tag = read_carla_semantic_lidar(path)
        onto = self.source_ontology
        assert onto is not None
        onto.check_ids(tag, source=str(path))
        if self.right_handed:
            pts[:, 1] *= -1.0
        return Frame(frame_id=key, points=pts, point_fields=("x", "y", "z", "cos_inc_angle"),
                     point_labels=tag.astype(onto.label_dtype), point_instances=idx, ontology=onto.name,
                     calib=self.calib, source={"points": path, "point_labels": path},
                     meta={"frame": _frame_number(key), "right_handed": self.right_handed})
