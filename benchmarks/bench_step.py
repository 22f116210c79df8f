"""Whole BYOL training steps per second on random data, with model-FLOPs utilization.

    python benchmarks/bench_step.py --arch resnet50 --image-size 224 --batch-size 256
    python benchmarks/bench_step.py --arch resnet18 --image-size 16 --batch-size 64 --device cpu

Times `Trainer.train_step` (views already on the device) after warmup, synchronizing the GPU
before reading the clock (see `byol.profiling.step`); writes the result, with the verdicts of
the whole-step targets that apply to it (targets.py), to benchmarks/results/.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import bf16_peak, environment, save_result  # noqa: E402
from targets import Verdict, describe, verdicts  # noqa: E402

from byol.config import PretrainConfig  # noqa: E402
from byol.presets import resolve_config  # noqa: E402
from byol.profiling.step import flops_per_image, time_steps  # noqa: E402
from byol.runtime import runtime_defaults  # noqa: E402


def step_config(settings: dict, warmup: int, steps: int) -> PretrainConfig:
    """The config of a timed run: `settings` (flat config fields: arch, image_size,
    batch_size, kernels, device, precision, compile, ...) on random data, without the probe
    and the kNN monitor, the small stem up to 64 px, and this machine's defaults for the rest."""
    overrides = {"data": "random", "steps": warmup + steps,
                 "small_stem": settings["image_size"] <= 64, "probe": False, "knn_every": 0,
                 **settings}
    return resolve_config(None, {**runtime_defaults(overrides), **overrides})


def measure(config: PretrainConfig, warmup: int, steps: int) -> dict:
    """Time `steps` training steps of `config` (from `step_config`) after `warmup`: the result,
    with model-FLOPs utilization and the verdicts of the whole-step targets that apply."""
    timing = time_steps(config, warmup, steps)
    image_flops = flops_per_image(config.model, config.image_size)
    device = torch.device(config.device)
    peak = bf16_peak(device)
    result = {
        "benchmark": "whole training step",
        **environment(device),
        "arch": config.model.arch, "image_size": config.image_size,
        "batch_size": config.batch_size, "precision": config.precision, "timed_steps": steps,
        **dataclasses.asdict(timing),
        "gflop_per_image": image_flops / 1e9,
        "mfu_bf16": timing.images_per_s * image_flops / peak if peak else None,
    }
    result["verdicts"] = [dataclasses.asdict(verdict) for verdict in verdicts(result)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--kernels", choices=["fused", "eager"], help="default: fused on a GPU")
    parser.add_argument("--device", choices=["cuda", "cpu"])
    parser.add_argument("--precision", choices=["bf16", "fp32"])
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    args = parser.parse_args()

    settings = {"arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size}
    settings.update({k: v for k, v in {"device": args.device, "precision": args.precision,
                                       "compile": args.compile, "kernels": args.kernels}.items()
                     if v is not None})
    config = step_config(settings, args.warmup, args.steps)
    result = measure(config, args.warmup, args.steps)
    slug = f"step-{args.arch}-{args.image_size}px-{config.kernels}-{config.device}"
    path = save_result(slug, result)
    for key, value in result.items():
        if key != "verdicts":
            print(f"{key:>18}: {value}")
    for verdict in result["verdicts"]:
        print(describe(Verdict(**verdict)))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
