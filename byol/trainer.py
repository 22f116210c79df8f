"""The BYOL training loop.

    byolctl pretrain                         # the demo preset, on the built-in dataset
    byolctl pretrain --arch resnet50 --data random --steps 100

One step: two views -> online network (f, g, q) and target network (f, g), each view on its
own so BatchNorm keeps per-view statistics -> symmetric normalized-MSE loss -> backward ->
LARS -> EMA of the target. The schedules are precomputed arrays indexed by the step.
"""

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from byol import ops
from byol.checkpoint import LAST, save_checkpoint
from byol.config import PretrainConfig, to_dict
from byol.data import TwoViewBatch, build_loader
from byol.errors import UserError
from byol.flat import flatten_parameters_
from byol.metrics import MetricsLog
from byol.models import BYOL
from byol.monitors import KnnMonitor, LinearProbe, held_out_data
from byol.optim import LARS
from byol.schedules import learning_rates, target_ema_rates

# Metrics are gathered on the device and read back at most this often: one host sync a second
# costs nothing measurable, one per step stalls the GPU queue.
FLUSH_SECONDS = 1.0


@dataclass
class RunSummary:
    """What `Trainer.fit` returns."""

    step: int
    total_steps: int
    interrupted: bool
    checkpoint: Path | None
    last_record: dict[str, Any] | None


