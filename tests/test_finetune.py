"""Semi-supervised fine-tuning: the labeled subsets and the trainer.

    pytest tests/test_finetune.py -q
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from byol.config import ModelConfig
from byol.data.demo_images import CLASSES as DEMO_CLASSES
from byol.data.labeled import Split
from byol.errors import UserError
from byol.eval.encoder import load_encoder
from byol.eval.finetune import FinetuneSettings, FinetuneTrainer, finetune
from byol.eval.linear import LinearSettings, train_on_images
from byol.eval.subsets import choose_labeled, describe, take
from byol.models import create_encoder
from byolctl.cli import app

runner = CliRunner()

CLASSES = ["cat", "dog", "fox"]


def folder_split(per_class=(40, 30, 20)) -> Split:
    files, labels = [], []
    for label, (name, count) in enumerate(zip(CLASSES, per_class)):
        files += [f"/data/train/{name}/{name}_{i:03d}.JPEG" for i in range(count)]
        labels += [label] * count
    return Split("train", CLASSES, files=files, labels=labels)


def class_counts(split: Split, chosen: np.ndarray) -> list[int]:
    return np.bincount(np.asarray(split.labels)[chosen], minlength=len(split.classes)).tolist()


def test_a_percentage_is_drawn_from_every_class_alike():
    split = folder_split()
    chosen = choose_labeled(split, "10%", seed=0)
    assert class_counts(split, chosen) == [4, 3, 2]
    assert list(chosen) == sorted(set(chosen))  # in the split's order, each once


def test_images_per_class_and_the_draw_depend_on_the_seed_only():
    split = folder_split()
    first = choose_labeled(split, "5", seed=0)
    assert class_counts(split, first) == [5, 5, 5]
    assert np.array_equal(first, choose_labeled(split, "5", seed=0))
    assert not np.array_equal(first, choose_labeled(split, "5", seed=1))


def test_a_list_file_selects_by_name_or_class_and_name(tmp_path):
    split = folder_split()
    listing = tmp_path / "subset.txt"
    listing.write_text("cat_003.JPEG\n\n  dog/dog_001.JPEG \nfox_019.JPEG\n")
    chosen = choose_labeled(split, str(listing), seed=0)
    assert [split.files[i].rsplit("/", 1)[1] for i in chosen] == [
        "cat_003.JPEG", "dog_001.JPEG", "fox_019.JPEG"]


def test_the_written_list_reads_back_as_the_same_subset(tmp_path):
    split = folder_split()
    chosen = choose_labeled(split, "20%", seed=3)
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(describe(split, chosen)) + "\n")
    assert np.array_equal(choose_labeled(split, str(listing), seed=99), chosen)
    subset = take(split, chosen)
    assert len(subset) == len(chosen) and subset.classes == CLASSES


@pytest.mark.parametrize(("labels", "message"), [
    ("1%", "leaves 3 of the 3 classes without images"),
    ("0", "leaves 3 of the 3 classes"),
    ("25", "class 'fox' has only 20 images"),
    ("150%", "at most 100%"),
    ("ten", "a percentage such as 1% or 10%"),
])
def test_subsets_no_run_can_use_are_refused(labels, message):
    with pytest.raises(UserError, match=message):
        choose_labeled(folder_split(), labels, seed=0)


@pytest.mark.parametrize(("lines", "message"), [
    ("cat_000.JPEG\nwolf_1.JPEG\nwolf_2.JPEG\n", "2 of the 3 images .* are not in the train "
                                                  "split \\(wolf_1.JPEG, wolf_2.JPEG\\)"),
    ("cat_000.JPEG\ndog_000.JPEG\ncat_000.JPEG\n",
     "lists images more than once \\(cat_000.JPEG\\)"),
    ("cat_000.JPEG\ndog_000.JPEG\n", "leaves 1 of the 3 classes without images .*'fox'"),
])
def test_list_files_with_unknown_repeated_or_too_few_names_are_refused(tmp_path, lines,
                                                                        message):
    listing = tmp_path / "subset.txt"
    listing.write_text(lines)
    with pytest.raises(UserError, match=message):
        choose_labeled(folder_split(), str(listing), seed=0)


def test_a_name_in_two_classes_must_be_written_with_its_class(tmp_path):
    split = Split("train", ["a", "b"], files=["/d/a/x.jpg", "/d/b/x.jpg"], labels=[0, 1])
    listing = tmp_path / "subset.txt"
    listing.write_text("x.jpg\n")
    with pytest.raises(UserError, match="class/name"):
        choose_labeled(split, str(listing), seed=0)
    listing.write_text("a/x.jpg\nb/x.jpg\n")
    assert list(choose_labeled(split, str(listing), seed=0)) == [0, 1]


# ---------------------------------------------------------------- training


def separable_batches(steps: int = 6, size: int = 16):
    """Dark images are class 0 and bright ones class 1: a task any encoder can learn."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(steps):
        labels = torch.randint(0, 2, (size,), generator=generator)
        images = torch.rand(size, 3, 8, 8, generator=generator) * 0.2
        images += labels.view(-1, 1, 1, 1) * 0.8
        batches.append((images, labels))
    return batches


