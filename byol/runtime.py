"""How a command runs on this machine: the device, precision, kernels, compilation and data
threads that suit it, and how a network is laid out and run there. Pretraining, evaluation and
profiling all follow these rules, so each exists once.

    runtime = runtime_defaults({})            # {"device": "cuda", "precision": "bf16", ...}
    model = to_runtime_layout(model, device, "bf16")
    with autocast(device, "bf16"):
        features = model(images)
"""

import contextlib
import os
from typing import Any

import torch
from torch import nn

from byol import ops
from byol.errors import UserError

MAX_DATA_THREADS = 8  # DALI's CPU threads: more than 8 gained nothing on one GPU's pipeline


def runtime_defaults(requested: dict[str, Any]) -> dict[str, Any]:
    """Device, kernels, precision, compilation and data threads that suit this machine.

    A GPU gets the fused kernels, bf16 autocast and torch.compile; the CPU gets the reference
    kernels, fp32 and eager execution. `requested` may name the device (`cuda` or `cpu`);
    UserError if it asks for a GPU that is not there.
    """
    cuda = torch.cuda.is_available()
    device = requested.get("device", "cuda" if cuda else "cpu")
    if device == "cuda" and not cuda:
        raise UserError("--device cuda needs a GPU and none is visible; use --device cpu.")
    on_gpu = device == "cuda"
    return {"device": device, "kernels": ops.default_backend(torch.device(device)),
            "precision": default_precision(device), "compile": on_gpu,
            "workers": min(MAX_DATA_THREADS, os.cpu_count() or 1)}


def default_precision(device: str) -> str:
    """bf16 on a GPU, fp32 on the CPU (see `runtime_defaults`)."""
    return "bf16" if device == "cuda" else "fp32"


def process_device(device: str, local_rank: int, several_processes: bool) -> torch.device:
    """The device of this process: under torchrun each process owns the GPU of its local
    rank."""
    if device == "cuda" and several_processes:
        return torch.device("cuda", local_rank)
    return torch.device(device)


def to_runtime_layout(module: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """`module` on `device`, in channels_last where that convolves fastest: cuDNN always, and
    oneDNN in bf16 (in fp32 at 16 px oneDNN ran 18% slower in it). The first convolution
    converts the images."""
    module = module.to(device)
    if device.type == "cuda" or precision == "bf16":
        module = module.to(memory_format=torch.channels_last)
    return module


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` for precision `bf16`, nothing for `fp32`."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
