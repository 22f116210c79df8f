"""The BYOL training loop.

    byolctl pretrain                         # the demo preset, on the built-in dataset
    byolctl pretrain --arch resnet50 --data random --steps 100

One step: two views -> online network (f, g, q) and target network (f, g), each view on its
own so BatchNorm keeps per-view statistics -> symmetric normalized-MSE loss -> backward ->
LARS -> EMA of the target. The schedules are precomputed arrays indexed by the step. The run
is built by `byol.build.build_trainer`; checkpoints, metrics, monitors and the non-finite
policy are components that each answer for themselves.
"""

import contextlib
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from byol import distributed, ops
from byol.checkpoint import Checkpointer
from byol.config import PretrainConfig, to_dict
from byol.data import TwoViewBatch, TwoViewLoader
from byol.errors import UserError
from byol.flat import FlatBuffer
from byol.metrics import StepMetrics
from byol.models import BYOL
from byol.monitors import Monitors
from byol.nan_policy import NonFiniteGuard
from byol.optim import LARS


@dataclass
class RunSummary:
    """What `Trainer.fit` returns."""

    step: int
    total_steps: int
    interrupted: bool
    checkpoint: Path | None
    last_record: dict[str, Any] | None
    knn: dict[str, float] | None  # the newest kNN check


