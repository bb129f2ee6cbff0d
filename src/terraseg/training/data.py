"""Training samples from any terraseg dataset: camera images and LiDAR scans.

Both tasks return, per sample, the network input and a ``target`` of the *ontology's raw ids*
(int64) with :data:`IGNORE_INDEX` (-1) only where there is no label at all (crop padding, points
without a pixel). Which ids the loss ignores (the ontology's ignore ids) and which the metrics
ignore (the evaluation preset's) is decided later, so the two may differ (an ontology's void
class can be left out of the loss but still scored, as the GOOSE challenge scores class 0).

Randomness: every random choice of sample ``i`` in epoch ``e`` is drawn from
``numpy.random.default_rng((seed, e, i))``, so a run is reproducible whatever the number of
DataLoader workers, and a resumed run sees the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from terraseg.errors import DataError
from terraseg.frame import Frame
from terraseg.geometry.range_image import RangeProjection, from_organized, parse_organized, project_scan
from terraseg.models.points.intensity import IntensitySpec, intensity_stats, normalize_intensity
from terraseg.models.points.randla_data import collate_randla, randla_inputs
from terraseg.models.points.range_data import range_input
from terraseg.models.points.voxelize import DEFAULT_VOXEL_SIZE, collate_voxels, voxelize_scan
from terraseg.ontology import Ontology

IGNORE_INDEX = -1
"""Target value of elements without a label (never a class id)."""


def pad_id(ontology: Ontology) -> int:
    """The id used for "no label" while a mask is still an unsigned image (255 or 65535)."""
    return 255 if ontology.max_id < 255 else 65535


def check_ids(labels: np.ndarray, ontology: Ontology, where: str, allow: Sequence[int] = ()) -> None:
    """Raise DataError naming ``where`` when ``labels`` hold ids that are not classes of ``ontology``."""
    if labels.size == 0:
        return
    hi = int(labels.max())
    lo = int(labels.min())
    if lo >= 0 and hi <= ontology.max_id and len(ontology.ids) == ontology.max_id + 1:
        return
    present = np.unique(labels)
    bad = present[~np.isin(present, np.concatenate([ontology.ids, np.asarray(allow, dtype=np.int64)]))]
    if bad.size:
        raise DataError(f"{where}: label ids {bad[:8].tolist()} are not classes of ontology {ontology.name!r} "
                        f"(remap the dataset with data.remap, or set data.ontology)")


class _EpochAware:
    """Mixin: the current epoch and the per-sample generator."""

    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, int(index)))


class FrameCache:
    """Frames of a dataset, optionally kept in memory after the first read."""

    def __init__(self, frames: Sequence[Frame], cache: bool = False, limit: int | None = None) -> None:
        self.frames = frames
        self.cache = cache
        self.n = len(frames) if limit is None else min(limit, len(frames))
        self._store: dict[int, Frame] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Frame:
        if self.cache and i in self._store:
            return self._store[i]
        f = self.frames[i]
        if self.cache:
            self._store[i] = f
        return f


# ---------------------------------------------------------------------------------- images
class ImageSamples(_EpochAware, torch.utils.data.Dataset):
    """Camera samples: ``{"image": (3, h, w) float32, "target": (h, w) int64, "index": int}``.

    Args:
        frames: frames with ``image`` and ``image_labels`` in ``ontology``'s ids.
        ontology: the label ontology.
        transform: ``transform(image, mask, rng) -> (chw float32, mask)`` (an
            :class:`~terraseg.training.augment.ImageTransform`); the mask it receives has
            :func:`pad_id` where there is no label.
        copy_paste: optional ``copy_paste(image, mask, rng) -> (image, mask)`` applied before
            ``transform`` (training only).
        seed: base seed of the per-sample generators.
    """

    def __init__(self, frames: FrameCache, ontology: Ontology, transform: Callable[..., Any],
                 copy_paste: Callable[..., Any] | None = None, seed: int = 0) -> None:
        self.frames = frames
        self.ontology = ontology
        self.transform = transform
        self.copy_paste = copy_paste
        self.seed = seed
        self.pad = pad_id(ontology)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, Any]:
        f = self.frames[index]
        where = str(f.source.get("image", f.frame_id))
        if f.image is None or f.image_labels is None:
            raise DataError(f"{where}: training needs an image and its mask (frame {f.frame_id} lacks "
                            f"{'the image' if f.image is None else 'the mask'})")
        check_ids(f.image_labels, self.ontology, str(f.source.get("image_labels", where)))
        mask = f.image_labels.astype(np.uint8 if self.pad == 255 else np.uint16, copy=False)
        image = f.image
        rng = self.rng(index)
        if self.copy_paste is not None:
            image, mask = self.copy_paste(image, mask, rng)
        x, m = self.transform(image, mask, rng)
        target = np.asarray(m, dtype=np.int64)
        target[target == self.pad] = IGNORE_INDEX
        return {"image": torch.from_numpy(np.ascontiguousarray(x)), "target": torch.from_numpy(target),
                "index": int(index)}


def collate_images(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack image samples (same size within a batch: crops, or ``data.val_batch_size: 1``)."""
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) > 1:
        raise DataError(f"cannot batch images of different sizes {sorted(shapes)}; set augment.crop or "
                        "augment.base_size, or use batch size 1")
    return {"image": torch.stack([s["image"] for s in samples]),
            "target": torch.stack([s["target"] for s in samples]),
            "index": torch.tensor([s["index"] for s in samples])}


