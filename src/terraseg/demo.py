"""``make demo``: the main job on the built-in simulator, with no download.

1. Simulate a small off-road dataset (camera + LiDAR, train / val / test drives) with
   :func:`terraseg.sim.dataset.simulate_dataset`: each split driven in its own world (so the
   validation and test numbers are about unseen places, and every split passes every class),
   one frame every 4 m (1 Hz at 4 m/s: more places and instances per frame than denser
   sampling, which mostly repeats the view), 60 / 20 / 20 % of 240 frames.
2. Inspect it: class frequencies and class weights for the camera masks and the LiDAR labels.
3. Fit a baseline on the training frames: the Bayes-optimal per-pixel colour classifier (a 32^3
   RGB histogram), predict the test drive, write id PNGs and evaluate them exactly as
   ``terraseg eval-masks`` does, in the simulator's ontology and mapped to the 8-class
   traversability ontology (how far colour alone gets).
4. Train the real-time camera network (recipe ``configs/sim_litefpn.yaml``) and the range
   network (``configs/sim_salsanext.yaml``) from scratch on the CPU, each within a time budget,
   and evaluate both on the test drive (``terraseg eval``), camera predictions also mapped to
   traversability.
5. Tune a two-model rule ensemble (network = model 1, colour baseline = model 2) on the
   validation drive with a held-out estimate, and apply it to the test drive
   (``terraseg ensemble tune / apply``).
6. Export both networks to ONNX and run the real-time runtime over the test drive's ROS 2 bag
   paced at 2 Hz, twice the 1 Hz recording (``terraseg run``): a predictions bag, id PNGs / ``.label`` files, a Rerun
   recording and latency statistics.
7. Write the HTML analysis reports (``terraseg report``): camera network vs colour baseline with
   the ensemble, and the LiDAR network with scans rendered from above.
8. Print the headline numbers and where everything is.

Run: ``python -m terraseg.demo --out demo-output [--frames 240] [--size small|tiny] [--train-seconds 150]``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.datasets import GenericDataset
from terraseg.datasets.inspect import inspect_dataset
from terraseg.errors import ConfigError
from terraseg.io import read_label_png, write_label, write_label_png
from terraseg.metrics import evaluate_mask_folders, markdown_summary, write_reports
from terraseg.ontology import LabelMap
from terraseg.progress import ProgressBar
from terraseg.sim.dataset import simulate_dataset


def _colour_key(img: np.ndarray) -> np.ndarray:
    k = (img // 8).astype(np.int64)
    return (k[..., 0] * 32 + k[..., 1]) * 32 + k[..., 2]


RECIPES = Path(__file__).resolve().parents[2] / "configs"
"""The repository's recipe folder (``make demo`` runs from a checkout)."""


