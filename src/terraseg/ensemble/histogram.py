"""The pair histogram ``H[m1_pred, m2_pred, gt]`` of two models' predictions against ground truth.

Index space
-----------
``H`` is a ``(C, C, C)`` int64 array over the *classes of the ontology in ontology order*:
index ``k`` is the class with id ``class_ids[k]``. For the contiguous ontologies (GOOSE,
RELLIS-3D, SemanticKITTI, CARLA) index and id are the same; sparse ontologies (RELLIS-3D raw
ids, SemanticKITTI raw ids) are compacted so the table stays small.

``H[i, c, g]`` counts the pixels (or points) where model 1 predicted class ``i``, model 2
predicted ``c`` and the ground truth is ``g``. Ground-truth ids that are ignored (the
preset's ignore ids, plus ``extra_ignore``, by default 255 padding) are not counted at all,
as :class:`terraseg.metrics.ConfusionMatrix` does, so ``H.sum(axis=1).T`` is exactly the
confusion matrix of model 1 that ``terraseg eval-masks`` would build (restricted to class ids).
A prediction that is not a class id, or a ground-truth id that is neither a class nor ignored,
is an error (:class:`~terraseg.errors.DataError` naming the file).

Counting
--------
One pass over the three label arrays (uint8 or uint16) with a compiled (numba) loop that
releases the GIL: each frame is cut into one slice per thread, each thread counts into its own
uint32 table, and the tables are folded into int64 only when a uint32 could overflow or the
result is read (not per frame). Ids go through small lookup tables that send a prediction that
is not a class to an extra slot ``C`` and a ground-truth value to ``C`` (ignored) or ``C + 1``
(not a class), so validation is free on clean data: the table is ``(C+1, C+1, C+2)`` and the
sentinel slots are checked after each frame. Pixels where both models agree (typically 85-90 %)
land on the ``C`` short diagonal rows ``H[k, k, :]`` (16 KiB for 64 classes), which stay in L1
cache by themselves, so the big table is only touched by disagreeing pixels. Without numba the
same counts come from chunked ``np.bincount`` calls.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.io.atomic import atomic_path
from terraseg.progress import ProgressBar

try:  # numba is a dependency, but keep a numpy path so a broken numba install only costs speed
    from numba import njit

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False

Backend = Literal["auto", "numba", "numpy"]
LabelKind = Literal["auto", "png", "label"]
SplitScheme = Literal["index", "block"]

MAX_CLASSES = 256  # (C+1)^2 (C+2) uint32 per thread: 256 classes -> 67 MB per thread
LABEL_EXTS = {"png": (".png",), "label": (".label",)}
_NUMPY_CHUNK = 1 << 22  # elements per bincount call in the numpy path (bounded temporaries)
_U32_SAFE = (1 << 32) - 1  # elements a uint32 table may take before it must be folded
_MIN_SLICE = 1 << 16  # below this many elements per thread, one thread counts the frame


if _HAVE_NUMBA:

    @njit(cache=True, nogil=True)
    def _count_kernel(m1: np.ndarray, m2: np.ndarray, gt: np.ndarray, lut_p: np.ndarray, lut_g: np.ndarray,
                      c: int, table: np.ndarray) -> None:  # pragma: no cover - compiled
        s2 = c + 2
        s1 = (c + 1) * s2
        for j in range(m1.shape[0]):
            table[lut_p[m1[j]] * s1 + lut_p[m2[j]] * s2 + lut_g[gt[j]]] += 1


def numba_available() -> bool:
    """True when the compiled counting kernel can be used."""
    return _HAVE_NUMBA


def default_threads() -> int:
    """Counting threads: the CPUs this process may run on (at most 8; tables are per thread)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _counting_pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``threads`` counting threads (created on first use, then reused)."""
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="terraseg-hist")
    return pool


def _as_label_array(a: np.ndarray, what: str, source: str) -> np.ndarray:
    """Flatten to contiguous uint8/uint16 (other integer dtypes are range-checked and cast)."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "ui":
        raise DataError(f"{source}: {what} labels must have an integer dtype, got {arr.dtype}")
    if arr.dtype not in (np.uint8, np.uint16):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise DataError(f"{source}: {what} labels hold ids outside 0..65535 ({lo}..{hi})")
        arr = arr.astype(np.uint8 if hi < 256 else np.uint16)
    return np.ascontiguousarray(arr).reshape(-1)


