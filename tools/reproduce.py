"""Reproduce published experiments: run a list of recipes and write one "published vs ours" comparison table.

Each recipe (``recipes/NAME.yaml``, see `tdexport.recipes`) is run end to end with `run_recipe` into
``RUNS/NAME`` (resumable: the same command again skips finished stages and resumes an interrupted training),
or with ``--dry-run`` only planned with `dry_run` (no data, no training, nothing written under RUNS). One row
per recipe gathers the parameter / MAC / storage reductions (original / compressed, x), the compressed top-1
(percent) and its change from the original (compressed − original, points), the ORT-CPU paired speedup at the
recipe's first batch size, ours beside the paper's. A dry run fills only the reductions; accuracy and speedup
stay empty ("-").

Outputs, in ``--out`` (default ``reproduce/``), each written to a temporary file and renamed into place:

* ``reproduce.md``: the table, how it was made (command, date, dry run or not), each row's weights fallback,
  accuracy basis, published note and source, and the full text of every failure;
* ``reproduce.csv``: the same rows with full-precision numbers (empty cell: not known);
* ``reproduce.json``: the rows and how they were made;
* ``accuracy_vs_macs.png``: top-1 against MAC reduction, ours filled, published hollow (a dry run plots the
  published top-1 at our planned MAC reduction, as its title says).

Recipes are named (looked up in ``--recipes-dir``) or given as files; ``--all`` adds every runnable
(non-partial) recipe of the folder, ``--match GLOB`` keeps the names matching it (alone: every recipe
matching it). Every recipe is loaded and validated before anything runs: an unknown or invalid one exits 2
and writes nothing. A recipe whose run fails (bad input, a failed gate, an unavailable backend) becomes a row
with its status and error; without ``--keep-going`` the tool stops there, with ``--keep-going`` it runs the
others. Either way the table of the rows done is written and the exit code is the first failure's (2 bad
input, 3 gate failed, 4 backend unavailable, 1 anything else), 0 when every row succeeded.

Usage:
    python tools/reproduce.py embedded-resnet20-digits-tucker embedded-resnet20-digits-cp --dry-run
    python tools/reproduce.py --all --dry-run --out reproduce-plans
    python tools/reproduce.py --match 'tdc-resnet32-*' --data-root ~/data/cifar10 --keep-going
    python tools/reproduce.py --match 'reordering-resnet50-*' --data-root /data/imagenet --runs /scratch/runs
    python tools/reproduce.py my-recipe.yaml --overwrite -q
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _reproduce_render import COLUMNS, text_rows, write_outputs
from _table import table

from tdexport.errors import BackendUnavailable, GateFailed, TdexportError, UsageError, first_line, user_message
from tdexport.recipes import default_root, dry_run, list_recipes, load_recipe, run_recipe
from tdexport.recipes.load import Recipe
from tdexport.recipes.planning import published_of
from tdexport.validate.published import published_block

#: The backend whose speedup the table shows (the one every recipe can measure).
SPEEDUP_BACKEND = "ort-cpu"
_RATIOS = ("params_ratio", "macs_ratio", "storage_ratio")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="reproduce.py", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Exit codes: 0 every row succeeded; 2 bad input (an unknown or invalid "
                                        "recipe exits before anything runs); 3 a gate failed; 4 a backend is "
                                        "unavailable; 1 another error.")
    ap.add_argument("recipes", nargs="*", metavar="RECIPE", help="recipe names (in --recipes-dir) or YAML files")
    ap.add_argument("--all", action="store_true", help="every runnable (non-partial) recipe of --recipes-dir")
    ap.add_argument("--match", metavar="GLOB", help="keep recipes whose name matches (alone: all that match)")
    ap.add_argument("--dry-run", action="store_true", help="only build the plans: ratios, no accuracy or latency")
    ap.add_argument("--data-root", type=Path, help="data set folder for every run (overrides data.root)")
    ap.add_argument("--runs", type=Path, default=Path("runs"), help="run folders go to RUNS/NAME [default: runs]")
    ap.add_argument("--out", type=Path, default=Path("reproduce"), help="output folder [default: reproduce]")
    ap.add_argument("--recipes-dir", type=Path, help="recipe folder [default: $TDEXPORT_RECIPES, else recipes/]")
    ap.add_argument("--overwrite", action="store_true", help="discard existing run folders and start them again")
    ap.add_argument("--keep-going", action="store_true", help="after a failing recipe, run the others")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    return ap


def select_recipes(names: list[str], *, all_recipes: bool = False, match: str | None = None,
                   root: Path | None = None) -> list[Recipe]:
    """The recipes to run, loaded and validated, in the order given (``--all`` ones by name), without duplicates.

    Args:
        names: recipe names (looked up in ``root``) or YAML file paths.
        all_recipes: add every runnable recipe of ``root`` (partial base recipes are skipped).
        match: an `fnmatch` glob on recipe names; with neither ``names`` nor ``all_recipes`` it selects from
            every runnable recipe of ``root``.
        root: the recipe folder (default `tdexport.recipes.default_root`).

    Returns:
        The `Recipe` list (non-empty).

    Raises:
        UsageError: an unknown, unreadable, invalid or partial recipe, or a selection that is empty (exit 2).
    """
    chosen = [load_recipe(n, root=root) for n in names]
    if all_recipes or (match and not names):
        chosen += [r for r in list_recipes(root) if r.runnable]
    if match:
        chosen = [r for r in chosen if fnmatch.fnmatchcase(r.name, match)]
    unique: dict[Path, Recipe] = {}
    for r in chosen:
        unique.setdefault(r.path.resolve(), r)
    if not unique:
        where = root if root is not None else default_root()
        what = f"matches {match!r}" if match else "was named"
        raise UsageError(f"no recipe {what} (recipes in {where}; give RECIPE names or files, --all or --match)")
    return list(unique.values())


def _base_row(recipe: Recipe) -> dict[str, Any]:
    """A row with the recipe's identity and published numbers; every measured value None."""
    d = recipe.data
    pub = published_of(recipe)
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(recipe=recipe.name, file=str(recipe.path), seed=d["source"]["seed"], model=d["model"]["name"],
               dataset=d["data"]["dataset"], method=recipe.method(), weights=d["model"]["weights"],
               published_note=pub.get("note"), source=pub.get("source"))
    for key in (*_RATIOS, "top1", "baseline_top1"):
        row[f"{key}_published"] = pub.get(key)
    row["dtop1_published"] = _delta(pub.get("top1"), pub.get("baseline_top1"))
    return row


