"""Every numeric flag of every command is checked before anything is read or written: a value
no run can use (0, negative, nan, inf, out of range) ends the command with one line that names
the flag as typed, status 2, no traceback, and no run folder or file left behind. Values from
a --config file are named by their key in that file; the library names its fields."""

import math

import pytest
from PIL import Image
from typer.testing import CliRunner

from byol.config import check_settings, validate
from byol.errors import UserError, plural
from byol.presets import resolve_config
from byolctl.cli import app

runner = CliRunner()

# Small enough that a pretraining run these flags let through ends in seconds (and fails the
# test by succeeding); each bad flag comes last, and the last value of a flag is the one used.
TINY_PRETRAIN = ["pretrain", "--data", "demo", "--arch", "resnet18", "--image-size", "16",
                 "--batch-size", "4", "--steps", "2", "--device", "cpu", "--workers", "1",
                 "--knn-every", "0", "--no-probe"]
TINY_PROFILE = ["profile", "--device", "cpu", "--no-compile", "--steps", "1",
                "--batch-size", "2", "--image-size", "16"]
# No checkpoint there: a flag checked late would fail on it instead, without its name.
EVAL_KNN = ["eval", "knn", "--checkpoint", "missing.pt"]
EVAL_LINEAR = ["eval", "linear", "--checkpoint", "missing.pt"]

NAN, INF = "nan", "inf"
BAD_FLAGS = {
    "pretrain": (TINY_PRETRAIN, {
        "--batch-size": ["0", "-1", "1"], "--lr": ["0", "-0.1", NAN, INF],
        "--warmup-epochs": ["-1", NAN, INF], "--weight-decay": ["-1e-6", NAN, INF],
        "--tau-base": ["1", "-0.5", NAN], "--epochs": ["0", "-3"], "--steps": ["0", "-1"],
        "--image-size": ["0", "-16", "4"], "--width": ["0"], "--seed": ["-1"],
        "--workers": ["-1"], "--checkpoint-every": ["0"], "--keep-checkpoints": ["0"],
        "--knn-every": ["-1"], "--max-skipped-steps": ["-1"]}),
    "eval knn": (EVAL_KNN, {
        "--k": ["0", "-5"], "--temperature": ["0", "-1", NAN, INF], "--batch-size": ["0"],
        "--image-size": ["0", "-5"], "--workers": ["-1"]}),
    "eval linear": (EVAL_LINEAR, {
        "--epochs": ["0"], "--batch-size": ["0", "-2"], "--lr": ["0", NAN, INF],
        "--seed": ["-1"], "--image-size": ["0"], "--workers": ["-1"]}),
    "profile": (TINY_PROFILE, {
        "--batch-size": ["0", "1"], "--image-size": ["0", "4"], "--steps": ["0", "-1"],
        "--workers": ["-1"]}),
}
CASES = [pytest.param(base, flag, value, id=f"{command} {flag} {value}")
         for command, (base, flags) in BAD_FLAGS.items()
         for flag, values in flags.items() for value in values]


def _one_error_line(result, flag: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} must be "), result.output
    return lines[0]


