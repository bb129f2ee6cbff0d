"""``terraseg inspect``: dataset statistics and class weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from terraseg.cli.app import app, console, swatch, user_errors


@app.command("inspect")
@user_errors
def inspect(
    dataset: Annotated[Path, typer.Argument(help="Dataset root folder.")],
    kind: Annotated[str, typer.Option(help="Dataset kind (auto, generic, semantickitti, rellis3d-lidar, "
                                           "rellis3d-image, goose2d, goose3d, carla, carla-lidar).")] = "auto",
    split: Annotated[list[str] | None, typer.Option(help="Split to read (repeatable); default: every split found.")] = None,
    remap: Annotated[str | None, typer.Option(help="Label map applied while reading: a map YAML, SOURCE->TARGET, or a target ontology with a built-in map.")] = None,
    ontology: Annotated[str | None, typer.Option(help="Ontology of a generic folder's masks (name or YAML/palette file).")] = None,
    palette: Annotated[str | None, typer.Option(help="Palette of a generic folder's RGB colour masks (any palette file).")] = None,
    mask_suffix: Annotated[str | None, typer.Option(help="Suffix of a generic folder's mask stems, e.g. _mask.")] = None,
    camera: Annotated[str | None, typer.Option(help="GOOSE camera to read (windshield_vis, camera_left, ...).")] = None,
    data_option: Annotated[list[str] | None, typer.Option(help="Dataset reader option KEY=VALUE (repeatable), e.g. masks_dir=annotations.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for class_stats_*.json and plots (default: DATASET/stats).")] = None,
    top: Annotated[int, typer.Option(help="How many of the rarest classes to list.")] = 10,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Count frames per split and class frequencies in one streaming pass, and write class weights.

    Writes class_stats_<image|points>.json (counts, frequencies, ENet 1/ln(1.02+f), median-frequency and inverse-sqrt weights, readable by training) and a log-scale bar plot per modality.

    Example: terraseg inspect data/rellis3d --kind rellis3d-lidar --out stats/

    Example: terraseg inspect data/mine --kind generic --data-option masks_dir=annotations --palette data/mine/colormap.txt
    """
    from terraseg.datasets import parse_reader_options
    from terraseg.datasets.inspect import inspect_dataset

    given = {"remap": remap, "ontology": ontology, "palette": palette, "mask_suffix": mask_suffix, "camera": camera}
    kwargs = {**parse_reader_options(data_option or []), **{k: v for k, v in given.items() if v is not None}}
    res = inspect_dataset(dataset, out or dataset / "stats", kind=kind, splits=split or None,
                          progress=not quiet, **kwargs)
    console.print(f"dataset kind: {res.kind}; frames per split: "
                  + ", ".join(f"{s} {n}" for s, n in res.frames.items()), highlight=False)
    for modality, st in res.stats.items():
        o = st.ontology
        freq = st.frequencies()
        w = {m: st.class_weights(m) for m in ("enet", "median", "inv_sqrt")}  # type: ignore[arg-type]
        counts = st.total().counts
        table = Table(title=f"{modality} labels ({o.name}): {st.total().labelled_frames} labelled frames")
        for col in ("id", "", "class", "count", "share %", "ENet w", "median w", "1/sqrt w"):
            table.add_column(col, justify="left" if col in ("class", "") else "right")
        for c in o:
            ignored = c.id in o.ignore_ids
            table.add_row(str(c.id), swatch(c.color), c.name + (" (ignored)" if ignored else ""),
                          str(int(counts[c.id])), f"{100 * freq[c.id]:.4f}",
                          *(f"{w[m][c.id]:.3f}" for m in ("enet", "median", "inv_sqrt")))
        console.print(table)
        rare = ", ".join(f"{n} ({100 * f:.4f}%)" for n, f in st.rarest(top))
        console.print(f"rarest: {rare or '-'}", highlight=False, soft_wrap=True)
        never = st.never_seen()
        console.print(f"never seen: {', '.join(never) if never else 'none'}", highlight=False, soft_wrap=True)
    for name, path in res.files.items():
        console.print(f"{name}: {path}", highlight=False)
