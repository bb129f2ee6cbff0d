"""``terraseg train``: train or fine-tune a camera, LiDAR or cross-modal (camera + LiDAR) model from a YAML recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from terraseg.cli.app import app, console, user_errors


@app.command("train", context_settings={"allow_extra_args": False})
@user_errors
def train_cmd(
    config: Annotated[Path, typer.Argument(help="Recipe YAML (see configs/).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. trainer.max_epochs=2 optim.lr=3e-4.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run <output>/<name> from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder of the same name.")] = False,
    devices: Annotated[str | None, typer.Option(help="Devices per node (a count, or auto); several use DDP.")] = None,
    num_nodes: Annotated[int | None, typer.Option("--num-nodes", help="Machines (multi-node DDP; launch one process per node, e.g. with torchrun or SLURM).")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu, gpu or auto.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no per-epoch lines.")] = False,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved recipe and exit.")] = False,
) -> None:
    """Train a segmentation model from a recipe; writes checkpoints, logs and metrics to <output>/<name>/.

    The recipe is validated before anything runs; overrides use dotted keys with YAML values. The resolved recipe is saved with the run. Checkpoints best.pth / last.pth feed `terraseg eval`, `predict` and `export`.

    Example: terraseg train configs/sim_litefpn.yaml data.root=demo-output/sim/camera trainer.max_epochs=4
    """
    import yaml

    from terraseg.errors import ConfigError
    from terraseg.training.config import load_config
    from terraseg.training.engine import train

    cfg = load_config(config, overrides or [])
    if print_config:
        console.print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), highlight=False, markup=False)
        return
    ndev: int | str | None = None
    if devices is not None:
        if devices != "auto" and not devices.isdigit():
            raise ConfigError(f"--devices must be a count or auto, got {devices!r}")
        ndev = int(devices) if devices.isdigit() else devices
    result = train(cfg, resume=resume, overwrite=overwrite, progress=not quiet, devices=ndev, num_nodes=num_nodes,
                   accelerator=accelerator)
    best = "n/a" if result.best_miou != result.best_miou else f"{result.best_miou:.2f}"
    console.print(f"trained {cfg.name}: {result.epochs} epochs, {result.steps} steps in {result.seconds:.0f} s; "
                  f"best val mIoU {best} (epoch {result.best_epoch})", highlight=False)
    console.print(f"  run folder: {result.run_dir}", highlight=False)
    if result.best_checkpoint:
        console.print(f"  best checkpoint: {result.best_checkpoint}", highlight=False)
