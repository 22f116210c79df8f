"""Per-step schedules, precomputed as arrays with one value per optimizer step."""

import math

import torch
from torch import Tensor


def learning_rates(peak: float, warmup_steps: int, total_steps: int) -> Tensor:
    """(total_steps,) fp64: linear warmup from 0 to `peak`, then cosine decay to 0.

    Step k of the warmup gets peak * k / warmup_steps; after it, step k gets
    peak * (1 + cos(pi * (k - warmup) / (total - warmup))) / 2.
    """
    warmup_steps = min(warmup_steps, total_steps)
    steps = torch.arange(total_steps, dtype=torch.float64)
    warmup = peak * steps / max(warmup_steps, 1)
    progress = (steps - warmup_steps) / max(total_steps - warmup_steps, 1)
    cosine = peak * 0.5 * (1.0 + torch.cos(math.pi * progress))
    return torch.where(steps < warmup_steps, warmup, cosine)


def target_ema_rate(step: int, total_steps: int, tau_base: float) -> float:
    """tau at `step`: 1 - (1 - tau_base) * (cos(pi * step / total) + 1) / 2.

    tau_base at step 0, rising to exactly 1 at step == total_steps.
    """
    return 1.0 - (1.0 - tau_base) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0


def target_ema_rates(tau_base: float, total_steps: int) -> Tensor:
    """(total_steps,) fp64: `target_ema_rate` for steps 0 .. total_steps - 1."""
    return torch.tensor(
        [target_ema_rate(k, total_steps, tau_base) for k in range(total_steps)],
        dtype=torch.float64,
    )
