"""A linear classifier on frozen features: the standard protocol for self-supervised encoders.

SGD with Nesterov momentum 0.9, no weight decay, the lr following a cosine from its base value
to 0 over all steps, as in the official BYOL evaluation. Two protocols:
- full: every epoch sees new random resized crops and flips of the training images, passed
  through the frozen encoder (BatchNorm in eval mode);
- cached: center-crop features are extracted once and the classifier trains on them alone,
  seconds on a GPU, for quick comparisons between checkpoints.
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from byol.config import ABOVE_0, AT_LEAST_1, FRACTION, SEED, setting
from byol.runtime import autocast


@dataclass
class LinearSettings:
    """The classifier's training settings."""

    epochs: int = setting(90, "Classifier epochs: passes over the training split.",
                          allowed=AT_LEAST_1)
    batch_size: int = setting(256, "Images (or features) per step, per process under "
                              "torchrun.", allowed=AT_LEAST_1)
    lr: float = setting(0.1, "SGD (Nesterov) base learning rate per 256 images, cosine to 0.",
                        allowed=ABOVE_0)
    momentum: float = setting(0.9, "Nesterov momentum.", allowed=FRACTION)
    seed: int = setting(0, "Seed for the classifier's initialization and the order of cached "
                        "features.", allowed=SEED)


def cosine_to_zero(optimizer: torch.optim.Optimizer,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The lr from its base value to 0 on a cosine over `total_steps` steps."""
    total_steps = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))


class LinearTrainer:
    """A linear layer and its optimizer over `total_steps` cosine-scheduled steps."""

    def __init__(self, feature_dim: int, num_classes: int, settings: LinearSettings,
                 steps_per_epoch: int, device: torch.device, processes: int = 1):
        """With `processes` > 1 (under torchrun, each on its own batches), the gradients are
        averaged over them and the lr follows the global batch."""
        torch.manual_seed(settings.seed)
        self.classifier = nn.Linear(feature_dim, num_classes).to(device)
        self.model: nn.Module = self.classifier
        if processes > 1:
            self.model = DistributedDataParallel(
                self.classifier, device_ids=[device.index] if device.type == "cuda" else None)
        self.optimizer = torch.optim.SGD(
            self.classifier.parameters(), lr=settings.lr * settings.batch_size * processes / 256,
            momentum=settings.momentum, nesterov=True, weight_decay=0.0)
        self.scheduler = cosine_to_zero(self.optimizer, settings.epochs * steps_per_epoch)

    def state_dict(self) -> dict[str, Any]:
        """The classifier, its momenta and its place on the lr schedule."""
        return {"classifier": self.classifier.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.classifier.load_state_dict(state["classifier"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def step(self, features: Tensor, labels: Tensor) -> Tensor:
        """One SGD step on a batch of features (B, D); returns the loss (a device tensor)."""
        loss = F.cross_entropy(self.model(features.float()), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()


def train_on_features(features: Tensor, labels: Tensor, num_classes: int,
                      settings: LinearSettings,
                      on_epoch: Callable[[int], None] | None = None) -> nn.Linear:
    """The cached protocol: a classifier trained on precomputed features (N, D)."""
    steps_per_epoch = math.ceil(len(features) / settings.batch_size)
    trainer = LinearTrainer(features.shape[1], num_classes, settings, steps_per_epoch,
                            features.device)
    generator = torch.Generator().manual_seed(settings.seed)
    for epoch in range(settings.epochs):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        for batch in order.split(settings.batch_size):
            trainer.step(features[batch], labels[batch])
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return trainer.classifier


def train_on_images(encoder: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                    num_images: int, feature_dim: int, num_classes: int,
                    settings: LinearSettings, precision: str = "fp32",
                    on_epoch: Callable[[int], None] | None = None,
                    processes: int = 1, state: dict[str, Any] | None = None,
                    on_state: Callable[[dict[str, Any]], None] | None = None) -> nn.Linear:
    """The full protocol: each epoch iterates `batches` (augmented images, labels) through the
    frozen encoder, in `precision`, and trains the classifier on the features. Under torchrun,
    `processes` of them train together, each on `num_images` of its own.

    After every epoch `on_state` gets the training's state ({"epoch", "trainer"}; its tensors
    are the live ones, to be saved or copied at once); given as `state`, it continues the
    training after that epoch."""
    encoder.eval()
    device = next(encoder.parameters()).device
    trainer = LinearTrainer(feature_dim, num_classes, settings,
                            math.ceil(num_images / settings.batch_size), device, processes)
    if state is not None:
        trainer.load_state_dict(state["trainer"])
    for epoch in range(state["epoch"] if state else 0, settings.epochs):
        for images, labels in batches:
            with torch.no_grad(), autocast(device, precision):
                features = encoder(images)
            trainer.step(features, labels)
        if on_state is not None:
            on_state({"epoch": epoch + 1, "trainer": trainer.state_dict()})
        if on_epoch is not None:
            on_epoch(epoch + 1)
    return trainer.classifier


@torch.no_grad()
def classify(classifier: nn.Linear, features: Tensor) -> Tensor:
    """(N, classes) logits."""
    return classifier(features.float())
