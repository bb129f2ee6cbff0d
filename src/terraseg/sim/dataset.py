"""Writing simulated datasets that the real readers open unchanged.

``simulate_dataset(out, frames=N, seed=S, domain="forest-day")`` drives a vehicle along the trail
of one generated world and writes::

    out/sim.yaml                         the resolved configuration (seed, domain, rig, splits)
    out/camera/                          generic layout: images/<split>/*.png, masks/<split>/*.png
                                         (sim ids), depth/<split>/*.png (uint16 millimetres, 0 = sky),
                                         calib.yaml, ontology.yaml, timestamps.csv
    out/lidar/sequences/{00,08,11}/      SemanticKITTI layout: velodyne/*.bin, labels/*.label
                                         (sim ids, instance ids in the high 16 bits), poses.txt,
                                         calib.txt, times.txt  (00 = train, 08 = val, 11 = test,
                                         the standard SemanticKITTI split sequences)
    out/bags/<split>/                    optional ROS 2 bags (``bag=True``)

As in reference 001's CARLA recordings, each split is its own drive. With ``worlds="shared"`` (the
default) all drives are in one world: train forward from the west end of the trail, val a shorter
drive further along, test the trail driven in reverse. With ``worlds="per-split"`` every split is
driven forward from the west end of its own world (seeds ``seed``, ``seed + 1``, ``seed + 2`` for
train, val, test), so no object or patch of ground is seen in two splits and every split passes
the landmark blocks (an instance of every class every 55 m of trail) of its own world; a world
is made wider than 160 m when its drive would be longer than the trail.
Read them back with ``GenericDataset(out / "camera", split="train")`` and
``SemanticKITTIDataset(out / "lidar", split="train", ontology="sim")``. Identical arguments give
byte-identical files.

The output folder must be new or empty: writing a second run over a first would mix their
frames. ``overwrite=True`` (``terraseg sim --overwrite``) first deletes what a previous run wrote
(:data:`SIM_OUTPUTS`), and only in a folder that holds a ``sim.yaml`` (the first file every run
writes); other files there are left alone, and a non-empty folder without ``sim.yaml`` is
refused even then. A run that fails or is interrupted leaves no partial bag (bags are written
atomically), and the temporaries of a killed run are removed by the next one.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from terraseg.errors import ConfigError
from terraseg.io.atomic import atomic_write_text, remove_stale_temporaries
from terraseg.io.calib import write_kitti_calib, write_kitti_poses
from terraseg.io.png import write_png
from terraseg.io.scans import write_bin, write_label
from terraseg.progress import ProgressBar
from terraseg.sim.appearance import get_domain
from terraseg.sim.render import render, trail_poses
from terraseg.sim.sensors import CAMERA_PRESETS, LIDAR_PRESETS, CameraConfig, LidarConfig, Rig
from terraseg.sim.world import generate_world

SIM_OUTPUTS: tuple[str, ...] = ("sim.yaml", "camera", "lidar", "bags")
"""What :func:`simulate_dataset` writes into its output folder (and ``overwrite`` deletes)."""

SPLIT_SEQUENCES = {"train": "00", "val": "08", "test": "11"}
DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}

# camera/LiDAR topics of the optional bags, named like a CARLA ROS bridge recording
TOPICS = {"image": "/sim/camera/image", "semantic": "/sim/camera/semantic", "points": "/sim/lidar/points",
          "camera_info": "/sim/camera/camera_info"}


def split_counts(frames: int, fractions: dict[str, float] | None = None) -> dict[str, int]:
    """Frames per split (train gets the rounding remainder; every listed split gets at least one
    frame when ``frames`` allows it)."""
    fr = fractions or DEFAULT_FRACTIONS
    unknown = sorted(set(fr) - set(SPLIT_SEQUENCES))
    if unknown:
        raise ConfigError(f"unknown splits {unknown} (expected train, val, test)")
    if frames < 1:
        raise ConfigError("frames must be at least 1")
    counts = {s: int(np.floor(frames * f)) for s, f in fr.items() if f > 0}
    for s in counts:
        if counts[s] == 0 and frames >= len(counts):
            counts[s] = 1
    first = "train" if "train" in counts else next(iter(counts))
    counts[first] += frames - sum(counts.values())
    return {s: n for s, n in counts.items() if n > 0}


def resolve_rig(camera: str | CameraConfig | None = "vga", lidar: str | LidarConfig | None = "os1-64-1024") -> Rig:
    """A rig from preset names (``terraseg.sim.CAMERA_PRESETS`` / ``LIDAR_PRESETS``) or configs."""
    def pick(value: Any, presets: dict[str, Any], what: str) -> Any:
        if value is None or not isinstance(value, str):
            return value
        if value not in presets:
            raise ConfigError(f"unknown {what} preset {value!r} (available: {', '.join(presets)})")
        return presets[value]

    cam = pick(camera, CAMERA_PRESETS, "camera")
    lid = pick(lidar, LIDAR_PRESETS, "LiDAR")
    if cam is None and lid is None:
        raise ConfigError("the rig needs a camera, a LiDAR or both")
    return Rig(camera=cam, lidar=lid)


def simulate_dataset(out: str | os.PathLike[str], frames: int = 100, seed: int = 0, domain: str = "forest-day",
                     camera: str | CameraConfig | None = "vga", lidar: str | LidarConfig | None = "os1-64-1024",
                     splits: dict[str, float] | None = None, rate_hz: float = 10.0, speed: float = 4.0,
                     bag: bool = False, progress: bool = True, worlds: str = "shared",
                     overwrite: bool = False) -> dict[str, Any]:
    """Simulate and write a dataset (see the module docstring). Returns the resolved configuration.

    Args:
        worlds: ``"shared"`` (one world, three drives) or ``"per-split"`` (one world per split).
        overwrite: replace a previous simulator output in ``out`` (see the module docstring).

    Raises:
        ConfigError: ``out`` is not empty (without ``overwrite``), or not a simulator output
            (with it); bad options.
    """
    out_dir = Path(out)
    if worlds not in ("shared", "per-split"):
        raise ConfigError(f"unknown worlds option {worlds!r} (expected shared or per-split)")
    dom = get_domain(domain)
    rig = resolve_rig(camera, lidar)
    counts = split_counts(frames, splits)
    prepare_output_folder(out_dir, overwrite)
    shared = generate_world(seed, dom.terrain) if worlds == "shared" else None
    config: dict[str, Any] = {
        "seed": seed, "domain": dom.name, "frames": frames, "splits": counts, "worlds": worlds,
        "rate_hz": rate_hz, "speed": speed,
        "camera": None if rig.camera is None else asdict(rig.camera),
        "lidar": None if rig.lidar is None else asdict(rig.lidar),
        "sequences": {s: SPLIT_SEQUENCES[s] for s in counts}, "ontology": "sim", "bag": bag,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "sim.yaml", "# terraseg simulator run (resolved configuration)\n"
                      + yaml.safe_dump(_plain(config), sort_keys=False))
    cam_writer = None
    if rig.camera is not None:
        from terraseg.datasets.generic_writer import GenericWriter

        cam_writer = GenericWriter(out_dir / "camera", ontology="sim", calib=rig.calibration())
    with ProgressBar(frames, f"simulating {dom.name}", enabled=progress) as bar:
        for split_index, (split, n) in enumerate(counts.items()):
            world, start, reverse = _drive(shared, split, seed, dom.terrain, length_m=1.1 * speed * n / rate_hz)
            poses, times = trail_poses(world, n, rate_hz=rate_hz, speed=speed, start=start, reverse=reverse,
                                       seed=seed * 7919 + split_index)
            seq_dir = out_dir / "lidar" / "sequences" / SPLIT_SEQUENCES[split]
            writer = _bag_writer(out_dir / "bags" / split) if bag else None
            lidar_poses = []
            ok = False
            try:
                for i in range(n):
                    frame = render(world, poses[i], rig, dom, seed=_frame_seed(seed, split_index, i),
                                   frame_id=f"{split}/{i:06d}", timestamp=float(times[i]))
                    stem = f"{i:06d}"
                    if cam_writer is not None:
                        cam_only = frame.replace(points=None, point_labels=None, point_instances=None, meta={})
                        cam_writer.write(cam_only, split=split, stem=stem)
                        depth_mm = np.clip(np.round(frame.meta["depth"] * 1000.0), 0, 65535).astype(np.uint16)
                        write_png(out_dir / "camera" / "depth" / split / f"{stem}.png", depth_mm)
                    if rig.lidar is not None:
                        assert frame.points is not None and frame.point_labels is not None
                        write_bin(seq_dir / "velodyne" / f"{stem}.bin", frame.points)
                        write_label(seq_dir / "labels" / f"{stem}.label", frame.point_labels,
                                    frame.point_instances)
                        lidar_poses.append(frame.pose)
                    if writer is not None:
                        _write_bag_frame(writer, frame, rig, int(round(times[i] * 1e9)) + 1_000_000_000)
                    bar.advance()
                ok = True
            finally:
                if writer is not None and ok:
                    writer.close()
                elif writer is not None:  # a failed or interrupted drive leaves no partial bag
                    writer.abort()
            if rig.lidar is not None:
                _write_kitti_meta(seq_dir, rig, np.array(lidar_poses), times)
    if cam_writer is not None:
        cam_writer.close()
    return config


def prepare_output_folder(out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Make ``out`` ready for a simulator run: create it, remove the temporaries a killed run left
    at its top level, and refuse a non-empty folder, or (``overwrite``) delete a previous run's
    :data:`SIM_OUTPUTS` when the folder holds a ``sim.yaml``.

    Raises:
        ConfigError: a non-empty folder without ``overwrite``; with ``overwrite``, a non-empty
            folder that is not a simulator output (no ``sim.yaml``); ``out`` is a file.
    """
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    entries = sorted(p.name for p in out_dir.iterdir())
    if not entries:
        return out_dir
    listing = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
    if not overwrite:
        raise ConfigError(f"{out_dir}: the folder is not empty ({listing}); simulate into a new or empty folder, "
                          "or pass --overwrite (overwrite=True) to replace a previous simulator output there")
    if not (out_dir / "sim.yaml").is_file():
        raise ConfigError(f"{out_dir}: not a simulator output (no sim.yaml; it holds {listing}); --overwrite only "
                          "replaces what `terraseg sim` wrote: choose a new or empty folder")
    for name in SIM_OUTPUTS:
        p = out_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
    return out_dir


