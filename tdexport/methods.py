"""Which factorization methods apply to a layer, and which ranks (and TT modes) fit it.

Methods (the ``method`` of a plan entry) and what their ``ranks`` mean:

* ``tucker2`` (R_out, R_in); ``tt`` (TDC's special 3-core TT, lowered like Tucker-2) (R_out, R_in);
* ``cp`` (R,); ``svd`` (r,) for Linear and 1×1 convs; ``tucker1`` (R,) for k×k convs (stems);
* ``ht2`` (R1, R13, R3);
* ``ttg`` (general TT): the inner bond ranks (r_1 … r_{d−1}) over the modes (i_1…i_n, [kh·kw,] o_1…o_m);
  the entry's ``modes`` holds [[i_1…i_n], [o_1…o_m]];
* ``reorder`` (g, t): g rows of ⌈N/g⌉ reordered weights, t DCT coefficients kept per row.

Everything here reads shapes only; nothing is factorized. Plans from disk are untrusted, so
`check_layer_fits` checks an entry against the real layer before any module is allocated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from torch import nn

from . import layers as L
from .errors import UsageError

if TYPE_CHECKING:
    from .plan import LayerPlan

__all__ = ["METHODS", "LAYER_TYPES", "factorable", "allowed_methods", "rank_limits", "check_layer_fits",
           "check_modes"]

METHODS = ("tucker2", "tt", "cp", "svd", "ht2", "ttg", "tucker1", "reorder")
LAYER_TYPES = {"Conv2d": nn.Conv2d, "Linear": nn.Linear}
# Methods a 1×1 conv or a Linear can take (the others need a spatial kernel).
_POINTWISE = ("svd", "ttg", "reorder")


def factorable(module: nn.Module) -> str | None:
    """None when ``module`` can be replaced by a factor chain, else the reason it must stay dense.

    Only exact ``nn.Conv2d`` / ``nn.Linear`` qualify: a subclass may compute something else than its weight
    suggests (timm's weight-standardised ``StdConv2d``, ``Conv2dSame``'s dynamic padding), and a chain of
    plain convs would silently change the model's output.
    """
    kind = type(module)
    if kind not in (nn.Conv2d, nn.Linear):
        base = "nn.Conv2d" if isinstance(module, nn.Conv2d) else "nn.Linear"
        return (f"{kind.__name__} subclasses {base} (its forward may differ from a plain layer's); only exact "
                "nn.Conv2d / nn.Linear are factored")
    if kind is nn.Linear:
        return None
    if module.groups > 1:
        what = "depthwise" if module.groups == module.in_channels else "grouped"
        return f"{what} conv (groups={module.groups})"
    if module.padding_mode != "zeros":
        return f"padding_mode '{module.padding_mode}'"
    if L.int_padding(module) is None:
        return (f"padding={module.padding!r} pads asymmetrically for kernel {module.kernel_size}, dilation "
                f"{module.dilation}; no symmetric integer padding reproduces it")
    return None


def allowed_methods(module: nn.Module) -> tuple[str, ...]:
    """Methods that can factor ``module``: svd, ttg or reorder for Linear and 1×1 convs, all others for k×k."""
    if factorable(module) is not None:
        return ()
    if isinstance(module, nn.Linear) or module.kernel_size == (1, 1):
        return _POINTWISE
    return ("tucker2", "tt", "cp", "ht2", "ttg", "tucker1", "reorder")


def check_modes(modes: object, out_channels: int, in_channels: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A general-TT entry's ``modes`` [[i_1…i_n], [o_1…o_m]] checked against the layer's channels.

    Raises:
        ValueError: not two non-empty lists of positive integers multiplying to I and O.
    """
    ok = (isinstance(modes, Sequence) and len(modes) == 2
          and all(isinstance(side, Sequence) and len(side) >= 1
                  and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in side)
                  for side in modes))
    if not ok:
        raise ValueError(f"modes must be [[i_1, …], [o_1, …]] (positive integers), got {modes!r}")
    s_in, s_out = tuple(modes[0]), tuple(modes[1])
    if math.prod(s_in) != in_channels or math.prod(s_out) != out_channels:
        raise ValueError(f"modes {list(s_in)} / {list(s_out)} multiply to {math.prod(s_in)} / {math.prod(s_out)}, "
                         f"the layer has I={in_channels}, O={out_channels}")
    return s_in, s_out


