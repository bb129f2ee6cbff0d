"""Camera augmentation: image/mask alignment, crop/pad, flip, scale, eval determinism, seeds, configs."""

from __future__ import annotations

import os
import pickle

import cv2
import numpy as np
import pytest

from terraseg.errors import ConfigError, DataError
from terraseg.models.image.preprocess import Normalization
from terraseg.training.augment import (
    ImageAugConfig,
    ImageTransform,
    build_image_transform,
    photometric_distortion,
    resize_mask_nearest,
)

IGN = 255
# class id -> colour; well separated so a pixel's class can be read from its colour
PALETTE = np.array([[20, 20, 20], [230, 30, 30], [30, 230, 30], [30, 30, 230], [230, 230, 30], [30, 230, 230]],
                   dtype=np.uint8)
IGNORE_COLOUR = np.array([128, 0, 128], dtype=np.uint8)


def _pattern(h: int = 96, w: int = 128, block: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blocky mask of classes 0..5 (some ignore blocks) and an image whose colour encodes the class."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, len(PALETTE), (h // block + 1, w // block + 1))
    grid[rng.random(grid.shape) < 0.1] = IGN
    mask = np.kron(grid, np.ones((block, block), dtype=np.int64))[:h, :w].astype(np.uint8)
    image = np.where((mask == IGN)[..., None], IGNORE_COLOUR, PALETTE[np.minimum(mask, len(PALETTE) - 1)])
    return image.astype(np.uint8), mask


def _denorm(x: np.ndarray, norm: Normalization = Normalization()) -> np.ndarray:
    """(3, h, w) normalised float -> (h, w, 3) float on the 0..255 scale."""
    m = np.asarray(norm.mean).reshape(3, 1, 1)
    s = np.asarray(norm.std).reshape(3, 1, 1)
    return ((x * s + m) * 255.0).transpose(1, 2, 0)


def _uniform3x3(mask: np.ndarray) -> np.ndarray:
    """True where a pixel's whole 3x3 neighbourhood has its id (border pixels: never; the image there
    blends in pixels from outside the crop)."""
    p = np.pad(mask.astype(np.int64), 1, constant_values=-1)
    h, w = mask.shape
    ok = np.ones_like(mask, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            ok &= p[dy:dy + h, dx:dx + w] == mask
    return ok


def _check_aligned(out_img: np.ndarray, out_mask: np.ndarray) -> int:
    """Image and mask agree; returns the number of interior pixels checked.

    1. every labelled pixel inside a uniform 3x3 mask neighbourhood has its class colour;
    2. every pixel whose colour is a pure palette (or ignore) colour has that class in the mask. The
       colours are vertices of their convex hull, so a bilinear blend is pure only when all its
       source pixels have that colour, and then the nearest one (the mask's) must too: this catches
       a mask shifted by even one pixel.
    """
    rgb = _denorm(out_img)
    labelled = (out_mask != IGN) & _uniform3x3(out_mask)
    expected = PALETTE[out_mask[labelled]].astype(np.float64)
    err = np.abs(rgb[labelled] - expected).max(axis=1)
    assert err.max() <= 3.0, f"{int((err > 3).sum())} interior pixels disagree with their mask class"
    colours = np.vstack([PALETTE, IGNORE_COLOUR[None]]).astype(np.float64)
    ids = np.array([*range(len(PALETTE)), IGN])
    d = np.abs(rgb[:, :, None, :] - colours[None, None]).max(axis=3)
    pure = d.min(axis=2) <= 3.0
    wrong = pure & (out_mask != ids[d.argmin(axis=2)])
    assert not wrong.any(), f"{int(wrong.sum())} pure-colour pixels carry another class in the mask"
    return int(labelled.sum())


@pytest.mark.parametrize("cfg", [
    ImageAugConfig(photometric=False),
    ImageAugConfig(photometric=False, crop=(64, 80), scale=(0.5, 2.0), hflip=0.5),
    ImageAugConfig(photometric=False, crop=(200, 300), scale=(0.5, 1.5)),  # mostly padded
    ImageAugConfig(photometric=False, crop=None, scale=(0.6, 1.7), hflip=1.0),
    ImageAugConfig(photometric=False, base_size=(120, 100), crop=(64, 64), scale=(0.75, 1.25)),
    ImageAugConfig(photometric=False, crop=(48, 48), cat_max_ratio=0.6),
])
def test_train_geometry_keeps_image_and_mask_aligned(cfg: ImageAugConfig) -> None:
    image, mask = _pattern()
    t = build_image_transform(cfg, train=True)
    checked = 0
    for seed in range(12):
        out_img, out_mask = t(image, mask, np.random.default_rng(seed))
        assert out_img.dtype == np.float32 and out_mask.dtype == np.int64
        assert out_img.shape[1:] == out_mask.shape and out_img.shape[0] == 3
        if cfg.crop is not None:
            assert out_mask.shape == cfg.crop
        # ids are copied, never interpolated
        assert set(np.unique(out_mask).tolist()) <= set(np.unique(mask).tolist()) | {IGN}
        checked += _check_aligned(out_img, out_mask)
    assert checked > 1000


def test_alignment_check_detects_a_one_pixel_shift() -> None:
    """The alignment check used above is sharp enough to catch an off-by-one mask."""
    image, mask = _pattern()
    t = build_image_transform(ImageAugConfig(photometric=False, crop=None, scale=(1, 1), hflip=0.0), train=True)
    out_img, out_mask = t(image, mask, np.random.default_rng(0))
    _check_aligned(out_img, out_mask)
    with pytest.raises(AssertionError, match="pure-colour pixels"):
        _check_aligned(out_img[:, :, 1:], out_mask[:, :-1])  # mask one pixel to the right
    with pytest.raises(AssertionError, match="pure-colour pixels"):
        _check_aligned(out_img[:, :-1, :], out_mask[1:, :])  # mask one pixel up


def test_identity_scale_and_flip_are_exact() -> None:
    image, mask = _pattern(40, 56)
    norm = Normalization()
    t = build_image_transform(ImageAugConfig(scale=(1, 1), crop=None, hflip=1.0, photometric=False), train=True)
    out_img, out_mask = t(image, mask, np.random.default_rng(3))
    np.testing.assert_array_equal(out_mask, mask[:, ::-1].astype(np.int64))
    np.testing.assert_allclose(out_img, norm.numpy(np.ascontiguousarray(image[:, ::-1])), atol=1e-5)
    t0 = build_image_transform(ImageAugConfig(scale=(1, 1), crop=None, hflip=0.0, photometric=False), train=True)
    out_img, out_mask = t0(image, mask, np.random.default_rng(3))
    np.testing.assert_array_equal(out_mask, mask)
    np.testing.assert_allclose(out_img, norm.numpy(image), atol=1e-5)


def test_double_scale_matches_opencv_resize_and_pixel_replication() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    mask = rng.integers(0, 7, (30, 44), dtype=np.uint8)
    t = build_image_transform(ImageAugConfig(scale=(2, 2), crop=None, hflip=0.0, photometric=False), train=True)
    out_img, out_mask = t(image, mask, rng)
    assert out_mask.shape == (60, 88)
    np.testing.assert_array_equal(out_mask, np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1))
    ref = cv2.resize(image, (88, 60), interpolation=cv2.INTER_LINEAR)
    assert np.abs(_denorm(out_img) - ref).max() <= 1.01


def test_crop_of_upscaled_image_samples_the_right_window() -> None:
    """A crop of a 1.5x image equals the matching window of the fully resized image (up to a sub-pixel shift)."""
    image, mask = _pattern(64, 64, block=16)
    t = build_image_transform(ImageAugConfig(scale=(1.5, 1.5), crop=(40, 40), hflip=0.0, photometric=False), True)
    full_mask = resize_mask_nearest(mask, (96, 96))
    for seed in range(10):
        _, out_mask = t(image, mask, np.random.default_rng(seed))
        hits = [(y, x) for y in range(0, 57) for x in range(0, 57)
                if np.array_equal(full_mask[y:y + 40, x:x + 40], out_mask)]
        assert hits, "the crop is not a window of the scaled mask"


def test_pad_values_and_sizes() -> None:
    image, mask = _pattern(40, 50)
    t = build_image_transform(ImageAugConfig(scale=(1, 1), crop=(64, 80), hflip=0.0, photometric=False), True)
    out_img, out_mask = t(image, mask, np.random.default_rng(0))
    assert out_img.shape == (3, 64, 80) and out_mask.shape == (64, 80)
    assert (out_mask[40:, :] == IGN).all() and (out_mask[:, 50:] == IGN).all()
    np.testing.assert_array_equal(out_mask[:40, :50], mask)
    assert (out_img[:, 40:, :] == 0).all() and (out_img[:, :, 50:] == 0).all()  # 0 = the mean colour
    np.testing.assert_allclose(out_img[:, :40, :50], Normalization().numpy(image), atol=1e-5)
    # custom ignore id pads with that id
    t = build_image_transform(ImageAugConfig(scale=(1, 1), crop=(64, 80), ignore_id=0, photometric=False), True)
    _, out_mask = t(image, mask, np.random.default_rng(0))
    assert (out_mask[40:, :] == 0).all()


def test_scale_range_sets_output_size_without_crop() -> None:
    image, mask = _pattern(40, 60)
    t = build_image_transform(ImageAugConfig(scale=(0.5, 2.0), crop=None, photometric=False), True)
    sizes = {t(image, mask, np.random.default_rng(s))[1].shape for s in range(30)}
    assert all(20 <= h <= 80 and 30 <= w <= 120 and abs(w / h - 1.5) < 0.05 for h, w in sizes)
    assert len(sizes) > 10


def test_base_size_then_scale() -> None:
    image, mask = _pattern(40, 60)
    t = build_image_transform(ImageAugConfig(base_size=(100, 50), scale=(2, 2), crop=None, photometric=False), True)
    out_img, out_mask = t(image, mask, np.random.default_rng(0))
    assert out_mask.shape == (200, 100)


def test_cat_max_ratio_avoids_single_class_crops() -> None:
    mask = np.zeros((100, 100), dtype=np.uint8)
    mask[40:60, 40:60] = 1
    image = PALETTE[mask]

    def single_class_crops(ratio: float) -> int:
        t = build_image_transform(ImageAugConfig(scale=(1, 1), crop=(30, 30), cat_max_ratio=ratio, photometric=False),
                                  True)
        return sum(len(np.unique(t(image, mask, np.random.default_rng(s))[1])) == 1 for s in range(40))

    plain, retried = single_class_crops(1.0), single_class_crops(0.95)
    assert plain >= 15 and retried < plain // 3


def test_eval_is_deterministic_and_resizes_with_nearest() -> None:
    image, mask = _pattern(40, 60)
    t = build_image_transform(ImageAugConfig(base_size=(50, 70)), train=False)
    a_img, a_mask = t(image, mask)
    b_img, b_mask = t(image, mask, np.random.default_rng(1))
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    assert a_img.shape == (3, 50, 70) and a_mask.shape == (50, 70) and a_mask.dtype == np.int64
    np.testing.assert_array_equal(a_mask, resize_mask_nearest(mask, (50, 70)))
    ref = cv2.resize(image, (70, 50), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(a_img, Normalization().numpy(ref), atol=1e-5)
    _check_aligned(a_img, a_mask)
    # native size: only normalisation
    t = build_image_transform(ImageAugConfig(), train=False)
    out_img, out_mask = t(image, mask)
    np.testing.assert_allclose(out_img, Normalization().numpy(image), atol=1e-5)
    np.testing.assert_array_equal(out_mask, mask)


def test_custom_normalization_is_used() -> None:
    image, mask = _pattern(16, 16)
    norm = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out_img, _ = build_image_transform(ImageAugConfig(), train=False, norm=norm)(image, mask)
    np.testing.assert_allclose(out_img, image.transpose(2, 0, 1) / 127.5 - 1.0, atol=1e-5)


def test_same_seed_same_output_and_seeds_differ() -> None:
    image, mask = _pattern(80, 100)
    cfg = ImageAugConfig(crop=(48, 64), blur=0.5, cat_max_ratio=0.8)
    t = build_image_transform(cfg, train=True)
    a = t(image, mask, np.random.default_rng(7))
    b = t(image, mask, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    outs = [t(image, mask, np.random.default_rng(s))[0] for s in range(6)]
    assert len({o.tobytes() for o in outs}) == 6
    # pickling (DataLoader workers) keeps the behaviour
    t2 = pickle.loads(pickle.dumps(t))
    np.testing.assert_array_equal(t2(image, mask, np.random.default_rng(7))[0], a[0])


def test_mask_none_and_wide_ids() -> None:
    image, _ = _pattern(40, 60)
    t = build_image_transform(ImageAugConfig(crop=(32, 32)), train=True)
    out_img, out_mask = t(image, None, np.random.default_rng(0))
    assert out_img.shape == (3, 32, 32) and out_mask is None
    mask = np.full((40, 60), 1000, dtype=np.uint16)
    _, out_mask = t(image, mask, np.random.default_rng(0))
    assert set(np.unique(out_mask).tolist()) <= {1000, IGN}
    assert build_image_transform(ImageAugConfig(), False)(image, None)[1] is None


def _mmseg_photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Straight transcription of mmseg 0.x PhotoMetricDistortion (same draw order), for comparison."""
    def convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    if rng.integers(2):
        img = convert(img, beta=rng.uniform(-32, 32))
    mode = rng.integers(2)
    contrast = rng.uniform(0.5, 1.5) if rng.integers(2) else None
    if mode == 1 and contrast is not None:
        img = convert(img, alpha=contrast)
    sat = rng.uniform(0.5, 1.5) if rng.integers(2) else None
    hue = int(rng.integers(-18, 19)) if rng.integers(2) else None
    if sat is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = convert(hsv[..., 1], alpha=sat)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if hue is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + hue) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if mode == 0 and contrast is not None:
        img = convert(img, alpha=contrast)
    return img


def test_photometric_matches_mmseg_semantics() -> None:
    base = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    changed = 0
    for seed in range(40):
        ours = photometric_distortion(base, np.random.default_rng(seed))
        ref = _mmseg_photometric(base, np.random.default_rng(seed))
        assert ours.dtype == np.uint8 and ours.shape == base.shape
        diff = np.abs(ours.astype(int) - ref)
        assert diff.mean() < 1.0, seed  # only HSV round-trip rounding differs (one conversion instead of two)
        changed += int(not np.array_equal(ours, base))
    assert changed >= 30
    before = base.copy()
    photometric_distortion(base, np.random.default_rng(1))
    np.testing.assert_array_equal(base, before)  # input untouched


def test_photometric_does_not_touch_mask() -> None:
    image, mask = _pattern()
    t = build_image_transform(ImageAugConfig(scale=(1, 1), crop=None, hflip=0.0, photometric=True, blur=1.0), True)
    for s in range(5):
        _, out_mask = t(image, mask, np.random.default_rng(s))
        np.testing.assert_array_equal(out_mask, mask)


def test_inputs_are_not_modified() -> None:
    image, mask = _pattern()
    i0, m0 = image.copy(), mask.copy()
    build_image_transform(ImageAugConfig(blur=1.0), True)(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(image, i0)
    np.testing.assert_array_equal(mask, m0)


def test_bad_inputs_raise_data_error() -> None:
    t = build_image_transform(ImageAugConfig(), True)
    image, mask = _pattern(20, 20)
    with pytest.raises(DataError, match="uint8"):
        t(image.astype(np.float32), mask)
    with pytest.raises(DataError, match=r"image is 20x20 but mask is 21x20"):
        t(image, np.zeros((20, 21), np.uint8))
    with pytest.raises(DataError, match="integer"):
        t(image, mask.astype(np.float32))


# ---------------------------------------------------------------------------- albumentations hook
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def test_albumentations_extra_is_seeded_from_rng() -> None:
    A = pytest.importorskip("albumentations")
    image, mask = _pattern(64, 64)
    extra = A.Compose([A.GaussNoise(std_range=(0.05, 0.1), p=1.0)])
    t = ImageTransform(ImageAugConfig(crop=(32, 32), photometric=False), True, extra=extra)
    a = t(image, mask, np.random.default_rng(3))
    b = t(image, mask, np.random.default_rng(3))
    c = t(image, mask, np.random.default_rng(4))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    plain = ImageTransform(ImageAugConfig(crop=(32, 32), photometric=False), True)(image, mask, np.random.default_rng(3))
    np.testing.assert_array_equal(a[1], plain[1])  # pixel-level extras leave the mask alone
    assert not np.array_equal(a[0], plain[0])


def test_albumentations_extra_must_keep_size() -> None:
    A = pytest.importorskip("albumentations")
    image, mask = _pattern(64, 64)
    t = ImageTransform(ImageAugConfig(crop=(32, 32)), True, extra=A.Compose([A.Resize(16, 16)]))
    with pytest.raises(ConfigError, match="must keep"):
        t(image, mask, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="set_random_seed"):
        ImageTransform(ImageAugConfig(), True, extra=lambda **kw: kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- config
def test_config_from_dict_and_round_trip() -> None:
    cfg = ImageAugConfig.from_dict({"scale": [0.75, 1.5], "crop": 256, "base_size": [512, 1024], "hflip": 0,
                                    "photometric": False, "blur": 0.25, "cat_max_ratio": 0.75, "ignore_id": 0})
    assert cfg.scale == (0.75, 1.5) and cfg.crop == (256, 256) and cfg.base_size == (512, 1024)
    assert cfg.hflip == 0.0 and cfg.ignore_id == 0
    assert ImageAugConfig.from_dict(cfg.to_dict()) == cfg
    assert ImageAugConfig.from_dict(None) == ImageAugConfig()
    assert ImageAugConfig.from_dict({"crop": None}).crop is None
    assert ImageAugConfig.from_dict({"scale": 1}).scale == (1.0, 1.0)


@pytest.mark.parametrize(("d", "pattern"), [
    ({"scael": [0.5, 2]}, r"unknown image augmentation option 'scael' \(valid: scale, base_size"),
    ({"scale": [2.0, 1.0]}, r"option 'scale'.*0 < low <= high.*\[2\.0, 1\.0\]"),
    ({"scale": [0, 1]}, r"option 'scale'"),
    ({"scale": "big"}, r"option 'scale'"),
    ({"crop": [512]}, r"option 'crop': expected \(H, W\)"),
    ({"crop": [512, -1]}, r"option 'crop'"),
    ({"base_size": [10.5, 10]}, r"option 'base_size'"),
    ({"hflip": 1.5}, r"option 'hflip': expected a probability in \[0, 1\], got 1\.5"),
    ({"hflip": True}, r"option 'hflip'"),
    ({"blur": -0.1}, r"option 'blur'"),
    ({"cat_max_ratio": 0}, r"option 'cat_max_ratio': expected a number in \(0, 1\]"),
    ({"photometric": "yes"}, r"option 'photometric': expected true or false"),
    ({"ignore_id": 70000}, r"option 'ignore_id': expected an integer id in 0\.\.65535"),
    ({"ignore_id": -1}, r"option 'ignore_id'"),
])
def test_config_errors_name_the_key(d: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        ImageAugConfig.from_dict(d)


def test_config_error_prefix_and_type() -> None:
    with pytest.raises(ConfigError, match=r"^train\.yaml: .*option 'crop'"):
        ImageAugConfig.from_dict({"crop": "x"}, where="train.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        ImageAugConfig.from_dict([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ImageAugConfig"):
        build_image_transform({"crop": 5}, True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="'hflip'"):
        ImageAugConfig(hflip=2)


# ---------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_rellis_frame(shared_data) -> None:
    from terraseg.io.images import read_image
    from terraseg.io.labels import read_label_png

    stem = shared_data / "rellis3d" / "frame000104-1581624663_149"
    image, mask = read_image(stem.with_suffix(".jpg")), read_label_png(stem.with_suffix(".png"))
    ids = set(np.unique(mask).tolist())
    t = build_image_transform(ImageAugConfig(base_size=(600, 960), crop=(512, 512), cat_max_ratio=0.75), True)
    for s in range(3):
        out_img, out_mask = t(image, mask, np.random.default_rng(s))
        assert out_img.shape == (3, 512, 512) and out_mask.shape == (512, 512)
        assert np.isfinite(out_img).all()
        assert set(np.unique(out_mask).tolist()) <= ids | {IGN}
    ev_img, ev_mask = build_image_transform(ImageAugConfig(base_size=(600, 960)), False)(image, mask)
    assert ev_img.shape == (3, 600, 960)
    np.testing.assert_array_equal(ev_mask, mask[1::2, 1::2])  # exact 2x down-sampling picks odd pixels
