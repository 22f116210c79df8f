"""Everything the terminal shows: the progress bar, summaries, errors.

In a terminal, progress is a live rich bar. Where the output is not one (a log file, a batch
job, `nohup`), rich would show the bar only once it ends, so progress is written instead as one
plain line every --log-every seconds, timestamped and easy to grep:

    2026-12-02T23:59:01Z pretrain step 1200/50000 epoch 3.1/100 loss 0.4321 std 0.0612 ...
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from time import monotonic
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(soft_wrap=True)
error_console = Console(stderr=True)


def training_progress() -> Progress:
    """step/total, loss, collapse signal and images/s, updated about once a second."""
    return Progress(
        TextColumn("[bold]pretrain"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss [cyan]{task.fields[loss]}"),
        TextColumn("std [cyan]{task.fields[std]}"),
        TextColumn("[green]{task.fields[speed]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


def live_display() -> bool:
    """Whether progress can be shown live (a terminal or a notebook) rather than as log lines."""
    return console.is_interactive or console.is_jupyter


def timestamp() -> str:
    """Now in UTC, ISO 8601 to the second: the first word of every progress line."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float) -> str:
    """H:MM:SS, with hours past a day kept as hours ("30:02:07"): one word in a log line."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def _eta(done: float, total: float, seconds: float) -> str:
    """The time left at the average pace so far; "-" before there is a pace."""
    if done <= 0 or seconds <= 0:
        return "-"
    return duration((total - done) * seconds / done)


def _epochs(value: float) -> str:
    """A count of epochs: a whole one as such ("100"), else with one decimal ("3.2"), or two
    significant digits below 1 ("0.0032"), so that a short run does not read "0/0"."""
    if value == int(value):
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 1 else f"{value:.2g}"


class ProgressLog:
    """Timestamped progress lines for output that is not a terminal: the first report at once,
    then the newest at most every `every` seconds, and the last one unprinted when it closes.
    Reports are functions that make the line, so a frequent report costs no formatting."""

    def __init__(self, every: float):
        self.every = every
        self.printed_at: float | None = None
        self.unprinted: Callable[[], str] | None = None

    def report(self, line: Callable[[], str], now: bool = False) -> None:
        """`line` is printed if `now`, or if `every` seconds have passed since the last one."""
        clock = monotonic()
        if now or self.printed_at is None or clock - self.printed_at >= self.every:
            self._print(line())
            self.printed_at, self.unprinted = clock, None
        else:
            self.unprinted = line

    def close(self) -> None:
        if self.unprinted is not None:
            self._print(self.unprinted())
            self.unprinted = None

    def _print(self, line: str) -> None:
        console.print(f"{timestamp()} {line}", markup=False, highlight=False)


@contextmanager
def pretrain_progress(total_steps: int, start_step: int, steps_per_epoch: int,
                      log_every: float) -> Iterator[Callable[[dict[str, Any]], None]]:
    """The `on_progress` of `Trainer.fit`: the live bar in a terminal, else a line every
    `log_every` seconds with step, epoch, loss, std, images/s, lr and the time left."""
    if live_display():
        with training_progress() as progress:
            task = progress.add_task("pretrain", total=total_steps, completed=start_step,
                                     loss="-", std="-", speed="")

            def update_bar(record: dict[str, Any]) -> None:
                progress.update(task, completed=record["step"], loss=f"{record['loss']:.4f}",
                                std=f"{record['collapse_std']:.4f}",
                                speed=f"{record['images_per_s']:.0f} img/s")

            yield update_bar
        return
    log, started = ProgressLog(log_every), monotonic()
    total_epochs = total_steps / steps_per_epoch

    def line(record: dict[str, Any]) -> str:
        # The pace of this process only: a resumed run's earlier steps took no time here.
        eta = _eta(record["step"] - start_step, total_steps - start_step,
                   monotonic() - started)
        return (f"pretrain step {record['step']}/{total_steps} epoch "
                f"{_epochs(record['epoch'])}/{_epochs(total_epochs)} "
                f"loss {record['loss']:.4f} std {record['collapse_std']:.4f} "
                f"img/s {record['images_per_s']:.0f} lr {record['lr']:.4g} eta {eta}")

    try:
        yield lambda record: log.report(lambda: line(record))
    finally:
        log.close()


@contextmanager
def task_progress(log_every: float,
                  status: str | None = None) -> Iterator[Callable[[str, int, int], None]]:
    """An `on_progress(task, completed, total)` for long work made of named tasks ("train
    features", 512, 50000). In a terminal: a bar per task, or only the spinner `status` if
    given; else a line every `log_every` seconds, and one as each task starts and ends."""
    if live_display():
        with _live_tasks(status) as on_progress:
            yield on_progress
        return
    if status:
        console.print(status, markup=False, highlight=False)
    log, started = ProgressLog(log_every), {}

    def on_progress(task: str, completed: int, total: int) -> None:
        clock = started.setdefault(task, monotonic())
        percent = f" ({100 * completed / total:.1f}%)" if total else ""
        log.report(lambda: f"{task} {completed}/{total}{percent} eta "
                           f"{_eta(completed, total, monotonic() - clock)}",
                   now=completed in (0, total))

    try:
        yield on_progress
    finally:
        log.close()


@contextmanager
def _live_tasks(status: str | None) -> Iterator[Callable[[str, int, int], None]]:
    """Task progress in a terminal. The bars start with the first task, so an error while
    loading leaves no empty line behind."""
    if status:
        with console.status(status):
            yield lambda task, completed, total: None
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    tasks = {}

    def on_progress(task: str, completed: int, total: int) -> None:
        if not tasks:
            progress.start()
        if task not in tasks:
            tasks[task] = progress.add_task(task, total=total)
        progress.update(tasks[task], completed=completed)

    try:
        yield on_progress
    finally:
        if tasks:
            progress.stop()


def print_error(message: str) -> None:
    error_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def print_warning(message: str) -> None:
    error_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
