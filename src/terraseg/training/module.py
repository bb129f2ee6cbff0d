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
- :class:`FusionTask`: cross-modal batches (:mod:`terraseg.training.fusion_data`); xMUDA's losses
  (:class:`~terraseg.models.fusion.CrossModalLoss`); validation scores 2D, 3D and 2D+3D.

Validation accumulates a :class:`~terraseg.metrics.ConfusionMatrix` per process, merges it across
processes (``all_reduce``, so DDP metrics count every sample once) and logs ``val/mIoU``,
``val/mAcc``, ``val/aAcc`` (percent) and ``val/IoU/<class>``; tasks that score several predictions
(``val_pairs`` returning a dict) log the others as ``val/mIoU_<key>`` (``val/mIoU_2d`` ...).
Training logs the loss (and its parts, ``train/loss_<part>``), learning rate and throughput.
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

ValPairs = tuple[torch.Tensor, torch.Tensor]


class TaskAdapter:
    """How one kind of batch goes through a model (see the module docstring)."""

    lr_multipliers: dict[str, float] = {}
    """Parameter-name prefix -> learning-rate factor (e.g. a slower 2D network)."""

    def samples(self, batch: dict[str, Any]) -> int:
        return int(batch["index"].numel())

    def loss(self, model: nn.Module, batch: dict[str, Any], loss_fn: nn.Module,
             train_target: Callable[[torch.Tensor], torch.Tensor], aux_weight: float
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor], ValPairs]:
        """(loss, named parts to log, (predicted ids, loss targets) for the training accuracy).

        The default: ``loss_fn`` on the main logits plus ``aux_weight`` x on the aux logits."""
        logits, aux, target = self.train_outputs(model, batch)
        tgt = train_target(target)
        loss = loss_fn(logits, tgt)
        parts = {}
        if aux is not None:
            parts["main"] = loss.detach()
            if aux_weight > 0:
                aux_loss = loss_fn(aux, tgt)
                parts["aux"] = aux_loss.detach()
                loss = loss + aux_weight * aux_loss
        return loss, parts, (class_ids(logits.detach()), tgt)

    def train_outputs(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                               torch.Tensor]:
        """(logits, aux logits or None, target) with logits ``(N, C, ...)`` and target ``(N, ...)``."""
        raise NotImplementedError

    def val_pairs(self, model: nn.Module, batch: dict[str, Any]) -> ValPairs | dict[str, ValPairs]:
        """(predicted ids, target ids), flat, labelled elements only; or a dict of such pairs whose
        ``""`` entry is the main prediction (``val/mIoU``) and the others are logged with their key."""
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


