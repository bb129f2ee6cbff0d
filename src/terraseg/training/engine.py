"""``train(config)``: one engine for camera and LiDAR models (PyTorch Lightning underneath).

A run writes, under ``<output>/<name>/``::

    config.yaml                  the resolved recipe (overrides applied)
    checkpoints/best.pth         terraseg checkpoint of the best validation mIoU (EMA weights if on)
    checkpoints/last.pth         terraseg checkpoint after the latest validation
    checkpoints/last.ckpt        Lightning checkpoint (optimiser, schedule, EMA, loop state) for --resume
    history.jsonl, best.json     validation metrics per validation / of the best one
    metrics.csv                  CSV log: loss, accuracy, learning rate, throughput, val metrics
    tb/                          TensorBoard event files (same scalars, per-class IoU included)
    class_weights.json           the class weights used, when the loss has named weights
    summary.json                 the final result (best mIoU, epochs, seconds, checkpoints)

Resume: ``train(config, resume=True)`` (``terraseg train ... --resume``) continues a run from
``last.ckpt`` with the same optimiser state, schedule position, EMA, early-stopping counter and
best score; with the per-sample seeding of :mod:`terraseg.training.data` an epoch-based run resumed
after epoch ``e`` continues exactly like the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terraseg.datasets import open_dataset
from terraseg.datasets.stats import ClassStats, load_class_weights
from terraseg.errors import ConfigError, DataError
from terraseg.io.atomic import atomic_write_text
from terraseg.metrics.presets import EvalPreset, default_preset, get_preset
from terraseg.ontology import Ontology, get_ontology
from terraseg.training.config import TrainConfig
from terraseg.training.data import (
    IGNORE_INDEX,
    FrameCache,
    ImageSamples,
    PointSampleSpec,
    ScanSamples,
    ShardSampler,
    collate_images,
    collate_scans,
)
from terraseg.training.losses import build_loss

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run produced.

    Attributes:
        run_dir: the run folder.
        best_checkpoint, last_checkpoint: terraseg checkpoints (None when no validation ran).
        best_miou: best validation mIoU in percent (NaN without validation).
        best_epoch: epoch of the best validation.
        epochs, steps: completed epochs and optimiser steps.
        seconds: wall-clock duration of this call.
        history: one dict per validation (epoch, step, val metrics).
        stopped_early: early stopping ended the run.
    """

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_miou: float
    best_epoch: int | None
    epochs: int
    steps: int
    seconds: float
    history: list[dict[str, Any]]
    stopped_early: bool = False


# ------------------------------------------------------------------------------------- datasets
def _open(cfg: TrainConfig, split: str) -> Any:
    d = cfg.data
    opts = dict(d.options)
    try:
        return open_dataset(d.root, kind=d.kind, split=split, remap=d.remap, **opts)
    except TypeError as exc:
        raise ConfigError(f"{cfg.source}: data.options: {exc}") from None


def resolve_ontology(cfg: TrainConfig, frames: Any) -> Ontology:
    """The run's label ontology: ``data.ontology``, else the dataset's."""
    if cfg.data.ontology:
        return get_ontology(cfg.data.ontology)
    onto = getattr(frames, "ontology", None)
    if onto is None:
        raise ConfigError(f"{cfg.source}: the dataset at {cfg.data.root} does not say its label ontology; "
                          "set data.ontology")
    return get_ontology(onto) if not isinstance(onto, Ontology) else onto


def _class_weight_tables(cfg: TrainConfig, ontology: Ontology, class_stats: Callable[[], ClassStats],
                         run_dir: Path) -> Any:
    """Named class weights (enet, median, inv_sqrt) from a statistics file or the training split
    (``class_stats()`` counts it, once per run)."""
    cache: dict[str, np.ndarray] = {}

    def table(name: str) -> np.ndarray:
        if name in cache:
            return cache[name]
        if cfg.data.class_weights_file:
            w = load_class_weights(cfg.data.class_weights_file, name, ontology)  # type: ignore[arg-type]
        else:
            w = class_stats().class_weights(name)  # type: ignore[arg-type]
        cache[name] = w
        atomic_write_text(run_dir / "class_weights.json",
                          json.dumps({"ontology": ontology.name,
                                      "weights": {k: {ontology.name_of(i): round(float(v[i]), 6)
                                                      for i in ontology.ids.tolist()} for k, v in cache.items()}},
                                     indent=2) + "\n")
        return w

    return table


