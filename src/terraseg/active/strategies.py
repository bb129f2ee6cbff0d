"""Query strategies: a closed table of name -> function over one frame's arrays.

Every strategy has the signature ``fn(ctx, labelled, budget, options) -> indices``: ``ctx`` is
a :class:`FrameContext` (the frame's per-point arrays), ``labelled`` the (N,) bool mask of items
labelled in earlier rounds, ``budget`` the exact number of items to return. It returns exactly
``budget`` distinct, previously unlabelled item indices (checked by :func:`select`).

=================  ===========================================================================
name               what it ranks (ties: see each; always finally the lower index)
=================  ===========================================================================
``random``         uniform sample, seeded by ``options.seed`` and the frame name
``confidence``     lowest ensemble confidence ``max (p2d + p3d) / 2`` first
``margin``         lowest summed top-2 margin (2D + 3D) first
``entropy``        highest summed softmax entropy (2D + 3D) first
``knn_entropy``    highest feature-space kNN label entropy (2D + 3D, ``k = 4``), ties by
                   summed softmax entropy (the reference's "feature entropy")
``regions``        the budget spread over image regions (SLIC, SAM or given) by area, the
                   most uncertain points inside each (``options.region_score``, default
                   ``knn_entropy``: the reference's Omni-Query with SAM / SLIC)
``voxel_entropy``  Annotator's VCD: 0.25 m voxels of highest predicted-label entropy
``redal``          ReDAL: region entropy + surface variation, diversity over feature clusters
=================  ===========================================================================

With one modality only (``probs_2d`` or ``probs_3d``) the scores use that one.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from terraseg.active import regions as _regions
from terraseg.active.budget import budget_count
from terraseg.active.redal import select_redal
from terraseg.active.scores import (
    as_numpy,
    check_probs,
    ensemble_labels,
    ensemble_probs,
    knn_label_entropy,
    max_confidence,
    rank,
    softmax_entropy,
    summed,
    top2_margin,
)
from terraseg.active.voxels import select_voxels
from terraseg.errors import ConfigError, DataError

RegionSource = Literal["auto", "slic", "sam", "given"]
RegionScore = Literal["knn_entropy", "entropy", "margin", "confidence"]


@dataclass(frozen=True)
class FrameContext:
    """The arrays of one frame that strategies read; N items (in-view points, or pixels).

    Every per-item array has N rows; which ones a strategy needs is listed in its doc. Arrays
    may be numpy arrays or torch tensors (features stay on their device for the kNN search).

    Attributes:
        name: frame name (used in messages, files and the random seed).
        probs_2d: (N, C) softmax of the 2D network at the items.
        probs_3d: (N, C) softmax of the 3D network at the items.
        feats_2d: (N, D2) 2D network features at the items (the point's pixel).
        feats_3d: (N, D3) 3D network features.
        xyz: (N, 3) point coordinates in metres (sensor frame).
        pixels: (N, 2) int ``(col, row)`` image pixel of each item (``Projection.pixel``).
        image: (H, W, 3) uint8 camera image (for SLIC / SAM regions and previews).
        image_regions: precomputed image regions: (H, W) int label map (``< 0`` = none) or
            (R, H, W) bool masks, e.g. SAM masks computed elsewhere.
        regions: (N,) int per-item region ids (supervoxels) for ``redal``; ``< 0`` = none.
        surface_variation: (N,) ``lambda_min / sum(lambda)`` of a local PCA, for ``redal``.
        grid_shape: ``(H, W)`` when the items are the pixels of an image (row-major, item
            ``i`` is pixel ``(i % W, i // W)``), else None.
        image_path, scan_path: source files, recorded in the round for labelling previews.
    """

    name: str
    probs_2d: Any = None
    probs_3d: Any = None
    feats_2d: Any = None
    feats_3d: Any = None
    xyz: Any = None
    pixels: Any = None
    image: Any = None
    image_regions: Any = None
    regions: Any = None
    surface_variation: Any = None
    grid_shape: tuple[int, int] | None = None
    image_path: str | None = None
    scan_path: str | None = None
    n: int = field(init=False)

    def __post_init__(self) -> None:
        lengths: dict[str, int] = {}
        for key in ("probs_2d", "probs_3d", "feats_2d", "feats_3d", "xyz", "pixels", "regions", "surface_variation"):
            v = getattr(self, key)
            if v is None:
                continue
            shape = tuple(v.shape) if hasattr(v, "shape") else np.shape(v)
            if len(shape) == 0:
                raise DataError(f"frame {self.name}: {key} must be an array with one row per item, got a scalar")
            lengths[key] = int(shape[0])
        if self.grid_shape is not None:
            lengths["grid_shape"] = int(self.grid_shape[0]) * int(self.grid_shape[1])
        if not lengths:
            raise DataError(f"frame {self.name}: no per-point arrays given (probabilities, features or coordinates)")
        if len(set(lengths.values())) > 1:
            desc = ", ".join(f"{k} {v}" for k, v in lengths.items())
            raise DataError(f"frame {self.name}: per-point arrays have different lengths ({desc})")
        n = next(iter(lengths.values()))
        if n == 0:
            raise DataError(f"frame {self.name}: no points in the camera's view (0 in-view items); "
                            "nothing can be queried")
        for key in ("probs_2d", "probs_3d"):
            v = getattr(self, key)
            if v is not None:
                object.__setattr__(self, key, check_probs(v, f"frame {self.name}: {key}"))
        if self.probs_2d is not None and self.probs_3d is not None and self.probs_2d.shape != self.probs_3d.shape:
            raise DataError(f"frame {self.name}: probs_2d {self.probs_2d.shape} and probs_3d "
                            f"{self.probs_3d.shape} differ in shape")
        if self.pixels is not None:
            pix = as_numpy(self.pixels, "pixels")
            if pix.ndim != 2 or pix.shape[1] != 2 or pix.dtype.kind not in "ui":
                raise DataError(f"frame {self.name}: pixels must be (N, 2) integer (col, row), got "
                                f"shape {pix.shape} dtype {pix.dtype}")
            object.__setattr__(self, "pixels", pix)
        if self.xyz is not None:
            xyz = as_numpy(self.xyz, "xyz")
            if xyz.ndim != 2 or xyz.shape[1] < 3:
                raise DataError(f"frame {self.name}: xyz must be (N, 3), got shape {xyz.shape}")
            object.__setattr__(self, "xyz", xyz)
        object.__setattr__(self, "n", n)

    @classmethod
    def for_image(cls, name: str, probs: Any, *, channels_first: bool = True, image: Any = None,
                  feats: Any = None, image_regions: Any = None, image_path: str | None = None) -> FrameContext:
        """A context whose items are the pixels of an image (pixel budgets).

        Args:
            probs: (C, H, W) softmax (or (H, W, C) with ``channels_first=False``).
            feats: optional (D, H, W) / (H, W, D) features, same layout as ``probs``.
        """
        p = as_numpy(probs, "probs")
        if p.ndim != 3:
            raise DataError(f"frame {name}: image probabilities must be 3-D, got shape {p.shape}")
        if channels_first:
            p = np.moveaxis(p, 0, -1)
        h, w, c = p.shape
        f = None
        if feats is not None:
            f = as_numpy(feats, "feats")
            f = (np.moveaxis(f, 0, -1) if channels_first else f).reshape(h * w, -1)
        rows, cols = np.divmod(np.arange(h * w, dtype=np.int64), w)
        return cls(name=name, probs_2d=p.reshape(h * w, c), feats_2d=f, pixels=np.stack([cols, rows], 1),
                   image=image, image_regions=image_regions, grid_shape=(h, w), image_path=image_path)

    @property
    def num_classes(self) -> int:
        p = self.probs_2d if self.probs_2d is not None else self.probs_3d
        if p is None:
            raise DataError(f"frame {self.name}: no class probabilities given")
        return int(p.shape[1])

    def need(self, *keys: str, strategy: str) -> None:
        """Raise one clear error naming the arrays ``strategy`` needs and the frame lacks."""
        missing = [k for k in keys if getattr(self, k) is None]
        if missing:
            raise DataError(f"frame {self.name}: strategy {strategy!r} needs {', '.join(missing)}")

    def need_probs(self, strategy: str) -> None:
        if self.probs_2d is None and self.probs_3d is None:
            raise DataError(f"frame {self.name}: strategy {strategy!r} needs probs_2d and/or probs_3d")


@dataclass(frozen=True)
class StrategyOptions:
    """Settings of the strategies (defaults are the references').

    Attributes:
        seed: random seed (``random``; k-means of ``redal``).
        k: neighbours of the kNN entropy, the point itself included (ActiveSFDA ``n_neighbors``).
        region_source: ``auto`` (the context's ``image_regions`` when given, else SLIC), ``slic``,
            ``sam`` (``image_regions``, else ``mask_generator``, else ``sam_checkpoint``) or ``given``.
        region_score: score ranking points inside a region.
        slic_segments, slic_compactness: SLIC parameters (reference: 35 segments).
        mask_generator: callable image -> masks (see :data:`terraseg.active.regions.MaskGenerator`).
        sam_checkpoint, sam_model_type: build SAM's automatic mask generator from a local file.
        mask_dilation: 3x3 dilations applied to SAM masks (the reference's prompted SAM: 1).
        voxel_size: VCD voxel edge in metres.
        redal_alpha, redal_gamma, redal_clusters, redal_decay: ReDAL weights, k-means clusters
            and importance decay.
        random_fraction: share of every frame's budget, in [0, 1], drawn uniformly at random
            before the strategy chooses the rest (a hedge against a source model that is
            confidently wrong about whole classes, which no uncertainty score ever asks about; not
            in the reference). ``round(random_fraction * budget)`` items; 0: the strategy alone.
    """

    seed: int = 0
    k: int = 4
    region_source: RegionSource = "auto"
    region_score: RegionScore = "knn_entropy"
    slic_segments: int = 35
    slic_compactness: float = 10.0
    mask_generator: Callable[[np.ndarray], Any] | None = None
    sam_checkpoint: str | None = None
    sam_model_type: str = "vit_h"
    mask_dilation: int = 0
    voxel_size: float = 0.25
    redal_alpha: float = 1.0
    redal_gamma: float = 0.05
    redal_clusters: int = 20
    redal_decay: float = 0.95
    random_fraction: float = 0.0

    def __post_init__(self) -> None:
        f = self.random_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= float(f) <= 1.0:
            raise ConfigError(f"random_fraction must be a number in [0, 1], got {f!r}")

    def to_dict(self) -> dict[str, Any]:
        """The options that can be written to a round file (callables are left out)."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "mask_generator"}
        d["mask_generator"] = None if self.mask_generator is None else getattr(self.mask_generator, "__name__", "callable")
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StrategyOptions:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown strategy option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in data.items() if k != "mask_generator"})


Strategy = Callable[[FrameContext, np.ndarray, int, StrategyOptions], np.ndarray]


# ------------------------------------------------------------------------- strategies
def _random(ctx: FrameContext, labelled: np.ndarray, budget: int, opts: StrategyOptions) -> np.ndarray:
    rng = np.random.default_rng([int(opts.seed) & 0xFFFFFFFF, zlib.crc32(ctx.name.encode())])
    free = np.flatnonzero(~labelled)
    return np.sort(rng.choice(free, size=budget, replace=False)).astype(np.int64)


def _ranked(ctx: FrameContext, labelled: np.ndarray, budget: int, primary: np.ndarray,
            secondary: np.ndarray | None = None) -> np.ndarray:
    return np.sort(rank(primary, ~labelled, secondary)[:budget])


def _confidence(ctx: FrameContext, labelled: np.ndarray, budget: int, opts: StrategyOptions) -> np.ndarray:
    ctx.need_probs("confidence")
    return _ranked(ctx, labelled, budget, -max_confidence(ensemble_probs(ctx.probs_2d, ctx.probs_3d)))


def _margin(ctx: FrameContext, labelled: np.ndarray, budget: int, opts: StrategyOptions) -> np.ndarray:
    ctx.need_probs("margin")
    return _ranked(ctx, labelled, budget, -summed(top2_margin, ctx.probs_2d, ctx.probs_3d))


def _entropy(ctx: FrameContext, labelled: np.ndarray, budget: int, opts: StrategyOptions) -> np.ndarray:
    ctx.need_probs("entropy")
    return _ranked(ctx, labelled, budget, summed(softmax_entropy, ctx.probs_2d, ctx.probs_3d))


def knn_entropy_scores(ctx: FrameContext, k: int = 4, strategy: str = "knn_entropy") -> np.ndarray:
    """(N,) the reference's feature entropy: kNN label entropy in 2D plus in 3D feature space.

    The labels counted are the 2D+3D ensemble predictions; each network's features give one
    entropy (bits), and the two are summed (one network only: its own).
    """
    ctx.need_probs(strategy)
    if ctx.feats_2d is None and ctx.feats_3d is None:
        raise DataError(f"frame {ctx.name}: strategy {strategy!r} needs feats_2d and/or feats_3d")
    labels = ensemble_labels(ctx.probs_2d, ctx.probs_3d)
    return sum(knn_label_entropy(f, labels, ctx.num_classes, k)  # type: ignore[return-value]
               for f in (ctx.feats_2d, ctx.feats_3d) if f is not None)


def _knn_entropy(ctx: FrameContext, labelled: np.ndarray, budget: int, opts: StrategyOptions) -> np.ndarray:
    primary = knn_entropy_scores(ctx, opts.k)
    return _ranked(ctx, labelled, budget, primary, summed(softmax_entropy, ctx.probs_2d, ctx.probs_3d))


def point_scores(ctx: FrameContext, score: str, opts: StrategyOptions,
                 strategy: str = "regions") -> tuple[np.ndarray, np.ndarray | None]:
    """(primary, secondary) per-point scores, higher = label first, for a named score."""
    ctx.need_probs(strategy)
    ent = summed(softmax_entropy, ctx.probs_2d, ctx.probs_3d)
    if score == "knn_entropy":
        return knn_entropy_scores(ctx, opts.k, strategy), ent
    if score == "entropy":
        return ent, None
    if score == "margin":
        return -summed(top2_margin, ctx.probs_2d, ctx.probs_3d), None
    if score == "confidence":
        return -max_confidence(ensemble_probs(ctx.probs_2d, ctx.probs_3d)), None
    raise ConfigError(f"unknown region score {score!r}; known: knn_entropy, entropy, margin, confidence")


def image_regions_of(ctx: FrameContext, opts: StrategyOptions) -> np.ndarray:
    """The frame's image regions: an (H, W) label map or (R, H, W) masks (``region_source``)."""
    source = opts.region_source
    if source not in ("auto", "slic", "sam", "given"):
        raise ConfigError(f"unknown region source {source!r}; known: auto, slic, sam, given")
    if ctx.image_regions is not None and source in ("auto", "given", "sam"):
        regions = as_numpy(ctx.image_regions, "image_regions")
        return _regions.dilate_masks(regions, opts.mask_dilation) if regions.ndim == 3 else regions
    if source == "given":
        raise DataError(f"frame {ctx.name}: region_source 'given' but the frame has no image_regions")
    ctx.need("image", strategy=f"regions ({source})")
    image = np.asarray(ctx.image)
    if source in ("auto", "slic"):
        return _regions.slic_regions(image, opts.slic_segments, opts.slic_compactness)
    gen = opts.mask_generator
    if gen is None:
        if opts.sam_checkpoint is None:
            raise ConfigError("region_source 'sam' needs precomputed image_regions, a mask_generator "
                              "or a sam_checkpoint")
        gen = _sam_generator(opts.sam_checkpoint, opts.sam_model_type)
    masks = _regions.masks_from_output(gen(image), image.shape[:2], f"frame {ctx.name}: mask generator")
    return _regions.dilate_masks(masks, opts.mask_dilation)


_SAM_CACHE: dict[tuple[str, str], Callable[[np.ndarray], Any]] = {}


def _sam_generator(checkpoint: str, model_type: str) -> Callable[[np.ndarray], Any]:
    key = (str(checkpoint), model_type)
    if key not in _SAM_CACHE:  # building SAM takes seconds: once per process and checkpoint
        _SAM_CACHE[key] = _regions.sam_mask_generator(checkpoint, model_type)
    return _SAM_CACHE[key]


def _regions_strategy(ctx: FrameContext, labelled: np.ndarray, budget: int, opts: StrategyOptions) -> np.ndarray:
    ctx.need("pixels", strategy="regions")
    primary, secondary = point_scores(ctx, opts.region_score, opts)
    order = rank(primary, None, secondary)
    members, areas = _regions.region_membership(image_regions_of(ctx, opts), ctx.pixels)
    return _regions.select_in_regions(order, members, areas, labelled, budget)


def _voxel_entropy(ctx: FrameContext, labelled: np.ndarray, budget: int, opts: StrategyOptions) -> np.ndarray:
    ctx.need("xyz", strategy="voxel_entropy")
    ctx.need_probs("voxel_entropy")
    labels = ensemble_labels(ctx.probs_2d, ctx.probs_3d)
    return select_voxels(ctx.xyz, labels, ctx.num_classes, labelled, budget,
                         point_score=summed(softmax_entropy, ctx.probs_2d, ctx.probs_3d), voxel_size=opts.voxel_size)


def _redal(ctx: FrameContext, labelled: np.ndarray, budget: int, opts: StrategyOptions) -> np.ndarray:
    ctx.need("regions", strategy="redal")
    ctx.need_probs("redal")
    sv = None if ctx.surface_variation is None else as_numpy(ctx.surface_variation, "surface_variation")
    return select_redal(ensemble_probs(ctx.probs_2d, ctx.probs_3d), as_numpy(ctx.regions, "regions"), labelled,
                        budget, sv, [f for f in (ctx.feats_2d, ctx.feats_3d) if f is not None],
                        opts.redal_alpha, opts.redal_gamma, opts.redal_clusters, opts.redal_decay, opts.seed)


STRATEGIES: dict[str, Strategy] = {
    "random": _random,
    "confidence": _confidence,
    "margin": _margin,
    "entropy": _entropy,
    "knn_entropy": _knn_entropy,
    "regions": _regions_strategy,
    "voxel_entropy": _voxel_entropy,
    "redal": _redal,
}
"""The closed table of strategies (module doc)."""


def check_strategy(name: str) -> Strategy:
    """The strategy function of ``name``, or one :class:`ConfigError` listing the known names."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(f"unknown query strategy {name!r}; known: {', '.join(STRATEGIES)}") from None


def check_labelled(labelled: Any, n: int, name: str) -> np.ndarray:
    """(n,) bool labelled mask, or one :class:`DataError` naming the frame."""
    if labelled is None:
        return np.zeros(n, dtype=bool)
    m = as_numpy(labelled, "labelled")
    if m.shape != (n,) or m.dtype != bool:
        raise DataError(f"frame {name}: labelled mask must be ({n},) bool, got shape {m.shape} dtype {m.dtype}")
    return m


def select(strategy: str, ctx: FrameContext, budget: int, labelled: Any = None,
           options: StrategyOptions | None = None) -> np.ndarray:
    """Exactly ``budget`` item indices of ``ctx`` chosen by ``strategy``, none already labelled.

    Args:
        strategy: a name of :data:`STRATEGIES`.
        ctx: the frame's arrays.
        budget: number of items (see :func:`terraseg.active.budget.budget_count`).
        labelled: (N,) bool mask of items labelled in earlier rounds (default none).
        options: strategy settings.

    Returns:
        (budget,) sorted int64 indices.
    """
    fn = check_strategy(strategy)
    lab = check_labelled(labelled, ctx.n, ctx.name)
    if int(budget) != budget or budget < 0:
        raise DataError(f"frame {ctx.name}: budget must be a non-negative integer, got {budget!r}")
    budget = int(budget)
    free = int((~lab).sum())
    if budget > free:
        raise DataError(f"frame {ctx.name}: the budget of {budget} items exceeds the {free} unlabelled "
                        f"items left (of {ctx.n})")
    if budget == 0:
        return np.zeros(0, dtype=np.int64)
    opts = options or StrategyOptions()
    n_random = int(round(float(opts.random_fraction) * budget)) if strategy != "random" else 0
    if n_random:
        picked = _random(ctx, lab, n_random, opts)
        rest = lab.copy()
        rest[picked] = True
        chosen = fn(ctx, rest, budget - n_random, opts) if budget > n_random else np.zeros(0, dtype=np.int64)
        idx = np.concatenate([picked, np.asarray(chosen, dtype=np.int64)])
    else:
        idx = np.asarray(fn(ctx, lab, budget, opts), dtype=np.int64)
    if len(idx) != budget or len(np.unique(idx)) != budget or lab[idx].any():  # pragma: no cover - a bug
        raise RuntimeError(f"strategy {strategy!r} returned {len(idx)} indices for a budget of {budget} "
                           f"on frame {ctx.name} (or repeated / labelled ones)")
    return np.sort(idx)


@dataclass(frozen=True)
class FrameSelection:
    """One frame's query: the chosen indices and the budget bookkeeping.

    Attributes:
        indices: (budget,) sorted int64 item indices.
        n: in-view items of the frame.
        budget: items asked for (``budget_count(percent, n)``).
        labelled_before, labelled_after: labelled items before / after this query.
    """

    name: str
    indices: np.ndarray
    n: int
    budget: int
    labelled_before: int
    labelled_after: int

    @property
    def fraction(self) -> float:
        """The real labelled fraction (0..1) of the frame after this query."""
        return self.labelled_after / self.n if self.n else 0.0


def query_frame(strategy: str, ctx: FrameContext, percent: float, labelled: Any = None,
                options: StrategyOptions | None = None) -> FrameSelection:
    """Query ``percent`` % of a frame's in-view items with ``strategy`` (budget rule of :mod:`.budget`)."""
    lab = check_labelled(labelled, ctx.n, ctx.name)
    budget = budget_count(percent, ctx.n)
    idx = select(strategy, ctx, budget, lab, options)
    before = int(lab.sum())
    return FrameSelection(ctx.name, idx, ctx.n, budget, before, before + budget)
