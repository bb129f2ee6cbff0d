"""2D -> 3D distillation losses and the projection head.

The 3D network learns to predict, at its points, what a 2D teacher saw there
(:func:`terraseg.label_efficient.fusion.teacher_point_features`):

- :func:`cosine_distill_loss`: ``1 - cos(f_3d, f_2d)`` averaged over the points that have a
  teacher feature (OpenScene's ``loss_type: cosine``); the 3D features pass through a
  :class:`DistillHead` (a linear layer to the teacher's width, as OpenScene's 3D network ends in
  one to the CLIP width).
- :func:`kl_distill_loss`: ``KL(p_teacher || p_student)`` over class scores (WS3D++), with a
  temperature ``T`` on both sides and the usual ``T^2`` factor (Hinton et al. 2015) so the
  gradient scale does not depend on ``T``.

Both take points on the rows (``(P, D)`` / ``(P, K)``; ``(B, N, ...)`` is flattened) and an
optional ``valid`` mask (points no view saw have no target). An empty selection gives 0, attached
to the graph.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from terraseg.errors import ConfigError, DataError
from terraseg.label_efficient.teacher import find_classifier


def _flat(t: Tensor, what: str) -> Tensor:
    if t.dim() == 2:
        return t
    if t.dim() == 3:
        return t.reshape(-1, t.shape[-1])
    raise DataError(f"{what}: expected (P, D) or (B, N, D), got shape {tuple(t.shape)}")


def _select(pred: Tensor, target: Tensor, valid: Tensor | None, what: str) -> tuple[Tensor, Tensor]:
    p, t = _flat(pred, f"{what} predictions"), _flat(target, f"{what} targets")
    if p.shape != t.shape:
        raise DataError(f"{what}: predictions {tuple(p.shape)} and targets {tuple(t.shape)} differ in shape")
    if valid is not None:
        v = valid.reshape(-1).bool().to(p.device)
        if v.shape[0] != p.shape[0]:
            raise DataError(f"{what}: valid mask has {v.shape[0]} points, the predictions {p.shape[0]}")
        p, t = p[v], t[v]
    return p, t


class DistillHead(nn.Module):
    """A linear projection of per-point 3D features to the teacher's feature width.

    ``forward`` maps ``(P, C)`` or ``(B, N, C)`` to ``(P, D)`` or ``(B, N, D)``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ConfigError(f"DistillHead needs positive widths, got {in_channels} -> {out_channels}")
        self.proj = nn.Linear(in_channels, out_channels)

    def forward(self, features: Tensor) -> Tensor:
        return self.proj(features)


def forward_with_features(model: nn.Module, inputs: object, layer: str | None = None) -> tuple[Tensor, Tensor]:
    """``(output, features)``: ``model(inputs)`` and the input of its main classifier layer.

    Works for any network that lists its classifier in ``class_heads`` (RandLA-Net: ``head.3``,
    whose input is the ``(B, N, C)`` per-point penultimate features) or whose classifier is named
    by ``layer``; the features stay in the autograd graph, so distillation and region losses can
    train the backbone through them. Networks with a ``forward_features`` method (the voxel U-Net)
    do not need this.
    """
    name, module = find_classifier(model, layer)
    captured: dict[str, Tensor] = {}

    def hook(_m: nn.Module, args: tuple[Tensor, ...], _out: Tensor) -> None:
        captured["features"] = args[0]

    handle = module.register_forward_hook(hook)
    try:
        out = model(inputs)
    finally:
        handle.remove()
    if "features" not in captured:
        raise ConfigError(f"layer {name!r} did not run in the forward pass of {type(model).__name__}")
    return out, captured["features"]


def cosine_distill_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean ``1 - cosine(pred, target)`` over the (valid) points; 0 to 2."""
    p, t = _select(pred, target, valid, "cosine distillation")
    if not p.shape[0]:
        return pred.sum() * 0.0
    return (1.0 - F.cosine_similarity(p.float(), t.detach().float(), dim=1, eps=1e-8)).mean()


def kl_distill_loss(student_logits: Tensor, teacher: Tensor, valid: Tensor | None = None, temperature: float = 1.0,
                    teacher_is: str = "probs") -> Tensor:
    """Mean over points of ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    Args:
        student_logits: ``(P, K)`` logits of the 3D network.
        teacher: ``(P, K)`` teacher class scores: probabilities (``teacher_is="probs"``, e.g. the
            fused softmax of a camera model, sharpened by ``p^(1/T)`` renormalised) or logits
            (``"logits"``, e.g. CLIP cosine scores divided by a temperature).
        valid: optional ``(P,)`` bool mask of the points with a teacher score.
        temperature: ``T`` > 0.
        teacher_is: ``"probs"`` or ``"logits"``.
    """
    if not temperature > 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature}")
    if teacher_is not in ("probs", "logits"):
        raise ConfigError(f"teacher_is must be 'probs' or 'logits', got {teacher_is!r}")
    s, t = _select(student_logits, teacher, valid, "KL distillation")
    if not s.shape[0]:
        return student_logits.sum() * 0.0
    t = t.detach().float()
    if teacher_is == "probs":
        if (t < 0).any():
            raise DataError("KL distillation: teacher probabilities must be >= 0")
        log_t = torch.log(t.clamp(min=1e-12)) / temperature
    else:
        log_t = t / temperature
    log_pt = torch.log_softmax(log_t, dim=1)
    log_ps = torch.log_softmax(s.float() / temperature, dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)
    return kl.mean() * temperature ** 2


DISTILL_HEAD_FILE = "distill_head.pth"
"""File name of a cosine distillation run's head, in ``<run>/checkpoints/`` (it goes with ``last.pth``)."""


@dataclass
class DistilledHead:
    """A distillation run's head and what it was distilled from (:func:`read_distill_head`).

    Attributes:
        head: the :class:`DistillHead` (3D features -> teacher features), in eval mode.
        teacher: the teacher it learnt from (``distill.teacher``: a checkpoint, ``open_clip:NAME`` ...).
        step: the training step it was saved at.
        classifier: the teacher's classifier (``{"kind": "linear" | "cosine", "weight", "bias"}``) or None.
        path: the file.
    """

    head: DistillHead
    teacher: str
    step: int
    classifier: dict[str, Any] | None
    path: Path


def save_distill_head(path: str | os.PathLike[str], head: DistillHead, teacher: str, step: int,
                      classifier: dict[str, Any] | None = None) -> Path:
    """Write a distillation head (atomically; readable with ``weights_only=True``)."""
    from terraseg.io.atomic import atomic_path

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    obj = {"format": "terraseg-distill-head", "version": 1, "teacher": str(teacher), "step": int(step),
           "in_channels": head.proj.in_features, "out_channels": head.proj.out_features,
           "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()}, "classifier": classifier}
    with atomic_path(p) as tmp:
        torch.save(obj, tmp)
    return p


def read_distill_head(path: str | os.PathLike[str]) -> DistilledHead:
    """Read a file written by :func:`save_distill_head`.

    Raises:
        DataError: missing, unreadable or not a distillation head.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: distillation head not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise DataError(f"{p}: not a readable distillation head ({type(exc).__name__})") from exc
    if not isinstance(obj, dict) or obj.get("format") != "terraseg-distill-head":
        raise DataError(f"{p}: not a terraseg distillation head")
    head = DistillHead(int(obj["in_channels"]), int(obj["out_channels"]))
    head.load_state_dict(obj["state_dict"])
    return DistilledHead(head.eval(), str(obj.get("teacher")), int(obj.get("step", -1)), obj.get("classifier"), p)
