"""Cross-modal model: point-to-pixel sampling (hand-made maps, resize / crop / flip), xMUDA's KL and
entropy terms against hand-computed values, the 2D / 3D / 2D+3D outputs and the ensemble rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from terraseg.errors import ConfigError, DataError
from terraseg.geometry.pixel_map import PixelMap
from terraseg.models.fusion import (
    CrossModalLoss,
    CrossModalModel,
    FusionOutput,
    PointInputSpec,
    build_fusion_model,
    cross_modal_kl,
    entropy_loss,
    fusion_model_from_spec,
    sample_pixels,
)


# ------------------------------------------------------------------------------------- sampling
def test_sample_pixels_hand_made_map() -> None:
    # a 2 x 3 map of a 4 x 6 padded input (stride 2); cell (i, j) holds 10 i + j
    maps = torch.tensor([[[0.0, 1.0, 2.0], [10.0, 11.0, 12.0]]])[None]  # (1, 1, 2, 3)
    # input pixel (u, v) sits at feature coordinates ((u + 0.5) / 2 - 0.5, (v + 0.5) / 2 - 0.5)
    uv = torch.tensor([[0.5, 0.5],    # cell (0, 0) exactly
                       [2.5, 0.5],    # cell (0, 1)
                       [1.5, 0.5],    # halfway between columns 0 and 1 -> 0.5
                       [1.5, 1.5],    # centre of four cells -> (0 + 1 + 10 + 11) / 4
                       [-3.0, 0.5],   # left of the map: border value of column 0
                       [5.5, 3.5]])   # bottom right corner cell
    got = sample_pixels(maps, uv, torch.zeros(6, dtype=torch.int64), (4, 6), "bilinear")[:, 0]
    assert got.tolist() == pytest.approx([0.0, 1.0, 0.5, 5.5, 0.0, 12.0])
    # nearest: the value the upsampled map holds at the point's pixel floor(uv + 0.5)
    near = sample_pixels(maps, torch.tensor([[1.4, 1.6], [1.6, 1.4]]), torch.zeros(2, dtype=torch.int64), (4, 6),
                         "nearest")[:, 0]
    # pixel (1, 2): fx = 1.5 / 2 - 0.5 = 0.25, fy = 2.5 / 2 - 0.5 = 0.75 -> 0.75 * (0.75 * 10 + 0.25 * 11)
    # + 0.25 * (0.75 * 0 + 0.25 * 1); pixel (2, 1): fx = 0.75, fy = 0.25
    assert near[0].item() == pytest.approx(0.75 * 10.25 + 0.25 * 0.25)
    assert near[1].item() == pytest.approx(0.25 * 10.75 + 0.75 * 0.75)


def test_sample_pixels_nearest_equals_the_models_upsampling_and_batches() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, 5, 7, 9, generator=g)
    padded = (28, 36)
    up = F.interpolate(maps, size=padded, mode="bilinear", align_corners=False)
    rng = np.random.default_rng(1)
    uv = torch.from_numpy(rng.uniform(-0.49, 35.49, (40, 2)).astype(np.float32))
    uv[:, 1] = uv[:, 1] * 28 / 36
    b = torch.from_numpy(rng.integers(0, 2, 40))
    got = sample_pixels(maps, uv, b, padded, "nearest")
    px = torch.floor(uv.double() + 0.5).long()
    want = up[b, :, px[:, 1], px[:, 0]]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # gradients reach the features
    m = maps.clone().requires_grad_(True)
    sample_pixels(m, uv, b, padded, "bilinear").sum().backward()
    assert m.grad is not None and float(m.grad.abs().sum()) > 0
    with pytest.raises(ConfigError, match="sampling"):
        sample_pixels(maps, uv, b, padded, "bicubic")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="batch index"):
        sample_pixels(maps, uv, b + 5, padded)


def test_pixel_map_resize_crop_flip_by_hand() -> None:
    m = PixelMap.resize((100, 50), (50, 25))  # half size: u' = (u + 0.5) / 2 - 0.5
    assert m.apply([[0.5, 0.5], [99.0, 49.0]]).tolist() == [[0.0, 0.0], [49.25, 24.25]]
    crop = m.then(PixelMap(1.0, 1.0, -10.0, -5.0, (20, 10), (20, 10)))  # crop at column 10, row 5
    assert crop.apply([[20.5, 10.5]]).tolist() == [[0.0, 0.0]]
    assert crop.inside(crop.apply([[20.5, 10.5], [19.0, 10.5], [60.0, 10.0]])).tolist() == [True, False, False]
    flipped = crop.flipped()  # u -> 19 - u inside the 20 pixels of the crop
    assert flipped.apply([[20.5, 10.5]]).tolist() == [[19.0, 0.0]]
    np.testing.assert_allclose(flipped.inverse_apply(flipped.apply([[33.3, 12.1]])), [[33.3, 12.1]])


@pytest.mark.parametrize("seed", range(6))
def test_training_transform_moves_point_pixels_with_the_image(seed: int) -> None:
    """A mask whose id is the column (rows: the row) resized / cropped / flipped by the training
    transform: the output pixel a source pixel maps to holds that source pixel's ids, exactly."""
    from terraseg.training.augment import ImageAugConfig, build_image_transform

    h, w = 90, 200
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.arange(w)[None, :]
    cols = np.broadcast_to(np.arange(w, dtype=np.int64)[None, :], (h, w)).copy()
    rows = np.broadcast_to(np.arange(h, dtype=np.int64)[:, None], (h, w)).copy()
    cfg = ImageAugConfig(scale=(0.6, 1.8), crop=(64, 96), hflip=0.5, photometric=False)
    t = build_image_transform(cfg, True)
    _, mc, pm = t.apply_with_map(image, cols.astype(np.uint16), np.random.default_rng(seed))
    _, mr, pm2 = t.apply_with_map(image, rows.astype(np.uint16), np.random.default_rng(seed))
    assert pm == pm2
    # every source pixel centre that lands inside the valid crop
    vv, uu = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    src = np.stack([uu.ravel(), vv.ravel()], 1).astype(np.float64)
    out = pm.apply(src)
    ok = pm.inside(out)
    assert ok.sum() > 100
    pix = np.floor(out[ok] + 0.5).astype(np.int64)
    # nearest-neighbour masks: the output pixel nearest to a source centre samples a source pixel
    # at most half an output pixel away (in source pixels: 0.5 / scale)
    err_u = np.abs(mc[pix[:, 1], pix[:, 0]] - src[ok, 0])
    err_v = np.abs(mr[pix[:, 1], pix[:, 0]] - src[ok, 1])
    assert err_u.max() <= 0.5 / abs(pm.sx) + 0.51 and err_v.max() <= 0.5 / pm.sy + 0.51
    # and the other way: each valid output pixel reads the source pixel the inverse map points to
    # (the pixel whose centre is nearest; ties at exactly half a pixel may go either way)
    oy, ox = np.meshgrid(np.arange(pm.valid_size[1]), np.arange(pm.valid_size[0]), indexing="ij")
    back = pm.inverse_apply(np.stack([ox.ravel(), oy.ravel()], 1).astype(np.float64))
    assert np.abs(mc[oy.ravel(), ox.ravel()] - np.clip(back[:, 0], 0, w - 1)).max() <= 0.5 + 1e-9
    assert np.abs(mr[oy.ravel(), ox.ravel()] - np.clip(back[:, 1], 0, h - 1)).max() <= 0.5 + 1e-9


