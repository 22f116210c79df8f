"""What a killed or stopped run leaves, and how the next command meets it: temporary files
removed, a damaged last.pt pointing to the intact checkpoint beside it, a SIGTERM while the
command still loads, and a stop that was asked for."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from typer.testing import CliRunner

import byol.trainer
from byol.checkpoint import load_checkpoint
from byol.pretrain import prepare_run
from byolctl import INTERRUPTED
from byolctl.cli import app
from tests.conftest import TINY, run_pretraining

runner = CliRunner()


def _settings(path: Path, **extra) -> Path:
    settings = {**TINY, "preset": "demo", "data": "random", **extra}
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    return path


def test_temporary_files_of_a_killed_write_are_removed_when_the_run_starts_again(tiny):
    tiny = {**tiny, "data": "random", "steps": 2}
    run_pretraining(tiny)
    # As a kill in the middle of the next checkpoint, and of a config write, leaves them:
    leftovers = [Path("run/checkpoints/.step-0000004.pt.tmp"), Path("run/.last.pt.tmp"),
                 Path("run/.config.json.tmp")]
    for leftover in leftovers:
        leftover.write_bytes(b"\x80" * 1000)
    Path("run/notes.tmp").write_text("a file of the user's, not one of ours")

    prepare_run(None, tiny, Path("run"), "auto")

    assert not any(leftover.exists() for leftover in leftovers)
    assert Path("run/notes.tmp").exists()
    assert load_checkpoint(Path("run/last.pt"))["step"] == 2


def test_a_damaged_last_pt_names_the_intact_step_checkpoint_and_the_resume_line(tmp_path):
    settings = _settings(tmp_path / "tiny.yaml", steps=4, checkpoint_every=2)
    assert runner.invoke(app, ["pretrain", "--config", str(settings), "--out", "run"]
                         ).exit_code == 0
    # Cut in place: the newest step file, a second name of last.pt, is cut with it.
    with open("run/last.pt", "r+b") as last:
        last.truncate(1000)

    result = runner.invoke(app, ["pretrain", "--config", str(settings), "--out", "run",
                                 "--resume", "auto"])
    assert result.exit_code == 2, result.output
    line = " ".join(result.stderr.split())
    intact = "run/checkpoints/step-0000002.pt"
    assert line.startswith("error: run/last.pt is not a loadable checkpoint")
    assert f"the newest intact checkpoint beside it is {intact}" in line
    assert f"resume with byolctl pretrain --resume {intact}," in line

    result = runner.invoke(app, ["pretrain", "--resume", intact])  # the line, as given
    assert result.exit_code == 0, result.output
    assert load_checkpoint(Path("run/last.pt"))["step"] == 4


def _catches_sigterm(pid: int) -> bool:
    """Whether process `pid` has a handler for SIGTERM (Linux reports it in SigCgt)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines()
                      if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _torch_loaded(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_a_sigterm_while_the_command_loads_exits_1_with_one_line(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "byolctl", "pretrain", "--device", "cpu", "--out", "run"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The moment the command can answer a SIGTERM (not sooner: Python itself would die of it
    # in silence), while torch is still to load.
    deadline = time.monotonic() + 60
    while not _catches_sigterm(process.pid):
        assert process.poll() is None and time.monotonic() < deadline
    loading = not _torch_loaded(process.pid)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)

    assert loading, "the command caught SIGTERM only once torch had loaded"
    assert process.returncode == 1, stderr
    assert stderr == f"error: {INTERRUPTED}\n" and stdout == ""
    assert not Path("run").exists()


def test_a_stop_that_was_asked_for_is_no_error(tmp_path):
    settings = _settings(tmp_path / "tiny.yaml", steps=4)
    real_step = byol.trainer.Trainer.train_step

    def step_then_sigterm(self, batch):  # as the SIGTERM handler does, after the first step
        metrics = real_step(self, batch)
        self.request_stop()
        return metrics

    with mock.patch.object(byol.trainer.Trainer, "train_step", step_then_sigterm):
        result = runner.invoke(app, ["pretrain", "--config", str(settings), "--out", "run"])
    assert result.exit_code == 1, result.output
    message = " ".join(result.stderr.split())
    assert message == ("warning: Stopped at step 1 of 4 as asked; checkpoint saved. Resume "
                       "with: byolctl pretrain --resume run/last.pt")
    assert "error:" not in result.output
    assert load_checkpoint(Path("run/last.pt"))["step"] == 1
