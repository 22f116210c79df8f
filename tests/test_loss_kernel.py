"""The fused loss kernel against its reference, under TRITON_INTERPRET=1 on the CPU."""

import subprocess
import sys

import pytest
import torch

from kernels import loss, reference
from kernels.tolerances import TOLERANCES
from tests.conftest import KERNEL_DEVICE, random_tensors

SHAPES = [(1, 1), (5, 123), (33, 17), (7, 256), (40, 64)]  # rows below, at and past ROWS
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_matches_the_reference(shape, dtype):
    inputs = random_tensors(4, shape, dtype)
    torch.testing.assert_close(loss.loss_forward(*inputs), reference.byol_loss(*inputs),
                               **TOLERANCES["loss"][dtype])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_matches_autograd_of_the_reference(shape, dtype):
    p1, p2, z1, z2 = random_tensors(4, shape, dtype)
    grad_loss = torch.tensor(0.7, device=KERNEL_DEVICE)
    q1, q2 = (p.float().requires_grad_() for p in (p1, p2))
    reference.byol_loss(q1, q2, z1, z2).backward(grad_loss)
    grad_1, grad_2 = loss.loss_backward(p1, p2, z1, z2, grad_loss)
    assert grad_1.dtype == dtype
    tolerance = TOLERANCES["loss"][dtype]
    torch.testing.assert_close(grad_1.float(), q1.grad, **tolerance)
    torch.testing.assert_close(grad_2.float(), q2.grad, **tolerance)


def test_rows_at_or_below_the_norm_floor_match_the_reference():
    p1, p2, z1, z2 = random_tensors(4, (6, 9), torch.float32)
    p1[2] = 0.0
    p2[3] = 1e-8  # below the norm floor, but not zero
    z2[4] = 0.0
    value = loss.loss_forward(p1, p2, z1, z2)
    one = torch.tensor(1.0, device=KERNEL_DEVICE)
    grad_1, grad_2 = loss.loss_backward(p1, p2, z1, z2, one)
    torch.testing.assert_close(value, reference.byol_loss(p1, p2, z1, z2))
    assert torch.isfinite(grad_1).all() and torch.isfinite(grad_2).all()
    torch.testing.assert_close((grad_1, grad_2), reference.byol_loss_backward(p1, p2, z1, z2, one))


def test_the_custom_op_on_the_cpu_matches_the_reference_and_spares_the_target():
    p1, p2, z1, z2 = (x.cpu().requires_grad_() for x in random_tensors(4, (5, 12), torch.float32))
    value = torch.ops.byolctl.byol_loss(p1, p2, z1, z2)
    value.backward()
    q1, q2 = (p.detach().clone().requires_grad_() for p in (p1, p2))
    expected = reference.byol_loss(q1, q2, z1.detach(), z2.detach())
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close((p1.grad, p2.grad), (q1.grad, q2.grad))
    assert z1.grad is None and z2.grad is None


def test_compiling_a_function_that_uses_the_loss_has_no_graph_break():
    # In a fresh process without the interpreter, as a user's program would compile it.
    code = (
        "import torch, kernels.loss\n"
        "def f(a, b, c, d):\n"
        "    return torch.ops.byolctl.byol_loss(a, b, c, d) * 2\n"
        "x = [torch.randn(4, 8) for _ in range(4)]\n"
        "e = torch._dynamo.explain(f)(*x)\n"
        "print(e.graph_break_count, e.graph_count)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["0", "1"]
