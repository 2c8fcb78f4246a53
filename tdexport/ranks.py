"""Rank rules: the one ``--rank`` option, parsed once at the boundary and resolved per layer.

Accepted forms (see `RANK_RULE_FORMS`):

* ``vbmf`` or ``vbmf:W`` — EVBMF per mode; W in (0, 1] is MUSCO's weakening factor,
  R = ⌈n − W·(n − R_evbmf)⌉, so W = 1 is plain EVBMF and smaller W keeps more. Zero singular values
  (pruned or dead filters) are left out of R_evbmf's estimate, so they do not inflate it.
* ``energy:E`` — per mode, the smallest k with Σ_{i≤k} σᵢ² / Σ σ² > E, E in (0, 1).
* ``ratio:F`` — keep ⌈F·n⌉ of each mode of size n (for CP: F·O components), F in (0, 1].
* ``svt:R`` — one singular-value threshold for both channel modes, searched so that ‖Ŵ‖/‖W‖ ≈ R in (0, 1]
  (the SVT seed's approximation ratio; `tdexport.factor.svt`); on one spectrum (SVD, TT bonds) the rank
  whose kept norm is closest to R.
* ``N`` — the fixed rank N on every mode; a mode smaller than N is an error.
* ``plan:FILE`` — replay the per-layer decisions and ranks of an earlier (possibly edited) plan.json.
* ``params:Kx`` / ``macs:Kx`` — a whole-model budget: K > 1 times fewer parameters (all of the model's) or
  MACs (conv + linear), spent across layers by `tdexport.budget`. ``params:F`` / ``macs:F`` with 0 < F < 1
  keep fraction F, i.e. K = 1/F.
* ``latency:Kx`` — K > 1 times faster on a measured target backend (only the ``x`` form).

Budget rules (`RankRule.is_budget`) have no per-layer meaning: they are resolved jointly over all layers
by the planner, so `mode_rank` refuses them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .errors import UsageError
from .factor.evbmf import evbmf_rank_from_values

__all__ = ["RANK_RULE_FORMS", "BUDGET_KINDS", "RankRule", "parse_rank_rule", "round_rank", "mode_rank"]

RANK_RULE_FORMS = ("vbmf, vbmf:W (0<W≤1), energy:E (0<E<1), ratio:F (0<F≤1), svt:R (0<R≤1), N (an integer ≥ 1), "
                   "plan:FILE, "
                   "params:Kx / macs:Kx (K>1 times fewer), params:F / macs:F (0<F<1 kept), latency:Kx (K>1)")
BUDGET_KINDS = ("params", "macs", "latency")


@dataclass(frozen=True)
class RankRule:
    """A parsed rank rule.

    Attributes:
        kind: one of ``vbmf``, ``energy``, ``ratio``, ``svt``, ``fixed``, ``plan``, or a budget: ``params``,
            ``macs``, ``latency``.
        value: the number after the colon (weakening factor, energy, ratio or fixed rank); 1.0 for
            plain ``vbmf``; 0 for ``plan``; for budgets the whole-model reduction factor K > 1 (a
            fraction kept F is stored as 1/F).
        path: the plan file for ``plan`` rules.
        text: the rule as the user wrote it, recorded in plan.json.
    """

    kind: str
    value: float = 0.0
    path: Path | None = None
    text: str = ""

    @property
    def needs_spectrum(self) -> bool:
        """Whether resolving this rule needs the singular values of each mode."""
        return self.kind in ("vbmf", "energy", "svt")

    @property
    def is_budget(self) -> bool:
        """Whether this is a whole-model budget (``params:``, ``macs:``, ``latency:``), allocated jointly."""
        return self.kind in BUDGET_KINDS

    def __str__(self) -> str:
        return self.text


def _bad(text: str, why: str) -> UsageError:
    return UsageError(f"invalid rank rule '{text}': {why}; accepted forms: {RANK_RULE_FORMS}")


def parse_rank_rule(text: str) -> RankRule:
    """Parse a ``--rank`` string into a `RankRule`, raising `UsageError` (exit 2) when malformed."""
    raw = text.strip()
    head, sep, tail = raw.partition(":")
    head = head.lower()
    if not sep:
        if head == "vbmf":
            return RankRule("vbmf", 1.0, text=raw)
        if head.isdigit():
            if int(head) < 1:
                raise _bad(text, "a fixed rank must be at least 1")
            return RankRule("fixed", float(int(head)), text=raw)
        raise _bad(text, "unknown form")
    if head == "plan":
        if not tail:
            raise _bad(text, "plan: needs a file path")
        return RankRule("plan", path=Path(tail), text=raw)
    if head in BUDGET_KINDS:
        return RankRule(head, _budget_factor(text, head, tail), text=raw)
    try:
        value = float(tail)
    except ValueError:
        raise _bad(text, f"'{tail}' is not a number") from None
    limits = {"vbmf": (0.0, 1.0, True), "energy": (0.0, 1.0, False), "ratio": (0.0, 1.0, True),
              "svt": (0.0, 1.0, True)}
    if head not in limits:
        raise _bad(text, f"unknown rule '{head}'")
    lo, hi, hi_inclusive = limits[head]
    if not (lo < value < hi or (hi_inclusive and value == hi)):
        raise _bad(text, f"{head} takes a value in ({lo:g}, {hi:g}{']' if hi_inclusive else ')'}")
    return RankRule(head, value, text=raw)


def _budget_factor(text: str, head: str, tail: str) -> float:
    """Reduction factor K > 1 of a budget rule's ``Kx`` tail (params/macs also take a fraction kept ``F``)."""
    tail = tail.strip().lower()
    factor_form = tail.endswith("x")
    try:
        value = float(tail[:-1] if factor_form else tail)
    except ValueError:
        raise _bad(text, f"'{tail}' is not a number") from None
    if not math.isfinite(value):
        raise _bad(text, "the factor must be finite")
    if factor_form:
        if value <= 1:
            raise _bad(text, f"{head}:Kx needs a reduction factor K > 1")
        return value
    if head == "latency":
        raise _bad(text, "latency takes only a speedup factor Kx with K > 1")
    if not 0 < value < 1:
        raise _bad(text, f"{head}:F without 'x' is the fraction kept and needs 0 < F < 1")
    return 1.0 / value


