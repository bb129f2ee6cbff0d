"""Benchmark: over-segmentation of LiDAR scans, region growing vs voxel supervoxels.

What is measured
----------------
For every scan and method: the number of regions, the region purity against the ground-truth
point labels (share of labelled points whose region's majority label is their own; void labels
excluded) and the wall time of one call (region growing includes the kNN query and the PCA
normals, which dominate it). A partition into single points is trivially pure, so read purity
together with the regions per scan.

Scans:

- simulator scans (``terraseg.sim``, os1-64-1024 LiDAR, about 55k points each): ``--scans`` per
  world, from a forest and a meadow world, 2 s apart along the trail;
- the real scans in ``../shared/data`` when present: RELLIS-3D frame 104 (Ouster OS1-64, the
  53k no-return zero points dropped, raw RELLIS ids, void 0 excluded) and SemanticKITTI
  sequence 00 scan 0 (123k points, raw ids, unlabeled 0 excluded).

Methods: region growing with the defaults (k 16, 10 degrees, curvature 0.05, 3 m radius), with
PCL's unbounded growth (``max_radius=None``) and with 5 degrees; supervoxels of 0.5, 1 and 2 m.
The table gives, per method, the mean regions per scan, the purity pooled over the scans' points,
the median milliseconds per scan and the ratio to the 1 m supervoxels measured in the same run.

Usage::

    python benchmarks/bench_regions.py [--scans 3] [--synthetic] [--data DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from terraseg.geometry import region_growing, region_purity, voxel_regions

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

Scan = tuple[str, np.ndarray, np.ndarray, int]  # name, xyz, labels, ignore id

METHODS: list[tuple[str, str, Callable[[np.ndarray], np.ndarray]]] = [
    ("region-growing", "default", lambda p: region_growing(p)),
    ("region-growing", "radius=none", lambda p: region_growing(p, max_radius=None)),
    ("region-growing", "5deg", lambda p: region_growing(p, smoothness_deg=5.0)),
    ("supervoxels", "0.5m", lambda p: voxel_regions(p, 0.5)),
    ("supervoxels", "1.0m", lambda p: voxel_regions(p, 1.0)),
    ("supervoxels", "2.0m", lambda p: voxel_regions(p, 2.0)),
]
REFERENCE = ("supervoxels", "1.0m")


def sim_scans(per_world: int) -> list[Scan]:
    from terraseg.sim import LIDAR_PRESETS, Rig, generate_world, render, trail_poses

    rig = Rig(camera=None, lidar=LIDAR_PRESETS["os1-64-1024"])
    out: list[Scan] = []
    for style in ("forest", "meadow"):
        world = generate_world(0, style)
        poses, _ = trail_poses(world, per_world, rate_hz=0.5)
        for i, pose in enumerate(poses):
            f = render(world, pose, rig, f"{style}-day", seed=i)
            assert f.points is not None and f.point_labels is not None
            out.append((f"sim-{style}-{i}", f.points[:, :3].copy(), f.point_labels, 0))
    return out


def real_scans(data: Path) -> list[Scan]:
    from terraseg.io.scans import read_bin, read_label

    out: list[Scan] = []
    r = data / "rellis3d"
    if (r / "000104.bin").is_file():
        pts = read_bin(r / "000104.bin")
        sem, _ = read_label(r / "000104.label", len(pts))
        keep = np.abs(pts[:, :3]).sum(axis=1) > 0
        out.append(("rellis3d-000104", pts[keep, :3], sem[keep], 0))
    k = data / "spvnas"
    if (k / "000000.bin").is_file():
        pts = read_bin(k / "000000.bin")
        sem, _ = read_label(k / "000000.label", len(pts))
        out.append(("semantickitti-000000", pts[:, :3], sem, 0))
    return out


def run(scans: list[Scan], title: str) -> None:
    print(f"\n{title}: {len(scans)} scans, {int(np.mean([len(s[1]) for s in scans])):,} points per scan on average")
    region_growing(scans[0][1][:2000])  # compile the numba kernel outside the timings
    rows = []
    for method, params, fn in METHODS:
        n_regions, pure, scored, times = [], 0.0, 0, []
        for _, xyz, labels, ignore in scans:
            t = time.perf_counter()
            regions = fn(xyz)
            times.append(time.perf_counter() - t)
            q = region_purity(regions, labels, ignore_index=ignore)
            n_regions.append(int(regions.max()) + 1)
            pure += q.purity * q.points
            scored += q.points
        rows.append((method, params, float(np.mean(n_regions)), pure / max(scored, 1), 1000 * float(np.median(times))))
    ref = next(r[4] for r in rows if (r[0], r[1]) == REFERENCE)
    print(f"{'method':<16}{'params':<13}{'regions/scan':>13}{'purity':>9}{'ms/scan':>10}{'x supervoxels 1m':>18}")
    print("-" * 79)
    for method, params, regions, purity, ms in rows:
        print(f"{method:<16}{params:<13}{regions:>13,.0f}{purity:>9.4f}{ms:>10.1f}{ms / max(ref, 1e-9):>18.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scans", type=int, default=3, help="simulator scans per world (two worlds)")
    ap.add_argument("--synthetic", action="store_true", help="simulator scans only, even with ../shared/data")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=None, help="torch / numba threads (default: all)")
    args = ap.parse_args(argv)
    if args.threads:
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    print(f"over-segmentation benchmark, {os.cpu_count()} CPUs (timings on a shared machine are noisy)")
    run(sim_scans(args.scans), "simulator scans (os1-64-1024, forest and meadow)")
    if not args.synthetic:
        real = real_scans(args.data)
        if real:
            run(real, "real scans (" + ", ".join(s[0] for s in real) + ")")
        else:
            print(f"\nnote: no real scans under {args.data}; simulator scans only", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
