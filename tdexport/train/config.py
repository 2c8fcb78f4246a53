"""Training settings and the learning-rate schedule (pure functions, no I/O)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import UsageError

SCHEDULES = ("cosine", "step", "onecycle")


@dataclass
class TrainConfig:
    """Everything that decides a training run's result (recorded in metrics.json).

    Attributes:
        epochs: passes over the training split.
        batch_size: images per optimizer step per process.
        lr: peak learning rate (after warm-up; onecycle's maximum).
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: L2 penalty on weights (not on biases and norm parameters).
        sched: ``cosine`` (to ``min_lr``), ``step`` (× ``decay_rate`` every ``decay_epochs``) or
            ``onecycle`` (30 % linear ramp from lr/25, cosine down to lr/1e4).
        warmup_epochs: linear warm-up from 0 (cosine, step), may be fractional.
        decay_epochs: step schedule period in epochs.
        decay_rate: step schedule factor.
        min_lr: cosine floor.
        label_smoothing: cross-entropy smoothing ε.
        mixup: mixup Beta(α, α) parameter; 0 disables.
        cutmix: cutmix Beta(α, α) parameter; 0 disables (with both on, each batch picks one).
        seed: seeds model init, data order, augmentation and mixing.
        workers: DataLoader worker processes.
        device: ``auto``, ``cpu`` or ``cuda`` (``cuda:N``).
        amp: mixed precision (only on CUDA; ignored on CPU).
        channels_last: NHWC memory format (only on CUDA).
        distill: None, ``hard`` (CE to the teacher's argmax) or ``soft`` (KL at temperature ``tau``).
        alpha: weight of the distillation term: loss = (1 − α)·task + α·distill.
        tau: distillation temperature.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    sched: str = "onecycle"
    warmup_epochs: float = 0.0
    decay_epochs: float = 30.0
    decay_rate: float = 0.1
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    distill: str | None = None
    alpha: float = 0.5
    tau: float = 1.0

    def validate(self) -> TrainConfig:
        """Check ranges; raise `UsageError` (exit 2) naming the bad option."""
        checks = [
            (self.epochs >= 1, f"--epochs must be ≥ 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be ≥ 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.sched in SCHEDULES, f"--sched must be one of {', '.join(SCHEDULES)}, got {self.sched!r}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.mixup >= 0 and self.cutmix >= 0, "--mixup and --cutmix must be ≥ 0"),
            (self.distill in (None, "hard", "soft"), f"--distill must be hard or soft, got {self.distill!r}"),
            (0 <= self.alpha <= 1, f"--alpha must be in [0, 1], got {self.alpha}"),
            (self.tau > 0, f"--tau must be > 0, got {self.tau}"),
            (self.decay_epochs > 0 and self.decay_rate > 0, "--decay-epochs and --decay-rate must be > 0"),
            # torch.manual_seed takes what fits a 64-bit integer; beyond it, it fails with an OverflowError
            (-(2**63) <= self.seed < 2**64 - 2**32, f"--seed must be in [-2**63, 2**64 - 2**32), got {self.seed}"),
            (self.workers >= 0, f"--workers must be ≥ 0, got {self.workers}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        return self

    def to_dict(self) -> dict:
        """JSON-ready copy."""
        return asdict(self)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of a run of ``cfg.epochs`` epochs.

    Per-step (not per-epoch) so short fine-tunes of a few epochs still anneal smoothly.
    """
    total = max(1, cfg.epochs * steps_per_epoch)
    t = min(step, total - 1) / total  # progress in [0, 1)
    if cfg.sched == "onecycle":
        peak, start, end = 0.3, cfg.lr / 25.0, cfg.lr / 1e4
        if t < peak:
            return start + (cfg.lr - start) * t / peak
        return end + (cfg.lr - end) * 0.5 * (1 + math.cos(math.pi * (t - peak) / (1 - peak)))
    warm = cfg.warmup_epochs / cfg.epochs
    if t < warm:
        return cfg.lr * (step + 1) / max(1.0, cfg.warmup_epochs * steps_per_epoch)
    if cfg.sched == "cosine":
        u = (t - warm) / max(1e-12, 1 - warm)
        return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * u))
    epoch = step / steps_per_epoch
    return cfg.lr * cfg.decay_rate ** math.floor(epoch / cfg.decay_epochs)
