"""Convert a folder of RGB colour masks into single-channel id masks with a palette.

Many datasets ship their annotations as colour images (one RGB colour per class, plus a colour
map file). Training and evaluation want id masks (one class id per pixel). ``convert_color_masks``
decodes every PNG under a folder with a palette (any file :func:`terraseg.ontology.get_ontology`
reads: a palette CSV / TXT / JSON / YAML, a terraseg ontology, or a built-in name) and writes
8-bit (ids up to 255) or 16-bit PNGs of the same relative names into a new folder.

The output appears all at once: files are written into a hidden temporary folder next to the
destination, which is renamed to the destination only when every mask was converted. A failure
(an unknown colour, an unreadable file) leaves no partial output behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from terraseg.errors import ConfigError, DataError
from terraseg.io.atomic import _umask
from terraseg.io.labels import read_color_png, write_label_png
from terraseg.ontology import Ontology, decode_colors, get_ontology
from terraseg.progress import ProgressBar

_ID_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")
"""Image modes that hold one value per pixel: already id masks, not colour masks."""


@dataclass
class ConversionReport:
    """What :func:`convert_color_masks` did.

    Attributes:
        out: the folder of id masks.
        palette: the ontology whose ids were written.
        files: the id masks written, in order.
        pixels: pixels converted in all.
        unknown_pixels: pixels whose colour was not in the palette (mapped to ``unknown``).
        class_pixels: pixel count per class id (index = id; the last entries cover a fill id).
    """

    out: Path
    palette: Ontology
    files: list[Path] = field(default_factory=list)
    pixels: int = 0
    unknown_pixels: int = 0
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def _list_masks(src: Path) -> list[Path]:
    if src.is_file():
        if src.suffix.lower() != ".png":
            raise DataError(f"{src}: not a PNG colour mask (JPEG and other lossy formats change colours)")
        return [src]
    if not src.is_dir():
        raise DataError(f"{src}: colour mask folder not found")
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() == ".png"
                   and not any(part.startswith(".") for part in p.relative_to(src).parts))
    if not files:
        lossy = [p for p in src.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")]
        hint = f" ({len(lossy)} JPEG files found: colour masks must be lossless PNGs)" if lossy else ""
        raise DataError(f"{src}: no PNG colour masks found{hint}")
    return files


def _decode(path: Path, palette: Ontology, unknown: str | int) -> tuple[np.ndarray, int]:
    """(ids, pixels of unknown colours) of one colour mask."""
    try:
        with Image.open(path) as img:
            mode = img.mode
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: unreadable or truncated image ({exc})") from None
    if mode in _ID_MODES:
        raise DataError(f"{path}: single-channel image (mode {mode}): already an id mask, not an RGB colour mask")
    rgb = read_color_png(path)
    if unknown == "error":
        try:
            return decode_colors(rgb, palette, "error", source=str(path)), 0
        except DataError as exc:
            msg = str(exc).replace(" (map unknown colours to void explicitly to accept them)", "")
            raise DataError(f"{msg}; map them with --unknown-void or --unknown-id N (e.g. 255), or add them to "
                            "the palette") from None
    ids = decode_colors(rgb, palette, unknown, source=str(path), any_fill_id=True)
    keys = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    pal_keys = np.array([(r << 16) | (g << 8) | b for r, g, b in (c.color for c in palette)], dtype=np.uint32)
    return ids, int((~np.isin(keys, pal_keys)).sum())


def _temporary_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


def convert_color_masks(src: str | os.PathLike[str], out: str | os.PathLike[str],
                        palette: Ontology | str | os.PathLike[str], *, unknown: str | int = "error",
                        workers: int = 4, progress: bool = False) -> ConversionReport:
    """Decode every PNG colour mask under ``src`` with ``palette`` into id masks under ``out``.

    Args:
        src: a folder (searched recursively; hidden files skipped) or one PNG file.
        out: the destination folder; it must not exist yet or be empty, and must not lie inside
            ``src``. Relative names (sub-folders included) are kept; every output is a PNG.
        palette: the colours and ids: an :class:`Ontology`, a built-in name, or an ontology /
            palette file of any supported format.
        unknown: colours not in the palette: ``"error"`` (default: one error naming the file and
            listing the most frequent unknown colours with their pixel counts), ``"void"`` (the
            palette's void class) or an id (any id 0..65535, for example an ignore id 255).
        workers: decoding threads.
        progress: show a progress bar.

    Raises:
        DataError: a missing source, an unreadable or single-channel mask, an unknown colour
            (with ``unknown="error"``), or a destination that is not empty. Nothing is written then.
        ConfigError: a palette that cannot decode colour masks (two classes share a colour), or a
            bad ``unknown``.
    """
    srcp, outp = Path(src), Path(out)
    pal = get_ontology(palette)
    if not pal.colors_unique:
        raise ConfigError(f"palette {pal.source or pal.name}: several classes share a colour, so colour masks "
                          "cannot be decoded unambiguously")
    if isinstance(unknown, bool) or not (unknown in ("error", "void") or isinstance(unknown, (int, np.integer))):
        raise ConfigError(f"unknown={unknown!r}: expected 'error', 'void' or an id")
    if isinstance(unknown, (int, np.integer)) and not 0 <= int(unknown) <= 65535:
        raise ConfigError(f"unknown id {unknown} is outside 0..65535")
    if unknown == "void" and len(pal.void_ids) != 1:
        raise ConfigError(f"palette {pal.name!r} has no single void class to map unknown colours to "
                          "(name one class void / unlabeled, or give an id)")
    files = _list_masks(srcp)
    base = srcp if srcp.is_dir() else srcp.parent
    if outp.exists() and (not outp.is_dir() or any(outp.iterdir())):
        raise DataError(f"{outp}: the output folder exists and is not empty (choose a new folder)")
    if srcp.is_dir() and (outp.resolve() == srcp.resolve() or outp.resolve().is_relative_to(srcp.resolve())):
        raise DataError(f"{outp}: the output folder must not be inside the colour mask folder {srcp}")
    tmp = _temporary_dir(outp)
    report = ConversionReport(out=outp, palette=pal, class_pixels=np.zeros(pal.max_id + 1, np.int64))
    try:
        with ProgressBar(len(files), "converting masks", enabled=progress) as bar, \
                ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            window: deque[tuple[Path, Future[tuple[np.ndarray, int]]]] = deque()  # bounded: flat memory
            pending = iter(files)
            for f in pending:
                window.append((f, pool.submit(_decode, f, pal, unknown)))
                if len(window) >= 2 * max(1, workers):
                    break
            while window:
                f, fut = window.popleft()
                nxt = next(pending, None)
                if nxt is not None:
                    window.append((nxt, pool.submit(_decode, nxt, pal, unknown)))
                try:
                    ids, n_unknown = fut.result()
                except BaseException:
                    for _, other in window:
                        other.cancel()
                    raise
                rel = f.relative_to(base).with_suffix(".png")
                write_label_png(tmp / rel, ids)
                report.files.append(outp / rel)
                report.pixels += int(ids.size)
                report.unknown_pixels += n_unknown
                counts = np.bincount(ids.ravel(), minlength=len(report.class_pixels))
                if len(counts) > len(report.class_pixels):
                    report.class_pixels = np.concatenate(
                        [report.class_pixels, np.zeros(len(counts) - len(report.class_pixels), np.int64)])
                report.class_pixels += counts
                bar.advance()
        if outp.is_dir():
            outp.rmdir()  # empty (checked above)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp made it owner-only; a plain mkdir would not
        os.replace(tmp, outp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report
