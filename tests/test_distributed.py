"""Several processes with torchrun, on the CPU with the gloo backend."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, TINY

WORKER = REPO / "tests" / "ddp_worker.py"
# Random data: every process takes its slice of one global batch, so runs with the same
# global batch see the same images whatever the number of processes.
SETTINGS = {**TINY, "data": "random", "steps": 3, "probe": False, "checkpoint_every": 2}


def _torchrun(processes: int, out: Path, settings: dict, resume: str | None = None,
              port: int = 29611) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
               str(processes), "--master-port", str(port), str(WORKER), str(out),
               json.dumps(settings), *([resume] if resume else [])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _saved(out: Path, rank: int) -> dict:
    return torch.load(out / f"params-rank{rank}.pt", weights_only=True)


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").open()]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    _torchrun(2, out, {**SETTINGS, "batch_size": 4})
    return out


@pytest.mark.slow
def test_two_processes_train_with_identical_parameters_on_every_rank(two_process_run):
    rank0, rank1 = _saved(two_process_run, 0), _saved(two_process_run, 1)
    assert rank0["world_size"] == 2
    assert torch.equal(rank0["params"], rank1["params"])
    assert torch.equal(rank0["target"], rank1["target"])
    # Rank 0 alone logs: one record per step.
    assert [json.loads(line)["step"] for line in (two_process_run / "metrics.jsonl").open()] \
        == [1, 2, 3]


@pytest.mark.slow
def test_two_processes_match_one_process_of_the_same_global_batch(two_process_run, tmp_path):
    one = tmp_path / "one"
    _torchrun(1, one, {**SETTINGS, "batch_size": 8}, port=29612)
    # The same images and lr; BatchNorm differs (each of the 2 processes normalizes over its
    # own 4 images on the CPU; SyncBatchNorm on GPUs), hence the tolerance.
    assert _losses(two_process_run) == pytest.approx(_losses(one), rel=0.05)
    params_2, params_1 = _saved(two_process_run, 0)["params"], _saved(one, 0)["params"]
    assert (params_2 - params_1).norm() < 0.05 * params_1.norm()


@pytest.mark.slow
def test_a_checkpoint_written_by_two_processes_resumes_in_one(two_process_run, tmp_path):
    checkpoint = two_process_run / "checkpoints" / "step-0000002.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["data"]["world_size"] == 2 and len(state["data"]["ranks"]) == 2
    out = tmp_path / "continued"
    _torchrun(1, out, {}, resume=str(checkpoint), port=29613)
    # The run keeps its length in steps; the global batch is now 1 x 4 images.
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()] == [3]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 3
