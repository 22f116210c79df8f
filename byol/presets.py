"""Named starting points for a run, with the numbers of the official BYOL implementation.

    byolctl pretrain --preset imagenet --data /datasets/imagenet/train --epochs 300
    byolctl pretrain --preset cifar --data /datasets/cifar10/train
    byolctl pretrain                      # the demo preset on the built-in dataset

A config is resolved in layers: preset < config file < command-line flags.
"""

from typing import Any

from byol.config import PretrainConfig, apply_overrides, validate
from byol.errors import UserError

# ImageNet hyperparameters keyed by the number of epochs, as in the official implementation:
# epochs -> (base lr per 256 images, weight decay, tau_base).
IMAGENET_BY_EPOCHS_KEYS = ("lr", "weight_decay", "tau_base")
IMAGENET_BY_EPOCHS: dict[int, tuple[float, float, float]] = {
    40: (0.45, 1e-6, 0.97),
    100: (0.45, 1e-6, 0.99),
    300: (0.3, 1e-6, 0.99),
    1000: (0.2, 1.5e-6, 0.996),
}

PRESETS: dict[str, dict[str, Any]] = {
    # ResNet-50 at 224 px; lr, weight decay and tau follow the epoch count (IMAGENET_BY_EPOCHS).
    "imagenet": dict(arch="resnet50", small_stem=False, image_size=224, batch_size=256,
                     epochs=300, warmup_epochs=10.0, lars_eta=1e-3, lars_clip=False),
    # ResNet-18 with the small stem at 32 px. No blur: at 32 px a 3x3 kernel with sigma up to
    # 2 leaves little of the image, and the reference CIFAR recipes leave it out.
    "cifar": dict(arch="resnet18", small_stem=True, image_size=32, batch_size=256, epochs=200,
                  lr=1.0, weight_decay=1e-5, lars_eta=0.02, lars_clip=True, tau_base=0.99,
                  warmup_epochs=10.0, blur=False),
    # The default: the cifar numbers, sized so that a 2-core CPU finishes in about two
    # minutes (one epoch of 156 steps at ~85 images/s) with the loss clearly falling.
    "demo": dict(arch="resnet18", small_stem=True, image_size=16, batch_size=64, epochs=1,
                 lr=1.0, weight_decay=1e-5, lars_eta=0.02, lars_clip=True, tau_base=0.99,
                 warmup_epochs=0.1, blur=False),
}


def imagenet_hyperparameters(epochs: int) -> dict[str, float]:
    """lr, weight decay and tau_base of the official preset nearest to `epochs`."""
    nearest = min(IMAGENET_BY_EPOCHS, key=lambda e: abs(e - epochs))
    return dict(zip(IMAGENET_BY_EPOCHS_KEYS, IMAGENET_BY_EPOCHS[nearest]))


def default_preset(data: str) -> str:
    """`demo` for the built-in dataset, `imagenet` for everything else."""
    return "demo" if data == "demo" else "imagenet"


def resolve_config(preset: str | None, overrides: dict[str, Any]) -> PretrainConfig:
    """Build a validated config: preset values, then `overrides` (config file, then flags).

    `overrides` holds only the keys the user set. With no preset named, it follows the data.
    """
    preset = preset or default_preset(overrides.get("data", "demo"))
    config = apply_overrides(PretrainConfig(), {**preset_values(preset, overrides), **overrides})
    validate(config)
    return config


def preset_values(preset: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The flat settings a preset contributes, given the user's other settings."""
    if preset not in PRESETS:
        raise UserError(f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")
    values = dict(PRESETS[preset])
    if preset == "imagenet":
        values.update(imagenet_hyperparameters(overrides.get("epochs", values["epochs"])))
    return values
