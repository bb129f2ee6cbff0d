"""PLY point clouds: write labelled / coloured clouds, read the vertex element of PLY files.

Written files (:func:`write_ply`) have one ``vertex`` element with, in this order, ``x y z``
(``float``, or ``double`` for float64 input), ``red green blue`` (``uchar``) when colours are
given, ``label`` when labels are given, then any extra scalar fields, each a PLY property of the
array's own type. Binary files are ``binary_little_endian 1.0`` and are built from one numpy
structured array (no per-point loop). ASCII files are for small clouds and debugging: they are
formatted by :func:`numpy.savetxt` (row by row, about a second per 100,000 points) with ``%.9g``
for ``float`` and ``%.17g`` for ``double`` so values round-trip exactly. Files open in
CloudCompare, MeshLab, Open3D and Potree converters.

:func:`read_ply` reads ``ascii 1.0``, ``binary_little_endian 1.0`` and ``binary_big_endian 1.0``
files and returns the ``vertex`` element's scalar properties as ``{name: (N,) array}`` in file
order (``x``, ``y``, ``z`` and whatever else the file holds). Elements before ``vertex`` may only
hold scalar properties (they are skipped); elements after it (faces, ...) are ignored.

PLY scalar types and their numpy equivalents (both spellings are accepted when reading; the
short names are written)::

    char int8 | uchar uint8 | short int16 | ushort uint16 | int int32 | uint uint32
    float float32 | double float64
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from terraseg.errors import DataError
from terraseg.io.atomic import atomic_path
from terraseg.ontology import Ontology, encode_colors, get_ontology

_PLY_TYPES: dict[str, str] = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_WRITE_NAMES: dict[str, str] = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int", "u4": "uint",
                                "f4": "float", "f8": "double"}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_NAME = re.compile(r"^[^\s]+$")
_MAX_HEADER = 1 << 20


@dataclass(frozen=True)
class _Element:
    name: str
    count: int
    props: list[tuple[str, str]]  # (name, numpy base code such as "f4")
    has_list: bool


# ----------------------------------------------------------------------------- writing
def _ply_code(arr: np.ndarray, name: str, path: Path) -> str:
    """The numpy base code ("f4", "u1", ...) a field is written with; int64 / uint64 / bool narrowed."""
    kind, size = arr.dtype.kind, arr.dtype.itemsize
    if kind == "b":
        return "u1"
    if kind == "f":
        return "f8" if size == 8 else "f4"
    if kind in "iu":
        if size <= 4:
            return f"{kind}{size}"
        if arr.size == 0:
            return f"{kind}4"
        lo, hi = int(arr.min()), int(arr.max())
        for code in ((f"{kind}4",) if kind == "u" or lo < 0 else ("i4", "u4")):
            info = np.iinfo(np.dtype(code))
            if info.min <= lo and hi <= info.max:
                return code
        raise DataError(f"{path}: field {name!r} holds values in [{lo}, {hi}], which do not fit a 32-bit PLY integer")
    raise DataError(f"{path}: field {name!r} has dtype {arr.dtype}, which PLY cannot store (numbers only)")


def write_ply(path: str | os.PathLike[str], xyz: np.ndarray, *, labels: np.ndarray | None = None,
              colors: np.ndarray | None = None, fields: Mapping[str, np.ndarray] | None = None,
              binary: bool = True) -> Path:
    """Write a point cloud as a PLY file (atomically).

    Args:
        path: output file (parent folders are created).
        xyz: (N, 3) or (N, C>=3) coordinates (only the first three columns are written); float64
            input is written as ``double``, anything else as ``float``.
        labels: optional (N,) integer labels, property ``label``. 64-bit integers (PLY has none)
            are narrowed to ``int`` (or ``uint`` for values above 2^31 - 1) when the values fit.
        colors: optional (N, 3) uint8 RGB, properties ``red green blue``.
        fields: optional extra per-point scalars ``{name: (N,) array}`` (for example
            ``{"intensity": ...}``); names must not repeat the ones above or contain whitespace.
        binary: binary little endian (default) or ASCII.

    Returns:
        The path written.

    Raises:
        DataError: naming the file, on a wrong shape, dtype or field name; nothing is written.
    """
    out = Path(path)
    p = np.asarray(xyz)
    if p.ndim != 2 or p.shape[1] < 3 or p.dtype.kind not in "fiu":
        raise DataError(f"{out}: xyz must be an (N, 3) numeric array, got shape {p.shape} dtype {p.dtype}")
    n = len(p)
    coord = np.float64 if p.dtype == np.float64 else np.float32
    columns: list[tuple[str, np.ndarray]] = [(a, p[:, i].astype(coord, copy=False)) for i, a in enumerate("xyz")]
    if colors is not None:
        c = np.asarray(colors)
        if c.shape != (n, 3):
            raise DataError(f"{out}: colors must be ({n}, 3) RGB, got shape {c.shape}")
        if c.dtype != np.uint8:
            if c.dtype.kind not in "iu" or (c.size and (c.min() < 0 or c.max() > 255)):
                raise DataError(f"{out}: colors must be uint8 (or integers in 0..255), got dtype {c.dtype}")
            c = c.astype(np.uint8)
        columns += [(a, c[:, i]) for i, a in enumerate(("red", "green", "blue"))]
    extra: dict[str, np.ndarray] = {}
    if labels is not None:
        lab = np.asarray(labels)
        if lab.dtype.kind not in "iub":
            raise DataError(f"{out}: labels must be integers, got dtype {lab.dtype}")
        extra["label"] = lab
    for name, values in (fields or {}).items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise DataError(f"{out}: field name {name!r} must be a non-empty string without whitespace")
        if name in extra or name in ("x", "y", "z") or (colors is not None and name in ("red", "green", "blue")):
            raise DataError(f"{out}: field {name!r} is given twice")
        extra[name] = np.asarray(values)
    for name, values in extra.items():
        if values.shape != (n,):
            raise DataError(f"{out}: field {name!r} must have shape ({n},), got {values.shape}")
        columns.append((name, values))
    codes = [_ply_code(v, name, out) for name, v in columns]
    fmt = "binary_little_endian" if binary else "ascii"
    header = ["ply", f"format {fmt} 1.0", "comment written by terraseg", f"element vertex {n}"]
    header += [f"property {_WRITE_NAMES[code]} {name}" for (name, _), code in zip(columns, codes)]
    header.append("end_header")
    head = ("\n".join(header) + "\n").encode("ascii")
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        f.write(head)
        if binary:
            rec = np.empty(n, dtype=np.dtype([(name, "<" + code) for (name, _), code in zip(columns, codes)]))
            for (name, values), code in zip(columns, codes):
                rec[name] = values.astype(code, copy=False)
            f.write(rec.tobytes())
        elif n:
            table = np.empty((n, len(columns)), dtype=object)
            for j, ((_, values), code) in enumerate(zip(columns, codes)):
                table[:, j] = values.astype(code, copy=False)
            fmts = ["%.9g" if code == "f4" else "%.17g" if code == "f8" else "%d" for code in codes]
            np.savetxt(f, table, fmt=fmts, delimiter=" ", newline="\n")
    return out


def write_labeled_ply(path: str | os.PathLike[str], points: np.ndarray, labels: np.ndarray,
                      ontology: Ontology | str, *, binary: bool = True) -> Path:
    """Write a labelled scan coloured by its ontology's palette.

    Args:
        path: output file.
        points: (N, C>=3) float points; x, y, z are written, and column 3 (when present) as the
            ``intensity`` property.
        labels: (N,) class ids of ``ontology`` (written as ``label`` and as ``red green blue``).
        ontology: an :class:`~terraseg.ontology.Ontology` or a built-in ontology name.
        binary: binary little endian (default) or ASCII.

    Raises:
        DataError: naming the file, on ids that are not classes of the ontology or on shape
            mismatches.
    """
    out = Path(path)
    p = np.asarray(points)
    lab = np.asarray(labels)
    if p.ndim != 2 or p.shape[1] < 3:
        raise DataError(f"{out}: points must be (N, C>=3), got shape {p.shape}")
    if lab.shape != (len(p),):
        raise DataError(f"{out}: {lab.shape} labels for {len(p)} points (expected ({len(p)},))")
    onto = get_ontology(ontology)
    colors = encode_colors(lab, onto, source=str(out))
    fields = {"intensity": p[:, 3]} if p.shape[1] >= 4 else None
    return write_ply(out, p[:, :3], labels=lab, colors=colors, fields=fields, binary=binary)


# ----------------------------------------------------------------------------- reading
def _parse_header(raw: bytes, path: Path) -> tuple[str, list[_Element], int]:
    """(format, elements, byte offset of the body) of a PLY file's header."""
    if not raw.startswith(b"ply"):
        raise DataError(f"{path}: not a PLY file (it does not start with 'ply')")
    m = re.search(rb"end_header[ \t]*\r?\n", raw[:_MAX_HEADER])
    if m is None:
        raise DataError(f"{path}: PLY header has no 'end_header' line (truncated or not a PLY file)")
    body_start = m.end()
    try:
        text = raw[:m.start()].decode("ascii")
    except UnicodeDecodeError:
        raise DataError(f"{path}: PLY header is not ASCII text") from None
    fmt: str | None = None
    elements: list[_Element] = []
    for lineno, line in enumerate(text.splitlines()[1:], start=2):
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        where = f"{path}: PLY header line {lineno} ({line.strip()!r})"
        if tok[0] == "format":
            if len(tok) != 3 or tok[1] not in _FORMATS:
                raise DataError(f"{where}: unknown format (expected ascii, binary_little_endian or binary_big_endian)")
            if tok[2] != "1.0":
                raise DataError(f"{where}: unsupported PLY version {tok[2]} (expected 1.0)")
            fmt = tok[1]
        elif tok[0] == "element":
            if len(tok) != 3:
                raise DataError(f"{where}: expected 'element <name> <count>'")
            if not (tok[2].isascii() and tok[2].isdigit()):
                what = "negative" if tok[2].lstrip("-").isdigit() else "not a number"
                raise DataError(f"{where}: the {tok[1]} count {tok[2]!r} is {what} (expected a whole number >= 0)")
            elements.append(_Element(tok[1], int(tok[2]), [], False))
        elif tok[0] == "property":
            if not elements:
                raise DataError(f"{where}: property before any element")
            el = elements[-1]
            if len(tok) == 5 and tok[1] == "list":
                if tok[2] not in _PLY_TYPES or tok[3] not in _PLY_TYPES:
                    raise DataError(f"{where}: unknown list property type")
                elements[-1] = _Element(el.name, el.count, el.props, True)
            elif len(tok) == 3:
                if tok[1] not in _PLY_TYPES:
                    raise DataError(f"{where}: unknown property type {tok[1]!r} (known: {', '.join(_PLY_TYPES)})")
                if any(name == tok[2] for name, _ in el.props):
                    raise DataError(f"{where}: property {tok[2]!r} is declared twice")
                el.props.append((tok[2], _PLY_TYPES[tok[1]]))
            else:
                raise DataError(f"{where}: expected 'property <type> <name>' or 'property list <type> <type> <name>'")
        else:
            raise DataError(f"{where}: unknown header keyword {tok[0]!r}")
    if fmt is None:
        raise DataError(f"{path}: PLY header has no 'format' line")
    return fmt, elements, body_start


