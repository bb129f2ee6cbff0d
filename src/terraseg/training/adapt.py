"""Source-free cross-modal adaptation with budgeted active queries (``terraseg adapt``).

Reference 002 (ActiveSFDA on xMUDA): a source-only cross-modal model adapts to an unlabelled
target with pseudo-labels, the target cross-modal KL and, optionally, a small budget of labels
queried during training. It runs on the training engine (:func:`terraseg.training.engine.train`
with a :class:`AdaptExtension`): same run folder, logs, checkpoints and ``--resume``.

- the recipe is a ``task: fusion`` recipe whose ``data`` is the **target** dataset, plus an
  ``adapt:`` section (:class:`AdaptConfig`), validated before the run folder is made;
- the training samples carry no ground truth: each point carries its pseudo-labels (2D, 3D,
  ensemble; :mod:`terraseg.active.pseudo_labels`) and, once queried, its queried label
  (``FusionSamples`` extras); :class:`AdaptTask` trains each network on its pseudo-labels with
  queried labels overwriting them (``lambda_pl``), plus a cross-entropy on the queried points
  alone (``lambda_query``), the target KL (``fusion.lambda_xm_trg``) and the optional entropy
  (``fusion.lambda_entropy``);
- :class:`QueryCallback` runs the query rounds at their steps (fixed fractions of
  ``trainer.max_steps``, or automatically when the agreement of the predictions with the
  pseudo-labels saturates): predictions of every target training frame with the current model,
  a round of the chosen strategy (:func:`terraseg.active.run_query_round`, budget met exactly,
  labelled points never queried again), the labels from the ``oracle`` (the dataset's ground
  truth at the queried points; benchmarks and tests) or from a person (the run stops;
  ``terraseg query export`` / ``import``; ``--resume``), optionally new pseudo-labels;
- exact resume: the rounds are files, and a round's labels / new pseudo-labels take effect from a
  fixed step after the round (``lag``: batches already loaded before the round do not see them,
  and neither do the same batches of a resumed run).

Files in the run folder besides the engine's: ``adapt.yaml`` (the section), ``pseudo/v000``
(pseudo-labels of the source model, unless ``pseudo_labels.dir``), ``pseudo/v001`` ... (regenerated),
``queries/round_000`` ... (the rounds), ``adapt_state.json`` (each round: step, counts, real
labelled fraction).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from terraseg.active.budget import check_percent
from terraseg.active.predict import FramePrediction, iter_predictions, load_fusion_predictor, pseudo_label_frames
from terraseg.active.pseudo_labels import DEFAULT_CAP, SUMMARY_NAME, PseudoLabels, PseudoLabelSummary, frame_file
from terraseg.active.rounds import (
    collected_labels,
    list_rounds,
    load_round,
    round_dir,
    run_query_round,
    save_round_labels,
)
from terraseg.active.strategies import STRATEGIES, FrameContext, StrategyOptions
from terraseg.active.timing import R_THRESHOLD, QuerySchedule
from terraseg.errors import ConfigError, DataError
from terraseg.io.atomic import atomic_write_text
from terraseg.training.config import TrainConfig, _build, read_recipe
from terraseg.training.data import IGNORE_INDEX
from terraseg.training.engine import RunExtension, TrainResult, train
from terraseg.training.module import FusionTask

STATE_NAME = "adapt_state.json"
QUERY_DIR = "queries"
PSEUDO_DIR = "pseudo"


# ------------------------------------------------------------------------------------- recipe
@dataclass
class PseudoLabelConfig:
    """``adapt.pseudo_labels``.

    Attributes:
        dir: a folder written by ``terraseg pseudo-label`` (null: generated with the source model
            in ``<run>/pseudo/v000``).
        cap: the threshold cap of ``min(class median, cap)`` (xMUDA 0.9).
        use: ``own`` (each network learns its own modality's pseudo-labels, xMUDA) or
            ``ensemble`` (both learn the 2D+3D ones).
        regenerate: after each query round, new pseudo-labels with the current model.
    """

    dir: str | None = None
    cap: float = DEFAULT_CAP
    use: Literal["own", "ensemble"] = "own"
    regenerate: bool = False


@dataclass
class ActiveConfig:
    """``adapt.active``: budgeted queries (none while ``strategy`` is null).

    Attributes:
        strategy: a name of :data:`terraseg.active.STRATEGIES`, or null (no queries).
        budget: percent of each scan's in-view points labelled over the whole run, in (0, 100];
            each round queries ``budget / rounds`` percent of every scan, met exactly.
        at: fixed rounds at these fractions of ``trainer.max_steps`` (0: before the first step).
        auto_rounds: further rounds when the agreement curve saturates (``r``).
        auto_every: steps per point of the agreement curve (automatic rounds).
        r: the saturation threshold (ActiveSFDA 0.85).
        annotator: ``oracle`` (the target's ground truth at the queried points: benchmarks,
            tests) or ``human`` (the run stops after a round; label with ``terraseg query
            export / import``, then ``--resume``).
        seed: strategy seed (null: the recipe's ``seed``).
        options: :class:`~terraseg.active.StrategyOptions` fields (``k``, ``region_source`` ...).
    """

    strategy: str | None = None
    budget: float = 1.0
    at: list[float] = field(default_factory=lambda: [0.0])
    auto_rounds: int = 0
    auto_every: int = 10
    r: float = R_THRESHOLD
    annotator: Literal["oracle", "human"] = "oracle"
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        return self.strategy is not None

    def schedule(self) -> QuerySchedule:
        return QuerySchedule(tuple(self.at), self.auto_rounds, self.r)


@dataclass
class AdaptConfig:
    """The ``adapt:`` section of an adaptation recipe (see ``docs/active.md``).

    Attributes:
        source: the source-only cross-modal checkpoint (``task: fusion``); no source data is used.
        lambda_pl: weight of the pseudo-label cross-entropy (queried labels overwrite pseudo-labels).
        lambda_query: weight of an extra cross-entropy on the queried points alone.
        pseudo_labels: :class:`PseudoLabelConfig`.
        active: :class:`ActiveConfig`.
    """

    source: str = ""
    lambda_pl: float = 1.0
    lambda_query: float = 1.0
    pseudo_labels: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)
    active: ActiveConfig = field(default_factory=ActiveConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def strategy_options(self, seed: int) -> StrategyOptions:
        a = self.active
        return StrategyOptions(**{**a.options, "seed": a.seed if a.seed is not None else seed})


def source_model_differences(cfg: TrainConfig, spec: Mapping[str, Any]) -> list[str]:
    """Where the recipe's ``model.net2d`` / ``net3d`` differ from a cross-modal checkpoint's ``spec``:
    architecture, 2D encoder, 3D preset and input channels, and every option the recipe sets that the
    checkpoint records (``voxel_size``, ``channels``...). Empty when they agree; keys the recipe leaves
    unset are not compared."""
    def same(a: Any, b: Any) -> bool:
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return bool(a == b)

    out: list[str] = []
    for name, net in (("net2d", cfg.model.net2d), ("net3d", cfg.model.net3d)):
        have = spec.get(name)
        if net is None or not isinstance(have, Mapping):
            continue
        pairs: list[tuple[str, Any]] = [("arch", net.arch)]
        pairs += [("encoder", getattr(net, "encoder", None)), ("preset", getattr(net, "preset", None)),
                  ("in_channels", getattr(net, "in_channels", None))]
        pairs += [(f"options.{k}", v) for k, v in sorted((net.options or {}).items())]
        for key, want in pairs:
            field_name = key.removeprefix("options.")
            if want is None or field_name not in have or same(want, have[field_name]):
                continue
            out.append(f"model.{name}.{key} is {want!r}, the source's is {have[field_name]!r}")
    return out


def check_adapt_config(a: AdaptConfig, cfg: TrainConfig) -> None:
    """Cross-field checks of the ``adapt:`` section against its recipe (one ConfigError each)."""
    s = cfg.source
    if not a.source:
        raise ConfigError(f"{s}: adapt.source is required (the source-only cross-modal checkpoint)")
    if cfg.task != "fusion":
        raise ConfigError(f"{s}: terraseg adapt needs a task: fusion recipe (this one has task: {cfg.task})")
    if cfg.fusion is not None and cfg.fusion.target is not None:
        raise ConfigError(f"{s}: fusion.target does not apply to source-free adaptation: data is the target dataset")
    if cfg.model.weights:
        raise ConfigError(f"{s}: model.weights is set by adapt.source; remove it")
    for item in cfg.loss if isinstance(cfg.loss, list) else []:
        if isinstance(item, dict) and isinstance(item.get("class_weights"), str):
            raise ConfigError(f"{s}: loss: class_weights {item['class_weights']!r} would be counted on the target's "
                              "ground truth; use plain ce (xMUDA's pseudo-label loss) or a list of weights")
    for key in ("lambda_pl", "lambda_query"):
        v = getattr(a, key)
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"{s}: adapt.{key} must be a non-negative number, got {v}")
    if not 0.0 < a.pseudo_labels.cap <= 1.0:
        raise ConfigError(f"{s}: adapt.pseudo_labels.cap must lie in (0, 1], got {a.pseudo_labels.cap}")
    act = a.active
    if act.strategy is None:
        return
    if act.strategy not in STRATEGIES:
        raise ConfigError(f"{s}: adapt.active.strategy: unknown strategy {act.strategy!r}; known: {', '.join(STRATEGIES)}")
    try:
        check_percent(act.budget)
        sched = act.schedule()
    except ConfigError as exc:
        raise ConfigError(f"{s}: adapt.active: {exc}") from None
    if sched.rounds == 0:
        raise ConfigError(f"{s}: adapt.active needs at least one round (at or auto_rounds)")
    if act.auto_every < 1:
        raise ConfigError(f"{s}: adapt.active.auto_every must be at least 1, got {act.auto_every}")
    if cfg.trainer.max_steps is None:
        raise ConfigError(f"{s}: adapt.active: query rounds are placed in steps; set trainer.max_steps "
                          "(and trainer.max_epochs=null)")
    bad = sorted(set(act.options) - {f.name for f in dataclasses.fields(StrategyOptions)} | ({"seed"} & set(act.options)))
    if bad:
        raise ConfigError(f"{s}: adapt.active.options: unknown key {bad[0]!r} (seed is adapt.active.seed)")
    try:
        StrategyOptions(**act.options)
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"{s}: adapt.active.options: {exc}") from None


def load_adapt_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> tuple[TrainConfig, AdaptConfig]:
    """Read an adaptation recipe (a ``task: fusion`` recipe plus ``adapt:``), apply ``key=value``
    overrides (``adapt.active.strategy=entropy`` too) and validate both parts; ``model.weights`` becomes
    ``adapt.source``. Nothing is written."""
    p = Path(path)
    d = read_recipe(p, overrides, "adaptation recipe")
    section = d.pop("adapt", None)
    if not isinstance(section, dict):
        raise ConfigError(f"{p}: an adaptation recipe needs an adapt: section (at least adapt.source, the source-only "
                          "cross-modal checkpoint)")
    section = dict(section)
    source = section.pop("source", "")  # the config builder reserves the field name "source"
    a = _build(AdaptConfig, section, str(p), "adapt.")
    if source is not None and not isinstance(source, str):
        raise ConfigError(f"{p}: adapt.source must be a checkpoint path, got {source!r}")
    a.source = source or ""
    cfg = TrainConfig.from_dict(d, str(p))
    check_adapt_config(a, cfg)
    src = Path(a.source)
    if not src.is_file():
        raise DataError(f"{p}: adapt.source {src}: checkpoint not found")
    cfg.model.weights = str(src)
    if a.pseudo_labels.dir is not None and not (Path(a.pseudo_labels.dir) / SUMMARY_NAME).is_file():
        raise DataError(f"{p}: adapt.pseudo_labels.dir {a.pseudo_labels.dir}: no finished pseudo-label folder "
                        f"(no {SUMMARY_NAME}; write one with terraseg pseudo-label)")
    return cfg, a


# ------------------------------------------------------------------------------------- the loss
class AdaptTask(FusionTask):
    """Target-only cross-modal batches with pseudo-labels and queried labels (``point_extras``).

    Per point the batch carries ``pl_2d`` / ``pl_3d`` / ``pl_ens`` (kept pseudo-labels of the latest
    version, :data:`IGNORE_INDEX` where dropped), the same of the previous version (``*_prev``),
    ``pl_version``, ``queried`` (queried label or IGNORE) and ``q_round`` (its round, -1 none).
    ``round_steps[k]`` is the step of round k; round k's labels and the pseudo-labels made at it
    count from step ``round_steps[k] + lag`` on (:attr:`step` is set by :class:`QueryCallback`).
    """

    def __init__(self, lambda_pl: float = 1.0, lambda_query: float = 1.0, lambda_xm_trg: float = 0.1,
                 lambda_entropy: float = 0.0, channels_last: bool = False, lr_2d_mult: float = 1.0,
                 use: str = "own", lag: int = 1) -> None:
        super().__init__(0.0, lambda_xm_trg, lambda_entropy, channels_last, lr_2d_mult)
        self.lambda_pl, self.lambda_query = float(lambda_pl), float(lambda_query)
        self.use = use
        self.lag = int(lag)
        self.step = 0
        self.round_steps: list[int] = []
        self.agreement: dict[str, torch.Tensor] | None = None  # filled for the automatic query timing

    def _active(self, k: torch.Tensor) -> torch.Tensor:
        """Which round indices ``k`` (>= 0) are in effect at :attr:`step`."""
        steps = torch.tensor([s + self.lag for s in self.round_steps] + [2**62], dtype=torch.int64, device=k.device)
        return steps[k.clamp(min=0).clamp(max=len(self.round_steps))] <= self.step

    def targets(self, batch: dict[str, Any], train_target: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(2D, 3D, queried) loss targets of the batch's points (IGNORE where none)."""
        ext = batch["point_extras"]
        valid = batch["valid"]
        ign = torch.full_like(batch["target"], IGNORE_INDEX)
        q_ok = (ext["q_round"] >= 0) & valid
        if bool(q_ok.any()):
            q_ok = q_ok & self._active(ext["q_round"])
        q = torch.where(q_ok, train_target(ext["queried"]), ign)
        ver = ext["pl_version"]
        latest = (ver == 0) | self._active(ver - 1)
        out = []
        for key in (("pl_2d", "pl_3d") if self.use == "own" else ("pl_ens", "pl_ens")):
            pl = torch.where(latest, ext[key], ext[key + "_prev"])
            pl = torch.where(valid, train_target(pl), ign)
            out.append(torch.where(q != IGNORE_INDEX, q, pl))
        return out[0], out[1], q

    def loss(self, model, batch, loss_fn, train_target, aux_weight):  # type: ignore[no-untyped-def]
        from terraseg.models.fusion.losses import CrossModalLoss

        xm = CrossModalLoss(loss_fn, 0.0, self.weights["lambda_xm_trg"], self.weights["lambda_entropy"], self.lambda_pl)
        out = self._forward(model, batch)
        t2, t3, q = self.targets(batch, train_target)
        terms = xm.target(out, batch["valid"], t2, t3)
        total, parts = terms.total, dict(terms.parts)
        n_q = int((q != IGNORE_INDEX).sum())
        if self.lambda_query > 0 and n_q:
            q2, q3 = xm._seg(out.logits_2d, q), xm._seg(out.logits_3d, q)
            total = total + self.lambda_query * (q2 + q3)
            parts.update({"query_2d": q2.detach(), "query_3d": q3.detach()})
        with torch.no_grad():
            l2, l3, le = out.labels()
            if self.agreement is not None:
                c = out.logits_2d.shape[1]
                for name, pred, tgt in (("2d", l2, t2), ("3d", l3, t3)):
                    ok = tgt != IGNORE_INDEX
                    cm = torch.bincount(tgt[ok] * c + pred[ok], minlength=c * c).reshape(c, c).cpu()
                    self.agreement[name] = self.agreement.get(name, torch.zeros(c, c, dtype=torch.int64)) + cm
        tgt = t2 if self.use == "ensemble" else torch.where(t2 == t3, t2, torch.full_like(t2, IGNORE_INDEX))
        ok = tgt != IGNORE_INDEX
        return total, parts, (le[ok], tgt[ok])


def agreement_miou(cm: torch.Tensor) -> float:
    """mIoU (percent) of a (C, C) confusion matrix over the classes present in it."""
    cm = cm.double()
    inter = cm.diag()
    union = cm.sum(0) + cm.sum(1) - inter
    ok = union > 0
    return float((inter[ok] / union[ok]).mean() * 100.0) if bool(ok.any()) else 0.0


# ------------------------------------------------------------------------------------- the labels
class AdaptLabels:
    """``FusionSamples`` extras of adaptation: per scan point, pseudo-labels (latest and previous
    version) and queried labels, read from the run's files (so data-loader workers see them too).

    Args:
        pseudo_dirs: callable returning the pseudo-label folders, oldest first.
        state_dir: the query state folder.
        near: the recipe's ``fusion.near`` (the in-view points, as the model sees them).
    """

    def __init__(self, pseudo_dirs: Any, state_dir: Path, near: float) -> None:
        self.pseudo_dirs = pseudo_dirs
        self.state_dir = Path(state_dir)
        self.near = float(near)
        self._key: Any = None
        self._queried: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _refresh(self) -> tuple[Path, ...]:
        dirs = tuple(self.pseudo_dirs())
        rounds = list_rounds(self.state_dir)
        marks = tuple((k, (round_dir(self.state_dir, k) / "labels.npz").stat().st_mtime_ns
                       if (round_dir(self.state_dir, k) / "labels.npz").is_file() else 0) for k in rounds)
        key = (dirs, marks)
        if key != self._key:
            self._queried = {}
            for k in rounds:
                for name, (idx, lab) in collected_labels(self.state_dir, upto=k).items():
                    prev = self._queried.get(name)
                    rnd = np.full(len(idx), k, dtype=np.int64)
                    if prev is not None:  # keep the round in which each item was first labelled
                        first = dict(zip(prev[0].tolist(), prev[2].tolist()))
                        rnd = np.asarray([first.get(int(i), k) for i in idx], dtype=np.int64)
                    self._queried[name] = (idx, lab, rnd)
            self._key = key
        return dirs

    def __call__(self, index: int, frame: Any) -> dict[str, np.ndarray]:
        from terraseg.models.fusion.view import frame_view

        dirs = self._refresh()
        n = len(frame.points)
        name = str(frame.frame_id)
        out: dict[str, np.ndarray] = {}
        latest = _read_pl(dirs[-1], name, n)
        prev = _read_pl(dirs[-2], name, n) if len(dirs) > 1 else latest
        for key in ("pl_2d", "pl_3d", "pl_ens"):
            out[key], out[key + "_prev"] = latest[key], prev[key]
        out["pl_version"] = np.full(n, len(dirs) - 1, dtype=np.int64)
        queried = np.full(n, IGNORE_INDEX, dtype=np.int64)
        q_round = np.full(n, -1, dtype=np.int64)
        if name in self._queried:
            idx, lab, rnd = self._queried[name]
            view = frame_view(frame, self.near).index
            pts = np.asarray(view)[idx]
            queried[pts] = lab
            q_round[pts] = rnd
        out["queried"], out["q_round"] = queried, q_round
        return out


def _read_pl(folder: Path, name: str, n: int) -> dict[str, np.ndarray]:
    pl = PseudoLabels.load(frame_file(folder, name))
    if pl.num_points != n:
        raise DataError(f"{frame_file(folder, name)}: pseudo-labels of a {pl.num_points}-point scan, but frame {name} "
                        f"has {n} points (another dataset?)")
    return {"pl_2d": pl.full_labels("2d", IGNORE_INDEX), "pl_3d": pl.full_labels("3d", IGNORE_INDEX),
            "pl_ens": pl.full_labels("ensemble", IGNORE_INDEX)}


# ------------------------------------------------------------------------------------- the run
class AdaptExtension(RunExtension):
    """Turns a fusion run into source-free adaptation (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, acfg: AdaptConfig, progress: bool = False) -> None:
        self.cfg, self.acfg = cfg, acfg
        self.progress = progress
        self.run: Any = None
        self.run_dir: Path | None = None
        self.awaiting_labels: int | None = None

    # files
    @property
    def state_dir(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / QUERY_DIR

    def pseudo_dirs(self) -> list[Path]:
        """The pseudo-label folders in use, oldest first (the given folder or ``pseudo/v000``, then
        the regenerated ``pseudo/v001`` ...)."""
        assert self.run_dir is not None
        root = self.run_dir / PSEUDO_DIR
        given = self.acfg.pseudo_labels.dir
        out = [Path(given)] if given else []
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if d.name.startswith("v") and (d / SUMMARY_NAME).is_file() and not (given and d.name == "v000"):
                    out.append(d)
        return out

    def read_state(self) -> dict[str, Any]:
        assert self.run_dir is not None
        p = self.run_dir / STATE_NAME
        if not p.is_file():
            return {"rounds": []}
        try:
            return json.loads(p.read_text())
        except ValueError as exc:
            raise DataError(f"{p}: not valid JSON ({exc})") from None

    def write_state(self, state: dict[str, Any]) -> None:
        assert self.run_dir is not None
        atomic_write_text(self.run_dir / STATE_NAME, json.dumps(state, indent=1) + "\n")

    # engine hooks
    def check(self, run: Any, resume: bool) -> None:
        from terraseg.models.fusion.view import frame_view

        self.run = run
        cfg, a = self.cfg, self.acfg
        source = load_fusion_predictor(a.source, "cpu")  # a fusion checkpoint (clear error otherwise)
        diffs = source_model_differences(cfg, getattr(source.model, "spec", {}) or {})
        if diffs:
            raise ConfigError(f"{cfg.source}: adaptation continues the source model {a.source}, but the recipe's "
                              f"model differs from it: {'; '.join(diffs)}. Copy model: from the source run's "
                              "config.yaml (a different network would start from scratch where it differs)")
        frames = run.train_frames
        names = [str(frames[i].frame_id) for i in range(len(frames))]
        if len(set(names)) != len(names):
            raise DataError(f"{cfg.data.root}: frame ids repeat in split {cfg.data.train_split!r}")
        assert cfg.fusion is not None
        for i in range(len(frames)):  # no point in view is a clear error now, not in a worker later
            frame_view(frames[i], cfg.fusion.near)
        if a.pseudo_labels.dir:
            missing = [n for n in names if not frame_file(a.pseudo_labels.dir, n).is_file()]
            if missing:
                raise DataError(f"{a.pseudo_labels.dir}: no pseudo-labels for frame {missing[0]!r} of {cfg.data.root} "
                                f"({len(missing)} of {len(names)} frames missing)")
            s = PseudoLabelSummary.load(a.pseudo_labels.dir)
            if s.num_classes != run.num_classes:
                raise DataError(f"{a.pseudo_labels.dir}: pseudo-labels of {s.num_classes} classes; the model has "
                                f"{run.num_classes}")
        if a.active.enabled and a.active.annotator == "oracle":
            f0 = frames[0]
            if f0.point_labels is None:
                raise DataError(f"{cfg.data.root}: adapt.active.annotator oracle reads the target's ground truth at the "
                                "queried points, but the frames have no point labels (use annotator: human)")
        ts = run.train_set
        ts.labelled = False  # no ground truth reaches the loss; the oracle reads it only at queried points
        ts.target_frames = None
        fc = cfg.fusion
        task = AdaptTask(a.lambda_pl, a.lambda_query, fc.lambda_xm_trg, fc.lambda_entropy,
                         bool(getattr(run.module.task, "channels_last", False)), fc.lr_2d_mult,
                         a.pseudo_labels.use, lag=1 + 2 * cfg.data.num_workers)
        run.module.task = task
        self.task = task
        run.meta["adapt"] = a.to_dict()

    def start(self, run: Any, run_dir: Path, resume: bool) -> list[Any]:
        self.run_dir = Path(run_dir)
        atomic_write_text(self.run_dir / "adapt.yaml", yaml.safe_dump({"adapt": self.acfg.to_dict()}, sort_keys=False))
        if not self.acfg.pseudo_labels.dir:
            first = self.run_dir / PSEUDO_DIR / "v000"
            if not (first / SUMMARY_NAME).is_file():
                predictor = load_fusion_predictor(self.acfg.source, _device(self.cfg))
                pseudo_label_frames(predictor, self._frames(), first, run.num_classes, run.ontology,
                                    self.acfg.pseudo_labels.cap, progress=self.progress, total=len(run.train_frames))
        run.train_set.extras = AdaptLabels(self.pseudo_dirs, self.state_dir, self.cfg.fusion.near)  # type: ignore[union-attr]
        self.task.round_steps = [int(r["step"]) for r in self.read_state()["rounds"]]
        return [QueryCallback(self)]

    def _frames(self) -> Any:
        frames = self.run.train_frames
        return (frames[i] for i in range(len(frames)))

    # a query round
    def rounds_total(self) -> int:
        return self.acfg.active.schedule().rounds if self.acfg.active.enabled else 0

    def query_round(self, model: Any, k: int, step: int) -> dict[str, Any]:
        """Round ``k`` at ``step``: predict, query, label (oracle), regenerate pseudo-labels; every
        part already on disk (an interrupted round) is reused. Returns the round's state entry."""
        from terraseg.models.fusion import FusionPredictor

        run = self.run
        was_training = model.training
        try:
            return self._query_round(FusionPredictor(model, run.ontology, run.meta,
                                                     device=next(model.parameters()).device), k, step)
        finally:
            model.train(was_training)

    def _query_round(self, predictor: Any, k: int, step: int) -> dict[str, Any]:
        a = self.acfg
        run = self.run
        preds: list[FramePrediction] | None = None

        def predictions() -> list[FramePrediction]:
            nonlocal preds
            if preds is None:
                preds = list(iter_predictions(predictor, self._frames(), features=True))
            return preds

        pct = a.active.budget / self.rounds_total()
        if k not in list_rounds(self.state_dir):
            run_query_round((self._context(p) for p in predictions()), str(a.active.strategy), pct, self.state_dir,
                            a.strategy_options(self.cfg.seed), ontology=run.ontology.name, progress=self.progress,
                            total=len(run.train_frames))
        rnd = load_round(self.state_dir, k)
        labelled = None
        if a.active.annotator == "oracle":
            if not (round_dir(self.state_dir, k) / "labels.npz").is_file():
                by_name = {p.name: p for p in predictions()}
                labels = {}
                for f in rnd.frames:
                    p = by_name[f.name]
                    gt = np.asarray(p.frame.point_labels)[p.index[f.indices]]
                    labels[f.name] = gt.astype(np.int32)
                save_round_labels(self.state_dir, k, labels)
            ignored = np.asarray(sorted(run.ontology.ignore_ids), dtype=np.int64)
            got = collected_labels(self.state_dir, upto=k)
            labelled = int(sum(int((~np.isin(lab, ignored)).sum()) for _, lab in got.values()))
        if a.pseudo_labels.regenerate and a.active.annotator == "oracle":
            out = self.run_dir / PSEUDO_DIR / f"v{k + 1:03d}"  # type: ignore[operator]
            if not (out / SUMMARY_NAME).is_file():
                from terraseg.active.predict import CLASS_TABLE, write_class_table
                from terraseg.active.pseudo_labels import write_pseudo_labels

                summary = write_pseudo_labels(((p.name, p.probs_2d, p.probs_3d, p.index, p.num_points)
                                               for p in predictions()), out, run.num_classes,
                                              cap=a.pseudo_labels.cap)
                write_class_table(summary, run.ontology, out / CLASS_TABLE)
        total_q = sum(int(m.sum()) for m in _masks(self.state_dir, k).values())
        return {"round": k, "step": int(step), "strategy": rnd.strategy, "percent": rnd.percent,
                "queried": rnd.queried, "queried_total": total_q, "in_view": rnd.in_view,
                "labelled_fraction": rnd.labelled_fraction, "labelled_points": labelled,
                "annotator": a.active.annotator}

    def _context(self, p: FramePrediction) -> FrameContext:
        s = self.acfg.active.strategy
        frame = p.frame
        xyz = np.asarray(frame.points, dtype=np.float32)[p.index, :3]
        regions = sv = None
        if s == "redal":
            from terraseg.geometry.normals import surface_variation
            from terraseg.geometry.regions import region_growing

            regions = region_growing(xyz)
            sv = np.minimum(surface_variation(xyz, k=min(50, len(xyz))), 0.1)  # ReDAL: 50 neighbours, clipped at 0.1
        h, w = frame.image.shape[:2]
        pix = np.stack([np.clip(np.floor(p.uv[:, 0]), 0, w - 1), np.clip(np.floor(p.uv[:, 1]), 0, h - 1)], 1)
        return FrameContext(p.name, probs_2d=p.probs_2d, probs_3d=p.probs_3d, feats_2d=p.feats_2d, feats_3d=p.feats_3d,
                            xyz=xyz, pixels=pix.astype(np.int64), image=frame.image, regions=regions,
                            surface_variation=sv, image_path=_str(frame.source.get("image")),
                            scan_path=_str(frame.source.get("points")))


def _masks(state_dir: Path, upto: int) -> dict[str, np.ndarray]:
    from terraseg.active.rounds import labelled_masks

    return labelled_masks(state_dir, upto=upto)


def _str(v: Any) -> str | None:
    return None if v is None else str(v)


def _device(cfg: TrainConfig) -> str:
    acc = cfg.trainer.accelerator
    return "cuda" if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()) else "cpu"


try:
    from lightning.pytorch.callbacks import Callback as _Callback
except ImportError:  # pragma: no cover - Lightning is a dependency of training
    _Callback = object  # type: ignore[assignment,misc]


class QueryCallback(_Callback):  # type: ignore[misc,valid-type]
    """Runs the query rounds at their steps and logs the real labelled fraction
    (``adapt/labelled_percent``, ``adapt/labelled_points``); its state (agreement curves) is saved
    in ``last.ckpt``."""

    def __init__(self, ext: AdaptExtension) -> None:
        self.ext = ext
        self.curves: dict[str, list[float]] = {}
        self.agreement: dict[str, torch.Tensor] = {}
        ext.task.agreement = self.agreement if ext.acfg.active.enabled and ext.acfg.active.auto_rounds else None

    def _done(self) -> list[dict[str, Any]]:
        return list(self.ext.read_state()["rounds"])

    def _maybe_query(self, trainer: Any, pl_module: Any) -> None:
        ext = self.ext
        if not ext.acfg.active.enabled:
            return
        step = int(trainer.global_step)
        done = self._done()
        if done and ext.acfg.active.annotator == "human":
            last = done[-1]
            if not (round_dir(ext.state_dir, last["round"]) / "labels.npz").is_file():
                raise DataError(f"{round_dir(ext.state_dir, last['round'])}: round {last['round']} has no labels yet: "
                                f"terraseg query export {ext.state_dir} --out TASK, label, terraseg query import "
                                "TASK, then resume")
        max_steps = int(trainer.max_steps)
        while True:
            decision = ext.acfg.active.schedule().is_due(step, max_steps, len(done), self.curves)
            if not decision.query:
                return
            entry = ext.query_round(pl_module.model, len(done), step)
            done.append(entry)
            ext.task.round_steps = [int(r["step"]) for r in done]
            ext.write_state({"rounds": done})
            if ext.progress:
                print(f"query round {entry['round']} at step {step}: {entry['queried']} points "
                      f"({100 * entry['labelled_fraction']:.3f} % of the in-view points labelled)", flush=True)
            if ext.acfg.active.annotator == "human":
                ext.awaiting_labels = entry["round"]
                trainer.should_stop = True
                return
            self.curves.clear()  # the automatic rule looks at the curve since the last round

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.ext.task.round_steps = [int(r["step"]) for r in self._done()]
        self.ext.task.step = int(trainer.global_step)
        self._curve_point(trainer)
        self._maybe_query(trainer, pl_module)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.ext.task.step = int(trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        done = self._done()
        if done:
            last = done[-1]
            pl_module.log("adapt/labelled_percent", 100.0 * float(last["queried_total"]) / max(1, last["in_view"]),
                          batch_size=1)
            if last.get("labelled_points") is not None:
                pl_module.log("adapt/labelled_points", float(last["labelled_points"]), batch_size=1)
        self._curve_point(trainer)
        self._maybe_query(trainer, pl_module)

    def _curve_point(self, trainer: Any) -> None:
        every = self.ext.acfg.active.auto_every
        step = int(trainer.global_step)
        if not self.agreement or step == 0 or step % every:
            return
        for name, cm in self.agreement.items():
            self.curves.setdefault(name, []).append(agreement_miou(cm))
        self.agreement.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"curves": {k: list(v) for k, v in self.curves.items()},
                "agreement": {k: v.clone() for k, v in self.agreement.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curves = {k: list(v) for k, v in state_dict.get("curves", {}).items()}
        self.agreement.clear()
        self.agreement.update(state_dict.get("agreement", {}))


# ------------------------------------------------------------------------------------- entry point
@dataclass
class AdaptResult:
    """What :func:`adapt` produced: the engine's result, the rounds, and (human annotator) the round
    waiting for labels."""

    train: TrainResult
    rounds: list[dict[str, Any]]
    awaiting_labels: int | None = None


def adapt(recipe: str | os.PathLike[str], overrides: Sequence[str] = (), *, resume: bool = False,
          overwrite: bool = False, progress: bool = True, devices: int | str | None = None,
          accelerator: str | None = None) -> AdaptResult:
    """``terraseg adapt``: source-free adaptation from an adaptation recipe (see the module docstring).

    Raises:
        ConfigError / DataError: a bad recipe, source checkpoint, pseudo-label folder or target
            dataset (before the run folder is created), or a human round resumed without labels.
    """
    cfg, a = load_adapt_recipe(recipe, overrides)
    ext = AdaptExtension(cfg, a, progress)
    result = train(cfg, resume=resume, overwrite=overwrite, progress=progress, devices=devices,
                   accelerator=accelerator, extension=ext)
    return AdaptResult(result, ext.read_state()["rounds"], ext.awaiting_labels)
