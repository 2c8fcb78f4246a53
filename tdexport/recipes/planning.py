"""Planning a recipe: its data spec, training configs and compression, and the dry run (a plan, no data).

The dry run builds the compression plan with `tdexport.planner.compress` exactly as the full run's
``compress`` stage does (`compress_recipe`), and returns its parameter / MAC (and, for reordering, storage)
ratios beside the recipe's published ones, without data, training or any file unless asked.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import math
import os
from typing import Any

from ..errors import UsageError, first_line
from .load import Recipe

__all__ = ["build_model", "compress_kwargs", "compress_recipe", "data_spec", "dry_run", "plan_counts", "published_of",
           "ratios", "require_runnable", "train_config"]


def _fail(recipe: Recipe, key: str, message: str) -> UsageError:
    return UsageError(f"{recipe.path}: {key}: {message}")


def require_runnable(recipe: Recipe) -> None:
    """Refuse a partial (base) recipe: `UsageError` naming its first missing key."""
    if recipe.missing:
        raise _fail(recipe, recipe.missing[0], f"missing required key (a partial base recipe cannot run; missing: "
                                               f"{', '.join(recipe.missing)})")


def data_spec(recipe: Recipe, data_root: str | os.PathLike[str] | None = None) -> str:
    """The ``--data`` spec of ``recipe``: ``digits``, ``cifar10[:DIR]``, ``imagenet:DIR``, ``folder:DIR``.

    Args:
        recipe: the recipe.
        data_root: the data set folder; overrides ``data.root`` (digits takes none).

    Raises:
        UsageError: imagenet / folder without a folder.
    """
    kind = recipe.data["data"]["dataset"]
    root = str(data_root) if data_root is not None else recipe.data["data"]["root"]
    if kind == "digits":
        return "digits"
    if root is None:
        if kind in ("cifar10", "cifar100"):
            return kind  # tdexport's default folder, ./data
        raise _fail(recipe, "data.root", f"{kind} needs its folder: pass --data-root DIR or data.root=DIR")
    return f"{kind}:{root}"


def train_config(recipe: Recipe, stage: str) -> Any:
    """The `tdexport.train.TrainConfig` of the ``admm`` or ``finetune`` stage (None when the recipe has none).

    Raises:
        UsageError: a value TrainConfig refuses, naming the file and the stage.
    """
    from ..train import TrainConfig
    from .schema import TRAIN_EXTRA

    section = recipe.data.get(stage)
    if section is None:
        return None
    cfg = TrainConfig(**{k: v for k, v in section.items() if k not in TRAIN_EXTRA[stage]})
    try:
        return cfg.validate()
    except UsageError as err:
        raise _fail(recipe, stage, str(err)) from None


def compress_kwargs(recipe: Recipe) -> dict[str, Any]:
    """`tdexport.planner.compress` keyword arguments of ``compression`` (all but format and rank; target parsed)."""
    from ..cost import parse_target

    c = recipe.data["compression"]
    return {"round_to": c["round_to"], "layers": tuple(c["layers"]), "exclude": tuple(c["exclude"]),
            "include_stem": c["include_stem"], "include_classifier": c["include_classifier"],
            "target": parse_target(c["target"]) if c["target"] else None, "tt_type": c["tt_type"],
            "tt_shape": tuple(c["tt_shape"]), "groups": c["groups"], "coef_ratio": c["coef_ratio"],
            "progressive": c["progressive"], "progressive_ref": c["progressive_ref"],
            "stem_method": c["stem_method"]}


def _served_precision(recipe: Recipe) -> str:
    precisions = recipe.data["export"]["precision"]
    return next((p for p in ("int8", "fp16") if p in precisions), "fp32")


def _seed(recipe: Recipe) -> int:
    """The seed random starting weights are drawn with: the first training stage's, else 0."""
    for stage in ("admm", "finetune"):
        if recipe.data.get(stage) is not None:
            return int(recipe.data[stage]["seed"])
    return 0


def build_model(recipe: Recipe, num_classes: int | None, *, fallback: bool) -> tuple[Any, str, str | None]:
    """The recipe's dense model with ``model.weights`` (random ones drawn after seeding with the first stage's seed).

    Args:
        recipe: the recipe.
        num_classes: classifier width (None: the weights' / model's own).
        fallback: when the weights cannot be had (offline, none published, no such checkpoint), use random
            weights and say so instead of failing (the dry run).

    Returns:
        (the model on CPU in eval mode, the weights it has: ``model.weights`` or ``random``, the fallback note
        or None).

    Raises:
        UsageError: unavailable weights without ``fallback``, naming ``model.weights`` and how to override it.
    """
    import torch

    from ..zoo import create_model

    m = recipe.data["model"]
    weights = m["weights"]
    torch.manual_seed(_seed(recipe))
    try:
        return create_model(m["name"], weights=weights, num_classes=num_classes), weights, None
    except UsageError as err:
        if weights == "random":
            raise _fail(recipe, "model", str(err)) from None
        if not fallback:
            raise _fail(recipe, "model.weights", f"{err}; override with model.weights=PATH (a trained checkpoint "
                                                 "or run folder) or model.weights=random") from None
        note = (f"model.weights {weights!r} unavailable ({first_line(err)}); planned on random weights instead, so "
                "weight-dependent rank rules (vbmf, energy, svt, budgets) may choose other ranks than a real run")
    torch.manual_seed(_seed(recipe))
    return create_model(m["name"], weights="random", num_classes=num_classes), "random", note


