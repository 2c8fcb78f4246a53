"""One layer at a time: its weight's spectra, ranks from a per-layer rule, and the loaded factor chain.

`tdexport.planner` decides which layers to factor and records the plan; this module does the per-layer work
it delegates: `_Spectra` (lazily computed, shared by the rank rule and the factorization), `_resolve_ranks`
(a rule's ranks for a method) and `_decompose` (factor a module into a loaded chain and its error).
"""

from __future__ import annotations

import torch
from torch import nn

from . import layers as L
from .factor._spectral import Spectrum, mode_spectrum, row_spectrum, unfold
from .factor.cp import cp_als
from .factor.svd import truncated_svd
from .factor.tt import tt_conv
from .factor.tucker import tucker2
from .ranks import RankRule, mode_rank

__all__: list[str] = []  # internal to the planner


class _Spectra:
    """Lazily computed spectra of a layer's weight, shared by the rank rule and the factorization."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight
        self._cache: dict[str, Spectrum] = {}

    def mode(self, mode: int) -> Spectrum:
        key = f"mode{mode}"
        if key not in self._cache:
            self._cache[key] = mode_spectrum(self.weight, mode)
        return self._cache[key]

    def matrix(self) -> Spectrum:
        if "matrix" not in self._cache:
            m = L.weight_matrix_of(self.weight)
            self._cache["matrix"] = row_spectrum(m.T if m.shape[0] > m.shape[1] else m)
        return self._cache["matrix"]


def _ht2_ranks(weight: torch.Tensor, rule: RankRule, spectra: _Spectra, round_to: int | None) -> list[int]:
    """(R1, R13, R3): the rule on the input and output modes, then on the matrix HT-2's root is fitted to.

    R13 follows the same rule applied to Y = W ×_I U1ᵀ ×_O U3ᵀ arranged (R1·kh × R3·kw) at the chosen R1 and
    R3 (for ``energy:`` this is the HT-2 seed's rule, measured on the matrix actually truncated).
    """
    from .factor.ht2 import ht2_projected_matrix

    r3, r1 = (mode_rank(rule, weight.shape[m], values=spectra.mode(m).values if rule.needs_spectrum else None,
                        shape=tuple(unfold(weight, m).shape) if rule.needs_spectrum else None, round_to=round_to)
              for m in (0, 1))
    kh, kw = weight.shape[2], weight.shape[3]
    size = min(r1 * kh, r3 * kw)
    values = shape = None
    if rule.needs_spectrum:
        w64 = weight.to(torch.float64)
        y = ht2_projected_matrix(w64, spectra.mode(1).vectors[:, :r1], spectra.mode(0).vectors[:, :r3])
        values, shape = torch.linalg.svdvals(y), tuple(y.shape)
    r13 = min(size, mode_rank(rule, size, values=values, shape=shape, round_to=round_to))
    return [r1, r13, r3]


def _resolve_ranks(method: str, weight: torch.Tensor, rule: RankRule, spectra: _Spectra,
                   round_to: int | None) -> list[int]:
    if method == "ht2":
        return _ht2_ranks(weight, rule, spectra, round_to)
    if method == "svd":
        o, i = weight.shape[0], weight[0].numel()
        values = spectra.matrix().values if rule.needs_spectrum else None
        return [mode_rank(rule, min(o, i), values=values, shape=(o, i), round_to=round_to)]
    per_mode = []
    for mode in (0, 1):
        size = weight.shape[mode]
        values = spectra.mode(mode).values if rule.needs_spectrum else None
        shape = tuple(unfold(weight, mode).shape) if rule.needs_spectrum else None
        if method == "cp" and rule.kind in ("ratio", "fixed"):
            # CP has one rank: ratio is of the output channels; a fixed rank may exceed a mode size
            # (CP ranks are not bounded by mode sizes) but not the larger channel count.
            size = max(weight.shape[0], weight.shape[1]) if rule.kind == "fixed" else weight.shape[0]
            return [mode_rank(rule, size, round_to=round_to)]
        per_mode.append(mode_rank(rule, size, values=values, shape=shape, round_to=round_to))
    return [max(per_mode)] if method == "cp" else per_mode


def _decompose(method: str, module: nn.Module, ranks: list[int], spectra: _Spectra, *, iters: int,
               cp_iters: int) -> tuple[nn.Sequential, float]:
    weight = module.weight.detach()
    seq = L.structure_for(method, module, ranks)
    if method == "tucker2":
        f = tucker2(weight, (ranks[0], ranks[1]), iters=iters, spectra=[spectra.mode(0), spectra.mode(1)])
        return L.load_tucker2(seq, module, f), f.errors[-1]
    if method == "tt":
        f = tt_conv(weight, (ranks[0], ranks[1]))
        return L.load_tucker2(seq, module, f), f.errors[-1]
    if method == "ht2":
        from .factor.ht2 import ht2
        from .layers_extra import load_ht2

        f = ht2(weight, ranks, spectra=[spectra.mode(1), spectra.mode(0)])
        return load_ht2(seq, module, f), f.rel_error(weight)
    if method == "cp":
        f = cp_als(weight, ranks[0], iters=cp_iters, generator=torch.Generator().manual_seed(0))
        return L.load_cp(seq, module, f), f.rel_error(weight)
    matrix = L.weight_matrix_of(weight)
    f = truncated_svd(matrix, ranks[0], spectrum=spectra.matrix())
    return L.load_svd(seq, module, f), f.rel_error(matrix)
