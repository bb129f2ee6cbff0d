"""Ray casting against a :class:`~terraseg.sim.world.World` (numba, parallel over rays).

Each ray is intersected exactly with the object primitives met along its 2-D grid traversal
(Amanatides-Woo DDA over the world's cells, skipping cells whose objects are all below the ray),
and with the height field by adaptive marching (steps shrink with the gap to the surface, then
bisection), up to the nearest primitive hit. Per ray the result is the hit distance (``inf`` when
nothing is hit within ``t_max``), the simulator class, an instance id and the surface normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from terraseg.sim.world import CAPSULE, ELLIPSOID, World

_INF = np.inf


@dataclass
class Hits:
    """Ray-cast results for N rays (world frame)."""

    t: np.ndarray          # (N,) float32 distance along the unit direction, inf = no hit
    cls: np.ndarray        # (N,) uint8 simulator class (0 = none)
    inst: np.ndarray       # (N,) int32 instance id (0 = none / plain ground)
    normal: np.ndarray     # (N, 3) float32 unit surface normal, facing the ray
    prim: np.ndarray       # (N,) int32 primitive index, -1 for the ground

    @property
    def hit(self) -> np.ndarray:
        return np.isfinite(self.t)


@numba.njit(cache=True, fastmath=False, inline="always")
def _ellipsoid(ox, oy, oz, dx, dy, dz, p):  # type: ignore[no-untyped-def]
    c, s = p[6], p[7]
    rx, ry = ox - p[0], oy - p[1]
    lx = (c * rx + s * ry) / p[3]
    ly = (-s * rx + c * ry) / p[4]
    lz = (oz - p[2]) / p[5]
    ex = (c * dx + s * dy) / p[3]
    ey = (-s * dx + c * dy) / p[4]
    ez = dz / p[5]
    a = ex * ex + ey * ey + ez * ez
    b = lx * ex + ly * ey + lz * ez
    cc = lx * lx + ly * ly + lz * lz - 1.0
    disc = b * b - a * cc
    if disc < 0.0:
        return _INF, 0.0, 0.0, 0.0
    sq = np.sqrt(disc)
    t = (-b - sq) / a
    if t < 1e-4:
        t = (-b + sq) / a
        if t < 1e-4:
            return _INF, 0.0, 0.0, 0.0
    hx, hy, hz = lx + t * ex, ly + t * ey, lz + t * ez
    # normal: gradient of the implicit function, back to world axes
    gx, gy, gz = hx / p[3], hy / p[4], hz / p[5]
    nx = c * gx - s * gy
    ny = s * gx + c * gy
    return t, nx, ny, gz


@numba.njit(cache=True, fastmath=False, inline="always")
def _capsule(ox, oy, oz, dx, dy, dz, p):  # type: ignore[no-untyped-def]
    ax, ay, az = p[0], p[1], p[2]
    bx, by, bz = p[3] - ax, p[4] - ay, p[5] - az
    r = p[6]
    baba = bx * bx + by * by + bz * bz
    oax, oay, oaz = ox - ax, oy - ay, oz - az
    bard = bx * dx + by * dy + bz * dz
    baoa = bx * oax + by * oay + bz * oaz
    rdoa = dx * oax + dy * oay + dz * oaz
    oaoa = oax * oax + oay * oay + oaz * oaz
    a = baba - bard * bard
    b = baba * rdoa - baoa * bard
    c = baba * oaoa - baoa * baoa - r * r * baba
    h = b * b - a * c
    t = _INF
    if h >= 0.0 and a > 1e-12:
        tt = (-b - np.sqrt(h)) / a
        y = baoa + tt * bard
        if tt > 1e-4 and y > 0.0 and y < baba:
            t = tt
    if t == _INF:  # caps
        for k in range(2):
            cx = ax + (bx if k == 1 else 0.0)
            cy = ay + (by if k == 1 else 0.0)
            cz = az + (bz if k == 1 else 0.0)
            ocx, ocy, ocz = ox - cx, oy - cy, oz - cz
            bb = dx * ocx + dy * ocy + dz * ocz
            cc2 = ocx * ocx + ocy * ocy + ocz * ocz - r * r
            hh = bb * bb - cc2
            if hh >= 0.0:
                tt = -bb - np.sqrt(hh)
                if tt > 1e-4 and tt < t:
                    t = tt
    if t == _INF:
        return _INF, 0.0, 0.0, 0.0
    px, py, pz = ox + t * dx - ax, oy + t * dy - ay, oz + t * dz - az
    f = (px * bx + py * by + pz * bz) / baba
    f = min(max(f, 0.0), 1.0)
    return t, px - f * bx, py - f * by, pz - f * bz


@numba.njit(cache=True, fastmath=False, inline="always")
def _box(ox, oy, oz, dx, dy, dz, p):  # type: ignore[no-untyped-def]
    c, s = p[6], p[7]
    rx, ry = ox - p[0], oy - p[1]
    lo = (c * rx + s * ry, -s * rx + c * ry, oz - p[2])
    ld = (c * dx + s * dy, -s * dx + c * dy, dz)
    half = (p[3], p[4], p[5])
    tmin, tmax = -_INF, _INF
    axis, sign = 0, 1.0
    for k in range(3):
        if abs(ld[k]) < 1e-12:
            if lo[k] < -half[k] or lo[k] > half[k]:
                return _INF, 0.0, 0.0, 0.0
            continue
        t1 = (-half[k] - lo[k]) / ld[k]
        t2 = (half[k] - lo[k]) / ld[k]
        sg = -1.0
        if t1 > t2:
            t1, t2 = t2, t1
            sg = 1.0
        if t1 > tmin:
            tmin, axis, sign = t1, k, sg
        if t2 < tmax:
            tmax = t2
    if tmin > tmax or tmax < 1e-4:
        return _INF, 0.0, 0.0, 0.0
    t = tmin if tmin > 1e-4 else tmax
    nl0, nl1, nl2 = 0.0, 0.0, 0.0
    if axis == 0:
        nl0 = sign
    elif axis == 1:
        nl1 = sign
    else:
        nl2 = sign
    return t, c * nl0 - s * nl1, s * nl0 + c * nl1, nl2


@numba.njit(cache=True, inline="always")
def _intersect(kind, ox, oy, oz, dx, dy, dz, p):  # type: ignore[no-untyped-def]
    """Distance and (unnormalised) normal of a ray hitting a primitive of ``kind`` (inf if missed)."""
    if kind == ELLIPSOID:
        return _ellipsoid(ox, oy, oz, dx, dy, dz, p)
    if kind == CAPSULE:
        return _capsule(ox, oy, oz, dx, dy, dz, p)
    return _box(ox, oy, oz, dx, dy, dz, p)


@numba.njit(cache=True, inline="always")
def _facing_unit(nx, ny, nz, dx, dy, dz):  # type: ignore[no-untyped-def]
    """The normal scaled to unit length and turned to face the ray direction's origin side."""
    nn = np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-12
    nx, ny, nz = nx / nn, ny / nn, nz / nn
    if nx * dx + ny * dy + nz * dz > 0:
        return -nx, -ny, -nz
    return nx, ny, nz


