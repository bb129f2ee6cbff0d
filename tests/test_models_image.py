"""The 2D model factory: every architecture at small size, the output convention, weights, errors."""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml

from terraseg.errors import ConfigError, DataError
from terraseg.models import class_ids, save_checkpoint
from terraseg.models.image import (
    ImageSegmenter,
    build_image_model,
    describe_image_archs,
    list_image_archs,
    list_image_encoders,
    load_image_model,
    unpack_outputs,
)
from terraseg.models.image.acfnet import ACFModule
from terraseg.ontology import Ontology

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
TINY_M2F: dict[str, Any] = {
    "hidden_dim": 32, "num_queries": 8, "decoder_layers": 2, "encoder_layers": 1, "feature_size": 32,
    "mask_feature_size": 32, "dim_feedforward": 64, "encoder_feedforward_dim": 64, "num_attention_heads": 2,
    "backbone": {"embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 3, 6]},
}
# (arch, encoder, options, has aux by default): small encoders and decoders keep the file fast.
CASES: list[tuple[str, str, dict[str, Any], bool]] = [
    ("upernet", "resnet18", {"decoder_channels": 32, "aux_channels": 16}, True),
    ("deeplabv3plus", "resnet18", {"decoder_channels": 32}, False),
    ("segformer", "mit_b0", {"decoder_segmentation_channels": 32}, False),
    ("fpn", "resnet18", {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}, False),
    ("litefpn", "tu-mobilenetv3_large_100", {"channels": 32}, False),
    ("acfnet", "tu-efficientnet_b0", {"channels": 32, "low_level_channels": 16}, True),
    ("mask2former", "swin-tiny", TINY_M2F, False),
]


@pytest.fixture(autouse=True)
def _small_and_offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One thread, a fixed seed, and any network access fails the test (nothing may download).

    The inputs are tiny (64 x 64), so a second thread only adds synchronisation; with one busy
    core, two OpenMP threads made this file 4x slower. The thread count is restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    yield
    torch.set_num_threads(threads)


def _skip_unavailable(arch: str) -> None:
    if arch == "mask2former" and not HAS_TRANSFORMERS:
        pytest.skip("mask2former needs the optional 'transformers' package, which is not installed")


def _head_params(model: ImageSegmenter) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if any(n.startswith(h + ".") for h in model.class_heads)]


@pytest.mark.parametrize(("arch", "encoder", "options", "has_aux"), CASES, ids=[c[0] for c in CASES])
def test_arch_forward_backward_and_shapes(arch: str, encoder: str, options: dict[str, Any], has_aux: bool) -> None:
    _skip_unavailable(arch)
    model = build_image_model(arch, encoder, 5, **options)
    assert isinstance(model, ImageSegmenter) and model.has_aux == has_aux and model.num_classes == 5
    assert model.spec["arch"] == arch and model.spec["encoder"] == encoder and model.class_heads

    model.train()
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 5, (2, 64, 64))
    out = model(x)
    logits, aux = unpack_outputs(out)
    assert isinstance(out, dict) == has_aux
    assert logits.shape == (2, 5, 64, 64) and logits.dtype == torch.float32
    loss = F.cross_entropy(logits, target)
    if has_aux:
        assert set(out) == {"out", "aux"} and aux is not None and aux.shape == (2, 5, 64, 64)
        loss = loss + 0.4 * F.cross_entropy(aux, target)
    assert torch.isfinite(loss)
    loss.backward()
    heads = _head_params(model)
    assert heads and all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in heads)
    assert any(p.grad.abs().sum() > 0 for _, p in heads)

    model.eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 50, 70))     # not a multiple of 32: padded and cropped back
    assert isinstance(y, torch.Tensor) and y.shape == (1, 5, 50, 70)
    pred = model.predict(torch.randn(1, 3, 64, 64))
    assert pred.shape == (1, 64, 64) and pred.dtype == torch.int64 and 0 <= int(pred.min()) <= int(pred.max()) < 5


