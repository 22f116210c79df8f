"""The byolctl command line: parse options, build a config, call byol, render with rich.

    byolctl pretrain                                    # demo preset on the built-in data
    byolctl pretrain --arch resnet50 --data random --steps 50
"""

import os
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from byol.config import PretrainConfig
from byol.data.folders import MAX_PIXELS_VARIABLE
from byol.errors import plural
from byolctl import __version__, errors
from byolctl.config_file import read_config_file
from byolctl.data_commands import data_app
from byolctl.errors import exits_cleanly
from byolctl.eval_commands import eval_app, export
from byolctl.options import (
    ArchOpt,
    BatchSizeOpt,
    BlurOpt,
    CheckpointEveryOpt,
    CompileOpt,
    ConfigOpt,
    DataOpt,
    DeviceOpt,
    EpochsOpt,
    ImageSizeOpt,
    InMemoryOpt,
    KeepOpt,
    KernelsOpt,
    KnnDataOpt,
    KnnEveryOpt,
    LogEveryOpt,
    LrOpt,
    MaxSkippedOpt,
    OnNanOpt,
    OutOpt,
    PrecisionOpt,
    PresetOpt,
    ProbeOpt,
    ResumeOpt,
    SeedOpt,
    SmallStemOpt,
    StepsOpt,
    StrictOpt,
    TauBaseOpt,
    WarmupOpt,
    WeightDecayOpt,
    WidthOpt,
    WorkersOpt,
    checked_flags,
)
from byolctl.profile_command import profile
from byolctl.render import console, pretrain_progress, print_error, print_warning

app = typer.Typer(
    name="byolctl",
    help="Pretrain image encoders with BYOL, fast and correct to the paper.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help for every command: click keeps the flags to one narrow column and gives the
    # descriptions the rest (48 characters at 80 columns), where rich's boxed option table
    # left them about 20 beside the long flags and their --no- forms.
    rich_markup_mode=None,
)
app.add_typer(data_app, name="data")
app.add_typer(eval_app, name="eval")
# Each short_help fits the command list at 80 columns, where click cuts a longer one short.
app.command("export", short_help="Write the online encoder as a torchvision ResNet state dict.",
            epilog="Example: byolctl export --checkpoint runs/r50/last.pt "
            "--out r50-byol.pt")(exits_cleanly(export))
app.command("profile", short_help="Time the hot operations and whole steps, eager and fused.",
            epilog="Example: byolctl profile --arch resnet50 --batch-size 256 "
            "--json profile.json --plot profile.png")(exits_cleanly(profile))
def _print_version(value: bool) -> None:
    if value:
        console.print(f"byolctl {__version__}")
        raise typer.Exit()


# The commands whose processes work together under torchrun. Any other, started by torchrun,
# runs in rank 0 alone: the others would write the same files at the same time.
TORCHRUN_COMMANDS = ("pretrain", "eval")


@app.callback()
def _root(
    context: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.",
                                 callback=_print_version, is_eager=True),
    max_pixels: Optional[int] = typer.Option(
        None, "--max-pixels", metavar="<int>", help="Skip images of more pixels than this "
        "(decompression bombs) [default: 100,000,000, or BYOLCTL_MAX_PIXELS].",
        show_default=False),
):
    errors.show_tracebacks = debug
    if max_pixels is not None:
        if max_pixels < 1:
            print_error(f"--max-pixels must be at least 1; got {max_pixels}.")
            raise typer.Exit(2)
        # Said through the variable every reader of images consults, in this process and in
        # the DALI workers and processes it starts.
        os.environ[MAX_PIXELS_VARIABLE] = str(max_pixels)
    # torchrun numbers its processes in RANK, out of WORLD_SIZE.
    started_by_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if (context.invoked_subcommand not in TORCHRUN_COMMANDS and started_by_torchrun
            and os.environ.get("RANK", "0") != "0"):
        raise typer.Exit()


