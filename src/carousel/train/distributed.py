"""Data-parallel training with ``torch.distributed``, launched by ``torchrun``.

``torchrun`` starts one process per worker and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` joins the process group from them (``gloo``
on CPU, ``nccl`` on CUDA). The loop then wraps the model in
``torch.nn.parallel.DistributedDataParallel``, gives each process its slice of every batch
(:meth:`carousel.tasks.Batch.shard`), and lets only rank 0 write checkpoints, metrics and plots.
Because each process's loss is a mean over its equal slice and DDP averages the gradients, an
update equals one process's update on the combined batch. See docs/training.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_reduce_mean", "barrier", "cleanup", "setup"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a data-parallel run.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes.
        local_rank: rank on this machine (selects the GPU).
        owns_group: whether :func:`setup` created the process group (and :func:`cleanup` ends
            it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_type: str = "cpu") -> DistInfo:
    """Join the process group described by torchrun's environment, if any.

    An existing process group (created by the caller) is used as is. Without one and without
    ``WORLD_SIZE > 1`` in the environment, training runs in a single process.

    Args:
        device_type: ``"cpu"`` (gloo) or ``"cuda"`` (nccl).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            dist.get_rank(),
            dist.get_world_size(),
            int(os.environ.get("LOCAL_RANK", dist.get_rank())),
            False,
        )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_available():  # pragma: no cover
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, True)


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``tensor`` over all processes (``tensor`` itself in a single process)."""
    if not info.enabled:
        return tensor
    t = tensor.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / info.world_size


def all_gather_tensor(tensor: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    """``tensor`` from every process (same shape on all), in rank order."""
    if not info.enabled:
        return [tensor]
    out = [torch.empty_like(tensor) for _ in range(info.world_size)]
    dist.all_gather(out, tensor.contiguous())
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    """End the process group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
