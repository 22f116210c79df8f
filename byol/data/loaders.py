"""Sources of two-view batches for the trainer.

A loader is an endless iterator of `TwoViewBatch` on the training device, plus its position
(epoch, batches consumed in the epoch) as a state dict, so that a resumed run continues its
epoch. An epoch holds `images // (batch_size * world_size)` steps: the last partial batch is
dropped, since BatchNorm statistics of a tiny batch would be noise.
"""

import signal
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from byol.data.augment import byol_view_transform
from byol.data.demo_images import demo_images

# `--data random` pretends to be ImageNet so that epochs mean the same amount of compute.
IMAGENET_TRAIN_IMAGES = 1_281_167


@dataclass
class TwoViewBatch:
    """Two augmented views of the same images, on the training device."""

    view1: Tensor  # (B, 3, S, S) float32, normalized
    view2: Tensor  # (B, 3, S, S)
    labels: Tensor | None  # (B,) int64 class indices, or None for unlabeled sources


class TwoViewLoader:
    """Base class: tracks the position in the data and the epoch length."""

    def __init__(self, num_images: int, batch_size: int, world_size: int = 1):
        self.num_images = num_images
        self.batch_size = batch_size
        self.steps_per_epoch = num_images // (batch_size * world_size)
        self.epoch = 0
        self.position = 0  # batches of this epoch already handed to the trainer

    def __iter__(self) -> Iterator[TwoViewBatch]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


def sample_seed(seed: int, epoch: int, index: int, num_images: int) -> int:
    """A distinct augmentation seed for each (epoch, image) of a run."""
    return (seed * 0x9E3779B1 + epoch * num_images + index) % 2**63


class EpochSampler(Sampler[tuple[int, int]]):
    """This rank's share of one epoch, from a batch position on, as (index, sample seed).

    The order is a permutation seeded by (seed, epoch); rank r of w takes every w-th image, so
    each image appears exactly once per epoch across ranks.
    """

    def __init__(self, num_images: int, batch_size: int, seed: int, epoch: int,
                 start_batch: int, rank: int = 0, world_size: int = 1):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(num_images, generator=generator)[rank::world_size]
        steps = num_images // (batch_size * world_size)
        self.indices = order[start_batch * batch_size: steps * batch_size].tolist()
        self.seeds = [sample_seed(seed, epoch, i, num_images) for i in self.indices]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self.indices, self.seeds))

    def __len__(self) -> int:
        return len(self.indices)


class TwoViewDataset(Dataset):
    """uint8 images in memory -> (view1, view2, label), augmented with a per-sample seed."""

    def __init__(self, images: Tensor, labels: Tensor, image_size: int):
        self.images, self.labels = images, labels
        self.transforms = (byol_view_transform(image_size, 1), byol_view_transform(image_size, 2))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        index, seed = key
        image = self.images[index]
        # The seed makes a sample's views independent of worker count and of where a resumed
        # run starts; fork_rng keeps the caller's random stream untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            view1, view2 = (transform(image) for transform in self.transforms)
        return view1, view2, self.labels[index]


class InMemoryLoader(TwoViewLoader):
    """Two-view batches from labeled uint8 images held in memory (the demo dataset)."""

    def __init__(self, images: Tensor, labels: Tensor, *, image_size: int, batch_size: int,
                 seed: int, workers: int, device: torch.device, rank: int = 0,
                 world_size: int = 1):
        super().__init__(len(images), batch_size, world_size)
        self.dataset = TwoViewDataset(images, labels, image_size)
        self.seed, self.workers, self.device = seed, workers, device
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[TwoViewBatch]:
        while True:
            if self.position >= self.steps_per_epoch:  # e.g. resumed at an epoch's end
                self.epoch, self.position = self.epoch + 1, 0
            sampler = EpochSampler(self.num_images, self.batch_size, self.seed, self.epoch,
                                   self.position, self.rank, self.world_size)
            loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler,
                                num_workers=self.workers, drop_last=True,
                                pin_memory=self.device.type == "cuda",
                                worker_init_fn=_leave_stop_signals_to_the_trainer)
            for view1, view2, labels in loader:
                self.position += 1
                yield TwoViewBatch(to_training_layout(view1, self.device),
                                   to_training_layout(view2, self.device),
                                   labels.to(self.device, non_blocking=True))


class RandomTensorLoader(TwoViewLoader):
    """One fixed batch of standard-normal views on the device, repeated: data costs nothing.

    For profiling the trainer alone. An epoch is nominally ImageNet's training set.
    """

    def __init__(self, *, image_size: int, batch_size: int, seed: int, device: torch.device,
                 world_size: int = 1):
        super().__init__(IMAGENET_TRAIN_IMAGES, batch_size, world_size)
        generator = torch.Generator().manual_seed(seed)
        shape = (batch_size, 3, image_size, image_size)
        self.batch = TwoViewBatch(
            to_training_layout(torch.randn(shape, generator=generator), device),
            to_training_layout(torch.randn(shape, generator=generator), device),
            None,
        )

    def __iter__(self) -> Iterator[TwoViewBatch]:
        while True:
            if self.position >= self.steps_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
            self.position += 1
            yield self.batch


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    # Ctrl-C and schedulers signal the whole process group; a worker that died of it would
    # crash the main process before it could write its checkpoint. The main process decides
    # when to stop, and workers exit with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def to_training_layout(images: Tensor, device: torch.device) -> Tensor:
    """Move a (B, 3, H, W) batch to the device, channels_last on a GPU."""
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def demo_loader(**kwargs) -> InMemoryLoader:
    """The built-in demo dataset's training split; keyword arguments as `InMemoryLoader`."""
    images, labels = demo_images("train")
    return InMemoryLoader(images, labels, **kwargs)
