"""Runs that meet trouble: signals, kill -9, non-finite numbers, out of memory, a full disk.
None of them may cost more than one checkpoint interval or damage a file already written."""

import errno
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
from typer.testing import CliRunner

import byol.checkpoint
import byol.metrics
import byol.trainer
from byol.checkpoint import load_checkpoint
from byol.errors import UserError
from byol.pretrain import prepare_run
from byolctl.cli import app
from tests.conftest import TINY, run_pretraining

runner = CliRunner()


# --------------------------------------------------------------------------- helpers

def _write_settings(path: Path, **extra) -> Path:
    """The tiny settings as a config file for the command line."""
    settings = {**TINY, **extra}
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    return path


def _start(settings: Path, out: Path, *flags: str) -> subprocess.Popen:
    """`byolctl pretrain` in a process of its own, as a user or a scheduler starts it."""
    command = [sys.executable, "-m", "byolctl", "pretrain", "--config", str(settings),
               "--out", str(out), *flags]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_steps(run: Path) -> list[int]:
    """Steps in metrics.jsonl; a line torn by a kill is not counted."""
    steps = []
    if (run / "metrics.jsonl").is_file():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            try:
                steps.append(json.loads(line)["step"])
            except ValueError:
                pass
    return steps


def _wait_for_steps(process: subprocess.Popen, run: Path, steps: int) -> None:
    deadline = time.monotonic() + 120
    while len(_logged_steps(run)) < steps:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run logged no steps in 2 minutes"
        time.sleep(0.05)


def _nan_loss_on(calls: set[int]):
    """A patch that makes the loss NaN on these calls (one call per step, counted from 0)."""
    real_loss, count = byol.trainer.ops.byol_loss, itertools.count()

    def loss(*args, **kwargs):
        value = real_loss(*args, **kwargs)
        return value * float("nan") if next(count) in calls else value

    return mock.patch.object(byol.trainer.ops, "byol_loss", loss)


# --------------------------------------------------------------------------- signals

def _signal_a_run(tmp_path: Path, signals: list[int], checkpoint_every: int, after_steps: int):
    """Start a long run, send it `signals` once it has logged `after_steps` steps, and wait
    for it to exit. Returns (settings file, run folder, stderr)."""
    settings = _write_settings(tmp_path / "tiny.yaml", steps=2000,
                               checkpoint_every=checkpoint_every)
    run = tmp_path / "run"
    process = _start(settings, run)
    _wait_for_steps(process, run, after_steps)
    for signum in signals:
        process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1 and "Traceback" not in stderr
    return settings, run, stderr


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_says_how_to_resume(tmp_path):
    _, run, stderr = _signal_a_run(tmp_path, [signal.SIGTERM], checkpoint_every=1000,
                                   after_steps=3)
    assert f"Resume with: byolctl pretrain --resume {run / 'last.pt'}" in " ".join(stderr.split())
    state = load_checkpoint(run / "last.pt")
    assert 3 <= state["step"] < 2000 and state["step"] == _logged_steps(run)[-1]


