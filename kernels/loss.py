"""Fused BYOL loss: both directions of the normalized MSE and both gradients in one kernel
launch; the backward only scales the saved gradients.

For each row b and each direction (p, z) in ((online_1, target_2), (online_2, target_1)):
    loss_b = ||p_b r(p_b) - z_b r(z_b)||^2,   r(x) = rsqrt(max(sum x^2, 1e-12))
which is 2 - 2 cos(p_b, z_b) except for rows whose norm is below the floor.
The loss is the sum over the two directions of the mean over rows (as `reference.byol_loss`).
Inputs may be fp32 or bf16, (B, D) with D at most MAX_DIM; all arithmetic is fp32. The target
side gets no gradient.

Where a gradient is needed, the one launch also writes d loss / d online_1 and d online_2 for a
unit upstream gradient into a (2, B, D) fp32 buffer kept for the backward, which multiplies it
by the upstream gradient (one elementwise kernel) instead of reading the four inputs again.
Without a gradient (no_grad, or predictions that do not require grad) the same kernel is
compiled without the gradient part and no buffer is allocated. Each program writes its rows'
share of the loss and one torch sum adds the shares, in a fixed order: the loss is
deterministic, as atomics would not make it. Per forward: 1 Triton launch + 1 tiny sum.

Registered as the custom ops `byolctl::byol_loss_with_grads` and `byolctl::byol_loss_value`
(`torch.library.custom_op`, with fake implementations), so torch.compile keeps the kernel
whole, without a graph break, and calls it as it is; on the CPU the ops run the reference
math. (`triton_op` would let the compiler trace into the kernel, but its mutation analysis
takes every pointer handed to a jit helper as written, and then fails on inputs that are leaves
requiring grad.) The public op `byolctl::byol_loss` is composite (`byol_loss` below): it picks
one of the two and, for the gradient, wraps it in an autograd.Function. In eager mode on a GPU,
with nothing tracing or intercepting the dispatcher, that function calls the launcher itself
rather than through the custom op: the op's Python dispatch layers are host time that this
small op is bound by, and they would only lead back to the same launcher.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.library import custom_op
from torch.utils._python_dispatch import _get_current_dispatch_mode

from kernels.reference import NORM_EPS
from kernels.reference import byol_loss as reference_loss
from kernels.reference import byol_loss_backward as reference_backward

# ------------------------------------------------------------------------- tuning
# Not measured: no GPU has run this kernel yet, so these rest on register-budget reasoning and
# await a measurement (benchmarks/bench_kernels.py on a GPU, over D and these values).
# A program holds its rows of the four inputs as fp32 tiles of ROWS x BLOCK_D (BLOCK_D: D
# rounded up to a power of two) in registers, and forms a gradient tile from them. A thread can
# hold at most 255 32-bit registers. TILE_ELEMENTS = 2048 over NUM_WARPS = 4 (128 threads) is
# 4 * 2048 / 128 = 64 input values per thread, which leaves room for the gradient tile, the
# offsets and the row sums without spilling. (The previous kernel held 16 x 256 tiles over 4
# warps, 128 values per thread; it ran on an H100 but no comparison chose it.)
TILE_ELEMENTS = 2048
NUM_WARPS = 4
# At most this many rows per program, so that a small D still spreads over many programs (16
# is the previous kernel's fixed ROWS; not tuned).
MAX_ROWS = 16
# The largest D the kernel takes, since each row is loaded whole: at D = 4096 a program holds
# one row of each input over 8 warps, the same 64 values per thread. A wider row would need
# 16 or more warps for one row, or a loop over D in chunks (which this kernel does not have);
# neither has been tried. BYOL's projections are 256 wide.
MAX_DIM = 4096


def launch_config(dim: int) -> tuple[int, int, int]:
    """(ROWS, BLOCK_D, num_warps) for inputs of width `dim` (at most MAX_DIM)."""
    block_d = triton.next_power_of_2(dim)
    rows = max(1, min(MAX_ROWS, TILE_ELEMENTS // block_d))
    # Past TILE_ELEMENTS (one row of 4096), twice the warps keep 64 values per thread.
    return rows, block_d, NUM_WARPS * max(1, rows * block_d // TILE_ELEMENTS)


def check_dim(dim: int) -> None:
    """ValueError if the kernel cannot take inputs of width `dim` (see MAX_DIM)."""
    if dim > MAX_DIM:
        raise ValueError(
            f"The fused BYOL loss takes a projection width of at most {MAX_DIM}, not {dim}; "
            f"use --kernels eager or a projector_dim of at most {MAX_DIM}.")


# ------------------------------------------------------------------------- the kernel

@triton.jit
def _load_rows(ptr, offsets, mask):
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _direction(p, z, EPS: tl.constexpr):
    """For (ROWS, BLOCK_D) tiles p and z: per row, ||p r(p) - z r(z)||^2, sum p^2, r(p), r(z)
    and p.z r(p) r(z) (the cosine, where both norms are above the floor)."""
    p_squares = tl.sum(p * p, axis=1)
    z_squares = tl.sum(z * z, axis=1)
    r_p = tl.math.rsqrt(tl.maximum(p_squares, EPS))
    r_z = tl.math.rsqrt(tl.maximum(z_squares, EPS))
    cos = tl.sum(p * z, axis=1) * r_p * r_z
    loss = p_squares * r_p * r_p + z_squares * r_z * r_z - 2.0 * cos
    return loss, p_squares, r_p, r_z, cos


@triton.jit
def _direction_grad(p, z, p_squares, r_p, r_z, cos, scale, EPS: tl.constexpr):
    """scale * (-1/2) d ||p r(p) - z r(z)||^2 / dp = scale r(p) (z r(z) - c p r(p)), with
    c = cos, or c = 1 where the norm of p is at or below the floor (r(p) is then a constant)."""
    c = tl.where(p_squares > EPS, cos, 1.0)
    return (scale * r_p)[:, None] * (z * r_z[:, None] - (c * r_p)[:, None] * p)


@triton.jit
def _loss_kernel(
    online_1_ptr, online_2_ptr,  # (B, D) predictions, contiguous, fp32 or bf16
    target_1_ptr, target_2_ptr,  # (B, D) target projections, contiguous, same dtype
    partial_ptr,                 # (programs,) fp32 out: this program's rows' share of the loss
    grad_1_ptr, grad_2_ptr,      # (B, D) fp32 out: d loss / d online_k; unused unless WITH_GRADS
    B, D,
    EPS: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr, WITH_GRADS: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < B) & (cols[None, :] < D)
    offsets = rows.to(tl.int64)[:, None] * D + cols[None, :]  # int64: B * D may pass 2^31
    p1, p2 = _load_rows(online_1_ptr, offsets, mask), _load_rows(online_2_ptr, offsets, mask)
    z1, z2 = _load_rows(target_1_ptr, offsets, mask), _load_rows(target_2_ptr, offsets, mask)

    loss_1, p1_squares, r_p1, r_z2, cos_1 = _direction(p1, z2, EPS)
    loss_2, p2_squares, r_p2, r_z1, cos_2 = _direction(p2, z1, EPS)
    row_loss = tl.where(rows < B, loss_1 + loss_2, 0.0)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(row_loss, axis=0) / B)

    if WITH_GRADS:
        scale = -2.0 / B  # d mean / d row, times the -2 that _direction_grad leaves out
        grad_1 = _direction_grad(p1, z2, p1_squares, r_p1, r_z2, cos_1, scale, EPS)
        tl.store(grad_1_ptr + offsets, grad_1, mask=mask)
        grad_2 = _direction_grad(p2, z1, p2_squares, r_p2, r_z1, cos_2, scale, EPS)
        tl.store(grad_2_ptr + offsets, grad_2, mask=mask)


# ------------------------------------------------------------------------- the launcher

def _check_inputs(online_1: Tensor, online_2: Tensor, target_1: Tensor,
                  target_2: Tensor) -> None:
    inputs = (online_1, online_2, target_1, target_2)
    if online_1.dim() != 2 or any(t.shape != online_1.shape for t in inputs):
        raise ValueError("the fused BYOL loss takes four (B, D) tensors of one shape, not "
                         f"{[tuple(t.shape) for t in inputs]}")
    if any(t.dtype != online_1.dtype or not t.is_contiguous() for t in inputs):
        raise ValueError("the fused BYOL loss takes four contiguous tensors of one dtype")
    check_dim(online_1.shape[1])


def _launch(online_1: Tensor, online_2: Tensor, target_1: Tensor, target_2: Tensor,
            with_grads: bool) -> tuple[Tensor, Tensor | None]:
    _check_inputs(online_1, online_2, target_1, target_2)
    batch, dim = online_1.shape
    rows, block_d, num_warps = launch_config(dim)
    grid = (triton.cdiv(batch, rows),)
    partial = torch.empty(grid[0], device=online_1.device, dtype=torch.float32)
    # fp32 rather than the inputs' dtype: the backward then rounds each gradient to the
    # predictions' dtype once, after scaling by the upstream gradient, as autograd of the fp32
    # reference does; bf16 here would round twice. It costs 2 x B x D x 4 bytes (8 MiB at
    # 4096 x 256), kept from the forward to the backward.
    grads = (torch.empty((2, batch, dim), device=online_1.device, dtype=torch.float32)
             if with_grads else None)
    grad_1, grad_2 = (grads[0], grads[1]) if with_grads else (partial, partial)
    _loss_kernel[grid](online_1, online_2, target_1, target_2, partial, grad_1, grad_2,
                       batch, dim, EPS=NORM_EPS, ROWS=rows, BLOCK_D=block_d,
                       WITH_GRADS=with_grads, num_warps=num_warps)
    # The shares already carry the 1/B; one sum of a few hundred values, in a fixed order.
    return partial.sum(), grads


def loss_forward(online_1: Tensor, online_2: Tensor, target_1: Tensor, target_2: Tensor) -> Tensor:
    """The fused loss value (0-dim fp32), without gradients. Inputs (B, D), contiguous, of one
    dtype. Runs the Triton kernel on any device Triton can reach (the CPU only under
    TRITON_INTERPRET=1)."""
    return _launch(online_1, online_2, target_1, target_2, with_grads=False)[0]


def loss_and_gradients(online_1: Tensor, online_2: Tensor, target_1: Tensor,
                       target_2: Tensor) -> tuple[Tensor, Tensor]:
    """The fused loss value (0-dim fp32) and, in one (2, B, D) fp32 tensor, its gradients for
    online_1 and online_2 (for a unit upstream gradient), from one kernel launch."""
    value, grads = _launch(online_1, online_2, target_1, target_2, with_grads=True)
    return value, grads


# ------------------------------------------------------------------------- the custom ops

@custom_op("byolctl::byol_loss_value", mutates_args=())
def _loss_value_op(online_1: Tensor, online_2: Tensor, target_1: Tensor,
                   target_2: Tensor) -> Tensor:
    return loss_forward(online_1, online_2, target_1, target_2)


@custom_op("byolctl::byol_loss_with_grads", mutates_args=())
def _loss_with_grads_op(online_1: Tensor, online_2: Tensor, target_1: Tensor,
                        target_2: Tensor) -> tuple[Tensor, Tensor]:
    return loss_and_gradients(online_1, online_2, target_1, target_2)


@_loss_value_op.register_fake
def _loss_value_fake(online_1, online_2, target_1, target_2):
    if online_1.device.type != "cpu":  # refused while compiling, before any launch
        check_dim(online_1.shape[1])
    return online_1.new_empty((), dtype=torch.float32)


@_loss_with_grads_op.register_fake
def _loss_with_grads_fake(online_1, online_2, target_1, target_2):
    if online_1.device.type != "cpu":
        check_dim(online_1.shape[1])
    return (online_1.new_empty((), dtype=torch.float32),
            online_1.new_empty((2, *online_1.shape), dtype=torch.float32))


@_loss_value_op.register_kernel("cpu")
def _loss_value_cpu(online_1, online_2, target_1, target_2):
    return reference_loss(online_1, online_2, target_1, target_2)


@_loss_with_grads_op.register_kernel("cpu")
def _loss_with_grads_cpu(online_1, online_2, target_1, target_2):
    one = torch.ones((), dtype=torch.float32)
    grads = reference_backward(online_1.float(), online_2.float(), target_1, target_2, one)
    return reference_loss(online_1, online_2, target_1, target_2), torch.stack(grads)


def _launches_here(x: Tensor) -> bool:
    """Whether to call the launcher directly rather than through the custom op: in eager mode
    on a GPU with nothing tracing or intercepting the dispatcher, where the op would run the
    same launcher. (is_compiling comes first, so that torch.compile does not trace the rest.)"""
    return (not torch.compiler.is_compiling() and x.is_cuda and type(x) is Tensor
            and _get_current_dispatch_mode() is None)


def _value(*inputs: Tensor) -> Tensor:
    return loss_forward(*inputs) if _launches_here(inputs[0]) else _loss_value_op(*inputs)


def _with_grads(*inputs: Tensor) -> tuple[Tensor, Tensor]:
    return (loss_and_gradients(*inputs) if _launches_here(inputs[0])
            else _loss_with_grads_op(*inputs))


class _FusedLoss(torch.autograd.Function):
    """The loss, whose forward also computes and keeps its gradients for the predictions."""

    @staticmethod
    def forward(ctx, online_1, online_2, target_1, target_2):
        value, grads = _with_grads(online_1, online_2, target_1, target_2)
        ctx.save_for_backward(grads)  # (2, B, D) fp32
        ctx.grad_dtype = online_1.dtype
        return value

    @staticmethod
    @once_differentiable  # the saved gradients are constants: no second derivative
    def backward(ctx, grad_loss):
        (grads,) = ctx.saved_tensors
        wanted = [k for k in (0, 1) if ctx.needs_input_grad[k]]
        if len(wanted) == 2:
            # One elementwise kernel: fp32 product, rounded once to the predictions' dtype.
            scaled = torch.mul(grads, grad_loss,
                               out=grads.new_empty(grads.shape, dtype=ctx.grad_dtype))
        else:
            scaled = [None, None]
            for k in wanted:
                scaled[k] = torch.mul(grads[k], grad_loss,
                                      out=grads.new_empty(grads.shape[1:], dtype=ctx.grad_dtype))
        return scaled[0], scaled[1], None, None  # no gradient for the target side


def byol_loss(online_1: Tensor, online_2: Tensor, target_1: Tensor, target_2: Tensor) -> Tensor:
    """Fused symmetric BYOL loss, a 0-dim fp32 tensor; see the module docstring. Inputs (B, D),
    contiguous, of one dtype, D at most MAX_DIM. Also `torch.ops.byolctl.byol_loss`."""
    if torch.is_grad_enabled() and (online_1.requires_grad or online_2.requires_grad):
        return _FusedLoss.apply(online_1, online_2, target_1, target_2)
    return _value(online_1, online_2, target_1, target_2)


torch.library.define(
    "byolctl::byol_loss",
    "(Tensor online_1, Tensor online_2, Tensor target_1, Tensor target_2) -> Tensor")
torch.library.impl("byolctl::byol_loss", "CompositeImplicitAutograd", byol_loss)
