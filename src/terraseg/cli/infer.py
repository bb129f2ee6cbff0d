"""``terraseg eval``, ``terraseg predict`` and ``terraseg export``: use a trained checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from terraseg.cli.app import app, console, user_errors

_TTA_HELP = ('Test-time augmentation, probabilities averaged over the views. Camera: "scales=0.75,1,1.25,1.5 flip=true"; '
             'LiDAR: "rotations=4 flip=y" (rotations about z, x / y mirrors; range networks on organized:HxW refuse).')
_WINDOW_HELP = "Image inference: whole (default) or slide (sliding windows of --crop every --stride)."
_INTENSITY_HELP = ("LiDAR: divide raw intensities by this before the model (e.g. 255 for 8-bit sensors; default: the "
                   "training recipe's data.intensity_max).")


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


def _data_options(items: list[str] | None, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Reader options from ``KEY=VALUE`` items (YAML scalars, as in recipes) over ``base``."""
    from terraseg.datasets import parse_reader_options

    return {**(base or {}), **parse_reader_options(items or [])}


def _is_fusion(ckpt: Path) -> bool:
    """Whether a model file is a cross-modal (camera + LiDAR) checkpoint."""
    from terraseg.inference.predictor import model_kind

    return ckpt.suffix.lower() != ".onnx" and model_kind(ckpt) == "fusion"


def _fusion_predictor(ckpt: Path, device: str | None, calib: Path | None) -> Any:
    from terraseg.io.calib import read_calib_yaml
    from terraseg.models.fusion import FusionPredictor

    return FusionPredictor.from_checkpoint(ckpt, device=device, calib=read_calib_yaml(calib) if calib else None)


