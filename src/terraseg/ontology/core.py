"""The :class:`Ontology` type: a label space with ids, names, colours and categories.

An ontology is loaded from a small YAML file (see ``data/*.yaml`` for the built-in ones)::

    name: rellis3d
    title: RELLIS-3D, 20 train ids
    void: [void]            # class names meaning "unlabelled"
    ignore: [void]          # class names left out of training and evaluation by default
    default_grouping: coarse
    classes:
      - {id: 0, name: void, color: "#000000", category: void}
      - ...
    groupings:              # extra named category groupings: category -> class names
      traversable: {...}

Ids may be sparse (raw dataset ids such as RELLIS-3D's 0..34); label arrays indexed by id use
``max_id + 1`` slots, with unused slots marked invalid.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.yamlio import read_yaml

RGB = tuple[int, int, int]


def parse_color(value: Any, where: str) -> RGB:
    """Parse ``"#rrggbb"`` or ``[r, g, b]`` into an RGB tuple of ints in 0..255."""
    if isinstance(value, str):
        s = value.strip().lstrip("#")
        if len(s) == 6:
            try:
                return (int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16))
            except ValueError:
                pass
    elif isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) for v in value):
        if all(0 <= v <= 255 for v in value):
            return (int(value[0]), int(value[1]), int(value[2]))
    raise ConfigError(f"{where}: invalid colour {value!r} (expected '#rrggbb' or [r, g, b] in 0..255)")


def color_hex(rgb: RGB) -> str:
    """Format an RGB tuple as ``#rrggbb``."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


@dataclass(frozen=True)
class ClassInfo:
    """One class of an ontology.

    Attributes:
        id: the integer stored in label arrays.
        name: unique snake_case name.
        color: RGB colour (0..255 each) used in colour masks and plots.
        category: the class's category in the ontology's default grouping, or None.
    """

    id: int
    name: str
    color: RGB
    category: str | None = None