def test_a_sigterm_during_start_up_ends_the_command_with_one_line(tmp_path):
    # The SIGTERM arrives while the trainer is being built, before the training loop.
    settings = _write_settings(tmp_path / "tiny.yaml")
    script = ("import os, signal, sys\n"
              "from unittest import mock\n"
              "import byol.pretrain\n"
              "from byolctl import main\n"
              "def build(*args, **kwargs):\n"
              "    os.kill(os.getpid(), signal.SIGTERM)\n"
              "with mock.patch.object(byol.pretrain, 'build_trainer', build):\n"
              "    main()\n")
    command = [sys.executable, "-c", script, "pretrain", "--config", str(settings),
               "--out", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Interrupted" in done.stderr


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_and_leaves_every_file_whole(tmp_path):
    settings, run, _ = _signal_a_run(tmp_path, [signal.SIGINT, signal.SIGINT],
                                     checkpoint_every=2, after_steps=5)
    state = load_checkpoint(run / "last.pt")  # the newest whole checkpoint, whichever it is
    assert state["step"] >= 4
    for checkpoint in (run / "checkpoints").glob("step-*.pt"):
        load_checkpoint(checkpoint)
    resumed = _start(settings, run, "--resume", "auto")
    _wait_for_steps(resumed, run, state["step"] + 1)
    resumed.kill()


@pytest.mark.slow
def test_under_torchrun_a_sigterm_stops_every_rank_at_the_same_step_with_a_checkpoint(tmp_path):
    settings = _write_settings(tmp_path / "tiny.yaml", data="random", steps=2000,
                               checkpoint_every=1000, batch_size=4)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", "29615", "-m", "byolctl", "pretrain", "--config", str(settings),
               "--out", str(run)]
    # torchrun passes a SIGTERM on to its workers, as a scheduler's preemption does.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    _wait_for_steps(process, run, 3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0
    assert "Resume with: byolctl pretrain --resume" in " ".join(stderr.split())
    state = load_checkpoint(run / "last.pt")
    assert state["data"]["world_size"] == 2
    assert state["step"] == _logged_steps(run)[-1] >= 3


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_at_most_one_interval_and_resumes_exactly(tmp_path):
    every = 3
    settings = _write_settings(tmp_path / "tiny.yaml", steps=30, checkpoint_every=every)
    reference = _start(settings, tmp_path / "reference")
    assert reference.wait(timeout=300) == 0, reference.communicate()

    run, moments = tmp_path / "run", random.Random(8).sample(range(2, 40), 4)
    for tenths in sorted(moments):
        process = _start(settings, run, "--resume", "auto")
        time.sleep(tenths / 4)  # from start-up (about 5 s) well into the run
        process.kill()
        process.wait()
        if (run / "last.pt").exists():
            step = load_checkpoint(run / "last.pt")["step"]  # never torn
            assert max(_logged_steps(run)) - step <= every
    finish = _start(settings, run, "--resume", "auto")
    assert finish.wait(timeout=300) == 0, finish.communicate()

    assert _logged_steps(run) == list(range(1, 31))  # each step once, none lost
    ours, theirs = (load_checkpoint(r / "last.pt")["model"] for r in (run, tmp_path / "reference"))
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


# --------------------------------------------------------------------------- numbers

def test_a_skipped_step_applies_nothing(tiny):
    trainer, _ = prepare_run(None, {**tiny, "on_nan": "skip"}, Path("run"), None)
    batches = iter(trainer.loader)
    trainer.train_step(next(batches))
    before = [t.clone() for t in (trainer.optimizer.flat.params.data,
                                  trainer.optimizer.flat.momenta.data, trainer.target_params.data)]
    with _nan_loss_on({0}):
        metrics = trainer.train_step(next(batches))
    assert metrics["skipped"].item() == 1  # flagged on the device; the host reads it later
    after = (trainer.optimizer.flat.params.data, trainer.optimizer.flat.momenta.data,
             trainer.target_params.data)
    assert all(torch.equal(b, a) for b, a in zip(before, after))
    assert trainer.step == 2


def test_on_nan_skip_steps_over_bad_batches_and_counts_them(tiny):
    trainer, _ = prepare_run(None, {**tiny, "on_nan": "skip"}, Path("run"), None)
    with _nan_loss_on({2, 4}), mock.patch.object(byol.metrics, "FLUSH_SECONDS", 0.0):
        summary = trainer.fit()
    assert summary.step == tiny["steps"] and not summary.interrupted
    assert _logged_steps(Path("run")) == [1, 2, 4, 6]
    assert summary.last_record["skipped_steps"] == 2
    assert load_checkpoint(Path("run/last.pt"))["skipped_steps"] == 2
    assert torch.isfinite(trainer.optimizer.flat.params.data).all()


