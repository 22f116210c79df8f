"""Semi-supervised fine-tuning: the labeled subsets and the trainer.

    pytest tests/test_finetune.py -q
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from byol.config import ModelConfig
from byol.data.labeled import Split
from byol.errors import UserError
from byol.eval.finetune import FinetuneSettings, FinetuneTrainer, finetune
from byol.eval.linear import LinearSettings, train_on_images
from byol.eval.subsets import choose_labeled, describe, take
from byol.models import create_encoder

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
