"""GOOSE 2D challenge submissions: a zip of single-channel class-id PNGs, one per test image.

What was confirmed (public sources, checked while writing this module):

* The GOOSE 2D challenges run on Codabench (ICRA 2025 Field Robotics workshop: 9 category
  labels, competition 5743; ICRA 2026 "Fine-Grained Semantic Segmentation": the 64 ``goose``
  classes, scored by a composite of class mIoU and category mIoU, competition 14257), per the
  FraunhoferIOSB/goose_dataset README and the 2025 / 2026 participants' technical reports.
* Ground-truth masks are single-channel PNGs whose pixel value is the class id (0..63, class 0
  ``undefined`` counts in the metric), named ``<name>_labelids.png`` next to
  ``<name>_<camera>.png`` images (``windshield_vis`` for GOOSE, ``camera_left`` etc. for
  GOOSE-Ex), in ``{split}/{scenario}/`` folders.
* The official prediction script (``image_processing/inference.py`` in FraunhoferIOSB/
  goose_dataset) writes each prediction as an 8-bit ``L`` PNG of class ids, at the original
  image resolution (resized back with nearest neighbour), under the image's own relative path
  and file name (``<scenario>/<name>_windshield_vis.png``).

What is assumed (the Codabench pages with the exact upload instructions could not be read):

* The zip holds the PNGs at its top level (``flat=True``), named like the test images
  (``naming="image"``, the official script's convention); GOOSE names carry the scenario
  (``<scenario>__<frame>_<timestamp>_<camera>``), so a flat layout is unambiguous.
  ``naming="labelids"`` names them like the ground truth instead (``<name>_labelids.png``)
  and ``flat=False`` keeps the ``<scenario>/`` folders, for servers that expect either.
* No other file (manifest, readme) is added, so nothing can confuse the scoring program.

Validation: every PNG must be single-channel (``L``, ``P``, 16-bit grey), every value an id of
the ontology (``goose`` by default; pass the challenge's category ontology for the 9-label
2025 task), names must be unique; with ``images=`` the test images must all have a prediction
of their size and no prediction may lack an image. Any problem raises one :class:`DataError`;
the zip is written atomically, so a failed run leaves no file.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from terraseg.datasets.goose2d import GOOSE_CAMERAS
from terraseg.errors import ConfigError, DataError
from terraseg.io.atomic import atomic_path
from terraseg.io.png import encode_png
from terraseg.ontology import Ontology, get_ontology
from terraseg.progress import ProgressBar

SINGLE_CHANNEL_MODES = ("L", "P", "I;16", "I;16B", "I;16L", "I")
"""Pillow modes accepted as single-channel id PNGs."""

NAMINGS = ("image", "labelids")

PredictionItem = tuple[str, "np.ndarray | str | os.PathLike[str]"]
"""``(stem, labels)``: a stem (relative name without suffix) and an (H, W) id array or a PNG path."""


@dataclass(frozen=True)
class SubmissionReport:
    """What :func:`write_goose_submission` wrote.

    Attributes:
        path: the zip file.
        count: number of PNGs in it.
        names: member names, sorted.
        ontology: name of the ontology the ids were checked against.
        naming: ``"image"`` or ``"labelids"``.
        flat: whether sub-folders were dropped.
    """

    path: Path
    count: int
    names: tuple[str, ...]
    ontology: str
    naming: str
    flat: bool

    def __str__(self) -> str:
        layout = "flat" if self.flat else "with scenario folders"
        return f"{self.path}: {self.count} {self.ontology!r} id PNGs, {self.naming} names, {layout}"


def submission_name(stem: str, naming: str = "image", flat: bool = True,
                    cameras: Iterable[str] = GOOSE_CAMERAS) -> str:
    """The zip member name of a prediction stem.

    ``naming="image"`` keeps the stem (``x_windshield_vis`` -> ``x_windshield_vis.png``);
    ``"labelids"`` replaces a trailing camera suffix by ``_labelids`` (``x_labelids.png``;
    stems without a camera suffix get ``_labelids`` appended, stems that already end in it are
    kept). ``flat`` drops the folders of the stem.
    """
    if naming not in NAMINGS:
        raise ConfigError(f"naming must be one of {', '.join(NAMINGS)}, got {naming!r}")
    p = PurePosixPath(str(stem).replace("\\", "/"))
    base = p.name
    if naming == "labelids" and not base.endswith("_labelids"):
        for cam in cameras:
            if base.endswith(f"_{cam}") and len(base) > len(cam) + 1:
                base = base[: -len(cam) - 1]
                break
        base += "_labelids"
    name = f"{base}.png"
    return name if flat or str(p.parent) in ("", ".") else f"{p.parent.as_posix()}/{name}"


def _read_ids(path: Path) -> np.ndarray:
    """A single-channel id PNG as an (H, W) array; DataError for colour images."""
    if not path.is_file():
        raise DataError(f"{path}: prediction file not found")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable or truncated PNG ({exc})") from exc
    if mode not in SINGLE_CHANNEL_MODES:
        raise DataError(f"{path}: a {mode} image; submissions need single-channel id PNGs (mode L), not colour masks")
    if arr.dtype.kind not in "ui" or (arr.size and arr.min() < 0):
        raise DataError(f"{path}: id PNG with negative or non-integer values")
    return arr


def _collect(predictions: str | os.PathLike[str] | Iterable[PredictionItem]) -> list[PredictionItem]:
    if isinstance(predictions, (str, os.PathLike)):
        folder = Path(predictions)
        if not folder.is_dir():
            raise DataError(f"{folder}: prediction folder not found")
        if (folder / "ids").is_dir():  # a PredictionWriter output folder
            folder = folder / "ids"
        files = sorted(p for p in folder.rglob("*.png") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts))
        if not files:
            raise DataError(f"{folder}: no .png predictions found")
        return [(f.relative_to(folder).with_suffix("").as_posix(), f) for f in files]
    items = list(predictions)
    if not items:
        raise DataError("no predictions given")
    return items


def _expected_images(images: str | os.PathLike[str]) -> dict[str, Path]:
    from terraseg.io.images import IMAGE_SUFFIXES

    folder = Path(images)
    if not folder.is_dir():
        raise DataError(f"{folder}: test image folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DataError(f"{folder}: no test images found")
    return {f.relative_to(folder).with_suffix("").as_posix(): f for f in files}


def _listing(names: list[str], n: int = 5) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def write_goose_submission(predictions: str | os.PathLike[str] | Iterable[PredictionItem],
                           out_zip: str | os.PathLike[str], *, ontology: Ontology | str = "goose",
                           naming: str = "image", flat: bool = True, images: str | os.PathLike[str] | None = None,
                           cameras: Iterable[str] = GOOSE_CAMERAS, compress_level: int = 6,
                           progress: bool = False) -> SubmissionReport:
    """Pack predicted id masks into a GOOSE challenge submission zip (layout: see the module docstring).

    Args:
        predictions: a folder of id PNGs (searched recursively; a :class:`PredictionWriter`
            output folder is read from its ``ids/``), or ``(stem, labels)`` pairs where
            ``labels`` is an (H, W) integer array or the path of an id PNG. Stems are relative
            names without suffix, normally the test image's (``scenario/<name>_windshield_vis``).
        out_zip: the zip file to write.
        ontology: the ids must be classes of it (``goose``: 0..63).
        naming: ``"image"`` (member named like the test image) or ``"labelids"`` (like the
            ground truth, ``<name>_labelids.png``).
        flat: put every PNG at the top level of the zip (else keep the stems' folders).
        images: the test image folder (e.g. ``goose_2d_test/images/test``): every image must
            have a prediction of the same size, and every prediction an image.
        cameras: camera suffixes recognised by ``naming="labelids"``.
        compress_level: PNG deflate level of the re-encoded masks (the zip stores them as they are).
        progress: show a progress bar.

    Returns:
        A :class:`SubmissionReport`.

    Raises:
        DataError: no predictions, a colour or unreadable PNG, ids outside the ontology, two
            predictions with one member name, missing / extra / wrongly sized predictions.
    """
    onto = get_ontology(ontology)
    cams = tuple(cameras)
    items = _collect(predictions)
    members: dict[str, str] = {}
    for stem, _ in items:
        name = submission_name(stem, naming, flat, cams)
        if name in members:
            raise DataError(f"predictions {members[name]!r} and {stem!r} both become {name!r} in the zip "
                            "(use flat=False to keep scenario folders)")
        members[name] = stem
    sizes: dict[str, tuple[int, int]] = {}
    if images is not None:
        expected = {submission_name(s, naming, flat, cams): p for s, p in _expected_images(images).items()}
        missing = sorted(set(expected) - set(members))
        extra = sorted(set(members) - set(expected))
        if missing:
            raise DataError(f"{images}: {len(missing)} test images have no prediction: {_listing(missing)}")
        if extra:
            raise DataError(f"{images}: {len(extra)} predictions match no test image: {_listing(extra)}")
        for name, p in expected.items():
            try:
                with Image.open(p) as im:
                    sizes[name] = (im.height, im.width)
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"{p}: unreadable test image ({exc})") from exc

    out = Path(out_zip)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf, \
            ProgressBar(len(items), "packing submission", enabled=progress) as bar:
        for stem, labels in sorted(items, key=lambda it: submission_name(it[0], naming, flat, cams)):
            name = submission_name(stem, naming, flat, cams)
            if isinstance(labels, np.ndarray):
                where, arr = f"prediction {stem!r}", labels
                if arr.ndim != 2 or arr.dtype.kind not in "ui":
                    raise DataError(f"{where}: expected an (H, W) integer id array, got {arr.shape} {arr.dtype}")
            else:
                where = str(labels)
                arr = _read_ids(Path(labels))
            if arr.ndim != 2 or arr.size == 0:
                raise DataError(f"{where}: expected a non-empty (H, W) id mask, got shape {arr.shape}")
            onto.check_ids(arr, source=where)
            if name in sizes and arr.shape != sizes[name]:
                h, w = sizes[name]
                raise DataError(f"{where}: prediction is {arr.shape[1]}x{arr.shape[0]} but its test image is {w}x{h}")
            data = encode_png(arr.astype(onto.label_dtype, copy=False), compress_level=compress_level)
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)
            bar.advance()
    return SubmissionReport(out, len(items), tuple(sorted(members)), onto.name, naming, flat)
