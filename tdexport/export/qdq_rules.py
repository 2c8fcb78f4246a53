"""TensorRT's explicit-quantization rules for a Q/DQ ONNX graph (`check_trt_qdq`).

TensorRT fuses a DequantizeLinear into the Conv / Gemm / MatMul that reads it, so every weighted op must read
its data input and its weight through DequantizeLinear; weights per output channel, symmetric (zero point 0);
activations int8 with zero point 0 (TensorRT's quantization is symmetric); scales positive and finite.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

__all__ = ["DEQUANTIZE", "QUANTIZE", "WEIGHTED_OPS", "check_trt_qdq"]

# Weighted ops TensorRT fuses Q/DQ into, with the axis of their weight (input 1) that holds output channels.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
QUANTIZE, DEQUANTIZE = "QuantizeLinear", "DequantizeLinear"
_INT_NAMES = {TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.INT32: "int32",
              TensorProto.INT16: "int16", TensorProto.UINT16: "uint16", TensorProto.INT4: "int4",
              TensorProto.UINT4: "uint4"}  # fmt: skip


class _Graph:
    """Producers, initializers and constant values of a graph, for `check_trt_qdq`."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.init = {t.name: t for t in graph.initializer}
        self.producer = {out: n for n in graph.node for out in n.output}
        self.consts: dict[str, onnx.TensorProto] = dict(self.init)
        for n in graph.node:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                value = next((a.t for a in n.attribute if a.name == "value"), None)
                if value is not None:
                    self.consts[n.output[0]] = value

    def const(self, name: str) -> np.ndarray | None:
        tensor = self.consts.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def dtype(self, name: str) -> int | None:
        tensor = self.consts.get(name)
        return None if tensor is None else tensor.data_type

    def quant_dtype(self, node: onnx.NodeProto) -> int | None:
        """Element type of the integer side of a Q/DQ node (from its zero point, or its input / attribute)."""
        if len(node.input) > 2 and node.input[2]:
            return self.dtype(node.input[2])
        if node.op_type == QUANTIZE:
            attr = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
            return attr or TensorProto.UINT8  # ONNX: no zero point and no output_dtype means uint8
        source = self.producer.get(node.input[0])
        if source is not None and source.op_type == QUANTIZE:
            return self.quant_dtype(source)
        return self.dtype(node.input[0])


