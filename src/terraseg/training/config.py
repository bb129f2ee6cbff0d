"""Training recipes: a YAML file validated at load time, changed with ``key=value`` overrides.

A recipe is a mapping with the sections below (every key optional except ``data.root``;
``docs/training.md`` lists each key with its default and meaning)::

    task: image                 # image (camera), points (LiDAR) or fusion (camera + LiDAR, xMUDA)
    name: sim-litefpn           # run folder name under ``output``
    output: runs                # runs are written to <output>/<name>/
    seed: 0
    data:    {root, kind, train_split, val_split, ontology, remap, batch_size, ...}
    model:   {arch, encoder, preset, pretrained, weights, options, ...; fusion: net2d, net3d}
    fusion:  {lambda_xm_src, lambda_xm_trg, lambda_entropy, sampling, target, ...}   # task fusion
    loss:    [{name: ce, class_weights: enet}, {name: lovasz, weight: 1.0}]
    augment: {...}              # ImageAugConfig (image) or PointAugConfig (points) fields;
                                # fusion: {image: {...}, points: {...}}
    copy_paste: {...}           # image only: rare-class copy-paste
    optim:   {name: adamw, lr, weight_decay, layer_decay, ...}
    schedule: {name: poly, warmup_iters, power, ...}
    trainer: {max_epochs or max_steps, precision, devices, num_nodes, accumulate, ...}
    ema:     {enabled, decay}
    early_stopping: {patience, min_delta}
    eval:    {preset, window, tta}
    label_efficient: {regions, contrast, boundary}   # points: unsupervised terms (docs/label_efficient.md)
    distill: {teacher, loss, views, ...}             # points: 2D -> 3D distillation pre-training

Overrides use dotted keys and YAML values: ``trainer.max_epochs=2``, ``optim.lr=3e-4``,
``data.root=/data/goose``, ``augment.crop=[512,512]``, ``model.weights=null``. Unknown keys and
values of the wrong type raise :class:`~terraseg.errors.ConfigError` naming the file and the
dotted key. Relative paths in a recipe are relative to the current directory.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from terraseg.errors import ConfigError
from terraseg.io.atomic import atomic_write_text
from terraseg.training.label_efficient_config import DistillConfig, LabelEfficientConfig
from terraseg.yamlio import read_yaml


@dataclass
class DataConfig:
    """Where the data is and how it is batched.

    Attributes:
        root: dataset folder (any layout :func:`terraseg.datasets.open_dataset` reads).
        kind: dataset kind (``auto`` detects it from the layout).
        train_split, val_split: split names passed to the reader.
        ontology: label ontology the model predicts (default: the dataset's, after ``remap``).
        remap: a LabelMap YAML or target ontology name applied when frames are read.
        options: extra reader keyword arguments (``camera``, ``mask_suffix``, ``ontology`` ...).
        batch_size: samples per training step and process.
        val_batch_size: samples per validation step (1 for whole scans / full-size images).
        num_workers: DataLoader worker processes (0 = load in the main process).
        cache: keep decoded frames in memory (small datasets, many epochs).
        max_train_frames, max_val_frames: use only the first N frames (quick experiments).
        repeat_factor: LVIS repeat-factor sampling threshold ``t`` (images with classes seen in
            fewer than a fraction ``t`` of the images are repeated); None disables it.
        max_points: points task: points per training sample (random spatial crop around a
            random centre, as RandLA-Net's 45,056-point crops); None keeps whole scans.
        projection: points task, range networks: the spherical projection preset or
            ``organized:HxW`` for sensor-ordered scans (no augmentation then).
        intensity_max: points task: raw intensities (column 3) are divided by this before the
            network, e.g. 255 for 8-bit sensor intensities (None: used as stored). Recorded in
            the checkpoint with the training intensity statistics, and applied again by every
            predictor of the model.
        class_weights_file: class statistics JSON written by ``terraseg inspect DATA --split train
            --out DIR``; without it named class weights (``enet`` ...) are computed from the
            training split.
        label_budget: points task: labelled points per training scan: a percentage (``"1%"``,
            ``"0.1%"``), a count (``20``) or ``"regions"`` (one click per region); null = every
            label. Drawn once per run from ``seed`` and stored as ``<run>/sparse_labels.npz``.
        label_strategy: ``random`` points or ``regions`` (one click per region of
            ``label_efficient.regions``, round by round).
        label_click: with ``regions``: a ``random`` point of the region or its ``center``.
    """

    root: str = ""
    kind: str = "auto"
    train_split: str = "train"
    val_split: str = "val"
    ontology: str | None = None
    remap: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 4
    val_batch_size: int = 1
    num_workers: int = 0
    cache: bool = False
    max_train_frames: int | None = None
    max_val_frames: int | None = None
    repeat_factor: float | None = None
    max_points: int | None = None
    projection: str = "velodyne-hdl64e"
    intensity_max: float | None = None
    class_weights_file: str | None = None
    label_budget: int | float | str | None = None
    label_strategy: Literal["random", "regions"] = "random"
    label_click: Literal["random", "center"] = "random"


@dataclass
class Net2DConfig:
    """The 2D network of a cross-modal model (``task: fusion``): ``build_image_model`` arguments.

    Attributes:
        arch: image architecture with per-pixel features (litefpn, fpn, deeplabv3plus, upernet,
            segformer, acfnet).
        encoder: encoder name (default: the arch's).
        pretrained: ImageNet encoder weights (downloads; off in tests and CI).
        weights: a camera-model checkpoint to start the 2D network from (class rows remapped).
        options: further architecture options.
    """

    arch: str = "litefpn"
    encoder: str | None = None
    pretrained: bool = False
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Net3DConfig:
    """The 3D network of a cross-modal model (``task: fusion``): ``build_point_model`` arguments.

    Attributes:
        arch: point architecture with per-point features (randlanet; voxelunet).
        preset: width preset.
        in_channels: point columns read (3 = x, y, z; 4 adds intensity).
        weights: a LiDAR-model checkpoint to start the 3D network from (class rows remapped).
        options: further config fields.
    """

    arch: str = "randlanet"
    preset: str = "default"
    in_channels: int | None = None
    weights: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Which network to build (``build_image_model`` or ``build_point_model`` arguments).

    Attributes:
        arch: image: upernet, deeplabv3plus, segformer, fpn, litefpn, acfnet, mask2former;
            points: randlanet, salsanext.
        encoder: image encoder (default: the arch's).
        preset: points: width preset (default, small, tiny, large).
        pretrained: image: ImageNet encoder weights (downloads; off in tests and CI).
        weights: a checkpoint to start from (loaded with class remapping).
        source_ontology: the ontology ``weights`` were trained on, when the file does not say.
        label_map: LabelMap YAML from the weights' ontology to this run's.
        aux: image: auxiliary head on/off (default: the arch's).
        in_channels: points: input features (RandLA-Net 3 = xyz, 4 = + intensity).
        options: further architecture options.
        net2d, net3d: fusion: the 2D and 3D networks (required for ``task: fusion``, unused
            otherwise); ``weights`` then names a whole cross-modal checkpoint.
    """

    arch: str = "litefpn"
    encoder: str | None = None
    preset: str = "default"
    pretrained: bool = False
    weights: str | None = None
    source_ontology: str | None = None
    label_map: str | None = None
    aux: bool | None = None
    in_channels: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    net2d: Net2DConfig | None = None
    net3d: Net3DConfig | None = None


@dataclass
class OptimConfig:
    """Optimiser.

    Attributes:
        name: adamw, adam or sgd.
        lr: base learning rate (of the decoder/head; encoder layers get ``lr * layer_decay**depth``).
        weight_decay: weight decay (decoupled for AdamW, an L2 penalty for Adam and SGD; not applied
            to norms and biases when ``no_decay_norm_bias``).
        betas: Adam(W) betas; momentum: SGD momentum.
        layer_decay: layer-wise learning-rate decay of the encoder (BEiT / ConvNeXt style, stage-wise:
            stem and each stage are one layer); 1.0 disables it.
        encoder_lr_mult: extra factor on every encoder learning rate (e.g. 0.1 for fine-tuning).
    """

    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    layer_decay: float = 1.0
    encoder_lr_mult: float = 1.0
    no_decay_norm_bias: bool = True


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, stepped every optimiser step.

    Attributes:
        name: poly (``(1 - t / T) ** power``), cosine, or constant.
        warmup_iters: linear warm-up steps from ``warmup_ratio * lr``.
        warmup_ratio: starting factor of the warm-up.
        power: exponent of the poly schedule.
        min_lr_ratio: floor of the decay, as a fraction of the base learning rate.
        horizon: ``steps`` (decay over ``max_epochs`` / ``max_steps``) or ``time``: decay over
            whichever ends first, the steps or ``trainer.max_time_s`` of training wall time
            (progress = max(step / total steps, elapsed / max_time_s)), so a run cut by its time
            budget still ends annealed. Time-based runs are not bit-for-bit reproducible.
    """

    name: Literal["poly", "cosine", "constant"] = "poly"
    warmup_iters: int = 0
    warmup_ratio: float = 1e-3
    power: float = 1.0
    min_lr_ratio: float = 0.0
    horizon: Literal["steps", "time"] = "steps"


@dataclass
class TrainerConfig:
    """Loop, hardware and logging.

    Attributes:
        max_epochs / max_steps: length of the run (epoch-based or iteration-based; set one).
        val_every: validate every N epochs (epoch-based runs).
        val_every_steps: validate every N optimiser steps (iteration-based runs).
        accumulate: gradient accumulation steps.
        precision: auto (bf16 mixed on GPUs that support it, else fp16 mixed; fp32 on CPU),
            32, bf16, 16.
        channels_last: auto (on for GPU image models), true or false.
        accelerator: auto, cpu, gpu; devices: auto or a count; num_nodes: machines;
        strategy: auto or ddp (DDP is chosen automatically for several devices).
        grad_clip: gradient-norm clipping (None disables it).
        log_every: steps between training log rows.
        checkpoint_every_steps: also write the resume checkpoint every N steps (long
            iteration-based runs); None writes it after each validation.
        max_time_s: stop after this many seconds (checkpoints are written first).
        deterministic: use deterministic algorithms (slower on GPU).
    """

    max_epochs: int | None = 10
    max_steps: int | None = None
    val_every: int = 1
    val_every_steps: int | None = None
    accumulate: int = 1
    precision: str = "auto"
    channels_last: bool | Literal["auto"] = "auto"
    accelerator: str = "auto"
    devices: int | Literal["auto"] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    grad_clip: float | None = None
    log_every: int = 10
    checkpoint_every_steps: int | None = None
    max_time_s: float | None = None
    deterministic: bool = False


@dataclass
class EMAConfig:
    """Exponential moving average of the weights (used for validation and the saved model).

    Attributes:
        enabled: keep the average.
        decay: per-step decay; the effective decay ramps up as ``min(decay, (1 + n) / (10 + n))``.
    """

    enabled: bool = False
    decay: float = 0.999


@dataclass
class EarlyStoppingConfig:
    """Stop when validation mIoU has not improved by ``min_delta`` for ``patience`` validations."""

    patience: int | None = None
    min_delta: float = 0.0


@dataclass
class EvalConfig:
    """How validation (and ``terraseg eval`` with this recipe) scores the model.

    Attributes:
        preset: metrics preset (``default`` for the ontology, ``goose-challenge`` ...).
        window: ``{mode: whole|slide, crop: [H, W], stride: [H, W]}`` (image task).
        tta: ``{scales: [...], flip: bool}`` (image task): used by ``terraseg eval`` with this
            recipe, never during training validation (which uses ``window`` only).
    """

    preset: str | None = None
    window: dict[str, Any] = field(default_factory=dict)
    tta: dict[str, Any] = field(default_factory=dict)


@dataclass
class FusionTargetConfig:
    """An unlabelled target-domain dataset for cross-modal domain adaptation (xMUDA's UDA setting).

    Each training sample then pairs a source frame with a target frame drawn at random; the
    target frames feed the target-domain terms only (``lambda_xm_trg``, ``lambda_entropy``).

    Attributes:
        root, kind, split, remap, options: as in ``data`` (any paired reader).
        max_frames: use only the first N target frames.
    """

    root: str = ""
    kind: str = "auto"
    split: str = "train"
    remap: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    max_frames: int | None = None


@dataclass
class FusionConfig:
    """Cross-modal learning (``task: fusion``); defaults are xMUDA's (valeoai/xmuda_journal).

    Attributes:
        lambda_xm_src: weight of the cross-modal KL on labelled (source) points (xMUDA 1.0).
        lambda_xm_trg: weight of the cross-modal KL on target points (xMUDA 0.1; needs ``target``).
        lambda_entropy: weight of the main heads' entropy on target points (xMUDA's MinEnt, 0).
        sampling: how image features are read at the projected points: ``bilinear`` (sub-pixel)
            or ``nearest`` (the point's pixel).
        mimicry: the two mimicry heads (xMUDA's dual head); without them the KL acts on the
            main heads.
        lr_2d_mult: factor on the learning rate of the 2D network (and its mimicry head).
        near: minimum camera depth in metres for a point to count as in view.
        min_points: a training crop keeps at least this many in-view points when it can
            (up to 10 crops are drawn; xMUDA's 100).
        target: an unlabelled target dataset (domain adaptation), or None.
    """

    lambda_xm_src: float = 1.0
    lambda_xm_trg: float = 0.1
    lambda_entropy: float = 0.0
    sampling: Literal["bilinear", "nearest"] = "bilinear"
    mimicry: bool = True
    lr_2d_mult: float = 1.0
    near: float = 0.1
    min_points: int = 100
    target: FusionTargetConfig | None = None


@dataclass
class TrainConfig:
    """A whole training recipe (see the module docstring)."""

    task: Literal["image", "points", "fusion"] = "image"
    name: str = "run"
    output: str = "runs"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: list[Any] | str = field(default_factory=lambda: [{"name": "ce"}])
    aux_weight: float = 0.4
    augment: dict[str, Any] = field(default_factory=dict)
    copy_paste: dict[str, Any] | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    fusion: FusionConfig | None = None
    label_efficient: LabelEfficientConfig = field(default_factory=LabelEfficientConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    source: str = field(default="<config>", compare=False, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<config>") -> TrainConfig:
        """Validate a mapping (unknown keys and wrong types raise ConfigError naming ``source``)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a training recipe must be a mapping, got {type(data).__name__}")
        cfg = _build(cls, dict(data), source, "")
        cfg.source = source
        cfg.check()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (what ``config.yaml`` of a run holds)."""
        d = dataclasses.asdict(self)
        d.pop("source", None)
        return _plain(d)

    def with_overrides(self, overrides: Sequence[str]) -> TrainConfig:
        """A copy with ``key.sub=value`` overrides applied (values parsed as YAML)."""
        d = self.to_dict()
        for item in overrides:
            apply_override(d, item, self.source)
        return TrainConfig.from_dict(d, self.source)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the resolved recipe as YAML (atomically)."""
        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def check(self) -> None:
        """Cross-field checks (types are checked by :meth:`from_dict`)."""
        s = self.source
        if not self.data.root:
            raise ConfigError(f"{s}: data.root is required (the dataset folder)")
        t = self.trainer
        if t.max_epochs is None and t.max_steps is None:
            raise ConfigError(f"{s}: set trainer.max_epochs or trainer.max_steps")
        for key, val in (("data.batch_size", self.data.batch_size), ("data.val_batch_size", self.data.val_batch_size),
                         ("trainer.accumulate", t.accumulate), ("trainer.val_every", t.val_every),
                         ("trainer.num_nodes", t.num_nodes), ("trainer.log_every", t.log_every)):
            if val < 1:
                raise ConfigError(f"{s}: {key} must be at least 1, got {val}")
        if self.data.num_workers < 0:
            raise ConfigError(f"{s}: data.num_workers must be >= 0")
        if self.optim.lr <= 0:
            raise ConfigError(f"{s}: optim.lr must be positive, got {self.optim.lr}")
        if not 0 < self.optim.layer_decay <= 1:
            raise ConfigError(f"{s}: optim.layer_decay must be in (0, 1], got {self.optim.layer_decay}")
        if not 0 < self.ema.decay < 1:
            raise ConfigError(f"{s}: ema.decay must be in (0, 1), got {self.ema.decay}")
        if t.precision not in ("auto", "32", "bf16", "16", "32-true", "bf16-mixed", "16-mixed"):
            raise ConfigError(f"{s}: trainer.precision must be auto, 32, bf16 or 16, got {t.precision!r}")
        if self.schedule.horizon == "time" and not t.max_time_s:
            raise ConfigError(f"{s}: schedule.horizon: time needs trainer.max_time_s (the time budget to decay over)")
        if self.task != "image" and self.copy_paste:
            raise ConfigError(f"{s}: copy_paste applies to the image task only")
        if self.task != "image" and self.eval.window:
            raise ConfigError(f"{s}: eval.window applies to the image task only (LiDAR models see the whole scan)")
        if t.checkpoint_every_steps is not None and t.checkpoint_every_steps < 1:
            raise ConfigError(f"{s}: trainer.checkpoint_every_steps must be at least 1, got {t.checkpoint_every_steps}")
        if t.val_every_steps is not None and t.val_every_steps < 1:
            raise ConfigError(f"{s}: trainer.val_every_steps must be at least 1, got {t.val_every_steps}")
        if self.task != "image" and self.data.repeat_factor is not None:
            raise ConfigError(f"{s}: data.repeat_factor applies to the image task only")
        im = self.data.intensity_max
        if im is not None and (self.task != "points" or not (im > 0 and im != float("inf"))):
            raise ConfigError(f"{s}: data.intensity_max " + ("applies to the points task only" if self.task != "points"
                                                            else f"must be a positive number, got {im}"))
        self._check_fusion()
        from terraseg.training.label_efficient_config import check_label_efficient

        check_label_efficient(self)

    def _check_fusion(self) -> None:
        s, m = self.source, self.model
        if self.task != "fusion":
            for key, val in (("model.net2d", m.net2d), ("model.net3d", m.net3d), ("fusion", self.fusion)):
                if val is not None:
                    raise ConfigError(f"{s}: {key} applies to task: fusion only (this recipe has task: {self.task})")
            return
        if m.net2d is None or m.net3d is None:
            raise ConfigError(f"{s}: task: fusion needs model.net2d and model.net3d (the 2D and 3D networks, e.g. "
                              "net2d: {arch: litefpn}, net3d: {arch: randlanet, preset: small})")
        if self.fusion is None:
            self.fusion = FusionConfig()
        f = self.fusion
        for key in ("lambda_xm_src", "lambda_xm_trg", "lambda_entropy"):
            if getattr(f, key) < 0:
                raise ConfigError(f"{s}: fusion.{key} must be >= 0, got {getattr(f, key)}")
        if f.lr_2d_mult <= 0:
            raise ConfigError(f"{s}: fusion.lr_2d_mult must be positive, got {f.lr_2d_mult}")
        if f.near <= 0:
            raise ConfigError(f"{s}: fusion.near must be positive (metres), got {f.near}")
        if f.min_points < 1:
            raise ConfigError(f"{s}: fusion.min_points must be at least 1, got {f.min_points}")
        if f.target is not None and not f.target.root:
            raise ConfigError(f"{s}: fusion.target.root is required (the unlabelled target dataset folder)")
        unknown = sorted(set(self.augment) - {"image", "points"})
        if unknown:
            raise ConfigError(f"{s}: unknown key augment.{unknown[0]} (task: fusion takes augment.image and "
                              "augment.points)")


def read_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = (), what: str = "training recipe"
                ) -> dict[str, Any]:
    """A recipe file as a dict, ``key=value`` overrides applied (nothing validated yet).

    Raises:
        ConfigError: unreadable YAML, not a mapping, or a bad override.
    """
    p = Path(path)
    data = read_yaml(p, what, ConfigError)
    if not isinstance(data, Mapping):
        article = "an" if what[:1] in "aeiou" else "a"
        raise ConfigError(f"{p}: {article} {what} must be a YAML mapping")
    d = dict(data)
    for item in overrides:
        apply_override(d, item, str(p))
    return d


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a recipe file and apply ``key=value`` overrides."""
    return TrainConfig.from_dict(read_recipe(path, overrides), str(Path(path)))


def apply_override(d: dict[str, Any], item: str, source: str = "<config>") -> None:
    """Set ``d[a][b] = value`` from ``"a.b=value"`` (value parsed as YAML; sections are created)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value (for example trainer.max_epochs=2)")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
    parts = key.split(".")
    node = d
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[:i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------- validation
def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _build(cls: type, data: dict[str, Any], source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}{unknown[0]}"
        raise ConfigError(f"{source}: unknown key {where!r} (known in {prefix.rstrip('.') or 'the recipe'}: "
                          f"{', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], source, f"{prefix}{name}")
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return _build(tp, dict(value), source, f"{key}.")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, source, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1] if len(errors) == 1 else
                          f"{source}: {key} must be one of {' | '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return str(value)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(f"{source}: {key} must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, source, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [_coerce(v, args[0], source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return dict(value)
    return value  # pragma: no cover - every annotated type is handled above
