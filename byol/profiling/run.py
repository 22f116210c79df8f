"""`byolctl profile`: the hot operations per implementation, whole steps with eager and fused
kernels with and without torch.compile, and optionally the data pipeline, in one result.

    byolctl profile --arch resnet50 --batch-size 256 --image-size 224 --precision bf16

Timings only: what cannot be measured on this machine (fused kernels without a GPU, ...) is
listed in the result's `not_measured`; the performance targets and their verdicts on a result
are in benchmarks/targets.py.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from byol.config import AT_LEAST_0, AT_LEAST_1, IMAGE_SIDE, TRAINING_BATCH, setting
from byol.presets import resolve_config
from byol.profiling.environment import bf16_peak, environment
from byol.profiling.ops import byol_shapes, implementations, rows_as_dicts, time_ops
from byol.profiling.step import flops_per_image, time_data, time_steps


@dataclass
class ProfileSettings:
    """What to profile."""

    arch: str = setting("resnet50", "Encoder architecture (torchvision ResNet).")
    projector_hidden: int = setting(4096, "Hidden width of the projector and predictor.",
                                    allowed=AT_LEAST_1)
    projector_dim: int = setting(256, "Width of the projections, and so of the loss's inputs.",
                                 allowed=AT_LEAST_1)
    batch_size: int = setting(256, "Images per step.", allowed=TRAINING_BATCH)
    image_size: int = setting(224, "View side in pixels.", allowed=IMAGE_SIDE)
    precision: str = setting("bf16", "bf16 autocast or fp32.")
    steps: int = setting(20, "Timed training steps per variant (after the untimed warmup).",
                         allowed=AT_LEAST_1)
    warmup: int = setting(5, "Untimed training steps per variant first (they compile).",
                          allowed=AT_LEAST_0)
    device: str = setting("cuda", "Where to run.")
    compile: bool = setting(True, "Include torch.compile variants (compiled foreach, compiled "
                            "loss, compiled steps).")
    data: str | None = setting(None, "Also time the two-view DALI pipeline on this image "
                               "folder or shards.")
    workers: int = setting(8, "DALI CPU threads.", allowed=AT_LEAST_0)


# Without a GPU the defaults shrink to what a CPU times in about a minute.
CPU_SETTINGS = {"arch": "resnet18", "batch_size": 32, "image_size": 32, "steps": 3,
                "warmup": 1, "precision": "fp32", "compile": False}


def profile(settings: ProfileSettings,
            on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every measurement; returns a JSON-ready result. `on_stage` hears what runs next."""
    def stage(text: str) -> None:
        if on_stage is not None:
            on_stage(text)

    device = torch.device(settings.device)
    fused = device.type == "cuda"
    not_measured = []
    if not fused:
        not_measured.append("fused kernels: they need a CUDA GPU")
    if not settings.compile:
        not_measured.append("torch.compile variants: off (the CPU default, or --no-compile; "
                            "--compile turns them on)")
    loss_dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float32
    shapes = byol_shapes(settings.arch, settings.projector_hidden, settings.projector_dim)

    stage("the hot operations")
    loss_shape = (settings.batch_size, settings.projector_dim)
    impls = implementations(shapes[0], device, fused=fused, compiled=settings.compile)
    copy_gb_per_s, op_rows = time_ops(impls, shapes, loss_shape, loss_dtype, device)
    base = {"data": "random", "arch": settings.arch, "image_size": settings.image_size,
            "projector_hidden": settings.projector_hidden,
            "projector_dim": settings.projector_dim,
            "batch_size": settings.batch_size, "precision": settings.precision,
            "device": settings.device, "steps": settings.warmup + settings.steps,
            "small_stem": settings.image_size <= 64, "workers": settings.workers,
            "probe": False, "knn_every": 0}
    steps = []
    for kernels in ("eager", "fused") if fused else ("eager",):
        for compiled in (False, True) if settings.compile else (False,):
            stage(f"training steps: {kernels} kernels, "
                  f"{'compiled' if compiled else 'not compiled'}")
            config = resolve_config(None, {**base, "kernels": kernels, "compile": compiled})
            steps.append(dataclasses.asdict(time_steps(config, settings.warmup,
                                                       settings.steps)))
    flops = flops_per_image(config.model, settings.image_size)
    peak = bf16_peak(device)
    for row in steps:
        row["mfu_bf16"] = row["images_per_s"] * flops / peak if peak else None

    data_images_per_s = None
    if settings.data:
        stage(f"the data pipeline on {settings.data}")
        data_images_per_s = time_data(resolve_config(None, {**base, "data": settings.data}),
                                      warmup=3, batches=max(5, settings.steps))
    return {
        "environment": environment(device),
        "settings": dataclasses.asdict(settings),
        "parameters": {"online": sum(s.numel() for s in shapes[0]),
                       "target": sum(s.numel() for s in shapes[1]),
                       "tensors": len(shapes[0])},
        "copy_gb_per_s": copy_gb_per_s,
        "ops": rows_as_dicts(op_rows),
        "steps": steps,
        "gflop_per_image": flops / 1e9,
        "data_images_per_s": data_images_per_s,
        "not_measured": not_measured,
    }
