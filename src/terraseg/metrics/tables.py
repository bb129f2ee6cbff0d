"""Aggregate a per-class IoU table under an evaluation preset: fine, category and composite mIoU.

A benchmark such as the GOOSE challenge reports a per-class IoU table, a per-category table and
means computed under its own rules (which classes count, which are left out of the mean, how the
categories are averaged). :func:`aggregate_table` re-computes those means from tables, so a
published table can be checked and a table from another tool can be scored under a preset.

Inputs (:func:`read_iou_tables`):

- **CSV / TSV** (``.csv``, ``.tsv``) and **Markdown** tables (``.md``, ``.txt``: the rows of a file
  that start with ``|``; any other text is skipped, so a whole ``report.md`` or a paper's appendix
  works). A file may hold several tables (CSV: separated by a blank line; each starts with a
  header). A table whose header has a class column (``id`` / ``class_id`` and/or ``class`` /
  ``name`` / ``class_name`` / ``label``) and an IoU column (any header containing ``iou``, e.g.
  ``IoU (%)`` or ``mIoU (%)``) gives class IoUs; one with a ``category`` column and an IoU column
  gives category IoUs; other tables (summaries) are skipped. Values are percentages when the
  header says ``%`` or any value of the column exceeds 1, else fractions. ``-``, ``nan``,
  ``n/a`` and empty cells mean "absent" (left out of the means, like a class absent from both
  ground truth and prediction).
- **JSON**: the ``metrics.json`` that ``terraseg eval`` / ``eval-masks`` write (``classes`` and
  ``categories`` sections, IoUs as fractions).
- **NPZ**: the ``confusion.npz`` they write. The matrix is re-scored exactly under the preset (the
  rows of the preset's ignored ids are removed first), categories included.

Class rows are matched to the preset's ontology by id and/or name (names also after snake_case
normalisation); category rows to the preset's category grouping (case-insensitive). Unknown
names, contradicting id and name, a class listed twice, or a scored class missing from the table
are errors naming the file and row, so a transcription slip cannot pass silently.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terraseg.errors import ConfigError, DataError
from terraseg.metrics.presets import EvalPreset, EvalResult
from terraseg.ontology import Ontology

_ABSENT = {"", "-", "--", "—", "nan", "n/a", "na", "none", "null"}
_ID_COLS = ("id", "class_id", "label_id", "class id")
_NAME_COLS = ("class", "name", "class_name", "label", "class name")
_CAT_COLS = ("category", "categories", "category_name")
_SUMMARY_ROWS = {"mean", "miou", "average", "avg", "overall", "all", "total", "mean_iou"}


@dataclass
class IouTables:
    """Class and category IoUs read from a file (fractions in 0..1, NaN = absent).

    Attributes:
        source: the file.
        classes: class id -> IoU.
        categories: category name (as in the preset's grouping) -> IoU; empty when the file has none.
        where: class id / category -> ``"file, line N"`` for messages.
        result: the full evaluation when the file was a confusion matrix.
    """

    source: Path
    classes: dict[int, float] = field(default_factory=dict)
    categories: dict[str, float] = field(default_factory=dict)
    where: dict[Any, str] = field(default_factory=dict)
    result: EvalResult | None = None


@dataclass
class TableAggregate:
    """The preset's means of a table (fractions; None where the preset or table has no value).

    Attributes:
        preset: the preset used.
        fine_miou: mean IoU over the preset's scored classes (absent classes left out).
        category_miou: mean category IoU, when the preset has a grouping and the table categories.
        composite: ``(fine + category) / 2`` for presets with a composite score.
        class_iou: class name -> IoU of the classes in the fine mean (NaN = absent).
        category_iou: category -> IoU.
        notes: what was left out and why.
    """

    preset: EvalPreset
    fine_miou: float
    category_miou: float | None
    composite: float | None
    class_iou: dict[str, float]
    category_iou: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, float | None]:
        """Headline numbers in percent, rounded to 4 decimals (None where undefined)."""
        def pct(x: float | None) -> float | None:
            return None if x is None or not math.isfinite(x) else round(100.0 * x, 4)

        out = {"mIoU": pct(self.fine_miou)}
        if self.category_miou is not None or self.preset.grouping is not None:
            out["category_mIoU"] = pct(self.category_miou)
        if self.preset.composite:
            out["composite_mIoU"] = pct(self.composite)
        return out

    def to_dict(self) -> dict[str, Any]:
        def f(x: float) -> float | None:
            return None if not math.isfinite(x) else float(x)

        return {"preset": self.preset.describe(), "summary": self.summary(),
                "classes": {k: f(v) for k, v in self.class_iou.items()},
                "categories": {k: f(v) for k, v in self.category_iou.items()}, "notes": self.notes}


# ----------------------------------------------------------------------------- reading
def _norm(s: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", s.strip().lower()).strip("_")


def _cell(s: str) -> str:
    return s.strip().strip("*").strip().strip("`").strip()


def _value(raw: str, where: str) -> float:
    s = _cell(raw).rstrip("%").strip()
    if s.lower() in _ABSENT:
        return float("nan")
    try:
        v = float(s)
    except ValueError:
        raise DataError(f"{where}: IoU {raw.strip()!r} is not a number (use '-' or an empty cell for an absent class)") from None
    if not math.isfinite(v) or v < 0:
        raise DataError(f"{where}: IoU {raw.strip()!r} must be a finite value >= 0")
    return v


def _markdown_blocks(text: str) -> list[list[tuple[int, list[str]]]]:
    blocks: list[list[tuple[int, list[str]]]] = []
    current: list[tuple[int, list[str]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if s.startswith("|"):
            cells = [c for c in s.strip("|").split("|")]
            if all(re.fullmatch(r"\s*:?-{2,}:?\s*", c) for c in cells):
                # the separator under a header: the row before it starts a new table, also when two
                # tables follow each other without a blank line
                if len(current) > 1:
                    blocks.append(current[:-1])
                    current = current[-1:]
                continue
            current.append((lineno, cells))
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def _csv_blocks(text: str, tsv: bool) -> list[list[tuple[int, list[str]]]]:
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delim = "\t" if tsv or "\t" in first else (";" if first.count(";") > first.count(",") else ",")
    reader = csv.reader(io.StringIO(text), delimiter=delim)
    blocks: list[list[tuple[int, list[str]]]] = []
    current: list[tuple[int, list[str]]] = []
    for row in reader:
        if not any(c.strip() for c in row):
            if current:
                blocks.append(current)
                current = []
            continue
        if row[0].lstrip().startswith("#") and not current:
            continue  # a comment line before a header
        current.append((reader.line_num, row))
    if current:
        blocks.append(current)
    return blocks


def _find(header: list[str], options: Sequence[str]) -> int | None:
    low = [_cell(h).lower() for h in header]
    for opt in options:
        if opt in low:
            return low.index(opt)
    return None


def _iou_column(header: list[str]) -> int | None:
    low = [_cell(h).lower() for h in header]
    exact = [i for i, h in enumerate(low) if re.sub(r"[\s(%)]+", "", h) in ("iou", "miou")]
    if exact:
        return exact[0]
    return next((i for i, h in enumerate(low) if "iou" in h), None)


def _class_id(onto: Ontology, id_cell: str | None, name_cell: str | None, where: str) -> int:
    cid = None
    if id_cell is not None and _cell(id_cell):
        try:
            cid = int(_cell(id_cell))
        except ValueError:
            raise DataError(f"{where}: class id {id_cell.strip()!r} is not an integer") from None
        if cid not in onto:
            raise DataError(f"{where}: ontology {onto.name!r} has no class with id {cid}")
    if name_cell is not None and _cell(name_cell):
        name = re.sub(r"\s*\((excluded|ignored)\)$", "", _cell(name_cell))
        by_name = onto.id_of(name) if name in onto else next(
            (c.id for c in onto if _norm(c.name) == _norm(name)), None)
        if by_name is None:
            import difflib

            close = difflib.get_close_matches(_norm(name), onto.names, n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise DataError(f"{where}: ontology {onto.name!r} has no class {name!r}{hint}")
        if cid is not None and cid != by_name:
            raise DataError(f"{where}: id {cid} is {onto.name_of(cid)!r} in ontology {onto.name!r}, not {name!r}")
        cid = by_name
    if cid is None:
        raise DataError(f"{where}: row names no class (empty id and name)")
    return cid


def _read_blocks(path: Path, blocks: list[list[tuple[int, list[str]]]], preset: EvalPreset) -> IouTables:
    onto = preset.ontology
    cats = list(onto.grouping(preset.grouping)) if preset.grouping is not None else []
    cat_by_low = {c.lower(): c for c in cats}
    out = IouTables(source=path)
    used = 0
    for block in blocks:
        (hline, header), rows = block[0], block[1:]
        iou_col = _iou_column(header)
        cat_col = _find(header, _CAT_COLS)
        id_col, name_col = _find(header, _ID_COLS), _find(header, _NAME_COLS)
        if iou_col is None or (cat_col is None and id_col is None and name_col is None):
            continue  # a summary or another table
        used += 1
        values = []
        for lineno, row in rows:
            where = f"{path}, line {lineno}"
            if len(row) <= max(i for i in (iou_col, cat_col, id_col, name_col) if i is not None):
                raise DataError(f"{where}: {len(row)} columns, expected {len(header)} (header on line {hline})")
            values.append((lineno, row, _value(row[iou_col], where)))
        finite = [v for *_, v in values if math.isfinite(v)]
        percent = "%" in header[iou_col] or any(v > 1.0 for v in finite)
        for lineno, row, v in values:
            where = f"{path}, line {lineno}"
            v = v / 100.0 if percent else v
            if v > 1.0 + 1e-9:
                raise DataError(f"{where}: IoU {row[iou_col].strip()} is above 100 %")
            if cat_col is not None:
                name = _cell(row[cat_col])
                if name.lower() in ("(uncategorized)", "uncategorized"):
                    continue  # the unscored bucket of a report
                if not cats:
                    raise DataError(f"{where}: a category row, but preset {preset.name!r} has no category grouping")
                if name.lower() not in cat_by_low:
                    raise DataError(f"{where}: category {name!r} is not one of the {preset.grouping!r} categories "
                                    f"of {onto.name!r} ({', '.join(cats)})")
                key: Any = cat_by_low[name.lower()]
                table: dict[Any, float] = out.categories
            else:
                name = "" if name_col is None else _norm(_cell(row[name_col]))
                if name in _SUMMARY_ROWS and name not in onto and (id_col is None or not _cell(row[id_col])):
                    continue  # a "mean" / "mIoU" line under a published table
                key = _class_id(onto, None if id_col is None else row[id_col],
                                None if name_col is None else row[name_col], where)
                table = out.classes
            if key in table:
                raise DataError(f"{where}: {'category' if cat_col is not None else 'class'} "
                                f"{key if isinstance(key, str) else onto.name_of(key)!r} already given at {out.where[key]}")
            table[key] = v
            out.where[key] = where
    if not used:
        raise DataError(f"{path}: no IoU table found (expected a header with a class column (id, class or name) or "
                        "a category column, and an IoU column such as 'IoU (%)')")
    return out


def _read_json(path: Path, data: Any, preset: EvalPreset) -> IouTables:
    if not isinstance(data, Mapping) or not isinstance(data.get("classes"), Mapping):
        raise DataError(f"{path}: expected the metrics.json of terraseg eval / eval-masks (a 'classes' section)")
    onto = preset.ontology
    out = IouTables(source=path)
    for name, entry in data["classes"].items():
        where = f"{path}: classes.{name}"
        if not isinstance(entry, Mapping) or "iou" not in entry:
            raise DataError(f"{where}: expected an entry with 'iou'")
        cid = _class_id(onto, None if entry.get("id") is None else str(entry["id"]), str(name), where)
        iou = entry["iou"]
        out.classes[cid] = float("nan") if iou is None else _value(str(iou), where)
        out.where[cid] = where
    cats = list(onto.grouping(preset.grouping)) if preset.grouping is not None else []
    for name, entry in (data.get("categories") or {}).items():
        if name == "(uncategorized)" or not cats:
            continue
        where = f"{path}: categories.{name}"
        if name not in cats:
            raise DataError(f"{where}: not one of the {preset.grouping!r} categories ({', '.join(cats)})")
        iou = entry.get("iou") if isinstance(entry, Mapping) else None
        out.categories[name] = float("nan") if iou is None else _value(str(iou), where)
    return out


def _read_matrix(path: Path, preset: EvalPreset) -> IouTables:
    from terraseg.metrics.confusion import ConfusionMatrix

    try:
        cm = ConfusionMatrix.load(path)
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not a confusion matrix written by terraseg ({exc})") from None
    onto = preset.ontology
    if cm.num_classes != onto.max_id + 1:
        raise DataError(f"{path}: the matrix covers {cm.num_classes} ids, ontology {onto.name!r} has "
                        f"{onto.max_id + 1}")
    names = cm.class_names or []
    clash = [(i, n) for i, n in enumerate(names) if n and i in onto and onto.name_of(i) != n]
    if clash:
        i, n = clash[0]
        raise DataError(f"{path}: id {i} is {n!r} in the matrix but {onto.name_of(i)!r} in ontology {onto.name!r}")
    notes = []
    ignore = set(preset.effective_ignore_ids())
    counted_without = sorted(set(cm.ignore_ids) - ignore)
    if counted_without:
        notes.append(f"the matrix was counted with ids {counted_without} ignored; their ground truth stays uncounted")
    rescored = cm.ignoring(ignore)  # the preset's ignored ground truth is not counted
    result = preset.evaluate(rescored)
    result.notes[:0] = notes
    out = IouTables(source=path, result=result)
    out.classes = {int(i): float(v) for i, v in zip(result.scores.class_ids, result.scores.iou)}
    if result.category_scores is not None:
        out.categories = {n: float(v) for n, v in zip(result.category_scores.class_names, result.category_scores.iou)
                          if n != "(uncategorized)"}
    return out


def read_iou_tables(path: str | os.PathLike[str], preset: EvalPreset) -> IouTables:
    """Class and category IoUs of a file (CSV / TSV, Markdown, metrics.json or confusion.npz).

    See the module docstring for the formats. Raises :class:`DataError` naming the file (and
    line) for a missing file, an unknown class or category, a class given twice, or a bad value.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: IoU table not found")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return _read_matrix(p, preset)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{p}: not a text file (expected CSV, Markdown, JSON or a confusion.npz)") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: invalid JSON ({exc})") from None
        return _read_json(p, data, preset)
    if suffix in (".csv", ".tsv"):
        return _read_blocks(p, _csv_blocks(text, suffix == ".tsv"), preset)
    return _read_blocks(p, _markdown_blocks(text), preset)


