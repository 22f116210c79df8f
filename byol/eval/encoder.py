"""The encoder to evaluate or export: a pretraining checkpoint's online encoder, a torchvision
ResNet state dict (.pt or .safetensors), or torchvision's pretrained weights.

    byolctl export --checkpoint runs/r50/last.pt --out r50-byol.pt
    byolctl eval knn --checkpoint r50-byol.pt --arch resnet50
    byolctl eval knn --weights ResNet50_Weights.IMAGENET1K_V2

Downstream work uses the online encoder f (not the target, not the projector). An export is a
plain torchvision ResNet state dict: `torchvision.models.resnet50().load_state_dict(sd,
strict=False)` loads it with only `fc.weight` and `fc.bias` missing. A .safetensors export holds
the same tensors, without pickle, and records the architecture in its metadata.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor
from torchvision.models.resnet import ResNet

from byol.checkpoint import atomic_save, checkpoint_file, load_checkpoint
from byol.config import ModelConfig, PretrainConfig, from_dict
from byol.errors import UserError
from byol.models import ENCODERS, STEM_CHANNELS, TORCHVISION_WIDE, create_encoder

ENCODER_PREFIX = "online.encoder."
# Prefixes other tools write before torchvision's names (DataParallel, SSL frameworks); one is
# stripped when every key has it.
FOREIGN_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
EXPORT_FORMATS = ("pt", "safetensors")
SAFETENSORS_FORMAT = "byolctl-encoder"  # the metadata's "format" in a .safetensors export
# An encoder file without a pretraining size is evaluated at ImageNet's size, or at CIFAR's
# for the small stem (made for 32-64 px images).
DEFAULT_IMAGE_SIZE, SMALL_STEM_IMAGE_SIZE = 224, 32

# What was loaded, as results name it.
CHECKPOINT, STATE_DICT, SAFETENSORS, TORCHVISION_WEIGHTS = (
    "byolctl checkpoint", "state dict", "safetensors", "torchvision weights")


@dataclass
class LoadedEncoder:
    """An encoder on the CPU, with where it came from."""

    encoder: ResNet  # (B, 3, H, W) images -> (B, feature_dim) pooled features; fc is identity
    feature_dim: int
    arch: str
    image_size: int  # the pretraining size, or a default (see DEFAULT_IMAGE_SIZE)
    source: str  # CHECKPOINT, STATE_DICT, SAFETENSORS or TORCHVISION_WEIGHTS
    file: Path | None = None  # None for torchvision weights
    weights: str | None = None  # the torchvision weights' full name
    stripped_prefix: str | None = None
    config: PretrainConfig | None = None  # a pretraining checkpoint's
    step: int | None = None  # a pretraining checkpoint's

    def description(self) -> dict[str, Any]:
        """What was evaluated, for results: checkpoint (the file), source, weights, step."""
        return {"checkpoint": str(self.file.resolve()) if self.file else None,
                "source": self.source, "weights": self.weights, "step": self.step,
                "stripped_prefix": self.stripped_prefix}


def load_encoder(checkpoint: Path | None = None, arch: str | None = None,
                 weights: str | None = None) -> LoadedEncoder:
    """The encoder that `checkpoint` or `weights` name (exactly one of them).

    `checkpoint`: a pretraining checkpoint or run folder (its online encoder, at any step), or
    a torchvision ResNet state dict in a .pt or .safetensors file, which `arch` names unless a
    byolctl .safetensors export records it. `weights`: a torchvision weights name such as
    ResNet50_Weights.IMAGENET1K_V2, or IMAGENET1K_V2 with `arch`.
    """
    if (checkpoint is None) == (weights is None):
        raise UserError("Name the encoder with --checkpoint FILE or with --weights NAME (one "
                        "of them).")
    if weights is not None:
        return _torchvision_weights(weights, arch)
    path = checkpoint_file(checkpoint)
    if not path.is_file():
        load_checkpoint(path)  # says what is missing, as for any checkpoint
    if _is_safetensors(path):
        return _safetensors_file(path, arch)
    state = _peek(path)
    if state is None or (isinstance(state, dict) and "format" in state):
        return _pretraining_checkpoint(checkpoint, arch)
    return _state_dict(state, arch, path, STATE_DICT, f"{path} holds a state dict")


def _peek(path: Path) -> Any:
    """The file's contents, mapped rather than read where it can (a pretraining checkpoint is
    then loaded whole by load_checkpoint); None if torch cannot load it."""
    for mapped in (True, False):  # files of torch's older format cannot be mapped
        try:
            return torch.load(path, mmap=mapped, weights_only=True, map_location="cpu")
        except Exception:
            continue
    return None  # load_checkpoint reports what the file is not


def _pretraining_checkpoint(checkpoint: Path, arch: str | None) -> LoadedEncoder:
    state = load_checkpoint(checkpoint)
    try:
        config = from_dict(state["config"])
        weights = {name.removeprefix(ENCODER_PREFIX): value
                   for name, value in state["model"].items() if name.startswith(ENCODER_PREFIX)}
        encoder, feature_dim = create_encoder(config.model)
        encoder.load_state_dict(weights)
    except (KeyError, TypeError, RuntimeError) as error:
        raise UserError(f"{checkpoint} does not hold a usable online encoder "
                        f"({type(error).__name__}); pass a checkpoint written by byolctl "
                        "pretrain.") from error
    if arch is not None and arch != config.model.arch:
        raise UserError(f"{checkpoint} is a {config.model.arch} pretraining checkpoint, not "
                        f"{arch}; leave out --arch (a checkpoint names its own).")
    return LoadedEncoder(encoder, feature_dim, config.model.arch, config.image_size,
                         CHECKPOINT, file=checkpoint_file(checkpoint), config=config,
                         step=state["step"])


def _is_safetensors(path: Path) -> bool:
    """Whether the file starts as safetensors files do: an 8-byte header length, then JSON."""
    with path.open("rb") as file:
        start = file.read(9)
    return len(start) == 9 and start[8:9] == b"{"


def _safetensors_file(path: Path, arch: str | None) -> LoadedEncoder:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            metadata = file.metadata() or {}
            state = {name: file.get_tensor(name) for name in file.keys()}
    except (SafetensorError, OSError) as error:
        raise UserError(f"{path} is not a readable safetensors file ({error}); it may be "
                        "cut short: copy or export it again.") from error
    recorded = metadata.get("arch") if metadata.get("format") == SAFETENSORS_FORMAT else None
    if arch is not None and recorded is not None and arch != recorded:
        raise UserError(f"{path} is a {recorded} export, not {arch}; leave out --arch (the "
                        "export names its own).")
    loaded = _state_dict(state, arch or recorded, path, SAFETENSORS,
                         f"{path} holds a state dict")
    if recorded is not None:
        loaded.image_size = int(metadata.get("image_size", loaded.image_size))
        loaded.step = int(metadata["step"]) if "step" in metadata else None
    return loaded


def _torchvision_weights(name: str, arch: str | None) -> LoadedEncoder:
    """torchvision's pretrained weights `name`, from the torch hub cache, downloaded there by
    torchvision when absent; UserError naming the file when that fails."""
    from torchvision.models import get_model_weights, list_models

    shipped = list_models()  # resnet200 is not among them
    choices = {candidate: get_model_weights(candidate) for candidate in ENCODERS
               if candidate in shipped}
    enum_name, _, member = name.rpartition(".")
    owners = [candidate for candidate, enum in choices.items()
              if enum.__name__ == enum_name or (not enum_name and candidate == arch)]
    if not owners:
        example = f"{choices.get(arch, choices['resnet50']).__name__}.IMAGENET1K_V1"
        raise UserError(f"--weights {name}: name torchvision weights of a ResNet, such as "
                        f"{example}" + ("" if arch else ", or pass --arch with IMAGENET1K_V1")
                        + ".")
    owner = owners[0]
    if arch is not None and arch != owner:
        raise UserError(f"--weights {name} are {owner} weights, not {arch}; leave out --arch "
                        "or name weights of it.")
    enum = choices[owner]
    if member not in enum.__members__:
        raise UserError(f"--weights {name}: {enum.__name__} has "
                        f"{', '.join(enum.__members__)}; choose one of them.")
    weights = enum[member]
    full_name = f"{enum.__name__}.{weights.name}"  # DEFAULT named as what it stands for
    state = _download_weights(weights, full_name)
    loaded = _state_dict(state, owner, None, TORCHVISION_WEIGHTS, f"--weights {full_name}")
    loaded.weights = full_name
    return loaded


def weights_file(weights) -> Path:
    """Where torchvision keeps a weights enum member's file: the torch hub cache
    ($TORCH_HOME/hub/checkpoints/), under the name in its URL."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name


