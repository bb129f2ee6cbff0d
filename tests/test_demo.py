"""`make demo` end to end at a tiny size."""

from __future__ import annotations

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
