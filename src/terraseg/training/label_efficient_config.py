"""Recipe sections of label-efficient training: ``label_efficient:`` (regions, region contrast,
boundary head and energy loss) and ``distill:`` (2D -> 3D distillation pre-training).

They are fields of :class:`terraseg.training.config.TrainConfig` and validated like every other
section (unknown keys and wrong types name the file and the dotted key); the sparse label budget
itself lives in ``data`` (``data.label_budget``, ``data.label_strategy``, ``data.label_click``).
``docs/label_efficient.md`` says how to run each recipe, ``docs/training.md`` lists every key.

::

    label_efficient:
      regions:  {method: growing, k: 16, smoothness_deg: 10, curvature_threshold: 0.05, min_size: 10,
                 max_radius: 3.0, voxel_size: 1.0}
      contrast: {weight: 0.1, temperature: 0.4, confidence: 0.9, max_regions: 2048}
      boundary: {head_weight: 0.1, energy_weight: 0.1, margin: -5.0, temperature: 1.0, energy_on: head, k: 8}
    distill:
      teacher: runs/sim-litefpn/checkpoints/best.pth   # or timm:NAME / open_clip:NAME with weights
      loss: cosine
      views: auto
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from terraseg.errors import ConfigError

# The library's defaults, repeated so that reading a recipe imports neither numba nor the losses
# (tests/test_label_efficient_training.py checks they agree).
DEFAULT_SMOOTHNESS_DEG = 10.0          # terraseg.geometry.regions
DEFAULT_CURVATURE_THRESHOLD = 0.05
DEFAULT_MIN_SIZE = 10
DEFAULT_MAX_RADIUS = 3.0
DEFAULT_VOXEL_SIZE = 1.0
DEFAULT_BOUNDARY_K = 8
DEFAULT_ENERGY_MARGIN = -5.0           # terraseg.label_efficient.boundary
DEFAULT_ENERGY_TEMPERATURE = 1.0
DEFAULT_TEMPERATURE = 0.4              # terraseg.label_efficient.contrast
DEFAULT_CONFIDENCE = 0.9
DEFAULT_MAX_REGIONS = 2048


@dataclass
class RegionsConfig:
    """The over-segmentation of every training scan (computed once per scan, on the scan as read,
    before augmentation; crops and augmentation carry each point's region along).

    Attributes:
        method: ``growing`` (region growing on normals and curvature) or ``supervoxel`` (one
            region per occupied cube of ``voxel_size`` metres).
        k: neighbours of the normals and of the growth graph.
        smoothness_deg: largest normal angle (degrees) between a point and a neighbour it adds.
        curvature_threshold: an added point grows on only when its surface variation is below this.
        min_size: smaller regions are merged into a neighbouring one.
        max_radius: no point farther than this (metres) from its region's seed; null = unbounded.
        voxel_size: supervoxel side in metres.
    """

    method: Literal["growing", "supervoxel"] = "growing"
    k: int = 16
    smoothness_deg: float = DEFAULT_SMOOTHNESS_DEG
    curvature_threshold: float = DEFAULT_CURVATURE_THRESHOLD
    min_size: int = DEFAULT_MIN_SIZE
    max_radius: float | None = DEFAULT_MAX_RADIUS
    voxel_size: float = DEFAULT_VOXEL_SIZE


@dataclass
class ContrastConfig:
    """Region-level contrastive loss (:func:`terraseg.label_efficient.region_contrastive_loss`).

    Attributes:
        weight: weight of the loss in the total (0 = off).
        temperature: softmax temperature (0.4: contrastive scene contexts).
        confidence: smallest mean probability for a region's predicted class to be used.
        max_regions: at most this many regions per scan (a random subset).
    """

    weight: float = 0.0
    temperature: float = DEFAULT_TEMPERATURE
    confidence: float = DEFAULT_CONFIDENCE
    max_regions: int = DEFAULT_MAX_REGIONS


@dataclass
class BoundaryConfig:
    """Boundary head (targets: region borders) and the boundary-aware energy loss.

    Attributes:
        head_weight: weight of the boundary head's binary cross-entropy (0 = no head).
        energy_weight: weight of the energy loss on boundary points (0 = off).
        margin: energy margin ``m`` (boundary points with free energy above it are penalised).
        temperature: energy temperature ``T``.
        energy_on: which points the energy loss weighs: ``head`` (the head's probability,
            detached; needs ``head_weight > 0``) or ``targets`` (the region borders themselves).
        k: neighbours inspected per point for the region-border targets.
    """

    head_weight: float = 0.0
    energy_weight: float = 0.0
    margin: float = DEFAULT_ENERGY_MARGIN
    temperature: float = DEFAULT_ENERGY_TEMPERATURE
    energy_on: Literal["head", "targets"] = "head"
    k: int = DEFAULT_BOUNDARY_K


@dataclass
class LabelEfficientConfig:
    """The unsupervised terms added to the training loss (every weight 0 by default = off)."""

    regions: RegionsConfig = field(default_factory=RegionsConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    boundary: BoundaryConfig = field(default_factory=BoundaryConfig)

    @property
    def enabled(self) -> bool:
        """True when any unsupervised term has a positive weight."""
        return self.contrast.weight > 0 or self.boundary.head_weight > 0 or self.boundary.energy_weight > 0


@dataclass
class DistillConfig:
    """2D -> 3D distillation pre-training (``terraseg distill RECIPE``; see docs/label_efficient.md).

    Attributes:
        teacher: a terraseg camera checkpoint (``.pth``; its penultimate features and class
            probabilities), ``timm:NAME`` or ``open_clip:NAME`` (with ``teacher_weights``); null
            = no distillation (a normal training run).
        teacher_weights: local weights file of a ``timm:`` / ``open_clip:`` teacher.
        teacher_layer: the camera model's classifier layer whose input is the feature (default:
            found from the model).
        loss: ``cosine`` (1 - cos between a linear head on the 3D features and the fused teacher
            features, OpenScene), ``kl`` (KL between the 3D logits and the fused teacher class
            probabilities, WS3D++; needs a camera-checkpoint teacher of the run's ontology) or
            ``cosine+kl``.
        temperature: KL temperature.
        views: ``camera`` (the real camera's pose, coloured by its image), ``ring`` (virtual
            views around the sensor, coloured by intensity), ``camera+ring``, or ``auto``
            (``camera`` where a frame has a paired image, else ``ring``).
        images: where the camera images of the scans are: ``auto`` (the frame's own image, or a
            simulator output's ``camera/`` folder beside ``data.root``), ``none``, or a simulator
            output folder.
        ring_views: number of virtual ring views.
        view_size: ``[width, height]`` of virtual views in pixels.
        hfov_deg: horizontal field of view of virtual views.
        pitch_deg: downward tilt of virtual views.
        splat_radius: square splat radius (pixels) of rendered points.
        border: image-border pixels whose features are not used.
        cache_dir: where the fused per-scan targets are cached (null: ``<run>/distill_targets``);
            a shared folder lets several runs reuse one teacher pass (sub-folders per teacher and
            view settings).
    """

    teacher: str | None = None
    teacher_weights: str | None = None
    teacher_layer: str | None = None
    loss: Literal["cosine", "kl", "cosine+kl"] = "cosine"
    temperature: float = 1.0
    views: Literal["auto", "camera", "ring", "camera+ring"] = "auto"
    images: str = "auto"
    ring_views: int = 4
    view_size: tuple[int, int] = (320, 240)
    hfov_deg: float = 90.0
    pitch_deg: float = 10.0
    splat_radius: int = 1
    border: int = 5
    cache_dir: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.teacher)


def check_label_efficient(cfg: Any) -> None:
    """Cross-field checks of the label-efficient keys of a :class:`TrainConfig` (ConfigError naming
    the file and the key)."""
    s = cfg.source
    d, le, di = cfg.data, cfg.label_efficient, cfg.distill
    used = [k for k, on in (("data.label_budget", d.label_budget is not None), ("label_efficient", le.enabled),
                            ("distill", di.enabled)) if on]
    if cfg.task != "points" and used:
        raise ConfigError(f"{s}: {used[0]} applies to the points task only (task: {cfg.task})")
    if d.label_budget is not None:
        from terraseg.label_efficient.sparse_labels import LabelBudget

        try:
            budget = LabelBudget.parse(d.label_budget, d.label_strategy, d.label_click)
        except ConfigError as exc:
            raise ConfigError(f"{s}: data.label_budget: {exc}") from None
        if budget.strategy == "regions" and d.label_strategy != "regions" and str(d.label_budget) != "regions":
            raise ConfigError(f"{s}: data.label_budget {d.label_budget!r} needs data.label_strategy: regions")
    elif d.label_strategy != "random" or d.label_click != "random":
        raise ConfigError(f"{s}: data.label_strategy / data.label_click need data.label_budget (the labelled "
                          "points per scan)")
    r = le.regions
    for key, val, ok in (("regions.k", r.k, r.k >= 3), ("regions.min_size", r.min_size, r.min_size >= 1),
                         ("regions.smoothness_deg", r.smoothness_deg, 0 <= r.smoothness_deg <= 90),
                         ("regions.curvature_threshold", r.curvature_threshold, r.curvature_threshold >= 0),
                         ("regions.max_radius", r.max_radius, r.max_radius is None or r.max_radius > 0),
                         ("regions.voxel_size", r.voxel_size, r.voxel_size > 0),
                         ("contrast.weight", le.contrast.weight, le.contrast.weight >= 0),
                         ("contrast.temperature", le.contrast.temperature, le.contrast.temperature > 0),
                         ("contrast.confidence", le.contrast.confidence, 0 <= le.contrast.confidence <= 1),
                         ("contrast.max_regions", le.contrast.max_regions, le.contrast.max_regions >= 2),
                         ("boundary.head_weight", le.boundary.head_weight, le.boundary.head_weight >= 0),
                         ("boundary.energy_weight", le.boundary.energy_weight, le.boundary.energy_weight >= 0),
                         ("boundary.temperature", le.boundary.temperature, le.boundary.temperature > 0),
                         ("boundary.k", le.boundary.k, le.boundary.k >= 2)):
        if not ok:
            raise ConfigError(f"{s}: label_efficient.{key}: bad value {val!r} (see docs/training.md#label_efficient)")
    b = le.boundary
    if b.energy_weight > 0 and b.energy_on == "head" and b.head_weight <= 0:
        raise ConfigError(f"{s}: label_efficient.boundary.energy_on: head needs a boundary head "
                          "(label_efficient.boundary.head_weight > 0), or set energy_on: targets")
    if not di.enabled:
        return
    if d.label_budget is not None:
        raise ConfigError(f"{s}: distillation pre-training uses no labels; drop data.label_budget here and fine-tune "
                          "with it in a second recipe that starts from this run's checkpoint (model.weights)")
    t = str(di.teacher)
    if t.startswith(("timm:", "open_clip:")):
        if not t.split(":", 1)[1]:
            raise ConfigError(f"{s}: distill.teacher {t!r}: name the model, e.g. timm:convnext_tiny")
        if "kl" in di.loss:
            raise ConfigError(f"{s}: distill.loss {di.loss!r} needs class scores: a terraseg camera checkpoint as "
                              f"distill.teacher (a {t.split(':')[0]} encoder has no classifier); use loss: cosine")
    if di.temperature <= 0:
        raise ConfigError(f"{s}: distill.temperature must be > 0, got {di.temperature}")
    if di.ring_views < 1 or di.splat_radius < 0 or di.border < 0 or min(di.view_size) < 8:
        raise ConfigError(f"{s}: distill: ring_views >= 1, splat_radius >= 0, border >= 0 and view_size >= 8 px "
                          f"(got {di.ring_views}, {di.splat_radius}, {di.border}, {list(di.view_size)})")
    if not 0 < di.hfov_deg < 180:
        raise ConfigError(f"{s}: distill.hfov_deg must be in (0, 180), got {di.hfov_deg}")
    if di.views in ("camera", "camera+ring") and di.images == "none":
        raise ConfigError(f"{s}: distill.views: {di.views} needs camera images (distill.images is none)")
