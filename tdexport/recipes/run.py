"""Running a recipe: the whole experiment into one run folder, stage by stage and resumable.

A run folder (default ``runs/NAME``) holds:

* ``recipe.json``: the recipe's resolved settings and the finished stages (the resume state);
* ``compress/`` (plan.json, compressed.safetensors) or, for recipes with ``admm:``, ``admm/`` (a
  `tdexport.train.run.admm` run: compressed checkpoint, ``dense/``, metrics.json);
* ``finetune/`` (a `tdexport.train.run.finetune` run) when the recipe fine-tunes;
* the final plan.json + compressed.safetensors (loadable with ``tdexport.load(OUT)``), original.onnx,
  compressed.onnx, report.json (with a ``published`` block), report.md and plots, from the ``export`` stage
  (`tdexport.pipeline.validate_into`).

Rerunning the same recipe into the same folder skips finished stages; an interrupted training stage resumes
from its ``train_state.pt``. Under ``torchrun`` every process trains; only rank 0 compresses, exports and
writes anything else.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import GateFailed, UsageError
from .load import Recipe
from .planning import (
    build_model,
    compress_kwargs,
    compress_recipe,
    data_spec,
    published_of,
    ratios,
    require_runnable,
    train_config,
)

__all__ = ["STATE_FILE", "STAGES", "run_recipe"]

STATE_FILE = "recipe.json"
#: Stage names in run order; a recipe runs ``compress`` or ``admm`` (ADMM compresses itself), then the rest.
STAGES = ("compress", "admm", "finetune", "export")
# validate_into options a caller may tune (timing, threads, subset); the recipe decides the others.
_VALIDATE_TUNABLE = ("iterations", "duration", "warmup", "threads", "limit", "opset", "simplify", "calib_size",
                     "int8_target")
_CHECKPOINT_FILES = ("plan.json", "compressed.safetensors")


# ---------------------------------------------------------------------------------------------- the full run


def _settings(recipe: Recipe) -> dict[str, Any]:
    """What decides a run's results: the resolved recipe without its prose, paper numbers and data folder."""
    data = copy.deepcopy(recipe.data)
    for key in ("description", "source", "published", "extends"):
        data.pop(key, None)
    data["data"].pop("root", None)
    return json.loads(json.dumps(data))


def _changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            out += _changed(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if old == new else [f"{prefix or '(all)'}: {json.dumps(old)} → {json.dumps(new)}"]


def _read_state(out: Path) -> dict[str, Any] | None:
    path = out / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"{path} is unreadable ({err}); pass --overwrite to start the run again") from None
    if not isinstance(state, dict) or not isinstance(state.get("finished"), list) or "settings" not in state:
        raise UsageError(f"{path} is not a recipe run state; pass --overwrite to start the run again")
    return state


def _write_state(out: Path, state: dict[str, Any]) -> None:
    from .._io import atomic_write

    text = json.dumps(state, indent=2) + "\n"
    atomic_write(out / STATE_FILE, lambda p: p.write_text(text))