def test_eval_transform_map_is_the_base_size_resize() -> None:
    from terraseg.training.augment import ImageAugConfig, build_image_transform

    t = build_image_transform(ImageAugConfig(base_size=(60, 80)), False)
    x, _, pm = t.apply_with_map(np.zeros((120, 160, 3), np.uint8), None)
    assert x.shape == (3, 60, 80) and pm == PixelMap.resize((160, 120), (80, 60))
    _, _, ident = build_image_transform(ImageAugConfig(), False).apply_with_map(np.zeros((12, 16, 3), np.uint8), None)
    assert ident == PixelMap.identity((16, 12))


# ------------------------------------------------------------------------------------- losses
def _kl_by_hand(student: list[list[float]], teacher: list[list[float]]) -> float:
    total = 0.0
    for s, t in zip(student, teacher):
        q = np.exp(s) / np.exp(s).sum()
        p = np.exp(t) / np.exp(t).sum()
        total += float((p * np.log(p / q)).sum())
    return total / len(student)


def test_cross_modal_kl_by_hand_and_reduction() -> None:
    student = [[0.0, 0.0, 0.0], [2.0, 0.0, -1.0]]
    teacher = [[1.0, 0.0, 0.0], [0.0, 0.0, 3.0]]
    s = torch.tensor(student, requires_grad=True)
    t = torch.tensor(teacher, requires_grad=True)
    kl = cross_modal_kl(s, t)
    # by hand: point 1: p = (e, 1, 1) / (e + 2) = (0.5761, 0.2119, 0.2119), q uniform:
    #   sum p log(3 p) = 0.5761 * 0.5472 + 2 * 0.2119 * (-0.4529) = 0.1233
    # point 2: p = (1, 1, e^3) / (2 + e^3) = (0.0453, 0.0453, 0.9094), q = (e^2, 1, 1/e) / 8.757
    #   = (0.8438, 0.1142, 0.0420): 0.0453 * (-2.925) + 0.0453 * (-0.925) + 0.9094 * 3.075 = 2.6221
    # summed over classes, averaged over the two points: (0.1233 + 2.6221) / 2 = 1.3727
    assert kl.item() == pytest.approx(1.3727, abs=1e-4)
    assert kl.item() == pytest.approx(_kl_by_hand(student, teacher), rel=1e-6)
    # xMUDA's reduction: kl_div(..., reduction="none").sum(1).mean()
    ref = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="none").sum(1).mean()
    assert kl.item() == pytest.approx(ref.item(), rel=1e-6)
    kl.backward()
    assert s.grad is not None and t.grad is None  # the teacher is detached
    assert cross_modal_kl(torch.zeros(0, 3), torch.zeros(0, 3)).item() == 0.0
    assert cross_modal_kl(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]])).item() == pytest.approx(0.0, abs=1e-7)


