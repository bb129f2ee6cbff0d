"""LiDAR-camera geometry: projection, label transfer, range images and nearest neighbours.

- :mod:`~terraseg.geometry.projection`: LiDAR points -> camera pixels (pinhole + OpenCV
  distortion), ``T_cam_lidar`` maps LiDAR points into the camera frame.
- :mod:`~terraseg.geometry.transfer`: image labels -> points with occlusion handling, and points
  -> sparse z-buffered label / depth images.
- :mod:`~terraseg.geometry.range_image`: spherical range-image projection, organised scans and
  sensor presets.
- :mod:`~terraseg.geometry.neighbors`: k-nearest neighbours and label voting.
- :mod:`~terraseg.geometry.normals`: normals, curvature (surface variation) and eigenvalues by
  PCA over k neighbours.
- :mod:`~terraseg.geometry.regions`: over-segmentation (region growing, voxel supervoxels),
  region purity against ground truth, region-border (boundary) targets.
- :mod:`~terraseg.geometry.render`: virtual pinhole cameras around a scan or at the real
  camera's pose, z-buffered splat rendering keeping the pixel -> point index, per-view visibility.

>>> import numpy as np
>>> from terraseg.frame import Calibration
>>> from terraseg.geometry import project_points
>>> calib = Calibration(K=[[500, 0, 320], [0, 500, 240], [0, 0, 1]], T_cam_lidar=np.eye(4), image_size=(640, 480))
>>> project_points(np.array([[0.0, 0.0, 5.0]]), calib).pixel.tolist()
[[320, 240]]
"""

from terraseg.geometry.neighbors import build_index, knn, knn_vote, nearest_labels
from terraseg.geometry.normals import LocalShape, curvature_from_eigenvalues, estimate_normals, surface_variation
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
from terraseg.geometry.regions import (
    RegionPurity,
    merge_small_regions,
    region_boundaries,
    region_growing,
    region_purity,
    voxel_regions,
)
from terraseg.geometry.render import (
    PinholeView,
    RenderedView,
    ViewCorrespondence,
    calibration_views,
    look_at,
    orbit_views,
    pinhole_K,
    point_colors,
    render_view,
    render_views,
    ring_views,
    view_correspondence,
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
    "LocalShape",
    "PinholeView",
    "Projection",
    "RangeImage",
    "RangeProjection",
    "RegionPurity",
    "RenderedView",
    "SparseImage",
    "ViewCorrespondence",
    "build_index",
    "calibration_views",
    "curvature_from_eigenvalues",
    "depth_buffer",
    "distort",
    "estimate_normals",
    "fit_projection",
    "from_organized",
    "organized_layout",
    "parse_organized",
    "knn",
    "knn_vote",
    "labels_from_image",
    "lidar_to_camera",
    "look_at",
    "merge_small_regions",
    "nearest_labels",
    "orbit_views",
    "pinhole_K",
    "point_colors",
    "points_to_image",
    "project_camera_points",
    "project_points",
    "project_scan",
    "region_boundaries",
    "region_growing",
    "region_purity",
    "render_view",
    "render_views",
    "ring_views",
    "scale_calibration",
    "surface_variation",
    "transform_points",
    "unproject",
    "view_correspondence",
    "voxel_regions",
    "zbuffer_winners",
]