def _delta(compressed: float | None, original: float | None) -> float | None:
    return compressed - original if compressed is not None and original is not None else None


def row_from_plan(recipe: Recipe, summary: dict[str, Any]) -> dict[str, Any]:
    """The row of a dry run: our planned reductions (x) from ``summary`` (`dry_run`'s result), no accuracy."""
    row = _base_row(recipe)
    for key in _RATIOS:
        row[f"{key}_ours"] = summary["ours"].get(key)
    row.update(weights=summary["weights"], weights_note=summary["weights_note"], status="planned")
    return row


def _speedup(recipe: Recipe, report: dict[str, Any]) -> tuple[float | None, int | None]:
    """(ORT-CPU paired speedup, its batch): the recipe's first batch size, else the first one measured."""
    per_batch = (report.get("latency") or {}).get(SPEEDUP_BACKEND) or {}
    if not per_batch:
        return None, None
    first = str(recipe.data["export"]["batch_sizes"][0])
    key = first if first in per_batch else min(per_batch, key=int)
    return per_batch[key].get("speedup"), int(key)


def row_from_report(recipe: Recipe, report: dict[str, Any], status: str = "done") -> dict[str, Any]:
    """The row of a full run from its report (report.json): reductions, top-1 on the headline backend, speedup.

    Args:
        recipe: the recipe run.
        report: the report dict `run_recipe` returned (or report.json of its run folder).
        status: the row's status (``done``, or ``gate failed`` for a report whose gates failed).
    """
    row = _base_row(recipe)
    # Recomputed from the report so that a report written before its published block still gives ours.
    block = published_block(published_of(recipe), report)
    metrics = block["metrics"]
    for key in (*_RATIOS, "top1", "baseline_top1"):
        row[f"{key}_ours"] = metrics[key]["ours"]
    row["dtop1_ours"] = _delta(row["top1_ours"], row["baseline_top1_ours"])
    row["speedup"], row["speedup_batch"] = _speedup(recipe, report)
    row.update(weights=(report.get("model") or {}).get("weights") or row["weights"],
               accuracy_from=block.get("accuracy_from"), status=status)
    return row


