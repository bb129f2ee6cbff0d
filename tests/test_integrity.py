"""Integrity of stored weights: the checksum save_checkpoint records and read_checkpoint verifies, the
zip CRCs of torch.save files, non-finite weights, and the weights checksum of exported ONNX files."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from terraseg.errors import DataError
from terraseg.models.integrity import verify_zip_crcs, weights_digest
from terraseg.models.surgery import read_checkpoint, save_checkpoint


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


class Tiny(nn.Module):
    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, k, 1)
        self.num_classes = k
        self.spec = {"arch": "tiny"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))))


def _garbage_in_the_middle(path: Path, n: int = 512, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------- .pth
def test_digest_depends_on_values_names_and_dtypes_not_on_layout() -> None:
    sd = Tiny().state_dict()
    d = weights_digest(sd)
    assert len(d) == 64 and weights_digest(dict(reversed(list(sd.items())))) == d
    w = sd["conv.weight"]
    assert weights_digest({**sd, "conv.weight": w.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)}) == d
    changed = w.clone()
    changed.view(-1)[7] += 1e-6
    assert weights_digest({**sd, "conv.weight": changed}) != d
    assert weights_digest({**sd, "conv.weight": w.double()}) != d
    assert weights_digest({("x" + k): v for k, v in sd.items()}) != d
    assert weights_digest({"s": torch.tensor(3.0), "e": torch.zeros(0)}) == weights_digest(
        {"e": torch.zeros(0), "s": torch.tensor(3.0)})


def test_checksum_is_recorded_and_verified(tmp_path: Path) -> None:
    p = save_checkpoint(tmp_path / "m.pth", Tiny())
    obj = torch.load(p, weights_only=True)
    assert obj["checksum"]["algorithm"] == "sha256" and obj["checksum"]["tensors"] == len(obj["state_dict"])
    assert read_checkpoint(p).kind == "terraseg"
    # a weight changed after saving, in a file whose zip CRCs are consistent (re-saved by torch.save)
    obj["state_dict"]["head.weight"][0, 0, 0, 0] += 0.5
    torch.save(obj, tmp_path / "edited.pth")
    with pytest.raises(DataError, match=r"edited\.pth: the weights do not match the checksum recorded when the "
                                        r"file was saved; the file is damaged"):
        read_checkpoint(tmp_path / "edited.pth")
    with pytest.raises(DataError, match="<state dict>: the weights do not match"):
        read_checkpoint(obj)


def test_garbage_in_the_middle_fails_the_zip_crc(tmp_path: Path) -> None:
    import zipfile

    p = save_checkpoint(tmp_path / "m.pth", Tiny())
    assert verify_zip_crcs(p) is True
    with zipfile.ZipFile(p) as zf:  # garbage inside the bytes of the largest tensor record
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(p.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + 128  # past the local header and its padding
    data[start:start + 16] = bytes(range(16))
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"m\.pth: record 'data/\d+' fails its CRC-32 check; the file is damaged"):
        read_checkpoint(p)
    q = save_checkpoint(tmp_path / "t.pth", Tiny())
    q.write_bytes(q.read_bytes()[: q.stat().st_size // 2])
    with pytest.raises(DataError, match=r"t\.pth: truncated"):
        read_checkpoint(q)
    legacy = tmp_path / "legacy.pth"
    torch.save(Tiny().state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert verify_zip_crcs(legacy) is False and len(read_checkpoint(legacy).state_dict) == 9


def test_non_finite_weights_are_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    m = Tiny()
    with torch.no_grad():
        m.head.weight[1, 2] = float("nan")
        m.bn.running_var[3] = float("inf")
    with caplog.at_level(logging.WARNING, logger="terraseg.models.surgery"):
        p = save_checkpoint(tmp_path / "nan.pth", m)
    assert "hold NaN or infinite values" in caplog.text
    with pytest.raises(DataError, match=r"nan\.pth: 2 weight tensor\(s\) hold NaN or infinite values: "
                                        r"bn\.running_var \(1 of 8\), head\.weight \(1 of 32\)"):
        read_checkpoint(p)
    with pytest.raises(DataError, match="<state dict>: 2 weight tensor"):
        read_checkpoint(m.state_dict())
    from safetensors.torch import save_file

    save_file(m.state_dict(), str(tmp_path / "nan.safetensors"))
    with pytest.raises(DataError, match=r"nan\.safetensors: 2 weight tensor"):
        read_checkpoint(tmp_path / "nan.safetensors")


def test_checkpoints_without_a_checksum_still_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = save_checkpoint(tmp_path / "old.pth", Tiny())
    obj = torch.load(p, weights_only=True)
    del obj["checksum"]  # as written before checksums were recorded
    torch.save(obj, p)
    with caplog.at_level(logging.INFO, logger="terraseg.models.surgery"):
        ck = read_checkpoint(p)
    assert ck.kind == "terraseg" and "no weights checksum recorded" in caplog.text


# ---------------------------------------------------------------------------------------------- ONNX
def _tiny_onnx(path: Path, *, record: bool = True, nan: bool = False) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from terraseg.inference.onnx_integrity import record_digest

    w = np.random.default_rng(0).normal(size=(4, 3, 1, 1)).astype(np.float32)
    if nan:
        w[2, 1, 0, 0] = np.nan
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["logits"]),
         helper.make_node("Constant", [], ["unused"], value=numpy_helper.from_array(np.ones(3, np.float32)))],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    if record:
        record_digest(proto)
    onnx.save(proto, str(path))
    return path


def test_onnx_checksum_is_verified_when_a_session_opens(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import onnx

    from terraseg.inference.onnx_fuse import fused_session, make_session
    from terraseg.inference.onnx_integrity import DIGEST_KEY, verify_onnx

    good = _tiny_onnx(tmp_path / "good.onnx")
    assert make_session(good).run(None, {"image": np.ones((1, 3, 8, 8), np.float32)})[0].shape == (1, 4, 8, 8)
    proto = onnx.load(str(good))
    assert dict((p.key, p.value) for p in proto.metadata_props)[DIGEST_KEY].startswith("1:")
    proto.graph.initializer[0].raw_data = proto.graph.initializer[0].raw_data[:-4] + b"\x00\x00\x80\x3f"
    onnx.save(proto, str(tmp_path / "edited.onnx"))
    for opener in (make_session, fused_session):
        with pytest.raises(DataError, match=r"edited\.onnx: the weights do not match the checksum recorded at export"):
            opener(tmp_path / "edited.onnx")
    with pytest.raises(DataError, match=r"nan\.onnx: 1 weight tensor\(s\) hold NaN .*initializer:w \(1 of 12\)"):
        make_session(_tiny_onnx(tmp_path / "nan.onnx", nan=True))
    with caplog.at_level(logging.INFO, logger="terraseg.inference.onnx_integrity"):
        verify_onnx(_tiny_onnx(tmp_path / "plain.onnx", record=False))  # exported elsewhere: finite is enough
    assert "no weights checksum recorded" in caplog.text
    (tmp_path / "garbage.onnx").write_bytes(os.urandom(2048))
    with pytest.raises(DataError, match=r"garbage\.onnx: not a readable ONNX model"):
        make_session(tmp_path / "garbage.onnx")


def test_exported_image_model_records_its_checksum(tmp_path: Path) -> None:
    from terraseg.inference.onnx_export import OrtImagePredictor, export_onnx, read_onnx_metadata
    from terraseg.inference.onnx_integrity import DIGEST_KEY

    rep = export_onnx(Tiny().eval(), tmp_path / "m.onnx", (16, 16), exporter="torchscript")
    import onnx

    props = {p.key: p.value for p in onnx.load(str(rep.path)).metadata_props}
    assert DIGEST_KEY in props and read_onnx_metadata(rep.path).num_classes == 4
    assert OrtImagePredictor(rep.path).num_classes == 4
    _garbage_in_the_middle(rep.path, n=64)
    with pytest.raises(DataError, match=r"m\.onnx: .*(checksum|not a readable ONNX model)"):
        OrtImagePredictor(rep.path)
