"""GOOSE / GOOSE-Ex 2D camera images with semantic (and instance) masks.

Layout of the official 2D download (``goose_2d`` / ``gooseEx_2d``)::

    ROOT/images/{split}/{scenario}/<name>_<camera>.png       RGB camera images
    ROOT/labels/{split}/{scenario}/<name>_labelids.png       class ids (ontology ``goose``)
    ROOT/labels/{split}/{scenario}/<name>_instanceids.png    instance ids (optional)
    ROOT/labels/{split}/{scenario}/<name>_color.png          colour rendering (not read)

``split`` is ``train``, ``val`` or ``test``; the test split usually has no labels. ``<camera>``
is one of ``windshield_vis``, ``camera_left``, ``front`` or ``realsense`` (GOOSE-Ex platforms
use several); it is stripped from the image name, and images and labels are paired by
``scenario/<name>``. ``<name>`` normally ends in a nanosecond timestamp
(``2022-07-22_flight__0071_1658494234334310308``), which becomes :attr:`Frame.timestamp`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from terraseg.datasets.base import SPLITS, FrameDataset, check_labels_shape
from terraseg.errors import DataError
from terraseg.frame import Frame
from terraseg.io.images import IMAGE_SUFFIXES, read_image
from terraseg.io.labels import read_label_png
from terraseg.ontology import LabelMap

GOOSE_CAMERAS = ("windshield_vis", "camera_left", "front", "realsense")
"""Camera suffixes of GOOSE and GOOSE-Ex image names."""


@dataclass(frozen=True)
class GooseItem:
    """One listed sample: where its files are (labels / instances None when absent)."""

    split: str
    scenario: str
    name: str
    camera: str
    image: Path
    labels: Path | None
    instances: Path | None

    @property
    def frame_id(self) -> str:
        return f"{self.scenario}/{self.name}" if self.scenario else self.name


def goose_timestamp(name: str) -> float | None:
    """Seconds from the trailing nanosecond field of a GOOSE name (``..._1658494234334310308``), or None."""
    last = name.rsplit("_", 1)[-1]
    return int(last) / 1e9 if last.isdigit() and len(last) >= 16 else None


class Goose2DDataset(FrameDataset):
    """GOOSE / GOOSE-Ex camera images with ``goose`` class-id masks.

    Args:
        root: the folder holding ``images/`` and ``labels/``.
        split: ``train``, ``val``, ``test`` or ``all`` (every split folder present).
        camera: read only images of this camera (e.g. ``"windshield_vis"``); None reads every
            image whose name ends in one of ``cameras``.
        remap: label map applied on load (e.g. ``"traversability"``).
        with_instances: also read ``<name>_instanceids.png`` into ``image_instances`` (values as
            stored, uint8 or uint16); a missing instance file is then an error.
        cameras: the camera suffixes recognised (without the leading ``_``).
        label_suffix, instance_suffix: label file suffixes (before ``.png``).
        require_labels: whether an image without a label file is an error. Default: yes for
            ``train`` and ``val``, no for ``test`` (frames then carry no labels).
        check_ids: check that every mask value is a ``goose`` class id.

    Frames: ``image`` (H, W, 3) uint8, ``image_labels`` (H, W) uint8, optional
    ``image_instances``, ``frame_id`` ``"scenario/name"``, ``sequence`` = scenario,
    ``timestamp`` from the name, ``meta`` ``{"camera", "split"}``.
    """

    name = "goose2d"
    source_ontology_name = "goose"

    def __init__(self, root: str | os.PathLike[str], split: str = "train", camera: str | None = None,
                 remap: LabelMap | str | None = None, with_instances: bool = False, *,
                 cameras: Sequence[str] = GOOSE_CAMERAS, label_suffix: str = "_labelids",
                 instance_suffix: str = "_instanceids", image_dir: str = "images", label_dir: str = "labels",
                 require_labels: bool | None = None, check_ids: bool = True) -> None:
        super().__init__(root, split, remap)
        self.camera = camera
        self.cameras = tuple(cameras) if camera is None else (camera,)
        self.with_instances = with_instances
        self.label_suffix, self.instance_suffix = label_suffix, instance_suffix
        self.check_ids = check_ids
        images_root, labels_root = self.root / image_dir, self.root / label_dir
        if not images_root.is_dir():
            raise DataError(f"{self.root}: no {image_dir}/ folder ({self.describe_layout()})")
        present = [s for s in SPLITS if (images_root / s).is_dir()]
        if split == "all":
            splits = present
            if not splits:
                raise DataError(f"{images_root}: no split folders ({', '.join(SPLITS)}) found")
        else:
            if split not in present:
                raise DataError(f"{images_root / split}: split folder not found "
                                f"(found: {', '.join(present) or 'none'})")
            splits = [split]
        items: list[GooseItem] = []
        for s in splits:
            need = require_labels if require_labels is not None else s != "test"
            items += self._list_split(images_root / s, labels_root / s, s, need)
        if not items:
            which = f"camera {camera!r}" if camera else f"cameras {', '.join(self.cameras)}"
            raise DataError(f"{images_root}: no images of {which} in split {split!r}")
        self._items = items

    @classmethod
    def describe_layout(cls) -> str:
        return ("expected images/{split}/{scenario}/<name>_<camera>.png and "
                "labels/{split}/{scenario}/<name>_labelids.png")

    # ------------------------------------------------------------------ listing
    def _split_name(self, path: Path) -> tuple[str, str] | None:
        """(name, camera) of an image file, or None when it belongs to another camera."""
        stem = path.stem
        for cam in self.cameras:
            if stem.endswith(f"_{cam}") and len(stem) > len(cam) + 1:
                return stem[: -len(cam) - 1], cam
        if self.camera is None:
            raise DataError(f"{path}: image name does not end with a known camera suffix "
                            f"({', '.join('_' + c for c in self.cameras)}); pass camera= or cameras=")
        return None

    def _list_split(self, img_dir: Path, lbl_dir: Path, split: str, require: bool) -> list[GooseItem]:
        label_files = {p.relative_to(lbl_dir) for p in lbl_dir.rglob("*.png")} if lbl_dir.is_dir() else set()
        items, missing, missing_inst = [], [], []
        for img in sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            parsed = self._split_name(img)
            if parsed is None:
                continue
            name, cam = parsed
            rel_dir = img.parent.relative_to(img_dir)
            lbl_rel = rel_dir / f"{name}{self.label_suffix}.png"
            inst_rel = rel_dir / f"{name}{self.instance_suffix}.png"
            labels = lbl_dir / lbl_rel if lbl_rel in label_files else None
            instances = lbl_dir / inst_rel if inst_rel in label_files else None
            if labels is None and require:
                missing.append((img, lbl_dir / lbl_rel))
            if self.with_instances and labels is not None and instances is None:
                missing_inst.append(lbl_dir / inst_rel)
            scenario = rel_dir.as_posix() if rel_dir.parts else ""
            items.append(GooseItem(split, scenario, name, cam, img, labels, instances))
        if missing:
            img, want = missing[0]
            raise DataError(f"{img_dir}: {len(missing)} images have no label file (first: {img}, expected {want}); "
                            "pass require_labels=False to read them without labels")
        if missing_inst:
            raise DataError(f"{lbl_dir}: {len(missing_inst)} labelled images have no instance file "
                            f"(first expected: {missing_inst[0]}); pass with_instances=False")
        seen: dict[str, Path] = {}
        for it in items:
            key = f"{it.frame_id}_{it.camera}"
            if key in seen:
                raise DataError(f"{it.image}: same frame as {seen[key]} (two image formats of one name)")
            seen[key] = it.image
        return items

    def _item_id(self, item: object) -> str:
        assert isinstance(item, GooseItem)
        return item.frame_id

    # ------------------------------------------------------------------ loading
    def _load(self, item: object) -> Frame:
        assert isinstance(item, GooseItem)
        image = read_image(item.image)
        source: dict[str, Path] = {"image": item.image}
        labels = instances = None
        if item.labels is not None:
            labels = read_label_png(item.labels)
            check_labels_shape(labels, image.shape[:2], item.labels, f"label image (for {item.image.name})")
            if self.check_ids:
                self.source_ontology.check_ids(labels, source=str(item.labels))  # type: ignore[union-attr]
            source["image_labels"] = item.labels
        if self.with_instances and item.instances is not None:
            instances = read_label_png(item.instances)
            check_labels_shape(instances, image.shape[:2], item.instances, f"instance image (for {item.image.name})")
            source["image_instances"] = item.instances
        return Frame(frame_id=item.frame_id, image=image, image_labels=labels, image_instances=instances,
                     ontology="goose", timestamp=goose_timestamp(item.name),
                     sequence=item.scenario or None, source=source,
                     meta={"camera": item.camera, "split": item.split})
