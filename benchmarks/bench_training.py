"""Benchmark: training throughput of the camera and LiDAR segmentation networks (issue 6).

What is measured
----------------
One training step = ``zero_grad`` + forward (train mode) + loss + backward + ``AdamW.step``, on
randomly initialised networks with 20 classes and random integer targets (the speed of these
dense operations does not depend on the values):

- camera: UPerNet and LiteFPN (``--models``) on ``--size`` x ``--size`` crops (512 by default),
  batches ``--batches`` (2 and 4); the auxiliary head, when the architecture has one on by
  default (UPerNet), adds its loss with weight 0.4 as the training engine does.
- range network: SalsaNext ``--range-presets`` (default and small) on the RELLIS-3D frame 104
  scan as an organised 64 x 2048 range image (RELLIS-3D normalisation, 5 channels), batch
  ``--point-batch``; ``--range-width`` crops the image to its first W columns.
- RandLA-Net ``--randla-presets`` (default): crops of ``--crop-points`` (45,056, the paper's)
  nearest points around random centres of the same scan, built with ``randla_inputs``
  (neighbour / sub-sampling hierarchy); batch ``--point-batch``. The ``data ms`` column is the
  time ``randla_inputs`` takes per crop, the work a data-loader worker does (not in the step).

The loss is ``--loss`` (``terraseg.training.build_loss`` names, comma-separated; default
``ce``). ``--warmup`` steps are run first and not timed; then ``--repeats`` timed steps.
Columns: median ``ms/step`` and the fastest step (``min ms``, the better estimate on a busy
machine), ``steps/s`` and ``samples/s`` (= batch x steps/s from the median; images/s for the
camera rows), ``cpu``, the median process CPU time of a step (all threads; idle OpenMP threads
spinning on a busy machine count too), and the peak memory of the configuration.

Peak memory: CPU, the peak resident set size while the configuration runs (model, optimiser
state, activations and gradients) above the resident size just before its model was built.
On Linux the C heap's free memory is handed back first (glibc ``malloc_trim``) and the
kernel's high-water mark (``VmHWM``) reset (``/proc/self/clear_refs``), so every row has its own
peak; elsewhere ``ru_maxrss`` is used, which never resets, so a row whose peak stays below an
earlier one shows ``-`` (psutil reports only the current RSS on Linux, so it does not help).
One small untimed LiteFPN step runs before the table so that one-time initialisation (lazy
imports, autograd and oneDNN set-up, a few hundred MB) is not charged to the first row. GPU: ``torch.cuda.max_memory_allocated`` (tensors only, not the
allocator cache or the CUDA context).

Devices: the CPU (fp32, ``--threads`` threads, default all cores) by default; ``--device cuda``
measures fp32 and autocast mixed precision (bf16 where supported, else fp16 with a gradient
scaler), channels-last for the convolutional networks. ``--channels-last both`` adds a
channels-last (NHWC) row after each NCHW row of a convolutional network, on either device (on
the CPU, oneDNN's NHWC kernels make depthwise-heavy networks such as LiteFPN faster to train).
Without CUDA it says so and exits 0.

Usage::

    python benchmarks/bench_training.py [--quick] [--repeats 5] [--warmup 2] [--threads N]
        [--device cpu|cuda] [--models litefpn,upernet:resnet18,upernet] [--size 512] [--batches 2,4]
        [--range-presets default,small] [--randla-presets default] [--point-batch 2]
        [--crop-points 45056] [--range-width 2048] [--channels-last auto|on|off|both] [--loss ce]
        [--skip-images] [--skip-points]
        [--synthetic] [--data DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _common import PeakMemory, cpu_model
from _synthetic import organized_scan
from torch import nn

from terraseg.models.image import build_image_model, unpack_outputs
from terraseg.models.points import build_point_model, collate_randla, randla_inputs, range_input

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MODELS = ("litefpn", "upernet:resnet18", "upernet")
QUICK_MODELS = ("litefpn", "upernet:resnet18")
NUM_CLASSES = 20
AUX_WEIGHT = 0.4
IGNORE_INDEX = 255


# ---------------------------------------------------------------------------------------------- helpers
def load_scan(data: Path, synthetic: bool) -> tuple[np.ndarray, str]:
    """(131072, 4) float32 organised 64 x 2048 scan and its description."""
    from terraseg.io.scans import read_bin

    path = data / "rellis3d" / "000104.bin"
    if not synthetic and path.is_file():
        return read_bin(path), f"RELLIS-3D frame 104 ({path})"
    return organized_scan(intensity_max=0.01), "synthetic organised 64 x 2048 scan (shared data not used)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------- one config
@dataclass
class Job:
    """One training configuration.

    Attributes:
        name, input: table labels.
        batch: samples per step.
        build: returns (model, batch dict on the device); called inside the memory measurement.
        forward: (model, batch) -> (logits (B, C, ...), aux logits or None, target (B, ...)).
        data_ms: per-sample data preparation time shown in the table (NaN: not applicable).
        convolutional: channels-last applies (``--channels-last``).
    """

    name: str
    input: str
    batch: int
    build: Callable[[torch.device], tuple[nn.Module, dict[str, object]]]
    forward: Callable[[nn.Module, dict[str, object]], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]
    data_ms: float = float("nan")
    convolutional: bool = True


@dataclass
class Result:
    """Timings of one job (milliseconds per step: median, fastest, median CPU) and its peak MiB."""

    job: Job
    precision: str
    step_ms: float
    min_ms: float
    cpu_ms: float
    peak_mb: float | None

    @property
    def steps_per_s(self) -> float:
        return 1e3 / self.step_ms


def run_job(job: Job, device: torch.device, amp_dtype: torch.dtype | None, loss_spec: str, warmup: int,
            repeats: int, channels_last: bool = False) -> tuple[Result, str]:
    """Train ``warmup + repeats`` steps of one job; (result, memory method). ``channels_last``
    puts a convolutional job's model and 4-D inputs in channels-last (NHWC) memory order."""
    from terraseg.training import build_loss

    loss_fn = build_loss([s.strip() for s in loss_spec.split(",") if s.strip()], ignore_index=IGNORE_INDEX,
                         num_classes=NUM_CLASSES)
    precision = "fp32" if amp_dtype is None else {torch.bfloat16: "bf16-mixed", torch.float16: "fp16-mixed"}[amp_dtype]
    nhwc = channels_last and job.convolutional
    precision += "+NHWC" if nhwc else ""
    with PeakMemory(device) as mem:
        torch.manual_seed(0)
        model, batch = job.build(device)
        model = model.to(device).train()
        if nhwc:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            batch = {k: v.contiguous(memory_format=torch.channels_last)
                     if isinstance(v, torch.Tensor) and v.dim() == 4 else v for k, v in batch.items()}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        def autocast() -> AbstractContextManager[object]:
            if amp_dtype is None:
                return nullcontext()
            return torch.autocast(device_type=device.type, dtype=amp_dtype)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with autocast():
                logits, aux, target = job.forward(model, batch)
                loss = loss_fn(logits, target)
                if aux is not None:
                    loss = loss + AUX_WEIGHT * loss_fn(aux, target)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        for _ in range(warmup):
            step()
        sync(device)
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            sync(device)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    result = Result(job, precision, statistics.median(wall) * 1e3, min(wall) * 1e3, statistics.median(cpu) * 1e3,
                    mem.peak_mb)
    return result, mem.method


