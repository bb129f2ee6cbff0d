"""ROS 2 node: live segmentation of camera images and LiDAR scans on a robot (``terraseg-ros``).

The node subscribes to ``sensor_msgs/Image`` (or ``CompressedImage`` for topics ending in
``/compressed``) and ``sensor_msgs/PointCloud2`` topics, runs a runtime backend on every message
and publishes, for an input topic ``/cam/image``:

- ``/segmentation/ids/cam/image``: ``sensor_msgs/Image`` ``mono8`` class ids (``mono16`` when the
  ontology has ids above 255), same size and header as the input;
- ``/segmentation/rgb/cam/image``: ``rgb8`` colour mask in the ontology's colours;

and for a LiDAR topic ``/os1/points``:

- ``/segmentation/points/os1/points``: ``PointCloud2`` with x, y, z (and intensity) float32, a
  ``label`` uint32 field and a packed ``rgb`` float32 field (the PCL / RViz convention), in the
  input's frame and with its header.

``rclpy`` and the ``sensor_msgs`` Python types are imported only when the node starts: everything
else in terraseg (bags, folders, ``terraseg run``) works without ROS. The conversions between
ROS message fields and numpy (``*_fields`` builders, :func:`image_from_msg`,
:func:`points_from_msg`, :class:`SegmentationRelay`) need no ROS either; they take any object with
the ``sensor_msgs`` field names (rclpy messages, rosbags messages, ``SimpleNamespace``).

Parameters (``--ros-args -p name:=value``; the options of :func:`main` set their defaults):

=================== ============== ====================================================================
name                type           meaning
=================== ============== ====================================================================
image_topics        string[]       camera topics (``/compressed`` suffix: CompressedImage)
pointcloud_topics   string[]       PointCloud2 topics
camera_model        string         camera model file (``.onnx`` or terraseg checkpoint)
lidar_model         string         LiDAR model file
device              string         ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
backend             string         ``module:function`` factory ``f(model, kind, device=...)``
                                   (default :func:`terraseg.inference.runtime.load_backend`)
namespace           string         prefix of the output topics (default ``/segmentation``)
publish_ids         bool           publish the id images (default true)
publish_rgb         bool           publish the colour images (default true)
publish_points      bool           publish the labelled clouds (default true)
queue_depth         int            subscription depth (best effort, default 1: always the newest)
=================== ============== ====================================================================
"""

from __future__ import annotations

import argparse
import array
import contextlib
import importlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from terraseg.errors import ConfigError, DataError, TerrasegError
from terraseg.inference.runtime.sinks import pack_rgb, topic_name
from terraseg.inference.runtime.types import Prediction, SensorMessage
from terraseg.io.bags.decode import decode_compressed_image, decode_image, decode_pointcloud2
from terraseg.io.bags.writer import image_payload, pointcloud_payload

RCLPY_MISSING = ("rclpy not found: source your ROS 2 installation "
                 "(the bag and folder paths of `terraseg run` do not need it)")
DEFAULT_BACKEND = "terraseg.inference.runtime.backends:load_backend"
"""Factory used when the ``backend`` parameter is empty: ``load_backend(model, kind, device=...)``."""
DEFAULT_NAMESPACE = "/segmentation"
NODE_NAME = "terraseg_segmentation"


class RclpyNotFoundError(TerrasegError, ImportError):
    """``rclpy`` (a sourced ROS 2 installation) is needed and not importable."""


@runtime_checkable
class PredictorLike(Protocol):
    """A runtime backend: an object with ``predict(SensorMessage) -> Prediction``."""

    def predict(self, message: SensorMessage) -> Prediction: ...


PredictFn = Callable[[SensorMessage], Prediction]
"""A plain function ``SensorMessage -> Prediction``; :func:`as_predict_fn` accepts either form."""


def as_predict_fn(backend: PredictorLike | PredictFn) -> PredictFn:
    """The ``predict`` method of a backend object, or the backend itself when it is a function."""
    predict = getattr(backend, "predict", None)
    if callable(predict):
        return predict  # type: ignore[no-any-return]
    if callable(backend):
        return backend
    raise ConfigError(f"backend {backend!r} has no predict(SensorMessage) method and is not callable")


