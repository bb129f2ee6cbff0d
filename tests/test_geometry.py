"""LiDAR-camera geometry: projection, label transfer with occlusion, range images, kNN.

Synthetic tests use hand-computed answers; the real-data tests project the RELLIS-3D frame 104
scan into its camera image and range-project the RELLIS (Ouster) and SemanticKITTI (HDL-64E)
scans.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from terraseg.errors import ConfigError, DataError
from terraseg.frame import Calibration
from terraseg.geometry import (
    PRESETS,
    RangeProjection,
    build_index,
    depth_buffer,
    distort,
    fit_projection,
    from_organized,
    knn,
    knn_vote,
    labels_from_image,
    lidar_to_camera,
    nearest_labels,
    points_to_image,
    project_camera_points,
    project_points,
    project_scan,
    scale_calibration,
    transform_points,
    unproject,
    zbuffer_winners,
)

FX, FY, CX, CY = 500.0, 400.0, 319.5, 239.5
W, H = 640, 480
K = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1.0]])
# LiDAR frame (x forward, y left, z up) -> camera frame (x right, y down, z forward), no offset.
R_CAM_LIDAR = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], dtype=np.float64)


def make_T(R: np.ndarray = R_CAM_LIDAR, t: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def calib(dist: np.ndarray | None = None, size: tuple[int, int] | None = (W, H), T: np.ndarray | None = None) -> Calibration:
    return Calibration(K=K, dist=dist, T_cam_lidar=make_T() if T is None else T, image_size=size)


def cam_to_lidar(p_cam: np.ndarray) -> np.ndarray:
    """Camera-frame points -> LiDAR-frame points for the test calibration (no translation)."""
    return np.asarray(p_cam, dtype=np.float64) @ R_CAM_LIDAR  # R^T applied to row vectors


# ====================================================================== projection
def test_point_straight_ahead_hits_principal_point() -> None:
    pr = project_points(np.array([[7.0, 0.0, 0.0]], dtype=np.float32), calib())
    assert pr.uv.dtype == np.float64 and pr.uv.shape == (1, 2)
    np.testing.assert_allclose(pr.uv[0], [CX, CY], atol=1e-12)
    assert pr.depth[0] == pytest.approx(7.0)
    assert pr.in_front[0] and pr.in_image[0]
    assert pr.pixel.dtype == np.int64
    assert pr.pixel[0].tolist() == [320, 240]  # 319.5 rounds up: pixel (col, row) = floor(uv + 0.5)


def test_known_pixel_without_distortion() -> None:
    p_cam = np.array([[1.0, -0.5, 4.0], [-2.0, 1.5, 10.0]])
    pr = project_points(cam_to_lidar(p_cam), calib())
    expected = np.array([[FX * 0.25 + CX, FY * -0.125 + CY], [FX * -0.2 + CX, FY * 0.15 + CY]])
    np.testing.assert_allclose(pr.uv, expected, atol=1e-9)
    np.testing.assert_allclose(pr.depth, [4.0, 10.0])
    assert pr.pixel.tolist() == [[445, 190], [220, 300]]


def _opencv_reference(x: float, y: float, k1: float, k2: float, p1: float, p2: float, k3: float) -> tuple[float, float]:
    """Scalar transcription of OpenCV's projectPoints distortion equations."""
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return FX * xd + CX, FY * yd + CY


def test_known_pixel_with_distortion() -> None:
    coeffs = (-0.28, 0.07, 0.001, -0.0015, 0.01)
    p_cam = np.array([[1.0, -0.5, 4.0], [-1.2, 0.9, 3.0], [0.0, 0.0, 2.0]])
    pr = project_points(cam_to_lidar(p_cam), calib(dist=np.array(coeffs)))
    for i, (x, y, z) in enumerate(p_cam):
        np.testing.assert_allclose(pr.uv[i], _opencv_reference(x / z, y / z, *coeffs), atol=1e-9)
    np.testing.assert_allclose(pr.uv[2], [CX, CY])  # the optical axis is not distorted
    # 4 coefficients == 5 with k3 = 0; the rational model with k4..k6 = 0 is the same too
    a = project_points(cam_to_lidar(p_cam), calib(dist=np.array(coeffs[:4])))
    b = project_points(cam_to_lidar(p_cam), calib(dist=np.array([*coeffs[:4], 0, 0, 0, 0])))
    np.testing.assert_allclose(a.uv, b.uv)
    # distortion really moves the off-axis points
    plain = project_points(cam_to_lidar(p_cam), calib())
    assert np.abs(pr.uv[:2] - plain.uv[:2]).min() > 1.0


def test_distortion_fold_back_is_not_in_image() -> None:
    # k1 = -0.5: r * (1 - 0.5 r^2) peaks at r = 0.816 and folds back; a point at r = 1.5 (56 deg
    # off-axis) would land near the image centre.
    p_cam = np.array([[1.5, 0.0, 1.0], [0.5, 0.0, 1.0]])
    pr = project_camera_points(p_cam, K, np.array([-0.5, 0, 0, 0]), (W, H))
    xd, _ = distort(np.array([1.5]), np.array([0.0]), np.array([-0.5, 0, 0, 0]))
    assert abs(FX * xd[0]) < FX * 0.25  # the model folds it back into the image area ...
    assert not pr.in_image[0] and pr.in_front[0] and np.isnan(pr.uv[0]).all()  # ... but it is rejected
    assert pr.in_image[1]
    assert pr.pixel[0].tolist() == [-1, -1]


def test_distort_matches_reference_vectorised() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-0.6, 0.6, (2, 50))
    coeffs = np.array([0.1, -0.05, 0.002, 0.003, 0.01])
    xd, yd = distort(x, y, coeffs)
    for i in range(50):
        u, v = _opencv_reference(x[i], y[i], *coeffs)
        assert FX * xd[i] + CX == pytest.approx(u) and FY * yd[i] + CY == pytest.approx(v)


def test_behind_near_and_nonfinite_points() -> None:
    p_cam = np.array([[0.0, 0.0, -5.0], [0.0, 0.0, 0.05], [np.nan, 0.0, 5.0], [0.0, 0.0, 0.2]])
    pr = project_camera_points(p_cam, K, None, (W, H))
    assert pr.in_front.tolist() == [False, False, False, True]
    assert pr.in_image.tolist() == [False, False, False, True]
    assert np.isnan(pr.uv[:3]).all() and np.isfinite(pr.uv[3]).all()
    assert (pr.pixel[:3] == -1).all()
    assert pr.depth[0] == -5.0
    assert project_camera_points(p_cam, K, None, (W, H), near=0.01).in_front[1]


