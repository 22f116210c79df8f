"""Whole training steps and the data pipeline, in images per second."""

import gc
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from byol.build import build_trainer
from byol.config import ModelConfig, PretrainConfig
from byol.data import build_loader
from byol.models import BYOL
from byol.profiling.timing import synchronize


def flops_per_image(model: ModelConfig, image_size: int) -> int:
    """Model FLOPs of one BYOL image: two views, each through the online network (f, g, q)
    forward and backward (about 3x a forward) and the target network (f, g) forward.

    Counted on a fresh CPU model, so that no trainer's model is moved."""
    views = torch.randn(2, 3, image_size, image_size)
    byol = BYOL(model).eval()
    with FlopCounterMode(display=False) as online:
        byol.predictor(byol.online(views)[1])
    with FlopCounterMode(display=False) as target:
        byol.target(views)
    per_view = 3 * online.get_total_flops() + target.get_total_flops()
    return 2 * per_view // len(views)


@dataclass
class StepTiming:
    """Training steps timed on random data already on the device."""

    kernels: str
    compile: bool
    ms_per_step: float
    images_per_s: float
    peak_memory_gib: float | None  # on a GPU


def time_steps(config: PretrainConfig, warmup: int, steps: int) -> StepTiming:
    """Time `steps` calls of `Trainer.train_step` after `warmup` untimed ones (which include
    compilation). `config.data` should be `random`, so data costs nothing."""
    trainer = build_trainer(config, run_dir=Path("unused"))
    device = trainer.device
    batches = iter(trainer.loader)
    trainer.model.train()
    for _ in range(warmup):
        trainer.train_step(next(batches))
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(next(batches))
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del trainer, batches
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return StepTiming(config.kernels, config.compile, 1000 * seconds / steps,
                      steps * config.batch_size / seconds, peak)


def time_data(config: PretrainConfig, warmup: int, batches: int) -> float:
    """Images per second of the two-view pipeline for `config.data`, delivered to the device
    (each image gives two views)."""
    device = torch.device(config.device)
    loader = build_loader(config, device)
    iterator = iter(loader)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    synchronize(device)
    return batches * config.batch_size / (time.perf_counter() - start)
