"""ONNX export of 2D models with an agreement check, and an ONNX Runtime predictor.

:func:`export_onnx` writes a self-contained ONNX file:

* input ``image``: ``(N, 3, H, W)`` float32, RGB, normalised as ``(pixel / 255 - mean) / std``;
* output ``logits``: ``(N, K, H, W)`` float32 eval-mode logits at input resolution (channel
  ``c`` is class id ``c``);
* ``metadata_props`` (keys ``terraseg.*``, values text / JSON): the class names per channel and
  the ontology, the normalisation mean / std, the export size, whether H / W are dynamic, the
  training base size, the model spec and the terraseg version, so :class:`OrtImagePredictor`
  needs nothing but the file (see :func:`read_onnx_metadata`); and ``terraseg.weights_sha256``,
  a checksum of the weights that every session opening verifies
  (:mod:`terraseg.inference.onnx_integrity`).

Exporters (findings with torch 2.15, onnxscript 0.7, onnxruntime 1.31; checked on litefpn,
upernet-resnet18, deeplabv3plus-resnet18 and segformer-mit_b0):

* **Fixed size** (``dynamic=False``, the default and the robust choice): the torch.export-based
  exporter (``dynamo=True``) exports all four; the TorchScript exporter fails on UPerNet
  (``adaptive_avg_pool2d`` with output sizes that do not divide the input). Batch is fixed to 1.
* **Dynamic N / H / W** (``dynamic=True``): the model's own ``forward`` computes its padding with
  Python integers, which both exporters bake in as constants (the dynamo exporter then returns
  a graph with symbolic input and a *fixed-size* output). The export therefore goes through a
  wrapper that pads, runs ``forward_raw`` and resizes with shape arithmetic the exporters can
  trace. With it the TorchScript exporter (about 2 s) is exact for litefpn, deeplabv3plus and
  segformer; the dynamo exporter (30-100 s) is exact for litefpn and deeplabv3plus but bakes in
  the batch size for segformer; UPerNet (pyramid pooling) fails with both. Dynamic exports are
  checked at a second size and batch 2, so a graph that silently specialised is rejected.

``exporter="auto"`` tries dynamo first for fixed sizes and TorchScript first for dynamic ones,
falling back to the other when the export raises or fails the check. Files are written
atomically: a failed export or check leaves nothing at ``path``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from terraseg.errors import ConfigError, DataError
from terraseg.inference.onnx_integrity import record_digest
from terraseg.io.atomic import atomic_path
from terraseg.models.image.base import ImageSegmenter, unpack_outputs
from terraseg.models.image.predict import BaseImagePredictor
from terraseg.models.image.preprocess import IMAGENET_MEAN, IMAGENET_STD, Normalization
from terraseg.models.image.windows import TTAConfig, WindowConfig
from terraseg.ontology import Ontology, get_ontology
from terraseg.specs import parse_size

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
META_PREFIX = "terraseg."
FORMAT_NAME = "terraseg-image-segmentation"
FORMAT_VERSION = 1
EXPORTERS = ("auto", "dynamo", "torchscript")


# ---------------------------------------------------------------------------------------------- export
@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how well it agrees with PyTorch.

    Attributes:
        path: the ONNX file.
        input_size: ``(H, W)`` of the export (and of the agreement check).
        dynamic: whether batch, height and width are dynamic.
        agreement: fraction of pixels where ONNX Runtime and PyTorch give the same argmax on
            random normal input (NaN when not checked).
        max_abs_diff: largest absolute logit difference (NaN when not checked).
        opset: the ONNX opset of the file.
        seconds: wall time of export and check.
        exporter: ``"dynamo"`` or ``"torchscript"``.
        checked_shapes: the ``(N, 3, H, W)`` inputs of the check.
        attempts: ``exporter: reason`` for every exporter tried before the one that succeeded.
    """

    path: Path
    input_size: tuple[int, int]
    dynamic: bool
    agreement: float
    max_abs_diff: float
    opset: int
    seconds: float
    exporter: str = ""
    checked_shapes: tuple[tuple[int, int, int, int], ...] = ()
    attempts: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        h, w = self.input_size
        kind = "dynamic N/H/W" if self.dynamic else f"fixed 1x3x{h}x{w}"
        check = ("not checked" if math.isnan(self.agreement)
                 else f"argmax agreement {self.agreement:.5f}, max |diff| {self.max_abs_diff:.2e}")
        return f"{self.path}: {kind}, opset {self.opset}, {self.exporter} exporter, {check}, {self.seconds:.1f} s"


