"""Reduced precision written into the ONNX graph: FP16 casts and INT8 QuantizeLinear/DequantizeLinear.

TensorRT 11 builds strongly typed networks only: it no longer picks FP16 or INT8 kernels from builder flags,
it runs every tensor in the type the graph gives it. So a lower-precision engine starts from an ONNX file
that already says so:

- ``fp16``: weights and activations in float16 (onnxconverter-common's converter), with the numerically
  sensitive ops kept in float32 behind casts (`FP16_KEEP_FP32`), and the float32 ``input`` / ``logits`` of
  the tdexport contract kept, so callers feed and read float32 as before.
- ``int8``: static post-training quantization by ONNX Runtime's quantizer in QDQ form: per-channel symmetric
  int8 weights, activations calibrated on real images. Two placements (`INT8_TARGETS`):

  * ``trt``: TensorRT's explicit-quantization rules (`check_trt_qdq` checks them): int8 activations with
    zero point 0 (TensorRT's quantization is symmetric), Q/DQ only on the inputs of Conv / ConvTranspose /
    Gemm / MatMul (the ops TensorRT fuses them into), never on their outputs, one Q/DQ pair per quantized
    op, and float biases (TensorRT quantizes biases itself and has no int32 DequantizeLinear). A float op
    reading the same tensor as a quantized one (a ResNet block's residual Add reads the block input) reads
    the dequantized values: that is where TensorRT wants a skip connection quantized, so it can fuse the
    Add into the Conv before it.
  * ``cpu``: ONNX Runtime's CPU layout: uint8 asymmetric activations (its faster U8S8 kernels) on every op
    its QDQ fusions cover, int32 biases.

Everything here is ONNX in, ONNX out (no CLI); `convert` adds loading, checks and an atomic write.
Reduced precision is judged by agreement with the float32 logits (`agreement`: top-1 agreement, cosine),
not by float32 element tolerances.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from .._io import atomic_write_bytes
from ..errors import GateFailed, TdexportError, UsageError, first_line
from ..validate.parity import compare_outputs
from .calibration import CalibrationReader, calibration_batches
from .graph import INPUT_NAME, OUTPUT_NAME, PROTOBUF_LIMIT
from .qdq_rules import DEQUANTIZE, QUANTIZE, WEIGHTED_OPS, check_trt_qdq

__all__ = [
    "PRECISIONS",
    "INT8_TARGETS",
    "FP16_KEEP_FP32",
    "PrecisionResult",
    "to_fp16",
    "quantize_int8",
    "calibration_batches",
    "check_trt_qdq",
    "convert",
    "agreement",
    "node_counts",
]

PRECISIONS = ("fp32", "fp16", "int8")
INT8_TARGETS = ("trt", "cpu")

# Ops left in float32 inside an fp16 graph (behind Cast pairs), added to the converter's own list:
# - Softmax / LogSoftmax: exp of fp16 logits overflows above ~11 and the normalising sum loses the small terms.
# - reductions (ReduceMean, ReduceSum, ... and GlobalAveragePool, a mean over H x W): an fp16 accumulator
#   overflows at 65504 and stops growing once the sum dwarfs each term, so large spatial means drift.
# - normalisations (Layer/Group/Instance): their variance is a mean of squares, with both problems above.
# - Resize: its scales / sizes and coordinate arithmetic must stay exact (the converter keeps it too).
FP16_KEEP_FP32: tuple[str, ...] = (
    "Softmax", "LogSoftmax",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
    "ReduceProd", "GlobalAveragePool",
    "LayerNormalization", "GroupNormalization", "InstanceNormalization",
    "Resize",
)  # fmt: skip
_FP16_MAX = 65504.0  # largest finite float16: only weights beyond it are clamped, not the converter's 1e4



@dataclass(frozen=True)
class PrecisionResult:
    """What `convert` wrote.

    Attributes:
        path: the ONNX file written.
        precision: ``fp32``, ``fp16`` or ``int8``.
        int8_target: ``trt`` or ``cpu`` for int8, else None.
        nodes: total node count of the graph.
        quantize_nodes: QuantizeLinear nodes.
        dequantize_nodes: DequantizeLinear nodes.
        cast_nodes: Cast nodes.
        size_bytes: size of the file written, bytes.
        seconds: wall time of load + conversion + checks + write, s.
    """

    path: Path
    precision: str
    int8_target: str | None
    nodes: int
    quantize_nodes: int
    dequantize_nodes: int
    cast_nodes: int
    size_bytes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``path`` as text)."""
        return {"path": str(self.path), "precision": self.precision, "int8_target": self.int8_target,
                "nodes": self.nodes, "quantize_nodes": self.quantize_nodes,
                "dequantize_nodes": self.dequantize_nodes, "cast_nodes": self.cast_nodes,
                "size_bytes": self.size_bytes, "seconds": self.seconds}


