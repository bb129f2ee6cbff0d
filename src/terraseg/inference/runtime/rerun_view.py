"""Live view of the runtime with `Rerun <https://rerun.io>`_ (``rerun-sdk`` 0.41): a runtime sink.

:class:`RerunSink` receives every :class:`~terraseg.inference.runtime.types.Prediction` and logs:

============================== ===============================================================
entity                         content
============================== ===============================================================
``/``                          ``AnnotationContext`` of the model's ontology (ids, names, colours)
``/camera/<topic>/rgb``        ``Image``: the ego RGB image (H, W, 3) uint8
``/camera/<topic>/pred``       ``SegmentationImage``: predicted class ids, drawn over the image
``/camera/<topic>/gt``         ``SegmentationImage``: ground-truth class ids (when the source has them)
``/world``                     ``ViewCoordinates`` right-handed, z up (static)
``/world/vehicle``             ``Transform3D`` vehicle -> world and axes; ``/world/vehicle/body``: ``Boxes3D``
``/world/trajectory``          ``LineStrips3D``: the vehicle's path (bounded, decimated)
``/world/lidar/<topic>``       ``Transform3D`` LiDAR -> world of each scan (identity without pose)
``/world/lidar/<topic>/pred``  ``Points3D`` in the LiDAR frame with predicted ``class_ids``
``/world/lidar/<topic>/gt``    ``Points3D`` with ground-truth ``class_ids``
``/world/camera/<topic>``      ``Transform3D`` + ``Pinhole`` frustum (camera messages with pose and K)
``/latency/<topic>/<stage>``   ``Scalars``: stage durations in milliseconds (``timings_ms``)
``/stats/dropped/<topic>``     ``Scalars``: number of dropped messages so far
``/log``                       ``TextLog``: dropped messages (level WARN) and warnings
============================== ===============================================================

``<topic>`` is the message topic made into one entity-path part (``/os1/points`` ->
``os1_points``). Two timelines index every row: ``sensor_time`` (the message's ``stamp_ns``, a
timestamp when it looks like Unix time, else a duration from the source's origin) and ``seq``
(``SensorMessage.seq``); Rerun adds ``log_time`` (wall clock).

Outputs (at least one is required): ``save`` writes an ``.rrd`` file atomically (recorded under a
temporary name next to it, ``.<stem>.<pid>-<random>.tmp.rrd``, and renamed on
:meth:`RerunSink.close` with the mode a plain ``open()`` gives, like :mod:`terraseg.io.atomic`'s
files; :meth:`RerunSink.abort` or an exception in a ``with`` block leaves nothing, and the
temporaries of killed runs are removed when the next recording into that folder starts); ``serve`` starts a gRPC server and the web viewer
on 127.0.0.1 only (the ``rerun`` executable of the wheel, ``--bind 127.0.0.1``) and prints the
URL; ``spawn`` opens the native viewer (also bound to 127.0.0.1). No other network connection is
made. The viewer processes honour ``RERUN_ANALYTICS`` (set to ``0`` for them unless already set).

``rerun-sdk`` is imported lazily (it needs Python >= 3.11); a missing installation is a
:class:`~terraseg.errors.ConfigError` with the install command.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Any
from urllib.parse import quote

import numpy as np

from terraseg.errors import ConfigError, DataError, TerrasegError
from terraseg.inference.runtime.types import Prediction, SensorMessage
from terraseg.io.atomic import finalize_mode, make_temporary, remove_stale_temporaries
from terraseg.ontology import Ontology

DEFAULT_GRPC_PORT = 9876
"""Port of the gRPC server the viewers connect to (Rerun's default)."""
DEFAULT_WEB_PORT = 9090
"""Port of the web viewer's HTTP server (Rerun's default)."""
LOCALHOST = "127.0.0.1"
RERUN_REQUIREMENT = "rerun-sdk>=0.41,<0.42"
"""The supported rerun-sdk versions (the logging and blueprint APIs change between minor versions)."""

log = logging.getLogger(__name__)

CHASE_EYE = (-14.0, 0.0, 8.0)
"""Default eye of the 3D views in the vehicle frame (x forward, z up), metres: behind and above."""
CHASE_TARGET = (6.0, 0.0, 0.0)
"""Default look-at point of the 3D views in the vehicle frame, metres: ahead of the vehicle."""

_EPOCH_2000_NS = 946_684_800 * 1_000_000_000
"""Stamps at or after 2000-01-01 are logged as timestamps, earlier ones as durations."""
_CAM_FROM_BODY = np.array([[0.0, -1.0, 0.0, 0.0],
                           [0.0, 0.0, -1.0, 0.0],
                           [1.0, 0.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0]])
"""Maps a body frame (x forward, y left, z up) into a camera frame (x right, y down, z forward)."""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NO_CLASS = np.uint16(65535)
"""Class id logged for negative labels (no class: the viewer leaves those pixels / points uncoloured)."""


def import_rerun() -> ModuleType:
    """Import ``rerun`` (rerun-sdk) or raise a :class:`ConfigError` that says how to install it."""
    try:
        import rerun
        import rerun.blueprint  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"the live view needs {RERUN_REQUIREMENT} (Python >= 3.11): pip install "
                          f"'{RERUN_REQUIREMENT}' or 'terraseg[live]' ({exc})") from None
    return rerun