class FusionTask(TaskAdapter):
    """Cross-modal batches: xMUDA's source (and, with a target dataset, target) losses; validation
    scores 2D+3D (the main ``val/mIoU``), 2D (``val/mIoU_2d``) and 3D (``val/mIoU_3d``).

    Args:
        lambda_xm_src, lambda_xm_trg, lambda_entropy: loss weights (see
            :class:`~terraseg.models.fusion.CrossModalLoss`).
        channels_last: feed the image in channels-last memory format.
        lr_2d_mult: learning-rate factor of the 2D network and its mimicry head.
    """

    def __init__(self, lambda_xm_src: float = 1.0, lambda_xm_trg: float = 0.1, lambda_entropy: float = 0.0,
                 channels_last: bool = False, lr_2d_mult: float = 1.0) -> None:
        self.weights = {"lambda_xm_src": lambda_xm_src, "lambda_xm_trg": lambda_xm_trg,
                        "lambda_entropy": lambda_entropy}
        self.channels_last = channels_last
        self.lr_multipliers = {"net2d.": lr_2d_mult, "mimic2d.": lr_2d_mult} if lr_2d_mult != 1.0 else {}

    def _forward(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        if self.channels_last:
            batch = {**batch, "image": batch["image"].contiguous(memory_format=torch.channels_last)}
        return model(batch)

    def loss(self, model, batch, loss_fn, train_target, aux_weight):  # type: ignore[no-untyped-def]
        from terraseg.models.fusion.losses import CrossModalLoss

        xm = CrossModalLoss(loss_fn, **self.weights)
        out = self._forward(model, batch)
        tgt = train_target(batch["target"])
        valid = batch["valid"]
        terms = xm.source(out, tgt, valid)
        trg = batch.get("target_domain")
        if trg is not None:
            terms = terms + xm.target(self._forward(model, trg), trg["valid"])
        pred = ((torch.softmax(out.logits_2d.detach(), 1) + torch.softmax(out.logits_3d.detach(), 1)).argmax(1))
        ok = valid & (tgt != IGNORE_INDEX)
        return terms.total, terms.parts, (pred[ok], tgt[ok])

    def val_pairs(self, model, batch):  # type: ignore[no-untyped-def]
        out = self._forward(model, batch)
        l2, l3, le = out.labels()
        t = batch["target"]
        ok = batch["valid"] & (t != IGNORE_INDEX)
        return {"": (le[ok], t[ok]), "2d": (l2[ok], t[ok]), "3d": (l3[ok], t[ok])}


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
        self.val_cms: dict[str, ConfusionMatrix] = {}
        self.last_result: EvalResult | None = None
        self.last_results: dict[str, EvalResult] = {}
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
        loss, parts, (pred, tgt) = self.task.loss(self.model, batch, self.loss_fn, self._train_target,
                                                  self.config.aux_weight)
        n = self.task.samples(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        if parts:
            self.log_dict({f"train/loss_{k}": v for k, v in parts.items()}, batch_size=n)
        with torch.no_grad():
            ok = tgt != IGNORE_INDEX
            acc = (pred[ok] == tgt[ok]).float().mean() if bool(ok.any()) else torch.tensor(0.0)
        self.log("train/acc", acc * 100.0, batch_size=n)
        self.log_speed_and_lr(n)
        return loss

    def log_speed_and_lr(self, n: int) -> None:
        """Log ``train/samples_per_s`` (all ranks, since the previous batch) and ``train/lr`` (the
        group with the largest ``lr_scale``) for a batch of ``n`` samples."""
        now = time.perf_counter()
        if self._t_batch is not None and now > self._t_batch:
            self.log("train/samples_per_s", n * self.trainer.world_size / (now - self._t_batch), batch_size=n)
        self._t_batch = now
        opt = self.optimizers()
        if not isinstance(opt, list):
            top = max(opt.param_groups, key=lambda g: g.get("lr_scale", 1.0))  # type: ignore[union-attr]
            self.log("train/lr", float(top["lr"]), prog_bar=True, batch_size=n)

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
        self.val_cms = {"": self.val_cm}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.task.val_pairs(self.model, batch)
        groups = out if isinstance(out, dict) else {"": out}
        for key, (pred, target) in groups.items():
            cm = self.val_cms.get(key)
            if cm is None:
                cm = self.val_cms[key] = self.preset.confusion_matrix()
            cm.update(pred.to(torch.int64), target.to(torch.int64))

    def on_validation_epoch_end(self) -> None:
        cm = self.val_cm
        if cm is None:
            return
        for key in sorted(k for k in self.val_cms if k):  # further predictions (2D, 3D of a fusion model)
            other = self.val_cms[key]
            other.all_reduce()
            r = self.preset.evaluate(other)
            self.last_results[key] = r
            for name, value in r.summary().items():
                if name in ("mIoU", "mAcc", "aAcc") and value is not None:
                    self.log(f"val/{name}_{key}", float(value), sync_dist=False)  # type: ignore[arg-type]
        cm.all_reduce()
        res = self.preset.evaluate(cm)
        self.last_result = res
        self.last_results[""] = res
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
        opt = build_optimizer(self.model, self.config.optim, self.task.lr_multipliers)
        total = int(self.trainer.estimated_stepping_batches)
        factor = lr_factor(self.config.schedule, total, self._time_fraction())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
