"""What a step whose loss or gradients are not finite does (`--on-nan`): stop the run, or
skip the step, at most `--max-skipped-steps` times.

The check costs no host sync: each step computes a device flag, the LARS step and the EMA read
it on the device and write nothing when it is set, and the host learns of it with the metrics
(about once a second, see `byol.metrics.StepMetrics`), then applies the policy. So a bad step
never reaches the weights, the momentum or the target, and the GPU queue never drains.
"""

import torch
from torch import Tensor, nn

from byol import distributed
from byol.checkpoint import Checkpointer
from byol.errors import UserError


class NonFiniteGuard:
    """Flags each step on the device, and applies the policy when the host reads the flags."""

    def __init__(self, policy: str, max_skipped: int):
        self.policy, self.max_skipped = policy, max_skipped
        self.skipped = 0  # steps with a non-finite loss or gradient, over the whole run

    def flag(self, loss: Tensor, grads: Tensor) -> Tensor:
        """A one-element int32 device tensor: 1 when the loss or any gradient (one flat
        buffer) is not finite on any rank, else 0. A NaN or inf anywhere makes the sum
        non-finite; summing reads each gradient once, where `isfinite().all()` would also
        write a mask the size of the buffer."""
        total = loss.detach().float() + grads.sum()
        return distributed.max_across_ranks_((~torch.isfinite(total)).to(torch.int32))

    def skipped_step(self, step: int, model: nn.Module, checkpointer: Checkpointer) -> None:
        """The host has read that (1-based) `step` was flagged, and that nothing of it was
        applied: stop with a UserError naming the last good checkpoint (policy `stop`, too
        many skips, or poisoned BatchNorm statistics), or count it as skipped."""
        if self.policy == "stop":
            retry = ("resume from it with --on-nan skip" if checkpointer.saved_step is not None
                     else "start again with --on-nan skip")
            raise UserError(f"The loss or a gradient became non-finite at step {step}; "
                            f"{checkpointer.last_good()}. To step over such batches, {retry}; "
                            "or start a new run with a lower --lr.")
        self.skipped += 1
        if self.skipped > self.max_skipped:
            raise UserError(f"Step {step} had a non-finite loss or gradient, one more than "
                            f"--max-skipped-steps {self.max_skipped} allows; "
                            f"{checkpointer.last_good()}. Start a new run with a lower --lr.")
        # The forward pass of the bad step has already updated the BatchNorm running
        # statistics; a non-finite one would poison every later evaluation (and stays so).
        if not all(torch.isfinite(b).all() for b in model.buffers() if b.is_floating_point()):
            raise UserError(f"Step {step} left non-finite BatchNorm statistics, which "
                            f"skipping cannot undo; {checkpointer.last_good()}. Start a new "
                            "run with a lower --lr.")

    def counts(self) -> dict[str, int]:
        """What the metrics record of skipped steps: nothing until one was skipped."""
        return {"skipped_steps": self.skipped} if self.skipped else {}
