"""Two-model rule-learning ensemble (as in the GOOSE 2D challenge write-up) and N-model score ensembles.

The rule-learning ensemble counts one histogram ``H[m1_pred, m2_pred, gt]`` over the
validation frames, then greedily picks *atoms* ``(i, c)``: "where model 1 says ``i`` and model 2
says ``c``, trust model 2". Every atom's effect on every class IoU is exact from ``H``, so the
search never re-reads the data. Scores follow :mod:`terraseg.metrics` (the ontology's default
preset), so the ensemble's mIoU is what ``terraseg eval-masks`` reports for its output.

>>> import numpy as np
>>> from terraseg.ensemble import PairHistogram, SearchOptions, greedy_search, histogram_arrays
>>> gt = np.array([0] * 10 + [1] * 10 + [2] * 10)
>>> m1 = np.array([0] * 10 + [2] * 10 + [2] * 10)        # model 1 calls class 1 "2"
>>> m2 = np.array([1] * 10 + [1] * 10 + [0] * 10)        # model 2 gets class 1 right
>>> h = PairHistogram(histogram_arrays(m1, m2, gt, 3), ["a", "b", "c"])
>>> res = greedy_search(h, SearchOptions(min_pixels=5, max_class_drop=1.0))
>>> [(h.class_names[a.m1], h.class_names[a.m2]) for a in res.atoms]
[('c', 'b')]
>>> round(res.m1.miou, 3), round(res.ensemble.miou, 3)
(0.5, 1.0)

Modules: :mod:`~terraseg.ensemble.histogram` (counting), :mod:`~terraseg.ensemble.atoms`
(exact scores), :mod:`~terraseg.ensemble.search` (greedy search), :mod:`~terraseg.ensemble.rules`
(JSON rules, applying them), :mod:`~terraseg.ensemble.holdout` (held-out and k-fold estimates),
:mod:`~terraseg.ensemble.combine` (probability / logit averaging, majority vote).
"""

from terraseg.ensemble.atoms import (
    CandidateEffects,
    EnsembleScore,
    GroupStats,
    KFoldScores,
    SplitScores,
    candidate_effects,
    class_counts,
    iou_from_counts,
    mean_iou,
    model_scores,
    override_mask,
    score_atoms,
    score_override,
)
from terraseg.ensemble.combine import (
    CombineSummary,
    average_folders,
    average_labels,
    average_predictors,
    average_scores,
    majority_vote,
    read_scores,
    vote_folders,
    vote_predictors,
)
from terraseg.ensemble.histogram import (
    HistogramAccumulator,
    PairHistogram,
    assign_groups,
    build_group_histograms,
    build_histogram,
    histogram_arrays,
    histogram_from_arrays,
    numba_available,
)
from terraseg.ensemble.holdout import TuneResult, holdout_mask, kfold_scores, tune_folders, tune_histograms
from terraseg.ensemble.rules import ApplySummary, Rule, RuleAtom, RuleScores, RuleSet
from terraseg.ensemble.search import Atom, SearchOptions, SearchResult, greedy_search

__all__ = [
    "ApplySummary",
    "Atom",
    "CandidateEffects",
    "CombineSummary",
    "EnsembleScore",
    "GroupStats",
    "HistogramAccumulator",
    "KFoldScores",
    "PairHistogram",
    "Rule",
    "RuleAtom",
    "RuleScores",
    "RuleSet",
    "SearchOptions",
    "SearchResult",
    "SplitScores",
    "TuneResult",
    "assign_groups",
    "average_folders",
    "average_labels",
    "average_predictors",
    "average_scores",
    "build_group_histograms",
    "build_histogram",
    "candidate_effects",
    "class_counts",
    "greedy_search",
    "histogram_arrays",
    "histogram_from_arrays",
    "holdout_mask",
    "iou_from_counts",
    "kfold_scores",
    "majority_vote",
    "mean_iou",
    "model_scores",
    "numba_available",
    "override_mask",
    "read_scores",
    "score_atoms",
    "score_override",
    "tune_folders",
    "tune_histograms",
    "vote_folders",
    "vote_predictors",
]
