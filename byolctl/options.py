"""Command-line options, declared once and shared by every subcommand.

Defaults are None so that a command knows which options the user actually gave: only those
override the preset and the config file.
"""

import json
import os
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from byol.models import ENCODERS
from byol.presets import PRESETS

Preset = Enum("Preset", {name: name for name in PRESETS}, type=str)
Arch = Enum("Arch", {name: name for name in ENCODERS}, type=str)


class Device(str, Enum):
    cuda = "cuda"
    cpu = "cpu"


class Precision(str, Enum):
    bf16 = "bf16"
    fp32 = "fp32"


class Kernels(str, Enum):
    fused = "fused"
    eager = "eager"


class OnNan(str, Enum):
    stop = "stop"
    skip = "skip"


DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Image folder (<class>/<image>), shards (a folder or a {a..b} pattern), "
    "`demo` (built in, the default) or `random`.",
    show_default=False)]
# The choices go into the help text, where they wrap: as the metavar they would widen the
# column so far that 80-column help truncates the longest option names.
ArchOpt = Annotated[Optional[Arch], typer.Option(
    "--arch", metavar="<name>",
    help=f"Encoder architecture (torchvision ResNet): {', '.join(ENCODERS)}.",
    show_default=False)]
PresetOpt = Annotated[Optional[Preset], typer.Option(
    "--preset", metavar="<name>",
    help=f"Starting hyperparameters: {', '.join(PRESETS)} \\[default: demo for --data demo, "
    "else imagenet].",
    show_default=False)]
WidthOpt = Annotated[Optional[int], typer.Option(
    "--width", help="Bottleneck width multiplier (resnet50 and deeper) \\[default: 1].",
    show_default=False)]
SmallStemOpt = Annotated[Optional[bool], typer.Option(
    "--small-stem/--imagenet-stem", help="3x3 stem without max-pool, for 32-64 px images.",
    show_default=False)]
ImageSizeOpt = Annotated[Optional[int], typer.Option(
    "--image-size", help="Side of each augmented view in pixels.", show_default=False)]
BatchSizeOpt = Annotated[Optional[int], typer.Option(
    "--batch-size", help="Images per step (each gives two views).", show_default=False)]
EpochsOpt = Annotated[Optional[int], typer.Option(
    "--epochs", help="Run length in passes over the data.", show_default=False)]
StepsOpt = Annotated[Optional[int], typer.Option(
    "--steps", help="Run length in optimizer steps (overrides --epochs).", show_default=False)]
LrOpt = Annotated[Optional[float], typer.Option(
    "--lr", help="Base learning rate per 256 images.", show_default=False)]
WarmupOpt = Annotated[Optional[float], typer.Option(
    "--warmup-epochs", help="Linear warmup length in epochs.", show_default=False)]
WeightDecayOpt = Annotated[Optional[float], typer.Option(
    "--weight-decay", help="LARS weight decay (not on biases and norms).", show_default=False)]
TauBaseOpt = Annotated[Optional[float], typer.Option(
    "--tau-base", help="Target EMA rate at step 0 (rises to 1).", show_default=False)]
BlurOpt = Annotated[Optional[bool], typer.Option(
    "--blur/--no-blur", help="Gaussian blur on the views, as in the paper \\[default: on; off "
    "in the cifar and demo presets].", show_default=False)]
KernelsOpt = Annotated[Optional[Kernels], typer.Option(
    "--kernels",
    help="Triton kernels (fused) or plain PyTorch (eager) for the loss, EMA and LARS "
    "\\[default: fused on a GPU].", show_default=False)]
CompileOpt = Annotated[Optional[bool], typer.Option(
    "--compile/--no-compile", help="torch.compile the networks \\[default: on with a GPU].",
    show_default=False)]
PrecisionOpt = Annotated[Optional[Precision], typer.Option(
    "--precision", help="bf16 autocast or fp32 \\[default: bf16 on a GPU].", show_default=False)]
DeviceOpt = Annotated[Optional[Device], typer.Option(
    "--device", help="Where to run \\[default: cuda if there is a GPU].", show_default=False)]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", help="Run folder \\[default: a new one in runs/, named by the arch, date and "
    "time].", show_default=False)]
ResumeOpt = Annotated[Optional[str], typer.Option(
    "--resume", help="`auto` (continue the matching run) or a checkpoint or run folder.",
    show_default=False)]
SeedOpt = Annotated[Optional[int], typer.Option(
    "--seed", help="Seed for initialization, data order and augmentation \\[default: 0].",
    show_default=False)]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", help="DALI CPU threads \\[default: the cores, at most 8].", show_default=False)]
StrictOpt = Annotated[Optional[bool], typer.Option(
    "--strict/--skip-bad", help="Stop at the first unreadable image \\[default: skip and list].",
    show_default=False)]
CheckpointEveryOpt = Annotated[Optional[int], typer.Option(
    "--checkpoint-every", help="Steps between checkpoints (and one at the end) "
    "\\[default: 1000].",
    show_default=False)]
KeepOpt = Annotated[Optional[int], typer.Option(
    "--keep-checkpoints", help="Step checkpoints to keep (last.pt names the newest) "
    "\\[default: 3].",
    show_default=False)]
OnNanOpt = Annotated[Optional[OnNan], typer.Option(
    "--on-nan", help="A non-finite loss or gradient stops the run, or skips that step (nothing "
    "applied) \\[default: stop].", show_default=False)]
MaxSkippedOpt = Annotated[Optional[int], typer.Option(
    "--max-skipped-steps", help="With --on-nan skip: steps the run may skip in all before it "
    "stops \\[default: 10].", show_default=False)]
ProbeOpt = Annotated[Optional[bool], typer.Option(
    "--probe/--no-probe", help="Train a linear probe on detached features alongside, logged "
    "as probe_top1 \\[default: on when the data has labels].", show_default=False)]
KnnEveryOpt = Annotated[Optional[int], typer.Option(
    "--knn-every", help="Steps between kNN checks on held-out data, 0 for none, logged as "
    "knn_top1 \\[default: once an epoch when held-out data is found].", show_default=False)]
KnnDataOpt = Annotated[Optional[str], typer.Option(
    "--knn-data", help="Held-out data for the kNN check: a folder with train/ and val/ "
    "\\[default: demo for demo, DIR for a DIR/train beside a DIR/val].", show_default=False)]


def device_and_workers(device: Device | None, workers: int | None) -> tuple[str, int]:
    """The device and the DALI threads a command runs with: the given ones, or the defaults
    pretraining uses. UserError for a negative --workers (0 means one thread)."""
    from byol.errors import UserError
    from byol.runtime import runtime_defaults  # deferred: keeps --help fast

    if workers is not None and workers < 0:
        raise UserError("--workers must be 0 or more.")
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
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="YAML or TOML file of settings (flags override it).", show_default=False)]
