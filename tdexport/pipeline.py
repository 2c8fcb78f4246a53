"""Orchestration: `validate` two models side by side, and `compress_and_export` end to end.

Stages, each owned by its own module: compress (`plan`) → fine-tune (`train.run`) → export
(`export.onnx`, parity-checked) → accuracy / latency per backend (`runtime` runners measured by
`validate.accuracy` / `validate.latency`) → gates and report (`validate.gates`, `validate.report`).
The run folder appears whole or not at all; a failed gate still writes the report, then exits 3.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import checkpoint
from .errors import GateFailed, UsageError
from .plan import Plan, survey
from .zoo import create_model, model_info

ORIGINAL_ONNX = "original.onnx"
COMPRESSED_ONNX = "compressed.onnx"


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
    """

    label: str
    source: str
    module: nn.Module | None
    onnx: Path | None
    input_shape: tuple[int, int, int]
    params: int | None
    macs: int | None
    plan: Plan | None = None


def _onnx_cost(path: Path) -> tuple[tuple[int, int, int], int, int]:
    """(input shape, params, MACs per image) of an ONNX classifier, counting Conv / Gemm / MatMul."""
    import onnx

    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or not all(dims[1:]):
        raise UsageError(f"{path}: expected one image input (N, C, H, W) with fixed C, H, W, got {dims}")
    params = sum(int(np.prod(i.dims)) for i in inits.values())
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    macs = 0
    for node in proto.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.input[1] not in inits:
            continue
        w = list(inits[node.input[1]].dims)
        out = shapes.get(node.output[0])
        if not out or not all(out[1:]):
            continue
        per_output = int(np.prod(w[1:])) if node.op_type == "Conv" else w[0 if node.op_type == "MatMul" else 1]
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 0 for a in node.attribute):
            per_output = w[0]
        macs += int(np.prod(out[1:])) * int(per_output)
    return (dims[1], dims[2], dims[3]), params, macs


def resolve(spec: str | Path, *, label: str, weights: str = "default", num_classes: int | None = None) -> Artifact:
    """Turn a user's model reference into an `Artifact`.

    Args:
        spec: an ``.onnx`` file, a checkpoint/run directory, or a zoo model name.
        label: ``original`` or ``compressed``.
        weights: weights of a zoo model name.
        num_classes: classifier width of a zoo model name.
    """
    text = str(spec)
    path = Path(text)
    if text.endswith(".onnx"):
        if not path.is_file():
            raise UsageError(f"ONNX file not found: {path}")
        shape, params, macs = _onnx_cost(path)
        return Artifact(label, text, None, path, shape, params, macs)
    if path.is_dir():
        module, plan = checkpoint.load(path)
        if plan is not None:
            return Artifact(label, text, module, None, tuple(plan.input_shape), plan.totals["params_after"],
                            plan.totals["macs_after"], plan)
        meta = checkpoint.read_meta(path)
        shape = tuple(meta.get("input_shape") or model_info(meta["model"]).input_shape)
        return _dense(label, text, module, shape)
    if path.suffix or "/" in text:
        raise UsageError(f"{text}: not an .onnx file, a checkpoint directory or a model name")
    module = create_model(text, weights=weights, num_classes=num_classes)
    return _dense(label, text, module, tuple(model_info(text).input_shape))


def _dense(label: str, source: str, module: nn.Module, shape: tuple) -> Artifact:
    totals = survey(module, input_shape=shape).totals
    return Artifact(label, source, module, None, tuple(shape), totals["params_before"], totals["macs_before"])


def _sample_inputs(loader, shape: tuple[int, int, int], n: int = 8) -> torch.Tensor:
    """Up to ``n`` real images from the data (parity on real inputs), or seeded N(0, 1) without data."""
    if loader is not None:
        images, _ = next(iter(loader))
        return images[:n].float()
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1234))


