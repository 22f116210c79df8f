"""Image folders through DALI, on the CPU (device_id=None)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from byol.data.dali import folder_loader, scan_image_folder
from byol.data.folders import check_folder
from byol.errors import UserError
from tests.conftest import CIFAR_CLASSES, run_pretraining

CPU = torch.device("cpu")


def _loader(root, **kwargs):
    # The files path (DALI's reader and decoder): these small images would otherwise be read
    # from memory, which tests/test_in_memory_data.py covers.
    args = dict(image_size=16, batch_size=8, seed=5, workers=1, device=CPU, in_memory=False)
    return folder_loader(root, **{**args, **kwargs})


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
    # Whatever the augmentation, a black image stays darker than a white one in the first
    # view, which is never solarized (a solarized white image is black).
    brightness = batch.view1.mean(dim=(1, 2, 3))
    dark, light = brightness[batch.labels == 0], brightness[batch.labels == 1]
    assert len(dark) == len(light) == 6 and dark.max() < light.min()


def test_images_in_subfolders_of_a_class_folder_belong_to_that_class(tmp_path):
    for path in ("a/1.png", "b/sub/2.png", "b/sub/deeper/3.png", "c/notes.txt"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".png"):
            Image.new("RGB", (8, 8)).save(tmp_path / path)
        else:
            (tmp_path / path).write_text("not an image")
    folder = scan_image_folder(tmp_path)
    assert [Path(f).relative_to(tmp_path).as_posix() for f in folder.files] == [
        "a/1.png", "b/sub/2.png", "b/sub/deeper/3.png"]
    assert folder.labels == [0, 1, 1] and folder.classes == ["a", "b", "c"]
    report = check_folder(tmp_path)
    assert report.images == 3
    (tmp_path / "split" / "val").mkdir(parents=True)
    (tmp_path / "split" / "train").symlink_to(tmp_path / "b")
    with pytest.raises(UserError, match="holds the splits train, val, not classes; pass"):
        scan_image_folder(tmp_path / "split")  # not two classes named train and val
    assert {Path(p).relative_to(tmp_path).as_posix(): reason.split(" (")[0]
            for p, reason in report.problems} == {"c": "empty class folder",
                                                  "c/notes.txt": "not an image file"}


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


def test_every_image_appears_once_per_epoch_across_ranks(tmp_path):
    # One image per class: the label names the image.
    for i in range(12):
        (tmp_path / f"{i:02d}").mkdir()
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(tmp_path / f"{i:02d}" / "x.png")
    for epoch in range(2):
        seen = []
        for rank in range(2):
            loader = _loader(tmp_path, batch_size=3, rank=rank, world_size=2)
            batches = iter(loader)
            for _ in range((epoch + 1) * loader.steps_per_epoch):
                labels = next(batches).labels.tolist()
                if loader.epoch == epoch:
                    seen.append(labels)
        flat = [label for labels in seen for label in labels]
        assert sorted(flat) == list(range(12)), f"epoch {epoch}: {sorted(flat)}"


def test_ranks_draw_their_own_augmentations(tmp_path):
    # Every image is the same, so views can differ between ranks only through their draws.
    (tmp_path / "a").mkdir()
    for i in range(8):
        Image.new("RGB", (16, 16), (200, 40, 90)).save(tmp_path / "a" / f"{i}.png")
    first = [next(iter(_loader(tmp_path, batch_size=4, rank=r, world_size=2))) for r in (0, 1)]
    assert not torch.equal(first[0].view1, first[1].view1)
    assert not torch.equal(first[0].view2, first[1].view2)


@pytest.mark.parametrize("blur", [True, False])
def test_augmentation_rates_per_view_match_byol(cifar_folder, blur):
    from byol.data.dali import folder_reader, two_view_pipeline
    from byol.data.folders import scan_image_folder

    folder = scan_image_folder(cifar_folder)
    read = folder_reader(folder.files, folder.labels, 0, 1, seed=0, on_gpu=False)
    pipeline = two_view_pipeline(read=read,
                                 image_size=8, blur=blur, with_choices=True, batch_size=30,
                                 num_threads=1, device_id=None, seed=11)
    choices = {1: [], 2: []}
    for _ in range(40):                                   # 1,200 draws per view
        outputs = pipeline.run()
        for view in (1, 2):
            choices[view].append(torch.as_tensor(np.array(outputs[2 + view].as_tensor())))
    rates = {view: torch.cat(c).float().mean(dim=0).tolist() for view, c in choices.items()}
    # (color jitter, grayscale, blur, solarize); 4 std of a binomial over 1,200 draws < 0.05
    expected = {1: [0.8, 0.2, 1.0 if blur else 0.0, 0.0], 2: [0.8, 0.2, 0.1 if blur else 0.0, 0.2]}
    for view in (1, 2):
        assert rates[view] == pytest.approx(expected[view], abs=0.05), (view, rates[view])


def test_solarize_inverts_exactly_the_views_whose_choice_fired(tmp_path):
    from byol.data.augment import IMAGENET_MEAN, IMAGENET_STD
    from byol.data.dali import folder_reader, two_view_pipeline

    (tmp_path / "a").mkdir()
    Image.new("RGB", (16, 16), (230, 230, 230)).save(tmp_path / "a" / "light.png")
    # Any brightness jitter keeps 230 at 138 or above; solarize maps that below 128.
    read = folder_reader([str(tmp_path / "a" / "light.png")] * 50, [0] * 50, 0, 1, seed=0,
                         on_gpu=False)
    pipeline = two_view_pipeline(read=read, image_size=8, with_choices=True, batch_size=50,
                                 num_threads=1, device_id=None, seed=3)
    outputs = pipeline.run()
    view2 = torch.as_tensor(np.array(outputs[1].as_tensor()))
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    pixels = (view2 * std + mean) * 255
    solarized = torch.as_tensor(np.array(outputs[4].as_tensor()))[:, 3].bool()
    assert solarized.any() and not solarized.all()
    assert (pixels.amax(dim=(1, 2, 3))[solarized] < 128).all()
    assert (pixels.amin(dim=(1, 2, 3))[~solarized] >= 137).all()


def _run_on(image, augment, batch_size=2):
    """`augment` applied by a CPU DALI pipeline to the uint8 HWC `image`; (batch, H, W, C)."""
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None, seed=1)
    def pipeline():
        return augment(fn.external_source(source=lambda: [image] * batch_size, layout="HWC"))

    return np.array(pipeline().run()[0].as_tensor()).astype(float)


@pytest.mark.parametrize("contrast, brightness", [(0.5, 1.0), (1.4, 0.8)])
def test_contrast_pivots_on_each_images_mean_gray(contrast, brightness):
    from byol.data.dali import _brightness_contrast

    # The mean gray of bands 60, 100, 140 is the middle band. (DALI's own brightness_contrast
    # pivots on mid-range, 128, by default.)
    bands = np.array([60, 100, 140])
    image = np.broadcast_to(bands.astype(np.uint8)[:, None, None], (3, 6, 3)).copy()
    out = _run_on(image, lambda x: _brightness_contrast(x, brightness, contrast))[:, :, 0, 0]
    assert np.allclose(out, brightness * (100 + contrast * (bands - 100)), atol=1.0)


def test_the_jitter_adjustments_commute_away_from_clipping():
    """Why `_color_jitter` may fix the order the paper draws per sample."""
    import itertools

    from nvidia.dali import fn

    from byol.data.dali import _brightness_contrast

    adjustments = (lambda x: _brightness_contrast(x, 1.3, 1.0),
                   lambda x: _brightness_contrast(x, 1.0, 0.7),
                   lambda x: fn.hsv(x, saturation=1.2), lambda x: fn.hsv(x, hue=30.0))
    image = np.random.default_rng(0).integers(100, 150, (8, 8, 3), dtype=np.uint8)

    def in_order(order):
        def augment(x):
            for k in order:
                x = adjustments[k](x)
            return x
        return augment

    outputs = [_run_on(image, in_order(order))[0] for order in itertools.permutations(range(4))]
    assert 20 < np.abs(outputs[0] - image).mean()  # the adjustments do change the image
    for other in outputs[1:]:  # up to uint8 rounding after each step
        assert np.abs(other - outputs[0]).mean() < 1.0 and np.abs(other - outputs[0]).max() <= 5
