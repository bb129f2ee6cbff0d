"""Evaluation presets: which ids are ignored, which are left out of means, how categories fold.

Public reimplementations of the same benchmark disagree on these details (one GOOSE evaluator
counts class 0, another drops it and eight rare ids), so every choice is an explicit field of
an :class:`EvalPreset` and printed with the results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from terraseg.errors import ConfigError
from terraseg.metrics.confusion import ConfusionMatrix
from terraseg.metrics.scores import ClassScores, fold_matrix, nanmean_or_nan
from terraseg.ontology import Ontology, get_ontology

Uncategorized = Literal["bucket", "drop"]


@dataclass(frozen=True)
class EvalPreset:
    """How to turn a confusion matrix into the numbers a benchmark reports.

    Attributes:
        name: preset name.
        ontology: the ontology whose ids are evaluated. The preset holds the :class:`Ontology`
            itself, so one given as a YAML or palette file is never looked up again by name; a
            name or path passed here is resolved once with :func:`terraseg.ontology.get_ontology`.
        description: one line for reports.
        ignore_ids: ground-truth ids whose pixels are not counted at all. ``None`` uses the
            ontology's own ignore ids; ``()`` counts everything (GOOSE challenge: class 0 counts).
        exclude_ids: ids that are scored but left out of the fine mean.
        grouping: the category grouping for category mIoU (``None``: no category scores).
        uncategorized: what category evaluation does with classes in no category. ``"bucket"``
            folds them into one unscored group, so a pixel of a category predicted as an
            uncategorized class is still a miss for that category; ``"drop"`` removes their rows
            and columns before folding.
        composite: report ``composite = (fine mIoU + category mIoU) / 2``.
    """

    name: str
    ontology: Ontology
    description: str = ""
    ignore_ids: tuple[int, ...] | None = None
    exclude_ids: tuple[int, ...] = ()
    grouping: str | None = None
    uncategorized: Uncategorized = "bucket"
    composite: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "ontology", get_ontology(self.ontology))
        if self.composite and self.grouping is None:
            raise ConfigError(f"preset {self.name!r}: a composite score needs a category grouping")
        if self.uncategorized not in ("bucket", "drop"):
            raise ConfigError(f"preset {self.name!r}: uncategorized must be 'bucket' or 'drop'")

    @property
    def onto(self) -> Ontology:
        """The preset's ontology (same as :attr:`ontology`)."""
        return self.ontology

    def effective_ignore_ids(self) -> tuple[int, ...]:
        return tuple(sorted(self.onto.ignore_ids)) if self.ignore_ids is None else tuple(self.ignore_ids)

    def confusion_matrix(self, extra_ignore: Sequence[int] = ()) -> ConfusionMatrix:
        """An empty confusion matrix set up with this preset's ignore ids."""
        return ConfusionMatrix.for_ontology(self.onto, ignore_ids=self.effective_ignore_ids(),
                                            extra_ignore=extra_ignore)

    def describe(self) -> dict[str, Any]:
        onto = self.onto
        return {
            "name": self.name, "ontology": onto.name, "description": self.description,
            "ignore": [onto.name_of(i) if i in onto else i for i in self.effective_ignore_ids()],
            "exclude_from_mean": [onto.name_of(i) for i in self.exclude_ids],
            "grouping": self.grouping, "uncategorized": self.uncategorized, "composite": self.composite,
        }

    # ------------------------------------------------------------------ evaluation
    def _category_assignment(self) -> tuple[list[str], np.ndarray]:
        onto = self.onto
        groups = onto.grouping(self.grouping)
        cats = list(groups)
        bucket = len(cats) if self.uncategorized == "bucket" else -1
        assign = np.full(onto.max_id + 1, bucket, dtype=np.int64)
        for k, cat in enumerate(cats):
            assign[groups[cat]] = k
        return cats, assign

    def evaluate(self, cm: ConfusionMatrix) -> EvalResult:
        """Scores, category scores and composite for an accumulated matrix."""
        onto = self.onto
        if cm.num_classes != onto.max_id + 1:
            raise ConfigError(f"preset {self.name!r} expects a matrix over {onto.max_id + 1} ids of "
                              f"{onto.name!r}, got {cm.num_classes}")
        ignored = set(self.effective_ignore_ids())
        scored = [i for i in onto.ids.tolist() if i not in ignored]
        m = cm.matrix
        scores = ClassScores.from_matrix(m, class_ids=scored, class_names=cm.class_names,
                                         exclude_ids=self.exclude_ids)
        cat_scores = None
        if self.grouping is not None:
            cats, assign = self._category_assignment()
            ng = len(cats) + (1 if self.uncategorized == "bucket" else 0)
            folded = fold_matrix(m, assign, ng)
            cat_scores = ClassScores.from_matrix(folded, class_ids=np.arange(len(cats)),
                                                 class_names=[*cats, "(uncategorized)"][:ng])
        fine, cat, comp = self.aggregate(scores.iou[~np.isin(scores.class_ids, self.exclude_ids)],
                                         None if cat_scores is None else cat_scores.iou)
        return EvalResult(preset=self, scores=scores, category_scores=cat_scores, fine_miou=fine,
                          category_miou=cat, composite=comp, notes=list(scores.notes))

    def aggregate(self, class_iou: Sequence[float] | np.ndarray,
                  category_iou: Sequence[float] | np.ndarray | None = None) -> tuple[float, float | None, float | None]:
        """The preset's means from per-class and per-category IoUs (NaN = absent, left out).

        ``class_iou`` must already leave out excluded classes. Returns (fine mIoU, category mIoU
        or None, composite or None). This is also how a published per-class table is re-checked.
        """
        fine = nanmean_or_nan(np.asarray(class_iou, dtype=np.float64))
        if category_iou is None or self.grouping is None:
            return fine, None, None
        cat = nanmean_or_nan(np.asarray(category_iou, dtype=np.float64))
        comp = (fine + cat) / 2.0 if self.composite else None
        return fine, cat, comp


