"""A full disk, however it is reported, at every write: checkpoints, metrics.jsonl,
TensorBoard, --json results, export. Each ends with exit 2 and one line that names the disk,
what is still good and how to go on; every file already written stays whole."""

import errno
import io
import json
import shutil
from pathlib import Path
from unittest import mock

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import byol.checkpoint
import byol.metrics
from byol.checkpoint import Checkpointer, load_checkpoint
from byol.errors import UserError
from byol.metrics import StepMetrics
from byol.pretrain import prepare_run
from byolctl.cli import app
from tests.conftest import TINY

runner = CliRunner()

FULL = OSError(errno.ENOSPC, "No space left on device")
# What torch's zip writer raises when the disk fills under a file it writes itself: no errno.
TORCH_FULL = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 51072 "
                          "vs 50966")
NO_SPACE = shutil.disk_usage("/")._replace(free=0)
RESUME_LINE = "then resume with: byolctl pretrain --resume auto --out run"


def _settings(path: Path, **extra) -> Path:
    settings = {**TINY, "preset": "demo", "data": "random", "steps": 4, "checkpoint_every": 2,
                **extra}
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    return path


def _pretrain(tmp_path: Path, *flags: str):
    return runner.invoke(app, ["pretrain", "--config", str(_settings(tmp_path / "tiny.yaml")),
                               "--out", "run", *flags])


def _one_error_line(result, status: int = 2) -> str:
    """The command's only line on stderr, checked to be an error with no traceback."""
    assert result.exit_code == status, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _assert_run_kept_step_2():
    """last.pt and the step file hold step 2 whole; metrics.jsonl keeps steps 1 and 2."""
    assert load_checkpoint(Path("run/last.pt"))["step"] == 2
    assert [p.name for p in Path("run/checkpoints").iterdir()] == ["step-0000002.pt"]
    lines = Path("run/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines[:2]] == [1, 2]


def _failing_save(error: Exception, at_step: int):
    """torch.save that writes part of the checkpoint of `at_step`, then raises `error`."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == at_step:
            f.write(b"\x80" * 1000)
            raise error
        return real_save(obj, f, *args, **kwargs)

    return mock.patch.object(byol.checkpoint.torch, "save", save)


# --------------------------------------------------------------------------- checkpoints

def test_a_full_disk_while_checkpointing_names_the_disk_the_checkpoint_and_the_resume_line(
        tmp_path):
    with _failing_save(FULL, at_step=4):
        result = _pretrain(tmp_path)
    line = _one_error_line(result)
    assert "No space left: the disk holding the run folder run" in line
    assert "(No space left on device); the last good checkpoint is run/last.pt (step 2)" in line
    assert line.endswith(RESUME_LINE)
    _assert_run_kept_step_2()
    assert not list(Path("run").rglob("*.tmp"))


def _checkpointer_after_step_2() -> Checkpointer:
    """A run folder's Checkpointer that has written step 2 (a small state: the writes are
    what is tested)."""
    checkpointer = Checkpointer(Path("run"), every=2, keep=3, is_main=True)
    checkpointer.save({"step": 2, "weights": torch.ones(1000)}, 2)
    return checkpointer


def _save_step_4(checkpointer: Checkpointer, error: Exception) -> str:
    with _failing_save(error, at_step=4), pytest.raises(UserError) as raised:
        checkpointer.save({"step": 4, "weights": torch.zeros(1000)}, 4)
    return str(raised.value)


def test_torchs_writer_failing_on_a_full_disk_is_a_full_disk():
    checkpointer = _checkpointer_after_step_2()
    # torch's own words carry no errno: the disk's free space tells.
    with mock.patch.object(byol.checkpoint.shutil, "disk_usage", return_value=NO_SPACE):
        message = _save_step_4(checkpointer, TORCH_FULL)
    assert message.startswith("No space left: the disk holding the run folder run")
    assert "(step 2)" in message and message.endswith(RESUME_LINE)
    assert load_checkpoint(Path("run/last.pt"))["step"] == 2
    assert not list(Path("run").rglob("*.tmp"))


def test_torchs_writer_failing_with_space_left_is_a_failed_write_all_the_same():
    checkpointer = _checkpointer_after_step_2()
    message = _save_step_4(checkpointer, TORCH_FULL)
    assert message.startswith("Could not write to the run folder run (")
    assert "unexpected pos 51072 vs 50966" in message
    assert "(step 2)" in message and message.endswith(RESUME_LINE)
    assert load_checkpoint(Path("run/last.pt"))["step"] == 2


def test_a_full_disk_before_the_first_checkpoint_says_to_start_again():
    checkpointer = Checkpointer(Path("run"), every=2, keep=3, is_main=True)
    with _failing_save(FULL, at_step=2), pytest.raises(UserError) as raised:
        checkpointer.save({"step": 2, "weights": torch.ones(1000)}, 2)
    assert "no checkpoint was written" in str(raised.value)
    assert str(raised.value).endswith("the same command with --resume auto.")
    assert not Path("run/last.pt").exists()


# --------------------------------------------------------------------------- metrics

class _FillingFile:
    """A file on a disk that fills as a record of step 3 or later is written: that write and
    every later one fail, and so does closing (the buffered lines cannot go out)."""

    def __init__(self, file):
        self.file, self.full = file, False

    def write(self, text: str) -> int:
        if self.full or json.loads(text)["step"] >= 3:
            self.full = True
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(text)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_metrics_keeps_the_checkpoint_and_the_earlier_lines(tmp_path):
    real_open = open

    def open_metrics(path, *args, **kwargs):
        return _FillingFile(real_open(path, *args, **kwargs))

    with mock.patch.object(byol.metrics, "open", open_metrics, create=True):
        result = _pretrain(tmp_path)
    line = _one_error_line(result)
    assert "No space left: the disk holding the run folder run" in line
    assert "(step 2)" in line and line.endswith(RESUME_LINE)
    _assert_run_kept_step_2()


def test_a_full_disk_under_tensorboard_is_the_same_clean_stop():
    checkpointer = _checkpointer_after_step_2()
    real_writer = byol.metrics.SummaryWriter

    class FillingWriter(real_writer):
        def add_scalar(self, tag, value, step, *args, **kwargs):
            # TensorBoard's writer thread hands its OSError on to the next call like this.
            raise OSError(errno.ENOSPC, "No space left on device")

    with mock.patch.object(byol.metrics, "SummaryWriter", FillingWriter), \
            pytest.raises(UserError) as raised:
        with StepMetrics(Path("run"), 2, 10, 8, checkpointer.writing, None, {}) as metrics:
            metrics.add(2, {"loss": torch.tensor(1.0), "collapse_std": torch.tensor(0.1),
                            "skipped": torch.tensor(False), "lr": 0.1, "tau": 0.99})
            metrics.flush()
    message = str(raised.value)
    assert message.startswith("No space left: the disk holding the run folder run")
    assert "(step 2)" in message and message.endswith(RESUME_LINE)


# --------------------------------------------------------------------------- other commands

def _half_written_then_full(path: Path, text: str, *args, **kwargs):
    with open(path, "w") as f:
        f.write(text[:10])
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_json_results_keeps_the_old_file(tmp_path):
    images = tmp_path / "images" / "cat"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "a.png")
    Path("results.json").write_text('{"old": true}\n')
    with mock.patch.object(Path, "write_text", _half_written_then_full):
        result = runner.invoke(app, ["data", "check", str(tmp_path / "images"), "--json",
                                     "results.json"])
    line = _one_error_line(result)
    assert f"the disk holding {tmp_path}" in line and "results.json was not written" in line
    assert "Free some space and run the command again." in line
    assert Path("results.json").read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run of 2 steps."""
    folder = tmp_path_factory.mktemp("finished")
    settings = _settings(folder / "tiny.yaml", steps=2)
    result = runner.invoke(app, ["pretrain", "--config", str(settings), "--out",
                                 str(folder / "run")])
    assert result.exit_code == 0, result.output
    return folder / "run"


