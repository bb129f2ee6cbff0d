"""Bad inputs x commands: every broken file ends in one clear ``error:`` line that names the file
and the problem and a non-zero exit (no traceback, no partial output), or in the documented
skip / warning behaviour.

================================  =======  ==========  =======  =======  =====================  ========
file                              predict  eval-masks  inspect  extract  run                    bag-info
================================  =======  ==========  =======  =======  =====================  ========
truncated .bin (cut mid-point)    error    -           error    -        error / skipped        -
.bin size not a multiple of 16    error    -           error    -        error / skipped        -
garbage .label                    -        -           error    -        error / skipped        -
label count != point count        -        -           error    -        error / skipped        -
PLY with a bad header             error    -           -        -        error                  -
PNG that is not a PNG             error    error/skip  error    -        error / skipped        -
empty scan                        warning  -           warning  -        warning, predicted     -
corrupted mcap chunk              -        -           -        error /  error / skipped        --verify
                                                                skipped                         error
truncated ROS 1 bag               -        -           -        error    error                  error
================================  =======  ==========  =======  =======  =====================  ========

("-": the command does not read that kind of file; "skipped": with ``--skip-errors`` /
``--skip-bad``, one ``warning: skipped ...`` line and a count.) ``eval`` on an empty scan is
covered too: a warning and no NaN row in ``per_frame.csv``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from terraseg.cli import app
from terraseg.io.bags import BagWriter, decode_image, open_bag

runner = CliRunner()
T0 = 1_000_000_000
PLY_HEADER = b"ply\nformat binary_little_endian 1.0\nelement vertex -100\nproperty float x\nproperty float y\n" \
             b"property float z\nend_header\n"


def _pts(n: int = 100, seed: int = 0) -> np.ndarray:
    """Random points (metres) with intensities in the range the tests' models were normalised for (0-0.5),
    so the only warnings are the ones a test provokes."""
    pts = np.random.default_rng(seed).normal(size=(n, 4)) * 5
    pts[:, 3] = np.abs(pts[:, 3]) % 0.5
    return pts.astype(np.float32)


def _image(i: int, hw: tuple[int, int] = (24, 32)) -> np.ndarray:
    return np.random.default_rng(100 + i).integers(0, 256, (*hw, 3), dtype=np.uint8)


def _kitti(root: Path, bad: Callable[[Path, Path], None] | None = None) -> Path:
    """A SemanticKITTI folder of three 100-point scans; ``bad(bin, label)`` breaks frame 1."""
    seq = root / "sequences" / "00"
    for sub in ("velodyne", "labels"):
        (seq / sub).mkdir(parents=True)
    for i in range(3):
        _pts(seed=i).tofile(seq / "velodyne" / f"{i:06d}.bin")
        np.full(100, 1, np.uint32).tofile(seq / "labels" / f"{i:06d}.label")
    if bad is not None:
        bad(seq / "velodyne" / "000001.bin", seq / "labels" / "000001.label")
    return root


def _generic(root: Path) -> Path:
    """A generic-layout folder of three images and masks; mask 000001.png is not a PNG."""
    from PIL import Image

    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        Image.fromarray(_image(i)).save(root / "images" / f"{i:06d}.png")
        Image.fromarray(np.full((24, 32), i % 3, np.uint8)).save(root / "masks" / f"{i:06d}.png")
    (root / "masks" / "000001.png").write_bytes(b"GIF89a... not a PNG")
    return root


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from PIL import Image

    from terraseg.models.image import build_image_model
    from terraseg.models.points import build_point_model
    from terraseg.models.surgery import save_checkpoint

    root = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    save_checkpoint(root / "salsa.pth", build_point_model("salsanext", 20, preset="tiny"), ontology="sim",
                    meta={"preprocess": {"projection": "sim-small"}})
    save_checkpoint(root / "img.pth", build_image_model("litefpn", "tu-mobilenetv3_small_100", ontology="sim",
                                                        channels=16),
                    meta={"preprocess": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                         "base_size": None}})
    p: dict[str, Path] = {"root": root, "salsa": root / "salsa.pth", "img": root / "img.pth"}
    # single files, each also in a folder of good ones (000000, 000002) as the bad 000001
    kinds = {
        "truncated.bin": _pts().tobytes()[:1000],
        "xyz.bin": _pts(5)[:, :3].tobytes(),  # 60 bytes: x, y, z without intensity
        "empty.bin": b"",
        "notpng.png": b"GIF89a... not a PNG",
        "badheader.ply": PLY_HEADER + _pts()[:, :3].tobytes(),
    }
    for name, data in kinds.items():
        stem, suffix = name.split(".")
        p[name] = root / "files" / name
        p[name].parent.mkdir(exist_ok=True)
        p[name].write_bytes(data)
        folder = p[f"{stem} folder"] = root / f"{stem}_folder"
        folder.mkdir()
        for i in (0, 2):
            if suffix == "png":
                Image.fromarray(_image(i)).save(folder / f"{i:06d}.png")
            else:
                _pts(seed=i).tofile(folder / f"{i:06d}.bin")
        (folder / f"000001.{suffix}").write_bytes(data)
    # dataset folders
    p["kitti truncated"] = _kitti(root / "k_trunc", lambda b, _: b.write_bytes(b.read_bytes()[:1000]))
    p["kitti xyz"] = _kitti(root / "k_xyz", lambda b, _: b.write_bytes(_pts(5)[:, :3].tobytes()))
    p["kitti garbage label"] = _kitti(root / "k_glabel", lambda _, lab: lab.write_bytes(b"\x13\x37\x00"))
    p["kitti count"] = _kitti(root / "k_count", lambda _, lab: lab.write_bytes(np.ones(40, np.uint32).tobytes()))
    p["kitti empty"] = _kitti(root / "k_empty", lambda b, lab: (b.write_bytes(b""), lab.write_bytes(b"")))
    p["generic notpng"] = _generic(root / "generic")
    p["good masks"] = root / "masks"
    p["good masks"].mkdir()
    for i in range(3):
        Image.fromarray(np.full((24, 32), i % 3, np.uint8)).save(p["good masks"] / f"{i:06d}.png")
    # bags: a ROS 1 bag (and its first half), an mcap bag with a corrupted chunk
    with BagWriter(root / "good.bag") as w:
        for i in range(5):
            w.write_image("/cam/image", _image(i), T0 + i * 10**8, "cam")
            w.write_pointcloud("/points", _pts(seed=i), stamp_ns=T0 + i * 10**8, frame_id="lidar")
    p["good.bag"] = root / "good.bag"
    p["truncated.bag"] = root / "truncated.bag"
    p["truncated.bag"].write_bytes(p["good.bag"].read_bytes()[:p["good.bag"].stat().st_size // 2])
    mc = p["mcap"] = root / "mc_bag"
    with BagWriter(mc, storage="mcap") as w:
        for i in range(12):  # 230 KB images: three 1 MiB chunks
            w.write_image("/cam/image", _image(i, (240, 320)), T0 + i * 10**8, "cam")
            w.write_pointcloud("/points", _pts(seed=i), stamp_ns=T0 + i * 10**8, frame_id="lidar")
    p["mcap images"] = root / "mcap_images.npy"
    np.save(p["mcap images"], np.stack([_image(i, (240, 320)) for i in range(12)]))
    with open(mc / "mc_bag.mcap", "r+b") as f:  # the middle of the file: inside the second chunk's image data
        f.seek((mc / "mc_bag.mcap").stat().st_size // 2)
        f.write(b"\xff" * 32)
    return p


def _one_error(r: object, path: Path, problem: str) -> str:
    """The result is exit status 1 and exactly one ``error:`` line naming ``path`` and ``problem``."""
    out: str = r.output  # type: ignore[attr-defined]
    assert r.exit_code == 1, out  # type: ignore[attr-defined]
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    assert str(path) in errors[0] and problem in errors[0], errors[0]
    return errors[0]


def _warnings(r: object) -> list[str]:
    return [line for line in r.output.splitlines() if line.startswith("warning:")]  # type: ignore[attr-defined]


NOT_SCAN = "is not a multiple of the point size (16 bytes = 4 float32 fields): the file is truncated or not a scan"
NOT_IMAGE = "unreadable or truncated image"
CHUNK = "chunk 2 of 3 (byte offset"


# ---------------------------------------------------------------------------------------------- the error cells
ERROR_CELLS = [
    # predict
    (["predict", "{salsa}", "{truncated.bin}", "-o", "{out}"], "{truncated.bin}", f"size 1000 bytes {NOT_SCAN}"),
    (["predict", "{salsa}", "{xyz.bin}", "-o", "{out}"], "{xyz.bin}", f"size 60 bytes {NOT_SCAN}"),
    (["predict", "{salsa}", "{truncated folder}", "-o", "{out}"], "{truncated folder}/000001.bin", NOT_SCAN),
    (["predict", "{img}", "{notpng.png}", "-o", "{out}"], "{notpng.png}", NOT_IMAGE),
    (["predict", "{img}", "{notpng folder}", "-o", "{out}"], "{notpng folder}/000001.png", NOT_IMAGE),
    (["predict", "{salsa}", "{badheader.ply}", "-o", "{out}"], "{badheader.ply}", ""),
    # eval-masks
    (["eval-masks", "{generic notpng}/masks", "{good masks}", "-O", "sim", "--out", "{out}"],
     "{generic notpng}/masks/000001.png", NOT_IMAGE),
    (["eval-masks", "{good masks}", "{generic notpng}/masks", "-O", "sim", "--out", "{out}"],
     "{generic notpng}/masks/000001.png", NOT_IMAGE),
    # inspect
    (["inspect", "{kitti truncated}", "--kind", "semantickitti", "--out", "{out}"],
     "{kitti truncated}/sequences/00/velodyne/000001.bin", f"size 1000 bytes {NOT_SCAN}"),
    (["inspect", "{kitti xyz}", "--kind", "semantickitti", "--out", "{out}"],
     "{kitti xyz}/sequences/00/velodyne/000001.bin", f"size 60 bytes {NOT_SCAN}"),
    (["inspect", "{kitti garbage label}", "--kind", "semantickitti", "--out", "{out}"],
     "{kitti garbage label}/sequences/00/labels/000001.label",
     "size 3 bytes is not a multiple of 4 (uint32 labels): the file is truncated or not a label file"),
    (["inspect", "{kitti count}", "--kind", "semantickitti", "--out", "{out}"],
     "{kitti count}/sequences/00/labels/000001.label", "40 labels for a scan of 100 points"),
    (["inspect", "{generic notpng}", "--ontology", "sim", "--out", "{out}"], "{generic notpng}/masks/000001.png",
     NOT_IMAGE),
    # extract
    (["extract", "{truncated.bag}", "-o", "{out}", "--image", "/cam/image"], "{truncated.bag}",
     "the file is truncated or damaged"),
    (["extract", "{mcap}", "-o", "{out}", "--image", "/cam/image"], "{mcap}/mc_bag.mcap",
     f"{CHUNK}"),
    # run
    (["run", "--lidar-model", "{salsa}", "--source", "{truncated folder}", "--no-realtime"],
     "{truncated folder}/000001.bin", NOT_SCAN),
    (["run", "--lidar-model", "{salsa}", "--source", "{xyz folder}", "--no-realtime"], "{xyz folder}/000001.bin",
     NOT_SCAN),
    (["run", "--lidar-model", "{salsa}", "--source", "{kitti garbage label}", "--kind", "semantickitti",
      "--no-realtime"], "{kitti garbage label}/sequences/00/labels/000001.label", "not a multiple of 4"),
    (["run", "--lidar-model", "{salsa}", "--source", "{kitti count}", "--kind", "semantickitti", "--no-realtime"],
     "{kitti count}/sequences/00/labels/000001.label", "40 labels for a scan of 100 points"),
    (["run", "--lidar-model", "{salsa}", "--source", "{badheader.ply}", "--no-realtime"], "{badheader.ply}", ""),
    (["run", "--camera-model", "{img}", "--source", "{notpng folder}", "--no-realtime"],
     "{notpng folder}/000001.png", NOT_IMAGE),
    (["run", "--lidar-model", "{salsa}", "--source", "{truncated.bag}", "--no-realtime"], "{truncated.bag}",
     "the file is truncated or damaged"),
    (["run", "--camera-model", "{img}", "--source", "{mcap}", "--camera-topic", "/cam/image", "--no-realtime"],
     "{mcap}/mc_bag.mcap", f"{CHUNK}"),
    # bag-info
    (["bag-info", "{truncated.bag}"], "{truncated.bag}", "the file is truncated or damaged"),
    (["bag-info", "{mcap}", "--verify"], "{mcap}/mc_bag.mcap", f"{CHUNK}"),
]


@pytest.mark.parametrize(("args", "where", "problem"), ERROR_CELLS,
                         ids=[f"{a[0]} {w.split('}')[0].strip('{')}" for a, w, _ in ERROR_CELLS])
def test_bad_input_is_one_clear_error(bad: dict[str, Path], tmp_path: Path, args: list[str], where: str,
                                      problem: str) -> None:
    def fill(text: str) -> str:
        for key, value in {**bad, "out": tmp_path / "out"}.items():
            text = text.replace("{" + key + "}", str(value))
        return text

    r = runner.invoke(app, [fill(a) for a in args] + ([] if args[0] == "bag-info" else ["-q"]))
    line = _one_error(r, Path(fill(where)), problem)
    if args[0] == "extract" and "mcap" in args[1]:
        assert "skip corrupted chunks with --skip-errors / --skip-bad" in line
        assert "CRC32 mismatch (stored 0x" in line
    out = tmp_path / "out"
    if args[0] in ("extract", "predict", "run"):  # nothing half-written under a final name
        assert not out.exists() or not [p for p in out.rglob("*") if p.is_file() and p.stat().st_size == 0]


# ---------------------------------------------------------------------------------------------- skip behaviour
@pytest.mark.parametrize(("folder", "model", "bad_file", "problem"), [
    ("truncated folder", "salsa", "000001.bin", NOT_SCAN),
    ("xyz folder", "salsa", "000001.bin", NOT_SCAN),
    ("notpng folder", "img", "000001.png", NOT_IMAGE),
    ("kitti garbage label", "salsa", "sequences/00/labels/000001.label", "not a multiple of 4"),
    ("kitti count", "salsa", "sequences/00/labels/000001.label", "40 labels for a scan of 100 points"),
])
def test_run_skip_errors_skips_each_bad_file_with_one_warning(bad: dict[str, Path], tmp_path: Path, folder: str,
                                                              model: str, bad_file: str, problem: str) -> None:
    flag = "--lidar-model" if model == "salsa" else "--camera-model"
    kind = ["--kind", "semantickitti"] if folder.startswith("kitti") else []
    r = runner.invoke(app, ["run", flag, str(bad[model]), "--source", str(bad[folder]), *kind, "--no-realtime",
                            "--skip-errors", "--out-dir", str(tmp_path / "o"), "-q"])
    assert r.exit_code == 0, r.output
    (warning,) = _warnings(r)
    assert warning.startswith(f"warning: skipped {bad[folder] / bad_file}: ") and problem in warning
    assert "2 predicted, 0 dropped, 1 skipped (bad data)" in " ".join(r.output.split())
    doc = json.loads((tmp_path / "o" / "runtime_stats.json").read_text())
    assert [s["skipped_by_stage"] for s in doc["streams"].values()] == [{"read": 1}]


def test_corrupted_mcap_chunk_is_skipped_with_a_warning(bad: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "data"
    r = runner.invoke(app, ["extract", str(bad["mcap"]), "-o", str(out), "--image", "/cam/image", "--points",
                            "/points", "--skip-bad", "-q"])
    assert r.exit_code == 0, r.output
    (warning,) = _warnings(r)
    assert warning.startswith(f"warning: skipped {bad['mcap'] / 'mc_bag.mcap'}: {CHUNK}")
    assert "CRC32 mismatch" in warning and "(messages lost: /cam/image 5, /points 5)" in warning
    skipped = (out / "skipped.txt").read_text().splitlines()[1:]
    assert [tuple(line.split("\t")[:2]) for line in skipped] == (
        [("/cam/image", str(i)) for i in range(5, 10)] + [("/points", str(i)) for i in range(4, 9)])
    # every image that was extracted is the one recorded (nothing corrupted got through)
    originals = np.load(bad["mcap images"])
    from terraseg.io.images import read_image

    stems = sorted(p.stem for p in (out / "images").iterdir())
    assert len(stems) == 6
    for stem in stems:
        sec, nsec = map(int, stem.split("_"))
        np.testing.assert_array_equal(read_image(out / "images" / f"{stem}.png"),
                                      originals[(sec * 10**9 + nsec - T0) // 10**8])
    # the runtime skips the chunk too, and counts its messages per stream
    r = runner.invoke(app, ["run", "--camera-model", str(bad["img"]), "--source", str(bad["mcap"]),
                            "--camera-topic", "/cam/image", "--no-realtime", "--skip-errors", "--stats",
                            str(tmp_path / "s.json"), "-q"])
    assert r.exit_code == 0, r.output
    assert len(_warnings(r)) == 1 and "7 predicted, 0 dropped, 5 skipped (bad data)" in " ".join(r.output.split())
    assert json.loads((tmp_path / "s.json").read_text())["streams"]["/cam/image"]["skipped_by_stage"] == {"read": 5}


def test_mcap_bags_carry_chunk_checksums_and_bag_info_verifies_them(bad: dict[str, Path], tmp_path: Path) -> None:
    from terraseg.io.bags.mcap import mcap_chunks, verify_chunks

    with BagWriter(tmp_path / "ok", storage="mcap") as w:
        for i in range(6):
            w.write_image("/cam/image", _image(i, (240, 320)), T0 + i * 10**8, "cam")
    layout = mcap_chunks(tmp_path / "ok" / "ok.mcap")
    assert len(layout.chunks) == 2 and all(c.crc != 0 for c in layout.chunks)
    assert layout.topics == {1: "/cam/image"} and [c.messages for c in layout.chunks] == [{1: 5}, {1: 1}]
    assert list(verify_chunks(tmp_path / "ok" / "ok.mcap")) == []
    r = runner.invoke(app, ["bag-info", str(tmp_path / "ok"), "--verify"])
    assert r.exit_code == 0 and "verified 2 chunk(s): every one matches its CRC32" in " ".join(r.output.split())
    with open_bag(tmp_path / "ok") as b:  # and they read back exactly
        for i, m in enumerate(b.messages("/cam/image")):
            np.testing.assert_array_equal(decode_image(m.msg), _image(i, (240, 320)))
    (bad_chunk,) = verify_chunks(bad["mcap"] / "mc_bag.mcap")
    assert bad_chunk.chunk.number == 2 and bad_chunk.problem.startswith("CRC32 mismatch")
    r = runner.invoke(app, ["bag-info", str(bad["mcap"])])  # without --verify: the index only, no chunk is read
    assert r.exit_code == 0 and "/cam/image" in r.output
    r = runner.invoke(app, ["bag-info", str(bad["good.bag"]), "--verify"])
    assert r.exit_code == 0 and "nothing to verify: rosbag1 bags store no checksums" in r.output


def test_eval_masks_skip_bad_lists_the_bad_mask(bad: dict[str, Path], tmp_path: Path) -> None:
    gt = bad["generic notpng"] / "masks"
    r = runner.invoke(app, ["eval-masks", str(bad["good masks"]), str(gt), "-O", "sim", "--skip-bad", "--out",
                            str(tmp_path / "e"), "-q"])
    assert r.exit_code == 0, r.output
    assert "evaluated 2 pair(s), skipped 1" in r.output
    (line,) = (tmp_path / "e" / "skipped.txt").read_text().splitlines()
    assert str(gt / "000001.png") in line and NOT_IMAGE in line


# ---------------------------------------------------------------------------------------------- empty scans
@pytest.mark.filterwarnings("error::RuntimeWarning")  # no numpy "Mean of empty slice" on the way
def test_an_empty_scan_is_a_warning_everywhere_and_no_nan_row(bad: dict[str, Path], tmp_path: Path) -> None:
    empty = bad["empty.bin"]
    r = runner.invoke(app, ["predict", str(bad["salsa"]), str(empty), "-o", str(tmp_path / "p"), "-q"])
    assert r.exit_code == 0, r.output
    assert _warnings(r) == [f"warning: {empty}: empty scan (0 points)"]
    assert (tmp_path / "p" / "labels" / "empty.label").stat().st_size == 0  # 0 labels for 0 points

    kitti = bad["kitti empty"]
    scan = kitti / "sequences" / "00" / "velodyne" / "000001.bin"
    r = runner.invoke(app, ["inspect", str(kitti), "--kind", "semantickitti", "--out", str(tmp_path / "i"), "-q"])
    assert r.exit_code == 0, r.output
    assert _warnings(r) == [f"warning: {scan}: empty scan (0 points)"]

    r = runner.invoke(app, ["eval", str(bad["salsa"]), "--data", str(kitti), "--kind", "semantickitti", "--split",
                            "all", "--data-option", "ontology=sim", "--out", str(tmp_path / "ev"), "-q"])
    assert r.exit_code == 0, r.output
    rows = (tmp_path / "ev" / "per_frame.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["frame", "00/000000", "00/000002"]
    assert "nan" not in "".join(rows).lower()
    assert any("frame 00/000001 has no labelled points to score (empty scan)" in w for w in _warnings(r))

    r = runner.invoke(app, ["run", "--lidar-model", str(bad["salsa"]), "--source", str(bad["empty folder"]),
                            "--no-realtime", "--out-dir", str(tmp_path / "r"), "-q"])
    assert r.exit_code == 0, r.output
    assert _warnings(r) == [f"warning: {bad['empty folder'] / '000001.bin'}: empty scan (0 points)"]
    assert "3 predicted" in " ".join(r.output.split())


def test_ply_header_counts_are_checked(bad: dict[str, Path], tmp_path: Path) -> None:
    from terraseg.errors import DataError
    from terraseg.io.ply import read_ply

    with pytest.raises(DataError, match=r"badheader\.ply: PLY header line 3 \('element vertex -100'\): the vertex "
                                        r"count '-100' is negative \(expected a whole number >= 0\)"):
        read_ply(bad["badheader.ply"])
    body = _pts(10)[:, :3].tobytes()
    p = tmp_path / "more.ply"
    p.write_bytes(PLY_HEADER.replace(b"-100", b"4") + body)  # the body holds 10 vertices, the header says 4
    with pytest.raises(DataError, match=r"more\.ply: 72 bytes follow the 4 vertices the header declares \(room for 6 "
                                        r"more\): the vertex count in the header is wrong"):
        read_ply(p)
    p.write_bytes(PLY_HEADER.replace(b"-100", b"x10") + body)
    with pytest.raises(DataError, match="the vertex count 'x10' is not a number"):
        read_ply(p)
    p.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n2\n3\n")
    with pytest.raises(DataError, match="2 more data line\\(s\\) follow the 1 vertices"):
        read_ply(p)