def test_image_bounds_follow_pixel_centre_convention() -> None:
    Kc = np.array([[100.0, 0, 0], [0, 100.0, 0], [0, 0, 1]])  # principal point at pixel (0, 0)'s centre
    u = np.array([-0.5, -0.51, 9.49, 9.5, 4.0])  # image 10 px wide: u in [-0.5, 9.5)
    p_cam = np.stack([u / 100.0, np.zeros(5), np.ones(5)], axis=1)
    pr = project_camera_points(p_cam, Kc, None, (10, 10))
    assert pr.in_image.tolist() == [True, False, True, False, True]
    assert pr.pixel[pr.in_image, 0].tolist() == [0, 9, 4]
    assert pr.visible.tolist() == [0, 2, 4]
    assert pr.linear_index.tolist() == [0, -1, 9, -1, 4]


def test_image_size_sources() -> None:
    far_right = cam_to_lidar(np.array([[10.0, 0.0, 1.0]]))  # u = 5319.5
    assert not project_points(far_right, calib()).in_image[0]
    assert project_points(far_right, calib(), image_size=(6000, 480)).in_image[0]
    no_size = project_points(far_right, calib(size=None))
    assert no_size.in_image[0] and no_size.image_size is None  # no bounds: in_image == in_front
    with pytest.raises(DataError, match="no image size"):
        _ = no_size.linear_index


def test_transform_points_and_direction() -> None:
    T = make_T(t=(1.0, 2.0, 3.0))
    p = np.array([[1.0, 0.0, 0.0, 0.7], [0.0, 1.0, 0.0, 0.1]], dtype=np.float32)  # extra channel ignored
    out = transform_points(p, T)
    hom = np.c_[p[:, :3], np.ones(2)] @ T.T
    np.testing.assert_allclose(out, hom[:, :3])
    assert out.dtype == np.float64 and out.shape == (2, 3)
    np.testing.assert_allclose(lidar_to_camera(p, calib(T=T)), out)
    # x forward in the LiDAR is z forward in the camera
    np.testing.assert_allclose(lidar_to_camera(np.array([[5.0, 0, 0]]), calib()), [[0, 0, 5.0]], atol=1e-12)


def test_projection_errors() -> None:
    with pytest.raises(DataError, match="no T_cam_lidar"):
        project_points(np.zeros((2, 3)), Calibration(K=K))
    with pytest.raises(DataError, match="no camera matrix K"):
        project_points(np.zeros((2, 3)), Calibration(T_cam_lidar=np.eye(4)))
    with pytest.raises(DataError, match=r"\(N, 3\)"):
        project_points(np.zeros((5, 2)), calib())
    with pytest.raises(DataError, match="4, 5 or 8"):
        project_points(np.zeros((1, 3)), calib(dist=np.array([0.1, 0.2, 0.0])))
    with pytest.raises(DataError, match=r"\(4, 4\)"):
        transform_points(np.zeros((1, 3)), np.eye(3))
    with pytest.raises(DataError, match="width, height"):
        project_points(np.zeros((1, 3)), calib(), image_size=(0, 10))


