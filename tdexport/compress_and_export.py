"""compress-and-export: compress → (fine-tune) → export both → validate → report, into one run folder.

Everything cheap is checked before anything expensive runs: the output folder, the backends, the data set
and that its class count matches the model, so a typo costs seconds, not a fine-tuning run. The run is
built in ``OUT.partial`` and renamed to ``OUT`` once its report exists (also when a gate then fails,
exit 3). When something fails after the compressed checkpoint exists (fine-tuning interrupted, export
parity, a crash), ``OUT.partial`` is kept, its path printed, and ``--resume`` continues from it.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import checkpoint
from . import pipeline as _pipeline
from ._io import atomic_write, check_out_dir, publish_dir
from .artifacts import dense_artifact, logit_width, resolve
from .errors import UsageError

__all__ = ["RUN_FILE", "compress_and_export", "default_target", "partial_dir"]

RUN_FILE = "run.json"


def partial_dir(out: str | Path) -> Path:
    """Where `compress_and_export` builds ``out`` and keeps the work of a failed run: ``OUT.partial``."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _write_run(stage: Path, state: dict[str, Any]) -> None:
    text = json.dumps(state, indent=2) + "\n"
    atomic_write(stage / RUN_FILE, lambda p: p.write_text(text))


def _read_run(stage: Path) -> dict[str, Any]:
    try:
        state = json.loads((stage / RUN_FILE).read_text())
    except (OSError, ValueError) as err:
        raise UsageError(f"--resume: {stage} has no readable {RUN_FILE} ({err}); delete it and start again") from err
    if not isinstance(state, dict) or state.get("stage") not in ("compressed", "finetuned"):
        raise UsageError(f"--resume: {stage / RUN_FILE} is not a compress-and-export state; delete {stage}")
    return state


def default_target(backends: Sequence[str] | None, batch_sizes: Sequence[int] | None) -> Any:
    """The target compress-and-export measures layer decisions on: its first backend at the largest latency batch.

    Args:
        backends: the ``--backend`` list (None: ``ort-cpu``).
        batch_sizes: the ``--batch-sizes`` list (None: the default 1, 32).

    Returns:
        A `tdexport.cost.Target`, or None when the first backend is ``torch`` (costs are timed on ONNX runtimes).
    """
    from .cost import TARGET_BACKENDS, Target

    first = (list(backends) or ["ort-cpu"])[0] if backends else "ort-cpu"
    return Target(first, max(batch_sizes or (1, 32))) if first in TARGET_BACKENDS else None


