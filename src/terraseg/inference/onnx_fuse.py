"""Fold pre- and post-processing into an exported ONNX graph, for the real-time runtime.

terraseg's exported files (:mod:`terraseg.inference.onnx_export`,
:mod:`terraseg.inference.range_onnx`) take a normalised float32 NCHW tensor and return float32
logits, so they serve every use (TTA, windows, ensembles of probabilities). For one frame at a
time and class ids only, the work around the network costs as much as a small network on a
2-core CPU: converting and normalising the image in PyTorch (about 12 ms at 640x480) and the
argmax over (K, H, W) logits (about 12 ms with PyTorch, more with numpy). ONNX Runtime does both
inside the graph in a few milliseconds, multi-threaded, without copying the logits out.

:func:`fuse_outputs` rewrites a loaded ``onnx.ModelProto`` (the file is not changed):

- ``uint8_input=(mean, std)``: a new input ``image_u8``, ``(N, H, W, 3)`` uint8 RGB, cast,
  transposed to NCHW and normalised as ``(pixel / 255 - mean) / std`` inside the graph;
- the outputs are replaced by ``labels``, ``(N, H, W)`` uint8 (int32 for more than 256
  classes), the argmax over the class axis computed on a channels-last transpose (about 3x
  faster in ONNX Runtime than an argmax over axis 1), and, with ``confidence=True``,
  ``confidence``, ``(N, H, W)`` float32, the softmax probability of that class.

The ids equal ``logits.argmax(axis=1)`` exactly (ties resolve to the lowest id in both).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from terraseg.errors import ConfigError, DataError

UINT8_INPUT = "image_u8"
LABELS_OUTPUT = "labels"
CONFIDENCE_OUTPUT = "confidence"


def fuse_outputs(proto: Any, *, uint8_input: tuple[Sequence[float], Sequence[float]] | None = None,
                 confidence: bool = False, num_classes: int | None = None, where: str = "ONNX model") -> Any:
    """A copy of ``proto`` with in-graph normalisation (optional) and argmax outputs.

    Args:
        proto: an ``onnx.ModelProto`` with one (N, C, H, W) float input and the (N, K, H, W)
            logits as its first output.
        uint8_input: ``(mean, std)`` in [0, 1] units, one value per channel: take ``(N, H, W, C)``
            uint8 images instead of the normalised float input.
        confidence: also output the softmax probability of the predicted class.
        num_classes: the number of classes K, when the graph's output shape does not say it
            (decides between uint8 and int32 ids).
        where: name used in error messages.

    Returns:
        The rewritten ``onnx.ModelProto``.

    Raises:
        DataError: the graph does not have the expected input / output.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) < 1:
        raise DataError(f"{where}: expected one image input and a logits output, got inputs "
                        f"{[i.name for i in inputs]} and outputs {[o.name for o in graph.output]}")
    logits = graph.output[0]
    dims = logits.type.tensor_type.shape.dim
    if len(dims) != 4:
        raise DataError(f"{where}: the first output {logits.name!r} is not (N, K, H, W) logits")
    if num_classes is None:
        num_classes = dims[1].dim_value if dims[1].HasField("dim_value") else 0
    label_type = TensorProto.UINT8 if 0 < num_classes <= 256 else TensorProto.INT32

    names = {n for node in graph.node for n in (*node.input, *node.output)} | initializers

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.add(name)
        return name

    def shape_of(info: Any) -> list[Any]:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in info.type.tensor_type.shape.dim]

    pre_nodes = []
    if uint8_input is not None:
        mean, std = (np.asarray(v, np.float32) for v in uint8_input)
        old = inputs[0]
        n, c, h, w = shape_of(old)
        if mean.shape != std.shape or mean.ndim != 1 or (isinstance(c, int) and c and len(mean) != c):
            raise DataError(f"{where}: need one mean and std per input channel ({c}), got {mean.shape} / {std.shape}")
        scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(1, -1, 1, 1)
        shift = (255.0 * mean).astype(np.float32).reshape(1, -1, 1, 1)
        shift_name, scale_name = fresh("terraseg_mean255"), fresh("terraseg_inv_std255")
        graph.initializer.extend([numpy_helper.from_array(shift, shift_name),
                                  numpy_helper.from_array(scale, scale_name)])
        cast, nchw, centred = fresh("terraseg_float"), fresh("terraseg_nchw"), fresh("terraseg_centred")
        new_input = helper.make_tensor_value_info(UINT8_INPUT, TensorProto.UINT8, [n, h, w, c])
        pre_nodes = [
            helper.make_node("Cast", [UINT8_INPUT], [cast], to=TensorProto.FLOAT),
            helper.make_node("Transpose", [cast], [nchw], perm=[0, 3, 1, 2]),
            helper.make_node("Sub", [nchw, shift_name], [centred]),
            helper.make_node("Mul", [centred, scale_name], [old.name]),
        ]
        graph.input.remove(old)
        graph.input.insert(0, new_input)

    n, _, h, w = shape_of(logits)
    nhwc, idx = fresh("terraseg_logits_nhwc"), fresh("terraseg_argmax")
    post_nodes = [
        helper.make_node("Transpose", [logits.name], [nhwc], perm=[0, 2, 3, 1]),
        helper.make_node("ArgMax", [nhwc], [idx], axis=3, keepdims=0),
        helper.make_node("Cast", [idx], [LABELS_OUTPUT], to=label_type),
    ]
    outputs = [helper.make_tensor_value_info(LABELS_OUTPUT, label_type, [n, h, w])]
    if confidence:
        prob = fresh("terraseg_softmax")
        post_nodes.append(helper.make_node("Softmax", [nhwc], [prob], axis=3))
        if _opset(model) >= 18:  # ReduceMax takes its axes as an input from opset 18 on
            axes = fresh("terraseg_axes")
            graph.initializer.append(numpy_helper.from_array(np.array([3], np.int64), axes))
            post_nodes.append(helper.make_node("ReduceMax", [prob, axes], [CONFIDENCE_OUTPUT], keepdims=0))
        else:
            post_nodes.append(helper.make_node("ReduceMax", [prob], [CONFIDENCE_OUTPUT], axes=[3], keepdims=0))
        outputs.append(helper.make_tensor_value_info(CONFIDENCE_OUTPUT, TensorProto.FLOAT, [n, h, w]))

    nodes = [*pre_nodes, *graph.node, *post_nodes]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.output[:]
    graph.output.extend(outputs)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise DataError(f"{where}: cannot add the in-graph pre/post-processing ({exc})") from None
    return model


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def make_session(model: bytes | str | os.PathLike[str], threads: int | None = None,
                 providers: Sequence[str] | None = None, spin: bool = True, verify: bool = True) -> Any:
    """An ONNX Runtime session (quiet logging) on a file or serialised model.

    A file's weights are first checked against the checksum recorded at export and for NaN /
    infinite values (:func:`~terraseg.inference.onnx_integrity.verify_onnx`).

    Args:
        threads: intra-op threads (None: ONNX Runtime's choice, all cores).
        providers: execution providers in order of preference (default: CPU).
        spin: let idle intra-op threads spin-wait for work (ONNX Runtime's default). False
            when other threads share the cores (the runtime's reader and writer): spinning
            threads steal their time; on 2 cores it took the LiDAR p95 from 132 to 87 ms.
        verify: check a file's weights (serialised models given as bytes are not checked).

    Raises:
        ConfigError: ``threads`` is not a positive integer.
        DataError: the file is unreadable or its weights are damaged.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        if int(threads) != threads or threads < 1:
            raise ConfigError(f"threads must be a positive integer or None, got {threads}")
        opts.intra_op_num_threads = int(threads)
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if verify and not isinstance(model, bytes):
        from terraseg.inference.onnx_integrity import verify_onnx

        verify_onnx(model)
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=opts, providers=list(providers or ["CPUExecutionProvider"]))


def fused_session(path: str | os.PathLike[str], *, uint8_input: tuple[Sequence[float], Sequence[float]] | None = None,
                  confidence: bool = False, num_classes: int | None = None, threads: int | None = None,
                  providers: Sequence[str] | None = None, spin: bool = True) -> Any:
    """An ONNX Runtime session on the fused graph of the file ``path`` (see :func:`fuse_outputs`).

    Raises:
        DataError: the file is unreadable, its weights are damaged (see
            :func:`~terraseg.inference.onnx_integrity.verify_onnx`) or its graph cannot be fused.
    """
    from terraseg.inference.onnx_integrity import verify_onnx

    proto = verify_onnx(path)
    fused = fuse_outputs(proto, uint8_input=uint8_input, confidence=confidence, num_classes=num_classes,
                         where=str(path))
    try:
        return make_session(fused.SerializeToString(), threads, providers, spin)
    except ConfigError:
        raise
    except Exception as exc:  # ORT raises its own exception types
        raise DataError(f"{path}: ONNX Runtime cannot load the fused model ({exc})") from exc
