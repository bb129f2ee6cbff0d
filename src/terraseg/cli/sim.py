"""``terraseg sim``: write a simulated off-road dataset (camera + LiDAR) with labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from terraseg.cli.app import app, console, user_errors


@app.command("sim")
@user_errors
def sim(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    frames: Annotated[int, typer.Option(min=1, help="Frames in total, over train/val/test.")] = 100,
    seed: Annotated[int, typer.Option(help="World and noise seed (same seed: byte-identical files).")] = 0,
    domain: Annotated[str, typer.Option(help="TERRAIN-WEATHER: forest or meadow x day, dusk, night (headlights) or fog (camera and LiDAR), e.g. forest-fog.")] = "forest-day",
    camera: Annotated[str, typer.Option(help="Camera preset: vga (640x480), hd, small (320x240), tiny, or none.")] = "vga",
    lidar: Annotated[str, typer.Option(help="LiDAR preset: os1-64 (64x2048), os1-64-1024, vlp-32, vlp-16, small, or none.")] = "os1-64-1024",
    split: Annotated[str, typer.Option(help="Split fractions, e.g. train=0.7,val=0.15,test=0.15.")] = "train=0.7,val=0.15,test=0.15",
    rate: Annotated[float, typer.Option(help="Frame rate, Hz.")] = 10.0,
    speed: Annotated[float, typer.Option(help="Vehicle speed, m/s.")] = 4.0,
    bag: Annotated[bool, typer.Option(help="Also write one ROS 2 bag per split (image, semantic image, points).")] = False,
    worlds: Annotated[str, typer.Option(help="shared: one world, three drives; per-split: each split driven in its own world (seeds seed, seed+1, seed+2).")] = "shared",
    overwrite: Annotated[bool, typer.Option(help="Replace a previous `terraseg sim` output in --out (its sim.yaml, camera/, lidar/, bags/; other files are kept). Without it a non-empty --out is refused.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Simulate a vehicle driving an off-road trail and write camera + LiDAR data with labels.

    Writes OUT/camera (generic layout: images, masks, depth, calib.yaml), OUT/lidar (SemanticKITTI layout: sequences 00/08/11 = train/val/test with poses and calib), optional OUT/bags, and OUT/sim.yaml. Labels use the `sim` ontology (maps to goose, rellis3d, traversability are built in). OUT must be new or empty; --overwrite replaces an earlier simulator output there.

    Example: terraseg sim --out data/sim --frames 200 --seed 1 --domain forest-dusk --bag
    """
    from terraseg.cli.bags import parse_split
    from terraseg.errors import TerrasegError
    from terraseg.sim.dataset import simulate_dataset

    fractions = parse_split(split)
    if fractions is None or any(not isinstance(v, float) for v in fractions.values()):
        raise TerrasegError("--split takes fractions, e.g. train=0.7,val=0.15,test=0.15")
    cfg = simulate_dataset(out, frames=frames, seed=seed, domain=domain, camera=None if camera == "none" else camera,
                           lidar=None if lidar == "none" else lidar, splits=fractions,  # type: ignore[arg-type]
                           rate_hz=rate, speed=speed, bag=bag, progress=not quiet, worlds=worlds, overwrite=overwrite)
    console.print(f"simulated {cfg['frames']} frames ({', '.join(f'{k} {v}' for k, v in cfg['splits'].items())}) "
                  f"of {cfg['domain']} into {out}", highlight=False)
    if cfg["camera"]:
        console.print(f"  camera: {out / 'camera'}  (GenericDataset(..., split='train'))", highlight=False)
    if cfg["lidar"]:
        console.print(f"  lidar:  {out / 'lidar'}  (SemanticKITTIDataset(..., split='train', ontology='sim'))",
                      highlight=False)
    if bag:
        console.print(f"  bags:   {out / 'bags'}", highlight=False)
