"""Camera training augmentation: resize, random scale, random crop, flip, photometric distortion.

The train pipeline is the standard MMSegmentation one (random resize 0.5x-2x, random crop with
``cat_max_ratio``, horizontal flip, ``PhotoMetricDistortion``, normalisation, padding)::

    image (H, W, 3) uint8 RGB, mask (H, W) integer ids
      -> resize to base_size (optional) x random scale s      (image bilinear, mask nearest)
      -> random crop (retried while one class covers > cat_max_ratio of it)
      -> photometric distortion, light Gaussian blur          (image only)
      -> optional user albumentations transform                (seeded from rng)
      -> horizontal flip (probability hflip), normalise, pad   (image 0 = mean colour, mask ignore_id)
      -> ((3, h, w) float32, (h, w) int64)

Geometry costs one small resize: only the source window under the crop is resized, by exactly
the scale factor (so a 2x up-scale of a 2048x1536 image costs no more than its 512x512 crop), and
the mask is sampled at the same pixel centres by integer indexing: nearest neighbour,
``src = floor((dst + 0.5) * in / out)``, the centre-aligned grid of OpenCV's bilinear image
resize, so mask and image stay aligned and ids are never interpolated. The flip is applied last
(the pixel-wise steps and the symmetric blur commute with it) while normalising, without copies.
Every random draw comes from the ``numpy.random.Generator`` passed to the call: the same
generator state gives the same output, in any process.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

# albumentations (used by callers for ``extra`` transforms) must never phone home when imported.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from terraseg.errors import ConfigError, DataError  # noqa: E402
from terraseg.geometry.pixel_map import PixelMap  # noqa: E402
from terraseg.models.image.preprocess import Normalization  # noqa: E402

__all__ = [
    "ImageAugConfig",
    "ImageTransform",
    "build_image_transform",
    "photometric_distortion",
    "resize_mask_nearest",
]

# mmseg PhotoMetricDistortion defaults
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18  # in OpenCV's 8-bit hue units (0..179)
BLUR_SIGMA = (0.3, 1.2)  # pixels, the "light" Gaussian blur
CAT_MAX_RATIO_TRIES = 10


class AlbumentationsLike(Protocol):
    """An albumentations transform or Compose (2.x): seeded with ``set_random_seed``, called with keywords."""

    def set_random_seed(self, seed: int | None) -> None: ...

    def __call__(self, **data: Any) -> dict[str, Any]: ...


# ============================================================================ configuration
@dataclass
class ImageAugConfig:
    """Options of the camera augmentation (see the module docstring for the order of steps).

    Attributes:
        scale: (low, high) range of the random resize factor relative to the base size; drawn
            uniformly (mmseg ``ratio_range``). ``(1, 1)`` disables random scaling.
        base_size: (H, W) in pixels every image is first resized to (also at evaluation); None
            keeps the native size.
        crop: (H, W) in pixels of the random crop; smaller images are padded (image with the
            mean colour, i.e. 0 after normalisation; mask with ``ignore_id``) at the bottom and
            right. None: no crop (the output has the scaled size).
        cat_max_ratio: mmseg-style: retry the crop (up to 10 times) while one class covers more
            than this fraction of its non-ignored pixels; 1.0 disables the check.
        hflip: probability of a horizontal flip.
        photometric: mmseg ``PhotoMetricDistortion``: each with probability 0.5, brightness
            +-32, contrast x[0.5, 1.5] (before or after the colour steps), saturation x[0.5, 1.5]
            and hue +-18 (OpenCV 8-bit hue units, i.e. +-36 degrees).
        blur: probability of a light Gaussian blur (sigma uniform in 0.3-1.2 px).
        ignore_id: mask id of padded pixels (and the id the loss ignores).

    A config given as a mapping (YAML) is read with :meth:`from_dict`; sizes may be written as
    one integer for a square. Invalid values raise :class:`~terraseg.errors.ConfigError` naming
    the option.
    """

    scale: tuple[float, float] = (0.5, 2.0)
    base_size: tuple[int, int] | None = None
    crop: tuple[int, int] | None = (512, 512)
    cat_max_ratio: float = 1.0
    hflip: float = 0.5
    photometric: bool = True
    blur: float = 0.0
    ignore_id: int = 255

    def __post_init__(self) -> None:
        self.scale = _check_scale(self.scale)
        self.base_size = _check_size("base_size", self.base_size)
        self.crop = _check_size("crop", self.crop)
        self.cat_max_ratio = _check_fraction("cat_max_ratio", self.cat_max_ratio, open_low=True)
        self.hflip = _check_fraction("hflip", self.hflip)
        self.blur = _check_fraction("blur", self.blur)
        if not isinstance(self.photometric, (bool, np.bool_)):
            raise ConfigError(_msg("photometric", "expected true or false", self.photometric))
        self.photometric = bool(self.photometric)
        if not _is_int(self.ignore_id) or not 0 <= int(self.ignore_id) <= 65535:
            raise ConfigError(_msg("ignore_id", "expected an integer id in 0..65535", self.ignore_id))
        self.ignore_id = int(self.ignore_id)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, where: str | None = None) -> ImageAugConfig:
        """Build from a mapping (e.g. the ``augment:`` section of a YAML config); None gives defaults.

        Raises :class:`ConfigError` naming the bad key (prefixed with ``where``, e.g. the config
        file, when given).
        """
        prefix = f"{where}: " if where else ""
        if d is None:
            return cls()
        if not isinstance(d, Mapping):
            raise ConfigError(f"{prefix}image augmentation options must be a mapping, got {type(d).__name__}")
        names = [f.name for f in fields(cls)]
        for key in d:
            if key not in names:
                raise ConfigError(f"{prefix}unknown image augmentation option {key!r} (valid: {', '.join(names)})")
        try:
            return cls(**dict(d))
        except ConfigError as e:
            raise ConfigError(f"{prefix}{e}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python (YAML/JSON-safe) form; ``from_dict(to_dict())`` round-trips."""
        out = asdict(self)
        for k in ("scale", "base_size", "crop"):
            out[k] = None if out[k] is None else list(out[k])
        return out


