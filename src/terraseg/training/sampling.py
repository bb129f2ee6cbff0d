"""Repeat-factor sampling (LVIS, Gupta et al. 2019) of images that contain rare classes.

For a class ``c`` let ``f_c`` be the fraction of training images that contain it. Its repeat
factor is ``r_c = max(1, sqrt(t / f_c))`` for a threshold ``t`` (e.g. 0.1: classes in fewer than
10 % of the images get oversampled), and an image is repeated ``r_i = max_{c in i} r_c`` times per
epoch (1 for an image without labelled classes). Fractional factors are rounded stochastically
per epoch (``floor(r) + Bernoulli(r - floor(r))``), so the expected number of repeats is exact::

    presence = class_presence(dataset, num_classes=64)           # (N, K) bool
    sampler = RepeatFactorSampler(repeat_factors(presence, 0.1), seed=0)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler)  # call sampler.set_epoch(e) per epoch

With DDP, give every rank ``num_replicas``/``rank`` (and turn off Lightning's automatic
``DistributedSampler``: ``Trainer(use_distributed_sampler=False)``); every rank draws the same
epoch list from the same seed and takes an equal share of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch.utils.data

from terraseg.errors import ConfigError, DataError
from terraseg.frame import Frame
from terraseg.progress import ProgressBar

__all__ = ["RepeatFactorSampler", "class_presence", "repeat_factors"]


def class_presence(dataset: Sequence[Frame], num_classes: int, *, ignore_ids: Iterable[int] = (),
                   progress: bool = False) -> np.ndarray:
    """(N, K) bool: whether frame ``i``'s ``image_labels`` contain class ``k`` (K = ``num_classes``).

    Ids in ``ignore_ids`` are not counted (their columns are False when they are below
    ``num_classes``). Raises :class:`DataError` naming the frame and its index when a frame has
    no image labels or holds an id ``>= num_classes`` that is not ignored.
    """
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    ignore = sorted({int(i) for i in ignore_ids})
    out = np.zeros((len(dataset), int(num_classes)), dtype=bool)
    with ProgressBar(len(dataset), "class presence", enabled=progress) as bar:
        for i in range(len(dataset)):
            frame = dataset[i]
            labels = frame.image_labels
            if labels is None:
                raise DataError(f"frame {i} ({frame.frame_id}): no image labels to count classes in")
            labels = np.asarray(labels)
            if labels.dtype.kind not in "ui" or (labels.size and labels.min() < 0):
                raise DataError(f"frame {i} ({frame.frame_id}): image labels must be non-negative integer ids, "
                                f"got {labels.dtype}")
            counts = np.bincount(labels.ravel().astype(np.intp, copy=False), minlength=num_classes)
            for j in ignore:
                if j < len(counts):
                    counts[j] = 0
            extra = np.flatnonzero(counts[num_classes:])
            if len(extra):
                raise DataError(f"frame {i} ({frame.frame_id}): label id {int(extra[0]) + num_classes} is not a "
                                f"class (num_classes={num_classes}) nor an ignore id {ignore}")
            out[i] = counts[:num_classes] > 0
            bar.advance()
    return out


def repeat_factors(presence: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """(N,) float64 per-image repeat factors from an (N, K) class presence matrix.

    ``r_c = max(1, sqrt(threshold / f_c))`` with ``f_c`` the fraction of the N images containing
    class ``c``; ``r_i`` = the largest ``r_c`` over the classes in image ``i`` (1 for none).
    """
    p = np.asarray(presence)
    if p.ndim != 2:
        raise DataError(f"class presence must be an (N, K) array, got shape {p.shape}")
    p = p.astype(bool)
    if not (isinstance(threshold, (int, float, np.integer, np.floating)) and np.isfinite(threshold) and threshold > 0):
        raise ConfigError(f"repeat factor threshold must be a positive number, got {threshold!r}")
    n = p.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    freq = p.mean(axis=0)
    with np.errstate(divide="ignore"):
        r_class = np.where(freq > 0, np.maximum(1.0, np.sqrt(threshold / np.maximum(freq, 1e-300))), 1.0)
    return np.where(p, r_class[None, :], 1.0).max(axis=1, initial=1.0)


class RepeatFactorSampler(torch.utils.data.Sampler[int]):
    """Yields dataset indices, each ``floor(r_i) + Bernoulli(frac(r_i))`` times per epoch, shuffled.

    Args:
        factors: (N,) non-negative repeat factors (from :func:`repeat_factors`); 0 drops an image.
        seed: base seed; epoch ``e`` uses ``(seed, e)``, so every rank and every run agree.
        shuffle: shuffle the epoch's list (else indices come in ascending order, repeats adjacent).
        num_replicas, rank: DDP split. The epoch list is padded by wrap-around to a multiple of
            ``num_replicas`` and rank ``r`` takes elements ``r, r + num_replicas, ...``, so every
            rank gets the same number of indices.

    The epoch length varies with the stochastic rounding (its expectation is ``sum(factors)``);
    ``len(sampler)`` is the exact length of the current epoch on this rank. Call
    :meth:`set_epoch` before each epoch (Lightning does it for samplers that have it).
    """

    def __init__(self, factors: np.ndarray | Sequence[float], seed: int = 0, shuffle: bool = True,
                 num_replicas: int = 1, rank: int = 0) -> None:
        f = np.asarray(factors, dtype=np.float64)
        if f.ndim != 1:
            raise ConfigError(f"repeat factors must be a 1-D array, got shape {f.shape}")
        if f.size and (not np.isfinite(f).all() or f.min() < 0):
            bad = int(np.flatnonzero(~np.isfinite(f) | (f < 0))[0])
            raise ConfigError(f"repeat factors must be finite and >= 0; factor {bad} is {f[bad]}")
        if not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise ConfigError(f"num_replicas must be a positive integer, got {num_replicas!r}")
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise ConfigError(f"rank must be in 0..{num_replicas - 1}, got {rank!r}")
        self.factors = f
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        self._cache: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose list ``__iter__`` and ``__len__`` describe."""
        self.epoch = int(epoch)

    @property
    def expected_length(self) -> float:
        """Expected number of indices per epoch on this rank (before padding)."""
        return float(self.factors.sum()) / self.num_replicas

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The whole (all ranks, padded) index list of ``epoch`` (default: the current one), int64."""
        e = self.epoch if epoch is None else int(epoch)
        if self._cache is not None and self._cache[0] == e:
            return self._cache[1]
        g = np.random.default_rng([self.seed, e])
        whole = np.floor(self.factors)
        reps = whole.astype(np.int64) + (g.random(len(self.factors)) < self.factors - whole)
        idx = np.repeat(np.arange(len(self.factors), dtype=np.int64), reps)
        if self.shuffle:
            idx = g.permutation(idx)
        pad = (-len(idx)) % self.num_replicas
        if pad and len(idx):
            idx = np.concatenate([idx, np.resize(idx, pad)])
        self._cache = (e, idx)
        return idx

    def _rank_indices(self) -> np.ndarray:
        return self.epoch_indices()[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._rank_indices().tolist())

    def __len__(self) -> int:
        return len(self._rank_indices())
