"""`terraseg inspect` and the dataset registry, end to end on small SemanticKITTI trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from terraseg.cli import app
from terraseg.datasets import detect_kind, load_class_weights, open_dataset
from terraseg.errors import DataError
from terraseg.io import write_bin, write_label
from terraseg.ontology import LabelMap

runner = CliRunner()


def make_kitti(root: Path) -> dict[str, np.ndarray]:
    """Sequences 00 (train, 2 scans), 08 (val, 1 scan), 11 (test, no labels)."""
    rng = np.random.default_rng(0)
    raw = {"00": [np.array([10] * 6 + [40] * 3 + [0]), np.array([40] * 5 + [252] * 5)],
           "08": [np.array([70] * 4 + [72] * 4 + [81] * 2)], "11": [None]}
    train_ids: dict[str, np.ndarray] = {}
    lm = LabelMap.builtin("semantickitti-raw", "semantickitti")
    for seq, scans in raw.items():
        d = root / "sequences" / seq
        for i, sem in enumerate(scans):
            write_bin(d / "velodyne" / f"{i:06d}.bin", rng.normal(size=(10, 4)).astype(np.float32))
            if sem is not None:
                write_label(d / "labels" / f"{i:06d}.label", sem.astype(np.uint32))
                train_ids.setdefault(seq, np.zeros(0, np.int64))
                train_ids[seq] = np.concatenate([train_ids[seq], lm(sem.astype(np.uint16))])
    return train_ids


def test_registry_detects_and_opens(tmp_path: Path) -> None:
    make_kitti(tmp_path)
    assert detect_kind(tmp_path) == "semantickitti"
    ds = open_dataset(tmp_path, split="train")
    assert len(ds) == 2 and ds.ontology.name == "semantickitti"
    with pytest.raises(DataError, match="cannot tell which dataset layout"):
        detect_kind(tmp_path / "sequences")
    with pytest.raises(DataError, match="unknown dataset kind 'nope'"):
        open_dataset(tmp_path, kind="nope")


def test_inspect_cli_counts_and_weights(tmp_path: Path) -> None:
    ids = make_kitti(tmp_path / "kitti")
    out = tmp_path / "stats"
    res = runner.invoke(app, ["inspect", str(tmp_path / "kitti"), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "frames per split: train 2, val 1, test 1" in res.output
    data = json.loads((out / "class_stats_points.json").read_text())
    all_ids = np.concatenate(list(ids.values()))
    counts = np.bincount(all_ids, minlength=20)
    assert data["counts"]["car"] == counts[1] == 11  # 6 car + 5 moving-car
    assert data["counts"]["road"] == counts[9]
    assert data["splits"]["val"]["counts"]["vegetation"] == 4
    labelled = counts[1:].sum()
    assert data["frequency"]["car"] == pytest.approx(11 / labelled)
    w = load_class_weights(out / "class_stats_points.json", "enet")
    seen = counts[1:] > 0
    raw = 1 / np.log(1.02 + counts[1:][seen] / labelled)
    np.testing.assert_allclose(w[1:][seen], raw / raw.mean(), rtol=1e-5)
    assert "bicycle" in data["never_seen"]
    assert (out / "class_frequencies_points.png").stat().st_size > 1000
    assert "never seen:" in res.output and "rarest:" in res.output


def test_inspect_cli_errors(tmp_path: Path) -> None:
    res = runner.invoke(app, ["inspect", str(tmp_path / "missing")])
    assert res.exit_code == 1 and "dataset folder not found" in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["inspect", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "cannot tell which dataset layout" in res.output


def test_inspect_generic_image_folder_with_palette(tmp_path: Path) -> None:
    from terraseg.datasets import GenericWriter
    from terraseg.frame import Frame

    rng = np.random.default_rng(1)
    with GenericWriter(tmp_path / "g", ontology="traversability") as w:
        for split, n in (("train", 3), ("val", 1)):
            for i in range(n):
                m = np.full((8, 8), 6, np.uint8)  # stable_terrain
                m[:2] = 7                         # sky
                m[7, :4] = 1                      # water
                w.write(Frame(f"{split}{i}", image=rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), image_labels=m,
                              ontology="traversability"), split=split, stem=f"f{i}")
    out = tmp_path / "s"
    res = runner.invoke(app, ["inspect", str(tmp_path / "g"), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "train 3, val 1" in res.output
    data = json.loads((out / "class_stats_image.json").read_text())
    assert data["counts"] == {"void": 0, "water": 16, "obstacle": 0, "nondrivable_vegetation": 0,
                              "drivable_vegetation": 0, "unstable_terrain": 0, "stable_terrain": 176, "sky": 64}
    assert data["splits"]["val"]["counts"]["sky"] == 16