def tiny_encoder():
    torch.manual_seed(0)
    return create_encoder(ModelConfig(arch="resnet18", small_stem=True))


def trainer_for(encoder, dim, epochs=4):
    settings = FinetuneSettings(epochs=epochs, batch_size=16, lr=0.5)
    return FinetuneTrainer(encoder, dim, 2, settings, steps_per_epoch=6,
                           device=torch.device("cpu"))


def accuracy(trainer, batches) -> float:
    trainer.network.eval()
    with torch.no_grad():
        right = sum((trainer.network(x).argmax(1) == y).sum().item() for x, y in batches)
    return right / sum(len(y) for _, y in batches)


def test_fine_tuning_trains_the_encoder_and_separates_an_easy_task():
    encoder, dim = tiny_encoder()
    before = copy.deepcopy(encoder.state_dict())
    trainer = trainer_for(encoder, dim)
    finetune(trainer, separable_batches(), epochs=4)
    changed = [name for name, value in encoder.state_dict().items()
               if not torch.equal(value, before[name])]
    assert "conv1.weight" in changed and "layer4.1.bn2.running_mean" in changed
    assert accuracy(trainer, separable_batches()) >= 0.95


def test_linear_evaluation_leaves_the_encoder_as_it_was():
    encoder, dim = tiny_encoder()
    encoder.requires_grad_(False)
    before = copy.deepcopy(encoder.state_dict())
    train_on_images(encoder, separable_batches(2), 32, dim, 2,
                    LinearSettings(epochs=1, batch_size=16))
    assert all(torch.equal(value, before[name]) for name, value in encoder.state_dict().items())


def test_a_resumed_fine_tuning_ends_where_an_uninterrupted_one_does():
    batches = separable_batches(3)
    encoder, dim = tiny_encoder()
    whole = trainer_for(encoder, dim, epochs=2)
    states = []
    finetune(whole, batches, epochs=2, on_state=lambda s: states.append(copy.deepcopy(s)))

    encoder, dim = tiny_encoder()
    resumed = trainer_for(encoder, dim, epochs=2)
    finetune(resumed, batches, epochs=2, state=states[0])
    for name, value in whole.network.state_dict().items():
        assert torch.equal(value, resumed.network.state_dict()[name]), name
    assert states[-1]["epoch"] == 2


def test_the_learning_rate_follows_the_global_batch_and_a_cosine_to_zero():
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(4, 4))
    settings = FinetuneSettings(epochs=1, batch_size=64, lr=0.1)
    trainer = FinetuneTrainer(encoder, 4, 2, settings, steps_per_epoch=2,
                              device=torch.device("cpu"))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    batch = (torch.randn(4, 4), torch.tensor([0, 1, 0, 1]))
    trainer.step(*batch)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0125)
    trainer.step(*batch)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)


# ---------------------------------------------------------------- the command


FAST = ["--epochs", "2", "--batch-size", "16", "--workers", "1", "--device", "cpu"]


def test_fine_tuning_writes_its_subset_result_and_network(demo_checkpoint, tmp_path):
    json_file, saved = tmp_path / "result.json", tmp_path / "tuned.safetensors"
    done = runner.invoke(app, ["eval", "finetune", "--checkpoint", str(demo_checkpoint),
                               "--labels", "2%", *FAST, "--json", str(json_file),
                               "--save", str(saved)])
    assert done.exit_code == 0, done.output
    result = json.loads(json_file.read_text())
    assert (result["evaluation"], result["labels"], result["labeled_images"]) == (
        "finetune", "2%", 200)
    listed = Path(result["labeled_images_file"])
    assert listed.parent == demo_checkpoint.parent / "finetune-2pct-seed0"
    assert len(listed.read_text().splitlines()) == 200
    assert json.loads((listed.parent / "result.json").read_text()) == result
    assert not (listed.parent / "state.pt").exists()
    recorded = (demo_checkpoint.parent / "evaluations.jsonl").read_text().splitlines()
    assert json.loads(recorded[-1]) == result

    # The saved network is a torchvision ResNet with its classifier, and its encoder moved.
    model = torchvision.models.resnet18(num_classes=len(DEMO_CLASSES))
    model.load_state_dict(load_file(saved))
    pretrained = load_encoder(demo_checkpoint).encoder.state_dict()
    assert not torch.equal(model.conv1.weight, pretrained["conv1.weight"])
    knn = runner.invoke(app, ["eval", "knn", "--checkpoint", str(saved), "--workers", "1",
                              "--device", "cpu"])
    assert knn.exit_code == 0, knn.output


