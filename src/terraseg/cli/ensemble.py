"""``terraseg ensemble``: learn override rules between two models, apply them; average or vote N models."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from terraseg.cli.app import app, console, user_errors

if TYPE_CHECKING:  # pragma: no cover
    from terraseg.ensemble import RuleSet, SplitScores

ensemble_app = typer.Typer(help="Two-model rule-learning ensemble (tune / apply) and N-model averaging or voting.",
                           no_args_is_help=True)
app.add_typer(ensemble_app, name="ensemble")


def _pts(x: float | None, sign: bool = True) -> str:
    """A fraction as mIoU points (0.0372 -> '+3.72')."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def gain_line(rules: RuleSet) -> str:
    """'tuning +3.72 mIoU (40 frames), held-out +0.08 mIoU (20 frames); 5-fold: ...' in mIoU points."""
    s = rules.scores
    parts = []
    if s.tuning is not None:
        parts.append(f"tuning {_pts(s.tuning.gain)} mIoU ({s.tuning.frames} frames)")
    if s.holdout is not None:
        parts.append(f"held-out {_pts(s.holdout.gain)} mIoU ({s.holdout.frames} frames)")
    line = ", ".join(parts)
    if s.kfold is not None:
        line += (f"; {s.kfold.folds}-fold by frame: tuning {_pts(s.kfold.mean_tuning_gain)} mIoU, "
                 f"held-out {_pts(s.kfold.mean_heldout_gain)} mIoU (mean over folds)")
    return line


