"""Evaluating encoders that are not pretraining checkpoints: exports (.pt and .safetensors),
other tools' torchvision ResNet state dicts, and torchvision's pretrained weights."""

import json
import textwrap
from pathlib import Path
from unittest import mock
from urllib.error import URLError

import pytest
import torch
import torchvision
from safetensors import safe_open
from typer.testing import CliRunner

from byol.config import ModelConfig, PretrainConfig
from byol.eval.encoder import backbone_state_dict, load_encoder, torchvision_builder, weights_file
from byol.models import create_encoder
from byolctl.cli import app
from tests.conftest import run_pretraining

runner = CliRunner()
WEIGHTS = torchvision.models.ResNet18_Weights.IMAGENET1K_V1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 1-step small-stem resnet18 pretraining run at 32 px, as the cifar preset trains."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    run_pretraining({"arch": "resnet18", "small_stem": True, "image_size": 32,
                     "batch_size": 8, "projector_hidden": 64, "projector_dim": 32, "steps": 1,
                     "workers": 0, "device": "cpu", "knn_every": 0}, out=out)
    return out / "last.pt"


@pytest.fixture(scope="module")
def knn_of_checkpoint(checkpoint, cifar_eval_folder, tmp_path_factory) -> dict:
    return _knn(["--checkpoint", str(checkpoint)], cifar_eval_folder,
                tmp_path_factory.mktemp("knn"))


def _knn(encoder_flags: list[str], data: Path, tmp_path: Path) -> dict:
    """`eval knn` of the encoder the flags name on the tiny folder; its --json result."""
    json_file = tmp_path / "knn.json"
    result = runner.invoke(app, ["eval", "knn", *encoder_flags, "--data", str(data), "--k",
                                 "5", "--workers", "1", "--device", "cpu", "--json",
                                 str(json_file)])
    assert result.exit_code == 0, result.output
    return {**json.loads(json_file.read_text()), "output": _squeezed(result.output)}


def _squeezed(text: str) -> str:
    """`text` without spaces and table borders, so that wrapping in a table cell is undone."""
    return "".join(text.replace("│", "").split())


def _export(checkpoint: Path, out: Path, *flags: str) -> str:
    result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(out),
                                 *flags])
    assert result.exit_code == 0, result.output
    return result.output


def _same_features(first: torch.nn.Module, second: torch.nn.Module) -> None:
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(first.eval()(images), second.eval()(images), rtol=0, atol=0)


def _numbers(result: dict) -> tuple:
    return result["top1"], result["top5"], result["image_size"], result["arch"]


def _refused(args: list[str], message: str) -> str:
    """The command exits 2 with one `error:` line holding `message`, and no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in lines[0], lines[0]
    return lines[0]


def _save_torchvision_resnet18(path: Path, prefix: str = "", seed: int = 0) -> torch.nn.Module:
    """A torchvision resnet18 (fc included) saved as a state dict under `prefix`; the model
    with fc removed, whose features the file should give."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18()
    for module in model.modules():  # BatchNorm statistics that are not the defaults
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    torch.save({prefix + name: value for name, value in model.state_dict().items()}, path)
    model.fc = torch.nn.Identity()
    return model


# ----------------------------------------------------------------------------- exports

@pytest.mark.parametrize(("suffix", "arch_flags"), [
    (".pt", ["--arch", "resnet18"]),
    (".safetensors", []),  # a .safetensors export names its architecture
])
def test_an_export_evaluates_as_its_checkpoint_does(checkpoint, knn_of_checkpoint,
                                                    cifar_eval_folder, tmp_path, suffix,
                                                    arch_flags):
    out = tmp_path / f"encoder{suffix}"
    _export(checkpoint, out)
    _same_features(load_encoder(out, "resnet18").encoder, load_encoder(checkpoint).encoder)
    exported = _knn(["--checkpoint", str(out), *arch_flags], cifar_eval_folder, tmp_path)
    assert _numbers(exported) == _numbers(knn_of_checkpoint)  # 32 px: the small stem's size
    assert exported["checkpoint"] == str(out.resolve())
    assert exported["source"] == ("state dict" if suffix == ".pt" else "safetensors")
    assert _squeezed(f"{out} ({exported['source']}") in exported["output"]
    assert knn_of_checkpoint["source"] == "byolctl checkpoint"
    assert knn_of_checkpoint["step"] == 1 and knn_of_checkpoint["weights"] is None


