"""From per-pixel predictions of a range image to a label for every point of the scan.

A range image holds one point per pixel (the nearest); the others either share a pixel with a
nearer point (spherical projection of an unorganised cloud: 21 % of a SemanticKITTI HDL-64E
scan) or have no pixel (outside the range limits, or outside the field of view with
``out_of_fov="drop"``). Reading the pixel's label for all of them smears foreground labels onto
the background behind it. RangeNet++ (Milioto et al. 2019) and SalsaNext therefore re-label
points by a k-nearest-neighbour vote in the range image. :func:`points_from_pixels` does:

- **pixel owners** (the point behind a pixel) take the pixel's prediction unchanged;
- **points sharing a pixel** (``method="range"``, the default): RangeNet++'s range-image kNN.
  The candidates are the filled pixels of the ``search x search`` window around the point's
  pixel (columns wrap around, rows do not); the distance is ``|range_pixel - range_point|``
  times ``1 - g``, where ``g`` is the normalised ``search x search`` Gaussian (``sigma``
  pixels) centred on the point's pixel. The ``knn`` nearest candidates whose distance is at
  most ``cutoff`` vote, one vote each; ties go to the lower class id. Unlike RangeNet++, the
  centre pixel keeps its owner's range (RangeNet++ substitutes the query's own range, which
  always gives the owner's label a free vote at distance 0): a point 5 m behind a pole does not
  vote for "pole". ``method="kdtree"`` votes among the ``knn`` nearest pixel owners in 3-D
  (Euclidean distance <= ``cutoff`` metres) instead;
- **points without a pixel**: the same vote among pixel owners in 3-D (k-d tree, this module's
  only use of :mod:`terraseg.geometry.neighbors` on the default path);
- **no voter within the cutoff**: the point's own pixel's prediction, or for points without a
  pixel the nearest pixel owner's, however far.

Why the range-image search is the default, measured on SemanticKITTI 00/000000 (HDL-64E,
``velodyne-hdl64e`` projection: 97,023 pixel owners, 26,366 points sharing a pixel) with
*oracle* pixel labels (every pixel carries its owner's ground-truth label; see
``benchmarks/bench_models_points.py``), accuracy on the points sharing a pixel:

=================================  ========  ===============
method                             accuracy  call time
=================================  ========  ===============
own pixel's label (no kNN)         84.9 %    -
``range`` (this module)            92.0 %    ~65 ms
RangeNet++ exact (centre at 0 m)   91.6 %    -
``kdtree``                         92.9 %    ~115 ms
=================================  ========  ===============

(call time: the whole :func:`points_from_pixels` call, CPU seconds on a shared 2-core Xeon.)
The two methods agree on 94.7 % of those points; over the whole scan the difference is 0.2
points of accuracy (98.3 % against 98.5 %) for about half the time, which matters next to a
range network's ~100 ms budget. The k-d tree stays available (``method="kdtree"``) when the
last point of accuracy matters more than the time.

Probabilities of voted points are the mean of the voters' probabilities, so a voted label can
differ from the argmax of its probabilities when the vote and the mean disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.geometry.neighbors import build_index, knn
from terraseg.geometry.range_image import RangeImage

Method = Literal["range", "kdtree"]

SOURCE_NONE = 0
"""The point has no return (zero or non-finite coordinates): label ``fill``, probabilities 0."""
SOURCE_NETWORK = 1
"""The network predicted the point itself (it owns its pixel; every valid point for RandLA-Net)."""
SOURCE_VOTE = 2
"""Labelled by the kNN vote of its neighbours."""
SOURCE_FALLBACK = 3
"""No neighbour within the cutoff: its pixel's prediction, or the nearest pixel owner's."""


@dataclass(frozen=True)
class KNNPost:
    """kNN post-processing settings (RangeNet++ / SalsaNext defaults).

    Attributes:
        knn: voters per point.
        search: side of the square pixel window searched (odd).
        sigma: standard deviation in pixels of the Gaussian that weights window distances.
        cutoff: largest distance of a voter: weighted range difference in metres (``range``) or
            3-D distance in metres (``kdtree`` and points without a pixel).
        method: ``"range"`` (range-image window) or ``"kdtree"`` for points sharing a pixel.
    """

    knn: int = 5
    search: int = 5
    sigma: float = 1.0
    cutoff: float = 1.0
    method: Method = "range"

    def __post_init__(self) -> None:
        if int(self.knn) != self.knn or self.knn < 1:
            raise ConfigError(f"kNN post-processing: knn must be a positive integer, got {self.knn}")
        if int(self.search) != self.search or self.search < 1 or self.search % 2 == 0:
            raise ConfigError(f"kNN post-processing: search must be a positive odd integer, got {self.search}")
        if not self.sigma > 0 or not self.cutoff > 0:
            raise ConfigError(f"kNN post-processing: sigma and cutoff must be > 0, got {self.sigma}, {self.cutoff}")
        if self.method not in ("range", "kdtree"):
            raise ConfigError(f"kNN post-processing: method must be 'range' or 'kdtree', got {self.method!r}")


def inverse_gaussian_window(search: int, sigma: float) -> np.ndarray:
    """(search * search,) row-major weights ``1 - g`` with ``g`` the normalised Gaussian kernel
    (RangeNet++ ``get_gaussian_kernel``): about 0.84 at the centre of a 5 x 5, sigma 1 window,
    close to 1 at its corners."""
    ax = np.arange(search, dtype=np.float64) - (search - 1) / 2
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    return (1.0 - g / g.sum()).ravel()


def _vote(labels: np.ndarray, ok: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote per row of (M, k) candidate labels where ``ok``: (winner (M,) int64, has (M,) bool)."""
    m, k = labels.shape
    rows = np.repeat(np.arange(m, dtype=np.int64), k)
    table = np.bincount(rows * num_classes + labels.ravel(), weights=ok.ravel().astype(np.float64),
                        minlength=m * num_classes).reshape(m, num_classes)
    return np.argmax(table, axis=1), ok.any(axis=1)


