"""Sparse point labels: which points of each scan keep their label in a label-efficient run.

A :class:`LabelBudget` says how many points per scan are labelled: a **fraction** (``"0.1%"``,
``"1%"``, ``"10%"``) or a fixed **count** (``20`` points per scan), drawn by a **strategy**:

- ``"random"``: uniformly at random among the scan's labellable points;
- ``"regions"``: one click per region of a given partition (an over-segmentation from
  :mod:`terraseg.geometry.regions`): regions are visited in a random order and each gets one
  click (a random point of it, or the point nearest its centroid with ``click="center"``); when
  the budget exceeds the number of regions, a second round gives each region a second click, and
  so on. Without a fraction or count, exactly one click per region.

Rules (the budget is met exactly):

- Labellable points are those whose ground-truth label is not ``ignore_index`` (void points can
  not be annotated). ``N`` below is their number.
- A fraction ``f`` labels ``k = floor(f * N + 1/2)`` points (round half up, computed on the exact
  decimal value of ``f``, so ``"1%"`` of 250 points is 3 and of 150 points 2), at least 1 when
  ``N > 0`` and at most ``N``.
- A count ``c`` labels ``k = min(c, N)`` points.
- The draw is reproducible: it depends only on ``(seed, frame_id)`` (a 64-bit BLAKE2b hash of the
  frame id feeds ``numpy.random.default_rng``), never on the order frames are visited in.

The masks of a run are stored in one ``.npz`` next to it (:data:`SPARSE_LABELS_FILE`, written
atomically) by :class:`SparseLabels`, which also applies them: unlabelled points get
``ignore_index`` so every supervised loss skips them, while the unsupervised losses still see them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.io.atomic import atomic_path
from terraseg.progress import ProgressBar

Strategy = Literal["random", "regions"]
Click = Literal["random", "center"]

SPARSE_LABELS_FILE = "sparse_labels.npz"
"""File name of a run's label masks, in the run folder."""

FORMAT_VERSION = 1
STRATEGIES: tuple[str, ...] = ("random", "regions")
CLICKS: tuple[str, ...] = ("random", "center")

_BUDGET_HELP = ("expected a percentage in (0, 100] such as '0.1%', '1%' or '10%', a fraction in (0, 1] such as "
                "0.01, or a whole number of points per scan such as 20")


def _bad_budget(spec: object, why: str = "") -> ConfigError:
    return ConfigError(f"invalid label budget {spec!r}{': ' + why if why else ''}; {_BUDGET_HELP}")


