"""What TensorRT needs from this process: the tensorrt module, a CUDA device, one logger, a runtime.

tensorrt is imported lazily, so ``import tdexport.engine`` works without it. Every failure to get one of
these pieces raises `BackendUnavailable` (exit 4) with one line that names the missing piece.

TensorRT treats the logger handed to a Builder or Runtime as process-wide (every Builder and Runtime of a
process must share it, and it must outlive them), so there is exactly one: `trt_logger`. It forwards
TensorRT's messages to the Python logger ``tdexport.engine`` and keeps the recent error messages, so a
failure can quote what TensorRT said (`LogCapture`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .._lazy import require
from ..errors import BackendUnavailable

__all__ = ["GpuInfo", "LogCapture", "cuda_device", "create_runtime", "probe", "tensorrt", "trt_logger",
           "trt_major"]

_log = logging.getLogger("tdexport.engine")
_KEEP = 200  # error messages remembered; a failing build logs a handful


@dataclass(frozen=True)
class GpuInfo:
    """The CUDA device TensorRT builds for and runs on (torch's current device).

    Attributes:
        index: CUDA device index.
        name: device name, e.g. ``NVIDIA A100-SXM4-40GB``.
        compute_capability: ``"major.minor"``, e.g. ``"8.0"``; engines only run on the same capability.
    """

    index: int
    name: str
    compute_capability: str


def tensorrt() -> ModuleType:
    """The ``tensorrt`` module.

    Raises:
        BackendUnavailable: tensorrt is not installed (the message names the pip extra).
    """
    return require("tensorrt", extra="tensorrt")


def trt_major(trt: ModuleType) -> int:
    """Major version of a tensorrt module (``"10.16.0.72"`` -> 10)."""
    head = str(getattr(trt, "__version__", "0")).split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def cuda_device() -> GpuInfo:
    """The CUDA device TensorRT will use (torch's current device).

    Raises:
        BackendUnavailable: torch sees no CUDA device.
    """
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("tensorrt needs a CUDA device and torch sees none on this machine")
    index = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return GpuInfo(index=index, name=torch.cuda.get_device_name(index), compute_capability=f"{major}.{minor}")


class LogCapture:
    """The error messages TensorRT logged since this capture started (see `trt_logger`)."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._start = logger.error_count

    def errors(self) -> list[str]:
        """Error and internal-error messages logged since the capture started, oldest first."""
        return self._logger.errors_since(self._start)

    def text(self, limit: int = 5) -> str:
        """``"; TensorRT: msg1 | msg2"`` with the last ``limit`` error messages, or empty when there were none."""
        errors = self.errors()
        return f"; TensorRT: {' | '.join(errors[-limit:])}" if errors else ""


_LOGGER: Any = None
_LOGGER_MODULE: ModuleType | None = None


def trt_logger(trt: ModuleType | None = None) -> Any:
    """The process's TensorRT logger (a ``trt.ILogger`` subclass), created on first use.

    Args:
        trt: the tensorrt module; imported when None.
    """
    global _LOGGER, _LOGGER_MODULE
    trt = trt or tensorrt()
    if _LOGGER is not None and _LOGGER_MODULE is trt:
        return _LOGGER
    severity = trt.ILogger.Severity
    errors = {severity.INTERNAL_ERROR, severity.ERROR}
    levels = {severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.INFO}

    class _CollectingLogger(trt.ILogger):
        """Forwards TensorRT messages to Python logging and remembers the errors."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # TensorRT's Python docs require the explicit base __init__
            self.error_count = 0
            self._errors: list[tuple[int, str]] = []
            self._lock = threading.Lock()  # TensorRT may log from its own threads

        def log(self, severity: Any, msg: str) -> None:  # noqa: D102 - TensorRT's callback
            # TensorRT calls this from C++ and the call must not raise.
            try:
                if severity in errors:
                    with self._lock:
                        self._errors.append((self.error_count, str(msg)))
                        self.error_count += 1
                        del self._errors[:-_KEEP]
                _log.log(levels.get(severity, logging.DEBUG), "TensorRT: %s", msg)
            except Exception:  # noqa: S110 - a logging failure must not cross into TensorRT
                pass

        def errors_since(self, start: int) -> list[str]:
            with self._lock:
                return [m for i, m in self._errors if i >= start]

    _LOGGER, _LOGGER_MODULE = _CollectingLogger(), trt
    return _LOGGER


def create_runtime(trt: ModuleType | None = None) -> Any:
    """A ``trt.Runtime`` on the shared logger; checks the CUDA device first.

    Raises:
        BackendUnavailable: tensorrt is missing, there is no CUDA device, or TensorRT cannot create a
            runtime (e.g. the NVIDIA driver is too old for the CUDA version of the tensorrt wheel).
    """
    trt = trt or tensorrt()
    cuda_device()
    logger = trt_logger(trt)
    capture = LogCapture(logger)
    try:
        runtime = trt.Runtime(logger)
    except Exception as err:  # pybind raises TypeError / RuntimeError when the C++ factory fails
        raise BackendUnavailable(f"TensorRT {trt.__version__} cannot create a runtime: {err}{capture.text()}") from err
    if runtime is None:
        raise BackendUnavailable(f"TensorRT {trt.__version__} cannot create a runtime{capture.text()}")
    return runtime


def probe() -> str | None:
    """Whether TensorRT engines can run here: None, or the reason they cannot (one line).

    Really creates a ``trt.Runtime`` (importing tensorrt is not enough: the wheel may need a newer driver).
    """
    try:
        create_runtime()
    except BackendUnavailable as err:
        return str(err)
    return None