class HistogramAccumulator:
    """Streaming builder of one ``(C, C, C)`` pair histogram; feed frames with :meth:`add`.

    Args:
        class_ids: ontology ids of the C classes (ascending); index ``k`` of the histogram is
            id ``class_ids[k]``. ``C`` must be at most 256.
        ignore_ids: ground-truth ids that are not counted (ids that are not classes are fine,
            e.g. 255).
        backend: ``"numba"`` (compiled single pass), ``"numpy"`` (chunked bincount) or
            ``"auto"`` (numba when importable).
        threads: counting threads for the numba backend (default :func:`default_threads`).
            Frames are split into one slice per thread; on a machine busy with other work one
            thread can be faster.

    The per-thread tables live until :meth:`counts` is read, so adding many frames costs no
    per-frame reduction. Memory: ``(4 * threads + 8) * (C+1)**2 * (C+2)`` bytes (4.7 MB for 64
    classes and 2 threads).
    """

    def __init__(self, class_ids: Sequence[int] | np.ndarray, ignore_ids: Iterable[int] = (),
                 backend: Backend = "auto", threads: int | None = None) -> None:
        ids = np.asarray(class_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ConfigError("a pair histogram needs at least one class id")
        if np.any(np.diff(ids) <= 0) or ids[0] < 0 or ids[-1] > 65535:
            raise ConfigError("class ids must be ascending, unique and within 0..65535")
        if ids.size > MAX_CLASSES:
            raise ConfigError(f"a pair histogram supports at most {MAX_CLASSES} classes, got {ids.size}")
        if backend not in ("auto", "numba", "numpy"):
            raise ConfigError(f"unknown histogram backend {backend!r} (auto, numba, numpy)")
        if backend == "numba" and not _HAVE_NUMBA:
            raise ConfigError("the numba histogram backend was requested but numba is not importable")
        self.backend: str = "numba" if backend in ("auto", "numba") and _HAVE_NUMBA else "numpy"
        self.class_ids = ids
        self.ignore_ids = tuple(sorted({int(i) for i in ignore_ids}))
        self.num_classes = c = int(ids.size)
        # id -> class index; predictions: c = not a class; ground truth: c = ignored, c + 1 = not a class
        self._lut_p = np.full(65536, c, dtype=np.int64)
        self._lut_p[ids] = np.arange(c)
        self._lut_g = np.full(65536, c + 1, dtype=np.int64)
        self._lut_g[ids] = np.arange(c)
        self._lut_g[[i for i in self.ignore_ids if 0 <= i <= 65535]] = c
        self._luts8 = (self._lut_p[:256].copy(), self._lut_g[:256].copy())
        self._shape = (c + 1, c + 1, c + 2)
        size = (c + 1) * (c + 1) * (c + 2)
        self.threads = max(1, int(threads)) if threads is not None else default_threads()
        if self.backend == "numpy":
            self.threads = 1
        self._tabs = np.zeros((self.threads, size), dtype=np.uint32) if self.backend == "numba" else None
        self._since_fold = 0  # elements counted into the uint32 tables since they were last folded
        self._acc = np.zeros(size, dtype=np.int64)
        self.frames = 0

    # ------------------------------------------------------------------ accumulation
    def add(self, m1: np.ndarray, m2: np.ndarray, gt: np.ndarray, source: str = "arrays") -> None:
        """Count one frame: three integer label arrays of the same shape (any shape).

        Raises:
            DataError: shapes differ, or a prediction / ground-truth value is not a class id
                (``source`` names the frame, e.g. its three files). Nothing is counted then.
        """
        a1, a2, ag = np.asarray(m1), np.asarray(m2), np.asarray(gt)
        if not (a1.shape == a2.shape == ag.shape):
            raise DataError(f"{source}: shapes differ: model 1 {a1.shape}, model 2 {a2.shape}, "
                            f"ground truth {ag.shape}")
        f1 = _as_label_array(a1, "model-1", source)
        f2 = _as_label_array(a2, "model-2", source)
        fg = _as_label_array(ag, "ground-truth", source)
        if len({f1.dtype, f2.dtype, fg.dtype}) > 1:  # one compiled specialisation per dtype
            f1, f2, fg = (x.astype(np.uint16, copy=False) for x in (f1, f2, fg))
        if f1.size:
            if self.backend == "numba":
                self._count_numba(f1, f2, fg)
            else:
                self._count_numpy(f1, f2, fg)
            self._check_frame(f1, f2, fg, source)
        self.frames += 1

    def _count_numba(self, m1: np.ndarray, m2: np.ndarray, gt: np.ndarray) -> None:
        assert self._tabs is not None
        lut_p, lut_g = self._luts8 if m1.dtype == np.uint8 else (self._lut_p, self._lut_g)
        c = self.num_classes
        for lo in range(0, m1.size, _U32_SAFE):  # a uint32 bin must not overflow
            hi = min(m1.size, lo + _U32_SAFE)
            if self._since_fold + (hi - lo) > _U32_SAFE:
                self._fold()
            nt = min(self.threads, max(1, (hi - lo) // _MIN_SLICE))
            cuts = [lo + (hi - lo) * k // nt for k in range(nt + 1)]
            if nt == 1:
                _count_kernel(m1[lo:hi], m2[lo:hi], gt[lo:hi], lut_p, lut_g, c, self._tabs[0])
            else:
                pool = _counting_pool(self.threads)
                futs = [pool.submit(_count_kernel, m1[a:b], m2[a:b], gt[a:b], lut_p, lut_g, c, self._tabs[k])
                        for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]
                for f in futs:
                    f.result()
            self._since_fold += hi - lo

    def _count_numpy(self, m1: np.ndarray, m2: np.ndarray, gt: np.ndarray) -> None:
        c = self.num_classes
        s2, s1 = c + 2, (c + 1) * (c + 2)
        for lo in range(0, m1.size, _NUMPY_CHUNK):
            sl = slice(lo, lo + _NUMPY_CHUNK)
            key = self._lut_p[m1[sl]] * s1
            key += self._lut_p[m2[sl]] * s2
            key += self._lut_g[gt[sl]]
            self._acc += np.bincount(key, minlength=self._acc.size)

    def _full_table(self) -> np.ndarray:
        """All counts so far including sentinel slots, ``(C+1, C+1, C+2)`` int64."""
        t = self._acc.copy()
        if self._tabs is not None and self._since_fold:
            t += self._tabs.sum(axis=0, dtype=np.int64)
        return t.reshape(self._shape)

    def _sentinels(self) -> tuple[int, int]:
        """(invalid ground truth, invalid prediction) in the tables: sums over the sentinel slots
        only (a few thousand values per table, not the whole table). Both are 0 between frames:
        a frame that fills them is taken out again before its error is raised."""
        c = self.num_classes
        tables = [self._acc.reshape(self._shape)]
        if self._tabs is not None and self._since_fold:
            tables += [t.reshape(self._shape) for t in self._tabs]
        bad_gt = sum(int(t[:, :, c + 1].sum(dtype=np.int64)) for t in tables)
        bad_pred = sum(int(t[c, :, :c].sum(dtype=np.int64) + t[:c, c, :c].sum(dtype=np.int64)) for t in tables)
        return bad_gt, bad_pred

    def _fold(self) -> None:
        if self._tabs is not None and self._since_fold:
            self._acc += self._tabs.sum(axis=0, dtype=np.int64)
            self._tabs[:] = 0
        self._since_fold = 0

    def _check_frame(self, m1: np.ndarray, m2: np.ndarray, gt: np.ndarray, source: str) -> None:
        """Raise (after taking the frame back out) if it held ids that are not classes."""
        bad_gt, bad_pred = self._sentinels()
        if not (bad_gt or bad_pred):
            return
        self._fold()  # take this frame out again, so the accumulator stays usable
        c = self.num_classes
        s2, s1 = c + 2, (c + 1) * (c + 2)
        key = self._lut_p[m1] * s1 + self._lut_p[m2] * s2 + self._lut_g[gt]
        self._acc -= np.bincount(key, minlength=self._acc.size)
        g = self._lut_g[gt]
        counted = g < c
        parts = []
        if bad_gt:
            vals = np.unique(gt[g == c + 1])[:10]
            parts.append(f"{bad_gt} ground-truth values are neither class ids nor ignored "
                         f"(ids {', '.join(map(str, vals.tolist()))}; ignored: {list(self.ignore_ids) or 'none'})")
        for what, m in (("model-1", m1), ("model-2", m2)):
            badm = counted & (self._lut_p[m] >= c)
            if badm.any():
                vals = np.unique(m[badm])[:10]
                parts.append(f"{int(badm.sum())} {what} predictions are not class ids "
                             f"(ids {', '.join(map(str, vals.tolist()))})")
        raise DataError(f"{source}: " + "; ".join(parts))

    # ------------------------------------------------------------------ result
    def counts(self) -> np.ndarray:
        """The ``(C, C, C)`` int64 histogram so far (a new array)."""
        c = self.num_classes
        return np.ascontiguousarray(self._full_table()[:c, :c, :c])

    def reset(self) -> None:
        if self._tabs is not None:
            self._tabs[:] = 0
        self._acc[:] = 0
        self._since_fold = 0
        self.frames = 0


def histogram_arrays(m1: np.ndarray, m2: np.ndarray, gt: np.ndarray, num_classes: int,
                     ignore_ids: Sequence[int] = (), backend: Backend = "auto") -> np.ndarray:
    """``H[m1, m2, gt]`` as a ``(C, C, C)`` int64 array for one frame (ids ``0..C-1``).

    The three arrays must have the same shape (any shape) and an integer dtype. Ground-truth
    values in ``ignore_ids`` are skipped; any other value outside ``0..C-1`` raises
    :class:`DataError`.

    >>> import numpy as np
    >>> h = histogram_arrays(np.array([0, 1, 1]), np.array([0, 0, 1]), np.array([0, 1, 255]), 2, ignore_ids=[255])
    >>> int(h[0, 0, 0]), int(h[1, 0, 1]), int(h.sum())
    (1, 1, 2)
    """
    acc = HistogramAccumulator(np.arange(int(num_classes)), ignore_ids, backend=backend)
    acc.add(m1, m2, gt)
    return acc.counts()


# ====================================================================== the histogram object
@dataclass
class PairHistogram:
    """``H[m1_pred, m2_pred, gt]`` counts over every counted pixel / point of two models.

    Attributes:
        counts: ``(C, C, C)`` int64; axis 0 = model-1 prediction, 1 = model-2 prediction,
            2 = ground truth; index ``k`` is the class ``class_ids[k]``.
        class_names: the C class names (ontology order).
        ontology: ontology name (or None for bare arrays).
        frames: number of frames accumulated.
        class_ids: ``(C,)`` int64 ontology ids of the indices (default ``0..C-1``).
        ignore_ids: ground-truth ids that were not counted. Classes among them are not scored.
        exclude_ids: class ids scored but left out of the mean (evaluation preset).
        stems: the frames' names, in the order they were counted (may be empty).
    """

    counts: np.ndarray
    class_names: list[str]
    ontology: str | None = None
    frames: int = 0
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ignore_ids: tuple[int, ...] = ()
    exclude_ids: tuple[int, ...] = ()
    stems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        h = np.asarray(self.counts)
        if h.ndim != 3 or not (h.shape[0] == h.shape[1] == h.shape[2]):
            raise DataError(f"a pair histogram must be (C, C, C), got shape {h.shape}")
        self.counts = h.astype(np.int64, copy=False)
        c = h.shape[0]
        if len(self.class_names) != c:
            raise DataError(f"pair histogram of {c} classes has {len(self.class_names)} class names")
        ids = np.asarray(self.class_ids, dtype=np.int64)
        self.class_ids = np.arange(c, dtype=np.int64) if ids.size == 0 else ids
        if self.class_ids.shape != (c,):
            raise DataError(f"pair histogram of {c} classes has {self.class_ids.size} class ids")
        self.class_names = [str(n) for n in self.class_names]
        self.ignore_ids = tuple(sorted(int(i) for i in self.ignore_ids))
        self.exclude_ids = tuple(sorted(int(i) for i in self.exclude_ids))

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])

    @property
    def total(self) -> int:
        """Number of counted pixels / points."""
        return int(self.counts.sum())

    @property
    def scored(self) -> np.ndarray:
        """``(C,)`` bool: classes that get an IoU (not ignored)."""
        return ~np.isin(self.class_ids, self.ignore_ids)

    @property
    def in_mean(self) -> np.ndarray:
        """``(C,)`` bool: classes averaged into the mIoU (scored and not excluded)."""
        return self.scored & ~np.isin(self.class_ids, self.exclude_ids)

    def confusion(self, model: int) -> np.ndarray:
        """``(C, C)`` int64 confusion matrix of model 1 or 2: rows = ground truth, columns = prediction."""
        if model not in (1, 2):
            raise ValueError("model must be 1 or 2")
        return np.ascontiguousarray(self.counts.sum(axis=2 - model).T)

    def agreement(self) -> np.ndarray:
        """``(C, C)`` int64 counts where both models predict the same class: rows = ground truth,
        columns = the shared prediction. ``agreement().sum(axis=1)`` is per ground-truth class."""
        k = np.arange(self.num_classes)
        return np.ascontiguousarray(self.counts[k, k, :].T)

    def agreement_rate(self) -> float:
        """Fraction of counted pixels where the models agree (NaN when empty)."""
        tot = self.total
        return float(self.agreement().sum() / tot) if tot else float("nan")

    def group_sizes(self) -> np.ndarray:
        """``(C, C)`` int64 ``N[i, c]``: pixels where model 1 says ``i`` and model 2 says ``c``."""
        return self.counts.sum(axis=2)

    def _check_compatible(self, other: PairHistogram) -> None:
        if other.counts.shape != self.counts.shape or not np.array_equal(other.class_ids, self.class_ids):
            raise DataError(f"cannot add pair histograms over different classes "
                            f"({self.num_classes} and {other.num_classes})")
        if self.ontology and other.ontology and self.ontology != other.ontology:
            raise DataError(f"cannot add pair histograms of ontologies {self.ontology!r} and {other.ontology!r}")
        if self.ignore_ids != other.ignore_ids or self.exclude_ids != other.exclude_ids:
            raise DataError("cannot add pair histograms counted with different ignore / exclude ids")

    def __add__(self, other: PairHistogram) -> PairHistogram:
        if not isinstance(other, PairHistogram):
            return NotImplemented
        self._check_compatible(other)
        return PairHistogram(self.counts + other.counts, list(self.class_names), self.ontology or other.ontology,
                             self.frames + other.frames, self.class_ids.copy(), self.ignore_ids, self.exclude_ids,
                             [*self.stems, *other.stems])

    def __radd__(self, other: object) -> PairHistogram:
        if other == 0:  # sum([...]) starts from 0
            return self
        return NotImplemented  # type: ignore[no-any-return]

    @staticmethod
    def sum(hists: Sequence[PairHistogram]) -> PairHistogram:
        """The sum of one or more compatible histograms."""
        if not hists:
            raise ValueError("nothing to sum")
        out = hists[0]
        for h in hists[1:]:
            out = out + h
        return out

    def __repr__(self) -> str:
        return (f"PairHistogram({self.num_classes} classes, {self.frames} frames, {self.total} counted, "
                f"ontology={self.ontology!r})")

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write to ``.npz`` (compressed) atomically; returns the path."""
        p = Path(path)
        with atomic_path(p) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(
                fh, format=np.array("terraseg-pair-histogram"), version=np.array(1), counts=self.counts,
                class_names=np.array(self.class_names, dtype=str), ontology=np.array(self.ontology or ""),
                frames=np.array(self.frames, dtype=np.int64), class_ids=self.class_ids,
                ignore_ids=np.array(self.ignore_ids, dtype=np.int64),
                exclude_ids=np.array(self.exclude_ids, dtype=np.int64), stems=np.array(self.stems, dtype=str))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PairHistogram:
        """Read a file written by :meth:`save` (DataError naming the file when it is not one)."""
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: pair histogram file not found")
        try:
            with np.load(p, allow_pickle=False) as z:
                if str(z["format"]) != "terraseg-pair-histogram":
                    raise DataError(f"{p}: not a terraseg pair histogram (format {str(z['format'])!r})")
                stems = [str(s) for s in z["stems"]] if "stems" in z else []
                h = cls(z["counts"], [str(n) for n in z["class_names"]], str(z["ontology"]) or None,
                        int(z["frames"]), z["class_ids"], tuple(z["ignore_ids"].tolist()),
                        tuple(z["exclude_ids"].tolist()), stems)
        except DataError as exc:
            if str(exc).startswith(str(p)):
                raise
            raise DataError(f"{p}: {exc}") from exc
        except (KeyError, ValueError, OSError, EOFError) as exc:
            raise DataError(f"{p}: not a terraseg pair histogram file ({exc})") from exc
        if (h.counts < 0).any():
            raise DataError(f"{p}: pair histogram holds negative counts")
        return h


# ====================================================================== files
def index_label_files(root: str | os.PathLike[str], suffix: str = "", kind: LabelKind = "auto",
                      what: str = "label") -> tuple[dict[str, Path], str]:
    """Label files under ``root`` (recursive) keyed by relative path without extension and suffix.

    ``kind`` ``"png"`` (id PNGs), ``"label"`` (SemanticKITTI ``.label``) or ``"auto"`` (whichever
    the folder holds; PNGs win when it holds both). Returns ``(files, kind)``.
    """
    r = Path(root)
    if not r.is_dir():
        raise DataError(f"{r}: {what} folder not found")
    kinds = ["png", "label"] if kind == "auto" else [kind]
    if kind not in ("auto", "png", "label"):
        raise ConfigError(f"unknown label file kind {kind!r} (auto, png, label)")
    for k in kinds:
        out: dict[str, Path] = {}
        for f in sorted(r.rglob("*")):
            if not f.is_file() or f.suffix.lower() not in LABEL_EXTS[k] or f.name.startswith("."):
                continue
            rel = f.relative_to(r).with_suffix("").as_posix()
            if suffix:
                if not rel.endswith(suffix):
                    continue
                rel = rel[: -len(suffix)]
            out[rel] = f
        if out:
            return out, k
    exts = ", ".join(e for k in kinds for e in LABEL_EXTS[k])
    raise DataError(f"{r}: no {what} files ({exts}{' ending in ' + suffix if suffix else ''})")


def _short(paths: Sequence[object], n: int = 5) -> str:
    s = ", ".join(str(p) for p in paths[:n])
    return s + (f" and {len(paths) - n} more" if len(paths) > n else "")


def pair_label_folders(folders: Sequence[tuple[str | os.PathLike[str], str, str]], kind: LabelKind = "auto",
                       ) -> tuple[list[tuple[str, list[Path]]], str]:
    """Pair label files by relative stem across folders.

    ``folders`` is a list of ``(folder, suffix, description)``. Every folder must hold exactly
    the same stems; otherwise one :class:`DataError` lists what is missing where.
    Returns ``([(stem, [path per folder]), ...] sorted by stem, kind)``.
    """
    indexes: list[dict[str, Path]] = []
    kinds: list[str] = []
    for d, suffix, what in folders:
        idx, k = index_label_files(d, suffix, kind, what)
        indexes.append(idx)
        kinds.append(k)
    if len(set(kinds)) > 1:
        raise DataError("folders hold different label file kinds: "
                        + ", ".join(f"{f[0]} ({k})" for f, k in zip(folders, kinds)))
    all_stems = sorted(set().union(*indexes))
    shared = set(indexes[0]).intersection(*indexes[1:])
    if not shared:
        examples = ", ".join(f"{next(iter(idx))!r} in {f[0]}" for f, idx in zip(folders, indexes))
        raise DataError(f"no frame name is shared by the label folders ({examples}); strip suffixes such as "
                        "_labelids with the suffix options (e.g. --gt-suffix _labelids)")
    problems = []
    for (d, _, what), idx in zip(folders, indexes):
        missing = [s for s in all_stems if s not in idx]
        if missing:
            problems.append(f"{what} folder {d} lacks {len(missing)} stem(s) present elsewhere: {_short(missing)}")
    if problems:
        raise DataError("label folders do not hold the same frames: " + "; ".join(problems))
    return [(s, [idx[s] for idx in indexes]) for s in all_stems], kinds[0]


def read_labels(path: Path, kind: str) -> np.ndarray:
    """Read an id PNG (``(H, W)`` uint8/uint16) or the semantic part of a ``.label`` file (``(N,)`` uint16)."""
    if kind == "label":
        from terraseg.io.scans import read_label

        return read_label(path)[0]
    from terraseg.io.labels import read_label_png

    return read_label_png(path)


def assign_groups(num_frames: int, groups: int, scheme: SplitScheme = "index") -> np.ndarray:
    """Group (fold) index of each frame in sorted-stem order, ``(num_frames,)`` int64.

    ``"index"``: frame ``k`` goes to ``k % groups`` (interleaved: neighbouring video frames land
    in different folds, which leaks near-duplicates between tuning and held-out data).
    ``"block"``: contiguous blocks, ``k * groups // num_frames`` (whole runs of frames stay
    together; the more honest choice for sequences).
    """
    if groups < 1:
        raise ConfigError(f"the number of folds must be >= 1, got {groups}")
    k = np.arange(num_frames, dtype=np.int64)
    if scheme == "index":
        return k % groups
    if scheme == "block":
        return (k * groups) // max(num_frames, 1)
    raise ConfigError(f"unknown split scheme {scheme!r} (index, block)")


def ontology_classes(ontology: str, preset: str | None = None,
                     extra_ignore: Sequence[int] = (255,)) -> tuple[np.ndarray, list[str], tuple[int, ...],
                                                                     tuple[int, ...], str]:
    """``(class_ids, class_names, ignore_ids, exclude_ids, ontology name)`` of an ontology and preset.

    The ignore ids are the preset's effective ignore ids (the ontology's own for the default
    preset), plus ``extra_ignore`` ids that are not classes (255 padding by default).
    """
    from terraseg.metrics import get_preset
    from terraseg.ontology import get_ontology

    onto = get_ontology(ontology)
    p = get_preset(preset, onto)
    ids = onto.ids.astype(np.int64)
    extra = [int(i) for i in extra_ignore if int(i) not in onto]
    ignore = tuple(sorted({*p.effective_ignore_ids(), *extra}))
    return ids, list(onto.names), ignore, tuple(sorted(p.exclude_ids)), onto.name


def histogram_from_arrays(triples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], ontology: str, *,
                          preset: str | None = None, extra_ignore: Sequence[int] = (255,),
                          backend: Backend = "auto") -> PairHistogram:
    """A histogram from ``(m1, m2, gt)`` label arrays, e.g. two models' outputs computed on the fly.

    >>> import numpy as np
    >>> a = np.zeros((4, 4), np.uint8)
    >>> h = histogram_from_arrays([(a, a, a)], "goose")
    >>> h.counts.shape, h.total, h.frames
    ((64, 64, 64), 16, 1)
    """
    ids, names, ignore, exclude, oname = ontology_classes(ontology, preset, extra_ignore)
    acc = HistogramAccumulator(ids, ignore, backend=backend)
    for k, (m1, m2, gt) in enumerate(triples):
        acc.add(m1, m2, gt, source=f"frame {k}")
    return PairHistogram(acc.counts(), names, oname, acc.frames, ids, ignore, exclude)


def build_group_histograms(m1_dir: str | os.PathLike[str], m2_dir: str | os.PathLike[str],
                           gt_dir: str | os.PathLike[str], ontology: str,
                           group_of: Callable[[int], np.ndarray] | Sequence[int] | None, num_groups: int, *,
                           gt_suffix: str = "", m1_suffix: str = "", m2_suffix: str = "", kind: LabelKind = "auto",
                           preset: str | None = None, extra_ignore: Sequence[int] = (255,), workers: int = 2,
                           backend: Backend = "auto", progress: bool = False) -> list[PairHistogram]:
    """One pass over three label folders, counting each frame into the histogram of its group.

    ``group_of`` maps the number of frames to a group index per frame (sorted stem order), or
    is that array itself; ``None`` puts everything in group 0. Returns ``num_groups``
    histograms (a group may be empty). Files are read on ``workers`` threads (PNG decoding
    releases the GIL) while counting runs in the calling thread.

    Raises:
        DataError: unpaired stems (one message listing them), size mismatch (naming the three
            files) or invalid ids (naming the file set).
    """
    pairs, k = pair_label_folders([(gt_dir, gt_suffix, "ground-truth"), (m1_dir, m1_suffix, "model-1"),
                                   (m2_dir, m2_suffix, "model-2")], kind)
    n = len(pairs)
    if group_of is None:
        grp = np.zeros(n, dtype=np.int64)
    elif callable(group_of):
        grp = np.asarray(group_of(n), dtype=np.int64)
    else:
        grp = np.asarray(group_of, dtype=np.int64)
    if grp.shape != (n,) or (n and (grp.min() < 0 or grp.max() >= num_groups)):
        raise ConfigError(f"group assignment must give {n} indices in 0..{num_groups - 1}")
    ids, names, ignore, exclude, oname = ontology_classes(ontology, preset, extra_ignore)
    accs = [HistogramAccumulator(ids, ignore, backend=backend) for _ in range(num_groups)]
    stems: list[list[str]] = [[] for _ in range(num_groups)]

    def load(item: tuple[str, list[Path]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        _, (g, a, b) = item
        gt, m1, m2 = read_labels(g, k), read_labels(a, k), read_labels(b, k)
        if not (m1.shape == m2.shape == gt.shape):
            def size(x: np.ndarray) -> str:
                return f"{x.shape[1]}x{x.shape[0]}" if x.ndim == 2 else f"{x.size} points"
            raise DataError(f"sizes differ: {a} is {size(m1)}, {b} is {size(m2)}, {g} is {size(gt)}")
        return m1, m2, gt

    workers = max(1, int(workers))
    with ProgressBar(n, "counting H[m1, m2, gt]", enabled=progress) as bar, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        window: deque[tuple[int, Future[tuple[np.ndarray, np.ndarray, np.ndarray]]]] = deque()
        nxt = 0
        while nxt < n and len(window) < 2 * workers:
            window.append((nxt, pool.submit(load, pairs[nxt])))
            nxt += 1
        try:
            while window:
                idx, fut = window.popleft()
                if nxt < n:
                    window.append((nxt, pool.submit(load, pairs[nxt])))
                    nxt += 1
                m1, m2, gt = fut.result()
                stem, (g, a, b) = pairs[idx]
                accs[grp[idx]].add(m1, m2, gt, source=f"{a} / {b} against {g}")
                stems[grp[idx]].append(stem)
                bar.advance()
        finally:
            for _, f in window:
                f.cancel()
    return [PairHistogram(acc.counts(), list(names), oname, acc.frames, ids.copy(), ignore, exclude, st)
            for acc, st in zip(accs, stems)]


def build_histogram(m1_dir: str | os.PathLike[str], m2_dir: str | os.PathLike[str], gt_dir: str | os.PathLike[str],
                    ontology: str, *, gt_suffix: str = "", kind: LabelKind = "auto", folds: int = 1,
                    progress: bool = False, m1_suffix: str = "", m2_suffix: str = "", preset: str | None = None,
                    extra_ignore: Sequence[int] = (255,), split: SplitScheme = "index", workers: int = 2,
                    backend: Backend = "auto") -> list[PairHistogram]:
    """Pair files by stem across three folders and count ``H[m1, m2, gt]``, one histogram per fold.

    Files are id PNGs or SemanticKITTI ``.label`` files (``kind``), paired by relative path
    without extension (and without ``*_suffix``, e.g. ``gt_suffix="_labelids"`` for GOOSE).
    Frames go to folds by sorted stem index: ``index % folds`` (``split="index"``, default) or
    contiguous blocks (``split="block"``). ``folds=1`` returns ``[H]``. Ground-truth ids ignored
    by the ontology's default preset (or ``preset``) and ``extra_ignore`` are not counted.
    """
    return build_group_histograms(m1_dir, m2_dir, gt_dir, ontology,
                                  lambda n: assign_groups(n, folds, split), folds, gt_suffix=gt_suffix,
                                  m1_suffix=m1_suffix, m2_suffix=m2_suffix, kind=kind, preset=preset,
                                  extra_ignore=extra_ignore, workers=workers, backend=backend, progress=progress)
