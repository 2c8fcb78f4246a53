"""Export a (compressed) model to one self-contained, standard-op ONNX file, proven to match torch.

Pipeline, all on a private copy of the model (eval mode, CPU, float32):

1. Fold every BatchNorm that directly follows a convolution into that convolution (found by tracing with
   torch.fx, so it also works when the convolution is the last layer of a factorized ``nn.Sequential``).
2. Export with the exporter torch recommends (``torch.onnx.export(..., dynamo=True)``); when it fails or
   cannot deliver what was asked (opset, names, dynamic batch, standard ops, a model the full checker
   accepts), export again with the TorchScript exporter and record that.
3. Name the single input ``input`` and output ``logits`` and the dynamic batch dimension ``batch``.
4. Optionally simplify with onnxslim, keeping the result only if it still passes every check and parity.
5. Compare ONNX Runtime (CPU) with torch on parity inputs; raise `GateFailed` (exit 3) above the limit.
6. Write the file atomically: nothing appears at ``path`` unless every check passed.

Factorized layers are plain ``nn.Conv2d`` / ``nn.Linear`` modules, so they export as standard Conv / Gemm /
MatMul nodes with no custom ops.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .._io import atomic_write_bytes
from ..errors import GateFailed, TdexportError, UsageError, first_line
from ..runtime import OrtRunner
from ..validate.parity import ParityResult, compare_outputs

__all__ = ["ExportResult", "export_onnx", "INPUT_NAME", "OUTPUT_NAME", "BATCH_DIM"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
BATCH_DIM = "batch"
_STANDARD_DOMAINS = ("", "ai.onnx")
# Protobuf cannot serialize a message of 2 GiB or more; such models would need external data files.
_PROTOBUF_LIMIT = (1 << 31) - 1
_EXAMPLE_SEED, _PARITY_SEED = 0, 1234

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote and how it was checked.

    Attributes:
        path: the ONNX file (one self-contained file, weights included).
        opset: default-domain opset of the file.
        exporter: ``dynamo`` (torch.export based) or ``torchscript`` (the fallback).
        simplified: True when the onnxslim-simplified graph was kept.
        dynamic_batch: True when the batch dimension of ``input`` and ``logits`` is the symbol ``batch``.
        op_types: sorted distinct operator types of the graph (all from the standard ONNX domain).
        parity: ONNX Runtime (CPU) vs torch on the parity inputs; with a dynamic batch the first input is
            also run alone and counted as one more sample.
        seconds: wall time of the whole export, s.
        notes: why the fallback exporter was used or simplification was dropped; empty when neither.
    """

    path: Path
    opset: int
    exporter: str
    simplified: bool
    dynamic_batch: bool
    op_types: tuple[str, ...]
    parity: ParityResult
    seconds: float
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------- BN folding


