"""Run configuration as plain typed data: saved as JSON with each run and in every checkpoint.

A config is built in layers (see `byol.presets.resolve_config`): a preset, then a config file,
then command-line flags. Every layer speaks the same flat keys, the field names below.
"""

import dataclasses
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from byol.errors import UserError


@dataclass(frozen=True)
class Range:
    """The numbers a setting accepts: finite, from `low` up to `high`; `above` and `below`
    leave out the ends themselves. `why` says the reason for a bound a user may not expect."""

    low: float
    high: float = math.inf
    above: bool = False
    below: bool = False
    why: str | None = None

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if value < self.low or (self.above and value == self.low):
            return False
        return value < self.high or (not self.below and value == self.high)

    def describe(self, whole: bool) -> str:
        """"at least 1", "0 or more", "a finite number above 0", "a number in [0, 1)"."""
        low, high = _shown_number(self.low), _shown_number(self.high)
        if self.high < math.inf:
            what = (f"from {low} to {high}" if whole else
                    f"a number in {'(' if self.above else '['}{low}, {high}"
                    f"{')' if self.below else ']'}")
        elif self.above:
            what = f"above {low}" if whole else f"a finite number above {low}"
        elif self.low == 0:
            what = "0 or more" if whole else "a finite number, 0 or more"
        else:
            what = f"at least {low}" if whole else f"a finite number of at least {low}"
        return f"{what} ({self.why})" if self.why else what


def _shown_number(number: float) -> str:
    return str(int(number)) if math.isfinite(number) and number == int(number) else f"{number:g}"


def setting(default: Any, help: str, *, default_text: str | None = None,
            allowed: Range | None = None) -> Any:
    """A config field with its description and the numbers it accepts: the one home of all
    three. The command line takes each option's help and shown default from here (see
    `byolctl.options.config_option`) and checks what it is given against `allowed` (see
    `check_settings`); `default_text` says the default in words where the machine or the
    preset decides it."""
    return field(default=default, metadata={"help": help, "default_text": default_text,
                                            "allowed": allowed})


# Ranges several settings share.
AT_LEAST_0 = Range(0)
AT_LEAST_1 = Range(1)
ABOVE_0 = Range(0, above=True)
FRACTION = Range(0, 1, below=True)  # a momentum or an EMA rate: 1 would stand still
# Training normalizes each batch (BatchNorm), which needs more than one image.
TRAINING_BATCH = Range(2, why="BatchNorm needs more than one image")
# A view side in pixels: below 8 the ResNet stems leave nothing to pool.
IMAGE_SIDE = Range(8, 4096)
SEED = Range(0, 2**32 - 1)  # the seeds numpy and DALI take


def described(settings_class: type, name: str) -> dataclasses.Field:
    """The field `name` of a dataclass declared with `setting`, or KeyError."""
    fields = {f.name: f for f in dataclasses.fields(settings_class)}
    if "help" not in fields[name].metadata:
        raise KeyError(f"{settings_class.__name__}.{name} has no description")
    return fields[name]


@dataclass
class ModelConfig:
    """The networks: enough to rebuild them from a checkpoint."""

    arch: str = setting("resnet50", "Encoder architecture (torchvision ResNet).")
    width: int = setting(1, "Channels of every layer times N, stem included: the paper's "
                         "ResNet-50 (2x), (4x).", allowed=AT_LEAST_1)
    small_stem: bool = setting(False, "3x3 stride-1 first convolution and no max-pool, for "
                               "32-64 px images.")
    projector_hidden: int = setting(4096, "Hidden width of the projector and predictor MLPs.",
                                    allowed=AT_LEAST_1)
    projector_dim: int = setting(256, "Output width of the projector and predictor.",
                                 allowed=AT_LEAST_1)


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: str = setting("demo", "Image folder (<class>/<image>), shards (a folder or a {a..b} "
                        "pattern), `demo` (built in) or `random` (random tensors, to profile).")
    image_size: int = setting(224, "Side of each augmented view, in pixels.", allowed=IMAGE_SIDE)
    batch_size: int = setting(256, "Images per step on each device (each gives two views).",
                              allowed=TRAINING_BATCH)
    epochs: int = setting(300, "Run length in passes over the data.", allowed=AT_LEAST_1)
    steps: int | None = setting(None, "Run length in optimizer steps (overrides --epochs).",
                                default_text="from --epochs", allowed=AT_LEAST_1)
    lr: float = setting(0.3, "Base learning rate per 256 images: the peak is lr * batch / 256.",
                        allowed=ABOVE_0)
    warmup_epochs: float = setting(10.0, "Linear warmup length in epochs, then cosine decay "
                                   "to 0 (capped at the run's length).", allowed=AT_LEAST_0)
    weight_decay: float = setting(1e-6, "LARS weight decay (not on biases and norms).",
                                  allowed=AT_LEAST_0)
    lars_eta: float = setting(1e-3, "LARS trust coefficient.", allowed=ABOVE_0)
    lars_clip: bool = setting(False, "Cap each tensor's LARS rate at the lr (its trust ratio "
                              "capped at lr) instead of lr times the trust ratio.")
    momentum: float = setting(0.9, "LARS momentum.", allowed=FRACTION)
    tau_base: float = setting(0.99, "Target EMA rate at step 0 (rises to 1 on a cosine).",
                              allowed=FRACTION)
    blur: bool = setting(True, "Gaussian blur on the views (p=1.0 for view 1, 0.1 for view 2, "
                         "as in the paper).")
    precision: str = setting("fp32", "bf16 autocast or fp32.",
                             default_text="bf16 on a GPU, else fp32")
    seed: int = setting(0, "Seed for initialization, data order and augmentation.", allowed=SEED)
    # Runtime choices: these may change when a run is resumed without changing what it computes
    # beyond floating-point rounding (see RUNTIME_FIELDS).
    device: str = setting("cpu", "Where to run.", default_text="cuda if there is a GPU")
    kernels: str = setting("eager", "Triton kernels (fused) or plain PyTorch (eager) for the "
                           "loss, EMA and LARS.",
                           default_text="fused on a GPU, else eager")
    compile: bool = setting(False, "torch.compile the online and target networks.",
                            default_text="on with a GPU")
    workers: int = setting(2, "DALI CPU threads for decoding and augmentation.",
                           default_text="the cores, at most 8", allowed=AT_LEAST_0)
    strict: bool = setting(False, "Stop at the first unreadable image instead of skipping and "
                           "listing it.")
    in_memory: bool | None = setting(None, "Decode a small-image folder once and feed it from "
                                     "memory.", default_text="on when it fits")
    checkpoint_every: int = setting(1000, "Steps between checkpoints (and one at the end).",
                                    allowed=AT_LEAST_1)
    keep_checkpoints: int = setting(3, "Step checkpoints to keep (last.pt names the newest).",
                                    allowed=AT_LEAST_1)
    probe: bool | None = setting(None, "Train a linear probe on detached features alongside, "
                                 "logged as probe_top1.",
                                 default_text="on when the data has labels")
    knn_every: int | None = setting(None, "Steps between kNN checks on held-out data, 0 for "
                                    "none, logged as knn_top1.",
                                    default_text="once an epoch when held-out data is found",
                                    allowed=AT_LEAST_0)
    knn_data: str | None = setting(None, "Held-out data for the kNN check: a folder with "
                                   "train/ and val/.",
                                   default_text="demo for demo, DIR for a DIR/train beside a "
                                   "DIR/val")
    on_nan: str = setting("stop", "A non-finite loss or gradient stops the run, or skips that "
                          "step (nothing applied).")
    max_skipped_steps: int = setting(10, "With --on-nan skip: steps the run may skip in all "
                                     "before it stops.", allowed=AT_LEAST_0)
    log_every: float = setting(30.0, "Seconds between plain progress lines when the output "
                               "is not a terminal (a log file, a batch job).", allowed=ABOVE_0)