def test_an_interrupted_fine_tuning_resumes_after_its_last_finished_epoch(demo_checkpoint,
                                                                           tmp_path):
    out = tmp_path / "ft"
    command = ["eval", "finetune", "--checkpoint", str(demo_checkpoint), "--labels", "4",
               "--out", str(out), *FAST]
    step, steps = FinetuneTrainer.step, []

    def interrupted_in_the_second_epoch(self, images, labels):
        steps.append(1)
        if len(steps) == 4:  # 40 images, batches of 16: 3 steps an epoch
            raise KeyboardInterrupt
        return step(self, images, labels)

    with mock.patch.object(FinetuneTrainer, "step", interrupted_in_the_second_epoch):
        stopped = runner.invoke(app, command)
    assert stopped.exit_code == 1 and "--resume continues" in " ".join(stopped.output.split())
    assert torch.load(out / "state.pt", weights_only=True)["epoch"] == 1

    again = runner.invoke(app, command)
    assert again.exit_code == 2 and "holds an earlier fine-tuning" in again.output
    other = runner.invoke(app, [*command, "--lr", "0.2", "--resume"])
    assert other.exit_code == 2 and "had another lr" in " ".join(other.output.split())
    json_file = tmp_path / "resumed.json"
    resumed = runner.invoke(app, [*command, "--resume", "--json", str(json_file)])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(json_file.read_text())["resumed_from_epoch"] == 1
    assert not (out / "state.pt").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--labels", "ten"], "a percentage such as 1% or 10%"),
    (["--labels", "0.01%"], "leaves 10 of the 10 classes without images"),
    (["--labels", "1%", "--lr", "nan"], "--lr must be"),
    (["--labels", "1%", "--batch-size", "1"], "--batch-size must be"),
])
def test_bad_fine_tuning_input_is_one_line_and_exit_2(demo_checkpoint, tmp_path, flags, message):
    out = tmp_path / "ft"
    result = runner.invoke(app, ["eval", "finetune", "--checkpoint", str(demo_checkpoint),
                                 "--out", str(out), "--device", "cpu", *flags])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (out / "result.json").exists()


def test_an_existing_save_file_is_refused_before_any_training(demo_checkpoint, tmp_path):
    saved = tmp_path / "tuned.pt"
    saved.write_bytes(b"keep me")
    with mock.patch.object(FinetuneTrainer, "step", side_effect=AssertionError("trained")):
        result = runner.invoke(app, ["eval", "finetune", "--checkpoint", str(demo_checkpoint),
                                     "--save", str(saved), "--device", "cpu"])
    assert result.exit_code == 2 and "already exists" in result.output
    assert saved.read_bytes() == b"keep me"


def test_an_encoder_outside_a_run_folder_needs_out(demo_checkpoint, tmp_path):
    export = tmp_path / "encoder.pt"
    assert runner.invoke(app, ["export", "--checkpoint", str(demo_checkpoint), "--out",
                               str(export)]).exit_code == 0
    result = runner.invoke(app, ["eval", "finetune", "--checkpoint", str(export), "--arch",
                                 "resnet18", "--device", "cpu"])
    assert result.exit_code == 2 and "--out" in result.output


@pytest.mark.slow
def test_under_torchrun_two_processes_fine_tune_one_network(demo_checkpoint, cifar_eval_folder,
                                                            tmp_path):
    json_file = tmp_path / "ft.json"
    together = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", "29641", "-m", "byolctl", "eval", "finetune", "--checkpoint",
         str(demo_checkpoint), "--data", str(cifar_eval_folder), "--labels", "4", "--epochs",
         "2", "--batch-size", "4", "--out", str(tmp_path / "ft"), "--workers", "1",
         "--device", "cpu", "--json", str(json_file)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert together.returncode == 0, together.stderr[-3000:]
    assert together.stdout.count("top-1") == 1  # rank 1 is quiet
    result = json.loads(json_file.read_text())
    assert (result["processes"], result["labeled_images"]) == (2, 12)
    assert len((tmp_path / "ft" / "labeled-images.txt").read_text().splitlines()) == 12
