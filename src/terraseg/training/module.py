"""The Lightning module shared by camera and LiDAR training.

One :class:`SegmentationModule` trains any terraseg model; a small *task adapter* knows how a
batch of its kind goes through the network:

- :class:`ImageTask`: ``{"image", "target"}`` batches; aux heads weighted by ``aux_weight``;
  validation optionally with sliding windows / TTA (``eval.window``, ``eval.tta``).
- :class:`RandLATask`: RandLA-Net input dicts with per-point ``target``.
- :class:`VoxelTask`: voxel batches (:func:`~terraseg.models.points.voxelize.collate_voxels`) with
  per-point ``target``; the loss and the metrics see every point (its voxel's logits).
- :class:`RangeTask`: range images; the loss is per pixel, validation scores every point with a
  pixel (each point reads its pixel's prediction).

Validation accumulates a :class:`~terraseg.metrics.ConfusionMatrix` per process, merges it across
processes (``all_reduce``, so DDP metrics count every sample once) and logs ``val/mIoU``,
``val/mAcc``, ``val/aAcc`` (percent) and ``val/IoU/<class>``; training logs the loss, learning
rate and throughput (samples per second).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from terraseg.metrics import ConfusionMatrix
from terraseg.metrics.presets import EvalPreset, EvalResult
from terraseg.models.image.base import unpack_outputs
from terraseg.models.ops import class_ids
from terraseg.ontology import Ontology
from terraseg.training.config import TrainConfig
from terraseg.training.data import IGNORE_INDEX
from terraseg.training.optim import build_optimizer, lr_factor


class TaskAdapter:
    """How one kind of batch goes through a model (see the module docstring)."""

    def samples(self, batch: dict[str, Any]) -> int:
        return int(batch["index"].numel())

    def train_outputs(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                               torch.Tensor]:
        """(logits, aux logits or None, target) with logits ``(N, C, ...)`` and target ``(N, ...)``."""
        raise NotImplementedError

    def val_pairs(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted ids, target ids), flat, labelled elements only."""
        raise NotImplementedError


