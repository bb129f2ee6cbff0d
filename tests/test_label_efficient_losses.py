"""Boundary head and losses, region contrast and distillation losses on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from terraseg.errors import ConfigError, DataError
from terraseg.label_efficient import (
    BoundaryHead,
    DistillHead,
    boundary_energy_loss,
    boundary_loss,
    cosine_distill_loss,
    free_energy,
    kl_distill_loss,
    pool_regions,
    region_contrastive_loss,
    region_pseudo_labels,
)


def _v(t: torch.Tensor) -> float:
    """A scalar loss value, read without touching the graph."""
    return float(t.detach())


def test_boundary_head_shapes_and_loss() -> None:
    torch.manual_seed(0)
    head = BoundaryHead(8)
    assert head(torch.randn(5, 8)).shape == (5,) and head(torch.randn(2, 7, 8)).shape == (2, 7)
    with pytest.raises(DataError, match="expects 8 feature channels"):
        head(torch.randn(5, 4))
    z = torch.zeros(4)
    y = torch.tensor([1, 0, 0, 0], dtype=torch.bool)
    # zero logits: log 2 per point; balanced weight 3 on the single boundary point -> (3 + 3) / 4 * log 2
    assert _v(boundary_loss(z, y)) == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert _v(boundary_loss(z, y, pos_weight=None)) == pytest.approx(math.log(2), rel=1e-6)
    assert _v(boundary_loss(z, y, pos_weight=3.0)) == pytest.approx(1.5 * math.log(2), rel=1e-6)
    valid = torch.tensor([True, True, False, False])
    assert _v(boundary_loss(z, y, valid=valid)) == pytest.approx(math.log(2), rel=1e-6)  # balanced: 1 vs 1
    z.requires_grad_(True)
    boundary_loss(z, y).backward()
    assert z.grad is not None and z.grad[0] < 0 < z.grad[1]
    with pytest.raises(ConfigError, match="pos_weight"):
        boundary_loss(z, y, pos_weight=-1)


def test_free_energy_hand_values() -> None:
    assert _v(free_energy(torch.zeros(1, 2))) == pytest.approx(-math.log(2))
    assert _v(free_energy(torch.zeros(1, 20))) == pytest.approx(-math.log(20))
    assert _v(free_energy(torch.zeros(1, 2), temperature=2.0)) == pytest.approx(-2 * math.log(2))
    assert _v(free_energy(torch.tensor([[10.0, 0.0]]))) == pytest.approx(-(10 + math.log1p(math.exp(-10))))
    with pytest.raises(ConfigError, match="temperature"):
        free_energy(torch.zeros(1, 2), temperature=0)


def test_boundary_energy_loss_hand_values() -> None:
    logits = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 0.0]], requires_grad=True)
    e0 = -math.log(2)
    # margin -1: the flat point is 1 - log 2 above it, the confident one below; the third is not a boundary
    loss = boundary_energy_loss(logits, torch.tensor([True, True, False]), margin=-1.0)
    assert _v(loss.detach()) == pytest.approx((e0 + 1) ** 2 / 2, rel=1e-6)
    loss.backward()
    g = logits.grad
    assert g is not None and g[2].abs().sum() == 0 and g[1].abs().sum() < 1e-6
    assert (g[0] < 0).all()  # descending the loss raises the flat point's logits: more confident
    # soft weights (e.g. the boundary head's probabilities) weight the hinge
    w = torch.tensor([0.5, 0.0, 0.25])
    assert _v(boundary_energy_loss(logits.detach(), w, margin=-1.0)) == pytest.approx((e0 + 1) ** 2, rel=1e-6)
    # (B, N, K) logits with (B, N) weights; no boundary point: 0 attached to the graph
    zero = boundary_energy_loss(logits[None], torch.zeros(1, 3), margin=-1.0)
    assert _v(zero.detach()) == 0.0 and zero.requires_grad
    with pytest.raises(DataError, match="boundary weights have 2 points, the logits 3"):
        boundary_energy_loss(logits, torch.ones(2))


def test_pool_regions_means_and_pseudo_labels() -> None:
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    pool = pool_regions(feats, torch.tensor([7, 7, 2, -1]))
    assert pool.ids.tolist() == [2, 7] and pool.counts.tolist() == [1.0, 2.0]
    assert pool.features.tolist() == [[0.0, 2.0], [2.0, 0.0]] and pool.index.tolist() == [1, 1, 0, -1]
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0], [0.0, 1.0], [9.0, 0.0]])
    cls, conf, from_labels = region_pseudo_labels(logits, pool)
    p0 = 1 / (1 + math.exp(-4))
    assert cls.tolist() == [1, 0] and conf[1] == pytest.approx((p0 + 0.5) / 2) and not from_labels.any()
    cls, conf, from_labels = region_pseudo_labels(logits, pool, torch.tensor([255, 1, 255, 0]), ignore_index=255)
    assert cls.tolist() == [1, 1] and conf[1] == 1.0 and from_labels.tolist() == [False, True]


def test_region_contrastive_loss_hand_values() -> None:
    e1, e2 = [1.0, 0.0], [0.0, 1.0]
    feats = torch.tensor([e1, e1, e2, e2], requires_grad=True)
    confident = torch.tensor([[9.0, -9.0], [9.0, -9.0], [-9.0, 9.0], [-9.0, 9.0]])
    regions = torch.arange(4)
    t = 0.4
    loss = region_contrastive_loss(feats, confident, regions, temperature=t)
    # each anchor: one positive at cosine 1, two negatives at cosine 0
    assert _v(loss) == pytest.approx(math.log(1 + 2 * math.exp(-1 / t)), rel=1e-5)
    loss.backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    # region 3 unsure (class 1 at p = 0.88): left out; anchor 2 then has no positive
    unsure = confident.clone()
    unsure[3] = torch.tensor([-1.0, 1.0])
    loss = region_contrastive_loss(feats, unsure, regions, temperature=t, confidence=0.9)
    assert _v(loss) == pytest.approx(math.log(1 + math.exp(-1 / t)), rel=1e-5)
    # ... unless a sparse label says what it is
    loss = region_contrastive_loss(feats, unsure, regions, temperature=t, labels=torch.tensor([255, 255, 255, 1]),
                                   ignore_index=255)
    assert _v(loss) == pytest.approx(math.log(1 + 2 * math.exp(-1 / t)), rel=1e-5)
    # a lower threshold admits it too; the default temperature is 0.4
    assert _v(region_contrastive_loss(feats, unsure, regions, confidence=0.5)) == pytest.approx(
        math.log(1 + 2 * math.exp(-1 / t)), rel=1e-5)
    # no positive pair at all: 0, attached
    lonely = region_contrastive_loss(feats[[0, 2]], confident[[0, 2]], torch.tensor([0, 1]))
    assert _v(lonely) == 0.0 and lonely.requires_grad
    with pytest.raises(ConfigError, match="temperature"):
        region_contrastive_loss(feats, confident, regions, temperature=0)
    with pytest.raises(ConfigError, match="confidence"):
        region_contrastive_loss(feats, confident, regions, confidence=1.5)


def test_region_contrastive_loss_pools_points_and_caps_regions() -> None:
    torch.manual_seed(0)
    feats = torch.randn(600, 16)
    logits = torch.randn(600, 3) * 5
    regions = torch.randint(0, 150, (600,))
    g = torch.Generator().manual_seed(0)
    a = region_contrastive_loss(feats, logits, regions, confidence=0.0, max_regions=40, generator=g)
    b = region_contrastive_loss(feats, logits, regions, confidence=0.0, max_regions=40,
                                generator=torch.Generator().manual_seed(0))
    assert _v(a) == _v(b) > 0  # same generator, same subset
    full = region_contrastive_loss(feats, logits, regions, confidence=0.0, max_regions=None)
    assert math.isfinite(_v(full)) and _v(full) > 0


def test_distillation_losses_hand_values() -> None:
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    target = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    assert _v(cosine_distill_loss(pred, target)) == pytest.approx(0.5)
    assert _v(cosine_distill_loss(pred, target, valid=torch.tensor([True, False]))) == pytest.approx(0.0)
    none = cosine_distill_loss(pred, target, valid=torch.tensor([False, False]))
    assert _v(none) == 0.0 and none.requires_grad
    assert _v(cosine_distill_loss(pred[None], target[None])) == pytest.approx(0.5)  # (B, N, D)
    teacher = torch.tensor([[0.5, 0.5]])
    assert _v(kl_distill_loss(torch.zeros(1, 2), teacher)) == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor([[math.log(3.0), 0.0]])  # p = (0.75, 0.25)
    assert _v(kl_distill_loss(student, teacher)) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-5)
    # logits teacher with T = 2: both sides softened, times T^2
    t_logits = torch.tensor([[2.0, 0.0]])
    pt = torch.softmax(t_logits / 2, 1)
    ps = torch.softmax(student / 2, 1)
    want = 4 * _v((pt * (pt.log() - ps.log())).sum())
    assert _v(kl_distill_loss(student, t_logits, temperature=2.0, teacher_is="logits")) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ConfigError, match="teacher_is"):
        kl_distill_loss(student, teacher, teacher_is="scores")
    with pytest.raises(DataError, match="differ in shape"):
        cosine_distill_loss(pred, target[:, :1])
    head = DistillHead(8, 32)
    assert head(torch.randn(3, 5, 8)).shape == (3, 5, 32)
