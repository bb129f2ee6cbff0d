"""In-memory prediction with a cross-modal model: one paired frame in, 2D / 3D / 2D+3D labels out.

:class:`FusionPredictor` does at inference what training did to a validation frame: find the
points in the camera's view (:func:`~terraseg.models.fusion.view.frame_view`, with the frame's
calibration fitted to its image, or one given), resize the image to the training ``base_size``
(the points' pixels follow through a :class:`~terraseg.geometry.pixel_map.PixelMap`), normalise
it as in training, build the 3D network's input from the in-view points, and run both networks
once. Everything it needs besides the frame is in the checkpoint (``meta["preprocess"]``:
normalisation, ``base_size``, ``near``).

Only points in the camera's view get predictions (the model was trained on them, as xMUDA);
:meth:`FusionPrediction.full` spreads per-point results over the whole scan with a fill value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from terraseg.errors import DataError
from terraseg.frame import Calibration, Frame
from terraseg.geometry.pixel_map import PixelMap
from terraseg.geometry.projection import DEFAULT_NEAR
from terraseg.models.fusion.backbone3d import PointInputSpec
from terraseg.models.fusion.model import CrossModalModel
from terraseg.models.fusion.view import frame_view, frame_where
from terraseg.models.image.preprocess import Normalization
from terraseg.ontology import Ontology

MODALITIES: tuple[str, ...] = ("2d", "3d", "2d+3d")
"""The three predictions of a cross-modal model, in report order."""


@dataclass
class FusionPrediction:
    """Predictions for the in-view points of one frame (M of its N points, K classes).

    Attributes:
        frame_id: the frame.
        num_points: N.
        index: (M,) int64 indices of the in-view points in the frame's point array.
        uv: (M, 2) float64 pixel coordinates of those points in the frame's image.
        probs_2d, probs_3d: (M, K) float32 class probabilities of each network.
    """

    frame_id: str
    num_points: int
    index: np.ndarray
    uv: np.ndarray
    probs_2d: np.ndarray
    probs_3d: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def probs(self) -> np.ndarray:
        """(M, K) 2D+3D probabilities: the mean of the two softmaxes (xMUDA's ensemble)."""
        return 0.5 * (self.probs_2d + self.probs_3d)

    def probabilities(self, modality: str) -> np.ndarray:
        """(M, K) probabilities of ``2d``, ``3d`` or ``2d+3d``."""
        return {"2d": self.probs_2d, "3d": self.probs_3d, "2d+3d": self.probs}[_modality(modality)]

    def labels_of(self, modality: str) -> np.ndarray:
        """(M,) int64 class ids of ``2d``, ``3d`` or ``2d+3d`` (argmax of the probabilities)."""
        return self.probabilities(modality).argmax(1).astype(np.int64)

    def confidence(self, modality: str) -> np.ndarray:
        """(M,) float32 probability of the predicted class."""
        return self.probabilities(modality).max(1).astype(np.float32)

    @property
    def labels_2d(self) -> np.ndarray:
        return self.labels_of("2d")

    @property
    def labels_3d(self) -> np.ndarray:
        return self.labels_of("3d")

    @property
    def labels(self) -> np.ndarray:
        """(M,) 2D+3D class ids."""
        return self.labels_of("2d+3d")

    @property
    def in_view(self) -> np.ndarray:
        """(N,) bool: which points of the frame have predictions."""
        m = np.zeros(self.num_points, dtype=bool)
        m[self.index] = True
        return m

    def full(self, values: np.ndarray, fill: int | float = 0) -> np.ndarray:
        """Per-point ``values`` (M, ...) spread over the frame's N points, ``fill`` elsewhere."""
        out = np.full((self.num_points, *values.shape[1:]), fill, dtype=values.dtype)
        out[self.index] = values
        return out


def _modality(m: str) -> str:
    if m not in MODALITIES:
        raise DataError(f"unknown modality {m!r} (known: {', '.join(MODALITIES)})")
    return m


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, list):
        return [_to(v, device) for v in obj]
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


