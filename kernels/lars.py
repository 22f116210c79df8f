"""Fused LARS step over every parameter tensor in two launches, whatever the tensor count.

For each tensor w with gradient g and momentum mu (the official BYOL variant; see
`reference.lars_step_`):
    u = g + wd * w;  trust = eta * ||w|| / ||u|| (1 where either norm is 0)
    mu <- momentum * mu + trust * u;  w <- w - lr * mu
Tensors flagged in the block table (biases, normalization parameters) get neither the weight
decay nor the trust scaling. With `clip`, trust <- min(trust / lr, 1) (see the reference).

Launch 1 (norms): each program sums w^2 and u^2 over its block and stores the two partial
sums in its own slot. Launch 2 (update): each program adds up its tensor's partials in a fixed
order - deterministic, with no atomics - then updates its block. Parameters, gradients and
momenta are flat buffers that share one layout; lr, wd, momentum and eta are runtime
arguments, so no step recompiles or waits on the host. Traffic: 8 bytes per fp32 parameter in
the first launch, 20 in the second. An optional device flag `skip` (set when the step's loss or
gradients were not finite) makes the update launch write nothing, without a host read.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

from kernels.blocks import BlockTable, block_table

# Elements per block: large blocks keep the partial sums short (ResNet-50's 8.4M-element
# projector weight is 1,024 blocks), and ~4,300 blocks still fill every SM many times over.
# A starting point to tune on the GPU with benchmarks/bench_kernels.py.
BLOCK = 8192
NUM_WARPS = 8
# Partials summed per iteration of the update kernel's reduction loop.
REDUCE = 256


@triton.jit
def _block_location(block_start_ptr, block_tensor_ptr, tensor_end_ptr, BLOCK: tl.constexpr):
    """This program's block: its tensor index, element offsets, and mask."""
    block = tl.program_id(0)
    tensor = tl.load(block_tensor_ptr + block)
    offsets = tl.load(block_start_ptr + block) + tl.arange(0, BLOCK)
    return block, tensor, offsets, offsets < tl.load(tensor_end_ptr + tensor)


