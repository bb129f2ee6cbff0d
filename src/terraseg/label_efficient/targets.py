"""Per-point 2D teacher targets of LiDAR scans for distillation, computed once per scan and cached.

For one scan, :func:`scan_teacher_targets` places the teacher's views, runs the teacher and fuses
its per-pixel outputs per point (:func:`terraseg.label_efficient.fusion.teacher_point_features`):

- **camera** view: the real camera's pose from the calibration (``K``, ``T_cam_lidar`` mapping
  LiDAR points into the camera) with the real camera image, so the teacher sees what it was
  trained on; only the points inside that camera's field of view get a target.
- **ring** views: ``n`` virtual pinhole views from the sensor looking outwards
  (:func:`terraseg.geometry.render.ring_views`), rendered as square splats **coloured by the
  LiDAR intensity** (grey, stretched per scan between its 2nd and 98th percentile; black where no
  point falls). A camera-trained teacher has never seen such images: sparse grey splats on black
  share little with the textured RGB it learnt from, so its features there are of far lower
  quality than on the real image (measured in docs/label_efficient.md). Ring views cover the whole
  360 degrees; they are the only choice for scans without a camera.

:class:`ScanTargets` keeps the fused teacher features (float16) and class probabilities of the
points some view saw, by point index into the scan as read. :class:`TargetCache` stores one
``.npz`` per scan under a folder named after a fingerprint of the teacher file and the view
settings, so a second run (or a resumed one) with the same teacher reads them instead of running
the teacher again, and a changed teacher never reads stale targets.

:class:`CameraImages` finds the camera image of a LiDAR frame: the frame's own image, or for a
simulator output (``terraseg sim``, whose ``camera/`` and ``lidar/`` folders are written from one
rig) the camera frame with the same split and index.

:func:`load_teacher` builds a teacher from a recipe value: a terraseg camera checkpoint,
``timm:NAME`` or ``open_clip:NAME`` with a local weights file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from terraseg.errors import ConfigError, DataError
from terraseg.frame import Calibration, Frame
from terraseg.geometry.render import PinholeView, render_view, ring_views
from terraseg.io.atomic import atomic_path, atomic_write_text
from terraseg.label_efficient.fusion import teacher_point_features
from terraseg.label_efficient.teacher import TeacherOutput
from terraseg.ontology import Ontology

TARGETS_VERSION = 1
VIEW_KINDS = ("auto", "camera", "ring", "camera+ring")


# ---------------------------------------------------------------------------------------------- teachers
@dataclass
class LoadedTeacher:
    """A 2D teacher and what is known about it.

    Attributes:
        teacher: ``teacher(images (V, H, W, 3) uint8) -> TeacherOutput``.
        spec: the recipe value it was built from.
        fingerprint: identifies the teacher's weights (file size and SHA-256) for the target cache.
        ontology: the classes of its classifier (camera checkpoints), else None.
        classifier: ``{"kind": "linear", "weight": (K, D), "bias": (K,)}`` (a camera model's
            classifier over its penultimate features) or ``{"kind": "cosine", "weight": (K, D)}``
            (CLIP text embeddings), or None: turns fused or distilled features into class scores.
    """

    teacher: Callable[[Any], TeacherOutput]
    spec: str
    fingerprint: str
    ontology: Ontology | None = None
    classifier: dict[str, Any] | None = None


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """``"<size>:<sha256 hex[:16]>"`` of a file."""
    p = Path(path)
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return f"{p.stat().st_size}:{h.hexdigest()[:16]}"


def classifier_scores(classifier: dict[str, Any], features: Tensor) -> Tensor:
    """``(P, K)`` class scores of ``(P, D)`` features under a :attr:`LoadedTeacher.classifier`."""
    w = classifier["weight"].to(features.device, torch.float32)
    if classifier["kind"] == "cosine":
        from terraseg.label_efficient.open_vocab import class_scores

        return class_scores(features, w)
    out = features.float() @ w.t()
    b = classifier.get("bias")
    return out + b.to(out.device, torch.float32) if b is not None else out


def check_teacher(spec: str, weights: str | None = None) -> None:
    """Raise now, without building anything, the :class:`ConfigError` that :func:`load_teacher`
    would raise for a missing checkpoint, weights file or optional package."""
    from terraseg.label_efficient.teacher import OPEN_CLIP_HELP, _weights_file, require_open_clip, timm_help

    if spec.startswith("timm:"):
        _weights_file(weights, f"timm teacher {spec[5:]!r}", timm_help(spec[5:]))
    elif spec.startswith("open_clip:"):
        require_open_clip()
        _weights_file(weights, f"open_clip model {spec[len('open_clip:'):]!r}", OPEN_CLIP_HELP)
    elif not Path(spec).expanduser().is_file():
        raise ConfigError(f"distill.teacher: camera checkpoint not found: {Path(spec).expanduser()} (train one with "
                          "`terraseg train configs/sim_litefpn.yaml`, or give timm:NAME / open_clip:NAME with "
                          "distill.teacher_weights)")


def load_teacher(spec: str, weights: str | None = None, layer: str | None = None,
                 device: str | torch.device = "cpu", class_names: Sequence[str] | None = None) -> LoadedTeacher:
    """A teacher from a recipe's ``distill.teacher`` value.

    Args:
        spec: a terraseg camera checkpoint path (``best.pth`` of a camera run), ``timm:NAME`` or
            ``open_clip:NAME``.
        weights: the local weights file of a ``timm:`` / ``open_clip:`` teacher.
        layer: the camera model's classifier layer (default: found from the model).
        device: where the teacher runs.
        class_names: ``open_clip:`` only: embed these class names (``"a {name} in a scene"``) as
            the teacher's classifier (zero-shot validation of a distillation run).

    Raises:
        ConfigError: a missing file, an unknown model, a missing optional package (one line
            saying what is needed).
    """
    from terraseg.label_efficient.teacher import SegmenterTeacher, open_clip_teacher, timm_teacher

    check_teacher(spec, weights)
    if spec.startswith("timm:"):
        t = timm_teacher(spec[5:], weights, device)
        return LoadedTeacher(t, spec, f"{spec}:{file_fingerprint(Path(str(weights)).expanduser())}")
    if spec.startswith("open_clip:"):
        name = spec[len("open_clip:"):]
        t = open_clip_teacher(name, weights, device)
        classifier = None
        if class_names:
            from terraseg.label_efficient.open_vocab import clip_text_embeddings

            classifier = {"kind": "cosine", "weight": clip_text_embeddings(class_names, name, weights, device=device).cpu()}
        return LoadedTeacher(t, spec, f"{spec}:{file_fingerprint(Path(str(weights)).expanduser())}",
                             classifier=classifier)
    path = Path(spec).expanduser()
    from terraseg.models.image.factory import load_image_model
    from terraseg.models.image.preprocess import Normalization
    from terraseg.models.surgery import read_checkpoint

    ck = read_checkpoint(path)
    if ck.spec.get("arch") in ("randlanet", "salsanext"):
        raise ConfigError(f"distill.teacher: {path} is a LiDAR checkpoint; the teacher is a camera model")
    try:
        model = load_image_model(path)
    except DataError as exc:
        raise ConfigError(f"distill.teacher: {exc}") from None
    norm = Normalization.from_meta(ck.meta)
    teacher = SegmenterTeacher(model.to(device), layer=layer, mean=norm.mean, std=norm.std, device=device)
    weight = teacher.class_embeddings().cpu()
    bias = getattr(teacher.layer, "bias", None)
    classifier = {"kind": "linear", "weight": weight,
                  "bias": bias.detach().float().cpu() if bias is not None else None}
    return LoadedTeacher(teacher, spec, f"{path.name}:{file_fingerprint(path)}:{teacher.layer_name}",
                         ontology=ck.ontology, classifier=classifier)


# ---------------------------------------------------------------------------------------------- views
@dataclass(frozen=True)
class ViewSettings:
    """Where the teacher looks at a scan (the ``distill`` recipe keys of the same names)."""

    views: str = "auto"
    ring_views: int = 4
    view_size: tuple[int, int] = (320, 240)
    hfov_deg: float = 90.0
    pitch_deg: float = 10.0
    splat_radius: int = 1
    border: int = 5

    def __post_init__(self) -> None:
        if self.views not in VIEW_KINDS:
            raise ConfigError(f"distill.views must be one of {', '.join(VIEW_KINDS)}, got {self.views!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["view_size"] = list(self.view_size)
        return d


def intensity_colors(points: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 grey RGB from the intensity column (``points[:, 3]``) stretched between its 2nd
    and 98th percentile; from the height (z) when the points have no fourth column."""
    p = np.asarray(points)
    v = p[:, 3] if p.shape[1] > 3 else p[:, 2]
    v = v.astype(np.float64)
    if not len(v):
        return np.zeros((0, 3), dtype=np.uint8)
    lo, hi = np.percentile(v, [2.0, 98.0])
    g = np.clip((v - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    grey = (40 + 215 * g).astype(np.uint8)  # points never black: black is "no point"
    return np.repeat(grey[:, None], 3, axis=1)


def camera_view(calib: Calibration, image: np.ndarray) -> PinholeView:
    """The real camera as a :class:`PinholeView` for an image of ``image``'s size."""
    if calib.K is None or calib.T_cam_lidar is None:
        raise DataError("the camera view needs a calibration with K and T_cam_lidar")
    h, w = image.shape[:2]
    cal = calib
    if calib.image_size is not None and tuple(calib.image_size) != (w, h):
        from terraseg.geometry.projection import scale_calibration

        cal = scale_calibration(calib, (w, h))
    assert cal.K is not None and cal.T_cam_lidar is not None
    return PinholeView(cal.K.copy(), cal.T_cam_lidar.copy(), (int(w), int(h)), "camera")


# ---------------------------------------------------------------------------------------------- targets
@dataclass
class ScanTargets:
    """Fused teacher outputs of one scan.

    Attributes:
        num_points: points of the scan as read (indices below refer to them).
        seen: (S,) int64 sorted indices of the points at least one view saw.
        features: (S, D) float16 fused teacher features of those points.
        probs: (S, K) float16 fused class probabilities, or None (teachers without a classifier).
        views: names of the views used (``camera``, ``ring00`` ...).
    """

    num_points: int
    seen: np.ndarray
    features: np.ndarray
    probs: np.ndarray | None = None
    views: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def gather(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Targets of the points ``index`` (indices into the scan as read): ``(features (M, D)
        float32, probs (M, K) float32 or None, valid (M,) bool)``; unseen points get zeros."""
        idx = np.asarray(index, dtype=np.int64)
        pos = np.full(self.num_points, -1, dtype=np.int64)
        pos[self.seen] = np.arange(len(self.seen))
        p = pos[idx]
        valid = p >= 0
        feats = np.zeros((len(idx), self.dim), dtype=np.float32)
        feats[valid] = self.features[p[valid]]
        probs = None
        if self.probs is not None:
            probs = np.zeros((len(idx), self.probs.shape[1]), dtype=np.float32)
            probs[valid] = self.probs[p[valid]]
        return feats, probs, valid


def scan_teacher_targets(points: np.ndarray, loaded: LoadedTeacher | Callable[[Any], TeacherOutput],
                         settings: ViewSettings, camera: tuple[np.ndarray, Calibration] | None = None,
                         valid: np.ndarray | None = None) -> ScanTargets:
    """Run the teacher on one scan's views and fuse per point (see the module docstring).

    Args:
        points: (N, C>=3) the scan in the LiDAR frame (metres; column 3 = intensity if present).
        loaded: the teacher (:func:`load_teacher`) or any teacher callable.
        settings: the views.
        camera: ``(image (H, W, 3) uint8, calibration)`` of the frame's camera, or None.
        valid: (N,) bool points to use (default: finite points away from the origin).

    Returns:
        :class:`ScanTargets` (no point seen: ``seen`` empty).
    """
    teacher = loaded.teacher if isinstance(loaded, LoadedTeacher) else loaded
    pts = np.asarray(points, dtype=np.float32)
    n = len(pts)
    if valid is None:
        xyz = pts[:, :3]
        valid = np.isfinite(xyz).all(axis=1) & (np.einsum("ij,ij->i", xyz, xyz) > 1e-6)
    keep = np.flatnonzero(valid)
    sub = pts[keep]
    kinds = settings.views
    if kinds == "auto":
        kinds = "camera" if camera is not None else "ring"
    if "camera" in kinds and camera is None:
        raise DataError("distill.views asks for the camera view but the frame has no camera image")
    rendered, images = [], []
    if "ring" in kinds:
        colors = intensity_colors(sub)
        for v in ring_views(settings.ring_views, (0.0, 0.0, 0.0), settings.pitch_deg, tuple(settings.view_size),  # type: ignore[arg-type]
                            settings.hfov_deg):
            r = render_view(sub, v, settings.splat_radius, colors=colors)
            rendered.append(r)
            images.append(r.image)
    if "camera" in kinds:
        assert camera is not None
        image, calib = camera
        view = camera_view(calib, image)
        rendered.append(render_view(sub, view, settings.splat_radius))
        images.append(np.ascontiguousarray(image))
    n_ring = len(rendered) - (1 if "camera" in kinds else 0)
    fused = teacher_point_features(sub[:, :3], rendered, teacher, images=images,  # type: ignore[arg-type]
                                   batch_size=max(n_ring, 1), border=settings.border)
    seen_local = np.flatnonzero(fused.features.valid.cpu().numpy())
    feats = fused.features.features[torch.as_tensor(seen_local)].cpu().numpy().astype(np.float16)
    probs = None
    if fused.probabilities is not None:
        probs = fused.probabilities.features[torch.as_tensor(seen_local)].cpu().numpy().astype(np.float16)
    return ScanTargets(n, keep[seen_local].astype(np.int64), feats, probs, [r.view.name for r in rendered])


# ---------------------------------------------------------------------------------------------- cache
def _safe_name(frame_id: str) -> str:
    s = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(frame_id))
    return f"{s}-{hashlib.blake2b(str(frame_id).encode(), digest_size=4).hexdigest()}"


class TargetCache:
    """Per-scan :class:`ScanTargets` files under ``root/<fingerprint hash>/``.

    Args:
        root: the cache folder (``<run>/distill_targets`` by default in a recipe).
        description: what the targets depend on (teacher fingerprint, view settings, image
            source); its hash names the sub-folder, and it is written there as ``teacher.json``.
    """

    def __init__(self, root: str | os.PathLike[str], description: dict[str, Any]) -> None:
        self.description = {"version": TARGETS_VERSION, **description}
        text = json.dumps(self.description, sort_keys=True)
        self.key = hashlib.sha256(text.encode()).hexdigest()[:12]
        self.dir = Path(root) / self.key

    def path(self, frame_id: str) -> Path:
        return self.dir / f"{_safe_name(frame_id)}.npz"

    def load(self, frame_id: str, num_points: int | None = None) -> ScanTargets | None:
        """The cached targets of a frame, or None when absent (a damaged file raises DataError)."""
        p = self.path(frame_id)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                t = ScanTargets(int(meta["num_points"]), z["seen"].astype(np.int64), z["features"],
                                z["probs"] if "probs" in z.files else None, list(meta.get("views", [])))
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise DataError(f"{p}: damaged distillation target file ({exc}); delete it to recompute") from None
        if meta.get("frame_id") != str(frame_id):
            raise DataError(f"{p}: holds frame {meta.get('frame_id')!r}, expected {frame_id!r}")
        if num_points is not None and t.num_points != int(num_points):
            raise DataError(f"{p}: targets of {t.num_points} points, the scan has {num_points}; delete the cache "
                            f"folder {self.dir} (the data changed)")
        return t

    def save(self, frame_id: str, targets: ScanTargets) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        desc = self.dir / "teacher.json"
        if not desc.is_file():
            atomic_write_text(desc, json.dumps(self.description, indent=2, sort_keys=True) + "\n")
        arrays: dict[str, Any] = {"seen": targets.seen.astype(np.int64), "features": targets.features.astype(np.float16)}
        if targets.probs is not None:
            arrays["probs"] = targets.probs.astype(np.float16)
        meta = {"frame_id": str(frame_id), "num_points": int(targets.num_points), "views": targets.views}
        p = self.path(frame_id)
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
        return p


# ---------------------------------------------------------------------------------------------- images
class CameraImages:
    """The camera image and calibration of LiDAR frames (see the module docstring).

    Args:
        spec: ``auto`` (the frame's own image, else a simulator output around ``data_root``),
            ``none``, or the folder of a simulator output (holding ``sim.yaml`` and ``camera/``).
        data_root: the LiDAR dataset folder (``<sim output>/lidar`` for the simulator).
    """

    def __init__(self, spec: str = "auto", data_root: str | os.PathLike[str] | None = None) -> None:
        self.spec = spec
        self.sim_root: Path | None = None
        self._splits: dict[str, str] = {}
        self._calib: Calibration | None = None
        if spec == "none":
            return
        if spec == "auto":
            if data_root is not None:
                parent = Path(data_root).resolve().parent
                if (parent / "sim.yaml").is_file() and (parent / "camera" / "calib.yaml").is_file():
                    self.sim_root = parent
        else:
            root = Path(spec).expanduser()
            if not (root / "sim.yaml").is_file():
                raise ConfigError(f"distill.images: {root} is not a simulator output (no sim.yaml); give auto, none, "
                                  "or the folder `terraseg sim --out` wrote")
            if not (root / "camera" / "calib.yaml").is_file():
                raise ConfigError(f"distill.images: {root} has no camera/calib.yaml (simulated without a camera?)")
            self.sim_root = root
        if self.sim_root is not None:
            from terraseg.io.calib import read_calib_yaml
            from terraseg.yamlio import read_yaml

            sim = read_yaml(self.sim_root / "sim.yaml", "simulator configuration", ConfigError) or {}
            self._splits = {str(seq): str(split) for split, seq in dict(sim.get("sequences") or {}).items()}
            self._calib = read_calib_yaml(self.sim_root / "camera" / "calib.yaml")

    def describe(self) -> str:
        """What the images come from (part of the target cache's fingerprint)."""
        return f"sim:{self.sim_root}" if self.sim_root is not None else self.spec

    def image_path(self, frame: Frame) -> Path | None:
        """The simulator camera image paired with a LiDAR frame, or None."""
        if self.sim_root is None:
            return None
        split = self._splits.get(str(frame.sequence))
        idx = frame.meta.get("scan_index")
        if split is None or idx is None:
            return None
        p = self.sim_root / "camera" / "images" / split / f"{int(idx):06d}.png"
        return p if p.is_file() else None

    def __call__(self, frame: Frame) -> tuple[np.ndarray, Calibration] | None:
        if self.spec == "none":
            return None
        cal = frame.calib
        if frame.image is not None and cal is not None and cal.K is not None and cal.T_cam_lidar is not None:
            return frame.image, cal
        p = self.image_path(frame)
        if p is None:
            return None
        from terraseg.io.images import read_image

        assert self._calib is not None
        return read_image(p), self._calib
