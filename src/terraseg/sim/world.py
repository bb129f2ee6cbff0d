"""Procedural off-road worlds: a height field with a trail, ground classes and object primitives.

World frame: x east, y north, z up, metres. A :class:`World` holds

- ``surface``: (H, W) float32 height of the visible surface (terrain, plus grass height where
  high grass grows, or the water level over ponds), sampled every ``res`` metres from
  ``(x0, y0)``; ``ground``: (H, W) uint8 simulator class of that surface;
- primitives (ellipsoids, capsules, yawed boxes) for trees, bushes, rocks, logs, fences, poles,
  buildings, vehicles and people, with a class id, an instance id and a 2-D grid index for
  ray casting;
- the trail centre line (used to drive the vehicle).

Everything is generated from a seed with numpy's ``default_rng``, so a world is reproducible
bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from terraseg.errors import ConfigError
from terraseg.ontology import get_ontology

ONTOLOGY = "sim"
_SIM = None


def sim_class(name: str) -> int:
    """Id of a simulator class by name."""
    global _SIM
    if _SIM is None:
        _SIM = get_ontology(ONTOLOGY)
    return _SIM.id_of(name)


# primitive kinds
ELLIPSOID, CAPSULE, BOX = 0, 1, 2


@dataclass(frozen=True)
class TerrainStyle:
    """How a world looks in the large: relief, trail surface and what grows or stands where."""

    name: str
    relief: float            # height amplitude of the rolling terrain, m
    slope: float             # mean gradient across the world, m/m
    trail_class: str         # dirt or gravel
    trail_width: float       # m
    tree_density: float      # trees per 100 m^2 away from the trail
    bush_density: float
    rock_density: float
    high_grass_cover: float  # fraction of off-trail ground with high grass
    man_made: float          # multiplier on fences / poles / buildings


TERRAIN_STYLES: dict[str, TerrainStyle] = {
    "forest": TerrainStyle("forest", relief=3.0, slope=0.02, trail_class="dirt", trail_width=3.0,
                           tree_density=2.2, bush_density=1.6, rock_density=0.5, high_grass_cover=0.25, man_made=0.6),
    "meadow": TerrainStyle("meadow", relief=1.5, slope=0.04, trail_class="gravel", trail_width=4.2,
                           tree_density=0.35, bush_density=0.8, rock_density=0.9, high_grass_cover=0.45, man_made=1.4),
}


@dataclass
class World:
    """A generated world (see the module docstring for the frames and arrays)."""

    seed: int
    style: TerrainStyle
    x0: float
    y0: float
    res: float
    surface: np.ndarray       # (H, W) float32
    ground: np.ndarray        # (H, W) uint8 sim class ids
    ground_inst: np.ndarray   # (H, W) int32 instance id of ground patches (0 = none)
    prim_kind: np.ndarray     # (P,) int8
    prim_params: np.ndarray   # (P, 8) float64, meaning depends on kind (see _add_*)
    prim_class: np.ndarray    # (P,) uint8
    prim_inst: np.ndarray     # (P,) int32
    trail: np.ndarray         # (T, 2) centre line, ~0.5 m spacing
    trail_s: np.ndarray       # (T,) arc length, m
    cell_size: float = 8.0
    cell_start: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    cell_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cell_zmax: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    grid_shape: tuple[int, int] = (0, 0)
    zmax: float = 0.0

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) of the height field, metres."""
        h, w = self.surface.shape
        return self.x0, self.x0 + (w - 1) * self.res, self.y0, self.y0 + (h - 1) * self.res

    def height_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Bilinear surface height at world (x, y) (clamped to the field)."""
        h, w = self.surface.shape
        fx = np.clip((np.asarray(x) - self.x0) / self.res, 0, w - 1.001)
        fy = np.clip((np.asarray(y) - self.y0) / self.res, 0, h - 1.001)
        ix, iy = fx.astype(int), fy.astype(int)
        ax, ay = fx - ix, fy - iy
        s = self.surface
        top = s[iy, ix] * (1 - ax) + s[iy, ix + 1] * ax
        bot = s[iy + 1, ix] * (1 - ax) + s[iy + 1, ix + 1] * ax
        return top * (1 - ay) + bot * ay

    @property
    def num_primitives(self) -> int:
        return len(self.prim_kind)


# ---------------------------------------------------------------------------- noise
def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_cells: float, octaves: int = 4,
                 persistence: float = 0.5) -> np.ndarray:
    """Fractal value noise in about [-1, 1]: bilinearly upsampled random grids, octave sum."""
    h, w = shape
    out = np.zeros(shape, np.float64)
    amp, total = 1.0, 0.0
    cells = scale_cells
    for _ in range(octaves):
        gh, gw = int(np.ceil(h / cells)) + 2, int(np.ceil(w / cells)) + 2
        g = rng.uniform(-1, 1, (gh, gw))
        yy = np.arange(h) / cells
        xx = np.arange(w) / cells
        iy, ix = yy.astype(int), xx.astype(int)
        ty, tx = (yy - iy)[:, None], (xx - ix)[None, :]
        ty, tx = ty * ty * (3 - 2 * ty), tx * tx * (3 - 2 * tx)  # smoothstep
        a = g[iy][:, ix]
        b = g[iy][:, ix + 1]
        c = g[iy + 1][:, ix]
        d = g[iy + 1][:, ix + 1]
        out += amp * ((a * (1 - tx) + b * tx) * (1 - ty) + (c * (1 - tx) + d * tx) * ty)
        total += amp
        amp *= persistence
        cells = max(cells / 2, 1.0)
    return out / total


# ---------------------------------------------------------------------------- generation
def generate_world(seed: int = 0, style: str | TerrainStyle = "forest", size: float = 160.0,
                   res: float = 0.25, landmark_spacing: float | None = 55.0) -> World:
    """Generate a world of ``size`` x ``size`` metres centred on the origin.

    The trail runs roughly west to east through the middle. Its first 70 m (from the west end,
    where vehicles start) are guaranteed to pass at least one instance of every class, and so is
    every further ``landmark_spacing`` metres of it (a block of landmarks starts every
    ``landmark_spacing`` m along the trail), so that a drive of any length along it sees every
    class again and again. ``landmark_spacing=None`` places the block once, at the start only.
    """
    if landmark_spacing is not None and landmark_spacing < 20.0:
        raise ConfigError(f"landmark_spacing must be at least 20 m (got {landmark_spacing})")
    st = TERRAIN_STYLES[style] if isinstance(style, str) else style
    rng = np.random.default_rng(seed)
    n = int(round(size / res)) + 1
    x0 = y0 = -size / 2
    xs = x0 + np.arange(n) * res
    ys = y0 + np.arange(n) * res
    X, Y = np.meshgrid(xs, ys)

    # --- relief: rolling hills + a tilt
    relief = st.relief * smooth_noise(rng, (n, n), 40 / res, octaves=5)
    tilt_dir = rng.uniform(0, 2 * np.pi)
    terrain = relief + st.slope * (X * np.cos(tilt_dir) + Y * np.sin(tilt_dir))

    # --- trail centre line: west -> east, meandering
    tx = np.arange(x0 + 6, -x0 - 6, 0.5)
    phase = rng.uniform(0, 2 * np.pi, 3)
    amps = rng.uniform([6, 2, 0.5], [12, 5, 1.5])
    freqs = np.array([2 * np.pi / 140, 2 * np.pi / 45, 2 * np.pi / 17])
    ty = sum(a * np.sin(f * tx + p) for a, f, p in zip(amps, freqs, phase))
    trail = np.stack([tx, ty], axis=1)
    seg = np.linalg.norm(np.diff(trail, axis=0), axis=1)
    trail_s = np.concatenate([[0.0], np.cumsum(seg)])

    # signed lateral distance of every cell to the trail and the arc length at its foot point
    dist, foot_s, side = _trail_distance(X, Y, trail, trail_s)
    half = st.trail_width / 2
    on_trail = dist < half
    # flatten the trail to a smoothed profile along its length, blend into the terrain
    trail_h = np.interp(trail_s, trail_s, _smooth1d(_sample(terrain, trail, x0, y0, res), 40))
    prof = np.interp(foot_s, trail_s, trail_h)
    blend = np.clip((dist - half) / 3.0, 0, 1)
    blend = blend * blend * (3 - 2 * blend)
    terrain = prof * (1 - blend) + terrain * blend
    # ruts: two grooves 0.75 m either side of the centre
    rut = np.exp(-((np.abs(side) - 0.75) / 0.18) ** 2) * on_trail
    terrain -= 0.07 * rut
    # small-scale roughness everywhere, less on the trail
    terrain += 0.04 * smooth_noise(rng, (n, n), 2 / res, octaves=3) * (0.4 + 0.6 * (~on_trail))

    ground = np.full((n, n), sim_class("low_grass"), np.uint8)
    ground_inst = np.zeros((n, n), np.int32)
    ground[on_trail] = sim_class(st.trail_class)
    # bare dirt margins along a gravel road, dirt patches off-trail
    if st.trail_class == "gravel":
        ground[(dist >= half) & (dist < half + 0.6)] = sim_class("dirt")
    dirt_noise = smooth_noise(rng, (n, n), 12 / res, octaves=3)
    ground[(~on_trail) & (dirt_noise > 0.55)] = sim_class("dirt")

    # high grass: noise patches away from the trail (surface raised by the grass height)
    hg_noise = smooth_noise(rng, (n, n), 10 / res, octaves=3)
    hg_thresh = np.quantile(hg_noise, 1 - st.high_grass_cover)
    high_grass = (hg_noise > hg_thresh) & (dist > half + 1.5)
    grass_h = (0.55 + 0.25 * smooth_noise(rng, (n, n), 1.0 / res, octaves=2)) * high_grass
    ground[high_grass] = sim_class("high_grass")

    inst_counter = [1]
    wobble = 0.15 * smooth_noise(rng, (n, n), 1.5 / res, octaves=2)  # ragged patch outlines
    bumps = np.abs(smooth_noise(rng, (n, n), 0.8 / res, octaves=2))  # rubble relief

    def next_inst() -> int:
        inst_counter[0] += 1
        return inst_counter[0]

    def stamp_patch(cx: float, cy: float, rx: float, ry: float, cls: str, rot: float,
                    depth: float = 0.0, flat: bool = False) -> np.ndarray:
        """Mark an elliptical ground patch; returns its cell mask."""
        c, s = np.cos(rot), np.sin(rot)
        u = ((X - cx) * c + (Y - cy) * s) / rx
        v = (-(X - cx) * s + (Y - cy) * c) / ry
        m = (u * u + v * v) < (1.0 + wobble)
        if not m.any():
            return m
        ground[m] = sim_class(cls)
        ground_inst[m] = next_inst()
        grass_h[m] = 0.0
        if flat:
            level = float(np.min(terrain[m])) - depth
            terrain[m] = level
        elif depth:
            terrain[m] -= depth * np.clip(1 - (u[m] ** 2 + v[m] ** 2), 0, 1)
        return m

    def trail_point(s: float) -> tuple[float, float, float]:
        i = int(np.clip(np.searchsorted(trail_s, s), 1, len(trail_s) - 1))
        d = trail[i] - trail[i - 1]
        return float(trail[i, 0]), float(trail[i, 1]), float(np.arctan2(d[1], d[0]))

    # start (m along the trail) of every block of guaranteed landmarks
    s_end = float(trail_s[-1]) - 5.0
    blocks = [0.0] if landmark_spacing is None else list(np.arange(0.0, s_end - 30.0, landmark_spacing)) or [0.0]

    def in_block(b: float, lo: float, hi: float) -> float:
        """A random arc length in [b + lo, b + hi], kept on the trail."""
        return float(min(rng.uniform(b + lo, b + hi), s_end))

    # mud and puddles on the trail (guaranteed in every block), rubble beside it
    patch_s = [in_block(b, 8, 60) for b in blocks for _ in range(2)]
    for k, s in enumerate(patch_s + list(rng.uniform(60, trail_s[-1] - 10, 6))):
        x, y, yaw = trail_point(float(s))
        if k % 2 == 0:
            stamp_patch(x, y, rng.uniform(1.5, 3.0), rng.uniform(0.8, 1.4), "mud", yaw, depth=0.05)
        else:
            stamp_patch(x + rng.uniform(-0.6, 0.6), y, rng.uniform(0.6, 1.4), rng.uniform(0.4, 0.8), "puddle", yaw,
                        depth=0.02, flat=True)
    for s in [in_block(b, 15, 60) for b in blocks] + list(rng.uniform(60, trail_s[-1] - 10, 4)):
        x, y, yaw = trail_point(float(s))
        off = rng.choice([-1, 1]) * (half + rng.uniform(1.5, 4))
        m = stamp_patch(x - off * np.sin(yaw), y + off * np.cos(yaw), rng.uniform(1.5, 3), rng.uniform(1, 2), "rubble",
                        rng.uniform(0, np.pi))
        terrain[m] += 0.12 * bumps[m]

    # a pond in every block (in view from the trail) and one more further away
    ponds = [(in_block(b, 25, 55), (6.0, 10.0)) for b in blocks] + [(rng.uniform(70, trail_s[-1] - 20), (8.0, 18.0))]
    for s, (lo, hi) in ponds:
        x, y, yaw = trail_point(float(s))
        off = rng.choice([-1, 1]) * (half + rng.uniform(lo, hi))
        cx, cy = x - off * np.sin(yaw), y + off * np.cos(yaw)
        r = rng.uniform(4, 7)
        d2 = ((X - cx) ** 2 + (Y - cy) ** 2) / (r * r)
        bowl = np.clip(1 - d2, 0, None)
        terrain -= 1.2 * bowl
        level = float(np.quantile(terrain[d2 < 1.2], 0.35))
        water = (terrain < level) & (d2 < 1.5)
        ground[water] = sim_class("water")
        ground_inst[water] = next_inst()
        grass_h[water] = 0.0
        terrain[water] = level


    # --- objects
    kinds: list[int] = []
    params: list[list[float]] = []
    classes: list[int] = []
    insts: list[int] = []

    def add(kind: int, p: list[float], cls: str, inst: int) -> None:
        kinds.append(kind)
        params.append(p + [0.0] * (8 - len(p)))
        classes.append(sim_class(cls))
        insts.append(inst)

    def hgt(x: float, y: float) -> float:
        fx = int(np.clip((x - x0) / res, 0, n - 1))
        fy = int(np.clip((y - y0) / res, 0, n - 1))
        return float(terrain[fy, fx])

    def free(x: float, y: float, clearance: float) -> bool:
        fx = int(np.clip((x - x0) / res, 0, n - 1))
        fy = int(np.clip((y - y0) / res, 0, n - 1))
        g = ground[fy, fx]
        return dist[fy, fx] > half + clearance and g not in (sim_class("water"), sim_class("puddle"))

    def add_tree(x: float, y: float) -> None:
        z = hgt(x, y)
        h = rng.uniform(3, 7)
        r = rng.uniform(0.12, 0.3)
        inst = next_inst()
        add(CAPSULE, [x, y, z - 0.3, x + rng.normal(0, 0.08), y + rng.normal(0, 0.08), z + h, r], "tree_trunk", inst)
        cr = rng.uniform(1.4, 2.8)
        add(ELLIPSOID, [x, y, z + h + cr * 0.35, cr, cr * rng.uniform(0.8, 1.2), cr * rng.uniform(0.9, 1.4),
                        rng.uniform(0, np.pi)], "tree_crown", inst)

    def add_bush(x: float, y: float) -> None:
        z = hgt(x, y)
        r = rng.uniform(0.5, 1.3)
        add(ELLIPSOID, [x, y, z + r * 0.45, r, r * rng.uniform(0.7, 1.2), r * rng.uniform(0.55, 0.8),
                        rng.uniform(0, np.pi)], "bush", next_inst())

    def add_rock(x: float, y: float) -> None:
        z = hgt(x, y)
        r = rng.uniform(0.25, 0.9)
        add(ELLIPSOID, [x, y, z + r * 0.2, r, r * rng.uniform(0.6, 1.0), r * rng.uniform(0.45, 0.75),
                        rng.uniform(0, np.pi)], "rock", next_inst())

    def add_log(x: float, y: float) -> None:
        yaw = rng.uniform(0, np.pi)
        L = rng.uniform(2.5, 5.5)
        r = rng.uniform(0.15, 0.3)
        dx, dy = np.cos(yaw) * L / 2, np.sin(yaw) * L / 2
        za, zb = hgt(x - dx, y - dy), hgt(x + dx, y + dy)
        add(CAPSULE, [x - dx, y - dy, za + r * 0.8, x + dx, y + dy, zb + r * 0.8, r], "log", next_inst())

    def add_pole(x: float, y: float) -> None:
        z = hgt(x, y)
        add(CAPSULE, [x, y, z - 0.2, x, y, z + rng.uniform(4, 8), rng.uniform(0.08, 0.14)], "pole", next_inst())

    def add_fence(x: float, y: float, yaw: float) -> None:
        L = rng.uniform(8, 20)
        inst = next_inst()
        npost = int(L / 2.5) + 1
        c, s = np.cos(yaw), np.sin(yaw)
        for k in range(npost):
            px, py = x + (k * 2.5 - L / 2) * c, y + (k * 2.5 - L / 2) * s
            z = hgt(px, py)
            add(CAPSULE, [px, py, z - 0.1, px, py, z + 1.3, 0.07], "fence", inst)
        zc = hgt(x, y)
        for hz in (0.45, 1.0):
            add(BOX, [x, y, zc + hz, L / 2, 0.03, 0.08, yaw], "fence", inst)

    def add_building(x: float, y: float, yaw: float) -> None:
        hx, hy, hz = rng.uniform(3, 6), rng.uniform(2.5, 5), rng.uniform(2.5, 4.5)
        stamp_patch(x, y, hx + 4.0, hy + 3.0, "gravel", yaw)  # a gravel yard around it
        z = min(hgt(x + a * hx, y + b * hy) for a in (-1, 1) for b in (-1, 1))
        inst = next_inst()
        add(BOX, [x, y, z + hz - 0.3, hx, hy, hz, yaw], "building", inst)
        add(BOX, [x, y, z + 2 * hz - 0.3 + 0.6, hx + 0.4, hy + 0.4, 0.6, yaw], "building", inst)  # roof slab

    def add_vehicle(x: float, y: float, yaw: float) -> None:
        z = hgt(x, y)
        inst = next_inst()
        add(BOX, [x, y, z + 0.75, 2.2, 0.95, 0.45, yaw], "vehicle", inst)
        add(BOX, [x - 0.3 * np.cos(yaw), y - 0.3 * np.sin(yaw), z + 1.45, 1.2, 0.85, 0.35, yaw], "vehicle", inst)
        for a in (-1.4, 1.4):
            for b in (-0.95, 0.95):
                wx = x + a * np.cos(yaw) - b * np.sin(yaw)
                wy = y + a * np.sin(yaw) + b * np.cos(yaw)
                add(ELLIPSOID, [wx, wy, z + 0.38, 0.38, 0.18, 0.38, yaw], "vehicle", inst)

    def add_person(x: float, y: float) -> None:
        z = hgt(x, y)
        h = rng.uniform(1.55, 1.9)
        inst = next_inst()
        add(CAPSULE, [x, y, z + 0.25, x, y, z + h - 0.45, 0.2], "person", inst)
        add(ELLIPSOID, [x, y, z + h - 0.12, 0.12, 0.12, 0.14, 0.0], "person", inst)

    def beside(s: float, lo: float, hi: float) -> tuple[float, float, float]:
        x, y, yaw = trail_point(s)
        off = rng.choice([-1, 1]) * (half + rng.uniform(lo, hi))
        return x - off * np.sin(yaw), y + off * np.cos(yaw), yaw

    placers = {"tree": lambda x, y, yaw: add_tree(x, y), "bush": lambda x, y, yaw: add_bush(x, y),
               "rock": lambda x, y, yaw: add_rock(x, y), "log": lambda x, y, yaw: add_log(x, y),
               "pole": lambda x, y, yaw: add_pole(x, y), "fence": add_fence,
               "building": lambda x, y, yaw: add_building(x, y, yaw + rng.uniform(-0.3, 0.3)),
               "vehicle": lambda x, y, yaw: add_vehicle(x, y, yaw + rng.uniform(-0.4, 0.4)),
               "person": lambda x, y, yaw: add_person(x, y)}

    # guaranteed instances in every block (each within ~60 m of the block's start)
    for b in blocks:
        for s_lo, s_hi, kind, lo, hi in (
            (5, 25, "tree", 2, 6), (10, 30, "bush", 1, 4), (10, 40, "rock", 1, 4), (15, 45, "log", 1.5, 4),
            (20, 50, "pole", 1, 3), (20, 50, "fence", 3, 6), (30, 60, "building", 8, 14), (15, 45, "vehicle", 3, 6),
            (10, 40, "person", 1.5, 4),
        ):
            for _ in range(2 if kind in ("tree", "bush", "rock", "person") else 1):
                placers[kind](*beside(in_block(b, s_lo, s_hi), lo, hi))

    # scattered vegetation and rocks over the whole world
    area = size * size / 100.0
    for fn, dens, clear in ((add_tree, st.tree_density, 2.0), (add_bush, st.bush_density, 1.0),
                            (add_rock, st.rock_density, 0.8)):
        for _ in range(int(dens * area)):
            x, y = rng.uniform(x0 + 2, -x0 - 2, 2)
            if free(x, y, clear):
                fn(x, y)
    for _ in range(int(0.02 * area)):
        x, y = rng.uniform(x0 + 2, -x0 - 2, 2)
        if free(x, y, 1.5):
            add_log(x, y)
    # more man-made objects along the rest of the trail
    for _ in range(int(3 * st.man_made)):
        s = float(rng.uniform(60, trail_s[-1] - 10))
        kind = str(rng.choice(["pole", "fence", "building", "vehicle", "person"]))
        placers[kind](*beside(s, 2, 10 if kind == "building" else 5))

    # soften grass edges and blades (about 0.5 m) so the surface slope stays bounded for ray marching
    from scipy.ndimage import gaussian_filter

    surface = (terrain + gaussian_filter(grass_h, 0.5 / res)).astype(np.float32)

    world = World(seed=seed, style=st, x0=x0, y0=y0, res=res, surface=surface, ground=ground,
                  ground_inst=ground_inst, prim_kind=np.array(kinds, np.int8),
                  prim_params=np.array(params, np.float64).reshape(-1, 8), prim_class=np.array(classes, np.uint8),
                  prim_inst=np.array(insts, np.int32), trail=trail, trail_s=trail_s)
    _build_grid(world)
    return world


def _smooth1d(v: np.ndarray, k: int) -> np.ndarray:
    k = max(1, k)
    pad = np.pad(v, k, mode="edge")
    ker = np.ones(2 * k + 1) / (2 * k + 1)
    return np.convolve(pad, ker, mode="valid")


def _sample(grid: np.ndarray, pts: np.ndarray, x0: float, y0: float, res: float) -> np.ndarray:
    n = grid.shape[0]
    ix = np.clip(((pts[:, 0] - x0) / res).round().astype(int), 0, n - 1)
    iy = np.clip(((pts[:, 1] - y0) / res).round().astype(int), 0, n - 1)
    return grid[iy, ix]


def _trail_distance(X: np.ndarray, Y: np.ndarray, trail: np.ndarray, trail_s: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distance of every cell to the trail polyline, arc length of the foot point, signed offset."""
    from scipy.spatial import cKDTree

    dense = trail
    tree = cKDTree(dense)
    pts = np.stack([X.ravel(), Y.ravel()], axis=1)
    d, i = tree.query(pts, workers=-1)
    i = np.clip(i, 1, len(dense) - 1)
    tan = dense[i] - dense[i - 1]
    tan /= np.linalg.norm(tan, axis=1, keepdims=True)
    rel = pts - dense[i]
    side = tan[:, 0] * rel[:, 1] - tan[:, 1] * rel[:, 0]
    along = np.einsum("ij,ij->i", rel, tan)
    s = trail_s[i] + along
    return d.reshape(X.shape), s.reshape(X.shape), side.reshape(X.shape)


