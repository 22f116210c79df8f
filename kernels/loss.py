"""Fused BYOL loss: both directions of the normalized MSE, forward in one kernel launch and
backward in one.

For each row b and each direction (p, z) in ((online_1, target_2), (online_2, target_1)):
    loss_b = ||p_b r(p_b) - z_b r(z_b)||^2,   r(x) = rsqrt(max(sum x^2, 1e-12))
which is 2 - 2 cos(p_b, z_b) except for rows whose norm is below the floor.
The loss is the sum over the two directions of the mean over rows (as `reference.byol_loss`).
Inputs may be fp32 or bf16; all arithmetic is fp32. The target side gets no gradient.

Registered as the custom op `byolctl::byol_loss` (`torch.library.custom_op`, with a fake
implementation and an autograd formula), so torch.compile keeps it whole, without a graph
break, and calls the kernels as they are; on the CPU the op runs the reference math.
(`triton_op` would let the compiler trace into the kernels, but its mutation analysis takes
every pointer handed to a helper such as `_load_tiles` as written, and then fails on inputs
that are leaves requiring grad.)
"""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import custom_op

from kernels.reference import NORM_EPS
from kernels.reference import byol_loss as reference_loss
from kernels.reference import byol_loss_backward as reference_backward

# Rows per program. 16 rows of 256 fp32 values keep 4 input tiles in registers.
ROWS = 16


@triton.jit
def _normalized(x, EPS: tl.constexpr):
    """Rows of x scaled by rsqrt(max(sum x^2, EPS)), and the squared norms."""
    squares = tl.sum(x * x, axis=1)
    return x * tl.math.rsqrt(tl.maximum(squares, EPS))[:, None], squares


@triton.jit
def _direction_loss(p, z, EPS: tl.constexpr):
    """||p_hat - z_hat||^2 per row."""
    p_hat, _ = _normalized(p, EPS)
    z_hat, _ = _normalized(z, EPS)
    return tl.sum(p_hat * p_hat, axis=1) + tl.sum(z_hat * z_hat, axis=1) - 2.0 * tl.sum(
        p_hat * z_hat, axis=1)


