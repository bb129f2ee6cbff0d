"""Input sources of the runtime: iterators of :class:`~terraseg.inference.runtime.types.SensorMessage`.

Every source knows its streams before it is read (:attr:`Source.topics`: topic -> ``camera`` /
``lidar``) and yields messages in time order. :meth:`Source.messages` adds what all sources
share:

- ``seq`` (0-based per topic), ``received_ns`` (``time.perf_counter_ns()`` when the message is
  handed over) and ``meta["read_ms"]`` (time spent reading / decoding it);
- ``realtime=True`` paces the messages at their timestamps (sensor rate, scaled by ``speed``),
  like ``ros2 bag play``; otherwise they come as fast as they can be read. A backwards jump of
  the timestamps (a new sequence) does not stall the clock; forward gaps are kept. A source
  that reads slower than real time emits late rather than skipping;
- ``max_frames``: stop after that many messages of every topic;
- ``skip_bad``: a message (a bag message, a scan or image file, a dataset frame) that cannot be
  read or decoded is skipped with one warning line naming it and the problem, and counted per
  topic (:attr:`Source.skipped_by_topic`, and the runtime statistics' ``skipped``), instead of
  ending the iteration with :class:`~terraseg.errors.DataError`; corrupted MCAP chunks of a bag
  are skipped the same way;
- :meth:`Source.prefetch` reads ahead to the first message of every topic before the clock
  starts (the runtime warms its models up on them), without reading anything twice.

Sources:

- :class:`BagSource`: a ROS 1 ``.bag`` or ROS 2 bag (sqlite3 / mcap). Camera (``Image`` /
  ``CompressedImage``) and LiDAR (``PointCloud2``) topics are chosen by name or detected (the
  one colour image topic, the one point-cloud topic). Ground truth comes from a semantic image
  topic with the same header stamp (named, or detected by a name containing ``semantic``,
  ``label``, ``seg``, ``mask`` or ``class`` with a mono encoding) and from a ``label`` point
  field; intrinsics from a ``CameraInfo`` topic.
- :class:`DatasetSource`: a dataset folder (:func:`terraseg.datasets.open_dataset`: generic
  layout, SemanticKITTI, RELLIS-3D, GOOSE, CARLA exports); ground truth from its masks / labels,
  poses and calibration from the dataset.
- :class:`ImageSequenceSource`: a video file (OpenCV), an image or a folder of images.
- :class:`ScanFolderSource`: a SemanticKITTI ``.bin`` or ``.ply`` scan, or a folder of them.
- :class:`SimSource`: the built-in simulator driving live (:mod:`terraseg.sim`): a world, a
  drive along its trail, each frame rendered when it is needed, with ground truth and poses.

:func:`open_source` picks one from a source string (a path, or ``sim`` / ``sim:key=value,...``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.frame import XYZI, Calibration
from terraseg.inference.runtime.types import SensorMessage, StreamKind
from terraseg.io.scans import SCAN_SUFFIXES

log = logging.getLogger(__name__)

SEMANTIC_WORDS: tuple[str, ...] = ("semantic", "label", "seg", "mask", "class")
"""Words in an image topic's name that mark it as ground truth rather than a camera."""

COLOR_ENCODINGS = frozenset({"rgb8", "bgr8", "rgba8", "bgra8"})
ID_ENCODINGS = frozenset({"mono8", "8uc1", "mono16", "16uc1"})

BAG_SUFFIXES = (".bag", ".db3", ".mcap")


