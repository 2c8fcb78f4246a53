"""Compression plans as data: per-layer decisions, their validation, and `apply_plan`.

Each layer's entry holds its method, ranks, reason, cost and error; `apply_plan` rebuilds the compressed
architecture from a plan. A plan is plain data and round-trips through plan.json; modules are never
pickled. A plan read from disk is untrusted (edited by hand, truncated, from another version):
`Plan.from_dict` checks its schema and every field's type, and `apply_plan` / `check_layer_fits` check
each layer's method and ranks against the real layer before anything is allocated, raising `UsageError`
(exit 2) that names the layer and the field. Deciding and factorizing live in `tdexport.planner`.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from . import layers as L
from .errors import UsageError
from .methods import LAYER_TYPES, METHODS, allowed_methods, check_layer_fits, factorable

__all__ = [
    "FORMATS",
    "METHODS",
    "PLAN_SCHEMA_VERSION",
    "LayerPlan",
    "Plan",
    "Compressed",
    "normalise_format",
    "allowed_methods",
    "check_layer_fits",
    "factorable",
    "module_aliases",
    "set_submodule",
    "apply_plan",
]

PLAN_SCHEMA_VERSION = 1
FORMATS = {"tucker": "tucker2", "tucker2": "tucker2", "tk": "tucker2", "tt": "tt", "cp": "cp", "svd": "svd",
           "ht2": "ht2", "ttg": "ttg", "reorder": "reorder"}
# Formats a whole model can be compressed in (a plan's ``format``); tucker1 is a per-layer method only.
FORMAT_NAMES = ("tucker2", "tt", "cp", "svd", "ht2", "ttg", "reorder")
DECISIONS = ("decomposed", "kept")


def normalise_format(name: str) -> str:
    """Canonical format name (tucker2, tt, cp, svd, ht2, ttg, reorder) for a user spelling, else `UsageError`."""
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise UsageError(f"unknown format '{name}'; choose one of: tucker (tucker2, tk), tt, cp, svd, ht2, ttg "
                         "(tt --tt-type general), reorder") from None


@dataclass
class LayerPlan:
    """The decision for one Conv2d / Linear layer.

    Attributes:
        name: dotted module name in the model (the first name when the module is registered under several).
        type: ``Conv2d`` or ``Linear``.
        shape: weight shape, (O, I, kh, kw) or (O, I).
        method: ``tucker2``, ``tt``, ``cp``, ``svd``, or None when kept.
        ranks: ranks of the method ((R_out, R_in), (R,) or (r,)); empty when kept without a method.
        decision: ``decomposed`` or ``kept``.
        reason: why (rank rule for decomposed layers, the exclusion for kept ones).
        params_before, params_after: weights + biases of the layer / its replacement.
        macs_before, macs_after: multiply-accumulates per sample at the model's input resolution, summed
            over every call of the layer in one forward pass.
        rel_error: ‖W − Ŵ‖_F / ‖W‖_F of the factorization, None when kept or planned without factorizing
            (`tdexport.planner.compress` with ``plan_only``).
        in_hw: input (H, W) of a conv at its first call; None for Linear.
        tokens: rows a Linear sees per sample (1 for classifiers).
        dense_ms, chain_ms: measured time per call of the dense layer and of its factor chain at ``ranks`` on
            the plan's target (``options["target"]``), in ms; None without a target.
        modes: general TT (``ttg``) only: [[i_1…i_n], [o_1…o_m]], the channel mode sizes (∏ = I, ∏ = O).
        storage_ratio: reorder only: stored bits (coefficients + bit-packed permutation) over the dense
            layer's bits; params/MACs do not show this saving (the layer runs dense after export).
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
    dense_ms: float | None = None
    chain_ms: float | None = None
    modes: list[list[int]] | None = None
    storage_ratio: float | None = None


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
        schema_version: version of this layout; a newer one than this tdexport knows is refused.
        budget: a budget rule's ``rule``, ``metric``, ``target`` and ``predicted`` / ``achieved`` reductions.
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
    budget: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the plan.json keys (``budget`` only for budget rules)."""
        return {k: v for k, v in asdict(self).items() if k != "budget" or v is not None}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "plan") -> Plan:
        """Inverse of `to_dict`, validating the schema version and every field's type.

        Args:
            data: the parsed plan.json.
            source: where it came from (a path), for messages.

        Raises:
            UsageError: a missing, unknown or mistyped key, a schema version this tdexport does not know,
                a method that does not exist, or a decomposed layer without method or ranks; the message
                names the layer and the field.
        """
        if not isinstance(data, dict):
            raise UsageError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version", PLAN_SCHEMA_VERSION)
        if not _is_int(version) or not 1 <= version <= PLAN_SCHEMA_VERSION:
            raise UsageError(f"{source}: schema_version {version!r} is not one this tdexport reads "
                             f"(1..{PLAN_SCHEMA_VERSION}); upgrade tdexport or re-create the plan")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)}; a plan has {', '.join(sorted(known))}")
        for key in ("model", "format", "rank_rule", "input_shape", "layers", "totals"):
            if key not in data:
                raise UsageError(f"{source}: missing key '{key}'")
        _expect(isinstance(data["model"], str) and data["model"], source, "model", "a model name")
        _expect(data["format"] in FORMAT_NAMES, source, "format", f"one of {', '.join(FORMAT_NAMES)}")
        _expect(isinstance(data["rank_rule"], str), source, "rank_rule", "a string")
        _expect(_int_list(data["input_shape"], 3, minimum=1), source, "input_shape", "[C, H, W], positive integers")
        _expect(isinstance(data["totals"], dict) and all(_is_int(v) and v >= 0 for v in data["totals"].values()),
                source, "totals", "an object of non-negative integers")
        classes = data.get("num_classes")
        _expect(classes is None or (_is_int(classes) and classes >= 1), source, "num_classes",
                "a positive integer or null")
        _expect(isinstance(data.get("options", {}), dict), source, "options", "an object")
        _expect(isinstance(data["layers"], list), source, "layers", "a list")
        _check_budget(data.get("budget"), source)
        layers = [_layer_from_dict(entry, source, i) for i, entry in enumerate(data["layers"])]
        names = [entry.name for entry in layers]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise UsageError(f"{source}: layer '{duplicate}' appears more than once")
        return cls(model=data["model"], format=data["format"], rank_rule=data["rank_rule"],
                   input_shape=list(data["input_shape"]), layers=layers, totals=dict(data["totals"]),
                   num_classes=classes, options=dict(data.get("options", {})), schema_version=int(version),
                   budget=data.get("budget"))

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        """Load and validate a plan.json, raising `UsageError` (exit 2) for a missing, unreadable or invalid file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"plan not found: {path}") from None
        except (OSError, ValueError) as err:
            raise UsageError(f"cannot read plan {path}: {err}") from err
        return cls.from_dict(data, source=str(path))

    def layer(self, name: str) -> LayerPlan | None:
        """The entry for a layer name, or None."""
        return next((entry for entry in self.layers if entry.name == name), None)