# ----------------------------------------------------------------------------- aggregation
def aggregate_table(tables: IouTables | Iterable[IouTables], preset: EvalPreset, *,
                    absent: Iterable[int] = (), allow_missing: bool = False) -> TableAggregate:
    """The preset's fine, category and composite mIoU of class and category IoU tables.

    Args:
        tables: what :func:`read_iou_tables` read (several files are merged; a class or category
            given in two files is an error).
        preset: the evaluation preset (its ontology, ignored and excluded ids, grouping, composite).
        absent: class ids to treat as absent (NaN) whatever the table says: published tables often
            print 0.00 for classes absent from the test set.
        allow_missing: treat scored classes missing from the table as absent instead of failing.

    Raises:
        DataError: a scored class missing from the table (without ``allow_missing``), or a value
            given twice.
    """
    items = [tables] if isinstance(tables, IouTables) else list(tables)
    onto = preset.ontology
    classes: dict[int, float] = {}
    categories: dict[str, float] = {}
    where: dict[Any, str] = {}
    exact = [t.result for t in items if t.result is not None]
    for t in items:
        for k, v in t.classes.items():
            if k in classes:
                raise DataError(f"class {onto.name_of(k)!r} given twice: {where.get(k, '?')} and {t.where.get(k, t.source)}")
            classes[k], where[k] = v, t.where.get(k, str(t.source))
        for c, v in t.categories.items():
            if c in categories:
                raise DataError(f"category {c!r} given twice: {where.get(c, '?')} and {t.where.get(c, t.source)}")
            categories[c], where[c] = v, t.where.get(c, str(t.source))
    notes: list[str] = []
    for r in exact:
        notes += r.notes
    ignored = set(preset.effective_ignore_ids())
    excluded = set(preset.exclude_ids)
    scored = [i for i in onto.ids.tolist() if i not in ignored and i not in excluded]
    absent = {int(a) for a in absent}
    unknown_absent = sorted(a for a in absent if a not in onto)
    if unknown_absent:
        raise ConfigError(f"absent ids {unknown_absent} are not classes of ontology {onto.name!r}")
    missing = [i for i in scored if i not in classes and i not in absent]
    if missing and not allow_missing:
        names = ", ".join(f"{i} {onto.name_of(i)}" for i in missing[:12]) + (" ..." if len(missing) > 12 else "")
        raise DataError(f"{len(missing)} class(es) scored by preset {preset.name!r} are missing from the table: {names} "
                        "(add them, with '-' for classes absent from the test data, or pass --allow-missing)")
    if missing:
        notes.append(f"missing from the table, treated as absent: {', '.join(onto.name_of(i) for i in missing)}")
    left_out = sorted(i for i in classes if i in ignored | excluded)
    if left_out:
        notes.append(f"not in the fine mean under preset {preset.name!r} (ignored or excluded): "
                     f"{', '.join(onto.name_of(i) for i in left_out)}")
    class_iou = {onto.name_of(i): (float("nan") if i in absent else classes.get(i, float("nan"))) for i in scored}
    nan_classes = [n for n, v in class_iou.items() if not math.isfinite(v)]
    if nan_classes:
        notes.append(f"{len(nan_classes)} absent class(es) left out of the mean: {', '.join(nan_classes)}")
    cat_values = None
    cat_iou: dict[str, float] = {}
    if preset.grouping is not None:
        cats = list(onto.grouping(preset.grouping))
        if categories:
            missing_cats = [c for c in cats if c not in categories]
            if missing_cats:
                raise DataError(f"categories missing from the table: {', '.join(missing_cats)} (preset {preset.name!r}, "
                                f"grouping {preset.grouping!r})")
            cat_iou = {c: categories[c] for c in cats}
            cat_values = list(cat_iou.values())
        else:
            notes.append(f"no category IoUs given: the category mIoU of grouping {preset.grouping!r} needs a category "
                         "table (category IoU cannot be derived from class IoUs), a metrics.json or a confusion.npz")
    fine, cat, comp = preset.aggregate(list(class_iou.values()), cat_values)
    return TableAggregate(preset=preset, fine_miou=fine, category_miou=cat, composite=comp, class_iou=class_iou,
                          category_iou=cat_iou, notes=notes)


def absent_ids(values: Iterable[str], ontology: Ontology) -> list[int]:
    """Class ids from ``"7,9,bikeway"``-style command-line values (ids or names, comma-separated)."""
    out = []
    for v in values:
        for tok in (t.strip() for t in str(v).split(",")):
            if not tok:
                continue
            if tok.isdigit():
                if int(tok) not in ontology:
                    raise ConfigError(f"--absent {tok}: ontology {ontology.name!r} has no class with id {tok}")
                out.append(int(tok))
            else:
                out.append(ontology.id_of(tok))
    return out
