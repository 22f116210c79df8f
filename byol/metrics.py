"""A run's metrics: gathered on the device step by step, read back about once a second, and
written as one JSON object per line (metrics.jsonl) and as TensorBoard event files."""

import contextlib
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from byol import distributed
from byol.checkpoint import atomic_write_text
from byol.errors import UserError
from byol.run_folder import METRICS_FILE, TENSORBOARD_DIR


class MetricsLog:
    """Appends step records to `<run>/metrics.jsonl` and `<run>/tensorboard/`.

    Opening it at `start_step` drops records of later steps: they were logged by a run that
    went on past its last checkpoint and are about to be computed again.
    """

    def __init__(self, run_dir: Path, start_step: int):
        self.path = run_dir / METRICS_FILE
        _keep_records_up_to(self.path, start_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._opened = time.monotonic()  # the start of this run, or of its resumption
        self._tensorboard = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR),
                                          purge_step=start_step + 1)

    def write(self, record: dict[str, Any]) -> None:
        """One record: must hold an integer "step"; every other number is plotted. The file's
        line also gets the wall-clock "time" (UTC, ISO 8601) and "elapsed_s" since opening."""
        stamped = {**record, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "elapsed_s": round(time.monotonic() - self._opened, 1)}
        self._file.write(json.dumps(stamped) + "\n")
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                self._tensorboard.add_scalar(f"pretrain/{name}", value, record["step"])

    def flush(self) -> None:
        self._file.flush()
        self._tensorboard.flush()

    def close(self) -> None:
        """Close both writers, the second even where the first fails (on a full disk closing
        writes out what is buffered, and fails again)."""
        try:
            self._file.close()
        finally:
            self._tensorboard.close()


def _keep_records_up_to(path: Path, step: int) -> None:
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a line torn by a crash mid-write
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(kept))


# Metrics are gathered on the device and read back at most this often: one host sync a second
# costs nothing measurable, one per step stalls the GPU queue.
FLUSH_SECONDS = 1.0


class StepMetrics:
    """The metrics of the steps since the last write, and their throughput.

    Each step adds device tensors (averaged over the ranks when written), among them its
    non-finite flag `skipped` (see `byol.nan_policy`), and host numbers (lr, tau); kNN checks
    add their accuracies to the record of their step. `flush` reads them back in one sync,
    hands each flagged step to `on_flagged` (which applies the policy) and logs the others on
    rank 0. Time spent in `paused()` (checks, checkpoints) does not count as training time.
    Used as a context manager: on a UserError in a single process the steps done so far are
    still written; the log is closed either way.
    """

    def __init__(self, run_dir: Path | None, start_step: int, steps_per_epoch: int,
                 images_per_step: int, writing: Callable[[], contextlib.AbstractContextManager],
                 on_flagged: Callable[[int], dict[str, int]], counts: dict[str, int]):
        """run_dir: None on the ranks that do not log. writing: wraps each write (see
        `Checkpointer.writing`). on_flagged: gets the 1-based step of each flagged step, in
        order; raises to stop the run, or returns the counts every later record carries
        (`counts` until then)."""
        self.log = MetricsLog(run_dir, start_step) if run_dir is not None else None
        self.steps_per_epoch, self.images_per_step = steps_per_epoch, images_per_step
        self.writing, self.on_flagged, self.counts = writing, on_flagged, counts
        self.pending: list[tuple[int, dict[str, Any]]] = []  # (0-based step, its metrics)
        self.checks: dict[int, dict[str, float]] = {}  # 0-based step -> kNN accuracies
        self.window_start = time.perf_counter()
        self.last_record: dict[str, Any] | None = None
        # The newest kNN check: usually in last_record, but a check on a final step that
        # `--on-nan skip` skipped has no record of its own.
        self.last_check: dict[str, float] | None = None

    def add(self, step: int, metrics: dict[str, Any]) -> None:
        """The metrics of 0-based `step`: device tensors and host numbers."""
        self.pending.append((step, metrics))

    def add_check(self, step: int, accuracy: dict[str, float]) -> None:
        """A monitor's result for 0-based `step`."""
        self.checks[step] = self.last_check = accuracy

    @contextlib.contextmanager
    def paused(self):
        """Leave the time spent inside out of the images per second."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.window_start += time.perf_counter() - started

    def due(self) -> bool:
        """Whether a write is due (every rank agrees: they all write at the same step)."""
        return distributed.any_rank(time.perf_counter() - self.window_start >= FLUSH_SECONDS)[0]

    def flush(self, on_progress: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Read the pending steps back (one sync), average them over the ranks, apply the
        non-finite policy to flagged steps and log the others on rank 0 with their checks;
        `on_progress` gets the newest record. A UserError of the policy comes after the
        steps before the flagged one are logged."""
        if not self.pending and not self.checks:
            return
        seconds = time.perf_counter() - self.window_start
        records, stopped = self._records(self.pending, seconds)
        for step, accuracy in self.checks.items():
            records.setdefault(step, {"step": step + 1, "epoch": self._epoch(step)})
            records[step].update(accuracy)
        if self.log is not None:
            with self.writing():
                for step in sorted(records):
                    self.log.write(records[step])
                self.log.flush()
        self.pending, self.checks, self.window_start = [], {}, time.perf_counter()
        if stopped is not None:
            raise stopped
        logged = [step for step in sorted(records) if "loss" in records[step]]
        if logged:  # none: only kNN checks, or only flagged steps
            self.last_record = records[logged[-1]]
            if on_progress is not None:
                on_progress(self.last_record)

    def _records(self, pending: list[tuple[int, dict[str, Any]]],
                 seconds: float) -> tuple[dict[int, dict[str, Any]], UserError | None]:
        """The records of the pending steps that were applied, up to the first step whose
        policy stops the run (and that UserError)."""
        if not pending:
            return {}, None
        images_per_s = len(pending) * self.images_per_step / seconds
        devices = [name for name, value in pending[0][1].items()
                   if isinstance(value, torch.Tensor)]
        values = torch.stack([torch.stack([m[n].float() for n in devices]) for _, m in pending])
        values = distributed.mean_across_ranks_(values).tolist()
        records = {}
        for (step, metrics), row in zip(pending, values):
            read = dict(zip(devices, row))
            if read.pop("skipped"):
                try:
                    self.counts = self.on_flagged(step + 1)
                except UserError as error:
                    return records, error
                continue
            host = {name: value for name, value in metrics.items() if name not in devices}
            records[step] = {"step": step + 1, "epoch": self._epoch(step), **read, **host,
                             "images_per_s": images_per_s, **self.counts}
        return records, None

    def _epoch(self, step: int) -> float:
        """The epoch reached at the end of (0-based) `step`."""
        return (step + 1) / self.steps_per_epoch

    def __enter__(self) -> "StepMetrics":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            # Keep the records of the steps before the error. (With several processes the
            # error may have reached one rank only, and writing takes all of them.)
            if isinstance(error, UserError) and distributed.current().world_size == 1:
                with contextlib.suppress(Exception):
                    self.flush()
        finally:
            if self.log is not None:
                self._close_log(error)

    def _close_log(self, error: BaseException | None) -> None:
        """Close the log. Where it fails (the buffered lines meet a full disk), that is the
        run's error if it has no other; one already on its way is the one to report."""
        if error is None:
            with self.writing():
                self.log.close()
        else:
            with contextlib.suppress(Exception):
                self.log.close()
