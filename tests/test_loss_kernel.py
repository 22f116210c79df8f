"""The fused loss kernel against its reference, under TRITON_INTERPRET=1 on the CPU.

On the CPU the loss op runs the reference math; the tests that take the `triton_path` fixture
route the op's autograd path to the Triton launcher instead, as on a GPU, so that what they
compare is the kernel (interpreted here, compiled under TRITON_INTERPRET=0 on a GPU).
"""

import os
import subprocess
import sys

import pytest
import torch

from kernels import loss, reference
from kernels.tolerances import TOLERANCES
from tests.conftest import KERNEL_DEVICE, random_tensors

# Widths 3, 123 and 256 take 16, 16 and 8 rows per program; 37 rows span several programs and
# end in a partial one. Kept small: the interpreter runs numpy one program at a time.
SHAPES = [(1, 1), (5, 3), (37, 3), (5, 123), (37, 123), (5, 256), (37, 256)]
DTYPES = [torch.float32, torch.bfloat16]
UPSTREAM = 3.7  # a non-unit gradient of the loss, as `(loss * 3.7).backward()` gives


@pytest.fixture
def triton_path(monkeypatch):
    """The op's autograd path calls the Triton launcher, on the CPU too (interpreted)."""
    monkeypatch.setattr(loss, "_launches_here", lambda x: True)


def assert_matches(name: str, actual: torch.Tensor, expected: torch.Tensor,
                   dtype: torch.dtype) -> None:
    """actual == expected within the loss's tolerance for `dtype`; else name the mismatches."""
    tolerance = TOLERANCES["loss"][dtype]
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    bad = ~torch.isclose(actual, expected, **tolerance)
    if bad.any():
        where = bad.nonzero().tolist()[:5]
        pytest.fail(f"{name}: {int(bad.sum())} of {bad.numel()} values outside {tolerance}, "
                    f"first at {where}: {actual[bad][:5].tolist()} vs "
                    f"{expected[bad][:5].tolist()}")


def reference_with_grads(p1, p2, z1, z2, upstream: float = UPSTREAM):
    """The reference loss, and autograd's gradients of upstream * loss for p1 and p2, in fp32."""
    q1, q2 = (p.detach().float().requires_grad_() for p in (p1, p2))
    value = reference.byol_loss(q1, q2, z1, z2)
    (value * upstream).backward()
    return value, q1.grad, q2.grad


def fused_with_grads(p1, p2, z1, z2, upstream: float = UPSTREAM):
    """The fused op's loss and its gradients of upstream * loss for p1 and p2."""
    p1, p2 = (p.detach().clone().requires_grad_() for p in (p1, p2))
    value = loss.byol_loss(p1, p2, z1, z2)
    (value * upstream).backward()
    return value, p1.grad, p2.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_loss_and_both_gradients_match_the_reference(triton_path, shape, dtype):
    inputs = random_tensors(4, shape, dtype)
    value, grad_1, grad_2 = fused_with_grads(*inputs)
    expected_value, expected_1, expected_2 = reference_with_grads(*inputs)
    assert value.dtype == torch.float32 and grad_1.dtype == grad_2.dtype == dtype
    assert_matches("loss", value, expected_value, dtype)
    assert_matches("d loss / d online_1", grad_1, expected_1, dtype)
    assert_matches("d loss / d online_2", grad_2, expected_2, dtype)