def test_entropy_loss_by_hand() -> None:
    # uniform -> 1 (normalised by log C); one-hot-ish -> ~0; (0.5, 0.5, 0) -> log 2 / log 3
    logits = torch.tensor([[0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [0.0, 0.0, -1e4]])
    ent = entropy_loss(logits)
    assert ent.item() == pytest.approx((1.0 + 0.0 + math.log(2) / math.log(3)) / 3, abs=1e-6)


def _out(l2: list[list[float]], l3: list[list[float]], m2: list[list[float]] | None = None,
         m3: list[list[float]] | None = None) -> FusionOutput:
    t = torch.tensor
    n = len(l2)
    return FusionOutput(t(l2), t(l3), None if m2 is None else t(m2), None if m3 is None else t(m3),
                        torch.zeros(n, 2), torch.zeros(n, 2))


def test_cross_modal_loss_source_and_target_terms() -> None:
    from terraseg.training import build_loss

    ce = build_loss([{"name": "ce"}], ignore_index=-1)
    l2 = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    l3 = [[0.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 1.0, 1.0]]
    m2 = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]
    m3 = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]]
    out = _out(l2, l3, m2, m3)
    target = torch.tensor([0, 1, -1])
    loss = CrossModalLoss(ce, lambda_xm_src=1.0)
    terms = loss.source(out, target)

    def ce_by_hand(logits: list[list[float]], labels: list[int]) -> float:
        return float(np.mean([-np.log(np.exp(logits[i][c]) / np.exp(logits[i]).sum()) for i, c in enumerate(labels)]))

    seg2, seg3 = ce_by_hand(l2[:2], [0, 1]), ce_by_hand(l3[:2], [0, 1])
    kl2, kl3 = _kl_by_hand(m2, l3), _kl_by_hand(m3, l2)  # each mimicry head learns the *other* main head
    assert terms.parts["seg_2d"].item() == pytest.approx(seg2, rel=1e-5)
    assert terms.parts["seg_3d"].item() == pytest.approx(seg3, rel=1e-5)
    assert terms.parts["xm_src_2d"].item() == pytest.approx(kl2, rel=1e-5)
    assert terms.parts["xm_src_3d"].item() == pytest.approx(kl3, rel=1e-5)
    assert terms.total.item() == pytest.approx(seg2 + seg3 + kl2 + kl3, rel=1e-5)
    # padding points (valid False) take part in nothing
    valid = torch.tensor([True, True, False])
    padded = loss.source(out, target, valid)
    assert padded.parts["xm_src_2d"].item() == pytest.approx(_kl_by_hand(m2[:2], l3[:2]), rel=1e-5)
    # target domain: lambda_xm_trg x KL + lambda_entropy x entropy, no segmentation term
    trg = CrossModalLoss(ce, lambda_xm_trg=0.1, lambda_entropy=0.5).target(out)
    ent = entropy_loss(torch.tensor(l2)).item() + entropy_loss(torch.tensor(l3)).item()
    assert trg.total.item() == pytest.approx(0.1 * (kl2 + kl3) + 0.5 * ent, rel=1e-5)
    assert set(trg.parts) == {"xm_trg_2d", "xm_trg_3d", "entropy_2d", "entropy_3d"}
    # pseudo-labels: each main head on its own network's labels
    pl = CrossModalLoss(ce, lambda_xm_trg=0.0, lambda_pl=1.0).target(out, pseudo_2d=torch.tensor([1, -1, -1]),
                                                                      pseudo_3d=torch.tensor([2, 1, -1]))
    assert pl.parts["pl_2d"].item() == pytest.approx(ce_by_hand(l2[:1], [1]), rel=1e-5)
    assert pl.parts["pl_3d"].item() == pytest.approx(ce_by_hand(l3[:2], [2, 1]), rel=1e-5)
    # without mimicry heads the KL acts on the main heads
    nomim = CrossModalLoss(ce).xm_terms(_out(l2, l3))
    assert nomim[0].item() == pytest.approx(_kl_by_hand(l2, l3), rel=1e-5)
    with pytest.raises(ConfigError, match="lambda_xm_src"):
        CrossModalLoss(ce, lambda_xm_src=-1.0)


