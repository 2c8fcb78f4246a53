"""Commands about models and plans: ``compress``, ``inspect``, ``models``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from ..errors import UsageError
from .options import (
    FORMAT_CHOICES,
    FORMAT_HELP,
    RANK_HELP,
    layer_selection_options,
    method_kwargs,
    method_options,
    num_classes_option,
    overwrite_option,
    run_name,
    selection_kwargs,
    weights_option,
)


@click.command()
@click.argument("model")
@click.option("--format", "fmt", default="tucker", show_default=True,
              type=click.Choice(FORMAT_CHOICES, case_sensitive=False), help=FORMAT_HELP)
@click.option("--rank", "rank", default="vbmf", show_default=True, help=RANK_HELP)
@weights_option("default")
@num_classes_option
@layer_selection_options
@method_options
@click.option("--iters", type=click.IntRange(min=0), default=5, show_default=True,
              help="Maximum HOOI refinement sweeps after the HOSVD start (Tucker-2); stops early at "
                   "convergence.")
@click.option("--cp-iters", type=click.IntRange(min=1), default=100, show_default=True,
              help="ALS iterations for CP.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory for compressed.safetensors and plan.json [default: MODEL-FORMAT].")
@overwrite_option
@click.option("--quiet", "-q", is_flag=True, help="Print only the totals line, no per-layer table.")
def compress(model: str, fmt: str, rank: str, weights: str, num_classes: int | None, iters: int, cp_iters: int,
             out: Path | None, overwrite: bool, quiet: bool, **kw) -> None:
    """Factor MODEL's conv and linear layers and save a reloadable checkpoint.

    MODEL is a zoo name (see `tdexport models`). Writes OUT/plan.json (per-layer decisions, ranks,
    params and MACs) and OUT/compressed.safetensors; prints the per-layer table and totals.
    """
    from tqdm import tqdm

    from .. import api
    from .._io import check_out_dir
    from ..ranks import parse_rank_rule
    from ..table import plan_table, totals_line

    parse_rank_rule(rank)  # fail on a malformed rule before any model is built
    methods = method_kwargs(kw)
    out = out or Path(run_name(model, fmt, methods["tt_type"]))
    check_out_dir(out, overwrite=overwrite)
    selection = selection_kwargs(kw)
    selection.update(methods)
    selection["target"] = selection["target"] or None
    result = api.compress(
        model, format=fmt, rank=rank, weights=weights, num_classes=num_classes, iters=iters, cp_iters=cp_iters,
        progress=lambda items: tqdm(items, desc="factorizing", unit="layer", leave=False, disable=None),
        say=None if quiet else click.echo, **selection,
    )
    api.save(out, result, overwrite=overwrite)
    if not quiet:
        click.echo(plan_table(result.plan))
    click.echo(totals_line(result.plan))
    click.echo(f"saved {out / 'compressed.safetensors'} and {out / 'plan.json'}")


@click.command()
@click.argument("target")
@weights_option("random")
@num_classes_option
@click.option("--format", "fmt", default="tucker", show_default=True,
              type=click.Choice(FORMAT_CHOICES, case_sensitive=False),
              help="For a dense MODEL: which format to judge layer eligibility for.")
def inspect(target: str, weights: str, num_classes: int | None, fmt: str) -> None:
    """Print the per-layer table of a saved result (DIR) or of a dense zoo MODEL."""
    from .. import api
    from ..checkpoint import is_checkpoint_dir
    from ..plan import Plan
    from ..table import plan_table, totals_line

    if Path(target).is_dir():
        if not is_checkpoint_dir(target):
            raise UsageError(f"{target} is a directory without plan.json (not a tdexport checkpoint)")
        if (Path(target) / "plan.json").is_file():
            plan = Plan.read(Path(target) / "plan.json")
        else:  # a dense run folder (tdexport train): describe it as the zoo model it holds
            from ..checkpoint import read_meta
            from ..planner import survey
            from ..zoo import model_info

            meta = read_meta(target)
            shape = meta.get("input_shape") or model_info(meta["model"]).input_shape
            plan = survey(api.load(target), format=fmt, input_shape=shape, model_name=meta["model"])
    else:
        plan = api.survey(target, format=fmt, weights=weights, num_classes=num_classes)
    click.echo(plan_table(plan))
    click.echo(totals_line(plan))


@click.command("models")
@click.argument("pattern", required=False)
def models(pattern: str | None) -> None:
    """List model names (optionally filtered by a glob PATTERN such as 'resnet*')."""
    from ..zoo import list_models

    names = list_models(pattern)
    if pattern and not names:
        raise UsageError(f"no model name matches {pattern!r}; `tdexport models` lists them all")
    for name in names:
        click.echo(name)


__all__: Sequence[str] = ("compress", "inspect", "models")
