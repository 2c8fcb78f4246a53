"""Weights on disk into a model: safe checkpoint reading and strict, metadata-preserving loading.

Nothing here knows model names; `tdexport.zoo.registry.create_model` and `tdexport.checkpoint` call in.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UsageError, first_line

__all__ = ["CHECKPOINT_SUFFIXES", "load_state_dict_file", "load_weights_into"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_BN_COUNTER = "num_batches_tracked"


def _classes_of_run_dir(weights: str | os.PathLike[str], fallback: int) -> int:
    # A `tdexport train` run directory records its class count (model.json): use it, so
    # `--weights runs/base` works for a 10-class digits model without repeating --num-classes.
    meta = Path(weights) / "model.json"
    if meta.is_file():
        try:
            value = json.loads(meta.read_text()).get("num_classes")
        except (OSError, ValueError):
            return fallback
        if isinstance(value, int) and value >= 1:
            return value
    return fallback


def _as_checkpoint_path(weights: str | os.PathLike[str]) -> Path:
    text = os.fspath(weights)
    path = Path(text)
    separators = [s for s in (os.sep, os.altsep, "/") if s]
    looks_like_path = any(s in text for s in separators) or path.suffix.lower() in CHECKPOINT_SUFFIXES
    if isinstance(weights, os.PathLike) or looks_like_path or path.exists():
        return path
    raise UsageError(f"invalid weights {text!r}: expected 'default', 'random' or a checkpoint path")


def _torch_load_reason(err: Exception) -> str:
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    if refused:  # weights_only=True refused to unpickle a class: never fall back to full unpickling
        return (
            f"it pickles a Python object ({refused.group(1)}), refused for safety; "
            "save model.state_dict() or use .safetensors"
        )
    inner = err.__context__ if isinstance(err.__context__, Exception) else err
    return first_line(inner)


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a checkpoint file or directory, without unpickling arbitrary objects.

    Reads ``*.safetensors``; ``*.pth``/``*.pt``/``*.bin`` via ``torch.load(weights_only=True)``, holding
    a state dict or a dict wrapping one under ``"state_dict"`` or ``"model"``; or a directory containing
    ``model.safetensors``. Keys all prefixed with ``module.`` (DataParallel/DDP) lose the prefix.
    This is the one entry point for weights on disk: new checkpoint-directory layouts (e.g. compressed
    checkpoints) belong in its directory branch.

    Args:
        path: file or directory.

    Returns:
        Mapping from parameter/buffer name to CPU tensor.

    Raises:
        UsageError: missing path, unsupported suffix, unreadable/corrupt file, no state dict inside.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"checkpoint not found: {path}")
    if path.is_dir():
        # Hook for other checkpoint-directory layouts: dispatch on their marker files here.
        file = path / "model.safetensors"
        if not file.is_file():
            raise UsageError(f"checkpoint directory {path} has no model.safetensors")
        path = file
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        import safetensors.torch

        try:
            obj: Any = safetensors.torch.load_file(str(path), device="cpu")
        except Exception as err:
            raise UsageError(f"cannot read checkpoint {path}: {first_line(err)}") from err
    elif suffix in CHECKPOINT_SUFFIXES:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UsageError(f"cannot read checkpoint {path}: {_torch_load_reason(err)}") from err
    else:
        raise UsageError(
            f"unsupported checkpoint format {suffix or '(no suffix)'!r} for {path}: expected "
            f"{', '.join(CHECKPOINT_SUFFIXES)} or a directory containing model.safetensors"
        )
    if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        obj = next((obj[k] for k in ("state_dict", "model") if _is_tensor_dict(obj.get(k))), obj)
    if not _is_tensor_dict(obj):
        raise UsageError(
            f"cannot read checkpoint {path}: no state dict found "
            "(expected a dict of tensors, or one under 'state_dict' or 'model')"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _examples(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")


def load_weights_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state_dict`` into ``model`` with strict semantics and a one-line error when it does not fit.

    The keys and shapes must be exactly those of ``model.state_dict()``, so the state dict is in the
    layout of the model's current module versions; it is loaded with ``model.state_dict()``'s own
    version metadata. Files do not carry that metadata (safetensors cannot; ``dict(...)`` drops it), and
    modules that read it in ``_load_from_state_dict`` (torchvision's MNASNet raises without it) would
    otherwise treat the weights as a legacy checkpoint. Missing ``num_batches_tracked`` BatchNorm
    buffers are tolerated: the model keeps its own counters, as PyTorch does for pre-counter checkpoints.

    Args:
        model: the model to update in place.
        state_dict: parameter/buffer name to tensor; not modified.
        source: where the weights came from (a path), used in error messages.

    Raises:
        UsageError: missing or unexpected keys, or shape mismatches; counts and up to 3 examples each.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(_BN_COUNTER)]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(v.shape)}"
        for k, v in state_dict.items()
        if k in expected and expected[k].shape != v.shape
    ]
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches": mismatched}
    problems = [f"{len(items)} {what} ({_examples(items)})" for what, items in found.items() if items]
    if problems:
        raise UsageError(f"checkpoint {source} does not fit the model: {'; '.join(problems)}")
    state: OrderedDict[str, torch.Tensor] = OrderedDict(state_dict)
    # With current-version metadata BatchNorm no longer fills in absent counters itself; keep the model's.
    state.update((k, v) for k, v in expected.items() if k.endswith(_BN_COUNTER) and k not in state)
    metadata = getattr(expected, "_metadata", {})
    state._metadata = OrderedDict((k, dict(v)) for k, v in metadata.items())  # type: ignore[attr-defined]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise UsageError(f"checkpoint {source} does not fit the model: {first_line(err)}") from err
