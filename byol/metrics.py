"""Metrics sinks: one JSON object per line (metrics.jsonl) and TensorBoard event files."""

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class MetricsLog:
    """Appends step records to `<run>/metrics.jsonl` and `<run>/tensorboard/`."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self._file = open(self.path, "a", encoding="utf-8")
        self._tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        """One record: must hold an integer "step"; every other number is plotted."""
        self._file.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                self._tensorboard.add_scalar(f"pretrain/{name}", value, record["step"])

    def flush(self) -> None:
        self._file.flush()
        self._tensorboard.flush()

    def close(self) -> None:
        self._file.close()
        self._tensorboard.close()