def _status(err: BaseException) -> str:
    if isinstance(err, GateFailed):
        return "gate failed"
    if isinstance(err, BackendUnavailable):
        return "backend unavailable"
    return "usage error" if isinstance(err, UsageError) else "error"


def failed_row(recipe: Recipe, err: BaseException, run_dir: Path | None) -> dict[str, Any]:
    """The row of a recipe whose plan or run raised ``err``; a failed gate keeps the numbers of its report."""
    report_path = run_dir / "report.json" if run_dir is not None else None
    row = None
    if isinstance(err, GateFailed) and report_path is not None and report_path.is_file():
        try:
            row = row_from_report(recipe, json.loads(report_path.read_text()), status=_status(err))
        except (OSError, ValueError, KeyError, TypeError):
            row = None  # an unreadable report: the error alone is still worth a row
    row = row or {**_base_row(recipe), "status": _status(err)}
    message = user_message(err) if isinstance(err, TdexportError) else f"{type(err).__name__}: {first_line(err)}"
    row.update(error=message, exit_code=getattr(err, "exit_code", 1))
    return row


def reproduce_one(recipe: Recipe, args: argparse.Namespace) -> dict[str, Any]:
    """Plan (``--dry-run``) or run one recipe and return its row; a failure becomes a row with its error.

    Raises:
        KeyboardInterrupt: passed on (the caller writes the rows done).
    """
    run_dir = None if args.dry_run else args.runs / recipe.name
    try:
        if args.dry_run:
            return row_from_plan(recipe, dry_run(recipe, progress=False))
        report = run_recipe(recipe, out=run_dir, data_root=args.data_root, progress=not args.quiet,
                            overwrite=args.overwrite)
        return {**row_from_report(recipe, report), "run_dir": str(run_dir)}
    except Exception as err:  # noqa: BLE001 - one failing recipe is a row of the table, not the end of it
        if not isinstance(err, TdexportError):
            traceback.print_exc()  # a bug, not bad input: the traceback is what to report
        row = failed_row(recipe, err, run_dir)
        return {**row, "run_dir": str(run_dir) if run_dir is not None and run_dir.exists() else None}


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.quiet:
        print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the tool with command-line arguments ``argv`` (default ``sys.argv[1:]``); returns the exit code.

    Returns:
        0 when every row succeeded, else the first failure's exit code (2, 3, 4 or 1); 130 on Ctrl-C (the rows
        done are written). argparse's own usage errors exit 2 through SystemExit.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        print(f"reproduce: error: --out {args.out} exists and is not a folder", file=sys.stderr)
        return 2
    try:
        recipes = select_recipes(args.recipes, all_recipes=args.all, match=args.match, root=args.recipes_dir)
    except UsageError as err:
        print(f"reproduce: error: {user_message(err)}", file=sys.stderr)
        return 2
    meta = {"command": shlex.join(["python", "tools/reproduce.py", *argv]),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "dry_run": args.dry_run,
            "recipes_dir": str(args.recipes_dir or default_root()), "runs": None if args.dry_run else str(args.runs),
            "speedup_backend": SPEEDUP_BACKEND}
    rows: list[dict[str, Any]] = []
    code = 0
    try:
        for i, recipe in enumerate(recipes, 1):
            _say(args, f"[{i}/{len(recipes)}] {recipe.name}: {'planning' if args.dry_run else 'running'} "
                       f"{recipe.method()} …")
            row = reproduce_one(recipe, args)
            rows.append(row)
            if row["error"] is not None:
                _say(args, f"  {row['status']}: {row['error']}")
                code = code or row["exit_code"]
                if not args.keep_going:
                    _say(args, f"stopped after {recipe.name} (pass --keep-going to run the others)")
                    break
    except KeyboardInterrupt:
        _say(args, "interrupted: writing the rows done")
        code = 130
    meta["complete"] = len(rows) == len(recipes) and code != 130
    paths = write_outputs(args.out, rows, meta)
    print(table(text_rows(rows, markdown=False)))
    print("written: " + ", ".join(str(p) for p in paths))
    return code


if __name__ == "__main__":
    sys.exit(main())
