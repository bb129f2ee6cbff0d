"""2D -> 3D transfer: feature sampling and fusion, the camera-model teacher hook, a tiny
distillation run, and the open-vocabulary plumbing (never presented as accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from terraseg.errors import ConfigError
from terraseg.geometry import look_at, orbit_views, pinhole_K, region_growing, render_views
from terraseg.geometry.render import PinholeView
from terraseg.label_efficient import (
    DistillHead,
    SegmenterTeacher,
    class_scores,
    clip_text_embeddings,
    cosine_distill_loss,
    ensemble_scores,
    forward_with_features,
    fuse_view_features,
    kl_distill_loss,
    open_clip_teacher,
    prompts,
    sample_feature_map,
    teacher_point_features,
    timm_teacher,
)


@pytest.fixture(autouse=True)
def one_thread() -> object:
    """One torch thread: on a busy 2-core machine OpenMP barriers make these small networks ~100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_sample_feature_map_aligns_pixel_centres() -> None:
    fmap = torch.arange(4.0).view(1, 2, 2)  # a stride-2 map of a 4 x 4 image
    uv = np.array([[0.5, 0.5], [2.5, 0.5], [0.5, 2.5], [1.5, 1.5], [-3.0, 9.0]])
    out = sample_feature_map(fmap, uv, (4, 4))[:, 0].tolist()
    # pixel (0.5, 0.5) is the centre of map cell 0; (1.5, 1.5) the middle of all four; outside clamps
    assert out == pytest.approx([0.0, 1.0, 2.0, 1.5, 2.0])


