"""Label maps: lookup tables that translate label ids from one ontology to another.

A map is defined by a name-to-name mapping file (see ``data/maps/*.yaml``)::

    source: goose
    target: traversability
    mapping: {asphalt: stable_terrain, forest: nondrivable_vegetation, ...}
    drop: [ego_vehicle]   # deliberately not mapped
    drop_to: void         # what dropped classes become

Building a map fails if any source class is neither mapped nor dropped. Applying it is one
vectorised numpy lookup (``lut[labels]``), never a loop over pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.ontology.core import Ontology
from terraseg.ontology.registry import builtin_map_path, get_ontology
from terraseg.yamlio import read_yaml


@dataclass(frozen=True)
class LabelMap:
    """A lookup table from ``source`` ids to ``target`` ids.

    Attributes:
        source, target: the two ontologies.
        lut: array of length ``source.max_id + 1`` with the target id of every source id
            (dtype ``target.label_dtype``); entries of ids that are not source classes are 0
            and flagged in ``valid``.
        valid: boolean array, True where the index is a source class.
        dropped: source class ids that were deliberately dropped (they map to ``drop_to``).
    """

    source: Ontology
    target: Ontology
    lut: np.ndarray
    valid: np.ndarray
    dropped: frozenset[int] = frozenset()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mapping(cls, source: Ontology | str, target: Ontology | str, mapping: Mapping[str, str],
                     drop: Iterable[str] = (), drop_to: str | None = None, where: str = "label map") -> LabelMap:
        """Build a map from class names.

        Args:
            mapping: source class name -> target class name.
            drop: source class names deliberately left unmapped; they become ``drop_to``.
            drop_to: target class name for dropped classes. Defaults to the target's single
                ignore class, else its single void class.
            where: a name for error messages (usually the mapping file).
        """
        src, dst = get_ontology(source), get_ontology(target)
        drop = list(drop)
        unknown_src = [n for n in [*mapping, *drop] if n not in src]
        if unknown_src:
            raise ConfigError(f"{where}: source ontology {src.name!r} has no classes {unknown_src}")
        unknown_dst = sorted({v for v in mapping.values() if v not in dst})
        if unknown_dst:
            raise ConfigError(f"{where}: target ontology {dst.name!r} has no classes {unknown_dst}")
        both = sorted(set(mapping) & set(drop))
        if both:
            raise ConfigError(f"{where}: classes both mapped and dropped: {both}")
        missing = [c.name for c in src if c.name not in mapping and c.name not in drop]
        if missing:
            raise ConfigError(f"{where}: source classes neither mapped nor dropped: {missing} "
                              "(map each one, or list it under 'drop')")
        drop_id = None
        if drop:
            if drop_to is None:
                cands = sorted(dst.ignore_ids) or sorted(dst.void_ids)
                if len(cands) != 1:
                    raise ConfigError(f"{where}: dropped classes need 'drop_to' (target {dst.name!r} has no "
                                      "single ignore or void class)")
                drop_id = cands[0]
            else:
                drop_id = dst[drop_to].id
        lut = np.zeros(src.max_id + 1, dtype=dst.label_dtype)
        for s_name, t_name in mapping.items():
            lut[src[s_name].id] = dst[t_name].id
        for s_name in drop:
            lut[src[s_name].id] = drop_id
        lut.setflags(write=False)
        return cls(src, dst, lut, src.valid_mask, frozenset(src[n].id for n in drop))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> LabelMap:
        """Load a map file (keys: source, target, mapping, drop, drop_to, description)."""
        p = Path(path)
        data = read_yaml(p, "label map file", ConfigError)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        known = {"source", "target", "mapping", "drop", "drop_to", "description"}
        extra = sorted(set(data) - known)
        if extra:
            raise ConfigError(f"{p}: unknown keys {extra} (known: {sorted(known)})")
        for key in ("source", "target", "mapping"):
            if key not in data:
                raise ConfigError(f"{p}: missing key {key!r}")
        mapping = {str(k): str(v) for k, v in (data["mapping"] or {}).items()}
        return cls.from_mapping(str(data["source"]), str(data["target"]), mapping,
                                [str(d) for d in data.get("drop") or []], data.get("drop_to"), where=str(p))

    @classmethod
    def builtin(cls, source: str, target: str) -> LabelMap:
        """A built-in map (see :func:`terraseg.ontology.list_label_maps`)."""
        return cls.from_yaml(builtin_map_path(source, target))

    @classmethod
    def identity(cls, ontology: Ontology | str) -> LabelMap:
        onto = get_ontology(ontology)
        return cls.from_mapping(onto, onto, {n: n for n in onto.names}, where=f"identity({onto.name})")

    # ------------------------------------------------------------------ use
    def __call__(self, labels: np.ndarray, check: bool = True, source: str = "labels") -> np.ndarray:
        """Map an array of source ids (any shape) to target ids with one lookup.

        With ``check`` (the default), ids that are not source classes raise :class:`DataError`
        naming ``source``. ``check=False`` skips that pass for callers that already know the ids
        are valid; invalid ids then give undefined results (numpy indexing semantics).
        """
        arr = np.asarray(labels)
        if arr.dtype.kind not in "ui":
            raise DataError(f"{source}: label array must have an integer dtype, got {arr.dtype}")
        if check and arr.size:
            out_of_range = (arr.dtype.kind == "i" and arr.min() < 0) or arr.max() > self.source.max_id
            if out_of_range or not self.valid[arr].all():
                self.source.check_ids(arr, source=source)
        return self.lut[arr]

    apply = __call__

    def compose(self, other: LabelMap) -> LabelMap:
        """The map ``other(self(x))``: first this map, then ``other``."""
        if other.source.name != self.target.name:
            raise ConfigError(f"cannot compose {self.source.name}->{self.target.name} with "
                              f"{other.source.name}->{other.target.name}")
        lut = np.zeros(len(self.lut), dtype=other.target.label_dtype)
        lut[self.valid] = other.lut[self.lut[self.valid]]
        lut.setflags(write=False)
        return LabelMap(self.source, other.target, lut, self.valid, self.dropped)

    def pairs(self) -> list[tuple[str, str]]:
        """(source name, target name) for every source class, in source id order."""
        return [(c.name, self.target.name_of(int(self.lut[c.id]))) for c in self.source]

    def to_dict(self) -> dict[str, Any]:
        """The YAML structure of this map (dropped classes listed under ``drop``)."""
        mapping = {s: t for (s, t), c in zip(self.pairs(), self.source) if c.id not in self.dropped}
        d: dict[str, Any] = {"source": self.source.name, "target": self.target.name, "mapping": mapping}
        if self.dropped:
            d["drop"] = [self.source.name_of(i) for i in sorted(self.dropped)]
            d["drop_to"] = self.target.name_of(int(self.lut[min(self.dropped)]))
        return d

    def __repr__(self) -> str:
        return f"LabelMap({self.source.name} -> {self.target.name})"
