"""Camera image I/O and the GOOSE 2D, CARLA and generic folder datasets, on tiny synthetic trees."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from terraseg.datasets.carla import (
    SEMANTIC_LIDAR_DTYPE,
    CarlaCameraDataset,
    CarlaLidarDataset,
    carla_ontology_name,
    read_carla_semantic_image,
    read_carla_semantic_lidar,
    write_carla_semantic_lidar,
)
from terraseg.datasets.generic import GenericDataset, read_timestamps
from terraseg.datasets.generic_writer import GenericWriter, write_generic_frame
from terraseg.datasets.goose2d import Goose2DDataset, goose_timestamp
from terraseg.errors import ConfigError, DataError
from terraseg.frame import Calibration, Frame
from terraseg.io.calib import write_calib_yaml
from terraseg.io.images import read_image, write_image
from terraseg.io.palette import write_palette
from terraseg.io.scans import write_bin, write_label
from terraseg.ontology import LabelMap, encode_colors, get_ontology

H, W = 6, 8


def _rgb(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _ids(values, seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.asarray(values), size=(h, w)).astype(np.uint8)


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


# ============================================================================ io.images
def test_read_image_converts_modes(tmp_path):
    rgb = _rgb()
    np.testing.assert_array_equal(read_image(_save(tmp_path / "rgb.png", rgb)), rgb)
    rgba = np.dstack([rgb, np.full((H, W), 7, np.uint8)])
    np.testing.assert_array_equal(read_image(_save(tmp_path / "rgba.png", rgba)), rgb)  # alpha dropped, no blend
    grey = rgb[:, :, 0]
    out = read_image(_save(tmp_path / "grey.png", grey))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))
    g16 = (np.arange(H * W, dtype=np.uint16).reshape(H, W) * 1000)
    out16 = read_image(_save(tmp_path / "g16.png", g16))
    np.testing.assert_array_equal(out16[:, :, 1], (g16 >> 8).astype(np.uint8))
    pal = Image.fromarray(grey).convert("P")
    pal.save(tmp_path / "pal.png")
    np.testing.assert_array_equal(read_image(tmp_path / "pal.png"), np.asarray(pal.convert("RGB")))


def test_write_image_png_exact_jpeg_close_and_atomic(tmp_path):
    rgb = _rgb(1, 32, 48)
    write_image(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    smooth = np.dstack([np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (32, 1))] * 3)
    write_image(tmp_path / "b.JPG", smooth, quality=95)
    assert np.abs(read_image(tmp_path / "b.JPG").astype(int) - smooth).max() <= 8
    with pytest.raises(DataError, match=r"c\.bmp: unsupported image suffix '\.bmp'"):
        write_image(tmp_path / "c.bmp", rgb)
    with pytest.raises(DataError, match=r"d\.png: image must be an \(H, W, 3\) uint8 RGB array, got \(32, 48\)"):
        write_image(tmp_path / "d.png", rgb[:, :, 0])
    with pytest.raises(DataError, match="uint8"):
        write_image(tmp_path / "d.png", rgb.astype(np.float32))
    with pytest.raises(DataError, match="quality must be in 1..100"):
        write_image(tmp_path / "d.jpg", rgb, quality=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.JPG"]  # nothing partial


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"missing\.png: image file not found"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(DataError, match=r"text\.png: unreadable or truncated image"):
        read_image(tmp_path / "text.png")
    data = (_save(tmp_path / "full.png", _rgb(2, 64, 64))).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png: unreadable or truncated image"):
        read_image(tmp_path / "cut.png")


# ============================================================================ GOOSE 2D
GOOSE_IDS = [0, 12, 16, 23, 51]


def _goose_tree(root: Path) -> dict[str, np.ndarray]:
    """train: 2 scenarios x windshield_vis + 1 camera_left image; val: 1; test: 1 image, no labels."""
    truth = {}
    specs = [("train", "2022-07-22_flight", "2022-07-22_flight__0071_1658494234334310308", "windshield_vis"),
             ("train", "2022-07-22_flight", "2022-07-22_flight__0072_1658494234434310308", "windshield_vis"),
             ("train", "2023-05-17_neubiberg", "2023-05-17_neubiberg__0010_1684321000000000000", "camera_left"),
             ("val", "2022-08-30_siegertsbrunn", "2022-08-30_siegertsbrunn__0001_1661850000000000000", "windshield_vis"),
             ("test", "2022-09-21_garching", "2022-09-21_garching__0003_1663750000000000000", "windshield_vis")]
    for i, (split, scen, name, cam) in enumerate(specs):
        _save(root / "images" / split / scen / f"{name}_{cam}.png", _rgb(i))
        if split != "test":
            ids = _ids(GOOSE_IDS, i)
            _save(root / "labels" / split / scen / f"{name}_labelids.png", ids)
            _save(root / "labels" / split / scen / f"{name}_instanceids.png", (ids > 12).astype(np.uint16) * 300)
            _save(root / "labels" / split / scen / f"{name}_color.png", encode_colors(ids, "goose"))
            truth[f"{scen}/{name}"] = ids
    return truth


def test_goose_train_pairs_images_and_labels(tmp_path):
    truth = _goose_tree(tmp_path)
    ds = Goose2DDataset(tmp_path, "train")
    assert len(ds) == 3
    assert ds.frame_ids() == ["2022-07-22_flight/2022-07-22_flight__0071_1658494234334310308",
                              "2022-07-22_flight/2022-07-22_flight__0072_1658494234434310308",
                              "2023-05-17_neubiberg/2023-05-17_neubiberg__0010_1684321000000000000"]
    f = ds[0]
    np.testing.assert_array_equal(f.image, _rgb(0))
    np.testing.assert_array_equal(f.image_labels, truth[f.frame_id])
    assert f.image_labels.dtype == np.uint8 and f.image_instances is None
    assert f.ontology == "goose" and f.sequence == "2022-07-22_flight"
    assert f.meta == {"camera": "windshield_vis", "split": "train"}
    assert f.timestamp == pytest.approx(1658494234.334310308, abs=1e-6)
    assert f.source["image_labels"].name.endswith("_labelids.png")
    assert ds[2].meta["camera"] == "camera_left"
    assert ds.ontology.name == "goose"


def test_goose_camera_filter_instances_splits_and_remap(tmp_path):
    _goose_tree(tmp_path)
    assert len(Goose2DDataset(tmp_path, "train", camera="windshield_vis")) == 2
    assert [f.meta["camera"] for f in Goose2DDataset(tmp_path, "train", camera="camera_left")] == ["camera_left"]
    ds = Goose2DDataset(tmp_path, "val", with_instances=True)
    f = ds[0]
    assert f.image_instances.dtype == np.uint16
    np.testing.assert_array_equal(f.image_instances, (f.image_labels > 12) * 300)
    test = Goose2DDataset(tmp_path, "test")
    assert len(test) == 1 and test[0].image_labels is None and test[0].image.shape == (H, W, 3)
    everything = Goose2DDataset(tmp_path, "all")
    assert [f.meta["split"] for f in everything] == ["train", "train", "train", "val", "test"]
    from terraseg.datasets.registry import open_dataset

    opened = open_dataset(tmp_path, split="val", with_instances=True)
    assert isinstance(opened, Goose2DDataset) and opened.frame_ids() == ds.frame_ids()
    trav = Goose2DDataset(tmp_path, "train", remap="traversability")
    lm = LabelMap.builtin("goose", "traversability")
    np.testing.assert_array_equal(trav[0].image_labels, lm(Goose2DDataset(tmp_path, "train")[0].image_labels))
    assert trav[0].ontology == "traversability"


def test_goose_errors(tmp_path):
    with pytest.raises(DataError, match=r"no images/ folder \(expected images/\{split\}/\{scenario\}"):
        Goose2DDataset(tmp_path, "train")
    truth = _goose_tree(tmp_path)
    with pytest.raises(DataError, match=r"images: no images of camera 'front' in split 'val'"):
        Goose2DDataset(tmp_path, "val", camera="front")
    shutil.rmtree(tmp_path / "images" / "val")
    with pytest.raises(DataError, match=r"images/val: split folder not found \(found: train, test\)"):
        Goose2DDataset(tmp_path, "val")
    # a missing label file in train
    key = next(iter(truth))
    scen, name = key.split("/")
    (tmp_path / "labels" / "train" / scen / f"{name}_labelids.png").unlink()
    with pytest.raises(DataError, match=r"1 images have no label file \(first: .*_windshield_vis\.png, "
                                        r"expected .*_labelids\.png\); pass require_labels=False"):
        Goose2DDataset(tmp_path, "train")
    ds = Goose2DDataset(tmp_path, "train", require_labels=False)
    assert ds[0].image_labels is None and ds[1].image_labels is not None
    # instances requested but missing
    (tmp_path / "labels" / "train" / scen / f"{name}_instanceids.png").unlink()
    other = list(truth)[1].split("/")
    (tmp_path / "labels" / "train" / other[0] / f"{other[1]}_instanceids.png").unlink()
    with pytest.raises(DataError, match=r"1 labelled images have no instance file"):
        Goose2DDataset(tmp_path, "train", with_instances=True, require_labels=False)


def test_goose_unknown_camera_bad_ids_and_shape(tmp_path):
    _goose_tree(tmp_path)
    stray = _save(tmp_path / "images" / "train" / "x" / "frame_0001_thermal.png", _rgb())
    with pytest.raises(DataError, match=r"frame_0001_thermal\.png: image name does not end with a known camera suffix"):
        Goose2DDataset(tmp_path, "train")
    assert len(Goose2DDataset(tmp_path, "train", cameras=("windshield_vis", "camera_left", "thermal"),
                              require_labels=False)) == 4
    stray.unlink()
    val_lbl = next((tmp_path / "labels" / "val").rglob("*_labelids.png"))
    _save(val_lbl, np.full((H, W), 64, np.uint8))
    with pytest.raises(DataError, match=r"_labelids\.png: 48 values are not ids of ontology 'goose': 64 \(48x\)"):
        Goose2DDataset(tmp_path, "val")[0]
    _save(val_lbl, np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DataError, match=r"_labelids\.png: label image \(for .*\) has shape \(7, 8\), expected \(6, 8\)"):
        Goose2DDataset(tmp_path, "val")[0]


def test_goose_custom_suffixes_and_timestamp_parser(tmp_path):
    _save(tmp_path / "img" / "train" / "s" / "a_1600000000000000000_front.jpg", _rgb(), quality=100)
    _save(tmp_path / "lbl" / "train" / "s" / "a_1600000000000000000_ids.png", _ids(GOOSE_IDS))
    ds = Goose2DDataset(tmp_path, "train", image_dir="img", label_dir="lbl", label_suffix="_ids")
    assert ds.frame_ids() == ["s/a_1600000000000000000"] and ds[0].meta["camera"] == "front"
    np.testing.assert_array_equal(ds[0].image_labels, _ids(GOOSE_IDS))
    assert goose_timestamp("x__0001_1658494234334310308") == pytest.approx(1658494234.3343103)
    assert goose_timestamp("frame_0001") is None


# ============================================================================ CARLA camera
def _carla_semantic_raw(ids: np.ndarray) -> np.ndarray:
    """What CARLA's raw save_to_disk writes: tag in red, other channels unrelated, alpha 255."""
    noise = np.random.default_rng(5).integers(0, 256, ids.shape + (2,), dtype=np.uint8)
    return np.dstack([ids, noise, np.full(ids.shape, 255, np.uint8)])


