"""Benchmark: whole-scan LiDAR segmentation on the CPU (RandLA-Net and SalsaNext, eager PyTorch).

What is measured
----------------
``predict_scan`` on one full scan, randomly initialised networks (20 classes; the speed of these
dense operations does not depend on the weights: a check found no float32 denormals in the
activations of the random networks), for every architecture / preset:

- RandLA-Net ``default`` (d_out 16-64-128-256, paper) and ``small`` (8-32-64-128); features
  x, y, z; the whole scan in one pass (no repeated random crops).
- SalsaNext ``default`` (base 32, paper), ``small`` (base 16) and ``tiny`` (base 8); input
  range, x, y, z, intensity on a 64 x 2048 range image.

Columns: ``pre`` = pre-processing (RandLA-Net: neighbour / sub-sampling hierarchy with scipy
k-d trees; SalsaNext: range projection and normalisation), ``net`` = forward pass + softmax,
``post`` = per-point labels (SalsaNext: kNN back-projection), ``total``; medians over
``--repeats`` runs after one warm-up, the minimum total, and ``cpu``, the median process CPU
time of a run (all threads; on a shared virtual machine with CPU steal it is steadier than
wall time, and wall time on an idle machine lies between ``cpu / threads`` and ``cpu``). Memory: ``peak RSS`` is
``getrusage(RUSAGE_SELF).ru_maxrss`` of a fresh worker process per model minus its RSS just
before the first prediction (scan, model and libraries loaded), i.e. the peak working memory of
inference; ``numpy peak`` is the ``tracemalloc`` peak of one extra, untimed run (numpy and
Python allocations only; torch tensors are not traced).

Scans: the RELLIS-3D frame 104 Ouster OS1-64 scan (131,072 points, 77,708 returns; range
network on its organised 64 x 2048 layout with the RELLIS-3D SalsaNext normalisation) and,
with ``--scan kitti`` or ``both``, SemanticKITTI 00/000000 (123,389 points, HDL-64E, spherical
projection, kNN post-processing of the 21 % of points that share a pixel). Without the shared
data (or with ``--synthetic``) a synthetic organised 64 x 2048 scan is used.

The second table compares the two kNN back-projection methods of
:mod:`terraseg.models.points.range_post` on the SemanticKITTI scan with *oracle* pixel labels
(each pixel carries the ground-truth label of its point), so the accuracy of the labels given
to the points that share a pixel measures the post-processing alone.

Goals (project context): range network through ONNX Runtime at most 100 ms (ONNX export comes
later; this measures eager PyTorch), RandLA-Net at most 2 s per scan.

Usage::

    python benchmarks/bench_models_points.py [--repeats 5] [--threads N] [--scan rellis|kitti|both]
        [--models randlanet:default,salsanext:tiny] [--synthetic] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from _common import cpu_model
from _synthetic import organized_scan

from terraseg.models.points import (
    SOURCE_FALLBACK,
    SOURCE_VOTE,
    KNNPost,
    OrganizedLayout,
    build_point_model,
    points_from_pixels,
    predict_scan,
)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS = ("randlanet:default", "randlanet:small", "salsanext:default", "salsanext:small", "salsanext:tiny")
NUM_CLASSES = 20


def load_scan(scan: str, data: Path, use_synthetic: bool) -> tuple[np.ndarray, str, object, str]:
    """(points, description, range projection, SalsaNext normalisation) of a scan."""
    from terraseg.io.scans import read_bin

    rellis = data / "rellis3d" / "000104.bin"
    kitti = data / "spvnas" / "000000.bin"
    if scan == "kitti" and not use_synthetic and kitti.is_file():
        return read_bin(kitti), f"SemanticKITTI 00/000000 ({kitti})", "velodyne-hdl64e", "semantickitti"
    if scan == "rellis" and not use_synthetic and rellis.is_file():
        return read_bin(rellis), f"RELLIS-3D frame 104 ({rellis})", OrganizedLayout(64, 2048), "rellis3d"
    return organized_scan(intensity_max=0.01), "synthetic organised 64 x 2048 scan (shared data not used)", OrganizedLayout(64, 2048), \
        "rellis3d"


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def worker(model_spec: str, scan: str, repeats: int, data: Path, use_synthetic: bool) -> dict[str, object]:
    """Time one model on one scan (run in a fresh process so that its peak RSS is its own)."""
    arch, preset = model_spec.split(":")
    pts, what, projection, norm = load_scan(scan, data, use_synthetic)
    torch.manual_seed(0)
    extra = {"normalization": norm} if arch == "salsanext" else {}
    model = build_point_model(arch, NUM_CLASSES, preset=preset, **extra).eval()
    options = {"projection": projection} if arch == "salsanext" else {"seed": 0}
    base_rss = rss_mb()
    predict_scan(model, pts, **options)  # warm-up (allocator, oneDNN primitives)
    runs = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        pred = predict_scan(model, pts, **options)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        runs.append({**pred.timings, "total": total, "cpu": cpu})
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    tracemalloc.start()  # one more, untimed run for the numpy / Python allocation peak
    predict_scan(model, pts, **options)
    _, np_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {"model": model_spec, "scan": what, "points": len(pts), "valid": int(pred.valid.sum()),
            "params": sum(p.numel() for p in model.parameters()), "median": med,
            "min_total": min(r["total"] for r in runs), "peak_rss_mb": peak_rss - base_rss,
            "numpy_peak_mb": np_peak / 2**20, "threads": torch.get_num_threads()}


def run_worker(model_spec: str, scan: str, args: argparse.Namespace) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--worker", model_spec, "--scan", scan, "--repeats", str(args.repeats),
           "--data", str(args.data)] + (["--synthetic"] if args.synthetic else [])
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker {model_spec} on {scan} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def knn_comparison(data: Path, repeats: int) -> list[tuple[str, float, float, float, int]]:
    """(method, median ms, accuracy on points sharing a pixel, overall accuracy, voted points)
    with oracle pixel labels on the SemanticKITTI scan; [] without the data."""
    from terraseg.geometry import project_scan
    from terraseg.io.scans import read_bin, read_label

    bin_path, label_path = data / "spvnas" / "000000.bin", data / "spvnas" / "000000.label"
    if not (bin_path.is_file() and label_path.is_file()):
        return []
    pts = read_bin(bin_path)
    raw, _ = read_label(label_path, len(pts))
    _, gt = np.unique(raw, return_inverse=True)
    c = int(gt.max()) + 1
    ri = project_scan(pts, "velodyne-hdl64e")
    pix_lab = np.zeros(ri.shape, dtype=np.int64)
    pix_lab[ri.mask] = gt[ri.index[ri.mask]]
    pix_prob = np.eye(c, dtype=np.float32)[pix_lab]
    valid = np.ones(len(pts), dtype=bool)
    owner = np.zeros(len(pts), dtype=bool)
    owner[ri.index[ri.mask]] = True
    sharers = ~owner & ri.has_pixel
    rows = []
    naive = ri.to_points(pix_lab)
    rows.append(("own pixel (no kNN)", 0.0, float((naive[sharers] == gt[sharers]).mean()),
                 float((naive == gt).mean()), 0))
    for method in ("range", "kdtree"):
        post = KNNPost(method=method)
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            labels, _, source = points_from_pixels(ri, pix_lab, pix_prob, pts[:, :3], valid, post)
            times.append(time.perf_counter() - t0)
        voted = int(np.isin(source, (SOURCE_VOTE, SOURCE_FALLBACK)).sum())
        rows.append((f"kNN {method}", statistics.median(times[1:]) * 1e3,
                     float((labels[sharers] == gt[sharers]).mean()), float((labels == gt).mean()), voted))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per model, median reported (default 5)")
    ap.add_argument("--threads", type=int, default=0, help="torch / OpenMP threads (default: torch's default)")
    ap.add_argument("--scan", choices=("rellis", "kitti", "both"), default="rellis", help="scan(s) to run on")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated arch:preset list")
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic scan even if shared data exists")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    if args.worker:
        print(json.dumps(worker(args.worker, args.scan, args.repeats, args.data, args.synthetic)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)

    scans = ("rellis", "kitti") if args.scan == "both" else (args.scan,)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print("LiDAR segmentation models benchmark (CPU, eager PyTorch, random weights)")
    print(f"  machine : {cpu_model()}, os.cpu_count()={os.cpu_count()}, "
          f"torch threads={args.threads or torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"  versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"  timing  : median of {args.repeats} runs after a warm-up, milliseconds")
    for scan in scans:
        results = [run_worker(m, scan, args) for m in models]
        print()
        print(f"Scan: {results[0]['scan']}: {results[0]['points']:,} points, {results[0]['valid']:,} with a return")
        header = (f"{'model':<18} {'params':>7} {'pre':>7} {'net':>8} {'post':>6} {'total':>8} {'min':>8} "
                  f"{'cpu':>8} {'peak RSS MB':>11} {'numpy MB':>8}")
        print(header)
        print("-" * len(header))
        for r in results:
            med = r["median"]
            print(f"{r['model']:<18} {r['params'] / 1e6:6.2f}M {med['preprocess'] * 1e3:7.0f} "
                  f"{med['network'] * 1e3:8.0f} {med['postprocess'] * 1e3:6.0f} {med['total'] * 1e3:8.0f} "
                  f"{r['min_total'] * 1e3:8.0f} {med['cpu'] * 1e3:8.0f} {r['peak_rss_mb']:11.0f} "
                  f"{r['numpy_peak_mb']:8.0f}")
    if not args.synthetic:
        rows = knn_comparison(args.data, args.repeats)
        if rows:
            print()
            print("kNN back-projection, SemanticKITTI 00/000000, oracle pixel labels (velodyne-hdl64e, knn 5, "
                  "search 5, cutoff 1 m)")
            header = f"{'method':<20} {'ms':>6} {'acc. sharers':>12} {'acc. all':>9} {'voted':>7}"
            print(header)
            print("-" * len(header))
            for name, ms, acc_s, acc_all, voted in rows:
                print(f"{name:<20} {ms:6.1f} {acc_s * 100:11.2f}% {acc_all * 100:8.2f}% {voted:7d}")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