def test_padding_equals_explicit_zero_padding() -> None:
    model = build_image_model("fpn", "tu-resnet10t", 3, decoder_pyramid_channels=16, decoder_segmentation_channels=32)
    model.eval()
    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        y = model(x)
        y_pad = model(F.pad(x, (0, 14, 0, 24)))     # 64 x 64
    assert torch.allclose(y, y_pad[..., :40, :50], atol=1e-5)


def test_aux_is_optional() -> None:
    plain = build_image_model("upernet", "tu-resnet10t", 4, aux=False, decoder_channels=16)
    assert not plain.has_aux and plain.aux_head is None
    assert isinstance(plain.train()(torch.randn(2, 3, 64, 64)), torch.Tensor)
    with_aux = build_image_model("litefpn", "tu-mobilenetv3_small_050", 4, aux=True, channels=16, aux_channels=8)
    out = with_aux.train()(torch.randn(2, 3, 64, 64))
    assert isinstance(out, dict) and out["aux"].shape == (2, 4, 64, 64)
    assert "aux_head.classifier" in with_aux.class_heads
    assert isinstance(with_aux.eval()(torch.randn(1, 3, 64, 64)), torch.Tensor)   # eval: logits only
    acf = build_image_model("acfnet", "tu-mobilenetv3_small_050", 4, aux=False, channels=16, low_level_channels=8)
    assert isinstance(acf.train()(torch.randn(2, 3, 64, 64)), torch.Tensor)
    logits = torch.zeros(1, 4, 2, 2)
    assert unpack_outputs(logits) == (logits, None)


def test_litefpn_stride_4_decoder_gives_logits_on_a_4x_finer_grid() -> None:
    x = torch.randn(2, 3, 64, 96)
    s8 = build_image_model("litefpn", "tu-mobilenetv3_small_050", 5, channels=16).eval()
    s4 = build_image_model("litefpn", "tu-mobilenetv3_small_050", 5, channels=16, output_stride=4).eval()
    with torch.no_grad():
        assert s8.forward_raw(x, False)[0].shape == (2, 5, 8, 12)
        assert s4.forward_raw(x, False)[0].shape == (2, 5, 16, 24)
        assert s4(x).shape == (2, 5, 64, 96)
    assert s4.spec["output_stride"] == 4 and s4.lateral4 is not None and s8.lateral4 is None
    with pytest.raises(ConfigError, match="litefpn output_stride must be 4 or 8"):
        build_image_model("litefpn", "tu-mobilenetv3_small_050", 5, output_stride=16)


def test_class_ids_match_argmax_including_ties() -> None:
    scores = torch.randn(3, 7, 9, 11)
    assert torch.equal(class_ids(scores), scores.argmax(1))
    tied = torch.zeros(1, 4, 2, 2)
    tied[0, 1:3] = 1.0  # classes 1 and 2 tie everywhere: the lower id wins, as with argmax
    assert torch.equal(class_ids(tied), torch.ones(1, 2, 2, dtype=torch.long))
    assert torch.equal(class_ids(scores.permute(0, 2, 3, 1), dim=-1), scores.argmax(1))


def test_acf_class_centres_are_probability_weighted_means() -> None:
    acf = ACFModule(channels=4, mid_channels=3)
    feats = torch.randn(2, 3, 5, 6)
    labels = torch.randint(0, 4, (2, 5, 6))
    onehot = F.one_hot(labels, 4).permute(0, 3, 1, 2).float()
    centres = acf.class_centres(feats, onehot)                       # (N, K, C')
    assert centres.shape == (2, 4, 3)
    for n in range(2):
        for k in range(4):
            mask = labels[n] == k
            expected = feats[n][:, mask].mean(dim=1) if mask.any() else torch.zeros(3)
            assert torch.allclose(centres[n, k], expected, atol=1e-5)
    soft = torch.rand(2, 4, 5, 6).softmax(1)
    manual = torch.einsum("nkhw,nchw->nkc", soft, feats) / (soft.sum((2, 3))[..., None] + acf.eps)
    assert torch.allclose(acf.class_centres(feats, soft), manual, atol=1e-5)
    out = acf.eval()(torch.randn(2, 4, 5, 6), torch.randn(2, 7, 5, 6))  # any number of classes
    assert out.shape == (2, 4, 5, 6)