def _explicit(recipe: Recipe, plan: Any) -> Any:
    """``plan`` with the layers ``compression.ranks`` names set to their ranks (decomposed, method kept).

    Without a ``rank`` rule every other layer is kept dense.
    """
    comp = recipe.data["compression"]
    edited = copy.deepcopy(plan)
    matched: set[str] = set()
    for glob, ranks in comp["ranks"].items():
        entries = [e for e in edited.layers if fnmatch.fnmatchcase(e.name, glob)]
        if not entries:
            names = ", ".join(e.name for e in edited.layers[:8]) + (", …" if len(edited.layers) > 8 else "")
            raise _fail(recipe, f"compression.ranks.{glob}", f"matches no Conv2d / Linear layer; accepted: a "
                                                            f"dotted layer name or glob ({names})")
        for e in entries:
            if e.method is None:
                raise _fail(recipe, f"compression.ranks.{glob}",
                            f"layer {e.name} is kept dense by the format's rules ({e.reason}), so it has no method "
                            "to give ranks to; accepted: layers the format factors (see compression.layers, "
                            "include_stem, include_classifier)")
            e.ranks, e.decision, e.reason = list(ranks), "decomposed", f"compression.ranks {glob}"
            matched.add(e.name)
    if comp["rank"] is None:
        for e in edited.layers:
            if e.name not in matched:
                e.decision, e.reason = "kept", "not in compression.ranks"
    return edited


def compress_recipe(recipe: Recipe, model: Any, *, num_classes: int | None = None, weights: str | None = None,
                    progress: bool = False, plan_only: bool = False) -> Any:
    """Compress ``model`` as ``recipe.compression`` says: its rank rule, then its explicit per-layer ranks.

    Explicit ranks (``compression.ranks: {glob: [r, …]}``) edit the rule's plan (matching layers decomposed at
    those ranks, with the rule's method) and replay it, so the planner checks them against the layers.

    Args:
        recipe: the recipe.
        model: the dense model (not modified).
        num_classes: classifier width recorded in the plan (default: the model's).
        weights: the weights recorded in the plan (the teacher of a distilling fine-tune).
        progress: per-layer progress bar.
        plan_only: decide and count without factorizing (`tdexport.planner.compress`): the same plan, a model
            of empty factor chains on the meta device.

    Returns:
        `tdexport.plan.Compressed` (model and plan).

    Raises:
        UsageError: ranks that do not fit their layers or a glob that matches nothing, naming the key.
    """
    from .. import planner
    from ..api import classifier_width
    from ..zoo import model_info

    comp = recipe.data["compression"]
    name = recipe.data["model"]["name"]
    kwargs = dict(compress_kwargs(recipe), input_shape=tuple(model_info(name).input_shape), model_name=name,
                  num_classes=num_classes or classifier_width(model), precision=_served_precision(recipe))
    if progress:
        from tqdm import tqdm

        kwargs["progress"] = lambda items: tqdm(items, desc="factorizing", unit="layer", leave=False, disable=None)
    if comp["format"] == "none":  # the dense baseline: survey's all-kept plan, replayed without factorizing
        dense = planner.survey(model, format="tucker", input_shape=kwargs["input_shape"], model_name=name)
        result = planner.compress(model, format="tucker", rank=dense, plan_only=plan_only, **kwargs)
        for e in result.plan.layers:
            e.reason = "compression.format none (the dense baseline)"
        result.plan.rank_rule = "none (dense baseline)"
    else:
        # Without a rule, rank 1 everywhere only serves to learn each layer's method; explicit ranks replace the
        # rule's plan below, so a first plan to be edited needs no factorization.
        result = planner.compress(model, format=comp["format"], rank=comp["rank"] or "1", **kwargs,
                                  plan_only=plan_only or bool(comp["ranks"]))
    if comp["ranks"]:
        edited = _explicit(recipe, result.plan)
        try:
            result = planner.compress(model, format=comp["format"], rank=edited, plan_only=plan_only, **kwargs)
        except UsageError as err:
            raise _fail(recipe, "compression.ranks", str(err)) from None
        globs = ", ".join(comp["ranks"])
        result.plan.rank_rule = (f"{comp['rank']} + " if comp["rank"] else "") + f"explicit ranks ({globs})"
        result.plan.options["explicit_ranks"] = comp["ranks"]
    result.plan.options["recipe"] = recipe.name
    if weights is not None:
        result.plan.options["weights"] = weights
    return result