def test_scale_calibration_pixel_centres() -> None:
    c = calib(dist=np.array([0.05, 0.0, 0.0, 0.0]))
    half = scale_calibration(c, (W // 2, H // 2))
    assert half.image_size == (320, 240)
    p = cam_to_lidar(np.array([[0.3, -0.2, 3.0], [0.0, 0.0, 2.0]]))
    full_uv, half_uv = project_points(p, c).uv, project_points(p, half).uv
    np.testing.assert_allclose(half_uv, (full_uv + 0.5) * 0.5 - 0.5, atol=1e-9)
    np.testing.assert_allclose(half.dist, c.dist)
    with pytest.raises(DataError, match="image_size"):
        scale_calibration(calib(size=None), (10, 10))


# ====================================================================== image -> points
def test_far_point_on_same_ray_is_occluded() -> None:
    mask = np.full((H, W), 3, dtype=np.uint8)
    mask[240, 320] = 7
    xyz = np.array([[4.0, 0.0, 0.0], [12.0, 0.0, 0.0], [30.0, 0.0, 0.0]])  # one ray, three depths
    res = labels_from_image(xyz, calib(), mask)
    assert res.labels.dtype == np.uint8
    assert res.labels.tolist() == [7, 255, 255]
    assert res.valid.tolist() == [True, False, False]
    assert res.occluded.tolist() == [False, True, True]
    plain = labels_from_image(xyz, calib(), mask, occlusion="none")
    assert plain.labels.tolist() == [7, 7, 7] and not plain.occluded.any()


def test_parallax_occlusion_scene() -> None:
    """A camera 0.6 m below the LiDAR; a plate at 5 m hides part of a wall at 10 m that the LiDAR
    sees over the plate's top edge. Those wall points project onto the plate's pixels."""
    c_lidar = np.array([0.0, 0.0, -0.6])  # camera centre in the LiDAR frame
    T = make_T(t=tuple(-R_CAM_LIDAR @ c_lidar))
    cal = calib(T=T)
    ys = np.arange(-0.8, 0.8, 0.02)
    plate = np.array([[5.0, y, z] for y in ys for z in np.arange(-1.0, 0.0 + 1e-9, 0.02)])
    wall = np.array([[10.0, y, z] for y in ys for z in np.arange(-1.0, 2.0, 0.02)])
    seen_by_lidar = wall[:, 2] > 0.02  # above the line from the LiDAR over the plate's top edge
    wall = wall[seen_by_lidar]
    xyz = np.vstack([plate, wall])
    # the camera's mask: plate pixels 1, the rest (wall) 2
    corners = project_points(np.array([[5.0, 0.8, 0.0], [5.0, -0.8, -1.0]]), cal).uv
    (u0, v0), (u1, v1) = np.floor(corners + 0.5).astype(int)
    mask = np.full((H, W), 2, dtype=np.uint8)
    mask[v0 - 1:v1 + 2, u0 - 1:u1 + 2] = 1  # one pixel of margin around the plate's outline
    hidden = wall[:, 2] < 0.6 - 0.05  # the camera's sight line over the top edge reaches z = 0.6 at 10 m
    clear = wall[:, 2] > 0.6 + 0.1  # more than the 5x5 window (2 px = 0.05 m at 10 m) above the edge
    n_plate = len(plate)
    plain = labels_from_image(xyz, cal, mask, occlusion="none")
    assert (plain.labels[n_plate:][hidden] == 1).all()  # without the test they take the plate's label
    res = labels_from_image(xyz, cal, mask)
    assert res.occluded[n_plate:][hidden].all()
    assert not res.occluded[:n_plate].any() and not res.occluded[n_plate:][clear].any()
    assert (res.labels[:n_plate] == 1).all() and (res.labels[n_plate:][clear] == 2).all()


def test_occlusion_tolerance_keeps_same_surface() -> None:
    mask = np.zeros((H, W), dtype=np.uint8)
    xyz = np.array([[10.0, 0, 0], [10.4, 0, 0], [11.2, 0, 0]])
    res = labels_from_image(xyz, calib(), mask, tolerance=0.5, rel_tolerance=0.05)  # limit 10 * 1.05 + 0.5 = 11
    assert res.valid.tolist() == [True, True, False]
    res = labels_from_image(xyz, calib(), mask, tolerance=0.0, rel_tolerance=0.0)
    assert res.valid.tolist() == [True, False, False]


def test_zbuffer_window_covers_sparse_gaps() -> None:
    mask = np.zeros((H, W), dtype=np.uint8)
    # a near point at pixel (320, 240) and a far point one pixel to the right
    near = cam_to_lidar(np.array([[0.0 + 0.5 / FX * 5, 0.0 + 0.5 / FY * 5, 5.0]]))  # uv = (320, 240)
    far = cam_to_lidar(np.array([[1.5 / FX * 20, 0.5 / FY * 20, 20.0]]))  # uv = (321, 240)
    xyz = np.vstack([near, far])
    pr = project_points(xyz, calib())
    assert pr.pixel.tolist() == [[320, 240], [321, 240]]
    assert labels_from_image(xyz, calib(), mask, window=1).valid.tolist() == [True, True]
    assert labels_from_image(xyz, calib(), mask, window=3).valid.tolist() == [True, False]
    assert labels_from_image(xyz, calib(), mask, window=(1, 3)).valid.tolist() == [True, False]
    assert labels_from_image(xyz, calib(), mask, window=(3, 1)).valid.tolist() == [True, True]
    with pytest.raises(DataError, match="odd"):
        labels_from_image(xyz, calib(), mask, window=4)


def test_depth_buffer_values() -> None:
    pix = np.array([[1, 1], [1, 1], [3, 0]])
    buf = depth_buffer(pix, np.array([5.0, 2.0, 9.0]), (5, 4))
    assert buf.shape == (4, 5) and buf.dtype == np.float64
    assert buf[1, 1] == 2.0 and buf[0, 3] == 9.0 and np.isinf(buf[3, 4])
    dil = depth_buffer(pix, np.array([5.0, 2.0, 9.0]), (5, 4), window=3)
    assert dil[0, 0] == 2.0 and dil[2, 2] == 2.0 and dil[0, 4] == 9.0 and np.isinf(dil[3, 4])


@pytest.mark.parametrize("seed", range(4))
def test_depth_buffer_sparse_and_dense_paths_match_reference(seed: int) -> None:
    from scipy import ndimage

    from terraseg.geometry.transfer import reference_depth_at

    rng = np.random.default_rng(seed)
    for n in (3, 40, 600):  # few points take the sparse path, many the dense (filtered) one
        w, h = (int(v) for v in rng.integers(5, 50, 2))
        pix = np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], axis=1)
        depth = rng.uniform(1, 9, n)
        window = (int(rng.choice([1, 3, 5])), int(rng.choice([1, 3, 7])))
        ref = np.full((h, w), np.inf)
        np.minimum.at(ref, (pix[:, 1], pix[:, 0]), depth)
        ref = ndimage.minimum_filter(ref, size=window, mode="nearest")
        np.testing.assert_array_equal(depth_buffer(pix, depth, (w, h), window), ref)
        np.testing.assert_array_equal(reference_depth_at(pix, depth, (w, h), window), ref[pix[:, 1], pix[:, 0]])


def test_depth_image_occlusion() -> None:
    mask = np.ones((H, W), dtype=np.uint16)
    depth = np.zeros((H, W), dtype=np.float32)  # 0 = unknown
    depth[:, :320] = 3.0  # a wall at 3 m on the left half (LiDAR +y = image left)
    xyz = np.array([[6.0, 1.0, 0.0], [6.0, -1.0, 0.0], [2.0, 0.5, 0.0]])  # left (behind wall), right, left (in front)
    res = labels_from_image(xyz, calib(), mask, depth_image=depth, occlusion="depth")
    assert res.occluded.tolist() == [True, False, False]
    assert res.labels.dtype == np.uint16 and res.labels.tolist() == [255, 1, 1]
    # zbuffer mode combines the depth image with the points' own buffer
    assert labels_from_image(xyz, calib(), mask, depth_image=depth).occluded.tolist() == [True, False, False]
    with pytest.raises(DataError, match="needs a depth_image"):
        labels_from_image(xyz, calib(), mask, occlusion="depth")
    with pytest.raises(DataError, match="depth image must be a numeric 640x480 image"):
        labels_from_image(xyz, calib(), mask, depth_image=np.zeros((2, 2)))


def test_labels_from_image_errors_and_dtypes() -> None:
    xyz = np.array([[5.0, 0, 0]])
    with pytest.raises(DataError, match="mask.png: label image is 320x240 but the calibration is for 640x480"):
        labels_from_image(xyz, calib(), np.zeros((240, 320), np.uint8), source="mask.png")
    with pytest.raises(DataError, match="integer label image"):
        labels_from_image(xyz, calib(), np.zeros((H, W), np.float32))
    with pytest.raises(DataError, match="unknown occlusion mode"):
        labels_from_image(xyz, calib(), np.zeros((H, W), np.uint8), occlusion="raycast")  # type: ignore[arg-type]
    res = labels_from_image(np.array([[5.0, 0, 0], [-5.0, 0, 0]]), calib(), np.full((H, W), 9, np.uint8),
                            ignore_index=1000)
    assert res.labels.dtype == np.uint16 and res.labels.tolist() == [9, 1000]
    assert res.projection.in_front.tolist() == [True, False]


