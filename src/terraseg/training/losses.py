"""Segmentation losses shared by camera and LiDAR training, in plain PyTorch.

Every loss takes raw, unnormalised **logits** (softmax over the class dimension is applied
inside) and integer **targets** (class ids ``0..C-1``, plus an optional ``ignore_index``):

==========================  ==========================  ==========================================
logits                      target                      use
==========================  ==========================  ==========================================
``(N, C, H, W)``            ``(N, H, W)``               camera images (``(N, 1, H, W)`` accepted)
``(N, C, P)``               ``(N, P)``                  batches of point clouds, P points each
``(P, C)``                  ``(P,)``                    one point cloud (rows are points)
``(N, C, *S)``              ``(N, *S)``                 any other spatial layout (voxels, ...)
==========================  ==========================  ==========================================

Logits must be floating point; targets any integer dtype (uint8 masks are fine). Target ids that
are neither a class nor ``ignore_index`` raise :class:`~terraseg.errors.DataError`.
``(P, C)`` is treated as *one* sample (``N = 1``), which matters only for the per-sample options
(OHEM ``min_kept``, ``per_image`` Dice / Lovasz).

Common options (keyword-only, on every loss):

- ``ignore_index`` (int or None, default 255): target id whose elements are excluded everywhere:
  they add nothing to the loss nor to any normaliser, and their logits get zero gradient;
- ``class_weights`` (length-C tensor / array / list, or None): non-negative per-class weights,
  for example from :func:`terraseg.datasets.stats.load_class_weights` (ENet ``1/ln(1.02+f)``,
  median frequency, inverse sqrt). Per-element losses weight each element by the weight of its
  true class and ``"mean"`` divides by the sum of those weights (as
  :func:`torch.nn.functional.cross_entropy` does); set losses (Dice, Lovasz) take the weighted
  mean of their per-class terms;
- ``reduction``: ``"mean"`` (default), ``"sum"`` or ``"none"``. For per-element losses
  (CE, OHEM, focal) ``"none"`` returns the per-element losses in the target's shape (0 at ignored
  and, for OHEM, at unkept elements). For set losses ``"none"`` returns the weighted per-class
  terms, shape ``(C,)`` (or ``(N, C)`` with ``per_image=True``), 0 for excluded classes, and
  ``"sum"`` is their sum.

A ``"mean"`` over nothing (every element ignored, or no class present) is 0 (still attached to the
graph), never NaN, so one fully-ignored batch cannot poison training.

AMP: losses run with autocast disabled and compute in at least float32 (float16/bfloat16 logits
are upcast; float64 stays float64); the result is a float32 (or float64) tensor.

:func:`build_loss` turns a small spec such as
``[{"name": "ce", "weight": 1.0, "class_weights": "enet"}, {"name": "lovasz", "weight": 1.0}]``
into a :class:`CombinedLoss` (weighted sum), raising :class:`~terraseg.errors.ConfigError` for
unknown losses, unknown keys or bad values.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from terraseg.errors import ConfigError, DataError

Reduction = Literal["mean", "sum", "none"]
ClassSelection = Literal["present", "all"] | Sequence[int]
WeightsLike = Tensor | np.ndarray | Sequence[float]
WeightTables = Mapping[str, WeightsLike] | Callable[[str], WeightsLike]

REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


# --------------------------------------------------------------------------------------------
# validation helpers (ConfigError: bad options; DataError: bad tensors)
# --------------------------------------------------------------------------------------------

def _check_reduction(value: object) -> str:
    if value not in REDUCTIONS:
        raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}, not {value!r}")
    return str(value)


def _check_ignore_index(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"ignore_index must be an integer or None, not {value!r}")
    return int(value)


def _check_float(name: str, value: object, lo: float, hi: float = math.inf, *,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a float in the interval [lo, hi] (ends open when asked), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open or math.isinf(hi) else ']'}"
        raise ConfigError(f"{name} must be a finite number in {interval}, not {value!r}")
    return v


def _check_int(name: str, value: object, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, not {value!r}")
    return int(value)


def as_class_weights(weights: WeightsLike | None) -> Tensor | None:
    """Validate per-class weights and return them as a 1-D float32 CPU tensor (or None).

    Accepts a tensor, a numpy array or a list of numbers. Raises :class:`ConfigError` unless
    the weights are a non-empty 1-D vector of finite, non-negative numbers, not all zero.
    """
    if weights is None:
        return None
    if isinstance(weights, str):
        raise ConfigError(f"class_weights {weights!r} is a name; resolve it to a vector first "
                          "(build_loss does this with its weight_tables argument)")
    try:
        if isinstance(weights, Tensor):
            w = weights.detach().to("cpu", torch.float64)
        else:
            w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"class_weights must be a list of numbers, not {weights!r}") from exc
    if w.dim() != 1 or w.numel() == 0:
        raise ConfigError(f"class_weights must be a non-empty 1-D vector, got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ConfigError(f"class_weights must be finite and >= 0, got {w.tolist()}")
    if not bool((w > 0).any()):
        raise ConfigError("class_weights are all 0: every element would be ignored")
    return w.to(torch.float32)


def _check_classes(value: object) -> str | tuple[int, ...]:
    if value in ("present", "all"):
        return str(value)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ConfigError(f"classes must be 'present', 'all' or a non-empty list of class ids, not {value!r}")
    ids = tuple(_check_int("classes entry", v, 0) for v in value)
    if len(set(ids)) != len(ids):
        raise ConfigError(f"classes lists an id twice: {list(ids)}")
    return ids


# --------------------------------------------------------------------------------------------
# canonical layout
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Batch:
    """Inputs in the canonical layout used by every loss.

    ``logits`` (B, C, S) in at least float32; ``target`` (B, S) int64 with ignored elements set to
    0 (safe for ``gather``); ``valid`` (B, S) bool; ``shape`` is the target's shape for
    ``reduction="none"``. B is N, or 1 for ``(P, C)`` input.
    """

    logits: Tensor
    target: Tensor
    valid: Tensor
    shape: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return int(self.logits.shape[1])


def _prepare(logits: Tensor, target: Tensor, ignore_index: int | None) -> _Batch:
    """Check shapes and dtypes and bring ``logits``/``target`` to the canonical layout."""
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise DataError(f"loss inputs must be torch tensors, got {type(logits).__name__} and {type(target).__name__}")
    if not logits.is_floating_point():
        raise DataError(f"logits must be floating point, got {logits.dtype}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise DataError(f"target must hold integer class ids, got {target.dtype}")
    ls, ts = tuple(logits.shape), tuple(target.shape)
    if logits.dim() == 2:  # (P, C) with (P,)
        if ts != ls[:1]:
            raise DataError(f"logits {ls} (points, classes) need target ({ls[0]},), got {ts}")
        lg, tg = logits.t().unsqueeze(0), target.unsqueeze(0)
    elif logits.dim() >= 3:  # (N, C, *S) with (N, *S) or (N, 1, *S)
        if target.dim() == logits.dim() and ts[1] == 1:
            target, ts = target.squeeze(1), ts[:1] + ts[2:]
        expect = ls[:1] + ls[2:]
        if ts != expect:
            raise DataError(f"logits {ls} (N, C, ...) need target {expect}, got {ts}")
        lg, tg = logits.reshape(ls[0], ls[1], -1), target.reshape(ls[0], -1)
    else:
        raise DataError(f"logits must be (P, C) or (N, C, ...), got shape {ls}")
    c = ls[1]
    lg = lg.to(torch.promote_types(lg.dtype, torch.float32))
    tg = tg.long()
    valid = torch.ones_like(tg, dtype=torch.bool) if ignore_index is None else tg != ignore_index
    bad = valid & ((tg < 0) | (tg >= c))
    if bool(bad.any()):
        first = int(tg[bad][0])
        raise DataError(f"target holds class id {first}, which is neither a class (0..{c - 1}) "
                        f"nor ignore_index ({ignore_index})")
    return _Batch(lg, tg.masked_fill(~valid, 0), valid, ts)


@contextmanager
def _autocast_off(device: torch.device) -> Iterator[None]:
    """Disable autocast for ``device`` (if it supports autocast) inside the block."""
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type without autocast support
        yield
        return
    with ctx:
        yield


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else ``num`` (which is 0 there): no NaN value or gradient."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


# --------------------------------------------------------------------------------------------
# base classes
# --------------------------------------------------------------------------------------------

class SegLoss(nn.Module):
    """Base class: option checks, per-class weights as a buffer, layout and AMP handling.

    Subclasses implement :meth:`_compute` on a :class:`_Batch`.
    """

    name: ClassVar[str] = "loss"
    class_weights: Tensor | None

    def __init__(self, *, ignore_index: int | None = 255, class_weights: WeightsLike | None = None,
                 reduction: Reduction = "mean") -> None:
        super().__init__()
        self.ignore_index = _check_ignore_index(ignore_index)
        self.reduction = _check_reduction(reduction)
        # not persistent: weights come from the config, not from a checkpoint
        self.register_buffer("class_weights", as_class_weights(class_weights), persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss of ``logits`` (see the module docstring for shapes) against integer ``target``."""
        if not isinstance(logits, Tensor):
            raise DataError(f"{self.name}: logits must be a torch tensor, not {type(logits).__name__}")
        with _autocast_off(logits.device):
            batch = _prepare(logits, target, self.ignore_index)
            return self._compute(batch, self._weights(batch))

    def _weights(self, batch: _Batch) -> Tensor | None:
        w = self.class_weights
        if w is None:
            return None
        if w.numel() != batch.num_classes:
            raise ConfigError(f"{self.name}: class_weights has {w.numel()} entries but the logits have "
                              f"{batch.num_classes} classes")
        return w.to(device=batch.logits.device, dtype=batch.logits.dtype)

    def _compute(self, batch: _Batch, weights: Tensor | None) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        w = "None" if self.class_weights is None else f"<{self.class_weights.numel()} weights>"
        return f"ignore_index={self.ignore_index}, class_weights={w}, reduction={self.reduction!r}"


