"""The voxel U-Net recipes (configs/*_minkunet.yaml): the numbers they take from their sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from terraseg.models.points import build_point_model
from terraseg.training.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_semantickitti_minkunet_follows_spvnas_and_mmdet3d() -> None:
    cfg = load_config(CONFIGS / "semantickitti_minkunet.yaml")
    assert (cfg.data.kind, cfg.data.ontology, cfg.data.batch_size) == ("semantickitti", "semantickitti", 2)
    m = build_point_model(cfg.model.arch, 20, in_channels=cfg.model.in_channels, preset=cfg.model.preset,
                          **cfg.model.options)
    assert m.config.channels == (32, 32, 64, 128, 256, 256, 128, 96, 96) and m.config.layers == (2,) * 8
    assert m.config.voxel_size == pytest.approx(0.05) and m.config.in_channels == 4
    assert cfg.loss == [{"name": "ce"}]
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.24, 0.9, 1e-4)
    assert cfg.schedule.name == "cosine" and cfg.schedule.warmup_iters == 125
    assert cfg.trainer.max_epochs == 15
    assert cfg.augment["rotate_z"] and cfg.augment["scale"] == [0.95, 1.05] and cfg.augment["flip_x"] == 0.0


@pytest.mark.parametrize("stem,kind,onto", [("rellis3d_minkunet", "rellis3d-lidar", "rellis3d"),
                                            ("goose3d_minkunet", "goose3d", "goose")])
def test_offroad_minkunet_recipes_use_pointcepts_optimiser(stem: str, kind: str, onto: str) -> None:
    cfg = load_config(CONFIGS / f"{stem}.yaml")
    assert (cfg.data.kind, cfg.data.ontology, cfg.data.batch_size) == (kind, onto, 8)
    assert (cfg.model.arch, cfg.model.preset, cfg.model.in_channels) == ("voxelunet", "minkunet18", 4)
    assert cfg.model.options["voxel_size"] == pytest.approx(0.05)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 0.002, 0.005)
    assert cfg.trainer.max_epochs == 50 and cfg.schedule.min_lr_ratio == pytest.approx(1e-3)
    assert cfg.loss[0] == {"name": "ce", "class_weights": "enet"}


def test_sim_minkunet_matches_the_other_simulator_recipes() -> None:
    cfg = load_config(CONFIGS / "sim_minkunet.yaml")
    other = load_config(CONFIGS / "sim_randlanet.yaml")
    assert (cfg.data.root, cfg.data.kind, cfg.data.ontology) == (other.data.root, other.data.kind, other.data.ontology)
    assert cfg.schedule.horizon == "time" and cfg.trainer.max_time_s <= 300
    assert cfg.model.arch == "voxelunet"
