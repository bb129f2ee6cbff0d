"""Point clouds as coloured images, with numpy only: a bird's-eye view and a sensor (range) view.

Conventions (the same as :mod:`terraseg.geometry.range_image`):

- Points are (N, 3) or (N, C >= 3) float, x, y, z in metres in the sensor frame (x forward,
  y left, z up).
- Colours are (N, 3) uint8 RGB, one per point (for example ``ontology.palette[labels]`` or
  :func:`scalar_colors` of height or intensity).
- Empty pixels get ``background`` (dark grey by default, so the black ``void`` class still shows).

Bird's-eye view (:func:`render_bev`): seen from above with +x (forward) pointing up the image and
+y (left) pointing left; where several points fall into one pixel the highest one is drawn.
Sensor view (:func:`render_range`): row from the elevation angle (row 0 = highest elevation),
column from the azimuth with the sensor's +x axis at the image centre and columns running
clockwise seen from above; the nearest point of a pixel is drawn.

Every render of one frame should share one :class:`BevExtent` / elevation range so that the
ground truth and the predictions line up pixel for pixel: compute it once with
:func:`bev_extent` / :func:`elevation_range` and pass it to each call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from terraseg.errors import DataError

BACKGROUND: tuple[int, int, int] = (38, 38, 42)
"""RGB of pixels without a point."""


@dataclass(frozen=True)
class BevExtent:
    """The ground rectangle a bird's-eye view shows, in metres in the sensor frame."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float

    @property
    def size_m(self) -> tuple[float, float]:
        """(extent along x, extent along y) in metres."""
        return self.x_max - self.x_min, self.y_max - self.y_min


def _xyz(points: np.ndarray, where: str = "points") -> np.ndarray:
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] < 3:
        raise DataError(f"{where}: expected an (N, 3+) point array, got shape {p.shape}")
    return p[:, :3].astype(np.float64, copy=False)


def _colors(colors: np.ndarray, n: int, where: str = "colors") -> np.ndarray:
    c = np.asarray(colors)
    if c.shape != (n, 3):
        raise DataError(f"{where}: expected ({n}, 3) uint8 colours for {n} points, got shape {c.shape}")
    return c.astype(np.uint8, copy=False)


def bev_extent(points: np.ndarray, max_range: float = 50.0, margin: float = 1.0,
               quantile: float = 0.005) -> BevExtent:
    """A square ground rectangle around the bulk of the points (robust to stray far returns).

    Takes the ``quantile`` .. ``1 - quantile`` range of x and y over points within ``max_range``
    metres (horizontal distance) of the sensor, pads it by ``margin`` metres, includes the sensor
    origin and grows the shorter side so the rectangle is square (pixels stay square in metres).
    """
    xyz = _xyz(points)
    d = np.hypot(xyz[:, 0], xyz[:, 1])
    sel = xyz[d <= max_range] if np.any(d <= max_range) else xyz
    if sel.shape[0] == 0:
        return BevExtent(-max_range, max_range, -max_range, max_range)
    lo = np.minimum(np.quantile(sel[:, :2], quantile, axis=0), 0.0) - margin
    hi = np.maximum(np.quantile(sel[:, :2], 1.0 - quantile, axis=0), 0.0) + margin
    span = float(max(hi[0] - lo[0], hi[1] - lo[1]))
    cx, cy = (lo + hi) / 2.0
    return BevExtent(cx - span / 2, cx + span / 2, cy - span / 2, cy + span / 2)


def _splat(rows: np.ndarray, cols: np.ndarray, order_key: np.ndarray, colors: np.ndarray, shape: tuple[int, int],
           point_px: int, background: tuple[int, int, int]) -> np.ndarray:
    """Draw points (already inside ``shape``) as ``point_px`` x ``point_px`` squares; per pixel the
    point with the smallest ``order_key`` wins (deterministic, no reliance on assignment order)."""
    h, w = shape
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = np.asarray(background, dtype=np.uint8)
    if rows.size == 0:
        return img
    k = max(1, int(point_px))
    off = np.arange(k) - (k - 1) // 2
    dr, dc = np.meshgrid(off, off, indexing="ij")
    rr = (rows[:, None] + dr.ravel()[None, :]).ravel()
    cc = (cols[:, None] + dc.ravel()[None, :]).ravel()
    src = np.repeat(np.arange(rows.size), k * k)
    # a splat's centre beats the neighbouring pixels of other points at the same depth
    centre = np.tile((dr.ravel() != 0) | (dc.ravel() != 0), rows.size)
    inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    rr, cc, src, centre = rr[inside], cc[inside], src[inside], centre[inside]
    pix = rr * w + cc
    order = np.lexsort((centre, order_key[src], pix))
    pix_sorted = pix[order]
    first = np.ones(pix_sorted.size, dtype=bool)
    first[1:] = pix_sorted[1:] != pix_sorted[:-1]
    win = order[first]
    img.reshape(-1, 3)[pix[win]] = colors[src[win]]
    return img


