"""Training reliability: exact resume from any ``last.ckpt`` (mid-epoch, killed during a validation,
at an epoch end with early stopping on), logs appended across resumes, damaged or foreign resume
checkpoints, failed starts that leave nothing behind, and DDP with fewer validation frames than
processes."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from terraseg.errors import ConfigError, DataError
from terraseg.training.config import TrainConfig

TRAIN_FRAMES = 8


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one thread (several on cores that other test processes share spin for seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from terraseg.sim.dataset import simulate_dataset

    root = tmp_path_factory.mktemp("sim")
    simulate_dataset(root, frames=11, seed=3, camera="tiny", lidar=None, progress=False,
                     splits={"train": 0.8, "val": 0.2})
    return root


def recipe(root: Path, out: Path, **over: object) -> TrainConfig:
    """A small camera recipe: LiteFPN (dropout on), 64x64 crops, 8 frames in batches of 2 (4 steps an epoch)."""
    d = {
        "task": "image", "name": "r", "output": str(out), "seed": 0,
        "data": {"root": str(root / "camera"), "kind": "generic", "ontology": "sim", "batch_size": 2,
                 "val_batch_size": 2, "cache": True, "max_train_frames": TRAIN_FRAMES, "max_val_frames": 2},
        "model": {"arch": "litefpn", "encoder": "tu-mobilenetv3_small_050",
                  "options": {"channels": 16, "aux_channels": 16, "dropout": 0.3}},
        "loss": [{"name": "ce", "class_weights": "inv_sqrt"}],
        "augment": {"scale": [0.8, 1.2], "crop": [64, 64]},
        "optim": {"lr": 3e-3},
        "trainer": {"max_epochs": 1, "log_every": 1},
    }
    cfg = TrainConfig.from_dict(d)
    return cfg.with_overrides([f"{k}={json.dumps(v)}" for k, v in over.items()]) if over else cfg


def _metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _by_step(rows: list[dict[str, str]], key: str) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in rows:
        if r.get(key):
            step = int(r["step"])
            assert step not in out, f"{key} logged twice at step {step}"
            out[step] = float(r[key])
    return out


# ------------------------------------------------------------------------------------- exact resume
def test_resume_at_any_saved_step_is_exact_and_keeps_every_row(sim_root: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """One uninterrupted run against one killed twice: once during the validation at the end of epoch 0
    (it resumes mid-epoch from the step-3 checkpoint and validates again), once right after epoch 1's
    validation checkpoint (it resumes at an epoch end, with early stopping on). Weights, validation
    history and metrics.csv rows must be those of the uninterrupted run; the resumed segments even
    load data with 2 worker processes."""
    from terraseg.models.surgery import read_checkpoint
    from terraseg.training import callbacks
    from terraseg.training.engine import train
    from terraseg.training.module import SegmentationModule

    over = {"trainer.max_epochs": 3, "trainer.checkpoint_every_steps": 1, "ema.enabled": True, "ema.decay": 0.9,
            "early_stopping.patience": 10}
    straight = train(recipe(sim_root, tmp_path / "a", **over), progress=False)
    assert straight.steps == 12 and [h["step"] for h in straight.history] == [4, 8, 12]

    real_val_end = SegmentationModule.on_validation_epoch_end

    def kill_in_validation(self):  # type: ignore[no-untyped-def]
        if self.trainer.global_step == 4:
            raise RuntimeError("killed during the validation")
        real_val_end(self)

    monkeypatch.setattr(SegmentationModule, "on_validation_epoch_end", kill_in_validation)
    with pytest.raises(RuntimeError, match="killed during the validation"):
        train(recipe(sim_root, tmp_path / "b", **over), progress=False)
    monkeypatch.setattr(SegmentationModule, "on_validation_epoch_end", real_val_end)
    run_b = tmp_path / "b" / "r"
    assert torch.load(run_b / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not (run_b / "history.jsonl").exists()  # the killed validation wrote nothing

    real_summary = callbacks.EpochSummary.on_validation_end

    def kill_after_checkpoint(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        real_summary(self, trainer, pl_module)
        if trainer.global_step == 8:
            raise RuntimeError("killed after the checkpoint")

    monkeypatch.setattr(callbacks.EpochSummary, "on_validation_end", kill_after_checkpoint)
    caplog.set_level(logging.INFO, logger="terraseg.training.engine")
    with pytest.raises(RuntimeError, match="killed after the checkpoint"):
        train(recipe(sim_root, tmp_path / "b", **{**over, "data.num_workers": 2}), resume=True, progress=False)
    assert "at step 3, epoch 0 after 3 batches: continuing exactly like the uninterrupted run" in caplog.text
    monkeypatch.setattr(callbacks.EpochSummary, "on_validation_end", real_summary)
    resumed = train(recipe(sim_root, tmp_path / "b", **{**over, "data.num_workers": 2}), resume=True,
                    progress=False)
    assert "at step 8, epoch 2: continuing exactly" in caplog.text

    assert resumed.steps == straight.steps == 12
    for name in ("last.pth", "best.pth"):
        a = read_checkpoint(straight.run_dir / "checkpoints" / name).state_dict
        b = read_checkpoint(resumed.run_dir / "checkpoints" / name).state_dict
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{name}: {len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"
    # one history row per validation, equal to the uninterrupted run's
    assert [h["step"] for h in resumed.history] == [4, 8, 12]
    for ha, hb in zip(straight.history, resumed.history):
        assert ha == pytest.approx(hb, abs=1e-9)
    # metrics.csv: appended across both resumes, every step once, the same values
    rows_a, rows_b = _metrics_rows(straight.run_dir), _metrics_rows(resumed.run_dir)
    for key in ("train/loss", "train/lr", "val/mIoU"):
        la, lb = _by_step(rows_a, key), _by_step(rows_b, key)
        assert la.keys() == lb.keys() and la, key
        assert list(lb.values()) == pytest.approx(list(la.values()), abs=1e-9), key
    assert 0 in _by_step(rows_b, "train/loss")  # the early steps survive the resumes


def test_step_checkpoints_skip_accumulation_and_the_step_before_a_validation() -> None:
    """last.ckpt every N optimiser steps: never between the batches of one accumulated step, never just
    before a validation (whose end writes it)."""
    from types import SimpleNamespace

    from terraseg.training import callbacks
    from terraseg.training.callbacks import RunCheckpoints

    saved: list[int] = []
    cb = RunCheckpoints(Path("unused"), {}, every_steps=2)
    cb.save_resume = lambda trainer: (saved.append(trainer.global_step), setattr(cb, "_last_saved_step",  # type: ignore[method-assign]
                                                                                 trainer.global_step))
    follows = {6}
    real = callbacks._validation_follows
    try:
        callbacks._validation_follows = lambda trainer: trainer.global_step in follows  # type: ignore[assignment]
        for step in (1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7):  # accumulate 2: each step spans two batches
            cb.on_train_batch_end(SimpleNamespace(global_step=step), None, None, None, 0)  # type: ignore[arg-type]
    finally:
        callbacks._validation_follows = real  # type: ignore[assignment]
    assert saved == [2, 4]


def test_epoch_sampler_starts_part_way_only_in_its_epoch() -> None:
    from terraseg.training.data import ImageSamples
    from terraseg.training.engine import _EpochSampler
    from terraseg.training.sampling import RepeatFactorSampler

    class DS:
        epoch = -1

        def set_epoch(self, e: int) -> None:
            self.epoch = e

    ds = DS()
    inner = RepeatFactorSampler(np.ones(10), seed=1)
    s = _EpochSampler(inner, ds)
    full = [list(inner.epoch_indices(e)) for e in range(3)]
    s.start_at(1, 4)
    assert ds.epoch == 1 and list(s) == full[1][4:]
    assert list(s) == full[1] and len(s) == 10  # once only; the length stays the epoch's
    s.start_at(1, 3)
    s.set_epoch(2)  # Lightning moved on: the skip belongs to another epoch
    assert list(s) == full[2]
    assert ImageSamples  # the per-sample seeding it relies on lives there


def test_truncate_logs_drops_what_followed_the_checkpoint(tmp_path: Path) -> None:
    from terraseg.training.runlog import RunCSVLogger, read_history, truncate_logs

    (tmp_path / "history.jsonl").write_text("".join(json.dumps({"step": s, "val/mIoU": s}) + "\n" for s in (4, 8))
                                            + '{"step": 12, "val/mI')
    (tmp_path / "metrics.csv").write_text("epoch,step,train/loss\n0,2,1.0\n0,3,0.9\n1,7,0.5\n1,8,0.4\n1,9,0.")
    assert truncate_logs(tmp_path, 8) == (0, 1)  # complete rows dropped; the cut-off lines go too
    assert [r["step"] for r in read_history(tmp_path)] == [4, 8]
    assert (tmp_path / "history.jsonl").read_text().endswith("}\n")
    assert [r["step"] for r in _metrics_rows(tmp_path)] == ["2", "3", "7"]
    # the resumed run's logger appends, and widens the header for new columns
    logger = RunCSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"train/loss": 0.3, "epoch": 1}, step=8)
    logger.log_metrics({"val/mIoU": 12.5, "epoch": 1}, step=8)
    logger.save()
    rows = _metrics_rows(tmp_path)
    assert [(r["step"], r["train/loss"], r.get("val/mIoU")) for r in rows] == [
        ("2", "1.0", ""), ("3", "0.9", ""), ("7", "0.5", ""), ("8", "0.3", ""), ("8", "", "12.5")]


# ------------------------------------------------------------------------------------- resume errors
def test_damaged_or_foreign_last_ckpt_is_one_clear_error(sim_root: Path, tmp_path: Path) -> None:
    from terraseg.models.surgery import save_checkpoint
    from terraseg.training.engine import _Run, train

    cfg = recipe(sim_root, tmp_path)
    ckpt = tmp_path / "r" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    module = _Run(cfg, None, progress=False).module
    state = {"state_dict": module.state_dict(), "loops": {}, "optimizer_states": [], "global_step": 4, "epoch": 1}
    torch.save(state, ckpt)
    good = ckpt.read_bytes()
    cases = [(good[: len(good) // 2], r"last\.ckpt: truncated"),
             (os.urandom(4096), r"last\.ckpt: not a readable resume checkpoint")]
    for data, pattern in cases:
        ckpt.write_bytes(data)
        with pytest.raises(DataError, match=pattern):
            train(cfg, resume=True, progress=False)
    save_checkpoint(ckpt, module.model)  # a weights-only terraseg checkpoint under the resume name
    with pytest.raises(DataError, match=r"last\.ckpt: not a resume checkpoint written by `terraseg train`"):
        train(cfg, resume=True, progress=False)
    foreign = dict(state, state_dict={("x." + k): v for k, v in state["state_dict"].items()})
    torch.save(foreign, ckpt)
    with pytest.raises(DataError, match=r"last\.ckpt: its model tensors do not match this recipe's model"):
        train(cfg, resume=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "r").rglob("*")) == ["checkpoints", "last.ckpt"]  # nothing written


# ------------------------------------------------------------------------------------- failed starts
def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "terraseg", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.parametrize("over,error", [
    ({"augment.rotate": 3}, r"augment: .*unknown"),
    ({"copy_paste": {"classes": "rare", "probability": 1.0}}, r"copy_paste: unknown key 'probability'"),
    ({"copy_paste": {"classes": ["bush", "no_such_class"]}}, r"copy_paste\.classes: .*no class named 'no_such_class'"),
    ({"loss": [{"name": "cee"}]}, r"loss"),
    ({"eval.window": {"mode": "slide", "crop": "big"}}, r"eval\.window"),
    ({"eval.preset": "no-such-preset"}, r"no-such-preset"),
    ({"model.options": {"channels": 16, "no_such_option": 1}}, r"no_such_option"),
    ({"data.root": "/nonexistent/terraseg-data"}, r"data\.root /nonexistent/terraseg-data does not exist"),
])
def test_a_failed_start_leaves_no_run_folder(sim_root: Path, tmp_path: Path, over: dict, error: str) -> None:
    from terraseg.errors import TerrasegError
    from terraseg.training.engine import train

    with pytest.raises(TerrasegError, match=error):
        train(recipe(sim_root, tmp_path, **over), progress=False)
    assert not (tmp_path / "r").exists()


def test_a_start_failing_after_the_folder_exists_removes_it_and_the_cli_rerun_works(
        sim_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from terraseg.training.engine import train
    from terraseg.training.module import SegmentationModule

    def broken(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("the optimiser could not be built")

    monkeypatch.setattr(SegmentationModule, "configure_optimizers", broken)
    with pytest.raises(RuntimeError, match="could not be built"):
        train(recipe(sim_root, tmp_path), progress=False)
    assert not (tmp_path / "r").exists()
    monkeypatch.undo()
    # through the CLI: a typo, then the corrected command as it is (one optimiser step)
    p = tmp_path / "recipe.yaml"
    recipe(sim_root, tmp_path, **{"trainer.max_steps": 1, "data.max_val_frames": 1}).save(p)
    bad = _cli("train", str(p), "augment.rotat=3", "-q")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert bad.stderr.strip().startswith("error:") and "rotat" in bad.stderr
    assert not (tmp_path / "r").exists()
    good = _cli("train", str(p), "-q")
    assert good.returncode == 0, good.stderr[-3000:]
    assert (tmp_path / "r" / "checkpoints" / "last.ckpt").is_file()
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["trainer"]["max_steps"] == 1


# ------------------------------------------------------------------------------------- DDP
def test_shard_sampler_pads_with_samples_that_count_nowhere() -> None:
    from terraseg.training.data import IGNORE_INDEX, IgnoredPadding, ShardSampler

    assert [list(ShardSampler(1, 2, r, pad=True)) for r in (0, 1)] == [[0], [1]]
    assert [list(ShardSampler(5, 2, r, pad=True)) for r in (0, 1)] == [[0, 2, 4], [1, 3, 5]]
    assert [list(ShardSampler(5, 2, r)) for r in (0, 1)] == [[0, 2, 4], [1, 3]]
    ds = [{"image": torch.ones(2), "target": torch.tensor([1, 2]), "point_target": [torch.tensor([3])],
           "index": 0}]
    padded = IgnoredPadding(ds)
    assert padded[0]["target"].tolist() == [1, 2]
    pad = padded[1]
    assert pad["target"].tolist() == [IGNORE_INDEX] * 2 and pad["point_target"][0].tolist() == [IGNORE_INDEX]
    assert pad["image"].tolist() == [1.0, 1.0]


@pytest.mark.slow
def test_ddp_with_fewer_validation_frames_than_processes(sim_root: Path, tmp_path: Path) -> None:
    """2-process DDP on the CPU (gloo) with one validation frame: rank 1 validates a padding sample
    that counts nowhere; the merged confusion matrix counts the one frame's labelled pixels once."""
    from terraseg.datasets import GenericDataset
    from terraseg.metrics import ConfusionMatrix

    p = tmp_path / "recipe.yaml"
    recipe(sim_root, tmp_path, **{"data.max_train_frames": 4, "data.max_val_frames": 1,
                                  "data.val_batch_size": 1}).save(p)
    r = _cli("train", str(p), "name=ddp", "--devices", "2", "--accelerator", "cpu", "-q")
    assert r.returncode == 0, r.stderr[-3000:]
    cm = ConfusionMatrix.load(tmp_path / "ddp" / "val_confusion.npz")
    frame = next(iter(GenericDataset(sim_root / "camera", split="val")))
    assert cm.total == int(np.isin(frame.image_labels, [0], invert=True).sum())
    assert math.isfinite(json.loads((tmp_path / "ddp" / "summary.json").read_text())["best_mIoU"])


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval.window applies to the image task only"):
        TrainConfig.from_dict({"task": "points", "data": {"root": "x"}, "eval": {"window": {"mode": "slide"}}})
    with pytest.raises(ConfigError, match="checkpoint_every_steps must be at least 1"):
        TrainConfig.from_dict({"data": {"root": "x"}, "trainer": {"checkpoint_every_steps": 0}})