def require_rclpy() -> ModuleType:
    """Import ``rclpy``, or raise :class:`RclpyNotFoundError` with :data:`RCLPY_MISSING`."""
    try:
        import rclpy
    except ImportError:
        raise RclpyNotFoundError(RCLPY_MISSING) from None
    return rclpy


# --------------------------------------------------------------------------- pure conversions
def output_topic(kind: str, topic: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """``("ids", "/cam/image")`` -> ``/segmentation/ids/cam/image`` (kind: ids, rgb or points).

    The input topic is made a valid relative name as the runtime's bag sink does
    (:func:`terraseg.inference.runtime.sinks.topic_name`), so live and recorded outputs match.
    """
    return f"{namespace.rstrip('/')}/{kind}/{topic_name(topic)}"


def stamp_fields(stamp_ns: int) -> dict[str, int]:
    """``builtin_interfaces/Time`` fields ``{"sec", "nanosec"}`` of a time in nanoseconds."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return {"sec": int(sec), "nanosec": int(nanosec)}


def msg_stamp_ns(msg: Any) -> int:
    """Header stamp of a message in nanoseconds (0 without header)."""
    header = getattr(msg, "header", None)
    if header is None:
        return 0
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


class _View:
    """A read-only view of a message whose ``data`` is exposed as a uint8 numpy array (no copy)."""

    def __init__(self, msg: Any) -> None:
        self._msg = msg
        self.data = np.frombuffer(msg.data, dtype=np.uint8)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._msg, name)


def is_compressed(msg: Any) -> bool:
    """True for ``sensor_msgs/CompressedImage`` (a ``format`` field, no ``encoding``)."""
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


def image_from_msg(msg: Any, where: str = "image") -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` or ``CompressedImage`` (rclpy, rosbags or look-alike).

    ``data`` may be ``bytes``, ``array.array('B')`` (rclpy), a list or a numpy array; it is read
    without a copy when it supports the buffer protocol. Returns (H, W, 3) uint8 RGB for colour
    encodings, (H, W) for mono ones (see :func:`terraseg.io.bags.decode_image`).
    """
    if is_compressed(msg):
        return decode_compressed_image(msg, where)
    return decode_image(_zero_copy(msg), where)


def _zero_copy(msg: Any) -> Any:
    """``msg`` itself, or a :class:`_View` when its ``data`` is a buffer (bytes, ``array('B')``) to wrap."""
    data = msg.data
    if isinstance(data, np.ndarray):
        return msg
    try:
        memoryview(data)
    except TypeError:
        return msg  # a list: the decoders copy it
    return _View(msg)


def points_from_msg(msg: Any, where: str = "point cloud") -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode a ``sensor_msgs/PointCloud2``: (N, C) float32 with x, y, z first, and the column names.

    Points whose x, y or z is not finite are dropped (see :func:`terraseg.io.bags.decode_pointcloud2`).
    """
    pc = decode_pointcloud2(_zero_copy(msg), where)
    return pc.points, pc.names


def _rgb_image(arr: np.ndarray, where: str) -> np.ndarray:
    """Mono images (grey cameras) become (H, W, 3) uint8 RGB; colour images pass through."""
    if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        return arr
    if arr.ndim == 2 and arr.dtype == np.uint8:
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 2 and arr.dtype == np.uint16:
        return np.repeat((arr >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    raise DataError(f"{where}: cannot segment an image of shape {arr.shape} and dtype {arr.dtype} "
                    "(expected colour or mono8/mono16)")


def sensor_message_from_image(msg: Any, topic: str, seq: int, *, received_ns: int | None = None) -> SensorMessage:
    """A camera :class:`SensorMessage` from a ``sensor_msgs/Image`` / ``CompressedImage``.

    ``stamp_ns`` is the header stamp, ``frame_id`` the zero-padded ``seq``; the header's frame id
    is kept in ``meta["header_frame_id"]`` (as the runtime's bag source does).
    """
    received = time.perf_counter_ns() if received_ns is None else received_ns
    where = f"{topic} message {seq}"
    image = _rgb_image(image_from_msg(msg, where), where)
    header = getattr(msg, "header", None)
    return SensorMessage(stream="camera", topic=topic, seq=seq, stamp_ns=msg_stamp_ns(msg), frame_id=f"{seq:06d}",
                         image=image, received_ns=received,
                         meta={"header_frame_id": str(getattr(header, "frame_id", ""))})


def sensor_message_from_pointcloud2(msg: Any, topic: str, seq: int, *,
                                    received_ns: int | None = None) -> SensorMessage:
    """A LiDAR :class:`SensorMessage` from a ``sensor_msgs/PointCloud2`` (invalid points dropped)."""
    received = time.perf_counter_ns() if received_ns is None else received_ns
    points, names = points_from_msg(msg, f"{topic} message {seq}")
    header = getattr(msg, "header", None)
    return SensorMessage(stream="lidar", topic=topic, seq=seq, stamp_ns=msg_stamp_ns(msg), frame_id=f"{seq:06d}",
                         points=points, point_fields=names, received_ns=received,
                         meta={"header_frame_id": str(getattr(header, "frame_id", ""))})


def _ids(labels: np.ndarray, where: str, ndim: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != ndim or arr.dtype.kind not in "iu":
        shape = "(H, W)" if ndim == 2 else "(N,)"
        raise DataError(f"{where}: labels must be {shape} integer class ids, got {arr.shape} {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 65535):
        raise DataError(f"{where}: labels hold ids outside 0..65535 ({int(arr.min())}..{int(arr.max())})")
    return arr


def ids_image_fields(labels: np.ndarray, ontology: Any = None, where: str = "labels") -> dict[str, Any]:
    """``sensor_msgs/Image`` fields (no header) of an (H, W) id mask: ``mono8`` or ``mono16``.

    The encoding is fixed by the ontology (``mono16`` when it has ids above 255), so it does not
    change from frame to frame; without an ontology it follows the largest id of ``labels``.
    ``data`` is a flat uint8 numpy array; see :func:`to_ros_bytes` for rclpy.
    """
    arr = _ids(labels, where, 2)
    if ontology is not None:
        from terraseg.ontology import get_ontology

        wide = get_ontology(ontology).max_id > 255
    else:
        wide = arr.size > 0 and int(arr.max()) > 255
    if not wide and arr.size and int(arr.max()) > 255:
        raise DataError(f"{where}: id {int(arr.max())} is not a class of the ontology (max id 255)")
    if wide:
        return image_payload(arr.astype(np.uint16, copy=False), "mono16")
    return image_payload(arr.astype(np.uint8, copy=False), "mono8")


def _palette(ontology: Any) -> np.ndarray:
    from terraseg.ontology import get_ontology

    return get_ontology(ontology).palette


def colour_image_fields(labels: np.ndarray, ontology: Any, where: str = "labels") -> dict[str, Any]:
    """``sensor_msgs/Image`` ``rgb8`` fields of an (H, W) id mask in the ontology's colours.

    Ids without a class are drawn black.
    """
    arr = _ids(labels, where, 2)
    pal = _palette(ontology)
    rgb = pal[np.minimum(arr, len(pal) - 1)]
    rgb[arr >= len(pal)] = 0
    return image_payload(np.ascontiguousarray(rgb), "rgb8")


def labelled_cloud_fields(points: np.ndarray, names: Sequence[str], labels: np.ndarray, ontology: Any = None,
                          where: str = "labels") -> dict[str, Any]:
    """``sensor_msgs/PointCloud2`` fields (no header) of a labelled cloud.

    Args:
        points: (N, C) float32 with x, y, z first; ``names`` names the columns. x, y, z and
            ``intensity`` (when present) are kept.
        labels: (N,) class ids, stored as a ``label`` UINT32 field.
        ontology: when given, a ``rgb`` FLOAT32 field packs each point's class colour.

    Returns:
        ``{"fields": [{"name", "offset", "datatype", "count"}, ...], "height", "width",
        "is_bigendian", "point_step", "row_step", "data" (flat uint8), "is_dense"}``.
    """
    pts = np.asarray(points)
    names = tuple(names)
    if pts.ndim != 2 or pts.shape[1] != len(names) or names[:3] != ("x", "y", "z"):
        raise DataError(f"{where}: points must be (N, {len(names)}) with x, y, z first, got {pts.shape} {names}")
    lab = _ids(labels, where, 1)
    if len(lab) != len(pts):
        raise DataError(f"{where}: {len(lab)} labels for {len(pts)} points")
    keep = [0, 1, 2] + ([names.index("intensity")] if "intensity" in names else [])
    extra: dict[str, np.ndarray] = {"label": lab.astype(np.uint32)}
    if ontology is not None:
        pal = _palette(ontology)
        rgb = pal[np.minimum(lab, len(pal) - 1)]
        rgb[lab >= len(pal)] = 0
        extra["rgb"] = pack_rgb(rgb)
    fields, payload = pointcloud_payload(pts[:, keep].astype(np.float32, copy=False), [names[i] for i in keep],
                                         extra=extra)
    payload["fields"] = [{"name": n, "offset": o, "datatype": d, "count": c} for n, o, d, c in fields]
    return payload


def to_ros_bytes(data: np.ndarray) -> array.array[int]:
    """A flat uint8 array as ``array.array('B')``, the fast path of rclpy's ``uint8[]`` setters."""
    return array.array("B", np.ascontiguousarray(data, dtype=np.uint8).tobytes())


@dataclass
class Output:
    """One message to publish: its topic, kind (``"image"`` or ``"pointcloud"``), fields and header."""

    topic: str
    kind: str
    fields: dict[str, Any]
    header: Any


Backends = PredictorLike | PredictFn | Mapping[str, PredictorLike | PredictFn]
"""One backend for every stream, or one per stream kind: ``{"camera": ..., "lidar": ...}``."""


class SegmentationRelay:
    """The node's logic without ROS: message in, prediction, output field dicts out.

    Args:
        predict: the backend(s): ``predict(SensorMessage) -> Prediction`` functions or objects with
            ``predict``; one for every stream or a mapping ``{"camera": ..., "lidar": ...}``.
        namespace: prefix of the output topics.
        publish: which outputs to produce, among ``"ids"``, ``"rgb"``, ``"points"``.
    """

    def __init__(self, predict: Backends, namespace: str = DEFAULT_NAMESPACE,
                 publish: Sequence[str] = ("ids", "rgb", "points")) -> None:
        unknown = sorted(set(publish) - {"ids", "rgb", "points"})
        if unknown:
            raise ConfigError(f"unknown outputs {unknown} (known: ids, rgb, points)")
        if isinstance(predict, Mapping):
            bad = sorted(set(predict) - {"camera", "lidar"})
            if bad:
                raise ConfigError(f"backends for unknown streams {bad} (known: camera, lidar)")
            self.backends: dict[str, PredictFn] = {k: as_predict_fn(v) for k, v in predict.items()}
        else:
            fn = as_predict_fn(predict)
            self.backends = {"camera": fn, "lidar": fn}
        self.namespace = namespace
        self.publish = frozenset(publish)
        self.seq: dict[str, int] = {}
        self.last_timings_ms: dict[str, float] = {}

    def _next_seq(self, topic: str) -> int:
        seq = self.seq.get(topic, 0)
        self.seq[topic] = seq + 1
        return seq

    def _predict(self, message: SensorMessage) -> Prediction:
        fn = self.backends.get(message.stream)
        if fn is None:
            raise ConfigError(f"{message.topic}: no {message.stream} model")
        start = time.perf_counter_ns()
        pred = fn(message)
        timings = dict(pred.timings_ms)
        timings.setdefault("total", (time.perf_counter_ns() - message.received_ns) / 1e6)
        timings.setdefault("infer", (time.perf_counter_ns() - start) / 1e6)
        self.last_timings_ms = timings
        return pred

    def _segment(self, msg: Any, topic: str, convert: Callable[..., SensorMessage]
                 ) -> tuple[SensorMessage, Prediction, str]:
        """Convert one ROS message (``convert(msg, topic, seq, received_ns=...)``) and predict it;
        returns (message, prediction, ``"<topic> message <seq>"`` for errors)."""
        received = time.perf_counter_ns()
        seq = self._next_seq(topic)
        message = convert(msg, topic, seq, received_ns=received)
        return message, self._predict(message), f"{topic} message {seq}"

    def on_image(self, msg: Any, topic: str) -> list[Output]:
        """Segment one ``Image`` / ``CompressedImage``; return the id and colour images to publish."""
        message, pred, where = self._segment(msg, topic, sensor_message_from_image)
        labels = _ids(pred.labels, where, 2)
        if labels.shape != message.image.shape[:2]:  # type: ignore[union-attr]
            raise DataError(f"{where}: prediction is {labels.shape[1]}x{labels.shape[0]}, the image "
                            f"{message.image.shape[1]}x{message.image.shape[0]}")  # type: ignore[union-attr]
        header = getattr(msg, "header", None)
        onto = pred.resolve_ontology()
        out = []
        if "ids" in self.publish:
            out.append(Output(output_topic("ids", topic, self.namespace), "image",
                              ids_image_fields(labels, onto, where), header))
        if "rgb" in self.publish:
            out.append(Output(output_topic("rgb", topic, self.namespace), "image",
                              colour_image_fields(labels, onto, where), header))
        return out

    def on_pointcloud(self, msg: Any, topic: str) -> list[Output]:
        """Segment one ``PointCloud2``; return the labelled cloud to publish."""
        message, pred, where = self._segment(msg, topic, sensor_message_from_pointcloud2)
        if "points" not in self.publish:
            return []
        fields = labelled_cloud_fields(message.points, message.point_fields, pred.labels,  # type: ignore[arg-type]
                                       pred.resolve_ontology(), where)
        return [Output(output_topic("points", topic, self.namespace), "pointcloud", fields,
                       getattr(msg, "header", None))]


def load_predictor(spec: str, model: str, device: str = "auto", kind: str | None = None) -> PredictFn:
    """Build a backend with the factory ``"module:function"`` (default :data:`DEFAULT_BACKEND`).

    The factory is called as ``function(model, kind, device=device)`` (``kind``: ``"camera"`` or
    ``"lidar"``, left out when None) and must return an object with ``predict(SensorMessage)``
    or such a function.
    """
    module_name, _, attr = (spec or DEFAULT_BACKEND).partition(":")
    if not module_name or not attr:
        raise ConfigError(f"backend {spec!r} must be 'module:function'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load the backend factory {spec or DEFAULT_BACKEND!r}: {exc}") from None
    if not model:
        raise ConfigError(f"no {kind + ' ' if kind else ''}model file given")
    backend = factory(model, device=device) if kind is None else factory(model, kind, device=device)
    return as_predict_fn(backend)


# --------------------------------------------------------------------------- rclpy node
def _fill(msg: Any, fields: dict[str, Any], header: Any) -> Any:
    """Set the fields of an rclpy message from a field dict (``data`` as ``array('B')``)."""
    for name, value in fields.items():
        if name == "fields":
            continue
        setattr(msg, name, to_ros_bytes(value) if name == "data" else value)
    if header is not None:
        msg.header = header
    return msg


def _make_node(opts: argparse.Namespace, predictor: Backends | None) -> Any:
    """The rclpy node: declares the parameters, loads the backend, subscriptions -> relay -> publishers."""
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage, Image, PointCloud2, PointField

    class TerrasegSegmentationNode(Node):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(NODE_NAME)
            image_topics = [t for t in self._param("image_topics", opts.image_topic or [""]) if t]
            cloud_topics = [t for t in self._param("pointcloud_topics", opts.pointcloud_topic or [""]) if t]
            camera_model = self._param("camera_model", opts.camera_model)
            lidar_model = self._param("lidar_model", opts.lidar_model)
            device = self._param("device", opts.device)
            backend = self._param("backend", opts.backend)
            namespace = self._param("namespace", opts.namespace)
            publish = [k for k in ("ids", "rgb", "points") if self._param(f"publish_{k}", True)]
            depth = max(int(self._param("queue_depth", opts.queue_depth)), 1)
            if not image_topics and not cloud_topics:
                raise ConfigError("no input topics: set image_topics and/or pointcloud_topics "
                                  "(or --image-topic / --pointcloud-topic)")
            backends: Backends
            if predictor is not None:
                backends = predictor
            else:
                if image_topics and not camera_model:
                    raise ConfigError("image topics need a camera model: set camera_model (or --camera-model)")
                if cloud_topics and not lidar_model:
                    raise ConfigError("point cloud topics need a LiDAR model: set lidar_model (or --lidar-model)")
                loaded: dict[str, PredictFn] = {}
                if image_topics:
                    loaded["camera"] = load_predictor(backend, camera_model, device, "camera")
                if cloud_topics:
                    loaded["lidar"] = load_predictor(backend, lidar_model, device, "lidar")
                backends = loaded
            self.relay = relay = SegmentationRelay(backends, namespace=namespace, publish=publish)
            sub_qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.BEST_EFFORT)
            pub_qos = QoSProfile(depth=max(depth, 5))
            self._pubs: dict[str, Any] = {}
            for topic in image_topics:
                msg_type = CompressedImage if topic.rstrip("/").endswith("/compressed") else Image
                self.create_subscription(msg_type, topic, lambda m, t=topic: self._on(m, t, relay.on_image), sub_qos)
                for kind in ("ids", "rgb"):
                    if kind in relay.publish:
                        name = output_topic(kind, topic, relay.namespace)
                        self._pubs[name] = self.create_publisher(Image, name, pub_qos)
            for topic in cloud_topics:
                self.create_subscription(PointCloud2, topic, lambda m, t=topic: self._on(m, t, relay.on_pointcloud),
                                         sub_qos)
                if "points" in relay.publish:
                    name = output_topic("points", topic, relay.namespace)
                    self._pubs[name] = self.create_publisher(PointCloud2, name, pub_qos)
            self.get_logger().info(f"segmenting {', '.join([*image_topics, *cloud_topics])}; "
                                   f"publishing {', '.join(self._pubs) or 'nothing'}")

        def _param(self, name: str, default: Any) -> Any:
            return self.declare_parameter(name, default).value

        def _on(self, msg: Any, topic: str, handle: Callable[[Any, str], list[Output]]) -> None:
            try:
                outputs = handle(msg, topic)
            except TerrasegError as exc:
                self.get_logger().error(str(exc), throttle_duration_sec=5.0)
                return
            for out in outputs:
                if out.kind == "image":
                    ros_msg = _fill(Image(), out.fields, out.header)
                else:
                    ros_msg = _fill(PointCloud2(), out.fields, out.header)
                    ros_msg.fields = [PointField(name=f["name"], offset=f["offset"], datatype=f["datatype"],
                                                 count=f["count"]) for f in out.fields["fields"]]
                self._pubs[out.topic].publish(ros_msg)
            timings = " ".join(f"{k}={v:.1f}ms" for k, v in self.relay.last_timings_ms.items())
            self.get_logger().debug(f"{topic}: {timings}")

    return TerrasegSegmentationNode()


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="terraseg-ros", description="terraseg ROS 2 segmentation node. Options give "
                                "the defaults of the ROS parameters (override with --ros-args -p name:=value).")
    p.add_argument("--camera-model", default="", help="camera model (.onnx or terraseg checkpoint)")
    p.add_argument("--lidar-model", default="", help="LiDAR model (.onnx or terraseg checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--backend", default="", help=f"'module:function' factory (default {DEFAULT_BACKEND})")
    p.add_argument("--image-topic", action="append", default=[], help="camera topic (repeatable)")
    p.add_argument("--pointcloud-topic", action="append", default=[], help="PointCloud2 topic (repeatable)")
    p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="prefix of the output topics")
    p.add_argument("--queue-depth", type=int, default=1, help="subscription depth (best effort)")
    return p


def main(argv: Sequence[str] | None = None, predictor: Backends | None = None) -> int:
    """Run the node until Ctrl-C; returns the exit code (1 with a one-line error for user errors).

    Args:
        argv: command line (``sys.argv[1:]`` by default), ROS arguments (``--ros-args ...``) included.
        predictor: backend(s) to use instead of loading ``camera_model`` / ``lidar_model``: one
            for every stream or ``{"camera": ..., "lidar": ...}``.
    """
    args_in = list(sys.argv[1:] if argv is None else argv)
    try:
        rclpy = require_rclpy()
    except RclpyNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from rclpy.utilities import remove_ros_args

    opts = build_arg_parser().parse_args(remove_ros_args(["terraseg-ros", *args_in])[1:])
    rclpy.init(args=["terraseg-ros", *args_in])
    node = None
    try:
        node = _make_node(opts, predictor)
        rclpy.spin(node)
    except TerrasegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # rclpy's ExternalShutdownException (Ctrl-C while spinning, Jazzy and later)
        if type(exc).__name__ != "ExternalShutdownException":
            raise
    finally:
        if node is not None:
            node.destroy_node()
        with contextlib.suppress(Exception):
            if rclpy.ok():
                rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
