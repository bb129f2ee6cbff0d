"""Benchmark: whole-scan LiDAR segmentation latency, eager PyTorch against ONNX Runtime (issue 5).

What is measured
----------------
The latency of labelling every point of one scan, pre-processing included, on ``--threads``
CPU threads (default 2, the on-robot budget), randomly initialised networks with 20 classes:

- SalsaNext ``default``, ``small``, ``tiny``, ``rt`` and ``rt-tiny`` presets (RELLIS-3D normalisation, 5 input
  channels) on the organised 64 x 2048 range image of the scan:

  - ``eager``: :class:`terraseg.models.points.RangePredictor` (PyTorch, channels-last, the
    reference of the speed-up column);
  - ``onnxruntime``: :func:`terraseg.inference.range_onnx.export_range_onnx` (checked against
    PyTorch on the scan's own range image), then
    :class:`terraseg.inference.range_onnx.OrtRangePredictor` (the same projection and kNN
    post-processing, the network on ONNX Runtime's CPU provider);
  - ``ort-labels``: the runtime's path, ``OrtRangePredictor(probabilities=False)``:
    the argmax inside the ONNX graph (:mod:`terraseg.inference.onnx_fuse`), no softmax and no
    per-point probabilities (alone on the cores, so ONNX Runtime's threads spin as by default).

- RandLA-Net ``default`` through :func:`terraseg.models.points.predict_scan` (all returns in
  one pass; features x, y, z).

Columns (medians over ``--repeats`` runs after ``--warmup`` untimed ones, milliseconds): the
stages of :attr:`terraseg.models.points.ScanPrediction.timings`, ``pre`` (projection /
normalisation; RandLA-Net: the neighbour and sub-sampling hierarchy), ``net`` (forward pass and
softmax), ``post`` (per-point labels: kNN back-projection for SalsaNext), ``total`` (the whole
call), ``min`` (the fastest total, the better estimate on a busy machine), ``cpu`` (process CPU
time of a call, all threads), ``x eager`` (total speed-up against the eager row of the same
network), ``peak MB`` (peak resident memory while the predictor is created, warmed up and
timed, above the resident size before: network, runtime session, buffers; not the export;
Linux ``VmHWM``, reset per row through ``/proc/self/clear_refs`` after ``malloc_trim``, else
``ru_maxrss``) and
``agree`` (the fraction of points with a return given the same label as the eager run).

Small networks run both pipelines once before the table (untimed), so one-time initialisation
is not charged to the first row. Each predictor runs its warm-up and its repeats in a row (not interleaved with the other
runtime, whose idle worker threads spin for a while after each call).

When the machine has more CPUs than ``--threads``, the process is pinned to that many
(``os.sched_setaffinity``; ``--no-pin`` lifts it) so the numpy / scipy stages count too.

Scan: the RELLIS-3D frame 104 Ouster OS1-64 scan (131,072 points, 77,708 returns); without the
shared data (or with ``--synthetic``) a synthetic organised 64 x 2048 scan.

Goals (project context): the range network through ONNX Runtime at most 100 ms per scan,
RandLA-Net at most 2 s per scan, both pre-processing included, on 2 CPU cores.

Usage::

    python benchmarks/bench_range_onnx.py [--quick] [--repeats 5] [--warmup 1] [--threads 2]
        [--models salsanext:default,salsanext:small,salsanext:tiny,salsanext:rt,salsanext:rt-tiny,randlanet:default]
        [--no-onnx] [--no-pin] [--opset 18] [--synthetic] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import PeakMemory, cpu_model, pin_cores
from _synthetic import organized_scan

from terraseg.models.points import (
    OrganizedLayout,
    RandLAPredictor,
    RangePredictor,
    ScanPrediction,
    build_point_model,
    range_input,
)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS = ("salsanext:default", "salsanext:small", "salsanext:tiny", "salsanext:rt", "salsanext:rt-tiny", "randlanet:default")
QUICK_MODELS = ("salsanext:small", "randlanet:default")
NUM_CLASSES = 20
LAYOUT = OrganizedLayout(64, 2048)
GOAL_RANGE_ORT_MS = 100.0
GOAL_RANDLA_MS = 2000.0


# ---------------------------------------------------------------------------------------------- helpers


def load_scan(data: Path, synthetic: bool) -> tuple[np.ndarray, str]:
    """(131072, 4) float32 organised 64 x 2048 scan and its description."""
    from terraseg.io.scans import read_bin

    path = data / "rellis3d" / "000104.bin"
    if not synthetic and path.is_file():
        return read_bin(path), f"RELLIS-3D frame 104 ({path})"
    return organized_scan(intensity_max=0.01), "synthetic organised 64 x 2048 scan (shared data not used)"


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class Row:
    """One table row: medians of the stage timings (seconds), peak memory (MiB), label agreement
    with the eager row (fraction of points with a return; NaN for the eager rows) and the labels."""

    model: str
    backend: str
    params: int
    stages: dict[str, float]  # median seconds: preprocess, network, postprocess, total, cpu
    min_total: float
    peak_mb: float | None
    agree: float
    labels: np.ndarray


Predict = Callable[[np.ndarray], ScanPrediction]


def measure(model: str, backend: str, make: Callable[[], tuple[Predict, int]], scan: np.ndarray, warmup: int,
            repeats: int, reference: np.ndarray | None) -> Row:
    """Create a predictor with ``make`` (-> (predict, parameter count)) and time ``predict(scan)``.

    The peak memory covers creation, warm-up and the timed runs; labels are compared with
    ``reference`` on the points with a return.
    """
    runs = []
    with PeakMemory() as mem:
        predict, params = make()
        for _ in range(warmup):
            predict(scan)
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            pred = predict(scan)
            total, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs.append({**pred.timings, "total": total, "cpu": cpu})
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    agree = float("nan")
    if reference is not None:
        valid = pred.valid
        agree = float(np.mean(pred.labels[valid] == reference[valid])) if valid.any() else 1.0
    return Row(model, backend, params, med, min(r["total"] for r in runs), mem.peak_mb, agree, pred.labels)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def bench_salsanext(preset: str, scan: np.ndarray, args: argparse.Namespace, folder: Path,
                    notes: list[str]) -> list[Row]:
    """Eager and ONNX Runtime rows of one SalsaNext preset."""
    from terraseg.inference.range_onnx import OrtRangePredictor, export_range_onnx

    name = f"salsanext:{preset}"
    made: dict[str, RangePredictor] = {}

    def make_eager() -> tuple[Predict, int]:
        torch.manual_seed(0)
        model = build_point_model("salsanext", NUM_CLASSES, preset=preset, normalization="rellis3d").eval()
        made["eager"] = RangePredictor(model, projection=LAYOUT)
        return made["eager"], n_params(model)

    ref = measure(name, "eager", make_eager, scan, args.warmup, args.repeats, None)
    rows = [ref]
    if args.no_onnx:
        return rows
    model = made["eager"].model
    cfg = model.config
    sample = range_input(made["eager"].project(scan), cfg.means, cfg.stds, cfg.in_channels)
    report = export_range_onnx(model, folder / f"{preset}.onnx", (LAYOUT.height, LAYOUT.width), projection=LAYOUT,
                               sample=sample, opset=args.opset)
    notes.append(f"onnx {name}: export + check {report.seconds:.1f} s, argmax agreement {report.agreement:.5f}, "
                 f"max |logit diff| {report.max_abs_diff:.2e}, {report.path.stat().st_size / 2**20:.1f} MiB")

    def make_ort() -> tuple[Predict, int]:
        return OrtRangePredictor(report.path, threads=args.threads), ref.params

    rows.append(measure(name, "onnxruntime", make_ort, scan, args.warmup, args.repeats, ref.labels))

    def make_ort_labels() -> tuple[Predict, int]:
        return OrtRangePredictor(report.path, threads=args.threads, probabilities=False), ref.params

    rows.append(measure(name, "ort-labels", make_ort_labels, scan, args.warmup, args.repeats, ref.labels))
    return rows


def bench_randlanet(preset: str, scan: np.ndarray, args: argparse.Namespace) -> list[Row]:
    def make() -> tuple[Predict, int]:
        torch.manual_seed(0)
        model = build_point_model("randlanet", NUM_CLASSES, preset=preset).eval()
        return RandLAPredictor(model, seed=0), n_params(model)

    return [measure(f"randlanet:{preset}", "eager", make, scan, args.warmup, args.repeats, None)]


def prime(scan: np.ndarray) -> None:
    """Run both pipelines once with small networks (untimed), so one-time initialisation (lazy
    imports, oneDNN set-up) is not charged to the first row's time and memory."""
    torch.manual_seed(0)
    tiny = build_point_model("salsanext", NUM_CLASSES, preset="tiny", normalization="rellis3d").eval()
    RangePredictor(tiny, projection=LAYOUT)(scan)
    small = build_point_model("randlanet", NUM_CLASSES, preset="small").eval()
    RandLAPredictor(small, seed=0)(scan[:4096])


