"""The one training loop behind ``train``, ``finetune`` and ``admm``.

Per epoch: SGD over the training split (mixup/cutmix, label smoothing, optional distillation from a
teacher, optional ADMM penalty), top-1 on the test split, then an atomic checkpoint of the model (the
user-facing files, written by the caller's ``save``), ``train_state.pt`` (optimizer, scheduler,
scaler, epoch, RNG, ADMM state: everything ``--resume`` needs to continue bit-exactly on CPU),
``metrics.json`` and a line in ``train.log``. Only rank 0 writes under torchrun.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import atomic_write
from ..data import set_loader_epoch
from ..errors import UsageError
from . import dist
from .admm import Admm
from .config import TrainConfig, lr_at

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.json"
LOG_FILE = "train.log"


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # Decay only weight matrices/kernels: decaying BN scales and biases hurts short fine-tunes.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _mix(images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup or cutmix a batch; returns (images, partner labels, λ = weight of the original labels)."""
    modes = [m for m, a in (("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if a > 0]
    if not modes:
        return images, labels, 1.0
    mode = modes[int(torch.randint(len(modes), ()).item())]
    alpha = cfg.mixup if mode == "mixup" else cfg.cutmix
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    perm = torch.randperm(images.shape[0], device="cpu").to(images.device)
    if mode == "mixup":
        return lam * images + (1 - lam) * images[perm], labels[perm], lam
    h, w = images.shape[-2:]
    ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
    cy, cx = int(torch.randint(h, ()).item()), int(torch.randint(w, ()).item())
    y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
    images = images.clone()
    images[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
    return images, labels[perm], 1 - (y1 - y0) * (x1 - x0) / (h * w)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, tau: float) -> torch.Tensor:
    """Distillation term: ``hard`` = CE to the teacher's argmax; ``soft`` = τ²·KL(teacher_τ ‖ student_τ).

    Args:
        student: logits (N, K).
        teacher: logits (N, K), no gradient.
        kind: ``hard`` or ``soft``.
        tau: temperature for ``soft``.
    """
    if kind == "hard":
        return F.cross_entropy(student, teacher.argmax(1))
    return F.kl_div(F.log_softmax(student / tau, 1), F.log_softmax(teacher / tau, 1), reduction="batchmean",
                    log_target=True) * tau * tau


@torch.no_grad()
def evaluate_top1(model: nn.Module, loader, device: torch.device, *, channels_last: bool = False,
                  classes: Sequence[int] | None = None) -> float:
    """Top-1 accuracy in percent of ``model`` over ``loader`` (images (N, C, H, W), labels (N,)).

    ``classes``: the label-space indices a data set covers (an ImageNet-1k subset); the prediction is the
    best of those logits only, as `tdexport.validate.accuracy.evaluate` scores it.
    """
    was_training = model.training
    model.eval()
    correct = total = 0
    columns = torch.as_tensor(list(classes), dtype=torch.long) if classes is not None else None
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images).float().cpu()
        pred = logits.argmax(1) if columns is None else columns[logits[:, columns].argmax(1)]
        correct += int((pred == labels).sum())
        total += labels.numel()
    model.train(was_training)
    return 100.0 * correct / max(total, 1)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_epoch(loader, seed: int, epoch: int) -> None:
    # Each epoch's order depends only on (seed, epoch), so a resumed run shuffles like an unbroken one;
    # the loader's own generator also seeds worker RNGs (augmentation), so it is reset per epoch too.
    set_loader_epoch(loader, epoch)
    gen = getattr(loader, "generator", None)
    if gen is not None:
        gen.manual_seed(seed * 100_003 + epoch)


def fit(
    model: nn.Module,
    train_loader,
    test_loader,
    cfg: TrainConfig,
    out: str | Path,
    *,
    save: Callable[[nn.Module], None],
    ctx: dist.DistContext,
    teacher: nn.Module | None = None,
    admm: Admm | None = None,
    admm_every: int = 100,
    resume: bool = False,
    progress: bool = True,
    extra_metrics: dict | None = None,
    classes: Sequence[int] | None = None,
) -> dict:
    """Train ``model`` in place for ``cfg.epochs`` epochs and return the metrics written to metrics.json.

    Args:
        model: the model to train, already on ``ctx.device``.
        train_loader: training batches (images (N, C, H, W) float32, labels (N,) int64).
        test_loader: test/val batches, evaluated every epoch on rank 0 (top-1 in percent).
        cfg: settings (see `TrainConfig`).
        out: run directory (created); gets train_state.pt, metrics.json, train.log.
        save: writes the user-facing checkpoint of the (unwrapped) model into ``out``; called on rank 0.
        ctx: process placement from `dist.setup`.
        teacher: distillation teacher (frozen, eval mode) when ``cfg.distill`` is set.
        admm: ADMM state whose penalty is added to the loss and which is updated every ``admm_every`` steps.
        admm_every: optimizer steps between ADMM updates.
        resume: continue from ``out/train_state.pt``.
        progress: show a progress bar per epoch (rank 0, on a terminal).
        extra_metrics: merged into metrics.json (e.g. the command and its options).
        classes: label-space indices the test data covers (see `evaluate_top1`); None: all of them.

    Returns:
        ``{"epochs": [{epoch, train_loss, test_top1, lr, seconds, images_per_s, …}], "final_test_top1", …}``.
    """
    out = Path(out)
    dev = ctx.device
    on_cuda = dev.type == "cuda"
    amp = cfg.amp and on_cuda
    channels_last = cfg.channels_last and on_cuda
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.distill and teacher is None:
        raise UsageError(f"--distill {cfg.distill} needs a teacher model")
    net = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if on_cuda else None)
    steps_per_epoch = len(train_loader)
    opt = torch.optim.SGD(_param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                          nesterov=cfg.nesterov and cfg.momentum > 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(cfg, s, steps_per_epoch) / cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    metrics = {"epochs": [], "final_test_top1": None, "config": cfg.to_dict(), **(extra_metrics or {})}
    start_epoch, step = 0, 0
    state_path = out / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise UsageError(f"--resume: no {STATE_FILE} in {out} to resume from")
        state = torch.load(state_path, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if admm is not None:
            admm.load_state_dict(state["admm"])
        start_epoch, step, metrics = int(state["epoch"]), int(state["step"]), json.loads(state["metrics"])
        _set_rng_state(state["rng"])
    elif ctx.is_main and state_path.exists():
        raise UsageError(f"{out} already holds a training run ({STATE_FILE}); pass --resume or another --out")
    log = out / LOG_FILE

    def checkpoint(epoch: int) -> None:
        if not ctx.is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        save(model)
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "scaler": scaler.state_dict(), "epoch": epoch, "step": step, "rng": _rng_state(),
                 "metrics": json.dumps(metrics)}
        if admm is not None:
            state["admm"] = admm.state_dict()
        atomic_write(state_path, lambda p: torch.save(state, p))
        text = json.dumps(metrics, indent=2) + "\n"
        atomic_write(out / METRICS_FILE, lambda p: p.write_text(text))

    if not resume:
        checkpoint(0)  # Ctrl-C during the first epoch still leaves something to resume from
    dist.barrier(ctx)
    show = progress and ctx.is_main and sys.stderr.isatty()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            _seed_epoch(train_loader, cfg.seed, epoch)
            net.train()
            t0, seen, loss_sum = time.perf_counter(), 0, 0.0
            batches = train_loader
            if show:
                from tqdm import tqdm

                batches = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, unit="batch")
            for images, labels in batches:
                images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                images, partner, lam = _mix(images, labels, cfg)
                with torch.autocast(dev.type, enabled=amp):
                    logits = net(images)
                    task = lam * F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
                    if lam < 1.0:
                        task = task + (1 - lam) * F.cross_entropy(logits, partner,
                                                                  label_smoothing=cfg.label_smoothing)
                    loss = task
                    if teacher is not None and cfg.distill:
                        with torch.no_grad():
                            t_logits = teacher(images)
                        kd = distill_loss(logits.float(), t_logits.float(), cfg.distill, cfg.tau)
                        loss = (1 - cfg.alpha) * task + cfg.alpha * kd
                if admm is not None:
                    loss = loss + admm.penalty()
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                if admm is not None and step % admm_every == 0:
                    admm.update(step)
                if not torch.isfinite(loss):
                    raise UsageError(f"training diverged at epoch {epoch + 1}, step {step} (loss {float(loss)}); "
                                     f"lower --lr (now {cfg.lr})")
                loss_sum += float(task.detach()) * labels.numel()
                seen += labels.numel()
                if show:
                    batches.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{sched.get_last_lr()[0]:.4g}")
            seconds = time.perf_counter() - t0
            train_loss = dist.all_mean(ctx, loss_sum / max(seen, 1))
            row = {"epoch": epoch + 1, "train_loss": train_loss, "test_top1": None,
                   "lr": sched.get_last_lr()[0], "seconds": seconds,
                   "images_per_s": seen * ctx.world_size / seconds}
            if admm is not None:
                row["admm_mean_gap"] = sum(admm.gaps().values()) / len(admm.targets)
            if ctx.is_main:
                row["test_top1"] = evaluate_top1(model, test_loader, dev, channels_last=channels_last,
                                                  classes=classes)
                metrics["epochs"].append(row)
                metrics["final_test_top1"] = row["test_top1"]
                if admm is not None:
                    metrics["admm_history"] = admm.history
                message = (f"epoch {epoch + 1}/{cfg.epochs}  loss {train_loss:.4f}  test top-1 "
                           f"{row['test_top1']:.2f}%  lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s"
                           + (f"  admm gap {row['admm_mean_gap']:.4f}" if admm is not None else ""))
                print(message, file=sys.stderr, flush=True)
                out.mkdir(parents=True, exist_ok=True)
                with log.open("a") as fh:
                    fh.write(message + "\n")
            checkpoint(epoch + 1)
            dist.barrier(ctx)
    except KeyboardInterrupt:
        if ctx.is_main:
            print(f"\ninterrupted: {out} holds a resumable checkpoint; rerun the same command with --resume",
                  file=sys.stderr)
        raise
    return metrics