def test_a_safetensors_export_holds_no_pickle_and_its_printed_lines_load_it(checkpoint,
                                                                            tmp_path):
    out = tmp_path / "encoder.safetensors"  # the suffix chooses the format
    printed = _export(checkpoint, out)
    assert not out.read_bytes().startswith(b"PK")  # not torch.save's zip of pickles
    with safe_open(str(out), framework="pt") as file:
        assert file.metadata()["arch"] == "resnet18" and "conv1.weight" in file.keys()
    namespace = {"torch": torch, "torchvision": torchvision}
    exec(textwrap.dedent(printed.split("Load it with:\n")[1]), namespace)  # they run
    namespace["model"].fc = torch.nn.Identity()
    _same_features(namespace["model"], load_encoder(checkpoint).encoder)
    assert load_encoder(out).step == 1


@pytest.mark.parametrize(("arch", "width", "small_stem"), [("resnet18", 2, True),
                                                         ("resnet200", 1, False)])
def test_the_builder_lines_of_a_network_torchvision_lacks_load_its_export(arch, width,
                                                                          small_stem):
    config = PretrainConfig(model=ModelConfig(arch=arch, width=width, small_stem=small_stem))
    encoder, _ = create_encoder(config.model)
    namespace = {}
    exec("\n".join(torchvision_builder(config)), namespace)
    missing, unexpected = namespace["model"].load_state_dict(backbone_state_dict(encoder),
                                                             strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected


def test_an_export_format_that_contradicts_the_file_name_is_refused(checkpoint, tmp_path):
    for out, given in (("encoder.safetensors", "pt"), ("encoder.pt", "safetensors")):
        _refused(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / out),
                  "--format", given], f"--format {given} does not write")
        assert not (tmp_path / out).exists()
    _export(checkpoint, tmp_path / "encoder", "--format", "safetensors")
    assert load_encoder(tmp_path / "encoder").source == "safetensors"


# ----------------------------------------------------------------------------- state dicts

def test_a_state_dict_with_fc_and_a_module_prefix_evaluates_as_its_checkpoint_does(
        checkpoint, knn_of_checkpoint, cifar_eval_folder, tmp_path):
    """As another tool saves a byolctl encoder: under DataParallel's `module.`, with an fc."""
    encoder = load_encoder(checkpoint).encoder
    state = {f"module.{name}": value for name, value in encoder.state_dict().items()}
    state |= {"module.fc.weight": torch.randn(10, 512), "module.fc.bias": torch.zeros(10)}
    path = tmp_path / "other-tool.pth"
    torch.save(state, path)
    foreign = _knn(["--checkpoint", str(path), "--arch", "resnet18"], cifar_eval_folder,
                   tmp_path)
    assert _numbers(foreign) == _numbers(knn_of_checkpoint)
    assert foreign["stripped_prefix"] == "module."
    assert _squeezed("state dict, prefix module. stripped") in foreign["output"]


def test_a_torchvision_state_dict_gives_torchvision_s_features(tmp_path):
    path = tmp_path / "resnet18.pt"
    model = _save_torchvision_resnet18(path, prefix="backbone.")
    loaded = load_encoder(path, "resnet18")
    assert (loaded.stripped_prefix, loaded.image_size) == ("backbone.", 224)
    _same_features(loaded.encoder, model)


# ----------------------------------------------------------------------------- torchvision weights

