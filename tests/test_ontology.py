"""Ontologies: built-in definitions, invariants, groupings, YAML errors, id checks, real-data cross-checks."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml

from terraseg.errors import ConfigError, DataError
from terraseg.ontology import ClassInfo, Ontology, color_hex, get_ontology, list_ontologies, parse_color

ALL = list_ontologies()

EXPECTED_COUNTS = {
    "goose": 64,
    "rellis3d": 20,
    "rellis3d-raw": 20,
    "semantickitti-raw": 34,
    "semantickitti": 20,
    "carla": 29,
    "carla-legacy": 23,
    "nuscenes-raw": 32,
    "nuscenes": 17,
    "traversability": 8,
    "sim": 20,
}

# (void class names, ignore class names) of every built-in ontology.
EXPECTED_VOID_IGNORE = {
    "goose": (["undefined"], []),
    "rellis3d": (["void"], ["void"]),
    "rellis3d-raw": (["void"], ["void"]),
    "semantickitti-raw": (["unlabeled"], ["unlabeled"]),
    "semantickitti": (["unlabeled"], ["unlabeled"]),
    "carla": (["unlabeled"], ["unlabeled"]),
    "carla-legacy": (["unlabeled"], ["unlabeled"]),
    "nuscenes-raw": (["noise"], ["noise"]),
    "nuscenes": (["noise"], ["noise"]),
    "traversability": (["void"], ["void"]),
    "sim": (["void"], ["void"]),
}

# Classes that share a colour in the official SemanticKITTI palette (semantic-kitti.yaml color_map):
# every moving_* class reuses its static class's colour, on_rails/other_vehicle and their moving
# variants are all pure blue, and outlier has traffic_sign's red.
SEMANTICKITTI_SHARED_COLOURS = {
    "#0000ff": {"on_rails", "other_vehicle", "moving_on_rails", "moving_other_vehicle"},
    "#ff0000": {"outlier", "traffic_sign"},
    "#6496f5": {"car", "moving_car"},
    "#ff28c8": {"bicyclist", "moving_bicyclist"},
    "#ff1e1e": {"person", "moving_person"},
    "#961e5a": {"motorcyclist", "moving_motorcyclist"},
    "#6450fa": {"bus", "moving_bus"},
    "#501eb4": {"truck", "moving_truck"},
}


def shared_colour_groups(onto: Ontology) -> dict[str, set[str]]:
    """Colour (hex) -> class names, for colours used by more than one class."""
    by_colour: dict[str, set[str]] = defaultdict(set)
    for c in onto:
        by_colour[color_hex(c.color)].add(c.name)
    return {k: v for k, v in by_colour.items() if len(v) > 1}


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def small_def(**overrides: object) -> dict:
    """A valid 3-class ontology definition to break in error tests."""
    d = {
        "name": "tiny",
        "void": ["void"],
        "ignore": ["void"],
        "classes": [
            {"id": 0, "name": "void", "color": "#000000"},
            {"id": 1, "name": "road", "color": "#808080"},
            {"id": 5, "name": "tree", "color": "#00ff00"},
        ],
    }
    d.update(overrides)
    return d


# --------------------------------------------------------------------------- registry
def test_list_ontologies_is_exactly_the_builtins() -> None:
    assert ALL == sorted(EXPECTED_COUNTS)


def test_get_ontology_returns_cached_instance_and_passes_ontologies_through() -> None:
    g = get_ontology("goose")
    assert get_ontology("goose") is g
    assert get_ontology(g) is g
    assert g["forest"].id == 16 and g[16].name == "forest"


# --------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("name", ALL)
def test_class_count(name: str) -> None:
    onto = get_ontology(name)
    assert onto.name == name
    assert len(onto) == onto.num_classes == EXPECTED_COUNTS[name]


@pytest.mark.parametrize("name", ALL)
def test_ids_unique_non_negative_and_sorted(name: str) -> None:
    onto = get_ontology(name)
    ids = [c.id for c in onto]
    assert all(isinstance(i, int) and i >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert onto.ids.dtype == np.int64 and onto.ids.tolist() == ids
    assert onto.max_id == ids[-1]


@pytest.mark.parametrize("name", ALL)
def test_names_unique(name: str) -> None:
    onto = get_ontology(name)
    assert len(set(onto.names)) == len(onto.names)
    for c in onto:
        assert onto[c.name] is c and onto[c.id] is c
        assert onto.id_of(c.name) == c.id and onto.name_of(c.id) == c.name


@pytest.mark.parametrize("name", ALL)
def test_colours_valid_and_unique_where_declared(name: str) -> None:
    onto = get_ontology(name)
    for c in onto:
        assert len(c.color) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c.color)
    if onto.colors_unique:
        assert shared_colour_groups(onto) == {}
    else:
        assert shared_colour_groups(onto) != {}


def test_only_semantickitti_raw_shares_colours() -> None:
    assert [n for n in ALL if not get_ontology(n).colors_unique] == ["semantickitti-raw"]


def test_semantickitti_raw_shared_colour_groups_are_exactly_upstreams() -> None:
    groups = shared_colour_groups(get_ontology("semantickitti-raw"))
    assert groups == SEMANTICKITTI_SHARED_COLOURS


@pytest.mark.parametrize("name", ALL)
def test_void_and_ignore_ids_are_classes(name: str) -> None:
    onto = get_ontology(name)
    assert onto.void_ids <= set(onto.ids.tolist())
    assert onto.ignore_ids <= set(onto.ids.tolist())
    void, ignore = EXPECTED_VOID_IGNORE[name]
    assert sorted(onto.name_of(i) for i in onto.void_ids) == void
    assert sorted(onto.name_of(i) for i in onto.ignore_ids) == ignore


@pytest.mark.parametrize("name", ALL)
def test_groupings_reference_classes_and_are_disjoint(name: str) -> None:
    onto = get_ontology(name)
    names = set(onto.names)
    if onto.default_grouping is not None:
        assert onto.default_grouping in onto.groupings
    for gname, groups in onto.groupings.items():
        members = [m for ms in groups.values() for m in ms]
        assert set(members) <= names, gname
        assert len(members) == len(set(members)), f"{gname}: a class is in two categories"
        by_id = onto.grouping(gname)
        assert set(by_id) == set(groups)
        for cat, ids in by_id.items():
            assert [onto.name_of(i) for i in ids] == list(groups[cat])
            for i in ids:
                assert onto.category_of(i, gname) == cat


@pytest.mark.parametrize("name", ALL)
def test_default_grouping_matches_class_categories(name: str) -> None:
    onto = get_ontology(name)
    if all(c.category is None for c in onto):
        assert onto.default_grouping is None
        with pytest.raises(ConfigError, match=f"ontology {name!r} has no category grouping None"):
            onto.grouping()
        return
    for c in onto:
        assert onto.category_of(c.id) == c.category


@pytest.mark.parametrize("name", ALL)
def test_label_dtype(name: str) -> None:
    onto = get_ontology(name)
    expected = np.uint16 if name == "semantickitti-raw" else np.uint8
    assert onto.label_dtype == np.dtype(expected)
    assert np.iinfo(onto.label_dtype).max >= onto.max_id


def test_label_dtype_switches_above_255() -> None:
    cls = [ClassInfo(0, "a", (0, 0, 0)), ClassInfo(255, "b", (1, 1, 1))]
    assert Ontology("x", tuple(cls)).label_dtype == np.uint8
    cls.append(ClassInfo(256, "c", (2, 2, 2)))
    assert Ontology("x", tuple(cls)).label_dtype == np.uint16


@pytest.mark.parametrize("name", ALL)
def test_palette(name: str) -> None:
    onto = get_ontology(name)
    pal = onto.palette
    assert pal.shape == (onto.max_id + 1, 3) and pal.dtype == np.uint8
    for c in onto:
        assert tuple(pal[c.id].tolist()) == c.color
    unused = ~onto.valid_mask
    assert not pal[unused].any()
    assert not pal.flags.writeable


@pytest.mark.parametrize("name", ALL)
def test_valid_mask(name: str) -> None:
    onto = get_ontology(name)
    m = onto.valid_mask
    assert m.dtype == bool and m.shape == (onto.max_id + 1,)
    assert np.flatnonzero(m).tolist() == onto.ids.tolist()
    assert not m.flags.writeable
    assert onto.is_contiguous == (int(m.sum()) == len(m))


def test_sparse_ids_of_rellis3d_raw() -> None:
    onto = get_ontology("rellis3d-raw")
    assert not onto.is_contiguous
    assert onto.max_id == 34
    assert np.flatnonzero(~onto.valid_mask).tolist() == [2, 11, 13, 14, 16, 20, 21, 22, 24, 25, 26, 28, 29, 30, 32]
    assert get_ontology("rellis3d").is_contiguous
    assert 2 not in onto and 3 in onto and "grass" in onto and "uphill" not in onto
    with pytest.raises(ConfigError, match="ontology 'rellis3d-raw' has no class with id 2"):
        onto[2]


@pytest.mark.parametrize("name", ALL)
def test_to_dict_from_dict_round_trip(name: str) -> None:
    onto = get_ontology(name)
    d = onto.to_dict()
    again = Ontology.from_dict(d)
    assert again == dataclasses.replace(onto, path=None)
    assert again.to_dict() == d
    assert again.groupings == onto.groupings
    assert again.default_grouping == onto.default_grouping


@pytest.mark.parametrize("name", ALL)
def test_to_dict_yaml_file_round_trip(name: str, tmp_path: Path) -> None:
    onto = get_ontology(name)
    p = write_yaml(tmp_path / f"{name}.yaml", onto.to_dict())
    again = get_ontology(p)
    assert again.path == p
    assert dataclasses.replace(again, path=None) == dataclasses.replace(onto, path=None)


def test_to_dict_round_trip_keeps_default_grouping_defined_under_groupings() -> None:
    d = small_def(default_grouping="g", groupings={"g": {"ground": ["road"], "plant": ["tree"]}})
    onto = Ontology.from_dict(d)
    assert onto.default_grouping == "g"
    again = Ontology.from_dict(onto.to_dict())
    assert again == onto


# --------------------------------------------------------------------------- GOOSE specifics
def test_goose_hedge_has_csv_colour_not_snows() -> None:
    g = get_ontology("goose")
    assert g[59].name == "hedge"
    assert color_hex(g["hedge"].color) == "#e8d317"
    assert color_hex(g["snow"].color) == "#d157a0"
    assert g["hedge"].color != g["snow"].color


def test_goose_undefined_is_void_but_not_ignored() -> None:
    g = get_ontology("goose")
    assert g[0].name == "undefined"
    assert g.void_ids == {0}
    assert g.ignore_ids == frozenset()


def test_goose_icra2025_grouping_covers_all_classes() -> None:
    g = get_ontology("goose")
    assert g.default_grouping == "icra2025"
    grouping = g.grouping("icra2025")
    assert g.grouping() == grouping
    assert sorted(grouping) == sorted(["other", "artificial_structures", "artificial_ground", "natural_ground",
                                       "obstacle", "vehicle", "vegetation", "human", "sky"])
    ids = sorted(i for members in grouping.values() for i in members)
    assert ids == list(range(64))
    assert g.category_of(0) == "other" and g.category_of(56) == "other" and g.category_of(8) == "other"
    assert g.category_of(g.id_of("rock")) == "obstacle"
    assert g.category_of(g.id_of("water")) == "natural_ground"
    assert g.category_of(g.id_of("sky")) == "sky"


def test_goose_11_grouping() -> None:
    g = get_ontology("goose")
    assert sorted(g.grouping_names) == ["goose-11", "icra2025"]
    grouping = g.grouping("goose-11")
    assert sorted(grouping) == ["Animal", "Construction", "Human", "Object", "Road", "Sign", "Sky", "Terrain",
                                "Vegetation", "Vehicle", "Water"]
    members = [i for ids in grouping.values() for i in ids]
    assert len(members) == len(set(members)) == 62
    assert set(range(64)) - set(members) == {g.id_of("undefined"), g.id_of("outlier")}
    assert g.category_of(g.id_of("undefined"), "goose-11") is None
    assert g.category_of(g.id_of("outlier"), "goose-11") is None
    for cls, cat in [("rock", "Terrain"), ("on_rails", "Road"), ("curb", "Road"), ("wire", "Object"),
                     ("animal", "Animal"), ("misc_sign", "Sign"), ("hedge", "Vegetation"),
                     ("ego_vehicle", "Vehicle"), ("water", "Water"), ("guard_rail", "Construction")]:
        assert g.category_of(g.id_of(cls), "goose-11") == cat, cls
    assert [g.name_of(i) for i in grouping["Terrain"]] == ["snow", "gravel", "soil", "rock"]


def test_unknown_grouping_lists_available() -> None:
    g = get_ontology("goose")
    with pytest.raises(ConfigError, match=r"ontology 'goose' has no category grouping 'goose11' "
                                          r"\(available: icra2025, goose-11\)"):
        g.grouping("goose11")


# --------------------------------------------------------------------------- lookup errors
def test_unknown_ontology_name_suggests_close_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown ontology 'gooose' \(did you mean 'goose'\?\); built-in: carla,"):
        get_ontology("gooose")
    with pytest.raises(ConfigError, match=r"did you mean 'rellis3d-raw'"):
        get_ontology("rellis3d_raw")
    with pytest.raises(ConfigError, match=r"unknown ontology 'zzzz'; built-in: .*traversability \(or give the path"):
        get_ontology("zzzz")


def test_unknown_class_name_suggests_close_name() -> None:
    with pytest.raises(ConfigError, match=r"ontology 'goose' has no class named 'forrest' \(did you mean 'forest'"):
        get_ontology("goose")["forrest"]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: ontology file not found")):
        get_ontology(missing)
    with pytest.raises(ConfigError, match="ontology file not found"):
        Ontology.from_yaml(str(missing))


# --------------------------------------------------------------------------- YAML definition errors
def test_valid_small_yaml_loads(tmp_path: Path) -> None:
    p = write_yaml(tmp_path / "tiny.yaml", small_def(groupings={"g": {"ground": ["road"]}}))
    onto = get_ontology(p)
    assert onto.names == ["void", "road", "tree"] and onto.max_id == 5
    assert onto.void_ids == {0} and onto.ignore_ids == {0}
    assert onto.grouping("g") == {"ground": [1]}
    assert onto.category_of(5, "g") is None


def test_duplicate_ids(tmp_path: Path) -> None:
    d = small_def()
    d["classes"][2]["id"] = 1
    p = write_yaml(tmp_path / "dup.yaml", d)
    with pytest.raises(ConfigError, match=re.escape(f"{p}: duplicate class ids [1]")):
        get_ontology(p)


def test_negative_id(tmp_path: Path) -> None:
    d = small_def()
    d["classes"][1]["id"] = -3
    p = write_yaml(tmp_path / "neg.yaml", d)
    with pytest.raises(ConfigError, match="negative class id"):
        get_ontology(p)


def test_duplicate_names(tmp_path: Path) -> None:
    d = small_def()
    d["classes"][2]["name"] = "road"
    p = write_yaml(tmp_path / "dup.yaml", d)
    with pytest.raises(ConfigError, match=re.escape("duplicate class names ['road']")):
        get_ontology(p)


def test_duplicate_colours(tmp_path: Path) -> None:
    d = small_def()
    d["classes"][2]["color"] = "#808080"
    p = write_yaml(tmp_path / "dup.yaml", d)
    with pytest.raises(ConfigError, match=re.escape("classes 'road' and 'tree' share colour #808080 "
                                                    "(set colors_unique: false")):
        get_ontology(p)
    d["colors_unique"] = False
    onto = get_ontology(write_yaml(tmp_path / "shared.yaml", d))
    assert not onto.colors_unique and onto["road"].color == onto["tree"].color == (128, 128, 128)


def test_unknown_top_level_keys(tmp_path: Path) -> None:
    p = write_yaml(tmp_path / "bad.yaml", small_def(colours_unique=True))
    with pytest.raises(ConfigError, match=re.escape(f"{p}: unknown keys ['colours_unique'] (known: ")):
        get_ontology(p)


def test_unknown_class_keys(tmp_path: Path) -> None:
    d = small_def()
    d["classes"][1]["colour"] = "#808080"
    p = write_yaml(tmp_path / "bad.yaml", d)
    with pytest.raises(ConfigError, match=re.escape("class 'road' has unknown keys ['colour']")):
        get_ontology(p)


def test_class_missing_required_key(tmp_path: Path) -> None:
    d = small_def()
    del d["classes"][1]["color"]
    p = write_yaml(tmp_path / "bad.yaml", d)
    with pytest.raises(ConfigError, match="class #1 needs id, name and color"):
        get_ontology(p)


def test_missing_name_or_classes(tmp_path: Path) -> None:
    d = small_def()
    del d["classes"]
    with pytest.raises(ConfigError, match="'name' and 'classes' are required"):
        get_ontology(write_yaml(tmp_path / "bad.yaml", d))


def test_grouping_names_unknown_class(tmp_path: Path) -> None:
    p = write_yaml(tmp_path / "bad.yaml", small_def(groupings={"g": {"ground": ["road", "gravel"]}}))
    with pytest.raises(ConfigError, match=re.escape("grouping 'g' category 'ground' names unknown classes ['gravel']")):
        get_ontology(p)


def test_grouping_puts_class_in_two_categories(tmp_path: Path) -> None:
    p = write_yaml(tmp_path / "bad.yaml", small_def(groupings={"g": {"a": ["road"], "b": ["road", "tree"]}}))
    with pytest.raises(ConfigError, match=re.escape("grouping 'g' puts classes in several categories: ['road']")):
        get_ontology(p)


def test_void_names_unknown_class(tmp_path: Path) -> None:
    p = write_yaml(tmp_path / "bad.yaml", small_def(ignore=["unlabeled"]))
    with pytest.raises(ConfigError, match=re.escape("'ignore' names unknown class 'unlabeled'")):
        get_ontology(p)


def test_undefined_default_grouping(tmp_path: Path) -> None:
    p = write_yaml(tmp_path / "bad.yaml", small_def(default_grouping="coarse"))
    with pytest.raises(ConfigError, match=re.escape("default_grouping 'coarse' is not defined")):
        get_ontology(p)


def test_invalid_colour_and_invalid_yaml(tmp_path: Path) -> None:
    d = small_def()
    d["classes"][1]["color"] = [300, 0, 0]
    with pytest.raises(ConfigError, match=re.escape("class 'road': invalid colour [300, 0, 0]")):
        get_ontology(write_yaml(tmp_path / "bad.yaml", d))
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\nclasses: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid YAML"):
        get_ontology(p)
    p.write_text("- just\n- a list\n", encoding="utf-8")  # a YAML list is read as a palette: one clear error
    with pytest.raises(ConfigError, match=r"broken.yaml: item #0 is 'just', expected a mapping with id, name and color"):
        get_ontology(p)


def test_parse_color_and_color_hex() -> None:
    assert parse_color("#E8d317", "x") == (232, 211, 23)
    assert parse_color([1, 2, 3], "x") == (1, 2, 3)
    assert color_hex((232, 211, 23)) == "#e8d317"
    for bad in ["#12345", "#gggggg", [1, 2], [1.0, 2, 3], 7]:
        with pytest.raises(ConfigError, match="where: invalid colour"):
            parse_color(bad, "where")


# --------------------------------------------------------------------------- check_ids
def test_check_ids_accepts_valid_ids_and_empty() -> None:
    onto = get_ontology("rellis3d-raw")
    onto.check_ids(np.array([[0, 1, 3], [34, 31, 3]], dtype=np.uint8))
    onto.check_ids(np.array([0, 34], dtype=np.int64))
    onto.check_ids(np.zeros((0, 4), dtype=np.uint8))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_check_ids_message_names_source_ids_and_counts(dtype: type) -> None:
    onto = get_ontology("rellis3d-raw")
    labels = np.array([0, 2, 2, 3, 11, 2, 35, 34], dtype=dtype)
    with pytest.raises(DataError, match=re.escape("frame_0001.png: 5 values are not ids of ontology "
                                                  "'rellis3d-raw': 2 (3x), 11 (1x), 35 (1x)")):
        onto.check_ids(labels, source="frame_0001.png")


def test_check_ids_negative_and_huge_values_use_slow_path() -> None:
    onto = get_ontology("traversability")
    with pytest.raises(DataError, match=re.escape("labels: 3 values are not ids of ontology 'traversability': "
                                                  "-1 (2x), 2000000 (1x)")):
        onto.check_ids(np.array([-1, 0, -1, 7, 2_000_000], dtype=np.int64))


def test_check_ids_lists_at_most_ten_ids() -> None:
    onto = get_ontology("traversability")
    labels = np.arange(8, 20, dtype=np.uint8)  # 12 bad ids, once each
    with pytest.raises(DataError, match=r"12 values are not ids .*: 8 \(1x\), .*17 \(1x\) and 2 more$"):
        onto.check_ids(labels)


def test_check_ids_allow_accepts_extra_ids() -> None:
    onto = get_ontology("traversability")
    labels = np.array([0, 1, 255, 255, 7], dtype=np.uint8)
    with pytest.raises(DataError, match=re.escape("2 values are not ids of ontology 'traversability': 255 (2x)")):
        onto.check_ids(labels)
    onto.check_ids(labels, allow=[255])
    onto.check_ids(labels.astype(np.int64), allow=(255,))
    onto.check_ids(np.array([-1, 3], dtype=np.int16), allow=[-1])
    with pytest.raises(DataError, match=re.escape("1 values are not ids of ontology 'traversability': 9 (1x)")):
        onto.check_ids(np.array([255, 9], dtype=np.uint16), allow=[255])


def test_check_ids_rejects_non_integer_arrays() -> None:
    with pytest.raises(DataError, match="label array must have an integer dtype, got float32"):
        get_ontology("goose").check_ids(np.zeros(3, dtype=np.float32))


# --------------------------------------------------------------------------- real data cross-checks
def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.realdata
def test_goose_equals_challenge_label_mapping_csv(shared_data: Path) -> None:
    rows = _csv_rows(shared_data / "goose" / "challenge_label_mapping.csv")
    g = get_ontology("goose")
    assert len(rows) == 64
    assert [int(r["label_key"]) for r in rows] == g.ids.tolist()
    assert [r["class_name"] for r in rows] == g.names
    assert [r["hex"].lower() for r in rows] == [color_hex(c.color) for c in g]
    assert [r["challenge_category_name"] for r in rows] == [c.category for c in g]


@pytest.mark.realdata
def test_goose_colormap_json_differs_only_at_hedge(shared_data: Path) -> None:
    cmap = json.loads((shared_data / "goose" / "goose_colormap.json").read_text(encoding="utf-8"))
    g = get_ontology("goose")
    differ = [int(k) for k, rgb in cmap.items() if tuple(rgb) != g[int(k)].color]
    assert differ == [59]
    assert cmap["59"] == cmap["2"] == list(g["snow"].color)  # upstream bug: hedge has snow's colour


@pytest.mark.realdata
def test_semantickitti_raw_equals_upstream_labels_and_bgr_colour_map(shared_data: Path) -> None:
    cfg = yaml.safe_load((shared_data / "semantic-kitti-api" / "semantic-kitti.yaml").read_text(encoding="utf-8"))
    onto = get_ontology("semantickitti-raw")
    assert sorted(cfg["labels"]) == onto.ids.tolist()
    for i, name in cfg["labels"].items():
        assert onto[i].name == name.replace("-", "_")
    assert sorted(cfg["color_map"]) == onto.ids.tolist()
    for i, bgr in cfg["color_map"].items():
        assert onto[i].color == tuple(reversed(bgr)), onto[i].name
    # The shared-colour groups follow from upstream's palette, not from our transcription.
    upstream: dict[tuple[int, ...], set[str]] = defaultdict(set)
    for i, bgr in cfg["color_map"].items():
        upstream[tuple(reversed(bgr))].add(cfg["labels"][i].replace("-", "_"))
    assert {color_hex(k): v for k, v in upstream.items() if len(v) > 1} == SEMANTICKITTI_SHARED_COLOURS


@pytest.mark.realdata
def test_semantickitti_train_ids_equal_learning_map_inv(shared_data: Path) -> None:
    cfg = yaml.safe_load((shared_data / "semantic-kitti-api" / "semantic-kitti.yaml").read_text(encoding="utf-8"))
    raw, onto = get_ontology("semantickitti-raw"), get_ontology("semantickitti")
    assert sorted(cfg["learning_map_inv"]) == onto.ids.tolist()
    for train_id, raw_id in cfg["learning_map_inv"].items():
        assert onto[train_id].name == raw[raw_id].name
        assert onto[train_id].color == raw[raw_id].color
    assert sorted(i for i, ign in cfg["learning_ignore"].items() if ign) == sorted(onto.ignore_ids)


@pytest.mark.realdata
def test_rellis3d_raw_equals_ontology_csv(shared_data: Path) -> None:
    rows = _csv_rows(shared_data / "rellis3d" / "ontology" / "ontology.csv")
    onto = get_ontology("rellis3d-raw")
    official = {int(r["output_value"]): (r["class_name"], r["display_color"].lower()) for r in rows}
    assert set(official) - set(onto.ids.tolist()) == {29, 30, 32}  # uphill, downhill, deep water: never annotated
    assert set(onto.ids.tolist()) <= set(official)
    for c in onto:
        assert official[c.id] == (c.name, color_hex(c.color))
    assert color_hex(onto["puddle"].color) == "#86ffef"


@pytest.mark.realdata
def test_rellis3d_raw_equals_ontology_yaml_and_rellis_yaml(shared_data: Path) -> None:
    names, colours = yaml.safe_load((shared_data / "rellis3d" / "ontology" / "ontology.yaml").read_text())
    onto = get_ontology("rellis3d-raw")
    assert sorted(names) == onto.ids.tolist()
    for i, name in names.items():
        assert onto[i].name == name and onto[i].color == tuple(colours[i])
    cfg = yaml.safe_load((shared_data / "rellis3d" / "rellis.yaml").read_text())
    assert {int(k): v for k, v in cfg["labels"].items()} == dict(zip(onto.ids.tolist(), onto.names))
    # rellis.yaml says "bgr" but holds RGB values.
    assert {int(k): tuple(v) for k, v in cfg["color_map"].items()} == {c.id: c.color for c in onto}


@pytest.mark.realdata
def test_rellis3d_train_ids_follow_raw_order(shared_data: Path) -> None:
    raw, train = get_ontology("rellis3d-raw"), get_ontology("rellis3d")
    assert train.ids.tolist() == list(range(20))
    assert train.names == raw.names
    assert [c.color for c in train] == [c.color for c in raw]
    assert [c.category for c in train] == [c.category for c in raw]


def _carla_name(upstream: str) -> str:
    special = {"Roads": "road", "SideWalks": "sidewalk", "RoadLine": "road_line"}
    if upstream in special:
        return special[upstream]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", upstream).replace(" ", "_").lower()


@pytest.mark.realdata
@pytest.mark.parametrize(("name", "csv_name"), [("carla", "carla_semantic_tags_0.9.14plus.csv"),
                                                ("carla-legacy", "carla_semantic_tags_legacy_0.9.10-0.9.13.csv")])
def test_carla_equals_csv(shared_data: Path, name: str, csv_name: str) -> None:
    rows = _csv_rows(shared_data / "carla_labels" / csv_name)
    onto = get_ontology(name)
    assert [int(r["tag"]) for r in rows] == onto.ids.tolist()
    assert [_carla_name(r["name"]) for r in rows] == onto.names
    assert [(int(r["r"]), int(r["g"]), int(r["b"])) for r in rows] == [c.color for c in onto]


@pytest.mark.realdata
def test_nuscenes_equal_devkit_table_and_cylinder3d(shared_data: Path) -> None:
    rows = _csv_rows(shared_data / "nuscenes_labels" / "nuscenes_lidarseg_classes.csv")
    raw, ch = get_ontology("nuscenes-raw"), get_ontology("nuscenes")
    assert [int(r["raw_index"]) for r in rows] == raw.ids.tolist()
    assert [r["name"] for r in rows] == raw.names
    assert [(int(r["r"]), int(r["g"]), int(r["b"])) for r in rows] == [c.color for c in raw]
    cfg = yaml.safe_load((shared_data / "nuscenes_labels" / "cylinder3d_nuscenes.yaml").read_text())
    assert cfg["labels"] == dict(zip(raw.ids.tolist(), raw.names))
    assert cfg["labels_16"] == dict(zip(ch.ids.tolist(), ch.names))
