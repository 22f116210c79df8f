"""Timing GPU and CPU work: median and spread after warmup, and the copy bandwidth."""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    """Milliseconds per call: the median, and the 10th and 90th percentiles as the spread."""

    median_ms: float
    p10_ms: float
    p90_ms: float


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 20) -> Timing:
    """Time `fn`: with `triton.testing.do_bench` (CUDA events, L2 flushed) on a GPU; with the
    wall clock around each call, after one warmup call, on the CPU."""
    if device.type == "cuda":
        import triton.testing
        times = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="all")
    else:
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - start))
    if len(times) < 2:
        return Timing(times[0], times[0], times[0])
    deciles = statistics.quantiles(times, n=10)
    return Timing(statistics.median(times), deciles[0], deciles[-1])


def copy_bandwidth(numel: int, device: torch.device) -> float:
    """Measured GB/s of copying `numel` fp32 values within the device (read + write)."""
    source = torch.randn(numel, device=device)
    destination = torch.empty_like(source)
    timing = time_call(lambda: destination.copy_(source), device)
    return 2 * 4 * numel / timing.median_ms / 1e6
