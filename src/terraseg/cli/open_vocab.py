"""``terraseg predict ... --open-vocab``: name the classes of LiDAR scans at prediction time."""

from __future__ import annotations

from pathlib import Path

from terraseg.cli.app import console


def predict_open_vocab(model: Path, inputs: Path, out: Path, clip_weights: Path | None, classes: str | None,
                       clip_model: str | None, text_embeddings: Path | None, ply: bool, quiet: bool) -> None:
    """Predict scans with class names given now (see :mod:`terraseg.inference.open_vocab`)."""
    from terraseg.errors import ConfigError
    from terraseg.inference.open_vocab import open_vocab_predictor
    from terraseg.inference.scans import iter_scans, write_scan_prediction
    from terraseg.io.atomic import atomic_write_text
    from terraseg.progress import ProgressBar

    if not classes:
        raise ConfigError("open-vocabulary prediction needs --classes, e.g. --classes 'tree,grass,rock,water'")
    if clip_weights is None and text_embeddings is None:
        raise ConfigError("--classes needs the text side: --open-vocab CLIP_WEIGHTS (a local open_clip weights file, "
                          "`pip install 'terraseg[clip]'`) or --text-embeddings FILE")
    if inputs.resolve().is_relative_to(out.resolve()) or out.resolve() == inputs.resolve():
        raise ConfigError(f"--out {out} must not contain the inputs {inputs}")
    names = [c.strip() for c in classes.split(",") if c.strip()]
    predictor = open_vocab_predictor(model, names, clip_weights=clip_weights, clip_model=clip_model,
                                     text_embeddings=text_embeddings)
    n = 0
    with ProgressBar(None, "predicting scans (open vocabulary)", enabled=not quiet) as bar:
        for stem, pts in iter_scans(inputs):
            labels, _ = predictor(pts)
            write_scan_prediction(out, stem, pts, labels, predictor.ontology, ply=ply)
            n += 1
            bar.advance()
    atomic_write_text(out / "classes.txt", "".join(f"{i} {c.name}\n" for i, c in enumerate(predictor.ontology)))
    console.print(f"predicted {n} scan(s) into {out} with {len(names)} class names (labels/, classes.txt"
                  f"{', ply/' if ply else ''}); ids index the names", highlight=False)
