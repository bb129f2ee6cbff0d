"""Training samples for cross-modal models: a camera image and the scan points it sees, paired.

One sample of frame ``i`` (:class:`FusionSamples`)::

    image    (3, h, w) float32   the augmented, normalised image (ImageTransform: resize, crop, flip,
                                 photometric distortion)
    uv       (M, 2) float32      network-input pixel coordinates (u, v) of the M points kept
    target   (M,) int64          the points' labels (ontology ids; IGNORE_INDEX where unlabelled)
    valid    (M,) bool           False for repeated padding points (RandLA-Net size constraints)
    point_index (M,) int64       index of each point in ``frame.points`` (so per-point results
                                 map back to the scan)
    points3d dict                the 3D network's input built from the same M points, same order
    point_extras {name: (M,)}    optional per-point arrays that follow the points (see ``extras``)
    index    int

How the M points are chosen: the frame's points are projected into its image with its
calibration (:func:`terraseg.models.fusion.frame_view`), the image goes through the augmentation
with its :class:`~terraseg.geometry.pixel_map.PixelMap`, so every in-view point's pixel follows
the resize, crop and flip; points whose pixel leaves the crop are dropped (as xMUDA does; up to 10
crops are drawn until one keeps ``min_points``). Point augmentation (rotation, scaling, jitter,
dropout) then changes the 3D network's coordinates only: the pixel of each point was fixed
before. In training, ``max_points`` caps the points per sample (a uniform random subset) and,
for RandLA-Net (whose batches need equal sizes), pads smaller samples with repeats marked
``valid = False``.

With a target dataset, each sample also holds ``target_domain``: the same fields for a target
frame drawn by the sample's generator, without labels. Every random draw comes from
``numpy.random.default_rng((seed, epoch, index))`` (see :mod:`terraseg.training.data`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from terraseg.errors import ConfigError, DataError
from terraseg.frame import Frame
from terraseg.models.fusion.backbone3d import PointInputSpec
from terraseg.models.fusion.model import CrossModalModel
from terraseg.models.fusion.view import frame_view, frame_where
from terraseg.ontology import Ontology
from terraseg.training.augment import ImageTransform
from terraseg.training.config import TrainConfig
from terraseg.training.data import IGNORE_INDEX, FrameCache, _EpochAware, check_ids

CROP_TRIES = 10


class FusionSamples(_EpochAware, torch.utils.data.Dataset):
    """Paired camera + LiDAR samples (see the module docstring).

    Args:
        frames: frames with ``image``, ``points``, ``calib`` and (``labelled``) ``point_labels``.
        ontology: the label ontology of the point labels.
        transform: the image transform (train: random; eval: deterministic).
        point_spec: how points become the 3D network's input.
        train: training mode (crops, point augmentation, ``max_points``).
        point_augment: ``augment(points, labels, rng) -> (points, labels, kept)`` (training).
        max_points: points per training sample (None: every kept point).
        min_points: in-view points a training crop should keep.
        near: minimum camera depth (metres) of in-view points.
        target_frames: optional unlabelled target-domain frames (domain adaptation).
        labelled: the frames carry labels (False: every target is IGNORE_INDEX).
        seed: base seed of the per-sample generators.
        extras: ``extras(index, frame) -> {name: (N,) array}`` of per-point values aligned with
            ``frame.points`` (pseudo-labels of each network, queried labels, confidences ...): they
            go through the same selection as the points into ``sample["point_extras"]`` (padding
            repeats get :data:`IGNORE_INDEX` for integer arrays, 0 otherwise).
    """

    def __init__(self, frames: FrameCache | Sequence[Frame], ontology: Ontology, transform: ImageTransform,
                 point_spec: PointInputSpec, train: bool, point_augment: Callable[..., Any] | None = None,
                 max_points: int | None = None, min_points: int = 100, near: float = 0.1,
                 target_frames: FrameCache | Sequence[Frame] | None = None, labelled: bool = True,
                 seed: int = 0, extras: Callable[[int, Frame], dict[str, np.ndarray]] | None = None) -> None:
        self.frames = frames
        self.ontology = ontology
        self.transform = transform
        self.point_spec = point_spec
        self.train = train
        self.point_augment = point_augment if train else None
        self.max_points = max_points
        self.min_points = int(min_points)
        self.near = float(near)
        self.target_frames = target_frames if train else None
        self.labelled = labelled
        self.seed = seed
        self.extras = extras

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self.rng(index)
        frame = self.frames[index]
        extra = self.extras(int(index), frame) if self.extras is not None else None
        sample = self.sample(frame, rng, self.labelled, extra)
        sample["index"] = int(index)
        if self.target_frames is not None and len(self.target_frames):
            j = int(rng.integers(len(self.target_frames)))
            trg = self.sample(self.target_frames[j], rng, labelled=False)
            trg["index"] = j
            sample["target_domain"] = trg
        return sample

    # ------------------------------------------------------------------ one frame
    def sample(self, frame: Frame, rng: np.random.Generator, labelled: bool = True,
               extras: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """The sample of one frame (without ``index``); ``extras``: per-point arrays of the frame."""
        where = frame_where(frame)
        view = frame_view(frame, self.near)
        assert frame.image is not None and frame.points is not None
        for name, arr in (extras or {}).items():
            if len(arr) != len(frame.points):
                raise DataError(f"{where}: per-point values {name!r} hold {len(arr)} entries for "
                                f"{len(frame.points)} points")
        if labelled:
            if frame.point_labels is None:
                raise DataError(f"{where}: training needs the labels of the points (this frame has none)")
            lab_all = np.asarray(frame.point_labels)
            check_ids(lab_all, self.ontology, str(frame.source.get("point_labels", where)))
            labels = lab_all[view.index].astype(np.int64)
        else:
            labels = np.full(len(view.index), IGNORE_INDEX, dtype=np.int64)
        tries = CROP_TRIES if self.train else 1
        need = min(self.min_points, len(view.index))
        for _ in range(tries):
            x, _, pmap = self.transform.apply_with_map(frame.image, None, rng)
            uv = pmap.apply(view.uv)
            keep = np.flatnonzero(pmap.inside(uv))
            if len(keep) >= need:
                break
        if len(keep) == 0:
            raise DataError(f"{where}: none of the {len(view.index)} in-view points falls inside the "
                            f"{pmap.valid_size[0]}x{pmap.valid_size[1]} training crop after {tries} tries; use a "
                            "larger augment.image.crop or a narrower augment.image.scale")
        idx = view.index[keep]
        labels, uv = labels[keep], uv[keep]
        pts = np.asarray(frame.points, dtype=np.float32)[idx]
        if self.point_augment is not None:
            pts, _, kept = self.point_augment(pts, None, rng)
            labels, uv, idx = labels[kept], uv[kept], idx[kept]
        valid = np.ones(len(pts), dtype=bool)
        m = len(pts)
        if self.train and self.max_points is not None and m > self.max_points:
            sel = np.sort(rng.choice(m, self.max_points, replace=False))
            pts, labels, uv, valid, idx = pts[sel], labels[sel], uv[sel], valid[sel], idx[sel]
        n_real = len(pts)
        want = max(self.point_spec.min_points,
                   self.max_points if (self.train and self.max_points and self.point_spec.equal_sizes) else 0)
        if len(pts) < want:  # pad with repeats that no loss or metric sees
            if len(pts) == 0:
                raise DataError(f"{where}: no in-view point left for the 3D network")
            extra = rng.integers(0, len(pts), want - len(pts))
            pts = np.concatenate([pts, pts[extra]])
            labels = np.concatenate([labels, np.full(len(extra), IGNORE_INDEX, dtype=np.int64)])
            uv = np.concatenate([uv, uv[extra]])
            valid = np.concatenate([valid, np.zeros(len(extra), dtype=bool)])
            idx = np.concatenate([idx, idx[extra]])
        # validation builds the 3D input as FusionPredictor does (seed 0), so both score the same
        inputs = self.point_spec.build(pts, rng if self.train else 0, where)
        out = {"image": torch.from_numpy(np.ascontiguousarray(x)),
               "uv": torch.from_numpy(np.ascontiguousarray(uv, dtype=np.float32)),
               "target": torch.from_numpy(np.ascontiguousarray(labels)),
               "valid": torch.from_numpy(valid), "point_index": torch.from_numpy(idx.astype(np.int64)),
               "points3d": inputs}
        if extras:
            ext: dict[str, torch.Tensor] = {}
            for name, arr in extras.items():
                a = np.asarray(arr)[idx]
                if len(a) > n_real:
                    a[n_real:] = IGNORE_INDEX if a.dtype.kind == "i" else 0
                ext[name] = torch.from_numpy(np.ascontiguousarray(a))
            out["point_extras"] = ext
        return out


class FusionCollate:
    """Batches :class:`FusionSamples` (picklable, for DataLoader workers).

    The batch holds ``image`` (B, 3, h, w), ``uv`` (M, 2), ``point_batch`` (M,), ``target`` (M,),
    ``valid`` (M,), ``point_index`` (M,), ``points3d`` (the 3D network's batch) and ``index`` (B,),
    plus ``point_extras`` ({name: (M,)}) and ``target_domain`` (the same for the target frames)
    when the samples have them.
    """

    def __init__(self, point_spec: PointInputSpec) -> None:
        self.point_spec = point_spec

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        shapes = {tuple(s["image"].shape) for s in samples}
        if len(shapes) > 1:
            raise DataError(f"cannot batch images of different sizes {sorted(shapes)}; set augment.image.crop or "
                            "augment.image.base_size, or use batch size 1")
        batch: dict[str, Any] = {
            "image": torch.stack([s["image"] for s in samples]),
            "uv": torch.cat([s["uv"] for s in samples]),
            "point_batch": torch.cat([torch.full((len(s["uv"]),), b, dtype=torch.int64)
                                      for b, s in enumerate(samples)]),
            "target": torch.cat([s["target"] for s in samples]),
            "valid": torch.cat([s["valid"] for s in samples]),
            "point_index": torch.cat([s["point_index"] for s in samples]),
            "points3d": self.point_spec.collate([s["points3d"] for s in samples]),
            "index": torch.tensor([s["index"] for s in samples]),
        }
        if "point_extras" in samples[0]:
            batch["point_extras"] = {k: torch.cat([s["point_extras"][k] for s in samples])
                                     for k in samples[0]["point_extras"]}
        if "target_domain" in samples[0]:
            batch["target_domain"] = self([s["target_domain"] for s in samples])
        return batch


# ------------------------------------------------------------------------------------- from a recipe
def _in_section(cfg: TrainConfig, section: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{cfg.source}: {section}: {exc}") from None


def fusion_model(cfg: TrainConfig, ontology: Ontology) -> CrossModalModel:
    """The cross-modal model of a ``task: fusion`` recipe (``model.net2d`` / ``net3d``, their
    ``weights``, then ``model.weights`` for a whole cross-modal checkpoint)."""
    from terraseg.models.fusion import build_fusion_model
    from terraseg.models.surgery import load_weights

    m, fc = cfg.model, cfg.fusion
    if m.net2d is None or m.net3d is None or fc is None:
        raise ConfigError(f"{cfg.source}: task: fusion needs model.net2d and model.net3d")
    n2, n3 = m.net2d, m.net3d
    model = _in_section(cfg, "model", lambda: build_fusion_model(
        {"arch": n2.arch, "encoder": n2.encoder, "pretrained": n2.pretrained, "options": n2.options},
        {"arch": n3.arch, "preset": n3.preset, "in_channels": n3.in_channels, "options": n3.options},
        ontology.max_id + 1, ontology=ontology, sampling=fc.sampling, mimicry=fc.mimicry, weights_2d=n2.weights,
        weights_3d=n3.weights, source_ontology=m.source_ontology, verbose=bool(n2.weights or n3.weights)))
    if m.weights:
        model.load_report = load_weights(model, m.weights, source_ontology=m.source_ontology, target_ontology=ontology,
                                         label_map=m.label_map, verbose=True)
    return model


@dataclass
class FusionParts:
    """What the engine needs for a ``task: fusion`` run (see :func:`fusion_datasets`)."""

    train: FusionSamples
    val: FusionSamples
    collate: FusionCollate
    adapter: Any
    preprocess: dict[str, Any]


def fusion_datasets(cfg: TrainConfig, ontology: Ontology, model: CrossModalModel, train_frames: FrameCache,
                    val_frames: FrameCache, channels_last: bool = False) -> FusionParts:
    """Training and validation samples, their collate function, the
    :class:`~terraseg.training.module.FusionTask` adapter and the checkpoint's ``preprocess`` meta of a
    ``task: fusion`` recipe (``augment.image`` / ``augment.points``, ``data.max_points``,
    ``fusion.*``, an optional ``fusion.target`` dataset)."""
    from terraseg.datasets import open_dataset
    from terraseg.models.image.preprocess import Normalization
    from terraseg.training.augment import ImageAugConfig, build_image_transform
    from terraseg.training.module import FusionTask
    from terraseg.training.point_augment import PointAugConfig, PointAugment

    fc = cfg.fusion
    if fc is None:
        raise ConfigError(f"{cfg.source}: task: fusion needs the fusion section")
    img_aug = dict(cfg.augment.get("image") or {})
    if "ignore_id" in img_aug:
        raise ConfigError(f"{cfg.source}: augment.image.ignore_id is set by the engine")
    aug = _in_section(cfg, "augment.image", lambda: ImageAugConfig.from_dict({**img_aug, "ignore_id": 255}))
    norm = Normalization()
    pts_aug = dict(cfg.augment.get("points") or {})
    point_augment = None
    if pts_aug.pop("enabled", True):
        point_augment = PointAugment(_in_section(cfg, "augment.points", lambda: PointAugConfig.from_dict(pts_aug)))
    spec = _in_section(cfg, "model.net3d", lambda: PointInputSpec.from_model(model.net3d))
    if spec.equal_sizes:
        if cfg.data.batch_size > 1 and cfg.data.max_points is None:
            raise ConfigError(f"{cfg.source}: RandLA-Net batches need equal point counts: set data.max_points "
                              "(points per training sample) or data.batch_size=1")
        if cfg.data.val_batch_size > 1:
            raise ConfigError(f"{cfg.source}: RandLA-Net validation labels every in-view point of a frame in one pass: "
                              "set data.val_batch_size=1")
    target = None
    if fc.target is not None:
        t = fc.target
        try:
            tds = open_dataset(t.root, kind=t.kind, split=t.split, remap=t.remap, **dict(t.options))
        except TypeError as exc:
            raise ConfigError(f"{cfg.source}: fusion.target.options: {exc}") from None
        if len(tds) == 0:
            raise DataError(f"{t.root}: no frames in split {t.split!r} (fusion.target)")
        target = FrameCache(tds, cache=cfg.data.cache, limit=t.max_frames)
    common: dict[str, Any] = {"point_spec": spec, "max_points": cfg.data.max_points, "min_points": fc.min_points,
                              "near": fc.near, "seed": cfg.seed}
    train = FusionSamples(train_frames, ontology, build_image_transform(aug, True, norm), train=True,
                          point_augment=point_augment, target_frames=target, **common)
    val = FusionSamples(val_frames, ontology, build_image_transform(aug, False, norm), train=False, **common)
    adapter = FusionTask(fc.lambda_xm_src, fc.lambda_xm_trg if target is not None else 0.0, fc.lambda_entropy,
                         channels_last, fc.lr_2d_mult)
    preprocess = {**norm.to_meta(), "base_size": list(aug.base_size) if aug.base_size else None, "near": fc.near,
                  "max_points": cfg.data.max_points, "points": spec.to_dict()}
    return FusionParts(train, val, FusionCollate(spec), adapter, preprocess)
