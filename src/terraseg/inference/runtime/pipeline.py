"""The runtime pipeline: reader -> bounded queues -> one inference worker per stream -> writer -> sinks.

::

    reader thread ──► input queue (per topic, ``queue_size``) ──► worker (per topic) ──┐
      source.messages()      drop policy when full                 backend.predict()   │
                                                                                       ▼
                            sinks ◄── writer thread ◄── output queue (``output_queue_size``, blocking)

- **Drop policies** (what the reader does when a stream's input queue is full):
  ``latest`` (default): the oldest queued message is dropped (reason ``superseded``) and the new
  one queued, so the worker always takes the freshest frame; ``oldest``: the incoming message is
  dropped (reason ``queue-full``); ``block``: no drops, the reader waits (back-pressure on the
  source; for offline processing as fast as possible).
- **Accounting**: every message the reader hands over ends up *predicted* (the sinks received
  it) or *dropped* with a reason: ``superseded`` / ``queue-full`` (policy), ``error`` (the
  backend failed on it and ``errors="skip"``), ``shutdown`` (still queued when the run was
  stopped) or ``aborted`` (predicted but not written because the run failed).
  ``RunStats.balanced`` checks ``frames_in == predicted + dropped`` per stream.
- **Bounded memory**: messages live only in the queues (``queue_size`` per stream, the output
  queue), in the workers (one each) and in the reader / writer (one each), whatever the source's
  rate; statistics are fixed-size histograms.
- **Threads**: sinks are only ever called from the writer thread (``start`` where a sink has
  one, ``write``, ``on_drop``, then ``close`` or ``abort`` once every producer has finished), so
  a sink may hold thread-bound
  resources such as an sqlite connection. Two topics of one kind share the kind's backend
  through a lock.
- **Shutdown**: at the end of the source the queues are drained and every sink is closed
  (``close``). :meth:`Pipeline.stop`, a ``duration_s`` limit or Ctrl-C stop the reader, drop
  what is still queued (``shutdown``), let the predictions in flight be written and close the
  sinks, so outputs are valid up to that point (``RunStats.status`` says ``stopped`` /
  ``interrupted``). An error (reading, inference with ``errors="raise"``, a sink) stops
  everything, *aborts* the sinks (``abort()`` where a sink has one: no partial outputs) and is
  raised again from :meth:`Pipeline.run` after the statistics are written.
- **Bad data** (``errors="skip"``, ``terraseg run --skip-errors``): a message the backend
  rejects with a :class:`~terraseg.errors.TerrasegError` is dropped (reason ``error``) with one
  warning line naming it and the problem; the source skips unreadable messages itself when it
  was opened with ``skip_bad``. Both are counted per stream (``skipped`` in the statistics).
- **Warm-up** (``warmup``, the default): before the clock starts, the source reads ahead to the
  first message of every stream (:meth:`~terraseg.inference.runtime.sources.Source.prefetch`)
  and each backend predicts it once, untimed: lazy model set-up (ONNX Runtime's fused session
  for that image size, oneDNN kernels, a range network's organised layout) happens then, not
  while a real-time source is already delivering frames. The real-time schedule starts after
  the warm-up. A stream whose first message could not be read ahead (or that the model
  rejects) is warmed by its worker on its first message instead (that message's latency
  counts from the end of that warm-up). Warm-up times go to ``settings["warmup_ms"]``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from terraseg.errors import ConfigError, DataError, TerrasegError
from terraseg.inference.runtime.backends import Backend
from terraseg.inference.runtime.sources import Source
from terraseg.inference.runtime.stats import LiveTable, RunStats
from terraseg.inference.runtime.types import Prediction, SensorMessage, Sink, StreamKind, finish_sink

log = logging.getLogger(__name__)

DropPolicy = Literal["latest", "oldest", "block"]
DROP_POLICIES: tuple[str, ...] = ("latest", "oldest", "block")
ErrorPolicy = Literal["raise", "skip"]

T = TypeVar("T")

_POLL_S = 0.05


class _Closed:
    """Returned by :meth:`BoundedQueue.get` once the queue is closed and empty."""


CLOSED = _Closed()


class BoundedQueue(Generic[T]):
    """A FIFO of at most ``capacity`` items with a drop policy on :meth:`put`.

    Thread-safe. :attr:`high_water` is the most items it ever held (never above ``capacity``).
    """

    def __init__(self, capacity: int, name: str = "queue") -> None:
        if capacity < 1:
            raise ConfigError(f"{name}: queue capacity must be at least 1, got {capacity}")
        self.capacity = int(capacity)
        self.name = name
        self.high_water = 0
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, item: T, policy: DropPolicy = "block", stop: threading.Event | None = None) -> T | None:
        """Add ``item``; returns the item dropped to make room (or ``item`` itself), else None.

        ``latest``: a full queue drops its oldest item; ``oldest``: a full queue refuses
        ``item``; ``block``: wait for room; when ``stop`` is set while waiting, ``item`` is
        returned (dropped).
        """
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name}: put on a closed queue")
            dropped: T | None = None
            if len(self._items) >= self.capacity:
                if policy == "latest":
                    dropped = self._items.popleft()
                elif policy == "oldest":
                    return item
                else:
                    while len(self._items) >= self.capacity:
                        if stop is not None and stop.is_set():
                            return item
                        self._cond.wait(_POLL_S)
            self._items.append(item)
            self.high_water = max(self.high_water, len(self._items))
            self._cond.notify_all()
            return dropped

    def get(self, timeout: float | None = None) -> T | _Closed | None:
        """The oldest item; :data:`CLOSED` when closed and empty; None after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    return CLOSED
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining if remaining is not None else _POLL_S)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more puts; :meth:`get` returns what is left, then :data:`CLOSED`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def drain(self) -> list[T]:
        """Remove and return every queued item."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items


@dataclass
class _Drop:
    message: SensorMessage
    reason: str


@dataclass
class _Done:
    producer: str


class Pipeline:
    """Run a source through per-stream backends into sinks (see the module docstring).

    Args:
        source: a :class:`~terraseg.inference.runtime.sources.Source`.
        backends: stream kind -> backend; every kind among ``source.topics`` needs one.
        sinks: receivers of the predictions, called in order.
        policy: drop policy ``latest`` (default), ``oldest`` or ``block``.
        queue_size: input queue capacity per stream (default: 1 for ``latest`` / ``oldest``,
            the freshest frame only; 4 for ``block``).
        output_queue_size: capacity of the queue in front of the writer.
        errors: ``raise`` (default): a backend error stops the run; ``skip``: a message the
            backend rejects with a :class:`~terraseg.errors.TerrasegError` (bad data) is
            dropped with reason ``error`` and the run goes on.
        warmup: run each stream's first message once untimed first.
        settings: extra entries for the statistics' ``settings``.
    """

    def __init__(self, source: Source, backends: Mapping[StreamKind, Backend], sinks: Sequence[Sink] = (), *,
                 policy: DropPolicy = "latest", queue_size: int | None = None, output_queue_size: int = 8,
                 errors: ErrorPolicy = "raise", warmup: bool = True, settings: Mapping[str, Any] | None = None) -> None:
        if policy not in DROP_POLICIES:
            raise ConfigError(f"drop policy must be one of {', '.join(DROP_POLICIES)}, got {policy!r}")
        if errors not in ("raise", "skip"):
            raise ConfigError(f"errors must be 'raise' or 'skip', got {errors!r}")
        if not source.topics:
            raise ConfigError(f"{source.description}: the source has no streams")
        for kind, backend in backends.items():
            if backend.kind != kind:
                raise ConfigError(f"the {kind} backend is a {backend.kind} backend ({backend!r})")
        missing = sorted({k for k in source.topics.values() if k not in backends})
        if missing:
            raise ConfigError(f"{source.description}: no model for its {', '.join(missing)} stream(s)")
        self.source = source
        self.backends = dict(backends)
        self.sinks = list(sinks)
        self.policy: DropPolicy = policy
        self.queue_size = int(queue_size) if queue_size is not None else (4 if policy == "block" else 1)
        self.errors: ErrorPolicy = errors
        self.warmup = bool(warmup)
        self.inputs = {t: BoundedQueue[SensorMessage](self.queue_size, f"input {t}") for t in source.topics}
        self.output = BoundedQueue[Any](output_queue_size, "output")
        self._locks = {k: threading.Lock() for k in self.backends}
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._failure_lock = threading.Lock()
        self._stop_status = "stopped"
        self._warm: set[str] = set()  # topics whose backend was warmed up before the clock started
        self.stats = RunStats({
            "source": source.description, "realtime": source.realtime, "speed": source.speed, "policy": policy,
            "queue_size": self.queue_size, "output_queue_size": int(output_queue_size), "errors": errors,
            "warmup": self.warmup,
            "backends": {k: {"name": b.name, "model": str(b.model_path) if b.model_path else None,
                             "ontology": b.ontology.name} for k, b in self.backends.items()},
            "sinks": [type(s).__name__ for s in self.sinks], **dict(settings or {})})
        for topic, kind in source.topics.items():
            self.stats.add_stream(topic, kind, self.backends[kind].name, self.queue_size)
        source.on_skip = lambda topic, count: self.stats.on_skip(topic, count, "read")
        self._ran = False

    # ------------------------------------------------------------------ control
    def stop(self, status: str = "stopped") -> None:
        """Ask the run to stop (thread-safe); outputs are finalised, queued messages dropped."""
        if not self._stop.is_set():
            self._stop_status = status
        self._stop.set()

    def _fail(self, exc: BaseException) -> None:
        with self._failure_lock:
            if self._failure is None:
                self._failure = exc
        self._stop.set()

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def _drop(self, message: SensorMessage, reason: str) -> None:
        self.stats.on_drop(message, reason)
        self.output.put(_Drop(message, reason))  # type: ignore[arg-type]  # the writer always drains

    # ------------------------------------------------------------------ threads
    def _reader(self) -> None:
        try:
            for msg in self.source.messages(self._stop):
                q = self.inputs.get(msg.topic)
                if q is None:
                    raise DataError(f"{self.source.description}: message on unknown topic {msg.topic!r}")
                self.stats.on_input(msg)
                dropped = q.put(msg, self.policy, self._stop)
                if dropped is not None:
                    reason = {"latest": "superseded", "oldest": "queue-full"}.get(self.policy, "shutdown")
                    self._drop(dropped, reason)
        except BaseException as exc:  # noqa: BLE001 - reported by run()
            self._fail(exc)
        finally:
            for q in self.inputs.values():
                q.close()
            self.output.put(_Done("reader"))  # type: ignore[arg-type]

    def _worker(self, topic: str) -> None:
        q = self.inputs[topic]
        kind = self.source.topics[topic]
        backend, lock = self.backends[kind], self._locks[kind]
        first = True
        try:
            while True:
                msg = q.get(timeout=_POLL_S)
                if msg is None:
                    continue
                if isinstance(msg, _Closed):
                    break
                if self._stop.is_set():
                    self._drop(msg, "shutdown")
                    continue
                start = time.perf_counter_ns()
                try:
                    with lock:
                        if first and self.warmup and topic not in self._warm:
                            t0 = time.perf_counter()
                            backend.predict(msg)
                            msg.meta["warmup_ms"] = (time.perf_counter() - t0) * 1e3
                            msg.received_ns = start = time.perf_counter_ns()
                        first = False
                        pred = backend.predict(msg)
                except TerrasegError as exc:
                    if self.errors == "skip":
                        text = str(exc)
                        name = f"{topic} message {msg.seq} (frame {msg.frame_id})"
                        log.warning("skipped %s", text if text.startswith(topic) else f"{name}: {text}")
                        self.stats.on_skip(topic, 1, "inference")
                        self._drop(msg, "error")
                        continue
                    self._drop(msg, "error")
                    self._fail(exc)
                    continue
                except BaseException as exc:  # noqa: BLE001 - reported by run()
                    self._drop(msg, "error")
                    self._fail(exc)
                    continue
                pred.timings_ms["read"] = float(msg.meta.get("read_ms", 0.0))
                pred.timings_ms["queue"] = (start - msg.received_ns) / 1e6
                self.output.put(pred)
        finally:
            for msg in q.drain():
                self._drop(msg, "shutdown")
            self.output.put(_Done(topic))

    def _writer(self, producers: int) -> None:
        try:
            for sink in self.sinks:
                start = getattr(sink, "start", None)
                if callable(start):
                    start()
        except BaseException as exc:  # noqa: BLE001 - reported by run(); the loop below still drains
            self._fail(exc)
        try:
            self._write_loop(producers)  # drains the output queue until every producer is done, even after a failure
        finally:
            self._finish_sinks()

    def _write_loop(self, producers: int) -> None:
        done = 0
        while done < producers:
            item = self.output.get(timeout=_POLL_S)
            if item is None or isinstance(item, _Closed):
                continue
            if isinstance(item, _Done):
                done += 1
                continue
            if self.failed:
                if isinstance(item, Prediction):
                    self.stats.on_drop(item.message, "aborted")
                continue
            try:
                if isinstance(item, _Drop):
                    for sink in self.sinks:
                        sink.on_drop(item.message, item.reason)
                    continue
                t0 = time.perf_counter_ns()
                for sink in self.sinks:
                    sink.write(item)
                t1 = time.perf_counter_ns()
                item.timings_ms["write"] = (t1 - t0) / 1e6
                item.timings_ms["total"] = item.timings_ms.get("read", 0.0) + (t1 - item.message.received_ns) / 1e6
                self.stats.on_predicted(item, t1)
            except BaseException as exc:  # noqa: BLE001 - reported by run()
                if isinstance(item, Prediction):
                    self.stats.on_drop(item.message, "aborted")
                self._fail(exc)

    # ------------------------------------------------------------------ run
    def run(self, *, live: bool = False, console: Any = None, stats_json: str | os.PathLike[str] | None = None,
            duration_s: float | None = None) -> RunStats:
        """Run to the end of the source (or a stop); returns the statistics.

        Args:
            live: show a rich live table while running.
            console: the rich console of the live table.
            stats_json: write the statistics there (atomically) when the run ends, also on failure.
            duration_s: stop after this many seconds of wall time.

        Raises:
            The first error of the run (after the sinks were aborted and the statistics written).
        """
        if self._ran:
            raise RuntimeError("a Pipeline runs once; make a new one")
        self._ran = True
        if duration_s is not None and duration_s <= 0:
            raise ConfigError(f"duration must be positive, got {duration_s}")
        # Each thread sets its own event when it ends: the main thread polls events, not
        # Thread.join / is_alive, which a Ctrl-C arriving inside join() can leave claiming a
        # running thread has ended (CPython < 3.12).
        done: list[threading.Event] = []

        def thread(target: Any, args: tuple[Any, ...], name: str) -> threading.Thread:
            ev = threading.Event()
            done.append(ev)

            def body() -> None:
                try:
                    target(*args)
                finally:
                    ev.set()

            return threading.Thread(target=body, name=name, daemon=True)

        if self.warmup:
            try:
                self._warm_up()
            except KeyboardInterrupt:  # before anything ran: stop at once, outputs are finalised empty
                self.stop("interrupted")
        threads = [thread(self._writer, (1 + len(self.inputs),), "terraseg-writer")]
        threads += [thread(self._worker, (t,), f"terraseg-infer {t}") for t in self.inputs]
        threads.append(thread(self._reader, (), "terraseg-reader"))
        t_start = time.monotonic()
        interrupted = False
        with LiveTable(self.stats, enabled=live, console=console) as table:
            for th in threads:
                th.start()
            while True:
                try:
                    while not all(ev.is_set() for ev in done):
                        done[0].wait(_POLL_S * 4)
                        self._record_queues()
                        table.update()
                        if duration_s is not None and time.monotonic() - t_start >= duration_s:
                            self.stop("stopped")
                    break
                except KeyboardInterrupt:
                    if interrupted:  # a second Ctrl-C: give up on a clean shutdown
                        self._fail(KeyboardInterrupt())
                        self._abort_sinks_now()
                        raise
                    interrupted = True
                    self.stop("interrupted")
            self._record_queues()
            table.update(force=True)
        failure = self._failure
        if failure is not None:
            self.stats.finish("failed", f"{type(failure).__name__}: {failure}")
        elif self._stop.is_set():
            self.stats.finish(self._stop_status)
        else:
            self.stats.finish("completed")
        with contextlib.suppress(Exception):
            self.source.close()
        if stats_json is not None:
            self.stats.write_json(Path(stats_json))
        if failure is not None:
            raise failure
        return self.stats

    def _warm_up(self) -> None:
        """Predict the first message of every stream once, untimed, before the clock starts (see
        the module docstring); the messages stay queued in the source for the run itself."""
        times: dict[str, float] = {}
        for topic, msg in self.source.prefetch().items():
            kind = self.source.topics.get(topic)
            if kind is None:
                continue
            t0 = time.perf_counter()
            try:
                self.backends[kind].predict(dataclasses.replace(msg, meta=dict(msg.meta)))
            except Exception as exc:  # noqa: BLE001 - the worker meets this message again and handles it
                log.debug("warm-up of %s on its first message failed: %s", topic, exc)
                continue
            times[topic] = round((time.perf_counter() - t0) * 1e3, 1)
            self._warm.add(topic)
        self.stats.settings["warmup_ms"] = times

    def _record_queues(self) -> None:
        for topic, q in self.inputs.items():
            self.stats.set_queue(q.name, q.capacity, q.high_water, topic)
        self.stats.set_queue(self.output.name, self.output.capacity, self.output.high_water)

    def _abort_sinks_now(self) -> None:
        """Abort the sinks from the calling thread (a second Ctrl-C while the writer is busy)."""
        for sink in self.sinks:
            with contextlib.suppress(BaseException):
                finish_sink(sink, False)

    def _finish_sinks(self) -> None:
        """Close the sinks (abort them after a failure); runs on the writer thread after its last item."""
        ok = self._failure is None
        for sink in self.sinks:
            try:
                finish_sink(sink, ok)
            except BaseException as exc:  # noqa: BLE001 - the first error wins; the other sinks still finish
                if ok:
                    self._fail(exc)
                    ok = False
                else:
                    log.warning("finishing %s after an error failed: %s", type(sink).__name__, exc)


def run_pipeline(source: Source, backends: Mapping[StreamKind, Backend], sinks: Sequence[Sink] = (),
                 **options: Any) -> RunStats:
    """Build a :class:`Pipeline` and run it. ``options`` go to the constructor (``policy``,
    ``queue_size``, ``output_queue_size``, ``errors``, ``warmup``, ``settings``) and to
    :meth:`Pipeline.run` (``live``, ``console``, ``stats_json``, ``duration_s``)."""
    run_keys = {"live", "console", "stats_json", "duration_s"}
    run_kw = {k: options.pop(k) for k in list(options) if k in run_keys}
    return Pipeline(source, backends, sinks, **options).run(**run_kw)
