"""The transfer protocol's linear classifier: held-out split, L-BFGS logistic regression and
the choice of its penalty.

    pytest tests/test_transfer.py -q
"""

import json
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from byol.eval import transfer
from byol.eval.transfer import (
    PENALTIES,
    TransferSettings,
    choose_penalty,
    fit_logistic,
    held_out_split,
)
from byolctl.cli import app

runner = CliRunner()


def blobs(per_class: int = 30, classes: int = 3, dim: int = 8, spread: float = 0.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=generator) * 3
    labels = torch.arange(classes).repeat_interleave(per_class)
    features = centers[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return features, labels


def test_the_grid_is_the_papers_45_values_from_1e_6_to_1e5():
    assert len(PENALTIES) == 45
    assert PENALTIES[0] == torch.tensor(1e-6, dtype=torch.float64).item()
    assert abs(PENALTIES[-1] - 1e5) < 1e-6


def test_held_out_part_takes_a_share_of_every_class_and_depends_on_the_seed():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 2)
    fit, held = held_out_split(labels, fraction=0.2, seed=0)
    assert torch.bincount(labels[held]).tolist() == [2, 1, 1]
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(len(labels)))
    again, _ = held_out_split(labels, fraction=0.2, seed=0)
    other, _ = held_out_split(labels, fraction=0.2, seed=1)
    assert torch.equal(fit, again) and not torch.equal(fit, other)


def test_the_fit_is_the_penalized_cross_entropys_minimum():
    features, labels = blobs(spread=2.0)
    penalty = 0.05
    fit = fit_logistic(features, labels, 3, penalty, iterations=500)
    weight = fit.weight.clone().requires_grad_(True)
    bias = fit.bias.clone().requires_grad_(True)
    standardized = (features - fit.mean) / fit.scale
    loss = (F.cross_entropy(standardized @ weight.T + bias, labels)
            + 0.5 * penalty * weight.square().sum())
    loss.backward()
    assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4
    assert torch.allclose(fit.logits(features), standardized @ fit.weight.T + fit.bias)


def test_a_stronger_penalty_gives_smaller_weights():
    features, labels = blobs(spread=2.0)
    weak = fit_logistic(features, labels, 3, 1e-3, iterations=300)
    strong = fit_logistic(features, labels, 3, 10.0, iterations=300)
    assert strong.weight.norm() < weak.weight.norm() / 10


def test_separable_classes_choose_a_weak_penalty_and_classify_the_held_out_images():
    features, labels = blobs()
    fit, held = held_out_split(labels, 0.2, seed=0)
    choice = choose_penalty(features[fit], labels[fit], features[held], labels[held], 3,
                            TransferSettings(iterations=50))
    assert choice.held_out_top1 == 100.0
    assert choice.penalty < 1.0
    assert [penalty for penalty, _ in choice.curve] == PENALTIES


def test_overlapping_classes_choose_a_penalty_by_held_out_accuracy():
    features, labels = blobs(per_class=40, dim=30, spread=6.0, seed=2)
    fit, held = held_out_split(labels, 0.3, seed=0)
    choice = choose_penalty(features[fit], labels[fit], features[held], labels[held], 3,
                            TransferSettings(iterations=50))
    assert choice.held_out_top1 == max(top1 for _, top1 in choice.curve)
    assert choice.held_out_top1 > dict(choice.curve)[PENALTIES[0]]  # overfitting costs


# ---------------------------------------------------------------- the suite


@pytest.fixture
def two_datasets(cifar_eval_folder, tmp_path) -> list[str]:
    """Two small datasets: the CIFAR JPEGs, and the same images under other class folders."""
    other = tmp_path / "renamed"
    for split in ("train", "test"):
        for index, class_dir in enumerate(sorted((cifar_eval_folder / split).iterdir())):
            (other / split / f"class{index}").mkdir(parents=True)
            for image in class_dir.iterdir():
                (other / split / f"class{index}" / image.name).symlink_to(image)
    return [str(cifar_eval_folder), str(other)]


