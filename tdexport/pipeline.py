"""Orchestration of `validate`: two models side by side, exported, measured, reported and gated.

Stages, each owned by its own module: export (`export.onnx`, parity-checked) → accuracy / parity /
latency per backend (`runtime` runners measured by `validate.*`) → gates and report (`validate.gates`,
`validate.report`). What can be checked before measuring is checked first (input shapes, class counts,
fixed batches, the data), so a mismatch costs seconds and never yields a verdict. A report folder
appears whole or not at all; a failed gate still writes the report, then exits 3.
`tdexport.compress_and_export` runs the whole flow, compression and fine-tuning included.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import atomic_dir
from .artifacts import Artifact, logit_width, resolve
from .errors import GateFailed, UsageError

__all__ = ["ORIGINAL_ONNX", "COMPRESSED_ONNX", "Artifact", "resolve", "validate", "validate_into", "check_backends",
           "check_data_fits", "report_despite_gate", "say_fn"]

ORIGINAL_ONNX = "original.onnx"
COMPRESSED_ONNX = "compressed.onnx"
PARITY_SAMPLES = 8


def say_fn(progress: bool) -> Callable[[str], None]:
    """A progress printer to stderr, or a no-op when ``progress`` is False."""
    return (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)


def check_backends(backends: Sequence[str]) -> None:
    """Fail fast (`BackendUnavailable`, exit 4) when a requested backend cannot run on this machine."""
    from .errors import BackendUnavailable
    from .runtime import available_backends

    if all(b in ("torch", "ort-cpu") for b in backends):
        return  # always present; skip probing the GPU providers
    status = available_backends()
    missing = [f"{b}: {status[b]}" for b in backends if status.get(b) is not None]
    if missing:
        raise BackendUnavailable("; ".join(missing))


def check_data_fits(info: Any, data: str, shape: tuple[int, int, int], widths: dict[str, int]) -> None:
    """Refuse data whose images or label space do not fit the models (exit 2): a wrong verdict otherwise.

    Args:
        info: the data set's `tdexport.data.DataInfo` (name, input shape, label-space width, classes present).
        data: the spec as the user wrote it, for the message.
        shape: (C, H, W) the models take.
        widths: ``{label: logit width}`` of each model.
    """
    if tuple(info.input_shape) != tuple(shape):
        raise UsageError(f"--data {data} gives images {tuple(info.input_shape)} but the models take {shape}")
    for label, width in widths.items():
        if width == info.num_classes:
            continue
        subset = ""
        if info.classes_present is not None:
            subset = (f" (an ImageNet-1k subset of {len(info.classes_present)} classes, labelled in the 1000-class "
                      f"ImageNet space; use folder:DIR for a {len(info.classes_present)}-class model)")
        raise UsageError(f"the {label} model has {width} output classes but --data {info.name} has "
                         f"{info.num_classes}{subset}; accuracy would compare unrelated labels")


def _load_checked_data(data: str, shape: tuple[int, int, int], widths: dict[str, int]):
    """Load the evaluation data after checking it fits both models (see `_check_data_fits`)."""
    from .data import load_data

    bundle = load_data(data, augment=False)
    check_data_fits(bundle.info, data, shape, widths)
    return bundle


def _sample_inputs(loader, shape: tuple[int, int, int], n: int) -> torch.Tensor:
    """``n`` real images from the data (parity on real inputs; repeated when there are fewer), else seeded N(0, 1)."""
    if loader is None:
        return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1234))
    images = []
    for batch, _ in loader:
        images.append(batch.float())
        if sum(len(b) for b in images) >= n:
            break
    x = torch.cat(images)
    return x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n]


def _export(art: Artifact, out: Path, *, opset: int, simplify: bool, parity_inputs: torch.Tensor,
            max_parity_err: float) -> None:
    from .export.onnx import export_onnx

    path = out / (ORIGINAL_ONNX if art.label == "original" else COMPRESSED_ONNX)
    export_onnx(art.module, path, input_shape=art.input_shape, opset=opset, simplify=simplify,
                parity_inputs=parity_inputs, max_parity_err=max_parity_err)
    art.onnx = path


def _artifact_for(art: Artifact, backend: str, engines: Mapping[str, Mapping[int, Path]] | None = None):
    if backend == "trt" and engines is not None:
        per_batch = engines[art.label]
        return per_batch[max(per_batch)]  # tuned for the largest latency batch; runs accuracy and parity
    if backend == "torch":
        if art.module is None:
            raise UsageError(f"backend torch needs a torch model, but {art.label} is an ONNX file ({art.source})")
        return art.module
    return art.onnx


def _batch_runners(backend: str, batch: int, runners: Sequence[Any], arts: Sequence[Artifact],
                   engines: Mapping[str, Mapping[int, Path]] | None, threads: int | None,
                   stack: contextlib.ExitStack) -> Sequence[Any]:
    """The runners timing ``batch``: on trt the engines tuned for that batch, else the backend's runners."""
    from .runtime import make_runner

    if backend != "trt" or engines is None:
        return runners
    paths = [engines[a.label].get(batch) for a in arts]
    current = [_artifact_for(a, backend, engines) for a in arts]
    if any(p is None for p in paths) or paths == current:
        return runners
    return [stack.enter_context(make_runner("trt", p, threads=threads)) for p in paths]


