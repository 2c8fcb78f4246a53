"""Checks on user-supplied tensors that turn silent garbage into a clear exit-2 error."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .errors import UsageError

__all__ = ["require_finite"]


def require_finite(named_tensors: Iterable[tuple[str, torch.Tensor]], source: str) -> None:
    """Raise `UsageError` naming the first floating tensor that holds a NaN or ±inf.

    A model with non-finite weights factorizes into non-finite factors and exports and "validates" into
    meaningless numbers; refusing it up front is the only honest answer.

    Args:
        named_tensors: (name, tensor) pairs, e.g. ``model.state_dict().items()``.
        source: where the tensors came from (a path or model name), for the message.
    """
    for name, tensor in named_tensors:
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            raise UsageError(f"{source}: tensor '{name}' has {bad} non-finite value(s) (NaN or inf) out of "
                             f"{tensor.numel()}; the weights are corrupt or come from a diverged training run")
