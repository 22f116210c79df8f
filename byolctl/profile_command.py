"""`byolctl profile`: where the time goes, fused against eager, side by side."""

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from byolctl.options import (
    ArchOpt,
    DeviceOpt,
    JsonOpt,
    Precision,
    PrecisionOpt,
    WorkersOpt,
    device_and_workers,
    writable_output_file,
    write_json,
)
from byolctl.render import console

# Without a GPU the defaults shrink to what a CPU times in about a minute.
CPU_DEFAULTS = {"arch": "resnet18", "batch_size": 32, "image_size": 32, "steps": 3,
                "warmup": 1, "precision": "fp32", "compile": False}

ProfileBatchOpt = Annotated[Optional[int], typer.Option(
    "--batch-size", help="Images per step \\[default: 256; 32 on the CPU].", show_default=False)]
ProfileSizeOpt = Annotated[Optional[int], typer.Option(
    "--image-size", help="View side in pixels \\[default: 224; 32 on the CPU].",
    show_default=False)]
ProfileStepsOpt = Annotated[Optional[int], typer.Option(
    "--steps", help="Timed training steps per variant \\[default: 20; 3 on the CPU].",
    show_default=False)]
ProfileCompileOpt = Annotated[Optional[bool], typer.Option(
    "--compile/--no-compile", help="Include torch.compile variants \\[default: on with a GPU].",
    show_default=False)]
ProfileDataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Also time the DALI pipeline on this image folder or shards.",
    show_default=False)]


def _png_file(path: Path | None) -> Path | None:
    """Refuse a --plot file that is not writable or not named .png, before profiling."""
    path = writable_output_file(path)
    if path is not None and path.suffix.lower() != ".png":
        raise typer.BadParameter(f"{path} does not end in .png; the chart is a PNG image, "
                                 "such as profile.png.")
    return path


PlotOpt = Annotated[Optional[Path], typer.Option(
    "--plot", help="Also draw the result as a PNG chart to this file.", show_default=False,
    callback=_png_file)]


def profile(
    arch: ArchOpt = None,
    batch_size: ProfileBatchOpt = None,
    image_size: ProfileSizeOpt = None,
    precision: PrecisionOpt = None,
    steps: ProfileStepsOpt = None,
    device: DeviceOpt = None,
    compile: ProfileCompileOpt = None,
    data: ProfileDataOpt = None,
    workers: WorkersOpt = None,
    json_file: JsonOpt = None,
    plot: PlotOpt = None,
):
    """Time the loss, EMA and LARS in each implementation, whole training steps with eager
    and fused kernels (compiled and not), and optionally the data pipeline."""
    from byol.errors import UserError
    from byol.profiling.run import ProfileSettings
    from byol.profiling.run import profile as run_profile

    device, workers = device_and_workers(device, workers)
    on_gpu = device == "cuda"
    given = {"arch": arch.value if arch else None, "batch_size": batch_size,
             "image_size": image_size, "steps": steps, "compile": compile,
             "precision": precision.value if isinstance(precision, Precision) else None}
    defaults = {} if on_gpu else CPU_DEFAULTS
    settings = ProfileSettings(
        **{**defaults, **{k: v for k, v in given.items() if v is not None}},
        device=device, data=data, workers=workers)
    if settings.batch_size < 1 or settings.image_size < 8 or settings.steps < 1:
        raise UserError("--batch-size and --steps must be at least 1, --image-size at least 8.")
    if not on_gpu:
        console.print("No GPU: profiling on the CPU with small defaults; the fused kernels "
                      "and every GPU number are not measured here.")
    with console.status("Profiling ...") as status:
        result = run_profile(settings, lambda text: status.update(f"Profiling {text} ..."))
    _print(result)
    if json_file:
        write_json(json_file, result)
        console.print(f"Wrote {json_file}")
    if plot:
        from byolctl.plot import plot_profile

        plot_profile(result, plot)
        console.print(f"Wrote {plot}")


def _print(result: dict[str, Any]) -> None:
    env, settings = result["environment"], result["settings"]
    console.print(f"{env['device']}; torch {env['torch']}, triton {env['triton']}, commit "
                  f"{env['commit']}. Copy bandwidth: {result['copy_gb_per_s']:.0f} GB/s.")
    params = result["parameters"]
    ops = Table("op", "implementation", "median ms", "p10-p90 ms", "GB/s", "of copy",
                "speedup", title=f"Hot operations: {settings['arch']} "
                f"({params['online'] / 1e6:.1f}M online parameters in {params['tensors']} "
                f"tensors), loss at {settings['batch_size']} x {settings['projector_dim']}")
    for row in result["ops"]:
        ops.add_row(row["op"], row["impl"], f"{row['median_ms']:.3f}",
                    f"{row['p10_ms']:.3f}-{row['p90_ms']:.3f}", f"{row['gb_per_s']:.1f}",
                    f"{100 * row['share_of_copy']:.0f}%", f"{row['speedup']:.2f}x")
    console.print(ops)
    steps = Table("kernels", "compiled", "ms/step", "images/s", "MFU (bf16)", "peak memory",
                  title=f"Training step: {settings['image_size']} px, batch "
                  f"{settings['batch_size']}, {settings['precision']}, "
                  f"{result['gflop_per_image']:.1f} GFLOP per image")
    for row in result["steps"]:
        steps.add_row(row["kernels"], "yes" if row["compile"] else "no",
                      f"{row['ms_per_step']:.1f}", f"{row['images_per_s']:.0f}",
                      f"{100 * row['mfu_bf16']:.1f}%" if row["mfu_bf16"] else "-",
                      f"{row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] else "-")
    console.print(steps)
    if result["data_images_per_s"] is not None:
        console.print(f"Data pipeline on {settings['data']}: "
                      f"{result['data_images_per_s']:.0f} images/s (two views each).")
    for line in result["not_measured"]:
        console.print(f"Not measured: {line}")
