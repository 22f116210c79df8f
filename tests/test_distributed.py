"""Several processes: torchrun runs on the CPU with the gloo backend, and gloo groups of spawned
processes for the collectives themselves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import typer

from byol import distributed
from byol.errors import UserError
from byol.eval.linear import LinearSettings, LinearTrainer
from byolctl.errors import exits_cleanly
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
    result = _torchrun(2, out, {**SETTINGS, "batch_size": 4})
    (out / "stderr.txt").write_text(result.stderr)
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
def test_two_processes_use_no_option_their_pytorch_warns_about(two_process_run):
    assert "Warning" not in (two_process_run / "stderr.txt").read_text()


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


def _in_process_group(rank: int, world_size: int, port: int, work, out: Path) -> None:
    """Run by torch.multiprocessing.spawn: join a gloo group, save work(rank, world_size)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(work(rank, world_size), out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run_processes(world_size: int, port: int, work, out: Path) -> list:
    out.mkdir(exist_ok=True)
    mp.spawn(_in_process_group, args=(world_size, port, work, out), nprocs=world_size)
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]


WHOLE = torch.arange(7 * 2, dtype=torch.float32).view(7, 2)  # 7 rows: shares of 3, 2 and 2


def _gather_shares(rank: int, world_size: int) -> list[torch.Tensor]:
    """The shares gathered at once, and two rows of each at a time."""
    share = WHOLE[rank::world_size]
    return [distributed.gather_rows(share), distributed.gather_rows(share, rows_per_step=2)]


def test_rows_dealt_out_to_processes_are_gathered_whole_and_in_order(tmp_path):
    for at_once, piece_by_piece in _run_processes(3, 29631, _gather_shares, tmp_path):
        assert torch.equal(at_once, WHOLE)
        assert torch.equal(piece_by_piece, WHOLE)


FEATURES = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _linear_steps(rank: int, world_size: int) -> torch.Tensor:
    """Two classifier steps, each process on its half of every batch."""
    settings = LinearSettings(epochs=1, batch_size=len(FEATURES) // world_size)
    trainer = LinearTrainer(5, 3, settings, 2, torch.device("cpu"), processes=world_size)
    for _ in range(2):
        trainer.step(FEATURES[rank::world_size], LABELS[rank::world_size])
    return trainer.classifier.weight.detach()


def test_processes_training_the_linear_classifier_take_the_steps_of_one_whole_batch(tmp_path):
    (one,) = _run_processes(1, 29632, _linear_steps, tmp_path / "one")
    two = _run_processes(2, 29633, _linear_steps, tmp_path / "two")
    assert torch.equal(two[0], two[1])
    torch.testing.assert_close(two[0], one)


def _join_alone(store: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)


def _refuse() -> None:
    raise UserError("Refused.")


def test_a_command_leaves_its_process_group_when_it_finishes_but_not_when_it_fails(tmp_path):
    _join_alone(tmp_path / "finishes")
    exits_cleanly(lambda: None)()
    assert not dist.is_initialized()
    _join_alone(tmp_path / "fails")
    try:
        with pytest.raises(typer.Exit):
            exits_cleanly(_refuse)()
        assert dist.is_initialized()  # other ranks may still wait on it
    finally:
        distributed.leave()
    assert not dist.is_initialized()
