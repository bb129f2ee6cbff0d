"""Gather what a report shows: per-model scores, per-frame statistics, the two models' pair histogram.

Inputs are folders paired by relative name without extension (see
:func:`terraseg.metrics.pair_mask_files`): id PNGs for camera images, SemanticKITTI ``.label``
files for point clouds. One pass over the frames reads the ground truth and every prediction
folder and accumulates, per model, the evaluation preset's confusion matrix (so the numbers are
exactly those of ``terraseg eval-masks`` with the same preset) and per-frame scores (used to pick
sample frames). For two models the pair histogram ``H[m1, m2, gt]`` comes from
:func:`terraseg.ensemble.build_histogram`; agreement and who wins where the models disagree are
read from its marginals (:func:`agreement_from_histogram`), not from another pass.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.metrics import ClassScores, ConfusionMatrix, EvalPreset, EvalResult, get_preset, pair_mask_files
from terraseg.ontology import Ontology, get_ontology
from terraseg.progress import ProgressBar

Kind = Literal["image", "points"]
LABEL_EXTS: dict[str, tuple[str, ...]] = {"image": (".png",), "points": (".label",)}
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
RULES_FORMAT = "terraseg-ensemble-rules"

T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------------- results
@dataclass
class ModelEval:
    """One prediction folder scored against the ground truth.

    Attributes:
        name: the model's name in tables and plots.
        pred_dir: the prediction folder.
        result: preset scores (IoU etc. as fractions 0..1).
        cm: the accumulated confusion matrix over all ontology ids (rows = ground truth).
        files: relative key -> prediction file.
    """

    name: str
    pred_dir: Path
    result: EvalResult
    cm: ConfusionMatrix
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def scores(self) -> ClassScores:
        return self.result.scores

    def scored_matrix(self) -> np.ndarray:
        """(K, K) int64 counts restricted to the preset's scored class ids (rows = ground truth)."""
        ids = self.scores.class_ids
        return self.cm.matrix[np.ix_(ids, ids)]


@dataclass
class FrameStat:
    """Per-frame numbers: ``miou`` / ``acc`` per model (fractions; the models' order), and the share
    of counted elements where model 1 and model 2 disagree (NaN with one model)."""

    key: str
    counted: int
    miou: list[float]
    acc: list[float]
    disagreement: float = float("nan")


@dataclass
class Agreement:
    """How two models' predictions relate, per ground-truth class, from the pair histogram.

    ``parts`` is (K, 5) int64 counts per scored class in the order of
    :data:`terraseg.report.plots.AGREEMENT_PARTS`: both correct, agree but both wrong, only model 1
    correct, only model 2 correct, disagree and both wrong.
    """

    class_names: list[str]
    parts: np.ndarray
    frames: int

    @property
    def total(self) -> int:
        return int(self.parts.sum())

    @property
    def agree(self) -> int:
        return int(self.parts[:, :2].sum())

    @property
    def disagree(self) -> int:
        return int(self.parts[:, 2:].sum())

    @property
    def m1_wins(self) -> int:
        return int(self.parts[:, 2].sum())

    @property
    def m2_wins(self) -> int:
        return int(self.parts[:, 3].sum())

    def rate(self) -> float:
        """Share of counted elements where the two models predict the same class."""
        return self.agree / self.total if self.total else float("nan")

    def per_class_disagreement(self) -> np.ndarray:
        """(K,) share of each ground-truth class's elements where the models disagree (NaN if absent)."""
        tot = self.parts.sum(axis=1).astype(np.float64)
        return np.divide(self.parts[:, 2:].sum(axis=1), tot, out=np.full(tot.shape, np.nan), where=tot > 0)


@dataclass
class ReportData:
    """Everything :func:`terraseg.report.build_report` draws, gathered by :func:`gather`."""

    kind: Kind
    ontology: Ontology
    preset: EvalPreset
    gt_dir: Path
    gt_files: dict[str, Path]
    models: list[ModelEval]
    ensemble: ModelEval | None
    frames: list[FrameStat]
    agreement: Agreement | None = None
    histogram: Any = None
    notes: list[str] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [f.key for f in self.frames]

    def evaluated(self) -> list[ModelEval]:
        """The models, then the ensemble when there is one."""
        return [*self.models, *([self.ensemble] if self.ensemble is not None else [])]


# ---------------------------------------------------------------------- reading
def detect_kind(gt_dir: str | os.PathLike[str]) -> Kind:
    """``points`` when the ground-truth folder holds ``.label`` files, else ``image``."""
    root = Path(gt_dir)
    if not root.is_dir():
        raise DataError(f"{root}: ground-truth folder not found")
    if next(iter(root.rglob("*.label")), None) is not None:
        return "points"
    return "image"


