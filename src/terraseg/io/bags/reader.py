"""Reading ROS 1 ``.bag`` files and ROS 2 bags (sqlite3 ``.db3`` or ``.mcap``) without ROS.

Built on the pure-Python ``rosbags`` library::

    with open_bag("drive.bag") as bag:
        print(bag.topics)                       # {topic: TopicInfo(name, msgtype, count)}
        for m in bag.messages(["/camera/image"]):
            rgb = decode_image(m.msg, bag.where(m.topic, m.index))

Message types are named the ROS 2 way on both ROS versions (``sensor_msgs/msg/Image``).
Timestamps are integer nanoseconds: ``timestamp_ns`` is the bag's record (receive) time,
``stamp_ns`` the message's ``header.stamp``.

**Integrity.** MCAP chunks carry the CRC32 of their records (written by ``ros2 bag record`` and
by :class:`~terraseg.io.bags.BagWriter`); reading a chunk whose records do not match it raises
:class:`DataError` naming the file and the chunk (number, byte offset, record times). With
:attr:`Bag.skip_corrupted` the chunk is skipped instead: one warning line names it and the
messages lost per topic, :attr:`Bag.skipped_chunks` lists it, and the messages after it keep
their indices (their positions in the bag). :meth:`Bag.verify` checks every chunk up front.
sqlite3 bags and ROS 1 bags store no checksums; a truncated ROS 1 bag (its index is at the end)
cannot be opened.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from terraseg.errors import DataError
from terraseg.io.bags.decode import stamp_ns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicInfo:
    """One topic of a bag: name, message type (``pkg/msg/Type``) and number of messages."""

    name: str
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagMessage:
    """One message read from a bag.

    Attributes:
        topic: topic name.
        msgtype: message type, e.g. ``sensor_msgs/msg/Image``.
        index: 0-based position of the message within its topic, in bag order.
        timestamp_ns: record (receive) time in nanoseconds.
        stamp_ns: ``header.stamp`` in nanoseconds, or None for types without a header.
        msg: the deserialised message object (``decode=True``) or the raw serialised bytes.
    """

    topic: str
    msgtype: str
    index: int
    timestamp_ns: int
    stamp_ns: int | None
    msg: Any


@dataclass(frozen=True)
class SkippedChunk:
    """A corrupted MCAP chunk skipped while reading (:attr:`Bag.skip_corrupted`).

    Attributes:
        description: one line naming the file, the chunk and the problem.
        start_ns: record time of the chunk's first message.
        messages: topic -> number of messages in the chunk (all topics).
        lost: topic -> ``(first index, count)`` of the messages of the topics being read that
            were in the chunk (their indices are the positions they had in the bag).
    """

    description: str
    start_ns: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    lost: dict[str, tuple[int, int]] = field(default_factory=dict)

    def indices(self) -> Iterator[tuple[str, int]]:
        """``(topic, index)`` of every lost message."""
        for topic, (first, count) in self.lost.items():
            for i in range(first, first + count):
                yield topic, i


def _rosbags() -> Any:
    try:
        import rosbags.highlevel  # noqa: F401
        import rosbags.typesys  # noqa: F401
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise DataError("reading ROS bags needs the 'rosbags' package (pip install rosbags)") from exc
    import rosbags

    return rosbags


class Bag:
    """An open ROS 1 or ROS 2 bag. Create with :func:`open_bag` and use as a context manager.

    Args:
        path: a ROS 1 ``.bag`` file, a ROS 2 bag folder (with ``metadata.yaml``) or a single
            ROS 2 ``.db3`` / ``.mcap`` storage file.
        default_typestore: message definitions for ROS 2 bags that do not embed them (bags
            recorded before ROS 2 Iron); defaults to ROS 2 Humble's.
    """

    def __init__(self, path: str | os.PathLike[str], default_typestore: Any = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: bag not found")
        if self.path.is_dir() and not (self.path / "metadata.yaml").is_file():
            raise DataError(f"{self.path}: not a ROS 2 bag folder (no metadata.yaml); "
                            "give a ROS 1 .bag file, a ROS 2 bag folder, or a .db3/.mcap file")
        rb = _rosbags()
        from rosbags.typesys import Stores, get_typestore

        self._default = default_typestore or get_typestore(Stores.ROS2_HUMBLE)
        try:
            self._reader = rb.highlevel.AnyReader([self.path], default_typestore=self._default)
        except Exception as exc:
            raise DataError(f"{self.path}: cannot read bag ({_reason(exc)})") from None
        self.ros_version: int = 2 if self._reader.is2 else 1
        self._open = False
        self._header_first: dict[str, bool] = {}
        self.skip_corrupted = False
        """Skip corrupted MCAP chunks (with a warning) instead of raising :class:`DataError`."""
        self.skipped_chunks: list[SkippedChunk] = []
        """Corrupted chunks skipped so far (each once, however often the bag is read)."""
        self._bad_chunks: list[Any] | None = None  # BadChunk of every .mcap file, once verified
        self._excluded: set[tuple[str, int]] = set()  # (file, chunk offset) removed from the reader
        self._skipped_counts: list[tuple[SkippedChunk, dict[str, int]]] = []  # and its messages per topic

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> Bag:
        if not self._open:
            try:
                self._reader.open()
            except Exception as exc:
                bad = self._corrupted()
                if bad:  # an MCAP file without a summary is read whole on opening
                    raise DataError(f"{bad[0].describe()}; cannot open the bag") from None
                raise DataError(f"{self.path}: cannot open bag ({_reason(exc)})") from None
            self._open = True
        return self

    def close(self) -> None:
        if self._open:
            self._reader.close()
            self._open = False

    def __enter__(self) -> Bag:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ metadata
    @property
    def storage(self) -> str:
        """``rosbag1``, ``sqlite3`` or ``mcap``."""
        if self.ros_version == 1:
            return "rosbag1"
        if self.path.suffix == ".mcap" or any(self.path.glob("*.mcap")):
            return "mcap"
        return "sqlite3"

    @property
    def topics(self) -> dict[str, TopicInfo]:
        """Topic name -> :class:`TopicInfo`, sorted by name."""
        return {name: TopicInfo(name, info.msgtype or "(mixed types)", int(info.msgcount))
                for name, info in sorted(self._reader.topics.items())}

    @property
    def start_ns(self) -> int:
        """Record time of the first message (ns)."""
        return int(self._reader.start_time)

    @property
    def end_ns(self) -> int:
        """Record time just after the last message (ns)."""
        return int(self._reader.end_time)

    @property
    def message_count(self) -> int:
        return int(self._reader.message_count)

    def where(self, topic: str, index: int | None = None) -> str:
        """Error-message prefix naming this bag, a topic and optionally a message index."""
        return f"{self.path}: {topic}" + ("" if index is None else f" message {index}")

    def describe_topics(self) -> str:
        """One line per topic: ``name (type, N msgs)``."""
        return ", ".join(f"{t.name} ({t.msgtype}, {t.count} msgs)" for t in self.topics.values()) or "(no topics)"

    def topic(self, name: str, msgtypes: Sequence[str] | None = None) -> TopicInfo:
        """The :class:`TopicInfo` of ``name``; :class:`DataError` naming the bag, the topic and
        the available topics when it is missing, or when its type is not one of ``msgtypes``."""
        topics = self.topics
        if name not in topics:
            raise DataError(f"{self.path}: topic {name!r} not found; available topics: {self.describe_topics()}")
        info = topics[name]
        if msgtypes and info.msgtype not in msgtypes:
            raise DataError(f"{self.path}: topic {name!r} has type {info.msgtype}, expected "
                            f"{' or '.join(msgtypes)}")
        return info

    # ------------------------------------------------------------------ messages
    def _connections(self, topics: Sequence[str] | None) -> list[Any]:
        if topics is None:
            return list(self._reader.connections)
        for t in topics:
            self.topic(t)
        wanted = set(topics)
        return [c for c in self._reader.connections if c.topic in wanted]

    def raw_messages(self, topics: str | Sequence[str] | None = None) -> Iterator[tuple[str, str, int, int, bytes]]:
        """Yield ``(topic, msgtype, index, timestamp_ns, raw bytes)`` in record-time order.

        A corrupted MCAP chunk raises :class:`DataError` naming it, or with
        :attr:`skip_corrupted` is skipped (see the module docstring)."""
        topics = [topics] if isinstance(topics, str) else topics
        conns = self._connections(topics)
        if not conns:
            return
        wanted = {c.topic for c in conns}
        counters: dict[str, int] = {}
        # corrupted chunks already passed over: their messages still count in the indices
        pending = [(sk, counts) for sk, counts in self._skipped_counts]
        done = 0  # messages yielded: a restart after skipping a chunk passes over them
        while True:
            again = done
            try:
                for conn, t, raw in self._reader.messages(connections=conns):
                    if again:
                        again -= 1
                        continue
                    # a skipped chunk's messages came before the first later message (record time
                    # after its start; at equal times, messages of earlier chunks come first)
                    while pending and pending[0][0].start_ns < t:
                        sk, counts = pending.pop(0)
                        for topic, n in counts.items():
                            if topic in wanted:
                                first = counters.get(topic, 0)
                                sk.lost[topic] = (first, n)
                                counters[topic] = first + n
                    i = counters.get(conn.topic, 0)
                    counters[conn.topic] = i + 1
                    done += 1
                    yield conn.topic, conn.msgtype, i, int(t), raw
                return
            except DataError:
                raise
            except Exception as exc:
                bad = [b for b in self._corrupted() if (str(b.file), b.chunk.offset) not in self._excluded]
                if not bad:
                    raise DataError(f"{self.path}: cannot read messages ({_reason(exc)})") from None
                if not self.skip_corrupted or not self._exclude(bad):
                    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
                    raise DataError(f"{bad[0].describe()}{more}; skip corrupted chunks with --skip-errors / "
                                    "--skip-bad") from None
                for b in bad:
                    counts = self._chunk_topics(b)
                    sk = SkippedChunk(b.describe(), b.chunk.start_ns, counts)
                    self.skipped_chunks.append(sk)
                    self._skipped_counts.append((sk, counts))
                    pending.append((sk, counts))
                    lost = ", ".join(f"{tp} {n}" for tp, n in sorted(counts.items()) if tp in wanted)
                    log.warning("skipped %s (messages lost: %s)", b.describe(), lost or "none of the topics read")
                pending.sort(key=lambda item: item[0].start_ns)

    # ------------------------------------------------------------------ integrity
    @property
    def mcap_files(self) -> list[Path]:
        """The ``.mcap`` files of a ROS 2 mcap bag (empty for other storages)."""
        if self.ros_version != 2:
            return []
        if self.path.is_file():
            return [self.path] if self.path.suffix.lower() == ".mcap" else []
        return sorted(self.path.glob("*.mcap"))

    def verify(self) -> list[Any]:
        """Every corrupted chunk of the bag's MCAP files (:class:`terraseg.io.bags.mcap.BadChunk`,
        in file order); reads each chunk once. Other storages have no checksums: ``[]``."""
        from terraseg.io.bags.mcap import verify_chunks

        bad: list[Any] = []
        for f in self.mcap_files:
            bad += list(verify_chunks(f))
        return bad

    def _corrupted(self) -> list[Any]:
        """:meth:`verify`, computed once (after a read error); ``[]`` when it cannot tell."""
        if self._bad_chunks is None:
            try:
                self._bad_chunks = self.verify()
            except (DataError, OSError):
                self._bad_chunks = []
        return self._bad_chunks

    def _chunk_topics(self, bad: Any) -> dict[str, int]:
        from terraseg.io.bags.mcap import mcap_chunks

        names = mcap_chunks(bad.file).topics
        return {names.get(cid, f"channel {cid}"): n for cid, n in bad.chunk.messages.items()}

    def _exclude(self, bad: list[Any]) -> bool:
        """Remove the corrupted chunks from ``rosbags``' chunk lists (so that reading passes over
        them); False when that is not possible with this ``rosbags`` version."""
        try:
            outer = self._reader.readers[0].storage
            storages = list(getattr(outer, "storages", None) or [outer])
        except (AttributeError, IndexError):
            return False
        removed = 0
        for b in bad:
            for st in storages:
                chunks, spath = getattr(st, "chunks", None), getattr(st, "path", None)
                if not isinstance(chunks, list) or spath is None or Path(spath).resolve() != b.file.resolve():
                    continue
                keep = [c for c in chunks if getattr(c, "chunk_start_offset", None) != b.chunk.offset]
                if len(keep) < len(chunks):
                    chunks[:] = keep
                    self._excluded.add((str(b.file), b.chunk.offset))
                    removed += 1
        return removed == len(bad)

    def _sqlite_heads(self, topics: Sequence[str], nbytes: int) -> Iterator[tuple[str, str, int, int, bytes]] | None:
        """The first ``nbytes`` of every message of ``topics`` straight from the sqlite3 files of
        a ROS 2 bag, reading one database page per message instead of the whole blob; same
        order and indices as :meth:`raw_messages` (file by file, ``ORDER BY timestamp``, the
        query ``rosbags`` runs). None when the bag is not uncompressed-message sqlite3 or the
        ``rosbags`` internals this relies on are not there."""
        if self.ros_version != 2:
            return None
        try:
            outer = self._reader.readers[0].storage
            storages = list(getattr(outer, "storages", None) or [outer])
            if outer.metadata.compression_mode == "message":
                return None
            plan = []
            for st in storages:
                conns = {c.id: (c.topic, c.msgtype) for c in st.connections if c.topic in topics}
                plan.append((st.dbconn, conns))
            if any(db is None or type(db).__module__.split(".")[0] != "apsw" for db, _ in plan):
                return None
        except AttributeError:
            return None

        def generate() -> Iterator[tuple[str, str, int, int, bytes]]:
            counters: dict[str, int] = {}
            for db, conns in plan:
                if not conns:
                    continue
                query = ("SELECT topics.id,messages.timestamp,substr(messages.data,1,?) FROM messages JOIN topics "
                         f"ON messages.topic_id=topics.id WHERE topics.id IN ({','.join('?' * len(conns))}) "
                         "ORDER BY timestamp")
                for cid, t, head in db.execute(query, (nbytes, *conns)):
                    topic, msgtype = conns[cid]
                    i = counters.get(topic, 0)
                    counters[topic] = i + 1
                    yield topic, msgtype, i, int(t), bytes(head)

        return generate()

    def stamps(self, topics: Sequence[str], receive_time: bool = False
               ) -> Iterator[tuple[str, int, int, int | None, DataError | None]]:
        """Yield ``(topic, index, timestamp_ns, stamp_ns, error)`` for every message of ``topics``
        in record-time order, reading as little as possible: header stamps come from the first
        bytes of each message (on sqlite3 bags only those bytes are read from disk).

        ``stamp_ns`` is the header stamp, or the record time with ``receive_time``; ``error`` is a
        :class:`DataError` (and ``stamp_ns`` None) for a message whose header cannot be read,
        so callers decide whether to skip it or stop.
        """
        for t in topics:
            self.topic(t)
        types = {self.topics[t].msgtype for t in topics}
        if receive_time or all(self._starts_with_header(m) for m in types):
            try:
                fast = self._sqlite_heads(list(topics), 64)
                source = fast if fast is not None else self.raw_messages(list(topics))
                for topic, msgtype, i, t, raw in source:
                    if receive_time:
                        yield topic, i, t, t, None
                        continue
                    try:
                        yield topic, i, t, self.peek_stamp(raw, msgtype, self.where(topic, i)), None
                    except DataError as exc:
                        yield topic, i, t, None, exc
            except DataError:
                raise
            except Exception as exc:
                raise DataError(f"{self.path}: cannot read messages ({type(exc).__name__}: {exc})") from None
            return
        for topic, msgtype, i, t, raw in self.raw_messages(list(topics)):
            try:
                st = self.peek_stamp(raw, msgtype, self.where(topic, i))
            except DataError as exc:
                yield topic, i, t, None, exc
                continue
            if st is None:
                yield topic, i, t, None, DataError(f"{self.where(topic, i)}: {msgtype} has no header stamp")
            else:
                yield topic, i, t, st, None

    def messages(self, topics: str | Sequence[str] | None = None, decode: bool = True) -> Iterator[BagMessage]:
        """Yield the messages of ``topics`` (all when None) in record-time order.

        With ``decode`` the ``msg`` of each :class:`BagMessage` is the deserialised object,
        otherwise the raw serialised bytes (the header stamp is then read from the bytes).
        A missing topic raises :class:`DataError` listing the available topics.
        """
        for topic, msgtype, i, t, raw in self.raw_messages(topics):
            if decode:
                msg = self.deserialize(raw, msgtype, self.where(topic, i))
                yield BagMessage(topic, msgtype, i, t, stamp_ns(msg), msg)
            else:
                yield BagMessage(topic, msgtype, i, t, self.peek_stamp(raw, msgtype, self.where(topic, i)), raw)

    def deserialize(self, raw: bytes | memoryview, msgtype: str, where: str = "message") -> Any:
        """Deserialise raw message bytes of ``msgtype``; :class:`DataError` naming ``where`` on failure.

        Thread-safe (the generated deserialisers are pure functions).
        """
        store = self._reader.typestore
        if msgtype not in store.fielddefs:
            store = self._default
        try:
            if self.ros_version == 2:
                return store.deserialize_cdr(raw, msgtype)
            return store.deserialize_ros1(raw, msgtype)
        except Exception as exc:
            raise DataError(f"{where}: cannot deserialise {msgtype} ({type(exc).__name__}: {exc})") from None

    def _starts_with_header(self, msgtype: str) -> bool:
        known = self._header_first.get(msgtype)
        if known is None:
            store = self._reader.typestore if msgtype in self._reader.typestore.fielddefs else self._default
            try:
                first = store.fielddefs[msgtype][1][0]
                known = first[0] == "header" and first[1][1] == "std_msgs/msg/Header"
            except (KeyError, IndexError, TypeError):
                known = False
            self._header_first[msgtype] = known
        return known

    def peek_stamp(self, raw: bytes | memoryview, msgtype: str, where: str = "message") -> int | None:
        """``header.stamp`` (ns) read directly from the serialised bytes, without deserialising
        the payload (an image's pixels are not copied). None for types without a header."""
        if not self._starts_with_header(msgtype):
            return stamp_ns(self.deserialize(raw, msgtype, where))
        try:
            if self.ros_version == 2:  # 4-byte CDR encapsulation header, then int32 sec, uint32 nanosec
                little = raw[1] & 1
                sec, nsec = struct.unpack_from("<iI" if little else ">iI", raw, 4)
            else:  # ROS 1: uint32 seq, uint32 sec, uint32 nsec
                sec, nsec = struct.unpack_from("<II", raw, 4)
        except (struct.error, IndexError):
            raise DataError(f"{where}: message of {len(raw)} bytes is too short to hold a header") from None
        return int(sec) * 1_000_000_000 + int(nsec)


def _reason(exc: BaseException) -> str:
    """A reader error as text, with a hint for the common damaged-file cases."""
    text = f"{type(exc).__name__}: {exc}"
    low = str(exc).lower()
    if "index" in low and ("damaged" in low or "header could not be read" in low):
        text += "; the file is truncated or damaged (a ROS 1 bag keeps its index at the end: an interrupted " \
                "recording needs `rosbag reindex`)"
    return text


def open_bag(path: str | os.PathLike[str], default_typestore: Any = None) -> Bag:
    """Open a ROS 1 ``.bag`` file or a ROS 2 bag (folder, ``.db3`` or ``.mcap``) for reading.

    Use as a context manager (``with open_bag(p) as bag: ...``); the bag is open on return.
    Raises :class:`DataError` naming the path when it is missing or unreadable.
    """
    return Bag(path, default_typestore).open()
