"""Command-line options, declared once and shared by every subcommand.

Each option that sets a setting takes its help text and shown default from the dataclass field
that holds the setting (`config_option`), so a default or a description lives in one place.
Pretraining's defaults are None here so that a command knows which options the user actually
gave: only those override the preset and the config file.
"""

import json
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from byol.config import (
    ON_NAN,
    PRECISIONS,
    ModelConfig,
    PretrainConfig,
    check_settings,
    described,
    settings_fields,
)
from byol.models import ENCODERS
from byol.ops import BACKENDS
from byol.presets import IMAGENET_BY_EPOCHS_KEYS, PRESETS

Preset = Enum("Preset", {name: name for name in PRESETS}, type=str)
Arch = Enum("Arch", {name: name for name in ENCODERS}, type=str)
Device = Enum("Device", {name: name for name in ("cuda", "cpu")}, type=str)
Precision = Enum("Precision", {name: name for name in PRECISIONS}, type=str)
Kernels = Enum("Kernels", {name: name for name in BACKENDS}, type=str)
OnNan = Enum("OnNan", {name: name for name in ON_NAN}, type=str)


def shown_value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _preset_default(name: str, default: Any) -> str | None:
    """How the presets set `name` ("demo 16, cifar 32, imagenet 224"), if any of them does."""
    if not any(name in values for values in PRESETS.values()) and name not in (
            IMAGENET_BY_EPOCHS_KEYS):
        return None
    parts = []
    for preset, values in PRESETS.items():
        if preset == "imagenet" and name in IMAGENET_BY_EPOCHS_KEYS:
            parts.append("imagenet by --epochs")
        else:
            parts.append(f"{preset} {shown_value(values.get(name, default))}")
    return ", ".join(parts)


def config_option(settings_class: type, name: str, flags: str | None = None, *,
                  choices: Sequence[str] = (), cpu_defaults: Mapping[str, Any] | None = None,
                  **kwargs) -> Any:
    """A typer.Option for the setting `name` of a dataclass declared with `byol.config.setting`:
    its help, the choices (listed in the help, where they wrap; as the metavar they would widen
    the column past 80), and its default as the field, the presets or `cpu_defaults` give it."""
    field = described(settings_class, name)
    shown = field.metadata["default_text"]
    if shown is None and settings_class in (PretrainConfig, ModelConfig):
        shown = _preset_default(name, field.default)
    if shown is None and field.default is not None:
        shown = shown_value(field.default)
    if cpu_defaults and name in cpu_defaults:
        shown = f"{shown}; {shown_value(cpu_defaults[name])} on the CPU"
    help_text = field.metadata["help"]
    if choices:
        help_text = f"{help_text.rstrip('.')}: {', '.join(choices)}."
        kwargs.setdefault("metavar", "<name>")
    if shown is not None:
        help_text = f"{help_text.rstrip('.')} [default: {shown}]."
    return typer.Option(flags or "--" + name.replace("_", "-"), help=help_text,
                        show_default=False, **kwargs)


# Pretraining's settings (and the runtime ones every command shares).
DataOpt = Annotated[Optional[str], config_option(PretrainConfig, "data")]
ArchOpt = Annotated[Optional[Arch], config_option(ModelConfig, "arch", choices=ENCODERS)]
PresetOpt = Annotated[Optional[Preset], typer.Option(
    "--preset", metavar="<name>",
    help=f"Starting hyperparameters: {', '.join(PRESETS)} [default: demo for --data demo, "
    "else imagenet].",
    show_default=False)]
WidthOpt = Annotated[Optional[int], config_option(ModelConfig, "width")]
SmallStemOpt = Annotated[Optional[bool], config_option(
    ModelConfig, "small_stem", "--small-stem/--imagenet-stem")]
ImageSizeOpt = Annotated[Optional[int], config_option(PretrainConfig, "image_size")]
BatchSizeOpt = Annotated[Optional[int], config_option(PretrainConfig, "batch_size")]
EpochsOpt = Annotated[Optional[int], config_option(PretrainConfig, "epochs")]
StepsOpt = Annotated[Optional[int], config_option(PretrainConfig, "steps")]
LrOpt = Annotated[Optional[float], config_option(PretrainConfig, "lr")]
WarmupOpt = Annotated[Optional[float], config_option(PretrainConfig, "warmup_epochs")]
WeightDecayOpt = Annotated[Optional[float], config_option(PretrainConfig, "weight_decay")]
TauBaseOpt = Annotated[Optional[float], config_option(PretrainConfig, "tau_base")]
BlurOpt = Annotated[Optional[bool], config_option(PretrainConfig, "blur", "--blur/--no-blur")]
KernelsOpt = Annotated[Optional[Kernels], config_option(PretrainConfig, "kernels")]
CompileOpt = Annotated[Optional[bool], config_option(
    PretrainConfig, "compile", "--compile/--no-compile")]