def _count_classes(cfg: TrainConfig, ontology: Ontology, frames: FrameCache, progress: bool) -> ClassStats:
    from terraseg.progress import ProgressBar

    stats = ClassStats(ontology, "image" if cfg.task == "image" else "points")
    with ProgressBar(len(frames), "counting classes for the loss weights", enabled=progress) as bar:
        for i in range(len(frames)):
            f = frames[i]
            lab = f.image_labels if cfg.task == "image" else f.point_labels
            stats.update_labels(lab, "train", str(f.source.get("image_labels", f.frame_id)))
            bar.advance()
    return stats


class _EpochSampler(torch.utils.data.Sampler[int]):
    """Wraps a sampler so ``set_epoch`` (called by Lightning) also reaches the dataset's seeding."""

    def __init__(self, sampler: Any, dataset: Any) -> None:
        self.sampler, self.dataset = sampler, dataset

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


# ------------------------------------------------------------------------------------- the run
class _Run:
    """Everything built from a recipe (datasets, model, loss, Lightning module)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, progress: bool) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        d = cfg.data
        train_ds = _open(cfg, d.train_split)
        if len(train_ds) == 0:
            raise DataError(f"{d.root}: no frames in split {d.train_split!r}")
        try:
            val_ds = _open(cfg, d.val_split)
        except DataError:
            val_ds = []
        self.ontology = resolve_ontology(cfg, train_ds)
        self.train_frames = FrameCache(train_ds, cache=d.cache, limit=d.max_train_frames)
        self.val_frames = FrameCache(val_ds, cache=d.cache, limit=d.max_val_frames)
        self.num_classes = self.ontology.max_id + 1
        self.preset = self._preset()
        self.model = self._model()
        self.meta = {"task": cfg.task, "recipe": cfg.name, "ontology": self.ontology.name}
        self._stats: ClassStats | None = None
        self._progress = progress
        self.train_set, self.val_set, adapter = self._datasets(progress)
        # label-efficient runs (sparse labels, region / boundary terms, distillation): masks, regions
        # and teacher targets are prepared here, before the loss weights are counted
        from terraseg.training import label_efficient_task as le

        self.label_efficient = le.prepare(self, progress, not launched_worker()) if le.enabled(cfg) else None
        weights = _class_weight_tables(cfg, self.ontology, self.class_stats, run_dir)
        self.loss = build_loss(cfg.loss, ignore_index=IGNORE_INDEX, weight_tables=weights,
                               num_classes=self.num_classes, source=f"{cfg.source}: loss")
        from terraseg.training.module import SegmentationModule

        self.module = (self.label_efficient.module(self, adapter) if self.label_efficient is not None else
                       SegmentationModule(self.model, adapter, self.loss, cfg, self.ontology, self.preset))

    def class_stats(self) -> ClassStats:
        """Class counts of the training split, read once and shared by the loss weights and the
        copy-paste choice of rare classes."""
        if self._stats is None:
            self._stats = _count_classes(self.cfg, self.ontology, self.train_frames, self._progress)
        return self._stats

    def _preset(self) -> EvalPreset:
        name = self.cfg.eval.preset
        preset = get_preset(name, self.ontology) if name else default_preset(self.ontology)
        if preset.ontology != self.ontology.name:
            raise ConfigError(f"{self.cfg.source}: eval.preset {name!r} is for ontology {preset.ontology!r}, "
                              f"the run predicts {self.ontology.name!r}")
        return preset

    def _model(self) -> torch.nn.Module:
        m = self.cfg.model
        common = {"weights": m.weights, "source_ontology": m.source_ontology, "label_map": m.label_map}
        if self.cfg.task == "image":
            from terraseg.models.image import build_image_model

            return build_image_model(m.arch, m.encoder, self.num_classes, ontology=self.ontology,
                                     pretrained=m.pretrained, aux=m.aux, verbose=m.weights is not None,
                                     **{k: v for k, v in common.items() if v is not None}, **m.options)
        from terraseg.models.points import build_point_model
        from terraseg.models.surgery import load_weights

        model = build_point_model(m.arch, self.num_classes, in_channels=m.in_channels, preset=m.preset, **m.options)
        model.ontology = self.ontology
        if m.weights:
            model.load_report = load_weights(model, m.weights, source_ontology=m.source_ontology,  # type: ignore[attr-defined]
                                             target_ontology=self.ontology, label_map=m.label_map, verbose=True)
        return model

    def _datasets(self, progress: bool) -> tuple[Any, Any, Any]:
        cfg = self.cfg
        from terraseg.training.module import ImageTask, RandLATask, RangeTask

        channels_last = _channels_last(cfg)
        if cfg.task == "image":
            from terraseg.models.image.preprocess import Normalization
            from terraseg.training.augment import ImageAugConfig, build_image_transform

            if "ignore_id" in cfg.augment:
                raise ConfigError(f"{cfg.source}: augment.ignore_id is set by the engine (padding is never a class)")
            aug = _with_source(cfg, "augment", lambda: ImageAugConfig.from_dict(
                {**cfg.augment, "ignore_id": _pad(self.ontology)}))
            norm = Normalization()
            self.meta["preprocess"] = {**norm.to_meta(), "base_size": list(aug.base_size) if aug.base_size else None}
            cp = self._copy_paste(progress) if cfg.copy_paste else None
            train = ImageSamples(self.train_frames, self.ontology, build_image_transform(aug, True, norm), cp, cfg.seed)
            val = ImageSamples(self.val_frames, self.ontology, build_image_transform(aug, False, norm), None, cfg.seed)
            window = None
            if cfg.eval.window:  # training validation: the eval window, never TTA (that is for terraseg eval)
                from terraseg.inference.image import WindowConfig

                window = _with_source(cfg, "eval.window", lambda: WindowConfig.parse(cfg.eval.window))
            if cfg.eval.tta:
                from terraseg.inference.image import TTAConfig

                _with_source(cfg, "eval.tta", lambda: TTAConfig.parse(cfg.eval.tta))  # validated now, used by eval
            return train, val, ImageTask(window, None, channels_last)
        from terraseg.training.point_augment import PointAugConfig, PointAugment

        model = self.model
        mc = model.config  # type: ignore[union-attr]
        arch = model.spec["arch"]  # type: ignore[index]
        spec = PointSampleSpec(arch=str(arch), in_channels=mc.in_channels, max_points=cfg.data.max_points,
                               projection=cfg.data.projection,
                               k=getattr(mc, "k", 16), ratios=tuple(getattr(mc, "ratios", (4, 4, 4, 4))),
                               means=tuple(getattr(mc, "means", ())), stds=tuple(getattr(mc, "stds", ())))
        self.meta["preprocess"] = {"projection": cfg.data.projection, "max_points": cfg.data.max_points}
        augment = None
        if cfg.augment.get("enabled", True):
            pa = _with_source(cfg, "augment", lambda: PointAugConfig.from_dict(
                {k: v for k, v in cfg.augment.items() if k != "enabled"}))
            augment = PointAugment(pa)
        train = ScanSamples(self.train_frames, self.ontology, spec, True, augment, cfg.seed)
        val = ScanSamples(self.val_frames, self.ontology, spec, False, None, cfg.seed)
        if arch == "randlanet" and cfg.data.batch_size > 1 and cfg.data.max_points is None:
            raise ConfigError(f"{cfg.source}: RandLA-Net batches need equal-size crops: set data.max_points "
                              "(45056 in the paper) or data.batch_size=1")
        adapter = RandLATask() if arch == "randlanet" else RangeTask(channels_last)
        return train, val, adapter

    def _copy_paste(self, progress: bool) -> Any:
        from terraseg.training.copypaste import CopyPaste, InstanceBank

        cp = dict(self.cfg.copy_paste or {})
        classes = cp.pop("classes", "rare")
        if classes == "rare":
            stats = self.class_stats()
            f = stats.frequencies()
            seen = [c.id for c in self.ontology if f[c.id] > 0 and c.id not in self.ontology.ignore_ids]
            k = int(cp.pop("num_rare", max(1, len(seen) // 4)))
            ids = sorted(seen, key=lambda i: f[i])[:k]
        else:
            ids = [self.ontology.id_of(c) if isinstance(c, str) else int(c) for c in classes]
            cp.pop("num_rare", None)
        bank_opts = {k: cp.pop(k) for k in ("use_instances", "min_pixels", "max_per_class") if k in cp}
        bank = InstanceBank.from_dataset(self.train_frames, ids, progress=progress, **bank_opts)
        if len(bank) == 0:
            log.warning("copy-paste: no instances of %s found in the training split", ids)
        self.meta["copy_paste_classes"] = [self.ontology.name_of(i) for i in ids]
        return _with_source(self.cfg, "copy_paste", lambda: CopyPaste(bank, ignore_id=_pad(self.ontology), **cp))


def _pad(onto: Ontology) -> int:
    from terraseg.training.data import pad_id

    return pad_id(onto)


def _with_source(cfg: TrainConfig, section: str, fn: Any) -> Any:
    try:
        return fn()
    except (ConfigError, TypeError, ValueError) as exc:
        msg = str(exc)
        raise ConfigError(f"{cfg.source}: {section}: {msg}") from None


def _on_gpu(cfg: TrainConfig) -> bool:
    acc = cfg.trainer.accelerator
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def _channels_last(cfg: TrainConfig) -> bool:
    cl = cfg.trainer.channels_last
    return _on_gpu(cfg) if cl == "auto" else bool(cl)


def _precision(cfg: TrainConfig) -> str:
    p = cfg.trainer.precision
    if p == "auto":
        if not _on_gpu(cfg):
            return "32-true"
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}.get(p, p)


def launched_worker() -> bool:
    """True in the extra processes a DDP launch starts (Lightning's launcher, torchrun, SLURM set
    these variables); they join the run rank 0 prepared."""
    return any(os.environ.get(v, "0") not in ("", "0") for v in ("LOCAL_RANK", "NODE_RANK", "RANK", "GROUP_RANK",
                                                                   "SLURM_PROCID"))


def prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
    """The run folder ``<output>/<name>``; refuses to mix two runs in one folder."""
    run_dir = Path(cfg.output) / cfg.name
    if launched_worker():
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not ckpt.is_file():
            raise ConfigError(f"{ckpt}: nothing to resume (no checkpoint of run {cfg.name!r})")
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"{run_dir}: a run with this name exists; pass --resume to continue it, "
                              "--overwrite to replace it, or name=<new name>")
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's informational chatter (device summary, tips) but keep warnings."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
             "lightning.fabric.utilities.seed", "lightning.pytorch.callbacks.model_summary",
             "lightning.pytorch.trainer.connectors.checkpoint_connector")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*The number of training batches.*")
        warnings.filterwarnings("ignore", message=".*predict_dataloader.*")
        warnings.filterwarnings("ignore", message=".*Checkpoint directory.*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*Experiment logs directory.*exists and is not empty.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          devices: int | str | None = None, num_nodes: int | None = None, accelerator: str | None = None
          ) -> TrainResult:
    """Train a model from a recipe.

    Args:
        cfg: the validated recipe (:func:`terraseg.training.load_config`).
        resume: continue ``<output>/<name>`` from its ``last.ckpt``.
        overwrite: replace an existing run folder of the same name.
        progress: show the progress bar and a summary line per validation.
        devices, num_nodes, accelerator: override ``trainer.*`` (the CLI's ``--devices`` ...).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError / DataError: bad recipe or data, with the file and the problem.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from terraseg.training.callbacks import EMA, AtomicCheckpointIO, EpochSummary, RunCheckpoints, TrainProgressBar

    t0 = time.perf_counter()
    run_dir = prepare_run_dir(cfg, resume, overwrite)
    if not resume and not launched_worker():
        cfg.save(run_dir / "config.yaml")
    tr = cfg.trainer
    with _quiet_lightning():
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        run = _Run(cfg, run_dir, progress)
        callbacks: list[Any] = []
        ema = EMA(cfg.ema.decay) if cfg.ema.enabled else None
        if ema is not None:
            callbacks.append(ema)
        ckpts = RunCheckpoints(run_dir, {**run.meta, "config": cfg.to_dict()}, ema, tr.checkpoint_every_steps,
                               cfg.early_stopping.min_delta)
        callbacks.append(ckpts)
        callbacks.append(EpochSummary(ckpts, enabled=progress))
        early = None
        if cfg.early_stopping.patience is not None and len(run.val_frames):
            early = EarlyStopping("val/mIoU", mode="max", patience=cfg.early_stopping.patience,
                                  min_delta=cfg.early_stopping.min_delta, check_finite=False)
            callbacks.append(early)
        callbacks.append(LearningRateMonitor(logging_interval="step"))
        if progress:
            callbacks.append(TrainProgressBar(leave=True))
        loggers = [CSVLogger(str(run_dir), name="", version="", flush_logs_every_n_steps=tr.log_every),
                   TensorBoardLogger(str(run_dir), name="tb", version="", default_hp_metric=False)]
        acc = accelerator or tr.accelerator
        ndev = devices if devices is not None else tr.devices
        strategy = tr.strategy
        if strategy == "auto" and (isinstance(ndev, int) and ndev > 1 or (num_nodes or tr.num_nodes) > 1):
            strategy = "ddp_find_unused_parameters_true" if cfg.task == "image" else "ddp"
        val_kw: dict[str, Any] = {}
        if tr.val_every_steps:
            val_kw = {"val_check_interval": tr.val_every_steps, "check_val_every_n_epoch": None}
        else:
            val_kw = {"check_val_every_n_epoch": tr.val_every}
        trainer = L.Trainer(
            accelerator=acc, devices=ndev, num_nodes=num_nodes or tr.num_nodes, strategy=strategy,
            precision=_precision(cfg),  # type: ignore[arg-type]
            max_epochs=tr.max_epochs if tr.max_steps is None else -1,
            max_steps=tr.max_steps if tr.max_steps is not None else -1,
            accumulate_grad_batches=tr.accumulate, gradient_clip_val=tr.grad_clip,
            log_every_n_steps=tr.log_every, callbacks=callbacks, logger=loggers,
            enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
            num_sanity_val_steps=0, deterministic=tr.deterministic, use_distributed_sampler=False,
            plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir),
            max_time={"seconds": tr.max_time_s} if tr.max_time_s else None,  # type: ignore[arg-type]
            limit_val_batches=1.0 if len(run.val_frames) else 0, **val_kw)
        dm = _DataModule(run, cfg)
        if _channels_last(cfg):
            run.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        ckpt_path = str(ckpts.resume_path) if resume else None
        trainer.fit(run.module, datamodule=dm, ckpt_path=ckpt_path)
        if len(run.val_frames) and trainer.global_step > 0 and ckpts.last_validated_step != trainer.global_step \
                and not trainer.interrupted:
            # stopped between validations (max_time, max_steps): score the final weights too
            trainer.validate(run.module, datamodule=dm, verbose=False)
    history = _read_history(run_dir)
    best = run_dir / "checkpoints" / "best.pth"
    last = run_dir / "checkpoints" / "last.pth"
    result = TrainResult(run_dir=run_dir, best_checkpoint=best if best.is_file() else None,
                         last_checkpoint=last if last.is_file() else None,
                         best_miou=ckpts.best if np.isfinite(ckpts.best) else float("nan"),
                         best_epoch=ckpts.best_epoch, epochs=trainer.current_epoch, steps=trainer.global_step,
                         seconds=time.perf_counter() - t0, history=history,
                         stopped_early=bool(early is not None and early.stopped_epoch > 0))
    if trainer.is_global_zero:
        atomic_write_text(run_dir / "summary.json", json.dumps(
            {"name": cfg.name, "task": cfg.task, "ontology": run.ontology.name, "best_mIoU": result.best_miou,
             "best_epoch": result.best_epoch, "epochs": result.epochs, "steps": result.steps,
             "seconds": round(result.seconds, 2), "stopped_early": result.stopped_early,
             "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
             "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
             **(run.label_efficient.summary if run.label_efficient is not None else {})},
            indent=2) + "\n")
    return result


