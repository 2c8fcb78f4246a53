"""Budget allocation: choose one option per layer so the whole model fits a cost budget at least error.

A pure function of a cost table, with no modules and no files. Each layer offers options, each a
(cost, error, ranks) triple; its dense option has ranks None and error 0. `allocate` picks one option per
layer minimising Σ error subject to ``fixed_cost + Σ cost ≤ budget`` (a multiple-choice knapsack):

1. per layer, the lower convex hull of its (cost, error) points;
2. every layer starts at its least-error hull point, then the hull step with the smallest error added per
   unit of cost saved is taken, across all layers, until the budget holds (the Lagrangian path: at each
   point it passes, no choice of options costing as little has less total error);
3. a fill-up pass spends what the last step left over: layers move to costlier, lower-error options (on the
   hull or not) while the total stays within the budget, best error reduction per unit cost first.

Costs are in any additive unit (parameters, MACs, milliseconds). Ties are broken by layer name order, so
the result depends only on the table.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import UsageError

__all__ = ["Option", "Allocation", "BudgetUnreachable", "allocate", "lower_hull", "pareto_front"]


@dataclass(frozen=True)
class Option:
    """One way to realise a layer.

    Attributes:
        cost: its cost in the budget's unit (≥ 0).
        error: its error (≥ 0), e.g. the relative squared reconstruction error; 0 for the dense layer.
        ranks: the factorization ranks, or None for keeping the layer dense.
    """

    cost: float
    error: float
    ranks: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Allocation:
    """The chosen option of every layer.

    Attributes:
        choices: layer name → chosen `Option`, in the order the layers were given.
        cost: fixed_cost + Σ chosen costs.
        error: Σ chosen errors.
        budget: the budget it was allocated for (cost ≤ budget).
        reference: the cost the reduction is measured against (by default the all-dense total).
    """

    choices: dict[str, Option]
    cost: float
    error: float
    budget: float
    reference: float

    @property
    def reduction(self) -> float:
        """Predicted whole-model reduction factor, reference / cost (inf for a zero cost)."""
        return self.reference / self.cost if self.cost > 0 else math.inf


class BudgetUnreachable(UsageError):
    """Even the cheapest option of every layer exceeds the budget (exit 2).

    Attributes:
        best: the best achievable reduction factor, reference / (fixed cost + Σ cheapest costs).
    """

    def __init__(self, message: str, best: float) -> None:
        super().__init__(message)
        self.best = best

    def __reduce__(self) -> tuple:
        # the default would rebuild it from the message alone and lose ``best``
        return type(self), (str(self), self.best)


def pareto_front(options: Sequence[Option]) -> list[Option]:
    """Options no other option beats on both cost and error, by increasing cost and strictly decreasing error.

    Among options of equal cost and error the first given is kept.
    """
    ordered = sorted(range(len(options)), key=lambda i: (options[i].cost, options[i].error, i))
    front: list[Option] = []
    for i in ordered:
        if not front or options[i].error < front[-1].error:
            front.append(options[i])
    return front


def lower_hull(options: Sequence[Option]) -> list[Option]:
    """The lower convex hull of a layer's (cost, error) points, by increasing cost and decreasing error.

    Between consecutive hull points, the error added per unit of cost saved grows as the cost falls.
    """
    hull: list[Option] = []
    for p in pareto_front(options):
        # drop the last point while it lies on or above the segment from the one before it to p
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    return hull


def _cross(a: Option, b: Option, c: Option) -> float:
    return (b.cost - a.cost) * (c.error - a.error) - (b.error - a.error) * (c.cost - a.cost)


def _check(layers: Mapping[str, Sequence[Option]], budget: float, fixed_cost: float) -> None:
    for value, what in ((budget, "budget"), (fixed_cost, "fixed_cost")):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{what} must be a finite number ≥ 0, got {value}")
    for name, options in layers.items():
        if not options:
            raise ValueError(f"layer '{name}' has no option")
        bad = next((o for o in options if not (math.isfinite(o.cost) and math.isfinite(o.error))
                    or o.cost < 0 or o.error < 0), None)
        if bad is not None:
            raise ValueError(f"layer '{name}': option {bad} needs a finite cost and error ≥ 0")


def allocate(layers: Mapping[str, Sequence[Option]], budget: float, *, fixed_cost: float = 0.0,
             reference: float | None = None) -> Allocation:
    """Choose one option per layer minimising Σ error subject to fixed_cost + Σ cost ≤ budget.

    Args:
        layers: layer name → its options (each layer's dense option included, ranks None, error 0).
        budget: the largest allowed total cost, fixed cost included.
        fixed_cost: cost of everything that is not a choice (layers kept dense by eligibility, other ops).
        reference: the total the reduction factor is measured against; default fixed_cost + Σ each layer's
            dense option cost (its costliest option when it has no dense one).

    Returns:
        The `Allocation`; its cost is ≤ budget, as close to it as the options allow after the fill-up pass.

    Raises:
        BudgetUnreachable: fixed_cost + Σ cheapest costs > budget; ``.best`` is the best reduction factor.
        ValueError: a layer without options, or a negative or non-finite cost, error or budget.
    """
    _check(layers, budget, fixed_cost)
    names = sorted(layers)
    if reference is None:
        dense = [next((o.cost for o in layers[n] if o.ranks is None), max(o.cost for o in layers[n])) for n in names]
        reference = fixed_cost + math.fsum(dense)
    cheapest = fixed_cost + math.fsum(min(o.cost for o in layers[n]) for n in names)
    if cheapest > budget:
        best = reference / cheapest if cheapest > 0 else math.inf
        raise BudgetUnreachable(
            f"the budget {budget:.6g} is below the cheapest allocation {cheapest:.6g} (every layer at its "
            f"cheapest option, fixed cost {fixed_cost:.6g}): the best achievable reduction is {best:.3f}×", best)
    fronts = [pareto_front(layers[n]) for n in names]
    hulls = [lower_hull(f) for f in fronts]
    at = [len(h) - 1 for h in hulls]  # start at the least-error point of each hull

    def cost_now() -> float:
        return fixed_cost + math.fsum(h[i].cost for h, i in zip(hulls, at, strict=True))

    def step(k: int) -> tuple[float, int]:
        here, there = hulls[k][at[k]], hulls[k][at[k] - 1]
        return (there.error - here.error) / (here.cost - there.cost), k

    heap = [step(k) for k in range(len(names)) if at[k] > 0]
    heapq.heapify(heap)
    while heap and cost_now() > budget:
        _, k = heapq.heappop(heap)
        at[k] -= 1
        if at[k] > 0:
            heapq.heappush(heap, step(k))
    chosen = _fill_up(fronts, [h[i] for h, i in zip(hulls, at, strict=True)], budget, fixed_cost)
    by_name = dict(zip(names, chosen, strict=True))
    return Allocation({n: by_name[n] for n in layers}, fixed_cost + math.fsum(o.cost for o in chosen),
                      math.fsum(o.error for o in chosen), budget, reference)


def _fill_up(fronts: list[list[Option]], chosen: list[Option], budget: float, fixed_cost: float) -> list[Option]:
    """Spend the slack left under the budget, best error removed per unit of cost added first.

    Repeats until no affordable move reduces the error. A dominated option never beats the front option
    that is at most as costly with at most its error, so only each layer's Pareto front is searched.
    """
    chosen = list(chosen)
    while True:
        slack = budget - (fixed_cost + math.fsum(o.cost for o in chosen))
        best: tuple[float, float, int, int] | None = None  # (−gain per cost, −gain, layer, option index)
        for k, front in enumerate(fronts):
            here = chosen[k]
            for j, o in enumerate(front):
                gain, extra = here.error - o.error, o.cost - here.cost
                if gain <= 0 or extra > slack:
                    continue
                key = (-(gain / extra) if extra > 0 else -math.inf, -gain, k, j)
                if best is None or key < best:
                    best = key
        if best is None:
            return chosen
        chosen[best[2]] = fronts[best[2]][best[3]]
