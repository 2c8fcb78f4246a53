"""torchrun / DistributedDataParallel plumbing: one process per device, rank 0 writes.

Under ``torchrun --nproc_per_node N -m tdexport …`` the environment carries RANK, WORLD_SIZE and
LOCAL_RANK; without them everything runs in a single process and these helpers are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import BackendUnavailable


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, on ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        """True when running under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints."""
        return self.rank == 0


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when available else CPU; ``cuda`` without CUDA → `BackendUnavailable` (exit 4)."""
    spec = spec.lower()
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendUnavailable(f"--device {spec}: CUDA is not available here (torch {torch.__version__}, "
                                     f"built with CUDA {torch.version.cuda}); use --device cpu")
        return torch.device(spec if ":" in spec else f"cuda:{local_rank}")
    if spec != "cpu":
        raise BackendUnavailable(f"unknown --device {spec!r}: use auto, cpu or cuda")
    return torch.device("cpu")


def setup(device: str = "auto") -> DistContext:
    """Join the torchrun process group when launched by torchrun (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistContext(rank, world, local, dev)


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op when single-process)."""
    if ctx.enabled:
        dist.barrier()


def all_mean(ctx: DistContext, value: float) -> float:
    """Mean of a scalar over processes."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t) / ctx.world_size


def teardown(ctx: DistContext) -> None:
    """Leave the process group."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
