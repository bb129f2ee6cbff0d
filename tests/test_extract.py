"""extract_bag: bag -> generic dataset layout (pairing, tolerance, splits, masks, resume, errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from terraseg.errors import ConfigError, DataError
from terraseg.extract import ExtractSummary, extract_bag, npz_bytes, stem_of
from terraseg.frame import Calibration
from terraseg.io.bags import BagWriter
from terraseg.io.calib import read_calib_yaml
from terraseg.io.labels import read_label_png
from terraseg.io.scans import read_bin
from terraseg.ontology import encode_colors, get_ontology

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S + 5  # an odd nanosecond part checks the stem's zero padding
H, W = 6, 8
K = np.array([[50.0, 0, 4], [0, 50, 3], [0, 0, 1]])


def frame_data(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic image, id mask and (N, 4) cloud of frame k."""
    rng = np.random.default_rng(100 + k)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = rng.integers(0, 12, (H, W), dtype=np.uint8)
    pts = rng.normal(size=(10 + k, 4)).astype(np.float32)
    return img, mask, pts


def make_bag(path: Path, n: int = 6, *, with_points: bool = True, mask_offsets_ms: dict[int, float] | None = None,
             skip_mask: tuple[int, ...] = (), storage: str = "sqlite3") -> Path:
    """Images, masks, clouds (x, y, z, intensity + uint32 label) and camera info at 10 Hz."""
    mask_offsets_ms = mask_offsets_ms or {}
    with BagWriter(path, storage=storage) as w:  # type: ignore[arg-type]
        for k in range(n):
            t = T0 + k * 100 * MS
            img, mask, pts = frame_data(k)
            w.write_image("/cam/image", img, t, "cam")
            if k not in skip_mask:
                w.write_image("/cam/mask", mask, t + int(mask_offsets_ms.get(k, 0) * MS), "cam")
            if with_points:
                w.write_pointcloud("/lidar", pts, ("x", "y", "z", "intensity"), t, "lidar",
                                   extra={"label": np.arange(len(pts), dtype=np.uint32)})
            w.write_camera_info("/cam/info", Calibration(K=K, dist=[0.1, 0, 0, 0, 0], image_size=(W, H)), t, "cam")
    return path


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- streams
def test_image_and_mask_pairs(tmp_path: Path) -> None:
    bag = make_bag(tmp_path / "bag", n=5, skip_mask=(2,))
    out = tmp_path / "out"
    summary = extract_bag(bag, out, image_topic="/cam/image", mask_topic="/cam/mask", progress=False)
    assert isinstance(summary, ExtractSummary) and summary.frames == 4 and summary.written == 4
    stems = [stem_of(T0 + k * 100 * MS) for k in (0, 1, 3, 4)]
    assert stems[0] == "1700000000_000000005"
    assert sorted(p.stem for p in (out / "images").iterdir()) == stems
    assert sorted(p.stem for p in (out / "masks").iterdir()) == stems
    for stem, k in zip(stems, (0, 1, 3, 4)):
        img, mask, _ = frame_data(k)
        np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / f"{stem}.png")), img)
        got = read_label_png(out / "masks" / f"{stem}.png")
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, mask)
    lines = (out / "timestamps.csv").read_text().splitlines()
    assert lines[0] == "stem,timestamp_s" and lines[1] == f"{stems[0]},1700000000.000000005"
    assert len(lines) == 5
    assert not (out / "points").exists() and not (out / "splits").exists()
    image_row = summary.topics[0]
    assert (image_row.role, image_row.topic, image_row.messages, image_row.kept) == ("image", "/cam/image", 5, 4)
    assert image_row.dropped == {"no_partner": 1}
    saved = json.loads((out / "extract_summary.json").read_text())
    assert saved["frames"] == 4 and saved["topics"][1]["kept"] == 4
    assert "written" not in saved and "no_partner" in saved["drop_reasons"]


