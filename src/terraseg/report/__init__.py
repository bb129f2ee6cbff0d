"""Analysis reports: one self-contained HTML page comparing one or two segmentation models.

>>> from terraseg.report import build_report
>>> res = build_report("out/", gt="labels/", pred="m1/", pred2="m2/", ontology="goose")  # doctest: +SKIP
>>> res.html                                                                                 # doctest: +SKIP
PosixPath('out/report.html')

Modules: :mod:`~terraseg.report.data` (evaluation and the pair histogram),
:mod:`~terraseg.report.plots` (one function per figure), :mod:`~terraseg.report.curves`
(training curves of a run folder), :mod:`~terraseg.report.render3d` (point clouds as images),
:mod:`~terraseg.report.html` (the page), :mod:`~terraseg.report.build` (the orchestration).
"""

from terraseg.report.build import ReportResult, build_report, top_confusions
from terraseg.report.curves import TrainingCurves, plot_training_curves, read_curves
from terraseg.report.data import (
    Agreement,
    FrameStat,
    ModelEval,
    ReportData,
    agreement_from_histogram,
    choose_frames,
    evaluate_folders,
    gather,
    load_rules,
)
from terraseg.report.html import SECTION_IDS
from terraseg.report.render3d import bev_extent, elevation_range, render_bev, render_range, scalar_colors

__all__ = [
    "SECTION_IDS",
    "Agreement",
    "FrameStat",
    "ModelEval",
    "ReportData",
    "ReportResult",
    "TrainingCurves",
    "agreement_from_histogram",
    "bev_extent",
    "build_report",
    "choose_frames",
    "elevation_range",
    "evaluate_folders",
    "gather",
    "load_rules",
    "plot_training_curves",
    "read_curves",
    "render_bev",
    "render_range",
    "scalar_colors",
    "top_confusions",
]
