"""Runtime-aware decisions in the planner: layers that do not pay stay dense, and the ``latency:`` rule.

With a target (``--target BACKEND[:BATCH]``), every layer the rank rule would factor is timed on that target
dense and as its factor chain at the chosen ranks (`tdexport.cost`, cached); a chain that is not faster
keeps the layer dense, with both times in the reason. The ``latency:Kx`` rule spends a time budget with the
same allocator as ``params:`` / ``macs:`` (`tdexport.budget_plan.choose_ranks`), pricing each rank option by
its measured (interpolated) chain time, then checks the whole model end to end (both models exported and
timed side by side, `tdexport.speed.measure_speedup`) and corrects the allocation until the measured
speedup is within ±10 % of K or no further step helps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from .budget import BudgetUnreachable
from .cost import CostCache, CostTable, Geometry, Target, measure_costs, parse_target, profile_costs, time_graphs
from .errors import UsageError
from .ranks import RankRule
from .speed import ModelSpeed

if TYPE_CHECKING:
    from .budget_plan import BudgetChoice
    from .sites import LayerSite

__all__ = ["PAYS_MARGIN", "TOLERANCE", "TargetCosts", "pays", "as_target", "budget_on_target", "latency_choice",
           "model_signature", "slow_layers"]

TOLERANCE = 0.10
"""A ``latency:Kx`` allocation is accepted once its measured speedup is within this fraction of K."""
_MAX_STEPS = 4
PAYS_MARGIN = 0.05
"""A factor chain pays only when it measures at least this fraction faster than its dense layer: standalone
timings of sub-millisecond layers differ by a few percent from run to run, and a chain that is only as fast
as the layer still adds kernel launches to the whole model (the demo's 16-channel stage measured 4 % faster
alone and made the model 0.8x at batch 1)."""


def pays(dense_ms: float, chain_ms: float) -> bool:
    """Whether a chain measured at ``chain_ms`` is measurably faster than its dense layer at ``dense_ms``."""
    return chain_ms < dense_ms * (1 - PAYS_MARGIN)
# Once one allocation measured too slow and another too fast, bisection converges geometrically: worth a few
# more whole-model measurements than the open-ended search gets.
_MAX_BRACKETED_STEPS = 7


def as_target(target: str | Target | None, *, threads: int | None = None) -> Target | None:
    """A `Target` from ``BACKEND[:BATCH]`` text (or a `Target`, or None)."""
    if target is None or isinstance(target, Target):
        return target
    return parse_target(target, threads=threads)


@dataclass
class TargetCosts:
    """Layer timings on one target for one `tdexport.planner.compress` call.

    Attributes:
        target: backend, batch and threads timed on.
        cache: the persistent cost cache (``CostCache(enabled=False)`` for ``--no-cache``).
        progress: tqdm bars while measuring (None: only on a terminal).
        timings: layer name → (dense ms, chain ms) of every verdict given, for the plan.
    """

    target: Target
    cache: CostCache | None = None
    progress: bool | None = None
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)

    def verdicts(self, chosen: Mapping[str, tuple[LayerSite, str, Sequence[int]]]) -> dict[str, tuple[float, float]]:
        """Time each layer dense and as its chain at the chosen ranks, interleaved per geometry.

        Args:
            chosen: layer name → (site, method, ranks) the rank rule picked.

        Returns:
            layer name → (dense ms, chain ms) per call at ``target.batch``, also kept in ``timings``.
        """
        requests = {}
        for name, (site, method, ranks) in chosen.items():
            geometry = Geometry.of(site.module, site.in_hw, site.tokens)
            requests[name] = ((geometry, "dense", ()), (geometry, method, tuple(int(r) for r in ranks)))
        times = measure_costs([r for pair in requests.values() for r in pair], self.target, cache=self.cache,
                              progress=self.progress)
        for name, (dense, chain) in requests.items():
            self.timings[name] = (times[dense], times[chain])
        return {name: self.timings[name] for name in requests}

    def reason(self, name: str) -> str:
        """Why a layer whose chain does not pay is kept, naming both times."""
        dense, chain = self.timings[name]
        where = f"on {self.target.backend} b{self.target.batch}"
        if chain >= dense:
            return f"factor chain {chain:.3f} ms ≥ dense {dense:.3f} ms {where}"
        return (f"factor chain {chain:.3f} ms is within {PAYS_MARGIN:.0%} of dense {dense:.3f} ms {where} "
                "(not measurably faster)")

    def table(self, sites: Sequence[LayerSite], methods: Mapping[str, str | None], *,
              round_to: int | None) -> CostTable:
        """Profile every eligible layer on the rank grid (dense and chain times, interpolated in between)."""
        specs = [(s.name, s.module, s.in_hw, s.tokens, methods[s.name]) for s in sites if methods.get(s.name)]
        return profile_costs(specs, self.target, cache=self.cache, round_to=round_to, progress=self.progress)

    @property
    def store(self) -> CostCache:
        """The cost cache in use (the default `CostCache` when none was given)."""
        if self.cache is None:
            self.cache = CostCache()
        return self.cache

    def call_overhead_ms(self) -> float:
        """Per-call fixed time of the runtime on the target (`_call_overhead_ms`), ms; cached."""
        what = {"kind": "call-overhead"}
        entry = self.store.lookup(self.target, what)
        if entry is None:
            entry = {"ms": _call_overhead_ms(self.target)}
            self.store.record(self.target, what, entry)
            self.store.flush()
        return float(entry["ms"])

    def original_ms(self, model: nn.Module, input_shape: Sequence[int], onnx_file: Callable[[], Any]) -> float:
        """The dense model's time per call (ms) with the layer timer (`time_graphs`); cached by its structure.

        ``onnx_file()`` exports the model (fixed batch) when it must be measured.
        """
        what = {"kind": "model", "model": model_signature(model, input_shape)}
        entry = self.store.lookup(self.target, what)
        if entry is None:
            entry = {"ms": time_graphs({"original": onnx_file().read_bytes()}, self.target)["original"]}
            self.store.record(self.target, what, entry)
            self.store.flush()
        return float(entry["ms"])

    def speedup(self, model: nn.Module, structure: Mapping[str, tuple[str, Sequence[int]]],
                input_shape: Sequence[int], onnx_file: Callable[[], Any]) -> ModelSpeed:
        """Paired whole-model speedup of ``model`` with ``structure`` factored (`measure_speedup`); cached.

        Speed depends on the structure only (layer shapes, methods, ranks), not on the weights' values, so the
        key is ``model``'s structure, the input shape and ``structure``; ``onnx_file()`` exports the original.
        """
        from .speed import measure_speedup, structural_copy

        what = {"kind": "speedup", "model": model_signature(model, input_shape),
                "structure": _digest(sorted([n, m, [int(r) for r in rk]] for n, (m, rk) in structure.items()))}
        entry = self.store.lookup(self.target, what)
        if entry is None:
            speed = measure_speedup(onnx_file(), structural_copy(model, dict(structure)), input_shape=input_shape,
                                    backend=self.target.backend, batch=self.target.batch,
                                    threads=self.target.threads)
            entry = {"ms": speed.compressed_ms, "speedup": speed.speedup, "original_ms": speed.original_ms}
            self.store.record(self.target, what, entry)
            self.store.flush()
        return ModelSpeed(float(entry["speedup"]), float(entry["original_ms"]), float(entry["ms"]),
                          self.target.batch, self.target.backend)


def _digest(value: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def model_signature(model: nn.Module, input_shape: Sequence[int]) -> str:
    """A digest of everything about ``model`` that sets its speed: class, module tree with shapes, input shape.

    Weight values are left out on purpose: dense and factored layers run in the same time whatever their values.
    """
    kind = type(model)
    return _digest([f"{kind.__module__}.{kind.__qualname__}", repr(model), [int(d) for d in input_shape]])


def budget_on_target(model: nn.Module, sites: Sequence[LayerSite], rule: RankRule,
                      eligibility: dict[str, tuple[str | None, str]], spectra_of: Callable[[LayerSite], Any],
                      costs: TargetCosts | None, round_to: int | None
                      ) -> tuple[BudgetChoice, dict[str, tuple[str | None, str]]]:
    """Allocate a params: / macs: budget; with a target, only over ranks whose chain is faster there.

    Options are filtered by the interpolated cost table; a layer whose exact ranks then measure slower is made
    ineligible (with the measured reason) and the budget re-allocated over the others, at most three rounds.

    Returns:
        (the allocation, the eligibility it was made with).
    """
    from .budget_plan import choose_ranks

    allowed = None
    if costs is not None:
        table = costs.table(sites, {n: e[0] for n, e in eligibility.items()}, round_to=round_to)

        def allowed(site: LayerSite, _method: str, ranks: tuple[int, ...]) -> bool:
            return pays(table.dense_ms(site.name), table.chain_ms(site.name, ranks))

    for _ in range(3):
        choice = choose_ranks(model, sites, rule, eligibility, spectra_of, round_to=round_to,
                                          allowed=allowed)
        slow = slow_layers(costs, sites, eligibility, choice) if costs is not None else {}
        if not slow:
            break
        eligibility = {**eligibility, **{name: (None, why) for name, why in slow.items()}}
    return choice, eligibility


def slow_layers(costs: TargetCosts, sites: Sequence[LayerSite], eligibility: dict[str, tuple[str | None, str]],
                 choice: BudgetChoice) -> dict[str, str]:
    """Layers of an allocation whose measured chain is not faster than the dense layer (name → reason)."""
    pending = {s.name: (s, eligibility[s.name][0], choice.ranks(s.name)) for s in sites
               if choice.ranks(s.name) is not None}
    times = costs.verdicts(pending)
    return {name: costs.reason(name) for name, (dense, chain) in times.items() if not pays(dense, chain)}


def _call_overhead_ms(target: Target) -> float:
    """Time of a session call that does almost nothing (one Relu on a 1×8 tensor), ms.

    Every standalone layer timing includes this fixed cost of a runtime call, which the layers of a whole
    model do not pay one by one; it is subtracted from the layer costs.
    """
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [target.batch, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [target.batch, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "noop", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return time_graphs({"noop": model.SerializeToString()}, target)["noop"]


def _time_cost(table: CostTable, sites: Sequence[LayerSite], overhead: float) -> Callable[[Any, str, Any], float]:
    calls = {s.name: max(1, s.calls) for s in sites}

    def cost(site: Any, method: str, ranks: tuple[int, ...] | None) -> float:
        ms = table.dense_ms(site.name) if ranks is None else table.chain_ms(site.name, ranks)
        return max(ms - overhead, 0.0) * calls[site.name]

    return cost


def latency_choice(
    model: nn.Module,
    sites: Sequence[LayerSite],
    rule: RankRule,
    eligibility: Mapping[str, tuple[str | None, str]],
    spectra: Callable[[LayerSite], Any],
    costs: TargetCosts,
    *,
    input_shape: Sequence[int],
    round_to: int | None,
    keep: Callable[[BudgetChoice], dict[str, str]],
    say: Callable[[str], Any] = lambda _msg: None,
) -> tuple[BudgetChoice, dict[str, str], dict[str, Any]]:
    """Allocate a ``latency:Kx`` rule with measured layer costs and verify it on the whole model.

    Each step allocates a time budget of T/K' (T the measured original, K' starting at K) over the eligible
    layers, builds a model of that structure (random factors: speed does not depend on their values),
    exports both models and times them paired on the target. K' is then corrected by K / measured, or, once
    one allocation measured too slow and another too fast, bisected between them (at most four steps, seven once
    bracketed), until
    the measured speedup is within ±10 % of K. Returned: the step closest to K within ±10 %, else the
    fastest-enough step with the smallest overshoot; if every step measured below K − 10 %, K is unreachable.

    Args:
        model: the dense model.
        sites: its Conv2d / Linear sites (`tdexport.planner.profile_layers`).
        rule: the ``latency:`` rule; ``rule.value`` is K.
        eligibility: site name → (method, None when not eligible; the reason).
        spectra: site → its weight's spectra.
        costs: the target and cache.
        input_shape: (C, H, W) of one image.
        round_to: alignment of candidate ranks.
        keep: given an allocation, the layers to keep dense anyway (name → reason; the "never slower" check).
        say: progress messages.

    Returns:
        (choice, kept, record): the allocation, the layers kept by ``keep``, and the plan's ``budget`` entry
        additions: ``measured`` (×), ``original_ms``, ``compressed_ms`` and ``steps`` (each step's K',
        predicted and measured speedups).

    Raises:
        BudgetUnreachable: K is above what the fastest grid ranks reach, measured or predicted (exit 2 with the
            best figure).
    """
    import tempfile
    from pathlib import Path

    from .budget_plan import choose_ranks
    from .speed import export_fixed

    target = costs.target
    methods = {name: method for name, (method, _) in eligibility.items()}
    table = costs.table(sites, methods, round_to=round_to)
    overhead = costs.call_overhead_ms()
    cost = _time_cost(table, sites, overhead)
    eligible = [s for s in sites if methods.get(s.name)]
    dense_sum = math.fsum(cost(s, methods[s.name], None) for s in eligible)
    with tempfile.TemporaryDirectory(prefix="tdexport-latency-") as tmp:
        exported: list[Path] = []

        def original_onnx() -> Path:
            # Exported once, and only when a timing is not in the cache.
            if not exported:
                say(f"exporting the original model for {target} …")
                exported.append(export_fixed(model, Path(tmp), "original", input_shape, target.batch))
            return exported[0]

        # Timed like the layers (same timer and statistic), so the fixed cost below is consistent with them.
        original_ms = costs.original_ms(model, input_shape, original_onnx)
        # Time outside the eligible layers (stem, classifier, pooling, activations) is a fixed cost. Standalone
        # layer timings can still add up to more than the fused whole model; the fixed cost is then 0 and the
        # end-to-end correction below absorbs the difference.
        fixed = max(original_ms - dense_sum, 0.0)
        goal, k = rule.value, rule.value
        steps: list[dict[str, Any]] = []
        options: dict[tuple[str, str], Any] = {}  # one cost table for every step: build its options once
        candidates: list[tuple[float, Any, dict[str, str], Any]] = []
        below: list[float] = []  # K' whose allocation measured slower than K
        above: list[float] = []  # K' whose allocation measured faster than K
        while len(steps) < (_MAX_BRACKETED_STEPS if below and above else _MAX_STEPS):
            try:
                choice = choose_ranks(model, sites, RankRule("latency", k, text=rule.text), eligibility, spectra,
                                      round_to=round_to, cost=cost, fixed_cost=fixed, options_cache=options)
            except BudgetUnreachable as err:
                if any(step["allocated_for"] >= err.best * 0.998 for step in steps):
                    break  # the fastest allocation was measured already
                # The prediction says K' is out of reach; the fastest allocation is still worth measuring,
                # since the measurement, not the layer model, decides.
                k = err.best * 0.999
                choice = choose_ranks(model, sites, RankRule("latency", k, text=rule.text), eligibility, spectra,
                                      round_to=round_to, cost=cost, fixed_cost=fixed, options_cache=options)
            kept = keep(choice)
            structure = {name: (methods[name], tuple(choice.ranks(name)))
                         for name in methods if choice.ranks(name) is not None and name not in kept}
            say(f"step {len(steps) + 1}: allocation for {k:.2f}× (predicted {choice.allocation.reduction:.2f}×), "
                "measuring the whole model …")
            speed = costs.speedup(model, structure, input_shape, original_onnx)
            steps.append({"allocated_for": k, "predicted": choice.allocation.reduction, "measured": speed.speedup,
                          "compressed_ms": speed.compressed_ms})
            (below if speed.speedup < goal else above).append(k)
            candidates.append((speed.speedup, choice, kept, speed))
            if abs(speed.speedup / goal - 1) <= TOLERANCE:
                break
            # Bracket K' between an allocation measured too slow and one measured too fast and bisect
            # (geometrically); until both exist, correct by the measured miss. The layer model can be far off
            # (predicted 1.66x measuring 2.8x), so a plain correction would bounce between two allocations.
            lo = max(below, default=None)
            hi = min((x for x in above if lo is None or x > lo), default=None)
            new_k = math.sqrt(lo * hi) if lo is not None and hi is not None else k * goal / speed.speedup
            if abs(new_k - k) < 1e-3 * k or any(abs(new_k - s_["allocated_for"]) < 1e-3 * new_k for s_ in steps):
                break
            k = new_k
    if not candidates:
        raise ValueError("no allocation step ran")
    # Within ±10 % of K: the closest. Else an allocation at least as fast as K (the smallest overshoot: more
    # compression than asked, but the speed the user needs). Else K was not reached: exit 2 with the best.
    within = [c for c in candidates if abs(c[0] / goal - 1) <= TOLERANCE]
    faster = [c for c in candidates if c[0] >= goal]
    if within:
        _, choice, kept, speed = min(within, key=lambda c: abs(c[0] / goal - 1))
    elif faster:
        _, choice, kept, speed = min(faster, key=lambda c: c[0])
    else:
        raise unreachable(rule, max(c[0] for c in candidates), target)
    record = {"measured": speed.speedup, "original_ms": speed.original_ms,
              "original_layer_timer_ms": original_ms, "call_overhead_ms": overhead, "fixed_ms": fixed,
              "compressed_ms": speed.compressed_ms,
              "target_backend": target.backend, "target_batch": target.batch, "steps": steps}
    return choice, kept, record


def unreachable(rule: RankRule, best: float, target: Target) -> UsageError:
    """The error for a latency target no allocation reached, with the best measured speedup."""
    return BudgetUnreachable(f"{rule.text} was not reached on {target}: the best measured speedup was {best:.2f}× "
                             f"(try a smaller K, or a larger batch in --target)", best)
