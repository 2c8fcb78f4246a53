"""Compression plans: per-layer decisions (method, ranks, reason, cost, error) and their application.

`compress` decides and factorizes; `apply_plan` rebuilds the compressed architecture from a plan
on a fresh model (weights come from the checkpoint). A plan is plain data and round-trips through
plan.json; modules are never pickled.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import layers as L
from .errors import DecompositionError, UsageError
from .factor._spectral import Spectrum, mode_spectrum, row_spectrum, unfold
from .factor.cp import cp_als
from .factor.svd import truncated_svd
from .factor.tt import tt_conv
from .factor.tucker import tucker2
from .ranks import RankRule, mode_rank, parse_rank_rule

__all__ = [
    "FORMATS",
    "LayerPlan",
    "Plan",
    "Compressed",
    "LayerSite",
    "normalise_format",
    "profile_layers",
    "compress",
    "survey",
    "apply_plan",
]

PLAN_SCHEMA_VERSION = 1
FORMATS = {"tucker": "tucker2", "tucker2": "tucker2", "tk": "tucker2", "tt": "tt", "cp": "cp", "svd": "svd"}


def normalise_format(name: str) -> str:
    """Canonical format name (``tucker2``, ``tt``, ``cp`` or ``svd``) for a user spelling, else `UsageError`."""
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise UsageError(f"unknown format '{name}'; choose one of: tucker (tucker2, tk), tt, cp, svd") from None


@dataclass
class LayerPlan:
    """The decision for one Conv2d / Linear layer.

    Attributes:
        name: dotted module name in the model.
        type: ``Conv2d`` or ``Linear``.
        shape: weight shape, (O, I, kh, kw) or (O, I).
        method: ``tucker2``, ``tt``, ``cp``, ``svd``, or None when kept.
        ranks: ranks of the method ((R_out, R_in), (R,) or (r,)); empty when kept without a method.
        decision: ``decomposed`` or ``kept``.
        reason: why (rank rule for decomposed layers, the exclusion for kept ones).
        params_before, params_after: weights + biases of the layer / its replacement.
        macs_before, macs_after: multiply-accumulates per sample at the model's input resolution.
        rel_error: ‖W − Ŵ‖_F / ‖W‖_F of the factorization, None when kept.
        in_hw: input (H, W) of a conv; None for Linear.
        tokens: rows a Linear sees per sample (1 for classifiers).
    """

    name: str
    type: str
    shape: list[int]
    method: str | None
    ranks: list[int]
    decision: str
    reason: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    rel_error: float | None = None
    in_hw: list[int] | None = None
    tokens: int = 1


@dataclass
class Plan:
    """A whole-model plan, as written to plan.json.

    Attributes:
        model: zoo name of the dense model (used by `tdexport.load` to rebuild it).
        format: canonical format (``tucker2``, ``tt``, ``cp``, ``svd``).
        rank_rule: the rank rule text.
        input_shape: (C, H, W) at which MACs were counted.
        layers: one `LayerPlan` per Conv2d / Linear executed in forward order.
        totals: whole-model ``params_before/after`` and ``macs_before/after`` (conv + linear MACs).
        num_classes: classifier width of the model.
        options: the remaining settings (round_to, globs, iters, ...), for reproduction.
    """

    model: str
    format: str
    rank_rule: str
    input_shape: list[int]
    layers: list[LayerPlan]
    totals: dict[str, int]
    num_classes: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    schema_version: int = PLAN_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the plan.json keys."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Inverse of `to_dict`; raises `UsageError` when required keys are missing."""
        try:
            layers = [LayerPlan(**entry) for entry in data["layers"]]
            fields = {k: data[k] for k in ("model", "format", "rank_rule", "input_shape", "totals")}
        except (KeyError, TypeError) as err:
            raise UsageError(f"plan is malformed: {err}") from err
        extra = {k: data[k] for k in ("num_classes", "options", "schema_version") if k in data}
        return cls(layers=layers, **fields, **extra)

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        """Load a plan.json, raising `UsageError` (exit 2) for a missing or unreadable file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"plan not found: {path}") from None
        except (OSError, ValueError) as err:
            raise UsageError(f"cannot read plan {path}: {err}") from err
        return cls.from_dict(data)

    def layer(self, name: str) -> LayerPlan | None:
        """The entry for a layer name, or None."""
        return next((entry for entry in self.layers if entry.name == name), None)


@dataclass
class Compressed:
    """Result of `compress`: the factorized model (a new module) and its plan."""

    model: nn.Module
    plan: Plan


@dataclass
class LayerSite:
    """Where a Conv2d / Linear sits in a forward pass: input size, token count, call order."""

    name: str
    module: nn.Module
    in_hw: tuple[int, int] | None
    tokens: int
    calls: int = 1


def profile_layers(model: nn.Module, input_shape: Sequence[int]) -> list[LayerSite]:
    """Run one sample of shape (C, H, W) through ``model`` and record every Conv2d / Linear it executes.

    Returns:
        Sites in execution order (layers never executed, e.g. auxiliary heads in eval, are absent).
    """
    sites: dict[int, LayerSite] = {}
    names = {id(m): n for n, m in model.named_modules()}
    hooks = []

    def record(module: nn.Module, inputs: tuple, _out: Any) -> None:
        x = inputs[0]
        site = sites.get(id(module))
        if site is not None:
            site.calls += 1
            return
        if isinstance(module, nn.Conv2d):
            sites[id(module)] = LayerSite(names[id(module)], module, (int(x.shape[-2]), int(x.shape[-1])), 1)
        else:
            sites[id(module)] = LayerSite(names[id(module)], module, None, int(x.numel() // x.shape[-1]))

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(record))
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return list(sites.values())


def _site_cost(site: LayerSite, chain: Sequence[nn.Module]) -> tuple[int, int]:
    params, macs = L.chain_cost(chain, in_hw=site.in_hw, tokens=site.tokens)
    return params, macs * site.calls


def _method_for(module: nn.Module, fmt: str) -> tuple[str | None, str]:
    """Method a layer gets under a format, or (None, reason it is kept)."""
    if isinstance(module, nn.Linear):
        return "svd", ""
    if module.groups > 1:
        kind = "depthwise" if module.groups == module.in_channels else "grouped"
        return None, f"{kind} conv (groups={module.groups})"
    if module.padding_mode != "zeros":
        return None, f"padding_mode '{module.padding_mode}'"
    if module.kernel_size == (1, 1):
        return "svd", ""
    if fmt == "svd":
        return None, "the svd format factors only 1×1 convs and Linear layers"
    return fmt, ""


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


def _resolve_ranks(method: str, weight: torch.Tensor, rule: RankRule, spectra: _Spectra,
                   round_to: int | None) -> list[int]:
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
    if method == "cp":
        f = cp_als(weight, ranks[0], iters=cp_iters, generator=torch.Generator().manual_seed(0))
        return L.load_cp(seq, module, f), f.rel_error(weight)
    matrix = L.weight_matrix_of(weight)
    f = truncated_svd(matrix, ranks[0], spectrum=spectra.matrix())
    return L.load_svd(seq, module, f), f.rel_error(matrix)


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _kept(site: LayerSite, reason: str, method: str | None = None, ranks: Sequence[int] = ()) -> LayerPlan:
    params, macs = _site_cost(site, [site.module])
    return LayerPlan(site.name, type(site.module).__name__, list(site.module.weight.shape), method,
                     list(ranks), "kept", reason, params, params, macs, macs, None,
                     list(site.in_hw) if site.in_hw else None, site.tokens)


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
    round_to: int | None = None,
    layers: Sequence[str] = (),
    exclude: Sequence[str] = (),
    include_stem: bool = False,
    include_classifier: bool = False,
    iters: int = 5,
    cp_iters: int = 100,
    progress: Callable[[Sequence[Any]], Any] | None = None,
) -> Compressed:
    """Decide per layer how to factor ``model``, factor it, and return a new compressed model.

    The input model is not modified. Layers are kept dense, with the reason recorded, when they are
    grouped/depthwise, the stem or the classifier (unless included), outside ``layers`` globs,
    inside ``exclude`` globs, or when the chosen ranks would not cut both parameters and MACs.

    Args:
        model: dense network (Conv2d / Linear layers are considered).
        format: ``tucker`` (``tucker2``/``tk``), ``tt`` (TDC's 3-core TT of (O, kh·kw, I)), ``cp`` or ``svd``.
        rank: a rank rule string (see `tdexport.ranks`), a parsed `RankRule`, or a `Plan` to replay.
        input_shape: (C, H, W) of one input sample, the resolution MACs are counted at.
        model_name: zoo name recorded in the plan, so `tdexport.load` can rebuild the model.
        num_classes: classifier width recorded in the plan.
        round_to: round every rank up to a multiple of this (never above the mode size).
        layers: only layers whose dotted name matches one of these globs are considered.
        exclude: layers whose name matches one of these globs are kept.
        include_stem: also factor the first conv executed.
        include_classifier: also factor the last layer executed.
        iters: maximum HOOI sweeps after the HOSVD start (Tucker-2).
        cp_iters: ALS iterations (CP).
        progress: optional wrapper for the per-layer loop, e.g. ``tqdm``.

    Returns:
        `Compressed` with the new model and its `Plan`.
    """
    fmt = normalise_format(format)
    if isinstance(rank, Plan):
        replay, rule = rank, RankRule("plan", 0.0, None, "plan")
    else:
        rule = parse_rank_rule(rank) if isinstance(rank, str) else rank
        replay = Plan.read(rule.path) if rule.kind == "plan" else None
    sites = profile_layers(model, input_shape)
    if not sites:
        raise UsageError("the model has no Conv2d or Linear layer to factor")
    stem, classifier = _ends(sites)
    new_model = copy.deepcopy(model)
    entries: list[LayerPlan] = []
    loop = progress(sites) if progress else sites
    for site in loop:
        m = site.module
        method, why = _eligibility(site, fmt, stem, classifier, layers, exclude, include_stem,
                                   include_classifier)
        if method is None:
            entries.append(_kept(site, why))
            continue
        spectra = _Spectra(m.weight.detach())
        if replay is not None:
            planned = replay.layer(site.name)
            source = rule.path or "the given plan"
            if planned is None or planned.decision != "decomposed":
                entries.append(_kept(site, f"kept in {source}" if planned else f"not in {source}"))
                continue
            method, ranks = planned.method, list(planned.ranks)
            _check_replayed(site, method, ranks)
            reason = f"replayed from {source}"
        else:
            try:
                ranks = _resolve_ranks(method, m.weight.detach(), rule, spectra, round_to)
            except UsageError as err:
                raise UsageError(f"{site.name} {tuple(m.weight.shape)}: {err}") from err
            reason = f"rank rule {rule.text}"
        before = _site_cost(site, [m])
        after = _site_cost(site, L.structure_for(method, m, ranks))
        if not (after[0] < before[0] and after[1] < before[1]):
            entries.append(_kept(site, f"no parameter and MAC saving at ranks {ranks}", method, ranks))
            continue
        try:
            seq, err = _decompose(method, m, ranks, spectra, iters=iters, cp_iters=cp_iters)
        except DecompositionError as exc:
            raise DecompositionError(f"{site.name} {tuple(m.weight.shape)}: {exc}") from exc
        _set_submodule(new_model, site.name, seq)
        entries.append(LayerPlan(site.name, type(m).__name__, list(m.weight.shape), method, ranks,
                                 "decomposed", reason, before[0], after[0], before[1], after[1],
                                 float(err), list(site.in_hw) if site.in_hw else None, site.tokens))
    options = {"round_to": round_to, "layers": list(layers), "exclude": list(exclude),
               "include_stem": include_stem, "include_classifier": include_classifier,
               "iters": iters, "cp_iters": cp_iters}
    plan = Plan(model_name, fmt, rule.text, list(input_shape), entries, _totals(model, new_model, entries),
                num_classes, options)
    return Compressed(new_model, plan)


def _eligibility(site: LayerSite, fmt: str, stem: str | None, classifier: str, layers: Sequence[str],
                 exclude: Sequence[str], include_stem: bool, include_classifier: bool) -> tuple[str | None, str]:
    """The method a layer would get, or (None, the reason it stays dense)."""
    if layers and not any(fnmatch.fnmatchcase(site.name, g) for g in layers):
        return None, "not matched by --layers"
    hit = next((g for g in exclude if fnmatch.fnmatchcase(site.name, g)), None)
    if hit:
        return None, f"excluded by --exclude {hit}"
    if site.name == stem and not include_stem:
        return None, "stem (first conv); use --include-stem to factor it"
    if site.name == classifier and not include_classifier:
        return None, "classifier (last layer); use --include-classifier to factor it"
    return _method_for(site.module, fmt)


def _ends(sites: list[LayerSite]) -> tuple[str | None, str]:
    stem = next((s.name for s in sites if isinstance(s.module, nn.Conv2d)), None)
    return stem, sites[-1].name


def survey(model: nn.Module, *, format: str = "tucker", input_shape: Sequence[int] = (3, 224, 224),
           model_name: str = "custom") -> Plan:
    """Describe a dense model as a plan whose layers are all kept.

    Each reason says what ``format`` would do (``eligible for tucker2``) or why the layer would stay dense.
    """
    fmt = normalise_format(format)
    sites = profile_layers(model, input_shape)
    stem, classifier = _ends(sites)
    entries = []
    for site in sites:
        method, why = _eligibility(site, fmt, stem, classifier, (), (), False, False)
        entries.append(_kept(site, f"eligible for {method}" if method else why))
    return Plan(model_name, fmt, "", list(input_shape), entries, _totals(model, model, entries))


def _check_replayed(site: LayerSite, method: str | None, ranks: list[int]) -> None:
    m = site.module
    allowed = {"svd"} if isinstance(m, nn.Linear) or m.kernel_size == (1, 1) else {"tucker2", "tt", "cp"}
    if method not in allowed:
        raise UsageError(f"plan asks for method '{method}' on {site.name} ({type(m).__name__} "
                         f"{tuple(m.weight.shape)}); allowed: {', '.join(sorted(allowed))}")
    w = m.weight
    limits = {"tucker2": [w.shape[0], w.shape[1]], "tt": [w.shape[0], w.shape[1]], "cp": [math.inf],
              "svd": [min(w.shape[0], w[0].numel())]}[method]
    if len(ranks) != len(limits) or any(not 1 <= r <= lim for r, lim in zip(ranks, limits, strict=True)):
        raise UsageError(f"plan ranks {ranks} do not fit {site.name} {tuple(w.shape)} with {method}")


def apply_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Rebuild the compressed architecture of ``plan`` on a copy of ``model`` (same dense architecture).

    The factorized layers are created with placeholder weights; load the checkpoint's state dict
    into the result. Raises `UsageError` when a planned layer is missing or has another shape.
    """
    new_model = copy.deepcopy(model)
    for entry in plan.layers:
        if entry.decision != "decomposed":
            continue
        try:
            layer = new_model.get_submodule(entry.name)
        except AttributeError:
            raise UsageError(f"plan layer {entry.name} does not exist in model {plan.model}") from None
        if list(layer.weight.shape) != list(entry.shape):
            raise UsageError(f"plan layer {entry.name} has shape {entry.shape} but the model's is "
                             f"{list(layer.weight.shape)}")
        _set_submodule(new_model, entry.name, L.structure_for(entry.method, layer, entry.ranks))
    return new_model