def test_a_knn_check_on_a_skipped_last_step_is_logged(tiny, cifar_eval_folder):
    settings = {**tiny, "data": str(cifar_eval_folder / "train"), "steps": 4, "knn_every": 2,
                "on_nan": "skip"}
    trainer, _ = prepare_run(None, settings, Path("run"), None)
    with _nan_loss_on({3}):
        summary = trainer.fit()
    records = [json.loads(line) for line in Path("run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "knn_top1" in r] == [2, 4]
    assert "loss" not in records[-1] and summary.last_record["step"] == 3
    assert summary.knn["knn_top1"] == records[-1]["knn_top1"]  # the summary shows it


def test_skipping_is_bounded(tiny):
    trainer, _ = prepare_run(None, {**tiny, "on_nan": "skip", "max_skipped_steps": 1,
                                    "checkpoint_every": 1}, Path("run"), None)
    expected = (r"Step 4 .* one more than --max-skipped-steps 1 allows; the last good "
                r"checkpoint is run/last.pt \(step 3\)")
    with _nan_loss_on({1, 3}), pytest.raises(UserError, match=expected):
        trainer.fit()


def test_a_skip_that_left_non_finite_batchnorm_statistics_stops_the_run(tiny):
    trainer, _ = prepare_run(None, {**tiny, "on_nan": "skip"}, Path("run"), None)
    trainer.model.target.encoder.bn1.running_var.fill_(float("inf"))
    with _nan_loss_on({0}), pytest.raises(UserError, match="BatchNorm statistics"):
        trainer.fit()


def test_a_non_finite_loss_stops_the_run_naming_the_last_good_checkpoint(tmp_path):
    # Warmup starts at lr 0, so the first step is finite and checkpointed; a huge lr then
    # overflows the weights within a step or two (an inf lr is refused up front).
    settings = _write_settings(tmp_path / "tiny.yaml", lr=1e38, checkpoint_every=1)
    result = runner.invoke(app, ["pretrain", "--config", str(settings), "--out", "run"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    found = re.search(r"non-finite at step (\d+); the last good checkpoint is run/last.pt "
                      r"\(step (\d+)\)", message)
    bad, good = int(found[1]), int(found[2])
    assert bad == good + 1 and good >= 1 and "--on-nan skip" in message
    assert load_checkpoint(Path("run/last.pt"))["step"] == good
    assert _logged_steps(Path("run")) == list(range(1, good + 1))


def test_the_same_seed_gives_the_same_losses_and_another_seed_does_not(tiny):
    losses = []
    for seed, out in ((0, "a"), (0, "b"), (1, "c")):
        run_pretraining({**tiny, "seed": seed}, out=out)
        losses.append([json.loads(line)["loss"] for line in open(f"{out}/metrics.jsonl")])
    assert losses[0] == losses[1] and losses[0] != losses[2]


# --------------------------------------------------------------------------- resources

def test_out_of_memory_names_the_batch_size_and_what_to_try(tmp_path):
    settings = _write_settings(tmp_path / "tiny.yaml", checkpoint_every=1)
    real_step = byol.trainer.Trainer.train_step

    def step(self, batch):
        if self.step == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, batch)

    with mock.patch.object(byol.trainer.Trainer, "train_step", step):
        result = runner.invoke(app, ["pretrain", "--config", str(settings), "--out", "run"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "Out of GPU memory at step 3 with batch size 8 per GPU" in message
    assert "--batch-size 4" in message and "(step 2)" in message


def test_a_full_disk_while_saving_keeps_the_last_checkpoint_whole(tmp_path):
    settings = _write_settings(tmp_path / "tiny.yaml", checkpoint_every=2)
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if obj["step"] == 4:  # half a file, then the disk is full
            f.write(b"\x80" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    with mock.patch.object(byol.checkpoint.torch, "save", save):
        result = runner.invoke(app, ["pretrain", "--config", str(settings), "--out", "run"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "No space left on device" in message and "(step 2)" in message
    assert "--resume auto --out run" in message
    assert load_checkpoint(Path("run/last.pt"))["step"] == 2
    assert sorted(p.name for p in Path("run/checkpoints").iterdir()) == ["step-0000002.pt"]
    result = runner.invoke(app, ["pretrain", "--config", str(settings), "--out", "run",
                                 "--resume", "auto"])
    assert result.exit_code == 0 and "Resuming from run/last.pt at step 2" in result.output


def test_a_run_folder_inside_the_data_is_refused(tiny, cifar_eval_folder, tmp_path):
    shutil.copytree(cifar_eval_folder, tmp_path / "data", symlinks=True)
    for out in ("data/train/run", "data/test/run"):
        with pytest.raises(UserError, match="inside the data folder"):
            prepare_run(None, {**tiny, "data": str(tmp_path / "data" / "train")}, Path(out),
                        None)
        assert not Path(out).exists()


def test_resuming_a_folder_without_a_checkpoint_points_to_resume_auto(tiny):
    Path("empty-run").mkdir()
    with pytest.raises(UserError, match="--resume auto --out empty-run"):
        prepare_run(None, tiny, None, "empty-run")


def test_an_unwritable_run_folder_is_a_clean_error(tmp_path):
    settings = _write_settings(tmp_path / "tiny.yaml")
    Path("taken").write_text("a file where the run folder would go")
    result = runner.invoke(app, ["pretrain", "--config", str(settings), "--out", "taken/run"])
    assert result.exit_code == 2 and "Cannot write the run folder taken/run" in result.output
    assert Path("taken").read_text() == "a file where the run folder would go"


def test_interrupting_the_training_of_a_resumed_run_keeps_its_history(tiny):
    run_pretraining(tiny, stop_at=2)
    with mock.patch.object(os, "replace", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            run_pretraining({**tiny, "checkpoint_every": 1}, resume="auto")
    assert load_checkpoint(Path("run/last.pt"))["step"] == 2
