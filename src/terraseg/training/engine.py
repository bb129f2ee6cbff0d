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
``last.ckpt`` (written after every validation, every ``trainer.checkpoint_every_steps`` optimiser
steps and at the end) with the same optimiser state, schedule position, EMA, early-stopping
counter and best score, at the same place in the epoch's sample order (the training loader's
position is part of ``last.ckpt``). Every random draw depends only on (seed, epoch, sample) for
the data (:mod:`terraseg.training.data`) and (seed, epoch, batch, rank) for the model (dropout),
so a run resumed from any ``last.ckpt`` continues exactly like the uninterrupted run, on the same
number of devices with the same recipe (see ``docs/training.md`` for the exceptions: a time-based
schedule, ``max_time_s``, non-deterministic GPU kernels). ``history.jsonl`` and ``metrics.csv``
are appended to (rows the interrupted run logged after the checkpoint are dropped first).

A recipe is checked completely (data, model, loss, augmentation, copy-paste, evaluation) before
the run folder is created; a start that fails after that removes the folder again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import shutil
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
from terraseg.metrics.presets import EvalPreset, get_preset
from terraseg.ontology import Ontology, get_ontology
from terraseg.training.config import TrainConfig
from terraseg.training.data import (
    IGNORE_INDEX,
    FrameCache,
    IgnoredPadding,
    ImageSamples,
    PointSampleSpec,
    ScanSamples,
    ShardSampler,
    collate_images,
    collate_scans,
    training_intensity,
)
from terraseg.training.losses import build_loss
from terraseg.training.runlog import read_history, truncate_logs

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
        return open_dataset(d.root, kind=d.kind, split=split, remap=d.remap, labels_ontology=d.ontology, **opts)
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
                         cache: dict[str, np.ndarray]) -> Any:
    """Named class weights (enet, median, inv_sqrt) from a statistics file or the training split
    (``class_stats()`` counts it, once per run); every table used is kept in ``cache``."""

    def table(name: str) -> np.ndarray:
        if name in cache:
            return cache[name]
        if cfg.data.class_weights_file:
            w = load_class_weights(cfg.data.class_weights_file, name, ontology)  # type: ignore[arg-type]
        else:
            w = class_stats().class_weights(name)  # type: ignore[arg-type]
        cache[name] = w
        return w

    return table


def _count_classes(cfg: TrainConfig, ontology: Ontology, frames: FrameCache, progress: bool) -> ClassStats:
    from terraseg.progress import ProgressBar

    stats = ClassStats(ontology, "image" if cfg.task == "image" else "points")
    with ProgressBar(len(frames), "counting classes for the loss weights", enabled=progress) as bar:
        for i in range(len(frames)):
            f = frames[i]
            lab = f.image_labels if cfg.task == "image" else f.point_labels
            if cfg.task == "fusion" and lab is not None:  # the points the networks see: those in view
                from terraseg.models.fusion.view import frame_view

                assert cfg.fusion is not None
                lab = lab[frame_view(f, cfg.fusion.near).index]
            stats.update_labels(lab, "train", str(f.source.get("image_labels", f.frame_id)))
            bar.advance()
    return stats


class _EpochSampler(torch.utils.data.Sampler[int]):
    """Wraps a sampler so ``set_epoch`` (called by Lightning) also reaches the dataset's seeding, and
    so an epoch can start part-way (:meth:`start_at`, a resumed run)."""

    def __init__(self, sampler: Any, dataset: Any) -> None:
        self.sampler, self.dataset = sampler, dataset
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def start_at(self, epoch: int, skip: int) -> None:
        """Select ``epoch`` and leave out its first ``skip`` indices on the next pass over it."""
        self.set_epoch(epoch)
        self._skip = (int(epoch), int(skip)) if skip > 0 else None

    def __iter__(self) -> Iterator[int]:
        it = iter(self.sampler)
        skip, self._skip = self._skip, None
        if skip is not None and skip[0] == self.epoch:
            return itertools.islice(it, skip[1], None)
        return it

    def __len__(self) -> int:  # the whole epoch: Lightning counts the batches of a resumed epoch from where it was
        return len(self.sampler)


