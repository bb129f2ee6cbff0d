"""Built-in ontologies and label maps, shipped as YAML package data under ``data/``."""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

from terraseg.errors import ConfigError
from terraseg.ontology.core import Ontology, _suggest
from terraseg.ontology.palette import PALETTE_SUFFIXES, load_palette


def _data_dir() -> Path:
    return Path(str(resources.files("terraseg.ontology") / "data"))


def list_ontologies() -> list[str]:
    """Names of the built-in ontologies, sorted."""
    return sorted(p.stem for p in _data_dir().glob("*.yaml"))


@functools.cache
def _load_builtin(name: str) -> Ontology:
    return Ontology.from_yaml(_data_dir() / f"{name}.yaml")


def looks_like_path(value: str | os.PathLike[str]) -> bool:
    """Whether a string names a file rather than a built-in: it holds a path separator or ends in a
    palette / ontology file suffix (``.yaml``, ``.csv``, ``.txt`` ...)."""
    s = os.fspath(value)
    return "/" in s or os.sep in s or s.lower().endswith(PALETTE_SUFFIXES)


def get_ontology(value: str | os.PathLike[str] | Ontology) -> Ontology:
    """The one way to turn what a user gives into an :class:`Ontology`.

    Accepts an :class:`Ontology` (returned unchanged), a built-in name (``goose``,
    ``rellis3d`` ...), or the path of a file: a terraseg ontology YAML, or a palette in any format
    :func:`~terraseg.ontology.load_palette` reads (CSV / TSV, text ``id name r g b``, JSON or YAML
    colour maps, RELLIS-3D and SemanticKITTI label files). Every command, preset, dataset reader
    and label map resolves ontologies through this function, so whatever works in one place works
    in all of them. A built-in name always wins over a file of the same name without a suffix.

    Raises:
        ConfigError: an unknown name (with suggestions), a missing file, or a file that is not an
            ontology (naming the file and the problem).
    """
    if isinstance(value, Ontology):
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"expected an ontology name or file, got {type(value).__name__} {value!r}")
    s = os.fspath(value)
    names = list_ontologies()
    if s in names:
        return _load_builtin(s)
    if looks_like_path(s) or Path(s).is_file():
        return load_ontology_file(s)
    raise ConfigError(f"unknown ontology {s!r}{_suggest(s, names)}; built-in: {', '.join(names)} "
                      "(or give the path of an ontology YAML or palette file)")


def load_ontology_file(path: str | os.PathLike[str]) -> Ontology:
    """An ontology from a file: a terraseg ontology YAML (lossless) or a palette file of any format."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder, not an ontology file (a terraseg ontology YAML or a palette file)")
    if not p.is_file():
        raise ConfigError(f"{p}: ontology file not found (expected a terraseg ontology YAML or a palette file)")
    return load_palette(p)


def list_label_maps() -> list[tuple[str, str]]:
    """(source, target) pairs of the built-in label maps, sorted."""
    out = []
    for p in (_data_dir() / "maps").glob("*.yaml"):
        src, _, dst = p.stem.partition("__")
        out.append((src, dst))
    return sorted(out)


def builtin_map_path(source: str, target: str) -> Path:
    """Path of the built-in map file from ``source`` to ``target``; ConfigError if none exists."""
    p = _data_dir() / "maps" / f"{source}__{target}.yaml"
    if not p.is_file():
        pairs = ", ".join(f"{a}->{b}" for a, b in list_label_maps())
        raise ConfigError(f"no built-in label map from {source!r} to {target!r} (built-in: {pairs}; "
                          "or give the path of a label map YAML)")
    return p
