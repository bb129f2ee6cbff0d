"""Benchmark: label-efficient LiDAR segmentation on simulator scans (reference 003, WS3D++).

What is measured
----------------
RandLA-Net (``small`` preset, x, y, z, intensity, ``input_norm``) trained for the same number of
steps on the same simulated drive, validated on a drive through another world, with the same
seeds, for each row:

- with ``--budgets`` labelled points per training scan (default 1 % and 0.1 %, drawn at random
  per scan from the run seed, ``data.label_budget``):
    * cross-entropy only (weighted by the inverse square root of the *labelled* class counts);
    * + region contrast (``label_efficient.contrast``, regions by region growing);
    * + boundary energy (boundary head on region borders and the energy loss on its output);
    * + distillation pre-training: fine-tuned from a RandLA-Net that first learnt, without any
      label, to predict a camera model's fused outputs at its points (``terraseg distill``,
      cosine on features + KL on class scores; the real camera image of each scan);
    * all together (distillation pre-training, then contrast and boundary energy);
- the teacher alone: the class of the teacher's fused probabilities (argmax), on the points its
  camera sees in the validation scans;
- fully supervised (every label) as the ceiling.

The teacher is a LiteFPN camera model trained in the script on camera frames of **other drives**
(another simulated world and seed), or ``--teacher CKPT``. Every row reports the validation mIoU
(mean and standard deviation over the seeds, and each seed), and the mIoU on the validation
points the teacher's camera sees (the teacher row's points; the camera covers a forward wedge of
the 360-degree scans). A second table gives region purity, regions and over-segmentation time
per scan; a third the loss magnitudes at the end of training (to judge the weights and the
energy margin).

Data, teacher, teacher targets and pre-training are computed once and shared by the rows; runs are
step budgets (not time budgets), so the table does not depend on the machine's speed; ``--jobs``
runs that many trainings at once (one thread each).

Usage::

    python benchmarks/bench_label_efficient.py [--seeds 0,1,2] [--budgets 1%,0.1%] [--steps 300]
        [--distill-steps 300] [--teacher-steps 400] [--teacher CKPT] [--jobs 2] [--work DIR]
    python benchmarks/bench_label_efficient.py --smoke      # < 60 s, tiny: plumbing only
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import csv
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

VARIANTS = ("ce", "contrast", "boundary", "distill", "all")
LABELS = {"ce": "cross-entropy only", "contrast": "+ region contrast", "boundary": "+ boundary energy",
          "distill": "+ distillation pre-training", "all": "all together", "teacher": "teacher's fused 2D alone",
          "full": "fully supervised"}
TERMS = ("sup", "contrast", "boundary", "energy")


# ---------------------------------------------------------------------------------------------- settings
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (comma-separated)")
    ap.add_argument("--budgets", default="1%,0.1%", help="label budgets (comma-separated)")
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps of every supervised / fine-tuning run")
    ap.add_argument("--distill-steps", type=int, default=None, help="steps of distillation pre-training (default --steps)")
    ap.add_argument("--teacher-steps", type=int, default=400, help="steps of the camera teacher's training")
    ap.add_argument("--teacher", default=None, help="a camera checkpoint to use as the teacher (skips its training)")
    ap.add_argument("--frames", type=int, default=40, help="simulated frames of the LiDAR drive (60%% train, 40%% val)")
    ap.add_argument("--teacher-frames", type=int, default=60, help="camera frames of the teacher's own drives")
    ap.add_argument("--crop", type=int, default=4096, help="points per training crop")
    ap.add_argument("--contrast-weight", type=float, default=0.1)
    ap.add_argument("--boundary-weight", type=float, default=0.1, help="boundary head BCE weight")
    ap.add_argument("--energy-weight", type=float, default=0.1)
    ap.add_argument("--energy-margin", type=float, default=-5.0)
    ap.add_argument("--distill-loss", default="cosine+kl", choices=("cosine", "kl", "cosine+kl"))
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once (processes, one thread each)")
    ap.add_argument("--work", default=None, help="work folder (the simulated data, the teacher and its cached "
                    "targets are re-used when present; every training reruns)")
    ap.add_argument("--smoke", action="store_true", help="tiny data, an untrained teacher, 2-step runs (< 60 s): plumbing only")
    a = ap.parse_args(argv)
    if a.smoke:
        a.seeds, a.budgets, a.steps, a.distill_steps, a.teacher_steps = "0", "1%", 2, 2, 2
        a.frames, a.teacher_frames, a.crop, a.jobs = 6, 4, 1024, 1
    a.distill_steps = a.distill_steps or a.steps
    a.seed_list = [int(s) for s in a.seeds.split(",") if s.strip()]
    a.budget_list = [b.strip() for b in a.budgets.split(",") if b.strip()]
    return a


def lidar_and_camera(smoke: bool) -> tuple[Any, str]:
    from terraseg.sim.sensors import LidarConfig

    if smoke:
        return LidarConfig(beams=16, fov_up_deg=10.0, fov_down_deg=-20.0, azimuth_steps=256, max_range=60.0,
                           name="smoke"), "tiny"
    return "small", "small"


# ---------------------------------------------------------------------------------------------- data and teacher
def make_data(work: Path, a: argparse.Namespace) -> tuple[Path, Path]:
    """The LiDAR drive (train / val, each its own world, with the paired camera) and the teacher's
    camera drives (another world seed), simulated once per work folder."""
    from terraseg.sim.dataset import simulate_dataset

    lidar, camera = lidar_and_camera(a.smoke)
    student, teacher = work / "sim", work / "sim-teacher"
    if not (student / "lidar").is_dir():
        shutil.rmtree(student, ignore_errors=True)
        simulate_dataset(student, frames=a.frames, seed=11, camera=camera, lidar=lidar, progress=False,
                         splits={"train": 0.6, "val": 0.4}, rate_hz=1.0, worlds="per-split")
    if not (teacher / "camera").is_dir() and a.teacher is None:
        shutil.rmtree(teacher, ignore_errors=True)
        simulate_dataset(teacher, frames=a.teacher_frames, seed=101, camera=camera, lidar=None, progress=False,
                         splits={"train": 0.8, "val": 0.2}, rate_hz=1.0, worlds="per-split")
    return student, teacher


def train_teacher(work: Path, teacher_data: Path, a: argparse.Namespace) -> tuple[Path, float]:
    """LiteFPN on the teacher's drives (as configs/sim_litefpn.yaml, by steps); its val mIoU there."""
    from terraseg.training.config import TrainConfig
    from terraseg.training.engine import train

    ckpt = work / "teacher" / "checkpoints" / "last.pth"
    if a.smoke:  # plumbing only: an untrained LiteFPN saves the teacher's training time
        from terraseg.models.image import build_image_model
        from terraseg.models.surgery import save_checkpoint
        from terraseg.ontology import get_ontology

        onto = get_ontology("sim")
        save_checkpoint(ckpt, build_image_model("litefpn", "tu-mobilenetv3_small_100", onto.max_id + 1, ontology=onto))
        return ckpt, float("nan")
    if ckpt.is_file():
        s = json.loads((work / "teacher" / "summary.json").read_text())
        return ckpt, float(s["best_mIoU"])
    crop = [96, 128] if a.smoke else [192, 256]
    d = {"task": "image", "name": "teacher", "output": str(work), "seed": 0,
         "data": {"root": str(teacher_data / "camera"), "kind": "generic", "ontology": "sim", "batch_size": 8,
                  "val_batch_size": 4, "cache": True},
         "model": {"arch": "litefpn", "encoder": "tu-mobilenetv3_small_100", "options": {"output_stride": 4}},
         "loss": [{"name": "ce", "class_weights": "inv_sqrt"}],
         "augment": {"scale": [0.75, 1.5], "crop": crop, "hflip": 0.5, "photometric": True},
         "optim": {"name": "adamw", "lr": 0.004, "weight_decay": 0.01},
         "schedule": {"name": "cosine", "warmup_iters": min(20, a.teacher_steps // 4)},
         "trainer": {"max_steps": a.teacher_steps, "val_every_steps": a.teacher_steps, "log_every": 5,
                     "accelerator": "cpu"}}
    res = train(TrainConfig.from_dict(d), overwrite=True, progress=False)
    return ckpt, res.best_miou


def base_recipe(a: argparse.Namespace, work: Path, sim: Path, seed: int, name: str, steps: int) -> dict[str, Any]:
    return {"task": "points", "name": name, "output": str(work / "runs" / f"seed{seed}"), "seed": seed,
            "data": {"root": str(sim / "lidar"), "kind": "semantickitti", "options": {"ontology": "sim"},
                     "ontology": "sim", "cache": True, "batch_size": 1, "max_points": a.crop},
            "model": {"arch": "randlanet", "preset": "small", "in_channels": 4,
                      "options": {"dropout": 0.0, "input_norm": True}},
            "loss": [{"name": "ce", "class_weights": "inv_sqrt"}],
            "augment": {"rotate_z": True, "scale": [0.95, 1.05], "flip_y": 0.5, "flip_x": 0.0, "jitter_sigma": 0.01},
            "optim": {"name": "adam", "lr": 0.01},
            "schedule": {"name": "cosine", "warmup_iters": min(20, steps // 4)},
            "trainer": {"max_steps": steps, "val_every_steps": steps, "log_every": min(5, steps), "accelerator": "cpu"}}


def distill_recipe(a: argparse.Namespace, work: Path, sim: Path, seed: int, teacher: Path) -> dict[str, Any]:
    d = base_recipe(a, work, sim, seed, "distill", a.distill_steps)
    d["distill"] = {"teacher": str(teacher), "loss": a.distill_loss, "views": "camera",
                    "cache_dir": str(work / "targets")}
    return d


def run_recipe(a: argparse.Namespace, work: Path, sim: Path, seed: int, budget: str | None, variant: str) -> dict[str, Any]:
    name = "full" if budget is None else f"{budget.replace('%', 'pct')}-{variant}"
    d = base_recipe(a, work, sim, seed, name, a.steps)
    if budget is not None:
        d["data"]["label_budget"] = budget
    le: dict[str, Any] = {}
    if variant in ("contrast", "all"):
        le["contrast"] = {"weight": a.contrast_weight}
    if variant in ("boundary", "all"):
        le["boundary"] = {"head_weight": a.boundary_weight, "energy_weight": a.energy_weight,
                          "margin": a.energy_margin}
    if le:
        d["label_efficient"] = le
    if variant in ("distill", "all"):
        d["model"]["weights"] = str(work / "runs" / f"seed{seed}" / "distill" / "checkpoints" / "last.pth")
    return d


# ---------------------------------------------------------------------------------------------- teacher targets
def teacher_targets(work: Path, sim: Path, a: argparse.Namespace, teacher: Path) -> dict[str, Any]:
    """Fused teacher targets of the training scans (shared by every distillation run through the
    cache) and of the validation scans (the teacher-alone row)."""
    from terraseg.datasets import open_dataset
    from terraseg.label_efficient.targets import ViewSettings, load_teacher
    from terraseg.training.config import TrainConfig
    from terraseg.training.label_efficient_task import target_cache, targets_of

    cfg = TrainConfig.from_dict(distill_recipe(a, work, sim, a.seed_list[0], teacher))
    loaded = load_teacher(str(teacher))
    cache, settings, images = target_cache(cfg, loaded, work)
    out: dict[str, Any] = {"val": {}, "seconds": 0.0, "computed": 0}
    for split in ("train", "val"):
        for f in open_dataset(sim / "lidar", kind="semantickitti", split=split, ontology="sim"):
            t = cache.load(str(f.frame_id), len(f.points))
            if t is None:
                t0 = time.perf_counter()
                t = targets_of(f, loaded, settings, images)
                out["seconds"] += time.perf_counter() - t0
                out["computed"] += 1
                cache.save(str(f.frame_id), t)
            if split == "val":
                out["val"][str(f.frame_id)] = t
                # the same teacher on virtual views coloured by intensity (what scans without a camera get)
                ring = ViewSettings("ring", settings.ring_views, settings.view_size, settings.hfov_deg,
                                    settings.pitch_deg, settings.splat_radius, settings.border)
                out.setdefault("ring", {})[str(f.frame_id)] = targets_of(f, loaded, ring, images)
    return out


# ---------------------------------------------------------------------------------------------- scoring
def teacher_alone(sim: Path, val_targets: dict[str, Any]) -> tuple[float, float]:
    """(mIoU % of the argmax of the teacher's fused probabilities on the points its views see, the
    share of the validation points they see)."""
    from terraseg.datasets import open_dataset

    preds = {}
    for f in open_dataset(sim / "lidar", kind="semantickitti", split="val", ontology="sim"):
        t = val_targets[str(f.frame_id)]
        pred = np.zeros(len(f.points), dtype=np.int64)
        if t.probs is not None and len(t.seen):
            pred[t.seen] = np.asarray(t.probs, dtype=np.float32).argmax(axis=1)
        preds[str(f.frame_id)] = pred
    share = float(np.mean([len(t.seen) / max(t.num_points, 1) for t in val_targets.values()]))
    return score(preds, sim, val_targets)[1], share


def score(preds: dict[str, np.ndarray], sim: Path, val_targets: dict[str, Any]) -> tuple[float, float]:
    """(mIoU over every labelled validation point, mIoU over the ones the teacher's views see), %."""
    from terraseg.datasets import open_dataset
    from terraseg.metrics.presets import default_preset
    from terraseg.ontology import get_ontology

    preset = default_preset(get_ontology("sim"))
    cm_all, cm_seen = preset.confusion_matrix(), preset.confusion_matrix()
    for f in open_dataset(sim / "lidar", kind="semantickitti", split="val", ontology="sim"):
        lab = np.asarray(f.point_labels).astype(np.int64)
        pred = preds[str(f.frame_id)]
        ok = np.isfinite(f.points[:, :3]).all(axis=1) & (np.einsum("ij,ij->i", f.points[:, :3], f.points[:, :3]) > 1e-6)
        cm_all.update(pred[ok], lab[ok])
        seen = val_targets[str(f.frame_id)].seen
        cm_seen.update(pred[seen], lab[seen])
    return (float(preset.evaluate(cm_all).summary()["mIoU"]), float(preset.evaluate(cm_seen).summary()["mIoU"]))


def predict_val(checkpoint: Path, sim: Path) -> dict[str, np.ndarray]:
    from terraseg.datasets import open_dataset
    from terraseg.inference.models import load_model
    from terraseg.inference.scans import scan_predictor

    predict = scan_predictor(load_model(checkpoint))
    return {str(f.frame_id): predict(f.points).labels
            for f in open_dataset(sim / "lidar", kind="semantickitti", split="val", ontology="sim")}


def loss_magnitudes(run_dir: Path) -> dict[str, float]:
    """Mean of each logged term over the last quarter of training."""
    with open(run_dir / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = {}
    for key in [*(f"loss_{t}" for t in TERMS), "energy_border", "energy_labelled"]:
        vals = [float(r[f"train/{key}"]) for r in rows if r.get(f"train/{key}")]
        if vals:
            out[key] = float(np.mean(vals[-max(1, len(vals) // 4):]))
    return out


# ---------------------------------------------------------------------------------------------- jobs
def job(spec: dict[str, Any]) -> dict[str, Any]:
    """One training (in a worker process): train, predict the validation scans, read the logs."""
    import torch

    torch.set_num_threads(1)
    from terraseg.training.config import TrainConfig
    from terraseg.training.engine import train

    t0 = time.perf_counter()
    cfg = TrainConfig.from_dict(spec["recipe"])
    with contextlib.redirect_stdout(sys.stderr):  # the fine-tunes' weight-loading report: not part of the tables
        res = train(cfg, overwrite=True, progress=False)
    out = {"key": spec["key"], "seconds": time.perf_counter() - t0, "steps": res.steps,
           "losses": loss_magnitudes(res.run_dir), "run_dir": str(res.run_dir)}
    summary = json.loads((res.run_dir / "summary.json").read_text())
    out["labels"] = summary.get("labels")
    if spec.get("score"):
        assert res.last_checkpoint is not None
        out["preds"] = predict_val(res.last_checkpoint, Path(spec["sim"]))
    return out


def run_jobs(specs: list[dict[str, Any]], jobs: int) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Run the trainings; a spec with ``after`` waits for that key's job (the distillation run)."""
    done: dict[tuple[Any, ...], dict[str, Any]] = {}
    if jobs <= 1:
        for s in sorted(specs, key=lambda s: s.get("after") is not None):
            done[s["key"]] = job(s)
            print(f"  done {s['key']} in {done[s['key']]['seconds']:.0f} s", file=sys.stderr, flush=True)
        return done
    ready = [s for s in specs if s.get("after") is None]
    waiting = [s for s in specs if s.get("after") is not None]
    ready.sort(key=lambda s: s["key"][1] != "distill-pretrain")  # dependencies first
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        running = {pool.submit(job, s): s for s in ready}
        while running:
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                s = running.pop(fut)
                done[s["key"]] = fut.result()
                print(f"  done {s['key']} in {done[s['key']]['seconds']:.0f} s", file=sys.stderr, flush=True)
                for w in [w for w in waiting if tuple(w["after"]) == tuple(s["key"])]:
                    waiting.remove(w)
                    running[pool.submit(job, w)] = w
    return done


# ---------------------------------------------------------------------------------------------- regions
def regions_table(sim: Path, scans: int) -> list[tuple[str, str, float, float, float]]:
    from terraseg.datasets import open_dataset
    from terraseg.geometry import region_growing, region_purity, voxel_regions

    frames = list(open_dataset(sim / "lidar", kind="semantickitti", split="train", ontology="sim"))[:scans]
    methods = [("region growing", "defaults (k 16, 10 deg, 3 m)", lambda p: region_growing(p)),
               ("supervoxels", "1 m", lambda p: voxel_regions(p, 1.0)),
               ("supervoxels", "2 m", lambda p: voxel_regions(p, 2.0))]
    rows = []
    for name, params, fn in methods:
        n, hits, total, ms = [], 0.0, 0, []
        for f in frames:
            xyz = np.asarray(f.points[:, :3], dtype=np.float64)
            ok = np.einsum("ij,ij->i", xyz, xyz) > 1e-6
            fn(xyz[ok][:64])  # warm-up (numba)
            t0 = time.perf_counter()
            r = fn(xyz[ok])
            ms.append(1000 * (time.perf_counter() - t0))
            p = region_purity(r, np.asarray(f.point_labels)[ok].astype(np.int64))
            n.append(len(np.unique(r)))
            hits += p.purity * p.points
            total += p.points
        rows.append((name, params, float(np.mean(n)), hits / max(total, 1), float(np.median(ms))))
    return rows


# ---------------------------------------------------------------------------------------------- main
def fmt(vals: list[float]) -> tuple[str, str, str]:
    v = np.array(vals, dtype=np.float64)
    return f"{v.mean():.1f}", f"{v.std(ddof=1):.1f}" if len(v) > 1 else "-", " / ".join(f"{x:.1f}" for x in v)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench_le_"))
    work.mkdir(parents=True, exist_ok=True)
    sim, teacher_data = make_data(work, a)
    t_data = time.perf_counter() - t_start
    t0 = time.perf_counter()
    teacher, teacher_miou = (Path(a.teacher), float("nan")) if a.teacher else train_teacher(work, teacher_data, a)
    t_teacher = time.perf_counter() - t0
    t0 = time.perf_counter()
    targets = teacher_targets(work, sim, a, teacher)
    t_targets = time.perf_counter() - t0

    specs: list[dict[str, Any]] = []
    for seed in a.seed_list:
        specs.append({"key": (seed, "distill-pretrain"), "recipe": distill_recipe(a, work, sim, seed, teacher)})
        specs.append({"key": (seed, "full"), "recipe": run_recipe(a, work, sim, seed, None, "full"), "score": True,
                      "sim": str(sim)})
        for b in a.budget_list:
            for v in VARIANTS:
                s = {"key": (seed, b, v), "recipe": run_recipe(a, work, sim, seed, b, v), "score": True, "sim": str(sim)}
                if v in ("distill", "all"):
                    s["after"] = (seed, "distill-pretrain")
                specs.append(s)
    t0 = time.perf_counter()
    results = run_jobs(specs, a.jobs)
    t_runs = time.perf_counter() - t0
    for r in results.values():
        if "preds" in r:
            r["miou"], r["miou_seen"] = score(r.pop("preds"), sim, targets["val"])

    # teacher alone: argmax of the fused probabilities on the points its views see
    teacher_seen, seen_share = teacher_alone(sim, targets["val"])
    ring_seen, ring_share = teacher_alone(sim, targets["ring"])
    regions = regions_table(sim, 2 if a.smoke else 6)
    wall = time.perf_counter() - t_start
    load1 = os.getloadavg()

    n_train = len(list((sim / "lidar" / "sequences" / "00" / "velodyne").glob("*.bin")))
    n_val = len(list((sim / "lidar" / "sequences" / "08" / "velodyne").glob("*.bin")))
    seeds = a.seed_list
    print(f"# Label-efficient RandLA-Net on simulator scans{' (SMOKE: tiny data, 2 steps; numbers meaningless)' if a.smoke else ''}\n")
    print(f"data    : {n_train} training scans (one drive), {n_val} validation scans (a drive through another world), "
          f"simulator LiDAR '{'smoke' if a.smoke else 'small'}', crops of {a.crop:,} points")
    print(f"runs    : RandLA-Net small, Adam 0.01, cosine, {a.steps} steps per run, {a.distill_steps} distillation steps, "
          f"seeds {', '.join(map(str, seeds))}")
    print(f"teacher : LiteFPN camera model, {a.teacher_steps} steps on {a.teacher_frames} frames of other drives "
          f"(val mIoU there {teacher_miou:.1f} %); real camera view of each scan, {100 * seen_share:.1f} % of the points seen"
          if not a.teacher else f"teacher : {a.teacher}")
    print(f"weights : contrast {a.contrast_weight}, boundary head {a.boundary_weight}, energy {a.energy_weight} "
          f"(margin {a.energy_margin}), distillation {a.distill_loss}\n")
    print("| method | labels | val mIoU % (mean) | std | per seed | mIoU % on camera-seen points |")
    print("|---|---|---|---|---|---|")
    for b in a.budget_list:
        for v in VARIANTS:
            vals = [results[(s, b, v)]["miou"] for s in seeds]
            seen = [results[(s, b, v)]["miou_seen"] for s in seeds]
            m, sd, per = fmt(vals)
            print(f"| {LABELS[v]} | {b} | {m} | {sd} | {per} | {np.mean(seen):.1f} |")
    print(f"| {LABELS['teacher']} (camera image) | none (2D) | - | - | - | {teacher_seen:.1f} |")
    print(f"| {LABELS['teacher']} (ring views coloured by intensity; {100 * ring_share:.0f} % of the points, "
          f"scored there) | none (2D) | - | - | - | {ring_seen:.1f} |")
    m, sd, per = fmt([results[(s, 'full')]["miou"] for s in seeds])
    print(f"| {LABELS['full']} | 100% | {m} | {sd} | {per} | {np.mean([results[(s, 'full')]['miou_seen'] for s in seeds]):.1f} |")
    print()
    lab = {b: results[(seeds[0], b, "ce")]["labels"] for b in a.budget_list}
    print("labelled points: " + "; ".join(f"{b}: {v['labelled_points']:,} of {v['labellable_points']:,} "
                                         f"({100 * v['labelled_share_of_labellable']:.3g} %)" for b, v in lab.items()))
    print()
    print("| regions | params | regions/scan | purity | ms/scan |")
    print("|---|---|---|---|---|")
    for name, params, n, pur, ms in regions:
        print(f"| {name} | {params} | {n:,.0f} | {pur:.3f} | {ms:.1f} |")
    print()
    print("| run | labels | sup | contrast | boundary | energy | free energy at borders | at labelled points |")
    print("|---|---|---|---|---|---|---|---|")
    for b in a.budget_list:
        for v in VARIANTS:
            ls = [results[(s, b, v)]["losses"] for s in seeds]

            def g(k: str, ls: list[dict[str, float]] = ls) -> str:
                vals = [x[k] for x in ls if k in x]
                return f"{np.mean(vals):.3f}" if vals else "-"
            print(f"| {LABELS[v]} | {b} | {g('loss_sup')} | {g('loss_contrast')} | {g('loss_boundary')} | "
                  f"{g('loss_energy')} | {g('energy_border')} | {g('energy_labelled')} |")
    print()
    run_s = [r["seconds"] for r in results.values()]
    print(f"time    : {wall:.0f} s wall ({wall / 60:.1f} min): data {t_data:.0f} s, teacher {t_teacher:.0f} s, "
          f"teacher targets {t_targets:.0f} s ({targets['computed']} scans), {len(results)} trainings {t_runs:.0f} s "
          f"({np.mean(run_s):.0f} s each, {a.jobs} at a time)")
    print(f"machine : {os.cpu_count()} cores, load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end; "
          f"torch 1 thread per training")
    print(f"work    : {work}")
    if not a.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