class Trainer:
    """Builds everything a run needs from its config, and runs it with `fit`."""

    def __init__(self, config: PretrainConfig, run_dir: Path):
        self.config = config
        self.run_dir = run_dir
        self.device = torch.device(config.device)
        ops.require_backend(config.kernels, self.device)
        torch.manual_seed(config.seed)

        self.loader = build_loader(config, self.device)
        if self.loader.steps_per_epoch < 1:
            raise UserError(
                f"The data holds {self.loader.num_images} images, fewer than one batch of "
                f"{config.batch_size}; lower --batch-size."
            )
        self.total_steps = config.steps or config.epochs * self.loader.steps_per_epoch

        self.model = BYOL(config.model).to(self.device)
        if self.device.type == "cuda":
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
        peak_lr = config.lr * config.batch_size / 256
        warmup_steps = round(config.warmup_epochs * self.loader.steps_per_epoch)
        self.lr_schedule = learning_rates(peak_lr, warmup_steps, self.total_steps).tolist()
        self.tau_schedule = target_ema_rates(config.tau_base, self.total_steps).tolist()

        # Compiled callables live beside the modules, so state dicts keep their plain names.
        compile_fn = torch.compile if config.compile else (lambda module: module)
        self.online_forward = compile_fn(self.model.online)
        self.target_forward = compile_fn(self.model.target)
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if config.precision == "bf16" else contextlib.nullcontext()
        )
        self.step = 0
        self._stop = threading.Event()

    # ----------------------------------------------------------------------------- one step

    def train_step(self, batch: TwoViewBatch) -> dict[str, torch.Tensor]:
        """One optimizer step on `batch`; returns device tensors for the metrics."""
        lr, tau = self.lr_schedule[self.step], self.tau_schedule[self.step]
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        with self.autocast:
            features_1, projection_1 = self.online_forward(batch.view1)  # (B, D), (B, P)
            _, projection_2 = self.online_forward(batch.view2)
            prediction_1 = self.model.predictor(projection_1)
            prediction_2 = self.model.predictor(projection_2)
            with torch.no_grad():
                _, target_1 = self.target_forward(batch.view1)
                _, target_2 = self.target_forward(batch.view2)
            loss = ops.byol_loss(prediction_1, prediction_2, target_1, target_2,
                                 backend=self.config.kernels)

        self.optimizer.zero_grad()  # in place: the gradients are views of one flat buffer
        loss.backward()
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

    # ----------------------------------------------------------------------------- monitors

    def _build_monitors(self) -> tuple[LinearProbe | None, KnnMonitor | None, int]:
        """The linear probe and kNN monitor this run asks for (see `byol.monitors`)."""
        config, classes = self.config, getattr(self.loader, "classes", None)
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
        monitor = KnnMonitor(knn_data, image_size=config.image_size,
                             batch_size=config.batch_size, workers=config.workers,
                             device=self.device, seed=config.seed)
        return probe, monitor, every

    def _knn(self) -> dict[str, torch.Tensor]:
        """Run the kNN monitor on the online encoder, then go back to training mode."""
        accuracy = self.knn_monitor.evaluate(self.model.online.encoder)
        self.model.train()
        return {name: torch.tensor(value, device=self.device) for name, value in
                accuracy.items()}

    # ----------------------------------------------------------------------------- the loop

    def fit(self, on_progress: Callable[[dict[str, Any]], None] | None = None) -> RunSummary:
        """Train from the current step to the end, or until a stop is requested.

        A checkpoint is written every `checkpoint_every` steps and when the loop ends.
        `on_progress` receives the newest metrics record about once a second.
        """
        self.model.train()
        log = MetricsLog(self.run_dir, self.step)
        pending: list[tuple[int, dict[str, torch.Tensor]]] = []
        window_start = time.perf_counter()
        record, saved_step = None, self.step
        checkpoint = self.run_dir / LAST if (self.run_dir / LAST).is_file() else None

        def flush() -> None:
            nonlocal pending, window_start, record
            images_per_s = len(pending) * self.config.batch_size / (
                time.perf_counter() - window_start)
            record = self._write_metrics(log, pending, images_per_s, checkpoint, saved_step)
            pending, window_start = [], time.perf_counter()
            if on_progress is not None:
                on_progress(record)

        batches = iter(self.loader)
        with _stop_on_signals(self._stop):
            try:
                while self.step < self.total_steps and not self._stop.is_set():
                    pending.append((self.step, self.train_step(next(batches))))
                    if self.knn_monitor is not None and (
                            self.step % self.knn_every == 0 or self.step == self.total_steps):
                        started = time.perf_counter()
                        pending[-1][1].update(self._knn())
                        window_start += time.perf_counter() - started  # not training time
                    at_checkpoint = self.step % self.config.checkpoint_every == 0
                    if at_checkpoint or time.perf_counter() - window_start >= FLUSH_SECONDS:
                        flush()
                    if at_checkpoint:
                        checkpoint, saved_step = self.save(), self.step
                        window_start = time.perf_counter()  # saving is not training time
                # Finished, or a stop was requested: keep every step done so far.
                if pending:
                    flush()
                if self.step != saved_step:
                    checkpoint = self.save()
            finally:
                log.close()
        return RunSummary(self.step, self.total_steps, self.step < self.total_steps,
                          checkpoint, record)

    def request_stop(self) -> None:
        """Finish the current step, write a checkpoint, and return from `fit`."""
        self._stop.set()

    def _write_metrics(self, log: MetricsLog, pending: list, images_per_s: float,
                       checkpoint: Path | None, checkpoint_step: int) -> dict:
        """Read the pending steps' metrics back from the device (one sync) and log each.

        A non-finite loss ends the run here, before a checkpoint could save its state.
        """
        values = torch.cat([torch.stack([v.float() for v in m.values()])
                            for _, m in pending]).tolist()
        offset = 0
        for step, metrics in pending:
            row, offset = values[offset:offset + len(metrics)], offset + len(metrics)
            record = {"step": step + 1, "epoch": (step + 1) / self.loader.steps_per_epoch,
                      **dict(zip(metrics, row)), "lr": self.lr_schedule[step],
                      "tau": self.tau_schedule[step], "images_per_s": images_per_s}
            log.write(record)
            if not math.isfinite(record["loss"]):
                log.flush()
                last_good = (f"the last good checkpoint is {checkpoint} (step "
                             f"{checkpoint_step})" if checkpoint else "no checkpoint was written")
                raise FloatingPointError(
                    f"The loss became {record['loss']} at step {record['step']}; "
                    f"{last_good}. Start a new run with a lower --lr."
                )
        log.flush()
        return record

    # ----------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "config": to_dict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "data": self.loader.state_dict(),
            "rng": rng,
            **({"probe": self.probe.state_dict()} if self.probe is not None else {}),
        }

    def save(self) -> Path:
        """Write a checkpoint of the current step; returns the path of last.pt."""
        return save_checkpoint(self.state_dict(), self.run_dir, self.step,
                               self.config.keep_checkpoints)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by `state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["data"])
        if self.probe is not None and "probe" in state:
            self.probe.load_state_dict(state["probe"])
        self.step = state["step"]
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


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
