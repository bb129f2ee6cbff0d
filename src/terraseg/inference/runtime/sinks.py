"""Outputs of the runtime: a ROS 2 bag of predictions, and id / colour PNGs and ``.label`` files.

:class:`BagSink` writes, for every prediction, with the input's header stamp and frame id (so a
ROS user replays it next to the input bag, ``ros2 bag play input output``)::

    /segmentation/ids/<input topic>      sensor_msgs/Image mono8 class ids (mono16 above id 255)
    /segmentation/rgb/<input topic>      sensor_msgs/Image rgb8 colour mask (ontology palette)
    /segmentation/points/<input topic>   sensor_msgs/PointCloud2 x, y, z, intensity (FLOAT32),
                                         label (UINT32 class id), rgb (FLOAT32-packed 0x00RRGGBB,
                                         the PCL / RViz convention)

``<input topic>`` is the input topic without its leading ``/`` (other names, such as a video file
name, are turned into valid topic names: characters other than letters, digits, ``_`` and ``/``
become ``_``; a name part starting with a digit gets a leading ``_``). With ``inputs=True`` the
input images / clouds (and camera infos) are copied to their own topics too, which makes a
self-contained bag of a dataset, video or simulator run. The bag is written under a temporary
name and renamed into place on :meth:`BagSink.close`; :meth:`BagSink.abort` leaves nothing.

:class:`FileSink` writes under ``out_dir/<topic slug>/``: ``ids/<frame>.png`` and
``color/<frame>.png`` (and ``overlay/<frame>.jpg``) for camera streams (the layout of
``terraseg predict``, :class:`~terraseg.inference.writers.PredictionWriter`), ``labels/<frame>.label``
(SemanticKITTI: uint32, class id in the low 16 bits) and optionally ``ply/<frame>.ply`` for LiDAR
streams, plus ``ontology.yaml``. Every file is written atomically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from terraseg.errors import DataError
from terraseg.inference.runtime.types import Prediction, SensorMessage
from terraseg.io.atomic import remove_stale_temporaries
from terraseg.ontology import Ontology

OUTPUT_PREFIX = "/segmentation"


def topic_name(topic: str) -> str:
    """``topic`` as a relative ROS topic name: ``/sim/camera/image`` -> ``sim/camera/image``,
    ``drive 1.mp4`` -> ``drive_1_mp4``, ``00/velodyne`` -> ``_00/velodyne``."""
    parts = []
    for part in str(topic).split("/"):
        if not part:
            continue
        p = re.sub(r"_+", "_", re.sub(r"[^A-Za-z0-9_]", "_", part))
        if p[0].isdigit():
            p = "_" + p
        parts.append(p)
    return "/".join(parts) or "input"


def output_topic(role: Literal["ids", "rgb", "points"], topic: str) -> str:
    """The output topic of ``role`` for an input topic, e.g. ``/segmentation/rgb/sim/camera/image``."""
    return f"{OUTPUT_PREFIX}/{role}/{topic_name(topic)}"


def topic_slug(topic: str) -> str:
    """A folder name for an input topic: ``/sim/camera/image`` -> ``sim_camera_image``."""
    return topic_name(topic).replace("/", "_").strip("_") or "input"


def _header_frame(message: SensorMessage) -> str:
    return str(message.meta.get("header_frame_id") or message.stream)


def pack_rgb(colors: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (...) float32 whose bits are ``0x00RRGGBB`` (PCL / RViz packed ``rgb`` field)."""
    c = np.asarray(colors).astype(np.uint32)
    return ((c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]).view(np.float32)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_rgb`: (...) float32 -> (..., 3) uint8."""
    u = np.ascontiguousarray(packed, dtype=np.float32).view(np.uint32)
    return np.stack([(u >> 16) & 255, (u >> 8) & 255, u & 255], axis=-1).astype(np.uint8)


def _packed_colors(pred: Prediction, onto: Ontology) -> np.ndarray:
    """``pack_rgb`` of the palette colours of the predicted ids: one gather from a packed palette."""
    onto.check_ids(pred.labels, source=f"{pred.message.topic} prediction {pred.message.seq}")
    return pack_rgb(onto.palette)[np.asarray(pred.labels)]


def _colors(pred: Prediction, onto: Ontology) -> np.ndarray:
    """(H, W, 3) uint8 palette colours of the predicted (H, W) ids (checks every id is a class of the
    ontology). uint8 ids go through an OpenCV lookup table (about 3x faster than numpy indexing)."""
    labels = np.asarray(pred.labels)
    where = f"{pred.message.topic} prediction {pred.message.seq}"
    if labels.dtype != np.uint8 or labels.ndim != 2 or onto.max_id > 255:
        from terraseg.ontology import encode_colors

        return encode_colors(labels, onto, source=where)
    import cv2

    onto.check_ids(labels, source=where)
    lut = np.zeros((256, 1, 3), np.uint8)
    lut[: onto.max_id + 1, 0] = onto.palette
    return cv2.LUT(cv2.merge([labels, labels, labels]), lut)  # type: ignore[no-any-return]


class BagSink:
    """Write predictions (and optionally the inputs) to a ROS bag (see the module docstring).

    Args:
        path: the bag to create: a ROS 2 bag folder (default), or a ``.bag`` file for ROS 1.
        ids, color, points: which outputs to write.
        point_colors: add the packed ``rgb`` field to the labelled clouds (RViz colours them).
        inputs: also copy the input images / clouds / camera infos to their own topics.
        storage: ROS 2 storage, ``sqlite3`` or ``mcap``.
        overwrite: replace an existing bag at ``path``.

    The bag is created by :meth:`start` (or the first :meth:`write` / :meth:`close`), in the
    thread that calls it; all calls must then come from that thread (the runtime's writer thread
    makes all of them).

    Raises:
        DataError: ``path`` exists and ``overwrite`` is False (at construction).
    """

    def __init__(self, path: str | os.PathLike[str], *, ids: bool = True, color: bool = True, points: bool = True,
                 point_colors: bool = True, inputs: bool = False, storage: Literal["sqlite3", "mcap"] = "sqlite3",
                 overwrite: bool = False) -> None:
        from terraseg.io.bags import BagWriter

        self.path = Path(path)
        self.ids, self.color, self.points, self.inputs = bool(ids), bool(color), bool(points), bool(inputs)
        self.point_colors = bool(point_colors)
        if self.path.exists() and not overwrite:
            raise DataError(f"{self.path}: already exists (pass overwrite=True / --overwrite to replace it)")
        self.writer = BagWriter(self.path, storage=storage, overwrite=overwrite)
        self._opened = False
        self.dropped = 0
        self.written = 0

    @property
    def counts(self) -> dict[str, int]:
        """Messages written per topic so far."""
        return dict(self.writer.counts)

    def start(self) -> None:
        """Create the (temporary) bag; the runtime calls this on its writer thread before the first
        message, so that the first frame's latency does not include it. Idempotent."""
        if not self._opened:
            self.writer.open()
            self._opened = True

    def write(self, prediction: Prediction) -> None:
        self.start()
        m = prediction.message
        onto = prediction.resolve_ontology()
        stamp, frame = int(m.stamp_ns), _header_frame(m)
        labels = np.asarray(prediction.labels)
        if m.stream == "camera":
            if self.inputs and m.image is not None:
                self.writer.write_image("/" + topic_name(m.topic), m.image, stamp, frame)
                if m.calib is not None and m.calib.K is not None:
                    ns = topic_name(m.topic).rsplit("/", 1)[0] if "/" in topic_name(m.topic) else topic_name(m.topic)
                    self.writer.write_camera_info(f"/{ns}/camera_info", m.calib, stamp, frame)
            if self.ids:
                self.writer.write_image(output_topic("ids", m.topic), labels.astype(onto.label_dtype, copy=False),
                                        stamp, frame)
            if self.color:
                self.writer.write_image(output_topic("rgb", m.topic), _colors(prediction, onto), stamp, frame)
        else:
            pts = self._xyzi(m)
            if len(labels) != len(pts):
                raise DataError(f"{m.topic} prediction {m.seq}: {len(labels)} labels for {len(pts)} points")
            if self.inputs:
                self.writer.write_pointcloud("/" + topic_name(m.topic), pts, ("x", "y", "z", "intensity"), stamp, frame)
            if self.points:
                extra: dict[str, np.ndarray] = {"label": labels.astype(np.uint32)}
                if self.point_colors:
                    extra["rgb"] = _packed_colors(prediction, onto)
                self.writer.write_pointcloud(output_topic("points", m.topic), pts, ("x", "y", "z", "intensity"),
                                             stamp, frame, extra=extra)
        self.written += 1

    @staticmethod
    def _xyzi(message: SensorMessage) -> np.ndarray:
        from terraseg.inference.runtime.backends import xyzi

        return xyzi(message)

    def on_drop(self, message: SensorMessage, reason: str) -> None:
        self.dropped += 1

    def close(self) -> Path:
        """Finish the bag and move it into place (an empty bag when nothing was written); returns its path."""
        self.start()
        return self.writer.close()

    def abort(self) -> None:
        """Discard the bag (nothing is left at ``path``)."""
        if self._opened:
            self.writer.abort()
        self._opened = False


class FileSink:
    """Write id / colour PNGs and ``.label`` files per stream (see the module docstring).

    Args:
        out_dir: output folder.
        ids, color, overlay: camera outputs (overlay: the image blended with the colour mask, JPEG).
        labels, ply: LiDAR outputs (``.label`` files; coloured binary PLY clouds).
        alpha: overlay opacity.
    """

    def __init__(self, out_dir: str | os.PathLike[str], *, ids: bool = True, color: bool = True,
                 overlay: bool = False, labels: bool = True, ply: bool = False, alpha: float = 0.5) -> None:
        self.out_dir = Path(out_dir)
        self.ids, self.color, self.overlay, self.alpha = bool(ids), bool(color), bool(overlay), float(alpha)
        self.labels, self.ply = bool(labels), bool(ply)
        self._writers: dict[str, Any] = {}
        self._palettes: set[str] = set()
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        """Remove the temporaries an interrupted run left in the output folder (the statistics
        JSON's); each stream's folders are cleaned when their writer starts."""
        remove_stale_temporaries(self.out_dir)

    def folder(self, topic: str) -> Path:
        """The output folder of an input topic."""
        return self.out_dir / topic_slug(topic)

    def write(self, prediction: Prediction) -> None:
        m = prediction.message
        onto = prediction.resolve_ontology()
        folder = self.folder(m.topic)
        if m.stream == "camera":
            if not (self.ids or self.color or self.overlay):
                return
            w = self._writers.get(m.topic)
            if w is None:
                from terraseg.inference.writers import PredictionWriter

                w = self._writers[m.topic] = PredictionWriter(folder, onto, ids=self.ids, color=self.color,
                                                              overlay=self.overlay, alpha=self.alpha)
            if m.image is None:
                raise DataError(f"{m.topic} prediction {m.seq}: the message has no image")
            w.write(m.frame_id, m.image, prediction.labels)
        else:
            if not (self.labels or self.ply):
                return
            from terraseg.inference.scans import write_scan_prediction
            from terraseg.io.palette import write_palette

            onto.check_ids(prediction.labels, source=f"{m.topic} prediction {m.seq}")
            if m.topic not in self._palettes:
                remove_stale_temporaries(folder)
                write_palette(folder / "ontology.yaml", onto)
                self._palettes.add(m.topic)
            write_scan_prediction(folder, m.frame_id, BagSink._xyzi(m), prediction.labels, onto,
                                  label_file=self.labels, ply=self.ply)
        self.written += 1

    def on_drop(self, message: SensorMessage, reason: str) -> None:
        self.dropped += 1

    def close(self) -> None:
        """Nothing to finalise: every file is complete when written."""
