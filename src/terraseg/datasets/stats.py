"""Dataset statistics in one streaming pass: class frequencies and class weights.

:class:`ClassStats` is updated frame by frame (bounded memory: a few integer vectors per
split), then gives frequencies, the rarest and never-seen classes, and class weights for
training losses:

- ``enet``: ``w = 1 / ln(1.02 + f)`` (Paszke et al., ENet), f = class share of labelled elements;
- ``median``: median-frequency balancing ``w = median(g) / g`` (Eigen & Fergus), where g is the
  class's elements divided by the elements of the frames in which the class appears;
- ``inv_sqrt``: ``w = 1 / sqrt(f)``;
- ``log``: ``w = ln(5 / f)``, xMUDA's "log smoothed" weights (valeoai/xmuda_journal
  ``compute_class_weights``: ``log(5 * total / count)``, which xMUDA divides by its minimum; the
  scale cancels in a weighted mean cross-entropy).

Weights of classes that never appear, and of ignored classes, are 0. Weights are normalised so
that the mean over the weighted (seen, not ignored) classes is 1, unless asked otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.frame import Frame
from terraseg.io.atomic import atomic_path, atomic_write_text
from terraseg.ontology import Ontology, get_ontology

WeightMethod = Literal["enet", "median", "inv_sqrt", "log"]
WEIGHT_METHODS: tuple[str, ...] = ("enet", "median", "inv_sqrt", "log")


@dataclass
class _Counts:
    frames: int = 0
    labelled_frames: int = 0
    counts: np.ndarray | None = None         # elements per class id
    present_total: np.ndarray | None = None  # elements of the frames where the class appears
    frames_with: np.ndarray | None = None    # frames in which the class appears


@dataclass
class ClassStats:
    """Streaming per-class counts for one modality (``"image"`` pixels or ``"points"``).

    Counts are kept per split (and summed for ``"all"``); ids are the ontology's ids.
    """

    ontology: Ontology
    modality: Literal["image", "points"] = "image"
    splits: dict[str, _Counts] = field(default_factory=dict)

    def _bucket(self, split: str) -> _Counts:
        if split not in self.splits:
            n = self.ontology.max_id + 1
            self.splits[split] = _Counts(counts=np.zeros(n, np.int64), present_total=np.zeros(n, np.int64),
                                         frames_with=np.zeros(n, np.int64))
        return self.splits[split]

    def update_labels(self, labels: np.ndarray | None, split: str = "all", source: str = "labels") -> None:
        """Add one frame's label array (or None for an unlabelled frame)."""
        b = self._bucket(split)
        b.frames += 1
        if labels is None:
            return
        arr = np.asarray(labels).ravel()
        n = self.ontology.max_id + 1
        if arr.size and (arr.max() >= n or (arr.dtype.kind == "i" and arr.min() < 0)):
            self.ontology.check_ids(arr, source=source)  # raises, naming the bad ids
        c = np.bincount(arr, minlength=n)
        if c[~self.ontology.valid_mask].any():  # ids inside the range that are not classes
            self.ontology.check_ids(arr, source=source)
        b.labelled_frames += 1
        assert b.counts is not None and b.present_total is not None and b.frames_with is not None
        b.counts += c
        present = c > 0
        b.present_total[present] += arr.size
        b.frames_with[present] += 1

    def update(self, frame: Frame, split: str = "all") -> None:
        """Add a frame (its image or point labels, by modality)."""
        labels = frame.image_labels if self.modality == "image" else frame.point_labels
        key = "image_labels" if self.modality == "image" else "point_labels"
        self.update_labels(labels, split, source=str(frame.source.get(key, frame.frame_id)))

    # ------------------------------------------------------------------ results
    def total(self, split: str | None = None) -> _Counts:
        """Counts of one split, or summed over all splits when ``split`` is None."""
        if split is not None:
            if split not in self.splits:
                raise DataError(f"no frames counted for split {split!r}")
            return self.splits[split]
        out = _Counts(counts=np.zeros(self.ontology.max_id + 1, np.int64),
                      present_total=np.zeros(self.ontology.max_id + 1, np.int64),
                      frames_with=np.zeros(self.ontology.max_id + 1, np.int64))
        for b in self.splits.values():
            out.frames += b.frames
            out.labelled_frames += b.labelled_frames
            out.counts += b.counts  # type: ignore[operator]
            out.present_total += b.present_total  # type: ignore[operator]
            out.frames_with += b.frames_with  # type: ignore[operator]
        return out

    def frequencies(self, split: str | None = None, ignore_ids: Iterable[int] | None = None) -> np.ndarray:
        """Share of each class id among the labelled, non-ignored elements (sums to 1)."""
        counts = self.total(split).counts.astype(np.float64)  # type: ignore[union-attr]
        ign = list(self.ontology.ignore_ids if ignore_ids is None else ignore_ids)
        counts[ign] = 0
        s = counts.sum()
        return counts / s if s > 0 else counts

    def class_weights(self, method: WeightMethod = "enet", split: str | None = None,
                      ignore_ids: Iterable[int] | None = None, normalize: bool = True) -> np.ndarray:
        """Class weights indexed by id (length ``max_id + 1``), see the module docstring."""
        ign = list(self.ontology.ignore_ids if ignore_ids is None else ignore_ids)
        f = self.frequencies(split, ign)
        seen = f > 0
        w = np.zeros_like(f)
        if method == "enet":
            w[seen] = 1.0 / np.log(1.02 + f[seen])
        elif method == "inv_sqrt":
            w[seen] = 1.0 / np.sqrt(f[seen])
        elif method == "log":
            w[seen] = np.log(5.0 / f[seen])
        elif method == "median" and seen.any():
            t = self.total(split)
            g = np.zeros_like(f)
            g[seen] = t.counts[seen] / t.present_total[seen]  # type: ignore[index]
            w[seen] = np.median(g[seen]) / g[seen]
        elif method != "median":
            raise ConfigError(f"unknown class-weight method {method!r} (choose from {', '.join(WEIGHT_METHODS)})")
        if normalize and seen.any():
            w[seen] /= w[seen].mean()
        return w

    def never_seen(self, split: str | None = None) -> list[str]:
        """Names of the (non-ignored) classes with no labelled element."""
        counts = self.total(split).counts
        return [c.name for c in self.ontology if counts[c.id] == 0 and c.id not in self.ontology.ignore_ids]  # type: ignore[index]

    def rarest(self, k: int = 10, split: str | None = None) -> list[tuple[str, float]]:
        """The k rarest seen classes with their frequency, rarest first."""
        f = self.frequencies(split)
        seen = [(c.name, float(f[c.id])) for c in self.ontology if f[c.id] > 0]
        return sorted(seen, key=lambda x: x[1])[:k]

    def to_dict(self) -> dict[str, Any]:
        """Everything a training run needs: counts, frequencies, weights by method, per split."""
        o = self.ontology
        t = self.total()
        freq = self.frequencies()
        d: dict[str, Any] = {
            "ontology": o.name, "modality": self.modality,
            "ignored": [o.name_of(i) for i in sorted(o.ignore_ids)],
            "splits": {s: {"frames": b.frames, "labelled_frames": b.labelled_frames,
                           "counts": {c.name: int(b.counts[c.id]) for c in o}}  # type: ignore[index]
                       for s, b in self.splits.items()},
            "frames": t.frames, "labelled_frames": t.labelled_frames,
            "counts": {c.name: int(t.counts[c.id]) for c in o},  # type: ignore[index]
            "frequency": {c.name: float(freq[c.id]) for c in o},
            "never_seen": self.never_seen(),
            "weights": {m: {c.name: round(float(w[c.id]), 6) for c in o}
                        for m in WEIGHT_METHODS for w in [self.class_weights(m)]},  # type: ignore[arg-type]
        }
        return d


