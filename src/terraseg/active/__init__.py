"""Pseudo-labels, budgeted active queries and labelling tasks for source-free adaptation.

The library under ``terraseg pseudo-label``, ``terraseg adapt`` and ``terraseg query``: pure
functions over per-point arrays (probabilities, features, coordinates, pixels, region ids)
plus the files a person in the loop works with. Reference: Omni-Query active learning
(Kylin-XJX/ActiveSFDA) on xMUDA (valeoai/xmuda_journal); see ``docs/active.md``.

- :mod:`~terraseg.active.pseudo_labels`: the ``min(class median, 0.9)`` rule per modality over
  the whole target set, streaming collection, per-frame files and a summary.
- :mod:`~terraseg.active.budget`: percent-of-in-view budgets met exactly.
- :mod:`~terraseg.active.strategies`: the closed table :data:`STRATEGIES` (random, confidence,
  margin, entropy, kNN feature entropy, region allocation with SLIC / SAM, voxel label entropy,
  ReDAL) over a :class:`FrameContext`.
- :mod:`~terraseg.active.timing`: fixed-fraction and automatic (log-curve saturation) query times.
- :mod:`~terraseg.active.rounds`: query rounds on disk (resume), labelled masks, imported labels.
- :mod:`~terraseg.active.task`: labelling tasks (previews, point CSVs, CVAT segmentation masks).
- :mod:`~terraseg.active.predict`: a cross-modal model over a dataset (probabilities, features,
  pseudo-label folders: ``terraseg pseudo-label``).
- Source-free adaptation with query rounds (``terraseg adapt``) builds on these and on the
  training engine, so it lives in :mod:`terraseg.training.adapt`.

>>> import numpy as np
>>> from terraseg.active import FrameContext, budget_count, select
>>> p = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.99, 0.01]])
>>> budget_count(50, 4)
2
>>> select("entropy", FrameContext("f0", probs_3d=p), 2).tolist()
[1, 2]
"""

from terraseg.active.budget import budget_count, check_percent, labelled_fraction
from terraseg.active.predict import (
    FramePrediction,
    load_fusion_predictor,
    predict_frame,
    pseudo_label_dataset,
    pseudo_label_frames,
)
from terraseg.active.pseudo_labels import (
    DEFAULT_CAP,
    MODALITIES,
    ClassConfidences,
    ModalityLabels,
    ModalityStats,
    Prediction,
    PseudoLabels,
    PseudoLabelSummary,
    class_thresholds,
    keep_mask,
    lower_median,
    predict_modalities,
    read_pseudo_labels,
    refine_pseudo_labels,
    write_pseudo_labels,
)
from terraseg.active.redal import importance_reweight, kmeans, select_redal
from terraseg.active.regions import (
    allocate_by_area,
    dilate_masks,
    masks_from_output,
    region_membership,
    sam_mask_generator,
    select_in_regions,
    slic_regions,
)
from terraseg.active.rounds import (
    FrameQuery,
    QueryRound,
    collected_labels,
    labelled_masks,
    list_rounds,
    load_round,
    load_round_labels,
    run_query_round,
    save_round,
    save_round_labels,
)
from terraseg.active.scores import (
    feature_knn,
    knn_label_entropy,
    label_histogram_entropy,
    max_confidence,
    rank,
    softmax_entropy,
    top2_margin,
)
from terraseg.active.strategies import (
    STRATEGIES,
    FrameContext,
    FrameSelection,
    StrategyOptions,
    knn_entropy_scores,
    query_frame,
    select,
)
from terraseg.active.task import (
    ImportSummary,
    TaskSummary,
    cvat_labels,
    export_task,
    import_task,
    read_cvat_labels,
    read_point_labels,
)
from terraseg.active.timing import (
    R_THRESHOLD,
    CurveFit,
    CurveTrend,
    QueryDecision,
    QuerySchedule,
    decide_query,
    fit_log_curve,
    log_curve,
)
from terraseg.active.voxels import select_voxels, voxel_ids, voxel_label_entropy

__all__ = [
    "DEFAULT_CAP",
    "MODALITIES",
    "R_THRESHOLD",
    "STRATEGIES",
    "ClassConfidences",
    "CurveFit",
    "CurveTrend",
    "FrameContext",
    "FramePrediction",
    "FrameQuery",
    "FrameSelection",
    "ImportSummary",
    "ModalityLabels",
    "ModalityStats",
    "Prediction",
    "PseudoLabelSummary",
    "PseudoLabels",
    "QueryDecision",
    "QueryRound",
    "QuerySchedule",
    "StrategyOptions",
    "TaskSummary",
    "allocate_by_area",
    "budget_count",
    "check_percent",
    "class_thresholds",
    "collected_labels",
    "cvat_labels",
    "decide_query",
    "dilate_masks",
    "export_task",
    "feature_knn",
    "fit_log_curve",
    "import_task",
    "importance_reweight",
    "keep_mask",
    "kmeans",
    "knn_entropy_scores",
    "knn_label_entropy",
    "label_histogram_entropy",
    "labelled_fraction",
    "labelled_masks",
    "list_rounds",
    "load_fusion_predictor",
    "load_round",
    "load_round_labels",
    "log_curve",
    "lower_median",
    "masks_from_output",
    "max_confidence",
    "predict_frame",
    "predict_modalities",
    "pseudo_label_dataset",
    "pseudo_label_frames",
    "query_frame",
    "rank",
    "read_cvat_labels",
    "read_point_labels",
    "read_pseudo_labels",
    "refine_pseudo_labels",
    "region_membership",
    "run_query_round",
    "sam_mask_generator",
    "save_round",
    "save_round_labels",
    "select",
    "select_in_regions",
    "select_redal",
    "select_voxels",
    "slic_regions",
    "softmax_entropy",
    "top2_margin",
    "voxel_ids",
    "voxel_label_entropy",
    "write_pseudo_labels",
]