def ratios(totals: dict[str, Any]) -> dict[str, float | None]:
    """Reductions (original / compressed, x) of a plan's totals: params, MACs and, for reordering, storage."""
    def ratio(before: str, after: str) -> float | None:
        return totals[before] / totals[after] if totals.get(before) and totals.get(after) else None

    return {"params_ratio": ratio("params_before", "params_after"), "macs_ratio": ratio("macs_before", "macs_after"),
            "storage_ratio": ratio("storage_bits_before", "storage_bits_after")}


def plan_counts(plan: Any) -> dict[str, float | None]:
    """Counts papers print besides whole-model ratios, from a plan's per-layer entries.

    Seeds often report reductions over the layers they factor only (TDC's layer classes print each one's
    params and FLOPs), and absolute parameter counts (the reordering seed counts its permutation index).

    Returns:
        ``factored_params_ratio`` / ``factored_macs_ratio``: original / compressed over the decomposed layers
        (None when none is); ``params_millions``: the compressed model's parameters, plus one per permutation
        index entry (⌈N/g⌉ per weight of N elements) for reordered layers, in millions; ``trainable_millions``:
        its trainable parameters in millions, counting only the kept DCT coefficients (g·t per weight) of
        reordered layers as the seed does (None for other formats, where every parameter trains).
    """
    done = [e for e in plan.layers if e.decision == "decomposed"]
    sums = {k: sum(getattr(e, k) for e in done) for k in ("params_before", "params_after", "macs_before", "macs_after")}
    out: dict[str, float | None] = {
        "factored_params_ratio": sums["params_before"] / sums["params_after"] if sums["params_after"] else None,
        "factored_macs_ratio": sums["macs_before"] / sums["macs_after"] if sums["macs_after"] else None,
        "params_millions": plan.totals["params_after"] / 1e6, "trainable_millions": None}
    if plan.format == "reorder":
        index = sum(-(-math.prod(e.shape) // e.ranks[0]) for e in done)
        coefficients = sum(e.ranks[0] * e.ranks[1] for e in done)
        out["params_millions"] = (plan.totals["params_after"] + index) / 1e6
        out["trainable_millions"] = coefficients / 1e6
    return out


def published_of(recipe: Recipe) -> dict[str, Any]:
    """The recipe's ``published`` block with its source line (paper, table) for the report."""
    src = recipe.data["source"]
    return {**recipe.data["published"], "source": src["paper"] + (f", {src['table']}" if src.get("table") else "")}


def dry_run(recipe: Recipe, *, out: str | os.PathLike[str] | None = None, overwrite: bool = False,
            progress: bool = False) -> dict[str, Any]:
    """Build the recipe's compression plan without data or training, and set its ratios beside the published ones.

    The recipe's weights are used when available; when they are not (offline, no published weights for a CIFAR
    model, a checkpoint that is not here) the plan is built on random weights and ``weights_note`` says so.

    Args:
        recipe: the recipe (complete).
        out: when given, a folder (appears whole) receiving plan.json, compressed.safetensors and dry_run.json;
            None writes nothing and factorizes nothing (`tdexport.planner.compress` ``plan_only``: the same
            ranks and counts, in seconds for most models).
        overwrite: replace an existing non-empty ``out``.
        progress: per-layer progress bar.

    Returns:
        ``{"recipe", "file", "model", "weights" (used), "weights_note" (None unless it fell back), "format",
        "rank_rule", "layers", "decomposed" (counts), "totals" (the plan's params / MACs / storage before and
        after), "ours": {params_ratio, macs_ratio, storage_ratio} and the keys of `plan_counts`, "published":
        the recipe's block, "plan": the `tdexport.plan.Plan`}``; everything but ``plan`` is what dry_run.json holds.

    Raises:
        UsageError: as `compress_recipe`, or an unknown model / malformed option found while planning.
    """
    from .. import checkpoint
    from .._io import atomic_dir

    require_runnable(recipe)
    m = recipe.data["model"]
    model, weights, note = build_model(recipe, m["num_classes"], fallback=True)
    # Without an out folder nothing is saved, so the factors need not be computed: the plan and counts are the same.
    result = compress_recipe(recipe, model, num_classes=m["num_classes"], weights=weights, progress=progress,
                             plan_only=out is None)
    plan = result.plan
    summary = {"recipe": recipe.name, "file": str(recipe.path), "model": m["name"], "weights": weights,
               "weights_note": note, "format": plan.format, "rank_rule": plan.rank_rule, "layers": len(plan.layers),
               "decomposed": sum(e.decision == "decomposed" for e in plan.layers), "totals": dict(plan.totals),
               "ours": {**ratios(plan.totals), **plan_counts(plan)}, "published": dict(recipe.data["published"])}
    if out is not None:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            checkpoint.write_files(tmp, result.model, plan=plan)
            (tmp / "dry_run.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {**summary, "plan": plan}
