"""Build TensorRT engines from the exported ONNX models (TensorRT 10 / 11 Python API).

The network is strongly typed, so an fp32 ONNX model gives an fp32 engine (TensorRT 11 accepts nothing
else; on TensorRT 10 the STRONGLY_TYPED creation flag asks for it). One optimization profile covers the
dynamic batch dimension of the input tensor ``input``. tensorrt is imported lazily: ``import tdexport``
works without it, and every entry point raises `BackendUnavailable` (exit 4) naming what is missing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from .._lazy import require
from ..errors import BackendUnavailable, UsageError

__all__ = ["build_engine", "build_serialized"]

INPUT_NAME = "input"


def _tensorrt() -> Any:
    trt = require("tensorrt", extra="tensorrt")
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("tensorrt is installed but no CUDA device is visible; TensorRT builds and runs "
                                 "engines on an NVIDIA GPU")
    return trt


def _check_profile(min_batch: int, opt_batch: int, max_batch: int) -> None:
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise UsageError(f"batch profile needs 1 ≤ min ≤ opt ≤ max, got min={min_batch} opt={opt_batch} "
                         f"max={max_batch}")


def build_serialized(onnx_path: str | Path, *, min_batch: int, opt_batch: int, max_batch: int,
                     workspace_gb: float = 4.0) -> bytes:
    """Parse an ONNX model and build a serialized TensorRT engine in memory.

    Args:
        onnx_path: model with a float32 input ``input`` (N, C, H, W) whose batch dimension is dynamic.
        min_batch: smallest batch N of the optimization profile.
        opt_batch: the batch the builder tunes kernels for.
        max_batch: largest batch N of the profile.
        workspace_gb: workspace memory pool limit, GiB.

    Returns:
        The serialized engine (the bytes of a .engine file).

    Raises:
        BackendUnavailable: tensorrt is not installed, there is no CUDA device, or the builder fails.
        UsageError: bad profile, missing file, an ONNX model TensorRT cannot parse or without input ``input``.
    """
    _check_profile(min_batch, opt_batch, max_batch)
    path = Path(onnx_path)
    if not path.is_file():
        raise UsageError(f"ONNX model not found: {path}")
    trt = _tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    # TensorRT 11 networks are always strongly typed and deprecate the flag; TensorRT 10 needs it set.
    if int(trt.__version__.split(".")[0]) < 11 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(path.read_bytes(), str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UsageError(f"TensorRT cannot parse {path}: {errors}")
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if [t.name for t in inputs] != [INPUT_NAME]:
        raise UsageError(f"{path}: expected one input named '{INPUT_NAME}', got {[t.name for t in inputs]}")
    chw = tuple(inputs[0].shape)[1:]
    if any(d < 0 for d in chw):
        raise UsageError(f"{path}: only the batch dimension may be dynamic, input shape is {tuple(inputs[0].shape)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (min_batch, *chw), (opt_batch, *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailable(f"TensorRT {trt.__version__} failed to build an engine for {path} "
                                 f"(see the TensorRT log above)")
    return bytes(serialized)


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, min_batch: int = 1, opt_batch: int = 8,
                 max_batch: int = 32, workspace_gb: float = 4.0) -> Path:
    """Build a TensorRT engine file and its JSON sidecar ``engine_path + ".json"``.

    The sidecar records ``tensorrt_version``, ``profile`` (``{"input": {"min", "opt", "max"}}`` as full
    (N, C, H, W) shapes), ``onnx_sha256``, ``onnx_path``, ``workspace_gb`` and ``strongly_typed``; an engine
    only loads with the TensorRT version (and GPU) that built it, so the sidecar says which.

    Args:
        onnx_path: exported model (input ``input`` with a dynamic batch dimension).
        engine_path: where to write the engine; written atomically, as is the sidecar.
        min_batch: smallest batch N of the optimization profile.
        opt_batch: the batch the builder tunes kernels for.
        max_batch: largest batch N of the profile.
        workspace_gb: builder workspace memory limit, GiB.

    Returns:
        ``engine_path`` as a Path.

    Raises:
        BackendUnavailable: tensorrt is not installed, there is no CUDA device, or the build fails.
        UsageError: see `build_serialized`.
    """
    data = build_serialized(onnx_path, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                            workspace_gb=workspace_gb)
    trt = require("tensorrt", extra="tensorrt")
    onnx_file, engine_file = Path(onnx_path), Path(engine_path)
    import onnx

    dims = onnx.load(str(onnx_file), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    chw = [d.dim_value for d in dims[1:]]
    sidecar = {
        "tensorrt_version": trt.__version__,
        "profile": {INPUT_NAME: {"min": [min_batch, *chw], "opt": [opt_batch, *chw], "max": [max_batch, *chw]}},
        "onnx_path": str(onnx_file.resolve()),
        "onnx_sha256": hashlib.sha256(onnx_file.read_bytes()).hexdigest(),
        "workspace_gb": workspace_gb,
        "strongly_typed": True,
    }
    engine_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(engine_file, data)
    atomic_write_bytes(Path(f"{engine_file}.json"), (json.dumps(sidecar, indent=2) + "\n").encode())
    return engine_file
