"""Domains (weather and terrain style) and the camera's appearance model.

Colours are deliberately not separable by class: albedos of neighbouring classes overlap (dirt /
mud / logs / trunks, low grass / high grass / bushes / crowns, rocks / gravel / rubble / walls),
every instance gets its own colour shift, surfaces carry multi-scale procedural texture in
world coordinates, and light (sun with cast shadows, sky ambient, fog, sensor noise) changes
the rest. A per-pixel colour classifier therefore scores far below a model that sees shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from terraseg.sim.sensors import Headlights

# albedo (linear RGB 0..1), per-instance jitter, texture amplitude, texture scale (1/m)
_APPEARANCE: dict[str, tuple[tuple[float, float, float], float, float, float]] = {
    "void": ((0.0, 0.0, 0.0), 0.0, 0.0, 1.0),
    "sky": ((0.5, 0.6, 0.8), 0.0, 0.0, 1.0),
    "dirt": ((0.36, 0.27, 0.18), 0.05, 0.35, 3.0),
    "gravel": ((0.40, 0.37, 0.33), 0.04, 0.45, 9.0),
    "mud": ((0.27, 0.21, 0.15), 0.05, 0.30, 2.0),
    "low_grass": ((0.26, 0.36, 0.12), 0.06, 0.40, 4.0),
    "high_grass": ((0.34, 0.40, 0.16), 0.06, 0.50, 6.0),
    "bush": ((0.19, 0.30, 0.11), 0.07, 0.45, 5.0),
    "tree_trunk": ((0.28, 0.21, 0.15), 0.07, 0.40, 8.0),
    "tree_crown": ((0.17, 0.29, 0.10), 0.07, 0.50, 3.0),
    "log": ((0.31, 0.23, 0.16), 0.07, 0.40, 6.0),
    "rock": ((0.38, 0.36, 0.33), 0.07, 0.35, 2.5),
    "rubble": ((0.37, 0.33, 0.28), 0.05, 0.50, 7.0),
    "water": ((0.16, 0.20, 0.22), 0.03, 0.15, 0.8),
    "puddle": ((0.22, 0.21, 0.19), 0.03, 0.15, 1.5),
    "fence": ((0.42, 0.33, 0.22), 0.08, 0.25, 4.0),
    "pole": ((0.45, 0.43, 0.40), 0.08, 0.20, 4.0),
    "building": ((0.46, 0.40, 0.34), 0.10, 0.25, 1.5),
    "vehicle": ((0.35, 0.33, 0.30), 0.25, 0.10, 2.0),
    "person": ((0.30, 0.26, 0.22), 0.20, 0.25, 3.0),
}

# LiDAR reflectivity (0..1) by class
_REFLECTIVITY: dict[str, float] = {
    "void": 0.0, "sky": 0.0, "dirt": 0.30, "gravel": 0.38, "mud": 0.18, "low_grass": 0.45, "high_grass": 0.50,
    "bush": 0.42, "tree_trunk": 0.28, "tree_crown": 0.40, "log": 0.26, "rock": 0.35, "rubble": 0.33,
    "water": 0.04, "puddle": 0.06, "fence": 0.30, "pole": 0.55, "building": 0.45, "vehicle": 0.70, "person": 0.32,
}


# How smooth a water film a class holds when wet (0..1): puddles and mud mirror the sky, grass barely
_WET_FILM: dict[str, float] = {
    "void": 0.0, "sky": 0.0, "dirt": 0.55, "gravel": 0.45, "mud": 0.85, "low_grass": 0.12, "high_grass": 0.08,
    "bush": 0.05, "tree_trunk": 0.1, "tree_crown": 0.05, "log": 0.3, "rock": 0.5, "rubble": 0.35, "water": 1.0,
    "puddle": 1.0, "fence": 0.3, "pole": 0.4, "building": 0.5, "vehicle": 0.8, "person": 0.2,
}


def _class_table(values: dict[str, object]) -> list[object]:
    from terraseg.ontology import get_ontology

    onto = get_ontology("sim")
    return [values[c.name] for c in onto]


def appearance_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(albedo (C, 3), jitter (C,), texture amplitude (C,), texture scale (C,)) by sim class id."""
    rows = _class_table(_APPEARANCE)  # type: ignore[arg-type]
    return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
            np.array([r[3] for r in rows]))


def wet_film_table() -> np.ndarray:
    """(C,) how smooth a water film each sim class holds when wet (0..1)."""
    return np.array(_class_table(_WET_FILM), dtype=np.float64)  # type: ignore[arg-type]


