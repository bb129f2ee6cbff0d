"""Training data of label-efficient runs: a run's sparse label masks, per-scan regions and boundary
targets, per-scan distillation targets, and the scan samples that carry all of them through
augmentation and crops.

Everything per scan is computed **once, on the scan as read** (before augmentation) and indexed by
the scan's point index; a training sample carries each of its points' index through the
augmentation (dropout) and the spatial crop (:class:`LabelEfficientScans` appends the index as an
extra channel, which :class:`~terraseg.training.point_augment.PointAugment` and
:func:`~terraseg.training.data.spatial_crop` move with the point and never change), so a point
keeps its region, its boundary flag, its teacher target and whether it is labelled, whatever
rotation, scale, flip, dropout or crop it went through.

Files next to the run (``<output>/<name>/``):

- ``sparse_labels.npz``: the labelled points of every training scan
  (:class:`~terraseg.label_efficient.SparseLabels`), drawn at the start of a run from
  ``data.label_budget`` and the recipe seed, and read back unchanged by ``--resume``;
- ``regions.npz``: region ids and boundary targets per training scan (re-used by ``--resume``
  when the region settings are unchanged);
- ``distill_targets/<key>/*.npz``: the fused teacher targets (or ``distill.cache_dir``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terraseg.errors import ConfigError, DataError
from terraseg.frame import Frame
from terraseg.io.atomic import atomic_path
from terraseg.label_efficient.sparse_labels import SPARSE_LABELS_FILE, LabelBudget, SparseLabels
from terraseg.ontology import Ontology
from terraseg.progress import ProgressBar
from terraseg.training.data import IGNORE_INDEX, FrameCache, ScanSamples, pad_id, scan_arrays, spatial_crop
from terraseg.training.label_efficient_config import RegionsConfig

log = logging.getLogger(__name__)

REGIONS_FILE = "regions.npz"


def returns_mask(points: np.ndarray) -> np.ndarray:
    """(N,) bool: the points training uses (finite, not at the origin: the scan's no-return points),
    the same test as :func:`terraseg.training.data.scan_arrays`."""
    xyz = np.asarray(points)[:, :3]
    return np.isfinite(xyz).all(axis=1) & (np.einsum("ij,ij->i", xyz, xyz) > 1e-6)


def labellable_labels(frame: Frame, ontology: Ontology) -> np.ndarray:
    """The frame's point labels with the points nobody can label (ignored classes of the ontology,
    no-return points) set to :func:`~terraseg.training.data.pad_id` (the sparse draw's ignore id)."""
    if frame.points is None or frame.point_labels is None:
        raise DataError(f"{frame.source.get('points', frame.frame_id)}: training needs points and labels")
    lab = np.asarray(frame.point_labels).astype(np.int64)
    pad = pad_id(ontology)
    bad = ~returns_mask(frame.points)
    if ontology.ignore_ids:
        bad |= np.isin(lab, list(ontology.ignore_ids))
    out = lab.copy()
    out[bad] = pad
    return out.astype(np.uint8 if pad == 255 else np.uint16)


# ---------------------------------------------------------------------------------------------- regions
def scan_regions(points: np.ndarray, cfg: RegionsConfig, boundary_k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(regions (N,) int64, boundary (N,) bool)`` of a scan (points as used for training)."""
    from terraseg.geometry.regions import region_boundaries, region_growing, voxel_regions

    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    if cfg.method == "growing":
        reg = region_growing(xyz, k=cfg.k, smoothness_deg=cfg.smoothness_deg,
                             curvature_threshold=cfg.curvature_threshold, min_size=cfg.min_size,
                             max_radius=cfg.max_radius)
    else:
        reg = voxel_regions(xyz, cfg.voxel_size)
    return reg, region_boundaries(xyz, reg, k=boundary_k)


@dataclasses.dataclass
class RegionCache:
    """Regions and boundary targets of every training scan, by position in the training set.

    Attributes:
        regions: per scan, (N,) int32 region ids over the scan as read (-1: no-return points).
        boundary: per scan, (N,) bool region-border targets.
        frame_ids: the scans' ids.
        seconds: over-segmentation time per scan (s), as measured when computed (NaN when read).
        purity: share of labelled points in a region whose majority label is theirs (against
            the full ground truth: a diagnostic of the partition, never used in training).
    """

    regions: list[np.ndarray]
    boundary: list[np.ndarray]
    frame_ids: list[str]
    seconds: list[float]
    purity: float = float("nan")

    def summary(self, cfg: RegionsConfig) -> dict[str, Any]:
        n = [int(r.max()) + 1 if r.size and r.max() >= 0 else 0 for r in self.regions]
        secs = [s for s in self.seconds if np.isfinite(s)]
        return {"method": cfg.method, "scans": len(self.regions), "regions_per_scan": round(float(np.mean(n)), 1) if n else 0,
                "boundary_share": round(float(np.mean([b[r >= 0].mean() for b, r in zip(self.boundary, self.regions)
                                                       if (r >= 0).any()])), 4) if self.regions else 0.0,
                "purity": round(self.purity, 4) if np.isfinite(self.purity) else None,
                "ms_per_scan": round(1000 * float(np.mean(secs)), 1) if secs else None}

    @staticmethod
    def key(cfg: RegionsConfig, boundary_k: int) -> str:
        return json.dumps({**dataclasses.asdict(cfg), "boundary_k": boundary_k}, sort_keys=True)

    @classmethod
    def build(cls, frames: FrameCache, ontology: Ontology, cfg: RegionsConfig, boundary_k: int,
              run_dir: Path | None, progress: bool = True, write: bool = True) -> RegionCache:
        """Read ``<run>/regions.npz`` when it holds these frames with these settings, else compute
        (one progress bar) and write it."""
        key = cls.key(cfg, boundary_k)
        path = run_dir / REGIONS_FILE if run_dir is not None else None
        ids = [str(frames[i].frame_id) for i in range(len(frames))] if path is not None and path.is_file() else None
        if path is not None and ids is not None:
            cached = cls._load(path, key, ids)
            if cached is not None:
                return cached
        regions, boundary, fids, secs = [], [], [], []
        from terraseg.geometry.regions import region_purity

        hits = total = 0
        with ProgressBar(len(frames), f"over-segmenting training scans ({cfg.method})", enabled=progress) as bar:
            for i in range(len(frames)):
                f = frames[i]
                pts, lab = scan_arrays(f, ontology)
                keep = returns_mask(np.asarray(f.points))
                t0 = time.perf_counter()
                reg, bnd = scan_regions(pts, cfg, boundary_k)
                secs.append(time.perf_counter() - t0)
                full_r = np.full(len(keep), -1, dtype=np.int32)
                full_r[keep] = reg
                full_b = np.zeros(len(keep), dtype=bool)
                full_b[keep] = bnd
                regions.append(full_r)
                boundary.append(full_b)
                fids.append(str(f.frame_id))
                scored = ~np.isin(lab, list(ontology.ignore_ids)) if ontology.ignore_ids else np.ones(len(lab), bool)
                if scored.any():
                    p = region_purity(reg[scored], lab[scored])
                    hits += p.purity * p.points
                    total += p.points
                bar.advance()
        out = cls(regions, boundary, fids, secs, hits / total if total else float("nan"))
        if path is not None and write:
            out._save(path, key)
        return out

    def _save(self, path: Path, key: str) -> None:
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in self.regions])]).astype(np.int64)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, key=np.array(key), frame_ids=np.array(self.frame_ids, dtype=np.str_),
                                offsets=offsets, regions=np.concatenate(self.regions) if self.regions else np.zeros(0, np.int32),
                                boundary=np.concatenate(self.boundary) if self.boundary else np.zeros(0, bool),
                                seconds=np.array(self.seconds), purity=np.array(self.purity))

    @classmethod
    def _load(cls, path: Path, key: str, ids: list[str]) -> RegionCache | None:
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != key or [str(i) for i in z["frame_ids"]] != ids:
                    return None
                off, reg, bnd = z["offsets"], z["regions"], z["boundary"]
                regions = [reg[off[j]:off[j + 1]] for j in range(len(ids))]
                boundary = [bnd[off[j]:off[j + 1]] for j in range(len(ids))]
                return cls(regions, boundary, ids, [float("nan")] * len(ids), float(z["purity"]))
        except (OSError, ValueError, KeyError) as exc:
            log.warning("%s: unreadable (%s); computing the regions again", path, exc)
            return None


# ---------------------------------------------------------------------------------------------- sparse labels
def sparse_labels_for_run(frames: FrameCache, ontology: Ontology, budget: LabelBudget, seed: int,
                          run_dir: Path, regions: RegionCache | None, progress: bool = True,
                          write: bool = True) -> SparseLabels:
    """The run's label masks: ``<run>/sparse_labels.npz`` when it exists (a resumed run: read back
    exactly, and checked against the recipe), else drawn now and written there.

    Raises:
        ConfigError: the stored masks were drawn with another budget or seed.
        DataError: the stored masks miss a training frame or were drawn for other point counts.
    """
    path = run_dir / SPARSE_LABELS_FILE
    pad = pad_id(ontology)
    if path.is_file():
        store = SparseLabels.load(path)
        if store.budget != budget or store.seed != seed:
            raise ConfigError(f"{path}: masks drawn with {store.budget.describe()}, seed {store.seed}; the recipe asks "
                              f"for {budget.describe()}, seed {seed} (start a new run, or restore the recipe)")
        for i in range(len(frames)):
            f = frames[i]
            store.mask(str(f.frame_id), None if f.point_labels is None else len(f.point_labels))
        return store
    store = SparseLabels(budget, seed, pad)
    with ProgressBar(len(frames), "drawing sparse labels", enabled=progress) as bar:
        for i in range(len(frames)):
            f = frames[i]
            reg = None
            if budget.strategy == "regions":
                assert regions is not None
                reg = regions.regions[i].astype(np.int64)
            store.add(str(f.frame_id), labellable_labels(f, ontology), reg,
                      np.asarray(f.points)[:, :3] if budget.click == "center" else None)
            bar.advance()
    if write:
        store.save(path)
    return store


def label_counts(frames: FrameCache, ontology: Ontology, store: SparseLabels) -> dict[str, Any]:
    """Labelled, labellable and all points over the training scans, and the shares."""
    labelled = store.labelled
    labellable = points = 0
    for i in range(len(frames)):
        lab = labellable_labels(frames[i], ontology)
        points += len(lab)
        labellable += int((lab != store.ignore_index).sum())
    return {"budget": store.budget.describe(), "seed": store.seed, "frames": len(store), "labelled_points": labelled,
            "labellable_points": labellable, "points": points,
            "labelled_share_of_labellable": labelled / max(labellable, 1), "labelled_share_of_points": labelled / max(points, 1),
            "file": SPARSE_LABELS_FILE}


# ---------------------------------------------------------------------------------------------- samples
class LabelEfficientScans(ScanSamples):
    """RandLA-Net training samples of a label-efficient run (see the module docstring).

    On top of :class:`~terraseg.training.data.ScanSamples`' keys, every sample holds
    ``point_index`` (N,) int64 (each point's index in the scan as read) and, when asked for,
    ``regions`` (N,) int64, ``boundary`` (N,) bool, ``distill_feat`` (N, D) float32,
    ``distill_prob`` (N, K) float32 and ``distill_valid`` (N,) bool. With sparse labels, the
    ``target`` of every unlabelled point is :data:`~terraseg.training.data.IGNORE_INDEX`.
    The random draws are those of :class:`ScanSamples` (same augmentation for the same seed).

    Args:
        base: the engine's training samples (frames, spec, augmentation, seed are taken from it).
        sparse: the run's label masks, or None (every label).
        regions: per-scan regions and boundaries, or None.
        targets: callable ``index -> ScanTargets`` (distillation), or None.
    """

    def __init__(self, base: ScanSamples, sparse: SparseLabels | None = None, regions: RegionCache | None = None,
                 targets: Any = None) -> None:
        super().__init__(base.frames, base.ontology, base.spec, base.train, base.augment, base.seed)
        if base.spec.arch != "randlanet":
            raise ConfigError(f"label-efficient training runs on per-point networks (randlanet), not {base.spec.arch}")
        self.sparse = sparse
        self.regions = regions
        self.targets = targets

    def __getitem__(self, index: int) -> dict[str, Any]:
        from terraseg.models.points.randla_data import randla_inputs

        f = self.frames[index]
        rng = self.rng(index)
        s = self.spec
        raw = np.asarray(f.points, dtype=np.float32)
        tagged = f.replace(points=np.concatenate([raw, np.arange(len(raw), dtype=np.float32)[:, None]], axis=1))
        pts, lab = scan_arrays(tagged, self.ontology)
        if self.augment is not None:
            pts, lab, _ = self.augment(pts, lab, rng)
        targets = self.targets(index) if self.targets is not None else None
        if self.train and s.max_points is not None:
            if targets is not None and len(pts) > s.max_points:
                pts, lab = crop_around_targets(pts, lab, s.max_points, targets, rng)
            else:
                pts, lab = spatial_crop(pts, lab, s.max_points, rng)
        src = pts[:, -1].astype(np.int64)
        pts = pts[:, :-1]
        if self.sparse is not None:
            labelled = self.sparse.mask(str(f.frame_id), len(raw))[src]
            lab = np.where(labelled, lab, IGNORE_INDEX)
        where = str(f.source.get("points", f.frame_id))
        sample = randla_inputs(pts[:, :3], pts[:, :s.in_channels], k=s.k, ratios=s.ratios, seed=rng, source=where)
        sample["target"] = torch.from_numpy(np.ascontiguousarray(lab, dtype=np.int64))
        sample["index"] = int(index)
        sample["point_index"] = torch.from_numpy(src)
        if self.regions is not None:
            sample["regions"] = torch.from_numpy(self.regions.regions[index][src].astype(np.int64))
            sample["boundary"] = torch.from_numpy(self.regions.boundary[index][src])
        if targets is not None:
            feats, probs, valid = targets.gather(src)
            sample["distill_feat"] = torch.from_numpy(feats)
            if probs is not None:
                sample["distill_prob"] = torch.from_numpy(probs)
            sample["distill_valid"] = torch.from_numpy(valid)
        return sample


def crop_around_targets(points: np.ndarray, labels: np.ndarray, n: int, targets: Any,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~terraseg.training.data.spatial_crop` centred on a random point that has a teacher
    target (distillation: a forward camera sees a wedge of the scan, and a crop behind it would
    have nothing to learn). ``points``' last column is the point index in the scan as read."""
    src = points[:, -1].astype(np.int64)
    seen = np.zeros(targets.num_points, dtype=bool)
    seen[targets.seen] = True
    cand = np.flatnonzero(seen[src])
    if not len(cand):
        return spatial_crop(points, labels, n, rng)
    from scipy.spatial import cKDTree

    centre = points[int(cand[rng.integers(0, len(cand))]), :3]
    _, idx = cKDTree(points[:, :3]).query(centre, k=n)
    idx = rng.permutation(np.asarray(idx, dtype=np.int64))
    return points[idx], labels[idx]
