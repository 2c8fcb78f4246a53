"""One runner interface over torch, ONNX Runtime (CPU / CUDA / TensorRT providers) and TensorRT.

Every runner maps a float32 numpy batch (N, C, H, W) to float32 numpy logits (N, classes), so accuracy,
parity and latency code never knows which backend it talks to (the Polygraphy design). A runner is loaded
explicitly (`Runner.load`) or by a ``with`` block, and ``infer`` returns host arrays, so timing around it
includes device synchronisation.

Backends that are not usable on this machine raise `BackendUnavailable` (exit 4) with the missing piece:
onnxruntime-gpu lists its CUDA and TensorRT providers even where their libraries or the GPU are missing and
then silently runs on CPU, so `OrtRunner` checks the providers the session really got.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from torch import nn

from ._lazy import require
from .errors import BackendUnavailable, UsageError

__all__ = [
    "BACKENDS",
    "Runner",
    "TorchRunner",
    "OrtRunner",
    "TrtRunner",
    "make_runner",
    "available_backends",
]

BACKENDS = ("torch", "ort-cpu", "ort-cuda", "ort-trt", "trt")

_ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
# Nodes a GPU provider does not take run on the next provider in the list, as ONNX Runtime intends.
_ORT_PROVIDER_CHAIN = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "trt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class Runner(ABC):
    """A loaded model that turns a batch of images into logits.

    Attributes:
        name: backend name, one of `BACKENDS` (``torch``, ``ort-cpu``, ...).
        threads: intra-op threads requested for this runner; None means the backend's default.
    """

    name: str
    threads: int | None

    def __init__(self, *, threads: int | None = None) -> None:
        if threads is not None and threads < 1:
            raise UsageError(f"threads must be at least 1, got {threads}")
        self.threads = threads
        self._loaded = False

    @property
    def loaded(self) -> bool:
        """True between `load` and `close`."""
        return self._loaded

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


def _as_batch(batch: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(batch, dtype=np.float32)
    if array.ndim < 2:
        raise UsageError(f"expected a batch (N, ...), got an array of shape {array.shape}")
    return array


class TorchRunner(Runner):
    """Runs an ``nn.Module`` eagerly in eval mode under ``torch.inference_mode``.

    The module is copied at `load`, so the caller's module keeps its mode and device. ``threads`` sets
    torch's process-wide intra-op thread count while the runner is loaded; `close` restores the old value.

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
        x = torch.from_numpy(_as_batch(batch)).to(self.device)
        with torch.inference_mode():
            out = self._model(x)
        return out.detach().float().cpu().numpy()

    def close(self) -> None:
        """Drop the model copy and restore torch's thread count."""
        self._model = None
        if self._previous_threads is not None:
            torch.set_num_threads(self._previous_threads)
            self._previous_threads = None
        self._loaded = False


def _cuda_hint() -> str:
    return "" if torch.cuda.is_available() else "; torch sees no CUDA device on this machine"


