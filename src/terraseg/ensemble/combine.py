"""Score-level ensembles of N models: weighted probability / logit averaging and majority vote.

Saved scores
------------
One file per frame and model, paired across model folders by relative path without extension:

- ``<stem>.npy``: one float array (float16/32/64) of shape ``(C, H, W)`` for an image or
  ``(C, N)`` for a scan, **class axis first**; channel ``c`` is class id ``c`` (the layout of
  :meth:`terraseg.inference.ImagePredictor.probabilities`). Whether it holds probabilities or
  logits is given by the caller (``kinds``, default probabilities). ``.npy`` files are
  memory-mapped, so frames larger than memory are fine.
- ``<stem>.npz``: the same array stored under the key ``probs`` (probabilities) or ``logits``;
  the key says which.

Averaging (``mode``)
--------------------
``"prob"``: the weighted mean of probabilities (logit inputs go through a softmax first).
``"logit"``: the weighted mean of logits (probability inputs become log-probabilities first),
i.e. a weighted geometric mean of the probabilities. The label is the argmax (ties -> the
lowest id). Weights need not sum to 1; they are normalised.

Majority vote
-------------
Each pixel takes the label with the largest total weight among the models' labels; a tie goes
to the label of the earliest model in the list (so list the strongest model first).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from terraseg.ensemble.histogram import LabelKind, pair_label_folders, read_labels
from terraseg.errors import ConfigError, DataError
from terraseg.io.atomic import atomic_write_text
from terraseg.ontology import Ontology
from terraseg.progress import ProgressBar

ScoreKind = Literal["probs", "logits"]
AverageMode = Literal["prob", "logit"]
SCORE_EXTS = (".npy", ".npz")
_EPS = 1e-12
_BAND_ELEMENTS = 1 << 24  # float32 elements per model per band (64 MiB): bounds temporaries


class ProbabilityModel(Protocol):
    """Anything with ``probabilities(image) -> (K, H, W)`` float class probabilities (channel = id),
    such as :class:`terraseg.inference.ImagePredictor` or :class:`terraseg.inference.OrtImagePredictor`."""

    def probabilities(self, image: np.ndarray) -> np.ndarray: ...


class LabelModel(Protocol):
    """Anything with ``predict(image) -> (H, W)`` class ids."""

    def predict(self, image: np.ndarray) -> np.ndarray: ...


def normalise_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """``(n,)`` float64 weights summing to 1 (equal weights when None)."""
    if n < 1:
        raise ConfigError("an ensemble needs at least one model")
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (n,):
        raise ConfigError(f"{len(w)} weight(s) for {n} model(s)")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w / w.sum()


def softmax(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Numerically stable softmax (float32 for float16/32 input)."""
    a = np.asarray(x, dtype=np.float64 if np.asarray(x).dtype == np.float64 else np.float32)
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def _kinds(kinds: ScoreKind | Sequence[ScoreKind], n: int) -> list[str]:
    ks = [kinds] * n if isinstance(kinds, str) else list(kinds)
    if len(ks) != n or any(k not in ("probs", "logits") for k in ks):
        raise ConfigError(f"score kinds must be 'probs' or 'logits', one per model, got {ks}")
    return ks


def _combine_band(bands: Sequence[np.ndarray], w: np.ndarray, kinds: Sequence[str], mode: str) -> np.ndarray:
    acc: np.ndarray | None = None
    for b, wk, kind in zip(bands, w, kinds):
        x = np.asarray(b, dtype=np.float32)
        if mode == "prob":
            term = softmax(x, 0) if kind == "logits" else x
        else:
            term = np.log(np.maximum(x, _EPS)) if kind == "probs" else x
        if acc is None:
            acc = term * np.float32(wk)
        else:
            acc += term * np.float32(wk)
    assert acc is not None
    return acc


def _check_scores(scores: Sequence[np.ndarray], sources: Sequence[str]) -> tuple[int, ...]:
    shapes = [np.shape(s) for s in scores]
    for s, src in zip(scores, sources):
        if np.asarray(s).dtype.kind != "f" or np.ndim(s) < 2:
            raise DataError(f"{src}: scores must be a float array (C, ...) with the class axis first, "
                            f"got {np.asarray(s).dtype} {np.shape(s)}")
    if len(set(shapes)) > 1:
        raise DataError("score arrays differ in shape: " + ", ".join(f"{src} {sh}" for src, sh in zip(sources, shapes)))
    return shapes[0]


