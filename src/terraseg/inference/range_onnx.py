"""ONNX export of range-image networks (SalsaNext) and whole-scan inference with ONNX Runtime.

:func:`export_range_onnx` writes a self-contained ``.onnx`` file:

- input ``range``: (1, C, H, W) float32, the *normalised* range image of
  :func:`~terraseg.models.points.range_data.range_input` (C = 4, 5 or 6; H x W fixed at export);
- output ``logits``: (1, num_classes, H, W) float32 (no softmax);
- metadata property ``terraseg`` (JSON): ``arch``, the full SalsaNext ``config`` (number of
  classes, input channels, normalisation name, means and stds of the five raw channels, preset,
  ...), ``input`` / ``output`` names and shape, ``projection`` (when given at export), the
  model's ``ontology`` (when it has one) and ``preprocess.intensity`` (the intensity scale and
  training statistics of :mod:`terraseg.models.points.intensity`, when known); and
  ``terraseg.weights_sha256``, a checksum of the weights verified whenever a session opens the
  file (:mod:`terraseg.inference.onnx_integrity`).

The export is checked before anything is written: ONNX Runtime and PyTorch run the same input
and the fraction of pixels with the same argmax (``agreement``) must reach ``min_agreement``;
otherwise :class:`~terraseg.errors.DataError` is raised and no file is created. The file is
written atomically.

:class:`OrtRangePredictor` runs the exported file without PyTorch weights:
it *is* a :class:`~terraseg.models.points.predict.RangePredictor` (projection,
:func:`~terraseg.models.points.range_data.range_input`, kNN back-projection
:func:`~terraseg.models.points.range_post.points_from_pixels` are the same code) whose network is
an :class:`OrtRangeNetwork`, a parameter-free ``torch.nn.Module`` that calls ONNX Runtime.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from terraseg.errors import ConfigError, DataError
from terraseg.geometry.range_image import RangeProjection
from terraseg.inference.onnx_fuse import make_session
from terraseg.inference.onnx_integrity import record_digest
from terraseg.io.atomic import atomic_write_bytes
from terraseg.models.points.intensity import IntensitySpec
from terraseg.models.points.predict import (
    OrganizedLayout,
    Projection,
    RangePredictor,
    ScanPrediction,
    _EvalMode,
    resolve_projection,
)
from terraseg.models.points.range_post import KNNPost
from terraseg.models.points.salsanext import SalsaNext, SalsaNextConfig
from terraseg.ontology import Ontology

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

INPUT_NAME = "range"
OUTPUT_NAME = "logits"
METADATA_KEY = "terraseg"
METADATA_FORMAT = 1
DEFAULT_OPSET = 18


@dataclass(frozen=True)
class RangeExportReport:
    """Result of :func:`export_range_onnx`.

    Attributes:
        path: the file written.
        size: (H, W) range-image size the network was exported for.
        agreement: fraction of pixels where ONNX Runtime and PyTorch give the same class (NaN
            when not checked).
        max_abs_diff: largest absolute logit difference (NaN when not checked).
        seconds: wall-clock time of export and check.
        opset: ONNX opset of the file.
    """

    path: Path
    size: tuple[int, int]
    agreement: float
    max_abs_diff: float
    seconds: float
    opset: int


# ----------------------------------------------------------------------------- projection <-> JSON
def projection_to_json(projection: Projection | None) -> dict[str, Any] | None:
    """A JSON-able description of a projection (preset name, organised layout or full config)."""
    if projection is None:
        return None
    if isinstance(projection, str):
        RangeProjection.preset(projection)  # validate the name
        return {"preset": projection}
    if isinstance(projection, OrganizedLayout):
        return {"organized": {"height": projection.height, "width": projection.width, "layout": projection.layout}}
    if isinstance(projection, RangeProjection):
        d: dict[str, Any] = {}
        for f in dataclasses.fields(projection):
            if not f.init:
                continue
            v = getattr(projection, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else (None if isinstance(v, float) and math.isinf(v) else v)
        return {"projection": d}
    raise ConfigError(f"unsupported projection {projection!r} (a preset name, RangeProjection or OrganizedLayout)")


def projection_from_json(data: dict[str, Any] | None, where: str) -> Projection | None:
    """Inverse of :func:`projection_to_json`."""
    if data is None:
        return None
    try:
        if "preset" in data:
            return str(data["preset"])
        if "organized" in data:
            o = data["organized"]
            return OrganizedLayout(int(o["height"]), int(o["width"]), o.get("layout", "auto"))
        d = dict(data["projection"])
        if d.get("max_range") is None:
            d["max_range"] = float("inf")
        return RangeProjection(**d)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: unreadable projection in the metadata ({exc})") from None


def projection_size(projection: Projection) -> tuple[int, int]:
    """(H, W) of the range images a projection makes."""
    if isinstance(projection, str):
        p = RangeProjection.preset(projection)
        return p.height, p.width
    return int(projection.height), int(projection.width)


# ----------------------------------------------------------------------------- export
def _example_input(cfg: SalsaNextConfig, size: tuple[int, int], seed: int) -> np.ndarray:
    """(1, C, H, W) float32 synthetic normalised range image: about 30 % empty pixels (all 0)."""
    rng = np.random.default_rng(seed)
    h, w = size
    mask = (rng.random((h, w)) < 0.7).astype(np.float32)
    x = rng.normal(0.0, 1.0, (1, cfg.in_channels, h, w)).astype(np.float32) * mask
    if cfg.in_channels == 6:
        x[0, 5] = mask
    return x


def _export_proto(net: nn.Module, x: Tensor, opset: int) -> Any:
    """The ``onnx.ModelProto`` of a network (torch.export-based exporter when available)."""
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        program = torch.onnx.export(net, (x,), dynamo=True, opset_version=opset, verbose=False, **names)
        assert program is not None
        return program.model_proto
    return _export_torchscript(net, x, opset)  # PyTorch < 2.5


def _export_torchscript(net: nn.Module, x: Tensor, opset: int) -> Any:
    """The ``onnx.ModelProto`` of a network from the TorchScript exporter (about 3x faster to
    export the same graph than torch.export; used by tests)."""
    import onnx

    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    extra = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice
        torch.onnx.export(net, (x,), buf, opset_version=opset, **names, **extra)
    return onnx.load_from_string(buf.getvalue())


def _run_session(session: Any, x: np.ndarray) -> np.ndarray:
    """Logits (1, C, H, W) float32 of one normalised input."""
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])


def export_range_onnx(model: SalsaNext, path: str | os.PathLike[str], size: tuple[int, int], *,
                      opset: int = DEFAULT_OPSET, check: bool = True, min_agreement: float = 0.999,
                      projection: Projection | None = None, sample: np.ndarray | None = None,
                      seed: int = 0, intensity: IntensitySpec | None = None,
                      exporter: str = "auto") -> RangeExportReport:
    """Export a range network to ONNX, check it with ONNX Runtime, and write it atomically.

    Args:
        model: the network (any device; exported from an eval-mode float32 CPU copy, the model
            itself is not changed).
        path: output ``.onnx`` file.
        size: (H, W) of the range images (fixed in the file; 64 x 2048 for the 64-beam presets).
        opset: ONNX opset.
        check: compare ONNX Runtime with PyTorch on ``sample`` before writing.
        min_agreement: smallest accepted fraction of pixels with the same argmax.
        projection: optional projection recorded in the metadata (the default of
            :class:`OrtRangePredictor`); its size must be ``size``.
        sample: optional (C, H, W) or (1, C, H, W) normalised input used for tracing and the
            check (for example ``range_input`` of a real scan); default: a seeded synthetic one.
        seed: seed of the synthetic sample.
        intensity: the model's intensity scale and training statistics, recorded so the ONNX
            Runtime predictor scales and checks scans as the PyTorch one does (default:
            ``model.intensity`` when it has one).
        exporter: ``auto`` / ``dynamo`` (torch.export-based) or ``torchscript`` (faster to export;
            the file is checked the same way).

    Returns:
        A :class:`RangeExportReport`.

    Raises:
        DataError: when the export fails or disagrees with PyTorch (no file is written).
        ConfigError: on bad options.
    """
    t0 = time.perf_counter()
    out = Path(path)
    if not isinstance(model, SalsaNext):
        raise DataError(f"{out}: export_range_onnx expects a SalsaNext range network, got {type(model).__name__}")
    try:
        h, w = (int(size[0]), int(size[1]))
    except (TypeError, ValueError, IndexError):
        raise ConfigError(f"{out}: size must be (H, W), got {size!r}") from None
    if h < 1 or w < 1 or len(size) != 2:
        raise ConfigError(f"{out}: size must be two positive integers (H, W), got {size!r}")
    if not 0 <= min_agreement <= 1:
        raise ConfigError(f"{out}: min_agreement must be in [0, 1], got {min_agreement}")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ConfigError(f"{out}: exporter must be auto, dynamo or torchscript, got {exporter!r}")
    if projection is not None:
        projection = resolve_projection(projection, str(out))
    if projection is not None and projection_size(projection) != (h, w):
        raise ConfigError(f"{out}: the projection makes {projection_size(projection)} images, the export size is "
                          f"{(h, w)}")
    cfg = model.config
    if sample is None:
        x = _example_input(cfg, (h, w), seed)
    else:
        x = np.asarray(sample, dtype=np.float32)
        x = x[None] if x.ndim == 3 else x
        if x.shape != (1, cfg.in_channels, h, w):
            raise DataError(f"{out}: sample must be ({cfg.in_channels}, {h}, {w}), got {np.asarray(sample).shape}")
        x = np.ascontiguousarray(x)
    net = copy.deepcopy(model).cpu().float().to(memory_format=torch.contiguous_format)
    xt = torch.from_numpy(x)
    with _EvalMode(net):
        try:
            proto = (_export_torchscript if exporter == "torchscript" else _export_proto)(net, xt, int(opset))
        except Exception as exc:  # exporter errors are many types; report them as one
            raise DataError(f"{out}: ONNX export failed: {type(exc).__name__}: {exc}") from exc
        with torch.inference_mode():
            ref = net(xt).numpy()

    meta: dict[str, Any] = {
        "format": METADATA_FORMAT, "arch": model.arch, "config": cfg.to_dict(),
        "input": {"name": INPUT_NAME, "shape": [1, cfg.in_channels, h, w], "normalized": True},
        "output": {"name": OUTPUT_NAME, "shape": [1, cfg.num_classes, h, w], "softmax": False},
        "projection": projection_to_json(projection),
    }
    onto = getattr(model, "ontology", None)
    if isinstance(onto, Ontology):
        meta["ontology"] = onto.to_dict()
    spec = intensity if intensity is not None else getattr(model, "intensity", None)
    if isinstance(spec, IntensitySpec) and not spec.identity:
        meta["preprocess"] = {"intensity": spec.to_meta()}
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    record_digest(proto)
    import onnx

    onnx.checker.check_model(proto)
    data = proto.SerializeToString()

    agreement = max_diff = float("nan")
    if check:
        got = _run_session(make_session(data), x)
        if got.shape != ref.shape:
            raise DataError(f"{out}: ONNX Runtime returned logits of shape {got.shape}, PyTorch {ref.shape}")
        agreement = float(np.mean(got.argmax(axis=1) == ref.argmax(axis=1)))
        max_diff = float(np.max(np.abs(got - ref))) if got.size else 0.0
        if not agreement >= min_agreement:
            raise DataError(f"{out}: the ONNX export agrees with PyTorch on only {agreement:.4%} of the pixels "
                            f"(max logit difference {max_diff:.3g}; need {min_agreement:.4%}); nothing was written")
    atomic_write_bytes(out, data)
    return RangeExportReport(out, (h, w), agreement, max_diff, time.perf_counter() - t0, int(opset))


# ----------------------------------------------------------------------------- ONNX Runtime inference
def read_range_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``terraseg`` metadata of a file written by :func:`export_range_onnx` (parsed JSON)."""
    return _read_metadata(_open_session(Path(path), None, None), Path(path))