class _ElementLoss(SegLoss):
    """A loss that is a (weighted) sum of per-element terms."""

    def _elements(self, batch: _Batch, weights: Tensor | None) -> tuple[Tensor, Tensor]:
        """Per-element losses (B, S), 0 where excluded, and their normalising weights (B, S)."""
        raise NotImplementedError

    def _compute(self, batch: _Batch, weights: Tensor | None) -> Tensor:
        loss, norm = self._elements(batch, weights)
        if self.reduction == "none":
            return loss.reshape(batch.shape)
        if self.reduction == "sum":
            return loss.sum()
        return _safe_div(loss.sum(), norm.sum())


def _true_class_weights(batch: _Batch, weights: Tensor | None) -> Tensor:
    """Weight of each element's true class (B, S), 0 at ignored elements."""
    valid = batch.valid.to(batch.logits.dtype)
    return valid if weights is None else weights[batch.target] * valid


# --------------------------------------------------------------------------------------------
# per-element losses
# --------------------------------------------------------------------------------------------

class CrossEntropyLoss(_ElementLoss):
    """Weighted softmax cross-entropy with optional label smoothing.

    Per element with true class ``y``, class weights ``w`` (1 when None), log-probabilities
    ``log p`` and smoothing ``eps``::

        l = (1 - eps) * w[y] * -log p[y]  +  eps / C * sum_c w[c] * -log p[c]

    ``"mean"`` divides the sum over non-ignored elements by ``sum w[y]`` over them. This is
    exactly :func:`torch.nn.functional.cross_entropy` with ``weight``, ``ignore_index`` and
    ``label_smoothing``, except that ``ignore_index`` may be None and an empty mean is 0.

    Args:
        label_smoothing: ``eps`` in [0, 1).
    """

    name = "ce"

    def __init__(self, *, ignore_index: int | None = 255, class_weights: WeightsLike | None = None,
                 label_smoothing: float = 0.0, reduction: Reduction = "mean") -> None:
        super().__init__(ignore_index=ignore_index, class_weights=class_weights, reduction=reduction)
        self.label_smoothing = _check_float("label_smoothing", label_smoothing, 0.0, 1.0, hi_open=True)

    def _per_element(self, batch: _Batch, weights: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """(CE per element (B, S) 0 where ignored, true-class log-probability (B, S), w[y] (B, S))."""
        logp = F.log_softmax(batch.logits, dim=1)
        logpt = logp.gather(1, batch.target.unsqueeze(1)).squeeze(1)
        wy = _true_class_weights(batch, weights)
        loss = -logpt * wy
        eps = self.label_smoothing
        if eps > 0:
            smooth = -(logp.sum(1) if weights is None else (logp * weights.view(1, -1, 1)).sum(1))
            loss = (1.0 - eps) * loss + (eps / batch.num_classes) * smooth
        loss = torch.where(batch.valid, loss, torch.zeros_like(loss))
        return loss, logpt, wy

    def _elements(self, batch: _Batch, weights: Tensor | None) -> tuple[Tensor, Tensor]:
        loss, _, wy = self._per_element(batch, weights)
        return loss, wy

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, label_smoothing={self.label_smoothing}"


class OhemCrossEntropyLoss(CrossEntropyLoss):
    """Cross-entropy over the hard elements only (online hard example mining).

    Semantics of MMSegmentation's ``OHEMPixelSampler`` (Shrivastava et al. 2016 for
    segmentation), re-implemented: an element is *hard* when the softmax probability of its true
    class is below ``thresh`` (its unsmoothed CE exceeds ``-ln(thresh)``). All hard elements are
    kept; if there are fewer than ``min_kept * N`` (N images or point clouds in the batch, 1 for
    ``(P, C)`` input; capped at the number of non-ignored elements), the ``min_kept * N``
    elements with the lowest true-class probability are kept instead. ``thresh=None`` keeps
    exactly the ``min_kept * N`` hardest. The selection is not differentiated through.

    Differences from MMSegmentation: the kept count is exact (ties at the boundary are broken by
    element order, not all kept or all dropped), ``min_kept`` may exceed the element count, and
    ``"mean"`` averages over the *kept* elements (weighted by ``w[y]``) instead of over all.
    ``reduction="none"`` gives 0 at unkept elements.

    Args:
        thresh: probability threshold in (0, 1], or None.
        min_kept: minimum kept elements per image / point cloud (>= 0).
        label_smoothing: as in :class:`CrossEntropyLoss` (the selection ignores it).
    """

    name = "ohem"

    def __init__(self, *, ignore_index: int | None = 255, class_weights: WeightsLike | None = None,
                 thresh: float | None = 0.7, min_kept: int = 100_000, label_smoothing: float = 0.0,
                 reduction: Reduction = "mean") -> None:
        super().__init__(ignore_index=ignore_index, class_weights=class_weights,
                         label_smoothing=label_smoothing, reduction=reduction)
        self.thresh = None if thresh is None else _check_float("thresh", thresh, 0.0, 1.0, lo_open=True)
        self.min_kept = _check_int("min_kept", min_kept, 0)
        if self.thresh is None and self.min_kept == 0:
            raise ConfigError("ohem: thresh=None needs min_kept > 0 (nothing would be kept)")

    @torch.no_grad()
    def keep_mask(self, batch: _Batch, logpt: Tensor) -> Tensor:
        """Bool (B, S): the kept (hard) elements, from the true-class log-probabilities."""
        valid = batch.valid
        prob = logpt.exp()
        n_valid = valid.sum()
        n_floor = torch.clamp(n_valid, max=self.min_kept * valid.shape[0])
        if self.thresh is None:
            n_keep = n_floor
        else:
            n_keep = torch.maximum((valid & (prob < self.thresh)).sum(), n_floor)
        key = torch.where(valid, prob, torch.full_like(prob, 2.0)).flatten()  # ignored sort last
        order = torch.sort(key, stable=True).indices
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        return (rank < n_keep).view_as(valid) & valid

    def _elements(self, batch: _Batch, weights: Tensor | None) -> tuple[Tensor, Tensor]:
        loss, logpt, wy = self._per_element(batch, weights)
        keep = self.keep_mask(batch, logpt.detach())
        zero = torch.zeros_like(loss)
        return torch.where(keep, loss, zero), torch.where(keep, wy, zero)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, thresh={self.thresh}, min_kept={self.min_kept}"


class FocalLoss(_ElementLoss):
    """Softmax focal loss (Lin et al. 2017): ``l = w[y] * (1 - p[y])**gamma * -log p[y]``.

    ``class_weights`` play the role of the per-class ``alpha``; ``"mean"`` divides by
    ``sum w[y]`` like :class:`CrossEntropyLoss`, so ``gamma=0`` gives exactly the weighted CE.
    ``1 - p`` is computed as ``-expm1(log p)`` and floored at 1e-12 so that ``gamma < 1`` has a
    finite gradient at ``p = 1``.

    Args:
        gamma: focusing parameter >= 0 (2 in the paper).
    """

    name = "focal"

    def __init__(self, *, ignore_index: int | None = 255, class_weights: WeightsLike | None = None,
                 gamma: float = 2.0, reduction: Reduction = "mean") -> None:
        super().__init__(ignore_index=ignore_index, class_weights=class_weights, reduction=reduction)
        self.gamma = _check_float("gamma", gamma, 0.0)

    def _elements(self, batch: _Batch, weights: Tensor | None) -> tuple[Tensor, Tensor]:
        logpt = F.log_softmax(batch.logits, dim=1).gather(1, batch.target.unsqueeze(1)).squeeze(1)
        wy = _true_class_weights(batch, weights)
        loss = -logpt * wy
        if self.gamma > 0:
            loss = loss * (-torch.expm1(logpt)).clamp_min(1e-12).pow(self.gamma)
        return torch.where(batch.valid, loss, torch.zeros_like(loss)), wy

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gamma={self.gamma}"


# --------------------------------------------------------------------------------------------
# set (per-class) losses
# --------------------------------------------------------------------------------------------

class _SetLoss(SegLoss):
    """A loss made of per-class terms over a set of elements (the batch, or each image).

    ``classes`` selects the classes averaged over: ``"present"`` (classes with at least one
    non-ignored target element in the set), ``"all"`` (every class except ``ignore_index`` when
    it is a class id) or an explicit list of class ids (always included, present or not).
    """

    def __init__(self, *, ignore_index: int | None = 255, class_weights: WeightsLike | None = None,
                 classes: ClassSelection = "present", per_image: bool = False,
                 reduction: Reduction = "mean") -> None:
        super().__init__(ignore_index=ignore_index, class_weights=class_weights, reduction=reduction)
        self.classes = _check_classes(classes)
        if not isinstance(per_image, bool):
            raise ConfigError(f"per_image must be true or false, not {per_image!r}")
        self.per_image = per_image

    def _inputs(self, batch: _Batch, merge: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Softmax probabilities (B', C, S'), one-hot targets (B', C, S') (0 at ignored) and
        validity (B', 1, S'). With ``merge``, B' = 1 (whole batch as one set, a copy) unless
        ``per_image``; otherwise B' = B."""
        probs = F.softmax(batch.logits, dim=1)
        valid = batch.valid.unsqueeze(1)
        onehot = torch.zeros_like(probs).scatter_(1, batch.target.unsqueeze(1), 1.0) * valid
        if merge and not self.per_image and probs.shape[0] != 1:
            c = probs.shape[1]
            probs = probs.transpose(0, 1).reshape(1, c, -1)
            onehot = onehot.transpose(0, 1).reshape(1, c, -1)
            valid = valid.transpose(0, 1).reshape(1, 1, -1)
        return probs, onehot, valid

    def _included(self, class_counts: Tensor) -> Tensor:
        """Bool (B', C): the classes that take part in each set, from its target counts (B', C)."""
        b, c = class_counts.shape
        if self.classes == "present":
            return class_counts > 0
        inc = torch.zeros(b, c, dtype=torch.bool, device=class_counts.device)
        if self.classes == "all":
            inc[:] = True
            if self.ignore_index is not None and 0 <= self.ignore_index < c:
                inc[:, self.ignore_index] = False
            return inc
        ids = list(self.classes)
        if max(ids) >= c:
            raise ConfigError(f"{self.name}: classes {ids} name ids beyond the {c} classes of the logits")
        inc[:, ids] = True
        return inc

    def _reduce(self, terms: Tensor, included: Tensor, weights: Tensor | None) -> Tensor:
        """Reduce per-(set, class) terms (B', C) as documented in the module docstring."""
        w = torch.ones_like(terms[0]) if weights is None else weights
        wc = torch.where(included, w.expand_as(terms), torch.zeros_like(terms))
        weighted = torch.where(included, terms * wc, torch.zeros_like(terms))
        if self.reduction == "none":
            return weighted if self.per_image else weighted[0]
        if self.reduction == "sum":
            return weighted.sum()
        den = wc.sum(1)
        per_set = _safe_div(weighted.sum(1), den)
        has = (den > 0).to(terms.dtype)
        return _safe_div((per_set * has).sum(), has.sum())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, classes={self.classes!r}, per_image={self.per_image}"


class DiceLoss(_SetLoss):
    """Soft multi-class Dice loss (Milletari et al. 2016), one term per class.

    For class ``c`` over the non-ignored elements of a set (the batch, or each image with
    ``per_image``), with softmax probabilities ``p`` and one-hot targets ``y``::

        loss_c = 1 - (2 * sum(p_c * y_c) + smooth) / (sum(p_c**exponent) + sum(y_c) + smooth)

    and 0 when the denominator is 0 (nothing predicted, nothing present, ``smooth = 0``).
    **Absent classes** (no target element in the set) are handled explicitly by ``classes``:
    with ``"present"`` (default) they are left out of the mean (their probabilities are still
    pushed down through the softmax by the present classes); with ``"all"`` they are included
    and their term ``sum(p_c) / (sum(p_c) + smooth)`` drives their probabilities towards 0.
    The loss is the ``class_weights``-weighted mean of the included terms (then the mean over
    images that have any, with ``per_image``).

    Args:
        smooth: additive smoothing >= 0 (1 by default).
        exponent: power of ``p`` in the denominator, > 0 (1: Dice/F1; 2: V-Net variant).
        classes: ``"present"``, ``"all"`` or a list of class ids.
        per_image: one set per image / point cloud instead of the whole batch.
    """

    name = "dice"

    def __init__(self, *, ignore_index: int | None = 255, class_weights: WeightsLike | None = None,
                 smooth: float = 1.0, exponent: float = 1.0, classes: ClassSelection = "present",
                 per_image: bool = False, reduction: Reduction = "mean") -> None:
        super().__init__(ignore_index=ignore_index, class_weights=class_weights, classes=classes,
                         per_image=per_image, reduction=reduction)
        self.smooth = _check_float("smooth", smooth, 0.0)
        self.exponent = _check_float("exponent", exponent, 0.0, lo_open=True)

    def _compute(self, batch: _Batch, weights: Tensor | None) -> Tensor:
        probs, onehot, valid = self._inputs(batch, merge=False)  # sums need no merged copy
        probs = torch.where(valid, probs, torch.zeros_like(probs))
        inter = (probs * onehot).sum(-1)  # (B, C)
        psum = probs.sum(-1) if self.exponent == 1.0 else probs.pow(self.exponent).sum(-1)
        ysum = onehot.sum(-1)
        if not self.per_image:
            inter, psum, ysum = inter.sum(0, keepdim=True), psum.sum(0, keepdim=True), ysum.sum(0, keepdim=True)
        den = psum + ysum + self.smooth
        terms = torch.where(den > 0, 1.0 - _safe_div(2.0 * inter + self.smooth, den), torch.zeros_like(den))
        return self._reduce(terms, self._included(ysum), weights)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, smooth={self.smooth}, exponent={self.exponent}"


def lovasz_class_terms(probs: Tensor, onehot: Tensor, valid: Tensor) -> Tensor:
    """Lovasz extension of the Jaccard loss of every class of every set, vectorised.

    Berman, Rannen Triki & Blaschko, "The Lovasz-Softmax loss", CVPR 2018. For class ``c`` the
    errors ``e = |y_c - p_c|`` of the valid elements are sorted in decreasing order and
    ``loss_c = sum_i e_(i) * (J_i - J_(i-1))`` where ``J_i = i / (|y_c| + #non-c among the first
    i)`` is the Jaccard loss of treating the first ``i`` elements as mispredicted.

    Args:
        probs: softmax probabilities (B, C, S), floating point.
        onehot: one-hot targets (B, C, S), 0 at invalid elements.
        valid: bool (B, 1, S), False at ignored elements (they are sorted last and add nothing).

    Returns:
        (B, C) loss terms, in [0, 1]; differentiable with respect to ``probs``.
    """
    errors = torch.where(valid, (onehot - probs).abs(), torch.zeros_like(probs))
    key = torch.where(valid, errors.detach(), torch.full_like(errors, -1.0))
    perm = torch.sort(key, dim=-1, descending=True).indices
    errors_sorted = errors.gather(-1, perm)
    with torch.no_grad():
        fg_sorted = onehot.gather(-1, perm)
        gts = onehot.sum(-1, keepdim=True)
        intersection = gts - fg_sorted.cumsum(-1)
        union = gts + (1.0 - fg_sorted).cumsum(-1)
        # union >= 1 at every valid position; invalid ones come last, with error 0
        jaccard = 1.0 - intersection / union.clamp_min(1.0)
        grad = torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)
    return (errors_sorted * grad).sum(-1)


class LovaszSoftmaxLoss(_SetLoss):
    """Lovasz-softmax loss (Berman et al. 2018): a convex surrogate of ``1 - IoU`` per class.

    Per set (the whole batch by default, or each image / point cloud with ``per_image=True``,
    as in the paper's two variants) and per class, see :func:`lovasz_class_terms`. ``classes``
    is ``"present"`` (default, the paper's default: classes with a target element in the set),
    ``"all"`` or a list of ids; the loss is the ``class_weights``-weighted mean over the
    included classes, then (``per_image``) the mean over the images that have any. On hard
    one-hot predictions it equals ``1 - mIoU`` over those classes. Sorting is done for all
    classes at once: memory is a few (N, C, S) tensors.
    """

    name = "lovasz"

    def __init__(self, *, ignore_index: int | None = 255, class_weights: WeightsLike | None = None,
                 classes: ClassSelection = "present", per_image: bool = False,
                 reduction: Reduction = "mean") -> None:
        super().__init__(ignore_index=ignore_index, class_weights=class_weights, classes=classes,
                         per_image=per_image, reduction=reduction)

    def _compute(self, batch: _Batch, weights: Tensor | None) -> Tensor:
        probs, onehot, valid = self._inputs(batch)
        terms = lovasz_class_terms(probs, onehot, valid)
        return self._reduce(terms, self._included(onehot.sum(-1)), weights)


# --------------------------------------------------------------------------------------------
# combination and spec
# --------------------------------------------------------------------------------------------

LOSSES: dict[str, type[SegLoss]] = {
    "ce": CrossEntropyLoss,
    "ohem": OhemCrossEntropyLoss,
    "focal": FocalLoss,
    "dice": DiceLoss,
    "lovasz": LovaszSoftmaxLoss,
}
ALIASES: dict[str, str] = {"cross_entropy": "ce", "ohem_ce": "ohem", "lovasz_softmax": "lovasz"}
LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)


