"""Decoding of ROS sensor messages into numpy arrays (vectorised, no per-pixel/per-point loops).

Works on the message objects ``rosbags`` deserialises (ROS 1 and ROS 2 field names alike):

- ``sensor_msgs/Image`` -> :func:`decode_image`
- ``sensor_msgs/CompressedImage`` -> :func:`decode_compressed_image`
- ``sensor_msgs/PointCloud2`` -> :func:`decode_pointcloud2` (a :class:`PointCloud`)
- ``sensor_msgs/CameraInfo`` -> :func:`decode_camera_info` (a terraseg :class:`Calibration`)

Every function takes ``where``: the text that prefixes error messages, normally
``"<bag>: <topic> message <index>"`` so a :class:`DataError` names the bag, topic and index.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from terraseg.errors import DataError
from terraseg.frame import Calibration

IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"

# encoding -> (numpy base type, channels, channel order of the colour encodings)
IMAGE_ENCODINGS: dict[str, tuple[str, int, str]] = {
    "rgb8": ("u1", 3, "rgb"),
    "bgr8": ("u1", 3, "bgr"),
    "rgba8": ("u1", 4, "rgba"),
    "bgra8": ("u1", 4, "bgra"),
    "mono8": ("u1", 1, ""),
    "8UC1": ("u1", 1, ""),
    "mono16": ("u2", 1, ""),
    "16UC1": ("u2", 1, ""),
    "32FC1": ("f4", 1, ""),
}
"""The ``sensor_msgs/Image`` encodings :func:`decode_image` supports."""

# sensor_msgs/PointField datatype -> numpy base type
POINTFIELD_TYPES: dict[int, str] = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
POINTFIELD_NAMES: dict[int, str] = {1: "INT8", 2: "UINT8", 3: "INT16", 4: "UINT16", 5: "INT32", 6: "UINT32",
                                    7: "FLOAT32", 8: "FLOAT64"}
INTENSITY_NAMES: tuple[str, ...] = ("intensity", "i")
"""Point fields taken as the intensity channel, in order of preference."""

DISTORTION_MODELS: tuple[str, ...] = ("plumb_bob", "rational_polynomial", "")
"""CameraInfo distortion models whose coefficients are in OpenCV order (k1, k2, p1, p2[, k3...])."""


def stamp_ns(msg: Any) -> int | None:
    """Header stamp of a message in integer nanoseconds, or None when it has no header."""
    header = getattr(msg, "header", None)
    if header is None:
        return None
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _buffer(data: Any) -> np.ndarray:
    """The message's ``data`` field as a flat uint8 array (no copy when possible)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return np.frombuffer(bytes(data), dtype=np.uint8)


def _rows(buf: np.ndarray, height: int, stride: int, row_bytes: int, where: str, what: str) -> np.ndarray:
    """(height, row_bytes) uint8 view of ``buf`` whose rows start every ``stride`` bytes."""
    if stride < row_bytes:
        raise DataError(f"{where}: {what} row stride {stride} bytes is smaller than one row of data ({row_bytes} bytes)")
    need = stride * (height - 1) + row_bytes if height else 0
    if buf.size < need:
        raise DataError(f"{where}: {what} holds {buf.size} bytes, expected at least {need} "
                        f"({height} rows of {row_bytes} bytes every {stride} bytes)")
    if height == 0 or row_bytes == 0:
        return np.zeros((height, row_bytes), dtype=np.uint8)
    if buf.size >= stride * height:
        return buf[: stride * height].reshape(height, stride)[:, :row_bytes]
    return np.lib.stride_tricks.as_strided(buf, shape=(height, row_bytes), strides=(stride, 1), writeable=False)