def _window(mode: str, crop: str | None, stride: str | None) -> Any:
    from terraseg.errors import ConfigError
    from terraseg.models.image.windows import WindowConfig

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
    model: Annotated[Path, typer.Argument(help="A checkpoint (best.pth), an exported .onnx model, or the recipe YAML of a trained run.")],
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
    intensity_max: Annotated[float | None, typer.Option("--intensity-max", help=_INTENSITY_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Report folder (default: <checkpoint folder>/../eval-<split>).")] = None,
    name: Annotated[str, typer.Option(help="Model name in the report tables.")] = "model",
    data_option: Annotated[list[str] | None, typer.Option(help="Dataset reader option KEY=VALUE (repeatable), e.g. ontology=sim, remap=map.yaml, masks_dir=annotations.")] = None,
    calib: Annotated[Path | None, typer.Option(help="Cross-modal models: a calib.yaml used for every frame instead of the dataset's.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table.")] = False,
) -> None:
    """Evaluate a trained camera, LiDAR or cross-modal model (.pth or .onnx) on a dataset split and write reports.

    Camera models: whole-image or sliding-window inference with optional TTA. LiDAR models: every point labelled (one pass per TTA view; --regular for RandLA-Net crops as in Open3D-ML), with the projection and intensity scale recorded at training. Cross-modal (fusion) checkpoints: the points in the camera's view, scored for 2D, 3D and 2D+3D (reports of 2D+3D at the top, 2d/ and 3d/ below, modalities.md side by side). Writes report.md, per_class.md/.csv (classes as rows), per_class_columns.md (classes as columns, like published tables), metrics.json, per_frame.csv, confusion.npz/.png.

    Example: terraseg eval runs/goose-upernet/checkpoints/best.pth --data data/goose --split val --preset goose-challenge --tta "scales=0.75,1,1.25,1.5 flip=true"
    """
    from terraseg.cli.eval_masks import _print_result
    from terraseg.datasets import open_dataset
    from terraseg.errors import ConfigError
    from terraseg.inference.evaluate import evaluate_frames
    from terraseg.inference.predictor import load_predictor
    from terraseg.io.atomic import atomic_write_text
    from terraseg.metrics import default_preset, get_preset, markdown_summary, write_reports

    ckpt, recipe = _checkpoint_and_recipe(model)
    fusion = _is_fusion(ckpt)
    pred = None
    if fusion:
        from terraseg.inference.models import load_model

        loaded = load_model(ckpt)
        recipe = recipe or loaded.recipe
        onto = loaded.ontology
        if onto is None:
            raise ConfigError(f"{ckpt}: the checkpoint does not say its label ontology")
    else:
        pred = load_predictor(ckpt, device=device, tta=tta, window=_window(window, crop, stride),
                              projection=projection, regular=regular, intensity_max=intensity_max)
        recipe = recipe or pred.recipe  # the training recipe stored with the model
        onto = pred.require_ontology()
    rdata = recipe.get("data", {})
    root = data or (Path(rdata["root"]) if rdata.get("root") else None)
    if root is None:
        raise ConfigError("give --data (the dataset folder) or a recipe whose data.root points to it")
    split_name = split or rdata.get("val_split") or "val"
    reval = recipe.get("eval") or {}
    if pred is not None and tta is None and reval.get("tta"):  # the recipe's evaluation settings, unless given here
        pred.set_tta(reval["tta"])
    if pred is not None and window == "whole" and reval.get("window"):
        pred.set_window(reval["window"])
    opts = _data_options(data_option, rdata.get("options"))
    remap = opts.pop("remap", rdata.get("remap"))  # --data-option remap=MAP overrides the recipe's data.remap
    frames = open_dataset(root, kind=kind or rdata.get("kind") or "auto", split=split_name, remap=remap,
                          labels_ontology=onto, **opts)
    data_onto = getattr(frames, "ontology", None)
    if data_onto is not None and not data_onto.same_classes(onto):
        raise ConfigError(f"{root}: the labels are in ontology {data_onto.name!r} but {ckpt} predicts {onto.name!r}; "
                          f"give --data-option remap=MAP (a label map YAML from {data_onto.name!r} to {onto.name!r})")
    preset_name = preset or reval.get("preset")
    pre = get_preset(preset_name, onto) if preset_name else default_preset(onto)
    out_dir = out or ckpt.parent.parent / f"eval-{split_name}"
    if pred is None:
        from terraseg.inference.fusion import evaluate_fusion, modality_table, write_fusion_reports

        fev = evaluate_fusion(_fusion_predictor(ckpt, device, calib), frames, pre, progress=not quiet)
        write_fusion_reports(fev, out_dir, title=f"{name} on {root} ({split_name})", model_name=name)
        if not quiet:
            _print_result(fev.results["2d+3d"].result)
        console.print(f"evaluated {fev.frames} frame(s) of {root} ({split_name}) with {ckpt}; "
                      f"{fev.points_in_view} of {fev.points_total} points in the camera's view; "
                      f"{1000 * fev.seconds:.0f} ms per frame", highlight=False)
        for mod, sc in modality_table(fev).items():
            console.print(f"  {mod:<6} mIoU {sc['mIoU']:6.2f}  mAcc {sc['mAcc']:6.2f}  aAcc {sc['aAcc']:6.2f}",
                          highlight=False)
        console.print(f"reports written to {out_dir} (2D+3D; 2d/, 3d/, modalities.md)", highlight=False)
        return
    if not quiet:
        console.print(pred.describe(), highlight=False)
    ev = evaluate_frames(frames, pred.predict_frame, pre, "image" if pred.kind == "camera" else "points",
                         progress=not quiet)
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
    model: Annotated[Path, typer.Argument(help="A checkpoint (best.pth), an exported .onnx model (camera or LiDAR), or the recipe YAML of a trained run.")],
    inputs: Annotated[Path, typer.Argument(help="An image, a folder of images, a video, a .bin / .ply scan or a folder of scans.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    tta: Annotated[str | None, typer.Option(help=_TTA_HELP)] = None,
    window: Annotated[str, typer.Option(help=_WINDOW_HELP)] = "whole",
    crop: Annotated[str | None, typer.Option(help="Sliding-window size HxW.")] = None,
    stride: Annotated[str | None, typer.Option(help="Sliding-window stride HxW.")] = None,
    submission: Annotated[str | None, typer.Option(help="Also pack the id PNGs for a challenge server: goose.")] = None,
    overlay: Annotated[bool, typer.Option(help="Images: write overlays (image blended with the colour mask).")] = True,
    alpha: Annotated[float, typer.Option(help="Overlay opacity of the colour mask.")] = 0.5,
    regular: Annotated[bool, typer.Option(help="RandLA-Net: Open3D-ML-compatible regular crops.")] = False,
    projection: Annotated[str | None, typer.Option(help="Range networks: projection preset or organized:HxW (default: the model's).")] = None,
    intensity_max: Annotated[float | None, typer.Option("--intensity-max", help=_INTENSITY_HELP)] = None,
    ply: Annotated[bool, typer.Option(help="Scans: also write coloured PLY files.")] = True,
    kind: Annotated[str | None, typer.Option(help="Cross-modal models: dataset kind of INPUTS (default: the recipe's, or auto).")] = None,
    split: Annotated[str, typer.Option(help="Cross-modal models: split of the dataset INPUTS.")] = "all",
    data_option: Annotated[list[str] | None, typer.Option(help="Cross-modal models: reader option KEY=VALUE (repeatable).")] = None,
    calib: Annotated[Path | None, typer.Option(help="Cross-modal models: a calib.yaml used for every frame instead of the dataset's.")] = None,
    fill: Annotated[int | None, typer.Option(help="Cross-modal models: label written for points outside the camera's view (default: the ontology's first ignored id, else 0).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    open_vocab: Annotated[Path | None, typer.Option("--open-vocab", help="Scans, open vocabulary: a local open_clip weights file; name the classes with --classes (a network from `terraseg distill` with an open_clip teacher).")] = None,
    classes: Annotated[str | None, typer.Option(help="Open vocabulary: comma-separated class names, e.g. 'tree,grass,rock,water'.")] = None,
    clip_model: Annotated[str | None, typer.Option("--clip-model", help="Open vocabulary: open_clip model name (default: the teacher's).")] = None,
    text_embeddings: Annotated[Path | None, typer.Option("--text-embeddings", help="Open vocabulary: a (K, D) .npy/.pt of class embeddings instead of CLIP.")] = None,
) -> None:
    """Predict labels for images, videos, LiDAR scans or paired camera + LiDAR frames with any model file and write them to --out.

    Images / videos: OUT/ids/<stem>.png (class ids), OUT/color/<stem>.png, OUT/overlay/<stem>.jpg; --submission goose also writes OUT/submission_goose.zip (see docs/inference.md for the layout). Scans (.bin or .ply): OUT/labels/<stem>.label (SemanticKITTI layout) and OUT/ply/<stem>.ply. The model's kind (camera or LiDAR), normalisation, projection and intensity scale come from the file. Cross-modal (fusion) checkpoints read a paired dataset folder and write OUT/labels/<frame>.label (2D+3D; --fill outside the camera's view), OUT/labels_2d/, OUT/labels_3d/, OUT/in_view/<frame>.npy, OUT/overlay/<frame>.jpg and OUT/ply/.

    Open vocabulary (scans): --open-vocab CLIP_WEIGHTS --classes 'a,b,c' scores a distilled network's features against CLIP text embeddings of the names; OUT/labels/ ids index the names (OUT/classes.txt).

    Example: terraseg predict runs/sim-salsanext/checkpoints/best.pth scans/ --out preds/ --tta "rotations=4 flip=y"
    """
    from terraseg.errors import ConfigError
    from terraseg.inference.predictor import load_predictor
    from terraseg.io.scans import SCAN_SUFFIXES
    from terraseg.progress import ProgressBar

    if open_vocab is not None or text_embeddings is not None or classes is not None:
        from terraseg.cli.open_vocab import predict_open_vocab

        predict_open_vocab(model, inputs, out, open_vocab, classes, clip_model, text_embeddings, ply, quiet)
        return

    if submission is not None and submission != "goose":
        raise ConfigError(f"--submission: unknown challenge {submission!r} (known: goose)")
    if inputs.resolve().is_relative_to(out.resolve()) or out.resolve() == inputs.resolve():
        raise ConfigError(f"--out {out} must not contain the inputs {inputs}")
    if inputs.is_dir() and out.resolve().is_relative_to(inputs.resolve()):
        raise ConfigError(f"--out {out} must not be inside the input folder {inputs} (its outputs would be read as "
                          "inputs by the next run)")
    ckpt, _ = _checkpoint_and_recipe(model)
    if _is_fusion(ckpt):
        from terraseg.inference.models import load_model

        _predict_fusion(ckpt, load_model(ckpt, device=device), inputs, out, kind, split, data_option, calib, fill, ply,
                        overlay, device, quiet)
        return
    pred = load_predictor(ckpt, device=device, tta=tta, window=_window(window, crop, stride), projection=projection,
                          regular=regular, intensity_max=intensity_max)
    onto = pred.require_ontology()
    scan_input = inputs.is_file() and inputs.suffix.lower() in SCAN_SUFFIXES
    n = 0
    if pred.kind == "camera":
        if scan_input:
            raise ConfigError(f"{inputs}: a LiDAR scan, but {ckpt} is a camera model")
        if submission == "goose" and onto.name != "goose":
            raise ConfigError(f"--submission goose needs a model of the goose ontology; {ckpt} predicts {onto.name!r}")
        from terraseg.inference.writers import PredictionWriter, count_inputs, iter_inputs

        assert pred.image is not None
        writer = PredictionWriter(out, onto, overlay=overlay, alpha=alpha)
        with ProgressBar(count_inputs(inputs), "predicting", enabled=not quiet) as bar:
            for stem, image in iter_inputs(inputs):
                writer.write(stem, image, pred.image.predict(image))
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
    from terraseg.inference.scans import iter_scans, write_scan_prediction

    with ProgressBar(None, "predicting scans", enabled=not quiet) as bar:
        for stem, pts in iter_scans(inputs):
            labels = pred.predict_scan(pts, source=f"{inputs}/{stem}" if inputs.is_dir() else str(inputs)).labels
            write_scan_prediction(out, stem, pts, labels, onto, ply=ply)
            n += 1
            bar.advance()
    console.print(f"predicted {n} scan(s) into {out} (labels/{', ply/' if ply else ''})", highlight=False)
    assert pred.scan is not None
    if pred.scan.mismatches > 1:
        console.print(f"warning: {pred.scan.mismatches} of {n} scan(s) had intensities far outside the model's "
                      "training range (see the first warning above)", highlight=False)


def _predict_fusion(ckpt: Path, loaded: Any, inputs: Path, out: Path, kind: str | None, split: str,
                    data_option: list[str] | None, calib: Path | None, fill: int | None, ply: bool, overlay: bool,
                    device: str | None, quiet: bool) -> None:
    """``terraseg predict`` for a cross-modal checkpoint: a paired dataset folder in, labels out."""
    from terraseg.datasets import open_dataset
    from terraseg.errors import ConfigError
    from terraseg.inference.fusion import write_fusion_prediction
    from terraseg.progress import ProgressBar

    onto = loaded.ontology
    if onto is None:
        raise ConfigError(f"{ckpt}: the model does not say its label ontology (needed for colours and ids)")
    rdata = (loaded.recipe.get("data") or {})
    if not inputs.is_dir():
        raise ConfigError(f"{inputs}: a cross-modal model predicts paired camera + LiDAR frames: give a dataset "
                          "folder (e.g. the output of terraseg sim, or a RELLIS-3D root with --data-option images=true)")
    opts = _data_options(data_option, rdata.get("options"))
    remap = opts.pop("remap", rdata.get("remap"))
    frames = open_dataset(inputs, kind=kind or rdata.get("kind") or "auto", split=split, remap=remap, **opts)
    fill_id = fill if fill is not None else (min(onto.ignore_ids) if onto.ignore_ids else 0)
    predictor = _fusion_predictor(ckpt, device, calib)
    n = n_view = n_all = 0
    with ProgressBar(len(frames), "predicting frames", enabled=not quiet) as bar:
        for i in range(len(frames)):
            f = frames[i]
            pred = predictor.predict(f)
            write_fusion_prediction(out, f, pred, onto, fill=fill_id, ply=ply, overlay=overlay)
            n += 1
            n_view += len(pred.index)
            n_all += pred.num_points
            bar.advance()
    console.print(f"predicted {n} frame(s) into {out} (labels/ = 2D+3D, labels_2d/, labels_3d/, in_view/"
                  f"{', overlay/' if overlay else ''}{', ply/' if ply else ''}); {n_view} of {n_all} points in the "
                  f"camera's view, the others labelled {fill_id}", highlight=False)


@app.command("export")
@user_errors
def export_cmd(
    model: Annotated[Path, typer.Argument(help="A checkpoint (best.pth) or the recipe YAML of a trained run.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="Output .onnx file.")],
    size: Annotated[str | None, typer.Option(help="Input size HxW (default: the training base size; range networks: the projection's).")] = None,
    dynamic: Annotated[bool, typer.Option(help="Images: dynamic height and width (where the architecture allows it).")] = False,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    projection: Annotated[str | None, typer.Option(help="Range networks: the projection to record (default: the training one; needed for checkpoints that record none).")] = None,
    min_agreement: Annotated[float, typer.Option(help="Required argmax agreement with PyTorch on random input.")] = 0.999,
) -> None:
    """Export a trained model to ONNX and check it against PyTorch with ONNX Runtime.

    Camera models take a normalised (1, 3, H, W) image; range networks a (1, C, H, W) range image. Class names, normalisation and sizes are stored in the file, so `terraseg predict model.onnx ...` and the ONNX Runtime predictors need nothing else. The file is only written when the argmax agreement reaches --min-agreement.

    Example: terraseg export runs/sim-litefpn/checkpoints/best.pth --onnx litefpn.onnx --size 480x640
    """
    from terraseg.errors import ConfigError
    from terraseg.inference.predictor import model_kind
    from terraseg.specs import parse_size

    ckpt, _ = _checkpoint_and_recipe(model)
    if ckpt.suffix.lower() == ".onnx":
        raise ConfigError(f"{ckpt}: already an ONNX model; export takes a checkpoint (.pth) or a recipe")
    hw = parse_size(size, "--size") if size else None
    found = model_kind(ckpt)
    if found == "fusion":
        raise ConfigError(f"{ckpt}: ONNX export of cross-modal (fusion) models is not supported; export a camera or "
                          "LiDAR model")
    if found == "camera":
        if projection is not None:
            raise ConfigError(f"{ckpt}: --projection applies to LiDAR range networks, not to camera models")
        from terraseg.inference.onnx_export import export_checkpoint_onnx

        rep = export_checkpoint_onnx(ckpt, onnx, hw, dynamic=dynamic, opset=opset, min_agreement=min_agreement)
        console.print(f"exported {ckpt} to {rep.path} ({rep.input_size[0]}x{rep.input_size[1]}"
                      f"{', dynamic' if rep.dynamic else ''}, opset {rep.opset}): argmax agreement "
                      f"{100 * rep.agreement:.3f} %, max |logit diff| {rep.max_abs_diff:.2e}", highlight=False)
        return
    from terraseg.inference.range_onnx import export_range_checkpoint_onnx

    rep = export_range_checkpoint_onnx(ckpt, onnx, hw, opset=opset, min_agreement=min_agreement, projection=projection)
    console.print(f"exported {ckpt} to {rep.path} (range image {rep.size[0]}x{rep.size[1]}): argmax agreement "
                  f"{100 * rep.agreement:.3f} %, max |logit diff| {rep.max_abs_diff:.2e}", highlight=False)
