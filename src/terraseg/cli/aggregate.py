"""``terraseg aggregate``: a preset's fine, category and composite mIoU from per-class IoU tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from terraseg.cli.app import app, console, user_errors


@app.command("aggregate")
@user_errors
def aggregate(
    tables: Annotated[list[Path], typer.Argument(help="Per-class (and per-category) IoU tables: CSV/TSV, Markdown, "
                                                      "the metrics.json or confusion.npz of eval / eval-masks.")],
    preset: Annotated[str, typer.Option(help="Evaluation preset, e.g. goose-challenge (default: the ontology's).")] = "default",
    ontology: Annotated[str | None, typer.Option("--ontology", "-O", help="Ontology of the classes (name, YAML or palette file); implied by a built-in preset.")] = None,
    absent: Annotated[list[str] | None, typer.Option(help="Classes absent from the test data whatever the table says (ids or names, comma-separated, repeatable).")] = None,
    allow_missing: Annotated[bool, typer.Option(help="Treat scored classes missing from the table as absent.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON to this file.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Headline numbers only.")] = False,
) -> None:
    """Re-compute a benchmark's means from a per-class IoU table under an evaluation preset.

    Reads class rows (id and/or name + IoU) and category rows (category + IoU) from CSV / Markdown tables (several tables per file and several files are fine), or the metrics.json / confusion.npz that eval and eval-masks write. Prints fine mIoU, category mIoU and composite mIoU as the preset defines them (see docs/metrics.md).

    Example: terraseg aggregate goose_test_iou.csv goose_test_categories.csv --preset goose-challenge --absent 7,9,44,56,62,63
    """
    import json

    from terraseg.errors import ConfigError
    from terraseg.io.atomic import atomic_write_text
    from terraseg.metrics import get_preset
    from terraseg.metrics.tables import absent_ids, aggregate_table, read_iou_tables

    if preset in ("default", "") and ontology is None:
        raise ConfigError("the default preset needs --ontology (or give a built-in preset, e.g. goose-challenge)")
    p = get_preset(preset, ontology)
    onto = p.ontology
    read = [read_iou_tables(t, p) for t in tables]
    agg = aggregate_table(read, p, absent=absent_ids(absent or [], onto), allow_missing=allow_missing)

    def pct(x: float | None) -> str:
        return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f} %"

    if not quiet:
        for name, v in agg.category_iou.items():
            console.print(f"  {name:<24} {pct(v):>9}", highlight=False)
        for note in agg.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
    n = sum(math.isfinite(v) for v in agg.class_iou.values())
    console.print(f"preset {p.name} on {onto.name}: mIoU over {n} class(es)", highlight=False)
    console.print(f"mIoU fine:      {pct(agg.fine_miou)}", highlight=False)
    if p.grouping is not None:
        console.print(f"mIoU category:  {pct(agg.category_miou)}  ({p.grouping}, {len(agg.category_iou)} categories)",
                      highlight=False)
    if p.composite:
        console.print(f"mIoU composite: {pct(agg.composite)}", highlight=False)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(agg.to_dict(), indent=2) + "\n")
        console.print(f"written to {json_out}", highlight=False)
