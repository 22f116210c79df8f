"""Metrics sinks: one JSON object per line (metrics.jsonl) and TensorBoard event files."""

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from byol.checkpoint import atomic_write_text

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends step records to `<run>/metrics.jsonl` and `<run>/tensorboard/`.

    Opening it at `start_step` drops records of later steps: they were logged by a run that
    went on past its last checkpoint and are about to be computed again.
    """

    def __init__(self, run_dir: Path, start_step: int):
        self.path = run_dir / METRICS_FILE
        _keep_records_up_to(self.path, start_step)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                          purge_step=start_step + 1)

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


def _keep_records_up_to(path: Path, step: int) -> None:
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            pass  # a line torn by a crash mid-write
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(kept))
