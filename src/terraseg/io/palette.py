"""Palette files: writing an :class:`~terraseg.ontology.Ontology` as a palette, atomically.

Reading (every supported format) is :func:`terraseg.ontology.load_palette`, re-exported here;
see :mod:`terraseg.ontology.palette` for the formats.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

import yaml

from terraseg.errors import ConfigError
from terraseg.io.atomic import atomic_write_text
from terraseg.ontology.core import Ontology
from terraseg.ontology.palette import (
    PALETTE_SUFFIXES,
    VOID_NAMES,
    find_palette_file,
    load_palette,
    normalize_name,
    parse_color_value,
)

__all__ = ["PALETTE_SUFFIXES", "VOID_NAMES", "find_palette_file", "load_palette", "normalize_name",
           "parse_color_value", "write_palette"]


def write_palette(path: str | os.PathLike[str], ontology: Ontology) -> Path:
    """Write an ontology's ids, names and colours as a palette file, atomically.

    The format follows the suffix: ``.csv`` writes ``id,name,r,g,b``; ``.yaml`` / ``.yml`` /
    ``.json`` write the full terraseg ontology structure (lossless); anything else writes the
    text format ``id name r g b``, one class per line, after a comment header. Text and CSV keep
    ids, names and colours only (void / ignore are re-derived from the names on reading).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return atomic_write_text(p, yaml.safe_dump(ontology.to_dict(), sort_keys=False, allow_unicode=True))
    if suffix == ".json":
        return atomic_write_text(p, json.dumps(ontology.to_dict(), indent=2) + "\n")
    if suffix == ".csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["id", "name", "r", "g", "b"])
        w.writerows([c.id, c.name, *c.color] for c in ontology.classes)
        return atomic_write_text(p, buf.getvalue())
    bad = [c.name for c in ontology.classes if not c.name or re.search(r"\s|#", c.name)]
    if bad:
        raise ConfigError(f"{p}: class names {bad} contain spaces or '#' and cannot be written in the text format")
    lines = [f"# terraseg palette: {ontology.name} ({len(ontology)} classes)", "# id name r g b"]
    lines += [f"{c.id} {c.name} {c.color[0]} {c.color[1]} {c.color[2]}" for c in ontology.classes]
    return atomic_write_text(p, "\n".join(lines) + "\n")
