"""LiDAR-camera geometry: projection, label transfer, range images and nearest neighbours.

- :mod:`~terraseg.geometry.projection`: LiDAR points -> camera pixels (pinhole + OpenCV
  distortion), ``T_cam_lidar`` maps LiDAR points into the camera frame.
- :mod:`~terraseg.geometry.transfer`: image labels -> points with occlusion handling, and points
  -> sparse z-buffered label / depth images.
- :mod:`~terraseg.geometry.range_image`: spherical range-image projection, organised scans and
  sensor presets.
- :mod:`~terraseg.geometry.neighbors`: k-nearest neighbours and label voting.

>>> import numpy as np
>>> from terraseg.frame import Calibration
>>> from terraseg.geometry import project_points
>>> calib = Calibration(K=[[500, 0, 320], [0, 500, 240], [0, 0, 1]], T_cam_lidar=np.eye(4), image_size=(640, 480))
>>> project_points(np.array([[0.0, 0.0, 5.0]]), calib).pixel.tolist()
[[320, 240]]
"""

from terraseg.geometry.neighbors import build_index, knn, knn_vote, nearest_labels
from terraseg.geometry.projection import (
    Projection,
    distort,
    lidar_to_camera,
    project_camera_points,
    project_points,
    scale_calibration,
    transform_points,
)
from terraseg.geometry.range_image import (
    PRESETS,
    RangeImage,
    RangeProjection,
    fit_projection,
    from_organized,
    organized_layout,
    parse_organized,
    project_scan,
    unproject,
)
from terraseg.geometry.transfer import (
    LabelTransfer,
    SparseImage,
    depth_buffer,
    labels_from_image,
    points_to_image,
    zbuffer_winners,
)

__all__ = [
    "PRESETS",
    "LabelTransfer",
    "Projection",
    "RangeImage",
    "RangeProjection",
    "SparseImage",
    "build_index",
    "depth_buffer",
    "distort",
    "fit_projection",
    "from_organized",
    "organized_layout",
    "parse_organized",
    "knn",
    "knn_vote",
    "labels_from_image",
    "lidar_to_camera",
    "nearest_labels",
    "points_to_image",
    "project_camera_points",
    "project_points",
    "project_scan",
    "scale_calibration",
    "transform_points",
    "unproject",
    "zbuffer_winners",
]
