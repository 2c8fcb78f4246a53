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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from .._io import atomic_write_bytes
from ..errors import GateFailed, TdexportError, UsageError, first_line
from ..layers_reorder import fold_reordered
from ..runtime import OrtRunner
from ..validate.parity import ParityResult, compare_outputs
from .bnfold import fold_batchnorm
from .graph import BATCH_DIM, INPUT_NAME, OUTPUT_NAME, PROTOBUF_LIMIT, normalise, opset_of, same_computation
from .graph import simplify as simplify_graph

__all__ = ["ExportResult", "export_onnx", "INPUT_NAME", "OUTPUT_NAME", "BATCH_DIM"]

_EXAMPLE_SEED, _PARITY_SEED = 0, 1234


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

    The caller's model is not modified (a copy is exported: eval mode, CPU, float32, BatchNorm folded,
    DCT-reordered layers folded back into the dense layers they rebuild).

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

    weight_bytes = 4 * sum(t.numel() for t in [*model.parameters(), *model.buffers()])  # exported as float32
    if weight_bytes > PROTOBUF_LIMIT:
        raise UsageError(f"the model's weights take {weight_bytes / 2**30:.2f} GiB in float32, above the 2 GiB a "
                         "single-file ONNX model can hold; tdexport does not write external-data ONNX yet")

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
    fold_batchnorm(work)
    # Reordered layers save storage, not compute: they run as the dense layers they rebuild (parity checks it).
    fold_reordered(work)

    notes: list[str] = []
    proto = exporter = None
    for name, export in _EXPORTERS:
        try:
            candidate = export(work, example, opset, dynamic)
        except Exception as err:  # exporters raise a wide range of types (torch.export, onnxscript, jit)
            notes.append(f"{name} exporter failed: {type(err).__name__}: {first_line(err)}")
            continue
        problems, data = normalise(candidate, input_shape, opset, batch)
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
            slim = simplify_graph(proto)
            problems, slim_data = normalise(slim, input_shape, opset, batch)
            if problems:
                raise RuntimeError("; ".join(problems))
            # Same nodes and weights as the graph just verified: its parity holds, no second ONNX Runtime run.
            slim_parity = (parity if same_computation(proto, slim)
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
        opset=int(opset_of(proto)),
        exporter=exporter,
        simplified=simplified,
        dynamic_batch=dynamic,
        op_types=tuple(sorted({node.op_type for node in proto.graph.node})),
        parity=parity,
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
    )
