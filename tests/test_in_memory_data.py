"""A folder of small images decoded once and fed from memory (byol.data.dali.folder_loader)."""

import numpy as np
import pytest
import torch
from PIL import Image

from byol.data import dali
from byol.data.dali import epoch_order, folder_loader, scan_image_folder
from byol.errors import UserError

CPU = torch.device("cpu")


def _make_folder(root, sizes=((16, 16),), per_class=8, classes=("a", "b", "c")):
    """`root/<class>/<i>.jpg` of random pixels, the image sizes taken in turn from `sizes`."""
    rng = np.random.default_rng(0)
    n = 0
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[n % len(sizes)]
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:02d}.jpg", quality=90)
            n += 1
    return root


@pytest.fixture
def small_folder(tmp_path):
    return _make_folder(tmp_path / "small")


def _loader(root, **kwargs):
    args = dict(image_size=16, batch_size=4, seed=3, workers=1, device=CPU)
    return folder_loader(root, **{**args, **kwargs})


def _labels(loader, batches):
    it = iter(loader)
    return [next(it).labels.tolist() for _ in range(batches)]


def test_the_automatic_choice_reads_small_images_from_memory(tmp_path, small_folder,
                                                             monkeypatch):
    assert _loader(small_folder).reads == "memory"
    assert _loader(small_folder, in_memory=True).reads == "memory"
    assert _loader(small_folder, in_memory=False).reads == "files"
    mixed = _make_folder(tmp_path / "mixed", sizes=((16, 16), (20, 16)))
    assert _loader(mixed).reads == "files"
    large = _make_folder(tmp_path / "large", sizes=((80, 80),), per_class=2)
    assert _loader(large, batch_size=2).reads == "files"
    monkeypatch.setattr(dali, "available_memory", lambda: 1000)  # 24 * 16 * 16 * 3 > 250
    assert _loader(small_folder).reads == "files"


def test_in_memory_on_data_that_does_not_qualify_is_a_one_sentence_user_error(tmp_path):
    mixed = _make_folder(tmp_path / "mixed", sizes=((16, 16), (20, 16)))
    with pytest.raises(UserError) as error:
        _loader(mixed, in_memory=True)
    message = str(error.value)
    assert message.startswith("--in-memory: its images differ in size")
    assert message.endswith("drop the flag to read the images from their files.")
    assert message.count(". ") == 0 and "\n" not in message
    large = _make_folder(tmp_path / "large", sizes=((80, 80),), per_class=2)
    with pytest.raises(UserError, match="larger than 64x64"):
        _loader(large, batch_size=2, in_memory=True)


def test_memory_batches_follow_epoch_order_over_the_folders_images(small_folder):
    folder = scan_image_folder(small_folder)
    labels, classes = folder.labels, folder.classes
    memory, files = _loader(small_folder), _loader(small_folder, in_memory=False)
    steps = memory.steps_per_epoch
    assert steps == files.steps_per_epoch == 6
    assert (memory.classes, memory.num_images, memory.skipped) == (
        files.classes, files.num_images, files.skipped) == (classes, 24, [])
    got = _labels(memory, steps + steps // 2)  # an epoch and a half
    expected = [labels[i] for epoch in (0, 1) for i in epoch_order(24, 3, epoch)]
    assert [label for batch in got for label in batch] == expected[:len(got) * 4]
    # The same images and labels as the file path's epoch, in the order of `epoch_order`.
    from_files = _labels(files, steps)
    assert sorted(sum(got[:steps], [])) == sorted(sum(from_files, [])) == sorted(labels)


def test_memory_batches_are_augmented_as_the_files_are(small_folder):
    memory = next(iter(_loader(small_folder)))
    files = next(iter(_loader(small_folder, in_memory=False)))
    for batch in (memory, files):
        assert batch.view1.shape == batch.view2.shape == (4, 3, 16, 16)
        assert batch.view1.dtype == batch.view2.dtype == torch.float32
        assert batch.view1.is_contiguous() and batch.labels.dtype == torch.int64
        assert -2.2 < batch.view1.min() and batch.view1.max() < 2.7  # ImageNet-normalized
        assert not torch.equal(batch.view1, batch.view2)


def test_a_restored_memory_loader_continues_with_the_same_batches(small_folder):
    loader = _loader(small_folder)
    batches = iter(loader)
    for _ in range(8):                     # past the first epoch of 6 batches
        next(batches)
    state = loader.state_dict()
    expected = [next(batches) for _ in range(2)]
    restored = _loader(small_folder)
    restored.load_state_dict(state)
    actual = iter(restored)
    assert (state["epoch"], state["position"], state["reads"]) == (1, 2, "memory")
    for want in expected:
        got = next(actual)
        assert torch.equal(got.labels, want.labels) and torch.equal(got.view1, want.view1)


def test_a_checkpoint_that_read_the_files_resumes_reading_the_files(small_folder):
    files = _loader(small_folder, in_memory=False)
    batches = iter(files)
    for _ in range(3):
        next(batches)
    state = files.state_dict()
    del state["reads"]                     # as a checkpoint from before the in-memory path
    expected = next(batches)
    restored = _loader(small_folder)       # would read from memory
    restored.load_state_dict(state)
    got = next(iter(restored))
    assert restored.reads == "files"
    assert torch.equal(got.labels, expected.labels) and torch.equal(got.view1, expected.view1)
    pinned = _loader(small_folder, in_memory=True)
    with pytest.raises(UserError, match="read its images from their files; resume it without"):
        pinned.load_state_dict(state)


def test_every_image_appears_once_per_epoch_across_two_ranks(tmp_path):
    # One image per class: the label names the image.
    root = _make_folder(tmp_path / "one", per_class=1, classes=[f"{i:02d}" for i in range(12)])
    for epoch in range(2):
        seen = []
        for rank in range(2):
            loader = _loader(root, batch_size=3, rank=rank, world_size=2)
            assert loader.reads == "memory"
            batches = iter(loader)
            for _ in range((epoch + 1) * loader.steps_per_epoch):
                labels = next(batches).labels.tolist()
                if loader.epoch == epoch:
                    seen.append(labels)
        flat = [label for labels in seen for label in labels]
        assert sorted(flat) == list(range(12)), f"epoch {epoch}: {sorted(flat)}"


def test_a_corrupt_jpeg_is_skipped_and_listed_as_the_file_path_lists_it(small_folder):
    bad = small_folder / "b" / "03.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) // 2])  # truncated: no end marker
    memory, files = _loader(small_folder), _loader(small_folder, in_memory=False)
    assert memory.reads == "memory"
    assert memory.skipped == files.skipped == [(str(bad), "truncated (no end marker)")]
    assert memory.num_images == files.num_images == 23
    labels = sum(_labels(memory, memory.steps_per_epoch), [])
    assert len(labels) == 20 and labels.count(1) <= 7
    with pytest.raises(UserError, match="truncated"):
        _loader(small_folder, strict=True)


def test_an_unreadable_header_leaves_the_folder_to_the_file_path(small_folder):
    files = sorted(str(p) for p in small_folder.rglob("*.jpg"))
    (small_folder / "a" / "zz-garbage.jpg").write_bytes(b"not an image at all")
    reason = dali.small_image_reason([*files, str(small_folder / "a" / "zz-garbage.jpg")])
    assert reason == f"the header of {small_folder / 'a' / 'zz-garbage.jpg'} cannot be read"
    assert dali.small_image_reason(files) is None
