"""Benchmark: camera segmentation inference speed, eager PyTorch against ONNX Runtime (issue 5).

What is measured
----------------
For every model and image size, randomly initialised networks with 20 classes (the speed of
these dense operations does not depend on the weights), batch 1:

- ``net``: the network alone on a normalised ``(1, 3, H, W)`` float32 input (``model(x)`` under
  ``torch.inference_mode``, or one ``InferenceSession.run``).
- ``frame``: a whole frame, ``(H, W, 3)`` uint8 RGB in, ``(H, W)`` class ids out, through the
  terraseg predictors (normalisation, network, softmax, argmax): ``ImagePredictor`` for PyTorch,
  ``OrtImagePredictor`` for ONNX Runtime.

Backends (CPU, the default): ``eager`` (PyTorch fp32, NCHW, the reference of the speed-up
columns), ``eager-cl`` (a copy of the model and its input in channels-last memory format) and
``onnxruntime`` (:func:`terraseg.inference.onnx_export.export_onnx` at the fixed frame size,
then the CPU execution provider). PyTorch and ONNX Runtime both use ``--threads`` intra-op
threads (default: all cores). With ``--device cuda`` the GPU backends are measured instead:
eager fp32, fp32 channels-last, and autocast fp16 / bf16 with channels-last (speed-up against
GPU eager fp32); on a machine without CUDA this prints that and exits 0.

Timing: each backend in turn runs ``--warmup`` untimed calls (oneDNN primitive creation, ONNX
Runtime's first-run allocations), then ``--repeats`` timed ``net`` + ``frame`` pairs. Backends
are not interleaved: the idle worker threads of ONNX Runtime and of OpenMP spin for a while
after each call and would slow whichever runtime runs next. Columns are the medians, in
milliseconds, ``min`` the fastest frame (the better estimate on a busy machine), ``FPS = 1000
/ frame ms`` (median), ``cpu`` the median process CPU time of a frame (all threads, including
idle ones spinning), and the speed-up of ``net`` and ``frame`` (medians) against the first
backend (``eager``) measured in the same run.

Sizes are camera resolutions, WIDTH x HEIGHT (640x480 is 640 pixels wide). The frame is the
RELLIS-3D frame 104 camera image resized to the size (``--synthetic`` or no shared data: a
smooth random image).

Goals (project context): LiteFPN, the real-time network, at least 1.5x faster through ONNX
Runtime than eager PyTorch, and at least 15 FPS at 640x480 on 2 CPU cores (ONNX Runtime,
whole frame).

Usage::

    python benchmarks/bench_models_image.py [--quick] [--repeats 5] [--warmup 1] [--threads N]
        [--models litefpn,upernet:resnet18,upernet] [--sizes 512x512,1024x768] [--rt-size 640x480]
        [--device cpu|cuda] [--exporter auto|dynamo|torchscript] [--no-onnx] [--synthetic] [--data DIR]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from _common import cpu_model
from torch import nn

from terraseg.inference.image import ImagePredictor
from terraseg.models.image import build_image_model

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CAMERA_IMAGE = Path("rellis3d") / "frame000104-1581624663_149.jpg"
MODELS = ("litefpn", "upernet:resnet18", "upernet")
QUICK_MODELS = ("litefpn", "upernet:resnet18")
SIZES = ("512x512", "1024x768")
REAL_TIME_ARCHS = ("litefpn",)
NUM_CLASSES = 20
GOAL_ORT_SPEEDUP = 1.5
GOAL_RT_FPS = 15.0


# ---------------------------------------------------------------------------------------------- helpers
def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` (WIDTH x HEIGHT) -> ``(height, width)`` = (480, 640)."""
    try:
        w, h = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must be WIDTHxHEIGHT, e.g. 640x480") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} must be positive")
    return h, w


def size_text(hw: tuple[int, int]) -> str:
    return f"{hw[1]}x{hw[0]}"


def parse_model(spec: str) -> tuple[str, str | None]:
    """``"upernet:resnet18"`` -> ("upernet", "resnet18"); ``"litefpn"`` -> ("litefpn", None)."""
    arch, _, enc = spec.partition(":")
    return arch.strip(), (enc.strip() or None)


