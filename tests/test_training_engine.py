"""The training engine: recipes, optimiser groups and schedules, end-to-end runs on simulated data
(camera and both LiDAR models), resume, EMA, early stopping, the CLI, and 2-process DDP."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from terraseg.errors import ConfigError, DataError
from terraseg.training.config import TrainConfig, load_config
from terraseg.training.optim import encoder_depths, lr_factor, param_groups

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from terraseg.sim.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("sim")
    simulate_dataset(root, frames=14, seed=3, camera="tiny", lidar="small", progress=False,
                     splits={"train": 0.65, "val": 0.35})
    return root


def image_recipe(root: Path, out: Path, **over: object) -> TrainConfig:
    d = {
        "task": "image", "name": "img", "output": str(out), "seed": 0,
        "data": {"root": str(root / "camera"), "kind": "generic", "ontology": "sim", "batch_size": 4,
                 "val_batch_size": 4, "cache": True},
        "model": {"arch": "fpn", "encoder": "resnet18", "options": {"decoder_pyramid_channels": 32,
                                                                     "decoder_segmentation_channels": 32}},
        "loss": [{"name": "ce", "class_weights": "inv_sqrt"}],
        "augment": {"scale": [0.9, 1.1], "crop": [96, 128], "photometric": False},
        "optim": {"lr": 3e-3},
        "trainer": {"max_epochs": 2, "log_every": 1},
    }
    cfg = TrainConfig.from_dict(d)
    return cfg.with_overrides([f"{k}={json.dumps(v)}" for k, v in over.items()]) if over else cfg


# ------------------------------------------------------------------------------------- recipes
def test_recipe_validation_names_the_key(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"data": {"root": "x"}, "trainer": {"max_epoch": 3}}))
    with pytest.raises(ConfigError, match=r"r\.yaml: unknown key 'trainer\.max_epoch'"):
        load_config(p)
    p.write_text(yaml.safe_dump({"data": {"root": "x"}, "optim": {"lr": "fast"}}))
    with pytest.raises(ConfigError, match=r"optim\.lr must be a number, got 'fast'"):
        load_config(p)
    p.write_text(yaml.safe_dump({"model": {"arch": "fpn"}}))
    with pytest.raises(ConfigError, match="data.root is required"):
        load_config(p)
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(p, ["trainer.max_epochs"])


def test_overrides_and_saved_config_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"data": {"root": "x"}, "loss": "ce"}))
    cfg = load_config(p, ["trainer.max_epochs=7", "optim.betas=[0.8, 0.95]", "augment.crop=[64, 64]",
                          "model.weights=null", "trainer.devices=2"])
    assert cfg.trainer.max_epochs == 7 and cfg.optim.betas == (0.8, 0.95) and cfg.trainer.devices == 2
    assert cfg.augment == {"crop": [64, 64]} and cfg.model.weights is None and cfg.loss == "ce"
    cfg.save(tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match=r"optim\.name must be one of 'adamw', 'adam', 'sgd'"):
        cfg.with_overrides(["optim.name=lamb"])


def test_shipped_recipes_validate() -> None:
    recipes = sorted((REPO / "configs").glob("*.yaml"))
    assert len(recipes) >= 8
    for r in recipes:
        if "\nadapt:" in r.read_text():  # adaptation recipes: tests/test_adapt_run.py
            continue
        cfg = load_config(r)
        assert cfg.task in ("image", "points", "fusion"), r


# ------------------------------------------------------------------------------------- optimiser
def test_layer_decay_orders_encoder_stages() -> None:
    from terraseg.models.image import build_image_model
    from terraseg.training.config import OptimConfig

    model = build_image_model("upernet", "resnet18", num_classes=4)
    depths, top = encoder_depths(model)
    assert top == 5  # stem + layer1..4
    assert depths["encoder.conv1.weight"] == 0
    assert depths["encoder.layer1.0.conv1.weight"] == 1 and depths["encoder.layer4.1.conv2.weight"] == 4
    groups = param_groups(model, OptimConfig(lr=1.0, layer_decay=0.5, weight_decay=0.05))
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["encoder.conv1.weight"]["lr"] == pytest.approx(0.5**5)
    assert by_name["encoder.layer4.1.conv2.weight"]["lr"] == pytest.approx(0.5)
    head = next(n for n in by_name if not n.startswith("encoder."))
    assert by_name[head]["lr"] == pytest.approx(1.0)
    assert by_name["encoder.bn1.weight"]["weight_decay"] == 0.0  # norms: no decay
    assert by_name["encoder.conv1.weight"]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in model.parameters() if p.requires_grad)


def test_schedules_by_hand() -> None:
    from terraseg.training.config import ScheduleConfig

    poly = lr_factor(ScheduleConfig(name="poly", warmup_iters=10, warmup_ratio=0.1, power=1.0), 110)
    assert poly(0) == pytest.approx(0.1)
    assert poly(5) == pytest.approx(0.55)
    assert poly(10) == pytest.approx(1.0)
    assert poly(60) == pytest.approx(0.5)
    assert poly(110) == pytest.approx(0.0)
    cos = lr_factor(ScheduleConfig(name="cosine", min_lr_ratio=0.1), 100)
    assert cos(0) == pytest.approx(1.0) and cos(50) == pytest.approx(0.55) and cos(100) == pytest.approx(0.1)
    assert lr_factor(ScheduleConfig(name="constant"), 10)(7) == 1.0
    # horizon "time": progress is the larger of the step and time fractions
    used = [0.0]
    timed = lr_factor(ScheduleConfig(name="poly", power=1.0), 100, lambda: used[0])
    assert timed(20) == pytest.approx(0.8)
    used[0] = 0.5
    assert timed(20) == pytest.approx(0.5) and timed(70) == pytest.approx(0.3)
    used[0] = 1.7  # past the budget: the floor, never negative
    assert timed(20) == pytest.approx(0.0)


def test_time_horizon_needs_a_budget_and_reads_the_training_clock(sim_root: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning.pytorch.callbacks import Timer

    from terraseg.training.engine import train

    with pytest.raises(ConfigError, match="schedule.horizon: time needs trainer.max_time_s"):
        image_recipe(sim_root, tmp_path, **{"schedule.horizon": "time"})
    # the Timer callback says half the budget is spent at every step: the poly factor is at most 0.5
    monkeypatch.setattr(Timer, "time_elapsed", lambda self, stage="train": 1800.0)
    cfg = image_recipe(sim_root, tmp_path, **{"schedule.horizon": "time", "trainer.max_time_s": 3600,
                                              "trainer.max_epochs": 1, "data.max_train_frames": 8})
    res = train(cfg, progress=False)
    rows = [r for r in csv.DictReader((res.run_dir / "metrics.csv").open()) if r.get("train/lr")]
    lrs = [float(r["train/lr"]) for r in rows]
    assert lrs and max(lrs) == pytest.approx(0.5 * 3e-3, rel=1e-5), lrs  # step fraction < 0.5: time rules


# ------------------------------------------------------------------------------------- end to end
def _untrained_miou(cfg: TrainConfig) -> float:
    from terraseg.training.data import collate_images, collate_scans
    from terraseg.training.engine import _Run

    run = _Run(cfg, Path(cfg.output), progress=False)
    module = run.module.eval()
    module.on_validation_epoch_start()
    loader = torch.utils.data.DataLoader(run.val_set, batch_size=cfg.data.val_batch_size,
                                         collate_fn=collate_images if cfg.task == "image" else collate_scans)
    with torch.no_grad():
        for batch in loader:
            module.validation_step(batch, 0)
    assert module.val_cm is not None
    return 100.0 * module.preset.evaluate(module.val_cm).fine_miou


def test_image_training_improves_val_miou_and_writes_the_run(sim_root: Path, tmp_path: Path) -> None:
    from terraseg.models.image import load_image_model
    from terraseg.training.engine import train

    cfg = image_recipe(sim_root, tmp_path)
    before = _untrained_miou(cfg)
    res = train(cfg, progress=False)
    assert res.epochs == 2 and res.steps > 0
    assert res.best_miou > before + 5.0, (before, res.best_miou)
    run = res.run_dir
    for name in ("config.yaml", "history.jsonl", "best.json", "summary.json", "metrics.csv", "class_weights.json",
                 "checkpoints/best.pth", "checkpoints/last.pth", "checkpoints/last.ckpt", "val_confusion.npz"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    hist = res.history
    assert len(hist) == 2 and {"val/mIoU", "val/mAcc", "val/aAcc"} <= set(hist[0])
    assert any(k.startswith("val/IoU/") for k in hist[0])
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/lr", "val/mIoU"} <= set(header)
    model = load_image_model(res.best_checkpoint)
    from terraseg.models.surgery import read_checkpoint

    meta = read_checkpoint(res.best_checkpoint).meta
    assert meta["task"] == "image" and meta["preprocess"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["val"]["mIoU"] == pytest.approx(res.best_miou)
    assert model.ontology is not None and model.ontology.name == "sim"
    # the same name again is refused unless asked
    with pytest.raises(ConfigError, match="a run with this name exists"):
        train(cfg, progress=False)


def test_resume_continues_from_the_same_step(sim_root: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed after epoch 0 and resumed ends with the same weights as an uninterrupted run."""
    from terraseg.models.surgery import read_checkpoint
    from terraseg.training import callbacks
    from terraseg.training.engine import train

    over = {"data.max_train_frames": 4, "trainer.max_epochs": 3}
    straight = train(image_recipe(sim_root, tmp_path / "a", **over), progress=False)

    real = callbacks.EpochSummary.on_validation_end

    def kill_after_epoch_0(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        real(self, trainer, pl_module)
        if trainer.current_epoch == 0:
            raise RuntimeError("simulated kill")

    monkeypatch.setattr(callbacks.EpochSummary, "on_validation_end", kill_after_epoch_0)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(image_recipe(sim_root, tmp_path / "b", **over), progress=False)
    monkeypatch.setattr(callbacks.EpochSummary, "on_validation_end", real)
    first_steps = read_checkpoint(tmp_path / "b" / "img" / "checkpoints" / "last.pth").meta["step"]
    resumed = train(image_recipe(sim_root, tmp_path / "b", **over), resume=True, progress=False)
    assert resumed.steps == straight.steps == 3 * first_steps
    a = read_checkpoint(straight.last_checkpoint).state_dict
    b = read_checkpoint(resumed.last_checkpoint).state_dict
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert [h["val/mIoU"] for h in straight.history] == pytest.approx([h["val/mIoU"] for h in resumed.history],
                                                                       abs=1e-3)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(image_recipe(sim_root, tmp_path / "c"), resume=True, progress=False)


def test_ema_weights_are_validated_and_saved(sim_root: Path, tmp_path: Path) -> None:
    from terraseg.models.surgery import read_checkpoint
    from terraseg.training.engine import train

    cfg = image_recipe(sim_root, tmp_path, **{"ema.enabled": True, "ema.decay": 0.9, "trainer.max_epochs": 1,
                                              "data.max_train_frames": 8})
    res = train(cfg, progress=False)
    saved = read_checkpoint(res.last_checkpoint)
    assert saved.meta["ema"] is True
    full = torch.load(res.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    raw = {k[len("model."):]: v for k, v in full["state_dict"].items() if k.startswith("model.")}
    ema_state = next(v for k, v in full["callbacks"].items() if k.startswith("EMA"))["shadow"]
    key = next(k for k, v in raw.items() if v.dtype.is_floating_point and v.dim() == 4)
    torch.testing.assert_close(saved.state_dict[key], ema_state[key])
    assert not torch.allclose(raw[key], ema_state[key])


def test_early_stopping_stops(sim_root: Path, tmp_path: Path) -> None:
    from terraseg.training.engine import train

    cfg = image_recipe(sim_root, tmp_path, **{"optim.lr": 1e-9, "early_stopping.patience": 1,
                                              "early_stopping.min_delta": 5.0, "trainer.max_epochs": 10,
                                              "data.max_train_frames": 4})
    res = train(cfg, progress=False)
    assert res.stopped_early and res.epochs < 10


def test_bad_data_is_one_clear_error(sim_root: Path, tmp_path: Path) -> None:
    from terraseg.training.engine import train

    with pytest.raises(ConfigError, match=r"augment: .*unknown"):
        train(image_recipe(sim_root, tmp_path, **{"augment.rotate": 3}), progress=False)
    # sim ids 0..19 are not all traversability ids: the check names the mask file and the ids
    cfg = image_recipe(sim_root, tmp_path / "y", **{"data.ontology": "traversability"})
    with pytest.raises(DataError, match=r"masks/train/000000.png: .* not ids of ontology 'traversability'"):
        train(cfg, progress=False)


@pytest.mark.parametrize("arch,extra,gain", [
    ("randlanet", {"model.preset": "small", "data.max_points": 4096, "data.batch_size": 1, "optim.lr": 0.01,
                   "trainer.max_epochs": 4}, 1.0),
    ("salsanext", {"model.preset": "tiny", "data.projection": "sim-small", "data.batch_size": 2, "optim.lr": 0.01},
     3.0),
])
def test_point_training_improves_val_miou(sim_root: Path, tmp_path: Path, arch: str, extra: dict, gain: float) -> None:
    from terraseg.models.surgery import read_checkpoint
    from terraseg.training.engine import train

    d = {"task": "points", "name": arch, "output": str(tmp_path), "seed": 0,
         "data": {"root": str(sim_root / "lidar"), "kind": "semantickitti", "options": {"ontology": "sim"},
                  "ontology": "sim", "cache": True},
         "model": {"arch": arch},
         "loss": [{"name": "ce", "class_weights": "inv_sqrt"}, {"name": "lovasz"}],
         "augment": {"rotate_z": True, "scale": [0.95, 1.05]},
         "trainer": {"max_epochs": 3}}
    cfg = TrainConfig.from_dict(d).with_overrides([f"{k}={json.dumps(v)}" for k, v in extra.items()])
    before = _untrained_miou(cfg)
    res = train(cfg, progress=False)
    assert res.best_miou > before + gain, (before, res.best_miou)
    ck = read_checkpoint(res.best_checkpoint)
    assert ck.meta["task"] == "points" and ck.spec["arch"] == arch


# ------------------------------------------------------------------------------------- CLI and DDP
def _cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "terraseg", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def _write_recipe(sim_root: Path, tmp_path: Path, **over: object) -> Path:
    cfg = image_recipe(sim_root, tmp_path, **over)
    p = tmp_path / "recipe.yaml"
    cfg.save(p)
    return p


def test_cli_train_end_to_end(sim_root: Path, tmp_path: Path) -> None:
    p = _write_recipe(sim_root, tmp_path, **{"data.max_train_frames": 4})
    r = _cli("train", str(p), "trainer.max_epochs=1", "name=cli", "-q")
    assert r.returncode == 0, r.stderr
    assert "best val mIoU" in r.stdout
    assert (tmp_path / "cli" / "checkpoints" / "best.pth").is_file()
    saved = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert saved["trainer"]["max_epochs"] == 1 and saved["name"] == "cli"
    bad = _cli("train", str(p), "trainer.max_epoch=1")
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error:") and "trainer.max_epoch" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.slow
def test_ddp_two_processes_merge_metrics(sim_root: Path, tmp_path: Path) -> None:
    """2-process DDP on the CPU (gloo): both ranks train, validation shards are disjoint and the
    confusion matrix written by rank 0 counts every labelled validation pixel exactly once."""
    from terraseg.datasets import GenericDataset
    from terraseg.metrics import ConfusionMatrix

    p = _write_recipe(sim_root, tmp_path, **{"data.max_train_frames": 4, "trainer.max_epochs": 1,
                                             "data.val_batch_size": 1})
    r = _cli("train", str(p), "name=ddp", "--devices", "2", "--accelerator", "cpu", "-q", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cm = ConfusionMatrix.load(tmp_path / "ddp" / "val_confusion.npz")
    val = GenericDataset(sim_root / "camera", split="val")
    expected = sum(int(np.isin(f.image_labels, [0], invert=True).sum()) for f in val)
    assert cm.total == expected
    assert math.isfinite(json.loads((tmp_path / "ddp" / "summary.json").read_text())["best_mIoU"])


def test_copy_paste_and_repeat_factor_sampling_in_a_run(sim_root: Path, tmp_path: Path) -> None:
    from terraseg.models.surgery import read_checkpoint
    from terraseg.training.engine import _Run, train

    cfg = image_recipe(sim_root, tmp_path, **{"trainer.max_epochs": 1, "data.repeat_factor": 0.5,
                                              "augment": {"crop": None, "scale": [1.0, 1.0], "hflip": 0.0},
                                              "copy_paste": {"classes": "rare", "num_rare": 3, "p": 1.0,
                                                             "min_pixels": 4}})
    run = _Run(cfg, tmp_path, progress=False)
    rare = run.meta["copy_paste_classes"]
    assert len(rare) == 3
    # every training sample gets pasted instances of the rare classes
    rare_ids = [run.ontology.id_of(n) for n in rare]
    seen = sum(int(np.isin(run.train_set[i]["target"].numpy(), rare_ids).sum()) for i in range(len(run.train_set)))
    plain = sum(int(np.isin(f.image_labels, rare_ids).sum()) for f in run.train_frames.frames)
    assert seen > plain
    res = train(cfg, progress=False)
    assert read_checkpoint(res.last_checkpoint).meta["copy_paste_classes"] == rare


def test_progress_bar_labels_epoch_and_step_runs() -> None:
    """Lightning's own bar reads ``Epoch 3/-2`` in a ``max_steps`` run (max_epochs -1)."""
    from types import SimpleNamespace

    from terraseg.training.callbacks import TrainProgressBar

    bar = TrainProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1, max_steps=2840, global_step=54)  # type: ignore[assignment]
    assert bar._get_train_description(3) == "Epoch 3 (step 54/2840)"
    bar._trainer = SimpleNamespace(max_epochs=200, max_steps=-1, global_step=54)  # type: ignore[assignment]
    assert bar._get_train_description(3) == "Epoch 3/199"


# ------------------------------------------------------------------------------------- real data
@pytest.mark.realdata
def test_finetune_from_semantickitti_overfits_the_real_rellis_scan(shared_data: Path, tmp_path: Path) -> None:
    """The issue's real-data check of the whole fine-tuning path: a SemanticKITTI RandLA-Net
    checkpoint, the RELLIS-3D fine-tuning recipe and reader, class-row surgery, training and
    validation. Overfitting one labelled Ouster scan (32 steps on 16,384-point crops, no
    augmentation) must drive its mIoU up."""
    from terraseg.models.points import build_point_model
    from terraseg.models.surgery import read_checkpoint, save_checkpoint
    from terraseg.ontology import get_ontology
    from terraseg.training.engine import _Run, train

    root = tmp_path / "rellis"
    scan, labels = root / "00000" / "os1_cloud_node_kitti_bin", root / "00000" / "os1_cloud_node_semantickitti_label_id"
    scan.mkdir(parents=True)
    labels.mkdir(parents=True)
    os.symlink(shared_data / "rellis3d" / "000104.bin", scan / "000104.bin")
    os.symlink(shared_data / "rellis3d" / "000104.label", labels / "000104.label")
    line = "00000/os1_cloud_node_kitti_bin/000104.bin 00000/os1_cloud_node_semantickitti_label_id/000104.label\n"
    (root / "pt_train.lst").write_text(line * 8)  # 8 random crops of the scan per epoch
    (root / "pt_val.lst").write_text(line)

    kitti, rellis = get_ontology("semantickitti"), get_ontology("rellis3d")
    torch.manual_seed(0)
    source = build_point_model("randlanet", kitti.max_id + 1, in_channels=3, preset="small")
    weights = save_checkpoint(tmp_path / "kitti.pth", source, ontology=kitti)
    cfg = load_config(REPO / "configs" / "rellis3d_randlanet_finetune.yaml", [
        f"data.root={root}", f"model.weights={weights}", f"output={tmp_path / 'runs'}", "model.preset=small",
        "data.max_points=16384", "data.batch_size=1", "data.num_workers=0", "data.cache=true",
        "trainer.max_epochs=4", "trainer.val_every=2", "trainer.precision=32", "augment.enabled=false"])
    # class-row surgery: RELLIS-3D "person" starts from the SemanticKITTI "person" row
    start = _Run(cfg, Path(cfg.output), progress=False).model
    assert start.num_classes == rellis.max_id + 1
    torch.testing.assert_close(start.head[3].weight[rellis["person"].id], source.head[3].weight[kitti["person"].id])
    torch.testing.assert_close(start.fc0.linear.weight, source.fc0.linear.weight)  # the body is copied whole
    before = _untrained_miou(cfg)
    res = train(cfg, progress=False)
    assert res.steps == 32
    assert res.best_miou > before + 8.0, (before, res.best_miou)  # measured: 0.5 -> 13.9 %
    ck = read_checkpoint(res.best_checkpoint)
    assert ck.ontology is not None and ck.ontology.name == "rellis3d" and ck.spec["arch"] == "randlanet"