def test_num_classes_from_ontology_and_checks(tmp_path: Path) -> None:
    model = build_image_model("fpn", "tu-resnet10t", ontology="rellis3d", decoder_segmentation_channels=32)
    assert model.num_classes == 20 and isinstance(model.ontology, Ontology) and model.ontology.name == "rellis3d"
    raw = build_image_model("fpn", "tu-resnet10t", ontology="rellis3d-raw", decoder_segmentation_channels=32)
    assert raw.num_classes == 35           # sparse ids: one channel per id 0..34
    with pytest.raises(ConfigError, match=r"num_classes=7 does not match ontology 'rellis3d' \(20 ids, 0..19\)"):
        build_image_model("fpn", "resnet18", 7, ontology="rellis3d")
    with pytest.raises(ConfigError, match="needs num_classes or an ontology"):
        build_image_model("fpn", "resnet18")


def test_unknown_arch_encoder_and_option_errors() -> None:
    archs = list_image_archs()
    assert archs == sorted(["acfnet", "deeplabv3plus", "fpn", "litefpn", "mask2former", "segformer", "upernet"])
    with pytest.raises(ConfigError, match=r"unknown image arch 'uppernet' \(did you mean 'upernet'\?\); available: "
                                          + ", ".join(archs)):
        build_image_model("uppernet", "resnet18", 3)
    with pytest.raises(ConfigError) as exc:
        build_image_model("fpn", "resnet19", 3)
    msg = str(exc.value)
    assert "unknown encoder 'resnet19'" in msg and "resnet18" in msg and "mit_b0" in msg and "tu-<name>" in msg
    with pytest.raises(ConfigError, match=r"unknown timm encoder 'tu-mobilenetv9'.*timm.list_models"):
        build_image_model("litefpn", "tu-mobilenetv9", 3)
    with pytest.raises(ConfigError, match=r"arch 'litefpn' does not accept decoder_channels; options: aux_channels, "
                                          r"channels, dropout"):
        build_image_model("litefpn", "resnet18", 3, decoder_channels=8)
    with pytest.raises(ConfigError, match="arch 'mask2former' has no auxiliary head"):
        build_image_model("mask2former", num_classes=3, aux=True)
    with pytest.raises(ConfigError, match="either pretrained=True or weights"):
        build_image_model("fpn", "resnet18", 3, pretrained=True, weights="imagenet")
    with pytest.raises(ConfigError, match="has no pretrained weights 'nope'; available: imagenet, ssl, swsl"):
        build_image_model("fpn", "resnet18", 3, weights="nope")
    with pytest.raises(DataError, match=r"missing\.pth: weights file not found"):
        build_image_model("fpn", "resnet18", 3, weights="./missing.pth")
    assert build_image_model("DeepLabV3+", "tu-resnet10t", 3, decoder_channels=16).spec["arch"] == "deeplabv3plus"


def test_default_encoders_are_valid() -> None:
    from terraseg.models.image.factory import _check_encoder, image_arch

    for arch in list_image_archs():
        spec = image_arch(arch)
        if spec.requires == "transformers" and not HAS_TRANSFORMERS:
            continue
        _check_encoder(spec, spec.default_encoder)   # raises ConfigError when unknown


def test_pretrained_goes_to_the_hub_and_fails_cleanly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    for encoder in ("resnet18", "tu-resnet10t"):
        with pytest.raises(ConfigError, match=f"cannot fetch pretrained weights for encoder '{encoder}'"):
            build_image_model("fpn", encoder, 3, pretrained=True)


