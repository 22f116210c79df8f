"""Frozen-encoder features of a labeled split."""

from collections.abc import Callable

import torch
from torch import Tensor, nn

from byol.data.labeled import LabeledLoader
from byol.runtime import autocast


@torch.no_grad()
def extract_features(encoder: nn.Module, loader: LabeledLoader, precision: str = "fp32",
                     on_batch: Callable[[int], None] | None = None) -> tuple[Tensor, Tensor]:
    """(features (N, D) fp32, labels (N,)) of every image of the loader's epoch, with the
    encoder in eval mode (BatchNorm uses its running statistics), computed in `precision`.
    `on_batch` gets each batch's size, for progress."""
    encoder.eval()
    features, labels = [], []
    for images, batch_labels in loader:
        with autocast(images.device, precision):
            features.append(encoder(images).float())
        labels.append(batch_labels)
        if on_batch is not None:
            on_batch(len(batch_labels))
    return torch.cat(features), torch.cat(labels)