# ====================================================================== points -> image
def test_points_to_image_nearest_wins() -> None:
    pix = np.array([[2, 1], [2, 1], [2, 1], [0, 0], [9, 9]])  # last one outside a 4x3 image
    depth = np.array([8.0, 3.0, 5.0, 1.0, 1.0])
    labels = np.array([10, 11, 12, 13, 14], dtype=np.uint8)
    img = points_to_image(pix, depth, labels, (4, 3))
    assert img.labels.shape == (3, 4) and img.labels.dtype == np.uint8
    assert img.labels[1, 2] == 11 and img.depth[1, 2] == 3.0 and img.index[1, 2] == 1
    assert img.labels[0, 0] == 13
    assert img.mask.sum() == 2 and (img.labels[~img.mask] == 255).all()
    assert (img.depth[~img.mask] == 0).all() and (img.index[~img.mask] == -1).all()
    assert img.depth.dtype == np.float32 and img.index.dtype == np.int64


def test_points_to_image_ties_and_rounding() -> None:
    uv = np.array([[1.49, 2.5], [1.2, 2.6], [-0.5, 0.0], [-0.51, 0.0], [np.nan, 1.0]])
    depth = np.array([4.0, 4.0, 1.0, 1.0, 1.0])
    img = points_to_image(uv, depth, np.arange(5, dtype=np.uint8), (4, 4))
    assert img.index[3, 1] == 0  # equal depth: lower index wins
    assert img.index[0, 0] == 2
    assert img.mask.sum() == 2
    # non-positive / non-finite depth and the valid mask skip points
    img = points_to_image(np.array([[0, 0], [1, 1], [2, 2]]), np.array([-1.0, np.inf, 2.0]), None, (4, 4),
                          valid=np.array([True, True, False]))
    assert img.labels is None and not img.mask.any()


def test_splats_are_zbuffered() -> None:
    pix = np.array([[2, 2], [3, 2]])
    labels = np.array([1, 2], dtype=np.uint8)
    # point 0 near, point 1 far: the near splat covers the far point's own pixel
    img = points_to_image(pix, np.array([2.0, 9.0]), labels, (6, 5), splat_radius=1)
    assert (img.labels[1:4, 1:4] == 1).all()
    assert (img.labels[1:4, 4] == 2).all()
    assert img.mask.sum() == 12 and img.index[2, 3] == 0
    # reversed depths: the far splat never covers the near point's own pixel
    img = points_to_image(pix, np.array([9.0, 2.0]), labels, (6, 5), splat_radius=1)
    assert (img.labels[1:4, 2:5] == 2).all() and (img.labels[1:4, 1] == 1).all()
    # equal depths: each point keeps its own centre pixel
    img = points_to_image(pix, np.array([5.0, 5.0]), labels, (6, 5), splat_radius=1)
    assert img.labels[2, 2] == 1 and img.labels[2, 3] == 2
    # clipped at the border
    img = points_to_image(np.array([[0, 0]]), np.array([1.0]), None, (6, 5), splat_radius=2)
    assert img.mask.sum() == 9 and img.mask[:3, :3].all()
    with pytest.raises(DataError, match="splat_radius"):
        points_to_image(pix, np.array([1.0, 1.0]), None, (6, 5), splat_radius=-1)


def test_points_to_image_from_projection() -> None:
    xyz = np.array([[5.0, 0.0, 0.0], [10.0, 0.0, 0.0], [-3.0, 0.0, 0.0]])
    pr = project_points(xyz, calib())
    img = points_to_image(pr, None, np.array([4, 5, 6], dtype=np.uint8))
    assert img.labels.shape == (H, W)
    assert img.mask.sum() == 1 and img.labels[240, 320] == 4 and img.depth[240, 320] == pytest.approx(5.0)
    with pytest.raises(DataError, match="labels"):
        points_to_image(pr, None, np.array([1, 2]))


def test_zbuffer_winners_order() -> None:
    lin = np.array([5, 2, 5, 2, 7])
    depth = np.array([3.0, 1.0, 2.0, 1.0, 9.0])
    assert zbuffer_winners(lin, depth).tolist() == [1, 2, 4]
    assert zbuffer_winners(np.zeros(0, np.int64), np.zeros(0)).tolist() == []


