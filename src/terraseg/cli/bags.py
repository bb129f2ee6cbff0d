"""``terraseg extract`` (bag -> dataset) and ``terraseg bag-info``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from terraseg.cli.app import app, console, err_console, user_errors
from terraseg.errors import TerrasegError


def parse_split(text: str | None) -> dict[str, float | tuple[float | None, float | None]] | None:
    """``train=0.8,val=0.1,test=0.1`` (fractions) or ``train=0:60,val=60:75,test=75:`` (seconds)."""
    if not text:
        return None
    out: dict[str, float | tuple[float | None, float | None]] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise TerrasegError(f"--split: expected NAME=FRACTION or NAME=START:END, got {part!r}")
        try:
            if ":" in value:
                a, _, b = value.partition(":")
                out[name] = (float(a) if a.strip() else None, float(b) if b.strip() else None)
            else:
                out[name] = float(value)
        except ValueError:
            raise TerrasegError(f"--split: {value!r} is not a number or a START:END range in seconds") from None
    return out


@app.command("extract")
@user_errors
def extract(
    bag: Annotated[Path, typer.Argument(help="ROS 1 .bag file or ROS 2 bag folder (sqlite3 or mcap).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset folder (generic layout).")],
    image: Annotated[str | None, typer.Option("--image", help="Image or CompressedImage topic.")] = None,
    mask: Annotated[str | None, typer.Option("--mask", help="Segmentation mask topic.")] = None,
    points: Annotated[str | None, typer.Option("--points", help="PointCloud2 topic.")] = None,
    camera_info: Annotated[str | None, typer.Option("--camera-info", help="CameraInfo topic (written to calib.yaml).")] = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Pairing tolerance in ms (0: exact header stamps).")] = 0.0,
    split: Annotated[str | None, typer.Option(help="train=0.8,val=0.1,test=0.1 or train=0:60,val=60:75,test=75: (s).")] = None,
    mask_mode: Annotated[str, typer.Option(help="id, red (CARLA: class id in the red channel) or color.")] = "id",
    ontology: Annotated[str | None, typer.Option(help="Ontology of the masks (required for --mask-mode color).")] = None,
    image_format: Annotated[str, typer.Option(help="auto (keep compressed bytes, else PNG), png or jpg.")] = "auto",
    time_source: Annotated[str, typer.Option(help="header (message stamps) or receive (bag time).")] = "header",
    skip_bad: Annotated[bool, typer.Option(help="Skip undecodable messages and list them in skipped.txt.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Rewrite frames that are already complete on disk.")] = False,
    workers: Annotated[int | None, typer.Option(help="Encoder threads (default: CPUs + 1).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Extract synchronised image / mask / point-cloud frames from a bag into a dataset folder.

    Keeps only the times that have every requested stream (exact stamps, or nearest within --tolerance), writes images/, masks/, points/ (.bin + .fields.npz), calib.yaml, timestamps.csv and splits/, and prints what was kept and dropped per topic. Re-running is idempotent and resumes an interrupted run.

    Example: terraseg extract run.bag -o data/run --image /carla/hero/rgb_front/image --mask /carla/hero/semantic_segmentation_front/image --mask-mode red --split train=0.8,val=0.1,test=0.1
    """
    from terraseg.extract import extract_bag

    if not (image or mask or points):
        raise TerrasegError("give at least one of --image, --mask, --points")
    if mask_mode not in ("id", "red", "color"):
        raise TerrasegError(f"--mask-mode must be id, red or color, not {mask_mode!r}")
    if image_format not in ("auto", "png", "jpg"):
        raise TerrasegError(f"--image-format must be auto, png or jpg, not {image_format!r}")
    if time_source not in ("header", "receive"):
        raise TerrasegError(f"--time-source must be header or receive, not {time_source!r}")
    summary = extract_bag(bag, out, image_topic=image, mask_topic=mask, points_topic=points,
                          camera_info_topic=camera_info, tolerance_ms=tolerance, split=parse_split(split),
                          mask_mode=mask_mode, ontology=ontology, skip_bad=skip_bad, progress=not quiet,  # type: ignore[arg-type]
                          time_source=time_source, image_format=image_format, overwrite=overwrite,  # type: ignore[arg-type]
                          workers=workers)
    summary.print(console)
    console.print(f"dataset written to {out} (read it with `terraseg inspect {out}`)", highlight=False)


@app.command("bag-info")
@user_errors
def bag_info(
    bag: Annotated[Path, typer.Argument(help="ROS 1 .bag file or ROS 2 bag folder.")],
    verify: Annotated[bool, typer.Option(help="Also read every MCAP chunk and check it against its CRC32 (reads the whole bag; sqlite3 and ROS 1 bags store no checksums).")] = False,
) -> None:
    """List a bag's topics with message types and counts (from the bag's index; messages are not read).

    Example: terraseg bag-info recordings/run_01 --verify
    """
    from terraseg.io.bags import open_bag

    with open_bag(bag) as b:
        table = Table(title=f"{bag} ({b.storage})")
        for col in ("topic", "type", "messages"):
            table.add_column(col, justify="right" if col == "messages" else "left")
        for t in sorted(b.topics.values(), key=lambda t: t.name):
            table.add_row(t.name, t.msgtype, str(t.count))
        console.print(table)
        if not verify:
            return
        if not b.mcap_files:
            console.print(f"nothing to verify: {b.storage} bags store no checksums", highlight=False)
            return
        bad = b.verify()
    if bad:
        for chunk in bad[1:]:
            err_console.print(f"[bold red]error:[/] {chunk.describe()}", highlight=False, soft_wrap=True)
        raise TerrasegError(bad[0].describe() + (f" ({len(bad)} corrupted chunks in all)" if len(bad) > 1 else ""))
    from terraseg.io.bags.mcap import mcap_chunks

    chunks = [c for f in b.mcap_files for c in mcap_chunks(f).chunks]
    unchecked = sum(1 for c in chunks if not c.crc)
    console.print(f"verified {len(chunks) - unchecked} chunk(s): every one matches its CRC32"
                  + (f"; {unchecked} chunk(s) store no checksum (their size was checked)" if unchecked else ""),
                  highlight=False)
