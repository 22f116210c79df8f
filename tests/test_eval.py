"""Evaluation: features, kNN, the linear classifier, export, and the commands end to end."""

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from byol.config import ModelConfig, PretrainConfig
from byol.data.labeled import LabeledLoader, eval_splits
from byol.errors import UserError
from byol.eval.encoder import backbone_state_dict, load_encoder, torchvision_builder
from byol.eval.features import extract_features
from byol.eval.knn import knn_scores, topk_accuracy
from byol.eval.linear import (
    LinearSettings,
    LinearTrainer,
    classify,
    train_on_features,
    train_on_images,
)
from byol.models import create_encoder
from byolctl.cli import app
from tests.conftest import run_pretraining

runner = CliRunner()
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A 2-step pretraining run on the demo data (ImageNet stem, so torchvision loads it)."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    run_pretraining({"arch": "resnet18", "image_size": 16, "batch_size": 16,
                     "projector_hidden": 64, "projector_dim": 32, "steps": 2, "workers": 2,
                     "device": "cpu", "small_stem": False, "knn_every": 0}, out=out)
    return out / "last.pt"


# ----------------------------------------------------------------------------- features

def test_features_cover_every_image_with_batchnorm_in_eval_mode(cifar_eval_folder):
    encoder, feature_dim = create_encoder(ModelConfig(arch="resnet18", small_stem=True))
    encoder.train()
    stats_before = encoder.bn1.running_mean.clone()
    _, val = eval_splits(str(cifar_eval_folder))
    loader = LabeledLoader(val, image_size=32, batch_size=7, augment=False, seed=0, workers=1,
                           device=CPU)
    features, labels = extract_features(encoder, loader)
    assert features.shape == (30, feature_dim) and features.dtype == torch.float32
    assert sorted(labels.tolist()) == sorted(val.labels)
    assert not encoder.training
    assert torch.equal(encoder.bn1.running_mean, stats_before)


def test_bf16_features_on_the_cpu_track_fp32_ones(cifar_eval_folder):
    torch.manual_seed(0)
    encoder, _ = create_encoder(ModelConfig(arch="resnet18", small_stem=True))
    _, val = eval_splits(str(cifar_eval_folder))
    loader = LabeledLoader(val, image_size=32, batch_size=16, augment=False, seed=0, workers=1,
                           device=CPU)
    fp32, labels = extract_features(encoder, loader, "fp32")
    bf16, bf16_labels = extract_features(encoder, loader, "bf16")
    assert bf16.dtype == torch.float32 and torch.equal(labels, bf16_labels)
    assert not torch.equal(bf16, fp32)  # autocast took effect
    assert torch.nn.functional.cosine_similarity(bf16, fp32).min() > 0.99


def test_shards_of_a_split_deal_its_items_out_and_equal_shards_have_one_length(cifar_folder):
    folder, _ = eval_splits(str(cifar_folder.parent))
    memory, _ = eval_splits("demo")
    for split in (folder, memory):
        for rank in range(7):
            share = split.shard(rank, 7)  # items rank, rank + 7, ...
            if split.files is not None:
                assert (share.files, share.labels) == (split.files[rank::7],
                                                       split.labels[rank::7])
            else:
                assert torch.equal(share.images, split.images[rank::7])
                assert torch.equal(share.image_labels, split.image_labels[rank::7])
        equal = [split.shard(rank, 7, equal=True) for rank in range(7)]
        assert {len(share) for share in equal} == {len(split) // 7}
    assert folder.shard(0, 1) is folder


def test_eval_data_needs_train_and_val_splits_with_the_same_classes(tmp_path, cifar_folder):
    with pytest.raises(UserError, match="train/ and val/"):
        eval_splits(str(tmp_path))
    (tmp_path / "train").symlink_to(cifar_folder)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "cat").symlink_to(cifar_folder / "cat")
    with pytest.raises(UserError, match="different class folders"):
        eval_splits(str(tmp_path))


