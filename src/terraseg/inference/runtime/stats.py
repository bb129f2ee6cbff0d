"""Run statistics of the real-time runtime: per-stream latency, stage times, throughput and drops.

Memory stays bounded however long a run lasts: durations go into :class:`LatencyHistogram`
(fixed log-spaced bins, 1 % wide, plus exact count / sum / min / max), and the live frame rate
uses the last :data:`RECENT` output times only.

Definitions (all durations in milliseconds, times from ``time.perf_counter_ns``):

- ``frames_in``: messages the reader handed to the pipeline; every one ends up ``predicted``
  (the sinks received it) or ``dropped`` with a reason, so ``frames_in == predicted + dropped``
  when the run has ended.
- ``skipped``: messages left out as bad data with ``--skip-errors`` (``errors="skip"``):
  ``skipped_by_stage["read"]`` could not be read or decoded (they never entered the pipeline,
  so they are not in ``frames_in``), ``skipped_by_stage["inference"]`` were rejected by the
  model (they are also in ``dropped``, reason ``error``). Skipped messages of topics that are
  not streams (a ground-truth or camera-info topic) are counted in ``skipped_other_topics``.
- stage times (``timings_ms`` of each :class:`~terraseg.inference.runtime.types.Prediction`):
  ``read`` (reading / decoding the message), ``queue`` (waiting for the inference worker),
  ``preprocess``, ``infer``, ``postprocess``, ``write`` (every sink) and ``total``
  (``read`` + reader output -> sinks done, i.e. the end-to-end latency of the frame).
- ``latency_ms``: the distribution of ``total``: p50, p95 (nearest rank, within 1 %), exact
  max, min and mean.
- ``throughput_fps``: predicted frames per second of wall time from the stream's first input
  to its last output; ``input_rate_hz``: the rate at which the reader produced the stream's
  messages; ``live_fps`` (live table only): the rate over the last :data:`RECENT` outputs.

:class:`RunStats` is shared by the runtime's threads (one lock); :meth:`RunStats.to_dict` gives
the JSON document :meth:`RunStats.write_json` writes atomically, :meth:`RunStats.table` a rich
table and :class:`LiveTable` refreshes that table in the terminal while a run goes on.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from terraseg.inference.runtime.types import Prediction, SensorMessage, StreamKind
from terraseg.io.atomic import atomic_write_text

STAGES: tuple[str, ...] = ("read", "queue", "preprocess", "infer", "postprocess", "write", "total")
"""Stage names in pipeline order (``total`` last); see the module docstring."""

RECENT = 64
"""Output times kept per stream for the live frame rate."""

STATS_FORMAT = "terraseg-runtime-stats"
STATS_VERSION = 1


# ---------------------------------------------------------------------------------------------- histogram
class LatencyHistogram:
    """Bounded-memory summary of durations in milliseconds.

    Values go into log-spaced bins ``[LOW * RATIO**(i-1), LOW * RATIO**i)`` (bin 0 holds values
    below ``LOW``; the last bin everything above ``HIGH``), so percentiles are exact to within
    one bin, 1 % of the value, with about 2,300 int64 counters (18 KiB) whatever the number of
    samples. Count, sum, min and max are exact.
    """

    LOW = 1e-3
    """Smallest resolved duration (ms): 1 microsecond."""
    HIGH = 1e7
    """Largest resolved duration (ms): about 2.8 hours."""
    RATIO = 1.01

    _LOG_RATIO = math.log(RATIO)
    _NBINS = int(math.ceil(math.log(HIGH / LOW) / math.log(RATIO))) + 2

    __slots__ = ("_bins", "count", "total", "min", "max")

    def __init__(self) -> None:
        self._bins = np.zeros(self._NBINS, dtype=np.int64)
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value_ms: float) -> None:
        """Record one duration (ms); negative or non-finite values are rejected with ValueError."""
        v = float(value_ms)
        if not (math.isfinite(v) and v >= 0.0):
            raise ValueError(f"a duration must be a finite number >= 0 ms, got {value_ms!r}")
        if v < self.LOW:
            i = 0
        else:
            i = min(int(math.log(v / self.LOW) / self._LOG_RATIO) + 1, self._NBINS - 1)
        self._bins[i] += 1
        self.count += 1
        self.total += v
        self.min = min(self.min, v)
        self.max = max(self.max, v)

    def _upper_edge(self, i: int) -> float:
        return self.LOW * self.RATIO ** i

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100, nearest rank) in ms, within 1 %; NaN when empty."""
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {q}")
        if self.count == 0:
            return math.nan
        rank = max(1, math.ceil(q / 100.0 * self.count))
        i = int(np.searchsorted(np.cumsum(self._bins), rank))
        return float(min(max(self._upper_edge(i), self.min), self.max))

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def summary(self) -> dict[str, float | int | None]:
        """``{"count", "mean", "min", "p50", "p95", "max"}`` (ms; None when there are no samples)."""
        if self.count == 0:
            return {"count": 0, "mean": None, "min": None, "p50": None, "p95": None, "max": None}
        return {"count": self.count, "mean": _round(self.mean), "min": _round(self.min),
                "p50": _round(self.percentile(50)), "p95": _round(self.percentile(95)), "max": _round(self.max)}


