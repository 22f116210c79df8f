"""Several processes, one per GPU, on one node or many: the process group and the few
collectives the trainer needs.

    torchrun --nproc-per-node 8 -m byolctl pretrain --arch resnet50 --data /datasets/imagenet/train

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a no-op for a
single process. NCCL carries the tensors between GPUs (gloo on the CPU). A second, gloo group
carries the per-step control flags (stop, flush) on the CPU, so that deciding together never
waits on the GPU.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from byol.errors import UserError


@dataclass(frozen=True)
class Processes:
    """Where this process stands among the others."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, shows progress and writes files."""
        return self.rank == 0


_control_group = None


def setup(device_type: str) -> Processes:
    """Join the process group torchrun describes (once); a single process needs nothing."""
    global _control_group
    processes = Processes(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                          int(os.environ.get("LOCAL_RANK", 0)))
    if processes.enabled and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(processes.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        _control_group = dist.new_group(backend="gloo")
    return processes


def leave() -> None:
    """Leave the process group, if this process joined one. NCCL wants its communicators
    released before the process exits, and every rank must do so, or the others wait."""
    global _control_group
    if dist.is_initialized():
        dist.destroy_process_group()
        _control_group = None


def current() -> Processes:
    """This process's place, from an initialized process group (a single process otherwise)."""
    if not dist.is_initialized():
        return Processes()
    return Processes(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", 0)))


def share_from_main(value: Any) -> Any:
    """Rank 0's `value`, on every rank."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def decided_by_main(decide: Callable[[], Any]) -> Any:
    """What `decide()` returns on rank 0, on every rank; where it raises a UserError there,
    every rank raises it, so that all stop with rank 0's one-line message."""
    try:
        outcome = decide() if current().is_main else None
    except UserError as error:
        outcome = error
    outcome = share_from_main(outcome)
    if isinstance(outcome, UserError):
        raise outcome
    return outcome


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    if not dist.is_initialized():
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def gather_rows(tensor: torch.Tensor, rows_per_step: int = 16384) -> torch.Tensor:
    """The whole of a tensor whose rows are dealt out to the ranks as rows r, r + S, r + 2S, ...
    of S ranks (see `byol.data.labeled.Split.shard`), on every rank, rows back in their order.

    It moves `rows_per_step` rows of each share at a time, so that beside the result it needs
    S x that many rows, not a second copy of the whole (ImageNet's features are 10 GB).
    """
    if not dist.is_initialized():
        return tensor
    world = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.int64, device=tensor.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(tensor)], device=tensor.device))
    counts = [int(c) for c in counts]
    whole, longest = tensor.new_empty((sum(counts), *tensor.shape[1:])), max(counts)
    for start in range(0, longest, rows_per_step):
        stop = min(start + rows_per_step, longest)
        # all_gather moves tensors of one shape: each rank pads its piece to the longest's.
        piece = tensor.new_zeros((stop - start, *tensor.shape[1:]))
        piece[:max(0, min(len(tensor), stop) - start)] = tensor[start:stop]
        pieces = [torch.empty_like(piece) for _ in range(world)]
        dist.all_gather(pieces, piece)
        for rank, (received, count) in enumerate(zip(pieces, counts)):
            rows = max(0, min(count, stop) - start)
            # Row i of rank r's share is row r + i * S of the whole.
            whole[rank + start * world::world][:rows] = received[:rows]
    return whole


def mean_across_ranks_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the mean of `tensor` over all ranks (gloo has no AVG, so SUM then divide)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(dist.get_world_size())
    return tensor


def max_across_ranks_(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the maximum of `tensor` over all ranks, on its device (queued on a GPU: the
    host does not wait)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def any_rank(*flags: bool) -> list[bool]:
    """For each flag, whether it is set on any rank; on the CPU control group, so it never
    waits for the GPU."""
    if not dist.is_initialized():
        return list(flags)
    values = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    dist.all_reduce(values, op=dist.ReduceOp.MAX, group=_control_group)
    return [bool(v) for v in values.tolist()]
