"""Label-efficient training in the engine: sparse-label recipes (masks drawn exactly, stored, re-used
on resume, only labelled points in the supervised loss), the unsupervised terms' gradients,
distillation pre-training (the loss falls, targets cached and re-used), the CLI end to end on tiny
simulator data, and the messages for missing weights."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from terraseg.cli import app
from terraseg.errors import ConfigError
from terraseg.training.config import TrainConfig

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 simulator frames (5 train, 3 val) from one rig: a 160 x 120 camera and a 16-beam LiDAR
    (about 3,000 points a scan)."""
    from terraseg.sim.dataset import simulate_dataset
    from terraseg.sim.sensors import LidarConfig

    root = tmp_path_factory.mktemp("sim")
    lidar = LidarConfig(beams=16, fov_up_deg=10.0, fov_down_deg=-20.0, azimuth_steps=256, max_range=60.0)
    simulate_dataset(root, frames=8, seed=4, camera="tiny", lidar=lidar, progress=False,
                     splits={"train": 0.6, "val": 0.4}, rate_hz=1.0)
    return root


@pytest.fixture(scope="module")
def teacher(sim: Path) -> Path:
    """An untrained LiteFPN camera checkpoint of the sim ontology (a teacher for the plumbing)."""
    from terraseg.models.image import build_image_model
    from terraseg.models.surgery import save_checkpoint
    from terraseg.ontology import get_ontology

    torch.manual_seed(0)
    onto = get_ontology("sim")
    model = build_image_model("litefpn", "tu-mobilenetv3_small_100", onto.max_id + 1, ontology=onto)
    return save_checkpoint(sim / "teacher.pth", model)


def recipe(sim: Path, out: Path, **over: Any) -> TrainConfig:
    d = {"task": "points", "name": "le", "output": str(out), "seed": 3,
         "data": {"root": str(sim / "lidar"), "kind": "semantickitti", "options": {"ontology": "sim"},
                  "ontology": "sim", "cache": True, "batch_size": 1},
         "model": {"arch": "randlanet", "preset": "small", "in_channels": 4,
                   "options": {"dropout": 0.0, "input_norm": True, "k": 8}},
         "loss": [{"name": "ce", "class_weights": "inv_sqrt"}],
         "augment": {"rotate_z": True, "scale": [0.95, 1.05], "dropout": 0.1},
         "optim": {"name": "adam", "lr": 0.01},
         "trainer": {"max_steps": 2, "log_every": 1, "val_every_steps": 2}}
    cfg = TrainConfig.from_dict(d)
    return cfg.with_overrides([f"{k}={json.dumps(v)}" for k, v in over.items()]) if over else cfg


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _column(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key)]


# ---------------------------------------------------------------------------------------------- recipes
def test_recipe_keys_are_validated_and_overridable(tmp_path: Path) -> None:
    base = {"task": "points", "data": {"root": "x"}}
    cfg = TrainConfig.from_dict(base).with_overrides(["data.label_budget=0.1%", "label_efficient.contrast.weight=0.2",
                                                      "label_efficient.regions.method=supervoxel"])
    assert cfg.data.label_budget == "0.1%" and cfg.label_efficient.contrast.weight == 0.2
    assert cfg.label_efficient.regions.method == "supervoxel" and cfg.label_efficient.enabled
    assert TrainConfig.from_dict(base).with_overrides(["data.label_budget=20"]).data.label_budget == 20
    bad = [
        ({"data": {"root": "x", "label_budget": "150%"}}, r"data\.label_budget: invalid label budget '150%'"),
        ({"data": {"root": "x", "label_strategy": "regions"}}, "need data.label_budget"),
        ({"data": {"root": "x"}, "label_efficient": {"contrast": {"wieght": 1}}},
         r"unknown key 'label_efficient\.contrast\.wieght'"),
        ({"data": {"root": "x"}, "label_efficient": {"boundary": {"energy_weight": 0.1}}},
         "energy_on: head needs a boundary head"),
        ({"data": {"root": "x"}, "label_efficient": {"contrast": {"temperature": 0}}}, r"contrast\.temperature"),
        ({"data": {"root": "x", "label_budget": "1%"}, "distill": {"teacher": "t.pth"}}, "uses no labels"),
        ({"data": {"root": "x"}, "distill": {"teacher": "timm:resnet18", "loss": "kl"}}, "needs class scores"),
        ({"data": {"root": "x"}, "distill": {"teacher": "t.pth", "views": "camera", "images": "none"}},
         "needs camera images"),
    ]
    for d, match in bad:
        with pytest.raises(ConfigError, match=match):
            TrainConfig.from_dict({"task": "points", **d})
    with pytest.raises(ConfigError, match="applies to the points task only"):
        TrainConfig.from_dict({"task": "image", "data": {"root": "x", "label_budget": "1%"}})


