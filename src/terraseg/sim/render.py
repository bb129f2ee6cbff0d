"""Rendering one frame of the rig at a vehicle pose: RGB + semantic mask + depth, and a LiDAR scan
with per-point labels, returned as a terraseg :class:`~terraseg.frame.Frame`."""

from __future__ import annotations

import numba
import numpy as np

from terraseg.frame import Frame
from terraseg.sim.appearance import Domain, Weather, get_domain, reflectivity_table, shade, sun_direction
from terraseg.sim.atmosphere import apply_lidar_weather
from terraseg.sim.raster import render_camera_hits
from terraseg.sim.raycast import cast_rays
from terraseg.sim.sensors import LidarConfig, Rig, rpy_matrix
from terraseg.sim.shadows import shadow_factor
from terraseg.sim.world import World, sim_class

ONTOLOGY = "sim"


def render(world: World, pose: np.ndarray, rig: Rig | None = None, domain: Domain | str = "forest-day",
           seed: int = 0, frame_id: str = "sim", timestamp: float | None = None) -> Frame:
    """Render the rig at vehicle pose ``pose`` (4x4, vehicle -> world).

    The frame carries ``image`` (H, W, 3) uint8, ``image_labels`` and ``image_instances`` (sim
    ontology), ``meta["depth"]`` (H, W) float32 camera z-depth in metres (0 = sky), ``points``
    (N, 4) x, y, z, intensity in the LiDAR frame, ``point_labels`` / ``point_instances``,
    ``calib`` (``T_cam_lidar``: LiDAR -> camera) and ``pose``: the LiDAR's pose in the world when the
    rig has a LiDAR, else the camera's. ``seed`` drives sensor noise (deterministic per frame).
    """
    rig = rig or Rig()
    dom = get_domain(domain) if isinstance(domain, str) else domain
    rng = np.random.default_rng(seed)
    pose = np.asarray(pose, dtype=np.float64)
    frame = Frame(frame_id=frame_id, ontology=ONTOLOGY, timestamp=timestamp,
                  meta={"domain": dom.name, "vehicle_pose": pose.copy()})
    if rig.camera is not None:
        _render_camera(world, pose, rig, dom, rng, frame)
        frame.calib = rig.calibration()
    if rig.lidar is not None:
        _render_lidar(world, pose, rig.lidar, dom.weather, rng, seed, frame)
        frame.pose = pose @ rig.lidar.T_vehicle_lidar()
    elif rig.camera is not None:
        frame.pose = pose @ rig.camera.T_vehicle_cam()
    return frame


def _render_camera(world: World, pose: np.ndarray, rig: Rig, dom: Domain, rng: np.random.Generator,
                   frame: Frame) -> None:
    cam_cfg = rig.camera
    assert cam_cfg is not None
    T_wc = pose @ cam_cfg.T_vehicle_cam()
    R_wc, c = T_wc[:3, :3], T_wc[:3, 3]
    dirs_cam = cam_cfg.ray_dirs_cam()
    dirs = rotate(dirs_cam, R_wc)
    hits = render_camera_hits(world, c, R_wc, cam_cfg.K, (cam_cfg.width, cam_cfg.height), dirs,
                              t_max=cam_cfg.max_range)
    hit = np.isfinite(hits.t)
    # cast shadows from objects: rays towards the sun, objects only
    shadow = np.ones(len(hits.t))
    if hit.any() and dom.weather.has_sun:
        sun = sun_direction(dom.weather)
        lit_idx, p = _shadow_origins(hits.t, hits.normal, dirs, c, sun)
        if len(lit_idx):
            shadow = shadow_factor(world, sun, p, lit_idx, hits.prim[lit_idx], len(hits.t))
    w, h = cam_cfg.width, cam_cfg.height
    lamps = rig.headlights.world(pose) if dom.weather.headlights else None
    frame.image = shade(hits.t, hits.cls, hits.inst, hits.normal, dirs, c, shadow, dom.weather, rng, (w, h),
                        lamps=lamps, headlights=rig.headlights, focal=float(cam_cfg.K[0, 0]))
    labels = np.where(hit, hits.cls, sim_class("sky")).astype(np.uint8)
    frame.image_labels = labels.reshape(h, w)
    frame.image_instances = np.where(hit, hits.inst, 0).astype(np.uint16).reshape(h, w)
    depth = np.where(hit, hits.t * dirs_cam[:, 2], 0.0).astype(np.float32)
    frame.meta["depth"] = depth.reshape(h, w)


