"""The runtime a cost is measured on (`Target`), parsed from ``BACKEND[:BATCH]``, and its fingerprint.

A timing is only reusable on the same software and hardware: `fingerprint` lists everything that changes
one (backend and its session settings, CPU model, GPU name, threads, library versions, precision) and
the cost cache keys every measurement by it.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from typing import Any

from .._versions import package_version as _version
from ..errors import BackendUnavailable, UsageError
from ..validate.environment import cpu_model as _cpu_model

__all__ = ["TARGET_BACKENDS", "PRECISIONS", "Target", "parse_target", "fingerprint"]

TARGET_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt")
PRECISIONS = ("fp32",)
_FORM = "BACKEND[:BATCH] with BACKEND one of " + ", ".join(TARGET_BACKENDS) + " and BATCH an integer ≥ 1"

# Session settings `tdexport.runtime.OrtRunner` uses (intra-op threads aside); part of every fingerprint so a
# change there invalidates cached timings. Bump when the runner or the graph builder changes what is timed.
_RUNNER_SETTINGS = {"inter_op_threads": 1, "execution_mode": "sequential", "graph_optimization": "all",
                    "onnx_opset": 17, "cost_model": 1}


@dataclass(frozen=True)
class Target:
    """Where layer costs are measured.

    Attributes:
        backend: one of `TARGET_BACKENDS` (the runners of `tdexport.runtime`).
        batch: images per inference; every cost is the time of one call at this batch, in ms.
        precision: arithmetic precision of the timed graphs; only ``fp32`` today.
        threads: intra-op threads of CPU sessions; None keeps the runtime's default.
    """

    backend: str
    batch: int = 1
    precision: str = "fp32"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in TARGET_BACKENDS:
            raise UsageError(f"unknown target backend '{self.backend}'; a target is {_FORM}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise UsageError(f"target batch must be an integer ≥ 1, got {self.batch!r}; a target is {_FORM}")
        if self.precision not in PRECISIONS:
            raise UsageError(f"target precision '{self.precision}' is not measured; choose one of: "
                             f"{', '.join(PRECISIONS)}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"target threads must be at least 1, got {self.threads}")

    def __str__(self) -> str:
        return f"{self.backend}:{self.batch}"


def parse_target(text: str, *, threads: int | None = None) -> Target:
    """Parse ``BACKEND[:BATCH]`` (e.g. ``ort-cpu``, ``ort-cpu:32``) into a `Target` (batch 1 when omitted).

    Args:
        text: the ``--target`` value.
        threads: intra-op threads for CPU sessions (None: the runtime's default).

    Raises:
        UsageError: an unknown backend or a batch that is not an integer ≥ 1; the message names the form.
    """
    raw = str(text).strip()
    backend, sep, batch_text = raw.partition(":")
    backend = backend.strip().lower()
    if not backend or (sep and not batch_text.strip()):
        raise UsageError(f"malformed target '{text}'; expected {_FORM}")
    batch = 1
    if sep:
        try:
            batch = int(batch_text.strip())
        except ValueError:
            raise UsageError(f"malformed target '{text}': batch '{batch_text}' is not an integer; "
                             f"expected {_FORM}") from None
    if backend not in TARGET_BACKENDS:
        raise UsageError(f"malformed target '{text}': unknown backend '{backend}'; expected {_FORM}")
    if batch < 1:
        raise UsageError(f"malformed target '{text}': batch must be ≥ 1; expected {_FORM}")
    return Target(backend, batch, threads=threads)


@functools.lru_cache(maxsize=8)
def _gpu_name(backend: str) -> str | None:
    """Device the backend's sessions run on (``cuda:I (name)``), or None for CPU backends / no GPU."""
    if backend == "ort-cpu":
        return None
    if backend == "trt":
        import torch

        return torch.cuda.get_device_name(torch.cuda.current_device()) if torch.cuda.is_available() else None
    from ..runtime._backends import _identity_model_bytes
    from ..runtime._ort import OrtRunner

    runner = OrtRunner(_identity_model_bytes(), provider=backend.removeprefix("ort-"))
    try:
        runner.load()
        return str(runner.device_info()["device"])
    except BackendUnavailable:
        return None
    finally:
        runner.close()


@functools.lru_cache(maxsize=1)
def _host() -> dict[str, Any]:
    """Facts that cannot change while the process runs (read once: a cache key is computed per graph)."""
    return {"cpu": _cpu_model(), "machine": platform.machine(),
            "onnxruntime": _version("onnxruntime", "onnxruntime-gpu"), "onnx": _version("onnx"),
            "torch": _version("torch"), "tensorrt": _version("tensorrt")}


def fingerprint(target: Target) -> dict[str, Any]:
    """Everything besides the layer that changes a timing on ``target``, JSON-ready.

    Returns:
        ``{backend, precision, runner (session settings and cost-model version), cpu, machine, gpu,
        threads (requested; None = runtime default), cpus_available (CPU affinity), omp_num_threads,
        onnxruntime, onnx, torch, tensorrt (None unless the backend uses it)}``. The batch is not in it:
        cache keys add it separately.
    """
    host = _host()
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "backend": target.backend,
        "precision": target.precision,
        "runner": dict(_RUNNER_SETTINGS),
        "cpu": host["cpu"],
        "machine": host["machine"],
        "gpu": _gpu_name(target.backend),
        "threads": target.threads,
        # With threads None, ONNX Runtime sizes its pool from the cores it may use, so those count too.
        "cpus_available": len(affinity(0)) if affinity is not None else os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "onnxruntime": host["onnxruntime"],
        "onnx": host["onnx"],
        "torch": host["torch"],
        "tensorrt": host["tensorrt"] if target.backend in ("trt", "ort-trt") else None,
    }