def node_counts(model: onnx.ModelProto) -> dict[str, int]:
    """``{"nodes", "QuantizeLinear", "DequantizeLinear", "Cast"}`` node counts of the main graph."""
    ops = [n.op_type for n in model.graph.node]
    return {"nodes": len(ops), QUANTIZE: ops.count(QUANTIZE), DEQUANTIZE: ops.count(DEQUANTIZE),
            "Cast": ops.count("Cast")}


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _elem_type(value: onnx.ValueInfoProto) -> int:
    return value.type.tensor_type.elem_type


def _drop_unused_opsets(model: onnx.ModelProto) -> None:
    """Remove opset imports of domains no node uses (the quantizer adds com.microsoft even when unused)."""
    used = {n.domain for n in model.graph.node} | {"", "ai.onnx"}
    kept = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)


# ---------------------------------------------------------------------------------------------- fp16


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Mixed-precision float16 copy of a float32 model; ``model`` is not modified.

    Conv / Gemm / elementwise ops and their weights become float16; the ops of `FP16_KEEP_FP32` (and the
    converter's own list, e.g. TopK, Range, CumSum, Min/Max) stay float32 with Cast nodes around them. The
    graph inputs and outputs keep their float32 type (a Cast follows ``input`` and precedes ``logits``), so
    the file is a drop-in replacement for the float32 one.

    Raises:
        UsageError: the model is already float16, or the converter rejects it.
    """
    from onnxconverter_common import float16

    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32))
    try:
        with warnings.catch_warnings():
            # The converter warns for every weight below 1e-7 it raises to 1e-7 (fp16 flushes those to 0
            # anyway); the output is checked and judged by its logits, so the per-tensor notes add nothing.
            warnings.filterwarnings("ignore", message=r".*will be truncated to.*")
            out = float16.convert_float_to_float16(_copy(model), keep_io_types=True, op_block_list=block,
                                                   max_finite_val=_FP16_MAX)
    except ValueError as err:  # "already converted to float16" and proto type errors
        raise UsageError(f"cannot convert to float16: {first_line(err)}") from err
    # The converter adds a float32 value_info for the output of a kept-float32 node next to the float16 one it
    # already had, and the full checker rejects the contradiction: drop them all and infer them afresh.
    del out.graph.value_info[:]
    out = onnx.shape_inference.infer_shapes(out)
    _drop_unused_opsets(out)
    return out


# ---------------------------------------------------------------------------------------------- int8


def _input_layout(model: onnx.ModelProto) -> tuple[str, tuple[int, ...], int | None]:
    """(name, (C, H, W), fixed batch or None) of the model's single image input."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UsageError(f"the model has {len(inputs)} inputs; tdexport models take exactly one image batch")
    dims = inputs[0].type.tensor_type.shape.dim
    values = [d.dim_value if d.WhichOneof("value") == "dim_value" else None for d in dims]
    if len(values) != 4 or None in values[1:]:
        raise UsageError(f"input '{inputs[0].name}' must be (N, C, H, W) with fixed C, H, W; got {values}")
    return inputs[0].name, tuple(values[1:]), values[0]  # type: ignore[return-value]


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence the quantizer's advice logged at WARNING (pre-processing hints, per-tensor notes)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs through the root logger
    try:
        yield
    finally:
        root.setLevel(level)


def _int8_settings(int8_target: str) -> dict[str, Any]:
    """quantize_static keyword arguments for ``int8_target`` (see the module doc)."""
    from onnxruntime.quantization import QuantType

    common = {
        "WeightSymmetric": True,  # int8 weights with zero point 0, which TensorRT requires and ORT prefers
        # A MatMul weight (K, N) has its output channels last; ORT's default axis 1 is wrong for batched weights.
        "QDQOpTypePerChannelSupportToAxis": {"MatMul": -1},
        "MatMulConstBOnly": True,  # activation x activation MatMuls stay float (no per-tensor weight scale)
        # No CalibMaxIntermediateOutputs: MinMax keeps only per-batch ReduceMin/ReduceMax values (small), and
        # in onnxruntime 1.31 that option drops the batches it should merge ("No data is collected").
    }
    if int8_target == "trt":
        weighted = list(WEIGHTED_OPS)
        extra = {
            **common,
            "ActivationSymmetric": True,
            # TensorRT's placement advice: quantize the inputs of weighted ops, not their outputs. A Conv output
            # is still quantized when the next op is a Conv (that op's input pair), and TensorRT fuses that Q;
            # elsewhere (ReLU, Add, pooling) an output pair would only add an int8 round trip.
            "OpTypesToExcludeOutputQuantization": weighted,
            # Two quantized ops reading one tensor get a Q/DQ pair each, so each fuses on its own.
            "DedicatedQDQPair": True,
            # TensorRT computes the int32 bias itself; an int32 DequantizeLinear is not something it imports.
            "QuantizeBias": False,
        }
        return {"activation_type": QuantType.QInt8, "weight_type": QuantType.QInt8,
                "op_types_to_quantize": weighted, "extra_options": extra}
    # ORT CPU: uint8 activations (U8S8 kernels), every op its QDQ fusions support. reduce_range stays off: it
    # only helps CPUs without VNNI, and costs a bit of weight precision everywhere else.
    return {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "op_types_to_quantize": None,
            "extra_options": {**common, "ActivationSymmetric": False}}


def quantize_int8(
    model: onnx.ModelProto,
    calibration: Iterable[np.ndarray],
    *,
    int8_target: str = "trt",
    progress: bool | None = None,
) -> onnx.ModelProto:
    """Static post-training int8 quantization (QDQ format) of a float32 model; ``model`` is not modified.

    Steps, in a private temporary folder removed afterwards: ONNX Runtime's ``quant_pre_process`` (symbolic
    and ONNX shape inference, basic graph optimisation; skipped when it fails), MinMax calibration of every
    activation to be quantized on ``calibration``, then ``quantize_static`` with per-channel symmetric int8
    weights and the activation layout of ``int8_target`` (see the module doc).

    Args:
        model: float32 model with one image input (N, C, H, W).
        calibration: float32 image batches (n, C, H, W), normalised as the model expects (e.g. from
            `calibration_batches`); consumed once. A few hundred images are typical.
        int8_target: ``trt`` (TensorRT explicit quantization) or ``cpu`` (ONNX Runtime CPU).
        progress: tqdm bar over the calibration batches: True shows it, False hides it, None shows it only
            on a terminal.

    Returns:
        The quantized model (QuantizeLinear / DequantizeLinear nodes, int8 weight initializers).

    Raises:
        UsageError: unknown ``int8_target``, a model that is not (N, C, H, W) float32, calibration batches of
            the wrong shape or with non-finite values, or no calibration images at all.
    """
    if int8_target not in INT8_TARGETS:
        raise UsageError(f"unknown int8 target '{int8_target}'; choose one of: {', '.join(INT8_TARGETS)}")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quant_pre_process, quantize_static

    name, chw, fixed = _input_layout(model)
    settings = _int8_settings(int8_target)
    reader = CalibrationReader(calibration, name, chw, fixed, progress)
    with tempfile.TemporaryDirectory(prefix="tdexport-int8-") as tmp:
        src, pre, dst = (Path(tmp) / f for f in ("fp32.onnx", "preprocessed.onnx", "int8.onnx"))
        src.write_bytes(model.SerializeToString())
        try:
            with _quiet_quantizer():
                try:
                    quant_pre_process(str(src), str(pre))
                except Exception:  # symbolic shape inference fails on some graphs (sympy, unknown ops)
                    # Only an optimisation: quantize_static runs ONNX shape inference on its input itself.
                    pre = src
                quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                                reduce_range=False, calibrate_method=CalibrationMethod.MinMax, **settings)
        except TdexportError:
            raise
        except ValueError as err:
            if reader.images == 0:
                raise UsageError("int8 calibration got no images") from err
            raise
        finally:
            reader.close()
        out = onnx.load(str(dst))
    _drop_unused_opsets(out)
    return out