def _render_lidar(world: World, pose: np.ndarray, cfg: LidarConfig, weather: Weather, rng: np.random.Generator,
                  seed: int, frame: Frame) -> None:
    T_wl = pose @ cfg.T_vehicle_lidar()
    d_l = cfg.ray_dirs()
    d_w = rotate(d_l, T_wl[:3, :3])
    hits = cast_rays(world, T_wl[:3, 3], d_w, t_max=cfg.max_range)
    rng_noise = rng.normal(0.0, cfg.range_noise, len(hits.t))
    keep = np.isfinite(hits.t) & (hits.t >= cfg.min_range) & (rng.random(len(hits.t)) >= cfg.dropout)
    r = hits.t[keep].astype(np.float64) + rng_noise[keep]
    xyz = d_l[keep] * r[:, None]
    refl = reflectivity_table()[hits.cls[keep]]
    cos_inc = np.abs(np.einsum("ij,ij->i", hits.normal[keep].astype(np.float64), d_w[keep]))
    inten = np.clip(refl * (0.35 + 0.65 * cos_inc) + rng.normal(0.0, 0.02, len(r)), 0.0, 1.0)
    rays = np.nonzero(keep)[0]
    labels, inst = hits.cls[keep], hits.inst[keep]
    if weather.lidar_extinction > 0 or weather.lidar_clutter > 0:
        # a generator of its own: the clear-air draws above stay those of every other weather
        rays, xyz, inten, labels, inst = apply_lidar_weather(
            rays, xyz, r, inten, labels, inst, hits.t, d_l, cfg, weather, np.random.default_rng((seed, 0xF06)))
    frame.points = np.concatenate([xyz, inten[:, None]], axis=1).astype(np.float32)
    frame.point_labels = labels.astype(np.uint8)
    frame.point_instances = inst.astype(np.uint16)
    ring, col = np.divmod(rays, cfg.azimuth_steps)
    frame.meta["lidar_ring"] = ring.astype(np.uint16)
    frame.meta["lidar_column"] = col.astype(np.uint16)


@numba.njit(cache=True, parallel=True)
def _rotate(d, R, out):  # type: ignore[no-untyped-def]
    for i in numba.prange(d.shape[0]):
        for r in range(3):
            out[i, r] = R[r, 0] * d[i, 0] + R[r, 1] * d[i, 1] + R[r, 2] * d[i, 2]


def rotate(d: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Rows of ``d`` (N, 3) rotated by ``R`` (3, 3): ``d @ R.T``, without BLAS thread overhead."""
    out = np.empty((len(d), 3), np.float64)
    _rotate(np.ascontiguousarray(d, dtype=np.float64), np.ascontiguousarray(R, dtype=np.float64), out)
    return out


@numba.njit(cache=True)
def _shadow_origins(t, normal, dirs, cam, sun):  # type: ignore[no-untyped-def]
    """Indices of hit pixels facing the sun and their surface points."""
    n = t.shape[0]
    idx = np.empty(n, np.int64)
    m = 0
    for i in range(n):
        if t[i] < np.inf and normal[i, 0] * sun[0] + normal[i, 1] * sun[1] + normal[i, 2] * sun[2] > 0:
            idx[m] = i
            m += 1
    idx = idx[:m]
    p = np.empty((m, 3))
    for j in range(m):
        i = idx[j]
        for c in range(3):
            p[j, c] = cam[c] + dirs[i, c] * t[i]
    return idx, p


def vehicle_pose(world: World, x: float, y: float, yaw: float, wheelbase: float = 2.6, track: float = 1.6) -> np.ndarray:
    """4x4 vehicle -> world pose standing on the surface at (x, y) heading ``yaw`` (radians, from +x),
    pitched and rolled by the ground under its wheels."""
    c, s = np.cos(yaw), np.sin(yaw)
    hf = world.height_at(x + c * wheelbase / 2, y + s * wheelbase / 2)
    hr = world.height_at(x - c * wheelbase / 2, y - s * wheelbase / 2)
    hl = world.height_at(x - s * track / 2, y + c * track / 2)
    hrt = world.height_at(x + s * track / 2, y - c * track / 2)
    pitch = -np.arctan2(hf - hr, wheelbase)
    roll = np.arctan2(hl - hrt, track)
    T = np.eye(4)
    T[:3, :3] = rpy_matrix(float(roll), float(pitch), yaw)
    T[:3, 3] = (x, y, float(world.height_at(x, y)))
    return T


def trail_poses(world: World, frames: int, rate_hz: float = 10.0, speed: float = 4.0, start: float = 2.0,
                reverse: bool = False, lateral: float = -0.75, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Poses of a vehicle driving along the trail: (frames, 4, 4) vehicle -> world, and times (s).

    Args:
        start: arc length (m) along the trail where the drive starts (from the other end when
            ``reverse``).
        speed: m/s (small random variation), lateral: offset from the centre line (m, left +).
    """
    rng = np.random.default_rng(seed)
    s_total = float(world.trail_s[-1])
    times = np.arange(frames) / rate_hz
    v = speed * (1.0 + 0.1 * np.sin(times * 0.7 + rng.uniform(0, 6)))
    s = start + np.concatenate([[0.0], np.cumsum(v[:-1] / rate_hz)])
    if reverse:
        s = s_total - s
    s = np.clip(s, 1.0, s_total - 1.0)
    tx = np.interp(s, world.trail_s, world.trail[:, 0])
    ty = np.interp(s, world.trail_s, world.trail[:, 1])
    ds = 0.5 if not reverse else -0.5
    hx = np.interp(s + ds, world.trail_s, world.trail[:, 0]) - np.interp(s - ds, world.trail_s, world.trail[:, 0])
    hy = np.interp(s + ds, world.trail_s, world.trail[:, 1]) - np.interp(s - ds, world.trail_s, world.trail[:, 1])
    yaw = np.arctan2(hy, hx)
    off = lateral + 0.15 * np.sin(times * 0.5)
    x = tx - off * np.sin(yaw) * (1 if not reverse else 1)
    y = ty + off * np.cos(yaw)
    poses = np.stack([vehicle_pose(world, float(a), float(b), float(c)) for a, b, c in zip(x, y, yaw)])
    return poses, times
