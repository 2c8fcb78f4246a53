"""Compressed checkpoints on disk: ``DIR/compressed.safetensors`` (all weights) + ``DIR/plan.json``.

Loading never unpickles: the architecture is rebuilt from the zoo name in the plan plus
`apply_plan`, and the tensors come from safetensors. Writes are atomic: files are written under a
temporary name and renamed into place, so a failure leaves no half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import UsageError
from .plan import Plan, apply_plan
from .zoo import create_model, load_weights_into

__all__ = ["WEIGHTS_FILE", "PLAN_FILE", "atomic_dir", "atomic_write", "save", "load", "is_checkpoint_dir"]

WEIGHTS_FILE = "compressed.safetensors"
PLAN_FILE = "plan.json"


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces-or-merges into ``target`` only on success.

    A new ``target`` appears whole (one rename); into an existing one each file is renamed over
    its old version. On an exception the temporary directory is removed and ``target`` untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            for item in tmp.iterdir():
                os.replace(item, target / item.name)
            tmp.rmdir()
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path`` (same directory)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_checkpoint_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding a tdexport plan.json."""
    return (Path(path) / PLAN_FILE).is_file()


def save(directory: str | Path, model: nn.Module, plan: Plan) -> Path:
    """Write ``model``'s state dict and ``plan`` to ``directory`` atomically.

    Returns:
        The directory path.
    """
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "tdexport", "model": plan.model})
        (tmp / PLAN_FILE).write_text(json.dumps(plan.to_dict(), indent=2) + "\n")
    return Path(directory)


def load(directory: str | Path, *, model: nn.Module | None = None) -> tuple[nn.Module, Plan]:
    """Load a compressed checkpoint written by `save`.

    Args:
        directory: checkpoint directory.
        model: a dense model of the planned architecture to rebuild on; default: the zoo model named
            in the plan, built with random weights (they are all overwritten).

    Returns:
        (compressed model in eval mode, its plan).

    Raises:
        UsageError: missing directory or files, corrupt weights, or keys that do not fit.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"checkpoint directory not found: {directory}")
    plan = Plan.read(directory / PLAN_FILE)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise UsageError(f"checkpoint weights not found: {weights}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"cannot read checkpoint {weights}: {err}") from err
    if model is None:
        model = create_model(plan.model, weights="random", num_classes=plan.num_classes)
    compressed = apply_plan(model, plan)
    load_weights_into(compressed, state, source=str(weights))
    return compressed.eval(), plan
