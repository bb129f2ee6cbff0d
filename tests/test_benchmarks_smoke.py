"""Smoke tests of the speed benchmarks: each script runs at a tiny size and prints a consistent table.

Only the structure and the arithmetic between columns are checked; no timing is asserted. The
scripts run with one thread: on a busy 2-core machine OpenMP barriers across two threads can
make a run several times slower.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> str:
    """Run a benchmark script; return its stdout (fails the test on a non-zero exit)."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "ORT_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env,
                          cwd=BENCH.parent, timeout=300, check=False)
    assert proc.returncode == 0, f"{script} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _table(out: str, first_column: str) -> tuple[list[str], list[list[str]]]:
    """(header tokens, rows split on whitespace) of the table whose header starts with ``first_column``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == [first_column])
    assert set(lines[start + 1]) == {"-"}, "the header is not underlined"
    rows = []
    for line in lines[start + 2:]:
        if not line.strip():
            break
        rows.append(line.split())
    return lines[start].split(), rows


def test_bench_models_image_runs() -> None:
    out = _run("bench_models_image.py", "--quick", "--repeats", "1", "--warmup", "0", "--threads", "1",
               "--models", "litefpn", "--sizes", "64x64", "--rt-size", "64x64", "--exporter", "torchscript", "--synthetic")
    header, rows = _table(out, "model")
    assert header == ["model", "size", "backend", "net", "ms", "frame", "ms", "min", "ms", "FPS", "cpu", "ms",
                      "x", "net", "x", "frame"]
    assert [r[:3] for r in rows] == [["litefpn", "64x64", b] for b in ("eager", "eager-cl", "onnxruntime")]
    for r in rows:
        net, frame, best, fps, cpu, x_net, x_frame = map(float, r[3:])
        assert net > 0 and frame > 0 and 0 < best <= frame and cpu >= 0 and x_net > 0 and x_frame > 0
        assert fps == pytest.approx(1000 / frame, rel=0.02, abs=0.01)
    assert rows[0][8:] == ["1.00", "1.00"]  # eager is the reference
    assert "torchscript exporter" in out and "argmax agreement with PyTorch" in out
    assert "litefpn 64x64: ONNX Runtime" in out and "(goal >= 1.5x)" in out and "(goal >= 15 FPS)" in out
    assert "on the network alone" in out


@pytest.mark.parametrize("script", ["bench_models_image.py", "bench_training.py"])
def test_cuda_flag_without_gpu_skips(script: str, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    """In-process (no second interpreter start): main() returns 0 before touching torch settings."""
    import importlib.util

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the fallback message is not printed")
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import benchmarks/_synthetic.py
    spec = importlib.util.spec_from_file_location(f"_smoke_{script[:-3]}", BENCH / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    assert module.main(["--device", "cuda", "--synthetic"]) == 0
    out = capsys.readouterr().out
    assert "CUDA is unavailable on this machine: skipping the GPU measurements" in out
    assert "model" not in out.split("CUDA is unavailable")[1]  # no table after the message
    assert torch.get_num_threads() == threads


def test_bench_training_runs() -> None:
    out = _run("bench_training.py", "--quick", "--repeats", "1", "--warmup", "0", "--threads", "1",
               "--models", "litefpn", "--size", "64", "--range-presets", "tiny", "--randla-presets", "small", "--crop-points", "2048",
               "--range-width", "128", "--synthetic", "--channels-last", "both")
    header, rows = _table(out, "model")
    assert header == ["model", "input", "batch", "precision", "ms/step", "min", "ms", "steps/s", "samples/s", "cpu",
                      "ms", "data", "ms", "peak", "MB"]
    # --channels-last both: an NHWC row after each convolutional network's NCHW row, none for RandLA-Net
    assert [r[0] for r in rows] == ["litefpn", "litefpn", "salsanext:tiny", "salsanext:tiny", "randlanet:small"]
    assert [r[-8] for r in rows] == ["fp32", "fp32+NHWC", "fp32", "fp32+NHWC", "fp32"]
    assert rows[0][1] == "64x64" and rows[2][1:3] == ["64x128", "range"] and rows[4][1:3] == ["2,048", "points"]
    assert "layout  : NCHW and NHWC (channels-last)" in out
    for r in rows:
        batch, precision, step, best, steps, samples = r[-9:-3]
        assert int(batch) == 2 and precision.startswith("fp32")
        assert 0 < float(best) <= float(step)
        assert float(steps) == pytest.approx(1000 / float(step), rel=0.02, abs=0.002)
        assert float(samples) == pytest.approx(2 * float(steps), rel=0.02, abs=0.01)
    assert rows[0][-2] == "-" and float(rows[4][-2]) > 0  # data ms: RandLA-Net crops only
    assert "synthetic organised 64 x 2048 scan" in out


def test_bench_range_onnx_runs() -> None:
    out = _run("bench_range_onnx.py", "--quick", "--repeats", "1", "--warmup", "0", "--threads", "1",
               "--models", "salsanext:tiny,randlanet:small", "--synthetic")
    header, rows = _table(out, "model")
    assert header[:12] == ["model", "backend", "params", "pre", "net", "post", "total", "min", "cpu", "x", "eager",
                           "peak"]
    assert [r[:2] for r in rows] == [["salsanext:tiny", "eager"], ["salsanext:tiny", "onnxruntime"],
                                     ["salsanext:tiny", "ort-labels"], ["randlanet:small", "eager"]]
    assert [r[2] for r in rows] == ["0.42M", "0.42M", "0.42M", "0.31M"]
    for r in rows:
        pre, net, post, total = map(float, r[3:7])
        assert min(pre, net, post) >= 0 and total >= pre + net + post - 0.5
    assert rows[0][9] == "1.00" and rows[0][11] == "-" and float(rows[1][11].rstrip("%")) >= 99.0
    assert float(rows[2][11].rstrip("%")) >= 99.0  # labels-only: the same ids as eager
    assert " ".join(rows[1][12:15]) == "<= 100 ms:" and " ".join(rows[2][12:15]) == "<= 100 ms:"
    assert " ".join(rows[3][12:15]) == "<= 2000 ms:"
    assert "onnx salsanext:tiny: export + check" in out and "argmax agreement" in out


def test_bench_ensemble_runs() -> None:
    out = _run("bench_ensemble.py", "--frames", "3", "--height", "32", "--width", "48", "--pool", "2", "--repeats", "1",
               "--threads", "1", "--search-classes", "16", "--search-pixels", "1e6", "--fallback")
    header, rows = _table(out, "method")
    assert header == ["method", "threads", "best", "s", "Gtriples/s", "x", "bincount"]
    assert [" ".join(r[:-4]) for r in rows] == ["np.bincount (key precomputed)", "naive numpy", "terraseg numba",
                                                "terraseg numpy fallback"]
    assert all(r[-4] == "1" and float(r[-3]) >= 0 and float(r[-1]) >= 0 for r in rows) and rows[0][-1] == "1.00"
    header, rows = _table(out, "search")
    assert header == ["search", "classes", "pixels", "atoms", "steps", "best", "s", "ms/step", "gain", "pts"]
    assert rows[0][:3] == ["greedy", "default", "16"] and int(rows[0][5]) == int(rows[0][4]) + 1
    assert "(goal <= 1.5x)" in out and "(goal <= 5 s)" in out
    assert "PASS: identical 64x64x64 histograms from all 4 methods (4,608 triples)" in out


def test_bench_runtime_runs() -> None:
    out = _run("bench_runtime.py", "--quick")
    header, rows = _table(out, "stream")
    assert header == ["stream", "backend", "mode", "read", "pre", "infer", "post", "write", "p50", "p95", "max", "FPS",
                      "drop"]
    assert {(r[0], r[2]) for r in rows} >= {("camera", "max"), ("camera", "rt"), ("lidar", "max"), ("lidar", "rt")}
    for r in rows:
        done, total = r[-1].split("/")
        assert int(total) == 6 and 0 <= int(done) <= 6 and float(r[-2]) > 0  # every frame predicted or dropped
    assert "(goal >= 15 FPS)" in out and "(goal <= 100 ms)" in out


def test_bench_regions_runs() -> None:
    out = _run("bench_regions.py", "--scans", "1", "--synthetic", "--threads", "1")
    header, rows = _table(out, "method")
    assert header == ["method", "params", "regions/scan", "purity", "ms/scan", "x", "supervoxels", "1m"]
    assert [r[:2] for r in rows] == [["region-growing", "default"], ["region-growing", "radius=none"],
                                     ["region-growing", "5deg"], ["supervoxels", "0.5m"], ["supervoxels", "1.0m"],
                                     ["supervoxels", "2.0m"]]
    ref = float(rows[4][4])
    for r in rows:
        regions, purity, ms, ratio = float(r[2].replace(",", "")), float(r[3]), float(r[4]), float(r[5])
        assert regions >= 1 and 0 < purity <= 1 and ms > 0
        assert ratio == pytest.approx(ms / ref, rel=0.05, abs=0.01)
    assert rows[4][5] == "1.00"
    # finer supervoxels: more regions, purer
    assert float(rows[3][2].replace(",", "")) > float(rows[4][2].replace(",", "")) > float(rows[5][2].replace(",", ""))
    assert float(rows[3][3]) >= float(rows[4][3]) >= float(rows[5][3])
    assert "simulator scans (os1-64-1024, forest and meadow): 2 scans" in out and "real scans" not in out


def test_bench_active_runs() -> None:
    out = _run("bench_active.py", "--sizes", "300", "--repeats", "1", "--threads", "1")
    header, rows = _table(out, "operation")
    assert header == ["operation", "N", "median", "ms", "min", "ms", "x", "ref"]
    assert [r[0] for r in rows] == ["cdist+topk", "feature_knn", "select", "select", "select", "select", "slic"]
    assert rows[0][-1] == "1.00" and all(r[-4] == "300" for r in rows)
    # feature_knn median over the naive median; the medians are printed to 0.1 ms, so the ratio of the
    # printed values is only known to within that rounding
    a, b = float(rows[1][-3]), float(rows[0][-3])
    low, high = max(a - 0.05, 0.0) / (b + 0.05), (a + 0.05) / max(b - 0.05, 1e-9)
    assert low - 0.01 <= float(rows[1][-1]) <= high + 0.01


def test_bench_voxel_runs() -> None:
    out = _run("bench_voxel.py", "--repeats", "1", "--warmup", "0", "--threads", "1", "--synthetic", "--points", "8000",
               "--models", "randlanet:default,voxelunet:small", "--train-models", "randlanet:small,voxelunet:small",
               "--widths", "16")
    header, rows = _table(out, "model")
    assert header == ["model", "params", "pre", "net", "post", "total", "min", "cpu", "peak", "MB", "x", "randla"]
    assert [r[0] for r in rows] == ["randlanet:default", "voxelunet:small"]
    for r in rows:
        pre, net, post, total, best, cpu = map(float, r[2:8])
        assert net > 0 and 0 < best <= total and cpu >= 0 and pre + net + post <= total + 2
    assert rows[0][-1] == "1.00" and float(rows[1][-1]) > 0  # RandLA-Net default is the reference
    header, rows = _table(out, "C")
    assert header == ["C", "in=out", "mm", "gemm", "mm", "1t", "spconv", "1t", "x", "spconv"]
    assert rows[0][0] == "16" and float(rows[0][1]) > 0 and float(rows[0][2]) > 0
    assert "kernel map (once per level" in out and "goal <= 2" in out
    train = out[out.index("Training step"):]
    header, rows = _table(train, "model")
    assert header == ["model", "step", "min", "cpu", "x", "randla"]
    assert [r[0] for r in rows] == ["randlanet:small", "voxelunet:small"] and rows[0][-1] == "1.00"


def test_bench_domain_gap_runs(tmp_path: Path) -> None:
    out = _run("bench_domain_gap.py", "--smoke", "--threads", "1", "--work", str(tmp_path / "gap"),
               "--scenarios", "forest-day:forest-fog")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| scenario |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    assert header == ["scenario", "modality", "source on source test", "source-only", "target-supervised",
                      "gap (points)", "gap >= 5"]
    assert set(lines[start + 1]) == {"|", "-"}
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start + 2:start + 4]]
    assert [r[:2] for r in rows] == [["forest-day@small -> forest-fog@small", "2D"],
                                     ["forest-day@small -> forest-fog@small", "3D"]]
    for r in rows:
        own, source_only, target, gap = map(float, r[2:6])
        assert 0 <= min(own, source_only, target) and max(own, source_only, target) <= 100
        assert gap == pytest.approx(target - source_only, abs=0.11)  # each printed with one decimal
        assert r[6] == ("yes" if gap >= 5 else "no")
    assert "camera 2 steps, LiDAR 2 steps, seeds 0" in out
    # every number comes from a printed terraseg command: 2 sims, 2 x 2 trainings, 2 x 3 evaluations
    commands = [line[2:] for line in lines if line.startswith("$ terraseg ")]
    assert [c.split()[1] for c in commands] == ["sim", "sim"] + ["train", "train", "eval", "eval", "eval"] * 2
    assert "12 command(s) run" in out
    assert (tmp_path / "gap" / "runs" / "forest-fog-w11-camera-s0-2steps" / "checkpoints" / "last.pth").is_file()
    # a second run reuses the datasets, checkpoints and scores: no command, the same table
    again = _run("bench_domain_gap.py", "--smoke", "--threads", "1", "--work", str(tmp_path / "gap"),
                 "--scenarios", "forest-day:forest-fog")
    assert "$ terraseg" not in again and "0 command(s) run" in again
    again_lines = again.splitlines()
    s2 = again_lines.index(lines[start])
    assert again_lines[s2:s2 + 4] == lines[start:start + 4]


def _markdown_table(out: str, first_header: str) -> tuple[list[str], list[list[str]]]:
    """(header cells, row cells) of the Markdown table whose first header cell is ``first_header``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    assert set(lines[start + 1]) <= {"|", "-"}, "no Markdown separator under the header"

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(cells(line))
    return cells(lines[start]), rows


