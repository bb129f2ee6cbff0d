"""terraseg: semantic segmentation of camera images and LiDAR point clouds off-road.

The public API lives in the sub-packages:

- :mod:`terraseg.ontology`: label spaces (:class:`~terraseg.ontology.Ontology`), maps between them
  (:class:`~terraseg.ontology.LabelMap`) and colour masks.
- :mod:`terraseg.metrics`: the streaming :class:`~terraseg.metrics.ConfusionMatrix`, scores,
  evaluation presets and reports.
- :mod:`terraseg.io`: label images, images, LiDAR scans, calibration files, palettes, ROS bags,
  atomic writes.
- :mod:`terraseg.datasets`: the :class:`~terraseg.frame.Frame` readers (SemanticKITTI, RELLIS-3D,
  GOOSE, CARLA exports, generic folders), dataset statistics and class weights.
- :mod:`terraseg.geometry`: LiDAR-camera projection, image <-> point label transfer with
  occlusion, range images, kNN.
"""

from terraseg.errors import ConfigError, DataError, TerrasegError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "TerrasegError", "__version__"]
