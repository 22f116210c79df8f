"""Sources of two-view batches for the trainer.

A loader is an endless iterator of `TwoViewBatch` on the training device, plus its position
(epoch, batches consumed in the epoch) as a state dict, so that a resumed run continues its
epoch. An epoch holds `images // (batch_size * world_size)` steps: the last partial batch is
dropped, since BatchNorm statistics of a tiny batch would be noise.
"""

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

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


class RandomTensorLoader(TwoViewLoader):
    """One fixed batch of standard-normal views on the device, repeated: data costs nothing.

    For profiling the trainer alone. An epoch is nominally ImageNet's training set. With
    several processes, each takes its own slice of one global batch drawn from `seed`, so the
    global batch is the same whatever the number of processes.
    """

    def __init__(self, *, image_size: int, batch_size: int, seed: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
        super().__init__(IMAGENET_TRAIN_IMAGES, batch_size, world_size)
        generator = torch.Generator().manual_seed(seed)
        shape = (batch_size * world_size, 3, image_size, image_size)
        mine = slice(rank * batch_size, (rank + 1) * batch_size)
        self.batch = TwoViewBatch(
            to_training_layout(torch.randn(shape, generator=generator)[mine], device),
            to_training_layout(torch.randn(shape, generator=generator)[mine], device),
            None,
        )

    def __iter__(self) -> Iterator[TwoViewBatch]:
        while True:
            if self.position >= self.steps_per_epoch:
                self.epoch, self.position = self.epoch + 1, 0
            self.position += 1
            yield self.batch


def to_training_layout(images: Tensor, device: torch.device) -> Tensor:
    """Move a (B, 3, H, W) batch to the device, channels_last on a GPU."""
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    return images
