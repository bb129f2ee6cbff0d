"""The :class:`Frame`: one time step of sensor data with optional labels and calibration.

Conventions (everywhere in terraseg):

- Images are (H, W, 3) uint8 RGB. Image labels are (H, W) uint8/uint16 class ids.
- Point clouds are (N, C) float32 with x, y, z first (metres, sensor frame); the other channels
  are named in ``point_fields`` (for example ``intensity``). Point labels are (N,) class ids.
- ``Calibration.T_cam_lidar`` is a 4x4 homogeneous transform that maps LiDAR points into the
  camera frame: ``p_cam = T_cam_lidar @ p_lidar``. Camera frame: x right, y down, z forward.
- ``pose`` is the 4x4 transform from the sensor (LiDAR, else camera) frame to the world /
  odometry frame: ``p_world = pose @ p_sensor``.
- Timestamps are seconds (float) in the source's clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.errors import DataError

XYZI = ("x", "y", "z", "intensity")


@dataclass
class Calibration:
    """Camera intrinsics and the LiDAR-to-camera extrinsics.

    Attributes:
        K: (3, 3) camera matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels.
        dist: distortion coefficients in OpenCV order ``(k1, k2, p1, p2[, k3])`` or None.
        T_cam_lidar: (4, 4) transform mapping LiDAR points into the camera frame.
        image_size: (width, height) in pixels of the image ``K`` belongs to.
    """

    K: np.ndarray | None = None
    dist: np.ndarray | None = None
    T_cam_lidar: np.ndarray | None = None
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.K is not None:
            self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        if self.dist is not None:
            self.dist = np.asarray(self.dist, dtype=np.float64).ravel()
        if self.T_cam_lidar is not None:
            self.T_cam_lidar = np.asarray(self.T_cam_lidar, dtype=np.float64).reshape(4, 4)

    @property
    def T_lidar_cam(self) -> np.ndarray:
        """The inverse transform: camera frame -> LiDAR frame."""
        if self.T_cam_lidar is None:
            raise DataError("calibration has no T_cam_lidar")
        return invert_transform(self.T_cam_lidar)


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform (rotation + translation), computed exactly."""
    T = np.asarray(T, dtype=np.float64)
    R, t = T[:3, :3], T[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


@dataclass
class Frame:
    """One sample: camera image and/or point cloud, labels for either, calibration, pose, time.

    Every field is optional except ``frame_id`` so the same type serves camera-only datasets,
    LiDAR-only datasets and fused ones. ``ontology`` names the label space of both label arrays.
    ``source`` records the files a frame was read from (``{"image": Path, "points": Path, ...}``).
    """

    frame_id: str
    image: np.ndarray | None = None
    points: np.ndarray | None = None
    point_fields: tuple[str, ...] = XYZI
    image_labels: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    image_instances: np.ndarray | None = None
    point_instances: np.ndarray | None = None
    ontology: str | None = None
    calib: Calibration | None = None
    pose: np.ndarray | None = None
    timestamp: float | None = None
    sequence: str | None = None
    source: dict[str, Path] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def xyz(self) -> np.ndarray:
        """(N, 3) float32 coordinates (a view)."""
        if self.points is None:
            raise DataError(f"frame {self.frame_id} has no point cloud")
        return self.points[:, :3]

    def field(self, name: str) -> np.ndarray:
        """One named point channel, e.g. ``frame.field("intensity")``."""
        if self.points is None:
            raise DataError(f"frame {self.frame_id} has no point cloud")
        if name not in self.point_fields:
            raise DataError(f"frame {self.frame_id} has no point field {name!r} (fields: {', '.join(self.point_fields)})")
        return self.points[:, self.point_fields.index(name)]

    @property
    def image_size(self) -> tuple[int, int] | None:
        """(width, height) of the image or image labels, if any."""
        arr = self.image if self.image is not None else self.image_labels
        return None if arr is None else (int(arr.shape[1]), int(arr.shape[0]))

    def replace(self, **changes: Any) -> Frame:
        """A copy with some fields replaced (arrays are shared, not copied)."""
        return replace(self, **changes)

    def validate(self) -> Frame:
        """Check shapes and dtypes against the conventions; raise :class:`DataError` naming the frame."""
        where = next(iter(self.source.values()), self.frame_id)
        if self.image is not None and (self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8):
            raise DataError(f"{where}: image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}")
        if self.image_labels is not None:
            if self.image_labels.ndim != 2:
                raise DataError(f"{where}: image labels must be (H, W), got {self.image_labels.shape}")
            if self.image is not None and self.image.shape[:2] != self.image_labels.shape:
                raise DataError(f"{where}: image {self.image.shape[1]}x{self.image.shape[0]} and mask "
                                f"{self.image_labels.shape[1]}x{self.image_labels.shape[0]} differ in size")
        if self.points is not None:
            if self.points.ndim != 2 or self.points.shape[1] != len(self.point_fields):
                raise DataError(f"{where}: points must be (N, {len(self.point_fields)}) for fields "
                                f"{self.point_fields}, got {self.points.shape}")
            if self.point_labels is not None and len(self.point_labels) != len(self.points):
                raise DataError(f"{where}: {len(self.point_labels)} point labels for {len(self.points)} points")
        return self