def _download_weights(weights, name: str) -> dict[str, Tensor]:
    """The weights' tensors from the cache, downloaded there first if absent (checked against
    the hash prefix in the file's name, as torchvision names them)."""
    file = weights_file(weights)
    if not file.is_file():
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            digest = torch.hub.HASH_REGEX.search(file.name)
            torch.hub.download_url_to_file(weights.url, str(file),
                                           hash_prefix=digest and digest.group(1))
        except (OSError, RuntimeError) as error:  # offline (URLError), a full disk, a bad hash
            raise UserError(f"--weights {name}: {file} is absent and could not be downloaded "
                            f"({getattr(error, 'reason', None) or error}); download "
                            f"{weights.url} to that path (or set TORCH_HOME to a folder whose "
                            "hub/checkpoints/ holds it).") from error
    try:
        return weights.get_state_dict(weights_only=True, map_location="cpu")
    except Exception as error:
        raise UserError(f"--weights {name}: {file} cannot be read ({type(error).__name__}); "
                        "delete it and run again to download it anew.") from error


def _state_dict(state: Any, arch: str | None, file: Path | None, source: str,
                what: str) -> LoadedEncoder:
    """A torchvision ResNet `arch` loaded with `state` (fc.* left out, one common prefix
    stripped). Its stem and width follow the tensors: a 3x3 conv1 is byolctl's small stem."""
    if not isinstance(state, dict) or not state or not all(
            isinstance(name, str) and isinstance(value, Tensor) for name, value in state.items()):
        raise UserError(f"{file} is neither a byolctl pretraining checkpoint nor a state dict "
                        "(names -> tensors); pass one of them.")
    if arch is None:
        raise UserError(f"{what} without its architecture; pass --arch (one of "
                        f"{', '.join(ENCODERS)}).")
    state, prefix = _strip_prefix(state)
    state = {name: value for name, value in state.items() if not name.startswith("fc.")}
    model = _model_config(state, arch)
    encoder, feature_dim = create_encoder(model)
    _check_fits(encoder, state, arch, what)
    encoder.load_state_dict(state, strict=False)  # missing num_batches_tracked: older files
    image_size = SMALL_STEM_IMAGE_SIZE if model.small_stem else DEFAULT_IMAGE_SIZE
    return LoadedEncoder(encoder, feature_dim, arch, image_size, source, file=file,
                         stripped_prefix=prefix)


