"""Label-efficient 3D learning: sparse labels, region and boundary losses, 2D -> 3D distillation,
open-vocabulary scores (reference 003, WS3D++; OpenScene and contrastive scene contexts for the
public details). Pure functions and small ``nn.Module`` s with explicit inputs, for the training
engine to wire in; the geometry they need (normals, regions, rendering) is in
:mod:`terraseg.geometry`.

- :mod:`~terraseg.label_efficient.sparse_labels`: :class:`LabelBudget` (``"0.1%"``, ``"1%"``,
  ``20`` points, one click per region), reproducible masks per ``(seed, frame id)``,
  :class:`SparseLabels` stored next to a run.
- :mod:`~terraseg.label_efficient.boundary`: :class:`BoundaryHead`, :func:`boundary_loss`,
  :func:`free_energy`, :func:`boundary_energy_loss`.
- :mod:`~terraseg.label_efficient.contrast`: :func:`pool_regions`, :func:`region_contrastive_loss`.
- :mod:`~terraseg.label_efficient.teacher`: 2D teachers (a terraseg camera model's penultimate
  features by a forward hook; timm and open_clip encoders from local weights).
- :mod:`~terraseg.label_efficient.fusion`: per-point features fused over the views that see a point.
- :mod:`~terraseg.label_efficient.distill`: :class:`DistillHead`, :func:`cosine_distill_loss`,
  :func:`kl_distill_loss`, the head file of a distillation run.
- :mod:`~terraseg.label_efficient.targets`: per-scan fused teacher targets (camera / ring views),
  their on-disk cache, teachers from recipe values, camera images of LiDAR frames.
- :mod:`~terraseg.label_efficient.open_vocab`: CLIP text embeddings, cosine class scores, the
  2D / 3D ensemble.

>>> import numpy as np
>>> from terraseg.label_efficient import LabelBudget, draw_label_mask
>>> labels = np.zeros(1000, dtype=np.uint8)
>>> int(draw_label_mask(labels, "000042", LabelBudget.parse("1%"), seed=0).sum())
10
"""

from terraseg.label_efficient.boundary import (
    DEFAULT_ENERGY_MARGIN,
    DEFAULT_ENERGY_TEMPERATURE,
    BoundaryHead,
    boundary_energy_loss,
    boundary_loss,
    free_energy,
)
from terraseg.label_efficient.contrast import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MAX_REGIONS,
    DEFAULT_TEMPERATURE,
    RegionPool,
    pool_regions,
    region_contrastive_loss,
    region_pseudo_labels,
)
from terraseg.label_efficient.distill import (
    DISTILL_HEAD_FILE,
    DistilledHead,
    DistillHead,
    cosine_distill_loss,
    forward_with_features,
    kl_distill_loss,
    read_distill_head,
    save_distill_head,
)
from terraseg.label_efficient.fusion import (
    FusedFeatures,
    TeacherPointFeatures,
    fuse_view_features,
    sample_feature_map,
    teacher_point_features,
)
from terraseg.label_efficient.open_vocab import (
    DEFAULT_PROMPT,
    EnsembleScores,
    class_scores,
    clip_text_embeddings,
    ensemble_scores,
    prompts,
)
from terraseg.label_efficient.sparse_labels import (
    SPARSE_LABELS_FILE,
    LabelBudget,
    SparseLabels,
    apply_label_mask,
    draw_label_mask,
    frame_rng,
)
from terraseg.label_efficient.teacher import (
    EncoderTeacher,
    SegmenterTeacher,
    TeacherOutput,
    find_classifier,
    load_open_clip,
    open_clip_teacher,
    require_open_clip,
    timm_teacher,
)

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_ENERGY_MARGIN",
    "DEFAULT_ENERGY_TEMPERATURE",
    "DEFAULT_MAX_REGIONS",
    "DEFAULT_PROMPT",
    "DEFAULT_TEMPERATURE",
    "DISTILL_HEAD_FILE",
    "SPARSE_LABELS_FILE",
    "BoundaryHead",
    "DistillHead",
    "DistilledHead",
    "EncoderTeacher",
    "EnsembleScores",
    "FusedFeatures",
    "LabelBudget",
    "RegionPool",
    "SegmenterTeacher",
    "SparseLabels",
    "TeacherOutput",
    "TeacherPointFeatures",
    "apply_label_mask",
    "boundary_energy_loss",
    "boundary_loss",
    "class_scores",
    "clip_text_embeddings",
    "cosine_distill_loss",
    "draw_label_mask",
    "ensemble_scores",
    "find_classifier",
    "frame_rng",
    "free_energy",
    "forward_with_features",
    "fuse_view_features",
    "kl_distill_loss",
    "load_open_clip",
    "open_clip_teacher",
    "pool_regions",
    "read_distill_head",
    "prompts",
    "region_contrastive_loss",
    "region_pseudo_labels",
    "require_open_clip",
    "save_distill_head",
    "sample_feature_map",
    "teacher_point_features",
    "timm_teacher",
]
