"""Multi-view rendering: cameras, pixel -> point correspondence, visibility, point colours."""

from __future__ import annotations

import numpy as np
import pytest

from terraseg.errors import DataError
from terraseg.frame import Calibration
from terraseg.geometry import (
    calibration_views,
    look_at,
    orbit_views,
    pinhole_K,
    point_colors,
    project_points,
    render_view,
    ring_views,
    view_correspondence,
)
from terraseg.geometry.render import PinholeView


def _cloud(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = rng.uniform(3, 20, n)
    yaw = rng.uniform(-np.pi, np.pi, n)
    return np.stack([r * np.cos(yaw), r * np.sin(yaw), rng.uniform(-1.5, 2, n)], 1)


def test_look_at_axes() -> None:
    view = PinholeView(pinhole_K((100, 80), 90.0), look_at((0, 0, 0), (1, 0, 0)), (100, 80))
    K = view.K
    assert K[0, 2] == pytest.approx(49.5) and K[1, 2] == pytest.approx(39.5) and K[0, 0] == pytest.approx(50)
    uv = view.project(np.array([[5.0, 0, 0], [5.0, -1, 0], [5.0, 0, -1], [-5.0, 0, 0]])).uv
    np.testing.assert_allclose(uv[0], [49.5, 39.5])
    assert uv[1, 0] > 49.5 and uv[2, 1] > 39.5 and np.isnan(uv[3]).all()  # right (-y), down (-z), behind
    with pytest.raises(DataError, match="parallel"):
        look_at((0, 0, 0), (0, 0, 5))


@pytest.mark.parametrize("splat", [0, 1, 2])
def test_a_rendered_pixels_point_projects_back_to_that_pixel(splat: int) -> None:
    xyz = _cloud()
    for view in ring_views(4, position=(0, 0, 0.5), image_size=(96, 64)):
        r = render_view(xyz, view, splat_radius=splat)
        rows, cols = np.nonzero(r.index >= 0)
        assert len(rows) > 50
        proj = project_points(xyz[r.index[rows, cols]], view.calibration())
        assert proj.in_image.all()
        # the pixel's point lands on that pixel (or within the splat around it)
        assert np.abs(proj.pixel[:, 0] - cols).max() <= splat and np.abs(proj.pixel[:, 1] - rows).max() <= splat
        if splat == 0:
            np.testing.assert_array_equal(proj.pixel, np.stack([cols, rows], 1))
            np.testing.assert_allclose(r.depth[rows, cols], proj.depth, rtol=1e-6)
        # the nearest point wins its own pixel
        own = project_points(xyz, view.calibration())
        sel = np.flatnonzero(own.in_image)
        lin = own.pixel[sel, 1] * 96 + own.pixel[sel, 0]
        best = np.full(96 * 64, np.inf)
        np.minimum.at(best, lin, own.depth[sel])
        hit = r.index.ravel()[lin] == sel
        assert np.all(own.depth[sel][hit] <= best[lin][hit] + 1e-9)


def test_render_colours_and_occlusion() -> None:
    view = PinholeView(pinhole_K((64, 48), 60.0), look_at((0, 0, 0), (1, 0, 0)), (64, 48))
    xyz = np.array([[4.0, 0, 0], [8.0, 0, 0], [8.0, 1.5, 0]])
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    r = render_view(xyz, view, splat_radius=1, colors=colors, background=(7, 7, 7))
    c = view.project(xyz).pixel
    assert r.index[c[0, 1], c[0, 0]] == 0  # the near point hides the far one on the same ray
    assert tuple(r.image[c[2, 1], c[2, 0]]) == (0, 0, 255) and tuple(r.image[0, 0]) == (7, 7, 7)
    assert r.mask.sum() == 18  # two 3x3 splats
    vis = view_correspondence(xyz, view, depth=r.depth, border=2)
    assert vis.visible.tolist() == [True, False, True]
    assert view_correspondence(xyz, view, border=2).visible.tolist() == [True, False, True]  # self z-buffer
    # a wide border excludes the off-centre point
    assert view_correspondence(xyz, view, depth=r.depth, border=22).visible.tolist() == [True, False, False]
    with pytest.raises(DataError, match="colors"):
        render_view(xyz, view, colors=colors[:2])


def test_ring_and_orbit_views_cover_the_scan() -> None:
    xyz = _cloud(2000)
    xyz[:, 2] = 0.0
    views = ring_views(4, position=(0, 0, 0), pitch_deg=0.0, image_size=(64, 48), hfov_deg=100.0)
    seen = np.stack([v.project(xyz).in_image for v in views])
    assert seen.any(axis=0).all()  # four 100-degree views see all around
    # points on one horizontal plane through the camera share the horizon rows: most hide each other
    visible = np.stack([view_correspondence(xyz, v, border=0).visible for v in views]).any(axis=0)
    assert 0 < visible.sum() < 0.5 * len(xyz)
    orbit = orbit_views((0, 0, 0), radius=40.0, height=20.0, n=3, image_size=(64, 48), hfov_deg=60.0)
    for v in orbit:
        centre = v.project(np.zeros((1, 3))).uv[0]
        np.testing.assert_allclose(centre, [31.5, 23.5], atol=1e-9)


def test_calibration_views_turn_the_real_camera() -> None:
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # LiDAR x forward -> camera z
    calib = Calibration(K=pinhole_K((80, 60), 90.0), T_cam_lidar=T, image_size=(80, 60))
    views = calibration_views(calib, 4)
    np.testing.assert_allclose(views[0].T_cam_points, T)
    left = np.array([[0.0, 10.0, 0.0]])  # 90 degrees to the left of the LiDAR
    assert not views[0].project(left).in_image[0]
    np.testing.assert_allclose(views[1].project(left).uv[0], [39.5, 29.5], atol=1e-9)
    small = calibration_views(calib, 1, image_size=(40, 30))[0]
    assert small.image_size == (40, 30) and small.K[0, 0] == pytest.approx(20.0)


def test_point_colors_from_a_real_image() -> None:
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    calib = Calibration(K=pinhole_K((40, 30), 90.0), T_cam_lidar=T, image_size=(40, 30))
    image = np.zeros((30, 40, 3), np.uint8)
    image[..., 0] = np.arange(40)[None, :]
    image[..., 1] = np.arange(30)[:, None]
    xyz = np.array([[5.0, 0, 0], [5.0, -2, 1], [-5.0, 0, 0]])
    colors, valid = point_colors(xyz, calib, image, missing=(1, 2, 3))
    px = project_points(xyz, calib).pixel
    assert valid.tolist() == [True, True, False]
    assert colors[0].tolist() == [px[0, 0], px[0, 1], 0] and colors[1].tolist() == [px[1, 0], px[1, 1], 0]
    assert colors[2].tolist() == [1, 2, 3]