def _rules_table(rules: RuleSet) -> Table:
    na, nr = len(rules.atoms), len(rules.rules)
    table = Table(title=f"accepted atoms grouped as rules ({na} atom{'s' * (na != 1)}, {nr} rule{'s' * (nr != 1)})")
    for col, just in (("#", "right"), ("if model 2 says", "left"), ("and model 1 says", "left"), ("pixels", "right"),
                      ("m1 right", "right"), ("m2 right", "right"), ("gain (mIoU pts)", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    by_m2: dict[str, list[int]] = {}
    for k, a in enumerate(rules.atoms):
        by_m2.setdefault(a.m2, []).append(k)
    for r, (m2, idx) in enumerate(by_m2.items(), start=1):
        atoms = [rules.atoms[k] for k in idx]
        px = sum(a.pixels for a in atoms)
        table.add_row(str(r), m2, ", ".join(a.m1 for a in atoms), f"{px:,}",
                      f"{sum(a.m1_correct for a in atoms) / px:.1%}" if px else "-",
                      f"{sum(a.m2_correct for a in atoms) / px:.1%}" if px else "-",
                      _pts(sum(a.gain for a in atoms)))
    return table


def _scores_table(tuning: SplitScores | None, holdout: SplitScores | None) -> Table:
    table = Table(title="mIoU (%) of model 1, model 2 and the ensemble")
    for col in ("part", "frames", "model 1", "model 2", "ensemble", "gain (pts)"):
        table.add_column(col, justify="left" if col == "part" else "right")
    for name, s in (("tuning (in-sample)", tuning), ("held-out", holdout)):
        if s is not None:
            table.add_row(name, str(s.frames), _pts(s.miou_m1, False), _pts(s.miou_m2, False),
                          _pts(s.miou_ensemble, False), _pts(s.gain))
    return table


@ensemble_app.command("tune")
@user_errors
def tune(
    m1: Annotated[Path, typer.Option("--m1", help="Folder of model-1 id masks (PNG) or .label files.")],
    m2: Annotated[Path, typer.Option("--m2", help="Folder of model-2 predictions, paired by relative name.")],
    gt: Annotated[Path, typer.Option("--gt", help="Folder of ground-truth labels.")],
    ontology: Annotated[str, typer.Option("--ontology", "-O", help="Ontology of the ids (name or YAML file).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Rules JSON to write.")],
    preset: Annotated[str | None, typer.Option(help="Evaluation preset whose ignore ids / mean are used.")] = None,
    holdout: Annotated[float, typer.Option(min=0.0, max=0.95, help="Fraction of frames held out of tuning (0: none).")] = 0.5,
    kfold: Annotated[int, typer.Option(min=0, help="Folds of the k-fold estimate by frame (0: none).")] = 5,
    split: Annotated[str, typer.Option(help="block (contiguous runs of frames, honest for sequences) or index (interleaved).")] = "block",
    min_pixels: Annotated[int, typer.Option(min=1, help="Smallest group an atom may override.")] = 500,
    precision_margin: Annotated[float, typer.Option(help="How much more often model 2 must be right in the group (fraction).")] = 0.05,
    max_class_drop: Annotated[float, typer.Option(help="Largest IoU drop of any class against model 1 (fraction).")] = 0.005,
    min_gain: Annotated[float, typer.Option(help="mIoU gain (fraction) an atom must exceed.")] = 5e-5,
    max_atoms: Annotated[int | None, typer.Option(min=0, help="Stop after this many atoms.")] = None,
    drop_reference: Annotated[str, typer.Option(help="baseline (IoU drop against model 1) or step (against the previous step).")] = "baseline",
    gt_suffix: Annotated[str, typer.Option(help="Suffix stripped from ground-truth stems, e.g. _labelids.")] = "",
    m1_suffix: Annotated[str, typer.Option(help="Suffix stripped from model-1 stems.")] = "",
    m2_suffix: Annotated[str, typer.Option(help="Suffix stripped from model-2 stems.")] = "",
    kind: Annotated[str, typer.Option(help="auto, png (id masks) or label (SemanticKITTI .label).")] = "auto",
    ignore_id: Annotated[list[int] | None, typer.Option(help="Ground-truth id to skip besides the preset's (repeatable; default 255).")] = None,
    histogram: Annotated[Path | None, typer.Option(help="Also save H over all frames (.npz).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Reader threads.")] = 2,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Learn "trust model 2 here" rules from H[m1, m2, gt] and write them as JSON.

    The rules are tuned on the tuning part only; the held-out part and the k-fold estimate show
    how much of the tuning gain survives on frames the search never saw.

    Example: terraseg ensemble tune --m1 preds_upernet --m2 preds_m2f --gt val_labels --ontology goose --gt-suffix _labelids --out rules.json
    """
    from terraseg.ensemble import SearchOptions, tune_folders

    opts = SearchOptions(min_pixels=min_pixels, precision_margin=precision_margin, max_class_drop=max_class_drop,
                         min_gain=min_gain, max_atoms=max_atoms, drop_reference=drop_reference)  # type: ignore[arg-type]
    res = tune_folders(m1, m2, gt, ontology, opts, holdout=holdout, kfold=kfold, split=split,  # type: ignore[arg-type]
                       gt_suffix=gt_suffix, m1_suffix=m1_suffix, m2_suffix=m2_suffix, kind=kind,  # type: ignore[arg-type]
                       preset=preset, extra_ignore=ignore_id if ignore_id is not None else [255], workers=workers,
                       progress=not quiet)
    path = res.rules.save(out)
    if histogram is not None:
        res.total.save(histogram)
    console.print(_rules_table(res.rules))
    for k, rule in enumerate(res.rules.rules, start=1):
        console.print(f"  rule {k}: {rule}", highlight=False)
    console.print(_scores_table(res.rules.scores.tuning, res.rules.scores.holdout))
    console.print(gain_line(res.rules), highlight=False)
    if res.rules.scores.holdout is not None and res.rules.scores.tuning is not None:
        console.print("note: the tuning gain is in-sample; trust the held-out / k-fold figures.", highlight=False)
    console.print(f"search: {len(res.search.atoms)} atom(s) in {res.search.seconds:.2f} s ({res.search.stop_reason}); "
                  f"rules written to {path}" + (f", histogram to {histogram}" if histogram else ""), highlight=False)


@ensemble_app.command("apply")
@user_errors
def apply(
    rules: Annotated[Path, typer.Argument(help="Rules JSON written by `terraseg ensemble tune`.")],
    m1: Annotated[Path, typer.Option("--m1", help="Folder of model-1 predictions.")],
    m2: Annotated[Path, typer.Option("--m2", help="Folder of model-2 predictions, paired by relative name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for the ensemble's id files.")],
    kind: Annotated[str, typer.Option(help="auto, png or label.")] = "auto",
    m1_suffix: Annotated[str, typer.Option(help="Suffix stripped from model-1 stems.")] = "",
    m2_suffix: Annotated[str, typer.Option(help="Suffix stripped from model-2 stems.")] = "",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table.")] = False,
) -> None:
    """Apply learned rules to two folders of predictions; writes id files and summary.json.

    Example: terraseg ensemble apply rules.json --m1 test_upernet --m2 test_m2f --out test_ensemble
    """
    from terraseg.ensemble import RuleSet

    rs = RuleSet.load(rules)
    s = rs.apply_folders(m1, m2, out, kind=kind, m1_suffix=m1_suffix, m2_suffix=m2_suffix,  # type: ignore[arg-type]
                         progress=not quiet)
    if not quiet and rs.atoms:
        table = Table(title="pixels changed per atom")
        for col in ("model 1 says", "model 2 says", "changed"):
            table.add_column(col, justify="right" if col == "changed" else "left")
        for a, n in zip(rs.atoms, s.atom_pixels):
            table.add_row(a.m1, a.m2, f"{n:,}")
        console.print(table)
    console.print(f"{s.frames} frame(s), {s.changed:,} of {s.pixels:,} values changed "
                  f"({100 * s.changed_fraction:.2f} %); written to {s.out_dir}", highlight=False)


@ensemble_app.command("average")
@user_errors
def average(
    inputs: Annotated[list[Path], typer.Option("--input", "-i", help="Folder of saved scores (.npy/.npz, (C, H, W)), repeatable.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for id masks.")],
    weight: Annotated[list[float] | None, typer.Option(help="Weight per --input, in order (default equal).")] = None,
    mode: Annotated[str, typer.Option(help="prob (mean of probabilities) or logit (mean of logits).")] = "prob",
    logits: Annotated[bool, typer.Option("--logits", help=".npy files hold logits (default: probabilities).")] = False,
    ontology: Annotated[str | None, typer.Option("--ontology", "-O", help="Check output ids against this ontology.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Weighted softmax / logit averaging of N models' saved scores.

    Example: terraseg ensemble average -i probs_a -i probs_b --weight 0.6 --weight 0.4 --out preds_avg
    """
    from terraseg.ensemble import average_folders

    s = average_folders(inputs, out, weights=weight, kinds="logits" if logits else None,
                        mode=mode, ontology=ontology, progress=not quiet)  # type: ignore[arg-type]
    console.print(f"averaged {len(inputs)} models ({s.method}, weights "
                  f"{', '.join(f'{w:.3g}' for w in s.weights)}) over {s.frames} frame(s); written to {s.out_dir}",
                  highlight=False)


@ensemble_app.command("vote")
@user_errors
def vote(
    inputs: Annotated[list[Path], typer.Option("--input", "-i", help="Folder of id masks or .label files, repeatable (strongest first).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    weight: Annotated[list[float] | None, typer.Option(help="Weight per --input, in order (default equal).")] = None,
    kind: Annotated[str, typer.Option(help="auto, png or label.")] = "auto",
    ontology: Annotated[str | None, typer.Option("--ontology", "-O", help="Check output ids against this ontology.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Weighted majority vote of N models' predictions (ties go to the earliest --input).

    Example: terraseg ensemble vote -i preds_a -i preds_b -i preds_c --out preds_vote
    """
    from terraseg.ensemble import vote_folders

    s = vote_folders(inputs, out, weights=weight, kind=kind, ontology=ontology, progress=not quiet)  # type: ignore[arg-type]
    console.print(f"majority vote of {len(inputs)} models over {s.frames} frame(s); written to {s.out_dir}",
                  highlight=False)
