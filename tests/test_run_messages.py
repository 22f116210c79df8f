"""The start of a pretraining run says what it chose: the preset and why, a warning when the
image size is far from the preset's, and how the kNN monitor differs from `eval knn`."""

from types import SimpleNamespace

from typer.testing import CliRunner

from byolctl.cli import _describe_monitors, app

TINY_FLAGS = ["--steps", "1", "--batch-size", "4", "--arch", "resnet18", "--no-probe",
              "--device", "cpu", "--workers", "0", "--knn-every", "0"]


def _run(*flags: str):
    result = CliRunner().invoke(app, ["pretrain", *TINY_FLAGS, *flags])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_the_default_preset_is_named_with_its_reason_and_a_far_image_size_warned():
    output = _run("--data", "random", "--image-size", "16", "--out", "far")
    assert "Preset: imagenet (the default for --data other than demo" in output
    assert "--image-size 16 is far from the imagenet preset's 224 px" in output


def test_a_named_preset_at_its_own_size_gets_no_warning():
    output = _run("--data", "random", "--preset", "cifar", "--out", "near")
    assert "Preset: cifar (as asked)." in output and "far from" not in output


def test_the_knn_monitor_line_gives_its_k_and_sample():
    monitors = SimpleNamespace(probe=None, knn=SimpleNamespace(data="demo"), knn_every=10,
                               knn_unusable=None)
    trainer = SimpleNamespace(monitors=monitors, total_steps=10)
    assert _describe_monitors(trainer) == ("Monitors: kNN on demo at the end (k=20, at most "
                                           "10,000 train and 5,000 val images).")
