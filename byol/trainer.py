"""The BYOL training loop.

    byolctl pretrain                         # the demo preset, on the built-in dataset
    byolctl pretrain --arch resnet50 --data random --steps 100

One step: two views -> online network (f, g, q) and target network (f, g), each view on its
own so BatchNorm keeps per-view statistics -> symmetric normalized-MSE loss -> backward ->
LARS -> EMA of the target. The schedules are precomputed arrays indexed by the step.
"""

import contextlib
import inspect
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from byol import distributed, ops
from byol.checkpoint import LAST, save_checkpoint
from byol.config import PretrainConfig, to_dict
from byol.data import TwoViewBatch, build_loader
from byol.errors import UserError
from byol.flat import flatten_parameters_
from byol.metrics import MetricsLog
from byol.models import BYOL, OnlineNetwork
from byol.monitors import KnnMonitor, LinearProbe, held_out_data
from byol.optim import LARS
from byol.schedules import learning_rates, target_ema_rates

# Metrics are gathered on the device and read back at most this often: one host sync a second
# costs nothing measurable, one per step stalls the GPU queue.
FLUSH_SECONDS = 1.0
# DDP's option to sync buffers before each forward; recent PyTorch renamed it and warns on
# the old name (whose False also skips the sync at the start, which SyncBN makes moot).
SYNC_BUFFERS = ("forward_sync_buffers"
                if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else "broadcast_buffers")


@dataclass
class RunSummary:
    """What `Trainer.fit` returns."""

    step: int
    total_steps: int
    interrupted: bool
    checkpoint: Path | None
    last_record: dict[str, Any] | None
    # The newest kNN monitor check: usually in last_record, but a check on a final step that
    # `--on-nan skip` skipped has no record of its own.
    knn: dict[str, float] | None


