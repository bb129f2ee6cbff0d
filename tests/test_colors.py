"""Colour masks: encode ids to RGB with the ontology palette and decode RGB back to ids."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from terraseg.errors import ConfigError, DataError
from terraseg.ontology import Ontology, color_hex, decode_colors, encode_colors, get_ontology, list_ontologies

UNIQUE = [n for n in list_ontologies() if get_ontology(n).colors_unique]
NOT_UNIQUE = [n for n in list_ontologies() if not get_ontology(n).colors_unique]


def random_ids(onto: Ontology, shape: tuple[int, ...] = (64, 64), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(onto.ids, size=shape).astype(onto.label_dtype)


def unused_colour(onto: Ontology) -> tuple[int, int, int]:
    used = {c.color for c in onto}
    for rgb in [(1, 2, 3), (3, 2, 1), (254, 253, 252)]:
        if rgb not in used:
            return rgb
    raise AssertionError("no unused colour")


def test_unique_and_non_unique_lists() -> None:
    assert NOT_UNIQUE == ["semantickitti-raw"]
    assert len(UNIQUE) == 10


@pytest.mark.parametrize("name", UNIQUE)
def test_encode_decode_round_trip(name: str) -> None:
    onto = get_ontology(name)
    ids = random_ids(onto)
    rgb = encode_colors(ids, name)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    for c in onto:  # each pixel carries its class's colour
        sel = ids == c.id
        if sel.any():
            assert (rgb[sel] == np.array(c.color, dtype=np.uint8)).all()
    back = decode_colors(rgb, onto)
    assert back.dtype == onto.label_dtype and back.shape == (64, 64)
    assert np.array_equal(back, ids)


@pytest.mark.parametrize("name", UNIQUE)
def test_decode_every_palette_colour(name: str) -> None:
    onto = get_ontology(name)
    rgb = np.array([[c.color for c in onto]], dtype=np.uint8)  # (1, N, 3)
    assert decode_colors(rgb, name).tolist() == [onto.ids.tolist()]


def test_known_colours_of_goose() -> None:
    rgb = np.array([[[0xE8, 0xD3, 0x17], [0xD1, 0x57, 0xA0], [0, 0, 0]]], dtype=np.uint8)
    assert decode_colors(rgb, "goose").tolist() == [[59, 2, 0]]  # hedge, snow, undefined
    assert encode_colors(np.array([59]), "goose").tolist() == [[0xE8, 0xD3, 0x17]]


def test_decode_unknown_colours_error_reports_pixels_and_hex() -> None:
    onto = get_ontology("goose")
    rgb = encode_colors(random_ids(onto), onto)
    rgb[:5, 0] = (1, 2, 3)
    rgb[10, :2] = (255, 255, 254)
    with pytest.raises(DataError, match=re.escape("mask_0007.png: 7 pixels have colours that are not in ontology "
                                                  "'goose': #010203 (5 px), #fffffe (2 px)")):
        decode_colors(rgb, onto, source="mask_0007.png")


def test_decode_unknown_colours_lists_at_most_five() -> None:
    onto = get_ontology("traversability")
    rgb = np.zeros((1, 7, 3), dtype=np.uint8)
    rgb[0, :, 0] = np.arange(1, 8)  # seven unknown dark reds, one pixel each
    with pytest.raises(DataError, match=r"colour mask: 7 pixels have colours .* and 2 more colours \(map unknown"):
        decode_colors(rgb, onto)


@pytest.mark.parametrize("name", UNIQUE)
def test_decode_unknown_to_void(name: str) -> None:
    onto = get_ontology(name)
    ids = random_ids(onto, seed=3)
    rgb = encode_colors(ids, onto)
    bad = unused_colour(onto)
    rgb[3:6, 7:9] = bad
    out = decode_colors(rgb, onto, unknown="void")
    (void_id,) = onto.void_ids
    expected = ids.copy()
    expected[3:6, 7:9] = void_id
    assert np.array_equal(out, expected) and out.dtype == onto.label_dtype


def test_decode_unknown_to_given_id() -> None:
    onto = get_ontology("goose")
    ids = random_ids(onto, seed=4)
    rgb = encode_colors(ids, onto)
    rgb[0, 0] = (1, 2, 3)
    out = decode_colors(rgb, onto, unknown=onto.id_of("outlier"))
    assert out[0, 0] == 56
    assert np.array_equal(out.ravel()[1:], ids.ravel()[1:])
    out = decode_colors(rgb, onto, unknown=np.int64(8))
    assert out[0, 0] == 8
    # no unknown colours: 'unknown' does not matter
    assert np.array_equal(decode_colors(encode_colors(ids, onto), onto, unknown=56), ids)


def test_decode_unknown_option_errors() -> None:
    onto = get_ontology("rellis3d-raw")
    rgb = np.full((2, 2, 3), 1, dtype=np.uint8)
    with pytest.raises(ConfigError, match=re.escape("unknown=2: expected 'error', 'void' or a class id of 'rellis3d-raw'")):
        decode_colors(rgb, onto, unknown=2)  # 2 is a gap in the raw RELLIS ids
    with pytest.raises(ConfigError, match=re.escape("unknown='ignore': expected 'error', 'void'")):
        decode_colors(rgb, onto, unknown="ignore")
    plain = Ontology.from_dict({"name": "plain", "classes": [{"id": 0, "name": "a", "color": "#000000"}]})
    with pytest.raises(ConfigError, match="ontology 'plain' has no single void class to map unknown colours to"):
        decode_colors(rgb, plain, unknown="void")


@pytest.mark.parametrize("name", NOT_UNIQUE)
def test_non_unique_colours_refuse_to_decode(name: str) -> None:
    onto = get_ontology(name)
    rgb = encode_colors(random_ids(onto), onto)  # encoding is fine
    assert rgb.shape == (64, 64, 3)
    assert (encode_colors(np.array([onto.id_of("moving_car")]), onto) == encode_colors(np.array([10]), onto)).all()
    with pytest.raises(ConfigError, match=f"ontology {name!r} reuses colours across classes, so colour masks "
                                          "cannot be decoded unambiguously"):
        decode_colors(rgb, onto)


def test_encode_rejects_ids_outside_ontology() -> None:
    with pytest.raises(DataError, match=re.escape("ids.png: 3 values are not ids of ontology 'rellis3d-raw': "
                                                  "2 (2x), 35 (1x)")):
        encode_colors(np.array([[0, 2, 2], [35, 1, 3]], dtype=np.uint8), "rellis3d-raw", source="ids.png")
    with pytest.raises(DataError, match=re.escape("labels: 1 values are not ids of ontology 'traversability': -1 (1x)")):
        encode_colors(np.array([-1, 0], dtype=np.int64), "traversability")
    with pytest.raises(DataError, match="label array must have an integer dtype"):
        encode_colors(np.array([0.0]), "traversability")


@pytest.mark.parametrize("name", ["goose", "rellis3d-raw", "carla"])
def test_rgba_input_accepted(name: str) -> None:
    onto = get_ontology(name)
    ids = random_ids(onto, seed=5)
    rgb = encode_colors(ids, onto)
    alpha = np.random.default_rng(6).integers(0, 256, size=(*ids.shape, 1), dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=-1)
    assert np.array_equal(decode_colors(rgba, onto), ids)


def test_decode_rejects_bad_shapes() -> None:
    with pytest.raises(DataError, match=re.escape("m.png: colour mask must have shape (H, W, 3), got (4, 4)")):
        decode_colors(np.zeros((4, 4), dtype=np.uint8), "goose", source="m.png")
    with pytest.raises(DataError, match=re.escape("got (4, 4, 2)")):
        decode_colors(np.zeros((4, 4, 2), dtype=np.uint8), "goose")


def test_encode_keeps_leading_shape() -> None:
    onto = get_ontology("semantickitti")
    ids = random_ids(onto, shape=(2, 3, 5), seed=7)
    assert encode_colors(ids, onto).shape == (2, 3, 5, 3)
    assert color_hex(tuple(encode_colors(np.array(19), onto).tolist())) == "#ff0000"


@pytest.mark.realdata
def test_real_rellis_mask_round_trip(shared_data: Path) -> None:
    from PIL import Image

    mask = np.asarray(Image.open(shared_data / "rellis3d" / "frame000104-1581624663_149.png"))
    assert mask.shape == (1200, 1920) and mask.dtype == np.uint8
    onto = get_ontology("rellis3d-raw")
    onto.check_ids(mask, source="frame000104 mask")
    rgb = encode_colors(mask, onto)
    assert np.array_equal(decode_colors(rgb, onto), mask)


def test_decode_rejects_values_outside_0_255() -> None:
    with pytest.raises(DataError, match=r"colour mask values must be integers in 0\.\.255"):
        decode_colors(np.array([[[0x86, 0x1CE, 0xFA]]]), "traversability")