# ------------------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def model() -> CrossModalModel:
    torch.manual_seed(0)
    return build_fusion_model({"arch": "litefpn", "encoder": "tu-mobilenetv3_small_100", "options": {"channels": 16}},
                              {"arch": "randlanet", "preset": "small", "in_channels": 4}, num_classes=5,
                              ontology=None).eval()


def _batch(model: CrossModalModel, sizes: tuple[int, ...] = (512, 512)) -> dict:
    spec = PointInputSpec.from_model(model.net3d)
    rng = np.random.default_rng(0)
    samples, uvs, pbs = [], [], []
    for b, n in enumerate(sizes):
        pts = rng.uniform(-10, 10, (n, 4)).astype(np.float32)
        samples.append(spec.build(pts, b))
        uvs.append(rng.uniform(0, 60, (n, 2)))
        pbs.append(np.full(n, b))
    return {"image": torch.randn(len(sizes), 3, 64, 96), "uv": torch.from_numpy(np.concatenate(uvs)).float(),
            "point_batch": torch.from_numpy(np.concatenate(pbs)), "points3d": spec.collate(samples)}


def test_model_outputs_shapes_heads_and_ensemble_rule(model: CrossModalModel) -> None:
    batch = _batch(model)
    with torch.no_grad():
        out = model(batch)
        assert out.logits_2d.shape == out.logits_3d.shape == out.mimic_2d.shape == out.mimic_3d.shape == (1024, 5)
        assert out.features_2d.shape == (1024, 16) and out.features_3d.shape == (1024, model.net3d.feature_dim)
        # the 2D main head is the image model's own classifier read at the points: equal to its
        # upsampled output at each point's pixel (nearest) / sub-pixel position (bilinear)
        full = model.net2d(batch["image"])
        pf = model.net2d.forward_features(batch["image"])
        want = sample_pixels(pf.logits, batch["uv"], batch["point_batch"], pf.padded_size, "bilinear")
        torch.testing.assert_close(out.logits_2d, want)
        px = torch.floor(batch["uv"].double() + 0.5).long()
        near = CrossModalModel(model.net2d, model.net3d, sampling="nearest").eval()
        near.mimic2d, near.mimic3d = model.mimic2d, model.mimic3d
        torch.testing.assert_close(near(batch).logits_2d, full[batch["point_batch"], :, px[:, 1], px[:, 0]],
                                   rtol=1e-4, atol=1e-4)
        # the 3D main head is the point network's own forward
        torch.testing.assert_close(out.logits_3d, model.net3d(batch["points3d"]).reshape(-1, 5))
        # mimicry heads are linear layers on the same features
        torch.testing.assert_close(out.mimic_2d, model.mimic2d(out.features_2d))
    p2, p3, pe = out.probabilities()
    l2, l3, le = out.labels()
    torch.testing.assert_close(pe, 0.5 * (torch.softmax(out.logits_2d, 1) + torch.softmax(out.logits_3d, 1)))
    assert torch.equal(le, (p2 + p3).argmax(1)) and torch.equal(l2, out.logits_2d.argmax(1))
    assert model.class_heads.keys() >= {"net2d.classifier.1", "net3d.head.3", "mimic2d", "mimic3d"}


def test_ensemble_rule_by_hand() -> None:
    # 2D is sure of class 0, 3D mildly prefers class 1: the sum of softmaxes picks 0; 2D alone 0, 3D alone 1
    out = _out([[4.0, 0.0, 0.0]], [[0.0, 0.5, 0.0]])
    l2, l3, le = out.labels()
    assert (l2.item(), l3.item(), le.item()) == (0, 1, 0)
    out = _out([[0.3, 0.0, 0.0]], [[0.0, 3.0, 0.0]])
    assert out.labels()[2].item() == 1


