"""Provider options and engine-cache keys of ONNX Runtime's CUDA and TensorRT execution providers.

Pure helpers that `tdexport.runtime._ort.OrtRunner` builds its session from, kept apart from the runner:

- `cuda_provider_options`: the CUDA provider's options (``use_tf32 = 0``, optional ``user_compute_stream``).
- `trt_provider_options` and `shape_string`: the TensorRT provider's explicit optimisation profile
  (``trt_profile_min/opt/max_shapes``) and its engine and timing cache folder; ``_profile_for`` derives
  that profile from the model's input dimensions.
- `trt_cache_key`, `trt_cache_dir` and `default_trt_cache_base`: the cache folder is named by a hash of the
  model's SHA-256, the profile and the onnxruntime and TensorRT versions, so a stale engine is never loaded;
  ``_write_cache_key`` creates the folder and leaves the key beside the engines as ``key.json``.

Option names were checked against the option lists of onnxruntime-gpu 1.31.1's provider libraries and the
onnxruntime docs. Nothing here imports onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._versions import package_version
from ..errors import UsageError

__all__ = [
    "cuda_provider_options",
    "default_trt_cache_base",
    "shape_string",
    "trt_cache_dir",
    "trt_cache_key",
    "trt_provider_options",
]


def shape_string(name: str, shape: Sequence[int]) -> str:
    """One entry of a TensorRT provider profile option: ``"input:1x3x32x32"`` for ``("input", (1, 3, 32, 32))``.

    Raises:
        UsageError: an empty shape or a dimension below 1.
    """
    dims = [int(d) for d in shape]
    if not dims or any(d < 1 for d in dims):
        raise UsageError(f"a profile shape needs positive dimensions, got {tuple(shape)} for '{name}'")
    return f"{name}:{'x'.join(str(d) for d in dims)}"


def cuda_provider_options(*, device_id: int = 0, stream: int | None = None) -> dict[str, str]:
    """Options of ONNX Runtime's CUDA provider for an fp32 runner.

    Args:
        device_id: CUDA device index.
        stream: address of the ``cudaStream_t`` to compute on (``torch.cuda.Stream.cuda_stream``), or None
            for ONNX Runtime's own stream. 0 (the legacy default stream) is refused: ONNX Runtime treats 0
            as "no stream".

    Returns:
        ``{"device_id": "I", "use_tf32": "0"}`` plus ``{"user_compute_stream": "ADDRESS"}`` when a stream is
        given (the Python API sets ``has_user_compute_stream`` from it).

    Raises:
        UsageError: a negative device or a stream address of 0.
    """
    if device_id < 0:
        raise UsageError(f"device_id must be >= 0, got {device_id}")
    options = {"device_id": str(int(device_id)), "use_tf32": "0"}
    if stream is not None:
        if int(stream) == 0:
            raise UsageError("user_compute_stream must be a created CUDA stream, not the default stream 0")
        options["user_compute_stream"] = str(int(stream))
    return options


def trt_provider_options(input_name: str, profile: Mapping[str, Sequence[int]], cache_dir: str | Path, *,
                         device_id: int = 0, stream: int | None = None) -> dict[str, str]:
    """Options of ONNX Runtime's TensorRT provider: an explicit profile and engine + timing caches in one folder.

    Args:
        input_name: the model's (single) input.
        profile: ``{"min": shape, "opt": shape, "max": shape}``, full input shapes (N, C, H, W).
        cache_dir: folder of the serialized engines and the timing cache (see `trt_cache_dir`).
        device_id: CUDA device index.
        stream: address of the ``cudaStream_t`` to compute on, or None (see `cuda_provider_options`).

    Returns:
        String options: ``device_id``, ``trt_profile_min_shapes`` / ``_opt_`` / ``_max_`` (``"NAME:NxCxHxW"``),
        ``trt_engine_cache_enable`` and ``trt_timing_cache_enable`` (``"True"``: the Python API takes
        ``'True'`` / ``'False'`` for these), ``trt_engine_cache_path`` and ``trt_timing_cache_path`` (the
        folder), and ``user_compute_stream`` when a stream is given. TensorRT keeps its default precision
        flags: the provider has no option to turn TF32 off for fp32 layers.

    Raises:
        UsageError: a missing profile key, shapes of different rank, ``min ≤ opt ≤ max`` violated in some
            dimension, or a stream address of 0.
    """
    keys = ("min", "opt", "max")
    if set(profile) != set(keys):
        raise UsageError(f"a TensorRT profile needs exactly the keys min, opt and max, got {sorted(profile)}")
    shapes = [tuple(int(d) for d in profile[k]) for k in keys]
    if len({len(s) for s in shapes}) != 1 or not all(a <= b <= c for a, b, c in zip(*shapes, strict=True)):
        raise UsageError(f"TensorRT profile shapes must have one rank and min ≤ opt ≤ max, got {shapes}")
    folder = str(Path(cache_dir))
    options = {
        "device_id": str(int(device_id)),
        "trt_profile_min_shapes": shape_string(input_name, shapes[0]),
        "trt_profile_opt_shapes": shape_string(input_name, shapes[1]),
        "trt_profile_max_shapes": shape_string(input_name, shapes[2]),
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": folder,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": folder,
    }
    if stream is not None:
        if int(stream) == 0:
            raise UsageError("user_compute_stream must be a created CUDA stream, not the default stream 0")
        options["user_compute_stream"] = str(int(stream))
    return options


def trt_cache_key(onnx_sha256: str, profile: Mapping[str, Any], *, onnxruntime_version: str | None = None,
                  tensorrt_version: str | None = None) -> dict[str, Any]:
    """What identifies an ONNX Runtime TensorRT engine cache, with the sidecar's key names.

    Args:
        onnx_sha256: hex SHA-256 of the model bytes.
        profile: ``{INPUT: {"min": [...], "opt": [...], "max": [...]}}``, as in the engine sidecar.
        onnxruntime_version: None reads the installed onnxruntime(-gpu) distribution.
        tensorrt_version: None reads the installed tensorrt wheel (``"unknown"`` when TensorRT comes from
            system libraries instead, which the key then cannot tell apart).

    Returns:
        ``{"onnx_sha256", "profile", "onnxruntime_version", "tensorrt_version"}`` (JSON-ready).
    """
    return {
        "onnx_sha256": str(onnx_sha256),
        "profile": {str(k): {s: [int(d) for d in v[s]] for s in ("min", "opt", "max")} for k, v in profile.items()},
        "onnxruntime_version": onnxruntime_version or package_version("onnxruntime-gpu", "onnxruntime")
        or "unknown",
        "tensorrt_version": tensorrt_version or package_version(
            "tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-libs", "tensorrt-cu12-libs") or "unknown",
    }


def default_trt_cache_base() -> Path:
    """Parent of the TensorRT provider's cache folders: ``ort-trt`` beside the cost cache.

    ``$TDEXPORT_CACHE_DIR/ort-trt``, else ``$XDG_CACHE_HOME/tdexport/ort-trt``, else ``~/.cache/tdexport/ort-trt``
    (the folder of `tdexport.cost.cache.default_cache_path`).
    """
    from ..cost.cache import default_cache_path

    return default_cache_path().parent / "ort-trt"


def trt_cache_dir(key: Mapping[str, Any], base: str | Path | None = None) -> Path:
    """The cache folder of one `trt_cache_key`: ``BASE/<first 16 hex digits of the key's SHA-256>``.

    Any change of model, profile, onnxruntime or TensorRT version gives another folder, so a stale engine is
    never loaded. The folder is not created here.

    Args:
        key: from `trt_cache_key`.
        base: parent folder; None uses `default_trt_cache_base`.
    """
    text = json.dumps(dict(key), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return (Path(base).expanduser() if base is not None else default_trt_cache_base()) / digest


def _profile_for(dims: Sequence[int | None], max_batch: int) -> dict[str, list[int]]:
    """Min/opt/max input shapes: the fixed shape, or batch 1..``max_batch`` (opt = max, as `TrtRunner` builds)."""
    if not dims:
        raise UsageError("the ONNX input has no shape; the TensorRT provider needs one")
    if any(d is None for d in dims[1:]):
        raise UsageError(f"only the batch dimension may be dynamic for the TensorRT provider, got "
                         f"{tuple(d if d is not None else '?' for d in dims)}")
    sample = [int(d) for d in dims[1:]]  # type: ignore[arg-type]
    if dims[0] is not None:
        fixed = [int(dims[0]), *sample]
        return {"min": fixed, "opt": fixed, "max": fixed}
    if max_batch < 1:
        raise UsageError(f"max_batch must be at least 1, got {max_batch}")
    return {"min": [1, *sample], "opt": [max_batch, *sample], "max": [max_batch, *sample]}


def _write_cache_key(folder: Path, key: Mapping[str, Any]) -> None:
    """Create the cache folder and write ``key.json``: the `trt_cache_key` its name hashes, for people to read."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "key.json"
    if marker.is_file():
        return
    tmp = folder / f".key.json.{os.getpid()}"
    tmp.write_text(json.dumps(dict(key), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, marker)