# ---------------------------------------------------------------------------------- points
def scan_arrays(f: Frame, ontology: Ontology) -> tuple[np.ndarray, np.ndarray]:
    """(points (M, C) float32, labels (M,) int64) of the points with a return (non-zero, finite)."""
    where = str(f.source.get("points", f.frame_id))
    if f.points is None or f.point_labels is None:
        raise DataError(f"{where}: training needs a point cloud and its labels (frame {f.frame_id} lacks "
                        f"{'points' if f.points is None else 'labels'})")
    pts = np.asarray(f.points, dtype=np.float32)
    lab = np.asarray(f.point_labels).astype(np.int64, copy=False)
    if len(pts) != len(lab):
        raise DataError(f"{where}: {len(pts)} points but {len(lab)} labels")
    check_ids(lab, ontology, str(f.source.get("point_labels", where)))
    xyz = pts[:, :3]
    keep = np.isfinite(xyz).all(axis=1) & (np.einsum("ij,ij->i", xyz, xyz) > 1e-6)
    return pts[keep], lab[keep]


def spatial_crop(points: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``n`` points: the ``n`` nearest to a random centre point (RandLA-Net's training
    crops), or every point plus random repeats when the scan has fewer than ``n``."""
    m = len(points)
    if m == 0:
        raise DataError("spatial_crop: the scan has no points with a return")
    if m <= n:
        extra = rng.integers(0, m, n - m)
        idx = np.concatenate([rng.permutation(m), extra])
    else:
        centre = points[int(rng.integers(0, m)), :3]
        _, idx = cKDTree(points[:, :3]).query(centre, k=n)
        idx = rng.permutation(np.asarray(idx, dtype=np.int64))
    return points[idx], labels[idx]


@dataclass
class PointSampleSpec:
    """How scans become network inputs.

    Attributes:
        arch: ``randlanet``, ``salsanext`` or ``voxelunet``.
        in_channels: network input channels (voxel U-Net: point columns averaged per voxel).
        k, ratios: RandLA-Net neighbourhood size and sub-sampling ratios.
        max_points: points per training sample (None: whole scans, batch size 1). The voxel
            U-Net crops only scans with more points (its batches need no equal sizes).
        projection: range networks: a preset name, a RangeProjection, or ``organized:HxW``.
        means, stds: range-image normalisation.
        intensity_max: raw intensities (column 3) are divided by this (None: as stored).
        voxel_size, centre_offsets: voxel U-Net voxelisation (metres; offset features).
    """

    arch: str
    in_channels: int
    k: int = 16
    ratios: tuple[int, ...] = (4, 4, 4, 4)
    max_points: int | None = None
    projection: str | RangeProjection = "velodyne-hdl64e"
    means: tuple[float, ...] = ()
    stds: tuple[float, ...] = ()
    intensity_max: float | None = None
    voxel_size: float = DEFAULT_VOXEL_SIZE
    centre_offsets: bool = True


class ScanSamples(_EpochAware, torch.utils.data.Dataset):
    """LiDAR samples for RandLA-Net (``randla_inputs`` dict + ``target`` (N,)), the voxel U-Net
    (``voxelize_scan`` dict + ``target`` (N,)) or a range network (``{"range": (C, H, W),
    "target": (H, W), "point_row"/"point_col"/"point_target": (M,)}``).

    ``augment(points, labels, rng) -> (points, labels, kept)`` is applied in training
    (:class:`~terraseg.training.point_augment.PointAugment`).
    """

    def __init__(self, frames: FrameCache, ontology: Ontology, spec: PointSampleSpec, train: bool,
                 augment: Callable[..., Any] | None = None, seed: int = 0) -> None:
        self.frames = frames
        self.ontology = ontology
        self.spec = spec
        self.train = train
        self.augment = augment if train else None
        self.seed = seed
        self.organized = parse_organized(spec.projection)
        if self.organized is not None and self.augment is not None:
            raise DataError("range networks on organized:HxW projections cannot use point augmentation "
                            "(it moves points out of their sensor pixel); use a spherical projection preset")

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, Any]:
        f = self.frames[index]
        rng = self.rng(index)
        s = self.spec
        if s.arch == "salsanext" and self.organized is not None:
            return self._organized(f)
        pts, lab = scan_arrays(f, self.ontology)
        pts = normalize_intensity(pts, s.intensity_max)
        if self.augment is not None:
            pts, lab, _ = self.augment(pts, lab, rng)
        if s.arch == "randlanet":
            if self.train and s.max_points is not None:
                pts, lab = spatial_crop(pts, lab, s.max_points, rng)
            sample = randla_inputs(pts[:, :3], pts[:, :s.in_channels], k=s.k, ratios=s.ratios, seed=rng,
                                   source=str(f.source.get("points", f.frame_id)))
            sample["target"] = torch.from_numpy(np.ascontiguousarray(lab))
            sample["index"] = int(index)
            return sample
        if s.arch == "voxelunet":
            if self.train and s.max_points is not None and len(pts) > s.max_points:
                pts, lab = spatial_crop(pts, lab, s.max_points, rng)
            sample = voxelize_scan(pts, s.voxel_size, s.in_channels, s.centre_offsets,
                                   source=str(f.source.get("points", f.frame_id)))
            sample["target"] = torch.from_numpy(np.ascontiguousarray(lab))
            sample["index"] = int(index)
            return sample
        image = project_scan(pts, s.projection, source=str(f.source.get("points", f.frame_id)))
        return self._range_sample(image, lab, index)

    def _organized(self, f: Frame) -> dict[str, Any]:
        assert self.organized is not None
        h, w = self.organized
        pts = normalize_intensity(np.asarray(f.points, dtype=np.float32), self.spec.intensity_max)
        lab = np.asarray(f.point_labels).astype(np.int64)
        check_ids(lab, self.ontology, str(f.source.get("point_labels", f.frame_id)))
        image = from_organized(pts, h, w, source=str(f.source.get("points", f.frame_id)))
        return self._range_sample(image, lab, 0)

    def _range_sample(self, image: Any, lab: np.ndarray, index: int) -> dict[str, Any]:
        s = self.spec
        x = range_input(image, s.means, s.stds, s.in_channels)
        target = image.gather(lab, fill=IGNORE_INDEX)
        ok = image.has_pixel
        return {"range": torch.from_numpy(x), "target": torch.from_numpy(target),
                "point_row": torch.from_numpy(image.point_row[ok]), "point_col": torch.from_numpy(image.point_col[ok]),
                "point_target": torch.from_numpy(lab[ok]), "index": int(index)}


def training_intensity(frames: FrameCache, intensity_max: float | None = None, max_scans: int = 16) -> IntensitySpec:
    """The intensity scale of a run and the statistics of its scaled training intensities, from up
    to ``max_scans`` training scans spread evenly over the split (what the checkpoint records so
    predictors can scale scans and warn about ones far outside; see
    :mod:`terraseg.models.points.intensity`)."""
    n = len(frames)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(n, max_scans))}) if n else []

    def scans() -> Any:
        for i in picks:
            pts = frames[i].points
            if pts is not None:
                yield np.asarray(pts)

    return IntensitySpec(intensity_max, intensity_stats(scans(), intensity_max))


def collate_scans(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch scan samples: RandLA-Net inputs via ``collate_randla``, voxels via ``collate_voxels``;
    range images stacked, per-point arrays kept as lists."""
    if "range" in samples[0]:
        return {"range": torch.stack([s["range"] for s in samples]),
                "target": torch.stack([s["target"] for s in samples]),
                "point_row": [s["point_row"] for s in samples], "point_col": [s["point_col"] for s in samples],
                "point_target": [s["point_target"] for s in samples],
                "index": torch.tensor([s["index"] for s in samples])}
    batch = collate_voxels(samples) if "coords" in samples[0] else collate_randla(samples)
    batch["index"] = torch.tensor([s["index"] for s in samples])
    return batch


class ShardSampler(torch.utils.data.Sampler[int]):
    """Indices ``rank, rank + world, ...`` in order: each validation sample seen by exactly one process.

    With ``pad`` every process gets ``ceil(n / world)`` indices: the last ones may be ``>= n``,
    padding that :class:`IgnoredPadding` turns into samples scored nowhere (so merged confusion
    matrices still count every sample once, and a split with fewer samples than processes works).
    """

    def __init__(self, n: int, num_replicas: int = 1, rank: int = 0, pad: bool = False) -> None:
        self.n, self.num_replicas, self.rank = n, num_replicas, rank
        self.total = -(-n // num_replicas) * num_replicas if pad and n > 0 else n

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(self.rank, self.total, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.total, self.num_replicas))


class IgnoredPadding(torch.utils.data.Dataset):
    """A dataset whose indices ``n, n + 1, ...`` (past its end) give sample ``index % n`` with every
    target set to :data:`IGNORE_INDEX`: padding for :class:`ShardSampler` that no metric counts."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.dataset)
        if index < n:
            return self.dataset[index]
        sample = dict(self.dataset[index % n])
        for key, value in sample.items():
            if "target" in key:
                if isinstance(value, torch.Tensor):
                    sample[key] = torch.full_like(value, IGNORE_INDEX)
                elif isinstance(value, list | tuple):
                    sample[key] = type(value)(torch.full_like(v, IGNORE_INDEX) for v in value)
        return sample
