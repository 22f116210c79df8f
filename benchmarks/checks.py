"""Before a benchmark times an implementation, it checks it against `kernels.reference` on the
sizes it is about to time, with the kernel tests' tolerances (`kernels.tolerances`): a fast
wrong answer is never reported as a speedup.

The implementations are `byol.profiling.ops.implementations`; each check raises an
AssertionError that names the operation, the implementation and what differed.
"""

from collections.abc import Callable, Sequence

import torch

from byol.profiling.ops import LARS_HYPER, TAU, Tensors, loss_inputs
from kernels import reference
from kernels.tolerances import TOLERANCES


def check_ema(impls: dict[str, Callable], shapes: Sequence[torch.Size],
              device: torch.device) -> None:
    """Each EMA implementation updates fp32 target tensors of `shapes` as the reference does."""
    online = Tensors(shapes, device, seed=1)
    expected = Tensors(shapes, device, seed=0)
    reference.ema_update_(expected.views, online.views, TAU)
    for name, fn in impls.items():
        target = Tensors(shapes, device, seed=0)
        fn(target, online)
        torch.testing.assert_close(target.flat, expected.flat,
                                   **TOLERANCES["ema"][torch.float32],
                                   msg=lambda m: f"EMA {name}: {m}")


def check_lars(impls: dict[str, Callable], shapes: Sequence[torch.Size],
               device: torch.device) -> None:
    """Each LARS implementation steps fp32 parameters and momenta of `shapes` as the
    reference does (1-D tensors excluded from weight decay and trust scaling, as in
    training)."""
    grads = Tensors(shapes, device, seed=1)
    expected, expected_momenta = Tensors(shapes, device, seed=0), Tensors(shapes, device, 2)
    reference.lars_step_(expected.views, grads.views, expected_momenta.views,
                         [len(s) <= 1 for s in shapes], **LARS_HYPER)
    for name, fn in impls.items():
        params, momenta = Tensors(shapes, device, seed=0), Tensors(shapes, device, 2)
        fn(params, grads, momenta)
        for mine, theirs, what in ((params, expected, "params"),
                                   (momenta, expected_momenta, "momenta")):
            torch.testing.assert_close(mine.flat, theirs.flat,
                                       **TOLERANCES["lars"][torch.float32],
                                       msg=lambda m: f"LARS {name} {what}: {m}")


def check_loss(impls: dict[str, Callable], batch: int, dim: int, dtype: torch.dtype,
               device: torch.device) -> None:
    """Each loss implementation's gradients for (batch, dim) inputs in `dtype` match autograd
    through the reference in fp32, as in the kernel tests."""
    online_1, online_2, target_1, target_2 = loss_inputs(batch, dim, dtype, device)
    exact = [x.detach().float().requires_grad_() for x in (online_1, online_2)]
    reference.byol_loss(*exact, target_1, target_2).backward()
    expected = [x.grad for x in exact]
    for name, fn in impls.items():
        grads = [g.float() for g in fn(*loss_inputs(batch, dim, dtype, device))]
        torch.testing.assert_close(grads, expected, **TOLERANCES["loss"][dtype],
                                   msg=lambda m: f"loss {name}: {m}")


def check_implementations(impls: dict[str, dict[str, Callable]],
                          shapes: tuple[list[torch.Size], list[torch.Size]],
                          loss_shape: tuple[int, int], loss_dtype: torch.dtype,
                          device: torch.device) -> None:
    """Check every implementation in `impls` (from `byol.profiling.ops.implementations`) at
    the sizes `byol.profiling.ops.time_ops` times: (online, target) parameter shapes and the
    loss's (batch, dim) in `loss_dtype`."""
    online_shapes, target_shapes = shapes
    check_ema(impls["ema"], target_shapes, device)
    check_lars(impls["lars"], online_shapes, device)
    check_loss(impls["loss"], *loss_shape, loss_dtype, device)