def test_recipe_defaults_are_the_library_defaults() -> None:
    from terraseg.geometry import regions
    from terraseg.label_efficient import boundary, contrast
    from terraseg.training import label_efficient_config as c

    assert (c.DEFAULT_SMOOTHNESS_DEG, c.DEFAULT_CURVATURE_THRESHOLD, c.DEFAULT_MIN_SIZE, c.DEFAULT_MAX_RADIUS,
            c.DEFAULT_VOXEL_SIZE, c.DEFAULT_BOUNDARY_K) == (
        regions.DEFAULT_SMOOTHNESS_DEG, regions.DEFAULT_CURVATURE_THRESHOLD, regions.DEFAULT_MIN_SIZE,
        regions.DEFAULT_MAX_RADIUS, regions.DEFAULT_VOXEL_SIZE, regions.DEFAULT_BOUNDARY_K)
    assert (c.DEFAULT_ENERGY_MARGIN, c.DEFAULT_ENERGY_TEMPERATURE) == (boundary.DEFAULT_ENERGY_MARGIN,
                                                                        boundary.DEFAULT_ENERGY_TEMPERATURE)
    assert (c.DEFAULT_TEMPERATURE, c.DEFAULT_CONFIDENCE, c.DEFAULT_MAX_REGIONS) == (
        contrast.DEFAULT_TEMPERATURE, contrast.DEFAULT_CONFIDENCE, contrast.DEFAULT_MAX_REGIONS)
    from dataclasses import fields

    from terraseg.label_efficient.targets import ViewSettings

    distill = c.DistillConfig()  # its view keys become a ViewSettings field by field
    for f in fields(ViewSettings):
        assert getattr(distill, f.name) == f.default, f.name


