"""A user's own label set through training and ``terraseg eval`` (issue 22): a palette-file ontology, RGB colour
masks in ``annotations/``, validation during training, evaluation of the checkpoint from its recipe, and
evaluation on a dataset labelled in a finer palette through a user's label map (``--data-option remap=``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from terraseg.cli import app

runner = CliRunner()

FARM = "0 unlabelled 0 0 0\n1 crop 0 200 0\n2 track 120 120 120\n3 sky 0 0 255\n"
FARM_COLOURS = {0: (0, 0, 0), 1: (0, 200, 0), 2: (120, 120, 120), 3: (0, 0, 255)}
# a finer label set of another team (crop split in two), and their map to ours
FINE = "0 void 0 0 0\n1 wheat 220 200 0\n2 maize 0 160 0\n3 track 120 120 120\n4 sky 0 0 255\n"
FINE_COLOURS = {0: (0, 0, 0), 1: (220, 200, 0), 2: (0, 160, 0), 3: (120, 120, 120), 4: (0, 0, 255)}
FINE_TO_FARM = {"source": "fine.txt", "target": "farm.txt",
                "mapping": {"void": "unlabelled", "wheat": "crop", "maize": "crop", "track": "track", "sky": "sky"}}


def run(*args: object) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, " ".join(res.output.split())


def scene(rng: np.random.Generator, h: int = 32, w: int = 48) -> np.ndarray:
    """Fine ids: sky on top, wheat left, maize middle, track right."""
    ids = np.full((h, w), 3, np.uint8)
    ids[: h // 3] = 4
    ids[h // 3:, : w // 3] = 1
    ids[h // 3:, w // 3: 2 * w // 3] = 2
    ids[rng.random((h, w)) < 0.03] = 0
    return ids


def write_dataset(root: Path, fine: bool, seed: int) -> None:
    """images/{train,val} and annotations/{train,val} colour masks (farm or fine colours)."""
    rng = np.random.default_rng(seed)
    to_farm = np.array([0, 1, 1, 2, 3])
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            f = scene(rng)
            ids, colours = (f, FINE_COLOURS) if fine else (to_farm[f], FARM_COLOURS)
            image = np.zeros((*f.shape, 3), np.uint8)
            rgb = np.zeros((*f.shape, 3), np.uint8)
            for k, c in FINE_COLOURS.items():
                image[f == k] = np.array(c) // 2 + 50  # camera colours follow the (fine) classes
            for k, c in colours.items():
                rgb[ids == k] = c
            image = np.clip(image.astype(int) + rng.integers(-8, 8, image.shape), 0, 255).astype(np.uint8)
            for sub, arr in (("images", image), ("annotations", rgb)):
                (root / sub / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / sub / split / f"f{i}.png")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from terraseg.training.config import TrainConfig
    from terraseg.training.engine import train

    d = tmp_path_factory.mktemp("farm")
    (d / "farm.txt").write_text(FARM)
    (d / "fine.txt").write_text(FINE)
    (d / "fine_to_farm.yaml").write_text(yaml.safe_dump(FINE_TO_FARM))
    write_dataset(d / "ours", fine=False, seed=0)
    write_dataset(d / "theirs", fine=True, seed=1)
    cfg = TrainConfig.from_dict({
        "task": "image", "name": "farm", "output": str(d / "runs"), "seed": 0,
        "data": {"root": str(d / "ours"), "kind": "generic", "ontology": str(d / "farm.txt"), "batch_size": 2,
                 "val_batch_size": 2, "options": {"masks_dir": "annotations"}},
        "model": {"arch": "fpn", "encoder": "resnet18", "options": {"decoder_pyramid_channels": 32,
                                                                     "decoder_segmentation_channels": 32}},
        "augment": {"crop": [32, 48], "photometric": False},
        "trainer": {"max_epochs": 1, "log_every": 1}})
    res = train(cfg, progress=False)
    return {"dir": d, "ckpt": res.best_checkpoint, "history": res.run_dir / "history.jsonl"}


def test_training_validates_in_a_palette_ontology(trained: dict[str, Path]) -> None:
    from terraseg.models.surgery import read_checkpoint

    rows = [json.loads(ln) for ln in trained["history"].read_text().splitlines()]
    assert rows and 0.0 <= rows[-1]["val/mIoU"] <= 100.0
    assert {"val/IoU/crop", "val/IoU/track", "val/IoU/sky"} <= set(rows[-1])  # the palette's classes, void ignored
    onto = read_checkpoint(trained["ckpt"]).ontology
    assert onto is not None and onto.name == "farm" and onto.names == ["unlabelled", "crop", "track", "sky"]


def test_eval_of_the_checkpoint_reads_the_recipe_options(trained: dict[str, Path]) -> None:
    out = trained["dir"] / "eval-ours"
    code, text = run("eval", trained["ckpt"], "--split", "val", "--out", out, "-q")
    assert code == 0, text
    m = json.loads((out / "metrics.json").read_text())
    assert m["preset"]["ontology"] == "farm" and set(m["classes"]) == {"crop", "track", "sky"}


def test_eval_on_a_finer_label_set_through_a_users_map(trained: dict[str, Path]) -> None:
    d = trained["dir"]
    common = ["eval", trained["ckpt"], "--data", d / "theirs", "--split", "val", "--data-option", "masks_dir=annotations",
              "--data-option", f"palette={d / 'fine.txt'}", "-q"]
    code, text = run(*common, "--out", d / "eval-theirs", "--data-option", f"remap={d / 'fine_to_farm.yaml'}")
    assert code == 0, text
    theirs = json.loads((d / "eval-theirs" / "metrics.json").read_text())
    assert theirs["preset"]["ontology"] == "farm" and theirs["classes"]["crop"]["gt_count"] > 0
    # without the map the labels are in another ontology: one clear error that says what to give
    code, text = run(*common, "--out", d / "x")
    assert code == 1 and text.count("error:") == 1 and "Traceback" not in text
    assert "the labels are in ontology 'fine' but" in text and "--data-option remap=MAP" in text


@pytest.mark.parametrize(("option", "needle"), [
    ("remap=bad_map.yaml", "source ontology 'fine' has no classes ['barley']"),
    ("masks_dir=labels", "labels: masks folder not found"),
    ("palette=garbage.txt", "garbage.txt, line 1: class id must be an integer"),
    ("mask_dir=annotations", "dataset kind 'generic' has no option mask_dir"),
])
def test_eval_bad_inputs_are_one_clear_error(trained: dict[str, Path], option: str, needle: str) -> None:
    d = trained["dir"]
    (d / "garbage.txt").write_text("not a palette at all\n")
    bad = dict(FINE_TO_FARM, mapping={**FINE_TO_FARM["mapping"], "barley": "crop"})
    (d / "bad_map.yaml").write_text(yaml.safe_dump(bad))
    key, _, value = option.partition("=")
    value = str(d / value) if value.endswith((".yaml", ".txt")) else value
    extra = [] if key == "palette" else ["--data-option", f"palette={d / 'fine.txt'}"]
    code, text = run("eval", trained["ckpt"], "--data", d / "theirs", "--split", "val", "--data-option",
                     f"{key}={value}", *([] if key in ("masks_dir", "mask_dir") else
                                         ["--data-option", "masks_dir=annotations"]), *extra, "--out", d / "bad", "-q")
    assert code == 1 and text.count("error:") == 1 and "Traceback" not in text, text
    assert needle in text, text
    assert not (d / "bad").exists()