def test_encoder_lists_and_arch_table() -> None:
    encoders = list_image_encoders()
    assert {"resnet18", "efficientnet-b0", "mit_b0"} <= set(encoders)
    assert list_image_encoders("mask2former") == ["swin-tiny", "swin-small", "swin-base", "swin-large"]
    table = describe_image_archs()
    import terraseg.models.image as pkg

    for arch in list_image_archs():
        assert arch in table and arch in (pkg.__doc__ or "")


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="mask2former needs the optional 'transformers' package")
def test_mask2former_queries_and_unknown_encoder() -> None:
    model = build_image_model("mask2former", "swin-tiny", 3, **TINY_M2F).eval()
    with torch.no_grad():
        q = model.forward_queries(torch.randn(1, 3, 64, 64))
        scores = model(torch.randn(1, 3, 64, 64)).exp()
    assert q.class_queries_logits.shape == (1, 8, 4) and q.masks_queries_logits.shape == (1, 8, 16, 16)
    assert model.class_heads == {"net.class_predictor": 1}
    assert float(scores.min()) >= 1e-6 - 1e-9 and float(scores.max()) <= 8.0 + 1e-4   # sum over 8 queries of p*sigmoid
    with pytest.raises(ConfigError, match="unknown encoder 'resnet18' for arch 'mask2former'; available: swin-tiny"):
        build_image_model("mask2former", "resnet18", 3)


def _write_ontology(path: Path, name: str, classes: list[str]) -> Path:
    data = {"name": name, "void": ["void"], "ignore": ["void"],
            "classes": [{"id": i, "name": n, "color": f"#{i * 50:02x}{200 - i * 30:02x}{i * 10:02x}"}
                        for i, n in enumerate(classes)]}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_class_remap_5_to_4_classes_through_a_checkpoint(tmp_path: Path) -> None:
    src_yaml = _write_ontology(tmp_path / "src.yaml", "src", ["void", "grass", "tree", "sky", "rock"])
    dst_yaml = _write_ontology(tmp_path / "dst.yaml", "dst", ["void", "sky", "water", "grass"])
    opts = {"aux": True, "decoder_pyramid_channels": 16, "decoder_segmentation_channels": 32, "aux_channels": 8}
    src = build_image_model("fpn", "tu-resnet10t", ontology=src_yaml, **opts)
    path = save_checkpoint(tmp_path / "src.pth", src)
    dst = build_image_model("fpn", "tu-resnet10t", ontology=dst_yaml, weights=path, **opts)
    rep = dst.load_report
    assert rep is not None and rep.kind == "terraseg"
    assert (rep.source_ontology, rep.target_ontology) == ("src", "dst")
    assert sorted(rep.remapped) == ["aux_head.classifier.bias", "aux_head.classifier.weight",
                                    "segmentation_head.0.bias", "segmentation_head.0.weight"]
    assert not rep.new and not rep.unused and len(rep.loaded) == len(dst.state_dict()) - 4
    assert rep.class_map == [("void", ("void",)), ("sky", ("sky",)), ("grass", ("grass",))]
    assert rep.new_classes == ["water"]
    s_w, d_w = src.segmentation_head[0].weight, dst.segmentation_head[0].weight
    s_b, d_b = src.segmentation_head[0].bias, dst.segmentation_head[0].bias
    for d, s in ((0, 0), (1, 3), (3, 1)):                            # void, sky, grass
        assert torch.equal(d_w[d], s_w[s]) and torch.equal(d_b[d], s_b[s])
        assert torch.equal(dst.aux_head.classifier.weight[d], src.aux_head.classifier.weight[s])
    assert all(not torch.equal(d_w[2], s_w[i]) for i in range(5))   # water: new row
    assert torch.equal(dst.encoder.model.conv1[0].weight, src.encoder.model.conv1[0].weight)
    assert "classes src -> dst: 3 copied, 1 new" in str(rep)


