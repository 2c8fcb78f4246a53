"""What a user names on the command line (zoo model, checkpoint folder, ONNX file) as a measurable artifact.

`resolve` turns a reference into an `Artifact` with its input shape, parameter and MAC counts, and the
width of its logits, checking on the way everything a later stage would otherwise trip over: a file that
is not ONNX, non-finite weights, a graph that is not one image classifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoint
from .errors import UsageError, first_line
from .guards import require_finite
from .plan import Plan
from .planner import survey
from .zoo import create_model, model_info

__all__ = ["Artifact", "resolve", "onnx_cost", "logit_width"]


@dataclass
class Artifact:
    """One side of a comparison: a torch module, an ONNX file, or both.

    Attributes:
        label: ``original`` or ``compressed``.
        source: what the user named (model name, directory or file).
        module: the torch model (None for an ONNX file given directly).
        onnx: the ONNX file (None until exported, for a module).
        input_shape: (C, H, W) of one image.
        params: parameter count.
        macs: multiply-accumulates per image (conv and linear layers), or None when unknown.
        plan: the compression plan, for a compressed checkpoint.
        fixed_batch: the batch size an ONNX file was exported with, None when its batch is dynamic.
    """

    label: str
    source: str
    module: nn.Module | None
    onnx: Path | None
    input_shape: tuple[int, int, int]
    params: int | None
    macs: int | None
    plan: Plan | None = None
    fixed_batch: int | None = None


def _load_onnx(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as err:  # protobuf's DecodeError and onnx's own errors have no common base
        raise UsageError(f"{path} is not a readable ONNX model: {first_line(err)}") from err


def onnx_cost(path: str | Path) -> tuple[tuple[int, int, int], int, int, int | None]:
    """Describe an ONNX image classifier from its graph, without running it.

    Counts Conv, Gemm and MatMul nodes whose weight is an initializer: MACs = output elements per image ×
    reduction length (Conv: I/groups·kh·kw; Gemm: K of B, which is B's dim 0 unless ``transB=1``; MatMul: B's
    dim 0).

    Args:
        path: the .onnx file.

    Returns:
        (input (C, H, W), parameter count, MACs per image, fixed batch size or None when dynamic).

    Raises:
        UsageError: the file is not ONNX, has not exactly one (N, C, H, W) input with fixed C, H, W, or holds
            non-finite weights.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    proto = _load_onnx(path)
    graph_inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(graph_inputs) != 1:
        raise UsageError(f"{path}: expected one image input, the graph has {len(graph_inputs)}")
    dim_protos = graph_inputs[0].type.tensor_type.shape.dim
    dims = [d.dim_value if d.HasField("dim_value") else None for d in dim_protos]
    if len(dims) != 4 or not all(dims[1:]):
        raise UsageError(f"{path}: expected one image input (N, C, H, W) with fixed C, H, W, got {dims}")
    inits = {i.name: i for i in proto.graph.initializer}
    require_finite(((name, torch.from_numpy(np.array(numpy_helper.to_array(t)))) for name, t in inits.items()
                    if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)),
                   str(path))
    params = sum(int(np.prod(i.dims)) for i in inits.values())
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception as err:  # shape inference raises InferenceError on inconsistent graphs
        raise UsageError(f"{path}: ONNX shape inference failed: {first_line(err)}") from err
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    macs = 0
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        w = list(inits[node.input[1]].dims)
        out = shapes.get(node.output[0])
        if not out or not all(out[1:]):
            continue
        if node.op_type == "Conv":
            per_output = int(np.prod(w[1:]))
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            per_output = w[1] if trans_b else w[0]
        else:
            per_output = w[0]
        macs += int(np.prod(out[1:])) * int(per_output)
    return (dims[1], dims[2], dims[3]), params, macs, dims[0]


def logit_width(art: Artifact) -> int:
    """How many logits the artifact produces per image, from one forward pass (torch) or one ORT run."""
    x = np.zeros((art.fixed_batch or 1, *art.input_shape), np.float32)
    if art.module is not None:
        p = next(art.module.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        was_training = art.module.training
        art.module.eval()
        try:
            with torch.inference_mode():
                out = art.module(torch.from_numpy(x).to(device))
        finally:
            art.module.train(was_training)
        shape = tuple(out.shape)
    else:
        from .runtime import OrtRunner

        with OrtRunner(art.onnx, provider="cpu") as runner:
            shape = runner.infer(x).shape
    if len(shape) != 2:
        raise UsageError(f"{art.label} model {art.source} outputs shape {shape} per batch; expected logits (N, K)")
    return int(shape[1])


def resolve(spec: str | Path, *, label: str, weights: str = "default", num_classes: int | None = None) -> Artifact:
    """Turn a user's model reference into an `Artifact`.

    Args:
        spec: an ``.onnx`` file, a checkpoint/run directory, or a zoo model name.
        label: ``original`` or ``compressed``.
        weights: weights of a zoo model name.
        num_classes: classifier width of a zoo model name.

    Raises:
        UsageError: a missing or unreadable file, a folder that is not a checkpoint, an unknown model name, or
            non-finite weights.
    """
    text = str(spec)
    path = Path(text)
    if text.endswith(".onnx"):
        if not path.is_file():
            raise UsageError(f"ONNX file not found: {path}")
        shape, params, macs, batch = onnx_cost(path)
        return Artifact(label, text, None, path, shape, params, macs, fixed_batch=batch)
    if path.is_dir():
        if not checkpoint.is_checkpoint_dir(path):
            raise UsageError(f"{path} is a folder without plan.json or model.json (not a tdexport checkpoint)")
        module, plan = checkpoint.load(path)
        if plan is not None:
            return Artifact(label, text, module, None, tuple(plan.input_shape), plan.totals["params_after"],
                            plan.totals["macs_after"], plan)
        meta = checkpoint.read_meta(path)
        shape = tuple(meta.get("input_shape") or model_info(meta["model"]).input_shape)
        return dense_artifact(label, text, module, shape)
    if path.suffix or "/" in text:
        raise UsageError(f"{text}: not an .onnx file, a checkpoint directory or a model name")
    module = create_model(text, weights=weights, num_classes=num_classes)
    require_finite(module.state_dict().items(), f"{text} (--weights {weights})")
    return dense_artifact(label, text, module, tuple(model_info(text).input_shape))


def dense_artifact(label: str, source: str, module: nn.Module, shape: tuple) -> Artifact:
    """An `Artifact` for a dense torch module, its params and MACs counted at input ``shape`` (C, H, W)."""
    totals = survey(module, input_shape=shape).totals
    return Artifact(label, source, module, None, tuple(shape), totals["params_before"], totals["macs_before"])