def test_carla_camera_raw_red_channel(tmp_path):
    tags = [0, 1, 9, 10, 14, 22, 28]
    for i in range(3):
        _save(tmp_path / "rgb" / f"{i:06d}.png", np.dstack([_rgb(i), np.full((H, W), 255, np.uint8)]))
        _save(tmp_path / "semantic" / f"{i:06d}.png", _carla_semantic_raw(_ids(tags, i)))
    ds = CarlaCameraDataset(tmp_path)
    assert len(ds) == 3 and ds.frame_ids() == ["000000", "000001", "000002"]
    f = ds[1]
    np.testing.assert_array_equal(f.image, _rgb(1))
    np.testing.assert_array_equal(f.image_labels, _ids(tags, 1))
    assert f.image_labels.dtype == np.uint8 and f.ontology == "carla" and f.meta["frame"] == 1
    trav = CarlaCameraDataset(tmp_path, remap="traversability")[1]
    np.testing.assert_array_equal(trav.image_labels, LabelMap.builtin("carla", "traversability")(_ids(tags, 1)))
    # grey (single-channel) raw images are taken as ids directly
    _save(tmp_path / "semantic" / "000002.png", _ids(tags, 2))
    np.testing.assert_array_equal(CarlaCameraDataset(tmp_path)[2].image_labels, _ids(tags, 2))