@numba.njit(cache=True, inline="always")
def _height(surf, x0, y0, res, x, y):  # type: ignore[no-untyped-def]
    h, w = surf.shape
    fx = (x - x0) / res
    fy = (y - y0) / res
    if fx < 0.0:
        fx = 0.0
    if fy < 0.0:
        fy = 0.0
    if fx > w - 1.001:
        fx = w - 1.001
    if fy > h - 1.001:
        fy = h - 1.001
    ix, iy = int(fx), int(fy)
    ax, ay = fx - ix, fy - iy
    top = surf[iy, ix] * (1 - ax) + surf[iy, ix + 1] * ax
    bot = surf[iy + 1, ix] * (1 - ax) + surf[iy + 1, ix + 1] * ax
    return top * (1 - ay) + bot * ay


@numba.njit(cache=True, parallel=True)
def _cast(origins, ostride, dstride, n, dirs, t_max, terrain, surf, ground, ground_inst, x0, y0, res, lip, lip_cell,
          hmax, hmax_cell, surf_max,
          kind, params, sphere, pcls, pinst, cell_start, cell_items, cell_zmax, gx0, gy0, cs, gh, gw, zmax,
          out_t, out_cls, out_inst, out_n, out_prim):  # type: ignore[no-untyped-def]
    for i in numba.prange(n):
        oi = i * ostride
        di = i * dstride
        ox, oy, oz = origins[oi, 0], origins[oi, 1], origins[oi, 2]
        dx, dy, dz = dirs[di, 0], dirs[di, 1], dirs[di, 2]
        best, bnx, bny, bnz, bp = t_max, 0.0, 0.0, 0.0, -1
        # ---- primitives: DDA over grid cells
        cx = int(np.floor((ox - gx0) / cs))
        cy = int(np.floor((oy - gy0) / cs))
        stepx = 1 if dx > 0 else -1
        stepy = 1 if dy > 0 else -1
        tdx = cs / abs(dx) if abs(dx) > 1e-12 else _INF
        tdy = cs / abs(dy) if abs(dy) > 1e-12 else _INF
        nbx = gx0 + (cx + (1 if dx > 0 else 0)) * cs
        nby = gy0 + (cy + (1 if dy > 0 else 0)) * cs
        tnx = (nbx - ox) / dx if abs(dx) > 1e-12 else _INF
        tny = (nby - oy) / dy if abs(dy) > 1e-12 else _INF
        t_enter = 0.0
        while t_enter < best:
            t_exit = min(tnx, tny)
            if cx < 0 or cy < 0 or cx >= gw or cy >= gh:
                break
            c = cy * gw + cx
            if dz < 0:  # lowest point of the ray inside this cell
                z_lo = oz + dz * min(t_exit, best)
            else:
                z_lo = oz + dz * t_enter
            if z_lo <= cell_zmax[c]:
                for j in range(cell_start[c], cell_start[c + 1]):
                    k = cell_items[j]
                    # bounding-sphere rejection: distance from the ray to the sphere centre
                    qx, qy, qz = sphere[k, 0] - ox, sphere[k, 1] - oy, sphere[k, 2] - oz
                    tc = qx * dx + qy * dy + qz * dz
                    r2 = sphere[k, 3] * sphere[k, 3]
                    d2 = qx * qx + qy * qy + qz * qz - tc * tc
                    if d2 > r2 or tc + sphere[k, 3] < 1e-4 or tc - sphere[k, 3] > best:
                        continue
                    t, nx, ny, nz = _intersect(kind[k], ox, oy, oz, dx, dy, dz, params[k])
                    if t < best:
                        best, bnx, bny, bnz, bp = t, nx, ny, nz, k
            if dz > 0 and oz + dz * t_enter > zmax:
                break
            if t_exit == _INF:
                break
            t_enter = t_exit
            if tnx < tny:
                tnx += tdx
                cx += stepx
            else:
                tny += tdy
                cy += stepy
        # ---- terrain: adaptive march up to the nearest primitive hit
        ht = _INF
        if terrain:
            t = 0.0
            prev_t = 0.0
            gap = oz - _height(surf, x0, y0, res, ox, oy)
            lh, lw = lip.shape
            if gap > 0.0:
                while t < best:
                    px, py, pz = ox + t * dx, oy + t * dy, oz + t * dz
                    if dz >= 0.0 and pz > surf_max:
                        break
                    gap = pz - _height(surf, x0, y0, res, px, py)
                    if gap <= 0.0:
                        lo, hi = prev_t, t
                        for _ in range(10):
                            mid = 0.5 * (lo + hi)
                            if oz + mid * dz - _height(surf, x0, y0, res, ox + mid * dx, oy + mid * dy) > 0.0:
                                lo = mid
                            else:
                                hi = mid
                        ht = hi
                        break
                    # safe step from the local slope bound (max gradient of the surrounding cells)
                    lx = min(max(int((px - x0) / lip_cell), 0), lw - 1)
                    ly = min(max(int((py - y0) / lip_cell), 0), lh - 1)
                    step = gap / (lip[ly, lx] + max(-dz, 0.0) + 1e-6) * 0.9
                    step = max(step, 0.02 + 0.008 * t)  # bounded work for grazing rays; bisection refines
                    step = min(step, lip_cell)
                    # far above the surface around here (max over 3x3 coarse cells): take a long safe step
                    hx_ = min(max(int((px - x0) / hmax_cell), 0), hmax.shape[1] - 1)
                    hy_ = min(max(int((py - y0) / hmax_cell), 0), hmax.shape[0] - 1)
                    cg = pz - hmax[hy_, hx_]
                    if cg > 0.0:
                        sc = hmax_cell if dz >= 0.0 else min(hmax_cell, cg / (-dz))
                        if sc > step:
                            step = sc
                    prev_t = t
                    t += step
        if ht < best:
            px, py = ox + ht * dx, oy + ht * dy
            h, w = surf.shape
            fx = (px - x0) / res
            fy = (py - y0) / res
            ix = min(max(int(fx + 0.5), 0), w - 1)
            iy = min(max(int(fy + 0.5), 0), h - 1)
            e = res
            hx = _height(surf, x0, y0, res, px + e, py) - _height(surf, x0, y0, res, px - e, py)
            hy = _height(surf, x0, y0, res, px, py + e) - _height(surf, x0, y0, res, px, py - e)
            nx, ny, nz = -hx / (2 * e), -hy / (2 * e), 1.0
            nn = np.sqrt(nx * nx + ny * ny + nz * nz)
            out_t[i] = ht
            out_cls[i] = ground[iy, ix]
            out_inst[i] = ground_inst[iy, ix]
            out_n[i, 0], out_n[i, 1], out_n[i, 2] = nx / nn, ny / nn, nz / nn
            out_prim[i] = -1
        elif bp >= 0:
            nx, ny, nz = _facing_unit(bnx, bny, bnz, dx, dy, dz)
            out_t[i] = best
            out_cls[i] = pcls[bp]
            out_inst[i] = pinst[bp]
            out_n[i, 0], out_n[i, 1], out_n[i, 2] = nx, ny, nz
            out_prim[i] = bp
        else:
            out_t[i] = _INF
            out_cls[i] = 0
            out_inst[i] = 0
            out_n[i, 0], out_n[i, 1], out_n[i, 2] = 0.0, 0.0, 0.0
            out_prim[i] = -1