# ====================================================================== range images
def sample_points_in_fov(n: int, cfg: RangeProjection, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top, bottom = cfg.fov
    el = np.radians(rng.uniform(bottom + 0.01, top - 0.01, n))
    yaw = np.radians(rng.uniform(-180, 180, n))
    r = rng.uniform(1.0, 60.0, n)
    pts = np.stack([r * np.cos(el) * np.cos(yaw), r * np.cos(el) * np.sin(yaw), r * np.sin(el),
                    rng.uniform(0, 1, n)], axis=1)
    return pts.astype(np.float32)


def test_range_round_trip_every_pixel_maps_back() -> None:
    cfg = RangeProjection.preset("velodyne-hdl64e")
    pts = sample_points_in_fov(20000, cfg)
    ri = project_scan(pts, cfg)
    assert ri.range.shape == (64, 2048) and ri.xyz.shape == (64, 2048, 3) and ri.intensity.shape == (64, 2048)
    assert ri.index.dtype == np.int64 and ri.range.dtype == np.float32
    rows, cols = np.nonzero(ri.mask)
    idx = ri.index[rows, cols]
    assert (idx >= 0).all() and len(np.unique(idx)) == len(idx)
    assert (ri.point_row[idx] == rows).all() and (ri.point_col[idx] == cols).all()  # each pixel's point lies in it
    xyz, back = unproject(ri)
    np.testing.assert_array_equal(back, idx)
    np.testing.assert_allclose(xyz, pts[idx, :3], atol=1e-5)
    np.testing.assert_allclose(ri.range[ri.mask], np.linalg.norm(pts[idx, :3].astype(np.float64), axis=1), rtol=1e-6)
    np.testing.assert_allclose(ri.intensity[ri.mask], pts[idx, 3])
    # every point has a pixel; its pixel's winner is never farther than it
    assert (ri.point_row >= 0).all()
    rng_all = np.linalg.norm(pts[:, :3], axis=1)
    assert (ri.range[ri.point_row, ri.point_col] <= rng_all + 1e-4).all()
    assert (ri.range[~ri.mask] == 0).all() and (ri.index[~ri.mask] == -1).all()


def test_range_nearest_wins_and_known_pixels() -> None:
    cfg = RangeProjection.preset("velodyne-hdl64e")
    pts = np.array([[10.0, 0, 0], [5.0, 0, 0], [0.0, 7.0, 0.0], [0.0, -7.0, 0.0], [-3.0, 0.0, 0.0]])
    ri = project_scan(pts, cfg)
    row0 = int(np.floor(3.0 / 28.0 * 64))  # elevation 0 with +3 / -25 degrees
    assert ri.point_row.tolist() == [row0] * 5
    assert ri.point_col.tolist() == [1024, 1024, 512, 1536, 0]  # +x centre, +y (left) at W/4, -x at the edge
    assert ri.index[row0, 1024] == 1 and ri.range[row0, 1024] == pytest.approx(5.0)
    assert ri.mask.sum() == 4


def test_per_beam_elevations_and_fov_handling() -> None:
    cfg = RangeProjection(4, 8, elevations=(10.0, 5.0, 0.0, -10.0), out_of_fov="drop")
    assert cfg.fov == (12.5, -15.0)
    el = np.array([7.4, 7.6, -4.9, -5.1, 12.4, 12.6, -14.9, -15.1])
    rows, inside = cfg.rows_of(el)
    assert rows.tolist() == [1, 0, 2, 3, 0, 0, 3, 3]
    assert inside.tolist() == [True, True, True, True, True, False, True, False]
    e = np.radians(el)
    pts = np.stack([np.cos(e), np.zeros(8), np.sin(e)], axis=1) * 10
    dropped = project_scan(pts, cfg)
    assert dropped.point_row.tolist() == [1, 0, 2, 3, 0, -1, 3, -1]
    clipped = project_scan(pts, RangeProjection(4, 8, elevations=(10.0, 5.0, 0.0, -10.0)))
    assert clipped.point_row.tolist() == [1, 0, 2, 3, 0, 0, 3, 3]
    # uniform field of view: rows 28/64 degrees tall
    uni = RangeProjection(64, 2048, 3.0, -25.0, out_of_fov="drop")
    assert uni.rows_of(np.array([2.99, -24.99, 3.01]))[0].tolist() == [0, 63, 0]
    assert uni.rows_of(np.array([3.01]))[1].tolist() == [False]


def test_range_skips_zero_and_nonfinite_points() -> None:
    pts = np.array([[0, 0, 0, 0.5], [np.nan, 1, 1, 0.5], [5, 0, 0, 0.5], [500, 0, 0, 1]], dtype=np.float32)
    ri = project_scan(pts, RangeProjection.preset("velodyne-hdl64e", max_range=100.0))
    assert ri.point_row.tolist()[:2] == [-1, -1] and ri.point_row[3] == -1 and ri.point_row[2] >= 0
    assert ri.has_pixel.tolist() == [False, False, True, False]
    assert ri.mask.sum() == 1 and ri.num_points == 4
    assert project_scan(pts[:, :3], "velodyne-hdl64e").intensity is None


def make_organized(h: int, w: int, elev: np.ndarray, az_off: np.ndarray, seed: int = 0) -> np.ndarray:
    """A synthetic staggered organised scan, row-major (h, w), column c at yaw -c * 360 / w + offset."""
    rng = np.random.default_rng(seed)
    cols = np.arange(w)
    yaw = np.radians(-cols[None, :] * 360.0 / w + az_off[:, None])
    el = np.radians(elev)[:, None]
    r = rng.uniform(2, 40, (h, w))
    pts = np.stack([r * np.cos(el) * np.cos(yaw), r * np.cos(el) * np.sin(yaw), r * np.sin(el) + 0 * yaw,
                    rng.uniform(0, 1, (h, w))], axis=-1)
    pts[rng.random((h, w)) < 0.2] = 0.0  # no returns
    return pts.astype(np.float32)


ELEV8 = np.array([15.0, 11.0, 8.5, 6.0, 2.0, -1.0, -7.0, -15.0])
OFF8 = np.tile([-3.0, -1.0, 1.0, 3.0], 2)


def test_from_organized_layouts_and_flips() -> None:
    org = make_organized(8, 256, ELEV8, OFF8)  # (8, 256, 4) row-major
    row_major = org.reshape(-1, 4)
    col_major = org.transpose(1, 0, 2).reshape(-1, 4)
    flipped = org[::-1].reshape(-1, 4)
    ref = from_organized(row_major, 8, 256, layout="row-major")
    valid = np.linalg.norm(row_major[:, :3], axis=1) > 0
    assert ref.mask.sum() == valid.sum() and (ref.index[ref.mask] == np.flatnonzero(valid)).all()
    assert (ref.point_row[~valid] == -1).all()
    np.testing.assert_allclose(ref.range, np.linalg.norm(org[..., :3].astype(np.float64), axis=-1), rtol=1e-6)
    for pts, layout in [(row_major, "row-major"), (col_major, "column-major"), (flipped, "row-major")]:
        auto = from_organized(pts, 8, 256)
        np.testing.assert_array_equal(auto.xyz, ref.xyz)
        fixed = from_organized(pts, 8, 256, layout=layout)
        np.testing.assert_array_equal(fixed.xyz, ref.xyz)
    assert not np.array_equal(from_organized(flipped, 8, 256, flip_rows=False).xyz, ref.xyz)
    with pytest.raises(DataError, match="scan.bin: 100 points is not an organised 8 x 256 scan"):
        from_organized(row_major[:100], 8, 256, source="scan.bin")


def test_from_organized_equals_a_point_by_point_fill_and_streams_decide_the_layout_once() -> None:
    from terraseg.geometry.range_image import organized_layout
    from terraseg.models.points import OrganizedLayout, RangePredictor, build_point_model

    rng = np.random.default_rng(7)
    h, w = 6, 40
    pts = (rng.normal(size=(h * w, 4)) * 10).astype(np.float32)
    pts[::5] = 0.0
    pts[7, 1] = np.nan
    for layout in ("row-major", "column-major"):
        for flip in (False, True):
            img = from_organized(pts, h, w, layout=layout, flip_rows=flip)
            # reference: walk the points one by one
            index = np.full((h, w), -1)
            xyz = np.zeros((h, w, 3), np.float32)
            inten = np.zeros((h, w), np.float32)
            for i, p in enumerate(pts):
                r, c = (i // w, i % w) if layout == "row-major" else (i % h, i // h)
                r = h - 1 - r if flip else r
                d = float(np.sqrt(np.sum(p[:3].astype(np.float64) ** 2)))
                if np.isfinite(d) and d > 1e-3:
                    index[r, c], xyz[r, c], inten[r, c] = i, p[:3], p[3]
                    assert (img.point_row[i], img.point_col[i]) == (r, c)
                else:
                    assert img.point_row[i] == img.point_col[i] == -1
            np.testing.assert_array_equal(img.index, index)
            np.testing.assert_array_equal(img.mask, index >= 0)
            np.testing.assert_array_equal(img.xyz, xyz)
            np.testing.assert_array_equal(img.intensity, inten)
            np.testing.assert_allclose(img.range, np.linalg.norm(xyz.astype(np.float64), axis=-1), rtol=1e-6)
            assert img.range.dtype == img.xyz.dtype == np.float32
    # "auto" is decided from the scan; a predictor decides it on its first scan and reuses it
    org = make_organized(8, 256, ELEV8, OFF8)
    col_major = org[::-1].transpose(1, 0, 2).reshape(-1, 4)
    assert organized_layout(col_major, 8, 256) == ("column-major", True)
    assert organized_layout(col_major, 8, 256, "row-major", False) == ("row-major", False)
    net = build_point_model("salsanext", 20, preset="tiny")
    pred = RangePredictor(net, projection=OrganizedLayout(8, 256), probabilities=False)
    first = pred.project(col_major)
    assert pred._layouts == {OrganizedLayout(8, 256): ("column-major", True)}
    np.testing.assert_array_equal(first.xyz, from_organized(col_major, 8, 256).xyz)
    assert pred(col_major).labels.shape == (8 * 256,)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [3, 4, 5])
def test_from_organized_compiled_pass_equals_the_numpy_path(monkeypatch: pytest.MonkeyPatch, dtype: type,
                                                            channels: int) -> None:
    import terraseg.geometry.range_image as ri

    assert ri._HAVE_NUMBA, "numba is a dependency (pyproject.toml) but is not importable"
    rng = np.random.default_rng(3)
    h, w = 7, 96
    pts = (rng.normal(size=(h * w, channels)) * 20).astype(dtype)
    pts[::6, :3] = 0.0  # no returns
    pts[5, 0], pts[9, 2], pts[11, 1] = np.nan, np.inf, -np.inf
    pts[13, :3] = 4e-4  # inside min_range
    if channels > 3:
        pts[17, 3] = np.nan  # a return whose intensity is NaN keeps it
    for layout in ("row-major", "column-major"):
        for flip in (False, True):
            fast = ri.from_organized(pts, h, w, layout=layout, flip_rows=flip, source="scan")
            with monkeypatch.context() as m:
                m.setattr(ri, "_HAVE_NUMBA", False)
                ref = ri.from_organized(pts, h, w, layout=layout, flip_rows=flip, source="scan")
            for name in ("range", "xyz", "intensity", "mask", "index", "point_row", "point_col"):
                a, b = getattr(fast, name), getattr(ref, name)
                if b is None:
                    assert a is None, name
                    continue
                assert a.dtype == b.dtype and a.shape == b.shape, name
                np.testing.assert_array_equal(a, b, err_msg=name)
            assert fast.mask.sum() == h * w - len(range(0, h * w, 6)) - 4
    with pytest.raises(DataError, match="scan.bin: 100 points is not an organised 7 x 96 scan"):
        ri.from_organized(pts[:100], h, w, layout="row-major", flip_rows=False, source="scan.bin")
    with pytest.raises(DataError, match="scan.bin: expected an"):
        ri.from_organized(pts[:, :2], h, w, layout="row-major", flip_rows=False, source="scan.bin")


def test_organised_range_predictor_labels_no_return_points_with_fill() -> None:
    import torch

    from terraseg.models.points import OrganizedLayout, RangePredictor, build_point_model
    from terraseg.models.points.range_post import SOURCE_NETWORK, SOURCE_NONE

    org = make_organized(8, 256, ELEV8, OFF8)
    pts = org.reshape(-1, 4).copy()
    pts[3] = np.nan
    empty = ~(np.isfinite(pts[:, :3]).all(1) & (np.linalg.norm(np.nan_to_num(pts[:, :3]), axis=1) > 1e-3))
    assert 0 < empty.sum() < len(pts)
    torch.manual_seed(0)
    net = build_point_model("salsanext", 20, preset="tiny")
    pred = RangePredictor(net, projection=OrganizedLayout(8, 256), probabilities=False, fill=19)
    out = pred(pts)
    assert (out.labels[empty] == 19).all() and (out.source[empty] == SOURCE_NONE).all()
    assert (out.source[~empty] == SOURCE_NETWORK).all()
    image = pred.project(pts)
    labels_img = pred.predict_labels(image)
    np.testing.assert_array_equal(out.labels[~empty], labels_img[image.point_row[~empty], image.point_col[~empty]])


def test_fit_projection_reproduces_organised_layout() -> None:
    org = make_organized(8, 256, ELEV8, OFF8, seed=1).reshape(-1, 4)
    ref = from_organized(org, 8, 256)
    cfg = fit_projection(ref, name="unit")
    np.testing.assert_allclose(cfg.elevations, ELEV8, atol=1e-4)
    shuffled = np.random.default_rng(2).permutation(len(org))
    ri = project_scan(org[shuffled], cfg)  # an unorganised copy of the scan
    np.testing.assert_array_equal(shuffled[ri.index[ri.mask]], ref.index[ref.mask])
    assert (ri.mask == ref.mask).all()
    with pytest.raises(DataError, match="counter-clockwise"):
        fit_projection(from_organized(org.reshape(8, 256, 4)[:, ::-1].reshape(-1, 4), 8, 256))


def test_unproject_from_range_and_gather() -> None:
    cfg = RangeProjection(16, 64, fov_up=10.0, fov_down=-20.0)
    dirs = cfg.pixel_directions()
    assert dirs.shape == (16, 64, 3)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0)
    r = np.random.default_rng(3).uniform(1, 30, (16, 64, 1))
    pts = (dirs * r).reshape(-1, 3)  # points exactly at pixel centres
    ri = project_scan(pts, cfg)
    assert ri.mask.all()
    xyz, idx = unproject(ri, from_range=True)
    np.testing.assert_allclose(xyz, pts[idx], atol=1e-4)
    labels = np.arange(len(pts)) % 7
    img = ri.gather(labels, fill=255)
    assert img.shape == (16, 64) and (img == labels[ri.index]).all()
    np.testing.assert_array_equal(ri.to_points(img), labels)
    with pytest.raises(DataError, match="3 values"):
        ri.gather(np.arange(3))
    with pytest.raises(DataError, match="needs the range image's projection"):
        unproject(from_organized(pts, 16, 64), from_range=True)