def _strip_prefix(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], str | None]:
    """`state` without the first of FOREIGN_PREFIXES that every name has, and that prefix."""
    for prefix in FOREIGN_PREFIXES:
        if all(name.startswith(prefix) for name in state):
            return {name.removeprefix(prefix): value for name, value in state.items()}, prefix
    return state, None


def _model_config(state: dict[str, Tensor], arch: str) -> ModelConfig:
    """The stem and width that `state`'s tensors have (what a byolctl export can hold): a 3x3
    conv1 is the small stem, and its channels are 64 * width."""
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        return ModelConfig(arch=arch)  # _check_fits names what is missing
    width, rest = divmod(conv1.shape[0], STEM_CHANNELS)
    if arch in TORCHVISION_WIDE or rest or not width:  # widths it cannot have: shapes differ
        width = 1
    return ModelConfig(arch=arch, width=width, small_stem=conv1.shape[-1] == 3)


def _check_fits(encoder: ResNet, state: dict[str, Tensor], arch: str, what: str) -> None:
    """UserError naming a few names or shapes that do not fit `encoder`."""
    expected = {name: value for name, value in encoder.state_dict().items()
                if not name.endswith("num_batches_tracked")}
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected
                  and not name.endswith("num_batches_tracked")]
    shapes = [f"{name} {_shape(state[name])} (not {_shape(value)})"
              for name, value in expected.items()
              if name in state and state[name].shape != value.shape]
    problems = [f"{kind} {_few(names)}" for kind, names in (
        ("missing", missing), ("unexpected", unexpected), ("other shapes:", shapes)) if names]
    if problems:
        raise UserError(f"{what} that does not fit torchvision's {arch}: "
                        f"{'; '.join(problems)}. Pass the --arch it was saved from (a "
                        "torchvision ResNet's state dict, fc optional).")


