"""Palette files: class ids, names and colours in the formats datasets ship, read as an :class:`Ontology`.

Reading lives here, next to the :class:`Ontology` type, so that one resolution function
(:func:`terraseg.ontology.get_ontology`) accepts built-in names, ontology YAML files and palette
files alike; :func:`terraseg.io.palette.write_palette` writes them (atomically).

A palette turns RGB colour masks into id masks (:func:`terraseg.ontology.decode_colors`).
Supported formats, chosen by suffix:

``.csv`` / ``.tsv``
    A header row naming the columns (case-insensitive, any order, ``,`` ``;`` or tab
    separated). Id column: ``id``, ``label_id``, ``label_key``, ``class_id``, ``tag``,
    ``output_value``, ``value``, ``index``; without one, ids are the row order 0, 1, 2 ...
    Name column: ``name``, ``class_name``, ``class``, ``label_name``; without one, names
    are ``class_<id>``. Colour: ``r``, ``g``, ``b`` (or ``red``, ``green``, ``blue``) or one
    colour column ``hex``, ``color``, ``colour``, ``rgb``, ``display_color``. Other columns
    are ignored. Reads the GOOSE ``challenge_label_mapping.csv``, the RELLIS-3D
    ``ontology.csv`` and CamVid-style ``class_dict.csv`` files as they are.
``.yaml`` / ``.yml`` / ``.json``
    - a terraseg ontology (a mapping with ``name`` and ``classes``; loaded losslessly);
    - a mapping ``id -> {name, color}`` or ``id -> color`` (e.g. GOOSE ``goose_colormap.json``);
    - a list of ``{id, name, color}`` (``color`` may also be ``colour``, ``rgb``, ``hex``, or
      separate ``r``, ``g``, ``b`` keys);
    - the RELLIS-3D ``ontology.yaml``: a two-item list ``[{id: name}, {id: [r, g, b]}]``;
    - a SemanticKITTI-style config with ``labels: {id: name}`` and ``color_map: {id: [b, g, r]}``.
      ``color_map`` is **BGR** by SemanticKITTI's definition; pass ``color_order="rgb"`` for
      files that store RGB there despite the convention (the RELLIS-3D ``rellis.yaml`` does).
anything else (``.txt``, ``.pal`` ...)
    One class per line: ``id name r g b`` or ``id name #rrggbb``; blank lines and ``#``
    comments (whole lines, or after whitespace) are ignored; a name may contain spaces.

Colours are ``#rrggbb`` / ``rrggbb`` strings, ``[r, g, b]`` lists or ``r g b`` / ``r,g,b`` text,
each component an integer 0..255. Ids are integers 0..65535 (they must fit a 16-bit mask).

Except for terraseg ontologies, class names are normalised to snake_case (``"Traffic Light"``
-> ``traffic_light``), and classes named ``void``, ``unlabeled``, ``unlabelled``, ``undefined``
or ``unknown`` become the ontology's void *and* ignore classes. Two classes with the same
colour are an error (a palette that cannot decode masks) unless ``allow_shared_colors=True``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from terraseg.errors import ConfigError
from terraseg.ontology.core import ClassInfo, Ontology, color_hex

PALETTE_SUFFIXES = (".csv", ".tsv", ".yaml", ".yml", ".json", ".txt")
"""Suffixes of palette files a dataset folder may hold (``palette<suffix>``)."""

VOID_NAMES = frozenset({"void", "unlabeled", "unlabelled", "undefined", "unknown"})
"""Normalised class names that mark a palette class as void (and ignored)."""

_ID_COLUMNS = ("id", "label_id", "label_key", "class_id", "tag", "output_value", "value", "index")
_NAME_COLUMNS = ("name", "class_name", "class", "label_name")
_HEX_COLUMNS = ("hex", "color", "colour", "rgb", "display_color", "hex_color", "color_hex")
_RGB_COLUMNS = (("r", "g", "b"), ("red", "green", "blue"))
_MAX_ID = 65535
_ONTOLOGY_ONLY_KEYS = frozenset({"name", "title", "void", "ignore", "default_grouping", "groupings", "colors_unique"})

RGB = tuple[int, int, int]
_Entry = tuple[int, str, RGB, str]  # id, name, colour, where (file + line / entry) for messages


# ----------------------------------------------------------------------------- small parsers
def normalize_name(name: str, where: str) -> str:
    """snake_case a class name: lower case, runs of other characters -> ``_``."""
    out = re.sub(r"[^0-9a-z]+", "_", str(name).strip().lower()).strip("_")
    if not out:
        raise ConfigError(f"{where}: empty class name {name!r}")
    return out


def _parse_id(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: class id must be an integer, got {value!r}")
    if isinstance(value, int):
        i = value
    else:
        try:
            i = int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{where}: class id must be an integer, got {value!r}") from None
    if not 0 <= i <= _MAX_ID:
        raise ConfigError(f"{where}: class id {i} is outside 0..{_MAX_ID}")
    return i


def _component(value: Any, where: str, original: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: invalid colour {original!r}")
    try:
        v = int(str(value).strip()) if not isinstance(value, int) else value
    except ValueError:
        raise ConfigError(f"{where}: invalid colour {original!r} (expected '#rrggbb' or r g b in 0..255)") from None
    if not 0 <= v <= 255:
        raise ConfigError(f"{where}: colour component {v} of {original!r} is outside 0..255")
    return v


def parse_color_value(value: Any, where: str) -> RGB:
    """Parse ``"#rrggbb"``, ``"rrggbb"``, ``"r g b"``, ``"r,g,b"``, ``"(r, g, b)"`` or ``[r, g, b]``."""
    if isinstance(value, (list, tuple)):
        if len(value) != 3:
            raise ConfigError(f"{where}: colour {value!r} must have 3 components")
        r, g, b = (_component(v, where, value) for v in value)
        return (r, g, b)
    if isinstance(value, str):
        s = value.strip()
        h = s[1:] if s.startswith("#") else s
        if re.fullmatch(r"[0-9a-fA-F]{6}", h):
            return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))
        parts = [p for p in re.split(r"[\s,;()\[\]]+", s) if p]
        if len(parts) == 3:
            r, g, b = (_component(p, where, value) for p in parts)
            return (r, g, b)
    raise ConfigError(f"{where}: invalid colour {value!r} (expected '#rrggbb', [r, g, b] or 'r g b' in 0..255)")


# ----------------------------------------------------------------------------- format readers
def _read_text(p: Path) -> list[_Entry]:
    entries: list[_Entry] = []
    for lineno, raw in enumerate(p.read_text(encoding="utf-8-sig").splitlines(), start=1):
        line = re.sub(r"(^|\s)#(\s.*)?$", "", raw).strip()  # '# comment', not '#rrggbb'
        if not line or line.startswith("#"):
            continue
        where = f"{p}, line {lineno}"
        tokens = line.replace(",", " ").split()
        if not tokens[0].isdigit():
            raise ConfigError(f"{where}: class id must be an integer, got {tokens[0]!r} (expected lines 'id name r g b' "
                              f"or 'id name #rrggbb', got {raw.strip()!r})")
        if len(tokens) >= 3 and tokens[-1].startswith("#"):
            color_tokens, name_tokens = tokens[-1:], tokens[1:-1]
        elif len(tokens) >= 5:
            color_tokens, name_tokens = tokens[-3:], tokens[1:-3]
        else:
            raise ConfigError(f"{where}: expected 'id name r g b' or 'id name #rrggbb', got {raw.strip()!r}")
        if not name_tokens:
            raise ConfigError(f"{where}: missing class name in {raw.strip()!r} (expected 'id name r g b')")
        cid = _parse_id(tokens[0], where)
        color = parse_color_value(" ".join(color_tokens) if len(color_tokens) == 3 else color_tokens[0], where)
        entries.append((cid, normalize_name(" ".join(name_tokens), where), color, where))
    if not entries:
        raise ConfigError(f"{p}: no palette entries (expected lines 'id name r g b')")
    return entries


def _find_column(header: list[str], options: Sequence[str]) -> int | None:
    for opt in options:
        if opt in header:
            return header.index(opt)
    return None


def _read_csv(p: Path) -> list[_Entry]:
    text = p.read_text(encoding="utf-8-sig")
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delim = "\t" if p.suffix.lower() == ".tsv" or "\t" in first else (";" if first.count(";") > first.count(",") else ",")
    rows = csv.reader(io.StringIO(text), delimiter=delim)
    header: list[str] | None = None
    entries: list[_Entry] = []
    cols: dict[str, Any] = {}
    for row in rows:
        if not any(c.strip() for c in row) or (header is None and row[0].lstrip().startswith("#")):
            continue  # blank lines anywhere; comment lines before the header (later '#' starts a hex colour)
        lineno = rows.line_num
        if header is None:
            header = [c.strip().lower() for c in row]
            cols["id"] = _find_column(header, _ID_COLUMNS)
            cols["name"] = _find_column(header, _NAME_COLUMNS)
            cols["hex"] = _find_column(header, _HEX_COLUMNS)
            cols["rgb"] = next((tuple(header.index(c) for c in trio) for trio in _RGB_COLUMNS
                                if all(c in header for c in trio)), None)
            if cols["rgb"] is None and cols["hex"] is None:
                raise ConfigError(
                    f"{p}, line {lineno}: header {row!r} has no colour columns (expected r, g, b or a hex/color "
                    f"column, plus optional id ({', '.join(_ID_COLUMNS[:4])}, ...) and name columns)")
            continue
        where = f"{p}, line {lineno}"
        need = max(i for i in (cols["id"], cols["name"], cols["hex"], *(cols["rgb"] or ())) if i is not None)
        if len(row) <= need:
            raise ConfigError(f"{where}: {len(row)} columns, expected at least {need + 1} (header: {', '.join(header)})")
        cid = _parse_id(row[cols["id"]], where) if cols["id"] is not None else len(entries)
        if cols["rgb"] is not None:
            color = parse_color_value([row[i] for i in cols["rgb"]], where)
        else:
            color = parse_color_value(row[cols["hex"]], where)
        name = normalize_name(row[cols["name"]], where) if cols["name"] is not None else f"class_{cid}"
        entries.append((cid, name, color, where))
    if header is None:
        raise ConfigError(f"{p}: empty palette file (expected a header such as 'id,name,r,g,b')")
    if not entries:
        raise ConfigError(f"{p}: palette has a header but no classes")
    return entries


def _entry_from_value(cid_raw: Any, value: Any, where: str) -> _Entry:
    cid = _parse_id(cid_raw, where)
    here = f"{where}: entry {cid}"
    if isinstance(value, Mapping):
        return _entry_from_mapping({**value, "id": cid}, here)
    return (cid, f"class_{cid}", parse_color_value(value, here), here)


def _entry_from_mapping(d: Mapping[str, Any], where: str) -> _Entry:
    keys = {str(k).lower(): v for k, v in d.items()}
    if "id" not in keys:
        raise ConfigError(f"{where}: class entry {dict(d)!r} has no 'id'")
    cid = _parse_id(keys["id"], where)
    color_key = next((k for k in ("color", "colour", "rgb", "hex") if k in keys), None)
    if color_key is not None:
        color = parse_color_value(keys[color_key], f"{where} (id {cid})")
    elif all(k in keys for k in ("r", "g", "b")):
        color = parse_color_value([keys["r"], keys["g"], keys["b"]], f"{where} (id {cid})")
    else:
        raise ConfigError(f"{where}: class {cid} has no colour (expected 'color', 'rgb', 'hex' or r, g, b keys)")
    name_raw = next((keys[k] for k in ("name", "class_name", "class", "label") if k in keys), None)
    name = f"class_{cid}" if name_raw is None else normalize_name(str(name_raw), f"{where} (id {cid})")
    return (cid, name, color, f"{where} (id {cid})")


def _swap_bgr(entries: list[_Entry]) -> list[_Entry]:
    return [(i, n, (c[2], c[1], c[0]), w) for i, n, c, w in entries]


def _read_structured(p: Path, data: Any, color_order: str | None) -> list[_Entry] | Ontology:
    where = str(p)
    if isinstance(data, Mapping) and {"source", "target", "mapping"} <= set(data):
        raise ConfigError(f"{where}: this is a label map ({data['source']} -> {data['target']}), not an ontology "
                          "or palette; give it where a label map is expected (remap, label_map)")
    if isinstance(data, Mapping) and "classes" in data:  # a terraseg ontology
        return Ontology.from_dict({"name": p.stem, **data}, path=p)
    if isinstance(data, Mapping) and set(map(str, data)) & _ONTOLOGY_ONLY_KEYS:  # an incomplete terraseg ontology
        return Ontology.from_dict(data, path=p)
    if isinstance(data, Mapping) and "labels" in data and "color_map" in data:  # SemanticKITTI-style config
        labels, cmap = data["labels"], data["color_map"]
        if not isinstance(labels, Mapping) or not isinstance(cmap, Mapping):
            raise ConfigError(f"{where}: 'labels' and 'color_map' must be mappings id -> value")
        missing = sorted(set(map(str, labels)) ^ set(map(str, cmap)), key=lambda s: (len(s), s))
        if missing:
            raise ConfigError(f"{where}: ids {missing} appear in only one of 'labels' and 'color_map'")
        names = {str(k): v for k, v in labels.items()}
        entries = []
        for k, c in cmap.items():
            e = _entry_from_value(k, c, f"{where}: color_map")
            entries.append((e[0], normalize_name(str(names[str(k)]), e[3]), e[2], e[3]))
        return entries if color_order == "rgb" else _swap_bgr(entries)
    if (isinstance(data, list) and len(data) == 2 and all(isinstance(x, Mapping) for x in data)
            and all(str(k).strip().isdigit() for x in data for k in x)):  # RELLIS-3D ontology.yaml
        names, colors = data
        if set(map(str, names)) != set(map(str, colors)):
            raise ConfigError(f"{where}: the name list and the colour list give different ids")
        cmap = {str(k): v for k, v in colors.items()}
        entries = []
        for k, n in names.items():
            e = _entry_from_value(k, cmap[str(k)], where)
            entries.append((e[0], normalize_name(str(n), e[3]), e[2], e[3]))
        return _swap_bgr(entries) if color_order == "bgr" else entries
    if isinstance(data, Mapping):
        entries = [_entry_from_value(k, v, where) for k, v in data.items()]
    elif isinstance(data, list):
        entries = []
        for i, item in enumerate(data):
            if not isinstance(item, Mapping):
                raise ConfigError(f"{where}: item #{i} is {item!r}, expected a mapping with id, name and color")
            entries.append(_entry_from_mapping(item, f"{where}: item #{i}"))
    else:
        raise ConfigError(f"{where}: expected a mapping or a list of classes at the top level")
    if not entries:
        raise ConfigError(f"{where}: palette has no classes")
    return _swap_bgr(entries) if color_order == "bgr" else entries


def _build(entries: list[_Entry], name: str, path: Path, allow_shared_colors: bool) -> Ontology:
    seen_ids: dict[int, str] = {}
    seen_names: dict[str, str] = {}
    seen_colors: dict[RGB, tuple[str, str]] = {}
    for cid, cname, color, where in entries:
        if cid in seen_ids:
            raise ConfigError(f"{where}: class id {cid} already defined at {seen_ids[cid]}")
        if cname in seen_names:
            raise ConfigError(f"{where}: class name {cname!r} already defined at {seen_names[cname]}")
        if color in seen_colors and not allow_shared_colors:
            other, other_where = seen_colors[color]
            raise ConfigError(f"{where}: class {cname!r} has colour {color_hex(color)}, already used by {other!r} "
                              f"at {other_where} (colour masks could not be decoded; pass allow_shared_colors=True "
                              "to load it anyway)")
        seen_ids[cid], seen_names[cname] = where, where
        seen_colors.setdefault(color, (cname, where))
    classes = tuple(ClassInfo(cid, cname, color) for cid, cname, color, _ in entries)
    void = frozenset(c.id for c in classes if c.name in VOID_NAMES)
    unique = len({c.color for c in classes}) == len(classes)
    return Ontology(name=name, classes=classes, void_ids=void, ignore_ids=void, title=f"palette {path.name}",
                    source=str(path), colors_unique=unique, path=path)


# ----------------------------------------------------------------------------- public API
def load_palette(path: str | os.PathLike[str], name: str | None = None, *, color_order: str | None = None,
                 allow_shared_colors: bool = False) -> Ontology:
    """Read a palette file (format by suffix, see the module docstring) as an :class:`Ontology`.

    Args:
        path: the palette file.
        name: the ontology's name; defaults to the ``name`` inside a terraseg ontology file, else
            the file stem.
        color_order: ``"rgb"`` or ``"bgr"`` to override how list colours are read. By default
            SemanticKITTI-style ``color_map`` entries are BGR and everything else RGB; hex
            strings are always ``#rrggbb``.
        allow_shared_colors: accept two classes with one colour (the ontology then cannot
            decode colour masks).

    Raises:
        ConfigError: naming the file (and line or entry) for a missing file, a syntax error, a
            malformed row, a bad id or colour, or duplicate ids / names / colours.
    """
    p = Path(path)
    if color_order not in (None, "rgb", "bgr"):
        raise ConfigError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
    if not p.is_file():
        raise ConfigError(f"{p}: palette file not found")
    suffix = p.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            entries: list[_Entry] | Ontology = _read_csv(p)
            if color_order == "bgr":
                entries = _swap_bgr(entries)
        elif suffix in (".yaml", ".yml", ".json"):
            text = p.read_text(encoding="utf-8-sig")
            try:
                data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
            except (json.JSONDecodeError, yaml.YAMLError) as exc:
                raise ConfigError(f"{p}: invalid {'JSON' if suffix == '.json' else 'YAML'} ({exc})") from exc
            entries = _read_structured(p, data, color_order)
        else:
            entries = _read_text(p)
            if color_order == "bgr":
                entries = _swap_bgr(entries)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not a text file ({exc})") from None
    if isinstance(entries, Ontology):
        return entries if name is None else replace(entries, name=name)
    return _build(entries, name or p.stem, p, allow_shared_colors)


def find_palette_file(folder: str | os.PathLike[str]) -> Path | None:
    """The ``palette.<suffix>`` file of a dataset folder, or None; several are an error."""
    d = Path(folder)
    found = [d / f"palette{s}" for s in PALETTE_SUFFIXES if (d / f"palette{s}").is_file()]
    if len(found) > 1:
        raise ConfigError(f"{d}: several palette files ({', '.join(f.name for f in found)}); keep one")
    return found[0] if found else None
