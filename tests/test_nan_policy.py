"""A non-finite loss or gradient never reaches the weights, the momenta or the target, with
either kernel set, and finding out costs the step no host sync: the LARS step and the EMA read
a device flag, and the host applies --on-nan when it reads the metrics."""

import json
from pathlib import Path
from unittest import mock

import pytest
import torch

import byol.metrics
import byol.trainer
from byol.errors import UserError
from byol.pretrain import prepare_run

KERNELS = ["eager", "fused"]  # fused runs under TRITON_INTERPRET=1 on the CPU
INJECTIONS = ["loss", "gradient"]


def _state(trainer) -> list[torch.Tensor]:
    return [t.clone() for t in (trainer.optimizer.flat.params.data,
                                trainer.optimizer.flat.momenta.data,
                                trainer.target_params.data)]


def _poisoned(trainer, where: str, calls: set[int]):
    """Make the loss (where="loss") or one parameter's gradient ("gradient") NaN on these
    calls of train_step, counted from 0; the loss stays finite in the second case."""
    real_step, count = byol.trainer.Trainer.train_step, iter(range(10**6))
    weight = trainer.model.predictor[-1].weight  # the last layer: its gradient alone

    def step(self, batch):
        if next(count) not in calls:
            return real_step(self, batch)
        if where == "gradient":
            handle = weight.register_hook(lambda grad: grad * float("nan"))
            try:
                return real_step(self, batch)
            finally:
                handle.remove()
        real_loss = byol.trainer.ops.byol_loss
        with mock.patch.object(byol.trainer.ops, "byol_loss",
                               lambda *a, **k: real_loss(*a, **k) * float("nan")):
            return real_step(self, batch)

    return mock.patch.object(byol.trainer.Trainer, "train_step", step)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("where", INJECTIONS)
def test_a_flagged_step_moves_nothing(tiny, kernels, where):
    trainer, _ = prepare_run(None, {**tiny, "kernels": kernels}, Path("run"), None)
    batches = iter(trainer.loader)
    for _ in range(3):  # past the warmup's lr 0, so that a step would move the weights
        trainer.train_step(next(batches))
    before = _state(trainer)
    with _poisoned(trainer, where, {0}):
        metrics = trainer.train_step(next(batches))
    assert metrics["skipped"].item() == 1
    if where == "gradient":
        assert torch.isfinite(metrics["loss"])
    assert all(torch.equal(b, a) for b, a in zip(before, _state(trainer)))
    assert trainer.train_step(next(batches))["skipped"].item() == 0  # the next one applies
    assert not torch.equal(before[0], _state(trainer)[0])


@pytest.mark.parametrize("kernels", KERNELS)
def test_a_step_reads_nothing_back_from_the_device(tiny, kernels):
    trainer, _ = prepare_run(None, {**tiny, "kernels": kernels}, Path("run"), None)
    batches = iter(trainer.loader)
    trainer.train_step(next(batches))
    batch = next(batches)
    # Adam's step counters live on the host (a CPU tensor even for GPU parameters): the
    # probe's optimizer reads them without waiting for the device. Nothing else may.
    host_counters = {id(state["step"]) for state in trainer.monitors.probe.optimizer.state.values()}
    reads = {name: getattr(torch.Tensor, name) for name in ("item", "__bool__", "tolist")}

    def guarded(name):
        def read(tensor, *args, **kwargs):
            if id(tensor) not in host_counters:
                raise AssertionError(f"a training step called Tensor.{name}, a host sync")
            return reads[name](tensor, *args, **kwargs)
        return read

    with mock.patch.multiple(torch.Tensor, **{name: guarded(name) for name in reads}):
        trainer.train_step(batch)


@pytest.mark.parametrize("where", INJECTIONS)
def test_on_nan_stop_stops_at_the_flagged_step_when_the_host_reads_it(tiny, where):
    trainer, _ = prepare_run(None, {**tiny, "checkpoint_every": 2}, Path("run"), None)
    with _poisoned(trainer, where, {2}), pytest.raises(
            UserError, match=r"non-finite at step 3; the last good checkpoint is run/last.pt "
                             r"\(step 2\)"):
        trainer.fit()
    records = [json.loads(line) for line in Path("run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # the steps before it are kept


@pytest.mark.parametrize("where", INJECTIONS)
def test_on_nan_skip_counts_a_flagged_gradient_like_a_flagged_loss(tiny, where):
    trainer, _ = prepare_run(None, {**tiny, "on_nan": "skip"}, Path("run"), None)
    with _poisoned(trainer, where, {1}), mock.patch.object(byol.metrics, "FLUSH_SECONDS", 0.0):
        summary = trainer.fit()
    records = [json.loads(line) for line in Path("run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 3, 4, 5, 6]
    assert "skipped_steps" not in records[0] and records[1]["skipped_steps"] == 1
    assert summary.last_record["skipped_steps"] == 1 and trainer.guard.skipped == 1


def test_a_projection_wider_than_the_fused_loss_takes_is_refused_before_building(tiny):
    from kernels.loss import MAX_DIM

    with pytest.raises(UserError, match=f"projector_dim of at most {MAX_DIM}, not "
                                        f"{MAX_DIM + 1}; use --kernels eager"):
        prepare_run(None, {**tiny, "kernels": "fused", "projector_dim": MAX_DIM + 1},
                    Path("run"), None)
    assert not Path("run").exists()
