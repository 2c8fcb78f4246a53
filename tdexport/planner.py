"""Deciding and factorizing: profile a model, choose a method and ranks per layer, build the compressed model.

`compress` records every decision in a `tdexport.plan.Plan`; `survey` describes a dense model in the same
shape without factorizing anything. The plan data model, its validation and `apply_plan` live in
`tdexport.plan`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from . import budget_plan
from . import layers as L
from .attention import with_explicit_attention
from .cost import CostCache, Target, auto_round_to, tensorrt_alignment
from .errors import DecompositionError, UsageError
from .factorize import (
    MethodOptions,
    _decompose,
    _resolve_ranks,
    _Spectra,
    format_options,
    reorder_storage_ratio,
    storage_totals,
)
from .guards import require_finite
from .plan import (
    Compressed,
    LayerPlan,
    Plan,
    check_layer_fits,
    module_aliases,
    normalise_format,
    set_submodule,
)
from .ranks import RankRule, parse_rank_rule
from .selection import check_globs as _check_globs
from .selection import check_replay_names as _check_replay_names
from .selection import eligibility as _eligibility
from .selection import ends as _ends
from .sites import LayerSite, profile_layers, site_cost
from .speed_plan import TargetCosts, as_target, budget_on_target, latency_choice, pays, slow_layers

__all__ = ["LayerSite", "profile_layers", "compress", "survey", "TIMED_METHODS"]

# Methods whose chains the target's layer graphs can build (plain conv / linear chains); general TT reshapes
# between its cores and reordered layers run dense after export, so neither is timed per layer.
TIMED_METHODS = ("tucker2", "tt", "cp", "svd", "ht2", "tucker1")


def _kept(site: LayerSite, reason: str, method: str | None = None, ranks: Sequence[int] = ()) -> LayerPlan:
    params, macs = site_cost(site, [site.module])
    return LayerPlan(site.name, _type_name(site.module), list(site.module.weight.shape), method,
                     list(ranks), "kept", reason, params, params, macs, macs, None,
                     list(site.in_hw) if site.in_hw else None, site.tokens)


def _type_name(module: nn.Module) -> str:
    # plan.json records the layer family; a subclass (kept) is still a Conv2d or a Linear there.
    return "Conv2d" if isinstance(module, nn.Conv2d) else "Linear"


def _totals(model: nn.Module, compressed: nn.Module, entries: list[LayerPlan]) -> dict[str, int]:
    macs_before = sum(e.macs_before for e in entries)
    return {
        "params_before": sum(p.numel() for p in model.parameters()),
        "params_after": sum(p.numel() for p in compressed.parameters()),
        "macs_before": macs_before,
        "macs_after": macs_before - sum(e.macs_before - e.macs_after for e in entries),
    }


def compress(
    model: nn.Module,
    *,
    format: str = "tucker",
    rank: str | RankRule | Plan = "vbmf",
    input_shape: Sequence[int] = (3, 224, 224),
    model_name: str = "custom",
    num_classes: int | None = None,
    round_to: int | str | None = None,
    layers: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_stem: bool = False,
    include_classifier: bool = False,
    iters: int = 5,
    cp_iters: int = 100,
    progress: Callable[[Sequence[Any]], Any] | None = None,
    target: str | Target | None = None,
    cost_cache: CostCache | None = None,
    say: Callable[[str], Any] | None = None,
    precision: str = "fp32",
    tt_type: str = "special",
    tt_shape: Sequence[str] = (),
    groups: int = 4,
    coef_ratio: float = 0.25,
    progressive: bool = False,
    progressive_ref: float = 64.0,
    stem_method: str | None = None,
    plan_only: bool = False,
) -> Compressed:
    """Decide per layer how to factor ``model``, factor it, and return a new compressed model.

    The input model is not modified. Layers are kept dense, with the reason recorded, when they are not
    exact ``nn.Conv2d`` / ``nn.Linear`` (subclasses may compute something else), grouped/depthwise, padded
    in a way no symmetric integer padding reproduces, the stem or the classifier (unless included),
    outside ``layers`` globs, inside ``exclude`` globs, when the chosen ranks would not cut both
    parameters and MACs, or, with a ``target``, when the factor chain is not faster than the dense layer
    on that runtime (both measured; the times are in the plan). A layer registered under several names is
    replaced under all of them.

    Args:
        model: dense network (Conv2d / Linear layers are considered).
        format: ``tucker`` (``tucker2``/``tk``), ``tt`` (TDC's 3-core TT of (O, kh·kw, I); with
            ``tt_type="general"`` the general TT, format ``ttg``), ``cp``, ``svd``, ``ht2`` or ``reorder``.
        rank: a rank rule string (see `tdexport.ranks`), a parsed `RankRule`, or a `Plan` to replay. A
            ``params:`` / ``macs:`` budget is spread over the eligible layers by `tdexport.budget_plan`.
        input_shape: (C, H, W) of one input sample, the resolution MACs are counted at.
        model_name: zoo name recorded in the plan, so `tdexport.load` can rebuild the model.
        num_classes: classifier width recorded in the plan.
        round_to: round every rank up to a multiple of this (never above the mode size); ``"auto"``
            measures the multiple the target runs best (`tdexport.cost.auto_round_to`; needs ``target``).
            None: 1, except for budget rules (``params:``, ``macs:``, ``latency:``) with a target, which
            default to ``"auto"`` (pass 1 to turn alignment off).
        layers: only layers whose dotted name matches one of these globs are considered.
        exclude: layers whose name matches one of these globs are kept.
        include_stem: also factor the first conv executed.
        include_classifier: also factor the last layer executed.
        iters: maximum HOOI sweeps after the HOSVD start (Tucker-2).
        cp_iters: ALS iterations (CP).
        progress: optional wrapper for the per-layer loop, e.g. ``tqdm`` (also shows the cost bars).
        target: ``BACKEND[:BATCH]`` or a `tdexport.cost.Target`: the runtime whose measured layer times
            decide which layers pay and price the ``latency:`` rule. None: no measurement.
        cost_cache: where layer timings are cached (default the user cache; ``CostCache(enabled=False)``
            measures afresh).
        say: progress messages of the ``latency:`` search.
        precision: the precision the model will be served in (``fp32``, ``fp16``, ``int8``); with a TensorRT
            target, ``round_to="auto"`` then takes TensorRT's tensor-core multiple (8 / 32) instead of measuring.
        tt_type: ``special`` (TDC's 3-core TT) or ``general`` (channel modes split, `tdexport.layers_tt`).
        tt_shape: general TT's ``--tt-shape`` values (`tdexport.factorize.parse_tt_shape`); default 2 modes
            per channel axis, balanced.
        groups: reorder's g, rows of the weight view (need not divide the weight's size).
        coef_ratio: reorder's kept fraction of DCT coefficients per row in (0, 1]; r' ≥ 0 when progressive.
        progressive: reorder's per-layer ratio 1 / (1 + r'·√N / progressive_ref) (the seed's rule).
        progressive_ref: the progressive rule's reference size.
        stem_method: ``tucker1`` factors the stem (with ``include_stem``) by Tucker-1 whatever the format;
            ht2 does so by default (as its seed).
        plan_only: decide and count without factorizing (a dry run): the plan's decisions, ranks and counts
            are those of a full call (rank rules read the same singular values, computed without their
            vectors where a rule needs no more), its errors are None, and the returned model's factor
            chains are empty structures on the ``meta`` device (shapes only; it cannot run or be saved).

    Returns:
        `Compressed` with the new model and its `Plan`.

    Raises:
        UsageError: a malformed rank rule, a glob that matches no layer, non-finite weights, a replayed plan
            that does not fit the model, a rank above a mode size, or an unreachable budget (`BudgetUnreachable`).
        DecompositionError: a factorization failed at the requested ranks.
    """
    fmt, opts = format_options(format, tt_type, tt_shape, groups, coef_ratio, progressive, progressive_ref,
                                stem_method)
    if fmt == "reorder" and not isinstance(rank, Plan) and not str(rank).startswith("plan:"):
        # Reordering has no rank rule: g and the kept fraction decide; the text records them.
        rank = RankRule("reorder", text=f"reorder g={groups} r={coef_ratio:g}{' progressive' if progressive else ''}")
    if isinstance(rank, Plan):
        replay, rule = rank, RankRule("plan", 0.0, None, "plan")
    else:
        rule = parse_rank_rule(rank) if isinstance(rank, str) else rank
        replay = Plan.read(rule.path) if rule.kind == "plan" else None
    require_finite(list(model.named_parameters()) + list(model.named_buffers()), model_name)
    model, attention_kept = with_explicit_attention(model)
    sites = profile_layers(model, input_shape)
    if not sites:
        raise UsageError("the model has no Conv2d or Linear layer to factor")
    _check_globs(sites, layers, "--layers")
    _check_globs(sites, exclude, "--exclude")
    stem, classifier = _ends(sites)
    eligibility = {s.name: _eligibility(s, fmt, stem, classifier, layers, exclude, include_stem, include_classifier)
                   for s in sites}
    if stem is not None and eligibility[stem][0] is not None and opts.stem_method:
        stem_module = next(s.module for s in sites if s.name == stem)
        if stem_module.kernel_size != (1, 1):
            eligibility[stem] = (opts.stem_method, "")
    target = as_target(target)
    costs = TargetCosts(target, cost_cache, True if progress else None) if target is not None else None
    options: dict[str, Any] = {}
    if round_to is None and costs is not None and rule.is_budget:
        # Budgets on a target: ranks aligned to the multiple the runtime runs best turned resnet50 macs:3x on
        # ort-cpu from 1.78x / 1.56x (b1 / b32) into 2.11x / 2.59x at the same MACs (tools/bench_latency.py).
        round_to = "auto"
    if round_to == "auto":
        if costs is None:
            raise UsageError("--round-to auto measures which multiple runs best on the target: give --target "
                             "BACKEND[:BATCH]")
        aligned = tensorrt_alignment(costs.target.backend, precision)
        round_to, options["round_to_auto"] = aligned or auto_round_to(costs.target, cache=costs.cache,
                                                                   progress=costs.progress)
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise UsageError(f"round_to must be a positive integer or 'auto', got {round_to!r}")
    spectra: dict[str, _Spectra] = {}

    def spectra_of(site: LayerSite) -> _Spectra:
        if site.name not in spectra:
            spectra[site.name] = _Spectra(site.module.weight.detach(), values_only=plan_only)
        return spectra[site.name]

    budget, latency = None, None
    if rule.kind == "latency":
        if costs is None:
            raise UsageError(f"{rule.text} needs --target BACKEND[:BATCH] to measure layer latencies on; "
                             "params: and macs: budgets need no target")
        budget, _, latency = latency_choice(
            model, sites, rule, eligibility, spectra_of, costs, input_shape=input_shape, round_to=round_to,
            keep=lambda choice: slow_layers(costs, sites, eligibility, choice), say=say or (lambda _m: None))
    elif rule.is_budget:
        budget, eligibility = budget_on_target(model, sites, rule, eligibility, spectra_of, costs, round_to)
    kept: dict[str, LayerPlan] = {}
    chosen: dict[str, tuple[LayerSite, str, list[int], str, list[list[int]] | None]] = {}
    for site in sites:
        decision = _decide(site, eligibility[site.name], rule, replay, budget, spectra_of, round_to, opts)
        if isinstance(decision, LayerPlan):
            kept[site.name] = decision
        else:
            chosen[site.name] = decision
    for name, entry in kept.items():
        if costs is not None and name in costs.timings:
            entry.dense_ms, entry.chain_ms = costs.timings[name]
    timed = {n: c for n, c in chosen.items() if c[1] in TIMED_METHODS}
    if costs is not None:
        for name in set(chosen) - set(timed):
            site, method, ranks, reason, modes = chosen[name]
            why = "runs dense after export" if method == "reorder" else "its chain reshapes between cores"
            chosen[name] = (site, method, ranks, f"{reason} (not timed on the target: {why})", modes)
    if costs is not None and timed:
        times = costs.verdicts({n: (site, method, ranks) for n, (site, method, ranks, _, _) in timed.items()})
        for name, (dense, chain) in times.items():
            if not pays(dense, chain):
                site, method, ranks, _, _ = chosen.pop(name)
                kept[name] = _kept(site, costs.reason(name), method, ranks)
                kept[name].dense_ms, kept[name].chain_ms = dense, chain
    new_model = copy.deepcopy(model)
    new_aliases = module_aliases(new_model)
    entries: list[LayerPlan] = []
    loop = progress(sites) if progress else sites
    for site in loop:
        if site.name in kept:
            entries.append(kept[site.name])
            continue
        _, method, ranks, reason, modes = chosen[site.name]
        m = site.module
        try:
            if plan_only:
                with torch.device("meta"):  # chains that follow the layer's device are moved there after
                    seq, err = L.structure_for(method, m, ranks, modes=modes).to("meta"), None
            else:
                seq, err = _decompose(method, m, ranks, spectra_of(site), iters=iters, cp_iters=cp_iters,
                                      modes=modes)
        except DecompositionError as exc:
            raise DecompositionError(f"{site.name} {tuple(m.weight.shape)}: {exc}") from exc
        replaced = new_model.get_submodule(site.name)
        for name in new_aliases[id(replaced)]:
            set_submodule(new_model, name, seq)
        before, after = site_cost(site, [m]), site_cost(site, seq)
        dense_ms, chain_ms = costs.timings.get(site.name, (None, None)) if costs is not None else (None, None)
        storage = reorder_storage_ratio(m.weight.numel(), *ranks) if method == "reorder" else None
        entries.append(LayerPlan(site.name, _type_name(m), list(m.weight.shape), method, ranks,
                                 "decomposed", reason, before[0], after[0], before[1], after[1],
                                 None if err is None else float(err),
                                 list(site.in_hw) if site.in_hw else None, site.tokens, dense_ms, chain_ms,
                                 modes, storage))
    if replay is not None:
        _check_replay_names(replay, sites, str(rule.path) if rule.path else "the given plan")
    if attention_kept:
        options["attention_kept"] = attention_kept
    options.update({"round_to": round_to, "layers": list(layers), "exclude": list(exclude),
                    "include_stem": include_stem, "include_classifier": include_classifier,
                    "iters": iters, "cp_iters": cp_iters, **opts.record(fmt)})
    if target is not None:
        options["target"] = {"backend": target.backend, "batch": target.batch, "precision": target.precision,
                             "threads": target.threads}
    totals = _totals(model, new_model, entries)
    if fmt == "reorder":
        totals.update(storage_totals(entries))
    record = budget.record(totals) if budget else None
    if record is not None and latency is not None:
        record.update(latency, achieved=latency["measured"], target=rule.value, rule=rule.text)
    plan = Plan(model_name, fmt, rule.text, list(input_shape), entries, totals, num_classes, options,
                budget=record)
    return Compressed(new_model, plan)


def _decide(site: LayerSite, eligible: tuple[str | None, str], rule: RankRule, replay: Plan | None,
            budget: budget_plan.BudgetChoice | None, spectra_of: Callable[[LayerSite], _Spectra],
            round_to: int | None, opts: MethodOptions
            ) -> LayerPlan | tuple[LayerSite, str, list[int], str, list[list[int]] | None]:
    """One layer's decision: a kept `LayerPlan`, or (site, method, ranks, reason, TT modes) to factor."""
    modes = None
    method, why = eligible
    m = site.module
    if method is None:
        return _kept(site, why)
    if replay is not None:
        planned = replay.layer(site.name)
        source = str(rule.path) if rule.path else "the given plan"
        if planned is None or planned.decision != "decomposed":
            return _kept(site, f"kept in {source}" if planned else f"not in {source}")
        check_layer_fits(planned, m, source=source)
        method, ranks, reason = planned.method, list(planned.ranks), f"replayed from {source}"
        modes = planned.modes
    elif budget is not None:
        ranks, reason = budget.ranks(site.name), f"budget {rule.text}"
        if ranks is None:
            return _kept(site, budget.kept_reason(site.name))
    else:
        try:
            ranks, modes, note = _resolve_ranks(method, m.weight.detach(), rule, spectra_of(site), round_to, opts)
        except UsageError as err:
            raise UsageError(f"{site.name} {tuple(m.weight.shape)}: {err}") from err
        reason = f"rank rule {rule.text}{note}"
    if method == "reorder":
        storage = reorder_storage_ratio(m.weight.numel(), *ranks)
        if storage >= 1:
            return _kept(site, f"no storage saving at g={ranks[0]}, t={ranks[1]} ({storage:.2f} of dense)",
                         method, ranks)
        return site, method, ranks, reason, modes
    before = site_cost(site, [m])
    with torch.device("meta"):  # shapes only: a general-TT or HT-2 chain need not allocate to be counted
        chain = L.structure_for(method, m, ranks, modes=modes)
    after = site_cost(site, chain)
    if not (after[0] < before[0] and after[1] < before[1]):
        return _kept(site, f"no parameter and MAC saving at ranks {ranks}", method, ranks)
    return site, method, ranks, reason, modes


def survey(model: nn.Module, *, format: str = "tucker", input_shape: Sequence[int] = (3, 224, 224),
           model_name: str = "custom") -> Plan:
    """Describe a dense model as a plan whose layers are all kept.

    Each reason says what ``format`` would do (``eligible for tucker2``) or why the layer would stay dense.
    """
    fmt = normalise_format(format)
    model, _ = with_explicit_attention(model)
    sites = profile_layers(model, input_shape)
    stem, classifier = _ends(sites)
    entries = []
    for site in sites:
        method, why = _eligibility(site, fmt, stem, classifier, (), (), False, False)
        entries.append(_kept(site, f"eligible for {method}" if method else why))
    return Plan(model_name, fmt, "", list(input_shape), entries, _totals(model, model, entries))
