"""``terraseg eval``, ``terraseg predict`` and ``terraseg export``: use a trained checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from terraseg.cli.app import app, console, user_errors

_TTA_HELP = 'Test-time augmentation, e.g. "scales=0.75,1,1.25,1.5 flip=true" (softmax-averaged).'
_WINDOW_HELP = "Image inference: whole (default) or slide (sliding windows of --crop every --stride)."


def _checkpoint_and_recipe(model: Path) -> tuple[Path, dict[str, Any]]:
    """A checkpoint path from a checkpoint or a recipe (its run's best.pth), and the recipe dict."""
    from terraseg.errors import ConfigError
    from terraseg.training.config import load_config

    if model.suffix.lower() in (".yaml", ".yml"):
        cfg = load_config(model)
        ckpt = Path(cfg.output) / cfg.name / "checkpoints" / "best.pth"
        if not ckpt.is_file():
            raise ConfigError(f"{model}: its run has no checkpoint yet ({ckpt}); train it first")
        return ckpt, cfg.to_dict()
    return model, {}


def _window(mode: str, crop: str | None, stride: str | None) -> Any:
    from terraseg.errors import ConfigError
    from terraseg.inference.image import WindowConfig

    if mode not in ("whole", "slide"):
        raise ConfigError(f"--window must be whole or slide, got {mode!r}")
    if mode == "whole":
        return None
    spec: dict[str, Any] = {"mode": "slide"}
    if crop:
        spec["crop"] = crop
    if stride:
        spec["stride"] = stride
    return WindowConfig.parse(spec)


@app.command("eval")
@user_errors
def eval_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint (best.pth) or the recipe YAML of a trained run.")],
    data: Annotated[Path | None, typer.Option(help="Dataset folder (default: the recipe's data.root).")] = None,
    kind: Annotated[str | None, typer.Option(help="Dataset kind (default: the recipe's, or auto).")] = None,
    split: Annotated[str | None, typer.Option(help="Split to evaluate (default: the recipe's val split, or val).")] = None,
    preset: Annotated[str | None, typer.Option(help="Metrics preset, e.g. goose-challenge (default: the recipe's or the ontology's).")] = None,
    tta: Annotated[str | None, typer.Option(help=_TTA_HELP)] = None,
    window: Annotated[str, typer.Option(help=_WINDOW_HELP)] = "whole",
    crop: Annotated[str | None, typer.Option(help="Sliding-window size HxW, e.g. 1024x2048.")] = None,
    stride: Annotated[str | None, typer.Option(help="Sliding-window stride HxW, e.g. 768x1536.")] = None,
    regular: Annotated[bool, typer.Option(help="RandLA-Net: Open3D-ML-compatible regular crops instead of one pass.")] = False,
    projection: Annotated[str | None, typer.Option(help="Range networks: projection preset or organized:HxW (default: the training one).")] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: <checkpoint folder>/../eval-<split>).")] = None,
    name: Annotated[str, typer.Option(help="Model name in the report tables.")] = "model",
    data_option: Annotated[list[str] | None, typer.Option(help="Dataset reader option KEY=VALUE (repeatable), e.g. ontology=sim.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table.")] = False,
) -> None:
    """Evaluate a trained camera or LiDAR model on a dataset split and write reports.

    Camera models: whole-image or sliding-window inference with optional TTA. LiDAR models: every point labelled (one pass; --regular for RandLA-Net crops as in Open3D-ML). Writes report.md, per_class.md/.csv (classes as rows), per_class_columns.md (classes as columns, like published tables), metrics.json, per_frame.csv, confusion.npz/.png.

    Example: terraseg eval runs/goose-upernet/checkpoints/best.pth --data data/goose --split val --preset goose-challenge --tta "scales=0.75,1,1.25,1.5 flip=true"
    """
    from terraseg.cli.eval_masks import _print_result
    from terraseg.datasets import open_dataset
    from terraseg.errors import ConfigError
    from terraseg.inference.evaluate import evaluate_frames
    from terraseg.inference.models import load_model
    from terraseg.io.atomic import atomic_write_text
    from terraseg.metrics import default_preset, get_preset, markdown_summary, write_reports

    ckpt, recipe = _checkpoint_and_recipe(model)
    loaded = load_model(ckpt, device=device)
    recipe = recipe or loaded.recipe  # the training recipe stored in the checkpoint
    rdata = recipe.get("data", {})
    root = data or (Path(rdata["root"]) if rdata.get("root") else None)
    if root is None:
        raise ConfigError("give --data (the dataset folder) or a recipe whose data.root points to it")
    split_name = split or rdata.get("val_split") or "val"
    onto = loaded.ontology
    if onto is None:
        raise ConfigError(f"{ckpt}: the checkpoint does not say its label ontology")
    opts = dict(rdata.get("options") or {})
    for item in data_option or []:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--data-option {item!r}: expected KEY=VALUE, e.g. ontology=sim")
        opts[key] = val
    frames = open_dataset(root, kind=kind or rdata.get("kind") or "auto", split=split_name,
                          remap=rdata.get("remap"), **opts)
    preset_name = preset or (recipe.get("eval") or {}).get("preset")
    pre = get_preset(preset_name, onto) if preset_name else default_preset(onto)
    if loaded.task == "image":
        from terraseg.inference.image import ImagePredictor

        tta_spec = tta if tta is not None else ((recipe.get("eval") or {}).get("tta") or None)
        win = _window(window, crop, stride)
        if win is None and (recipe.get("eval") or {}).get("window"):
            from terraseg.inference.image import WindowConfig

            win = WindowConfig.parse(recipe["eval"]["window"])
        predictor = ImagePredictor.from_checkpoint(ckpt, device=device, tta=tta_spec or None, window=win)
        ev = evaluate_frames(frames, lambda f: predictor.predict(f.image), pre, "image", progress=not quiet)
    else:
        from terraseg.inference.scans import scan_predictor

        predict = scan_predictor(loaded, projection=projection, regular=regular)
        ev = evaluate_frames(frames, lambda f: predict(f.points).labels, pre, "points", progress=not quiet)
    out_dir = out or ckpt.parent.parent / f"eval-{split_name}"
    write_reports(ev.result, out_dir, ev.matrix, title=f"{name} on {root} ({split_name})", model_name=name)
    rows = ["frame,count,aAcc,mIoU"] + [f"{r['frame']},{r.get('pixels', r.get('points'))},{r['aAcc']:.6f},{r['mIoU']:.6f}"
                                        for r in ev.per_frame]
    atomic_write_text(out_dir / "per_frame.csv", "\n".join(rows) + "\n")
    if not quiet:
        _print_result(ev.result)
    console.print(f"evaluated {ev.frames} frame(s) of {root} ({split_name}) with {ckpt}; "
                  f"{1000 * ev.seconds:.0f} ms per frame", highlight=False)
    console.print(markdown_summary(ev.result), highlight=False, markup=False)
    console.print(f"reports written to {out_dir}", highlight=False)


