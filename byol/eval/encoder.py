"""The online encoder of a pretraining checkpoint, loaded for evaluation or exported.

    byolctl export --checkpoint runs/r50/last.pt --out r50-byol.pt

Downstream work uses the online encoder f (not the target, not the projector). An export is a
plain torchvision ResNet state dict: `torchvision.models.resnet50().load_state_dict(sd,
strict=False)` loads it with only `fc.weight` and `fc.bias` missing.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from torchvision.models.resnet import ResNet

from byol.checkpoint import atomic_save, checkpoint_file, load_checkpoint
from byol.config import PretrainConfig, from_dict
from byol.errors import UserError
from byol.models import create_encoder

ENCODER_PREFIX = "online.encoder."


@dataclass
class LoadedEncoder:
    """A checkpoint's online encoder, on the CPU, with where it came from."""

    encoder: ResNet  # (B, 3, H, W) images -> (B, feature_dim) pooled features; fc is identity
    feature_dim: int
    config: PretrainConfig
    step: int


def load_encoder(checkpoint: Path) -> LoadedEncoder:
    """The online encoder of a pretraining checkpoint; any step's checkpoint works."""
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
    return LoadedEncoder(encoder, feature_dim, config, state["step"])


def backbone_state_dict(encoder: ResNet) -> dict[str, Tensor]:
    """The encoder's weights and BatchNorm statistics under torchvision's names, each in its own
    storage (a checkpoint's tensors share flat buffers)."""
    return {name: value.detach().clone() for name, value in encoder.state_dict().items()}


def export_backbone(checkpoint: Path, out: Path,
                    replace: bool = False) -> tuple[PretrainConfig, int, list[str]]:
    """Write the online encoder of `checkpoint` to `out` as a torchvision ResNet state dict.
    An existing `out` is replaced only with `replace`, and never when it is the checkpoint.

    Returns (the run's config, the step, the Python lines that build the matching model).
    """
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
    loaded = load_encoder(checkpoint)
    atomic_save(backbone_state_dict(loaded.encoder), out)
    return loaded.config, loaded.step, torchvision_builder(loaded.config)


def torchvision_builder(config: PretrainConfig) -> list[str]:
    """Python statements that build a torchvision ResNet the export loads into (fc aside)."""
    model = config.model
    width = f"width_per_group={64 * model.width}" if model.width != 1 else ""
    lines = [f"model = torchvision.models.{model.arch}({width})"]
    if model.small_stem:
        lines += ["model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)",
                  "model.maxpool = torch.nn.Identity()"]
    return lines