class Trainer:
    """Builds everything a run needs from its config, and runs it with `fit`."""

    def __init__(self, config: PretrainConfig, run_dir: Path, total_steps: int | None = None):
        """`total_steps` overrides the run length the config gives (a run resumed on another
        number of processes keeps its length in steps)."""
        self.config = config
        self.run_dir = run_dir
        self.processes = distributed.current()
        self.device = torch.device(config.device)
        if self.device.type == "cuda" and self.processes.enabled:
            self.device = torch.device("cuda", self.processes.local_rank)
        ops.require_backend(config.kernels, self.device)
        torch.manual_seed(config.seed)  # the same initial weights on every rank

        self.loader = build_loader(config, self.device, self.processes.rank,
                                   self.processes.world_size)
        if self.loader.steps_per_epoch < 1:
            raise UserError(
                f"The data holds {self.loader.num_images} images, fewer than one batch of "
                f"{config.batch_size}; lower --batch-size."
            )
        self.total_steps = (total_steps or config.steps
                            or config.epochs * self.loader.steps_per_epoch)

        self.model = BYOL(config.model)
        if self.processes.enabled and self.device.type == "cuda":
            # BatchNorm statistics over the whole global batch, as in the paper. (SyncBatchNorm
            # needs GPUs: on the CPU each process normalizes over its own part of the batch.)
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model = self.model.to(self.device)
        if self.device.type == "cuda" or config.precision == "bf16":
            # cuDNN, and oneDNN in bf16, convolve fastest in channels_last; oneDNN in fp32 at
            # 16 px ran 18% slower in it. The first convolution converts the images.
            self.model = self.model.to(memory_format=torch.channels_last)
        # From here on the parameters are views into flat buffers (byol.flat): the optimizer
        # moves the online ones into its buffer, and the target ones go into a buffer laid out
        # like the start of it, so the EMA is one pass over both.
        self.optimizer = LARS(
            self.model.trainable_parameters(), lr=0.0, weight_decay=config.weight_decay,
            momentum=config.momentum, eta=config.lars_eta, clip=config.lars_clip,
            backend=config.kernels,
        )
        self.target_params = flatten_parameters_(list(self.model.target.parameters()))
        self.probe, self.knn_monitor, self.knn_every = self._build_monitors()
        # The lr scales with the global batch: the per-device batch times the processes.
        peak_lr = config.lr * config.batch_size * self.processes.world_size / 256
        warmup_steps = round(config.warmup_epochs * self.loader.steps_per_epoch)
        self.lr_schedule = learning_rates(peak_lr, warmup_steps, self.total_steps).tolist()
        self.tau_schedule = target_ema_rates(config.tau_base, self.total_steps).tolist()

        # Compiled callables live beside the modules, so state dicts keep their plain names.
        online: nn.Module = OnlineNetwork(self.model.online, self.model.predictor)
        if self.processes.enabled:
            # DDP averages the gradients, bucketed and overlapped with the backward pass. With
            # gradient_as_bucket_view off, it reduces in its own buckets and copies the result
            # back into each p.grad in place, so the gradients stay views of the optimizer's
            # flat buffer and the fused LARS still covers them in two launches. The price is
            # two copies per gradient (about 8 bytes per parameter); bucket views instead would
            # leave the gradients scattered over DDP's buckets, in DDP's order.
            # Rank 0's BatchNorm statistics go to all before each forward on the CPU, which
            # has no SyncBatchNorm; on GPUs SyncBN keeps them equal.
            online = DistributedDataParallel(
                online, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=False, **{SYNC_BUFFERS: self.device.type != "cuda"})
        compile_fn = torch.compile if config.compile else (lambda module: module)
        self.online_forward = compile_fn(online)
        self.target_forward = compile_fn(self.model.target)
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if config.precision == "bf16" else contextlib.nullcontext()
        )
        self.step = 0
        self.saved_step: int | None = None  # the step of this run's newest checkpoint
        self.skipped_steps = 0  # steps with a non-finite loss or gradient (on_nan "skip")
        self._stop = threading.Event()

    # ----------------------------------------------------------------------------- one step

    def train_step(self, batch: TwoViewBatch) -> dict[str, torch.Tensor] | None:
        """One optimizer step on `batch`; returns device tensors for the metrics, or None when
        the loss or a gradient was not finite and nothing was applied (see `_skip_step`)."""
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
        if not self._all_finite(loss):
            self._skip_step()
            return None
        self.optimizer.step()
        ops.ema_update_(self.target_params, self.optimizer.flat_params, tau,
                        backend=self.config.kernels)
        self.step += 1

        # Collapse signal: per-dimension std of l2-normalized projections; 1/sqrt(dim) is
        # healthy, 0 means every image maps to the same point.
        collapse_std = F.normalize(projection_1.detach().float(), dim=1).std(dim=0).mean()
        metrics = {"loss": loss.detach(), "collapse_std": collapse_std}
        if self.probe is not None:
            metrics.update(self.probe.step(features_1, batch.labels))
        return metrics

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss and every gradient are finite, on every rank.

        This is the loop's one host sync per step, the price of never applying a bad update:
        it waits for the backward pass, and the next step's kernels queue again a moment
        later. A NaN or inf anywhere makes the sum non-finite; summing reads each gradient
        once, where `isfinite().all()` would also write a mask the size of the buffer.
        """
        total = loss.detach().float() + self.optimizer.flat.grads.data.sum()
        return not distributed.any_rank(not torch.isfinite(total).item())[0]

    def _skip_step(self) -> None:
        """Handle a step whose loss or gradients were not finite, before anything is applied:
        stop the run (on_nan "stop"), or count the step as skipped and go on (on_nan "skip",
        at most `max_skipped_steps` times over the whole run)."""
        step = self.step + 1
        self.optimizer.zero_grad()
        if self.config.on_nan == "stop":
            retry = ("resume from it with --on-nan skip" if self.saved_step is not None
                     else "start again with --on-nan skip")
            raise UserError(f"The loss or a gradient became non-finite at step {step}; "
                            f"{self.last_good()}. To step over such batches, {retry}; or start "
                            "a new run with a lower --lr.")
        self.skipped_steps += 1
        if self.skipped_steps > self.config.max_skipped_steps:
            raise UserError(f"Step {step} had a non-finite loss or gradient, one more than "
                            f"--max-skipped-steps {self.config.max_skipped_steps} allows; "
                            f"{self.last_good()}. Start a new run with a lower --lr.")
        # The forward pass of the bad step has already updated the BatchNorm running
        # statistics; a non-finite one would poison every later evaluation.
        if not all(torch.isfinite(b).all() for b in self.model.buffers()
                   if b.is_floating_point()):
            raise UserError(f"Step {step} left non-finite BatchNorm statistics, which "
                            f"skipping cannot undo; {self.last_good()}. Start a new run with "
                            "a lower --lr.")
        self.step += 1  # its batch is spent: the schedules and the data move on

    def last_good(self) -> str:
        """Where the newest checkpoint of this run is, for error messages."""
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint is {self.run_dir / LAST} (step {self.saved_step})"

    # ----------------------------------------------------------------------------- monitors

    def _build_monitors(self) -> tuple[LinearProbe | None, KnnMonitor | None, int]:
        """The linear probe and kNN monitor this run asks for (see `byol.monitors`).

        Held-out data found beside the training folder that cannot serve (other class
        folders, no readable image) turns the kNN monitor off, saying why in `knn_unusable`,
        unless the user asked for the monitor; then it is an error."""
        config, classes = self.config, getattr(self.loader, "classes", None)
        self.knn_unusable: str | None = None
        probe = None
        if config.probe or (config.probe is None and classes):
            if not classes:
                raise UserError(f"--probe needs labeled data, and --data {config.data} has "
                                "none; use an image folder, shards or demo.")
            probe = LinearProbe(self.model.feature_dim, len(classes), config.seed)
            probe = probe.to(self.device)
        knn_data = config.knn_data or held_out_data(config.data)
        if config.knn_every and not knn_data:
            raise UserError("--knn-every needs held-out data; pass --knn-data with a folder "
                            "holding train/ and val/.")
        every = config.knn_every if config.knn_every is not None else (
            self.loader.steps_per_epoch if knn_data else 0)
        if not every:
            return probe, None, 0
        monitor, failure = None, None
        if self.processes.is_main:  # the kNN check runs on rank 0 only
            try:
                monitor = KnnMonitor(knn_data, image_size=config.image_size,
                                     batch_size=config.batch_size, workers=config.workers,
                                     device=self.device, seed=config.seed,
                                     precision=config.precision)
            except UserError as error:
                failure = error
        # Every rank takes rank 0's outcome, so that all stop with its message or go on.
        failure = distributed.share_from_main(failure)
        if failure is None:
            return probe, monitor, every
        if config.knn_data or config.knn_every is not None:
            raise failure
        self.knn_unusable = str(failure)
        return probe, None, 0

    def _knn_due(self) -> bool:
        """Whether the kNN monitor checks the step just done: every `knn_every` steps and at
        the end, where the end stands in for a scheduled check less than half an interval
        before it (which would measure nearly the same encoder)."""
        if self.step == self.total_steps:
            return True
        return self.step % self.knn_every == 0 and (
            2 * (self.total_steps - self.step) >= self.knn_every)

    def _knn(self) -> dict[str, float]:
        """Run the kNN monitor on the online encoder, then go back to training mode."""
        accuracy = self.knn_monitor.evaluate(self.model.online.encoder)
        self.model.train()
        return accuracy

    # ----------------------------------------------------------------------------- the loop

    def fit(self, on_progress: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
        """Train from the current step to the end, or until a stop is requested.

        A checkpoint is written every `checkpoint_every` steps and when the loop ends.
        `on_progress` receives the newest metrics record about once a second (on rank 0).
        A run that cannot go on (non-finite numbers, out of memory, a full disk) raises a
        UserError naming the last good checkpoint.
        """
        self.model.train()
        log = MetricsLog(self.run_dir, self.step) if self.processes.is_main else None
        pending: list[tuple[int, dict[str, torch.Tensor]]] = []
        monitored: dict[int, dict[str, float]] = {}  # step -> kNN results (rank 0)
        window_start = time.perf_counter()
        record, start_step, knn = None, self.step, None

        def flush() -> None:
            nonlocal pending, window_start, record
            images_per_s = len(pending) * self.config.batch_size * self.processes.world_size / (
                time.perf_counter() - window_start)
            with self._writing():
                written = self._write_metrics(log, pending, monitored, images_per_s)
            pending, window_start = [], time.perf_counter()
            if written is not None:  # None: only a kNN check on a skipped step
                record = written
                if on_progress is not None:
                    on_progress(record)

        batches = iter(self.loader)
        with _stop_on_signals(self._stop), self._out_of_memory_explained():
            try:
                # Every rank takes the same decisions at the same step: stop, flush.
                while self.step < self.total_steps and not distributed.any_rank(
                        self._stop.is_set())[0]:
                    metrics = self.train_step(next(batches))
                    if metrics is not None:
                        pending.append((self.step - 1, metrics))
                    if self.knn_monitor is not None and self._knn_due():
                        started = time.perf_counter()
                        monitored[self.step - 1] = knn = self._knn()
                        window_start += time.perf_counter() - started  # not training time
                    flush_due = distributed.any_rank(
                        time.perf_counter() - window_start >= FLUSH_SECONDS)[0]
                    at_checkpoint = self.step % self.config.checkpoint_every == 0
                    if (at_checkpoint or flush_due) and pending:
                        flush()
                    if at_checkpoint:
                        self.save()
                        window_start = time.perf_counter()  # saving is not training time
                # Finished, or a stop was requested: keep every step done so far.
                if pending or monitored:
                    flush()
                if self.step not in (start_step, self.saved_step):
                    self.save()
            except UserError:
                # Keep the records of the steps before the error. (With several processes
                # the error may have reached one rank only, and flushing takes all of them.)
                if (pending or monitored) and not self.processes.enabled:
                    with contextlib.suppress(Exception):
                        flush()
                raise
            finally:
                if log is not None:
                    log.close()
        checkpoint = self.run_dir / LAST if self.saved_step is not None else None
        return RunSummary(self.step, self.total_steps, self.step < self.total_steps,
                          checkpoint, record, knn)

    def request_stop(self) -> None:
        """Finish the current step, write a checkpoint, and return from `fit`."""
        self._stop.set()

    def _write_metrics(self, log: MetricsLog | None, pending: list,
                       monitored: dict[int, dict[str, float]],
                       images_per_s: float) -> dict | None:
        """Read the pending steps' metrics back from the device (one sync), averaged over the
        ranks, and log each on rank 0 with the monitors' results. A kNN check on a step that
        `--on-nan skip` skipped has no metrics to join and is logged alone. Returns the last
        record of the pending steps."""
        records: dict[int, dict[str, Any]] = {}
        if pending:
            names = list(pending[0][1])
            values = torch.stack([torch.stack([m[n].float() for n in names])
                                  for _, m in pending])
            values = distributed.mean_across_ranks_(values).tolist()
            skipped = {"skipped_steps": self.skipped_steps} if self.skipped_steps else {}
            for (step, _), row in zip(pending, values):
                records[step] = {"step": step + 1, "epoch": self._epoch(step),
                                 **dict(zip(names, row)), "lr": self.lr_schedule[step],
                                 "tau": self.tau_schedule[step], "images_per_s": images_per_s,
                                 **skipped}
        # Every check so far belongs to a step done since the last write.
        for step, accuracy in monitored.items():
            records.setdefault(step, {"step": step + 1, "epoch": self._epoch(step)})
            records[step].update(accuracy)
        monitored.clear()
        if log is not None:
            for step in sorted(records):
                log.write(records[step])
            log.flush()
        return records[pending[-1][0]] if pending else None

    def _epoch(self, step: int) -> float:
        """The epoch reached at the end of (0-based) `step`."""
        return (step + 1) / self.loader.steps_per_epoch

    @contextlib.contextmanager
    def _writing(self):
        """Turn a failed write into the run folder (a full disk, a lost mount) into a
        UserError that names the checkpoint to resume from. The files already there stay
        whole: checkpoints are written beside them and renamed into place (byol.checkpoint)."""
        try:
            yield
        except OSError as error:
            raise UserError(f"Could not write to the run folder {self.run_dir} "
                            f"({error.strerror or error}); {self.last_good()}. Free some space "
                            "and resume with --resume auto --out "
                            f"{self.run_dir}.") from error

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
                f"{self.last_good()}. Start again with --batch-size {max(1, batch // 2)} "
                "(and twice the GPUs through torchrun to keep the global batch), or with "
                "--precision bf16 if it is fp32."
            ) from error

    # ----------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly. Every rank must call it (it
        gathers each rank's position in the data)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "config": to_dict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "data": {"world_size": self.processes.world_size,
                     "ranks": distributed.gather_objects(self.loader.state_dict())},
            "rng": rng,
            "skipped_steps": self.skipped_steps,
            **({"probe": self.probe.state_dict()} if self.probe is not None else {}),
        }

    def save(self) -> Path:
        """Write a checkpoint of the current step (rank 0 writes); returns the path of last.pt.
        A failed write is a UserError, and the checkpoints already written stay whole."""
        state = self.state_dict()
        if self.processes.is_main:
            with self._writing():
                save_checkpoint(state, self.run_dir, self.step, self.config.keep_checkpoints)
        self.saved_step = self.step
        return self.run_dir / LAST

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
        if self.probe is not None and "probe" in state:
            self.probe.load_state_dict(state["probe"])
        self.step = self.saved_step = state["step"]
        self.skipped_steps = state.get("skipped_steps", 0)
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


def saved_world_size(state: dict[str, Any]) -> int:
    """How many processes wrote a checkpoint."""
    return state["data"]["world_size"]


# --------------------------------------------------------------------------------- helpers

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
