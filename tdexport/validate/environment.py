"""What the measurements ran on: package versions, CPU, threads, and each backend's device and providers.

`environment_info` reports what was *used*: the caller passes, per backend, the facts its loaded runners
give (`tdexport.runtime.Runner.device_info`): the device (``cpu`` or ``cuda:I (GPU name)``), the ONNX
Runtime providers of the session, threads and fixed batch. What onnxruntime merely lists as available is
kept apart, under ``onnxruntime_available_providers``, because listed is not usable (onnxruntime-gpu lists
CUDA and TensorRT where their libraries or the GPU are missing).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["cpu_model", "environment_info", "package_version"]


def package_version(*distributions: str) -> str | None:
    """Installed version of the first of ``distributions`` found, or None."""
    for dist in distributions:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------------------------- environment


def environment_info(*, threads: Mapping[str, Any] | None = None,
                     backends: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Versions, hardware and what each backend really ran on, for ``report["environment"]``.

    Package versions come from the installed distributions' metadata, so nothing heavy is imported
    (onnxruntime is imported only to list its available providers). What was *used* comes from the
    caller, who has the loaded runners: pass ``{runner.name: runner.device_info()}`` (see
    `tdexport.runtime.Runner.device_info`), e.g. ``{"ort-cpu": {"device": "cpu", "providers":
    ["CPUExecutionProvider"], "threads": 1, "fixed_batch": None}, "torch": {"device": "cpu", "threads": 2}}``.

    Args:
        threads: what was pinned, e.g. the dict `tdexport.validate.latency.pin_threads` returns.
        backends: per backend measured, what its runners used: ``device`` (required: ``cpu`` or ``cuda:I
            (GPU name)``), ``providers`` (ONNX Runtime: the session's providers), and any other JSON-ready
            facts (threads, fixed_batch, gpu); None or empty when nothing was run.

    Returns:
        ``{python, platform, cpu, cpu_count, torch, torchvision, onnx, onnxruntime, tensorrt, threads,
        backends, device, providers, onnxruntime_available_providers}``: versions are strings or None;
        ``backends`` is the argument as plain dicts ({} when none); ``device`` joins the distinct devices
        used (``"cpu"``, ``"cpu, cuda:0 (…)"``; None when no backend is given); ``providers`` lists the ONNX
        Runtime providers used by any backend, first seen first; ``onnxruntime_available_providers`` is
        what this onnxruntime build lists (listed is not usable: see `tdexport.runtime`).

    Raises:
        ValueError: a backend entry without a ``device`` string.
    """
    used: dict[str, dict[str, Any]] = {}
    for name, info in (backends or {}).items():
        entry = dict(info)
        if not isinstance(entry.get("device"), str):
            raise ValueError(f"environment_info: backend {name!r} needs a 'device' string, got {entry}")
        if "providers" in entry:
            entry["providers"] = list(entry["providers"])
        used[str(name)] = entry
    devices = list(dict.fromkeys(entry["device"] for entry in used.values()))
    providers = list(dict.fromkeys(p for entry in used.values() for p in entry.get("providers", ())))
    try:
        import onnxruntime

        available = list(onnxruntime.get_available_providers())
    except ImportError:
        available = []
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch": package_version("torch"),
        "torchvision": package_version("torchvision"),
        "onnx": package_version("onnx"),
        "onnxruntime": package_version("onnxruntime-gpu", "onnxruntime"),
        "tensorrt": package_version("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
        "threads": dict(threads) if threads is not None else None,
        "backends": used,
        "device": ", ".join(devices) if devices else None,
        "providers": providers,
        "onnxruntime_available_providers": available,
    }
