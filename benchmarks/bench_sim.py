"""Benchmark the simulator: frames per second, and how separable its classes are by colour.

1. Speed: render camera 640x480 + LiDAR 64x1024 frames along the trail (after one warm-up frame
   that loads or compiles the numba kernels) for each domain; report ms per frame split into
   camera and LiDAR, and frames per second. Goal: at least 5 frames/s on 2 cores.
2. Separability: render train frames (one drive) and validation frames (another drive of the same
   world) at 160x120; fit (a) the Bayes-optimal per-pixel colour classifier (a 32^3 RGB histogram
   of class counts) and (b) a small fully convolutional network trained for a fixed budget on the
   CPU; report both mIoU on the validation frames. Goal: the colour classifier scores far below a
   model that sees shape and context.

Usage: python benchmarks/bench_sim.py [--frames 10] [--train-seconds 120] [--skip-model] [--domains a,b]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from terraseg.metrics import ConfusionMatrix
from terraseg.sim import CAMERA_PRESETS, LIDAR_PRESETS, Rig, generate_world, list_domains, render, trail_poses
from terraseg.sim.sensors import CameraConfig


def bench_speed(frames: int, domains: list[str] | None = None) -> None:
    rig = Rig(camera=CameraConfig(640, 480, 90.0), lidar=LIDAR_PRESETS["os1-64-1024"])
    cam_only = Rig(camera=rig.camera, lidar=None)
    lidar_only = Rig(camera=None, lidar=rig.lidar)
    print(f"speed: camera 640x480 + LiDAR 64x1024, {frames} frames per domain, {os.cpu_count()} CPUs")
    print(f"{'domain':<14}{'frame ms':>10}{'camera ms':>11}{'lidar ms':>10}{'frames/s':>10}{'x first':>9}  goal >= 5/s")
    first = None
    for dom in domains or list_domains():
        world = generate_world(0, dom.split("-")[0])
        poses, _ = trail_poses(world, frames + 1)
        render(world, poses[0], rig, dom)  # warm-up: numba kernels
        t_all, t_cam, t_lid = [], [], []
        for i in range(1, frames + 1):
            t = time.perf_counter()
            render(world, poses[i], rig, dom, seed=i)
            t_all.append(time.perf_counter() - t)
            t = time.perf_counter()
            render(world, poses[i], cam_only, dom, seed=i)
            t_cam.append(time.perf_counter() - t)
            t = time.perf_counter()
            render(world, poses[i], lidar_only, dom, seed=i)
            t_lid.append(time.perf_counter() - t)
        ms = 1000 * np.median(t_all)
        first = first or ms
        print(f"{dom:<14}{ms:>10.1f}{1000 * np.median(t_cam):>11.1f}{1000 * np.median(t_lid):>10.1f}"
              f"{1000 / ms:>10.2f}{ms / first:>9.2f}  {'PASS' if 1000 / ms >= 5 else 'FAIL'}")


def _frames(world, drive_start: float, n: int, reverse: bool, seed: int):  # type: ignore[no-untyped-def]
    rig = Rig(camera=CAMERA_PRESETS["tiny"], lidar=None)
    poses, _ = trail_poses(world, n, start=drive_start, reverse=reverse, seed=seed, rate_hz=2.0)
    fr = [render(world, p, rig, "forest-day", seed=seed * 1000 + i) for i, p in enumerate(poses)]
    return np.stack([f.image for f in fr]), np.stack([f.image_labels for f in fr])


def bench_separability(train_seconds: float, skip_model: bool) -> None:
    world = generate_world(0, "forest")
    xtr, ytr = _frames(world, 2.0, 64, False, 1)
    xva, yva = _frames(world, 2.0, 16, True, 2)
    key = lambda x: ((x // 8).astype(np.int64) @ np.array([1024, 32, 1]))  # noqa: E731
    hist = np.zeros((32 ** 3, 20), np.int64)
    np.add.at(hist, (key(xtr).ravel(), ytr.ravel()), 1)
    lut = hist.argmax(axis=1).astype(np.uint8)
    cm = ConfusionMatrix.for_ontology("sim").update(lut[key(xva)], yva)
    print("separability (forest-day, 64 train / 16 val frames at 160x120, val = the trail driven in reverse)")
    print(f"  per-pixel colour classifier (32^3 RGB histogram, Bayes): val mIoU {100 * cm.scores().miou:.1f} %")
    if skip_model:
        return
    import torch
    from torch import nn

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 2)

    def block(i: int, o: int, d: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=d, dilation=d), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    net = nn.Sequential(block(3, 32), block(32, 32), nn.MaxPool2d(2), block(32, 64), block(64, 64, 2),
                        block(64, 64, 4), block(64, 64, 8), nn.Upsample(scale_factor=2, mode="bilinear"),
                        block(64, 32), nn.Conv2d(32, 20, 1))
    opt = torch.optim.AdamW(net.parameters(), 3e-3)
    x = torch.from_numpy(xtr).permute(0, 3, 1, 2).float() / 255.0
    y = torch.from_numpy(ytr).long()
    t0, step = time.perf_counter(), 0
    while time.perf_counter() - t0 < train_seconds:
        idx = torch.randint(0, len(x), (8,))
        xb, yb = x[idx], y[idx]
        if step % 2:
            xb, yb = xb.flip(-1), yb.flip(-1)
        loss = nn.functional.cross_entropy(net(xb), yb, ignore_index=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(xva).permute(0, 3, 1, 2).float() / 255.0).argmax(1).numpy().astype(np.uint8)
    cm2 = ConfusionMatrix.for_ontology("sim").update(pred, yva)
    print(f"  small FCN trained {train_seconds:.0f} s on the CPU ({step} steps): val mIoU {100 * cm2.scores().miou:.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--train-seconds", type=float, default=120.0)
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--domains", default=None, help="comma-separated domains to time (default: all; "
                    "'x first' is each one's frame time over the first one's)")
    args = ap.parse_args()
    if not args.skip_speed:
        bench_speed(args.frames, args.domains.split(",") if args.domains else None)
    bench_separability(args.train_seconds, args.skip_model)


if __name__ == "__main__":
    main()
