"""Runtime backends on ONNX Runtime (camera LiteFPN, LiDAR range network) and ``terraseg run`` with them."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import terraseg.cli.run  # noqa: E402,F401  (registers the command before the CLI does)
from terraseg.cli.app import app  # noqa: E402
from terraseg.errors import ConfigError, DataError  # noqa: E402
from terraseg.inference.runtime import ImageSequenceSource, ScanFolderSource, load_backend, model_kind  # noqa: E402
from terraseg.io.bags import decode_image, open_bag  # noqa: E402
from terraseg.io.scans import read_bin, read_label, write_bin  # noqa: E402

runner = CliRunner()
SIZE = (64, 96)


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _scan(seed: int, n: int = 3000) -> np.ndarray:
    """Points inside the sim-small LiDAR's field of view (elevation -20..15 degrees), 2..40 m away."""
    rng = np.random.default_rng(seed)
    az = rng.uniform(-np.pi, np.pi, n)
    el = np.radians(rng.uniform(-19.5, 14.5, n))
    r = rng.uniform(2.0, 40.0, n)
    xyz = np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)], 1)
    return np.concatenate([xyz, rng.uniform(0, 1, (n, 1))], 1).astype(np.float32)


def _torchscript_proto(net: torch.nn.Module, x: torch.Tensor, opset: int) -> object:
    import onnx

    buf = io.BytesIO()
    torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=opset, input_names=["range"],
                      output_names=["logits"])
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from terraseg.inference import range_onnx
    from terraseg.inference.onnx_export import export_onnx
    from terraseg.inference.range_onnx import export_range_onnx
    from terraseg.io.images import write_image
    from terraseg.models.image import build_image_model
    from terraseg.models.points import build_point_model
    from terraseg.ontology import get_ontology

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    img = build_image_model("litefpn", "tu-mobilenetv3_small_100", ontology="sim", channels=16)
    export_onnx(img, root / "img.onnx", SIZE, exporter="torchscript")
    salsa = build_point_model("salsanext", 20, preset="tiny")
    salsa.ontology = get_ontology("sim")  # type: ignore[assignment]
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the TorchScript exporter: about 1 s instead of 10-20 s for torch.export on a busy 2-core machine
        mp.setattr(range_onnx, "_export_proto", _torchscript_proto)
        export_range_onnx(salsa, root / "salsa.onnx", (32, 512), projection="sim-small")
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(root / "images" / f"{i:03d}.png", rng.integers(0, 255, (*SIZE, 3), dtype=np.uint8))
        write_bin(root / "scans" / f"{i:03d}.bin", _scan(i))
    return {"root": root, "img": root / "img.onnx", "salsa": root / "salsa.onnx"}


def test_onnx_backends_match_the_onnx_predictors(models: dict[str, Path]) -> None:
    from terraseg.inference.onnx_export import OrtImagePredictor
    from terraseg.inference.range_onnx import OrtRangePredictor

    assert model_kind(models["img"]) == "camera" and model_kind(models["salsa"]) == "lidar"
    cam = load_backend(models["img"], device="cpu", threads=1)
    lidar = load_backend(models["salsa"], device="cpu", threads=1, scores=True)
    assert (cam.kind, cam.name, lidar.kind, lidar.name) == ("camera", "onnxruntime:CPU", "lidar", "onnxruntime:CPU")
    ref_cam, ref_lidar = OrtImagePredictor(models["img"], threads=1), OrtRangePredictor(models["salsa"], threads=1)
    with ImageSequenceSource(models["root"] / "images") as src:
        for m in src:
            p = cam.predict(m)
            np.testing.assert_array_equal(p.labels, ref_cam.predict(m.image))
            assert p.labels.shape == SIZE and p.labels.dtype == np.uint8
    with ScanFolderSource(models["root"] / "scans") as src:
        for m in src:
            p = lidar.predict(m)
            ref = ref_lidar(m.points)
            np.testing.assert_array_equal(p.labels, ref.labels)
            np.testing.assert_allclose(p.scores, ref.probabilities.max(1), rtol=1e-6)
            assert p.labels.dtype == np.uint8 and set(p.timings_ms) == {"preprocess", "infer", "postprocess"}
    with pytest.raises(ConfigError, match="a LiDAR model \\(salsanext\\) given as the camera model"):
        load_backend(models["salsa"], "camera")
    with pytest.raises(ConfigError, match="a camera model \\(litefpn\\) given as the LiDAR model"):
        load_backend(models["img"], "lidar")


