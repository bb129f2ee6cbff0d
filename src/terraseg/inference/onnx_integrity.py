"""Checksums of an ONNX file's weights: recorded at export, verified when a session is opened.

An ONNX file's weights (the graph's initializers and ``Constant`` tensors) are raw bytes: a
block of garbage in the middle of the file still parses, and ONNX Runtime runs it, predicting
nonsense. terraseg's exporters (:func:`~terraseg.inference.onnx_export.export_onnx`,
:func:`~terraseg.inference.range_onnx.export_range_onnx`) therefore store a SHA-256 of those
tensors in the metadata property :data:`DIGEST_KEY`; :func:`verify_onnx` (called by
:func:`~terraseg.inference.onnx_fuse.make_session` and
:func:`~terraseg.inference.onnx_fuse.fused_session` on every file they open) recomputes it and
refuses NaN or infinite weights. Files without the property (exported before it was recorded,
or by other tools) are checked for finite weights only, with a log note.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from terraseg.errors import DataError
from terraseg.models.integrity import CORRUPT_HINT, DIGEST_SCHEME, array_digest, check_finite

log = logging.getLogger(__name__)

#: Metadata property holding ``"<scheme>:<sha256 hex>"`` of the weights.
DIGEST_KEY = "terraseg.weights_sha256"


def _weights(proto: Any) -> Iterator[tuple[str, Any]]:
    """``(name, numpy array)`` of the main graph's initializers and ``Constant`` tensors, names sorted."""
    from onnx import numpy_helper

    graph = proto.graph
    tensors = {f"initializer:{t.name}": t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    tensors[f"constant:{node.output[0] if node.output else node.name}"] = attr.t
    for name in sorted(tensors):
        yield name, numpy_helper.to_array(tensors[name])


def _digest(weights: list[tuple[str, Any]]) -> str:
    import numpy as np

    def items() -> Iterator[tuple[str, str, tuple[int, ...], memoryview]]:
        for name, a in weights:
            a = np.ascontiguousarray(a)
            yield name, str(a.dtype), tuple(a.shape), memoryview(a.reshape(-1).view(np.uint8))

    return f"{DIGEST_SCHEME}:{array_digest(items())}"


def onnx_weights_digest(proto: Any) -> str:
    """``"<scheme>:<sha256 hex>"`` over the name, dtype, shape and bytes of every weight tensor of ``proto``."""
    return _digest(list(_weights(proto)))


def record_digest(proto: Any) -> str:
    """Store :func:`onnx_weights_digest` in ``proto``'s metadata (replacing an older one); returns it."""
    digest = onnx_weights_digest(proto)
    keep = [p for p in proto.metadata_props if p.key != DIGEST_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    proto.metadata_props.add(key=DIGEST_KEY, value=digest)
    return digest


def load_proto(path: str | os.PathLike[str], *, load_external_data: bool = True) -> Any:
    """``onnx.load`` of a file with one clear error for a missing or unreadable one.

    Raises:
        DataError: the file is missing or not an ONNX model.
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: ONNX file not found")
    try:
        return onnx.load(str(p), load_external_data=load_external_data)
    except Exception as exc:  # protobuf decode errors of several types
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(f"{p}: not a readable ONNX model ({type(exc).__name__}: {first}); not an ONNX file, or a "
                        "damaged one (an interrupted copy or a disk error)") from None


def verify_onnx(model: Any, where: str | None = None) -> Any:
    """Check an ONNX model's weights against the digest recorded at export, and that they are finite.

    Args:
        model: a file path or a loaded ``onnx.ModelProto``.
        where: name used in messages (default: the path).

    Returns:
        The loaded ``onnx.ModelProto``.

    Raises:
        DataError: unreadable file, digest mismatch or non-finite weights, naming the file.
    """
    if isinstance(model, (str, os.PathLike)):
        where = where or str(model)
        proto = load_proto(model)
    else:
        proto = model
        where = where or "ONNX model"
    props = {p.key: p.value for p in proto.metadata_props}
    recorded = props.get(DIGEST_KEY)
    weights = list(_weights(proto))
    if recorded is None:
        log.info("%s: no weights checksum recorded (exported before terraseg recorded them, or by another tool); "
                 "checked that the weights are finite", where)
    else:
        scheme, _, _ = recorded.partition(":")
        if scheme != str(DIGEST_SCHEME):
            log.warning("%s: weights checksum scheme %s is not %s (a newer terraseg?); not checked", where, scheme,
                        DIGEST_SCHEME)
        elif _digest(weights) != recorded:
            raise DataError(f"{where}: the weights do not match the checksum recorded at export; {CORRUPT_HINT}")
    check_finite(dict(weights), where)
    return proto


__all__ = ["DIGEST_KEY", "load_proto", "onnx_weights_digest", "record_digest", "verify_onnx"]
