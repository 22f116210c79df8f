"""LARS, the optimizer of the official BYOL implementation, as a torch.optim.Optimizer.

The arithmetic lives behind the dispatch point (`byol.ops.lars_step_`); this class keeps the
momentum buffers and the bias/normalization exclusion so that state dicts stay standard.
"""

from collections.abc import Iterable

import torch
from torch import nn

from byol import ops


def lars_param_groups(parameters: Iterable[nn.Parameter]) -> list[dict]:
    """Two parameter groups: weights, and the excluded biases and normalization parameters.

    As in the official implementation, every 1-D parameter (biases, BatchNorm scales and
    shifts) gets neither weight decay nor trust-ratio scaling.
    """
    params = list(parameters)
    return [
        {"params": [p for p in params if p.ndim > 1], "lars_exclude": False},
        {"params": [p for p in params if p.ndim <= 1], "lars_exclude": True},
    ]


class LARS(torch.optim.Optimizer):
    """LARS with momentum; see `kernels.reference.lars_step_` for the update rule.

    One call to the dispatch point updates every tensor, so all groups share the first group's
    lr, weight decay, momentum and eta (the trainer sets lr on every group before each step);
    groups differ only in `lars_exclude`.
    """

    def __init__(self, param_groups: list[dict], *, lr: float, weight_decay: float,
                 momentum: float, eta: float, backend: str):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        lars_exclude=False)
        super().__init__(param_groups, defaults)
        self.backend = backend

    @torch.no_grad()
    def step(self, closure=None):
        params, grads, momenta, excluded = [], [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                params.append(p)
                grads.append(p.grad)
                momenta.append(state["momentum_buffer"])
                excluded.append(group["lars_exclude"])
        group = self.param_groups[0]
        ops.lars_step_(
            params, grads, momenta, excluded,
            lr=group["lr"], weight_decay=group["weight_decay"], momentum=group["momentum"],
            eta=group["eta"], backend=self.backend,
        )