class ImageTask(TaskAdapter):
    def __init__(self, window: Any = None, tta: Any = None, channels_last: bool = False) -> None:
        self.window, self.tta, self.channels_last = window, tta, channels_last

    def _x(self, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["image"]
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_outputs(self, model, batch):  # type: ignore[no-untyped-def]
        logits, aux = unpack_outputs(model(self._x(batch)))
        return logits, aux, batch["target"]

    def val_pairs(self, model, batch):  # type: ignore[no-untyped-def]
        x = self._x(batch)
        if self.window is None and self.tta is None:
            pred = class_ids(model(x))
        else:
            from terraseg.models.image.windows import infer_probabilities

            kw = {k: v for k, v in (("window", self.window), ("tta", self.tta)) if v is not None}
            pred = class_ids(infer_probabilities(model, x, model.num_classes, **kw))
        t = batch["target"]
        ok = t != IGNORE_INDEX
        return pred[ok], t[ok]


class RandLATask(TaskAdapter):
    def train_outputs(self, model, batch):  # type: ignore[no-untyped-def]
        logits = model(batch)  # (B, N, C)
        return logits.transpose(1, 2), None, batch["target"]

    def val_pairs(self, model, batch):  # type: ignore[no-untyped-def]
        pred = model(batch).argmax(-1)
        t = batch["target"]
        ok = t != IGNORE_INDEX
        return pred[ok], t[ok]


class VoxelTask(TaskAdapter):
    def train_outputs(self, model, batch):  # type: ignore[no-untyped-def]
        logits = model(batch)  # (N, C) for the batch's N points
        return logits.t().unsqueeze(0), None, batch["target"].unsqueeze(0)

    def val_pairs(self, model, batch):  # type: ignore[no-untyped-def]
        pred = class_ids(model(batch), dim=-1)
        t = batch["target"]
        ok = t != IGNORE_INDEX
        return pred[ok], t[ok]


class RangeTask(TaskAdapter):
    def __init__(self, channels_last: bool = False) -> None:
        self.channels_last = channels_last

    def _x(self, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["range"]
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_outputs(self, model, batch):  # type: ignore[no-untyped-def]
        return model(self._x(batch)), None, batch["target"]

    def val_pairs(self, model, batch):  # type: ignore[no-untyped-def]
        pix = class_ids(model(self._x(batch)))  # (B, H, W)
        preds, targets = [], []
        for b in range(pix.shape[0]):
            preds.append(pix[b, batch["point_row"][b], batch["point_col"][b]])
            targets.append(batch["point_target"][b])
        pred, t = torch.cat(preds), torch.cat(targets).to(pix.device)
        ok = t != IGNORE_INDEX
        return pred[ok], t[ok]


class SegmentationModule(L.LightningModule):
    """Training and validation of one segmentation model (camera or LiDAR).

    Args:
        model: the network (a terraseg image or point model).
        task: the batch adapter.
        loss: a loss module ``loss(logits, target)`` whose ``ignore_index`` is :data:`IGNORE_INDEX`.
        config: the recipe (optimiser, schedule, aux weight).
        ontology: the label ontology (channel ``c`` is class id ``c``).
        preset: the metrics preset of validation.
    """

    def __init__(self, model: nn.Module, task: TaskAdapter, loss: nn.Module, config: TrainConfig,
                 ontology: Ontology, preset: EvalPreset) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.loss_fn = loss
        self.config = config
        self.ontology = ontology
        self.preset = preset
        lut = np.arange(ontology.max_id + 1, dtype=np.int64)
        lut[list(ontology.ignore_ids)] = IGNORE_INDEX
        self.register_buffer("train_lut", torch.from_numpy(lut), persistent=False)
        self.val_cm: ConfusionMatrix | None = None
        self.last_result: EvalResult | None = None
        self._t_batch: float | None = None

    # ------------------------------------------------------------------ training
    def forward(self, x: Any) -> Any:
        return self.model(x)

    def _train_target(self, target: torch.Tensor) -> torch.Tensor:
        """Ontology ids -> loss targets (ignored classes and no-label elements -> IGNORE_INDEX)."""
        ok = target != IGNORE_INDEX
        out = torch.full_like(target, IGNORE_INDEX)
        out[ok] = self.train_lut[target[ok]]
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, aux, target = self.task.train_outputs(self.model, batch)
        tgt = self._train_target(target)
        loss = self.loss_fn(logits, tgt)
        parts = {"train/loss_main": loss.detach()}
        if aux is not None and self.config.aux_weight > 0:
            aux_loss = self.loss_fn(aux, tgt)
            parts["train/loss_aux"] = aux_loss.detach()
            loss = loss + self.config.aux_weight * aux_loss
        n = self.task.samples(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        if aux is not None:
            self.log_dict(parts, batch_size=n)
        with torch.no_grad():
            ok = tgt != IGNORE_INDEX
            acc = (class_ids(logits)[ok] == tgt[ok]).float().mean() if bool(ok.any()) else torch.tensor(0.0)
        self.log("train/acc", acc * 100.0, batch_size=n)
        now = time.perf_counter()
        if self._t_batch is not None:
            dt = now - self._t_batch
            if dt > 0:
                self.log("train/samples_per_s", n * self.trainer.world_size / dt, batch_size=n)
        self._t_batch = now
        opt = self.optimizers()
        if not isinstance(opt, list):
            top = max(opt.param_groups, key=lambda g: g.get("lr_scale", 1.0))  # type: ignore[union-attr]
            self.log("train/lr", float(top["lr"]), prog_bar=True, batch_size=n)
        return loss

    def on_train_epoch_start(self) -> None:
        self._t_batch = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Re-seed the global generators (dropout, DropPath, anything drawing from torch / numpy /
        random) from (seed, epoch, batch, rank): each batch's random draws then do not depend on what
        ran before it (validations, data-loader start-up), so a run resumed at any saved step
        continues exactly like the uninterrupted run."""
        import random

        s = int(np.random.SeedSequence([self.config.seed, self.current_epoch, batch_idx,
                                        self.global_rank]).generate_state(1)[0])
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self.val_cm = self.preset.confusion_matrix()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred, target = self.task.val_pairs(self.model, batch)
        assert self.val_cm is not None
        self.val_cm.update(pred.to(torch.int64), target.to(torch.int64))

    def on_validation_epoch_end(self) -> None:
        cm = self.val_cm
        if cm is None:
            return
        cm.all_reduce()
        res = self.preset.evaluate(cm)
        self.last_result = res
        summ = res.summary()
        miou = summ.get("mIoU")
        # rank-identical values (after all_reduce), so no sync is needed
        self.log("val/mIoU", float(miou) if miou is not None else 0.0, prog_bar=True, sync_dist=False)
        for key in ("mAcc", "aAcc", "category_mIoU", "composite_mIoU"):
            if summ.get(key) is not None:
                self.log(f"val/{key}", float(summ[key]), sync_dist=False)  # type: ignore[arg-type]
        s = res.scores
        for cid, name, iou in zip(s.class_ids, s.class_names, s.iou):
            if np.isfinite(iou):
                self.log(f"val/IoU/{name or cid}", float(iou) * 100.0, sync_dist=False)

    # ------------------------------------------------------------------ optimisation
    def _time_fraction(self) -> Callable[[], float] | None:
        """Fraction of ``trainer.max_time_s`` spent training (resumed runs included), for
        ``schedule.horizon: time``; None for step-based schedules."""
        limit = self.config.trainer.max_time_s
        if self.config.schedule.horizon != "time" or not limit:
            return None
        from lightning.pytorch.callbacks import Timer

        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)  # type: ignore[attr-defined]
        if timer is None:
            return None
        return lambda: timer.time_elapsed("train") / float(limit)

    def configure_optimizers(self) -> Any:
        opt = build_optimizer(self.model, self.config.optim)
        total = int(self.trainer.estimated_stepping_batches)
        factor = lr_factor(self.config.schedule, total, self._time_fraction())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
