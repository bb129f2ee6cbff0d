"""Learned override rules: a readable JSON file, and applying it to arrays and folders.

The file (``"format": "terraseg-ensemble-rules"``, version 1) names classes, so people can
read and review it::

    {"format": "terraseg-ensemble-rules", "version": 1, "ontology": "goose",
     "class_names": [...], "class_ids": [...], "ignore_ids": [],
     "options": {"min_pixels": 500, "precision_margin": 0.05, "max_class_drop": 0.005, "min_gain": 5e-05, ...},
     "atoms": [{"m1": "fence", "m2": "curb", "m1_id": 5, "m2_id": 7, "pixels": 1234, "m1_correct": 100,
                "m2_correct": 900, "gain": 0.0012, "miou_after": 0.6123,
                "iou_change": {"curb": 0.01, "fence": -0.001}}, ...],
     "rules": [{"when_m2": "curb", "when_m1": ["fence", "gravel", "low_grass"], "trust": "m2"}, ...],
     "scores": {"tuning": {...}, "holdout": {...} or null, "kfold": {...} or null}}

``atoms`` (in acceptance order) are authoritative; ``rules`` groups them by model-2 class for
reading and must agree with them. IoU values and gains are fractions in 0..1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.ensemble.atoms import KFoldScores, SplitScores
from terraseg.ensemble.histogram import LabelKind, PairHistogram, _as_label_array, pair_label_folders
from terraseg.ensemble.search import SearchOptions, SearchResult
from terraseg.errors import ConfigError, DataError
from terraseg.io.atomic import atomic_write_text
from terraseg.progress import ProgressBar

FORMAT = "terraseg-ensemble-rules"
VERSION = 1


@dataclass(frozen=True)
class RuleAtom:
    """One override, by class name and ontology id, with its statistics on the tuning data."""

    m1: str
    m2: str
    m1_id: int
    m2_id: int
    pixels: int = 0
    m1_correct: int = 0
    m2_correct: int = 0
    gain: float = 0.0
    miou_after: float = float("nan")
    iou_change: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"m1": self.m1, "m2": self.m2, "m1_id": self.m1_id, "m2_id": self.m2_id, "pixels": self.pixels,
                "m1_correct": self.m1_correct, "m2_correct": self.m2_correct, "gain": _num(self.gain),
                "miou_after": _num(self.miou_after), "iou_change": dict(self.iou_change)}


@dataclass(frozen=True)
class Rule:
    """Atoms grouped by model-2 class: "if model 2 says ``when_m2`` and model 1 says one of ``when_m1``, trust model 2"."""

    when_m2: str
    when_m1: tuple[str, ...]
    trust: str = "m2"

    def to_dict(self) -> dict[str, Any]:
        return {"when_m2": self.when_m2, "when_m1": list(self.when_m1), "trust": self.trust}

    def __str__(self) -> str:
        return f"if model 2 says {self.when_m2} and model 1 says {' or '.join(self.when_m1)}, trust model 2"


def _num(x: float) -> float | None:
    return float(x) if x is not None and np.isfinite(x) else None


@dataclass
class RuleScores:
    """Where the rules were measured: tuning part, held-out part, k-fold estimate."""

    tuning: SplitScores | None = None
    holdout: SplitScores | None = None
    kfold: KFoldScores | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"tuning": None if self.tuning is None else self.tuning.to_dict(),
                "holdout": None if self.holdout is None else self.holdout.to_dict(),
                "kfold": None if self.kfold is None else self.kfold.to_dict()}


@dataclass
class ApplySummary:
    """What :meth:`RuleSet.apply_folders` did (pixel counts over all frames)."""

    frames: int
    pixels: int
    changed: int
    atom_pixels: list[int]
    out_dir: Path
    kind: str
    outputs: list[Path] = field(default_factory=list)

    @property
    def changed_fraction(self) -> float:
        return self.changed / self.pixels if self.pixels else 0.0


@dataclass
class RuleSet:
    """An ordered set of override atoms over an ontology's classes, plus how well they scored.

    Attributes:
        class_names, class_ids: the classes (ontology order) the rules were tuned over.
        ontology: ontology name (or None).
        ignore_ids: ground-truth ids that were not counted while tuning.
        atoms: accepted atoms in acceptance order.
        options: the search options used.
        scores: tuning / held-out / k-fold scores.
    """

    class_names: list[str]
    class_ids: list[int]
    atoms: list[RuleAtom]
    ontology: str | None = None
    ignore_ids: list[int] = field(default_factory=list)
    options: SearchOptions = field(default_factory=SearchOptions)
    scores: RuleScores = field(default_factory=RuleScores)

    def __post_init__(self) -> None:
        self.class_ids = [int(i) for i in self.class_ids]
        if len(self.class_names) != len(self.class_ids):
            raise ConfigError(f"{len(self.class_names)} class names but {len(self.class_ids)} class ids")
        self._tables: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_search(cls, result: SearchResult, hist: PairHistogram, scores: RuleScores | None = None) -> RuleSet:
        """Rules from a search run on ``hist`` (atoms carry class indices into ``hist``)."""
        names, ids = hist.class_names, hist.class_ids.tolist()
        atoms = [RuleAtom(m1=names[a.m1], m2=names[a.m2], m1_id=int(ids[a.m1]), m2_id=int(ids[a.m2]),
                          pixels=a.pixels, m1_correct=a.m1_correct, m2_correct=a.m2_correct, gain=a.gain,
                          miou_after=a.miou_after, iou_change={names[k]: v for k, v in a.iou_change.items()})
                 for a in result.atoms]
        return cls(class_names=list(names), class_ids=ids, atoms=atoms, ontology=hist.ontology,
                   ignore_ids=list(hist.ignore_ids), options=result.options, scores=scores or RuleScores())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def index_of(self, class_id: int) -> int:
        return self.class_ids.index(int(class_id))

    def pairs(self) -> list[tuple[int, int]]:
        """The atoms as ``(i, c)`` class indices (for :mod:`terraseg.ensemble.atoms`)."""
        return [(self.index_of(a.m1_id), self.index_of(a.m2_id)) for a in self.atoms]

    @property
    def rules(self) -> list[Rule]:
        """Atoms grouped by model-2 class, in order of each group's first accepted atom."""
        groups: dict[str, list[str]] = {}
        for a in self.atoms:
            groups.setdefault(a.m2, []).append(a.m1)
        return [Rule(when_m2=k, when_m1=tuple(v)) for k, v in groups.items()]

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "ontology": self.ontology, "class_names": list(self.class_names),
                "class_ids": list(self.class_ids), "ignore_ids": list(self.ignore_ids),
                "options": self.options.to_dict(), "atoms": [a.to_dict() for a in self.atoms],
                "rules": [r.to_dict() for r in self.rules], "scores": self.scores.to_dict()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the rules as indented JSON, atomically."""
        return atomic_write_text(path, dumps_readable(self.to_dict()) + "\n")

    @classmethod
    def from_dict(cls, d: Any, source: str = "rules") -> RuleSet:
        """Parse and validate a rules mapping; every problem is a :class:`DataError` naming ``source``."""
        def bad(msg: str) -> DataError:
            return DataError(f"{source}: {msg}")

        if not isinstance(d, dict) or d.get("format") != FORMAT:
            fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise bad(f"not a terraseg ensemble rules file (format {fmt!r}, expected {FORMAT!r})")
        if d.get("version") != VERSION:
            raise bad(f"unsupported rules version {d.get('version')!r} (this terraseg reads version {VERSION})")
        names = d.get("class_names")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise bad("class_names must be a non-empty list of strings")
        if len(set(names)) != len(names):
            raise bad("class_names holds duplicates")
        ids = d.get("class_ids", list(range(len(names))))
        if (not isinstance(ids, list) or len(ids) != len(names) or not all(isinstance(i, int) for i in ids)
                or any(b <= a for a, b in zip(ids, ids[1:]))):
            raise bad(f"class_ids must be {len(names)} ascending integers, one per class name")
        ignore = d.get("ignore_ids", [])
        if not isinstance(ignore, list) or not all(isinstance(i, int) for i in ignore):
            raise bad("ignore_ids must be a list of integers")
        try:
            opts = SearchOptions.from_dict(d.get("options") or {}, source="options")
        except ConfigError as exc:
            raise bad(str(exc)) from None
        raw_atoms = d.get("atoms")
        if not isinstance(raw_atoms, list):
            raise bad("atoms must be a list")
        by_name = {n: int(i) for n, i in zip(names, ids)}
        atoms: list[RuleAtom] = []
        seen: set[tuple[str, str]] = set()
        for k, a in enumerate(raw_atoms):
            where = f"atoms[{k}]"
            if not isinstance(a, dict):
                raise bad(f"{where} must be an object")
            for key in ("m1", "m2"):
                if a.get(key) not in by_name:
                    raise bad(f"{where}.{key} {a.get(key)!r} is not one of the class names")
                if f"{key}_id" in a and a[f"{key}_id"] != by_name[a[key]]:
                    raise bad(f"{where}.{key}_id {a[f'{key}_id']!r} does not match class {a[key]!r} "
                              f"(id {by_name[a[key]]})")
            if a["m1"] == a["m2"]:
                raise bad(f"{where} overrides {a['m1']!r} with itself")
            if (a["m1"], a["m2"]) in seen:
                raise bad(f"{where} repeats the atom {a['m1']} -> {a['m2']}")
            seen.add((a["m1"], a["m2"]))
            try:
                change = {str(n): float(v) for n, v in (a.get("iou_change") or {}).items()}
                gain = a.get("gain")
                after = a.get("miou_after")
                atoms.append(RuleAtom(m1=a["m1"], m2=a["m2"], m1_id=by_name[a["m1"]], m2_id=by_name[a["m2"]],
                                      pixels=int(a.get("pixels", 0)), m1_correct=int(a.get("m1_correct", 0)),
                                      m2_correct=int(a.get("m2_correct", 0)),
                                      gain=float("nan") if gain is None else float(gain),
                                      miou_after=float("nan") if after is None else float(after), iou_change=change))
            except (TypeError, ValueError, AttributeError) as exc:
                raise bad(f"{where}: bad value ({exc})") from None
        rs = cls(class_names=list(names), class_ids=list(ids), atoms=atoms, ontology=d.get("ontology"),
                 ignore_ids=list(ignore), options=opts)
        if "rules" in d and d["rules"] is not None:
            derived = [r.to_dict() for r in rs.rules]
            if d["rules"] != derived:
                raise bad("rules do not match atoms (atoms are authoritative: edit atoms; rules are derived)")
        rs.scores = _parse_scores(d.get("scores"), bad)
        return rs

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RuleSet:
        """Read a rules file (:class:`DataError` naming the file and the problem)."""
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: rules file not found")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{p}: unreadable rules file ({exc})") from None
        return cls.from_dict(d, source=str(p))

    # ------------------------------------------------------------------ applying
    def _lookup(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(id -> index LUT (65536,), pair -> output id table ((C+1)^2,), atom pair keys (A,))``;
        index ``C`` marks ids that are not classes."""
        if self._tables is None:
            c = self.num_classes
            ids = np.asarray(self.class_ids, dtype=np.int64)
            lut = np.full(65536, c, dtype=np.int64)
            lut[ids] = np.arange(c)
            i, k = np.divmod(np.arange((c + 1) ** 2), c + 1)
            out = np.where(i < c, ids[np.minimum(i, c - 1)], 0)
            keys = np.array([self.index_of(a.m1_id) * (c + 1) + self.index_of(a.m2_id) for a in self.atoms],
                            dtype=np.int64)
            if keys.size:
                out[keys] = ids[keys % (c + 1)]
            self._tables = (lut, out, keys)
        return self._tables

    def label_dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if max(self.class_ids) <= 255 else np.dtype(np.uint16)

    def apply_counts(self, m1: np.ndarray, m2: np.ndarray, source: str = "arrays") -> tuple[np.ndarray, np.ndarray]:
        """Apply the rules to two id arrays of the same shape; returns ``(ids, pixels per atom)``.

        ``ids`` has the shape of the inputs and dtype uint8 (uint16 when an id exceeds 255);
        it equals ``m1`` except where an atom fires.

        Raises:
            DataError: shapes differ or a value is not a class id (``source`` names the files).
        """
        a1, a2 = np.asarray(m1), np.asarray(m2)
        if a1.shape != a2.shape:
            raise DataError(f"{source}: shapes differ: model 1 {a1.shape}, model 2 {a2.shape}")
        f1 = _as_label_array(a1, "model-1", source)
        f2 = _as_label_array(a2, "model-2", source)
        lut, out, keys = self._lookup()
        c = self.num_classes
        key = lut[f1] * (c + 1)
        key += lut[f2]
        counts = np.bincount(key, minlength=(c + 1) ** 2).reshape(c + 1, c + 1)
        if counts[c].any() or counts[:, c].any():
            parts = []
            for what, f in (("model-1", f1), ("model-2", f2)):
                badm = lut[f] >= c
                if badm.any():
                    vals = np.unique(f[badm])[:10]
                    parts.append(f"{int(badm.sum())} {what} values are not class ids "
                                 f"({', '.join(map(str, vals.tolist()))})")
            raise DataError(f"{source}: " + "; ".join(parts))
        res = out[key].astype(self.label_dtype()).reshape(a1.shape)
        return res, counts.reshape(-1)[keys] if keys.size else np.zeros(0, dtype=np.int64)

    def apply(self, m1: np.ndarray, m2: np.ndarray, source: str = "arrays") -> np.ndarray:
        """Model 1's ids with model 2's where an atom fires (see :meth:`apply_counts`).

        >>> rs = RuleSet(["a", "b", "c"], [0, 1, 2], [RuleAtom("a", "c", 0, 2)])
        >>> rs.apply(np.array([0, 0, 1]), np.array([2, 1, 2])).tolist()
        [2, 0, 1]
        """
        return self.apply_counts(m1, m2, source)[0]

    def apply_folders(self, m1_dir: str | os.PathLike[str], m2_dir: str | os.PathLike[str],
                      out_dir: str | os.PathLike[str], *, kind: LabelKind = "auto", m1_suffix: str = "",
                      m2_suffix: str = "", progress: bool = False, summary_name: str = "summary.json") -> ApplySummary:
        """Apply the rules to every stem of two prediction folders and write id files to ``out_dir``.

        Files are paired by relative path without extension (and ``*_suffix``); outputs keep the
        relative path and the kind (``<stem>.png`` id PNGs, or ``<stem>.label`` with model 1's
        instance ids). Before anything is written, unpaired stems and size mismatches are
        reported in one :class:`DataError`. Every file and the JSON summary are written atomically.
        """
        from terraseg.io.labels import write_label_png
        from terraseg.io.scans import read_label, write_label

        out = Path(out_dir)
        for d in (m1_dir, m2_dir):
            if Path(d).exists() and out.resolve() == Path(d).resolve():
                raise DataError(f"{out}: the output folder must differ from the input folder {d}")
        pairs, k = pair_label_folders([(m1_dir, m1_suffix, "model-1"), (m2_dir, m2_suffix, "model-2")], kind)
        mismatched = []
        for _, (a, b) in pairs:
            sa, sb = _file_size(a, k), _file_size(b, k)
            if sa != sb:
                mismatched.append(f"{a} ({sa}) vs {b} ({sb})")
        if mismatched:
            more = f" and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""
            raise DataError(f"{len(mismatched)} prediction pair(s) differ in size: "
                            + "; ".join(mismatched[:5]) + more)
        total = changed = 0
        per_atom = np.zeros(len(self.atoms), dtype=np.int64)
        outputs: list[Path] = []
        from terraseg.ensemble.histogram import read_labels

        with ProgressBar(len(pairs), "applying rules", enabled=progress) as bar:
            for stem, (a, b) in pairs:
                src = f"{a} / {b}"
                if k == "label":
                    l1, inst = read_label(a)
                    l2 = read_label(b)[0]
                else:
                    l1, l2, inst = read_labels(a, k), read_labels(b, k), None
                if l1.shape != l2.shape:  # headers agreed but the data did not
                    raise DataError(f"{src}: sizes differ ({l1.shape} vs {l2.shape})")
                ids, counts = self.apply_counts(l1, l2, src)
                dest = out / f"{stem}.{'label' if k == 'label' else 'png'}"
                if k == "label":
                    write_label(dest, ids, inst)
                else:
                    write_label_png(dest, ids)
                outputs.append(dest)
                total += int(l1.size)
                changed += int(counts.sum())
                per_atom += counts
                bar.advance()
        summary = ApplySummary(frames=len(pairs), pixels=total, changed=changed, atom_pixels=per_atom.tolist(),
                               out_dir=out, kind=k, outputs=outputs)
        doc = {"frames": summary.frames, "pixels": summary.pixels, "changed": summary.changed,
               "changed_fraction": summary.changed_fraction, "kind": k, "m1_dir": str(m1_dir), "m2_dir": str(m2_dir),
               "atoms": [{"m1": a.m1, "m2": a.m2, "pixels": int(n)} for a, n in zip(self.atoms, per_atom)],
               "rules": [r.to_dict() for r in self.rules]}
        atomic_write_text(out / summary_name, json.dumps(doc, indent=2) + "\n")
        return summary


def dumps_readable(obj: Any, indent: int = 0, step: int = 2) -> str:
    """JSON with objects indented and lists of numbers / strings kept on one line (strict JSON, no NaN)."""
    pad, inner = " " * indent, " " * (indent + step)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(str(k))}: {dumps_readable(v, indent + step, step)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in obj):
            return json.dumps(list(obj), allow_nan=False)
        return "[\n" + ",\n".join(inner + dumps_readable(v, indent + step, step) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def _file_size(path: Path, kind: str) -> str:
    """A cheap size description from the file header: ``WxH`` for PNGs, ``N points`` for .label."""
    if kind == "label":
        return f"{path.stat().st_size // 4} points"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from None
    return f"{w}x{h}"


def _parse_scores(d: Any, bad: Any) -> RuleScores:
    if d is None:
        return RuleScores()
    if not isinstance(d, dict):
        raise bad("scores must be an object")
    try:
        return RuleScores(
            tuning=None if d.get("tuning") is None else SplitScores.from_dict(d["tuning"]),
            holdout=None if d.get("holdout") is None else SplitScores.from_dict(d["holdout"]),
            kfold=None if d.get("kfold") is None else KFoldScores.from_dict(d["kfold"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"scores: bad or missing field ({exc})") from None

