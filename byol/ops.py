"""The dispatch point for BYOL's hot operations: the trainer calls these, never `kernels`.

Each function takes a `backend` naming the implementation. "eager" is the plain-torch reference
in `kernels.reference`; it runs on any device.
"""

from collections.abc import Sequence
from types import ModuleType

from torch import Tensor

import kernels
from byol.errors import UserError

if not getattr(kernels, "IS_BYOLCTL_KERNELS", False):
    raise ImportError(
        f"The module 'kernels' found at {getattr(kernels, '__file__', '?')} is not byolctl's "
        "(another package of that name is installed); uninstall it or reinstall byolctl."
    )

from kernels import reference  # noqa: E402  (after the check, so a wrong module fails clearly)

BACKENDS: dict[str, ModuleType] = {"eager": reference}


def require_backend(backend: str) -> None:
    """UserError unless `backend` names an available implementation."""
    if backend not in BACKENDS:
        raise UserError(f"Unknown kernels {backend!r}; choose one of {', '.join(BACKENDS)}.")


def _implementation(backend: str) -> ModuleType:
    require_backend(backend)
    return BACKENDS[backend]


def byol_loss(
    online_1: Tensor, online_2: Tensor, target_1: Tensor, target_2: Tensor, backend: str
) -> Tensor:
    """Symmetric normalized-MSE loss; see `kernels.reference.byol_loss`."""
    return _implementation(backend).byol_loss(online_1, online_2, target_1, target_2)


def ema_update_(
    target: Sequence[Tensor], online: Sequence[Tensor], tau: float, backend: str
) -> None:
    """target <- tau * target + (1 - tau) * online, in place; see `kernels.reference`."""
    _implementation(backend).ema_update_(target, online, tau)


def lars_step_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momenta: Sequence[Tensor],
    excluded: Sequence[bool],
    *,
    lr: float,
    weight_decay: float,
    momentum: float,
    eta: float,
    backend: str,
) -> None:
    """One LARS step in place; see `kernels.reference.lars_step_`."""
    _implementation(backend).lars_step_(
        params, grads, momenta, excluded,
        lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
    )
