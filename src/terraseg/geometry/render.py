"""Multi-view rendering of a point cloud into pinhole views, keeping the pixel -> point link.

A :class:`PinholeView` is a virtual (or real) camera: intrinsics ``K``, the transform
``T_cam_points`` that maps the cloud's frame (the LiDAR frame for a scan) into the camera frame
(x right, y down, z forward, metres) and an image size. Views are placed

- around the sensor looking outwards (:func:`ring_views`: a panorama of ``n`` views from one
  point, the natural layout for a 360-degree LiDAR scan),
- on a circle around a centre looking inwards (:func:`orbit_views`: objects seen from outside,
  the layout WS3D++ uses for indoor scenes), or
- at the real camera's pose, optionally turned about the LiDAR's vertical axis in equal steps
  (:func:`calibration_views`), so a teacher trained on that camera's images sees views like its
  training data all around the scan.

:func:`render_view` z-buffers the projected points into the view with square splats
(:func:`terraseg.geometry.transfer.points_to_image`: nearest point wins per pixel, ties to the
pixel nearer a point's centre) and returns the per-pixel point index, depth and, given point
colours, an RGB image. :func:`view_correspondence` goes the other way: for every point, its pixel
in a view and whether it is visible there (inside the image minus a border, not hidden behind a
nearer surface of the rendered depth or of a given depth image).

Integer pixel coordinates are pixel centres, as in :mod:`terraseg.geometry.projection`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from terraseg.errors import DataError
from terraseg.frame import Calibration
from terraseg.geometry.projection import (
    DEFAULT_NEAR,
    Projection,
    _check_size,
    as_xyz,
    project_points,
    scale_calibration,
)
from terraseg.geometry.transfer import (
    DEFAULT_REL_TOLERANCE,
    DEFAULT_TOLERANCE,
    labels_from_image,
    points_to_image,
    reference_depth_at,
)

DEFAULT_VIEW_SIZE = (320, 240)
DEFAULT_HFOV_DEG = 90.0
DEFAULT_SPLAT_RADIUS = 1
DEFAULT_BORDER = 5
"""Pixels at the image border whose features are not used (OpenScene uses 5 px on nuScenes' 800 x 450
images: features near the border see less context)."""


@dataclass(frozen=True)
class PinholeView:
    """One pinhole camera looking at a point cloud.

    Attributes:
        K: (3, 3) intrinsics in pixels.
        T_cam_points: (4, 4) transform mapping the cloud's frame into this camera's frame.
        image_size: (width, height) in pixels.
        name: a label for logs and file names.
    """

    K: np.ndarray
    T_cam_points: np.ndarray
    image_size: tuple[int, int]
    name: str = ""

    def calibration(self) -> Calibration:
        """The view as a :class:`~terraseg.frame.Calibration` (``T_cam_lidar`` = ``T_cam_points``)."""
        return Calibration(K=self.K, T_cam_lidar=self.T_cam_points, image_size=self.image_size)

    def project(self, xyz: np.ndarray, near: float = DEFAULT_NEAR) -> Projection:
        """Project (N, 3) cloud points into this view."""
        return project_points(xyz, self.calibration(), near=near)


@dataclass(frozen=True)
class RenderedView:
    """Result of :func:`render_view`; every array is (H, W).

    Attributes:
        view: the camera.
        index: int64 index of the point seen at each pixel, -1 where none.
        depth: float32 camera depth (metres) of that point, 0 where none.
        image: (H, W, 3) uint8 colours of those points (``background`` where none), or None
            when no colours were given.
    """

    view: PinholeView
    index: np.ndarray
    depth: np.ndarray
    image: np.ndarray | None

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool, True where a point was rendered."""
        return self.index >= 0


@dataclass(frozen=True)
class ViewCorrespondence:
    """Result of :func:`view_correspondence`.

    Attributes:
        uv: (N, 2) float64 pixel coordinates (u right, v down; NaN behind the camera).
        pixel: (N, 2) int64 (col, row) of each point's pixel, -1 where not in the image.
        visible: (N,) bool, in the image minus the border and not occluded.
    """

    uv: np.ndarray
    pixel: np.ndarray
    visible: np.ndarray


