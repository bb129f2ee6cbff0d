"""Projecting LiDAR points into a camera image (pinhole model with OpenCV lens distortion).

Conventions
-----------
- ``Calibration.T_cam_lidar`` maps LiDAR points into the camera frame
  (``p_cam = T_cam_lidar @ p_lidar``). Camera frame: x right, y down, z forward (metres).
- Pixel coordinates ``(u, v)``: u to the right (column), v down (row). **Integer coordinates are
  pixel centres** (the OpenCV convention that ``K`` is calibrated in): pixel ``(col, row)``
  covers ``u in [col - 0.5, col + 0.5)`` and ``v in [row - 0.5, row + 0.5)``, so the rounded
  index is ``floor(uv + 0.5)`` and the image spans ``u in [-0.5, W - 0.5)``.
- Distortion follows OpenCV's ``projectPoints`` model on normalised coordinates
  ``x = X / Z, y = Y / Z``: coefficients ``(k1, k2, p1, p2[, k3[, k4, k5, k6]])``, radial
  ``(1 + k1 r^2 + k2 r^4 + k3 r^6) / (1 + k4 r^2 + k5 r^4 + k6 r^6)`` plus tangential terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from terraseg.errors import DataError
from terraseg.frame import Calibration

DEFAULT_NEAR = 0.1
"""Minimum camera depth (metres) for a point to count as in front of the camera."""

_UV_LIMIT = 1e9  # uv beyond this is clipped before rounding so the int cast can never overflow


@dataclass(frozen=True)
class Projection:
    """Image coordinates of N points.

    Attributes:
        uv: (N, 2) float64 pixel coordinates ``(u, v)`` (u right, v down, integer = pixel
            centre). NaN for points that are not in front of the camera, or (with distortion)
            beyond the radius where the lens model is valid.
        depth: (N,) float64 camera-frame z in metres (for every point, also those behind).
        in_front: (N,) bool, ``depth > near`` (and finite coordinates).
        in_image: (N,) bool, in front and inside the image (and, with distortion, inside the
            radius where the lens model is valid). Equal to ``in_front`` when no image size is
            known.
        pixel: (N, 2) int64 rounded pixel indices ``(col, row) = floor(uv + 0.5)``; ``-1`` for
            points that are not ``in_image``.
        image_size: ``(width, height)`` used for the bounds test, or None.
    """

    uv: np.ndarray
    depth: np.ndarray
    in_front: np.ndarray
    in_image: np.ndarray
    pixel: np.ndarray
    image_size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.depth)

    @property
    def visible(self) -> np.ndarray:
        """(M,) int64 indices of the points that are ``in_image``."""
        return np.flatnonzero(self.in_image)

    @property
    def linear_index(self) -> np.ndarray:
        """(N,) int64 ``row * width + col`` of each point's pixel, ``-1`` where not ``in_image``."""
        if self.image_size is None:
            raise DataError("projection has no image size; linear pixel indices need one")
        lin = self.pixel[:, 1] * self.image_size[0] + self.pixel[:, 0]
        return np.where(self.in_image, lin, -1)


# ---------------------------------------------------------------------- input checks
def as_xyz(points: np.ndarray, what: str = "points") -> np.ndarray:
    """Return the (N, 3) xyz view of an (N, 3) or (N, C >= 3) array; raise :class:`DataError` otherwise."""
    arr = np.asarray(points)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise DataError(f"{what}: expected an (N, 3) or (N, C>=3) array of x, y, z, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{what}: coordinates must be numeric, got dtype {arr.dtype}")
    return arr[:, :3]


def _check_transform(T: np.ndarray, what: str) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise DataError(f"{what}: expected a (4, 4) homogeneous transform, got shape {T.shape}")
    if not np.isfinite(T).all():
        raise DataError(f"{what}: transform holds NaN or infinite values")
    return T


def _check_size(image_size: tuple[int, int] | None, what: str = "image_size") -> tuple[int, int] | None:
    if image_size is None:
        return None
    try:
        w, h = (int(image_size[0]), int(image_size[1]))
    except (TypeError, ValueError, IndexError):
        raise DataError(f"{what}: expected (width, height), got {image_size!r}") from None
    if w <= 0 or h <= 0 or len(image_size) != 2:
        raise DataError(f"{what}: expected a positive (width, height), got {tuple(image_size)}")
    return w, h


