"""The `Runner` interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import UsageError


class Runner(ABC):
    """A loaded model that turns a batch of images into logits.

    Attributes:
        name: backend name, one of `tdexport.runtime.BACKENDS` (``torch``, ``ort-cpu``, ...).
        threads: intra-op threads requested for this runner; None means the backend's default.
    """

    name: str
    threads: int | None

    def __init__(self, *, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self._loaded = False
        self._fixed_batch: int | None = None

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
            priority order), TensorRT adds ``gpu``.

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