@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache; downloading from it fails as it does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    offline = URLError("[Errno -3] Temporary failure in name resolution")
    with mock.patch("torch.hub.download_url_to_file", side_effect=offline):
        yield tmp_path / "torch-home"


def test_torchvision_weights_in_the_hub_cache_are_evaluated_without_a_download(
        torch_home, cifar_eval_folder, tmp_path):
    cached = torch_home / "hub" / "checkpoints" / Path(WEIGHTS.url).name
    cached.parent.mkdir(parents=True)
    model = _save_torchvision_resnet18(cached)
    for name, arch in (("IMAGENET1K_V1", "resnet18"), ("ResNet18_Weights.DEFAULT", None)):
        _same_features(load_encoder(weights=name, arch=arch).encoder, model)
    result = _knn(["--weights", "ResNet18_Weights.IMAGENET1K_V1", "--image-size", "32"],
                  cifar_eval_folder, tmp_path)
    assert (result["source"], result["weights"], result["checkpoint"], result["step"]) == (
        "torchvision weights", "ResNet18_Weights.IMAGENET1K_V1", None, None)
    assert _squeezed("ResNet18_Weights.IMAGENET1K_V1 (torchvision weights)") in (
        result["output"])
    linear = runner.invoke(app, ["eval", "linear", "--weights", "DEFAULT", "--arch", "resnet18",
                                 "--image-size", "32", "--data", str(cifar_eval_folder),
                                 "--epochs", "1", "--workers", "1", "--device", "cpu"])
    assert linear.exit_code == 0, linear.output  # the full protocol, with no run folder
    assert not list(tmp_path.rglob("evaluations.jsonl"))  # weights belong to no run folder


# ----------------------------------------------------------------------------- refusals

def test_a_bare_state_dict_needs_arch_and_the_right_one(tmp_path):
    path = tmp_path / "resnet18.pt"
    _save_torchvision_resnet18(path)
    knn = ["eval", "knn", "--checkpoint", str(path), "--device", "cpu"]
    _refused(knn, "holds a state dict without its architecture; pass --arch")
    wrong = _refused([*knn, "--arch", "resnet50"], "does not fit torchvision's resnet50")
    assert "layer1.0.conv1.weight 64x64x3x3 (not 64x64x1x1)" in wrong
    _refused([*knn, "--arch", "resnet34"], "missing layer1.2.conv1.weight")


def test_a_checkpoint_or_export_with_another_arch_is_refused(checkpoint, tmp_path):
    _refused(["eval", "knn", "--checkpoint", str(checkpoint), "--arch", "resnet50"],
             "is a resnet18 pretraining checkpoint, not resnet50")
    out = tmp_path / "encoder.safetensors"
    _export(checkpoint, out)
    _refused(["eval", "linear", "--checkpoint", str(out), "--arch", "resnet34"],
             "is a resnet18 export, not resnet34")


def test_an_encoder_is_named_once(checkpoint):
    for flags in ([], ["--checkpoint", str(checkpoint), "--weights", "IMAGENET1K_V1"]):
        _refused(["eval", "knn", *flags], "with --checkpoint FILE or with --weights NAME")


@pytest.mark.parametrize(("weights", "message"), [
    ("ResNet18_Weights.NOPE", "ResNet18_Weights has IMAGENET1K_V1, DEFAULT; choose one"),
    ("VGG16_Weights.IMAGENET1K_V1", "name torchvision weights of a ResNet"),
    ("IMAGENET1K_V1", "or pass --arch with IMAGENET1K_V1"),
])
def test_unknown_weights_are_refused(torch_home, weights, message):
    _refused(["eval", "knn", "--weights", weights], message)


def test_weights_absent_offline_name_the_file_to_put_in_the_cache(torch_home):
    line = _refused(["eval", "knn", "--weights", "DEFAULT", "--arch", "resnet18"],
                    "is absent and could not be downloaded (")
    assert str(weights_file(WEIGHTS)) in line and WEIGHTS.url in line
    assert str(torch_home) in str(weights_file(WEIGHTS))
