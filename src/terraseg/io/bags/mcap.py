"""Chunk checksums of MCAP files (ROS 2 ``mcap`` storage): list, verify and add them.

An MCAP file stores its messages in *chunks* (record ``0x06``); each chunk may carry the CRC32
of its uncompressed records (0 means "not computed"). Recorders built on the MCAP C++ library
(``ros2 bag record -s mcap``) write it; ``rosbags``' writer, which :class:`~terraseg.io.bags.BagWriter`
uses, writes 0, so :func:`add_chunk_crcs` fills the checksums in after a bag is written.

:func:`mcap_chunks` walks the file's records (headers only: the chunk contents are skipped), so
listing the chunks of a multi-gigabyte file reads a few kilobytes; :func:`verify_chunks`
reads each chunk once and compares its CRC32. The record layout follows the MCAP specification
(https://mcap.dev/spec): ``opcode (u8) | length (u64) | content`` after an 8-byte magic;
a chunk's content is ``message_start_time (u64) | message_end_time (u64) | uncompressed_size
(u64) | uncompressed_crc (u32) | compression (u32 length + string) | records (u64 length +
bytes)``, followed in the file by one message-index record (``0x07``) per channel that has
messages in it. All integers are little endian.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from terraseg.errors import DataError

MAGIC = b"\x89MCAP0\r\n"
OP_CHANNEL, OP_CHUNK, OP_MESSAGE_INDEX, OP_DATA_END, OP_FOOTER = 0x04, 0x06, 0x07, 0x0F, 0x02
_HEAD = struct.Struct("<BQ")  # opcode, record length
_CHUNK_HEAD = struct.Struct("<QQQI")  # start time, end time, uncompressed size, uncompressed CRC32
CRC_OFFSET = _HEAD.size + 24
"""Byte offset of a chunk's CRC32 from the start of its record."""


@dataclass(frozen=True)
class McapChunk:
    """One chunk record of an MCAP file.

    Attributes:
        number: 1-based position among the file's chunks.
        offset: byte offset of the record (its opcode) in the file.
        start_ns, end_ns: record (log) times of its first and last message, ns.
        uncompressed_size: size of the records inside, bytes.
        crc: stored CRC32 of the uncompressed records (0: none was stored).
        compression: ``""`` (none), ``"zstd"`` or ``"lz4"``.
        data_offset, data_size: where the (compressed) records lie in the file, bytes.
        messages: channel id -> number of messages in the chunk (from its message-index records).
    """

    number: int
    offset: int
    start_ns: int
    end_ns: int
    uncompressed_size: int
    crc: int
    compression: str
    data_offset: int
    data_size: int
    messages: dict[int, int] = field(default_factory=dict)

    def describe(self, total: int | None = None) -> str:
        """``chunk 3 of 9 (byte offset 2097307, record times 1581624663.100-1581624663.600 s)``."""
        of = f" of {total}" if total else ""
        return (f"chunk {self.number}{of} (byte offset {self.offset}, record times "
                f"{self.start_ns / 1e9:.3f}-{self.end_ns / 1e9:.3f} s)")


@dataclass(frozen=True)
class BadChunk:
    """A chunk whose records do not match their stored CRC32 (or cannot be decompressed)."""

    file: Path
    chunk: McapChunk
    problem: str
    total: int

    def describe(self) -> str:
        """One line naming the file, the chunk and the problem."""
        return f"{self.file}: {self.chunk.describe(self.total)} is corrupted: {self.problem}"


@dataclass
class McapLayout:
    """The chunks and channel topics of one MCAP file (see :func:`mcap_chunks`)."""

    path: Path
    chunks: list[McapChunk]
    topics: dict[int, str]  # channel id -> topic


def _read_exact(f: object, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)  # type: ignore[attr-defined]
    if len(data) != n:
        raise DataError(f"{path}: truncated MCAP file ({what} at byte {f.tell() - len(data)} is cut off)")  # type: ignore[attr-defined]
    return bytes(data)


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<I", buf, pos)
    return buf[pos + 4:pos + 4 + n].decode("utf-8", errors="replace"), pos + 4 + n


