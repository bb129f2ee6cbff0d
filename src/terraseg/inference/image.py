"""Camera-image inference: whole-image and sliding-window inference with test-time augmentation.

Two layers:

* :func:`infer_probabilities` is the torch-level core, shared by the training engine's validation
  step and by the predictors. It takes a normalised batch ``x`` ``(N, 3, H, W)`` and a
  ``model_fn`` mapping ``(B, 3, h, w)`` to logits ``(B, K, h, w)``, and returns class
  probabilities ``(N, K, H, W)`` float32 averaged over the test-time augmentation views.
* :class:`ImagePredictor` wraps a PyTorch model (or a terraseg checkpoint) for ``(H, W, 3)``
  uint8 RGB images: normalisation, optional resizing to the training resolution, inference,
  resizing back, argmax. :class:`terraseg.inference.onnx_export.OrtImagePredictor` offers the
  same interface on ONNX Runtime.

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
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from terraseg.errors import ConfigError, DataError
from terraseg.models.image.base import unpack_outputs
from terraseg.models.image.preprocess import Normalization
from terraseg.models.ops import class_ids
from terraseg.ontology import Ontology

ModelFn = Callable[[torch.Tensor], Any]
"""``(B, 3, h, w)`` float tensor -> logits ``(B, K, h, w)`` (or a ``{"out": logits, ...}`` dict)."""

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}


# ---------------------------------------------------------------------------------------------- parsing helpers
def _parse_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _spec_items(spec: Any, where: str) -> dict[str, Any]:
    """``"a=1 b=2"`` / ``"a=1;b=2"`` / ``["a=1", "b=2"]`` / a mapping -> ``{key: value}`` (keys lower case)."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(k).strip().lower().replace("-", "_"): v for k, v in spec.items()}
    if isinstance(spec, str):
        tokens = [t for t in re.split(r"[\s;]+", spec.strip()) if t]
    elif isinstance(spec, Iterable):
        tokens = []
        for item in spec:
            if not isinstance(item, str):
                raise ConfigError(f"{where}: expected 'key=value' strings, got {item!r}")
            tokens += [t for t in re.split(r"[\s;]+", item.strip()) if t]
    else:
        raise ConfigError(f"{where}: expected 'key=value' text, a list of them or a mapping, got {spec!r}")
    out: dict[str, Any] = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        if not sep:
            out[key.strip().lower()] = None  # a bare word (a mode name, or a flag)
            continue
        key = key.strip().lower().replace("-", "_")
        if not key:
            raise ConfigError(f"{where}: empty key in {tok!r}")
        if key in out:
            raise ConfigError(f"{where}: {key!r} given twice")
        out[key] = value.strip()
    return out


