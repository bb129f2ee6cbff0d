"""``terraseg ontology``: list and show ontologies and label maps."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from terraseg.cli.app import app, console, swatch, user_errors
from terraseg.errors import TerrasegError

ontology_app = typer.Typer(help="List and show the built-in label ontologies and maps.", no_args_is_help=True)
app.add_typer(ontology_app, name="ontology")


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
        table.add_row(str(c.id), swatch(c.color), c.name, color_hex(c.color), cat_of.get(c.id, "-"), flags)
    console.print(table)
    if o.description:
        console.print(o.description, highlight=False)
    if o.groupings:
        console.print(f"groupings: {', '.join(o.grouping_names)}", highlight=False)


@ontology_app.command("maps")
@user_errors
def ontology_maps(
    source: Annotated[str | None, typer.Argument(help="Show this map's pairs (with TARGET), or a label map YAML to check and show.")] = None,
    target: Annotated[str | None, typer.Argument(help="Target ontology of the map to show.")] = None,
) -> None:
    """List the built-in label maps, or show one map class by class (a built-in one, or your own map file).

    Example: terraseg ontology maps goose traversability

    Example: terraseg ontology maps my_labels_to_rellis3d.yaml
    """
    from terraseg.ontology import LabelMap, get_label_map, list_label_maps, looks_like_path

    if source is None:
        for s, t in list_label_maps():
            console.print(f"{s} -> {t}", highlight=False)
        return
    if target is None and not looks_like_path(source):
        raise TerrasegError("give both SOURCE and TARGET to show a map, or the path of a label map YAML")
    m = get_label_map(source) if target is None else LabelMap.builtin(source, target)
    table = Table(title=f"{m.source.name} -> {m.target.name}")
    for col in ("id", "", m.source.name, "", m.target.name):
        table.add_column(col)
    for c in m.source:
        tid = int(m.lut[c.id])
        tc = m.target[tid]
        table.add_row(str(c.id), swatch(c.color), c.name, swatch(tc.color),
                      tc.name + (" (dropped)" if c.id in m.dropped else ""))
    console.print(table)