def _round(v: float) -> float:
    return float(f"{v:.4g}") if math.isfinite(v) else v


# ---------------------------------------------------------------------------------------------- per stream
@dataclass
class StreamStats:
    """Counters and timings of one input stream (one topic).

    Attributes:
        topic: the input topic (stream key).
        kind: ``camera`` or ``lidar``.
        backend: description of the backend that runs it.
        frames_in, predicted: message counts.
        dropped: reason -> count of dropped messages.
        skipped: stage (``read`` / ``inference``) -> messages skipped as bad data.
        stages: stage name -> :class:`LatencyHistogram` (ms).
        queue_capacity, queue_high_water: the stream's inference queue: its size and the most
            messages it ever held.
    """

    topic: str
    kind: StreamKind
    backend: str = ""
    frames_in: int = 0
    predicted: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    stages: dict[str, LatencyHistogram] = field(default_factory=dict)
    queue_capacity: int = 0
    queue_high_water: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    first_in_ns: int | None = None
    last_in_ns: int | None = None
    last_out_ns: int | None = None
    recent_out_ns: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT))

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def pending(self) -> int:
        """Messages read but neither predicted nor dropped yet (in queues or being processed)."""
        return self.frames_in - self.predicted - self.dropped_total

    def throughput_fps(self) -> float | None:
        """Predicted frames per second from the first input to the last output (None before two events)."""
        if not self.predicted or self.first_in_ns is None or self.last_out_ns is None:
            return None
        dt = (self.last_out_ns - self.first_in_ns) / 1e9
        return self.predicted / dt if dt > 0 else None

    def input_rate_hz(self) -> float | None:
        """Rate at which the reader produced this stream's messages (None before two inputs)."""
        if self.frames_in < 2 or self.first_in_ns is None or self.last_in_ns is None:
            return None
        dt = (self.last_in_ns - self.first_in_ns) / 1e9
        return (self.frames_in - 1) / dt if dt > 0 else None

    def live_fps(self) -> float | None:
        """Output rate over the last :data:`RECENT` predictions (None before two)."""
        if len(self.recent_out_ns) < 2:
            return None
        dt = (self.recent_out_ns[-1] - self.recent_out_ns[0]) / 1e9
        return (len(self.recent_out_ns) - 1) / dt if dt > 0 else None

    def stage(self, name: str) -> LatencyHistogram:
        h = self.stages.get(name)
        if h is None:
            h = self.stages[name] = LatencyHistogram()
        return h

    def to_dict(self) -> dict[str, Any]:
        total = self.stages.get("total", LatencyHistogram()).summary()
        order = [s for s in STAGES if s in self.stages] + sorted(set(self.stages) - set(STAGES))
        fps, rate = self.throughput_fps(), self.input_rate_hz()
        return {
            "topic": self.topic,
            "stream": self.kind,
            "backend": self.backend,
            "frames_in": self.frames_in,
            "predicted": self.predicted,
            "dropped": self.dropped_total,
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "skipped": self.skipped_total,
            "skipped_by_stage": dict(sorted(self.skipped.items())),
            "pending": self.pending,
            "latency_ms": {k: total[k] for k in ("p50", "p95", "max", "mean", "min")},
            "stages_ms": {s: self.stages[s].summary() for s in order},
            "throughput_fps": None if fps is None else _round(fps),
            "input_rate_hz": None if rate is None else _round(rate),
            "queue": {"capacity": self.queue_capacity, "high_water": self.queue_high_water},
        }