@triton.jit
def _norms_kernel(
    params_ptr,        # (n,) in: parameters, flat
    grads_ptr,         # (n,) in: gradients, flat, same layout
    block_start_ptr,   # (blocks,) int64: first element of each block
    block_tensor_ptr,  # (blocks,) int32: tensor of each block
    tensor_end_ptr,    # (tensors,) int64: one past each tensor's last element
    excluded_ptr,      # (tensors,) int32: 1 = no weight decay, no trust scaling
    partial_ptr,       # (2, blocks) fp32 out: per-block sums of w^2 (row 0) and u^2 (row 1)
    num_blocks,
    weight_decay,
    BLOCK: tl.constexpr,
):
    block, tensor, offsets, mask = _block_location(block_start_ptr, block_tensor_ptr,
                                                   tensor_end_ptr, BLOCK)
    w = tl.load(params_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(grads_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    decay = tl.where(tl.load(excluded_ptr + tensor) != 0, 0.0, weight_decay)
    u = g + decay * w
    tl.store(partial_ptr + block, tl.sum(w * w))
    tl.store(partial_ptr + num_blocks + block, tl.sum(u * u))


@triton.jit
def _update_kernel(
    params_ptr,        # (n,) in/out: parameters, flat
    grads_ptr,         # (n,) in: gradients, flat, same layout
    momenta_ptr,       # (n,) in/out: momentum buffers, flat, same layout
    block_start_ptr,   # (blocks,) int64: first element of each block
    block_tensor_ptr,  # (blocks,) int32: tensor of each block
    tensor_end_ptr,    # (tensors,) int64: one past each tensor's last element
    first_block_ptr,   # (tensors,) int32: first block of each tensor
    tensor_blocks_ptr,  # (tensors,) int32: number of blocks of each tensor
    excluded_ptr,      # (tensors,) int32: 1 = no weight decay, no trust scaling
    partial_ptr,       # (2, blocks) fp32 in: the norms kernel's partial sums
    skip_ptr,          # () int32 in: nonzero = leave params and momenta untouched (HAS_SKIP)
    num_blocks,
    lr, weight_decay, momentum, eta,
    CLIP: tl.constexpr,  # rate = min(trust, lr) instead of lr * trust
    HAS_SKIP: tl.constexpr,
    BLOCK: tl.constexpr, REDUCE: tl.constexpr,
):
    _, tensor, offsets, mask = _block_location(block_start_ptr, block_tensor_ptr,
                                               tensor_end_ptr, BLOCK)
    if HAS_SKIP:
        mask = mask & (tl.load(skip_ptr) == 0)
    # The tensor's squared norms, summed in the same order by each of its blocks.
    first = tl.load(first_block_ptr + tensor)
    count = tl.load(tensor_blocks_ptr + tensor)
    w_squares = tl.zeros([REDUCE], dtype=tl.float32)
    u_squares = tl.zeros([REDUCE], dtype=tl.float32)
    for start in range(0, count, REDUCE):
        index = start + tl.arange(0, REDUCE)
        valid = index < count
        w_squares += tl.load(partial_ptr + first + index, mask=valid, other=0.0)
        u_squares += tl.load(partial_ptr + num_blocks + first + index, mask=valid, other=0.0)
    w_norm = tl.sqrt(tl.sum(w_squares))
    u_norm = tl.sqrt(tl.sum(u_squares))

    excluded = tl.load(excluded_ptr + tensor) != 0
    scaled = (excluded == 0) & (w_norm > 0.0) & (u_norm > 0.0)
    trust = tl.where(scaled, eta * w_norm / tl.where(scaled, u_norm, 1.0), 1.0)
    if CLIP:
        capped = tl.where(lr > 0.0, tl.minimum(trust / tl.where(lr > 0.0, lr, 1.0), 1.0), 1.0)
        trust = tl.where(scaled, capped, trust)
    decay = tl.where(excluded, 0.0, weight_decay)

    w = tl.load(params_ptr + offsets, mask=mask).to(tl.float32)
    g = tl.load(grads_ptr + offsets, mask=mask).to(tl.float32)
    mu = tl.load(momenta_ptr + offsets, mask=mask).to(tl.float32)
    mu = momentum * mu + trust * (g + decay * w)
    tl.store(momenta_ptr + offsets, mu.to(momenta_ptr.dtype.element_ty), mask=mask)
    tl.store(params_ptr + offsets, (w - lr * mu).to(params_ptr.dtype.element_ty), mask=mask)


def lars_table(numels: list[int], excluded: list[bool], device: torch.device | str,
               block_size: int = BLOCK) -> BlockTable:
    """The block table `lars_step_` needs, for tensors of `numels` stored back to back."""
    return block_table(numels, excluded, block_size, device)


@torch.no_grad()
def lars_step_(params: Tensor, grads: Tensor, momenta: Tensor, table: BlockTable, *,
               lr: float, weight_decay: float, momentum: float, eta: float,
               clip: bool = False, skip: Tensor | None = None) -> None:
    """One LARS step in place on the flat `params` and `momenta`; `grads` is not modified.

    params, grads, momenta: 1-D contiguous buffers (fp32 or bf16) with `table.numel`
    elements, on a device Triton reaches (a GPU, or the CPU under TRITON_INTERPRET=1).
    skip: None, or a one-element int32 tensor on that device; nonzero writes nothing.
    """
    for name, buffer in (("params", params), ("grads", grads), ("momenta", momenta)):
        if buffer.ndim != 1 or buffer.numel() != table.numel or not buffer.is_contiguous():
            raise ValueError(f"{name} must be a contiguous 1-D buffer of {table.numel} "
                             f"elements, got shape {tuple(buffer.shape)}")
    blocks = table.num_blocks
    if blocks == 0:
        return
    partial = torch.empty(2 * blocks, device=params.device, dtype=torch.float32)
    layout = (table.block_start, table.block_tensor, table.tensor_end)
    _norms_kernel[(blocks,)](params, grads, *layout, table.tensor_flag, partial, blocks,
                             float(weight_decay), BLOCK=table.block_size, num_warps=NUM_WARPS)
    _update_kernel[(blocks,)](params, grads, momenta, *layout, table.tensor_first_block,
                              table.tensor_blocks, table.tensor_flag, partial,
                              params if skip is None else skip, blocks,
                              float(lr), float(weight_decay), float(momentum), float(eta),
                              CLIP=bool(clip), HAS_SKIP=skip is not None,
                              BLOCK=table.block_size, REDUCE=REDUCE, num_warps=NUM_WARPS)