@pytest.mark.parametrize("version, onto_name", [("0.9.15", "carla"), ("legacy", "carla-legacy"),
                                                ("0.9.12", "carla-legacy")])
def test_carla_camera_cityscapes_palette(tmp_path, version, onto_name):
    onto = get_ontology(onto_name)
    ids = _ids(onto.ids, 3)
    _save(tmp_path / "sem" / "run1" / "000010.png", encode_colors(ids, onto))
    _save(tmp_path / "cam" / "run1" / "000010.jpg", _rgb(), quality=100)
    ds = CarlaCameraDataset(tmp_path, rgb_dir="cam", semantic_dir="sem", semantic_format="cityscapes", version=version)
    f = ds[0]
    assert f.frame_id == "run1/000010" and f.ontology == onto_name
    np.testing.assert_array_equal(f.image_labels, ids)


def test_carla_legacy_colours_differ(tmp_path):
    # fence is #be9999 in 0.9.14+ but #642828 before: the legacy palette rejects the new colour.
    new_fence = encode_colors(np.full((H, W), get_ontology("carla")["fence"].id, np.uint8), "carla")
    p = _save(tmp_path / "s.png", new_fence)
    assert (read_carla_semantic_image(p, "carla", "cityscapes") == 5).all()
    with pytest.raises(DataError, match=r"s\.png: 48 pixels have colours that are not in ontology 'carla-legacy': #be9999"):
        read_carla_semantic_image(p, "carla-legacy", "cityscapes")
    assert (read_carla_semantic_image(p, "carla-legacy", "cityscapes", unknown_color="void") == 0).all()


def test_carla_camera_errors(tmp_path):
    with pytest.raises(DataError, match=r"neither rgb/ nor semantic/ found \(expected rgb/<frame>\.png"):
        CarlaCameraDataset(tmp_path)
    colour = encode_colors(_ids([0, 1, 9]), "carla")
    _save(tmp_path / "semantic" / "000001.png", colour)
    _save(tmp_path / "rgb" / "000001.png", _rgb())
    _save(tmp_path / "rgb" / "000002.png", _rgb())
    with pytest.raises(DataError, match=r"rgb: 1 images have no semantic image \(first: .*000002\.png"):
        CarlaCameraDataset(tmp_path)
    ds = CarlaCameraDataset(tmp_path, allow_unpaired=True)
    assert ds.frame_ids() == ["000001"]
    with pytest.raises(DataError, match=r"000001\.png: \d+ values are not ids of ontology 'carla'.*"
                                        r"use semantic_format='cityscapes'"):
        ds[0]
    with pytest.raises(ConfigError, match="semantic_format must be 'raw' or 'cityscapes'"):
        CarlaCameraDataset(tmp_path, semantic_format="palette")
    (tmp_path / "rgb" / "000002.png").unlink()
    _save(tmp_path / "semantic" / "000003.png", colour)
    with pytest.raises(DataError, match=r"semantic: 1 semantic images have no RGB image \(first: .*000003\.png\)"):
        CarlaCameraDataset(tmp_path)


def test_carla_version_names():
    assert carla_ontology_name("0.9.14") == "carla" and carla_ontology_name("0.10.0") == "carla"
    assert carla_ontology_name("0.9.10") == "carla-legacy" and carla_ontology_name("legacy") == "carla-legacy"
    with pytest.raises(ConfigError, match="releases before 0.9.10 used a 13-tag label set"):
        carla_ontology_name("0.9.9")
    with pytest.raises(ConfigError, match="unknown CARLA version 'new'"):
        carla_ontology_name("new")


