"""Checkpoint surgery: checkpoint formats, name alignment, class-row remapping and the report."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from terraseg.errors import ConfigError, DataError
from terraseg.models.surgery import (
    Checkpoint,
    align_names,
    class_row_pairs,
    load_weights,
    ontology_from_names,
    read_checkpoint,
    resolve_ontology,
    save_checkpoint,
)
from terraseg.ontology import LabelMap, Ontology

SRC_CLASSES = ["void", "grass", "tree", "sky", "rock"]      # ids 0..4
DST_CLASSES = ["void", "sky", "grass", "water"]             # ids 0..3; shares void, sky, grass


def write_ontology(path: Path, name: str, classes: list[str]) -> Path:
    data = {"name": name, "void": ["void"], "ignore": ["void"],
            "classes": [{"id": i, "name": n, "color": f"#{i * 40:02x}{255 - i * 40:02x}{i * 20:02x}"}
                        for i, n in enumerate(classes)]}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def ontologies(tmp_path: Path) -> tuple[Ontology, Ontology]:
    src = Ontology.from_yaml(write_ontology(tmp_path / "src.yaml", "src", SRC_CLASSES))
    dst = Ontology.from_yaml(write_ontology(tmp_path / "dst.yaml", "dst", DST_CLASSES))
    return src, dst


class TinyNet(nn.Module):
    """A generic module: a trunk and a 1x1 class head (optionally declared via ``class_heads``)."""

    def __init__(self, num_classes: int, declare: bool = True, width: int = 6) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Conv2d(width, num_classes, 1)
        if declare:
            self.class_heads = {"head": 0}


def seeded(num_classes: int, seed: int, **kw: object) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(num_classes, **kw)


# ------------------------------------------------------------------------------------------ formats
def test_raw_state_dict_file_loads_everything(tmp_path: Path) -> None:
    src, dst = seeded(4, 0), seeded(4, 1)
    torch.save(src.state_dict(), tmp_path / "raw.pth")
    rep = load_weights(dst, tmp_path / "raw.pth")
    assert rep.kind == "state_dict" and rep.strip_prefix == "" and rep.add_prefix == ""
    assert sorted(rep.loaded) == sorted(src.state_dict()) and not rep.new and not rep.unused and not rep.remapped
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_lightning_checkpoint_prefix_is_stripped(tmp_path: Path) -> None:
    src, dst = seeded(4, 0), seeded(4, 1)
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{k}": v for k, v in src.state_dict().items()},
            "optimizer_states": [], "hyper_parameters": {"lr": 1e-3}}
    torch.save(ckpt, tmp_path / "last.ckpt")
    rep = load_weights(dst, tmp_path / "last.ckpt")
    assert rep.kind == "lightning"
    assert rep.strip_prefix == "model."
    assert len(rep.loaded) == len(src.state_dict()) and not rep.unused
    assert torch.equal(dst.head.weight, src.head.weight)
    assert "stripped 'model.'" in rep.summary()


def test_module_prefix_and_added_prefix() -> None:
    src = seeded(4, 0)
    wrapped = {f"module.{k}": v for k, v in src.state_dict().items()}
    dst = seeded(4, 1)
    assert load_weights(dst, wrapped).strip_prefix == "module."
    assert torch.equal(dst.trunk[0].weight, src.trunk[0].weight)

    outer = nn.Module()
    outer.net = seeded(4, 2)
    rep = load_weights(outer, src.state_dict())
    assert (rep.strip_prefix, rep.add_prefix) == ("", "net.")
    assert torch.equal(outer.net.head.bias, src.head.bias)


def test_explicit_prefix() -> None:
    src = seeded(4, 0)
    sd = {**{f"a.{k}": v for k, v in src.state_dict().items()}, "b.head.weight": torch.zeros(4, 6, 1, 1)}
    dst = seeded(4, 1)
    rep = load_weights(dst, sd, prefix="a")
    assert rep.strip_prefix == "a." and rep.unused == ["b.head.weight"]
    assert torch.equal(dst.head.weight, src.head.weight)


def test_align_names_prefers_best_match() -> None:
    ck = ["model.enc.w", "model.enc.b", "model.head.w", "other.x"]
    assert align_names(ck, ["enc.w", "enc.b", "head.w"]) == ("model.", "")
    assert align_names(["enc.w"], ["enc.w"]) == ("", "")
    assert align_names(["x"], ["y"]) == ("", "")


def test_safetensors_file(tmp_path: Path) -> None:
    st = pytest.importorskip("safetensors.torch", reason="safetensors is not installed")
    src, dst = seeded(4, 0), seeded(4, 1)
    st.save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    rep = load_weights(dst, tmp_path / "w.safetensors")
    assert rep.kind == "safetensors" and len(rep.loaded) == len(src.state_dict())
    assert torch.equal(dst.head.weight, src.head.weight)


class _NotATensor:
    pass


def test_untrusted_pickle_is_refused_unless_trusted(tmp_path: Path) -> None:
    src = seeded(4, 0)
    p = tmp_path / "pickled.pth"
    torch.save({"state_dict": src.state_dict(), "hparams": _NotATensor()}, p)
    with pytest.raises(DataError, match=r"pickled\.pth.*trusted=True"):
        read_checkpoint(p)
    ck = read_checkpoint(p, trusted=True)
    assert ck.kind == "wrapped:state_dict" and set(ck.state_dict) == set(src.state_dict())


def test_bad_files_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.pth: checkpoint file not found"):
        read_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match=r"junk\.pth: not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")
    torch.save({"epoch": 1, "note": "no weights"}, tmp_path / "empty.pth")
    with pytest.raises(DataError, match=r"empty\.pth: no tensors found \(top-level keys: epoch, note\)"):
        read_checkpoint(tmp_path / "empty.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(DataError, match=r"list\.pth: expected a dict of tensors, got list"):
        read_checkpoint(tmp_path / "list.pth")


def test_terraseg_checkpoint_round_trip(tmp_path: Path, ontologies: tuple[Ontology, Ontology]) -> None:
    src_onto, _ = ontologies
    model = seeded(5, 0)
    path = save_checkpoint(tmp_path / "sub" / "m.pth", model, ontology=src_onto, spec={"arch": "tiny"},
                           meta={"epoch": 7})
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))
    ck = read_checkpoint(path)  # weights_only=True must be enough
    assert ck.kind == "terraseg" and ck.spec == {"arch": "tiny"} and ck.meta == {"epoch": 7}
    assert ck.ontology is not None and ck.ontology.names == SRC_CLASSES
    assert set(ck.state_dict) == set(model.state_dict())


# ------------------------------------------------------------------------------------------ class rows
def test_class_rows_copied_by_name(ontologies: tuple[Ontology, Ontology]) -> None:
    src_onto, dst_onto = ontologies
    src, dst = seeded(5, 0), seeded(4, 1)
    fresh = dst.head.weight.detach().clone()
    rep = load_weights(dst, src.state_dict(), source_ontology=src_onto, target_ontology=dst_onto)
    assert sorted(rep.remapped) == ["head.bias", "head.weight"]
    assert not rep.new and not rep.unused
    assert rep.class_map == [("void", ("void",)), ("sky", ("sky",)), ("grass", ("grass",))]
    assert rep.new_classes == ["water"]
    for name in ("void", "sky", "grass"):
        t, s = dst_onto.id_of(name), src_onto.id_of(name)
        assert torch.equal(dst.head.weight[t], src.head.weight[s])
        assert torch.equal(dst.head.bias[t], src.head.bias[s])
    water = dst_onto.id_of("water")
    assert torch.equal(dst.head.weight[water], fresh[water])             # keeps its fresh init
    assert all(not torch.equal(dst.head.weight[water], src.head.weight[i]) for i in range(5))
    assert torch.equal(dst.trunk[0].weight, src.trunk[0].weight)
    text = rep.summary()
    assert "classes src -> dst: 3 copied, 1 new" in text and "new:    water" in text


def test_class_rows_via_label_map_average_merged_classes(ontologies: tuple[Ontology, Ontology]) -> None:
    src_onto, dst_onto = ontologies
    lmap = LabelMap.from_mapping(src_onto, dst_onto, {"void": "void", "grass": "grass", "tree": "grass",
                                                      "sky": "sky"}, drop=["rock"], drop_to="void")
    src, dst = seeded(5, 0), seeded(4, 1)
    rep = load_weights(dst, src.state_dict(), label_map=lmap)
    assert (rep.source_ontology, rep.target_ontology) == ("src", "dst")
    g = dst_onto.id_of("grass")
    expected = (src.head.weight[src_onto.id_of("grass")] + src.head.weight[src_onto.id_of("tree")]) / 2
    assert torch.allclose(dst.head.weight[g], expected)
    assert torch.equal(dst.head.weight[dst_onto.id_of("void")], src.head.weight[0])   # dropped rock not averaged in
    assert ("grass", ("grass", "tree")) in rep.class_map and rep.new_classes == ["water"]
    assert "grass <- grass+tree" in rep.summary()


def test_label_map_must_match_the_ontologies(ontologies: tuple[Ontology, Ontology]) -> None:
    src_onto, dst_onto = ontologies
    lmap = LabelMap.identity(src_onto)
    with pytest.raises(ConfigError, match="label map src -> src does not match the ontologies src -> dst"):
        load_weights(seeded(4, 1), seeded(5, 0).state_dict(), source_ontology=src_onto, target_ontology=dst_onto,
                     label_map=lmap)


def test_auto_detected_heads_for_undeclared_modules(ontologies: tuple[Ontology, Ontology]) -> None:
    src_onto, dst_onto = ontologies
    src, dst = seeded(5, 0, declare=False), seeded(4, 1, declare=False)
    rep = load_weights(dst, src.state_dict(), source_ontology=src_onto, target_ontology=dst_onto)
    assert sorted(rep.remapped) == ["head.bias", "head.weight"]
    assert torch.equal(dst.head.weight[dst_onto.id_of("sky")], src.head.weight[src_onto.id_of("sky")])


def test_without_ontologies_mismatched_heads_are_reinitialised() -> None:
    src, dst = seeded(5, 0), seeded(4, 1)
    fresh = dst.head.weight.detach().clone()
    rep = load_weights(dst, src.state_dict())
    assert sorted(rep.new) == ["head.bias", "head.weight"]
    assert rep.mismatched["head.weight"] == ((5, 6, 1, 1), (4, 6, 1, 1))
    assert torch.equal(dst.head.weight, fresh)
    assert any("source_ontology and target_ontology" in n for n in rep.notes)
    assert "head.weight (5, 6, 1, 1)->(4, 6, 1, 1)" in rep.summary()


def test_same_size_different_ontology_needs_declared_heads(tmp_path: Path) -> None:
    a = Ontology.from_yaml(write_ontology(tmp_path / "a.yaml", "a", ["void", "grass", "sky"]))
    b = Ontology.from_yaml(write_ontology(tmp_path / "b.yaml", "b", ["void", "sky", "grass"]))
    src = seeded(3, 0, declare=False)
    dst = seeded(3, 1, declare=False)
    rep = load_weights(dst, src.state_dict(), source_ontology=a, target_ontology=b)
    assert not rep.remapped and any("class_heads" in n for n in rep.notes)
    dst2 = seeded(3, 1, declare=False)
    rep2 = load_weights(dst2, src.state_dict(), source_ontology=a, target_ontology=b, class_heads=["head"])
    assert sorted(rep2.remapped) == ["head.bias", "head.weight"]
    assert torch.equal(dst2.head.weight[1], src.head.weight[2]) and torch.equal(dst2.head.weight[2], src.head.weight[1])


def test_extra_no_object_row_is_kept(ontologies: tuple[Ontology, Ontology]) -> None:
    src_onto, dst_onto = ontologies
    src = seeded(6, 0, declare=False)
    src.class_heads = {"head": 1}
    dst = seeded(5, 1, declare=False)
    dst.class_heads = {"head": 1}
    load_weights(dst, src.state_dict(), source_ontology=src_onto, target_ontology=dst_onto)
    assert torch.equal(dst.head.weight[4], src.head.weight[5])      # the "no object" row
    assert torch.equal(dst.head.weight[1], src.head.weight[3])      # sky


def test_head_size_inconsistent_with_ontology_is_an_error(ontologies: tuple[Ontology, Ontology]) -> None:
    src_onto, dst_onto = ontologies
    with pytest.raises(ConfigError, match=r"'head.weight' has 7 rows but the source ontology 'src' has 5 class ids"):
        load_weights(seeded(4, 1), seeded(7, 0).state_dict(), source_ontology=src_onto, target_ontology=dst_onto)


def test_strict_loading(ontologies: tuple[Ontology, Ontology]) -> None:
    with pytest.raises(ConfigError, match="strict loading failed"):
        load_weights(seeded(4, 1), seeded(5, 0).state_dict(), strict=True)
    load_weights(seeded(4, 1), seeded(4, 0).state_dict(), strict=True)


def test_source_ontology_from_names_and_stored_ontology(tmp_path: Path, ontologies: tuple[Ontology, Ontology]) -> None:
    src_onto, dst_onto = ontologies
    src = seeded(5, 0)
    rep = load_weights(seeded(4, 1), src.state_dict(), source_ontology=["Void", "grass, lawn", "tree", "Sky", "rock"],
                       target_ontology=dst_onto)
    assert rep.class_map == [("void", ("void",)), ("sky", ("sky",)), ("grass", ("grass",))]
    path = save_checkpoint(tmp_path / "src.pth", src, ontology=src_onto)
    dst = seeded(4, 1)
    dst.ontology = dst_onto  # the target ontology comes from the model when not given
    rep2 = load_weights(dst, path)
    assert rep2.source_ontology == "src" and rep2.target_ontology == "dst" and rep2.new_classes == ["water"]


def test_ontology_helpers(ontologies: tuple[Ontology, Ontology]) -> None:
    onto = ontology_from_names(["Road, route", "tall grass", "road", "sky-line"])
    assert onto.names == ["road", "tall_grass", "road_2", "sky_line"]
    assert resolve_ontology(["a", "b"]).names == ["a", "b"]
    assert resolve_ontology("rellis3d").name == "rellis3d"
    src, dst = ontologies
    pairs, new = class_row_pairs(src, dst)
    assert pairs == [(0, (0,)), (1, (3,)), (2, (1,))] and new == [3]
    assert isinstance(read_checkpoint(Checkpoint({"w": torch.zeros(1)})), Checkpoint)


def test_nothing_fits_is_an_error() -> None:
    other = {"backbone.layer1.weight": torch.zeros(3, 3), "decode_head.conv_seg.weight": torch.zeros(5, 8, 1, 1)}
    with pytest.raises(ConfigError, match=r"none of the checkpoint's 2 tensors fits the model \(checkpoint names like "
                                          r"'backbone.layer1.weight', model names like 'trunk.0.weight'\)"):
        load_weights(seeded(4, 1), other)


def test_verbose_prints_the_report(capsys: pytest.CaptureFixture[str], ontologies: tuple[Ontology, Ontology]) -> None:
    src_onto, dst_onto = ontologies
    rep = load_weights(seeded(4, 1), seeded(5, 0).state_dict(), source_ontology=src_onto, target_ontology=dst_onto,
                       verbose=True)
    out = capsys.readouterr().out
    assert out.strip() == rep.summary()
    assert out.startswith("weights from <state dict> (state_dict)")
    assert "loaded       7 tensors" in out and "remapped     2 tensors  head.weight, head.bias" in out
    assert "copied: void, sky, grass" in out
