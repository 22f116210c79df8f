"""Progress where the output is not a terminal (a log file, a batch job): a timestamped plain
line every --log-every seconds, for pretraining, evaluation and the data commands; and the
wall-clock fields of metrics.jsonl."""

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import pytest
from typer.testing import CliRunner

import byol.metrics
from byolctl import render
from byolctl.cli import app
from tests.conftest import run_pretraining

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()
TINY_FLAGS = ["--arch", "resnet18", "--image-size", "16", "--batch-size", "4", "--workers", "0",
              "--device", "cpu", "--knn-every", "0", "--no-probe"]
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
PRETRAIN_LINE = re.compile(
    rf"^{STAMP} pretrain step (\d+)/(\d+) epoch (\S+)/(\S+) loss \d+\.\d{{4}} "
    r"std \d\.\d{4} img/s \d+ lr \S+ eta (-|\d+:\d\d:\d\d)$")


def _task_lines(output: str, task: str) -> list[tuple[int, int]]:
    """(completed, total) of each progress line of `task` in `output`."""
    line = re.compile(rf"^{STAMP} {task} (\d+)/(\d+)( \([\d.]+%\))? eta (-|\d+:\d\d:\d\d)$")
    return [(int(m[1]), int(m[2])) for m in map(line.match, output.splitlines()) if m]


def _pretrain_steps(output: str) -> list[int]:
    return [int(m[1]) for m in map(PRETRAIN_LINE.match, output.splitlines()) if m]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> tuple[Path, str, datetime]:
    """(run folder, stdout, start time) of a 3-step pretraining whose stdout is a file, as
    under nohup or a batch job."""
    folder = tmp_path_factory.mktemp("logged")
    started = datetime.now(timezone.utc).replace(microsecond=0)
    with (folder / "log.txt").open("w") as stdout:
        finished = subprocess.run(
            [sys.executable, "-m", "byolctl", "pretrain", *TINY_FLAGS, "--steps", "3",
             "--log-every", "0.01", "--out", str(folder / "run")],
            stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=600,
            env={**os.environ, "PYTHONPATH": str(REPO)})  # this tree's byolctl
    assert finished.returncode == 0, finished.stderr
    return folder / "run", (folder / "log.txt").read_text(), started


# ----------------------------------------------------------------------------- pretrain

def test_pretrain_to_a_file_writes_timestamped_progress_lines(logged_run):
    _, output, _ = logged_run
    lines = [m for m in map(PRETRAIN_LINE.match, output.splitlines()) if m]
    assert lines and lines[-1][1] == lines[-1][2] == "3", output  # the first record, the last
    assert lines[-1][3] == lines[-1][4] != "0"  # a run shorter than an epoch says how short
    assert "\x1b[" not in output and "━" not in output  # plain text, no bar