def read_ply(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The ``vertex`` properties of a PLY file.

    Args:
        path: an ASCII or binary PLY file with a ``vertex`` element of scalar properties.

    Returns:
        ``{property name: (N,) array}`` in file order, each with the property's numpy dtype
        (native byte order), for example ``x``, ``y``, ``z`` float32, ``red`` uint8, ``label``.

    Raises:
        DataError: naming the file, for a missing file, a malformed header (a vertex count that
            is not a whole number >= 0 included), a missing vertex element, list properties in or
            before it, truncated / malformed data, or (when the vertices are the last element)
            more data than the header declares.
    """
    src = Path(path)
    try:
        raw = src.read_bytes()
    except OSError as exc:
        raise DataError(f"{src}: cannot read PLY file ({exc.strerror or exc})") from None
    fmt, elements, start = _parse_header(raw, src)
    names = [e.name for e in elements]
    if "vertex" not in names:
        raise DataError(f"{src}: PLY file has no 'vertex' element (elements: {', '.join(names) or 'none'})")
    vi = names.index("vertex")
    for el in elements[:vi + 1]:
        if el.has_list:
            raise DataError(f"{src}: element {el.name!r} has list properties, which are not supported "
                            f"{'in' if el.name == 'vertex' else 'before'} the vertex element")
    vertex = elements[vi]
    if not vertex.props:
        raise DataError(f"{src}: the vertex element declares no properties")
    order = _FORMATS[fmt]
    last = vi == len(elements) - 1  # nothing may follow the vertices: the count can be checked both ways
    if order is None:
        return _read_ascii(raw[start:], elements[:vi], vertex, src, last)
    skip = sum(e.count * sum(np.dtype(code).itemsize for _, code in e.props) for e in elements[:vi])
    dtype = np.dtype([(name, order + code) for name, code in vertex.props])
    need = skip + vertex.count * dtype.itemsize
    have = len(raw) - start
    if have < need:
        raise DataError(f"{src}: truncated PLY data: {vertex.count} vertices of {dtype.itemsize} bytes need "
                        f"{need} bytes after the header, the file has {have}")
    if last and have - need >= dtype.itemsize:
        raise DataError(f"{src}: {have - need} bytes follow the {vertex.count} vertices the header declares "
                        f"(room for {(have - need) // dtype.itemsize} more): the vertex count in the header is "
                        "wrong or the file is damaged")
    rec = np.frombuffer(raw, dtype=dtype, count=vertex.count, offset=start + skip)
    return {name: rec[name].astype(np.dtype(code), copy=True) for name, code in vertex.props}


def _read_ascii(body: bytes, before: list[_Element], vertex: _Element, src: Path, last: bool = False
                ) -> dict[str, np.ndarray]:
    """Vertex properties of an ASCII body (one element instance per line); with ``last`` (no
    element after the vertices) further non-empty lines are an error."""
    lines = body.decode("ascii", errors="replace").splitlines()
    first = sum(e.count for e in before)
    rows = lines[first:first + vertex.count]
    if len(rows) < vertex.count:
        raise DataError(f"{src}: truncated PLY data: {vertex.count} vertex lines expected, found {len(rows)}")
    k = len(vertex.props)
    tokens = " ".join(rows).split()
    if len(tokens) != vertex.count * k:
        counts = np.array([len(r.split()) for r in rows])  # only on error: find the first bad line
        bad = int(np.argmax(counts != k)) if (counts != k).any() else 0
        raise DataError(f"{src}: vertex {bad} (line {first + bad + 1} of the data) has {counts[bad]} values, "
                        f"the header declares {k} properties")
    try:
        table = np.array(tokens, dtype=np.float64).reshape(vertex.count, k)
    except ValueError as exc:
        raise DataError(f"{src}: the vertex data holds a value that is not a number ({exc})") from None
    if last:
        extra = sum(1 for line in lines[first + vertex.count:] if line.strip())
        if extra:
            raise DataError(f"{src}: {extra} more data line(s) follow the {vertex.count} vertices the header "
                            "declares: the vertex count in the header is wrong or the file is damaged")
    out: dict[str, np.ndarray] = {}
    for j, (name, code) in enumerate(vertex.props):
        col = table[:, j]
        if code[0] != "f":
            info = np.iinfo(np.dtype(code))
            bad_val = ~np.isfinite(col) | (col != np.round(col)) | (col < info.min) | (col > info.max)
            if bad_val.any():
                i = int(np.argmax(bad_val))
                raise DataError(f"{src}: property {name!r} of vertex {i} is {col[i]:g}, not a valid "
                                f"{_WRITE_NAMES[code]}")
        out[name] = col.astype(code)
    return out
