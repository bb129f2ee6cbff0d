"""``terraseg convert-masks``: RGB colour masks to id masks with a palette."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from terraseg.cli.app import app, console, user_errors


@app.command("convert-masks")
@user_errors
def convert_masks(
    src: Annotated[Path, typer.Argument(help="Folder of RGB colour-mask PNGs (searched recursively), or one PNG.")],
    palette: Annotated[str, typer.Option("--palette", "-p", help="Palette file (CSV, TXT 'id name r g b', JSON, YAML), ontology YAML or built-in ontology name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder for the id masks (must not exist or be empty).")],
    unknown_void: Annotated[bool, typer.Option("--unknown-void", help="Map colours outside the palette to its void class.")] = False,
    unknown_id: Annotated[int | None, typer.Option("--unknown-id", help="Map colours outside the palette to this id, e.g. 255 (ignored in training).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Decoding threads.")] = 4,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no class table.")] = False,
) -> None:
    """Convert RGB colour masks into single-channel id masks (8-bit, 16-bit above id 255) with a palette.

    Relative names are kept. Colours outside the palette stop the run with the most frequent of them and their pixel counts, unless --unknown-void or --unknown-id maps them. The output folder appears only when every mask converted.

    Example: terraseg convert-masks data/mine/annotations --palette data/mine/colormap.txt --out data/mine/masks
    """
    from terraseg.errors import ConfigError
    from terraseg.io.color_masks import convert_color_masks

    if unknown_void and unknown_id is not None:
        raise ConfigError("give either --unknown-void or --unknown-id, not both")
    unknown: str | int = "void" if unknown_void else ("error" if unknown_id is None else unknown_id)
    rep = convert_color_masks(src, out, palette, unknown=unknown, workers=workers, progress=not quiet)
    pal = rep.palette
    console.print(f"converted {len(rep.files)} colour mask(s) with palette {pal.name!r} ({len(pal)} classes) "
                  f"into {rep.out}", highlight=False)
    if rep.unknown_pixels:
        console.print(f"{rep.unknown_pixels} pixel(s) of colours outside the palette were mapped to "
                      f"{'void' if unknown_void else unknown_id}", highlight=False)
    if not quiet:
        seen = [(i, int(n)) for i, n in enumerate(rep.class_pixels) if n]
        for i, n in seen:
            name = pal.name_of(i) if i in pal else "(unknown colours)"
            console.print(f"  {i:>5}  {name:<28} {n:>12} px  {100 * n / max(rep.pixels, 1):6.2f} %", highlight=False)
    console.print(f"read them with ontology={pal.source or pal.name} (e.g. --data-option ontology=...)",
                  highlight=False)
