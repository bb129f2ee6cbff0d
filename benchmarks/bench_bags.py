"""Benchmark: extracting image + mask pairs from a ROS 2 bag with :func:`terraseg.extract.extract_bag`.

What is measured
----------------
A ROS 2 bag (sqlite3 storage, written with :class:`terraseg.io.bags.BagWriter` under
``--tmp``) holds ``--pairs`` pairs of ``--width x --height`` ``rgb8`` images and ``mono8`` id
masks with identical header stamps (defaults: 200 pairs of 1024x768, about 630 MB). Then
``extract_bag(bag, out, image_topic, mask_topic, progress=False)`` is timed end to end with
``time.perf_counter``: scanning the stamps, synchronising, deserialising, PNG-encoding both
images and writing every file atomically, plus timestamps.csv and the summary. Each
configuration starts from an empty output folder; the best of ``--repeats`` runs is reported,
as wall time, pairs per second, and CPU time per pair (``time.process_time``, all threads:
the hardware cost, which other load on a shared machine does not inflate as much as wall time).
A last row times a re-run over the complete output (nothing is rewritten).

Two kinds of content, because PNG cost depends on it:

``sim``
    Synthetic rendered-looking frames (sky gradient, textured ground, flat-shaded objects,
    mild noise) as a CARLA camera produces; masks are the matching class regions.
``photo``
    The real RELLIS-3D sample photo and its mask from ``../shared/data`` (resized to the frame
    size, shifted by a few pixels per frame). Camera noise makes this the hard case. Skipped
    when the shared data is absent.

Configurations vary the encoder threads (``--workers``) and the PNG compression level
(``--levels``). An extra line compares the per-image PNG encoder cost with Pillow's
``Image.save(format="PNG", compress_level=1)``.

Goal (from the issue): at least 200 image + mask pairs per second on 2 cores (``--cores 2``
pins the process to two CPUs where the OS allows it). Reported as PASS/FAIL lines; the process
exits 1 only when the extracted files do not match the bag's content.

Usage::

    python benchmarks/bench_bags.py [--pairs 200] [--width 1024] [--height 768]
        [--workers 1,2,4] [--levels 1] [--content sim,photo] [--cores 2] [--repeats 1]
        [--tmp /tmp/terraseg-bench-bags]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from terraseg.extract import extract_bag
from terraseg.io.bags import BagWriter
from terraseg.io.png import PNG_BACKEND, encode_png

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rellis3d"
GOAL_PAIRS_PER_S = 200.0


def sim_canvas(width: int, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (height, 2 * width) rendered-looking RGB canvas and its class-id mask."""
    rng = np.random.default_rng(seed)
    w2 = 2 * width
    y, x = np.mgrid[0:height, 0:w2].astype(np.float32)
    horizon = height * 0.45 + 20 * np.sin(x / 180.0)
    sky = y < horizon
    img = np.empty((height, w2, 3), np.float32)
    img[..., 0] = np.where(sky, 90 + 60 * y / height, 110 + 25 * np.sin(x / 7.0) * np.cos(y / 5.0))
    img[..., 1] = np.where(sky, 140 + 50 * y / height, 95 + 20 * np.sin(x / 11.0 + y / 9.0))
    img[..., 2] = np.where(sky, 220 - 30 * y / height, 60 + 15 * np.cos(x / 13.0))
    mask = np.where(sky, 11, 10).astype(np.uint8)  # carla: 11 sky, 10 terrain
    for _ in range(40):  # trees, rocks, a road
        cx, cy = rng.integers(0, w2), rng.integers(int(height * 0.4), height)
        r = int(rng.integers(10, 60))
        inside = (x - cx) ** 2 + ((y - cy) * 1.5) ** 2 < r * r
        cls = int(rng.choice([9, 20, 1]))
        colour = {9: (60, 120, 40), 20: (120, 110, 100), 1: (100, 90, 95)}[cls]
        shade = 0.8 + 0.2 * (y - cy) / max(r, 1)
        for c in range(3):
            img[..., c] = np.where(inside, colour[c] * shade, img[..., c])
        mask[inside] = cls
    img += rng.normal(0, 1.5, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def photo_canvas(width: int, height: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The RELLIS-3D sample photo and mask resized to (height, width + 64), or None."""
    jpg, png = SHARED / "frame000104-1581624663_149.jpg", SHARED / "frame000104-1581624663_149.png"
    if not (jpg.is_file() and png.is_file()):
        return None
    img = np.asarray(Image.open(jpg).convert("RGB").resize((width + 64, height), Image.BILINEAR))
    mask = np.asarray(Image.open(png).resize((width + 64, height), Image.NEAREST))
    return img, mask


def write_bag(path: Path, canvas: tuple[np.ndarray, np.ndarray], pairs: int, width: int) -> float:
    """Write ``pairs`` image + mask pairs cropped from the canvas at shifting offsets; seconds."""
    img, mask = canvas
    span = img.shape[1] - width
    if path.exists():
        shutil.rmtree(path)
    t = time.perf_counter()
    with BagWriter(path) as w:
        for k in range(pairs):
            off = (k * 7) % max(span, 1)
            stamp = 1_700_000_000_000_000_000 + k * 50_000_000  # 20 Hz
            w.write_image("/carla/hero/rgb_front/image", img[:, off:off + width], stamp, "rgb_front")
            w.write_image("/carla/hero/semantic_segmentation_front/image", mask[:, off:off + width], stamp,
                          "semantic_segmentation_front", encoding="mono8")
    return time.perf_counter() - t


def verify(out: Path, canvas: tuple[np.ndarray, np.ndarray], pairs: int, width: int) -> bool:
    """Check that the first and last extracted pair equal the bag content."""
    img, mask = canvas
    span = img.shape[1] - width
    stems = sorted(p.stem for p in (out / "images").glob("*.png"))
    if len(stems) != pairs:
        print(f"MISMATCH: {len(stems)} images extracted, expected {pairs}")
        return False
    for k in (0, pairs - 1):
        off = (k * 7) % max(span, 1)
        got_i = np.asarray(Image.open(out / "images" / f"{stems[k]}.png"))
        got_m = np.asarray(Image.open(out / "masks" / f"{stems[k]}.png"))
        if not (np.array_equal(got_i, img[:, off:off + width]) and np.array_equal(got_m, mask[:, off:off + width])):
            print(f"MISMATCH: pair {k} differs from the bag content")
            return False
    return True


def png_compare(canvas: tuple[np.ndarray, np.ndarray], width: int, level: int) -> tuple[float, float, int, int]:
    """(terraseg ms, Pillow ms, terraseg bytes, Pillow bytes) for one image of the canvas."""
    img = np.ascontiguousarray(canvas[0][:, :width])
    encode_png(img, level)
    t = time.perf_counter()
    data = encode_png(img, level)
    ours = time.perf_counter() - t
    buf = io.BytesIO()
    t = time.perf_counter()
    Image.fromarray(img).save(buf, format="PNG", compress_level=level)
    pil = time.perf_counter() - t
    return ours * 1e3, pil * 1e3, len(data), len(buf.getvalue())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--workers", default="1,2,4", help="comma-separated encoder thread counts")
    ap.add_argument("--levels", default="1", help="comma-separated PNG compress levels")
    ap.add_argument("--content", default="sim,photo")
    ap.add_argument("--cores", type=int, default=2, help="pin to this many CPUs (0 = no pinning)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tmp", default="/tmp/terraseg-bench-bags")
    args = ap.parse_args()

    if args.cores and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))[: args.cores]
        os.sched_setaffinity(0, set(cpus))
    ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"python {platform.python_version()}, {platform.processor() or platform.machine()}, {ncpu} CPUs in use, "
          f"PNG deflate backend: {PNG_BACKEND}")
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    workers = [int(w) for w in args.workers.split(",")]
    levels = [int(v) for v in args.levels.split(",")]

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"extract_bag: {args.pairs} pairs of {args.width}x{args.height} rgb8 + mono8 (ROS 2 sqlite3)")
    for col in ("content", "workers", "png level", "seconds", "pairs/s", "CPU ms/pair", "MB written", "goal"):
        table.add_column(col, justify="left" if col in ("content", "goal") else "right")
    ok = True
    notes = []
    for content in args.content.split(","):
        canvas = sim_canvas(args.width, args.height) if content == "sim" else photo_canvas(args.width, args.height)
        if canvas is None:
            notes.append(f"{content}: skipped (no shared data at {SHARED})")
            continue
        bag = tmp / f"{content}_bag"
        wsec = write_bag(bag, canvas, args.pairs, args.width)
        size = sum(p.stat().st_size for p in bag.rglob("*") if p.is_file()) / 1e6
        notes.append(f"{content}: bag written in {wsec:.1f} s ({size:.0f} MB)")
        for level in levels:
            ours, pil, nb_ours, nb_pil = png_compare(canvas, args.width, level)
            notes.append(f"{content}: one {args.width}x{args.height} RGB PNG at level {level}: terraseg {ours:.1f} ms "
                         f"({nb_ours / 1e6:.2f} MB), Pillow {pil:.1f} ms ({nb_pil / 1e6:.2f} MB)")
            for nw in workers:
                out = tmp / f"{content}_out"
                best, cpu = float("inf"), float("inf")
                for _ in range(args.repeats):
                    shutil.rmtree(out, ignore_errors=True)
                    t, c = time.perf_counter(), time.process_time()
                    summary = extract_bag(bag, out, image_topic="/carla/hero/rgb_front/image",
                                          mask_topic="/carla/hero/semantic_segmentation_front/image",
                                          progress=False, png_compress_level=level, workers=nw)
                    best = min(best, time.perf_counter() - t)
                    cpu = min(cpu, time.process_time() - c)
                ok &= summary.frames == args.pairs and verify(out, canvas, args.pairs, args.width)
                mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
                rate = args.pairs / best
                table.add_row(content, str(nw), str(level), f"{best:.2f}", f"{rate:.0f}",
                              f"{cpu / args.pairs * 1e3:.1f}", f"{mb:.0f}",
                              "PASS" if rate >= GOAL_PAIRS_PER_S else "FAIL")
        out = tmp / f"{content}_out"
        t = time.perf_counter()
        summary = extract_bag(bag, out, image_topic="/carla/hero/rgb_front/image",
                              mask_topic="/carla/hero/semantic_segmentation_front/image", progress=False)
        sec = time.perf_counter() - t
        table.add_row(f"{content} (re-run, complete)", "-", "-", f"{sec:.2f}", f"{args.pairs / sec:.0f}", "-", "0",
                      f"{summary.written} rewritten")
    console = Console(width=120)
    console.print(table)
    for n in notes:
        console.print(n)
    console.print(f"goal: >= {GOAL_PAIRS_PER_S:.0f} pairs/s on {args.cores or ncpu} cores; files match the bag: "
                  f"{'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
