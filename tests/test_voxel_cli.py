"""``terraseg train / eval / predict / export`` with the sparse voxel U-Net, end to end on a tiny
simulated dataset (the engine's VoxelTask, EMA, resume, the checkpoint, whole-scan prediction)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from terraseg.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from terraseg.sim.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("sim")
    simulate_dataset(root, frames=6, seed=5, camera=None, lidar="small", progress=False,
                     splits={"train": 0.5, "val": 0.5})
    return root


def recipe(sim_root: Path, out: Path) -> Path:
    """The shipped simulator recipe, shrunk: a two-level network, 2 epochs, no time budget."""
    d = yaml.safe_load((REPO / "configs" / "sim_minkunet.yaml").read_text())
    d["output"] = str(out)
    d["data"]["root"] = str(sim_root / "lidar")
    d["model"]["preset"] = "custom"
    d["model"]["options"] = {**d["model"].get("options", {}), "channels": [8, 16, 16, 16, 16], "layers": [1, 1, 1, 1]}
    d["trainer"] = {"max_epochs": 2, "log_every": 1}
    d["schedule"] = {"name": "cosine"}
    d["ema"] = {"enabled": True, "decay": 0.99}
    p = out / "recipe.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_train_eval_predict_and_export(sim_root: Path, tmp_path: Path) -> None:
    from terraseg.inference import load_predictor
    from terraseg.io.scans import read_bin, read_label
    from terraseg.models.surgery import read_checkpoint

    p = recipe(sim_root, tmp_path)
    r = runner.invoke(app, ["train", str(p), "name=vox", "-q"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "vox"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and np.isfinite(summary["best_mIoU"])
    ck = read_checkpoint(run / "checkpoints" / "best.pth")
    assert ck.spec["arch"] == "voxelunet" and ck.spec["voxel_size"] == pytest.approx(0.1)
    assert ck.ontology is not None and ck.ontology.name == "sim"
    # resume: two more epochs continue from step 2
    r = runner.invoke(app, ["train", str(p), "name=vox", "trainer.max_epochs=4", "--resume", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "summary.json").read_text())["steps"] == 4

    best = run / "checkpoints" / "best.pth"
    r = runner.invoke(app, ["eval", str(best), "--split", "val", "--out", str(tmp_path / "ev"), "-q"])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["counted"] > 0 and 0 <= metrics["summary"]["mIoU"] <= 100

    # LiDAR TTA (rotation / flip voting) through eval: the same frames, a different answer than without
    tta = "rotations=2 flip=y"
    r = runner.invoke(app, ["eval", str(best), "--split", "val", "--out", str(tmp_path / "ev-tta"), "--tta", tta,
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "lidar model voxelunet on pytorch:cpu" in said and "tta angles=0,180 flip=y" in said
    with_tta = json.loads((tmp_path / "ev-tta" / "metrics.json").read_text())
    assert with_tta["counted"] == metrics["counted"] and 0 <= with_tta["summary"]["mIoU"] <= 100

    scans = sim_root / "lidar" / "sequences" / "08" / "velodyne"
    r = runner.invoke(app, ["predict", str(best), str(scans), "--out", str(tmp_path / "pred"), "-q"])
    assert r.exit_code == 0, r.output
    first = sorted(scans.glob("*.bin"))[0]
    labels = read_label(tmp_path / "pred" / "labels" / f"{first.stem}.label")
    sem = labels[0] if isinstance(labels, tuple) else labels
    assert len(sem) == len(read_bin(first)) and int(np.max(sem)) < 20
    assert (tmp_path / "pred" / "ply" / f"{first.stem}.ply").is_file()
    # predict --tta writes what load_predictor's TTA pipeline (the library) gives for the scan
    r = runner.invoke(app, ["predict", str(best), str(scans), "--out", str(tmp_path / "pred-tta"), "--tta", tta,
                            "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    ref = load_predictor(best, device="cpu", tta=tta)
    assert ref.kind == "lidar" and ref.arch == "voxelunet" and ref.ontology is not None
    want = ref.predict_scan(read_bin(first))
    got, _ = read_label(tmp_path / "pred-tta" / "labels" / f"{first.stem}.label")
    np.testing.assert_array_equal(got, want.labels)
    assert want.crops == 4  # four views voted
    plain = load_predictor(best, device="cpu").predict_scan(read_bin(first))
    assert np.abs(want.probabilities - plain.probabilities).max() > 1e-4  # the views change the probabilities

    r = runner.invoke(app, ["export", str(best), "--onnx", str(tmp_path / "v.onnx")])
    assert r.exit_code == 1 and "ONNX export of sparse voxel convolution is not supported" in " ".join(r.output.split())
    assert "Traceback" not in r.output and not (tmp_path / "v.onnx").exists()
    r = runner.invoke(app, ["predict", str(best), str(scans), "--out", str(tmp_path / "pred2"), "--regular", "-q"])
    assert r.exit_code == 1 and "--regular applies to RandLA-Net only" in r.output


def test_runtime_pytorch_lidar_backend_runs_the_voxel_net(sim_root: Path, tmp_path: Path) -> None:
    import torch

    from terraseg.inference.runtime.backends import load_backend, model_kind
    from terraseg.io.scans import read_bin
    from terraseg.models.points import build_point_model, predict_scan
    from terraseg.models.surgery import save_checkpoint

    torch.manual_seed(0)
    m = build_point_model("voxelunet", 20, preset="custom", channels=(8, 8, 8, 8, 8), layers=(1, 1, 1, 1))
    path = save_checkpoint(tmp_path / "v.pth", m, ontology="sim", meta={"task": "points"})
    assert model_kind(path) == "lidar"
    backend = load_backend(path, device="cpu")
    pts = read_bin(sorted((sim_root / "lidar" / "sequences" / "08" / "velodyne").glob("*.bin"))[0])
    assert np.array_equal(backend.predict_fn(pts).labels, predict_scan(m.eval(), pts).labels)

    # `terraseg run --lidar-model` end to end, with LiDAR TTA: the labels load_predictor gives
    from terraseg.inference import load_predictor
    from terraseg.io.scans import read_label, write_bin

    src = tmp_path / "scans"
    src.mkdir()
    write_bin(src / "000000.bin", pts)
    write_bin(src / "000001.bin", pts[::2])
    r = runner.invoke(app, ["run", "--lidar-model", str(path), "--source", str(src), "--no-realtime", "--out-dir",
                            str(tmp_path / "out"), "--threads", "1", "--lidar-tta", "rotations=2 flip=y",
                            "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    assert "2 message(s) in, 2 predicted" in " ".join(r.output.split())
    ref = load_predictor(path, device="cpu", tta="rotations=2 flip=y").predict_scan(pts[::2]).labels
    got, _ = read_label(tmp_path / "out" / "scans" / "labels" / "000001.label")
    np.testing.assert_array_equal(got, ref)


def test_empty_scans_are_errors_naming_the_scan_in_predict_and_run(tmp_path: Path) -> None:
    """A scan without points stops ``predict`` and ``run`` with one line that names the scan (not
    the model file), also through LiDAR TTA; ``run --skip-errors`` skips it and goes on."""
    import torch

    from terraseg.io.scans import write_bin
    from terraseg.models.points import build_point_model
    from terraseg.models.surgery import save_checkpoint

    torch.manual_seed(0)
    m = build_point_model("voxelunet", 20, preset="custom", channels=(8, 8, 8, 8, 8), layers=(1, 1, 1, 1))
    path = save_checkpoint(tmp_path / "v.pth", m, ontology="sim", meta={"task": "points"})
    src = tmp_path / "scans"
    src.mkdir()
    rng = np.random.default_rng(0)
    write_bin(src / "000000.bin", np.concatenate([rng.uniform(-20, 20, (500, 3)), rng.uniform(0, 0.5, (500, 1))],
                                                 axis=1).astype(np.float32))
    write_bin(src / "000001.bin", np.zeros((0, 4), np.float32))
    for tta in ([], ["--tta", "flip=y"]):
        r = runner.invoke(app, ["predict", str(path), str(src), "--out", str(tmp_path / "pred"), "--device", "cpu",
                                "-q", *tta])
        said = " ".join(r.output.split())
        assert r.exit_code == 1 and "Traceback" not in r.output
        assert f"error: {src}/000001: no points with a return" in said  # was: named v.pth
    assert not (tmp_path / "pred" / "labels" / "000001.label").exists()
    run = ["run", "--lidar-model", str(path), "--source", str(src), "--no-realtime", "--threads", "1", "--device",
           "cpu", "-q"]
    r = runner.invoke(app, [*run, "--out-dir", str(tmp_path / "out")])
    assert r.exit_code == 1 and "error: scans/000001: no points with a return" in " ".join(r.output.split())
    r = runner.invoke(app, [*run, "--out-dir", str(tmp_path / "out2"), "--skip-errors"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out2" / "scans" / "labels" / "000000.label").is_file()
    assert not (tmp_path / "out2" / "scans" / "labels" / "000001.label").exists()