def test_model_rebuilds_from_its_spec_and_rejects_bad_pairs(model: CrossModalModel) -> None:
    again = fusion_model_from_spec(model.spec).eval()
    again.load_state_dict(model.state_dict())
    batch = _batch(model, (300,))
    with torch.no_grad():
        torch.testing.assert_close(again(batch).logits_3d, model(batch).logits_3d)
    assert model.spec["net2d"]["arch"] == "litefpn" and model.spec["net3d"]["arch"] == "randlanet"
    with pytest.raises(ConfigError, match="salsanext"):
        build_fusion_model({"arch": "fpn", "encoder": "resnet18"}, {"arch": "salsanext", "preset": "tiny"}, 5)
    from terraseg.models.image import build_image_model
    from terraseg.models.points import build_point_model

    with pytest.raises(ConfigError, match="5 classes and the 3D network 4"):
        CrossModalModel(build_image_model("fpn", "resnet18", 5), build_point_model("randlanet", 4, preset="small"))
    with pytest.raises(DataError, match="missing 'uv'"):
        model({"image": torch.zeros(1, 3, 32, 32)})
    bad = dict(batch, uv=batch["uv"][:10], point_batch=batch["point_batch"][:10])
    with pytest.raises(DataError, match="same points in the same order"):
        model(bad)


def test_point_input_spec_protocol_for_randlanet_and_sizes(model: CrossModalModel) -> None:
    spec = PointInputSpec.from_model(model.net3d)
    assert spec.arch == "randlanet" and spec.in_channels == 4 and spec.equal_sizes and spec.min_points == 256
    pts = np.random.default_rng(0).uniform(-5, 5, (300, 4)).astype(np.float32)
    with pytest.raises(DataError, match="same number of points"):
        spec.collate([spec.build(pts), spec.build(pts[:280])])
    with pytest.raises(DataError, match="reads 4 point columns"):
        spec.build(pts[:, :3])


def test_mixed_precision_forward_and_losses(model: CrossModalModel) -> None:
    """GPU training runs under bf16 autocast (trainer.precision auto); the CPU autocast takes the
    same code paths: the sampling, RandLA-Net's in-place neighbour scores and the float32 losses."""
    from terraseg.training import build_loss

    batch = _batch(model, (300, 300))
    model.train()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
            terms = CrossModalLoss(build_loss([{"name": "ce"}], ignore_index=-1)).source(out, torch.randint(0, 5, (600,)))
        assert out.logits_2d.dtype == torch.float32 and terms.total.dtype == torch.float32
        assert torch.isfinite(terms.total)
        terms.total.backward()
        assert model.mimic3d.weight.grad is not None and model.net2d.classifier[1].weight.grad is not None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_predictor_on_a_frame_with_few_points_in_view(model: CrossModalModel) -> None:
    """Fewer in-view points than RandLA-Net's hierarchy needs (256 for the small preset): the
    predictor pads the 3D input with repeats and returns one row per in-view point."""
    from terraseg.frame import Calibration, Frame
    from terraseg.models.fusion import FusionPredictor

    rng = np.random.default_rng(3)
    pts = np.concatenate([np.c_[rng.uniform(-2, 2, (40, 2)), rng.uniform(4, 9, 40), rng.uniform(0, 1, 40)],
                          np.c_[rng.uniform(-2, 2, (30, 2)), -rng.uniform(4, 9, 30), rng.uniform(0, 1, 30)]])
    cal = Calibration(K=[[40.0, 0, 47.5], [0, 40.0, 31.5], [0, 0, 1]], T_cam_lidar=np.eye(4), image_size=(96, 64))
    frame = Frame("f/1", image=rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), points=pts.astype(np.float32),
                  calib=cal)
    pred = FusionPredictor(model, device="cpu").predict(frame)
    assert pred.num_points == 70 and pred.index.tolist() == list(range(40))
    assert pred.probs_2d.shape == pred.probs_3d.shape == (40, 5)
    np.testing.assert_allclose(pred.probs.sum(1), 1.0, rtol=1e-5)
    assert pred.labels.tolist() == (pred.probs_2d + pred.probs_3d).argmax(1).tolist()
    full = pred.full(pred.labels, fill=255)
    assert (full[40:] == 255).all() and full[:40].tolist() == pred.labels.tolist()
    assert pred.in_view.sum() == 40 and pred.confidence("3d").shape == (40,)