# ---------------------------------------------------------------------------------------------- sparse labels
def test_sparse_labels_drawn_exactly_stored_and_only_labelled_points_reach_the_loss(
        sim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from terraseg.datasets import open_dataset
    from terraseg.label_efficient import LabelBudget, SparseLabels, draw_label_mask
    from terraseg.training.engine import train
    from terraseg.training.label_efficient_task import LabelEfficientModule

    seen: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    real = LabelEfficientModule.supervised_loss

    def record(self: LabelEfficientModule, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        batch = self._last_batch  # type: ignore[attr-defined]
        seen.append((int(batch["index"][0]), batch["point_index"][0].numpy().copy(), target[0].numpy().copy(),
                     batch["target"][0].numpy().copy()))
        return real(self, logits, target)

    real_terms = LabelEfficientModule.loss_terms

    def keep_batch(self: LabelEfficientModule, batch: dict[str, Any]) -> Any:
        self._last_batch = batch  # type: ignore[attr-defined]
        return real_terms(self, batch)

    monkeypatch.setattr(LabelEfficientModule, "supervised_loss", record)
    monkeypatch.setattr(LabelEfficientModule, "loss_terms", keep_batch)
    res = train(recipe(sim, tmp_path, **{"data.label_budget": 20, "trainer.max_steps": 3}), progress=False)

    store = SparseLabels.load(res.run_dir / "sparse_labels.npz")
    assert store.budget == LabelBudget(count=20) and store.seed == 3
    frames = open_dataset(sim / "lidar", kind="semantickitti", split="train", ontology="sim")
    assert len(store) == len(frames) == 5
    for f in frames:  # exactly 20 per scan, the library's draw for (seed, frame id)
        mask = store.mask(f.frame_id, len(f.point_labels))
        assert mask.sum() == 20
        np.testing.assert_array_equal(mask, draw_label_mask(f.point_labels, f.frame_id, LabelBudget(count=20), 3,
                                                            ignore_index=255))
    assert len(seen) == 3
    for index, src, loss_target, sample_target in seen:
        f = frames[index]
        labelled = store.mask(f.frame_id, len(f.point_labels))[src]
        assert (loss_target != -1).sum() == labelled.sum() > 0  # crops and dropout keep a subset of the 20
        np.testing.assert_array_equal(loss_target != -1, labelled)
        np.testing.assert_array_equal(sample_target[labelled], f.point_labels[src[labelled]].astype(np.int64))
    summary = json.loads((res.run_dir / "summary.json").read_text())
    lab = summary["labels"]
    assert lab["labelled_points"] == 100 and lab["frames"] == 5 and lab["file"] == "sparse_labels.npz"
    assert lab["labelled_share_of_labellable"] == pytest.approx(100 / lab["labellable_points"])
    assert _column(_metrics(res.run_dir), "train/labelled_points")
    assert np.isfinite(res.best_miou)  # validation ran on the full labels of the val scans


@pytest.mark.filterwarnings("ignore:You.re resuming from a checkpoint that ended before the epoch ended")
def test_resume_reuses_the_stored_masks(sim: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from terraseg.label_efficient import sparse_labels
    from terraseg.training.engine import train

    cfg = recipe(sim, tmp_path, **{"data.label_budget": "1%", "data.max_train_frames": 3})
    res = train(cfg, progress=False)
    path = res.run_dir / "sparse_labels.npz"
    before = path.read_bytes()

    def no_redraw(*a: Any, **k: Any) -> Any:
        raise AssertionError("masks redrawn on resume")

    monkeypatch.setattr(sparse_labels, "draw_label_mask", no_redraw)
    resumed = train(cfg.with_overrides(["trainer.max_steps=4"]), resume=True, progress=False)
    assert resumed.steps == 4 and path.read_bytes() == before
    with pytest.raises(ConfigError, match=r"sparse_labels\.npz: masks drawn with 1% of points, random, seed 3; the recipe "
                                          r"asks for 1% of points, random, seed 4"):
        train(cfg.with_overrides(["seed=4", "trainer.max_steps=6"]), resume=True, progress=False)


def test_region_strategy_gives_one_click_per_region(sim: Path, tmp_path: Path) -> None:
    from terraseg.label_efficient import SparseLabels
    from terraseg.training.engine import train

    cfg = recipe(sim, tmp_path, **{"data.label_budget": "regions", "data.label_strategy": "regions",
                                   "data.max_train_frames": 2, "trainer.max_steps": 1,
                                   "label_efficient.regions.method": "supervoxel",
                                   "label_efficient.regions.voxel_size": 2.0})
    res = train(cfg, progress=False)
    store = SparseLabels.load(res.run_dir / "sparse_labels.npz")
    with np.load(res.run_dir / "regions.npz") as z:
        off, reg = z["offsets"], z["regions"]
    for j, fid in enumerate(sorted(store.indices)):  # frame ids 00/000000, 00/000001 in order
        r = reg[off[j]:off[j + 1]]
        picked = r[store.indices[fid]]
        assert len(np.unique(picked)) == len(picked) == len(np.unique(r[r >= 0]))


# ---------------------------------------------------------------------------------------------- unsupervised
def test_unsupervised_terms_send_gradient_to_the_network(sim: Path, tmp_path: Path) -> None:
    from terraseg.training.data import collate_scans
    from terraseg.training.engine import _Run

    cfg = recipe(sim, tmp_path, **{"data.label_budget": "1%", "data.max_train_frames": 1,
                                   "label_efficient.contrast": {"weight": 0.1, "confidence": 0.0},
                                   "label_efficient.boundary": {"head_weight": 0.1, "energy_weight": 0.1}})
    run_dir = tmp_path / "le"
    run_dir.mkdir()
    run = _Run(cfg, run_dir, progress=False)
    batch = collate_scans([run.train_set[0]])
    assert {"regions", "boundary", "point_index"} <= set(batch)
    # each sample point carries its index in the scan as read through rotation, scaling, jitter and
    # dropout: distances between sample points are the scan's times one scale (0.95-1.05, +-jitter)
    src = batch["point_index"][0].numpy()
    raw = np.asarray(run.train_frames[0].points)[src, :3].astype(np.float64)
    aug = batch["xyz"][0][0].numpy().astype(np.float64)
    d_raw = np.linalg.norm(raw[1:] - raw[:-1], axis=1)
    d_aug = np.linalg.norm(aug[1:] - aug[:-1], axis=1)
    far = d_raw > 2.0
    ratio = d_aug[far] / d_raw[far]
    assert len(src) < len(run.train_frames[0].points) and ratio.std() < 0.02 and 0.93 < ratio.mean() < 1.07
    np.testing.assert_array_equal(batch["regions"][0].numpy(), run.train_set.regions.regions[0][src])
    module = run.module
    terms, _, _, diag = module.loss_terms(batch)
    assert set(terms) == {"sup", "contrast", "boundary", "energy"}
    assert {"energy_border", "energy_labelled"} <= set(diag)
    net = [p for p in module.model.parameters() if p.requires_grad]
    head = list(module.boundary_head.parameters())
    for name, (_, value) in terms.items():
        assert torch.isfinite(value) and float(value.detach()) > 0, name
        g_net = torch.autograd.grad(value, net, retain_graph=True, allow_unused=True)
        norm = sum(float(g.abs().sum()) for g in g_net if g is not None)
        if name == "boundary":  # the head's BCE trains the head and, through the features, the network
            g_head = torch.autograd.grad(value, head, retain_graph=True)
            assert sum(float(g.abs().sum()) for g in g_head) > 0
        assert norm > 0, f"no gradient from the {name} term into the network"


# ---------------------------------------------------------------------------------------------- distillation
def test_distillation_loss_falls_and_targets_are_cached_and_reused(
        sim: Path, teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from terraseg.label_efficient import read_distill_head
    from terraseg.training import label_efficient_task
    from terraseg.training.label_efficient_task import distill

    cache = tmp_path / "targets"
    cfg = recipe(sim, tmp_path, **{"name": "distill", "distill": {"teacher": str(teacher), "loss": "cosine+kl",
                                                                  "cache_dir": str(cache)},
                                   "augment": {"enabled": False}, "data.max_train_frames": 2,
                                   "trainer.max_steps": 10, "trainer.val_every_steps": 10})
    res = distill(cfg, progress=False)
    info = json.loads((res.run_dir / "summary.json").read_text())["distill"]
    assert info["computed"] == 2 and info["reused"] == 0 and info["scans_with_camera"] == 2  # the sim's paired camera
    assert 0.05 < info["seen_share"] < 0.6  # one forward camera sees a part of the 360-degree scan
    files = sorted(Path(info["cache"]).glob("*.npz"))
    assert len(files) == 2 and (Path(info["cache"]) / "teacher.json").is_file()
    rows = _metrics(res.run_dir)
    cos, kl = _column(rows, "train/loss_distill_cos"), _column(rows, "train/loss_distill_kl")
    assert len(cos) == 10 and "train/loss_sup" not in rows[0]  # no labels in pre-training
    assert np.mean(cos[-3:]) < 0.8 * np.mean(cos[:3]), cos
    assert np.mean(kl[-3:]) < np.mean(kl[:3]), kl
    head = read_distill_head(res.run_dir / "checkpoints" / "distill_head.pth")
    assert head.teacher == str(teacher) and head.step == 10
    # a second run with the same teacher and views reads every target: the teacher does not run
    monkeypatch.setattr(label_efficient_task, "scan_teacher_targets",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("teacher ran again")))
    again = distill(cfg.with_overrides(["name=distill2", "trainer.max_steps=1"]), progress=False)
    info2 = json.loads((again.run_dir / "summary.json").read_text())["distill"]
    assert info2["computed"] == 0 and info2["reused"] == 2 and info2["cache"] == info["cache"]
    with pytest.raises(ConfigError, match="no distill.teacher"):
        distill(recipe(sim, tmp_path), progress=False)


def test_camera_view_targets_only_cover_what_the_camera_sees(sim: Path, teacher: Path) -> None:
    from terraseg.datasets import open_dataset
    from terraseg.geometry.projection import project_points
    from terraseg.label_efficient.targets import CameraImages, ViewSettings, load_teacher, scan_teacher_targets

    frame = open_dataset(sim / "lidar", kind="semantickitti", split="train", ontology="sim")[0]
    images = CameraImages("auto", sim / "lidar")
    cam = images(frame)
    assert cam is not None and images.image_path(frame) == sim / "camera" / "images" / "train" / "000000.png"
    image, calib = cam
    t = scan_teacher_targets(frame.points, load_teacher(str(teacher)), ViewSettings(views="auto"), cam)
    assert t.views == ["camera"] and t.features.dtype == np.float16 and t.probs is not None
    proj = project_points(frame.points[t.seen, :3], calib)
    assert proj.in_image.all()  # every target point projects into the real image
    ring = scan_teacher_targets(frame.points, load_teacher(str(teacher)), ViewSettings(views="ring"), None)
    assert ring.views == ["ring00", "ring01", "ring02", "ring03"] and len(ring.seen) > 2 * len(t.seen)
    assert CameraImages("none", sim / "lidar")(frame) is None
    with pytest.raises(ConfigError, match="not a simulator output"):
        CameraImages(str(sim / "lidar"))


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_distill_finetune_and_open_vocab_prediction(sim: Path, teacher: Path, tmp_path: Path) -> None:
    from terraseg.label_efficient import read_distill_head
    from terraseg.models.surgery import read_checkpoint

    base = recipe(sim, tmp_path, **{"augment": {"enabled": False}, "data.max_train_frames": 2,
                                    "trainer.max_steps": 2, "trainer.val_every_steps": 2})
    pre = base.with_overrides(["name=pre", f"distill.teacher={teacher}"])
    pre.save(tmp_path / "distill.yaml")
    base.save(tmp_path / "finetune.yaml")
    r = runner.invoke(app, ["distill", str(tmp_path / "distill.yaml"), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "distilled pre from" in r.output and "teacher targets: 2 computed" in r.output
    last = tmp_path / "pre" / "checkpoints" / "last.pth"
    assert last.is_file() and (tmp_path / "pre" / "checkpoints" / "distill_head.pth").is_file()
    r = runner.invoke(app, ["train", str(tmp_path / "finetune.yaml"), "name=ft", f"model.weights={last}",
                            "data.label_budget=1%", "label_efficient.contrast.weight=0.1", "-q"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["labels"]["budget"] == "1% of points, random" and summary["regions"]["method"] == "growing"
    saved = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    assert saved["data"]["label_budget"] == "1%" and saved["model"]["weights"] == str(last)
    assert read_checkpoint(tmp_path / "ft" / "checkpoints" / "last.pth").meta["labels"]["labelled_points"] > 0
    # open vocabulary: the teacher's classifier rows stand in for text embeddings (plumbing only)
    head = read_distill_head(tmp_path / "pre" / "checkpoints" / "distill_head.pth")
    assert head.classifier is not None
    emb = tmp_path / "emb.npy"
    np.save(emb, head.classifier["weight"][:3].numpy())
    scans = sim / "lidar" / "sequences" / "08" / "velodyne"
    out = tmp_path / "ov"
    r = runner.invoke(app, ["predict", str(last), str(scans), "--out", str(out), "--classes", "void, sky ,dirt",
                            "--text-embeddings", str(emb), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    labels = sorted((out / "labels").glob("*.label"))
    assert len(labels) == 3 and (out / "classes.txt").read_text() == "0 void\n1 sky\n2 dirt\n"
    ids = np.fromfile(labels[0], dtype=np.uint32)
    assert len(ids) == len(np.fromfile(scans / labels[0].with_suffix(".bin").name, dtype=np.float32)) // 4
    assert ids.max() <= 2


def test_missing_weights_and_packages_give_one_clear_line(sim: Path, tmp_path: Path, teacher: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    base = recipe(sim, tmp_path)
    p = tmp_path / "r.yaml"
    base.save(p)
    cases = [
        (["distill", str(p), "distill.teacher=open_clip:ViT-B-32"], "needs a local weights file"),
        (["distill", str(p), "distill.teacher=open_clip:ViT-B-32", f"distill.teacher_weights={tmp_path}/no.bin"],
         "weights file not found"),
        (["distill", str(p), "distill.teacher=timm:resnet18"], "needs a local weights file"),
        (["distill", str(p), f"distill.teacher={tmp_path}/none.pth"], "camera checkpoint not found"),
        (["distill", str(p)], "no distill.teacher"),
        (["predict", str(teacher), str(sim / "lidar"), "--out", str(tmp_path / "o"), "--classes", "tree"],
         "--classes needs the text side: --open-vocab CLIP_WEIGHTS"),
    ]
    if importlib.util.find_spec("open_clip") is None:  # without the package its absence is the one message
        cases = [c for c in cases if "open_clip:" not in " ".join(c[0])]
    for args, msg in cases:
        r = runner.invoke(app, [*args, "-q"] if args[0] == "distill" else args)
        assert r.exit_code == 1, (args, r.output)
        assert r.output.startswith("error:") and msg in r.output and "Traceback" not in r.output, r.output
        assert r.output.count("\n") <= 3  # one message (soft-wrapped at most)
    if importlib.util.find_spec("open_clip") is not None:
        assert "pip install 'terraseg[clip]'" in runner.invoke(app, cases[0][0] + ["-q"]).output
        assert "needs a local weights file" in runner.invoke(app, cases[0][0] + ["-q"]).output
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else real(name, *a))
    r = runner.invoke(app, ["distill", str(p), "distill.teacher=open_clip:ViT-B-32", "-q"])
    assert r.exit_code == 1 and "open_clip_torch, which is not installed" in r.output
    assert "pip install 'terraseg[clip]'" in r.output


def test_distillation_crops_are_centred_on_points_with_a_target() -> None:
    from terraseg.label_efficient.targets import ScanTargets
    from terraseg.training.label_efficient_data import crop_around_targets

    rng = np.random.default_rng(0)
    xyz = rng.uniform(-30, 30, size=(4000, 3)).astype(np.float32)
    pts = np.concatenate([xyz, np.arange(4000, dtype=np.float32)[:, None]], axis=1)
    seen = np.flatnonzero(xyz[:, 0] > 25)  # a narrow wedge, as a forward camera's
    t = ScanTargets(4000, seen, np.zeros((len(seen), 2), np.float16))
    for i in range(20):
        crop, lab = crop_around_targets(pts, np.arange(4000), 500, t, np.random.default_rng(i))
        src = crop[:, -1].astype(np.int64)
        assert len(crop) == 500 and np.array_equal(lab, src) and np.isin(src, seen).any()
    empty = ScanTargets(4000, np.zeros(0, np.int64), np.zeros((0, 2), np.float16))
    assert len(crop_around_targets(pts, np.arange(4000), 500, empty, rng)[0]) == 500  # falls back to a random centre