@triton.jit
def _load_rows(ptr, offsets, mask):
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_tiles(online_1_ptr, online_2_ptr, target_1_ptr, target_2_ptr, B, D,
                ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's ROWS rows of the four inputs in fp32, with their row indices, offsets
    and mask (rows past B and columns past D read as 0)."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < B) & (cols[None, :] < D)
    offsets = rows[:, None] * D + cols[None, :]
    return (rows, offsets, mask,
            _load_rows(online_1_ptr, offsets, mask), _load_rows(online_2_ptr, offsets, mask),
            _load_rows(target_1_ptr, offsets, mask), _load_rows(target_2_ptr, offsets, mask))


@triton.jit
def _forward_kernel(
    online_1_ptr, online_2_ptr,  # (B, D) predictions, contiguous
    target_1_ptr, target_2_ptr,  # (B, D) target projections, contiguous
    partial_ptr,                 # (programs,) fp32 out: this program's sum of row losses
    B, D,
    EPS: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows, _, _, p1, p2, z1, z2 = _load_tiles(online_1_ptr, online_2_ptr, target_1_ptr,
                                             target_2_ptr, B, D, ROWS, BLOCK_D)
    row_loss = _direction_loss(p1, z2, EPS) + _direction_loss(p2, z1, EPS)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(tl.where(rows < B, row_loss, 0.0)))


@triton.jit
def _direction_grad(p, z, EPS: tl.constexpr):
    """-1/2 d ||p_hat - z_hat||^2 / dp per row: r(p) (z_hat - c p_hat), with c = cos(p, z), or
    c = 1 where the norm is below the floor (r(p) is then a constant)."""
    p_hat, squares = _normalized(p, EPS)
    z_hat, _ = _normalized(z, EPS)
    c = tl.where(squares > EPS, tl.sum(p_hat * z_hat, axis=1), 1.0)
    scale = tl.math.rsqrt(tl.maximum(squares, EPS))
    return scale[:, None] * (z_hat - c[:, None] * p_hat)


@triton.jit
def _backward_kernel(
    online_1_ptr, online_2_ptr,  # (B, D) predictions, contiguous
    target_1_ptr, target_2_ptr,  # (B, D) target projections, contiguous
    grad_loss_ptr,               # () fp32: gradient of the scalar loss
    grad_1_ptr, grad_2_ptr,      # (B, D) out, in the predictions' dtype
    B, D,
    EPS: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr,
):
    _, offsets, mask, p1, p2, z1, z2 = _load_tiles(online_1_ptr, online_2_ptr, target_1_ptr,
                                                   target_2_ptr, B, D, ROWS, BLOCK_D)
    scale = tl.load(grad_loss_ptr) * (-2.0 / B)
    grad_1 = scale * _direction_grad(p1, z2, EPS)
    grad_2 = scale * _direction_grad(p2, z1, EPS)
    tl.store(grad_1_ptr + offsets, grad_1.to(grad_1_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_2_ptr + offsets, grad_2.to(grad_2_ptr.dtype.element_ty), mask=mask)


def _launch_config(online_1: Tensor) -> tuple[tuple[int], dict]:
    batch, dim = online_1.shape
    return (triton.cdiv(batch, ROWS),), dict(EPS=NORM_EPS, ROWS=ROWS,
                                             BLOCK_D=triton.next_power_of_2(dim))


def loss_forward(online_1: Tensor, online_2: Tensor, target_1: Tensor, target_2: Tensor) -> Tensor:
    """The fused loss value (0-dim fp32). Runs the Triton kernel on any device Triton can
    reach (the CPU only under TRITON_INTERPRET=1)."""
    grid, meta = _launch_config(online_1)
    partial = torch.empty(grid[0], device=online_1.device, dtype=torch.float32)
    batch, dim = online_1.shape
    _forward_kernel[grid](online_1, online_2, target_1, target_2, partial, batch, dim, **meta)
    # Summing per-program partials, rather than atomics, keeps the result deterministic.
    return partial.sum() / batch


def loss_backward(online_1: Tensor, online_2: Tensor, target_1: Tensor, target_2: Tensor,
                  grad_loss: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of the fused loss for online_1 and online_2, from the loss's gradient."""
    grid, meta = _launch_config(online_1)
    grad_1, grad_2 = torch.empty_like(online_1), torch.empty_like(online_2)
    batch, dim = online_1.shape
    _backward_kernel[grid](online_1, online_2, target_1, target_2,
                           grad_loss.float().contiguous(), grad_1, grad_2, batch, dim, **meta)
    return grad_1, grad_2


# ------------------------------------------------------------------------- the custom ops

@custom_op("byolctl::byol_loss", mutates_args=())
def byol_loss(online_1: Tensor, online_2: Tensor, target_1: Tensor, target_2: Tensor) -> Tensor:
    """Fused symmetric BYOL loss; see the module docstring. Inputs (B, D), contiguous."""
    return loss_forward(online_1, online_2, target_1, target_2)


@custom_op("byolctl::byol_loss_backward", mutates_args=())
def _byol_loss_backward(online_1: Tensor, online_2: Tensor, target_1: Tensor,
                        target_2: Tensor, grad_loss: Tensor) -> tuple[Tensor, Tensor]:
    return loss_backward(online_1, online_2, target_1, target_2, grad_loss)


@byol_loss.register_fake
def _byol_loss_fake(online_1, online_2, target_1, target_2):
    return online_1.new_empty((), dtype=torch.float32)


@_byol_loss_backward.register_fake
def _byol_loss_backward_fake(online_1, online_2, target_1, target_2, grad_loss):
    return torch.empty_like(online_1), torch.empty_like(online_2)


@byol_loss.register_kernel("cpu")
def _byol_loss_cpu(online_1, online_2, target_1, target_2):
    return reference_loss(online_1, online_2, target_1, target_2)


@_byol_loss_backward.register_kernel("cpu")
def _byol_loss_backward_cpu(online_1, online_2, target_1, target_2, grad_loss):
    return reference_backward(online_1, online_2, target_1, target_2, grad_loss)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_loss):
    grad_1, grad_2 = _byol_loss_backward(*ctx.saved_tensors, grad_loss)
    return grad_1, grad_2, None, None  # no gradient for the target side


byol_loss.register_autograd(_backward, setup_context=_setup_context)