PrecisionOpt = Annotated[Optional[Precision], config_option(PretrainConfig, "precision")]
DeviceOpt = Annotated[Optional[Device], config_option(PretrainConfig, "device")]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", help="Run folder [default: a new one in runs/, named by the arch, date and "
    "time].", show_default=False)]
ResumeOpt = Annotated[Optional[str], typer.Option(
    "--resume", help="`auto` (continue the matching run) or a checkpoint or run folder.",
    show_default=False)]
SeedOpt = Annotated[Optional[int], config_option(PretrainConfig, "seed")]
WorkersOpt = Annotated[Optional[int], config_option(PretrainConfig, "workers")]
StrictOpt = Annotated[Optional[bool], config_option(PretrainConfig, "strict",
                                                    "--strict/--skip-bad")]
InMemoryOpt = Annotated[Optional[bool], config_option(PretrainConfig, "in_memory",
                                                      "--in-memory/--no-in-memory")]
CheckpointEveryOpt = Annotated[Optional[int], config_option(PretrainConfig, "checkpoint_every")]
KeepOpt = Annotated[Optional[int], config_option(PretrainConfig, "keep_checkpoints")]
OnNanOpt = Annotated[Optional[OnNan], config_option(PretrainConfig, "on_nan")]
MaxSkippedOpt = Annotated[Optional[int], config_option(PretrainConfig, "max_skipped_steps")]
ProbeOpt = Annotated[Optional[bool], config_option(PretrainConfig, "probe", "--probe/--no-probe")]
KnnEveryOpt = Annotated[Optional[int], config_option(PretrainConfig, "knn_every")]
KnnDataOpt = Annotated[Optional[str], config_option(PretrainConfig, "knn_data")]
LogEveryOpt = Annotated[Optional[float], config_option(PretrainConfig, "log_every")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="YAML or TOML file of settings (flags override it).", show_default=False)]


def flag_spelling(name: str) -> str:
    """How the user types the option of the setting `name` (`--batch-size`): what a message
    about its value names. Every option of a numeric setting is spelled so (config_option)."""
    return "--" + name.replace("_", "-")


def checked_flags(settings_class: type, values: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave (not None) for fields of `settings_class`, each checked
    against the range its field allows before the command writes anything; UserError in the
    flag's spelling (`--lr must be a finite number above 0; got nan.`)."""
    fields = settings_fields(settings_class)
    given = {name: value.value if isinstance(value, Enum) else value
             for name, value in values.items() if name in fields and value is not None}
    return check_settings(settings_class, given, flag_spelling)


def given_settings(settings_class: type, values: dict[str, Any]) -> Any:
    """An instance of `settings_class` with the options the user gave (not None, checked: see
    checked_flags) over its defaults; Enum choices become their values."""
    return settings_class(**checked_flags(settings_class, values))


def log_every_seconds(value: float | None) -> float:
    """--log-every of a command without a config (eval, data): the given seconds, checked,
    or pretraining's default."""
    if value is None:
        return described(PretrainConfig, "log_every").default
    checked_flags(PretrainConfig, {"log_every": value})
    return value


def device_and_workers(device: Device | None, workers: int | None) -> tuple[str, int]:
    """The device and the DALI threads a command runs with: the given ones, or the defaults
    pretraining uses. UserError for a negative --workers (0 means one thread)."""
    from byol.runtime import runtime_defaults  # deferred: keeps --help fast

    checked_flags(PretrainConfig, {"workers": workers})
    runtime = runtime_defaults({"device": device.value} if device else {})
    return runtime["device"], runtime["workers"] if workers is None else workers


def writable_output_file(path: Path | None) -> Path | None:
    """Refuse an output file (--json, --plot) that could not be written, before the command
    does its work."""
    if path is None:
        return None
    if path.is_dir():
        raise typer.BadParameter(f"{path} is a folder; name a file in it instead.")
    if not path.parent.is_dir():
        raise typer.BadParameter(f"the folder {path.parent} does not exist; create it first.")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise typer.BadParameter(f"{path} is not writable; choose another file.")
    return path


JsonOpt = Annotated[Optional[Path], typer.Option(
    "--json", help="Also write the results as JSON to this file.", show_default=False,
    callback=writable_output_file)]


def write_json(path: Path, data: dict) -> None:
    """Write a command's results for --json: whole or not at all (see atomic_write_text)."""
    from byol.checkpoint import atomic_write_text  # deferred: keeps --help fast

    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
