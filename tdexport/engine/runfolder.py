"""The TensorRT engines of a validation run: one per model and latency batch, written into the run folder.

A TensorRT engine is tuned for its profile's ``opt`` batch, so timing batch 1 on an engine tuned for 32 (or
the reverse) under-reports what a deployment built for that batch gets. Each model therefore gets one engine
per latency batch N, with profile (1, N, M), M the largest batch the run feeds it (latency batches and the
accuracy loader's); the engine for the largest latency batch is the model's ``LABEL.engine`` and also runs
accuracy and parity, the others are ``LABEL.bN.engine``. A fixed-batch ONNX model gets one engine at its
batch. Engines whose sidecar still matches (`engine_is_current`) are reused; one timing cache file in the
folder speeds up the builds that remain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .build import build_engine
from .onnxinfo import inspect_onnx
from .sidecar import engine_is_current

__all__ = ["TIMING_CACHE_NAME", "engine_name", "run_engines"]

TIMING_CACHE_NAME = "trt-timing.cache"


def engine_name(label: str, batch: int, largest: int) -> str:
    """``LABEL.engine`` for the largest latency batch, ``LABEL.bN.engine`` for another batch N."""
    return f"{label}.engine" if batch == largest else f"{label}.b{batch}.engine"


def run_engines(onnx_files: Mapping[str, Path], out: Path, batches: Sequence[int], *, max_batch: int = 64,
                say: Callable[[str], Any] = lambda _m: None, **build_options: Any) -> dict[str, dict[int, Path]]:
    """Build (or reuse) the engines of every model for every latency batch in ``out``.

    Args:
        onnx_files: label (``original`` / ``compressed``) → its ONNX file (dynamic or fixed batch).
        out: the run folder; engines, their ``.json`` sidecars and the timing cache go there.
        batches: the latency batch sizes (≥ 1).
        max_batch: the largest batch any engine must take besides them (the accuracy loader's).
        say: progress messages.
        **build_options: passed to `build_engine` (``workspace_gib``, ``opt_level``, ``tf32``).

    Returns:
        label → batch → engine file; for a fixed-batch model, its one batch.

    Raises:
        BackendUnavailable, UsageError, EngineBuildError: see `build_engine`.
    """
    largest = max(batches)
    cache = out / TIMING_CACHE_NAME
    engines: dict[str, dict[int, Path]] = {}
    for label, onnx_file in onnx_files.items():
        fixed = inspect_onnx(onnx_file).input_shape[0]
        wanted = [fixed] if fixed is not None else sorted(set(batches))
        engines[label] = {}
        for batch in wanted:
            path = out / engine_name(label, batch, fixed or largest)
            profile = ({} if fixed is not None else
                       {"min_batch": 1, "opt_batch": batch, "max_batch": max(max_batch, largest)})
            if engine_is_current(path, onnx_file, **profile, **build_options):
                say(f"[trt] reusing {path.name}")
            else:
                say(f"[trt] building {path.name} (opt batch {batch}) …")
                build_engine(onnx_file, path, timing_cache=cache, **profile, **build_options)
            engines[label][batch] = path
    return engines
