"""Query rounds on disk, so an active-learning run resumes exactly.

A state folder holds one sub-folder per round::

    STATE/
      round_000/
        round.json     round, strategy, percent, seed, options, ontology, and per frame: name,
                       in-view items n, budget, labelled before / after, grid shape, sources
        queries.npz    per frame i: idx_i (indices, sorted int64), and when known pix_i
                       (queried pixels, (M, 2) int32 col, row), xyz_i ((M, 3) float32 metres),
                       pred_i (the model's suggestion, (M,) int32)
        labels.npz     after `terraseg query import`: lab_i, (M,) int32 labels aligned with
                       idx_i, -1 where no label was given
      round_001/ ...

A round folder is written under a temporary name and renamed into place, so it is either
complete or absent; ``labels.npz`` is written atomically. The labelled mask of a frame, the
state every strategy takes, is the union of the indices of all rounds (:func:`labelled_masks`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.active.budget import check_percent
from terraseg.active.scores import ensemble_labels
from terraseg.active.strategies import FrameContext, StrategyOptions, check_strategy, query_frame
from terraseg.errors import DataError
from terraseg.io.atomic import _umask, atomic_path
from terraseg.progress import ProgressBar

FORMAT = "terraseg-query-round/1"
ROUND_PREFIX = "round_"
UNLABELLED = -1
"""Label value of a queried item nobody labelled yet (in ``labels.npz``)."""


@dataclass(frozen=True)
class FrameQuery:
    """One frame's part of a round.

    Attributes:
        name: frame name.
        n: in-view items of the frame (points in the camera view, or pixels).
        indices: (budget,) sorted int64 queried item indices.
        labelled_before: items labelled before this round.
        pixels: (budget, 2) int32 ``(col, row)`` of the queried items, or None.
        xyz: (budget, 3) float32 coordinates (metres) of the queried points, or None.
        suggested: (budget,) int32 the model's prediction at the queried items, or None.
        grid_shape: ``(H, W)`` when the items are image pixels, else None.
        image, scan: source file paths (for labelling previews), or None.
    """

    name: str
    n: int
    indices: np.ndarray
    labelled_before: int = 0
    pixels: np.ndarray | None = None
    xyz: np.ndarray | None = None
    suggested: np.ndarray | None = None
    grid_shape: tuple[int, int] | None = None
    image: str | None = None
    scan: str | None = None

    @property
    def budget(self) -> int:
        return len(self.indices)

    @property
    def labelled_after(self) -> int:
        return self.labelled_before + self.budget

    @property
    def kind(self) -> str:
        """``pixels`` (image items) or ``points``."""
        return "pixels" if self.grid_shape is not None else "points"


@dataclass(frozen=True)
class QueryRound:
    """One query round: its settings and every frame's queried items.

    Attributes:
        index: round number (0, 1, ...).
        strategy: name in :data:`terraseg.active.STRATEGIES`.
        percent: budget of the round in percent of each frame's in-view items.
        seed: random seed given to the strategy.
        options: the strategy options (JSON-able).
        frames: the frames, in query order.
        ontology: name of the label ontology (for labelling tasks), or None.
        created: UNIX time the round was made.
    """

    index: int
    strategy: str
    percent: float
    seed: int
    frames: tuple[FrameQuery, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    ontology: str | None = None
    created: float = 0.0

    def frame(self, name: str) -> FrameQuery:
        for f in self.frames:
            if f.name == name:
                return f
        raise DataError(f"round {self.index} has no frame {name!r}")

    @property
    def queried(self) -> int:
        return sum(f.budget for f in self.frames)

    @property
    def in_view(self) -> int:
        return sum(f.n for f in self.frames)

    @property
    def labelled_fraction(self) -> float:
        """The real labelled fraction (0..1) of all in-view items after this round."""
        total = self.in_view
        return sum(f.labelled_after for f in self.frames) / total if total else 0.0



def read_format_json(path: Path, fmt: str, what: str) -> dict[str, Any]:
    """A JSON file whose ``format`` field must be ``fmt``.

    Raises:
        DataError: invalid JSON or another format, naming the file and ``what`` was expected.
    """
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise DataError(f"{path}: not a {what} (format {found!r})")
    return meta

def round_dir(state_dir: str | os.PathLike[str], index: int) -> Path:
    return Path(state_dir) / f"{ROUND_PREFIX}{index:03d}"


def list_rounds(state_dir: str | os.PathLike[str]) -> list[int]:
    """Indices of the complete rounds in a state folder, ascending (empty when none or absent)."""
    p = Path(state_dir)
    if not p.is_dir():
        return []
    out = []
    for d in p.iterdir():
        if d.is_dir() and d.name.startswith(ROUND_PREFIX) and (d / "round.json").is_file():
            try:
                out.append(int(d.name[len(ROUND_PREFIX):]))
            except ValueError:
                continue
    return sorted(out)


def save_round(state_dir: str | os.PathLike[str], rnd: QueryRound) -> Path:
    """Write ``rnd`` as ``STATE/round_KKK`` (complete or not at all); an existing round is an error."""
    final = round_dir(state_dir, rnd.index)
    if final.exists():
        raise DataError(f"{final}: round {rnd.index} already exists (rounds are never overwritten)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        meta = {
            "format": FORMAT, "round": rnd.index, "strategy": rnd.strategy, "percent": rnd.percent,
            "seed": rnd.seed, "options": dict(rnd.options), "ontology": rnd.ontology,
            "created": rnd.created,
            "frames": [{"name": f.name, "n": f.n, "budget": f.budget, "labelled_before": f.labelled_before,
                        "labelled_after": f.labelled_after,
                        "grid_shape": list(f.grid_shape) if f.grid_shape is not None else None,
                        "image": f.image, "scan": f.scan} for f in rnd.frames],
            "totals": {"in_view": rnd.in_view, "queried": rnd.queried, "labelled_fraction": rnd.labelled_fraction},
        }
        (tmp / "round.json").write_text(json.dumps(meta, indent=1) + "\n")
        arrays: dict[str, np.ndarray] = {}
        for i, f in enumerate(rnd.frames):
            arrays[f"idx_{i}"] = np.asarray(f.indices, dtype=np.int64)
            if f.pixels is not None:
                arrays[f"pix_{i}"] = np.asarray(f.pixels, dtype=np.int32)
            if f.xyz is not None:
                arrays[f"xyz_{i}"] = np.asarray(f.xyz, dtype=np.float32)
            if f.suggested is not None:
                arrays[f"pred_{i}"] = np.asarray(f.suggested, dtype=np.int32)
        with open(tmp / "queries.npz", "wb") as fh:
            np.savez(fh, **arrays)
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_round(state_dir: str | os.PathLike[str], index: int | None = None) -> QueryRound:
    """Read round ``index`` (default: the latest) of a state folder."""
    if index is None:
        rounds = list_rounds(state_dir)
        if not rounds:
            raise DataError(f"{state_dir}: no query rounds found")
        index = rounds[-1]
    d = round_dir(state_dir, index)
    meta_path = d / "round.json"
    if not meta_path.is_file():
        raise DataError(f"{d}: query round {index} not found")
    meta = read_format_json(meta_path, FORMAT, "terraseg query round")
    try:
        with np.load(d / "queries.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{d / 'queries.npz'}: unreadable ({exc})") from None
    frames = []
    try:
        for i, fm in enumerate(meta["frames"]):
            idx = arrays[f"idx_{i}"]
            if len(idx) != fm["budget"]:
                raise DataError(f"{d}: frame {fm['name']!r} has {len(idx)} indices but a budget of {fm['budget']}")
            gs = fm.get("grid_shape")
            frames.append(FrameQuery(fm["name"], int(fm["n"]), idx, int(fm["labelled_before"]), arrays.get(f"pix_{i}"),
                                     arrays.get(f"xyz_{i}"), arrays.get(f"pred_{i}"),
                                     (int(gs[0]), int(gs[1])) if gs else None, fm.get("image"), fm.get("scan")))
        return QueryRound(int(meta["round"]), meta["strategy"], float(meta["percent"]), int(meta["seed"]),
                          tuple(frames), meta.get("options", {}), meta.get("ontology"), float(meta.get("created", 0.0)))
    except KeyError as exc:
        raise DataError(f"{d}: incomplete query round (missing {exc.args[0]!r})") from None


def labelled_masks(state_dir: str | os.PathLike[str], upto: int | None = None) -> dict[str, np.ndarray]:
    """Frame name -> (n,) bool mask of the items queried in rounds ``<= upto`` (default all)."""
    masks: dict[str, np.ndarray] = {}
    for k in list_rounds(state_dir):
        if upto is not None and k > upto:
            break
        for f in load_round(state_dir, k).frames:
            m = masks.setdefault(f.name, np.zeros(f.n, dtype=bool))
            if len(m) != f.n:
                raise DataError(f"{round_dir(state_dir, k)}: frame {f.name!r} has {f.n} in-view items, earlier "
                                f"rounds had {len(m)}")
            m[f.indices] = True
    return masks


# ---------------------------------------------------------------------------------- labels
def save_round_labels(state_dir: str | os.PathLike[str], index: int, labels: Mapping[str, np.ndarray]) -> Path:
    """Store labels of round ``index`` (frame name -> (budget,) ints aligned with its indices, -1 = none).

    Frames not in ``labels`` keep the labels stored before (or none). Written atomically.
    """
    rnd = load_round(state_dir, index)
    current = load_round_labels(state_dir, index)
    arrays = {}
    for i, f in enumerate(rnd.frames):
        lab = labels.get(f.name, current.get(f.name))
        if lab is None:
            lab = np.full(f.budget, UNLABELLED, dtype=np.int32)
        lab = np.asarray(lab)
        if lab.shape != (f.budget,) or lab.dtype.kind not in "ui":
            raise DataError(f"round {index}, frame {f.name}: expected ({f.budget},) integer labels, got shape "
                            f"{lab.shape} dtype {lab.dtype}")
        arrays[f"lab_{i}"] = lab.astype(np.int32)
    unknown = sorted(set(labels) - {f.name for f in rnd.frames})
    if unknown:
        raise DataError(f"round {index} has no frame {unknown[0]!r}")
    path = round_dir(state_dir, index) / "labels.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def load_round_labels(state_dir: str | os.PathLike[str], index: int) -> dict[str, np.ndarray]:
    """Frame name -> (budget,) int32 labels of round ``index`` (-1 = none); empty before any import."""
    rnd = load_round(state_dir, index)
    path = round_dir(state_dir, index) / "labels.npz"
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return {f.name: z[f"lab_{i}"] for i, f in enumerate(rnd.frames) if f"lab_{i}" in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None


def collected_labels(state_dir: str | os.PathLike[str], upto: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Frame name -> (indices, labels) of every labelled item over rounds ``<= upto`` (-1s dropped).

    What adaptation trains on: these items' labels overwrite their pseudo-labels.
    """
    out: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for k in list_rounds(state_dir):
        if upto is not None and k > upto:
            break
        rnd = load_round(state_dir, k)
        labels = load_round_labels(state_dir, k)
        for f in rnd.frames:
            if f.name in labels:
                ok = labels[f.name] != UNLABELLED
                idx, lab = out.setdefault(f.name, ([], []))
                idx.append(f.indices[ok])
                lab.append(labels[f.name][ok])
    return {n: (np.concatenate(i), np.concatenate(lb)) for n, (i, lb) in out.items()}