# ---------------------------------------------------------------------------------------------- files


def _check_contract(model: onnx.ModelProto) -> list[str]:
    """The float32 ``input`` / ``logits`` of the tdexport ONNX contract, still there after conversion."""
    problems = []
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    names = ([i.name for i in inputs], [o.name for o in graph.output])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        problems.append(f"inputs / outputs are {names[0]} / {names[1]}, expected ['{INPUT_NAME}'] / "
                        f"['{OUTPUT_NAME}']")
    for value in (*inputs, *graph.output):
        if _elem_type(value) != TensorProto.FLOAT:
            problems.append(f"'{value.name}' is {TensorProto.DataType.Name(_elem_type(value))}, expected FLOAT")
    return problems


def _smoke_run(data: bytes, input_shape: tuple[int, ...], fixed: int | None) -> None:
    """Run the converted model once on ONNX Runtime CPU; it must give finite logits."""
    from ..runtime import OrtRunner

    batch = np.zeros((fixed or 1, *input_shape), dtype=np.float32)
    try:
        with OrtRunner(data, provider="cpu") as runner:
            logits = runner.infer(batch)
    except TdexportError as err:
        raise GateFailed(f"ONNX Runtime (CPU) cannot run the converted model: {err}") from err
    except Exception as err:  # onnxruntime's own exception types
        raise GateFailed(f"ONNX Runtime (CPU) cannot run the converted model: {first_line(err)}") from err
    if not np.isfinite(logits).all():
        raise GateFailed("the converted model gives non-finite logits on ONNX Runtime (CPU)")


