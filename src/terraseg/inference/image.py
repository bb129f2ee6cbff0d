"""Camera-image inference (compatibility module).

The code lives next to the models: the window / TTA core in :mod:`terraseg.models.image.windows`
(shared with the training engine's validation) and the in-memory predictors in
:mod:`terraseg.models.image.predict`. These names stay importable from here.
"""

from terraseg.models.image.predict import BaseImagePredictor, ImagePredictor, check_image, resolve_device
from terraseg.models.image.windows import (
    ModelFn,
    TTAConfig,
    WindowConfig,
    infer_probabilities,
    run_model,
    window_starts,
)

_check_image = check_image
_resolve_device = resolve_device

__all__ = [
    "BaseImagePredictor",
    "ImagePredictor",
    "ModelFn",
    "TTAConfig",
    "WindowConfig",
    "check_image",
    "infer_probabilities",
    "resolve_device",
    "run_model",
    "window_starts",
]
