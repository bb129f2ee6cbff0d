"""Simulated sensors: a pinhole RGB camera and a spinning LiDAR, mounted on a vehicle.

Frames and directions:

- vehicle frame: x forward, y left, z up (metres), origin on the ground under the rear axle;
- LiDAR frame: the same axes as the vehicle, at the LiDAR's mounting point;
- camera optical frame: x right, y down, z forward, at the camera's mounting point;
- ``pose`` (4x4) maps the vehicle frame into the world: ``p_world = pose @ p_vehicle``.

``Calibration.T_cam_lidar`` maps LiDAR points into the camera frame, as in every terraseg reader.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from terraseg.frame import Calibration


def rpy_matrix(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Rotation ``Rz(yaw) @ Ry(pitch) @ Rx(roll)`` (radians, right-handed, z up)."""
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    return np.array([[cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
                     [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
                     [-sp, cp * sr, cp * cr]])


# camera optical axes expressed in a forward-looking x-forward/z-up frame
_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class CameraConfig:
    """A pinhole camera.

    Attributes:
        width, height: pixels.
        hfov_deg: horizontal field of view, degrees.
        position: mounting point in the vehicle frame, metres.
        pitch_deg: downward tilt (positive looks down), degrees.
        max_range: farther surfaces are treated as sky, metres.
    """

    width: int = 640
    height: int = 480
    hfov_deg: float = 90.0
    position: tuple[float, float, float] = (0.6, 0.0, 1.55)
    pitch_deg: float = 6.0
    max_range: float = 150.0

    @property
    def K(self) -> np.ndarray:
        f = self.width / 2 / np.tan(np.radians(self.hfov_deg) / 2)
        return np.array([[f, 0, self.width / 2], [0, f, self.height / 2], [0, 0, 1.0]])

    def T_vehicle_cam(self) -> np.ndarray:
        """4x4 transform mapping camera-frame points into the vehicle frame."""
        T = np.eye(4)
        T[:3, :3] = rpy_matrix(0.0, np.radians(self.pitch_deg), 0.0) @ _OPTICAL
        T[:3, 3] = self.position
        return T

    def ray_dirs_cam(self) -> np.ndarray:
        """(H*W, 3) unit ray directions in the camera frame, row-major, through pixel centres
        (computed once per configuration; read-only)."""
        return _camera_dirs(self.width, self.height, self.hfov_deg)

    def _dirs(self) -> np.ndarray:
        K = self.K
        u, v = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
        d.setflags(write=False)
        return d


@functools.lru_cache(maxsize=8)
def _camera_dirs(width: int, height: int, hfov_deg: float) -> np.ndarray:
    return CameraConfig(width, height, hfov_deg)._dirs()


@dataclass(frozen=True)
class LidarConfig:
    """A spinning multi-beam LiDAR.

    Attributes:
        beams: number of lasers (rows).
        fov_up_deg, fov_down_deg: elevation of the top and bottom beam, degrees (down negative).
        azimuth_steps: firings per revolution (columns).
        max_range, min_range: metres.
        range_noise: standard deviation of the range noise, metres.
        dropout: probability that a return is lost.
        position: mounting point in the vehicle frame, metres.
    """

    beams: int = 64
    fov_up_deg: float = 16.6
    fov_down_deg: float = -16.6
    azimuth_steps: int = 1024
    max_range: float = 100.0
    min_range: float = 0.5
    range_noise: float = 0.015
    dropout: float = 0.02
    position: tuple[float, float, float] = (0.0, 0.0, 1.9)
    name: str = "custom"

    def elevations(self) -> np.ndarray:
        """Beam elevations in radians, top beam first."""
        return np.radians(np.linspace(self.fov_up_deg, self.fov_down_deg, self.beams))

    def T_vehicle_lidar(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, 3] = self.position
        return T

    def ray_dirs(self) -> np.ndarray:
        """(beams * azimuth_steps, 3) unit directions in the LiDAR frame, row = beam (top first),
        column = azimuth from +x (forward) turning clockwise seen from above, like most sensors."""
        el = self.elevations()[:, None]
        az = -2 * np.pi * (np.arange(self.azimuth_steps) + 0.5) / self.azimuth_steps
        az = az[None, :]
        d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el) * np.ones_like(az)], -1)
        return d.reshape(-1, 3)