# ---------------------------------------------------------------------- cameras
def pinhole_K(image_size: tuple[int, int], hfov_deg: float = DEFAULT_HFOV_DEG) -> np.ndarray:
    """(3, 3) intrinsics of a centred pinhole camera with square pixels and horizontal field of view
    ``hfov_deg`` (principal point at the image centre ``((W - 1) / 2, (H - 1) / 2)``)."""
    size = _check_size(image_size)
    assert size is not None
    if not 0 < hfov_deg < 180:
        raise DataError(f"hfov_deg must be in (0, 180) degrees, got {hfov_deg}")
    w, h = size
    f = w / 2.0 / np.tan(np.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, (w - 1) / 2.0], [0.0, f, (h - 1) / 2.0], [0.0, 0.0, 1.0]])


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """(4, 4) ``T_cam_points`` of a camera at ``eye`` looking at ``target`` (cloud frame, z up).

    The camera's x axis points right, y down, z from ``eye`` towards ``target``.
    """
    e, t, u = (np.asarray(v, dtype=np.float64).reshape(3) for v in (eye, target, up))
    f = t - e
    if np.linalg.norm(f) == 0:
        raise DataError("look_at: eye and target coincide")
    f /= np.linalg.norm(f)
    r = np.cross(f, u)
    if np.linalg.norm(r) < 1e-9:
        raise DataError("look_at: the viewing direction is parallel to 'up'")
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    R_points_cam = np.stack([r, d, f], axis=1)  # columns: camera axes in the cloud frame
    T = np.eye(4)
    T[:3, :3] = R_points_cam.T
    T[:3, 3] = -R_points_cam.T @ e
    return T


def _yaws(n: int) -> np.ndarray:
    if int(n) != n or n < 1:
        raise DataError(f"the number of views must be a positive integer, got {n}")
    return 2.0 * np.pi * np.arange(int(n)) / int(n)


def ring_views(n: int = 6, position: Sequence[float] = (0.0, 0.0, 0.0), pitch_deg: float = 10.0,
               image_size: tuple[int, int] = DEFAULT_VIEW_SIZE, hfov_deg: float = DEFAULT_HFOV_DEG) -> list[PinholeView]:
    """``n`` views from ``position`` looking outwards at yaws ``0, 360/n, ...`` degrees (from +x,
    counter-clockwise seen from above), tilted down by ``pitch_deg``: a panorama of a LiDAR scan
    from its sensor (choose ``n * hfov_deg >= 360`` to cover the whole ring)."""
    p = np.asarray(position, dtype=np.float64).reshape(3)
    K = pinhole_K(image_size, hfov_deg)
    pitch = np.radians(pitch_deg)
    views = []
    for i, yaw in enumerate(_yaws(n)):
        direction = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), -np.sin(pitch)])
        views.append(PinholeView(K, look_at(p, p + direction), tuple(image_size), f"ring{i:02d}"))  # type: ignore[arg-type]
    return views


def orbit_views(center: Sequence[float], radius: float, height: float, n: int = 8,
                image_size: tuple[int, int] = DEFAULT_VIEW_SIZE, hfov_deg: float = DEFAULT_HFOV_DEG) -> list[PinholeView]:
    """``n`` views on a horizontal circle of ``radius`` metres around ``center``, ``height`` metres
    above it, each looking at ``center``."""
    if not radius > 0:
        raise DataError(f"orbit radius must be > 0 metres, got {radius}")
    c = np.asarray(center, dtype=np.float64).reshape(3)
    K = pinhole_K(image_size, hfov_deg)
    views = []
    for i, yaw in enumerate(_yaws(n)):
        eye = c + np.array([radius * np.cos(yaw), radius * np.sin(yaw), height])
        views.append(PinholeView(K, look_at(eye, c), tuple(image_size), f"orbit{i:02d}"))  # type: ignore[arg-type]
    return views


def calibration_views(calib: Calibration, n: int = 1, image_size: tuple[int, int] | None = None) -> list[PinholeView]:
    """The real camera of ``calib`` and ``n - 1`` copies turned about the LiDAR's z axis in steps of
    ``360 / n`` degrees (same intrinsics, height and tilt).

    Args:
        calib: calibration with ``K``, ``T_cam_lidar`` (LiDAR -> camera) and ``image_size``.
        n: number of views (1 = the real camera only).
        image_size: render at another (width, height); ``K`` is scaled to it.
    """
    if calib.K is None or calib.T_cam_lidar is None or calib.image_size is None:
        raise DataError("calibration_views needs a calibration with K, T_cam_lidar and image_size")
    cal = scale_calibration(calib, image_size) if image_size is not None else calib
    assert cal.K is not None and cal.T_cam_lidar is not None and cal.image_size is not None
    views = []
    for i, yaw in enumerate(_yaws(n)):
        c, s = np.cos(-yaw), np.sin(-yaw)
        Rz = np.eye(4)
        Rz[:2, :2] = [[c, -s], [s, c]]
        views.append(PinholeView(cal.K.copy(), cal.T_cam_lidar @ Rz, tuple(cal.image_size), f"camera{i:02d}"))  # type: ignore[arg-type]
    return views


