"""Checkpoints on disk, never unpickled.

* compressed: ``DIR/compressed.safetensors`` (all weights) + ``DIR/plan.json``;
* dense (written by ``tdexport train``): ``DIR/model.safetensors`` + ``DIR/model.json`` (zoo name,
  classes, input shape), which is also what ``--weights DIR`` reads.

Loading never unpickles: the architecture is rebuilt from the zoo name in the plan plus
`apply_plan`, and the tensors come from safetensors. Writes are atomic: files are written under a
temporary name and renamed into place, so a failure leaves no half-written checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ._io import atomic_dir, atomic_write
from .errors import UsageError
from .guards import require_finite
from .plan import Plan, apply_plan
from .zoo import create_model, load_weights_into

__all__ = [
    "DENSE_WEIGHTS_FILE", "MODEL_FILE", "PLAN_FILE", "WEIGHTS_FILE", "atomic_dir", "atomic_write",
    "is_checkpoint_dir", "load", "save", "save_dense", "write_files",
]

WEIGHTS_FILE = "compressed.safetensors"
PLAN_FILE = "plan.json"
DENSE_WEIGHTS_FILE = "model.safetensors"
MODEL_FILE = "model.json"


def is_checkpoint_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding a tdexport checkpoint (plan.json or model.json)."""
    return (Path(path) / PLAN_FILE).is_file() or (Path(path) / MODEL_FILE).is_file()


def _state(model: nn.Module) -> dict:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def write_files(directory: str | Path, model: nn.Module, *, plan: Plan | None = None,
                meta: dict | None = None) -> Path:
    """Write a checkpoint into an existing run directory, one atomic rename per file.

    Used by training, which rewrites the same directory every epoch next to its logs: each file is
    always whole (old or new), weights first, so a crash never pairs new metadata with old weights.

    Args:
        directory: run directory (created if missing).
        model: the model whose state dict is saved (CPU copies).
        plan: for a compressed model: its plan (writes compressed.safetensors + plan.json).
        meta: for a dense model: ``{"model": zoo name, "num_classes": K, "input_shape": [C, H, W]}``
            (writes model.safetensors + model.json).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if (plan is None) == (meta is None):
        raise ValueError("write_files needs exactly one of plan (compressed) or meta (dense)")
    name = plan.model if plan is not None else meta["model"]
    weights_file = WEIGHTS_FILE if plan is not None else DENSE_WEIGHTS_FILE
    state = _state(model)
    atomic_write(directory / weights_file,
                 lambda p: save_file(state, str(p), metadata={"format": "tdexport", "model": name}))
    text = json.dumps(plan.to_dict() if plan is not None else meta, indent=2) + "\n"
    atomic_write(directory / (PLAN_FILE if plan is not None else MODEL_FILE), lambda p: p.write_text(text))
    return directory


def save_dense(directory: str | Path, model: nn.Module, *, model_name: str, num_classes: int | None,
               input_shape: list[int]) -> Path:
    """Write a dense zoo model as ``DIR/model.safetensors`` + ``DIR/model.json`` (see `write_files`)."""
    meta = {"model": model_name, "num_classes": num_classes, "input_shape": list(input_shape)}
    return write_files(directory, model, meta=meta)


def save(directory: str | Path, model: nn.Module, plan: Plan, *, overwrite: bool = False) -> Path:
    """Write ``model``'s state dict and ``plan`` to ``directory`` atomically.

    Args:
        directory: the checkpoint folder; it appears whole or not at all.
        model: the compressed model.
        plan: its plan.
        overwrite: replace an existing non-empty ``directory`` whole (refused with `UsageError` otherwise).

    Returns:
        The directory path.
    """
    state = _state(model)
    with atomic_dir(directory, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "tdexport", "model": plan.model})
        (tmp / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    return Path(directory)


def load(directory: str | Path, *, model: nn.Module | None = None) -> tuple[nn.Module, Plan | None]:
    """Load a checkpoint written by `save`, `write_files` or `save_dense`.

    Args:
        directory: checkpoint directory.
        model: a dense model of the planned architecture to rebuild on; default: the zoo model named
            in the plan, built with random weights (they are all overwritten).

    Returns:
        (model in eval mode, its plan; None for a dense checkpoint).

    Raises:
        UsageError: missing directory or files, corrupt weights, or keys that do not fit.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"checkpoint directory not found: {directory}")
    if not (directory / PLAN_FILE).is_file() and (directory / MODEL_FILE).is_file():
        meta = read_meta(directory)
        if model is None:
            dense = create_model(meta["model"], weights=str(directory), num_classes=meta.get("num_classes"))
            require_finite(dense.state_dict().items(), str(directory / DENSE_WEIGHTS_FILE))
            return dense, None
        load_weights_into(model, _read_weights(directory / DENSE_WEIGHTS_FILE), source=str(directory))
        return model.eval(), None
    plan = Plan.read(directory / PLAN_FILE)
    weights = directory / WEIGHTS_FILE
    state = _read_weights(weights)
    if model is None:
        model = create_model(plan.model, weights="random", num_classes=plan.num_classes)
    compressed = apply_plan(model, plan, source=str(directory / PLAN_FILE))
    load_weights_into(compressed, state, source=str(weights))
    return compressed.eval(), plan


def _read_weights(weights: Path) -> dict:
    if not weights.is_file():
        raise UsageError(f"checkpoint weights not found: {weights}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"cannot read checkpoint {weights}: {err}") from err
    require_finite(state.items(), str(weights))
    return state


def read_meta(directory: str | Path) -> dict:
    """The ``model.json`` of a dense checkpoint directory: zoo name, num_classes, input_shape."""
    path = Path(directory) / MODEL_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot read {path}: {err}") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
        raise UsageError(f"{path} is malformed: expected an object with a 'model' name")
    return meta