# ---------------------------------------------------------------------------------------------- jobs
def image_jobs(models: list[str], size: int, batches: list[int], device: torch.device) -> list[Job]:
    jobs = []
    for spec in models:
        arch, _, enc = spec.partition(":")
        for b in batches:
            def build(dev: torch.device, arch: str = arch, enc: str = enc, b: int = b) -> tuple[nn.Module, dict]:
                model = build_image_model(arch, enc or None, NUM_CLASSES)
                g = torch.Generator().manual_seed(0)
                x = torch.randn((b, 3, size, size), generator=g).to(dev)
                t = torch.randint(0, NUM_CLASSES, (b, size, size), generator=g).to(dev)
                return model, {"image": x, "target": t}

            def forward(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
                logits, aux = unpack_outputs(model(batch["image"]))
                return logits, aux, batch["target"]

            jobs.append(Job(spec, f"{size}x{size}", b, build, forward))
    return jobs


def range_jobs(scan: np.ndarray, presets: list[str], batch: int, width: int) -> list[Job]:
    from terraseg.geometry.range_image import from_organized
    from terraseg.models.points import normalization

    image = from_organized(scan, 64, 2048, layout="auto", min_range=1e-3)
    means, stds = normalization("rellis3d")
    x0 = torch.from_numpy(range_input(image, means, stds, 5))[..., :width]  # (5, 64, W)
    jobs = []
    for preset in presets:
        def build(dev: torch.device, preset: str = preset) -> tuple[nn.Module, dict]:
            model = build_point_model("salsanext", NUM_CLASSES, preset=preset, normalization="rellis3d")
            g = torch.Generator().manual_seed(0)
            x = x0[None].repeat(batch, 1, 1, 1).to(dev)
            t = torch.randint(0, NUM_CLASSES, (batch, *x0.shape[1:]), generator=g).to(dev)
            return model, {"range": x, "target": t}

        def forward(model: nn.Module, b: dict) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
            return model(b["range"]), None, b["target"]

        jobs.append(Job(f"salsanext:{preset}", f"64x{x0.shape[-1]} range", batch, build, forward))
    return jobs


def randla_crops(scan: np.ndarray, n_points: int, count: int, k: int, ratios: tuple[int, ...],
                 seed: int = 0) -> tuple[list[dict], float]:
    """``count`` RandLA-Net samples: the ``n_points`` nearest returns around random centres.

    Returns the ``randla_inputs`` dicts and the median milliseconds ``randla_inputs`` took per crop.
    """
    xyz = scan[:, :3]
    xyz = xyz[np.einsum("ij,ij->i", xyz, xyz) > 1e-6]
    if len(xyz) < n_points:
        raise SystemExit(f"--crop-points {n_points} is more than the {len(xyz)} returns of the scan")
    rng = np.random.default_rng(seed)
    samples, times = [], []
    for _ in range(count):
        centre = xyz[rng.integers(len(xyz))]
        d2 = np.einsum("ij,ij->i", xyz - centre, xyz - centre)
        crop = xyz[np.argpartition(d2, n_points - 1)[:n_points]]
        t0 = time.perf_counter()
        samples.append(randla_inputs(crop, crop, k=k, ratios=ratios, seed=int(rng.integers(2**31))))
        times.append(time.perf_counter() - t0)
    return samples, statistics.median(times) * 1e3


def randla_jobs(scan: np.ndarray, presets: list[str], batch: int, n_points: int) -> list[Job]:
    from terraseg.models.points import RANDLA_PRESETS
    from terraseg.models.points.randla_data import inputs_to

    jobs = []
    for preset in presets:
        p = RANDLA_PRESETS[preset]
        samples, data_ms = randla_crops(scan, n_points, batch, int(p["k"]), tuple(p["ratios"]))  # type: ignore[arg-type]

        def build(dev: torch.device, preset: str = preset, samples: list = samples) -> tuple[nn.Module, dict]:
            model = build_point_model("randlanet", NUM_CLASSES, preset=preset)
            g = torch.Generator().manual_seed(0)
            b = inputs_to(collate_randla(samples), dev)
            b["target"] = torch.randint(0, NUM_CLASSES, (batch, n_points), generator=g).to(dev)
            return model, b

        def forward(model: nn.Module, b: dict) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
            return model(b).transpose(1, 2), None, b["target"]  # (B, N, C) -> (B, C, N)

        jobs.append(Job(f"randlanet:{preset}", f"{n_points:,} points", batch, build, forward, data_ms,
                        convolutional=False))
    return jobs


# ---------------------------------------------------------------------------------------------- report
HEADER = (f"{'model':<22} {'input':<16} {'batch':>5} {'precision':<15} {'ms/step':>9} {'min ms':>9} {'steps/s':>8} "
          f"{'samples/s':>9} {'cpu ms':>8} {'data ms':>8} {'peak MB':>8}")


def print_result(r: Result) -> None:
    j = r.job
    data = "-" if np.isnan(j.data_ms) else f"{j.data_ms:.0f}"
    peak = "-" if r.peak_mb is None else f"{r.peak_mb:.0f}"
    print(f"{j.name:<22} {j.input:<16} {j.batch:>5} {r.precision:<15} {r.step_ms:9.1f} {r.min_ms:9.1f} {r.steps_per_s:8.3f} "
          f"{j.batch * r.steps_per_s:9.2f} {r.cpu_ms:8.0f} {data:>8} {peak:>8}", flush=True)


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"fewer runs: models {','.join(QUICK_MODELS)}, batch 2, SalsaNext small, 3 repeats, 1 warm-up")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps, median reported (default 5, quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, quick 1)")
    ap.add_argument("--threads", type=int, default=0, help="PyTorch threads (default: all cores)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (fp32, default) or cuda (fp32 + AMP)")
    ap.add_argument("--models", type=names, default=None, help=f"camera models (default {','.join(MODELS)})")
    ap.add_argument("--size", type=int, default=512, help="square camera crop size in pixels (default 512)")
    ap.add_argument("--batches", type=int_list, default=None, help="camera batch sizes (default 2,4; quick 2)")
    ap.add_argument("--range-presets", type=names, default=None, help="SalsaNext presets (default default,small)")
    ap.add_argument("--randla-presets", type=names, default=None, help="RandLA-Net presets (default default)")
    ap.add_argument("--point-batch", type=int, default=2, help="batch of the LiDAR networks (default 2)")
    ap.add_argument("--crop-points", type=int, default=45056, help="points per RandLA-Net crop (default 45056)")
    ap.add_argument("--range-width", type=int, default=2048, help="range-image columns, at most 2048 (default 2048)")
    ap.add_argument("--channels-last", choices=("auto", "on", "off", "both"), default="auto",
                    help="memory order of the convolutional networks: auto (NHWC on CUDA, NCHW on the CPU), "
                         "on, off, or both (a row each)")
    ap.add_argument("--loss", default="ce", help="loss names for build_loss, comma-separated (default ce)")
    ap.add_argument("--skip-images", action="store_true", help="skip the camera networks")
    ap.add_argument("--skip-points", action="store_true", help="skip the LiDAR networks")
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic scan even if shared data exists")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"shared data folder (default {DEFAULT_DATA})")
    args = ap.parse_args(argv)
    q = args.quick
    repeats = args.repeats if args.repeats is not None else (3 if q else 5)
    warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    models = args.models if args.models is not None else list(QUICK_MODELS if q else MODELS)
    batches = args.batches or ([2] if q else [2, 4])
    range_presets = args.range_presets if args.range_presets is not None else (["small"] if q else ["default", "small"])
    randla_presets = args.randla_presets if args.randla_presets is not None else ["default"]
    if repeats < 1 or warmup < 0 or args.threads < 0 or args.point_batch < 1 or args.size < 32:
        ap.error("--repeats and --point-batch must be >= 1, --warmup and --threads >= 0, --size >= 32")
    if not 1 <= args.range_width <= 2048 or args.crop_points < 256:
        ap.error("--range-width must be in 1..2048 and --crop-points at least 256")
    from terraseg.models.points import RANDLA_PRESETS, SALSANEXT_PRESETS

    for p in range_presets:
        if p not in SALSANEXT_PRESETS:
            ap.error(f"unknown SalsaNext preset {p!r} (known: {', '.join(SALSANEXT_PRESETS)})")
    for p in randla_presets:
        if p not in RANDLA_PRESETS:
            ap.error(f"unknown RandLA-Net preset {p!r} (known: {', '.join(RANDLA_PRESETS)})")
    threads = args.threads or os.cpu_count() or 1

    print(f"Training throughput benchmark (random weights, {NUM_CLASSES} classes, random targets, loss {args.loss}, "
          "AdamW)")
    print(f"  machine : {cpu_model()}, os.cpu_count()={os.cpu_count()}, torch threads={threads}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"  versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("  CUDA is unavailable on this machine: skipping the GPU measurements "
                  "(run without --device cuda for the CPU ones)")
            return 0
        device = torch.device("cuda")
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        precisions: list[torch.dtype | None] = [None, amp]
        print(f"  GPU     : {torch.cuda.get_device_name(0)}")
    else:
        device = torch.device("cpu")
        precisions = [None]
    layouts = {"on": [True], "off": [False], "both": [False, True]}.get(args.channels_last, [device.type == "cuda"])
    print(f"  layout  : {' and '.join('NHWC (channels-last)' if v else 'NCHW' for v in layouts)} for the "
          "convolutional networks (precision column: +NHWC marks channels-last rows)")
    torch.set_num_threads(threads)
    scan, what = load_scan(args.data, args.synthetic)
    print(f"  scan    : {what}")
    print(f"  timing  : median of {repeats} steps after {warmup} warm-up step(s), milliseconds")

    jobs: list[Job] = []
    if not args.skip_images:
        jobs += image_jobs(models, args.size, batches, device)
    if not args.skip_points:
        jobs += range_jobs(scan, range_presets, args.point_batch, args.range_width)
        jobs += randla_jobs(scan, randla_presets, args.point_batch, args.crop_points)
    # One small untimed step first, so one-time initialisation (lazy imports, autograd and oneDNN
    # set-up) is not charged to the first row's time and memory.
    run_job(image_jobs(["litefpn"], 64, [1], device)[0], device, precisions[-1], args.loss, 0, 1)
    print()
    print(HEADER)
    print("-" * len(HEADER))
    method = ""
    for job in jobs:
        for amp_dtype in precisions:
            for nhwc in layouts if job.convolutional else [False]:
                result, method = run_job(job, device, amp_dtype, args.loss, warmup, repeats, nhwc)
                print_result(result)
    print()
    print(f"  peak MB: {method}; data ms: randla_inputs per crop (data-loader work, not in the step)")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
