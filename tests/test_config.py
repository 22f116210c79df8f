import pytest

from byol.config import from_dict, to_dict
from byol.errors import UserError
from byol.presets import resolve_config
from byolctl.config_file import read_config_file


@pytest.mark.parametrize("epochs,lr,wd,tau", [(1000, 0.2, 1.5e-6, 0.996), (300, 0.3, 1e-6, 0.99),
                                              (100, 0.45, 1e-6, 0.99), (40, 0.45, 1e-6, 0.97)])
def test_imagenet_preset_follows_the_official_numbers_for_its_epoch_count(epochs, lr, wd, tau):
    config = resolve_config("imagenet", {"epochs": epochs})
    assert (config.lr, config.weight_decay, config.tau_base) == (lr, wd, tau)
    assert (config.model.arch, config.image_size, config.lars_eta) == ("resnet50", 224, 1e-3)


def test_cifar_preset_is_a_small_stem_resnet18_at_32px():
    config = resolve_config("cifar", {})
    assert (config.model.arch, config.model.small_stem, config.image_size) == \
        ("resnet18", True, 32)
    assert (config.lr, config.weight_decay, config.lars_eta, config.tau_base) == \
        (1.0, 1e-5, 0.02, 0.99)


def test_preset_follows_the_data_when_none_is_named():
    assert resolve_config(None, {}).model.arch == "resnet18"               # demo
    assert resolve_config(None, {"data": "random"}).model.arch == "resnet50"


def test_explicit_values_override_the_preset():
    config = resolve_config("imagenet", {"lr": 0.1, "arch": "resnet18", "epochs": 1000})
    assert config.lr == 0.1 and config.model.arch == "resnet18"
    assert config.tau_base == 0.996


def test_unknown_and_invalid_values_are_user_errors():
    with pytest.raises(UserError, match="Unknown config key"):
        resolve_config(None, {"learning_rate": 0.1})
    with pytest.raises(UserError, match="batch_size"):
        resolve_config(None, {"batch_size": 1})
    with pytest.raises(UserError, match="precision"):
        resolve_config(None, {"precision": "fp16"})


def test_config_round_trips_through_a_dict():
    config = resolve_config("cifar", {"steps": 7})
    assert from_dict(to_dict(config)) == config


@pytest.mark.parametrize("name,text", [
    ("run.yaml", "batch-size: 32\nlr: 0.5\npreset: cifar\n"),
    ("run.toml", 'batch_size = 32\nlr = 0.5\npreset = "cifar"\n'),
])
def test_config_files_in_yaml_and_toml_give_flat_settings(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert read_config_file(path) == {"batch_size": 32, "lr": 0.5, "preset": "cifar"}


def test_bad_config_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 1")
    with pytest.raises(UserError, match="not valid"):
        read_config_file(bad)
    other = tmp_path / "run.json"
    other.write_text("{}")
    with pytest.raises(UserError, match="yaml"):
        read_config_file(other)
    typo = tmp_path / "typo.yaml"
    typo.write_text("learning-rate: 0.1\nout: runs/x\n")
    with pytest.raises(UserError, match="typo.yaml has unknown setting.s. learning_rate; "
                                        "valid ones are .*, out, .*, preset, "):
        read_config_file(typo)
