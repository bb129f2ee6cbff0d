"""Source-free cross-modal adaptation with active queries on the simulator (issue 20, reference 002).

Scenario SOURCE:TARGET (default forest-day -> forest-fog, the largest gap bench_domain_gap.py
measured). Every number comes from a printed ``terraseg`` command run in this process:

1. ``terraseg sim`` for both sides (the datasets of bench_domain_gap.py: same names, same seeds, so
   its ``--work/data`` folders are reused, e.g. through symbolic links);
2. the gap check: a cross-modal model (configs/sim_xmuda.yaml, fixed ``--train-steps``) trained on
   the source and one trained on the target, both scored on the target's test drive; the
   target-supervised one must beat source-only by >= 5 mIoU (2D+3D), else the domains are too close;
3. rows: source-only; ``terraseg adapt`` with pseudo-labels + the target cross-modal KL (no
   queries); the same with a 1 % budget per strategy (one round at the start, the oracle labels the
   queried points); the target-supervised ceiling. Columns: 2D, 3D and 2D+3D mIoU on the target's
   test frames (``terraseg eval``), mean +- std over the seeds, each run scored at its last step
   (no model selection on the test set), and the number of labelled target points the row used.

Datasets, checkpoints and scores in ``--work`` are reused by a later run with the same arguments.

Usage:
    python benchmarks/bench_adaptation.py --work runs/adaptation              # the defaults (< 30 min, 2 cores)
    python benchmarks/bench_adaptation.py --work runs/adaptation --strategies random,knn_entropy@0.5
    python benchmarks/bench_adaptation.py --work runs/big --jobs 3 --train-frames 0 --max-points 4096 \
        --train-steps 1500 --adapt-steps 400      # seeds in parallel (many cores; data loading bounds a GPU)
    python benchmarks/bench_adaptation.py --smoke                             # the pipeline only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_domain_gap import Bench, fmt, parse_scenarios, terraseg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "configs" / "sim_xmuda.yaml"
ALL_STRATEGIES = ("random", "confidence", "margin", "entropy", "knn_entropy", "regions", "voxel_entropy", "redal")
SMOKE_STRATEGIES = ("random", "entropy")
"""What ``--smoke`` runs unless ``--strategies`` is given (the default is all eight)."""
DEFAULT_SEEDS = "0,1,2"


class AdaptBench(Bench):
    """bench_domain_gap's datasets and command runner, plus cross-modal training, adaptation and eval."""

    def common(self, steps: int) -> list[str]:
        a = self.a
        over = [f"trainer.max_steps={steps}", "trainer.max_epochs=null", "trainer.max_time_s=null",
                f"trainer.val_every_steps={steps}", "schedule.horizon=steps",
                f"schedule.warmup_iters={min(20, max(steps // 5, 1))}", f"data.max_points={a.max_points}",
                f"data.max_train_frames={a.train_frames}" if a.train_frames else "data.max_train_frames=null",
                f"data.max_val_frames={a.val_frames}", *a.set]
        return over

    def train(self, data: Path, seed: int) -> Path:  # type: ignore[override]
        steps = self.a.train_steps
        name = f"{data.name}-xmuda-s{seed}-{steps}steps"
        ckpt = self.work / "runs" / name / "checkpoints" / "last.pth"
        if ckpt.is_file():
            return ckpt
        over = [f"data.root={data}", f"output={self.work / 'runs'}", f"name={name}", f"seed={seed}",
                *self.common(steps)]
        terraseg(["train", str(RECIPE), *over, "--overwrite", "-q"], self.log)
        return ckpt

    def adapt(self, source: Path, target: Path, seed: int, strategy: str | None, random_fraction: float = 0.0) -> Path:
        a = self.a
        tag = "pl" if strategy is None else f"{strategy}-{a.budget:g}pct"
        tag += f"-r{random_fraction * 100:g}" if random_fraction else ""
        name = f"{source.parents[1].name}--adapt-{target.name}-{tag}-{a.adapt_steps}steps"
        run = self.work / "runs" / name
        ckpt = run / "checkpoints" / "last.pth"
        if ckpt.is_file():
            return ckpt
        recipe = self.work / "adapt.yaml"
        if not recipe.is_file():
            d = yaml.safe_load(RECIPE.read_text())
            d["name"] = "adapt"
            d["loss"] = [{"name": "ce"}]  # xMUDA's pseudo-label loss: no class weights (they would need target labels)
            d["adapt"] = {"source": "", "lambda_pl": 1.0, "lambda_query": 1.0,
                          "pseudo_labels": {"use": "own"}, "active": {"strategy": None}}
            recipe.parent.mkdir(parents=True, exist_ok=True)
            recipe.write_text("# written by benchmarks/bench_adaptation.py\n" + yaml.safe_dump(d, sort_keys=False))
        over = [f"data.root={target}", f"output={self.work / 'runs'}", f"name={name}", f"seed={seed}",
                f"adapt.source={source}", f"fusion.lambda_xm_trg={a.lambda_xm_trg}", f"optim.lr={a.adapt_lr}",
                *self.common(a.adapt_steps)]
        if strategy is not None:
            over += [f"adapt.active.strategy={strategy}", f"adapt.active.budget={a.budget}", "adapt.active.at=[0.0]",
                     "adapt.active.annotator=oracle"]
            over += [f"adapt.active.options.random_fraction={random_fraction:g}"] if random_fraction else []
        terraseg(["adapt", str(recipe), *over, "--overwrite", "-q"], self.log)
        return ckpt

    def scores(self, ckpt: Path, data: Path) -> dict[str, float]:
        """Target-test mIoU (percent) of a cross-modal checkpoint: 2d, 3d, 2d+3d."""
        out = self.work / "evals" / f"{ckpt.parents[1].name}--on--{data.name}"
        if not (out / "modalities.json").is_file():
            terraseg(["eval", str(ckpt), "--data", str(data), "--kind", "sim", "--split", "test", "--out", str(out),
                      "-q"], self.log)
        get = lambda p: float(json.loads(p.read_text())["summary"]["mIoU"])  # noqa: E731
        return {"2d": get(out / "2d" / "metrics.json"), "3d": get(out / "3d" / "metrics.json"),
                "2d+3d": get(out / "metrics.json")}


