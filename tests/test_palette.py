"""Palette files: every supported format, name/void handling, round trips, errors, real label tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from terraseg.errors import ConfigError
from terraseg.io.palette import find_palette_file, load_palette, parse_color_value, write_palette
from terraseg.ontology import decode_colors, encode_colors, get_ontology


def _triples(onto):
    return [(c.id, c.name, c.color) for c in onto.classes]


EXPECTED = [(0, "void", (0, 0, 0)), (1, "dirt", (108, 64, 20)), (4, "tall_grass", (0, 102, 0))]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


# ------------------------------------------------------------------ colour parsing
@pytest.mark.parametrize("value", ["#6c4014", "6c4014", "6C4014", "108 64 20", "108,64,20", "(108, 64, 20)",
                                   [108, 64, 20], ["108", "64", "20"]])
def test_parse_color_value_accepts_common_spellings(value):
    assert parse_color_value(value, "x") == (108, 64, 20)


@pytest.mark.parametrize("value", ["#6c401", "256 0 0", "1 2", [1, 2, 3, 4], "#gggggg", [1.5, 2, 3], True])
def test_parse_color_value_rejects(value):
    with pytest.raises(ConfigError, match="colour"):
        parse_color_value(value, "where")


# ------------------------------------------------------------------ text format
def test_text_format_with_comments_hex_and_spaced_names(tmp_path):
    p = _write(tmp_path, "pal.txt", "# my palette\n\n0 void 0 0 0   # unlabelled\n1 Dirt #6c4014\n"
                                    "4 tall grass 0 102 0\n")
    onto = load_palette(p)
    assert _triples(onto) == EXPECTED
    assert onto.name == "pal"
    assert onto.void_ids == frozenset({0}) and onto.ignore_ids == frozenset({0})
    assert onto.colors_unique


def test_text_round_trip_of_builtin(tmp_path):
    goose = get_ontology("goose")
    p = write_palette(tmp_path / "goose.txt", goose)
    text = p.read_text().splitlines()
    assert text[0].startswith("# terraseg palette: goose (64 classes)")
    assert text[2] == "0 undefined 0 0 0"
    back = load_palette(p, name="goose-copy")
    assert back.name == "goose-copy"
    assert _triples(back) == _triples(goose)
    assert back.void_ids == frozenset({0})


@pytest.mark.parametrize("line, match", [
    ("0 void 0 0", "line 2: expected 'id name r g b'"),
    ("x void 0 0 0", "line 2: class id must be an integer"),
    ("70000 void 0 0 0", "line 2: class id 70000 is outside 0..65535"),
    ("0 void 0 300 0", "line 2: colour component 300"),
    ("0 0 0 0", "line 2: expected"),
])
def test_text_errors_name_file_and_line(tmp_path, line, match):
    p = _write(tmp_path, "bad.txt", "# header\n" + line + "\n")
    with pytest.raises(ConfigError, match=match) as err:
        load_palette(p)
    assert str(p) in str(err.value)


def test_text_duplicates_name_both_lines(tmp_path):
    p = _write(tmp_path, "dup.txt", "0 void 0 0 0\n1 dirt 1 1 1\n1 mud 2 2 2\n")
    with pytest.raises(ConfigError, match=r"line 3: class id 1 already defined at .*line 2"):
        load_palette(p)
    p = _write(tmp_path, "dupname.txt", "0 void 0 0 0\n1 Tall Grass 1 1 1\n2 tall-grass 2 2 2\n")
    with pytest.raises(ConfigError, match=r"line 3: class name 'tall_grass' already defined"):
        load_palette(p)
    p = _write(tmp_path, "dupcol.txt", "0 void 0 0 0\n1 dirt 9 9 9\n2 mud 9 9 9\n")
    with pytest.raises(ConfigError, match=r"line 3: class 'mud' has colour #090909, already used by 'dirt'"):
        load_palette(p)
    shared = load_palette(p, allow_shared_colors=True)
    assert not shared.colors_unique and len(shared) == 3


def test_empty_text_palette(tmp_path):
    with pytest.raises(ConfigError, match="no palette entries"):
        load_palette(_write(tmp_path, "empty.txt", "# nothing\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="palette file not found"):
        load_palette(tmp_path / "nope.csv")


# ------------------------------------------------------------------ CSV
@pytest.mark.parametrize("text", [
    "id,name,r,g,b\n0,void,0,0,0\n1,Dirt,108,64,20\n4,tall grass,0,102,0\n",
    "name,r,g,b,id\nvoid,0,0,0,0\nDirt,108,64,20,1\ntall grass,0,102,0,4\n",
    "Class_Name,Label_Key,hex\nvoid,0,#000000\nDirt,1,#6c4014\ntall grass,4,#006600\n",
    "display_color,description,class_name,output_value\n#000000,\"none, really\",void,0\n#6c4014,soil,dirt,1\n"
    "#006600,grass,tall_grass,4\n",
    "id;name;red;green;blue\n0;void;0;0;0\n1;dirt;108;64;20\n4;tall grass;0;102;0\n",
    "# comment before the header\nid,name,color\n0,void,0 0 0\n\n1,dirt,108 64 20\n4,tall_grass,006600\n",
])
def test_csv_variants(tmp_path, text):
    onto = load_palette(_write(tmp_path, "pal.csv", text))
    assert _triples(onto) == EXPECTED


def test_tsv_and_row_order_ids(tmp_path):
    onto = load_palette(_write(tmp_path, "class_dict.tsv", "name\tr\tg\tb\nsky\t0\t0\t255\nroad\t128\t64\t128\n"))
    assert _triples(onto) == [(0, "sky", (0, 0, 255)), (1, "road", (128, 64, 128))]
    assert onto.void_ids == frozenset()


def test_csv_without_names(tmp_path):
    onto = load_palette(_write(tmp_path, "p.csv", "id,hex\n3,#010203\n7,#040506\n"))
    assert onto.names == ["class_3", "class_7"]


@pytest.mark.parametrize("text, match", [
    ("id,name\n0,void\n", r"line 1: header .* has no colour columns"),
    ("id,name,r,g,b\n0,void,0,0\n", r"line 2: 4 columns, expected at least 5"),
    ("id,name,r,g,b\n0,void,0,0,0\nx,dirt,1,2,3\n", r"line 3: class id must be an integer, got 'x'"),
    ("id,name,hex\n0,void,#00000\n", r"line 2: invalid colour '#00000'"),
    ("id,name,r,g,b\n", "header but no classes"),
    ("", "empty palette file"),
])
def test_csv_errors(tmp_path, text, match):
    p = _write(tmp_path, "bad.csv", text)
    with pytest.raises(ConfigError, match=match) as err:
        load_palette(p)
    assert str(p) in str(err.value)


# ------------------------------------------------------------------ YAML / JSON
def test_terraseg_ontology_yaml_is_lossless(tmp_path):
    rellis = get_ontology("rellis3d")
    p = _write(tmp_path, "ontology.yaml", yaml.safe_dump(rellis.to_dict(), sort_keys=False))
    back = load_palette(p)
    assert back.to_dict() == rellis.to_dict()
    assert load_palette(p, name="other").name == "other"
    # json spelling, and a missing name defaults to the stem
    d = rellis.to_dict()
    del d["name"]
    assert load_palette(_write(tmp_path, "mine.json", json.dumps(d))).name == "mine"


@pytest.mark.parametrize("data", [
    {0: {"name": "void", "color": "#000000"}, 1: {"name": "Dirt", "color": [108, 64, 20]},
     4: {"name": "tall grass", "rgb": "0 102 0"}},
    [{"id": 0, "name": "void", "color": [0, 0, 0]}, {"id": 1, "name": "dirt", "hex": "#6c4014"},
     {"id": 4, "name": "tall_grass", "r": 0, "g": 102, "b": 0}],
    [{0: "void", 1: "dirt", 4: "tall grass"}, {0: [0, 0, 0], 1: [108, 64, 20], 4: [0, 102, 0]}],  # RELLIS style
])
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_structured_variants(tmp_path, data, suffix):
    text = json.dumps(data) if suffix == ".json" else yaml.safe_dump(data)
    onto = load_palette(_write(tmp_path, "pal" + suffix, text))
    assert _triples(onto) == EXPECTED


def test_id_to_color_mapping_and_semantickitti_bgr(tmp_path):
    onto = load_palette(_write(tmp_path, "cmap.json", json.dumps({"0": [0, 0, 0], "2": [1, 2, 3]})))
    assert _triples(onto) == [(0, "class_0", (0, 0, 0)), (2, "class_2", (1, 2, 3))]
    kitti = {"labels": {0: "unlabeled", 10: "car"}, "color_map": {0: [0, 0, 0], 10: [245, 150, 100]}}
    p = _write(tmp_path, "kitti.yaml", yaml.safe_dump(kitti))
    assert _triples(load_palette(p)) == [(0, "unlabeled", (0, 0, 0)), (10, "car", (100, 150, 245))]
    assert _triples(load_palette(p, color_order="rgb"))[1][2] == (245, 150, 100)
    assert _triples(load_palette(_write(tmp_path, "x.yaml", yaml.safe_dump({1: [1, 2, 3]})), color_order="bgr")) == \
        [(1, "class_1", (3, 2, 1))]


@pytest.mark.parametrize("text, match", [
    ("a: [1, 2", "invalid YAML"),
    ("- 3\n", r"item #0 is 3, expected a mapping"),
    ("- {id: 0, name: a}\n", r"class 0 has no colour"),
    ("- {name: a, color: '#000000'}\n", r"has no 'id'"),
    ("just text", "expected a mapping or a list"),
    ("labels: {0: a, 1: b}\ncolor_map: {0: [0, 0, 0]}\n", r"ids \['1'\] appear in only one"),
    ("{}", "palette has no classes"),
])
def test_structured_errors(tmp_path, text, match):
    p = _write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError, match=match) as err:
        load_palette(p)
    assert str(p) in str(err.value)


def test_bad_color_order_and_invalid_json(tmp_path):
    with pytest.raises(ConfigError, match="color_order must be"):
        load_palette(_write(tmp_path, "p.txt", "0 a 0 0 0\n"), color_order="grb")
    with pytest.raises(ConfigError, match="invalid JSON"):
        load_palette(_write(tmp_path, "p.json", "{0: 1}"))


# ------------------------------------------------------------------ writing in other formats, use for decoding
@pytest.mark.parametrize("suffix", [".csv", ".yaml", ".json", ".pal"])
def test_write_palette_round_trips(tmp_path, suffix):
    carla = get_ontology("carla")
    back = load_palette(write_palette(tmp_path / f"carla{suffix}", carla))
    assert _triples(back) == _triples(carla)
    if suffix in (".yaml", ".json"):
        assert back.to_dict() == carla.to_dict()


def test_write_palette_rejects_unwritable_names(tmp_path):
    from terraseg.ontology import ClassInfo, Ontology

    onto = Ontology("x", (ClassInfo(0, "has space", (0, 0, 0)),))
    with pytest.raises(ConfigError, match="contain spaces"):
        write_palette(tmp_path / "x.txt", onto)
    assert not (tmp_path / "x.txt").exists()


def test_palette_decodes_colour_masks(tmp_path):
    p = _write(tmp_path, "pal.csv", "id,name,r,g,b\n0,void,0,0,0\n1,dirt,108,64,20\n4,tall grass,0,102,0\n")
    onto = load_palette(p)
    ids = np.array([[0, 1, 4], [4, 4, 1]], dtype=np.uint8)
    rgb = encode_colors(ids, onto)
    assert rgb[0, 1].tolist() == [108, 64, 20]
    np.testing.assert_array_equal(decode_colors(rgb, onto), ids)
    rgb[0, 0] = (1, 2, 3)
    assert decode_colors(rgb, onto, unknown="void")[0, 0] == 0


def test_find_palette_file(tmp_path):
    assert find_palette_file(tmp_path) is None
    _write(tmp_path, "palette.csv", "id,name,hex\n0,void,#000000\n")
    assert find_palette_file(tmp_path) == tmp_path / "palette.csv"
    _write(tmp_path, "palette.txt", "0 void 0 0 0\n")
    with pytest.raises(ConfigError, match="several palette files"):
        find_palette_file(tmp_path)


# ------------------------------------------------------------------ real label tables
@pytest.mark.realdata
def test_real_goose_csv_matches_builtin(shared_data):
    onto = load_palette(shared_data / "goose" / "challenge_label_mapping.csv", name="goose")
    assert _triples(onto) == _triples(get_ontology("goose"))
    assert onto.void_ids == frozenset({0})


@pytest.mark.realdata
def test_real_goose_colormap_json_has_a_shared_colour(shared_data):
    # PROVENANCE: goose_colormap.json gives hedge (59) the colour of snow (2).
    with pytest.raises(ConfigError, match=r"entry 59: class 'class_59' has colour #d157a0, already used by 'class_2'"):
        load_palette(shared_data / "goose" / "goose_colormap.json")


@pytest.mark.realdata
def test_real_goose_kitti_yaml_is_bgr(shared_data):
    bgr = load_palette(shared_data / "goose" / "goose_kitti-visualizer.yaml")
    rgb = load_palette(shared_data / "goose" / "icra_colormap.json")
    assert [c.color for c in bgr] == [c.color for c in rgb][: len(bgr)]
    assert bgr.names[:3] == ["other", "artificial_structures", "artificial_ground"]


@pytest.mark.realdata
@pytest.mark.parametrize("csv_name, builtin", [("carla_semantic_tags_0.9.14plus.csv", "carla"),
                                               ("carla_semantic_tags_legacy_0.9.10-0.9.13.csv", "carla-legacy")])
def test_real_carla_tables_match_builtins(shared_data, csv_name, builtin):
    onto = load_palette(shared_data / "carla_labels" / csv_name)
    ref = get_ontology(builtin)
    assert [(c.id, c.color) for c in onto] == [(c.id, c.color) for c in ref]


@pytest.mark.realdata
def test_real_rellis_ontology_files(shared_data):
    ref = get_ontology("rellis3d-raw")
    onto = load_palette(shared_data / "rellis3d" / "ontology" / "ontology.yaml")
    assert _triples(onto) == _triples(ref)
    csv_onto = load_palette(shared_data / "rellis3d" / "ontology" / "ontology.csv")
    assert all(csv_onto[c.id].color == c.color for c in ref)  # the CSV lists 3 more, unused classes
    assert {c.id for c in csv_onto} - {c.id for c in ref} == {29, 30, 32}


@pytest.mark.realdata
def test_real_semantickitti_yaml(shared_data):
    onto = load_palette(shared_data / "semantic-kitti-api" / "semantic-kitti.yaml", allow_shared_colors=True)
    ref = get_ontology("semantickitti-raw")
    assert [(c.id, c.color) for c in onto] == [(c.id, c.color) for c in ref]
    assert not onto.colors_unique
