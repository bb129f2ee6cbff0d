"""Query rounds on disk and labelling tasks: resume, export / import round trips, the CLI."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from terraseg.active import (
    FrameContext,
    StrategyOptions,
    collected_labels,
    export_task,
    import_task,
    labelled_masks,
    list_rounds,
    load_round,
    load_round_labels,
    run_query_round,
)
from terraseg.active.task import parse_labelmap, voc_color
from terraseg.cli import app
from terraseg.errors import DataError
from terraseg.io import write_image
from terraseg.ontology import get_ontology

runner = CliRunner()
SIM = get_ontology("sim")
C = SIM.num_classes


def point_frame(name: str, n: int, seed: int, image_path: str | None = None) -> FrameContext:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(C), size=n)
    q = rng.dirichlet(np.ones(C), size=n)
    return FrameContext(name, probs_2d=p, probs_3d=q, feats_2d=rng.normal(size=(n, 4)).astype(np.float32),
                        xyz=rng.uniform(-10, 10, size=(n, 3)).astype(np.float32),
                        pixels=np.stack([rng.integers(0, 64, n), rng.integers(0, 48, n)], 1),
                        image_path=image_path)


def image_frame(name: str, seed: int, image_path: str | None = None) -> FrameContext:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(C), size=(48, 64)).transpose(2, 0, 1)
    return FrameContext.for_image(name, probs, image_path=image_path)


@pytest.fixture
def setup(tmp_path):
    img = np.zeros((48, 64, 3), dtype=np.uint8)
    img[:, :32] = (90, 140, 60)
    img[:, 32:] = (120, 120, 200)
    write_image(tmp_path / "cam_a.png", img)
    write_image(tmp_path / "cam_img.png", img)
    frames = [point_frame("seq/a", 200, 1, str(tmp_path / "cam_a.png")), point_frame("seq/b", 150, 2),
              image_frame("img0", 3, str(tmp_path / "cam_img.png"))]
    return tmp_path, frames


def test_rounds_resume_and_never_requery(setup) -> None:
    tmp, frames = setup
    state = tmp / "state"
    r0 = run_query_round(frames, "entropy", 5, state, ontology="sim")
    assert list_rounds(state) == [0]
    assert [f.budget for f in r0.frames] == [10, 8, 154]  # 5 % of 200, 150 (7.5 -> 8), 3072 (153.6 -> 154)
    back = load_round(state, 0)
    assert back.strategy == "entropy" and back.percent == 5 and back.ontology == "sim" and back.seed == 0
    for a, b in zip(r0.frames, back.frames):
        assert a.name == b.name and a.n == b.n and a.grid_shape == b.grid_shape and a.image == b.image
        assert (a.indices == b.indices).all() and (a.suggested == b.suggested).all()
        assert (a.pixels == b.pixels).all()
    assert (back.frames[0].xyz == frames[0].xyz[back.frames[0].indices]).all()
    # a second round (a process that restarted) excludes everything of round 0
    r1 = run_query_round(frames, "random", 5, state, StrategyOptions(seed=7))
    assert r1.index == 1 and r1.options["seed"] == 7
    for f0, f1 in zip(r0.frames, r1.frames):
        assert not set(f0.indices.tolist()) & set(f1.indices.tolist())
        assert f1.labelled_before == f0.budget
    masks = labelled_masks(state)
    assert int(masks["seq/a"].sum()) == 20 and masks["img0"].shape == (3072,)
    assert r1.labelled_fraction == pytest.approx((20 + 16 + 308) / (200 + 150 + 3072))
    assert labelled_masks(state, upto=0)["seq/a"].sum() == 10
    # rounds are immutable, and a frame that changed size is refused
    from terraseg.active import save_round

    with pytest.raises(DataError, match="round 1 already exists"):
        save_round(state, r1)
    with pytest.raises(DataError, match="201 in-view items now but 200 in earlier rounds"):
        run_query_round([point_frame("seq/a", 201, 1)], "entropy", 5, state)
    assert list_rounds(state) == [0, 1]  # the failed round left nothing behind
    assert not [p for p in state.iterdir() if p.name.startswith(".")]


def fill_points_csv(path, ontology_names: bool, skip_first: bool = False) -> dict[int, int]:
    rows = list(csv.DictReader(path.open()))
    truth = {}
    for k, row in enumerate(rows):
        cid = (int(row["index"]) * 7) % C
        if skip_first and k == 0:
            continue
        row["label"] = SIM.name_of(cid) if ontology_names and k % 2 else str(cid)
        truth[int(row["index"])] = cid
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return truth


def cvat_export_from(task, out_zip, frame_stem: str, rows, cols, ids) -> None:
    """What CVAT gives back: the task's labelmap and class masks with the person's labels painted."""
    labels = json.loads((task / "task.json").read_text())["labels"]
    color_of = {d["id"]: tuple(d["color"]) for d in labels if d["id"] is not None}
    src = task / "cvat"
    mask = np.asarray(Image.open(src / "SegmentationClass" / f"{frame_stem}.png").convert("RGB")).copy()
    for r, c, i in zip(rows, cols, ids):
        mask[r, c] = color_of[i]
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    with zipfile.ZipFile(out_zip, "w") as z:
        z.writestr("labelmap.txt", (src / "labelmap.txt").read_text())
        z.writestr("ImageSets/Segmentation/default.txt", f"{frame_stem}\n")
        z.writestr(f"SegmentationClass/{frame_stem}.png", buf.getvalue())
        z.writestr(f"SegmentationObject/{frame_stem}.png", buf.getvalue())


def test_export_import_round_trip(setup) -> None:
    tmp, frames = setup
    state = tmp / "state"
    rnd = run_query_round(frames, "margin", 5, state, ontology="sim")
    task = tmp / "task"
    res = export_task(rnd, task, ontology=SIM, state_dir=state)
    assert [f.stem for f in res.frames] == ["seq__a", "seq__b", "img0"]
    # point CSVs: one row per queried point, the documented columns
    rows = list(csv.DictReader((task / "points" / "seq__a.csv").open()))
    assert list(rows[0]) == ["index", "x", "y", "z", "col", "row", "suggested_id", "suggested", "label"]
    assert [int(r["index"]) for r in rows] == rnd.frames[0].indices.tolist()
    assert all(r["label"] == "" for r in rows) and rows[0]["suggested"] in SIM.names
    # previews: the camera image for frame a, a bird's-eye view for b (no image), the image for img0
    assert np.asarray(Image.open(task / "previews" / "seq__a.png")).shape == (48, 64, 3)
    assert np.asarray(Image.open(task / "previews" / "seq__b.png")).shape == (800, 800, 3)
    prev = np.asarray(Image.open(task / "previews" / "img0.png"))
    f2 = rnd.frames[2]
    r, c = np.divmod(f2.indices, 64)
    assert (prev[r, c] == (255, 0, 255)).all()
    # CVAT Segmentation mask 1.1 layout, in the folder and in the zip
    with zipfile.ZipFile(task / "cvat_annotations.zip") as z:
        names = set(z.namelist())
    assert names == {"labelmap.txt", "ImageSets/Segmentation/default.txt", "SegmentationClass/img0.png",
                     "SegmentationObject/img0.png"}
    assert (task / "cvat" / "ImageSets" / "Segmentation" / "default.txt").read_text() == "img0\n"
    lm = parse_labelmap((task / "cvat" / "labelmap.txt").read_text(), "labelmap")
    assert lm[(0, 0, 0)] == "background" and lm[(255, 0, 255)] == "query"
    assert len(set(lm)) == len(lm) == C + 2  # every label its own colour
    cls = np.asarray(Image.open(task / "cvat" / "SegmentationClass" / "img0.png"))
    assert (cls[r, c] == (255, 0, 255)).all() and int((cls.sum(2) > 0).sum()) == f2.budget
    obj = np.asarray(Image.open(task / "cvat" / "SegmentationObject" / "img0.png"))
    assert (obj[r, c] == voc_color(1)).all()
    assert (task / "images" / "img0.png").is_file() and json.loads((task / "cvat_labels.json").read_text())[1]["name"] == "query"
    # a person labels: frame a by ids and names, frame b as an index,label NPZ, the image in CVAT
    truth_a = fill_points_csv(task / "points" / "seq__a.csv", ontology_names=True, skip_first=True)
    fb = rnd.frames[1]
    np.savez(task / "points" / "seq__b.npz", index=fb.indices[::-1], label=np.full(fb.budget, 3))
    ids = (np.arange(f2.budget) % C)
    ids[:5] = -1  # five pixels left as "query"
    keep = ids >= 0
    cvat_export_from(task, tmp / "export.zip", "img0", r[keep], c[keep], ids[keep])
    summary = import_task(task, cvat=tmp / "export.zip", ontology=SIM)
    assert [(f.name, f.queried, f.labelled) for f in summary.frames] == [
        ("seq/a", 10, 9), ("seq/b", fb.budget, fb.budget), ("img0", f2.budget, f2.budget - 5)]
    labels = load_round_labels(state, rnd.index)
    got_a = dict(zip(rnd.frames[0].indices.tolist(), labels["seq/a"].tolist()))
    assert got_a == {**{i: truth_a.get(i, -1) for i in got_a}}
    assert (labels["seq/b"] == 3).all()
    assert labels["img0"].tolist() == ids.tolist()
    coll = collected_labels(state)
    assert len(coll["seq/a"][0]) == 9 and set(coll["seq/a"][1].tolist()) <= set(range(C))
    # an export without this image's mask keeps what was imported before
    with zipfile.ZipFile(tmp / "other.zip", "w") as z:
        z.writestr("labelmap.txt", (task / "cvat" / "labelmap.txt").read_text())
    import_task(task, cvat=tmp / "other.zip", ontology=SIM)
    assert load_round_labels(state, rnd.index)["img0"].tolist() == ids.tolist()
    # a colour that is not in the label map is an error naming the file and the pixel
    cvat_export_from(task, tmp / "bad.zip", "img0", r[:1], c[:1], ids[5:6])
    with zipfile.ZipFile(tmp / "bad.zip") as z:
        files = {n: z.read(n) for n in z.namelist()}
    mask = np.asarray(Image.open(io.BytesIO(files["SegmentationClass/img0.png"]))).copy()
    mask[r[0], c[0]] = (1, 2, 3)
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    files["SegmentationClass/img0.png"] = buf.getvalue()
    with zipfile.ZipFile(tmp / "bad.zip", "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    with pytest.raises(DataError, match=rf"bad.zip/SegmentationClass/img0.png: colour \(1, 2, 3\) at pixel \(col {c[0]}, row {r[0]}\)"):
        import_task(task, cvat=tmp / "bad.zip", ontology=SIM)


def test_prefill_paints_the_suggestion(setup) -> None:
    tmp, frames = setup
    rnd = run_query_round(frames[2:], "entropy", 1, tmp / "s", ontology="sim")
    export_task(rnd, tmp / "t", ontology=SIM, state_dir=tmp / "s", prefill=True)
    f = rnd.frames[0]
    r, c = np.divmod(f.indices, 64)
    cls = np.asarray(Image.open(tmp / "t" / "cvat" / "SegmentationClass" / "img0.png"))
    colors = {tuple(d["color"]): d["id"] for d in json.loads((tmp / "t" / "task.json").read_text())["labels"]}
    assert [colors[tuple(v)] for v in cls[r, c]] == f.suggested.tolist()
    # importing the untouched pre-annotation reads the suggestions back as labels
    s = import_task(tmp / "t")
    assert s.labelled == f.budget


def test_bad_labels_give_one_clear_error(setup) -> None:
    tmp, frames = setup
    rnd = run_query_round(frames[:1], "entropy", 5, tmp / "s")
    export_task(rnd, tmp / "t", state_dir=tmp / "s")
    csv_path = tmp / "t" / "points" / "seq__a.csv"
    text = csv_path.read_text().splitlines()
    bad_index = next(i for i in range(200) if i not in set(rnd.frames[0].indices.tolist()))
    csv_path.write_text("\n".join(text + [f"{bad_index},,,,,,,,2"]) + "\n")
    with pytest.raises(DataError, match=f"point index {bad_index} was not queried in this round"):
        import_task(tmp / "t")
    csv_path.write_text("\n".join([text[0], text[1].rsplit(",", 1)[0] + ",grass"]) + "\n")
    with pytest.raises(DataError, match="label 'grass' is not a class id; give an ontology"):
        import_task(tmp / "t")
    with pytest.raises(DataError, match="unknown class 'gras'"):
        csv_path.write_text("\n".join([text[0], text[1].rsplit(",", 1)[0] + ",gras"]) + "\n")
        import_task(tmp / "t", ontology=SIM)
    with pytest.raises(DataError, match="image frames need an ontology"):
        export_task(run_query_round(frames[2:], "entropy", 1, tmp / "s2"), tmp / "t2")
    with pytest.raises(DataError, match="not a labelling task"):
        import_task(tmp)


# ---------------------------------------------------------------------------------- CLI
def test_cli_export_import_show(setup) -> None:
    tmp, frames = setup
    state = tmp / "state"
    run_query_round(frames, "margin", 2, state, ontology="sim")
    res = runner.invoke(app, ["query", "export", str(state), "--out", str(tmp / "task"), "-q"])
    assert res.exit_code == 0, res.output
    assert "exported round 0: 3 frame(s)" in res.output and "cvat_annotations.zip" in res.output
    truth = fill_points_csv(tmp / "task" / "points" / "seq__a.csv", ontology_names=True)
    res = runner.invoke(app, ["query", "import", str(tmp / "task")])
    assert res.exit_code == 0, res.output
    assert f"{len(truth)} of " in res.output and "labels.npz" in res.output
    labels = load_round_labels(state, 0)
    idx = load_round(state, 0).frames[0].indices
    assert labels["seq/a"].tolist() == [truth[i] for i in idx.tolist()]
    res = runner.invoke(app, ["query", "show", str(state)])
    assert res.exit_code == 0 and "margin" in res.output and f"{len(truth)} / " in res.output
    for sub in (["query", "export"], ["query", "import"], ["query", "show"]):
        r = runner.invoke(app, [*sub, "--help"])
        assert r.exit_code == 0 and "Example: terraseg query" in r.output


def test_cli_errors_are_one_line(tmp_path) -> None:
    res = runner.invoke(app, ["query", "export", str(tmp_path / "nothing"), "--out", str(tmp_path / "t")])
    assert res.exit_code == 1 and "error:" in res.output and "no query rounds found" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["query", "import", str(tmp_path)])
    assert res.exit_code == 1 and "not a labelling task (no task.json)" in res.output


def test_real_rellis_frame(shared_data, tmp_path) -> None:
    """The real case: a RELLIS-3D scan projected into its image, queried by image regions (SLIC)
    and by voxel entropy, exported with the points drawn on the camera image."""
    from terraseg.geometry import project_points
    from terraseg.io import read_bin, read_label
    from terraseg.io.calib import read_rellis_calibration
    from terraseg.ontology import LabelMap

    d = shared_data / "rellis3d"
    pts = read_bin(d / "000104.bin")
    sem, _ = read_label(d / "000104.label", len(pts))
    lab = LabelMap.builtin("rellis3d-raw", "rellis3d")(sem, source="000104.label").astype(np.int64)
    cal = read_rellis_calibration(d / "camera_info.txt", d / "transforms.yaml")
    proj = project_points(pts, cal)
    keep = proj.in_image
    assert 5000 < keep.sum() < 10000
    onto = get_ontology("rellis3d")
    c = int(onto.max_id) + 1
    rng = np.random.default_rng(0)
    logits = np.eye(c)[lab[keep]] * 3 + rng.normal(size=(int(keep.sum()), c))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    from terraseg.io import read_image

    image = read_image(d / "frame000104-1581624663_149.jpg")[::4, ::4].copy()  # a quarter-size image:
    write_image(tmp_path / "quarter.png", image)                                # SLIC stays fast
    pix = proj.pixel[keep] // 4
    ctx = FrameContext("rellis/000104", probs_3d=probs, xyz=pts[keep, :3], pixels=pix, image=image,
                       image_path=str(tmp_path / "quarter.png"))
    r0 = run_query_round([ctx], "regions", 1, tmp_path / "s", StrategyOptions(region_score="entropy"),
                         ontology="rellis3d")
    r1 = run_query_round([ctx], "voxel_entropy", 1, tmp_path / "s")
    n = ctx.n
    assert r0.frames[0].budget == r1.frames[0].budget == round(n / 100)
    assert not set(r0.frames[0].indices.tolist()) & set(r1.frames[0].indices.tolist())
    res = export_task(r1, tmp_path / "t", ontology=onto, state_dir=tmp_path / "s")
    prev = np.asarray(Image.open(tmp_path / "t" / res.frames[0].preview))
    assert prev.shape == (300, 480, 3)  # drawn on the camera image
    c, r = r1.frames[0].pixels.T
    assert (prev[r, c] == (255, 0, 255)).all()
    # an image that does not fit the queried pixels: one clear error, no point files
    (tmp_path / "small").mkdir()
    write_image(tmp_path / "small" / "rellis__000104.png", image[:100, :100])  # found by the frame's stem
    with pytest.raises(DataError, match="outside the 100 x 100 image"):
        export_task(r1, tmp_path / "t2", ontology=onto, images_dir=tmp_path / "small")
    assert not (tmp_path / "t2" / "points").exists()