# ---------------------------------------------------------------------------------------------- report
HEADER = (f"{'model':<18} {'backend':<12} {'params':>7} {'pre':>6} {'net':>7} {'post':>6} {'total':>7} {'min':>7} "
          f"{'cpu':>7} {'x eager':>7} {'peak MB':>7} {'agree':>7}  goal")


def goal_text(r: Row) -> str:
    total_ms = r.stages["total"] * 1e3
    if r.model.startswith("salsanext") and r.backend in ("onnxruntime", "ort-labels"):
        limit = GOAL_RANGE_ORT_MS
    elif r.model.startswith("randlanet"):
        limit = GOAL_RANDLA_MS
    else:
        return ""
    return f"<= {limit:.0f} ms: {'met' if total_ms <= limit else 'NOT met'}"


def print_row(r: Row, ref_total: float) -> None:
    s = {k: v * 1e3 for k, v in r.stages.items()}
    peak = "-" if r.peak_mb is None else f"{r.peak_mb:.0f}"
    agree = "-" if np.isnan(r.agree) else f"{r.agree * 100:.2f}%"
    print(f"{r.model:<18} {r.backend:<12} {r.params / 1e6:6.2f}M {s['preprocess']:6.1f} {s['network']:7.1f} "
          f"{s['postprocess']:6.1f} {s['total']:7.1f} {r.min_total * 1e3:7.1f} {s['cpu']:7.1f} "
          f"{ref_total / r.stages['total']:7.2f} {peak:>7} {agree:>7}  {goal_text(r)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"fewer runs: models {','.join(QUICK_MODELS)}, 3 repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs, median reported (default 5, quick 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per predictor first (default 1)")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch and ONNX Runtime threads (default 2)")
    ap.add_argument("--models", default=None, help=f"comma-separated arch:preset (default {','.join(MODELS)})")
    ap.add_argument("--no-pin", action="store_true",
                    help="do not restrict the process to --threads CPUs when the machine has more")
    ap.add_argument("--opset", type=int, default=18, help="ONNX opset of the export (default 18)")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime rows")
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic scan even if shared data exists")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    args = ap.parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--repeats and --threads must be >= 1, --warmup >= 0")
    models = [m.strip() for m in (args.models or ",".join(QUICK_MODELS if args.quick else MODELS)).split(",")
              if m.strip()]
    from terraseg.models.points import RANDLA_PRESETS, SALSANEXT_PRESETS

    known = {"salsanext": SALSANEXT_PRESETS, "randlanet": RANDLA_PRESETS}
    for m in models:
        arch, _, preset = m.partition(":")
        if arch not in known or (preset or "default") not in known[arch]:
            ap.error(f"unknown model {m!r}: expected salsanext:<{'|'.join(SALSANEXT_PRESETS)}> or "
                     f"randlanet:<{'|'.join(RANDLA_PRESETS)}>")
    torch.set_num_threads(args.threads)
    pinned = pin_cores(args.threads) if not args.no_pin else None
    import onnxruntime as ort

    scan, what = load_scan(args.data, args.synthetic)
    valid = int((np.einsum("ij,ij->i", scan[:, :3], scan[:, :3]) > 1e-6).sum())
    print("LiDAR whole-scan latency benchmark (CPU, random weights, 20 classes, pre- and post-processing included)")
    print(f"  machine : {cpu_model()}, os.cpu_count()={os.cpu_count()}, threads={args.threads} (torch and ONNX "
          f"Runtime), load average {os.getloadavg()[0]:.1f}")
    if pinned:
        print(f"  pinned  : the process runs on CPUs {pinned} only (numpy / scipy stages included); --no-pin to lift")
    print(f"  versions: python {platform.python_version()}, torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"numpy {np.__version__}")
    print(f"  scan    : {what}: {len(scan):,} points, {valid:,} with a return; range networks on its organised "
          f"{LAYOUT.height} x {LAYOUT.width} layout")
    print(f"  timing  : median of {args.repeats} runs after {args.warmup} warm-up run(s), milliseconds")
    print()
    print(HEADER)
    print("-" * len(HEADER))
    notes: list[str] = []
    prime(scan)
    with tempfile.TemporaryDirectory(prefix="terraseg-bench-") as tmp:
        for m in models:
            arch, _, preset = m.partition(":")
            preset = preset or "default"
            group = (bench_salsanext(preset, scan, args, Path(tmp), notes) if arch == "salsanext"
                     else bench_randlanet(preset, scan, args))
            for r in group:
                print_row(r, group[0].stages["total"])
    print()
    for n in notes:
        print(f"  {n}")
    print(f"  goals: range network through ONNX Runtime <= {GOAL_RANGE_ORT_MS:.0f} ms, RandLA-Net <= "
          f"{GOAL_RANDLA_MS / 1e3:.0f} s per scan, pre-processing included"
          + ("" if args.threads == 2 else f" (set for 2 cores; this run used {args.threads} threads)"))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
