"""Range images: LiDAR scans as (H, W) images of range, xyz and intensity.

Two ways to build one:

- :func:`project_scan` (spherical projection): row from each point's elevation angle, column
  from its azimuth. Works for any unordered cloud (SemanticKITTI ``.bin`` files of an HDL-64E,
  merged or motion-compensated clouds). Rows come either from a uniform vertical field of view
  (RangeNet++ convention) or, for sensors with non-uniform beams, from a per-beam elevation
  table (each point goes to the beam with the nearest elevation). Several points can fall into
  one pixel; the nearest range wins and the others keep their per-point (row, col) so
  predictions can still be read back for every point.
- :func:`from_organized`: for scans that are already stored in sensor order (Ouster clouds,
  including the RELLIS-3D ``.bin`` files: 64 x 2048 points with zero points where there was no
  return). Reshaping gives exactly the sensor's rows and columns, with no collisions and no
  empty pixels other than missing returns. Prefer it whenever the scan is organised.

Which is right for which sensor (measured on the RELLIS-3D Ouster OS1-64 scan 000104, see the
tests):

- Ouster (organised): use :func:`from_organized`. The unit's beams lie at +17.02 ... -16.44
  degrees, 0.43-0.62 degrees apart, and each beam fires at an azimuth offset of up to +-3.5
  degrees (a staggered scan). Spherical projection with the nominal uniform field of view
  (preset ``ouster-os1-64``) puts only 21.7 % of the points in their sensor row (100 % within one
  row: the unit's beams sit 0.3 degrees higher than nominal) and spreads one firing over up to
  +-20 columns. With the unit's per-beam elevation and azimuth tables (preset
  ``rellis3d-os1-64``, or :func:`fit_projection` from any organised scan of the unit) it
  reproduces the organised layout exactly (100 % of rows and columns), which is what
  unorganised copies of the scan (cropped, filtered, merged) need.
- Velodyne HDL-64E (SemanticKITTI ``.bin`` files are not organised): spherical projection with
  the RangeNet++ field of view (+3 / -25 degrees, 64 x 2048, preset ``velodyne-hdl64e``), as the
  published range-image models expect. On SemanticKITTI 00/000000, 99.6 % of the points lie
  inside that field of view and 78.6 % own a pixel; the rest share a pixel with a nearer point.
- Velodyne VLS-128: its beams are strongly non-uniform (0.11 degrees apart near the horizon,
  up to 5.4 degrees at the bottom), so its preset uses the per-beam table (nearest beam).

Conventions:
- Points are (N, 3) or (N, C>=3) float, x, y, z in metres in the sensor frame (x forward, y left,
  z up); channel 3, if present, is intensity.
- Row 0 is the top (highest elevation). ``elevation = atan2(z, hypot(x, y))``.
- Column ``floor((azimuth_start - yaw) / 360 * W) mod W`` with ``yaw = atan2(y, x)`` in degrees:
  columns run clockwise seen from above. With the default ``azimuth_start = 180`` (RangeNet++),
  the sensor's +x axis is at the image centre and +-180 degrees at the left/right edges.
- Empty pixels hold 0 in ``range``, ``xyz`` and ``intensity``, False in ``mask`` and -1 in
  ``index``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.geometry.projection import as_xyz
from terraseg.geometry.transfer import zbuffer_winners

Layout = Literal["auto", "row-major", "column-major"]

try:  # numba is a dependency; without it from_organized takes its numpy path (same result, slower)
    from numba import njit

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

# Per-beam elevations (degrees, top to bottom) and azimuth offsets (degrees, added to the
# column's nominal yaw) of the RELLIS-3D Ouster OS1-64, measured from its organised scan
# 000104.bin (every beam's points lie at one elevation; std 0 to 1e-3 degrees).
_RELLIS_OS1_ELEVATIONS = (
    17.024, 16.401, 15.841, 15.277, 14.819, 14.226, 13.665, 13.12, 12.668, 12.1, 11.543, 10.996, 10.55,
    9.981, 9.434, 8.882, 8.449, 7.888, 7.341, 6.794, 6.356, 5.789, 5.253, 4.701, 4.261, 3.712, 3.158,
    2.614, 2.17, 1.618, 1.071, 0.52, 0.076, -0.472, -1.022, -1.572, -2.018, -2.562, -3.111, -3.664,
    -4.106, -4.664, -5.199, -5.759, -6.212, -6.763, -7.307, -7.864, -8.307, -8.852, -9.403, -9.976,
    -10.422, -10.962, -11.523, -12.091, -12.553, -13.099, -13.656, -14.243, -14.709, -15.267, -15.836,
    -16.439,
)
_RELLIS_OS1_AZIMUTH_OFFSETS = (
    -3.018, -0.84, 1.318, 3.45, -3.01, -0.862, 1.26, 3.378, -3.006, -0.874, 1.23, 3.327, -3.017, -0.901,
    1.199, 3.275, -3.029, -0.936, 1.159, 3.238, -3.053, -0.965, 1.125, 3.199, -3.067, -0.983, 1.096, 3.169,
    -3.09, -1.006, 1.069, 3.136, -3.128, -1.037, 1.038, 3.119, -3.148, -1.06, 1.009, 3.091, -3.18, -1.096,
    0.989, 3.08, -3.204, -1.13, 0.962, 3.05, -3.245, -1.153, 0.939, 3.046, -3.315, -1.184, 0.912, 3.04,
    -3.348, -1.228, 0.883, 3.041, -3.411, -1.263, 0.883, 3.042,
)
# Velodyne VLS-128 (Alpha Prime) nominal laser elevations in degrees, sorted top to bottom
# (from the vert_correction table of the ros-drivers/velodyne VLS128.yaml default calibration).
_VLS128_ELEVATIONS = (
    15.0, 11.75, 9.7, 8.43, 7.58, 6.98, 6.48, 6.08, 5.73, 5.43, 5.18, 4.98, 4.83,
    *np.round(np.arange(4.72, -6.391, -0.11), 2).tolist(),
    -6.5, -6.65, -6.85, -7.15, -7.65, -8.352, -9.244, -10.346, -11.742, -13.565, -16.042, -19.582, -25.0,
)


@dataclass(frozen=True)
class RangeProjection:
    """How a scan is projected into a range image.

    Attributes:
        height, width: image size in pixels (rows = beams, columns = azimuth steps).
        fov_up, fov_down: vertical field of view in degrees, the top edge of row 0 and the bottom
            edge of the last row (RangeNet++ convention: ``fov_down`` is negative below the
            horizon). Used when ``elevations`` is None.
        elevations: optional per-row beam elevations in degrees, strictly decreasing (row 0 =
            top); a point goes to the row of the nearest beam, and its field of view extends
            half a beam spacing beyond the first and last beams.
        azimuth_offsets: optional per-row azimuth offsets in degrees of staggered sensors (a
            beam's point at column c lies at the column's nominal yaw plus the offset).
        azimuth_start: yaw in degrees of the left edge of column 0 (180 = RangeNet++).
        min_range, max_range: points outside ``(min_range, max_range]`` metres are dropped
            (zero points of missing returns have range 0).
        out_of_fov: ``"clip"`` puts points above / below the field of view into the first / last
            row (RangeNet++); ``"drop"`` leaves them out.
        name: preset name, for messages.
    """

    height: int
    width: int
    fov_up: float = 3.0
    fov_down: float = -25.0
    elevations: tuple[float, ...] | None = None
    azimuth_offsets: tuple[float, ...] | None = None
    azimuth_start: float = 180.0
    min_range: float = 1e-3
    max_range: float = float("inf")
    out_of_fov: Literal["clip", "drop"] = "clip"
    name: str = "custom"
    _boundaries: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = f"range projection {self.name!r}"
        if int(self.height) != self.height or int(self.width) != self.width or self.height < 1 or self.width < 1:
            raise ConfigError(f"{where}: height and width must be positive integers, got {self.height}x{self.width}")
        if self.out_of_fov not in ("clip", "drop"):
            raise ConfigError(f"{where}: out_of_fov must be 'clip' or 'drop', got {self.out_of_fov!r}")
        if not (0 <= self.min_range < self.max_range):
            raise ConfigError(f"{where}: need 0 <= min_range < max_range, got {self.min_range}, {self.max_range}")
        if self.elevations is not None:
            e = np.asarray(self.elevations, dtype=np.float64)
            if e.shape != (self.height,):
                raise ConfigError(f"{where}: {e.size} beam elevations for {self.height} rows")
            if self.height > 1 and not (np.diff(e) < 0).all():
                raise ConfigError(f"{where}: beam elevations must be strictly decreasing (row 0 = top beam)")
            object.__setattr__(self, "elevations", tuple(float(x) for x in e))
            # Row boundaries: midway between beams, plus half a spacing beyond the outer beams.
            gap = np.diff(e) if self.height > 1 else np.array([-1.0])
            bounds = np.concatenate([[e[0] - gap[0] / 2], (e[:-1] + e[1:]) / 2, [e[-1] + gap[-1] / 2]])
            object.__setattr__(self, "_boundaries", bounds)
        elif not (self.fov_up > self.fov_down):
            raise ConfigError(f"{where}: fov_up ({self.fov_up}) must be above fov_down ({self.fov_down})")
        if self.azimuth_offsets is not None:
            a = np.asarray(self.azimuth_offsets, dtype=np.float64)
            if a.shape != (self.height,):
                raise ConfigError(f"{where}: {a.size} azimuth offsets for {self.height} rows")
            object.__setattr__(self, "azimuth_offsets", tuple(float(x) for x in a))

    @property
    def fov(self) -> tuple[float, float]:
        """(top, bottom) edges of the vertical field of view in degrees."""
        if self._boundaries is not None:
            return float(self._boundaries[0]), float(self._boundaries[-1])
        return float(self.fov_up), float(self.fov_down)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> RangeProjection:
        """A built-in sensor configuration (see :data:`PRESETS`), optionally with overrides."""
        key = name.lower()
        if key not in PRESETS:
            raise ConfigError(f"unknown range projection preset {name!r} (known: {', '.join(sorted(PRESETS))})")
        return replace(PRESETS[key], **overrides) if overrides else PRESETS[key]

    # ------------------------------------------------------------------ angles
    def rows_of(self, elevation_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row int64, inside-fov bool) for elevations in degrees; rows are clipped to [0, H-1]."""
        el = np.asarray(elevation_deg, dtype=np.float64)
        top, bottom = self.fov
        if self._boundaries is not None:
            # number of inner boundaries above the elevation = row index
            inner_asc = self._boundaries[1:-1][::-1]
            row = (self.height - 1) - np.searchsorted(inner_asc, el, side="right")
        else:
            row = np.floor((top - el) / (top - bottom) * self.height)
        inside = (el <= top) & (el >= bottom)
        return np.clip(row, 0, self.height - 1).astype(np.int64), inside

    def cols_of(self, yaw_deg: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """int64 columns for yaws in degrees (``atan2(y, x)``), with per-row azimuth offsets."""
        yaw = np.asarray(yaw_deg, dtype=np.float64)
        if self.azimuth_offsets is not None and rows is not None:
            yaw = yaw - np.asarray(self.azimuth_offsets)[rows]
        u = np.floor((self.azimuth_start - yaw) / 360.0 * self.width).astype(np.int64)
        return np.mod(u, self.width)

    def row_elevations(self) -> np.ndarray:
        """(H,) elevation in degrees of each row's centre (its beam when ``elevations`` is set)."""
        if self.elevations is not None:
            return np.asarray(self.elevations)
        top, bottom = self.fov
        return top - (np.arange(self.height) + 0.5) * (top - bottom) / self.height

    def pixel_directions(self) -> np.ndarray:
        """(H, W, 3) float64 unit vectors of the pixel centres (with per-row azimuth offsets)."""
        el = np.radians(self.row_elevations())[:, None]
        yaw = self.azimuth_start - (np.arange(self.width) + 0.5) * 360.0 / self.width
        yaw = yaw[None, :] + (np.asarray(self.azimuth_offsets)[:, None] if self.azimuth_offsets is not None else 0.0)
        yaw = np.radians(yaw)
        return np.stack(np.broadcast_arrays(np.cos(el) * np.cos(yaw), np.cos(el) * np.sin(yaw), np.sin(el)), axis=-1)


PRESETS: dict[str, RangeProjection] = {
    # RangeNet++ / SalsaNext configuration for SemanticKITTI (HDL-64E S2/S3).
    "velodyne-hdl64e": RangeProjection(64, 2048, fov_up=3.0, fov_down=-25.0, name="velodyne-hdl64e"),
    # Ouster OS1-64 (Gen 1): 64 beams over a nominal 33.2 degrees between the outer beams, so the
    # row edges lie half a spacing beyond them. Individual units differ by a few tenths of a
    # degree (the RELLIS-3D unit: 21.7 % of points in their exact row, 100 % within one); use
    # from_organized, or the unit's tables (fit_projection), for exact rows.
    "ouster-os1-64": RangeProjection(64, 2048, fov_up=16.6 + 33.2 / 126, fov_down=-16.6 - 33.2 / 126,
                                     name="ouster-os1-64"),
    # The RELLIS-3D OS1-64 unit's own beam tables, in the sensor's column order (column c at
    # yaw -c * 360 / 2048, i.e. column 0 along +x): reproduces the organised scan exactly.
    "rellis3d-os1-64": RangeProjection(64, 2048, elevations=_RELLIS_OS1_ELEVATIONS,
                                       azimuth_offsets=_RELLIS_OS1_AZIMUTH_OFFSETS, azimuth_start=180.0 / 2048,
                                       name="rellis3d-os1-64"),
    # Velodyne VLS-128 (Alpha Prime): +15 / -25 degrees, 128 non-uniform beams, 0.2 degrees
    # azimuth resolution at 10 Hz (1800 columns).
    "velodyne-vls128": RangeProjection(128, 1800, elevations=_VLS128_ELEVATIONS, name="velodyne-vls128"),
}


def _sim_lidar(name: str, beams: int, up: float, down: float, steps: int) -> RangeProjection:
    # terraseg.sim LiDARs: beams evenly spaced from ``up`` to ``down``, column c centred at yaw
    # -(c + 0.5) * 360 / steps (column 0 starts at +x): the projection reproduces the sensor grid.
    return RangeProjection(beams, steps, elevations=tuple(np.linspace(up, down, beams).tolist()), azimuth_start=0.0,
                           name=name)


# The simulator's LiDAR presets (terraseg.sim.LIDAR_PRESETS), for range networks on simulated scans.
PRESETS.update({
    "sim-os1-64": _sim_lidar("sim-os1-64", 64, 16.6, -16.6, 2048),
    "sim-os1-64-1024": _sim_lidar("sim-os1-64-1024", 64, 16.6, -16.6, 1024),
    "sim-vlp-32": _sim_lidar("sim-vlp-32", 32, 15.0, -25.0, 1800),
    "sim-small": _sim_lidar("sim-small", 32, 15.0, -20.0, 512),
    "sim-vlp-16": _sim_lidar("sim-vlp-16", 16, 15.0, -15.0, 900),
})


@dataclass(frozen=True)
class RangeImage:
    """A scan as (H, W) images plus the pixel of every point.

    Attributes:
        range: (H, W) float32 range in metres (0 where empty).
        xyz: (H, W, 3) float32 coordinates of the point behind each pixel (0 where empty).
        intensity: (H, W) float32 intensity (channel 3 of the points), or None.
        mask: (H, W) bool, True where a point is.
        index: (H, W) int64 index of that point in the input array, -1 where empty.
        point_row, point_col: (N,) int64 pixel of every input point (-1 for points without one:
            no return, non-finite, out of range, or out of the field of view with ``drop``).
            Points that lost their pixel to a nearer point keep it here, so per-pixel
            predictions can be read back for every point (see :meth:`to_points`).
        config: the projection used (None for organised scans).
    """

    range: np.ndarray
    xyz: np.ndarray
    intensity: np.ndarray | None
    mask: np.ndarray
    index: np.ndarray
    point_row: np.ndarray
    point_col: np.ndarray
    config: RangeProjection | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.range.shape[0]), int(self.range.shape[1])

    @property
    def num_points(self) -> int:
        """Number of points in the input scan (N)."""
        return len(self.point_row)

    @property
    def has_pixel(self) -> np.ndarray:
        """(N,) bool, True for points with a (row, col)."""
        return self.point_row >= 0

    def gather(self, values: np.ndarray, fill: float | int = 0) -> np.ndarray:
        """Per-point values (N, ...) -> an (H, W, ...) image of the point behind each pixel.

        For example ``ri.gather(labels, fill=255)`` gives a label range image.
        """
        v = np.asarray(values)
        if len(v) != self.num_points:
            raise DataError(f"gather: {len(v)} values for a scan of {self.num_points} points")
        out = np.full(self.shape + v.shape[1:], fill, dtype=v.dtype)
        out[self.mask] = v[self.index[self.mask]]
        return out

    def to_points(self, image: np.ndarray, fill: float | int = 0) -> np.ndarray:
        """An (H, W, ...) image (e.g. a prediction) -> per-point values (N, ...), read at each point's
        (row, col); points without a pixel get ``fill``. Points hidden behind a nearer one in the
        same pixel get that pixel's value (use :func:`~terraseg.geometry.neighbors.knn_vote` for a
        finer back-projection)."""
        img = np.asarray(image)
        if img.shape[:2] != self.shape:
            raise DataError(f"to_points: image is {img.shape[:2]}, range image is {self.shape}")
        out = np.full((self.num_points,) + img.shape[2:], fill, dtype=img.dtype)
        ok = self.has_pixel
        out[ok] = img[self.point_row[ok], self.point_col[ok]]
        return out


