"""The trainer against BYOL written out plainly from its definition (the paper and the official
implementation): a few whole steps, then every weight, statistic and momentum compared.

The reference below has its own loss (a cosine), its own LARS and EMA loops and its own
schedules, and passes each view through the networks on its own. It shares with the trainer
the network definition (`BYOL`) and the batches, and before each step it takes over the
trainer's weights, statistics and momenta. Were the trainer to pair a prediction with the
wrong view's target, mix the views' BatchNorm statistics, update the target before the
optimizer step, use a schedule one step off, or decay an excluded tensor, the weights would
part.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from byol.data.demo_images import TRAIN_SIZE
from byol.models import BYOL
from byol.pretrain import prepare_run

STEPS = 5
WARMUP_STEPS = 2  # in steps, on the demo data


def learning_rate(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup from 0, then cosine decay to 0."""
    if step < warmup:
        return peak * step / warmup
    return peak * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2


def target_rate(step: int, tau_base: float, total: int) -> float:
    """tau_k = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2."""
    return 1 - (1 - tau_base) * (math.cos(math.pi * step / total) + 1) / 2


def regression_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of || p/||p|| - z/||z|| ||^2 = 2 - 2 cos(p, z)."""
    return (2 - 2 * F.cosine_similarity(prediction, target, dim=-1)).mean()


def reference_step(model: BYOL, momenta: list[torch.Tensor], view1, view2, *, lr: float,
                   tau: float, config) -> None:
    """One BYOL step, in place on `model` and `momenta`."""
    def online(images):
        _, projection = model.online(images)
        return model.predictor(projection)

    prediction_1, prediction_2 = online(view1), online(view2)
    with torch.no_grad():  # the target in train mode: its BatchNorm uses each view's batch
        _, target_1 = model.target(view1)
        _, target_2 = model.target(view2)
    loss = regression_loss(prediction_1, target_2) + regression_loss(prediction_2, target_1)

    params = [*model.online.parameters(), *model.predictor.parameters()]
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        for weight, grad, momentum in zip(params, grads, momenta, strict=True):
            update = grad  # biases and BatchNorm parameters (1-d): plain momentum SGD
            if weight.ndim > 1:  # weights: weight decay and the trust ratio
                update = grad + config.weight_decay * weight
                trust = config.lars_eta * weight.norm() / update.norm()
                if config.lars_clip:  # the rate lr * trust becomes min(trust, lr)
                    trust = torch.clamp(trust / lr, max=1.0) if lr > 0 else 1.0
                update = trust * update
            momentum.mul_(config.momentum).add_(update)
            weight.sub_(lr * momentum)
        # After the optimizer step: parameters only, the statistics stay the target's own.
        for target, source in zip(model.target.parameters(), model.online.parameters(),
                                  strict=True):
            target.copy_(tau * target + (1 - tau) * source)


@pytest.mark.parametrize("clip", [True, False], ids=["clipped-lars", "official-lars"])
def test_the_trainer_takes_the_same_steps_as_byol_written_out(tiny, clip):
    overrides = {**tiny, "steps": STEPS, "lr": 8.0, "weight_decay": 1e-3, "tau_base": 0.9,
                 "lars_clip": clip, "lars_eta": 0.02 if clip else 0.5,
                 "warmup_epochs": WARMUP_STEPS / (TRAIN_SIZE // tiny["batch_size"])}
    trainer, _ = prepare_run(None, overrides, None, None)
    config = trainer.config
    reference = BYOL(config.model).train()
    initial = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    trained = [*trainer.model.online.parameters(), *trainer.model.predictor.parameters()]
    peak_lr = config.lr * config.batch_size / 256

    batches = iter(trainer.loader)
    for step in range(STEPS):
        # Each step from the trainer's state: over several steps of so small a batch, rounding
        # differences grow past any useful tolerance.
        reference.load_state_dict(trainer.model.state_dict())
        momenta = [trainer.optimizer.state[p]["momentum_buffer"].clone()
                   if "momentum_buffer" in trainer.optimizer.state[p] else torch.zeros_like(p)
                   for p in trained]
        batch = next(batches)
        reference_step(reference, momenta, batch.view1, batch.view2,
                       lr=learning_rate(step, peak_lr, WARMUP_STEPS, STEPS),
                       tau=target_rate(step, config.tau_base, STEPS), config=config)
        trainer.train_step(batch)

        expected, actual = reference.state_dict(), trainer.model.state_dict()
        for name, value in expected.items():
            if value.is_floating_point():
                torch.testing.assert_close(actual[name], value, rtol=1e-4, atol=1e-5,
                                           msg=f"{name} after step {step}")
        for parameter, momentum in zip(trained, momenta, strict=True):
            torch.testing.assert_close(trainer.optimizer.state[parameter]["momentum_buffer"],
                                       momentum, rtol=1e-4, atol=1e-5)
    # The comparison means something: every part of the network moved.
    for part in ("online.encoder.conv1.weight", "online.projector.3.weight",
                 "predictor.0.weight", "target.encoder.conv1.weight",
                 "target.encoder.bn1.running_mean"):
        assert (actual[part] - initial[part]).abs().max() > 1e-4, part