def test_points_only(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    rng = np.random.default_rng(7)
    xyz = rng.normal(size=(9, 3)).astype(np.float32)
    xyz[4] = np.nan
    with BagWriter(bag) as w:
        w.write_pointcloud("/plain", xyz, ("x", "y", "z"), T0, "lidar",
                           extra={"ring": np.arange(9, dtype=np.uint16), "t": np.linspace(0, 1, 9)})
    out = tmp_path / "out"
    summary = extract_bag(bag, out, points_topic="/plain", progress=False)
    assert summary.frames == 1
    stem = stem_of(T0)
    pts = read_bin(out / "points" / f"{stem}.bin")
    keep = np.arange(9) != 4
    assert pts.shape == (8, 4) and pts.dtype == np.float32
    np.testing.assert_array_equal(pts[:, :3], xyz[keep])
    np.testing.assert_array_equal(pts[:, 3], 0)  # no intensity field
    fields = np.load(out / "points" / f"{stem}.fields.npz")
    assert sorted(fields.files) == ["ring", "t"]
    assert fields["ring"].dtype == np.uint16 and fields["t"].dtype == np.float64
    np.testing.assert_array_equal(fields["ring"], np.arange(9)[keep])
    assert not (out / "images").exists() and not (out / "calib.yaml").exists()


def test_image_mask_points_and_calib(tmp_path: Path) -> None:
    bag = make_bag(tmp_path / "bag", n=3)
    out = tmp_path / "out"
    summary = extract_bag(bag, out, "/cam/image", "/cam/mask", "/lidar", "/cam/info", progress=False)
    assert summary.frames == 3
    for k in range(3):
        stem = stem_of(T0 + k * 100 * MS)
        _, _, pts = frame_data(k)
        np.testing.assert_array_equal(read_bin(out / "points" / f"{stem}.bin"), pts)
        fields = np.load(out / "points" / f"{stem}.fields.npz")
        assert fields.files == ["label"] and fields["label"].dtype == np.uint32
        np.testing.assert_array_equal(fields["label"], np.arange(len(pts)))
    calib = read_calib_yaml(out / "calib.yaml")
    np.testing.assert_array_equal(calib.K, K)
    assert calib.image_size == (W, H) and list(calib.dist) == [0.1, 0, 0, 0, 0]
    info = next(t for t in summary.topics if t.role == "camera_info")
    assert (info.messages, info.kept, info.dropped) == (3, 3, {})
    assert summary.calibration is not None and summary.calibration["topic"] == "/cam/info"


@pytest.mark.parametrize("storage", ["mcap", "ros1"])
def test_other_bag_formats(tmp_path: Path, storage: str) -> None:
    path = tmp_path / ("bag.bag" if storage == "ros1" else "bag")
    bag = make_bag(path, n=3, storage="mcap" if storage == "mcap" else "sqlite3")
    summary = extract_bag(bag, tmp_path / "out", "/cam/image", "/cam/mask", "/lidar", progress=False)
    assert summary.frames == 3
    img, mask, _ = frame_data(1)
    stem = stem_of(T0 + 100 * MS)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "images" / f"{stem}.png")), img)
    np.testing.assert_array_equal(read_label_png(tmp_path / "out" / "masks" / f"{stem}.png"), mask)


# ---------------------------------------------------------------------------- tolerance and splits
def test_tolerance_matching(tmp_path: Path) -> None:
    bag = make_bag(tmp_path / "bag", n=4, with_points=False, mask_offsets_ms={1: 3.0, 2: -3.0})
    strict = extract_bag(bag, tmp_path / "strict", "/cam/image", "/cam/mask", progress=False)
    assert strict.frames == 2
    assert strict.topics[0].dropped == {"out_of_tolerance": 2}
    assert strict.topics[1].dropped == {"out_of_tolerance": 2}
    loose = extract_bag(bag, tmp_path / "loose", "/cam/image", "/cam/mask", tolerance_ms=5, progress=False)
    assert loose.frames == 4 and loose.max_dt_ms == pytest.approx(3.0)
    stem = stem_of(T0 + 100 * MS)  # frames are named by the image stamp
    _, mask, _ = frame_data(1)
    np.testing.assert_array_equal(read_label_png(tmp_path / "loose" / "masks" / f"{stem}.png"), mask)
    assert extract_bag(bag, tmp_path / "tight", "/cam/image", "/cam/mask", tolerance_ms=2.9,
                       progress=False).frames == 2


def test_split_fractions_are_contiguous_in_time(tmp_path: Path) -> None:
    bag = make_bag(tmp_path / "bag", n=10, with_points=False)
    out = tmp_path / "out"
    summary = extract_bag(bag, out, "/cam/image", "/cam/mask", split={"train": 0.8, "val": 0.1, "test": 0.1},
                          progress=False)
    assert summary.splits == {"train": 8, "val": 1, "test": 1}
    stems = [stem_of(T0 + k * 100 * MS) for k in range(10)]
    assert (out / "splits" / "train.txt").read_text().split() == stems[:8]
    assert (out / "splits" / "val.txt").read_text().split() == [stems[8]]
    assert (out / "splits" / "test.txt").read_text().split() == [stems[9]]
    rows = [ln.split(",") for ln in (out / "timestamps.csv").read_text().splitlines()]
    assert rows[0] == ["stem", "timestamp_s", "split"] and rows[1][2] == "train" and rows[-1][2] == "test"


