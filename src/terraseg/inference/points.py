"""RandLA-Net regular-crop inference (compatibility module): the code lives next to the model in
:mod:`terraseg.models.points.regular`; these names stay importable from here."""

from terraseg.models.points.regular import (
    DEFAULT_NUM_POINTS,
    POSSIBILITY_THRESHOLD,
    RegularCropPredictor,
    RegularCropSampler,
    back_project,
    grid_subsample,
    predict_scan_regular,
)

__all__ = [
    "DEFAULT_NUM_POINTS",
    "POSSIBILITY_THRESHOLD",
    "RegularCropPredictor",
    "RegularCropSampler",
    "back_project",
    "grid_subsample",
    "predict_scan_regular",
]
