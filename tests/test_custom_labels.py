"""Custom label sets end to end (issue 22): an ontology given as a YAML or palette file works wherever a
built-in one does, users' label maps work everywhere remap is accepted, the cross-dataset built-in maps,
generic folders with masks under another name, colour-mask conversion, the GOOSE challenge aggregation
from the command line, and one clear error for each bad input."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from terraseg.cli import app
from terraseg.datasets import open_dataset, parse_reader_options
from terraseg.errors import ConfigError, DataError
from terraseg.io.labels import read_label_png, write_label_png
from terraseg.metrics import ConfusionMatrix, default_preset, get_preset
from terraseg.ontology import LabelMap, builtin_map_path, get_label_map, get_ontology, list_label_maps

sys.path.insert(0, str(Path(__file__).parent))
from test_scores_presets import GOOSE_TEST_CATEGORIES, GOOSE_TEST_IOU  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()

# A user's own label set: a palette text file, and the same classes as a terraseg ontology YAML with categories.
PALETTE = "# my farm\n0 unlabelled 0 0 0\n1 crop 0 200 0\n2 track 120 120 120\n3 sky 0 0 255\n"
COLOURS = {0: (0, 0, 0), 1: (0, 200, 0), 2: (120, 120, 120), 3: (0, 0, 255)}
FARM_YAML = {"name": "farm", "void": ["unlabelled"], "ignore": ["unlabelled"],
             "classes": [{"id": 0, "name": "unlabelled", "color": "#000000"},
                         {"id": 1, "name": "crop", "color": "#00c800", "category": "ground"},
                         {"id": 2, "name": "track", "color": "#787878", "category": "ground"},
                         {"id": 3, "name": "sky", "color": "#0000ff", "category": "sky"}]}
# a coarser label set and a user's map from the farm classes to it
COARSE = "0 void 0 0 0\n1 ground 100 80 40\n2 sky 0 0 255\n"
FARM_TO_COARSE = {"source": "farm.txt", "target": "coarse.txt",
                  "mapping": {"unlabelled": "void", "crop": "ground", "track": "ground", "sky": "sky"}}


def run(*args: object) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    return res.exit_code, " ".join(res.output.split())  # undo rich's line wrapping


def one_clear_error(code: int, out: str, *needles: str) -> None:
    """Exit 1, one ``error:`` line, no traceback, and the message names what went wrong."""
    assert code == 1, out
    assert out.count("error:") == 1 and "Traceback" not in out, out  # (a progress line may come before it)
    message = out.split("error:", 1)[1]
    for n in needles:
        assert n in message, (n, out)


def farm_ids(rng: np.random.Generator, h: int = 8, w: int = 12) -> np.ndarray:
    ids = np.full((h, w), 2, np.uint8)
    ids[: h // 4] = 3
    ids[h // 4:, : w // 2] = 1
    ids[rng.random((h, w)) < 0.1] = 0
    return ids


def colour(ids: np.ndarray, colours: dict[int, tuple[int, int, int]] = COLOURS) -> np.ndarray:
    rgb = np.zeros((*ids.shape, 3), np.uint8)
    for k, c in colours.items():
        rgb[ids == k] = c
    return rgb


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "farm.txt").write_text(PALETTE)
    (tmp_path / "farm.yaml").write_text(yaml.safe_dump(FARM_YAML))
    (tmp_path / "coarse.txt").write_text(COARSE)
    (tmp_path / "farm_to_coarse.yaml").write_text(yaml.safe_dump(FARM_TO_COARSE))
    return tmp_path


def write_farm_dataset(root: Path, masks_dir: str = "annotations", n: int = 3, colour_masks: bool = True,
                       seed: int = 0) -> list[np.ndarray]:
    """A generic-layout folder whose RGB colour masks sit in ``masks_dir`` (not masks/), palette beside it."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ids = farm_ids(rng)
        out.append(ids)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / masks_dir).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*ids.shape, 3), dtype=np.uint8)).save(root / "images" / f"f{i}.png")
        if colour_masks:
            Image.fromarray(colour(ids)).save(root / masks_dir / f"f{i}.png")
        else:
            write_label_png(root / masks_dir / f"f{i}.png", ids)
    (root / "colormap.txt").write_text(PALETTE)
    return out