def _parse_size(value: Any, where: str) -> tuple[int, int]:
    """``512`` / ``"512"`` -> (512, 512); ``"512x1024"`` / ``"512,1024"`` / ``[512, 1024]`` -> (H, W)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        parts: list[Any] = [value, value]
    elif isinstance(value, str):
        parts = [p for p in re.split(r"[x,\s*]+", value.strip().lower()) if p]
        if len(parts) == 1:
            parts = parts * 2
    elif isinstance(value, Sequence):
        parts = list(value)
    else:
        raise ConfigError(f"{where}: expected a size H x W, got {value!r}")
    if len(parts) != 2:
        raise ConfigError(f"{where}: expected a size 'HxW' (height x width), got {value!r}")
    try:
        h, w = (int(str(p).strip()) for p in parts)
    except ValueError:
        raise ConfigError(f"{where}: size {value!r} must be whole numbers 'HxW'") from None
    if h <= 0 or w <= 0:
        raise ConfigError(f"{where}: size {value!r} must be positive")
    return h, w


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
        object.__setattr__(self, "flip", _parse_bool(self.flip, "TTA flip"))

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
        items = _spec_items(spec, where)
        unknown = sorted(set(items) - {"scales", "scale", "flip", "hflip"})
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown} (expected scales=..., flip=true|false)")
        if "scales" in items and "scale" in items:
            raise ConfigError(f"{where}: give 'scales' once")
        kw: dict[str, Any] = {}
        raw = items.get("scales", items.get("scale"))
        if raw is not None:
            values = [p for p in re.split(r"[,\s]+", raw.strip()) if p] if isinstance(raw, str) else raw
            if isinstance(values, (int, float)):
                values = [values]
            try:
                kw["scales"] = tuple(float(v) for v in values)
            except (TypeError, ValueError):
                raise ConfigError(f"{where}: scales must be numbers, got {raw!r}") from None
        elif "scales" in items or "scale" in items:
            raise ConfigError(f"{where}: 'scales' needs values, e.g. scales=0.75,1,1.25")
        for key in ("flip", "hflip"):
            if key in items:
                kw["flip"] = True if items[key] is None else _parse_bool(items[key], f"{where}: {key}")
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
        crop = _parse_size(self.crop, "window crop")
        stride = _parse_size(self.stride, "window stride")
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
        items = _spec_items(spec, where)
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
            kw["crop"] = _parse_size(items["crop"], f"{where}: crop")
            if "stride" not in items:
                ch, cw = kw["crop"]
                kw["stride"] = (max(1, ch * 3 // 4), max(1, cw * 3 // 4))
        if "stride" in items:
            kw["stride"] = _parse_size(items["stride"], f"{where}: stride")
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


def _run_model(model_fn: ModelFn, x: torch.Tensor, num_classes: int) -> torch.Tensor:
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
        logits = _run_model(model_fn, crops, num_classes)
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
            logits = _run_model(model_fn, xv, num_classes)
        if size != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        p = torch.softmax(logits, dim=1)
        if flipped:
            p = torch.flip(p, dims=(3,))
        probs += p
    if len(views) > 1:
        probs /= float(len(views))
    return probs


# ---------------------------------------------------------------------------------------------- predictors
def _check_image(image: np.ndarray, where: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DataError(f"{where}: expected an (H, W, 3) uint8 RGB image, got shape {arr.shape} dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{where}: empty image ({arr.shape[1]}x{arr.shape[0]})")
    return arr


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"invalid device {device!r}: {exc}") from None


class BaseImagePredictor:
    """Shared image -> probabilities / class ids pipeline; subclasses supply :meth:`_model_fn`.

    Per image: normalise (``norm``), resize to ``base_size`` when set (bilinear), run
    :func:`infer_probabilities` (windows, TTA), resize the probabilities back to the image size
    (bilinear), argmax.

    Attributes:
        num_classes: ``K``, the number of output channels (channel ``c`` is class id ``c``).
        ontology: the label ontology of the outputs, or None when unknown.
        norm, window, tta, base_size, device, batch_windows: as given to the constructor.
    """

    num_classes: int
    ontology: Ontology | None

    def __init__(self, *, num_classes: int, ontology: Ontology | None, norm: Normalization | None,
                 device: torch.device, window: WindowConfig | str | None, tta: TTAConfig | str | None,
                 base_size: Sequence[int] | None, batch_windows: int, batch_size: int) -> None:
        if batch_windows < 1 or batch_size < 1:
            raise ConfigError(f"batch_windows and batch_size must be at least 1, got {batch_windows}, {batch_size}")
        self.num_classes = int(num_classes)
        self.ontology = ontology
        self.norm = norm or Normalization()
        self.device = device
        self.window = WindowConfig.parse(window)
        self.tta = TTAConfig.parse(tta)
        self.base_size: tuple[int, int] | None = None if base_size is None else _parse_size(list(base_size),
                                                                                             "base_size")
        self.batch_windows = int(batch_windows)
        self.batch_size = int(batch_size)

    # ------------------------------------------------------------------ subclass API
    def _model_fn(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, h, w)`` normalised float32 on :attr:`device` -> logits ``(B, K, h, w)``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ pipeline
    @property
    def label_dtype(self) -> np.dtype:
        """dtype of :meth:`predict` output: the ontology's (uint8 up to id 255, else uint16)."""
        if self.ontology is not None:
            return self.ontology.label_dtype
        return np.dtype(np.uint8) if self.num_classes <= 256 else np.dtype(np.uint16)

    def _probabilities_tensor(self, images: np.ndarray, scores_only: bool = False) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 -> ``(N, K, H, W)`` float32 probabilities on :attr:`device`.

        With ``scores_only`` the result may be the logits instead (same argmax): that skips the
        softmax of a single whole-image view at the model's own resolution (the real-time path).
        """
        t = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        x = self.norm.torch(t.permute(0, 3, 1, 2))  # channels first here: a 3-pixel-tall image stays unambiguous
        h, w = x.shape[-2:]
        resized = self.base_size is not None and (h, w) != self.base_size
        if resized:
            x = F.interpolate(x, size=self.base_size, mode="bilinear", align_corners=False)
        if scores_only and not resized and self.window.mode == "whole" and self.tta.views == [(1.0, False)]:
            with torch.no_grad():
                return _run_model(self._model_fn, x, self.num_classes)
        probs = infer_probabilities(self._model_fn, x, self.num_classes, self.window, self.tta, self.batch_windows)
        if probs.shape[-2:] != (h, w):
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        return probs

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB -> ``(K, H, W)`` float32 class probabilities at the image's resolution."""
        img = _check_image(image, "image")
        return self._probabilities_tensor(img[None])[0].cpu().numpy()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB -> ``(H, W)`` class ids (:attr:`label_dtype`)."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Class ids of several images (any sizes; images of one size run together, up to ``batch_size``)."""
        arrays = [_check_image(im, f"image #{i}") for i, im in enumerate(images)]
        out: list[np.ndarray | None] = [None] * len(arrays)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, a in enumerate(arrays):
            by_shape.setdefault(a.shape, []).append(i)
        for idx in by_shape.values():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s:s + self.batch_size]
                probs = self._probabilities_tensor(np.stack([arrays[i] for i in part]), scores_only=True)
                ids = class_ids(probs).cpu().numpy().astype(self.label_dtype)
                for k, i in enumerate(part):
                    out[i] = ids[k]
        return [o for o in out if o is not None]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_classes={self.num_classes}, device={str(self.device)!r}, "
                f"window='{self.window}', tta='{self.tta}', base_size={self.base_size})")


