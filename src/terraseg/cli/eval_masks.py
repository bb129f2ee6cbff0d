"""``terraseg eval-masks``: evaluate folders of predicted masks against ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from terraseg.cli.app import app, console, user_errors


@app.command("eval-masks")
@user_errors
def eval_masks(
    pred_dir: Annotated[Path, typer.Argument(help="Folder of predicted label PNGs (searched recursively).")],
    gt_dir: Annotated[Path, typer.Argument(help="Folder of ground-truth label PNGs, paired by relative name.")],
    ontology: Annotated[str, typer.Option("--ontology", "-O", help="Ontology of the ids: built-in name, ontology YAML or palette file.")],
    preset: Annotated[str | None, typer.Option(help="Evaluation preset, e.g. goose-challenge (default: the ontology's).")] = None,
    remap: Annotated[str | None, typer.Option(help="Label map for both folders before scoring: a map YAML, SOURCE->TARGET or a target ontology with a built-in map.")] = None,
    pred_remap: Annotated[str | None, typer.Option(help="Label map for the predictions only, from the model's ontology into --ontology (map YAML or SOURCE->TARGET).")] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: PRED_DIR + '_eval').")] = None,
    color: Annotated[bool, typer.Option("--color", help="Both folders hold RGB colour masks.")] = False,
    pred_color: Annotated[bool, typer.Option("--pred-color", help="Predictions are RGB colour masks.")] = False,
    gt_color: Annotated[bool, typer.Option("--gt-color", help="Ground truth is RGB colour masks.")] = False,
    unknown_color_void: Annotated[bool, typer.Option(help="Map colours outside the palette to void instead of failing.")] = False,
    pred_suffix: Annotated[str, typer.Option(help="Suffix stripped from prediction stems, e.g. _pred.")] = "",
    gt_suffix: Annotated[str, typer.Option(help="Suffix stripped from ground-truth stems, e.g. _labelids.")] = "",
    ignore_id: Annotated[list[int] | None, typer.Option(help="Extra ground-truth id to ignore (repeatable), e.g. 255.")] = None,
    skip_bad: Annotated[bool, typer.Option(help="Skip bad or unpaired files and list them in skipped.txt.")] = False,
    name: Annotated[str, typer.Option(help="Model name used in the report tables.")] = "model",
    workers: Annotated[int, typer.Option(min=1, help="Reader threads.")] = 4,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table.")] = False,
) -> None:
    """Evaluate a folder of predicted masks against ground truth and write reports.

    Writes report.md, per_class.md/.csv, per_class_columns.md, metrics.json, confusion.npz and confusion.png into --out.

    Example: terraseg eval-masks preds/ labels/ --ontology goose --preset goose-challenge --gt-suffix _labelids

    Example: terraseg eval-masks preds/ data/mine/masks --ontology data/mine/colormap.txt --pred-remap goose_to_mine.yaml
    """
    from terraseg.io.atomic import atomic_write_text
    from terraseg.metrics import evaluate_mask_folders, markdown_categories, markdown_summary, write_reports

    ev = evaluate_mask_folders(pred_dir, gt_dir, ontology, preset, pred_color=color or pred_color,
                               gt_color=color or gt_color, unknown_color="void" if unknown_color_void else "error",
                               remap=remap, pred_remap=pred_remap,
                               pred_suffix=pred_suffix, gt_suffix=gt_suffix, extra_ignore=ignore_id or (),
                               skip_bad=skip_bad, workers=workers, progress=not quiet)
    out_dir = out or pred_dir.with_name(pred_dir.name + "_eval")
    paths = write_reports(ev.result, out_dir, ev.matrix, title=f"{name} on {gt_dir}", model_name=name)
    if ev.skipped:
        paths["skipped"] = atomic_write_text(out_dir / "skipped.txt",
                                             "".join(f"{f}\t{why}\n" for f, why in ev.skipped))
    if not quiet:
        _print_result(ev.result)
    console.print(f"evaluated {ev.evaluated} pair(s)"
                  + (f", skipped {len(ev.skipped)} (see {paths['skipped']})" if ev.skipped else ""), highlight=False)
    console.print(markdown_summary(ev.result), highlight=False, markup=False)
    if ev.result.category_scores is not None and not quiet:
        console.print(markdown_categories(ev.result), highlight=False, markup=False)
    console.print(f"reports written to {out_dir}", highlight=False)


def _print_result(result: Any) -> None:
    import numpy as np

    sc = result.scores
    table = Table(title=f"per-class scores ({result.preset.name})")
    for col in ("id", "class", "IoU %", "Acc %", "Prec %", "GT count"):
        table.add_column(col, justify="right" if col not in ("class",) else "left")

    def pct(x: float) -> str:
        return "-" if not np.isfinite(x) else f"{100 * x:.2f}"

    for i, n in enumerate(sc.class_names):
        table.add_row(str(sc.class_ids[i]), n, pct(sc.iou[i]), pct(sc.acc[i]), pct(sc.precision[i]),
                      str(sc.gt_count[i]))
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
