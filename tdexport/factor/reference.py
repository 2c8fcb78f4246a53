"""Reference factorizations from tensorly, for tests and benchmarks only (the one module importing it).

tensorly's API has drifted across releases; this module absorbs the differences so callers always get
torch tensors back:

* ``partial_tucker``: ≥ 0.8 is ``partial_tucker(tensor, rank, modes=...)`` returning
  ``((core, factors), errors)``; older releases take ``ranks=``/``rank=`` after ``modes`` and return
  ``(core, factors)``. Everything is passed by keyword, and the return form is told apart by type.
* ``parafac``: recent releases return a ``CPTensor`` (weights, factors); old ones returned the bare
  list of factors (one per mode, e.g. a 4-list for a conv kernel) with weights implicitly 1.

Backend: the pytorch backend, entered with ``tensorly.backend_context`` (``set_backend``/restore on
releases without it), chosen because it measured faster than numpy on a 2-core CPU (torch links MKL,
numpy OpenBLAS): parafac on a (512, 512, 3, 3) kernel at rank 256 takes ~2 s to initialise + ~1.3 s
per iteration vs ~5 s + ~1.4 s with numpy, and partial_tucker runs ~1.6× faster. It also avoids a round
trip through numpy. Computation happens on CPU in the input's precision (float32 stays float32, as a
tensorly user would run it; half precision is promoted to float32).
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["tensorly_parafac", "tensorly_partial_tucker"]


@contextlib.contextmanager
def _pytorch_backend() -> Iterator[None]:
    import tensorly as tl

    with warnings.catch_warnings():
        # tensorly warns whenever R exceeds a mode size (kh, kw = 3) and then pads randomly, as documented.
        warnings.filterwarnings("ignore", message=".*n_eigenvecs.*larger than", category=UserWarning)
        if hasattr(tl, "backend_context"):
            with tl.backend_context("pytorch"):
                yield
            return
        previous = tl.get_backend()
        tl.set_backend("pytorch")
        try:
            yield
        finally:
            tl.set_backend(previous)


def _cpu_input(tensor: Tensor) -> Tensor:
    x = tensor.detach().cpu()
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _as_torch(value: object, like: Tensor) -> Tensor:
    return torch.as_tensor(value).to(dtype=like.dtype, device=like.device)


def tensorly_partial_tucker(
    tensor: Tensor,
    modes: Sequence[int],
    ranks: Sequence[int],
    *,
    n_iter_max: int = 100,
    tol: float = 1e-4,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run tensorly's partial Tucker (HOSVD start + HOOI) on ``modes``.

    Args:
        tensor: N-way tensor, e.g. a conv kernel (O, I, kh, kw).
        modes: axes to decompose, e.g. (0, 1).
        ranks: one rank per mode.
        n_iter_max: maximum HOOI iterations.
        tol: tensorly's stopping tolerance on the error change.

    Returns:
        (core, factors) in ``tensor``'s dtype and device: core with axis ``modes[k]`` of size
        ``ranks[k]``, factors[k] of shape (tensor.shape[modes[k]], ranks[k]).
    """
    from tensorly.decomposition import partial_tucker

    params = inspect.signature(partial_tucker).parameters
    rank_kw = "rank" if "rank" in params else "ranks"
    kwargs = {rank_kw: [int(r) for r in ranks], "modes": [int(m) for m in modes]}
    x = _cpu_input(tensor)
    with _pytorch_backend():
        out = partial_tucker(x, n_iter_max=n_iter_max, tol=tol, init="svd", **kwargs)
    if not isinstance(out[0], Tensor):  # new form: ((core, factors), errors)
        out = out[0]
    core, factors = out
    return _as_torch(core, tensor), tuple(_as_torch(u, tensor) for u in factors)


def tensorly_parafac(
    tensor: Tensor,
    rank: int,
    *,
    n_iter_max: int = 100,
    init: str = "svd",
    tol: float = 1e-8,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Run tensorly's CP-ALS (``parafac``) with a fixed ``random_state=0`` for its random columns.

    Args:
        tensor: N-way tensor.
        rank: number of components R.
        n_iter_max: maximum ALS iterations.
        init: "svd" or "random", as tensorly understands them.
        tol: tensorly's stopping tolerance on the error change.

    Returns:
        (weights (R,), factors each (n_k, R)) in ``tensor``'s dtype and device.
    """
    from tensorly.decomposition import parafac

    x = _cpu_input(tensor)
    with _pytorch_backend():
        out = parafac(x, int(rank), n_iter_max=n_iter_max, init=init, tol=tol, random_state=0)
    if hasattr(out, "weights") and hasattr(out, "factors"):
        weights, factors = out.weights, out.factors
    elif len(out) == 2 and isinstance(out[1], (list, tuple)):
        weights, factors = out
    else:  # pre-CPTensor releases: just the factor list
        factors, weights = out, torch.ones(int(rank), dtype=x.dtype)
    return _as_torch(weights, tensor), tuple(_as_torch(u, tensor) for u in factors)