@torch.no_grad()
def _fold_into(conv: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` into ``conv`` in place: W' = W·γ/√(σ²+ε) per output channel, b' = (b − μ)·γ/√(σ²+ε) + β (float64)."""
    w = conv.weight.double()
    scale = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    bias = (bias - bn.running_mean.double()) * scale
    if bn.bias is not None:
        bias = bias + bn.bias.double()
    conv.weight.copy_((w * scale.reshape(-1, *([1] * (w.dim() - 1)))).to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
    else:
        conv.bias.copy_(bias.to(conv.bias.dtype))


def _fold_batchnorm(model: nn.Module) -> int:
    """Fold BatchNorms fed only by a convolution into it, in place; returns how many were folded.

    A pair is folded only when tracing proves it safe: the BN's input is the conv's output and nothing
    else reads it, each module is called once, and the BN uses running statistics. Folded BNs become
    ``nn.Identity``. Models torch.fx cannot trace are left as they are (their BNs may then reach the graph).
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # fx raises many types on untraceable Python; folding is an optimisation only
        return 0
    modules = dict(model.named_modules(remove_duplicate=False))
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    owners = Counter(id(m) for m in modules.values())
    folded = 0
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, _NORMS) or bn.running_mean is None or len(node.args) != 1:
            continue
        src = node.args[0]
        conv = modules.get(src.target) if isinstance(src, torch.fx.Node) and src.op == "call_module" else None
        if not isinstance(conv, _CONVS) or getattr(conv, "transposed", False) or len(src.users) != 1:
            continue
        if calls[src.target] != 1 or calls[node.target] != 1 or owners[id(conv)] != 1 or owners[id(bn)] != 1:
            continue
        if conv.out_channels != bn.num_features:
            continue
        _fold_into(conv, bn)
        parent, _, child = node.target.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
        folded += 1
    return folded


# ---------------------------------------------------------------------------------------------- exporters


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    """Silence the exporters' progress logs, the legacy exporter's deprecation warning and converter tracebacks.

    A failed attempt is recorded in `ExportResult.notes` instead, so the noise adds nothing.
    """
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int, dynamic: bool) -> onnx.ModelProto:
    shapes = ({0: torch.export.Dim(BATCH_DIM, min=1)},) if dynamic else None
    with _quiet_exporters():
        program = torch.onnx.export(model, (example,), dynamo=True, verbose=False, opset_version=opset,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes=shapes,
                                    optimize=True, external_data=False)
    # The in-memory proto carries the weights inline; saving through ONNXProgram.save could split them off.
    return program.model_proto


def _export_torchscript(model: nn.Module, example: torch.Tensor, opset: int, dynamic: bool) -> onnx.ModelProto:
    axes = {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}} if dynamic else None
    buffer = io.BytesIO()
    with _quiet_exporters():
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=axes, do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


_EXPORTERS = (("dynamo", _export_dynamo), ("torchscript", _export_torchscript))


# ---------------------------------------------------------------------------------------------- graph checks


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


def _opset_of(proto: onnx.ModelProto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in _STANDARD_DOMAINS), None)


def _normalise(proto: onnx.ModelProto, input_shape: Sequence[int], opset: int,
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
    if _opset_of(proto) != opset:
        problems.append(f"opset is {_opset_of(proto)}, requested {opset}")
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
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        problems.append("model exceeds the 2 GB protobuf limit of a single-file ONNX model")
    if problems:
        return problems, b""
    data = proto.SerializeToString()
    try:
        onnx.checker.check_model(data, full_check=True)
    except Exception as err:  # checker raises ValidationError, shape inference InferenceError
        return [f"onnx.checker (full_check) failed: {first_line(err)}"], b""
    return [], data


def _same_computation(a: onnx.ModelProto, b: onnx.ModelProto) -> bool:
    """True when two graphs have the same nodes (ignoring node metadata) and the same initializers."""
    if len(a.graph.node) != len(b.graph.node) or len(a.graph.initializer) != len(b.graph.initializer):
        return False
    for x, y in zip(a.graph.node, b.graph.node, strict=True):
        if (x.op_type, x.domain, list(x.input), list(x.output), list(x.attribute)) != (
                y.op_type, y.domain, list(y.input), list(y.output), list(y.attribute)):
            return False
    return {t.name: t for t in a.graph.initializer} == {t.name: t for t in b.graph.initializer}


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    # onnxslim edits the proto it is given (it strips initializers from inputs), so hand it a copy.
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    with contextlib.redirect_stdout(io.StringIO()):
        slim = onnxslim.slim(work)
    if not isinstance(slim, onnx.ModelProto):
        raise RuntimeError("onnxslim returned no model")
    return slim


# ---------------------------------------------------------------------------------------------- parity


def _ort_parity(model_bytes: bytes, inputs: np.ndarray, reference: np.ndarray, dynamic: bool) -> ParityResult:
    """ONNX Runtime (CPU) outputs vs torch ``reference``; raises `GateFailed` when the model does not run.

    With a dynamic batch, the first sample is also run alone, so a graph that only works at the parity
    batch size is caught; its comparison is folded into the returned result as one more sample.
    """
    try:
        with OrtRunner(model_bytes, provider="cpu") as runner:
            candidate = runner.infer(inputs)
            if dynamic and len(inputs) > 1:
                candidate = np.concatenate([candidate, runner.infer(inputs[:1])])
                reference = np.concatenate([reference, reference[:1]])
    except UsageError as err:  # ONNX Runtime rejected the file: the export, not the caller, is at fault
        raise GateFailed(f"ONNX Runtime cannot load the exported model: {err}") from err
    except TdexportError:
        raise
    except Exception as err:  # onnxruntime's own exception types
        raise GateFailed(f"ONNX Runtime cannot run the exported model: {err}") from err
    if candidate.shape != reference.shape:
        raise GateFailed(f"ONNX output shape {candidate.shape} differs from torch's {reference.shape}")
    return compare_outputs(reference, candidate)


def _seeded_normal(shape: Sequence[int], seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- public API


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_shape: tuple[int, int, int],
    opset: int = 17,
    batch: int | None = None,
    simplify: bool = True,
    example: torch.Tensor | None = None,
    parity_inputs: torch.Tensor | None = None,
    max_parity_err: float = 1e-4,
) -> ExportResult:
    """Export ``model`` to a single standard-op ONNX file and prove it matches torch.

    The caller's model is not modified (a copy is exported: eval mode, CPU, float32, BatchNorm folded).

    Args:
        model: maps images (N, *input_shape) to logits (N, classes).
        path: destination .onnx file; its directory is created. Written only when every check passes
            (an existing file is replaced atomically, and left untouched on failure).
        input_shape: (C, H, W) of one image.
        opset: default-domain ONNX opset of the file. torch 2.14's dynamo exporter implements opset 18 and
            up and falls back to the TorchScript exporter when it cannot convert down to an older opset.
        batch: None for a dynamic batch dimension ``batch``; N fixes it.
        simplify: also try onnxslim; its graph is kept only if it passes the checks and parity.
        example: tracing input (N, *input_shape); default seeded N(0, 1) with N = 2 (dynamic) or ``batch``.
            A dynamic export needs N ≥ 2 (torch.export treats a size-1 dimension as fixed), so a single
            sample is repeated.
        parity_inputs: inputs (N, *input_shape) for the parity check; default seeded N(0, 1) with N = 2
            (dynamic) or ``batch``, drawn independently of ``example``.
        max_parity_err: limit on the relative L2 error of the ONNX Runtime logits vs torch.

    Returns:
        `ExportResult`.

    Raises:
        UsageError: bad arguments, or neither exporter produced an acceptable graph (reasons listed).
        GateFailed: ONNX Runtime's outputs differ from torch's by more than ``max_parity_err`` (relative
            L2), or it cannot run the model; no file is written.
    """
    start = time.perf_counter()
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise UsageError(f"input_shape must be (C, H, W), got {input_shape}")
    if batch is not None and batch < 1:
        raise UsageError(f"batch must be at least 1, got {batch}")
    if not max_parity_err > 0:
        raise UsageError(f"max_parity_err must be positive, got {max_parity_err}")
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give the .onnx file to write")
    dynamic = batch is None
    n = batch or 2

    example = _seeded_normal((n, *input_shape), _EXAMPLE_SEED) if example is None else example.detach()
    parity_inputs = (_seeded_normal((n, *input_shape), _PARITY_SEED) if parity_inputs is None
                     else parity_inputs.detach())
    for name, tensor in (("example", example), ("parity_inputs", parity_inputs)):
        if tensor.dim() != 4 or tensor.shape[0] < 1 or tuple(tensor.shape[1:]) != input_shape:
            raise UsageError(f"{name} has shape {tuple(tensor.shape)}, expected (N, *{input_shape})")
        if not dynamic and tensor.shape[0] != batch:
            raise UsageError(f"{name} has batch {tensor.shape[0]} but the export fixes batch={batch}")
    example = example.float().cpu()
    if dynamic and example.shape[0] < 2:
        example = example.expand(2, *input_shape).contiguous()
    inputs = parity_inputs.float().cpu().contiguous()

    work = copy.deepcopy(model).float().cpu().eval()
    work.requires_grad_(False)
    with torch.inference_mode():
        reference = work(inputs).float().numpy()
    _fold_batchnorm(work)

    notes: list[str] = []
    proto = exporter = None
    for name, export in _EXPORTERS:
        try:
            candidate = export(work, example, opset, dynamic)
        except Exception as err:  # exporters raise a wide range of types (torch.export, onnxscript, jit)
            notes.append(f"{name} exporter failed: {type(err).__name__}: {first_line(err)}")
            continue
        problems, data = _normalise(candidate, input_shape, opset, batch)
        if problems:
            notes.append(f"{name} exporter output rejected: {'; '.join(problems)}")
            continue
        proto, exporter = candidate, name
        break
    if proto is None:
        raise UsageError("cannot export the model to ONNX: " + " | ".join(notes))

    parity = _ort_parity(data, inputs.numpy(), reference, dynamic)
    if not parity.passes(max_parity_err):
        raise GateFailed(f"ONNX parity gate failed ({exporter} exporter): ONNX Runtime vs torch "
                         f"{parity.summary()}, limit rel_l2 ≤ {max_parity_err:g}; nothing written to {path}")

    simplified = False
    if simplify:
        try:
            slim = _simplify(proto)
            problems, slim_data = _normalise(slim, input_shape, opset, batch)
            if problems:
                raise RuntimeError("; ".join(problems))
            # Same nodes and weights as the graph just verified: its parity holds, no second ONNX Runtime run.
            slim_parity = (parity if _same_computation(proto, slim)
                           else _ort_parity(slim_data, inputs.numpy(), reference, dynamic))
            if not slim_parity.passes(max_parity_err):
                raise RuntimeError(f"parity {slim_parity.summary()}")
        except Exception as err:  # any failure of the optional step keeps the verified unsimplified graph
            notes.append(f"simplification dropped: {type(err).__name__}: {first_line(err)}")
        else:
            proto, data, parity, simplified = slim, slim_data, slim_parity, True

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return ExportResult(
        path=path,
        opset=int(_opset_of(proto)),
        exporter=exporter,
        simplified=simplified,
        dynamic_batch=dynamic,
        op_types=tuple(sorted({node.op_type for node in proto.graph.node})),
        parity=parity,
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
    )