def train_and_evaluate(recipe: Path, data_root: Path, out: Path, seconds: float, progress: bool,
                       overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Train a demo recipe within ``seconds`` and evaluate its best checkpoint on the test drive;
    the test predictions are written to ``out/predictions/<run name>/`` (id PNGs or ``.label``)."""
    from terraseg.datasets import open_dataset
    from terraseg.inference import evaluate_frames, load_predictor
    from terraseg.metrics import default_preset
    from terraseg.training import load_config, train

    if not recipe.is_file():
        raise FileNotFoundError(f"{recipe}: demo recipe not found (run the demo from a terraseg checkout)")
    cfg = load_config(recipe, [f"data.root={data_root}", f"output={out / 'runs'}", f"trainer.max_time_s={seconds}",
                               *overrides])
    res = train(cfg, overwrite=True, progress=progress)
    if res.best_checkpoint is None:
        raise RuntimeError(f"{cfg.name}: no validation ran within {seconds} s; raise --train-seconds")
    pred = load_predictor(res.best_checkpoint, device="cpu")
    test = open_dataset(data_root, kind=cfg.data.kind, split="test", **cfg.data.options)
    preset = default_preset("sim")
    pred_dir = out / "predictions" / cfg.name

    def predict_and_write(f: Any) -> np.ndarray:
        labels = pred.predict_frame(f)
        name = Path(f.frame_id).name
        if pred.kind == "camera":
            write_label_png(pred_dir / f"{name}.png", labels)
        else:
            write_label(pred_dir / f"{name}.label", labels)
        return labels

    ev = evaluate_frames(test, predict_and_write, preset, "image" if pred.kind == "camera" else "points",
                         progress=progress)
    reports = out / "reports" / cfg.name
    write_reports(ev.result, reports, ev.matrix, title=f"{cfg.name} on the test drive", model_name=cfg.name)
    return {"train": res, "test": ev, "reports": reports, "predictions": pred_dir,
            "predictor": pred.image if pred.kind == "camera" else None}


def _write_baseline(lut: np.ndarray, frames: GenericDataset, pred_dir: Path) -> None:
    for f in frames:
        write_label_png(pred_dir / f"{Path(f.frame_id).name}.png", lut[_colour_key(f.image)])


def tune_ensemble(camera: dict[str, Any], data: Path, out: Path, progress: bool) -> dict[str, Any]:
    """Tune rules (network = model 1, colour baseline = model 2) on the validation drive with a
    held-out half and a 3-fold estimate, apply them to the test drive and score the result."""
    from terraseg.ensemble import tune_folders

    pred = camera["predictor"]
    val = GenericDataset(data / "camera", split="val")
    net_val = out / "predictions" / "val" / "network"
    for f in val:
        write_label_png(net_val / f"{Path(f.frame_id).name}.png", pred.predict(f.image))
    kfold = 3 if len(val) >= 3 else 0
    tuned = tune_folders(net_val, out / "predictions" / "val" / "colour-baseline", data / "camera" / "masks" / "val",
                         "sim", holdout=0.5 if len(val) >= 2 else 0.0, kfold=kfold, progress=False)
    rules_path = tuned.rules.save(out / "ensemble" / "rules.json")
    ens_dir = out / "predictions" / "ensemble"
    tuned.rules.apply_folders(camera["predictions"], out / "predictions" / "sim", ens_dir)
    ev = evaluate_mask_folders(ens_dir, data / "camera" / "masks" / "test", "sim", progress=False)
    write_reports(ev.result, out / "reports" / "ensemble", ev.matrix, title="rule ensemble on the test drive",
                  model_name="ensemble")
    return {"rules": rules_path, "tune": tuned, "predictions": ens_dir, "test": ev.result}


def run_runtime(networks: dict[str, Any], data: Path, out: Path, camera_hw: tuple[int, int] | None,
                progress: bool, speed: float = 1.0) -> dict[str, Any]:
    """Export both networks to ONNX and run the runtime over the test drive's bag, paced at its
    timestamps divided by ``speed`` (2.0 = twice the recording rate)."""
    from terraseg.inference import export_checkpoint_onnx, export_range_checkpoint_onnx
    from terraseg.inference.runtime import BagSink, FileSink, load_backend, open_source, run_pipeline

    models = out / "models"
    cam_onnx, lidar_onnx = models / "camera.onnx", models / "lidar.onnx"
    export_checkpoint_onnx(networks["camera"]["train"].best_checkpoint, cam_onnx, camera_hw)
    export_range_checkpoint_onnx(networks["lidar"]["train"].best_checkpoint, lidar_onnx)
    rt = out / "runtime"
    sinks: list[Any] = [BagSink(rt / "predictions_bag", overwrite=True), FileSink(rt / "files")]
    rrd = None
    try:
        from terraseg.inference.runtime import RerunSink
        from terraseg.inference.runtime.rerun_view import import_rerun

        import_rerun()
        rrd = rt / "run.rrd"
        sinks.append(RerunSink(save=rrd, ontology="sim"))
    except ConfigError as exc:  # rerun-sdk missing (Python 3.10): the rest of the run goes on
        print(f"note: no Rerun recording ({exc})")
    source = open_source(data / "bags" / "test", camera=True, lidar=True, realtime=True, speed=speed)
    backends = {"camera": load_backend(cam_onnx, "camera", threads=1), "lidar": load_backend(lidar_onnx, "lidar",
                                                                                            threads=1)}
    stats = run_pipeline(source, backends, sinks, live=progress, stats_json=rt / "stats.json")
    return {"stats": stats, "bag": rt / "predictions_bag", "files": rt / "files", "rrd": rrd,
            "json": rt / "stats.json", "onnx": (cam_onnx, lidar_onnx)}


def write_html_reports(networks: dict[str, Any], ensemble: dict[str, Any] | None, data: Path, out: Path,
                       progress: bool) -> dict[str, Path]:
    """The camera report (network vs colour baseline, with the ensemble) and the LiDAR report."""
    from terraseg.report import build_report
    from terraseg.sim.dataset import SPLIT_SEQUENCES

    cam, lid = networks["camera"], networks["lidar"]
    camera = build_report(out / "report" / "camera", data / "camera" / "masks" / "test", cam["predictions"], "sim",
                          pred2=out / "predictions" / "sim", name1=cam["train"].run_dir.name, name2="colour baseline",
                          images=data / "camera" / "images" / "test",
                          rules=None if ensemble is None else ensemble["rules"],
                          ensemble=None if ensemble is None else ensemble["predictions"],
                          runs=[cam["train"].run_dir], num_frames=3, title="Camera: network vs colour baseline",
                          progress=progress)
    seq = data / "lidar" / "sequences" / SPLIT_SEQUENCES["test"]
    lidar = build_report(out / "report" / "lidar", seq / "labels", lid["predictions"], "sim",
                         name1=lid["train"].run_dir.name, points=seq / "velodyne", runs=[lid["train"].run_dir],
                         num_frames=2, title="LiDAR: range network on the test drive", progress=progress)
    return {"camera": camera.html, "lidar": lidar.html}


DEMO_SPLITS = {"train": 0.6, "val": 0.2, "test": 0.2}
PLAYBACK_HZ = 2.0  # the runtime step replays the test bag at this rate (frames per second per sensor)


def run_demo(out: Path, frames: int = 240, size: str = "small", seed: int = 0, domain: str = "forest-day",
             progress: bool = True, train_seconds: float = 150.0, train_epochs: int | None = None,
             rate_hz: float = 1.0, worlds: str = "per-split") -> dict[str, Any]:
    """Run every step; returns the evaluation results and output paths (``train_seconds <= 0``
    skips the network training and everything that needs the networks)."""
    out = Path(out)
    data = out / "data"
    lidar = "small" if size in ("small", "tiny") else "os1-64-1024"
    sim_cfg = simulate_dataset(data, frames=frames, seed=seed, domain=domain, camera=size, lidar=lidar, bag=True,
                               progress=progress, rate_hz=rate_hz, worlds=worlds, splits=DEMO_SPLITS,
                               overwrite=True)  # a rerun of the demo replaces its own data
    stats = {"camera": inspect_dataset(data / "camera", out / "stats" / "camera", progress=progress),
             "lidar": inspect_dataset(data / "lidar", out / "stats" / "lidar", kind="semantickitti",
                                      progress=progress, ontology="sim")}
    # baseline: per-pixel colour classifier fitted on the train drive
    hist = np.zeros((32 ** 3, 20), np.int64)
    train = GenericDataset(data / "camera", split="train")
    with ProgressBar(len(train), "fitting colour baseline", enabled=progress) as bar:
        for f in train:
            np.add.at(hist, (_colour_key(f.image).ravel(), f.image_labels.ravel()), 1)
            bar.advance()
    lut = hist.argmax(axis=1).astype(np.uint8)
    to_trav = LabelMap.builtin("sim", "traversability")
    test = GenericDataset(data / "camera", split="test")
    pred_dir, trav_pred, trav_gt = out / "predictions" / "sim", out / "predictions" / "traversability", out / "gt_trav"
    _write_baseline(lut, test, pred_dir)
    _write_baseline(lut, GenericDataset(data / "camera", split="val"), out / "predictions" / "val" / "colour-baseline")
    for f in test:
        stem = Path(f.frame_id).name
        write_label_png(trav_pred / f"{stem}.png", to_trav(lut[_colour_key(f.image)]))
        write_label_png(trav_gt / f"{stem}.png", to_trav(f.image_labels))
    results = {}
    for name, pdir, gdir, onto, suffix in (("sim", pred_dir, data / "camera" / "masks" / "test", "sim", ""),
                                           ("traversability", trav_pred, trav_gt, "traversability", "")):
        ev = evaluate_mask_folders(pdir, gdir, onto, gt_suffix=suffix, progress=False)
        write_reports(ev.result, out / "reports" / name, ev.matrix, title=f"colour baseline ({name})",
                      model_name="colour-baseline")
        results[name] = ev.result
    networks: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    if train_seconds > 0:
        extra = (f"trainer.max_epochs={train_epochs}", "trainer.val_every=1") if train_epochs else ()
        networks["camera"] = train_and_evaluate(RECIPES / "sim_litefpn.yaml", data / "camera", out, train_seconds,
                                                progress, extra)
        networks["lidar"] = train_and_evaluate(RECIPES / "sim_salsanext.yaml", data / "lidar", out, train_seconds,
                                               progress, extra)
        # the camera network's test predictions (written by the evaluation) mapped to traversability,
        # scored like the baseline
        net_pred, net_trav = networks["camera"]["predictions"], out / "predictions" / "traversability-litefpn"
        for f in test:
            stem = Path(f.frame_id).name
            write_label_png(net_trav / f"{stem}.png", to_trav(read_label_png(net_pred / f"{stem}.png")))
        ev = evaluate_mask_folders(net_trav, trav_gt, "traversability", progress=False)
        write_reports(ev.result, out / "reports" / "traversability-litefpn", ev.matrix,
                      title="LiteFPN (traversability)", model_name="litefpn")
        networks["camera"]["traversability"] = ev.result
        extras["ensemble"] = tune_ensemble(networks["camera"], data, out, progress)
        cam = sim_cfg.get("camera") or {}
        hw = (int(cam["height"]), int(cam["width"])) if cam else None
        extras["runtime"] = run_runtime(networks, data, out, hw, progress, speed=PLAYBACK_HZ / rate_hz)
        extras["reports"] = write_html_reports(networks, extras["ensemble"], data, out, progress)
    return {"results": results, "networks": networks, "stats": stats, "out": out, **extras}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    ap.add_argument("--frames", type=int, default=240, help="frames over train / val / test (60 / 20 / 20 %%)")
    ap.add_argument("--size", default="small", choices=["tiny", "small", "vga"], help="camera preset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domain", default="forest-day")
    ap.add_argument("--train-seconds", type=float, default=150.0,
                    help="training budget of each network in seconds (0 skips training)")
    ap.add_argument("--train-epochs", type=int, default=None,
                    help="cap the epochs of each network (quick runs; validates every epoch)")
    args = ap.parse_args(argv)
    from rich.console import Console

    console = Console()
    console.rule("terraseg demo: simulate -> inspect -> baseline -> train -> evaluate -> ensemble -> runtime -> report")
    res = run_demo(args.out, frames=args.frames, size=args.size, seed=args.seed, domain=args.domain,
                   train_seconds=args.train_seconds, train_epochs=args.train_epochs)
    for modality, st in res["stats"].items():
        console.print(f"{modality}: frames {st.frames}; rarest classes: "
                      + ", ".join(n for s in st.stats.values() for n, _ in s.rarest(3)), highlight=False, soft_wrap=True)
    for name, r in res["results"].items():
        console.print(f"\ncolour baseline on the test drive, {name} ontology:", highlight=False)
        console.print(markdown_summary(r), markup=False, highlight=False, soft_wrap=True)
    for modality, net in res["networks"].items():
        tr = net["train"]
        console.print(f"\n{tr.run_dir.name} ({modality}), trained {tr.epochs} epochs in {tr.seconds:.0f} s "
                      f"(best val mIoU {tr.best_miou:.1f}); on the test drive, sim ontology:", highlight=False)
        console.print(markdown_summary(net["test"].result), markup=False, highlight=False, soft_wrap=True)
        if "traversability" in net:
            console.print("  mapped to traversability:", highlight=False)
            console.print(markdown_summary(net["traversability"]), markup=False, highlight=False, soft_wrap=True)
    if "ensemble" in res:
        ens = res["ensemble"]
        sc = ens["tune"].rules.scores
        console.print(f"\nrule ensemble (network + colour baseline): {len(ens['tune'].rules.atoms)} atoms tuned on "
                      f"the validation drive; on the test drive mIoU {ens['test'].fine_miou * 100:.1f}"
                      + (f" (tuning gain {sc.tuning.gain * 100:+.2f}, held-out gain {sc.holdout.gain * 100:+.2f} "
                         "mIoU points)" if sc is not None and sc.tuning is not None and sc.holdout is not None else ""),
                      highlight=False)
    if "runtime" in res:
        rt = res["runtime"]
        console.print(f"\nruntime over the test drive's bag at {PLAYBACK_HZ:g} Hz (ONNX Runtime):", highlight=False)
        for topic, st in rt["stats"].streams.items():
            d = st.to_dict()
            lat = d["latency_ms"]
            console.print(f"  {topic}: {d['predicted']}/{d['frames_in']} predicted, {d['dropped']} dropped, "
                          f"latency p50 {lat['p50']} ms, p95 {lat['p95']} ms", highlight=False)
    out = res["out"]
    lines = [f"data:      {out / 'data'} (camera: generic layout, lidar: SemanticKITTI layout, bags: ROS 2)",
             f"stats:     {out / 'stats'} (class weights, frequency plots)",
             f"reports:   {out / 'reports'} (report.md, per_class.csv, metrics.json, confusion.png)"]
    if res["networks"]:
        lines.insert(0, f"runs:      {out / 'runs'} (checkpoints, metrics.csv, TensorBoard logs)")
    if "runtime" in res:
        rt = res["runtime"]
        lines += [f"models:    {rt['onnx'][0]}, {rt['onnx'][1]} (ONNX)",
                  f"runtime:   {rt['bag']} (predictions bag), {rt['files']} (PNGs, .label), {rt['json']} (latency)"]
        if rt["rrd"] is not None:
            lines.append(f"live view: {rt['rrd']} (open with: rerun {rt['rrd']})")
    if "ensemble" in res:
        lines.append(f"ensemble:  {res['ensemble']['rules']} (rules), {res['ensemble']['predictions']}")
    if "reports" in res:
        lines.append(f"HTML:      {res['reports']['camera']}, {res['reports']['lidar']}")
    console.print("\n" + "\n".join(lines), highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    main()