# ---------------------------------------------------------------------- transforms
def transform_points(xyz: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) homogeneous transform: returns ``(T @ [p, 1])[:3]`` for every point.

    Args:
        xyz: (N, 3) or (N, C>=3) coordinates (extra channels are ignored).
        T: (4, 4) transform mapping the points' frame into the target frame.

    Returns:
        (N, 3) float64 transformed coordinates.
    """
    p = as_xyz(xyz).astype(np.float64, copy=False)
    T = _check_transform(T, "transform")
    return p @ T[:3, :3].T + T[:3, 3]


def lidar_to_camera(xyz: np.ndarray, calib: Calibration) -> np.ndarray:
    """LiDAR-frame points (N, 3) -> camera-frame points (N, 3) float64 via ``calib.T_cam_lidar``."""
    if calib.T_cam_lidar is None:
        raise DataError("calibration has no T_cam_lidar (LiDAR -> camera transform); cannot project points")
    return transform_points(xyz, calib.T_cam_lidar)


# ---------------------------------------------------------------------- distortion
def _check_dist(dist: np.ndarray | None) -> np.ndarray | None:
    if dist is None:
        return None
    d = np.asarray(dist, dtype=np.float64).ravel()
    if d.size == 0 or not d.any():
        return None
    if d.size not in (4, 5, 8):
        raise DataError(f"distortion: expected 4, 5 or 8 OpenCV coefficients (k1, k2, p1, p2[, k3[, k4, k5, k6]]), "
                        f"got {d.size}")
    if not np.isfinite(d).all():
        raise DataError("distortion: coefficients hold NaN or infinite values")
    return np.pad(d, (0, 8 - d.size))


def _radial(d: np.ndarray, r2: np.ndarray) -> np.ndarray:
    k1, k2, _, _, k3, k4, k5, k6 = d
    num = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    den = 1 + r2 * (k4 + r2 * (k5 + r2 * k6))
    return num / den


@lru_cache(maxsize=32)
def _valid_radius(coeffs: tuple[float, ...]) -> float:
    """Largest normalised radius up to which the radial model ``r * radial(r)`` is increasing.

    Beyond it the polynomial folds back, so points far outside the field of view would be mapped
    into the image; they are treated as outside the image instead.
    """
    d = np.asarray(coeffs)
    r = np.linspace(0.0, 10.0, 20001)  # up to ~84 degrees off-axis
    rad = _radial(d, r * r)
    f = r * rad
    bad = (np.diff(f) <= 0) | ~np.isfinite(f[1:]) | (rad[1:] <= 0)
    return float(r[int(np.argmax(bad))]) if bad.any() else float("inf")


def distort(xn: np.ndarray, yn: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply the OpenCV radial-tangential model to normalised coordinates (float64 arrays)."""
    d = _check_dist(dist)
    if d is None:
        return xn, yn
    p1, p2 = d[2], d[3]
    r2 = xn * xn + yn * yn
    rad = _radial(d, r2)
    xy = xn * yn
    xd = xn * rad + 2 * p1 * xy + p2 * (r2 + 2 * xn * xn)
    yd = yn * rad + p1 * (r2 + 2 * yn * yn) + 2 * p2 * xy
    return xd, yd