def test_fused_graph_gives_the_argmax_and_softmax_confidence_of_the_plain_graph(models: dict[str, Path]) -> None:
    import onnx

    from terraseg.inference.onnx_export import OrtImagePredictor
    from terraseg.inference.onnx_fuse import fuse_outputs, fused_session, make_session

    plain = OrtImagePredictor(models["img"], threads=1)
    mean, std = plain.norm.mean, plain.norm.std
    sess = fused_session(models["img"], uint8_input=(mean, std), confidence=True, num_classes=plain.num_classes,
                         threads=1)
    assert [i.name for i in sess.get_inputs()] == ["image_u8"]
    assert [(o.name, o.type) for o in sess.get_outputs()] == [("labels", "tensor(uint8)"),
                                                              ("confidence", "tensor(float)")]
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    img[:8] = 0  # flat regions as well as noise
    labels, conf = sess.run(None, {"image_u8": img[None]})
    x = ((img / 255.0 - np.array(mean)) / np.array(std)).astype(np.float32).transpose(2, 0, 1)[None]
    logits = plain.session.run(None, {"image": x})[0]
    np.testing.assert_array_equal(labels, logits.argmax(1).astype(np.uint8))
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(conf, (e / e.sum(1, keepdims=True)).max(1), rtol=1e-4, atol=1e-6)
    # the range graph: float input kept, int argmax output; the file itself is unchanged
    proto = onnx.load(str(models["salsa"]))
    fused = fuse_outputs(proto)
    assert [o.name for o in proto.graph.output] == ["logits"]
    x = rng.standard_normal((1, 5, 32, 512)).astype(np.float32)
    ref = make_session(proto.SerializeToString()).run(None, {"range": x})[0]
    got = make_session(fused.SerializeToString()).run(None, {"range": x})[0]
    np.testing.assert_array_equal(got, ref.argmax(1))
    # a graph whose output is not (N, K, H, W) logits is refused with its name
    bad = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])]))
    with pytest.raises(DataError, match="bad.onnx: the first output 'y' is not"):
        fuse_outputs(bad, where="bad.onnx")


def test_runtime_fused_paths_match_the_unfused_ones(models: dict[str, Path]) -> None:
    from terraseg.inference.onnx_export import OrtImagePredictor
    from terraseg.inference.range_onnx import OrtRangePredictor
    from terraseg.inference.runtime import ImageBackend

    fused = ImageBackend(OrtImagePredictor(models["img"], threads=1), scores=True)
    plain = ImageBackend(OrtImagePredictor(models["img"], threads=1), scores=True, fuse=False)
    with ImageSequenceSource(models["root"] / "images") as src:
        for m in src:
            a, b = fused.predict(m), plain.predict(m)
            assert fused._fused is not None and plain._fused is None
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_allclose(a.scores, b.scores, rtol=1e-4, atol=1e-6)
            assert a.labels.dtype == np.uint8 and a.scores.dtype == np.float32
    # another size than the fixed export size: the resize path, not the fused graph
    odd = ImageBackend(OrtImagePredictor(models["img"], threads=1))
    with ImageSequenceSource(models["root"] / "images") as src:
        m = next(iter(src))
    m.image = np.ascontiguousarray(np.repeat(m.image, 2, axis=1))
    assert odd.predict(m).labels.shape == (SIZE[0], 2 * SIZE[1]) and odd._fused is None

    labels_only = OrtRangePredictor(models["salsa"], threads=1, probabilities=False)
    full = OrtRangePredictor(models["salsa"], threads=1)
    for i in range(3):
        pts = _scan(10 + i, 6000)  # more points than pixels: shared pixels are voted on
        a, b = labels_only(pts), full(pts)
        assert a.probabilities is None and b.probabilities is not None
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.source, b.source)
        assert (b.source == 2).any()  # SOURCE_VOTE happened
    lidar = load_backend(models["salsa"], device="cpu", threads=1)
    assert lidar.predict_fn.probabilities is False
    # the runtime's sessions do not spin-wait (they share the cores with the reader and writer)
    assert lidar.predict_fn.network._spin is False and load_backend(models["img"], threads=1).predictor.spin is False
    assert load_backend(models["img"], threads=1, spin=True).predictor.spin is True
    with pytest.raises(ValueError, match="labels-only"):
        _ = a.num_classes


def test_cli_run_with_onnx_models(models: dict[str, Path], tmp_path: Path) -> None:
    from terraseg.inference.range_onnx import OrtRangePredictor

    files = tmp_path / "files"
    r = runner.invoke(app, ["run", "--lidar-model", str(models["salsa"]), "--source", str(models["root"] / "scans"),
                            "--realtime", "--rate", "50", "--drop-policy", "block", "--out-dir", str(files),
                            "--threads", "1", "-q"])
    assert r.exit_code == 0, r.output
    assert "completed: 3 message(s) in, 3 predicted, 0 dropped" in r.output
    ref = OrtRangePredictor(models["salsa"], threads=1)
    for i in range(3):
        labels = read_label(files / "scans" / "labels" / f"{i:03d}.label")[0]
        np.testing.assert_array_equal(labels, ref(read_bin(models["root"] / "scans" / f"{i:03d}.bin")).labels)
    doc = json.loads((files / "runtime_stats.json").read_text())
    assert doc["streams"]["scans"]["stream"] == "lidar" and doc["settings"]["backends"]["lidar"]["name"] == "onnxruntime:CPU"

    bag = tmp_path / "img_bag"
    r = runner.invoke(app, ["run", "--camera-model", str(models["img"]), "--source", str(models["root"] / "images"),
                            "--no-realtime", "--out-bag", str(bag), "--threads", "1", "-q"])
    assert r.exit_code == 0, r.output
    with open_bag(bag) as b:
        assert set(b.topics) == {"/segmentation/ids/images", "/segmentation/rgb/images"}
        ids = [decode_image(m.msg) for m in b.messages("/segmentation/ids/images")]
    assert len(ids) == 3 and all(a.shape == SIZE and a.dtype == np.uint8 for a in ids)
    assert json.loads((tmp_path / "img_bag_stats.json").read_text())["totals"]["predicted"] == 3