@dataclass
class Compressed:
    """Result of `tdexport.planner.compress`: the factorized model (a new module) and its plan."""

    model: nn.Module
    plan: Plan


# ---------------------------------------------------------------------------------------------- validation


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_list(value: Any, length: int | tuple[int, ...] | None = None, *, minimum: int = 0) -> bool:
    lengths = (length,) if isinstance(length, int) else length
    return (isinstance(value, list) and (lengths is None or len(value) in lengths)
            and all(_is_int(v) and v >= minimum for v in value))


def _expect(ok: bool, source: str, where: str, what: str) -> None:
    if not ok:
        raise UsageError(f"{source}: {where} must be {what}")


def _check_budget(budget: Any, source: str) -> None:
    ok = budget is None or (isinstance(budget, dict) and isinstance(budget.get("rule"), str)
                            and budget.get("metric") in ("params", "macs", "latency")
                            and all(_is_number(budget.get(k)) or (k != "target" and budget.get(k) is None)
                                    for k in ("target", "predicted", "achieved")))
    _expect(ok, source, "budget", "null or an object with 'rule', 'metric' (params, macs or latency), 'target' "
            "and 'predicted' / 'achieved' (positive numbers or null)")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _layer_from_dict(entry: Any, source: str, index: int) -> LayerPlan:
    if not isinstance(entry, dict):
        raise UsageError(f"{source}: layers[{index}] must be an object")
    name = entry.get("name")
    where = f"layer '{name}'" if isinstance(name, str) and name else f"layers[{index}]"
    _expect(isinstance(name, str) and bool(name), source, f"layers[{index}] field 'name'", "a dotted layer name")
    known = {f.name for f in fields(LayerPlan)}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise UsageError(f"{source}: {where}: unknown field(s) {', '.join(unknown)}")
    required = [f.name for f in fields(LayerPlan) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in entry]
    if missing:
        raise UsageError(f"{source}: {where}: missing field(s) {', '.join(missing)}")
    checks = {
        "type": (entry["type"] in LAYER_TYPES, f"one of {', '.join(LAYER_TYPES)}"),
        "shape": (_int_list(entry["shape"], (2, 4), minimum=1), "a list of 2 or 4 positive integers"),
        "method": (entry["method"] is None or entry["method"] in METHODS, f"null or one of {', '.join(METHODS)}"),
        "ranks": (_int_list(entry["ranks"], minimum=1), "a list of positive integers"),
        "decision": (entry["decision"] in DECISIONS, f"one of {', '.join(DECISIONS)}"),
        "reason": (isinstance(entry["reason"], str), "a string"),
        "rel_error": (entry.get("rel_error") is None or (isinstance(entry["rel_error"], (int, float))
                                                         and not isinstance(entry["rel_error"], bool)),
                      "a number or null"),
        "in_hw": (entry.get("in_hw") is None or _int_list(entry["in_hw"], 2, minimum=1),
                  "null or [H, W], positive integers"),
        "tokens": (_is_int(entry.get("tokens", 1)) and entry.get("tokens", 1) >= 1, "a positive integer"),
    }
    modes = entry.get("modes")
    checks["modes"] = (modes is None or (isinstance(modes, list) and len(modes) == 2
                                         and all(_int_list(side, minimum=1) and side for side in modes)),
                       "null or [[i_1, …], [o_1, …]], positive integers")
    for key in ("dense_ms", "chain_ms", "storage_ratio"):
        checks[key] = (entry.get(key) is None or _is_number(entry[key]), "a positive number or null")
    for key in ("params_before", "params_after", "macs_before", "macs_after"):
        checks[key] = (_is_int(entry[key]) and entry[key] >= 0, "a non-negative integer")
    for key, (ok, what) in checks.items():
        _expect(ok, source, f"{where} field '{key}'", what)
    if entry["decision"] == "decomposed" and (entry["method"] is None or not entry["ranks"]):
        raise UsageError(f"{source}: {where}: a decomposed layer needs a 'method' and 'ranks'")
    if entry["decision"] == "decomposed" and entry["method"] == "ttg" and modes is None:
        raise UsageError(f"{source}: {where}: a general-TT (ttg) layer needs 'modes'")
    return LayerPlan(**entry)


