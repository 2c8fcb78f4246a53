"""Reduced precision in validation: fp16 / int8 ONNX of both models, judged against their own fp32 ONNX.

For every precision other than fp32 asked for (``--precision fp32,fp16,int8``), both exported models are
converted (`tdexport.export.precision.convert`; int8 calibrated on ``--calib-data``) and run on each ONNX
backend beside their fp32 files. A reduced-precision model is judged the way one is deployed: its accuracy on
real data, its top-1 agreement with and the cosine of its logits to the same model in fp32 (not fp32 element
tolerances, which a correct fp16 model fails). Latency of a reduced precision is measured on GPU backends only:
ONNX Runtime's CPU provider has no fast fp16 kernels and runs TensorRT-style symmetric int8 slower than fp32,
so a CPU figure would be an accuracy check dressed as a speed result.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = ["AGREEMENT_SAMPLES", "GPU_BACKENDS", "parse_precisions", "convert_models", "measure_precisions",
           "precision_acc_drop", "judge_precisions"]

AGREEMENT_SAMPLES = 512
"""At most this many images (test split, else the parity inputs) for top-1 agreement and cosine."""
GPU_BACKENDS = ("ort-cuda", "ort-trt", "trt")


def parse_precisions(text: str | Sequence[str] | None) -> list[str]:
    """``"fp32,fp16"`` → ``["fp32", "fp16"]``; fp32 always first (it is the reference), no repeats.

    Raises:
        UsageError: an unknown precision or an empty list (exit 2).
    """
    from ..export.precision import PRECISIONS

    if text is None:
        return ["fp32"]
    items = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown or not items:
        raise UsageError(f"unknown precision {', '.join(unknown) or '(none)'}; choose from {', '.join(PRECISIONS)} "
                         "(comma-separated, e.g. fp32,fp16)")
    if len(set(items)) != len(items):
        raise UsageError(f"--precision lists a precision twice: {','.join(items)}")
    return ["fp32", *[p for p in items if p != "fp32"]]


def convert_models(onnx_files: Mapping[str, Path], out: Path, precisions: Sequence[str], *,
                   calibration: Callable[[], Iterable[np.ndarray]] | None, int8_target: str = "trt",
                   say: Callable[[str], Any] = lambda _m: None) -> dict[str, dict[str, Any]]:
    """Write ``LABEL.PRECISION.onnx`` into ``out`` for every label and reduced precision.

    Args:
        onnx_files: label (``original`` / ``compressed``) → its fp32 ONNX file.
        out: the folder to write into.
        precisions: from `parse_precisions`; fp32 is skipped (its files are the inputs).
        calibration: returns a fresh iterator of float32 batches (N, C, H, W) for int8; None without int8.
        int8_target: ``trt`` or ``cpu`` (see `tdexport.export.precision`).
        say: progress messages.

    Returns:
        precision → label → `PrecisionResult`.

    Raises:
        UsageError: int8 without calibration data.
        GateFailed: a converted model fails its checks (nothing is written for it).
    """
    from ..export.precision import convert

    results: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        if precision == "fp32":
            continue
        if precision == "int8" and calibration is None:
            raise UsageError("--precision int8 needs calibration images: pass --calib-data SPEC (or --data)")
        results[precision] = {}
        for label, src in onnx_files.items():
            say(f"converting {label} to {precision}" + (f" (int8 target {int8_target})" if precision == "int8" else "")
                + " …")
            results[precision][label] = convert(
                src, out / f"{label}.{precision}.onnx", precision,
                calibration=calibration() if precision == "int8" else None, int8_target=int8_target)
    return results


def _logits(runner: Any, images: np.ndarray) -> np.ndarray:
    from .accuracy import infer_batches

    return np.asarray(infer_batches(runner, images), dtype=np.float32)


def _agreement_images(loader: Iterable[tuple[Any, Any]] | None, fallback: np.ndarray) -> np.ndarray:
    if loader is None:
        return fallback
    chunks, n = [], 0
    for images, _ in loader:
        arr = np.asarray(images.numpy() if hasattr(images, "numpy") else images, dtype=np.float32)
        chunks.append(arr[: AGREEMENT_SAMPLES - n])
        n += len(chunks[-1])
        if n >= AGREEMENT_SAMPLES:
            break
    return np.concatenate(chunks) if chunks else fallback


def measure_precisions(
    converted: Mapping[str, Mapping[str, Any]],
    fp32_files: Mapping[str, Path],
    backends: Sequence[str],
    *,
    make_runner: Callable[..., Any],
    evaluate_fn: Callable[[Any], Any] | None,
    latency_fn: Callable[[Any, Any, int], Any],
    batches: Sequence[int],
    loader: Iterable[tuple[Any, Any]] | None,
    fallback_inputs: np.ndarray,
    fp32_accuracy: Mapping[str, Mapping[str, Any]] | None,
    threads: int | None = None,
    int8_target: str = "trt",
    say: Callable[[str], Any] = lambda _m: None,
) -> dict[str, Any]:
    """Accuracy, agreement with fp32 and (GPU only) latency of every converted model on every ONNX backend.

    Args:
        converted: from `convert_models`.
        fp32_files: label → the fp32 ONNX file (the agreement reference).
        backends: backends of the run; ``torch`` is skipped (it runs the fp32 module).
        make_runner: ``make_runner(backend, path, threads=...)`` (`tdexport.runtime.make_runner`).
        evaluate_fn: runner → `Accuracy` on the test data; None without data.
        latency_fn: (original runner, compressed runner, batch) → `PairedLatency`.
        batches: latency batch sizes.
        loader: the test loader for the agreement images; None: ``fallback_inputs``.
        fallback_inputs: images (N, C, H, W) when there is no data (seeded noise: agreement only).
        fp32_accuracy: the run's fp32 accuracy block (backend → {original, compressed}) for the drops.
        threads: intra-op threads.
        int8_target: recorded with int8 results.
        say: progress messages.

    Returns:
        The report's ``precision`` block: ``{"reference": "fp32", "agreement_inputs", "note",
        PRECISION: {"int8_target", "files": {label: PrecisionResult.to_dict()}, "backends": {backend:
        {"original": {top1, top5, samples, top1_agreement, cosine, min_cosine, max_abs}, "compressed": ...,
        "top1_drop": original fp32 top-1 − compressed top-1 at this precision (points), "latency":
        {"BATCH": PairedLatency dict} | None}}}}``.
    """
    images = _agreement_images(loader, fallback_inputs)
    onnx_backends = [b for b in backends if b != "torch"]
    block: dict[str, Any] = {
        "reference": "fp32",
        "agreement_inputs": (f"{len(images)} test images" if loader is not None
                             else f"{len(images)} seeded N(0, 1) images (no --data: agreement only)"),
        "note": ("reduced precision is judged by accuracy, top-1 agreement and logits cosine against the same "
                 "model in fp32; its latency is measured on GPU backends only (ONNX Runtime CPU has no fast fp16 "
                 "or symmetric-int8 kernels, so CPU timings are not a speed result)"),
    }
    from ..export.precision import agreement

    for precision, results in converted.items():
        entry: dict[str, Any] = {"int8_target": int8_target if precision == "int8" else None,
                                 "files": {label: r.to_dict() for label, r in results.items()}, "backends": {}}
        for backend in onnx_backends:
            say(f"[{backend}] {precision}: accuracy and agreement with fp32 …")
            sides: dict[str, dict[str, Any]] = {}
            runners = {}
            with contextlib.ExitStack() as stack:
                for label, result in results.items():
                    ref = stack.enter_context(make_runner(backend, fp32_files[label], threads=threads))
                    low = stack.enter_context(make_runner(backend, result.path, threads=threads))
                    runners[label] = low
                    side = dict(agreement(_logits(ref, images), _logits(low, images)))
                    if evaluate_fn is not None:
                        acc = evaluate_fn(low)
                        side.update(top1=acc.top1, top5=acc.top5, samples=acc.samples)
                    sides[label] = side
                latency = None
                if backend in GPU_BACKENDS:
                    latency = {}
                    for batch in batches:
                        say(f"[{backend}] {precision} latency at batch {batch} …")
                        latency[str(batch)] = latency_fn(runners["original"], runners["compressed"], batch)
            base = (fp32_accuracy or {}).get(backend)
            drop = None
            if base is not None and "top1" in sides["compressed"]:
                drop = _top1(base["original"]) - sides["compressed"]["top1"]
            entry["backends"][backend] = {**sides, "top1_drop": drop, "latency": latency}
        block[precision] = entry
    return block


def _top1(acc: Any) -> float:
    return float(acc["top1"] if isinstance(acc, Mapping) else acc.top1)


def precision_acc_drop(block: Mapping[str, Any] | None) -> tuple[float, str] | None:
    """The largest top-1 drop (original fp32 − compressed at a reduced precision) in ``block`` and where."""
    worst = None
    for precision, entry in (block or {}).items():
        if not isinstance(entry, Mapping) or "backends" not in entry:
            continue
        for backend, result in entry["backends"].items():
            drop = result.get("top1_drop")
            if drop is not None and (worst is None or drop > worst[0]):
                worst = (float(drop), f"{precision} on {backend}")
    return worst


def judge_precisions(arts: Sequence[Any], out: Path, precisions: Sequence[str], backends: Sequence[str],
                        batches: Sequence[int], loader: Any, inputs: Any, accuracy: Any, *,
                        data: str | None, calib_data: str | None, calib_size: int, int8_target: str,
                        threads: int | None, limit: int | None, classes: Any, bundle: Any,
                        timing: tuple[float, int, float], say: Callable[[str], Any]) -> dict[str, Any]:
    """Convert both models' fp32 ONNX files to each reduced precision and measure them, for `validate_into`.

    ``arts`` are the two `tdexport.artifacts.Artifact` (original, compressed) with their ``onnx`` files;
    ``inputs`` the parity images (N, C, H, W) used for agreement without data; ``accuracy`` the fp32 block;
    ``timing`` (warm-up s, iterations, duration s). Returns the report's ``precision`` block
    (`measure_precisions`).
    """
    from ..export.precision import calibration_batches
    from ..runtime import make_runner
    from .accuracy import evaluate
    from .latency import measure_paired

    shape = arts[1].input_shape
    files = {a.label: a.onnx for a in arts}
    spec = calib_data or data
    calibration = None
    if spec is not None:
        def calibration():
            return calibration_batches(spec, calib_size, input_shape=shape)
    converted = convert_models(files, out, precisions, calibration=calibration, int8_target=int8_target, say=say)
    evaluate_fn = None
    if loader is not None:
        def evaluate_fn(runner):
            return evaluate(runner, loader, limit=limit, classes=classes, expected_classes=bundle.num_classes)
    warmup, iterations, duration = timing

    def latency_fn(a, b, batch):
        x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        return measure_paired(a, b, x, warmup_s=warmup, iterations=iterations, duration_s=duration).to_dict()

    return measure_precisions(converted, files, backends, make_runner=make_runner, evaluate_fn=evaluate_fn,
                              latency_fn=latency_fn, batches=batches, loader=loader,
                              fallback_inputs=inputs.numpy(), fp32_accuracy=accuracy, threads=threads,
                              int8_target=int8_target, say=say)
