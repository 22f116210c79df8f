"""The demo dataset and in-memory images through the DALI pipeline; the random source."""

import torch

from byol.data.augment import blur_kernel_size
from byol.data.dali import epoch_order, in_memory_loader
from byol.data.demo_images import CLASSES, VAL_SIZE, demo_images
from byol.data.loaders import RandomTensorLoader

CPU = torch.device("cpu")


def _small_loader(**kwargs):
    images, labels = demo_images("val")
    args = dict(image_size=16, batch_size=10, seed=3, workers=1, device=CPU)
    return in_memory_loader(images[:100], labels[:100], **{**args, **kwargs})


def test_demo_images_are_deterministic_balanced_uint8():
    images, labels = demo_images("val")
    assert images.shape == (VAL_SIZE, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [VAL_SIZE // len(CLASSES)] * len(CLASSES)
    demo_images.cache_clear()
    again, _ = demo_images("val")
    assert torch.equal(images, again)


def test_two_view_batches_have_the_trainers_shape_dtype_and_range():
    batch = next(iter(_small_loader()))
    assert batch.view1.shape == batch.view2.shape == (10, 3, 16, 16)
    assert batch.view1.dtype == torch.float32 and batch.labels.dtype == torch.int64
    assert -2.2 < batch.view1.min() and batch.view1.max() < 2.7  # ImageNet-normalized [0, 1]
    assert not torch.equal(batch.view1, batch.view2)


def test_labels_travel_with_their_images():
    _, labels = demo_images("val")
    batch = next(iter(_small_loader()))
    order = epoch_order(100, seed=3, epoch=0)
    assert batch.labels.tolist() == labels[order[:10]].tolist()


def test_a_loader_restored_mid_epoch_continues_with_the_same_batches():
    loader = _small_loader()
    batches = iter(loader)
    for _ in range(13):                       # past the first epoch of 10 batches
        next(batches)
    state = loader.state_dict()
    expected = next(batches)
    restored = _small_loader()
    restored.load_state_dict(state)
    actual = next(iter(restored))
    assert (state["epoch"], state["position"]) == (1, 3)
    assert torch.equal(actual.view1, expected.view1) and torch.equal(actual.view2, expected.view2)
    assert torch.equal(actual.labels, expected.labels)


def test_every_image_appears_once_per_epoch_across_ranks():
    for epoch in range(3):
        shards = [epoch_order(103, seed=0, epoch=epoch, shard_id=r, num_shards=3)
                  for r in range(3)]
        assert sorted(i for shard in shards for i in shard.tolist()) == list(range(103))
    ranked = [_small_loader(batch_size=5, rank=r, world_size=2) for r in range(2)]
    labels = [label for loader in ranked for batch, _ in zip(loader, range(10))
              for label in batch.labels.tolist()]
    _, all_labels = demo_images("val")
    assert sorted(labels) == sorted(all_labels[:100].tolist())


def test_each_epoch_has_a_new_order():
    first, second = epoch_order(50, seed=0, epoch=0), epoch_order(50, seed=0, epoch=1)
    assert sorted(first) == sorted(second) and first.tolist() != second.tolist()


def test_random_source_counts_imagenet_sized_epochs():
    loader = RandomTensorLoader(image_size=8, batch_size=4, seed=0, device=CPU)
    batch = next(iter(loader))
    assert batch.view1.shape == (4, 3, 8, 8) and batch.labels is None
    assert loader.steps_per_epoch == 1_281_167 // 4


def test_blur_kernel_is_odd_and_about_a_tenth_of_the_image():
    assert [blur_kernel_size(s) for s in (16, 32, 96, 224)] == [3, 3, 11, 23]