def _mean_probs(probs: np.ndarray, cand: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """(M, C) mean of ``probs[cand]`` over the ``ok`` candidates (rows without any: zeros)."""
    w = ok.astype(np.float32)
    cnt = w.sum(axis=1, keepdims=True)
    out = np.einsum("mk,mkc->mc", w, probs[cand])
    np.divide(out, cnt, out=out, where=cnt > 0)
    return out


def range_window_candidates(image: RangeImage, query: np.ndarray, query_range: np.ndarray, post: KNNPost
                            ) -> tuple[np.ndarray, np.ndarray]:
    """The ``knn`` nearest filled pixels of each query point in its range-image window.

    Args:
        image: the range image.
        query: (M,) int64 indices of points that have a pixel.
        query_range: (M,) float range in metres of those points.
        post: window size, Gaussian sigma, ``knn`` and ``cutoff``.

    Returns:
        ``(pixels, ok)``: (M, k) int64 linear pixel indices (``row * W + col``) and (M, k) bool,
        True for candidates that are filled and within the cutoff; ``k = min(knn, search**2)``.
    """
    h, w = image.shape
    half = post.search // 2
    # range image padded with `half` rows of +inf above and below; empty pixels are +inf too, so
    # their distance is inf without any masking
    padded = np.full((h + 2 * half, w), np.inf, dtype=np.float32)
    padded[half:half + h] = np.where(image.mask, image.range, np.float32(np.inf))
    dr, dc = (a.ravel() for a in np.meshgrid(np.arange(half * 2 + 1), np.arange(-half, half + 1), indexing="ij"))
    lin = (image.point_row[query][:, None] + dr[None, :]) * w + np.mod(image.point_col[query][:, None] + dc[None, :], w)
    dist = padded.ravel()[lin]
    dist -= np.asarray(query_range, dtype=np.float32)[:, None]
    np.abs(dist, out=dist)
    dist *= inverse_gaussian_window(post.search, post.sigma).astype(np.float32)[None, :]
    k = min(post.knn, post.search * post.search)
    if k < dist.shape[1]:
        sel = np.argpartition(dist, k - 1, axis=1)[:, :k]
        dist = np.take_along_axis(dist, sel, axis=1)
        lin = np.take_along_axis(lin, sel, axis=1)
    ok = dist <= post.cutoff
    lin -= half * w  # back to the unpadded image (candidates outside it are never ok)
    np.clip(lin, 0, h * w - 1, out=lin)
    return lin, ok


def points_from_pixels(image: RangeImage, pixel_labels: np.ndarray, pixel_probs: np.ndarray | None,
                       xyz: np.ndarray, valid: np.ndarray, post: KNNPost = KNNPost(), fill: int = 0
                       ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Labels and probabilities for every point of a scan from per-pixel predictions.

    Args:
        image: the range image the predictions belong to (N points, H x W pixels).
        pixel_labels: (H, W) integer labels in ``[0, C)``.
        pixel_probs: (H, W, C) float class probabilities, or None for labels only (the
            returned probabilities are then None; votes count labels either way).
        xyz: (N, 3) float point coordinates in metres (sensor frame).
        valid: (N,) bool, points with a return (finite, non-zero); the others get ``fill``.
        post: kNN settings.
        fill: label of points without a return.

    Returns:
        ``(labels (N,) int64, probabilities (N, C) float32 or None, source (N,) uint8)``, with source
        one of :data:`SOURCE_NONE`, :data:`SOURCE_NETWORK`, :data:`SOURCE_VOTE`,
        :data:`SOURCE_FALLBACK`.
    """
    n = image.num_points
    h, w = image.shape
    probs_shape = None if pixel_probs is None else pixel_probs.shape
    if pixel_labels.shape != (h, w) or (pixel_probs is not None and (pixel_probs.ndim != 3
                                                                     or pixel_probs.shape[:2] != (h, w))):
        raise DataError(f"points_from_pixels: predictions {pixel_labels.shape} / {probs_shape} do not match "
                        f"the {h} x {w} range image")
    if len(xyz) != n or len(valid) != n:
        raise DataError(f"points_from_pixels: {len(xyz)} coordinates and {len(valid)} flags for {n} points")
    flat_lab = pixel_labels.ravel().astype(np.int64, copy=False)
    if pixel_probs is not None:
        c = pixel_probs.shape[2]
        flat_prob = np.ascontiguousarray(pixel_probs.reshape(h * w, c), dtype=np.float32)
        probs: np.ndarray | None = np.zeros((n, c), dtype=np.float32)
    else:
        c = int(flat_lab.max()) + 1 if flat_lab.size else 1  # votes only need the ids that occur
        flat_prob, probs = None, None
    labels = np.full(n, fill, dtype=np.int64)
    source = np.zeros(n, dtype=np.uint8)

    has_px = image.has_pixel & valid
    lin = np.where(has_px, image.point_row * w + image.point_col, 0)
    owner = has_px & (image.index.ravel()[lin] == np.arange(n))
    own = np.flatnonzero(owner)
    labels[own] = flat_lab[lin[own]]
    if probs is not None:
        probs[own] = flat_prob[lin[own]]
    source[own] = SOURCE_NETWORK
    if len(own) == 0:
        return labels, probs, source  # an empty image: nothing to vote from

    sharers = np.flatnonzero(has_px & ~owner)
    no_px = np.flatnonzero(valid & ~image.has_pixel)
    need_tree = len(no_px) > 0 or (len(sharers) > 0 and post.method == "kdtree")
    tree = build_index(xyz[own], "pixel owners") if need_tree else None

    def tree_candidates(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(M, knn) owner pixels and ok flags of the 3-D neighbours of points q."""
        assert tree is not None
        _, nb = knn(xyz[q], tree, k=post.knn, max_distance=post.cutoff)
        ok = nb >= 0
        return lin[own[np.where(ok, nb, 0)]], ok

    def vote(q: np.ndarray, cand_pixels: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Label the points q that have a voter; return the rest."""
        win, has = _vote(np.where(ok, flat_lab[cand_pixels], 0), ok, c)
        voted = q[has]
        labels[voted] = win[has]
        if probs is not None:
            probs[voted] = _mean_probs(flat_prob, cand_pixels[has], ok[has])
        source[voted] = SOURCE_VOTE
        return q[~has]

    def fall_back(q: np.ndarray, pixels: np.ndarray) -> None:
        labels[q] = flat_lab[pixels]
        if probs is not None:
            probs[q] = flat_prob[pixels]
        source[q] = SOURCE_FALLBACK

    if len(sharers):
        if post.method == "range":
            q = xyz[sharers].astype(np.float64)
            pix, ok = range_window_candidates(image, sharers, np.sqrt(np.einsum("ij,ij->i", q, q)), post)
        else:
            pix, ok = tree_candidates(sharers)
        rest = vote(sharers, pix, ok)
        fall_back(rest, lin[rest])
    if len(no_px):
        rest = vote(no_px, *tree_candidates(no_px))
        if len(rest):
            assert tree is not None
            _, nearest = knn(xyz[rest], tree, k=1)
            fall_back(rest, lin[own[nearest[:, 0]]])
    return labels, probs, source
