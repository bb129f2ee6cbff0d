"""Per-point 2D features fused over the views where each point is visible (OpenScene-style).

For every view, the points visible in it (:func:`terraseg.geometry.render.view_correspondence`:
inside the image minus a border, not occluded) read the view's feature map at their pixel
(bilinear, pixel centres aligned, so a stride-8 feature map is sampled where the full-resolution
pixel centre falls); a point's fused feature is the **mean over the views that see it**. Points
no view sees get zeros and ``count == 0``.

Feature maps may have any resolution ``(C, h, w)`` for a ``W x H`` view: the sampling position of
pixel coordinate ``u`` is ``(u + 0.5) / W`` of the map's width (and likewise for ``v``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from terraseg.errors import DataError
from terraseg.geometry.render import DEFAULT_BORDER, PinholeView, RenderedView, view_correspondence
from terraseg.geometry.transfer import DEFAULT_REL_TOLERANCE, DEFAULT_TOLERANCE
from terraseg.label_efficient.teacher import TeacherOutput


@dataclass(frozen=True)
class FusedFeatures:
    """Result of :func:`fuse_view_features`.

    Attributes:
        features: ``(N, C)`` float32 mean feature over the views that see each point (0 where none).
        count: ``(N,)`` int64 number of views that see each point.
    """

    features: Tensor
    count: Tensor

    @property
    def valid(self) -> Tensor:
        """``(N,)`` bool, seen by at least one view."""
        return self.count > 0


def sample_feature_map(feature_map: Tensor, uv: Tensor | np.ndarray, image_size: tuple[int, int]) -> Tensor:
    """Bilinear samples ``(M, C)`` of a ``(C, h, w)`` feature map at ``(M, 2)`` pixel coordinates of a
    ``(width, height)`` image (integer = pixel centre; edges clamp)."""
    if feature_map.dim() != 3:
        raise DataError(f"feature map: expected (C, h, w), got shape {tuple(feature_map.shape)}")
    w, h = image_size
    pts = torch.as_tensor(np.asarray(uv, dtype=np.float32) if isinstance(uv, np.ndarray) else uv,
                          dtype=torch.float32, device=feature_map.device)
    if pts.numel() == 0:
        return feature_map.new_zeros((0, feature_map.shape[0]))
    grid = torch.stack([(pts[:, 0] + 0.5) / w * 2 - 1, (pts[:, 1] + 0.5) / h * 2 - 1], dim=1)
    out = F.grid_sample(feature_map[None].float(), grid[None, None], mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out[0, :, 0].t()


def fuse_view_features(xyz: np.ndarray, views: Sequence[PinholeView | RenderedView],
                       feature_maps: Tensor | Sequence[Tensor], border: int = DEFAULT_BORDER,
                       tolerance: float = DEFAULT_TOLERANCE, rel_tolerance: float = DEFAULT_REL_TOLERANCE,
                       depths: Sequence[np.ndarray | None] | None = None,
                       extents: Sequence[tuple[int, int]] | None = None) -> FusedFeatures:
    """Mean 2D feature of every point over the views where it is visible.

    Args:
        xyz: (N, 3) points in the cloud's frame (metres).
        views: one :class:`~terraseg.geometry.render.PinholeView` or
            :class:`~terraseg.geometry.render.RenderedView` per feature map; a rendered view's
            depth is the occlusion reference (a plain view uses ``depths`` or, without one, the
            points' own z-buffer).
        feature_maps: ``(V, C, h, w)`` tensor or V tensors ``(C, h, w)`` (e.g. a teacher's
            penultimate features of each view's image).
        border: image-border pixels whose features are not used.
        tolerance, rel_tolerance: occlusion slack (metres, relative).
        depths: optional per-view (H, W) depth images for plain views (e.g. a depth camera).
        extents: per map, the (width, height) in view pixels it spans from the top-left (a
            teacher that pads its input spans more than the view: :attr:`TeacherOutput.extent`);
            default: the view's image size.

    Returns:
        :class:`FusedFeatures` on the feature maps' device.
    """
    maps = list(feature_maps) if not isinstance(feature_maps, Tensor) else list(feature_maps.unbind(0))
    if len(maps) != len(views):
        raise DataError(f"{len(views)} views but {len(maps)} feature maps")
    if not maps:
        raise DataError("fuse_view_features needs at least one view")
    if depths is not None and len(depths) != len(views):
        raise DataError(f"{len(views)} views but {len(depths)} depth images")
    if extents is not None and len(extents) != len(views):
        raise DataError(f"{len(views)} views but {len(extents)} feature-map extents")
    n = len(np.asarray(xyz))
    c = int(maps[0].shape[0])
    device = maps[0].device
    total = torch.zeros(n, c, dtype=torch.float32, device=device)
    count = torch.zeros(n, dtype=torch.int64, device=device)
    for i, (v, fmap) in enumerate(zip(views, maps)):
        if fmap.dim() != 3 or fmap.shape[0] != c:
            raise DataError(f"feature map {i}: expected ({c}, h, w), got shape {tuple(fmap.shape)}")
        if isinstance(v, RenderedView):
            view, ref = v.view, v.depth
        else:
            view, ref = v, (depths[i] if depths is not None else None)
        corr = view_correspondence(xyz, view, ref, border, tolerance, rel_tolerance)
        idx = np.flatnonzero(corr.visible)
        if not len(idx):
            continue
        feats = sample_feature_map(fmap, corr.uv[idx], extents[i] if extents is not None else view.image_size)
        it = torch.as_tensor(idx, device=device)
        total.index_add_(0, it, feats)
        count.index_add_(0, it, torch.ones(len(idx), dtype=torch.int64, device=device))
    return FusedFeatures(features=total / count.clamp(min=1)[:, None].float(), count=count)


@dataclass(frozen=True)
class TeacherPointFeatures:
    """Result of :func:`teacher_point_features`.

    Attributes:
        features: the fused penultimate features (:class:`FusedFeatures`).
        probabilities: the fused class probabilities (softmax of the teacher's logits, averaged
            over the same views), or None when the teacher has no classifier.
    """

    features: FusedFeatures
    probabilities: FusedFeatures | None


def teacher_point_features(xyz: np.ndarray, views: Sequence[RenderedView], teacher: Callable[..., TeacherOutput],
                           images: Sequence[np.ndarray] | None = None, batch_size: int = 4,
                           border: int = DEFAULT_BORDER, tolerance: float = DEFAULT_TOLERANCE,
                           rel_tolerance: float = DEFAULT_REL_TOLERANCE) -> TeacherPointFeatures:
    """Run a 2D teacher on rendered views (or given images of those views) and fuse per point.

    Args:
        xyz: (N, 3) points the views were rendered from.
        views: rendered views; their ``image`` is what the teacher sees unless ``images`` is given
            (for example the real camera image for a view made by
            :func:`~terraseg.geometry.render.calibration_views`).
        teacher: a :mod:`~terraseg.label_efficient.teacher` callable.
        images: optional (H, W, 3) uint8 image per view.
        batch_size: views per teacher call.
        border, tolerance, rel_tolerance: as :func:`fuse_view_features`.
    """
    imgs = list(images) if images is not None else [v.image for v in views]
    if len(imgs) != len(views):
        raise DataError(f"{len(views)} views but {len(imgs)} images")
    if any(im is None for im in imgs):
        raise DataError("rendered views without an image: render them with colors=... or pass images=...")
    feats: list[Tensor] = []
    probs: list[Tensor] = []
    extents: list[tuple[int, int]] = []
    for start in range(0, len(imgs), max(int(batch_size), 1)):
        chunk = imgs[start:start + max(int(batch_size), 1)]
        if len({im.shape for im in chunk}) != 1:  # type: ignore[union-attr]
            raise DataError("images in one teacher batch must share a size (use batch_size=1)")
        out = teacher(np.stack(chunk))  # type: ignore[arg-type]
        feats.extend(out.features.unbind(0))
        extents.extend([out.extent] * len(chunk))
        if out.logits is not None:
            probs.extend(torch.softmax(out.logits, dim=1).unbind(0))
    fused = fuse_view_features(xyz, views, feats, border, tolerance, rel_tolerance, extents=extents)
    fused_p = fuse_view_features(xyz, views, probs, border, tolerance, rel_tolerance, extents=extents) \
        if len(probs) == len(feats) else None
    return TeacherPointFeatures(features=fused, probabilities=fused_p)