def _loader_position(trainer: Any) -> tuple[int, int]:
    """``(epoch, batches done in it)`` of the next training batch."""
    fl = trainer.fit_loop
    ep = fl.epoch_progress.current
    if ep.started <= ep.completed:  # between epochs
        return int(ep.completed), 0
    done = int(fl.epoch_loop.batch_progress.current.processed)
    if done >= trainer.num_training_batches:
        return int(ep.completed) + 1, 0
    return int(ep.completed), done


class _TrainLoader(torch.utils.data.DataLoader):
    """The training DataLoader, whose position (epoch, batches done, batch size, processes) Lightning
    saves in ``last.ckpt`` (``state_dict``) and gives back on resume (``load_state_dict``)."""

    trainer: Any = None
    world_size: int = 1

    def state_dict(self) -> dict[str, int]:
        epoch, done = _loader_position(self.trainer) if self.trainer is not None else (0, 0)
        return {"epoch": epoch, "batches": done, "batch_size": int(self.batch_size or 1),
                "world_size": int(self.world_size)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, _EpochSampler)
        sampler.start_at(*_start(state, self.batch_size))


def _start(state: dict[str, Any], batch_size: int | None) -> tuple[int, int]:
    """``(epoch, sample indices to skip)`` of a saved loader position."""
    return int(state["epoch"]), int(state["batches"]) * int(state.get("batch_size") or batch_size or 1)


