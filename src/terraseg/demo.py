"""``make demo``: the main job on the built-in simulator, with no download.

1. Simulate a small off-road dataset (camera + LiDAR, train / val / test drives) with
   :func:`terraseg.sim.dataset.simulate_dataset`.
2. Inspect it: class frequencies and class weights for the camera masks and the LiDAR labels.
3. Fit a baseline on the training frames: the Bayes-optimal per-pixel colour classifier (a 32^3
   RGB histogram), predict the test drive, write id PNGs and evaluate them exactly as
   ``terraseg eval-masks`` does, in the simulator's ontology and mapped to the 8-class
   traversability ontology (how far colour alone gets).
4. Train the real-time camera network (recipe ``configs/sim_litefpn.yaml``) and the range
   network (``configs/sim_salsanext.yaml``) from scratch on the CPU, each within a time budget,
   and evaluate both on the test drive (``terraseg eval``), camera predictions also mapped to
   traversability.
5. Print the headline numbers and where everything is.

Run: ``python -m terraseg.demo --out demo-output [--frames 60] [--size small|tiny] [--train-seconds 240]``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from terraseg.datasets import GenericDataset
from terraseg.datasets.inspect import inspect_dataset
from terraseg.io import write_label_png
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
    """Train a demo recipe within ``seconds`` and evaluate its best checkpoint on the test drive."""
    from terraseg.datasets import open_dataset
    from terraseg.inference import evaluate_frames, load_model
    from terraseg.metrics import default_preset
    from terraseg.training import load_config, train

    if not recipe.is_file():
        raise FileNotFoundError(f"{recipe}: demo recipe not found (run the demo from a terraseg checkout)")
    cfg = load_config(recipe, [f"data.root={data_root}", f"output={out / 'runs'}", f"trainer.max_time_s={seconds}",
                               *overrides])
    res = train(cfg, overwrite=True, progress=progress)
    if res.best_checkpoint is None:
        raise RuntimeError(f"{cfg.name}: no validation ran within {seconds} s; raise --train-seconds")
    loaded = load_model(res.best_checkpoint)
    test = open_dataset(data_root, kind=cfg.data.kind, split="test", **cfg.data.options)
    preset = default_preset("sim")
    if cfg.task == "image":
        from terraseg.inference import ImagePredictor

        pred = ImagePredictor.from_checkpoint(res.best_checkpoint, device="cpu")
        ev = evaluate_frames(test, lambda f: pred.predict(f.image), preset, "image", progress=progress)
    else:
        from terraseg.inference.scans import scan_predictor

        predict = scan_predictor(loaded)
        ev = evaluate_frames(test, lambda f: predict(f.points).labels, preset, "points", progress=progress)
    reports = out / "reports" / cfg.name
    write_reports(ev.result, reports, ev.matrix, title=f"{cfg.name} on the test drive", model_name=cfg.name)
    return {"train": res, "test": ev, "reports": reports, "predictor": pred if cfg.task == "image" else None}


def run_demo(out: Path, frames: int = 60, size: str = "small", seed: int = 0, domain: str = "forest-day",
             progress: bool = True, train_seconds: float = 240.0, train_epochs: int | None = None) -> dict[str, Any]:
    """Run every step; returns the evaluation results and output paths (``train_seconds <= 0``
    skips the network training)."""
    out = Path(out)
    data = out / "data"
    lidar = "small" if size in ("small", "tiny") else "os1-64-1024"
    simulate_dataset(data, frames=frames, seed=seed, domain=domain, camera=size, lidar=lidar, progress=progress)
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
    for f in test:
        stem = Path(f.frame_id).name
        pred = lut[_colour_key(f.image)]
        write_label_png(pred_dir / f"{stem}.png", pred)
        write_label_png(trav_pred / f"{stem}.png", to_trav(pred))
        write_label_png(trav_gt / f"{stem}.png", to_trav(f.image_labels))
    results = {}
    for name, pdir, gdir, onto, suffix in (("sim", pred_dir, data / "camera" / "masks" / "test", "sim", ""),
                                           ("traversability", trav_pred, trav_gt, "traversability", "")):
        ev = evaluate_mask_folders(pdir, gdir, onto, gt_suffix=suffix, progress=False)
        write_reports(ev.result, out / "reports" / name, ev.matrix, title=f"colour baseline ({name})",
                      model_name="colour-baseline")
        results[name] = ev.result
    networks: dict[str, Any] = {}
    if train_seconds > 0:
        extra = (f"trainer.max_epochs={train_epochs}", "trainer.val_every=1") if train_epochs else ()
        networks["camera"] = train_and_evaluate(RECIPES / "sim_litefpn.yaml", data / "camera", out, train_seconds,
                                                progress, extra)
        networks["lidar"] = train_and_evaluate(RECIPES / "sim_salsanext.yaml", data / "lidar", out, train_seconds,
                                               progress, extra)
        # the camera network's test predictions mapped to traversability, scored like the baseline
        pred = networks["camera"]["predictor"]
        net_trav = out / "predictions" / "traversability-litefpn"
        for f in test:
            write_label_png(net_trav / f"{Path(f.frame_id).name}.png", to_trav(pred.predict(f.image)))
        ev = evaluate_mask_folders(net_trav, trav_gt, "traversability", progress=False)
        write_reports(ev.result, out / "reports" / "traversability-litefpn", ev.matrix,
                      title="LiteFPN (traversability)", model_name="litefpn")
        networks["camera"]["traversability"] = ev.result
    return {"results": results, "networks": networks, "stats": stats, "out": out}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="small", choices=["tiny", "small", "vga"], help="camera preset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domain", default="forest-day")
    ap.add_argument("--train-seconds", type=float, default=240.0,
                    help="training budget of each network in seconds (0 skips training)")
    ap.add_argument("--train-epochs", type=int, default=None,
                    help="cap the epochs of each network (quick runs; validates every epoch)")
    args = ap.parse_args(argv)
    from rich.console import Console

    console = Console()
    console.rule("terraseg demo: simulate -> inspect -> baseline -> train -> evaluate")
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
    out = res["out"]
    console.print(f"runs:    {out / 'runs'} (checkpoints, metrics.csv, TensorBoard logs)\n"
                  if res["networks"] else "", highlight=False, end="")
    console.print(f"data:    {out / 'data'} (camera: generic layout, lidar: SemanticKITTI layout)\n"
                  f"stats:   {out / 'stats'} (class weights, frequency plots)\n"
                  f"reports: {out / 'reports'} (report.md, per_class.csv, metrics.json, confusion.png)",
                  highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    main()
