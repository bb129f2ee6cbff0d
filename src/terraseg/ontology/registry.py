"""Built-in ontologies and label maps, shipped as YAML package data under ``data/``."""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path

from terraseg.errors import ConfigError
from terraseg.ontology.core import Ontology, _suggest


def _data_dir() -> Path:
    return Path(str(resources.files("terraseg.ontology") / "data"))


def list_ontologies() -> list[str]:
    """Names of the built-in ontologies, sorted."""
    return sorted(p.stem for p in _data_dir().glob("*.yaml"))


@functools.cache
def _load_builtin(name: str) -> Ontology:
    return Ontology.from_yaml(_data_dir() / f"{name}.yaml")


def get_ontology(name_or_path: str | os.PathLike[str] | Ontology) -> Ontology:
    """A built-in ontology by name (``goose``, ``rellis3d`` ...) or one loaded from a YAML file.

    Passing an :class:`Ontology` returns it unchanged, so functions can accept either.
    """
    if isinstance(name_or_path, Ontology):
        return name_or_path
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or os.sep in s:
        return Ontology.from_yaml(s)
    names = list_ontologies()
    if s not in names:
        raise ConfigError(f"unknown ontology {s!r}{_suggest(s, names)}; built-in: {', '.join(names)} "
                          "(or give the path of a YAML ontology file)")
    return _load_builtin(s)


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
        raise ConfigError(f"no built-in label map from {source!r} to {target!r} (built-in: {pairs})")
    return p
