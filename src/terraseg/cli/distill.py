"""``terraseg distill``: 2D -> 3D distillation pre-training of a LiDAR network from a recipe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from terraseg.cli.app import app, console, user_errors


@app.command("distill", context_settings={"allow_extra_args": False})
@user_errors
def distill_cmd(
    config: Annotated[Path, typer.Argument(help="Recipe YAML with a distill: section (see configs/sim_distill.yaml).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. trainer.max_steps=500 distill.loss=kl.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run <output>/<name> from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder of the same name.")] = False,
    accelerator: Annotated[str | None, typer.Option(help="cpu, gpu or auto.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no per-epoch lines.")] = False,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved recipe and exit.")] = False,
) -> None:
    """Pre-train a LiDAR network to predict a 2D teacher's features at its points (OpenScene / WS3D++).

    The teacher (a camera checkpoint, timm:NAME or open_clip:NAME) sees each training scan through the real camera (simulator and fused datasets) or virtual views coloured by intensity; its fused per-point outputs are cached per scan (<run>/distill_targets/ or distill.cache_dir) and re-used by later runs and --resume. Same engine, logs and checkpoints as `terraseg train`; fine-tune from the result with sparse labels (model.weights=<run>/checkpoints/last.pth).

    Example: terraseg distill configs/sim_distill.yaml data.root=demo-output/sim/lidar distill.teacher=runs/sim-litefpn/checkpoints/best.pth
    """
    import yaml

    from terraseg.training.config import load_config
    from terraseg.training.label_efficient_task import distill

    cfg = load_config(config, overrides or [])
    if print_config:
        console.print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), highlight=False, markup=False)
        return
    result = distill(cfg, resume=resume, overwrite=overwrite, progress=not quiet, accelerator=accelerator)
    summary = json.loads((result.run_dir / "summary.json").read_text()) if (result.run_dir / "summary.json").is_file() else {}
    info = summary.get("distill", {})
    best = "n/a" if result.best_miou != result.best_miou else f"{result.best_miou:.2f}"
    console.print(f"distilled {cfg.name} from {cfg.distill.teacher} ({cfg.distill.loss}): {result.steps} steps in "
                  f"{result.seconds:.0f} s; val mIoU {best}", highlight=False)
    if info:
        console.print(f"  teacher targets: {info['computed']} computed, {info['reused']} re-used, "
                      f"{100 * info['seen_share']:.1f}% of the points seen; cache {info['cache']}", highlight=False)
    console.print(f"  run folder: {result.run_dir}", highlight=False)
    if result.last_checkpoint:
        console.print(f"  fine-tune with: terraseg train RECIPE model.weights={result.last_checkpoint} "
                      "data.label_budget=1%", highlight=False)
