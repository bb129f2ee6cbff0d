"""Lightning callbacks of the training engine: EMA of weights, terraseg checkpoints (best / last,
atomic), atomic Lightning resume checkpoints, the per-epoch summary line and the progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from terraseg.errors import DataError
from terraseg.io.atomic import atomic_path, atomic_write_text, remove_stale_temporaries
from terraseg.models.surgery import save_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary name and renamed, so a kill during saving never
    leaves a truncated ``last.ckpt``; a checkpoint already read and checked by
    :func:`load_resume_checkpoint` is handed to Lightning without reading the file again."""

    def __init__(self) -> None:
        super().__init__()
        self._preloaded: tuple[str, dict[str, Any]] | None = None

    def preload(self, path: str | Path, checkpoint: dict[str, Any]) -> None:
        """Serve ``checkpoint`` for the next :meth:`load_checkpoint` of ``path``."""
        self._preloaded = (str(path), checkpoint)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if self._preloaded is not None and self._preloaded[0] == str(path):
            checkpoint, self._preloaded = self._preloaded[1], None
            return checkpoint
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


#: Top-level keys of every Lightning checkpoint written by ``terraseg train``.
RESUME_KEYS = ("state_dict", "loops", "optimizer_states", "global_step", "epoch")


def load_resume_checkpoint(path: str | Path, model_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Read and check a run's ``last.ckpt`` before Lightning resumes from it.

    Checks the zip CRCs (a damaged file), that it is a Lightning checkpoint written by ``terraseg
    train`` (``RESUME_KEYS``), that its model tensors are those of ``model_state`` (names and
    shapes: the same recipe) and that they are finite.

    Returns:
        The checkpoint dict (CPU tensors).

    Raises:
        DataError: naming the file and the problem.
    """
    from terraseg.models.integrity import CORRUPT_HINT, check_finite, verify_zip_crcs

    p = Path(path)
    hint = "start the run again with --overwrite (or under another name=), or restore the file"
    verify_zip_crcs(p)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip / EOF errors of a foreign or damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"{p}: not a readable resume checkpoint ({type(exc).__name__}: {first}); it is damaged or "
                        f"was not written by `terraseg train`; {hint}") from None
    if not isinstance(ckpt, dict) or not set(RESUME_KEYS) <= set(ckpt):
        keys = ", ".join(sorted(map(str, ckpt))[:8]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise DataError(f"{p}: not a resume checkpoint written by `terraseg train` (it holds {keys or 'nothing'}; "
                        f"best.pth / last.pth hold weights only and cannot be resumed from); {hint}")
    sd = ckpt["state_dict"]
    missing = [k for k in model_state if k not in sd]
    unexpected = [k for k in sd if k not in model_state]
    shapes = [k for k in model_state if k in sd and tuple(sd[k].shape) != tuple(model_state[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in (("missing", missing), ("unexpected", unexpected),
                                                                   ("of another shape", shapes)) if v]
        raise DataError(f"{p}: its model tensors do not match this recipe's model ({'; '.join(parts)}); it was written "
                        f"by a run of another model or recipe; {hint}")
    check_finite(sd, str(p))
    if not isinstance(ckpt.get("global_step"), int):
        raise DataError(f"{p}: no global step recorded; {CORRUPT_HINT}")
    return ckpt


class TrainProgressBar(RichProgressBar):
    """Lightning's rich progress bar, labelled ``Epoch 3/199`` for epoch-based runs and
    ``Epoch 3 (step 54/2840)`` for step-based ones (Lightning's own label reads ``Epoch 3/-2`` when
    ``max_epochs`` is -1, which is how a ``trainer.max_steps`` run is set up)."""

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        text = f"Epoch {current_epoch}"
        if trainer.max_steps is not None and trainer.max_steps > 0:
            text += f" (step {trainer.global_step}/{trainer.max_steps})"
        return text


class EMA(Callback):
    """Exponential moving average of the model's floating-point state (parameters and buffers).

    Updated after every optimiser step with ``decay_n = min(decay, (1 + n) / (10 + n))``; the
    averaged weights replace the trained ones during validation (and are what the terraseg
    checkpoints store); the average is part of the resume checkpoint.
    """

    def __init__(self, decay: float = 0.999) -> None:
        self.decay = float(decay)
        self.shadow: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self._backup: dict[str, torch.Tensor] | None = None
        self._last_step = -1

    def _model(self, pl_module: L.LightningModule) -> torch.nn.Module:
        return pl_module.model  # type: ignore[return-value]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = self._model(pl_module).state_dict()
        if self.shadow is None:
            self.shadow = {k: v.detach().clone() for k, v in state.items()}
        else:  # restored from a checkpoint: move to the model's device
            self.shadow = {k: v.to(state[k].device) for k, v in self.shadow.items()}
        self._last_step = trainer.global_step

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self._last_step or self.shadow is None:
            return  # no optimiser step yet (gradient accumulation)
        self._last_step = trainer.global_step
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for k, v in self._model(pl_module).state_dict().items():
            s = self.shadow[k]
            if s.dtype.is_floating_point:
                s.mul_(d).add_(v.detach(), alpha=1.0 - d)
            else:
                s.copy_(v)
        self.updates += 1

    def averaged_state(self) -> dict[str, torch.Tensor] | None:
        return self.shadow

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.shadow is None or trainer.sanity_checking:
            return
        model = self._model(pl_module)
        self._backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._backup is not None:
            self._model(pl_module).load_state_dict(self._backup)
            self._backup = None

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": {k: v.cpu() for k, v in (self.shadow or {}).items()}, "updates": self.updates,
                "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.shadow = dict(state_dict["shadow"]) or None
        self.updates = int(state_dict["updates"])


class RunCheckpoints(Callback):
    """After each validation: ``last.pth`` (and ``best.pth`` when val mIoU improved) as terraseg
    checkpoints of the model (EMA weights when EMA is on) with ``meta`` (epoch, step, metrics,
    preprocessing), plus the Lightning ``last.ckpt`` that ``--resume`` continues from; optionally
    also ``last.ckpt`` every N optimiser steps. Writes ``history.jsonl`` (one line per validation)
    and ``best.json``.

    ``last.ckpt`` is only written right after an optimiser step (never in the middle of gradient
    accumulation) and never just before a validation (the validation's end writes it): a run
    killed during a validation resumes before it and validates again, so no history row is lost.
    The loggers are flushed first, so ``metrics.csv`` holds every row up to the checkpoint's step.
    """

    def __init__(self, run_dir: Path, meta: dict[str, Any], ema: EMA | None = None,
                 every_steps: int | None = None, min_delta: float = 0.0) -> None:
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        for folder in (self.run_dir, self.ckpt_dir):  # .last.<pid>-<random>.tmp.ckpt of a killed run
            remove_stale_temporaries(folder)
        self.meta = meta
        self.ema = ema
        self.every_steps = every_steps
        self.min_delta = min_delta
        self.best: float = -math.inf
        self.best_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self.last_validated_step = -1
        self._last_saved_step = -1

    @property
    def resume_path(self) -> Path:
        return self.ckpt_dir / "last.ckpt"

    def _model_state_module(self, pl_module: L.LightningModule) -> torch.nn.Module:
        model = pl_module.model
        if self.ema is not None and self.ema.shadow is not None:
            # a detached copy carrying the EMA weights; the trained weights stay in place
            clone = _shallow_model_copy(model)
            clone.load_state_dict(self.ema.shadow)
            return clone
        return model  # type: ignore[return-value]

    def save_resume(self, trainer: L.Trainer) -> None:
        """Flush the loggers and write ``last.ckpt`` (every rank calls it: saving synchronises them)."""
        for lg in trainer.loggers:
            lg.save()
        trainer.save_checkpoint(self.resume_path)
        self._last_saved_step = trainer.global_step

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_saved_step = trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("val/") and torch.as_tensor(v).numel() == 1}
        miou = metrics.get("val/mIoU", float("nan"))
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, **metrics}
        improved = math.isfinite(miou) and miou > self.best + self.min_delta
        self.last_validated_step = trainer.global_step  # every rank (decides the final validation)
        if improved:
            self.best, self.best_epoch = miou, trainer.current_epoch
        if trainer.is_global_zero:
            meta = {**self.meta, "epoch": trainer.current_epoch, "step": trainer.global_step,
                    "val": {k[4:]: v for k, v in metrics.items() if not k.startswith("val/IoU/")},
                    "ema": self.ema is not None}
            module = self._model_state_module(pl_module)
            save_checkpoint(self.ckpt_dir / "last.pth", module, meta=meta)
            if improved:
                save_checkpoint(self.ckpt_dir / "best.pth", module, meta=meta)
                atomic_write_text(self.run_dir / "best.json", json.dumps(row, indent=2) + "\n")
            cm = getattr(pl_module, "val_cm", None)
            if cm is not None:
                cm.save(self.run_dir / "val_confusion.npz")
            self.history.append(row)
            with open(self.run_dir / "history.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        if trainer.state.fn == "fit":  # a trainer.validate() after fit has no optimiser state to save
            self.save_resume(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every_steps or not step or step % self.every_steps or step == self._last_saved_step:
            return  # not a checkpoint step, or no optimiser step since the last save (gradient accumulation)
        if _validation_follows(trainer):
            return  # the validation's end writes it
        self.save_resume(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final weights as ``last.pth`` (also for runs without a validation split) and the
        resume checkpoint."""
        if trainer.is_global_zero:
            meta = {**self.meta, "epoch": trainer.current_epoch, "step": trainer.global_step,
                    "val": {k: v for k, v in (self.history[-1] if self.history else {}).items()
                            if k.startswith("val/") and not k.startswith("val/IoU/")},
                    "ema": self.ema is not None}
            meta["val"] = {k[4:]: v for k, v in meta["val"].items()}
            save_checkpoint(self.ckpt_dir / "last.pth", self._model_state_module(pl_module), meta=meta)
        self.save_resume(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "last_validated_step": self.last_validated_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = float(state_dict["best"])
        self.best_epoch = state_dict.get("best_epoch")
        self.last_validated_step = int(state_dict.get("last_validated_step", -1))


def _validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the current training batch (its own decision rule)."""
    loop = trainer.fit_loop
    try:
        return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))
    except Exception:  # a Lightning without these internals: save anyway (a kill during the validation
        return False   # then loses its history row, as before)


def _shallow_model_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


class EpochSummary(Callback):
    """One printed line per validation: epoch, step, loss, val mIoU / mAcc / aAcc, best so far."""

    def __init__(self, checkpoints: RunCheckpoints, enabled: bool = True) -> None:
        self.checkpoints = checkpoints
        self.enabled = enabled

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics

        def g(k: str) -> str:
            v = m.get(k)
            return "-" if v is None else f"{float(v):.2f}"

        extra = "".join(f"  {k[9:]} {g(k)}" for k in sorted(m) if k.startswith("val/mIoU_"))  # e.g. 2d, 3d
        line = (f"epoch {trainer.current_epoch:>3}  step {trainer.global_step:>6}  loss {g('train/loss'):>6}  "
                f"val mIoU {g('val/mIoU'):>6}  mAcc {g('val/mAcc'):>6}  aAcc {g('val/aAcc'):>6}{extra}  "
                f"best {self.checkpoints.best:.2f} (epoch {self.checkpoints.best_epoch})")
        print(line, flush=True)

