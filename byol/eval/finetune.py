"""Semi-supervised fine-tuning: the whole pretrained encoder and a new linear classifier,
trained together on a labeled part of the training split (the paper's 1% and 10% protocol,
and the fine-tuned transfer protocol with every label).

    byolctl eval finetune --checkpoint runs/r50/last.pt --data /datasets/imagenet --labels 1%

As in the BYOL paper's appendix: random resized crops and flips for training, a center crop
for testing; cross-entropy, SGD with Nesterov momentum 0.9 and no weight decay; BatchNorm in
training mode, its statistics updated, and synchronized across processes on GPUs. The paper
sweeps the learning rate over {0.005, 0.01, 0.02, 0.05, 0.1} at batch 1024 and the epochs over
{30, 50}, choosing on a part of train held out; the defaults are one point of that sweep
(0.02 at batch 1024, that is 0.005 per 256 images, and 30 epochs), the lr following a cosine
to 0.
"""

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from byol.checkpoint import atomic_save, atomic_write_text
from byol.config import ABOVE_0, AT_LEAST_0, AT_LEAST_1, FRACTION, SEED, TRAINING_BATCH, setting
from byol.data.dali import augmentation_seed
from byol.data.labeled import LabeledLoader
from byol.errors import UserError
from byol.eval.encoder import SAFETENSORS_FORMAT, backbone_state_dict, save_safetensors
from byol.eval.knn import topk_accuracy
from byol.eval.linear import cosine_to_zero
from byol.eval.session import (
    Progress,
    load_splits,
    result_record,
    setup_encoder,
    split_features,
    unfinished_state,
)
from byol.eval.subsets import choose_labeled, describe, take
from byol.run_folder import checkpoint_run_dir, holds_run
from byol.runtime import autocast

# The files of a fine-tuning's folder.
IMAGES_FILE = "labeled-images.txt"  # the labeled images, one per line, as --labels FILE reads
STATE_FILE = "state.pt"             # after every epoch, until it finishes
RESULT_FILE = "result.json"


@dataclass
class FinetuneSettings:
    """The fine-tuning's training settings."""

    epochs: int = setting(30, "Passes over the labeled images.", allowed=AT_LEAST_1)
    batch_size: int = setting(256, "Images per step, per process under torchrun.",
                              allowed=TRAINING_BATCH)
    lr: float = setting(0.005, "SGD (Nesterov) base learning rate per 256 images, cosine to 0 "
                        "(the paper's 0.02 at batch 1024).", allowed=ABOVE_0)
    momentum: float = setting(0.9, "Nesterov momentum.", allowed=FRACTION)
    weight_decay: float = setting(0.0, "L2 weight decay (the paper uses none).",
                                  allowed=AT_LEAST_0)
    seed: int = setting(0, "Seed for the labeled subset's draw, the classifier's "
                        "initialization and the augmentations.", allowed=SEED)


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
        self.scheduler = cosine_to_zero(self.optimizer, settings.epochs * steps_per_epoch)

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


def finetune_folder(checkpoint: Path | None, labels: str | None, seed: int,
                    out: Path | None) -> Path:
    """Where a fine-tuning keeps its labeled-image list, its state between epochs and its
    result: `out`, or a folder named after the labels and seed in the checkpoint's run
    folder."""
    if out is not None:
        return out
    run_dir = checkpoint_run_dir(checkpoint) if checkpoint is not None else None
    if run_dir is None or not holds_run(run_dir) or not os.access(run_dir, os.W_OK):
        raise UserError("Name a folder for the fine-tuning's files with --out: the encoder is "
                        "in no run folder that can be written.")
    return run_dir / f"finetune-{_labels_name(labels)}-seed{seed}"


def _labels_name(labels: str | None) -> str:
    if labels is None:
        return "all"
    if labels.endswith("%"):
        return labels[:-1] + "pct"
    if labels.isdigit():
        return f"{labels}-per-class"
    return Path(labels).stem


