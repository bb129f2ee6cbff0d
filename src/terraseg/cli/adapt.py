"""``terraseg pseudo-label`` and ``terraseg adapt``: source-free cross-modal adaptation (reference 002)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from terraseg.cli.app import app, console, user_errors


@app.command("pseudo-label")
@user_errors
def pseudo_label_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Cross-modal (task: fusion) checkpoint, e.g. the source-only model.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Target dataset folder (any paired reader).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: <frame>.npz, summary.json, classes.csv.")],
    split: Annotated[str, typer.Option(help="Split of the target dataset.")] = "train",
    kind: Annotated[str, typer.Option(help="Dataset kind (auto detects it; sim for the simulator's paired output).")] = "auto",
    cap: Annotated[float, typer.Option(help="Threshold cap: a label is kept when confidence >= min(class median, cap).")] = 0.9,
    max_frames: Annotated[int | None, typer.Option("--max-frames", help="Only the first N frames.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: CUDA when available).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace the pseudo-labels in a non-empty --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table.")] = False,
) -> None:
    """Pseudo-label a target dataset with a cross-modal model: 2D, 3D and 2D+3D labels per frame.

    A label is kept when its confidence is at least min(median confidence of its predicted class over the whole set, cap), per modality (xMUDA). Confidences are stored; per-class kept counts go to the table, summary.json and classes.csv. `terraseg adapt` reads the folder (adapt.pseudo_labels.dir).

    Example: terraseg pseudo-label runs/source/checkpoints/last.pth --data data/sim-fog --kind sim --out pl/fog
    """
    from terraseg.active.predict import pseudo_label_dataset

    s = pseudo_label_dataset(checkpoint, data, out, split=split, kind=kind, cap=cap, max_frames=max_frames,
                             device=device, overwrite=overwrite, progress=not quiet)
    if not quiet:
        import csv

        with open(out / "classes.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        for m, st in s.stats.items():
            table = Table(title=f"{m}: {int(st.kept.sum())} of {int(st.predicted.sum())} points kept "
                                f"({100 * st.kept_fraction:.1f} %)")
            for col in ("class", "predicted", "kept", "kept %", "median", "threshold"):
                table.add_column(col, justify="left" if col == "class" else "right")
            for row in (r for r in rows if r["modality"] == m):
                table.add_row(row["class"], row["predicted"], row["kept"], row["kept_percent"], row["median"][:5],
                              row["threshold"][:5])
            console.print(table)
    console.print(f"pseudo-labelled {len(s.frames)} frame(s) into {out} (summary.json, classes.csv)", highlight=False, soft_wrap=True)


@app.command("adapt", context_settings={"allow_extra_args": False})
@user_errors
def adapt_cmd(
    recipe: Annotated[Path, typer.Argument(help="Adaptation recipe: a task: fusion recipe on the target data plus adapt:.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. adapt.active.strategy=entropy trainer.max_steps=200.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run <output>/<name> (also after labelling a human round).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder of the same name.")] = False,
    devices: Annotated[str | None, typer.Option(help="Devices (a count, or auto).")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu, gpu or auto.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no per-round lines.")] = False,
) -> None:
    """Source-free adaptation of a cross-modal model to a target dataset, with optional active queries.

    Starts from adapt.source (no source data), trains on the target with pseudo-labels (queried labels overwrite them), queried-label CE and the target cross-modal KL; query rounds at fractions of trainer.max_steps or automatically. Same run folder, logs, checkpoints and --resume as terraseg train.

    Example: terraseg adapt configs/sim_adapt.yaml adapt.source=runs/sim-xmuda/checkpoints/last.pth adapt.active.strategy=knn_entropy
    """
    from terraseg.errors import ConfigError
    from terraseg.training.adapt import adapt

    ndev: int | str | None = None
    if devices is not None:
        if devices != "auto" and not devices.isdigit():
            raise ConfigError(f"--devices must be a count or auto, got {devices!r}")
        ndev = int(devices) if devices.isdigit() else devices
    res = adapt(recipe, overrides or [], resume=resume, overwrite=overwrite, progress=not quiet, devices=ndev,
                accelerator=accelerator)
    r = res.train
    console.print(f"adapted: {r.steps} steps in {r.seconds:.0f} s; run folder {r.run_dir}", highlight=False, soft_wrap=True)
    for e in res.rounds:
        lab = "" if e.get("labelled_points") is None else f", {e['labelled_points']} labelled"
        console.print(f"  round {e['round']} at step {e['step']} ({e['strategy']}): {e['queried']} points queried{lab}; "
                      f"{100 * e['labelled_fraction']:.3f} % of the in-view points", highlight=False, soft_wrap=True)
    if res.awaiting_labels is not None:
        state = r.run_dir / "queries"
        console.print(f"round {res.awaiting_labels} waits for labels: terraseg query export {state} --out TASK; label; "
                      f"terraseg query import TASK; then terraseg adapt {recipe} --resume", highlight=False, soft_wrap=True)
    if r.last_checkpoint:
        console.print(f"  last checkpoint: {r.last_checkpoint}", highlight=False, soft_wrap=True)
