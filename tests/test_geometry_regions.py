"""Normals / curvature by PCA, region growing, voxel supervoxels, region purity and region borders."""

from __future__ import annotations

import numpy as np
import pytest

from terraseg.errors import DataError
from terraseg.geometry import (
    estimate_normals,
    merge_small_regions,
    region_boundaries,
    region_growing,
    region_purity,
    surface_variation,
    voxel_regions,
)


def _grid(step: float, lo: float, hi: float) -> np.ndarray:
    return np.arange(lo, hi, step) + step / 2


def two_planes_and_a_box(seed: int = 0, noise: float = 0.003) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground (z = 0, 8 x 8 m), a wall (x = 4.5) and a 1.2 m box on the ground.

    Returns points, object ids (0 ground, 1 wall, 2 box) and surface ids (box faces 2..6)."""
    rng = np.random.default_rng(seed)
    g = _grid(0.1, -4, 4)
    X, Y = np.meshgrid(g, g)
    ground = np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], 1)
    Yw, Zw = np.meshgrid(g, _grid(0.1, 0, 3))
    wall = np.stack([np.full(Yw.size, 4.5), Yw.ravel(), Zw.ravel()], 1)
    b = _grid(0.075, 0, 1.2)
    A, B = (a.ravel() for a in np.meshgrid(b, b))
    x0, y0, s = -1.6, -0.6, 1.2
    faces = [np.stack([x0 + A, y0 + B, np.full(A.size, s)], 1),
             np.stack([np.full(A.size, x0), y0 + A, B], 1), np.stack([np.full(A.size, x0 + s), y0 + A, B], 1),
             np.stack([x0 + A, np.full(A.size, y0), B], 1), np.stack([x0 + A, np.full(A.size, y0 + s), B], 1)]
    under = (ground[:, 0] > x0 - 0.05) & (ground[:, 0] < x0 + s + 0.05) & (ground[:, 1] > y0 - 0.05) \
        & (ground[:, 1] < y0 + s + 0.05)
    ground = ground[~under]
    pts = np.concatenate([ground, wall, *faces])
    obj = np.repeat([0, 1, 2], [len(ground), len(wall), 5 * len(A)])
    surf = np.repeat(np.arange(7), [len(ground), len(wall)] + [len(A)] * 5)
    pts += rng.normal(0, noise, pts.shape)
    return pts.astype(np.float32), obj, surf


def test_normals_and_curvature_of_a_plane_and_a_blob() -> None:
    rng = np.random.default_rng(0)
    g = _grid(0.1, 0, 3)
    X, Y = np.meshgrid(g, g)
    plane = np.stack([X.ravel(), Y.ravel(), np.full(X.size, 2.0)], 1)  # z = 2, above the origin
    shape = estimate_normals(plane, k=10)
    assert shape.valid.all() and shape.neighbors.shape == (len(plane), 10)
    # oriented towards the viewpoint (the origin, below the plane): n = (0, 0, -1)
    np.testing.assert_allclose(shape.normals, np.tile([0, 0, -1], (len(plane), 1)), atol=1e-5)
    np.testing.assert_allclose(shape.curvature, 0.0, atol=1e-6)
    up = estimate_normals(plane, k=10, viewpoint=None)
    np.testing.assert_allclose(up.normals[:, 2], 1.0, atol=1e-5)
    blob = rng.normal(0, 1, (3000, 3))
    sv = surface_variation(blob, k=30)
    assert 0.15 < float(np.median(sv)) < 1 / 3 + 1e-6  # isotropic: near 1/3
    np.testing.assert_allclose(estimate_normals(blob, k=30).curvature, sv)


def test_degenerate_neighbourhoods_are_invalid() -> None:
    pts = np.zeros((20, 3))
    pts[10:, 0] = np.arange(10)  # ten collinear points, ten identical ones
    shape = estimate_normals(pts, k=5)
    assert not shape.valid.any()
    assert (shape.normals == 0).all() and np.allclose(shape.curvature, 1 / 3)
    with pytest.raises(DataError, match="k must be an integer >= 3"):
        estimate_normals(pts, k=2)


def test_region_growing_recovers_two_planes_and_a_box() -> None:
    pts, obj, surf = two_planes_and_a_box()
    regions = region_growing(pts, max_radius=None)
    assert regions.dtype == np.int64 and regions.min() == 0
    # the ground, the wall and the box's five visible faces, nothing else
    assert regions.max() + 1 == 7
    q = region_purity(regions, surf)
    assert q.purity > 0.99 and q.regions == 7
    for s in range(7):  # every surface is essentially one region
        _, counts = np.unique(regions[surf == s], return_counts=True)
        assert counts.max() / counts.sum() > 0.98
    # objects never share a region
    assert region_purity(regions, obj).purity > 0.995
    # too strict an angle fragments the box-ground edges less than it fragments noisy surfaces
    strict = region_growing(pts, smoothness_deg=0.5, min_size=1)
    assert strict.max() + 1 > 50
    # the default 3 m radius around each seed cuts the 8 x 8 m ground and the wall into pieces,
    # and no piece crosses an object border
    bounded = region_growing(pts)
    assert bounded.max() + 1 > 10 and region_purity(bounded, obj).purity > 0.995
    for r in np.unique(bounded):
        p = pts[bounded == r]
        assert (np.ptp(p, axis=0) <= 6.0 + 0.05).all()  # within a 3 m ball around the seed


def test_region_growing_curvature_test_and_seed_mode() -> None:
    pts, _, surf = two_planes_and_a_box()
    # curvature threshold 0: no point continues the growth, regions are seeds plus neighbours
    tiny = region_growing(pts, curvature_threshold=0.0, min_size=1)
    assert tiny.max() + 1 > 300
    seeded = region_growing(pts, smooth_mode=False, max_radius=None)
    assert region_purity(seeded, surf).purity > 0.99
    with pytest.raises(DataError, match="smoothness_deg"):
        region_growing(pts, smoothness_deg=120)
    with pytest.raises(DataError, match="min_size"):
        region_growing(pts, min_size=0)
    with pytest.raises(DataError, match="max_radius"):
        region_growing(pts, max_radius=0.0)
    assert region_growing(np.zeros((0, 3))).shape == (0,)


def test_merge_small_regions() -> None:
    regions = np.array([0, 0, 0, 1, 2, 2, 2])
    nb = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 3], [3, 4, 2], [4, 5, 3], [5, 4, 6], [6, 5, 4]])
    out = merge_small_regions(regions, nb, 2)
    # the singleton region {3} joins region 2 (its nearest neighbour 4 is in a large region)
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(merge_small_regions(regions, nb, 1), [0, 0, 0, 1, 2, 2, 2])


def test_voxel_regions() -> None:
    pts = np.array([[0.1, 0.1, 0.1], [0.9, 0.2, 0.3], [1.1, 0.1, 0.1], [-0.1, 0.0, 0.0], [1.5, 0.9, 0.2]])
    r = voxel_regions(pts, 1.0)
    assert r[0] == r[1] and r[2] == r[4] and len({r[0], r[2], r[3]}) == 3 and r.max() == 2
    assert len(np.unique(voxel_regions(pts, 10.0))) == 2  # -0.1 is in the cell below 0
    with pytest.raises(DataError, match="voxel_size"):
        voxel_regions(pts, 0.0)


def test_region_purity_hand_values() -> None:
    regions = np.array([0, 0, 0, 1, 1, 2])
    labels = np.array([1, 1, 2, 3, 4, 255], dtype=np.uint8)
    q = region_purity(regions, labels)
    # region 0: majority 1 (2 of 3), region 1: tie 3/4 -> 1 of 2, region 2: 1 of 1
    assert q.purity == pytest.approx(4 / 6) and q.regions == 3 and q.points == 6 and q.mean_size == 2.0
    q = region_purity(regions, labels, ignore_index=255)
    assert q.purity == pytest.approx(3 / 5) and q.regions == 2 and q.points == 5
    assert region_purity(regions, np.full(6, 255, np.uint8), ignore_index=255).points == 0
    with pytest.raises(DataError, match="same length"):
        region_purity(regions, labels[:3])


def test_region_boundaries() -> None:
    i = np.arange(10, dtype=np.float64)
    x = i + 0.01 * i * i  # growing gaps: every point's nearest other point is the previous one
    pts = np.stack([x, np.zeros(10), np.zeros(10)], 1)
    regions = (i >= 5).astype(np.int64)
    b = region_boundaries(pts, regions, k=2)  # itself and its nearest: only 5 sees across
    np.testing.assert_array_equal(np.flatnonzero(b), [5])
    b3 = region_boundaries(pts, regions, k=3)  # itself and both sides
    np.testing.assert_array_equal(np.flatnonzero(b3), [4, 5])
    # a radius below the point spacing sees no neighbour
    assert not region_boundaries(pts, regions, k=3, max_distance=0.5).any()
    pts_s, _, surf = two_planes_and_a_box()
    share = region_boundaries(pts_s, region_growing(pts_s, max_radius=None)).mean()
    assert 0.01 < share < 0.15


@pytest.mark.realdata
def test_regions_on_the_real_rellis_scan(shared_data) -> None:  # type: ignore[no-untyped-def]
    from terraseg.io.scans import read_bin, read_label

    d = shared_data / "rellis3d"
    pts = read_bin(d / "000104.bin")
    sem, _ = read_label(d / "000104.label", len(pts))
    keep = np.abs(pts[:, :3]).sum(axis=1) > 0  # 53,364 no-return zero points
    pts, sem = pts[keep, :3], sem[keep]
    grown = region_growing(pts)
    q = region_purity(grown, sem, ignore_index=0)
    # measured: purity 0.898 with 886 regions for the 77,708 points (62,788 labelled), 21 % on region borders
    assert q.purity > 0.85 and 300 < q.regions < 5000
    vox = region_purity(voxel_regions(pts, 1.0), sem, ignore_index=0)
    assert vox.purity > q.purity and vox.regions > q.regions
    share = region_boundaries(pts, grown).mean()
    assert 0.05 < share < 0.6
    sv = surface_variation(pts)
    assert sv.shape == (len(pts),) and 0 <= sv.min() and sv.max() <= 1 / 3 + 1e-6
