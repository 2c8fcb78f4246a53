"""What the measurements ran on: package versions, CPU, threads, and each backend's device and providers.

`environment_info` reports what was *used*: the caller passes, per backend, the facts its loaded runners
give (`tdexport.runtime.Runner.device_info`): the device (``cpu`` or ``cuda:I (GPU name)``), the ONNX
Runtime providers of the session, threads and fixed batch. What onnxruntime merely lists as available is
kept apart, under ``onnxruntime_available_providers``, because listed is not usable (onnxruntime-gpu lists
CUDA and TensorRT where their libraries or the GPU are missing).

GPU facts (`gpu_info`) are probed without failing: the GPU name from torch (or nvidia-smi), the NVIDIA
driver version from nvidia-smi, the CUDA version the driver supports from the driver library itself
(``cuDriverGetVersion``), and the CUDA versions torch and onnxruntime-gpu were built for. On a machine
without an NVIDIA driver the probed ones are None.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._versions import package_version

__all__ = ["GPU_KEYS", "cpu_model", "environment_info", "gpu_info", "package_version"]

# Keys `gpu_info` returns and `environment_info` includes.
GPU_KEYS = ("gpu", "gpu_driver", "cuda_driver", "torch_cuda", "onnxruntime_cuda")
_NVIDIA_SMI_TIMEOUT_S = 10


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------------------- GPU


def _torch_gpu() -> tuple[str | None, str | None]:
    """(name of torch's current CUDA device or None, torch.version.cuda or None); never raises."""
    try:
        import torch
    except ImportError:
        return None, None
    built = getattr(torch.version, "cuda", None)
    try:
        name = torch.cuda.get_device_name(torch.cuda.current_device()) if torch.cuda.is_available() else None
    except (RuntimeError, AssertionError):  # a driver that torch cannot initialise
        name = None
    return name, built


def _nvidia_smi() -> tuple[str | None, str | None]:
    """(first GPU's name, NVIDIA driver version) from ``nvidia-smi --query-gpu=name,driver_version``, or Nones."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, None
    try:
        done = subprocess.run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=_NVIDIA_SMI_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return None, None
    first = next((line.strip() for line in done.stdout.splitlines() if line.strip()), "")
    name, sep, driver = first.rpartition(",")
    if not sep:
        return None, None
    return name.strip() or None, driver.strip() or None


def _cuda_driver_version() -> str | None:
    """CUDA version the installed driver supports (``cuDriverGetVersion``: 1000 * major + 10 * minor), or None."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        try:
            status = lib.cuDriverGetVersion(ctypes.byref(version))
        except AttributeError:
            return None
        if status != 0 or version.value <= 0:
            return None
        return f"{version.value // 1000}.{(version.value % 1000) // 10}"
    return None


def _onnxruntime_cuda() -> str | None:
    """CUDA version onnxruntime-gpu was built for (its ``build_and_package_info``), or None."""
    try:
        from onnxruntime.capi import build_and_package_info as info
    except ImportError:
        return None
    value = getattr(info, "cuda_version", None)
    return str(value) if value else None


def gpu_info() -> dict[str, str | None]:
    """GPU and CUDA facts of this machine; every value is None where it cannot be found, nothing raises.

    Returns:
        ``{"gpu": name of torch's current CUDA device (else nvidia-smi's first GPU), "gpu_driver": NVIDIA
        driver version (nvidia-smi), "cuda_driver": CUDA version the driver supports ("12.4", from
        cuDriverGetVersion in the driver library), "torch_cuda": torch.version.cuda (the CUDA torch was
        built with; None for CPU-only builds), "onnxruntime_cuda": the CUDA onnxruntime-gpu was built with}``.
    """
    torch_name, torch_cuda = _torch_gpu()
    smi_name, driver = _nvidia_smi()
    return {
        "gpu": torch_name or smi_name,
        "gpu_driver": driver,
        "cuda_driver": _cuda_driver_version(),
        "torch_cuda": torch_cuda,
        "onnxruntime_cuda": _onnxruntime_cuda(),
    }


# --------------------------------------------------------------------------------------------- environment


def environment_info(*, threads: Mapping[str, Any] | None = None,
                     backends: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Versions, hardware and what each backend really ran on, for ``report["environment"]``.

    Package versions come from the installed distributions' metadata (onnxruntime is imported only to list
    its available providers and its CUDA build, torch only for its CUDA device); GPU facts come from
    `gpu_info` and are None on a machine without an NVIDIA GPU. What was *used* comes from the
    caller, who has the loaded runners: pass ``{runner.name: runner.device_info()}`` (see
    `tdexport.runtime.Runner.device_info`), e.g. ``{"ort-cpu": {"device": "cpu", "providers":
    ["CPUExecutionProvider"], "threads": 1, "fixed_batch": None}, "torch": {"device": "cpu", "threads": 2}}``.

    Args:
        threads: what was pinned, e.g. the dict `tdexport.validate.latency.pin_threads` returns.
        backends: per backend measured, what its runners used: ``device`` (required: ``cpu`` or ``cuda:I
            (GPU name)``), ``providers`` (ONNX Runtime: the session's providers), and any other JSON-ready
            facts (threads, fixed_batch, gpu); None or empty when nothing was run.

    Returns:
        ``{python, platform, cpu, cpu_count, torch, torchvision, onnx, onnxruntime, tensorrt, gpu, gpu_driver,
        cuda_driver, torch_cuda, onnxruntime_cuda, threads, backends, device, providers,
        onnxruntime_available_providers, device_timing}``: versions are strings or None (GPU keys: see
        `gpu_info`);
        ``backends`` is the argument as plain dicts ({} when none); ``device`` joins the distinct devices
        used (``"cpu"``, ``"cpu, cuda:0 (…)"``; None when no backend is given); ``providers`` lists the ONNX
        Runtime providers used by any backend, first seen first; ``onnxruntime_available_providers`` is
        what this onnxruntime build lists (listed is not usable: see `tdexport.runtime`); ``device_timing``
        lists the backends whose runners timed on the device (their entry has ``timing: "device"``).

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
        **gpu_info(),
        "threads": dict(threads) if threads is not None else None,
        "backends": used,
        "device": ", ".join(devices) if devices else None,
        "providers": providers,
        "onnxruntime_available_providers": available,
        "device_timing": [name for name, entry in used.items() if entry.get("timing") == "device"],
    }
