"""``terraseg report``: one self-contained HTML page analysing one model or comparing two."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from terraseg.cli.app import app, console, user_errors


@app.command("report")
@user_errors
def report(
    pred: Annotated[Path, typer.Option("--pred", help="Predictions of model 1: id PNGs or .label files, paired with --gt by relative name.")],
    gt: Annotated[Path, typer.Option("--gt", help="Ground truth: id PNGs (camera) or SemanticKITTI .label files (LiDAR).")],
    ontology: Annotated[str, typer.Option("--ontology", "-O", help="Ontology of the ids (name or YAML file).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for report.html, PNGs and CSVs.")],
    pred2: Annotated[Path | None, typer.Option("--pred2", help="Predictions of model 2 (enables agreement and who-wins).")] = None,
    name1: Annotated[str, typer.Option("--name1", help="Name of model 1 on the page.")] = "model 1",
    name2: Annotated[str, typer.Option("--name2", help="Name of model 2 on the page.")] = "model 2",
    preset: Annotated[str | None, typer.Option(help="Evaluation preset, e.g. goose-challenge (default: the ontology's).")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="Camera images for the sample frames (2D), matched by relative name or stem.")] = None,
    points: Annotated[Path | None, typer.Option("--points", help="Scans (.bin) for the sample frames (3D), matched by relative name or stem.")] = None,
    rules: Annotated[Path | None, typer.Option("--rules", help="Ensemble rules JSON from `terraseg ensemble tune` (waterfall, tuning vs held-out).")] = None,
    ensemble: Annotated[Path | None, typer.Option("--ensemble", help="Folder of the ensemble's predictions, scored like a third model.")] = None,
    run: Annotated[list[Path] | None, typer.Option("--run", help="Training run folder for the curves (repeatable).")] = None,
    frames: Annotated[str | None, typer.Option("--frames", help="Sample frames by stem, comma-separated (default: chosen automatically).")] = None,
    num_frames: Annotated[int | None, typer.Option("--num-frames", min=0, help="Number of automatically chosen sample frames (default 4).")] = None,
    gt_suffix: Annotated[str, typer.Option(help="Suffix stripped from ground-truth stems, e.g. _labelids.")] = "",
    ignore_id: Annotated[list[int] | None, typer.Option(help="Extra ground-truth id to ignore (repeatable), e.g. 255.")] = None,
    title: Annotated[str | None, typer.Option(help="Page title.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Reader threads.")] = 4,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Write an HTML report (figures embedded) plus its PNGs and CSVs for one model or two.

    Sections: metrics summary, per-class IoU, class frequency vs IoU, precision vs recall, confusions,
    agreement of two models, rule ensemble, sample frames, training curves.

    Example: terraseg report --pred m1/ --pred2 m2/ --gt labels/ -O goose --images images/ --rules rules.json --out report/
    """
    from terraseg.errors import ConfigError
    from terraseg.report import build_report

    if images is not None and points is not None:
        raise ConfigError("give --images (camera masks) or --points (LiDAR scans), not both")
    if frames is not None and num_frames is not None:
        raise ConfigError("give --frames or --num-frames, not both")
    wanted = [f.strip() for f in frames.split(",") if f.strip()] if frames is not None else None
    res = build_report(out, gt, pred, ontology, pred2=pred2, name1=name1, name2=name2, preset=preset, images=images,
                       points=points, rules=rules, ensemble=ensemble, runs=run or (), frames=wanted,
                       num_frames=4 if num_frames is None else num_frames, gt_suffix=gt_suffix,
                       extra_ignore=ignore_id or (), title=title, workers=workers, progress=not quiet,
                       on_stage=None if quiet else (lambda m: console.print(m, highlight=False)))
    for ev in res.data.evaluated():
        s = ev.result.summary()
        console.print(f"{ev.name}: " + ", ".join(f"{k} {v:.2f}" for k, v in s.items() if v is not None),
                      highlight=False, markup=False)
    if res.data.agreement is not None:
        console.print(f"agreement {100 * res.data.agreement.rate():.2f} %", highlight=False)
    for note in res.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    console.print(f"report written to {res.html} ({len(res.files)} files)", highlight=False, markup=False)
