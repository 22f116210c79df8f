"""The dispatch point for BYOL's hot operations: the trainer calls these, never `kernels`.

Each function takes a `backend`:
- "eager": the plain-torch references in `kernels.reference`, per tensor; any device.
- "fused": the Triton kernels, one launch per operation over flat buffers (`byol.flat`). They
  need a CUDA GPU, or the CPU under TRITON_INTERPRET=1 (slow; for tests). On the CPU the loss
  is always the reference, which is also what the loss op runs there; the kernel tests call
  the Triton loss kernels directly.
"""

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType

import torch
from torch import Tensor

import kernels
from byol.errors import UserError, WrongModuleError
from byol.flat import FlatBuffer

if not getattr(kernels, "IS_BYOLCTL_KERNELS", False):
    raise WrongModuleError(
        f"The module 'kernels' found at {getattr(kernels, '__file__', '?')} is not byolctl's "
        "(another package of that name is installed); uninstall it or reinstall byolctl."
    )

from kernels import reference  # noqa: E402  (after the check, so a wrong module fails clearly)
from kernels.blocks import BlockTable  # noqa: E402

BACKENDS = ("fused", "eager")


def default_backend(device: torch.device) -> str:
    """fused on a GPU, eager on the CPU."""
    return "fused" if device.type == "cuda" else "eager"


def require_backend(backend: str, device: torch.device) -> None:
    """UserError unless `backend` names an implementation that runs on `device`."""
    if backend not in BACKENDS:
        raise UserError(f"Unknown kernels {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "fused" and device.type != "cuda" and not _triton_interpreter():
        raise UserError("--kernels fused needs a CUDA GPU; on the CPU use --kernels eager.")


def require_loss_width(width: int, backend: str) -> None:
    """UserError unless the loss implementation takes projections `width` wide (the fused
    kernel holds a row in registers: at most `kernels.loss.MAX_DIM`)."""
    limit = _fused("loss").MAX_DIM if backend == "fused" else None
    if limit is not None and width > limit:
        raise UserError(f"--kernels fused takes a projector_dim of at most {limit}, not "
                        f"{width}; use --kernels eager or a smaller projector_dim.")


def _triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _fused(name: str) -> ModuleType:
    """A fused-kernel module, imported on first use: the eager path never needs Triton."""
    return importlib.import_module(f"kernels.{name}")


# --------------------------------------------------------------------------------- the loss

def byol_loss(
    online_1: Tensor, online_2: Tensor, target_1: Tensor, target_2: Tensor, backend: str
) -> Tensor:
    """Symmetric normalized-MSE loss; see `kernels.reference.byol_loss`. Inputs (B, D)."""
    if backend == "fused" and online_1.is_cuda:
        inputs = (t.contiguous() for t in (online_1, online_2, target_1, target_2))
        return _fused("loss").byol_loss(*inputs)
    return reference.byol_loss(online_1, online_2, target_1, target_2)


# --------------------------------------------------------------------------------- the EMA

def ema_update_(target: FlatBuffer, online: FlatBuffer, tau: float, backend: str,
                skip: Tensor | None = None) -> None:
    """target <- tau * target + (1 - tau) * online, in place; nothing where the one-element
    device flag `skip` is nonzero (read on the device, never by the host).

    `target` holds the target parameters; `online` holds the matching online parameters first
    (then, possibly, others such as the predictor's, which are ignored).
    """
    if not target.has_layout_of(online):
        raise ValueError("the target buffer's layout does not match the online buffer's start")
    if backend == "fused":
        _fused("ema").ema_update_(target.data, online.data[: target.data.numel()], tau, skip)
    else:
        reference.ema_update_(target.views, online.views[: len(target.views)], tau, skip)


# --------------------------------------------------------------------------------- LARS

@dataclass
class LarsTensors:
    """What a LARS step reads and writes: three flat buffers of one layout, and which tensors
    skip weight decay and trust scaling."""

    params: FlatBuffer
    grads: FlatBuffer
    momenta: FlatBuffer
    excluded: Sequence[bool]
    table: BlockTable | None = field(default=None, repr=False)  # built by the first fused step


def lars_step_(tensors: LarsTensors, *, lr: float, weight_decay: float, momentum: float,
               eta: float, clip: bool, backend: str, skip: Tensor | None = None) -> None:
    """One LARS step in place on params and momenta, or none where the device flag `skip` is
    nonzero; see `kernels.reference.lars_step_`."""
    hyper = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta, clip=clip,
                 skip=skip)
    if backend == "fused":
        lars = _fused("lars")
        if tensors.table is None:
            tensors.table = lars.lars_table(tensors.params.numels, list(tensors.excluded),
                                            tensors.params.data.device)
        lars.lars_step_(tensors.params.data, tensors.grads.data, tensors.momenta.data,
                        tensors.table, **hyper)
    else:
        reference.lars_step_(tensors.params.views, tensors.grads.views, tensors.momenta.views,
                             tensors.excluded, **hyper)
