"""Benchmark: the sparse voxel U-Net and its pure-PyTorch sparse convolution.

Three tables, every ratio against a reference measured in the same run:

1. **Whole-scan inference** (``predict_scan`` on one scan, random weights, 20 classes): the voxel
   U-Net presets against RandLA-Net (``default`` and ``small``, the reference: ``x randla`` is
   the total time over RandLA-Net ``default``'s). Columns: ``pre`` (voxelisation / RandLA-Net's
   neighbour hierarchy), ``net`` (forward pass and softmax), ``post``, ``total``, ``min`` total,
   ``cpu`` (process CPU time of a run, all threads), ``peak MB`` (peak resident memory of one
   prediction above the level before it: ``VmHWM`` reset per row on Linux; CUDA:
   ``max_memory_allocated``).
2. **Convolution forward** on the voxels of the same scan (5 cm): a submanifold 3x3x3
   convolution at several widths, the pure-PyTorch ``mm`` method (per-offset gather / matmul /
   scatter-add) and ``gemm`` method (gathered im2col blocks) against spconv's CPU forward
   (``x spconv``; goal <= 2). spconv 2.3.8's CPU kernels race with more than one thread (20
   calls on 2 threads gave 20 different results), so spconv runs on one thread and the pure
   convolution is timed on one thread too for the ratio (``mm 1t``) as well as on all threads.
   The kernel map (built once per level and reused) is timed separately (``map`` row).
   Without spconv the spconv columns say ``n/a``.
3. **Training step** (forward, loss, backward, SGD update) on the whole scan for the voxel
   presets, against RandLA-Net ``small`` on the same points (``x randla``).

With a CUDA device (``--device cuda``) the convolution table times forward + backward of the
pure convolution against spconv's CUDA kernels instead.

Scan: the RELLIS-3D frame 104 Ouster OS1-64 scan (131,072 points, 77,708 returns) from
``../shared/data``; without it (or with ``--synthetic``) a synthetic organised 64 x 2048 scan.

Usage::

    python benchmarks/bench_voxel.py [--repeats 5] [--threads N] [--models voxelunet:small,...]
        [--widths 32,64,96] [--synthetic] [--points N] [--device cpu|cuda]

A voxel U-Net entry may name its sparse-convolution backend: ``voxelunet:small@spconv``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import PeakMemory, cpu_model
from _synthetic import organized_scan

from terraseg.models.points import build_point_model, predict_scan, spconv_available, voxelize
from terraseg.models.points.sparse_conv import SparseTensor, sparse_conv, submanifold_map

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS = ("randlanet:default", "randlanet:small", "voxelunet:small", "voxelunet:default", "voxelunet:minkunet34",
          "voxelunet:scn")
TRAIN_MODELS = ("randlanet:small", "voxelunet:small", "voxelunet:scn")
NUM_CLASSES = 20


def load_scan(data: Path, synthetic: bool, points: int | None) -> tuple[np.ndarray, str]:
    """(points (N, 4), description)."""
    from terraseg.io.scans import read_bin

    path = data / "rellis3d" / "000104.bin"
    if not synthetic and path.is_file():
        pts, what = read_bin(path), f"RELLIS-3D frame 104 ({path})"
    else:
        pts, what = organized_scan(), "synthetic organised 64 x 2048 scan (shared data not used)"
    if points is not None and points < len(pts):
        pts = pts[np.random.default_rng(0).choice(len(pts), points, replace=False)]
        what += f", {points:,}-point random subset"
    return pts, what


def timed(fn: Any, repeats: int, warmup: int, device: torch.device) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def build(spec: str, device: torch.device) -> Any:
    """A random-weight model from ``arch:preset[@backend]`` (backend: voxel U-Net ``torch`` / ``spconv``)."""
    name, _, backend = spec.partition("@")
    arch, preset = name.split(":")
    torch.manual_seed(0)
    extra = {"backend": backend} if backend else {}
    return build_point_model(arch, NUM_CLASSES, in_channels=4 if arch == "voxelunet" else 3, preset=preset,
                             **extra).to(device)


def one_thread(fn: Any) -> Any:
    def run() -> Any:
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(n)
    return run


# ---------------------------------------------------------------------------------- inference
def inference_table(pts: np.ndarray, models: list[str], args: argparse.Namespace, device: torch.device) -> None:
    rows = []
    for spec in models:
        arch = spec.split(":")[0]
        model = build(spec, device).eval()
        opts: dict[str, Any] = {"seed": 0} if arch == "randlanet" else {}
        last: dict[str, Any] = {}

        def run(model: Any = model, opts: dict[str, Any] = opts, last: dict[str, Any] = last) -> None:
            last["pred"] = predict_scan(model, pts, **opts)

        walls, cpus = [], []
        for _ in range(args.warmup):
            run()
        timings = []
        for _ in range(args.repeats):
            w, c = timed(run, 1, 0, device)
            walls += w
            cpus += c
            timings.append(last["pred"].timings)
        with PeakMemory(device if device.type == "cuda" else None) as peak:
            run()
        med = {k: statistics.median(t[k] for t in timings) for k in timings[0]}
        rows.append((spec, sum(p.numel() for p in model.parameters()), med, statistics.median(walls), min(walls),
                     statistics.median(cpus), peak.peak_mb, int(last["pred"].valid.sum())))
        del model
    ref = next((r[3] for r in rows if r[0] == "randlanet:default"), rows[0][3])
    print(f"\nWhole-scan inference ({rows[0][7]:,} points with a return), ms")
    header = (f"{'model':<22} {'params':>7} {'pre':>6} {'net':>7} {'post':>5} {'total':>7} {'min':>7} {'cpu':>7} "
              f"{'peak MB':>8} {'x randla':>8}")
    print(header)
    print("-" * len(header))
    for spec, params, med, total, best, cpu, peak_mb, _ in rows:
        peak_s = f"{peak_mb:8.0f}" if peak_mb is not None else f"{'n/a':>8}"
        print(f"{spec:<22} {params / 1e6:6.2f}M {med['preprocess'] * 1e3:6.0f} {med['network'] * 1e3:7.0f} "
              f"{med['postprocess'] * 1e3:5.0f} {total * 1e3:7.0f} {best * 1e3:7.0f} {cpu * 1e3:7.0f} {peak_s} "
              f"{total / ref:8.2f}")


# ------------------------------------------------------------------------------- convolution
def conv_table(pts: np.ndarray, widths: list[int], args: argparse.Namespace, device: torch.device) -> None:
    v = voxelize([pts[np.isfinite(pts).all(axis=1) & (np.abs(pts[:, :3]).sum(axis=1) > 0)]], 0.05)
    coords = v["coords"].to(device)
    x = SparseTensor.from_voxels(torch.zeros(len(coords), 1, device=device), coords)
    keys = x.context.levels[1][1]
    km = submanifold_map(keys, 3)
    have_sp = spconv_available()
    cuda = device.type == "cuda"
    mode = "forward + backward" if cuda else "forward"
    print(f"\nSubmanifold 3x3x3 convolution {mode}, {km.n_in:,} voxels of 5 cm, {km.pairs() / km.n_in:.2f} pairs "
          f"per voxel, ms (spconv {'installed' if have_sp else 'not installed'})")
    walls, _ = timed(lambda: submanifold_map(keys, 3), args.repeats, args.warmup, device)
    print(f"kernel map (once per level, shared by its convolutions): {statistics.median(walls) * 1e3:.1f} ms")
    if cuda:
        header = f"{'C in=out':>8} {'mm':>8} {'gemm':>8} {'spconv':>8} {'x spconv':>9}"
    else:
        header = f"{'C in=out':>8} {'mm':>8} {'gemm':>8} {'mm 1t':>8} {'spconv 1t':>9} {'x spconv':>9}"
    print(header)
    print("-" * len(header))
    for c in widths:
        torch.manual_seed(c)
        f = torch.randn(km.n_in, c, device=device, requires_grad=cuda)
        # a leaf (the scaling inside it): a non-leaf weight's graph is freed by the first backward
        w = (torch.randn(27, c, c, device=device) / np.sqrt(27 * c)).requires_grad_(cuda)

        def pure(method: str, f: torch.Tensor = f, w: torch.Tensor = w) -> Any:
            def run() -> None:
                if cuda:
                    out = sparse_conv(f, w, km, method=method)
                    out.backward(torch.ones_like(out))
                else:
                    with torch.no_grad():
                        sparse_conv(f, w, km, method=method)
            return run

        t_mm = statistics.median(timed(pure("mm"), args.repeats, args.warmup, device)[0])
        t_gemm = statistics.median(timed(pure("gemm"), args.repeats, args.warmup, device)[0])
        t_sp = None
        if have_sp:
            t_sp = statistics.median(timed(spconv_runner(f, w, coords, cuda), args.repeats, args.warmup, device)[0])
        if cuda:
            ratio = f"{t_mm / t_sp:9.2f}" if t_sp else f"{'n/a':>9}"
            sp_s = f"{t_sp * 1e3:8.1f}" if t_sp else f"{'n/a':>8}"
            print(f"{c:8d} {t_mm * 1e3:8.1f} {t_gemm * 1e3:8.1f} {sp_s} {ratio}")
        else:
            t_1 = statistics.median(timed(one_thread(pure("mm")), args.repeats, args.warmup, device)[0])
            ratio = f"{t_1 / t_sp:9.2f}" if t_sp else f"{'n/a':>9}"
            sp_s = f"{t_sp * 1e3:9.1f}" if t_sp else f"{'n/a':>9}"
            print(f"{c:8d} {t_mm * 1e3:8.1f} {t_gemm * 1e3:8.1f} {t_1 * 1e3:8.1f} {sp_s} {ratio}")
    if not cuda:
        print("(x spconv = mm 1t / spconv 1t: both on one thread; goal <= 2)")


def spconv_runner(f: torch.Tensor, w: torch.Tensor, coords: torch.Tensor, cuda: bool) -> Any:
    """spconv's submanifold convolution of the same voxels and weights (indices built once)."""
    import spconv.pytorch as spconv

    c = f.shape[1]
    shape = [int(v) + 1 for v in coords[:, 1:].amax(dim=0).tolist()]
    conv = spconv.SubMConv3d(c, c, 3, bias=False, indice_key="bench").to(f.device)
    with torch.no_grad():
        conv.weight.copy_(w.detach().permute(2, 0, 1).reshape(c, 3, 3, 3, c))
    sp = spconv.SparseConvTensor(f.detach(), coords.to(torch.int32), shape, 1)
    with torch.no_grad():
        first = conv(sp)  # builds and caches the indice pairs under "bench"

    def run() -> None:
        inp = first.replace_feature(f)
        if cuda:
            out = conv(inp).features
            out.backward(torch.ones_like(out))
        else:
            with torch.no_grad():
                conv(inp)
    return run if cuda else one_thread(run)


