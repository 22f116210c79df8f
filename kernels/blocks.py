"""A block table for many tensors stored back to back in one flat buffer.

A kernel that covers every tensor in one launch gives each program one block: up to
`block_size` consecutive elements of a single tensor. The table tells a program where its block
starts, which tensor it belongs to, and where that tensor ends, and gives per-tensor facts (its
range of blocks, a flag). It is built once, on the host, and then lives on the device.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class BlockTable:
    """Device-side map from blocks of a flat buffer to the tensors laid out in it."""

    block_size: int
    block_start: Tensor         # (blocks,) int64: flat index of each block's first element
    block_tensor: Tensor        # (blocks,) int32: index of the tensor the block belongs to
    tensor_end: Tensor          # (tensors,) int64: flat index one past each tensor's end
    tensor_first_block: Tensor  # (tensors,) int32: index of each tensor's first block
    tensor_blocks: Tensor       # (tensors,) int32: number of blocks of each tensor
    tensor_flag: Tensor         # (tensors,) int32: a per-tensor flag, 0 or 1
    numel: int                  # elements covered: the sum of the tensors' sizes

    @property
    def num_blocks(self) -> int:
        return self.block_start.numel()


def block_table(numels: Sequence[int], flags: Sequence[bool], block_size: int,
                device: torch.device | str) -> BlockTable:
    """The table for tensors of `numels` elements stored back to back from flat index 0.

    `flags` marks tensors (for LARS: the ones excluded from weight decay and trust scaling).
    Empty tensors get no blocks.
    """
    if len(numels) != len(flags):
        raise ValueError(f"{len(numels)} tensor sizes but {len(flags)} flags")
    block_start, block_tensor, tensor_end, first_block, blocks = [], [], [], [], []
    offset = 0
    for index, numel in enumerate(numels):
        count = -(-numel // block_size)
        first_block.append(len(block_start))
        blocks.append(count)
        block_start.extend(range(offset, offset + numel, block_size))
        block_tensor.extend([index] * count)
        offset += numel
        tensor_end.append(offset)

    def on_device(values, dtype):
        return torch.tensor(values, dtype=dtype).to(device)

    return BlockTable(
        block_size=block_size,
        block_start=on_device(block_start, torch.int64),
        block_tensor=on_device(block_tensor, torch.int32),
        tensor_end=on_device(tensor_end, torch.int64),
        tensor_first_block=on_device(first_block, torch.int32),
        tensor_blocks=on_device(blocks, torch.int32),
        tensor_flag=on_device([int(f) for f in flags], torch.int32),
        numel=offset,
    )
