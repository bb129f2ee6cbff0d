"""Benchmark: confusion-matrix accumulation speed on CPU.

What is measured
----------------
Accumulating one ``C x C`` confusion matrix (rows = ground truth, columns = prediction) over
``--pairs`` random label pairs of ``--height x --width`` pixels with ``--classes`` classes
(defaults: 16 pairs of 1024x2048, 64 classes, i.e. 33.5 Mpx per pass). Every method sees the
same data in the same run:

``terraseg numpy``
    :class:`terraseg.metrics.ConfusionMatrix` fed the uint8 numpy arrays (uint16 when C > 256)
    as they are (the CPU path: one ``np.bincount`` over raw (gt, pred) id pairs, then a fold of
    the small pair table that drops ignored ids and validates ids).
``terraseg torch-cpu``
    The same class fed CPU torch tensors (``torch.from_numpy`` views of the uint8 arrays;
    the view is made outside the timing and costs nothing). CPU tensors are counted by the numpy
    path through zero-copy views; GPU tensors are counted on the device.
``torchmetrics``
    ``torchmetrics.classification.MulticlassConfusionMatrix(num_classes=C)`` (default
    arguments, so ``validate_args=True``), ``update()`` once per pair, then ``compute()``.
    It is given its most favourable fair input: int64 tensors converted *before* the timing.
    This is the reference of the speed goal.
``torchmetrics (validate_args=False)``
    Informational only: the same metric with its input checks switched off (terraseg always
    validates ids, so this is not the goal's reference, but it shows what the checks cost).
``bincount floor``
    ``np.bincount(gt.astype(np.int64) * C + pred, minlength=C*C)`` per pair, summed. The
    int64 cast is part of the floor because ``np.bincount`` needs intp input anyway. No
    validation, no ignore ids: the cheapest plain-numpy way to get the same matrix.

Each method builds a fresh accumulator, feeds all pairs and reads the final ``(C, C)`` matrix;
that whole pass is timed with ``time.perf_counter``. The methods are run round-robin
``--repeats`` times and the best (minimum) time of each is reported, as Mpx/s, as speedup over
torchmetrics (torchmetrics time / method time) and as cost relative to the bincount floor
(method time / floor time).

Goals (from the issue): terraseg at least 5x faster than torchmetrics on CPU, within 1.5x of
the bincount floor, and identical matrices. Timing goals are reported as PASS/FAIL lines only;
the process exits 1 only when the matrices of the methods differ.

Usage::

    python benchmarks/bench_metrics.py [--pairs 16] [--height 1024] [--width 2048]
        [--classes 64] [--repeats 3] [--threads N] [--seed 0] [--agree 0.8]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from terraseg.metrics import ConfusionMatrix

GOAL_SPEEDUP_VS_TORCHMETRICS = 5.0
GOAL_MAX_RATIO_TO_FLOOR = 1.5


def make_data(pairs: int, height: int, width: int, classes: int, agree: float,
              seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Seeded random (ground truth, prediction) label maps; ``agree`` of the predictions equal the truth."""
    if classes > 1 << 16:
        raise SystemExit("--classes must be at most 65536")
    dtype = np.uint8 if classes <= 256 else np.uint16
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(pairs):
        gt = rng.integers(0, classes, (height, width), dtype=dtype)
        noise = rng.integers(0, classes, (height, width), dtype=dtype)
        keep = rng.random((height, width), dtype=np.float32) < agree
        gts.append(gt)
        preds.append(np.where(keep, gt, noise).astype(dtype, copy=False))
    return gts, preds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=16, help="number of label pairs (default 16)")
    ap.add_argument("--height", type=int, default=1024, help="label map height (default 1024)")
    ap.add_argument("--width", type=int, default=2048, help="label map width (default 2048)")
    ap.add_argument("--classes", type=int, default=64, help="number of classes C (default 64)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per method, best is kept (default 3)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch.set_num_threads (default: os.cpu_count())")
    ap.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    ap.add_argument("--agree", type=float, default=0.8,
                    help="fraction of predictions equal to the ground truth (default 0.8)")
    args = ap.parse_args(argv)
    if min(args.pairs, args.height, args.width, args.classes, args.repeats, args.threads) < 1:
        ap.error("all sizes, --repeats and --threads must be >= 1")

    torch.set_num_threads(args.threads)
    try:
        import torchmetrics
        from torchmetrics.classification import MulticlassConfusionMatrix
    except ImportError:  # pragma: no cover - torchmetrics is a dev dependency
        print("torchmetrics is not installed (pip install -e '.[dev]')", file=sys.stderr)
        return 2

    c = args.classes
    npx = args.pairs * args.height * args.width
    print("confusion-matrix accumulation benchmark")
    print(f"  machine : {platform.machine()} {platform.processor() or ''}".rstrip()
          + f", os.cpu_count()={os.cpu_count()}, sched_getaffinity="
          + (str(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else "n/a"))
    print(f"  versions: python {platform.python_version()}, numpy {np.__version__}, "
          f"torch {torch.__version__}, torchmetrics {torchmetrics.__version__}")
    print(f"  threads : torch.get_num_threads()={torch.get_num_threads()} "
          f"(np.bincount and np.take are single-threaded)")
    print(f"  data    : {args.pairs} pairs of {args.height}x{args.width}, {c} classes, "
          f"{args.agree:.0%} of predictions correct, seed {args.seed}, "
          f"{npx / 1e6:.1f} Mpx per pass, best of {args.repeats}")

    t0 = time.perf_counter()
    gts, preds = make_data(args.pairs, args.height, args.width, c, args.agree, args.seed)
    # Inputs prepared outside the timing: zero-copy torch views, and int64 tensors for torchmetrics.
    gts_t = [torch.from_numpy(g) for g in gts]
    preds_t = [torch.from_numpy(p) for p in preds]
    gts_t64 = [g.long() for g in gts_t]
    preds_t64 = [p.long() for p in preds_t]
    print(f"  (data generated and converted in {time.perf_counter() - t0:.1f} s, "
          f"input dtype {gts[0].dtype})")

    def terraseg_numpy() -> np.ndarray:
        cm = ConfusionMatrix(c)
        for g, p in zip(gts, preds):
            cm.update(p, g)
        return cm.matrix

    def terraseg_torch() -> np.ndarray:
        cm = ConfusionMatrix(c)
        for g, p in zip(gts_t, preds_t):
            cm.update(p, g)
        return cm.matrix

    def torchmetrics_default() -> np.ndarray:
        m = MulticlassConfusionMatrix(num_classes=c)
        for g, p in zip(gts_t64, preds_t64):
            m.update(p, g)
        return m.compute().numpy()

    def torchmetrics_noval() -> np.ndarray:
        m = MulticlassConfusionMatrix(num_classes=c, validate_args=False)
        for g, p in zip(gts_t64, preds_t64):
            m.update(p, g)
        return m.compute().numpy()

    def bincount_floor() -> np.ndarray:
        acc = np.zeros(c * c, dtype=np.int64)
        for g, p in zip(gts, preds):
            acc += np.bincount((g.astype(np.int64) * c + p).ravel(), minlength=c * c)
        return acc.reshape(c, c)

    dt = gts[0].dtype.name
    ts_np, ts_torch = f"terraseg numpy ({dt})", f"terraseg torch-cpu ({dt})"
    methods: list[tuple[str, Callable[[], np.ndarray]]] = [
        (ts_np, terraseg_numpy),
        (ts_torch, terraseg_torch),
        ("torchmetrics (int64, default)", torchmetrics_default),
        ("torchmetrics validate_args=False", torchmetrics_noval),
        ("np.bincount floor", bincount_floor),
    ]
    best = {name: float("inf") for name, _ in methods}
    results: dict[str, np.ndarray] = {}
    mismatches: list[str] = []
    for _ in range(args.repeats):  # round-robin, so slow drift of the machine hits every method alike
        for name, fn in methods:
            start = time.perf_counter()
            mat = fn()
            elapsed = time.perf_counter() - start
            best[name] = min(best[name], elapsed)
            mat = np.asarray(mat, dtype=np.int64)
            if name not in results:
                results[name] = mat
            elif not np.array_equal(results[name], mat):
                mismatches.append(f"{name}: result differs between repeats")

    ref_name = "np.bincount floor"
    tm_name = "torchmetrics (int64, default)"
    ref = results[ref_name]
    if int(ref.sum()) != npx:
        mismatches.append(f"{ref_name}: total {int(ref.sum())} != {npx} pixels")
    for name, mat in results.items():
        if mat.shape != (c, c) or not np.array_equal(mat, ref):
            diff = int(np.abs(mat - ref).sum()) if mat.shape == ref.shape else -1
            mismatches.append(f"{name}: matrix differs from {ref_name} (sum |diff| = {diff})")

    t_tm, t_floor = best[tm_name], best[ref_name]
    w = max(len(n) for n, _ in methods)
    header = f"{'method':<{w}}  {'best s':>8}  {'Mpx/s':>8}  {'vs torchmetrics':>15}  {'time/floor':>10}"
    print()
    print(header)
    print("-" * len(header))
    for name, _ in methods:
        t = best[name]
        print(f"{name:<{w}}  {t:8.3f}  {npx / t / 1e6:8.1f}  {t_tm / t:14.2f}x  {t / t_floor:9.2f}x")
    print()
    print("notes: torchmetrics gets int64 tensors converted before timing (conversion not timed);")
    print(f"       terraseg gets the {dt} data as-is (its own casts are timed); the floor's int64 cast is")
    print("       timed; every pass includes creating the accumulator and reading the final matrix.")
    print()

    for name in (ts_np, ts_torch):
        speedup = t_tm / best[name]
        ratio = best[name] / t_floor
        ok1 = speedup >= GOAL_SPEEDUP_VS_TORCHMETRICS
        ok2 = ratio <= GOAL_MAX_RATIO_TO_FLOOR
        print(f"{'PASS' if ok1 else 'FAIL'}: {name}: {speedup:.2f}x torchmetrics "
              f"(goal >= {GOAL_SPEEDUP_VS_TORCHMETRICS:g}x)")
        print(f"{'PASS' if ok2 else 'FAIL'}: {name}: {ratio:.2f}x the bincount floor "
              f"(goal <= {GOAL_MAX_RATIO_TO_FLOOR:g}x)")
    if mismatches:
        print("FAIL: matrices are not identical:")
        for m in mismatches:
            print(f"  - {m}")
        return 1
    print(f"PASS: identical {c}x{c} matrices from all {len(methods)} methods "
          f"({npx} pixels counted, every repeat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
