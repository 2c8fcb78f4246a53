"""The ONNX graph contract of tdexport exports, enforced on whatever an exporter produced.

One float input ``input`` (N, C, H, W) and one float output ``logits``, the batch dimension named ``batch``
(or fixed), the requested default-domain opset, standard-domain nodes only, no local functions, and a model
that `onnx.checker.check_model(full_check=True)` accepts. Also: optional onnxslim simplification, and a
structural comparison that lets a simplified graph reuse an earlier parity result.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import onnx

from ..errors import first_line

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "BATCH_DIM", "normalise", "opset_of", "same_computation", "simplify"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
_STANDARD_DOMAINS = ("", "ai.onnx")
# Protobuf cannot serialize a message of 2 GiB or more; such models would need external data files.
PROTOBUF_LIMIT = (1 << 31) - 1


def proto_too_large(proto: onnx.ModelProto) -> bool:
    """True when ``proto`` cannot be serialized as one protobuf message (2 GiB or more).

    ``ByteSize`` itself fails on such a message with protobuf's upb backend, so its failure counts as too large.
    """
    try:
        return proto.ByteSize() > PROTOBUF_LIMIT
    except Exception:  # google.protobuf.message.EncodeError; its module path differs between backends
        return True


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    out: list[int | str | None] = []
    for d in value.type.tensor_type.shape.dim:
        kind = d.WhichOneof("value")
        out.append(d.dim_value if kind == "dim_value" else d.dim_param if kind == "dim_param" else None)
    return out


def opset_of(proto: onnx.ModelProto) -> int | None:
    """The default-domain opset version of ``proto``, or None when it imports none."""
    return next((o.version for o in proto.opset_import if o.domain in _STANDARD_DOMAINS), None)


def normalise(proto: onnx.ModelProto, input_shape: Sequence[int], opset: int,
               batch: int | None) -> tuple[list[str], bytes]:
    """Enforce the I/O contract in place; returns what is still wrong (empty: acceptable) and the serialized model.

    Contract: one float input ``input`` (N, *input_shape) and one float output ``logits`` whose N is the
    symbol ``batch`` (or the fixed ``batch``), default-domain opset ``opset``, standard-domain nodes only,
    no local functions, and `onnx.checker.check_model(full_check=True)` passes. The checker reads the same
    bytes that are run and written, so a large model is serialized once.
    """
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        return [f"graph has {len(graph.input)} inputs and {len(graph.output)} outputs; need one of each"], b""
    _rename(graph, graph.input[0].name, INPUT_NAME)
    _rename(graph, graph.output[0].name, OUTPUT_NAME)
    problems = []
    for value in (graph.input[0], graph.output[0]):
        dims = _dims(value)
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            problems.append(f"'{value.name}' is not float32")
        if not dims:
            problems.append(f"'{value.name}' has no shape")
            continue
        if batch is None:
            if isinstance(dims[0], int):
                problems.append(f"batch dimension of '{value.name}' is fixed at {dims[0]}, expected dynamic")
            else:
                value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
        elif dims[0] != batch:
            problems.append(f"batch dimension of '{value.name}' is {dims[0]}, expected {batch}")
    if _dims(graph.input[0])[1:] != list(input_shape):
        problems.append(f"input shape {_dims(graph.input[0])} does not end in {list(input_shape)}")
    if opset_of(proto) != opset:
        problems.append(f"opset is {opset_of(proto)}, requested {opset}")
    odd = sorted({f"{n.domain}::{n.op_type}" for n in graph.node if n.domain not in _STANDARD_DOMAINS})
    if odd or proto.functions:
        problems.append(f"non-standard ops or local functions: {odd or [f.name for f in proto.functions]}")
    # Node metadata holds stack traces with this checkout's paths; without it the bytes depend on the model only.
    for node in graph.node:
        del node.metadata_props[:]
    # Opsets of domains no node uses would only make runtimes look for them.
    used = {n.domain for n in graph.node} | set(_STANDARD_DOMAINS)
    kept = [o for o in proto.opset_import if o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    if proto_too_large(proto):
        problems.append("model exceeds the 2 GB protobuf limit of a single-file ONNX model")
    if problems:
        return problems, b""
    data = proto.SerializeToString()
    try:
        onnx.checker.check_model(data, full_check=True)
    except Exception as err:  # checker raises ValidationError, shape inference InferenceError
        return [f"onnx.checker (full_check) failed: {first_line(err)}"], b""
    return [], data


def same_computation(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """True when two graphs have the same nodes (ignoring node metadata) and the same initializers."""
    if len(a.graph.node) != len(b.graph.node) or len(a.graph.initializer) != len(b.graph.initializer):
        return False
    for x, y in zip(a.graph.node, b.graph.node, strict=True):
        if (x.op_type, x.domain, list(x.input), list(x.output), list(x.attribute)) != (
                y.op_type, y.domain, list(y.input), list(y.output), list(y.attribute)):
            return False
    return {t.name: t for t in a.graph.initializer} == {t.name: t for t in b.graph.initializer}


def simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The onnxslim simplification of a copy of ``proto`` (the caller re-checks it and its parity)."""
    import onnxslim

    # onnxslim edits the proto it is given (it strips initializers from inputs), so hand it a copy.
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    with contextlib.redirect_stdout(io.StringIO()):
        slim = onnxslim.slim(work)
    if not isinstance(slim, onnx.ModelProto):
        raise RuntimeError("onnxslim returned no model")
    return slim