def _drive(shared: Any, split: str, seed: int, terrain: str, length_m: float) -> tuple[Any, float, bool]:
    """The world a split is driven in, where the drive starts along its trail (m) and its direction.

    A world of its own (``shared`` None) is made wide enough that its trail is longer than the
    drive (``length_m``, m, at the fastest speed), so the vehicle never stops at the trail's end.
    """
    if shared is None:
        size = max(160.0, float(np.ceil(length_m + 15.0)))
        return generate_world(seed + list(SPLIT_SEQUENCES).index(split), terrain, size=size), 2.0, False
    total_s = float(shared.trail_s[-1])
    starts = {"train": (2.0, False), "val": (min(0.55 * total_s, total_s - 40), False), "test": (2.0, True)}
    return (shared, *starts[split])


def _frame_seed(seed: int, split_index: int, i: int) -> int:
    return (seed * 1_000_003 + split_index * 100_003 + i) % (2**31 - 1)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _write_kitti_meta(seq_dir: Path, rig: Rig, lidar_poses: np.ndarray, times: np.ndarray) -> None:
    """calib.txt (P = K | 0, Tr = T_cam_lidar), poses.txt (KITTI cam0 poses relative to the first
    frame) and times.txt, so that the SemanticKITTI reader recovers the LiDAR poses."""
    if rig.camera is not None:
        calib = rig.calibration()
        K, Tr = calib.K, calib.T_cam_lidar
    else:
        K, Tr = np.eye(3), np.eye(4)
    assert K is not None and Tr is not None
    P = np.concatenate([K, np.zeros((3, 1))], axis=1)
    write_kitti_calib(seq_dir / "calib.txt", P, Tr)
    # KITTI: pose_i maps camera-i points into camera-0's frame; camera pose = lidar pose @ inv(Tr)
    T_lc = np.linalg.inv(Tr)
    cam = lidar_poses @ T_lc
    rel = np.linalg.inv(cam[0]) @ cam
    write_kitti_poses(seq_dir / "poses.txt", rel)
    atomic_write_text(seq_dir / "times.txt", "".join(f"{t:.6e}\n" for t in times))


def _bag_writer(path: Path) -> Any:
    from terraseg.io.bags import BagWriter

    w = BagWriter(path, storage="sqlite3")
    w.open()
    return w


def _write_bag_frame(writer: Any, frame: Any, rig: Rig, stamp_ns: int) -> None:
    if frame.image is not None:
        writer.write_image(TOPICS["image"], frame.image, stamp_ns, "sim_camera")
        writer.write_image(TOPICS["semantic"], frame.image_labels, stamp_ns, "sim_camera")
        writer.write_camera_info(TOPICS["camera_info"], rig.calibration(), stamp_ns, "sim_camera")
    if frame.points is not None:
        writer.write_pointcloud(TOPICS["points"], frame.points, ("x", "y", "z", "intensity"), stamp_ns, "sim_lidar",
                                extra={"label": frame.point_labels.astype(np.uint32)})
