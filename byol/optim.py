"""LARS, the optimizer of the official BYOL implementation, as a torch.optim.Optimizer.

    optimizer = LARS(model.parameters(), lr=..., weight_decay=1e-6, momentum=0.9, eta=1e-3,
                     backend="fused")

On construction the parameters move into one flat fp32 buffer, their gradients into another
and the momenta into a third (`byol.flat`), so that the fused kernels update them all in two
launches. Every tensor outside is still an ordinary per-parameter view, and state dicts keep
the usual per-parameter form.
"""

from collections.abc import Iterable

import torch
from torch import nn

from byol import ops
from byol.flat import FlatBuffer, attach_flat_gradients_, flatten_parameters_


class LARS(torch.optim.Optimizer):
    """LARS with momentum; see `kernels.reference.lars_step_` for the update rule.

    As in the official implementation, every 1-D parameter (biases, BatchNorm scales and
    shifts) gets neither weight decay nor trust-ratio scaling. One parameter group: the trainer
    sets its lr before each step. `clip` makes each tensor's rate its trust ratio, capped at
    the global lr (see `kernels.reference.lars_step_`). Build it after the model is on its
    device and in its memory format, since the parameters become views into the flat buffer.
    """

    def __init__(self, parameters: Iterable[nn.Parameter], *, lr: float, weight_decay: float,
                 momentum: float, eta: float, backend: str, clip: bool = False):
        parameters = list(parameters)
        super().__init__(parameters, dict(lr=lr, weight_decay=weight_decay,
                                          momentum=momentum, eta=eta, clip=clip))
        self.backend = backend
        self.flat = ops.LarsTensors(
            params=flatten_parameters_(parameters),
            grads=attach_flat_gradients_(parameters),
            momenta=FlatBuffer(parameters),
            excluded=[p.ndim <= 1 for p in parameters],
        )
        for p, momentum_buffer in zip(parameters, self.flat.momenta.views):
            self.state[p]["momentum_buffer"] = momentum_buffer

    @property
    def flat_params(self) -> FlatBuffer:
        """The flat buffer the parameters are views into."""
        return self.flat.params

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zero every gradient in place, in one fill of the flat buffer.

        `set_to_none` is ignored: the gradients must stay views of the flat buffer.
        """
        self.flat.grads.data.zero_()

    @torch.no_grad()
    def step(self, closure=None, skip: torch.Tensor | None = None):
        """One LARS step, or none where the one-element device flag `skip` is nonzero."""
        group = self.param_groups[0]
        ops.lars_step_(self.flat, lr=group["lr"], weight_decay=group["weight_decay"],
                       momentum=group["momentum"], eta=group["eta"], clip=group["clip"],
                       backend=self.backend, skip=skip)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load as usual, then copy the momenta back into the flat buffer (the base class
        would leave them as separate tensors)."""
        super().load_state_dict(state_dict)
        for p, momentum_buffer in zip(self.param_groups[0]["params"], self.flat.momenta.views):
            momentum_buffer.copy_(self.state[p]["momentum_buffer"])
            self.state[p]["momentum_buffer"] = momentum_buffer
