"""One way to load and run any terraseg model: :func:`load_predictor`.

A model file is a terraseg checkpoint (``.pth``, any other suffix) or an exported ONNX model
(``.onnx``), and segments camera images or LiDAR scans. :func:`model_kind` is the one place
that decides which (ONNX: the range network's ``terraseg`` metadata key; checkpoints: the
architecture in the model spec, :func:`terraseg.models.points.is_point_arch`).
:func:`load_predictor` returns a :class:`Predictor` that carries everything the model needs
from its training run, so no caller has to know it:

============  ===========================================================================
camera        normalisation (mean / std), training base size, ontology; whole-image or
              sliding-window inference and TTA (scales x horizontal flip)
LiDAR         sensor projection (range networks), intensity scale and the training intensity
              statistics (one warning when a scan is far outside them), ontology; TTA
              (rotations about z x mirrors, :class:`~terraseg.models.points.tta.ScanTTAConfig`)
              or a clear refusal where the model cannot do it
============  ===========================================================================

The CLI (``predict``, ``eval``, ``export``, ``run``), the runtime's backends and the demo all
load models through it.

>>> from terraseg.inference import load_predictor
>>> pred = load_predictor("runs/sim-salsanext/checkpoints/best.pth", tta="rotations=4")  # doctest: +SKIP
>>> pred.kind, pred.describe()                                                             # doctest: +SKIP
>>> labels = pred.predict_scan(points).labels                                              # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.models.image.predict import BaseImagePredictor
from terraseg.models.image.windows import WindowConfig
from terraseg.models.points.intensity import IntensitySpec
from terraseg.models.points.pipeline import ScanPipeline, predictor_class, predictor_options
from terraseg.models.points.predict import ScanPrediction
from terraseg.ontology import Ontology

ModelKind = Literal["camera", "lidar", "fusion"]
"""What a model segments: ``camera`` images or ``lidar`` scans."""

ONNX_SUFFIX = ".onnx"


# ---------------------------------------------------------------------------------------------- which kind
def _onnx_kind(path: Path) -> tuple[ModelKind, str]:
    """(kind, architecture or "?") of an ONNX file from its terraseg metadata."""
    import json

    import onnx

    from terraseg.inference.onnx_export import META_PREFIX
    from terraseg.inference.range_onnx import METADATA_KEY

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors of several types
        raise DataError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    props = {e.key: e.value for e in proto.metadata_props}
    kind: ModelKind = "lidar" if METADATA_KEY in props else "camera"
    try:
        spec = json.loads(props[METADATA_KEY]) if kind == "lidar" else json.loads(props.get(META_PREFIX + "model_spec",
                                                                                             "{}"))
        arch = str(spec.get("arch") or "?") if isinstance(spec, dict) else "?"
    except ValueError:
        arch = "?"  # unreadable metadata: the predictor reports it when it loads the file
    return kind, arch


def _checkpoint_kind(ck: Any, path: Path) -> ModelKind:
    from terraseg.models.points.build import is_point_arch

    spec = dict(ck.spec)
    if ck.kind != "terraseg" or "arch" not in spec:
        raise DataError(f"{path}: not a terraseg model checkpoint (no model spec); train with `terraseg train` "
                        "or save with terraseg.models.save_checkpoint")
    if spec["arch"] == "fusion":
        return "fusion"
    return "lidar" if is_point_arch(spec["arch"]) else "camera"


def model_kind(path: str | os.PathLike[str], *, trusted: bool = False) -> ModelKind:
    """``camera``, ``lidar`` or ``fusion`` (a cross-modal camera + LiDAR checkpoint): what a model
    file (``.onnx`` or terraseg checkpoint) segments.

    Raises:
        DataError: a missing or unreadable file, or a checkpoint without a terraseg model spec.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: {'model' if p.suffix.lower() == ONNX_SUFFIX else 'checkpoint'} file not found")
    if p.suffix.lower() == ONNX_SUFFIX:
        return _onnx_kind(p)[0]
    from terraseg.models.surgery import read_checkpoint

    return _checkpoint_kind(read_checkpoint(p, trusted=trusted), p)


