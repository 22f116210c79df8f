"""The transfer protocol's linear classifier: a regularized multinomial logistic regression on
frozen features, its L2 penalty chosen on a part of train held out, then refit on all of train.

As in the BYOL paper's transfer evaluation: the penalty is chosen among 45 logarithmically
spaced values from 1e-6 to 1e5, and each fit runs L-BFGS on the whole (center-crop) feature
set. Features are standardized with the fitted images' mean and spread first, so that one grid
suits every encoder.

    fit, held_out = held_out_split(labels, fraction=0.2, seed=0)
    choice = choose_penalty(features[fit], labels[fit], features[held_out], labels[held_out],
                            num_classes, settings)
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from byol.config import setting
from byol.errors import UserError
from byol.eval.knn import topk_accuracy

PENALTIES = torch.logspace(-6, 5, 45, dtype=torch.float64).tolist()


@dataclass
class TransferSettings:
    """The transfer suite's linear classifier and the part of train held out to tune it."""

    held_out: float = setting(0.2, "Share of each class of train held out to choose the L2 "
                              "penalty, before the refit on all of train.")
    iterations: int = setting(200, "L-BFGS iterations per fit at most.")
    seed: int = setting(0, "Seed for the held-out draw.")


@dataclass
class LinearFit:
    """A multinomial logistic regression on standardized features."""

    weight: Tensor  # (classes, D)
    bias: Tensor    # (classes,)
    mean: Tensor    # (D,) of the fitted features
    scale: Tensor   # (D,)

    def logits(self, features: Tensor) -> Tensor:
        return ((features - self.mean) / self.scale) @ self.weight.T + self.bias


def held_out_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(fit, held out) indices: `fraction` of each class's images held out, at least one of
    each class that has two or more."""
    generator = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for label in labels.unique(sorted=True):
        members = torch.nonzero(labels == label).view(-1).cpu()
        members = members[torch.randperm(len(members), generator=generator)]
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.append(members[:count])
        fit.append(members[count:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def fit_logistic(features: Tensor, labels: Tensor, num_classes: int, penalty: float,
                 iterations: int, start: LinearFit | None = None) -> LinearFit:
    """The logistic regression minimizing mean cross-entropy + penalty/2 * |weight|^2 over
    `features` (N, D), by L-BFGS from `start` (a fit with a nearby penalty) or from zero."""
    features = features.float()
    mean = features.mean(0)
    scale = features.std(0, unbiased=False).clamp_min(1e-6)
    standardized = (features - mean) / scale
    if start is None:
        weight = torch.zeros(num_classes, features.shape[1], device=features.device)
        bias = torch.zeros(num_classes, device=features.device)
    else:
        weight, bias = start.weight.clone(), start.bias.clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=iterations,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = (F.cross_entropy(standardized @ weight.T + bias, labels)
                + 0.5 * penalty * weight.square().sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearFit(weight.detach(), bias.detach(), mean, scale)


@dataclass
class PenaltyChoice:
    penalty: float
    held_out_top1: float
    curve: list[tuple[float, float]]  # (penalty, held-out top-1 %) for every penalty tried


def choose_penalty(fit_features: Tensor, fit_labels: Tensor, held_features: Tensor,
                   held_labels: Tensor, num_classes: int,
                   settings: TransferSettings) -> PenaltyChoice:
    """The penalty of the grid whose fit classifies the held-out images best; among equals,
    the one with the lowest held-out cross-entropy (on separable data, top-1 alone cannot tell
    a useful classifier from one flattened almost to zero). Each fit starts from the previous,
    stronger penalty's solution."""
    if len(held_labels) == 0:
        raise UserError("Too few training images to hold any out for choosing the penalty; "
                        "each class needs two or more.")
    scored, start = [], None
    for penalty in sorted(PENALTIES, reverse=True):
        start = fit_logistic(fit_features, fit_labels, num_classes, penalty,
                             settings.iterations, start)
        logits = start.logits(held_features.float())
        top1 = topk_accuracy(logits, held_labels)["top1"]
        scored.append((top1, -F.cross_entropy(logits, held_labels).item(), penalty))
    top1, _, penalty = max(scored)
    return PenaltyChoice(penalty, top1, sorted((p, t) for t, _, p in scored))