# =============================================================================== one ontology resolution
def test_get_ontology_reads_names_ontology_yamls_and_every_palette_format(files: Path) -> None:
    (files / "farm.csv").write_text("id,name,r,g,b\n0,unlabelled,0,0,0\n1,crop,0,200,0\n2,track,120,120,120\n"
                                    "3,sky,0,0,255\n")
    (files / "farm.json").write_text(json.dumps({str(k): {"name": n, "color": list(COLOURS[k])} for k, n in
                                                 enumerate(["unlabelled", "crop", "track", "sky"])}))
    ref = get_ontology(files / "farm.txt")
    for f in ("farm.yaml", "farm.csv", "farm.json"):
        o = get_ontology(str(files / f))
        assert o.same_classes(ref) and [c.color for c in o] == [c.color for c in ref], f
    assert get_ontology(files / "farm.yaml").grouping() == {"ground": [1, 2], "sky": [3]}
    assert ref.ignore_ids == frozenset({0}) and ref.name == "farm"
    assert get_ontology("goose") is get_ontology("goose")  # built-in names are cached, and win over files
    with pytest.raises(ConfigError, match=re.escape(f"{files / 'nope.csv'}: ontology file not found")):
        get_ontology(files / "nope.csv")
    with pytest.raises(ConfigError, match="is a folder, not an ontology file"):
        get_ontology(str(files) + "/")
    with pytest.raises(ConfigError, match=r"farm_to_coarse.yaml: this is a label map \(farm.txt -> coarse.txt\)"):
        get_ontology(files / "farm_to_coarse.yaml")


def test_default_preset_holds_the_ontology_of_a_palette_file(files: Path) -> None:
    p = default_preset(str(files / "farm.txt"))
    assert p.ontology is p.onto and p.ontology.name == "farm"  # the object, never looked up again by name
    cm = p.confusion_matrix().update(np.array([1, 1, 2, 3, 0]), np.array([1, 2, 2, 3, 0]))
    r = p.evaluate(cm)
    assert r.scores.class_names == ["crop", "track", "sky"]  # unlabelled is the palette's ignore class
    assert r.fine_miou == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    yaml_preset = get_preset(None, str(files / "farm.yaml"))
    assert yaml_preset.evaluate(yaml_preset.confusion_matrix().update(np.array([1, 2]), np.array([2, 1]))) \
        .category_scores.iou_of("ground") == 1.0


def test_builtin_preset_fits_a_palette_file_of_its_ontology(shared_data: Path, files: Path) -> None:
    csv_goose = shared_data / "goose" / "challenge_label_mapping.csv"
    p = get_preset("goose-challenge", str(csv_goose))  # named after the file, same ids and names as goose
    assert p.ontology.name == "goose" and p.grouping == "goose-11"
    with pytest.raises(ConfigError, match="preset 'goose-challenge' is for ontology 'goose', not 'farm'"):
        get_preset("goose-challenge", str(files / "farm.txt"))


def _farm_eval_folders(root: Path, n: int = 3) -> tuple[Path, Path, ConfusionMatrix]:
    rng = np.random.default_rng(3)
    ref = ConfusionMatrix.for_ontology(get_ontology(root / "farm.txt"))
    for i in range(n):
        gt = farm_ids(rng)
        pred = gt.copy()
        pred[rng.random(gt.shape) < 0.25] = 2
        write_label_png(root / "pred" / f"f{i}.png", pred)
        Image.fromarray(colour(gt)).save((root / "gt").mkdir(parents=True, exist_ok=True) or root / "gt" / f"f{i}.png")
        ref.update(pred, gt)
    return root / "pred", root / "gt", ref