def reflectivity_table() -> np.ndarray:
    return np.array(_class_table(_REFLECTIVITY), dtype=np.float64)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Weather:
    """Lighting and atmosphere of a domain, seen by the camera and by the LiDAR.

    Camera: a sun (``sun_color`` all zero: none, as at night or under fog, and no shadow pass),
    sky ambient, the sky's colours, exponential fog (``1 - exp(-t / fog_distance)`` of a surface
    ``t`` metres away is replaced by ``fog_color``), sensor noise and exposure. ``headlights``
    switches on the rig's lamps (:class:`terraseg.sim.sensors.Headlights`): spot lights with an
    inverse-square fall-off, added to the sun and sky light. ``wetness`` darkens every surface
    (by up to 35 %) and lets a water film on surfaces facing up mirror the sky with Schlick's
    Fresnel term (water, F0 = 0.02), strong at grazing angles, in proportion to how smooth a film
    the class holds (puddles and mud most, grass and leaves barely); ``rain_streaks`` draws
    drops falling in three layers 1.2, 2.5 and 5 m in front of the camera, each as the streak it
    covers during the exposure, blended with this opacity.

    LiDAR (see :mod:`terraseg.sim.atmosphere`): ``lidar_extinction`` (1/m) attenuates every return
    by the two-way transmission ``exp(-2 alpha r)`` and drops the returns whose link budget it
    exhausts; ``lidar_clutter`` is the probability that a ray left without a hard return reports
    the backscatter of the fog itself, ``min_range + Gamma(2, lidar_clutter_scale)`` metres away,
    labelled void. The defaults (0) leave the scan exactly as in clear air.
    """

    name: str
    sun_elevation_deg: float
    sun_azimuth_deg: float
    sun_color: tuple[float, float, float]
    ambient: tuple[float, float, float]
    sky_zenith: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    fog_distance: float              # metres at which fog reaches 63 %; inf = none
    fog_color: tuple[float, float, float]
    noise: float                     # sensor noise std in 0..1 units
    exposure: float
    clouds: float = 1.0              # brightness of the clouds in the sky (0: none, e.g. in fog)
    headlights: bool = False         # the rig's lamps are on
    lidar_extinction: float = 0.0    # 1/m, extinction coefficient of the air at the LiDAR's wavelength
    lidar_clutter: float = 0.0       # probability of a backscatter return on a ray without a hard return
    lidar_clutter_scale: float = 1.5  # metres, scale of the Gamma(2) backscatter range past min_range
    wetness: float = 0.0             # 0..1: wet surfaces, darker, the ground mirroring the sky
    rain_streaks: float = 0.0        # opacity of the streaks of falling drops in front of the camera (0: none)

    @property
    def has_sun(self) -> bool:
        """Whether there is direct sunlight (and so cast shadows)."""
        return any(c > 0 for c in self.sun_color)


WEATHERS: dict[str, Weather] = {
    "day": Weather("day", 48.0, 135.0, (1.05, 1.0, 0.92), (0.32, 0.36, 0.42), (0.30, 0.47, 0.80), (0.70, 0.78, 0.88),
                   600.0, (0.75, 0.80, 0.86), 0.018, 1.0),
    "dusk": Weather("dusk", 9.0, 250.0, (1.0, 0.62, 0.35), (0.16, 0.15, 0.20), (0.18, 0.20, 0.36), (0.86, 0.55, 0.38),
                    55.0, (0.55, 0.45, 0.42), 0.035, 1.25),
    # moonless night: faint blue sky glow, no sun, the vehicle's headlights; a longer exposure and
    # a higher gain (more noise). The LiDAR, an active sensor, sees exactly what it sees by day.
    "night": Weather("night", -30.0, 0.0, (0.0, 0.0, 0.0), (0.012, 0.014, 0.024), (0.004, 0.005, 0.010),
                     (0.012, 0.014, 0.022), 400.0, (0.010, 0.011, 0.016), 0.03, 2.4, clouds=0.0, headlights=True),
    # dense daytime fog: overcast (no direct sun), bright diffuse light, 63 % fog at 18 m (visual
    # range about 3 x 18 m); at 905 nm the droplets attenuate the LiDAR almost as much
    # (0.05 / m), and 3 % of the rays without a hard return see the fog's own backscatter.
    "fog": Weather("fog", 40.0, 135.0, (0.0, 0.0, 0.0), (0.50, 0.52, 0.55), (0.62, 0.64, 0.67), (0.60, 0.62, 0.65),
                   18.0, (0.60, 0.62, 0.65), 0.02, 1.0, clouds=0.0, lidar_extinction=0.05, lidar_clutter=0.03,
                   lidar_clutter_scale=1.5),
    # heavy rain: overcast, haze at 140 m, wet ground mirroring the sky, streaks of falling drops;
    # the LiDAR loses a little range (0.004 / m) and sees a few drops close by (0.5 % of free rays)
    "rain": Weather("rain", 40.0, 135.0, (0.0, 0.0, 0.0), (0.30, 0.32, 0.36), (0.40, 0.42, 0.46), (0.56, 0.58, 0.62),
                    140.0, (0.50, 0.52, 0.55), 0.025, 1.1, clouds=0.0, lidar_extinction=0.004, lidar_clutter=0.005,
                    lidar_clutter_scale=2.0, wetness=1.0, rain_streaks=0.3),
}