class ImagePredictor(BaseImagePredictor):
    """Run a PyTorch segmentation model on ``(H, W, 3)`` uint8 RGB images.

    Args:
        model: a model following the terraseg output convention (logits at input resolution in
            eval mode); switched to eval mode and moved to ``device``.
        norm: the input normalisation (ImageNet statistics by default).
        device: ``"cuda"``, ``"cpu"``, a torch device; default: CUDA when available.
        window: whole-image or sliding-window inference (a :class:`WindowConfig` or its text form).
        tta: test-time augmentation (a :class:`TTAConfig` or its text form).
        base_size: ``(H, W)`` the model was trained at: images are resized to it before
            inference and the probabilities back to the image size afterwards. None: native size.
        amp: run the model under autocast (float16 on CUDA, bfloat16 on CPU); probabilities stay float32.
        batch_windows: windows per forward pass in slide mode.
        batch_size: images of one size per forward pass in :meth:`predict_batch`.
        num_classes, ontology: override what the model says (``model.num_classes``, ``model.ontology``).
    """

    def __init__(self, model: nn.Module, *, norm: Normalization | None = None,
                 device: str | torch.device | None = None, window: WindowConfig | str | None = None,
                 tta: TTAConfig | str | None = None, base_size: Sequence[int] | None = None, amp: bool = False,
                 batch_windows: int = 4, batch_size: int = 4, num_classes: int | None = None,
                 ontology: Ontology | str | None = None) -> None:
        k = num_classes if num_classes is not None else getattr(model, "num_classes", None)
        if k is None:
            k = (getattr(model, "spec", None) or {}).get("num_classes")
        if k is None:
            raise ConfigError(f"{type(model).__name__} has no num_classes attribute; pass num_classes=")
        onto = ontology if ontology is not None else getattr(model, "ontology", None)
        if isinstance(onto, str):
            from terraseg.ontology import get_ontology

            onto = get_ontology(onto)
        dev = _resolve_device(device)
        super().__init__(num_classes=int(k), ontology=onto, norm=norm, device=dev, window=window, tta=tta,
                         base_size=base_size, batch_windows=batch_windows, batch_size=batch_size)
        self.model = model.to(dev).eval()
        self.amp = bool(amp)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, trusted: bool = False, **kw: Any) -> ImagePredictor:
        """A predictor for a terraseg checkpoint: the model, its normalisation and base size.

        ``meta["preprocess"]`` of the checkpoint gives ``mean``, ``std`` and ``base_size``
        (explicit ``norm=`` / ``base_size=`` keywords take precedence); other keywords go to the
        constructor.

        Raises:
            DataError: the file is missing, unreadable or not a terraseg model checkpoint.
        """
        from terraseg.models.image.factory import load_image_model
        from terraseg.models.surgery import read_checkpoint

        model = load_image_model(path, trusted=trusted)
        meta = read_checkpoint(path, trusted=trusted).meta
        kw.setdefault("norm", Normalization.from_meta(meta))
        if "base_size" not in kw:
            kw["base_size"] = ((meta or {}).get("preprocess") or {}).get("base_size")
        return cls(model, **kw)

    def _model_fn(self, x: torch.Tensor) -> torch.Tensor:
        if not self.amp:
            return self.model(x)
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.autocast(device_type=self.device.type, dtype=dtype):
            out, _ = unpack_outputs(self.model(x))
        return out.float()
