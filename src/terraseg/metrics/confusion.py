"""A streaming confusion matrix for semantic segmentation (numpy on CPU, torch on GPU).

Rows are ground-truth ids, columns are predicted ids: ``matrix[g, p]`` counts the pixels (or
points) of class ``g`` that were predicted as ``p``. Ground-truth ids listed as ignored are not
counted. Ids that are not classes (outside ``0..num_classes-1``, or not in ``valid_ids`` for
sparse ontologies) raise :class:`~terraseg.errors.DataError`, because silently dropping them
hides bugs in label maps.

Accumulation is one ``bincount`` over raw ``(gt, pred)`` id pairs (``gt * S + pred`` with S = 256
for uint8 labels), which is as fast as counting gets in numpy. The small S x S pair table is then
folded: rows of ignored ids are dropped, and any count in a row or column of an id that is not a
class raises. Validation therefore costs nothing extra on clean data. Ids that are negative or
1024 and above take a slower lookup-table path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from terraseg.errors import DataError
from terraseg.io.atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from terraseg.metrics.scores import ClassScores
    from terraseg.ontology import Ontology

_PAIR_MAX = 1024  # ids below this are counted as raw (gt, pred) pairs in an S x S table


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "device")


class ConfusionMatrix:
    """Streaming confusion matrix with ignore ids, mergeable and savable.

    Args:
        num_classes: size C of the matrix; class ids are ``0..C-1``.
        ignore_ids: ground-truth ids that are not counted (any non-negative ints, for example
            0 for "unlabelled" or 255 for crop padding).
        valid_ids: the ids that are real classes (default: all of ``0..C-1``). Other ids in
            ``0..C-1`` are errors, which is how sparse ontologies (RELLIS-3D raw ids) are checked.
        class_names: optional names of the C classes (``None`` entries for unused ids).
        ontology_name: optional name of the ontology the ids belong to (kept when saving).

    Example:
        >>> cm = ConfusionMatrix(3, ignore_ids=[255])
        >>> cm.update(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 255]))
        ConfusionMatrix(3 classes, 3 counted)
    """

    def __init__(self, num_classes: int, ignore_ids: Iterable[int] = (), valid_ids: Iterable[int] | None = None,
                 class_names: Sequence[str | None] | None = None, ontology_name: str | None = None) -> None:
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = int(num_classes)
        self.ignore_ids = tuple(sorted({int(i) for i in ignore_ids}))
        if any(i < 0 for i in self.ignore_ids):
            raise ValueError("ignore ids must be non-negative")
        valid = np.ones(self.num_classes, dtype=bool) if valid_ids is None else np.zeros(self.num_classes, bool)
        if valid_ids is not None:
            vids = np.asarray(list(valid_ids), dtype=np.int64)
            if vids.size and (vids.min() < 0 or vids.max() >= self.num_classes):
                raise ValueError("valid ids must lie in 0..num_classes-1")
            valid[vids] = True
        self.valid = valid
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(class_names)} entries, expected {self.num_classes}")
        self.class_names = list(class_names) if class_names is not None else None
        self.ontology_name = ontology_name
        self._mat = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self._tmat: torch.Tensor | None = None  # accumulator for torch inputs, on their device
        self._luts: dict[Any, tuple[Any, Any]] = {}

    # ------------------------------------------------------------------ constructors
    @classmethod
    def for_ontology(cls, ontology: Ontology | str, ignore_ids: Iterable[int] | None = None,
                     extra_ignore: Iterable[int] = ()) -> ConfusionMatrix:
        """A matrix over an ontology's ids (size ``max_id + 1``; unused ids are invalid).

        ``ignore_ids`` defaults to the ontology's own ignore ids; ``extra_ignore`` adds ids such
        as 255 used for padding.
        """
        from terraseg.ontology import get_ontology

        onto = get_ontology(ontology)
        ign = set(onto.ignore_ids if ignore_ids is None else ignore_ids) | set(extra_ignore)
        names: list[str | None] = [None] * (onto.max_id + 1)
        for c in onto:
            names[c.id] = c.name
        return cls(onto.max_id + 1, ignore_ids=ign, valid_ids=onto.ids.tolist(), class_names=names,
                   ontology_name=onto.name)

    def empty_like(self) -> ConfusionMatrix:
        """A new zero matrix with the same classes, ignore ids and names."""
        return ConfusionMatrix(self.num_classes, self.ignore_ids, np.nonzero(self.valid)[0].tolist(),
                               self.class_names, self.ontology_name)

    # ------------------------------------------------------------------ accumulation
    def _row_col(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Where each id ``0..size-1`` goes: rows (class id, C = ignored, C+1 = invalid ground
        truth) and columns (class id, C = invalid prediction), as int64 arrays."""
        key = ("rc", size)
        if key not in self._luts:
            c = self.num_classes
            ids = np.arange(size)
            in_range = ids < c
            rows = np.full(size, c + 1, dtype=np.int64)
            rows[in_range] = np.where(self.valid[ids[in_range]], ids[in_range], c + 1)
            rows[[i for i in self.ignore_ids if i < size]] = c
            cols = np.full(size, c, dtype=np.int64)
            cols[in_range] = np.where(self.valid[ids[in_range]], ids[in_range], c)
            self._luts[key] = (rows, cols)
        return self._luts[key]

    def _pair_size(self, lo: int, hi: int) -> int | None:
        """Side S of the raw (ground truth, prediction) pair table, or None when ids are out of reach."""
        if lo < 0 or hi >= _PAIR_MAX or self.num_classes > _PAIR_MAX:
            return None
        return max(hi + 1, self.num_classes)

    def _clamp_size(self) -> int:
        """Table size for the fallback path; its last slot is neither a class nor an ignore id."""
        return max([self.num_classes, *(i + 1 for i in self.ignore_ids)]) + 1

    def update(self, pred: Any, target: Any) -> ConfusionMatrix:
        """Add a batch of predictions and ground truth of the same shape (any shape).

        ``pred`` may also hold scores or logits with one extra class axis at position 1
        (``(N, C, ...)`` against a ``(N, ...)`` target), which are reduced with argmax.
        numpy arrays and CPU tensors are counted with numpy; GPU tensors are counted on their
        device and kept there until the matrix is read (no host sync per update beyond one
        small read for validation).

        Returns ``self`` so calls can be chained.
        """
        if _is_torch(pred) or _is_torch(target):
            import torch

            p_t = pred if _is_torch(pred) else torch.as_tensor(np.asarray(pred))
            t_t = target if _is_torch(target) else torch.as_tensor(np.asarray(target))
            if p_t.ndim == t_t.ndim + 1 and p_t.is_floating_point():
                from terraseg.models.ops import class_ids

                p_t = class_ids(p_t)
            if p_t.device.type != "cpu" or t_t.device.type != "cpu":
                self._update_torch(p_t, t_t)
                return self
            pred, target = p_t.detach().numpy(), t_t.detach().numpy()
        p, t = np.asarray(pred), np.asarray(target)
        if p.ndim == t.ndim + 1 and p.dtype.kind == "f":
            p = p.argmax(axis=1)
        if p.shape != t.shape:
            raise DataError(f"prediction shape {p.shape} differs from ground-truth shape {t.shape}")
        if p.dtype.kind not in "ui" or t.dtype.kind not in "ui":
            raise DataError(f"label arrays must have an integer dtype, got {p.dtype} and {t.dtype}")
        if p.size == 0:
            return self
        p, t = p.ravel(), t.ravel()
        if p.dtype == np.uint8 and t.dtype == np.uint8:
            size = self._pair_size(0, 255)
        else:
            size = self._pair_size(min(int(p.min()), int(t.min())), max(int(p.max()), int(t.max())))
        if size is not None:
            # count raw (gt, pred) id pairs with one bincount, then fold the small table
            k = t.astype(np.intp)
            k *= size
            k += p if p.dtype != np.uint64 else p.astype(np.intp)
            self._fold_pairs(np.bincount(k, minlength=size * size).reshape(size, size), size)
        else:
            self._update_fallback(p, t)
        return self

    def _fold_pairs(self, cnt: np.ndarray, size: int) -> None:
        """Add an (S, S) table of raw id pairs: drop ignored rows, check invalid ids."""
        c = self.num_classes
        rows, cols = self._row_col(size)
        counted = rows < c
        bad_gt = int(cnt[rows == c + 1].sum())
        bad_pred = int(cnt[counted][:, cols == c].sum())
        self._check_sentinels(bad_gt, bad_pred)
        self._mat += cnt[:c, :c] * counted[:c, None]

    def _update_fallback(self, p: np.ndarray, t: np.ndarray) -> None:
        """Negative or very large ids: clamp them to an invalid slot and use lookup tables."""
        c = self.num_classes
        size = self._clamp_size()
        rows, cols = self._row_col(size)

        def clamp(a: np.ndarray) -> np.ndarray:
            return np.where((a < 0) | (a >= size - 1), size - 1, a)

        idx = rows[clamp(t)] * (c + 1) + cols[clamp(p)]
        counts = np.bincount(idx, minlength=(c + 2) * (c + 1)).reshape(c + 2, c + 1)
        self._check_sentinels(int(counts[c + 1].sum()), int(counts[:c, c].sum()))
        self._mat += counts[:c, :c]

    def _check_sentinels(self, bad_gt: int, bad_pred: int) -> None:
        """Raise if any ground truth fell in the invalid row or any prediction in the invalid column."""
        if bad_gt or bad_pred:
            parts = []
            if bad_gt:
                parts.append(f"{bad_gt} ground-truth values")
            if bad_pred:
                parts.append(f"{bad_pred} predicted values")
            raise DataError(f"{' and '.join(parts)} are not class ids of this matrix "
                            f"(valid: {self._valid_desc()}; ignored: {list(self.ignore_ids) or 'none'})")

    def _valid_desc(self) -> str:
        v = np.nonzero(self.valid)[0]
        if len(v) == self.num_classes:
            return f"0..{self.num_classes - 1}"
        return ", ".join(map(str, v[:20])) + (" ..." if len(v) > 20 else "")

    def _update_torch(self, p: torch.Tensor, t: torch.Tensor) -> None:
        """Count on the tensors' (GPU) device; the same pair-table scheme as the numpy path."""
        import torch

        if p.device != t.device:
            t = t.to(p.device)
        if p.shape != t.shape:
            raise DataError(f"prediction shape {tuple(p.shape)} differs from ground-truth shape {tuple(t.shape)}")
        if p.is_floating_point() or t.is_floating_point():
            raise DataError("label tensors must have an integer dtype")
        if p.numel() == 0:
            return
        c = self.num_classes
        pl, tl = p.reshape(-1).long(), t.reshape(-1).long()
        if p.dtype == torch.uint8 and t.dtype == torch.uint8:
            size = self._pair_size(0, 255)
        else:
            lo_hi = torch.stack([torch.minimum(pl.min(), tl.min()), torch.maximum(pl.max(), tl.max())]).tolist()
            size = self._pair_size(int(lo_hi[0]), int(lo_hi[1]))
        if size is None:
            size = self._clamp_size()
            last = torch.tensor(size - 1, device=tl.device)
            tl = torch.where((tl < 0) | (tl >= size - 1), last, tl)
            pl = torch.where((pl < 0) | (pl >= size - 1), last, pl)
        key = ("torch", size, p.device)
        if key not in self._luts:
            rows, cols = self._row_col(size)
            self._luts[key] = (torch.as_tensor(rows, device=p.device), torch.as_tensor(cols, device=p.device))
        rows_t, cols_t = self._luts[key]
        cnt = torch.bincount(tl * size + pl, minlength=size * size).reshape(size, size)
        counted = rows_t < c
        bad_gt = (cnt * (rows_t == c + 1)[:, None]).sum()
        bad_pred = (cnt * (counted[:, None] & (cols_t == c)[None, :])).sum()
        bad = torch.stack([bad_gt, bad_pred]).tolist()  # one small device->host read
        self._check_sentinels(int(bad[0]), int(bad[1]))
        add = cnt[:c, :c] * counted[:c, None]
        if self._tmat is None or self._tmat.device != add.device:
            if self._tmat is not None:
                self._mat += self._tmat.cpu().numpy()
            self._tmat = torch.zeros((c, c), dtype=torch.int64, device=add.device)
        self._tmat += add

    # ------------------------------------------------------------------ state
    @property
    def matrix(self) -> np.ndarray:
        """The (C, C) int64 counts, rows = ground truth, columns = prediction (a copy)."""
        m = self._mat.copy()
        if self._tmat is not None:
            m += self._tmat.detach().cpu().numpy()
        return m

    @property
    def total(self) -> int:
        """Number of counted (not ignored) elements."""
        return int(self.matrix.sum())

    def reset(self) -> None:
        self._mat[:] = 0
        self._tmat = None

    def _compatible(self, other: ConfusionMatrix) -> None:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge matrices of {self.num_classes} and {other.num_classes} classes")
        if other.ontology_name and self.ontology_name and other.ontology_name != self.ontology_name:
            raise ValueError(f"cannot merge matrices of ontologies {self.ontology_name!r} and {other.ontology_name!r}")

    def merge(self, *others: ConfusionMatrix) -> ConfusionMatrix:
        """Add the counts of other matrices (of the same classes) into this one."""
        for o in others:
            self._compatible(o)
            self._mat += o.matrix
        return self

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return self.merge(other)

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        out = self.empty_like()
        out._mat = self.matrix
        return out.merge(other)

    def ignoring(self, ids: Iterable[int]) -> ConfusionMatrix:
        """A copy that also ignores the ground-truth ``ids``: their rows are zeroed (re-scoring a
        saved matrix under a preset that ignores more ids than the one it was counted with)."""
        extra = sorted({int(i) for i in ids if 0 <= int(i) < self.num_classes})
        out = ConfusionMatrix(self.num_classes, ignore_ids=sorted({*self.ignore_ids, *extra}),
                              valid_ids=np.nonzero(self.valid)[0].tolist(), class_names=self.class_names,
                              ontology_name=self.ontology_name)
        out._mat = self.matrix
        out._mat[extra, :] = 0
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfusionMatrix) and np.array_equal(self.matrix, other.matrix)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ConfusionMatrix({self.num_classes} classes, {self.total} counted)"

    def all_reduce(self, group: Any = None) -> ConfusionMatrix:
        """Sum the matrix over all processes of a ``torch.distributed`` group (in place).

        Does nothing when torch.distributed is not initialised. Every process must call it.
        """
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = self._tmat.device if self._tmat is not None else torch.device("cpu")
        if dist.get_backend(group) == "nccl" and device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        t = torch.as_tensor(self.matrix, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        self._mat = t.cpu().numpy().astype(np.int64)
        self._tmat = None
        return self

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save to ``.npz`` (matrix, ignore ids, valid ids, class names, ontology name), atomically."""
        p = Path(path)
        names = np.array(["" if n is None else n for n in (self.class_names or [None] * self.num_classes)])
        with atomic_path(p) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, matrix=self.matrix, ignore_ids=np.array(self.ignore_ids, dtype=np.int64),
                                    valid_ids=np.nonzero(self.valid)[0], class_names=names,
                                    ontology_name=np.array(self.ontology_name or ""))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConfusionMatrix:
        """Load a matrix written by :meth:`save`."""
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                mat = z["matrix"]
                names = [str(n) or None for n in z["class_names"]]
                cm = cls(mat.shape[0], ignore_ids=z["ignore_ids"].tolist(), valid_ids=z["valid_ids"].tolist(),
                         class_names=names if any(names) else None,
                         ontology_name=str(z["ontology_name"]) or None)
        except FileNotFoundError:
            raise DataError(f"{p}: file not found") from None
        except (KeyError, ValueError, OSError) as exc:
            raise DataError(f"{p}: not a terraseg confusion matrix file ({exc})") from exc
        if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
            raise DataError(f"{p}: matrix must be square, got {mat.shape}")
        cm._mat = mat.astype(np.int64)
        return cm

    # ------------------------------------------------------------------ scores
    def scores(self, exclude_ids: Iterable[int] = ()) -> ClassScores:
        """Per-class and mean scores over the valid ids (see :class:`terraseg.metrics.ClassScores`)."""
        from terraseg.metrics.scores import ClassScores

        return ClassScores.from_matrix(self.matrix, class_ids=np.nonzero(self.valid)[0],
                                       class_names=self.class_names, exclude_ids=exclude_ids)