# ---------------------------------------------------------------------------------------------- base
class Source:
    """Base class: subclasses set :attr:`topics` and :attr:`description` and implement :meth:`_generate`.

    Args:
        realtime: pace messages at their timestamps (divided by ``speed``) instead of as fast as
            they can be read.
        speed: playback speed factor in real-time mode (2.0 = twice the sensor rate).
        max_frames: stop after this many messages of every topic (None: all).
        skip_bad: skip (and count) messages that cannot be read or decoded instead of failing.

    Attributes:
        skipped: messages skipped so far (``skip_bad``), all topics.
        skipped_by_topic: the same per topic.
        on_skip: called as ``on_skip(topic, count)`` for every skip (the runtime counts them
            in its statistics); set it before iterating.
    """

    description = "source"
    PREFETCH_LIMIT = 64
    """Most messages :meth:`prefetch` reads ahead looking for the first message of every topic."""

    def __init__(self, *, realtime: bool = False, speed: float = 1.0, max_frames: int | None = None,
                 skip_bad: bool = False) -> None:
        if not (np.isfinite(speed) and speed > 0):
            raise ConfigError(f"playback speed must be positive, got {speed}")
        if max_frames is not None and max_frames < 1:
            raise ConfigError(f"max_frames must be at least 1, got {max_frames}")
        self.realtime = bool(realtime)
        self.speed = float(speed)
        self.max_frames = max_frames
        self.skip_bad = bool(skip_bad)
        self.topics: dict[str, StreamKind] = {}
        self.skipped = 0
        self.skipped_by_topic: dict[str, int] = {}
        self.on_skip: Callable[[str, int], None] | None = None
        self._gen: Iterator[SensorMessage] | None = None
        self._ahead: deque[SensorMessage] = deque()
        self._ahead_error: BaseException | None = None

    def _skip(self, topic: str, problem: object, count: int = 1, warn: bool = True) -> None:
        """Count ``count`` skipped messages of ``topic`` and (``warn``) log one warning line
        ``skipped <problem>``; the problem names the message or file (a :class:`DataError`'s text)."""
        self.skipped += count
        self.skipped_by_topic[topic] = self.skipped_by_topic.get(topic, 0) + count
        if warn:
            log.warning("skipped %s", problem)
        if self.on_skip is not None:
            self.on_skip(topic, count)

    # ------------------------------------------------------------------ subclass API
    def _generate(self) -> Iterator[SensorMessage]:  # pragma: no cover - abstract
        """Messages in time order with ``stream``, ``topic``, ``stamp_ns``, ``frame_id`` and data set."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files / handles (idempotent)."""

    # ------------------------------------------------------------------ iteration
    def prefetch(self) -> dict[str, SensorMessage]:
        """Read ahead to the first message of every topic (at most :data:`PREFETCH_LIMIT`
        messages) and keep what was read for :meth:`messages`, which yields it first, paced from
        the moment it is called: nothing is read twice and the clock starts later. Returns
        topic -> first message (topics without one within the limit are missing). A read error
        is kept and raised by :meth:`messages` at its place in the stream."""
        if self._gen is None:
            self._gen = self._generate()
        first: dict[str, SensorMessage] = {m.topic: m for m in reversed(self._ahead)}
        while self._ahead_error is None and len(first) < len(self.topics) and len(self._ahead) < self.PREFETCH_LIMIT:
            t0 = time.perf_counter_ns()
            try:
                msg = next(self._gen)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - raised again by messages()
                self._ahead_error = exc
                break
            msg.meta.setdefault("read_ms", (time.perf_counter_ns() - t0) / 1e6)
            self._ahead.append(msg)
            first.setdefault(msg.topic, msg)
        return first

    def _next(self, gen: Iterator[SensorMessage]) -> SensorMessage:
        if self._ahead:
            return self._ahead.popleft()
        if self._ahead_error is not None:
            exc, self._ahead_error = self._ahead_error, None
            raise exc
        return next(gen)

    def messages(self, stop: threading.Event | None = None) -> Iterator[SensorMessage]:
        """Yield the source's messages (see the module docstring); ``stop`` ends the iteration
        early and interrupts a real-time wait."""
        gen = self._gen if self._gen is not None else self._generate()
        self._gen = None
        counts: dict[str, int] = {}
        prev_stamp: int | None = None
        due = 0.0
        try:
            while stop is None or not stop.is_set():
                t0 = time.perf_counter_ns()
                try:
                    msg = self._next(gen)
                except StopIteration:
                    return
                read_ms = (time.perf_counter_ns() - t0) / 1e6
                if msg.topic not in self.topics:
                    raise DataError(f"{self.description}: message on undeclared topic {msg.topic!r}")
                n = counts.get(msg.topic, 0)
                if self.max_frames is not None and n >= self.max_frames:
                    if len(counts) == len(self.topics) and all(c >= self.max_frames for c in counts.values()):
                        return
                    continue
                counts[msg.topic] = n + 1
                msg.seq = n
                msg.meta.setdefault("read_ms", read_ms)
                if self.realtime:
                    now = time.perf_counter()
                    if prev_stamp is None:
                        due = now
                    else:
                        due += max(msg.stamp_ns - prev_stamp, 0) / 1e9 / self.speed
                    prev_stamp = msg.stamp_ns
                    wait = due - now
                    if wait > 0:
                        if stop is not None:
                            if stop.wait(wait):
                                return
                        else:
                            time.sleep(wait)
                msg.received_ns = time.perf_counter_ns()
                yield msg
        finally:
            self._ahead.clear()
            close = getattr(gen, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Iterator[SensorMessage]:
        return self.messages()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        streams = ", ".join(f"{k} {t}" for t, k in self.topics.items())
        return f"{type(self).__name__}({self.description!r}, streams: {streams}, realtime={self.realtime})"


def _stamp_from_seconds(t: float | None, index: int, rate_hz: float) -> int:
    if t is None or not np.isfinite(t):
        return int(round(index * 1e9 / rate_hz))
    return int(round(float(t) * 1e9))


def _check_rate(rate_hz: float) -> float:
    if not (np.isfinite(rate_hz) and rate_hz > 0):
        raise ConfigError(f"rate_hz must be positive, got {rate_hz}")
    return float(rate_hz)


def _xyzi(points: np.ndarray, fields: Sequence[str]) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity of a cloud with columns ``fields`` (zeros without intensity)."""
    pts = np.asarray(points, dtype=np.float32)
    if tuple(fields[:4]) == XYZI:
        return pts if pts.shape[1] == 4 else np.ascontiguousarray(pts[:, :4])
    out = np.zeros((len(pts), 4), dtype=np.float32)
    out[:, :3] = pts[:, :3]
    for name in ("intensity", "i", "remission", "reflectivity"):
        if name in fields:
            out[:, 3] = pts[:, list(fields).index(name)]
            break
    return out


# ---------------------------------------------------------------------------------------------- bags
def _semantic_name(name: str) -> bool:
    low = name.lower()
    return any(w in low for w in SEMANTIC_WORDS)


class BagSource(Source):
    """Camera images and LiDAR scans from a ROS 1 / ROS 2 bag (see the module docstring).

    Args:
        path: a ROS 1 ``.bag`` file, a ROS 2 bag folder or a ``.db3`` / ``.mcap`` file.
        camera, lidar: read camera / LiDAR topics at all (False when there is no model for them).
        camera_topics, lidar_topics: topics by name; None detects them (exactly one candidate
            must exist, otherwise :class:`DataError` lists them).
        semantic_topic: ground-truth id image topic matched to the camera by header stamp;
            None detects one (only with a single camera topic); ``""`` disables it.
        gt_ontology: ontology name of the ground truth (the simulator's is ``sim``); also needed
            to decode colour-coded semantic images.
        gt_tolerance_ms: largest header-stamp difference between an image and its ground truth.
        gt_wait_ms: how long (bag record time) an image may wait for its ground truth.
        skip_bad: skip undecodable messages and corrupted MCAP chunks (one warning line each,
            counted in :attr:`skipped_by_topic`) instead of failing.
        realtime, speed, max_frames: see :class:`Source`.
    """

    def __init__(self, path: str | os.PathLike[str], *, camera: bool = True, lidar: bool = True,
                 camera_topics: Sequence[str] | None = None, lidar_topics: Sequence[str] | None = None,
                 semantic_topic: str | None = None, gt_ontology: str | None = None, gt_tolerance_ms: float = 1.0,
                 gt_wait_ms: float = 100.0, skip_bad: bool = False, realtime: bool = False, speed: float = 1.0,
                 max_frames: int | None = None) -> None:
        from terraseg.io.bags import open_bag

        super().__init__(realtime=realtime, speed=speed, max_frames=max_frames, skip_bad=skip_bad)
        if not camera and not lidar:
            raise ConfigError("BagSource: nothing to read (camera and lidar are both off)")
        self.path = Path(path)
        self.description = str(self.path)
        self.gt_ontology = gt_ontology
        self.gt_tolerance_ns = int(round(gt_tolerance_ms * 1e6))
        self.gt_wait_ns = int(round(max(gt_wait_ms, gt_tolerance_ms) * 1e6))
        self.bag = open_bag(self.path)
        self.bag.skip_corrupted = self.skip_bad
        try:
            self._resolve(camera, lidar, camera_topics, lidar_topics, semantic_topic)
        except BaseException:
            self.bag.close()
            raise

    def close(self) -> None:
        self.bag.close()

    # ------------------------------------------------------------------ topics
    def _image_role(self, name: str) -> str:
        """``camera``, ``semantic`` or ``other`` from the first message of an image topic."""
        from terraseg.io.bags.decode import IMAGE, parse_image_raw

        info = self.bag.topics[name]
        if info.count == 0:
            return "other"
        gen = self.bag.raw_messages(name)
        try:
            _, msgtype, _, _, raw = next(gen)
        except StopIteration:
            return "other"
        finally:
            gen.close()
        semantic = _semantic_name(name)
        if msgtype == IMAGE:
            msg = parse_image_raw(raw, self.bag.ros_version)
            if msg is None:
                msg = self.bag.deserialize(raw, msgtype, self.bag.where(name, 0))
            enc = str(msg.encoding).lower()
            if enc in COLOR_ENCODINGS:
                return "semantic" if semantic else "camera"
            return "semantic" if (semantic and enc in ID_ENCODINGS) else "other"
        msg = self.bag.deserialize(raw, msgtype, self.bag.where(name, 0))
        fmt = str(getattr(msg, "format", "")).lower()
        if semantic:
            return "semantic"
        return "other" if ("depth" in fmt or "depth" in name.lower() or "mono" in fmt) else "camera"

    def _pick(self, what: str, candidates: list[str], option: str) -> str:
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise DataError(f"{self.path}: no {what} topic found for the model; topics: {self.bag.describe_topics()}")
        raise DataError(f"{self.path}: several {what} topics ({', '.join(candidates)}); choose with {option}")

    def _resolve(self, camera: bool, lidar: bool, camera_topics: Sequence[str] | None,
                 lidar_topics: Sequence[str] | None, semantic_topic: str | None) -> None:
        from terraseg.io.bags.decode import CAMERA_INFO, COMPRESSED_IMAGE, IMAGE, POINTCLOUD2

        topics = self.bag.topics
        images = [n for n, t in topics.items() if t.msgtype in (IMAGE, COMPRESSED_IMAGE)]
        self.camera_topics: list[str] = []
        if camera:
            if camera_topics:
                for t in camera_topics:
                    self.bag.topic(t, [IMAGE, COMPRESSED_IMAGE])
                self.camera_topics = list(dict.fromkeys(camera_topics))
            else:
                roles = {n: self._image_role(n) for n in images}
                self.camera_topics = [self._pick("colour camera image", [n for n, r in roles.items()
                                                                         if r == "camera"], "camera_topics")]
        self.lidar_topics: list[str] = []
        if lidar:
            if lidar_topics:
                for t in lidar_topics:
                    self.bag.topic(t, [POINTCLOUD2])
                self.lidar_topics = list(dict.fromkeys(lidar_topics))
            else:
                clouds = [n for n, t in topics.items() if t.msgtype == POINTCLOUD2]
                self.lidar_topics = [self._pick("PointCloud2", clouds, "lidar_topics")]
        self.semantic_topic: str | None = None
        if semantic_topic:
            if not self.camera_topics:
                raise ConfigError(f"{self.path}: a semantic topic needs a camera topic")
            if len(self.camera_topics) != 1:
                raise ConfigError(f"{self.path}: a semantic topic needs exactly one camera topic, got "
                                  f"{', '.join(self.camera_topics)}")
            self.bag.topic(semantic_topic, [IMAGE, COMPRESSED_IMAGE])
            self.semantic_topic = semantic_topic
        elif semantic_topic is None and len(self.camera_topics) == 1:
            cam = self.camera_topics[0]
            cands = [n for n in images if n != cam and _semantic_name(n) and self._image_role(n) == "semantic"]
            if cands:  # the one sharing the longest prefix with the camera topic
                self.semantic_topic = max(cands, key=lambda n: len(os.path.commonprefix([n, cam])))
        infos = [n for n, t in topics.items() if t.msgtype == CAMERA_INFO]
        self.info_topics: dict[str, str] = {}  # camera topic -> camera info topic
        for cam in self.camera_topics:
            ns = cam.rsplit("/", 1)[0]
            same_ns = [n for n in infos if n.rsplit("/", 1)[0] == ns]
            if same_ns:
                self.info_topics[cam] = same_ns[0]
            elif len(infos) == 1:
                self.info_topics[cam] = infos[0]
        self.topics = {**{t: "camera" for t in self.camera_topics}, **{t: "lidar" for t in self.lidar_topics}}
        self._first_calib: dict[str, Calibration] = {}  # so that the first images have intrinsics too
        for info in set(self.info_topics.values()):
            gen = self.bag.raw_messages(info)
            try:
                for _, msgtype, index, record_ns, raw in gen:
                    try:
                        self._first_calib[info] = self._decode(info, msgtype, index, record_ns, raw)
                    except DataError:
                        pass
                    break
            finally:
                gen.close()

    # ------------------------------------------------------------------ decoding
    def _decode_image(self, raw: bytes, msgtype: str, where: str) -> tuple[np.ndarray, int | None, str]:
        """(image array, header stamp or None, header frame id)."""
        from terraseg.io.bags.decode import IMAGE, decode_compressed_image, decode_image, parse_image_raw, stamp_ns

        msg = parse_image_raw(raw, self.bag.ros_version) if msgtype == IMAGE else None
        if msg is None:
            msg = self.bag.deserialize(raw, msgtype, where)
        arr = decode_image(msg, where) if msgtype == IMAGE else decode_compressed_image(msg, where)
        return arr, stamp_ns(msg), str(msg.header.frame_id)

    def _gt_ids(self, arr: np.ndarray, where: str) -> np.ndarray | None:
        if arr.ndim == 2 and arr.dtype.kind in "ui":
            return arr
        if arr.ndim == 3 and self.gt_ontology is not None:
            from terraseg.ontology import decode_colors

            return decode_colors(arr, self.gt_ontology, unknown="void", source=where)
        if not getattr(self, "_warned_gt", False):
            log.warning("%s: semantic images are %s %s; give gt_ontology to decode colour masks (no ground truth)",
                        where, arr.shape, arr.dtype)
            self._warned_gt = True
        return None

    def _decode(self, topic: str, msgtype: str, index: int, record_ns: int, raw: bytes) -> Any:
        from terraseg.datasets.generic_writer import stamp_stem as stem_of
        from terraseg.io.bags.decode import CAMERA_INFO, POINTCLOUD2, decode_camera_info, decode_pointcloud2, stamp_ns

        where = self.bag.where(topic, index)
        if msgtype == CAMERA_INFO:
            return decode_camera_info(self.bag.deserialize(raw, msgtype, where), where)
        if msgtype == POINTCLOUD2:
            msg = self.bag.deserialize(raw, msgtype, where)
            cloud = decode_pointcloud2(msg, where)
            stamp = stamp_ns(msg) or record_ns
            gt = None
            lab = cloud.fields.get("label")
            if lab is not None and lab.ndim == 1 and lab.dtype.kind in "ui":
                gt = (lab.astype(np.int64) & 0xFFFF).astype(np.uint16)
            return SensorMessage("lidar", topic, 0, stamp, stem_of(stamp), points=cloud.xyzi(), point_fields=XYZI,
                                 gt=gt, ontology=self.gt_ontology if gt is not None else None,
                                 meta={"header_frame_id": str(msg.header.frame_id), "record_ns": record_ns,
                                       "bag_index": index})
        arr, stamp, frame = self._decode_image(raw, msgtype, where)
        stamp = stamp or record_ns
        if topic == self.semantic_topic:
            return stamp, self._gt_ids(arr, where)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)  # a grey camera image
        elif arr.dtype != np.uint8:
            raise DataError(f"{where}: camera images must be 8-bit colour, got {arr.dtype}")
        return SensorMessage("camera", topic, 0, stamp, stem_of(stamp), image=arr,
                             meta={"header_frame_id": frame, "record_ns": record_ns, "bag_index": index})

    def _generate(self) -> Iterator[SensorMessage]:
        wanted = [*self.camera_topics, *self.lidar_topics, *sorted(set(self.info_topics.values()))]
        if self.semantic_topic:
            wanted.append(self.semantic_topic)
        calib: dict[str, Calibration] = dict(self._first_calib)
        pending: dict[str, SensorMessage] = {}  # camera topic -> image waiting for its ground truth
        recent_gt: deque[tuple[int, np.ndarray | None]] = deque(maxlen=16)

        def attach(msg: SensorMessage) -> SensorMessage:
            info = self.info_topics.get(msg.topic)
            if info is not None and info in calib:
                msg.calib = calib[info]
            return msg

        chunks_seen = 0

        def count_skipped_chunks() -> int:  # corrupted chunks passed over (the bag warned about each)
            for chunk in self.bag.skipped_chunks[chunks_seen:]:
                for t, n in chunk.messages.items():
                    if t in wanted:
                        self._skip(t, chunk.description, n, warn=False)
            return len(self.bag.skipped_chunks)

        for topic, msgtype, index, record_ns, raw in self.bag.raw_messages(wanted):
            chunks_seen = count_skipped_chunks()
            for cam, m in list(pending.items()):  # images whose ground truth did not come in time
                if record_ns > m.meta["record_ns"] + self.gt_wait_ns:
                    yield attach(pending.pop(cam))
            try:
                item = self._decode(topic, msgtype, index, record_ns, raw)
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self._skip(topic, exc)
                continue
            if isinstance(item, Calibration):
                calib[topic] = item
            elif isinstance(item, tuple):  # ground truth
                stamp, gt = item
                waiting = pending.get(self.camera_topics[0]) if self.camera_topics else None
                if waiting is not None and abs(waiting.stamp_ns - stamp) <= self.gt_tolerance_ns:
                    waiting.gt, waiting.ontology = gt, self.gt_ontology
                    yield attach(pending.pop(waiting.topic))
                else:
                    recent_gt.append((stamp, gt))
            elif item.stream == "lidar":
                yield item
            else:
                if self.semantic_topic is None:
                    yield attach(item)
                    continue
                match = next((k for k, (s, _) in enumerate(recent_gt)
                              if abs(s - item.stamp_ns) <= self.gt_tolerance_ns), None)
                if match is not None:
                    item.gt, item.ontology = recent_gt[match][1], self.gt_ontology
                    del recent_gt[match]
                    yield attach(item)
                    continue
                if item.topic in pending:
                    yield attach(pending.pop(item.topic))
                pending[item.topic] = item
        count_skipped_chunks()
        for m in pending.values():
            yield attach(m)


# ---------------------------------------------------------------------------------------------- datasets
class DatasetSource(Source):
    """Frames of a dataset folder (:func:`terraseg.datasets.open_dataset`) as camera / LiDAR messages.

    Topics are ``images`` and ``points``. Stamps are the frames' timestamps, else
    ``index / rate_hz``; ``frame_id`` is the frame's id (the output stem).

    Args:
        root: the dataset folder.
        kind, split, options: as for :func:`terraseg.datasets.open_dataset` (``options`` are the
            reader's keyword arguments, e.g. ``{"ontology": "sim"}``).
        camera, lidar: which streams to produce (the dataset must have them).
        rate_hz: frame rate when the frames have no timestamps.
        realtime, speed, max_frames, skip_bad: see :class:`Source` (a frame that cannot be read
            is skipped on every stream).
    """

    CAMERA_TOPIC = "images"
    LIDAR_TOPIC = "points"

    def __init__(self, root: str | os.PathLike[str], *, kind: str = "auto", split: str = "all",
                 options: Mapping[str, Any] | None = None, camera: bool = True, lidar: bool = True,
                 rate_hz: float = 10.0, realtime: bool = False, speed: float = 1.0,
                 max_frames: int | None = None, skip_bad: bool = False) -> None:
        from terraseg.datasets import open_dataset

        super().__init__(realtime=realtime, speed=speed, max_frames=max_frames, skip_bad=skip_bad)
        self.root = Path(root)
        self.description = str(self.root)
        self.rate_hz = _check_rate(rate_hz)
        self.dataset = open_dataset(self.root, kind, split, **dict(options or {}))
        if len(self.dataset) == 0:
            raise DataError(f"{self.root}: the dataset has no frames (split {split!r})")
        first = self.dataset[0]
        self.camera = camera and first.image is not None
        self.lidar = lidar and first.points is not None
        if camera and not self.camera:
            raise DataError(f"{self.root}: the dataset has no camera images for the camera model ({self.dataset!r})")
        if lidar and not self.lidar:
            raise DataError(f"{self.root}: the dataset has no point clouds for the LiDAR model ({self.dataset!r})")
        if not (self.camera or self.lidar):
            raise ConfigError("DatasetSource: nothing to read (camera and lidar are both off)")
        if self.camera:
            self.topics[self.CAMERA_TOPIC] = "camera"
        if self.lidar:
            self.topics[self.LIDAR_TOPIC] = "lidar"

    def _generate(self) -> Iterator[SensorMessage]:
        for i in range(len(self.dataset)):
            try:
                f = self.dataset[i]
            except DataError as exc:
                if not self.skip_bad:
                    raise
                for n, topic in enumerate(self.topics):  # the frame's messages of every stream, one warning
                    self._skip(topic, f"frame {i} of {self.root}: {exc}" if str(self.root) not in str(exc) else exc,
                               warn=n == 0)
                continue
            stamp = _stamp_from_seconds(f.timestamp, i, self.rate_hz)
            meta = {"index": i, "sequence": f.sequence}
            if self.camera:
                if f.image is None:
                    raise DataError(f"{self.root}: frame {f.frame_id} (index {i}) has no image")
                yield SensorMessage("camera", self.CAMERA_TOPIC, 0, stamp, f.frame_id, image=f.image,
                                    gt=f.image_labels, ontology=f.ontology, pose=f.pose, calib=f.calib,
                                    meta={**meta, "header_frame_id": "camera"})
            if self.lidar:
                if f.points is None:
                    raise DataError(f"{self.root}: frame {f.frame_id} (index {i}) has no point cloud")
                yield SensorMessage("lidar", self.LIDAR_TOPIC, 0, stamp, f.frame_id, points=f.points,
                                    point_fields=tuple(f.point_fields), gt=f.point_labels, ontology=f.ontology,
                                    pose=f.pose, calib=f.calib, meta={**meta, "header_frame_id": "lidar"})


# ---------------------------------------------------------------------------------------------- files
class ImageSequenceSource(Source):
    """A video file (OpenCV), one image or a folder of images (:func:`terraseg.inference.iter_inputs`).

    The topic is the file / folder name; stamps are ``index / fps`` (videos: the container's
    frame rate, else ``rate_hz``); frame ids are ``frame_000000`` ... for videos and the image
    stems otherwise. With ``skip_bad`` an unreadable image file is skipped (one warning line).
    """

    def __init__(self, path: str | os.PathLike[str], *, rate_hz: float = 10.0, realtime: bool = False,
                 speed: float = 1.0, max_frames: int | None = None, skip_bad: bool = False) -> None:
        from terraseg.inference.writers import VIDEO_SUFFIXES, iter_inputs, list_images, video_fps

        super().__init__(realtime=realtime, speed=speed, max_frames=max_frames, skip_bad=skip_bad)
        self.path = Path(path)
        self.description = str(self.path)
        is_video = self.path.suffix.lower() in VIDEO_SUFFIXES and not self.path.is_dir()
        self._video = iter_inputs(self.path) if is_video else None  # checks the path now
        self._files = None if is_video else list_images(self.path)
        self.rate_hz = video_fps(self.path, default=_check_rate(rate_hz)) if is_video else _check_rate(rate_hz)
        self.topics = {self.path.name or "images": "camera"}

    def _generate(self) -> Iterator[SensorMessage]:
        from terraseg.io.images import read_image

        topic = next(iter(self.topics))
        if self._video is not None:
            for i, (stem, image) in enumerate(self._video):
                yield SensorMessage("camera", topic, 0, _stamp_from_seconds(None, i, self.rate_hz), stem, image=image,
                                    meta={"header_frame_id": "camera"})
            return
        assert self._files is not None
        for i, (stem, file) in enumerate(self._files):
            try:
                image = read_image(file)
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self._skip(topic, exc)
                continue
            yield SensorMessage("camera", topic, 0, _stamp_from_seconds(None, i, self.rate_hz), stem, image=image,
                                meta={"header_frame_id": "camera"})

    def close(self) -> None:
        close = getattr(self._video, "close", None)
        if close is not None:
            close()


class ScanFolderSource(Source):
    """A ``.bin`` / ``.ply`` scan or a folder of them (:func:`terraseg.inference.scans.list_scans`),
    at ``rate_hz``; the topic is the file / folder name. With ``skip_bad`` an unreadable scan
    (a size that is not a whole number of points, NaN coordinates, a broken PLY header) is skipped
    (one warning line)."""

    def __init__(self, path: str | os.PathLike[str], *, rate_hz: float = 10.0, realtime: bool = False,
                 speed: float = 1.0, max_frames: int | None = None, skip_bad: bool = False) -> None:
        from terraseg.inference.scans import list_scans

        super().__init__(realtime=realtime, speed=speed, max_frames=max_frames, skip_bad=skip_bad)
        self.path = Path(path)
        self.description = str(self.path)
        self.rate_hz = _check_rate(rate_hz)
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file or folder")
        self._files = list_scans(self.path)
        self.topics = {self.path.name or "points": "lidar"}

    def _generate(self) -> Iterator[SensorMessage]:
        from terraseg.inference.scans import read_scan

        topic = next(iter(self.topics))
        for i, (stem, file) in enumerate(self._files):
            try:
                pts = read_scan(file)
            except DataError as exc:
                if not self.skip_bad:
                    raise
                self._skip(topic, exc)
                continue
            yield SensorMessage("lidar", topic, 0, _stamp_from_seconds(None, i, self.rate_hz), stem, points=pts,
                                meta={"header_frame_id": "lidar"})


# ---------------------------------------------------------------------------------------------- simulator
SIM_DEFAULTS: dict[str, Any] = {"seed": 0, "domain": "forest-day", "frames": 100, "camera": "vga",
                                "lidar": "os1-64-1024", "rate": 10.0, "speed": 4.0}
"""Options of the simulator source and their defaults (``sim:seed=1,domain=forest-dusk,...``)."""


def parse_sim_spec(spec: str) -> dict[str, Any]:
    """``"sim"`` / ``"sim:seed=3,frames=50,camera=small"`` -> the options merged with :data:`SIM_DEFAULTS`.

    Raises:
        ConfigError: unknown keys or bad values.
    """
    head, _, rest = spec.partition(":")
    if head.strip().lower() != "sim":
        raise ConfigError(f"not a simulator source: {spec!r} (expected sim or sim:key=value,...)")
    out = dict(SIM_DEFAULTS)
    for tok in [t for t in rest.replace(";", ",").replace(" ", ",").split(",") if t]:
        key, sep, value = tok.partition("=")
        key = key.strip().lower()
        if not sep or key not in SIM_DEFAULTS:
            raise ConfigError(f"simulator source {spec!r}: expected key=value with keys "
                              f"{', '.join(SIM_DEFAULTS)}, got {tok!r}")
        default = SIM_DEFAULTS[key]
        try:
            out[key] = type(default)(value) if not isinstance(default, str) else value
        except ValueError:
            raise ConfigError(f"simulator source {spec!r}: {key} must be a {type(default).__name__}, "
                              f"got {value!r}") from None
    if out["frames"] < 1 or out["rate"] <= 0 or out["speed"] <= 0:
        raise ConfigError(f"simulator source {spec!r}: frames, rate and speed must be positive")
    for key in ("camera", "lidar"):
        if str(out[key]).lower() in ("none", "off", ""):
            out[key] = None
    return out


class SimSource(Source):
    """The built-in simulator driving live: each frame is rendered when the pipeline asks for it.

    A world (``seed``, the ``domain``'s terrain) is generated, a drive of ``frames`` poses along
    its trail at ``rate`` Hz and ``speed`` m/s is planned (:func:`terraseg.sim.trail_poses`), and
    every step is rendered (:func:`terraseg.sim.render`) into a camera message
    (``/sim/camera/image``) and a LiDAR message (``/sim/lidar/points``), the topics of the
    simulator's bags, with ground truth (ontology ``sim``), calibration and poses. Rendering is
    the sensor, not the perception: ``meta["read_ms"]`` is 0 and ``meta["render_ms"]`` holds
    the rendering time.

    Args:
        options: keys of :data:`SIM_DEFAULTS` (a ``sim:...`` string goes through :func:`parse_sim_spec`).
        camera, lidar: which sensors to render (the rig presets come from ``options``).
    """

    def __init__(self, options: Mapping[str, Any] | str | None = None, *, camera: bool = True, lidar: bool = True,
                 realtime: bool = False, speed: float = 1.0, max_frames: int | None = None) -> None:
        from terraseg.sim.dataset import TOPICS, resolve_rig

        super().__init__(realtime=realtime, speed=speed, max_frames=max_frames)
        opts = parse_sim_spec(options) if isinstance(options, str) else {**SIM_DEFAULTS, **dict(options or {})}
        unknown = sorted(set(opts) - set(SIM_DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown simulator options {unknown} (known: {', '.join(SIM_DEFAULTS)})")
        self.options = opts
        cam = opts["camera"] if camera else None
        lid = opts["lidar"] if lidar else None
        if camera and cam is None:
            raise ConfigError("the simulator source has no camera (camera=none) but a camera model was given")
        if lidar and lid is None:
            raise ConfigError("the simulator source has no LiDAR (lidar=none) but a LiDAR model was given")
        self.rig = resolve_rig(cam, lid)
        self.description = "sim:" + ",".join(f"{k}={v}" for k, v in opts.items())
        self.camera_topic, self.lidar_topic = TOPICS["image"], TOPICS["points"]
        if self.rig.camera is not None:
            self.topics[self.camera_topic] = "camera"
        if self.rig.lidar is not None:
            self.topics[self.lidar_topic] = "lidar"

    def _generate(self) -> Iterator[SensorMessage]:
        from terraseg.sim import generate_world, get_domain, render, trail_poses
        from terraseg.sim.dataset import _frame_seed

        o = self.options
        dom = get_domain(str(o["domain"]))
        world = generate_world(int(o["seed"]), dom.terrain)
        poses, times = trail_poses(world, int(o["frames"]), rate_hz=float(o["rate"]), speed=float(o["speed"]),
                                   seed=int(o["seed"]))
        for i in range(len(poses)):
            t0 = time.perf_counter()
            f = render(world, poses[i], self.rig, dom, seed=_frame_seed(int(o["seed"]), 0, i), frame_id=f"{i:06d}",
                       timestamp=float(times[i]))
            render_ms = (time.perf_counter() - t0) * 1e3
            stamp = int(round(times[i] * 1e9)) + 1_000_000_000  # as in the simulator's bags
            meta = {"read_ms": 0.0, "render_ms": render_ms, "index": i}
            if f.image is not None:
                cam_pose = poses[i] @ self.rig.camera.T_vehicle_cam() if self.rig.camera is not None else None
                yield SensorMessage("camera", self.camera_topic, 0, stamp, f"{i:06d}", image=f.image,
                                    gt=f.image_labels, ontology=f.ontology, pose=cam_pose, calib=f.calib,
                                    meta={**meta, "header_frame_id": "sim_camera", "vehicle_pose": poses[i]})
            if f.points is not None:
                yield SensorMessage("lidar", self.lidar_topic, 0, stamp, f"{i:06d}", points=f.points,
                                    gt=f.point_labels, ontology=f.ontology, pose=f.pose, calib=f.calib,
                                    meta={**meta, "header_frame_id": "sim_lidar", "vehicle_pose": poses[i]})


# ---------------------------------------------------------------------------------------------- open_source
def is_bag_path(path: Path) -> bool:
    """True for a ROS 1 ``.bag`` file, a ``.db3`` / ``.mcap`` file or a ROS 2 bag folder."""
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return path.suffix.lower() in BAG_SUFFIXES


def open_source(spec: str | os.PathLike[str], *, camera: bool = True, lidar: bool = False,
                realtime: bool = False, speed: float = 1.0, max_frames: int | None = None,
                camera_topics: Sequence[str] | None = None, lidar_topics: Sequence[str] | None = None,
                semantic_topic: str | None = None, gt_ontology: str | None = None, kind: str = "auto",
                split: str = "all", options: Mapping[str, Any] | None = None, rate_hz: float = 10.0,
                skip_bad: bool = False) -> Source:
    """The source for ``spec``: ``sim`` / ``sim:key=value,...``, a bag, a video / image / image
    folder, a ``.bin`` / ``.ply`` scan or scan folder, or a dataset folder (tried in this order for folders:
    bag, dataset layout, images, scans).

    ``camera`` / ``lidar`` say which streams are wanted (those with a model); the other keywords
    go to the chosen source class and are rejected where they do not apply; ``skip_bad`` skips
    unreadable messages, files and frames of every kind of source (see :class:`Source`).

    Raises:
        DataError: a missing path or a layout that is not recognised.
        ConfigError: options that do not fit the source.
    """
    common = {"realtime": realtime, "speed": speed, "max_frames": max_frames}
    s = str(spec)
    readers = {**common, "skip_bad": skip_bad}
    bag_only = {"camera_topics": camera_topics, "lidar_topics": lidar_topics, "semantic_topic": semantic_topic}

    def reject(names: Mapping[str, Any], what: str) -> None:
        given = [k for k, v in names.items() if v]
        if given:
            raise ConfigError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to bags, not to {what} {s}")

    if s == "sim" or s.startswith("sim:"):
        reject(bag_only, "the simulator")
        return SimSource(s, camera=camera, lidar=lidar, **common)
    path = Path(s)
    if not path.exists():
        raise DataError(f"{path}: source not found (expected a bag, a video, a dataset folder or sim:...)")
    if is_bag_path(path):
        return BagSource(path, camera=camera, lidar=lidar, camera_topics=camera_topics, lidar_topics=lidar_topics,
                         semantic_topic=semantic_topic, gt_ontology=gt_ontology, **readers)
    reject(bag_only, "the non-bag source")
    from terraseg.inference.writers import INPUT_IMAGE_SUFFIXES, VIDEO_SUFFIXES

    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in SCAN_SUFFIXES:
            if camera:
                raise ConfigError(f"{path}: a LiDAR scan has no camera images for the camera model")
            return ScanFolderSource(path, rate_hz=rate_hz, **readers)
        if suffix in VIDEO_SUFFIXES or suffix in INPUT_IMAGE_SUFFIXES:
            if lidar:
                raise ConfigError(f"{path}: a video / image has no point clouds for the LiDAR model")
            return ImageSequenceSource(path, rate_hz=rate_hz, **readers)
        raise DataError(f"{path}: unknown source type {suffix!r} (expected a bag {', '.join(BAG_SUFFIXES)}, a video "
                        f"{', '.join(VIDEO_SUFFIXES)}, an image, a .bin / .ply scan, a folder or sim:...)")
    from terraseg.datasets import detect_kind

    try:
        if kind == "auto":
            detect_kind(path)
    except DataError as exc:
        has_images = any(p.suffix.lower() in INPUT_IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file())
        has_scans = not has_images and any(p.suffix.lower() in SCAN_SUFFIXES for p in path.rglob("*") if p.is_file())
        if has_images and not lidar and not options:
            return ImageSequenceSource(path, rate_hz=rate_hz, **readers)
        if has_scans and not camera and not options:
            return ScanFolderSource(path, rate_hz=rate_hz, **readers)
        raise exc
    return DatasetSource(path, kind=kind, split=split, options=options, camera=camera, lidar=lidar, rate_hz=rate_hz,
                         **readers)
