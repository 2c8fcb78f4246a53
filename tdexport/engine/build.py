"""Build TensorRT engines from ONNX models with the TensorRT 10 / 11 Python API.

The network is strongly typed, so the engine runs the types the ONNX graph has (fp32 stays fp32; an fp16
or Q/DQ-quantized graph gives an fp16 / int8 engine): TensorRT 10 is asked for it with the
``STRONGLY_TYPED`` creation flag, TensorRT 11 networks are always strongly typed and take no flag. TF32 is
off unless asked for, since TensorRT enables it by default and it rounds fp32 convolutions to 10-bit
mantissas. One optimization profile covers the batch dimension of the input ``input``.

Errors: tensorrt / CUDA / builder missing -> `BackendUnavailable` (exit 4); a model or setting TensorRT
cannot take -> `UsageError` (exit 2); TensorRT failing to build a model it parsed -> `EngineBuildError`
(exit 1). Each quotes the error messages TensorRT logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from .._io import atomic_write_bytes
from ..errors import BackendUnavailable, EngineBuildError, UsageError
from . import _env
from .onnxinfo import INPUT_NAME, OnnxInfo, inspect_onnx, profile_shapes, resolve_profile
from .sidecar import sha256_file, sidecar_path

__all__ = ["EngineBuildError", "build_engine", "build_serialized", "network_flags"]

_log = logging.getLogger("tdexport.engine")
OPT_LEVELS = range(0, 6)  # TensorRT's builder optimization levels 0..5 (3 is its default)


def network_flags(trt: ModuleType) -> int:
    """``create_network`` flags for a strongly typed network.

    TensorRT 10: ``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)`` (= 2). TensorRT ≥ 11: 0 (networks
    are always strongly typed and the flag is deprecated and ignored).
    """
    if _env.trt_major(trt) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


@dataclass(frozen=True)
class _Built:
    data: bytes
    info: OnnxInfo
    onnx_sha256: str
    profile: tuple[int, int, int]
    tensorrt_version: str
    gpu: _env.GpuInfo


def _check_settings(workspace_gib: float, opt_level: int | None, timing_cache: str | Path | None) -> None:
    if not (isinstance(workspace_gib, (int, float)) and math.isfinite(workspace_gib) and workspace_gib > 0):
        raise UsageError(f"workspace must be a positive number of GiB, got {workspace_gib!r}")
    if opt_level is not None and (isinstance(opt_level, bool) or opt_level not in OPT_LEVELS):
        raise UsageError(f"builder optimization level must be an integer 0..5, got {opt_level!r}")
    if timing_cache is not None and Path(timing_cache).is_dir():
        raise UsageError(f"timing cache {timing_cache} is a folder; name a file")


def _create_builder(trt: ModuleType, logger: Any, capture: _env.LogCapture) -> Any:
    try:
        builder = trt.Builder(logger)
    except Exception as err:  # pybind raises TypeError / RuntimeError when the C++ factory fails
        raise BackendUnavailable(f"TensorRT {trt.__version__} cannot create a builder here: {err}"
                                 f"{capture.text()}") from err
    if builder is None:
        raise BackendUnavailable(f"TensorRT {trt.__version__} cannot create a builder here{capture.text()}")
    return builder


def _attach_timing_cache(config: Any, path: Path) -> None:
    """Give ``config`` the timing cache stored at ``path`` (or a new one); a stale or corrupt file starts over."""
    blob = path.read_bytes() if path.is_file() else b""
    cache = None
    try:
        cache = config.create_timing_cache(blob)
    except Exception as err:  # a corrupt blob: TensorRT's exception type is not documented
        _log.warning("timing cache %s cannot be read (%s); starting a new one", path, err)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False) is not False:
        return
    if blob:
        _log.warning("timing cache %s was made by another TensorRT version or GPU; starting a new one "
                     "(the file will be replaced after the build)", path)
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        _log.warning("TensorRT returned no timing cache; %s not written", path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, bytes(cache.serialize()))


def _build(onnx_path: str | Path, *, min_batch: int | None, opt_batch: int | None, max_batch: int | None,
           workspace_gib: float, timing_cache: str | Path | None, opt_level: int | None, tf32: bool) -> _Built:
    _check_settings(workspace_gib, opt_level, timing_cache)
    info = inspect_onnx(onnx_path)
    profile = resolve_profile(info, min_batch, opt_batch, max_batch)
    onnx_sha256 = sha256_file(info.path)  # hashed before the build reads the file
    trt = _env.tensorrt()
    gpu = _env.cuda_device()
    logger = _env.trt_logger(trt)
    capture = _env.LogCapture(logger)
    builder = _create_builder(trt, logger, capture)
    version = trt.__version__

    network = builder.create_network(network_flags(trt))
    if network is None:
        raise EngineBuildError(f"TensorRT {version} could not create a network{capture.text()}")
    parser = trt.OnnxParser(network, logger)
    # parse_from_file (not parse(bytes)) so the parser finds weights stored next to the model.
    parsed = parser.parse_from_file(str(info.path))
    problems = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    if not parsed or problems:
        detail = "; ".join(problems) or "the parser gave no reason"
        raise UsageError(f"TensorRT {version} cannot parse {info.path}: {detail}{capture.text()}")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if names != [INPUT_NAME]:
        raise UsageError(f"{info.path}: TensorRT sees inputs {names}, expected ['{INPUT_NAME}']")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default in TensorRT 10 and 11
    if opt_level is not None:
        config.builder_optimization_level = int(opt_level)
    if timing_cache is not None:
        _attach_timing_cache(config, Path(timing_cache))
    shapes = profile_shapes(info, profile)[INPUT_NAME]
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, tuple(shapes["min"]), tuple(shapes["opt"]), tuple(shapes["max"]))
    index = config.add_optimization_profile(opt_profile)
    if isinstance(index, int) and index < 0:
        raise UsageError(f"TensorRT {version} rejected the batch profile {shapes}{capture.text()}")

    try:
        serialized = builder.build_serialized_network(network, config)
    except Exception as err:  # e.g. out of GPU memory surfacing as a RuntimeError
        raise EngineBuildError(f"TensorRT {version} failed to build an engine for {info.path} on {gpu.name}: "
                               f"{err}{capture.text()}") from err
    if serialized is None:
        raise EngineBuildError(f"TensorRT {version} failed to build an engine for {info.path} on {gpu.name}"
                               f"{capture.text() or ' (TensorRT logged no error)'}")
    if timing_cache is not None:
        _save_timing_cache(config, Path(timing_cache))
    return _Built(data=bytes(serialized), info=info, onnx_sha256=onnx_sha256, profile=profile,
                  tensorrt_version=version, gpu=gpu)


def build_serialized(onnx_path: str | Path, *, min_batch: int | None = None, opt_batch: int | None = None,
                     max_batch: int | None = None, workspace_gib: float = 4.0, timing_cache: str | Path | None = None,
                     opt_level: int | None = None, tf32: bool = False) -> bytes:
    """Parse an ONNX model and build a serialized TensorRT engine in memory (strongly typed, TF32 off).

    Args:
        onnx_path: model with one input ``input`` (N, C, H, W); only N may be dynamic.
        min_batch: smallest batch N of the optimization profile.
        opt_batch: the batch the builder tunes kernels for.
        max_batch: largest batch N of the profile. A fixed-batch model gets min = opt = max = its batch;
            missing sizes of a dynamic one come from `DEFAULT_PROFILE` (see `resolve_profile`).
        workspace_gib: workspace memory pool limit, GiB.
        timing_cache: file of TensorRT's kernel timing cache: loaded when it exists (a cache from another
            TensorRT version or GPU is replaced), written back atomically after the build. None: no file.
        opt_level: builder optimization level 0..5 (TensorRT's default 3 when None); higher builds longer.
        tf32: allow TF32 for fp32 convolutions and matmuls (faster on Ampere and newer, ~1e-3 relative error).

    Returns:
        The serialized engine (the bytes of a .engine file).

    Raises:
        BackendUnavailable: tensorrt is not installed, there is no CUDA device, or no builder can be created.
        UsageError: missing or invalid model, bad batch sizes or settings, or a model TensorRT cannot parse.
        EngineBuildError: TensorRT could not build an engine (exit 1).
    """
    return _build(onnx_path, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                  workspace_gib=workspace_gib, timing_cache=timing_cache, opt_level=opt_level, tf32=tf32).data


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, min_batch: int | None = None,
                 opt_batch: int | None = None, max_batch: int | None = None, workspace_gib: float = 4.0,
                 timing_cache: str | Path | None = None, opt_level: int | None = None, tf32: bool = False) -> Path:
    """Build ``engine_path`` (a plain serialized engine, ``trtexec --loadEngine`` reads it) and its sidecar.

    The sidecar ``engine_path + ".json"`` records ``tensorrt_version``, ``gpu_name``, ``compute_capability``,
    ``precision`` (from the ONNX graph), ``tf32``, ``strongly_typed``, ``profile`` (``{"input": {"min",
    "opt", "max"}}`` as full shapes), ``onnx_path``, ``onnx_sha256``, ``engine_sha256``, ``workspace_gib``,
    ``opt_level`` and ``built_at`` (UTC, ISO 8601). Both files are written atomically, the engine first;
    nothing is written when the build fails.

    Args:
        onnx_path: the model; see `build_serialized` for it and for the other arguments.
        engine_path: the engine file to write; its folder is created.
        min_batch: see `build_serialized`.
        opt_batch: see `build_serialized`.
        max_batch: see `build_serialized`.
        workspace_gib: see `build_serialized`.
        timing_cache: see `build_serialized`.
        opt_level: see `build_serialized`.
        tf32: see `build_serialized`.

    Returns:
        ``engine_path`` as a Path.

    Raises:
        BackendUnavailable, UsageError, EngineBuildError: see `build_serialized`.
    """
    built = _build(onnx_path, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                   workspace_gib=workspace_gib, timing_cache=timing_cache, opt_level=opt_level, tf32=tf32)
    engine_file = Path(engine_path)
    sidecar = {
        "tensorrt_version": built.tensorrt_version,
        "gpu_name": built.gpu.name,
        "compute_capability": built.gpu.compute_capability,
        "precision": built.info.precision,
        "tf32": bool(tf32),
        "strongly_typed": True,
        "profile": profile_shapes(built.info, built.profile),
        "onnx_path": str(built.info.path.resolve()),
        "onnx_sha256": built.onnx_sha256,
        "engine_sha256": hashlib.sha256(built.data).hexdigest(),
        "workspace_gib": float(workspace_gib),
        "opt_level": opt_level,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    engine_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(engine_file, built.data)
    atomic_write_bytes(sidecar_path(engine_file), (json.dumps(sidecar, indent=2) + "\n").encode())
    return engine_file
