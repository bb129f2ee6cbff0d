"""Inference backends of the runtime: one ``predict(message) -> Prediction`` for every model kind.

- Camera: :class:`ImageBackend` around an
  :class:`~terraseg.models.image.predict.ImagePredictor` (PyTorch on CPU / CUDA, optional autocast:
  float16 on CUDA, bfloat16 on CPU) or an
  :class:`~terraseg.inference.onnx_export.OrtImagePredictor` (ONNX Runtime). The predictor's
  normalisation, base size, windows and TTA apply unchanged; with one view and whole-image
  inference at the image's own size the class ids are the argmax of the logits (the same ids
  as the predictor's, without the softmax over every pixel). For an ONNX model in that case
  (and ``fuse=True``, the default) normalisation and argmax run inside the graph
  (:mod:`terraseg.inference.onnx_fuse`): the uint8 image goes in, uint8 ids come out.
- LiDAR: :class:`ScanBackend` around ``predict(points) -> ScanPrediction``: the
  :class:`~terraseg.models.points.pipeline.ScanPipeline` of
  :func:`terraseg.inference.load_predictor` (intensity scaling and check, optional TTA) around
  a point network on PyTorch or an :class:`~terraseg.inference.range_onnx.OrtRangePredictor`
  (labels only, the argmax inside the graph, unless scores are asked for).

:func:`load_backend` picks one from a model file through
:func:`terraseg.inference.load_predictor`: ``.onnx`` runs on ONNX Runtime, anything else is
read as a terraseg checkpoint. Batch size is 1. Timings (milliseconds) go into
``Prediction.timings_ms``: ``preprocess`` (camera: upload, normalisation, resize to the base
size; LiDAR: projection / neighbour search), ``infer`` (the network, including the resize of
the logits back to the image) and ``postprocess`` (camera: argmax and download; LiDAR: labels
of every point). CUDA work is synchronised before each time is taken.

Threads: backends do not call ``torch.set_num_threads`` (a process-wide setting that belongs to
the application; ``terraseg run --threads`` sets it). ONNX Runtime sessions take ``threads``
(intra-op threads per session).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from terraseg.errors import ConfigError, DataError
from terraseg.inference.predictor import model_kind
from terraseg.inference.runtime.types import Prediction, SensorMessage, StreamKind
from terraseg.models.image.base import unpack_outputs
from terraseg.models.image.predict import BaseImagePredictor, check_image
from terraseg.models.image.windows import infer_probabilities
from terraseg.models.points.pipeline import takes_source
from terraseg.ontology import Ontology

__all__ = ["Backend", "ImageBackend", "ScanBackend", "describe_backends", "load_backend", "model_kind", "xyzi"]

ScanFn = Callable[[np.ndarray], Any]
"""``(N, C) float32 points -> ScanPrediction`` (``labels``, ``probabilities``, ``timings`` in s)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Backend:
    """Base of the backends: :attr:`kind`, :attr:`name` (for tables), :attr:`ontology` and :meth:`predict`.

    Attributes:
        kind: the stream kind it serves, ``camera`` or ``lidar``.
        name: short description, e.g. ``onnxruntime:CPUExecutionProvider`` or ``pytorch:cuda+amp``.
        ontology: the label ontology of the predictions.
        model_path: the model file, when loaded from one.
        scores: also return the probability of the predicted class (``Prediction.scores``).
    """

    kind: StreamKind
    name: str
    ontology: Ontology
    model_path: Path | None = None
    scores: bool = False

    def predict(self, message: SensorMessage) -> Prediction:  # pragma: no cover - abstract
        """Labels of one message with ``preprocess`` / ``infer`` / ``postprocess`` timings (ms)."""
        raise NotImplementedError

    def check(self, message: SensorMessage) -> None:
        if message.stream != self.kind:
            raise DataError(f"{message.topic} message {message.seq}: a {message.stream} message for the {self.kind} "
                            f"model {self.model_path or self.name}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, ontology={self.ontology.name!r}, model={self.model_path})"


def _require_ontology(onto: Ontology | None, where: Any) -> Ontology:
    if onto is None:
        raise ConfigError(f"{where}: the model does not say its label ontology (needed for class ids and colours)")
    return onto


# ---------------------------------------------------------------------------------------------- camera
class ImageBackend(Backend):
    """Camera backend around an image predictor (PyTorch or ONNX Runtime).

    Args:
        predictor: an :class:`~terraseg.models.image.predict.ImagePredictor` or
            :class:`~terraseg.inference.onnx_export.OrtImagePredictor`.
        name: description for tables (default: the runtime and device).
        scores: also compute the softmax probability of the predicted class, (H, W) float32.
        model_path: the model file, for messages.
    """

    kind: StreamKind = "camera"

    def __init__(self, predictor: BaseImagePredictor, *, name: str | None = None, scores: bool = False,
                 model_path: str | os.PathLike[str] | None = None, fuse: bool = True) -> None:
        self.predictor = predictor
        self.fuse = bool(fuse)
        self._fused: Any = None
        self.model_path = Path(model_path) if model_path is not None else getattr(predictor, "path", None)
        self.ontology = _require_ontology(predictor.ontology, self.model_path or type(predictor).__name__)
        self.scores = bool(scores)
        self.label_dtype = predictor.label_dtype
        if name is None:
            session = getattr(predictor, "session", None)
            if session is not None:
                name = ("onnxruntime:" + session.get_providers()[0].replace("ExecutionProvider", "")
                        + ("" if self.fuse else " (unfused)"))
            else:
                name = f"pytorch:{predictor.device}" + ("+amp" if getattr(predictor, "amp", False) else "")
        self.name = name

    def _fast(self, hw: tuple[int, int]) -> bool:
        """One view, whole image, no resize: the ids are the argmax of the logits."""
        p = self.predictor
        return (p.window.mode == "whole" and p.tta.views == [(1.0, False)]
                and (p.base_size is None or tuple(p.base_size) == hw))

    def _fused_session(self, hw: tuple[int, int]) -> Any:
        """The ONNX Runtime session with in-graph normalisation and argmax, when it applies to an
        ``hw`` image (an ONNX model, one whole-image view at the model's own size, batch 1)."""
        from terraseg.inference.onnx_export import OrtImagePredictor

        p = self.predictor
        if not (self.fuse and isinstance(p, OrtImagePredictor) and self._fast(hw)
                and p.fixed_size in (None, hw) and p.fixed_batch in (None, 1)):
            return None
        if self._fused is None:
            from terraseg.inference.onnx_fuse import fused_session

            self._fused = fused_session(p.path, uint8_input=(p.norm.mean, p.norm.std), confidence=self.scores,
                                        num_classes=p.num_classes, threads=p.threads,
                                        providers=p.session.get_providers(), spin=p.spin)
        return self._fused

    def _predict_fused(self, session: Any, message: SensorMessage, img: np.ndarray) -> Prediction:
        from terraseg.inference.onnx_fuse import UINT8_INPUT

        t0 = time.perf_counter()
        x = np.ascontiguousarray(img)[None]
        t1 = time.perf_counter()
        try:
            outs = session.run(None, {UINT8_INPUT: x})
        except Exception as exc:  # ORT raises its own exception types
            raise DataError(f"{self.model_path or self.name}: ONNX Runtime failed on {message.topic} message "
                            f"{message.seq}: {exc}") from exc
        t2 = time.perf_counter()
        ids = outs[0][0].astype(self.label_dtype, copy=False)
        scores = np.asarray(outs[1][0], np.float32) if self.scores else None
        t3 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3}
        return Prediction(message, ids, self.ontology.name, timings, scores, ontology_def=self.ontology)

    def predict(self, message: SensorMessage) -> Prediction:
        self.check(message)
        p = self.predictor
        img = check_image(message.image, f"{message.topic} message {message.seq}")  # type: ignore[arg-type]
        h, w = img.shape[:2]
        session = self._fused_session((h, w))
        if session is not None:
            return self._predict_fused(session, message, img)
        dev = p.device
        scores = None
        with torch.inference_mode():
            t0 = time.perf_counter()
            if not (img.flags.writeable and img.flags.c_contiguous):  # torch wants writable, contiguous memory
                img = np.array(img, order="C")
            x = p.norm.torch(torch.from_numpy(img).to(dev, non_blocking=True)[None].permute(0, 3, 1, 2))
            fast = self._fast((h, w))
            if not fast and p.base_size is not None and (h, w) != tuple(p.base_size):
                x = F.interpolate(x, size=p.base_size, mode="bilinear", align_corners=False)
            _sync(dev)
            t1 = time.perf_counter()
            if fast:
                out = unpack_outputs(p._model_fn(x))[0].float()
                if out.shape[-2:] != (h, w):
                    out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
            else:
                out = infer_probabilities(p._model_fn, x, p.num_classes, p.window, p.tta, p.batch_windows)
                if out.shape[-2:] != (h, w):
                    out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
            if out.dim() != 4 or out.shape[1] != p.num_classes:
                raise DataError(f"{self.model_path or self.name}: the model returned {tuple(out.shape)} for a "
                                f"{h}x{w} image; expected (1, {p.num_classes}, {h}, {w})")
            _sync(dev)
            t2 = time.perf_counter()
            best = out[0].max(0)
            ids = best.indices.cpu().numpy().astype(self.label_dtype)
            if self.scores:
                prob = torch.softmax(out[0], 0).max(0).values if fast else best.values
                scores = prob.float().cpu().numpy()
            t3 = time.perf_counter()
        timings = {"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3, "postprocess": (t3 - t2) * 1e3}
        return Prediction(message, ids, self.ontology.name, timings, scores, ontology_def=self.ontology)


# ---------------------------------------------------------------------------------------------- LiDAR
def xyzi(message: SensorMessage) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity of a LiDAR message (intensity 0 when it has none)."""
    from terraseg.inference.runtime.sources import _xyzi

    if message.points is None:
        raise DataError(f"{message.topic} message {message.seq}: a LiDAR message without points")
    pts = np.asarray(message.points)
    if pts.ndim != 2 or pts.shape[1] < 3 or pts.shape[1] != len(message.point_fields):
        raise DataError(f"{message.topic} message {message.seq}: points must be (N, {len(message.point_fields)}) "
                        f"for fields {message.point_fields}, got {pts.shape}")
    return _xyzi(pts, message.point_fields)


class ScanBackend(Backend):
    """LiDAR backend around ``predict(points) -> ScanPrediction``.

    Args:
        predict_fn: e.g. the ``scan`` pipeline of :func:`terraseg.inference.load_predictor` or an
            :class:`~terraseg.inference.range_onnx.OrtRangePredictor`; it gets (N, 4) float32
            x, y, z, intensity.
        ontology: the label ontology of its outputs.
        name: description for tables.
        scores: also return the probability of each point's label, (N,) float32.
    """

    kind: StreamKind = "lidar"

    def __init__(self, predict_fn: ScanFn, ontology: Ontology | None, *, name: str, scores: bool = False,
                 model_path: str | os.PathLike[str] | None = None) -> None:
        self.predict_fn = predict_fn
        self._named = takes_source(predict_fn)  # errors name the message's scan, not the model
        self.model_path = Path(model_path) if model_path is not None else None
        self.ontology = _require_ontology(ontology, self.model_path or name)
        self.name = name
        self.scores = bool(scores)

    def predict(self, message: SensorMessage) -> Prediction:
        self.check(message)
        t0 = time.perf_counter()
        pts = xyzi(message)
        t1 = time.perf_counter()
        if self._named:
            pred = self.predict_fn(pts, source=f"{message.topic}/{message.frame_id}")
        else:
            pred = self.predict_fn(pts)
        t2 = time.perf_counter()
        labels = np.asarray(pred.labels).astype(self.ontology.label_dtype)
        scores = None
        if self.scores:
            if pred.probabilities is None:
                raise ConfigError(f"{self.model_path or self.name}: scores were asked for but the predictor "
                                  "returns labels only")
            scores = pred.probabilities.max(axis=1).astype(np.float32)
        t3 = time.perf_counter()
        tm = dict(getattr(pred, "timings", {}) or {})
        pre, net, post = tm.get("preprocess"), tm.get("network"), tm.get("postprocess")
        if pre is None or net is None or post is None:  # a predictor without stage times: all of it is "infer"
            pre, net, post = 0.0, t2 - t1, 0.0
        timings = {"preprocess": (t1 - t0 + pre) * 1e3, "infer": net * 1e3, "postprocess": (post + t3 - t2) * 1e3}
        return Prediction(message, labels, self.ontology.name, timings, scores, ontology_def=self.ontology)


# ---------------------------------------------------------------------------------------------- loading
def load_backend(path: str | os.PathLike[str], kind: StreamKind | None = None, *, device: str | None = None,
                 amp: bool = False,
                 threads: int | None = None, projection: str | None = None, tta: Any = None, window: Any = None,
                 scores: bool = False, trusted: bool = False, fuse: bool = True, spin: bool = False,
                 intensity_max: float | None = None) -> Backend:
    """A backend for a model file: ``.onnx`` on ONNX Runtime, else a terraseg checkpoint on PyTorch.

    The model is loaded by :func:`terraseg.inference.load_predictor` (which decides what it
    is and carries its normalisation, projection, intensity scale and ontology).

    Args:
        path: the model file.
        kind: ``camera`` (image models) or ``lidar`` (point networks); None: what the model is
            (:func:`~terraseg.inference.predictor.model_kind`).
        device: ``cpu`` / ``cuda`` / ``cuda:1`` (PyTorch), ``cpu`` / ``cuda`` (ONNX Runtime
            providers); None or ``auto``: CUDA when available.
        amp: PyTorch camera models: autocast (float16 on CUDA, bfloat16 on CPU).
        threads: ONNX Runtime intra-op threads per session (default: ONNX Runtime's choice).
        projection: LiDAR range networks: projection preset or ``organized:HxW`` (default: the
            one recorded in the checkpoint / ONNX file).
        tta: test-time augmentation of the model's kind (camera: scales x flip; LiDAR: rotations
            x mirrors); window: camera sliding windows. The default is one whole-image / whole-scan view.
        scores: also return the confidence of each label.
        trusted: allow loading checkpoints with arbitrary pickled objects.
        fuse: ONNX models: normalisation (camera) and argmax inside the graph (see
            :mod:`terraseg.inference.onnx_fuse`); False runs the exported graph as it is, with
            PyTorch around it (the same ids, slower).
        spin: ONNX Runtime's idle intra-op threads spin-wait (its own default). Off by default
            here: the runtime's reader and writer threads share the cores (see
            :func:`~terraseg.inference.onnx_fuse.make_session`).
        intensity_max: LiDAR: divide raw intensities by this (default: the model's recorded scale).

    Raises:
        DataError: a missing or unreadable model file.
        ConfigError: a model of the wrong kind (e.g. a LiDAR checkpoint for the camera), or options
            that do not apply to it.
    """
    from terraseg.inference.predictor import load_predictor

    p = Path(path)
    if kind is not None and kind not in ("camera", "lidar"):
        raise ConfigError(f"kind must be camera or lidar, got {kind!r}")
    onnx = p.suffix.lower() == ".onnx"
    pred = load_predictor(p, kind=kind, device=device, amp=amp, threads=threads, projection=projection, tta=tta,
                          window=window, trusted=trusted, batch_size=1, spin=spin, intensity_max=intensity_max,
                          probabilities=scores or (onnx and not fuse))
    if pred.kind == "camera":
        assert pred.image is not None
        return ImageBackend(pred.image, scores=scores, model_path=p, fuse=fuse)
    assert pred.scan is not None
    return ScanBackend(pred.scan, pred.ontology, scores=scores, model_path=p,
                       name=pred.name + ("" if fuse or not onnx else " (unfused)"))


def describe_backends(backends: Sequence[Backend]) -> str:
    """One line per backend: kind, name, model, ontology."""
    return "\n".join(f"{b.kind}: {b.name} {b.model_path or ''} ({b.ontology.name}, {b.ontology.num_classes} classes)"
                     for b in backends)