# ----------------------------------------------------------------------------- kNN

def _brute_force_knn(train, train_labels, queries, num_classes, k, temperature):
    """Votes exp(cos / T) of the k nearest, in the plain form (knn_scores divides every vote
    of a query by that of its nearest neighbour)."""
    scores = torch.zeros(len(queries), num_classes, dtype=train.dtype)
    for q, query in enumerate(queries):
        similarity = [(torch.nn.functional.cosine_similarity(query, x, dim=0).item(), y)
                      for x, y in zip(train, train_labels.tolist())]
        nearest = sorted(similarity, reverse=True)[:k]
        for value, label in nearest:
            scores[q, label] += torch.tensor(value / temperature, dtype=train.dtype).exp()
    return scores


def test_knn_matches_a_brute_force_reference():
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(60, 8, generator=generator)
    labels = torch.randint(0, 4, (60,), generator=generator)
    queries = torch.randn(9, 8, generator=generator)
    scores = knn_scores(train, labels, queries, 4, k=7, temperature=0.5, chunk=4)
    reference = _brute_force_knn(train, labels, queries, 4, 7, 0.5)
    # The same votes up to one factor per query: exp(nearest similarity / T).
    torch.testing.assert_close(scores / scores.sum(1, keepdim=True),
                               reference / reference.sum(1, keepdim=True))


def test_knn_votes_do_not_overflow_at_a_small_temperature():
    generator = torch.Generator().manual_seed(1)
    train = torch.randn(60, 8, generator=generator)
    labels = torch.randint(0, 4, (60,), generator=generator)
    queries = torch.randn(9, 8, generator=generator)
    # exp(1 / 0.005) overflows float32; the reference runs in float64, where it does not.
    scores = knn_scores(train, labels, queries, 4, k=7, temperature=0.005)
    reference = _brute_force_knn(train.double(), labels, queries.double(), 4, 7, 0.005)
    assert torch.isfinite(scores).all()
    assert torch.equal(scores.argmax(dim=1), reference.argmax(dim=1))


def test_topk_accuracy_counts_labels_among_the_best_classes():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.0, 0.1, 0.9]])
    labels = torch.tensor([1, 2, 0])
    assert topk_accuracy(scores, labels, ks=(1, 2)) == pytest.approx(
        {"top1": 100 / 3, "top2": 200 / 3})


# ----------------------------------------------------------------------------- linear

def test_a_linear_classifier_separates_separable_features():
    generator = torch.Generator().manual_seed(0)
    centers = 4 * torch.randn(5, 16, generator=generator)
    labels = torch.arange(500) % 5
    features = centers[labels] + torch.randn(500, 16, generator=generator)
    classifier = train_on_features(features, labels, 5, LinearSettings(epochs=20, batch_size=64))
    accuracy = topk_accuracy(classify(classifier, features), labels)
    assert accuracy["top1"] > 98


def test_the_full_protocol_continued_from_its_saved_state_trains_as_if_never_stopped():
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 6, generator=generator), torch.arange(8) % 3) for _ in range(4)]
    encoder = torch.nn.Linear(6, 6)  # frozen "features" of the "images"
    settings = LinearSettings(epochs=3, batch_size=8)
    saved = []
    straight = train_on_images(encoder, batches, 32, 6, 3, settings,
                               on_state=lambda state: saved.append(copy.deepcopy(state)))
    assert [state["epoch"] for state in saved] == [1, 2, 3]
    continued = train_on_images(encoder, batches, 32, 6, 3, settings, state=saved[0])
    assert torch.equal(continued.weight, straight.weight)
    assert torch.equal(continued.bias, straight.bias)


