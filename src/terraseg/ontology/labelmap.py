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
from terraseg.ontology.registry import (
    builtin_map_path,
    get_ontology,
    list_label_maps,
    list_ontologies,
    looks_like_path,
)
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
            raise ConfigError(f"{where}: source ontology {src.name!r} has no classes {unknown_src}"
                              f"{_close_names(unknown_src, src.names)}")
        unknown_dst = sorted({v for v in mapping.values() if v not in dst})
        if unknown_dst:
            raise ConfigError(f"{where}: target ontology {dst.name!r} has no classes {unknown_dst}"
                              f"{_close_names(unknown_dst, dst.names)}")
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
    def from_yaml(cls, path: str | os.PathLike[str], source: Ontology | None = None,
                  target: Ontology | None = None) -> LabelMap:
        """Load a map file (keys: source, target, mapping, drop, drop_to, description).

        ``source`` and ``target`` in the file are built-in ontology names or paths of ontology /
        palette files (relative paths are taken from the map file's folder first, then from the
        working directory). A caller that already holds the ontology of the labels (a dataset
        read with a palette, say) passes it as ``source`` (or ``target``): the file's entry must
        then be its name or a file with the same class ids and names, and the map is built on the
        given ontology.
        """
        p = Path(path)
        data = read_yaml(p, "label map file", ConfigError)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        if "classes" in data and "mapping" not in data:
            raise ConfigError(f"{p}: this is an ontology, not a label map (a label map has source, target and mapping)")
        known = {"source", "target", "mapping", "drop", "drop_to", "description"}
        extra = sorted(set(data) - known)
        if extra:
            raise ConfigError(f"{p}: unknown keys {extra} (known: {sorted(known)})")
        for key in ("source", "target", "mapping"):
            if key not in data:
                raise ConfigError(f"{p}: missing key {key!r}")
        raw = data["mapping"] or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{p}: 'mapping' must be a mapping 'source class: target class', got {raw!r}")
        empty = [str(k) for k, v in raw.items() if v is None or str(v).strip() == ""]
        if empty:
            raise ConfigError(f"{p}: no target class for {empty} (give a target class, or list them under 'drop')")
        mapping = {str(k): str(v) for k, v in raw.items()}
        drop = data.get("drop") or []
        if not isinstance(drop, list):
            raise ConfigError(f"{p}: 'drop' must be a list of source class names, got {drop!r}")
        src = _map_side(data["source"], source, p, "source")
        dst = _map_side(data["target"], target, p, "target")
        return cls.from_mapping(src, dst, mapping, [str(d) for d in drop], data.get("drop_to"), where=str(p))

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