# ============================================================================ CARLA semantic LiDAR
def _scan(n: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    pts = np.column_stack([r.normal(0, 10, (n, 3)), r.uniform(0, 1, n)]).astype(np.float32)
    return pts, r.integers(0, 5000, n).astype(np.uint32), r.integers(0, 29, n).astype(np.uint32)


def test_semantic_lidar_bin_round_trip_is_byte_exact(tmp_path):
    pts, idx, tag = _scan()
    p = write_carla_semantic_lidar(tmp_path / "000001.bin", pts, idx, tag)
    assert p.stat().st_size == 50 * 24
    raw = np.fromfile(p, dtype=np.uint8)
    rec = np.frombuffer(raw.tobytes(), dtype=SEMANTIC_LIDAR_DTYPE)
    np.testing.assert_array_equal(rec["object_tag"], tag)
    # the same bytes CARLA's raw_data would hold: 4 float32 then 2 uint32 per point
    manual = np.empty((50, 6), dtype="<u4")
    manual[:, :4] = pts.view("<u4")
    manual[:, 4], manual[:, 5] = idx, tag
    assert raw.tobytes() == manual.tobytes()
    got_pts, got_idx, got_tag = read_carla_semantic_lidar(p)
    assert got_pts.dtype == np.float32 and got_idx.dtype == np.uint32 and got_tag.dtype == np.uint32
    np.testing.assert_array_equal(got_pts, pts)
    np.testing.assert_array_equal(got_idx, idx)
    np.testing.assert_array_equal(got_tag, tag)


def test_semantic_lidar_npy_and_ply_exports(tmp_path):
    pts, idx, tag = _scan(7, 1)
    write_carla_semantic_lidar(tmp_path / "a.npy", pts, idx, tag)
    carla_names = np.zeros(7, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("CosAngle", "f4"),
                                     ("ObjIdx", "u4"), ("ObjTag", "u4")])
    for i, k in enumerate(("x", "y", "z", "CosAngle")):
        carla_names[k] = pts[:, i]
    carla_names["ObjIdx"], carla_names["ObjTag"] = idx, tag
    np.save(tmp_path / "b.npy", carla_names)
    np.save(tmp_path / "c.npy", np.column_stack([pts.astype(np.float64), idx, tag]))
    header = ("ply\nformat ascii 1.0\nelement vertex 7\nproperty float32 x\nproperty float32 y\n"
              "property float32 z\nproperty float32 CosAngle\nproperty uint32 ObjIdx\nproperty uint32 ObjTag\n"
              "end_header\n")
    body = "".join(f"{p[0]!r} {p[1]!r} {p[2]!r} {p[3]!r} {i} {t}\n" for p, i, t in
                   zip(pts.astype(float).tolist(), idx.tolist(), tag.tolist()))
    (tmp_path / "d.ply").write_text(header + body)
    (tmp_path / "e.ply").write_bytes(header.replace("ascii", "binary_little_endian").encode() + carla_names.tobytes())
    for name in ("a.npy", "b.npy", "c.npy", "d.ply", "e.ply"):
        got_pts, got_idx, got_tag = read_carla_semantic_lidar(tmp_path / name)
        np.testing.assert_array_equal(got_pts, pts, err_msg=name)
        np.testing.assert_array_equal(got_idx, idx, err_msg=name)
        np.testing.assert_array_equal(got_tag, tag, err_msg=name)


