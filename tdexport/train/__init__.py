"""Training: dense baselines, fine-tuning with distillation, ADMM low-rank-aware training, torchrun DDP.

`run` holds the commands (`train`, `finetune`, `admm`), `loop` the one training loop, `admm` the ADMM
state, `config` the settings and LR schedule, `dist` the torchrun plumbing.
"""

from .config import SCHEDULES, TrainConfig

__all__ = ["SCHEDULES", "TrainConfig"]