def render_bev(points: np.ndarray, colors: np.ndarray, extent: BevExtent | None = None, size: int = 480,
               point_px: int = 2, background: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """Render points seen from above as an (size, size) RGB image.

    Args:
        points: (N, 3+) float, x, y, z in metres (sensor frame).
        colors: (N, 3) uint8 RGB per point.
        extent: the ground rectangle shown (default :func:`bev_extent` of ``points``); points
            outside it are not drawn.
        size: image side in pixels; one pixel is ``extent side / size`` metres.
        point_px: side of the square drawn per point, in pixels (>= 1).

    Returns:
        (size, size, 3) uint8: row 0 = ``x_max`` (far ahead), column 0 = ``y_max`` (far left).
        Where points overlap, the highest (largest z) wins.
    """
    xyz = _xyz(points)
    col = _colors(colors, xyz.shape[0])
    ext = extent or bev_extent(xyz)
    sx, sy = ext.size_m
    if sx <= 0 or sy <= 0 or size < 1:
        raise DataError(f"bird's-eye view: empty extent {ext} or size {size}")
    rows = np.floor((ext.x_max - xyz[:, 0]) / sx * size).astype(np.int64)
    cols = np.floor((ext.y_max - xyz[:, 1]) / sy * size).astype(np.int64)
    ok = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size)
    return _splat(rows[ok], cols[ok], -xyz[ok, 2], col[ok], (size, size), point_px, background)


def elevation_range(points: np.ndarray, quantile: float = 0.002, margin_deg: float = 0.5) -> tuple[float, float]:
    """(lowest, highest) elevation angle in degrees covering the points, for :func:`render_range`.

    Uses the ``quantile`` .. ``1 - quantile`` range (robust to a few stray returns) padded by
    ``margin_deg``. Points at the sensor origin are ignored.
    """
    xyz = _xyz(points)
    r = np.linalg.norm(xyz, axis=1)
    ok = r > 1e-6
    if not np.any(ok):
        return -25.0, 3.0
    elev = np.degrees(np.arctan2(xyz[ok, 2], np.hypot(xyz[ok, 0], xyz[ok, 1])))
    lo, hi = np.quantile(elev, [quantile, 1.0 - quantile])
    if hi - lo < 1.0:
        lo, hi = lo - 0.5, hi + 0.5
    return float(lo - margin_deg), float(hi + margin_deg)


def render_range(points: np.ndarray, colors: np.ndarray, elevation: tuple[float, float] | None = None,
                 width: int = 1024, rows: int = 64, row_px: int = 3, point_px: int = 1,
                 background: tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """Render points as seen from the sensor (a spherical range-image layout) in colour.

    Args:
        points: (N, 3+) float, x, y, z in metres (sensor frame).
        colors: (N, 3) uint8 RGB per point.
        elevation: (lowest, highest) elevation in degrees mapped to the bottom / top rows
            (default :func:`elevation_range` of ``points``); points outside are not drawn.
        width: columns covering 360 degrees of azimuth (+x at the centre column).
        rows: elevation bins (the sensor's beam count is a good choice).
        row_px: each bin is drawn ``row_px`` pixels tall so a 64-beam scan stays readable.
        point_px: side of the square drawn per point in the (rows, width) grid, before ``row_px``.

    Returns:
        (rows * row_px, width, 3) uint8 RGB; where several points share a pixel the nearest wins.
    """
    xyz = _xyz(points)
    col = _colors(colors, xyz.shape[0])
    lo, hi = elevation or elevation_range(xyz)
    if hi <= lo or width < 1 or rows < 1 or row_px < 1:
        raise DataError(f"sensor view: bad elevation range {lo}..{hi} degrees or size {rows}x{width}")
    rng = np.linalg.norm(xyz, axis=1)
    valid = rng > 1e-6
    elev = np.degrees(np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1])))
    yaw = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0]))
    r = np.floor((hi - elev) / (hi - lo) * rows).astype(np.int64)
    c = np.mod(np.floor((180.0 - yaw) / 360.0 * width).astype(np.int64), width)
    ok = valid & (r >= 0) & (r < rows)
    img = _splat(r[ok], c[ok], rng[ok], col[ok], (rows, width), point_px, background)
    return np.repeat(img, row_px, axis=0) if row_px > 1 else img


def scalar_colors(values: np.ndarray, cmap: str = "viridis", limits: tuple[float, float] | None = None) -> np.ndarray:
    """Map (N,) scalars (height in metres, intensity ...) to (N, 3) uint8 RGB with a matplotlib colormap.

    ``limits`` default to the 2nd and 98th percentiles of the finite values; non-finite values get
    the colormap's lowest colour.
    """
    from matplotlib import colormaps

    v = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(v)
    if limits is None:
        lo, hi = (np.percentile(v[finite], [2.0, 98.0]) if finite.any() else (0.0, 1.0))
    else:
        lo, hi = limits
    span = hi - lo if hi > lo else 1.0
    t = np.clip(np.where(finite, (v - lo) / span, 0.0), 0.0, 1.0)
    lut = (np.asarray(colormaps[cmap](np.linspace(0.0, 1.0, 256)))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    return lut[np.round(t * 255.0).astype(np.int64)]


def label_colors(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(N,) class ids -> (N, 3) uint8 RGB from an id-indexed (K, 3) palette; ids >= K are magenta."""
    lab = np.asarray(labels).astype(np.int64, copy=False).ravel()
    pal = np.asarray(palette, dtype=np.uint8)
    out = np.empty((lab.size, 3), dtype=np.uint8)
    inside = (lab >= 0) & (lab < len(pal))
    out[inside] = pal[lab[inside]]
    out[~inside] = (255, 0, 255)
    return out