def save_class_stats(stats: ClassStats, path: str | os.PathLike[str]) -> Path:
    """Write the statistics and class weights as JSON (atomically)."""
    return atomic_write_text(path, json.dumps(stats.to_dict(), indent=2) + "\n")


def load_class_weights(path: str | os.PathLike[str], method: WeightMethod = "enet",
                       ontology: Ontology | str | None = None) -> np.ndarray:
    """Read weights written by :func:`save_class_stats` as an array indexed by class id.

    When ``ontology`` is given it must match the file's ontology.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: class-weight file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not a JSON class-statistics file ({exc})") from exc
    if "weights" not in data or "ontology" not in data:
        raise DataError(f"{p}: not a terraseg class-statistics file (no 'weights' / 'ontology')")
    onto = get_ontology(data["ontology"]) if ontology is None else get_ontology(ontology)
    if onto.name != data["ontology"]:
        raise DataError(f"{p}: weights are for ontology {data['ontology']!r}, not {onto.name!r}")
    if method not in data["weights"]:
        raise DataError(f"{p}: no weights for method {method!r} (has: {', '.join(data['weights'])})")
    w = np.zeros(onto.max_id + 1, dtype=np.float64)
    for name, val in data["weights"][method].items():
        w[onto.id_of(name)] = val
    return w


def plot_class_frequencies(stats: ClassStats, path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Bar plot of class frequencies on a log scale, bars in the ontology colours, one PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    o = stats.ontology
    f = stats.frequencies()
    order = [c for c in sorted(o, key=lambda c: -f[c.id]) if c.id not in o.ignore_ids]
    vals = [max(f[c.id], 1e-12) for c in order]
    colors = [np.array(c.color) / 255.0 for c in order]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(order) + 2), 4.5))
    bars = ax.bar(range(len(order)), vals, color=colors, edgecolor="black", linewidth=0.3)
    for b, c in zip(bars, order):
        if f[c.id] == 0:
            b.set_hatch("//")
    ax.set_yscale("log")
    ax.set_ylim(bottom=min(v for v in vals) / 2)
    ax.set_xticks(range(len(order)), [c.name for c in order], rotation=90, fontsize=8)
    ax.set_ylabel(f"share of labelled {'pixels' if stats.modality == 'image' else 'points'}")
    ax.set_title(title or f"{o.name}: class frequencies ({stats.total().labelled_frames} labelled frames)")
    ax.grid(axis="y", which="major", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
