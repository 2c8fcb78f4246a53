"""One runner interface over torch, ONNX Runtime (CPU / CUDA / TensorRT providers) and TensorRT.

Every runner maps a float32 numpy batch (N, C, H, W) to float32 numpy logits (N, classes), so accuracy,
parity and latency code never knows which backend it talks to (the Polygraphy design). A runner is loaded
explicitly (`Runner.load`) or by a ``with`` block, and ``infer`` returns host arrays, so timing around it
includes device synchronisation. Once loaded, a runner says what it really runs on: ``fixed_batch`` (the
only batch size its graph or engine accepts, or None) and ``device_info()`` (device, ONNX Runtime
providers of the session, GPU name), which is what the report's environment records.

Backends that are not usable on this machine raise `BackendUnavailable` (exit 4) with the missing piece:
onnxruntime-gpu lists its CUDA and TensorRT providers even where their libraries or the GPU are missing and
then silently runs on CPU, so `OrtRunner` checks the providers the session really got.

Modules: `_base` (the `Runner` interface), `_torch`, `_ort`, `_trt` (one per backend), `_ort_options`
(ONNX Runtime provider options and TensorRT-provider cache keys) and `_backends` (backend names,
`make_runner`, `available_backends`).
"""

from __future__ import annotations

from ._backends import BACKENDS, available_backends, make_runner
from ._base import Runner
from ._ort import OrtRunner
from ._torch import TorchRunner
from ._trt import TrtRunner

__all__ = [
    "BACKENDS",
    "Runner",
    "TorchRunner",
    "OrtRunner",
    "TrtRunner",
    "make_runner",
    "available_backends",
]