def _open_session(path: Path, threads: int | None, providers: list[str] | None, spin: bool = True) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: ONNX file not found")
    try:
        return make_session(path, threads, providers, spin)
    except (ConfigError, DataError):
        raise
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable files
        raise DataError(f"{path}: cannot load the ONNX model ({type(exc).__name__}: {exc})") from None


def _read_metadata(session: Any, path: Path) -> dict[str, Any]:
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise DataError(f"{path}: no '{METADATA_KEY}' metadata (not written by terraseg's export_range_onnx)")
    try:
        meta = json.loads(props[METADATA_KEY])
        if not isinstance(meta, dict) or meta.get("arch") != "salsanext" or "config" not in meta:
            raise ValueError("expected arch 'salsanext' and a config")
    except ValueError as exc:
        raise DataError(f"{path}: unreadable '{METADATA_KEY}' metadata ({exc})") from None
    return meta


class OrtRangeNetwork(nn.Module):
    """A range network run by ONNX Runtime, callable like the :class:`SalsaNext` it was exported from.

    ``forward(x (1, C, H, W) float32 tensor) -> logits (1, num_classes, H, W)`` (on the CPU).
    It has no parameters: :func:`~terraseg.models.points.predict.RangePredictor` runs it on the
    CPU, in any PyTorch mode.

    Attributes:
        path: the ``.onnx`` file.
        config: the exported :class:`SalsaNextConfig` (normalisation included).
        size: (H, W) the file was exported for.
        metadata: the parsed ``terraseg`` metadata.
        session: the ``onnxruntime.InferenceSession``.
    """

    arch = "salsanext"

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None,
                 providers: list[str] | None = None, spin: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = _open_session(self.path, threads, providers, spin)
        self._threads, self._providers, self._spin = threads, providers, spin
        self._labels_session: Any = None
        self.metadata = _read_metadata(self.session, self.path)
        try:
            self.config = SalsaNextConfig(**self.metadata["config"])
        except (TypeError, ConfigError) as exc:
            raise DataError(f"{self.path}: bad SalsaNext config in the metadata ({exc})") from None
        shape = self.metadata.get("input", {}).get("shape")
        if not (isinstance(shape, list) and len(shape) == 4):
            raise DataError(f"{self.path}: the metadata has no input shape")
        self.size = (int(shape[2]), int(shape[3]))
        self.num_classes = self.config.num_classes
        self.in_channels = self.config.in_channels
        self.spec: dict[str, object] = {"arch": self.arch, **self.config.to_dict()}
        self.ontology: Ontology | None = None
        if self.metadata.get("ontology") is not None:
            try:
                self.ontology = Ontology.from_dict(self.metadata["ontology"])
            except ConfigError as exc:
                raise DataError(f"{self.path}: bad ontology in the metadata ({exc})") from None

    @property
    def projection(self) -> Projection | None:
        """The projection recorded at export, if any."""
        return projection_from_json(self.metadata.get("projection"), str(self.path))

    def _array(self, x: Tensor) -> np.ndarray:
        h, w = self.size
        if tuple(x.shape) != (1, self.in_channels, h, w):
            raise DataError(f"{self.path}: the ONNX network takes (1, {self.in_channels}, {h}, {w}) inputs, "
                            f"got {tuple(x.shape)}")
        return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)

    def forward(self, x: Tensor) -> Tensor:
        return torch.from_numpy(_run_session(self.session, self._array(x)))

    def labels(self, x: Tensor) -> np.ndarray:
        """Class ids (H, W) of one normalised input, the argmax computed inside the graph.

        A second session on the graph with an argmax output
        (:func:`~terraseg.inference.onnx_fuse.fuse_outputs`), made on the first call: the
        logits never leave ONNX Runtime. The ids equal ``forward(x).argmax(1)``.
        """
        from terraseg.inference.onnx_fuse import LABELS_OUTPUT, fused_session

        if self._labels_session is None:
            self._labels_session = fused_session(self.path, num_classes=self.num_classes, threads=self._threads,
                                                 providers=self._providers, spin=self._spin)
        try:
            out = self._labels_session.run([LABELS_OUTPUT], {INPUT_NAME: self._array(x)})[0]
        except Exception as exc:  # ORT raises its own exception types
            raise DataError(f"{self.path}: ONNX Runtime failed: {exc}") from exc
        return np.asarray(out[0])


