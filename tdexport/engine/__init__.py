"""TensorRT engines: build them from ONNX, describe them in a sidecar, decide whether one can be reused.

`build_engine` writes ``FILE.engine`` (a plain serialized engine) and ``FILE.engine.json`` (how, where and
from what it was built); `build_serialized` builds in memory; `engine_is_current` says whether an existing
engine still matches its model, settings, TensorRT version and GPU; `load_engine_bytes` reads an engine
and refuses one its sidecar says will not load here. `create_runtime` and `probe` give the runtime side
(`tdexport.runtime.TrtRunner`, `available_backends`) the same logger and error messages.

Importing this package imports neither tensorrt, onnx nor `tdexport.runtime` / `tdexport.export`, so both
of those can use it. Modules: `onnxinfo` (what the ONNX model says), `build`, `sidecar`, `runfolder` (a
validation run's engines), `_env` (tensorrt module, CUDA device, the process-wide TensorRT logger).
"""

from __future__ import annotations

from ._env import GpuInfo, LogCapture, create_runtime, cuda_device, probe, tensorrt, trt_logger
from .build import EngineBuildError, build_engine, build_serialized, network_flags
from .onnxinfo import (
    DEFAULT_PROFILE,
    INPUT_NAME,
    OnnxInfo,
    inspect_onnx,
    onnx_precision,
    profile_shapes,
    resolve_profile,
)
from .runfolder import TIMING_CACHE_NAME, engine_name, run_engines
from .sidecar import SIDECAR_KEYS, engine_is_current, load_engine_bytes, read_sidecar, sidecar_path

__all__ = [
    "DEFAULT_PROFILE",
    "INPUT_NAME",
    "SIDECAR_KEYS",
    "TIMING_CACHE_NAME",
    "EngineBuildError",
    "GpuInfo",
    "LogCapture",
    "OnnxInfo",
    "build_engine",
    "build_serialized",
    "create_runtime",
    "cuda_device",
    "engine_is_current",
    "engine_name",
    "inspect_onnx",
    "load_engine_bytes",
    "network_flags",
    "onnx_precision",
    "probe",
    "profile_shapes",
    "read_sidecar",
    "resolve_profile",
    "run_engines",
    "sidecar_path",
    "tensorrt",
    "trt_logger",
]
