"""Label transfer between camera images and LiDAR points, with occlusion handling.

- :func:`labels_from_image`: every point that projects into the image takes the label of its
  pixel, unless a nearer surface hides it from the camera (depth test against a z-buffer).
- :func:`points_to_image`: a sparse label / depth / point-index image from projected points,
  nearest point wins per pixel, with optional square splats.

Why occlusion matters: the LiDAR and the camera are mounted apart, so the LiDAR sees surfaces
the camera cannot (for example ground behind a bush, seen over it by a LiDAR mounted higher).
Those points project onto the bush's pixels and would take the bush's label. The z-buffer test
marks a point occluded when its camera depth exceeds the nearest depth around its pixel by
more than ``rel_tolerance * nearest + tolerance``.

All functions are vectorised: per-pixel minima are found with one ``np.lexsort`` (no Python
loops, no ``np.minimum.at``); ties in depth go to the lower point index, so results are
deterministic. Window minima of sparse points are computed by spreading each occupied pixel
over its window (cost ~ points x window area); dense point sets fall back to a minimum filter
over the points' bounding box.

Measured on RELLIS-3D frame 104 (OS1-64, 1920x1200 camera about 0.2 m from the LiDAR): the
default test (5x5 window, 0.5 m + 5 %) flags 8 of the 7,429 points in the image, and the label
agreement with the mask is unchanged (77.25 % vs 77.26 % without the test): with so small a
baseline, parallax occlusions are rare. Windows wider than the beams' image-space spacing
(~25 px vertically there) start to flag visible ground behind nearer ground as occluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from terraseg.errors import DataError
from terraseg.frame import Calibration
from terraseg.geometry.projection import DEFAULT_NEAR, Projection, _check_size, project_points

Occlusion = Literal["zbuffer", "depth", "none"]

DEFAULT_IGNORE = 255
DEFAULT_WINDOW = 5
DEFAULT_TOLERANCE = 0.5
DEFAULT_REL_TOLERANCE = 0.05


@dataclass(frozen=True)
class LabelTransfer:
    """Result of :func:`labels_from_image`.

    Attributes:
        labels: (N,) labels per point: the pixel's label where ``valid``, else ``ignore_index``.
            Dtype: the image labels' dtype, widened if needed to hold ``ignore_index``.
        valid: (N,) bool, projected into the image and not occluded.
        occluded: (N,) bool, in the image but hidden behind a nearer surface.
        projection: the :class:`Projection` of all points.
    """

    labels: np.ndarray
    valid: np.ndarray
    occluded: np.ndarray
    projection: Projection


@dataclass(frozen=True)
class SparseImage:
    """Result of :func:`points_to_image`; every array is (H, W).

    Attributes:
        labels: label of the nearest point per pixel, ``ignore_index`` where no point (None when
            no labels were given).
        depth: float32 camera depth in metres of that point, 0 where no point.
        index: int64 index of that point in the input arrays, -1 where no point.
    """

    labels: np.ndarray | None
    depth: np.ndarray
    index: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool, True where a point landed."""
        return self.index >= 0


