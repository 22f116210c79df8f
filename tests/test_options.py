"""Every setting's default and description have one home, its dataclass field: the options of
every command are built from them, and their help shows the field's default."""

import dataclasses

import pytest
import typer.main

from byol.config import ModelConfig, PretrainConfig
from byol.eval.knn import KnnSettings
from byol.eval.linear import LinearSettings
from byol.presets import PRESETS
from byol.profiling.run import CPU_SETTINGS, ProfileSettings
from byolctl.cli import app
from byolctl.options import shown_value

# Each command's settings classes, and the options it has that set no setting.
COMMANDS = {
    ("pretrain",): ((PretrainConfig, ModelConfig), {"preset", "out", "resume", "config"}),
    ("eval", "knn"): ((KnnSettings, PretrainConfig), {"checkpoint", "arch", "weights", "data",
                                                      "image_size", "json_file"}),
    ("eval", "linear"): ((LinearSettings, PretrainConfig), {"checkpoint", "arch", "weights",
                                                            "data", "protocol", "image_size",
                                                            "resume", "json_file"}),
    ("profile",): ((ProfileSettings, PretrainConfig), {"json_file", "plot"}),
}


def _command(path: tuple[str, ...]):
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


# The runtime options every command declares once, from pretraining's config.
SHARED = {"device", "precision", "workers"}


def _setting(classes, name: str) -> tuple[type, dataclasses.Field]:
    for settings_class in (PretrainConfig,) if name in SHARED else classes:
        fields = {f.name: f for f in dataclasses.fields(settings_class)}
        if name in fields:
            return settings_class, fields[name]
    raise AssertionError(f"no settings class has {name}")


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_option_is_a_described_setting_whose_help_shows_its_default(path):
    classes, command_only = COMMANDS[path]
    for option in _command(path).params:
        if option.name in command_only or option.name == "help":
            continue
        settings_class, field = _setting(classes, option.name)
        assert option.help.startswith(field.metadata["help"].rstrip(".")), option.name
        shown = option.help.split("[default: ")[-1]
        if field.metadata["default_text"]:
            assert shown.startswith(field.metadata["default_text"]), option.name
        elif settings_class is ProfileSettings and option.name in CPU_SETTINGS:
            assert "on the CPU" in shown, option.name
        elif settings_class in (PretrainConfig, ModelConfig) and any(
                option.name in values for values in PRESETS.values()):
            for preset, values in PRESETS.items():
                assert preset in shown, (option.name, preset)
        elif field.default is not None:
            assert shown.startswith(shown_value(field.default) + "]"), (option.name, shown)


def test_preset_values_are_shown_as_each_preset_sets_them():
    help_text = {o.name: o.help for o in _command(("pretrain",)).params}
    assert "imagenet 224, cifar 32, demo 16]" in help_text["image_size"]
    assert "imagenet by --epochs" in help_text["lr"]
    assert "[default: 1000]" in help_text["checkpoint_every"]


def test_eval_defaults_come_from_the_settings_when_no_option_is_given(monkeypatch):
    from typer.testing import CliRunner

    import byol.eval.run

    seen = {}

    def evaluate(**kwargs):
        seen.update(kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(byol.eval.run, "evaluate_knn", evaluate)
    CliRunner().invoke(app, ["eval", "knn", "--checkpoint", "x.pt", "--device", "cpu"])
    assert (seen["k"], seen["temperature"], seen["batch_size"]) == (
        KnnSettings.k, KnnSettings.temperature, KnnSettings.batch_size)