def decode_image(msg: Any, where: str = "image", keep_alpha: bool = False, copy: bool = True) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` into a numpy array in native byte order.

    Row padding (``step`` larger than ``width * bytes per pixel``) and ``is_bigendian`` are
    honoured.

    Returns:
        ``rgb8``/``bgr8``: (H, W, 3) uint8 RGB (BGR is reordered). ``rgba8``/``bgra8``: (H, W, 3)
        uint8 RGB, or (H, W, 4) RGBA with ``keep_alpha``. ``mono8``/``8UC1``: (H, W) uint8.
        ``mono16``/``16UC1``: (H, W) uint16. ``32FC1``: (H, W) float32. With ``copy`` (default)
        the array owns its data; otherwise it may be a read-only view of ``msg.data``.

    Raises:
        DataError: unsupported encoding or a data buffer that does not match the header, with
            ``where`` and the encoding in the message.
    """
    enc = str(msg.encoding)
    spec = IMAGE_ENCODINGS.get(enc) or IMAGE_ENCODINGS.get(enc.lower())
    if spec is None:
        raise DataError(f"{where}: unsupported image encoding {enc!r} (supported: {', '.join(IMAGE_ENCODINGS)})")
    base, channels, order = spec
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    dt = np.dtype(base)
    if dt.itemsize > 1:
        dt = dt.newbyteorder(">" if msg.is_bigendian else "<")
    buf = _buffer(msg.data)
    rows = _rows(buf, h, step, w * channels * dt.itemsize, where, f"{enc} image")
    arr = np.ascontiguousarray(rows).view(dt).reshape((h, w, channels) if channels > 1 else (h, w))
    if dt.itemsize > 1 and not dt.isnative:
        arr = arr.astype(dt.newbyteorder("="))
    pick = {"bgr": [2, 1, 0], "bgra": [2, 1, 0, 3] if keep_alpha else [2, 1, 0],
            "rgba": None if keep_alpha else [0, 1, 2]}.get(order)
    if pick is not None:
        arr = arr[..., pick]  # one gather: reorders channels and drops alpha in a single copy
    if not arr.flags.c_contiguous or (copy and (not arr.flags.writeable or np.may_share_memory(arr, buf))):
        arr = np.array(arr, order="C")
    return arr


def _align(p: int, n: int) -> int:
    return (p + n - 1) // n * n


def parse_image_raw(raw: bytes | memoryview, ros_version: int) -> SimpleNamespace | None:
    """Read a serialised ``sensor_msgs/Image`` without copying its pixels.

    Returns an object with the message's fields (``header.stamp.sec/nanosec``,
    ``header.frame_id``, ``height``, ``width``, ``encoding``, ``is_bigendian``, ``step``, and
    ``data`` as a read-only uint8 view of ``raw``) for :func:`decode_image`, or None when the
    bytes are not little-endian CDR (ROS 2) / ROS 1 serialisation of an Image, so the caller
    can fall back to the full deserialiser.
    """
    buf = memoryview(raw).cast("B") if not isinstance(raw, memoryview) else raw.cast("B")
    try:
        if ros_version == 2:
            if len(buf) < 4 or buf[1] != 1:  # CDR little-endian encapsulation only
                return None
            base, p = 4, 0
            sec, nsec, flen = struct.unpack_from("<iII", buf, base)
            frame_id = bytes(buf[base + 12:base + 12 + max(flen - 1, 0)]).decode()
            p = _align(12 + flen, 4)
            height, width, elen = struct.unpack_from("<III", buf, base + p)
            encoding = bytes(buf[base + p + 12:base + p + 12 + max(elen - 1, 0)]).decode()
            p += 12 + elen
            is_be = buf[base + p]
            p = _align(p + 1, 4)
            step, dlen = struct.unpack_from("<II", buf, base + p)
            start = base + p + 8
        else:
            base = 0
            _seq, sec, nsec, flen = struct.unpack_from("<IIII", buf, 0)
            frame_id = bytes(buf[16:16 + flen]).decode()
            p = 16 + flen
            height, width, elen = struct.unpack_from("<III", buf, p)
            encoding = bytes(buf[p + 12:p + 12 + elen]).decode()
            p += 12 + elen
            is_be = buf[p]
            step, dlen = struct.unpack_from("<II", buf, p + 1)
            start = p + 9
    except (struct.error, IndexError, UnicodeDecodeError):
        return None
    if start + dlen > len(buf):
        return None
    data = np.frombuffer(buf, dtype=np.uint8, count=dlen, offset=start)
    stamp = SimpleNamespace(sec=sec, nanosec=nsec)
    return SimpleNamespace(header=SimpleNamespace(stamp=stamp, frame_id=frame_id), height=height, width=width,
                           encoding=encoding, is_bigendian=is_be, step=step, data=data)


def decode_compressed_image(msg: Any, where: str = "compressed image") -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG, also ``compressedDepth`` PNG).

    Returns:
        (H, W, 3) uint8 RGB for colour images (palette and CMYK images are converted, alpha is
        dropped), (H, W) uint8 for 8-bit grey, (H, W) uint16 for 16-bit grey (depth, masks).
    """
    data = _buffer(msg.data).tobytes()
    fmt = str(getattr(msg, "format", ""))
    if "compresseddepth" in fmt.lower():
        data = data[12:]  # compressed_depth_image_transport: 12-byte ConfigHeader before the PNG
    try:
        img = PILImage.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{where}: cannot decode compressed image (format {fmt!r}, {len(data)} bytes): {exc}") from None
    if img.mode in ("L", "I;16", "I;16B", "I;16L"):
        return np.array(img, dtype=np.uint16 if img.mode != "L" else np.uint8)
    if img.mode in ("1", "LA"):
        return np.array(img.convert("L"), dtype=np.uint8)
    if img.mode == "I":
        arr = np.array(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(f"{where}: 32-bit compressed image with values outside 0..65535")
        return arr.astype(np.uint16)
    if img.mode == "F":
        return np.array(img, dtype=np.float32)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


@dataclass
class PointCloud:
    """A decoded ``sensor_msgs/PointCloud2``.

    Attributes:
        points: (N, C) float32; columns are ``names``: x, y, z first (metres, in the message's
            ``frame_id``), then every other single-valued field in message order.
        names: the column names of ``points``.
        fields: every field (x, y, z included) in its native dtype (converted to native byte
            order): (N,) arrays, or (N, count) for fields with ``count > 1``.
        height, width: the message's layout; ``height > 1`` is an organised cloud whose points
            are stored row-major (N = height * width when invalid points are kept).
        valid: (height * width,) bool, True where x, y and z are finite. When invalid points were
            dropped, ``points`` holds exactly the rows where ``valid`` is True.
        is_dense: the message's ``is_dense`` flag (True claims there are no invalid points).
    """

    points: np.ndarray
    names: tuple[str, ...]
    fields: dict[str, np.ndarray] = field(default_factory=dict)
    height: int = 1
    width: int = 0
    valid: np.ndarray | None = None
    is_dense: bool = True

    @property
    def organized(self) -> bool:
        return self.height > 1

    def intensity(self) -> np.ndarray:
        """(N,) float32 intensity (field ``intensity`` or ``i``), zeros when the cloud has none."""
        for name in INTENSITY_NAMES:
            if name in self.names:
                return self.points[:, self.names.index(name)]
        return np.zeros(len(self.points), dtype=np.float32)

    def xyzi(self) -> np.ndarray:
        """(N, 4) float32 x, y, z, intensity (SemanticKITTI ``.bin`` layout)."""
        out = np.empty((len(self.points), 4), dtype=np.float32)
        out[:, :3] = self.points[:, :3]
        out[:, 3] = self.intensity()
        return out

    def extra_fields(self) -> dict[str, np.ndarray]:
        """Every field except x, y, z and the one used as intensity (native dtypes)."""
        used = {"x", "y", "z"}
        used.update(next(([n] for n in INTENSITY_NAMES if n in self.names), []))
        return {k: v for k, v in self.fields.items() if k not in used}


def pointcloud2_dtype(fields: Any, point_step: int, bigendian: bool, where: str = "point cloud") -> np.dtype:
    """The numpy structured dtype of one point described by ``sensor_msgs/PointField`` entries."""
    names: list[str] = []
    formats: list[Any] = []
    offsets: list[int] = []
    bo = ">" if bigendian else "<"
    for f in fields:
        name, off, dtype_id, count = str(f.name), int(f.offset), int(f.datatype), int(f.count)
        if not name:
            raise DataError(f"{where}: PointField at offset {off} has an empty name")
        if name in names:
            raise DataError(f"{where}: duplicate PointField name {name!r}")
        if dtype_id not in POINTFIELD_TYPES:
            raise DataError(f"{where}: field {name!r} has unknown PointField datatype {dtype_id} "
                            f"(known: {', '.join(f'{k}={v}' for k, v in POINTFIELD_NAMES.items())})")
        count = max(count, 1)
        base = np.dtype(bo + POINTFIELD_TYPES[dtype_id])
        if off + base.itemsize * count > point_step:
            raise DataError(f"{where}: field {name!r} (offset {off}, {count} x {POINTFIELD_NAMES[dtype_id]}) "
                            f"extends past point_step {point_step}")
        names.append(name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(off)
    if not names:
        raise DataError(f"{where}: point cloud has no fields")
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})


def decode_pointcloud2(msg: Any, where: str = "point cloud", drop_invalid: bool = True) -> PointCloud:
    """Decode a ``sensor_msgs/PointCloud2`` with any field list into a :class:`PointCloud`.

    Handles arbitrary field order and offsets, all PointField datatypes (INT8..FLOAT64),
    ``count > 1`` fields, padding inside ``point_step`` and at the end of rows (``row_step``),
    organised clouds (``height > 1``) and both endiannesses.

    Args:
        drop_invalid: drop points whose x, y or z is not finite (NaN "no return" points of
            organised clouds; done whatever ``is_dense`` claims). With False all
            ``height * width`` points are kept in row-major order, NaN included.

    Raises:
        DataError: no x/y/z fields, unknown datatypes, fields past ``point_step`` or a data
            buffer smaller than the layout needs.
    """
    h, w = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    dtype = pointcloud2_dtype(msg.fields, point_step, bool(msg.is_bigendian), where)
    missing = [c for c in ("x", "y", "z") if c not in dtype.names]
    if missing:
        raise DataError(f"{where}: point cloud has no {'/'.join(missing)} field (fields: {', '.join(dtype.names)})")
    if h == 1 and row_step == 0:
        row_step = w * point_step  # some drivers leave row_step unset for unorganised clouds
    rows = _rows(_buffer(msg.data), h, row_step, w * point_step, where, "PointCloud2")
    rec = np.ascontiguousarray(rows).view(dtype).reshape(-1)
    fields = {name: rec[name].astype(rec.dtype.fields[name][0].base.newbyteorder("="), copy=True)
              for name in dtype.names}
    valid = np.isfinite(fields["x"]) & np.isfinite(fields["y"]) & np.isfinite(fields["z"])
    if fields["x"].dtype.kind != "f":
        valid[:] = True
    if drop_invalid and not valid.all():
        fields = {k: v[valid] for k, v in fields.items()}
    scalar = [n for n in dtype.names if n not in ("x", "y", "z") and fields[n].ndim == 1]
    names = ("x", "y", "z", *scalar)
    n = len(fields["x"])
    points = np.empty((n, len(names)), dtype=np.float32)
    for col, name in enumerate(names):
        points[:, col] = fields[name]
    return PointCloud(points=points, names=names, fields=fields, height=h, width=w, valid=valid,
                      is_dense=bool(msg.is_dense))


def decode_camera_info(msg: Any, where: str = "camera info") -> Calibration:
    """Decode a ``sensor_msgs/CameraInfo`` into a :class:`Calibration` (``K``, ``dist``, ``image_size``).

    ``dist`` keeps the message's coefficients (OpenCV order for ``plumb_bob`` and
    ``rational_polynomial``; None when empty). ``T_cam_lidar`` is not part of CameraInfo.

    Raises:
        DataError: an all-zero ``K`` (uncalibrated camera) or a distortion model whose
            coefficients are not in OpenCV pinhole order (for example ``equidistant``).
    """
    K = np.asarray(msg.k if hasattr(msg, "k") else msg.K, dtype=np.float64)  # ROS 2 lower case, ROS 1 upper
    D = np.asarray(msg.d if hasattr(msg, "d") else msg.D, dtype=np.float64)
    model = str(msg.distortion_model)
    if K.size != 9 or not np.any(K):
        raise DataError(f"{where}: camera is not calibrated (K is all zero)")
    if model not in DISTORTION_MODELS and D.size and np.any(D):
        raise DataError(f"{where}: distortion model {model!r} is not supported (terraseg stores OpenCV pinhole "
                        f"coefficients: {', '.join(m for m in DISTORTION_MODELS if m)})")
    w, h = int(msg.width), int(msg.height)
    return Calibration(K=K.reshape(3, 3), dist=D if D.size else None,
                       image_size=(w, h) if w and h else None)


def decode_message(msg: Any, msgtype: str, where: str = "message", **options: Any) -> Any:
    """Decode one of the supported sensor messages by type; other types are returned unchanged.

    ``options`` go to the decoder (``keep_alpha`` for images, ``drop_invalid`` for clouds).
    """
    if msgtype == IMAGE:
        return decode_image(msg, where, **options)
    if msgtype == COMPRESSED_IMAGE:
        return decode_compressed_image(msg, where)
    if msgtype == POINTCLOUD2:
        return decode_pointcloud2(msg, where, **options)
    if msgtype == CAMERA_INFO:
        return decode_camera_info(msg, where)
    return msg