def test_semantic_lidar_errors(tmp_path):
    (tmp_path / "odd.bin").write_bytes(b"\0" * 30)
    with pytest.raises(DataError, match=r"odd\.bin: size 30 bytes is not a multiple of the 24-byte semantic LiDAR point"):
        read_carla_semantic_lidar(tmp_path / "odd.bin")
    with pytest.raises(DataError, match=r"none\.bin: semantic LiDAR file not found"):
        read_carla_semantic_lidar(tmp_path / "none.bin")
    np.save(tmp_path / "xyz.npy", np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")]))
    with pytest.raises(DataError, match=r"xyz\.npy: semantic LiDAR fields \['cos_inc_angle', 'object_idx', 'object_tag'\] "
                                        "not found"):
        read_carla_semantic_lidar(tmp_path / "xyz.npy")
    (tmp_path / "short.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                                        "property float z\nproperty float CosAngle\nproperty uint ObjIdx\n"
                                        "property uint ObjTag\nend_header\n0 0 0 1 0 0\n")
    with pytest.raises(DataError, match=r"short\.ply: PLY header announces 3 points x 6 properties, data has 1 x 6"):
        read_carla_semantic_lidar(tmp_path / "short.ply")
    pts, idx, tag = _scan(3)
    pts[1, 0] = np.nan
    write_carla_semantic_lidar(tmp_path / "nan.bin", pts, idx, tag)
    with pytest.raises(DataError, match=r"nan\.bin: 1 points have NaN or infinite coordinates \(first at index 1\)"):
        read_carla_semantic_lidar(tmp_path / "nan.bin")
    with pytest.raises(DataError, match=r"x\.pcd: unsupported semantic LiDAR file suffix"):
        (tmp_path / "x.pcd").write_text("x")
        read_carla_semantic_lidar(tmp_path / "x.pcd")


def test_carla_lidar_dataset(tmp_path):
    scans = [_scan(20, s) for s in range(3)]
    for i, (pts, idx, tag) in enumerate(scans):
        write_carla_semantic_lidar(tmp_path / "semantic_lidar" / f"{i:06d}.bin", pts, idx, tag)
    ds = CarlaLidarDataset(tmp_path)
    assert len(ds) == 3
    f = ds[2]
    pts, idx, tag = scans[2]
    assert f.point_fields == ("x", "y", "z", "cos_inc_angle") and f.ontology == "carla"
    np.testing.assert_array_equal(f.points[:, [0, 2, 3]], pts[:, [0, 2, 3]])
    np.testing.assert_array_equal(f.points[:, 1], -pts[:, 1])  # right-handed
    np.testing.assert_array_equal(f.point_labels, tag)
    assert f.point_labels.dtype == np.uint8 and f.point_instances.dtype == np.uint32
    np.testing.assert_array_equal(f.point_instances, idx)
    assert f.meta == {"frame": 2, "right_handed": True}
    raw = CarlaLidarDataset(tmp_path, right_handed=False)[2]
    np.testing.assert_array_equal(raw.points, pts)
    f.validate()
    # legacy tags stop at 22
    with pytest.raises(DataError, match=r"000002\.bin: \d+ values are not ids of ontology 'carla-legacy'"):
        CarlaLidarDataset(tmp_path, version="0.9.13")[2]
    with pytest.raises(DataError, match=r"semantic_lidar: semantic LiDAR folder not found"):
        CarlaLidarDataset(tmp_path / "semantic_lidar")


def test_carla_split_lists_and_registry(tmp_path):
    from terraseg.datasets.registry import detect_kind, open_dataset

    for i in range(3):
        write_carla_semantic_lidar(tmp_path / "semantic_lidar" / f"{i:06d}.bin", *_scan(5, i))
        _save(tmp_path / "rgb" / f"{i:06d}.png", _rgb(i))
        _save(tmp_path / "semantic" / f"{i:06d}.png", _carla_semantic_raw(_ids([0, 1, 9], i)))
    with pytest.raises(DataError, match=r"no split 'train' \(CARLA exports have splits only through .*train\.txt\)"):
        CarlaLidarDataset(tmp_path, split="train")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("000002\n# note\n000000\n")
    assert CarlaLidarDataset(tmp_path, split="train").frame_ids() == ["000002", "000000"]
    assert detect_kind(tmp_path) == "carla"
    cam = open_dataset(tmp_path, split="train")
    assert isinstance(cam, CarlaCameraDataset) and cam.frame_ids() == ["000002", "000000"]
    assert len(open_dataset(tmp_path, kind="carla-lidar")) == 3
    (tmp_path / "splits" / "val.txt").write_text("000001\n000007\n")
    with pytest.raises(DataError, match=r"val\.txt, line 2: frame '000007' not found in the export"):
        CarlaCameraDataset(tmp_path, split="val")


# ============================================================================ generic dataset
def _onto_ids(name: str = "rellis3d") -> np.ndarray:
    return get_ontology(name).ids


def _frame(i: int, *, fields=("x", "y", "z", "intensity"), n: int = 30, image=True, mask=True, points=True,
           instances=False, onto="rellis3d", ts: float | None = None) -> Frame:
    r = np.random.default_rng(i)
    pts = r.normal(0, 5, (n, len(fields))).astype(np.float32) if points else None
    return Frame(frame_id=f"{i:06d}", image=_rgb(i) if image else None,
                 image_labels=_ids(_onto_ids(onto), i) if mask else None,
                 points=pts, point_fields=tuple(fields),
                 point_labels=r.choice(_onto_ids(onto), n).astype(np.uint16) if points else None,
                 point_instances=r.integers(0, 9, n).astype(np.uint16) if (points and instances) else None,
                 ontology=onto, timestamp=ts)


def test_write_generic_frame_round_trip_bytes_and_values(tmp_path):
    fr = _frame(1, fields=("x", "y", "z", "intensity", "ring", "time"), instances=True, ts=1581624663.149)
    written = write_generic_frame(tmp_path, fr)
    assert {k: v.relative_to(tmp_path).as_posix() for k, v in written.items()} == {
        "images": "images/000001.png", "masks": "masks/000001.png", "points": "points/000001.bin",
        "fields": "points/000001.fields.npz", "point_labels": "point_labels/000001.label"}
    assert written["points"].read_bytes() == fr.points[:, :4].astype("<f4").tobytes()
    word = fr.point_labels.astype("<u4") | (fr.point_instances.astype("<u4") << 16)
    assert written["point_labels"].read_bytes() == word.tobytes()
    with np.load(written["fields"]) as npz:
        assert npz.files == ["ring", "time"]
        np.testing.assert_array_equal(npz["time"], fr.points[:, 5])
    ds = GenericDataset(tmp_path, ontology="rellis3d")
    got = ds[0]
    assert got.frame_id == "000001" and got.meta == {"split": None, "stem": "000001"}
    np.testing.assert_array_equal(got.image, fr.image)
    np.testing.assert_array_equal(got.image_labels, fr.image_labels)
    assert got.image_labels.dtype == np.uint8
    assert got.point_fields == fr.point_fields
    assert got.points.tobytes() == fr.points.tobytes()
    np.testing.assert_array_equal(got.point_labels, fr.point_labels)
    np.testing.assert_array_equal(got.point_instances, fr.point_instances)
    assert got.ontology == "rellis3d" and got.timestamp is None  # timestamps need the GenericWriter
    got.validate()


def test_generic_writer_metadata_and_reader(tmp_path):
    calib = Calibration(K=np.array([[500, 0, 4], [0, 500, 3], [0, 0, 1.0]]), T_cam_lidar=np.eye(4), image_size=(W, H))
    frames = [_frame(i, ts=100.0 + i / 10) for i in range(4)]
    for f in frames:
        f.calib = calib
    with GenericWriter(tmp_path) as w:
        for i, f in enumerate(frames):
            w.write(f, split="train" if i < 3 else "val")
    assert (tmp_path / "images" / "train" / "000002.png").is_file()
    assert yaml.safe_load((tmp_path / "ontology.yaml").read_text())["name"] == "rellis3d"
    assert read_timestamps(tmp_path / "timestamps.csv")[("val", "000003")] == 100.3
    assert (tmp_path / "timestamps.csv").read_text().splitlines()[0] == "stem,timestamp_s,split"
    from terraseg.datasets.registry import open_dataset

    assert isinstance(open_dataset(tmp_path, split="val"), GenericDataset)
    ds = GenericDataset(tmp_path, "train")  # ontology from ontology.yaml
    assert ds.ontology.name == "rellis3d" and len(ds) == 3
    assert ds.frame_ids() == ["train/000000", "train/000001", "train/000002"]
    f = ds[1]
    assert f.timestamp == 100.1 and f.meta == {"split": "train", "stem": "000001"}
    np.testing.assert_array_equal(f.calib.K, calib.K)
    assert f.calib.image_size == (W, H)
    val = GenericDataset(tmp_path, "val")
    assert val.frame_ids() == ["val/000003"] and val[0].timestamp == 100.3
    assert len(GenericDataset(tmp_path, "all")) == 4
    with pytest.raises(DataError, match=r"no split 'test' \(split folders found: train, val\)"):
        GenericDataset(tmp_path, "test")
    # remap through the built-in map of the stored ontology
    trav = GenericDataset(tmp_path, "train", remap="traversability")[1]
    np.testing.assert_array_equal(trav.image_labels, LabelMap.builtin("rellis3d", "traversability")(f.image_labels))
    # a second writer with another calibration for an existing dataset is refused
    other = _frame(9)
    other.calib = Calibration(K=np.eye(3))
    w2 = GenericWriter(tmp_path)
    w2.write(other, split="train")
    with pytest.raises(DataError, match=r"calib\.yaml: existing calibration differs"):
        w2.close()
    w3 = GenericWriter(tmp_path / "x")
    w3.write(frames[0])
    with pytest.raises(DataError, match="frame 000009: calibration differs from the dataset's"):
        w3.write(other)


def test_generic_clouds_without_intensity_and_reordered_fields(tmp_path):
    f1 = _frame(1, fields=("x", "y", "z"), image=False, mask=False)
    f2 = _frame(2, fields=("x", "y", "z", "ring", "intensity"), image=False, mask=False)
    write_generic_frame(tmp_path, f1)
    write_generic_frame(tmp_path, f2)
    assert np.fromfile(tmp_path / "points" / "000001.bin", "<f4").reshape(-1, 4)[:, 3].tolist() == [0.0] * 30
    ds = GenericDataset(tmp_path)
    a, b = ds[0], ds[1]
    assert a.point_fields == ("x", "y", "z") and a.points.tobytes() == f1.points.tobytes()
    assert b.point_fields == ("x", "y", "z", "ring", "intensity") and b.points.tobytes() == f2.points.tobytes()
    assert a.image is None and a.point_instances is None and a.ontology is None  # no ontology anywhere
    assert "exact_fields" not in b.meta


def test_generic_native_dtype_fields_and_flat_timestamps_with_split_column(tmp_path):
    # what bag extraction writes: flat folders, splits/*.txt, native-dtype fields, split column in timestamps.csv
    write_bin(tmp_path / "points" / "0001581624663_149000000.bin", np.ones((3, 4), np.float32))
    t_abs = np.array([1581624663.1490001, 1581624663.1490002, 1581624663.1490003])
    ring = np.array([0, 63, 65535], dtype=np.uint16)
    np.savez(tmp_path / "points" / "0001581624663_149000000.fields.npz", ring=ring, t=t_abs)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("0001581624663_149000000\n")
    (tmp_path / "timestamps.csv").write_text("stem,timestamp_s,split\n0001581624663_149000000,1581624663.149,train\n")
    f = GenericDataset(tmp_path, "train")[0]
    assert f.point_fields == ("x", "y", "z", "intensity", "ring", "t")
    assert f.field("ring").tolist() == [0.0, 63.0, 65535.0] and f.timestamp == 1581624663.149
    assert list(f.meta["exact_fields"]) == ["t"]  # ring fits float32 exactly, absolute times do not
    np.testing.assert_array_equal(f.meta["exact_fields"]["t"], t_abs)


def test_generic_split_lists_and_mask_suffix(tmp_path):
    for i in range(4):
        _save(tmp_path / "images" / f"f{i}.jpg", _rgb(i), quality=100)
        _save(tmp_path / "masks" / f"f{i}_mask.png", _ids([0, 1, 3], i))
    with pytest.raises(DataError, match=r"4 images have no mask \(first: .*f0\.jpg, expected .*f0\.png\); the masks "
                                        r"seem to carry the suffix '_mask' \(pass mask_suffix='_mask'\)"):
        GenericDataset(tmp_path)
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("f2\nf0\n# comment\n\nf3\n")
    (tmp_path / "splits" / "val.txt").write_text("f1\n")
    ds = GenericDataset(tmp_path, "train", mask_suffix="_mask", ontology="rellis3d-raw")
    assert ds.frame_ids() == ["f2", "f0", "f3"]  # list order
    np.testing.assert_array_equal(ds[1].image_labels, _ids([0, 1, 3], 0))
    assert GenericDataset(tmp_path, "val", mask_suffix="_mask").frame_ids() == ["f1"]
    assert len(GenericDataset(tmp_path, "all", mask_suffix="_mask")) == 4
    with pytest.raises(DataError, match=r"no split 'test' \(no test/ sub-folders and no .*splits/test\.txt\)"):
        GenericDataset(tmp_path, "test", mask_suffix="_mask")
    (tmp_path / "splits" / "val.txt").write_text("f1\nf9\n")
    with pytest.raises(DataError, match=r"val\.txt, line 2: stem 'f9' has no files in images, masks/"):
        GenericDataset(tmp_path, "val", mask_suffix="_mask")
    _save(tmp_path / "masks" / "f4.png", _ids([0]))
    with pytest.raises(DataError, match=r"f4\.png: mask file name does not end with the mask suffix '_mask'"):
        GenericDataset(tmp_path, mask_suffix="_mask")


def test_generic_colour_masks_with_palette(tmp_path):
    onto = get_ontology("rellis3d-raw")
    ids = [_ids(onto.ids, i) for i in range(2)]
    for i in range(2):
        _save(tmp_path / "images" / f"{i}.png", _rgb(i))
        _save(tmp_path / "masks" / f"{i}.png", encode_colors(ids[i], onto))
    with pytest.raises(DataError, match=r"0\.png: RGB colour mask but no ontology or palette to decode it"):
        GenericDataset(tmp_path)[0]
    write_palette(tmp_path / "palette.csv", onto)
    ds = GenericDataset(tmp_path)
    assert ds.ontology.name == "palette"
    for i in range(2):
        np.testing.assert_array_equal(ds[i].image_labels, ids[i])
    # argument > ontology.yaml > palette file
    (tmp_path / "ontology.yaml").write_text(yaml.safe_dump(onto.to_dict()))
    assert GenericDataset(tmp_path).ontology.name == "rellis3d-raw"
    assert GenericDataset(tmp_path, ontology=onto).ontology is onto
    # an unknown colour is an error naming the file, or void on request
    bad = encode_colors(ids[1], onto)
    bad[0, 0] = (1, 2, 3)
    _save(tmp_path / "masks" / "1.png", bad)
    with pytest.raises(DataError, match=r"masks/1\.png: 1 pixels have colours that are not in ontology "
                                        r"'rellis3d-raw': #010203 \(1 px\)"):
        GenericDataset(tmp_path)[1]
    got = GenericDataset(tmp_path, unknown_color="void")[1].image_labels
    assert got[0, 0] == 0
    np.testing.assert_array_equal(got.ravel()[1:], ids[1].ravel()[1:])


def test_generic_custom_palette_with_ontology(tmp_path):
    # masks coloured with a private palette, labels in the rellis3d-raw ids
    (tmp_path / "my_colours.txt").write_text("0 void 1 1 1\n1 dirt 2 2 2\n3 grass 3 3 3\n")
    ids = _ids([0, 1, 3])
    colours = np.repeat((ids + (ids < 3)).astype(np.uint8)[:, :, None], 3, axis=2)  # 0->1, 1->2, 3->3
    _save(tmp_path / "masks" / "a.png", colours)
    ds = GenericDataset(tmp_path, ontology="rellis3d-raw", palette=tmp_path / "my_colours.txt")
    np.testing.assert_array_equal(ds[0].image_labels, ids)
    assert ds[0].ontology == "rellis3d-raw" and ds[0].image is None
    (tmp_path / "bad.txt").write_text("0 void 1 1 1\n2 nope 2 2 2\n")
    with pytest.raises(ConfigError, match=r"palette 'bad' has ids \[2\] that are not classes of ontology 'rellis3d-raw'"):
        GenericDataset(tmp_path, ontology="rellis3d-raw", palette=tmp_path / "bad.txt")


def test_generic_layout_errors(tmp_path):
    with pytest.raises(DataError, match=r"not a generic dataset folder \(expected images/ and/or masks/ and/or points/"):
        GenericDataset(tmp_path)
    with pytest.raises(DataError, match=r"dataset folder not found"):
        GenericDataset(tmp_path / "missing")
    _save(tmp_path / "images" / "a.png", _rgb())
    _save(tmp_path / "masks" / "a.png", _ids([0, 1], h=H + 1))
    with pytest.raises(DataError, match=r"masks/a\.png: mask is 8x7 but image .*images/a\.png is 8x6"):
        GenericDataset(tmp_path)[0]
    _save(tmp_path / "masks" / "a.png", _ids([0, 1]))
    _save(tmp_path / "images" / "b.png", _rgb())
    with pytest.raises(DataError, match=r"1 images have no mask \(first: .*b\.png.*allow_unlabeled=True"):
        GenericDataset(tmp_path)
    ds = GenericDataset(tmp_path, allow_unlabeled=True)
    assert ds[1].image_labels is None and ds[0].image_labels is not None
    _save(tmp_path / "masks" / "c.png", _ids([0, 1]))
    with pytest.raises(DataError, match=r"c\.png: mask has no image"):
        GenericDataset(tmp_path, allow_unlabeled=True)
    (tmp_path / "masks" / "c.png").unlink()
    _save(tmp_path / "images" / "b.jpg", _rgb())
    with pytest.raises(DataError, match=r"b\.png: same stem 'b' as .*b\.jpg \(one file per stem and modality\)"):
        GenericDataset(tmp_path, allow_unlabeled=True)
    (tmp_path / "images" / "b.jpg").unlink()
    _save(tmp_path / "masks" / "b.jpg", _rgb())
    with pytest.raises(DataError, match=r"b\.jpg: masks must be PNG files"):
        GenericDataset(tmp_path)
    (tmp_path / "masks" / "b.jpg").unlink()
    _save(tmp_path / "images" / "seq1" / "x.png", _rgb())
    with pytest.raises(DataError, match=r"seq1: unexpected sub-folder \(only split folders train, val, test"):
        GenericDataset(tmp_path, allow_unlabeled=True)
    shutil.rmtree(tmp_path / "images" / "seq1")
    _save(tmp_path / "images" / "train" / "x.png", _rgb())
    with pytest.raises(DataError, match=r"file next to split sub-folders"):
        GenericDataset(tmp_path, allow_unlabeled=True)


def test_generic_point_errors_and_id_checks(tmp_path):
    write_bin(tmp_path / "points" / "s1.bin", np.zeros((5, 4), np.float32))
    write_label(tmp_path / "point_labels" / "s1.label", np.zeros(4, np.uint16))
    with pytest.raises(DataError, match=r"s1\.label: 4 labels for a scan of 5 points"):
        GenericDataset(tmp_path)[0]
    write_label(tmp_path / "point_labels" / "s1.label", np.array([0, 1, 2, 1, 0], np.uint16))
    with pytest.raises(DataError, match=r"s1\.label: 1 values are not ids of ontology 'rellis3d-raw': 2 \(1x\)"):
        GenericDataset(tmp_path, ontology="rellis3d-raw")[0]
    assert GenericDataset(tmp_path, ontology="rellis3d-raw", check_ids=False)[0].point_labels.tolist() == [0, 1, 2, 1, 0]
    write_bin(tmp_path / "points" / "s2.bin", np.zeros((5, 4), np.float32))
    with pytest.raises(DataError, match=r"1 scans have no point labels \(first: .*s2\.bin"):
        GenericDataset(tmp_path)
    write_label(tmp_path / "point_labels" / "s3.label", np.zeros(5, np.uint16))
    with pytest.raises(DataError, match=r"s3\.label: point labels without a scan"):
        GenericDataset(tmp_path, allow_unlabeled=True)
    (tmp_path / "point_labels" / "s3.label").unlink()
    np.savez(tmp_path / "points" / "s1.fields.npz", ring=np.zeros(4))
    with pytest.raises(DataError, match=r"s1\.fields\.npz: field 'ring' has shape \(4,\), expected \(5,\)"):
        GenericDataset(tmp_path, allow_unlabeled=True)[0]
    np.savez(tmp_path / "points" / "s1.fields.npz", intensity=np.zeros(5))
    with pytest.raises(DataError, match=r"field 'intensity' duplicates a \.bin column"):
        GenericDataset(tmp_path, allow_unlabeled=True)[0]
    np.savez(tmp_path / "points" / "s9.fields.npz", ring=np.zeros(5))
    with pytest.raises(DataError, match=r"s9\.fields\.npz: point fields without a scan"):
        GenericDataset(tmp_path, allow_unlabeled=True)


def test_generic_timestamps_and_calib_files(tmp_path):
    write_bin(tmp_path / "points" / "a.bin", np.ones((3, 4), np.float32))
    (tmp_path / "timestamps.csv").write_text("stem,timestamp_s\na,12.5\n")
    write_calib_yaml(tmp_path / "calib.yaml", Calibration(K=np.eye(3)))
    f = GenericDataset(tmp_path)[0]
    assert f.timestamp == 12.5 and f.calib.K.tolist() == np.eye(3).tolist() and f.point_labels is None
    (tmp_path / "timestamps.csv").write_text("stem,timestamp_s\na,12.5\nb,soon\n")
    with pytest.raises(DataError, match=r"timestamps\.csv, line 3: timestamp 'soon' is not a number"):
        GenericDataset(tmp_path)
    (tmp_path / "timestamps.csv").write_text("a,1\na,2\n")
    with pytest.raises(DataError, match=r"timestamps\.csv, line 2: stem 'a' appears twice"):
        GenericDataset(tmp_path)
    (tmp_path / "timestamps.csv").write_text("a,1,holdout\n")
    with pytest.raises(DataError, match=r"line 1: unknown split 'holdout'"):
        GenericDataset(tmp_path)


def test_write_generic_frame_is_all_or_nothing_and_replaces_stale_files(tmp_path):
    bad = _frame(1)
    bad.points[3, 1] = np.inf
    with pytest.raises(DataError, match=r"frame 000001: 1 points have NaN or infinite coordinates \(first at index 3\)"):
        write_generic_frame(tmp_path, bad)
    assert not any(tmp_path.rglob("*"))
    bad2 = _frame(1)
    bad2.image_labels = bad2.image_labels[:-1]
    with pytest.raises(DataError, match="differ in size"):
        write_generic_frame(tmp_path, bad2)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))
    with pytest.raises(DataError, match="invalid frame stem 'a/b'"):
        write_generic_frame(tmp_path, _frame(1), stem="a/b")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        write_generic_frame(tmp_path, _frame(1), split="dev")
    with pytest.raises(DataError, match="frame 000001: frame has no image, mask, points or point labels"):
        write_generic_frame(tmp_path, Frame("000001"))
    # rewrite: jpg replaces png, the mask and the fields file disappear
    write_generic_frame(tmp_path, _frame(1, fields=("x", "y", "z", "intensity", "ring")))
    write_generic_frame(tmp_path, _frame(1, mask=False), image_format="jpg")
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["images/000001.jpg", "point_labels/000001.label", "points/000001.bin"]
    ds = GenericDataset(tmp_path)
    assert ds[0].image_labels is None and np.abs(ds[0].image.astype(int) - _rgb(1)).mean() < 40