def _latency_batches(batch_sizes: Sequence[int] | None, arts: Sequence[Artifact]) -> list[int]:
    fixed = {a.fixed_batch for a in arts if a.fixed_batch is not None}
    if len(fixed) > 1:
        raise UsageError(f"the two ONNX files have different fixed batch sizes {sorted(fixed)}; export both with "
                         "the same --batch or with a dynamic batch")
    if not fixed:
        return list(batch_sizes or (1, 32))
    (n,) = fixed
    if batch_sizes is None:
        return [n]
    if any(b != n for b in batch_sizes):
        names = ", ".join(a.source for a in arts if a.fixed_batch is not None)
        raise UsageError(f"{names} only run(s) batch {n}; --batch-sizes {','.join(map(str, batch_sizes))} "
                         f"needs a dynamic-batch export (or pass --batch-sizes {n})")
    return [n]


def validate_into(
    original: Artifact,
    compressed: Artifact,
    out: str | Path,
    *,
    data: str | None = None,
    limit: int | None = None,
    backends: Sequence[str] = ("ort-cpu",),
    batch_sizes: Sequence[int] | None = None,
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
    precisions: Sequence[str] = ("fp32",),
    calib_data: str | None = None,
    calib_size: int = 256,
    int8_target: str = "trt",
) -> dict[str, Any]:
    """Export what needs exporting, measure both models, write the report into ``out`` (an existing folder).

    Use `validate` for a folder that should appear whole; this writes into ``out`` directly.

    Args:
        original: the reference model.
        compressed: the model judged against it.
        out: folder for original.onnx / compressed.onnx (when exported), report.json, report.md, plots.
        data: data spec for accuracy (and real parity inputs); None: accuracy is null with a note.
        limit: evaluate only the first N test images.
        backends: runners to measure, from `tdexport.runtime.BACKENDS`.
        batch_sizes: latency batch sizes; None: 1 and 32, or the fixed batch of a fixed-batch ONNX file.
        iterations: minimum timed runs per model and batch size.
        duration: minimum timed seconds per batch size.
        warmup: warm-up seconds per model before timing.
        threads: intra-op threads pinned for every runner (default: the backends' defaults).
        opset: ONNX opset for exports.
        simplify: try onnxslim on exports.
        max_acc_drop: gate: top-1 points lost (original − compressed).
        min_speedup: gate: headline speedup (first backend, largest batch; median of paired round ratios).
        max_parity_err: gate: the largest relative L2 error, over the backends run, between the compressed
            model's logits on a backend and PyTorch fp32 eager logits of the same model on the same inputs.
        export_parity_limit: parity an export must meet to be written at all (exit 3 before any report).
        progress: progress messages on stderr.
        notes: warnings from earlier stages, listed first in the report.
        precisions: ``fp32`` (always measured, the reference) plus ``fp16`` / ``int8``: both models are also
            converted (``LABEL.PRECISION.onnx``) and judged against their fp32 selves
            (`tdexport.validate.reduced`); ``max_acc_drop`` then also holds for every precision.
        calib_data: data spec of the int8 calibration images (default: ``data``, its train split).
        calib_size: calibration images for int8.
        int8_target: ``trt`` (TensorRT's symmetric Q/DQ) or ``cpu`` (ONNX Runtime's uint8 activations).

    Returns:
        The report dict (also written as report.json).

    Raises:
        UsageError: models that do not fit each other or the data (input shape, class count, fixed batch).
        GateFailed: a gate failed (after the report was written) or an export failed parity (before).
        BackendUnavailable: a requested backend cannot run here.
    """
    from .data import make_loader
    from .runtime import make_runner
    from .validate.accuracy import evaluate
    from .validate.gates import evaluate_gates, raise_if_failed
    from .validate.latency import measure_paired, pin_threads
    from .validate.report import build_report, environment_info, headline_table, headline_values, write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = say_fn(progress)
    arts = (original, compressed)
    if original.input_shape != compressed.input_shape:
        raise UsageError(f"input shapes differ: original {original.input_shape}, compressed {compressed.input_shape}")
    shape = compressed.input_shape
    batches = _latency_batches(batch_sizes, arts)
    widths = {a.label: logit_width(a) for a in arts}
    if widths["original"] != widths["compressed"]:
        raise UsageError(f"the original model has {widths['original']} output classes, the compressed one "
                         f"{widths['compressed']}: they are not the same classifier")
    pinned = pin_threads(threads)
    loader = bundle = None
    if data is not None:
        bundle = _load_checked_data(data, shape, widths)
        loader = make_loader(bundle.test, batch_size=64, train=False)
    inputs = _sample_inputs(loader, shape, PARITY_SAMPLES)
    from .validate.reduced import parse_precisions

    precisions = parse_precisions(list(precisions))
    reduced = len(precisions) > 1
    if reduced and not any(b != "torch" for b in backends):
        raise UsageError(f"--precision {','.join(precisions[1:])} runs ONNX models: add an ONNX backend "
                         "(e.g. --backend ort-cpu)")
    if "int8" in precisions and calib_data is None and data is None:
        raise UsageError("--precision int8 needs calibration images: pass --calib-data SPEC (or --data)")
    for art in arts:
        if art.onnx is None and art.module is not None and any(b != "torch" for b in backends):
            say(f"exporting {art.label} to ONNX …")
            _export(art, out, opset=opset, simplify=simplify, parity_inputs=inputs, max_parity_err=export_parity_limit)
    accuracy, latency, parity, used = ({} if loader is not None else None), {}, {}, {}
    classes = bundle.classes_present if bundle is not None else None
    engines = None
    if "trt" in backends:
        from .engine import run_engines

        # Engine files in the run folder, one per model and latency batch (tuned for it), reused when current.
        engines = run_engines({a.label: a.onnx for a in arts}, out, batches, say=say)
    for backend in backends:
        # The torch backend runs where a GPU deployment would (CUDA when present); parity still uses CPU fp32.
        device = ("cuda" if torch.cuda.is_available() else "cpu") if backend == "torch" else None
        runners = [make_runner(backend, _artifact_for(a, backend, engines), threads=threads, device=device)
                   for a in arts]
        with contextlib.ExitStack() as stack:
            for r in runners:  # loading raises BackendUnavailable (exit 4) naming what is missing
                stack.enter_context(r)
            used[backend] = runners[1].device_info()
            if backend != "torch":
                say(f"[{backend}] parity against PyTorch fp32 …")
                parity[backend] = {a.label: _parity_vs_torch(a, r, inputs) for a, r in zip(arts, runners, strict=True)}
            if loader is not None:
                say(f"[{backend}] accuracy on {bundle.name} …")
                accs = [evaluate(r, loader, limit=limit, classes=classes, expected_classes=bundle.num_classes)
                        for r in runners]
                accuracy[backend] = {"original": accs[0], "compressed": accs[1], "dataset": bundle.name}
            latency[backend] = {}
            for batch in batches:
                say(f"[{backend}] latency at batch {batch} …")
                x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
                with contextlib.ExitStack() as per_batch:
                    pair = _batch_runners(backend, batch, runners, arts, engines, threads, per_batch)
                    latency[backend][batch] = measure_paired(pair[0], pair[1], x, warmup_s=warmup,
                                                             iterations=iterations, duration_s=duration)
    precision_block = None
    if reduced:
        from .validate.reduced import judge_precisions

        precision_block = judge_precisions(arts, out, precisions, backends, batches, loader, inputs, accuracy,
                                              data=data, calib_data=calib_data, calib_size=calib_size,
                                              int8_target=int8_target, threads=threads, limit=limit,
                                              classes=classes, bundle=bundle, timing=(warmup, iterations, duration),
                                              say=say)
    values = headline_values(accuracy=accuracy, latency=latency, parity=parity or None)
    acc_drop = values["acc_drop"]
    from .validate.reduced import precision_acc_drop

    worst = precision_acc_drop(precision_block)
    if worst is not None and (acc_drop is None or worst[0] > acc_drop):
        acc_drop = worst[0]
    gates = evaluate_gates(max_acc_drop=max_acc_drop, min_speedup=min_speedup, max_parity_err=max_parity_err,
                           acc_drop=acc_drop, speedup=values["speedup"], parity_err=values["parity_err"])
    note = None if loader is not None else "no --data given: accuracy not measured"
    report = build_report(
        plan=compressed.plan, params=(original.params, compressed.params), macs=(original.macs, compressed.macs),
        model={"original": original.source, "compressed": compressed.source}, accuracy=accuracy,
        accuracy_note=note, parity=parity or None, parity_note=_parity_note(arts, backends),
        parity_inputs=(f"the first {len(inputs)} test images of {bundle.name}" if bundle is not None
                       else f"{len(inputs)} seeded N(0, 1) images"),
        latency=latency, gates=gates, warnings=list(notes), environment=environment_info(threads=pinned, backends=used),
        precision=precision_block,
    )
    write_report(report, out, plan=compressed.plan)
    print(headline_table(report))
    raise_if_failed(gates)
    return report


