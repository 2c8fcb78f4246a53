"""The public Python API: named models in, compressed models and checkpoints out.

The CLI is a thin shell over these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from . import checkpoint
from . import planner as _planner
from .plan import Compressed, Plan
from .zoo import create_model, model_info

__all__ = ["compress", "load", "save", "survey"]


def _resolve(model: nn.Module | str, weights: str | None, num_classes: int | None,
             input_shape: Sequence[int] | None, model_name: str | None) -> tuple[nn.Module, list[int], str]:
    if isinstance(model, str):
        info = model_info(model)
        module = create_model(model, weights=weights, num_classes=num_classes)
        return module, list(input_shape or info.input_shape), model
    if input_shape is None:
        raise ValueError("input_shape (C, H, W) is required when passing an nn.Module")
    return model, list(input_shape), model_name or "custom"


def compress(
    model: nn.Module | str,
    *,
    format: str = "tucker",
    rank: str = "vbmf",
    weights: str | None = "default",
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    model_name: str | None = None,
    **options: Any,
) -> Compressed:
    """Compress a zoo model by name, or any nn.Module, with tensor decompositions.

    Args:
        model: a zoo name (``"resnet50"``) or a dense module (then ``input_shape`` is required).
        format: ``tucker`` (``tucker2``/``tk``), ``cp`` or ``svd``.
        rank: rank rule, e.g. ``vbmf``, ``vbmf:0.8``, ``energy:0.9``, ``ratio:0.5``, ``64``, ``plan:FILE``,
            ``macs:3x``, ``params:0.33``, ``latency:2x`` (needs ``target``).
        weights: for a zoo name: ``default`` (published), ``random``/None, or a checkpoint path.
        num_classes: classifier width of a zoo model (default: the model's own).
        input_shape: (C, H, W); defaults to the zoo model's input resolution.
        model_name: name recorded in the plan for a module (default ``custom``).
        **options: passed to `tdexport.planner.compress` (target, cost_cache, round_to, layers, exclude, include_stem,
            include_classifier, iters, cp_iters, progress).

    Returns:
        `Compressed` (``.model``, ``.plan``); the dense model is left untouched.
    """
    module, shape, name = _resolve(model, weights, num_classes, input_shape, model_name)
    if num_classes is None and isinstance(model, str):
        num_classes = classifier_width(module)
    result = _planner.compress(module, format=format, rank=rank, input_shape=shape, model_name=name,
                            num_classes=num_classes, **options)
    if isinstance(model, str):
        # Recorded so fine-tuning can rebuild the original as a distillation teacher by default.
        result.plan.options["weights"] = weights
    return result


def survey(model: nn.Module | str, *, format: str = "tucker", weights: str | None = "random",
           num_classes: int | None = None, input_shape: Sequence[int] | None = None) -> Plan:
    """Plan-shaped description of a dense model, nothing factorized.

    Every layer is kept, its reason saying what ``format`` would do with it (``eligible for tucker2``,
    ``stem ...``, ``depthwise conv ...``).
    """
    module, shape, name = _resolve(model, weights, num_classes, input_shape, None)
    return _planner.survey(module, format=format, input_shape=shape, model_name=name)


def save(directory: str | Path, compressed: Compressed, *, overwrite: bool = False) -> Path:
    """Write ``DIR/compressed.safetensors`` + ``DIR/plan.json`` atomically; returns the directory.

    An existing non-empty ``directory`` is refused (`UsageError`) unless ``overwrite``, which replaces it whole.
    """
    return checkpoint.save(directory, compressed.model, compressed.plan, overwrite=overwrite)


def load(directory: str | Path, *, model: nn.Module | None = None) -> nn.Module:
    """Load a compressed checkpoint directory (no unpickling); returns the model in eval mode.

    Args:
        directory: a directory written by `save` / ``tdexport compress``.
        model: dense model of the planned architecture, for models not in the zoo.
    """
    return checkpoint.load(directory, model=model)[0]


def classifier_width(model: nn.Module) -> int | None:
    """Output width of the last Conv2d/Linear layer in ``model`` (its class count), or None without one."""
    last = None
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = m
    if isinstance(last, nn.Linear):
        return last.out_features
    return last.out_channels if last is not None else None