# ---------------------------------------------------------------------------------------------- run
class RunStats:
    """Statistics of one runtime run, updated by the runtime's threads (thread-safe).

    Attributes:
        streams: topic -> :class:`StreamStats`.
        settings: the run's configuration (source, policy, queue sizes ...), copied to the JSON.
        queues: queue name -> ``{"capacity", "high_water"}`` of every queue of the pipeline.
        status: ``running``, then ``completed`` (the source ended), ``stopped`` (:meth:`stop` or a
            duration limit), ``interrupted`` (Ctrl-C) or ``failed``.
        error: the error message of a failed run.
        in_flight_max: the most messages that were read but not yet predicted or dropped at any
            moment (all streams), a bound on the frames the runtime holds in memory.
    """

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self.streams: dict[str, StreamStats] = {}
        self.settings: dict[str, Any] = dict(settings or {})
        self.queues: dict[str, dict[str, int]] = {}
        self.status = "running"
        self.error: str | None = None
        self.started_at = datetime.now(timezone.utc)
        self._t0 = time.perf_counter()
        self.wall_s = 0.0
        self.in_flight = 0
        self.in_flight_max = 0
        self.skipped_other: dict[str, int] = {}

    # ------------------------------------------------------------------ updates (any thread)
    def add_stream(self, topic: str, kind: StreamKind, backend: str = "", queue_capacity: int = 0) -> StreamStats:
        with self._lock:
            s = self.streams.get(topic)
            if s is None:
                s = self.streams[topic] = StreamStats(topic, kind, backend, queue_capacity=queue_capacity)
            return s

    def _stream(self, message: SensorMessage) -> StreamStats:
        s = self.streams.get(message.topic)
        if s is None:
            s = self.streams[message.topic] = StreamStats(message.topic, message.stream)
        return s

    def on_input(self, message: SensorMessage) -> None:
        """A message entered the pipeline (``received_ns`` set)."""
        with self._lock:
            s = self._stream(message)
            s.frames_in += 1
            t = message.received_ns or time.perf_counter_ns()
            if s.first_in_ns is None:
                s.first_in_ns = t
            s.last_in_ns = t
            self.in_flight += 1
            self.in_flight_max = max(self.in_flight_max, self.in_flight)

    def on_predicted(self, prediction: Prediction, done_ns: int | None = None) -> None:
        """The sinks received ``prediction``; its ``timings_ms`` go into the stage histograms."""
        with self._lock:
            s = self._stream(prediction.message)
            s.predicted += 1
            for name, ms in prediction.timings_ms.items():
                if ms is not None and math.isfinite(ms):
                    s.stage(name).add(max(float(ms), 0.0))
            t = done_ns if done_ns is not None else time.perf_counter_ns()
            s.last_out_ns = t
            s.recent_out_ns.append(t)
            self.in_flight -= 1

    def on_drop(self, message: SensorMessage, reason: str) -> None:
        """``message`` was dropped for ``reason`` (a short word: superseded, queue-full, shutdown ...)."""
        with self._lock:
            s = self._stream(message)
            s.dropped[reason] = s.dropped.get(reason, 0) + 1
            self.in_flight -= 1

    def on_skip(self, topic: str, count: int = 1, stage: str = "read") -> None:
        """``count`` messages of ``topic`` were skipped as bad data at ``stage`` (``read`` or
        ``inference``); topics that are not streams go to :attr:`skipped_other`."""
        with self._lock:
            s = self.streams.get(topic)
            if s is None:
                self.skipped_other[topic] = self.skipped_other.get(topic, 0) + int(count)
            else:
                s.skipped[stage] = s.skipped.get(stage, 0) + int(count)

    def set_queue(self, name: str, capacity: int, high_water: int, topic: str | None = None) -> None:
        """Record a queue's capacity and high-water mark (and the stream's, for its inference queue)."""
        with self._lock:
            self.queues[name] = {"capacity": int(capacity), "high_water": int(high_water)}
            if topic is not None and topic in self.streams:
                self.streams[topic].queue_capacity = int(capacity)
                self.streams[topic].queue_high_water = int(high_water)

    def finish(self, status: str, error: str | None = None) -> None:
        with self._lock:
            self.status = status
            self.error = error
            self.wall_s = time.perf_counter() - self._t0

    # ------------------------------------------------------------------ totals
    @property
    def frames_in(self) -> int:
        return sum(s.frames_in for s in self.streams.values())

    @property
    def predicted(self) -> int:
        return sum(s.predicted for s in self.streams.values())

    @property
    def dropped(self) -> int:
        return sum(s.dropped_total for s in self.streams.values())

    @property
    def skipped(self) -> int:
        """Messages skipped as bad data (``--skip-errors``), streams and other topics."""
        return sum(s.skipped_total for s in self.streams.values()) + sum(self.skipped_other.values())

    @property
    def balanced(self) -> bool:
        """True when every message read was predicted or dropped (holds once a run has ended)."""
        return all(s.pending == 0 for s in self.streams.values())

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict[str, Any]:
        """The JSON document (see the module docstring for the fields)."""
        with self._lock:
            wall = self.wall_s if self.status != "running" else time.perf_counter() - self._t0
            return {
                "format": STATS_FORMAT,
                "version": STATS_VERSION,
                "status": self.status,
                "error": self.error,
                "started_at": self.started_at.isoformat(timespec="seconds"),
                "wall_s": round(wall, 3),
                "settings": self.settings,
                "totals": {"frames_in": self.frames_in, "predicted": self.predicted, "dropped": self.dropped,
                           "skipped": self.skipped, "in_flight_max": self.in_flight_max},
                "streams": {t: s.to_dict() for t, s in self.streams.items()},
                "skipped_other_topics": dict(sorted(self.skipped_other.items())),
                "queues": {k: dict(v) for k, v in self.queues.items()},
            }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"

    def write_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON atomically; returns the path."""
        return atomic_write_text(path, self.to_json())

    def table(self, live: bool = False) -> Any:
        """A rich table: one row per stream (topic): counts (``skip`` when messages were skipped
        as bad data), FPS (``live``: over the last
        :data:`RECENT` outputs, else :meth:`StreamStats.throughput_fps`), latency p50 / p95 / max,
        mean inference time, queue high-water mark / capacity."""
        from rich import box
        from rich.table import Table

        t = Table(title=f"terraseg run: {self.status}" + (f" ({self.error})" if self.error else ""),
                  caption="latency p50 / p95 / max and mean inference time in ms", title_justify="left",
                  caption_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        t.add_column("stream", justify="left", overflow="fold", min_width=16)
        show_skip = any(s.skipped for s in self.streams.values())
        for col in ("in", "pred", "drop", *(("skip",) if show_skip else ()), "FPS", "p50", "p95", "max", "infer",
                    "queue"):
            t.add_column(col, justify="right", no_wrap=True)
        with self._lock:
            for s in self.streams.values():
                tot = s.stages.get("total")
                inf = s.stages.get("infer")
                fps = s.live_fps() if live else s.throughput_fps()
                t.add_row(s.topic, str(s.frames_in), str(s.predicted), str(s.dropped_total),
                          *((str(s.skipped_total),) if show_skip else ()), _fmt(fps),
                          _fmt(tot.percentile(50) if tot else None), _fmt(tot.percentile(95) if tot else None),
                          _fmt(tot.max if tot and tot.count else None), _fmt(inf.mean if inf else None),
                          f"{s.queue_high_water}/{s.queue_capacity}")
        return t


def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.1f}" if v < 1000 else f"{v:.0f}"


class LiveTable:
    """A rich ``Live`` display of :meth:`RunStats.table`, refreshed by :meth:`update` (rate-limited).

    A no-op when ``enabled`` is False. Use as a context manager around a run.
    """

    def __init__(self, stats: RunStats, enabled: bool = True, console: Any = None, period_s: float = 0.5) -> None:
        self.stats = stats
        self.period_s = float(period_s)
        self._last = 0.0
        self._live: Any = None
        if enabled:
            from rich.live import Live

            self._live = Live(stats.table(live=True), console=console, auto_refresh=False, transient=True)

    def __enter__(self) -> LiveTable:
        if self._live is not None:
            self._live.start()
        return self

    def update(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._live is not None and (force or now - self._last >= self.period_s):
            self._live.update(self.stats.table(live=True), refresh=True)
            self._last = now

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._live is not None:
            self._live.stop()
