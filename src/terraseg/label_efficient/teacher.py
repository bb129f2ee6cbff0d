"""2D teachers: per-pixel feature maps of camera images for 2D -> 3D distillation.

Every teacher is a callable ``teacher(images) -> TeacherOutput`` taking ``(V, H, W, 3)`` uint8
RGB images (numpy or torch) and returning a ``(V, C, h, w)`` feature map per image (at the
network's own stride), the ``(width, height)`` in input pixels the map spans from the top-left
(:attr:`TeacherOutput.extent`, larger than the image when a network pads its input) and, when it
has one, the classifier's logits at the same resolution.

- :class:`SegmenterTeacher`: a terraseg camera model (any :mod:`terraseg.models.image` network,
  including the fusion engineer's, as long as it is an ``nn.Module`` with a classifier layer).
  Its **penultimate features** are captured by a forward hook on the **input of its main
  classifier layer**: the first of ``model.class_heads`` that is not an auxiliary head
  (``aux_head.*``) nor ACF-Net's coarse head, or the module named by ``layer=``. The hook needs
  nothing from the model's code beyond that layer's name, so any network whose classifier is a
  1x1 convolution or a linear layer over per-pixel features works.
  :meth:`SegmenterTeacher.class_embeddings` returns that classifier's weight rows, one per class,
  which stand in for text embeddings in tests of the open-vocabulary plumbing.
- :func:`timm_teacher`: any timm image encoder whose weights file the user has locally (the last
  feature map of ``features_only`` mode).
- :func:`open_clip_teacher`: the patch tokens of an open_clip ViT image tower projected into the
  joint image-text space (needs the optional ``open_clip_torch`` package and a local weights file).

Nothing here downloads: a missing package or weights file raises one
:class:`~terraseg.errors.ConfigError` that says what is needed, with an example.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from terraseg.errors import ConfigError, DataError

OPEN_CLIP_HELP = ("install the optional package with `pip install 'terraseg[clip]'` (open_clip_torch) and pass a "
                  "local weights file, e.g. model='ViT-B-32', weights='~/models/open_clip_vit_b_32_laion2b.bin' "
                  "(open_clip_pytorch_model.bin of laion/CLIP-ViT-B-32-laion2B-s34B-b79K, downloaded on a machine "
                  "with internet access); terraseg never downloads weights")


@dataclass(frozen=True)
class TeacherOutput:
    """Feature maps of a batch of images.

    Attributes:
        features: ``(V, C, h, w)`` float32 per-pixel features.
        extent: ``(width, height)`` in input-image pixels that the maps span from the top-left
            corner (the padded input size of a network that pads; the image size otherwise).
        logits: ``(V, K, h, w)`` class logits at the same resolution, or None.
    """

    features: Tensor
    extent: tuple[int, int]
    logits: Tensor | None = None


def _as_batch(images: np.ndarray | Tensor, mean: tuple[float, ...], std: tuple[float, ...],
              device: torch.device) -> Tensor:
    """``(V, H, W, 3)`` / ``(H, W, 3)`` uint8 -> ``(V, 3, H, W)`` float32 normalised on ``device``."""
    x = torch.as_tensor(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if x.dim() == 3:
        x = x[None]
    if x.dim() != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
        raise DataError(f"teacher images: expected (V, H, W, 3) uint8 RGB, got shape {tuple(x.shape)} dtype {x.dtype}")
    x = x.to(device).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return (x - m) / s


def find_classifier(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` of the model's main classifier layer (see the module docstring)."""
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            raise ConfigError(f"teacher layer {layer!r} is not a module of {type(model).__name__}")
        return layer, modules[layer]
    heads = [n for n in getattr(model, "class_heads", {}) if not n.startswith("aux") and not n.startswith("coarse")]
    heads = [n for n in heads if n in modules]
    if not heads:
        raise ConfigError(f"{type(model).__name__} lists no main classifier in class_heads; name the layer whose "
                          f"input holds the per-pixel features with layer='...'")
    return heads[-1], modules[heads[-1]]


