"""Image folders through DALI, on the CPU (device_id=None)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from byol.data.dali import DaliFolderLoader, scan_image_folder
from byol.errors import UserError
from tests.conftest import CIFAR_CLASSES, run_pretraining

CPU = torch.device("cpu")


def _loader(root, **kwargs):
    args = dict(image_size=16, batch_size=8, seed=5, workers=1, device=CPU)
    return DaliFolderLoader(root, **{**args, **kwargs})


def test_folder_batches_have_the_trainers_shape_dtype_and_range(cifar_folder):
    loader = _loader(cifar_folder)
    batch = next(iter(loader))
    assert batch.view1.shape == batch.view2.shape == (8, 3, 16, 16)
    assert batch.view1.dtype == torch.float32 and batch.labels.dtype == torch.int64
    assert -2.2 < batch.view1.min() and batch.view1.max() < 2.7  # ImageNet-normalized [0, 1]
    assert not torch.equal(batch.view1, batch.view2)
    assert loader.classes == list(CIFAR_CLASSES) and loader.steps_per_epoch == 30 // 8


def test_labels_come_from_the_class_folders(tmp_path):
    for name, shade in (("black", 0), ("white", 255)):
        (tmp_path / name).mkdir()
        for i in range(6):
            Image.new("RGB", (20, 24), (shade,) * 3).save(tmp_path / name / f"{i}.png")
    batch = next(iter(_loader(tmp_path, batch_size=12)))
    # Whatever the augmentation, a black image stays darker than a white one.
    brightness = batch.view2.mean(dim=(1, 2, 3))
    dark, light = brightness[batch.labels == 0], brightness[batch.labels == 1]
    assert len(dark) == len(light) == 6 and dark.max() < light.min()


def test_a_restored_folder_loader_continues_with_the_same_batches(cifar_folder):
    loader = _loader(cifar_folder)
    batches = iter(loader)
    for _ in range(4):                     # past the first epoch of 3 batches
        next(batches)
    state = loader.state_dict()
    expected = next(batches)
    restored = _loader(cifar_folder)
    restored.load_state_dict(state)
    actual = next(iter(restored))
    assert (state["epoch"], state["position"]) == (1, 1)
    assert torch.equal(actual.view1, expected.view1) and torch.equal(actual.labels, expected.labels)


def test_missing_and_empty_folders_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        scan_image_folder(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "empty_class" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="no images found"):
        scan_image_folder(tmp_path)


def test_pretraining_on_a_folder_saves_its_classes_and_resumes_bit_for_bit(cifar_folder, tiny):
    settings = {**tiny, "data": str(cifar_folder), "workers": 1}
    straight, _, _ = run_pretraining(settings, out="straight")
    _, partial, _ = run_pretraining(settings, out="parts", stop_at=4)
    assert partial.interrupted
    resumed, final, _ = run_pretraining(settings, out="parts", resume="parts/last.pt")
    assert final.step == 6
    expected, actual = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    assert json.loads(Path("parts/classes.json").read_text()) == list(CIFAR_CLASSES)