class OrtRangePredictor(RangePredictor):
    """Whole-scan inference with an exported range network on ONNX Runtime.

    The same pipeline as :class:`~terraseg.models.points.predict.RangePredictor` (it is one):
    projection -> :func:`~terraseg.models.points.range_data.range_input` with the exported
    normalisation -> ONNX Runtime -> softmax -> kNN back-projection to every point.

    Args:
        path: a file from :func:`export_range_onnx`.
        projection: a preset name, ``organized:HxW``,
            :class:`~terraseg.geometry.range_image.RangeProjection` or
            :class:`~terraseg.models.points.predict.OrganizedLayout`; default: the one recorded at
            export. Its image size must be the exported size.
        threads: ONNX Runtime intra-op threads (default: ONNX Runtime's choice, all cores).
        providers: ONNX Runtime execution providers (default ``["CPUExecutionProvider"]``).
        knn: kNN post-processing settings.
        fill: label of points without a return.
        source: name used in error messages.
        probabilities: compute per-point class probabilities; False gives labels only, the
            argmax taken inside the ONNX graph (faster; ``ScanPrediction.probabilities`` is None).
        spin: let ONNX Runtime's idle threads spin (see :func:`~terraseg.inference.onnx_fuse.make_session`).
    """

    def __init__(self, path: str | os.PathLike[str], *, projection: Projection | None = None,
                 threads: int | None = None, providers: list[str] | None = None, knn: KNNPost | None = None,
                 fill: int = 0, source: str = "points", probabilities: bool = True, spin: bool = True) -> None:
        network = OrtRangeNetwork(path, threads=threads, providers=providers, spin=spin)
        proj = projection if projection is not None else network.projection
        if proj is None:
            raise ConfigError(f"{network.path}: no projection was recorded at export; pass projection=")
        proj = resolve_projection(proj, str(network.path))
        if projection_size(proj) != network.size:
            raise ConfigError(f"{network.path}: the network was exported for {network.size[0]} x {network.size[1]} "
                              f"range images, the projection makes {projection_size(proj)}")
        # RangePredictor only calls the network and reads its config: the ONNX network stands in
        # for the SalsaNext it was exported from.
        super().__init__(model=cast(SalsaNext, network), projection=proj, post=knn if knn is not None else KNNPost(),
                         fill=fill, device="cpu", channels_last=False, source=source, probabilities=probabilities)
        self.network = network

    def predict(self, points: np.ndarray) -> ScanPrediction:
        """Label every point of a scan (same as calling the predictor)."""
        return self(points)