class SegmenterTeacher:
    """Penultimate per-pixel features of a camera segmentation model (forward hook, see module doc).

    Args:
        model: the network (``model(x)`` on ``(V, 3, H, W)`` normalised images); put in eval mode.
        layer: name of the classifier module whose input is captured (default: found from
            ``model.class_heads``).
        mean, std: input normalisation on the 0-1 scale (ImageNet by default, as the terraseg
            camera models are trained).
        device: where to run (default: the model's device).
    """

    def __init__(self, model: nn.Module, layer: str | None = None,
                 mean: tuple[float, ...] = (0.485, 0.456, 0.406), std: tuple[float, ...] = (0.229, 0.224, 0.225),
                 device: torch.device | str | None = None) -> None:
        self.model = model.eval()
        self.layer_name, self.layer = find_classifier(model, layer)
        self.mean, self.std = tuple(mean), tuple(std)
        first = next(model.parameters(), None)
        self.device = torch.device(device) if device is not None else (first.device if first is not None
                                                                        else torch.device("cpu"))

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | Tensor) -> TeacherOutput:
        x = _as_batch(images, self.mean, self.std, self.device)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        captured: dict[str, Tensor] = {}

        def hook(_m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            captured["features"] = inputs[0]
            captured["logits"] = output

        handle = self.layer.register_forward_hook(hook)
        try:
            self.model(x)
        finally:
            handle.remove()
        if "features" not in captured:
            raise ConfigError(f"the teacher's layer {self.layer_name!r} did not run in the forward pass")
        feats, logits = captured["features"], captured["logits"]
        if feats.dim() != 4:
            raise ConfigError(f"the input of layer {self.layer_name!r} is not a (V, C, h, w) feature map "
                              f"(shape {tuple(feats.shape)}); name another layer")
        d = int(getattr(self.model, "size_divisor", 1) or 1)
        extent = (w + (-w) % d, h + (-h) % d)  # terraseg segmenters pad bottom/right to size_divisor
        return TeacherOutput(features=feats.float(), extent=extent,
                             logits=logits.float() if logits.dim() == 4 else None)

    def class_embeddings(self) -> Tensor:
        """``(K, C)`` weight rows of the classifier (a 1x1 convolution or a linear layer)."""
        weight = getattr(self.layer, "weight", None)
        if weight is None:
            raise ConfigError(f"layer {self.layer_name!r} has no weight")
        wt = weight.detach().float()
        return wt.reshape(wt.shape[0], -1) if wt.dim() in (2, 4) else wt


class EncoderTeacher:
    """A teacher from any function mapping normalised ``(V, 3, H, W)`` images to ``(V, C, h, w)`` maps.

    Args:
        encode: the function (an encoder's forward).
        mean, std: its input normalisation on the 0-1 scale.
        input_size: resize images to this (width, height) before encoding (for encoders with a
            fixed input size, e.g. ViTs), or None to use them as they are; the maps then span
            the whole original image.
        device: where the encoder runs.
    """

    def __init__(self, encode: Callable[[Tensor], Tensor], mean: tuple[float, ...], std: tuple[float, ...],
                 input_size: tuple[int, int] | None = None, device: torch.device | str = "cpu") -> None:
        self.encode = encode
        self.mean, self.std = tuple(mean), tuple(std)
        self.input_size = input_size
        self.device = torch.device(device)

    @torch.inference_mode()
    def __call__(self, images: np.ndarray | Tensor) -> TeacherOutput:
        x = _as_batch(images, self.mean, self.std, self.device)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if self.input_size is not None and (w, h) != tuple(self.input_size):
            x = F.interpolate(x, size=(self.input_size[1], self.input_size[0]), mode="bilinear", align_corners=False)
        feats = self.encode(x)
        if feats.dim() != 4:
            raise ConfigError(f"the encoder returned shape {tuple(feats.shape)}, expected (V, C, h, w)")
        return TeacherOutput(features=feats.float(), extent=(w, h))


def _weights_file(weights: str | Path | None, what: str, help_text: str) -> Path:
    if weights is None:
        raise ConfigError(f"{what} needs a local weights file; {help_text}")
    p = Path(weights).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what}: weights file not found: {p}; {help_text}")
    return p


def timm_help(model_name: str) -> str:
    """What a timm teacher needs (the end of its missing-weights message)."""
    return (f"pass the path of a timm checkpoint of {model_name!r} (e.g. its model.safetensors from the "
            f"Hugging Face hub, downloaded on a machine with internet access); terraseg never downloads weights")


def timm_teacher(model_name: str, weights: str | Path | None, device: torch.device | str = "cpu") -> EncoderTeacher:
    """A teacher from a timm encoder and a local weights file (its last ``features_only`` map).

    Example: ``timm_teacher("convnext_tiny", "~/models/convnext_tiny.safetensors")``.
    """
    import timm

    path = _weights_file(weights, f"timm teacher {model_name!r}", timm_help(model_name))
    if not timm.is_model(model_name):
        raise ConfigError(f"unknown timm model {model_name!r}")
    model = timm.create_model(model_name, pretrained=True, features_only=True, out_indices=(-1,),
                              pretrained_cfg_overlay={"file": str(path)})
    model = model.eval().to(device)
    cfg = model.pretrained_cfg
    return EncoderTeacher(lambda x: model(x)[-1], tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
                          tuple(cfg.get("std", (0.229, 0.224, 0.225))), device=device)


def require_open_clip() -> Any:
    """Import open_clip or raise one :class:`ConfigError` saying what to install."""
    if importlib.util.find_spec("open_clip") is None:
        raise ConfigError(f"open-vocabulary features need the optional package open_clip_torch, which is not "
                          f"installed: {OPEN_CLIP_HELP}")
    import open_clip

    return open_clip


def load_open_clip(model_name: str, weights: str | Path | None, device: torch.device | str = "cpu") -> nn.Module:
    """An open_clip model with weights from a local file (never downloads)."""
    open_clip = require_open_clip()
    path = _weights_file(weights, f"open_clip model {model_name!r}", OPEN_CLIP_HELP)
    if model_name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {model_name!r} (open_clip.list_models() lists the known ones)")
    try:
        model = open_clip.create_model(model_name, pretrained=str(path), device=device)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path}: not open_clip weights for {model_name!r} ({exc})") from exc
    return model.eval()


def open_clip_teacher(model_name: str, weights: str | Path | None, device: torch.device | str = "cpu") -> EncoderTeacher:
    """Dense features of an open_clip ViT image tower: its patch tokens projected into the joint
    image-text space, as a ``(V, D, grid_h, grid_w)`` map (images are resized to the model's input
    size). Dense CLIP features are coarse and noisy; per-pixel open-vocabulary models (OpenSeg,
    LSeg) are better teachers where available."""
    model = load_open_clip(model_name, weights, device)
    visual = model.visual
    if not hasattr(visual, "grid_size") or getattr(visual, "proj", None) is None:
        raise ConfigError(f"open_clip model {model_name!r}: dense features need a ViT image tower with a projection")
    visual.output_tokens = True
    gh, gw = visual.grid_size
    size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size, visual.image_size)
    cfg = getattr(visual, "preprocess_cfg", {}) or {}

    def encode(x: Tensor) -> Tensor:
        _, tokens = visual(x)
        tokens = tokens[:, -gh * gw:] @ visual.proj
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)

    return EncoderTeacher(encode, tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                          tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))), (size[1], size[0]), device)