def test_eval_masks_takes_yaml_and_palette_ontologies(files: Path) -> None:
    pred, gt, ref = _farm_eval_folders(files)
    expected = default_preset(get_ontology(files / "farm.txt")).evaluate(ref).summary()
    for onto in ("farm.txt", "farm.yaml"):
        code, out = run("eval-masks", pred, gt, "--ontology", files / onto, "--gt-color", "--out", files / onto[5:],
                        "-q")
        assert code == 0, out
        got = json.loads((files / onto[5:] / "metrics.json").read_text())
        assert got["summary"]["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-3)
        assert got["preset"]["ontology"] == "farm"
    assert "category_mIoU" in got["summary"]  # the YAML's categories are scored


def test_report_and_ensemble_take_a_palette_ontology(files: Path) -> None:
    pred, gt, _ = _farm_eval_folders(files, n=4)
    for i in range(4):  # id ground truth for these commands
        write_label_png(files / "gt_ids" / f"f{i}.png", farm_ids(np.random.default_rng(3 + i)))
        m2 = read_label_png(pred / f"f{i}.png").copy()
        m2[:2] = 3
        write_label_png(files / "m2" / f"f{i}.png", m2)
    code, out = run("report", "--pred", pred, "--gt", files / "gt_ids", "-O", files / "farm.txt", "--out",
                    files / "rep", "-q")
    assert code == 0, out
    assert (files / "rep" / "report.html").is_file() and "mIoU" in out
    code, out = run("ensemble", "tune", "--m1", pred, "--m2", files / "m2", "--gt", files / "gt_ids", "-O",
                    files / "farm.txt", "--out", files / "rules.json", "--min-pixels", "1", "--kfold", "2", "-q")
    assert code == 0, out
    assert json.loads((files / "rules.json").read_text())["ontology"] == "farm"
    code, out = run("ensemble", "vote", "-i", pred, "-i", files / "m2", "-i", pred, "--out", files / "vote",
                    "-O", files / "farm.txt", "-q")
    assert code == 0, out


# =============================================================================== label maps
def test_a_users_map_file_names_file_ontologies_relative_to_itself(files: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path.parent)  # relative names in the map are found next to the map file
    m = LabelMap.from_yaml(files / "farm_to_coarse.yaml")
    assert (m.source.name, m.target.name) == ("farm", "coarse")
    np.testing.assert_array_equal(m(np.array([0, 1, 2, 3])), [0, 1, 1, 2])
    # the caller's ontology (a dataset's palette) may be named by its name in the map
    farm = get_ontology(files / "farm.txt")
    d = {**FARM_TO_COARSE, "source": "farm"}
    (files / "by_name.yaml").write_text(yaml.safe_dump(d))
    assert get_label_map(files / "by_name.yaml", source=farm).source is farm
    with pytest.raises(ConfigError, match="the map's source is ontology 'farm' but the labels are in ontology 'coarse'"):
        get_label_map(files / "farm_to_coarse.yaml", source=get_ontology(files / "coarse.txt"))


def test_remap_map_file_in_open_dataset_and_recipes(files: Path) -> None:
    ds_root = files / "ds"
    ids = write_farm_dataset(ds_root, masks_dir="masks")
    ds = open_dataset(ds_root, kind="generic", remap=str(files / "farm_to_coarse.yaml"), palette=ds_root / "colormap.txt")
    assert ds.ontology.name == "coarse"
    np.testing.assert_array_equal(ds[0].image_labels, np.array([0, 1, 1, 2])[ids[0]])
    from terraseg.training.config import TrainConfig
    from terraseg.training.engine import _open

    cfg = TrainConfig.from_dict({"task": "image", "name": "x", "output": str(files / "runs"),
                                 "data": {"root": str(ds_root), "kind": "generic",
                                          "remap": str(files / "farm_to_coarse.yaml"),
                                          "options": {"palette": "colormap.txt"}},  # found in the dataset folder
                                 "model": {"arch": "fpn", "encoder": "resnet18"}})
    frames = _open(cfg, "all")
    assert frames.ontology.name == "coarse" and frames[2].image_labels.max() <= 2


def test_get_label_map_forms_and_chains(shared_data: Path) -> None:
    assert get_label_map("semantickitti->rellis3d") .target.name == "rellis3d"
    assert repr(get_label_map("traversability", source="goose")) == "LabelMap(goose -> traversability)"
    # raw SemanticKITTI ids to RELLIS-3D: the learning map, then SemanticKITTI -> RELLIS-3D
    chain = get_label_map("rellis3d", source="semantickitti-raw")
    both = LabelMap.builtin("semantickitti-raw", "semantickitti").compose(LabelMap.builtin("semantickitti", "rellis3d"))
    np.testing.assert_array_equal(chain.lut, both.lut)
    from terraseg.io.scans import read_label

    raw, _ = read_label(shared_data / "spvnas" / "000000.label")
    out = chain(raw)
    kitti = LabelMap.builtin("semantickitti-raw", "semantickitti")(raw)
    r = get_ontology("rellis3d")
    assert (out == r.id_of("bush")).sum() == (kitti == get_ontology("semantickitti").id_of("vegetation")).sum() > 1000
    assert get_label_map("goose", source="goose").target.name == "goose"  # identity
    with pytest.raises(ConfigError, match="several chains of built-in maps lead from 'sim' to 'semantickitti'"):
        get_label_map("semantickitti", source="sim")
    with pytest.raises(ConfigError, match="a bare target ontology needs the labels' ontology"):
        get_label_map("rellis3d")


CROSS = [("goose", "rellis3d"), ("rellis3d", "goose"), ("goose", "semantickitti"), ("semantickitti", "goose"),
         ("rellis3d", "semantickitti"), ("semantickitti", "rellis3d")]


def test_cross_dataset_maps_are_built_in() -> None:
    assert set(CROSS) <= set(list_label_maps())


@pytest.mark.parametrize(("src", "dst", "cls", "expected"), [
    ("goose", "rellis3d", "high_grass", "grass"), ("goose", "rellis3d", "gravel", "dirt"),
    ("goose", "rellis3d", "rock", "rubble"), ("goose", "rellis3d", "ego_vehicle", "void"),
    ("goose", "rellis3d", "barrel", "object"), ("goose", "rellis3d", "road_block", "barrier"),
    ("rellis3d", "goose", "mud", "soil"), ("rellis3d", "goose", "puddle", "water"),
    ("goose", "semantickitti", "curb", "sidewalk"), ("goose", "semantickitti", "tree_trunk", "trunk"),
    ("goose", "semantickitti", "bus", "other_vehicle"), ("goose", "semantickitti", "sky", "unlabeled"),
    ("semantickitti", "goose", "bicyclist", "rider"), ("rellis3d", "semantickitti", "grass", "terrain"),
    ("semantickitti", "rellis3d", "trunk", "tree"), ("semantickitti", "rellis3d", "traffic_sign", "object"),
])
def test_cross_dataset_map_spot_checks(src: str, dst: str, cls: str, expected: str) -> None:
    m = LabelMap.builtin(src, dst)
    assert m.target.name_of(int(m.lut[m.source.id_of(cls)])) == expected


def test_semantickitti_to_rellis3d_is_the_map_docs_training_describes() -> None:
    text = (REPO / "docs" / "training.md").read_text()
    block = re.search(r"```yaml\n(source: semantickitti\ntarget: rellis3d\n.*?)```", text, re.S)
    assert block is not None
    documented = yaml.safe_load(block.group(1))
    m = LabelMap.builtin("semantickitti", "rellis3d")
    assert dict(m.pairs()) == documented["mapping"]
    assert len({t for _, t in m.pairs()}) == 13  # "initialises 13 of the 20 RELLIS-3D classes"


def test_every_cross_dataset_decision_is_written_down_in_the_map_and_the_docs() -> None:
    docs = (REPO / "docs" / "ontologies.md").read_text()
    tables: dict[str, list[list[str]]] = {}
    for src in ("goose", "rellis3d", "semantickitti"):
        rows = re.findall(rf"^\| ({'|'.join(get_ontology(src).names)}) \| (.+) \|$", docs.split(f"From `{src}`")[1]
                          .split("\n\n")[1], re.M)
        tables[src] = [[name, *[c.strip() for c in rest.split(" | ")]] for name, rest in rows]
        assert [r[0] for r in tables[src]] == get_ontology(src).names, src
    for src, dst in CROSS:
        path = builtin_map_path(src, dst)
        lines = [ln for ln in path.read_text().splitlines() if re.match(r"^  \w+: \w+", ln)]
        assert len(lines) == len(get_ontology(src)), path
        assert all(re.search(r"#\s*\S.{8,}", ln) for ln in lines), f"{path}: every class decision needs a comment"
        m = LabelMap.builtin(src, dst)
        others = [o for o in ("goose", "rellis3d", "semantickitti") if o != src]
        col = 1 + 2 * others.index(dst)
        for row, (s, t) in zip(tables[src], m.pairs()):
            assert row[col] == t, (src, dst, s, row[col], t)
            comment = next(ln for ln in lines if ln.strip().startswith(f"{s}:")).split("#", 1)[1].strip()
            assert row[col + 1] == comment, (src, dst, s)


def test_inspect_remaps_with_a_map_file(files: Path) -> None:
    ds = files / "ds"
    ids = write_farm_dataset(ds, masks_dir="masks")
    code, out = run("inspect", ds, "--kind", "generic", "--palette", ds / "colormap.txt", "--remap",
                    files / "farm_to_coarse.yaml", "--out", files / "st", "-q")
    assert code == 0, out
    counts = json.loads((files / "st" / "class_stats_image.json").read_text())["counts"]
    all_ids = np.concatenate([i.ravel() for i in ids])
    assert counts == {"void": int((all_ids == 0).sum()), "ground": int(np.isin(all_ids, [1, 2]).sum()),
                      "sky": int((all_ids == 3).sum())}


def test_eval_masks_remaps_both_sides_and_predictions_only(files: Path) -> None:
    pred, gt, ref = _farm_eval_folders(files)
    code, out = run("eval-masks", pred, gt, "-O", files / "farm.txt", "--gt-color", "--remap",
                    files / "farm_to_coarse.yaml", "--out", files / "e1", "-q")
    assert code == 0, out
    lut = np.array([0, 1, 1, 2])
    coarse = ConfusionMatrix.for_ontology(get_ontology(files / "coarse.txt"))
    for p in sorted(pred.glob("*.png")):
        g = np.asarray(Image.open(gt / p.name))
        ids = np.zeros(g.shape[:2], np.int64)
        for k, c in COLOURS.items():
            ids[(g == c).all(-1)] = k
        coarse.update(lut[read_label_png(p)], lut[ids])
    np.testing.assert_array_equal(ConfusionMatrix.load(files / "e1" / "confusion.npz").matrix, coarse.matrix)
    # predictions of a 'farm' model against coarse ground truth
    for p in sorted(pred.glob("*.png")):
        write_label_png(files / "gt_coarse" / p.name, coarse_gt := lut[farm_ids(np.random.default_rng(1))])
    code, out = run("eval-masks", pred, files / "gt_coarse", "-O", files / "coarse.txt", "--pred-remap",
                    files / "farm_to_coarse.yaml", "--out", files / "e2", "-q")
    assert code == 0, out
    assert coarse_gt.max() == 2 and json.loads((files / "e2" / "metrics.json").read_text())["preset"]["ontology"] == \
        "coarse"


# =============================================================================== generic folders
def test_masks_in_another_folder_are_named_and_masks_dir_reads_them(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    ids = write_farm_dataset(tmp_path, masks_dir="annotations")
    with caplog.at_level(logging.WARNING, logger="terraseg.datasets.generic"):
        ds = open_dataset(tmp_path, kind="generic")
    assert ds[0].image_labels is None
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "3 images are read WITHOUT labels" in msg and "masks folder masks/ does not exist" in msg
    assert "folders found: annotations/, images/" in msg and "masks_dir=NAME" in msg
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="terraseg.datasets.generic"):
        ds = open_dataset(tmp_path, kind="generic", masks_dir="annotations", palette="colormap.txt")
    assert not caplog.records
    np.testing.assert_array_equal(ds[1].image_labels, ids[1])
    assert ds.ontology.name == "colormap"


def test_no_warning_for_a_plain_image_folder_or_allow_unlabeled(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    write_farm_dataset(tmp_path, masks_dir="annotations")
    with caplog.at_level(logging.WARNING, logger="terraseg.datasets.generic"):
        open_dataset(tmp_path, kind="generic", allow_unlabeled=True)
        (tmp_path / "annotations").rename(tmp_path / ".hidden")
        open_dataset(tmp_path, kind="generic")
    assert not caplog.records


def test_reader_options_from_the_command_line() -> None:
    assert parse_reader_options(["masks_dir=annotations", "unknown_color=255", "allow_unlabeled=true",
                                 "mask_suffix=_mask", "remap=maps/a.yaml", "palette="]) == {
        "masks_dir": "annotations", "unknown_color": 255, "allow_unlabeled": True, "mask_suffix": "_mask",
        "remap": "maps/a.yaml", "palette": ""}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_reader_options(["masks_dir"])


def test_palette_and_folder_options_reach_inspect(tmp_path: Path) -> None:
    ids = write_farm_dataset(tmp_path / "ds", masks_dir="annotations")
    code, out = run("inspect", tmp_path / "ds", "--kind", "generic", "--data-option", "masks_dir=annotations",
                    "--palette", tmp_path / "ds" / "colormap.txt", "--out", tmp_path / "st", "-q")
    assert code == 0, out
    counts = json.loads((tmp_path / "st" / "class_stats_image.json").read_text())["counts"]
    assert counts["crop"] == sum(int((i == 1).sum()) for i in ids)
    code, out = run("inspect", tmp_path / "ds", "--kind", "generic", "--data-option", "mask_dir=annotations")
    one_clear_error(code, out, "dataset kind 'generic' has no option mask_dir", "masks_dir")


# =============================================================================== convert-masks
def test_convert_masks_writes_id_masks_with_the_relative_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ids = {f"a/f{i}": farm_ids(rng) for i in range(3)}
    for k, v in ids.items():
        (tmp_path / "col" / k).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(colour(v)).save(tmp_path / "col" / f"{k}.png")
    (tmp_path / "farm.txt").write_text(PALETTE)
    code, out = run("convert-masks", tmp_path / "col", "--palette", tmp_path / "farm.txt", "--out", tmp_path / "ids")
    assert code == 0, out
    assert "converted 3 colour mask(s) with palette 'farm' (4 classes)" in out
    for k, v in ids.items():
        got = read_label_png(tmp_path / "ids" / f"{k}.png")
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, v)
    assert not list(tmp_path.glob(".ids.*"))  # no temporary folder left


def test_convert_masks_unknown_colours_error_or_fill(tmp_path: Path) -> None:
    (tmp_path / "farm.txt").write_text(PALETTE)
    rgb = colour(farm_ids(np.random.default_rng(0)))
    rgb[0, :5] = (255, 0, 255)
    rgb[1, :2] = (1, 2, 3)
    Image.fromarray(rgb).save((tmp_path / "col").mkdir() or tmp_path / "col" / "x.png")
    Image.fromarray(colour(farm_ids(np.random.default_rng(1)))).save(tmp_path / "col" / "a.png")
    code, out = run("convert-masks", tmp_path / "col", "-p", tmp_path / "farm.txt", "-o", tmp_path / "ids")
    one_clear_error(code, out, "x.png: 7 pixels have colours that are not in ontology 'farm'", "#ff00ff (5 px)",
                    "#010203 (2 px)", "--unknown-id")
    assert not (tmp_path / "ids").exists() and not list(tmp_path.glob(".ids.*")), "all or nothing"
    code, out = run("convert-masks", tmp_path / "col", "-p", tmp_path / "farm.txt", "-o", tmp_path / "ids",
                    "--unknown-id", "255", "-q")
    assert code == 0, out
    assert "7 pixel(s) of colours outside the palette were mapped to 255" in out
    got = read_label_png(tmp_path / "ids" / "x.png")
    assert (got == 255).sum() == 7 and got[0, 0] == 255
    code, out = run("convert-masks", tmp_path / "col", "-p", tmp_path / "farm.txt", "-o", tmp_path / "ids")
    one_clear_error(code, out, "the output folder exists and is not empty")
    code, out = run("convert-masks", tmp_path / "ids", "-p", tmp_path / "farm.txt", "-o", tmp_path / "again")
    one_clear_error(code, out, "single-channel image (mode L): already an id mask")


# =============================================================================== aggregate
def _goose_tables(tmp_path: Path) -> tuple[Path, Path]:
    goose = get_ontology("goose")
    classes = tmp_path / "goose_test_iou.csv"
    classes.write_text("id,class,IoU (%)\n" + "".join(
        f"{i},{goose.name_of(i)},{'-' if v is None else f'{v:.2f}'}\n" for i, v in enumerate(GOOSE_TEST_IOU)))
    cats = tmp_path / "goose_test_categories.csv"
    cats.write_text("category,IoU (%)\n" + "".join(f"{k},{v:.2f}\n" for k, v in GOOSE_TEST_CATEGORIES.items()))
    return classes, cats


def test_aggregate_reproduces_the_goose_challenge_figures(tmp_path: Path) -> None:
    classes, cats = _goose_tables(tmp_path)
    code, out = run("aggregate", classes, cats, "--preset", "goose-challenge", "--json", tmp_path / "agg.json")
    assert code == 0, out
    assert "mIoU over 58 class(es)" in out
    assert "mIoU fine: 55.23 %" in out and "mIoU category: 72.36 %" in out and "mIoU composite: 63.80 %" in out
    assert "6 absent class(es) left out of the mean: bikeway, pedestrian_crossing, tunnel" in out
    doc = json.loads((tmp_path / "agg.json").read_text())
    assert doc["summary"] == {"mIoU": pytest.approx(55.2322, abs=1e-4), "category_mIoU": pytest.approx(72.3636, abs=1e-4),
                              "composite_mIoU": pytest.approx(63.7979, abs=1e-4)}


def test_aggregate_reads_the_published_tables_as_printed(reference_dir: Path) -> None:
    doc = reference_dir / "004_a90aa16824868e43.txt"  # both tables, 0.00 for absent classes, text around them
    code, out = run("aggregate", doc, "--preset", "goose-challenge", "--absent", "7,9,44", "--absent",
                    "outlier,62,63", "-q")
    assert code == 0, out
    assert "mIoU fine: 55.23 %" in out and "mIoU category: 72.36 %" in out and "mIoU composite: 63.80 %" in out


def test_aggregate_of_eval_masks_outputs_equals_eval_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    classes = np.array([0, 16, 23, 50, 53, 38, 39])
    for i in range(3):
        gt = classes[rng.integers(0, len(classes), (6, 8))].repeat(4, 0).repeat(4, 1).astype(np.uint8)
        pred = gt.copy()
        pred[rng.random(gt.shape) < 0.3] = 50
        write_label_png(tmp_path / "gt" / f"f{i}.png", gt)
        write_label_png(tmp_path / "pred" / f"f{i}.png", pred)
    ev = tmp_path / "ev"
    code, out = run("eval-masks", tmp_path / "pred", tmp_path / "gt", "-O", "goose", "--preset", "goose-challenge",
                    "--out", ev, "-q")
    assert code == 0, out
    summary = json.loads((ev / "metrics.json").read_text())["summary"]
    for inputs in ([ev / "metrics.json"], [ev / "confusion.npz"], [ev / "report.md"]):
        code, out = run("aggregate", *inputs, "--preset", "goose-challenge", "--allow-missing", "--json",
                        tmp_path / "a.json", "-q")
        assert code == 0, (inputs, out)
        got = json.loads((tmp_path / "a.json").read_text())["summary"]
        for k in ("mIoU", "category_mIoU", "composite_mIoU"):
            assert got[k] == pytest.approx(summary[k], abs=0.01 if inputs[0].suffix == ".md" else 1e-3), (inputs, k)
    # the saved matrix re-scored under another preset equals evaluating with that preset
    code, out = run("aggregate", ev / "confusion.npz", "--preset", "goose-challenge-reduced", "--json",
                    tmp_path / "r.json", "-q")
    assert code == 0, out
    direct = get_preset("goose-challenge-reduced")
    cm = direct.confusion_matrix()
    for i in range(3):
        cm.update(read_label_png(tmp_path / "pred" / f"f{i}.png"), read_label_png(tmp_path / "gt" / f"f{i}.png"))
    want = direct.evaluate(cm).summary()
    got = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert got["mIoU"] == pytest.approx(want["mIoU"], abs=1e-3)
    assert got["composite_mIoU"] == pytest.approx(want["composite_mIoU"], abs=1e-3)


def test_aggregate_skips_a_mean_row_and_reads_names_without_ids(tmp_path: Path) -> None:
    goose = get_ontology("goose")
    t = tmp_path / "t.md"
    t.write_text("Results\n\n| Class | IoU (%) |\n|---|---|\n" + "".join(
        f"| {goose.name_of(i).replace('_', ' ').title()} | {'-' if v is None else v} |\n"
        for i, v in enumerate(GOOSE_TEST_IOU)) + "| **mean** | **55.24** |\n")
    code, out = run("aggregate", t, "--preset", "goose-challenge", "-q")
    assert code == 0, out
    assert "mIoU fine: 55.23 %" in out and "mIoU category: -" in out


def test_aggregate_table_errors_name_the_row(tmp_path: Path) -> None:
    classes, cats = _goose_tables(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text(classes.read_text().replace("16,forest,", "16,forrest,"))
    code, out = run("aggregate", bad, "--preset", "goose-challenge")
    one_clear_error(code, out, "bad.csv, line 18: ontology 'goose' has no class 'forrest'", "did you mean 'forest'")
    bad.write_text("\n".join(classes.read_text().splitlines()[:-1]) + "\n")
    code, out = run("aggregate", bad, cats, "--preset", "goose-challenge")
    one_clear_error(code, out, "1 class(es) scored by preset 'goose-challenge' are missing from the table: 63 "
                               "military_vehicle")
    code, out = run("aggregate", classes, classes, "--preset", "goose-challenge")
    one_clear_error(code, out, "class 'undefined' given twice")
    code, out = run("aggregate", classes)
    one_clear_error(code, out, "the default preset needs --ontology")


# =============================================================================== bad inputs, one clear error each
@pytest.fixture
def bad(tmp_path: Path) -> Path:
    (tmp_path / "garbage.txt").write_text("this is not a palette\n")
    (tmp_path / "farm.txt").write_text(PALETTE)
    (tmp_path / "coarse.txt").write_text(COARSE)
    d = dict(FARM_TO_COARSE)
    d["mapping"] = {**FARM_TO_COARSE["mapping"], "weeds": "ground"}
    (tmp_path / "unknown_classes.yaml").write_text(yaml.safe_dump(d))
    write_farm_dataset(tmp_path / "ds", masks_dir="masks", colour_masks=False)
    for i in range(3):
        write_label_png(tmp_path / "pred" / f"f{i}.png", farm_ids(np.random.default_rng(i)))
    return tmp_path


@pytest.mark.parametrize("command", ["eval-masks", "inspect", "convert-masks", "aggregate", "report"])
def test_garbage_palette(bad: Path, command: str) -> None:
    pal = bad / "garbage.txt"
    args = {"eval-masks": ["eval-masks", bad / "pred", bad / "ds" / "masks", "-O", pal],
            "inspect": ["inspect", bad / "ds", "--kind", "generic", "--palette", pal],
            "convert-masks": ["convert-masks", bad / "ds" / "masks", "-p", pal, "-o", bad / "out"],
            "aggregate": ["aggregate", bad / "x.csv", "-O", pal],
            "report": ["report", "--pred", bad / "pred", "--gt", bad / "ds" / "masks", "-O", pal, "--out", bad / "r"]}
    code, out = run(*args[command])
    one_clear_error(code, out, "garbage.txt, line 1: class id must be an integer, got 'this' (expected lines 'id name r g b'")
    assert not (bad / "out").exists() and not (bad / "r").exists()


@pytest.mark.parametrize("command", ["eval-masks", "inspect"])
def test_map_naming_unknown_classes(bad: Path, command: str) -> None:
    m = bad / "unknown_classes.yaml"
    args = {"eval-masks": ["eval-masks", bad / "pred", bad / "ds" / "masks", "-O", bad / "farm.txt", "--remap", m],
            "inspect": ["inspect", bad / "ds", "--kind", "generic", "--ontology", bad / "farm.txt", "--remap", m]}
    code, out = run(*args[command])
    one_clear_error(code, out, "unknown_classes.yaml: source ontology 'farm' has no classes ['weeds']")


@pytest.mark.parametrize("command", ["eval-masks", "inspect", "convert-masks"])
def test_mask_folder_that_does_not_exist(bad: Path, command: str) -> None:
    args = {"eval-masks": ["eval-masks", bad / "pred", bad / "ds" / "labels", "-O", bad / "farm.txt"],
            "inspect": ["inspect", bad / "ds", "--kind", "generic", "--data-option", "masks_dir=labels"],
            "convert-masks": ["convert-masks", bad / "ds" / "labels", "-p", bad / "farm.txt", "-o", bad / "out"]}
    code, out = run(*args[command])
    one_clear_error(code, out, str(bad / "ds" / "labels"))
    assert re.search(r"(folder not found|does not exist)", out)


def test_library_errors_are_terraseg_errors(bad: Path) -> None:
    with pytest.raises(DataError, match="masks folder not found"):
        open_dataset(bad / "ds", kind="generic", masks_dir="labels")
    with pytest.raises(ConfigError, match="has no classes \\['weeds'\\]"):
        open_dataset(bad / "ds", kind="generic", ontology=bad / "farm.txt", remap=bad / "unknown_classes.yaml")


def test_builtin_map_by_name_initialises_class_rows() -> None:
    """``model.label_map: semantickitti->rellis3d`` (the fine-tuning recipe's map, by name)."""
    import torch
    from torch import nn

    from terraseg.models.surgery import load_weights

    class Head(nn.Module):
        def __init__(self, k: int) -> None:
            super().__init__()
            self.head = nn.Conv2d(4, k, 1)
            self.class_heads = {"head": 0}

    torch.manual_seed(0)
    src, dst = Head(20), Head(20)
    rep = load_weights(dst, src.state_dict(), source_ontology="semantickitti", target_ontology="rellis3d",
                       label_map="semantickitti->rellis3d")
    k, r = get_ontology("semantickitti"), get_ontology("rellis3d")
    vehicles = [k.id_of(n) for n in ("car", "bicycle", "motorcycle", "truck", "other_vehicle")]
    assert torch.allclose(dst.head.weight[r.id_of("vehicle")], src.head.weight[vehicles].mean(0))
    assert torch.equal(dst.head.weight[r.id_of("tree")], src.head.weight[k.id_of("trunk")])
    assert len(rep.new_classes) == 7  # 13 of the 20 RELLIS-3D classes have a source


def test_ontology_show_and_maps_take_a_users_files(files: Path) -> None:
    code, out = run("ontology", "show", files / "farm.txt")
    assert code == 0 and "farm: palette farm.txt" in out and "void, ignored" in out, out
    code, out = run("ontology", "maps", files / "farm_to_coarse.yaml")
    assert code == 0 and "farm -> coarse" in out and "crop" in out and "ground" in out, out
    d = dict(FARM_TO_COARSE, mapping={k: v for k, v in FARM_TO_COARSE["mapping"].items() if k != "sky"})
    (files / "partial.yaml").write_text(yaml.safe_dump(d))
    code, out = run("ontology", "maps", files / "partial.yaml")
    one_clear_error(code, out, "partial.yaml: source classes neither mapped nor dropped: ['sky']")


def test_a_recipes_ontology_reaches_only_the_generic_reader(tmp_path: Path) -> None:
    from test_inspect import make_kitti

    ids = make_kitti(tmp_path / "kitti")  # raw ids; the SemanticKITTI reader's own 'ontology' option means raw space
    ds = open_dataset(tmp_path / "kitti", split="train", labels_ontology="semantickitti")
    assert ds.ontology.name == "semantickitti"
    np.testing.assert_array_equal(np.concatenate([f.point_labels for f in ds]), ids["00"])
    write_farm_dataset(tmp_path / "g", masks_dir="masks")
    (tmp_path / "g" / "colormap.txt").unlink()  # the folder names no ontology: the caller's decodes the colours
    g = open_dataset(tmp_path / "g", kind="generic", labels_ontology=_palette_file(tmp_path))
    assert g.ontology.name == "farm" and g[0].image_labels.max() <= 3


def _palette_file(tmp_path: Path) -> Path:
    (tmp_path / "farm.txt").write_text(PALETTE)
    return tmp_path / "farm.txt"
