"""In-memory camera predictors: ``(H, W, 3)`` uint8 RGB images -> class ids / probabilities.

:class:`ImagePredictor` wraps a PyTorch model (or a terraseg checkpoint): normalisation,
optional resizing to the training resolution, whole-image or sliding-window inference with
test-time augmentation (:func:`~terraseg.models.image.windows.infer_probabilities`), resizing
back, argmax. :class:`BaseImagePredictor` is the shared pipeline; the ONNX Runtime predictor
(:class:`terraseg.inference.onnx_export.OrtImagePredictor`) is another subclass.

To load any model file (``.pth`` or ``.onnx``, camera or LiDAR) use
:func:`terraseg.inference.load_predictor`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from terraseg.errors import ConfigError, DataError
from terraseg.models.image.base import unpack_outputs
from terraseg.models.image.preprocess import Normalization
from terraseg.models.image.windows import TTAConfig, WindowConfig, infer_probabilities, run_model
from terraseg.models.ops import class_ids
from terraseg.ontology import Ontology
from terraseg.specs import parse_size


# ---------------------------------------------------------------------------------------------- predictors
def check_image(image: np.ndarray, where: str) -> np.ndarray:
    """The image as an array; DataError naming ``where`` unless it is a non-empty (H, W, 3) uint8 RGB image."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise DataError(f"{where}: expected an (H, W, 3) uint8 RGB image, got shape {arr.shape} dtype {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{where}: empty image ({arr.shape[1]}x{arr.shape[0]})")
    return arr


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` / ``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)``
    (ConfigError for a bad name)."""
    if device is None or str(device).lower() == "auto":
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
        self.base_size: tuple[int, int] | None = None if base_size is None else parse_size(list(base_size),
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
                return run_model(self._model_fn, x, self.num_classes)
        probs = infer_probabilities(self._model_fn, x, self.num_classes, self.window, self.tta, self.batch_windows)
        if probs.shape[-2:] != (h, w):
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        return probs

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB -> ``(K, H, W)`` float32 class probabilities at the image's resolution."""
        img = check_image(image, "image")
        return self._probabilities_tensor(img[None])[0].cpu().numpy()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB -> ``(H, W)`` class ids (:attr:`label_dtype`)."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Class ids of several images (any sizes; images of one size run together, up to ``batch_size``)."""
        arrays = [check_image(im, f"image #{i}") for i, im in enumerate(images)]
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
        dev = resolve_device(device)
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
