"""Extract a ROS 1 / ROS 2 bag into terraseg's generic dataset layout.

:func:`extract_bag` keeps the stamps that have every requested stream (image, mask, points),
writes one file per stream and frame, and describes the run in an :class:`ExtractSummary`.
The layout's files (paths, id-mask PNGs, point files, timestamps, split lists, calibration,
ontology) come from :mod:`terraseg.datasets.generic_writer`, the one writer of the layout;
extraction adds only what bags need (compressed images copied byte for byte, decoding on
worker threads, resuming)::

    OUT/images/<stem>.png|.jpg         RGB images (compressed JPEG/PNG messages copied byte for byte)
    OUT/masks/<stem>.png               id masks (8-bit, or 16-bit when ids exceed 255)
    OUT/points/<stem>.bin              float32 x, y, z, intensity (0 when the cloud has none)
    OUT/points/<stem>.fields.npz       every other PointCloud2 field, native dtypes, N rows
    OUT/calib.yaml                     K, dist, image_size from CameraInfo
    OUT/ontology.yaml                  the ontology, when one is given
    OUT/timestamps.csv                 stem,timestamp_s[,split] (header line included)
    OUT/splits/<split>.txt             stems per split, when a split is requested
    OUT/skipped.txt                    bad messages skipped with skip_bad (topic, index, reason)
    OUT/extract_summary.json           kept / dropped messages per topic and why

Stems are the frame's stamp, ``<sec>_<nanosec>`` zero padded to 10 + 9 digits (for example
``1581624663_149000000``), so output is idempotent: a re-run rewrites nothing that is already complete
(identical bytes, unchanged mtimes), an interrupted run resumes where it stopped (and the
temporaries it was writing are removed), and every file is written atomically. Files of frames
that a later run with other options no longer keeps are left in place.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from terraseg.datasets.base import SPLITS
from terraseg.datasets.generic_writer import (
    COMPLETE_SUFFIXES,
    encode_id_mask,
    encode_point_files,
    layout_path,
    npz_bytes,
    stamp_seconds_text,
    stamp_stem,
    timestamps_text,
    write_dataset_calib,
    write_dataset_ontology,
    write_if_changed,
    write_split_lists,
)
from terraseg.errors import ConfigError, DataError
from terraseg.frame import Calibration
from terraseg.io.atomic import remove_stale_temporaries
from terraseg.io.bags.decode import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    IMAGE,
    POINTCLOUD2,
    decode_camera_info,
    decode_compressed_image,
    decode_image,
    decode_pointcloud2,
    parse_image_raw,
)
from terraseg.io.bags.reader import Bag, open_bag
from terraseg.io.bags.sync import KEPT, REASONS, synchronize
from terraseg.io.calib import calibration_to_dict
from terraseg.io.png import encode_png
from terraseg.ontology import Ontology, decode_colors, get_ontology
from terraseg.progress import ProgressBar

MaskMode = Literal["id", "red", "color"]
FRAME_ROLES: tuple[str, ...] = ("image", "mask", "points")
ROLE_TYPES: dict[str, tuple[str, ...]] = {
    "image": (IMAGE, COMPRESSED_IMAGE),
    "mask": (IMAGE, COMPRESSED_IMAGE),
    "points": (POINTCLOUD2,),
    "camera_info": (CAMERA_INFO,),
}
DECODE_ERROR = "decode_error"
PARTNER_SKIPPED = "partner_skipped"
OUTSIDE_SPLIT = "outside_split"
CALIB_DIFFERS = "calibration_differs"
DROP_REASONS: dict[str, str] = {
    **REASONS,
    DECODE_ERROR: "the message could not be decoded (skipped with skip_bad, listed in skipped.txt)",
    PARTNER_SKIPPED: "a message of the same frame could not be decoded",
    OUTSIDE_SPLIT: "the frame lies in none of the split time ranges",
    CALIB_DIFFERS: "camera info differs from the first one, which calib.yaml holds",
}
"""Why :func:`extract_bag` leaves a message out (keys of :attr:`TopicSummary.dropped`)."""

__all__ = ["DROP_REASONS", "ExtractSummary", "SkippedMessage", "TopicSummary", "extract_bag", "npz_bytes", "stem_of"]


# ---------------------------------------------------------------------------- summary
@dataclass
class TopicSummary:
    """Messages of one topic: how many were kept in frames and how many were dropped, by reason."""

    role: str
    topic: str
    msgtype: str
    messages: int
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedMessage:
    """A bad message skipped with ``skip_bad``."""

    topic: str
    index: int
    reason: str


@dataclass
class ExtractSummary:
    """What :func:`extract_bag` kept and dropped.

    ``written``, ``existing`` and ``seconds`` describe this run only (frames written now, frames
    already complete on disk, wall time) and are left out of ``extract_summary.json`` so that a
    re-run leaves that file unchanged.
    """

    bag: str
    out_dir: str
    frames: int
    splits: dict[str, int]
    topics: list[TopicSummary]
    skipped: list[SkippedMessage]
    options: dict[str, Any]
    max_dt_ms: float | None = None
    calibration: dict[str, Any] | None = None
    written: int = 0
    existing: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The deterministic part, as saved in ``extract_summary.json``."""
        d = asdict(self)
        for k in ("written", "existing", "seconds"):
            d.pop(k)
        d["drop_reasons"] = {r: DROP_REASONS[r] for r in sorted({r for t in self.topics for r in t.dropped})}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def table(self) -> Any:
        """A rich Table: one row per topic with kept and dropped counts."""
        from rich.table import Table

        t = Table(title=f"extract {Path(self.bag).name} -> {self.out_dir}", title_justify="left")
        for col, just in (("role", "left"), ("topic", "left"), ("type", "left"), ("messages", "right"),
                          ("kept", "right"), ("dropped (why)", "left")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for ts in self.topics:
            why = ", ".join(f"{n} {r}" for r, n in sorted(ts.dropped.items())) or "-"
            t.add_row(ts.role, ts.topic, ts.msgtype.split("/")[-1], str(ts.messages), str(ts.kept), why)
        splits = ", ".join(f"{k} {v}" for k, v in self.splits.items())
        dt = "-" if self.max_dt_ms is None else f"{self.max_dt_ms:.3f} ms"
        t.caption = (f"{self.frames} frames{f' ({splits})' if splits else ''}; written now {self.written}, "
                     f"already on disk {self.existing}; max |dt| {dt}; skipped {len(self.skipped)} bad messages; "
                     f"{self.seconds:.1f} s")
        t.caption_justify = "left"
        return t

    def __rich__(self) -> Any:
        return self.table()

    def print(self, console: Any = None) -> None:
        """Print the table to ``console`` (a rich Console; stdout when None)."""
        from rich.console import Console

        (console or Console()).print(self.table())


# ---------------------------------------------------------------------------- helpers
@dataclass
class _Stream:
    role: str
    topic: str
    msgtype: str
    count: int


class _BadMessage(Exception):
    def __init__(self, topic: str, index: int, error: DataError) -> None:
        super().__init__(str(error))
        self.topic, self.index, self.error = topic, index, error


stem_of = stamp_stem
"""File stem of a frame stamp (:func:`terraseg.datasets.generic_writer.stamp_stem`)."""


def _listing(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except FileNotFoundError:
        return set()


def _parse_split(split: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """Validate ``split``: ``("none"|"fractions"|"ranges", normalised spec)``."""
    if split is None:
        return "none", {}
    if not isinstance(split, Mapping) or not split:
        raise ConfigError(f"split must be a non-empty mapping such as {{'train': 0.8, 'val': 0.1, 'test': 0.1}}, "
                          f"got {split!r}")
    unknown = [k for k in split if k not in SPLITS]
    if unknown:
        raise ConfigError(f"unknown split names {unknown} (expected {', '.join(SPLITS)})")
    values = list(split.values())
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        fr = {k: float(v) for k, v in split.items()}
        if any(v < 0 for v in fr.values()) or not math.isclose(sum(fr.values()), 1.0, abs_tol=1e-6):
            raise ConfigError(f"split fractions must be >= 0 and sum to 1, got {fr}")
        return "fractions", fr
    ranges: dict[str, tuple[float, float]] = {}
    for k, v in split.items():
        try:
            lo, hi = v
            lo = 0.0 if lo is None else float(lo)
            hi = math.inf if hi is None else float(hi)
        except (TypeError, ValueError):
            raise ConfigError(f"split {k!r}: expected a fraction or a (start_s, end_s) time range, got {v!r}") from None
        if hi <= lo:
            raise ConfigError(f"split {k!r}: time range end {hi} must be after its start {lo}")
        ranges[k] = (lo, hi)
    items = sorted(ranges.items(), key=lambda kv: kv[1][0])
    for (a, (_, a_hi)), (b, (b_lo, _)) in zip(items, items[1:]):
        if b_lo < a_hi:
            raise ConfigError(f"split time ranges {a!r} and {b!r} overlap")
    return "ranges", ranges


def _assign_splits(kind: str, spec: dict[str, Any], stamps: np.ndarray, t0_ns: int) -> np.ndarray:
    """Split name per frame (object array, "" = outside every range). Frames are time-sorted."""
    out = np.full(len(stamps), "", dtype=object)
    if kind == "fractions":
        bounds = np.round(np.cumsum(list(spec.values())) * len(stamps)).astype(int)
        start = 0
        for name, end in zip(spec, bounds):
            out[start:end] = name
            start = end
        out[start:] = list(spec)[-1]
    elif kind == "ranges":
        rel = (stamps - t0_ns) / 1e9
        for name, (lo, hi) in spec.items():
            out[(rel >= lo) & (rel < hi)] = name
    return out


# ---------------------------------------------------------------------------- frame work
@dataclass
class _Job:
    """One frame to write: its stem and, per role still missing on disk, (topic, msgtype, index, raw)."""

    stem: str
    raws: dict[str, tuple[str, str, int, bytes]]


_Output = tuple[str, str, bytes]  # (layout folder, file suffix, file contents)


def _passthrough_suffix(data: bytes) -> str | None:
    """``.jpg`` for JPEG, ``.png`` for 8-bit RGB PNG data (stored byte for byte), else None."""
    if data[:3] == b"\xff\xd8\xff":
        return ".jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[24] == 8 and data[25] == 2:
        return ".png"
    return None


class _FrameWriter:
    """Decodes the messages of one frame and writes its files (called from worker threads).

    All messages of a frame are decoded and encoded before the first file is written, so a
    bad message leaves no file of its frame behind.
    """

    def __init__(self, bag: Bag, out: Path, mask_mode: str, onto: Ontology | None, image_format: str,
                 png_level: int, jpeg_quality: int, drop_invalid: bool) -> None:
        self.bag, self.out, self.mask_mode, self.onto = bag, out, mask_mode, onto
        self.image_format, self.png_level, self.jpeg_quality = image_format, png_level, jpeg_quality
        self.drop_invalid = drop_invalid

    def _image(self, msg: Any, msgtype: str, where: str) -> tuple[list[_Output], tuple[int, ...]]:
        if msgtype == COMPRESSED_IMAGE:
            arr = decode_compressed_image(msg, where)
            data = np.asarray(msg.data, dtype=np.uint8).tobytes()
            suffix = _passthrough_suffix(data)
            if suffix and arr.ndim == 3 and self.image_format in ("auto", suffix[1:]):
                return [("images", suffix, data)], arr.shape[:2]
        else:
            arr = decode_image(msg, where, copy=False)
        if arr.ndim == 2 and arr.dtype == np.uint8:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.dtype != np.uint8:
            enc = getattr(msg, "encoding", getattr(msg, "format", "?"))
            raise DataError(f"{where}: image topic must carry colour or 8-bit grey images, got {arr.dtype} "
                            f"{'x'.join(map(str, arr.shape))} (encoding {enc!r})")
        if self.image_format == "jpg":
            from PIL import Image as PILImage

            buf = io.BytesIO()
            PILImage.fromarray(arr).save(buf, format="JPEG", quality=self.jpeg_quality)
            return [("images", ".jpg", buf.getvalue())], arr.shape[:2]
        return [("images", ".png", encode_png(arr, self.png_level))], arr.shape[:2]

    def _mask(self, msg: Any, msgtype: str, where: str) -> tuple[list[_Output], tuple[int, ...]]:
        arr = decode_compressed_image(msg, where) if msgtype == COMPRESSED_IMAGE else decode_image(msg, where, copy=False)
        enc = getattr(msg, "encoding", getattr(msg, "format", "?"))
        if arr.dtype.kind == "f":
            raise DataError(f"{where}: mask has floating-point encoding {enc!r}; expected integer class ids")
        if self.mask_mode == "color":
            if arr.ndim != 3:
                raise DataError(f"{where}: mask_mode 'color' needs a colour mask, got single-channel {enc!r}")
            assert self.onto is not None
            ids = decode_colors(arr, self.onto, unknown="error", source=where)
        elif arr.ndim == 3 and self.mask_mode == "red":
            ids = np.ascontiguousarray(arr[..., 0])
        elif arr.ndim == 3:
            if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
                raise DataError(f"{where}: mask has colour encoding {enc!r} with differing channels; use "
                                "mask_mode='red' (class id in the red channel, e.g. CARLA) or mask_mode='color' "
                                "with an ontology (palette colours)")
            ids = np.ascontiguousarray(arr[..., 0])
        else:
            ids = arr
        if self.onto is not None and self.mask_mode != "color":
            self.onto.check_ids(ids, source=where)
        if ids.dtype != np.uint8:
            ids = ids.astype(np.uint8) if (ids.size == 0 or int(ids.max()) <= 255) else ids.astype(np.uint16)
        return [("masks", ".png", encode_id_mask(ids, self.png_level))], ids.shape[:2]

    def _points(self, msg: Any, msgtype: str, where: str) -> tuple[list[_Output], tuple[int, ...]]:
        cloud = decode_pointcloud2(msg, where, drop_invalid=self.drop_invalid)
        # the generic layout's point files, the .bin last: it marks the frame's points complete
        return [("points", suffix, data) for suffix, data in encode_point_files(cloud.xyzi(), cloud.extra_fields())], ()

    def __call__(self, job: _Job) -> None:
        outputs: list[_Output] = []
        sizes: dict[str, tuple[int, ...]] = {}
        for role in FRAME_ROLES:
            if role not in job.raws:
                continue
            topic, msgtype, index, raw = job.raws[role]
            where = self.bag.where(topic, index)
            try:
                msg = parse_image_raw(raw, self.bag.ros_version) if msgtype == IMAGE else None
                if msg is None:
                    msg = self.bag.deserialize(raw, msgtype, where)
                files, size = getattr(self, f"_{role}")(msg, msgtype, where)
                if role == "mask" and "image" in sizes and sizes["image"] != size:
                    ih, iw = sizes["image"]
                    raise DataError(f"{where}: mask is {size[1]}x{size[0]} but the frame's image is {iw}x{ih}")
            except DataError as exc:
                if where not in str(exc):  # e.g. an encoder error: name the message
                    exc = DataError(f"{where}: {exc}")
                raise _BadMessage(topic, index, exc) from None
            sizes[role] = size
            outputs.extend(files)
        for folder, suffix, data in outputs:
            write_if_changed(layout_path(self.out, folder, job.stem, suffix), data)  # e.g. a .fields.npz kept


def _run_frames(b: Bag, writer: _FrameWriter, frame_streams: list[_Stream], need: dict[str, dict[int, int]],
                missing_roles: list[list[int]], todo: list[int], stems: list[str], n_workers: int, skip_bad: bool,
                failed: dict[int, _BadMessage], bar: ProgressBar) -> None:
    """Pass 2: gather the raw messages of each frame to write, hand complete frames to the
    thread pool (at most ``2 * n_workers`` in flight) and collect results in submission order,
    so without ``skip_bad`` the first bad frame (in bag order) raises."""
    role_of = {s.topic: s.role for s in frame_streams}
    pending: dict[int, dict[str, tuple[str, str, int, bytes]]] = {}
    remaining = {f: len(missing_roles[f]) for f in todo}
    queue: deque[tuple[int, Future[None]]] = deque()

    def collect() -> None:
        f, fut = queue.popleft()
        try:
            fut.result()
        except _BadMessage as exc:
            if not skip_bad:
                raise exc.error from None
            failed[f] = exc
        bar.advance()

    left = len(todo)
    messages = b.raw_messages([s.topic for s in frame_streams if need[s.topic]])
    with ThreadPoolExecutor(n_workers) as pool:
        try:
            for topic, msgtype, i, _t, raw in messages:
                f = need[topic].get(i)
                if f is None:
                    continue
                pending.setdefault(f, {})[role_of[topic]] = (topic, msgtype, i, raw)
                remaining[f] -= 1
                if remaining[f]:
                    continue
                queue.append((f, pool.submit(writer, _Job(stems[f], pending.pop(f)))))
                left -= 1
                while len(queue) > 2 * n_workers:
                    collect()
                if not left:
                    break
            while queue:
                collect()
        except BaseException:
            for _, fut in queue:
                fut.cancel()
            raise
        finally:
            messages.close()


# ---------------------------------------------------------------------------- main entry
def _resolve_streams(bag: Bag, topics: dict[str, str | None]) -> list[_Stream]:
    given = {r: t for r, t in topics.items() if t}
    if not given:
        raise ConfigError(f"{bag.path}: give at least one of image_topic, mask_topic, points_topic, "
                          f"camera_info_topic; available topics: {bag.describe_topics()}")
    seen: dict[str, str] = {}
    for role, topic in given.items():
        if topic in seen:
            raise ConfigError(f"topic {topic!r} is given as both {seen[topic]} and {role} topic")
        seen[topic] = role
    streams = []
    for role, topic in given.items():
        info = bag.topic(topic, ROLE_TYPES[role])
        streams.append(_Stream(role, topic, info.msgtype, info.count))
    return streams


def extract_bag(bag: str | os.PathLike[str], out_dir: str | os.PathLike[str], image_topic: str | None = None,
                mask_topic: str | None = None, points_topic: str | None = None,
                camera_info_topic: str | None = None, tolerance_ms: float = 0.0,
                split: Mapping[str, float | Sequence[float | None]] | None = None, mask_mode: MaskMode = "id",
                ontology: Ontology | str | None = None, skip_bad: bool = False, progress: bool = True, *,
                time_source: Literal["header", "receive"] = "header",
                image_format: Literal["auto", "png", "jpg"] = "auto", png_compress_level: int = 1,
                jpeg_quality: int = 95, drop_invalid_points: bool = True, overwrite: bool = False,
                workers: int | None = None) -> ExtractSummary:
    """Extract synchronised image / mask / point cloud frames (and calibration) from a bag.

    Args:
        bag: ROS 1 ``.bag`` file or ROS 2 bag (folder, ``.db3`` or ``.mcap``).
        out_dir: output folder (generic layout, see the module docstring); created if needed.
        image_topic: ``sensor_msgs/Image`` or ``CompressedImage`` topic of the camera.
        mask_topic: ``Image`` / ``CompressedImage`` topic of the segmentation masks.
        points_topic: ``sensor_msgs/PointCloud2`` topic.
        camera_info_topic: ``sensor_msgs/CameraInfo`` topic; its first message becomes
            ``calib.yaml`` (it is not synchronised with the frames).
        tolerance_ms: 0 keeps only exactly equal stamps; otherwise each reference message
            (image, else mask, else points) is paired with the nearest unused message of every
            other stream within this many milliseconds (closest pairs first, each message used
            at most once). Frames take the reference message's stamp.
        split: None (no split), fractions such as ``{"train": 0.8, "val": 0.1, "test": 0.1}``
            assigned to time-contiguous blocks in the mapping's order, or time ranges
            ``{"train": (0, 60), "val": (60, 75), "test": (75, None)}``: half-open [start, end)
            in seconds since the earliest stamp of the requested streams (frames in no range
            are dropped). Written to ``splits/<name>.txt`` and the ``split`` column of
            ``timestamps.csv``; files are not moved into split folders.
        mask_mode: ``id``: single-channel masks hold class ids (grey 3-channel masks are
            accepted); ``red``: the class id is the red channel (CARLA's semantic camera, e.g.
            ``/carla/hero/semantic_segmentation_front/image`` with encoding bgra8); ``color``:
            palette colours decoded with ``ontology`` (unknown colours are errors).
        ontology: ontology (name, YAML path or object): ids are checked against it and it is
            written to ``ontology.yaml``. Required for ``mask_mode="color"``.
        skip_bad: skip messages that fail to decode and corrupted MCAP chunks (their frames are
            dropped and listed in ``skipped.txt``, a warning names each chunk); without it the
            first bad message or chunk raises :class:`DataError` naming the bag, topic, message
            index (or chunk) and the problem.
        progress: show progress bars.
        time_source: ``header`` (``header.stamp``) or ``receive`` (bag record time, for bags
            whose header stamps are unset).
        image_format: ``auto`` copies JPEG/PNG ``CompressedImage`` data byte for byte and writes
            raw images as PNG; ``png`` / ``jpg`` always re-encode.
        png_compress_level: 0-9 for written PNGs; 1 (default) is fast (ISA-L deflate when the
            ``isal`` package is installed) and lossless like every level.
        jpeg_quality: quality for ``image_format="jpg"``.
        drop_invalid_points: drop points with NaN / infinite x, y or z (the ``.bin`` format
            cannot hold "no return" points); False keeps organised clouds whole.
        overwrite: rewrite frames whose files already exist (default: keep them).
        workers: decode + encode threads (numpy, ISA-L/zlib and file writes release the GIL);
            default ``CPUs + 1`` (at most 8): one more than the cores keeps them busy while
            the main thread reads the bag.

    Returns:
        An :class:`ExtractSummary` (also saved as ``extract_summary.json``).

    Raises:
        DataError: missing topic (listing the available ones), wrong message type, or a bad
            message without ``skip_bad``.
        ConfigError: invalid options.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    if mask_mode not in ("id", "red", "color"):
        raise ConfigError(f"mask_mode must be 'id', 'red' or 'color', got {mask_mode!r}")
    if time_source not in ("header", "receive"):
        raise ConfigError(f"time_source must be 'header' or 'receive', got {time_source!r}")
    if image_format not in ("auto", "png", "jpg"):
        raise ConfigError(f"image_format must be 'auto', 'png' or 'jpg', got {image_format!r}")
    if not 0 <= int(png_compress_level) <= 9:
        raise ConfigError(f"png_compress_level must be 0..9, got {png_compress_level}")
    if not tolerance_ms >= 0:
        raise ConfigError(f"tolerance_ms must be >= 0, got {tolerance_ms}")
    onto = None if ontology is None else get_ontology(ontology)
    if mask_mode == "color" and onto is None:
        raise ConfigError("mask_mode='color' needs an ontology whose palette decodes the mask colours")
    split_kind, split_spec = _parse_split(split)
    n_workers = max(1, workers if workers is not None else min(8, (os.cpu_count() or 1) + 1))
    tol_ns = int(round(tolerance_ms * 1e6))

    with open_bag(bag) as b:
        b.skip_corrupted = skip_bad
        streams = _resolve_streams(b, {"image": image_topic, "mask": mask_topic, "points": points_topic,
                                       "camera_info": camera_info_topic})
        frame_streams = [s for s in streams if s.role in FRAME_ROLES]
        plan = _plan_frames(b, frame_streams, time_source == "receive", tol_ns, split_kind, split_spec, skip_bad,
                            progress)
        for folder in (out, out / "images", out / "masks", out / "points", out / "splits"):
            remove_stale_temporaries(folder)  # what an interrupted run was writing: rewritten below
        need, missing_roles, todo = _missing_files(out, plan.stems, plan.frames, frame_streams, overwrite)
        for folder, role in (("images", "image"), ("masks", "mask"), ("points", "points")):
            if any(s.role == role for s in frame_streams):
                (out / folder).mkdir(parents=True, exist_ok=True)

        writer = _FrameWriter(b, out, mask_mode, onto, image_format, int(png_compress_level), jpeg_quality,
                              drop_invalid_points)
        failed: dict[int, _BadMessage] = {}
        if todo:
            with ProgressBar(len(todo), "extracting frames", enabled=progress) as bar:
                _run_frames(b, writer, frame_streams, need, missing_roles, todo, plan.stems, n_workers, skip_bad,
                            failed, bar)
        plan.drop_failed(failed, frame_streams)

        ci_stream = next((s for s in streams if s.role == "camera_info"), None)
        calib, calib_info = None, None
        if ci_stream is not None:
            calib, calib_info = _read_calibration(b, ci_stream, skip_bad, plan)
        listed = {(sk.topic, sk.index) for sk in plan.skipped}
        for chunk in b.skipped_chunks:  # messages lost with a corrupted MCAP chunk (skip_bad)
            for topic, i in chunk.indices():
                if (topic, i) not in listed:
                    listed.add((topic, i))
                    plan.skipped.append(SkippedMessage(topic, i, chunk.description))
        plan.skipped.sort(key=lambda sk: (sk.topic, sk.index))
        splits_count = _write_metadata(out, plan.stems, plan.stamps, plan.split_of, split_kind, split_spec, calib,
                                       onto, plan.skipped, bool(frame_streams))
        summary = ExtractSummary(
            bag=str(Path(bag).resolve()), out_dir=str(out.resolve()), frames=len(plan.stems), splits=splits_count,
            topics=_topic_summaries(streams, plan.reasons), skipped=plan.skipped,
            options={"tolerance_ms": tolerance_ms, "time_source": time_source, "mask_mode": mask_mode,
                     "ontology": None if onto is None else onto.name, "split": _jsonable(split),
                     "image_format": image_format, "png_compress_level": int(png_compress_level),
                     "drop_invalid_points": drop_invalid_points},
            max_dt_ms=float(np.abs(plan.dts).max()) / 1e6 if plan.dts.size else None,
            calibration=calib_info, written=len(todo) - len(failed), existing=len(plan.stems) + len(failed) - len(todo),
        )
        write_if_changed(out / "extract_summary.json", summary.to_json().encode())
        summary.seconds = time.perf_counter() - t_start
        return summary


@dataclass
class _Plan:
    """The frames to extract: per frame the message index of every stream, its stamp and split,
    plus the fate (reason) of every message and the bad messages skipped so far."""

    frames: np.ndarray  # (F, S) int64 message indices
    stamps: np.ndarray  # (F,) int64 ns
    dts: np.ndarray  # (F, S) int64 ns, member stamp minus frame stamp
    split_of: np.ndarray  # (F,) split names ("" without split)
    reasons: dict[str, np.ndarray] = field(default_factory=dict)  # topic -> reason per message
    skipped: list[SkippedMessage] = field(default_factory=list)

    @property
    def stems(self) -> list[str]:
        return [stem_of(st) for st in self.stamps.tolist()]

    def keep(self, mask: np.ndarray) -> None:
        self.frames, self.stamps, self.dts, self.split_of = (self.frames[mask], self.stamps[mask], self.dts[mask],
                                                            self.split_of[mask])

    def drop_failed(self, failed: dict[int, _BadMessage], frame_streams: list[_Stream]) -> None:
        """Remove frames with a message that failed to decode (skip_bad) and record why."""
        keep = np.ones(len(self.stamps), dtype=bool)
        for f, exc in sorted(failed.items()):
            keep[f] = False
            self.skipped.append(SkippedMessage(exc.topic, exc.index, str(exc.error)))
            for k, s in enumerate(frame_streams):
                idx = int(self.frames[f, k])
                bad = s.topic == exc.topic and idx == exc.index
                self.reasons[s.topic][idx] = DECODE_ERROR if bad else PARTNER_SKIPPED
        self.keep(keep)


def _plan_frames(b: Bag, frame_streams: list[_Stream], receive_time: bool, tol_ns: int, split_kind: str,
                 split_spec: dict[str, Any], skip_bad: bool, progress: bool) -> _Plan:
    """Pass 1: read the stamp of every message (header bytes only), synchronise, assign splits."""
    good: dict[str, list[int]] = {s.topic: [] for s in frame_streams}
    stamps: dict[str, list[int]] = {s.topic: [] for s in frame_streams}
    skipped: list[SkippedMessage] = []
    n = len(frame_streams)
    empty = _Plan(np.zeros((0, n), np.int64), np.zeros(0, np.int64), np.zeros((0, n), np.int64),
                  np.zeros(0, dtype=object), skipped=skipped)
    if not frame_streams:
        return empty
    with ProgressBar(sum(s.count for s in frame_streams), f"scanning {b.path.name}", enabled=progress) as bar:
        for topic, i, _t, st, error in b.stamps([s.topic for s in frame_streams], receive_time=receive_time):
            if error is not None:
                if not skip_bad:
                    raise error
                skipped.append(SkippedMessage(topic, i, str(error)))
            else:
                good[topic].append(i)
                stamps[topic].append(st)
            bar.advance()
    sync = synchronize([np.asarray(stamps[s.topic], dtype=np.int64) for s in frame_streams], tol_ns)
    idx_maps = [np.asarray(good[s.topic], dtype=np.int64) for s in frame_streams]
    frames = np.stack([idx_maps[k][sync.frames[:, k]] for k in range(n)], axis=1) if len(sync.frames) \
        else empty.frames
    plan = _Plan(frames, sync.stamps, sync.dt_ns, np.zeros(0, dtype=object), skipped=skipped)
    for k, s in enumerate(frame_streams):
        r = np.full(s.count, DECODE_ERROR, dtype=object)  # messages without a readable header keep this
        r[idx_maps[k]] = sync.reasons[k]
        plan.reasons[s.topic] = r
    all_stamps = [x for s in frame_streams for x in stamps[s.topic]]
    plan.split_of = _assign_splits(split_kind, split_spec, plan.stamps, min(all_stamps) if all_stamps else 0)
    if split_kind == "ranges":
        inside = plan.split_of != ""
        for k, s in enumerate(frame_streams):
            plan.reasons[s.topic][plan.frames[~inside, k]] = OUTSIDE_SPLIT
        plan.keep(inside)
    return plan


def _missing_files(out: Path, stems: list[str], frames: np.ndarray, frame_streams: list[_Stream], overwrite: bool
                   ) -> tuple[dict[str, dict[int, int]], list[list[int]], list[int]]:
    """Which files are missing on disk: ``(topic -> {message index: frame}, per frame the
    missing stream columns, frames with anything missing)``."""
    listings = {role: _listing(out / folder) for role, folder in
                (("image", "images"), ("mask", "masks"), ("points", "points"))}

    folders = {"image": "images", "mask": "masks", "points": "points"}

    def done(role: str, stem: str) -> bool:
        return not overwrite and any(stem + e in listings[role] for e in COMPLETE_SUFFIXES[folders[role]])

    need: dict[str, dict[int, int]] = {s.topic: {} for s in frame_streams}
    missing_roles: list[list[int]] = []
    for f, stem in enumerate(stems):
        miss = [k for k, s in enumerate(frame_streams) if not done(s.role, stem)]
        missing_roles.append(miss)
        for k in miss:
            need[frame_streams[k].topic][int(frames[f, k])] = f
    return need, missing_roles, [f for f, miss in enumerate(missing_roles) if miss]


def _read_calibration(b: Bag, stream: _Stream, skip_bad: bool, plan: _Plan
                      ) -> tuple[Calibration | None, dict[str, Any] | None]:
    """The first decodable CameraInfo; later ones that differ are counted as ``calibration_differs``."""
    calib: Calibration | None = None
    info: dict[str, Any] | None = None
    reasons = np.full(stream.count, KEPT, dtype=object)
    for topic, msgtype, i, _t, raw in b.raw_messages(stream.topic):
        where = b.where(topic, i)
        try:
            c = decode_camera_info(b.deserialize(raw, msgtype, where), where)
        except DataError as exc:
            if not skip_bad:
                raise
            plan.skipped.append(SkippedMessage(topic, i, str(exc)))
            reasons[i] = DECODE_ERROR
            continue
        if calib is None:
            calib, info = c, {"topic": topic, "index": i, **calibration_to_dict(c)}
        elif not _same_calib(calib, c):
            reasons[i] = CALIB_DIFFERS
    plan.reasons[stream.topic] = reasons
    return calib, info


def _topic_summaries(streams: list[_Stream], reasons: dict[str, np.ndarray]) -> list[TopicSummary]:
    out = []
    for s in streams:
        r = reasons.get(s.topic, np.zeros(0, dtype=object))
        names, counts = np.unique(r.astype(str), return_counts=True) if len(r) else ([], [])
        tally = {str(n): int(c) for n, c in zip(names, counts)}
        kept = tally.pop(KEPT, 0)
        out.append(TopicSummary(s.role, s.topic, s.msgtype, s.count, kept, dict(sorted(tally.items()))))
    return out


def _same_calib(a: Calibration, b: Calibration) -> bool:
    def eq(x: np.ndarray | None, y: np.ndarray | None) -> bool:
        return (x is None) == (y is None) and (x is None or (x.shape == y.shape and np.allclose(x, y)))

    return eq(a.K, b.K) and eq(a.dist, b.dist) and a.image_size == b.image_size


def _jsonable(split: Any) -> Any:
    if split is None:
        return None
    return {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in split.items()}


def _write_metadata(out: Path, stems: list[str], stamps: np.ndarray, split_of: np.ndarray, split_kind: str,
                    split_spec: dict[str, Any], calib: Calibration | None, onto: Ontology | None,
                    skipped: list[SkippedMessage], has_frames: bool) -> dict[str, int]:
    """timestamps.csv, splits/*.txt, calib.yaml, ontology.yaml, skipped.txt (rewritten only on change)."""
    out.mkdir(parents=True, exist_ok=True)
    with_split = split_kind != "none"
    if has_frames:
        rows = ((stem, stamp_seconds_text(st), sp if with_split else None)
                for stem, st, sp in zip(stems, stamps.tolist(), split_of.tolist()))
        write_if_changed(out / "timestamps.csv", timestamps_text(rows).encode())
    counts: dict[str, int] = {}
    if with_split:
        members = {name: [s for s, sp in zip(stems, split_of.tolist()) if sp == name] for name in split_spec}
        counts = {name: len(m) for name, m in members.items()}
        write_split_lists(out, members)
    if calib is not None:
        write_dataset_calib(out, calib, replace=True)  # the bag's first CameraInfo
    if onto is not None:
        write_dataset_ontology(out, onto, replace=True)
    skipped_path = out / "skipped.txt"
    if skipped:
        text = "# topic\tindex\treason\n" + "".join(f"{s.topic}\t{s.index}\t{s.reason}\n" for s in skipped)
        write_if_changed(skipped_path, text.encode())
    elif skipped_path.is_file():
        skipped_path.unlink()
    return counts
