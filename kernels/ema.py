"""Fused EMA update of the target network: one launch over the whole flat parameter buffer.

    target <- tau * target + (1 - tau) * online      (elementwise, in place)

The target's parameters are views into one flat buffer whose layout matches the start of the
online buffer, so a single elementwise pass covers every tensor: 12 bytes per fp32 parameter
(read both, write the target). tau is a runtime argument: a new value each step reuses the
compiled kernel. Inputs may be fp32 or bf16; the arithmetic is fp32. An optional device flag
`skip` (set when the step's loss or gradients were not finite) makes the launch write nothing,
so the host never has to read it before launching.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor

# Elements per program: 4,096 with 8 warps is 16 contiguous elements (64 bytes) per thread,
# enough for wide loads; a starting point to tune on the GPU with benchmarks/bench_kernels.py.
BLOCK = 4096
NUM_WARPS = 8


@triton.jit
def _ema_kernel(
    target_ptr,  # (n,) in/out: target parameters, flat
    online_ptr,  # (n,) in: online parameters, flat, same layout
    skip_ptr,    # () int32 in: nonzero = leave the target untouched (read if HAS_SKIP)
    n,
    tau,         # fp32 scalar
    HAS_SKIP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    if HAS_SKIP:
        mask = mask & (tl.load(skip_ptr) == 0)
    target = tl.load(target_ptr + offsets, mask=mask).to(tl.float32)
    online = tl.load(online_ptr + offsets, mask=mask).to(tl.float32)
    updated = tau * target + (1.0 - tau) * online
    tl.store(target_ptr + offsets, updated.to(target_ptr.dtype.element_ty), mask=mask)


@torch.no_grad()
def ema_update_(target: Tensor, online: Tensor, tau: float, skip: Tensor | None = None) -> None:
    """In place: target <- tau * target + (1 - tau) * online, unless `skip` is nonzero.

    target, online: 1-D contiguous buffers of equal size (fp32 or bf16) on a device Triton
    reaches (a GPU, or the CPU under TRITON_INTERPRET=1). skip: None, or a one-element int32
    tensor on that device.
    """
    if target.ndim != 1 or target.shape != online.shape:
        raise ValueError(f"expected two 1-D buffers of one size, got {tuple(target.shape)} "
                         f"and {tuple(online.shape)}")
    if not (target.is_contiguous() and online.is_contiguous()):
        raise ValueError("the EMA buffers must be contiguous")
    n = target.numel()
    _ema_kernel[(triton.cdiv(n, BLOCK),)](
        target, online, target if skip is None else skip, n, float(tau),
        HAS_SKIP=skip is not None, BLOCK=BLOCK, num_warps=NUM_WARPS)