class _EvalLogits(nn.Module):
    """Eval-mode logits ``(N, K, H, W)`` with traceable shape arithmetic.

    For :class:`ImageSegmenter` models that keep the base ``forward``, this re-implements it
    (pad to ``size_divisor``, ``forward_raw``, bilinear resize, crop) on tensor sizes rather
    than Python integers, so exporters can keep H and W symbolic. Numerically it is the same as
    ``model(x)`` in eval mode. Other modules are called as they are.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.raw = isinstance(model, ImageSegmenter) and type(model).forward is ImageSegmenter.forward
        self.divisor = int(getattr(model, "size_divisor", 1) or 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.raw:
            out, _ = unpack_outputs(self.model(x))
            return out
        h, w = x.shape[-2], x.shape[-1]
        d = self.divisor
        pad_h = (d - h % d) % d
        pad_w = (d - w % d) % d
        xp = F.pad(x, (0, pad_w, 0, pad_h))
        logits, _ = self.model.forward_raw(xp, with_aux=False)
        logits = F.interpolate(logits, size=(h + pad_h, w + pad_w), mode="bilinear", align_corners=False)
        return logits[:, :, :h, :w]


def _num_classes(model: nn.Module) -> int:
    k = getattr(model, "num_classes", None) or (getattr(model, "spec", None) or {}).get("num_classes")
    if k is None:
        raise ConfigError(f"{type(model).__name__} has no num_classes attribute (not a terraseg model?)")
    return int(k)


def _json(value: Any) -> str:
    return json.dumps(value, default=str, sort_keys=False)


def _class_names(num_classes: int, onto: Ontology | None) -> list[str]:
    names = [f"class_{c}" for c in range(num_classes)]
    if onto is not None:
        for c in onto.classes:
            if c.id < num_classes:
                names[c.id] = c.name
    return names


def _metadata(model: nn.Module, size: tuple[int, int], dynamic: bool, norm: Normalization, onto: Ontology | None,
              base_size: tuple[int, int] | None, meta: Mapping[str, Any] | None, exporter: str) -> dict[str, str]:
    from terraseg import __version__

    k = _num_classes(model)
    extra = {key: v for key, v in (meta or {}).items() if key != "preprocess"}
    md = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "version": __version__,
        "input": f"{INPUT_NAME}: (N, 3, H, W) float32 RGB, (pixel / 255 - mean) / std",
        "output": f"{OUTPUT_NAME}: (N, K, H, W) float32 logits at input resolution; channel c is class id c",
        "input_size": _json(list(size)),
        "dynamic": "true" if dynamic else "false",
        "num_classes": str(k),
        "class_names": _json(_class_names(k, onto)),
        "mean": _json(list(norm.mean)),
        "std": _json(list(norm.std)),
        "base_size": _json(list(base_size) if base_size else None),
        "model_spec": _json(dict(getattr(model, "spec", {}) or {})),
        "exporter": exporter,
    }
    if onto is not None:
        md["ontology"] = _json(onto.to_dict())
    if extra:
        md["meta"] = _json(extra)
    return {META_PREFIX + key: v for key, v in md.items()}


def _write_metadata(path: Path, props: Mapping[str, str]) -> int:
    """Add ``props`` and the weights checksum (:mod:`terraseg.inference.onnx_integrity`) to the file's
    ``metadata_props`` (replacing same keys); returns the opset."""
    import onnx

    proto = onnx.load(str(path))
    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    record_digest(proto)  # last: a checksum of the weights as written, verified when a session opens the file
    onnx.save(proto, str(path))
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' tracer / deprecation warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def _export_once(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool,
                 exporter: str) -> None:
    with _quiet():
        if exporter == "dynamo":
            kw: dict[str, Any] = {}
            if dynamic:
                dyn = torch.export.Dim.DYNAMIC
                kw["dynamic_shapes"] = {"x": {0: dyn, 2: dyn, 3: dyn}}
            torch.onnx.export(wrapper, (example,), str(path), dynamo=True, external_data=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                              verbose=False, **kw)
        else:
            kw = {}
            if dynamic:
                axes = {0: "batch", 2: "height", 3: "width"}
                kw["dynamic_axes"] = {INPUT_NAME: axes, OUTPUT_NAME: axes}
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], opset_version=opset, do_constant_folding=True, **kw)


def _check_shapes(size: tuple[int, int], dynamic: bool) -> list[tuple[int, int, int, int]]:
    h, w = size
    shapes = [(1, 3, h, w)]
    if dynamic:
        h2, w2 = max(1, h * 3 // 4 + 3), max(1, w * 5 // 4 + 1)
        shapes.append((2, 3, h2 if h2 != h else h + 7, w2 if w2 != w else w + 5))
    return shapes


def _agreement(wrapper: nn.Module, path: Path, shapes: Sequence[tuple[int, int, int, int]],
               device: torch.device, seed: int) -> tuple[float, float]:
    """(argmax agreement, max |logit diff|) between ONNX Runtime (CPU) and PyTorch on random normal input."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(seed)
    same = total = 0
    max_diff = 0.0
    for shape in shapes:
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            ref = wrapper(x.to(device)).float().cpu().numpy()
        got = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != ref.shape:
            raise DataError(f"ONNX output shape {got.shape} differs from PyTorch {ref.shape} for input {shape}")
        same += int((got.argmax(1) == ref.argmax(1)).sum())
        total += ref.shape[0] * ref.shape[2] * ref.shape[3]
        diff = np.abs(got.astype(np.float64) - ref)
        max_diff = max(max_diff, float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)))
    return same / max(total, 1), max_diff