# ---------------------------------------------------------------------- helpers
def _split_points(points: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    xyz = as_xyz(points, what).astype(np.float64, copy=False)
    arr = np.asarray(points)
    inten = arr[:, 3].astype(np.float32) if arr.shape[1] >= 4 else None
    return xyz, inten


def _assemble(xyz: np.ndarray, rng: np.ndarray, inten: np.ndarray | None, row: np.ndarray, col: np.ndarray,
              win: np.ndarray, shape: tuple[int, int], config: RangeProjection | None) -> RangeImage:
    """Build a :class:`RangeImage` from winners ``win`` (point indices, one per pixel)."""
    h, w = shape
    lin = row[win] * w + col[win]
    index = np.full(h * w, -1, dtype=np.int64)
    index[lin] = win
    rimg = np.zeros(h * w, dtype=np.float32)
    rimg[lin] = rng[win]
    ximg = np.zeros((h * w, 3), dtype=np.float32)
    ximg[lin] = xyz[win]
    iimg = None
    if inten is not None:
        iimg = np.zeros(h * w, dtype=np.float32)
        iimg[lin] = inten[win]
        iimg = iimg.reshape(h, w)
    return RangeImage(range=rimg.reshape(h, w), xyz=ximg.reshape(h, w, 3), intensity=iimg,
                      mask=(index >= 0).reshape(h, w), index=index.reshape(h, w), point_row=row, point_col=col,
                      config=config)


# ---------------------------------------------------------------------- spherical projection
def project_scan(points: np.ndarray, config: RangeProjection | str = "velodyne-hdl64e",
                 source: str = "points") -> RangeImage:
    """Spherical projection of a scan into a range image (nearest range wins per pixel).

    Args:
        points: (N, 3) or (N, C>=3) float points (x, y, z metres, sensor frame; channel 3 =
            intensity). Non-finite points and points outside the range limits get no pixel.
        config: a :class:`RangeProjection` or a preset name.
        source: name used in error messages.

    Returns:
        A :class:`RangeImage` with per-point (row, col).
    """
    cfg = RangeProjection.preset(config) if isinstance(config, str) else config
    xyz, inten = _split_points(points, source)
    n = len(xyz)
    with np.errstate(invalid="ignore"):
        rng = np.sqrt(np.einsum("ij,ij->i", xyz, xyz))
        ok = np.isfinite(rng) & (rng > cfg.min_range) & (rng <= cfg.max_range)
    idx = np.flatnonzero(ok)
    p = xyz[idx]
    elev = np.degrees(np.arctan2(p[:, 2], np.hypot(p[:, 0], p[:, 1])))
    r_ok, inside = cfg.rows_of(elev)
    if cfg.out_of_fov == "drop":
        idx, p, r_ok = idx[inside], p[inside], r_ok[inside]
    c_ok = cfg.cols_of(np.degrees(np.arctan2(p[:, 1], p[:, 0])), r_ok)
    row = np.full(n, -1, dtype=np.int64)
    col = np.full(n, -1, dtype=np.int64)
    row[idx], col[idx] = r_ok, c_ok
    win = idx[zbuffer_winners(r_ok * cfg.width + c_ok, rng[idx])]
    return _assemble(xyz, rng, inten, row, col, win, (cfg.height, cfg.width), cfg)


# ---------------------------------------------------------------------- organised scans
def _row_spread(elev: np.ndarray, rows: np.ndarray, ok: np.ndarray, h: int) -> tuple[float, np.ndarray]:
    """Mean within-row standard deviation of elevation, and each row's mean elevation (NaN if empty)."""
    r = rows[ok]
    e = elev[ok]
    cnt = np.bincount(r, minlength=h).astype(np.float64)
    s1 = np.bincount(r, weights=e, minlength=h)
    s2 = np.bincount(r, weights=e * e, minlength=h)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / cnt
        var = np.maximum(s2 / cnt - mean * mean, 0.0)
    has = cnt > 0
    spread = float(np.sqrt(var[has]).mean()) if has.any() else float("inf")
    return spread, np.where(has, mean, np.nan)


def parse_organized(projection: str | RangeProjection | None) -> tuple[int, int] | None:
    """``(H, W)`` of an ``organized:HxW`` projection string (a scan stored in sensor order, see
    :func:`from_organized`), else None.

    Raises:
        DataError: an ``organized:`` string without a valid ``HxW``.
    """
    if isinstance(projection, str) and projection.startswith("organized:"):
        try:
            h, w = projection.split(":", 1)[1].lower().split("x")
            hw = int(h), int(w)
        except ValueError:
            raise DataError(f"projection {projection!r}: expected organized:HxW, e.g. organized:64x2048") from None
        if hw[0] < 1 or hw[1] < 1:
            raise DataError(f"projection {projection!r}: height and width must be positive")
        return hw
    return None


def organized_layout(points: np.ndarray, height: int, width: int, layout: Layout = "auto",
                     flip_rows: bool | None = None, min_range: float = 1e-3, source: str = "points"
                     ) -> tuple[Layout, bool]:
    """The concrete ``(layout, flip_rows)`` that :func:`from_organized` uses for a scan.

    ``"auto"`` and ``None`` are decided from the scan (see :func:`from_organized`); a stream of
    scans from one sensor can decide once and pass the result for every later scan, which
    then skips the elevation statistics.
    """
    _check_organized_args(height, width, layout, source)
    if layout != "auto" and flip_rows is not None:
        return layout, bool(flip_rows)
    xyz, _ = _split_points(points, source)
    _, ok = _organized_range(xyz, height, width, min_range, source)
    return _resolve_layout(xyz, ok, height, width, layout, flip_rows)


def _check_organized_args(height: int, width: int, layout: str, source: str) -> None:
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise DataError(f"{source}: height and width must be positive integers, got {height}x{width}")
    if layout not in ("auto", "row-major", "column-major"):
        raise DataError(f"{source}: layout must be auto, row-major or column-major, got {layout!r}")


def _check_point_count(n: int, height: int, width: int, source: str) -> None:
    if n != height * width:
        raise DataError(f"{source}: {n} points is not an organised {height} x {width} scan ({height * width} points)")


def _organized_range(xyz: np.ndarray, height: int, width: int, min_range: float, source: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(range (N,) float64, return flags (N,) bool) of an organised scan's float64 xyz."""
    _check_point_count(len(xyz), height, width, source)
    with np.errstate(invalid="ignore"):
        rng = np.sqrt(np.einsum("ij,ij->i", xyz, xyz))
        ok = np.isfinite(rng) & (rng > min_range)
    return rng, ok


def _resolve_layout(xyz: np.ndarray, ok: np.ndarray, height: int, width: int, layout: str,
                    flip_rows: bool | None) -> tuple[Layout, bool]:
    """Decide ``"auto"`` layout (most constant elevation per row) and ``None`` flip (highest beam
    in row 0) from the returns ``ok`` of a scan."""
    if layout != "auto" and flip_rows is not None:
        return layout, bool(flip_rows)  # type: ignore[return-value]
    elev = np.degrees(np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1])))
    if layout == "auto":
        spreads = {k: _row_spread(elev, _organized_grid(height, width, k, False)[1], ok, height)[0]
                   for k in ("row-major", "column-major")}
        layout = min(spreads, key=lambda k: spreads[k])
    if flip_rows is None:
        _, means = _row_spread(elev, _organized_grid(height, width, layout, False)[1], ok, height)
        has = np.isfinite(means)
        flip_rows = bool(has.sum() >= 2 and np.polyfit(np.flatnonzero(has), means[has], 1)[0] > 0)
    return layout, bool(flip_rows)  # type: ignore[return-value]