def test_pretrain_prints_a_line_every_log_every_seconds(tmp_path):
    with mock.patch.object(byol.metrics, "FLUSH_SECONDS", 0.0):  # a record every step
        result = runner.invoke(app, ["pretrain", *TINY_FLAGS, "--steps", "3", "--log-every",
                                     "0.000001", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert _pretrain_steps(result.output) == [1, 2, 3], result.output


def test_lines_wait_log_every_seconds_as_a_config_file_sets_it(tmp_path):
    settings = tmp_path / "run.yaml"
    settings.write_text("log-every: 1000\n")
    with mock.patch.object(byol.metrics, "FLUSH_SECONDS", 0.0):
        result = runner.invoke(app, ["pretrain", *TINY_FLAGS, "--steps", "3", "--config",
                                     str(settings), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    # The first record at once, then none within the period; the last one closes.
    assert _pretrain_steps(result.output) == [1, 3], result.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["log_every"] == 1000


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
@pytest.mark.parametrize("command", [["pretrain", *TINY_FLAGS, "--steps", "1"],
                                     ["eval", "knn", "--checkpoint", "no-such.pt"],
                                     ["data", "check", "."]])
def test_log_every_must_be_a_finite_number_of_seconds_above_zero(command, value):
    result = runner.invoke(app, [*command, "--log-every", value])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [
        f"error: --log-every must be a finite number above 0; got {float(value)}."]
    assert not Path("runs").exists()


# ----------------------------------------------------------------------------- metrics.jsonl

def test_metrics_records_carry_the_utc_time_and_the_seconds_since_the_start(logged_run):
    run, _, started = logged_run
    records = _records(run)
    times = [datetime.fromisoformat(record["time"]) for record in records]
    assert all(t.utcoffset() == timedelta(0) for t in times)  # UTC
    assert started <= times[0] <= times[-1] <= datetime.now(timezone.utc)
    elapsed = [record["elapsed_s"] for record in records]
    assert 0 <= elapsed[0] and elapsed == sorted(elapsed)


def test_a_resumed_run_counts_its_elapsed_seconds_from_the_resume(tiny):
    tiny = {**tiny, "batch_size": 4, "probe": False}
    run_pretraining({**tiny, "steps": 4}, stop_at=2)
    first = _records(Path("run"))
    started = time.monotonic()
    run_pretraining({**tiny, "steps": 4}, resume="auto")
    seconds = time.monotonic() - started
    records = _records(Path("run"))
    assert records[:2] == first[:2]  # the first part's records are kept as written
    assert [r["step"] for r in records[2:]] == [3, 4]
    # Counted from the resume, not from the run's or this process's start.
    assert all(0 <= r["elapsed_s"] <= seconds + 0.05 for r in records[2:])


# ----------------------------------------------------------------------------- eval and data

def test_eval_to_a_file_reports_features_and_classifier_epochs(logged_run, cifar_eval_folder):
    run, _, _ = logged_run
    result = runner.invoke(app, ["eval", "linear", "--checkpoint", str(run), "--data",
                                 str(cifar_eval_folder), "--protocol", "cached", "--epochs", "3",
                                 "--batch-size", "8", "--workers", "0", "--log-every",
                                 "0.000001"])
    assert result.exit_code == 0, result.output
    assert _task_lines(result.output, "train features") == [
        (0, 30), (8, 30), (16, 30), (24, 30), (30, 30)], result.output
    assert _task_lines(result.output, "linear classifier epochs") == [(0, 3), (1, 3), (2, 3),
                                                                      (3, 3)]
    assert _task_lines(result.output, "test features")[-1] == (30, 30)


def test_data_check_to_a_file_reports_the_images_checked(cifar_folder):
    result = runner.invoke(app, ["data", "check", str(cifar_folder), "--log-every", "1000"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == f"Checking {cifar_folder} ..."
    # Within the period: the first and the last image only.
    assert _task_lines(result.output, "images checked") == [(1, 30), (30, 30)], result.output


def test_data_prepare_to_a_file_reports_images_checked_then_written(cifar_folder, tmp_path):
    result = runner.invoke(app, ["data", "prepare", str(cifar_folder), str(tmp_path / "shards"),
                                 "--shard-size", "16", "--log-every", "0.000001"])
    assert result.exit_code == 0, result.output
    assert _task_lines(result.output, "images checked")[-1] == (30, 30)
    assert _task_lines(result.output, "images written") == [(n, 30) for n in range(1, 31)]


# ----------------------------------------------------------------------------- the cadence

def test_a_progress_log_prints_the_first_report_then_one_per_period(monkeypatch):
    clock, printed = [0.0], []
    monkeypatch.setattr(render, "monotonic", lambda: clock[0])
    monkeypatch.setattr(render.ProgressLog, "_print", lambda self, line: printed.append(line))
    log = render.ProgressLog(every=30)
    for second in range(0, 75, 5):  # a report every 5 s for 70 s
        clock[0] = second
        log.report(lambda second=second: f"at {second}")
    log.report(lambda: "the end is near")
    log.close()
    assert printed == ["at 0", "at 30", "at 60", "the end is near"]


def test_durations_stay_one_word_past_a_day():
    assert render.duration(59.9) == "0:00:59"
    assert render.duration(30 * 3600 + 127) == "30:02:07"