def convert(
    src: str | Path,
    dst: str | Path,
    precision: str,
    *,
    calibration: Iterable[np.ndarray] | None = None,
    int8_target: str = "trt",
    progress: bool | None = None,
) -> PrecisionResult:
    """Write ``src`` (a float32 tdexport ONNX file) at ``precision`` to ``dst``.

    ``fp32`` copies the file unchanged, ``fp16`` applies `to_fp16`, ``int8`` applies `quantize_int8`. The
    result must pass ``onnx.checker`` (full check), keep the float32 ``input`` / ``logits``, run on ONNX
    Runtime CPU with finite logits, and, for int8 with target ``trt``, satisfy `check_trt_qdq`. Only then is
    ``dst`` written (atomically: an existing file is replaced whole, or left untouched on failure).

    Args:
        src: float32 ONNX file, e.g. from `tdexport.export.onnx.export_onnx`.
        dst: .onnx file to write; its directory is created.
        precision: one of `PRECISIONS`.
        calibration: float32 image batches (n, C, H, W) for int8 (see `calibration_batches`); required there,
            ignored otherwise.
        int8_target: one of `INT8_TARGETS`.
        progress: calibration progress bar (None: only on a terminal).

    Returns:
        `PrecisionResult`.

    Raises:
        UsageError: unknown precision or int8 target, int8 without calibration, ``src`` missing or not ONNX,
            ``dst`` a directory, or bad calibration data.
        GateFailed: the converted model fails the checker, the I/O contract, the ONNX Runtime run, or (int8,
            trt) TensorRT's Q/DQ rules; nothing is written.
    """
    start = time.perf_counter()
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    if precision == "int8":
        if int8_target not in INT8_TARGETS:
            raise UsageError(f"unknown int8 target '{int8_target}'; choose one of: {', '.join(INT8_TARGETS)}")
        if calibration is None:
            raise UsageError("int8 needs calibration images (e.g. calibration_batches('digits', 256, ...))")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UsageError(f"ONNX model not found: {src}")
    if dst.is_dir():
        raise UsageError(f"{dst} is a directory; give the .onnx file to write")
    data = src.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as err:  # protobuf DecodeError and friends
        raise UsageError(f"{src} is not an ONNX model: {first_line(err)}") from err
    if _check_contract(model):
        raise UsageError(f"{src} is not a float32 tdexport model: {'; '.join(_check_contract(model))}")
    _, chw, fixed = _input_layout(model)

    if precision == "fp16":
        model = to_fp16(model)
    elif precision == "int8":
        model = quantize_int8(model, calibration, int8_target=int8_target, progress=progress)  # type: ignore[arg-type]
    if precision != "fp32":
        if model.ByteSize() > PROTOBUF_LIMIT:
            raise GateFailed("the converted model exceeds the 2 GB protobuf limit of a single-file ONNX model")
        data = model.SerializeToString()
    problems = _check_contract(model)
    try:
        onnx.checker.check_model(data, full_check=True)
    except Exception as err:  # checker raises ValidationError, shape inference InferenceError
        problems.append(f"onnx.checker (full_check) failed: {first_line(err)}")
    if precision == "int8" and int8_target == "trt":
        problems += check_trt_qdq(model)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; … ({len(problems)} in all)" if len(problems) > 5 else "")
        raise GateFailed(f"{precision} conversion of {src} failed its checks: {shown}; nothing written to {dst}")
    _smoke_run(data, chw, fixed)

    dst.parent.mkdir(parents=True, exist_ok=True)
    if precision != "fp32" or dst.resolve() != src.resolve():  # fp32 onto itself: the file is already there
        atomic_write_bytes(dst, data)
    counts = node_counts(model)
    return PrecisionResult(
        path=dst, precision=precision, int8_target=int8_target if precision == "int8" else None,
        nodes=counts["nodes"], quantize_nodes=counts[QUANTIZE], dequantize_nodes=counts[DEQUANTIZE],
        cast_nodes=counts["Cast"],
        size_bytes=len(data), seconds=time.perf_counter() - start,
    )