_GRIDS: dict[tuple[int, int, str, bool], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _organized_grid(h: int, w: int, layout: str, flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixel -> point index (H*W,), point -> row (N,), point -> column (N,)) of an organised
    layout; cached and read-only."""
    key = (int(h), int(w), layout, bool(flip))
    grid = _GRIDS.get(key)
    if grid is None:
        i = np.arange(h * w, dtype=np.int64)
        row, col = (i // w, i % w) if layout == "row-major" else (i % h, i // h)
        if flip:
            row = h - 1 - row
        pix = np.empty(h * w, dtype=np.int64)
        pix[row * w + col] = i
        for a in (pix, row, col):
            a.flags.writeable = False
        if len(_GRIDS) > 16:
            _GRIDS.clear()
        grid = _GRIDS[key] = (pix, row, col)
    return grid


def from_organized(points: np.ndarray, height: int, width: int, layout: Layout = "auto",
                   flip_rows: bool | None = None, min_range: float = 1e-3, source: str = "points") -> RangeImage:
    """Range image of an organised scan (stored in sensor order, zero points for no return).

    Args:
        points: (H*W, 3) or (H*W, C>=3) float points.
        height, width: sensor rows (beams) and columns (azimuth steps).
        layout: ``"row-major"`` (point ``i`` at row ``i // W``: ring after ring),
            ``"column-major"`` (point ``i`` at row ``i % H``: firing after firing, as in the
            RELLIS-3D Ouster ``.bin`` files), or ``"auto"``: the layout whose rows have the most
            constant elevation.
        flip_rows: reverse the row order; None (default) flips when needed to put the highest
            beam in row 0.
        min_range: points with a smaller range (the zero points) are empty pixels.
        source: name used in error messages.

    Returns:
        A :class:`RangeImage` (``config`` None) in which pixel (r, c) holds the sensor's point.
        Every pixel is filled by gathering through a cached pixel -> point table (each point
        owns exactly one pixel). A stream that passes the concrete ``layout`` and ``flip_rows``
        (:func:`organized_layout`) of float32 / float64 points gets all arrays from one compiled
        (numba) pass over the pixels, about 3 ms per 131k-point scan (12 ms with numpy), with
        the same arrays, value for value.
    """
    _check_organized_args(height, width, layout, source)
    if layout != "auto" and flip_rows is not None and _HAVE_NUMBA:
        as_xyz(points, source)  # shape and dtype checks
        arr = np.asarray(points)
        if arr.dtype in (np.float32, np.float64):  # the stream path: one compiled pass, no float64 copy
            return _organized_numba(arr, height, width, layout, bool(flip_rows), min_range, source)
    xyz, inten = _split_points(points, source)
    rng, ok = _organized_range(xyz, height, width, min_range, source)
    layout, flip = _resolve_layout(xyz, ok, height, width, layout, flip_rows)
    pix, row, col = _organized_grid(height, width, layout, flip)
    ok_px = ok[pix]
    index = np.where(ok_px, pix, -1)
    rimg = np.where(ok_px, rng[pix], 0.0).astype(np.float32)
    # float32 before the gather (the values stored are the same) and np.take: ~4x faster than xyz[pix]
    ximg = np.where(ok_px[:, None], np.take(xyz.astype(np.float32), pix, axis=0), np.float32(0))
    iimg = None if inten is None else np.where(ok_px, inten[pix], np.float32(0)).reshape(height, width)
    return RangeImage(range=rimg.reshape(height, width), xyz=ximg.reshape(height, width, 3), intensity=iimg,
                      mask=ok_px.reshape(height, width), index=index.reshape(height, width),
                      point_row=np.where(ok, row, -1), point_col=np.where(ok, col, -1), config=None)


if _HAVE_NUMBA:

    @njit(cache=True, nogil=True)
    def _organized_kernel(points: np.ndarray, pix: np.ndarray, width: int, min_range: float, rimg: np.ndarray,
                          ximg: np.ndarray, iimg: np.ndarray, index: np.ndarray, point_row: np.ndarray,
                          point_col: np.ndarray) -> None:  # pragma: no cover - compiled
        with_intensity = points.shape[1] >= 4
        for p in range(pix.shape[0]):
            i = pix[p]
            x, y, z = np.float64(points[i, 0]), np.float64(points[i, 1]), np.float64(points[i, 2])
            r = math.sqrt(x * x + y * y + z * z)
            if math.isfinite(r) and r > min_range:
                rimg[p] = r
                ximg[p, 0], ximg[p, 1], ximg[p, 2] = x, y, z
                if with_intensity:
                    iimg[p] = points[i, 3]
                index[p] = i
                point_row[i], point_col[i] = p // width, p % width
            else:
                rimg[p] = 0.0
                ximg[p, 0], ximg[p, 1], ximg[p, 2] = 0.0, 0.0, 0.0
                if with_intensity:
                    iimg[p] = 0.0
                index[p] = -1
                point_row[i], point_col[i] = -1, -1


def _organized_numba(points: np.ndarray, height: int, width: int, layout: str, flip: bool, min_range: float,
                     source: str) -> RangeImage:
    """:func:`from_organized` of a float scan with a known layout in one compiled pass over the
    pixels (the numpy path's result, value for value: range from float64 coordinates, stored as
    float32)."""
    n = len(points)
    _check_point_count(n, height, width, source)
    pix = _organized_grid(height, width, layout, flip)[0]
    hw = height * width
    rimg = np.empty(hw, dtype=np.float32)
    ximg = np.empty((hw, 3), dtype=np.float32)
    with_intensity = points.shape[1] >= 4
    iimg = np.empty(hw if with_intensity else 0, dtype=np.float32)
    index = np.empty(hw, dtype=np.int64)
    point_row = np.empty(n, dtype=np.int64)
    point_col = np.empty(n, dtype=np.int64)
    _organized_kernel(points, pix, int(width), float(min_range), rimg, ximg, iimg, index, point_row, point_col)
    return RangeImage(range=rimg.reshape(height, width), xyz=ximg.reshape(height, width, 3),
                      intensity=iimg.reshape(height, width) if with_intensity else None,
                      mask=(index >= 0).reshape(height, width), index=index.reshape(height, width),
                      point_row=point_row, point_col=point_col, config=None)


def fit_projection(organized: RangeImage, name: str = "fitted", **overrides: Any) -> RangeProjection:
    """Estimate a sensor's per-beam elevation and azimuth-offset tables from an organised scan.

    The result makes :func:`project_scan` reproduce the organised layout (rows and columns) for
    any later scan of the same sensor, including unorganised, cropped or merged ones.

    Args:
        organized: a range image from :func:`from_organized` (rows top to bottom, columns
            clockwise seen from above, as in Ouster scans).
        name: name of the returned projection.
        overrides: further :class:`RangeProjection` fields (for example ``min_range``).

    Raises:
        DataError: when the scan has too few returns, its beams are not separable by elevation,
            or its columns run counter-clockwise.
    """
    h, w = organized.shape
    m = organized.mask
    if m.sum() < 2 * h:
        raise DataError(f"fit_projection: only {int(m.sum())} returns in a {h} x {w} scan")
    rows, cols = np.nonzero(m)
    xyz = organized.xyz[m].astype(np.float64)
    elev = np.degrees(np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1])))
    yaw = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0]))
    cnt = np.bincount(rows, minlength=h)
    has = cnt > 0
    mean_el = np.bincount(rows, weights=elev, minlength=h)[has] / cnt[has]
    el = np.interp(np.arange(h), np.flatnonzero(has), mean_el) if has.sum() >= 2 else None
    if el is None or (h > 1 and not (np.diff(el) < 0).all()):
        raise DataError("fit_projection: the rows' mean elevations are not strictly decreasing "
                        "(is the scan organised, with row 0 the top beam?)")
    step = 360.0 / w
    # direction check: yaw must decrease from one column to the next within a row
    same = np.flatnonzero((rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1] + 1))
    if len(same):
        dyaw = np.median((yaw[same + 1] - yaw[same] + 180.0) % 360.0 - 180.0)
        if dyaw > 0:
            raise DataError("fit_projection: columns run counter-clockwise (yaw increases with the column); "
                            "reverse the column order first")
    raw = np.radians(yaw + (cols + 0.5) * step)  # = azimuth_start + row offset
    start = np.degrees(np.arctan2(np.sin(raw).mean(), np.cos(raw).mean()))
    res = np.radians(yaw + (cols + 0.5) * step - start)
    s = np.bincount(rows, weights=np.sin(res), minlength=h)
    c = np.bincount(rows, weights=np.cos(res), minlength=h)
    offsets = np.where(has, np.degrees(np.arctan2(s, c)), 0.0)
    fields: dict[str, Any] = {"elevations": tuple(np.round(el, 6).tolist()),
                              "azimuth_offsets": tuple(np.round(offsets, 6).tolist()),
                              "azimuth_start": float(start), "name": name}
    fields.update(overrides)
    return RangeProjection(h, w, **fields)


# ---------------------------------------------------------------------- back to points
def unproject(image: RangeImage, from_range: bool = False,
              directions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points of the non-empty pixels of a range image, in row-major pixel order.

    Args:
        image: the range image.
        from_range: rebuild xyz as ``range * direction`` of each pixel centre (for range images
            that were modified or predicted) instead of returning the stored xyz. Needs
            ``image.config`` or ``directions``.
        directions: optional (H, W, 3) unit vectors to use with ``from_range``.

    Returns:
        ``(xyz (M, 3) float32, index (M,) int64)``: the points and their index in the scan the
        range image was built from (-1 where unknown).
    """
    m = image.mask
    if not from_range:
        return image.xyz[m].copy(), image.index[m].copy()
    if directions is None:
        if image.config is None:
            raise DataError("unproject(from_range=True) needs the range image's projection config or directions")
        directions = image.config.pixel_directions()
    d = np.asarray(directions, dtype=np.float64)
    if d.shape != image.shape + (3,):
        raise DataError(f"directions must be (H, W, 3) = {image.shape + (3,)}, got {d.shape}")
    xyz = (image.range[m, None].astype(np.float64) * d[m]).astype(np.float32)
    return xyz, image.index[m].copy()