def _export(art: Artifact, out: Path, *, opset: int, simplify: bool, parity_inputs: torch.Tensor,
            max_parity_err: float):
    from .export.onnx import export_onnx

    path = out / (ORIGINAL_ONNX if art.label == "original" else COMPRESSED_ONNX)
    result = export_onnx(art.module, path, input_shape=art.input_shape, opset=opset, simplify=simplify,
                         parity_inputs=parity_inputs, max_parity_err=max_parity_err)
    art.onnx = path
    return result


def _artifact_for(art: Artifact, backend: str):
    if backend == "torch":
        if art.module is None:
            raise UsageError(f"backend torch needs a torch model, but {art.label} is an ONNX file ({art.source})")
        return art.module
    return art.onnx


def validate(
    original: Artifact,
    compressed: Artifact,
    out: str | Path,
    *,
    data: str | None = None,
    limit: int | None = None,
    backends: Sequence[str] = ("ort-cpu",),
    batch_sizes: Sequence[int] = (1, 32),
    iterations: int = 50,
    duration: float = 3.0,
    warmup: float = 1.0,
    threads: int | None = None,
    opset: int = 18,
    simplify: bool = True,
    max_acc_drop: float | None = None,
    min_speedup: float | None = None,
    max_parity_err: float | None = None,
    export_parity_limit: float = 1e-4,
    progress: bool = True,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Export what needs exporting, measure both models, write the report into ``out``, apply the gates.

    Args:
        original: the reference model.
        compressed: the model judged against it.
        out: directory for original.onnx / compressed.onnx (when exported), report.json, report.md, plots.
        data: data spec for accuracy (and real parity inputs); None: accuracy is null with a note.
        limit: evaluate only the first N test images.
        backends: runners to measure, from `tdexport.runtime.BACKENDS`.
        batch_sizes: latency batch sizes.
        iterations: minimum timed runs per model and batch size.
        duration: minimum timed seconds per batch size.
        warmup: warm-up seconds per model before timing.
        threads: intra-op threads pinned for every runner (default: the backends' defaults).
        opset: ONNX opset for exports.
        simplify: try onnxslim on exports.
        max_acc_drop: gate: top-1 points lost (original − compressed).
        min_speedup: gate: headline speedup (first backend, largest batch).
        max_parity_err: gate: relative L2 error, ONNX Runtime vs torch, of the compressed export.
        export_parity_limit: parity an export must meet to be written at all (exit 3 otherwise).
        progress: progress messages on stderr.
        notes: warnings from earlier stages, listed first in the report.

    Returns:
        The report dict (also written as report.json).

    Raises:
        GateFailed: a gate failed (after the report was written) or an export failed parity.
        BackendUnavailable: a requested backend cannot run here.
    """
    from .data import load_data, make_loader
    from .runtime import make_runner
    from .validate.accuracy import evaluate
    from .validate.gates import evaluate_gates, raise_if_failed
    from .validate.latency import measure_paired, pin_threads
    from .validate.report import build_report, environment_info, headline_table, headline_values, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    if original.input_shape != compressed.input_shape:
        raise UsageError(f"input shapes differ: original {original.input_shape}, compressed {compressed.input_shape}")
    shape = compressed.input_shape
    pinned = pin_threads(threads)
    loader = None
    if data is not None:
        bundle = load_data(data, augment=False)
        if tuple(bundle.input_shape) != tuple(shape):
            raise UsageError(f"--data {data} gives images {tuple(bundle.input_shape)} but the models take {shape}")
        loader = make_loader(bundle.test, batch_size=64, train=False)
    parity = None
    needs_onnx = any(b != "torch" for b in backends)
    inputs = _sample_inputs(loader, shape)
    limit_err = max(export_parity_limit, max_parity_err or 0.0)
    for art in (original, compressed):
        if art.onnx is None and art.module is not None and (needs_onnx or art is compressed):
            say(f"exporting {art.label} to ONNX …")
            result = _export(art, out, opset=opset, simplify=simplify, parity_inputs=inputs,
                             max_parity_err=limit_err)
            if art is compressed:
                parity = result.parity
    accuracy, latency = ({} if loader is not None else None), {}
    warnings = list(notes)
    for backend in backends:
        runners = [make_runner(backend, _artifact_for(a, backend), threads=threads) for a in (original, compressed)]
        with contextlib.ExitStack() as stack:
            for r in runners:  # loading raises BackendUnavailable (exit 4) naming what is missing
                stack.enter_context(r)
            if loader is not None:
                say(f"[{backend}] accuracy on {bundle.name} …")
                accs = [evaluate(r, loader, limit=limit) for r in runners]
                accuracy[backend] = {"original": accs[0], "compressed": accs[1], "dataset": bundle.name}
            latency[backend] = {}
            for batch in batch_sizes:
                say(f"[{backend}] latency at batch {batch} …")
                x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
                latency[backend][batch] = measure_paired(runners[0], runners[1], x, warmup_s=warmup,
                                                         iterations=iterations, duration_s=duration)
    values = headline_values(accuracy=accuracy, latency=latency, parity=parity)
    gates = evaluate_gates(max_acc_drop=max_acc_drop, min_speedup=min_speedup, max_parity_err=max_parity_err,
                           acc_drop=values["acc_drop"], speedup=values["speedup"], parity_err=values["parity_err"])
    note = None if loader is not None else "no --data given: accuracy not measured"
    report = build_report(
        plan=compressed.plan, params=(original.params, compressed.params), macs=(original.macs, compressed.macs),
        model={"original": original.source, "compressed": compressed.source}, accuracy=accuracy,
        accuracy_note=note, parity=parity, latency=latency, gates=gates, warnings=warnings,
        environment=environment_info(threads=pinned),
    )
    if parity is None:
        report["parity_note"] = "the compressed model was given as ONNX: no torch model to compare it with"
    write_report(report, out, plan=compressed.plan)
    print(headline_table(report))
    raise_if_failed(gates)
    return report


def compress_and_export(
    model: str,
    out: str | Path,
    *,
    format: str = "tucker",
    rank: str = "vbmf",
    weights: str = "default",
    num_classes: int | None = None,
    data: str | None = None,
    finetune_cfg: Any = None,
    compress_options: dict | None = None,
    progress: bool = True,
    **validate_options: Any,
) -> dict[str, Any]:
    """Compress → (fine-tune) → export both → validate → report, into one run folder.

    Args:
        model: zoo name.
        out: run folder: plan.json, compressed.safetensors, original.onnx, compressed.onnx, report.json,
            report.md, plots (and metrics.json / train.log when fine-tuned). Appears whole or not at all.
        format: ``tucker``, ``tt``, ``cp`` or ``svd``.
        rank: rank rule.
        weights: weights of the original (``default`` published, ``random``, a path or run directory).
        num_classes: classifier width.
        data: data spec for fine-tuning and accuracy.
        finetune_cfg: a `tdexport.train.TrainConfig` to fine-tune with (None: no fine-tuning).
        compress_options: passed to `tdexport.plan.compress`.
        progress: progress output.
        **validate_options: passed to `validate` (backends, batch_sizes, gates, …).

    Returns:
        The report dict.
    """
    from . import api

    if finetune_cfg is not None and data is None:
        raise UsageError("--finetune-epochs needs --data to train on")
    failed: GateFailed | None = None
    with checkpoint.atomic_dir(out) as tmp:
        result = api.compress(model, format=format, rank=rank, weights=weights, num_classes=num_classes,
                              **(compress_options or {}))
        checkpoint.write_files(tmp, result.model, plan=result.plan)
        notes = []
        if finetune_cfg is not None:
            from .train import run

            run.finetune(tmp, data=data, cfg=finetune_cfg, out=tmp, progress=progress)
            (tmp / "train_state.pt").unlink(missing_ok=True)  # a finished run has nothing to resume
        comp = resolve(tmp, label="compressed")
        comp.source = str(Path(out))
        orig = resolve(model, label="original", weights=weights, num_classes=num_classes)
        try:
            report = validate(orig, comp, tmp, data=data, progress=progress, notes=notes, **validate_options)
        except GateFailed as exc:
            if not (tmp / "report.json").is_file():
                raise
            failed, report = exc, None
    if failed is not None:
        raise failed
    return report