@dataclass(frozen=True)
class Headlights:
    """The vehicle's lamps, lit when the weather asks for them (``Weather.headlights``, at night).

    Each lamp is a spot light: irradiance ``intensity * spot * cos(incidence) / d**2`` on a surface
    ``d`` metres away (``d`` at least 1 m). ``spot = s(h) * s(v)`` where ``h`` and ``v`` are the
    horizontal and vertical angles of the surface seen from the lamp, off the beam axis, and each
    ``s`` falls smoothly (smoothstep) from 1 at an inner angle to 0 at an outer one: a wide beam
    with a sharper cut-off above the axis than below, like a dipped-beam pattern. Irradiance is
    in the units of the sun's (1.0 = full sun on a surface facing it). The lamps cast no shadows:
    they sit close enough to the camera's line of sight that what they cannot see, the camera
    mostly cannot either.

    Attributes:
        positions: lamp positions in the vehicle frame (x forward, y left, z up), metres.
        pitch_deg: downward aim of the beam axes (positive looks down), degrees.
        horizontal_deg: (inner, outer) horizontal angle off the axis, degrees.
        up_deg, down_deg: (inner, outer) vertical angle above / below the axis, degrees.
        intensity: irradiance of one lamp 1 m away on its axis, sun = 1.
        color: linear RGB colour of the light (warm white).
    """

    positions: tuple[tuple[float, float, float], ...] = ((3.3, 0.65, 0.8), (3.3, -0.65, 0.8))
    pitch_deg: float = 3.0
    horizontal_deg: tuple[float, float] = (15.0, 38.0)
    up_deg: tuple[float, float] = (5.0, 14.0)
    down_deg: tuple[float, float] = (8.0, 35.0)
    intensity: float = 40.0
    color: tuple[float, float, float] = (1.0, 0.96, 0.88)

    def world(self, pose: np.ndarray) -> np.ndarray:
        """(L, 9): each lamp's position (metres) and its beam frame (unit forward axis, left, up)
        in the world frame, for the vehicle pose ``pose`` (4x4, vehicle -> world)."""
        pose = np.asarray(pose, dtype=np.float64)
        R = pose[:3, :3] @ rpy_matrix(0.0, np.radians(self.pitch_deg), 0.0)  # beam frame -> world
        pos = np.asarray(self.positions, dtype=np.float64) @ pose[:3, :3].T + pose[:3, 3]
        axes = np.broadcast_to(R.T.reshape(1, 9), (len(pos), 9))  # rows of R.T: forward, left, up
        return np.concatenate([pos, axes], axis=1)

    def cone_tangents(self) -> np.ndarray:
        """(6,) tangents of the inner and outer angles: horizontal, up, down."""
        return np.tan(np.radians(np.array([*self.horizontal_deg, *self.up_deg, *self.down_deg], dtype=np.float64)))


LIDAR_PRESETS: dict[str, LidarConfig] = {
    "os1-64": LidarConfig(64, 16.6, -16.6, 2048, 120.0, 0.3, 0.015, 0.02, name="os1-64"),
    "os1-64-1024": LidarConfig(64, 16.6, -16.6, 1024, 120.0, 0.3, 0.015, 0.02, name="os1-64-1024"),
    "vlp-32": LidarConfig(32, 15.0, -25.0, 1800, 100.0, 0.5, 0.02, 0.02, name="vlp-32"),
    "small": LidarConfig(32, 15.0, -20.0, 512, 80.0, 0.5, 0.02, 0.02, name="small"),
    # Velodyne VLP-16 ("Puck") at 20 Hz: 16 beams 2 deg apart over +-15 deg, 0.4 deg steps, +-3 cm
    "vlp-16": LidarConfig(16, 15.0, -15.0, 900, 100.0, 0.5, 0.03, 0.02, name="vlp-16"),
}

CAMERA_PRESETS: dict[str, CameraConfig] = {
    "vga": CameraConfig(640, 480, 90.0),
    "hd": CameraConfig(1280, 720, 90.0),
    "small": CameraConfig(320, 240, 90.0),
    "tiny": CameraConfig(160, 120, 90.0),
}


@dataclass(frozen=True)
class Rig:
    """The camera and LiDAR on one vehicle (either may be None), and its headlights (lit when the
    weather asks for them)."""

    camera: CameraConfig | None = field(default_factory=CameraConfig)
    lidar: LidarConfig | None = field(default_factory=lambda: LIDAR_PRESETS["os1-64-1024"])
    headlights: Headlights = field(default_factory=Headlights)

    def calibration(self) -> Calibration:
        """Camera intrinsics and ``T_cam_lidar`` (LiDAR -> camera) in terraseg's conventions."""
        if self.camera is None:
            raise ValueError("the rig has no camera")
        T = None
        if self.lidar is not None:
            T = np.linalg.inv(self.camera.T_vehicle_cam()) @ self.lidar.T_vehicle_lidar()
        return Calibration(K=self.camera.K, T_cam_lidar=T, image_size=(self.camera.width, self.camera.height))