def test_range_projection_config_errors_and_presets() -> None:
    with pytest.raises(ConfigError, match="strictly decreasing"):
        RangeProjection(3, 10, elevations=(1.0, 2.0, 0.0))
    with pytest.raises(ConfigError, match="2 beam elevations for 3 rows"):
        RangeProjection(3, 10, elevations=(1.0, 0.0))
    with pytest.raises(ConfigError, match="fov_up"):
        RangeProjection(3, 10, fov_up=-5.0, fov_down=5.0)
    with pytest.raises(ConfigError, match="unknown range projection preset 'hdl' \\(known: "):
        RangeProjection.preset("hdl")
    assert set(PRESETS) == {"velodyne-hdl64e", "velodyne-vls128", "ouster-os1-64", "rellis3d-os1-64",
                            "sim-os1-64", "sim-os1-64-1024", "sim-vlp-32", "sim-small", "sim-vlp-16"}
    vls = RangeProjection.preset("velodyne-vls128")
    assert (vls.height, vls.width) == (128, 1800)
    assert vls.elevations[0] == 15.0 and vls.elevations[-1] == -25.0
    hdl = RangeProjection.preset("velodyne-hdl64e", width=1024)
    assert (hdl.height, hdl.width, hdl.fov) == (64, 1024, (3.0, -25.0))


