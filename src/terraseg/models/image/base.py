"""The base class of every terraseg 2D model and its output convention.

Output convention (every architecture follows it):

* input ``x``: float tensor ``(N, C_in, H, W)`` (``C_in`` is 3 for RGB), normalised the way the
  encoder's weights expect (ImageNet mean/std for the ImageNet encoders). Any ``H`` and ``W`` are
  accepted: the input is zero-padded at the bottom/right to a multiple of
  :attr:`ImageSegmenter.size_divisor` and the output cropped back, so zero padding equals the
  mean colour after normalisation.
* eval mode: ``model(x)`` returns logits ``(N, num_classes, H, W)`` at input resolution (float,
  unnormalised scores; ``argmax(1)`` gives class ids, channel ``c`` is class id ``c``).
* train mode, model **with** an auxiliary head (:attr:`ImageSegmenter.has_aux`): a dict
  ``{"out": logits, "aux": aux_logits}``, both ``(N, num_classes, H, W)`` at input resolution,
  so the same loss applies to both (typically ``loss = ce(out) + 0.4 * ce(aux)``).
* train mode, model **without** an auxiliary head: the logits tensor, as in eval mode.

:func:`unpack_outputs` turns either form into ``(logits, aux_or_None)`` for training loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from terraseg.models.ops import class_ids
from terraseg.ontology import Ontology

if TYPE_CHECKING:
    from terraseg.models.surgery import TransferReport

ModelOutput = torch.Tensor | dict[str, torch.Tensor]


@dataclass
class PixelFeatures:
    """Per-pixel features of a batch of images (:meth:`ImageSegmenter.forward_features`).

    Attributes:
        features: ``(N, C_f, h, w)`` features before the classifier, at the decoder's stride ``s``
            of the *padded* input (``h = Hp / s``, ``w = Wp / s``).
        logits: ``(N, num_classes, h, w)``: the model's classifier applied to ``features`` (so
            upsampling them as :meth:`ImageSegmenter.forward` does gives its output).
        input_size: ``(H, W)`` of the input images in pixels.
        padded_size: ``(Hp, Wp)``: the input zero-padded at the bottom / right to a multiple of
            :attr:`ImageSegmenter.size_divisor`. Input pixel ``(u, v)`` (pixel-centre convention)
            sits at feature coordinate ``((u + 0.5) * w / Wp - 0.5, (v + 0.5) * h / Hp - 0.5)``.
    """

    features: torch.Tensor
    logits: torch.Tensor
    input_size: tuple[int, int]
    padded_size: tuple[int, int]


class ImageSegmenter(nn.Module):
    """Base class: padding, resizing to input resolution and the train/eval output convention.

    Subclasses implement :meth:`forward_raw`, returning logits at the decoder's stride (and the
    auxiliary logits when asked for), and set :attr:`class_heads` so checkpoint surgery
    (:mod:`terraseg.models.surgery`) knows which layers have one output channel per class.

    Attributes:
        num_classes: number of output channels (class ids ``0 .. num_classes - 1``).
        in_channels: number of input channels.
        size_divisor: inputs are padded to a multiple of this (the encoder's total stride).
        has_aux: whether train-mode calls return ``{"out", "aux"}``.
        class_heads: module name -> number of extra non-class output rows that follow the class
            rows (0 for plain classifiers, 1 for Mask2Former's "no object" row).
        spec: the keyword arguments that rebuild this model with
            :func:`terraseg.models.image.build_image_model` (stored in terraseg checkpoints).
        ontology: the label ontology the model predicts, when known.
        load_report: the :class:`~terraseg.models.surgery.TransferReport` of the weights loaded by
            the factory, or None.
    """

    size_divisor: int = 32
    feature_channels: int = 0
    """Channels ``C_f`` of :meth:`forward_features` (0: the architecture does not expose them)."""

    def __init__(self, num_classes: int, in_channels: int = 3, has_aux: bool = False) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.has_aux = bool(has_aux)
        self.class_heads: dict[str, int] = {}
        self.spec: dict[str, Any] = {}
        self.ontology: Ontology | None = None
        self.load_report: TransferReport | None = None

    # ------------------------------------------------------------------ subclass API
    def forward_raw(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits at the decoder's resolution for an input padded to :attr:`size_divisor`.

        Args:
            x: ``(N, C_in, Hp, Wp)`` float tensor with ``Hp``, ``Wp`` multiples of ``size_divisor``.
            with_aux: compute the auxiliary logits too (only asked for in train mode).

        Returns:
            ``(logits, aux)``: ``(N, K, Hp / s, Wp / s)`` logits for some output stride ``s`` and the
            auxiliary logits at their own stride (or None). Runtimes that argmax before upsampling
            can call this directly.
        """
        raise NotImplementedError

    def forward_raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel features before the classifier for an input padded to :attr:`size_divisor`:
        ``(N, feature_channels, Hp / s, Wp / s)``; :meth:`classify` turns them into the logits of
        :meth:`forward_raw`. Architectures that support it set :attr:`feature_channels`."""
        raise NotImplementedError(f"{type(self).__name__} does not expose per-pixel features")

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier: features ``(N, feature_channels, h, w)`` -> logits ``(N, num_classes, h, w)``."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its classifier")

    @property
    def supports_features(self) -> bool:
        """Whether :meth:`forward_features` is available (cross-modal models need it)."""
        return self.feature_channels > 0

    # ------------------------------------------------------------------ forward
    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int, int, int]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input of shape (N, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        h, w = int(x.shape[-2]), int(x.shape[-1])
        d = self.size_divisor
        pad_h, pad_w = (-h) % d, (-w) % d
        xp = F.pad(x, (0, pad_w, 0, pad_h)) if (pad_h or pad_w) else x
        return xp, h, w, pad_h, pad_w

    def forward_features(self, x: torch.Tensor) -> PixelFeatures:
        """Penultimate per-pixel features and the classifier's logits at the decoder's stride.

        Args:
            x: ``(N, C_in, H, W)`` normalised images (any size; padded like :meth:`forward`).

        Returns:
            A :class:`PixelFeatures`; ``logits`` upsampled to the padded size and cropped equal
            :meth:`forward`'s output (in eval mode).
        """
        if not self.supports_features:
            raise NotImplementedError(f"{type(self).__name__} does not expose per-pixel features")
        xp, h, w, pad_h, pad_w = self._pad(x)
        feats = self.forward_raw_features(xp)
        return PixelFeatures(feats, self.classify(feats), (h, w), (h + pad_h, w + pad_w))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Logits ``(N, num_classes, H, W)`` (or ``{"out", "aux"}`` in train mode with an aux head)."""
        xp, h, w, pad_h, pad_w = self._pad(x)
        want_aux = self.training and self.has_aux
        logits, aux = self.forward_raw(xp, with_aux=want_aux)
        out = _to_input_size(logits, h, w, h + pad_h, w + pad_w)
        if want_aux:
            if aux is None:  # pragma: no cover - subclass bug
                raise RuntimeError(f"{type(self).__name__} has_aux but returned no auxiliary logits")
            return {"out": out, "aux": _to_input_size(aux, h, w, h + pad_h, w + pad_w)}
        return out

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class ids ``(N, H, W)`` int64 (switches the model to eval mode)."""
        self.eval()
        out = self(x)
        assert isinstance(out, torch.Tensor)
        return class_ids(out)

    def extra_repr(self) -> str:
        arch = self.spec.get("arch", type(self).__name__)
        return f"arch={arch!r}, encoder={self.spec.get('encoder')!r}, num_classes={self.num_classes}, aux={self.has_aux}"


def _to_input_size(t: torch.Tensor, h: int, w: int, hp: int, wp: int) -> torch.Tensor:
    """Bilinearly resize ``t`` to the padded size ``(hp, wp)`` and crop the top-left ``(h, w)``."""
    if t.shape[-2:] != (hp, wp):
        t = F.interpolate(t, size=(hp, wp), mode="bilinear", align_corners=False)
    if (hp, wp) != (h, w):
        t = t[..., :h, :w]
    return t


def unpack_outputs(out: ModelOutput) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, aux_logits or None)`` from either form of a model's output."""
    if isinstance(out, dict):
        return out["out"], out.get("aux")
    return out, None
