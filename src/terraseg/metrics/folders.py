"""Evaluate two folders of label images (predictions against ground truth).

Files are paired by their path relative to each folder, without the extension and without an
optional per-side suffix (for example GOOSE ground truth ``<name>_labelids.png`` against
predictions ``<name>.png`` with ``gt_suffix="_labelids"``). Reading runs on a small thread pool
(PNG decoding releases the GIL); counting runs in the calling thread.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.io.labels import read_color_png, read_label_png
from terraseg.metrics.confusion import ConfusionMatrix
from terraseg.metrics.presets import EvalPreset, EvalResult, get_preset
from terraseg.ontology import LabelMap, Ontology, decode_colors, get_label_map, get_ontology
from terraseg.progress import ProgressBar

IMAGE_EXTS = (".png",)


@dataclass(frozen=True)
class MaskPair:
    """One prediction / ground-truth pair; ``key`` is the shared relative name."""

    key: str
    pred: Path
    gt: Path


def _index(root: Path, suffix: str, exts: Sequence[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in exts:
            continue
        rel = p.relative_to(root).with_suffix("").as_posix()
        if suffix:
            if not rel.endswith(suffix):
                continue
            rel = rel[: -len(suffix)]
        out[rel] = p
    return out


def pair_mask_files(pred_dir: str | os.PathLike[str], gt_dir: str | os.PathLike[str], pred_suffix: str = "",
                    gt_suffix: str = "", exts: Sequence[str] = IMAGE_EXTS
                    ) -> tuple[list[MaskPair], list[Path], list[Path]]:
    """Pair files of two folders (searched recursively).

    Returns ``(pairs, ground truth without prediction, predictions without ground truth)``.
    Raises :class:`DataError` if a folder does not exist or holds no matching file.
    """
    pdir, gdir = Path(pred_dir), Path(gt_dir)
    for d, what in ((pdir, "prediction"), (gdir, "ground-truth")):
        if not d.is_dir():
            raise DataError(f"{d}: {what} folder not found")
    preds = _index(pdir, pred_suffix, exts)
    gts = _index(gdir, gt_suffix, exts)
    if not gts:
        raise DataError(f"{gdir}: no ground-truth files ({', '.join(exts)}"
                        f"{' ending in ' + gt_suffix if gt_suffix else ''})")
    if not preds:
        raise DataError(f"{pdir}: no prediction files ({', '.join(exts)}"
                        f"{' ending in ' + pred_suffix if pred_suffix else ''})")
    pairs = [MaskPair(k, preds[k], gts[k]) for k in sorted(gts) if k in preds]
    missing = [gts[k] for k in sorted(gts) if k not in preds]
    extra = [preds[k] for k in sorted(preds) if k not in gts]
    return pairs, missing, extra


@dataclass
class FolderEvaluation:
    """Result of :func:`evaluate_mask_folders`."""

    result: EvalResult
    matrix: ConfusionMatrix
    pairs: list[MaskPair]
    evaluated: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)


def _short_list(paths: Sequence[Path], n: int = 10) -> str:
    names = [str(p) for p in paths[:n]]
    return ", ".join(names) + (f" and {len(paths) - n} more" if len(paths) > n else "")


def evaluate_mask_folders(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    ontology: Ontology | str,
    preset: EvalPreset | str | None = None,
    *,
    pred_color: bool = False,
    gt_color: bool = False,
    unknown_color: str | int = "error",
    remap: LabelMap | str | os.PathLike[str] | None = None,
    pred_remap: LabelMap | str | os.PathLike[str] | None = None,
    pred_suffix: str = "",
    gt_suffix: str = "",
    extra_ignore: Sequence[int] = (),
    skip_bad: bool = False,
    workers: int = 4,
    progress: bool = False,
) -> FolderEvaluation:
    """Evaluate predicted label images against ground truth, file by file.

    Args:
        ontology: the ontology of both folders' ids (or colours): a built-in name, an ontology
            YAML or a palette file (:func:`terraseg.ontology.get_ontology`), or an Ontology.
        preset: an evaluation preset or its name (default: the default preset of the ontology
            the scores are computed in: ``ontology``, or the target of ``remap``).
        remap: a label map applied to both folders (from ``ontology`` to the ontology the scores
            are computed in): a map YAML, ``SOURCE->TARGET`` or a target ontology with a built-in
            map (:func:`terraseg.ontology.get_label_map`).
        pred_remap: a label map applied to the predictions only, from the model's ontology into
            ``ontology`` (a map YAML or ``SOURCE->TARGET``); predicted colour masks are decoded
            with its source ontology.
        pred_color, gt_color: that side holds RGB colour masks, decoded with the palette.
        unknown_color: ``"error"``, ``"void"`` or an id, see :func:`terraseg.ontology.decode_colors`.
        pred_suffix, gt_suffix: suffixes stripped from file stems before pairing.
        extra_ignore: more ground-truth ids to ignore (for example 255 padding).
        skip_bad: go on past bad files (missing partner, unreadable, size mismatch, unknown ids
            or colours) and list them in ``skipped`` instead of raising.
        workers: reader threads.
        progress: show a rich progress bar.

    Raises:
        DataError: for the first bad file (without ``skip_bad``), naming the file and problem.
    """
    onto = get_ontology(ontology)
    pmap = None if pred_remap is None else get_label_map(pred_remap)
    if pmap is not None and not pmap.target.same_classes(onto):
        raise ConfigError(f"the prediction map {pmap} must lead into the ground truth's ontology {onto.name!r}")
    rmap = None if remap is None else get_label_map(remap, source=onto)
    eval_onto = rmap.target if rmap is not None else onto
    pred_onto = pmap.source if pmap is not None else onto
    p = preset if isinstance(preset, EvalPreset) else get_preset(preset, eval_onto)
    if not p.ontology.same_classes(eval_onto):
        raise ConfigError(f"preset {p.name!r} is for ontology {p.ontology.name!r}, the scores are in {eval_onto.name!r}")
    cm = p.confusion_matrix(extra_ignore=extra_ignore)
    keep = np.asarray(sorted({int(i) for i in extra_ignore}), dtype=np.int64)

    def mapped(m: LabelMap | None, ids: np.ndarray, source: Path, padding: bool) -> np.ndarray:
        if m is None:
            return ids
        pad = np.isin(ids, keep) if padding and keep.size else None
        if pad is None or not pad.any():
            return m(ids, source=str(source))
        out = np.empty(ids.shape, dtype=np.promote_types(m.target.label_dtype, ids.dtype))
        out[~pad] = m(ids[~pad], source=str(source))
        out[pad] = ids[pad]  # padding such as 255 stays (it is ignored)
        return out
    pairs, missing, extra = pair_mask_files(pred_dir, gt_dir, pred_suffix, gt_suffix)
    skipped: list[tuple[str, str]] = []
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"{len(missing)} ground-truth file(s) have no prediction: {_short_list(missing)}")
        if extra:
            problems.append(f"{len(extra)} prediction file(s) have no ground truth: {_short_list(extra)}")
        if not skip_bad:
            raise DataError("; ".join(problems) + " (use --skip-bad to evaluate the matched pairs only)")
        skipped += [(str(m), "no prediction") for m in missing] + [(str(e), "no ground truth") for e in extra]

    def load(pair: MaskPair) -> tuple[np.ndarray, np.ndarray]:
        gt = decode_colors(read_color_png(pair.gt), onto, unknown_color, source=str(pair.gt)) if gt_color \
            else read_label_png(pair.gt)
        pred = decode_colors(read_color_png(pair.pred), pred_onto, unknown_color, source=str(pair.pred)) \
            if pred_color else read_label_png(pair.pred)
        if pred.shape != gt.shape:
            raise DataError(f"{pair.pred}: prediction size {pred.shape[1]}x{pred.shape[0]} differs from ground truth "
                            f"{pair.gt} size {gt.shape[1]}x{gt.shape[0]} (width x height)")
        pred = mapped(rmap, mapped(pmap, pred, pair.pred, False), pair.pred, False)
        return pred, mapped(rmap, gt, pair.gt, True)

    def count(pair: MaskPair, pred: np.ndarray, gt: np.ndarray) -> None:
        try:
            cm.update(pred, gt)
        except DataError:
            allowed = [*cm.ignore_ids, *extra_ignore]
            eval_onto.check_ids(gt, source=f"{pair.gt}", allow=allowed)
            eval_onto.check_ids(pred, source=f"{pair.pred}")
            raise

    evaluated = 0
    with ProgressBar(len(pairs), "evaluating", enabled=progress) as bar, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # a bounded window of pending reads keeps memory flat however many files there are
        window: deque[tuple[MaskPair, Future[tuple[np.ndarray, np.ndarray]]]] = deque()
        it = iter(pairs)
        for pair in it:
            window.append((pair, pool.submit(load, pair)))
            if len(window) >= 2 * max(1, workers):
                break
        while window:
            pair, fut = window.popleft()
            nxt = next(it, None)
            if nxt is not None:
                window.append((nxt, pool.submit(load, nxt)))
            try:
                pred, gt = fut.result()
                count(pair, pred, gt)
                evaluated += 1
            except DataError as exc:
                if not skip_bad:
                    for _, f in window:
                        f.cancel()
                    raise
                skipped.append((str(pair.pred), str(exc)))
            bar.advance()
    if evaluated == 0:
        raise DataError(f"no valid prediction / ground-truth pairs to evaluate in {pred_dir} and {gt_dir}")
    result = p.evaluate(cm)
    if skipped:
        result.notes.append(f"{len(skipped)} file(s) skipped (see skipped.txt)")
    return FolderEvaluation(result=result, matrix=cm, pairs=pairs, evaluated=evaluated, skipped=skipped)
