"""A built-in off-road simulator: procedural worlds, an RGB camera with semantic masks and depth,
and a spinning LiDAR with per-point labels. No GPU, no download.

>>> from terraseg.sim import generate_world, trail_poses, render
>>> world = generate_world(seed=0, style="forest")
>>> poses, times = trail_poses(world, frames=3)
>>> frame = render(world, poses[0], domain="forest-fog")            # doctest: +SKIP
>>> frame.image.shape, frame.points.shape                            # doctest: +SKIP
((480, 640, 3), (..., 4))
"""

from terraseg.sim.appearance import WEATHERS, Domain, Weather, get_domain, list_domains
from terraseg.sim.raycast import Hits, cast_rays
from terraseg.sim.render import render, trail_poses, vehicle_pose
from terraseg.sim.sensors import CAMERA_PRESETS, LIDAR_PRESETS, CameraConfig, Headlights, LidarConfig, Rig
from terraseg.sim.world import TERRAIN_STYLES, TerrainStyle, World, generate_world

__all__ = [
    "CAMERA_PRESETS",
    "LIDAR_PRESETS",
    "TERRAIN_STYLES",
    "WEATHERS",
    "CameraConfig",
    "Domain",
    "Headlights",
    "Hits",
    "LidarConfig",
    "Rig",
    "TerrainStyle",
    "Weather",
    "World",
    "cast_rays",
    "generate_world",
    "get_domain",
    "list_domains",
    "render",
    "trail_poses",
    "vehicle_pose",
]
