"""Prediction inputs and outputs: images, folders and videos in; id PNGs, colour masks, overlays out.

:func:`iter_inputs` yields ``(stem, image)`` pairs from a single image, a folder (recursive,
sorted; a stem keeps the relative sub-path, ``"scene_a/000123"``) or a video file (stems
``frame_000000``, ``frame_000001`` ...). :class:`PredictionWriter` writes, per stem::

    DIR/ids/<stem>.png        (H, W) class ids, 8-bit (16-bit when an id exceeds 255)
    DIR/color/<stem>.png      (H, W, 3) RGB colour mask with the ontology palette
    DIR/overlay/<stem>.jpg    the image blended with the colour mask
    DIR/ontology.yaml         the ontology (written once), so DIR/ids can be read back

:class:`OverlayVideoWriter` writes overlays as one video. Every file is written atomically, and a
new writer first removes the temporaries an interrupted run left in these folders
(:func:`terraseg.io.atomic.remove_stale_temporaries`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import TracebackType

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.io.atomic import atomic_path, remove_stale_temporaries
from terraseg.io.images import read_image, write_image
from terraseg.io.labels import write_color_png, write_label_png
from terraseg.io.palette import write_palette
from terraseg.ontology import Ontology, encode_colors, get_ontology

INPUT_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""Image file suffixes (lower case) :func:`iter_inputs` reads."""

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
"""Video file suffixes (lower case) :func:`iter_inputs` reads through OpenCV."""


# ---------------------------------------------------------------------------------------------- inputs
def _list_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in INPUT_IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DataError(f"{folder}: no images found (looked for {', '.join(INPUT_IMAGE_SUFFIXES)} recursively)")
    seen: dict[str, Path] = {}
    for f in files:
        stem = f.relative_to(folder).with_suffix("").as_posix()
        if stem in seen:
            raise DataError(f"{f}: same name as {seen[stem]} (two images would give one prediction file)")
        seen[stem] = f
    return files


def _open_video(path: Path):  # type: ignore[no-untyped-def]  # cv2.VideoCapture
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise DataError(f"{path}: cannot open the video (unsupported codec or not a video file)")
    return cap