def _msg(key: str, expected: str, value: Any) -> str:
    return f"image augmentation option {key!r}: {expected}, got {value!r}"


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _check_scale(v: Any) -> tuple[float, float]:
    expected = "expected a positive factor or a (low, high) pair with 0 < low <= high"
    vals = [v, v] if _is_number(v) else v
    if not isinstance(vals, (list, tuple)) or len(vals) != 2 or not all(_is_number(x) for x in vals):
        raise ConfigError(_msg("scale", expected, v))
    lo, hi = float(vals[0]), float(vals[1])
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
        raise ConfigError(_msg("scale", expected, v))
    return lo, hi


def _check_size(key: str, v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    vals = [v, v] if _is_int(v) else v
    if (not isinstance(vals, (list, tuple)) or len(vals) != 2 or not all(_is_int(x) for x in vals)
            or min(int(x) for x in vals) < 1):
        raise ConfigError(_msg(key, "expected (H, W): two positive integers in pixels (or one for a square, or null)", v))
    return int(vals[0]), int(vals[1])


def _check_fraction(key: str, v: Any, open_low: bool = False) -> float:
    ok = _is_number(v) and np.isfinite(float(v)) and (0 < float(v) if open_low else 0 <= float(v)) and float(v) <= 1
    if not ok:
        raise ConfigError(_msg(key, "expected a number in (0, 1]" if open_low else "expected a probability in [0, 1]", v))
    return float(v)


# ============================================================================ building blocks
def _nearest_map(start: int, count: int, n_src: int, n_dst: int) -> np.ndarray:
    """Source pixel indices of destination pixels ``start .. start + count - 1`` of a resize ``n_src -> n_dst``.

    Centre-aligned nearest neighbour: ``src = floor((dst + 0.5) * n_src / n_dst)``, clipped to
    ``0..n_src - 1`` (the grid OpenCV's bilinear resize samples the image on).
    """
    dst = np.arange(start, start + count, dtype=np.float64)
    src = np.floor((dst + 0.5) * (n_src / n_dst)).astype(np.intp)
    return np.clip(src, 0, n_src - 1)


def resize_mask_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) id mask to ``size`` = (h, w) pixels by centre-aligned nearest neighbour.

    Ids are copied, never interpolated; the dtype is kept. The sampling grid is the one OpenCV's
    bilinear resize uses for the image, so a mask and its image resized to the same size stay
    aligned.
    """
    h, w = size
    return mask.take(_nearest_map(0, h, mask.shape[0], h), axis=0).take(_nearest_map(0, w, mask.shape[1], w), axis=1)


@dataclass(frozen=True)
class _AxisWindow:
    """One axis of a crop of the image scaled by ``scale``, computed from source pixels ``lo .. hi - 1`` only.

    The source slice is resized by exactly ``scale`` (OpenCV ``fx``/``fy``), giving ``n_out``
    pixels; the crop is its pixels ``off .. off + count - 1``. Crop pixel ``j`` therefore samples
    the source at ``lo + (off + j + 0.5) / scale - 0.5`` (bilinear) and its mask at
    ``lo + floor((off + j + 0.5) / scale)`` (nearest): the same centres, so they stay aligned.
    """

    lo: int
    hi: int
    off: int
    count: int
    scale: float

    @classmethod
    def make(cls, start: int, count: int, n_src: int, scale: float) -> _AxisWindow:
        """The window of scaled pixels ``start .. start + count - 1`` (within ``round(n_src * scale)``)."""
        lo = max(0, int(np.floor((start + 0.5) / scale - 0.5)) - 1)
        hi = min(n_src, int(np.ceil((start + count - 0.5) / scale - 0.5)) + 2)
        n_out = int(np.rint((hi - lo) * scale))  # what cv2.resize makes of hi - lo pixels at fx = scale
        off = min(max(0, int(round(start - lo * scale))), max(0, n_out - count))
        return cls(lo, hi, off, count, scale)

    def mask_index(self, n_src: int) -> np.ndarray:
        j = np.arange(self.off, self.off + self.count, dtype=np.float64)
        return np.clip(self.lo + np.floor((j + 0.5) / self.scale).astype(np.intp), 0, n_src - 1)


def _resize_window(image: np.ndarray, wy: _AxisWindow, wx: _AxisWindow) -> np.ndarray:
    """The (wy.count, wx.count, 3) crop of ``image`` scaled by (wy.scale, wx.scale), bilinear (a view).

    Only the source window is resized (cv2.resize at exactly ``fx``/``fy``). OpenCV copies instead
    of resampling when the output would have the input's size, which for scales within
    ``0.5 / n`` of 1 would shift the sampling grid; that case uses an equivalent affine warp.
    """
    sub = image[wy.lo:wy.hi, wx.lo:wx.hi]
    n_out = (int(np.rint(sub.shape[0] * wy.scale)), int(np.rint(sub.shape[1] * wx.scale)))
    if n_out != sub.shape[:2] or (wy.scale == 1.0 and wx.scale == 1.0):
        out = cv2.resize(sub, None, fx=wx.scale, fy=wy.scale, interpolation=cv2.INTER_LINEAR)
        if out.shape[0] < wy.off + wy.count or out.shape[1] < wx.off + wx.count:  # pragma: no cover - guard
            raise AssertionError(f"crop window {wy} {wx} outside the resized slice {out.shape}")
        return out[wy.off:wy.off + wy.count, wx.off:wx.off + wx.count]
    M = np.array([[1.0 / wx.scale, 0.0, wx.lo + (wx.off + 0.5) / wx.scale - 0.5],
                  [0.0, 1.0 / wy.scale, wy.lo + (wy.off + 0.5) / wy.scale - 0.5]])
    return cv2.warpAffine(image, M, (wx.count, wy.count), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _normalize_into(out: np.ndarray, image: np.ndarray, norm: Normalization) -> None:
    """Write ``norm`` applied to (h, w, 3) uint8 ``image`` into ``out[:, :h, :w]`` (float32).

    Same result as :meth:`Normalization.numpy` (``(x / 255 - mean) / std``, to float32 rounding)
    as one fused multiply-add per channel, without the intermediate copies.
    """
    h, w = image.shape[:2]
    std = np.asarray(norm.std, dtype=np.float64)
    a = (1.0 / (255.0 * std)).astype(np.float32)
    b = (-np.asarray(norm.mean, dtype=np.float64) / std).astype(np.float32)
    for c in range(3):
        dst = out[c, :h, :w]
        dst[...] = image[:, :, c]
        dst *= a[c]
        dst += b[c]


def _convert_lut(lut: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion.convert`` applied to a uint8 look-up table (truncating cast)."""
    return np.clip(lut.astype(np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg ``PhotoMetricDistortion`` on an (H, W, 3) uint8 RGB image; returns a new uint8 image.

    Each step happens with probability 0.5: brightness ``+ U(-32, 32)``; contrast ``x U(0.5, 1.5)``
    (before the colour steps or after them, 50/50); saturation ``x U(0.5, 1.5)`` and hue
    ``+ randint(-18, 18)`` (mod 180) in OpenCV's 8-bit HSV. Values are clipped to 0..255 and
    truncated after every step, as in mmseg; the per-value steps run as look-up tables.
    """
    identity = np.arange(256, dtype=np.uint8)
    lut = identity
    if rng.integers(2):
        lut = _convert_lut(lut, beta=rng.uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA))
    contrast_first = bool(rng.integers(2))
    contrast = rng.uniform(*CONTRAST_RANGE) if rng.integers(2) else None
    if contrast_first and contrast is not None:
        lut = _convert_lut(lut, alpha=contrast)
    sat = rng.uniform(*SATURATION_RANGE) if rng.integers(2) else None
    hue = int(rng.integers(-HUE_DELTA, HUE_DELTA + 1)) if rng.integers(2) else None
    out = cv2.LUT(image, lut) if lut is not identity else image
    if sat is not None or hue is not None:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        hsv_lut = np.stack([
            ((identity.astype(np.int32) + (hue or 0)) % 180).astype(np.uint8),
            _convert_lut(identity, alpha=sat) if sat is not None else identity,
            identity,
        ], axis=-1).reshape(1, 256, 3)
        out = cv2.cvtColor(cv2.LUT(hsv, hsv_lut), cv2.COLOR_HSV2RGB)
    if not contrast_first and contrast is not None:
        out = cv2.LUT(out, _convert_lut(identity, alpha=contrast))
    return out if out is not image else image.copy()


def _check_inputs(image: np.ndarray, mask: np.ndarray | None) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise DataError(f"augmentation: image must be an (H, W, 3) uint8 RGB array, got {desc}")
    if mask is None:
        return
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype.kind not in "ui":
        desc = f"{mask.shape} {mask.dtype}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise DataError(f"augmentation: mask must be an (H, W) integer id array, got {desc}")
    if mask.shape != image.shape[:2]:
        raise DataError(f"augmentation: image is {image.shape[1]}x{image.shape[0]} but mask is "
                        f"{mask.shape[1]}x{mask.shape[0]}")


# ============================================================================ the transform
class ImageTransform:
    """Picklable (image, mask) transform; build it with :func:`build_image_transform`.

    Call with ``image`` (H, W, 3) uint8 RGB, ``mask`` (H, W) integer ids or None, and a
    ``numpy.random.Generator`` (train only; a fresh unseeded one when None). Returns ``image``
    (3, h, w) float32 normalised and ``mask`` (h, w) int64 (None when no mask was given).

    Output size: train: ``crop`` when set (padded if the scaled image is smaller), else the
    scaled size ``round(base * s)``; eval: ``base_size`` when set, else the input size.

    Args:
        cfg: the options.
        train: random train pipeline (True) or the deterministic eval one (False).
        norm: normalisation (ImageNet statistics by default).
        extra: optional albumentations transform (2.x, e.g. ``A.Compose([...])``) applied in train
            mode to the uint8 crop and its mask after the photometric steps and before
            normalisation; it is re-seeded from ``rng`` on every call, so results stay
            reproducible. It must keep the image size (use pixel-level or size-preserving
            geometric transforms, with ``fill_mask=ignore_id``).
    """

    def __init__(self, cfg: ImageAugConfig, train: bool, norm: Normalization | None = None,
                 extra: AlbumentationsLike | None = None) -> None:
        if extra is not None and not callable(getattr(extra, "set_random_seed", None)):
            raise ConfigError(f"extra transform {type(extra).__name__} has no set_random_seed(); pass an "
                              "albumentations 2.x transform or Compose")
        self.cfg, self.train = cfg, bool(train)
        self.norm = norm if norm is not None else Normalization()
        self.extra = extra

    def __repr__(self) -> str:
        return f"ImageTransform({self.cfg}, train={self.train}, norm={self.norm})"

    def __call__(self, image: np.ndarray, mask: np.ndarray | None,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        x, m, _ = self.apply_with_map(image, mask, rng)
        return x, m

    def apply_with_map(self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator | None = None
                       ) -> tuple[np.ndarray, np.ndarray | None, PixelMap]:
        """As calling the transform, plus the :class:`~terraseg.geometry.pixel_map.PixelMap` from
        pixel coordinates of ``image`` to pixel coordinates of the output (resize, crop and flip;
        the same random draws, so ``transform(image, mask, rng)`` gives the same arrays)."""
        _check_inputs(image, mask)
        if not self.train:
            return self._eval(image, mask)
        return self._train(image, mask, rng if rng is not None else np.random.default_rng())

    # ------------------------------------------------------------------ eval
    def _eval(self, image: np.ndarray, mask: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray | None, PixelMap]:
        base = self.cfg.base_size
        size = (image.shape[1], image.shape[0])
        pmap = PixelMap.identity(size)
        if base is not None and base != image.shape[:2]:
            image = cv2.resize(image, (base[1], base[0]), interpolation=cv2.INTER_LINEAR)
            pmap = PixelMap.resize(size, (base[1], base[0]))
            if mask is not None:
                mask = resize_mask_nearest(mask, base)
        out = np.empty((3, *image.shape[:2]), dtype=np.float32)
        _normalize_into(out, image, self.norm)
        return out, None if mask is None else mask.astype(np.int64), pmap

    # ------------------------------------------------------------------ train
    def _train(self, image: np.ndarray, mask: np.ndarray | None,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None, PixelMap]:
        cfg = self.cfg
        H, W = image.shape[:2]
        bh, bw = cfg.base_size if cfg.base_size is not None else (H, W)
        s = rng.uniform(*cfg.scale) if cfg.scale[0] != cfg.scale[1] else cfg.scale[0]
        hs, ws = max(1, int(round(bh * s))), max(1, int(round(bw * s)))  # the scaled size
        ch, cw = cfg.crop if cfg.crop is not None else (hs, ws)
        h, w = min(ch, hs), min(cw, ws)  # the valid (unpadded) part of the crop

        # crop offset in the scaled image; mmseg cat_max_ratio retries look at the mask only
        tries = CAT_MAX_RATIO_TRIES if (cfg.cat_max_ratio < 1.0 and mask is not None) else 1
        for _ in range(tries):
            wy = _AxisWindow.make(int(rng.integers(0, hs - h + 1)), h, H, hs / H)
            wx = _AxisWindow.make(int(rng.integers(0, ws - w + 1)), w, W, ws / W)
            crop_mask = None if mask is None else mask.take(wy.mask_index(H), 0).take(wx.mask_index(W), 1)
            if tries > 1 and crop_mask is not None and self._crop_ok(crop_mask):
                break
        flip = bool(rng.random() < cfg.hflip)

        img = _resize_window(image, wy, wx)
        # the flip is applied last (while normalising): the pixel-wise steps and the symmetric blur commute with it
        if cfg.photometric:
            img = photometric_distortion(img, rng)
        if cfg.blur > 0 and rng.random() < cfg.blur:
            img = cv2.GaussianBlur(img, (0, 0), sigmaX=float(rng.uniform(*BLUR_SIGMA)))
        if self.extra is not None:
            img, crop_mask = self._apply_extra(img, crop_mask, rng)

        if flip:
            img = img[:, ::-1]
            crop_mask = None if crop_mask is None else crop_mask[:, ::-1]
        out = (np.zeros if (h, w) != (ch, cw) else np.empty)((3, ch, cw), dtype=np.float32)
        _normalize_into(out, img, self.norm)  # padding stays 0 = the mean colour after normalisation
        out_mask = None
        if crop_mask is not None:
            out_mask = np.empty((ch, cw), dtype=np.int64)
            out_mask[:h, :w] = crop_mask
            out_mask[h:, :] = cfg.ignore_id
            out_mask[:h, w:] = cfg.ignore_id
        # crop pixel j samples the source at lo + (off + j + 0.5) / scale - 0.5 (see _AxisWindow), so
        # source coordinate u lands at j = (u + 0.5 - lo) * scale - off - 0.5
        pmap = PixelMap(wx.scale, wy.scale, (0.5 - wx.lo) * wx.scale - wx.off - 0.5,
                        (0.5 - wy.lo) * wy.scale - wy.off - 0.5, (cw, ch), (w, h))
        return out, out_mask, (pmap.flipped() if flip else pmap)

    def _crop_ok(self, crop_mask: np.ndarray) -> bool:
        """mmseg ``cat_max_ratio``: more than one class and none covering > ratio of the non-ignored pixels."""
        cnt = np.bincount(crop_mask.ravel())
        if self.cfg.ignore_id < len(cnt):
            cnt[self.cfg.ignore_id] = 0
        cnt = cnt[cnt > 0]
        return len(cnt) > 1 and cnt.max() < self.cfg.cat_max_ratio * cnt.sum()

    def _apply_extra(self, img: np.ndarray, mask: np.ndarray | None,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
        assert self.extra is not None
        self.extra.set_random_seed(int(rng.integers(2**31 - 1)))
        data: dict[str, Any] = {"image": np.ascontiguousarray(img)}
        if mask is not None:
            data["mask"] = np.ascontiguousarray(mask)
        res = self.extra(**data)
        new_img = res["image"]
        new_mask = res.get("mask") if mask is not None else None
        if (not isinstance(new_img, np.ndarray) or new_img.shape != img.shape or new_img.dtype != np.uint8
                or (mask is not None and (not isinstance(new_mask, np.ndarray) or new_mask.shape != mask.shape))):
            raise ConfigError(f"extra transform {type(self.extra).__name__} must keep the (H, W, 3) uint8 image and "
                              f"(H, W) mask sizes; got image {getattr(new_img, 'shape', None)} "
                              f"from {img.shape}")
        return new_img, new_mask


def build_image_transform(cfg: ImageAugConfig, train: bool, norm: Normalization | None = None,
                          extra: AlbumentationsLike | None = None) -> ImageTransform:
    """The train (random) or eval (deterministic) transform of ``cfg``; see :class:`ImageTransform`."""
    if not isinstance(cfg, ImageAugConfig):
        raise ConfigError(f"expected an ImageAugConfig, got {type(cfg).__name__} (use ImageAugConfig.from_dict)")
    return ImageTransform(cfg, train, norm, extra)
