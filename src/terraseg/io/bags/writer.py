"""Writing ROS 2 bags (sqlite3 or mcap storage) and ROS 1 ``.bag`` files without ROS.

:class:`BagWriter` serialises images, compressed images, point clouds and camera infos with
header stamps and frame ids. Output is atomic: the bag is written inside a temporary folder
next to the target (``.<name>.<pid>-<random>.tmp/``) and renamed into place by
:meth:`BagWriter.close`; an exception inside the ``with`` block (or :meth:`BagWriter.abort`)
leaves nothing under the target name, and :meth:`BagWriter.open` removes the temporary folders
that killed runs left in the same folder (:func:`terraseg.io.atomic.remove_stale_temporaries`)::

    with BagWriter("out_bag") as w:                       # ROS 2, sqlite3
        w.write_image("/cam/image", rgb, stamp_ns=t, frame_id="cam")
        w.write_pointcloud("/lidar", pts, ("x", "y", "z", "intensity"), stamp_ns=t,
                           extra={"label": labels.astype(np.uint32)})
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from PIL import Image as PILImage

from terraseg.errors import DataError
from terraseg.frame import Calibration
from terraseg.io.atomic import make_temporary, remove_stale_temporaries
from terraseg.io.bags.decode import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    IMAGE,
    IMAGE_ENCODINGS,
    POINTCLOUD2,
    POINTFIELD_TYPES,
)
from terraseg.io.bags.reader import _rosbags

_NP_TO_POINTFIELD = {np.dtype(v).str[1:]: k for k, v in POINTFIELD_TYPES.items()}


def _default_encoding(img: np.ndarray) -> str:
    if img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8:
        return "rgb8"
    if img.ndim == 3 and img.shape[2] == 4 and img.dtype == np.uint8:
        return "rgba8"
    if img.ndim == 2 and img.dtype == np.uint8:
        return "mono8"
    if img.ndim == 2 and img.dtype == np.uint16:
        return "mono16"
    if img.ndim == 2 and img.dtype == np.float32:
        return "32FC1"
    raise DataError(f"no image encoding for an array of shape {img.shape} and dtype {img.dtype}")


def image_payload(image: np.ndarray, encoding: str | None = None, bigendian: bool = False,
                  row_padding: int = 0) -> dict[str, Any]:
    """The ``sensor_msgs/Image`` fields (without header) for an array.

    Args:
        image: (H, W, 3) uint8 RGB (for ``rgb8``/``bgr8``, also ``rgba8``/``bgra8`` with
            alpha 255), (H, W, 4) uint8 RGBA, (H, W) uint8 (``mono8``/``8UC1``), (H, W) uint16
            (``mono16``/``16UC1``) or (H, W) float32 (``32FC1``).
        encoding: one of :data:`IMAGE_ENCODINGS`; inferred from shape and dtype when None.
        bigendian: store multi-byte pixels big-endian (``is_bigendian = 1``).
        row_padding: extra bytes at the end of every row (``step > width * pixel size``).
    """
    img = np.asarray(image)
    enc = encoding or _default_encoding(img)
    if enc not in IMAGE_ENCODINGS:
        raise DataError(f"unsupported image encoding {enc!r} (supported: {', '.join(IMAGE_ENCODINGS)})")
    base, channels, order = IMAGE_ENCODINGS[enc]
    if channels > 1:
        if img.ndim != 3 or img.shape[2] not in (3, 4) or img.dtype != np.uint8:
            raise DataError(f"{enc} needs an (H, W, 3|4) uint8 image, got {img.shape} {img.dtype}")
        if channels == 4 and img.shape[2] == 3:
            img = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
        img = img[..., :channels]
        if order.startswith("bgr"):
            img = img[..., [2, 1, 0, 3][:channels]]
    elif img.ndim != 2 or img.dtype != np.dtype(base):
        raise DataError(f"{enc} needs an (H, W) {np.dtype(base)} image, got {img.shape} {img.dtype}")
    dt = np.dtype(base).newbyteorder(">" if bigendian else "<") if np.dtype(base).itemsize > 1 else np.dtype(base)
    h, w = img.shape[:2]
    rows = np.ascontiguousarray(img.astype(dt, copy=False)).view(np.uint8).reshape(h, w * channels * dt.itemsize)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((h, row_padding), np.uint8)], axis=1)
    return {"height": h, "width": w, "encoding": enc, "is_bigendian": int(bigendian),
            "step": rows.shape[1], "data": np.ascontiguousarray(rows).reshape(-1)}


def pointcloud_payload(points: np.ndarray, names: Sequence[str], extra: Mapping[str, np.ndarray] | None = None,
                       height: int = 1, bigendian: bool = False, point_padding: int = 0,
                       is_dense: bool | None = None) -> tuple[list[tuple[str, int, int, int]], dict[str, Any]]:
    """The ``sensor_msgs/PointCloud2`` layout for an (N, C) float32 array plus extra fields.

    Args:
        points: (N, C) array stored as FLOAT32 fields named ``names`` (x, y, z first by convention).
        extra: more fields, each (N,) of int8/uint8/int16/uint16/int32/uint32/float32/float64
            (e.g. ``{"label": uint32, "ring": uint16}``), stored after the float columns, each
            aligned to its own size.
        height: rows of an organised cloud (N must be divisible by it); 1 for unorganised.
        point_padding: extra unused bytes at the end of each point (``point_step`` padding).
        is_dense: the flag to store; default True when x, y, z are all finite.

    Returns:
        ``(fields, payload)``: PointField tuples ``(name, offset, datatype, count)`` and the
        message's other fields (height, width, is_bigendian, point_step, row_step, data, is_dense).
    """
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != len(names):
        raise DataError(f"points must be (N, {len(names)}) for fields {tuple(names)}, got {pts.shape}")
    n = len(pts)
    cols: list[tuple[str, np.ndarray]] = [(str(nm), pts[:, i]) for i, nm in enumerate(names)]
    for nm, arr in (extra or {}).items():
        a = np.asarray(arr)
        if a.shape != (n,):
            raise DataError(f"extra point field {nm!r} must have shape ({n},), got {a.shape}")
        if a.dtype.str[1:] not in _NP_TO_POINTFIELD:
            raise DataError(f"extra point field {nm!r} has dtype {a.dtype}; PointCloud2 stores "
                            "int8/uint8/int16/uint16/int32/uint32/float32/float64")
        cols.append((str(nm), a))
    if len({c[0] for c in cols}) != len(cols):
        raise DataError(f"duplicate point field names in {[c[0] for c in cols]}")
    bo = ">" if bigendian else "<"
    offsets, off = [], 0
    for _, a in cols:
        size = a.dtype.itemsize
        off = -(-off // size) * size
        offsets.append(off)
        off += size
    point_step = -(-off // 4) * 4 + int(point_padding)
    dtype = np.dtype({"names": [c[0] for c in cols], "formats": [a.dtype.newbyteorder(bo) for _, a in cols],
                      "offsets": offsets, "itemsize": point_step})
    rec = np.zeros(n, dtype=dtype)
    for nm, a in cols:
        rec[nm] = a
    if height < 1 or n % height:
        raise DataError(f"{n} points cannot form an organised cloud of height {height}")
    width = n // height
    fields = [(nm, o, _NP_TO_POINTFIELD[a.dtype.str[1:]], 1) for (nm, a), o in zip(cols, offsets)]
    if is_dense is None:
        is_dense = bool(np.isfinite(pts[:, :3]).all())
    payload = {"height": height, "width": width, "is_bigendian": bool(bigendian), "point_step": point_step,
               "row_step": point_step * width, "data": rec.view(np.uint8).reshape(-1), "is_dense": bool(is_dense)}
    return fields, payload


class BagWriter:
    """Write a ROS 2 bag folder (sqlite3 or mcap) or a ROS 1 ``.bag`` file atomically.

    Args:
        path: the bag to create: a ROS 2 bag folder, or a ``.bag`` file for ROS 1.
        ros_version: 1 or 2; inferred from the suffix when None (``.bag`` -> 1, else 2).
        storage: ROS 2 storage plugin, ``sqlite3`` (default) or ``mcap`` (every chunk gets the
            CRC32 of its records, which readers verify: :mod:`terraseg.io.bags.mcap`).
        overwrite: replace an existing bag at ``path`` (else :class:`DataError`).
        typestore: a ``rosbags`` typestore; defaults to ROS 2 Humble / ROS 1 Noetic.

    Stamps are integer nanoseconds. The bag's record time of a message is ``timestamp_ns``
    when given, else its header stamp.
    """

    def __init__(self, path: str | os.PathLike[str], ros_version: int | None = None,
                 storage: Literal["sqlite3", "mcap"] = "sqlite3", overwrite: bool = False,
                 typestore: Any = None) -> None:
        _rosbags()
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        self.ros_version = ros_version or (1 if self.path.suffix == ".bag" else 2)
        if self.ros_version not in (1, 2):
            raise DataError(f"{self.path}: ros_version must be 1 or 2, got {self.ros_version}")
        if storage not in ("sqlite3", "mcap"):
            raise DataError(f"{self.path}: unknown ROS 2 storage {storage!r} (expected sqlite3 or mcap)")
        self.storage = storage
        self.overwrite = overwrite
        self.typestore = typestore or get_typestore(Stores.ROS1_NOETIC if self.ros_version == 1 else Stores.ROS2_HUMBLE)
        self._writer: Any = None
        self._tmpdir: Path | None = None
        self._conns: dict[str, tuple[str, Any]] = {}
        self._seq: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> BagWriter:
        if self._writer is not None:
            return self
        if self.path.exists() and not self.overwrite:
            raise DataError(f"{self.path}: already exists (pass overwrite=True to replace it)")
        remove_stale_temporaries(self.path.parent)  # bags of interrupted runs: .<name>.<pid>-<random>.tmp/
        self._tmpdir = make_temporary(self.path, folder=True)
        inner = self._tmpdir / self.path.name
        try:
            if self.ros_version == 1:
                from rosbags.rosbag1 import Writer as Writer1

                self._writer = Writer1(inner)
            else:
                from rosbags.rosbag2 import StoragePlugin
                from rosbags.rosbag2 import Writer as Writer2

                plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
                self._writer = Writer2(inner, version=8, storage_plugin=plugin)
            self._writer.open()
        except BaseException:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._writer = None
            raise
        return self

    def close(self) -> Path:
        """Finish the bag and move it to ``path``; returns ``path``."""
        if self._writer is None or self._tmpdir is None:
            raise DataError(f"{self.path}: bag writer is not open")
        try:
            self._writer.close()
            inner = self._tmpdir / self.path.name
            if self.ros_version == 2 and self.storage == "mcap":
                from terraseg.io.bags.mcap import add_chunk_crcs

                for f in sorted(inner.glob("*.mcap")):  # rosbags writes no chunk checksums; readers verify them
                    add_chunk_crcs(f)
            if self.path.exists():
                if not self.overwrite:
                    raise DataError(f"{self.path}: appeared while writing; not overwriting it")
                trash = self._tmpdir / (".old." + self.path.name)
                os.replace(self.path, trash)
            os.replace(inner, self.path)
        finally:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._writer = None
            self._tmpdir = None
        return self.path

    def abort(self) -> None:
        """Discard everything written; ``path`` is left as it was."""
        if self._writer is not None:
            try:
                if hasattr(self._writer, "abort"):
                    self._writer.abort()
            except Exception:  # noqa: BLE001 - the temporary bag is deleted anyway
                pass
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._writer = None
        self._tmpdir = None

    def __enter__(self) -> BagWriter:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # ------------------------------------------------------------------ generic
    def make(self, msgtype: str, **fields: Any) -> Any:
        """Construct a message object of ``msgtype`` (e.g. ``sensor_msgs/msg/PointField``)."""
        try:
            return self.typestore.types[msgtype](**fields)
        except KeyError:
            raise DataError(f"unknown message type {msgtype!r}") from None

    def header(self, topic: str, stamp_ns: int, frame_id: str = "") -> Any:
        """A ``std_msgs/Header`` for ``stamp_ns`` (ROS 1 headers also get a per-topic ``seq``)."""
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        stamp = self.make("builtin_interfaces/msg/Time", sec=sec, nanosec=nsec)
        if self.ros_version == 1:
            seq = self._seq.get(topic, 0)
            self._seq[topic] = seq + 1
            return self.make("std_msgs/msg/Header", seq=seq, stamp=stamp, frame_id=frame_id)
        return self.make("std_msgs/msg/Header", stamp=stamp, frame_id=frame_id)

    def write(self, topic: str, msgtype: str, msg: Any, timestamp_ns: int) -> None:
        """Serialise and write any message object; the topic's connection is created on first use."""
        if self._writer is None:
            raise DataError(f"{self.path}: bag writer is not open (use it as a context manager)")
        known = self._conns.get(topic)
        if known is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._conns[topic] = known = (msgtype, conn)
        elif known[0] != msgtype:
            raise DataError(f"{self.path}: topic {topic!r} already carries {known[0]}, cannot write {msgtype}")
        if self.ros_version == 1:
            raw = self.typestore.serialize_ros1(msg, msgtype)
        else:
            raw = self.typestore.serialize_cdr(msg, msgtype)
        self._writer.write(known[1], int(timestamp_ns), raw)
        self.counts[topic] = self.counts.get(topic, 0) + 1

    # ------------------------------------------------------------------ sensor messages
    def write_image(self, topic: str, image: np.ndarray, stamp_ns: int, frame_id: str = "", *,
                    encoding: str | None = None, bigendian: bool = False, row_padding: int = 0,
                    timestamp_ns: int | None = None) -> None:
        """Write a ``sensor_msgs/Image`` (see :func:`image_payload` for arrays and encodings):
        rgb8 for RGB images, mono8 for id masks up to 255, mono16 for larger ids."""
        payload = image_payload(image, encoding, bigendian, row_padding)
        msg = self.make(IMAGE, header=self.header(topic, stamp_ns, frame_id), **payload)
        self.write(topic, IMAGE, msg, stamp_ns if timestamp_ns is None else timestamp_ns)

    def write_compressed_image(self, topic: str, image: np.ndarray | bytes, stamp_ns: int, frame_id: str = "", *,
                               format: Literal["jpeg", "png"] = "jpeg", quality: int = 90,
                               timestamp_ns: int | None = None) -> None:
        """Write a ``sensor_msgs/CompressedImage``: an (H, W, 3) uint8 RGB or (H, W) uint8/uint16
        array is encoded as JPEG (``quality``) or PNG; bytes are stored as given."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
        else:
            arr = np.asarray(image)
            if format not in ("jpeg", "png"):
                raise DataError(f"compressed image format must be 'jpeg' or 'png', got {format!r}")
            buf = io.BytesIO()
            pil = PILImage.fromarray(arr)
            if format == "jpeg":
                pil.save(buf, format="JPEG", quality=quality)
            else:
                pil.save(buf, format="PNG", compress_level=1)
            data = buf.getvalue()
        msg = self.make(COMPRESSED_IMAGE, header=self.header(topic, stamp_ns, frame_id), format=format,
                        data=np.frombuffer(data, dtype=np.uint8))
        self.write(topic, COMPRESSED_IMAGE, msg, stamp_ns if timestamp_ns is None else timestamp_ns)

    def write_pointcloud(self, topic: str, points: np.ndarray, names: Sequence[str] = ("x", "y", "z", "intensity"),
                         stamp_ns: int = 0, frame_id: str = "", *, extra: Mapping[str, np.ndarray] | None = None,
                         height: int = 1, bigendian: bool = False, point_padding: int = 0,
                         is_dense: bool | None = None, timestamp_ns: int | None = None) -> None:
        """Write a ``sensor_msgs/PointCloud2`` from (N, C) float32 ``points`` named ``names``
        plus optional ``extra`` integer/float fields such as ``{"label": uint32 array}``
        (see :func:`pointcloud_payload`)."""
        fields, payload = pointcloud_payload(points, names, extra, height, bigendian, point_padding, is_dense)
        pf = [self.make("sensor_msgs/msg/PointField", name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields]
        msg = self.make(POINTCLOUD2, header=self.header(topic, stamp_ns, frame_id), fields=pf, **payload)
        self.write(topic, POINTCLOUD2, msg, stamp_ns if timestamp_ns is None else timestamp_ns)

    def write_camera_info(self, topic: str, calib: Calibration, stamp_ns: int, frame_id: str = "", *,
                          distortion_model: str = "plumb_bob", timestamp_ns: int | None = None) -> None:
        """Write a ``sensor_msgs/CameraInfo`` from ``calib`` (``K`` required; ``dist`` and
        ``image_size`` optional): R is identity, P is ``[K | 0]``."""
        if calib.K is None:
            raise DataError(f"{self.path}: camera info for {topic!r} needs a calibration with K")
        K = np.asarray(calib.K, dtype=np.float64).reshape(9)
        D = np.zeros(0) if calib.dist is None else np.asarray(calib.dist, dtype=np.float64).ravel()
        P = np.zeros((3, 4))
        P[:, :3] = K.reshape(3, 3)
        w, h = calib.image_size or (0, 0)
        arrays = {"d": D, "k": K, "r": np.eye(3).reshape(9), "p": P.reshape(12)}
        if self.ros_version == 1:
            arrays = {k.upper(): v for k, v in arrays.items()}
        roi = self.make("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0,
                        do_rectify=False)
        msg = self.make(CAMERA_INFO, header=self.header(topic, stamp_ns, frame_id), height=int(h), width=int(w),
                        distortion_model=distortion_model if D.size else "", binning_x=0, binning_y=0, roi=roi,
                        **arrays)
        self.write(topic, CAMERA_INFO, msg, stamp_ns if timestamp_ns is None else timestamp_ns)
