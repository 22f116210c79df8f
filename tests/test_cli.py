"""The command line as a user meets it: help, errors, exit codes, a short run."""

import builtins
import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from typer.testing import CliRunner

import byol
import byolctl
import kernels
from byolctl.cli import app

runner = CliRunner()
TINY_FLAGS = ["--arch", "resnet18", "--image-size", "16", "--batch-size", "8", "--steps", "3",
              "--workers", "0", "--device", "cpu", "--knn-every", "0"]


def test_help_lists_pretrain_and_pretrain_help_ends_with_an_example():
    assert "pretrain" in runner.invoke(app, ["--help"]).output
    result = runner.invoke(app, ["pretrain", "--help"])
    assert result.exit_code == 0
    assert result.output.strip().splitlines()[-1].strip().startswith("Example: byolctl pretrain")


@pytest.mark.parametrize("command", [[], ["pretrain"], ["eval"], ["eval", "linear"],
                                     ["eval", "knn"], ["export"], ["profile"], ["data"],
                                     ["data", "check"], ["data", "prepare"]])
def test_help_fits_an_80_column_terminal_without_cutting_anything(command):
    output = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"}).output
    assert "…" not in output
    assert max(map(len, output.splitlines())) <= 80


def test_the_defaults_pretrain_help_states_are_the_configs():
    from byol.config import ModelConfig, PretrainConfig

    output = runner.invoke(app, ["pretrain", "--help"], env={"COLUMNS": "200"}).output
    help_text = " ".join(output.replace("│", " ").split())
    for option, value in {"--width": ModelConfig().width, "--seed": PretrainConfig().seed,
                          "--checkpoint-every": PretrainConfig().checkpoint_every,
                          "--keep-checkpoints": PretrainConfig().keep_checkpoints}.items():
        described = help_text[help_text.index(option):].split("[default: ", 1)[1]
        assert described.startswith(f"{value}]"), option


def test_an_unknown_option_is_a_usage_error_with_status_2():
    result = runner.invoke(app, ["pretrain", "--learning-rate", "1"])
    assert result.exit_code == 2
    assert "No such option: --learning-rate" in result.output
    assert "Try 'byolctl pretrain --help' for help." in result.output
    assert "Traceback" not in result.output


def test_a_bad_value_is_one_line_with_status_2_and_no_traceback():
    result = runner.invoke(app, ["pretrain", "--steps", "0"])
    assert result.exit_code == 2
    assert "steps must be at least 1" in result.output
    assert "Traceback" not in result.output


def test_an_unreadable_data_source_is_a_clean_error():
    result = runner.invoke(app, ["pretrain", "--data", "/no/such/folder", *TINY_FLAGS])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: /no/such/folder: no such folder")
    assert "pass a folder of <class>/<image> files" in lines[0]


