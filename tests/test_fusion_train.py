"""``task: fusion`` end to end: recipe validation, a tiny cross-modal run through ``terraseg train``
on simulated paired frames (with an unlabelled target domain), then ``terraseg eval`` (2D, 3D,
2D+3D reports that reproduce the training validation) and ``terraseg predict``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from terraseg.cli import app
from terraseg.errors import ConfigError
from terraseg.training.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from terraseg.sim.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("simfusion")
    simulate_dataset(root, frames=5, seed=11, camera="tiny", lidar="small", progress=False,
                     splits={"train": 0.6, "val": 0.4})
    return root


def fusion_recipe(root: Path, out: Path, **extra: object) -> dict:
    d: dict = {
        "task": "fusion", "name": "xm", "output": str(out), "seed": 0,
        "data": {"root": str(root), "kind": "sim", "batch_size": 1, "val_batch_size": 1, "cache": True},
        "model": {"net2d": {"arch": "litefpn", "encoder": "tu-mobilenetv3_small_100", "options": {"channels": 16}},
                  "net3d": {"arch": "randlanet", "preset": "small", "in_channels": 4,
                            "options": {"input_norm": True, "dropout": 0.0}}},
        "loss": [{"name": "ce", "class_weights": "log"}],
        "augment": {"image": {"scale": [1.0, 1.0], "crop": None, "photometric": False},
                    "points": {"enabled": False}},
        "fusion": {"target": {"root": str(root), "kind": "sim", "split": "val"}},
        "optim": {"name": "adam", "lr": 0.01},
        "trainer": {"max_epochs": 4, "val_every": 4, "log_every": 1},
    }
    for k, v in extra.items():
        node = d
        parts = k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return d


# ------------------------------------------------------------------------------------- recipes
def test_fusion_recipe_validation_names_the_key(tmp_path: Path) -> None:
    d = fusion_recipe(tmp_path, tmp_path)
    cfg = TrainConfig.from_dict(d)
    assert cfg.fusion is not None and cfg.fusion.lambda_xm_src == 1.0 and cfg.fusion.lambda_xm_trg == 0.1
    assert cfg.model.net2d is not None and cfg.model.net2d.arch == "litefpn"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # the saved config.yaml round-trips
    bad = fusion_recipe(tmp_path, tmp_path)
    del bad["model"]["net3d"]
    with pytest.raises(ConfigError, match="task: fusion needs model.net2d and model.net3d"):
        TrainConfig.from_dict(bad)
    with pytest.raises(ConfigError, match=r"unknown key 'fusion.lambda_xm'"):
        TrainConfig.from_dict(fusion_recipe(tmp_path, tmp_path, **{"fusion.lambda_xm": 1.0}))
    with pytest.raises(ConfigError, match=r"fusion.sampling must be one of 'bilinear', 'nearest'"):
        TrainConfig.from_dict(fusion_recipe(tmp_path, tmp_path, **{"fusion.sampling": "cubic"}))
    with pytest.raises(ConfigError, match="fusion.lambda_xm_trg must be >= 0"):
        TrainConfig.from_dict(fusion_recipe(tmp_path, tmp_path, **{"fusion.lambda_xm_trg": -0.1}))
    with pytest.raises(ConfigError, match="unknown key augment.scale"):
        TrainConfig.from_dict(fusion_recipe(tmp_path, tmp_path, **{"augment.scale": [1, 2]}))
    img = {"task": "image", "data": {"root": "x"}, "model": {"net2d": {"arch": "fpn"}}}
    with pytest.raises(ConfigError, match="model.net2d applies to task: fusion only"):
        TrainConfig.from_dict(img)
    shipped = load_config(REPO / "configs" / "sim_xmuda.yaml")
    assert shipped.task == "fusion" and shipped.fusion is not None
    assert (shipped.fusion.lambda_xm_src, shipped.fusion.lambda_xm_trg) == (1.0, 0.1)  # xMUDA's
    assert shipped.optim.name == "adam" and shipped.optim.lr == pytest.approx(1e-3)   # xMUDA's


def test_log_class_weights_of_xmuda_by_hand() -> None:
    from terraseg.datasets.stats import ClassStats
    from terraseg.ontology import get_ontology

    st = ClassStats(get_ontology("sim"), "points")
    st.update_labels(np.array([2] * 60 + [5] * 30 + [7] * 10, np.uint8), "train", "x")
    w = st.class_weights("log", normalize=False)
    # xMUDA: log(5 * total / count) per class (0 for unseen ones)
    assert w[[2, 5, 7]].tolist() == pytest.approx([np.log(5 / 0.6), np.log(5 / 0.3), np.log(5 / 0.1)])
    assert w[3] == 0.0


# ------------------------------------------------------------------------------------- train / eval / predict
@pytest.fixture(scope="module")
def trained(sim_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    recipe = out / "xm.yaml"
    recipe.write_text(yaml.safe_dump(fusion_recipe(sim_root, out)))
    r = runner.invoke(app, ["train", str(recipe), "-q"])
    assert r.exit_code == 0, r.output
    assert "trained xm:" in r.output and "best val mIoU" in r.output
    return out / "xm"


def _majority_miou(sim_root: Path) -> float:
    """mIoU of predicting the most frequent class of the val points in view everywhere."""
    from terraseg.datasets import open_dataset
    from terraseg.metrics import default_preset
    from terraseg.models.fusion import frame_view
    from terraseg.ontology import get_ontology

    preset = default_preset(get_ontology("sim"))
    labels = np.concatenate([f.point_labels[frame_view(f).index] for f in open_dataset(sim_root, split="val")])
    major = np.bincount(labels[labels != 0]).argmax()
    cm = preset.confusion_matrix().update(np.full_like(labels, major), labels)
    return float(preset.evaluate(cm).summary()["mIoU"])


def test_train_writes_a_fusion_run_that_learns(trained: Path, sim_root: Path) -> None:
    from terraseg.models.surgery import read_checkpoint

    best = json.loads((trained / "best.json").read_text())
    for key in ("val/mIoU", "val/mIoU_2d", "val/mIoU_3d", "val/mAcc_2d", "val/aAcc_3d"):
        assert key in best
    # 12 steps on 3 frames: every prediction beats labelling every point with the majority class
    base = _majority_miou(sim_root)
    assert best["val/mIoU"] > base + 2.0, (best, base)
    assert min(best["val/mIoU_2d"], best["val/mIoU_3d"]) > base, (best, base)
    with open(trained / "metrics.csv") as fh:
        cols = next(csv.reader(fh))
    for part in ("seg_2d", "seg_3d", "xm_src_2d", "xm_src_3d", "xm_trg_2d", "xm_trg_3d"):
        assert f"train/loss_{part}" in cols
    ck = read_checkpoint(trained / "checkpoints" / "best.pth")
    assert ck.spec["arch"] == "fusion" and ck.spec["net2d"]["arch"] == "litefpn"
    assert ck.spec["net3d"]["arch"] == "randlanet" and ck.meta["task"] == "fusion"
    pre = ck.meta["preprocess"]
    assert pre["near"] == 0.1 and pre["base_size"] is None and len(pre["mean"]) == 3
    assert any(k.startswith("net2d.") for k in ck.state_dict) and "mimic3d.weight" in ck.state_dict
    saved = yaml.safe_load((trained / "config.yaml").read_text())
    assert saved["task"] == "fusion" and saved["fusion"]["lambda_xm_src"] == 1.0


def test_eval_reproduces_the_training_validation(trained: Path, tmp_path: Path) -> None:
    best = json.loads((trained / "best.json").read_text())
    r = runner.invoke(app, ["eval", str(trained / "checkpoints" / "best.pth"), "--split", "val",
                            "--out", str(tmp_path / "ev"), "-q"])
    assert r.exit_code == 0, r.output
    assert "in the camera's view" in r.output
    got = json.loads((tmp_path / "ev" / "modalities.json").read_text())
    for mod, key in (("2d+3d", "val/mIoU"), ("2d", "val/mIoU_2d"), ("3d", "val/mIoU_3d")):
        assert got["results"][mod]["summary"]["mIoU"] == pytest.approx(best[key], abs=0.02), mod
    for sub in ("", "2d/", "3d/"):
        assert (tmp_path / "ev" / f"{sub}report.md").is_file() and (tmp_path / "ev" / f"{sub}confusion.npz").is_file()
    text = (tmp_path / "ev" / "modalities.md").read_text()
    assert "| 2D+3D |" in text and "| 3D |" in text
    rows = (tmp_path / "ev" / "per_frame.csv").read_text().splitlines()
    assert rows[0].startswith("frame,points,in_view,mIoU_2d") and len(rows) == 3


def test_predict_writes_labels_for_the_points_in_view(trained: Path, sim_root: Path, tmp_path: Path) -> None:
    from terraseg.datasets import open_dataset
    from terraseg.io.images import read_image
    from terraseg.io.scans import read_label
    from terraseg.models.fusion import FusionPredictor

    out = tmp_path / "pred"
    ckpt = trained / "checkpoints" / "best.pth"
    r = runner.invoke(app, ["predict", str(ckpt), str(sim_root), "--split", "val", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "predicted 2 frame(s)" in r.output
    frame = open_dataset(sim_root, split="val")[1]
    sem, _ = read_label(out / "labels" / "val" / "000001.label", len(frame.points))
    idx = np.load(out / "in_view" / "val" / "000001.npy")
    pred = FusionPredictor.from_checkpoint(ckpt, device="cpu").predict(frame)
    assert idx.tolist() == pred.index.tolist()
    assert sem[idx].tolist() == pred.labels.tolist()
    outside = np.setdiff1d(np.arange(len(sem)), idx)
    assert len(outside) > 0 and (sem[outside] == 0).all()  # sim's ignored id (void) outside the view
    s2, _ = read_label(out / "labels_2d" / "val" / "000001.label", len(frame.points))
    assert s2[idx].tolist() == pred.labels_2d.tolist()
    assert read_image(out / "overlay" / "val" / "000001.jpg").shape == frame.image.shape
    bad = runner.invoke(app, ["predict", str(ckpt), str(sim_root / "lidar" / "sequences" / "08" / "velodyne" /
                                                         "000000.bin"), "--out", str(tmp_path / "p2")])
    assert bad.exit_code == 1 and "give a dataset folder" in bad.output


def test_bad_paired_data_is_one_clear_error(sim_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "nocalib"
    shutil.copytree(sim_root, root)
    (root / "camera" / "calib.yaml").unlink()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(fusion_recipe(root, tmp_path / "runs", **{"fusion.target": None})))
    r = runner.invoke(app, ["train", str(recipe), "-q"])
    assert r.exit_code == 1
    assert "error:" in r.output and "(frame train/000000): no calibration" in r.output
    assert "Traceback" not in r.output
    recipe.write_text(yaml.safe_dump(fusion_recipe(sim_root, tmp_path / "runs2", **{
        "data.batch_size": 2, "fusion.target": None})))
    r = runner.invoke(app, ["train", str(recipe), "-q"])
    assert r.exit_code == 1 and "RandLA-Net batches need equal point counts: set data.max_points" in r.output


def test_a_fusion_checkpoint_is_refused_where_a_camera_model_is_expected(trained: Path) -> None:
    from terraseg.errors import DataError
    from terraseg.inference.image import ImagePredictor

    with pytest.raises(DataError, match="a cross-modal .* checkpoint, not a camera model"):
        ImagePredictor.from_checkpoint(trained / "checkpoints" / "best.pth")
    r = runner.invoke(app, ["export", str(trained / "checkpoints" / "best.pth"), "--onnx", "x.onnx"])
    assert r.exit_code == 1 and "ONNX export of cross-modal (fusion) models is not supported" in r.output


def test_voxel_unet_as_the_3d_network_trains_evaluates_and_adapts(sim_root: Path, tmp_path: Path) -> None:
    """The shipped recipes' 3D network (the sparse voxel U-Net, xMUDA's SCN preset): a fusion run
    learns, its eval reproduces the training validation, and ``terraseg adapt`` continues it with
    a feature-space query (kNN entropy reads the voxel U-Net's per-point features)."""
    vox = {"arch": "voxelunet", "preset": "scn", "in_channels": 4, "options": {"voxel_size": 0.1}}
    d = fusion_recipe(sim_root, tmp_path / "runs", **{"model.net3d": vox, "fusion.target": None})
    recipe = tmp_path / "vox.yaml"
    recipe.write_text(yaml.safe_dump(d))
    r = runner.invoke(app, ["train", str(recipe), "-q"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "xm"
    best = json.loads((run / "best.json").read_text())
    base = _majority_miou(sim_root)
    assert best["val/mIoU"] > base, (best, base)
    ckpt = run / "checkpoints" / "best.pth"
    from terraseg.models.surgery import read_checkpoint

    spec = read_checkpoint(ckpt).spec
    assert spec["net3d"]["arch"] == "voxelunet" and spec["net3d"]["voxel_size"] == 0.1
    ev = runner.invoke(app, ["eval", str(ckpt), "--split", "val", "--out", str(tmp_path / "ev"), "-q"])
    assert ev.exit_code == 0, ev.output
    got = json.loads((tmp_path / "ev" / "modalities.json").read_text())["results"]
    for mod, key in (("2d+3d", "val/mIoU"), ("3d", "val/mIoU_3d")):
        assert got[mod]["summary"]["mIoU"] == pytest.approx(best[key], abs=0.02), mod
    ad = dict(d, name="ad", trainer={"max_steps": 2, "max_epochs": None, "val_every_steps": 2, "log_every": 1},
              loss=[{"name": "ce"}])
    ad["adapt"] = {"source": str(ckpt), "active": {"strategy": "knn_entropy", "budget": 5.0, "at": [0.0],
                                                    "annotator": "oracle"}}
    (tmp_path / "ad.yaml").write_text(yaml.safe_dump(ad))
    r = runner.invoke(app, ["adapt", str(tmp_path / "ad.yaml"), "-q"])
    assert r.exit_code == 0, r.output
    rounds = json.loads((tmp_path / "runs" / "ad" / "adapt_state.json").read_text())["rounds"]
    assert len(rounds) == 1 and rounds[0]["strategy"] == "knn_entropy" and rounds[0]["labelled_points"] > 0
