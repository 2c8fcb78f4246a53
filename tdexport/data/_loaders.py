"""Seeded, resumable data loaders: a per-epoch shuffle that depends only on ``(seed, epoch)``."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    import torch

# torch.Generator.manual_seed takes [-2**63, 2**64); the per-epoch seed is seed + epoch, so leave room for epochs.
_SEEDS = range(-(2**63), 2**64 - 2**32)


class _EpochShuffle:
    """Random order of ``range(n)`` that depends only on ``(seed, epoch)``, like DistributedSampler's.

    Seeding per epoch, rather than drawing from one running generator, lets a resumed run reproduce epoch
    k's order without replaying epochs ``0 .. k-1``. The epoch advances after each pass, so forgetting
    `set_loader_epoch` still gives a fresh order each epoch.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use ``epoch``'s order."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Any:
        import torch

        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return iter(torch.randperm(self.n, generator=g).tolist())


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def make_loader(
    dataset: Any,
    *,
    batch_size: int,
    train: bool,
    workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    drop_last: bool | None = None,
) -> torch.utils.data.DataLoader:
    """Wrap ``dataset`` in a DataLoader yielding ``(images (B, 3, H, W) float32, labels (B,) int64)``.

    Args:
        dataset: a map-style dataset such as `DataBundle.train`.
        batch_size: images per batch (per process when distributed).
        train: shuffle, in an order fixed by ``(seed, epoch)`` (see `set_loader_epoch`); else keep dataset order.
        workers: loader worker processes (persistent when > 0); 0 loads in the calling process.
        seed: seeds the shuffle and the workers' RNGs (random augmentation); ``-2**63 <= seed < 2**64 - 2**32``.
        distributed: shard with ``DistributedSampler(shuffle=train, seed=seed)``; needs an initialised process
            group. The caller must call `set_loader_epoch` every epoch, or each epoch repeats one order.
        drop_last: drop a final partial batch; default ``train``, since BatchNorm fails on a batch of one,
            unless that would leave no batch at all.

    Raises:
        UsageError: ``batch_size``, ``workers`` or ``seed`` is not an integer in range.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    if not (_is_int(batch_size) and _is_int(workers) and batch_size >= 1 and workers >= 0):
        raise UsageError(f"batch size must be an integer >= 1 and workers >= 0, got {batch_size!r} and {workers!r}")
    if not (_is_int(seed) and int(seed) in _SEEDS):
        raise UsageError(f"seed must be an integer in [-2**63, 2**64 - 2**32), got {seed!r}")
    sampler: Any = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=train, seed=seed)
    elif train:
        sampler = _EpochShuffle(len(dataset), seed)
    if drop_last is None:
        drop_last = train and len(sampler if sampler is not None else dataset) >= batch_size
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Set the epoch (0-based) whose shuffle order ``loader``'s next pass uses; no-op for unshuffled loaders.

    Call it at the start of every epoch, including the first after a resume, so that both plain and
    distributed loaders give the same order as an uninterrupted run.
    """
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