def test_bench_label_efficient_smoke_runs() -> None:
    out = _run("bench_label_efficient.py", "--smoke")
    assert "SMOKE" in out and "labelled points: 1%: " in out
    header, rows = _markdown_table(out, "method")
    assert header == ["method", "labels", "val mIoU % (mean)", "std", "per seed", "mIoU % on camera-seen points"]
    assert [r[0] for r in rows[:5]] == ["cross-entropy only", "+ region contrast", "+ boundary energy",
                                        "+ distillation pre-training", "all together"]
    assert rows[5][0] == "teacher's fused 2D alone (camera image)" and rows[6][0].startswith(
        "teacher's fused 2D alone (ring views coloured by intensity")
    assert rows[7][:2] == ["fully supervised", "100%"]
    for r in rows[:5] + rows[7:]:
        assert 0 <= float(r[2]) <= 100 and 0 <= float(r[5]) <= 100 and r[3] == "-"  # one seed: no spread
        assert r[4] == r[2]
    assert all(r[1] == "1%" for r in rows[:5]) and all(r[2] == "-" and 0 <= float(r[5]) <= 100 for r in rows[5:7])
    header, regions = _markdown_table(out, "regions")
    assert header == ["regions", "params", "regions/scan", "purity", "ms/scan"] and len(regions) == 3
    for r in regions:
        assert float(r[2].replace(",", "")) >= 1 and 0 < float(r[3]) <= 1 and float(r[4]) > 0
    header, losses = _markdown_table(out, "run")
    assert header[:6] == ["run", "labels", "sup", "contrast", "boundary", "energy"]
    by_run = {r[0]: r for r in losses}
    assert by_run["cross-entropy only"][3] == "-" and float(by_run["cross-entropy only"][2]) > 0
    assert float(by_run["+ region contrast"][3]) >= 0 and by_run["+ region contrast"][4] == "-"
    assert float(by_run["+ boundary energy"][4]) > 0 and float(by_run["+ boundary energy"][5]) >= 0
    assert "7 trainings" in out and "teacher targets" in out


