"""``make demo``: the main job on the built-in simulator, with no download.

1. Simulate a small off-road dataset (camera + LiDAR, train / val / test drives) with
   :func:`terraseg.sim.dataset.simulate_dataset`.
2. Inspect it: class frequencies and class weights for the camera masks and the LiDAR labels.
3. Fit a baseline on the training frames: the Bayes-optimal per-pixel colour classifier (a 32^3
   RGB histogram), predict the test drive, write id PNGs and evaluate them exactly as
   ``terraseg eval-masks`` does, in the simulator's ontology and mapped to the 8-class
   traversability ontology. (Trained networks replace this baseline as the model issues land;
   the point of the baseline is to show how far colour alone gets.)
4. Print the headline numbers and where everything is.

Run: ``python -m terraseg.demo --out demo-output [--frames 60] [--size small|tiny]``
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


def run_demo(out: Path, frames: int = 60, size: str = "small", seed: int = 0, domain: str = "forest-day",
             progress: bool = True) -> dict[str, Any]:
    """Run every step; returns the evaluation results and output paths."""
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
    return {"results": results, "stats": stats, "out": out}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--size", default="small", choices=["tiny", "small", "vga"], help="camera preset")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--domain", default="forest-day")
    args = ap.parse_args(argv)
    from rich.console import Console

    console = Console()
    console.rule("terraseg demo: simulate -> inspect -> baseline -> evaluate")
    res = run_demo(args.out, frames=args.frames, size=args.size, seed=args.seed, domain=args.domain)
    for modality, st in res["stats"].items():
        console.print(f"{modality}: frames {st.frames}; rarest classes: "
                      + ", ".join(n for s in st.stats.values() for n, _ in s.rarest(3)), highlight=False, soft_wrap=True)
    for name, r in res["results"].items():
        console.print(f"\ncolour baseline on the test drive, {name} ontology:", highlight=False)
        console.print(markdown_summary(r), markup=False, highlight=False, soft_wrap=True)
    out = res["out"]
    console.print(f"data:    {out / 'data'} (camera: generic layout, lidar: SemanticKITTI layout)\n"
                  f"stats:   {out / 'stats'} (class weights, frequency plots)\n"
                  f"reports: {out / 'reports'} (report.md, per_class.csv, metrics.json, confusion.png)",
                  highlight=False, soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    main()