def test_an_interrupted_full_evaluation_resumes_after_its_last_finished_epoch(
        checkpoint, cifar_eval_folder, tmp_path):
    state_file = checkpoint.parent / "linear-eval.pt"
    command = ["eval", "linear", "--checkpoint", str(checkpoint), "--data",
               str(cifar_eval_folder), "--epochs", "3", "--batch-size", "8", "--workers", "1",
               "--device", "cpu"]
    step = LinearTrainer.step
    calls = 0

    def interrupted_in_the_second_epoch(self, features, labels):
        nonlocal calls
        calls += 1
        if calls == 6:  # 4 steps an epoch (30 images, batch 8)
            raise KeyboardInterrupt
        return step(self, features, labels)

    with mock.patch.object(LinearTrainer, "step", interrupted_in_the_second_epoch):
        stopped = runner.invoke(app, command)
    assert stopped.exit_code == 1 and "--resume continues" in stopped.output
    assert torch.load(state_file, weights_only=True)["epoch"] == 1

    # Refused before the files are listed (minutes for ImageNet).
    listed = AssertionError("files listed")
    with mock.patch("byol.eval.session.eval_splits", side_effect=listed):
        other = runner.invoke(app, [*command, "--lr", "0.2", "--resume"])
    assert other.exit_code == 2 and "had another lr" in " ".join(other.output.split())
    assert state_file.is_file()
    json_file = tmp_path / "resumed.json"
    resumed = runner.invoke(app, [*command, "--resume", "--json", str(json_file)])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(json_file.read_text())["resumed_from_epoch"] == 1
    assert not state_file.exists()  # finished: nothing left to resume
    again = runner.invoke(app, [*command, "--resume"])
    assert again.exit_code == 2 and "Nothing to resume" in again.output
    cached = runner.invoke(app, [*command, "--protocol", "cached", "--resume"])
    assert cached.exit_code == 2 and "--protocol full" in cached.output


# ----------------------------------------------------------------------------- export

def test_an_export_loads_into_torchvision_with_only_fc_missing(checkpoint, tmp_path):
    out = tmp_path / "encoder.pt"
    result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(torch.load(out, weights_only=True),
                                                strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    encoder = load_encoder(checkpoint).encoder
    torch.testing.assert_close(model.layer4[1].conv2.weight, encoder.layer4[1].conv2.weight)


def test_the_printed_load_lines_run_and_load_the_export(checkpoint, tmp_path):
    out = tmp_path / "encoder.pt"
    result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(out)])
    code = result.output.split("Load it with:\n")[1]
    namespace = {"torch": torch, "torchvision": torchvision}
    exec(textwrap.dedent(code), namespace)  # raises if any line is not valid Python
    assert namespace["model"].layer4[1].conv2.weight.abs().sum() > 0


def test_the_small_stem_builder_lines_fit_a_small_stem_encoder():
    config = PretrainConfig(model=ModelConfig(arch="resnet18", small_stem=True))
    encoder, _ = create_encoder(config.model)
    namespace = {"torch": torch, "torchvision": torchvision}
    exec("\n".join(torchvision_builder(config)), namespace)
    missing, unexpected = namespace["model"].load_state_dict(
        backbone_state_dict(encoder), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected


def test_export_never_overwrites_the_checkpoint_and_other_files_only_with_force(checkpoint,
                                                                              tmp_path):
    before = checkpoint.read_bytes()
    for target in (checkpoint, checkpoint.parent):  # the file, and the run folder naming it
        result = runner.invoke(app, ["export", "--checkpoint", str(target), "--out",
                                     str(checkpoint), "--force"])
        assert result.exit_code == 2 and "is the checkpoint being exported" in result.output
    assert checkpoint.read_bytes() == before
    taken = tmp_path / "taken.pt"
    taken.write_text("somebody's file")
    result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(taken)])
    assert result.exit_code == 2 and "already exists; choose another file" in result.output
    assert taken.read_text() == "somebody's file"
    result = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(taken),
                                 "--force"])
    assert result.exit_code == 0, result.output
    assert "conv1.weight" in torch.load(taken, weights_only=True)