def suite(demo_checkpoint, datasets, out, *flags):
    return runner.invoke(app, ["eval", "transfer", *datasets, "--checkpoint",
                               str(demo_checkpoint), "--out", str(out), "--iterations", "10",
                               "--workers", "1", "--device", "cpu", *flags])


def test_the_suite_gives_a_row_per_dataset_and_their_mean(demo_checkpoint, two_datasets,
                                                          tmp_path):
    json_file = tmp_path / "suite.json"
    done = suite(demo_checkpoint, two_datasets, tmp_path / "suite", "--json", str(json_file))
    assert done.exit_code == 0, done.output
    summary = json.loads(json_file.read_text())
    names = [result["dataset"] for result in summary["datasets"]]
    assert names == ["cifar10-subset", "renamed"]
    # The same images and labels under other names: the same numbers.
    first, second = summary["datasets"]
    assert (first["knn_top1"], first["linear_top1"]) == (second["knn_top1"],
                                                         second["linear_top1"])
    assert summary["mean"]["linear_top1"] == pytest.approx(first["linear_top1"])
    assert first["penalty"] in PENALTIES and first["classes"] == 3
    lines = (tmp_path / "suite" / "transfer.jsonl").read_text().splitlines()
    assert [json.loads(line)["dataset"] for line in lines] == names
    assert "mean" in done.output and "renamed" in done.output


def test_an_interrupted_suite_resumes_with_the_datasets_it_had_not_finished(
        demo_checkpoint, two_datasets, tmp_path):
    out = tmp_path / "suite"
    one = transfer._transfer_one
    calls = []

    def interrupted_at_the_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return one(*args, **kwargs)

    with mock.patch.object(transfer, "_transfer_one", interrupted_at_the_second):
        stopped = suite(demo_checkpoint, two_datasets, out)
    assert stopped.exit_code == 1 and "--resume skips them" in " ".join(stopped.output.split())
    assert len((out / "transfer.jsonl").read_text().splitlines()) == 1

    again = suite(demo_checkpoint, two_datasets, out)
    assert again.exit_code == 2 and "holds an earlier suite" in again.output
    calls.clear()
    with mock.patch.object(transfer, "_transfer_one", interrupted_at_the_second):
        resumed = suite(demo_checkpoint, two_datasets, out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert calls == ["renamed"]  # the first was recorded, and is not run again
    assert "recorded earlier" in resumed.output
    assert len((out / "transfer.jsonl").read_text().splitlines()) == 2


def test_a_yaml_file_names_the_datasets(demo_checkpoint, two_datasets, tmp_path):
    listing = tmp_path / "suite.yaml"
    listing.write_text(f"cifar: {two_datasets[0]}\nrenamed-cifar: renamed\n")
    json_file = tmp_path / "suite.json"
    done = suite(demo_checkpoint, [str(listing)], tmp_path / "suite", "--json", str(json_file))
    assert done.exit_code == 0, done.output
    assert [r["dataset"] for r in json.loads(json_file.read_text())["datasets"]] == [
        "cifar", "renamed-cifar"]


@pytest.mark.parametrize(("given", "message"), [
    (["missing-folder"], "no folder missing-folder"),
    (["one/data", "two/data"], "Two datasets are named data"),
    (["list.yaml"], "does not exist"),
])
def test_datasets_that_cannot_be_evaluated_are_refused_first(demo_checkpoint, tmp_path,
                                                             monkeypatch, given, message):
    monkeypatch.chdir(tmp_path)
    for folder in ("one/data", "two/data"):
        (tmp_path / folder).mkdir(parents=True)
    result = suite(demo_checkpoint, given, tmp_path / "suite")
    assert result.exit_code == 2 and message in " ".join(result.output.split())
    assert not (tmp_path / "suite").exists()
