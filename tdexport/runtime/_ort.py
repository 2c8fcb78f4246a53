"""ONNX Runtime runner (CPU, CUDA and TensorRT execution providers).

On the CPU provider a batch goes through ``session.run`` as before. On the CUDA and TensorRT providers
the runner owns a torch CUDA stream that ONNX Runtime computes on (provider option
``user_compute_stream``) and runs through an IOBinding: the input is staged in pinned host memory,
copied once into a device buffer on that stream and bound by address, the output is bound to the device,
and only the logits are copied back to the host. CUDA timing events recorded on the same stream around
``run_with_iobinding`` give the device time of the call (`Runner.infer_timed`).

Provider options come from `tdexport.runtime._ort_options` (its public helpers are re-exported here): the
CUDA provider runs with ``use_tf32 = 0`` (fp32 convolutions and GEMMs stay fp32); the TensorRT provider gets
an explicit optimisation profile (``trt_profile_min/opt/max_shapes``) and an engine and timing cache in a
folder keyed by the model's SHA-256, the profile and the onnxruntime and TensorRT versions (`trt_cache_dir`).
This module holds `OrtRunner`, the provider names and reading the model's input for the profile.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.sidecar import sha256_file
from ..errors import BackendUnavailable, UsageError
from ._base import Runner, StreamTimer, as_batch, cuda_device_label
from ._ort_options import (
    _profile_for,
    _write_cache_key,
    cuda_provider_options,
    trt_cache_dir,
    trt_cache_key,
    trt_provider_options,
)

# Provider options and cache keys live in `_ort_options`.
__all__ = ["DEFAULT_MAX_BATCH", "PROVIDERS", "OrtRunner", "cuda_hint"]

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
# A RunOptions key from onnxruntime_run_options_config_keys.h: "1" skips the cudaStreamSynchronize that
# ends a run, so the end timing event is enqueued right behind the last kernel; the runner waits itself.
_NO_SYNC_AT_RUN_END = "disable_synchronize_execution_providers"
# Batch range of the TensorRT provider's profile for a dynamic-batch model, as `TrtRunner` builds it.
DEFAULT_MAX_BATCH = 64


def cuda_hint() -> str:
    """``"; torch sees no CUDA device on this machine"`` when that is so, else empty (for error messages)."""
    import torch

    return "" if torch.cuda.is_available() else "; torch sees no CUDA device on this machine"


def _model_input(model: Path | bytes) -> tuple[str, list[int | None]]:
    """(name, dims) of the model's only graph input read with onnx; a dynamic dimension is None."""
    import onnx

    try:
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(model),
                                                                                        load_external_data=False)
    except Exception as err:  # protobuf's DecodeError and onnx's own errors share no base class
        raise UsageError(f"cannot read the ONNX model for its input shape: {err}") from err
    weights = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in weights]
    if len(inputs) != 1:
        raise UsageError(f"the model has {len(inputs)} inputs; runners feed exactly one image batch")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


# ------------------------------------------------------------------------------------------------ runner