def _read_history(run_dir: Path) -> list[dict[str, Any]]:
    p = run_dir / "history.jsonl"
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


class _DataModule:
    """Builds the DataLoaders once the process knows its DDP rank (Lightning calls these hooks)."""

    def __new__(cls, run: _Run, cfg: TrainConfig) -> Any:
        import lightning as L

        class DM(L.LightningDataModule):
            def train_dataloader(self) -> torch.utils.data.DataLoader:
                trainer = self.trainer
                world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
                from terraseg.training.sampling import RepeatFactorSampler, class_presence, repeat_factors

                n = len(run.train_set)
                if cfg.data.repeat_factor is not None and cfg.task == "image":
                    presence = class_presence(run.train_frames, run.num_classes,
                                              ignore_ids=tuple(run.ontology.ignore_ids), progress=False)
                    factors = repeat_factors(presence, cfg.data.repeat_factor)
                else:
                    factors = np.ones(n)
                sampler = RepeatFactorSampler(factors, seed=cfg.seed, shuffle=True, num_replicas=world, rank=rank)
                collate = collate_images if cfg.task == "image" else collate_scans
                return torch.utils.data.DataLoader(
                    run.train_set, batch_size=cfg.data.batch_size, sampler=_EpochSampler(sampler, run.train_set),
                    num_workers=cfg.data.num_workers, collate_fn=collate,
                    drop_last=len(factors) > cfg.data.batch_size,  # no 1-sample batches (BatchNorm)
                    persistent_workers=False, pin_memory=torch.cuda.is_available())

            def val_dataloader(self) -> torch.utils.data.DataLoader:
                trainer = self.trainer
                world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
                collate = collate_images if cfg.task == "image" else collate_scans
                bs = cfg.data.val_batch_size
                return torch.utils.data.DataLoader(
                    run.val_set, batch_size=bs, sampler=ShardSampler(len(run.val_set), world, rank),
                    num_workers=cfg.data.num_workers, collate_fn=collate, persistent_workers=False)

        return DM()