def _bands(shape: tuple[int, ...]) -> list[slice]:
    """Slices along axis 1 so that one band of one model holds at most ``_BAND_ELEMENTS`` values."""
    per_row = int(np.prod(shape)) // max(shape[1], 1)
    rows = max(1, _BAND_ELEMENTS // max(per_row, 1))
    return [slice(lo, min(shape[1], lo + rows)) for lo in range(0, shape[1], rows)]


def _prepare(scores: Sequence[np.ndarray], weights: Sequence[float] | None, kinds: ScoreKind | Sequence[ScoreKind],
             mode: AverageMode, sources: Sequence[str] | None) -> tuple[tuple[int, ...], np.ndarray, list[str]]:
    """Check the inputs of an average: (common score shape, normalised weights, kind per model)."""
    if mode not in ("prob", "logit"):
        raise ConfigError(f"unknown averaging mode {mode!r} (prob, logit)")
    srcs = list(sources) if sources is not None else [f"model {k + 1}" for k in range(len(scores))]
    return _check_scores(scores, srcs), normalise_weights(weights, len(scores)), _kinds(kinds, len(scores))


def average_scores(scores: Sequence[np.ndarray], weights: Sequence[float] | None = None, *,
                   kinds: ScoreKind | Sequence[ScoreKind] = "probs", mode: AverageMode = "prob",
                   sources: Sequence[str] | None = None) -> np.ndarray:
    """Weighted average of N models' ``(C, ...)`` scores, ``(C, ...)`` float32.

    ``mode="prob"`` returns probabilities, ``mode="logit"`` mean logits (see module docstring).
    """
    shape, w, ks = _prepare(scores, weights, kinds, mode, sources)
    out = np.empty(shape, dtype=np.float32)
    for sl in _bands(shape):
        out[:, sl] = _combine_band([s[:, sl] for s in scores], w, ks, mode)
    return out


def _ids_dtype(num_channels: int) -> np.dtype:
    return np.dtype(np.uint8) if num_channels <= 256 else np.dtype(np.uint16)


def average_labels(scores: Sequence[np.ndarray], weights: Sequence[float] | None = None, *,
                   kinds: ScoreKind | Sequence[ScoreKind] = "probs", mode: AverageMode = "prob",
                   sources: Sequence[str] | None = None) -> np.ndarray:
    """Class ids (``scores[0].shape[1:]``, uint8 / uint16) of the weighted average, band by band.

    >>> p1 = np.array([[0.7, 0.2], [0.3, 0.8]], dtype=np.float32)   # (C=2, N=2)
    >>> p2 = np.array([[0.1, 0.3], [0.9, 0.7]], dtype=np.float32)
    >>> average_labels([p1, p2]).tolist(), average_labels([p1, p2], [3, 1]).tolist()
    ([1, 1], [0, 1])
    """
    shape, w, ks = _prepare(scores, weights, kinds, mode, sources)
    out = np.empty(shape[1:], dtype=_ids_dtype(shape[0]))
    for sl in _bands(shape):
        out[sl] = _combine_band([s[:, sl] for s in scores], w, ks, mode).argmax(axis=0)
    return out


def majority_vote(labels: Sequence[np.ndarray], weights: Sequence[float] | None = None,
                  sources: Sequence[str] | None = None) -> np.ndarray:
    """Weighted plurality vote of N label arrays of the same shape (ties -> earliest model).

    >>> majority_vote([np.array([1, 2, 3]), np.array([4, 2, 5]), np.array([4, 6, 7])]).tolist()
    [4, 2, 3]
    """
    srcs = list(sources) if sources is not None else [f"model {k + 1}" for k in range(len(labels))]
    arrs = [np.asarray(x) for x in labels]
    w = normalise_weights(weights, len(arrs))
    for a, src in zip(arrs, srcs):
        if a.dtype.kind not in "ui":
            raise DataError(f"{src}: labels must have an integer dtype, got {a.dtype}")
    if len({a.shape for a in arrs}) > 1:
        raise DataError("label arrays differ in shape: " + ", ".join(f"{s} {a.shape}" for s, a in zip(srcs, arrs)))
    dtype = np.result_type(*arrs)
    if len(arrs) == 1:
        return arrs[0].astype(dtype, copy=True)
    # support[k] = total weight of the models that agree with model k; pick the first maximum
    best = np.zeros(arrs[0].shape, dtype=np.int64)
    best_support = np.full(arrs[0].shape, -1.0)
    for k, a in enumerate(arrs):
        support = np.zeros(a.shape, dtype=np.float64)
        for j, b in enumerate(arrs):
            support += w[j] if j == k else w[j] * (a == b)
        better = support > best_support + 1e-12
        best[better] = k
        best_support[better] = support[better]
    stacked = np.stack([a.astype(dtype, copy=False) for a in arrs])
    return np.take_along_axis(stacked, best[None], axis=0)[0]


def average_predictors(predictors: Sequence[ProbabilityModel], image: np.ndarray,
                       weights: Sequence[float] | None = None, mode: AverageMode = "prob") -> np.ndarray:
    """Run N predictors on one image and return the ids of their weighted average (on the fly)."""
    probs = [np.asarray(p.probabilities(image)) for p in predictors]
    return average_labels(probs, weights, kinds="probs", mode=mode,
                          sources=[type(p).__name__ for p in predictors])


def vote_predictors(predictors: Sequence[LabelModel], image: np.ndarray,
                    weights: Sequence[float] | None = None) -> np.ndarray:
    """Run N predictors on one image and return their weighted majority vote (on the fly)."""
    return majority_vote([p.predict(image) for p in predictors], weights,
                         sources=[type(p).__name__ for p in predictors])


# ---------------------------------------------------------------------- files
def read_scores(path: str | os.PathLike[str], kind: ScoreKind | None = None) -> tuple[np.ndarray, str]:
    """Read one saved score file; returns ``(array (C, ...), "probs" | "logits")``.

    ``.npy`` is memory-mapped and its kind is ``kind`` (default ``"probs"``); ``.npz`` must hold
    exactly one of the arrays ``probs`` / ``logits`` (or the one named by ``kind``).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: score file not found")
    try:
        if p.suffix.lower() == ".npy":
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
            k = kind or "probs"
        elif p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as z:
                keys = [x for x in ("probs", "logits") if x in z.files]
                if kind is not None:
                    keys = [x for x in keys if x == kind]
                if len(keys) != 1:
                    raise DataError(f"{p}: expected exactly one array named 'probs' or 'logits'"
                                    f"{' (' + kind + ')' if kind else ''}, found {sorted(z.files)}")
                k = keys[0]
                arr = z[k]
        else:
            raise DataError(f"{p}: unsupported score file (expected .npy or .npz)")
    except DataError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{p}: unreadable score file ({exc})") from None
    if arr.dtype.kind != "f" or arr.ndim < 2:
        raise DataError(f"{p}: scores must be a float array (C, H, W) or (C, N), got {arr.dtype} {arr.shape}")
    return arr, k


def _index_scores(root: Path, what: str) -> dict[str, Path]:
    if not root.is_dir():
        raise DataError(f"{root}: {what} folder not found")
    out: dict[str, Path] = {}
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix.lower() in SCORE_EXTS and not f.name.startswith("."):
            key = f.relative_to(root).with_suffix("").as_posix()
            if key in out:
                raise DataError(f"{root}: both {out[key].name} and {f.name} exist for stem {key!r}")
            out[key] = f
    if not out:
        raise DataError(f"{root}: no score files ({', '.join(SCORE_EXTS)})")
    return out


@dataclass
class CombineSummary:
    """What a folder ensemble wrote."""

    frames: int
    out_dir: Path
    method: str
    weights: list[float]
    outputs: list[Path] = field(default_factory=list)


def _write_ids(dest_stem: Path, ids: np.ndarray) -> Path:
    from terraseg.io.labels import write_label_png
    from terraseg.io.scans import write_label

    if ids.ndim == 1:
        return write_label(dest_stem.with_name(dest_stem.name + ".label"), ids)
    return write_label_png(dest_stem.with_name(dest_stem.name + ".png"), ids)


def _resolve(ontology: Ontology | str | None) -> Ontology | None:
    """The ontology (a name, YAML or palette file) read once per command, not once per frame."""
    from terraseg.ontology import get_ontology

    return None if ontology is None else get_ontology(ontology)


def _check_ids(ids: np.ndarray, ontology: Ontology | None, source: str) -> None:
    if ontology is not None:
        ontology.check_ids(ids, source=source)


def _check_out(out: Path, inputs: Sequence[Path]) -> None:
    for d in inputs:
        if d.exists() and out.resolve() == d.resolve():
            raise DataError(f"{out}: the output folder must differ from the input folder {d}")


def average_folders(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                    weights: Sequence[float] | None = None, kinds: ScoreKind | Sequence[ScoreKind] | None = None,
                    mode: AverageMode = "prob", ontology: Ontology | str | None = None,
                    progress: bool = False) -> CombineSummary:
    """Average saved scores of N models frame by frame and write id files (PNG, or ``.label`` for ``(C, N)``).

    ``kinds`` says whether each model's ``.npy`` files hold probabilities or logits (``.npz``
    files name it themselves). With ``ontology`` every output id is checked to be a class id.
    Unpaired stems or shape mismatches raise one :class:`DataError` before anything is written.
    """
    dirs = [Path(d) for d in inputs]
    out = Path(out_dir)
    _check_out(out, dirs)
    onto = _resolve(ontology)
    w = normalise_weights(weights, len(dirs))
    kind_list = [None] * len(dirs) if kinds is None else _kinds(kinds, len(dirs))
    idx = [_index_scores(d, f"model-{k + 1} score") for k, d in enumerate(dirs)]
    stems = sorted(set().union(*idx))
    missing = [f"{d} lacks {len([s for s in stems if s not in i])} stem(s), e.g. "
               f"{next(s for s in stems if s not in i)}" for d, i in zip(dirs, idx) if len(i) != len(stems)]
    if missing:
        raise DataError("score folders do not hold the same frames: " + "; ".join(missing))
    outputs: list[Path] = []
    with ProgressBar(len(stems), "averaging", enabled=progress) as bar:
        for stem in stems:
            files = [i[stem] for i in idx]
            loaded = [read_scores(f, k) for f, k in zip(files, kind_list)]  # type: ignore[arg-type]
            ids = average_labels([a for a, _ in loaded], w, kinds=[k for _, k in loaded],  # type: ignore[misc]
                                 mode=mode, sources=[str(f) for f in files])
            _check_ids(ids, onto, f"average of {', '.join(map(str, files))}")
            outputs.append(_write_ids(out / stem, ids))
            bar.advance()
    summary = CombineSummary(frames=len(stems), out_dir=out, method=f"average-{mode}", weights=w.tolist(),
                             outputs=outputs)
    _write_summary(summary, dirs)
    return summary


def vote_folders(inputs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str], *,
                 weights: Sequence[float] | None = None, kind: LabelKind = "auto",
                 ontology: Ontology | str | None = None, progress: bool = False) -> CombineSummary:
    """Weighted majority vote of N label folders (id PNGs or ``.label``), written to ``out_dir``."""
    dirs = [Path(d) for d in inputs]
    out = Path(out_dir)
    _check_out(out, dirs)
    onto = _resolve(ontology)
    w = normalise_weights(weights, len(dirs))
    pairs, k = pair_label_folders([(d, "", f"model-{j + 1}") for j, d in enumerate(dirs)], kind)
    outputs: list[Path] = []
    with ProgressBar(len(pairs), "voting", enabled=progress) as bar:
        for stem, files in pairs:
            labels = [read_labels(f, k) for f in files]
            ids = majority_vote(labels, w, sources=[str(f) for f in files])
            _check_ids(ids, onto, f"vote of {', '.join(map(str, files))}")
            outputs.append(_write_ids(out / stem, ids))
            bar.advance()
    summary = CombineSummary(frames=len(pairs), out_dir=out, method="vote", weights=w.tolist(), outputs=outputs)
    _write_summary(summary, dirs)
    return summary


def _write_summary(s: CombineSummary, dirs: Sequence[Path]) -> None:
    doc = {"method": s.method, "frames": s.frames, "inputs": [str(d) for d in dirs], "weights": s.weights}
    atomic_write_text(s.out_dir / "summary.json", json.dumps(doc, indent=2) + "\n")
