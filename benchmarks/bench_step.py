"""Whole BYOL training steps per second on random data, with model-FLOPs utilization.

    python benchmarks/bench_step.py --arch resnet50 --image-size 224 --batch-size 256
    python benchmarks/bench_step.py --arch resnet18 --image-size 16 --batch-size 64 --device cpu

Times `Trainer.train_step` (views already on the device) after warmup, synchronizing the GPU
before reading the clock; writes the result to benchmarks/results/.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import bf16_peak, environment, save_result  # noqa: E402

from byol.config import ModelConfig  # noqa: E402
from byol.models import BYOL  # noqa: E402
from byol.presets import resolve_config  # noqa: E402
from byol.pretrain import runtime_defaults  # noqa: E402
from byol.trainer import Trainer  # noqa: E402


def flops_per_image(config: ModelConfig, image_size: int) -> int:
    """Model FLOPs of one BYOL image: two views, each through the online network (f, g, q)
    forward and backward (about 3x a forward) and the target network (f, g) forward.

    Counted on a fresh CPU copy: moving the trainer's model would detach its parameters from
    the optimizer's flat buffers."""
    views = torch.randn(2, 3, image_size, image_size)
    model = BYOL(config).eval()
    with FlopCounterMode(display=False) as online:
        model.predictor(model.online(views)[1])
    with FlopCounterMode(display=False) as target:
        model.target(views)
    per_view = 3 * online.get_total_flops() + target.get_total_flops()
    return 2 * per_view // len(views)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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

    overrides = {"data": "random", "arch": args.arch, "image_size": args.image_size,
                 "batch_size": args.batch_size,
                 "steps": args.warmup + args.steps,
                 "small_stem": args.image_size <= 64}
    overrides.update({k: v for k, v in {"device": args.device, "precision": args.precision,
                                        "compile": args.compile, "kernels": args.kernels}.items()
                      if v is not None})
    config = resolve_config(None, {**runtime_defaults(overrides), **overrides})
    trainer = Trainer(config, run_dir=Path("unused"))
    image_flops = flops_per_image(config.model, args.image_size)

    batches = iter(trainer.loader)
    trainer.model.train()
    for _ in range(args.warmup):
        trainer.train_step(next(batches))
    synchronize(trainer.device)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(next(batches))
    synchronize(trainer.device)
    seconds = time.perf_counter() - start

    images_per_s = args.steps * args.batch_size / seconds
    peak = bf16_peak(trainer.device)
    result = {
        "benchmark": "whole training step",
        **environment(trainer.device),
        "arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size,
        "precision": config.precision, "compile": config.compile, "kernels": config.kernels,
        "timed_steps": args.steps, "ms_per_step": 1000 * seconds / args.steps,
        "images_per_s": images_per_s,
        "gflop_per_image": image_flops / 1e9,
        "mfu_bf16": images_per_s * image_flops / peak if peak else None,
        "peak_memory_gib": (torch.cuda.max_memory_allocated(trainer.device) / 2**30
                            if trainer.device.type == "cuda" else None),
    }
    slug = f"step-{args.arch}-{args.image_size}px-{config.kernels}-{trainer.device.type}"
    path = save_result(slug, result)
    for key, value in result.items():
        print(f"{key:>18}: {value}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
