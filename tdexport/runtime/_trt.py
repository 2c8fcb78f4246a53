"""TensorRT runner (named-tensor API of TensorRT 10/11, torch CUDA buffers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._lazy import require
from ..errors import BackendUnavailable, UsageError
from ._base import Runner, as_batch, cuda_device_label


class TrtRunner(Runner):
    """Runs a TensorRT engine (or an ONNX model built into one at `load`) with torch CUDA buffers.

    Uses TensorRT's named-tensor API (TensorRT 10/11): ``Runtime.deserialize_cuda_engine``, one execution
    context, ``set_input_shape`` per batch and ``execute_async_v3`` on a private CUDA stream. After `load`,
    ``gpu_name`` is the GPU it runs on and ``fixed_batch`` the engine's batch size when the engine is static
    (fixed input shape, or an optimization profile whose min and max batch agree), else None.

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
        self.gpu_name: str | None = None
        self._device_index: int | None = None
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
            from ..export.tensorrt import build_serialized

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
        self._fixed_batch = _static_batch(engine, inputs[0])
        self._device_index = torch.cuda.current_device()
        self.gpu_name = torch.cuda.get_device_name(self._device_index)
        self._engine, self._context = engine, engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self._input, self._output = inputs[0], outputs[0]
        self._loaded = True

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for images (N, C, H, W); N must lie in the engine's batch profile."""
        self._check_loaded()
        x = torch.from_numpy(as_batch(batch)).to("cuda")
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

    def device_info(self) -> dict[str, Any]:
        """``{"device": "cuda:I (GPU name)", "gpu": GPU name, "threads", "fixed_batch"}`` of the loaded engine."""
        self._check_loaded()
        return {"device": cuda_device_label(self._device_index), "gpu": self.gpu_name, "threads": self.threads,
                "fixed_batch": self._fixed_batch}

    def close(self) -> None:
        """Drop the execution context and engine."""
        self._context = self._engine = self._stream = None
        self._loaded = False


def _static_batch(engine: Any, name: str) -> int | None:
    """The engine input's batch size when it cannot vary (static shape or min = max profile), else None."""
    first = int(engine.get_tensor_shape(name)[0])
    if first > 0:
        return first
    low, _, high = engine.get_tensor_profile_shape(name, 0)
    return int(low[0]) if int(low[0]) == int(high[0]) else None