def primitive_bounds(kind: int, p: np.ndarray) -> tuple[float, float, float, float, float]:
    """(xmin, xmax, ymin, ymax, zmax) of a primitive."""
    if kind == ELLIPSOID:
        r = max(p[3], p[4])
        return p[0] - r, p[0] + r, p[1] - r, p[1] + r, p[2] + p[5]
    if kind == CAPSULE:
        r = p[6]
        return (min(p[0], p[3]) - r, max(p[0], p[3]) + r, min(p[1], p[4]) - r, max(p[1], p[4]) + r,
                max(p[2], p[5]) + r)
    rxy = float(np.hypot(p[3], p[4]))
    return p[0] - rxy, p[0] + rxy, p[1] - rxy, p[1] + rxy, p[2] + p[5]


def _build_grid(world: World) -> None:
    """Register every primitive in the 2-D cells its bounding box overlaps (CSR arrays)."""
    xmin, xmax, ymin, ymax = world.extent
    cs = world.cell_size
    gw = int(np.ceil((xmax - xmin) / cs)) + 1
    gh = int(np.ceil((ymax - ymin) / cs)) + 1
    buckets: list[list[int]] = [[] for _ in range(gw * gh)]
    zmax = np.full(gw * gh, -1e9)
    for i in range(world.num_primitives):
        bx0, bx1, by0, by1, bz = primitive_bounds(int(world.prim_kind[i]), world.prim_params[i])
        cx0 = int(np.clip((bx0 - xmin) // cs, 0, gw - 1))
        cx1 = int(np.clip((bx1 - xmin) // cs, 0, gw - 1))
        cy0 = int(np.clip((by0 - ymin) // cs, 0, gh - 1))
        cy1 = int(np.clip((by1 - ymin) // cs, 0, gh - 1))
        for cy in range(cy0, cy1 + 1):
            for cx in range(cx0, cx1 + 1):
                buckets[cy * gw + cx].append(i)
                zmax[cy * gw + cx] = max(zmax[cy * gw + cx], bz)
    start = np.zeros(gw * gh + 1, np.int64)
    start[1:] = np.cumsum([len(b) for b in buckets])
    world.cell_start = start
    world.cell_items = np.array([i for b in buckets for i in b], np.int64)
    world.cell_zmax = zmax
    world.grid_shape = (gh, gw)
    world.zmax = float(max(world.surface.max(), zmax.max() if len(zmax) else -1e9))
