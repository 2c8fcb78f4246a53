"""The training commands as Python functions: `train`, `finetune`, `admm` (the CLI calls these).

Each writes a run directory loadable with ``tdexport.load(DIR)`` and usable as ``--weights DIR``:
dense runs hold model.safetensors + model.json, compressed ones compressed.safetensors + plan.json;
all hold metrics.json (``epochs``: [{epoch, train_loss, test_top1, …}], ``final_test_top1``),
train_state.pt (for ``--resume``) and train.log.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint
from ..api import classifier_width
from ..data import DataBundle, load_data, make_loader
from ..errors import UsageError
from ..plan import Plan, normalise_format
from ..planner import compress
from ..zoo import create_model, model_info
from . import dist
from .admm import Admm
from .config import TrainConfig
from .loop import evaluate_top1, fit


def _loaders(data: DataBundle, cfg: TrainConfig, ctx: dist.DistContext):
    train = make_loader(data.train, batch_size=cfg.batch_size, train=True, workers=cfg.workers, seed=cfg.seed,
                        distributed=ctx.enabled)
    test = make_loader(data.test, batch_size=max(cfg.batch_size, 256), train=False, workers=cfg.workers)
    return train, test


def _prepare(cfg: TrainConfig, data: str | DataBundle, download: bool) -> tuple[dist.DistContext, DataBundle]:
    cfg.validate()
    ctx = dist.setup(cfg.device)
    torch.manual_seed(cfg.seed)
    bundle = data if isinstance(data, DataBundle) else load_data(data, download=download)
    return ctx, bundle


def _check_classes(model: nn.Module, data: DataBundle, what: str) -> None:
    width = classifier_width(model)
    if width != data.num_classes:
        raise UsageError(f"{what} has {width} outputs but {data.name} has {data.num_classes} classes; "
                         f"pass --num-classes {data.num_classes} or a matching dataset")


def train(model_name: str, *, data: str | DataBundle, cfg: TrainConfig, out: str | Path, weights: str = "random",
          num_classes: int | None = None, download: bool = False, resume: bool = False,
          progress: bool = True) -> dict:
    """Train a zoo model (dense baseline) on ``data``; returns the metrics.

    Args:
        model_name: zoo name, e.g. ``resnet20``.
        data: data spec (``digits``, ``cifar10:DIR``, …) or a loaded `DataBundle`.
        cfg: training settings.
        out: run directory.
        weights: starting weights (``random``, ``default`` or a checkpoint path/dir).
        num_classes: classifier width; default: the dataset's class count.
        download: allow torchvision to download CIFAR.
        resume: continue an interrupted run in ``out``.
        progress: progress bars.
    """
    ctx, bundle = _prepare(cfg, data, download)
    model = create_model(model_name, weights=weights, num_classes=num_classes or bundle.num_classes)
    _check_classes(model, bundle, model_name)
    model.to(ctx.device)
    meta = {"model": model_name, "num_classes": num_classes or bundle.num_classes,
            "input_shape": list(bundle.input_shape), "data": bundle.name}

    def save(m: nn.Module) -> None:
        checkpoint.write_files(out, m, meta=meta)

    train_loader, test_loader = _loaders(bundle, cfg, ctx)
    try:
        return fit(model, train_loader, test_loader, cfg, out, save=save, ctx=ctx, resume=resume, progress=progress,
                   classes=bundle.classes_present,
                   extra_metrics={"command": "train", "model": model_name, "data": bundle.name})
    finally:
        dist.teardown(ctx)


def _teacher(plan: Plan, teacher: str | None, teacher_weights: str | None, device: torch.device) -> nn.Module:
    name = teacher or plan.model
    weights = teacher_weights or plan.options.get("weights") or "default"
    if weights == "random":
        raise UsageError("distillation needs a trained teacher: pass --teacher-weights PATH|DIR "
                         "(the compressed model was made from random weights)")
    model = create_model(name, weights=weights, num_classes=plan.num_classes)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval()


def finetune(directory: str | Path, *, data: str | DataBundle, cfg: TrainConfig, out: str | Path,
             teacher: str | None = None, teacher_weights: str | None = None, download: bool = False,
             resume: bool = False, progress: bool = True) -> dict:
    """Fine-tune a compressed checkpoint (``tdexport compress`` output) and write it, plan beside weights.

    Args:
        directory: compressed checkpoint directory.
        data: data spec or `DataBundle`.
        cfg: training settings; ``cfg.distill`` (hard|soft) turns on distillation.
        out: run directory (may equal ``directory`` only with ``resume``).
        teacher: teacher zoo name (default: the plan's model).
        teacher_weights: teacher weights (default: the weights the plan was compressed from).
        download: allow torchvision to download CIFAR.
        resume: continue an interrupted run in ``out``.
        progress: progress bars.

    Returns:
        metrics, with ``start_test_top1`` (accuracy before fine-tuning).
    """
    ctx, bundle = _prepare(cfg, data, download)
    model, plan = checkpoint.load(directory)
    if plan is None:
        raise UsageError(f"{directory} holds a dense model; finetune takes a compressed checkpoint "
                         "(tdexport compress … --out DIR); use tdexport train for dense models")
    _check_classes(model, bundle, str(directory))
    model.to(ctx.device)
    tmodel = _teacher(plan, teacher, teacher_weights, ctx.device) if cfg.distill else None
    train_loader, test_loader = _loaders(bundle, cfg, ctx)
    classes = bundle.classes_present
    start = evaluate_top1(model, test_loader, ctx.device, classes=classes) if ctx.is_main and not resume else None

    def save(m: nn.Module) -> None:
        checkpoint.write_files(out, m, plan=plan)

    extra = {"command": "finetune", "model": plan.model, "data": bundle.name, "source": str(directory)}
    if start is not None:
        extra["start_test_top1"] = start
    try:
        return fit(model, train_loader, test_loader, cfg, out, save=save, ctx=ctx, teacher=tmodel, classes=classes,
                   resume=resume, progress=progress, extra_metrics=extra)
    finally:
        dist.teardown(ctx)


def admm(model_name: str, *, format: str, rank: str, data: str | DataBundle, cfg: TrainConfig, out: str | Path,
         rho: float = 1e-3, rho_final: float | None = None, admm_every: int = 100, weights: str = "random",
         num_classes: int | None = None, download: bool = False, resume: bool = False, progress: bool = True,
         **compress_options) -> dict:
    """TDC's ADMM low-rank-aware training, then decomposition at the planned ranks.

    The ranks come from compressing the starting model with ``format``/``rank`` (the plan); training
    pulls each planned layer towards its rank set; at the end the trained dense weights are decomposed
    with the same plan (replayed) and written as a compressed checkpoint ready for ``finetune``. The
    trained dense model is kept in ``out/dense``.

    Args:
        model_name: zoo name.
        format: ``tucker`` (Tucker-2), ``tt`` (TT-SVD, 3 cores; ``tt_type="general"`` in ``compress_options`` for
            the general TT), ``ht2`` or ``svd`` (1×1 convs and Linear).
        rank: rank rule (``ratio:0.5``, ``vbmf``, …).
        data: data spec or `DataBundle`.
        cfg: training settings.
        out: run directory.
        rho: penalty weight ρ.
        rho_final: grow ρ geometrically to this by the end (default: constant).
        admm_every: optimizer steps between Z/U updates.
        weights: starting weights of the dense model.
        num_classes: classifier width (default: the dataset's).
        download: allow torchvision to download CIFAR.
        resume: continue an interrupted run.
        progress: progress bars.
        **compress_options: passed to `tdexport.plan.compress` (round_to, layers, exclude, …).

    Returns:
        metrics, with ``admm_history`` (projection gaps per update), ``decomposed_test_top1`` and
        ``plain_decomposed_test_top1`` (the starting weights decomposed at the same ranks, for comparison),
        and ``rel_error``: per decomposed layer ``{"start": e0, "final": e1}``, the relative reconstruction
        error ‖W − Ŵ‖_F / ‖W‖_F of the plan's decomposition of the starting weights (e0) and of the trained
        weights (e1) at the same ranks; lowering it is what ADMM is for.
    """
    if normalise_format(format) in ("cp", "reorder"):
        raise UsageError(f"admm supports --format tucker, tt (special or general), ht2 or svd, not {format!r}: "
                         "cp has no closed-form projection and reorder has no rank set")
    if rho <= 0 or admm_every < 1:
        raise UsageError(f"--rho must be > 0 and --admm-every ≥ 1 (got {rho}, {admm_every})")
    ctx, bundle = _prepare(cfg, data, download)
    classes = num_classes or bundle.num_classes
    model = create_model(model_name, weights=weights, num_classes=classes)
    _check_classes(model, bundle, model_name)
    shape = list(model_info(model_name).input_shape)
    start = compress(model, format=format, rank=rank, input_shape=shape, model_name=model_name,
                     num_classes=classes, **compress_options)
    model.to(ctx.device)
    train_loader, test_loader = _loaders(bundle, cfg, ctx)
    updates = math.ceil(cfg.epochs * len(train_loader) / admm_every)
    state = Admm(model, start.plan, rho=rho, rho_final=rho_final, total_updates=updates)
    dense_dir = Path(out) / "dense"
    meta = {"model": model_name, "num_classes": classes, "input_shape": shape, "data": bundle.name}

    def save(m: nn.Module) -> None:
        checkpoint.write_files(dense_dir, m, meta=meta)

    extra = {"command": "admm", "model": model_name, "data": bundle.name, "format": format, "rank": rank,
             "rho": rho, "rho_final": rho_final, "admm_every": admm_every}
    try:
        metrics = fit(model, train_loader, test_loader, cfg, out, save=save, ctx=ctx, admm=state,
                      classes=bundle.classes_present,
                      admm_every=admm_every, resume=resume, progress=progress, extra_metrics=extra)
        if ctx.is_main:
            trained = copy.deepcopy(model).to("cpu").eval()
            final = compress(trained, rank=start.plan, format=format, input_shape=shape, model_name=model_name,
                             num_classes=classes, **compress_options)
            final.plan.options["weights"] = str(dense_dir)
            metrics["decomposed_test_top1"] = evaluate_top1(final.model.to(ctx.device), test_loader, ctx.device,
                                                            classes=bundle.classes_present)
            metrics["plain_decomposed_test_top1"] = evaluate_top1(start.model.to(ctx.device), test_loader,
                                                                  ctx.device, classes=bundle.classes_present)
            metrics["admm_history"] = state.history
            start_error = {e.name: e.rel_error for e in start.plan.layers if e.decision == "decomposed"}
            metrics["rel_error"] = {e.name: {"start": start_error[e.name], "final": e.rel_error}
                                    for e in final.plan.layers if e.decision == "decomposed"}
            checkpoint.write_files(out, final.model, plan=final.plan)
            checkpoint.atomic_write(Path(out) / "metrics.json",
                                    lambda p: p.write_text(json.dumps(metrics, indent=2) + "\n"))
        return metrics
    finally:
        dist.teardown(ctx)
