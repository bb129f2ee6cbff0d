"""Pinhole-camera rendering by rasterisation (numba): terrain triangles into a z-buffer, then
exact ray tests of the object primitives inside their screen rectangles.

This is the camera's fast path: its cost grows with the image size, not with ray length, so a
640x480 frame takes tens of milliseconds. The result has the same meaning as
:func:`terraseg.sim.raycast.cast_rays` for the camera's pixel rays.

Camera model: pixel (u, v) has its centre at (u + 0.5, v + 0.5); ``R_cw`` (3x3) rotates camera-frame
vectors (x right, y down, z forward) into the world frame and ``cam`` is the optical centre in
the world frame.
"""

from __future__ import annotations

import numba
import numpy as np

from terraseg.sim.raycast import CAPSULE, ELLIPSOID, Hits, _facing_unit, _intersect, _prepare
from terraseg.sim.world import World

# LOD rings: (stride in height-field cells, outer radius in metres)
_LODS = ((1, 12.0), (2, 24.0), (4, 48.0), (8, 96.0), (16, 200.0))


@numba.njit(cache=True, inline="always")
def _to_cam(R, cam, x, y, z):  # type: ignore[no-untyped-def]
    # world -> camera: R^T (p - cam)
    px, py, pz = x - cam[0], y - cam[1], z - cam[2]
    return (R[0, 0] * px + R[1, 0] * py + R[2, 0] * pz,
            R[0, 1] * px + R[1, 1] * py + R[2, 1] * pz,
            R[0, 2] * px + R[1, 2] * py + R[2, 2] * pz)


@numba.njit(cache=True)
def _tri(zbuf, fx, fy, cx, cy, ax, ay, az, bx, by, bz, qx, qy, qz, near):  # type: ignore[no-untyped-def]
    """Rasterise one camera-frame triangle into ``zbuf`` (camera z), perspective-correct depth."""
    if az < near or bz < near or qz < near:
        return
    h, w = zbuf.shape
    u0, v0 = fx * ax / az + cx, fy * ay / az + cy
    u1, v1 = fx * bx / bz + cx, fy * by / bz + cy
    u2, v2 = fx * qx / qz + cx, fy * qy / qz + cy
    area = (u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0)
    if abs(area) < 1e-12:
        return
    umin = max(int(np.floor(min(u0, min(u1, u2)))), 0)
    umax = min(int(np.ceil(max(u0, max(u1, u2)))), w - 1)
    vmin = max(int(np.floor(min(v0, min(v1, v2)))), 0)
    vmax = min(int(np.ceil(max(v0, max(v1, v2)))), h - 1)
    if umin > umax or vmin > vmax:
        return
    iz0, iz1, iz2 = 1.0 / az, 1.0 / bz, 1.0 / qz
    inv = 1.0 / area
    eps = -1e-7
    for v in range(vmin, vmax + 1):
        pv = v + 0.5
        for u in range(umin, umax + 1):
            pu = u + 0.5
            w0 = ((u1 - pu) * (v2 - pv) - (u2 - pu) * (v1 - pv)) * inv
            w1 = ((u2 - pu) * (v0 - pv) - (u0 - pu) * (v2 - pv)) * inv
            w2 = 1.0 - w0 - w1
            if w0 < eps or w1 < eps or w2 < eps:
                continue
            z = 1.0 / (w0 * iz0 + w1 * iz1 + w2 * iz2)
            if z < zbuf[v, u]:
                zbuf[v, u] = z


