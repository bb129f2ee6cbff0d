"""Benchmark: active-learning query strategies on synthetic frames (CPU, or a GPU for the kNN).

What is measured
----------------
A synthetic frame of N in-view points (``--sizes``, default 2000 5000 10000) with C = 20 class
probabilities from two networks, 64-D 2D features (every fifth point shares its pixel's features
with another, as projected scans do), 16-D 3D features, coordinates in a 40 m box and pixels in a
376 x 1241 image (SemanticKITTI's camera).

Rows (each one call of the public function, inputs prepared outside the timing):

``cdist+topk (ref)``
    the naive kNN a port would write: ``torch.cdist`` and ``topk`` over the whole N x N matrix,
    no tie rule. The reference time of the next row.
``feature_knn k=4``
    :func:`terraseg.active.feature_knn` on the 64-D features: blocked, deterministic ties
    (``x ref`` is its time over the naive one's).
``select knn_entropy``, ``select regions (given)``, ``select voxel_entropy``, ``select redal``
    a 1 % query with each strategy (regions: 35 precomputed image regions, so SLIC is not
    timed; ``slic 376x1241`` times SLIC itself once per size).

Each row runs once to warm up, then ``--repeats`` times (default 3); the table gives the median
and the minimum in milliseconds.

Usage::

    python benchmarks/bench_active.py [--sizes 2000 5000] [--repeats 3] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from _common import cpu_model

from terraseg.active import FrameContext, StrategyOptions, feature_knn, select, slic_regions


def frame(n: int, seed: int = 0) -> tuple[FrameContext, np.ndarray]:
    rng = np.random.default_rng(seed)
    c = 20
    l2, l3 = rng.normal(size=(n, c)) * 2, rng.normal(size=(n, c)) * 2
    p2 = np.exp(l2) / np.exp(l2).sum(1, keepdims=True)
    p3 = np.exp(l3) / np.exp(l3).sum(1, keepdims=True)
    f2 = rng.normal(size=(n, 64)).astype(np.float32)
    f2[1::5] = f2[0::5][: len(f2[1::5])]
    h, w = 376, 1241
    regions = (np.arange(h)[:, None] // (h // 5)) * 7 + np.arange(w)[None, :] // (w // 7 + 1)
    image = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
    ctx = FrameContext("bench", probs_2d=p2, probs_3d=p3, feats_2d=f2, feats_3d=rng.normal(size=(n, 16)).astype(np.float32),
                       xyz=rng.uniform(0, 40, size=(n, 3)).astype(np.float32),
                       pixels=np.stack([rng.integers(0, w, n), rng.integers(0, h, n)], 1),
                       image_regions=regions.astype(np.int32), regions=rng.integers(0, n // 50 + 1, n),
                       surface_variation=rng.uniform(0, 0.1, n))
    return ctx, image


def timeit(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), min(times)


def naive_knn(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.topk(torch.cdist(x, x), k, dim=1, largest=False).indices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    print(f"machine: {cpu_model()} ({platform.machine()}), torch threads {torch.get_num_threads()}, device {dev}")
    print(f"{'operation':<26} {'N':>7} {'median ms':>10} {'min ms':>9} {'x ref':>7}")
    print("-" * 63)
    for n in args.sizes:
        ctx, image = frame(n)
        x = torch.from_numpy(np.asarray(ctx.feats_2d)).to(dev)
        budget = max(1, round(n / 100))
        ref, ref_min = timeit(lambda x=x: naive_knn(x, 4), args.repeats)
        print(f"{'cdist+topk (ref)':<26} {n:>7} {ref:>10.1f} {ref_min:>9.1f} {1.0:>7.2f}")
        med, mn = timeit(lambda x=x: feature_knn(x, 4), args.repeats)
        print(f"{'feature_knn k=4':<26} {n:>7} {med:>10.1f} {mn:>9.1f} {med / ref:>7.2f}")
        for name, opts in (("knn_entropy", None), ("regions", StrategyOptions(region_source="given")),
                           ("voxel_entropy", None), ("redal", None)):
            label = f"select {name}" + (" (given)" if name == "regions" else "")
            med, mn = timeit(lambda name=name, opts=opts, ctx=ctx, budget=budget: select(name, ctx, budget, options=opts), args.repeats)
            print(f"{label:<26} {n:>7} {med:>10.1f} {mn:>9.1f} {'-':>7}")
        med, mn = timeit(lambda image=image: slic_regions(image), 1)
        print(f"{'slic 376x1241':<26} {n:>7} {med:>10.1f} {mn:>9.1f} {'-':>7}")


if __name__ == "__main__":
    main()
