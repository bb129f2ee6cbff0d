"""Data passed between the runtime's stages (source -> inference -> sinks).

A :class:`SensorMessage` is one camera image or one LiDAR scan as read from a source; the
runtime turns it into a :class:`Prediction`. Sinks (bag writer, files, Rerun live view) receive
every :class:`Prediction` in order and every dropped message through ``on_drop``.

Conventions are those of :mod:`terraseg.frame`: images (H, W, 3) uint8 RGB, masks (H, W) class
ids, points (N, C) float32 with x, y, z in metres in the sensor frame, labels (N,) class ids,
``pose`` the 4x4 transform sensor -> world (``p_world = pose @ p_sensor``).

Sinks may also define ``start()`` (called once, on the thread that will call every other method,
before the first message) and ``abort()`` (called instead of ``close()`` when a run fails, so a
sink can discard partial output; see :func:`finish_sink`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from terraseg.frame import Calibration
from terraseg.ontology import Ontology, get_ontology

StreamKind = Literal["camera", "lidar"]


@dataclass
class SensorMessage:
    """One input message of one stream.

    Attributes:
        stream: ``"camera"`` or ``"lidar"``.
        topic: where it came from: the bag topic (``/camera/image``), or a folder / file name.
        seq: 0-based index of the message within its stream (counts dropped messages too).
        stamp_ns: sensor timestamp in nanoseconds (source clock).
        frame_id: a stable name for outputs (file stem), e.g. ``"000012"``.
        image: (H, W, 3) uint8 RGB for camera messages.
        points: (N, C) float32 for LiDAR messages; ``point_fields`` names the columns.
        gt: ground truth when the source has it: (H, W) ids or (N,) ids, in ``ontology``.
        pose: (4, 4) float64 sensor -> world, when known.
        calib: camera intrinsics / extrinsics when known.
        received_ns: ``time.perf_counter_ns()`` when the reader produced the message (latency origin).
    """

    stream: StreamKind
    topic: str
    seq: int
    stamp_ns: int
    frame_id: str
    image: np.ndarray | None = None
    points: np.ndarray | None = None
    point_fields: tuple[str, ...] = ("x", "y", "z", "intensity")
    gt: np.ndarray | None = None
    ontology: str | None = None
    pose: np.ndarray | None = None
    calib: Calibration | None = None
    received_ns: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prediction:
    """The runtime's answer to one :class:`SensorMessage`.

    Attributes:
        message: the input.
        labels: (H, W) uint8/uint16 ids for camera messages, (N,) ids for LiDAR messages, in the
            model's ontology ``ontology``.
        ontology: name of the label space of ``labels`` (the model's).
        timings_ms: stage durations in milliseconds: ``read``, ``preprocess``, ``infer``,
            ``postprocess``, ``write`` (when measured) and ``total`` (reader output -> sinks done).
        scores: optional (H, W) or (N,) float32 confidence of the predicted class.
        ontology_def: the :class:`~terraseg.ontology.Ontology` object named by ``ontology`` when
            the model carries one (needed for ontologies that are not built in); use
            :meth:`resolve_ontology` rather than reading it directly.
    """

    message: SensorMessage
    labels: np.ndarray
    ontology: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    scores: np.ndarray | None = None
    ontology_def: Ontology | None = None

    def resolve_ontology(self) -> Ontology:
        """The label ontology of :attr:`labels` (classes, colours): :attr:`ontology_def`, else the
        built-in ontology named :attr:`ontology`."""
        return self.ontology_def if self.ontology_def is not None else get_ontology(self.ontology)


class Sink(Protocol):
    """Receives predictions in order; ``close`` flushes and finalises outputs (atomically).

    The runtime calls every method from one thread (its writer thread), so sinks need no locks.
    Two optional methods (not part of the protocol, looked up with ``getattr``): ``start()``,
    called before the first message (open files there, on the writer thread), and ``abort()``,
    called instead of ``close()`` when the run fails; it should discard partial outputs.
    """

    def write(self, prediction: Prediction) -> None: ...

    def on_drop(self, message: SensorMessage, reason: str) -> None: ...

    def close(self) -> None: ...


def finish_sink(sink: Sink, ok: bool) -> None:
    """``sink.close()`` when ``ok``; otherwise ``sink.abort()`` when the sink has one, else ``close()``."""
    abort = getattr(sink, "abort", None)
    if not ok and callable(abort):
        abort()
    else:
        sink.close()