class OrtRunner(Runner):
    """Runs an ONNX model with ONNX Runtime on one execution provider.

    Session options: ``intra_op_num_threads = threads`` (0 = ONNX Runtime's default when None),
    ``inter_op_num_threads = 1``, sequential execution, all graph optimisations. After `load`,
    ``fixed_batch`` is the input's batch dimension when the graph fixes it (``export_onnx(..., batch=N)``),
    else None.

    On ``cuda`` and ``trt`` the runner computes on its own torch CUDA stream through an IOBinding (device
    input buffer, device-bound output, logits copied back) and `infer_timed` reports the device time of
    ``run_with_iobinding`` from CUDA events on that stream. The CUDA provider runs with TF32 off. The
    TensorRT provider gets the profile batch 1..``max_batch`` (opt = max) for a dynamic batch, or the fixed
    shape, and caches engines and timing data in `trt_cache_dir` (first load builds, later loads reuse);
    its first inference still initialises the engine, so ``setup_on_first_call`` is True on GPU providers.

    Args:
        onnx_path: the .onnx file, or its serialized bytes.
        provider: ``cpu``, ``cuda`` or ``trt`` (the CPU provider takes nodes a GPU provider rejects).
        threads: intra-op threads; None uses ONNX Runtime's default (one per physical core).
        device_id: CUDA device of the GPU providers.
        max_batch: largest batch of the TensorRT provider's profile for a dynamic-batch model.
        cache_dir: parent folder of the TensorRT provider's keyed cache folders; None uses
            `default_trt_cache_base`.

    Raises:
        UsageError: unknown provider, a negative device or a max_batch below 1.
    """

    def __init__(self, onnx_path: str | Path | bytes, *, provider: str = "cpu", threads: int | None = None,
                 device_id: int = 0, max_batch: int = DEFAULT_MAX_BATCH, cache_dir: str | Path | None = None) -> None:
        super().__init__(threads=threads)
        if provider not in PROVIDERS:
            raise UsageError(f"unknown ONNX Runtime provider '{provider}'; choose one of: {', '.join(PROVIDERS)}")
        if device_id < 0 or max_batch < 1:
            raise UsageError(f"device_id must be >= 0 and max_batch >= 1, got {device_id} and {max_batch}")
        self.name = f"ort-{provider}"
        self.provider = provider
        self.device_id = device_id
        self.max_batch = max_batch
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.setup_on_first_call = provider != "cpu"
        self._model = onnx_path if isinstance(onnx_path, bytes) else Path(onnx_path)
        self._session: Any = None
        self._input = self._output = ""
        # GPU providers only: stream, IOBinding, device input buffer and its pinned staging copy, timer.
        self._gpu: dict[str, Any] = {}
        self._profile: dict[str, list[int]] | None = None
        self._trt_key: dict[str, Any] | None = None
        self._trt_cache: Path | None = None

    @property
    def providers(self) -> list[str]:
        """Execution providers of the loaded session, in priority order (empty before `load`)."""
        return list(self._session.get_providers()) if self._session is not None else []

    @property
    def device_timing(self) -> bool:
        """True for a loaded runner on the CUDA or TensorRT provider."""
        return self._loaded and bool(self._gpu)

    @property
    def trt_profile(self) -> dict[str, list[int]] | None:
        """``{"min", "opt", "max"}`` input shapes given to the TensorRT provider (None on other providers)."""
        return self._profile

    @property
    def trt_cache(self) -> Path | None:
        """The TensorRT provider's engine and timing cache folder (None on other providers / before `load`)."""
        return self._trt_cache

    def _provider_list(self, available: Sequence[str], stream: int | None) -> list[Any]:
        """The session's providers in priority order, each GPU one with its options."""
        chain: list[Any] = []
        for name in (p for p in _PROVIDER_CHAIN[self.provider] if p in available):
            if name == "CUDAExecutionProvider":
                chain.append((name, cuda_provider_options(device_id=self.device_id, stream=stream)))
            elif name == "TensorrtExecutionProvider":
                input_name, dims = _model_input(self._model)
                self._profile = _profile_for(dims, self.max_batch)
                sha = (hashlib.sha256(self._model).hexdigest() if isinstance(self._model, bytes)
                       else sha256_file(self._model))
                self._trt_key = trt_cache_key(sha, {input_name: self._profile})
                self._trt_cache = trt_cache_dir(self._trt_key, self.cache_dir)
                chain.append((name, trt_provider_options(input_name, self._profile, self._trt_cache,
                                                         device_id=self.device_id, stream=stream)))
            else:
                chain.append(name)
        return chain

    def load(self) -> None:
        """Create the inference session and verify it really runs on the requested provider.

        Raises:
            BackendUnavailable: the provider is missing from this onnxruntime build, or its libraries or
                device could not be loaded (the session fell back to another provider), or a GPU provider
                works but torch has no CUDA (its stream, buffers and timing events come from torch).
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
        stream = self._make_stream() if self.provider != "cpu" else None
        chain = self._provider_list(available, stream.cuda_stream if stream is not None else None)
        if self._trt_cache is not None and self._trt_key is not None and stream is not None:
            # Only where the provider can run: a CPU-only machine gets no cache folders.
            _write_cache_key(self._trt_cache, self._trt_key)
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
        if self.provider != "cpu" and stream is None:
            raise BackendUnavailable(f"{self.name}: {wanted} works but torch sees no CUDA device; tdexport runs GPU "
                                     f"providers on a torch CUDA stream with torch timing events (install a CUDA "
                                     f"build of torch)")
        # A provider failing later, inside run(), must raise rather than quietly continue on another one.
        session.disable_fallback()
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise UsageError(f"{self._model_label()} has {len(inputs)} inputs; runners feed exactly one image batch")
        # A symbolic batch dimension reads as a string (or None); only a positive int is a fixed batch.
        first = inputs[0].shape[0] if inputs[0].shape else None
        self._fixed_batch = first if isinstance(first, int) and first > 0 else None
        self._session, self._input, self._output = session, inputs[0].name, outputs[0].name
        if stream is not None:
            self._gpu = self._bind_device(ort, session, stream)
        self._first_call_ms = None
        self._loaded = True

    def _make_stream(self) -> Any:
        """A new torch CUDA stream on ``device_id``, or None when torch sees no CUDA device."""
        import torch

        if not torch.cuda.is_available():
            return None
        if self.device_id >= torch.cuda.device_count():
            raise UsageError(f"{self.name}: CUDA device {self.device_id} does not exist "
                             f"({torch.cuda.device_count()} visible)")
        return torch.cuda.Stream(device=self.device_id)

    def _bind_device(self, ort: Any, session: Any, stream: Any) -> dict[str, Any]:
        """IOBinding with the output bound to the device, a timer and run options for the GPU providers."""
        binding = session.io_binding()
        # ONNX Runtime allocates the output on the device at each run; only `infer` copies it to the host.
        binding.bind_output(self._output, "cuda", self.device_id)
        run_options = ort.RunOptions()
        run_options.add_run_config_entry(_NO_SYNC_AT_RUN_END, "1")
        return {"stream": stream, "binding": binding, "run_options": run_options, "timer": StreamTimer(stream),
                "bound_shape": None, "device_in": None, "host_in": None}

    def _model_label(self) -> str:
        if isinstance(self._model, bytes):
            return f"in-memory model (sha256 {hashlib.sha256(self._model).hexdigest()[:12]})"
        return str(self._model)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for images (N, C, H, W) (the model's first output)."""
        self._check_loaded()
        if self._gpu:
            return self.infer_timed(batch)[0]
        start = time.perf_counter_ns()
        out = np.asarray(self._session.run([self._output], {self._input: as_batch(batch)})[0], dtype=np.float32)
        self._note_call(start)
        return out

    def infer_timed(self, batch: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(logits (N, classes) float32, device ms of ``run_with_iobinding`` or None on the CPU provider).

        On a GPU provider the batch is copied into the device input buffer on the runner's stream, timing
        events are recorded on that stream around ``run_with_iobinding`` (asked not to synchronise at its
        end), the runner waits for the end event and then copies the device-bound output to the host.
        Where a provider synchronises its stream anyway at the end of a run, the device time also holds
        the few microseconds until the end event is recorded.

        Raises:
            UsageError: on the TensorRT provider, a batch shape outside its profile.
        """
        self._check_loaded()
        if not self._gpu:
            return self.infer(batch), None
        import torch

        start_ns = time.perf_counter_ns()
        x = as_batch(batch)
        self._check_profile(x.shape)
        gpu, size = self._gpu, x.size
        if gpu["device_in"] is None or gpu["device_in"].numel() < size:
            with torch.cuda.stream(gpu["stream"]):  # allocated for, and only used on, the runner's stream
                gpu["device_in"] = torch.empty(size, dtype=torch.float32, device=f"cuda:{self.device_id}")
            gpu["host_in"] = torch.empty(size, dtype=torch.float32, pin_memory=True)
            gpu["bound_shape"] = None
        if gpu["bound_shape"] != x.shape:
            gpu["binding"].bind_input(self._input, "cuda", self.device_id, np.float32, list(x.shape),
                                      gpu["device_in"].data_ptr())
            gpu["bound_shape"] = x.shape
        # The previous call waited for its stream, so the pinned buffer is free to overwrite.
        gpu["host_in"][:size].numpy()[:] = x.reshape(-1)
        with torch.cuda.stream(gpu["stream"]):
            gpu["device_in"][:size].copy_(gpu["host_in"][:size], non_blocking=True)
        gpu["timer"].start()
        self._session.run_with_iobinding(gpu["binding"], gpu["run_options"])
        gpu["timer"].stop()
        device_ms = gpu["timer"].elapsed_ms()  # waits for the stream, so the output is complete
        out = np.asarray(gpu["binding"].copy_outputs_to_cpu()[0], dtype=np.float32)
        self._note_call(start_ns)
        return out, device_ms

    def _check_profile(self, shape: tuple[int, ...]) -> None:
        if self._profile is None:
            return
        low, high = self._profile["min"], self._profile["max"]
        if len(shape) != len(low) or not all(a <= d <= b for a, d, b in zip(low, shape, high, strict=True)):
            raise UsageError(f"{self.name}: input shape {tuple(shape)} is outside the TensorRT profile "
                             f"{tuple(low)}..{tuple(high)} (OrtRunner(max_batch=...) sets its batch range)")

    def device_info(self) -> dict[str, Any]:
        """``{"device", "providers", "threads", "fixed_batch"}`` of the loaded session.

        ``providers`` is ``session.get_providers()``; ``device`` is where the first (preferred) provider
        runs: ``cpu``, or ``cuda:I (GPU name)`` with I the provider's ``device_id``. Nodes the preferred
        provider rejects run on the next provider in the list. GPU providers add ``timing: "device"``,
        ``tf32`` (False on the CUDA provider; None on TensorRT, which keeps its default) and, on TensorRT,
        ``trt_profile`` ({min, opt, max} shapes) and ``trt_cache`` (the cache folder).
        """
        self._check_loaded()
        providers = self.providers
        device = "cpu"
        if providers and providers[0] != "CPUExecutionProvider":
            options = self._session.get_provider_options().get(providers[0], {})
            device = cuda_device_label(int(options.get("device_id", 0)))
        info: dict[str, Any] = {"device": device, "providers": providers, "threads": self.threads,
                                "fixed_batch": self._fixed_batch}
        if self._gpu:
            info.update(timing="device", tf32=False if self.provider == "cuda" else None)
            if self.provider == "trt":
                info.update(trt_profile=self._profile, trt_cache=str(self._trt_cache))
        return info

    def close(self) -> None:
        """Drop the session and device buffers (``fixed_batch`` keeps the value read from the model)."""
        if self._gpu:
            self._gpu["stream"].synchronize()
        self._gpu = {}
        self._session = None
        self._loaded = False
