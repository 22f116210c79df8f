"""What every measurement records beside its numbers: device, versions, commit and date."""

import datetime
import importlib
import platform
import subprocess
from pathlib import Path

import torch

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets, for MFU.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def bf16_peak(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, if known."""
    name = device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def environment(device: torch.device) -> dict:
    """Device, library versions, git commit (when run from a checkout) and UTC date."""
    versions = {}
    for name, module in (("torchvision", "torchvision"), ("triton", "triton"),
                         ("nvidia-dali", "nvidia.dali")):
        try:
            versions[name] = importlib.import_module(module).__version__
        except ImportError:
            versions[name] = None
    # "-dirty" marks numbers measured on a tree that differs from its commit.
    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"],
                            capture_output=True, text=True, check=False,
                            cwd=Path(__file__).parent).stdout.strip()
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        **versions,
        "commit": commit or "unknown",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
