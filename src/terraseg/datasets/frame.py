"""Re-export of :mod:`terraseg.frame` (the Frame and Calibration types live at the top level so
that :mod:`terraseg.io` can use them without importing the dataset readers)."""

from terraseg.frame import XYZI, Calibration, Frame, invert_transform

__all__ = ["XYZI", "Calibration", "Frame", "invert_transform"]