# ---------------------------------------------------------------------------------------------- judging


def agreement(ref_logits: Any, logits: Any) -> dict[str, float | int]:
    """How closely reduced-precision logits follow the float32 ones (what fp16 / int8 are judged by).

    Args:
        ref_logits: float32 reference logits (N, classes), numpy array or torch tensor.
        logits: logits of the reduced-precision model on the same N inputs, same shape.

    Returns:
        ``cosine``: mean over samples of the per-sample cosine similarity of the two logit vectors;
        ``min_cosine``: the worst sample's; ``top1_agreement``: fraction (0..1) of samples with the same
        argmax; ``max_abs``: max |difference| over all elements (logit units); ``rel_l2``: relative L2 error
        of the whole array; ``samples``: N. Computed in float64.

    Raises:
        ValueError: the shapes differ or the arrays are empty.
    """
    ref_logits, logits = (x.detach().cpu().numpy() if hasattr(x, "detach") else x for x in (ref_logits, logits))
    parity = compare_outputs(ref_logits, logits)
    ref = np.asarray(ref_logits, dtype=np.float64).reshape(parity.samples, -1)
    cand = np.asarray(logits, dtype=np.float64).reshape(parity.samples, -1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, np.einsum("ij,ij->i", ref, cand) / np.where(norms > 0, norms, 1.0), 0.0)
    cos = np.where((np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(cand, axis=1) == 0), 1.0, cos)
    return {"cosine": float(np.mean(cos)), "min_cosine": parity.cosine, "top1_agreement": parity.top1_agreement,
            "max_abs": parity.max_abs_err, "rel_l2": parity.rel_l2_err, "samples": parity.samples}