@dataclass(frozen=True)
class Domain:
    """A named simulation domain: terrain style x weather (e.g. ``forest-dusk``)."""

    name: str
    terrain: str
    weather: Weather


def list_domains() -> list[str]:
    """Names of the built-in domains."""
    from terraseg.sim.world import TERRAIN_STYLES

    return [f"{t}-{w}" for t in TERRAIN_STYLES for w in WEATHERS]


def get_domain(name: str) -> Domain:
    """A domain by name: ``<terrain>-<weather>`` (``forest-day``, ``meadow-night``, ``forest-fog``, ...;
    :func:`list_domains`)."""
    from terraseg.errors import ConfigError
    from terraseg.sim.world import TERRAIN_STYLES

    terrain, _, weather = name.partition("-")
    if terrain not in TERRAIN_STYLES or weather not in WEATHERS:
        raise ConfigError(f"unknown simulator domain {name!r} (available: {', '.join(list_domains())})")
    return Domain(name, terrain, WEATHERS[weather])


# ---------------------------------------------------------------------------- texture
@numba.njit(cache=True, inline="always")
def _hash3(ix, iy, iz, seed):  # type: ignore[no-untyped-def]
    h = (ix * 374761393 + iy * 668265263 + iz * 1274126177 + seed * 1442695041) & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    return ((h ^ (h >> 16)) & 0xFFFF) / 32767.5 - 1.0


@numba.njit(cache=True, inline="always")
def _value_noise2(x, y, seed):  # type: ignore[no-untyped-def]
    ix, iy = int(np.floor(x)), int(np.floor(y))
    fx, fy = x - ix, y - iy
    fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    a = _hash3(ix, iy, 0, seed)
    b = _hash3(ix + 1, iy, 0, seed)
    c = _hash3(ix, iy + 1, 0, seed)
    d = _hash3(ix + 1, iy + 1, 0, seed)
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


@numba.njit(cache=True, inline="always")
def _surface_noise(px, py, pz, nx, ny, nz, s, seed):  # type: ignore[no-untyped-def]
    """Two octaves of 2-D value noise in the plane facing the dominant normal axis."""
    ax, ay, az = abs(nx), abs(ny), abs(nz)
    if az >= ax and az >= ay:
        u, v = px, py
    elif ax >= ay:
        u, v = py, pz
    else:
        u, v = px, pz
    return 0.6 * _value_noise2(u * s, v * s, seed) + 0.4 * _value_noise2(u * s * 3.7, v * s * 3.7, seed + 31)


