"""Segmentation losses: hand-computed values, reference implementations, shapes, ignore, specs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from terraseg.errors import ConfigError, DataError
from terraseg.training.losses import (
    CombinedLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    as_class_weights,
    build_loss,
    loss_options,
)

IGN = 255


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _random_case(seed: int, n: int = 2, c: int = 4, h: int = 3, w: int = 5, ignore_frac: float = 0.2
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, c, (n, h, w), generator=g)
    target[torch.rand(n, h, w, generator=g) < ignore_frac] = IGN
    return logits, target


def _all_losses(**kw: object) -> list[torch.nn.Module]:
    return [CrossEntropyLoss(**kw), CrossEntropyLoss(label_smoothing=0.1, **kw),
            OhemCrossEntropyLoss(thresh=0.6, min_kept=3, **kw), FocalLoss(gamma=2.0, **kw),
            DiceLoss(**kw), DiceLoss(classes="all", per_image=True, **kw),
            LovaszSoftmaxLoss(**kw), LovaszSoftmaxLoss(per_image=True, classes="all", **kw)]


# --------------------------------------------------------------------------------------------
# cross-entropy
# --------------------------------------------------------------------------------------------

# one image, 3 classes, 1 x 4 pixels; the last pixel is ignored
CE_LOGITS = [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0], [0.0, 0.0, 3.0], [9.0, -9.0, 0.0]]
CE_TARGET = [0, 2, 1, IGN]
CE_W = [1.0, 2.0, 0.5]


def _ce_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor(CE_LOGITS, dtype=torch.float64).t().reshape(1, 3, 1, 4)
    return logits, torch.tensor(CE_TARGET).reshape(1, 1, 4)


def test_ce_equals_hand_computed_weighted_nll_with_ignore() -> None:
    logits, target = _ce_inputs()
    nll = [-math.log(_softmax(row)[y]) for row, y in zip(CE_LOGITS[:3], CE_TARGET[:3])]
    wy = [CE_W[y] for y in CE_TARGET[:3]]
    # unweighted: plain mean over the 3 valid pixels
    assert float(CrossEntropyLoss(ignore_index=IGN)(logits, target)) == pytest.approx(sum(nll) / 3, rel=1e-12)
    # weighted: sum(w_y * nll) / sum(w_y)
    expect = sum(w * v for w, v in zip(wy, nll)) / sum(wy)
    ce = CrossEntropyLoss(ignore_index=IGN, class_weights=CE_W)
    assert float(ce(logits, target)) == pytest.approx(expect, rel=1e-12)
    none = CrossEntropyLoss(ignore_index=IGN, class_weights=CE_W, reduction="none")(logits, target)
    assert none.shape == (1, 1, 4)
    np.testing.assert_allclose(none.flatten().numpy(), [w * v for w, v in zip(wy, nll)] + [0.0], rtol=1e-12)
    total = CrossEntropyLoss(ignore_index=IGN, class_weights=CE_W, reduction="sum")(logits, target)
    assert float(total) == pytest.approx(sum(w * v for w, v in zip(wy, nll)), rel=1e-12)


def test_ce_label_smoothing_by_hand_and_matches_torch() -> None:
    logits, target = _ce_inputs()
    eps = 0.2
    terms, norm = 0.0, 0.0
    for row, y in zip(CE_LOGITS[:3], CE_TARGET[:3]):
        logp = [math.log(p) for p in _softmax(row)]
        terms += (1 - eps) * CE_W[y] * -logp[y] + eps / 3 * sum(w * -lp for w, lp in zip(CE_W, logp))
        norm += CE_W[y]
    ce = CrossEntropyLoss(ignore_index=IGN, class_weights=CE_W, label_smoothing=eps)
    assert float(ce(logits, target)) == pytest.approx(terms / norm, rel=1e-12)
    ref = F.cross_entropy(logits, target.reshape(1, 1, 4), weight=torch.tensor(CE_W, dtype=torch.float64),
                          ignore_index=IGN, label_smoothing=eps)
    assert float(ce(logits, target)) == pytest.approx(float(ref), rel=1e-10)


def test_ce_ignore_index_none_uses_every_pixel() -> None:
    logits, target = _ce_inputs()
    target = target.clone()
    target[target == IGN] = 0
    nll = [-math.log(_softmax(row)[y]) for row, y in zip(CE_LOGITS, target.flatten().tolist())]
    assert float(CrossEntropyLoss(ignore_index=None)(logits, target)) == pytest.approx(sum(nll) / 4, rel=1e-12)


# --------------------------------------------------------------------------------------------
# OHEM
# --------------------------------------------------------------------------------------------

# 2 classes, all targets 0: logits (0, ln(1/p - 1)) give true-class probability exactly p
OHEM_P = [0.95, 0.1, 0.8, 0.5, 0.9, 0.3]


def _ohem_image(probs: list[float], ignored_at: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.tensor([math.log(1 / p - 1) for p in probs], dtype=torch.float64)
    logits = torch.stack([torch.zeros_like(z), z]).reshape(1, 2, 1, -1)
    target = torch.zeros(1, 1, len(probs), dtype=torch.long)
    if ignored_at is not None:
        target[0, 0, ignored_at] = IGN
    return logits, target


def _kept(loss: OhemCrossEntropyLoss, logits: torch.Tensor, target: torch.Tensor) -> list[int]:
    none = OhemCrossEntropyLoss(ignore_index=loss.ignore_index, thresh=loss.thresh, min_kept=loss.min_kept,
                                reduction="none")(logits, target)
    return torch.nonzero(none.flatten() > 0).flatten().tolist()


def test_ohem_threshold_binding_keeps_pixels_below_thresh() -> None:
    # an extra ignored pixel with a very low probability must never be kept
    logits, target = _ohem_image([*OHEM_P, 0.01], ignored_at=6)
    loss = OhemCrossEntropyLoss(ignore_index=IGN, thresh=0.7, min_kept=2)
    assert _kept(loss, logits, target) == [1, 3, 5]  # p = 0.1, 0.5, 0.3 < 0.7; 3 > min_kept
    expect = sum(-math.log(OHEM_P[i]) for i in (1, 3, 5)) / 3
    assert float(loss(logits, target)) == pytest.approx(expect, rel=1e-12)


def test_ohem_min_kept_binding_keeps_the_hardest() -> None:
    logits, target = _ohem_image([*OHEM_P, 0.01], ignored_at=6)
    loss = OhemCrossEntropyLoss(ignore_index=IGN, thresh=0.7, min_kept=5)
    assert _kept(loss, logits, target) == [1, 2, 3, 4, 5]  # 5 lowest: 0.1, 0.3, 0.5, 0.8, 0.9
    expect = sum(-math.log(OHEM_P[i]) for i in (1, 2, 3, 4, 5)) / 5
    assert float(loss(logits, target)) == pytest.approx(expect, rel=1e-12)
    # min_kept beyond the valid count keeps every valid pixel, never the ignored one
    assert _kept(OhemCrossEntropyLoss(ignore_index=IGN, min_kept=100), logits, target) == [0, 1, 2, 3, 4, 5]
    # thresh=None keeps exactly min_kept
    assert _kept(OhemCrossEntropyLoss(ignore_index=IGN, thresh=None, min_kept=2), logits, target) == [1, 5]


def test_ohem_min_kept_is_per_image() -> None:
    a, ta = _ohem_image(OHEM_P)
    b, tb = _ohem_image([0.99, 0.98, 0.97, 0.2, 0.96, 0.95])
    logits, target = torch.cat([a, b]), torch.cat([ta, tb])
    loss = OhemCrossEntropyLoss(thresh=0.25, min_kept=2)
    assert _kept(loss, a, ta) == [1, 5]  # one image: the 2 lowest, 0.1 and 0.3
    # two images: only 0.1 and 0.2 are below 0.25, so the 2 * 2 lowest of the batch are kept:
    # 0.1, 0.2, 0.3, 0.5 at flat indices 1, 9, 5, 3
    assert _kept(loss, logits, target) == [1, 3, 5, 9]


# --------------------------------------------------------------------------------------------
# focal
# --------------------------------------------------------------------------------------------

def test_focal_gamma_zero_equals_ce_and_hand_value() -> None:
    logits, target = _random_case(0)
    w = [0.5, 1.0, 2.0, 1.5]
    for kw in ({}, {"class_weights": w}):
        for red in ("mean", "sum", "none"):
            ce = CrossEntropyLoss(reduction=red, **kw)(logits, target)
            fo = FocalLoss(gamma=0.0, reduction=red, **kw)(logits, target)
            torch.testing.assert_close(fo, ce, rtol=1e-12, atol=1e-12)
    # one pixel by hand, gamma = 2, weight of the true class 2
    logits1, target1 = _ce_inputs()
    p = _softmax(CE_LOGITS[1])[2]
    fo = FocalLoss(gamma=2.0, class_weights=CE_W, reduction="none")(logits1, target1)
    assert float(fo[0, 0, 1]) == pytest.approx(0.5 * (1 - p) ** 2 * -math.log(p), rel=1e-12)


def test_focal_down_weights_easy_pixels_and_has_finite_gradient() -> None:
    # (P=2, C=2): point 0 is confidently right (p = 1 in float32), point 1 has p = 0.5
    logits = torch.tensor([[40.0, 0.0], [0.0, 0.0]], requires_grad=True)
    target = torch.tensor([0, 0])
    loss = FocalLoss(gamma=0.5, reduction="none")(logits, target)
    loss_values = loss.detach()
    assert float(loss_values[0]) < 1e-8 and float(loss_values[1]) == pytest.approx(0.5 ** 0.5 * math.log(2), rel=1e-6)
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()


# --------------------------------------------------------------------------------------------
# Dice
# --------------------------------------------------------------------------------------------

def test_dice_perfect_prediction_is_zero() -> None:
    target = torch.tensor([[[0, 1, 2], [2, 1, IGN]]])
    logits = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).double() * 1e4
    logits[0, :, 1, 2] = torch.tensor([-5.0, 3.0, 7.0])  # anything at the ignored pixel
    for smooth in (0.0, 1.0):
        for classes in ("present", "all"):
            loss = DiceLoss(ignore_index=IGN, smooth=smooth, classes=classes)(logits, target)
            assert abs(float(loss)) < 1e-12


def test_dice_known_case_equals_hand_formula() -> None:
    # 2 classes, 3 pixels (P, C) input, targets 0, 1, 1; class-0 probabilities p
    p0 = [0.8, 0.4, 0.1]
    logits = torch.tensor([[0.0, math.log(1 / p - 1)] for p in p0], dtype=torch.float64)
    target = torch.tensor([0, 1, 1])
    y0, y1 = [1, 0, 0], [0, 1, 1]
    p1 = [1 - p for p in p0]

    def term(p: list[float], y: list[int], smooth: float) -> float:
        inter = sum(a * b for a, b in zip(p, y))
        return 1 - (2 * inter + smooth) / (sum(p) + sum(y) + smooth)

    for smooth in (0.0, 1.0):
        d0, d1 = term(p0, y0, smooth), term(p1, y1, smooth)
        assert float(DiceLoss(smooth=smooth)(logits, target)) == pytest.approx((d0 + d1) / 2, rel=1e-12)
        w = DiceLoss(smooth=smooth, class_weights=[3.0, 1.0])(logits, target)
        assert float(w) == pytest.approx((3 * d0 + d1) / 4, rel=1e-12)
        none = DiceLoss(smooth=smooth, reduction="none")(logits, target)
        np.testing.assert_allclose(none.numpy(), [d0, d1], rtol=1e-12)
    # exponent 2 (V-Net denominator)
    v0 = 1 - (2 * 0.8 + 1) / (sum(p * p for p in p0) + 1 + 1)
    v1 = 1 - (2 * (0.6 + 0.9) + 1) / (sum(p * p for p in p1) + 2 + 1)
    assert float(DiceLoss(exponent=2.0)(logits, target)) == pytest.approx((v0 + v1) / 2, rel=1e-12)


def test_dice_absent_classes_present_vs_all() -> None:
    # 3 classes, class 2 absent from the target but predicted with probability q everywhere
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([0, 1])
    p = torch.softmax(logits, 1).numpy()
    d = [1 - (2 * p[i, i] + 1) / (p[:, i].sum() + 1 + 1) for i in (0, 1)]
    d2 = 1 - 1 / (p[:, 2].sum() + 1)  # absent class: sum p / (sum p + smooth)
    present = DiceLoss()(logits, target)
    everything = DiceLoss(classes="all")(logits, target)
    listed = DiceLoss(classes=[2])(logits, target)
    assert float(present) == pytest.approx(sum(d) / 2, rel=1e-12)
    assert float(everything) == pytest.approx((sum(d) + d2) / 3, rel=1e-12)
    assert float(listed) == pytest.approx(d2, rel=1e-12)
    # smooth = 0 and no class at all present: 0 (no NaN)
    empty = DiceLoss(smooth=0.0)(logits, torch.tensor([IGN, IGN]))
    assert float(empty) == 0.0


# --------------------------------------------------------------------------------------------
# Lovasz-softmax
# --------------------------------------------------------------------------------------------

def _jaccard_loss(mispredicted: set[int], foreground: set[int]) -> float:
    """Berman et al. eq. 5: |M| / |fg U M| (0 for the empty set)."""
    return len(mispredicted) / len(foreground | mispredicted) if mispredicted else 0.0


def _lovasz_reference_set(probs: np.ndarray, labels: np.ndarray, classes: str) -> float | None:
    """Slow reference over one set: probs (C, M) of the valid elements, labels (M,)."""
    c_count, m = probs.shape
    terms = []
    for c in range(c_count):
        fg = labels == c
        if classes == "present" and not fg.any():
            continue
        errors = np.abs(fg.astype(float) - probs[c])
        order = sorted(range(m), key=lambda i: -errors[i])
        foreground = set(np.flatnonzero(fg).tolist())
        value, previous = 0.0, 0.0
        for i in range(1, m + 1):  # Lovasz extension: sum of sorted errors times Jaccard increments
            current = _jaccard_loss(set(order[:i]), foreground)
            value += errors[order[i - 1]] * (current - previous)
            previous = current
        terms.append(value)
    return float(np.mean(terms)) if terms else None


def _lovasz_reference(logits: torch.Tensor, target: torch.Tensor, per_image: bool, classes: str) -> float:
    probs = torch.softmax(logits, 1).detach().numpy()
    n, c = probs.shape[:2]
    probs, labels = probs.reshape(n, c, -1), target.reshape(n, -1).numpy()
    if not per_image:
        probs, labels = probs.transpose(1, 0, 2).reshape(1, c, -1), labels.reshape(1, -1)
    values = []
    for pr, lb in zip(probs, labels):
        keep = lb != IGN
        v = _lovasz_reference_set(pr[:, keep], lb[keep], classes)
        if v is not None:
            values.append(v)
    return float(np.mean(values)) if values else 0.0


def test_lovasz_perfect_prediction_is_zero() -> None:
    target = torch.tensor([[[0, 1, 2, 2], [1, 1, 0, IGN]]])
    logits = F.one_hot(target.clamp(max=2), 3).permute(0, 3, 1, 2).double() * 1e4
    for per_image in (False, True):
        for classes in ("present", "all"):
            loss = LovaszSoftmaxLoss(per_image=per_image, classes=classes)(logits, target)
            assert float(loss) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_matches_brute_force_reference(seed: int, per_image: bool, classes: str) -> None:
    logits, target = _random_case(seed, n=3, c=4, h=2, w=4)
    target[0, 0] = IGN  # some rows ignored; image 2 lacks class 3 in most seeds
    target[2][target[2] == 3] = 1
    loss = LovaszSoftmaxLoss(per_image=per_image, classes=classes)(logits, target)
    assert float(loss) == pytest.approx(_lovasz_reference(logits, target, per_image, classes), rel=1e-10, abs=1e-12)


def test_per_image_mean_skips_images_without_classes() -> None:
    logits, target = _random_case(9, n=2, c=3, h=3, w=3, ignore_frac=0.0)
    target[1] = IGN  # image 1 has no labelled pixel: it must not dilute the mean
    for loss in (LovaszSoftmaxLoss(per_image=True), DiceLoss(per_image=True)):
        torch.testing.assert_close(loss(logits, target), loss(logits[:1], target[:1]), rtol=1e-12, atol=1e-12)
    lov = LovaszSoftmaxLoss(per_image=True, reduction="none")(logits, target)
    assert torch.equal(lov[1], torch.zeros(3, dtype=torch.float64))


def test_lovasz_on_hard_predictions_is_one_minus_miou() -> None:
    logits, target = _random_case(5, n=2, c=3, h=4, w=4)
    pred = logits.argmax(1)
    hard = F.one_hot(pred, 3).permute(0, 3, 1, 2).double() * 1e4
    valid = target != IGN
    ious = []
    for c in range(3):
        g, p = (target == c) & valid, (pred == c) & valid
        if g.any():
            ious.append(float((g & p).sum()) / float((g | p).sum()))
    assert float(LovaszSoftmaxLoss()(hard, target)) == pytest.approx(1 - np.mean(ious), rel=1e-12)


def test_lovasz_gradient_is_finite_and_correct() -> None:
    logits, target = _random_case(3, n=2, c=3, h=2, w=3)
    for per_image in (False, True):
        loss_fn = LovaszSoftmaxLoss(per_image=per_image)
        x = logits.clone().requires_grad_(True)
        loss_fn(x, target).backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert torch.autograd.gradcheck(lambda z, f=loss_fn: f(z, target), (logits.clone().requires_grad_(True),))
    # a float32 batch with every pixel ignored: 0 and a zero, finite gradient
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = LovaszSoftmaxLoss()(x, torch.full((1, 2, 2), IGN))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_lovasz_class_weights_weight_the_class_terms() -> None:
    logits, target = _random_case(7, n=1, c=3, h=3, w=3, ignore_frac=0.0)
    terms = LovaszSoftmaxLoss(reduction="none", classes="all")(logits, target)
    assert terms.shape == (3,)
    w = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    weighted = LovaszSoftmaxLoss(classes="all", class_weights=w)(logits, target)
    assert float(weighted) == pytest.approx(float((terms * w).sum() / w.sum()), rel=1e-12)
    per = LovaszSoftmaxLoss(reduction="none", per_image=True)(torch.cat([logits, logits]), torch.cat([target, target]))
    assert per.shape == (2, 3)


# --------------------------------------------------------------------------------------------
# shapes, ignore, AMP
# --------------------------------------------------------------------------------------------

def test_point_shapes_equal_image_layout() -> None:
    logits4, target3 = _random_case(11, n=2, c=4, h=3, w=4)
    logits3, target2 = logits4.reshape(2, 4, 12), target3.reshape(2, 12)
    for loss in _all_losses():
        a, b = loss(logits4, target3), loss(logits3, target2)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        # one point cloud (P, C) equals the same cloud as a 1-image batch
        c = loss(logits3[0].t(), target2[0])
        d = loss(logits4[:1], target3[:1])
        torch.testing.assert_close(c, d, rtol=1e-12, atol=1e-12)
    # mmseg-style (N, 1, H, W) targets and reduction="none" shapes
    ce = CrossEntropyLoss(reduction="none")
    assert ce(logits4, target3.unsqueeze(1)).shape == (2, 3, 4)
    assert ce(logits3, target2).shape == (2, 12) and ce(logits3[0].t(), target2[0]).shape == (12,)


def test_every_loss_ignores_ignore_index_pixels() -> None:
    logits, target = _random_case(21, n=2, c=4, h=3, w=4, ignore_frac=0.3)
    ignored = (target == IGN).unsqueeze(1).expand_as(logits)
    assert ignored.any()
    changed = logits.clone()
    changed[ignored] = torch.randn(int(ignored.sum()), dtype=torch.float64) * 50
    for loss in _all_losses(class_weights=[1.0, 2.0, 0.5, 1.5]):
        x = changed.clone().requires_grad_(True)
        value = loss(x, target)
        torch.testing.assert_close(value, loss(logits, target), rtol=1e-12, atol=1e-12)
        value.backward()
        assert torch.equal(x.grad[ignored], torch.zeros(int(ignored.sum()), dtype=torch.float64)), loss


def test_all_ignored_batch_gives_zero_not_nan() -> None:
    x = torch.randn(2, 3, 2, 2, requires_grad=True)
    target = torch.full((2, 2, 2), IGN)
    for loss in _all_losses():
        value = loss(x, target)
        assert float(value.detach()) == 0.0, loss
        (g,) = torch.autograd.grad(value, x)
        assert torch.equal(g, torch.zeros_like(x))


def test_amp_inputs_are_computed_in_float32() -> None:
    logits, target = _random_case(4, n=1, c=3, h=4, w=4)
    half = logits.to(torch.bfloat16)
    for loss in _all_losses():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss(half, target)
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, loss(half.float(), target), rtol=1e-6, atol=1e-7)
    assert CrossEntropyLoss()(logits, target).dtype == torch.float64  # float64 is kept


def test_bad_tensors_raise_data_error() -> None:
    logits, target = _random_case(0, n=1, c=3, h=2, w=2, ignore_frac=0.0)
    bad = target.clone()
    bad[0, 0, 0] = 7
    with pytest.raises(DataError, match=r"class id 7.*0\.\.2.*ignore_index \(255\)"):
        CrossEntropyLoss()(logits, bad)
    with pytest.raises(DataError, match=r"need target \(1, 2, 2\), got \(1, 3, 2\)"):
        DiceLoss()(logits, torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(DataError, match="integer class ids"):
        LovaszSoftmaxLoss()(logits, target.float())
    with pytest.raises(DataError, match=r"need target \(4,\)"):
        FocalLoss()(torch.zeros(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(DataError, match="floating point"):
        CrossEntropyLoss()(logits.long(), target)
    with pytest.raises(ConfigError, match="class_weights has 2 entries but the logits have 3 classes"):
        CrossEntropyLoss(class_weights=[1.0, 2.0])(logits, target)
    with pytest.raises(ConfigError, match="beyond the 3 classes"):
        DiceLoss(classes=[0, 5])(logits, target)


def test_class_weights_accept_numpy_and_tensor_and_reject_bad() -> None:
    np.testing.assert_allclose(as_class_weights(np.array([0.0, 1.5, 2.0])).numpy(), [0.0, 1.5, 2.0])
    assert as_class_weights(torch.tensor([1.0, 2.0], dtype=torch.float64)).dtype == torch.float32
    for bad, msg in (([1.0, -1.0], ">= 0"), ([0.0, 0.0], "all 0"), ([[1.0]], "1-D"), ([1.0, math.nan], "finite"),
                     ("enet", "is a name")):
        with pytest.raises(ConfigError, match=msg):
            as_class_weights(bad)


# --------------------------------------------------------------------------------------------
# combined loss and spec
# --------------------------------------------------------------------------------------------

def test_combined_loss_is_the_weighted_sum() -> None:
    logits, target = _random_case(8)
    enet = [0.5, 1.0, 2.0, 1.5]
    spec = [{"name": "ce", "weight": 1.0, "class_weights": "enet"}, {"name": "lovasz", "weight": 0.5},
            "dice", {"name": "focal", "gamma": 1.0, "weight": 0.25}, {"name": "ce", "label_smoothing": 0.1}]
    combined = build_loss(spec, weight_tables={"enet": enet}, num_classes=4)
    assert isinstance(combined, CombinedLoss)
    assert combined.names == ["ce", "lovasz", "dice", "focal", "ce_2"]
    expect = (CrossEntropyLoss(class_weights=enet)(logits, target) + 0.5 * LovaszSoftmaxLoss()(logits, target)
              + DiceLoss()(logits, target) + 0.25 * FocalLoss(gamma=1.0)(logits, target)
              + CrossEntropyLoss(label_smoothing=0.1)(logits, target))
    total, terms = combined(logits, target, return_terms=True)
    torch.testing.assert_close(total, expect, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(combined(logits, target), expect, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms["lovasz"], LovaszSoftmaxLoss()(logits, target))
    # a callable resolver and the ignore_index default reach every term
    built = build_loss({"name": "ohem", "class_weights": "median", "min_kept": 4}, ignore_index=-1,
                       weight_tables=lambda m: {"median": enet}[m])
    assert built.losses[0].ignore_index == -1 and built.losses[0].class_weights.tolist() == enet


def test_loss_options_lists_keys() -> None:
    assert set(loss_options("lovasz")) == {"ignore_index", "class_weights", "classes", "per_image", "reduction"}
    assert "thresh" in loss_options("ohem") and "gamma" in loss_options("focal")


@pytest.mark.parametrize(("spec", "kwargs", "match"), [
    ([{"name": "crossentropy"}], {}, r"loss\[0\]: unknown loss 'crossentropy' \(known: ce, ohem, focal, dice, lovasz\)"),
    ([{"name": "ce"}, {"name": "lovasz", "clases": "all"}], {},
     r"loss\[1\] \(lovasz\): unknown key 'clases' .*did you mean 'classes'"),
    ([{"weight": 1.0}], {}, r"loss\[0\]: missing 'name'"),
    ([], {}, "empty"),
    ([3], {}, "must be a loss name or a mapping"),
    ([{"name": "ce", "weight": -1}], {}, r"loss\[0\] \(ce\): weight must be"),
    ([{"name": "ce", "weight": "heavy"}], {}, r"weight must be a number"),
    ([{"name": "focal", "gamma": -2}], {}, r"\(focal\): gamma must be"),
    ([{"name": "ohem", "thresh": 1.5}], {}, r"\(ohem\): thresh must be"),
    ([{"name": "dice", "classes": "some"}], {}, r"\(dice\): classes must be"),
    ([{"name": "ce", "reduction": "avg"}], {}, r"reduction must be one of mean, sum, none"),
    ([{"name": "ce", "reduction": "none"}], {}, r"reduction 'none' .* cannot be combined"),
    ([{"name": "ce", "class_weights": "enet"}], {}, r"'enet' is a name, but no class-weight tables"),
    ([{"name": "ce", "class_weights": "enet"}], {"weight_tables": {"median": [1.0]}},
     r"unknown class_weights 'enet' \(available: median\)"),
    ([{"name": "ce", "class_weights": [1.0, 2.0]}], {"num_classes": 3}, r"has 2 entries, expected 3"),
    ([{"name": "ce", "ignore_index": 2.5}], {}, r"ignore_index must be an integer"),
])
def test_bad_specs_raise_config_error(spec: object, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_loss(spec, **kwargs)  # type: ignore[arg-type]


def test_spec_errors_name_the_source() -> None:
    with pytest.raises(ConfigError, match=r"^train\.yaml: loss\[0\]: unknown loss 'lovaz'.*did you mean 'lovasz'"):
        build_loss(["lovaz"], source="train.yaml: loss")
