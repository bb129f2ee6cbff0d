"""``terraseg eval``, ``predict`` and ``export`` end to end on simulated data with random-weight models."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from terraseg.cli import app
from terraseg.io.labels import read_label_png
from terraseg.io.scans import read_label

runner = CliRunner()


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from terraseg.sim.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("sim")
    simulate_dataset(root, frames=6, seed=5, camera="tiny", lidar="small", progress=False,
                     splits={"train": 0.5, "val": 0.5})
    return root


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    from terraseg.models.image import build_image_model
    from terraseg.models.points import build_point_model
    from terraseg.models.surgery import save_checkpoint

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    img = build_image_model("litefpn", "tu-mobilenetv3_small_100", ontology="sim")
    save_checkpoint(d / "img.pth", img, meta={"task": "image", "preprocess": {"mean": [0.485, 0.456, 0.406],
                                                                               "std": [0.229, 0.224, 0.225],
                                                                               "base_size": None}})
    out = {"image": d / "img.pth"}
    for arch, preset, proj in (("salsanext", "tiny", "sim-small"), ("randlanet", "small", None)):
        m = build_point_model(arch, 20, preset=preset)
        meta = {"task": "points", "preprocess": {"projection": proj},
                "config": {"data": {"kind": "semantickitti", "options": {"ontology": "sim"}}}}
        save_checkpoint(d / f"{arch}.pth", m, ontology="sim", meta=meta)
        out[arch] = d / f"{arch}.pth"
    return out


def test_eval_image_writes_reports(sim_root: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    r = runner.invoke(app, ["eval", str(checkpoints["image"]), "--data", str(sim_root / "camera"), "--split", "val",
                            "--out", str(tmp_path / "ev"), "--tta", "scales=1,1.25 flip=true", "-q"])
    assert r.exit_code == 0, r.output
    assert "evaluated 3 frame(s)" in r.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 <= metrics["summary"]["mIoU"] <= 100
    rows = (tmp_path / "ev" / "per_frame.csv").read_text().splitlines()
    assert rows[0] == "frame,count,aAcc,mIoU" and len(rows) == 4
    for name in ("report.md", "per_class_columns.md", "confusion.png", "confusion.npz"):
        assert (tmp_path / "ev" / name).is_file()


def test_eval_image_sliding_window_matches_shape(sim_root: Path, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    r = runner.invoke(app, ["eval", str(checkpoints["image"]), "--data", str(sim_root / "camera"), "--split", "val",
                            "--out", str(tmp_path / "ev"), "--window", "slide", "--crop", "64x96", "--stride", "48x64",
                            "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "ev" / "metrics.json").is_file()


@pytest.mark.parametrize("arch", ["salsanext", "randlanet"])
def test_eval_and_predict_scans(sim_root: Path, checkpoints: dict[str, Path], tmp_path: Path, arch: str) -> None:
    from terraseg.io.ply import read_ply
    from terraseg.io.scans import read_bin

    r = runner.invoke(app, ["eval", str(checkpoints[arch]), "--data", str(sim_root / "lidar"), "--split", "val",
                            "--out", str(tmp_path / "ev"), "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["counted"] > 0
    scans = sim_root / "lidar" / "sequences" / "08" / "velodyne"
    r = runner.invoke(app, ["predict", str(checkpoints[arch]), str(scans), "--out", str(tmp_path / "pred"), "-q"])
    assert r.exit_code == 0, r.output
    first = sorted(scans.glob("*.bin"))[0]
    labels = read_label(tmp_path / "pred" / "labels" / f"{first.stem}.label")
    sem = labels[0] if isinstance(labels, tuple) else labels
    assert len(sem) == len(read_bin(first)) and int(np.max(sem)) < 20
    ply = read_ply(tmp_path / "pred" / "ply" / f"{first.stem}.ply")
    assert len(ply["x"]) == len(sem) and np.array_equal(ply["label"], sem)


def test_predict_images_and_goose_submission_guard(sim_root: Path, checkpoints: dict[str, Path],
                                                   tmp_path: Path) -> None:
    images = sim_root / "camera" / "images" / "val"
    r = runner.invoke(app, ["predict", str(checkpoints["image"]), str(images), "--out", str(tmp_path / "p"), "-q"])
    assert r.exit_code == 0, r.output
    ids = sorted((tmp_path / "p" / "ids").glob("*.png"))
    assert len(ids) == 3
    assert read_label_png(ids[0]).shape == (120, 160)
    assert len(list((tmp_path / "p" / "overlay").glob("*.jpg"))) == 3
    bad = runner.invoke(app, ["predict", str(checkpoints["image"]), str(images), "--out", str(tmp_path / "q"),
                              "--submission", "goose", "-q"])
    assert bad.exit_code == 1 and "needs a model of the goose ontology" in bad.output
    assert not (tmp_path / "q").exists()


def test_goose_submission_zip(tmp_path: Path) -> None:
    import torch

    from terraseg.io.images import write_image
    from terraseg.models.image import build_image_model
    from terraseg.models.surgery import save_checkpoint

    torch.manual_seed(0)
    m = build_image_model("litefpn", "tu-mobilenetv3_small_100", ontology="goose")
    save_checkpoint(tmp_path / "g.pth", m, meta={"task": "image"})
    img_dir = tmp_path / "images" / "scenario_a"
    img_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(img_dir / f"2023-01-01_{i:04d}_windshield_vis.png", rng.integers(0, 255, (64, 96, 3), np.uint8))
    r = runner.invoke(app, ["predict", str(tmp_path / "g.pth"), str(tmp_path / "images"), "--out", str(tmp_path / "o"),
                            "--submission", "goose", "-q"])
    assert r.exit_code == 0, r.output
    with zipfile.ZipFile(tmp_path / "o" / "submission_goose.zip") as z:
        names = sorted(z.namelist())
    assert len(names) == 2 and all(n.endswith("_windshield_vis.png") for n in names)


def test_export_image_and_range_models(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    r = runner.invoke(app, ["export", str(checkpoints["image"]), "--onnx", str(tmp_path / "img.onnx"),
                            "--size", "64x96"])
    assert r.exit_code == 0, r.output
    assert "argmax agreement" in r.output and (tmp_path / "img.onnx").is_file()
    r = runner.invoke(app, ["export", str(checkpoints["salsanext"]), "--onnx", str(tmp_path / "r.onnx")])
    assert r.exit_code == 0, r.output
    assert "range image 32x512" in " ".join(r.output.split())
    r = runner.invoke(app, ["export", str(checkpoints["randlanet"]), "--onnx", str(tmp_path / "x.onnx")])
    assert r.exit_code == 1 and "RandLA-Net" in r.output and not (tmp_path / "x.onnx").exists()


def test_eval_errors_are_one_line(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    r = runner.invoke(app, ["eval", str(tmp_path / "missing.pth"), "--data", str(tmp_path)])
    assert r.exit_code == 1 and "checkpoint file not found" in r.output
    r = runner.invoke(app, ["eval", str(checkpoints["image"])])
    assert r.exit_code == 1 and "give --data" in r.output
