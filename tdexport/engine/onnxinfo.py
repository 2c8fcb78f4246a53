"""What an engine build needs to know about the ONNX model, read with the onnx package before TensorRT runs.

The input tensor, its batch dimension (dynamic or fixed), the precision the graph itself asks for, and the
optimization profile that follows from both and the caller's batch sizes. Everything here raises
`UsageError` (exit 2) on bad input, so the CLI refuses it before touching TensorRT.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = ["DEFAULT_PROFILE", "INPUT_NAME", "OnnxInfo", "inspect_onnx", "onnx_precision", "profile_shapes",
           "resolve_profile"]

INPUT_NAME = "input"
DEFAULT_PROFILE = (1, 8, 32)  # (min, opt, max) batch of a dynamic-batch model when the caller gives none


@dataclass(frozen=True)
class OnnxInfo:
    """The facts about an ONNX model that decide how its engine is built.

    Attributes:
        path: the .onnx file.
        input_shape: shape of the input ``input`` (N, C, H, W, ...): N is None when the batch is dynamic.
        precision: ``fp32``, ``fp16`` (float16 tensors or a Cast to float16) or ``int8`` (QuantizeLinear
            nodes); a strongly typed TensorRT network runs exactly these types.
    """

    path: Path
    input_shape: tuple[int | None, ...]
    precision: str

    @property
    def static_batch(self) -> int | None:
        """The fixed batch size of the input, or None when it is dynamic."""
        return self.input_shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The input shape without the batch dimension, e.g. (C, H, W)."""
        return tuple(int(d) for d in self.input_shape[1:])  # type: ignore[arg-type]


def _graphs(graph: Any) -> Iterator[Any]:
    """``graph`` and every subgraph nested in its nodes' attributes (If / Loop / Scan bodies)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def onnx_precision(model: Any) -> str:
    """``int8``, ``fp16`` or ``fp32``: the lowest precision an ``onnx.ModelProto`` asks for explicitly.

    int8 when a QuantizeLinear node exists; fp16 when a graph input, output, value_info, initializer or
    Constant is float16, or a Cast converts to float16; fp32 otherwise.
    """
    from onnx import TensorProto

    half = TensorProto.FLOAT16
    fp16 = False
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.op_type == "QuantizeLinear":
                return "int8"
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == half:
                    fp16 = True
                if attr.HasField("t") and attr.t.data_type == half:
                    fp16 = True
        values = [*graph.input, *graph.output, *graph.value_info]
        if any(v.type.tensor_type.elem_type == half for v in values if v.type.HasField("tensor_type")):
            fp16 = True
        if any(t.data_type == half for t in graph.initializer):
            fp16 = True
    return "fp16" if fp16 else "fp32"


def inspect_onnx(path: str | Path) -> OnnxInfo:
    """Read the input shape and precision of an ONNX model (weights stored outside the file are not read).

    Args:
        path: the .onnx file; it must have exactly one input, named ``input``, whose dimensions are all fixed
            except possibly the first (batch).

    Raises:
        UsageError: the file is missing, is not an ONNX model, or its input is not as described.
    """
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and onnx's own errors share no base class
        raise UsageError(f"{path} is not a readable ONNX model: {err}") from err
    weights = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in weights]  # old IR versions list weights as inputs
    if [v.name for v in inputs] != [INPUT_NAME]:
        raise UsageError(f"{path}: expected one input named '{INPUT_NAME}', got {[v.name for v in inputs]}")
    tensor_type = inputs[0].type.tensor_type
    if not tensor_type.HasField("shape") or len(tensor_type.shape.dim) < 2:
        raise UsageError(f"{path}: input '{INPUT_NAME}' needs a known shape (N, C, ...)")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]
    if any(d is None for d in dims[1:]):
        shown = tuple(d if d is not None else "?" for d in dims)
        raise UsageError(f"{path}: only the batch dimension of '{INPUT_NAME}' may be dynamic, its shape is {shown}")
    return OnnxInfo(path=path, input_shape=tuple(dims), precision=onnx_precision(model))


def resolve_profile(info: OnnxInfo, min_batch: int | None = None, opt_batch: int | None = None,
                    max_batch: int | None = None) -> tuple[int, int, int]:
    """The (min, opt, max) batch sizes of the engine's optimization profile.

    A model with a fixed batch N gets (N, N, N); a dynamic one gets the given sizes, the missing ones
    filled from `DEFAULT_PROFILE` (min 1, max 32 or min, opt 8 clamped into [min, max]).

    Raises:
        UsageError: a size below 1, sizes not ordered 1 ≤ min ≤ opt ≤ max, or sizes that differ from a
            fixed batch.
    """
    given = {"min": min_batch, "opt": opt_batch, "max": max_batch}
    for key, value in given.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{key} batch must be a positive integer, got {value!r}")
    fixed = info.static_batch
    if fixed is not None:
        wrong = {k: v for k, v in given.items() if v is not None and v != fixed}
        if wrong:
            raise UsageError(f"{info.path} has a fixed batch of {fixed}, so its profile is min = opt = max = {fixed}; "
                             f"got {', '.join(f'{k}={v}' for k, v in wrong.items())} (omit the batch sizes or "
                             f"export the model with a dynamic batch)")
        return fixed, fixed, fixed
    low = min_batch if min_batch is not None else DEFAULT_PROFILE[0]
    high = max_batch if max_batch is not None else max(DEFAULT_PROFILE[2], low)
    opt = opt_batch if opt_batch is not None else min(max(DEFAULT_PROFILE[1], low), high)
    if not 1 <= low <= opt <= high:
        raise UsageError(f"batch profile needs 1 ≤ min ≤ opt ≤ max, got min={low} opt={opt} max={high}")
    return low, opt, high


def profile_shapes(info: OnnxInfo, profile: tuple[int, int, int]) -> dict[str, dict[str, list[int]]]:
    """``{"input": {"min": [N, C, H, W], "opt": [...], "max": [...]}}``: full input shapes of a batch profile."""
    sample = list(info.sample_shape)
    return {INPUT_NAME: {key: [batch, *sample] for key, batch in zip(("min", "opt", "max"), profile, strict=True)}}
