"""`make demo` end to end at a tiny size."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "terraseg.demo", "--out", str(out), "--frames", "12", "--size", "tiny",
                           "--train-epochs", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "colour baseline on the test drive, sim ontology" in proc.stdout
    for p in ("data/sim.yaml", "data/camera/calib.yaml", "data/lidar/sequences/00/poses.txt",
              "stats/camera/class_stats_image.json", "stats/lidar/class_stats_points.json",
              "reports/sim/report.md", "reports/traversability/confusion.png",
              "runs/sim-litefpn/checkpoints/best.pth", "runs/sim-salsanext/checkpoints/best.pth",
              "reports/sim-litefpn/metrics.json", "reports/sim-salsanext/metrics.json",
              "reports/traversability-litefpn/metrics.json"):
        assert (out / p).is_file(), p
    m = json.loads((out / "reports" / "traversability" / "metrics.json").read_text())
    assert 0 < m["summary"]["mIoU"] <= 100
    assert m["preset"]["ontology"] == "traversability"
    assert "sim-litefpn (camera), trained 1 epochs" in proc.stdout
    lidar = json.loads((out / "reports" / "sim-salsanext" / "metrics.json").read_text())
    assert lidar["preset"]["ontology"] == "sim" and lidar["counted"] > 0
    # ensemble, ONNX models, runtime outputs and HTML reports (issue 7 and 8 steps)
    for p in ("ensemble/rules.json", "reports/ensemble/metrics.json", "models/camera.onnx", "models/lidar.onnx",
              "runtime/stats.json", "runtime/predictions_bag/metadata.yaml", "report/camera/report.html",
              "report/lidar/report.html"):
        assert (out / p).is_file(), p
    rules = json.loads((out / "ensemble" / "rules.json").read_text())
    assert rules["format"] == "terraseg-ensemble-rules" and rules["ontology"] == "sim"
    stats = json.loads((out / "runtime" / "stats.json").read_text())
    streams = stats["streams"]
    assert {s["stream"] for s in streams.values()} == {"camera", "lidar"}
    for s in streams.values():  # every frame of the test bag predicted or counted as dropped
        assert s["frames_in"] > 0 and s["predicted"] + s["dropped"] == s["frames_in"]
    assert len(list((out / "runtime" / "files").rglob("*.png"))) > 0
    assert len(list((out / "runtime" / "files").rglob("*.label"))) > 0
    html = (out / "report" / "camera" / "report.html").read_text()
    for section in ('id="summary"', 'id="agreement"', 'id="ensemble"', 'id="samples"', 'id="curves"'):
        assert section in html, section
    if importlib.util.find_spec("rerun") is not None:
        assert (out / "runtime" / "run.rrd").stat().st_size > 0
        assert "live view:" in proc.stdout
    assert "runtime over the test drive's bag at 2 Hz" in proc.stdout