@dataclass
class EvalResult:
    """The outcome of :meth:`EvalPreset.evaluate`. IoUs are fractions in 0..1."""

    preset: EvalPreset
    scores: ClassScores
    category_scores: ClassScores | None
    fine_miou: float
    category_miou: float | None
    composite: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def aacc(self) -> float:
        return self.scores.aacc

    @property
    def macc(self) -> float:
        return self.scores.macc

    def summary(self) -> dict[str, float | None]:
        """Headline numbers in percent (None where undefined)."""
        def pct(x: float | None) -> float | None:
            return None if x is None or not np.isfinite(x) else round(100.0 * x, 4)

        out = {"aAcc": pct(self.scores.aacc), "mIoU": pct(self.fine_miou), "mAcc": pct(self.scores.macc),
               "mF1": pct(self.scores.mf1)}
        if self.category_miou is not None:
            out["category_mIoU"] = pct(self.category_miou)
        if self.composite is not None:
            out["composite_mIoU"] = pct(self.composite)
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"preset": self.preset.describe(), "summary": self.summary(),
                             "counted": self.scores.total, "classes": self.scores.as_dict(), "notes": self.notes}
        if self.category_scores is not None:
            d["categories"] = self.category_scores.as_dict()
        return d


# ---------------------------------------------------------------------- built-in presets
_GOOSE_REDUCED_EXCLUDED = (7, 8, 9, 35, 44, 56, 61, 63)

def _builtin_presets() -> dict[str, EvalPreset]:
    return {p.name: p for p in [
        EvalPreset(
            "goose-challenge", "goose",
            "GOOSE fine-grained challenge: 64-class mIoU (class 0 counts, no ignore id; classes absent "
            "from truth and prediction dropped), 11-category mIoU, composite = their mean",
            ignore_ids=(), grouping="goose-11", uncategorized="bucket", composite=True),
        EvalPreset(
            "goose-challenge-reduced", "goose",
            "GOOSE challenge variant used by some public reimplementations: class 0 ignored, ids "
            "7, 8, 9, 35, 44, 56, 61, 63 left out of the fine mean; 11 categories; composite",
            ignore_ids=(0,), exclude_ids=_GOOSE_REDUCED_EXCLUDED, grouping="goose-11", uncategorized="bucket",
            composite=True),
        EvalPreset(
            "goose-icra2025", "goose",
            "GOOSE with the 9-category ICRA-2025 grouping (class 0 counts, no ignore id)",
            ignore_ids=(), grouping="icra2025", uncategorized="bucket"),
    ]}


_PRESETS: dict[str, EvalPreset] = {}  # filled on first use (reading the ontologies costs a few ms)


def _presets() -> dict[str, EvalPreset]:
    if not _PRESETS:
        for name, preset in _builtin_presets().items():
            _PRESETS.setdefault(name, preset)
    return _PRESETS


def list_presets() -> list[str]:
    """Names of the built-in presets (plus ``default`` for any ontology)."""
    return sorted(_presets())


def default_preset(ontology: Ontology | str) -> EvalPreset:
    """The plain preset of an ontology (an :class:`Ontology`, a built-in name, or an ontology YAML
    or palette file): its own ignore ids, its default grouping, no composite."""
    onto = get_ontology(ontology)
    return EvalPreset("default", onto, f"{onto.name}: ontology ignore ids, default category grouping",
                      ignore_ids=None, grouping=onto.default_grouping)


def get_preset(name: str | None, ontology: Ontology | str | None = None) -> EvalPreset:
    """A built-in preset by name, or the ontology's default preset for ``None`` / ``"default"``.

    When both are given, the ontology must have the preset's classes (same ids and names; a
    palette file of GOOSE fits the GOOSE presets whatever its file name). ``ontology`` takes every
    form :func:`terraseg.ontology.get_ontology` accepts.
    """
    if name in (None, "default"):
        if ontology is None:
            raise ConfigError("the default preset needs an ontology")
        return default_preset(ontology)
    presets = _presets()
    if name not in presets:
        raise ConfigError(f"unknown evaluation preset {name!r}; available: default, {', '.join(list_presets())}")
    p = presets[name]
    if ontology is not None:
        onto = get_ontology(ontology)
        if not onto.same_classes(p.ontology):
            raise ConfigError(f"preset {name!r} is for ontology {p.ontology.name!r}, not {onto.name!r} "
                              f"({len(p.ontology)} classes against {len(onto)}, or other ids or names); "
                              "use the default preset or one of that ontology")
    return p


def register_preset(preset: EvalPreset, overwrite: bool = False) -> None:
    """Make a user-defined preset available by name."""
    presets = _presets()
    if preset.name in presets and not overwrite:
        raise ConfigError(f"preset {preset.name!r} already exists")
    presets[preset.name] = preset


def category_iou_vector(result: EvalResult) -> Mapping[str, float]:
    """Category name -> IoU of a result (empty when the preset has no grouping)."""
    if result.category_scores is None:
        return {}
    return dict(zip(result.category_scores.class_names, result.category_scores.iou.tolist()))
