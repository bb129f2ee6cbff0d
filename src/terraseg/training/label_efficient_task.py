"""Label-efficient training in the engine: sparse labels, region contrast, boundary head and energy
loss, and 2D -> 3D distillation pre-training (reference 003, WS3D++; docs/label_efficient.md).

The engine calls :func:`prepare` when a recipe asks for any of it (:func:`enabled`); it draws or
reads the run's label masks, computes the per-scan regions and teacher targets, replaces the
training samples with :class:`~terraseg.training.label_efficient_data.LabelEfficientScans` and
then builds a :class:`LabelEfficientModule` (the engine's :class:`SegmentationModule` with another
training step). Validation always scores every labelled point of the validation scans.

Per-point features
------------------
The unsupervised terms need each point's penultimate features next to its logits. One table says
how a network gives both, :data:`POINT_FEATURES`: ``arch -> PointFeatures(forward, feature_dim)``
with ``forward(model, batch) -> (logits (B, N, K), features (B, N, C))``. RandLA-Net's features are
the input of its classifier layer (:func:`terraseg.label_efficient.forward_with_features`, a
forward hook, one pass). The sparse voxel U-Net plugs in with one entry once it has landed::

    "voxelunet": PointFeatures(lambda m, b: _voxel_forward(m, b), lambda m: m.feature_dim)

where ``_voxel_forward`` returns its logits and ``forward_features`` output shaped ``(B, N, .)``.

Losses (each logged as ``train/loss_<term>``; ``train/loss`` is the weighted sum)::

    supervised (not in distillation runs)  the recipe's loss on the labelled points only
    contrast  = contrast.weight * region_contrastive_loss(features, logits, regions)   per scan, mean
    boundary  = boundary.head_weight * BCE(boundary head(features), region borders)
    energy    = boundary.energy_weight * boundary_energy_loss(logits, border weights)
    distill   = 1 - cos(head(features), teacher features)  and/or  T^2 KL(teacher probs || softmax(logits))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from terraseg.errors import ConfigError
from terraseg.label_efficient.boundary import BoundaryHead, boundary_energy_loss, boundary_loss, free_energy
from terraseg.label_efficient.contrast import region_contrastive_loss
from terraseg.label_efficient.distill import (
    DISTILL_HEAD_FILE,
    DistillHead,
    cosine_distill_loss,
    forward_with_features,
    kl_distill_loss,
    save_distill_head,
)
from terraseg.label_efficient.sparse_labels import LabelBudget, SparseLabels
from terraseg.label_efficient.targets import (
    CameraImages,
    LoadedTeacher,
    ScanTargets,
    TargetCache,
    ViewSettings,
    check_teacher,
    classifier_scores,
    load_teacher,
    scan_teacher_targets,
)
from terraseg.models.ops import class_ids
from terraseg.progress import ProgressBar
from terraseg.training.config import TrainConfig
from terraseg.training.data import IGNORE_INDEX
from terraseg.training.label_efficient_data import (
    LabelEfficientScans,
    RegionCache,
    label_counts,
    labellable_labels,
    sparse_labels_for_run,
)
from terraseg.training.module import SegmentationModule, TaskAdapter
from terraseg.training.optim import build_optimizer, lr_factor

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- features
@dataclass(frozen=True)
class PointFeatures:
    """How a network gives per-point logits and features (see the module docstring).

    Attributes:
        forward: ``forward(model, batch) -> (logits (B, N, K), features (B, N, C))``, features in
            the autograd graph.
        feature_dim: ``feature_dim(model) -> C``.
    """

    forward: Callable[[nn.Module, dict[str, Any]], tuple[Tensor, Tensor]]
    feature_dim: Callable[[nn.Module], int]


def _classifier_input_dim(model: nn.Module) -> int:
    from terraseg.label_efficient.teacher import find_classifier

    _, layer = find_classifier(model)
    dim = getattr(layer, "in_features", None) or getattr(layer, "in_channels", None)
    if dim is None:
        raise ConfigError(f"cannot tell the feature width of {type(model).__name__}'s classifier")
    return int(dim)


POINT_FEATURES: dict[str, PointFeatures] = {
    "randlanet": PointFeatures(lambda m, b: forward_with_features(m, b), _classifier_input_dim),
}
"""arch -> :class:`PointFeatures` (a closed table; add the voxel U-Net here)."""


def point_features(arch: str) -> PointFeatures:
    if arch not in POINT_FEATURES:
        raise ConfigError(f"label-efficient training needs per-point features; supported networks: "
                          f"{', '.join(POINT_FEATURES)} (model.arch is {arch!r})")
    return POINT_FEATURES[arch]


def enabled(cfg: TrainConfig) -> bool:
    """True when the recipe asks for sparse labels, an unsupervised term or distillation."""
    return cfg.task == "points" and (cfg.data.label_budget is not None or cfg.label_efficient.enabled
                                     or cfg.distill.enabled)


# ---------------------------------------------------------------------------------------------- targets
class TargetStore:
    """Per-scan distillation targets of the training set, from a :class:`TargetCache` (kept in
    memory with ``data.cache``)."""

    def __init__(self, cache: TargetCache, frame_ids: list[str], num_points: list[int], keep: bool) -> None:
        self.cache, self.frame_ids, self.num_points, self.keep = cache, frame_ids, num_points, keep
        self._mem: dict[int, ScanTargets] = {}

    def __call__(self, index: int) -> ScanTargets:
        if index in self._mem:
            return self._mem[index]
        t = self.cache.load(self.frame_ids[index], self.num_points[index])
        if t is None:
            raise ConfigError(f"distillation targets of frame {self.frame_ids[index]} are missing from {self.cache.dir}")
        if self.keep:
            self._mem[index] = t
        return t


def _teacher_device(cfg: TrainConfig) -> str:
    acc = cfg.trainer.accelerator
    return "cuda" if torch.cuda.is_available() and acc in ("auto", "gpu", "cuda") else "cpu"


def target_cache(cfg: TrainConfig, teacher: LoadedTeacher, run_dir: Path) -> tuple[TargetCache, ViewSettings,
                                                                                   CameraImages]:
    """The target cache, views and camera images of a distillation recipe (the cache key covers the
    teacher's weights, the views and where the images come from)."""
    di = cfg.distill
    images = CameraImages(di.images, cfg.data.root)
    settings = ViewSettings(**{f.name: getattr(di, f.name) for f in fields(ViewSettings)
                               if f.name != "view_size"}, view_size=tuple(di.view_size))  # type: ignore[arg-type]
    root = Path(di.cache_dir) if di.cache_dir else run_dir / "distill_targets"
    cache = TargetCache(root, {"teacher": teacher.fingerprint, "views": settings.to_dict(), "images": images.describe()})
    return cache, settings, images


def targets_of(frame: Any, teacher: LoadedTeacher, settings: ViewSettings, images: CameraImages) -> ScanTargets:
    """Compute one frame's fused teacher targets (the views the settings ask for)."""
    cam = images(frame) if settings.views != "ring" else None
    if settings.views in ("camera", "camera+ring") and cam is None:
        raise ConfigError(f"distill.views: {settings.views} but frame {frame.frame_id} has no camera image "
                          f"({images.describe()}); use views: auto or ring")
    return scan_teacher_targets(np.asarray(frame.points), teacher, settings, cam)


def fill_targets(run: Any, teacher: LoadedTeacher, progress: bool) -> tuple[TargetStore, dict[str, Any]]:
    """Compute (or read from the cache) the fused teacher targets of every training scan."""
    cfg = run.cfg
    cache, settings, images = target_cache(cfg, teacher, run.run_dir)
    frames = run.train_frames
    computed = reused = seen = points = camera = 0
    ids: list[str] = []
    counts: list[int] = []
    t_teacher = 0.0
    with ProgressBar(len(frames), "teacher targets", enabled=progress) as bar:
        for i in range(len(frames)):
            f = frames[i]
            n = len(f.points) if f.points is not None else 0
            ids.append(str(f.frame_id))
            counts.append(n)
            t = cache.load(str(f.frame_id), n)
            if t is None:
                t0 = time.perf_counter()
                t = targets_of(f, teacher, settings, images)
                t_teacher += time.perf_counter() - t0
                cache.save(str(f.frame_id), t)
                computed += 1
            else:
                reused += 1
            camera += int("camera" in t.views)
            seen += len(t.seen)
            points += t.num_points
            bar.advance()
    info = {"teacher": teacher.spec, "cache": str(cache.dir), "computed": computed, "reused": reused,
            "scans_with_camera": camera, "seen_share": seen / max(points, 1),
            "teacher_s_per_scan": round(t_teacher / computed, 3) if computed else None}
    return TargetStore(cache, ids, counts, cfg.data.cache), info


# ---------------------------------------------------------------------------------------------- setup
@dataclass
class Prepared:
    """What :func:`prepare` built: the pieces of the run's :class:`LabelEfficientModule`."""

    features: PointFeatures
    feature_dim: int
    sparse: SparseLabels | None
    teacher: LoadedTeacher | None
    distill_dim: int | None
    summary: dict[str, Any]

    def module(self, run: Any, task: TaskAdapter) -> LabelEfficientModule:
        return LabelEfficientModule(run.model, task, run.loss, run.cfg, run.ontology, run.preset,
                                    features=self.features, feature_dim=self.feature_dim, teacher=self.teacher,
                                    distill_dim=self.distill_dim, run_dir=run.run_dir)


def prepare(run: Any, progress: bool = True, write: bool = True) -> Prepared:
    """Set a run up for label-efficient training (the engine's hook; see the module docstring).

    Reads ``run.cfg``, ``run.run_dir``, ``run.train_frames``, ``run.ontology``, ``run.model``,
    ``run.train_set``; replaces ``run.train_set`` and, with sparse labels, the class statistics the
    loss weights come from (labelled points only); adds ``labels`` / ``regions`` / ``distill`` to
    ``run.meta`` (saved in the checkpoints).
    """
    cfg: TrainConfig = run.cfg
    arch = str(run.model.spec["arch"])
    feats = point_features(arch)
    dim = feats.feature_dim(run.model)
    le, d = cfg.label_efficient, cfg.data
    budget = LabelBudget.parse(d.label_budget, d.label_strategy, d.label_click) if d.label_budget is not None else None
    need_regions = cfg.label_efficient.enabled or (budget is not None and budget.strategy == "regions")
    summary: dict[str, Any] = {}
    regions = None
    if need_regions:
        regions = RegionCache.build(run.train_frames, run.ontology, le.regions, le.boundary.k, run.run_dir,
                                    progress, write)
        summary["regions"] = regions.summary(le.regions)
    sparse = None
    if budget is not None:
        sparse = sparse_labels_for_run(run.train_frames, run.ontology, budget, cfg.seed, run.run_dir, regions,
                                       progress, write)
        summary["labels"] = label_counts(run.train_frames, run.ontology, sparse)
        run._stats = _sparse_class_stats(run, sparse)
        lab = summary["labels"]
        msg = (f"sparse labels: {lab['labelled_points']:,} of {lab['labellable_points']:,} labellable points "
               f"({100 * lab['labelled_share_of_labellable']:.3g}%) in {lab['frames']} training scans; {lab['budget']}, "
               f"seed {lab['seed']} -> {run.run_dir / lab['file']}")
        log.info(msg)
        if progress:
            print(msg, flush=True)
    teacher = None
    distill_dim = None
    targets = None
    if cfg.distill.enabled:
        names = [run.ontology.name_of(i) or f"class {i}" for i in range(run.num_classes)]
        di = cfg.distill
        teacher = load_teacher(str(di.teacher), di.teacher_weights, di.teacher_layer, _teacher_device(cfg), names)
        if "kl" in di.loss and (teacher.ontology is None or teacher.ontology.name != run.ontology.name
                                or teacher.ontology.max_id != run.ontology.max_id):
            have = teacher.ontology.name if teacher.ontology is not None else "no ontology"
            raise ConfigError(f"{cfg.source}: distill.loss {di.loss!r} matches class scores: the teacher predicts "
                              f"{have!r}, the run {run.ontology.name!r}; use loss: cosine")
        targets, info = fill_targets(run, teacher, progress)
        summary["distill"] = info
        distill_dim = targets(0).dim if len(run.train_frames) else None
        if progress:
            print(f"distillation targets: {info['computed']} computed, {info['reused']} read from {info['cache']}; "
                  f"{100 * info['seen_share']:.1f}% of the points seen by the teacher", flush=True)
    run.train_set = LabelEfficientScans(run.train_set, sparse, regions, targets)
    run.meta.update({k: v for k, v in summary.items() if k in ("labels", "regions")})
    if teacher is not None:
        run.meta["distill"] = {"teacher": teacher.spec, "loss": cfg.distill.loss}
    return Prepared(feats, dim, sparse, teacher, distill_dim, summary)


def _sparse_class_stats(run: Any, sparse: SparseLabels) -> Any:
    """Class counts of the labelled points only (what a user of these masks knows)."""
    from terraseg.datasets.stats import ClassStats

    stats = ClassStats(run.ontology, "points")
    for i in range(len(run.train_frames)):
        f = run.train_frames[i]
        lab = labellable_labels(f, run.ontology)
        stats.update_labels(lab[sparse.mask(str(f.frame_id), len(lab))], "train", str(f.frame_id))
    return stats


# ---------------------------------------------------------------------------------------------- module
class LabelEfficientModule(SegmentationModule):
    """:class:`SegmentationModule` whose training step adds the label-efficient terms.

    Args (beyond the parent's):
        features: the network's :class:`PointFeatures`.
        feature_dim: width of the per-point features.
        teacher: the distillation teacher (distillation runs), else None.
        distill_dim: the teacher's feature width (cosine distillation).
        run_dir: where ``checkpoints/distill_head.pth`` is written (cosine distillation).
    """

    def __init__(self, model: nn.Module, task: TaskAdapter, loss: nn.Module, config: TrainConfig, ontology: Any,
                 preset: Any, *, features: PointFeatures, feature_dim: int, teacher: LoadedTeacher | None = None,
                 distill_dim: int | None = None, run_dir: Path | None = None) -> None:
        super().__init__(model, task, loss, config, ontology, preset)
        self.features = features
        le = config.label_efficient
        self.boundary_head = BoundaryHead(feature_dim) if le.boundary.head_weight > 0 else None
        di = config.distill
        self.distilling = di.enabled
        self.cosine = di.enabled and "cosine" in di.loss
        self.kl = di.enabled and "kl" in di.loss
        self.distill_head = DistillHead(feature_dim, int(distill_dim)) if self.cosine and distill_dim else None
        self.zero_shot: dict[str, Any] | None = None
        if self.cosine and not self.kl and teacher is not None and teacher.classifier is not None \
                and teacher.classifier["weight"].shape[0] == ontology.max_id + 1 \
                and teacher.classifier["weight"].shape[1] == distill_dim:
            self.zero_shot = teacher.classifier
        self.teacher_spec = teacher.spec if teacher is not None else None
        self.run_dir = run_dir
        self._best_zero_shot = -float("inf")

    # ------------------------------------------------------------------ training
    def supervised_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """The recipe's loss on ``(B, K, N)`` logits and ``(B, N)`` targets (unlabelled = ignored)."""
        return self.loss_fn(logits, target)

    def _generator(self) -> torch.Generator:
        g = torch.Generator()
        g.manual_seed(int(np.random.SeedSequence([self.config.seed, self.global_step, 17]).generate_state(1)[0]))
        return g

    def loss_terms(self, batch: dict[str, Any]) -> tuple[dict[str, tuple[float, Tensor]], Tensor, Tensor, dict[str, Tensor]]:
        """``({term: (weight, value)}, logits (B, N, K), train target (B, N), diagnostics)``."""
        logits, feats = self.features.forward(self.model, batch)
        target = self._train_target(batch["target"])
        le = self.config.label_efficient
        terms: dict[str, tuple[float, Tensor]] = {}
        diag: dict[str, Tensor] = {}
        if not self.distilling:
            terms["sup"] = (1.0, self.supervised_loss(logits.transpose(1, 2), target))
        b_count = logits.shape[0]
        if le.contrast.weight > 0:
            gen = self._generator()
            vals = [region_contrastive_loss(feats[b], logits[b], batch["regions"][b], le.contrast.temperature,
                                            le.contrast.confidence, labels=target[b], ignore_index=IGNORE_INDEX,
                                            max_regions=le.contrast.max_regions, generator=gen)
                    for b in range(b_count)]
            terms["contrast"] = (le.contrast.weight, torch.stack(vals).mean())
        has_region = batch["regions"] >= 0 if "regions" in batch else None
        bl = None
        if self.boundary_head is not None:
            bl = self.boundary_head(feats)
            terms["boundary"] = (le.boundary.head_weight, boundary_loss(bl, batch["boundary"], valid=has_region))
        if le.boundary.energy_weight > 0:
            w = torch.sigmoid(bl).detach() if le.boundary.energy_on == "head" and bl is not None \
                else batch["boundary"].float()
            w = w * has_region.float()
            terms["energy"] = (le.boundary.energy_weight, boundary_energy_loss(logits, w, le.boundary.margin,
                                                                             le.boundary.temperature))
            with torch.no_grad():
                e = free_energy(logits.detach(), le.boundary.temperature)
                border = batch["boundary"] & has_region
                if bool(border.any()):
                    diag["energy_border"] = e[border].mean()
                lab = target != IGNORE_INDEX
                if bool(lab.any()):
                    diag["energy_labelled"] = e[lab].mean()
        if self.distilling:
            valid = batch["distill_valid"]
            if self.cosine and self.distill_head is not None:
                terms["distill_cos"] = (1.0, cosine_distill_loss(self.distill_head(feats), batch["distill_feat"], valid))
            if self.kl:
                terms["distill_kl"] = (1.0, kl_distill_loss(logits, batch["distill_prob"], valid,
                                                            self.config.distill.temperature))
        return terms, logits, target, diag

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        terms, logits, target, diag = self.loss_terms(batch)
        loss = sum(w * v for w, v in terms.values())
        assert isinstance(loss, Tensor)
        n = self.task.samples(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/loss_{k}": v.detach() for k, (_, v) in terms.items()}, batch_size=n)
        self.log_dict({f"train/{k}": v for k, v in diag.items()}, batch_size=n)
        with torch.no_grad():  # distillation runs see no labels: no supervised counts or accuracy
            ok = target != IGNORE_INDEX
            if not self.distilling:
                self.log("train/labelled_points", ok.sum().float(), batch_size=n)
            if bool(ok.any()) and not self.distilling:
                self.log("train/acc", (class_ids(logits.transpose(1, 2))[ok] == target[ok]).float().mean() * 100.0,
                         batch_size=n)
        self.log_speed_and_lr(n)
        return loss

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if self.zero_shot is None or self.distill_head is None:
            return super().validation_step(batch, batch_idx)
        # cosine distillation: score the distilled features with the teacher's own classifier
        _, feats = self.features.forward(self.model, batch)
        pred_feat = self.distill_head(feats)
        scores = classifier_scores(self.zero_shot, pred_feat.reshape(-1, pred_feat.shape[-1]))
        pred = scores.argmax(dim=1).view(pred_feat.shape[:-1])
        t = batch["target"]
        ok = t != IGNORE_INDEX
        assert self.val_cm is not None
        self.val_cm.update(pred[ok].to(torch.int64), t[ok].to(torch.int64))

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.distill_head is not None and not self.trainer.sanity_checking and self.trainer.is_global_zero:
            self.save_distill_head()

    def on_train_end(self) -> None:
        if self.distill_head is not None and self.trainer.is_global_zero:
            self.save_distill_head()

    def save_distill_head(self) -> Path | None:
        """Write ``<run>/checkpoints/distill_head.pth``: the head mapping the network's features to
        the teacher's, the teacher, and its classifier (for zero-shot and open-vocabulary use)."""
        if self.run_dir is None or self.distill_head is None:
            return None
        return save_distill_head(self.run_dir / "checkpoints" / DISTILL_HEAD_FILE, self.distill_head,
                                 str(self.teacher_spec), int(self.global_step), self.zero_shot)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        """The parent's optimiser and schedule, with the boundary / distillation heads in one more
        parameter group at the base learning rate."""
        opt = build_optimizer(self.model, self.config.optim)
        heads = [m for m in (self.boundary_head, self.distill_head) if m is not None]
        if heads:
            c = self.config.optim
            opt.add_param_group({"params": [p for h in heads for p in h.parameters()], "lr": c.lr, "initial_lr": c.lr,
                                 "weight_decay": c.weight_decay, "lr_scale": 1.0})
        total = int(self.trainer.estimated_stepping_batches)
        factor = lr_factor(self.config.schedule, total, self._time_fraction())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda=factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


# ---------------------------------------------------------------------------------------------- entry
def distill(cfg: TrainConfig, **kwargs: Any) -> Any:
    """Distillation pre-training from a recipe with a ``distill:`` section (``terraseg distill``):
    :func:`terraseg.training.train` for that recipe, refusing recipes without ``distill.teacher``.

    Returns:
        The :class:`~terraseg.training.engine.TrainResult`; fine-tune from its ``last_checkpoint``
        (``model.weights``) with sparse labels.
    """
    if not cfg.distill.enabled:
        raise ConfigError(f"{cfg.source}: no distill.teacher: a distillation recipe names its 2D teacher (a camera "
                          "checkpoint, timm:NAME or open_clip:NAME; see configs/sim_distill.yaml)")
    check_teacher(str(cfg.distill.teacher), cfg.distill.teacher_weights)  # before the run folder is made
    from terraseg.training.engine import train

    return train(cfg, **kwargs)