def mcap_chunks(path: str | os.PathLike[str]) -> McapLayout:
    """The chunks of an MCAP file (in file order) and its channels' topics, read from the record
    headers: the contents of chunks are skipped, not read.

    Raises:
        DataError: not an MCAP file, or a record that runs past the end of the file (truncated).
    """
    p = Path(path)
    size = p.stat().st_size
    chunks: list[McapChunk] = []
    topics: dict[int, str] = {}
    with open(p, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise DataError(f"{p}: not an MCAP file (no MCAP magic at the start)")
        pos = len(MAGIC)
        while pos + _HEAD.size <= size:
            f.seek(pos)
            op, length = _HEAD.unpack(_read_exact(f, _HEAD.size, p, "a record header"))
            end = pos + _HEAD.size + length
            if end > size:
                raise DataError(f"{p}: truncated MCAP file (a record at byte {pos} needs {length} bytes, "
                                f"the file ends {size - pos - _HEAD.size} bytes later)")
            if op == OP_CHUNK:
                start_ns, end_ns, usize, crc = _CHUNK_HEAD.unpack(_read_exact(f, _CHUNK_HEAD.size, p, "a chunk header"))
                (clen,) = struct.unpack("<I", _read_exact(f, 4, p, "a chunk header"))
                compression = _read_exact(f, clen, p, "a chunk header").decode("utf-8", errors="replace")
                (dsize,) = struct.unpack("<Q", _read_exact(f, 8, p, "a chunk header"))
                chunks.append(McapChunk(len(chunks) + 1, pos, start_ns, end_ns, usize, crc, compression, f.tell(),
                                        dsize))
            elif op == OP_MESSAGE_INDEX and chunks:  # follows its chunk: (u16 channel, u32 len, 16 bytes per message)
                cid, nbytes = struct.unpack("<HI", _read_exact(f, 6, p, "a message index"))
                chunks[-1].messages[cid] = chunks[-1].messages.get(cid, 0) + nbytes // 16
            elif op == OP_CHANNEL:  # top level: in the summary section (and in unchunked files)
                body = _read_exact(f, min(length, 1 << 16), p, "a channel record")
                try:
                    (cid,) = struct.unpack_from("<H", body, 0)
                    topics[cid], _ = _string(body, 4)
                except struct.error:
                    pass
            elif op == OP_FOOTER:
                break
            pos = end
    return McapLayout(p, chunks, topics)


def _decompress(data: bytes, compression: str, size: int) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        try:
            from compression import zstd  # type: ignore[import-not-found]  # Python >= 3.14
        except ImportError:
            from backports import zstd  # type: ignore[import-not-found,no-redef]  # rosbags' dependency
        return bytes(zstd.decompress(data))
    if compression == "lz4":
        from lz4.frame import decompress  # type: ignore[import-untyped]

        return bytes(decompress(data))
    raise DataError(f"unsupported MCAP chunk compression {compression!r}")


def chunk_problem(f: object, chunk: McapChunk) -> str | None:
    """Why ``chunk`` (of the open binary file ``f``) is corrupted, or None when its records match
    the stored CRC32. A chunk without a stored CRC (0) is only checked for its size."""
    f.seek(chunk.data_offset)  # type: ignore[attr-defined]
    data = f.read(chunk.data_size)  # type: ignore[attr-defined]
    if len(data) != chunk.data_size:
        return "the file ends inside it (truncated)"
    try:
        raw = _decompress(data, chunk.compression, chunk.uncompressed_size)
    except DataError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - decompressors raise their own error types
        return f"its {chunk.compression} data cannot be decompressed ({type(exc).__name__}: {exc})"
    if len(raw) != chunk.uncompressed_size:
        return f"it holds {len(raw)} bytes of records, its header says {chunk.uncompressed_size}"
    if chunk.crc:
        crc = zlib.crc32(raw) & 0xFFFFFFFF
        if crc != chunk.crc:
            return f"CRC32 mismatch (stored 0x{chunk.crc:08x}, computed 0x{crc:08x})"
    return None


def verify_chunks(path: str | os.PathLike[str]) -> Iterator[BadChunk]:
    """Check every chunk of an MCAP file against its stored CRC32 (where one is stored); yields
    the bad ones. Reads the whole file once."""
    layout = mcap_chunks(path)
    with open(layout.path, "rb") as f:
        for chunk in layout.chunks:
            problem = chunk_problem(f, chunk)
            if problem is not None:
                yield BadChunk(layout.path, chunk, problem, len(layout.chunks))


def add_chunk_crcs(path: str | os.PathLike[str]) -> int:
    """Store the CRC32 of every chunk that has none (0) in an MCAP file, in place; returns how
    many were added. For files whose writer does not compute them (``rosbags``)."""
    layout = mcap_chunks(path)
    added = 0
    with open(layout.path, "r+b") as f:
        for chunk in layout.chunks:
            if chunk.crc:
                continue
            f.seek(chunk.data_offset)
            raw = _decompress(f.read(chunk.data_size), chunk.compression, chunk.uncompressed_size)
            f.seek(chunk.offset + CRC_OFFSET)
            f.write(struct.pack("<I", zlib.crc32(raw) & 0xFFFFFFFF))
            added += 1
    return added
