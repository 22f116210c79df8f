"""The built-in demo dataset: ten classes of shapes and textures, drawn procedurally.

Each image tiles the whole frame with one pattern - disks, squares, triangles, rings or crosses,
or horizontal, vertical or diagonal stripes, a checkerboard or a plaid - at a random scale and
offset, in two near-gray colors of random brightness, with pixel noise. Telling the classes
apart needs shape and texture, not color.
"""

import functools
import math

import torch
from torch import Tensor

CLASSES = ("disks", "squares", "triangles", "rings", "crosses",
           "hstripes", "vstripes", "diagonal", "checker", "plaid")
TRAIN_SIZE = 10_000
VAL_SIZE = 2_000
IMAGE_SIZE = 32
# Drawn at 2x and averaged down so that edges are anti-aliased.
_SUPERSAMPLE = 2
# The dataset is fixed, whatever the run's seed: the training and validation splits.
_SPLIT_SEEDS = {"train": 1234, "val": 5678}


def _pattern(label: int, x: Tensor, y: Tensor) -> Tensor:
    """Foreground mask (N, H, W) of one class, in pattern coordinates (one unit per tile).

    Every class fills the whole frame, so that any crop BYOL takes still shows it.
    """
    # Position inside the tile, centred: [-1, 1) on both axes.
    u = 2 * (x - torch.floor(x)) - 1
    v = 2 * (y - torch.floor(y)) - 1
    r = torch.sqrt(u * u + v * v)
    if label == 0:
        return r <= 0.7
    if label == 1:
        return (u.abs() <= 0.6) & (v.abs() <= 0.6)
    if label == 2:
        return (v >= -0.7) & (v <= 0.7) & (u.abs() <= (v + 0.7) / 1.6)
    if label == 3:
        return (r >= 0.45) & (r <= 0.8)
    if label == 4:
        return ((u.abs() <= 0.22) & (v.abs() <= 0.8)) | ((v.abs() <= 0.22) & (u.abs() <= 0.8))
    if label == 5:
        return v < 0
    if label == 6:
        return u < 0
    if label == 7:  # one diagonal only; a horizontal flip would turn it into the other
        return torch.sin(math.pi * (x + y)) > 0
    if label == 8:
        return (u < 0) ^ (v < 0)
    return (u.abs() >= 0.7) | (v.abs() >= 0.7)


def _draw(labels: Tensor, generator: torch.Generator) -> Tensor:
    """uint8 (N, 3, IMAGE_SIZE, IMAGE_SIZE) images for the given labels."""
    n = len(labels)
    side = IMAGE_SIZE * _SUPERSAMPLE

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(n, *shape, generator=generator)

    # Near-gray colors: a random luminance with a faint tint. With fully random colors the
    # strongest cue two views share is their colors, which BYOL's color jitter barely changes.
    background = uniform(0, 1, 1)
    foreground = (background + uniform(0.3, 0.7, 1)) % 1.0
    background = (background + uniform(-0.08, 0.08, 3)).clamp(0, 1)
    foreground = (foreground + uniform(-0.08, 0.08, 3)).clamp(0, 1)
    tiles = uniform(2.0, 3.5)           # tiles across the frame: the pattern's scale
    offset = uniform(0, 1, 2)           # where the tiling starts: the pattern's position

    axis = torch.linspace(0, 1, side)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    x = xx[None] * tiles[:, None, None] + offset[:, 0, None, None]
    y = yy[None] * tiles[:, None, None] + offset[:, 1, None, None]
    mask = torch.zeros(n, side, side, dtype=torch.bool)
    for label in range(len(CLASSES)):
        rows = labels == label
        if rows.any():
            mask[rows] = _pattern(label, x[rows], y[rows])
    image = torch.where(mask[:, None], foreground[:, :, None, None],
                        background[:, :, None, None])
    image = image + 0.06 * torch.randn(n, 3, side, side, generator=generator)
    image = torch.nn.functional.avg_pool2d(image, _SUPERSAMPLE)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


@functools.cache
def demo_images(split: str = "train") -> tuple[Tensor, Tensor]:
    """The demo split as (uint8 images (N, 3, 32, 32), int64 labels (N,)), balanced classes.

    Deterministic, and cached: every call returns the same tensors, which must not be changed.
    """
    size = TRAIN_SIZE if split == "train" else VAL_SIZE
    generator = torch.Generator().manual_seed(_SPLIT_SEEDS[split])
    labels = torch.arange(size) % len(CLASSES)
    labels = labels[torch.randperm(size, generator=generator)]
    images = torch.cat([_draw(chunk, generator) for chunk in labels.split(1000)])
    return images, labels
