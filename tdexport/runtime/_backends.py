"""Backend names, the runner factory and the probe of which backends work on this machine."""

from __future__ import annotations

import tempfile
from pathlib import Path

from torch import nn

from ..engine import probe as probe_tensorrt
from ..errors import BackendUnavailable, UsageError
from ._base import Runner
from ._ort import OrtRunner
from ._torch import TorchRunner
from ._trt import TrtRunner

BACKENDS = ("torch", "ort-cpu", "ort-cuda", "ort-trt", "trt")


def make_runner(backend: str, artifact: nn.Module | str | Path, *, threads: int | None = None,
                device: str | None = None) -> Runner:
    """Runner for a backend name (not loaded yet).

    Args:
        backend: one of `BACKENDS`: ``torch`` (takes an ``nn.Module``), ``ort-cpu``, ``ort-cuda``, ``ort-trt``
            (take an .onnx path) or ``trt`` (a TensorRT engine or .onnx path).
        artifact: the module or file the backend runs.
        threads: intra-op threads for CPU backends; None keeps the backend's default.
        device: where ``torch`` runs (``cpu``, ``cuda``, ``cuda:I``; None: cpu) and which CUDA device
            ``ort-cuda`` / ``ort-trt`` use (``cuda`` or ``cuda:I``; None: device 0). Other backends take None.

    Raises:
        UsageError: unknown backend, an artifact of the wrong kind for it, or a device it cannot use.
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    if backend == "torch":
        if not isinstance(artifact, nn.Module):
            raise UsageError(f"backend 'torch' runs an nn.Module, got {type(artifact).__name__}")
        return TorchRunner(artifact, threads=threads, device=device or "cpu")
    if not isinstance(artifact, (str, Path)):
        raise UsageError(f"backend '{backend}' runs a model file, got {type(artifact).__name__}")
    if backend in ("ort-cuda", "ort-trt"):
        return OrtRunner(artifact, provider=backend.removeprefix("ort-"), threads=threads,
                         device_id=_cuda_index(backend, device))
    if device is not None:
        raise UsageError(f"backend '{backend}' takes no device argument, got '{device}'")
    if backend == "trt":
        return TrtRunner(artifact, threads=threads)
    return OrtRunner(artifact, provider=backend.removeprefix("ort-"), threads=threads)


def _cuda_index(backend: str, device: str | None) -> int:
    """CUDA device index from ``None`` / ``cuda`` (0) or ``cuda:I``."""
    if device is None or device == "cuda":
        return 0
    head, _, index = device.partition(":")
    if head != "cuda" or not index.isdigit():
        raise UsageError(f"backend '{backend}' runs on a CUDA device ('cuda' or 'cuda:I'), got '{device}'")
    return int(index)


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
    libraries or device are missing; TensorRT by creating a ``trt.Runtime`` (`tdexport.engine.probe`), which
    fails without tensorrt, a CUDA device, or a driver new enough for the tensorrt wheel.

    Returns:
        ``{backend: None if usable, else the reason}`` for every name in `BACKENDS`, in that order.
    """
    result: dict[str, str | None] = {"torch": None}
    probe = _identity_model_bytes()
    # The TensorRT provider's engine cache of the probe model goes to a scratch folder, not the user's cache.
    with tempfile.TemporaryDirectory(prefix="tdexport-probe-") as scratch:
        for provider in ("cpu", "cuda", "trt"):
            runner = OrtRunner(probe, provider=provider, cache_dir=scratch)
            try:
                runner.load()
            except (BackendUnavailable, UsageError) as err:
                result[runner.name] = str(err)
            else:
                result[runner.name] = None
            finally:
                runner.close()
    # Importing tensorrt is not enough: the wheel may need a newer driver, so really create a runtime.
    reason = probe_tensorrt()
    result["trt"] = None if reason is None else f"trt: {reason}"
    return result
