"""Mask2Former (Hugging Face ``transformers``, an optional extra) in the terraseg output convention.

Mask2Former predicts ``Q`` mask queries, each with a class distribution over ``K + 1`` labels
(the last one is "no object") and a mask at stride 4. The semantic map is the usual
``sum_q softmax(class_q)[k] * sigmoid(mask_q)``, exactly what
``Mask2FormerImageProcessor.post_process_semantic_segmentation`` computes; this wrapper returns
its logarithm (clamped at ``1e-6``) as "logits", so ``argmax`` matches the Hugging Face
post-processing and the output has the same shape and meaning as every other terraseg model.

For the set-prediction (Hungarian) training loss, call :meth:`Mask2FormerSegmenter.forward_queries`
with ``mask_labels`` / ``class_labels``: it returns the Hugging Face output including ``loss``.
``transformers`` is imported only when a Mask2Former model is built.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from terraseg.errors import ConfigError
from terraseg.models.image.base import ImageSegmenter

#: encoder name -> Swin backbone hyper-parameters (as in the official Mask2Former configs).
SWIN_ENCODERS: dict[str, dict[str, Any]] = {
    "swin-tiny": {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24], "window_size": 7},
    "swin-small": {"embed_dim": 96, "depths": [2, 2, 18, 2], "num_heads": [3, 6, 12, 24], "window_size": 7},
    "swin-base": {"embed_dim": 128, "depths": [2, 2, 18, 2], "num_heads": [4, 8, 16, 32], "window_size": 12},
    "swin-large": {"embed_dim": 192, "depths": [2, 2, 18, 2], "num_heads": [6, 12, 24, 48], "window_size": 12},
}

#: encoder name -> Hugging Face hub id of the ADE20K semantic checkpoint used by ``pretrained=True``.
ADE20K_WEIGHTS: dict[str, str] = {
    "swin-tiny": "facebook/mask2former-swin-tiny-ade-semantic",
    "swin-small": "facebook/mask2former-swin-small-ade-semantic",
    "swin-base": "facebook/mask2former-swin-base-IN21k-ade-semantic",
    "swin-large": "facebook/mask2former-swin-large-ade-semantic",
}

#: Mask2FormerConfig fields a user may override through build_image_model(**kwargs).
CONFIG_OPTIONS = ("num_queries", "hidden_dim", "feature_size", "mask_feature_size", "encoder_layers", "decoder_layers",
                  "num_attention_heads", "dim_feedforward", "encoder_feedforward_dim", "dropout", "no_object_weight",
                  "class_weight", "mask_weight", "dice_weight", "train_num_points", "ignore_value")
OPTIONS = (*CONFIG_OPTIONS, "backbone")


def import_transformers() -> Any:
    """The ``transformers`` module, or a ConfigError telling how to install it."""
    try:
        import transformers
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("arch 'mask2former' needs the optional dependency 'transformers' "
                          "(pip install 'terraseg[hf]' or pip install transformers)") from None
    return transformers


class Mask2FormerSegmenter(ImageSegmenter):
    """A ``Mask2FormerForUniversalSegmentation`` (attribute ``net``) returning semantic log-scores.

    Train mode returns the log-scores tensor too (Mask2Former has no FCN-style aux head); its
    own deep supervision lives in :meth:`forward_queries`.
    """

    def __init__(self, net: torch.nn.Module, num_classes: int, in_channels: int = 3) -> None:
        super().__init__(num_classes, in_channels, has_aux=False)
        self.net = net
        self.class_heads = {"net.class_predictor": 1}  # K class rows, then the "no object" row

    def forward_queries(self, x: torch.Tensor, **labels: Any) -> Any:
        """The Hugging Face output (``class_queries_logits`` ``(N, Q, K+1)``, ``masks_queries_logits``
        ``(N, Q, H/4, W/4)``, and ``loss`` when ``mask_labels``/``class_labels`` are given)."""
        return self.net(pixel_values=x, **labels)

    def forward_raw(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.net(pixel_values=x)
        cls = out.class_queries_logits.float().softmax(dim=-1)[..., :-1]     # (N, Q, K)
        masks = out.masks_queries_logits.float().sigmoid()                    # (N, Q, h, w)
        scores = torch.einsum("nqk,nqhw->nkhw", cls, masks)
        return scores.clamp_min(1e-6).log().to(x.dtype), None


def mask2former_config(encoder: str, num_classes: int, in_channels: int, backbone: dict[str, Any] | None = None,
                       **options: Any) -> Any:
    """A ``Mask2FormerConfig`` for a Swin encoder name, ``num_classes`` labels and config overrides."""
    transformers = import_transformers()
    if encoder not in SWIN_ENCODERS:
        raise ConfigError(f"unknown encoder {encoder!r} for arch 'mask2former'; available: "
                          f"{', '.join(SWIN_ENCODERS)}")
    bb = {**SWIN_ENCODERS[encoder], **(backbone or {})}
    swin = transformers.SwinConfig(num_channels=in_channels, out_features=["stage1", "stage2", "stage3", "stage4"],
                                   drop_path_rate=0.3, **bb)
    return transformers.Mask2FormerConfig(backbone_config=swin, num_labels=num_classes, **options)


def build_mask2former(encoder: str, num_classes: int, in_channels: int, **options: Any) -> Mask2FormerSegmenter:
    """A randomly initialised Mask2Former (no download: built from a config only)."""
    transformers = import_transformers()
    cfg = mask2former_config(encoder, num_classes, in_channels, **options)
    net = transformers.Mask2FormerForUniversalSegmentation(cfg)
    return Mask2FormerSegmenter(net, num_classes, in_channels=in_channels)


def build_mask2former_from_hub(repo_id: str, num_classes: int, in_channels: int,
                               **options: Any) -> tuple[Mask2FormerSegmenter, dict[str, torch.Tensor], list[str]]:
    """A model with the architecture of a hub checkpoint but ``num_classes`` labels, plus that
    checkpoint's state dict (names prefixed ``net.``) and its class names in id order.

    Downloads the checkpoint on first use (Hugging Face cache). The caller loads the state dict
    with :func:`terraseg.models.surgery.load_weights`, which keeps the rows of shared classes.
    """
    transformers = import_transformers()
    hub = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(repo_id)
    names = [str(hub.config.id2label[i]) for i in sorted(hub.config.id2label)]
    cfg = copy.deepcopy(hub.config)
    cfg.num_labels = num_classes
    cfg.id2label = {i: f"class_{i}" for i in range(num_classes)}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    for k, v in options.items():
        if k == "backbone":
            raise ConfigError("mask2former: 'backbone' overrides cannot be combined with hub weights")
        setattr(cfg, k, v)
    if cfg.backbone_config.num_channels != in_channels:
        raise ConfigError(f"mask2former hub weights {repo_id!r} expect {cfg.backbone_config.num_channels} input "
                          f"channels, not {in_channels}")
    net = transformers.Mask2FormerForUniversalSegmentation(cfg)
    state = {f"net.{k}": v for k, v in hub.state_dict().items()}
    return Mask2FormerSegmenter(net, num_classes, in_channels=in_channels), state, names
