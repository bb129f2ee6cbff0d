"""Open-vocabulary class scores: cosine similarity of point features to text embeddings.

With a CLIP model available locally (the optional ``open_clip_torch`` package and a weights file),
:func:`clip_text_embeddings` embeds one prompt per class name (default ``"a {name} in a
scene"``, OpenScene's template), and :func:`class_scores` scores every point's feature (fused 2D
features, or 3D features distilled from them) against them, so classes never labelled in 3D can
be named. :func:`ensemble_scores` is OpenScene's 2D / 3D ensemble: per point, the feature (2D
fused or 3D distilled) whose best class similarity is higher wins; points no view saw use the
3D feature.

Without open_clip or without a weights file, :func:`clip_text_embeddings` raises one
:class:`~terraseg.errors.ConfigError` naming the package, the weights file and an example.
Any ``(K, D)`` tensor can stand in for the text embeddings (tests use a camera model's classifier
rows, which score its own fused features; that checks the plumbing, not open-vocabulary accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from terraseg.errors import ConfigError, DataError
from terraseg.label_efficient.teacher import load_open_clip, require_open_clip

DEFAULT_PROMPT = "a {name} in a scene"


def prompts(class_names: Sequence[str], template: str = DEFAULT_PROMPT) -> list[str]:
    """One prompt per class: ``template.format(name=...)`` with underscores and dashes as spaces."""
    if "{name}" not in template:
        raise ConfigError(f"prompt template must contain '{{name}}', got {template!r}")
    return [template.format(name=str(n).replace("_", " ").replace("-", " ")) for n in class_names]


@torch.inference_mode()
def clip_text_embeddings(class_names: Sequence[str], model_name: str, weights: str | Path | None,
                         template: str = DEFAULT_PROMPT, device: torch.device | str = "cpu") -> Tensor:
    """``(K, D)`` L2-normalised CLIP text embeddings of one prompt per class name.

    Args:
        class_names: the classes to score, e.g. an ontology's names, or new ones.
        model_name: an open_clip model name (``open_clip.list_models()``), e.g. ``"ViT-B-32"``.
        weights: path of a local open_clip weights file for that model.
        template: prompt with ``{name}``.
        device: where to run the text tower.
    """
    if not len(class_names):
        raise ConfigError("no class names to embed")
    open_clip = require_open_clip()  # one clear message when the optional package is missing
    model = load_open_clip(model_name, weights, device)
    tokenizer = open_clip.get_tokenizer(model_name)
    tokens = tokenizer(prompts(class_names, template)).to(device)
    return F.normalize(model.encode_text(tokens).float(), dim=-1)


def class_scores(features: Tensor, text_embeddings: Tensor) -> Tensor:
    """``(N, K)`` cosine similarities of ``(N, D)`` features to ``(K, D)`` class embeddings."""
    if features.dim() != 2 or text_embeddings.dim() != 2 or features.shape[1] != text_embeddings.shape[1]:
        raise DataError(f"features {tuple(features.shape)} and class embeddings {tuple(text_embeddings.shape)} "
                        f"must be (N, D) and (K, D) with the same D")
    return F.normalize(features.float(), dim=1, eps=1e-5) @ F.normalize(text_embeddings.float(), dim=1).t()


@dataclass(frozen=True)
class EnsembleScores:
    """Result of :func:`ensemble_scores`.

    Attributes:
        scores: ``(N, K)`` cosine scores of the chosen feature per point.
        labels: ``(N,)`` int64 argmax class.
        from_2d: ``(N,)`` bool, the 2D fused feature was chosen.
    """

    scores: Tensor
    labels: Tensor
    from_2d: Tensor


def ensemble_scores(features_3d: Tensor, features_2d: Tensor, text_embeddings: Tensor,
                    valid_2d: Tensor | None = None) -> EnsembleScores:
    """OpenScene's 2D-3D ensemble: per point, the feature with the higher best-class cosine wins.

    Args:
        features_3d: ``(N, D)`` distilled 3D features.
        features_2d: ``(N, D)`` fused 2D features.
        text_embeddings: ``(K, D)`` class embeddings.
        valid_2d: ``(N,)`` bool, points with a 2D feature (others always use the 3D one).
    """
    if features_3d.shape != features_2d.shape:
        raise DataError(f"3D features {tuple(features_3d.shape)} and 2D features {tuple(features_2d.shape)} differ")
    s3 = class_scores(features_3d, text_embeddings)
    s2 = class_scores(features_2d, text_embeddings)
    use_2d = s2.max(dim=1).values > s3.max(dim=1).values
    if valid_2d is not None:
        use_2d &= valid_2d.reshape(-1).bool().to(use_2d.device)
    scores = torch.where(use_2d[:, None], s2, s3)
    return EnsembleScores(scores=scores, labels=scores.argmax(dim=1), from_2d=use_2d)
