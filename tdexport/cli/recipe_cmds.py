"""The ``recipe`` command group: ``list``, ``show`` and ``run`` published experiments kept as YAML recipes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

__all__ = ["recipe"]

_DIR_HELP = ("Folder of recipes [default: $TDEXPORT_RECIPES, else the project's recipes/]. A NAME is looked up "
             "there; a FILE path is read wherever it is.")


def _dir_option(func):
    return click.option("--recipes-dir", "recipes_dir", type=click.Path(file_okay=False, path_type=Path),
                        default=None, help=_DIR_HELP)(func)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def _main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@click.group()
def recipe() -> None:
    """Published experiments as YAML recipes: list them, show one, run one (or only plan it with --dry-run).

    A recipe holds the model, data set, compression, optional ADMM and fine-tuning stages, export and gate
    settings, and the paper's published numbers; runs report theirs beside ours.
    """


@recipe.command("list")
@_dir_option
def list_cmd(recipes_dir: Path | None) -> None:
    """List the recipes: name, model, data set, method and the published result (top-1, reductions)."""
    from ..recipes import default_root, list_recipes

    recipes = list_recipes(recipes_dir)
    root = recipes_dir or default_root()
    runnable = [r for r in recipes if r.runnable]
    if not recipes:
        click.echo(f"no recipes in {root}")
        return
    storage = any(r.data["published"]["storage_ratio"] is not None for r in runnable)
    rows = [("name", "model", "dataset", "method", "top-1 %", "params", "MACs", *(["storage"] if storage else []))]
    for r in runnable:
        p = r.data["published"]
        rows.append((r.name, r.data["model"]["name"], r.data["data"]["dataset"], r.method(), _num(p["top1"]),
                     _x(p["params_ratio"]), _x(p["macs_ratio"]), *([_x(p["storage_ratio"])] if storage else [])))
    if runnable:
        click.echo(_table(rows))
        click.echo("top-1, params, MACs" + (", storage" if storage else "") + ": as published (reductions, original "
                   "/ compressed); `tdexport recipe run NAME --dry-run` plans one beside them")
    bases = [r.name for r in recipes if not r.runnable]
    if bases:
        click.echo(f"base recipes (partial, only extended): {', '.join(bases)}")
    click.echo(f"{len(runnable)} recipes in {root}")


@recipe.command("show")
@click.argument("name")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--resolved", is_flag=True, help="Show every key, defaults filled in (default: what the files say).")
@_dir_option
def show(name: str, overrides: tuple[str, ...], resolved: bool, recipes_dir: Path | None) -> None:
    """Print recipe NAME (or FILE) as YAML after merging its base (extends) and any KEY=VALUE overrides.

    The header says which files it came from.
    """
    from ..recipes import load_recipe
    from ..recipes.load import to_yaml

    r = load_recipe(name, overrides=overrides, root=recipes_dir, partial=True)
    click.echo(f"# recipe {r.name}: {r.path}")
    if r.base is not None:
        click.echo(f"# extends {r.base.stem}: {r.base} (merged below)")
    if r.overrides:
        click.echo(f"# overrides: {' '.join(r.overrides)}")
    if r.missing:
        click.echo(f"# partial (a base recipe): missing {', '.join(r.missing)}")
    data = r.data if resolved else r.merged
    click.echo(to_yaml({k: v for k, v in data.items() if k != "extends"}), nl=False)


def _dry_run_report(r: Any, summary: dict[str, Any]) -> str:
    ours, pub = summary["ours"], summary["published"]
    rows = [("", "ours (planned)", "published")]
    rows.append(("params reduction", _x(ours["params_ratio"]), _x(pub["params_ratio"])))
    rows.append(("MACs reduction", _x(ours["macs_ratio"]), _x(pub["macs_ratio"])))
    if ours["storage_ratio"] is not None or pub["storage_ratio"] is not None:
        rows.append(("storage reduction", _x(ours["storage_ratio"]), _x(pub["storage_ratio"])))
    if summary["decomposed"] and summary["decomposed"] < summary["layers"]:  # seeds often count these alone
        rows.append(("params reduction, factored layers", _x(ours["factored_params_ratio"]), "-"))
        rows.append(("MACs reduction, factored layers", _x(ours["factored_macs_ratio"]), "-"))
    rows.append(("params (M)" + (", with permutation index" if ours["trainable_millions"] is not None else ""),
                 f"{ours['params_millions']:.2f}", _num(pub["params_millions"])))
    if ours["trainable_millions"] is not None or pub["trainable_millions"] is not None:
        rows.append(("trainable (M)" + (", DCT coefficients" if ours["trainable_millions"] is not None else ""),
                     _num(ours["trainable_millions"]), _num(pub["trainable_millions"])))
    rows.append(("top-1 %", "(full run)", _num(pub["top1"])))
    if pub["baseline_top1"] is not None:
        rows.append(("original top-1 %", "(full run)", _num(pub["baseline_top1"])))
    return _table(rows)


def _stages(r: Any) -> str:
    d = r.data
    parts = ["admm" if d["admm"] else "compress"]
    if d["admm"]:
        parts[0] = f"admm ({d['admm']['epochs']} epochs, rho {d['admm']['rho']:g})"
    if d["finetune"]:
        ft = d["finetune"]
        parts.append(f"finetune ({ft['epochs']} epochs, lr {ft['lr']:g} {ft['sched']}"
                     + (f", distill {ft['distill']}" if ft["distill"] else "") + ")")
    e = d["export"]
    parts.append(f"export + validate ({','.join(e['backends'])}; {','.join(e['precision'])}; batch "
                 f"{','.join(map(str, e['batch_sizes']))})")
    return " → ".join(parts)


@recipe.command("run")
@click.argument("name")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--data-root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data set folder (cifar10/cifar100/imagenet/folder; digits needs none); overrides data.root.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder [default: runs/NAME]. With --dry-run: where to write the plan (default: nothing "
                   "is written).")
@click.option("--dry-run", is_flag=True,
              help="Only build the compression plan (no data, no training) and print its parameter / MAC "
                   "reductions beside the published ones; random weights, with a note, when the recipe's are "
                   "unavailable.")
@click.option("--overwrite", is_flag=True,
              help="Discard an existing run folder (or --dry-run --out folder) and start again.")
@_dir_option
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
def run(name: str, overrides: tuple[str, ...], data_root: Path | None, out: Path | None, dry_run: bool,
        overwrite: bool, recipes_dir: Path | None, quiet: bool) -> None:
    """Run recipe NAME (or a recipe FILE): compress (or ADMM), fine-tune, export, validate, report.

    KEY=VALUE overrides any recipe key by its dotted name, the value read as YAML, e.g. finetune.epochs=2,
    compression.rank=ratio:0.4, export.precision=[fp32,fp16], model.weights=runs/base. The recipe is validated
    (with its overrides) before anything runs.

    The run folder (default runs/NAME) holds recipe.json (the settings and finished stages), compress/ or
    admm/, finetune/, and the final plan.json, compressed.safetensors, ONNX files, report.json and report.md
    with the published numbers beside ours. Rerunning the same command skips finished stages and resumes an
    interrupted training stage. Multi-GPU: torchrun --nproc_per_node N -m tdexport recipe run NAME.

    Exit codes: 2 an invalid recipe or input, 3 a validate gate failed (report written), 4 a backend is
    unavailable.
    """
    from ..recipes import dry_run as plan_only
    from ..recipes import load_recipe, run_recipe

    r = load_recipe(name, overrides=overrides, root=recipes_dir)
    main = _main_process()
    if dry_run:
        summary = plan_only(r, out=out, overwrite=overwrite, progress=not quiet)
        click.echo(f"recipe {r.name} ({r.path}): {r.data['description']}")
        click.echo(f"stages: {_stages(r)}")
        click.echo(f"weights: {summary['weights']}")
        if summary["weights_note"]:
            click.echo(f"note: {summary['weights_note']}")
        from ..table import totals_line

        click.echo(f"plan: {totals_line(summary['plan'])}")
        click.echo(_dry_run_report(r, summary))
        if r.data["published"]["note"]:
            click.echo(f"published note: {r.data['published']['note']}")
        click.echo(f"dry run: no data, no training; {f'plan written to {out}' if out else 'nothing written'}")
        return
    out = out or Path("runs") / r.name
    report = run_recipe(r, out=out, data_root=data_root, progress=not quiet, overwrite=overwrite)
    if main:
        from ..validate.markdown import published_table

        table = published_table(report)
        if table:
            click.echo("published vs ours:")
            click.echo(table)
        click.echo(f"run folder: {out}  (report: {out / 'report.md'})")