# ---------------------------------------------------------------------- rendering
def render_view(xyz: np.ndarray, view: PinholeView, splat_radius: int = DEFAULT_SPLAT_RADIUS,
                colors: np.ndarray | None = None, background: Sequence[int] = (0, 0, 0),
                near: float = DEFAULT_NEAR, valid: np.ndarray | None = None) -> RenderedView:
    """Render (N, 3) points into ``view``: nearest point per pixel with square splats.

    Args:
        xyz: (N, 3) or (N, C>=3) points in the cloud's frame, metres.
        view: the camera.
        splat_radius: each point also covers the ``(2r + 1)^2`` pixels around its own (0 = one
            pixel); LiDAR is sparse, so splats close the gaps between beams in a close view.
        colors: optional (N, 3) uint8 RGB per point (e.g. from :func:`point_colors`) to paint.
        background: RGB of pixels without a point.
        near: minimum camera depth in metres.
        valid: optional (N,) bool selecting the points to render.
    """
    proj = view.project(xyz, near)
    sparse = points_to_image(proj, None, None, splat_radius=splat_radius, valid=valid)
    image = None
    if colors is not None:
        col = np.asarray(colors)
        if col.shape != (len(proj), 3):
            raise DataError(f"colors: expected ({len(proj)}, 3) RGB values, got shape {col.shape}")
        image = np.empty((*sparse.index.shape, 3), dtype=np.uint8)
        image[:] = np.asarray(background, dtype=np.uint8)
        m = sparse.index >= 0
        image[m] = col[sparse.index[m]].astype(np.uint8)
    return RenderedView(view=view, index=sparse.index, depth=sparse.depth, image=image)


def render_views(xyz: np.ndarray, views: Sequence[PinholeView], splat_radius: int = DEFAULT_SPLAT_RADIUS,
                 colors: np.ndarray | None = None, background: Sequence[int] = (0, 0, 0),
                 near: float = DEFAULT_NEAR) -> list[RenderedView]:
    """:func:`render_view` for each view."""
    return [render_view(xyz, v, splat_radius, colors, background, near) for v in views]


def point_colors(xyz: np.ndarray, calib: Calibration, image: np.ndarray,
                 missing: Sequence[int] = (0, 0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """RGB of each point from a real camera image (occlusion-aware, as the label transfer).

    Returns ``(colors, valid)``: (N, 3) uint8 (``missing`` where the camera does not see the
    point) and (N,) bool.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DataError(f"image: expected (H, W, 3) uint8 RGB, got shape {img.shape} dtype {img.dtype}")
    h, w = img.shape[:2]
    pixel_ids = np.arange(h * w, dtype=np.uint32).reshape(h, w)
    t = labels_from_image(xyz, calib, pixel_ids, ignore_index=np.iinfo(np.uint32).max, source="image")
    out = np.empty((len(t.valid), 3), dtype=np.uint8)
    out[:] = np.asarray(missing, dtype=np.uint8)
    out[t.valid] = img.reshape(-1, 3)[t.labels[t.valid].astype(np.int64)]
    return out, t.valid


def view_correspondence(xyz: np.ndarray, view: PinholeView, depth: np.ndarray | None = None,
                        border: int = DEFAULT_BORDER, tolerance: float = DEFAULT_TOLERANCE,
                        rel_tolerance: float = DEFAULT_REL_TOLERANCE, window: int = 1,
                        near: float = DEFAULT_NEAR) -> ViewCorrespondence:
    """Where each point lands in ``view`` and whether it is visible there.

    A point is visible when it projects inside the image at least ``border`` pixels from its
    edges and is not occluded: its camera depth ``z`` satisfies
    ``z <= reference * (1 + rel_tolerance) + tolerance``, where the reference is ``depth`` at its
    pixel (a rendered :attr:`RenderedView.depth` or a sensor depth image; 0 / NaN = unknown, no
    test) or, without ``depth``, the minimum depth of the projected points themselves over a
    ``window x window`` neighbourhood.

    Args:
        xyz: (N, 3) or (N, C>=3) points, metres.
        view: the camera.
        depth: optional (H, W) reference depth in metres.
        border: pixels excluded at each image edge (>= 0).
        tolerance, rel_tolerance: occlusion slack in metres and relative to the reference.
        window: odd window (pixels) of the self z-buffer when ``depth`` is None.
        near: minimum camera depth in metres.
    """
    p = as_xyz(xyz, "points")
    if int(border) != border or border < 0:
        raise DataError(f"border must be a non-negative number of pixels, got {border}")
    w, h = view.image_size
    proj = view.project(p, near)
    col, row = proj.pixel[:, 0], proj.pixel[:, 1]
    inside = proj.in_image & (col >= border) & (col < w - border) & (row >= border) & (row < h - border)
    vis = np.flatnonzero(inside)
    z = proj.depth[vis]
    if depth is not None:
        d = np.asarray(depth, dtype=np.float64)
        if d.shape != (h, w):
            raise DataError(f"depth image is {d.shape[1]}x{d.shape[0]}, the view {w}x{h}")
        ref = d[row[vis], col[vis]]
        known = np.isfinite(ref) & (ref > 0)
        ref = np.where(known, ref, np.inf)
    else:
        ref = reference_depth_at(proj.pixel[vis], z, (w, h), window) if len(vis) else np.zeros(0)
    ok = z <= ref * (1.0 + rel_tolerance) + tolerance
    visible = np.zeros(len(p), dtype=bool)
    visible[vis[ok]] = True
    return ViewCorrespondence(uv=proj.uv, pixel=proj.pixel, visible=visible)
