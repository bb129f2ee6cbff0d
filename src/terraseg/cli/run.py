"""``terraseg run``: the real-time perception runtime on a bag, a dataset, a video or the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from terraseg.cli.app import app, console, user_errors

_SOURCE_HELP = ("A ROS 1 .bag / ROS 2 bag folder (or .db3 / .mcap), a dataset folder, a video, an image folder, "
                "a .bin / .ply scan or scan folder, or the simulator driving live: sim or sim:seed=0,domain=forest-day,frames=100,"
                "camera=vga,lidar=os1-64-1024,rate=10,speed=4.")


def _options(items: list[str] | None, flag: str) -> dict[str, str]:
    from terraseg.errors import ConfigError

    out: dict[str, str] = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE, e.g. ontology=sim")
        out[key.strip()] = val.strip()
    return out


def _stats_path(stats: Path | None, out_dir: Path | None, out_bag: Path | None) -> Path | None:
    if stats is not None:
        return stats
    if out_dir is not None:
        return out_dir / "runtime_stats.json"
    if out_bag is not None:
        return out_bag.with_name(out_bag.name.removesuffix(".bag") + "_stats.json")
    return None


def _rerun_sink(save: Path | None, serve: bool, spawn: bool, web_port: int | None) -> Any:
    """The Rerun live-view sink, imported on demand."""
    from terraseg.errors import ConfigError

    try:
        from terraseg.inference.runtime.rerun_view import RerunSink
    except ImportError as exc:
        raise ConfigError(f"--rerun-save / --serve / --spawn: the Rerun view is not available in this installation "
                          f"({exc})") from None
    return RerunSink(save=save, serve=serve, spawn=spawn, web_port=web_port)


@app.command("run")
@user_errors
def run_cmd(
    source: Annotated[str, typer.Option("--source", "-s", help=_SOURCE_HELP)],
    camera_model: Annotated[Path | None, typer.Option("--camera-model", help="Camera model: a checkpoint (.pth) or an exported .onnx.")] = None,
    lidar_model: Annotated[Path | None, typer.Option("--lidar-model", help="LiDAR model: a checkpoint (.pth, any point network) or an exported range-network .onnx.")] = None,
    camera_topic: Annotated[list[str] | None, typer.Option("--camera-topic", help="Bags: camera topic (repeatable; default: the one colour image topic).")] = None,
    lidar_topic: Annotated[list[str] | None, typer.Option("--lidar-topic", help="Bags: PointCloud2 topic (repeatable; default: the one point-cloud topic).")] = None,
    semantic_topic: Annotated[str | None, typer.Option("--semantic-topic", help="Bags: ground-truth id image topic (default: detected; '' for none).")] = None,
    gt_ontology: Annotated[str | None, typer.Option("--gt-ontology", help="Bags: ontology of the ground truth, e.g. sim.")] = None,
    kind: Annotated[str, typer.Option(help="Dataset folders: the layout (default: detected).")] = "auto",
    split: Annotated[str, typer.Option(help="Dataset folders: train, val, test or all.")] = "all",
    data_option: Annotated[list[str] | None, typer.Option(help="Dataset reader option KEY=VALUE (repeatable), e.g. ontology=sim.")] = None,
    rate: Annotated[float, typer.Option(help="Frame rate (Hz) of sources without timestamps (image / scan folders, datasets without times).")] = 10.0,
    realtime: Annotated[bool, typer.Option("--realtime/--no-realtime", help="Pace the source at its timestamps (sensor rate) or read it as fast as possible.")] = True,
    speed: Annotated[float, typer.Option(help="Playback speed factor in real-time mode.")] = 1.0,
    max_frames: Annotated[int | None, typer.Option("--max-frames", help="Stop after this many messages per stream.")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    drop_policy: Annotated[str | None, typer.Option("--drop-policy", help="When inference is slower than the sensor: latest (drop the queued frame, keep the newest), oldest (drop the incoming frame), block (no drops; back-pressure). Default: latest in real time, block otherwise.")] = None,
    queue_size: Annotated[int | None, typer.Option("--queue-size", help="Input queue per stream (default 1 with drops, 4 with block).")] = None,
    skip_errors: Annotated[bool, typer.Option("--skip-errors", help="Skip messages, files or MCAP chunks that cannot be read or decoded and messages the model rejects, with one warning line each, counted as 'skipped' per stream, instead of stopping.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available).")] = None,
    amp: Annotated[bool, typer.Option(help="PyTorch camera models: mixed precision (float16 on CUDA, bfloat16 on CPU).")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads: ONNX Runtime intra-op threads per model and torch.set_num_threads (default: the libraries' choice).")] = None,
    projection: Annotated[str | None, typer.Option(help="LiDAR range networks: projection preset or organized:HxW (default: the model's).")] = None,
    intensity_max: Annotated[float | None, typer.Option("--intensity-max", help="LiDAR: divide raw intensities by this (e.g. 255; default: the model's recorded scale).")] = None,
    camera_tta: Annotated[str | None, typer.Option("--camera-tta", help='Camera test-time augmentation, e.g. "flip=true" (slower: one pass per view).')] = None,
    lidar_tta: Annotated[str | None, typer.Option("--lidar-tta", help='LiDAR test-time augmentation, e.g. "rotations=2 flip=y" (one pass per view).')] = None,
    out_bag: Annotated[Path | None, typer.Option("--out-bag", help="Write predictions to this ROS 2 bag folder (a .bag name: ROS 1).")] = None,
    bag_inputs: Annotated[bool, typer.Option("--bag-inputs", help="Also copy the input images / clouds into --out-bag.")] = False,
    storage: Annotated[str, typer.Option(help="ROS 2 bag storage: sqlite3 or mcap.")] = "sqlite3",
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Write id / colour PNGs and .label files under this folder.")] = None,
    overlay: Annotated[bool, typer.Option(help="--out-dir: also write image overlays (JPEG).")] = False,
    ply: Annotated[bool, typer.Option(help="--out-dir: also write coloured PLY clouds.")] = False,
    stats: Annotated[Path | None, typer.Option(help="Statistics JSON (default: OUT_DIR/runtime_stats.json or <out-bag>_stats.json).")] = None,
    rerun_save: Annotated[Path | None, typer.Option("--rerun-save", help="Record the live view to this Rerun .rrd file.")] = None,
    serve: Annotated[bool, typer.Option(help="Serve the Rerun web viewer on 127.0.0.1 (prints the URL).")] = False,
    spawn: Annotated[bool, typer.Option(help="Open the native Rerun viewer.")] = False,
    web_port: Annotated[int | None, typer.Option("--web-port", help="--serve: web viewer port (default 9090; 0: any free port).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out-bag.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live table.")] = False,
) -> None:
    """Run camera and/or LiDAR segmentation on a stream in real time, with latency and drop statistics.

    One inference thread per input topic; bounded queues; when inference is slower than the sensor, frames are dropped by --drop-policy and counted. Outputs: a ROS 2 bag with /segmentation/ids/<topic> (mono8), /segmentation/rgb/<topic> (rgb8) and /segmentation/points/<topic> (x, y, z, intensity, label, rgb) at the input stamps (--out-bag); id / colour PNGs and .label files (--out-dir); a Rerun recording or live viewer (--rerun-save, --serve). Per-stream latency (p50, p95, max), stage times, FPS and drops are shown live and saved as JSON. Ctrl-C stops cleanly (outputs are finalised); a second Ctrl-C aborts.

    Example: terraseg run --camera-model litefpn.onnx --lidar-model salsanext.onnx --source drive_bag --out-bag preds_bag --threads 1
    """
    from terraseg.errors import ConfigError
    from terraseg.inference.runtime import BagSink, FileSink, Pipeline, load_backend, open_source
    from terraseg.inference.runtime.pipeline import DROP_POLICIES

    if camera_model is None and lidar_model is None:
        raise ConfigError("give --camera-model and/or --lidar-model")
    policy = drop_policy or ("latest" if realtime else "block")
    if policy not in DROP_POLICIES:
        raise ConfigError(f"--drop-policy must be one of {', '.join(DROP_POLICIES)}, got {policy!r}")
    if storage not in ("sqlite3", "mcap"):
        raise ConfigError(f"--storage must be sqlite3 or mcap, got {storage!r}")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, got {threads}")
        import torch

        torch.set_num_threads(threads)  # process-wide: the application's decision, not the library's
    backends: dict[str, Any] = {}
    if camera_model is not None:
        backends["camera"] = load_backend(camera_model, "camera", device=device, amp=amp, threads=threads, tta=camera_tta)
    if lidar_model is not None:
        backends["lidar"] = load_backend(lidar_model, "lidar", device=device, threads=threads, projection=projection,
                                         tta=lidar_tta, intensity_max=intensity_max)
    elif lidar_tta is not None or intensity_max is not None:
        raise ConfigError("--lidar-tta and --intensity-max apply to the LiDAR model (give --lidar-model)")
    if camera_model is None and camera_tta is not None:
        raise ConfigError("--camera-tta applies to the camera model (give --camera-model)")
    src = open_source(source, camera="camera" in backends, lidar="lidar" in backends, realtime=realtime, speed=speed,
                      max_frames=max_frames, camera_topics=camera_topic, lidar_topics=lidar_topic,
                      semantic_topic=semantic_topic, gt_ontology=gt_ontology, kind=kind, split=split,
                      options=_options(data_option, "--data-option"), rate_hz=rate, skip_bad=skip_errors)
    sinks: list[Any] = []
    try:
        if out_bag is not None:
            sinks.append(BagSink(out_bag, inputs=bag_inputs, storage=storage, overwrite=overwrite))  # type: ignore[arg-type]
        if out_dir is not None:
            sinks.append(FileSink(out_dir, overlay=overlay, ply=ply))
        if rerun_save is not None or serve or spawn:
            sinks.append(_rerun_sink(rerun_save, serve, spawn, web_port))
        stats_path = _stats_path(stats, out_dir, out_bag)
        pipe = Pipeline(src, backends, sinks, policy=policy, queue_size=queue_size,  # type: ignore[arg-type]
                        errors="skip" if skip_errors else "raise", settings={"threads": threads, "device": device})
    except BaseException:
        for s in sinks:
            abort = getattr(s, "abort", None)
            if callable(abort):
                abort()
        src.close()
        raise
    if not quiet:
        console.print(f"[bold]terraseg run[/]: {src!r}", highlight=False)
        for k, b in backends.items():
            console.print(f"  {k}: {b.name} {b.model_path} ({b.ontology.name})", highlight=False)
    result = pipe.run(live=not quiet, console=console, stats_json=stats_path, duration_s=duration)
    console.print(result.table())
    outputs = []
    if out_bag is not None:
        outputs.append(f"bag {out_bag}")
    if out_dir is not None:
        outputs.append(f"files {out_dir}")
    if rerun_save is not None:
        outputs.append(f"Rerun {rerun_save}")
    if stats_path is not None:
        outputs.append(f"stats {stats_path}")
    skipped = f", {result.skipped} skipped (bad data)" if skip_errors else ""
    console.print(f"{result.status}: {result.frames_in} message(s) in, {result.predicted} predicted, "
                  f"{result.dropped} dropped{skipped}" + (f"; wrote {', '.join(outputs)}" if outputs else ""),
                  highlight=False)
    if result.status == "interrupted":
        raise typer.Exit(130)
