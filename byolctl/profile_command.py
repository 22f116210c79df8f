"""`byolctl profile`: where the time goes, fused against eager, side by side."""

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from byol.models import ENCODERS
from byol.profiling.run import CPU_SETTINGS, ProfileSettings
from byolctl.options import (
    Arch,
    DeviceOpt,
    JsonOpt,
    PrecisionOpt,
    WorkersOpt,
    config_option,
    device_and_workers,
    given_settings,
    writable_output_file,
    write_json,
)
from byolctl.render import console
from byolctl.tables import identifier_column, print_table


def _profile_option(name: str, flags: str | None = None, **kwargs):
    """The option for a ProfileSettings field, with its smaller default on the CPU."""
    return config_option(ProfileSettings, name, flags, cpu_defaults=CPU_SETTINGS, **kwargs)


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
    arch: Annotated[Optional[Arch], _profile_option("arch", choices=ENCODERS)] = None,
    batch_size: Annotated[Optional[int], _profile_option("batch_size")] = None,
    image_size: Annotated[Optional[int], _profile_option("image_size")] = None,
    precision: PrecisionOpt = None,
    steps: Annotated[Optional[int], _profile_option("steps")] = None,
    device: DeviceOpt = None,
    compile: Annotated[Optional[bool], _profile_option(
        "compile", "--compile/--no-compile")] = None,
    data: Annotated[Optional[str], _profile_option("data")] = None,
    workers: WorkersOpt = None,
    json_file: JsonOpt = None,
    plot: PlotOpt = None,
):
    """Time the loss, EMA and LARS in each implementation, whole training steps with eager
    and fused kernels (compiled and not), and optionally the data pipeline."""
    from byol.profiling.run import profile as run_profile

    device, workers = device_and_workers(device, workers)
    on_gpu = device == "cuda"
    given = {**({} if on_gpu else CPU_SETTINGS), **{
        name: value for name, value in locals().items() if value is not None}}
    settings = given_settings(ProfileSettings, {**given, "device": device, "workers": workers})
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
    ops = Table(identifier_column("op"), identifier_column("implementation"), "median ms",
                "p10-p90 ms", "GB/s", "of copy", "speedup",
                title=f"Hot operations: {settings['arch']} "
                f"({params['online'] / 1e6:.1f}M online parameters in {params['tensors']} "
                f"tensors), loss at {settings['batch_size']} x {settings['projector_dim']}")
    for row in result["ops"]:
        ops.add_row(row["op"], row["impl"], f"{row['median_ms']:.3f}",
                    f"{row['p10_ms']:.3f}-{row['p90_ms']:.3f}", f"{row['gb_per_s']:.1f}",
                    f"{100 * row['share_of_copy']:.0f}%", f"{row['speedup']:.2f}x")
    print_table(ops)
    steps = Table(identifier_column("kernels"), "compiled", "ms/step", "images/s",
                  "MFU (bf16)", "peak memory",
                  title=f"Training step: {settings['image_size']} px, batch "
                  f"{settings['batch_size']}, {settings['precision']}, "
                  f"{result['gflop_per_image']:.1f} GFLOP per image")
    for row in result["steps"]:
        steps.add_row(row["kernels"], "yes" if row["compile"] else "no",
                      f"{row['ms_per_step']:.1f}", f"{row['images_per_s']:.0f}",
                      f"{100 * row['mfu_bf16']:.1f}%" if row["mfu_bf16"] else "-",
                      f"{row['peak_memory_gib']:.1f} GiB" if row["peak_memory_gib"] else "-")
    print_table(steps)
    if result["data_images_per_s"] is not None:
        console.print(f"Data pipeline on {settings['data']}: "
                      f"{result['data_images_per_s']:.0f} images/s (two views each).")
    for line in result["not_measured"]:
        console.print(f"Not measured: {line}")
