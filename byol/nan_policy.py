"""What a step whose loss or gradients are not finite does (`--on-nan`): stop the run, or
skip the step with nothing applied, at most `--max-skipped-steps` times."""

import torch
from torch import Tensor, nn

from byol import distributed
from byol.checkpoint import Checkpointer
from byol.errors import UserError


class NonFiniteGuard:
    """Checks each step before anything is applied, and applies the policy to a bad one."""

    def __init__(self, policy: str, max_skipped: int):
        self.policy, self.max_skipped = policy, max_skipped
        self.skipped = 0  # steps with a non-finite loss or gradient, over the whole run

    def all_finite(self, loss: Tensor, grads: Tensor) -> bool:
        """Whether the loss and every gradient (one flat buffer) are finite, on every rank.

        This is the loop's one host sync per step, the price of never applying a bad update:
        it waits for the backward pass, and the next step's kernels queue again a moment
        later. A NaN or inf anywhere makes the sum non-finite; summing reads each gradient
        once, where `isfinite().all()` would also write a mask the size of the buffer.
        """
        total = loss.detach().float() + grads.sum()
        return not distributed.any_rank(not torch.isfinite(total).item())[0]

    def skip(self, step: int, model: nn.Module, checkpointer: Checkpointer) -> None:
        """Stop the run at (1-based) `step` with a UserError naming the last good checkpoint
        (policy `stop`, too many skips, or poisoned BatchNorm statistics), or count it as
        skipped."""
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
        # statistics; a non-finite one would poison every later evaluation.
        if not all(torch.isfinite(b).all() for b in model.buffers() if b.is_floating_point()):
            raise UserError(f"Step {step} left non-finite BatchNorm statistics, which "
                            f"skipping cannot undo; {checkpointer.last_good()}. Start a new "
                            "run with a lower --lr.")

    def counts(self) -> dict[str, int]:
        """What the metrics record of skipped steps: nothing until one was skipped."""
        return {"skipped_steps": self.skipped} if self.skipped else {}