def round_rank(rank: int, size: int, round_to: int | None) -> int:
    """Round ``rank`` up to a multiple of ``round_to`` (tensor-core friendly), never above ``size``."""
    if round_to and round_to > 1:
        rank = math.ceil(rank / round_to) * round_to
    return max(1, min(rank, size))


def mode_rank(
    rule: RankRule,
    size: int,
    *,
    values: Tensor | None = None,
    shape: Sequence[int] | None = None,
    round_to: int | None = None,
) -> int:
    """Resolve a rule to the rank of one mode (or of one matrix, for SVD).

    Args:
        rule: a parsed rule (not ``plan``, which is replayed by the plan builder).
        size: the mode size n (for a matrix SVD, min(O, I)); the rank never exceeds it.
        values: singular values of the mode unfolding (or matrix), needed by ``vbmf`` and ``energy``.
        shape: (rows, cols) of that unfolding, needed by ``vbmf``.
        round_to: round up to a multiple of this, capped at ``size``.

    Returns:
        The rank, an int in [1, size].

    Raises:
        UsageError: a fixed rank larger than ``size``.
    """
    if rule.kind == "fixed":
        rank = int(rule.value)
        if rank > size:
            raise UsageError(f"rank {rank} is above a mode of size {size}")
    elif rule.kind == "ratio":
        rank = math.ceil(rule.value * size - 1e-9)
    elif rule.kind == "energy":
        if values is None:
            raise ValueError("the energy rule needs singular values")
        energy = (values.to(torch.float64) ** 2).cumsum(0)
        total = float(energy[-1])
        # smallest k with cumulative fraction strictly above E
        rank = int((energy / total <= rule.value).sum()) + 1 if total > 0 else 1
    elif rule.kind == "vbmf":
        if values is None or shape is None:
            raise ValueError("the vbmf rule needs singular values and the unfolding shape")
        extreme = evbmf_rank_from_values(values, (int(shape[0]), int(shape[1])))
        rank = math.ceil(size - rule.value * (size - extreme) - 1e-9)
    else:
        raise ValueError(f"rule '{rule.kind}' has no per-mode rank")
    return round_rank(rank, size, round_to)
