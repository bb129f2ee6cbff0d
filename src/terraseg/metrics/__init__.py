"""Metrics engine: confusion matrices, scores, evaluation presets and reports.

>>> import numpy as np
>>> from terraseg.metrics import ConfusionMatrix
>>> cm = ConfusionMatrix(3).update(np.array([0, 1, 1]), np.array([0, 1, 2]))
>>> float(cm.scores().miou)  # IoU 1, 0.5, 0 -> mean 0.5
0.5
"""

from terraseg.metrics.confusion import ConfusionMatrix
from terraseg.metrics.folders import FolderEvaluation, MaskPair, evaluate_mask_folders, pair_mask_files
from terraseg.metrics.presets import (
    EvalPreset,
    EvalResult,
    default_preset,
    get_preset,
    list_presets,
    register_preset,
)
from terraseg.metrics.report import (
    csv_per_class,
    markdown_categories,
    markdown_columns,
    markdown_report,
    markdown_rows,
    markdown_summary,
    plot_confusion,
    write_reports,
)
from terraseg.metrics.scores import ClassScores, fold_matrix

__all__ = [
    "ClassScores",
    "ConfusionMatrix",
    "EvalPreset",
    "EvalResult",
    "FolderEvaluation",
    "MaskPair",
    "csv_per_class",
    "default_preset",
    "evaluate_mask_folders",
    "fold_matrix",
    "get_preset",
    "list_presets",
    "markdown_categories",
    "markdown_columns",
    "markdown_report",
    "markdown_rows",
    "markdown_summary",
    "pair_mask_files",
    "plot_confusion",
    "register_preset",
    "write_reports",
]
