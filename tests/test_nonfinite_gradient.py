"""A gradient that is not finite while the loss is: the run treats it as it treats a non-finite
loss (see test_reliability.py). Here one element of the first parameter's gradient is inf."""

import json
from pathlib import Path
from unittest import mock

import pytest
import torch

import byol.metrics
import byol.trainer
from byol.checkpoint import load_checkpoint
from byol.errors import UserError
from byol.pretrain import prepare_run

# No warmup: every step has a nonzero lr, so a step that was applied moves the weights.
MOVING = {"warmup_epochs": 0}


def _state(trainer) -> list[torch.Tensor]:
    """Copies of what a step changes: the weights, the momenta, the target."""
    return [t.clone() for t in (trainer.optimizer.flat.params.data,
                                trainer.optimizer.flat.momenta.data,
                                trainer.target_params.data)]


def _inf_gradient_on(trainer, bad: int, snapshots: dict[int, list[torch.Tensor]]):
    """Put an inf into one element of the stem convolution's gradient on backward pass `bad`
    (one per step, counted from 0), and take `_state` during the backward passes named in
    `snapshots`: before anything of that step is applied, after all of the step before."""
    calls = iter(range(10**6))

    def hook(grad):
        call = next(calls)
        if call in snapshots:
            snapshots[call] = _state(trainer)
        if call == bad:
            grad = grad.clone()
            grad[0, 0, 0, 0] = float("inf")
        return grad

    # The first parameter in the optimizer's flat buffers.
    return trainer.model.online.encoder.conv1.weight.register_hook(hook)


def _recorded_losses(losses: list):
    """A patch that keeps each step's loss."""
    real_loss = byol.trainer.ops.byol_loss

    def loss(*args, **kwargs):
        value = real_loss(*args, **kwargs)
        losses.append(value.detach().clone())
        return value

    return mock.patch.object(byol.trainer.ops, "byol_loss", loss)


def _logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_an_inf_gradient_with_a_finite_loss_stops_the_run_with_nothing_applied(tiny):
    # The last step is the bad one, so nothing after it could have moved the weights either.
    trainer, _ = prepare_run(None, {**tiny, **MOVING, "steps": 3, "checkpoint_every": 1},
                             Path("run"), None)
    snapshots, losses = {2: None}, []
    _inf_gradient_on(trainer, 2, snapshots)
    with _recorded_losses(losses), pytest.raises(UserError) as error:
        trainer.fit()
    assert torch.isfinite(losses[2])
    message = str(error.value)
    assert "\n" not in message
    assert ("non-finite at step 3; the last good checkpoint is run/last.pt (step 2)"
            in message and "--on-nan skip" in message)
    assert all(torch.equal(b, a) for b, a in zip(snapshots[2], _state(trainer), strict=True))
    assert load_checkpoint(Path("run/last.pt"))["step"] == 2
    assert _logged_steps(Path("run")) == [1, 2]


def test_on_nan_skip_steps_over_an_inf_gradient_with_nothing_applied(tiny):
    trainer, _ = prepare_run(None, {**tiny, **MOVING, "on_nan": "skip"}, Path("run"), None)
    snapshots, losses = {2: None, 3: None}, []
    _inf_gradient_on(trainer, 2, snapshots)
    with _recorded_losses(losses), mock.patch.object(byol.metrics, "FLUSH_SECONDS", 0.0):
        summary = trainer.fit()
    assert torch.isfinite(losses[2])
    # Between the bad step's backward pass and the next one's: nothing moved.
    assert all(torch.equal(b, a) for b, a in zip(snapshots[2], snapshots[3], strict=True))
    # The steps after it did move everything (so the comparison above could see a change).
    assert not any(torch.equal(b, a) for b, a in zip(snapshots[3], _state(trainer), strict=True))
    assert summary.step == tiny["steps"] and not summary.interrupted
    assert _logged_steps(Path("run")) == [1, 2, 4, 5, 6]
    assert summary.last_record["skipped_steps"] == 1
    assert torch.isfinite(trainer.optimizer.flat.params.data).all()