# ====================================================================== neighbours
def test_knn_matches_brute_force() -> None:
    rng = np.random.default_rng(4)
    ref = rng.uniform(-5, 5, (500, 3))
    query = rng.uniform(-5, 5, (120, 4))  # extra channel ignored
    dist, idx = knn(query, ref, k=6)
    assert dist.shape == (120, 6) and idx.dtype == np.int64
    d_all = np.linalg.norm(query[:, None, :3] - ref[None], axis=-1)
    order = np.argsort(d_all, axis=1)[:, :6]
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(dist, np.take_along_axis(d_all, order, axis=1))
    tree = build_index(ref)
    d1, i1 = knn(query, tree, k=1)
    assert i1.shape == (120, 1) and (i1[:, 0] == order[:, 0]).all()


def test_knn_with_duplicate_points_matches_brute_force() -> None:
    # many exact duplicates (like the zero points of an organised scan), -0.0 included
    rng = np.random.default_rng(6)
    ref = rng.integers(0, 4, (300, 3)).astype(np.float64)
    ref[:60] = 0.0
    ref[7] = [-0.0, 0.0, -0.0]
    index = build_index(ref)
    assert index.n == 300 and index.tree.n == len(np.unique(ref + 0.0, axis=0))
    query = rng.uniform(-1, 4, (150, 3))
    d_all = np.linalg.norm(query[:, None] - ref[None], axis=-1)
    for k in (1, 4, 70, 310):
        dist, idx = knn(query, index, k=k)
        kk = min(k, 300)
        np.testing.assert_allclose(dist[:, :kk], np.sort(d_all, axis=1)[:, :kk])
        assert (idx[:, :kk] >= 0).all() and (idx[:, kk:] == -1).all() and np.isinf(dist[:, kk:]).all()
        np.testing.assert_allclose(np.take_along_axis(d_all, idx[:, :kk], axis=1), dist[:, :kk])
        assert all(len(set(row[:kk].tolist())) == kk for row in idx)  # each reference point at most once
    dist, idx = knn(query, index, k=8, max_distance=0.8)
    assert ((idx >= 0).sum(axis=1) == np.minimum((d_all <= 0.8).sum(axis=1), 8)).all()
    assert build_index(rng.uniform(0, 1, (50, 3))).members is None  # no duplicates: plain tree


def test_knn_missing_neighbours() -> None:
    ref = np.array([[0.0, 0, 0], [1.0, 0, 0]])
    dist, idx = knn(np.array([[0.1, 0, 0]]), ref, k=3)
    assert idx.tolist() == [[0, 1, -1]] and np.isinf(dist[0, 2])
    dist, idx = knn(np.array([[0.1, 0, 0]]), ref, k=2, max_distance=0.5)
    assert idx.tolist() == [[0, -1]]
    with pytest.raises(DataError, match="NaN or infinite values \\(first at index 1\\)"):
        knn(np.zeros((1, 3)), np.array([[0.0, 0, 0], [np.nan, 0, 0]]))
    with pytest.raises(DataError, match="positive integer"):
        knn(np.zeros((1, 3)), ref, k=0)


def test_knn_vote_majority_distance_ignore() -> None:
    # query at origin; 1 near point of class 2, 3 farther points of class 5, 1 ignored point
    ref = np.array([[0.1, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.05, 0, 0]])
    lab = np.array([2, 5, 5, 5, 255], dtype=np.uint8)
    q = np.zeros((1, 3))
    assert knn_vote(q, ref, lab, k=4, num_classes=8, ignore_index=255).tolist() == [5]
    assert knn_vote(q, ref, lab, k=4, num_classes=8, weights="distance", ignore_index=255).tolist() == [2]
    labels, scores = knn_vote(q, ref, lab, k=5, num_classes=8, ignore_index=255, return_scores=True)
    assert labels.dtype == np.uint8
    np.testing.assert_allclose(scores[0, [2, 5]], [0.25, 0.75]) and scores.sum() == pytest.approx(1.0)
    # tie between classes 3 and 1 -> lower id; no voter within range -> fill
    tie = knn_vote(q, ref[:2], np.array([3, 1]), k=2, num_classes=4)
    assert tie.tolist() == [1]
    far = knn_vote(np.array([[100.0, 0, 0]]), ref, lab, k=2, num_classes=8, max_distance=1.0, fill=9,
                   ignore_index=255)
    assert far.tolist() == [9]
    with pytest.raises(DataError, match="label 8 at index 0 is outside \\[0, 8\\)"):
        knn_vote(q, ref[:1], np.array([8]), k=1, num_classes=8)
    with pytest.raises(DataError, match="2 labels|\\(5,\\) integer labels"):
        knn_vote(q, ref, np.array([1, 2]), k=1, num_classes=8)


def test_knn_vote_many_points_matches_loop() -> None:
    rng = np.random.default_rng(5)
    ref = rng.uniform(0, 10, (300, 3))
    lab = rng.integers(0, 4, 300)
    q = rng.uniform(0, 10, (50, 3))
    got = knn_vote(q, ref, lab, k=7, num_classes=4)
    _, idx = knn(q, ref, k=7)
    expected = [np.argmax(np.bincount(lab[row], minlength=4)) for row in idx]
    assert got.tolist() == expected


def test_nearest_labels() -> None:
    ref = np.array([[0.0, 0, 0], [10.0, 0, 0]])
    out = nearest_labels(np.array([[1.0, 0, 0], [9.0, 0, 0], [50.0, 0, 0]]), ref, np.array([4, 6], np.uint8),
                         max_distance=5.0, fill=255)
    assert out.tolist() == [4, 6, 255] and out.dtype == np.uint8