def compress_and_export(
    model: str,
    out: str | Path,
    *,
    format: str = "tucker",
    rank: str = "vbmf",
    weights: str = "default",
    num_classes: int | None = None,
    data: str | None = None,
    finetune_cfg: Any = None,
    compress_options: dict | None = None,
    target: Any = "default",
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    **validate_options: Any,
) -> dict[str, Any]:
    """Compress → (fine-tune) → export both → validate → report, into one run folder.

    Before compressing, everything cheap is checked: the output folder, the backends, the data set and
    that its class count matches the model. The run is built in ``OUT.partial`` and renamed to ``out``
    when the report exists (also when a gate then fails, exit 3). If anything fails once the compressed
    checkpoint is written (Ctrl-C during fine-tuning, an export that fails parity, a crash), ``OUT.partial``
    is kept, its path printed, and ``resume=True`` continues from it: an interrupted fine-tuning resumes
    exactly, a finished one is not repeated.

    Args:
        model: zoo name.
        out: run folder: plan.json, compressed.safetensors, original.onnx, compressed.onnx, report.json,
            report.md, plots, run.json (and metrics.json / train.log when fine-tuned).
        format: ``tucker``, ``tt``, ``cp`` or ``svd``.
        rank: rank rule.
        weights: weights of the original (``default`` published, ``random``, a path or run directory).
        num_classes: classifier width.
        data: data spec for fine-tuning and accuracy.
        finetune_cfg: a `tdexport.train.TrainConfig` to fine-tune with (None: no fine-tuning).
        compress_options: passed to `tdexport.planner.compress`.
        target: ``BACKEND[:BATCH]`` or a `tdexport.cost.Target` that layer decisions are measured on (see
            `tdexport.planner.compress`); ``"default"``: the first backend at the largest latency batch (no
            target when that backend is torch); None: no measurement. ``compress_options["target"]`` wins.
        overwrite: replace an existing non-empty ``out`` whole (and discard a stale ``OUT.partial``).
        resume: continue the failed run kept in ``OUT.partial``; compression settings then come from its plan.
        progress: progress output.
        **validate_options: passed to `tdexport.pipeline.validate_into` (backends, batch_sizes, gates, …).

    Returns:
        The report dict.

    Raises:
        UsageError: bad input found by the checks (exit 2), before anything expensive runs.
        BackendUnavailable: a requested backend cannot run here (exit 4), before anything expensive runs.
        GateFailed: a gate failed (the run folder is complete) or an export failed parity (work kept).
    """
    from . import planner
    from .zoo import create_model, model_info

    compress_options = dict(compress_options or {})
    if "target" not in compress_options:
        if target == "default":
            target = default_target(validate_options.get("backends"), validate_options.get("batch_sizes"))
        compress_options["target"] = target

    out = Path(out)
    stage = partial_dir(out)
    say = _pipeline.say_fn(progress)
    if finetune_cfg is not None and data is None:
        raise UsageError("--finetune-epochs needs --data to train on")
    check_out_dir(out, overwrite=overwrite)
    if resume and not (stage / RUN_FILE).is_file():
        raise UsageError(f"--resume: nothing to resume, {stage} does not hold an interrupted run")
    if not resume and stage.exists():
        if not overwrite:
            raise UsageError(f"{stage} holds the work of an earlier failed run: pass --resume to continue it, "
                             f"or --overwrite to discard it")
        shutil.rmtree(stage)
    _pipeline.check_backends(validate_options.get("backends", ("ort-cpu",)))
    info = model_info(model)
    original = create_model(model, weights=weights, num_classes=num_classes)
    orig = dense_artifact("original", model, original, tuple(info.input_shape))
    from .guards import require_finite

    require_finite(original.state_dict().items(), f"{model} (--weights {weights})")
    if data is not None:
        from .data import describe_data

        _pipeline.check_data_fits(describe_data(data), data, orig.input_shape, {"original": logit_width(orig)})
    state = _read_run(stage) if resume else None
    if state is not None and (state.get("model"), state.get("weights")) != (model, weights):
        raise UsageError(f"--resume: {stage} is a run of {state.get('model')} with --weights {state.get('weights')}, "
                         f"not {model} with --weights {weights}")
    keep = state is not None
    try:
        if state is None:
            stage.mkdir(parents=True)
            say("compressing …")
            from .api import classifier_width

            served = next((p for p in ("int8", "fp16") if p in (validate_options.get("precisions") or ())), "fp32")
            result = planner.compress(original, format=format, rank=rank, input_shape=info.input_shape,
                                      model_name=model, num_classes=num_classes or classifier_width(original),
                                      precision=served, **(compress_options or {}))
            result.plan.options["weights"] = weights
            checkpoint.write_files(stage, result.model, plan=result.plan)
            state = {"stage": "compressed", "model": model, "weights": weights, "num_classes": num_classes,
                     "format": format, "rank": rank, "data": data}
            _write_run(stage, state)
            keep = True  # from here on the folder holds work worth resuming
        else:
            say(f"resuming the run in {stage} (stage: {state['stage']}; compression settings from its plan.json)")
        if finetune_cfg is not None and state["stage"] == "compressed":
            from .train import run

            run.finetune(stage, data=data, cfg=finetune_cfg, out=stage, progress=progress,
                         resume=(stage / "train_state.pt").is_file() and resume)
            state["stage"] = "finetuned"
            _write_run(stage, state)
        (stage / "train_state.pt").unlink(missing_ok=True)  # a finished fine-tuning has nothing to resume
        comp = resolve(stage, label="compressed")
        comp.source = str(out)
        with _pipeline.report_despite_gate(stage) as failed:
            report = _pipeline.validate_into(orig, comp, stage, data=data, progress=progress, **validate_options)
        publish_dir(stage, out)
    except BaseException:
        if not keep:
            shutil.rmtree(stage, ignore_errors=True)
        elif stage.exists():
            print(f"tdexport: the work so far is kept in {stage}; rerun the same command with --resume to "
                  f"continue from it (or --overwrite to start again)", file=sys.stderr, flush=True)
        raise
    if failed:
        raise failed[0]
    return report
