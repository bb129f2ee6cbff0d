"""Image regions for region-allocated queries: area-proportional budgets, SLIC and SAM regions.

The reference (ActiveSFDA's ``get_label_mask_by_feature_entropy_sam`` / ``_slic``) spreads a
frame's budget over image regions in proportion to their pixel area and takes the most
uncertain points inside each region. It floors each region's share and gives every region at
least one point, so its total drifts from the budget. Here the shares are apportioned with the
**largest-remainder** (Hamilton) method so they sum exactly to the budget:

1. region ``r`` of area ``A_r`` gets ``floor(B * A_r / sum A)`` (exact integer arithmetic);
2. the points left over go one each to the regions with the largest remainders
   ``B * A_r mod sum A``; equal remainders go to the larger region, then the lower region index;
3. a region cannot take more than its ``capacity`` (its unlabelled points): regions at capacity
   are fixed and the rest of the budget is apportioned again over the others.

Regions are either a partition of the image (an (H, W) int label map, SLIC's output, ``-1`` =
no region) or possibly overlapping boolean masks (R, H, W) (SAM's output). Areas are pixel
counts of the masks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from terraseg.errors import ConfigError, DataError

MaskGenerator = Callable[[np.ndarray], Any]
"""A callable mapping an (H, W, 3) uint8 image to masks: an (R, H, W) bool array, a list of
(H, W) bool arrays, or a list of dicts with a ``"segmentation"`` (H, W) bool entry (what
``segment_anything.SamAutomaticMaskGenerator.generate`` returns)."""


def allocate_by_area(areas: Sequence[int] | np.ndarray, total: int,
                     capacity: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """Split ``total`` into per-region counts proportional to ``areas`` (largest remainder).

    Args:
        areas: (R,) non-negative region areas (pixels).
        total: non-negative number of items to spread.
        capacity: (R,) most items each region can take (default unlimited).

    Returns:
        (R,) int64 counts, ``counts <= capacity``, summing to ``min(total, sum(capacity over
        regions with area > 0))``. Regions of zero area get nothing.
    """
    a = np.asarray(areas)
    if a.ndim != 1 or (a.size and (a.dtype.kind not in "ui" or a.min() < 0)):
        raise DataError(f"areas: expected (R,) non-negative integers, got shape {a.shape} dtype {a.dtype}")
    if int(total) != total or total < 0:
        raise DataError(f"total must be a non-negative integer, got {total!r}")
    a = [int(v) for v in a]
    r = len(a)
    if capacity is None:
        cap = [int(total)] * r
    else:
        c = np.asarray(capacity)
        if c.shape != (r,) or (c.size and (c.dtype.kind not in "ui" or c.min() < 0)):
            raise DataError(f"capacity: expected ({r},) non-negative integers, got shape {c.shape}")
        cap = [int(v) for v in c]
    counts = [0] * r
    active = [i for i in range(r) if a[i] > 0 and cap[i] > 0]
    left = min(int(total), sum(cap[i] for i in active))
    while left > 0 and active:
        s = sum(a[i] for i in active)
        share = {i: left * a[i] // s for i in active}
        rem = {i: left * a[i] % s for i in active}
        extra = left - sum(share.values())
        for i in sorted(active, key=lambda i: (-rem[i], -a[i], i))[:extra]:
            share[i] += 1
        full = [i for i in active if share[i] >= cap[i] - counts[i]]
        if not full:
            for i in active:
                counts[i] += share[i]
            break
        for i in full:  # fix the regions that hit their capacity, apportion the rest again
            left -= cap[i] - counts[i]
            counts[i] = cap[i]
        active = [i for i in active if i not in full]
    return np.asarray(counts, dtype=np.int64)


# ------------------------------------------------------------------------------ sources
def slic_regions(image: np.ndarray, n_segments: int = 35, compactness: float = 10.0,
                 sigma: float = 0.0) -> np.ndarray:
    """SLIC superpixels of an (H, W, 3) uint8 image as an (H, W) int32 label map (0-based).

    Defaults as in the reference (``skimage.segmentation.slic(image, n_segments=35)``; 35 is
    the average number of SAM masks per nuScenes image it reports).
    """
    try:
        from skimage.segmentation import slic
    except ImportError:  # pragma: no cover - scikit-image is a dependency
        raise ConfigError("SLIC regions need scikit-image: pip install scikit-image") from None
    img = _check_image(image)
    labels = slic(img, n_segments=int(n_segments), compactness=float(compactness), sigma=float(sigma),
                  start_label=0, channel_axis=-1)
    return labels.astype(np.int32)


def masks_from_output(out: Any, shape: tuple[int, int], where: str = "mask generator") -> np.ndarray:
    """Masks from a generator's output (see :data:`MaskGenerator`) as an (R, H, W) bool array."""
    if isinstance(out, np.ndarray):
        items: list[Any] = list(out) if out.ndim == 3 else [out]
    else:
        items = list(out)
    masks = []
    for i, m in enumerate(items):
        if isinstance(m, dict):
            if "segmentation" not in m:
                raise DataError(f"{where}: mask #{i} is a dict without a 'segmentation' entry")
            m = m["segmentation"]
        arr = np.asarray(m)
        if arr.shape != shape:
            raise DataError(f"{where}: mask #{i} has shape {arr.shape}, the image is {shape}")
        masks.append(arr.astype(bool))
    if not masks:
        return np.zeros((0, *shape), dtype=bool)
    return np.stack(masks)