def test_fusion_averages_only_the_views_that_see_a_point() -> None:
    K = pinhole_K((40, 30), 90.0)
    front = PinholeView(K, look_at((0, 0, 0), (1, 0, 0)), (40, 30), "front")
    side = PinholeView(K, look_at((0, -20, 0), (0, 0, 0)), (40, 30), "side")
    # p0 and p2 seen by both; p1 hidden behind p2 (same ray) from the front; p3 on the front view's
    # edge (column 0) and in the side view; p4 behind both cameras
    xyz = np.array([[10.0, 0.0, 0.0], [12.0, 3.0, 0.6], [6.0, 1.5, 0.3], [10.0, 9.8, 0.0], [-5.0, -30.0, 0.0]])
    assert front.project(xyz[1:3]).pixel[0].tolist() == front.project(xyz[1:3]).pixel[1].tolist()
    maps = torch.stack([torch.full((3, 30, 40), 1.0), torch.full((3, 30, 40), 3.0)])
    fused = fuse_view_features(xyz, [front, side], maps, border=2)
    assert fused.count.tolist() == [2, 1, 2, 1, 0]
    assert fused.features[:, 0].tolist() == pytest.approx([2.0, 3.0, 2.0, 3.0, 0.0])  # p1, p3: side view only
    assert fused.valid.tolist() == [True, True, True, True, False]
    # with a depth image that knows nothing (0 everywhere) nothing is occluded in the front view
    known = fuse_view_features(xyz, [front, side], maps, border=2, depths=[np.zeros((30, 40)), None])
    assert known.count.tolist() == [2, 2, 2, 1, 0]
    # a border of 0 lets the front view's edge point in
    assert fuse_view_features(xyz, [front, side], maps, border=0).count[3] == 2


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ground plane, a wall and a box (object ids 0, 1, 2) with per-object colours."""
    rng = np.random.default_rng(seed)
    g = np.arange(-4, 4, 0.2) + 0.1
    X, Y = np.meshgrid(g, g)
    ground = np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], 1)
    Yw, Zw = np.meshgrid(g, np.arange(0, 2.4, 0.2) + 0.1)
    wall = np.stack([np.full(Yw.size, 4.0), Yw.ravel(), Zw.ravel()], 1)
    box = rng.uniform([-1, -1, 0], [0, 0, 1], (400, 3))
    xyz = np.concatenate([ground, wall, box]).astype(np.float32)
    obj = np.repeat([0, 1, 2], [len(ground), len(wall), len(box)])
    colors = np.array([[120, 90, 40], [150, 150, 150], [200, 30, 30]], np.uint8)[obj]
    return xyz, obj, colors


@pytest.fixture(scope="module")
def camera_teacher() -> SegmenterTeacher:
    from terraseg.models.image import build_image_model

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    teacher = SegmenterTeacher(build_image_model("litefpn", num_classes=4))
    torch.set_num_threads(n)
    return teacher


def test_segmenter_teacher_hooks_the_classifier_input(camera_teacher: SegmenterTeacher) -> None:
    teacher = camera_teacher
    assert teacher.layer_name == "classifier.1"
    images = np.random.default_rng(0).integers(0, 255, (2, 60, 70, 3), dtype=np.uint8)
    out = teacher(images)
    c = teacher.layer.in_channels
    # stride 8 of the input padded to 64 x 96 (multiples of 32)
    assert out.features.shape == (2, c, 8, 12) and out.extent == (96, 64)
    assert out.logits is not None and out.logits.shape == (2, 4, 8, 12)
    w = teacher.class_embeddings()
    assert w.shape == (4, c)
    manual = torch.einsum("vchw,kc->vkhw", out.features, w) + teacher.layer.bias.detach()[None, :, None, None]
    torch.testing.assert_close(manual, out.logits, rtol=1e-4, atol=1e-4)
    assert not teacher.layer._forward_hooks  # the hook is removed after each call
    with pytest.raises(ConfigError, match="is not a module"):
        SegmenterTeacher(teacher.model, layer="nope")
    with pytest.raises(ConfigError, match="lists no main classifier"):
        SegmenterTeacher(torch.nn.Conv2d(3, 4, 1))


def test_teacher_features_fused_over_rendered_views(camera_teacher: SegmenterTeacher) -> None:
    xyz, obj, colors = _scene()
    views = orbit_views((0, 0, 0.5), radius=9.0, height=4.0, n=4, image_size=(96, 64), hfov_deg=70.0)
    rendered = render_views(xyz, views, splat_radius=2, colors=colors, background=(135, 170, 230))
    out = teacher_point_features(xyz, rendered, camera_teacher, batch_size=2)
    f, p = out.features, out.probabilities
    assert p is not None and f.features.shape == (len(xyz), camera_teacher.layer.in_channels)
    assert f.valid.float().mean() > 0.6 and torch.equal(f.count, p.count)
    seen = p.valid
    torch.testing.assert_close(p.features[seen].sum(1), torch.ones(int(seen.sum())), rtol=1e-5, atol=1e-5)
    assert (f.features[~f.valid] == 0).all()
    # the same fusion, one view at a time, averages to the same thing
    per_view = [teacher_point_features(xyz, [r], camera_teacher).features for r in rendered]
    total = sum(v.features * v.count[:, None] for v in per_view)
    count = sum(v.count for v in per_view)
    torch.testing.assert_close(f.features, total / count.clamp(min=1)[:, None], rtol=1e-4, atol=1e-5)


def test_tiny_distillation_run_the_loss_falls(camera_teacher: SegmenterTeacher) -> None:
    """A small RandLA-Net learns the fused teacher features through its penultimate layer."""
    from terraseg.models.points import build_point_model, randla_inputs

    xyz, obj, colors = _scene()
    views = orbit_views((0, 0, 0.5), radius=9.0, height=4.0, n=4, image_size=(96, 64), hfov_deg=70.0)
    rendered = render_views(xyz, views, splat_radius=2, colors=colors, background=(135, 170, 230))
    target = teacher_point_features(xyz, rendered, camera_teacher)
    torch.manual_seed(0)
    net = build_point_model("randlanet", num_classes=4, preset="small", dropout=0.0, k=8)
    inputs = randla_inputs(xyz, k=8, ratios=(4, 4, 2, 2), seed=0)
    head = DistillHead(net.head[3].in_features, target.features.features.shape[1])
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=1e-2)
    losses, kls = [], []
    for _ in range(12):
        logits, feats = forward_with_features(net, inputs)
        loss = cosine_distill_loss(head(feats[0]), target.features.features, target.features.valid)
        kl = kl_distill_loss(logits[0], target.probabilities.features, target.probabilities.valid)
        opt.zero_grad()
        (loss + kl).backward()
        opt.step()
        losses.append(float(loss.detach()))
        kls.append(float(kl.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
    assert kls[-1] < kls[0], kls


def test_open_vocabulary_plumbing_with_classifier_rows_as_text(camera_teacher: SegmenterTeacher) -> None:
    """The camera model's classifier rows stand in for text embeddings: this checks shapes and the
    scoring / ensemble logic, not open-vocabulary accuracy."""
    xyz, _, colors = _scene()
    views = orbit_views((0, 0, 0.5), radius=9.0, height=4.0, n=3, image_size=(96, 64), hfov_deg=70.0)
    fused = teacher_point_features(xyz, render_views(xyz, views, 2, colors), camera_teacher).features
    text = camera_teacher.class_embeddings()
    scores = class_scores(fused.features[fused.valid], text)
    assert scores.shape == (int(fused.valid.sum()), 4) and scores.abs().max() <= 1.0 + 1e-5
    # a feature equal to a class row scores 1 for it
    assert torch.allclose(class_scores(text, text).diagonal(), torch.ones(4), atol=1e-5)
    f2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [1.0, 0.0]])
    f3 = torch.tensor([[1.0, 1.0], [1.0, 0.1], [0.0, 1.0], [0.0, 1.0]])
    emb = torch.eye(2)
    ens = ensemble_scores(f3, f2, emb, valid_2d=torch.tensor([True, True, True, False]))
    assert ens.from_2d.tolist() == [True, True, False, False] and ens.labels.tolist() == [0, 1, 1, 1]
    assert prompts(["tall_grass", "dirt-road"]) == ["a tall grass in a scene", "a dirt road in a scene"]
    with pytest.raises(ConfigError, match="must contain"):
        prompts(["tree"], "a photo")


def test_missing_clip_package_or_weights_says_what_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        clip_text_embeddings(["tree"], "ViT-B-32", tmp_path / "clip.bin")
    msg = str(err.value)
    assert "open_clip_torch, which is not installed" in msg and "pip install 'terraseg[clip]'" in msg
    assert "model='ViT-B-32', weights=" in msg and "never downloads" in msg
    monkeypatch.undo()
    if importlib.util.find_spec("open_clip") is not None:
        with pytest.raises(ConfigError, match="weights file not found: .*clip.bin; install the optional package"):
            clip_text_embeddings(["tree"], "ViT-B-32", tmp_path / "clip.bin")
        with pytest.raises(ConfigError, match="needs a local weights file"):
            open_clip_teacher("ViT-B-32", None)
    with pytest.raises(ConfigError, match="weights file not found: .*enc.pth; pass the path of a timm checkpoint"):
        timm_teacher("resnet18", tmp_path / "enc.pth")


def test_open_clip_tiny_model_from_local_weights(tmp_path: Path) -> None:
    """The real open_clip path on a tiny randomly initialised model saved to a local file."""
    open_clip = pytest.importorskip("open_clip")
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "terraseg-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "terraseg-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("terraseg-tiny-clip")
    weights = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), weights)
    text = clip_text_embeddings(["tree", "grass", "rock"], "terraseg-tiny-clip", weights)
    assert text.shape == (3, 32)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(3))
    tokens = open_clip.get_tokenizer("terraseg-tiny-clip")(prompts(["tree"]))
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
    torch.testing.assert_close(text[:1], direct)
    teacher = open_clip_teacher("terraseg-tiny-clip", weights)
    out = teacher(np.zeros((2, 48, 64, 3), np.uint8))
    assert out.features.shape == (2, 32, 4, 4) and out.extent == (64, 48)
    bad = tmp_path / "bad.pt"
    torch.save({"nothing": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="not open_clip weights"):
        clip_text_embeddings(["tree"], "terraseg-tiny-clip", bad)


def test_regions_of_the_scene_feed_the_contrast(camera_teacher: SegmenterTeacher) -> None:
    """Wiring check: regions from region growing and fused teacher probabilities give a finite loss."""
    from terraseg.label_efficient import region_contrastive_loss

    xyz, _, colors = _scene()
    regions = torch.as_tensor(region_growing(xyz, k=10, min_size=5))
    views = orbit_views((0, 0, 0.5), radius=9.0, height=4.0, n=3, image_size=(96, 64), hfov_deg=70.0)
    fused = teacher_point_features(xyz, render_views(xyz, views, 2, colors), camera_teacher)
    assert fused.probabilities is not None
    logits = torch.log(fused.probabilities.features.clamp(min=1e-6))
    loss = region_contrastive_loss(fused.features.features, logits, regions, confidence=0.0)
    assert torch.isfinite(loss) and float(loss) > 0