def read_ids(path: Path, kind: Kind) -> np.ndarray:
    """Class ids of one label file: (H, W) from an id PNG, (N,) semantic ids from a ``.label`` file."""
    if kind == "points":
        from terraseg.io import read_label

        return read_label(path)[0]
    from terraseg.io import read_label_png

    return read_label_png(path)


def _prefetch(items: Sequence[T], fn: Callable[[T], R], workers: int) -> Iterator[tuple[T, R]]:
    """``(item, fn(item))`` in order, with a bounded window of reads running ahead on threads."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        window: deque[tuple[T, Future[R]]] = deque()
        it = iter(items)
        for item in it:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= 2 * max(1, workers):
                break
        try:
            while window:
                item, fut = window.popleft()
                nxt = next(it, None)
                if nxt is not None:
                    window.append((nxt, pool.submit(fn, nxt)))
                yield item, fut.result()
        finally:
            for _, f in window:
                f.cancel()


def _short(keys: Sequence[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def pair_folders(gt_dir: Path, pred_dirs: Sequence[Path], kind: Kind, gt_suffix: str = "") -> tuple[
        dict[str, Path], list[dict[str, Path]]]:
    """Pair every prediction folder with the ground truth; all must cover exactly the same frames.

    Returns (key -> ground-truth file, [key -> prediction file per folder]). Raises
    :class:`DataError` naming the folder and the first unpaired files.
    """
    exts = LABEL_EXTS[kind]
    gt_files: dict[str, Path] | None = None
    preds: list[dict[str, Path]] = []
    for d in pred_dirs:
        pairs, missing, extra = pair_mask_files(d, gt_dir, gt_suffix=gt_suffix, exts=exts)
        if missing or extra:
            problems = []
            if missing:
                problems.append(f"{len(missing)} ground-truth file(s) have no prediction in {d}: "
                                f"{_short([str(m) for m in missing])}")
            if extra:
                problems.append(f"{len(extra)} prediction file(s) in {d} have no ground truth: "
                                f"{_short([str(e) for e in extra])}")
            raise DataError("; ".join(problems))
        files = {p.key: p.gt for p in pairs}
        if gt_files is None:
            gt_files = files
        preds.append({p.key: p.pred for p in pairs})
    assert gt_files is not None
    return gt_files, preds


# ---------------------------------------------------------------------- evaluation
def _scores_of(m: np.ndarray, ids: np.ndarray, exclude: Sequence[int]) -> tuple[float, float]:
    s = ClassScores.from_matrix(m, class_ids=ids, exclude_ids=exclude)
    return s.miou, s.aacc


def evaluate_folders(gt_dir: str | os.PathLike[str], pred_dirs: Sequence[str | os.PathLike[str]],
                     names: Sequence[str], ontology: Ontology | str, preset: EvalPreset | str | None = None, *,
                     kind: Kind | Literal["auto"] = "auto", gt_suffix: str = "", extra_ignore: Sequence[int] = (),
                     workers: int = 4, progress: bool = False) -> tuple[list[ModelEval], list[FrameStat],
                                                                       dict[str, Path]]:
    """Score several prediction folders against one ground truth in one pass over the frames.

    Args:
        gt_dir: ground-truth folder (id PNGs, or ``.label`` files for point clouds).
        pred_dirs: prediction folders with the same relative names; the first two are "model 1"
            and "model 2" for the per-frame disagreement.
        names: one name per prediction folder.
        ontology, preset: the ids' ontology and the evaluation preset (default: the ontology's).
        kind: ``image``, ``points`` or ``auto`` (from the ground-truth files).
        gt_suffix: suffix stripped from ground-truth stems before pairing (e.g. ``_labelids``).
        extra_ignore: more ground-truth ids not counted (e.g. 255 padding).

    Returns:
        (models, per-frame statistics in sorted key order, key -> ground-truth file).

    Raises:
        DataError: unpaired files, a size / point-count mismatch, or ids outside the ontology,
            naming the file.
    """
    onto = get_ontology(ontology)
    p = preset if isinstance(preset, EvalPreset) else get_preset(preset, onto)
    gdir = Path(gt_dir)
    k: Kind = detect_kind(gdir) if kind == "auto" else kind
    if k not in LABEL_EXTS:
        raise ConfigError(f"kind must be 'image', 'points' or 'auto', got {kind!r}")
    if len(names) != len(pred_dirs):
        raise ConfigError(f"{len(names)} model names for {len(pred_dirs)} prediction folders")
    dirs = [Path(d) for d in pred_dirs]
    gt_files, pred_files = pair_folders(gdir, dirs, k, gt_suffix)
    keys = sorted(gt_files)
    totals = [p.confusion_matrix(extra_ignore=extra_ignore) for _ in dirs]
    frame_cm = p.confusion_matrix(extra_ignore=extra_ignore)
    ignore = np.array(sorted(set(frame_cm.ignore_ids)), dtype=np.int64)
    scored = np.array([i for i in onto.ids.tolist() if i not in set(ignore.tolist())], dtype=np.int64)

    def load(key: str) -> tuple[np.ndarray, list[np.ndarray]]:
        gt = read_ids(gt_files[key], k)
        preds = []
        for files in pred_files:
            pr = read_ids(files[key], k)
            if pr.shape != gt.shape:
                what = "points" if k == "points" else "size (height, width)"
                raise DataError(f"{files[key]}: prediction {what} {pr.shape} differs from ground truth "
                                f"{gt_files[key]} {gt.shape}")
            preds.append(pr)
        return gt, preds

    stats: list[FrameStat] = []
    with ProgressBar(len(keys), "reading predictions", enabled=progress) as bar:
        for key, (gt, preds) in _prefetch(keys, load, workers):
            mious, accs = [], []
            for j, pr in enumerate(preds):
                frame_cm.reset()
                try:
                    frame_cm.update(pr, gt)
                except DataError:
                    onto.check_ids(gt, source=str(gt_files[key]), allow=ignore.tolist())
                    onto.check_ids(pr, source=str(pred_files[j][key]))
                    raise
                totals[j].merge(frame_cm)
                miou, aacc = _scores_of(frame_cm.matrix, scored, p.exclude_ids)
                mious.append(miou)
                accs.append(aacc)
            counted = ~np.isin(gt, ignore) if ignore.size else np.ones(gt.shape, dtype=bool)
            n = int(counted.sum())
            dis = float("nan")
            if len(preds) >= 2 and n:
                dis = float(np.count_nonzero((preds[0] != preds[1]) & counted) / n)
            stats.append(FrameStat(key=key, counted=n, miou=mious, acc=accs, disagreement=dis))
            bar.advance()
    if not stats:
        raise DataError(f"{gdir}: no frames to evaluate")
    models = [ModelEval(name=nm, pred_dir=d, result=p.evaluate(cm), cm=cm, files=files)
              for nm, d, cm, files in zip(names, dirs, totals, pred_files)]
    return models, stats, gt_files


# ---------------------------------------------------------------------- pair histogram
def agreement_from_histogram(counts: np.ndarray, class_names: Sequence[str], scored: Sequence[str],
                             frames: int = 0) -> Agreement:
    """Agreement of two models from a pair histogram ``counts[m1_pred, m2_pred, gt]`` (C, C, C).

    Only ground-truth classes named in ``scored`` are counted (so ignored ground truth is left out
    whether or not the histogram holds it). Every number is a marginal of the histogram:
    ``both correct = H[g, g, g]``, ``model 1 correct = sum_j H[g, j, g]``,
    ``agree = sum_i H[i, i, g]``.
    """
    h = np.asarray(counts, dtype=np.int64)
    c = h.shape[0]
    if h.ndim != 3 or h.shape != (c, c, c) or len(class_names) != c:
        raise DataError(f"pair histogram of shape {h.shape} does not match {len(class_names)} class names")
    index = {n: i for i, n in enumerate(class_names)}
    missing = [n for n in scored if n not in index]
    if missing:
        raise DataError(f"pair histogram has no class(es) {_short(missing)} of the evaluation")
    g = np.array([index[n] for n in scored], dtype=np.int64)
    both = np.einsum("iii->i", h)[g]
    m1_ok = np.einsum("iji->i", h)[g]
    m2_ok = np.einsum("jii->i", h)[g]
    agree = np.einsum("iig->g", h)[g]
    total = h.sum(axis=(0, 1))[g]
    only1, only2 = m1_ok - both, m2_ok - both
    parts = np.stack([both, agree - both, only1, only2, total - agree - only1 - only2], axis=1)
    return Agreement(class_names=list(scored), parts=parts.astype(np.int64), frames=int(frames))


def pair_histogram(m1_dir: Path, m2_dir: Path, gt_dir: Path, ontology: str, kind: Kind, preset: EvalPreset,
                   gt_suffix: str = "", extra_ignore: Sequence[int] = (), progress: bool = False) -> Any:
    """The pair histogram of two prediction folders, from :func:`terraseg.ensemble.build_histogram`,
    counted with the preset's ignore ids (so its marginals match the evaluation's matrices)."""
    import inspect

    from terraseg.ensemble import build_histogram

    accepted = inspect.signature(build_histogram).parameters
    extra: dict[str, Any] = {"preset": None if preset.name == "default" else preset.name,
                             "extra_ignore": tuple(extra_ignore)}
    hists = build_histogram(m1_dir, m2_dir, gt_dir, ontology, gt_suffix=gt_suffix,
                            kind="label" if kind == "points" else "png", folds=1, progress=progress,
                            **{k: v for k, v in extra.items() if k in accepted})
    return hists[0] if isinstance(hists, (list, tuple)) else hists


# ---------------------------------------------------------------------- gather
def gather(gt_dir: str | os.PathLike[str], pred: str | os.PathLike[str], ontology: str,
           pred2: str | os.PathLike[str] | None = None, *, names: tuple[str, str] = ("model 1", "model 2"),
           ensemble: str | os.PathLike[str] | None = None, ensemble_name: str = "ensemble",
           preset: EvalPreset | str | None = None, kind: Kind | Literal["auto"] = "auto", gt_suffix: str = "",
           extra_ignore: Sequence[int] = (), workers: int = 4, progress: bool = False) -> ReportData:
    """Evaluate one or two models (and optionally an ensemble's predictions) for a report.

    ``ontology`` is an ontology name or YAML path (passed as given to the ensemble histogram).
    With two models, builds the pair histogram and the agreement statistics from it.
    """
    onto = get_ontology(ontology)
    p = preset if isinstance(preset, EvalPreset) else get_preset(preset, onto)
    k: Kind = detect_kind(gt_dir) if kind == "auto" else kind
    dirs: list[str | os.PathLike[str]] = [pred, *([pred2] if pred2 is not None else []),
                                          *([ensemble] if ensemble is not None else [])]
    nm = [names[0], *([names[1]] if pred2 is not None else []), *([ensemble_name] if ensemble is not None else [])]
    if len(set(nm)) != len(nm):
        raise ConfigError(f"model names must differ, got {nm}")
    evals, frames, gt_files = evaluate_folders(gt_dir, dirs, nm, onto, p, kind=k, gt_suffix=gt_suffix,
                                               extra_ignore=extra_ignore, workers=workers, progress=progress)
    ens = evals.pop() if ensemble is not None else None
    data = ReportData(kind=k, ontology=onto, preset=p, gt_dir=Path(gt_dir), gt_files=gt_files, models=evals,
                      ensemble=ens, frames=frames)
    if pred2 is not None:
        h = pair_histogram(Path(pred), Path(pred2), Path(gt_dir), ontology, k, p, gt_suffix, extra_ignore, progress)
        data.histogram = h
        data.agreement = agreement_from_histogram(h.counts, list(h.class_names), evals[0].scores.class_names,
                                                  frames=int(getattr(h, "frames", 0)))
        if data.agreement.frames and data.agreement.frames != len(frames):
            data.notes.append(f"the pair histogram covers {data.agreement.frames} frames, the evaluation "
                              f"{len(frames)} (the ensemble pairs files by stem)")
        counted = int(evals[0].cm.total)
        if data.agreement.total != counted:
            data.notes.append(f"the pair histogram counts {data.agreement.total} elements of scored classes, the "
                              f"evaluation {counted}")
    return data


# ---------------------------------------------------------------------- frames
def _match_frames(requested: Iterable[str], keys: Sequence[str]) -> list[str]:
    by_name: dict[str, list[str]] = {}
    for k in keys:
        by_name.setdefault(Path(k).name, []).append(k)
    out, unknown = [], []
    for r in requested:
        r = r.strip()
        if not r:
            continue
        stem = Path(r).with_suffix("").as_posix() if Path(r).suffix in (".png", ".label", ".bin") else r
        if stem in keys:
            out.append(stem)
        elif len(by_name.get(stem, [])) == 1:
            out.append(by_name[stem][0])
        elif len(by_name.get(stem, [])) > 1:
            raise DataError(f"frame {r!r} is ambiguous: {_short(by_name[stem])}; give the relative path")
        else:
            unknown.append(r)
    if unknown:
        raise DataError(f"unknown frame(s) {_short(unknown)}; frames look like {_short(list(keys), 5)}")
    return list(dict.fromkeys(out))


def choose_frames(frames: Sequence[FrameStat], num: int = 4, requested: Sequence[str] | None = None
                  ) -> list[tuple[str, str]]:
    """Pick the sample frames and say why: ``[(key, reason)]``.

    ``requested`` stems (relative keys or file stems) are used as given. Otherwise, with two
    models: the worst frame of model 1 (lowest frame mIoU) and the frames where the two models
    disagree most; with one model: the worst frame and frames spread evenly over the sorted keys.
    """
    keys = [f.key for f in frames]
    if requested:
        return [(k, "chosen by name") for k in _match_frames(requested, keys)]
    num = max(0, min(int(num), len(frames)))
    if num == 0:
        return []
    m1 = np.array([f.miou[0] for f in frames], dtype=np.float64)
    worst = int(np.argmin(np.where(np.isfinite(m1), m1, np.inf)))
    chosen: list[tuple[str, str]] = []
    dis = np.array([f.disagreement for f in frames], dtype=np.float64)
    if np.isfinite(dis).any():
        order = np.argsort(-np.where(np.isfinite(dis), dis, -1.0), kind="stable")
        for i in order:
            if len(chosen) >= (num - 1 if num > 1 else 1):
                break
            if i != worst or num == 1:
                chosen.append((keys[i], f"models disagree on {100 * dis[i]:.1f} % of the frame (rank "
                                        f"{len(chosen) + 1} of {len(frames)})"))
    else:
        spread = np.unique(np.linspace(0, len(frames) - 1, num=num + 1).round().astype(int))
        for i in spread:
            if len(chosen) >= num - 1:
                break
            if i != worst:
                chosen.append((keys[i], "spread over the sequence"))
    if len(chosen) < num and keys[worst] not in {c[0] for c in chosen}:
        chosen.append((keys[worst], f"worst frame of model 1 (frame mIoU {100 * m1[worst]:.1f} %)"))
    return chosen


def find_companion(root: Path, key: str, exts: Sequence[str]) -> Path | None:
    """The file in ``root`` for a frame key, or None.

    Tried in order: ``root/<key><ext>``; a unique ``<stem><ext>`` anywhere below ``root``; a unique
    ``<stem>_*<ext>`` (GOOSE pairs ``<stem>_labelids.png`` masks with ``<stem>_windshield_vis.png``
    images).
    """
    for e in exts:
        p = root / f"{key}{e}"
        if p.is_file():
            return p
    name = Path(key).name
    for pattern in ("{}{}", "{}_*{}"):
        hits = sorted({p for e in exts for p in root.rglob(pattern.format(name, e)) if p.is_file()})
        if len(hits) == 1:
            return hits[0]
        if hits:
            return None
    return None


# ---------------------------------------------------------------------- rules file
def load_rules(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check an ensemble rules file (``terraseg ensemble tune --out rules.json``).

    Checks the format tag, that ``atoms`` is a list of objects with ``m1``, ``m2`` and ``gain``, and
    that ``scores.tuning`` has ``miou_m1`` and ``miou_ensemble``. IoUs stay fractions 0..1.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{p}: rules file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: unreadable rules file ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or data.get("format") != RULES_FORMAT:
        raise DataError(f"{p}: not a terraseg ensemble rules file (expected \"format\": \"{RULES_FORMAT}\")")
    atoms = data.get("atoms")
    if not isinstance(atoms, list):
        raise DataError(f"{p}: 'atoms' must be a list")
    for i, a in enumerate(atoms):
        if not isinstance(a, dict) or not {"m1", "m2", "gain"} <= set(a):
            raise DataError(f"{p}: atom #{i} needs m1, m2 and gain, got {a!r}"[:300])
        if not isinstance(a["gain"], (int, float)):
            raise DataError(f"{p}: atom #{i} gain {a['gain']!r} is not a number")
    scores = data.get("scores")
    tuning = scores.get("tuning") if isinstance(scores, dict) else None
    if not isinstance(tuning, dict) or not {"miou_m1", "miou_ensemble"} <= set(tuning):
        raise DataError(f"{p}: 'scores.tuning' must hold miou_m1 and miou_ensemble")
    names = data.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DataError(f"{p}: 'class_names' must be a list of strings")
    return data


def iou_vector(block: dict[str, Any] | None, key: str, n: int) -> np.ndarray:
    """A per-class IoU list of a rules ``scores`` block as (n,) float64 (None -> NaN; absent -> all NaN)."""
    if not block or not isinstance(block.get(key), list):
        return np.full(n, np.nan)
    v = np.array([np.nan if x is None else float(x) for x in block[key]], dtype=np.float64)
    return v if v.size == n else np.full(n, np.nan)
