"""The linear probe and the kNN monitor during pretraining."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from byol.errors import UserError
from byol.monitors import LinearProbe, held_out_data
from byol.pretrain import prepare_run
from byolctl.cli import app
from tests.conftest import run_pretraining

runner = CliRunner()


def _records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").open()]


def test_a_labeled_folder_gets_a_probe_every_step_and_knn_each_epoch(tiny, cifar_eval_folder):
    # 30 training images in batches of 8: 3 steps an epoch, so kNN at step 3 and at the end
    # (step 7), which stands in for the check due at step 6, one step before it.
    settings = {**tiny, "data": str(cifar_eval_folder / "train"), "steps": 7}
    del settings["knn_every"]
    trainer, summary, _ = run_pretraining(settings)
    records = _records("run")
    assert all(0 <= r["probe_top1"] <= 100 and r["probe_loss"] > 0 for r in records)
    assert [r["step"] for r in records if "knn_top1" in r] == [3, 7]
    assert all(0 <= r["knn_top1"] <= r["knn_top5"] <= 100 for r in records if "knn_top1" in r)
    assert trainer.model.training  # back to training mode after the kNN check


def test_the_probe_does_not_change_byol_training(tiny):
    run_pretraining({**tiny, "probe": True}, out="with")
    run_pretraining({**tiny, "probe": False}, out="without")
    with_probe, without = _records("with"), _records("without")
    assert "probe_top1" in with_probe[0] and "probe_top1" not in without[0]
    assert [r["loss"] for r in with_probe] == [r["loss"] for r in without]


def test_monitors_need_labels_or_held_out_data(tiny):
    with pytest.raises(UserError, match="--probe needs labeled data"):
        prepare_run(None, {**tiny, "data": "random", "probe": True}, Path("a"), None)
    with pytest.raises(UserError, match="--knn-every needs held-out data"):
        prepare_run(None, {**tiny, "data": "random", "knn_every": 5}, Path("b"), None)
    with pytest.raises(UserError, match="--knn-data nowhere: expected a folder"):
        prepare_run(None, {**tiny, "knn_every": 5, "knn_data": "nowhere"}, Path("c"), None)
    with pytest.raises(UserError, match="knn_every must be 0 or more"):
        prepare_run(None, {**tiny, "knn_every": -1}, Path("d"), None)


def test_the_run_says_why_labeled_data_gets_no_knn_monitor(cifar_eval_folder, tmp_path):
    # Training images with labels, but no val/ or test/ beside their folder.
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "train").symlink_to(cifar_eval_folder / "train")
    result = runner.invoke(app, ["pretrain", "--data", str(tmp_path / "alone" / "train"),
                                 "--arch", "resnet18", "--image-size", "16", "--batch-size", "8",
                                 "--steps", "1", "--workers", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Monitors: linear probe, no kNN (no val/ or test/" in result.output


def test_held_out_data_found_beside_that_cannot_serve_turns_knn_off_saying_why(
        cifar_eval_folder, tmp_path):
    # An empty class folder in train/ only: the splits' classes differ.
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        for class_dir in (cifar_eval_folder / split).iterdir():
            (tmp_path / "data" / split / class_dir.name).symlink_to(class_dir)
    (tmp_path / "data" / "train" / "zz-empty").mkdir()
    flags = ["pretrain", "--data", str(tmp_path / "data" / "train"), "--arch", "resnet18",
             "--image-size", "16", "--batch-size", "8", "--steps", "1", "--workers", "1",
             "--device", "cpu"]
    result = runner.invoke(app, [*flags, "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    message = " ".join(result.output.split())
    assert "Monitors: linear probe, no kNN (" in message
    assert "have different class folders" in message and "--knn-data" in message
    # Asked for, the monitor's data must serve.
    result = runner.invoke(app, [*flags, "--out", str(tmp_path / "b"), "--knn-every", "1"])
    assert result.exit_code == 2 and "have different class folders" in result.output
    # A held-out split with the same classes and no readable image.
    (tmp_path / "data" / "train" / "zz-empty").rmdir()
    (tmp_path / "data" / "test").rename(tmp_path / "linked-test")
    for class_dir in (tmp_path / "data" / "train").iterdir():
        (tmp_path / "data" / "test" / class_dir.name).mkdir(parents=True)
        (tmp_path / "data" / "test" / class_dir.name / "empty.jpg").write_bytes(b"")
    result = runner.invoke(app, [*flags, "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    message = " ".join(result.output.split())
    assert "no kNN (" in message and "none of its images can be read" in message


@pytest.mark.slow
def test_under_torchrun_every_rank_stops_with_the_monitors_error(cifar_eval_folder, tmp_path):
    for split in ("train", "test"):
        (tmp_path / "data" / split).mkdir(parents=True)
        for class_dir in (cifar_eval_folder / split).iterdir():
            (tmp_path / "data" / split / class_dir.name).symlink_to(class_dir)
    (tmp_path / "data" / "train" / "zz-empty").mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-port", "29616", "-m", "byolctl", "pretrain",
               "--data", str(tmp_path / "data" / "train"), "--arch", "resnet18",
               "--image-size", "16", "--batch-size", "4", "--steps", "2", "--workers", "1",
               "--device", "cpu", "--knn-every", "1", "--out", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    # Rank 1 too stops with rank 0's one line, rather than failing in a collective.
    assert " ".join(result.stderr.split()).count("have different class folders") == 2


def test_held_out_data_is_found_beside_a_train_folder(cifar_eval_folder, tmp_path):
    assert held_out_data("demo") == "demo"
    assert held_out_data(str(cifar_eval_folder / "train")) == str(cifar_eval_folder)
    (tmp_path / "train").mkdir()
    assert held_out_data(str(tmp_path / "train")) is None
    assert held_out_data("random") is None


@pytest.mark.parametrize("scale", [0.01, 1.0, 100.0])
def test_the_probe_learns_separable_features_of_any_scale(scale):
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(10, 512, generator=generator)
    probe = LinearProbe(feature_dim=512, num_classes=10, seed=0)
    for _ in range(60):
        labels = torch.randint(0, 10, (64,), generator=generator)
        features = torch.relu(centers[labels] + 0.5 * torch.randn(64, 512, generator=generator))
        result = probe.step(scale * features, labels)
    assert result["probe_top1"] > 90 and result["probe_loss"] < 0.5


def _probe_batches(count: int, feature_dim: int = 32, classes: int = 3):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(16, feature_dim, generator=generator),
             torch.randint(0, classes, (16,), generator=generator)) for _ in range(count)]


def _same_state(a: dict, b: dict) -> bool:
    """Whether two (nested) state dicts hold equal values, tensors compared exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_a_probe_saved_in_an_older_layout_starts_anew():
    # Checkpoints before 3b1bf30 held a bare Linear (no standardization) trained with SGD.
    old = nn.Linear(32, 3)
    sgd = torch.optim.SGD(old.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    for features, labels in _probe_batches(2):
        sgd.zero_grad()
        F.cross_entropy(old(features), labels).backward()
        sgd.step()
    probe, fresh = (LinearProbe(feature_dim=32, num_classes=3, seed=0) for _ in range(2))
    probe.load_state_dict({"classifier": old.state_dict(), "optimizer": sgd.state_dict()})
    # Its fresh weights, and a fresh Adam: no SGD settings or momentum taken over.
    assert _same_state(probe.state_dict(), fresh.state_dict())
    assert probe.optimizer.state_dict()["state"] == {}
    for features, labels in _probe_batches(2):  # and it trains as a fresh probe does
        assert _same_state(probe.step(features, labels), fresh.step(features, labels))
    assert _same_state(probe.state_dict(), fresh.state_dict())


def test_a_probe_saved_in_this_layout_is_loaded_exactly():
    saved = LinearProbe(feature_dim=32, num_classes=3, seed=0)
    for features, labels in _probe_batches(3):
        saved.step(features, labels)
    probe = LinearProbe(feature_dim=32, num_classes=3, seed=1)  # other initial weights
    assert not _same_state(probe.state_dict(), saved.state_dict())
    probe.load_state_dict(copy.deepcopy(saved.state_dict()))  # as read from a checkpoint
    # The weights, the standardization's statistics, and Adam's moments and step count.
    assert _same_state(probe.state_dict(), saved.state_dict())
    assert probe.optimizer.state_dict()["state"][0]["exp_avg"].abs().sum() > 0
    for features, labels in _probe_batches(2):  # it goes on as the saved probe would have
        assert _same_state(probe.step(features, labels), saved.step(features, labels))
    assert _same_state(probe.state_dict(), saved.state_dict())