@pytest.mark.parametrize("shape", SHAPES[1::2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_the_launcher_gives_the_loss_and_the_unit_gradients(shape, dtype):
    inputs = random_tensors(4, shape, dtype)
    value, grads = loss.loss_and_gradients(*inputs)
    expected_value, expected_1, expected_2 = reference_with_grads(*inputs, upstream=1.0)
    assert grads.shape == (2, *shape) and grads.dtype == torch.float32
    assert_matches("loss", value, expected_value, dtype)
    assert_matches("d loss / d online_1", grads[0], expected_1, dtype)
    assert_matches("d loss / d online_2", grads[1], expected_2, dtype)
    assert_matches("loss without gradients", loss.loss_forward(*inputs), expected_value, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_at_or_below_the_norm_floor_match_the_reference(triton_path, dtype):
    p1, p2, z1, z2 = random_tensors(4, (6, 9), dtype)
    p1[2] = 0.0
    p2[3] = 1e-8  # below the norm floor, but not zero
    z2[4] = 0.0
    z1[3] = 0.0  # both sides of one row
    value, grad_1, grad_2 = fused_with_grads(p1, p2, z1, z2)
    expected_value, expected_1, expected_2 = reference_with_grads(p1, p2, z1, z2)
    assert torch.isfinite(grad_1).all() and torch.isfinite(grad_2).all()
    assert_matches("loss", value, expected_value, dtype)
    assert_matches("d loss / d online_1", grad_1, expected_1, dtype)
    assert_matches("d loss / d online_2", grad_2, expected_2, dtype)


def test_the_target_side_gets_no_gradient(triton_path):
    p1, p2, z1, z2 = (x.requires_grad_() for x in random_tensors(4, (5, 12), torch.float32))
    loss.byol_loss(p1, p2, z1, z2).backward()
    assert p1.grad is not None and p2.grad is not None
    assert z1.grad is None and z2.grad is None


def test_a_prediction_that_needs_no_gradient_gets_none(triton_path):
    p1, p2, z1, z2 = random_tensors(4, (5, 12), torch.float32)
    p1.requires_grad_()
    (loss.byol_loss(p1, p2, z1, z2) * UPSTREAM).backward()
    assert p2.grad is None
    assert_matches("d loss / d online_1", p1.grad, reference_with_grads(p1, p2, z1, z2)[1],
                   torch.float32)


def test_without_a_gradient_only_the_loss_is_computed(triton_path, monkeypatch):
    inputs = random_tensors(4, (5, 12), torch.float32)
    expected = reference.byol_loss(*inputs)

    def refuse(*args):
        raise AssertionError("computed gradients that nothing needs")

    monkeypatch.setattr(loss, "loss_and_gradients", refuse)
    grad_inputs = [x.clone().requires_grad_() for x in inputs]
    with torch.no_grad():
        value = loss.byol_loss(*grad_inputs)
    assert value.grad_fn is None
    assert_matches("loss under no_grad", value, expected, torch.float32)
    value = loss.byol_loss(*inputs)  # nothing requires grad
    assert value.grad_fn is None
    assert_matches("loss without requires_grad", value, expected, torch.float32)


def test_two_runs_are_bit_identical():
    inputs = random_tensors(4, (37, 123), torch.bfloat16)  # 3 programs
    value_1, grads_1 = loss.loss_and_gradients(*inputs)
    value_2, grads_2 = loss.loss_and_gradients(*inputs)
    assert torch.equal(value_1, value_2) and torch.equal(grads_1, grads_2)
    assert torch.equal(loss.loss_forward(*inputs), value_1)


def test_the_widest_supported_projection_matches_the_reference():
    inputs = random_tensors(4, (3, loss.MAX_DIM), torch.float32)
    value, grads = loss.loss_and_gradients(*inputs)
    expected_value, expected_1, expected_2 = reference_with_grads(*inputs, upstream=1.0)
    assert_matches("loss", value, expected_value, torch.float32)
    assert_matches("d loss / d online_1", grads[0], expected_1, torch.float32)
    assert_matches("d loss / d online_2", grads[1], expected_2, torch.float32)


def test_a_projection_wider_than_max_dim_is_refused_with_what_to_do():
    inputs = random_tensors(4, (2, loss.MAX_DIM + 1), torch.float32)
    message = f"at most {loss.MAX_DIM}.*--kernels eager.*projector_dim of at most {loss.MAX_DIM}"
    with pytest.raises(ValueError, match=message):
        loss.loss_forward(*inputs)
    with pytest.raises(ValueError, match=message):
        loss.loss_and_gradients(*inputs)


def test_inputs_of_different_shapes_are_refused():
    p1, p2, z1, _ = random_tensors(4, (5, 12), torch.float32)
    with pytest.raises(ValueError, match="one shape"):
        loss.loss_forward(p1, p2, z1, torch.zeros(5, 11, device=KERNEL_DEVICE))


def test_the_custom_ops_on_the_cpu_run_the_reference_and_spare_the_target():
    inputs = [x.cpu() for x in random_tensors(4, (5, 12), torch.float32)]
    p1, p2, z1, z2 = (x.clone().requires_grad_() for x in inputs)
    value = torch.ops.byolctl.byol_loss(p1, p2, z1, z2)
    (value * UPSTREAM).backward()
    expected_value, expected_1, expected_2 = reference_with_grads(*inputs)
    torch.testing.assert_close(value, expected_value)
    torch.testing.assert_close((p1.grad, p2.grad), (expected_1, expected_2))
    assert z1.grad is None and z2.grad is None
    value, grads = torch.ops.byolctl.byol_loss_with_grads(*inputs)
    torch.testing.assert_close(grads * UPSTREAM, torch.stack((expected_1, expected_2)))
    torch.testing.assert_close(torch.ops.byolctl.byol_loss_value(*inputs), expected_value)


def test_compiling_a_function_that_uses_the_loss_has_no_graph_break():
    # In a fresh process without the interpreter, as a user's program would compile it: the
    # op and the Python function, with and without gradients; then compiled through AOT
    # autograd (aot_eager: no C++ compiler needed), the gradients still match the reference.
    code = (
        "import torch, kernels.loss\n"
        "from kernels import reference\n"
        "def by_op(a, b, c, d):\n"
        "    return torch.ops.byolctl.byol_loss(a, b, c, d) * 2\n"
        "def by_function(a, b, c, d):\n"
        "    return kernels.loss.byol_loss(a, b, c, d) * 2\n"
        "x = [torch.randn(4, 8) for _ in range(4)]\n"
        "for fn in (by_op, by_function):\n"
        "    for grad in (False, True):\n"
        "        p = [t.clone().requires_grad_(grad) for t in x[:2]]\n"
        "        e = torch._dynamo.explain(fn)(*p, *x[2:])\n"
        "        print(e.graph_break_count, e.graph_count)\n"
        "    p = [t.clone().requires_grad_() for t in x[:2]]\n"
        "    torch.compile(fn, backend='aot_eager', fullgraph=True)(*p, *x[2:]).backward()\n"
        "    q = [t.clone().requires_grad_() for t in x[:2]]\n"
        "    (2 * reference.byol_loss(*q, *x[2:])).backward()\n"
        "    torch.testing.assert_close([t.grad for t in p], [t.grad for t in q])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["0", "1"] * 4
