"""Benchmark: reading one real SemanticKITTI scan with labels through the dataset readers.

What is measured
----------------
``SemanticKITTIDataset(...)[0]`` on SemanticKITTI sequence 00 scan 000000 (123,389 points, from
``../shared/data/spvnas/000000.bin`` + ``.label``), linked into a temporary
``sequences/00/{velodyne,labels}`` tree (never inside the repository). One read = ``np.fromfile``
of scan and labels, the finiteness check of the coordinates, splitting semantic / instance ids,
``Frame`` assembly and validation, and for the ``remap`` rows the single lookup-table remap
raw -> train ids with id checking (``LabelMap.__call__(check=True)``). Rows:

``raw ids``             ``remap=None``
``remap semantickitti`` the default (20 train ids)
``drop_origin (RELLIS)`` ``Rellis3DLidarDataset`` on RELLIS scan 000104 (131,072 points) with
                        ``drop_origin=True`` and the default remap, when the sample is present.

Each row reads the frame ``--reads`` times (after 3 warm-up reads, so the page cache is warm:
this measures decoding, not the disk) and reports median and p95 in milliseconds.

Goal: median at most 5 ms for the ``remap semantickitti`` row. Reported as PASS/FAIL; the exit
code is 0 unless reading fails. Skips (exit 0) when the shared data is absent.

Usage::

    python benchmarks/bench_datasets.py [--reads 50] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from terraseg.datasets.rellis3d import Rellis3DLidarDataset
from terraseg.datasets.semantickitti import SemanticKITTIDataset

GOAL_MEDIAN_MS = 5.0
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dst)
    except OSError:  # file systems without symlinks
        dst.write_bytes(src.read_bytes())


def time_reads(read: Callable[[], object], reads: int) -> tuple[float, float]:
    """(median, p95) in milliseconds of ``reads`` calls after three warm-up calls."""
    for _ in range(3):
        read()
    ts = np.empty(reads)
    for i in range(reads):
        t0 = time.perf_counter()
        read()
        ts[i] = time.perf_counter() - t0
    return float(np.median(ts) * 1e3), float(np.percentile(ts, 95) * 1e3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reads", type=int, default=50)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    args = ap.parse_args()
    scan = args.data / "spvnas" / "000000.bin"
    if not scan.is_file():
        print(f"SKIP: real sample data not found at {scan} (the ../shared checkout is absent)")
        return 0
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; {args.reads} reads per row")
    rows: list[tuple[str, int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="terraseg-bench-") as tmp:
        root = Path(tmp) / "semantickitti"
        _link(scan, root / "sequences" / "00" / "velodyne" / "000000.bin")
        _link(scan.with_suffix(".label"), root / "sequences" / "00" / "labels" / "000000.label")
        for label, remap in (("raw ids", None), ("remap semantickitti", "semantickitti")):
            ds = SemanticKITTIDataset(root, split=["00"], remap=remap)
            n = len(ds[0].points)
            rows.append((label, n, *time_reads(lambda ds=ds: ds[0], args.reads)))

        rellis = args.data / "rellis3d" / "000104.bin"
        if rellis.is_file():
            rroot = Path(tmp) / "rellis"
            _link(rellis, rroot / "00000" / "os1_cloud_node_kitti_bin" / "000104.bin")
            _link(rellis.with_suffix(".label"), rroot / "00000" / "os1_cloud_node_semantickitti_label_id" / "000104.label")
            (rroot / "pt_val.lst").write_text("00000/os1_cloud_node_kitti_bin/000104.bin "
                                              "00000/os1_cloud_node_semantickitti_label_id/000104.label\n")
            rds = Rellis3DLidarDataset(rroot, "val", drop_origin=True)
            n = int(rds[0].meta["num_points_raw"])  # type: ignore[arg-type]
            rows.append(("drop_origin (RELLIS)", n, *time_reads(lambda: rds[0], args.reads)))

    print(f"\n{'reader':<24}{'points':>10}{'median ms':>12}{'p95 ms':>10}")
    for label, n, med, p95 in rows:
        print(f"{label:<24}{n:>10,}{med:>12.2f}{p95:>10.2f}")
    goal = next(med for label, _, med, _ in rows if label == "remap semantickitti")
    verdict = "PASS" if goal <= GOAL_MEDIAN_MS else "FAIL"
    print(f"\n{verdict}: SemanticKITTI read + remap median {goal:.2f} ms (goal <= {GOAL_MEDIAN_MS:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
