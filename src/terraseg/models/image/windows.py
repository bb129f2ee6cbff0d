"""Camera-image inference core: sliding windows and test-time augmentation (TTA).

:func:`infer_probabilities` is the torch-level core shared by the training engine's validation
step and the image predictors (:mod:`terraseg.models.image.predict`). It takes a normalised
batch ``x`` ``(N, 3, H, W)`` and a ``model_fn`` mapping ``(B, 3, h, w)`` to logits
``(B, K, h, w)``, and returns class probabilities ``(N, K, H, W)`` float32 averaged over the
test-time augmentation views. :class:`TTAConfig` and :class:`WindowConfig` are the parsed,
validated forms of ``--tta`` and ``--window`` (and of a recipe's ``eval.tta`` / ``eval.window``).

How a batch is processed (mmsegmentation's conventions)::

    for every TTA view (scale s, horizontal flip f):
        x_v = resize(x, round(H * s), round(W * s))      bilinear, align_corners=False
        x_v = flip(x_v) if f
        logits_v = whole(x_v) or slide(x_v)              (N, K, round(H s), round(W s))
        p_v = softmax(resize(logits_v, H, W))            logits resized back, then softmax
        p_v = flip(p_v) if f                             flipped back
    probabilities = mean over views of p_v

``slide`` cuts ``crop``-sized windows every ``stride`` pixels (the last window of each row and
column is aligned to the bottom / right border, so the windows cover the image), runs them in
batches of ``batch_windows`` and averages the logits where windows overlap (a count map). An
image (or view) smaller than ``crop`` is zero-padded at the bottom / right to the crop size, never
upsampled; after normalisation zero is the mean colour, the same padding the models apply
internally.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from terraseg.errors import ConfigError
from terraseg.models.image.base import unpack_outputs
from terraseg.specs import parse_bool, parse_numbers, parse_size, spec_items

ModelFn = Callable[[torch.Tensor], Any]
"""``(B, 3, h, w)`` float tensor -> logits ``(B, K, h, w)`` (or a ``{"out": logits, ...}`` dict)."""


# ---------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class TTAConfig:
    """Test-time augmentation: every combination of ``scales`` and (when ``flip``) horizontal flip.

    Attributes:
        scales: resize factors applied to the input (1.0 = as given); views are averaged.
        flip: also run each scale horizontally flipped (predictions are flipped back).
    """

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self) -> None:
        try:
            scales = tuple(float(s) for s in self.scales)
        except (TypeError, ValueError):
            raise ConfigError(f"TTA scales must be numbers, got {self.scales!r}") from None
        if not scales:
            raise ConfigError("TTA needs at least one scale")
        bad = [s for s in scales if not (math.isfinite(s) and 0.0 < s <= 16.0)]
        if bad:
            raise ConfigError(f"TTA scales must be in (0, 16], got {bad}")
        if len(set(scales)) != len(scales):
            raise ConfigError(f"TTA scales repeat a value: {list(scales)}")
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "flip", parse_bool(self.flip, "TTA flip"))

    @classmethod
    def parse(cls, spec: TTAConfig | str | Sequence[str] | Mapping[str, Any] | None) -> TTAConfig:
        """Parse ``"scales=0.75,1,1.25 flip=true"``, ``["scales=0.75,1", "flip=true"]`` or a mapping.

        Keys: ``scales`` (alias ``scale``; comma-separated numbers or a list) and ``flip`` (true /
        false; a bare ``flip`` means true). ``None`` or ``""`` gives the default (one view, no flip).

        Raises:
            ConfigError: unknown keys or bad values.
        """
        if isinstance(spec, TTAConfig):
            return spec
        where = f"TTA spec {spec!r}"
        items = spec_items(spec, where)
        unknown = sorted(set(items) - {"scales", "scale", "flip", "hflip"})
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown} (expected scales=..., flip=true|false)")
        if "scales" in items and "scale" in items:
            raise ConfigError(f"{where}: give 'scales' once")
        kw: dict[str, Any] = {}
        raw = items.get("scales", items.get("scale"))
        if raw is not None:
            kw["scales"] = parse_numbers(raw, where, "scales")
        elif "scales" in items or "scale" in items:
            raise ConfigError(f"{where}: 'scales' needs values, e.g. scales=0.75,1,1.25")
        for key in ("flip", "hflip"):
            if key in items:
                kw["flip"] = True if items[key] is None else parse_bool(items[key], f"{where}: {key}")
        return cls(**kw)

    @property
    def views(self) -> list[tuple[float, bool]]:
        """``(scale, flipped)`` of every view, in the order they are run."""
        flips = (False, True) if self.flip else (False,)
        return [(s, f) for s in self.scales for f in flips]

    def __str__(self) -> str:
        return f"scales={','.join(f'{s:g}' for s in self.scales)} flip={'true' if self.flip else 'false'}"


@dataclass(frozen=True)
class WindowConfig:
    """How one (TTA-view) image is run through the model.

    Attributes:
        mode: ``"whole"`` (the whole image at once) or ``"slide"`` (overlapping windows).
        crop: ``(H, W)`` pixels of a window (slide mode).
        stride: ``(H, W)`` pixels between window origins; at most ``crop`` so that windows
            overlap or touch.
    """

    mode: str = "whole"
    crop: tuple[int, int] = (1024, 2048)
    stride: tuple[int, int] = (768, 1536)

    def __post_init__(self) -> None:
        mode = str(self.mode).strip().lower()
        if mode not in ("whole", "slide"):
            raise ConfigError(f"window mode must be 'whole' or 'slide', got {self.mode!r}")
        crop = parse_size(self.crop, "window crop")
        stride = parse_size(self.stride, "window stride")
        if stride[0] > crop[0] or stride[1] > crop[1]:
            raise ConfigError(f"window stride {stride[0]}x{stride[1]} is larger than the crop {crop[0]}x{crop[1]} "
                              "(windows would leave gaps)")
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "crop", crop)
        object.__setattr__(self, "stride", stride)

    @classmethod
    def parse(cls, spec: WindowConfig | str | Sequence[str] | Mapping[str, Any] | None) -> WindowConfig:
        """Parse ``"slide crop=512x1024 stride=384x768"``, ``"mode=whole"``, a list or a mapping.

        Sizes are ``HxW`` (or one number for a square). Without ``stride`` a slide window moves
        by 3/4 of the crop. ``None`` or ``""`` gives whole-image inference.
        """
        if isinstance(spec, WindowConfig):
            return spec
        where = f"window spec {spec!r}"
        items = spec_items(spec, where)
        bare = [k for k, v in items.items() if v is None and k in ("whole", "slide")]
        for k in bare:
            del items[k]
        unknown = sorted(set(items) - {"mode", "crop", "stride"})
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown} (expected mode=whole|slide, crop=HxW, stride=HxW)")
        if len(bare) > 1 or (bare and "mode" in items):
            raise ConfigError(f"{where}: give the mode once")
        kw: dict[str, Any] = {}
        mode = bare[0] if bare else items.get("mode")
        if mode is not None:
            kw["mode"] = mode
        if "crop" in items:
            kw["crop"] = parse_size(items["crop"], f"{where}: crop")
            if "stride" not in items:
                ch, cw = kw["crop"]
                kw["stride"] = (max(1, ch * 3 // 4), max(1, cw * 3 // 4))
        if "stride" in items:
            kw["stride"] = parse_size(items["stride"], f"{where}: stride")
        return cls(**kw)

    def __str__(self) -> str:
        if self.mode == "whole":
            return "mode=whole"
        return f"mode=slide crop={self.crop[0]}x{self.crop[1]} stride={self.stride[0]}x{self.stride[1]}"


# ---------------------------------------------------------------------------------------------- core
def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Origins of windows of length ``crop`` every ``stride`` along an axis of ``size`` pixels.

    The last window ends exactly at ``size`` (when ``size >= crop``); ``size <= crop`` gives one
    window at 0 (the caller pads to ``crop``).
    """
    if size <= crop:
        return [0]
    n = math.ceil((size - crop) / stride) + 1
    return sorted({min(i * stride, size - crop) for i in range(n)})