def test_bench_adaptation_runs(tmp_path: Path) -> None:
    out = _run("bench_adaptation.py", "--smoke", "--threads", "1", "--work", str(tmp_path / "ad"))
    lines = out.splitlines()
    gap = next(line for line in lines if line.startswith("gap check (forest-day@small -> forest-fog@small"))
    assert ("ok (>= 5)" in gap) != ("TOO SMALL" in gap)
    start = next(i for i, line in enumerate(lines) if line.startswith("| row |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    assert header == ["row", "2D", "3D", "2D+3D", "labelled target points"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[start + 2:start + 7]]
    assert [r[0] for r in rows] == ["source-only", "adapt: pseudo-labels + xM", "adapt + 1 % random",
                                    "adapt + 1 % entropy", "target-supervised (ceiling)"]
    for r in rows:
        assert all(0 <= float(v) <= 100 for v in r[1:4])
    points = [int(r[4]) for r in rows]
    assert points[:2] == [0, 0] and min(points[2:4]) > 0 and points[4] > 50 * max(points[2:4])
    # every number comes from a printed terraseg command: 2 sims, 2 trainings, 3 adaptations, 5 evaluations
    commands = [line[2:].split()[1] for line in lines if line.startswith("$ terraseg ")]
    assert sorted(commands) == sorted(["sim"] * 2 + ["train"] * 2 + ["adapt"] * 3 + ["eval"] * 5)
    run = next((tmp_path / "ad" / "runs").glob("*--adapt-*-entropy-1pct-2steps"))
    state = json.loads((run / "adapt_state.json").read_text())["rounds"]
    assert len(state) == 1 and state[0]["step"] == 0 and state[0]["queried"] >= points[3] == state[0]["labelled_points"]
    again = _run("bench_adaptation.py", "--smoke", "--threads", "1", "--work", str(tmp_path / "ad"))
    assert "$ terraseg" not in again and "0 command(s) run" in again
    # --jobs: seed 1 in its own process (seed 0 reused), then one table over both seeds
    both = _run("bench_adaptation.py", "--smoke", "--seeds", "0,1", "--jobs", "2", "--strategies", "random",
                "--threads", "1", "--work", str(tmp_path / "ad"))
    assert "--seeds 1 --jobs 1 --threads 1" in both and "seed 1: exit status 0" in both and "$ terraseg" not in both
    log = (tmp_path / "ad" / "seed-1.log").read_text()
    assert sorted(line[2:].split()[1] for line in log.splitlines() if line.startswith("$ terraseg ")) == sorted(
        ["train"] * 2 + ["adapt"] * 2 + ["eval"] * 4)
    row = next(line for line in both.splitlines() if line.startswith("| adapt + 1 % random |"))
    assert all("+-" in c for c in row.strip("|").split("|")[1:4])