def _finish(out: Path, state: dict[str, Any], stage: str, **facts: Any) -> None:
    state["finished"].append(stage)
    state["stages"][stage] = {"finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), **facts}
    _write_state(out, state)


def _prepare_out(recipe: Recipe, out: Path, overwrite: bool, main: bool) -> dict[str, Any]:
    """The run state to continue (a fresh one for a new or overwritten folder); refuses a foreign folder."""
    settings = _settings(recipe)
    state = _read_state(out)
    if state is not None and state["settings"] != settings and not overwrite:
        diff = _changed(state["settings"], settings)
        shown = "; ".join(diff[:5]) + (f"; … ({len(diff)} differences)" if len(diff) > 5 else "")
        raise UsageError(f"{out} holds a run of recipe {state.get('recipe')!r} with other settings ({shown}); pass "
                         f"--overwrite to start it again, or choose another --out")
    if state is None and out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UsageError(f"--out {out} exists and is not a recipe run folder (no {STATE_FILE}); pass --overwrite "
                         f"to replace it, or choose another --out")
    if overwrite or state is None:
        if main and out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        state = None
    if state is None:
        state = {"recipe": recipe.name, "file": str(recipe.path), "overrides": list(recipe.overrides),
                 "settings": settings, "finished": [], "stages": {}}
    return state


def _rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _copy_checkpoint(src: Path, out: Path) -> None:
    from .._io import atomic_write

    for name in _CHECKPOINT_FILES:  # weights first, like checkpoint.write_files: never new plan, old weights
        atomic_write(out / name, lambda p, s=src / name: shutil.copyfile(s, p))


def run_recipe(recipe: Recipe, *, out: str | os.PathLike[str], data_root: str | os.PathLike[str] | None = None,
               progress: bool = True, overwrite: bool = False, **validate_options: Any) -> dict[str, Any]:
    """Run the whole experiment into one folder: compress (or ADMM), fine-tune, export + validate + report.

    Everything cheap is checked first (the folder, the backends, the data set and its class count, the
    weights). Finished stages, recorded in ``OUT/recipe.json``, are skipped when the same recipe is run into
    the same folder again; an interrupted ADMM or fine-tuning resumes from its ``train_state.pt``. Under
    torchrun every process trains and only rank 0 writes anything else (it returns the report, the others {}).

    Args:
        recipe: the recipe (complete).
        out: the run folder.
        data_root: the data set folder (overrides ``data.root``).
        progress: progress messages and bars.
        overwrite: discard an existing run folder (another recipe's, other settings, or a finished one) and
            start again.
        **validate_options: timing and evaluation settings passed to `tdexport.pipeline.validate_into`
            (``iterations``, ``duration``, ``warmup``, ``threads``, ``limit``, ``opset``, ``simplify``,
            ``calib_size``, ``int8_target``); the recipe decides backends, batch sizes, precisions and gates.

    Returns:
        The report dict (report.json), with its ``published`` block (`tdexport.validate.published.published_block`).

    Raises:
        UsageError: bad input found by the checks (exit 2), before anything expensive runs.
        BackendUnavailable: a backend of ``export.backends`` cannot run here (exit 4).
        GateFailed: a ``validate`` gate failed (exit 3; the report is written), also on a rerun of a finished run.
    """
    from .. import pipeline
    from ..artifacts import dense_artifact, logit_width, resolve
    from ..data import describe_data
    from ..guards import require_finite
    from ..train import dist
    from ..train import run as train_run
    from ..zoo import model_info

    unknown = set(validate_options) - set(_VALIDATE_TUNABLE)
    if unknown:
        raise TypeError(f"run_recipe() got unexpected options {sorted(unknown)}; tunable: {_VALIDATE_TUNABLE}")
    require_runnable(recipe)
    d = recipe.data
    rank, world = _rank_world()
    main = rank == 0
    say = pipeline.say_fn(progress and main)
    out = Path(out)
    spec = data_spec(recipe, data_root)
    admm_cfg, ft_cfg = train_config(recipe, "admm"), train_config(recipe, "finetune")
    export, gates = d["export"], d["validate"]
    backends = list(export["backends"]) + (["trt"] if export["engines"] and "trt" not in export["backends"] else [])

    state = _prepare_out(recipe, out, overwrite, main)
    finished = set(state["finished"])
    pipeline.check_backends(backends)
    name = d["model"]["name"]
    shape = tuple(model_info(name).input_shape)
    info = describe_data(spec)
    classes = d["model"]["num_classes"] or (info.num_classes if d["model"]["weights"] == "random" else None)
    original, weights, _ = build_model(recipe, classes, fallback=False)
    require_finite(original.state_dict().items(), f"{name} (model.weights {weights})")
    orig = dense_artifact("original", name, original, shape)
    pipeline.check_data_fits(info, spec, shape, {"original": logit_width(orig)})
    if ft_cfg is not None and d["finetune"]["devices"] != world:
        say(f"note: the recipe's run used {d['finetune']['devices']} device(s) (torchrun --nproc_per_node "
            f"{d['finetune']['devices']}); this one uses {world}, so each step sees {world}×{ft_cfg.batch_size} "
            "images")

    ctx = None
    if world > 1:  # join the group now: rank 0 compresses while the others wait at a barrier
        ctx = dist.setup((admm_cfg or ft_cfg).device if (admm_cfg or ft_cfg) is not None else "auto")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / STATE_FILE).is_file():
            _write_state(out, state)
    first = "admm" if admm_cfg is not None else "compress"
    src = out / first
    comp = d["compression"]
    if first == "compress" and "compress" not in finished:
        if main:
            say(f"[compress] {recipe.method()} …")
            result = compress_recipe(recipe, original, num_classes=classes, weights=weights, progress=progress)
            from ..checkpoint import write_files
            from ..table import totals_line

            write_files(src, result.model, plan=result.plan)
            say(totals_line(result.plan))
            _finish(out, state, "compress", **ratios(result.plan.totals))
        if ctx is not None:
            dist.barrier(ctx)
    elif first == "admm" and "admm" not in finished:
        rule = comp["rank"]
        if comp["ranks"]:  # explicit ranks reach ADMM as a plan to replay
            ranks_plan = out / "explicit_ranks_plan.json"
            if main:
                from .._io import atomic_write

                text = json.dumps(compress_recipe(recipe, original, num_classes=classes).plan.to_dict(), indent=2)
                atomic_write(ranks_plan, lambda p: p.write_text(text + "\n"))
            if ctx is not None:
                dist.barrier(ctx)
            rule = f"plan:{ranks_plan}"
        say(f"[admm] {recipe.method()}, {admm_cfg.epochs} epochs …")
        a = d["admm"]
        options = {k: v for k, v in compress_kwargs(recipe).items() if k not in ("groups", "coef_ratio", "progressive",
                                                                                   "progressive_ref")}
        train_run.admm(name, format=comp["format"], rank=rule, data=spec, cfg=admm_cfg, out=src, rho=a["rho"],
                       rho_final=a["rho_final"], admm_every=a["every"], weights=weights, num_classes=classes,
                       resume=(src / "train_state.pt").is_file(), progress=progress, **options)
        if main:
            (src / "train_state.pt").unlink(missing_ok=True)  # finished: nothing left to resume
            _finish(out, state, "admm")
    if ft_cfg is not None and "finetune" not in finished:
        ft_dir = out / "finetune"
        resume = (ft_dir / "train_state.pt").is_file()
        say(f"[finetune] {ft_cfg.epochs} epochs, lr {ft_cfg.lr:g} {ft_cfg.sched}" + (" (resuming)" if resume else "")
            + " …")
        train_run.finetune(src, data=spec, cfg=ft_cfg, out=ft_dir, resume=resume, progress=progress)
        if main:
            (ft_dir / "train_state.pt").unlink(missing_ok=True)
            _finish(out, state, "finetune")
    if ctx is not None:
        dist.teardown(ctx)  # training already left the group; a run without training leaves it here
    if not main:
        return {}
    final = out / "finetune" if ft_cfg is not None else src
    if "export" in finished:
        return _finished_report(recipe, out, say)

    _copy_checkpoint(final, out)
    comp_art = resolve(final, label="compressed")
    (out / "report.json").unlink(missing_ok=True)  # a report from an interrupted attempt is not this verdict
    with pipeline.report_despite_gate(out) as failed:
        pipeline.validate_into(orig, comp_art, out, data=spec, backends=backends, batch_sizes=export["batch_sizes"],
                               precisions=export["precision"], max_acc_drop=gates["max_acc_drop"],
                               min_speedup=gates["min_speedup"], max_parity_err=gates["max_parity_err"],
                               progress=progress, **validate_options)
    report = _with_published(recipe, out, comp_art.plan)
    _finish(out, state, "export", gates_passed=report.get("gates_passed"))
    if failed:
        raise failed[0]
    return report


def _with_published(recipe: Recipe, out: Path, plan: Any) -> dict[str, Any]:
    """Add (or refresh) report.json's ``published`` block and rewrite the report files."""
    from ..validate.files import write_report
    from ..validate.published import published_block

    report = json.loads((out / "report.json").read_text())
    block = published_block(published_of(recipe), report)
    if report.get("published") != block:
        report["published"] = block
        write_report(report, out, plan=plan)
    return report


def _finished_report(recipe: Recipe, out: Path, say: Any) -> dict[str, Any]:
    """The report of a finished run (its published block refreshed); a failed gate fails again."""
    from ..plan import Plan

    say(f"{out}: every stage is finished (see {STATE_FILE}); pass --overwrite to run again")
    report = _with_published(recipe, out, Plan.read(out / "plan.json"))
    if report.get("gates_passed") is False:
        gates = report.get("gates") or {}
        failing = [f"{n} (value {gates[n]['value']}, limit {gates[n]['limit']})" for n in gates
                   if not gates[n]["passed"]]
        raise GateFailed(f"gate failed (in the finished run {out}): {'; '.join(failing)}")
    return report