def test_pretrain_runs_from_the_command_line_and_writes_its_run_folder(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["pretrain", *TINY_FLAGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "training on the CPU" not in result.output  # --device was given explicitly
    assert "Done: 3 steps" in result.output
    assert (out / "last.pt").is_file() and (out / "config.json").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_flags_override_the_config_file(tmp_path):
    settings = tmp_path / "run.yaml"
    out = tmp_path / "run"
    settings.write_text(f"batch-size: 4\nlr: 0.5\nseed: 7\nout: {out}\n")
    result = runner.invoke(app, ["pretrain", *TINY_FLAGS, "--config", str(settings),
                                 "--lr", "0.25"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert (config["batch_size"], config["lr"], config["seed"]) == (8, 0.25, 7)


def test_a_preset_flag_wins_over_the_config_files_preset(tmp_path):
    settings = tmp_path / "run.toml"
    out = tmp_path / "run"
    settings.write_text('preset = "imagenet"\nweight-decay = "1e-5"\n')
    result = runner.invoke(app, ["pretrain", *TINY_FLAGS, "--config", str(settings),
                                 "--preset", "cifar", "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert (config["lars_eta"], config["weight_decay"]) == (0.02, 1e-5)


def test_a_config_value_of_the_wrong_type_is_a_clean_error(tmp_path):
    settings = tmp_path / "run.yaml"
    settings.write_text("batch-size: lots\n")
    result = runner.invoke(app, ["pretrain", "--config", str(settings)])
    assert result.exit_code == 2 and "batch-size in" in result.output
    assert "must be a whole number" in result.output


def test_config_file_mistakes_are_located_and_named(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("batch-size: 8\nlr: [1, 2\n")
    result = runner.invoke(app, ["pretrain", "--config", str(broken)])
    assert result.exit_code == 2 and "(line 3, column 1)" in result.output
    twice = tmp_path / "twice.yaml"
    twice.write_text("batch-size: 8\nbatch_size: 16\n")
    result = runner.invoke(app, ["pretrain", "--config", str(twice)])
    assert result.exit_code == 2 and "sets batch_size twice" in result.output


def test_a_plot_file_is_checked_before_profiling(tmp_path):
    with mock.patch("byol.profiling.run.profile") as run_profile:
        for plot, reason in ((tmp_path, "is a folder"), (tmp_path / "p.txt", "does not end in")):
            result = runner.invoke(app, ["profile", "--plot", str(plot)])
            words = " ".join(result.output.replace("│", " ").split())
            assert result.exit_code == 2 and reason in words
    run_profile.assert_not_called()


def test_an_error_raised_while_ctrl_c_unwinds_reads_as_an_interruption():
    def save_interrupted(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        finally:  # as torch.save's zip writer does when closed mid-write
            raise RuntimeError("unexpected pos 51008 vs 50902")

    with mock.patch("byol.eval.run.evaluate_knn", side_effect=save_interrupted):
        result = runner.invoke(app, ["eval", "knn", "--checkpoint", "run"])
    assert result.exit_code == 1 and "Interrupted; nothing more was written." in result.output


def test_python_dash_m_runs_the_same_command_line():
    result = subprocess.run([sys.executable, "-m", "byolctl", "--version"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.strip() == f"byolctl {byol.__version__}"


def test_kernels_is_this_projects_package_not_a_namesake():
    assert Path(kernels.__file__).parent.parent == Path(byol.__file__).parent.parent
    assert kernels.IS_BYOLCTL_KERNELS


@pytest.mark.parametrize(("argv", "message"), [
    (["pretrain", "--device", "tpu"], "'tpu' is not one of 'cuda', 'cpu'."),
    (["pretrain", "--precision", "fp16"], "'fp16' is not one of 'bf16', 'fp32'."),
])
def test_choices_are_checked_before_anything_runs(argv, message):
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    words = " ".join(result.output.replace("│", " ").split())  # the box wraps the message
    assert f"Invalid value for '{argv[1]}'" in words and message in words
    assert "Try 'byolctl pretrain --help' for help." in words
    assert "Traceback" not in result.output
    assert not Path("runs").exists()  # nothing ran: no run folder


def test_ctrl_c_while_the_command_loads_is_one_line_and_exit_1(capsys):
    real_import = builtins.__import__

    def interrupted(name, *args, **kwargs):  # Ctrl-C lands while torch is being imported
        if name == "byolctl.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    with mock.patch("builtins.__import__", interrupted), pytest.raises(SystemExit) as exit:
        byolctl.main()
    assert exit.value.code == 1
    assert capsys.readouterr().err == "error: Interrupted; nothing more was written.\n"


def test_ctrl_c_during_an_evaluation_is_one_line_and_exit_1():
    with mock.patch("byol.eval.run.evaluate_knn", side_effect=KeyboardInterrupt):
        result = runner.invoke(app, ["eval", "knn", "--checkpoint", "run"])
    assert result.exit_code == 1 and "Interrupted; nothing more was written." in result.output