@dataclass(frozen=True)
class LabelBudget:
    """How many points per scan are labelled and how they are chosen.

    Attributes:
        fraction: share of the labellable points, in (0, 1] (None with ``count``).
        count: points per scan, >= 1 (None with ``fraction``).
        strategy: ``"random"`` or ``"regions"`` (one click per region; needs a region partition).
        click: where a region's click lands: ``"random"`` point or the point nearest the region's
            ``"center"`` (needs the points' coordinates).

    With ``strategy="regions"`` and neither ``fraction`` nor ``count``, every region gets exactly
    one click. Build one from a recipe value with :meth:`parse`.
    """

    fraction: float | None = None
    count: int | None = None
    strategy: Strategy = "random"
    click: Click = "random"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown label strategy {self.strategy!r} (expected one of {', '.join(STRATEGIES)})")
        if self.click not in CLICKS:
            raise ConfigError(f"unknown click placement {self.click!r} (expected one of {', '.join(CLICKS)})")
        if self.fraction is not None and self.count is not None:
            raise ConfigError("a label budget is a fraction or a count, not both")
        if self.fraction is None and self.count is None and self.strategy != "regions":
            raise _bad_budget(None, "no fraction or count given")
        if self.fraction is not None:
            f = self.fraction
            if isinstance(f, bool) or not isinstance(f, int | float) or not np.isfinite(f) or not 0 < f <= 1:
                raise _bad_budget(f, "a fraction must be in (0, 1]")
        if self.count is not None:
            c = self.count
            if isinstance(c, bool) or not isinstance(c, int | np.integer) or c < 1:
                raise _bad_budget(c, "a count must be a whole number >= 1")

    @classmethod
    def parse(cls, spec: str | int | float, strategy: Strategy = "random", click: Click = "random") -> LabelBudget:
        """A budget from a recipe or command-line value.

        ``"1%"`` / ``"0.1 %"`` -> fraction; ``0.01`` or ``"0.01"`` (a number below 1) -> fraction;
        ``20`` / ``"20"`` -> count; ``"regions"`` -> one click per region. Anything else raises
        one :class:`~terraseg.errors.ConfigError` saying what is accepted.
        """
        if isinstance(spec, bool):
            raise _bad_budget(spec)
        if isinstance(spec, str):
            s = spec.strip().lower()
            if s in ("regions", "region", "1/region", "per-region"):
                return cls(strategy="regions", click=click)
            try:
                if s.endswith("%"):
                    value = Fraction(s[:-1].strip()) / 100
                    if not 0 < value <= 1:
                        raise _bad_budget(spec, "a percentage must be in (0, 100]")
                    return cls(fraction=float(value), strategy=strategy, click=click)
                value = Fraction(s)
            except (ValueError, ZeroDivisionError):
                raise _bad_budget(spec) from None
        elif isinstance(spec, int | np.integer):
            return cls(count=int(spec), strategy=strategy, click=click)
        elif isinstance(spec, float):
            if not np.isfinite(spec):
                raise _bad_budget(spec)
            value = Fraction(repr(spec))
        else:
            raise _bad_budget(spec)
        if value.denominator == 1 and value >= 1:
            return cls(count=int(value), strategy=strategy, click=click)
        if 0 < value < 1:
            return cls(fraction=float(value), strategy=strategy, click=click)
        raise _bad_budget(spec)

    def size(self, n_labellable: int, n_regions: int | None = None) -> int:
        """Points to label in a scan with ``n_labellable`` labellable points (see the module rules)."""
        n = int(n_labellable)
        if n <= 0:
            return 0
        if self.fraction is not None:
            exact = Fraction(repr(float(self.fraction))) * n + Fraction(1, 2)
            return int(min(max(exact.numerator // exact.denominator, 1), n))
        if self.count is not None:
            return min(int(self.count), n)
        if n_regions is None:
            raise DataError("a one-click-per-region budget needs the number of regions")
        return min(int(n_regions), n)

    def describe(self) -> str:
        """A short human description, e.g. ``"1% of points, random"``."""
        if self.fraction is not None:
            pct = Fraction(repr(float(self.fraction))) * 100
            amount = f"{float(pct):g}% of points"
        elif self.count is not None:
            amount = f"{self.count} points per scan"
        else:
            amount = "one click per region"
        how = "random" if self.strategy == "random" else f"region clicks ({self.click})"
        return f"{amount}, {how}"

    def to_dict(self) -> dict[str, object]:
        return {"fraction": self.fraction, "count": self.count, "strategy": self.strategy, "click": self.click}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> LabelBudget:
        return cls(fraction=d.get("fraction"), count=d.get("count"), strategy=d.get("strategy", "random"),  # type: ignore[arg-type]
                   click=d.get("click", "random"))  # type: ignore[arg-type]


def frame_rng(seed: int, frame_id: str) -> np.random.Generator:
    """The generator of one frame's draw: ``default_rng([seed, blake2b64(frame_id)])``."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"label seed must be a non-negative integer, got {seed!r}")
    key = int.from_bytes(hashlib.blake2b(str(frame_id).encode("utf-8"), digest_size=8).digest(), "little")
    return np.random.default_rng([int(seed), key])


def _labellable(labels: np.ndarray, ignore_index: int | None, where: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.dtype.kind not in "ui":
        raise DataError(f"{where}: expected (N,) integer point labels, got shape {lab.shape} dtype {lab.dtype}")
    return np.ones(len(lab), dtype=bool) if ignore_index is None else lab != ignore_index


def draw_label_mask(labels: np.ndarray, frame_id: str, budget: LabelBudget, seed: int = 0,
                    ignore_index: int | None = None, regions: np.ndarray | None = None,
                    xyz: np.ndarray | None = None) -> np.ndarray:
    """The (N,) bool mask of one scan's labelled points under ``budget``.

    Args:
        labels: (N,) ground-truth point labels (only used to exclude ``ignore_index`` points).
        frame_id: the frame's id (with ``seed``, it fixes the draw).
        budget: the :class:`LabelBudget`.
        seed: non-negative run seed.
        ignore_index: label of points that cannot be labelled, or None.
        regions: (N,) integer region ids, required by ``strategy="regions"``.
        xyz: (N, >=3) coordinates, required by ``click="center"``.

    Returns:
        (N,) bool, exactly ``budget.size(...)`` True values.
    """
    where = f"frame {frame_id}"
    ok = _labellable(labels, ignore_index, where)
    n = len(ok)
    eligible = np.flatnonzero(ok)
    rng = frame_rng(seed, frame_id)
    mask = np.zeros(n, dtype=bool)
    if budget.strategy == "random":
        k = budget.size(len(eligible))
        if k:
            mask[rng.choice(eligible, size=k, replace=False)] = True
        return mask
    if regions is None:
        raise DataError(f"{where}: the 'regions' label strategy needs a region partition (regions=...)")
    reg = np.asarray(regions)
    if reg.shape != (n,) or reg.dtype.kind not in "ui":
        raise DataError(f"{where}: regions must be ({n},) integer ids, got shape {reg.shape} dtype {reg.dtype}")
    if not len(eligible):
        return mask
    r = reg[eligible].astype(np.int64)
    ids, r_inv = np.unique(r, return_inverse=True)
    r_inv = r_inv.ravel()
    k = budget.size(len(eligible), len(ids))
    region_order = rng.permutation(len(ids))          # visiting order of the regions
    position = np.empty(len(ids), dtype=np.int64)
    position[region_order] = np.arange(len(ids))
    key = rng.random(len(eligible))                   # click order inside each region
    if budget.click == "center":
        if xyz is None:
            raise DataError(f"{where}: click='center' needs the points' coordinates (xyz=...)")
        p = np.asarray(xyz, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != n or p.shape[1] < 3:
            raise DataError(f"{where}: xyz must be ({n}, >=3), got shape {p.shape}")
        pe = p[eligible, :3]
        counts = np.bincount(r_inv, minlength=len(ids)).astype(np.float64)
        centre = np.stack([np.bincount(r_inv, pe[:, c], len(ids)) / counts for c in range(3)], axis=1)
        d2 = ((pe - centre[r_inv]) ** 2).sum(axis=1)
        order = np.lexsort((key, d2, r_inv))
        first = np.ones(len(order), dtype=bool)
        first[1:] = r_inv[order[1:]] != r_inv[order[:-1]]
        key = key.copy()
        key[order[first]] = -1.0                      # the most central point is the first click
    order = np.lexsort((key, r_inv))                  # by region, then click order
    starts = np.searchsorted(r_inv[order], np.arange(len(ids)))
    rank = np.empty(len(eligible), dtype=np.int64)
    rank[order] = np.arange(len(order)) - starts[r_inv[order]]
    pick = np.lexsort((position[r_inv], rank))[:k]    # round by round, regions in visiting order
    mask[eligible[pick]] = True
    return mask


def apply_label_mask(labels: np.ndarray, mask: np.ndarray, ignore_index: int) -> np.ndarray:
    """A copy of ``labels`` with every point outside ``mask`` set to ``ignore_index``.

    The dtype is kept, widened if needed to hold ``ignore_index``.
    """
    lab = np.asarray(labels)
    m = np.asarray(mask, dtype=bool)
    if m.shape != lab.shape:
        raise DataError(f"label mask has shape {m.shape}, the labels {lab.shape}")
    out = lab.astype(np.result_type(lab.dtype, np.min_scalar_type(ignore_index)), copy=True)
    out[~m] = ignore_index
    return out


@dataclass
class SparseLabels:
    """The labelled points of every scan of a run, with the budget and seed that drew them.

    Attributes:
        budget: the :class:`LabelBudget`.
        seed: the run seed.
        indices: frame id -> sorted int64 indices of the labelled points.
        num_points: frame id -> number of points in the scan (checked when a mask is used).
        ignore_index: label given to unlabelled points by :meth:`apply`.
    """

    budget: LabelBudget
    seed: int
    ignore_index: int
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    num_points: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ drawing
    def add(self, frame_id: str, labels: np.ndarray, regions: np.ndarray | None = None,
            xyz: np.ndarray | None = None) -> np.ndarray:
        """Draw (or redraw, identically) the mask of one frame, record it and return it."""
        mask = draw_label_mask(labels, frame_id, self.budget, self.seed, self.ignore_index, regions, xyz)
        self.indices[str(frame_id)] = np.flatnonzero(mask).astype(np.int64)
        self.num_points[str(frame_id)] = int(len(mask))
        return mask

    @classmethod
    def draw(cls, frames: Iterable[tuple[str, np.ndarray] | tuple[str, np.ndarray, np.ndarray | None]],
             budget: LabelBudget, seed: int = 0, ignore_index: int = 255, progress: bool = False,
             total: int | None = None) -> SparseLabels:
        """Masks for many frames: ``frames`` yields ``(frame_id, labels)`` or ``(frame_id, labels, regions)``."""
        out = cls(budget, seed, ignore_index)
        with ProgressBar(total, "drawing label masks", enabled=progress) as bar:
            for item in frames:
                out.add(item[0], item[1], item[2] if len(item) > 2 else None)  # type: ignore[misc]
                bar.advance()
        return out

    # ------------------------------------------------------------------ use
    def mask(self, frame_id: str, n_points: int | None = None) -> np.ndarray:
        """(N,) bool mask of the frame's labelled points."""
        fid = str(frame_id)
        if fid not in self.indices:
            raise DataError(f"no label mask for frame {fid!r} ({len(self.indices)} frames have one)")
        n = self.num_points[fid]
        if n_points is not None and int(n_points) != n:
            raise DataError(f"frame {fid!r}: the label mask was drawn for {n} points, the scan has {n_points}")
        m = np.zeros(n, dtype=bool)
        m[self.indices[fid]] = True
        return m

    def apply(self, frame_id: str, labels: np.ndarray) -> np.ndarray:
        """The frame's labels with every unlabelled point set to :attr:`ignore_index`."""
        lab = np.asarray(labels)
        return apply_label_mask(lab, self.mask(frame_id, len(lab)), self.ignore_index)

    def __contains__(self, frame_id: object) -> bool:
        return str(frame_id) in self.indices

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labelled(self) -> int:
        """Labelled points over all frames."""
        return int(sum(len(v) for v in self.indices.values()))

    @property
    def points(self) -> int:
        """Points over all frames."""
        return int(sum(self.num_points.values()))

    def summary(self) -> str:
        """One line: frames, labelled points, share, budget."""
        share = 100.0 * self.labelled / max(self.points, 1)
        return (f"{len(self)} frames, {self.labelled:,} of {self.points:,} points labelled ({share:.3g}%); "
                f"{self.budget.describe()}, seed {self.seed}")

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write all masks to one ``.npz`` atomically (a run folder gives ``<run>/sparse_labels.npz``)."""
        p = Path(path)
        if p.suffix != ".npz":
            p = p / SPARSE_LABELS_FILE
        ids = sorted(self.indices)
        lens = np.array([len(self.indices[i]) for i in ids], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        flat = np.concatenate([self.indices[i] for i in ids]) if ids else np.zeros(0, dtype=np.int64)
        meta = {"format": "terraseg.sparse_labels", "version": FORMAT_VERSION, "budget": self.budget.to_dict(),
                "seed": int(self.seed), "ignore_index": int(self.ignore_index)}
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, meta=np.array(json.dumps(meta)), frame_ids=np.array(ids, dtype=np.str_),
                                offsets=offsets, indices=flat.astype(np.int64),
                                num_points=np.array([self.num_points[i] for i in ids], dtype=np.int64))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SparseLabels:
        """Read masks written by :meth:`save` (a run folder reads its ``sparse_labels.npz``)."""
        p = Path(path)
        if p.is_dir():
            p = p / SPARSE_LABELS_FILE
        try:
            with np.load(p, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                ids = [str(i) for i in z["frame_ids"]]
                offsets, flat, num = z["offsets"], z["indices"], z["num_points"]
        except FileNotFoundError:
            raise DataError(f"{p}: file not found") from None
        except (KeyError, ValueError, OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{p}: not a terraseg sparse-label file ({exc})") from exc
        if meta.get("format") != "terraseg.sparse_labels" or len(offsets) != len(ids) + 1 or len(num) != len(ids) \
                or (len(ids) and offsets[-1] != len(flat)):
            raise DataError(f"{p}: not a terraseg sparse-label file (inconsistent contents)")
        out = cls(LabelBudget.from_dict(meta["budget"]), int(meta["seed"]), int(meta["ignore_index"]))
        for j, fid in enumerate(ids):
            idx = flat[offsets[j]:offsets[j + 1]].astype(np.int64)
            if len(idx) and (idx.min() < 0 or idx.max() >= num[j]):
                raise DataError(f"{p}: frame {fid!r} has point indices outside its {int(num[j])} points")
            out.indices[fid] = idx
            out.num_points[fid] = int(num[j])
        return out