def run_model(model_fn: ModelFn, x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Call ``model_fn`` and check its logits: ``(B, K, h, w)`` float32."""
    out, _ = unpack_outputs(model_fn(x))
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != x.shape[0] \
            or out.shape[1] != num_classes or out.shape[-2:] != x.shape[-2:]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model_fn returned {shape} for input {tuple(x.shape)}; expected logits "
                         f"({x.shape[0]}, {num_classes}, {x.shape[-2]}, {x.shape[-1]})")
    return out.float()


def _slide_logits(model_fn: ModelFn, x: torch.Tensor, num_classes: int, window: WindowConfig,
                  batch_windows: int) -> torch.Tensor:
    """Window-averaged logits ``(N, K, h, w)`` of ``x`` ``(N, 3, h, w)``."""
    n, _, h, w = x.shape
    ch, cw = window.crop
    sh, sw = window.stride
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    xp = F.pad(x, (0, pad_w, 0, pad_h)) if (pad_h or pad_w) else x
    hp, wp = h + pad_h, w + pad_w
    ys, xs = window_starts(hp, ch, sh), window_starts(wp, cw, sw)
    origins = [(y, x0) for y in ys for x0 in xs]
    acc = torch.zeros((n, num_classes, hp, wp), dtype=torch.float32, device=x.device)
    count = torch.zeros((1, 1, hp, wp), dtype=torch.float32, device=x.device)
    for y, x0 in origins:
        count[..., y:y + ch, x0:x0 + cw] += 1.0
    jobs = [(i, y, x0) for i in range(n) for y, x0 in origins]
    for start in range(0, len(jobs), batch_windows):
        chunk = jobs[start:start + batch_windows]
        crops = torch.stack([xp[i, :, y:y + ch, x0:x0 + cw] for i, y, x0 in chunk])
        logits = run_model(model_fn, crops, num_classes)
        for k, (i, y, x0) in enumerate(chunk):
            acc[i, :, y:y + ch, x0:x0 + cw] += logits[k]
    acc /= count
    return acc[..., :h, :w]


@torch.no_grad()
def infer_probabilities(model_fn: ModelFn, x: torch.Tensor, num_classes: int, window: WindowConfig = WindowConfig(),
                        tta: TTAConfig = TTAConfig(), batch_windows: int = 4) -> torch.Tensor:
    """Class probabilities of a normalised batch, averaged over test-time augmentation views.

    Args:
        model_fn: ``(B, 3, h, w)`` float -> logits ``(B, K, h, w)`` (a model in eval mode, or any
            callable; a ``{"out": ...}`` dict is accepted too).
        x: ``(N, 3, H, W)`` normalised float input (any device; the result is on the same one).
        num_classes: ``K``.
        window: whole-image or sliding-window inference (see :class:`WindowConfig`).
        tta: scales and flip (see :class:`TTAConfig`).
        batch_windows: windows per ``model_fn`` call in slide mode.

    Returns:
        ``(N, K, H, W)`` float32 probabilities (they sum to 1 over ``K``).
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
    if batch_windows < 1:
        raise ConfigError(f"batch_windows must be at least 1, got {batch_windows}")
    window, tta = WindowConfig.parse(window), TTAConfig.parse(tta)
    n, _, h, w = x.shape
    probs = torch.zeros((n, num_classes, h, w), dtype=torch.float32, device=x.device)
    views = tta.views
    for scale, flipped in views:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        xv = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if flipped:
            xv = torch.flip(xv, dims=(3,))
        if window.mode == "slide":
            logits = _slide_logits(model_fn, xv, num_classes, window, batch_windows)
        else:
            logits = run_model(model_fn, xv, num_classes)
        if size != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        p = torch.softmax(logits, dim=1)
        if flipped:
            p = torch.flip(p, dims=(3,))
        probs += p
    if len(views) > 1:
        probs /= float(len(views))
    return probs