class FusionPredictor:
    """Labels the in-view points of paired frames with a trained :class:`CrossModalModel`.

    Args:
        model: the model (moved to ``device`` and set to eval mode).
        ontology: its label ontology.
        meta: the checkpoint's metadata (``preprocess``: ``mean`` / ``std``, ``base_size``
            ``[H, W]`` or None, ``near`` in metres).
        device: ``cpu`` / ``cuda`` (default: CUDA when available).
        calib: a calibration used for every frame instead of the frames' own.
    """

    def __init__(self, model: CrossModalModel, ontology: Ontology | None = None,
                 meta: Mapping[str, Any] | None = None, device: str | torch.device | None = None,
                 calib: Calibration | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(self.device)
        self.ontology = ontology if ontology is not None else getattr(model, "ontology", None)
        self.meta = dict(meta or {})
        pre = dict(self.meta.get("preprocess") or {})
        self.norm = Normalization.from_meta(self.meta)
        base = pre.get("base_size")
        self.base_size: tuple[int, int] | None = None if not base else (int(base[0]), int(base[1]))
        self.near = float(pre.get("near", DEFAULT_NEAR))
        self.calib = calib
        self.point_spec = PointInputSpec.from_model(model.net3d)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], device: str | torch.device | None = None,
                        calib: Calibration | None = None, trusted: bool = False) -> FusionPredictor:
        """Rebuild the model of a fusion checkpoint (``best.pth`` of a ``task: fusion`` run)."""
        from terraseg.models.fusion.build import fusion_model_from_spec
        from terraseg.models.surgery import load_weights, read_checkpoint

        ck = read_checkpoint(path, trusted=trusted)
        if ck.spec.get("arch") != "fusion":
            raise DataError(f"{path}: not a cross-modal (fusion) checkpoint (arch {ck.spec.get('arch')!r})")
        model = fusion_model_from_spec(ck.spec, ck.ontology)
        load_weights(model, ck, strict=True)
        return cls(model, ck.ontology, ck.meta, device, calib)

    def prepare(self, frame: Frame) -> tuple[dict[str, Any], Any]:
        """The model's batch for one frame and the frame's view (in-view points)."""
        view = frame_view(frame, self.near, self.calib)
        assert frame.image is not None and frame.points is not None
        image = frame.image
        size = (image.shape[1], image.shape[0])
        pmap = PixelMap.identity(size)
        if self.base_size is not None and self.base_size != image.shape[:2]:
            image = cv2.resize(image, (self.base_size[1], self.base_size[0]), interpolation=cv2.INTER_LINEAR)
            pmap = PixelMap.resize(size, (self.base_size[1], self.base_size[0]))
        x = torch.from_numpy(self.norm.numpy(image))[None]
        uv_np = pmap.apply(view.uv).astype(np.float32)
        pts = np.asarray(frame.points, dtype=np.float32)[view.index]
        short = self.point_spec.min_points - len(pts)
        if short > 0:  # too few for the 3D network's hierarchy: repeat points, drop their outputs later
            extra = np.arange(short) % len(pts)
            pts, uv_np = np.concatenate([pts, pts[extra]]), np.concatenate([uv_np, uv_np[extra]])
        uv = torch.from_numpy(uv_np)
        inputs = self.point_spec.build(pts, 0, frame_where(frame))
        batch = {"image": x, "uv": uv, "point_batch": torch.zeros(len(uv), dtype=torch.int64),
                 "points3d": self.point_spec.collate([inputs])}
        return batch, view

    @torch.inference_mode()
    def predict(self, frame: Frame) -> FusionPrediction:
        """2D, 3D and 2D+3D probabilities of the frame's in-view points."""
        batch, view = self.prepare(frame)
        out = self.model(_to(batch, self.device))
        p2, p3, _ = out.probabilities()
        m = len(view.index)  # padding repeats (frames with very few points in view) come last
        return FusionPrediction(frame.frame_id, view.num_points, view.index, view.uv,
                                p2[:m].cpu().numpy().astype(np.float32), p3[:m].cpu().numpy().astype(np.float32),
                                {"image_size": view.image_size})
