"""Label maps: built-in maps, upstream learning maps, YAML errors, drop, apply, compose, round trips."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from terraseg.errors import ConfigError, DataError
from terraseg.ontology import LabelMap, Ontology, builtin_map_path, get_ontology, list_label_maps

MAPS = list_label_maps()

EXPECTED_MAPS = [
    ("carla", "traversability"),
    ("carla-legacy", "traversability"),
    ("goose", "rellis3d"),
    ("goose", "semantickitti"),
    ("goose", "traversability"),
    ("nuscenes-raw", "nuscenes"),
    ("rellis3d", "goose"),
    ("rellis3d", "semantickitti"),
    ("rellis3d", "traversability"),
    ("rellis3d-raw", "rellis3d"),
    ("semantickitti", "goose"),
    ("semantickitti", "rellis3d"),
    ("semantickitti", "traversability"),
    ("semantickitti-raw", "semantickitti"),
    ("sim", "goose"),
    ("sim", "rellis3d"),
    ("sim", "traversability"),
]


def target_name(m: LabelMap, source_class: str) -> str:
    return m.target.name_of(int(m.lut[m.source.id_of(source_class)]))


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def rellis_to_trav_def() -> dict:
    """A complete rellis3d -> traversability definition (the built-in one) to break in error tests."""
    return yaml.safe_load(builtin_map_path("rellis3d", "traversability").read_text(encoding="utf-8"))


def reference_apply(m: LabelMap, labels: np.ndarray) -> np.ndarray:
    """Pure-Python reference: a dict from source id to target id, applied element by element."""
    table = {c.id: m.target.id_of(t) for c, (_, t) in zip(m.source, m.pairs())}
    return np.array([table[int(v)] for v in labels.ravel().tolist()], dtype=np.int64).reshape(labels.shape)


# --------------------------------------------------------------------------- built-in maps
def test_list_label_maps() -> None:
    assert MAPS == EXPECTED_MAPS


@pytest.mark.parametrize(("src", "dst"), MAPS)
def test_builtin_map_loads_and_is_total(src: str, dst: str) -> None:
    m = LabelMap.builtin(src, dst)
    assert repr(m) == f"LabelMap({src} -> {dst})"
    assert m.source is get_ontology(src) and m.target is get_ontology(dst)
    assert m.lut.shape == (m.source.max_id + 1,) and m.lut.dtype == m.target.label_dtype
    assert np.array_equal(m.valid, m.source.valid_mask)
    assert m.dropped == frozenset()
    # every source class maps to a class of the target
    mapped = m.lut[m.source.ids]
    assert m.target.valid_mask[mapped].all()
    assert [s for s, _ in m.pairs()] == m.source.names
    assert not m.lut.flags.writeable


@pytest.mark.parametrize(("src", "dst"), MAPS)
def test_builtin_map_void_goes_to_void(src: str, dst: str) -> None:
    m = LabelMap.builtin(src, dst)
    for v in m.source.void_ids:
        assert int(m.lut[v]) in m.target.void_ids


@pytest.mark.parametrize(("src", "dst"), MAPS)
def test_to_dict_round_trip(src: str, dst: str, tmp_path: Path) -> None:
    m = LabelMap.builtin(src, dst)
    d = m.to_dict()
    assert d["source"] == src and d["target"] == dst
    assert list(d["mapping"]) == m.source.names
    again = LabelMap.from_mapping(d["source"], d["target"], d["mapping"], d.get("drop", ()), d.get("drop_to"))
    assert np.array_equal(again.lut, m.lut) and again.lut.dtype == m.lut.dtype
    assert again.dropped == m.dropped
    from_file = LabelMap.from_yaml(write_yaml(tmp_path / "m.yaml", d))
    assert np.array_equal(from_file.lut, m.lut)
    assert from_file.to_dict() == d


def test_builtin_map_missing_pair() -> None:
    with pytest.raises(ConfigError, match=r"no built-in label map from 'goose' to 'nuscenes' \(built-in: carla->"):
        LabelMap.builtin("goose", "nuscenes")


def test_rellis3d_raw_to_rellis3d_renumbers_in_order() -> None:
    m = LabelMap.builtin("rellis3d-raw", "rellis3d")
    raw_ids = m.source.ids.tolist()
    assert raw_ids == [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 17, 18, 19, 23, 27, 31, 33, 34]
    assert m.lut[raw_ids].tolist() == list(range(20))
    assert all(s == t for s, t in m.pairs())


@pytest.mark.parametrize(("cls", "expected"), [
    ("asphalt", "stable_terrain"),
    ("forest", "nondrivable_vegetation"),
    ("sky", "sky"),
    ("water", "water"),
    ("person", "obstacle"),
    ("undefined", "void"),
    ("ego_vehicle", "void"),
    ("snow", "unstable_terrain"),
    ("low_grass", "drivable_vegetation"),
])
def test_goose_traversability_spot_checks(cls: str, expected: str) -> None:
    assert target_name(LabelMap.builtin("goose", "traversability"), cls) == expected


@pytest.mark.parametrize(("cls", "expected"), [
    ("puddle", "water"),
    ("mud", "unstable_terrain"),
    ("grass", "drivable_vegetation"),
    ("dirt", "stable_terrain"),
    ("tree", "nondrivable_vegetation"),
    ("log", "obstacle"),
    ("void", "void"),
])
def test_rellis3d_traversability_spot_checks(cls: str, expected: str) -> None:
    assert target_name(LabelMap.builtin("rellis3d", "traversability"), cls) == expected


def test_other_traversability_spot_checks() -> None:
    assert target_name(LabelMap.builtin("semantickitti", "traversability"), "terrain") == "drivable_vegetation"
    assert target_name(LabelMap.builtin("semantickitti", "traversability"), "road") == "stable_terrain"
    assert target_name(LabelMap.builtin("carla", "traversability"), "other") == "void"
    assert target_name(LabelMap.builtin("carla-legacy", "traversability"), "terrain") == "drivable_vegetation"


# --------------------------------------------------------------------------- upstream learning maps
@pytest.mark.realdata
def test_semantickitti_map_equals_upstream_learning_map(shared_data: Path) -> None:
    cfg = yaml.safe_load((shared_data / "semantic-kitti-api" / "semantic-kitti.yaml").read_text(encoding="utf-8"))
    m = LabelMap.builtin("semantickitti-raw", "semantickitti")
    lm = cfg["learning_map"]
    assert sorted(lm) == m.source.ids.tolist()
    assert {i: int(m.lut[i]) for i in lm} == lm


@pytest.mark.realdata
def test_semantickitti_map_on_real_scan(shared_data: Path) -> None:
    cfg = yaml.safe_load((shared_data / "semantic-kitti-api" / "semantic-kitti.yaml").read_text(encoding="utf-8"))
    raw = np.fromfile(shared_data / "spvnas" / "000000.label", dtype=np.uint32)
    assert raw.shape == (123_389,)
    sem = (raw & 0xFFFF).astype(np.uint16)
    assert {252, 254} <= set(np.unique(sem).tolist())
    m = LabelMap.builtin("semantickitti-raw", "semantickitti")
    out = m(sem, source="000000.label")
    assert out.dtype == np.uint8 and out.shape == sem.shape
    expected = np.array([cfg["learning_map"][int(v)] for v in sem.tolist()], dtype=np.uint8)
    assert np.array_equal(out, expected)


@pytest.mark.realdata
def test_nuscenes_map_equals_cylinder3d_learning_map(shared_data: Path) -> None:
    cfg = yaml.safe_load((shared_data / "nuscenes_labels" / "cylinder3d_nuscenes.yaml").read_text(encoding="utf-8"))
    m = LabelMap.builtin("nuscenes-raw", "nuscenes")
    lm = cfg["learning_map"]
    assert sorted(lm) == m.source.ids.tolist()
    assert {i: int(m.lut[i]) for i in lm} == lm
    # and the target names agree with labels_16
    for raw_id, train_id in lm.items():
        assert m.target.name_of(int(m.lut[raw_id])) == cfg["labels_16"][train_id]


# --------------------------------------------------------------------------- building from YAML: errors
def test_missing_source_class_names_it_and_mentions_drop(tmp_path: Path) -> None:
    d = rellis_to_trav_def()
    del d["mapping"]["mud"]
    p = write_yaml(tmp_path / "m.yaml", d)
    with pytest.raises(ConfigError, match=re.escape(f"{p}: source classes neither mapped nor dropped: ['mud'] "
                                                    "(map each one, or list it under 'drop')")):
        LabelMap.from_yaml(p)


def test_unknown_source_class_name(tmp_path: Path) -> None:
    d = rellis_to_trav_def()
    d["mapping"]["swamp"] = "water"
    p = write_yaml(tmp_path / "m.yaml", d)
    with pytest.raises(ConfigError, match=re.escape("source ontology 'rellis3d' has no classes ['swamp']")):
        LabelMap.from_yaml(p)
    d = rellis_to_trav_def()
    d["drop"] = ["swamp"]
    with pytest.raises(ConfigError, match=re.escape("source ontology 'rellis3d' has no classes ['swamp']")):
        LabelMap.from_yaml(write_yaml(tmp_path / "m2.yaml", d))


def test_unknown_target_class_name(tmp_path: Path) -> None:
    d = rellis_to_trav_def()
    d["mapping"]["mud"] = "swamp"
    p = write_yaml(tmp_path / "m.yaml", d)
    with pytest.raises(ConfigError, match=re.escape(f"{p}: target ontology 'traversability' has no classes ['swamp']")):
        LabelMap.from_yaml(p)


def test_unknown_drop_to(tmp_path: Path) -> None:
    d = rellis_to_trav_def()
    del d["mapping"]["mud"]
    d["drop"], d["drop_to"] = ["mud"], "swamp"
    with pytest.raises(ConfigError, match="ontology 'traversability' has no class named 'swamp'"):
        LabelMap.from_yaml(write_yaml(tmp_path / "m.yaml", d))


def test_unknown_ontologies_in_map(tmp_path: Path) -> None:
    d = rellis_to_trav_def()
    d["source"] = "rellis"
    with pytest.raises(ConfigError, match=r"unknown ontology 'rellis' \(did you mean"):
        LabelMap.from_yaml(write_yaml(tmp_path / "m.yaml", d))


def test_class_both_mapped_and_dropped(tmp_path: Path) -> None:
    d = rellis_to_trav_def()
    d["drop"] = ["mud"]
    with pytest.raises(ConfigError, match=re.escape("classes both mapped and dropped: ['mud']")):
        LabelMap.from_yaml(write_yaml(tmp_path / "m.yaml", d))


def test_map_file_structure_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: label map file not found")):
        LabelMap.from_yaml(missing)
    d = rellis_to_trav_def()
    d["maping"] = d.pop("mapping")
    with pytest.raises(ConfigError, match=re.escape("unknown keys ['maping']")):
        LabelMap.from_yaml(write_yaml(tmp_path / "a.yaml", d))
    d = rellis_to_trav_def()
    del d["target"]
    with pytest.raises(ConfigError, match="missing key 'target'"):
        LabelMap.from_yaml(write_yaml(tmp_path / "b.yaml", d))


# --------------------------------------------------------------------------- drop
def test_drop_with_drop_to(tmp_path: Path) -> None:
    d = rellis_to_trav_def()
    for n in ("log", "person"):
        del d["mapping"][n]
    d["drop"], d["drop_to"] = ["log", "person"], "obstacle"
    m = LabelMap.from_yaml(write_yaml(tmp_path / "m.yaml", d))
    src = m.source
    assert m.dropped == {src.id_of("log"), src.id_of("person")}
    assert target_name(m, "log") == target_name(m, "person") == "obstacle"
    assert target_name(m, "mud") == "unstable_terrain"
    out = m.to_dict()
    assert out["drop"] == ["log", "person"] and out["drop_to"] == "obstacle"
    assert "log" not in out["mapping"] and "person" not in out["mapping"]
    again = LabelMap.from_mapping(out["source"], out["target"], out["mapping"], out["drop"], out["drop_to"])
    assert np.array_equal(again.lut, m.lut) and again.dropped == m.dropped


def test_drop_defaults_to_target_ignore_then_void() -> None:
    mapping = {n: "obstacle" for n in get_ontology("rellis3d").names if n != "sky"}
    m = LabelMap.from_mapping("rellis3d", "traversability", mapping, drop=["sky"])
    assert target_name(m, "sky") == "void"
    # goose ignores nothing, so the single void class (undefined) is used
    names = get_ontology("traversability").names
    m = LabelMap.from_mapping("traversability", "goose", {n: "obstacle" for n in names if n != "sky"}, drop=["sky"])
    assert target_name(m, "sky") == "undefined"


def test_drop_without_single_ignore_or_void_needs_drop_to() -> None:
    target = Ontology.from_dict({"name": "plain", "classes": [{"id": 0, "name": "a", "color": "#000000"},
                                                             {"id": 1, "name": "b", "color": "#ffffff"}]})
    names = get_ontology("traversability").names
    with pytest.raises(ConfigError, match="dropped classes need 'drop_to' \\(target 'plain' has no single"):
        LabelMap.from_mapping("traversability", target, {n: "a" for n in names[1:]}, drop=[names[0]])
    m = LabelMap.from_mapping("traversability", target, {n: "a" for n in names[1:]}, drop=[names[0]], drop_to="b")
    assert m.lut.tolist() == [1] + [0] * 7


# --------------------------------------------------------------------------- apply
def test_apply_large_uint8_mask_matches_dict_reference() -> None:
    m = LabelMap.builtin("goose", "traversability")
    rng = np.random.default_rng(0)
    mask = rng.choice(m.source.ids, size=(1024, 2048)).astype(np.uint8)
    out = m(mask)
    assert out.shape == (1024, 2048) and out.dtype == m.target.label_dtype == np.uint8
    crop = (slice(500, 540), slice(1000, 1064))
    assert np.array_equal(out[crop], reference_apply(m, mask[crop]))
    assert np.array_equal(m.apply(mask, check=False), out)
    # each source id lands on its own target everywhere
    for name, target in [("asphalt", "stable_terrain"), ("sky", "sky"), ("hedge", "nondrivable_vegetation")]:
        sel = mask == m.source.id_of(name)
        assert sel.any() and (out[sel] == m.target.id_of(target)).all()


def test_apply_sparse_raw_ids_and_uint16_input() -> None:
    m = LabelMap.builtin("semantickitti-raw", "semantickitti")
    rng = np.random.default_rng(1)
    labels = rng.choice(m.source.ids, size=(300, 7)).astype(np.uint16)
    out = m(labels)
    assert out.dtype == np.uint8 and out.shape == labels.shape
    assert np.array_equal(out, reference_apply(m, labels))
    m2 = LabelMap.builtin("rellis3d-raw", "rellis3d")
    raw = rng.choice(m2.source.ids, size=(64, 64)).astype(np.int64)
    assert np.array_equal(m2(raw), reference_apply(m2, raw))


def test_apply_rejects_ids_not_in_source() -> None:
    m = LabelMap.builtin("rellis3d-raw", "rellis3d")
    mask = np.array([[0, 1, 2], [2, 3, 4]], dtype=np.uint8)
    with pytest.raises(DataError, match=re.escape("frame000104.png: 2 values are not ids of ontology "
                                                  "'rellis3d-raw': 2 (2x)")):
        m(mask, source="frame000104.png")
    with pytest.raises(DataError, match=re.escape("labels: 1 values are not ids of ontology 'rellis3d-raw': 200 (1x)")):
        m(np.array([0, 200], dtype=np.uint8))
    with pytest.raises(DataError, match=re.escape("scan.label: 1 values are not ids of ontology 'rellis3d-raw': -1 (1x)")):
        m(np.array([-1, 0], dtype=np.int32), source="scan.label")
    with pytest.raises(DataError, match="scan.label: label array must have an integer dtype, got float64"):
        m(np.array([0.0, 1.0]), source="scan.label")
    # without the check, invalid in-range ids take table entry 0 and out-of-range ids raise IndexError
    assert m(mask, check=False).tolist() == [[0, 1, 0], [0, 2, 3]]
    with pytest.raises(IndexError):
        m(np.array([200], dtype=np.uint8), check=False)


def test_apply_empty_and_scalar() -> None:
    m = LabelMap.builtin("rellis3d-raw", "rellis3d")
    assert m(np.zeros((0, 3), dtype=np.uint8)).shape == (0, 3)
    assert int(m(np.uint8(34))) == 19


# --------------------------------------------------------------------------- compose / identity
def test_compose_equals_applying_both() -> None:
    a = LabelMap.builtin("rellis3d-raw", "rellis3d")
    b = LabelMap.builtin("rellis3d", "traversability")
    c = a.compose(b)
    assert repr(c) == "LabelMap(rellis3d-raw -> traversability)"
    assert c.lut.dtype == b.target.label_dtype
    assert np.array_equal(c.valid, a.valid)
    rng = np.random.default_rng(2)
    raw = rng.choice(a.source.ids, size=(128, 256)).astype(np.uint8)
    assert np.array_equal(c(raw), b(a(raw)))
    assert [t for _, t in c.pairs()] == [t for _, t in b.pairs()]
    assert target_name(c, "puddle") == "water" and target_name(c, "rubble") == "unstable_terrain"
    with pytest.raises(DataError, match="'rellis3d-raw': 2 "):
        c(np.array([2], dtype=np.uint8))


def test_compose_semantickitti_chain() -> None:
    a = LabelMap.builtin("semantickitti-raw", "semantickitti")
    b = LabelMap.builtin("semantickitti", "traversability")
    c = a.compose(b)
    ids = a.source.ids.astype(np.uint16)
    assert np.array_equal(c(ids), b(a(ids)))
    assert target_name(c, "moving_car") == "obstacle" and target_name(c, "lane_marking") == "stable_terrain"
    assert target_name(c, "other_structure") == "void"


def test_compose_mismatch() -> None:
    a = LabelMap.builtin("rellis3d-raw", "rellis3d")
    with pytest.raises(ConfigError, match="cannot compose rellis3d-raw->rellis3d with goose->traversability"):
        a.compose(LabelMap.builtin("goose", "traversability"))


@pytest.mark.parametrize("name", ["goose", "rellis3d-raw", "semantickitti-raw", "traversability"])
def test_identity(name: str) -> None:
    m = LabelMap.identity(name)
    onto = get_ontology(name)
    assert repr(m) == f"LabelMap({name} -> {name})"
    assert np.array_equal(m.lut[onto.ids], onto.ids)
    labels = onto.ids.astype(onto.label_dtype)
    out = m(labels)
    assert out.dtype == onto.label_dtype and np.array_equal(out, labels)
    d = m.to_dict()
    assert d == {"source": name, "target": name, "mapping": {n: n for n in onto.names}}
    again = LabelMap.from_mapping(name, name, d["mapping"])
    assert np.array_equal(again.lut, m.lut)


def test_sim_maps_agree_with_the_real_datasets_traversability() -> None:
    """A simulator class goes to the same traversability class directly or through GOOSE / RELLIS-3D
    (mud only through RELLIS-3D: GOOSE has no mud class, so it becomes soil; rock only through GOOSE:
    RELLIS-3D has no rock class, so it becomes rubble)."""
    direct = LabelMap.builtin("sim", "traversability")
    for via in ("goose", "rellis3d"):
        composed = LabelMap.builtin("sim", via).compose(LabelMap.builtin(via, "traversability"))
        extra = ("mud",) if via == "rellis3d" else ("rock",)
        for cls in ("dirt", *extra, "low_grass", "high_grass", "bush", "tree_crown", "water", "puddle",
                    "fence", "building", "vehicle", "person", "sky"):
            assert target_name(direct, cls) == target_name(composed, cls), (via, cls)
