"""``terraseg pseudo-label`` end to end on a tiny simulated target: per-frame files with the scan
indices, the median rule recomputed from the stored confidences, per-class counts in the table,
summary.json and classes.csv; bad inputs (a camera checkpoint, a missing dataset, a used --out)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from terraseg.cli import app

runner = CliRunner()


def tiny_fusion_recipe(root: Path, out: Path, name: str = "src", steps: int = 1) -> dict:
    """A cross-modal recipe small enough for tests (also used by tests/test_adapt_run.py)."""
    return {
        "task": "fusion", "name": name, "output": str(out), "seed": 0,
        "data": {"root": str(root), "kind": "sim", "batch_size": 1, "val_batch_size": 1, "cache": True,
                 "max_points": 512},
        "model": {"net2d": {"arch": "litefpn", "encoder": "tu-mobilenetv3_small_100", "options": {"channels": 16}},
                  "net3d": {"arch": "randlanet", "preset": "small", "in_channels": 4,
                            "options": {"input_norm": True, "dropout": 0.0}}},
        "loss": [{"name": "ce"}],
        "augment": {"image": {"scale": [1.0, 1.0], "crop": None, "photometric": False}, "points": {"enabled": False}},
        "optim": {"name": "adam", "lr": 0.01},
        "trainer": {"max_steps": steps, "max_epochs": None, "val_every_steps": steps, "log_every": 1},
    }


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def source(one_thread: object, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(simulated paired dataset, a source checkpoint trained one step on it)."""
    from terraseg.sim.dataset import simulate_dataset
    from terraseg.training.config import TrainConfig
    from terraseg.training.engine import train

    root = tmp_path_factory.mktemp("plsim")
    simulate_dataset(root / "sim", frames=5, seed=11, camera="tiny", lidar="small", progress=False,
                     splits={"train": 0.6, "val": 0.4})
    res = train(TrainConfig.from_dict(tiny_fusion_recipe(root / "sim", root / "runs")), progress=False)
    assert res.last_checkpoint is not None
    return root / "sim", res.last_checkpoint


def test_pseudo_label_cli_writes_frames_counts_and_the_median_rule(source: tuple[Path, Path], tmp_path: Path) -> None:
    from terraseg.active import PseudoLabels, lower_median
    from terraseg.datasets import open_dataset

    data, ckpt = source
    out = tmp_path / "pl"
    r = runner.invoke(app, ["pseudo-label", str(ckpt), "--data", str(data), "--kind", "sim", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "pseudo-labelled 3 frame(s)" in r.output
    ds = open_dataset(data, kind="sim", split="train")
    names = [str(ds[i].frame_id) for i in range(len(ds))]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == names and summary["cap"] == 0.9
    loaded = {n: PseudoLabels.load(out / f"{n}.npz") for n in names}
    for n, pl in loaded.items():
        frame = ds[names.index(n)]
        assert pl.num_points == len(frame.points) and pl.index is not None
        assert len(np.unique(pl.index)) == len(pl.index) == len(pl)  # in-view points, each once
        full = pl.full_labels("ensemble", -1)
        assert full.shape == (len(frame.points),)
        outside = np.setdiff1d(np.arange(len(frame.points)), pl.index)
        assert (full[outside] == -1).all()
    c = summary["num_classes"]
    rows = list(csv.DictReader(open(out / "classes.csv")))
    for m in ("2d", "3d", "ensemble"):
        lab = np.concatenate([loaded[n].modalities[m].label.astype(np.int64) for n in names])
        conf = np.concatenate([loaded[n].modalities[m].confidence for n in names])
        keep = np.concatenate([loaded[n].modalities[m].keep for n in names])
        # the rule, from the stored confidences: keep iff conf >= min(lower median of its class, 0.9)
        thr = np.full(c, np.nan, dtype=np.float32)
        for k in np.unique(lab):
            thr[k] = min(lower_median(conf[lab == k]), np.float32(0.9))
        np.testing.assert_array_equal(keep, conf >= thr[lab])
        st = summary["modalities"][m]
        np.testing.assert_array_equal(st["predicted"], np.bincount(lab, minlength=c))
        np.testing.assert_array_equal(st["kept"], np.bincount(lab[keep], minlength=c))
        mine = {int(r["id"]): r for r in rows if r["modality"] == m}
        assert set(mine) == set(np.unique(lab).tolist())
        for k, row in mine.items():
            assert int(row["kept"]) == int(keep[lab == k].sum())
            assert float(row["threshold"]) == pytest.approx(float(thr[k]), abs=1e-6)
        assert f"{m}: {int(keep.sum())} of {len(lab)} points kept" in " ".join(r.output.split())
    # a non-empty --out is refused without --overwrite; nothing changes
    before = (out / "summary.json").read_text()
    r2 = runner.invoke(app, ["pseudo-label", str(ckpt), "--data", str(data), "--kind", "sim", "--out", str(out), "-q"])
    assert r2.exit_code == 1 and "exists and is not empty; pass --overwrite" in r2.output
    assert (out / "summary.json").read_text() == before


def test_pseudo_label_bad_inputs_are_one_line(source: tuple[Path, Path], tmp_path: Path) -> None:
    from terraseg.models.image import build_image_model
    from terraseg.models.surgery import save_checkpoint

    data, ckpt = source
    cam = build_image_model("litefpn", "tu-mobilenetv3_small_100", 20, pretrained=False)
    cam_path = save_checkpoint(tmp_path / "camera.pth", cam, spec=cam.spec)  # type: ignore[arg-type]
    cases = [
        ([str(cam_path), "--data", str(data)], "a 'litefpn' checkpoint (one network); pseudo-labels and adaptation need "
                                                "a cross-modal camera + LiDAR checkpoint"),
        ([str(tmp_path / "none.pth"), "--data", str(data)], "checkpoint not found"),
        ([str(ckpt), "--data", str(tmp_path / "nodata")], "target dataset not found"),
        ([str(ckpt), "--data", str(data), "--cap", "1.5"], "cap must lie in (0, 1]"),
    ]
    for args, msg in cases:
        out = tmp_path / "out"
        r = runner.invoke(app, ["pseudo-label", *args, "--kind", "sim", "--out", str(out), "-q"])
        assert r.exit_code == 1, r.output
        text = " ".join(r.output.split())
        assert text.startswith("error:") and msg in text and "Traceback" not in text
        assert not out.exists()


def test_help_of_the_new_commands_has_examples() -> None:
    for sub in ("pseudo-label", "adapt"):
        r = runner.invoke(app, [sub, "--help"])
        assert r.exit_code == 0 and "Example: terraseg" in r.output