def export_onnx(model: nn.Module, path: str | os.PathLike[str], size: Sequence[int] | int, *, opset: int = 18,
                dynamic: bool = False, check: bool = True, min_agreement: float = 0.999,
                meta: Mapping[str, Any] | None = None, norm: Normalization | None = None,
                ontology: Ontology | str | None = None, exporter: str = "auto", seed: int = 0) -> ExportReport:
    """Export a 2D model's eval-mode logits to ONNX, atomically, with an agreement check.

    Args:
        model: a terraseg 2D model (any ``nn.Module`` with ``num_classes`` and the output
            convention works); it is exported in eval mode and its train/eval mode is restored.
        path: the ``.onnx`` file to write.
        size: ``(H, W)`` of the example input (the fixed input size unless ``dynamic``).
        opset: ONNX opset to request (the file's actual opset is reported).
        dynamic: make batch, height and width dynamic (see the module docstring for which
            architectures support it); otherwise the input is ``(1, 3, H, W)``.
        check: compare ONNX Runtime with PyTorch on random normal input (plus a second size and
            batch 2 when ``dynamic``) and fail below ``min_agreement``.
        min_agreement: minimum fraction of pixels with the same argmax.
        meta: checkpoint metadata; ``meta["preprocess"]`` gives ``mean`` / ``std`` / ``base_size``,
            the rest is stored as JSON under ``terraseg.meta``.
        norm: the input normalisation (default: from ``meta``, else ImageNet).
        ontology: the ontology of the outputs (default: ``model.ontology``).
        exporter: ``"auto"``, ``"dynamo"`` (torch.export-based) or ``"torchscript"``.
        seed: seed of the random check input.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ConfigError: bad arguments.
        DataError: every exporter failed, or the check found disagreement; nothing is written.
    """
    t0 = time.perf_counter()
    hw = parse_size(list(size) if not isinstance(size, int) else size, "export size")
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not 0.0 <= float(min_agreement) <= 1.0:
        raise ConfigError(f"min_agreement must be in [0, 1], got {min_agreement}")
    if not 9 <= int(opset) <= 25:
        raise ConfigError(f"opset must be in 9..25, got {opset}")
    out = Path(path)
    onto = get_ontology(ontology) if ontology is not None else getattr(model, "ontology", None)
    norm = norm or Normalization.from_meta(dict(meta) if meta else None)
    pre = ((meta or {}).get("preprocess") or {}) if isinstance(meta, Mapping) else {}
    base_size = parse_size(list(pre["base_size"]), "meta base_size") if pre.get("base_size") else None
    _num_classes(model)
    order = {"auto": ("torchscript", "dynamo") if dynamic else ("dynamo", "torchscript"),
             "dynamo": ("dynamo",), "torchscript": ("torchscript",)}[exporter]

    was_training = model.training
    model.eval()
    wrapper = _EvalLogits(model).eval()
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    example = torch.randn((1, 3, *hw), generator=torch.Generator().manual_seed(seed)).to(device)
    shapes = _check_shapes(hw, dynamic)
    attempts: list[str] = []
    try:
        with atomic_path(out) as tmp:
            for name in order:
                try:
                    _export_once(wrapper, example, tmp, int(opset), dynamic, name)
                    file_opset = _write_metadata(tmp, _metadata(model, hw, dynamic, norm, onto, base_size, meta, name))
                    agreement = max_diff = float("nan")
                    if check:
                        agreement, max_diff = _agreement(wrapper, tmp, shapes, device, seed)
                        if not agreement >= min_agreement:
                            raise DataError(f"argmax agreement with PyTorch {agreement:.5f} is below "
                                            f"{min_agreement} (max |logit diff| {max_diff:.3g})")
                except Exception as exc:  # exporters raise many types; each is reported, then the next is tried
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    attempts.append(f"{name}: {first[:300]}")
                    log.info("ONNX export with %s failed: %s", name, first)
                    continue
                report = ExportReport(out, hw, bool(dynamic), agreement, max_diff, file_opset,
                                      time.perf_counter() - t0, name, tuple(shapes) if check else (), tuple(attempts))
                break
            else:
                hint = (" (pyramid-pooling decoders such as UPerNet do not export with dynamic H/W; export at a "
                        "fixed size)" if dynamic else "")
                raise DataError(f"{out}: ONNX export failed{hint}: " + "; ".join(attempts))
    finally:
        model.train(was_training)
    return report