LIP_CELL = 4.0  # metres: cell of the slope-bound grid; slope-bounded steps never exceed it
HMAX_CELL = 16.0  # metres: cell of the coarse max-height grid used for long steps high above the ground


def _slope_grid(world: World) -> np.ndarray:
    """Max surface gradient per LIP_CELL cell over the cell and its 8 neighbours (a local
    Lipschitz bound, so a step up to LIP_CELL from inside a cell never tunnels through the surface)."""
    from scipy.ndimage import maximum_filter

    gy, gx = np.gradient(world.surface.astype(np.float64), world.res)
    g = np.hypot(gx, gy)
    k = max(1, int(round(LIP_CELL / world.res)))
    h, w = g.shape
    gh, gw = -(-h // k), -(-w // k)
    pad = np.zeros((gh * k, gw * k))
    pad[:h, :w] = g
    cell = pad.reshape(gh, k, gw, k).max(axis=(1, 3))
    return maximum_filter(cell, size=3, mode="nearest") * 1.1 + 0.05


def _max_grid(world: World, cell: float) -> np.ndarray:
    """Max surface height per ``cell`` over the cell and its 8 neighbours."""
    from scipy.ndimage import maximum_filter

    k = max(1, int(round(cell / world.res)))
    h, w = world.surface.shape
    gh, gw = -(-h // k), -(-w // k)
    pad = np.full((gh * k, gw * k), -np.inf)
    pad[:h, :w] = world.surface
    return maximum_filter(pad.reshape(gh, k, gw, k).max(axis=(1, 3)), size=3, mode="nearest")


def _prepare(world: World) -> None:
    """Per-world arrays for the kernel: slope grid, bounding spheres, cos/sin of yaw angles."""
    if getattr(world, "_prepared", False):
        return
    p = world.prim_params.copy()
    rot = world.prim_kind != CAPSULE
    yaw = p[rot, 6].copy()
    p[rot, 6], p[rot, 7] = np.cos(yaw), np.sin(yaw)
    sphere = np.zeros((len(p), 4))
    for i, (k, q) in enumerate(zip(world.prim_kind, world.prim_params)):
        if k == ELLIPSOID:
            sphere[i] = (q[0], q[1], q[2], max(q[3], q[4], q[5]))
        elif k == CAPSULE:
            a, b = q[:3], q[3:6]
            sphere[i, :3] = (a + b) / 2
            sphere[i, 3] = np.linalg.norm(b - a) / 2 + q[6]
        else:
            sphere[i] = (q[0], q[1], q[2], float(np.linalg.norm(q[3:6])))
    world._kparams = p  # type: ignore[attr-defined]
    world._sphere = sphere  # type: ignore[attr-defined]
    world._lip = _slope_grid(world)  # type: ignore[attr-defined]
    world._hmax = _max_grid(world, HMAX_CELL)  # type: ignore[attr-defined]
    world._prepared = True  # type: ignore[attr-defined]


def cast_rays(world: World, origins: np.ndarray, dirs: np.ndarray, t_max: float = 150.0,
              terrain: bool = True, shared_dir: bool = False) -> Hits:
    """Intersect rays with the world.

    Args:
        origins: (3,) one origin for all rays, or (N, 3), world frame, metres.
        dirs: (N, 3) unit directions, or with ``shared_dir`` one (1, 3) direction for all the
            origins (shadow rays towards the sun).
        t_max: ignore hits farther than this, metres.
        terrain: also intersect the height field (False for shadow rays against objects only).
    """
    d = np.ascontiguousarray(dirs, dtype=np.float64).reshape(-1, 3)
    o = np.ascontiguousarray(origins, dtype=np.float64).reshape(-1, 3)
    n = len(o) if shared_dir else len(d)
    out_t = np.empty(n, np.float64)
    out_cls = np.empty(n, np.uint8)
    out_inst = np.empty(n, np.int32)
    out_n = np.empty((n, 3), np.float64)
    out_prim = np.empty(n, np.int32)
    _prepare(world)
    gh, gw = world.grid_shape
    _cast(o, 0 if len(o) == 1 else 1, 0 if shared_dir else 1, n, d, float(t_max), bool(terrain), world.surface, world.ground, world.ground_inst,
          world.x0, world.y0, world.res, world._lip, LIP_CELL, world._hmax, HMAX_CELL,  # type: ignore[attr-defined]
          float(world.surface.max()),
          world.prim_kind, world._kparams, world._sphere, world.prim_class,  # type: ignore[attr-defined]
          world.prim_inst, world.cell_start, world.cell_items, world.cell_zmax, world.x0, world.y0, world.cell_size,
          gh, gw, world.zmax, out_t, out_cls, out_inst, out_n, out_prim)
    return Hits(t=out_t.astype(np.float32), cls=out_cls, inst=out_inst, normal=out_n.astype(np.float32), prim=out_prim)
