"""Labelling tasks for people: export a query round, import the labels back.

``export_task`` writes one folder per round::

    TASK/
      task.json                 what was exported: round, state folder, frames, label names / ids
      README.md                 how to label and import, for the person doing it
      previews/<stem>.png       each frame with its queried points / pixels marked
      points/<stem>.csv         point frames: one row per queried point, fill in the label column
      images/<stem>.<ext>       image frames: the images to upload into a CVAT task
      cvat/                     image frames in CVAT's "Segmentation mask 1.1" layout
        labelmap.txt            # label:color_rgb:parts:actions
        ImageSets/Segmentation/default.txt
        SegmentationClass/<stem>.png    queried pixels painted (label "query", or the suggestion)
        SegmentationObject/<stem>.png   one instance per label present
      cvat_annotations.zip      the same cvat/ tree zipped, for CVAT's "Upload annotations"
      cvat_labels.json          the task's labels for CVAT's label constructor ("Raw" tab)

Points (no open tool labels single LiDAR points, so a plain table): ``points/<stem>.csv`` has
the columns ``index,x,y,z,col,row,suggested_id,suggested,label``; ``index`` is the point's
in-view index, ``x, y, z`` metres in the sensor frame, ``col, row`` its camera pixel (empty when
unknown), ``suggested`` the model's prediction; a person fills ``label`` with a class id or
name (empty = not labelled). Instead, ``points/<stem>.npz`` with int arrays ``index`` and
``label`` (-1 = not labelled) may be given; it takes precedence over the CSV.

Images: create a CVAT task from ``images/``, with the labels of ``cvat_labels.json``; upload
``cvat_annotations.zip`` as "Segmentation mask 1.1" to see the queried pixels (label
``query``); paint the right class over them; export the task as "Segmentation mask 1.1" and
import that zip (or its unpacked folder). Only the queried pixels are read back; pixels left as
``background`` or ``query`` count as not labelled.

``import_task`` stores the labels in the round's ``labels.npz`` (see
:mod:`terraseg.active.rounds`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.active.rounds import (
    UNLABELLED,
    FrameQuery,
    QueryRound,
    load_round,
    load_round_labels,
    read_format_json,
    save_round_labels,
)
from terraseg.errors import DataError
from terraseg.io.atomic import atomic_path, atomic_write_text
from terraseg.io.images import IMAGE_SUFFIXES, read_image
from terraseg.io.png import write_png
from terraseg.ontology import Ontology, color_hex
from terraseg.progress import ProgressBar

FORMAT = "terraseg-label-task/1"
CSV_COLUMNS = ("index", "x", "y", "z", "col", "row", "suggested_id", "suggested", "label")
BACKGROUND = "background"
QUERY_LABEL = "query"
MARK = (255, 0, 255)
"""Colour of queried points / pixels in previews (magenta)."""


# ------------------------------------------------------------------------------ names, colours
def safe_stem(name: str) -> str:
    """A file-name stem for a frame name: ``/`` -> ``__``, other unsafe characters -> ``_``."""
    s = re.sub(r"[^A-Za-z0-9._-]", "_", name.replace("/", "__").replace("\\", "__"))
    return s.lstrip(".") or "frame"


def voc_color(i: int) -> tuple[int, int, int]:
    """Colour ``i`` of the Pascal VOC colour map (the one CVAT uses for instance masks)."""
    r = g = b = 0
    c = i
    for j in range(8):
        r |= ((c >> 0) & 1) << (7 - j)
        g |= ((c >> 1) & 1) << (7 - j)
        b |= ((c >> 2) & 1) << (7 - j)
        c >>= 3
    return r, g, b


def cvat_labels(ontology: Ontology) -> list[dict[str, Any]]:
    """The task's labels: ``background``, ``query``, then every class, each with a unique colour.

    Class colours are kept unless black (background's), magenta-equal to ``query`` or shared
    with an earlier class; those get the first unused Pascal VOC colour. Names with ``:`` (the
    label-map separator) have it replaced by ``_``.
    """
    used = {(0, 0, 0)}
    q = MARK
    out = [{"name": BACKGROUND, "color": (0, 0, 0), "id": None}]
    pending = []
    for c in ontology:
        col = tuple(int(v) for v in c.color)
        if col in used or col == q:
            pending.append(len(out))
        else:
            used.add(col)
        out.append({"name": c.name.replace(":", "_").strip(), "color": col, "id": int(c.id)})
    used.add(q)
    out.insert(1, {"name": QUERY_LABEL, "color": q, "id": None})
    k = 1
    for pos in pending:
        while voc_color(k) in used:
            k += 1
        out[pos + 1]["color"] = voc_color(k)
        used.add(voc_color(k))
    names = [d["name"] for d in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"ontology {ontology.name!r}: class names {dup} clash with CVAT labels "
                        f"({BACKGROUND!r} and {QUERY_LABEL!r} are reserved) or with each other")
    return out


def labelmap_text(labels: list[dict[str, Any]]) -> str:
    """``labelmap.txt`` of CVAT's Segmentation mask format."""
    lines = ["# label:color_rgb:parts:actions"]
    lines += [f"{d['name']}:{','.join(str(v) for v in d['color'])}::" for d in labels]
    return "\n".join(lines) + "\n"


def parse_labelmap(text: str, where: str) -> dict[tuple[int, int, int], str]:
    """Colour -> label name from a ``labelmap.txt``."""
    out: dict[tuple[int, int, int], str] = {}
    for no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        if len(parts) < 2:
            raise DataError(f"{where}:{no}: expected 'name:r,g,b:parts:actions', got {line!r}")
        try:
            rgb = tuple(int(v) for v in parts[1].split(","))
        except ValueError:
            raise DataError(f"{where}:{no}: bad colour {parts[1]!r}") from None
        if len(rgb) != 3 or any(not 0 <= v <= 255 for v in rgb):
            raise DataError(f"{where}:{no}: bad colour {parts[1]!r}")
        out[rgb] = parts[0]  # type: ignore[index]
    return out


# --------------------------------------------------------------------------------- drawing
def _disk_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    r = int(radius)
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = dx * dx + dy * dy <= r * r + r
    return dy[keep], dx[keep]


def draw_points(canvas: np.ndarray, cols: np.ndarray, rows: np.ndarray, color: tuple[int, int, int],
                radius: int, outline: tuple[int, int, int] | None = (0, 0, 0)) -> None:
    """Draw filled disks (with a one-pixel outline) at integer ``(col, row)`` positions, in place."""
    h, w = canvas.shape[:2]
    for rad, col in (((radius + 1), outline), (radius, color)):
        if col is None:
            continue
        dy, dx = _disk_offsets(rad)
        yy = (rows[:, None] + dy[None, :]).ravel()
        xx = (cols[:, None] + dx[None, :]).ravel()
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        canvas[yy[ok], xx[ok]] = col


def bev_preview(queried_xyz: np.ndarray, scan_xyz: np.ndarray | None = None, size: int = 800,
                margin_m: float = 2.0) -> np.ndarray:
    """A bird's-eye view of the sensor frame (+x up, +y left): scan points grey, queried points marked.

    The view spans the queried points and the middle 96 % of the scan (metres), plus a margin.
    """
    img = np.full((size, size, 3), 24, dtype=np.uint8)
    corners = [queried_xyz[:, :2]]
    if scan_xyz is not None and len(scan_xyz):  # the scan's 2-98 % extent: a few far returns do not shrink the view
        corners.append(np.percentile(scan_xyz[:, :2], [2, 98], axis=0))
    pts = np.concatenate(corners)
    if len(pts) == 0:
        return img
    lo = pts.min(0) - margin_m
    hi = pts.max(0) + margin_m
    scale = (size - 1) / max(float((hi - lo).max()), 1e-6)

    def to_px(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        col = np.round((hi[1] - p[:, 1]) * scale).astype(np.int64)  # +y (left) to the left
        row = np.round((hi[0] - p[:, 0]) * scale).astype(np.int64)  # +x (forward) up
        return col, row

    if scan_xyz is not None and len(scan_xyz):
        c, r = to_px(scan_xyz)
        ok = (c >= 0) & (c < size) & (r >= 0) & (r < size)
        img[r[ok], c[ok]] = 150
    c, r = to_px(queried_xyz)
    draw_points(img, c, r, MARK, radius=2)
    return img


def _find_image(frame: FrameQuery, images_dir: Path | None, stem: str) -> Path | None:
    if images_dir is not None:
        for base in (frame.name, stem):
            for suf in IMAGE_SUFFIXES:
                p = images_dir / (base + suf)
                if p.is_file():
                    return p
    if frame.image and Path(frame.image).is_file():
        return Path(frame.image)
    return None


def _read_scan(path: str | None) -> np.ndarray | None:
    if not path or not Path(path).is_file():
        return None
    from terraseg.io.scans import read_bin

    try:
        return read_bin(path)
    except DataError:
        return None


# --------------------------------------------------------------------------------- export
@dataclass(frozen=True)
class TaskFrame:
    """One exported frame: its name, file stem, kind (points / pixels), queried items and files."""

    name: str
    stem: str
    kind: str
    queried: int
    preview: str
    data: str
    image: str | None = None


@dataclass(frozen=True)
class TaskSummary:
    """What :func:`export_task` wrote."""

    out_dir: Path
    round: int
    frames: tuple[TaskFrame, ...]
    cvat_zip: Path | None


def export_task(rnd: QueryRound, out_dir: str | os.PathLike[str], ontology: Ontology | None = None,
                state_dir: str | os.PathLike[str] | None = None, images_dir: str | os.PathLike[str] | None = None,
                prefill: bool = False, progress: bool = False) -> TaskSummary:
    """Write round ``rnd`` as a labelling task in ``out_dir`` (layout in the module doc).

    Args:
        rnd: the query round (:func:`terraseg.active.rounds.load_round`).
        out_dir: task folder (created; files of an earlier export are replaced).
        ontology: class names, ids and colours; required when the round has image frames.
        state_dir: the round's state folder, recorded so ``import`` finds it.
        images_dir: folder to find frame images in (``<name>`` or ``<stem>`` + .png/.jpg),
            before the image paths the round recorded.
        prefill: paint queried pixels with the model's suggestion instead of ``query``.
        progress: show a progress bar.
    """
    out = Path(out_dir)
    img_dir = Path(images_dir) if images_dir is not None else None
    has_pixels = any(f.kind == "pixels" for f in rnd.frames)
    if has_pixels and ontology is None:
        raise DataError("image frames need an ontology (class names and colours) for CVAT's label map; "
                        "give one (--ontology)")
    labels = cvat_labels(ontology) if ontology is not None else None
    stems: dict[str, str] = {}
    taken: set[str] = set()
    for f in rnd.frames:
        s = base = safe_stem(f.name)
        k = 1
        while s in taken:
            s = f"{base}_{k}"
            k += 1
        taken.add(s)
        stems[f.name] = s
    out.mkdir(parents=True, exist_ok=True)
    frames: list[TaskFrame] = []
    cvat_files: dict[str, bytes] = {}
    with ProgressBar(len(rnd.frames), f"export round {rnd.index}", enabled=progress) as bar:
        for f in rnd.frames:
            stem = stems[f.name]
            img_path = _find_image(f, img_dir, stem)
            if f.kind == "pixels":
                frames.append(_export_pixels(f, stem, out, img_path, labels, ontology, prefill, cvat_files))  # type: ignore[arg-type]
            else:
                frames.append(_export_points(f, stem, out, img_path, ontology))
            bar.advance()
    cvat_zip = None
    if cvat_files:
        assert labels is not None
        cvat_files["labelmap.txt"] = labelmap_text(labels).encode()
        names = [fr.stem for fr in frames if fr.kind == "pixels"]
        cvat_files["ImageSets/Segmentation/default.txt"] = ("\n".join(names) + "\n").encode()
        for rel, data in cvat_files.items():
            p = out / "cvat" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(p) as tmp:
                tmp.write_bytes(data)
        cvat_zip = out / "cvat_annotations.zip"
        with atomic_path(cvat_zip) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for rel in sorted(cvat_files):
                z.writestr(rel, cvat_files[rel])
        raw = [{"name": d["name"], "color": color_hex(d["color"]), "attributes": []} for d in labels]
        atomic_write_text(out / "cvat_labels.json", json.dumps(raw, indent=1) + "\n")
    meta = {
        "format": FORMAT, "round": rnd.index, "strategy": rnd.strategy, "percent": rnd.percent,
        "state_dir": str(Path(state_dir).resolve()) if state_dir is not None else None,
        "ontology": ontology.name if ontology is not None else None,
        "labels": [{"name": d["name"], "color": list(d["color"]), "id": d["id"]} for d in labels] if labels else None,
        "frames": [{"name": fr.name, "stem": fr.stem, "kind": fr.kind, "queried": fr.queried, "preview": fr.preview,
                    "data": fr.data, "image": fr.image} for fr in frames],
    }
    atomic_write_text(out / "task.json", json.dumps(meta, indent=1) + "\n")
    atomic_write_text(out / "README.md", _readme(rnd, frames, cvat_zip is not None))
    return TaskSummary(out, rnd.index, tuple(frames), cvat_zip)


def _export_points(f: FrameQuery, stem: str, out: Path, img_path: Path | None, ontology: Ontology | None) -> TaskFrame:
    m = f.budget
    rows: list[list[str]] = []
    for j in range(m):
        x = y = z = ""
        if f.xyz is not None:
            x, y, z = (f"{float(v):.3f}" for v in f.xyz[j, :3])
        col = row = ""
        if f.pixels is not None:
            col, row = str(int(f.pixels[j, 0])), str(int(f.pixels[j, 1]))
        sid = sname = ""
        if f.suggested is not None:
            sid = str(int(f.suggested[j]))
            if ontology is not None and int(f.suggested[j]) in ontology:
                sname = ontology.name_of(int(f.suggested[j]))
        rows.append([str(int(f.indices[j])), x, y, z, col, row, sid, sname, ""])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    w.writerows(rows)
    if img_path is not None and f.pixels is not None:
        canvas = (read_image(img_path).astype(np.uint16) * 3 // 5).astype(np.uint8)  # dimmed
        h, w_ = canvas.shape[:2]
        if len(f.pixels) and ((f.pixels.min(0) < 0).any() or (f.pixels.max(0) >= (w_, h)).any()):
            raise DataError(f"{img_path}: the queried pixels of frame {f.name!r} reach (col {int(f.pixels[:, 0].max())}, "
                            f"row {int(f.pixels[:, 1].max())}) outside the {w_} x {h} image (a different image size?)")
        radius = max(2, round(min(h, w_) / 240))
        draw_points(canvas, f.pixels[:, 0].astype(np.int64), f.pixels[:, 1].astype(np.int64), MARK, radius)
    else:
        xyz = f.xyz if f.xyz is not None else np.zeros((0, 3), dtype=np.float32)
        canvas = bev_preview(np.asarray(xyz, dtype=np.float64), _read_scan(f.scan))
    data = out / "points" / f"{stem}.csv"
    data.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(data, buf.getvalue())
    preview = out / "previews" / f"{stem}.png"
    write_png(preview, canvas)
    return TaskFrame(f.name, stem, "points", m, str(preview.relative_to(out)), str(data.relative_to(out)),
                     str(img_path) if img_path else None)


def _export_pixels(f: FrameQuery, stem: str, out: Path, img_path: Path | None, labels: list[dict[str, Any]],
                   ontology: Ontology, prefill: bool, cvat_files: dict[str, bytes]) -> TaskFrame:
    from terraseg.io.png import encode_png

    assert f.grid_shape is not None
    h, w = f.grid_shape
    rows, cols = np.divmod(f.indices, w)
    by_id = {d["id"]: d for d in labels if d["id"] is not None}
    query = next(d for d in labels if d["name"] == QUERY_LABEL)
    names = np.full(f.budget, QUERY_LABEL, dtype=object)
    colors = np.tile(np.asarray(query["color"], dtype=np.uint8), (f.budget, 1))
    if prefill and f.suggested is not None:
        for j, sid in enumerate(f.suggested.tolist()):
            if sid in by_id:
                names[j] = by_id[sid]["name"]
                colors[j] = by_id[sid]["color"]
    cls_mask = np.zeros((h, w, 3), dtype=np.uint8)
    cls_mask[rows, cols] = colors
    obj_mask = np.zeros((h, w, 3), dtype=np.uint8)
    for k, name in enumerate(sorted(set(names.tolist())), start=1):
        sel = names == name
        obj_mask[rows[sel], cols[sel]] = voc_color(k)
    cvat_files[f"SegmentationClass/{stem}.png"] = encode_png(cls_mask)
    cvat_files[f"SegmentationObject/{stem}.png"] = encode_png(obj_mask)
    image_rel = None
    if img_path is not None:
        rgb = read_image(img_path)
        if rgb.shape[:2] != (h, w):
            raise DataError(f"{img_path}: image is {rgb.shape[1]} x {rgb.shape[0]} but frame {f.name!r} was queried "
                            f"on a {w} x {h} grid")
        dst = out / "images" / f"{stem}{img_path.suffix.lower()}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            shutil.copyfile(img_path, tmp)
        image_rel = str(dst.relative_to(out))
        canvas = (rgb.astype(np.uint16) * 3 // 5).astype(np.uint8)
    else:
        canvas = np.full((h, w, 3), 40, dtype=np.uint8)
    canvas[rows, cols] = MARK
    preview = out / "previews" / f"{stem}.png"
    write_png(preview, canvas)
    return TaskFrame(f.name, stem, "pixels", f.budget, str(preview.relative_to(out)),
                     f"cvat/SegmentationClass/{stem}.png", image_rel)


def _readme(rnd: QueryRound, frames: list[TaskFrame], cvat: bool) -> str:
    npts = sum(f.queried for f in frames if f.kind == "points")
    npix = sum(f.queried for f in frames if f.kind == "pixels")
    lines = [f"# Labelling task: query round {rnd.index} ({rnd.strategy}, {rnd.percent:g} % per frame)", "",
             f"{len(frames)} frame(s): {npts} point(s) and {npix} pixel(s) to label. Each frame has a preview in "
             "`previews/` with the queried points / pixels in magenta.", ""]
    if npts:
        lines += ["## Points", "", "Fill the `label` column of `points/<frame>.csv` with a class id or name "
                  "(leave it empty when unsure). The other columns are for orientation: `x, y, z` in metres, "
                  "`col, row` the camera pixel, `suggested` the model's guess.", ""]
    if cvat:
        lines += ["## Images (CVAT)", "", "1. Create a CVAT task from the files in `images/` with the labels of "
                  "`cvat_labels.json` (label constructor, \"Raw\").",
                  "2. Upload `cvat_annotations.zip` as \"Segmentation mask 1.1\": the queried pixels appear as "
                  "label `query`.", "3. Paint the right class over them.",
                  "4. Export the task as \"Segmentation mask 1.1\".", ""]
    lines += ["## Import", "", "    terraseg query import THIS_FOLDER" + (" --cvat EXPORT.zip" if cvat else ""), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------- import
@dataclass(frozen=True)
class ImportedFrame:
    """Labels read back for one frame: how many were queried, how many got a label."""

    name: str
    queried: int
    labelled: int


@dataclass(frozen=True)
class ImportSummary:
    """What :func:`import_task` stored."""

    state_dir: Path
    round: int
    frames: tuple[ImportedFrame, ...]
    labels_file: Path

    @property
    def queried(self) -> int:
        return sum(f.queried for f in self.frames)

    @property
    def labelled(self) -> int:
        return sum(f.labelled for f in self.frames)


def _class_id(value: str, ontology: Ontology | None, where: str) -> int:
    v = value.strip()
    if v == "":
        return UNLABELLED
    try:
        cid = int(v)
    except ValueError:
        if ontology is None:
            raise DataError(f"{where}: label {v!r} is not a class id; give an ontology to use class names") from None
        if v not in ontology:
            raise DataError(f"{where}: unknown class {v!r} in ontology {ontology.name!r}") from None
        return ontology.id_of(v)
    if cid == UNLABELLED:
        return cid
    if cid < 0 or (ontology is not None and cid not in ontology):
        raise DataError(f"{where}: class id {cid} is not in " + (f"ontology {ontology.name!r}" if ontology else "[0, ...)"))
    return cid


def read_point_labels(path: str | os.PathLike[str], frame: FrameQuery, ontology: Ontology | None = None) -> np.ndarray:
    """(budget,) int32 labels of a frame's queried points from a filled CSV or an ``index,label`` NPZ.

    Rows may come in any order and may be left out (not labelled); an index the round did not
    query, or a repeated index, is an error naming the file.
    """
    p = Path(path)
    pos = {int(i): j for j, i in enumerate(frame.indices.tolist())}
    out = np.full(frame.budget, UNLABELLED, dtype=np.int32)
    seen: set[int] = set()

    def put(idx: int, lab: int, where: str) -> None:
        if idx not in pos:
            raise DataError(f"{where}: point index {idx} was not queried in this round for frame {frame.name!r}")
        if idx in seen:
            raise DataError(f"{where}: point index {idx} appears twice")
        seen.add(idx)
        out[pos[idx]] = lab

    if p.suffix == ".npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                idx, lab = z["index"], z["label"]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{p}: expected an .npz with int arrays 'index' and 'label' ({exc})") from None
        if idx.shape != lab.shape or idx.ndim != 1 or idx.dtype.kind not in "ui" or lab.dtype.kind not in "ui":
            raise DataError(f"{p}: 'index' and 'label' must be equal-length 1-D integer arrays")
        for i, lb in zip(idx.tolist(), lab.tolist()):
            put(int(i), _class_id(str(lb), ontology, str(p)), str(p))
        return out
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "index" not in reader.fieldnames or "label" not in reader.fieldnames:
        raise DataError(f"{p}: a labels CSV needs the columns 'index' and 'label' (found {reader.fieldnames})")
    for line, row in enumerate(reader, start=2):
        where = f"{p}:{line}"
        try:
            idx = int((row["index"] or "").strip())
        except ValueError:
            raise DataError(f"{where}: index {row['index']!r} is not an integer") from None
        put(idx, _class_id(row["label"] or "", ontology, where), where)
    return out


class _CvatSource:
    """Files of a CVAT Segmentation-mask export: a folder or a .zip."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        if path.is_file():
            try:
                self._zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile:
                raise DataError(f"{path}: not a zip file (expected a CVAT 'Segmentation mask 1.1' export)") from None
            self._names = self._zip.namelist()
        elif path.is_dir():
            self._names = [str(p.relative_to(path)).replace(os.sep, "/") for p in path.rglob("*") if p.is_file()]
        else:
            raise DataError(f"{path}: CVAT export not found")

    def find(self, rel: str) -> str | None:
        """The stored name ending in ``rel`` (exports may add a top folder)."""
        for n in self._names:
            if n == rel or n.endswith("/" + rel):
                return n
        return None

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        return (self.path / name).read_bytes()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def read_cvat_labels(source: str | os.PathLike[str], frame: FrameQuery, stem: str,
                     name_to_id: Mapping[str, int | None]) -> np.ndarray | None:
    """(budget,) int32 labels of a frame's queried pixels from a CVAT Segmentation-mask export.

    ``name_to_id`` maps CVAT label names to class ids (None: not a label, e.g. ``background``).
    Returns None when the export has no mask for the frame.
    """
    src = _CvatSource(Path(source))
    try:
        lm = src.find("labelmap.txt")
        if lm is None:
            raise DataError(f"{source}: no labelmap.txt (expected a CVAT 'Segmentation mask 1.1' export)")
        colors = parse_labelmap(src.read(lm).decode("utf-8"), f"{source}/{lm}")
        mask_name = src.find(f"SegmentationClass/{stem}.png")
        if mask_name is None:
            return None
        from PIL import Image

        try:
            img = Image.open(io.BytesIO(src.read(mask_name)))
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except OSError as exc:
            raise DataError(f"{source}/{mask_name}: unreadable mask ({exc})") from None
    finally:
        src.close()
    assert frame.grid_shape is not None
    h, w = frame.grid_shape
    if rgb.shape[:2] != (h, w):
        raise DataError(f"{source}/{mask_name}: mask is {rgb.shape[1]} x {rgb.shape[0]}, the frame {w} x {h}")
    rows, cols = np.divmod(frame.indices, w)
    px = rgb[rows, cols].astype(np.int64)
    key = (px[:, 0] << 16) | (px[:, 1] << 8) | px[:, 2]
    out = np.full(frame.budget, UNLABELLED, dtype=np.int32)
    for k in np.unique(key).tolist():
        rgb_k = ((k >> 16) & 255, (k >> 8) & 255, k & 255)
        if rgb_k not in colors:
            j = int(np.argmax(key == k))
            raise DataError(f"{source}/{mask_name}: colour {rgb_k} at pixel (col {int(cols[j])}, row {int(rows[j])}) "
                            "is not in labelmap.txt")
        name = colors[rgb_k]
        if name not in name_to_id:
            raise DataError(f"{source}/{lm}: label {name!r} is not a label of this task")
        cid = name_to_id[name]
        if cid is not None:
            out[key == k] = cid
    return out


def import_task(task_dir: str | os.PathLike[str], cvat: str | os.PathLike[str] | None = None,
                points_dir: str | os.PathLike[str] | None = None, state_dir: str | os.PathLike[str] | None = None,
                round_index: int | None = None, ontology: Ontology | None = None) -> ImportSummary:
    """Read a labelling task's labels back and store them in the round's ``labels.npz``.

    Args:
        task_dir: folder written by :func:`export_task`.
        cvat: CVAT "Segmentation mask 1.1" export (zip or folder) for image frames (default:
            the task's own ``cvat/`` folder).
        points_dir: folder of filled ``<stem>.csv`` / ``<stem>.npz`` (default ``task_dir/points``).
        state_dir, round_index: the round to store into (default: what ``task.json`` recorded).
        ontology: to read class names in point CSVs (ids always work).

    Frames with no labels file keep what was stored before; labels of other frames are
    replaced.
    """
    task = Path(task_dir)
    meta_path = task / "task.json"
    if not meta_path.is_file():
        raise DataError(f"{task}: not a labelling task (no task.json)")
    meta = read_format_json(meta_path, FORMAT, "terraseg labelling task")
    sd = state_dir if state_dir is not None else meta.get("state_dir")
    if sd is None:
        raise DataError(f"{meta_path}: the task does not record its state folder; give it (--state)")
    ri = round_index if round_index is not None else int(meta["round"])
    rnd = load_round(sd, ri)
    pts = Path(points_dir) if points_dir is not None else task / "points"
    cv = Path(cvat) if cvat is not None else task / "cvat"
    name_to_id: dict[str, int | None] = {}
    for d in meta.get("labels") or []:
        name_to_id[d["name"]] = None if d["id"] is None else int(d["id"])
    by_name = {f["name"]: f for f in meta["frames"]}
    labels: dict[str, np.ndarray] = {}
    before = load_round_labels(sd, ri)
    result = []
    for f in rnd.frames:
        tf = by_name.get(f.name)
        if tf is None:
            raise DataError(f"{meta_path}: frame {f.name!r} of round {ri} is not in this task (a different round?)")
        if tf["queried"] != f.budget:
            raise DataError(f"{meta_path}: frame {f.name!r} has {tf['queried']} queried items in the task but "
                            f"{f.budget} in round {ri} (a different round?)")
        stem = tf["stem"]
        lab = None
        if f.kind == "pixels":
            if cv.exists():
                lab = read_cvat_labels(cv, f, stem, name_to_id)
        else:
            for suffix in (".npz", ".csv"):
                p = pts / f"{stem}{suffix}"
                if p.is_file():
                    lab = read_point_labels(p, f, ontology)
                    break
        if lab is not None:
            labels[f.name] = lab
        final = lab if lab is not None else before.get(f.name)
        n_lab = int((final != UNLABELLED).sum()) if final is not None else 0
        result.append(ImportedFrame(f.name, f.budget, n_lab))
    path = save_round_labels(sd, ri, labels)
    return ImportSummary(Path(sd), ri, tuple(result), path)