@pytest.mark.parametrize("error", [FULL, TORCH_FULL], ids=["oserror", "torch-writer"])
def test_a_full_disk_while_exporting_keeps_the_old_export(finished_run, error):
    Path("encoder.pt").write_bytes(b"the previous export")
    def save(obj, f, *args, **kwargs):
        f.write(b"\x80" * 1000)
        raise error

    with mock.patch.object(byol.checkpoint.torch, "save", save), \
            mock.patch.object(byol.checkpoint.shutil, "disk_usage", return_value=NO_SPACE):
        result = runner.invoke(app, ["export", "--checkpoint", str(finished_run), "--out",
                                     "encoder.pt", "--force"])
    line = _one_error_line(result)
    assert "No space left: the disk holding" in line and "encoder.pt was not written" in line
    assert Path("encoder.pt").read_bytes() == b"the previous export"
    assert not list(Path().glob(".*.tmp"))
    load_checkpoint(finished_run / "last.pt")


def test_a_full_disk_met_by_another_writer_is_exit_2_too(tmp_path):
    images = tmp_path / "images" / "cat"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(images / "a.png")
    with mock.patch("tarfile.TarFile.addfile", side_effect=OSError(errno.ENOSPC,
                                                                   "No space left on device")):
        result = runner.invoke(app, ["data", "prepare", str(tmp_path / "images"),
                                     str(tmp_path / "shards")])
    line = _one_error_line(result)
    assert "No space left: the disk is full (No space left on device)" in line
    assert list((tmp_path / "shards").iterdir()) == []  # no partial shard left behind


# --------------------------------------------------------------------------- size

def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def test_a_checkpoint_stores_each_tensor_once(tiny):
    # Parameters, target parameters and momenta are views into flat buffers (byol.flat):
    # torch.save must write each buffer once, and no gradient or copy beside them.
    trainer, _ = prepare_run(None, {**tiny, "data": "random"}, Path("run"), None)
    state = trainer.state_dict()
    parts = {"networks": state["model"], "momenta": state["optimizer"]["state"]}
    expected = sum(_tensor_bytes(part) for part in parts.values())
    saved = io.BytesIO()
    torch.save(state, saved)
    # Beyond the tensors: the config, data position and random state, and the zip's headers.
    assert expected <= saved.tell() <= expected * 1.01 + 200_000
