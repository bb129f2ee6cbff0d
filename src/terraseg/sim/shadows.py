"""Sun shadows of the object primitives, as a shadow map cached per world and sun direction.

The world's objects are static, so the map is built once: an orthographic projection along the
sun direction ``s`` onto the plane spanned by ``e1`` (horizontal, perpendicular to ``s``) and
``e2 = s x e1``. Each texel stores the largest ``p . s`` (the point nearest the sun) of the
objects it sees, found by exact ray tests along ``-s`` inside every primitive's projected
rectangle. A surface point ``p`` is in shadow when its texel's value exceeds ``p . s`` by more
than a small bias, unless that texel's occluder is the very primitive the point lies on (a
primitive's own dark side comes from the Lambert term; this avoids "shadow acne"). Terrain does
not cast shadows (self-shadowing of hills is left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from terraseg.sim.raycast import _intersect, _prepare
from terraseg.sim.world import World


@dataclass
class ShadowMap:
    sun: np.ndarray      # (3,) unit vector towards the sun
    e1: np.ndarray
    e2: np.ndarray
    a0: float            # texel (0, 0) corner in plane coordinates
    b0: float
    texel: float         # metres
    depth: np.ndarray    # (Nb, Na) float64, -inf where no object
    prim: np.ndarray     # (Nb, Na) int32 index of the primitive nearest the sun, -1 where none


def _basis(sun: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    e1 = np.cross(sun, [0.0, 0.0, 1.0])
    if np.linalg.norm(e1) < 1e-6:
        e1 = np.array([1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(sun, e1)
    return e1, e2 / np.linalg.norm(e2)


@numba.njit(cache=True, parallel=True)
def _splat_shadow(nthreads, depth, prim, a0, b0, texel, e1, e2, sun, far, kind, params, sphere):  # type: ignore[no-untyped-def]
    nb, na = depth.shape
    for th in numba.prange(nthreads):
        for k in range(kind.shape[0]):
            cx, cy, cz, r = sphere[k, 0], sphere[k, 1], sphere[k, 2], sphere[k, 3]
            ca = cx * e1[0] + cy * e1[1] + cz * e1[2]
            cb = cx * e2[0] + cy * e2[1] + cz * e2[2]
            ia0 = max(int((ca - r - a0) / texel), 0)
            ia1 = min(int((ca + r - a0) / texel) + 1, na - 1)
            ib0 = max(int((cb - r - b0) / texel), 0)
            ib1 = min(int((cb + r - b0) / texel) + 1, nb - 1)
            for ib in range(ib0, ib1 + 1):
                if ib % nthreads != th:
                    continue
                bb = b0 + (ib + 0.5) * texel
                for ia in range(ia0, ia1 + 1):
                    aa = a0 + (ia + 0.5) * texel
                    ox = aa * e1[0] + bb * e2[0] + far * sun[0]
                    oy = aa * e1[1] + bb * e2[1] + far * sun[1]
                    oz = aa * e1[2] + bb * e2[2] + far * sun[2]
                    t, _, _, _ = _intersect(kind[k], ox, oy, oz, -sun[0], -sun[1], -sun[2], params[k])
                    if t < np.inf:
                        d = far - t
                        if d > depth[ib, ia]:
                            depth[ib, ia] = d
                            prim[ib, ia] = k


@numba.njit(cache=True, parallel=True)
def _lookup(points, idx, own, depth, prim, a0, b0, texel, e1, e2, sun, bias, out):  # type: ignore[no-untyped-def]
    nb, na = depth.shape
    for j in numba.prange(idx.shape[0]):
        px, py, pz = points[j, 0], points[j, 1], points[j, 2]
        a = px * e1[0] + py * e1[1] + pz * e1[2]
        b = px * e2[0] + py * e2[1] + pz * e2[2]
        ia = int((a - a0) / texel)
        ib = int((b - b0) / texel)
        if ia < 0 or ib < 0 or ia >= na or ib >= nb:
            continue
        if prim[ib, ia] != own[j] and depth[ib, ia] > px * sun[0] + py * sun[1] + pz * sun[2] + bias:
            out[idx[j]] = 0.0


def shadow_map(world: World, sun: np.ndarray, texel: float = 0.12) -> ShadowMap:
    """The (cached) shadow map of ``world``'s objects for the sun direction ``sun``."""
    sun = np.asarray(sun, dtype=np.float64)
    key = (tuple(np.round(sun, 9)), texel)
    cache = world.__dict__.setdefault("_shadow_maps", {})
    if key in cache:
        return cache[key]
    _prepare(world)
    e1, e2 = _basis(sun)
    xmin, xmax, ymin, ymax = world.extent
    zmin, zmax = float(world.surface.min()), world.zmax
    corners = np.array([[x, y, z] for x in (xmin, xmax) for y in (ymin, ymax) for z in (zmin, zmax)])
    a, b = corners @ e1, corners @ e2
    a0, b0 = float(a.min()), float(b.min())
    na, nb = int(np.ceil((a.max() - a0) / texel)) + 1, int(np.ceil((b.max() - b0) / texel)) + 1
    depth = np.full((nb, na), -np.inf)
    prim = np.full((nb, na), -1, np.int32)
    far = float(np.abs(corners @ sun).max() + 100.0)
    if world.num_primitives:
        _splat_shadow(numba.get_num_threads(), depth, prim, a0, b0, texel, e1, e2, sun, far, world.prim_kind, world._kparams,  # type: ignore[attr-defined]
                      world._sphere)  # type: ignore[attr-defined]
    sm = ShadowMap(sun, e1, e2, a0, b0, texel, depth, prim)
    cache[key] = sm
    return sm


def shadow_factor(world: World, sun: np.ndarray, points: np.ndarray, idx: np.ndarray, own: np.ndarray, n: int,
                  bias: float = 0.08) -> np.ndarray:
    """(n,) 1.0 for lit and 0.0 for shadowed entries; ``points[j]`` (lying on primitive ``own[j]``,
    -1 for the ground) is tested for entry ``idx[j]``."""
    sm = shadow_map(world, sun)
    out = np.ones(n, np.float64)
    _lookup(np.ascontiguousarray(points, dtype=np.float64), idx, np.ascontiguousarray(own, dtype=np.int32),
            sm.depth, sm.prim, sm.a0, sm.b0, sm.texel, sm.e1, sm.e2,
            sm.sun, bias, out)
    return out


__all__ = ["ShadowMap", "shadow_factor", "shadow_map"]
