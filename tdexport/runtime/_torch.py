"""PyTorch eager runner (CPU, or CUDA on the runner's own stream with device timing)."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BackendUnavailable, UsageError
from ._base import Runner, StreamTimer, as_batch, cuda_device_label


@contextlib.contextmanager
def fp32_math(enabled: bool = True) -> Iterator[None]:
    """Keep float32 convolutions and matmuls in full fp32 (no TF32 tensor cores) inside the block.

    torch lets cuDNN convolutions use TF32 by default on Ampere and newer GPUs, which changes fp32 results
    in the 4th significant digit. Inside the block the TF32 switches are off; on exit the previous values
    come back. torch 2.9+ exposes ``torch.backends.cudnn.conv.fp32_precision`` and
    ``torch.backends.cuda.matmul.fp32_precision`` (set to ``"ieee"`` here) and rejects mixing them with
    the older ``allow_tf32`` booleans, which are used only where the new switches do not exist.

    Args:
        enabled: False makes the block a no-op (TF32 stays as the process set it).
    """
    if not enabled:
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    matmul = torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision") and hasattr(matmul, "fp32_precision"):
        saved = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision, matmul.fp32_precision = "ieee", "ieee"
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
        return
    saved_flags = (torch.backends.cudnn.allow_tf32, matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = False, False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = saved_flags


class TorchRunner(Runner):
    """Runs an ``nn.Module`` eagerly in eval mode under ``torch.inference_mode``.

    The module is copied at `load`, so the caller's module keeps its mode and device. ``threads`` sets
    torch's process-wide intra-op thread count while the runner is loaded; `close` restores the old value.
    Any batch size runs (``fixed_batch`` is None).

    On a CUDA device the runner has its own stream: a batch is staged in pinned host memory, copied to the
    device, run and copied back on that stream, with CUDA timing events around the forward pass
    (`infer_timed` gives its device time) and TF32 off unless ``tf32=True`` (`fp32_math`), so fp32 results
    match the CPU to fp32 rounding.

    Args:
        model: maps (N, C, H, W) to logits (N, classes).
        device: ``cpu`` or a CUDA device such as ``cuda`` / ``cuda:0``.
        threads: intra-op threads; None keeps torch's setting.
        tf32: allow TF32 tensor cores for fp32 convolutions and matmuls on CUDA (faster, less exact).
    """

    def __init__(self, model: nn.Module, *, device: str = "cpu", threads: int | None = None,
                 tf32: bool = False) -> None:
        super().__init__(threads=threads)
        if not isinstance(model, nn.Module):
            raise UsageError(f"TorchRunner needs an nn.Module, got {type(model).__name__}")
        self.name = "torch"
        self.device = torch.device(device)
        self.tf32 = tf32
        # cuDNN picks its kernels at the first call of each input shape; latency runs that call apart.
        self.setup_on_first_call = self.device.type == "cuda"
        self._source = model
        self._model: nn.Module | None = None
        self._previous_threads: int | None = None
        self._stream: Any = None
        self._timer: StreamTimer | None = None
        self._host_in: torch.Tensor | None = None

    @property
    def device_timing(self) -> bool:
        """True for a loaded runner on a CUDA device."""
        return self._loaded and self._stream is not None

    def load(self) -> None:
        """Copy the model to ``device`` in eval mode, float32, and pin the thread count.

        Raises:
            BackendUnavailable: a CUDA device was asked for and torch sees none.
        """
        if self._loaded:
            return
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch: device '{self.device}' requested but torch sees no CUDA device")
        self._model = copy.deepcopy(self._source).to(self.device, torch.float32).eval()
        if self.device.type == "cuda":
            self._stream = torch.cuda.Stream(device=self.device)
            # The weights were copied on the current stream; the runner's stream must see them finished.
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            self._timer = StreamTimer(self._stream)
        if self.threads is not None:
            self._previous_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        self._first_call_ms = None
        self._loaded = True

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for images (N, C, H, W)."""
        self._check_loaded()
        if self._stream is not None:
            return self.infer_timed(batch)[0]
        start = time.perf_counter_ns()
        x = torch.from_numpy(as_batch(batch)).to(self.device)
        with torch.inference_mode():
            out = self._model(x)
        result = out.detach().float().cpu().numpy()
        self._note_call(start)
        return result

    def infer_timed(self, batch: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(logits (N, classes) float32, device ms of the forward pass on CUDA, or None on the CPU)."""
        self._check_loaded()
        if self._stream is None:
            return self.infer(batch), None
        start_ns = time.perf_counter_ns()
        x = as_batch(batch)
        if self._host_in is None or self._host_in.numel() < x.size:
            self._host_in = torch.empty(x.size, dtype=torch.float32, pin_memory=True)
        # The previous call waited for its stream, so the pinned buffer is free to overwrite.
        self._host_in[:x.size].numpy()[:] = x.reshape(-1)
        with torch.cuda.stream(self._stream), torch.inference_mode(), fp32_math(not self.tf32):
            xd = self._host_in[:x.size].view(x.shape).to(self.device, non_blocking=True)
            self._timer.start()
            out = self._model(xd)
            self._timer.stop()
            device_ms = self._timer.elapsed_ms()
            result = out.detach().float().cpu().numpy()
        self._note_call(start_ns)
        return result, device_ms

    def device_info(self) -> dict[str, Any]:
        """``{"device": "cpu" | "cuda:I (GPU name)", "threads": torch's intra-op threads now, "fixed_batch": None}``.

        On CUDA it adds ``timing: "device"`` and ``tf32`` (whether TF32 was allowed).
        """
        self._check_loaded()
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            return {"device": cuda_device_label(index), "threads": torch.get_num_threads(), "fixed_batch": None,
                    "timing": "device", "tf32": self.tf32}
        return {"device": str(self.device), "threads": torch.get_num_threads(), "fixed_batch": None}

    def close(self) -> None:
        """Drop the model copy and restore torch's thread count."""
        if self._stream is not None:
            self._stream.synchronize()
        self._model = None
        self._stream = self._timer = self._host_in = None
        if self._previous_threads is not None:
            torch.set_num_threads(self._previous_threads)
            self._previous_threads = None
        self._loaded = False
