"""What every benchmark records beside its numbers: device, versions, commit and date."""

import datetime
import json
import platform
import subprocess
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' datasheets, for MFU.
BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def bf16_peak(device: torch.device) -> float | None:
    name = device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def environment(device: torch.device) -> dict:
    """Device, library versions, git commit and UTC date."""
    try:
        import torchvision
        import triton
        versions = {"torchvision": torchvision.__version__, "triton": triton.__version__}
    except ImportError:
        versions = {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip() or "unknown"
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        **versions,
        "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def save_result(name: str, result: dict) -> Path:
    """Write `result` as benchmarks/results/<name>-<date>.json and return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{datetime.date.today():%Y%m%d}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
