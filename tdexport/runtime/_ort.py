"""ONNX Runtime runner (CPU, CUDA and TensorRT execution providers)."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailable, UsageError
from ._base import Runner, as_batch, cuda_device_label

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
# Nodes a GPU provider does not take run on the next provider in the list, as ONNX Runtime intends.
_PROVIDER_CHAIN = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def cuda_hint() -> str:
    """``"; torch sees no CUDA device on this machine"`` when that is so, else empty (for error messages)."""
    import torch

    return "" if torch.cuda.is_available() else "; torch sees no CUDA device on this machine"


class OrtRunner(Runner):
    """Runs an ONNX model with ONNX Runtime on one execution provider.

    Session options: ``intra_op_num_threads = threads`` (0 = ONNX Runtime's default when None),
    ``inter_op_num_threads = 1``, sequential execution, all graph optimisations. After `load`,
    ``fixed_batch`` is the input's batch dimension when the graph fixes it (``export_onnx(..., batch=N)``),
    else None.

    Args:
        onnx_path: the .onnx file, or its serialized bytes.
        provider: ``cpu``, ``cuda`` or ``trt`` (the CPU provider takes nodes a GPU provider rejects).
        threads: intra-op threads; None uses ONNX Runtime's default (one per physical core).

    Raises:
        UsageError: unknown provider.
    """

    def __init__(self, onnx_path: str | Path | bytes, *, provider: str = "cpu", threads: int | None = None) -> None:
        super().__init__(threads=threads)
        if provider not in PROVIDERS:
            raise UsageError(f"unknown ONNX Runtime provider '{provider}'; choose one of: {', '.join(PROVIDERS)}")
        self.name = f"ort-{provider}"
        self.provider = provider
        self._model = onnx_path if isinstance(onnx_path, bytes) else Path(onnx_path)
        self._session: Any = None
        self._input = self._output = ""

    @property
    def providers(self) -> list[str]:
        """Execution providers of the loaded session, in priority order (empty before `load`)."""
        return list(self._session.get_providers()) if self._session is not None else []

    def load(self) -> None:
        """Create the inference session and verify it really runs on the requested provider.

        Raises:
            BackendUnavailable: the provider is missing from this onnxruntime build, or its libraries or
                device could not be loaded (the session fell back to another provider).
            UsageError: the model file is missing or ONNX Runtime cannot load it on the CPU provider.
        """
        if self._loaded:
            return
        import onnxruntime as ort

        wanted = PROVIDERS[self.provider]
        available = ort.get_available_providers()
        if wanted not in available:
            raise BackendUnavailable(f"{self.name}: onnxruntime has no {wanted} here "
                                     f"(available: {', '.join(available)}){cuda_hint()}")
        if isinstance(self._model, Path) and not self._model.is_file():
            raise UsageError(f"ONNX model not found: {self._model}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        chain = [p for p in _PROVIDER_CHAIN[self.provider] if p in available]
        model = self._model if isinstance(self._model, bytes) else str(self._model)
        # onnxruntime prints a provider that failed to initialise to stdout and retries without it; keep the
        # text for the error message instead.
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                session = ort.InferenceSession(model, sess_options=options, providers=chain)
        except Exception as err:  # onnxruntime raises its own exception types, not a common base
            if self.provider == "cpu":
                raise UsageError(f"ONNX Runtime cannot load {self._model_label()}: {err}") from err
            raise BackendUnavailable(f"{self.name}: creating a session with {wanted} failed: {err}") from err
        active = session.get_providers()
        if wanted not in active:
            detail = next((line.strip() for line in captured.getvalue().splitlines() if line.startswith("EP Error ")),
                          "")
            raise BackendUnavailable(
                f"{self.name}: onnxruntime lists {wanted} but could not load it (the session fell back to "
                f"{', '.join(active)}); it needs an NVIDIA GPU and the CUDA/cuDNN"
                f"{'/TensorRT' if self.provider == 'trt' else ''} libraries this onnxruntime build was made for"
                f"{cuda_hint()}{f' ({detail[:300]})' if detail else ''}")
        # A provider failing later, inside run(), must raise rather than quietly continue on another one.
        session.disable_fallback()
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise UsageError(f"{self._model_label()} has {len(inputs)} inputs; runners feed exactly one image batch")
        # A symbolic batch dimension reads as a string (or None); only a positive int is a fixed batch.
        first = inputs[0].shape[0] if inputs[0].shape else None
        self._fixed_batch = first if isinstance(first, int) and first > 0 else None
        self._session, self._input, self._output = session, inputs[0].name, outputs[0].name
        self._loaded = True

    def _model_label(self) -> str:
        if isinstance(self._model, bytes):
            return f"in-memory model (sha256 {hashlib.sha256(self._model).hexdigest()[:12]})"
        return str(self._model)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for images (N, C, H, W) (the model's first output)."""
        self._check_loaded()
        return np.asarray(self._session.run([self._output], {self._input: as_batch(batch)})[0], dtype=np.float32)

    def device_info(self) -> dict[str, Any]:
        """``{"device", "providers", "threads", "fixed_batch"}`` of the loaded session.

        ``providers`` is ``session.get_providers()``; ``device`` is where the first (preferred) provider
        runs: ``cpu``, or ``cuda:I (GPU name)`` with I the provider's ``device_id``. Nodes the preferred
        provider rejects run on the next provider in the list.
        """
        self._check_loaded()
        providers = self.providers
        device = "cpu"
        if providers and providers[0] != "CPUExecutionProvider":
            options = self._session.get_provider_options().get(providers[0], {})
            device = cuda_device_label(int(options.get("device_id", 0)))
        return {"device": device, "providers": providers, "threads": self.threads,
                "fixed_batch": self._fixed_batch}

    def close(self) -> None:
        """Drop the session (``fixed_batch`` keeps the value read from the model)."""
        self._session = None
        self._loaded = False
