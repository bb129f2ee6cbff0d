"""Whole-scan prediction with a trained LiDAR checkpoint, and writing the results.

:func:`scan_predictor` turns a loaded RandLA-Net, voxel U-Net or range-network checkpoint into
``predict(points) -> ScanPrediction`` (one pass over the whole scan, or RandLA-Net's
Open3D-ML-compatible regular crops with ``regular=True``); :func:`write_scan_prediction` writes
``labels/<stem>.label`` (SemanticKITTI layout: uint32, semantic id in the low 16 bits) and
``ply/<stem>.ply`` (binary PLY coloured by the ontology palette, with a ``label`` property).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.errors import ConfigError, DataError
from terraseg.inference.models import LoadedModel
from terraseg.models.points.predict import OrganizedLayout, ScanPrediction


def resolve_projection(value: str | None, meta: dict[str, Any]) -> Any:
    """The projection of a range network: ``value``, else the one it was trained with."""
    from terraseg.training.data import parse_organized

    proj = value or ((meta.get("preprocess") or {}).get("projection")) or "velodyne-hdl64e"
    hw = parse_organized(proj)
    return OrganizedLayout(*hw) if hw is not None else proj


def scan_predictor(loaded: LoadedModel, *, projection: str | None = None, regular: bool = False,
                   num_points: int = 45056, device: Any = None, seed: int = 0, probabilities: bool = True
                   ) -> Callable[[np.ndarray], ScanPrediction]:
    """``predict(points (N, C) float32) -> ScanPrediction`` for a LiDAR checkpoint.

    One predictor serves every scan: a range network's organised layout (row order, flip) is
    decided on the first scan and reused, as for a stream from one sensor.

    Args:
        loaded: from :func:`terraseg.inference.load_model` (task ``points``).
        projection: range networks: a projection preset or ``organized:HxW`` (default: the
            training recipe's).
        regular: RandLA-Net: spatially regular crops of ``num_points`` until every point is
            visited (Open3D-ML's test procedure) instead of one pass over the whole scan.
        device: where to run (default: CPU, or the model's device).
        probabilities: range networks and the voxel U-Net: also return per-point class
            probabilities (False: labels only, no softmax; ``ScanPrediction.probabilities`` is
            None). RandLA-Net always returns them.
    """
    from terraseg.models.points import RandLANet, RandLAPredictor, RangePredictor, SalsaNext, VoxelPredictor, VoxelUNet

    model = loaded.model
    if device is not None:
        model.to(device)
    if isinstance(model, RandLANet):
        if regular:
            from terraseg.inference.points import predict_scan_regular

            return lambda pts: predict_scan_regular(model, pts, num_points=num_points, seed=seed, recenter="none")
        return RandLAPredictor(model, seed=seed)
    if isinstance(model, VoxelUNet):
        if regular:
            raise ConfigError("--regular applies to RandLA-Net only (the voxel U-Net sees the whole scan at once)")
        return VoxelPredictor(model, probabilities=probabilities)
    if isinstance(model, SalsaNext):
        if regular:
            raise ConfigError("--regular applies to RandLA-Net only (range networks see the whole scan at once)")
        return RangePredictor(model, projection=resolve_projection(projection, loaded.meta),
                              probabilities=probabilities)
    raise ConfigError(f"{loaded.path}: not a LiDAR model ({type(model).__name__})")


SCAN_SUFFIXES = (".bin",)


def iter_scans(path: str | os.PathLike[str]) -> Iterator[tuple[str, np.ndarray]]:
    """``(stem, points (N, 4) float32)`` of a SemanticKITTI ``.bin`` scan or every ``.bin`` under a
    folder (recursive, sorted; stems keep the relative sub-path)."""
    from terraseg.io.scans import read_bin

    p = Path(path)
    if p.is_file():
        if p.suffix.lower() not in SCAN_SUFFIXES:
            raise DataError(f"{p}: not a LiDAR scan (expected a SemanticKITTI .bin file)")
        yield p.stem, read_bin(p)
        return
    if not p.is_dir():
        raise DataError(f"{p}: no such file or folder")
    files = sorted(f for f in p.rglob("*.bin") if f.is_file())
    if not files:
        raise DataError(f"{p}: no .bin scans in this folder")
    for f in files:
        rel = f.relative_to(p).with_suffix("")
        yield rel.as_posix(), read_bin(f)


def write_scan_prediction(out_dir: str | os.PathLike[str], stem: str, points: np.ndarray, labels: np.ndarray,
                          ontology: Any, *, label_file: bool = True, ply: bool = True) -> dict[str, Path]:
    """Write one scan's predicted labels (``labels/<stem>.label``) and coloured cloud (``ply/<stem>.ply``)."""
    from terraseg.io.ply import write_labeled_ply
    from terraseg.io.scans import write_label

    out = Path(out_dir)
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