@numba.njit(cache=True, parallel=True)
def _raster_terrain(surf, x0, y0, res, R, cam, fx, fy, cx, cy, near, lods, zbufs):  # type: ignore[no-untyped-def]
    """Terrain quads around the camera at a stride that grows with distance (LOD rings; each ring
    also covers one ring cell of the finer region so no crack opens at the seams). Rows of cells
    are split over threads, each with its own z-buffer (merged by the caller)."""
    hgt, wid = surf.shape
    ci = (cam[1] - y0) / res
    cj = (cam[0] - x0) / res
    nthreads = zbufs.shape[0]
    for t in numba.prange(nthreads):
        zb = zbufs[t]
        for li in range(lods.shape[0]):
            s = int(lods[li, 0])
            rad = lods[li, 1] / res
            inner = 0.0 if li == 0 else lods[li - 1, 1] / res - 2 * s
            i0 = max(int((ci - rad) // s) * s, 0)
            i1 = min(int((ci + rad) // s) * s + s, hgt - 1 - s)
            j0 = max(int((cj - rad) // s) * s, 0)
            j1 = min(int((cj + rad) // s) * s + s, wid - 1 - s)
            row = 0
            for i in range(i0, i1 + 1, s):
                row += 1
                if row % nthreads != t:
                    continue
                for j in range(j0, j1 + 1, s):
                    di, dj = abs(i + s * 0.5 - ci), abs(j + s * 0.5 - cj)
                    if di < inner and dj < inner:
                        continue
                    xa, ya = x0 + j * res, y0 + i * res
                    xb, yb = xa + s * res, ya + s * res
                    a = _to_cam(R, cam, xa, ya, surf[i, j])
                    b = _to_cam(R, cam, xb, ya, surf[i, j + s])
                    c = _to_cam(R, cam, xa, yb, surf[i + s, j])
                    d = _to_cam(R, cam, xb, yb, surf[i + s, j + s])
                    if a[2] < near and b[2] < near and c[2] < near and d[2] < near:
                        continue
                    _tri(zb, fx, fy, cx, cy, a[0], a[1], a[2], b[0], b[1], b[2], d[0], d[1], d[2], near)
                    _tri(zb, fx, fy, cx, cy, a[0], a[1], a[2], d[0], d[1], d[2], c[0], c[1], c[2], near)


@numba.njit(cache=True, parallel=True)
def _shade_terrain(zbuf, dirs, R, cam, grad, ground, ground_inst, x0, y0, res, t_max,
                   out_t, out_cls, out_inst, out_n):  # type: ignore[no-untyped-def]
    """Turn camera depths into ray distance, ground class (boundaries dithered) and normal."""
    h, w = zbuf.shape
    gh, gw = ground.shape
    for v in numba.prange(h):
        for u in range(w):
            k = v * w + u
            z = zbuf[v, u]
            if not z < np.inf:
                out_t[k] = np.inf
                out_cls[k] = 0
                out_inst[k] = 0
                continue
            dx, dy, dz = dirs[k, 0], dirs[k, 1], dirs[k, 2]
            # camera z of a unit world direction = its component along the optical axis
            fz = R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz
            t = z / fz
            if t > t_max:
                out_t[k] = np.inf
                out_cls[k] = 0
                out_inst[k] = 0
                continue
            px, py = cam[0] + t * dx, cam[1] + t * dy
            # wiggle class boundaries with a smooth warp (about +-0.3 m, 1-2 m wavelength)
            wx = 0.18 * np.sin(px * 3.1 + py * 1.3) + 0.12 * np.sin(py * 5.3 - px * 2.2)
            wy = 0.18 * np.sin(py * 2.9 - px * 1.7) + 0.12 * np.sin(px * 4.7 + py * 2.5)
            ix = min(max(int((px + wx - x0) / res + 0.5), 0), gw - 1)
            iy = min(max(int((py + wy - y0) / res + 0.5), 0), gh - 1)
            # normal from the precomputed surface gradient (nearest cell)
            jx = min(max(int((px - x0) / res + 0.5), 0), gw - 1)
            jy = min(max(int((py - y0) / res + 0.5), 0), gh - 1)
            nx, ny, nz = -grad[jy, jx, 0], -grad[jy, jx, 1], 1.0
            nn = np.sqrt(nx * nx + ny * ny + nz * nz)
            out_t[k] = t
            out_cls[k] = ground[iy, ix]
            out_inst[k] = ground_inst[iy, ix]
            out_n[k, 0], out_n[k, 1], out_n[k, 2] = nx / nn, ny / nn, nz / nn


@numba.njit(cache=True, parallel=True)
def _splat_prims(nthreads, rects, order, tnear, dirs, w, cam, kind, params, pcls, pinst,
                 out_t, out_cls, out_inst, out_n, out_prim):  # type: ignore[no-untyped-def]
    """Ray-test each visible primitive over its screen rectangle; rows are split over threads so
    no two threads write the same pixel."""
    ox, oy, oz = cam[0], cam[1], cam[2]
    for t in numba.prange(nthreads):
        for q in range(order.shape[0]):
            k = order[q]
            u0, u1, v0, v1 = rects[q, 0], rects[q, 1], rects[q, 2], rects[q, 3]
            for v in range(v0, v1 + 1):
                if v % nthreads != t:
                    continue
                for u in range(u0, u1 + 1):
                    pix = v * w + u
                    if out_t[pix] <= tnear[q]:  # something nearer than this primitive can be
                        continue
                    dx, dy, dz = dirs[pix, 0], dirs[pix, 1], dirs[pix, 2]
                    tt, nx, ny, nz = _intersect(kind[k], ox, oy, oz, dx, dy, dz, params[k])
                    if tt < out_t[pix]:
                        nx, ny, nz = _facing_unit(nx, ny, nz, dx, dy, dz)
                        out_t[pix] = tt
                        out_cls[pix] = pcls[k]
                        out_inst[pix] = pinst[k]
                        out_n[pix, 0], out_n[pix, 1], out_n[pix, 2] = nx, ny, nz
                        out_prim[pix] = k


def surface_gradient(world: World) -> np.ndarray:
    """(H, W, 2) float32 surface gradient (dz/dx, dz/dy) of a world, computed once and cached."""
    g = getattr(world, "_grad", None)
    if g is None:
        gy, gx = np.gradient(world.surface.astype(np.float64), world.res)
        g = np.ascontiguousarray(np.stack([gx, gy], axis=-1), dtype=np.float32)
        world._grad = g  # type: ignore[attr-defined]
    return g


def render_camera_hits(world: World, cam: np.ndarray, R_cw: np.ndarray, K: np.ndarray, size: tuple[int, int],
                       dirs: np.ndarray, t_max: float = 150.0, near: float = 0.05) -> Hits:
    """Per-pixel hits of a pinhole camera (rows of ``dirs`` are the unit world ray of each pixel,
    row-major (v, u)). ``size`` is (width, height)."""
    _prepare(world)
    w, h = size
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    R = np.ascontiguousarray(R_cw, dtype=np.float64)
    c = np.ascontiguousarray(cam, dtype=np.float64)
    nthreads = numba.get_num_threads()
    zbufs = np.full((nthreads, h, w), np.inf, np.float64)
    lods = np.array(_LODS, np.float64)
    _raster_terrain(world.surface, world.x0, world.y0, world.res, R, c, fx, fy, cx, cy, near, lods, zbufs)
    zbuf = zbufs.min(axis=0)
    n = w * h
    out_t = np.empty(n, np.float64)
    out_cls = np.empty(n, np.uint8)
    out_inst = np.empty(n, np.int32)
    out_n = np.zeros((n, 3), np.float64)
    out_prim = np.full(n, -1, np.int32)
    d = np.ascontiguousarray(dirs, dtype=np.float64)
    _shade_terrain(zbuf, d, R, c, surface_gradient(world), world.ground, world.ground_inst, world.x0, world.y0, world.res,
                   float(t_max), out_t, out_cls, out_inst, out_n)
    rects, order, tnear = _screen_rects(world, c, R, fx, fy, cx, cy, w, h, t_max, near, depth=out_t)
    if len(order):
        _splat_prims(nthreads, rects, order, tnear, d, w, c, world.prim_kind, world._kparams, world.prim_class,  # type: ignore[attr-defined]
                     world.prim_inst, out_t, out_cls, out_inst, out_n, out_prim)
    return Hits(t=out_t.astype(np.float32), cls=out_cls, inst=out_inst, normal=out_n.astype(np.float32), prim=out_prim)


def _screen_rects(world: World, cam: np.ndarray, R: np.ndarray, fx: float, fy: float, cx: float, cy: float,
                  w: int, h: int, t_max: float, near: float, depth: np.ndarray | None = None,
                  tile: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conservative pixel rectangles of the primitives in front of the camera, nearest first.

    Rectangles come from the bounding sphere (ellipsoids), the two end spheres (capsules) or the
    eight corners (boxes). With ``depth`` (per-pixel distance already rendered, e.g. terrain), a
    primitive whose nearest possible distance exceeds the farthest depth in every tile its
    rectangle covers is hidden and dropped. Returns (rects (M, 4) [u0, u1, v0, v1], primitive
    indices (M,), nearest possible distance (M,)).
    """
    sph = world._sphere  # type: ignore[attr-defined]
    rel = sph[:, :3] - cam
    dist = np.linalg.norm(rel, axis=1)
    tnear = np.maximum(dist - sph[:, 3], 0.0)
    pcs = rel @ R
    keep = (pcs[:, 2] + sph[:, 3] > near) & (tnear < t_max)
    idx = np.nonzero(keep)[0]
    rects = np.empty((len(idx), 4))

    lim = np.radians(89.0)

    def sphere_rect(pc: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Exact pixel bounds of spheres: u depends only on the angle atan2(x, z) of a point, and
        the angles of a sphere's points span the centre's angle +- asin(r / distance in that plane)."""
        out = np.empty((len(pc), 4))
        for axis, col, f, c0, size in ((0, 0, fx, cx, w), (1, 2, fy, cy, h)):
            d = np.hypot(pc[:, axis], pc[:, 2])
            a = np.arctan2(pc[:, axis], pc[:, 2])
            da = np.arcsin(np.clip(r / np.maximum(d, 1e-9), 0.0, 1.0))
            lo = np.tan(np.clip(a - da, -lim, lim)) * f + c0
            hi = np.tan(np.clip(a + da, -lim, lim)) * f + c0
            inside = d <= r
            out[:, col] = np.where(inside, 0, lo)
            out[:, col + 1] = np.where(inside, size - 1, hi)
        return out

    kinds = world.prim_kind[idx]
    prm = world.prim_params[idx]
    m = kinds == ELLIPSOID
    rects[m] = sphere_rect(pcs[idx][m], sph[idx, 3][m])
    m = kinds == CAPSULE
    if m.any():
        a = (prm[m, 0:3] - cam) @ R
        b = (prm[m, 3:6] - cam) @ R
        ra, rb = sphere_rect(a, prm[m, 6]), sphere_rect(b, prm[m, 6])
        rects[m] = np.stack([np.minimum(ra[:, 0], rb[:, 0]), np.maximum(ra[:, 1], rb[:, 1]),
                             np.minimum(ra[:, 2], rb[:, 2]), np.maximum(ra[:, 3], rb[:, 3])], axis=1)
    m = kinds == 2  # boxes: the eight corners
    if m.any():
        p = prm[m]
        c, s_ = np.cos(p[:, 6]), np.sin(p[:, 6])
        corners = []
        for sx in (-1, 1):
            for sy in (-1, 1):
                for sz in (-1, 1):
                    lx, ly = sx * p[:, 3], sy * p[:, 4]
                    corners.append(np.stack([p[:, 0] + c * lx - s_ * ly, p[:, 1] + s_ * lx + c * ly,
                                             p[:, 2] + sz * p[:, 5]], axis=1))
        pc = (np.stack(corners, axis=1) - cam) @ R  # (M, 8, 3)
        z = pc[..., 2]
        u = fx * pc[..., 0] / np.maximum(z, near) + cx
        v = fy * pc[..., 1] / np.maximum(z, near) + cy
        r = np.stack([u.min(1), u.max(1), v.min(1), v.max(1)], axis=1)
        behind = (z <= near).any(axis=1)  # a corner behind the camera: use the bounding sphere
        if behind.any():
            sel = np.nonzero(m)[0][behind]
            r[behind] = sphere_rect(pcs[idx[sel]], sph[idx[sel], 3])
        rects[m] = r
    r = np.empty_like(rects)
    r[:, 0] = np.floor(rects[:, 0]).clip(0, w - 1)
    r[:, 1] = np.ceil(rects[:, 1]).clip(0, w - 1)
    r[:, 2] = np.floor(rects[:, 2]).clip(0, h - 1)
    r[:, 3] = np.ceil(rects[:, 3]).clip(0, h - 1)
    onscreen = (rects[:, 1] >= 0) & (rects[:, 0] <= w - 1) & (rects[:, 3] >= 0) & (rects[:, 2] <= h - 1)
    r, idx, tn = r[onscreen].astype(np.int64), idx[onscreen], tnear[idx][onscreen]
    if depth is not None and len(idx):
        th, tw = -(-h // tile), -(-w // tile)
        pad = np.full((th * tile, tw * tile), np.inf)
        pad[:h, :w] = np.where(np.isfinite(depth), depth, np.inf).reshape(h, w)
        tmax = pad.reshape(th, tile, tw, tile).max(axis=(1, 3))
        vis = _tile_visible(r, tn, tmax, tile)
        r, idx, tn = r[vis], idx[vis], tn[vis]
    order = np.argsort(tn, kind="stable")
    return r[order], idx[order].astype(np.int64), tn[order]


@numba.njit(cache=True)
def _tile_visible(rects, tnear, tmax, tile):  # type: ignore[no-untyped-def]
    """True where a primitive may be nearer than the farthest depth in some tile of its rectangle."""
    out = np.zeros(rects.shape[0], np.bool_)
    for q in range(rects.shape[0]):
        for ty in range(rects[q, 2] // tile, rects[q, 3] // tile + 1):
            for tx in range(rects[q, 0] // tile, rects[q, 1] // tile + 1):
                if tnear[q] < tmax[ty, tx]:
                    out[q] = True
                    break
            if out[q]:
                break
    return out
