"""The import direction of docs/DESIGN: packages import downward only; training never imports
inference (nor inference training: what both need lives below them, in models/ or geometry/).

Every ``import`` / ``from ... import`` of every module is checked, function-level (lazy) imports
included, with ``ast`` (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "terraseg"

RANKS: dict[str, int] = {
    # ground floor
    "__init__": 0, "errors": 0, "progress": 0, "yamlio": 0, "specs": 0,
    "frame": 1, "ontology": 2, "io": 3, "geometry": 4,
    "datasets": 5, "extract": 5,  # extract: bags -> the generic dataset layout
    "sim": 6, "models": 7, "metrics": 8,
    "active": 8, "label_efficient": 8,  # algorithms on arrays and models: training and inference build on them
    "training": 9, "inference": 10,
    "ensemble": 11, "report": 12, "demo": 13, "cli": 14, "__main__": 15,
}
"""Ground (0) to roof: a module may import its own package and packages of lower or equal rank."""

FORBIDDEN: dict[str, set[str]] = {
    "training": {"inference"},
    "inference": {"training"},  # inference runs without the training stack (Lightning)
    "models": {"training", "inference", "metrics"},
}
"""Edges ruled out explicitly (clearer messages for the ones that matter most)."""


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(code: str, rel: Path) -> list[tuple[int, str]]:
    """(line, top-level terraseg package) of every terraseg import in the source ``code`` of the
    module at ``rel`` (relative to src/terraseg)."""
    tree = ast.parse(code, filename=str(rel))
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative import: resolve against the module's package
                base = list(rel.parent.parts)[:len(rel.parent.parts) - (node.level - 1)]
                module = ".".join(["terraseg", *base, *([module] if module else [])])
            names = [f"terraseg.{a.name}" for a in node.names] if module == "terraseg" else [module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "terraseg" and len(parts) > 1:
                out.append((node.lineno, parts[1]))
    return sorted(out)


MODULES = sorted(SRC.rglob("*.py"))


def test_every_package_has_a_rank() -> None:
    unknown = sorted({_package(p) for p in MODULES} - set(RANKS))
    assert not unknown, f"give these packages a rank in RANKS (and a place in DESIGN.md): {unknown}"


@pytest.mark.parametrize("package", sorted({_package(p) for p in MODULES}))
def test_packages_import_downward_only(package: str) -> None:
    bad = []
    for path in (p for p in MODULES if _package(p) == package):
        for line, target in _imports(path.read_text(), path.relative_to(SRC)):
            if target == package or target not in RANKS:
                continue
            if RANKS[target] > RANKS[package] or target in FORBIDDEN.get(package, ()):
                bad.append(f"{path.relative_to(SRC.parent)}:{line} imports terraseg.{target}")
    assert not bad, f"{package} must not import upward:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_relative_imports() -> None:
    code = ("import numpy\n"
            "def f():\n    from terraseg.inference.image import TTAConfig\n    import terraseg.io\n"
            "from . import data\nfrom .. import specs\nfrom terraseg import frame\n")
    assert _imports(code, Path("training/module.py")) == [(3, "inference"), (4, "io"), (5, "training"), (6, "specs"),
                                                          (7, "frame")]
