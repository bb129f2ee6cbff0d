"""Region-level contrastive learning (WS3D / WS3D++, with contrastive-scene-contexts' temperature).

Points are grouped by an over-segmentation (:mod:`terraseg.geometry.regions`); a region's
feature is the mean of its points' features (:func:`pool_regions`), L2-normalised; its class is
the argmax of its points' mean softmax probability, and its confidence that mean probability's
maximum. Regions whose confidence reaches ``confidence`` take part; two of them are a positive
pair when they predict the same class. Where sparse ground-truth labels are given, a region with
labelled points takes their majority label instead and always takes part.

The loss is the supervised contrastive loss (Khosla et al. 2020) over those regions:

    L = mean_i [ -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / t) / sum_{a != i} exp(s_ia / t) ) ]

over the anchors ``i`` that have at least one positive, with ``s`` the cosine similarity and
``t`` the temperature (default 0.4, the ``nce_t`` of Pointcept's contrastive scene contexts and
masked scene contrast configs). Predictions are detached: they choose the pairs, only the
features receive gradient. At most ``max_regions`` regions are used (a random subset, from the
given generator), bounding the cost at ``max_regions^2`` similarities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from terraseg.errors import ConfigError, DataError

DEFAULT_TEMPERATURE = 0.4
DEFAULT_CONFIDENCE = 0.9
DEFAULT_MAX_REGIONS = 2048


@dataclass(frozen=True)
class RegionPool:
    """Result of :func:`pool_regions`.

    Attributes:
        features: ``(R, C)`` mean feature of each region.
        index: ``(P,)`` int64 region row of each point (``-1`` for points without a region).
        counts: ``(R,)`` points per region.
        ids: ``(R,)`` the original region id of each row.
    """

    features: Tensor
    index: Tensor
    counts: Tensor
    ids: Tensor


def pool_regions(features: Tensor, regions: Tensor) -> RegionPool:
    """Mean-pool ``(P, C)`` point features over ``(P,)`` integer region ids (negative ids = no region)."""
    if features.dim() != 2:
        raise DataError(f"features: expected (P, C), got shape {tuple(features.shape)}")
    reg = torch.as_tensor(regions, device=features.device).reshape(-1)
    if reg.shape[0] != features.shape[0] or reg.dtype.is_floating_point:
        raise DataError(f"regions: expected ({features.shape[0]},) integer ids, got shape {tuple(reg.shape)} "
                        f"dtype {reg.dtype}")
    keep = reg >= 0
    ids, inv = torch.unique(reg[keep], return_inverse=True)
    index = torch.full_like(reg, -1, dtype=torch.long)
    index[keep] = inv
    r = len(ids)
    counts = torch.zeros(r, dtype=features.dtype, device=features.device).index_add_(
        0, inv, torch.ones_like(inv, dtype=features.dtype))
    sums = torch.zeros(r, features.shape[1], dtype=features.dtype, device=features.device).index_add_(
        0, inv, features[keep])
    return RegionPool(features=sums / counts.clamp(min=1)[:, None], index=index, counts=counts, ids=ids)


def region_pseudo_labels(logits: Tensor, pool: RegionPool, labels: Tensor | None = None,
                         ignore_index: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per region: (class, confidence, from_labels) from mean softmax probabilities, or from the
    majority of the region's labelled points where ``labels`` has any (confidence 1 there)."""
    keep = pool.index >= 0
    r = len(pool.ids)
    probs = torch.softmax(logits.detach().float()[keep], dim=-1)
    mean = torch.zeros(r, probs.shape[1], device=probs.device).index_add_(0, pool.index[keep], probs)
    mean = mean / pool.counts.float().clamp(min=1)[:, None]
    conf, cls = mean.max(dim=1)
    from_labels = torch.zeros(r, dtype=torch.bool, device=probs.device)
    if labels is not None:
        lab = torch.as_tensor(labels, device=logits.device).reshape(-1)
        if lab.shape[0] != logits.shape[0]:
            raise DataError(f"labels have {lab.shape[0]} points, the logits {logits.shape[0]}")
        has = keep & (lab >= 0) & (lab < logits.shape[1])
        if ignore_index is not None:
            has &= lab != ignore_index
        if has.any():
            k = logits.shape[1]
            votes = torch.zeros(r * k, device=probs.device).index_add_(
                0, pool.index[has] * k + lab[has].long(), torch.ones(int(has.sum()), device=probs.device))
            votes = votes.view(r, k)
            from_labels = votes.sum(dim=1) > 0
            cls = torch.where(from_labels, votes.argmax(dim=1), cls)
            conf = torch.where(from_labels, torch.ones_like(conf), conf)
    return cls, conf, from_labels


def region_contrastive_loss(features: Tensor, logits: Tensor, regions: Tensor,
                            temperature: float = DEFAULT_TEMPERATURE, confidence: float = DEFAULT_CONFIDENCE,
                            labels: Tensor | None = None, ignore_index: int | None = None,
                            max_regions: int | None = DEFAULT_MAX_REGIONS,
                            generator: torch.Generator | None = None) -> Tensor:
    """Supervised contrastive loss between confident regions (see the module docstring).

    Args:
        features: ``(P, C)`` point features (e.g. the penultimate features; gradients flow here).
        logits: ``(P, K)`` class logits of the same points (detached: they only pick the pairs).
        regions: ``(P,)`` integer region ids (negative = no region).
        temperature: softmax temperature ``t`` (default 0.4).
        confidence: smallest mean probability for a region's prediction to be used (0-1).
        labels: optional ``(P,)`` sparse labels; regions with labelled points use their majority.
        ignore_index: label of unlabelled points in ``labels``.
        max_regions: use at most this many confident regions (a random subset), or None for all.
        generator: random generator for that subset (reproducible runs).

    Returns:
        A scalar loss; 0 (attached to the graph) when no confident region has a positive.
    """
    if not temperature > 0:
        raise ConfigError(f"contrastive temperature must be > 0, got {temperature}")
    if not 0.0 <= confidence <= 1.0:
        raise ConfigError(f"confidence threshold must be in [0, 1], got {confidence}")
    if logits.dim() != 2 or logits.shape[0] != features.shape[0]:
        raise DataError(f"logits: expected ({features.shape[0]}, K), got shape {tuple(logits.shape)}")
    pool = pool_regions(features, regions)
    cls, conf, _ = region_pseudo_labels(logits, pool, labels, ignore_index)
    sel = torch.nonzero(conf >= confidence).flatten()
    if max_regions is not None and len(sel) > max_regions:
        perm = torch.randperm(len(sel), generator=generator)[:max_regions].to(sel.device)
        sel = sel[perm]
    zero = features.sum() * 0.0
    if len(sel) < 2:
        return zero
    z = F.normalize(pool.features[sel], dim=1)
    y = cls[sel]
    sim = z @ z.t() / temperature
    eye = torch.eye(len(sel), dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (y[:, None] == y[None, :]) & ~eye
    n_pos = pos.sum(dim=1)
    anchors = n_pos > 0
    if not anchors.any():
        return zero
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(dim=1)[anchors] / n_pos[anchors]
    return per_anchor.mean()