RUNTIME_FIELDS = frozenset({"device", "kernels", "compile", "workers", "strict",
                            "checkpoint_every", "keep_checkpoints", "probe", "knn_every",
                            "knn_data", "on_nan", "max_skipped_steps", "log_every"})
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
    overrides = {name: _coerce(_FIELDS[name].type, value, name)
                 for name, value in overrides.items()}
    model = dataclasses.replace(
        config.model, **{k: v for k, v in overrides.items() if k in MODEL_FIELDS}
    )
    top = {k: v for k, v in overrides.items() if k in TOP_FIELDS}
    return dataclasses.replace(config, model=model, **top)


def settings_fields(settings_class: type) -> dict[str, dataclasses.Field]:
    """The fields of a settings dataclass by name, those of nested ones (a PretrainConfig's
    model) included: the flat keys it is set with."""
    fields = {}
    for f in dataclasses.fields(settings_class):
        if dataclasses.is_dataclass(f.type):
            fields.update(settings_fields(f.type))
        else:
            fields[f.name] = f
    return fields


_FIELDS = settings_fields(PretrainConfig)


# How a value of each type is described in an error message.
_KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text",
               type(None): "left unset"}


def _coerce(field_type: Any, value: Any, spoken: str) -> Any:
    """`value` as `field_type`, or UserError naming the setting as `spoken`. Numbers may come
    as strings (YAML reads `1e-5` as one); an int is a fine float; a bool is not a number."""
    accepted = typing.get_args(field_type) or (field_type,)
    if value is None and type(None) in accepted:
        return None
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
        raise UserError(f"{spoken} must be {kinds}; got {value!r}.")
    return value


def check_settings(settings_class: type, values: Mapping[str, Any],
                   spoken: Callable[[str], str] = str) -> dict[str, Any]:
    """`values` (field name -> value) as their fields' types, each inside the range its field
    allows (see `setting`). UserError for the first that is not, naming the setting as
    `spoken(name)` gives it: the flag as typed, a config file's key, by default the field."""
    fields = settings_fields(settings_class)
    checked = {}
    for name, value in values.items():
        value = _coerce(fields[name].type, value, spoken(name))
        allowed = fields[name].metadata.get("allowed")
        if value is not None and allowed is not None:
            check_value(value, allowed, spoken(name))
        checked[name] = value
    return checked


def check_value(value: float, allowed: Range, spoken: str) -> None:
    """UserError unless `allowed` admits `value`, naming it `spoken` (`--shard-size`)."""
    if not allowed.admits(value):
        whole = not isinstance(value, float)
        raise UserError(f"{spoken} must be {allowed.describe(whole)}; got {value}.")


def to_dict(config: PretrainConfig) -> dict[str, Any]:
    """JSON-ready nested dict."""
    return dataclasses.asdict(config)


def from_dict(data: dict[str, Any]) -> PretrainConfig:
    """Inverse of `to_dict`."""
    data = dict(data)
    model = ModelConfig(**data.pop("model"))
    return PretrainConfig(model=model, **data)


def validate(config: PretrainConfig) -> None:
    """Raise UserError for values no run can use, naming each by its field."""
    check_settings(PretrainConfig, flat_items(config))
    if config.on_nan not in ON_NAN:
        raise UserError(f"on_nan must be one of {', '.join(ON_NAN)}; got {config.on_nan!r}.")
    if config.precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}; "
                        f"got {config.precision!r}.")