# ---------------------------------------------------------------------------------------------- applying


def module_aliases(model: nn.Module) -> dict[int, list[str]]:
    """Every dotted name of every module, keyed by ``id(module)``, in registration order.

    A module registered under two names (weight sharing) must be replaced under both, or the model would
    keep running the dense layer through the second name.
    """
    aliases: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        aliases.setdefault(id(module), []).append(name)
    return aliases


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted ``name`` with ``new``."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def apply_plan(model: nn.Module, plan: Plan, *, source: str = "plan") -> nn.Module:
    """Rebuild the compressed architecture of ``plan`` on a copy of ``model`` (same dense architecture).

    Every decomposed entry is checked against the layer it replaces first (`check_layer_fits`), so an edited
    or corrupt plan fails with the layer and field named instead of allocating arbitrary widths. The
    factorized layers are created with placeholder weights; load the checkpoint's state dict into the result.

    Raises:
        UsageError: a planned layer is missing from the model or does not fit its entry.
    """
    import copy

    new_model = copy.deepcopy(model)
    if any(isinstance(m, nn.MultiheadAttention) for m in new_model.modules()):
        from .attention import explicit_attention

        explicit_attention(new_model)  # as `tdexport.planner.compress` did before naming the layers
    aliases = module_aliases(new_model)
    replaced = []
    for entry in plan.layers:
        if entry.decision != "decomposed":
            continue
        try:
            layer = new_model.get_submodule(entry.name)
        except AttributeError:
            raise UsageError(f"{source}: layer '{entry.name}' does not exist in model {plan.model}") from None
        check_layer_fits(entry, layer, source=source)
        replaced.append((entry, layer))
    for entry, layer in replaced:
        chain = L.structure_for(entry.method, layer, entry.ranks, modes=entry.modes)
        for name in aliases.get(id(layer), [entry.name]):
            set_submodule(new_model, name, chain)
    return new_model


_MOVED_TO_PLANNER = ("compress", "survey", "profile_layers", "LayerSite")


def __getattr__(name: str) -> Any:
    """Keep ``from tdexport.plan import compress`` working: deciding and factorizing moved to `tdexport.planner`."""
    if name in _MOVED_TO_PLANNER:
        from . import planner

        return getattr(planner, name)
    raise AttributeError(f"module 'tdexport.plan' has no attribute {name!r}")
