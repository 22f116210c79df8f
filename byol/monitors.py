"""Signals of representation quality during pretraining, when the data has labels.

- LinearProbe: a linear classifier trained at every step on the online encoder's detached
  features of the first view; its loss and batch accuracy are logged. It never changes BYOL's
  training: no gradient reaches the encoder, and it has its own optimizer.
- KnnMonitor: every few steps, weighted kNN top-1/top-5 of the online encoder on a held-out
  split (see `byol.eval`), on at most a fixed subset of images so that it stays cheap.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from byol import distributed
from byol.config import PretrainConfig
from byol.data.labeled import LabeledLoader, Split, eval_splits
from byol.errors import UserError
from byol.eval.features import extract_features
from byol.eval.knn import knn_scores, topk_accuracy

# The probe's Adam lr. Adam's step does not grow with the features' size: with SGD at the
# usual 0.1, standardized 512-d features move the logits by tens per step and the probe never
# settles (online probes that use SGD get the same effect from LARS's trust ratio).
PROBE_LR = 1e-3
# Images of each split the kNN monitor uses at most: enough for a stable number, cheap enough
# to run every epoch.
KNN_TRAIN_IMAGES = 10_000
KNN_VAL_IMAGES = 5_000
KNN_K = 20  # neighbours: fewer than eval's 200, to suit the smaller bank
KNN_TEMPERATURE = 0.1


class LinearProbe(nn.Module):
    """A linear classifier on detached features, with its own Adam optimizer.

    The features are standardized first (BatchNorm without scale or shift, as in common
    linear probes), since they change scale as the encoder trains.
    """

    def __init__(self, feature_dim: int, num_classes: int, seed: int):
        super().__init__()
        # Its initialization must not shift the random stream BYOL's training draws from.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.classifier = nn.Sequential(nn.BatchNorm1d(feature_dim, affine=False),
                                            nn.Linear(feature_dim, num_classes))
        self.optimizer = torch.optim.Adam(self.classifier.parameters(), lr=PROBE_LR)

    def step(self, features: Tensor, labels: Tensor,
             skipped: Tensor | None = None) -> dict[str, Tensor]:
        """Train one step on (B, D) features; returns its loss and batch top-1 (%) as device
        tensors. Where the BYOL step's device flag `skipped` is set, its gradients are zeroed
        (on the device, NaN-safe), so non-finite features teach the probe nothing."""
        logits = self.classifier(features.detach().float())
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for parameter in self.classifier.parameters():  # the same probe on every rank
            distributed.mean_across_ranks_(parameter.grad)
            if skipped is not None:
                parameter.grad.masked_fill_(skipped.bool(), 0.0)
        self.optimizer.step()
        top1 = (logits.argmax(dim=1) == labels).float().mean() * 100
        return {"probe_loss": loss.detach(), "probe_top1": top1.detach()}

    def state_dict(self, *args, **kwargs) -> dict:
        return {"classifier": self.classifier.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        try:
            self.classifier.load_state_dict(state["classifier"])
        except RuntimeError:
            return  # a probe of an earlier layout (no standardization, SGD): start anew
        self.optimizer.load_state_dict(state["optimizer"])


def held_out_data(data: str) -> str | None:
    """The evaluation dataset that goes with a pretraining source, if one is at hand: `demo`
    for the demo data, and for a folder named train/, its parent when a val/ or test/ folder
    sits beside it."""
    if data == "demo":
        return "demo"
    path = Path(data)
    if path.name == "train" and any((path.parent / s).is_dir() for s in ("val", "test")):
        return str(path.parent)
    return None


def _subset(split: Split, limit: int, seed: int) -> Split:
    """At most `limit` images of a split, chosen at random once (the same every time)."""
    if len(split) <= limit:
        return split
    keep = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:limit]
    keep = keep.sort().values
    if split.files is not None:
        return Split(split.name, split.classes, files=[split.files[i] for i in keep],
                     labels=[split.labels[i] for i in keep])
    return Split(split.name, split.classes, images=split.images[keep],
                 image_labels=split.image_labels[keep])


class KnnMonitor:
    """kNN accuracy of an encoder on (subsets of) an evaluation dataset's two splits, its
    features computed in `precision` (the pretraining's)."""

    def __init__(self, data: str, *, image_size: int, batch_size: int, workers: int,
                 device: torch.device, seed: int, precision: str):
        train, val = eval_splits(data, option="--knn-data")
        self.data = data
        self.num_classes = len(train.classes)
        self.precision = precision
        common = dict(image_size=image_size, batch_size=batch_size, augment=False, seed=seed,
                      workers=workers, device=device)
        self.train_loader = LabeledLoader(_subset(train, KNN_TRAIN_IMAGES, seed), **common)
        self.val_loader = LabeledLoader(_subset(val, KNN_VAL_IMAGES, seed), **common)

    def evaluate(self, encoder: nn.Module) -> dict[str, float]:
        """{"knn_top1": %, "knn_top5": %}. Leaves the encoder in eval mode."""
        train_features, train_labels = extract_features(encoder, self.train_loader,
                                                        self.precision)
        val_features, val_labels = extract_features(encoder, self.val_loader, self.precision)
        scores = knn_scores(train_features, train_labels, val_features, self.num_classes,
                            k=KNN_K, temperature=KNN_TEMPERATURE)
        accuracy = topk_accuracy(scores, val_labels)
        return {"knn_top1": accuracy["top1"], "knn_top5": accuracy["top5"]}


@dataclass
class Monitors:
    """The monitors of one run: the probe (or None), the kNN monitor (None when off, and on
    every rank but 0, which alone runs it) and its schedule."""

    probe: LinearProbe | None
    knn: KnnMonitor | None
    knn_every: int  # steps between kNN checks; 0 for none
    total_steps: int
    knn_unusable: str | None = None  # why found held-out data cannot serve, if it cannot

    def knn_due(self, step: int) -> bool:
        """Whether the kNN monitor checks the `step` just done: every `knn_every` steps and
        at the end, where the end stands in for a scheduled check less than half an interval
        before it (which would measure nearly the same encoder)."""
        if self.knn is None:
            return False
        if step == self.total_steps:
            return True
        return step % self.knn_every == 0 and 2 * (self.total_steps - step) >= self.knn_every

    def check_knn(self, encoder: nn.Module) -> dict[str, float]:
        """Run the kNN monitor on the online encoder, then put it back in training mode."""
        accuracy = self.knn.evaluate(encoder)
        encoder.train()
        return accuracy


def build_monitors(config: PretrainConfig, classes: list[str] | None, feature_dim: int,
                   steps_per_epoch: int, total_steps: int, device: torch.device) -> Monitors:
    """The probe and kNN monitor a run asks for (by default: the probe when the data has
    labels, kNN once an epoch when held-out data is found).

    Held-out data found beside the training folder that cannot serve (other class folders,
    no readable image) turns the kNN monitor off, saying why in `knn_unusable`, unless the
    user asked for the monitor; then it is an error. Every rank takes rank 0's outcome."""
    probe = None
    if config.probe or (config.probe is None and classes):
        if not classes:
            raise UserError(f"--probe needs labeled data, and --data {config.data} has "
                            "none; use an image folder, shards or demo.")
        probe = LinearProbe(feature_dim, len(classes), config.seed).to(device)
    knn_data = config.knn_data or held_out_data(config.data)
    if config.knn_every and not knn_data:
        raise UserError("--knn-every needs held-out data; pass --knn-data with a folder "
                        "holding train/ and val/.")
    every = config.knn_every if config.knn_every is not None else (
        steps_per_epoch if knn_data else 0)
    if not every:
        return Monitors(probe, None, 0, total_steps)
    monitor, failure = None, None
    if distributed.current().is_main:
        try:
            monitor = KnnMonitor(knn_data, image_size=config.image_size,
                                 batch_size=config.batch_size, workers=config.workers,
                                 device=device, seed=config.seed, precision=config.precision)
        except UserError as error:
            failure = error
    # Every rank takes rank 0's outcome, so that all stop with its message or go on.
    failure = distributed.share_from_main(failure)
    if failure is None:
        return Monitors(probe, monitor, every, total_steps)
    if config.knn_data or config.knn_every is not None:
        raise failure
    return Monitors(probe, None, 0, total_steps, knn_unusable=str(failure))