def test_split_time_ranges(tmp_path: Path) -> None:
    bag = make_bag(tmp_path / "bag", n=10, with_points=False)
    summary = extract_bag(bag, tmp_path / "out", "/cam/image", "/cam/mask",
                          split={"train": (0, 0.5), "test": (0.7, None)}, progress=False)
    assert summary.splits == {"train": 5, "test": 3} and summary.frames == 8
    assert summary.topics[0].dropped == {"outside_split": 2}


@pytest.mark.parametrize("split, message", [
    ({"train": 0.8, "val": 0.1}, "sum to 1"),
    ({"training": 1.0}, "unknown split names"),
    ({"train": (0, 5), "val": (4, 8)}, "overlap"),
    ({"train": (5, 1)}, "must be after its start"),
])
def test_bad_split_options(tmp_path: Path, split: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        extract_bag(tmp_path / "missing", tmp_path / "out", "/cam/image", split=split, progress=False)


# ---------------------------------------------------------------------------- masks
def test_red_channel_masks_from_carla_bgra(tmp_path: Path) -> None:
    bag = tmp_path / "carla"
    rng = np.random.default_rng(8)
    tags = rng.integers(0, 29, (H, W), dtype=np.uint8)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0] = tags  # CARLA: the semantic tag is the red channel
    rgba[..., 3] = 255
    with BagWriter(bag) as w:
        w.write_image("/carla/hero/rgb_front/image", rng.integers(0, 256, (H, W, 4), dtype=np.uint8), T0,
                      encoding="bgra8")
        w.write_image("/carla/hero/semantic_segmentation_front/image", rgba, T0, encoding="bgra8")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="differing channels; use mask_mode='red'"):
        extract_bag(bag, out, "/carla/hero/rgb_front/image", "/carla/hero/semantic_segmentation_front/image",
                    progress=False)
    summary = extract_bag(bag, out, "/carla/hero/rgb_front/image", "/carla/hero/semantic_segmentation_front/image",
                          mask_mode="red", ontology="carla", progress=False)
    assert summary.frames == 1
    np.testing.assert_array_equal(read_label_png(out / "masks" / f"{stem_of(T0)}.png"), tags)
    assert yaml.safe_load((out / "ontology.yaml").read_text())["name"] == "carla"


def test_color_masks_decoded_with_the_ontology_palette(tmp_path: Path) -> None:
    onto = get_ontology("carla")
    ids = np.random.default_rng(9).choice(onto.ids, size=(H, W)).astype(np.uint8)
    bag = tmp_path / "bag"
    bad = encode_colors(ids, onto)
    bad[0, 0] = (1, 2, 3)
    with BagWriter(bag) as w:
        w.write_image("/mask", encode_colors(ids, onto), T0, encoding="bgr8")
        w.write_image("/mask", bad, T0 + S, encoding="bgr8")
    with pytest.raises(ConfigError, match="needs an ontology"):
        extract_bag(bag, tmp_path / "o", mask_topic="/mask", mask_mode="color", progress=False)
    with pytest.raises(DataError, match=r"/mask message 1: 1 pixels have colours that are not in ontology 'carla'"):
        extract_bag(bag, tmp_path / "o", mask_topic="/mask", mask_mode="color", ontology="carla", progress=False)
    summary = extract_bag(bag, tmp_path / "o", mask_topic="/mask", mask_mode="color", ontology=onto, skip_bad=True,
                          progress=False)
    assert summary.frames == 1
    np.testing.assert_array_equal(read_label_png(tmp_path / "o" / "masks" / f"{stem_of(T0)}.png"), ids)