# ---------------------------------------------------------------------------------------------- the predictor
@dataclass
class Predictor:
    """A model ready to run, with what it segments and what its training recorded.

    Attributes:
        kind: ``camera`` or ``lidar``.
        path: the model file.
        runtime: ``pytorch`` or ``onnxruntime``.
        name: runtime and device for tables, e.g. ``pytorch:cpu`` or ``onnxruntime:CPU``.
        arch: the architecture (``litefpn``, ``salsanext``, ...; ``?`` for foreign ONNX files).
        ontology: the label ontology of the outputs (None when the file does not say).
        meta: the checkpoint's metadata (training recipe, preprocessing, scores) or the ONNX
            file's terraseg metadata.
        image: camera models: the image predictor (``predict(image) -> ids``, ``norm``,
            ``base_size``, ``window``, ``tta``).
        scan: LiDAR models: ``scan(points) -> ScanPrediction`` (a
            :class:`~terraseg.models.points.pipeline.ScanPipeline`: intensity scaling and check,
            TTA, the architecture's predictor).
        model: PyTorch checkpoints: the network (eval mode, on its device).
    """

    kind: ModelKind
    path: Path
    runtime: str
    name: str
    arch: str
    ontology: Ontology | None
    meta: dict[str, Any] = field(default_factory=dict)
    image: BaseImagePredictor | None = None
    scan: ScanPipeline | None = None
    model: Any = None

    # ------------------------------------------------------------------ what it carries
    @property
    def recipe(self) -> dict[str, Any]:
        """The training recipe stored with the model (empty when absent)."""
        return dict(self.meta.get("config") or {})

    @property
    def projection(self) -> Any:
        """LiDAR range networks: the sensor projection used (None otherwise)."""
        return getattr(self.scan.base, "projection", None) if self.scan is not None else None

    @property
    def intensity(self) -> IntensitySpec | None:
        """LiDAR models: the intensity scale and training statistics (None for camera models)."""
        return self.scan.intensity if self.scan is not None else None

    @property
    def tta(self) -> Any:
        """The test-time augmentation (a ``TTAConfig`` or ``ScanTTAConfig``)."""
        return self.image.tta if self.image is not None else self.scan.tta if self.scan is not None else None

    def set_tta(self, spec: Any) -> None:
        """Change the test-time augmentation after loading (text or config of the model's kind;
        validated as at load time)."""
        if self.image is not None:
            from terraseg.models.image.windows import TTAConfig

            self.image.tta = TTAConfig.parse(spec)
        elif self.scan is not None:
            from terraseg.models.points.tta import ScanTTAConfig

            self.scan = ScanPipeline(self.scan.base, self.scan.intensity, ScanTTAConfig.parse(spec), self.scan.source)

    def set_window(self, spec: Any) -> None:
        """Camera models: change whole-image / sliding-window inference after loading."""
        if self.image is None:
            if spec is not None and WindowConfig.parse(spec).mode != "whole":
                raise ConfigError(f"{self.path}: sliding windows apply to camera models; a LiDAR model sees the "
                                  "whole scan")
            return
        self.image.window = WindowConfig.parse(spec)

    def require_ontology(self) -> Ontology:
        """The ontology, or ConfigError when the model does not say it (needed for ids and colours)."""
        if self.ontology is None:
            raise ConfigError(f"{self.path}: the model does not say its label ontology (needed for class ids and "
                              "colours)")
        return self.ontology

    # ------------------------------------------------------------------ running it
    def predict_image(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB -> ``(H, W)`` class ids (camera models)."""
        if self.image is None:
            raise ConfigError(f"{self.path}: a LiDAR model cannot label camera images")
        return self.image.predict(image)

    def predict_scan(self, points: np.ndarray, source: str | None = None) -> ScanPrediction:
        """``(N, C>=3)`` float points -> per-point labels and probabilities (LiDAR models);
        ``source`` names the scan in messages."""
        if self.scan is None:
            raise ConfigError(f"{self.path}: a camera model cannot label LiDAR scans")
        return self.scan(points, source)

    def predict_frame(self, frame: Any) -> np.ndarray:
        """Labels of a :class:`~terraseg.frame.Frame`: its image's ids (camera) or its points'
        labels (LiDAR), e.g. for :func:`terraseg.inference.evaluate_frames`."""
        where = str(frame.source.get("image" if self.kind == "camera" else "points", frame.frame_id))
        if self.kind == "camera":
            if frame.image is None:
                raise DataError(f"{where}: frame {frame.frame_id} has no camera image for the camera model {self.path}")
            return self.predict_image(frame.image)
        if frame.points is None:
            raise DataError(f"{where}: frame {frame.frame_id} has no point cloud for the LiDAR model {self.path}")
        return self.predict_scan(frame.points, where).labels

    def describe(self) -> str:
        """One line: kind, architecture, runtime, ontology and the settings that change the output."""
        onto = "unknown ontology" if self.ontology is None else \
            f"{self.ontology.name} ({self.ontology.num_classes} classes)"
        parts = [f"{self.kind} model {self.arch} on {self.name}", onto]
        if self.image is not None:
            parts.append(f"window {self.image.window}, tta {self.image.tta}")
            if self.image.base_size is not None:
                parts.append(f"base size {self.image.base_size[0]}x{self.image.base_size[1]}")
        if self.scan is not None:
            proj = self.projection
            if proj is not None:
                parts.append(f"projection {proj if isinstance(proj, str) else type(proj).__name__}"
                             + (f" {proj.height}x{proj.width}" if hasattr(proj, "height") and not isinstance(proj, str)
                                else ""))
            if self.scan.intensity.max is not None:
                parts.append(f"intensity / {self.scan.intensity.max:g}")
            parts.append(f"tta {self.scan.tta}")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"Predictor({self.describe()}, path={str(self.path)!r})"


# ---------------------------------------------------------------------------------------------- loading
def ort_providers(device: str | None) -> list[str] | None:
    """ONNX Runtime execution providers for a device name (None: the predictor's default)."""
    if device is None or str(device).lower() == "auto":
        return None
    d = str(device).lower()
    if d.startswith("cuda"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if d == "cpu":
        return ["CPUExecutionProvider"]
    raise ConfigError(f"unknown device {device!r} for ONNX Runtime (cpu or cuda)")


def _check_options(kind: ModelKind, path: Path, onnx: bool, arch: str, *, window: Any, projection: Any,
                   regular: bool, intensity_max: Any, amp: bool) -> None:
    """Refuse options that do not apply to the model (one message naming the option)."""
    if amp and onnx:
        raise ConfigError(f"{path}: --amp applies to PyTorch checkpoints, not to ONNX models")
    if kind == "camera":
        if projection is not None:
            raise ConfigError(f"{path}: projection applies to LiDAR range networks, not to camera models")
        if regular:
            raise ConfigError(f"{path}: --regular applies to RandLA-Net (LiDAR), not to camera models")
        if intensity_max is not None:
            raise ConfigError(f"{path}: --intensity-max applies to LiDAR models, not to camera models")
        return
    if amp:
        raise ConfigError(f"{path}: --amp applies to camera models")
    if window is not None and WindowConfig.parse(window).mode != "whole":
        raise ConfigError(f"{path}: sliding windows (--window slide) apply to camera models; a LiDAR model "
                          f"({arch}) sees the whole scan")


def _camera(path: Path, ck: Any, *, onnx: bool, device: Any, tta: Any, window: Any, amp: bool, threads: int | None,
            batch_size: int, spin: bool) -> Predictor:
    if onnx:
        from terraseg.inference.onnx_export import OrtImagePredictor

        ort = OrtImagePredictor(path, providers=ort_providers(device), threads=threads, tta=tta, window=window,
                                batch_size=batch_size, spin=spin)
        name = "onnxruntime:" + ort.session.get_providers()[0].replace("ExecutionProvider", "")
        arch = str(ort.info.model_spec.get("arch") or "?")
        return Predictor("camera", path, "onnxruntime", name, arch, ort.ontology, dict(ort.info.meta), image=ort)
    from terraseg.inference.models import model_from_checkpoint
    from terraseg.models.image.predict import ImagePredictor, resolve_device
    from terraseg.models.image.preprocess import Normalization

    dev = resolve_device(device)
    loaded = model_from_checkpoint(ck, path)
    meta = loaded.meta
    pred = ImagePredictor(loaded.model, norm=Normalization.from_meta(meta), device=dev, amp=amp, tta=tta,
                          window=window, base_size=((meta.get("preprocess") or {}).get("base_size")),
                          batch_size=batch_size)
    name = f"pytorch:{dev}" + ("+amp" if amp else "")
    return Predictor("camera", path, "pytorch", name, loaded.arch, pred.ontology, meta, image=pred,
                     model=loaded.model)


def _lidar(path: Path, ck: Any, *, onnx: bool, device: Any, tta: Any, projection: Any, regular: bool,
           intensity_max: float | None, threads: int | None, probabilities: bool, num_points: int, seed: int,
           spin: bool) -> Predictor:
    from terraseg.models.points.intensity import model_intensity_spec
    from terraseg.models.points.tta import ScanTTAConfig

    tta_cfg = ScanTTAConfig.parse(tta)
    probs = probabilities or not tta_cfg.identity
    if onnx:
        from terraseg.inference.range_onnx import OrtRangePredictor

        if regular:
            raise ConfigError(f"{path}: --regular applies to RandLA-Net checkpoints; this is an exported range network")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be at least 1, got {threads}")
        base: Any = OrtRangePredictor(path, projection=projection, threads=threads, providers=ort_providers(device),
                                      source=str(path), probabilities=probs, spin=spin)
        net = base.network
        spec = model_intensity_spec(net.metadata, net.config, str(path))
        name = "onnxruntime:" + net.session.get_providers()[0].replace("ExecutionProvider", "")
        pipe = ScanPipeline(base, spec if intensity_max is None else spec.with_max(intensity_max), tta_cfg, str(path))
        return Predictor("lidar", path, "onnxruntime", name, net.arch, net.ontology, dict(net.metadata), scan=pipe)
    from terraseg.inference.models import model_from_checkpoint
    from terraseg.models.image.predict import resolve_device

    dev = resolve_device(device)
    loaded = model_from_checkpoint(ck, path, device=dev)
    pipe = scan_pipeline(loaded.model, path=path, projection=projection, regular=regular, tta=tta_cfg,
                         intensity_max=intensity_max, probabilities=probs, num_points=num_points, seed=seed)
    return Predictor("lidar", path, "pytorch", f"pytorch:{dev}", loaded.arch, loaded.ontology, loaded.meta,
                     scan=pipe, model=loaded.model)


def scan_pipeline(model: Any, *, path: Path | str = "points", projection: Any = None, regular: bool = False,
                  tta: Any = None, intensity_max: float | None = None, probabilities: bool = True,
                  num_points: int = 45_056, seed: int = 0) -> ScanPipeline:
    """The :class:`ScanPipeline` of a PyTorch point network (``model.projection`` /
    ``model.intensity`` as set by :func:`~terraseg.inference.models.load_model`).

    Options that the architecture's predictor does not take are refused (``projection`` for a
    point-based network, ``regular`` for anything but RandLA-Net).
    """
    from terraseg.models.points.regular import RegularCropPredictor
    from terraseg.models.points.tta import ScanTTAConfig

    cls = predictor_class(model)
    accepted = predictor_options(cls)
    arch = str(getattr(model, "arch", type(model).__name__))
    if regular:
        if arch != "randlanet":
            raise ConfigError(f"{path}: --regular applies to RandLA-Net only ({arch} sees the whole scan at once)")
        if projection is not None:
            raise ConfigError(f"{path}: projection applies to range networks, not to {arch}")
        base: Any = RegularCropPredictor(model, num_points=num_points, seed=seed, source=str(path))
    else:
        opts: dict[str, Any] = {"source": str(path)}
        if "projection" in accepted:
            proj = projection if projection is not None else getattr(model, "projection", None)
            from terraseg.models.points.predict import resolve_projection

            opts["projection"] = resolve_projection(proj, f"{path}")
        elif projection is not None:
            raise ConfigError(f"{path}: projection applies to range networks, not to {arch} (it sees the points)")
        if "seed" in accepted:
            opts["seed"] = seed
        if "probabilities" in accepted:
            opts["probabilities"] = probabilities or not ScanTTAConfig.parse(tta).identity
        base = cls(model, **opts)
    spec = getattr(model, "intensity", None)
    spec = spec if isinstance(spec, IntensitySpec) else IntensitySpec()
    if intensity_max is not None:
        spec = spec.with_max(intensity_max)
    return ScanPipeline(base, spec, ScanTTAConfig.parse(tta), str(path))


def load_predictor(path: str | os.PathLike[str], *, kind: ModelKind | None = None, device: str | None = None,
                   tta: Any = None, window: Any = None, projection: Any = None, regular: bool = False,
                   intensity_max: float | None = None, amp: bool = False, threads: int | None = None,
                   probabilities: bool = True, batch_size: int = 4, num_points: int = 45_056, seed: int = 0,
                   spin: bool = True, trusted: bool = False) -> Predictor:
    """Load any terraseg model file (``.pth`` checkpoint or exported ``.onnx``, camera or LiDAR).

    Args:
        path: the model file.
        kind: what the caller expects (``camera`` / ``lidar``); a model of the other kind is a
            ConfigError. None: whatever the model is (:func:`model_kind`).
        device: ``cpu`` / ``cuda`` / ``cuda:1``; None or ``auto``: CUDA when available. For ONNX
            models it selects the execution providers.
        tta: test-time augmentation text or config: camera ``"scales=0.75,1,1.25 flip=true"``
            (:class:`~terraseg.models.image.windows.TTAConfig`), LiDAR ``"rotations=4 flip=y"``
            (:class:`~terraseg.models.points.tta.ScanTTAConfig`). Garbage is a ConfigError; a
            model that cannot do LiDAR TTA says why.
        window: camera models: whole-image or sliding-window inference.
        projection: LiDAR range networks: a projection preset or ``organized:HxW`` (default: the
            one recorded with the model; none recorded and none given is an error).
        regular: RandLA-Net checkpoints: Open3D-ML's regular crops of ``num_points`` instead of
            one pass.
        intensity_max: LiDAR models: divide raw intensities by this (default: the training
            recipe's ``data.intensity_max``, recorded with the model).
        amp: PyTorch camera models: autocast (float16 on CUDA, bfloat16 on CPU).
        threads: ONNX Runtime intra-op threads.
        probabilities: LiDAR: also compute per-point probabilities (False: labels only, faster;
            TTA needs them and turns them on).
        batch_size: camera: images per forward pass in ``predict_batch``.
        num_points, seed: RandLA-Net crop size (``regular``) and sub-sampling seed.
        spin: ONNX Runtime's idle threads spin-wait (see
            :func:`~terraseg.inference.onnx_fuse.make_session`).
        trusted: allow checkpoints with arbitrary pickled objects.

    Raises:
        DataError: a missing or unreadable file, or not a terraseg model.
        ConfigError: a model of the other ``kind``, or options that do not apply to it (named).
    """
    p = Path(path)
    onnx = p.suffix.lower() == ONNX_SUFFIX
    if not p.is_file():
        raise DataError(f"{p}: {'model' if onnx else 'checkpoint'} file not found")
    if kind is not None and kind not in ("camera", "lidar"):
        raise ConfigError(f"kind must be camera or lidar, got {kind!r}")
    ck = None
    if onnx:
        found, arch = _onnx_kind(p)
    else:
        from terraseg.models.surgery import read_checkpoint

        ck = read_checkpoint(p, trusted=trusted)
        found = _checkpoint_kind(ck, p)
        arch = str(dict(ck.spec)["arch"])
    if found == "fusion":
        role = "" if kind is None else f" given as the {'camera' if kind == 'camera' else 'LiDAR'} model"
        raise ConfigError(f"{p}: a cross-modal (camera + LiDAR) checkpoint{role}; it runs on paired frames: "
                          "terraseg eval / predict with a paired dataset folder, or terraseg.inference.fusion")
    if kind is not None and kind != found:
        what = "a LiDAR model" if found == "lidar" else "a camera model"
        raise ConfigError(f"{p}: {what} ({arch}) given as the {'camera' if kind == 'camera' else 'LiDAR'} model")
    _check_options(found, p, onnx, arch, window=window, projection=projection, regular=regular,
                   intensity_max=intensity_max, amp=amp)
    if found == "camera":
        return _camera(p, ck, onnx=onnx, device=device, tta=tta, window=window, amp=amp, threads=threads,
                       batch_size=batch_size, spin=spin)
    return _lidar(p, ck, onnx=onnx, device=device, tta=tta, projection=projection, regular=regular,
                  intensity_max=intensity_max, threads=threads, probabilities=probabilities, num_points=num_points,
                  seed=seed, spin=spin)