def _iter_video(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    import cv2

    cap = _open_video(path)
    try:
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
            else:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            yield f"frame_{i:06d}", np.ascontiguousarray(frame)
            i += 1
        if i == 0:
            raise DataError(f"{path}: the video has no readable frames")
    finally:
        cap.release()


def _classify(path: Path) -> str:
    if not path.exists():
        raise DataError(f"{path}: input not found")
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix in INPUT_IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    raise DataError(f"{path}: unknown input type {suffix or '(no suffix)'!r}; expected an image "
                    f"({', '.join(INPUT_IMAGE_SUFFIXES)}), a video ({', '.join(VIDEO_SUFFIXES)}) or a folder")


def iter_inputs(path: str | os.PathLike[str]) -> Iterator[tuple[str, np.ndarray]]:
    """``(stem, (H, W, 3) uint8 RGB image)`` for an image file, a folder of images or a video.

    Folders are searched recursively (hidden entries skipped) in sorted order; a stem is the
    path relative to the folder without suffix, with ``/`` separators. Video frames are
    ``frame_000000``, ``frame_000001`` ... The path is checked immediately; images are read
    lazily.

    Raises:
        DataError: a missing path, an unknown suffix, an empty folder, two images with one stem,
            an unreadable image or video.
    """
    p = Path(path)
    kind = _classify(p)
    if kind == "video":
        _open_video(p).release()
        return _iter_video(p)
    files = list_images(p)

    def gen() -> Iterator[tuple[str, np.ndarray]]:
        for stem, f in files:
            yield stem, read_image(f)

    return gen()


def list_images(path: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """``(stem, file)`` of an image file or of every image in a folder, as :func:`iter_inputs`
    names them, without reading them (so that a caller can skip an unreadable one).

    Raises:
        DataError: a missing path, a video or unknown suffix, an empty folder, two images with one stem.
    """
    p = Path(path)
    kind = _classify(p)
    if kind == "video":
        raise DataError(f"{p}: a video, not an image or a folder of images")
    root = p.parent if kind == "image" else p
    return [(f.relative_to(root).with_suffix("").as_posix(), f) for f in ([p] if kind == "image" else _list_images(p))]


def count_inputs(path: str | os.PathLike[str]) -> int | None:
    """How many items :func:`iter_inputs` yields (a video's frame count is the container's estimate, or None)."""
    p = Path(path)
    kind = _classify(p)
    if kind == "image":
        return 1
    if kind == "folder":
        return len(_list_images(p))
    import cv2

    cap = _open_video(p)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    return n if n > 0 else None


def video_fps(path: str | os.PathLike[str], default: float = 10.0) -> float:
    """Frame rate of a video file (``default`` when the container does not say)."""
    import cv2

    cap = _open_video(Path(path))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
    finally:
        cap.release()
    return fps if np.isfinite(fps) and fps > 0 else default


# ---------------------------------------------------------------------------------------------- outputs
def blend_overlay(image: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    """``(1 - alpha) * image + alpha * color`` rounded to (H, W, 3) uint8."""
    out = image.astype(np.float32) * (1.0 - alpha) + color.astype(np.float32) * alpha
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _check_stem(stem: str) -> str:
    s = str(stem).replace("\\", "/")
    parts = PurePosixPath(s).parts
    if not s or s.startswith("/") or any(part in ("", ".", "..") for part in parts) or ":" in parts[0]:
        raise DataError(f"invalid output stem {stem!r} (expected a relative name such as 'scene/000001')")
    return s


class PredictionWriter:
    """Write id PNGs, colour masks and overlays of predictions under ``out_dir`` (see the module docstring).

    Args:
        out_dir: the output folder.
        ontology: the label ontology of the ids (colours of the masks and overlays).
        ids, color, overlay: which outputs to write.
        alpha: overlay opacity of the colour mask (0 = the image, 1 = the colour mask).
        jpeg_quality: overlay JPEG quality (1..100).
    """

    def __init__(self, out_dir: str | os.PathLike[str], ontology: Ontology | str, *, ids: bool = True,
                 color: bool = True, overlay: bool = True, alpha: float = 0.5, jpeg_quality: int = 90) -> None:
        if not 0.0 <= float(alpha) <= 1.0:
            raise ConfigError(f"overlay alpha must be in [0, 1], got {alpha}")
        if not (ids or color or overlay):
            raise ConfigError("PredictionWriter: nothing to write (ids, color and overlay are all off)")
        if not 1 <= int(jpeg_quality) <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.out_dir = Path(out_dir)
        self.ontology = get_ontology(ontology)
        self.ids, self.color, self.overlay = bool(ids), bool(color), bool(overlay)
        self.alpha = float(alpha)
        self.jpeg_quality = int(jpeg_quality)
        self.count = 0
        # leftovers of an interrupted run into the same folder (.<stem>.<pid>-<random>.tmp.png ...)
        remove_stale_temporaries(self.out_dir)
        for sub in ("ids", "color", "overlay"):
            remove_stale_temporaries(self.out_dir / sub, recursive=True)

    def paths(self, stem: str) -> dict[str, Path]:
        """The files :meth:`write` produces for ``stem`` (only the enabled kinds)."""
        s = _check_stem(stem)
        out: dict[str, Path] = {}
        if self.ids:
            out["ids"] = self.out_dir / "ids" / f"{s}.png"
        if self.color:
            out["color"] = self.out_dir / "color" / f"{s}.png"
        if self.overlay:
            out["overlay"] = self.out_dir / "overlay" / f"{s}.jpg"
        return out

    def write(self, stem: str, image: np.ndarray, labels: np.ndarray) -> dict[str, Path]:
        """Write the outputs of one prediction and return their paths by kind (``ids``, ``color``, ``overlay``).

        Args:
            stem: relative output name without suffix (sub-folders allowed: ``"scene/000001"``).
            image: the (H, W, 3) uint8 RGB input.
            labels: (H, W) class ids of :attr:`ontology`.

        Raises:
            DataError: shapes that do not match, or ids that are not classes of the ontology.
        """
        paths = self.paths(stem)
        img, lab = np.asarray(image), np.asarray(labels)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise DataError(f"{stem}: image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
        if lab.shape != img.shape[:2]:
            raise DataError(f"{stem}: labels of shape {lab.shape} do not match the image {img.shape[:2]}")
        if lab.dtype.kind not in "ui":
            raise DataError(f"{stem}: labels must be integers, got dtype {lab.dtype}")
        rgb = encode_colors(lab, self.ontology, source=stem) if (self.color or self.overlay) else None
        if rgb is None:
            self.ontology.check_ids(lab, source=stem)
        if self.count == 0:  # once per writer: DIR/ids is then readable on its own
            write_palette(self.out_dir / "ontology.yaml", self.ontology)
        if "ids" in paths:
            write_label_png(paths["ids"], lab.astype(self.ontology.label_dtype, copy=False))
        if "color" in paths and rgb is not None:
            write_color_png(paths["color"], rgb)
        if "overlay" in paths and rgb is not None:
            write_image(paths["overlay"], blend_overlay(img, rgb, self.alpha), quality=self.jpeg_quality)
        self.count += 1
        return paths


class OverlayVideoWriter:
    """Write (H, W, 3) uint8 RGB frames to a video file, atomically (renamed into place on :meth:`close`).

    Use as a context manager; on an exception the partial video is discarded. The codec follows
    the suffix: ``.mp4`` / ``.m4v`` / ``.mov`` use ``mp4v``, ``.avi`` uses ``MJPG``. Every frame
    must have the size of the first.
    """

    _CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG"}

    def __init__(self, path: str | os.PathLike[str], fps: float = 10.0) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in self._CODECS:
            raise ConfigError(f"{self.path}: unsupported video suffix {suffix!r} (use {', '.join(self._CODECS)})")
        if not (np.isfinite(fps) and fps > 0):
            raise ConfigError(f"{self.path}: fps must be positive, got {fps}")
        self.fps = float(fps)
        self._ctx = atomic_path(self.path)
        self._tmp: Path | None = None
        self._writer = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def __enter__(self) -> OverlayVideoWriter:
        return self

    def write(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 RGB frame."""
        import cv2

        arr = np.asarray(frame)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise DataError(f"{self.path}: frame {self.frames} must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
        h, w = arr.shape[:2]
        if self._writer is None:
            self._tmp = self._ctx.__enter__()
            fourcc = cv2.VideoWriter_fourcc(*self._CODECS[self.path.suffix.lower()])
            self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, (w, h))
            if not self._writer.isOpened():
                self._abort(DataError(f"{self.path}: OpenCV cannot write this video format"))
            self._size = (h, w)
        elif (h, w) != self._size:
            raise DataError(f"{self.path}: frame {self.frames} is {w}x{h}, the video is "
                            f"{self._size[1]}x{self._size[0]}")  # type: ignore[index]
        self._writer.write(cv2.cvtColor(arr, cv2.COLOR_RGB2BGR))  # type: ignore[union-attr]
        self.frames += 1

    def _abort(self, exc: BaseException) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp is not None:
            self._ctx.__exit__(type(exc), exc, None)
            self._tmp = None
        raise exc

    def close(self) -> Path | None:
        """Finish the file and move it into place (nothing is written when no frame was given)."""
        if self._writer is None:
            return None
        self._writer.release()
        self._writer = None
        self._ctx.__exit__(None, None, None)
        self._tmp = None
        return self.path

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self.close()
            return
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp is not None:
            self._ctx.__exit__(exc_type, exc, tb)
            self._tmp = None
