"""The losses of cross-modal learning, as in xMUDA (valeoai/xmuda_journal, ``train_xmuda.py``).

Per domain, for the 2D and the 3D network alike (their sum is minimised; the networks share no
weights and every cross term reads a detached teacher, so this equals xMUDA's two separate
backward passes):

- **segmentation** (labelled source points): a segmentation loss on each network's *main* logits
  (weighted cross-entropy in xMUDA; any terraseg loss of ``(P, C)`` logits and ``(P,)`` targets);
- **cross-modal KL** (source with weight ``lambda_xm_src``, default 1.0; target with
  ``lambda_xm_trg``, default 0.1): each network's *mimicry* head learns the other network's main
  prediction::

      L_xm(2D) = KL( softmax(logits_3d).detach() || softmax(mimic_2d) )
      L_xm(3D) = KL( softmax(logits_2d).detach() || softmax(mimic_3d) )

  reduced as xMUDA does: ``F.kl_div(log_softmax(student), softmax(teacher), reduction="none")
  .sum(1).mean()``, i.e. summed over classes and averaged over points (nats);
- **entropy** (target, ``lambda_entropy``, default 0, xMUDA's ``lambda_minent``): the mean over
  points of the normalised Shannon entropy ``-sum_c p_c log p_c / log C`` of each main head
  (ADVENT's ``entropy_loss``, which xMUDA uses: ``log2`` over ``log2 C`` is the same number);
- **pseudo-labels** (target, ``lambda_pl``, default 1.0, when given): the segmentation loss of each
  main head on that network's pseudo-labels (xMUDA-PL; the source-free adaptation of reference 002).

Points whose ``valid`` flag is False (padding repeats) take part in none of the terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from terraseg.errors import ConfigError
from terraseg.models.fusion.model import FusionOutput

IGNORE_INDEX = -1
"""Target value of points without a label (the training engine's convention)."""


def cross_modal_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``KL(softmax(teacher) || softmax(student))`` summed over classes, averaged over points.

    The teacher is detached (no gradient reaches the network that produced it). ``(M, K)``
    logits; an empty set of points gives 0 (with a gradient path to the student).
    """
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(f"cross_modal_kl: expected two (M, K) tensors of one shape, got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    log_q = F.log_softmax(student_logits.float(), dim=1)
    p = F.softmax(teacher_logits.detach().float(), dim=1)
    return F.kl_div(log_q, p, reduction="none").sum(1).mean()


def entropy_loss(logits: Tensor) -> Tensor:
    """Mean over points of ``-sum_c p_c log p_c / log C`` with ``p = softmax(logits)``, ``(M, C)``
    logits (0 for one class or no points)."""
    if logits.dim() != 2:
        raise ValueError(f"entropy_loss: expected (M, C) logits, got shape {tuple(logits.shape)}")
    m, c = logits.shape
    if m == 0 or c < 2:
        return logits.sum() * 0.0
    logp = F.log_softmax(logits.float(), dim=1)
    ent = -(logp.exp() * logp).sum(1)
    return ent.mean() / math.log(c)


@dataclass
class LossTerms:
    """A total loss and its named parts (detached, for logging)."""

    total: Tensor
    parts: dict[str, Tensor] = field(default_factory=dict)

    def __add__(self, other: LossTerms) -> LossTerms:
        return LossTerms(self.total + other.total, {**self.parts, **other.parts})


def _check_lambda(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"{name} must be a non-negative number, got {value!r}")
    return v


class CrossModalLoss:
    """The xMUDA losses of one step (see the module docstring).

    Args:
        seg: segmentation loss ``seg(logits (P, C), target (P,))`` whose ``ignore_index`` is
            :data:`IGNORE_INDEX` (e.g. ``terraseg.training.build_loss([{"name": "ce", ...}])``).
        lambda_xm_src, lambda_xm_trg: weights of the cross-modal KL on source / target points.
        lambda_entropy: weight of the entropy of the main heads on target points.
        lambda_pl: weight of the pseudo-label segmentation loss on target points.
    """

    def __init__(self, seg: nn.Module, lambda_xm_src: float = 1.0, lambda_xm_trg: float = 0.1,
                 lambda_entropy: float = 0.0, lambda_pl: float = 1.0) -> None:
        self.seg = seg
        self.lambda_xm_src = _check_lambda("lambda_xm_src", lambda_xm_src)
        self.lambda_xm_trg = _check_lambda("lambda_xm_trg", lambda_xm_trg)
        self.lambda_entropy = _check_lambda("lambda_entropy", lambda_entropy)
        self.lambda_pl = _check_lambda("lambda_pl", lambda_pl)

    @staticmethod
    def _select(out: FusionOutput, valid: Tensor | None) -> FusionOutput:
        if valid is None or bool(valid.all()):
            return out

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[valid]

        return FusionOutput(out.logits_2d[valid], out.logits_3d[valid], pick(out.mimic_2d), pick(out.mimic_3d),
                            out.features_2d[valid], out.features_3d[valid])

    def xm_terms(self, out: FusionOutput) -> tuple[Tensor, Tensor]:
        """(2D, 3D) cross-modal KL: each mimicry head (the main head without one) learns the other
        network's main prediction."""
        s2 = out.mimic_2d if out.mimic_2d is not None else out.logits_2d
        s3 = out.mimic_3d if out.mimic_3d is not None else out.logits_3d
        return cross_modal_kl(s2, out.logits_3d), cross_modal_kl(s3, out.logits_2d)

    def _seg(self, logits: Tensor, target: Tensor) -> Tensor:
        if not bool((target != IGNORE_INDEX).any()):
            return logits.sum() * 0.0
        return self.seg(logits, target)

    def source(self, out: FusionOutput, target: Tensor, valid: Tensor | None = None) -> LossTerms:
        """Labelled points: segmentation of both main heads + ``lambda_xm_src`` x both KL terms.

        Args:
            out: the model's outputs for M points.
            target: (M,) int64 loss targets (class ids; :data:`IGNORE_INDEX` where unlabelled).
            valid: (M,) bool, False for padding points (ignored everywhere).
        """
        if valid is not None and not bool(valid.all()):
            target = torch.where(valid, target, torch.full_like(target, IGNORE_INDEX))
        seg2 = self._seg(out.logits_2d, target)
        seg3 = self._seg(out.logits_3d, target)
        total = seg2 + seg3
        parts = {"seg_2d": seg2.detach(), "seg_3d": seg3.detach()}
        if self.lambda_xm_src > 0:
            kl2, kl3 = self.xm_terms(self._select(out, valid))
            total = total + self.lambda_xm_src * (kl2 + kl3)
            parts.update({"xm_src_2d": kl2.detach(), "xm_src_3d": kl3.detach()})
        return LossTerms(total, parts)

    def target(self, out: FusionOutput, valid: Tensor | None = None, pseudo_2d: Tensor | None = None,
               pseudo_3d: Tensor | None = None) -> LossTerms:
        """Unlabelled (target-domain) points: ``lambda_xm_trg`` x both KL terms, ``lambda_entropy`` x
        both main-head entropies and, when given, ``lambda_pl`` x the pseudo-label loss of each
        main head (``pseudo_2d`` / ``pseudo_3d``: (M,) int64, :data:`IGNORE_INDEX` where no
        pseudo-label was kept)."""
        sel = self._select(out, valid)
        total = out.logits_2d.sum() * 0.0
        parts: dict[str, Tensor] = {}
        if self.lambda_xm_trg > 0:
            kl2, kl3 = self.xm_terms(sel)
            total = total + self.lambda_xm_trg * (kl2 + kl3)
            parts.update({"xm_trg_2d": kl2.detach(), "xm_trg_3d": kl3.detach()})
        if self.lambda_entropy > 0:
            e2, e3 = entropy_loss(sel.logits_2d), entropy_loss(sel.logits_3d)
            total = total + self.lambda_entropy * (e2 + e3)
            parts.update({"entropy_2d": e2.detach(), "entropy_3d": e3.detach()})
        if self.lambda_pl > 0:
            for name, logits, pl in (("pl_2d", out.logits_2d, pseudo_2d), ("pl_3d", out.logits_3d, pseudo_3d)):
                if pl is None:
                    continue
                if valid is not None and not bool(valid.all()):
                    pl = torch.where(valid, pl, torch.full_like(pl, IGNORE_INDEX))
                term = self._seg(logits, pl)
                total = total + self.lambda_pl * term
                parts[name] = term.detach()
        return LossTerms(total, parts)
