"""Loading any terraseg checkpoint (camera or LiDAR) with what inference needs from its metadata."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from terraseg.errors import DataError
from terraseg.models.points.build import PRESETS as _POINT_PRESETS
from terraseg.models.points.build import is_point_arch
from terraseg.models.surgery import Checkpoint, load_weights, read_checkpoint
from terraseg.ontology import Ontology

POINT_ARCHS = tuple(_POINT_PRESETS)
"""The point (LiDAR) architectures of :func:`terraseg.models.points.build_point_model`."""


@dataclass
class LoadedModel:
    """A model rebuilt from a terraseg checkpoint.

    Attributes:
        model: the network in eval mode on ``device``.
        task: ``image``, ``points`` or ``fusion`` (a cross-modal camera + LiDAR model).
        ontology: the label ontology of its outputs (None if the checkpoint does not say).
        meta: the checkpoint's metadata (training recipe, preprocessing, validation scores).
        path: the checkpoint file.
    """

    model: nn.Module
    task: str
    ontology: Ontology | None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def recipe(self) -> dict[str, Any]:
        """The training recipe stored in the checkpoint (empty when absent)."""
        return dict(self.meta.get("config") or {})

    @property
    def arch(self) -> str:
        """The architecture name of the model (``litefpn``, ``salsanext``, ...)."""
        return str(getattr(self.model, "arch", None) or (getattr(self.model, "spec", None) or {}).get("arch", "?"))


def recorded_projection(meta: dict[str, Any]) -> str | None:
    """The sensor projection a range network was trained with: ``meta["preprocess"]["projection"]``,
    else the stored recipe's ``data.projection`` (None when the checkpoint says neither)."""
    pre = meta.get("preprocess") or {}
    proj = pre.get("projection") if isinstance(pre, dict) else None
    if not proj:
        data = (meta.get("config") or {}).get("data") or {}
        proj = data.get("projection") if isinstance(data, dict) else None
    return str(proj) if proj else None


def load_model(path: str | os.PathLike[str], *, device: str | torch.device | None = None,
               trusted: bool = False) -> LoadedModel:
    """Rebuild the model of a terraseg checkpoint (``best.pth`` / ``last.pth`` of a run, or any file
    written by :func:`terraseg.models.surgery.save_checkpoint`).

    Point networks also get what their predictors need from the run's metadata:
    ``model.projection`` (range networks: the training projection, None when not recorded) and
    ``model.intensity`` (an :class:`~terraseg.models.points.intensity.IntensitySpec`: the
    recipe's intensity scale and the training intensity statistics). To run any model file
    (``.pth`` or ``.onnx``) use :func:`terraseg.inference.load_predictor`.

    Raises:
        DataError: the file is missing, unreadable, or holds no model spec.
    """
    ck = read_checkpoint(path, trusted=trusted)
    return model_from_checkpoint(ck, path, device=device)


def model_from_checkpoint(ck: Checkpoint, path: str | os.PathLike[str], *,
                          device: str | torch.device | None = None) -> LoadedModel:
    """:func:`load_model` of a checkpoint already read with
    :func:`~terraseg.models.surgery.read_checkpoint` (``path`` names it in messages)."""
    spec = dict(ck.spec)
    if ck.kind != "terraseg" or "arch" not in spec:
        raise DataError(f"{path}: not a terraseg model checkpoint (no model spec); train with `terraseg train` "
                        "or save with terraseg.models.save_checkpoint")
    arch = str(spec.pop("arch"))
    if arch == "fusion":
        from terraseg.models.fusion import fusion_model_from_spec

        model: nn.Module = fusion_model_from_spec(ck.spec, ck.ontology)
        task = "fusion"
    elif is_point_arch(arch):
        from terraseg.models.points import PRESETS, build_point_model, canonical_arch

        num_classes = int(spec.pop("num_classes"))
        in_channels = spec.pop("in_channels", None)
        preset = str(spec.pop("preset", "custom"))
        preset = preset if preset in PRESETS[canonical_arch(arch)] else "custom"
        model = build_point_model(arch, num_classes, in_channels=in_channels, preset=preset, **spec)
        task = "points"
    else:
        from terraseg.models.image import build_image_model

        model = build_image_model(arch, spec.pop("encoder", None), spec.pop("num_classes", None),
                                  ontology=ck.ontology, **spec)
        task = "image"
    load_weights(model, ck, strict=True)
    model.ontology = ck.ontology  # type: ignore[assignment]
    if task == "points":  # what its predictors need from the training run (older checkpoints: None / identity)
        from terraseg.models.points.intensity import model_intensity_spec

        model.projection = recorded_projection(dict(ck.meta))  # type: ignore[assignment]
        intensity = model_intensity_spec(dict(ck.meta), getattr(model, "config", None), str(path))
        model.intensity = intensity  # type: ignore[assignment]
    model.eval()
    if device is not None:
        model.to(device)
    return LoadedModel(model, task, ck.ontology, dict(ck.meta), Path(path))