def _map_side(value: Any, given: Ontology | None, path: Path, side: str) -> Ontology:
    """The ontology a map file names as ``source`` / ``target``, reconciled with one the caller holds."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: {side!r} must be an ontology name or file, got {value!r}")
    if given is not None and value == given.name:
        return given
    ref: str | Path = value
    if looks_like_path(value) and not Path(value).is_absolute() and (path.parent / value).is_file():
        ref = path.parent / value
    try:
        onto = get_ontology(ref)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {side}: {exc}") from None
    if given is None:
        return onto
    if not onto.same_classes(given):
        raise _OntologyMismatch(f"{path}: the map's {side} is ontology {onto.name!r} but the labels are in ontology "
                                f"{given.name!r} (other class ids or names)", onto)
    return given


class _OntologyMismatch(ConfigError):
    """A map file starts from another ontology than the labels' (carries the file's ontology)."""

    def __init__(self, message: str, ontology: Ontology) -> None:
        super().__init__(message)
        self.ontology = ontology


def _bridge(source: Ontology, target: str) -> LabelMap | None:
    """The built-in map ``source -> target``, else the composition of the only two built-in maps
    ``source -> X -> target`` (raw ids to train ids to another ontology, say), else None.

    Several possible ``X`` are an error (the choice would change the result)."""
    pairs = list_label_maps()
    if (source.name, target) in pairs:
        return LabelMap.builtin(source.name, target)
    via = [x for s, x in pairs if s == source.name and (x, target) in pairs]
    if len(via) > 1:
        raise ConfigError(f"several chains of built-in maps lead from {source.name!r} to {target!r} (via "
                          f"{', '.join(via)}); give one explicitly, e.g. a label map YAML")
    if not via:
        return None
    return LabelMap.builtin(source.name, via[0]).compose(LabelMap.builtin(via[0], target))


def get_label_map(value: LabelMap | str | os.PathLike[str], source: Ontology | str | None = None) -> LabelMap:
    """The one way to turn what a user gives for ``remap`` / ``label_map`` into a :class:`LabelMap`.

    Args:
        value: a :class:`LabelMap`; the path of a LabelMap YAML (any ``.yaml`` / ``.yml`` or
            path-like string); ``"SOURCE->TARGET"`` for a built-in map; or a bare target
            ontology name, meaning the built-in map from ``source`` to it.
        source: the ontology of the labels the map will be applied to (for example a dataset's,
            which may come from a palette file). The map must start from it (same class ids and
            names); a map file may name it by its name.

    Raises:
        ConfigError: a missing or malformed map file, unknown classes, no such built-in map, or a
            map that does not start from ``source``.
    """
    src = None if source is None else get_ontology(source)
    if isinstance(value, LabelMap):
        if src is not None and not value.source.same_classes(src):
            raise ConfigError(f"label map {value} does not start from the labels' ontology {src.name!r}")
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"expected a label map file, 'source->target' or a target ontology name, got {value!r}")
    s = os.fspath(value)
    if looks_like_path(s) or Path(s).is_file():
        if not Path(s).is_file():
            raise ConfigError(f"{s}: label map file not found")
        try:
            return LabelMap.from_yaml(s, source=src)
        except _OntologyMismatch as exc:  # a map from the reader's usual train ids, say: bridge with a built-in map
            assert src is not None
            first = _bridge_or_none(src, exc.ontology)
            if first is None:
                raise
            return first.compose(LabelMap.from_yaml(s, source=first.target))
    if "->" in s:
        a, _, b = (t.strip() for t in s.partition("->"))
        m = _bridge(get_ontology(a), b)
        if m is None:
            LabelMap.builtin(a, b)  # raises the error listing the built-in maps
        assert m is not None
        if src is not None and not m.source.same_classes(src):
            bridge = _bridge_or_none(src, m.source)
            if bridge is None:
                raise ConfigError(f"built-in map {a}->{b} does not start from the labels' ontology {src.name!r}")
            m = bridge.compose(m)
        return m
    if src is None:
        raise ConfigError(f"remap {s!r}: a bare target ontology needs the labels' ontology; give 'SOURCE->{s}' "
                          "or the path of a label map YAML")
    if s in list_ontologies() and get_ontology(s).same_classes(src):
        return LabelMap.identity(src)
    m = _bridge(src, s) if src.name in list_ontologies() else None
    if m is None:
        LabelMap.builtin(src.name, s)  # raises the error listing the built-in maps
    assert m is not None
    if not m.source.same_classes(src):
        raise ConfigError(f"built-in map {src.name}->{s} starts from the built-in ontology {src.name!r}, whose "
                          f"classes differ from those of {src.path or src.name}; give a label map YAML")
    return m


def _bridge_or_none(source: Ontology, target: Ontology) -> LabelMap | None:
    """A built-in map (or chain) from ``source`` to an ontology with ``target``'s classes, or None."""
    if source.name not in list_ontologies() or not get_ontology(source.name).same_classes(source):
        return None
    try:
        m = _bridge(source, target.name)
    except ConfigError:
        return None
    return m if m is not None and m.target.same_classes(target) else None


def _close_names(unknown: list[str], names: list[str]) -> str:
    """`` (did you mean: a -> b, ...)`` for unknown class names with a close known one, else ``""``."""
    import difflib

    hints = [f"{u} -> {close[0]}" for u in unknown if (close := difflib.get_close_matches(u, names, n=1))]
    return f" (did you mean: {', '.join(hints)}?)" if hints else ""
