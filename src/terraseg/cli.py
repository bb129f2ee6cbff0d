"""The ``terraseg`` command: a thin layer that parses arguments and calls the library.

Every sub-command has ``--help`` with an example. User errors (a missing file, an unknown
class, a bad option) print one line ``error: ...`` on stderr and exit with status 1.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from terraseg.errors import TerrasegError

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="terraseg",
    help="Semantic segmentation of camera images and LiDAR point clouds off-road.\n\n"
         "Example: terraseg ontology show goose",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
ontology_app = typer.Typer(help="List and show the built-in label ontologies and maps.", no_args_is_help=True)
app.add_typer(ontology_app, name="ontology")

console = Console()
err_console = Console(stderr=True)


def user_errors(fn: F) -> F:
    """Turn :class:`TerrasegError` into one ``error:`` line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TerrasegError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _swatch(rgb: tuple[int, int, int]) -> Text:
    return Text("    ", style=f"on rgb({rgb[0]},{rgb[1]},{rgb[2]})")


# --------------------------------------------------------------------------- ontology
@ontology_app.command("list")
@user_errors
def ontology_list() -> None:
    """List the built-in ontologies.

    Example: terraseg ontology list
    """
    from terraseg.ontology import get_ontology, list_ontologies

    table = Table(title="built-in ontologies")
    for col in ("name", "classes", "ids", "void", "ignored", "groupings"):
        table.add_column(col, no_wrap=col in ("name", "ids"))
    for name in list_ontologies():
        o = get_ontology(name)
        table.add_row(name, str(len(o)), f"{o.ids[0]}..{o.max_id}",
                      ", ".join(o.name_of(i) for i in sorted(o.void_ids)) or "-",
                      ", ".join(o.name_of(i) for i in sorted(o.ignore_ids)) or "-",
                      ", ".join(o.grouping_names) or "-")
    console.print(table)


@ontology_app.command("show")
@user_errors
def ontology_show(
    name: Annotated[str, typer.Argument(help="Built-in ontology name or path to a YAML ontology file.")],
    grouping: Annotated[str | None, typer.Option(help="Category grouping to show (default: the ontology's own).")] = None,
) -> None:
    """Show an ontology's classes with colour swatches, categories and flags.

    Example: terraseg ontology show goose --grouping goose-11
    """
    from terraseg.ontology import color_hex, get_ontology

    o = get_ontology(name)
    gname = grouping or o.default_grouping
    cats = o.grouping(gname) if gname else {}
    cat_of = {i: c for c, ids in cats.items() for i in ids}
    table = Table(title=f"{o.name}: {o.title}" if o.title else o.name)
    for col in ("id", "", "name", "colour", f"category ({gname})" if gname else "category", "flags"):
        table.add_column(col)
    for c in o:
        flags = ", ".join(f for f, on in (("void", c.id in o.void_ids), ("ignored", c.id in o.ignore_ids)) if on)
        table.add_row(str(c.id), _swatch(c.color), c.name, color_hex(c.color), cat_of.get(c.id, "-"), flags)
    console.print(table)
    if o.description:
        console.print(o.description, highlight=False)
    if o.groupings:
        console.print(f"groupings: {', '.join(o.grouping_names)}", highlight=False)


@ontology_app.command("maps")
@user_errors
def ontology_maps(
    source: Annotated[str | None, typer.Argument(help="Show this map's pairs (with TARGET).")] = None,
    target: Annotated[str | None, typer.Argument(help="Target ontology of the map to show.")] = None,
) -> None:
    """List the built-in label maps, or show one map class by class.

    Example: terraseg ontology maps goose traversability
    """
    from terraseg.ontology import LabelMap, list_label_maps

    if source is None:
        for s, t in list_label_maps():
            console.print(f"{s} -> {t}", highlight=False)
        return
    if target is None:
        raise TerrasegError("give both SOURCE and TARGET to show a map")
    m = LabelMap.builtin(source, target)
    table = Table(title=f"{source} -> {target}")
    for col in ("id", "", source, "", target):
        table.add_column(col)
    for c in m.source:
        tid = int(m.lut[c.id])
        tc = m.target[tid]
        table.add_row(str(c.id), _swatch(c.color), c.name, _swatch(tc.color),
                      tc.name + (" (dropped)" if c.id in m.dropped else ""))
    console.print(table)


# --------------------------------------------------------------------------- eval-masks
@app.command("eval-masks")
@user_errors
def eval_masks(
    pred_dir: Annotated[Path, typer.Argument(help="Folder of predicted label PNGs (searched recursively).")],
    gt_dir: Annotated[Path, typer.Argument(help="Folder of ground-truth label PNGs, paired by relative name.")],
    ontology: Annotated[str, typer.Option("--ontology", "-O", help="Ontology of the ids (name or YAML file).")],
    preset: Annotated[str | None, typer.Option(help="Evaluation preset, e.g. goose-challenge (default: the ontology's).")] = None,
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
    """
    from terraseg.io.atomic import atomic_write_text
    from terraseg.metrics import evaluate_mask_folders, markdown_categories, markdown_summary, write_reports

    ev = evaluate_mask_folders(pred_dir, gt_dir, ontology, preset, pred_color=color or pred_color,
                               gt_color=color or gt_color, unknown_color="void" if unknown_color_void else "error",
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


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="terraseg")


if __name__ == "__main__":  # pragma: no cover
    main()