def test_png_compressed_and_grey_rgb_masks(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    ids = np.random.default_rng(10).integers(0, 20, (H, W), dtype=np.uint8)
    with BagWriter(bag) as w:
        w.write_compressed_image("/mask/compressed", ids, T0, format="png")
        w.write_image("/mask/grey_rgb", np.repeat(ids[:, :, None], 3, axis=2), T0)
        w.write_image("/mask/empty", np.zeros((0, 0), np.uint8), T0)
    for topic in ("/mask/compressed", "/mask/grey_rgb"):
        out = tmp_path / topic.split("/")[-1]
        assert extract_bag(bag, out, mask_topic=topic, progress=False).frames == 1
        np.testing.assert_array_equal(read_label_png(out / "masks" / f"{stem_of(T0)}.png"), ids)
    with pytest.raises(DataError, match=r"/mask/empty message 0: cannot encode an empty image"):
        extract_bag(bag, tmp_path / "empty", mask_topic="/mask/empty", progress=False)


def test_ids_are_checked_against_the_ontology_and_16bit_masks(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    with BagWriter(bag) as w:
        w.write_image("/m16", np.full((H, W), 300, np.uint16), T0)
        w.write_image("/m8", np.full((H, W), 40, np.uint8), T0)
    summary = extract_bag(bag, tmp_path / "a", mask_topic="/m16", progress=False)
    got = read_label_png(tmp_path / "a" / "masks" / f"{stem_of(T0)}.png")
    assert summary.frames == 1 and got.dtype == np.uint16 and int(got[0, 0]) == 300
    with pytest.raises(DataError, match=r"/m8 message 0: 48 values are not ids of ontology 'carla'"):
        extract_bag(bag, tmp_path / "b", mask_topic="/m8", ontology="carla", progress=False)


# ---------------------------------------------------------------------------- idempotence and resume
def test_rerun_is_idempotent_and_resumes(tmp_path: Path) -> None:
    bag = make_bag(tmp_path / "bag", n=4)
    out = tmp_path / "out"
    args = dict(image_topic="/cam/image", mask_topic="/cam/mask", points_topic="/lidar",
                camera_info_topic="/cam/info", split={"train": 0.5, "val": 0.25, "test": 0.25}, progress=False)
    first = extract_bag(bag, out, **args)
    before = snapshot(out)
    assert first.written == 4 and len(before) == 4 * 4 + 6  # 4 files per frame + metadata
    again = extract_bag(bag, out, **args)
    assert again.written == 0 and again.existing == 4
    assert snapshot(out) == before  # same bytes, same mtimes

    victim = out / "images" / f"{stem_of(T0 + 200 * MS)}.png"
    victim.unlink()
    (out / "points" / f"{stem_of(T0)}.bin").unlink()
    resumed = extract_bag(bag, out, **args)
    assert resumed.written == 2 and resumed.existing == 2
    after = snapshot(out)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    changed = sorted(k for k in after if after[k][1] != before[k][1])
    assert changed == [f"images/{victim.name}", f"points/{stem_of(T0)}.bin"]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_npz_bytes_are_deterministic() -> None:
    arrays = {"label": np.arange(5, dtype=np.uint32), "t": np.linspace(0, 1, 5)}
    assert npz_bytes(arrays) == npz_bytes({k: v.copy() for k, v in arrays.items()})


# ---------------------------------------------------------------------------- errors and skip_bad
def _bag_with_bad_mask(path: Path, bad_index: int = 2) -> Path:
    with BagWriter(path) as w:
        for k in range(4):
            t = T0 + k * 100 * MS
            img, mask, _ = frame_data(k)
            w.write_image("/cam/image", img, t)
            if k == bad_index:
                msg = w.make("sensor_msgs/msg/Image", header=w.header("/cam/mask", t), height=H, width=W,
                             encoding="yuv422", is_bigendian=0, step=2 * W, data=np.zeros(2 * W * H, np.uint8))
                w.write("/cam/mask", "sensor_msgs/msg/Image", msg, t)
            else:
                w.write_image("/cam/mask", mask, t)
    return path


def test_missing_topic_error(tmp_path: Path) -> None:
    bag = make_bag(tmp_path / "bag", n=1)
    with pytest.raises(DataError) as err:
        extract_bag(bag, tmp_path / "out", image_topic="/cam/image", mask_topic="/carla/hero/semantic",
                    progress=False)
    text = str(err.value)
    assert str(bag) in text and "'/carla/hero/semantic' not found" in text
    assert "/cam/image (sensor_msgs/msg/Image, 1 msgs)" in text and "/lidar (sensor_msgs/msg/PointCloud2" in text
    with pytest.raises(DataError, match="has type sensor_msgs/msg/PointCloud2, expected"):
        extract_bag(bag, tmp_path / "out", image_topic="/lidar", progress=False)
    with pytest.raises(ConfigError, match="give at least one of image_topic"):
        extract_bag(bag, tmp_path / "out", progress=False)


def test_unsupported_encoding_error_names_message_index(tmp_path: Path) -> None:
    bag = _bag_with_bad_mask(tmp_path / "bag")
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        extract_bag(bag, out, "/cam/image", "/cam/mask", progress=False, workers=2)
    text = str(err.value)
    assert str(bag) in text and "/cam/mask message 2" in text and "unsupported image encoding 'yuv422'" in text
    bad_stem = stem_of(T0 + 200 * MS)
    assert not (out / "images" / f"{bad_stem}.png").exists()  # nothing of the bad frame
    assert not (out / "masks" / f"{bad_stem}.png").exists()
    assert not (out / "extract_summary.json").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_skip_bad_lists_skipped_messages(tmp_path: Path) -> None:
    bag = _bag_with_bad_mask(tmp_path / "bag")
    out = tmp_path / "out"
    summary = extract_bag(bag, out, "/cam/image", "/cam/mask", skip_bad=True, progress=False)
    assert summary.frames == 3 and len(summary.skipped) == 1
    skipped = summary.skipped[0]
    assert (skipped.topic, skipped.index) == ("/cam/mask", 2) and "yuv422" in skipped.reason
    lines = (out / "skipped.txt").read_text().splitlines()
    assert lines[0].startswith("#") and lines[1].split("\t")[:2] == ["/cam/mask", "2"]
    assert summary.topics[0].dropped == {"partner_skipped": 1}
    assert summary.topics[1].dropped == {"decode_error": 1}
    assert len((out / "timestamps.csv").read_text().splitlines()) == 4
    assert not (out / "images" / f"{stem_of(T0 + 200 * MS)}.png").exists()
    assert "skipped 1 bad messages" in str(summary.table().caption)


def test_compressed_jpeg_is_copied_byte_for_byte(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    yy, xx = np.mgrid[0:16, 0:24]
    img = np.stack([xx * 9, yy * 12, xx + yy], axis=2).astype(np.uint8)
    with BagWriter(bag) as w:
        w.write_compressed_image("/cam/compressed", img, T0, format="jpeg")
    out = tmp_path / "out"
    extract_bag(bag, out, image_topic="/cam/compressed", progress=False)
    from terraseg.io.bags import open_bag

    with open_bag(bag) as b:
        (m,) = list(b.messages("/cam/compressed"))
    assert (out / "images" / f"{stem_of(T0)}.jpg").read_bytes() == np.asarray(m.msg.data).tobytes()
    extract_bag(bag, tmp_path / "png", image_topic="/cam/compressed", image_format="png", progress=False)
    assert (tmp_path / "png" / "images" / f"{stem_of(T0)}.png").is_file()


def test_receive_time_source_and_summary_table(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    with BagWriter(bag) as w:
        for k in range(3):  # header stamps left at zero, as some drivers do
            w.write_image("/i", np.full((2, 2), k, np.uint8), 0, timestamp_ns=T0 + k * S)
    dup = extract_bag(bag, tmp_path / "a", image_topic="/i", progress=False)
    assert dup.frames == 1 and dup.topics[0].dropped == {"duplicate_stamp": 2}
    recv = extract_bag(bag, tmp_path / "b", image_topic="/i", time_source="receive", progress=False)
    assert recv.frames == 3
    from rich.console import Console

    console = Console(record=True, width=120)
    recv.print(console)
    text = console.export_text()
    assert "/i" in text and "3 frames" in text


@pytest.mark.realdata
def test_rellis_sample_through_a_bag(tmp_path: Path, shared_data: Path) -> None:
    """The real RELLIS-3D image and id mask survive bag writing and extraction bit-exactly."""
    img = np.asarray(Image.open(shared_data / "rellis3d" / "frame000104-1581624663_149.jpg").convert("RGB"))
    mask = read_label_png(shared_data / "rellis3d" / "frame000104-1581624663_149.png")
    stamp = 1581624663 * S + 149_000_000
    with BagWriter(tmp_path / "rellis.bag") as w:
        w.write_image("/pylon_camera_node/image_raw", img, stamp, "pylon_camera", encoding="bgr8")
        w.write_image("/labels", mask, stamp, "pylon_camera")
    summary = extract_bag(tmp_path / "rellis.bag", tmp_path / "out", "/pylon_camera_node/image_raw", "/labels",
                          ontology="rellis3d-raw", progress=False)
    assert summary.frames == 1
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "images" / "1581624663_149000000.png")),
                                  img)
    np.testing.assert_array_equal(read_label_png(tmp_path / "out" / "masks" / "1581624663_149000000.png"), mask)


# --------------------------------------------------------------------------- CLI and the generic reader
def test_cli_extract_then_read_with_generic_dataset_and_inspect(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from terraseg.cli import app
    from terraseg.datasets import GenericDataset

    runner = CliRunner()
    bag = make_bag(tmp_path / "run", n=6)
    res = runner.invoke(app, ["bag-info", str(bag)])
    assert res.exit_code == 0 and "/cam/image" in res.output and "PointCloud2" in res.output
    out = tmp_path / "ds"
    res = runner.invoke(app, ["extract", str(bag), "-o", str(out), "--image", "/cam/image", "--mask", "/cam/mask",
                              "--points", "/lidar", "--camera-info", "/cam/info", "--split", "train=0.5,val=0.5", "-q"])
    assert res.exit_code == 0, res.output
    assert "6 frames" in res.output
    train = GenericDataset(out, split="train", ontology="rellis3d")
    val = GenericDataset(out, split="val", ontology="rellis3d")
    assert len(train) == 3 and len(val) == 3
    f = train[1]
    img, mask, pts = frame_data(1)
    np.testing.assert_array_equal(f.image, img)
    np.testing.assert_array_equal(f.image_labels, mask)
    np.testing.assert_array_equal(f.points[:, :4], pts)
    assert "label" in f.point_fields
    np.testing.assert_array_equal(f.field("label"), np.arange(len(pts)))
    assert f.timestamp == pytest.approx((T0 + 100 * MS) / 1e9)
    np.testing.assert_allclose(f.calib.K, K)
    res = runner.invoke(app, ["inspect", str(out), "--ontology", "rellis3d", "-q", "--out", str(tmp_path / "st")])
    assert res.exit_code == 0, res.output
    assert "train 3, val 3" in res.output


def test_cli_extract_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from terraseg.cli import app

    runner = CliRunner()
    bag = make_bag(tmp_path / "run", n=2, with_points=False)
    res = runner.invoke(app, ["extract", str(bag), "-o", str(tmp_path / "o")])
    assert res.exit_code == 1 and "give at least one of --image, --mask, --points" in res.output
    res = runner.invoke(app, ["extract", str(bag), "-o", str(tmp_path / "o"), "--image", "/nope"])
    assert res.exit_code == 1 and "/nope" in res.output and "/cam/image" in res.output
    res = runner.invoke(app, ["extract", str(bag), "-o", str(tmp_path / "o"), "--image", "/cam/image", "--split", "x"])
    assert res.exit_code == 1 and "--split: expected NAME=FRACTION" in res.output


def test_extraction_and_the_generic_writer_write_identical_layout_files(tmp_path: Path) -> None:
    """One writer of the generic layout: a bag extracted and the same frames copied with
    GenericWriter give byte-identical masks, point files, calib.yaml and ontology.yaml."""
    from terraseg.datasets import GenericDataset
    from terraseg.datasets.generic_writer import GenericWriter

    bag = tmp_path / "bag"
    with BagWriter(bag) as w:
        for k in range(3):
            t = T0 + k * 100 * MS
            img, mask, pts = frame_data(k)
            w.write_image("/cam/image", img, t, "cam")
            w.write_image("/cam/mask", mask, t, "cam")
            w.write_pointcloud("/lidar", pts, ("x", "y", "z", "intensity"), t, "lidar")
            w.write_camera_info("/cam/info", Calibration(K=K, dist=[0.1, 0, 0, 0, 0], image_size=(W, H)), t, "cam")
    out, copy = tmp_path / "out", tmp_path / "copy"
    extract_bag(bag, out, image_topic="/cam/image", mask_topic="/cam/mask", points_topic="/lidar",
                camera_info_topic="/cam/info", ontology="sim", progress=False)
    frames = GenericDataset(out)
    with GenericWriter(copy) as writer:
        for f in frames:
            writer.write(f)
    for rel in ["calib.yaml", "ontology.yaml"] + [f"{d}/{stem_of(T0 + k * 100 * MS)}.{e}" for k in range(3)
                                                 for d, e in (("masks", "png"), ("points", "bin"))]:
        assert (out / rel).read_bytes() == (copy / rel).read_bytes(), rel