@dataclass(frozen=True)
class Ontology:
    """A label space: classes with ids, names, colours and categories.

    Attributes:
        name: short identifier (``goose``, ``rellis3d`` ...).
        classes: the classes, sorted by id.
        void_ids: ids that mean "unlabelled / undefined".
        ignore_ids: ids left out of training losses and evaluation by default. Evaluation
            presets may override this explicitly.
        groupings: named category groupings, each a mapping category -> class names. The
            grouping given by the classes' ``category`` fields is stored under
            ``default_grouping``.
        colors_unique: whether every class has its own colour (required to decode colour masks).
    """

    name: str
    classes: tuple[ClassInfo, ...]
    void_ids: frozenset[int] = frozenset()
    ignore_ids: frozenset[int] = frozenset()
    groupings: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    default_grouping: str | None = None
    title: str = ""
    description: str = ""
    source: str = ""
    colors_unique: bool = True
    path: Path | None = None

    def __post_init__(self) -> None:
        where = str(self.path) if self.path else f"ontology {self.name!r}"
        if not self.classes:
            raise ConfigError(f"{where}: no classes")
        ids = [c.id for c in self.classes]
        if any(i < 0 for i in ids):
            raise ConfigError(f"{where}: negative class id")
        dup_ids = sorted({i for i in ids if ids.count(i) > 1})
        if dup_ids:
            raise ConfigError(f"{where}: duplicate class ids {dup_ids}")
        names = [c.name for c in self.classes]
        dup_names = sorted({n for n in names if names.count(n) > 1})
        if dup_names:
            raise ConfigError(f"{where}: duplicate class names {dup_names}")
        if self.colors_unique:
            seen: dict[RGB, str] = {}
            for c in self.classes:
                if c.color in seen:
                    raise ConfigError(f"{where}: classes {seen[c.color]!r} and {c.name!r} share colour "
                                      f"{color_hex(c.color)} (set colors_unique: false if that is intended)")
                seen[c.color] = c.name
        for gname, groups in self.groupings.items():
            for cat, members in groups.items():
                unknown = [m for m in members if m not in names]
                if unknown:
                    raise ConfigError(f"{where}: grouping {gname!r} category {cat!r} names unknown classes {unknown}")
            all_members = [m for members in groups.values() for m in members]
            twice = sorted({m for m in all_members if all_members.count(m) > 1})
            if twice:
                raise ConfigError(f"{where}: grouping {gname!r} puts classes in several categories: {twice}")
        object.__setattr__(self, "classes", tuple(sorted(self.classes, key=lambda c: c.id)))

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path | None = None) -> Ontology:
        """Build an ontology from the YAML structure described in the module docstring."""
        where = str(path) if path else "ontology definition"
        known = {"name", "title", "description", "source", "void", "ignore", "colors_unique",
                 "default_grouping", "classes", "groupings", "notes"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown} (known: {sorted(known)})")
        if "name" not in data or "classes" not in data:
            raise ConfigError(f"{where}: 'name' and 'classes' are required")
        classes = []
        for i, c in enumerate(data["classes"]):
            if not isinstance(c, Mapping) or not {"id", "name", "color"} <= set(c):
                raise ConfigError(f"{where}: class #{i} needs id, name and color, got {c!r}")
            extra = sorted(set(c) - {"id", "name", "color", "category"})
            if extra:
                raise ConfigError(f"{where}: class {c.get('name')!r} has unknown keys {extra}")
            classes.append(ClassInfo(int(c["id"]), str(c["name"]),
                                     parse_color(c["color"], f"{where}: class {c['name']!r}"),
                                     None if c.get("category") is None else str(c["category"])))
        by_name = {c.name: c.id for c in classes}

        def ids_of(key: str) -> frozenset[int]:
            out = set()
            for n in data.get(key) or []:
                if n not in by_name:
                    raise ConfigError(f"{where}: '{key}' names unknown class {n!r}")
                out.add(by_name[n])
            return frozenset(out)

        groupings: dict[str, dict[str, tuple[str, ...]]] = {}
        default = data.get("default_grouping")
        if any(c.category is not None for c in classes):
            default = default or "default"
            grouped: dict[str, list[str]] = {}
            for c in sorted(classes, key=lambda c: c.id):
                if c.category is not None:
                    grouped.setdefault(c.category, []).append(c.name)
            groupings[default] = {k: tuple(v) for k, v in grouped.items()}
        elif default is not None and default not in (data.get("groupings") or {}):
            raise ConfigError(f"{where}: default_grouping {default!r} is not defined")
        for gname, groups in (data.get("groupings") or {}).items():
            if gname in groupings:
                raise ConfigError(f"{where}: grouping {gname!r} defined twice")
            groupings[str(gname)] = {str(k): tuple(str(m) for m in v) for k, v in groups.items()}
        return cls(name=str(data["name"]), classes=tuple(classes), void_ids=ids_of("void"),
                   ignore_ids=ids_of("ignore"), groupings=groupings, default_grouping=default,
                   title=str(data.get("title", "")), description=str(data.get("description", "")).strip(),
                   source=str(data.get("source", "")), colors_unique=bool(data.get("colors_unique", True)),
                   path=path)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Ontology:
        """Load an ontology from a YAML file."""
        p = Path(path)
        data = read_yaml(p, "ontology file", ConfigError)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{p}: expected a mapping at the top level")
        return cls.from_dict(data, path=p)

    def to_dict(self) -> dict[str, Any]:
        """The YAML structure of this ontology (round-trips through :meth:`from_dict`)."""
        d: dict[str, Any] = {"name": self.name}
        if self.title:
            d["title"] = self.title
        if self.description:
            d["description"] = self.description
        if self.source:
            d["source"] = self.source
        d["void"] = [self.name_of(i) for i in sorted(self.void_ids)]
        d["ignore"] = [self.name_of(i) for i in sorted(self.ignore_ids)]
        d["colors_unique"] = self.colors_unique
        if self.default_grouping:
            d["default_grouping"] = self.default_grouping
        d["classes"] = [{"id": c.id, "name": c.name, "color": color_hex(c.color),
                         **({"category": c.category} if c.category is not None else {})}
                        for c in self.classes]
        from_fields = any(c.category is not None for c in self.classes)  # default grouping lives in the classes
        extra = {g: {k: list(v) for k, v in groups.items()}
                 for g, groups in self.groupings.items() if not (from_fields and g == self.default_grouping)}
        if extra:
            d["groupings"] = extra
        return d

    # ----------------------------------------------------------------- lookups
    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[ClassInfo]:
        return iter(self.classes)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            return key in self._by_name
        if isinstance(key, (int, np.integer)):
            return int(key) in self._by_id
        return False

    def __getitem__(self, key: int | str) -> ClassInfo:
        """The class with this id (int) or name (str)."""
        if isinstance(key, str):
            if key not in self._by_name:
                raise ConfigError(f"ontology {self.name!r} has no class named {key!r}"
                                  f"{_suggest(key, self.names)}")
            return self._by_name[key]
        if int(key) not in self._by_id:
            raise ConfigError(f"ontology {self.name!r} has no class with id {key}")
        return self._by_id[int(key)]

    def __repr__(self) -> str:
        return f"Ontology({self.name!r}, {len(self)} classes, ids {self.ids.min()}..{self.max_id})"

    @cached_property
    def _by_name(self) -> dict[str, ClassInfo]:
        return {c.name: c for c in self.classes}

    @cached_property
    def _by_id(self) -> dict[int, ClassInfo]:
        return {c.id: c for c in self.classes}

    @property
    def num_classes(self) -> int:
        """Number of classes (not the same as ``max_id + 1`` when ids are sparse)."""
        return len(self.classes)

    @cached_property
    def ids(self) -> np.ndarray:
        """Class ids in ascending order, int64."""
        return np.array([c.id for c in self.classes], dtype=np.int64)

    @property
    def names(self) -> list[str]:
        """Class names in id order."""
        return [c.name for c in self.classes]

    @property
    def max_id(self) -> int:
        return int(self.ids[-1])

    @property
    def is_contiguous(self) -> bool:
        """True when the ids are exactly 0..N-1."""
        return self.ids[0] == 0 and self.max_id == len(self.classes) - 1

    @property
    def label_dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every id (uint8 up to 255, else uint16)."""
        return np.dtype(np.uint8) if self.max_id <= 255 else np.dtype(np.uint16)

    def same_classes(self, other: Ontology) -> bool:
        """Whether ``other`` has exactly the same class ids and names (colours, categories and the
        ontology name may differ): label arrays of one are then valid, meaning-preserving arrays of
        the other. A palette file of a built-in ontology is the usual case."""
        return self is other or (len(self) == len(other) and
                                 all(a.id == b.id and a.name == b.name for a, b in zip(self.classes, other.classes)))

    def id_of(self, name: str) -> int:
        return self[name].id

    def name_of(self, class_id: int) -> str:
        return self[int(class_id)].name

    @cached_property
    def valid_mask(self) -> np.ndarray:
        """Boolean array of length ``max_id + 1``: True where the id is a class of this ontology."""
        m = np.zeros(self.max_id + 1, dtype=bool)
        m[self.ids] = True
        m.setflags(write=False)
        return m

    @cached_property
    def palette(self) -> np.ndarray:
        """(max_id + 1, 3) uint8 RGB table indexed by id (unused ids are black)."""
        pal = np.zeros((self.max_id + 1, 3), dtype=np.uint8)
        for c in self.classes:
            pal[c.id] = c.color
        pal.setflags(write=False)
        return pal

    # ----------------------------------------------------------------- categories
    @property
    def grouping_names(self) -> list[str]:
        return list(self.groupings)

    def grouping(self, name: str | None = None) -> dict[str, list[int]]:
        """Category -> class ids for the named grouping (default grouping when None).

        Classes that belong to no category are absent from the result.
        """
        gname = name or self.default_grouping
        if gname is None or gname not in self.groupings:
            avail = ", ".join(self.groupings) or "none"
            raise ConfigError(f"ontology {self.name!r} has no category grouping {name!r} (available: {avail})")
        return {cat: [self._by_name[m].id for m in members] for cat, members in self.groupings[gname].items()}

    def category_of(self, class_id: int, grouping: str | None = None) -> str | None:
        """The category of a class in a grouping, or None when it belongs to none."""
        for cat, ids in self.grouping(grouping).items():
            if class_id in ids:
                return cat
        return None

    # ----------------------------------------------------------------- validation
    def check_ids(self, labels: np.ndarray, source: str = "labels", allow: Sequence[int] = ()) -> None:
        """Raise :class:`DataError` if ``labels`` holds ids that are not classes of this ontology.

        ``allow`` lists extra ids that are accepted (for example an ignore id like 255 that a
        training pipeline uses for padding). The message names ``source``, how many values are
        wrong and which ids they are.
        """
        arr = np.asarray(labels)
        if arr.size == 0:
            return
        counts = _id_histogram(arr)
        if counts is None:
            bad_vals, bad_counts = _bad_ids_slow(arr, self.valid_mask, allow)
        else:
            valid = np.zeros(len(counts), dtype=bool)
            n = min(len(counts), len(self.valid_mask))
            valid[:n] = self.valid_mask[:n]
            for a in allow:
                if 0 <= a < len(valid):
                    valid[a] = True
            bad = np.nonzero((counts > 0) & ~valid)[0]
            bad_vals, bad_counts = bad, counts[bad]
        if len(bad_vals):
            listing = ", ".join(f"{int(v)} ({int(n)}x)" for v, n in list(zip(bad_vals, bad_counts))[:10])
            more = "" if len(bad_vals) <= 10 else f" and {len(bad_vals) - 10} more"
            raise DataError(f"{source}: {int(np.sum(bad_counts))} values are not ids of ontology "
                            f"{self.name!r}: {listing}{more}")


def _id_histogram(arr: np.ndarray) -> np.ndarray | None:
    """Counts per value for non-negative integer arrays with values below 2**20, else None."""
    if arr.dtype.kind not in "ui":
        raise DataError(f"label array must have an integer dtype, got {arr.dtype}")
    if arr.dtype == np.uint8:
        return np.bincount(arr.ravel(), minlength=256)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= 1 << 20:
        return None
    return np.bincount(arr.ravel(), minlength=hi + 1)


def _bad_ids_slow(arr: np.ndarray, valid_mask: np.ndarray, allow: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    vals, counts = np.unique(arr, return_counts=True)
    ok = np.array([(0 <= v < len(valid_mask) and valid_mask[v]) or int(v) in allow for v in vals], dtype=bool)
    return vals[~ok], counts[~ok]


def _suggest(name: str, options: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(options), n=3)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