def loader_position(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The training loader's position saved in a Lightning checkpoint by :class:`_TrainLoader` (None
    in checkpoints written before terraseg saved it)."""
    fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    states = (fit.get("state_dict") or {}).get("combined_loader") or []
    pos = states[0] if states and isinstance(states[0], dict) else None
    return pos if pos is not None and {"epoch", "batches"} <= set(pos) else None


# ------------------------------------------------------------------------------------- the run
class _Run:
    """Everything built from a recipe (datasets, model, loss, Lightning module)."""

    def __init__(self, cfg: TrainConfig, run_dir: Path | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.run_dir = run_dir  # None while the recipe is checked before its run folder exists
        d = cfg.data
        if not Path(d.root).exists():
            raise DataError(f"{cfg.source}: data.root {d.root} does not exist")
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
        self.preset = _with_source(cfg, "eval.preset", self._preset)
        self.model = _with_source(cfg, "model", self._model)
        self.meta = {"task": cfg.task, "recipe": cfg.name, "ontology": self.ontology.name}
        self._stats: ClassStats | None = None
        self._progress = progress
        self.train_set, self.val_set, adapter = self._datasets(progress)
        # label-efficient runs (sparse labels, region / boundary terms, distillation): masks, regions
        # and teacher targets are prepared here, before the loss weights are counted
        from terraseg.training import label_efficient_task as le

        self.label_efficient = le.prepare(self, progress, not launched_worker()) if le.enabled(cfg) else None
        self.class_weights: dict[str, np.ndarray] = {}
        weights = _class_weight_tables(cfg, self.ontology, self.class_stats, self.class_weights)
        self.loss = build_loss(cfg.loss, ignore_index=IGNORE_INDEX, weight_tables=weights,
                               num_classes=self.num_classes, source=f"{cfg.source}: loss")
        from terraseg.training.module import SegmentationModule

        self.module = (self.label_efficient.module(self, adapter) if self.label_efficient is not None else
                       SegmentationModule(self.model, adapter, self.loss, cfg, self.ontology, self.preset))
        self._presence: np.ndarray | None = None
        if run_dir is not None:
            self.write_class_weights(run_dir)

    def write_class_weights(self, run_dir: Path) -> None:
        """``class_weights.json``: the named class weight tables the loss uses (nothing when none)."""
        if not self.class_weights:
            return
        onto = self.ontology
        atomic_write_text(Path(run_dir) / "class_weights.json",
                          json.dumps({"ontology": onto.name,
                                      "weights": {k: {onto.name_of(i): round(float(v[i]), 6) for i in onto.ids.tolist()}
                                                  for k, v in self.class_weights.items()}}, indent=2) + "\n")

    def repeat_factors(self) -> np.ndarray:
        """Per-sample repeat factors of the training split (all 1 without ``data.repeat_factor``)."""
        from terraseg.training.sampling import class_presence, repeat_factors

        cfg = self.cfg
        if cfg.data.repeat_factor is None or cfg.task != "image":
            return np.ones(len(self.train_set))
        if self._presence is None:
            self._presence = class_presence(self.train_frames, self.num_classes,
                                            ignore_ids=tuple(self.ontology.ignore_ids), progress=False)
        return repeat_factors(self._presence, cfg.data.repeat_factor)

    def class_stats(self) -> ClassStats:
        """Class counts of the training split, read once and shared by the loss weights and the
        copy-paste choice of rare classes."""
        if self._stats is None:
            self._stats = _count_classes(self.cfg, self.ontology, self.train_frames, self._progress)
        return self._stats

    def _preset(self) -> EvalPreset:
        try:  # the preset holds the run's Ontology itself (a YAML or palette ontology is never looked up by name)
            return get_preset(self.cfg.eval.preset, self.ontology)
        except ConfigError as exc:
            raise ConfigError(f"{self.cfg.source}: eval.preset: {exc}") from None

    def _model(self) -> torch.nn.Module:
        m = self.cfg.model
        common = {"weights": m.weights, "source_ontology": m.source_ontology, "label_map": m.label_map}
        if self.cfg.task == "fusion":
            from terraseg.training.fusion_data import fusion_model

            return fusion_model(self.cfg, self.ontology)
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
        from terraseg.training.module import ImageTask, RandLATask, RangeTask, VoxelTask

        channels_last = _channels_last(cfg)
        if cfg.task == "fusion":
            from terraseg.training.fusion_data import fusion_datasets

            parts = fusion_datasets(cfg, self.ontology, self.model, self.train_frames, self.val_frames, channels_last)
            self.collate = parts.collate
            self.meta["preprocess"] = parts.preprocess
            return parts.train, parts.val, parts.adapter
        self.collate: Any = collate_images if cfg.task == "image" else collate_scans
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
                from terraseg.models.image.windows import WindowConfig

                window = _with_source(cfg, "eval.window", lambda: WindowConfig.parse(cfg.eval.window))
            if cfg.eval.tta:
                from terraseg.models.image.windows import TTAConfig

                _with_source(cfg, "eval.tta", lambda: TTAConfig.parse(cfg.eval.tta))  # validated now, used by eval
            return train, val, ImageTask(window, None, channels_last)
        from terraseg.training.point_augment import PointAugConfig, PointAugment

        model = self.model
        mc = model.config  # type: ignore[union-attr]
        arch = model.spec["arch"]  # type: ignore[index]
        spec = PointSampleSpec(arch=str(arch), in_channels=mc.in_channels, max_points=cfg.data.max_points,
                               projection=cfg.data.projection,
                               k=getattr(mc, "k", 16), ratios=tuple(getattr(mc, "ratios", (4, 4, 4, 4))),
                               means=tuple(getattr(mc, "means", ())), stds=tuple(getattr(mc, "stds", ())),
                               intensity_max=cfg.data.intensity_max,
                               voxel_size=getattr(mc, "voxel_size", 0.05),
                               centre_offsets=getattr(mc, "centre_offsets", True))
        self.meta["preprocess"] = {"projection": cfg.data.projection, "max_points": cfg.data.max_points,
                                   "intensity": training_intensity(self.train_frames, cfg.data.intensity_max).to_meta()}
        if cfg.eval.tta:  # LiDAR TTA of terraseg eval with this recipe: validated now
            from terraseg.models.points.tta import ScanTTAConfig

            _with_source(cfg, "eval.tta", lambda: ScanTTAConfig.parse(cfg.eval.tta))
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
        adapter = {"randlanet": RandLATask, "voxelunet": VoxelTask}.get(str(arch), lambda: RangeTask(channels_last))()
        return train, val, adapter

    def _copy_paste(self, progress: bool) -> Any:
        from terraseg.training.copypaste import CopyPaste, InstanceBank

        cp = dict(self.cfg.copy_paste or {})
        bank_keys = ("use_instances", "min_pixels", "max_per_class")
        known = ("classes", "num_rare", *bank_keys, "p", "max_instances", "scale", "hflip", "blend")
        unknown = sorted(set(cp) - set(known))
        if unknown:
            raise ConfigError(f"{self.cfg.source}: copy_paste: unknown key {unknown[0]!r} (known: {', '.join(known)})")
        # check the paste options now, before the instance bank is cut out of every training frame
        _with_source(self.cfg, "copy_paste", lambda: CopyPaste(InstanceBank([]), ignore_id=_pad(self.ontology), **{
            k: v for k, v in cp.items() if k not in ("classes", "num_rare", *bank_keys)}))
        classes = cp.pop("classes", "rare")
        if classes != "rare" and (isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple))):
            raise ConfigError(f"{self.cfg.source}: copy_paste.classes must be 'rare' or a list of class names / ids, "
                              f"got {classes!r}")
        if classes == "rare":
            stats = self.class_stats()
            f = stats.frequencies()
            seen = [c.id for c in self.ontology if f[c.id] > 0 and c.id not in self.ontology.ignore_ids]
            k = int(cp.pop("num_rare", max(1, len(seen) // 4)))
            ids = sorted(seen, key=lambda i: f[i])[:k]
        else:
            ids = _with_source(self.cfg, "copy_paste.classes", lambda: [
                self.ontology[c if isinstance(c, str) else int(c)].id for c in classes])
            cp.pop("num_rare", None)
        bank_opts = {k: cp.pop(k) for k in bank_keys if k in cp}
        bank = InstanceBank.from_dataset(self.train_frames, ids, progress=progress, **bank_opts)
        if len(bank) == 0:
            log.warning("copy-paste: no instances of %s found in the training split", ids)
        self.meta["copy_paste_classes"] = [self.ontology.name_of(i) for i in ids]
        return _with_source(self.cfg, "copy_paste", lambda: CopyPaste(bank, ignore_id=_pad(self.ontology), **cp))


def _pad(onto: Ontology) -> int:
    from terraseg.training.data import pad_id

    return pad_id(onto)


def _with_source(cfg: TrainConfig, section: str, fn: Any) -> Any:
    """``fn()``, its configuration errors (and TypeError / ValueError: bad options) prefixed with the
    recipe file and section; data errors (which name their file) pass unchanged."""
    try:
        return fn()
    except DataError:
        raise
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


def check_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> Path:
    """The run folder ``<output>/<name>``, checked without creating anything: refuses to mix two
    runs in one folder, and to resume a run that has no ``last.ckpt``."""
    run_dir = Path(cfg.output) / cfg.name
    if launched_worker():
        return run_dir
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not ckpt.is_file():
            raise ConfigError(f"{ckpt}: nothing to resume (no checkpoint of run {cfg.name!r})")
        return run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: exists and is not a folder; choose another output or name")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{run_dir}: a run with this name exists; pass --resume to continue it, "
                          "--overwrite to replace it, or name=<new name>")
    return run_dir


def prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool) -> tuple[Path, bool]:
    """Create (or, with ``overwrite``, replace) the run folder after :func:`check_run_dir`.

    Returns:
        ``(run folder, created)``: ``created`` is True when this call made a fresh folder (which
        a failed start then removes again).
    """
    run_dir = check_run_dir(cfg, resume, overwrite)
    if launched_worker():
        run_dir.mkdir(parents=True, exist_ok=True)
        return run_dir, False
    if resume:
        return run_dir, False
    if run_dir.is_dir() and any(run_dir.iterdir()):
        shutil.rmtree(run_dir)  # overwrite (check_run_dir refused otherwise)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, True


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


def _resume_notes(cfg: TrainConfig, ckpt: dict[str, Any], world: int) -> tuple[str, list[str]]:
    """Where a run resumes, and why it would not continue exactly like the uninterrupted run (if so)."""
    step = int(ckpt.get("global_step", 0))
    pos = loader_position(ckpt)
    notes: list[str] = []
    if pos is None:
        where = f"step {step}, epoch {ckpt.get('epoch')}"
        notes.append("the checkpoint does not record the position in the epoch (written by an older terraseg): "
                     "exact only when it was written at the end of an epoch")
    else:
        where = f"step {step}, epoch {pos['epoch']}" + (f" after {pos['batches']} batches" if pos["batches"] else "")
        if int(pos.get("batch_size", cfg.data.batch_size)) != cfg.data.batch_size:
            notes.append(f"data.batch_size changed ({pos['batch_size']} -> {cfg.data.batch_size})")
        if int(pos.get("world_size", world)) != world:
            notes.append(f"the number of processes changed ({pos['world_size']} -> {world})")
    if cfg.schedule.horizon == "time":
        notes.append("schedule.horizon: time decays the learning rate with wall-clock time")
    if cfg.trainer.max_time_s:
        notes.append("trainer.max_time_s ends the run after a wall-clock time")
    if _on_gpu(cfg) and not cfg.trainer.deterministic:
        notes.append("GPU kernels are not deterministic unless trainer.deterministic: true")
    return where, notes


class RunExtension:
    """Hooks a caller adds to a run (``train(cfg, extension=...)``), e.g. source-free adaptation.

    :meth:`check` runs once the recipe is built (datasets, model, loss), before the run folder is
    created: raise a ConfigError / DataError there and nothing is written. :meth:`start` runs
    once the run folder exists (a failure there removes a fresh folder again) and returns extra
    Lightning callbacks. Both may change the run's datasets, task adapter and meta in place.
    """

    def check(self, run: Any, resume: bool) -> None:
        """Validate and adjust the built run (``run``: the engine's ``_Run``)."""

    def start(self, run: Any, run_dir: Path, resume: bool) -> list[Any]:
        """Prepare files in ``run_dir``; the callbacks to add to the trainer."""
        return []


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          devices: int | str | None = None, num_nodes: int | None = None, accelerator: str | None = None,
          extension: RunExtension | None = None) -> TrainResult:
    """Train a model from a recipe.

    The whole recipe (data, model, loss, augmentation, copy-paste, evaluation) is built and checked
    before the run folder is created; if the start still fails after that, the new folder is
    removed, so the corrected command can be run again as it is.

    Args:
        cfg: the validated recipe (:func:`terraseg.training.load_config`).
        resume: continue ``<output>/<name>`` from its ``last.ckpt`` (exactly; see the module docstring).
        overwrite: replace an existing run folder of the same name.
        progress: show the progress bar and a summary line per validation.
        devices, num_nodes, accelerator: override ``trainer.*`` (the CLI's ``--devices`` ...).
        extension: a :class:`RunExtension` (extra checks, files and callbacks; e.g. ``terraseg adapt``).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError / DataError: bad recipe or data, or a damaged / foreign ``last.ckpt``, with the
            file and the problem.
    """
    import lightning as L

    from terraseg.training import label_efficient_task

    t0 = time.perf_counter()
    run_dir = check_run_dir(cfg, resume, overwrite)
    # Label-efficient runs keep their label masks, regions and teacher targets in the run folder, so
    # it is made before the run is built (a failed start still removes it); other runs are built and
    # checked first.
    early_dir = label_efficient_task.enabled(cfg)
    with _quiet_lightning():
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        created = False
        if early_dir:
            run_dir, created = prepare_run_dir(cfg, resume, overwrite)
        try:
            run = _Run(cfg, run_dir if early_dir else None, progress)
            if extension is not None:
                extension.check(run, resume)
            resume_ckpt = None
            if resume:
                from terraseg.training.callbacks import load_resume_checkpoint

                resume_ckpt = load_resume_checkpoint(run_dir / "checkpoints" / "last.ckpt", run.module.state_dict())
        except BaseException:
            if created and not launched_worker():
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
        if not early_dir:
            run_dir, created = prepare_run_dir(cfg, resume, overwrite)
            run.run_dir = run_dir
        trainer = None
        try:
            extra = extension.start(run, run_dir, resume) if extension is not None else []
            trainer, early, ckpts = _build_trainer(cfg, run, run_dir, resume_ckpt, progress, devices, num_nodes,
                                                   accelerator, extra)
            dm = _DataModule(run, cfg, loader_position(resume_ckpt) if resume_ckpt else None)
            if _channels_last(cfg):
                run.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            trainer.fit(run.module, datamodule=dm, ckpt_path=str(ckpts.resume_path) if resume_ckpt else None)
            if len(run.val_frames) and trainer.global_step > 0 and \
                    ckpts.last_validated_step != trainer.global_step and not trainer.interrupted:
                # stopped between validations (max_time, max_steps): score the final weights too
                trainer.validate(run.module, datamodule=dm, verbose=False)
        except BaseException:
            if created and not launched_worker() and (trainer is None or trainer.global_step == 0) \
                    and not (run_dir / "checkpoints" / "last.ckpt").exists():
                shutil.rmtree(run_dir, ignore_errors=True)  # a failed start leaves nothing behind
            raise
    history = read_history(run_dir)
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
             "device": str(trainer.strategy.root_device), "devices": int(trainer.num_devices),
             "precision": str(trainer.precision),
             "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
             "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
             **(run.label_efficient.summary if run.label_efficient is not None else {})},
            indent=2) + "\n")
    return result


