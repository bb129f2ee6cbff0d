"""Base class of dataset readers: lazy, indexable, split-aware, with on-the-fly label remapping."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from terraseg.errors import DataError
from terraseg.frame import Frame
from terraseg.ontology import LabelMap, Ontology, get_label_map, get_ontology, looks_like_path

SPLITS = ("train", "val", "test")


class FrameDataset(Sequence[Frame]):
    """A dataset of frames read lazily from disk.

    Subclasses list their samples in ``__init__`` (cheap: file names only) into
    ``self._items`` and implement :meth:`_load`, which reads one sample into a :class:`Frame`
    whose labels are in ``self.source_ontology``. The base class applies the optional label
    map (``remap``) so every frame comes out in :attr:`ontology`.

    Args:
        root: dataset root folder.
        split: ``train``, ``val``, ``test`` or ``all`` (where the dataset defines splits).
        remap: label map applied to labels on load: a :class:`LabelMap`, the path of a LabelMap
            YAML, ``SOURCE->TARGET``, or the name of a target ontology with a built-in map from
            the source ontology (see :func:`terraseg.ontology.get_label_map`).
    """

    name = "dataset"
    source_ontology_name: str | None = None

    def __init__(self, root: str | os.PathLike[str], split: str = "all",
                 remap: LabelMap | str | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found ({self.describe_layout()})")
        if split not in (*SPLITS, "all"):
            raise DataError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)}, all)")
        self.split = split
        self._items: list[object] = []
        self.labelmap = self._resolve_remap(remap)

    # ------------------------------------------------------------------ for subclasses
    @classmethod
    def describe_layout(cls) -> str:
        """One line saying which folder layout is expected (used in error messages)."""
        return "expected a dataset folder"

    def _load(self, item: object) -> Frame:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ ontology
    @property
    def source_ontology(self) -> Ontology | None:
        return None if self.source_ontology_name is None else get_ontology(self.source_ontology_name)

    @property
    def ontology(self) -> Ontology | None:
        """The ontology of the labels this dataset yields (after remapping)."""
        return self.labelmap.target if self.labelmap is not None else self.source_ontology

    def _resolve_remap(self, remap: LabelMap | str | os.PathLike[str] | None) -> LabelMap | None:
        """The label map of ``remap`` (see :func:`terraseg.ontology.get_label_map`): a LabelMap, a
        map YAML (a user's own, from this dataset's ontology, which may come from a palette file),
        ``SOURCE->TARGET`` or a target ontology with a built-in map from this dataset's ontology."""
        if remap is None:
            return None
        src = self.source_ontology
        is_file = isinstance(remap, (str, os.PathLike)) and looks_like_path(remap)
        if src is None and not (isinstance(remap, LabelMap) or is_file or "->" in str(remap)):
            raise DataError(f"{self.root}: the {self.name} labels have no ontology to remap from; give the "
                            "dataset's ontology, or a label map YAML whose source is it")
        return get_label_map(remap, source=src)

    def _apply_remap(self, frame: Frame) -> Frame:
        if self.labelmap is None:
            return frame
        changes: dict[str, object] = {"ontology": self.labelmap.target.name}
        if frame.image_labels is not None:
            changes["image_labels"] = self.labelmap(frame.image_labels, source=str(frame.source.get("image_labels", frame.frame_id)))
        if frame.point_labels is not None:
            changes["point_labels"] = self.labelmap(frame.point_labels, source=str(frame.source.get("point_labels", frame.frame_id)))
        return frame.replace(**changes)

    # ------------------------------------------------------------------ sequence protocol
    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> Frame:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError("slice a dataset with .subset(indices)")
        n = len(self._items)
        if not -n <= index < n:
            raise IndexError(f"frame index {index} out of range for {n} frames")
        return self._apply_remap(self._load(self._items[index]))

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, split={self.split!r}, {len(self)} frames)"

    def frame_ids(self) -> list[str]:
        """Identifiers of the frames, in order (without loading them)."""
        return [self._item_id(it) for it in self._items]

    def _item_id(self, item: object) -> str:
        return str(item)


def read_split_list(path: Path) -> list[str]:
    """Lines of a split list file (``train.lst`` ...), stripped, blanks and comments dropped."""
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def check_labels_shape(labels: np.ndarray, expected: Sequence[int], path: Path, what: str) -> None:
    if tuple(labels.shape) != tuple(expected):
        raise DataError(f"{path}: {what} has shape {tuple(labels.shape)}, expected {tuple(expected)}")
