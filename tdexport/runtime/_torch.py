"""PyTorch eager runner."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import BackendUnavailable, UsageError
from ._base import Runner, as_batch, cuda_device_label


class TorchRunner(Runner):
    """Runs an ``nn.Module`` eagerly in eval mode under ``torch.inference_mode``.

    The module is copied at `load`, so the caller's module keeps its mode and device. ``threads`` sets
    torch's process-wide intra-op thread count while the runner is loaded; `close` restores the old value.
    Any batch size runs (``fixed_batch`` is None).

    Args:
        model: maps (N, C, H, W) to logits (N, classes).
        device: ``cpu`` or a CUDA device such as ``cuda`` / ``cuda:0``.
        threads: intra-op threads; None keeps torch's setting.
    """

    def __init__(self, model: nn.Module, *, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(threads=threads)
        if not isinstance(model, nn.Module):
            raise UsageError(f"TorchRunner needs an nn.Module, got {type(model).__name__}")
        self.name = "torch"
        self.device = torch.device(device)
        self._source = model
        self._model: nn.Module | None = None
        self._previous_threads: int | None = None

    def load(self) -> None:
        """Copy the model to ``device`` in eval mode, float32, and pin the thread count."""
        if self._loaded:
            return
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"torch: device '{self.device}' requested but torch sees no CUDA device")
        self._model = copy.deepcopy(self._source).to(self.device, torch.float32).eval()
        if self.threads is not None:
            self._previous_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        self._loaded = True

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for images (N, C, H, W)."""
        self._check_loaded()
        x = torch.from_numpy(as_batch(batch)).to(self.device)
        with torch.inference_mode():
            out = self._model(x)
        return out.detach().float().cpu().numpy()

    def device_info(self) -> dict[str, Any]:
        """``{"device": "cpu" | "cuda:I (GPU name)", "threads": torch's intra-op threads now, "fixed_batch": None}``."""
        self._check_loaded()
        if self.device.type == "cuda":
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            device = cuda_device_label(index)
        else:
            device = str(self.device)
        return {"device": device, "threads": torch.get_num_threads(), "fixed_batch": None}

    def close(self) -> None:
        """Drop the model copy and restore torch's thread count."""
        self._model = None
        if self._previous_threads is not None:
            torch.set_num_threads(self._previous_threads)
            self._previous_threads = None
        self._loaded = False
