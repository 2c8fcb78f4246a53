"""Budget rank rules in the planner: per-layer rank options, their costs and errors, and the allocation.

For every eligible layer, `layer_options` lists candidate ranks on a grid: (R_out, R_in) pairs for Tucker-2 / TT,
r for SVD, each with

* a cost from a cost function ``cost(site, method, ranks) -> float`` (ranks None = the dense layer),
  by default its parameters or MACs (summed over every call of the layer), computed analytically;
* an error from the spectra. First the relative squared reconstruction error e: for SVD exactly the
  discarded / total energy; for Tucker-2 / TT, with d₀, d₁ the fractions of ‖W‖² discarded from mode 0
  beyond R_out and from mode 1 beyond R_in, the estimate e = 1 − (1 − d₀)(1 − d₁), exact when the energy
  separates over the two modes. (The truncated HOSVD's e lies between max(d₀, d₁) and d₀ + d₁, and so does
  TT-SVD's of (O, kh·kw, I); the upper bound d₀ + d₁ exceeds 1 for flat spectra: 1.6 at ranks (8, 8) of a
  random 64×64 conv whose real e is 0.95.) The option's error is then −ln(1 − e), the retained energy in
  log units: ≈ e for the small errors of trained weights, but summing it over layers multiplies the kept
  fractions, so no layer is wiped out to spare others (for Tucker-2 it is the sum of the two modes'
  −ln(1 − dₙ), separable). With Σ e instead, flat spectra (random weights) give
  straight-line error-vs-cost fronts and the allocation degenerates to dense layers beside ranks (2, 2).

Only ranks that cut both parameters and MACs are offered, besides the dense layer. `choose_ranks` then
spends the whole-model budget (total / K) with `tdexport.budget.allocate`; layers that are not eligible
and everything outside Conv2d / Linear weights are a fixed cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from . import layers as L
from .budget import Allocation, BudgetUnreachable, Option, allocate
from .errors import UsageError
from .ranks import RankRule

if TYPE_CHECKING:
    from .sites import LayerSite

__all__ = ["AllowFn", "CostFn", "rank_grid", "chain_params_macs", "metric_cost", "layer_options", "BudgetChoice",
           "choose_ranks"]

CostFn = Callable[["LayerSite", str, "tuple[int, ...] | None"], float]
"""cost(site, method, ranks) of a layer realised at ``ranks`` (None: dense), summed over its calls."""
AllowFn = Callable[["LayerSite", str, "tuple[int, ...]"], bool]
"""allowed(site, method, ranks): whether a rank option may be offered at all."""

_UNITS = {"params": "parameters", "macs": "MACs", "latency": "latency"}
_UNIT = {"params": "parameter", "macs": "MAC", "latency": "unit of latency"}


class _SpectraLike(Protocol):
    def mode_values(self, mode: int) -> torch.Tensor: ...

    def matrix_values(self) -> torch.Tensor: ...


def rank_grid(size: int, round_to: int | None = None) -> list[int]:
    """Candidate ranks of a mode of ``size``, ascending.

    Every multiple of ``round_to`` below ``size`` (when given, > 1), else of max(1, size // 32), plus ``size``.
    """
    step = round_to if round_to and round_to > 1 else max(1, size // 32)
    return sorted({*range(step, size, step), size})


def _calls(site: LayerSite) -> list[tuple[tuple[int, int] | None, int]]:
    return site.call_inputs or [(site.in_hw, site.tokens)]


def chain_params_macs(site: LayerSite, method: str, ranks: Sequence[int] | None) -> tuple[int, int]:
    """(parameters, MACs summed over every call) of the site's layer, dense (ranks None) or as its factor chain.

    Equal to `tdexport.layers.chain_cost` of `tdexport.layers.structure_for` without building any module:
    Tucker-2 / TT 1×1 I→R_in · kh×kw R_in→R_out · 1×1 R_out→O; SVD I→r · r→O (the stride on the first).
    """
    m = site.module
    if ranks is None:
        params = L.chain_cost([m], in_hw=site.in_hw, tokens=site.tokens)[0]
        return params, sum(L.chain_cost([m], in_hw=hw, tokens=t)[1] for hw, t in _calls(site))
    bias = m.bias.numel() if m.bias is not None else 0
    o, i = int(m.weight.shape[0]), int(m.weight.shape[1])
    if method == "svd":
        per_out = ranks[0] * (i + o)
        if isinstance(m, nn.Linear):
            return per_out + bias, sum(t * per_out for _, t in _calls(site))
        return per_out + bias, sum(math.prod(L.conv_output_hw(m, hw)) * per_out for hw, _ in _calls(site))
    if method not in ("tucker2", "tt"):
        raise ValueError(f"no analytic cost for method '{method}'")
    r_out, r_in = int(ranks[0]), int(ranks[1])
    kh, kw = m.kernel_size
    params = i * r_in + r_in * r_out * kh * kw + r_out * o + bias
    macs = sum(hw[0] * hw[1] * i * r_in + math.prod(L.conv_output_hw(m, hw)) * r_out * (r_in * kh * kw + o)
               for hw, _ in _calls(site))
    return params, macs


def metric_cost(metric: str) -> CostFn:
    """Cost function counting ``params`` or ``macs`` (`chain_params_macs`)."""
    index = {"params": 0, "macs": 1}[metric]
    return lambda site, method, ranks: float(chain_params_macs(site, method, ranks)[index])


def _discarded(values: torch.Tensor) -> list[float]:
    """d[r] = fraction of the energy beyond the first r singular values, Σ_{i≥r} σᵢ² / Σ σᵢ², r = 0..len."""
    tail = (values.to(torch.float64) ** 2).flip(0).cumsum(0).flip(0)
    total = float(tail[0]) if len(tail) else 0.0
    return [*(tail / total).tolist(), 0.0] if total > 0 else [0.0] * (len(tail) + 1)


def layer_options(site: LayerSite, method: str, spectra: _SpectraLike, *, cost: CostFn,
                  round_to: int | None = None, allowed: AllowFn | None = None) -> list[Option]:
    """The dense option and every grid rank that cuts both parameters and MACs, with its cost and error.

    Args:
        site: the layer and its calls.
        method: ``tucker2``, ``tt`` or ``svd``.
        spectra: its weight's singular values (``mode_values(0)``, ``mode_values(1)`` for Tucker-2 / TT;
            ``matrix_values()`` for SVD).
        cost: ``cost(site, method, ranks)``; ranks None is the dense layer.
        round_to: candidate ranks are multiples of this (and the full size).
        allowed: ``allowed(site, method, ranks)``; ranks it rejects are not offered (e.g. ranks whose factor
            chain is not faster than the dense layer on the target).

    Returns:
        Options, the dense one (ranks None, error 0) first; errors are −ln(1 − e) ≥ 0 of the relative squared
        reconstruction error e (module docstring).
    """
    dense_params, dense_macs = chain_params_macs(site, method, None)
    options = [Option(cost(site, method, None), 0.0, None)]
    if method == "svd":
        d = _discarded(spectra.matrix_values())
        candidates = [((r,), d[r]) for r in rank_grid(len(d) - 1, round_to)]
    elif method in ("tucker2", "tt"):
        d_out, d_in = _discarded(spectra.mode_values(0)), _discarded(spectra.mode_values(1))
        candidates = [((ro, ri), 1.0 - (1.0 - d_out[ro]) * (1.0 - d_in[ri]))
                      for ro in rank_grid(len(d_out) - 1, round_to) for ri in rank_grid(len(d_in) - 1, round_to)]
    else:
        raise UsageError(f"{site.name}: budget rules support tucker, tt and svd formats, not {method}")
    for ranks, error in candidates:
        params, macs = chain_params_macs(site, method, ranks)
        if params < dense_params and macs < dense_macs and (allowed is None or allowed(site, method, ranks)):
            options.append(Option(cost(site, method, ranks), -math.log(max(1e-12, 1.0 - error)), ranks))
    return options


@dataclass
class BudgetChoice:
    """The allocation of a budget rule over a model's eligible layers.

    Attributes:
        rule: the budget rule.
        allocation: the chosen option per eligible layer name.
        options: every eligible layer's options (the table the allocation was made from).
        spectra: the spectra computed per eligible layer, for the factorization to reuse.
    """

    rule: RankRule
    allocation: Allocation
    options: dict[str, list[Option]]
    spectra: dict[str, Any] = field(default_factory=dict)

    def ranks(self, name: str) -> list[int] | None:
        """The chosen ranks of a layer, or None when it stays dense (or is not eligible)."""
        choice = self.allocation.choices.get(name)
        return list(choice.ranks) if choice is not None and choice.ranks is not None else None

    def kept_reason(self, name: str) -> str:
        """Why an eligible layer stays dense under the budget."""
        if len(self.options.get(name, ())) <= 1:
            return f"budget {self.rule.text}: no rank on the grid cuts both parameters and MACs"
        return (f"budget {self.rule.text}: dense is its best choice (other layers lose less error per "
                f"{_UNIT[self.rule.kind]} saved)")

    def record(self, totals: Mapping[str, int]) -> dict[str, Any]:
        """The plan's ``budget`` entry: rule, metric, target and predicted / achieved whole-model reduction.

        ``achieved`` is read from the plan totals (before / after) for ``params`` and ``macs``; it is None for
        ``latency``, which only a measurement can give. ``est_sq_error`` is Σ over the eligible layers of the
        estimated relative squared error e (each factorized layer's measured ``rel_error`` is in its entry).
        """
        metric = self.rule.kind
        achieved = None
        if metric in ("params", "macs") and totals.get(f"{metric}_after"):
            achieved = totals[f"{metric}_before"] / totals[f"{metric}_after"]
        chosen = self.allocation.choices.values()
        return {"rule": self.rule.text, "metric": metric, "target": self.rule.value,
                "predicted": self.allocation.reduction, "achieved": achieved,
                "est_sq_error": math.fsum(-math.expm1(-o.error) for o in chosen)}


def choose_ranks(model: nn.Module, sites: Sequence[LayerSite], rule: RankRule,
                 eligibility: Mapping[str, tuple[str | None, str]], spectra: Callable[[LayerSite], _SpectraLike], *,
                 round_to: int | None = None, cost: CostFn | None = None,
                 fixed_cost: float | None = None, allowed: AllowFn | None = None,
                 options_cache: dict[tuple[str, str], list[Option]] | None = None) -> BudgetChoice:
    """Allocate a budget rule's whole-model reduction across the eligible layers.

    Args:
        model: the dense model (its parameter count is the ``params`` total).
        sites: every Conv2d / Linear site of one forward pass (`tdexport.planner.profile_layers`).
        rule: a budget rule (``params:``, ``macs:``, ``latency:``).
        eligibility: site name → (the method it would get, None when it stays dense; the reason it does).
        spectra: site → its weight's spectra (computed only for eligible layers, kept for reuse).
        round_to: candidate ranks are multiples of this.
        cost: cost function; default the rule's metric (params or MACs). Required for ``latency``.
        fixed_cost: cost of everything outside the eligible layers; default for params: every model
            parameter not in an eligible layer, for MACs: the MACs of the non-eligible Conv2d / Linear sites.
            Required with a custom ``cost``.
        allowed: option filter passed to `layer_options`.
        options_cache: (layer, method) → its options, filled and reused across calls that share ``cost``,
            ``round_to`` and ``allowed`` (the ``latency:`` search allocates several budgets over one table).

    Returns:
        `BudgetChoice`; the model's cost at its ranks is at most total / K.

    Raises:
        UsageError: ``latency:`` without a cost function (no target), or a ``cp`` layer.
        BudgetUnreachable: K is above the best reduction the rank grid allows; ``.best`` holds it and the
            message names the costliest layer kept dense by eligibility, with its reason.
    """
    if not rule.is_budget:
        raise ValueError(f"'{rule.text}' is not a budget rule")
    if cost is None and rule.kind == "latency":
        raise UsageError(f"{rule.text} needs --target BACKEND[:BATCH] to measure layer latencies on; "
                         "params: and macs: budgets need no target")
    unsupported = sorted({m for m, _ in eligibility.values() if m not in (None, "tucker2", "tt", "svd")})
    if unsupported:
        raise UsageError(f"{rule.text}: budget rules support the tucker, tt (special) and svd formats, not "
                         f"{', '.join(unsupported)}")
    if cost is not None and fixed_cost is None:
        raise ValueError("a custom cost function needs the fixed cost of the rest of the model")
    cost = cost or metric_cost(rule.kind)
    eligible = [s for s in sites if eligibility[s.name][0]]
    spectra_of = {s.name: spectra(s) for s in eligible}
    options_cache = {} if options_cache is None else options_cache
    table = {}
    for s in eligible:
        key = (s.name, eligibility[s.name][0])
        if key not in options_cache:
            options_cache[key] = layer_options(s, key[1], spectra_of[s.name], cost=cost, round_to=round_to,
                                               allowed=allowed)
        table[s.name] = options_cache[key]
    kept = [s for s in sites if not eligibility[s.name][0]]
    if fixed_cost is None:
        total = (sum(p.numel() for p in model.parameters()) if rule.kind == "params"
                 else sum(chain_params_macs(s, "", None)[1] for s in sites))
        fixed_cost = float(total) - math.fsum(options[0].cost for options in table.values())
    reference = fixed_cost + math.fsum(options[0].cost for options in table.values())
    try:
        allocation = allocate(table, reference / rule.value, fixed_cost=fixed_cost, reference=reference)
    except BudgetUnreachable as err:
        hint = ""
        if kept and rule.kind in ("params", "macs"):
            dense = metric_cost(rule.kind)
            worst = max(kept, key=lambda s: dense(s, "", None))
            hint = (f"; the costliest layer kept dense is {worst.name} ({dense(worst, '', None) / reference:.0%} of "
                    f"the total): {eligibility[worst.name][1]}")
        raise BudgetUnreachable(
            f"{rule.text} cannot be met: at most {err.best:.2f}× fewer {_UNITS[rule.kind]} with the "
            f"{len(table)} eligible layers at their smallest grid ranks{hint}", err.best) from err
    return BudgetChoice(rule, allocation, table, spectra_of)