def _parity_vs_torch(art: Artifact, runner: Any, inputs: torch.Tensor):
    """The artifact's logits on ``runner`` vs PyTorch fp32 eager of its own module (None without a module)."""
    from .runtime import TorchRunner
    from .validate.parity import compare_runners

    if art.module is None:
        return None
    with TorchRunner(art.module) as reference:
        return compare_runners(reference, runner, inputs)


def _parity_note(arts: Sequence[Artifact], backends: Sequence[str]) -> str | None:
    if all(b == "torch" for b in backends):
        return "only the torch backend was run: there is no exported model to compare with PyTorch"
    onnx_only = [a.label for a in arts if a.module is None]
    if onnx_only:
        return (f"{' and '.join(onnx_only)} given as ONNX: there is no PyTorch model to compare "
                f"{'them' if len(onnx_only) > 1 else 'it'} with")
    return None


@contextlib.contextmanager
def report_despite_gate(folder: Path) -> Iterator[list[GateFailed]]:
    """Let a failed gate (exit 3) through only after the folder it reports into is published.

    A gate that fails after report.json exists is a finished run with a negative verdict: the folder must
    appear. A GateFailed before the report (an export that fails parity) is a failed run.
    """
    failed: list[GateFailed] = []
    try:
        yield failed
    except GateFailed as exc:
        if not (folder / "report.json").is_file():
            raise
        failed.append(exc)


def validate(original: Artifact, compressed: Artifact, out: str | Path, *, overwrite: bool = False,
             **options: Any) -> dict[str, Any]:
    """`validate_into` a folder that appears whole or not at all.

    Args:
        original: the reference model.
        compressed: the model judged against it.
        out: report folder; an existing non-empty one is refused unless ``overwrite`` (then replaced whole).
        overwrite: replace an existing ``out``.
        **options: see `validate_into`.

    Raises:
        UsageError, GateFailed, BackendUnavailable: as `validate_into`; a failed gate is raised after the
            folder is published.
    """
    with atomic_dir(out, overwrite=overwrite) as tmp, report_despite_gate(tmp) as failed:
        report = validate_into(original, compressed, tmp, **options)
    if failed:
        raise failed[0]
    return report

