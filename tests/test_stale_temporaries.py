"""No stale temporaries after a rerun: the temporaries of killed writes (PNG, .label, .ckpt, bag
folders, .rrd) are removed by the next writer of that folder, and only they (never a user's
file, never a temporary a running process is writing); the .rrd gets a plain open()'s mode;
``terraseg sim`` refuses to mix two runs in one folder."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import terraseg
from terraseg.cli import app
from terraseg.errors import ConfigError

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process ids and permission bits of POSIX")

runner = CliRunner()


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def _killed_writer(script: str, cwd: Path) -> None:
    """Run ``script`` in a new Python process that dies with SIGKILL's abruptness (``os._exit``)
    in the middle of its writes, so nothing of it can clean up."""
    env = {**os.environ, "PYTHONPATH": str(Path(terraseg.__file__).parents[1]) + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    code = textwrap.dedent(script) + "\nimport os\nos._exit(9)\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr


def _names(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_only_temporaries_of_ended_processes_are_stale(tmp_path: Path, dead_pid: int) -> None:
    from terraseg.io.atomic import is_stale_temporary, make_temporary, remove_stale_temporaries

    live, me = os.getppid(), os.getpid()
    names = {
        f".000001.{dead_pid}-k3j2h1g0.tmp.png": True,   # a killed run's
        ".000002.k3j2h1g0.tmp.png": True,               # written before pids were recorded
        f".last.{dead_pid}-ab_cd123.tmp.ckpt": True,
        f".train.{dead_pid}-abcdefgh.tmp": True,        # a bag folder
        f".000003.{live}-k3j2h1g0.tmp.png": False,      # a process that still runs
        f".000004.{me}-k3j2h1g0.tmp.png": False,        # this process's own write in progress
        ".notes.tmp.png": False,                        # users' files
        "my.12345-abcdefgh.tmp.png": False,
        ".000005.tmp.png": False,
        ".config": False,
        "000001.png": False,
    }
    for name in names:
        assert is_stale_temporary(tmp_path / name) == names[name], name
    for name in names:
        (tmp_path / "sub" / name).parent.mkdir(exist_ok=True)
        if name.endswith(".tmp"):
            (tmp_path / "sub" / name).mkdir()
            (tmp_path / "sub" / name / "inner.db3").write_bytes(b"x")
        else:
            (tmp_path / "sub" / name).write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == []  # not recursive by default
    removed = remove_stale_temporaries(tmp_path, recursive=True)
    assert sorted(p.name for p in removed) == sorted(n for n, stale in names.items() if stale)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(n for n, stale in names.items() if not stale)
    assert remove_stale_temporaries(tmp_path / "missing") == []
    tmp = make_temporary(tmp_path / "x" / "run.rrd")
    assert tmp.parent == tmp_path / "x" and tmp.name.startswith(f".run.{me}-") and tmp.name.endswith(".tmp.rrd")
    assert not is_stale_temporary(tmp)


def test_killed_png_and_bag_writes_are_cleaned_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "preds"
    _killed_writer(f"""
        import numpy as np
        from terraseg.io.atomic import atomic_path
        from terraseg.io.bags import BagWriter
        with atomic_path({str(out / "ids" / "scene" / "000001.png")!r}) as tmp:
            tmp.write_bytes(b"half a png")
            w = BagWriter({str(out / "bags" / "train")!r}).open()
            w.write_image("/cam", np.zeros((4, 4, 3), np.uint8), 1)
            import os
            os._exit(9)
    """, tmp_path)
    (out / "ids" / ".notes.tmp.png").write_text("mine")
    (out / "bags" / ".train.tmp").mkdir()
    before = _names(out)
    assert any(n.startswith("ids/scene/.000001.") and n.endswith(".tmp.png") for n in before)
    assert any(n.startswith("bags/.train.") and n.endswith(".tmp") and n != "bags/.train.tmp" for n in before)

    from terraseg.inference.writers import PredictionWriter
    from terraseg.io.bags import BagWriter

    writer = PredictionWriter(out, "sim", overlay=False)
    writer.write("scene/000001", np.zeros((4, 5, 3), np.uint8), np.ones((4, 5), np.uint8))
    with BagWriter(out / "bags" / "train", overwrite=True) as w:
        w.write_image("/cam", np.zeros((4, 4, 3), np.uint8), 1)
    assert _names(out) == ["bags", "bags/.train.tmp", "bags/train", "bags/train/metadata.yaml",
                           "bags/train/train.db3", "color", "color/scene", "color/scene/000001.png", "ids",
                           "ids/.notes.tmp.png", "ids/scene", "ids/scene/000001.png", "ontology.yaml"]


def test_scan_label_checkpoint_and_extract_folders_are_swept(tmp_path: Path, dead_pid: int) -> None:
    from terraseg.extract import extract_bag
    from terraseg.inference.scans import write_scan_prediction
    from terraseg.io.bags import BagWriter
    from terraseg.training.callbacks import RunCheckpoints

    stale = f"{dead_pid}-zzzzzzzz.tmp"
    scans = tmp_path / "scans"
    for sub, name in (("labels", f".000000.{stale}.label"), ("ply", f".000000.{stale}.ply")):
        (scans / sub).mkdir(parents=True)
        (scans / sub / name).write_bytes(b"partial")
    write_scan_prediction(scans, "000001", np.zeros((3, 4), np.float32), np.zeros(3, np.uint32), "sim")
    assert _names(scans) == ["labels", "labels/000001.label", "ply", "ply/000001.ply"]

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / f".last.{stale}.ckpt").write_bytes(b"partial")
    (run / f".history.{stale}.jsonl").write_bytes(b"partial")
    RunCheckpoints(run, {})
    assert _names(run) == ["checkpoints"]

    with BagWriter(tmp_path / "b.bag") as w:
        w.write_image("/cam", np.zeros((4, 4, 3), np.uint8), 1)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / f".0000000000_000000001.{stale}.png").write_bytes(b"partial")
    (data / f".timestamps.{stale}.csv").write_bytes(b"partial")
    extract_bag(tmp_path / "b.bag", data, image_topic="/cam", progress=False)
    assert not [n for n in _names(data) if ".tmp" in n]


def test_rrd_gets_the_mode_of_open_and_stale_recordings_go(tmp_path: Path, dead_pid: int) -> None:
    pytest.importorskip("rerun", reason="rerun-sdk is not installed")
    from terraseg.inference.runtime.rerun_view import RerunSink

    stale = tmp_path / f".run.{dead_pid}-abcdefgh.tmp.rrd"
    stale.write_bytes(b"half a recording")
    old = os.umask(0o022)
    try:
        with RerunSink(save=tmp_path / "run.rrd"):
            pass
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir()] == ["run.rrd"]
    assert stat.S_IMODE((tmp_path / "run.rrd").stat().st_mode) == 0o644


# ---------------------------------------------------------------------------------------------- sim
def test_sim_refuses_a_non_empty_folder_and_overwrite_replaces_only_its_own_output(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    args = ["sim", "--out", str(out), "--frames", "2", "--camera", "tiny", "--lidar", "none", "--split", "train=1",
            "-q"]
    assert runner.invoke(app, args).exit_code == 0
    (out / "notes.txt").write_text("my notes")
    (out / "camera" / "images" / "train" / "000099.png").write_bytes(b"left over from another run")
    r = runner.invoke(app, [*args[:4], "1"] + args[5:])
    assert r.exit_code == 1
    assert r.output.strip() == (f"error: {out}: the folder is not empty (camera, notes.txt, sim.yaml); simulate into a "
                                "new or empty folder, or pass --overwrite (overwrite=True) to replace a previous "
                                "simulator output there")
    r = runner.invoke(app, [*args[:4], "1"] + args[5:] + ["--overwrite"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "camera" / "images" / "train").iterdir()) == ["000000.png"]
    assert (out / "notes.txt").read_text() == "my notes"  # not the simulator's: kept

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpeg")
    r = runner.invoke(app, ["sim", "--out", str(foreign), "--overwrite", "--frames", "1", "-q"])
    assert r.exit_code == 1 and "not a simulator output (no sim.yaml; it holds holiday.jpg)" in r.output
    assert [p.name for p in foreign.iterdir()] == ["holiday.jpg"]


def test_an_interrupted_sim_leaves_no_partial_bag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import terraseg.sim.dataset as simds

    real = simds.render
    calls = {"n": 0}

    def failing(*a: object, **k: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(simds, "render", failing)
    with pytest.raises(KeyboardInterrupt):
        simds.simulate_dataset(tmp_path / "s", frames=3, camera="tiny", lidar=None, bag=True, progress=False,
                               splits={"train": 1.0})
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["bags", "camera", "sim.yaml"]
    assert list((tmp_path / "s" / "bags").iterdir()) == []  # no partial bags/train, no temporary folder
    with pytest.raises(ConfigError, match="not empty"):
        simds.simulate_dataset(tmp_path / "s", frames=1, camera="tiny", lidar=None, progress=False)
