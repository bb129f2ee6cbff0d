"""``make demo``: the main job on generated data, with no download.

Until the built-in simulator lands, the demo generates a small set of GOOSE-style label masks
(sky, forest, a trail through low grass, bushes, a few objects), derives the predictions of two
imperfect "models" from them with class-specific confusions (tree_crown taken for forest, high
grass for low grass, boundary noise), writes both as id PNG folders, evaluates each with the
``goose-challenge`` preset exactly as ``terraseg eval-masks`` does, and prints a side-by-side
per-class table.

Run: ``python -m terraseg.demo --out demo-output``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from terraseg.io import write_label_png
from terraseg.metrics import evaluate_mask_folders, markdown_columns, write_reports
from terraseg.ontology import get_ontology
from terraseg.progress import ProgressBar


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One GOOSE-id label mask of an off-road scene (ids from the GOOSE ontology)."""
    g = get_ontology("goose")
    ids = {n: g.id_of(n) for n in ("sky", "forest", "tree_crown", "tree_trunk", "low_grass", "high_grass", "soil",
                                   "gravel", "bush", "rock", "pole", "person", "car", "water", "undefined")}
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = int(h * rng.uniform(0.3, 0.45)) + (np.sin(xx / w * rng.uniform(2, 6)) * h * 0.04).astype(int)
    m = np.where(yy < horizon, ids["sky"], ids["low_grass"]).astype(np.uint8)
    treeline = horizon + int(h * rng.uniform(0.08, 0.16))
    m[(yy >= horizon) & (yy < treeline)] = ids["forest"]
    # crowns above the forest edge and a few trunks
    for _ in range(rng.integers(2, 6)):
        cx, r = rng.integers(0, w), rng.integers(h // 12, h // 6)
        cy = int(horizon[0, min(cx, w - 1)]) - r // 2
        m[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = ids["tree_crown"]
        m[(np.abs(xx - cx) < max(2, r // 8)) & (yy >= cy) & (yy < cy + 2 * r)] = ids["tree_trunk"]
    # a trail that narrows towards the horizon
    centre = w / 2 + rng.uniform(-0.15, 0.15) * w
    half = (yy - horizon) / h * w * rng.uniform(0.25, 0.4)
    trail = (np.abs(xx - centre - (yy - h) * rng.uniform(-0.3, 0.3)) < half) & (yy >= treeline)
    m[trail] = ids["gravel" if rng.random() < 0.5 else "soil"]
    # patches of high grass, bushes, rocks, a puddle
    for name, n_max, rmax in (("high_grass", 4, 8), ("bush", 3, 10), ("rock", 3, 20), ("water", 1, 12)):
        for _ in range(rng.integers(0, n_max + 1)):
            cx, cy = rng.integers(0, w), rng.integers(treeline.min() if np.ndim(treeline) else treeline, h)
            r = rng.integers(h // (rmax * 2), h // rmax + 2)
            blob = ((yy - cy) / (0.6 * r)) ** 2 + ((xx - cx) / r) ** 2 < 1
            m[blob & (yy > horizon)] = ids[name]
    # a pole, a person or a car now and then
    if rng.random() < 0.5:
        x0 = rng.integers(0, w - 4)
        m[(xx >= x0) & (xx < x0 + 3) & (yy > horizon - h // 6) & (yy < treeline + h // 8)] = ids["pole"]
    if rng.random() < 0.4:
        x0, y0 = rng.integers(0, w - w // 20), rng.integers(treeline.max(), h - h // 8)
        m[(xx >= x0) & (xx < x0 + w // 30) & (yy >= y0) & (yy < y0 + h // 8)] = ids["person"]
    if rng.random() < 0.3:
        x0, y0 = rng.integers(0, w - w // 6), rng.integers(treeline.max(), h - h // 8)
        m[(xx >= x0) & (xx < x0 + w // 6) & (yy >= y0) & (yy < y0 + h // 10)] = ids["car"]
    m[h - h // 20:, :] = np.where(rng.random() < 0.5, ids["undefined"], m[h - h // 20:, :])
    return m


def _model_prediction(gt: np.ndarray, rng: np.random.Generator, confusions: dict[str, tuple[str, float]],
                      noise: float) -> np.ndarray:
    """A plausible prediction: whole-class confusions at given rates plus boundary noise."""
    g = get_ontology("goose")
    pred = gt.copy()
    for src, (dst, rate) in confusions.items():
        sel = (gt == g.id_of(src)) & (rng.random(gt.shape) < rate)
        pred[sel] = g.id_of(dst)
    # boundary noise: take the label of a shifted neighbour near class edges
    dy, dx = rng.integers(-2, 3, 2)
    shifted = np.roll(np.roll(gt, dy, 0), dx, 1)
    edge = (shifted != gt) & (rng.random(gt.shape) < noise)
    pred[edge] = shifted[edge]
    return pred


def run_demo(out: Path, frames: int = 24, size: tuple[int, int] = (256, 512), seed: int = 0,
             progress: bool = True) -> dict[str, object]:
    """Generate the demo data, evaluate two models and write reports; returns the results."""
    rng = np.random.default_rng(seed)
    out = Path(out)
    models = {
        "uper-like": ({"tree_crown": ("forest", 0.35), "high_grass": ("low_grass", 0.4), "rock": ("soil", 0.3),
                       "pole": ("forest", 0.5), "water": ("soil", 0.2)}, 0.6),
        "m2f-like": ({"tree_crown": ("forest", 0.5), "high_grass": ("low_grass", 0.25), "bush": ("forest", 0.4),
                      "person": ("undefined", 0.3), "water": ("gravel", 0.5)}, 0.8),
    }
    h, w = size
    with ProgressBar(frames, "generating masks", enabled=progress) as bar:
        for i in range(frames):
            gt = _scene(rng, h, w)
            write_label_png(out / "data" / "gt" / f"frame_{i:04d}_labelids.png", gt)
            for name, (conf, noise) in models.items():
                write_label_png(out / "data" / name / f"frame_{i:04d}.png", _model_prediction(gt, rng, conf, noise))
            bar.advance()
    results = {}
    for name in models:
        ev = evaluate_mask_folders(out / "data" / name, out / "data" / "gt", "goose", "goose-challenge",
                                   gt_suffix="_labelids", progress=progress)
        write_reports(ev.result, out / "reports" / name, ev.matrix, title=f"{name} (demo)", model_name=name)
        results[name] = ev.result
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from rich.console import Console

    console = Console()
    console.rule("terraseg demo: evaluating two models on generated GOOSE-style masks")
    results = run_demo(args.out, frames=args.frames, seed=args.seed)
    console.print("\nPer-class IoU (%) of the classes present, best per column in bold:", highlight=False)
    md = markdown_columns(results, skip_absent=True)  # type: ignore[arg-type]
    (args.out / "reports").mkdir(parents=True, exist_ok=True)
    (args.out / "reports" / "comparison.md").write_text(md)
    console.print(md, markup=False, highlight=False, soft_wrap=True)
    for name, r in results.items():
        s = r.summary()  # type: ignore[attr-defined]
        console.print(f"{name:10s}  aAcc {s['aAcc']:.2f}  mIoU {s['mIoU']:.2f}  mAcc {s['mAcc']:.2f}  "
                      f"category mIoU {s['category_mIoU']:.2f}  composite {s['composite_mIoU']:.2f}", highlight=False,
                      soft_wrap=True)
    console.print(f"\nmasks:   {args.out / 'data'}\nreports: {args.out / 'reports'} "
                  "(report.md, per_class.csv, metrics.json, confusion.png per model; comparison.md)", highlight=False,
                  soft_wrap=True)


if __name__ == "__main__":  # pragma: no cover
    main()