def evaluate_finetune(checkpoint: Path | None, data: str, *, arch: str | None = None,
                      weights: str | None = None, labels: str | None = None,
                      settings: FinetuneSettings | None = None, image_size: int | None = None,
                      device: str = "cpu", precision: str | None = None, workers: int = 4,
                      compile: bool = False, out: Path | None = None, resume: bool = False,
                      save: Path | None = None,
                      on_progress: Progress | None = None) -> dict[str, Any]:
    """Top-1/top-5 (%) on the val split of the encoder fine-tuned with a classifier on the
    train split's images that `labels` selects (see `byol.eval.subsets`; all without it).

    The fine-tuning's folder (see `finetune_folder`) receives the list of labeled images, the
    state after every epoch (`resume` continues from it) and the result; `save` receives the
    fine-tuned network as a torchvision ResNet state dict with its fc layer."""
    settings = settings or FinetuneSettings()
    started = time.perf_counter()
    if save is not None:
        check_new_file(save, "--save")
    setup = setup_encoder(checkpoint, arch, weights, image_size, device, precision)
    folder = finetune_folder(checkpoint, labels, settings.seed, out)
    state_file = folder / STATE_FILE
    labels_given = str(Path(labels).resolve()) if labels and Path(labels).is_file() else labels
    identity = {"checkpoint": setup.described["checkpoint"], "weights": weights,
                "step": setup.described["step"],
                "data": data if data == "demo" else str(Path(data).resolve()),
                "labels": labels_given, "image_size": setup.image_size,
                "precision": setup.precision, "processes": setup.processes.world_size,
                **dataclasses.asdict(settings)}
    # Checked before the files are listed, which takes minutes for ImageNet.
    state = None
    if resume:
        state = unfinished_state(state_file, identity, setup.device, "eval finetune")
    elif state_file.exists() or (folder / RESULT_FILE).exists():
        raise UserError(f"{folder} holds an earlier fine-tuning; add --resume to continue an "
                        "unfinished one, or name another folder with --out.")
    train, val = load_splits(data, setup.processes)
    chosen = (choose_labeled(train, labels, settings.seed) if labels
              else np.arange(len(train)))
    labeled = take(train, chosen)
    images_file = folder / IMAGES_FILE
    if setup.processes.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(images_file, "\n".join(describe(train, chosen)) + "\n")

    def keep(progress: dict[str, Any]) -> None:
        if setup.processes.is_main:
            atomic_save({"identity": identity, **progress}, state_file)

    trainer, last_loss = _train(setup, labeled, settings, workers, compile, state, on_progress,
                                keep)
    tuned = dataclasses.replace(setup, encoder=trainer.encoder)
    val_features, val_labels = split_features(tuned, val, settings.batch_size, workers,
                                              on_progress)
    with torch.no_grad():
        accuracy = topk_accuracy(trainer.classifier(val_features.float()), val_labels)
    recorded = {"labels": labels or "all", "labeled_images": len(labeled),
                "last_epoch_loss": round(last_loss, 4),
                "labeled_images_file": str(images_file.resolve()), "folder": str(folder),
                **dataclasses.asdict(settings)}
    if state:
        recorded["resumed_from_epoch"] = state["epoch"]
    if save is not None and setup.processes.is_main:
        _save_network(trainer, setup.arch, setup.image_size, save)
        recorded["saved"] = str(save)
    result = result_record("finetune", data, setup, train, val, recorded, accuracy, started)
    if setup.processes.is_main:
        atomic_write_text(folder / RESULT_FILE, json.dumps(result, indent=2) + "\n")
        state_file.unlink(missing_ok=True)  # finished: nothing left to resume
    return result


def _train(setup, labeled, settings: FinetuneSettings, workers: int, compile: bool,
           state: dict[str, Any] | None, on_progress: Progress | None,
           keep: Callable[[dict[str, Any]], None]) -> tuple[FinetuneTrainer, float]:
    """The fine-tuned network and its last epoch's mean loss, from `state` (an unfinished
    fine-tuning's) if given, handing its state to `keep` after every epoch. Under torchrun each
    process trains on its share."""
    rank, processes = setup.processes.rank, setup.processes.world_size
    share = labeled.shard(rank, processes, equal=True)  # the same steps on every rank
    if len(share) < 2:
        raise UserError(f"{len(labeled)} labeled images cannot be shared by "
                        f"{processes} processes with two or more each (BatchNorm needs two); "
                        "give more labels or use fewer processes.")
    start = state["epoch"] if state else 0
    # Resumed epochs draw other crops than the first epochs did.
    batches = LabeledLoader(share, image_size=setup.image_size,
                            batch_size=settings.batch_size, augment=True,
                            seed=augmentation_seed(settings.seed + start, rank),
                            workers=workers, device=setup.device)
    trainer = FinetuneTrainer(setup.encoder, setup.feature_dim, len(labeled.classes), settings,
                              math.ceil(len(share) / settings.batch_size), setup.device,
                              setup.precision, processes, compile)

    losses = [math.nan]

    def on_epoch(epoch: int, loss: float) -> None:
        losses.append(loss)
        if on_progress is not None:
            on_progress("fine-tuning epochs", epoch, settings.epochs)

    on_epoch(start, math.nan)
    finetune(trainer, batches, settings.epochs, state, keep, on_epoch)
    return trainer, losses[-1]


def check_new_file(path: Path, option: str) -> None:
    """UserError unless `path` can be a new file: checked before hours of training."""
    if path.exists():
        raise UserError(f"{option} {path} already exists; choose another file.")
    if not path.parent.is_dir():
        raise UserError(f"{option} {path}: the folder {path.parent} does not exist; create it "
                        "first.")


def _save_network(trainer: FinetuneTrainer, arch: str, image_size: int, out: Path) -> None:
    """The fine-tuned network as a torchvision ResNet state dict, its classifier as `fc`: a
    .safetensors file (no pickle, architecture in the metadata) or a torch.save one."""
    tensors = backbone_state_dict(trainer.encoder)
    tensors.update({f"fc.{name}": value.detach().clone()
                    for name, value in trainer.classifier.state_dict().items()})
    if out.suffix == ".safetensors":
        save_safetensors(tensors, {"format": SAFETENSORS_FORMAT, "arch": arch,
                                   "image_size": str(image_size)}, out)
    else:
        atomic_save(tensors, out)