def entity_part(topic: str) -> str:
    """A topic as one entity-path part: ``/os1/points`` -> ``os1_points`` (``[A-Za-z0-9_-]`` only)."""
    part = re.sub(r"[^A-Za-z0-9_\-]+", "_", topic).strip("_")
    return part or "default"


def _class_ids(labels: np.ndarray, where: str, what: str) -> np.ndarray:
    """Integer labels as uint8 (ids < 256) or uint16 class ids; negative ids become 65535 (no class)."""
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iub":
        raise DataError(f"{where}: {what} must be integer class ids, got dtype {arr.dtype}")
    if arr.size == 0:
        return arr.astype(np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    if hi > 65534:
        raise DataError(f"{where}: {what} hold class id {hi}; Rerun class ids stop at 65534")
    if lo >= 0:
        return arr.astype(np.uint8 if hi < 256 else np.uint16, copy=False)
    return np.where(arr < 0, _NO_CLASS, arr).astype(np.uint16)


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample an (h, w) mask to (H, W) = ``shape`` by nearest neighbour (pixel centres)."""
    h, w = mask.shape
    H, W = shape
    if (h, w) == (H, W):
        return mask
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.intp), w - 1)
    return mask[rows[:, None], cols[None, :]]


def _pose(pose: np.ndarray, where: str) -> np.ndarray:
    """A (4, 4) finite float64 transform, or a DataError naming ``where``."""
    T = np.asarray(pose, dtype=np.float64)
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise DataError(f"{where}: pose must be a finite (4, 4) transform, got shape {T.shape}")
    return T


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return int(s.getsockname()[1])


def _resolve_port(port: int | None, default: int, option: str) -> int:
    """``None`` -> ``default``, ``0`` -> a free port; ConfigError if the port is taken on 127.0.0.1."""
    if port is None:
        port = default
    if port == 0:
        return _free_port()
    if not 0 < int(port) < 65536:
        raise ConfigError(f"{option}={port} is not a TCP port (1..65535, or 0 for a free one)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((LOCALHOST, int(port)))
        except OSError:
            raise ConfigError(f"port {port} on {LOCALHOST} is in use: choose another {option} "
                              "(0 picks a free port)") from None
    return int(port)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((LOCALHOST, port)) == 0


def viewer_executable() -> str:
    """Path of the ``rerun`` viewer / server executable (``RERUN_CLI_PATH``, the wheel's, or PATH)."""
    if os.environ.get("RERUN_CLI_PATH"):
        return os.environ["RERUN_CLI_PATH"]
    try:
        import rerun_cli

        base = Path(rerun_cli.__file__).parent
        for cand in (base / "Rerun.app" / "Contents" / "MacOS" / "Rerun", base / "rerun", base / "rerun.exe"):
            if cand.is_file():
                return str(cand)
    except ImportError:
        pass
    found = shutil.which("rerun")
    if found is None:
        raise ConfigError("the 'rerun' viewer executable was not found (it ships with the rerun-sdk wheel; "
                          "set RERUN_CLI_PATH to use another one)")
    return found


def _stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminate a process this module started (SIGTERM, then SIGKILL after 5 s)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _cleanup(tmp: Path | None, procs: list[subprocess.Popen[bytes]]) -> None:
    """Finaliser of a sink that was neither closed nor aborted: no partial file, no server left."""
    for p in procs:
        with contextlib.suppress(Exception):
            _stop_process(p)
    if tmp is not None:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _tail(out: IO[bytes], lines: int = 2) -> str:
    """``": last | lines"`` of a process's captured output (colour codes removed), or ``""``."""
    out.seek(0)
    text = [_ANSI.sub("", ln).strip() for ln in out.read().decode(errors="replace").splitlines()]
    text = [ln for ln in text if ln][-lines:]
    return ": " + " | ".join(text) if text else ""


def _start_viewer_process(args: list[str], ports: Sequence[int], what: str, timeout_s: float) -> subprocess.Popen[bytes]:
    """Start the ``rerun`` executable (own session) and wait until every port in ``ports`` listens.

    Raises:
        ConfigError: the process exits (e.g. no display for the native viewer) or does not listen
            within ``timeout_s`` seconds; the message ends with its last output lines.
    """
    env = dict(os.environ)
    env.setdefault("RERUN_ANALYTICS", "0")
    out: IO[bytes] = tempfile.TemporaryFile()  # unlinked; kept for the reason of a failed start
    proc = subprocess.Popen([viewer_executable(), *args], stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not all(_port_open(p) for p in ports):
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop_process(proc)
                reason = (f"exited with code {proc.returncode}" if proc.returncode is not None
                          else f"not listening after {timeout_s:g} s")
                raise ConfigError(f"cannot start the Rerun {what} ({reason}){_tail(out)}")
            time.sleep(0.05)
        time.sleep(0.3)  # a native viewer without a display opens its port first, then exits
        if proc.poll() is not None:
            raise ConfigError(f"cannot start the Rerun {what} (exited with code {proc.returncode}){_tail(out)}")
    finally:
        out.close()  # the process keeps its own descriptor
    return proc


class RerunSink:
    """Runtime sink that logs predictions to Rerun: file (``.rrd``), web viewer and / or native viewer.

    Args:
        save: write the recording to this ``.rrd`` file (atomically, on :meth:`close`).
        serve: host a gRPC server and the web viewer on 127.0.0.1 and print the URL.
        spawn: open the native Rerun viewer (reuses one already listening on ``grpc_port``).
        application_id: Rerun application id (blueprints are stored per application).
        ontology: ontology (name or YAML path) of the root annotation context; default: that of
            the first prediction. Labels in another ontology get their own context at their entity.
        web_port: HTTP port of the web viewer (default 9090; 0 picks a free port).
        blueprint: send the default layout (3D view, ego camera with prediction overlay, ground
            truth camera, latency plots); False leaves the layout to the viewer.
        grpc_port: port of the gRPC server (default 9876; 0 picks a free port).
        max_points: log at most this many points per scan (regular stride decimation); None: all.
        max_trajectory_points: bound of the trajectory polyline; when reached, the older half is
            decimated by 2 (so the full path stays visible at decreasing resolution).
        trajectory_step_m: minimum distance in metres between consecutive trajectory points.
        mask_opacity: opacity of the masks drawn over the image (0..1).
        point_radius_ui: LiDAR point radius in UI points.
        vehicle_size: (length, width, height) in metres of the vehicle box.
        vehicle_center: box centre in the sensor frame the vehicle pose comes from (LiDAR on the roof),
            metres. With ``meta["vehicle_pose"]`` (a body frame on the ground under the rear axle,
            as in :mod:`terraseg.sim`) the box stands on the ground, its rear 1 m behind the origin.
        jpeg_quality: compress RGB images to JPEG with this quality (1..100) to save bandwidth; None: raw.
        server_memory_limit: data the gRPC server keeps for late viewers (e.g. ``"1GiB"``, ``"25%"``).
        startup_timeout_s: how long to wait for a viewer / server process to listen.
        flush_timeout_s: how long :meth:`close` waits for data to reach the viewers.

    Thread safety: ``write`` / ``on_drop`` may be called from any thread (they are serialised).
    """

    def __init__(
        self,
        save: str | os.PathLike[str] | None = None,
        serve: bool = False,
        spawn: bool = False,
        application_id: str = "terraseg",
        ontology: str | None = None,
        web_port: int | None = None,
        blueprint: bool = True,
        *,
        grpc_port: int | None = None,
        max_points: int | None = None,
        max_trajectory_points: int = 2000,
        trajectory_step_m: float = 0.05,
        mask_opacity: float = 0.5,
        point_radius_ui: float = 1.5,
        vehicle_size: tuple[float, float, float] = (4.0, 2.0, 1.5),
        vehicle_center: tuple[float, float, float] = (-0.5, 0.0, -1.0),
        jpeg_quality: int | None = None,
        server_memory_limit: str = "1GiB",
        startup_timeout_s: float = 30.0,
        flush_timeout_s: float = 30.0,
    ) -> None:
        if save is None and not serve and not spawn:
            raise ConfigError("the Rerun live view needs an output: save='run.rrd', serve=True or spawn=True")
        if max_points is not None and max_points < 1:
            raise ConfigError(f"max_points must be >= 1, got {max_points}")
        if max_trajectory_points < 4:
            raise ConfigError(f"max_trajectory_points must be >= 4, got {max_trajectory_points}")
        if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self._rr = import_rerun()
        rr = self._rr
        self.path: Path | None = Path(save) if save is not None else None
        if self.path is not None and self.path.suffix != ".rrd":
            raise ConfigError(f"{self.path}: a Rerun recording must have the .rrd suffix")
        self.application_id = application_id
        self.url: str | None = None
        """The web viewer URL (with ``serve``)."""
        self.grpc_url: str | None = None
        """The gRPC proxy URL the viewers read from (with ``serve`` or ``spawn``)."""
        self._blueprint = blueprint
        self._max_points = max_points
        self._max_traj = int(max_trajectory_points)
        self._traj_step = float(trajectory_step_m)
        self._opacity = float(mask_opacity)
        self._radius = float(point_radius_ui)
        self._vehicle_half = np.asarray(vehicle_size, dtype=np.float32) / 2
        self._vehicle_center = np.asarray(vehicle_center, dtype=np.float32)
        self._jpeg = jpeg_quality
        self._flush_timeout = float(flush_timeout_s)
        self._lock = threading.RLock()
        self._closed = False
        self._procs: list[subprocess.Popen[bytes]] = []
        self._tmp: Path | None = None
        # state
        self._root_ontology: str | None = None
        self._contexts: dict[str, str] = {}        # entity path -> ontology logged there
        self._ontologies: dict[str, Ontology | None] = {}  # name -> resolved (None: unknown)
        self._pred_defs: dict[str, Ontology] = {}  # ontology definitions carried by predictions
        self._keys: dict[tuple[str, str], str] = {}  # (stream, topic) -> entity part
        self._cameras: list[tuple[str, str]] = []   # (entity part, topic) in order of appearance
        self._has_gt: set[str] = set()               # entity paths whose gt was logged
        self._series: set[str] = set()
        self._drops: dict[str, int] = {}
        self._time_kind: str | None = None
        self._ego_topic: tuple[str, str] | None = None
        self._body_frame: str | None = None
        self._traj = np.zeros((0, 3), dtype=np.float32)
        self.frames_written = 0
        self.messages_dropped = 0

        self.rec = rr.RecordingStream(application_id, recording_id=uuid.uuid4())
        if not self.rec.is_enabled():
            raise ConfigError("Rerun logging is disabled (environment variable RERUN=off)")
        try:
            sinks: list[Any] = []
            if serve:
                g = _resolve_port(grpc_port, DEFAULT_GRPC_PORT, "grpc_port")
                w = _resolve_port(web_port, DEFAULT_WEB_PORT, "web_port")
                self._procs.append(_start_viewer_process(
                    ["--serve-web", "--bind", LOCALHOST, "--port", str(g), "--web-viewer-port", str(w),
                     "--server-memory-limit", server_memory_limit], [g, w], "web viewer", startup_timeout_s))
                self.grpc_url = f"rerun+http://{LOCALHOST}:{g}/proxy"
                self.url = f"http://{LOCALHOST}:{w}/?url={quote(self.grpc_url, safe='')}"
            if spawn:
                if self.grpc_url is not None:  # the native viewer reads from the server started above
                    _start_viewer_process(["--bind", LOCALHOST, "--port", "0", "--connect", self.grpc_url],
                                          [], "viewer", startup_timeout_s)
                else:
                    g = _free_port() if grpc_port == 0 else DEFAULT_GRPC_PORT if grpc_port is None else int(grpc_port)
                    if not _port_open(g):  # else: a viewer is already listening there; reuse it
                        _start_viewer_process(["--bind", LOCALHOST, "--port", str(g), "--expect-data-soon"],
                                              [g], "viewer", startup_timeout_s)
                    self.grpc_url = f"rerun+http://{LOCALHOST}:{g}/proxy"
            if self.grpc_url is not None:
                sinks.append(rr.GrpcSink(self.grpc_url))
            if self.path is not None:
                remove_stale_temporaries(self.path.parent)  # .rrd files of killed runs
                self._tmp = make_temporary(self.path)
                sinks.append(rr.FileSink(str(self._tmp)))
            self._finalizer = weakref.finalize(self, _cleanup, self._tmp, list(self._procs))
            self.rec.set_sinks(*sinks, default_blueprint=self._make_blueprint() if blueprint else None)
            self._log_static()
            if ontology is not None:
                self._set_root_ontology(ontology)
        except BaseException:
            self._closed = True
            with contextlib.suppress(Exception):
                self.rec.disconnect()
            _cleanup(self._tmp, self._procs)
            raise
        if self.url is not None:
            print(f"Rerun web viewer: {self.url}", file=sys.stderr, flush=True)

    # ----------------------------------------------------------------------------- Sink protocol
    def write(self, prediction: Prediction) -> None:
        """Log one prediction (image + masks, or points) with its pose and stage latencies."""
        with self._lock:
            if self._closed:
                raise RuntimeError("RerunSink.write after close")
            msg = prediction.message
            where = f"{msg.topic} message {msg.seq} (frame {msg.frame_id})"
            key = self._key(msg)
            self._set_time(msg)
            if prediction.ontology_def is not None:
                self._pred_defs.setdefault(prediction.ontology, prediction.ontology_def)
            if self._root_ontology is None:
                self._set_root_ontology(prediction.ontology)
            if msg.stream == "camera":
                self._log_camera(key, prediction, where)
            elif msg.stream == "lidar":
                self._log_lidar(key, prediction, where)
            else:
                raise DataError(f"{where}: unknown stream {msg.stream!r} (expected 'camera' or 'lidar')")
            self._log_latency(key, msg.topic, prediction.timings_ms)
            self.frames_written += 1

    def on_drop(self, message: SensorMessage, reason: str) -> None:
        """Log a dropped message: a WARN entry under ``/log`` and the per-topic counter."""
        with self._lock:
            if self._closed:
                return
            rr = self._rr
            key = self._key(message)
            self._set_time(message)
            count = self._drops.get(key, 0) + 1
            self._drops[key] = count
            self.messages_dropped += 1
            self.rec.log("log", rr.TextLog(f"dropped {message.topic} message {message.seq} "
                                           f"(frame {message.frame_id}): {reason}", level=rr.TextLogLevel.WARN))
            path = f"stats/dropped/{key}"
            if path not in self._series:
                self._series.add(path)
                self.rec.log(path, rr.SeriesLines(names=f"{message.topic} dropped"), static=True)
            self.rec.log(path, rr.Scalars(float(count)))

    def close(self) -> None:
        """Flush, finalise the ``.rrd`` (rename into place) and stop the web viewer server."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                try:
                    self.rec.flush(timeout_sec=self._flush_timeout)
                except Exception as exc:  # a viewer / server that went away must not cost the recording
                    log.warning("Rerun: %s", exc)
                self.rec.disconnect()  # writes the .rrd footer and closes the file
                if self._tmp is not None and self.path is not None:
                    finalize_mode(self._tmp, self.path)  # mkstemp's 0600 -> what a plain open() gives
                    os.replace(self._tmp, self.path)
                    self._tmp = None
            finally:
                self._finalizer.detach()
                _cleanup(self._tmp, self._procs)

    def abort(self) -> None:
        """Stop without output: delete the partial recording and stop the server processes."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(Exception):
                self.rec.disconnect()
            self._finalizer.detach()
            _cleanup(self._tmp, self._procs)
            self._tmp = None

    def __enter__(self) -> RerunSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # ----------------------------------------------------------------------------- helpers
    def _key(self, msg: SensorMessage) -> str:
        """The entity part of a (stream, topic), unique across topics."""
        ident = (msg.stream, msg.topic)
        key = self._keys.get(ident)
        if key is None:
            base = entity_part(msg.topic)
            used = {k for (s, _), k in self._keys.items() if s == msg.stream}
            key, n = base, 2
            while key in used:
                key, n = f"{base}_{n}", n + 1
            self._keys[ident] = key
            if msg.stream == "camera":
                self._cameras.append((key, msg.topic))
                if self._blueprint:
                    self.rec.send_blueprint(self._make_blueprint(), make_active=True, make_default=True)
        return key

    def _set_time(self, msg: SensorMessage) -> None:
        """Set the ``sensor_time`` and ``seq`` timelines of this thread to the message's."""
        ns = int(msg.stamp_ns)
        if self._time_kind is None:
            self._time_kind = "timestamp" if ns >= _EPOCH_2000_NS else "duration"
        if self._time_kind == "timestamp":
            self.rec.set_time("sensor_time", timestamp=np.datetime64(ns, "ns"))
        else:
            self.rec.set_time("sensor_time", duration=np.timedelta64(ns, "ns"))
        self.rec.set_time("seq", sequence=int(msg.seq))

    def _log_static(self) -> None:
        rr = self._rr
        self.rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        self.rec.log("world/vehicle/body", rr.Boxes3D(half_sizes=[self._vehicle_half], colors=[(230, 160, 40)],
                                                      labels=["vehicle"]), static=True)
        self.rec.log("world/vehicle", rr.TransformAxes3D(1.0), static=True)

    def _resolve(self, name: str) -> Ontology | None:
        """The ontology called ``name`` (a prediction's definition, built-in or YAML), None if unknown."""
        if name not in self._ontologies:
            from terraseg.ontology import get_ontology

            onto: Ontology | None = self._pred_defs.get(name)
            if onto is None:
                try:
                    onto = get_ontology(name)
                except TerrasegError as exc:
                    self.rec.log("log", self._rr.TextLog(f"no class names / colours: {exc}",
                                                         level=self._rr.TextLogLevel.WARN))
            self._ontologies[name] = onto
        return self._ontologies[name]

    def _annotation_context(self, name: str) -> Any | None:
        """The ``AnnotationContext`` (ids, names, RGB colours) of an ontology, or None if unknown."""
        onto = self._resolve(name)
        if onto is None:
            return None
        return self._rr.AnnotationContext([(c.id, c.name, c.color) for c in onto.classes])

    def _set_root_ontology(self, name: str) -> None:
        ctx = self._annotation_context(name)
        self._root_ontology = name
        if ctx is not None:
            self.rec.log("/", ctx, static=True)

    def _ensure_context(self, path: str, name: str | None) -> None:
        """Give ``path`` its own annotation context when its labels are not in the root ontology."""
        name = name or self._root_ontology
        if name is None or self._contexts.get(path, self._root_ontology) == name:
            return
        ctx = self._annotation_context(name)
        if ctx is not None:
            self.rec.log(path, ctx, static=True)
            self._contexts[path] = name

    def _log_mask(self, path: str, labels: np.ndarray, shape: tuple[int, int] | None, ontology: str | None,
                  where: str, what: str) -> None:
        arr = np.asarray(labels)
        if arr.ndim != 2:
            raise DataError(f"{where}: {what} must be an (H, W) id mask, got shape {arr.shape}")
        ids = _class_ids(arr, where, what)
        if shape is not None:
            ids = _resize_nearest(ids, shape)
        self._ensure_context(path, ontology)
        self.rec.log(path, self._rr.SegmentationImage(ids, opacity=self._opacity))

    def _clear_gt(self, path: str) -> None:
        """Clear a ground truth logged earlier so a message without one does not show a stale one."""
        if path in self._has_gt:
            self._has_gt.discard(path)
            self.rec.log(path, self._rr.Clear(recursive=False))

    def _log_camera(self, key: str, pred: Prediction, where: str) -> None:
        rr = self._rr
        msg = pred.message
        base = f"camera/{key}"
        shape: tuple[int, int] | None = None
        if msg.image is not None:
            img = np.asarray(msg.image)
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
                raise DataError(f"{where}: image must be (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
            shape = (int(img.shape[0]), int(img.shape[1]))
            image = rr.Image(img, color_model="RGB")
            self.rec.log(f"{base}/rgb", image.compress(jpeg_quality=self._jpeg) if self._jpeg else image)
        self._log_mask(f"{base}/pred", pred.labels, shape, pred.ontology, where, "predicted labels")
        gt_path = f"{base}/gt"
        if msg.gt is not None:
            self._log_mask(gt_path, msg.gt, shape, msg.ontology, where, "ground-truth labels")
            self._has_gt.add(gt_path)
        else:
            self._clear_gt(gt_path)
        if msg.pose is not None:
            T = _pose(msg.pose, where)
            self._log_frustum(key, T, msg, shape)
            self._update_vehicle(msg, T @ (msg.calib.T_cam_lidar if msg.calib is not None
                                           and msg.calib.T_cam_lidar is not None else _CAM_FROM_BODY), where)
        elif "vehicle_pose" in msg.meta:
            self._update_vehicle(msg, None, where)

    def _log_frustum(self, key: str, T: np.ndarray, msg: SensorMessage, shape: tuple[int, int] | None) -> None:
        """Camera pose and pinhole in the 3D view (when the message has intrinsics)."""
        rr = self._rr
        if msg.calib is None or msg.calib.K is None:
            return
        if shape is not None:
            wh = (shape[1], shape[0])
        elif msg.calib.image_size is not None:
            wh = msg.calib.image_size
        else:
            return
        path = f"world/camera/{key}"
        self.rec.log(path, rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]),
                     rr.Pinhole(image_from_camera=msg.calib.K, resolution=list(wh), camera_xyz=rr.ViewCoordinates.RDF,
                                image_plane_distance=1.0))

    def _log_lidar(self, key: str, pred: Prediction, where: str) -> None:
        rr = self._rr
        msg = pred.message
        if msg.points is None:
            raise DataError(f"{where}: LiDAR message has no points")
        pts = np.asarray(msg.points)
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise DataError(f"{where}: points must be (N, C >= 3), got shape {pts.shape}")
        n = len(pts)
        labels = np.asarray(pred.labels)
        if labels.shape != (n,):
            raise DataError(f"{where}: {labels.shape} predicted labels for {n} points (expected ({n},))")
        gt = None if msg.gt is None else np.asarray(msg.gt)
        if gt is not None and gt.shape != (n,):
            raise DataError(f"{where}: {gt.shape} ground-truth labels for {n} points (expected ({n},))")
        stride = 1 if self._max_points is None or n <= self._max_points else math.ceil(n / self._max_points)
        xyz = np.ascontiguousarray(pts[::stride, :3], dtype=np.float32)
        base = f"world/lidar/{key}"
        T = np.eye(4) if msg.pose is None else _pose(msg.pose, where)
        self.rec.log(base, rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]))
        radii = rr.Radius.ui_points(self._radius)
        self._ensure_context(f"{base}/pred", pred.ontology)
        self.rec.log(f"{base}/pred", rr.Points3D(xyz, class_ids=_class_ids(labels[::stride], where, "predicted labels"),
                                                 radii=radii))
        if gt is not None:
            self._ensure_context(f"{base}/gt", msg.ontology)
            self.rec.log(f"{base}/gt", rr.Points3D(xyz, class_ids=_class_ids(gt[::stride], where, "ground-truth labels"),
                                                   radii=radii))
            self._has_gt.add(f"{base}/gt")
        else:
            self._clear_gt(f"{base}/gt")
        if msg.pose is not None or "vehicle_pose" in msg.meta:
            self._update_vehicle(msg, T if msg.pose is not None else None, where)

    def _update_vehicle(self, msg: SensorMessage, T_sensor: np.ndarray | None, where: str) -> None:
        """Move the vehicle and extend the trajectory, from one pose stream only (LiDAR preferred).

        The vehicle pose is ``meta["vehicle_pose"]`` (vehicle body -> world, e.g. from the
        simulator) when the message has one, else ``T_sensor``: the LiDAR pose, or the camera pose
        turned into a body frame (x forward, z up) with ``T_cam_lidar`` or the camera axes.
        """
        rr = self._rr
        ident = (msg.stream, msg.topic)
        if self._ego_topic is None or (self._ego_topic[0] == "camera" and msg.stream == "lidar"):
            self._ego_topic = ident
        if ident != self._ego_topic:
            return
        vehicle = msg.meta.get("vehicle_pose")
        T = _pose(vehicle, f"{where} meta['vehicle_pose']") if vehicle is not None else T_sensor
        if T is None:
            return
        frame = "ground" if vehicle is not None else "sensor"
        if frame != self._body_frame:  # where the body box sits in the frame the vehicle pose refers to
            self._body_frame = frame
            center = self._vehicle_center if frame == "sensor" else np.array(
                [self._vehicle_half[0] - 1.0, 0.0, self._vehicle_half[2]], dtype=np.float32)
            self.rec.log("world/vehicle/body", rr.Transform3D(translation=center), static=True)
        self.rec.log("world/vehicle", rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]))
        p = T[:3, 3].astype(np.float32)
        if len(self._traj) and float(np.linalg.norm(self._traj[-1] - p)) < self._traj_step:
            return
        traj = np.concatenate([self._traj, p[None]], axis=0)
        if len(traj) > self._max_traj:  # decimate the older half, keep the recent half at full resolution
            half = len(traj) // 2
            traj = np.concatenate([traj[:half:2], traj[half:]], axis=0)
        self._traj = traj
        self.rec.log("world/trajectory", rr.LineStrips3D([traj], colors=[(40, 200, 255)],
                                                         radii=rr.Radius.ui_points(2.0)))

    def _log_latency(self, key: str, topic: str, timings_ms: Mapping[str, float]) -> None:
        rr = self._rr
        for stage, ms in timings_ms.items():
            value = float(ms)
            if not math.isfinite(value):
                continue
            path = f"latency/{key}/{entity_part(stage)}"
            if path not in self._series:
                self._series.add(path)
                self.rec.log(path, rr.SeriesLines(names=f"{topic} {stage} (ms)"), static=True)
            self.rec.log(path, rr.Scalars(value))

    def _make_blueprint(self) -> Any:
        """The default layout for the camera topics seen so far."""
        return build_blueprint([topic for _, topic in self._cameras], [key for key, _ in self._cameras])