def sam_mask_generator(checkpoint: str, model_type: str = "vit_h", device: str | None = None,
                       **generator_kwargs: Any) -> MaskGenerator:
    """A SAM automatic mask generator built from a local checkpoint (``segment_anything``).

    Nothing is downloaded: ``checkpoint`` is a file the user already has. Raises
    :class:`ConfigError` with the install line when ``segment_anything`` is not installed.
    """
    try:
        from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
    except ImportError:
        raise ConfigError("SAM masks need the segment_anything package "
                          "(pip install git+https://github.com/facebookresearch/segment-anything), "
                          "or pass precomputed masks / a mask-generator callable instead") from None
    from pathlib import Path

    if not Path(checkpoint).is_file():
        raise ConfigError(f"{checkpoint}: SAM checkpoint not found")
    if model_type not in sam_model_registry:
        raise ConfigError(f"unknown SAM model type {model_type!r}; known: {', '.join(sorted(sam_model_registry))}")
    import torch

    sam = sam_model_registry[model_type](checkpoint=str(checkpoint))
    sam.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return SamAutomaticMaskGenerator(sam, **generator_kwargs).generate  # type: ignore[no-any-return]


def dilate_masks(masks: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Each mask dilated by a 3x3 square ``iterations`` times (the reference does it once)."""
    if iterations <= 0 or len(masks) == 0:
        return masks
    from scipy.ndimage import binary_dilation

    st = np.ones((3, 3), dtype=bool)
    return np.stack([binary_dilation(m, structure=st, iterations=int(iterations)) for m in masks])


def _check_image(image: Any) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise DataError(f"image: expected (H, W, 3) uint8 RGB, got shape {img.shape} dtype {img.dtype}")
    return img


# ------------------------------------------------------------------------------ selection
def region_membership(regions: np.ndarray, pixels: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Points per region and region areas.

    Args:
        regions: (H, W) int label map (``< 0`` = no region) or (R, H, W) bool masks.
        pixels: (N, 2) int ``(col, row)`` pixel of each item inside the image.

    Returns:
        ``(members, areas)``: for each region the sorted int64 indices of the items whose pixel
        lies in it, and (R,) int64 pixel areas. A label map's regions are its non-negative
        labels in increasing order.
    """
    reg = np.asarray(regions)
    pix = np.asarray(pixels)
    col, row = pix[:, 0].astype(np.int64), pix[:, 1].astype(np.int64)
    if reg.ndim == 2:
        if reg.dtype.kind not in "ui":
            raise DataError(f"region map: expected integer labels, got dtype {reg.dtype}")
        h, w = reg.shape
        _check_pixels(col, row, h, w)
        ids, flat = np.unique(reg, return_inverse=True)
        flat = flat.reshape(reg.shape)
        areas_all = np.bincount(flat.ravel(), minlength=len(ids))
        keep = ids >= 0
        point_region = flat[row, col]
        order = np.argsort(point_region, kind="stable")
        bounds = np.searchsorted(point_region[order], np.arange(len(ids) + 1))
        members = [order[bounds[j]:bounds[j + 1]].astype(np.int64) for j in range(len(ids)) if keep[j]]
        return members, areas_all[keep].astype(np.int64)
    if reg.ndim == 3:
        masks = reg.astype(bool, copy=False)
        _, h, w = masks.shape
        _check_pixels(col, row, h, w)
        inside = masks[:, row, col]  # (R, N)
        return [np.flatnonzero(m).astype(np.int64) for m in inside], masks.reshape(len(masks), -1).sum(1).astype(np.int64)
    raise DataError(f"regions: expected an (H, W) label map or (R, H, W) masks, got shape {reg.shape}")


def _check_pixels(col: np.ndarray, row: np.ndarray, h: int, w: int) -> None:
    bad = (col < 0) | (col >= w) | (row < 0) | (row >= h)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"pixels: point {i} at (col {int(col[i])}, row {int(row[i])}) lies outside the "
                        f"{w} x {h} region image; pass only in-view points")


def select_in_regions(order: np.ndarray, members: list[np.ndarray], areas: np.ndarray,
                      labelled: np.ndarray, budget: int) -> np.ndarray:
    """Exactly ``budget`` unlabelled items spread over regions in proportion to their area.

    Args:
        order: every item index ranked best first (see :func:`terraseg.active.scores.rank`);
            within each region the best unlabelled items are taken.
        members: item indices of each region (overlaps allowed).
        areas: (R,) region areas in pixels.
        labelled: (N,) bool, items never to return.
        budget: items to return; at most the number of unlabelled items.

    Each region gets its :func:`allocate_by_area` share, capped by its unlabelled members. A
    share a region cannot fill because overlapping regions took its points first (regions are
    served in index order), and any budget no region can hold (masks that do not cover every
    point), is filled with the best remaining items inside some region, then anywhere.
    """
    n = len(labelled)
    free = ~np.asarray(labelled, dtype=bool)
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)  # rank of each item
    cand = [m[free[m]] for m in members]
    cand = [c[np.argsort(pos[c], kind="stable")] for c in cand]
    counts = allocate_by_area(areas, budget, np.asarray([len(c) for c in cand], dtype=np.int64))
    taken = np.zeros(n, dtype=bool)
    for c, k in zip(cand, counts):
        if k:
            c = c[~taken[c]][:k]
            taken[c] = True
    short = budget - int(taken.sum())
    if short > 0:
        in_some = np.zeros(n, dtype=bool)
        for m in members:
            in_some[m] = True
        for pool in (in_some, np.ones(n, dtype=bool)):
            rest = order[(free & pool & ~taken)[order]][:short]
            taken[rest] = True
            short -= len(rest)
            if short == 0:
                break
    return np.flatnonzero(taken).astype(np.int64)