def export_checkpoint_onnx(checkpoint: str | os.PathLike[str], path: str | os.PathLike[str],
                           size: Sequence[int] | int | None = None, *, trusted: bool = False,
                           **kw: Any) -> ExportReport:
    """Export a terraseg checkpoint (model, ontology, normalisation, base size) with :func:`export_onnx`.

    ``size`` defaults to the checkpoint's ``meta["preprocess"]["base_size"]``.
    """
    from terraseg.models.image.factory import load_image_model
    from terraseg.models.surgery import read_checkpoint

    model = load_image_model(checkpoint, trusted=trusted)
    meta = read_checkpoint(checkpoint, trusted=trusted).meta
    if size is None:
        size = ((meta or {}).get("preprocess") or {}).get("base_size")
        if not size:
            raise ConfigError(f"{checkpoint}: the checkpoint stores no base_size; give the export size (H, W)")
    return export_onnx(model, path, size, meta=meta, **kw)


# ---------------------------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class OnnxModelInfo:
    """The terraseg metadata of an ONNX file (defaults for files exported elsewhere).

    Attributes:
        input_size: ``(H, W)`` of the export, or None.
        dynamic: whether H and W are dynamic.
        num_classes: ``K``, or None when unknown.
        class_names: name of every output channel (empty when unknown).
        ontology: the ontology of the outputs, or None.
        norm: the input normalisation (ImageNet when the file does not say).
        base_size: ``(H, W)`` the model was trained at, or None.
        version: the terraseg version that wrote the file ('' when not terraseg).
        model_spec: the model factory arguments.
        exporter: which exporter wrote it.
        meta: other checkpoint metadata.
    """

    input_size: tuple[int, int] | None = None
    dynamic: bool = False
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()
    ontology: Ontology | None = None
    norm: Normalization = field(default_factory=Normalization)
    base_size: tuple[int, int] | None = None
    version: str = ""
    model_spec: dict[str, Any] = field(default_factory=dict)
    exporter: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_props(cls, props: Mapping[str, str], where: str = "ONNX model") -> OnnxModelInfo:
        """Parse ``metadata_props`` (a key -> text mapping)."""
        p = {k[len(META_PREFIX):]: v for k, v in props.items() if k.startswith(META_PREFIX)}

        def load(key: str, default: Any) -> Any:
            if key not in p:
                return default
            try:
                return json.loads(p[key])
            except json.JSONDecodeError:
                raise DataError(f"{where}: metadata {META_PREFIX}{key} is not valid JSON: {p[key][:80]!r}") from None

        size = load("input_size", None)
        base = load("base_size", None)
        onto_dict = load("ontology", None)
        onto = None
        if onto_dict is not None:
            try:
                onto = Ontology.from_dict(onto_dict)
            except ConfigError as exc:
                raise DataError(f"{where}: metadata {META_PREFIX}ontology is invalid: {exc}") from None
        k = p.get("num_classes")
        return cls(input_size=tuple(size) if size else None, dynamic=p.get("dynamic", "false") == "true",
                   num_classes=int(k) if k else None, class_names=tuple(load("class_names", [])), ontology=onto,
                   norm=Normalization(tuple(load("mean", list(IMAGENET_MEAN))), tuple(load("std", list(IMAGENET_STD)))),
                   base_size=tuple(base) if base else None, version=p.get("version", ""),
                   model_spec=dict(load("model_spec", {})), exporter=p.get("exporter", ""), meta=dict(load("meta", {})))