def test_started_by_torchrun_export_runs_in_rank_0_alone(checkpoint, tmp_path):
    out = tmp_path / "encoder.pt"
    command = ["export", "--checkpoint", str(checkpoint), "--out", str(out)]
    other_rank = runner.invoke(app, command, env={"RANK": "1", "WORLD_SIZE": "2"})
    assert other_rank.exit_code == 0 and other_rank.output == "" and not out.exists()
    alone = runner.invoke(app, command, env={"RANK": "1", "WORLD_SIZE": "1"})  # not torchrun
    assert alone.exit_code == 0 and out.is_file()


def test_an_export_holds_only_the_encoder(checkpoint, tmp_path):
    out = tmp_path / "encoder.pt"
    runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(out)])
    weights = sum(v.numel() for v in torch.load(out, weights_only=True).values())
    assert out.stat().st_size < 5 * weights  # no flat buffers of the whole model inside


def test_a_file_that_is_not_a_checkpoint_is_one_line_and_exit_2(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("not a checkpoint")
    for command in (["export", "--out", str(tmp_path / "x.pt")], ["eval", "knn"]):
        result = runner.invoke(app, [*command, "--checkpoint", str(bogus)])
        assert result.exit_code == 2
        assert "not a loadable checkpoint" in result.output


# ----------------------------------------------------------------------------- end to end

def test_pretrain_then_eval_knn_and_linear_write_their_numbers(checkpoint, tmp_path):
    commands = {
        "knn": ["eval", "knn", "--k", "20"],
        "cached": ["eval", "linear", "--protocol", "cached", "--epochs", "3"],
        "full": ["eval", "linear", "--protocol", "full", "--epochs", "1"],
    }
    for name, command in commands.items():
        json_file = tmp_path / f"{name}.json"
        result = runner.invoke(app, [*command, "--checkpoint", str(checkpoint), "--data",
                                     "demo", "--workers", "2", "--json", str(json_file)])
        assert result.exit_code == 0, result.output
        numbers = json.loads(json_file.read_text())
        assert 10 < numbers["top1"] <= 100 and numbers["top1"] <= numbers["top5"]
        assert numbers["precision"] == "fp32"  # the CPU's default
        assert (numbers["step"], numbers["train_images"], numbers["val_images"]) == (2, 10000,
                                                                                    2000)
    recorded = (checkpoint.parent / "evaluations.jsonl").read_text().splitlines()
    assert [json.loads(line).get("protocol", "knn") for line in recorded][-3:] == [
        "knn", "cached", "full"]


def test_eval_on_an_image_folder(checkpoint, cifar_eval_folder, tmp_path):
    json_file = tmp_path / "knn.json"
    result = runner.invoke(app, ["eval", "knn", "--checkpoint", str(checkpoint), "--data",
                                 str(cifar_eval_folder), "--k", "50", "--workers", "1",
                                 "--precision", "bf16", "--json", str(json_file)])
    assert result.exit_code == 0, result.output
    numbers = json.loads(json_file.read_text())
    assert numbers["precision"] == "bf16"
    assert numbers["k"] == 30  # all 30 training images vote, and the record says so
    assert numbers["checkpoint"] == str(checkpoint.resolve())
    assert (numbers["train_images"], numbers["val_images"], numbers["classes"]) == (30, 30, 3)
    assert numbers["val_split"] == "test"
    assert "(always, with 3 classes)" in result.output  # top-5 of 3 classes says nothing


def test_a_json_file_that_cannot_be_written_is_refused_before_any_work(checkpoint, tmp_path):
    for json_file, reason in ((tmp_path / "no" / "r.json", "does not exist"),
                              (tmp_path, "is a folder")):
        with mock.patch("byol.eval.run.evaluate_knn") as evaluate:
            result = runner.invoke(app, ["eval", "knn", "--checkpoint", str(checkpoint),
                                         "--json", str(json_file)])
        words = " ".join(result.output.replace("│", " ").split())  # unwrapped from its box
        assert result.exit_code == 2 and reason in words
        evaluate.assert_not_called()


def test_a_result_that_cannot_be_recorded_is_still_shown_and_written(checkpoint,
                                                                     cifar_eval_folder, tmp_path):
    command = ["eval", "knn", "--data", str(cifar_eval_folder), "--k", "5", "--workers", "1"]
    json_file = tmp_path / "knn.json"
    denied = PermissionError(13, "Permission denied")
    with mock.patch("byol.eval.session.record_result", side_effect=denied):
        result = runner.invoke(app, [*command, "--checkpoint", str(checkpoint),
                                     "--json", str(json_file)])
    assert result.exit_code == 0, result.output
    assert "could not record the result" in " ".join(result.output.split())
    assert json.loads(json_file.read_text())["evaluation"] == "knn"
    # A checkpoint copied out of its run folder: no evaluations.jsonl appears beside it.
    loose = tmp_path / "loose" / "x.pt"
    loose.parent.mkdir()
    shutil.copyfile(checkpoint, loose)
    result = runner.invoke(app, [*command, "--checkpoint", str(loose)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in loose.parent.iterdir()) == ["x.pt"]


@pytest.mark.parametrize("flags", [["--image-size", "-5"], ["--image-size", "0"],
                                   ["--batch-size", "0"], ["--workers", "-1"]])
def test_eval_refuses_sizes_no_run_can_use(checkpoint, flags):
    result = runner.invoke(app, ["eval", "knn", "--checkpoint", str(checkpoint), *flags])
    assert result.exit_code == 2 and "must be" in result.output


@pytest.mark.slow
def test_under_torchrun_two_processes_share_the_work_and_rank_0_reports_once(
        checkpoint, cifar_eval_folder, tmp_path):
    """kNN and the cached classifier see the same features in the same order as one process
    does, so their numbers are the same; the full protocol trains one classifier with DDP."""
    # 29 images a split: shares of 15 and 14, and one image left out of the full protocol's.
    for split in ("train", "test"):
        for class_dir in (cifar_eval_folder / split).iterdir():
            images = sorted(class_dir.iterdir())
            if class_dir.name == "cat":
                images = images[1:]
            (tmp_path / "data" / split / class_dir.name).mkdir(parents=True)
            for image in images:
                (tmp_path / "data" / split / class_dir.name / image.name).symlink_to(image)
    data, recorded = str(tmp_path / "data"), checkpoint.parent / "evaluations.jsonl"
    commands = {"knn": ["eval", "knn", "--k", "20"],
                "cached": ["eval", "linear", "--protocol", "cached", "--epochs", "3"],
                "full": ["eval", "linear", "--epochs", "2", "--batch-size", "8"]}
    for port, (name, command) in enumerate(commands.items(), start=29621):
        alone = runner.invoke(app, [*command, "--checkpoint", str(checkpoint), "--data", data,
                                    "--workers", "1", "--device", "cpu", "--json",
                                    str(tmp_path / f"{name}1.json")])
        assert alone.exit_code == 0, alone.output
        lines_before = len(recorded.read_text().splitlines())
        together = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
             "--master-port", str(port), "-m", "byolctl", *command, "--checkpoint",
             str(checkpoint), "--data", data, "--workers", "1", "--device", "cpu", "--json",
             str(tmp_path / f"{name}2.json")],
            capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert together.returncode == 0, together.stderr[-3000:]
        assert together.stdout.count("top-1") == 1  # rank 1 is quiet
        one, two = (json.loads((tmp_path / f"{name}{n}.json").read_text()) for n in (1, 2))
        assert (one["processes"], two["processes"]) == (1, 2)
        assert two["train_images"] == two["val_images"] == 29
        assert json.loads(recorded.read_text().splitlines()[-1]) == two  # recorded once
        assert len(recorded.read_text().splitlines()) == lines_before + 1
        if name == "full":  # other augmentations: a classifier as good, not the same one
            assert 10 < two["top1"] <= 100 and two["top1"] <= two["top5"]
        else:
            assert (two["top1"], two["top5"]) == (one["top1"], one["top5"])
