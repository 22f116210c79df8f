"""Plain-torch references for BYOL's three hot operations.

These define the math. They serve `--kernels eager`, every CPU run, and are the ground truth
the fused kernels are tested and benchmarked against.
"""

from collections.abc import Sequence

import torch
from torch import Tensor

# Normalization floor from the official implementation: x * rsqrt(max(sum(x^2), 1e-12)).
NORM_EPS = 1e-12


def _l2_normalize(x: Tensor) -> Tensor:
    return x * torch.rsqrt(torch.clamp(x.pow(2).sum(dim=-1, keepdim=True), min=NORM_EPS))


def normalized_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean over rows of ||p/||p|| - t/||t||||^2 = 2 - 2cos(p, t); no gradient reaches target.

    prediction, target: (B, D), any float dtype; computed in fp32. Returns a 0-dim fp32 tensor.
    """
    p = _l2_normalize(prediction.float())
    t = _l2_normalize(target.detach().float())
    return (p - t).pow(2).sum(dim=-1).mean()


def byol_loss(online_1: Tensor, online_2: Tensor, target_1: Tensor, target_2: Tensor) -> Tensor:
    """BYOL's symmetric loss: each view's online prediction against the other view's target.

    online_k: (B, D) predictor outputs q(g(f(view_k))); target_k: (B, D) target projections of
    view_k. Returns the sum of the two directions, each averaged over the batch.
    """
    return normalized_mse(online_1, target_2) + normalized_mse(online_2, target_1)


def _unless(skip: Tensor | None, old: Tensor, new: Tensor) -> None:
    """old <- new in place, unless the one-element device flag `skip` is nonzero: chosen on
    the device (NaN-safe, unlike a multiply by 0), so the host never waits to read the flag."""
    old.copy_(new if skip is None else torch.where(skip.bool(), old, new))


@torch.no_grad()
def ema_update_(target: Sequence[Tensor], online: Sequence[Tensor], tau: float,
                skip: Tensor | None = None) -> None:
    """In place: target <- tau * target + (1 - tau) * online, for each pair of tensors;
    nothing where the device flag `skip` (None, or one int32 element) is nonzero."""
    for t, o in zip(target, online, strict=True):
        if skip is None:
            t.mul_(tau).add_(o, alpha=1.0 - tau)
        else:
            _unless(skip, t, t.mul(tau).add(o, alpha=1.0 - tau))  # the same rounding


@torch.no_grad()
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
    clip: bool = False,
    skip: Tensor | None = None,
) -> None:
    """One step of LARS as in the official BYOL implementation, in place on params and momenta.

    For each tensor w with gradient g and momentum mu:
        g <- g + wd * w;  trust = eta * ||w|| / ||g|| (1 where either norm is 0)
        mu <- momentum * mu + trust * g;  w <- w - lr * mu
    Tensors flagged in `excluded` (biases, normalization parameters) skip both the weight decay
    and the trust scaling. The gradients are not modified.

    `clip` sets trust <- min(trust / lr, 1) (1 when lr is 0), so that each tensor's rate
    lr * trust becomes min(eta * ||w|| / ||g||, lr): the trust ratio itself, capped at lr; as
    solo-learn's LARS does for the CIFAR numbers (lr 1.0, eta 0.02). Without the cap, a large
    eta over small BYOL gradients gives steps many times the global lr.

    Where the device flag `skip` (None, or one int32 element) is nonzero, nothing is written.
    """
    for w, g, mu, plain in zip(params, grads, momenta, excluded, strict=True):
        update = g.float()
        if not plain:
            update = update + weight_decay * w
            w_norm = torch.linalg.vector_norm(w)
            u_norm = torch.linalg.vector_norm(update)
            valid = (w_norm > 0) & (u_norm > 0)
            trust = torch.where(valid, eta * w_norm / u_norm, 1.0)
            if clip:
                capped = torch.clamp(trust / lr, max=1.0) if lr > 0 else torch.ones_like(trust)
                trust = torch.where(valid, capped, trust)
            update = update * trust
        if skip is None:
            mu.mul_(momentum).add_(update)
            w.sub_(mu, alpha=lr)
        else:
            new_mu = mu.mul(momentum).add(update)  # the same operations, the same rounding
            _unless(skip, w, w.sub(new_mu, alpha=lr))
            _unless(skip, mu, new_mu)


def _direction_grad(p: Tensor, z: Tensor) -> Tensor:
    """-1/2 d ||p r(p) - z r(z)||^2 / dp per row, r(x) = rsqrt(max(sum x^2, eps)); fp32.

    r(p) (z_hat - c p_hat) with c = cos(p, z); where the norm is below the floor, r(p) is a
    constant and c = 1 (||p_hat||^2 then still depends on p)."""
    p, z = p.float(), z.float()
    squares = p.pow(2).sum(dim=-1, keepdim=True)
    scale = torch.rsqrt(torch.clamp(squares, min=NORM_EPS))
    p_hat, z_hat = p * scale, _l2_normalize(z)
    c = torch.where(squares > NORM_EPS, (p_hat * z_hat).sum(dim=-1, keepdim=True), 1.0)
    return scale * (z_hat - c * p_hat)


def byol_loss_backward(online_1: Tensor, online_2: Tensor, target_1: Tensor, target_2: Tensor,
                       grad_loss: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of `byol_loss` for online_1 and online_2 (in their dtypes), in closed form."""
    scale = grad_loss.float() * (-2.0 / online_1.shape[0])
    return ((scale * _direction_grad(online_1, target_2)).to(online_1.dtype),
            (scale * _direction_grad(online_2, target_1)).to(online_2.dtype))