def read_onnx_metadata(path: str | os.PathLike[str]) -> OnnxModelInfo:
    """The terraseg metadata of an ONNX file (see :func:`export_onnx`).

    Raises:
        DataError: the file is missing or not an ONNX model.
    """
    from terraseg.inference.onnx_integrity import load_proto

    p = Path(path)
    proto = load_proto(p, load_external_data=False)
    return OnnxModelInfo.from_props({e.key: e.value for e in proto.metadata_props}, str(p))


# ---------------------------------------------------------------------------------------------- predictor
class OrtImagePredictor(BaseImagePredictor):
    """:class:`~terraseg.inference.image.ImagePredictor`'s interface on ONNX Runtime.

    Normalisation, class names / ontology, input size and base size come from the file's
    metadata (:func:`read_onnx_metadata`). A fixed-size model runs every input the pipeline
    gives it (the whole image, a TTA view or a window) resized to the model size, its logits
    resized back; for sliding windows pass ``crop`` equal to the model size so no window is
    resized. A fixed batch size of 1 runs batch items one after another.

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers in order of preference (default: CUDA when
            available, then CPU).
        threads: intra-op threads (default: ONNX Runtime's choice).
        window, tta: as for :class:`~terraseg.inference.image.ImagePredictor`.
        base_size: override the metadata's training size (``(H, W)``); ``False`` ignores it.
        norm: override the metadata's normalisation.
        batch_windows, batch_size: windows / images per run when the batch is dynamic.
        spin: let ONNX Runtime's idle threads spin (see :func:`~terraseg.inference.onnx_fuse.make_session`).
    """

    def __init__(self, path: str | os.PathLike[str], *, providers: Sequence[str] | None = None,
                 threads: int | None = None, window: WindowConfig | str | None = None,
                 tta: TTAConfig | str | None = None, base_size: Sequence[int] | bool | None = None,
                 norm: Normalization | None = None, batch_windows: int = 4, batch_size: int = 4,
                 spin: bool = True) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.threads, self.spin = threads, spin
        if not self.path.is_file():
            raise DataError(f"{self.path}: ONNX file not found")
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        missing = [p for p in providers if p not in available]
        if missing:
            raise ConfigError(f"ONNX Runtime providers {missing} are not available (available: {', '.join(available)})")
        from terraseg.inference.onnx_fuse import make_session

        try:
            self.session = make_session(self.path, threads, providers, spin)
        except (ConfigError, DataError):
            raise
        except Exception as exc:  # ORT raises its own exception types for unreadable models
            raise DataError(f"{self.path}: ONNX Runtime cannot load the model ({exc})") from exc
        props = self.session.get_modelmeta().custom_metadata_map
        if "terraseg" in props:  # the single-key metadata of terraseg.inference.range_onnx
            raise DataError(f"{self.path}: a LiDAR range-image model; use terraseg.inference.OrtRangePredictor")
        self.info = OnnxModelInfo.from_props(props, str(self.path))
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or (isinstance(inputs[0].shape[1], int)
                                                             and inputs[0].shape[1] != 3):
            raise DataError(f"{self.path}: expected one (N, 3, H, W) image input, got "
                            f"{[(i.name, i.shape) for i in inputs]}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        shape = inputs[0].shape
        self.fixed_batch: int | None = shape[0] if isinstance(shape[0], int) else None
        self.fixed_size: tuple[int, int] | None = ((int(shape[2]), int(shape[3]))
                                                   if isinstance(shape[2], int) and isinstance(shape[3], int) else None)
        k = self.info.num_classes
        if k is None and isinstance(outputs[0].shape[1], int):
            k = int(outputs[0].shape[1])
        if k is None:
            raise DataError(f"{self.path}: cannot tell the number of classes (no terraseg metadata, dynamic output)")
        if base_size is None:
            base = self.info.base_size
        elif base_size is False:
            base = None
        elif base_size is True:
            raise ConfigError("base_size must be (H, W), None or False")
        else:
            base = base_size  # type: ignore[assignment]
        super().__init__(num_classes=k, ontology=self.info.ontology, norm=norm or self.info.norm,
                         device=torch.device("cpu"), window=window, tta=tta, base_size=base,
                         batch_windows=batch_windows, batch_size=batch_size)
        if self.fixed_size is not None and self.window.mode == "slide" and self.window.crop != self.fixed_size:
            log.warning("%s has a fixed input size %dx%d; %dx%d windows are resized to it", self.path,
                        *self.fixed_size, *self.window.crop)

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:  # ORT raises its own exception types
            raise DataError(f"{self.path}: ONNX Runtime failed on input {x.shape}: {exc}") from exc

    def _model_fn(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        xs = x
        if self.fixed_size is not None and (h, w) != self.fixed_size:
            xs = F.interpolate(x, size=self.fixed_size, mode="bilinear", align_corners=False)
        arr = np.ascontiguousarray(xs.float().cpu().numpy())
        step = self.fixed_batch or arr.shape[0]
        parts = []
        for s in range(0, arr.shape[0], step):
            chunk = arr[s:s + step]
            n = chunk.shape[0]
            if n < step:  # a fixed batch larger than what is left: pad with zeros, drop afterwards
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            parts.append(self._run(chunk)[:n])
        logits = torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0])
        if logits.shape[-2:] != (h, w):
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        return logits

    def __repr__(self) -> str:
        size = "dynamic" if self.fixed_size is None else f"{self.fixed_size[0]}x{self.fixed_size[1]}"
        return (f"OrtImagePredictor({str(self.path)!r}, num_classes={self.num_classes}, input={size}, "
                f"providers={self.session.get_providers()}, window='{self.window}', tta='{self.tta}')")