# ---------------------------------------------------------------------- z-buffer core
def zbuffer_winners(linear: np.ndarray, depth: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Indices (into ``linear``) of the nearest entry per distinct pixel.

    Args:
        linear: (M,) int64 linear pixel indices.
        depth: (M,) depths; the smallest wins. Further ``keys`` break ties (smallest wins), then
            the lower entry index.

    Returns:
        (P,) int64 indices of the winners, one per distinct pixel, in increasing pixel order.
    """
    if len(linear) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((*reversed(keys), depth, linear))
    ls = linear[order]
    first = np.empty(len(ls), dtype=bool)
    first[0] = True
    np.not_equal(ls[1:], ls[:-1], out=first[1:])
    return order[first]


def _label_dtype(labels_dtype: np.dtype, ignore_index: int) -> np.dtype:
    return np.result_type(labels_dtype, np.min_scalar_type(ignore_index))


def _check_window(window: int | tuple[int, int]) -> tuple[int, int]:
    """``window`` as (rows, cols); each a positive odd number of pixels."""
    rc = (window, window) if np.isscalar(window) else tuple(window)  # type: ignore[arg-type]
    if len(rc) != 2 or any(int(x) != x or x < 1 or x % 2 == 0 for x in rc):
        raise DataError(f"window must be a positive odd number of pixels or a (rows, cols) pair of them, got {window!r}")
    return int(rc[0]), int(rc[1])


def _sparse_window_min(lin: np.ndarray, depth: np.ndarray, image_size: tuple[int, int],
                       win_rc: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Window minimum of sparse depths, as (sorted distinct linear pixels, their minimum depth).

    Each occupied pixel's depth is spread over its ``rows x cols`` window and z-buffered, so
    the cost grows with (occupied pixels x window area), not with the image size.
    """
    w, h = image_size
    base = zbuffer_winners(lin, depth)
    lin, depth = lin[base], depth[base]
    hr, hc = win_rc[0] // 2, win_rc[1] // 2
    dr, dc = (a.ravel() for a in np.meshgrid(np.arange(-hr, hr + 1), np.arange(-hc, hc + 1), indexing="ij"))
    rows = (lin // w)[:, None] + dr[None, :]
    cols = (lin % w)[:, None] + dc[None, :]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    lin_e = (rows * w + cols)[inside]
    d_e = np.broadcast_to(depth[:, None], rows.shape)[inside]
    win = zbuffer_winners(lin_e, d_e)
    return lin_e[win], d_e[win]


def _use_sparse(n_pixels: int, win_rc: tuple[int, int], image_size: tuple[int, int]) -> bool:
    return n_pixels * win_rc[0] * win_rc[1] <= image_size[0] * image_size[1] // 4


def depth_buffer(pixel: np.ndarray, depth: np.ndarray, image_size: tuple[int, int],
                 window: int | tuple[int, int] = 1) -> np.ndarray:
    """(H, W) float64 minimum depth per pixel (``inf`` where no point), min-filtered over a
    ``window x window`` neighbourhood when ``window > 1``.

    Args:
        pixel: (M, 2) int (col, row) pixel indices, all inside the image.
        depth: (M,) depths in metres.
        image_size: (width, height).
        window: odd size in pixels of the minimum filter, or (rows, cols) (1 = none). LiDAR is much
            sparser than the image, so a small window lets nearby foreground points cover the gaps.
    """
    win_rc = _check_window(window)
    w, h = image_size
    buf = np.full(h * w, np.inf, dtype=np.float64)
    if not len(depth):
        return buf.reshape(h, w)
    lin = pixel[:, 1].astype(np.int64) * w + pixel[:, 0]
    d = np.asarray(depth, dtype=np.float64)
    if win_rc == (1, 1) or _use_sparse(len(lin), win_rc, image_size):
        lin_u, d_u = _sparse_window_min(lin, d, image_size, win_rc)
        buf[lin_u] = d_u
        return buf.reshape(h, w)
    win = zbuffer_winners(lin, d)
    buf[lin[win]] = d[win]
    buf = buf.reshape(h, w)
    # Dense points: filter only their bounding box plus half a window (everything else stays inf).
    (r0, c0), (r1, c1) = pixel[:, ::-1].min(axis=0), pixel[:, ::-1].max(axis=0)
    hr, hc = win_rc[0] // 2, win_rc[1] // 2
    r0, c0, r1, c1 = max(r0 - hr, 0), max(c0 - hc, 0), min(r1 + hr + 1, h), min(c1 + hc + 1, w)
    buf[r0:r1, c0:c1] = ndimage.minimum_filter(buf[r0:r1, c0:c1], size=win_rc, mode="nearest")
    return buf


def reference_depth_at(pixel: np.ndarray, depth: np.ndarray, image_size: tuple[int, int],
                       window: int | tuple[int, int] = 1) -> np.ndarray:
    """(M,) the window-minimum depth of :func:`depth_buffer` read at each point's own pixel.

    Same values as ``depth_buffer(...)[row, col]`` without building the (H, W) image when the
    points are sparse.
    """
    win_rc = _check_window(window)
    if not len(depth):
        return np.zeros(0)
    w, _ = image_size
    lin = pixel[:, 1].astype(np.int64) * w + pixel[:, 0]
    d = np.asarray(depth, dtype=np.float64)
    if win_rc == (1, 1) or _use_sparse(len(lin), win_rc, image_size):
        lin_u, d_u = _sparse_window_min(lin, d, image_size, win_rc)
        return d_u[np.searchsorted(lin_u, lin)]  # every point's own pixel is present
    return depth_buffer(pixel, d, image_size, win_rc).ravel()[lin]


# ---------------------------------------------------------------------- image -> points
def labels_from_image(xyz: np.ndarray, calib: Calibration, image_labels: np.ndarray,
                      depth_image: np.ndarray | None = None, occlusion: Occlusion = "zbuffer",
                      tolerance: float = DEFAULT_TOLERANCE, rel_tolerance: float = DEFAULT_REL_TOLERANCE,
                      window: int | tuple[int, int] = DEFAULT_WINDOW, ignore_index: int = DEFAULT_IGNORE,
                      near: float = DEFAULT_NEAR, source: str = "image labels") -> LabelTransfer:
    """Give LiDAR points the labels of the image pixels they project onto.

    Args:
        xyz: (N, 3) or (N, C>=3) LiDAR-frame points in metres.
        calib: calibration with ``K`` (for the resolution of ``image_labels``) and
            ``T_cam_lidar``. If ``calib.image_size`` is set it must equal the label image's size
            (use :func:`~terraseg.geometry.projection.scale_calibration` for resized masks).
        image_labels: (H, W) integer class ids.
        depth_image: optional (H, W) camera depth in metres (0, NaN or inf = unknown), for
            example from a depth camera or stereo.
        occlusion: how hidden points are found:

            - ``"zbuffer"`` (default): the reference depth is the minimum depth of the projected
              points themselves over a ``window x window`` neighbourhood (combined with
              ``depth_image`` by element-wise minimum when it is given);
            - ``"depth"``: the reference is ``depth_image`` alone (required);
            - ``"none"``: no occlusion test.
        tolerance: absolute depth slack in metres.
        rel_tolerance: relative depth slack; a point is occluded when
            ``depth > reference * (1 + rel_tolerance) + tolerance``.
        window: odd window size in pixels for the z-buffer minimum filter, or (rows, cols)
            (default 5). Keep it below the image-space spacing of neighbouring LiDAR beams (about 25 px
            vertically for an OS1-64 seen by a 2800 px focal length camera): a larger window
            reaches the next beam's ground points, which are nearer, and flags visible ground
            as occluded.
        ignore_index: label of points that are not valid.
        near: minimum camera depth in metres.
        source: name used in error messages (for example the mask file).

    Returns:
        A :class:`LabelTransfer` (labels, valid, occluded, projection).
    """
    lab = np.asarray(image_labels)
    if lab.ndim != 2 or lab.dtype.kind not in "ui":
        raise DataError(f"{source}: expected an (H, W) integer label image, got shape {lab.shape} dtype {lab.dtype}")
    size = (int(lab.shape[1]), int(lab.shape[0]))
    if calib.image_size is not None and tuple(calib.image_size) != size:
        raise DataError(f"{source}: label image is {size[0]}x{size[1]} but the calibration is for "
                        f"{calib.image_size[0]}x{calib.image_size[1]} (rescale it with scale_calibration)")
    if occlusion not in ("zbuffer", "depth", "none"):
        raise DataError(f"unknown occlusion mode {occlusion!r} (expected zbuffer, depth or none)")
    if occlusion == "depth" and depth_image is None:
        raise DataError("occlusion='depth' needs a depth_image")
    _check_window(window)
    if tolerance < 0 or rel_tolerance < 0:
        raise DataError(f"tolerances must be >= 0, got tolerance={tolerance}, rel_tolerance={rel_tolerance}")
    ref_depth = None
    if depth_image is not None and occlusion != "none":
        ref_depth = np.asarray(depth_image)
        if ref_depth.shape != lab.shape or ref_depth.dtype.kind not in "fiu":
            raise DataError(f"depth image must be a numeric {size[0]}x{size[1]} image like the labels, got shape "
                            f"{ref_depth.shape} dtype {ref_depth.dtype}")

    proj = project_points(xyz, calib, image_size=size, near=near)
    vis = proj.visible
    px, py = proj.pixel[vis, 0], proj.pixel[vis, 1]
    depth = proj.depth[vis]
    occluded = np.zeros(len(proj), dtype=bool)
    if occlusion != "none" and len(vis):
        nearest = np.full(len(vis), np.inf)
        if occlusion == "zbuffer":
            nearest = reference_depth_at(proj.pixel[vis], depth, size, window)
        if ref_depth is not None:
            measured = ref_depth[py, px].astype(np.float64)
            with np.errstate(invalid="ignore"):
                known = np.isfinite(measured) & (measured > 0)  # 0, NaN, inf: no measurement
            nearest = np.minimum(nearest, np.where(known, measured, np.inf))
        occluded[vis] = depth > nearest * (1.0 + rel_tolerance) + tolerance
    valid = proj.in_image & ~occluded
    out = np.full(len(proj), ignore_index, dtype=_label_dtype(lab.dtype, ignore_index))
    keep = valid[vis]
    out[vis[keep]] = lab[py[keep], px[keep]]
    return LabelTransfer(labels=out, valid=valid, occluded=occluded, projection=proj)


# ---------------------------------------------------------------------- points -> image
def points_to_image(pixels: np.ndarray | Projection, depth: np.ndarray | None, labels: np.ndarray | None,
                    image_size: tuple[int, int] | None = None, splat_radius: int = 0,
                    ignore_index: int = DEFAULT_IGNORE, valid: np.ndarray | None = None) -> SparseImage:
    """Render points into a sparse (H, W) label, depth and point-index image, nearest point first.

    Args:
        pixels: a :class:`Projection` (then ``depth`` may be None and its ``in_image`` selects the
            points), or (N, 2) ``(u, v)`` coordinates: float (rounded as ``floor(uv + 0.5)``,
            integer = pixel centre) or integer pixel indices.
        depth: (N,) depths in metres (camera z); points with non-finite or non-positive depth
            are skipped.
        labels: (N,) integer labels, or None to render depth and index only.
        image_size: (width, height); defaults to the projection's.
        splat_radius: each point also covers the ``(2r+1) x (2r+1)`` square around its pixel;
            splats are z-buffered too (nearest wins; at equal depth, the pixel nearer a point's
            centre wins).
        ignore_index: label of pixels without a point.
        valid: optional (N,) bool selecting the points to render.

    Returns:
        A :class:`SparseImage`.
    """
    if isinstance(pixels, Projection):
        proj = pixels
        size = _check_size(image_size if image_size is not None else proj.image_size)
        if size is None:
            raise DataError("points_to_image needs image_size (the projection has none)")
        px = proj.pixel.copy()
        depth = proj.depth if depth is None else depth
        sel = proj.in_image.copy()
        if proj.image_size is not None and tuple(proj.image_size) != size:
            raise DataError(f"image_size {size} differs from the projection's {proj.image_size}")
    else:
        size = _check_size(image_size)
        if size is None:
            raise DataError("points_to_image needs image_size=(width, height)")
        arr = np.asarray(pixels)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise DataError(f"pixels: expected (N, 2) (u, v) coordinates, got shape {arr.shape}")
        if arr.dtype.kind == "f":
            fin = np.isfinite(arr).all(axis=1)
            px = np.full(arr.shape, -1, dtype=np.int64)
            px[fin] = np.floor(np.clip(arr[fin], -1e9, 1e9) + 0.5).astype(np.int64)
            sel = fin
        elif arr.dtype.kind in "ui":
            px = arr.astype(np.int64)
            sel = np.ones(len(arr), dtype=bool)
        else:
            raise DataError(f"pixels: expected float or integer coordinates, got dtype {arr.dtype}")
    n = len(px)
    if depth is None:
        raise DataError("points_to_image needs depth (N,) for the z-buffer")
    d = np.asarray(depth, dtype=np.float64).ravel()
    if len(d) != n:
        raise DataError(f"depth has {len(d)} values for {n} points")
    if labels is not None:
        lab = np.asarray(labels).ravel()
        if len(lab) != n or lab.dtype.kind not in "ui":
            raise DataError(f"labels: expected ({n},) integer ids, got shape {np.shape(labels)} dtype {lab.dtype}")
    if valid is not None:
        v = np.asarray(valid, dtype=bool).ravel()
        if len(v) != n:
            raise DataError(f"valid mask has {len(v)} entries for {n} points")
        sel = sel & v
    if splat_radius < 0 or int(splat_radius) != splat_radius:
        raise DataError(f"splat_radius must be a non-negative integer, got {splat_radius}")
    r = int(splat_radius)
    w, h = size
    with np.errstate(invalid="ignore"):
        sel = sel & np.isfinite(d) & (d > 0)
    idx = np.flatnonzero(sel)
    cx, cy, dd = px[idx, 0], px[idx, 1], d[idx]
    if r == 0:
        src, ring = idx, np.zeros(len(idx), dtype=np.int64)
        ox, oy = cx, cy
    else:
        off = np.arange(-r, r + 1)
        dx, dy = (a.ravel() for a in np.meshgrid(off, off))
        k = len(dx)
        src = np.repeat(idx, k)
        ox = (cx[:, None] + dx[None, :]).ravel()
        oy = (cy[:, None] + dy[None, :]).ravel()
        ring = np.tile(np.maximum(np.abs(dx), np.abs(dy)), len(idx))
        dd = np.repeat(dd, k)
    inside = (ox >= 0) & (ox < w) & (oy >= 0) & (oy < h)
    src, ox, oy, dd, ring = src[inside], ox[inside], oy[inside], dd[inside], ring[inside]
    lin = oy * w + ox
    win = zbuffer_winners(lin, dd, ring)
    index = np.full(h * w, -1, dtype=np.int64)
    index[lin[win]] = src[win]
    dep = np.zeros(h * w, dtype=np.float32)
    dep[lin[win]] = dd[win]
    out_labels = None
    if labels is not None:
        out_labels = np.full(h * w, ignore_index, dtype=_label_dtype(lab.dtype, ignore_index))
        out_labels[lin[win]] = lab[src[win]]
        out_labels = out_labels.reshape(h, w)
    return SparseImage(labels=out_labels, depth=dep.reshape(h, w), index=index.reshape(h, w))
