"""Where benchmark results go; each records the environment of byol.profiling beside its
numbers. And a wall-clock timer for training steps that are not byolctl's (the peers')."""

import datetime
import gc
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from byol.profiling.environment import bf16_peak, environment  # noqa: F401  (re-exported)
from byol.profiling.timing import synchronize

RESULTS = Path(__file__).parent / "results"
# A folder that replaces RESULTS for every save_result of a process: gpu_suite.py sets it for
# the benchmark scripts it runs, so that a test's run writes into its own folder.
RESULTS_VARIABLE = "BYOL_BENCHMARK_RESULTS"


def results_folder() -> Path:
    """RESULTS, or the folder that $BYOL_BENCHMARK_RESULTS names."""
    return Path(os.environ.get(RESULTS_VARIABLE) or RESULTS)


def result_path(name: str, folder: Path | None = None, suffix: str = ".json") -> Path:
    """<folder>/<name>-<date><suffix>, the folder made; `folder` defaults to
    `results_folder()`."""
    folder = folder or results_folder()
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}-{datetime.date.today():%Y%m%d}{suffix}"


def save_result(name: str, result: dict, folder: Path | None = None) -> Path:
    """Write `result` as <folder>/<name>-<date>.json (see `result_path`); returns the path."""
    path = result_path(name, folder)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def time_loop(step: Callable[[], object], images_per_step: int, warmup: int, steps: int,
              device: torch.device) -> dict:
    """Wall-clock time of `steps` calls of `step` after `warmup` untimed ones, the device
    synchronized before each reading of the clock, as `byol.profiling.step.time_steps` times
    byolctl's `Trainer.train_step`: ms_per_step, images_per_s and (on a GPU) peak_memory_gib."""
    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"ms_per_step": 1000 * seconds / steps,
            "images_per_s": steps * images_per_step / seconds, "peak_memory_gib": peak}


def release_memory(device: torch.device) -> None:
    """Give back what the last measurement's dropped tensors held, so that the next one's
    peak memory and speed are its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