# ------------------------------------------------------------------------------- a round
def run_query_round(frames: Iterable[FrameContext], strategy: str, percent: float, state_dir: str | os.PathLike[str],
                    options: StrategyOptions | None = None, ontology: str | None = None,
                    progress: bool = False, total: int | None = None) -> QueryRound:
    """Query every frame with ``strategy`` and save the next round in ``state_dir``.

    The labelled masks of earlier rounds (read from ``state_dir``) are excluded, so a run that
    stopped resumes where it was. Frames of earlier rounds that are not given again are simply
    not queried this time; a frame whose number of in-view items changed is an error.

    Returns:
        the saved :class:`QueryRound`.
    """
    check_strategy(strategy)
    pct = check_percent(percent)
    opts = options or StrategyOptions()
    masks = labelled_masks(state_dir)
    done = list_rounds(state_dir)
    index = done[-1] + 1 if done else 0
    out: list[FrameQuery] = []
    names: set[str] = set()
    with ProgressBar(total, f"query round {index} ({strategy})", enabled=progress) as bar:
        for ctx in frames:
            if ctx.name in names:
                raise DataError(f"frame {ctx.name!r} appears twice in round {index}")
            names.add(ctx.name)
            lab = masks.get(ctx.name)
            if lab is not None and len(lab) != ctx.n:
                raise DataError(f"frame {ctx.name}: {ctx.n} in-view items now but {len(lab)} in earlier rounds "
                                f"of {state_dir} (a different projection or crop?)")
            sel = query_frame(strategy, ctx, pct, lab, opts)
            i = sel.indices
            pix = ctx.pixels[i].astype(np.int32) if ctx.pixels is not None else None
            xyz = np.asarray(ctx.xyz)[i, :3].astype(np.float32) if ctx.xyz is not None else None
            sug = (ensemble_labels(ctx.probs_2d, ctx.probs_3d)[i].astype(np.int32)
                   if ctx.probs_2d is not None or ctx.probs_3d is not None else None)
            out.append(FrameQuery(ctx.name, ctx.n, i, sel.labelled_before, pix, xyz, sug, ctx.grid_shape,
                                  ctx.image_path, ctx.scan_path))
            bar.advance()
    if not out:
        raise DataError("no frames to query")
    rnd = QueryRound(index, strategy, pct, int(opts.seed), tuple(out), opts.to_dict(), ontology, time.time())
    save_round(state_dir, rnd)
    return rnd