def build_blueprint(camera_topics: Sequence[str] = (), camera_keys: Sequence[str] | None = None) -> Any:
    """The default Rerun layout: 3D third-person view | ego cameras, ground truth, latency.

    Left: tabs "3D: prediction" and "3D: ground truth" (the world with LiDAR points coloured by
    class, the vehicle, its trajectory and camera frustums), seen in the vehicle's frame from
    :data:`CHASE_EYE` behind and above it, so the camera follows the vehicle (third person).
    Right: one row of ego-camera views with the predicted mask over the image, one row with the
    ground-truth mask, and tabs with the latency plots, the dropped-message counters and the log.

    Args:
        camera_topics: titles of the camera views, one per camera.
        camera_keys: their entity parts (default: :func:`entity_part` of each topic). With no
            camera, one view per row shows everything under ``/camera``.
    """
    rr = import_rerun()
    rrb = rr.blueprint
    keys = list(camera_keys) if camera_keys is not None else [entity_part(t) for t in camera_topics]
    # third person: the view's frame is the vehicle's, the eye sits behind and above it (metres)
    eye = rrb.EyeControls3D(kind=rrb.Eye3DKind.Orbital, position=CHASE_EYE, look_target=CHASE_TARGET,
                            eye_up=(0.0, 0.0, 1.0))
    view_pred = rrb.Spatial3DView(name="3D: prediction", origin="/world/vehicle", eye_controls=eye,
                                  contents=["+ /world/**", "- /world/lidar/**/gt"])
    view_gt = rrb.Spatial3DView(name="3D: ground truth", origin="/world/vehicle", eye_controls=eye,
                                contents=["+ /world/**", "- /world/lidar/**/pred"])
    if keys:
        cams_pred = [rrb.Spatial2DView(name=f"{t}: prediction", origin=f"/camera/{k}",
                                       contents=["+ $origin/rgb", "+ $origin/pred"])
                     for k, t in zip(keys, camera_topics)]
        cams_gt = [rrb.Spatial2DView(name=f"{t}: ground truth", origin=f"/camera/{k}",
                                     contents=["+ $origin/rgb", "+ $origin/gt"])
                   for k, t in zip(keys, camera_topics)]
    else:
        cams_pred = [rrb.Spatial2DView(name="camera: prediction", origin="/camera",
                                       contents=["+ /camera/**/rgb", "+ /camera/**/pred"])]
        cams_gt = [rrb.Spatial2DView(name="camera: ground truth", origin="/camera",
                                     contents=["+ /camera/**/rgb", "+ /camera/**/gt"])]
    plots = rrb.Tabs(rrb.TimeSeriesView(name="latency (ms)", origin="/latency"),
                     rrb.TimeSeriesView(name="dropped messages", origin="/stats/dropped"),
                     rrb.TextLogView(name="log", origin="/log"))
    right = rrb.Vertical(rrb.Horizontal(*cams_pred), rrb.Horizontal(*cams_gt), plots, row_shares=[2, 2, 1.5])
    return rrb.Blueprint(rrb.Horizontal(rrb.Tabs(view_pred, view_gt), right, column_shares=[3, 2]),
                         collapse_panels=False)
