"""``terraseg query``: labelling tasks for active-learning query rounds (export, import, show)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from terraseg.cli.app import app, console, user_errors

query_app = typer.Typer(help="Active-learning query rounds: export them as labelling tasks, import the labels, "
                             "list the rounds of a state folder.", no_args_is_help=True)
app.add_typer(query_app, name="query")


@query_app.command("export")
@user_errors
def export(
    state: Annotated[Path, typer.Argument(help="Query state folder (holds round_000, round_001, ...).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Task folder to write.")],
    round_index: Annotated[int | None, typer.Option("--round", help="Round to export (default: the latest).")] = None,
    ontology: Annotated[str | None, typer.Option("--ontology", "-O", help="Ontology of the labels (name or YAML); "
                                                 "default: the one the round recorded.")] = None,
    images: Annotated[Path | None, typer.Option(help="Folder with the frames' images (<frame>.png/.jpg), searched "
                                                "before the image paths the round recorded.")] = None,
    prefill: Annotated[bool, typer.Option("--prefill", help="Image frames: paint queried pixels with the model's "
                                          "suggestion instead of the label 'query'.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table.")] = False,
) -> None:
    """Write a query round as a labelling task: previews, point CSVs, CVAT segmentation masks.

    Points: points/<frame>.csv (fill the label column); images: a CVAT "Segmentation mask 1.1" archive plus the images; a preview PNG per frame with the queried items in magenta.

    Example: terraseg query export runs/adapt/queries --out label_round0 --ontology sim
    """
    from terraseg.active import export_task, load_round
    from terraseg.ontology import get_ontology

    rnd = load_round(state, round_index)
    name = ontology or rnd.ontology
    ont = get_ontology(name) if name else None
    res = export_task(rnd, out, ontology=ont, state_dir=state, images_dir=images, prefill=prefill,
                      progress=not quiet)
    if not quiet:
        table = Table(title=f"round {res.round} ({rnd.strategy}, {rnd.percent:g} % per frame)")
        for col in ("frame", "kind", "queried", "to label", "preview"):
            table.add_column(col, justify="right" if col == "queried" else "left")
        for f in res.frames:
            table.add_row(f.name, f.kind, str(f.queried), f.data, f.preview)
        console.print(table)
    total = sum(f.queried for f in res.frames)
    console.print(f"exported round {res.round}: {len(res.frames)} frame(s), {total} item(s) to label, in {res.out_dir}"
                  + (f"; CVAT archive {res.cvat_zip}" if res.cvat_zip else ""), highlight=False, soft_wrap=True)


@query_app.command("import")
@user_errors
def import_(
    task: Annotated[Path, typer.Argument(help="Task folder written by `terraseg query export`.")],
    cvat: Annotated[Path | None, typer.Option(help="CVAT 'Segmentation mask 1.1' export (zip or folder) for image "
                                              "frames (default: the task's cvat/ folder).")] = None,
    labels: Annotated[Path | None, typer.Option(help="Folder of filled <frame>.csv / <frame>.npz point labels "
                                                "(default: the task's points/ folder).")] = None,
    state: Annotated[Path | None, typer.Option(help="Query state folder (default: the one the task recorded).")] = None,
    round_index: Annotated[int | None, typer.Option("--round", help="Round (default: the task's).")] = None,
    ontology: Annotated[str | None, typer.Option("--ontology", "-O", help="Ontology to read class names in point "
                                                 "CSVs (ids always work).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table.")] = False,
) -> None:
    """Read a labelling task's labels back into its query round (labels.npz).

    Example: terraseg query import label_round0 --cvat task_export.zip
    """
    import json

    from terraseg.active import import_task
    from terraseg.ontology import get_ontology

    name = ontology
    if name is None and (task / "task.json").is_file():
        try:
            name = json.loads((task / "task.json").read_text()).get("ontology")
        except ValueError:
            name = None  # import_task reports the broken file
    ont = get_ontology(name) if name else None
    res = import_task(task, cvat=cvat, points_dir=labels, state_dir=state, round_index=round_index, ontology=ont)
    if not quiet:
        table = Table(title=f"labels of round {res.round}")
        for col in ("frame", "queried", "labelled"):
            table.add_column(col, justify="left" if col == "frame" else "right")
        for f in res.frames:
            table.add_row(f.name, str(f.queried), str(f.labelled))
        console.print(table)
    pct = 100.0 * res.labelled / res.queried if res.queried else 0.0
    console.print(f"{res.labelled} of {res.queried} queried item(s) labelled ({pct:.1f} %); stored in {res.labels_file}",
                  highlight=False, soft_wrap=True)


@query_app.command("show")
@user_errors
def show(
    state: Annotated[Path, typer.Argument(help="Query state folder.")],
) -> None:
    """List the query rounds of a state folder: strategy, budget, real labelled fraction, labels imported.

    Example: terraseg query show runs/adapt/queries
    """
    from terraseg.active import list_rounds, load_round, load_round_labels
    from terraseg.errors import DataError

    rounds = list_rounds(state)
    if not rounds:
        raise DataError(f"{state}: no query rounds found")
    table = Table(title=f"query rounds in {state}")
    for col in ("round", "strategy", "% per frame", "frames", "queried", "labelled fraction", "labels imported"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for k in rounds:
        rnd = load_round(state, k)
        labs = load_round_labels(state, k)
        got = sum(int((v >= 0).sum()) for v in labs.values())
        table.add_row(str(k), rnd.strategy, f"{rnd.percent:g}", str(len(rnd.frames)), str(rnd.queried),
                      f"{100 * rnd.labelled_fraction:.3f} %", f"{got} / {rnd.queried}")
    console.print(table)