@dataclass
class Trainer:
    """A pretraining run, built by `byol.build.build_trainer`, run with `fit`."""

    config: PretrainConfig
    run_dir: Path
    processes: distributed.Processes
    device: torch.device
    loader: TwoViewLoader
    model: BYOL
    optimizer: LARS
    target_params: FlatBuffer  # the target's parameters, laid out like the online ones
    online_forward: nn.Module  # images -> (features, projection, prediction), maybe compiled
    target_forward: nn.Module  # images -> (features, projection), maybe compiled
    autocast: contextlib.AbstractContextManager
    lr_schedule: list[float]  # one value per step
    tau_schedule: list[float]
    total_steps: int
    monitors: Monitors
    checkpointer: Checkpointer
    guard: NonFiniteGuard
    step: int = 0  # steps done
    _stop: threading.Event = field(default_factory=threading.Event)

    # ----------------------------------------------------------------------------- the loop

    def train_step(self, batch: TwoViewBatch) -> dict[str, Any]:
        """One optimizer step on `batch`; returns its metrics (device tensors and host
        numbers). Where the loss or a gradient is not finite, the device flag `skipped` is set
        and nothing is applied, without the host waiting to know (see `byol.nan_policy`)."""
        lr, tau = self.lr_schedule[self.step], self.tau_schedule[self.step]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.autocast:
            # (B, D) features, (B, P) projections and predictions
            features_1, projection_1, prediction_1 = self.online_forward(batch.view1)
            _, projection_2, prediction_2 = self.online_forward(batch.view2)
            with torch.no_grad():
                _, target_1 = self.target_forward(batch.view1)
                _, target_2 = self.target_forward(batch.view2)
            loss = ops.byol_loss(prediction_1, prediction_2, target_1, target_2,
                                 backend=self.config.kernels)

        self.optimizer.zero_grad()  # in place: the gradients are views of one flat buffer
        loss.backward()
        skipped = self.guard.flag(loss, self.optimizer.flat.grads.data)
        self.optimizer.step(skip=skipped)
        ops.ema_update_(self.target_params, self.optimizer.flat_params, tau,
                        backend=self.config.kernels, skip=skipped)
        self.step += 1  # a skipped step's batch is spent too: the schedules and data move on

        metrics = {"loss": loss.detach(), "collapse_std": collapse_std(projection_1),
                   "skipped": skipped, "lr": lr, "tau": tau}
        if self.monitors.probe is not None:
            metrics.update(self.monitors.probe.step(features_1, batch.labels, skipped))
        return metrics

    def fit(self, on_progress: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
        """Train from the current step to the end, or until a stop is requested.

        A checkpoint is written every `checkpoint_every` steps and when the loop ends.
        `on_progress` receives the newest metrics record about once a second (on rank 0).
        A run that cannot go on (non-finite numbers, out of memory, a full disk) raises a
        UserError naming the last good checkpoint.
        """
        self.model.train()
        start_step, batches = self.step, iter(self.loader)
        metrics = StepMetrics(self.run_dir if self.processes.is_main else None, self.step,
                              self.loader.steps_per_epoch,
                              self.config.batch_size * self.processes.world_size,
                              self.checkpointer.writing, self._flagged, self.guard.counts())
        with _stop_on_signals(self._stop), self._out_of_memory_explained(), metrics:
            # Every rank takes the same decisions at the same step: stop, write, check.
            while self.step < self.total_steps and not self._stop_requested():
                step_metrics = self.train_step(next(batches))
                metrics.add(self.step - 1, step_metrics)
                if self.monitors.knn_due(self.step):
                    with metrics.paused():
                        metrics.add_check(self.step - 1,
                                          self.monitors.check_knn(self.model.online.encoder))
                checkpoint_due = self.checkpointer.due(self.step)
                if checkpoint_due or metrics.due():
                    metrics.flush(on_progress)
                if checkpoint_due:
                    with metrics.paused():
                        self.save()
            # Finished, or a stop was requested: keep every step done so far.
            metrics.flush(on_progress)
            if self.step not in (start_step, self.checkpointer.saved_step):
                self.save()
        return RunSummary(self.step, self.total_steps, self.step < self.total_steps,
                          self.checkpointer.last, metrics.last_record, metrics.last_check)

    # ----------------------------------------------------------------------------- control

    def request_stop(self) -> None:
        """Finish the current step, write a checkpoint, and return from `fit`."""
        self._stop.set()

    def _stop_requested(self) -> bool:
        return distributed.any_rank(self._stop.is_set())[0]

    def _flagged(self, step: int) -> dict[str, int]:
        """Apply the non-finite policy to (1-based) `step`, read back flagged; the counts that
        later records carry."""
        self.guard.skipped_step(step, self.model, self.checkpointer)
        return self.guard.counts()

    @contextlib.contextmanager
    def _out_of_memory_explained(self):
        """Turn running out of GPU memory into a UserError with the batch size and what to
        try."""
        try:
            yield
        except torch.OutOfMemoryError as error:
            batch = self.config.batch_size
            raise UserError(
                f"Out of GPU memory at step {self.step + 1} with batch size {batch} per GPU; "
                f"{self.checkpointer.last_good()}. Start again with --batch-size "
                f"{max(1, batch // 2)} (and twice the GPUs through torchrun to keep the global "
                "batch), or with --precision bf16 if it is fp32."
            ) from error

    # ----------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly. Every rank must call it (it
        gathers each rank's position in the data)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        probe = self.monitors.probe
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "config": to_dict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "data": {"world_size": self.processes.world_size,
                     "ranks": distributed.gather_objects(self.loader.state_dict())},
            "rng": rng,
            "skipped_steps": self.guard.skipped,
            **({"probe": probe.state_dict()} if probe is not None else {}),
        }

    def save(self) -> Path:
        """Write a checkpoint of the current step (rank 0 writes); returns the path of last.pt.
        A failed write is a UserError, and the checkpoints already written stay whole."""
        return self.checkpointer.save(self.state_dict(), self.step)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by `state_dict`.

        On the same number of processes each rank continues its part of the data exactly. On
        another number, the data position cannot carry over: the epoch's data starts again in
        a new order, while the step, the schedules and every weight continue.
        """
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        ranks = state["data"]["ranks"]
        if len(ranks) == self.processes.world_size:
            self.loader.load_state_dict(ranks[self.processes.rank])
        else:
            self.loader.load_state_dict({"epoch": ranks[0]["epoch"], "position": 0})
        if self.monitors.probe is not None and "probe" in state:
            self.monitors.probe.load_state_dict(state["probe"])
        self.step = self.checkpointer.saved_step = state["step"]
        self.guard.skipped = state.get("skipped_steps", 0)
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


def collapse_std(projection: Tensor) -> Tensor:
    """The collapse signal: per-dimension std of the l2-normalized (B, P) projections, averaged;
    1/sqrt(P) is healthy, 0 means every image maps to the same point."""
    return F.normalize(projection.detach().float(), dim=1).std(dim=0).mean()


def saved_world_size(state: dict[str, Any]) -> int:
    """How many processes wrote a checkpoint."""
    return state["data"]["world_size"]


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
    """SIGINT/SIGTERM set `stop` (the loop then checkpoints and returns); a second one
    interrupts at once. Handlers are installed only on the main thread, as Python requires."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