def test_generic_16bit_masks_and_write_frame_alias(tmp_path):
    fr = Frame("f", image_labels=np.array([[0, 300], [65535, 7]], dtype=np.uint16))
    GenericDataset.write_frame(tmp_path, fr, "test")
    got = GenericDataset(tmp_path, "test")[0]
    assert got.frame_id == "test/f" and got.image_labels.dtype == np.uint16
    np.testing.assert_array_equal(got.image_labels, fr.image_labels)
    small = Frame("g", image_labels=np.array([[0, 3]], dtype=np.uint16))
    write_generic_frame(tmp_path, small, "test")
    assert GenericDataset(tmp_path, "test")[1].image_labels.dtype == np.uint16


@pytest.mark.realdata
def test_rellis_frame_through_generic_layout(shared_data, tmp_path):
    src = shared_data / "rellis3d"
    stem = "frame000104-1581624663_149"
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "points").mkdir()
    (tmp_path / "point_labels").mkdir()
    shutil.copy(src / f"{stem}.jpg", tmp_path / "images" / f"{stem}.jpg")
    shutil.copy(src / f"{stem}.png", tmp_path / "masks" / f"{stem}.png")
    shutil.copy(src / "000104.bin", tmp_path / "points" / f"{stem}.bin")
    shutil.copy(src / "000104.label", tmp_path / "point_labels" / f"{stem}.label")
    write_palette(tmp_path / "ontology.yaml", get_ontology("rellis3d-raw"))
    ds = GenericDataset(tmp_path)
    f = ds[0]
    assert f.ontology == "rellis3d-raw" and f.frame_id == stem
    assert f.image.shape == (1200, 1920, 3) and f.image_labels.shape == (1200, 1920)
    np.testing.assert_array_equal(f.image, np.asarray(Image.open(src / f"{stem}.jpg").convert("RGB")))
    np.testing.assert_array_equal(f.image_labels, np.asarray(Image.open(src / f"{stem}.png")))
    assert set(np.unique(f.image_labels).tolist()) <= set(get_ontology("rellis3d-raw").ids.tolist())
    assert f.points.shape == (131072, 4) and f.point_labels.shape == (131072,)
    # copy it again through the writer: values survive, the mask is byte-identical in content
    out = tmp_path / "copy"
    with GenericWriter(out, ontology="rellis3d-raw") as w:
        w.write(f)
    back = GenericDataset(out)[0]
    np.testing.assert_array_equal(back.image, f.image)
    np.testing.assert_array_equal(back.image_labels, f.image_labels)
    assert back.points.tobytes() == f.points.tobytes()
    assert (out / "point_labels" / f"{stem}.label").read_bytes() == (src / "000104.label").read_bytes()
    assert (out / "points" / f"{stem}.bin").read_bytes() == (src / "000104.bin").read_bytes()


def test_generic_split_sources_are_exclusive_and_writer_needs_known_ontology(tmp_path):
    write_generic_frame(tmp_path, _frame(1), split="train")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("000001\n")
    with pytest.raises(DataError, match=r"both split sub-folders and .*splits/\*\.txt lists; use one of them"):
        GenericDataset(tmp_path, "train")
    custom = _frame(2).replace(ontology="my-labels")
    with pytest.raises(DataError, match=r"frame 000002: ontology 'my-labels' is not built in; pass the Ontology"):
        GenericWriter(tmp_path / "out").write(custom)
    assert not (tmp_path / "out").exists()
