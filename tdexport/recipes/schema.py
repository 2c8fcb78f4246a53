"""The recipe schema: every key a recipe may hold, its type, default and the values it accepts.

`resolve` checks a merged recipe mapping (after ``extends`` and command-line overrides) against the schema
and returns it with every optional key filled with its default. A violation raises `SchemaError` carrying
the dotted key (``finetune.lr``), the problem and what is accepted; `tdexport.recipes.load` turns it into
a `UsageError` (exit 2) naming the file the key came from.

The schema is the contract with ``recipes/*.yaml`` (see the package docstring of `tdexport.recipes` for the
choices it leaves open); the tables here are its executable form.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any

from .checks import (
    RANK_RULE,
    ROUND_TO,
    TARGET,
    TT_SHAPE_ITEM,
    Check,
    SchemaError,
    _describe,
    _is_int,
    boolean,
    enum,
    integer,
    list_of,
    nullable,
    number,
    string,
)

__all__ = ["resolve", "SECTIONS", "TOP_LEVEL", "FORMATS", "SEEDS", "DATASETS", "TRAIN_EXTRA"]

SEEDS = ("tdc", "reordering", "vbmf", "ht2", "svt", "embedded")
DATASETS = ("digits", "cifar10", "cifar100", "imagenet", "folder")
#: ``none`` is the dense baseline a seed compares against: no layer is factored (rank, ranks and ADMM refused).
FORMATS = ("none", "tucker", "tt", "cp", "svd", "ht2", "reorder")
TT_TYPES = ("special", "general")
SCHEDULES = ("onecycle", "cosine", "step")
DISTILL = ("hard", "soft")
PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt", "torch")


# ---------------------------------------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Key:
    """One key of a section: its check, default, and whether it must be present after merging."""

    check: Check
    default: Any = None
    required: bool = False


def _train_keys(shown: Mapping[str, Any]) -> dict[str, Key]:
    """Every `TrainConfig` field as a key; ``shown`` are the schema's defaults, the rest TrainConfig's own."""
    from ..train.config import TrainConfig

    specific = {
        "epochs": integer(1), "batch_size": integer(1), "lr": number(0, open_low=True), "momentum": number(0, high=1),
        "nesterov": boolean(), "weight_decay": number(0), "sched": enum(*SCHEDULES), "warmup_epochs": number(0),
        "decay_epochs": number(0, open_low=True), "decay_rate": number(0, open_low=True), "min_lr": number(0),
        "label_smoothing": number(0, high=1, open_high=True), "mixup": number(0), "cutmix": number(0),
        "seed": integer(), "workers": integer(0), "device": string(), "amp": boolean(), "channels_last": boolean(),
        "distill": nullable(enum(*DISTILL)), "alpha": number(0, high=1), "tau": number(0, open_low=True),
    }
    keys = {}
    for f in fields(TrainConfig):
        check = specific.get(f.name)
        if check is None:  # a field added to TrainConfig later: typed from its default
            check = boolean() if isinstance(f.default, bool) else integer() if _is_int(f.default) else \
                number() if isinstance(f.default, float) else nullable(string())
        default = shown.get(f.name, f.default if f.default is not MISSING else None)
        keys[f.name] = Key(check, default)
    return keys


#: finetune-only keys beyond TrainConfig, and admm-only ones.
TRAIN_EXTRA = {"finetune": ("optimizer", "devices"), "admm": ("rho", "rho_final", "every")}

SECTIONS: dict[str, dict[str, Key]] = {
    "source": {
        "seed": Key(enum(*SEEDS), required=True),
        "paper": Key(string(), required=True),
        "table": Key(nullable(string())),
    },
    "model": {
        "name": Key(string(), required=True),
        "weights": Key(string(), "default"),
        "num_classes": Key(nullable(integer(1))),
    },
    "data": {
        "dataset": Key(enum(*DATASETS), required=True),
        "root": Key(nullable(string())),
    },
    "compression": {
        "format": Key(enum(*FORMATS), required=True),
        "rank": Key(RANK_RULE),  # required unless format is reorder or ranks is given (see _cross_checks)
        "ranks": Key(Check("a mapping {layer name or glob: [rank, ...]}", lambda v: v), {}),
        "tt_type": Key(enum(*TT_TYPES), "special"),
        "tt_shape": Key(list_of(TT_SHAPE_ITEM), []),
        "groups": Key(integer(1), 4),
        "coef_ratio": Key(number(0), 0.25),
        "progressive": Key(boolean(), False),
        "progressive_ref": Key(number(0, open_low=True), 64.0),
        "stem_method": Key(nullable(enum("tucker1"))),
        "layers": Key(list_of(string()), []),
        "exclude": Key(list_of(string()), []),
        "include_stem": Key(boolean(), False),
        "include_classifier": Key(boolean(), False),
        "round_to": Key(ROUND_TO),
        "target": Key(TARGET),
    },
    "admm": {
        **_train_keys({"epochs": 30, "lr": 0.01, "sched": "step"}),
        "rho": Key(number(0, open_low=True), 0.001),
        "rho_final": Key(nullable(number(0, open_low=True))),
        "every": Key(integer(1), 100),
    },
    "finetune": {
        **_train_keys({"epochs": 90, "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0005,
                       "sched": "cosine", "warmup_epochs": 0.0, "batch_size": 128, "label_smoothing": 0.0,
                       "mixup": 0.0, "cutmix": 0.0, "distill": None, "alpha": 0.5, "tau": 4.0}),
        "optimizer": Key(enum("sgd"), "sgd"),
        "devices": Key(integer(1), 1),
    },
    "export": {
        "precision": Key(list_of(enum(*PRECISIONS), nonempty=True), ["fp32"]),
        "backends": Key(list_of(enum(*BACKENDS), nonempty=True), ["ort-cpu"]),
        "batch_sizes": Key(list_of(integer(1), nonempty=True), [1, 32]),
        "engines": Key(boolean(), False),
    },
    "validate": {
        "max_acc_drop": Key(nullable(number())),
        "min_speedup": Key(nullable(number(0, open_low=True))),
        "max_parity_err": Key(nullable(number(0)), 0.0001),
    },
    "published": {
        "top1": Key(nullable(number(0, high=100))),
        "top5": Key(nullable(number(0, high=100))),
        "baseline_top1": Key(nullable(number(0, high=100))),
        "params_ratio": Key(nullable(number(0, open_low=True))),
        "macs_ratio": Key(nullable(number(0, open_low=True))),
        "storage_ratio": Key(nullable(number(0, open_low=True))),
        # Absolute counts as papers print them (millions): the reordering seed counts its int32 permutation
        # index in the total and only the DCT coefficients as trainable.
        "params_millions": Key(nullable(number(0, open_low=True))),
        "trainable_millions": Key(nullable(number(0, open_low=True))),
        "note": Key(nullable(string())),
    },
}

#: Top-level keys: (kind, required). kind "section" is a mapping of SECTIONS[key]; "stage" a section or null.
TOP_LEVEL: dict[str, tuple[str, bool]] = {
    "extends": ("name", False), "description": ("text", True), "source": ("section", True),
    "model": ("section", True), "data": ("section", True), "compression": ("section", True),
    "admm": ("stage", False), "finetune": ("stage", False), "export": ("section", False),
    "validate": ("section", False), "published": ("section", True),
}


def _unknown(path: str, key: Any, accepted: list[str]) -> SchemaError:
    close = difflib.get_close_matches(str(key), accepted, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return SchemaError(f"{path}.{key}" if path else str(key), f"unknown key{hint}", "keys " + ", ".join(accepted))


def _section(name: str, value: Any, missing: list[str]) -> dict[str, Any]:
    keys = SECTIONS[name]
    if not isinstance(value, Mapping):
        raise SchemaError(name, f"got {_describe(value)}", "a mapping with keys " + ", ".join(keys))
    for k in value:
        if k not in keys:
            raise _unknown(name, k, list(keys))
    out = {}
    for k, key in keys.items():
        path = f"{name}.{k}"
        if k in value:
            out[k] = key.check(value[k], path)
        else:
            if key.required:
                missing.append(path)
            out[k] = _copy(key.default)
    return out


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value


def _explicit_ranks(value: Any) -> dict[str, list[int]]:
    path = "compression.ranks"
    accepts = "a mapping {dotted layer name or glob: [rank, ...]} with integer ranks ≥ 1"
    if not isinstance(value, Mapping):
        raise SchemaError(path, f"got {_describe(value)}", accepts)
    out = {}
    for glob, ranks in value.items():
        where = f"{path}.{glob}"
        if not isinstance(glob, str) or not glob.strip():
            raise SchemaError(path, f"key {glob!r} is not a layer name or glob", accepts)
        if not isinstance(ranks, list) or not ranks or not all(_is_int(r) and r >= 1 for r in ranks):
            raise SchemaError(where, f"got {_describe(ranks) if not isinstance(ranks, list) else ranks}", accepts)
        out[glob] = list(ranks)
    return out


def _cross_checks(data: dict[str, Any], missing: list[str]) -> None:
    """Constraints between keys, checked once every key has its own type."""
    from ..errors import UsageError
    from ..factorize import parse_tt_shape

    comp = data["compression"]
    comp["ranks"] = _explicit_ranks(comp["ranks"])
    fmt = comp["format"]
    if fmt == "none":
        for key, empty in (("rank", None), ("ranks", {})):
            if comp[key] != empty:
                raise SchemaError(f"compression.{key}", "format none (the dense baseline) factors no layer",
                                  f"{key}: {'null' if empty is None else '{}'} with format none; or another format")
        if data["admm"] is not None:
            raise SchemaError("admm", "format none (the dense baseline) has no ranks to train towards",
                              "admm: null with format none")
    elif comp["rank"] is None and fmt != "reorder" and not comp["ranks"]:
        missing.append("compression.rank")
    if comp["tt_type"] == "general" and fmt != "tt":
        raise SchemaError("compression.tt_type", f"general applies to format tt, not {fmt}",
                          "special; general only with format tt")
    if comp["tt_shape"] and not (fmt == "tt" and comp["tt_type"] == "general"):
        raise SchemaError("compression.tt_shape", "applies to format tt with tt_type general only",
                          "[] unless format is tt and tt_type general")
    try:
        parse_tt_shape(comp["tt_shape"])
    except UsageError as err:
        raise SchemaError("compression.tt_shape", str(err), TT_SHAPE_ITEM.accepts) from None
    if not comp["progressive"] and not 0 < comp["coef_ratio"] <= 1:
        raise SchemaError("compression.coef_ratio", f"got {comp['coef_ratio']:g}",
                          "a kept fraction in (0, 1]; with progressive: true, r' ≥ 0")
    if data["admm"] is not None and fmt in ("cp", "reorder"):
        raise SchemaError("admm", f"an ADMM stage cannot project onto format {fmt} (cp has no closed-form "
                                  "projection, reorder no rank set)",
                          "admm with format tucker, tt, ht2 or svd; or admm: null")
    ft, model = data["finetune"], data["model"]
    if ft is not None and ft["distill"] and data["admm"] is None and model is not None \
            and model["weights"] == "random":
        raise SchemaError("finetune.distill", "distillation needs a trained teacher but model.weights is random",
                          "null, or trained model.weights (a checkpoint path, or default)")


def resolve(raw: Mapping[str, Any], *, partial: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Check a merged recipe against the schema and fill every optional key with its default.

    Args:
        raw: the recipe mapping after ``extends`` merging and overrides (``extends`` may still be present).
        partial: collect missing required keys instead of raising (for base recipes, which may be partial).

    Returns:
        (the resolved recipe: every top-level key present, sections complete with defaults, ``admm`` /
        ``finetune`` None when absent or null, a missing required section None; the dotted names of missing
        required keys, empty unless ``partial``).

    Raises:
        SchemaError: an unknown key, a wrong type or a value out of range; or, unless ``partial``, a missing
            required key.
    """
    if not isinstance(raw, Mapping):
        raise SchemaError("", f"the recipe is {_describe(raw)}", "a mapping with keys " + ", ".join(TOP_LEVEL))
    for k in raw:
        if k not in TOP_LEVEL:
            raise _unknown("", k, list(TOP_LEVEL))
    missing: list[str] = []
    data: dict[str, Any] = {}
    for k, (kind, required) in TOP_LEVEL.items():
        if k not in raw:
            if required:
                missing.append(k)
            data[k] = _section(k, {}, []) if kind == "section" and not required else None
        elif kind in ("name", "text"):
            data[k] = string()(raw[k], k)
        elif kind == "stage" and raw[k] is None:
            data[k] = None
        else:
            data[k] = _section(k, raw[k], missing)
    if data["model"] is not None and "model.name" not in missing:
        _check_model_name(data["model"]["name"])
    if data["compression"] is not None:
        _cross_checks(data, missing)
    if missing and not partial:
        first = missing[0]
        others = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise SchemaError(first, f"missing required key{others}", _accepts_of(first))
    return data, missing


def _accepts_of(path: str) -> str:
    section, _, key = path.partition(".")
    if key:
        return SECTIONS[section][key].check.accepts
    if section in SECTIONS:
        return "a mapping with keys " + ", ".join(SECTIONS[section])
    return "a non-empty string"


def _check_model_name(name: str) -> None:
    from ..errors import UsageError
    from ..zoo import model_info

    try:
        model_info(name)
    except UsageError as err:
        raise SchemaError("model.name", str(err), "a tdexport zoo name (tdexport models)") from None