# ====================================================================== real data
def _rellis(shared: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, Calibration, Path]:
    from terraseg.io.calib import read_rellis_calibration
    from terraseg.io.labels import read_label_png
    from terraseg.io.scans import read_bin, read_label
    from terraseg.ontology import LabelMap

    d = shared / "rellis3d"
    pts = read_bin(d / "000104.bin")
    sem, _ = read_label(d / "000104.label", len(pts))
    mask = read_label_png(d / "frame000104-1581624663_149.png")
    lm = LabelMap.builtin("rellis3d-raw", "rellis3d")
    cal = read_rellis_calibration(d / "camera_info.txt", d / "transforms.yaml")
    return pts, lm(sem, source="000104.label"), lm(mask, source="mask png"), cal, d


@pytest.mark.realdata
def test_rellis_projection_agrees_with_mask(shared_data: Path) -> None:
    from terraseg.io.calib import read_pose_yaml

    pts, point_labels, mask, cal, d = _rellis(shared_data)
    assert mask.shape == (1200, 1920)
    pr = project_points(pts, cal)
    vis = pr.visible
    assert abs(len(vis) - 7429) <= 20
    plain = float((mask[pr.pixel[vis, 1], pr.pixel[vis, 0]] == point_labels[vis]).mean())
    assert plain >= 0.70  # 77.3 % measured

    res = labels_from_image(pts, cal, mask)  # z-buffer occlusion test, default settings
    assert res.valid.sum() >= 0.98 * len(vis)
    occl = float((res.labels[res.valid] == point_labels[res.valid]).mean())
    assert occl >= 0.70 and occl >= plain - 0.002  # not reduced (77.25 % vs 77.26 % measured)
    none = labels_from_image(pts, cal, mask, occlusion="none")
    np.testing.assert_array_equal(none.valid, pr.in_image)
    assert float((none.labels[none.valid] == point_labels[none.valid]).mean()) == pytest.approx(plain)

    # the direction guard: using the stored transform without inverting it gives ~0 %
    wrong = Calibration(K=cal.K, T_cam_lidar=read_pose_yaml(d / "transforms.yaml"), image_size=cal.image_size)
    pw = project_points(pts, wrong)
    vw = pw.visible
    agree_wrong = float((mask[pw.pixel[vw, 1], pw.pixel[vw, 0]] == point_labels[vw]).mean()) if len(vw) else 0.0
    assert agree_wrong < 0.02

    # points -> image: one pixel per distinct point pixel, labels of the nearest point
    img = points_to_image(pr, None, point_labels)
    assert img.mask.sum() == len(np.unique(pr.linear_index[vis]))
    hit = img.index[img.mask]
    assert (img.labels[img.mask] == point_labels[hit]).all()
    assert pr.in_image[hit].all()


@pytest.mark.realdata
def test_rellis_ouster_rows_spherical_vs_organised(shared_data: Path) -> None:
    from terraseg.io.scans import read_bin

    pts = read_bin(shared_data / "rellis3d" / "000104.bin")
    assert len(pts) == 131072
    org = from_organized(pts, 64, 2048)  # auto: the RELLIS files are column-major (64 beams per firing)
    assert org.mask.sum() == 131072 - 53364
    col_major = from_organized(pts, 64, 2048, layout="column-major")
    np.testing.assert_array_equal(org.index, col_major.index)
    el = np.degrees(np.arctan2(org.xyz[..., 2], np.hypot(org.xyz[..., 0], org.xyz[..., 1])))
    row_el = np.array([np.median(el[r][org.mask[r]]) for r in range(64)])
    assert (np.diff(row_el) < 0).all() and row_el[0] == pytest.approx(17.024, abs=0.01)

    ok = org.has_pixel
    # spherical projection with the unit's beam tables reproduces the organised scan exactly
    exact = project_scan(pts, "rellis3d-os1-64")
    np.testing.assert_array_equal(exact.index, org.index)
    assert (exact.point_row[ok] == org.point_row[ok]).all() and (exact.point_col[ok] == org.point_col[ok]).all()
    # fitting the tables from the organised scan gives the same
    fitted = project_scan(pts, fit_projection(org))
    np.testing.assert_array_equal(fitted.index, org.index)
    # the nominal uniform field of view is at most one row off (21.7 % exact on this unit)
    nominal = project_scan(pts, "ouster-os1-64")
    diff = np.abs(nominal.point_row[ok] - org.point_row[ok])
    assert (diff <= 1).mean() >= 0.99


@pytest.mark.realdata
def test_spvnas_hdl64e_range_projection(shared_data: Path) -> None:
    from terraseg.io.scans import read_bin, read_label

    pts = read_bin(shared_data / "spvnas" / "000000.bin")
    sem, _ = read_label(shared_data / "spvnas" / "000000.label", len(pts))
    assert len(pts) == 123389
    ri = project_scan(pts, "velodyne-hdl64e")
    kept = ri.mask.sum() / len(pts)
    assert 0.75 <= kept < 1.0  # 78.6 % of the points own a pixel; the rest share one with a nearer point
    assert (ri.point_row >= 0).all()
    inside = project_scan(pts, RangeProjection.preset("velodyne-hdl64e", out_of_fov="drop")).has_pixel.mean()
    assert inside > 0.99  # 99.6 % within +3 / -25 degrees
    xyz, idx = unproject(ri)
    np.testing.assert_allclose(xyz, pts[idx, :3], atol=1e-5)
    # back-projection of a per-pixel label image to all points: by pixel, and by 1-NN from the winners
    img = ri.gather(sem, fill=0)
    by_pixel = ri.to_points(img)
    by_knn = nearest_labels(pts, pts[idx], sem[idx])
    assert (by_pixel == sem).mean() > 0.9 and (by_knn == sem).mean() > (by_pixel == sem).mean()


def test_sim_projection_reproduces_the_simulated_sensor_grid(tmp_path: Path) -> None:
    """Every return of a simulated scan gets its own pixel with the matching sim-* preset."""
    from terraseg.datasets import SemanticKITTIDataset
    from terraseg.geometry.range_image import project_scan
    from terraseg.sim.dataset import simulate_dataset

    simulate_dataset(tmp_path, frames=2, seed=1, camera=None, lidar="small", progress=False,
                     splits={"train": 1.0})
    f = SemanticKITTIDataset(tmp_path / "lidar", split="train", ontology="sim")[0]
    ri = project_scan(f.points, "sim-small")
    assert ri.has_pixel.all()
    assert int(ri.mask.sum()) == len(f.points)  # no two returns share a pixel
