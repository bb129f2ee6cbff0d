"""Whole-scan prediction with a trained LiDAR checkpoint, and reading / writing scans.

:func:`iter_scans` reads a scan file or a folder of them (SemanticKITTI ``.bin`` and PLY,
:data:`~terraseg.io.scans.SCAN_SUFFIXES`); :func:`write_scan_prediction` writes
``labels/<stem>.label`` (SemanticKITTI layout: uint32, semantic id in the low 16 bits) and
``ply/<stem>.ply`` (binary PLY coloured by the ontology palette, with a ``label`` property).
:func:`scan_predictor` turns a loaded checkpoint into ``predict(points) -> ScanPrediction``
(kept for callers of :func:`terraseg.inference.load_model`; :func:`terraseg.inference.load_predictor`
loads any model file, ``.onnx`` included).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.inference.models import LoadedModel, recorded_projection
from terraseg.io.scans import SCAN_SUFFIXES
from terraseg.models.points.pipeline import ScanPipeline
from terraseg.models.points.predict import Projection
from terraseg.models.points.predict import resolve_projection as _resolve


def resolve_projection(value: str | None, meta: dict[str, Any]) -> Projection:
    """The projection of a range network: ``value``, else the one it was trained with
    (``organized:HxW`` becomes an :class:`~terraseg.models.points.predict.OrganizedLayout`).

    Raises:
        ConfigError: neither is given (no silent default sensor).
    """
    return _resolve(value or recorded_projection(meta), "range network")


def scan_predictor(loaded: LoadedModel, *, projection: str | None = None, regular: bool = False,
                   num_points: int = 45056, device: Any = None, seed: int = 0, probabilities: bool = True,
                   tta: Any = None, intensity_max: float | None = None) -> ScanPipeline:
    """``predict(points (N, C) float32) -> ScanPrediction`` for a loaded LiDAR checkpoint.

    One predictor serves every scan: a range network's organised layout (row order, flip) is
    decided on the first scan and reused, as for a stream from one sensor.

    Args:
        loaded: from :func:`terraseg.inference.load_model` (task ``points``).
        projection: range networks: a projection preset or ``organized:HxW`` (default: the
            training recipe's).
        regular: RandLA-Net: spatially regular crops of ``num_points`` until every point is
            visited (Open3D-ML's test procedure) instead of one pass over the whole scan.
        device: where to run (default: the model's device).
        probabilities: also return per-point class probabilities (False: labels only where the
            predictor can skip them, range networks; ``ScanPrediction.probabilities`` is None).
        tta, intensity_max: see :func:`terraseg.inference.load_predictor`.
    """
    from terraseg.inference.predictor import scan_pipeline

    if loaded.task != "points":
        raise ConfigError(f"{loaded.path}: not a LiDAR model ({type(loaded.model).__name__})")
    if device is not None:
        loaded.model.to(device)
    return scan_pipeline(loaded.model, path=loaded.path or "points", projection=projection, regular=regular, tta=tta,
                         intensity_max=intensity_max, probabilities=probabilities, num_points=num_points, seed=seed)


def list_scans(path: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """``(stem, file)`` of a scan file (``.bin`` or ``.ply``) or of every scan under a folder
    (recursive, sorted; stems keep the relative sub-path), without reading them.

    Raises:
        DataError: a missing path, a file that is not a scan, a folder without scans, or one
            stem present as both ``.bin`` and ``.ply`` (they would write the same outputs).
    """
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() not in SCAN_SUFFIXES:
            raise DataError(f"{p}: not a LiDAR scan (expected a SemanticKITTI .bin file or a .ply point cloud)")
        return [(p.stem, p)]
    if not p.is_dir():
        raise DataError(f"{p}: no such file or folder")
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in SCAN_SUFFIXES and not f.name.startswith(".")
                   and f.is_file())
    if not files:
        raise DataError(f"{p}: no .bin or .ply scans in this folder")
    out: dict[str, Path] = {}
    for f in files:
        stem = f.relative_to(p).with_suffix("").as_posix()
        if stem in out:
            raise DataError(f"{p}: {out[stem].name} and {f.name} are the same scan stem; keep one of them")
        out[stem] = f
    return list(out.items())


def read_scan(path: str | os.PathLike[str]) -> np.ndarray:
    """One scan file as (N, 4) float32 x, y, z, intensity (:func:`terraseg.io.scans.read_scan`:
    ``.bin`` or ``.ply``)."""
    from terraseg.io.scans import read_scan as _read

    return _read(path)


def iter_scans(path: str | os.PathLike[str]) -> Iterator[tuple[str, np.ndarray]]:
    """``(stem, points (N, 4) float32)`` of a scan file or of every scan under a folder (see
    :func:`list_scans`)."""
    for stem, f in list_scans(path):
        yield stem, read_scan(f)


def write_scan_prediction(out_dir: str | os.PathLike[str], stem: str, points: np.ndarray, labels: np.ndarray,
                          ontology: Any, *, label_file: bool = True, ply: bool = True) -> dict[str, Path]:
    """Write one scan's predicted labels (``labels/<stem>.label``) and coloured cloud (``ply/<stem>.ply``).

    The first call for a folder in a process removes the temporaries an interrupted run left
    there (:func:`terraseg.io.atomic.remove_stale_temporaries_once`).
    """
    from terraseg.io.atomic import remove_stale_temporaries_once
    from terraseg.io.ply import write_labeled_ply
    from terraseg.io.scans import write_label

    out = Path(out_dir)
    for sub in ("labels", "ply"):
        remove_stale_temporaries_once(out / sub, recursive=True)
    paths: dict[str, Path] = {}
    if label_file:
        p = out / "labels" / f"{stem}.label"
        p.parent.mkdir(parents=True, exist_ok=True)
        write_label(p, labels.astype(np.uint32))
        paths["label"] = p
    if ply:
        p = out / "ply" / f"{stem}.ply"
        p.parent.mkdir(parents=True, exist_ok=True)
        paths["ply"] = write_labeled_ply(p, points, labels, ontology)
    return paths