def rank_limits(module: nn.Module, method: str, modes: object = None) -> list[int]:
    """The upper bound of each rank of ``method`` on ``module`` (the count of ranks is ``len`` of it).

    For ``ttg`` the bounds are the clamped ranks of `tdexport.factor.tt_general.clamp_tt_ranks` at an
    unbounded request (what the cores can carry); ``modes`` is required then.
    """
    w = module.weight
    o, i = int(w.shape[0]), int(w.shape[1])
    if method in ("svd", "tucker1"):
        return [min(o, int(w[0].numel()))]
    if method == "cp":
        # The CP rank of a tensor never exceeds the product of all its sizes but the largest one.
        dims = sorted(int(d) for d in w.shape)
        return [math.prod(dims[:-1])]
    if method == "ht2":
        # (R1 ≤ I, R13 ≤ min(I·kh, O·kw), R3 ≤ O): R13 is also bounded by R1·kh and R3·kw (checked on build).
        kh, kw = int(w.shape[2]), int(w.shape[3])
        return [i, min(i * kh, o * kw), o]
    if method == "ttg":
        from .factor.tt_general import clamp_tt_ranks, tt_mode_sizes

        s_in, s_out = check_modes(modes, o, i)
        kernel = tuple(int(k) for k in w.shape[2:]) if w.ndim == 4 else None
        return list(clamp_tt_ranks(tt_mode_sizes(s_in, s_out, kernel), w.numel())[1])
    if method == "reorder":
        return [int(w.numel()), int(w.numel())]
    return [o, i]


def check_layer_fits(entry: LayerPlan, module: nn.Module, *, source: str = "plan") -> None:
    """Check a decomposed plan entry against the real layer it replaces.

    Raises:
        UsageError: the layer is not a factorable Conv2d / Linear of the planned type and shape, the method
            does not apply to it, or the ranks are of the wrong count or outside [1, limit] (Tucker-2 / TT:
            (≤ O, ≤ I); SVD / Tucker-1: ≤ min(O, I·kh·kw); CP: ≤ the product of all kernel sizes but the
            largest; general TT: the bonds its cores can carry, with ``modes`` multiplying to I and O;
            reorder: 1 ≤ t ≤ ⌈N/g⌉).
    """
    where = f"{source}: layer '{entry.name}'"
    if not isinstance(module, LAYER_TYPES[entry.type]):
        raise UsageError(f"{where} field 'type': plan says {entry.type}, the model has {type(module).__name__}")
    if list(module.weight.shape) != list(entry.shape):
        raise UsageError(f"{where} field 'shape': plan says {entry.shape}, the model's weight is "
                         f"{list(module.weight.shape)}")
    why = factorable(module)
    if why is not None:
        raise UsageError(f"{where} field 'decision': the layer cannot be factored: {why}")
    allowed = allowed_methods(module)
    if entry.method not in allowed:
        raise UsageError(f"{where} field 'method': '{entry.method}' does not apply to {entry.type} "
                         f"{tuple(entry.shape)}; allowed: {', '.join(allowed)}")
    try:
        limits = rank_limits(module, entry.method, entry.modes)
    except ValueError as err:
        raise UsageError(f"{where} field 'modes': {err}") from None
    ranks = entry.ranks
    if len(ranks) != len(limits) or any(not 1 <= r <= lim for r, lim in zip(ranks, limits, strict=True)):
        raise UsageError(f"{where} field 'ranks': {ranks} do not fit {entry.method} on {tuple(entry.shape)} "
                         f"(expected {len(limits)} rank(s) in 1..{limits})")
    if entry.method == "ht2":
        kh, kw = int(entry.shape[2]), int(entry.shape[3])
        if ranks[1] > min(ranks[0] * kh, ranks[2] * kw):
            raise UsageError(f"{where} field 'ranks': HT-2's middle rank {ranks[1]} exceeds min(R1·kh, R3·kw) = "
                             f"{min(ranks[0] * kh, ranks[2] * kw)}")
    if entry.method == "ttg":
        from .factor.tt_general import clamp_tt_ranks, tt_mode_sizes

        kernel = tuple(entry.shape[2:]) if len(entry.shape) == 4 else None
        _, used = clamp_tt_ranks(tt_mode_sizes(entry.modes[0], entry.modes[1], kernel), list(ranks))
        if list(used) != list(ranks):
            raise UsageError(f"{where} field 'ranks': TT bonds {ranks} exceed what the cores can carry; "
                             f"at most {list(used)}")
    if entry.method == "reorder":
        g, t = ranks
        n = -(-math.prod(entry.shape) // g)
        if t > n:
            raise UsageError(f"{where} field 'ranks': reorder keeps t={t} coefficients of rows of {n} (g={g})")
