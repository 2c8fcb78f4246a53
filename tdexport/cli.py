"""Command-line interface: a thin click shell over the Python API; maps errors to exit codes.

Exit codes: 0 ok · 1 internal error · 2 usage or input error · 3 a validation gate failed ·
4 a requested backend or optional package is unavailable.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from . import __version__
from .errors import TdexportError, UsageError

_RANK_HELP = (
    "Rank rule. vbmf: EVBMF per mode; vbmf:W: MUSCO-weakened EVBMF, 0<W≤1 (smaller keeps more); "
    "energy:E: smallest rank keeping more than fraction E of σ² per mode; ratio:F: keep fraction F of "
    "each mode (CP: of the output channels); N: fixed rank N; plan:FILE: replay an edited plan.json."
)


def _weights_option(default: str):
    return click.option(
        "--weights", default=default, show_default=True,
        help="'default' (published weights via torchvision, cached), 'random', or a checkpoint path "
             "(.safetensors, or a .pth/.pt state dict; loaded without unpickling code).",
    )


_num_classes_option = click.option(
    "--num-classes", type=click.IntRange(min=1), default=None,
    help="Classifier width (default: the model's own; must match the weights).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="tdexport")
def cli() -> None:
    """tdexport: compress CNNs with tensor decompositions and export them for deployment."""


@cli.command()
@click.argument("model")
@click.option("--format", "fmt", default="tucker", show_default=True,
              type=click.Choice(["tucker", "tucker2", "tk", "cp", "svd"], case_sensitive=False),
              help="tucker: k×k convs → 1×1·k×k·1×1 (Tucker-2), 1×1 convs and Linear → two-layer SVD. "
                   "cp: k×k convs → 1×1·dw kh×1·dw 1×kw·1×1 (CP-ALS), others as tucker. "
                   "svd: only 1×1 convs and Linear.")
@click.option("--rank", "rank", default="vbmf", show_default=True, help=_RANK_HELP)
@_weights_option("default")
@_num_classes_option
@click.option("--round-to", type=click.IntRange(min=1), default=None,
              help="Round every rank up to a multiple of K (e.g. 8 or 16 for tensor cores), never above "
                   "the mode size.")
@click.option("--layers", "layer_globs", multiple=True, metavar="GLOB",
              help="Only consider layers whose dotted name matches GLOB (repeatable), e.g. 'layer3.*'.")
@click.option("--exclude", "exclude_globs", multiple=True, metavar="GLOB",
              help="Keep layers whose dotted name matches GLOB dense (repeatable).")
@click.option("--include-stem", is_flag=True, help="Also factor the first convolution (kept by default).")
@click.option("--include-classifier", is_flag=True,
              help="Also factor the last layer, usually the classifier (kept by default).")
@click.option("--iters", type=click.IntRange(min=0), default=5, show_default=True,
              help="Maximum HOOI refinement sweeps after the HOSVD start (Tucker-2); stops early at "
                   "convergence.")
@click.option("--cp-iters", type=click.IntRange(min=1), default=100, show_default=True,
              help="ALS iterations for CP.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory for compressed.safetensors and plan.json [default: MODEL-FORMAT].")
@click.option("--quiet", "-q", is_flag=True, help="Print only the totals line, no per-layer table.")
def compress(model: str, fmt: str, rank: str, weights: str, num_classes: int | None, round_to: int | None,
             layer_globs: Sequence[str], exclude_globs: Sequence[str], include_stem: bool,
             include_classifier: bool, iters: int, cp_iters: int, out: Path | None, quiet: bool) -> None:
    """Factor MODEL's conv and linear layers and save a reloadable checkpoint.

    MODEL is a zoo name (see `tdexport models`). Writes OUT/plan.json (per-layer decisions, ranks,
    params and MACs) and OUT/compressed.safetensors; prints the per-layer table and totals.
    """
    from tqdm import tqdm

    from . import api
    from .plan import normalise_format
    from .ranks import parse_rank_rule
    from .table import plan_table, totals_line

    parse_rank_rule(rank)  # fail on a malformed rule before any model is built
    out = out or Path(f"{model}-{normalise_format(fmt)}")
    result = api.compress(
        model, format=fmt, rank=rank, weights=weights, num_classes=num_classes, round_to=round_to,
        layers=layer_globs, exclude=exclude_globs, include_stem=include_stem,
        include_classifier=include_classifier, iters=iters, cp_iters=cp_iters,
        progress=lambda items: tqdm(items, desc="factorizing", unit="layer", leave=False, disable=None),
    )
    api.save(out, result)
    if not quiet:
        click.echo(plan_table(result.plan))
    click.echo(totals_line(result.plan))
    click.echo(f"saved {out / 'compressed.safetensors'} and {out / 'plan.json'}")


@cli.command()
@click.argument("target")
@_weights_option("random")
@_num_classes_option
@click.option("--format", "fmt", default="tucker", show_default=True,
              type=click.Choice(["tucker", "tucker2", "tk", "cp", "svd"], case_sensitive=False),
              help="For a dense MODEL: which format to judge layer eligibility for.")
def inspect(target: str, weights: str, num_classes: int | None, fmt: str) -> None:
    """Print the per-layer table of a saved result (DIR) or of a dense zoo MODEL."""
    from . import api
    from .checkpoint import is_checkpoint_dir
    from .plan import Plan
    from .table import plan_table, totals_line

    if Path(target).is_dir():
        if not is_checkpoint_dir(target):
            raise UsageError(f"{target} is a directory without plan.json (not a tdexport checkpoint)")
        plan = Plan.read(Path(target) / "plan.json")
    else:
        plan = api.survey(target, format=fmt, weights=weights, num_classes=num_classes)
    click.echo(plan_table(plan))
    click.echo(totals_line(plan))


@cli.command("models")
@click.argument("pattern", required=False)
def models(pattern: str | None) -> None:
    """List model names (optionally filtered by a glob PATTERN such as 'resnet*')."""
    from .zoo import list_models

    for name in list_models(pattern):
        click.echo(name)


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: run the CLI and turn tdexport errors into exit codes."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="tdexport",
                      standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except TdexportError as exc:
        click.echo(f"tdexport: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
