"""Run configuration as plain typed data: saved as JSON with each run and in every checkpoint.

A config is built in layers (see `byol.presets.resolve_config`): a preset, then a config file,
then command-line flags. Every layer speaks the same flat keys, the field names below.
"""

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from byol.errors import UserError


@dataclass
class ModelConfig:
    """The networks: enough to rebuild them from a checkpoint."""

    arch: str = "resnet50"
    """Encoder name from `byol.models.ENCODERS` (torchvision ResNets)."""
    width: int = 1
    """Bottleneck width multiplier, as torchvision's wide ResNets (resnet50 and deeper only)."""
    small_stem: bool = False
    """3x3 stride-1 first convolution and no max-pool, for 32-64 px images."""
    projector_hidden: int = 4096
    """Hidden width of the projector and predictor MLPs."""
    projector_dim: int = 256
    """Output width of the projector and predictor."""


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: str = "demo"
    """Image source: a folder, `demo` (built in) or `random` (random tensors, for profiling)."""
    image_size: int = 224
    """Side of each augmented view, in pixels."""
    batch_size: int = 256
    """Images per step on each device; each image gives two views."""
    epochs: int = 300
    """Length of the run in passes over the data (ignored when `steps` is set)."""
    steps: int | None = None
    """Length of the run in optimizer steps; overrides `epochs`."""
    lr: float = 0.3
    """Base learning rate per 256 images: the peak is lr * batch_size / 256."""
    warmup_epochs: float = 10.0
    """Linear warmup length, then cosine decay to 0 (capped at the run's length)."""
    weight_decay: float = 1e-6
    """LARS weight decay (not applied to biases and normalization parameters)."""
    lars_eta: float = 1e-3
    """LARS trust coefficient."""
    lars_clip: bool = False
    """Each tensor's LARS rate is its trust ratio capped at the global lr, not lr times it
    (the CIFAR numbers assume it)."""
    momentum: float = 0.9
    """LARS momentum."""
    tau_base: float = 0.99
    """Target EMA rate at step 0; it rises to 1 on a cosine."""
    blur: bool = True
    """Gaussian blur on the views (p=1.0 for view 1, 0.1 for view 2, as in the paper)."""
    precision: str = "fp32"
    """`bf16` (autocast) or `fp32`."""
    seed: int = 0
    """Seed for initialization, data order and augmentations."""
    # Runtime choices: these may change when a run is resumed without changing what it computes
    # beyond floating-point rounding (see RUNTIME_FIELDS).
    device: str = "cpu"
    """`cuda` or `cpu`."""
    kernels: str = "eager"
    """`fused` (Triton) or `eager` (plain torch) loss, EMA and LARS; see `byol.ops`."""
    compile: bool = False
    """Compile the online and target networks with torch.compile."""
    workers: int = 2
    """DALI CPU threads for decoding and augmentation."""
    strict: bool = False
    """Stop at the first unreadable image instead of skipping it."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many steps (and always at the end)."""
    keep_checkpoints: int = 3
    """How many step checkpoints to keep besides `last.pt`."""
    probe: bool | None = None
    """Train a linear probe on detached features (default: when the data has labels)."""
    knn_every: int | None = None
    """Steps between kNN monitors, 0 for none (default: once an epoch, with `knn_data`)."""
    knn_data: str | None = None
    """Evaluation data for the kNN monitor (default: see `byol.monitors.held_out_data`)."""
    on_nan: str = "stop"
    """A non-finite loss or gradient: `stop` the run, or `skip` the step (nothing applied)."""
    max_skipped_steps: int = 10
    """With on_nan `skip`: how many steps the whole run may skip before it stops."""


RUNTIME_FIELDS = frozenset({"device", "kernels", "compile", "workers", "strict",
                            "checkpoint_every", "keep_checkpoints", "probe", "knn_every",
                            "knn_data", "on_nan", "max_skipped_steps"})
MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelConfig))
TOP_FIELDS = frozenset(f.name for f in dataclasses.fields(PretrainConfig)) - {"model"}
SETTING_NAMES = TOP_FIELDS | MODEL_FIELDS  # the flat keys a config accepts
PRECISIONS = ("bf16", "fp32")
ON_NAN = ("stop", "skip")


def flat_items(config: PretrainConfig) -> dict[str, Any]:
    """The config as one flat dict of field name -> value (model fields included)."""
    items = {name: getattr(config, name) for name in TOP_FIELDS}
    items.update(dataclasses.asdict(config.model))
    return items


def apply_overrides(config: PretrainConfig, overrides: dict[str, Any]) -> PretrainConfig:
    """A copy of `config` with flat keys replaced; unknown keys are a UserError."""
    unknown = sorted(set(overrides) - SETTING_NAMES)
    if unknown:
        raise UserError(
            f"Unknown config key(s) {', '.join(unknown)}; valid keys are "
            f"{', '.join(sorted(SETTING_NAMES))}."
        )
    overrides = {name: _coerce(name, value) for name, value in overrides.items()}
    model = dataclasses.replace(
        config.model, **{k: v for k, v in overrides.items() if k in MODEL_FIELDS}
    )
    top = {k: v for k, v in overrides.items() if k in TOP_FIELDS}
    return dataclasses.replace(config, model=model, **top)


_FIELD_TYPES = {f.name: f.type for cls in (ModelConfig, PretrainConfig)
                for f in dataclasses.fields(cls) if f.name != "model"}


# How a value of each type is described in an error message.
_KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text",
               type(None): "left unset"}


def _coerce(name: str, value: Any) -> Any:
    """`value` as the field's type, or UserError. Numbers may come as strings (YAML reads
    `1e-5` as one); an int is a fine float; a bool is not a number."""
    accepted = typing.get_args(_FIELD_TYPES[name]) or (_FIELD_TYPES[name],)
    if isinstance(value, str) and str not in accepted:
        for number in (int, float):
            if number in accepted:
                try:
                    return number(value)
                except ValueError:
                    pass
    if float in accepted and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) != (bool in accepted) or not isinstance(value, accepted):
        kinds = " or ".join(_KIND_NAMES.get(t, t.__name__) for t in accepted)
        raise UserError(f"{name} must be {kinds}, got {value!r}.")
    return value


def to_dict(config: PretrainConfig) -> dict[str, Any]:
    """JSON-ready nested dict."""
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any]) -> PretrainConfig:
    """Inverse of `to_dict`."""
    data = dict(data)
    model = ModelConfig(**data.pop("model"))
    return PretrainConfig(model=model, **data)


def validate(config: PretrainConfig) -> None:
    """Raise UserError for values no run can use."""
    positive = {"image_size": config.image_size, "batch_size": config.batch_size,
                "epochs": config.epochs, "checkpoint_every": config.checkpoint_every,
                "keep_checkpoints": config.keep_checkpoints, "width": config.model.width}
    for name, value in positive.items():
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}.")
    if config.steps is not None and config.steps < 1:
        raise UserError(f"steps must be at least 1, got {config.steps}.")
    for name in ("workers", "max_skipped_steps", "knn_every"):
        if (getattr(config, name) or 0) < 0:
            raise UserError(f"{name} must be 0 or more, got {getattr(config, name)}.")
    if config.on_nan not in ON_NAN:
        raise UserError(f"on_nan must be one of {', '.join(ON_NAN)}, got {config.on_nan!r}.")
    if config.precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, "
                        f"got {config.precision!r}.")
    for name in ("lr", "warmup_epochs", "weight_decay", "lars_eta", "momentum"):
        if getattr(config, name) < 0:
            raise UserError(f"{name} must not be negative, got {getattr(config, name)}.")
    if not 0.0 <= config.tau_base <= 1.0:
        raise UserError(f"tau_base must lie in [0, 1], got {config.tau_base}.")
    if config.batch_size < 2:
        raise UserError("batch_size must be at least 2: BatchNorm needs more than one image.")