@app.command("predict")
@user_errors
def predict_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint (best.pth), or an exported .onnx image model.")],
    inputs: Annotated[Path, typer.Argument(help="An image, a folder of images, a video, a .bin scan or a folder of scans.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    tta: Annotated[str | None, typer.Option(help=_TTA_HELP)] = None,
    window: Annotated[str, typer.Option(help=_WINDOW_HELP)] = "whole",
    crop: Annotated[str | None, typer.Option(help="Sliding-window size HxW.")] = None,
    stride: Annotated[str | None, typer.Option(help="Sliding-window stride HxW.")] = None,
    submission: Annotated[str | None, typer.Option(help="Also pack the id PNGs for a challenge server: goose.")] = None,
    overlay: Annotated[bool, typer.Option(help="Images: write overlays (image blended with the colour mask).")] = True,
    alpha: Annotated[float, typer.Option(help="Overlay opacity of the colour mask.")] = 0.5,
    regular: Annotated[bool, typer.Option(help="RandLA-Net: Open3D-ML-compatible regular crops.")] = False,
    projection: Annotated[str | None, typer.Option(help="Range networks: projection preset or organized:HxW.")] = None,
    ply: Annotated[bool, typer.Option(help="Scans: also write coloured PLY files.")] = True,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    open_vocab: Annotated[Path | None, typer.Option("--open-vocab", help="Scans, open vocabulary: a local open_clip weights file; name the classes with --classes (a network from `terraseg distill` with an open_clip teacher).")] = None,
    classes: Annotated[str | None, typer.Option(help="Open vocabulary: comma-separated class names, e.g. 'tree,grass,rock,water'.")] = None,
    clip_model: Annotated[str | None, typer.Option("--clip-model", help="Open vocabulary: open_clip model name (default: the teacher's).")] = None,
    text_embeddings: Annotated[Path | None, typer.Option("--text-embeddings", help="Open vocabulary: a (K, D) .npy/.pt of class embeddings instead of CLIP.")] = None,
) -> None:
    """Predict labels for images, videos or LiDAR scans and write them to --out.

    Images / videos: OUT/ids/<stem>.png (class ids), OUT/color/<stem>.png, OUT/overlay/<stem>.jpg; --submission goose also writes OUT/submission_goose.zip (see docs/inference.md for the layout). Scans: OUT/labels/<stem>.label (SemanticKITTI layout) and OUT/ply/<stem>.ply.

    Open vocabulary (scans): --open-vocab CLIP_WEIGHTS --classes 'a,b,c' scores a distilled network's features against CLIP text embeddings of the names; OUT/labels/ ids index the names (OUT/classes.txt).

    Example: terraseg predict runs/sim-litefpn/checkpoints/best.pth demo-output/sim/camera/images/test --out preds/
    """
    from terraseg.errors import ConfigError
    from terraseg.progress import ProgressBar

    if open_vocab is not None or text_embeddings is not None or classes is not None:
        from terraseg.cli.open_vocab import predict_open_vocab

        predict_open_vocab(model, inputs, out, open_vocab, classes, clip_model, text_embeddings, ply, quiet)
        return

    if submission is not None and submission != "goose":
        raise ConfigError(f"--submission: unknown challenge {submission!r} (known: goose)")
    if inputs.resolve().is_relative_to(out.resolve()) or out.resolve() == inputs.resolve():
        raise ConfigError(f"--out {out} must not contain the inputs {inputs}")
    ckpt, _ = _checkpoint_and_recipe(model)
    if ckpt.suffix.lower() == ".onnx":
        from terraseg.inference.onnx_export import OrtImagePredictor

        predictor: Any = OrtImagePredictor(ckpt, tta=tta, window=_window(window, crop, stride))
        task = "image"
    else:
        from terraseg.inference.models import load_model

        loaded = load_model(ckpt, device=device)
        task = loaded.task
        if task == "image":
            from terraseg.inference.image import ImagePredictor

            predictor = ImagePredictor.from_checkpoint(ckpt, device=device, tta=tta, window=_window(window, crop, stride))
    onto = predictor.ontology if task == "image" else loaded.ontology
    if onto is None:
        raise ConfigError(f"{ckpt}: the model does not say its label ontology (needed for colours and ids)")
    if submission == "goose" and onto.name != "goose":
        raise ConfigError(f"--submission goose needs a model of the goose ontology; {ckpt} predicts {onto.name!r}")
    n = 0
    if task == "image":
        from terraseg.inference.writers import PredictionWriter, count_inputs, iter_inputs

        writer = PredictionWriter(out, onto, overlay=overlay, alpha=alpha)
        with ProgressBar(count_inputs(inputs), "predicting", enabled=not quiet) as bar:
            for stem, image in iter_inputs(inputs):
                writer.write(stem, image, predictor.predict(image))
                n += 1
                bar.advance()
        console.print(f"predicted {n} image(s) into {out} (ids/, color/{', overlay/' if overlay else ''})",
                      highlight=False)
        if submission == "goose":
            from terraseg.inference.submission import write_goose_submission

            rep = write_goose_submission(out / "ids", out / "submission_goose.zip", ontology=onto)
            console.print(f"GOOSE submission: {rep.path} ({rep.count} masks)", highlight=False)
        return
    if submission is not None:
        raise ConfigError("--submission applies to camera models")
    from terraseg.inference.scans import iter_scans, scan_predictor, write_scan_prediction

    predict = scan_predictor(loaded, projection=projection, regular=regular)
    with ProgressBar(None, "predicting scans", enabled=not quiet) as bar:
        for stem, pts in iter_scans(inputs):
            pred = predict(pts)
            write_scan_prediction(out, stem, pts, pred.labels, onto, ply=ply)
            n += 1
            bar.advance()
    console.print(f"predicted {n} scan(s) into {out} (labels/{', ply/' if ply else ''})", highlight=False)


@app.command("export")
@user_errors
def export_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint (best.pth) or the recipe YAML of a trained run.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="Output .onnx file.")],
    size: Annotated[str | None, typer.Option(help="Input size HxW (default: the training base size; range networks: the projection's).")] = None,
    dynamic: Annotated[bool, typer.Option(help="Images: dynamic height and width (where the architecture allows it).")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    min_agreement: Annotated[float, typer.Option(help="Required argmax agreement with PyTorch on random input.")] = 0.999,
) -> None:
    """Export a trained model to ONNX and check it against PyTorch with ONNX Runtime.

    Camera models take a normalised (1, 3, H, W) image; range networks a (1, C, H, W) range image. Class names, normalisation and sizes are stored in the file, so `terraseg predict model.onnx ...` and the ONNX Runtime predictors need nothing else. The file is only written when the argmax agreement reaches --min-agreement.

    Example: terraseg export runs/sim-litefpn/checkpoints/best.pth --onnx litefpn.onnx --size 480x640
    """
    from terraseg.inference.image import _parse_size
    from terraseg.inference.models import load_model

    ckpt, _ = _checkpoint_and_recipe(model)
    hw = _parse_size(size, "--size") if size else None
    loaded = load_model(ckpt)
    if loaded.task == "image":
        from terraseg.inference.onnx_export import export_checkpoint_onnx

        rep = export_checkpoint_onnx(ckpt, onnx, hw, dynamic=dynamic, opset=opset, min_agreement=min_agreement)
        console.print(f"exported {ckpt} to {rep.path} ({rep.input_size[0]}x{rep.input_size[1]}"
                      f"{', dynamic' if rep.dynamic else ''}, opset {rep.opset}): argmax agreement "
                      f"{100 * rep.agreement:.3f} %, max |logit diff| {rep.max_abs_diff:.2e}", highlight=False)
        return
    from terraseg.inference.range_onnx import export_range_checkpoint_onnx

    rep = export_range_checkpoint_onnx(ckpt, onnx, hw, opset=opset, min_agreement=min_agreement)
    console.print(f"exported {ckpt} to {rep.path} (range image {rep.size[0]}x{rep.size[1]}): argmax agreement "
                  f"{100 * rep.agreement:.3f} %, max |logit diff| {rep.max_abs_diff:.2e}", highlight=False)
