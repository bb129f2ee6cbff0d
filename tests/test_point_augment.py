"""Point-cloud augmentation: labels stay with their points, the geometry is a similarity of
z-rotation, mirroring and isotropic scale (plus bounded jitter), dropout stays within bounds,
seeded calls repeat, and bad configs fail with one clear message."""

from __future__ import annotations

import numpy as np
import pytest

from terraseg.errors import ConfigError, DataError
from terraseg.training.point_augment import PointAugConfig, PointAugment

NO_NOISE = {"scale": (1.0, 1.0), "jitter_sigma": 0.0, "flip_x": 0.0, "flip_y": 0.0}


def cloud(n: int = 4000, seed: int = 0) -> np.ndarray:
    """(n, 5) float32: x, y, z in a 40 x 40 x 4 m box, intensity, ring."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-20, -20, -2], [20, 20, 2], (n, 3))
    return np.concatenate([xyz, rng.uniform(0, 1, (n, 1)), rng.integers(0, 64, (n, 1))], axis=1).astype(np.float32)


def test_labels_follow_points_and_inputs_are_untouched() -> None:
    pts = cloud()
    labels = np.arange(len(pts), dtype=np.int64)  # each label names its original point
    before_p, before_l = pts.copy(), labels.copy()
    aug = PointAugment(PointAugConfig(dropout=0.3))
    out, lab, kept = aug(pts, labels, np.random.default_rng(7))
    np.testing.assert_array_equal(pts, before_p)
    np.testing.assert_array_equal(labels, before_l)
    assert out.dtype == np.float32 and out.shape == (len(kept), 5)
    assert kept.dtype == np.int64 and (np.diff(kept) > 0).all()
    np.testing.assert_array_equal(lab, kept)
    np.testing.assert_array_equal(out[:, 3:], pts[kept, 3:])  # intensity and ring untouched
    # each kept point is its original one transformed: recover the similarity by least squares
    src, dst = pts[kept, :3].astype(np.float64), out[:, :3].astype(np.float64)
    m, *_ = np.linalg.lstsq(src, dst, rcond=None)
    assert np.abs(src @ m - dst).max() < 0.06  # only the clipped jitter (<= 0.05 m per axis) remains


def test_rotation_and_flips_preserve_xy_norm_and_z() -> None:
    pts = cloud()
    for seed in range(5):
        cfg = PointAugConfig(rotate_z=True, scale=(1.0, 1.0), flip_x=0.5, flip_y=0.5, jitter_sigma=0.0)
        out, _, kept = PointAugment(cfg)(pts, None, np.random.default_rng(seed))
        assert len(kept) == len(pts)
        np.testing.assert_allclose(np.hypot(out[:, 0], out[:, 1]), np.hypot(pts[:, 0], pts[:, 1]), rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(out[:, 2], pts[:, 2], atol=1e-6)
    # the yaw is really random: one point's azimuth differs across seeds
    aug = PointAugment(PointAugConfig(**NO_NOISE))
    firsts = [aug(pts[:1], None, np.random.default_rng(s))[0][0] for s in range(6)]
    assert len({round(float(np.arctan2(p[1], p[0])), 3) for p in firsts}) == 6


def test_flip_probabilities_one_mirror_exactly() -> None:
    pts = cloud(100)
    cfg = PointAugConfig(rotate_z=False, scale=(1.0, 1.0), flip_x=1.0, flip_y=0.0, jitter_sigma=0.0)
    out, _, _ = PointAugment(cfg)(pts, None, np.random.default_rng(0))
    np.testing.assert_array_equal(out[:, 0], -pts[:, 0])
    np.testing.assert_array_equal(out[:, 1:], pts[:, 1:])


def test_scale_stays_in_range_and_is_isotropic() -> None:
    pts = cloud(200)
    scales = []
    for seed in range(40):
        cfg = PointAugConfig(rotate_z=True, scale=(0.8, 1.2), flip_x=0.5, flip_y=0.5, jitter_sigma=0.0)
        out, _, _ = PointAugment(cfg)(pts, None, np.random.default_rng(seed))
        ratio = np.linalg.norm(out[:, :3], axis=1) / np.linalg.norm(pts[:, :3], axis=1)
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)  # one factor for all points and axes
        np.testing.assert_allclose(out[:, 2] / pts[:, 2], ratio[0], rtol=1e-4)  # z never flips
        scales.append(ratio[0])
    assert 0.8 <= min(scales) and max(scales) <= 1.2
    assert max(scales) - min(scales) > 0.2  # spread over the range


def test_jitter_is_clipped() -> None:
    pts = cloud(5000)
    cfg = PointAugConfig(rotate_z=False, scale=(1.0, 1.0), flip_x=0.0, flip_y=0.0, jitter_sigma=0.5, jitter_clip=0.1)
    out, _, _ = PointAugment(cfg)(pts, None, np.random.default_rng(3))
    d = out[:, :3] - pts[:, :3]
    assert np.abs(d).max() <= 0.1 + 1e-5
    assert (np.abs(d) > 0.0999).mean() > 0.5  # sigma >> clip: most offsets sit at the clip


def test_dropout_fraction_bounds() -> None:
    pts = cloud(1000)
    kept_counts = []
    for seed in range(50):
        out, _, kept = PointAugment(PointAugConfig(dropout=0.2))(pts, None, np.random.default_rng(seed))
        assert len(out) == len(kept)
        kept_counts.append(len(kept))
    assert min(kept_counts) >= 800 and max(kept_counts) <= 1000
    assert max(kept_counts) - min(kept_counts) > 50  # the fraction varies between calls
    no_drop = PointAugment(PointAugConfig(dropout=0.0))(pts, None, np.random.default_rng(0))[2]
    np.testing.assert_array_equal(no_drop, np.arange(1000))
    single = PointAugment(PointAugConfig(dropout=0.99))(pts[:1], np.array([5]), np.random.default_rng(0))
    assert single[1].tolist() == [5]  # at least one point is kept
    empty_out, empty_lab, empty_kept = PointAugment()(pts[:0], np.zeros(0), np.random.default_rng(0))
    assert empty_out.shape == (0, 5) and empty_lab.shape == (0,) and empty_kept.shape == (0,)


def test_determinism_with_seed() -> None:
    pts = cloud()
    aug = PointAugment(PointAugConfig(dropout=0.1))
    a = aug(pts, np.arange(len(pts)), np.random.default_rng(11))
    b = aug(pts, np.arange(len(pts)), np.random.default_rng(11))
    c = aug(pts, np.arange(len(pts)), np.random.default_rng(12))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])


def test_config_from_dict_and_errors() -> None:
    cfg = PointAugConfig.from_dict({"scale": [0.9, 1.1], "dropout": 0.1, "rotate_z": False})
    assert cfg.scale == (0.9, 1.1) and cfg.dropout == 0.1 and cfg.rotate_z is False and cfg.flip_x == 0.5
    assert PointAugConfig.from_dict(cfg.to_dict()) == cfg
    assert PointAugConfig.from_dict(None) == PointAugConfig()
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 'rotate'"):
        PointAugConfig.from_dict({"rotate": True})
    with pytest.raises(ConfigError, match="scale must be a pair"):
        PointAugConfig.from_dict({"scale": 1.0})
    with pytest.raises(ConfigError, match="0 < low <= high"):
        PointAugConfig.from_dict({"scale": [1.2, 0.8]})
    with pytest.raises(ConfigError, match="flip_x is a probability"):
        PointAugConfig.from_dict({"flip_x": 1.5})
    with pytest.raises(ConfigError, match="jitter_sigma must be a number"):
        PointAugConfig.from_dict({"jitter_sigma": "0.01"})
    with pytest.raises(ConfigError, match="dropout is a fraction in"):
        PointAugConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="rotate_z must be true or false"):
        PointAugConfig.from_dict({"rotate_z": "yes"})
    with pytest.raises(ConfigError, match="expected a mapping"):
        PointAugConfig.from_dict([("dropout", 0.1)])  # type: ignore[arg-type]


def test_bad_inputs() -> None:
    aug = PointAugment()
    with pytest.raises(DataError, match=r"expected \(N, C>=3\) numeric points"):
        aug(np.zeros((10, 2), dtype=np.float32), None, np.random.default_rng(0))
    with pytest.raises(DataError, match="9 labels for 10 points"):
        aug(np.zeros((10, 3), dtype=np.float32), np.zeros(9), np.random.default_rng(0))