@app.command(epilog="Example: byolctl pretrain --arch resnet50 --data random --steps 100")
@exits_cleanly
def pretrain(
    data: DataOpt = None,
    arch: ArchOpt = None,
    preset: PresetOpt = None,
    width: WidthOpt = None,
    small_stem: SmallStemOpt = None,
    image_size: ImageSizeOpt = None,
    batch_size: BatchSizeOpt = None,
    epochs: EpochsOpt = None,
    steps: StepsOpt = None,
    lr: LrOpt = None,
    warmup_epochs: WarmupOpt = None,
    weight_decay: WeightDecayOpt = None,
    tau_base: TauBaseOpt = None,
    blur: BlurOpt = None,
    kernels: KernelsOpt = None,
    compile: CompileOpt = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    seed: SeedOpt = None,
    workers: WorkersOpt = None,
    strict: StrictOpt = None,
    in_memory: InMemoryOpt = None,
    checkpoint_every: CheckpointEveryOpt = None,
    keep_checkpoints: KeepOpt = None,
    on_nan: OnNanOpt = None,
    max_skipped_steps: MaxSkippedOpt = None,
    probe: ProbeOpt = None,
    knn_every: KnnEveryOpt = None,
    knn_data: KnnDataOpt = None,
    log_every: LogEveryOpt = None,
    config: ConfigOpt = None,
):
    """Pretrain an encoder with BYOL. With no options: the demo preset on the built-in data."""
    # Only the options the user gave override the preset and the config file.
    flags = {name: value.value if isinstance(value, Enum) else value
             for name, value in locals().items()
             if value is not None and name not in ("preset", "out", "resume", "config")}
    checked_flags(PretrainConfig, flags)  # before anything is read or written
    from byol.pretrain import prepare_run  # deferred: keeps --help fast

    settings: dict[str, Any] = read_config_file(config) if config else {}
    file_preset, file_out = settings.pop("preset", None), settings.pop("out", None)
    preset_name = preset.value if preset else file_preset
    out = out or (Path(file_out) if file_out else None)
    settings.update(flags)

    trainer, resumed_from = prepare_run(preset_name, settings, out, resume)
    console.quiet = not trainer.processes.is_main  # under torchrun, rank 0 speaks for all
    cfg = trainer.config
    if cfg.device == "cpu" and "device" not in settings:
        console.print("No GPU found: training on the CPU (fine for the demo, slow for real data).")
    if resumed_from:
        console.print(f"Resuming from {resumed_from} at step {trainer.step}.")
    skipped = getattr(trainer.loader, "skipped", [])
    if skipped:
        from byol.run_folder import SKIPPED_FILE

        console.print(f"Skipping {plural(len(skipped), 'file')} that cannot be trained on "
                      f"(with the reason for each) listed in {trainer.run_dir / SKIPPED_FILE}.")
    processes = trainer.processes.world_size
    batch = (f"batch {cfg.batch_size}" if processes == 1 else
             f"batch {cfg.batch_size} x {processes} processes")
    console.print(f"Run folder: {trainer.run_dir}  ({cfg.model.arch}, {cfg.image_size} px, "
                  f"{batch}, {trainer.total_steps} steps, {cfg.device}, {cfg.precision})")
    if not resumed_from:
        _describe_preset(preset_name, settings, cfg.image_size)
    monitors = _describe_monitors(trainer)
    if monitors:
        console.print(monitors)

    with pretrain_progress(trainer.total_steps, trainer.step, trainer.loader.steps_per_epoch,
                           cfg.log_every) as on_progress:
        summary = trainer.fit(on_progress)

    if summary.interrupted:
        if summary.checkpoint is None:
            print_error("Interrupted before the first step; nothing was saved.")
        else:  # a stop that was asked for and went as planned: no error
            print_warning(f"Stopped at step {summary.step} of {summary.total_steps} as asked; "
                          f"checkpoint saved. Resume with: byolctl pretrain --resume "
                          f"{summary.checkpoint}")
        raise typer.Exit(1)
    if summary.last_record is None:
        console.print(f"Nothing to do: the run already finished at step {summary.step} "
                      f"({summary.checkpoint}).")
        return
    record = summary.last_record
    monitors = f", probe top-1 {record['probe_top1']:.1f}%" if "probe_top1" in record else ""
    if summary.knn is not None:
        monitors += f", kNN top-1 {summary.knn['knn_top1']:.1f}%"
    console.print(f"Done: {summary.step} steps, loss {record['loss']:.4f}, collapse std "
                  f"{record['collapse_std']:.4f} (healthy near "
                  f"{cfg.model.projector_dim ** -0.5:.4f}){monitors}. "
                  f"Checkpoint: {summary.checkpoint}")


def _describe_preset(named: str | None, settings: dict[str, Any], image_size: int) -> None:
    """Say which preset a fresh run starts from and why, and warn when the image size is far
    from the one the preset was made for (its stem and augmentations suit that size)."""
    from byol.presets import PRESETS, default_preset

    data = settings.get("data", "demo")
    preset = named or default_preset(data)
    why = "as asked" if named else ("the default for the demo data" if data == "demo" else
                                    "the default for --data other than demo; --preset cifar "
                                    "suits 32 px images")
    console.print(f"Preset: {preset} ({why}).")
    made_for = PRESETS[preset]["image_size"]
    if not made_for / 2 <= image_size <= made_for * 2:
        print_warning(f"--image-size {image_size} is far from the {preset} preset's "
                      f"{made_for} px; choose the preset that suits the images (--preset).")


def _describe_monitors(trainer) -> str | None:
    """One line on the probe and the kNN monitor, saying why the kNN monitor is off when
    labeled data has no held-out split beside it (the user may expect one)."""
    monitors = trainer.monitors
    parts = ["linear probe"] if monitors.probe is not None else []
    if monitors.knn is not None:
        every = monitors.knn_every
        when = ("at the end" if every >= trainer.total_steps
                else f"every {every} steps and at the end")
        from byol.monitors import KNN_K, KNN_TRAIN_IMAGES, KNN_VAL_IMAGES

        # Said in full: `eval knn` (k=200, every image) reads other numbers for one encoder.
        parts.append(f"kNN on {monitors.knn.data} {when} (k={KNN_K}, at most "
                     f"{KNN_TRAIN_IMAGES:,} train and {KNN_VAL_IMAGES:,} val images)")
    elif monitors.knn_unusable:
        parts.append(f"no kNN ({monitors.knn_unusable.rstrip('.')}; or name other held-out "
                     "data with --knn-data)")
    elif getattr(trainer.loader, "classes", None) and trainer.config.knn_every is None:
        parts.append("no kNN (no val/ or test/ beside the training folder; name one with "
                     "--knn-data)")
    return f"Monitors: {', '.join(parts)}." if parts else None


def main() -> None:
    """Run the command line (byolctl.main, which loads this module, has already made a SIGTERM
    end it as Ctrl-C does)."""
    app()