def labelled_points(ckpt: Path) -> int:
    """Labelled target points an adaptation run used (oracle labels of non-ignored classes)."""
    state = ckpt.parents[1] / "adapt_state.json"
    if not state.is_file():
        return 0
    rounds = json.loads(state.read_text())["rounds"]
    return int(rounds[-1]["labelled_points"] or 0) if rounds else 0


def target_labelled_points(bench: AdaptBench, data: Path) -> int:
    """In-view labelled points of the target's training frames the supervised ceiling used."""
    from terraseg.datasets import open_dataset
    from terraseg.models.fusion.view import frame_view
    from terraseg.ontology import get_ontology

    ds = open_dataset(data, kind="sim", split="train")
    n = len(ds) if not bench.a.train_frames else min(len(ds), bench.a.train_frames)
    onto = get_ontology("sim")
    ignored = np.asarray(sorted(onto.ignore_ids), dtype=np.int64)
    total = 0
    for i in range(n):
        f = ds[i]
        lab = np.asarray(f.point_labels)[frame_view(f).index]
        total += int((~np.isin(lab, ignored)).sum())
    return total


def run_seeds_apart(argv: list[str], seeds: list[int], jobs: int, threads: int, work: Path) -> None:
    """Run each seed's trainings, adaptations and evaluations in its own process (``jobs`` at a time),
    each logging to ``work/seed-S.log``; the caller then reuses their results for the table."""
    import subprocess

    per = threads or max(1, (os.cpu_count() or 1) // jobs)
    pending, running = list(seeds), []
    failed: list[tuple[int, Path]] = []
    while pending or running:
        while pending and len(running) < jobs:
            s = pending.pop(0)
            log = work / f"seed-{s}.log"
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--seeds", str(s), "--jobs", "1",
                   "--threads", str(per)]
            print(f"$ {' '.join(cmd[1:])}  > {log}", flush=True)
            running.append((s, log, subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)))
        time.sleep(2)
        for item in list(running):
            s, log, proc = item
            if proc.poll() is not None:
                running.remove(item)
                print(f"  seed {s}: exit status {proc.returncode}", flush=True)
                if proc.returncode:
                    failed.append((s, log))
    if failed:
        s, log = failed[0]
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise RuntimeError(f"seed {s} failed ({len(failed)} seed(s) in all); the end of {log}:\n{tail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="runs/adaptation", help="folder for datasets, runs and scores (reused)")
    p.add_argument("--scenario", default="forest-day:forest-fog", help="SOURCE:TARGET, a side DOMAIN[@LIDAR]")
    p.add_argument("--seeds", default=DEFAULT_SEEDS, help="training seeds (mean +- std over them)")
    p.add_argument("--data-seed", type=int, default=1, help="world seed of the source (target: + 10)")
    p.add_argument("--frames", type=int, default=240, help="frames per dataset (60/20/20 %% train/val/test)")
    p.add_argument("--camera", default="small")
    p.add_argument("--lidar", default="small")
    p.add_argument("--train-frames", type=int, default=30, help="training frames used per run (0: all)")
    p.add_argument("--val-frames", type=int, default=4, help="validation frames (logging only; scores are on test)")
    p.add_argument("--max-points", type=int, default=1024, help="in-view points per training sample")
    p.add_argument("--train-steps", type=int, default=400, help="steps of the source-only and target models")
    p.add_argument("--adapt-steps", type=int, default=100, help="steps of each adaptation run")
    p.add_argument("--adapt-lr", type=float, default=1e-3, help="learning rate of adaptation (Adam)")
    p.add_argument("--lambda-xm-trg", type=float, default=0.1, help="target cross-modal KL weight (xMUDA 0.1)")
    p.add_argument("--budget", type=float, default=1.0, help="percent of each scan's in-view points labelled")
    p.add_argument("--strategies", default=None,
                   help="comma-separated, or all (the default; --smoke: random,entropy); NAME@F draws the share F "
                        "of each frame's budget at random first (adapt.active.options.random_fraction)")
    p.add_argument("--threads", type=int, default=0, help="torch / numba threads (0: all cores, split between jobs)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at once, one process each (a GPU or many cores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a recipe override for every train and adapt run (e.g. trainer.precision=32); run names "
                        "do not show it, so give such runs their own --work")
    p.add_argument("--smoke", action="store_true", help="6 frames, tiny camera, 2 steps, 1 seed (unless --seeds), 2 strategies")
    a = p.parse_args(argv)
    if a.smoke:
        a.frames, a.camera, a.train_steps, a.adapt_steps = 6, "tiny", 2, 2
        a.seeds = "0" if a.seeds == DEFAULT_SEEDS else a.seeds
        a.train_frames, a.val_frames, a.max_points = 0, 1, 512
        a.strategies = a.strategies or ",".join(SMOKE_STRATEGIES)
    a.strategies = a.strategies or "all"
    tokens = list(ALL_STRATEGIES) if a.strategies == "all" else [s.strip() for s in a.strategies.split(",") if s.strip()]
    strategies: list[tuple[str, float]] = []
    for tok in tokens:
        name, _, frac = tok.partition("@")
        if name not in ALL_STRATEGIES:
            p.error(f"--strategies: unknown {name!r} (known: {', '.join(ALL_STRATEGIES)}, or all)")
        try:
            f = float(frac) if frac else 0.0
        except ValueError:
            f = -1.0
        if not 0.0 <= f <= 1.0:
            p.error(f"--strategies: {tok!r}: the share after @ is the random fraction, a number in [0, 1]")
        strategies.append((name, f))
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
        os.environ["NUMBA_NUM_THREADS"] = str(a.threads)
    (src, tgt), *rest = parse_scenarios(a.scenario, a.lidar)
    if rest:
        p.error("--scenario takes one SOURCE:TARGET")
    seeds = [int(s) for s in a.seeds.split(",")]
    bench = AdaptBench(a)
    t0 = time.perf_counter()
    d_src, d_tgt = bench.data(src, "source"), bench.data(tgt, "target")
    if a.jobs > 1 and len(seeds) > 1:
        run_seeds_apart(list(sys.argv[1:] if argv is None else argv), seeds, a.jobs, a.threads, bench.work)

    rows: list[tuple[str, dict[str, list[float]], str]] = []

    def collect(label: str, ckpts: list[Path], points: str) -> dict[str, list[float]]:
        per: dict[str, list[float]] = {"2d": [], "3d": [], "2d+3d": []}
        for c in ckpts:
            for k, v in bench.scores(c, d_tgt).items():
                per[k].append(v)
        rows.append((label, per, points))
        return per

    sources = [bench.train(d_src, s) for s in seeds]
    targets = [bench.train(d_tgt, s) for s in seeds]
    so = collect("source-only", sources, "0")
    ts_points = target_labelled_points(bench, d_tgt)
    ts = collect("target-supervised (ceiling)", targets, f"{ts_points}")
    gap = float(np.mean(ts["2d+3d"]) - np.mean(so["2d+3d"]))
    print()
    print(f"gap check ({src.key} -> {tgt.key}, 2D+3D mIoU on the target test drive): source-only "
          f"{fmt(so['2d+3d'])}, target-supervised {fmt(ts['2d+3d'])}, gap {gap:.1f} points: "
          + ("ok (>= 5)" if gap >= 5 else "TOO SMALL (< 5): the domains are too close to show adaptation"), flush=True)
    ceiling = rows.pop()
    collect("adapt: pseudo-labels + xM", [bench.adapt(s, d_tgt, seed, None) for s, seed in zip(sources, seeds)], "0")
    for strat, frac in strategies:
        ck = [bench.adapt(s, d_tgt, seed, strat, frac) for s, seed in zip(sources, seeds)]
        n = [labelled_points(c) for c in ck]
        label = f"adapt + {a.budget:g} % {strat}" + (f" ({frac * 100:g} % of it random)" if frac else "")
        collect(label, ck, f"{np.mean(n):.0f}")
    rows.append(ceiling)

    print()
    print(f"adaptation {src.key} -> {tgt.key}: mIoU (%) on the target's test drive, mean +- std over seeds {a.seeds}; "
          f"{a.frames} frames per dataset ({a.camera} camera, {a.train_frames or 'all'} training frames per run), "
          f"source / target models {a.train_steps} steps, adaptation {a.adapt_steps} steps (lr {a.adapt_lr:g}), "
          f"{a.max_points} points per sample; every run scored at its last step"
          + (f"; overrides {' '.join(a.set)}" if a.set else ""))
    print()
    header = ("row", "2D", "3D", "2D+3D", "labelled target points")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for label, per, points in rows:
        print(f"| {label} | {fmt(per['2d'])} | {fmt(per['3d'])} | {fmt(per['2d+3d'])} | {points} |")
    print()
    print(f"{len(bench.log)} command(s) run, {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