def test_lightning_checkpoint_into_image_model(tmp_path: Path) -> None:
    opts = {"decoder_pyramid_channels": 16, "decoder_segmentation_channels": 32}
    src = build_image_model("fpn", "tu-resnet10t", 3, **opts)
    torch.save({"epoch": 2, "global_step": 10, "state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}},
               tmp_path / "epoch=2.ckpt")
    dst = build_image_model("fpn", "tu-resnet10t", 3, weights=tmp_path / "epoch=2.ckpt", **opts)
    assert dst.load_report.kind == "lightning" and dst.load_report.strip_prefix == "model."
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), dst.eval()(x))


def test_save_and_load_image_model_round_trip(tmp_path: Path) -> None:
    model = build_image_model("litefpn", "tu-mobilenetv3_small_050", ontology="rellis3d", channels=16).eval()
    path = save_checkpoint(tmp_path / "m.pth", model, meta={"miou": 0.5})
    back = load_image_model(path).eval()
    assert back.spec == model.spec and back.ontology is not None and back.ontology.names == model.ontology.names
    assert not back.load_report.new and not back.load_report.unused
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), back(x))
    torch.save(model.state_dict(), tmp_path / "raw.pth")
    with pytest.raises(DataError, match=r"raw\.pth: not a terraseg model checkpoint"):
        load_image_model(tmp_path / "raw.pth")


def test_smp_save_pretrained_folder_loads_with_remap(tmp_path: Path) -> None:
    import segmentation_models_pytorch as smp

    net = smp.Segformer(encoder_name="mit_b0", encoder_weights=None, classes=5, decoder_segmentation_channels=32)
    net.save_pretrained(tmp_path / "hub")      # what smp.from_pretrained reads (config.json + safetensors)
    dst_yaml = _write_ontology(tmp_path / "dst.yaml", "dst", ["void", "sky", "water"])
    model = build_image_model("segformer", "mit_b0", ontology=dst_yaml, weights=tmp_path / "hub",
                              source_ontology=["void", "grass", "tree", "sky", "rock"],
                              decoder_segmentation_channels=32)
    rep = model.load_report
    assert rep.source == str(tmp_path / "hub") and not rep.new and not rep.unused
    assert rep.class_map == [("void", ("void",)), ("sky", ("sky",))] and rep.new_classes == ["water"]
    assert torch.equal(model.segmentation_head[0].weight[1], net.segmentation_head[0].weight[3])
    assert torch.equal(model.decoder.fuse_stage[0].weight, net.decoder.fuse_stage[0].weight)


@pytest.mark.skipif(not HAS_TRANSFORMERS, reason="mask2former needs the optional 'transformers' package")
def test_mask2former_hub_folder_maps_classes_by_stored_names(tmp_path: Path) -> None:
    from transformers import Mask2FormerForUniversalSegmentation

    src = build_image_model("mask2former", "swin-tiny", 4, **TINY_M2F)
    src.net.config.id2label = {0: "sky", 1: "tree, forest", 2: "road, route", 3: "grass"}
    src.net.save_pretrained(tmp_path / "m2f")
    dst_yaml = _write_ontology(tmp_path / "dst.yaml", "dst", ["void", "grass", "tree", "sky"])
    model = build_image_model("mask2former", "swin-tiny", ontology=dst_yaml, weights=tmp_path / "m2f")
    rep = model.load_report
    assert rep.remapped == ["net.class_predictor.weight", "net.class_predictor.bias"]
    assert rep.class_map == [("grass", ("grass",)), ("tree", ("tree",)), ("sky", ("sky",))]
    assert rep.new_classes == ["void"] and not rep.new and not rep.unused
    w_src, w_dst = src.net.class_predictor.weight, model.net.class_predictor.weight
    assert torch.equal(w_dst[3], w_src[0]) and torch.equal(w_dst[2], w_src[1]) and torch.equal(w_dst[4], w_src[4])
    assert isinstance(model.net, Mask2FormerForUniversalSegmentation) and model.net.config.num_queries == 8