class CombinedLoss(nn.Module):
    """Weighted sum of losses: ``sum_k weight_k * loss_k(logits, target)``.

    Args:
        losses: the loss modules (each must reduce to a scalar: ``"mean"`` or ``"sum"``).
        weights: one non-negative weight per loss (default all 1).
        names: names for :meth:`forward`'s ``return_terms`` (default: each loss's ``name``, with
            ``_2``, ``_3``, ... appended to repeats).
    """

    def __init__(self, losses: Sequence[nn.Module], weights: Sequence[float] | None = None,
                 names: Sequence[str] | None = None) -> None:
        super().__init__()
        if len(losses) == 0:
            raise ConfigError("a combined loss needs at least one loss")
        weights = [1.0] * len(losses) if weights is None else list(weights)
        if len(weights) != len(losses):
            raise ConfigError(f"{len(losses)} losses but {len(weights)} weights")
        for loss in losses:
            if getattr(loss, "reduction", "mean") == "none":
                raise ConfigError(f"{getattr(loss, 'name', type(loss).__name__)}: reduction 'none' gives no "
                                  "scalar and cannot be combined")
        self.losses = nn.ModuleList(losses)
        self.weights = [_check_float("loss weight", w, 0.0) for w in weights]
        self.names = _unique_names(losses) if names is None else [str(n) for n in names]
        if len(self.names) != len(losses) or len(set(self.names)) != len(self.names):
            raise ConfigError(f"loss names must be unique, one per loss, got {self.names}")

    def forward(self, logits: Tensor, target: Tensor, return_terms: bool = False
                ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """The weighted sum; with ``return_terms`` also ``{name: unweighted loss (detached)}``."""
        total: Tensor | None = None
        terms: dict[str, Tensor] = {}
        for name, weight, loss in zip(self.names, self.weights, self.losses):
            value = loss(logits, target)
            terms[name] = value.detach()
            total = weight * value if total is None else total + weight * value
        assert total is not None
        return (total, terms) if return_terms else total

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={w:g}" for n, w in zip(self.names, self.weights))


def _unique_names(losses: Sequence[nn.Module]) -> list[str]:
    names: list[str] = []
    for loss in losses:
        base = str(getattr(loss, "name", type(loss).__name__.lower()))
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names


def loss_options(name: str) -> tuple[str, ...]:
    """The keyword options of loss ``name`` (a spec entry may also give ``name`` and ``weight``)."""
    cls = LOSSES[ALIASES.get(name, name)]
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _resolve_weights(value: object, tables: WeightTables | None, where: str) -> object:
    if not isinstance(value, str):
        return value
    if tables is None:
        raise ConfigError(f"{where}: class_weights {value!r} is a name, but no class-weight tables were given "
                          "to resolve it (pass weight_tables, or give the weights as a list)")
    if isinstance(tables, Mapping):
        if value not in tables:
            known = ", ".join(sorted(tables)) or "none"
            raise ConfigError(f"{where}: unknown class_weights {value!r} (available: {known})")
        return tables[value]
    return tables(value)


def build_loss(spec: str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]], *,
               ignore_index: int | None = 255, weight_tables: WeightTables | None = None,
               num_classes: int | None = None, source: str = "loss") -> CombinedLoss:
    """Build a :class:`CombinedLoss` from a spec.

    The spec is a loss name, one entry, or a list of entries. An entry is a name or a mapping
    with ``name`` (one of :data:`LOSS_NAMES`, or an alias ``cross_entropy``, ``ohem_ce``,
    ``lovasz_softmax``), an optional ``weight`` (>= 0, default 1) and any of that loss's options
    (:func:`loss_options`), for example::

        [{"name": "ce", "weight": 1.0, "class_weights": "enet"}, {"name": "lovasz", "weight": 1.0}]

    ``class_weights`` is a vector (list / array / tensor) or a name looked up in
    ``weight_tables`` (a mapping name -> vector, or a function name -> vector, for instance
    ``lambda m: load_class_weights(stats_file, m)``). ``ignore_index`` is the default of every
    entry (an entry may override it). With ``num_classes``, vector lengths are checked here
    rather than at the first forward pass.

    Raises:
        ConfigError: naming ``source``, the entry index and loss, and the unknown loss, unknown
            key or bad value.
    """
    entries: list[str | Mapping[str, Any]]
    if isinstance(spec, (str, Mapping)):
        entries = [spec]
    elif isinstance(spec, Sequence):
        entries = list(spec)
    else:
        raise ConfigError(f"{source}: a loss spec must be a name, a mapping or a list of them, not {spec!r}")
    if not entries:
        raise ConfigError(f"{source}: the loss list is empty")
    if num_classes is not None:
        num_classes = _check_int("num_classes", num_classes, 1)
    losses: list[SegLoss] = []
    weights: list[float] = []
    for i, entry in enumerate(entries):
        where = f"{source}[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: an entry must be a loss name or a mapping, not {entry!r}")
        if "name" not in entry:
            raise ConfigError(f"{where}: missing 'name' (one of {', '.join(LOSS_NAMES)})")
        raw = entry["name"]
        name = ALIASES.get(raw, raw) if isinstance(raw, str) else raw
        if name not in LOSSES:
            close = difflib.get_close_matches(str(raw), [*LOSS_NAMES, *ALIASES], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}: unknown loss {raw!r} (known: {', '.join(LOSS_NAMES)}){hint}")
        where = f"{where} ({name})"
        allowed = loss_options(name)
        for key in entry:
            if key not in ("name", "weight", *allowed):
                close = difflib.get_close_matches(str(key), [*allowed, "weight"], n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"{where}: unknown key {key!r} (allowed: name, weight, "
                                  f"{', '.join(allowed)}){hint}")
        kwargs = {k: v for k, v in entry.items() if k not in ("name", "weight")}
        kwargs.setdefault("ignore_index", ignore_index)
        try:
            weight = _check_float("weight", entry.get("weight", 1.0), 0.0)
            if "class_weights" in kwargs:
                kwargs["class_weights"] = _resolve_weights(kwargs["class_weights"], weight_tables, where)
            loss = LOSSES[name](**kwargs)
        except ConfigError as exc:
            if str(exc).startswith(where):
                raise
            raise ConfigError(f"{where}: {exc}") from None
        if num_classes is not None and loss.class_weights is not None and loss.class_weights.numel() != num_classes:
            raise ConfigError(f"{where}: class_weights has {loss.class_weights.numel()} entries, "
                              f"expected {num_classes} (one per class)")
        losses.append(loss)
        weights.append(weight)
    return CombinedLoss(losses, weights)


__all__ = [
    "ALIASES",
    "LOSSES",
    "LOSS_NAMES",
    "REDUCTIONS",
    "CombinedLoss",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "LovaszSoftmaxLoss",
    "OhemCrossEntropyLoss",
    "SegLoss",
    "as_class_weights",
    "build_loss",
    "lovasz_class_terms",
    "loss_options",
]