# ---------------------------------------------------------------------------------- training
def train_table(pts: np.ndarray, models: list[str], args: argparse.Namespace, device: torch.device) -> None:
    from terraseg.models.points import collate_randla, randla_inputs
    from terraseg.models.points.randla_data import inputs_to
    from terraseg.models.points.voxelize import inputs_to_device

    valid = pts[np.isfinite(pts).all(axis=1) & (np.abs(pts[:, :3]).sum(axis=1) > 0)]
    target = torch.from_numpy(np.random.default_rng(0).integers(0, NUM_CLASSES, len(valid))).to(device)
    rows = []
    for spec in models:
        arch = spec.split(":")[0]
        model = build(spec, device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if arch == "voxelunet":
            batch = inputs_to_device(voxelize([valid], model.config.voxel_size), device)

            def logits(model: Any = model, batch: Any = batch) -> torch.Tensor:
                return model(batch)
        else:
            cfg = model.config
            batch = inputs_to(collate_randla([randla_inputs(valid[:, :3], valid[:, :cfg.in_channels], k=cfg.k,
                                                            ratios=cfg.ratios)]), device)

            def logits(model: Any = model, batch: Any = batch) -> torch.Tensor:
                return model(batch)[0]

        def step(opt: Any = opt, logits: Any = logits) -> None:
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(logits(), target)
            loss.backward()
            opt.step()

        walls, cpus = timed(step, args.repeats, max(args.warmup, 1), device)
        rows.append((spec, statistics.median(walls), min(walls), statistics.median(cpus)))
    ref = next((r[1] for r in rows if r[0] == "randlanet:small"), rows[0][1])
    print(f"\nTraining step on the whole scan ({len(valid):,} points; forward, cross-entropy, backward, SGD), ms")
    header = f"{'model':<22} {'step':>8} {'min':>8} {'cpu':>8} {'x randla':>8}"
    print(header)
    print("-" * len(header))
    for spec, med, best, cpu in rows:
        print(f"{spec:<22} {med * 1e3:8.0f} {best * 1e3:8.0f} {cpu * 1e3:8.0f} {med / ref:8.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs, median reported (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default)")
    ap.add_argument("--models", default=",".join(MODELS), help="inference table: comma-separated arch:preset, "
                    "voxel U-Nets optionally @torch or @spconv (the backend)")
    ap.add_argument("--train-models", default=",".join(TRAIN_MODELS), help="training table: arch:preset list "
                    "(empty: skip)")
    ap.add_argument("--widths", default="16,32,64,96", help="convolution table: channel widths (empty: skip)")
    ap.add_argument("--points", type=int, default=None, help="use a random subset of this many points (quick runs)")
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic scan even if shared data exists")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device")
    pts, what = load_scan(args.data, args.synthetic, args.points)
    print("Sparse voxel U-Net benchmark (eager PyTorch, random weights)")
    print(f"  machine : {cpu_model()}, os.cpu_count()={os.cpu_count()}, torch threads={torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}" + (f", {torch.cuda.get_device_name(device)}"
                                                       if device.type == "cuda" else ""))
    print(f"  versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"  timing  : median of {args.repeats} runs after {args.warmup} warm-up run(s)")
    print(f"  scan    : {what}: {len(pts):,} points")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if models:
        inference_table(pts, models, args, device)
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    if widths:
        conv_table(pts, widths, args, device)
    train_models = [m.strip() for m in args.train_models.split(",") if m.strip()]
    if train_models:
        train_table(pts, train_models, args, device)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