def _weight_axis(node: onnx.NodeProto, rank: int) -> int:
    """The axis of ``node``'s weight (input 1) that indexes its output channels."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return rank - 1  # MatMul: (…, K, N)


def _weight_of(g: _Graph, name: str) -> np.ndarray | None:
    """The constant behind a weight input: itself, a DQ of a constant, or a DQ of a Q of a constant; else None."""
    value = g.const(name)
    source = g.producer.get(name)
    while value is None and source is not None and source.op_type in (QUANTIZE, DEQUANTIZE):
        value = g.const(source.input[0])
        source = g.producer.get(source.input[0])
    return value


def _attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} '{node.name or node.output[0]}'"


def _check_qdq_params(g: _Graph, node: onnx.NodeProto, per_channel_len: int | None) -> list[str]:
    """Scale / zero point rules of one Q or DQ node; ``per_channel_len`` set for a weight's Q/DQ.

    A DequantizeLinear of some other constant (a bias, say) has no per-tensor rule, only the type ones.
    """
    problems = []
    constant = node.op_type == DEQUANTIZE and node.input[0] in g.consts
    label = _label(node)
    scale = g.const(node.input[1]) if len(node.input) > 1 else None
    if scale is None:
        return [f"{label}: scale is not a constant"]
    if not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        problems.append(f"{label}: scales must be positive and finite (min {float(np.min(scale)):g})")
    if per_channel_len is None:
        if scale.size != 1 and not constant:
            problems.append(f"{label}: activation scale has {scale.size} values; TensorRT quantizes activations "
                            "per tensor (one scale)")
    elif scale.ndim != 1 or scale.size != per_channel_len:
        problems.append(f"{label}: weight scale has shape {tuple(scale.shape)}, expected per-channel "
                        f"({per_channel_len},) (one per output channel)")
    dtype = g.quant_dtype(node)
    if dtype != TensorProto.INT8:
        name = _INT_NAMES.get(dtype, TensorProto.DataType.Name(dtype) if dtype else "unknown")
        why = " (a quantized bias: TensorRT quantizes biases itself)" if dtype == TensorProto.INT32 else ""
        problems.append(f"{label}: quantized type is {name}{why}; TensorRT needs int8")
    if len(node.input) > 2 and node.input[2]:
        zero = g.const(node.input[2])
        if zero is None:
            problems.append(f"{label}: zero point is not a constant")
        elif np.any(zero != 0):
            problems.append(f"{label}: zero point {np.unique(zero)[:4].tolist()} is not 0; TensorRT quantization "
                            "is symmetric")
    return problems


def check_trt_qdq(model: onnx.ModelProto) -> list[str]:
    """Violations of TensorRT's explicit-quantization rules in a QDQ model; empty when it complies.

    Rules checked:

    - every Conv / ConvTranspose / Gemm, and every MatMul with a constant second input, takes its data input
      (0) and weight (1) from a DequantizeLinear (so TensorRT runs it in int8); a MatMul of two activations
      (attention) is not a weighted op and may stay float;
    - a constant weight's DequantizeLinear is per-channel along the output-channel axis (Conv 0,
      ConvTranspose 1, Gemm 0 or 1 by ``transB``, MatMul last) with one scale per output channel;
    - every QuantizeLinear / DequantizeLinear is int8 with zero point 0 (symmetric; no uint8, no int32
      biases), activations are quantized per tensor, and all scales are constant, positive and finite.

    Args:
        model: the quantized model.

    Returns:
        One message per violation, each naming the node (op type and name), in graph order.
    """
    g = _Graph(model)
    problems: list[str] = []
    weight_dqs: dict[str, int] = {}  # output of a weight's Q or DQ -> expected per-channel length
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "MatMul" and _weight_of(g, node.input[1]) is None:
            continue  # activation x activation (attention): no weight, and quantize_int8 leaves it float
        for index, role in ((0, "data input"), (1, "weight")):
            if len(node.input) <= index:
                continue
            source = g.producer.get(node.input[index])
            if source is None or source.op_type != DEQUANTIZE:
                what = "an initializer" if node.input[index] in g.consts else (
                    "the graph input" if source is None else f"{source.op_type} '{source.name}'")
                problems.append(f"{_label(node)}: {role} '{node.input[index]}' comes from {what}, not a "
                                "DequantizeLinear; TensorRT would run this op in float")
                continue
            if role != "weight":
                continue
            weight = _weight_of(g, node.input[1])
            if weight is None:
                problems.append(f"{_label(node)}: weight '{node.input[1]}' is not a constant; TensorRT quantizes "
                                "weights per channel from constants")
                continue
            q_source = g.producer.get(source.input[0])
            axis = _weight_axis(node, weight.ndim)
            out_channels = weight.shape[axis]
            for qdq in (source, q_source) if q_source is not None and q_source.op_type == QUANTIZE else (source,):
                key = qdq.output[0]
                weight_dqs[key] = out_channels
                dq_axis = _attr_int(qdq, "axis", 1)
                if dq_axis % weight.ndim != axis:
                    problems.append(f"{_label(qdq)}: weight of {_label(node)} quantized along axis {dq_axis}, "
                                    f"expected the output-channel axis {axis}")
    for node in model.graph.node:
        if node.op_type in (QUANTIZE, DEQUANTIZE):
            problems.extend(_check_qdq_params(g, node, weight_dqs.get(node.output[0])))
    return problems