# ---------------------------------------------------------------------- projection
def project_camera_points(xyz_cam: np.ndarray, K: np.ndarray, dist: np.ndarray | None = None,
                          image_size: tuple[int, int] | None = None, near: float = DEFAULT_NEAR) -> Projection:
    """Project camera-frame points (x right, y down, z forward, metres) with intrinsics ``K``.

    Args:
        xyz_cam: (N, 3) or (N, C>=3) camera-frame coordinates.
        K: (3, 3) camera matrix in pixels (skew ``K[0, 1]`` is honoured).
        dist: OpenCV distortion coefficients or None.
        image_size: (width, height) for the in-image test, or None for no bounds test.
        near: minimum depth in metres for a point to count as in front.
    """
    p = as_xyz(xyz_cam).astype(np.float64, copy=False)
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] == 0 or K[1, 1] == 0:
        raise DataError(f"camera matrix K must be a finite (3, 3) matrix with non-zero focal lengths, got {K.tolist()}")
    size = _check_size(image_size)
    d = _check_dist(dist)
    z = p[:, 2]
    with np.errstate(invalid="ignore"):
        in_front = z > near
    front = np.flatnonzero(in_front)
    pf = p[front]
    fin = np.isfinite(pf[:, :2]).all(axis=1)  # z is finite already (z > near); NaN x or y is not in front
    if not fin.all():
        in_front[front[~fin]] = False
        front, pf = front[fin], pf[fin]
    xn, yn = pf[:, 0] / pf[:, 2], pf[:, 1] / pf[:, 2]
    ok = np.ones(len(front), dtype=bool)
    if d is not None:
        r_max = _valid_radius(tuple(d.tolist()))
        ok = xn * xn + yn * yn <= r_max * r_max
        xn, yn = distort(xn, yn, d)
    uf = K[0, 0] * xn + K[0, 1] * yn + K[0, 2]
    vf = K[1, 1] * yn + K[1, 2]
    uv = np.full((len(p), 2), np.nan)
    uv[front[ok], 0] = uf[ok]  # ok: inside the lens model's valid radius (all, without distortion)
    uv[front[ok], 1] = vf[ok]
    pix = np.full((len(p), 2), -1, dtype=np.int64)
    col = np.floor(np.clip(uf, -_UV_LIMIT, _UV_LIMIT) + 0.5).astype(np.int64)
    row = np.floor(np.clip(vf, -_UV_LIMIT, _UV_LIMIT) + 0.5).astype(np.int64)
    if size is not None:
        ok &= (col >= 0) & (col < size[0]) & (row >= 0) & (row < size[1])
    keep = front[ok]
    in_image = np.zeros(len(p), dtype=bool)
    in_image[keep] = True
    pix[keep, 0] = col[ok]
    pix[keep, 1] = row[ok]
    return Projection(uv=uv, depth=z.copy(), in_front=in_front, in_image=in_image, pixel=pix, image_size=size)


def project_points(xyz: np.ndarray, calib: Calibration, image_size: tuple[int, int] | None = None,
                   near: float = DEFAULT_NEAR) -> Projection:
    """Project LiDAR-frame points into the camera image of ``calib``.

    Points are moved into the camera frame with ``calib.T_cam_lidar`` (LiDAR -> camera), then
    projected with ``calib.K`` and, when ``calib.dist`` is set, the OpenCV distortion model.

    Args:
        xyz: (N, 3) or (N, C>=3) LiDAR points in metres (any float dtype; computed in float64).
        calib: calibration with ``K`` and ``T_cam_lidar``.
        image_size: (width, height) for the in-image test; defaults to ``calib.image_size``.
            With neither, ``in_image`` equals ``in_front``.
        near: minimum camera depth in metres (default 0.1).

    Returns:
        A :class:`Projection` of all N points (same order).
    """
    if calib.K is None:
        raise DataError("calibration has no camera matrix K; cannot project points")
    cam = lidar_to_camera(xyz, calib)
    return project_camera_points(cam, calib.K, calib.dist, image_size if image_size is not None else calib.image_size,
                                 near)


def scale_calibration(calib: Calibration, image_size: tuple[int, int]) -> Calibration:
    """The calibration for a resized image (for example a mask stored at half resolution).

    ``K`` is rescaled under the pixel-centre convention (``u' = (u + 0.5) * s - 0.5``);
    distortion and extrinsics are unchanged. ``calib.image_size`` must be known.
    """
    if calib.K is None or calib.image_size is None:
        raise DataError("scale_calibration needs a calibration with K and image_size")
    new = _check_size(image_size)
    assert new is not None
    sx, sy = new[0] / calib.image_size[0], new[1] / calib.image_size[1]
    K = calib.K.copy()
    K[0, 0] *= sx
    K[0, 1] *= sx
    K[1, 1] *= sy
    K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return Calibration(K=K, dist=None if calib.dist is None else calib.dist.copy(),
                       T_cam_lidar=None if calib.T_cam_lidar is None else calib.T_cam_lidar.copy(), image_size=new)