@numba.njit(cache=True, parallel=True)
def _shade(t, cls, inst, normal, dirs, cam, shadow, albedo, jitter, tex_amp, tex_scale, sun, sun_col, ambient,
           sky_zen, sky_hor, fog_dist, fog_col, exposure, noise, seed, clouds, lamps, lamp_i, cone, lamp_col,
           wetness, film, rain, width, focal, out):  # type: ignore[no-untyped-def]
    n = t.shape[0]
    n_lamps = lamps.shape[0]
    gamma_lut = (np.arange(4097) / 4096.0) ** (1.0 / 2.2) * 255.0 + 0.5
    gamma_lut = gamma_lut.astype(np.uint8)
    for i in numba.prange(n):
        rgb = np.empty(3)
        dx, dy, dz = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        if not t[i] < np.inf:
            # sky: gradient with elevation, glow around the sun, soft clouds
            e = max(dz, 0.0)
            g = np.sqrt(e)
            cs = dx * sun[0] + dy * sun[1] + dz * sun[2]
            glow = max(cs, 0.0) ** 32 * 0.6
            cloud = 0.0
            if clouds > 0.0:
                cl = _value_noise2(dx / (dz + 0.15) * 2.5, dy / (dz + 0.15) * 2.5, 7)
                cloud = max(cl, 0.0) * 0.35 * min(1.0, dz * 4 + 0.2) * clouds
            for c in range(3):
                rgb[c] = (sky_hor[c] * (1 - g) + sky_zen[c] * g + glow * sun_col[c] + cloud) * exposure
            if rain > 0.0:
                _rain_streaks(rgb, i, np.inf, width, focal, rain, sky_hor, exposure, seed)
            _finish(rgb, i, noise, seed, gamma_lut, out)
            continue
        k = cls[i]
        px, py, pz = cam[0] + t[i] * dx, cam[1] + t[i] * dy, cam[2] + t[i] * dz
        s = tex_scale[k]
        tex = _surface_noise(px, py, pz, normal[i, 0], normal[i, 1], normal[i, 2], s, k)
        # large-scale colour drift over the terrain (shared by classes: blurs class boundaries)
        drift = _value_noise2(px * 0.08, py * 0.08, 99)
        j0 = _hash3(inst[i], 1, 2, 3) * jitter[k]
        j1 = _hash3(inst[i], 5, 7, 11) * jitter[k]
        j2 = _hash3(inst[i], 13, 17, 19) * jitter[k]
        nx, ny, nz = normal[i, 0], normal[i, 1], normal[i, 2]
        lam = max(nx * sun[0] + ny * sun[1] + nz * sun[2], 0.0) * shadow[i]
        sky_term = 0.55 + 0.45 * nz
        fog = 1.0 - np.exp(-t[i] / fog_dist)
        # headlights: spot lights with inverse-square fall-off (no shadows)
        head = 0.0
        for m in range(n_lamps):
            lx, ly, lz = px - lamps[m, 0], py - lamps[m, 1], pz - lamps[m, 2]
            fwd = lx * lamps[m, 3] + ly * lamps[m, 4] + lz * lamps[m, 5]
            if fwd <= 0.0:
                continue
            inc = -(nx * lx + ny * ly + nz * lz)  # cosine of incidence on the surface, times d
            if inc <= 0.0:
                continue
            th = abs(lx * lamps[m, 6] + ly * lamps[m, 7] + lz * lamps[m, 8]) / fwd
            tv = (lx * lamps[m, 9] + ly * lamps[m, 10] + lz * lamps[m, 11]) / fwd
            sh = _smooth_edge(th, cone[0], cone[1])
            sv = _smooth_edge(tv, cone[2], cone[3]) if tv >= 0.0 else _smooth_edge(-tv, cone[4], cone[5])
            if sh * sv <= 0.0:
                continue
            d2 = lx * lx + ly * ly + lz * lz
            head += lamp_i * sh * sv * inc / np.sqrt(d2) / max(d2, 1.0)
        # wet surfaces: darker, and a water film on the ground mirrors the sky (Schlick's Fresnel
        # term, water F0 = 0.02: strong at the grazing angles of the trail ahead)
        sheen = 0.0
        gs = 0.0
        if wetness > 0.0 and nz > 0.5:
            cv = min(max(-(dx * nx + dy * ny + dz * nz), 0.0), 1.0)
            sheen = wetness * film[k] * (nz - 0.5) * 2.0 * (0.02 + 0.98 * (1.0 - cv) ** 5)
            rz = dz + 2.0 * cv * nz  # z of the mirrored view ray
            gs = np.sqrt(min(max(rz, 0.0), 1.0))
        for c in range(3):
            jc = j0 if c == 0 else (j1 if c == 1 else j2)
            a = albedo[k, c] * (1.0 + tex_amp[k] * tex + 0.18 * drift) + jc
            a = max(a, 0.0)
            if n_lamps > 0:
                v = a * (ambient[c] * sky_term + sun_col[c] * lam + head * lamp_col[c])
            else:
                v = a * (ambient[c] * sky_term + sun_col[c] * lam)
            if wetness > 0.0:
                v = v * (1.0 - 0.35 * wetness) * (1.0 - sheen) + sheen * (sky_hor[c] * (1 - gs) + sky_zen[c] * gs)
            v = v * (1 - fog) + fog_col[c] * fog
            rgb[c] = v * exposure
        if rain > 0.0:
            _rain_streaks(rgb, i, t[i], width, focal, rain, sky_hor, exposure, seed)
        _finish(rgb, i, noise, seed, gamma_lut, out)


# rain drops: layers (distance from the camera, metres); drops 0.25 m apart across the view, each
# drawn as the 0.13 m streak it falls during the exposure (8 m/s over 1/60 s), 1 px wide or more
_RAIN_LAYERS = (1.2, 2.5, 5.0)


