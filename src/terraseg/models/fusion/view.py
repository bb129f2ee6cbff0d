"""Which points of a paired frame the camera sees, and where: the input of every cross-modal step.

:func:`frame_view` checks that a frame carries an image, a point cloud and a calibration that fit
together, projects the points with :func:`terraseg.geometry.projection.project_points` (LiDAR ->
camera through ``calib.T_cam_lidar``, pinhole with OpenCV distortion) and keeps the points that
land inside the image. Every problem is one :class:`~terraseg.errors.DataError` naming the frame.

The calibration's ``K`` belongs to an image of ``calib.image_size``; a frame whose image has
another size of the same aspect ratio (a dataset stored at half resolution) is projected with
the rescaled calibration (:func:`~terraseg.geometry.projection.scale_calibration`); another
aspect ratio means the image and the calibration do not belong together, which is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from terraseg.errors import DataError
from terraseg.frame import Calibration, Frame
from terraseg.geometry.projection import DEFAULT_NEAR, project_points, scale_calibration


@dataclass(frozen=True)
class FrameView:
    """The in-view points of one frame.

    Attributes:
        index: (M,) int64 indices into ``frame.points`` of the points inside the image, ascending.
        uv: (M, 2) float64 pixel coordinates ``(u, v)`` of those points in the frame's image (u
            right, v down, integer = pixel centre).
        depth: (M,) float64 camera-frame depth in metres.
        num_points: N, the points of the frame (with or without a return).
        image_size: (width, height) of the frame's image in pixels.
        calib: the calibration used (rescaled to the image when needed).
    """

    index: np.ndarray
    uv: np.ndarray
    depth: np.ndarray
    num_points: int
    image_size: tuple[int, int]
    calib: Calibration

    @property
    def fraction(self) -> float:
        """Share of the frame's points that are in view."""
        return len(self.index) / self.num_points if self.num_points else 0.0


def frame_where(frame: Frame) -> str:
    """How error messages name a frame: its first source file and its id."""
    src = frame.source.get("points") or frame.source.get("image")
    return f"{src} (frame {frame.frame_id})" if src is not None else f"frame {frame.frame_id}"


def frame_calibration(frame: Frame, calib: Calibration | None = None) -> Calibration:
    """The calibration to project ``frame``'s points with (``calib`` overrides the frame's), fitted
    to the frame's image size; DataError naming the frame when it is missing or does not fit."""
    where = frame_where(frame)
    cal = calib if calib is not None else frame.calib
    if frame.image is None:
        raise DataError(f"{where}: cross-modal models need the camera image of every frame; this frame has none "
                        "(read the dataset with its images, e.g. data.options: {images: true})")
    h, w = frame.image.shape[:2]
    if cal is None or cal.K is None or cal.T_cam_lidar is None:
        what = "no calibration" if cal is None else ("no camera matrix K" if cal.K is None else
                                                    "no LiDAR-to-camera transform T_cam_lidar")
        raise DataError(f"{where}: {what}; cross-modal models project the points into the image with K and "
                        "T_cam_lidar (give the dataset's calibration files, or --calib)")
    if cal.image_size is not None and tuple(cal.image_size) != (w, h):
        cw, ch = cal.image_size
        if abs(cw / ch - w / h) > 0.01 * (w / h):
            raise DataError(f"{where}: the image is {w}x{h} but the calibration is for {cw}x{ch} images (another "
                            "aspect ratio): the image and the scan's calibration do not belong together")
        cal = scale_calibration(cal, (w, h))
    elif cal.image_size is None:
        cal = Calibration(K=cal.K, dist=cal.dist, T_cam_lidar=cal.T_cam_lidar, image_size=(w, h))
    return cal


def frame_view(frame: Frame, near: float = DEFAULT_NEAR, calib: Calibration | None = None,
               require_points: bool = True) -> FrameView:
    """The points of ``frame`` that project into its image (see the module docstring).

    Points without a return (exactly at the origin) or with non-finite coordinates never count as
    in view.

    Args:
        frame: a frame with ``image``, ``points`` and ``calib`` (``K``, ``T_cam_lidar``).
        near: minimum camera depth in metres.
        calib: a calibration to use instead of ``frame.calib``.
        require_points: raise DataError when no point is in view (else return an empty view).

    Raises:
        DataError: naming the frame: no image, no points, no or unfitting calibration, or (with
            ``require_points``) no point in view.
    """
    where = frame_where(frame)
    cal = frame_calibration(frame, calib)
    if frame.points is None:
        raise DataError(f"{where}: cross-modal models need the frame's point cloud; this frame has none")
    pts = np.asarray(frame.points)
    xyz = pts[:, :3]
    proj = project_points(xyz, cal, near=near)
    ok = proj.in_image & np.isfinite(xyz).all(axis=1) & ((xyz[:, 0] != 0) | (xyz[:, 1] != 0) | (xyz[:, 2] != 0))
    idx = np.flatnonzero(ok)
    if require_points and len(idx) == 0:
        assert cal.image_size is not None
        raise DataError(f"{where}: none of its {len(pts)} points projects into the {cal.image_size[0]}x"
                        f"{cal.image_size[1]} image (in front of the camera: {int(proj.in_front.sum())}); check "
                        "that T_cam_lidar maps LiDAR points into the camera frame (not the inverse)")
    assert cal.image_size is not None
    return FrameView(idx, proj.uv[idx], proj.depth[idx], len(pts), tuple(cal.image_size), cal)  # type: ignore[arg-type]
