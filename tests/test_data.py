import torch

from byol.data.augment import blur_kernel_size
from byol.data.demo_images import CLASSES, VAL_SIZE, demo_images
from byol.data.loaders import EpochSampler, InMemoryLoader, RandomTensorLoader

CPU = torch.device("cpu")


def _small_loader(**kwargs):
    images, labels = demo_images("val")
    args = dict(image_size=16, batch_size=10, seed=3, workers=0, device=CPU)
    return InMemoryLoader(images[:100], labels[:100], **{**args, **kwargs})


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
    # Normalized with the ImageNet mean and std: roughly centred, within a few std.
    assert -3.0 < batch.view1.min() and batch.view1.max() < 3.0
    assert not torch.equal(batch.view1, batch.view2)


def test_labels_travel_with_their_images():
    images, labels = demo_images("val")
    loader = _small_loader()
    sampler = EpochSampler(100, 10, seed=3, epoch=0, start_batch=0)
    batch = next(iter(loader))
    assert batch.labels.tolist() == labels[sampler.indices[:10]].tolist()


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
    assert state == {"epoch": 1, "position": 3}
    assert torch.equal(actual.view1, expected.view1) and torch.equal(actual.view2, expected.view2)


def test_workers_do_not_change_the_batches():
    serial = next(iter(_small_loader(workers=0)))
    parallel = next(iter(_small_loader(workers=2)))
    assert torch.equal(serial.view1, parallel.view1)


def test_every_image_appears_once_per_epoch_across_ranks():
    shards = [EpochSampler(103, 5, seed=0, epoch=2, start_batch=0, rank=r, world_size=3)
              for r in range(3)]
    seen = [i for shard in shards for i in shard.indices]
    assert len(seen) == len(set(seen)) == 3 * (103 // 15) * 5
    assert all(len(s) == len(shards[0]) for s in shards)


def test_each_epoch_has_a_new_order():
    first = EpochSampler(50, 5, seed=0, epoch=0, start_batch=0).indices
    second = EpochSampler(50, 5, seed=0, epoch=1, start_batch=0).indices
    assert sorted(first) == sorted(second) and first != second


def test_random_source_counts_imagenet_sized_epochs():
    loader = RandomTensorLoader(image_size=8, batch_size=4, seed=0, device=CPU)
    batch = next(iter(loader))
    assert batch.view1.shape == (4, 3, 8, 8) and batch.labels is None
    assert loader.steps_per_epoch == 1_281_167 // 4


def test_blur_kernel_is_odd_and_about_a_tenth_of_the_image():
    assert [blur_kernel_size(s) for s in (16, 32, 96, 224)] == [3, 3, 11, 23]
