"""Open-vocabulary LiDAR prediction: name the classes at prediction time.

A 3D network distilled from a CLIP image encoder (``terraseg distill`` with ``distill.teacher:
open_clip:NAME`` and ``loss: cosine``) predicts, through its distillation head
(``<run>/checkpoints/distill_head.pth``), a feature in CLIP's joint image-text space for every
point. :class:`OpenVocabPredictor` scores those features against the text embeddings of class
names given now (``"a {name} in a scene"``, :func:`terraseg.label_efficient.clip_text_embeddings`),
so classes never labelled in 3D can be named; each point takes the best-scoring name.

The text embeddings can also come from a file (``(K, D)`` ``.npy`` / ``.pt``), e.g. computed on
another machine; the tests use a camera teacher's classifier rows in their place (a check of the
plumbing, not of open-vocabulary accuracy).

Without open_clip_torch or without the weights file, one :class:`~terraseg.errors.ConfigError`
says what to install and which file to pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from terraseg.errors import ConfigError, DataError
from terraseg.inference.models import LoadedModel, load_model
from terraseg.label_efficient.distill import DISTILL_HEAD_FILE, DistilledHead, forward_with_features, read_distill_head
from terraseg.label_efficient.open_vocab import DEFAULT_PROMPT, class_scores, clip_text_embeddings
from terraseg.models.surgery import ontology_from_names
from terraseg.ontology import Ontology


def distill_head_of(checkpoint: str | os.PathLike[str]) -> DistilledHead:
    """The ``distill_head.pth`` beside a checkpoint of a cosine distillation run.

    Raises:
        ConfigError: no such file (the run was not a cosine distillation run).
    """
    ck = Path(checkpoint)
    path = ck.parent / DISTILL_HEAD_FILE
    if not path.is_file():
        raise ConfigError(f"{ck}: open-vocabulary prediction needs a network distilled with loss: cosine "
                          f"(`terraseg distill` with distill.teacher: open_clip:NAME); {path} is missing")
    return read_distill_head(path)


def load_text_embeddings(path: str | os.PathLike[str], n_classes: int) -> Tensor:
    """``(K, D)`` class embeddings from a ``.npy`` or ``.pt`` file (one row per class name)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: text-embeddings file not found")
    try:
        emb = torch.from_numpy(np.load(p)) if p.suffix == ".npy" else torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{p}: not a .npy / .pt array of embeddings ({type(exc).__name__})") from exc
    if not isinstance(emb, Tensor) or emb.dim() != 2 or emb.shape[0] != n_classes:
        shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
        raise DataError(f"{p}: expected ({n_classes}, D) embeddings, one row per class name, got {shape}")
    return emb.float()


class OpenVocabPredictor:
    """``predict(points (N, C)) -> (labels (N,) int64 into the class names, scores (N, K))``.

    Args:
        loaded: the distilled LiDAR network (:func:`terraseg.inference.load_model`).
        head: its :class:`DistilledHead`.
        text: ``(K, D)`` class embeddings (D = the head's output width).
        names: the K class names.
        seed: RandLA-Net's sub-sampling seed.
    """

    def __init__(self, loaded: LoadedModel, head: DistilledHead, text: Tensor, names: Sequence[str], seed: int = 0):
        from terraseg.models.points import RandLANet

        if not isinstance(loaded.model, RandLANet):
            raise ConfigError(f"{loaded.path}: open-vocabulary prediction runs per-point networks (randlanet)")
        if text.shape[1] != head.head.proj.out_features:
            raise ConfigError(f"the class embeddings are {text.shape[1]}-dimensional, the distilled features "
                              f"{head.head.proj.out_features}-dimensional ({head.path} was distilled from {head.teacher})")
        self.loaded, self.head, self.text, self.seed = loaded, head, text, seed
        self.ontology: Ontology = ontology_from_names(list(names), "open-vocabulary")

    @torch.inference_mode()
    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from terraseg.models.points.randla_data import collate_randla, randla_inputs

        model = self.loaded.model
        cfg = model.config  # type: ignore[union-attr]
        arr = np.asarray(points, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] < cfg.in_channels:
            raise DataError(f"points: expected (N, >={cfg.in_channels}) values, got shape {arr.shape}")
        xyz = arr[:, :3]
        valid = np.isfinite(xyz).all(axis=1) & (np.einsum("ij,ij->i", xyz, xyz) > 1e-6)
        idx = np.flatnonzero(valid)
        k = self.text.shape[0]
        labels = np.zeros(len(arr), dtype=np.int64)
        scores = np.zeros((len(arr), k), dtype=np.float32)
        if not len(idx):
            return labels, scores
        batch = collate_randla([randla_inputs(arr[idx, :3], arr[idx, :cfg.in_channels], k=cfg.k, ratios=cfg.ratios,
                                              seed=self.seed)])
        model.eval()
        _, feats = forward_with_features(model, batch)
        s = class_scores(self.head.head(feats[0]), self.text)
        scores[idx] = s.numpy()
        labels[idx] = s.argmax(dim=1).numpy()
        return labels, scores


def open_vocab_predictor(checkpoint: str | os.PathLike[str], classes: Sequence[str], *,
                         clip_weights: str | os.PathLike[str] | None = None, clip_model: str | None = None,
                         text_embeddings: str | os.PathLike[str] | None = None,
                         template: str = DEFAULT_PROMPT) -> OpenVocabPredictor:
    """An :class:`OpenVocabPredictor` for a distilled checkpoint and class names.

    Args:
        checkpoint: ``best.pth`` / ``last.pth`` of a ``terraseg distill`` run (cosine loss).
        classes: the class names to score.
        clip_weights: local open_clip weights file of the teacher's CLIP model.
        clip_model: open_clip model name (default: the one the run was distilled from).
        text_embeddings: instead of CLIP, a ``(K, D)`` ``.npy`` / ``.pt`` file of class embeddings.
        template: the prompt, with ``{name}``.
    """
    names = [c.strip() for c in classes if c.strip()]
    if not names:
        raise ConfigError("--classes: give at least one class name, e.g. --classes 'tree,grass,rock,water'")
    loaded = load_model(checkpoint)
    if loaded.task != "points":
        raise ConfigError(f"{checkpoint}: open-vocabulary prediction applies to LiDAR networks")
    head = distill_head_of(checkpoint)
    if text_embeddings is not None:
        text = load_text_embeddings(text_embeddings, len(names))
    else:
        model_name = clip_model
        if model_name is None:
            if not head.teacher.startswith("open_clip:"):
                raise ConfigError(f"{head.path}: the network was distilled from {head.teacher!r}, whose features are "
                                  "not in a CLIP space; distill from open_clip:NAME, or pass --text-embeddings")
            model_name = head.teacher[len("open_clip:"):]
        text = clip_text_embeddings(names, model_name, clip_weights, template).cpu()
    return OpenVocabPredictor(loaded, head, text, names)
