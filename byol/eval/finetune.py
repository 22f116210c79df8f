"""Semi-supervised fine-tuning: the whole pretrained encoder and a new linear classifier,
trained together on a labeled part of the training split (the paper's 1% and 10% protocol,
and the fine-tuned transfer protocol with every label).

As in the BYOL paper's appendix: random resized crops and flips for training, a center crop
for testing; cross-entropy, SGD with Nesterov momentum 0.9 and no weight decay; BatchNorm in
training mode, its statistics updated, and synchronized across processes on GPUs. The paper
sweeps the learning rate over {0.005, 0.01, 0.02, 0.05, 0.1} at batch 1024 and the epochs over
{30, 50}, choosing on a part of train held out; the defaults are one point of that sweep
(0.02 at batch 1024, that is 0.005 per 256 images, and 30 epochs), the lr following a cosine
to 0.
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from byol.config import setting
from byol.runtime import autocast


@dataclass
class FinetuneSettings:
    """The fine-tuning's training settings."""

    epochs: int = setting(30, "Passes over the labeled images.")
    batch_size: int = setting(256, "Images per step, per process under torchrun.")
    lr: float = setting(0.005, "SGD (Nesterov) base learning rate per 256 images, cosine to 0 "
                        "(the paper's 0.02 at batch 1024).")
    momentum: float = setting(0.9, "Nesterov momentum.")
    weight_decay: float = setting(0.0, "L2 weight decay (the paper uses none).")
    seed: int = setting(0, "Seed for the labeled subset's draw, the classifier's "
                        "initialization and the augmentations.")


class FinetuneTrainer:
    """An encoder with a new linear classifier on top, and their optimizer over
    `total_steps` cosine-scheduled steps.

    Under torchrun (`processes` > 1) the network trains with DDP, gradients averaged and the
    lr following the global batch; on GPUs its BatchNorm layers are synchronized (SyncBatchNorm,
    which needs CUDA), so that statistics span the global batch as on one device."""

    def __init__(self, encoder: nn.Module, feature_dim: int, num_classes: int,
                 settings: FinetuneSettings, steps_per_epoch: int, device: torch.device,
                 precision: str = "fp32", processes: int = 1, compile: bool = False):
        torch.manual_seed(settings.seed)
        self.classifier = nn.Linear(feature_dim, num_classes).to(device)
        self.network = nn.Sequential(encoder, self.classifier)
        self.network.requires_grad_(True)
        self.device, self.precision = device, precision
        model: nn.Module = self.network
        if processes > 1:
            if device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.network = model
            model = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.model = torch.compile(model) if compile else model
        self.optimizer = torch.optim.SGD(
            self.network.parameters(), lr=settings.lr * settings.batch_size * processes / 256,
            momentum=settings.momentum, nesterov=True, weight_decay=settings.weight_decay)
        total_steps = max(1, settings.epochs * steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps)))

    @property
    def encoder(self) -> nn.Module:
        return self.network[0]

    def state_dict(self) -> dict[str, Any]:
        """The network, its momenta and its place on the lr schedule."""
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def step(self, images: Tensor, labels: Tensor) -> Tensor:
        """One SGD step of the whole network on a batch; returns the loss (a device tensor)."""
        self.network.train()
        with autocast(self.device, self.precision):
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()


def finetune(trainer: FinetuneTrainer, batches: Iterable[tuple[Tensor, Tensor]],
             epochs: int, state: dict[str, Any] | None = None,
             on_state: Callable[[dict[str, Any]], None] | None = None,
             on_epoch: Callable[[int, float], None] | None = None) -> None:
    """Train for `epochs` over `batches` (augmented images, labels), from `state` (an
    unfinished fine-tuning's, given by `on_state` after its last finished epoch) if given.
    `on_epoch` gets each finished epoch and its mean loss."""
    if state is not None:
        trainer.load_state_dict(state["trainer"])
    for epoch in range(state["epoch"] if state else 0, epochs):
        total, count = torch.zeros((), device=trainer.device), 0
        for images, labels in batches:
            total += trainer.step(images, labels) * len(labels)
            count += len(labels)
        if on_state is not None:
            on_state({"epoch": epoch + 1, "trainer": trainer.state_dict()})
        if on_epoch is not None:
            on_epoch(epoch + 1, total.item() / max(1, count))
