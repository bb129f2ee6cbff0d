"""Benchmark: LiDAR-camera geometry on a 131k-point scan (CPU).

What is measured
----------------
The RELLIS-3D frame 104 Ouster OS1-64 scan (131,072 points = 64 x 2048 including 53,364 zero
points), its 1920x1200 camera calibration and id mask, read from ``../shared/data/rellis3d``.
Without the shared data (or with ``--synthetic``), a synthetic organised 64 x 2048 scan of the
same size with a RELLIS-like calibration and a random-block mask is used instead; the report
says which.

Operations (each timed as one call of the public function, inputs prepared outside the timing):

``project_points``
    all 131k points into the camera (transform, pinhole, in-image test, rounding).
``points_to_image r=0`` / ``r=2``
    z-buffered sparse label + depth + index image of the projection (splat radius 0 and 2).
``labels_from_image zbuffer``
    image -> points transfer with the default occlusion test (projection, z-buffer, 5x5 minimum
    filter over the 1920x1200 buffer, depth test, label lookup).
``labels_from_image none``
    the same without the occlusion test (its cost is the difference).
``project_scan`` (hdl64e preset / rellis3d-os1-64 table) and ``from_organized``
    range images of the scan.
``knn k=16 (131k self)``
    tree build over all points plus a k=16 query of every point (``cKDTree``, workers=-1).
``nearest_labels k=1 (131k -> 30k)``
    back-projection: tree over a random 30k subset, 1-NN label for all 131k points.
``knn k=16 (512 self)``, default and ``workers=2``
    a query the size of RandLA-Net's deeper levels against a prebuilt tree: the default runs it
    on one thread (``SERIAL_QUERY_POINTS``); the ratio of the two rows is the thread start-up
    cost that this avoids.

Each operation runs once to warm up, then ``--repeats`` times (default 7); the table gives the
median and the minimum in milliseconds and the median throughput in million points per second.

Usage::

    python benchmarks/bench_geometry.py [--repeats 7] [--synthetic] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
from _synthetic import organized_scan

from terraseg.frame import Calibration
from terraseg.geometry import (
    build_index,
    from_organized,
    knn,
    labels_from_image,
    nearest_labels,
    points_to_image,
    project_points,
    project_scan,
)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_rellis(data: Path) -> tuple[np.ndarray, Calibration, np.ndarray, str]:
    """The RELLIS-3D frame 104 scan, calibration and mask (train ids)."""
    from terraseg.io.calib import read_rellis_calibration
    from terraseg.io.labels import read_label_png
    from terraseg.io.scans import read_bin
    from terraseg.ontology import LabelMap

    d = data / "rellis3d"
    pts = read_bin(d / "000104.bin")
    cal = read_rellis_calibration(d / "camera_info.txt", d / "transforms.yaml")
    mask = LabelMap.builtin("rellis3d-raw", "rellis3d")(read_label_png(d / "frame000104-1581624663_149.png"))
    return pts, cal, mask, f"RELLIS-3D frame 104 ({d})"


def synthetic(seed: int = 0) -> tuple[np.ndarray, Calibration, np.ndarray, str]:
    """A synthetic organised 64 x 2048 scan (~40 % no-return zeros) and a RELLIS-like camera."""
    pts = organized_scan(seed)
    rng = np.random.default_rng(seed + 1)
    T = np.eye(4)
    T[:3, :3] = [[0, 1, 0], [0, 0, -1], [-1, 0, 0]]  # camera looking along LiDAR -x, as in RELLIS
    K = [[2813.6, 0, 969.3], [0, 2808.3, 624.0], [0, 0, 1]]
    cal = Calibration(K=K, T_cam_lidar=T, image_size=(1920, 1200))
    blocks = rng.integers(0, 20, (12, 20), dtype=np.uint8)
    mask = np.kron(blocks, np.ones((100, 96), dtype=np.uint8))
    return pts, cal, mask, "synthetic 64 x 2048 organised scan (shared data not used)"


def timeit(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7, help="timed runs per operation, median reported (default 7)")
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic scan even if shared data exists")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")

    if not args.synthetic and (args.data / "rellis3d" / "000104.bin").is_file():
        pts, cal, mask, what = load_rellis(args.data)
    else:
        if not args.synthetic:
            print(f"note: {args.data / 'rellis3d'} not found; using a synthetic scan", file=sys.stderr)
        pts, cal, mask, what = synthetic()
    n = len(pts)
    rng = np.random.default_rng(0)
    sub = np.sort(rng.choice(n, 30000, replace=False))
    sub_labels = rng.integers(0, 20, len(sub)).astype(np.uint8)
    proj = project_points(pts, cal)
    point_labels = rng.integers(0, 20, n).astype(np.uint8)
    small = pts[np.sort(rng.choice(n, 512, replace=False))]  # a RandLA-Net deep level: a few hundred points
    small_index = build_index(small)

    print("LiDAR-camera geometry benchmark")
    print(f"  machine : {platform.machine()}, os.cpu_count()={os.cpu_count()}, sched_getaffinity="
          + (str(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else "n/a"))
    print(f"  versions: python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"  data    : {what}: {n} points, {int(proj.in_image.sum())} in the "
          f"{cal.image_size[0]}x{cal.image_size[1]} image; median of {args.repeats} runs")

    ops: list[tuple[str, int, Callable[[], object]]] = [
        ("project_points", n, lambda: project_points(pts, cal)),
        ("points_to_image r=0 (z-buffer)", n, lambda: points_to_image(proj, None, point_labels)),
        ("points_to_image r=2 (5x5 splats)", n, lambda: points_to_image(proj, None, point_labels, splat_radius=2)),
        ("labels_from_image occlusion=zbuffer", n, lambda: labels_from_image(pts, cal, mask)),
        ("labels_from_image occlusion=none", n, lambda: labels_from_image(pts, cal, mask, occlusion="none")),
        ("project_scan velodyne-hdl64e", n, lambda: project_scan(pts, "velodyne-hdl64e")),
        ("project_scan rellis3d-os1-64 (tables)", n, lambda: project_scan(pts, "rellis3d-os1-64")),
        ("from_organized 64x2048 (auto layout)", n, lambda: from_organized(pts, 64, 2048)),
        ("knn k=16 (131k self, incl. tree)", n, lambda: knn(pts, pts, k=16)),
        ("nearest_labels k=1 (131k -> 30k, incl. tree)", n, lambda: nearest_labels(pts, pts[sub], sub_labels)),
        # small queries: the default (workers=-1) runs them on one thread, see SERIAL_QUERY_POINTS
        ("knn k=16 (512 self, default: one thread)", 512, lambda: knn(small, small_index, k=16)),
        ("knn k=16 (512 self, workers=2 threads)", 512, lambda: knn(small, small_index, k=16, workers=2)),
    ]
    w = max(len(name) for name, _, _ in ops)
    header = f"{'operation':<{w}}  {'median ms':>9}  {'min ms':>8}  {'Mpts/s':>7}"
    print()
    print(header)
    print("-" * len(header))
    for name, count, fn in ops:
        med, best = timeit(fn, args.repeats)
        print(f"{name:<{w}}  {med * 1e3:9.1f}  {best * 1e3:8.1f}  {count / med / 1e6:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