def load_image(hw: tuple[int, int], data: Path, synthetic: bool) -> tuple[np.ndarray, str]:
    """``(H, W, 3)`` uint8 frame and its description: the RELLIS-3D camera image resized
    (bilinear), else a smooth random image (low-resolution noise upsampled)."""
    from PIL import Image

    h, w = hw
    path = data / CAMERA_IMAGE
    if not synthetic and path.is_file():
        with Image.open(path) as im:
            return np.array(im.convert("RGB").resize((w, h), Image.BILINEAR)), f"RELLIS-3D frame 104 ({path})"
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
    img = np.array(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    return img, "synthetic smooth random image (shared data not used)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Wrapped(nn.Module):
    """Run ``model`` with its input in channels-last format and/or under autocast; logits float32.

    ``forward(x (N, 3, H, W) float) -> (N, K, H, W) float32`` (eval-mode logits).
    """

    def __init__(self, model: nn.Module, channels_last: bool, amp_dtype: torch.dtype | None) -> None:
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.amp_dtype = amp_dtype
        self.num_classes = model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.amp_dtype is None:
            return self.model(x)
        with torch.autocast(device_type=x.device.type, dtype=self.amp_dtype):
            out = self.model(x)
        return out.float()


@dataclass
class Backend:
    """One way of running a model: ``net()`` runs the network once, ``frame()`` a whole frame."""

    name: str
    net: Callable[[], object]
    frame: Callable[[], object]
    device: torch.device
    net_s: list[float] = field(default_factory=list)
    frame_s: list[float] = field(default_factory=list)
    frame_cpu_s: list[float] = field(default_factory=list)

    def time(self) -> None:
        sync(self.device)
        t0 = time.perf_counter()
        self.net()
        sync(self.device)
        t1 = time.perf_counter()
        c1 = time.process_time()
        self.frame()
        sync(self.device)
        self.frame_cpu_s.append(time.process_time() - c1)
        self.frame_s.append(time.perf_counter() - t1)
        self.net_s.append(t1 - t0)

    def median_ms(self, which: str) -> float:
        return statistics.median(getattr(self, f"{which}_s")) * 1e3


@dataclass
class Row:
    """One table row: medians in milliseconds, speed-ups against the model's first backend."""

    model: str
    size: tuple[int, int]
    backend: str
    net_ms: float
    frame_ms: float
    min_ms: float
    cpu_ms: float
    speedup_net: float
    speedup_frame: float

    @property
    def fps(self) -> float:
        return 1e3 / self.frame_ms


# ---------------------------------------------------------------------------------------------- backends
def inference(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run under ``torch.inference_mode``."""
    def run() -> object:
        with torch.inference_mode():
            return fn()
    return run


def torch_backend(name: str, model: nn.Module, image: np.ndarray, device: torch.device, channels_last: bool,
                  amp_dtype: torch.dtype | None) -> Backend:
    """Eager PyTorch: ``net`` on a normalised tensor, ``frame`` through :class:`ImagePredictor`."""
    net = model if (device.type == "cpu" and not channels_last) else copy.deepcopy(model)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    wrapped = Wrapped(net, channels_last, amp_dtype).to(device).eval()
    predictor = ImagePredictor(wrapped, device=device, num_classes=model.num_classes)
    x = predictor.norm.torch(torch.from_numpy(image).to(device).permute(2, 0, 1)[None])
    return Backend(name, inference(lambda: wrapped(x)), inference(lambda: predictor.predict(image)), device)


def ort_backend(model: nn.Module, image: np.ndarray, folder: Path, threads: int, exporter: str,
                providers: list[str]) -> tuple[Backend, str]:
    """ONNX Runtime: export at the frame size, ``net`` = one session run, ``frame`` through
    :class:`OrtImagePredictor`. Returns the backend and a line on the export."""
    from terraseg.inference.onnx_export import OrtImagePredictor, export_onnx

    h, w = image.shape[:2]
    report = export_onnx(model, folder / f"model_{h}x{w}.onnx", (h, w), exporter=exporter)
    predictor = OrtImagePredictor(report.path, providers=providers, threads=threads)
    x = predictor.norm.torch(torch.from_numpy(image).permute(2, 0, 1)[None]).numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    session, feed = predictor.session, {predictor.input_name: x}
    name = "onnxruntime" if providers == ["CPUExecutionProvider"] else "onnxruntime-cuda"
    line = (f"{report.exporter} exporter, {report.seconds:.1f} s, argmax agreement with PyTorch "
            f"{report.agreement:.5f}, {report.path.stat().st_size / 2**20:.1f} MiB")
    return Backend(name, lambda: session.run([predictor.output_name], feed), lambda: predictor.predict(image),
                   torch.device("cpu")), line


def build_backends(model: nn.Module, image: np.ndarray, args: argparse.Namespace, folder: Path,
                   notes: list[str], label: str) -> list[Backend]:
    """The backends of one model and frame; the first is the speed-up reference."""
    if args.device == "cuda":
        dev = torch.device("cuda")
        backends = [torch_backend("cuda fp32", model, image, dev, False, None),
                    torch_backend("cuda fp32 cl", model, image, dev, True, None),
                    torch_backend("cuda fp16 amp cl", model, image, dev, True, torch.float16)]
        if torch.cuda.is_bf16_supported():
            backends.append(torch_backend("cuda bf16 amp cl", model, image, dev, True, torch.bfloat16))
        if not args.no_onnx:
            import onnxruntime as ort

            if "CUDAExecutionProvider" in ort.get_available_providers():
                be, line = ort_backend(model.cpu(), image, folder, args.threads, args.exporter,
                                       ["CUDAExecutionProvider", "CPUExecutionProvider"])
                backends.append(be)
                notes.append(f"onnx {label}: {line}")
            else:
                notes.append(f"onnx {label}: skipped, ONNX Runtime has no CUDAExecutionProvider "
                             "(onnxruntime-gpu is not installed)")
        return backends
    cpu = torch.device("cpu")
    backends = [torch_backend("eager", model, image, cpu, False, None),
                torch_backend("eager-cl", model, image, cpu, True, None)]
    if not args.no_onnx:
        be, line = ort_backend(model, image, folder, args.threads, args.exporter, ["CPUExecutionProvider"])
        backends.append(be)
        notes.append(f"onnx {label}: {line}")
    return backends


def bench_model(spec: str, hw: tuple[int, int], args: argparse.Namespace, folder: Path,
                notes: list[str]) -> list[Row]:
    """Time every backend of one model at one size."""
    arch, encoder = parse_model(spec)
    torch.manual_seed(0)
    model = build_image_model(arch, encoder, NUM_CLASSES).eval()
    image, _ = load_image(hw, args.data, args.synthetic)
    label = f"{spec} {size_text(hw)}"
    backends = build_backends(model, image, args, folder, notes, label)
    for be in backends:  # one backend at a time: see the module docstring
        for _ in range(args.warmup):
            be.net()
            be.frame()
        sync(be.device)
        for _ in range(args.repeats):
            be.time()
    ref_net, ref_frame = backends[0].median_ms("net"), backends[0].median_ms("frame")
    rows = []
    for be in backends:
        net, frame = be.median_ms("net"), be.median_ms("frame")
        rows.append(Row(spec, hw, be.name, net, frame, min(be.frame_s) * 1e3, statistics.median(be.frame_cpu_s) * 1e3,
                        ref_net / net, ref_frame / frame))
    return rows


# ---------------------------------------------------------------------------------------------- report
HEADER = (f"{'model':<20} {'size':>9} {'backend':<17} {'net ms':>8} {'frame ms':>9} {'min ms':>8} {'FPS':>7} "
          f"{'cpu ms':>8} {'x net':>6} {'x frame':>7}")


def print_row(r: Row) -> None:
    print(f"{r.model:<20} {size_text(r.size):>9} {r.backend:<17} {r.net_ms:8.1f} {r.frame_ms:9.1f} {r.min_ms:8.1f} "
          f"{r.fps:7.2f} {r.cpu_ms:8.1f} {r.speedup_net:6.2f} {r.speedup_frame:7.2f}")


def print_goals(rows: list[Row], rt_size: tuple[int, int], threads: int) -> None:
    """The goals of the real-time network, checked on the rows of this run: on the whole frame
    (what a robot gets) and, for comparison, on the network alone."""
    print()
    print(f"Goals (real-time network {', '.join(REAL_TIME_ARCHS)}, ONNX Runtime; judged on whole frames):")
    rt = [r for r in rows if parse_model(r.model)[0] in REAL_TIME_ARCHS and r.backend == "onnxruntime"]
    if not rt:
        print("  not checked: no ONNX Runtime rows of the real-time network in this run")
        return
    for r in rt:
        ok = r.speedup_frame >= GOAL_ORT_SPEEDUP
        print(f"  {r.model} {size_text(r.size)}: ONNX Runtime {r.speedup_frame:.2f}x eager per frame, "
              f"{r.speedup_net:.2f}x on the network alone (goal >= {GOAL_ORT_SPEEDUP}x): {'met' if ok else 'NOT met'}")
    where = "2 cores" if threads == 2 else f"{threads} threads (the goal is for 2 cores)"
    for r in rt:
        if r.size == rt_size:
            ok = r.fps >= GOAL_RT_FPS
            print(f"  {r.model} {size_text(r.size)}: {r.fps:.1f} FPS per frame, {1e3 / r.net_ms:.1f} FPS on the "
                  f"network alone, {where} (goal >= {GOAL_RT_FPS:g} FPS): {'met' if ok else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"fewer runs: models {','.join(QUICK_MODELS)}, size 512x512 (+ --rt-size), 3 repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds, median reported (default 5, quick 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per backend first (default 1)")
    ap.add_argument("--threads", type=int, default=0, help="PyTorch and ONNX Runtime threads (default: all cores)")
    ap.add_argument("--models", default=None, help=f"comma-separated arch[:encoder] (default {','.join(MODELS)})")
    ap.add_argument("--sizes", default=None, help=f"comma-separated WIDTHxHEIGHT (default {','.join(SIZES)})")
    ap.add_argument("--rt-size", type=parse_size, default=(480, 640),
                    help="extra size of the real-time network, WIDTHxHEIGHT (default 640x480)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (default) or cuda backends")
    ap.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                    help="ONNX exporter (default auto: dynamo, then TorchScript)")
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime backend")
    ap.add_argument("--synthetic", action="store_true", help="use a synthetic frame even if shared data exists")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    args = ap.parse_args(argv)
    args.repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    if args.repeats < 1 or args.warmup < 0 or args.threads < 0:
        ap.error("--repeats must be >= 1, --warmup and --threads >= 0")
    models = [m.strip() for m in (args.models or ",".join(QUICK_MODELS if args.quick else MODELS)).split(",")
              if m.strip()]
    try:
        sizes = [parse_size(s.strip()) for s in (args.sizes or ("512x512" if args.quick else ",".join(SIZES)))
                 .split(",") if s.strip()]
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    args.threads = args.threads or os.cpu_count() or 1

    print("Camera segmentation inference benchmark (batch 1, random weights, 20 classes)")
    print(f"  machine : {cpu_model()}, os.cpu_count()={os.cpu_count()}, threads={args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}")
    import onnxruntime as ort

    print(f"  versions: python {platform.python_version()}, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, numpy {np.__version__}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("  CUDA is unavailable on this machine: skipping the GPU measurements "
                  "(run without --device cuda for the CPU ones)")
            return 0
        print(f"  GPU     : {torch.cuda.get_device_name(0)}")
    torch.set_num_threads(args.threads)
    print(f"  frame   : {load_image((8, 8), args.data, args.synthetic)[1]}, resized to each size")
    print(f"  timing  : median of {args.repeats} runs after {args.warmup} warm-up call(s) per backend, "
          "milliseconds; 'x' = speed-up against the first backend of the model and size")
    print()
    print(HEADER)
    print("-" * len(HEADER))
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="terraseg-bench-") as tmp:
        for spec in models:
            arch = parse_model(spec)[0]
            model_sizes = list(sizes)
            if arch in REAL_TIME_ARCHS and args.rt_size not in model_sizes:
                model_sizes.insert(0, args.rt_size)
            for hw in model_sizes:
                for r in bench_model(spec, hw, args, Path(tmp), notes):
                    print_row(r)
                    rows.append(r)
                sys.stdout.flush()
    if notes:
        print()
        for n in notes:
            print(f"  {n}")
    if args.device == "cpu":
        print_goals(rows, args.rt_size, args.threads)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
