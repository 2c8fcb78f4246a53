"""Whole-model speed on a target runtime: export two models and time them side by side.

The latency rank rule and the "never slower" check need the speed a user will see, not a sum of layer
timings: both models are exported to ONNX the way ``validate`` exports them and timed with the same
paired, interleaved (ABBA) timer on the target backend and batch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

__all__ = ["ModelSpeed", "export_fixed", "measure_speedup", "structural_copy"]


@dataclass(frozen=True)
class ModelSpeed:
    """Paired whole-model timing on one target.

    Attributes:
        speedup: median over paired rounds of original ÷ compressed latency (×), as ``validate`` reports it.
        original_ms: original model p50 per call at the target batch (ms).
        compressed_ms: compressed model p50 per call (ms).
        batch: images per call.
        backend: runner name.
    """

    speedup: float
    original_ms: float
    compressed_ms: float
    batch: int
    backend: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (units: ms and ×)."""
        return {"speedup": self.speedup, "original_ms": self.original_ms, "compressed_ms": self.compressed_ms,
                "batch": self.batch, "backend": self.backend}


def export_fixed(model: nn.Module, folder: Path, name: str, input_shape: Sequence[int], batch: int) -> Path:
    """Export ``model`` with a fixed batch into ``folder/name.onnx`` (for reuse as `measure_speedup`'s original)."""
    from .export.onnx import export_onnx

    path = folder / f"{name}.onnx"
    export_onnx(model, path, input_shape=tuple(int(d) for d in input_shape), batch=batch, opset=18, simplify=True)
    return path


def measure_speedup(original: nn.Module | str | Path, compressed: nn.Module, *, input_shape: Sequence[int],
                    backend: str = "ort-cpu", batch: int = 1, threads: int | None = None,
                    warmup_s: float = 0.5, duration_s: float = 2.0, iterations: int = 20) -> ModelSpeed:
    """Export both models (fixed batch) and time them in paired ABBA rounds on ``backend``.

    Args:
        original: the dense model, or the path of its already exported ONNX file (reused across calls).
        compressed: the model to compare; only its structure matters for speed, so a `structural_copy`
            with random factors gives the same answer as the real one, faster.
        input_shape: (C, H, W) of one image.
        backend: ``ort-cpu``, ``ort-cuda``, ``ort-trt`` or ``trt``.
        batch: images per call.
        threads: intra-op threads (None: the backend's default).
        warmup_s: untimed warm-up per model, seconds.
        duration_s: minimum timed seconds (both models, interleaved).
        iterations: minimum timed calls per model.

    Returns:
        `ModelSpeed`.
    """
    from .runtime import make_runner
    from .validate.latency import measure_paired

    with tempfile.TemporaryDirectory(prefix="tdexport-speed-") as tmp:
        folder = Path(tmp)
        a = Path(original) if isinstance(original, (str, Path)) else export_fixed(original, folder, "original",
                                                                              input_shape, batch)
        b = export_fixed(compressed, folder, "compressed", input_shape, batch)
        x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
        with make_runner(backend, a, threads=threads) as ra, make_runner(backend, b, threads=threads) as rb:
            paired = measure_paired(ra, rb, x, warmup_s=warmup_s, duration_s=duration_s, iterations=iterations)
    return ModelSpeed(float(paired.speedup), paired.original.p50, paired.compressed.p50, batch, backend)


def structural_copy(model: nn.Module, ranks: dict[str, tuple[str, Sequence[int]]]) -> nn.Module:
    """A copy of ``model`` whose named layers are replaced by factor chains with random weights.

    Args:
        model: the dense model (not modified).
        ranks: layer name → (method, ranks), e.g. ``{"layer1.0.conv2": ("tucker2", (32, 32))}``.

    Returns:
        A model with the compressed model's structure, for timing only (its outputs are meaningless).
    """
    import copy

    from . import layers as L
    from .plan import module_aliases, set_submodule

    new = copy.deepcopy(model)
    aliases = module_aliases(new)
    for name, (method, r) in ranks.items():
        target = new.get_submodule(name)
        seq = L.structure_for(method, target, list(r))
        for p in seq.parameters():
            # Kaiming-like scale keeps activations finite through deep stacks of random chains.
            if p.dim() > 1:
                nn.init.normal_(p, std=(1.0 / p[0].numel()) ** 0.5)
            else:
                nn.init.zeros_(p)
        for alias in aliases[id(target)]:
            set_submodule(new, alias, seq)
    return new
