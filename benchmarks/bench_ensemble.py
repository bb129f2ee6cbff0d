"""Benchmark: building the pair histogram H[m1, m2, gt] and the greedy rule search (CPU).

What is measured
----------------
**Histogram.** ``--frames`` label triples (model 1, model 2, ground truth) of
``--height x --width`` uint8 pixels over ``--classes`` classes (defaults: 480 frames of
1024x2048, 64 classes = 1.007e9 triples, GOOSE-sized). ``--pool`` distinct frames (default 8)
are generated and cycled, so the data fits in memory; every method sees the same frames in the
same order. The frames have realistic structure: a ground truth of blocks with Zipf-distributed
class frequencies, model 1 wrong on ~13 % of pixels in blobs (each class confused with a few
fixed others), model 2 wrong on ~16 %, partly where (and how) model 1 is wrong too.

``np.bincount``
    The reference of the goal: ``np.bincount(key, minlength=C**3)`` per frame on a
    precomputed intp key ``(m1 * C + m2) * C + gt`` (key computation *not* timed), summed.
    This is one ``np.bincount`` over the same number of elements, cut per frame because a
    single 1e9-element int64 key would need 8 GB.
``naive numpy``
    Informational: the same including the key computation from the uint8 arrays.
``terraseg numba``
    :class:`terraseg.ensemble.HistogramAccumulator` (validates every id, skips ignored ground
    truth, one compiled pass per frame), with 1 thread and with ``--threads`` threads.
``terraseg numpy fallback``
    Informational, with ``--fallback`` (or without numba): the accumulator's numpy path
    (chunked bincount).

Each method builds its histogram from scratch (accumulator creation and the final ``(C, C, C)``
read included); methods run round-robin ``--repeats`` times and the best time is kept. All
histograms must be identical (exit status 1 otherwise).

**Greedy search.** :func:`terraseg.ensemble.greedy_search` with the default options on a
``--search-classes`` class histogram with the structure above (counts for ``--search-pixels``
pixels, built directly from the class-conditional model, not from frames); best of
``--repeats``.

Goals (issue 7): H over 1e9 triples on 2 cores at most 1.5x the ``np.bincount`` time measured
in the same run; the 64-class greedy search at most 5 s. Reported as PASS/FAIL lines; on a
machine shared with other work the figures move (say so when quoting them).

Usage::

    python benchmarks/bench_ensemble.py [--frames 480] [--height 1024] [--width 2048] [--classes 64]
        [--pool 8] [--threads 2] [--repeats 3] [--search-classes 64] [--search-pixels 1e9] [--seed 0]
        [--fallback]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
from _common import cpu_model

from terraseg.ensemble import HistogramAccumulator, PairHistogram, SearchOptions, greedy_search, numba_available

GOAL_RATIO = 1.5
GOAL_SEARCH_S = 5.0


def class_frequencies(c: int, rng: np.random.Generator) -> np.ndarray:
    """Zipf-like class frequencies (a few large classes, a long tail), shuffled over ids."""
    f = 1.0 / np.arange(1, c + 1) ** 1.3
    return rng.permutation(f / f.sum())


def confusers(c: int, rng: np.random.Generator, k: int = 3) -> np.ndarray:
    """``(C, k)``: the classes each class is usually mistaken for."""
    out = np.empty((c, k), dtype=np.int64)
    for g in range(c):
        out[g] = rng.choice(np.delete(np.arange(c), g), k, replace=False)
    return out


def blob_mask(shape: tuple[int, int], rate: float, block: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask that is True on ~``rate`` of the pixels, in ``block``-sized blobs."""
    h, w = shape
    coarse = rng.random((-(-h // block), -(-w // block))) < rate
    return np.repeat(np.repeat(coarse, block, 0), block, 1)[:h, :w]


def make_frames(n: int, h: int, w: int, c: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``n`` realistic uint8 (m1, m2, gt) triples (see module docstring)."""
    rng = np.random.default_rng(seed)
    freq = class_frequencies(c, rng)
    conf1, conf2 = confusers(c, rng), confusers(c, rng)
    frames = []
    for _ in range(n):
        block = 32
        coarse = rng.choice(c, size=(-(-h // block), -(-w // block)), p=freq)
        gt = np.repeat(np.repeat(coarse, block, 0), block, 1)[:h, :w].astype(np.uint8)
        pick = rng.integers(0, 3, (h, w))
        m1 = gt.copy()
        wrong1 = blob_mask((h, w), 0.13, 8, rng)
        m1[wrong1] = conf1[gt[wrong1], pick[wrong1]]
        m2 = gt.copy()
        wrong2 = blob_mask((h, w), 0.08, 8, rng) | (wrong1 & blob_mask((h, w), 0.6, 8, rng))
        m2[wrong2] = conf2[gt[wrong2], pick[wrong2]]
        same = wrong1 & wrong2 & blob_mask((h, w), 0.7, 8, rng)  # both wrong the same way
        m2[same] = m1[same]
        frames.append((m1, m2, gt))
    return frames


def search_histogram(c: int, pixels: float, seed: int) -> PairHistogram:
    """A ``(C, C, C)`` histogram from class-conditional model behaviour (no frames needed)."""
    rng = np.random.default_rng(seed + 1)
    n_g = np.round(class_frequencies(c, rng) * pixels)
    conf1, conf2 = confusers(c, rng), confusers(c, rng)
    h = np.zeros((c, c, c))
    for g in range(c):
        p1 = np.full(c, 0.02 / c)
        p2 = p1.copy()
        p1[g] += rng.uniform(0.3, 0.97)
        p2[g] += rng.uniform(0.2, 0.95)
        p1[conf1[g]] += rng.dirichlet(np.ones(3)) * max(0.0, 1 - p1.sum())
        p2[conf2[g]] += rng.dirichlet(np.ones(3)) * max(0.0, 1 - p2.sum())
        p1 /= p1.sum()
        p2 /= p2.sum()
        rho = rng.uniform(0.5, 0.9)  # how often model 2 repeats model 1 (correlated models)
        h[:, :, g] = n_g[g] * (rho * np.diag(p1) + (1 - rho) * np.outer(p1, p2))
    return PairHistogram(np.round(h).astype(np.int64), [f"class{k}" for k in range(c)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=480, help="label triples per pass (default 480)")
    ap.add_argument("--height", type=int, default=1024, help="frame height (default 1024)")
    ap.add_argument("--width", type=int, default=2048, help="frame width (default 2048)")
    ap.add_argument("--classes", type=int, default=64, help="classes C of the histogram (default 64)")
    ap.add_argument("--pool", type=int, default=8, help="distinct frames generated and cycled (default 8)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the multi-threaded row (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per method, best kept (default 3)")
    ap.add_argument("--search-classes", type=int, default=64, help="classes of the search histogram (default 64)")
    ap.add_argument("--search-pixels", type=float, default=1e9, help="pixels in the search histogram (default 1e9)")
    ap.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    ap.add_argument("--fallback", action="store_true", help="also time the numpy fallback (slow, informational)")
    args = ap.parse_args(argv)
    if min(args.frames, args.height, args.width, args.pool, args.threads, args.repeats) < 1:
        ap.error("sizes, --pool, --threads and --repeats must be >= 1")
    if not 2 <= args.classes <= 256 or not 2 <= args.search_classes <= 256:
        ap.error("--classes and --search-classes must lie in 2..256")

    c = args.classes
    npx = args.frames * args.height * args.width
    print("pair-histogram and greedy-search benchmark")
    aff = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"  machine : {cpu_model()}, os.cpu_count()={os.cpu_count()}, usable CPUs={aff}, "
          f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"  versions: python {platform.python_version()}, numpy {np.__version__}, numba "
          + (__import__("numba").__version__ if numba_available() else "not installed"))
    t0 = time.perf_counter()
    pool = make_frames(min(args.pool, args.frames), args.height, args.width, c, args.seed)
    order = [pool[k % len(pool)] for k in range(args.frames)]
    keys = [((m1.astype(np.intp) * c + m2) * c + gt).ravel() for m1, m2, gt in pool]
    key_order = [keys[k % len(pool)] for k in range(args.frames)]
    agree = float(np.mean([np.mean(m1 == m2) for m1, m2, _ in pool]))
    acc1 = float(np.mean([np.mean(m1 == gt) for m1, _, gt in pool]))
    acc2 = float(np.mean([np.mean(m2 == gt) for _, m2, gt in pool]))
    print(f"  data    : {args.frames} frames of {args.height}x{args.width} ({len(pool)} distinct, cycled), {c} classes, "
          f"{npx:,} triples ({npx / 1e9:.3f}e9) per pass; model 1 right {acc1:.0%}, model 2 {acc2:.0%}, "
          f"agree {agree:.0%}; generated in {time.perf_counter() - t0:.1f} s; best of {args.repeats}")
    warm = HistogramAccumulator(np.arange(c), threads=args.threads)  # compile / load the numba kernel
    warm.add(*pool[0])

    def floor() -> np.ndarray:
        acc = np.zeros(c ** 3, dtype=np.int64)
        for k in key_order:
            acc += np.bincount(k, minlength=c ** 3)
        return acc.reshape(c, c, c)

    def naive() -> np.ndarray:
        acc = np.zeros(c ** 3, dtype=np.int64)
        for m1, m2, gt in order:
            acc += np.bincount(((m1.astype(np.intp) * c + m2) * c + gt).ravel(), minlength=c ** 3)
        return acc.reshape(c, c, c)

    def terraseg(threads: int, backend: str) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            acc = HistogramAccumulator(np.arange(c), backend=backend, threads=threads)  # type: ignore[arg-type]
            for m1, m2, gt in order:
                acc.add(m1, m2, gt)
            return acc.counts()
        return run

    ref_name = "np.bincount (key precomputed)"
    methods: list[tuple[str, int, Callable[[], np.ndarray]]] = [(ref_name, 1, floor), ("naive numpy", 1, naive)]
    if numba_available():
        methods.append(("terraseg numba", 1, terraseg(1, "numba")))
        if args.threads > 1:
            methods.append(("terraseg numba", args.threads, terraseg(args.threads, "numba")))
    if args.fallback or not numba_available():
        methods.append(("terraseg numpy fallback", 1, terraseg(1, "numpy")))
    best = [float("inf")] * len(methods)
    results: list[np.ndarray | None] = [None] * len(methods)
    for _ in range(args.repeats):
        for j, (_, _, fn) in enumerate(methods):
            start = time.perf_counter()
            h = fn()
            best[j] = min(best[j], time.perf_counter() - start)
            results[j] = h
    ref = results[0]
    assert ref is not None
    mismatches = [f"{n} ({t} threads)" for (n, t, _), r in zip(methods, results)
                  if r is None or not np.array_equal(r, ref)]
    if int(ref.sum()) != npx:
        mismatches.append(f"reference total {int(ref.sum())} != {npx}")

    w = max(len(n) for n, _, _ in methods)
    header = f"{'method':<{w}}  {'threads':>7}  {'best s':>8}  {'Gtriples/s':>10}  {'x bincount':>10}"
    print()
    print(header)
    print("-" * len(header))
    for (name, threads, _), t in zip(methods, best):
        print(f"{name:<{w}}  {threads:>7}  {t:8.3f}  {npx / t / 1e9:10.3f}  {t / best[0]:10.2f}")
    print()

    # ------------------------------------------------------------------ greedy search
    hist = search_histogram(args.search_classes, args.search_pixels, args.seed)
    times, res = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        res = greedy_search(hist, SearchOptions())
        times.append(time.perf_counter() - start)
    assert res is not None
    ts = min(times)
    header2 = f"{'search':<16}  {'classes':>7}  {'pixels':>9}  {'atoms':>5}  {'steps':>5}  {'best s':>8}  {'ms/step':>8}  {'gain pts':>8}"
    print(header2)
    print("-" * len(header2))
    print(f"{'greedy default':<16}  {args.search_classes:>7}  {args.search_pixels:9.2e}  {len(res.atoms):>5}  "
          f"{res.steps:>5}  {ts:8.3f}  {1000 * ts / res.steps:8.2f}  {100 * res.gain:+8.3f}")
    print()

    numba_rows = [j for j, (n, _, _) in enumerate(methods) if n == "terraseg numba"]
    if numba_rows:
        j = numba_rows[-1]
        ratio = best[j] / best[0]
        print(f"{'PASS' if ratio <= GOAL_RATIO else 'FAIL'}: terraseg numba ({methods[j][1]} threads): "
              f"{ratio:.2f}x the np.bincount time (goal <= {GOAL_RATIO:g}x)")
    else:
        print("SKIP: numba is not installed; the histogram goal applies to the numba path")
    print(f"{'PASS' if ts <= GOAL_SEARCH_S else 'FAIL'}: greedy search on {args.search_classes} classes: {ts:.3f} s "
          f"(goal <= {GOAL_SEARCH_S:g} s)")
    if mismatches:
        print("FAIL: histograms differ from the reference: " + ", ".join(mismatches))
        return 1
    print(f"PASS: identical {c}x{c}x{c} histograms from all {len(methods)} methods ({npx:,} triples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