class OrtRunner(Runner):
    """Runs an ONNX model with ONNX Runtime on one execution provider.

    Session options: ``intra_op_num_threads = threads`` (0 = ONNX Runtime's default when None),
    ``inter_op_num_threads = 1``, sequential execution, all graph optimisations.

    Args:
        onnx_path: the .onnx file, or its serialized bytes.
        provider: ``cpu``, ``cuda`` or ``trt`` (the CPU provider takes nodes a GPU provider rejects).
        threads: intra-op threads; None uses ONNX Runtime's default (one per physical core).

    Raises:
        UsageError: unknown provider.
    """

    def __init__(self, onnx_path: str | Path | bytes, *, provider: str = "cpu", threads: int | None = None) -> None:
        super().__init__(threads=threads)
        if provider not in _ORT_PROVIDERS:
            raise UsageError(f"unknown ONNX Runtime provider '{provider}'; choose one of: {', '.join(_ORT_PROVIDERS)}")
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

        wanted = _ORT_PROVIDERS[self.provider]
        available = ort.get_available_providers()
        if wanted not in available:
            raise BackendUnavailable(f"{self.name}: onnxruntime has no {wanted} here "
                                     f"(available: {', '.join(available)}){_cuda_hint()}")
        if isinstance(self._model, Path) and not self._model.is_file():
            raise UsageError(f"ONNX model not found: {self._model}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or 0
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        chain = [p for p in _ORT_PROVIDER_CHAIN[self.provider] if p in available]
        model = self._model if isinstance(self._model, bytes) else str(self._model)
        # onnxruntime prints a provider that failed to initialise to stdout and retries without it; keep the
        # text for the error message instead.
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                session = ort.InferenceSession(model, sess_options=options, providers=chain)
        except Exception as err:  # onnxruntime raises its own exception types, not a common base
            if self.provider == "cpu":
                raise UsageError(f"ONNX Runtime cannot load {self._describe()}: {err}") from err
            raise BackendUnavailable(f"{self.name}: creating a session with {wanted} failed: {err}") from err
        active = session.get_providers()
        if wanted not in active:
            detail = next((line.strip() for line in captured.getvalue().splitlines() if line.startswith("EP Error ")),
                          "")
            raise BackendUnavailable(
                f"{self.name}: onnxruntime lists {wanted} but could not load it (the session fell back to "
                f"{', '.join(active)}); it needs an NVIDIA GPU and the CUDA/cuDNN"
                f"{'/TensorRT' if self.provider == 'trt' else ''} libraries this onnxruntime build was made for"
                f"{_cuda_hint()}{f' ({detail[:300]})' if detail else ''}")
        # A provider failing later, inside run(), must raise rather than quietly continue on another one.
        session.disable_fallback()
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1:
            raise UsageError(f"{self._describe()} has {len(inputs)} inputs; runners feed exactly one image batch")
        self._session, self._input, self._output = session, inputs[0].name, outputs[0].name
        self._loaded = True

    def _describe(self) -> str:
        if isinstance(self._model, bytes):
            return f"in-memory model (sha256 {hashlib.sha256(self._model).hexdigest()[:12]})"
        return str(self._model)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for images (N, C, H, W) (the model's first output)."""
        self._check_loaded()
        return np.asarray(self._session.run([self._output], {self._input: _as_batch(batch)})[0], dtype=np.float32)

    def close(self) -> None:
        """Drop the session."""
        self._session = None
        self._loaded = False


class TrtRunner(Runner):
    """Runs a TensorRT engine (or an ONNX model built into one at `load`) with torch CUDA buffers.

    Uses TensorRT's named-tensor API (TensorRT 10/11): ``Runtime.deserialize_cuda_engine``, one execution
    context, ``set_input_shape`` per batch and ``execute_async_v3`` on a private CUDA stream.

    Args:
        engine_or_onnx_path: a serialized engine (``.engine`` / ``.plan``, built by `tdexport.export.tensorrt`
            on this GPU and TensorRT version) or an ``.onnx`` file, built in memory with batch profile
            1..``max_batch``.
        max_batch: largest batch of the in-memory build (ignored for an engine file).
        threads: recorded only; TensorRT runs on the GPU.
    """

    def __init__(self, engine_or_onnx_path: str | Path, *, max_batch: int = 64, threads: int | None = None) -> None:
        super().__init__(threads=threads)
        self.name = "trt"
        self.path = Path(engine_or_onnx_path)
        self.max_batch = max_batch
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._input = self._output = ""

    def load(self) -> None:
        """Deserialize (or build) the engine and create an execution context.

        Raises:
            BackendUnavailable: tensorrt is not installed or there is no CUDA device.
            UsageError: the file is missing, the engine does not deserialize, or its I/O is not one float32
                input and one float32 output.
        """
        if self._loaded:
            return
        trt = require("tensorrt", extra="tensorrt")
        if not torch.cuda.is_available():
            raise BackendUnavailable("trt: tensorrt is installed but torch sees no CUDA device; TensorRT needs an "
                                     "NVIDIA GPU (and a CUDA build of torch for the I/O buffers)")
        if not self.path.is_file():
            raise UsageError(f"TensorRT engine / ONNX model not found: {self.path}")
        if self.path.suffix == ".onnx":
            from .export.tensorrt import build_serialized

            data = build_serialized(self.path, min_batch=1, opt_batch=self.max_batch, max_batch=self.max_batch)
        else:
            data = self.path.read_bytes()
        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(data)
        if engine is None:
            raise UsageError(f"TensorRT could not deserialize {self.path}; engines only load with the TensorRT "
                             f"version (and GPU) that built them")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UsageError(f"{self.path}: expected one input and one output tensor, got {inputs} / {outputs}")
        for n in names:
            if engine.get_tensor_dtype(n) != trt.float32:
                raise UsageError(f"{self.path}: tensor '{n}' is {engine.get_tensor_dtype(n)}, runners use float32")
        self._engine, self._context = engine, engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self._input, self._output = inputs[0], outputs[0]
        self._loaded = True

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for images (N, C, H, W); N must lie in the engine's batch profile."""
        self._check_loaded()
        x = torch.from_numpy(_as_batch(batch)).to("cuda")
        if not self._context.set_input_shape(self._input, tuple(x.shape)):
            raise UsageError(f"batch shape {tuple(x.shape)} is outside the engine's optimization profile")
        out = torch.empty(tuple(self._context.get_tensor_shape(self._output)), dtype=torch.float32, device="cuda")
        self._context.set_tensor_address(self._input, x.data_ptr())
        self._context.set_tensor_address(self._output, out.data_ptr())
        # The host-to-device copy ran on torch's current stream; TensorRT must not read x before it lands.
        self._stream.wait_stream(torch.cuda.current_stream())
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self._stream.synchronize()
        return out.cpu().numpy()

    def close(self) -> None:
        """Drop the execution context and engine."""
        self._context = self._engine = self._stream = None
        self._loaded = False


def make_runner(backend: str, artifact: nn.Module | str | Path, *, threads: int | None = None) -> Runner:
    """Runner for a backend name (not loaded yet).

    Args:
        backend: one of `BACKENDS`: ``torch`` (takes an ``nn.Module``, runs on CPU), ``ort-cpu``, ``ort-cuda``,
            ``ort-trt`` (take an .onnx path) or ``trt`` (a TensorRT engine or .onnx path).
        artifact: the module or file the backend runs.
        threads: intra-op threads for CPU backends; None keeps the backend's default.

    Raises:
        UsageError: unknown backend, or an artifact of the wrong kind for it.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    if backend == "torch":
        if not isinstance(artifact, nn.Module):
            raise UsageError(f"backend 'torch' runs an nn.Module, got {type(artifact).__name__}")
        return TorchRunner(artifact, threads=threads)
    if not isinstance(artifact, (str, Path)):
        raise UsageError(f"backend '{backend}' runs a model file, got {type(artifact).__name__}")
    if backend == "trt":
        return TrtRunner(artifact, threads=threads)
    return OrtRunner(artifact, provider=backend.removeprefix("ort-"), threads=threads)


def _identity_model_bytes() -> bytes:
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", io[:1], io[1:])
    # An explicit, old IR version: onnx's default follows the newest onnx release, which onnxruntime may not read yet.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def available_backends() -> dict[str, str | None]:
    """Which backends work here.

    ONNX Runtime providers are probed with a one-node model, since onnxruntime-gpu lists providers whose
    libraries or device are missing.

    Returns:
        ``{backend: None if usable, else the reason}`` for every name in `BACKENDS`, in that order.
    """
    result: dict[str, str | None] = {"torch": None}
    probe = _identity_model_bytes()
    for provider in ("cpu", "cuda", "trt"):
        runner = OrtRunner(probe, provider=provider)
        try:
            runner.load()
        except (BackendUnavailable, UsageError) as err:
            result[runner.name] = str(err)
        else:
            result[runner.name] = None
        finally:
            runner.close()
    try:
        require("tensorrt", extra="tensorrt")
    except BackendUnavailable as err:
        result["trt"] = f"trt: {err}"
    else:
        result["trt"] = None if torch.cuda.is_available() else "trt: tensorrt is installed but there is no CUDA device"
    return result
