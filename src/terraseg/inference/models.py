"""Loading any terraseg checkpoint (camera or LiDAR) with what inference needs from its metadata."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from terraseg.errors import DataError
from terraseg.models.surgery import load_weights, read_checkpoint
from terraseg.ontology import Ontology

POINT_ARCHS = ("randlanet", "salsanext")


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


def load_model(path: str | os.PathLike[str], *, device: str | torch.device | None = None,
               trusted: bool = False) -> LoadedModel:
    """Rebuild the model of a terraseg checkpoint (``best.pth`` / ``last.pth`` of a run, or any file
    written by :func:`terraseg.models.surgery.save_checkpoint`).

    Raises:
        DataError: the file is missing, unreadable, or holds no model spec.
    """
    ck = read_checkpoint(path, trusted=trusted)
    spec = dict(ck.spec)
    if ck.kind != "terraseg" or "arch" not in spec:
        raise DataError(f"{path}: not a terraseg model checkpoint (no model spec); train with `terraseg train` "
                        "or save with terraseg.models.save_checkpoint")
    arch = str(spec.pop("arch"))
    if arch == "fusion":
        from terraseg.models.fusion import fusion_model_from_spec

        model: nn.Module = fusion_model_from_spec(ck.spec, ck.ontology)
        task = "fusion"
    elif arch in POINT_ARCHS:
        from terraseg.models.points import PRESETS, build_point_model

        num_classes = int(spec.pop("num_classes"))
        in_channels = spec.pop("in_channels", None)
        preset = str(spec.pop("preset", "custom"))
        model = build_point_model(arch, num_classes, in_channels=in_channels,
                                             preset=preset if preset in PRESETS[arch] else "custom", **spec)
        task = "points"
    else:
        from terraseg.models.image import build_image_model

        model = build_image_model(arch, spec.pop("encoder", None), spec.pop("num_classes", None),
                                  ontology=ck.ontology, **spec)
        task = "image"
    load_weights(model, ck, strict=True)
    model.ontology = ck.ontology  # type: ignore[assignment]
    model.eval()
    if device is not None:
        model.to(device)
    return LoadedModel(model, task, ck.ontology, dict(ck.meta), Path(path))
