"""The JSON sidecar ``FILE.engine.json`` that says how, where and from what an engine was built.

A serialized TensorRT engine only deserializes with the TensorRT version that built it and only runs on
GPUs of the same compute capability, and the engine file itself cannot say which. The sidecar records
that, plus the ONNX model's hash and the build settings, so a stale engine is rebuilt rather than reused
(`engine_is_current`) and a mismatched one is refused with a clear message (`load_engine_bytes`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable, UsageError
from . import _env
from .onnxinfo import inspect_onnx, profile_shapes, resolve_profile

__all__ = ["SIDECAR_KEYS", "engine_is_current", "load_engine_bytes", "read_sidecar", "sha256_file", "sidecar_path"]

SIDECAR_KEYS = ("tensorrt_version", "gpu_name", "compute_capability", "precision", "tf32", "strongly_typed",
                "profile", "onnx_path", "onnx_sha256", "engine_sha256", "workspace_gib", "opt_level", "built_at")


def sidecar_path(engine_path: str | Path) -> Path:
    """``FILE.engine.json`` for ``FILE.engine``."""
    return Path(f"{engine_path}.json")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(engine_path: str | Path) -> dict[str, Any] | None:
    """The sidecar of an engine as a dict, or None when the engine has none (e.g. built by trtexec).

    Raises:
        UsageError: the sidecar exists but is not a JSON object.
    """
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read the engine sidecar {path}: {err}") from err
    if not isinstance(data, dict):
        raise UsageError(f"the engine sidecar {path} is not a JSON object")
    return data


def engine_is_current(engine_path: str | Path, onnx_path: str | Path, *, min_batch: int | None = None,
                      opt_batch: int | None = None, max_batch: int | None = None, tf32: bool = False,
                      workspace_gib: float | None = None, timing_cache: str | Path | None = None,
                      opt_level: int | None = None) -> bool:
    """Whether ``engine_path`` can be reused instead of building the engine these arguments describe.

    True only when the engine and its sidecar exist, the engine's bytes are the ones the sidecar hashed,
    and the sidecar matches: the ONNX model's SHA-256, the resolved batch profile, the precision, TF32,
    strong typing, the running TensorRT version and this GPU (name and compute capability).
    ``workspace_gib``, ``timing_cache`` and ``opt_level`` are accepted so the build arguments can be passed
    unchanged; they change build time and speed, not what the engine computes, and are not compared.

    Args:
        engine_path: the engine file (sidecar at ``engine_path + ".json"``).
        onnx_path: the model the engine should have been built from.
        min_batch: as for `tdexport.engine.build_engine`.
        opt_batch: as for `tdexport.engine.build_engine`.
        max_batch: as for `tdexport.engine.build_engine`.
        tf32: as for `tdexport.engine.build_engine`.
        workspace_gib: ignored (see above).
        timing_cache: ignored (see above).
        opt_level: ignored (see above).

    Returns:
        False also when tensorrt or a CUDA device is missing here (the engine cannot run, so it is not reusable).

    Raises:
        UsageError: the ONNX model or the batch sizes are invalid (as `build_engine` would report).
    """
    del workspace_gib, timing_cache, opt_level
    info = inspect_onnx(onnx_path)
    profile = profile_shapes(info, resolve_profile(info, min_batch, opt_batch, max_batch))
    engine = Path(engine_path)
    try:
        sidecar = read_sidecar(engine)
    except UsageError:
        return False
    if sidecar is None or not engine.is_file():
        return False
    try:
        trt, gpu = _env.tensorrt(), _env.cuda_device()
    except BackendUnavailable:
        return False
    expected = {
        "onnx_sha256": sha256_file(info.path),
        "profile": profile,
        "precision": info.precision,
        "tf32": bool(tf32),
        "strongly_typed": True,
        "tensorrt_version": trt.__version__,
        "gpu_name": gpu.name,
        "compute_capability": gpu.compute_capability,
    }
    if any(sidecar.get(key) != value for key, value in expected.items()):
        return False
    return sidecar.get("engine_sha256") == sha256_file(engine)


def load_engine_bytes(path: str | Path) -> bytes:
    """Read a serialized engine, refusing one its sidecar says will not load here.

    An engine without a sidecar is returned as is (TensorRT itself then refuses a mismatched one).

    Raises:
        UsageError: the file is missing; its sidecar is unreadable or describes other bytes; the engine was
            built with another TensorRT version than the running one, or for another compute capability.
        BackendUnavailable: a sidecar is present and tensorrt is not installed (the version cannot be checked).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"TensorRT engine not found: {path}")
    data = path.read_bytes()
    sidecar = read_sidecar(path)
    if sidecar is None:
        return data
    recorded = sidecar.get("engine_sha256")
    if recorded is not None and recorded != hashlib.sha256(data).hexdigest():
        raise UsageError(f"{sidecar_path(path)} describes another engine than {path} (SHA-256 differs); rebuild "
                         f"it with: tdexport build-engine MODEL.onnx --out {path} --overwrite")
    trt = _env.tensorrt()
    built_with = sidecar.get("tensorrt_version")
    if built_with is not None and built_with != trt.__version__:
        raise UsageError(f"{path} was built with TensorRT {built_with} but this is TensorRT {trt.__version__}; "
                         f"engines only load with the version that built them: rebuild it with tdexport "
                         f"build-engine MODEL.onnx --out {path} --overwrite")
    built_for = sidecar.get("compute_capability")
    try:
        gpu = _env.cuda_device()
    except BackendUnavailable:
        return data  # nothing to compare with; running it needs a GPU and reports that
    if built_for is not None and built_for != gpu.compute_capability:
        raise UsageError(f"{path} was built for a GPU of compute capability {built_for} "
                         f"({sidecar.get('gpu_name')}) but {gpu.name} has {gpu.compute_capability}; rebuild it on "
                         f"this GPU")
    return data
