"""Benchmark: end-to-end per-frame latency of the real-time runtime (issue 8), ONNX Runtime vs PyTorch.

What is measured
----------------
The whole runtime path of ``terraseg run`` for one frame: **read** (a ROS 2 bag message
deserialised and decoded to numpy), **pre-process**, **infer**, **post-process** and **write**
(a ROS 2 bag of the predictions: mono8 ids + rgb8 colours for the camera, a labelled
PointCloud2 for the LiDAR), through :class:`terraseg.inference.runtime.Pipeline` with its reader,
inference and writer threads. Randomly initialised networks with 20 classes (speed does not
depend on the weights), batch 1, on ``--threads`` CPU threads (default 2, the on-robot budget):

- camera: 640 x 480 frames (``--camera-size HxW``), LiteFPN (MobileNetV3-Large encoder), as a
  terraseg checkpoint on PyTorch and exported to ONNX at the frame size;
- LiDAR: organised 64 x 2048 scans (``--scan-size``; 131,072 points, ~40 % without return) with
  the range network SalsaNext (``--range-preset``, default ``rt``) on the sensor's own
  layout, checkpoint on PyTorch and :func:`~terraseg.inference.range_onnx.export_range_onnx`.

Backends: ``onnxruntime`` (the runtime's default: normalisation and argmax inside the ONNX graph,
:mod:`terraseg.inference.onnx_fuse`), ``onnxruntime-unfused`` (the same file run as exported,
with PyTorch normalising the image and taking the argmax / softmax around it: the reference the
fused row is compared with) and ``pytorch`` (the checkpoint, eager).

The input bag holds ``--frames`` synthetic frames per stream at 10 Hz. Each stream / backend
runs in two modes:

- ``max``: the bag as fast as possible, drop policy ``block`` with a one-frame queue: the
  sustained throughput (``FPS`` = predicted frames / wall time) with reading and writing
  overlapping inference, as on the robot;
- ``rt``: the bag paced at the sensor rate (camera ``--camera-hz``, default 15 Hz; LiDAR
  ``--lidar-hz``, default 10 Hz) with the default ``latest`` drop policy: the latency a frame
  really sees (``p50`` / ``p95`` / ``max`` of ``total``, from the start of reading to the end of
  writing) and the frames dropped because inference could not keep up;

plus ``both`` (``--no-combined`` skips it): camera and LiDAR on ONNX Runtime together, each at
its sensor rate with one thread per model, which is how they share 2 cores on the robot.

Columns: per-stage medians in milliseconds (``read``, ``pre``, ``infer``, ``post``, ``write``),
latency ``p50`` / ``p95`` / ``max`` (ms; not shown for ``max`` rows, where frames wait for the
blocked reader and the queue by design), ``FPS`` and ``drop`` (frames dropped / frames in). The
first frame of every run is a warm-up (run once untimed, see the runtime docs). The machine's
load average is printed first: other processes on the cores slow every row.

When the machine has more CPUs than ``--threads`` the process is pinned to that many
(``--no-pin`` lifts it). Goals (project context): on 2 CPU cores with ONNX Runtime, LiDAR p95 at
most 100 ms and the camera network at least 15 FPS sustained.

Usage::

    python benchmarks/bench_runtime.py [--frames 30] [--threads 2] [--camera-size 480x640]
        [--scan-size 64x2048] [--range-preset rt] [--backends onnxruntime,onnxruntime-unfused,pytorch]
        [--streams camera,lidar] [--camera-hz 15] [--lidar-hz 10] [--no-combined] [--no-write]
        [--exporter torchscript] [--ort-spin] [--no-pin] [--json FILE]
    python benchmarks/bench_runtime.py --quick      # smoke test: tiny sizes, a few frames
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import cpu_model, pin_cores

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from terraseg.inference.runtime import BagSink, BagSource, Pipeline, Prediction, SensorMessage, load_backend  # noqa: E402

CAMERA_TOPIC, LIDAR_TOPIC = "/camera/image", "/lidar/points"
STAGES = ("read", "preprocess", "infer", "postprocess", "write")




def parse_hw(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w)


# ---------------------------------------------------------------------------------------------- data
def synthetic_image(hw: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth random (H, W, 3) uint8 image with some texture."""
    rng = np.random.default_rng(seed)
    h, w = hw
    coarse = rng.uniform(0, 255, (max(h // 32, 2), max(w // 32, 2), 3))
    rows = np.linspace(0, coarse.shape[0] - 1, h).astype(int)
    cols = np.linspace(0, coarse.shape[1] - 1, w).astype(int)
    img = coarse[rows][:, cols] + rng.normal(0, 12, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_scan(hw: tuple[int, int], seed: int) -> np.ndarray:
    """An organised (H * W, 4) float32 scan, stored column by column like the RELLIS-3D Ouster
    scans, with ~40 % no-return zero points (``benchmarks/_synthetic.organized_scan`` at any size)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    el = np.radians(np.linspace(17.0, -16.4, h))[:, None]
    yaw = np.radians(-np.arange(w) * 360.0 / w)[None, :]
    r = np.where(el < 0, np.minimum(1.5 / np.maximum(np.sin(-el), 1e-3), 60.0), rng.uniform(3, 60, (h, w)))
    r = r * rng.uniform(0.95, 1.05, (h, w))
    pts = np.stack([r * np.cos(el) * np.cos(yaw), r * np.cos(el) * np.sin(yaw), r * np.sin(el) + 0 * yaw,
                    rng.uniform(0, 1, (h, w))], axis=-1)
    pts[rng.random((h, w)) < 0.4] = 0.0
    return pts.transpose(1, 0, 2).reshape(-1, 4).astype(np.float32)


def write_input_bag(path: Path, frames: int, cam_hw: tuple[int, int], scan_hw: tuple[int, int]) -> None:
    """A ROS 2 bag with ``frames`` camera images and scans at 10 Hz (a few distinct frames, cycled)."""
    from terraseg.io.bags import BagWriter

    images = [synthetic_image(cam_hw, s) for s in range(4)]
    scans = [synthetic_scan(scan_hw, s) for s in range(4)]
    with BagWriter(path) as w:
        for i in range(frames):
            stamp = 1_000_000_000 + i * 100_000_000
            w.write_image(CAMERA_TOPIC, images[i % 4], stamp, "camera")
            w.write_pointcloud(LIDAR_TOPIC, scans[i % 4], ("x", "y", "z", "intensity"), stamp, "lidar")


def build_models(folder: Path, args: argparse.Namespace) -> dict[str, dict[str, Path]]:
    """Checkpoints and ONNX files: ``{"camera": {"pytorch": ..., "onnxruntime": ...}, "lidar": {...}}``."""
    from terraseg.inference.onnx_export import export_onnx
    from terraseg.inference.range_onnx import export_range_onnx
    from terraseg.models.image import build_image_model
    from terraseg.models.points import OrganizedLayout, build_point_model
    from terraseg.models.surgery import save_checkpoint
    from terraseg.ontology import get_ontology

    onto = get_ontology("sim")  # 20 classes
    out: dict[str, dict[str, Path]] = {}
    torch.manual_seed(0)
    if "camera" in args.streams:
        model = build_image_model("litefpn", args.camera_encoder, ontology=onto).eval()
        meta = {"preprocess": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "base_size": None}}
        out["camera"] = {"pytorch": save_checkpoint(folder / "litefpn.pth", model, meta=meta)}
        if any(b.startswith("onnxruntime") for b in args.backends):
            rep = export_onnx(model, folder / "litefpn.onnx", args.camera_size, exporter=args.exporter, meta=meta)
            print(f"camera: {rep}")
            out["camera"]["onnxruntime"] = rep.path
    if "lidar" in args.streams:
        h, w = args.scan_size
        model = build_point_model("salsanext", onto.num_classes, preset=args.range_preset).eval()
        model.ontology = onto  # type: ignore[assignment]
        meta = {"preprocess": {"projection": f"organized:{h}x{w}"}}
        out["lidar"] = {"pytorch": save_checkpoint(folder / "salsanext.pth", model, ontology=onto, meta=meta)}
        if any(b.startswith("onnxruntime") for b in args.backends):
            rep2 = export_range_onnx(model, folder / "salsanext.onnx", (h, w), projection=OrganizedLayout(h, w))
            print(f"lidar: {rep2.path}: range image {h}x{w}, argmax agreement {rep2.agreement:.5f}, "
                  f"{rep2.seconds:.1f} s")
            out["lidar"]["onnxruntime"] = rep2.path
    return out


# ---------------------------------------------------------------------------------------------- runs
class TimingSink:
    """Keeps every prediction's stage times (a benchmark holds few frames)."""

    def __init__(self) -> None:
        self.timings: dict[str, list[dict[str, float]]] = {}

    def write(self, p: Prediction) -> None:
        # the dict itself: the runtime adds "write" and "total" once every sink has returned
        self.timings.setdefault(p.message.topic, []).append(p.timings_ms)

    def on_drop(self, message: SensorMessage, reason: str) -> None:
        pass

    def close(self) -> None:
        pass


def run_mode(bag: Path, out: Path, kind: str, backend: Any, mode: str, args: argparse.Namespace,
             hz: float) -> dict[str, Any]:
    """One stream over the bag in ``max`` (as fast as possible, no drops) or ``rt`` (paced at ``hz``) mode."""
    rt = mode == "rt"
    src = BagSource(bag, camera=kind == "camera", lidar=kind == "lidar", semantic_topic="", realtime=rt,
                    speed=hz / 10.0 if rt else 1.0)  # the bag is at 10 Hz
    timing = TimingSink()
    sinks: list[Any] = [timing] + ([] if args.no_write else [BagSink(out, overwrite=True)])
    stats = Pipeline(src, {kind: backend}, sinks, policy="latest" if rt else "block",  # type: ignore[dict-item]
                     queue_size=None if rt else 1).run()
    ((topic, st),) = stats.streams.items()
    return _row(st, timing.timings.get(topic, []), mode)


def run_parallel(bag: Path, out: Path, backends: dict[str, Any], args: argparse.Namespace,
                 hz: dict[str, float]) -> list[dict[str, Any]]:
    """Camera and LiDAR at their own rates, each from its own reader, concurrently (two pipelines)."""
    import threading

    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def one(kind: str) -> None:
        try:
            src = BagSource(bag, camera=kind == "camera", lidar=kind == "lidar", semantic_topic="", realtime=True,
                            speed=hz[kind] / 10.0)
            timing = TimingSink()
            sinks: list[Any] = [timing] + ([] if args.no_write else [BagSink(out.with_name(out.name + kind),
                                                                              overwrite=True)])
            stats = Pipeline(src, {kind: backends[kind]}, sinks, policy="latest").run()  # type: ignore[dict-item]
            (topic, st), = stats.streams.items()
            results[kind] = _row(st, timing.timings.get(topic, []), "both")
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in sorted(backends)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [results[k] for k in sorted(results)]


def _row(st: Any, timings: list[dict[str, float]], mode: str) -> dict[str, Any]:
    def med(stage: str) -> float:
        vals = [t[stage] for t in timings if stage in t]
        return statistics.median(vals) if vals else float("nan")

    total = st.stages.get("total")
    return {"stream": st.kind, "topic": st.topic, "backend": st.backend, "mode": mode, "frames": st.frames_in,
            "predicted": st.predicted, "dropped": st.dropped_total, **{s: med(s) for s in STAGES},
            "p50": total.percentile(50) if total else float("nan"),
            "p95": total.percentile(95) if total else float("nan"),
            "max": total.max if total and total.count else float("nan"),
            "fps": st.throughput_fps() or float("nan")}


# ---------------------------------------------------------------------------------------------- output
HEADER = ("stream", "backend", "mode", "read", "pre", "infer", "post", "write", "p50", "p95", "max", "FPS", "drop")


def print_table(rows: list[dict[str, Any]]) -> None:
    def lat(r: dict[str, Any], k: str) -> str:
        # max rows: frames wait for the reader's blocked hand-over and the queue, latency is not meaningful
        return "-" if r["mode"] == "max" else f"{r[k]:.1f}"

    cells = [[r["stream"], r["backend"], r["mode"], *(f"{r[s]:.1f}" for s in STAGES),
              lat(r, "p50"), lat(r, "p95"), lat(r, "max"), f"{r['fps']:.1f}",
              f"{r['dropped']}/{r['frames']}"] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(HEADER)]
    print("  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(HEADER, widths))))
    print("-" * (sum(widths) + 2 * (len(widths) - 1)))
    for c in cells:
        print("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
    print()
    for stream in ("camera", "lidar"):  # the in-graph pre/post-processing against the plain graph, same run
        by = {(r["backend"], r["mode"]): r for r in rows if r["stream"] == stream}
        for (name, mode), r in by.items():
            ref = by.get((name + " (unfused)", mode))
            if ref is not None and mode == "max" and r["fps"] > 0 and ref["fps"] > 0:
                print(f"{stream}: fused graph {r['fps']:.1f} FPS vs unfused {ref['fps']:.1f} FPS "
                      f"({r['fps'] / ref['fps']:.2f}x)")
    print()


def print_goals(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    for r in rows:
        if not r["backend"].startswith("onnxruntime") or "unfused" in r["backend"]:
            continue
        if r["stream"] == "lidar" and r["mode"] in ("rt", "both"):
            ok = r["p95"] <= 100.0
            print(f"lidar {args.scan_size[0]}x{args.scan_size[1]} ONNX Runtime ({r['mode']}): p95 {r['p95']:.1f} ms "
                  f"(goal <= 100 ms): {'met' if ok else 'NOT met'}")
        if r["stream"] == "camera" and r["mode"] == "max":
            ok = r["fps"] >= 15.0
            print(f"camera {args.camera_size[0]}x{args.camera_size[1]} ONNX Runtime: {r['fps']:.1f} FPS sustained "
                  f"(goal >= 15 FPS): {'met' if ok else 'NOT met'}")
        if r["stream"] == "camera" and r["mode"] in ("rt", "both"):
            print(f"camera at {args.camera_hz:g} Hz ({r['mode']}): {r['dropped']} of {r['frames']} frames dropped, "
                  f"p95 {r['p95']:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=30, help="frames per stream in the input bag")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch and ONNX Runtime)")
    p.add_argument("--camera-size", type=parse_hw, default=(480, 640), help="camera frame HxW")
    p.add_argument("--camera-encoder", default="tu-mobilenetv3_large_100", help="LiteFPN encoder")
    p.add_argument("--scan-size", type=parse_hw, default=(64, 2048), help="organised scan HxW (beams x columns)")
    p.add_argument("--range-preset", default="rt", help="SalsaNext preset: default, small, tiny, rt or rt-tiny")
    p.add_argument("--backends", default="onnxruntime,onnxruntime-unfused,pytorch")
    p.add_argument("--ort-spin", action="store_true",
                   help="let ONNX Runtime's idle threads spin-wait (its default; the runtime turns it off)")
    p.add_argument("--streams", default="camera,lidar")
    p.add_argument("--camera-hz", type=float, default=15.0)
    p.add_argument("--lidar-hz", type=float, default=10.0)
    p.add_argument("--no-combined", action="store_true", help="skip camera + LiDAR together")
    p.add_argument("--no-write", action="store_true", help="no bag output (write stage 0)")
    p.add_argument("--exporter", default="torchscript", help="ONNX exporter of the camera model")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    p.add_argument("--quick", action="store_true", help="smoke test: 120x160 frames, 16x256 scans, 6 frames, "
                                                        "small encoder, tiny range network, 1 thread")
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.threads, args.camera_size, args.scan_size = 6, 1, (120, 160), (16, 256)
        args.camera_encoder, args.range_preset = "tu-mobilenetv3_small_100", "tiny"
    args.backends = [b for b in args.backends.split(",") if b]
    args.streams = [s for s in args.streams.split(",") if s]
    pinned = None if args.no_pin else pin_cores(args.threads)
    torch.set_num_threads(args.threads)
    print(f"# terraseg runtime benchmark: {platform.python_version()}, torch {torch.__version__}, {cpu_model()}, "
          f"{args.threads} thread(s){f', pinned to CPUs {pinned}' if pinned else ''}; load average "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"# camera {args.camera_size[0]}x{args.camera_size[1]} LiteFPN ({args.camera_encoder}); LiDAR "
          f"{args.scan_size[0]}x{args.scan_size[1]} SalsaNext {args.range_preset}; {args.frames} frames per stream")
    hz = {"camera": args.camera_hz, "lidar": args.lidar_hz}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_runtime_") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        write_input_bag(folder / "input_bag", args.frames, args.camera_size, args.scan_size)
        models = build_models(folder, args)
        print(f"# inputs and models ready in {time.perf_counter() - t0:.1f} s\n")
        for kind in args.streams:
            for backend in args.backends:
                fuse = backend != "onnxruntime-unfused"
                file = models[kind]["onnxruntime" if backend == "onnxruntime-unfused" else backend]
                b = load_backend(file, kind, device="cpu", threads=args.threads, fuse=fuse,  # type: ignore[arg-type]
                                 spin=args.ort_spin)
                for mode in ("max", "rt"):
                    rows.append(run_mode(folder / "input_bag", folder / f"out_{kind}_{backend}_{mode}", kind, b,
                                         mode, args, hz[kind]))
        if not args.no_combined and "onnxruntime" in args.backends and len(args.streams) == 2:
            both = {k: load_backend(models[k]["onnxruntime"], k, device="cpu", threads=1,  # type: ignore[arg-type]
                                    spin=args.ort_spin) for k in args.streams}
            rows += run_parallel(folder / "input_bag", folder / "out_both_", both, args, hz)
    print_table(rows)
    print_goals(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