def export_range_checkpoint_onnx(checkpoint: str | os.PathLike[str], path: str | os.PathLike[str],
                                 size: tuple[int, int] | None = None, *, opset: int = DEFAULT_OPSET,
                                 min_agreement: float = 0.999, projection: Projection | None = None,
                                 exporter: str = "auto") -> RangeExportReport:
    """Export the range network of a terraseg checkpoint (see :func:`export_range_onnx`).

    ``size`` defaults to the image size of the projection recorded with the run (its preset, or
    the organised layout; ``projection`` overrides it); the projection, the intensity scale and
    the training intensity statistics are stored in the file for :class:`OrtRangePredictor`.

    Raises:
        ConfigError: the checkpoint holds no range network (RandLA-Net needs its neighbour
            hierarchy from the data pipeline and is not exported), or records no projection.
    """
    from terraseg.inference.models import load_model, recorded_projection

    loaded = load_model(checkpoint)
    if getattr(loaded.model, "arch", None) == "voxelunet":
        raise ConfigError(f"{checkpoint}: ONNX export of sparse voxel convolution is not supported (ONNX has no "
                          "sparse convolution operator and the kernel maps depend on each scan's voxels); run the "
                          "voxel U-Net with terraseg predict or the runtime's PyTorch backend")
    if not isinstance(loaded.model, SalsaNext):
        why = ("RandLA-Net needs its neighbour hierarchy from the data pipeline" if loaded.arch == "randlanet" else
               f"{loaded.arch} is not a range network")
        raise ConfigError(f"{checkpoint}: ONNX export supports camera models and range networks; {why} (run it with "
                          "terraseg predict)")
    proj = resolve_projection(projection if projection is not None else recorded_projection(loaded.meta),
                              str(checkpoint))
    if size is None:
        size = projection_size(proj)
    return export_range_onnx(loaded.model, path, size, opset=opset, min_agreement=min_agreement, projection=proj,
                             exporter=exporter)
