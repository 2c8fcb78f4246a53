"""Worker for the DDP tests in tests/test_train.py: ``torchrun --nproc_per_node 2 tests/ddp_step.py WORK``.

Every rank does two things, each through tdexport's own code paths:

1. One optimizer step of `tdexport.train.loop.fit` on its `DistributedSampler` shard of a fixed batch
   (`dist.setup`, `make_loader(distributed=True)`, fit's DDP wrap). The model has no BatchNorm, so a
   rank's forward pass depends only on its own images and the mean of the ranks' mean gradients is exactly
   the gradient of the whole batch's mean loss: the result must equal one single-process step on the
   concatenated batch. fit's run directory is per rank (``WORK/step-rank{R}``), so anything rank 1 writes
   would appear; the replica's weights after the step go to ``WORK/replica-rank{R}.pt`` (written here, by
   the harness, not by fit).
2. ``tdexport train resnet20 --data digits --epochs 2 …`` through the CLI entry point, again with a per-rank
   ``--out WORK/run-rank{R}``; the process exits with the CLI's exit code.

The test imports `tiny_model`, `fixed_batch` and `step_config` from this file to compute the single-process
reference, so both sides build the same model, data and settings.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from torch import nn

BATCH_PER_RANK = 8
WORLD = 2


def tiny_model() -> nn.Module:
    """A BatchNorm-free conv net for 3×8×8 inputs, 10 classes, with fixed initial weights."""
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 10))


def fixed_batch() -> torch.utils.data.TensorDataset:
    """``WORLD × BATCH_PER_RANK`` images (3, 8, 8) and labels, the same on every call and in every process."""
    gen = torch.Generator().manual_seed(99)
    n = WORLD * BATCH_PER_RANK
    return torch.utils.data.TensorDataset(torch.randn(n, 3, 8, 8, generator=gen),
                                          torch.randint(0, 10, (n,), generator=gen))


def step_config(batch_size: int):
    """One epoch, momentum, Nesterov and weight decay on; cosine without warm-up, so step 0 runs at ``lr``."""
    from tdexport.train import TrainConfig

    return TrainConfig(epochs=1, batch_size=batch_size, lr=0.2, sched="cosine", device="cpu", seed=3)


def main() -> None:
    from tdexport.cli import main as cli_main
    from tdexport.data import make_loader
    from tdexport.train import dist
    from tdexport.train.loop import fit

    work = Path(sys.argv[1])
    ctx = dist.setup("cpu")
    rank = ctx.rank
    assert ctx.world_size == WORLD == int(os.environ["WORLD_SIZE"])
    model = tiny_model()
    data = fixed_batch()
    cfg = step_config(BATCH_PER_RANK)
    train = make_loader(data, batch_size=cfg.batch_size, train=True, seed=cfg.seed, distributed=ctx.enabled)
    test = make_loader(data, batch_size=len(data), train=False)
    out = work / f"step-rank{rank}"
    fit(model, train, test, cfg, out, save=lambda m: torch.save(m.state_dict(), out / "weights.pt"), ctx=ctx,
        progress=False)
    torch.save(model.state_dict(), work / f"replica-rank{rank}.pt")
    cli_main(["train", "resnet20", "--data", "digits", "--epochs", "2", "--batch-size", "128", "--device", "cpu",
              "--out", str(work / f"run-rank{rank}"), "-q"])


if __name__ == "__main__":
    main()
