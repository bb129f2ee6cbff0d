"""The generic folder dataset: terraseg's own layout, read by :class:`GenericDataset` and written
only by :func:`~terraseg.datasets.generic_writer.write_generic_frame` / :class:`GenericWriter` (bag extraction, the simulator, copies)::

    DIR/images/[<split>/]<stem>.(png|jpg|jpeg)        RGB images
    DIR/masks/[<split>/]<stem>[<suffix>].png          id masks (or RGB colour masks + a palette)
    DIR/points/[<split>/]<stem>.bin                   float32 x, y, z, intensity (SemanticKITTI-compatible)
    DIR/points/[<split>/]<stem>.fields.npz            optional: every other point field, one array per name
    DIR/point_labels/[<split>/]<stem>.label           optional: uint32 labels (semantic | instance << 16)
    DIR/calib.yaml                                    optional: terraseg calibration
    DIR/ontology.yaml                                 optional: terraseg ontology YAML or a palette
    DIR/palette.(csv|yaml|json|txt)                   optional: palette (when there is no ontology.yaml)
    DIR/timestamps.csv                                optional: stem,timestamp_s[,split]
    DIR/splits/{train,val,test}.txt                   optional: stems per split (instead of sub-folders)

Any non-empty subset of images / masks / points / point_labels may be present. Files are paired by
``<stem>``. Splits come either from ``train/``, ``val/``, ``test/`` sub-folders of every modality
folder (frame ids ``"<split>/<stem>"``) or from ``splits/<split>.txt`` lists over flat folders
(frame ids ``"<stem>"``), never both.

Masks: single-channel PNGs (8 or 16 bit, or palette-mode PNGs whose indices are the ids) hold
class ids; three-channel PNGs are colour masks, decoded with the palette (or the ontology's
colours). ``fields.npz`` arrays are returned as float32 point columns after x, y, z, intensity;
the reserved entry ``__point_fields__`` (written by the writer when needed) gives the original
field order, e.g. for clouds without intensity (the ``.bin`` then holds zeros there).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from terraseg.datasets.base import SPLITS, FrameDataset, read_split_list
from terraseg.errors import ConfigError, DataError
from terraseg.frame import XYZI, Calibration, Frame
from terraseg.io.calib import read_calib_yaml
from terraseg.io.images import IMAGE_SUFFIXES, read_image
from terraseg.io.labels import read_color_png, read_label_png
from terraseg.io.palette import find_palette_file, load_palette
from terraseg.io.scans import read_bin, read_label
from terraseg.ontology import LabelMap, Ontology, decode_colors, get_ontology, looks_like_path

log = logging.getLogger(__name__)

MODALITY_DIRS = ("images", "masks", "points", "point_labels")
FIELDS_SUFFIX = ".fields.npz"
POINT_FIELDS_KEY = "__point_fields__"
COMMON_MASK_SUFFIXES = ("_mask", "_labelids", "_labelIds", "_label", "_labels", "_gt", "_seg", "_semantic")
_LAYOUT = "expected images/ and/or masks/ and/or points/ (optionally point_labels/) under the dataset folder"


@dataclass(frozen=True)
class GenericItem:
    """One listed frame of a generic dataset: its split (None for flat folders), stem and files."""

    split: str | None
    stem: str
    image: Path | None = None
    mask: Path | None = None
    points: Path | None = None
    fields: Path | None = None
    point_labels: Path | None = None

    @property
    def frame_id(self) -> str:
        return self.stem if self.split is None else f"{self.split}/{self.stem}"


@dataclass
class _Files:
    """Files of one split, keyed by stem, per modality."""

    images: dict[str, Path] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)
    points: dict[str, Path] = field(default_factory=dict)
    fields: dict[str, Path] = field(default_factory=dict)
    point_labels: dict[str, Path] = field(default_factory=dict)

    def stems(self) -> set[str]:
        return set(self.images) | set(self.masks) | set(self.points) | set(self.point_labels)


# ============================================================================ ontology resolution
def _rooted(value: Ontology | str | os.PathLike[str], root: Path) -> Ontology | str | os.PathLike[str]:
    """A relative file path that is missing from the working directory but present in ``root``, rooted there."""
    if isinstance(value, Ontology) or not looks_like_path(value) or Path(value).is_absolute() or Path(value).exists():
        return value
    return root / value if (root / value).is_file() else value


def resolve_ontology(root: Path, ontology: Ontology | str | os.PathLike[str] | None = None,
                     palette: Ontology | str | os.PathLike[str] | None = None) -> tuple[Ontology | None, Ontology | None]:
    """(label ontology, colour palette) of a generic dataset folder.

    Precedence: the ``ontology`` argument (an :class:`Ontology`, a built-in name, or the path of
    an ontology YAML / palette file) > ``root/ontology.yaml`` > ``root/palette.*``. ``palette``
    (same kinds of values) gives the colours of RGB masks when they differ from the ontology's;
    it defaults to the ontology. Its ids must be ids of the ontology.
    """
    onto = get_ontology(_rooted(ontology, root)) if ontology is not None else None
    pal = get_ontology(_rooted(palette, root)) if palette is not None else None
    if onto is None and pal is None:
        if (root / "ontology.yaml").is_file():
            onto = load_palette(root / "ontology.yaml")
        else:
            found = find_palette_file(root)
            onto = load_palette(found) if found is not None else None
    if onto is None:
        onto = pal
    if pal is not None and onto is not None and pal is not onto:
        extra = sorted(set(pal.ids.tolist()) - set(onto.ids.tolist()))
        if extra:
            raise ConfigError(f"palette {pal.name!r} has ids {extra} that are not classes of ontology {onto.name!r}")
    return onto, pal if pal is not None else onto


# ============================================================================ listing
def _listdir(d: Path) -> tuple[list[Path], list[Path]]:
    """(files, sub-folders) of ``d``, hidden entries skipped, sorted."""
    files, dirs = [], []
    for e in sorted(d.iterdir()):
        if e.name.startswith("."):
            continue
        (dirs if e.is_dir() else files).append(e)
    return files, dirs


def _folder_list(root: Path) -> str:
    """The visible sub-folders of ``root`` as ``a/, b/`` (``none`` when there are none)."""
    names = [d.name + "/" for d in _listdir(root)[1]]
    return ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "") if names else "none"


def _modality_dirs(root: Path, given: dict[str, str]) -> dict[str, str]:
    """Check the folder-name options: relative paths inside ``root``; one that is not the default must exist."""
    for modality, name in given.items():
        option = f"{modality}_dir"
        if not isinstance(name, str) or not name.strip() or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ConfigError(f"{option}={name!r}: expected the name of a folder inside {root}")
        if name != modality and not (root / name).is_dir():
            what = "is not a folder" if (root / name).exists() else "not found"
            raise DataError(f"{root / name}: {modality.replace('_', ' ')} folder {what} ({option}={name!r}; folders "
                            f"in {root}: {_folder_list(root)})")
    return dict(given)


def _index_modality(name: str, files: Iterable[Path], out: _Files, mask_suffix: str) -> None:
    for f in files:
        fname, low = f.name, f.name.lower()
        if name == "images" and f.suffix.lower() in IMAGE_SUFFIXES:
            key, target = f.stem, out.images
        elif name == "masks" and f.suffix.lower() == ".png":
            if not f.stem.endswith(mask_suffix):
                raise DataError(f"{f}: mask file name does not end with the mask suffix {mask_suffix!r}")
            key, target = f.stem[: len(f.stem) - len(mask_suffix)], out.masks
        elif name == "masks" and f.suffix.lower() in (".jpg", ".jpeg"):
            raise DataError(f"{f}: masks must be PNG files (JPEG compression changes class ids and colours)")
        elif name == "points" and low.endswith(FIELDS_SUFFIX):
            key, target = fname[: -len(FIELDS_SUFFIX)], out.fields
        elif name == "points" and f.suffix.lower() == ".bin":
            key, target = f.stem, out.points
        elif name == "point_labels" and f.suffix.lower() == ".label":
            key, target = f.stem, out.point_labels
        else:
            continue  # unrelated file (README, thumbnails ...)
        if not key:
            raise DataError(f"{f}: empty stem")
        if key in target:
            raise DataError(f"{f}: same stem {key!r} as {target[key]} (one file per stem and modality)")
        target[key] = f


def _suffix_hint(images: Iterable[str], masks: Iterable[str]) -> str:
    imgs = set(images)
    for suf in COMMON_MASK_SUFFIXES:
        if any(m.endswith(suf) and m[: -len(suf)] in imgs for m in masks):
            return f"; the masks seem to carry the suffix {suf!r} (pass mask_suffix={suf!r})"
    return ""


def _first(keys: Iterable[str]) -> str:
    return sorted(keys)[0]


# ============================================================================ timestamps
def read_timestamps(path: str | os.PathLike[str]) -> dict[tuple[str | None, str], float]:
    """Read ``timestamps.csv`` (``stem,timestamp_s[,split]``, optional header) as {(split, stem): seconds}.

    Rows without a split have split None. Errors name the file and line.
    """
    p = Path(path)
    out: dict[tuple[str | None, str], float] = {}
    with p.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        for row in reader:
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            where = f"{p}, line {reader.line_num}"
            if len(cells) not in (2, 3):
                raise DataError(f"{where}: expected 'stem,timestamp_s[,split]', got {len(cells)} columns")
            try:
                t = float(cells[1])
            except ValueError:
                if not out and cells[0].lower() == "stem":
                    continue  # header
                raise DataError(f"{where}: timestamp {cells[1]!r} is not a number (seconds)") from None
            if not np.isfinite(t):
                raise DataError(f"{where}: timestamp {cells[1]!r} is not finite")
            split = cells[2] if len(cells) == 3 and cells[2] else None
            if split is not None and split not in SPLITS:
                raise DataError(f"{where}: unknown split {split!r} (expected {', '.join(SPLITS)})")
            key = (split, cells[0])
            if key in out:
                raise DataError(f"{where}: stem {cells[0]!r} appears twice")
            out[key] = t
    return out


# ============================================================================ reading helpers
def _mask_is_color(p: Path) -> bool:
    try:
        with Image.open(p) as im:
            return im.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
    except FileNotFoundError:
        raise DataError(f"{p}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{p}: unreadable or truncated image ({exc})") from exc


def read_point_fields(bin_path: Path, fields_path: Path | None
                      ) -> tuple[np.ndarray, tuple[str, ...], dict[str, np.ndarray]]:
    """Read ``<stem>.bin`` (+ ``<stem>.fields.npz``) as (points, field names, exact fields).

    ``points`` is (N, C) float32. ``exact fields`` holds, in their stored dtype, the ``fields.npz``
    arrays that float32 cannot represent exactly (e.g. float64 absolute times), so nothing is lost.
    """
    xyzi = read_bin(bin_path, 4)
    if fields_path is None:
        return xyzi, XYZI, {}
    n = len(xyzi)
    cols = {name: xyzi[:, i] for i, name in enumerate(XYZI)}
    exact: dict[str, np.ndarray] = {}
    order: list[str] | None = None
    try:
        with np.load(fields_path, allow_pickle=False) as npz:
            names = list(npz.files)
            for key in names:
                arr = npz[key]
                if key == POINT_FIELDS_KEY:
                    order = [str(s) for s in np.atleast_1d(arr).tolist()]
                    continue
                if key in cols:
                    raise DataError(f"{fields_path}: field {key!r} duplicates a .bin column (x, y, z, intensity)")
                if arr.ndim == 2 and arr.shape[1] == 1:
                    arr = arr[:, 0]
                if arr.ndim != 1 or len(arr) != n:
                    raise DataError(f"{fields_path}: field {key!r} has shape {arr.shape}, expected ({n},) "
                                    f"for the {n} points of {bin_path.name}")
                if arr.dtype.kind not in "uifb":
                    raise DataError(f"{fields_path}: field {key!r} has non-numeric dtype {arr.dtype}")
                cols[key] = arr.astype(np.float32)
                if arr.dtype != np.float32 and not np.array_equal(cols[key].astype(arr.dtype), arr, equal_nan=True):
                    exact[key] = arr
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{fields_path}: unreadable .npz file ({exc})") from None
    if order is None:
        order = list(cols)
    else:
        unknown = [f for f in order if f not in cols]
        if unknown or order[:3] != ["x", "y", "z"] or len(set(order)) != len(order):
            raise DataError(f"{fields_path}: {POINT_FIELDS_KEY} {order} must start with x, y, z and name only "
                            f"available fields ({', '.join(cols)})")
        extra = [k for k in cols if k not in order and k != "intensity"]
        if extra:
            raise DataError(f"{fields_path}: fields {extra} are missing from {POINT_FIELDS_KEY}")
    pts = np.empty((n, len(order)), dtype=np.float32)
    for i, name in enumerate(order):
        pts[:, i] = cols[name]
    return pts, tuple(order), exact


# ============================================================================ the dataset
class GenericDataset(FrameDataset):
    """A dataset in terraseg's generic folder layout (see the module docstring).

    Args:
        root: the dataset folder.
        split: ``train`` / ``val`` / ``test`` (a sub-folder or a ``splits/<split>.txt`` list) or
            ``all``.
        mask_suffix: the suffix between stem and ``.png`` of mask files (``"_mask"``, ...).
        ontology: label ontology: an :class:`Ontology`, a built-in name or a path (ontology YAML
            or palette file). Default: ``root/ontology.yaml``, else ``root/palette.*``, else
            none (id masks are then returned unchecked; colour masks are an error).
        palette: the colours of RGB colour masks (any palette file, or an ontology) if they
            differ from the ontology's; also the ontology when none is given. Relative paths of
            ``ontology`` / ``palette`` are looked up in the working directory, then in ``root``.
        remap: label map applied on load: a LabelMap YAML (from this dataset's ontology), a
            built-in target ontology or ``SOURCE->TARGET`` (see :func:`terraseg.ontology.get_label_map`).
        unknown_color: colour-mask pixels with colours outside the palette: ``"error"``,
            ``"void"`` or an id (see :func:`terraseg.ontology.decode_colors`).
        allow_unlabeled: read images without masks and scans without point labels (frames then
            lack those labels) instead of raising an error.
        check_ids: check mask and point label values against the ontology (when there is one).
        images_dir, masks_dir, points_dir, point_labels_dir: the folder names under ``root`` of
            each modality (default ``images``, ``masks``, ``points``, ``point_labels``), for
            datasets that keep masks in ``annotations/``, say. A folder given here that does not
            exist is an error. When images (or scans) are found without any masks (point
            labels) while ``root`` holds other folders, a warning names the folder looked for and
            the folders found (a misnamed mask folder would otherwise read as unlabelled data).

    Frames: ``image`` (H, W, 3) uint8, ``image_labels`` (H, W) uint8/uint16, ``points``
    (N, C) float32 (x, y, z, intensity, then the ``fields.npz`` fields), ``point_labels``
    (N,) uint16, ``point_instances`` (N,) uint16 when any is non-zero, ``calib`` from
    ``calib.yaml``, ``timestamp`` from ``timestamps.csv``, ``meta`` ``{"split", "stem"}`` plus
    ``"exact_fields"`` (name -> stored array) for ``fields.npz`` arrays that float32 cannot hold
    exactly.
    """

    name = "generic"

    def __init__(self, root: str | os.PathLike[str], split: str = "all", mask_suffix: str = "",
                 ontology: Ontology | str | os.PathLike[str] | None = None,
                 palette: Ontology | str | os.PathLike[str] | None = None,
                 remap: LabelMap | str | None = None, *, unknown_color: str | int = "error",
                 allow_unlabeled: bool = False, check_ids: bool = True, images_dir: str = "images",
                 masks_dir: str = "masks", points_dir: str = "points", point_labels_dir: str = "point_labels") -> None:
        rootp = Path(root)
        if not rootp.is_dir():
            raise DataError(f"{rootp}: dataset folder not found ({_LAYOUT})")
        self.dirs = _modality_dirs(rootp, {"images": images_dir, "masks": masks_dir, "points": points_dir,
                                           "point_labels": point_labels_dir})
        present = [m for m in MODALITY_DIRS if (rootp / self.dirs[m]).is_dir()]
        if not present:
            layout = _LAYOUT if all(self.dirs[m] == m for m in MODALITY_DIRS) else \
                f"expected {', '.join(self.dirs[m] + '/' for m in MODALITY_DIRS)} under the dataset folder"
            raise DataError(f"{rootp}: not a generic dataset folder ({layout}; found none of them; folders found: "
                            f"{_folder_list(rootp)})")
        self._ontology, self.palette = resolve_ontology(rootp, ontology, palette)
        super().__init__(rootp, split, remap)
        self.mask_suffix, self.unknown_color = mask_suffix, unknown_color
        self.allow_unlabeled, self.check_ids = allow_unlabeled, check_ids
        self.modalities = tuple(present)
        self._items = self._list()
        self._warn_if_unlabeled()
        self.calib: Calibration | None = read_calib_yaml(rootp / "calib.yaml") if (rootp / "calib.yaml").is_file() else None
        ts = rootp / "timestamps.csv"
        self.timestamps = read_timestamps(ts) if ts.is_file() else {}
        stem_count: dict[str, int] = {}
        for _, stem in self.timestamps:
            stem_count[stem] = stem_count.get(stem, 0) + 1
        self._ts_by_stem = {stem: t for (_, stem), t in self.timestamps.items() if stem_count[stem] == 1}

    @classmethod
    def describe_layout(cls) -> str:
        return _LAYOUT

    @property
    def source_ontology(self) -> Ontology | None:  # type: ignore[override]
        return self._ontology

    @staticmethod
    def write_frame(root: str | os.PathLike[str], frame: Frame, split: str | None = None, stem: str | None = None,
                    **kwargs: object) -> dict[str, Path]:
        """Write one frame in this layout: :func:`write_generic_frame` (the single writer of the layout)."""
        from terraseg.datasets.generic_writer import write_generic_frame

        return write_generic_frame(root, frame, split, stem, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ listing
    def _dir(self, modality: str) -> Path:
        return self.root / self.dirs[modality]

    def _warn_if_unlabeled(self) -> None:
        """Say so when images (scans) come without any mask (point labels) while other folders exist."""
        if self.allow_unlabeled:
            return
        known = {*self.dirs.values(), "splits", "stats"}
        others = [d.name for d in _listdir(self.root)[1] if d.name not in known]
        if not others:
            return
        for data, labels, option in (("images", "masks", "masks_dir"), ("points", "point_labels", "point_labels_dir")):
            n_data = sum(getattr(it, "image" if data == "images" else "points") is not None for it in self._items)
            n_lab = sum(getattr(it, "mask" if labels == "masks" else "point_labels") is not None for it in self._items)
            if n_data and not n_lab:
                where = self._dir(labels)
                state = "holds no label files" if where.is_dir() else "does not exist"
                log.warning("%s: %d %s are read WITHOUT labels: the %s folder %s/ %s (folders found: %s); if the "
                            "labels are in another folder, give %s=NAME (recipes: data.options.%s; eval: "
                            "--data-option %s=NAME; inspect: --data-option %s=NAME)", self.root, n_data,
                            "images" if data == "images" else "scans", labels.replace("_", " "), self.dirs[labels],
                            state, _folder_list(self.root), option, option, option, option)

    def _list(self) -> list[GenericItem]:
        per_dir = {m: _listdir(self._dir(m)) for m in self.modalities}
        foldered = any(dirs for _, dirs in per_dir.values())
        for m, (files, dirs) in per_dir.items():
            bad = [d for d in dirs if d.name not in SPLITS]
            if bad:
                raise DataError(f"{bad[0]}: unexpected sub-folder (only split folders {', '.join(SPLITS)} "
                                f"are allowed under {self.dirs[m]}/)")
            if foldered and any(self._relevant(m, f) for f in files):
                first = next(f for f in files if self._relevant(m, f))
                raise DataError(f"{first}: file next to split sub-folders (put every file of {self.dirs[m]}/ in "
                                f"{'/, '.join(SPLITS)}/ or use flat folders with splits/*.txt)")
        splits_dir = self.root / "splits"
        if foldered:
            if splits_dir.is_dir() and any(splits_dir.glob("*.txt")):
                raise DataError(f"{self.root}: both split sub-folders and {splits_dir}/*.txt lists; use one of them")
            found = [s for s in SPLITS if any((self._dir(m) / s).is_dir() for m in self.modalities)]
            if self.split != "all" and self.split not in found:
                raise DataError(f"{self.root}: no split {self.split!r} (split folders found: {', '.join(found)})")
            items: list[GenericItem] = []
            for s in (found if self.split == "all" else [self.split]):
                files = _Files()
                for m in self.modalities:
                    if (self._dir(m) / s).is_dir():
                        _index_modality(m, _listdir(self._dir(m) / s)[0], files, self.mask_suffix)
                items += self._pair(files, s, sorted(files.stems()))
            return self._nonempty(items)
        files = _Files()
        for m in self.modalities:
            _index_modality(m, per_dir[m][0], files, self.mask_suffix)
        if self.split == "all":
            return self._nonempty(self._pair(files, None, sorted(files.stems())))
        lst = splits_dir / f"{self.split}.txt"
        if not lst.is_file():
            raise DataError(f"{self.root}: no split {self.split!r} (no {self.split}/ sub-folders and no {lst})")
        stems = read_split_list(lst)
        known = files.stems()
        seen: set[str] = set()
        for s in stems:
            if s not in known:
                lineno = next(i for i, ln in enumerate(lst.read_text().splitlines(), 1) if ln.strip() == s)
                raise DataError(f"{lst}, line {lineno}: stem {s!r} has no files in "
                                f"{', '.join(self.dirs[m] for m in self.modalities)}/")
            if s in seen:
                raise DataError(f"{lst}: stem {s!r} listed twice")
            seen.add(s)
        return self._nonempty(self._pair(files, None, stems, restrict=True))

    @staticmethod
    def _relevant(modality: str, f: Path) -> bool:
        low = f.name.lower()
        return {"images": f.suffix.lower() in IMAGE_SUFFIXES, "masks": low.endswith(".png"),
                "points": low.endswith(".bin") or low.endswith(FIELDS_SUFFIX),
                "point_labels": low.endswith(".label")}[modality]

    def _nonempty(self, items: list[GenericItem]) -> list[GenericItem]:
        if not items:
            where = "" if self.split == "all" else f" in split {self.split!r}"
            raise DataError(f"{self.root}: no frames{where} ({_LAYOUT})")
        return items

    def _pair(self, f: _Files, split: str | None, stems: Sequence[str], restrict: bool = False) -> list[GenericItem]:
        """Check the pairing rules on ``f`` (restricted to ``stems`` if asked) and build the items."""
        def sub(d: dict[str, Path]) -> dict[str, Path]:
            return {k: v for k, v in d.items() if k in stem_set} if restrict else d

        stem_set = set(stems)
        images, masks, points, labels, flds = (sub(f.images), sub(f.masks), sub(f.points), sub(f.point_labels),
                                               sub(f.fields))

        def loc(modality: str) -> Path:
            return self._dir(modality) / split if split else self._dir(modality)

        # a modality counts when the split holds files of it (an empty folder is no promise of labels)
        has = {"images": bool(f.images), "masks": bool(f.masks), "point_labels": bool(f.point_labels)}
        if has["images"] and has["masks"]:
            no_mask, no_image = set(images) - set(masks), set(masks) - set(images)
            hint = _suffix_hint(f.images, [p.stem for p in f.masks.values()]) if self.mask_suffix == "" else ""
            if no_mask and not self.allow_unlabeled:
                s0 = _first(no_mask)
                raise DataError(f"{loc('images')}: {len(no_mask)} images have no mask (first: {images[s0]}, expected "
                                f"{loc('masks') / (s0 + self.mask_suffix + '.png')}){hint}; pass "
                                "allow_unlabeled=True to read them without labels")
            if no_image:
                s0 = _first(no_image)
                raise DataError(f"{masks[s0]}: mask has no image (expected {loc('images') / s0}.png or .jpg; "
                                f"{len(no_image)} such masks){hint}")
        orphan_fields = set(flds) - set(points)
        if orphan_fields:
            s0 = _first(orphan_fields)
            raise DataError(f"{flds[s0]}: point fields without a scan (expected {loc('points') / s0}.bin)")
        no_pts = set(labels) - set(points)
        if no_pts:
            s0 = _first(no_pts)
            raise DataError(f"{labels[s0]}: point labels without a scan (expected {loc('points') / s0}.bin)")
        if has["point_labels"]:
            no_lbl = set(points) - set(labels)
            if no_lbl and not self.allow_unlabeled:
                s0 = _first(no_lbl)
                raise DataError(f"{loc('points')}: {len(no_lbl)} scans have no point labels (first: {points[s0]}, "
                                f"expected {loc('point_labels') / s0}.label); pass allow_unlabeled=True to read them "
                                "without labels")
        return [GenericItem(split, s, images.get(s), masks.get(s), points.get(s), flds.get(s), labels.get(s))
                for s in stems]

    def _item_id(self, item: object) -> str:
        assert isinstance(item, GenericItem)
        return item.frame_id

    # ------------------------------------------------------------------ loading
    def _read_mask(self, p: Path) -> np.ndarray:
        if not _mask_is_color(p):
            return read_label_png(p)
        if self.palette is None:
            raise DataError(f"{p}: RGB colour mask but no ontology or palette to decode it (pass ontology= or "
                            f"palette=, or put ontology.yaml or palette.csv in {self.root}); id masks must be "
                            "single-channel PNGs")
        return decode_colors(read_color_png(p), self.palette, self.unknown_color, source=str(p))

    def _load(self, item: object) -> Frame:
        assert isinstance(item, GenericItem)
        onto = self._ontology
        source: dict[str, Path] = {}
        image = labels = points = plabels = pinst = None
        fields: tuple[str, ...] = XYZI
        meta: dict[str, object] = {"split": item.split, "stem": item.stem}
        if item.image is not None:
            image = read_image(item.image)
            source["image"] = item.image
        if item.mask is not None:
            labels = self._read_mask(item.mask)
            if image is not None and labels.shape != image.shape[:2]:
                raise DataError(f"{item.mask}: mask is {labels.shape[1]}x{labels.shape[0]} but image {item.image} is "
                                f"{image.shape[1]}x{image.shape[0]}")
            if onto is not None and self.check_ids:
                onto.check_ids(labels, source=str(item.mask))
            source["image_labels"] = item.mask
        if item.points is not None:
            points, fields, exact = read_point_fields(item.points, item.fields)
            if exact:
                meta["exact_fields"] = exact
            source["points"] = item.points
        if item.point_labels is not None:
            assert points is not None
            plabels, inst = read_label(item.point_labels, num_points=len(points))
            pinst = inst if inst.any() else None
            if onto is not None and self.check_ids:
                onto.check_ids(plabels, source=str(item.point_labels))
            source["point_labels"] = item.point_labels
        ts = self._timestamp(item)
        return Frame(frame_id=item.frame_id, image=image, points=points, point_fields=fields, image_labels=labels,
                     point_labels=plabels, point_instances=pinst, ontology=onto.name if onto is not None else None,
                     calib=self.calib, timestamp=ts, source=source, meta=meta)

    def _timestamp(self, item: GenericItem) -> float | None:
        """Time of a frame: the (split, stem) row, else a row without split, else the only row of that stem."""
        t = self.timestamps.get((item.split, item.stem), self.timestamps.get((None, item.stem)))
        return t if t is not None else self._ts_by_stem.get(item.stem)
