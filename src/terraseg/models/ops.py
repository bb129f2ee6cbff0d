"""Small tensor operations shared by training, evaluation and inference."""

from __future__ import annotations

import torch


def class_ids(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Index of the largest score along ``dim`` (int64), the same ids as ``scores.argmax(dim)``.

    On the CPU, ``argmax`` over the class axis of a ``(N, K, H, W)`` tensor is a strided
    reduction and takes about 4x as long as ``max(dim).indices``, which returns the same ids
    (the first maximal index on ties): 86 vs 21 ms for (8, 20, 192, 256) on 2 cores, a fifth of
    a small network's training step when it scores the batch's accuracy.
    """
    return scores.max(dim).indices
