"""Where benchmark results go; each records the environment of byol.profiling beside its
numbers."""

import datetime
import json
from pathlib import Path

from byol.profiling.environment import bf16_peak, environment  # noqa: F401  (re-exported)

RESULTS = Path(__file__).parent / "results"


def save_result(name: str, result: dict) -> Path:
    """Write `result` as benchmarks/results/<name>-<date>.json and return the path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{datetime.date.today():%Y%m%d}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
