"""Optimiser parameter groups (layer-wise learning-rate decay, no decay on norms and biases) and
learning-rate schedules with warm-up.

Layer-wise decay (BEiT / ConvNeXt fine-tuning, mmseg's ``stage_wise`` decay): encoder parameters
get a *depth* — 0 for the stem, ``s + 1`` for stage ``s`` — and the decoder and heads the depth
``L = num_stages + 1``; a parameter at depth ``d`` trains with ``lr * layer_decay ** (L - d)``.
Stages are recognised from the parameter names of timm / smp encoders (``stages.2``,
``layer3``, ``blocks.4``, ``block2`` ...); encoders whose names say nothing are split into four
equal groups in registration order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from terraseg.training.config import OptimConfig, ScheduleConfig

_STAGE_PATTERNS = (
    re.compile(r"(?:^|\.)stages?[._](\d+)"),        # timm convnext / regnet / efficientformer: stages.2
    re.compile(r"(?:^|\.)layer(\d+)(?:\.|$)"),      # resnet: layer3
    re.compile(r"(?:^|\.)layers[._](\d+)"),         # swin: layers.1
    re.compile(r"(?:^|\.)block(\d+)(?:\.|$)"),      # mit (segformer): block2
    re.compile(r"(?:^|\.)blocks[._](\d+)"),         # efficientnet / mobilenet / vit: blocks.4
    re.compile(r"(?:^|\.)features[._](\d+)"),       # torchvision-style: features.6
)
ENCODER_PREFIXES = ("encoder.", "backbone.", "model.encoder.", "model.pixel_level_module.encoder.",
                    "net2d.encoder.")  # the last: the image encoder of a cross-modal model


def _is_encoder(name: str) -> bool:
    return name.startswith(ENCODER_PREFIXES)


def _stage_of(name: str) -> int | None:
    for pat in _STAGE_PATTERNS:
        m = pat.search(name)
        if m:
            return int(m.group(1))
    return None


def encoder_depths(model: nn.Module) -> tuple[dict[str, int], int]:
    """(parameter name -> depth for encoder parameters, depth of the decoder/head)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad and _is_encoder(n)]
    stages = {n: _stage_of(n) for n in names}
    found = sorted({s for s in stages.values() if s is not None})
    depths: dict[str, int] = {}
    if found:
        rank = {s: i + 1 for i, s in enumerate(found)}  # stage ids may start at 0 or 1, or skip
        last_seen = 0
        for n in names:  # registration order: params before the first stage are the stem
            s = stages[n]
            if s is not None:
                last_seen = rank[s]
            depths[n] = last_seen if s is None and last_seen else (rank[s] if s is not None else 0)
        return depths, len(found) + 1
    groups = 4
    for i, n in enumerate(names):
        depths[n] = min(groups - 1, i * groups // max(1, len(names)))
    return depths, groups


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim <= 1 or name.endswith(".bias")


def param_groups(model: nn.Module, cfg: OptimConfig,
                 lr_multipliers: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Parameter groups with per-group ``lr`` and ``weight_decay`` (and ``lr_scale`` for logging).

    ``lr_multipliers`` maps parameter-name prefixes to a further learning-rate factor (the first
    matching prefix applies), e.g. ``{"net2d.": 0.1}`` for the 2D network of a cross-modal model.
    """
    depths, top = encoder_depths(model) if (cfg.layer_decay < 1.0 or cfg.encoder_lr_mult != 1.0) else ({}, 0)
    mults = dict(lr_multipliers or {})
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = 1.0
        if name in depths:
            scale = cfg.encoder_lr_mult * cfg.layer_decay ** (top - depths[name])
        scale *= next((f for pre, f in mults.items() if name.startswith(pre)), 1.0)
        wd = 0.0 if (cfg.no_decay_norm_bias and _no_decay(name, p)) else cfg.weight_decay
        key = (round(scale, 12), wd)
        g = groups.setdefault(key, {"params": [], "lr": cfg.lr * scale, "initial_lr": cfg.lr * scale,
                                    "weight_decay": wd, "lr_scale": scale, "names": []})
        g["params"].append(p)
        g["names"].append(name)
    return sorted(groups.values(), key=lambda g: (g["lr_scale"], g["weight_decay"]))


def build_optimizer(model: nn.Module, cfg: OptimConfig,
                    lr_multipliers: Mapping[str, float] | None = None) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD over :func:`param_groups`."""
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg, lr_multipliers)]
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False)


def lr_factor(cfg: ScheduleConfig, total_steps: int,
              time_fraction: Callable[[], float] | None = None) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimiser step ``t`` (0-based).

    Linear warm-up from ``warmup_ratio`` to 1 over ``warmup_iters`` steps, then poly / cosine decay
    from 1 to ``min_lr_ratio`` at ``total_steps`` (or constant 1). With ``time_fraction`` (the
    fraction of the time budget used so far, for ``horizon: time``) the decay's progress is the
    larger of the step and time fractions.
    """
    total = max(1, int(total_steps))
    warm = max(0, min(int(cfg.warmup_iters), total - 1))

    def decay(t: int) -> float:
        if cfg.name == "constant":
            return 1.0
        span = max(1, total - warm)
        x = min(1.0, max(0.0, (t - warm) / span))
        if time_fraction is not None:
            x = max(x, min(1.0, max(0.0, float(time_fraction()))))
        if cfg.name == "poly":
            base = (1.0 - x) ** cfg.power
        else:
            base = 0.5 * (1.0 + math.cos(math.pi * x))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * base

    def factor(t: int) -> float:
        if t < warm:
            a = t / warm
            return (cfg.warmup_ratio + (1.0 - cfg.warmup_ratio) * a) * decay(warm)
        return decay(t)

    return factor