@numba.njit(cache=True, inline="always")
def _rain_streaks(rgb, i, t, width, focal, opacity, col, exposure, seed):  # type: ignore[no-untyped-def]
    """Blend the streaks of falling drops in front of the surface (``t`` m away) into ``rgb``: a
    drop refracts the bright sky behind it; nearer layers are sparser on screen and longer."""
    v, u = divmod(i, width)
    for li in range(len(_RAIN_LAYERS)):
        z = _RAIN_LAYERS[li]
        if z >= t:
            break
        spacing = focal * 0.25 / z   # pixels between drop columns
        length = focal * 0.13 / z    # streak length, pixels
        half_w = max(0.5, focal * 0.003 / z)
        col_i = int(np.floor(u / spacing))
        x_d = (col_i + 0.5 + 0.4 * _hash3(col_i, li, 3, seed)) * spacing
        if abs(u + 0.5 - x_d) > half_w:
            continue
        cell = 4.0 * length           # a drop per 4 streak lengths down the column
        shift = (0.5 + 0.5 * _hash3(col_i, li, 5, seed)) * cell
        row_i = int(np.floor((v + 0.5 + shift) / cell))
        y0 = (0.5 + 0.5 * _hash3(col_i, row_i, li + 11, seed)) * (cell - length)
        pos = v + 0.5 + shift - row_i * cell - y0
        if pos < 0.0 or pos > length:
            continue
        a = opacity * (0.6 + 0.4 * (z / _RAIN_LAYERS[-1]))
        for c in range(3):
            rgb[c] = rgb[c] * (1.0 - a) + a * min(col[c] * 1.25, 1.0) * exposure


@numba.njit(cache=True, inline="always")
def _smooth_edge(x, inner, outer):  # type: ignore[no-untyped-def]
    """1 below ``inner``, 0 above ``outer``, smoothstep between."""
    if x <= inner:
        return 1.0
    if x >= outer:
        return 0.0
    s = (outer - x) / (outer - inner)
    return s * s * (3.0 - 2.0 * s)


@numba.njit(cache=True, inline="always")
def _finish(rgb, i, noise, seed, gamma_lut, out):  # type: ignore[no-untyped-def]
    """Sensor noise (hashed, uniform with the given standard deviation), display gamma, 8-bit."""
    n = gamma_lut.shape[0] - 1
    for c in range(3):
        v = rgb[c] + noise * 1.7320508 * _hash3(i, c, 1, seed)
        v = min(max(v, 0.0), 1.0)
        out[i, c] = gamma_lut[int(v * n + 0.5)]


def shade(t: np.ndarray, cls: np.ndarray, inst: np.ndarray, normal: np.ndarray, dirs: np.ndarray, cam: np.ndarray,
          shadow: np.ndarray, weather: Weather, rng: np.random.Generator, size: tuple[int, int],
          lamps: np.ndarray | None = None, headlights: Headlights | None = None, focal: float = 1.0) -> np.ndarray:
    """The RGB image (H, W, 3) uint8 from per-pixel hits (see :mod:`terraseg.sim.raster`).

    ``lamps`` (L, 12): world positions and beam frames of the lit headlights
    (:meth:`~terraseg.sim.sensors.Headlights.world`), with their photometry in ``headlights``;
    None when the lamps are off. ``focal``: the camera's focal length in pixels (rain streaks).
    """
    albedo, jitter, amp, scale = appearance_tables()
    sun = sun_direction(weather)
    out = np.empty((len(t), 3), np.uint8)
    if lamps is None or headlights is None:
        lamps, lamp_i, cone, lamp_col = np.zeros((0, 12)), 0.0, np.ones(6), np.ones(3)
    else:
        lamp_i, lamp_col = float(headlights.intensity), np.array(headlights.color, dtype=np.float64)
        cone = headlights.cone_tangents()
    _shade(t.astype(np.float64), cls, inst, normal.astype(np.float64), dirs, cam, shadow.astype(np.float64), albedo,
           jitter, amp, scale, sun, np.array(weather.sun_color), np.array(weather.ambient),
           np.array(weather.sky_zenith), np.array(weather.sky_horizon), float(weather.fog_distance),
           np.array(weather.fog_color), float(weather.exposure), float(weather.noise),
           int(rng.integers(0, 2**31 - 1)), float(weather.clouds), np.ascontiguousarray(lamps, dtype=np.float64),
           lamp_i, cone, lamp_col, float(weather.wetness), wet_film_table(), float(weather.rain_streaks), int(size[0]), float(focal), out)
    w, h = size
    return out.reshape(h, w, 3)


def sun_direction(weather: Weather) -> np.ndarray:
    """Unit vector towards the sun in the world frame (x east, y north, z up)."""
    el, az = np.radians(weather.sun_elevation_deg), np.radians(weather.sun_azimuth_deg)
    return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