def _build_trainer(cfg: TrainConfig, run: _Run, run_dir: Path, resume_ckpt: dict[str, Any] | None, progress: bool,
                   devices: int | str | None, num_nodes: int | None, accelerator: str | None,
                   extra_callbacks: list[Any] | None = None) -> tuple[Any, Any, Any]:
    """Write the run's first files (recipe, class weights; on resume: drop the logs past the
    checkpoint) and build the Lightning trainer; returns ``(trainer, early stopping or None,
    RunCheckpoints)``."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
    from lightning.pytorch.loggers import TensorBoardLogger

    from terraseg.training.callbacks import EMA, AtomicCheckpointIO, EpochSummary, RunCheckpoints, TrainProgressBar
    from terraseg.training.runlog import RunCSVLogger

    tr = cfg.trainer
    primary = not launched_worker()
    if primary and resume_ckpt is None:
        cfg.save(run_dir / "config.yaml")
    if primary:
        run.write_class_weights(run_dir)
    resume_step = int(resume_ckpt["global_step"]) if resume_ckpt is not None else None
    if resume_step is not None and primary:
        truncate_logs(run_dir, resume_step)
    callbacks: list[Any] = []
    ema = EMA(cfg.ema.decay) if cfg.ema.enabled else None
    if ema is not None:
        callbacks.append(ema)
    early = None
    if cfg.early_stopping.patience is not None and len(run.val_frames):
        # checked at each validation's end, before RunCheckpoints saves last.ckpt (so the counter is in it)
        early = EarlyStopping("val/mIoU", mode="max", patience=cfg.early_stopping.patience,
                              min_delta=cfg.early_stopping.min_delta, check_finite=False,
                              check_on_train_epoch_end=False)
        callbacks.append(early)
    # the extension's hooks run before the checkpoints' (a checkpoint holds what they did at its step)
    callbacks.extend(extra_callbacks or [])
    ckpts = RunCheckpoints(run_dir, {**run.meta, "config": cfg.to_dict()}, ema, tr.checkpoint_every_steps,
                           cfg.early_stopping.min_delta)
    ckpts.history = read_history(run_dir) if resume_ckpt is not None else []
    callbacks.append(ckpts)
    callbacks.append(EpochSummary(ckpts, enabled=progress))
    callbacks.append(LearningRateMonitor(logging_interval="step"))
    if progress:
        callbacks.append(TrainProgressBar(leave=True))
    tb_kw: dict[str, Any] = {"purge_step": resume_step} if resume_step is not None else {}
    loggers = [RunCSVLogger(run_dir, flush_logs_every_n_steps=tr.log_every),
               TensorBoardLogger(str(run_dir), name="tb", version="", default_hp_metric=False, **tb_kw)]
    acc = accelerator or tr.accelerator
    ndev = devices if devices is not None else tr.devices
    strategy = tr.strategy
    if strategy == "auto" and (isinstance(ndev, int) and ndev > 1 or (num_nodes or tr.num_nodes) > 1):
        strategy = "ddp_find_unused_parameters_true" if cfg.task in ("image", "fusion") else "ddp"
    val_kw: dict[str, Any] = {}
    if tr.val_every_steps:  # Lightning counts batches: N optimiser steps are N x accumulate batches
        val_kw = {"val_check_interval": tr.val_every_steps * tr.accumulate, "check_val_every_n_epoch": None}
    else:
        val_kw = {"check_val_every_n_epoch": tr.val_every}
    io = AtomicCheckpointIO()
    if resume_ckpt is not None:
        io.preload(ckpts.resume_path, resume_ckpt)
    trainer = L.Trainer(
        accelerator=acc, devices=ndev, num_nodes=num_nodes or tr.num_nodes, strategy=strategy,
        precision=_precision(cfg),  # type: ignore[arg-type]
        max_epochs=tr.max_epochs if tr.max_steps is None else -1,
        max_steps=tr.max_steps if tr.max_steps is not None else -1,
        accumulate_grad_batches=tr.accumulate, gradient_clip_val=tr.grad_clip,
        log_every_n_steps=tr.log_every, callbacks=callbacks, logger=loggers,
        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=tr.deterministic, use_distributed_sampler=False,
        plugins=[io], default_root_dir=str(run_dir),
        max_time={"seconds": tr.max_time_s} if tr.max_time_s else None,  # type: ignore[arg-type]
        limit_val_batches=1.0 if len(run.val_frames) else 0,
        # repeat-factor epochs differ in length: rebuild the loader (and Lightning's batch count) each epoch
        reload_dataloaders_every_n_epochs=1 if cfg.data.repeat_factor is not None and cfg.task == "image" else 0,
        **val_kw)
    if resume_ckpt is not None and trainer.is_global_zero:
        where, notes = _resume_notes(cfg, resume_ckpt, trainer.world_size)
        line = f"resuming {cfg.name} from {ckpts.resume_path} at {where}: " + (
            "continuing exactly like the uninterrupted run" if not notes
            else "not exactly like the uninterrupted run, because " + "; ".join(notes))
        if notes:
            log.warning("%s", line)
        elif progress:
            print(line, flush=True)
        else:
            log.info("%s", line)
    return trainer, early, ckpts


class _DataModule:
    """Builds the DataLoaders once the process knows its DDP rank (Lightning calls these hooks)."""

    def __new__(cls, run: _Run, cfg: TrainConfig, resume_position: dict[str, Any] | None = None) -> Any:
        import lightning as L

        class DM(L.LightningDataModule):
            pending = resume_position

            def train_dataloader(self) -> torch.utils.data.DataLoader:
                from terraseg.training.sampling import RepeatFactorSampler

                trainer = self.trainer
                world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
                factors = run.repeat_factors()
                sampler = _EpochSampler(RepeatFactorSampler(factors, seed=cfg.seed, shuffle=True, num_replicas=world,
                                                            rank=rank), run.train_set)
                # The epoch about to run, set now: a loader's first iterator may be made (and, with
                # workers, start loading) before Lightning calls set_epoch. Lightning builds the first
                # loader before it restores a checkpoint's loops (it counts the batches for the
                # schedule), so a resumed run's position is applied here, to every loader built until
                # its epoch has started.
                epoch = trainer.current_epoch if trainer is not None else 0
                if self.pending is not None and int(self.pending["epoch"]) >= epoch:
                    sampler.start_at(*_start(self.pending, cfg.data.batch_size))
                else:
                    self.pending = None
                    sampler.set_epoch(epoch)
                collate = run.collate
                loader = _TrainLoader(
                    run.train_set, batch_size=cfg.data.batch_size, sampler=sampler,
                    num_workers=cfg.data.num_workers, collate_fn=collate,
                    drop_last=len(factors) > cfg.data.batch_size,  # no 1-sample batches (BatchNorm)
                    persistent_workers=False, pin_memory=torch.cuda.is_available())
                loader.trainer, loader.world_size = trainer, world
                return loader

            def val_dataloader(self) -> torch.utils.data.DataLoader:
                trainer = self.trainer
                world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
                collate = run.collate
                bs = cfg.data.val_batch_size
                # with several processes every one gets the same number of samples (at least one: fewer
                # frames than processes is fine); the padding samples count nowhere
                dataset = IgnoredPadding(run.val_set) if world > 1 else run.val_set
                return torch.utils.data.DataLoader(
                    dataset, batch_size=bs, sampler=ShardSampler(len(run.val_set), world, rank, pad=world > 1),
                    num_workers=cfg.data.num_workers, collate_fn=collate, persistent_workers=False)

        return DM()