def _shape(tensor: Tensor) -> str:
    return "x".join(str(size) for size in tensor.shape)


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def backbone_state_dict(encoder: ResNet) -> dict[str, Tensor]:
    """The encoder's weights and BatchNorm statistics under torchvision's names, each in its own
    storage (a checkpoint's tensors share flat buffers)."""
    return {name: value.detach().clone() for name, value in encoder.state_dict().items()}


def export_backbone(checkpoint: Path, out: Path, replace: bool = False,
                    file_format: str = "pt") -> tuple[PretrainConfig, int, list[str]]:
    """Write the online encoder of `checkpoint` to `out` as a torchvision ResNet state dict,
    with torch.save (`file_format` "pt") or as safetensors, which records the architecture,
    stem, width, image size and step in its metadata. An existing `out` is replaced only with
    `replace`, and never when it is the checkpoint.

    Returns (the run's config, the step, the Python lines that build the matching model).
    """
    if file_format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {file_format!r}")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / 'encoder.pt'}.")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist; create it first.")
    if out.exists():
        source = checkpoint_file(checkpoint)
        if source.exists() and os.path.samefile(out, source):  # also a hard link to it
            raise UserError(f"--out {out} is the checkpoint being exported; choose another file.")
        if not replace:
            raise UserError(f"--out {out} already exists; choose another file, or pass --force "
                            "to replace it.")
    loaded = _pretraining_checkpoint(checkpoint, None)
    tensors = backbone_state_dict(loaded.encoder)
    try:  # either way a failed write leaves what was at `out` as it was
        if file_format == "safetensors":
            save_safetensors(tensors, _export_metadata(loaded), out)
        else:
            atomic_save(tensors, out)
    except OSError as error:
        raise UserError(f"Could not write --out {out} ({error.strerror or error}); free some "
                        "space or choose another folder.") from error
    return loaded.config, loaded.step, torchvision_builder(loaded.config)


def _export_metadata(loaded: LoadedEncoder) -> dict[str, str]:
    """What a .safetensors export says of itself (safetensors metadata is text only)."""
    model = loaded.config.model
    return {"format": SAFETENSORS_FORMAT, "arch": model.arch, "width": str(model.width),
            "small_stem": str(model.small_stem).lower(),
            "image_size": str(loaded.config.image_size), "step": str(loaded.step)}


def save_safetensors(tensors: dict[str, Tensor], metadata: dict[str, str],
                     out: Path) -> None:
    """Write a safetensors file whole or not at all: to a temporary file, then renamed."""
    from safetensors.torch import save

    data = save({name: value.contiguous() for name, value in tensors.items()}, metadata)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def torchvision_builder(config: PretrainConfig) -> list[str]:
    """Python statements that build a ResNet the export loads into (fc aside): torchvision's
    own, where it builds that network; else byol.models', which widens every layer."""
    from torchvision.models import list_models

    model = config.model
    if model.width != 1 or model.arch not in list_models():
        return ["from byol.models import resnet",
                f"model = resnet({model.arch!r}, width={model.width}, "
                f"small_stem={model.small_stem})"]
    lines = [f"model = torchvision.models.{model.arch}()"]
    if model.small_stem:
        lines += ["model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)",
                  "model.maxpool = torch.nn.Identity()"]
    return lines
