"""TensorRT runner (named-tensor API of TensorRT 10/11, torch CUDA buffers and stream)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import engine as trt_engine
from ..errors import BackendUnavailable, UsageError
from ._base import Runner, StreamTimer, as_batch, cuda_device_label


class TrtRunner(Runner):
    """Runs a TensorRT engine (or an ONNX model built into one at `load`) on one CUDA stream.

    Uses TensorRT's named-tensor API (TensorRT 10/11): ``Runtime.deserialize_cuda_engine``, one execution
    context, ``set_input_shape`` per batch and ``execute_async_v3``. Device buffers for the input and output
    are allocated once, at the batch profile's maximum, and bound with ``set_tensor_address`` at `load`. A
    batch is staged in a pinned host buffer and copied to the device, run and copied back on the runner's
    own stream, so the copies and the inference are ordered on one stream without cross-stream waits.
    `infer_timed` reports the device time of ``execute_async_v3`` from CUDA events recorded on that stream
    around the enqueue (trtexec's "GPU compute time": copies excluded).

    After `load`, ``gpu_name`` is the GPU it runs on and ``fixed_batch`` the engine's batch size when the
    engine is static (fixed input shape, or an optimization profile whose min and max batch agree), else None.

    Args:
        engine_or_onnx_path: a serialized engine (``.engine`` / ``.plan``, from `tdexport.engine.build_engine`
            on this GPU and TensorRT version; its sidecar, when present, is checked) or an ``.onnx`` file, built
            in memory (fp32 stays fp32: strongly typed, TF32 off) with batch profile 1..``max_batch`` (a
            fixed-batch model: its batch).
        max_batch: largest batch of the in-memory build (ignored for an engine file).
        threads: recorded only; TensorRT runs on the GPU.
    """

    # The first enqueue after loading initialises the execution context; latency runs it apart.
    setup_on_first_call = True

    def __init__(self, engine_or_onnx_path: str | Path, *, max_batch: int = 64, threads: int | None = None) -> None:
        super().__init__(threads=threads)
        self.name = "trt"
        self.path = Path(engine_or_onnx_path)
        self.max_batch = max_batch
        self.gpu_name: str | None = None
        self._device_index: int | None = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._input = self._output = ""
        self._batch_range = (0, 0)
        self._sample_shape: tuple[int, ...] = ()
        self._buffers: dict[str, torch.Tensor] = {}
        self._timer: StreamTimer | None = None

    @property
    def device_timing(self) -> bool:
        """True once loaded: every call reports its device time."""
        return self._loaded

    def load(self) -> None:
        """Deserialize (or build) the engine, create an execution context and bind preallocated buffers.

        Raises:
            BackendUnavailable: tensorrt is not installed, there is no CUDA device, or TensorRT cannot create
                a runtime or an execution context here.
            UsageError: the file is missing, the engine does not deserialize (or its sidecar says it was
                built with another TensorRT version or GPU), or its I/O is not one float32 input and one
                float32 output.
            RuntimeError: TensorRT refused a buffer address (an internal error).
        """
        if self._loaded:
            return
        trt = trt_engine.tensorrt()
        gpu = trt_engine.cuda_device()
        if not self.path.is_file():
            raise UsageError(f"TensorRT engine / ONNX model not found: {self.path}")
        if self.path.suffix == ".onnx":
            fixed = trt_engine.inspect_onnx(self.path).static_batch is not None
            profile = {} if fixed else {"min_batch": 1, "opt_batch": self.max_batch, "max_batch": self.max_batch}
            data = trt_engine.build_serialized(self.path, **profile)
        else:
            data = trt_engine.load_engine_bytes(self.path)
        runtime = trt_engine.create_runtime(trt)
        capture = trt_engine.LogCapture(trt_engine.trt_logger(trt))
        try:
            engine = runtime.deserialize_cuda_engine(data)
        except Exception as err:  # some builds raise instead of returning None
            raise UsageError(f"TensorRT {trt.__version__} could not deserialize {self.path}: {err}"
                             f"{capture.text()}") from err
        if engine is None:
            raise UsageError(f"TensorRT {trt.__version__} could not deserialize {self.path}; engines only load with "
                             f"the TensorRT version (and GPU) that built them{capture.text()}")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UsageError(f"{self.path}: expected one input and one output tensor, got {inputs} / {outputs}")
        for n in names:
            if engine.get_tensor_dtype(n) != trt.float32:
                raise UsageError(f"{self.path}: tensor '{n}' is {engine.get_tensor_dtype(n)}, runners use float32")
        low, max_shape = _input_bounds(engine, inputs[0], self.path)
        high = max_shape[0]
        context = engine.create_execution_context()
        if context is None:
            raise BackendUnavailable(f"trt: TensorRT could not create an execution context for {self.path} (out of "
                                     f"GPU memory?){capture.text()}")
        if not context.set_input_shape(inputs[0], max_shape):
            raise UsageError(f"{self.path}: the engine refuses its own maximum input shape {max_shape}"
                             f"{capture.text()}")
        out_shape = tuple(int(d) for d in context.get_tensor_shape(outputs[0]))
        if any(d < 0 for d in out_shape):
            raise UsageError(f"{self.path}: output '{outputs[0]}' has no fixed shape {out_shape} at batch {high}")
        device = torch.device("cuda", gpu.index)
        # Allocated on the stream that uses them, so the caching allocator never hands them to another stream.
        stream = torch.cuda.Stream(device=device)
        with torch.cuda.stream(stream):
            buffers = {
                "in": torch.empty(math.prod(max_shape), dtype=torch.float32, device=device),
                "out": torch.empty(math.prod(out_shape), dtype=torch.float32, device=device),
            }
        buffers["in_host"] = torch.empty(buffers["in"].numel(), dtype=torch.float32, pin_memory=True)
        buffers["out_host"] = torch.empty(buffers["out"].numel(), dtype=torch.float32, pin_memory=True)
        for name, key in ((inputs[0], "in"), (outputs[0], "out")):
            if not context.set_tensor_address(name, buffers[key].data_ptr()):
                raise RuntimeError(f"TensorRT refused the device buffer of tensor '{name}'{capture.text()}")
        self._fixed_batch = low if low == high else None
        self._batch_range, self._sample_shape = (low, high), max_shape[1:]
        self._device_index, self.gpu_name = gpu.index, gpu.name
        self._runtime, self._engine, self._context, self._stream = runtime, engine, context, stream
        self._buffers = buffers
        self._timer = StreamTimer(stream)
        self._input, self._output = inputs[0], outputs[0]
        self._first_call_ms = None
        self._loaded = True

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, classes) float32 for images (N, C, H, W); N must lie in the engine's batch profile.

        Raises:
            UsageError: N is outside the profile or the sample shape is not the engine's.
            RuntimeError: TensorRT failed to enqueue the inference.
        """
        return self.infer_timed(batch)[0]

    def infer_timed(self, batch: np.ndarray) -> tuple[np.ndarray, float | None]:
        """(logits (N, classes) float32, device ms of ``execute_async_v3``) for images (N, C, H, W).

        Raises:
            UsageError: N is outside the profile or the sample shape is not the engine's.
            RuntimeError: TensorRT failed to enqueue the inference.
        """
        self._check_loaded()
        start_ns = time.perf_counter_ns()
        x = as_batch(batch)
        n, (low, high) = x.shape[0], self._batch_range
        if tuple(x.shape[1:]) != self._sample_shape:
            raise UsageError(f"the engine takes samples of shape {self._sample_shape}, got {tuple(x.shape[1:])}")
        if not low <= n <= high:
            raise UsageError(f"batch {n} is outside the engine's optimization profile (batch {low}..{high})")
        if not self._context.set_input_shape(self._input, tuple(x.shape)):
            raise UsageError(f"TensorRT refused the input shape {tuple(x.shape)}")
        out_shape = tuple(int(d) for d in self._context.get_tensor_shape(self._output))
        size_in, size_out = x.size, math.prod(out_shape)
        buf = self._buffers
        buf["in_host"][:size_in].numpy()[:] = x.reshape(-1)
        timer = self._timer
        with torch.cuda.stream(self._stream):
            buf["in"][:size_in].copy_(buf["in_host"][:size_in], non_blocking=True)
            timer.start()
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")
            timer.stop()
            buf["out_host"][:size_out].copy_(buf["out"][:size_out], non_blocking=True)
        self._stream.synchronize()
        device_ms = timer.elapsed_ms()
        out = buf["out_host"][:size_out].numpy().reshape(out_shape).copy()
        self._note_call(start_ns)
        return out, device_ms

    def device_info(self) -> dict[str, Any]:
        """``{"device": "cuda:I (GPU name)", "gpu": GPU name, "threads", "fixed_batch"}`` of the loaded engine."""
        self._check_loaded()
        return {"device": cuda_device_label(self._device_index), "gpu": self.gpu_name, "threads": self.threads,
                "fixed_batch": self._fixed_batch}

    def close(self) -> None:
        """Drop the execution context, engine, runtime and buffers (in that order); safe to call twice."""
        if self._stream is not None:
            self._stream.synchronize()
        self._context = None
        self._engine = None
        self._runtime = None
        self._buffers = {}
        self._timer = None
        self._stream = None
        self._loaded = False


def _input_bounds(engine: Any, name: str, path: Path) -> tuple[int, tuple[int, ...]]:
    """(smallest batch, largest input shape) the engine input accepts: its fixed shape, or profile 0's bounds.

    Raises:
        UsageError: a dimension other than the batch varies within the profile.
    """
    shape = tuple(int(d) for d in engine.get_tensor_shape(name))
    if all(d > 0 for d in shape):
        return shape[0], shape
    low, _, high = (tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(name, 0))
    if low[1:] != high[1:]:
        raise UsageError(f"{path}: only the batch dimension of '{name}' may vary, its profile spans {low}..{high}")
    return low[0], high
