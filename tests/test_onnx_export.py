"""ONNX export (agreement check, metadata, atomic failure) and the ONNX Runtime predictor."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from terraseg.errors import ConfigError, DataError  # noqa: E402
from terraseg.inference.image import ImagePredictor  # noqa: E402
from terraseg.inference.onnx_export import (  # noqa: E402
    ExportReport,
    OrtImagePredictor,
    export_checkpoint_onnx,
    export_onnx,
    read_onnx_metadata,
)
from terraseg.models import save_checkpoint  # noqa: E402
from terraseg.models.image import Normalization, build_image_model  # noqa: E402
from terraseg.ontology import Ontology  # noqa: E402
from terraseg.ontology.core import ClassInfo  # noqa: E402

SIZE = (64, 96)
META = {"preprocess": {"mean": [0.5, 0.45, 0.4], "std": [0.25, 0.24, 0.23], "base_size": list(SIZE)},
        "epoch": 7, "miou": 0.5}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny inputs; other test processes share the cores
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def _ontology(k: int) -> Ontology:
    return Ontology(name="five", classes=tuple(ClassInfo(i, f"class{i}", (40 * i, 255 - 40 * i, 7 * i))
                                               for i in range(k)), void_ids=frozenset({0}), ignore_ids=frozenset({0}))


@pytest.fixture(scope="module")
def litefpn() -> nn.Module:
    torch.manual_seed(0)
    return build_image_model("litefpn", ontology=_ontology(5), channels=32).eval()


@pytest.fixture(scope="module")
def litefpn_onnx(litefpn: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ExportReport]:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("onnx") / "litefpn.onnx"
    litefpn.train()  # the export runs in eval mode and restores the mode
    report = export_onnx(litefpn, path, SIZE, meta=META)
    assert litefpn.training
    litefpn.eval()
    return path, report


def test_export_litefpn_agreement_and_metadata(litefpn_onnx: tuple[Path, ExportReport]) -> None:
    import onnx

    path, report = litefpn_onnx
    assert report.path == path and path.is_file()
    assert report.input_size == SIZE and not report.dynamic and report.opset == 18
    assert report.agreement >= 0.999 and report.max_abs_diff < 1e-3 and report.exporter == "dynamo"
    assert report.checked_shapes == ((1, 3, *SIZE),)
    assert "argmax agreement" in str(report)
    proto = onnx.load(str(path))
    [inp], [out] = proto.graph.input, proto.graph.output
    assert inp.name == "image" and [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, *SIZE]
    assert out.name == "logits" and [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 5, *SIZE]
    assert not list(path.parent.glob(".*tmp*"))

    info = read_onnx_metadata(path)
    assert info.input_size == SIZE and not info.dynamic and info.num_classes == 5
    assert info.class_names == tuple(f"class{i}" for i in range(5))
    assert info.ontology is not None and info.ontology.to_dict() == _ontology(5).to_dict()
    assert info.norm == Normalization((0.5, 0.45, 0.4), (0.25, 0.24, 0.23))
    assert info.base_size == SIZE and info.exporter == "dynamo"
    from terraseg import __version__

    assert info.version == __version__
    assert info.model_spec["arch"] == "litefpn" and info.meta == {"epoch": 7, "miou": 0.5}


def test_export_upernet_resnet18(tmp_path: Path) -> None:
    model = build_image_model("upernet", "resnet18", num_classes=6, decoder_channels=32, aux_channels=16)
    report = export_onnx(model, tmp_path / "upernet.onnx", SIZE)
    assert report.agreement >= 0.999 and report.exporter == "dynamo"
    info = read_onnx_metadata(report.path)
    assert info.num_classes == 6 and info.ontology is None and info.class_names == tuple(f"class_{i}" for i in range(6))
    assert info.norm == Normalization() and info.base_size is None
    # pyramid pooling cannot be exported with dynamic H / W: one clear error, no file
    with pytest.raises(DataError, match=r"upernet_dyn.onnx: ONNX export failed \(pyramid-pooling"):
        export_onnx(model, tmp_path / "upernet_dyn.onnx", SIZE, dynamic=True, exporter="torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["upernet.onnx"]


def test_ort_predictor_matches_torch(litefpn: nn.Module, litefpn_onnx: tuple[Path, ExportReport]) -> None:
    path, _ = litefpn_onnx
    ort_pred = OrtImagePredictor(path, threads=1)
    assert ort_pred.num_classes == 5 and ort_pred.fixed_size == SIZE and ort_pred.fixed_batch == 1
    assert ort_pred.ontology is not None and ort_pred.ontology.name == "five"
    assert ort_pred.base_size == SIZE and ort_pred.norm.mean == (0.5, 0.45, 0.4)
    torch_pred = ImagePredictor(litefpn, device="cpu", norm=ort_pred.norm, base_size=SIZE)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (75, 110, 3), dtype=np.uint8), rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)]
    for got, ref in zip(ort_pred.predict_batch(images), torch_pred.predict_batch(images)):
        assert got.dtype == ref.dtype == np.uint8 and got.shape == ref.shape
        assert (got == ref).mean() >= 0.999
    np.testing.assert_allclose(ort_pred.probabilities(images[0]), torch_pred.probabilities(images[0]), atol=1e-4)

    # without the base size, TTA views and windows of any size are resized to the fixed model size
    tta = OrtImagePredictor(path, threads=1, base_size=False, tta="scales=0.75,1 flip=true",
                            window="slide crop=64x96 stride=48x72")
    ref = ImagePredictor(litefpn, device="cpu", norm=ort_pred.norm, tta=tta.tta, window=tta.window)
    assert tta.base_size is None
    got, want = tta.predict(images[0]), ref.predict(images[0])
    assert got.shape == (75, 110) and (got == want).mean() >= 0.999


def test_dynamic_export_and_sliding_windows(litefpn: nn.Module, tmp_path: Path) -> None:
    report = export_onnx(litefpn, tmp_path / "dyn.onnx", SIZE, dynamic=True)
    assert report.dynamic and report.exporter == "torchscript" and report.agreement >= 0.999
    assert len(report.checked_shapes) == 2 and report.checked_shapes[1][0] == 2
    pred = OrtImagePredictor(report.path, threads=1, window="slide crop=48x64 stride=32x40")
    assert pred.fixed_size is None and pred.fixed_batch is None and pred.base_size is None
    assert read_onnx_metadata(report.path).dynamic
    ref = ImagePredictor(litefpn, device="cpu", window=pred.window)
    img = np.random.default_rng(3).integers(0, 256, (57, 83, 3), dtype=np.uint8)
    assert (pred.predict(img) == ref.predict(img)).mean() >= 0.999


class _Noise(nn.Module):
    """Random logits: ONNX Runtime and PyTorch disagree on the argmax almost everywhere."""

    num_classes = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rand(x.shape[0], 4, x.shape[2], x.shape[3]) + 0.0 * x.mean()  # uses x: it stays a graph input


def test_failed_check_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "noise.onnx"
    with pytest.raises(DataError, match=r"noise.onnx: ONNX export failed: dynamo: argmax agreement with PyTorch "
                                        r"0\.\d+ is below 0\.999.*; torchscript: argmax agreement"):
        export_onnx(_Noise(), target, (16, 24))
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"previous export")
    with pytest.raises(DataError):
        export_onnx(_Noise(), target, (16, 24), exporter="torchscript")
    assert target.read_bytes() == b"previous export" and sorted(p.name for p in tmp_path.iterdir()) == ["noise.onnx"]
    report = export_onnx(_Noise(), tmp_path / "unchecked.onnx", (16, 24), check=False, exporter="torchscript")
    assert math.isnan(report.agreement) and report.path.is_file() and "not checked" in str(report)


def test_export_checkpoint_and_argument_errors(litefpn: nn.Module, tmp_path: Path) -> None:
    ck = save_checkpoint(tmp_path / "m.pth", litefpn, meta=META)
    report = export_checkpoint_onnx(ck, tmp_path / "ck.onnx", exporter="torchscript")
    assert report.input_size == SIZE and report.exporter == "torchscript" and report.agreement >= 0.999
    info = read_onnx_metadata(report.path)
    assert info.base_size == SIZE and info.ontology is not None and info.meta["epoch"] == 7
    with pytest.raises(ConfigError, match="exporter must be one of"):
        export_onnx(litefpn, tmp_path / "x.onnx", SIZE, exporter="tensorrt")
    with pytest.raises(ConfigError, match="min_agreement"):
        export_onnx(litefpn, tmp_path / "x.onnx", SIZE, min_agreement=1.5)
    with pytest.raises(ConfigError, match="export size"):
        export_onnx(litefpn, tmp_path / "x.onnx", (0, 32))
    save_checkpoint(tmp_path / "nosize.pth", litefpn)
    with pytest.raises(ConfigError, match="stores no base_size"):
        export_checkpoint_onnx(tmp_path / "nosize.pth", tmp_path / "x.onnx")
    with pytest.raises(DataError, match="ONNX file not found"):
        OrtImagePredictor(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(DataError, match="bad.onnx: not a readable ONNX model"):
        OrtImagePredictor(tmp_path / "bad.onnx")
    with pytest.raises(DataError, match="bad.onnx: not a readable ONNX model"):
        read_onnx_metadata(tmp_path / "bad.onnx")
    with pytest.raises(ConfigError, match="not available"):
        OrtImagePredictor(report.path, providers=["TensorrtExecutionProvider"])
    assert not (tmp_path / "x.onnx").exists()
