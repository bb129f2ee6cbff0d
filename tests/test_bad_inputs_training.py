"""Bad-input matrix of the model-file commands: training (fine-tuning from weights, --resume),
evaluation, prediction and export, each given a broken file (truncated .pth, garbage in the middle
of a .pth, NaN weights, a garbage .onnx, garbage in the middle of an exported .onnx, a truncated
last.ckpt, a foreign .ckpt). Every combination must end with exactly one ``error:`` line naming the
file, a non-zero exit, no traceback and no output written."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from terraseg.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _garbage_in_the_middle(src: Path, dst: Path, n: int = 4096) -> Path:
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = np.random.default_rng(7).integers(0, 256, n, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A one-step training run of a small camera model, its ONNX export, and broken copies of each."""
    from terraseg.inference.models import load_model
    from terraseg.inference.onnx_export import export_checkpoint_onnx
    from terraseg.models.surgery import save_checkpoint
    from terraseg.sim.dataset import simulate_dataset
    from terraseg.training.config import TrainConfig
    from terraseg.training.engine import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("bad-inputs")
    simulate_dataset(base / "sim", frames=6, seed=5, camera="tiny", lidar=None, progress=False,
                     splits={"train": 0.67, "val": 0.33})
    cfg = TrainConfig.from_dict({
        "task": "image", "name": "run", "output": str(base / "runs"), "seed": 0,
        "data": {"root": str(base / "sim" / "camera"), "kind": "generic", "ontology": "sim", "batch_size": 2,
                 "cache": True},
        "model": {"arch": "litefpn", "encoder": "tu-mobilenetv3_small_050",
                  "options": {"channels": 16, "aux_channels": 16}},
        "augment": {"crop": [64, 64]},
        "trainer": {"max_steps": 1, "log_every": 1},
    })
    cfg.save(base / "recipe.yaml")
    res = train(cfg, progress=False)
    assert res.best_checkpoint is not None
    good = res.best_checkpoint
    onnx_good = export_checkpoint_onnx(good, base / "model.onnx", (64, 64), exporter="torchscript").path
    broken = base / "broken"
    broken.mkdir()
    out = {"recipe": base / "recipe.yaml", "run": res.run_dir, "data": base / "sim" / "camera",
           "images": base / "sim" / "camera" / "images" / "val", "good": good}
    data = good.read_bytes()
    (broken / "truncated.pth").write_bytes(data[: len(data) // 2])
    out["truncated.pth"] = broken / "truncated.pth"
    out["garbage-middle.pth"] = _garbage_in_the_middle(good, broken / "garbage-middle.pth")
    loaded = load_model(good)
    with torch.no_grad():
        next(loaded.model.parameters()).view(-1)[0] = float("nan")
    out["nan.pth"] = save_checkpoint(broken / "nan.pth", loaded.model, meta=loaded.meta)
    (broken / "garbage.onnx").write_bytes(os.urandom(50_000))
    out["garbage.onnx"] = broken / "garbage.onnx"
    import onnx

    biggest = max(onnx.load(str(onnx_good)).graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    blob = bytearray(onnx_good.read_bytes())
    at = bytes(blob).find(biggest) + len(biggest) // 2  # garbage in the middle of the largest weight tensor
    blob[at:at + 256] = np.random.default_rng(3).integers(0, 256, 256, dtype=np.uint8).tobytes()
    (broken / "garbage-middle.onnx").write_bytes(bytes(blob))
    out["garbage-middle.onnx"] = broken / "garbage-middle.onnx"
    ckpt = (res.run_dir / "checkpoints" / "last.ckpt").read_bytes()
    (broken / "truncated.ckpt").write_bytes(ckpt[: len(ckpt) * 2 // 3])
    out["truncated.ckpt"] = broken / "truncated.ckpt"
    torch.save({"epoch": 3, "global_step": 120, "hyper_parameters": {"lr": 0.1},  # another tool's Lightning file
                "state_dict": {"net.fc.weight": torch.randn(10, 32), "net.fc.bias": torch.zeros(10)}},
               broken / "foreign.ckpt")
    out["foreign.ckpt"] = broken / "foreign.ckpt"
    torch.set_num_threads(threads)
    return out


def _one_clear_error(result, name: str) -> str:  # type: ignore[no-untyped-def]
    text = result.stderr
    assert result.exit_code == 1, (result.exit_code, result.output[-2000:])
    assert "Traceback" not in result.output, result.output[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert name in errors[0], errors[0]
    return errors[0]


def _command(kind: str, f: dict[str, Path], model: Path, out: Path) -> list[str]:
    if kind == "eval":
        return ["eval", str(model), "--data", str(f["data"]), "--split", "val", "--out", str(out / "eval"), "-q"]
    if kind == "predict":
        return ["predict", str(model), str(f["images"]), "--out", str(out / "pred"), "-q"]
    if kind == "export":
        return ["export", str(model), "--onnx", str(out / "model.onnx"), "--size", "64x64"]
    if kind == "train-weights":
        return ["train", str(f["recipe"]), f"output={out / 'runs'}", f"model.weights={model}", "-q"]
    raise AssertionError(kind)


MODEL_FILES = ["truncated.pth", "garbage-middle.pth", "nan.pth", "garbage.onnx", "garbage-middle.onnx",
               "truncated.ckpt", "foreign.ckpt"]
COMMANDS = ["eval", "predict", "export", "train-weights"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("broken", MODEL_FILES)
def test_broken_model_file(files: dict[str, Path], tmp_path: Path, broken: str, command: str) -> None:
    model = files[broken]
    before = model.read_bytes()
    result = runner.invoke(app, _command(command, files, model, tmp_path))
    line = _one_clear_error(result, broken)
    if broken.startswith("nan"):
        assert "NaN or infinite" in line
    if broken == "garbage-middle.onnx" and command == "predict":
        assert "do not match the checksum recorded at export" in line
    assert list(tmp_path.iterdir()) == [], [p.name for p in tmp_path.rglob("*")]  # nothing written
    assert model.read_bytes() == before


@pytest.mark.parametrize("broken,message", [
    ("truncated.ckpt", "truncated"),
    ("foreign.ckpt", "not a resume checkpoint written by `terraseg train`"),
    ("good", "not a resume checkpoint written by `terraseg train`"),  # best.pth under the resume name
    ("garbage-middle.pth", "CRC-32"),
])
def test_resume_from_a_broken_last_ckpt(files: dict[str, Path], tmp_path: Path, broken: str, message: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    shutil.copy(files[broken], run / "checkpoints" / "last.ckpt")
    listing = sorted((p.relative_to(run), p.stat().st_size) for p in run.rglob("*"))
    result = runner.invoke(app, ["train", str(files["recipe"]), f"output={tmp_path}", "--resume", "-q"])
    line = _one_clear_error(result, "last.ckpt")
    assert message in line
    assert sorted((p.relative_to(run), p.stat().st_size) for p in run.rglob("*")) == listing  # untouched


def test_the_good_files_work(files: dict[str, Path], tmp_path: Path) -> None:
    """The matrix's reference: the undamaged checkpoint and ONNX file are accepted by the same commands."""
    r = runner.invoke(app, _command("predict", files, files["good"], tmp_path))
    assert r.exit_code == 0, r.output[-2000:]
    r = runner.invoke(app, ["predict", str(files["good"].parents[3] / "model.onnx"), str(files["images"]),
                            "--out", str(tmp_path / "onnx"), "-q"])
    assert r.exit_code == 0, r.output[-2000:]
    assert sorted(p.name for p in (tmp_path / "onnx" / "ids").iterdir()) == sorted(
        p.stem + ".png" for p in files["images"].iterdir())
    summary = json.loads((files["run"] / "summary.json").read_text())
    assert summary["steps"] == 1  # and where it ran, so a reported figure says its device and precision
    assert (summary["device"], summary["devices"], summary["precision"]) == ("cpu", 1, "32-true")