@pytest.mark.parametrize("base, flag, value", CASES)
def test_a_bad_numeric_flag_is_one_line_naming_it_and_writes_nothing(base, flag, value,
                                                                      tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where pretraining's default run folder, runs/, would go
    extra = ["--out", "run"] if base is TINY_PRETRAIN else []
    line = _one_error_line(runner.invoke(app, [*base, *extra, flag, value]), flag)
    assert line.endswith((f"; got {value}.", f"; got {float(value)}."))  # as parsed
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_bad_shard_size_is_refused_before_the_destination_is_made(value, tmp_path):
    (tmp_path / "images" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "cat" / "a.png")
    result = runner.invoke(app, ["data", "prepare", str(tmp_path / "images"),
                                 str(tmp_path / "shards"), "--shard-size", value])
    _one_error_line(result, "--shard-size")
    assert not (tmp_path / "shards").exists()


def test_the_message_says_the_range_and_the_value():
    result = runner.invoke(app, [*TINY_PRETRAIN, "--lr", "nan"])
    assert result.output.strip() == "error: --lr must be a finite number above 0; got nan."
    result = runner.invoke(app, [*TINY_PRETRAIN, "--tau-base", "1"])
    assert result.output.strip() == "error: --tau-base must be a number in [0, 1); got 1.0."
    result = runner.invoke(app, [*TINY_PRETRAIN, "--batch-size", "1"])
    assert "at least 2 (BatchNorm needs more than one image); got 1." in result.output


@pytest.mark.parametrize("text, key, message", [
    ("batch-size: 0\n", "batch-size", "must be at least 2"),
    ("batch_size: 1\n", "batch_size", "must be at least 2"),
    ("lr: .nan\n", "lr", "must be a finite number above 0; got nan."),
    ("tau-base: 'one'\n", "tau-base", "must be a number; got 'one'."),
    ("warmup_epochs: -1\n", "warmup_epochs", "must be a finite number, 0 or more; got -1.0."),
])
def test_a_bad_config_file_value_is_named_by_its_key_in_the_file(text, key, message, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = tmp_path / "run.yaml"
    settings.write_text(text)
    result = runner.invoke(app, [*TINY_PRETRAIN, "--config", str(settings)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith(f"error: {key} in {settings} {message}"), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]


def test_a_toml_nan_is_named_by_its_key(tmp_path):
    settings = tmp_path / "run.toml"
    settings.write_text("lr = nan\n")
    result = runner.invoke(app, [*TINY_PRETRAIN, "--config", str(settings)])
    assert result.output.strip() == (f"error: lr in {settings} must be a finite number above 0; "
                                      "got nan.")


def test_the_library_names_the_field():
    with pytest.raises(UserError, match=r"^lr must be a finite number above 0; got nan\.$"):
        resolve_config(None, {"lr": math.nan})
    with pytest.raises(UserError, match=r"^tau_base must be a number in \[0, 1\); got 1\.0\.$"):
        resolve_config(None, {"tau_base": 1.0})
    config = resolve_config(None, {})
    config.weight_decay = math.inf
    with pytest.raises(UserError, match="^weight_decay must be a finite number, 0 or more"):
        validate(config)


def test_values_in_range_pass_and_come_back_as_their_types():
    from byol.config import PretrainConfig

    assert check_settings(PretrainConfig, {"lr": "1e-3", "tau_base": 0, "steps": None,
                                           "knn_every": 0, "workers": 0}) == {
        "lr": 1e-3, "tau_base": 0.0, "steps": None, "knn_every": 0, "workers": 0}


def test_a_file_given_as_a_folder_is_called_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "some.jpg")
    (tmp_path / "notes.txt").write_text("not a folder\n")
    for args in (["pretrain", "--data", "some.jpg", "--device", "cpu", "--out", "run"],
                 ["data", "check", "notes.txt"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        line = result.output.strip().splitlines()[-1]  # data check may first say what it reads
        assert "no such folder" not in result.output
        assert line.startswith(f"error: {args[2]}: a file, not a folder; pass a folder of ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "some.jpg"]


def test_messages_count_one_image_in_the_singular(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "one" / "cat").mkdir(parents=True)
    Image.new("RGB", (16, 16), "red").save(tmp_path / "one" / "cat" / "a.png")
    result = runner.invoke(app, [*TINY_PRETRAIN, "--data", "one", "--batch-size", "2",
                                 "--out", "run"])
    assert result.exit_code == 2, result.output
    assert "The data holds 1 image, fewer than one batch of 2" in result.output
    assert (plural(1, "image"), plural(1, "class"), plural(3, "class")) == (
        "1 image", "1 class", "3 classes")
