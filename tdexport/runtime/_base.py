"""The `Runner` interface every backend implements."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import UsageError


class Runner(ABC):
    """A loaded model that turns a batch of images into logits.

    Besides ``infer``, a runner offers ``infer_timed`` (logits plus the device time of the call, for GPU
    runners) and records how long its first inference after `load` took (``first_call_ms``): GPU backends do
    one-time work there (TensorRT engine build, cuDNN algorithm search), which latency measurements run
    apart from their warm-up (`setup_on_first_call`).

    Attributes:
        name: backend name, one of `tdexport.runtime.BACKENDS` (``torch``, ``ort-cpu``, ...).
        threads: intra-op threads requested for this runner; None means the backend's default.
        setup_on_first_call: True when the first inference at a new input shape does one-time setup (an
            engine build, kernel autotuning), so `tdexport.validate.latency.measure_paired` runs one untimed
            call at the measured batch before its timed warm-up. False for CPU runners.
    """

    name: str
    threads: int | None
    setup_on_first_call: bool = False

    def __init__(self, *, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self._loaded = False
        self._fixed_batch: int | None = None
        self._first_call_ms: float | None = None

    @property
    def loaded(self) -> bool:
        """True between `load` and `close`."""
        return self._loaded

    @property
    def fixed_batch(self) -> int | None:
        """The only batch size the loaded graph or engine accepts, or None when any batch size runs.

        Read from the model at `load` (None before the first load). Callers that feed other batch sizes
        split and pad to it (`tdexport.validate.accuracy.infer_batches`); latency can only be measured at it.
        """
        return self._fixed_batch

    @property
    def device_timing(self) -> bool:
        """True when `infer_timed` reports a device time for every call (a loaded GPU runner); False on CPU."""
        return False

    @property
    def first_call_ms(self) -> float | None:
        """Host time (ms) of the first inference since the last `load`, or None before it ran.

        On GPU backends it includes one-time setup (ONNX Runtime's TensorRT engine build, cuDNN algorithm
        search), which is why latency measurement runs such a call apart (`setup_on_first_call`).
        """
        return self._first_call_ms

    def infer_timed(self, batch: np.ndarray) -> tuple[np.ndarray, float | None]:
        """Run one batch and report the device time of the call.

        Args:
            batch: float32 images (N, C, H, W) (other dtypes are converted).

        Returns:
            (logits (N, classes) float32 on the host, device ms or None). GPU runners give the time between
            two CUDA events recorded on their stream around the enqueued inference (host↔device copies
            excluded: trtexec's "GPU compute time"); CPU runners give None (only host time exists).
        """
        return self.infer(batch), None

    def _note_call(self, start_ns: int) -> None:
        """Remember the host time of the first inference since `load` (``start_ns`` from perf_counter_ns)."""
        if self._first_call_ms is None:
            self._first_call_ms = (time.perf_counter_ns() - start_ns) / 1e6

    @abstractmethod
    def load(self) -> None:
        """Prepare the model for inference (build a session, deserialize an engine, ...)."""

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch.

        Args:
            batch: float32 images (N, C, H, W) (other dtypes are converted).

        Returns:
            float32 logits (N, classes) on the host.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the session / engine; safe to call twice."""

    @abstractmethod
    def device_info(self) -> dict[str, Any]:
        """What the loaded runner really runs on, JSON-ready, for ``environment_info(backends=...)``.

        Returns:
            At least ``{"device": str, "threads": int | None, "fixed_batch": int | None}``: ``device`` is
            ``cpu`` or ``cuda:I (GPU name)``; ONNX Runtime runners add ``providers`` (the session's, in
            priority order), TensorRT adds ``gpu``; runners with device timing add ``timing: "device"``.

        Raises:
            RuntimeError: the runner is not loaded.
        """

    def _check_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError(f"{self.name} runner is not loaded; call load() or use it in a with block")

    def __enter__(self) -> Runner:
        self.load()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, threads={self.threads}, loaded={self._loaded})"


def as_batch(batch: np.ndarray) -> np.ndarray:
    """``batch`` as a C-contiguous float32 array with a batch dimension (no copy when it already is one)."""
    array = np.ascontiguousarray(batch, dtype=np.float32)
    if array.ndim < 2:
        raise UsageError(f"expected a batch (N, ...), got an array of shape {array.shape}")
    return array


def cuda_device_label(index: int) -> str:
    """``cuda:I (GPU name)`` for a CUDA device index, as torch names it."""
    import torch

    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


class StreamTimer:
    """Device time of work enqueued on one CUDA stream, from two timing events recorded on that stream.

    ``start()`` and ``stop()`` record the events around the enqueue; ``elapsed_ms()`` waits for the second
    event and returns the milliseconds between them on the GPU's clock (``torch.cuda.Event.elapsed_time``).
    Like trtexec's "GPU compute time" this covers everything the stream did between the two events,
    including gaps while the host was still enqueuing, and not the host's wait for the result afterwards.

    Args:
        stream: the ``torch.cuda.Stream`` the timed work runs on.
    """

    def __init__(self, stream: Any) -> None:
        import torch

        self._stream = stream
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        """Record the start event on the stream (before enqueuing the timed work)."""
        self._start.record(self._stream)

    def stop(self) -> None:
        """Record the end event on the stream (after enqueuing the timed work)."""
        self._end.record(self._stream)

    def elapsed_ms(self) -> float:
        """Milliseconds between the two events, after waiting for the end event to complete."""
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))
