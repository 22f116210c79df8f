"""Transfer to other datasets: for each, kNN and a linear classifier on the frozen encoder's
features, one result per dataset recorded as soon as it is known.

    byolctl eval transfer --checkpoint runs/r50/last.pt /data/flowers102 /data/pets

The linear classifier is a regularized multinomial logistic regression on frozen features, its
L2 penalty chosen on a part of train held out, then refit on all of train.

As in the BYOL paper's transfer evaluation: the penalty is chosen among 45 logarithmically
spaced values from 1e-6 to 1e5, and each fit runs L-BFGS on the whole (center-crop) feature
set. Features are standardized with the fitted images' mean and spread first, so that one grid
suits every encoder.

    fit, held_out = held_out_split(labels, fraction=0.2, seed=0)
    choice = choose_penalty(features[fit], labels[fit], features[held_out], labels[held_out],
                            num_classes, settings)
"""

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from byol.config import ABOVE_0, AT_LEAST_1, SEED, Range, setting
from byol.errors import UserError
from byol.eval.knn import knn_scores, topk_accuracy
from byol.eval.session import (
    Progress,
    Setup,
    load_splits,
    result_record,
    setup_encoder,
    split_features,
)
from byol.run_folder import checkpoint_run_dir, holds_run

RESULTS_FILE = "transfer.jsonl"  # one line per finished dataset

PENALTIES = torch.logspace(-6, 5, 45, dtype=torch.float64).tolist()


@dataclass
class TransferSettings:
    """The transfer suite's linear classifier and the part of train held out to tune it."""

    held_out: float = setting(0.2, "Share of each class of train held out to choose the L2 "
                              "penalty, before the refit on all of train.",
                              allowed=Range(0, 1, above=True, below=True))
    iterations: int = setting(200, "L-BFGS iterations per fit at most.", allowed=AT_LEAST_1)
    seed: int = setting(0, "Seed for the held-out draw.", allowed=SEED)
    k: int = setting(200, "kNN: neighbours that vote.", allowed=AT_LEAST_1)
    temperature: float = setting(0.1, "kNN: votes weigh exp(cosine similarity / temperature).",
                                 allowed=ABOVE_0)
    batch_size: int = setting(256, "Images per batch of features, per process under "
                              "torchrun.", allowed=AT_LEAST_1)


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


def transfer_datasets(given: list[str]) -> list[tuple[str, str]]:
    """(name, folder) of each dataset: folders, each named after itself, or one YAML file that
    maps names to folders (relative ones from the file's folder)."""
    if len(given) == 1 and Path(given[0]).suffix in (".yaml", ".yml"):
        listing = Path(given[0])
        if not listing.is_file():
            raise UserError(f"{listing} does not exist; give a YAML file of name: folder lines, "
                            "or the dataset folders themselves.")
        try:
            named = yaml.safe_load(listing.read_text())
        except yaml.YAMLError as error:
            raise UserError(f"{listing} is not valid YAML ({error}).") from None
        if not isinstance(named, dict) or not named:
            raise UserError(f"{listing} must map dataset names to folders, one `name: folder` "
                            "a line.")
        datasets = [(str(name), str(listing.parent / str(folder)))
                    for name, folder in named.items()]
    else:
        datasets = [(Path(folder).name, folder) for folder in given]
    names = [name for name, _ in datasets]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UserError(f"Two datasets are named {twice[0]}; name them apart in a YAML file.")
    for name, folder in datasets:
        if folder != "demo" and not Path(folder).is_dir():
            raise UserError(f"Dataset {name}: no folder {folder}; check the path.")
    return datasets


def transfer_folder(checkpoint: Path | None, out: Path | None) -> Path:
    """Where the suite records its results: `out`, or `transfer/` in the checkpoint's run
    folder."""
    if out is not None:
        return out
    run_dir = checkpoint_run_dir(checkpoint) if checkpoint is not None else None
    if run_dir is None or not holds_run(run_dir):
        raise UserError("Name a folder for the suite's results with --out: the encoder is in "
                        "no run folder.")
    return run_dir / "transfer"


def evaluate_transfer(checkpoint: Path | None, datasets: list[str], *,
                      arch: str | None = None, weights: str | None = None,
                      settings: TransferSettings | None = None, image_size: int | None = None,
                      device: str = "cpu", precision: str | None = None, workers: int = 4,
                      out: Path | None = None, resume: bool = False,
                      on_progress: Progress | None = None,
                      on_result: Callable[[dict[str, Any]], None] | None = None,
                      ) -> list[dict[str, Any]]:
    """One result per dataset: kNN and linear top-1/top-5 (%) on its val (or test) split.

    Each dataset's result is appended to the suite's results file (see `transfer_folder`) as
    soon as it is known, and handed to `on_result`; `resume` skips the datasets that file holds
    for the same encoder and settings."""
    settings = settings or TransferSettings()
    named = transfer_datasets(datasets)
    setup = setup_encoder(checkpoint, arch, weights, image_size, device, precision)
    results_file = transfer_folder(checkpoint, out) / RESULTS_FILE
    identity = {"checkpoint": setup.described["checkpoint"], "weights": weights,
                "step": setup.described["step"], "image_size": setup.image_size,
                **dataclasses.asdict(settings)}
    finished = _finished(results_file, identity) if resume else {}
    if not resume and results_file.exists():
        raise UserError(f"{results_file} holds an earlier suite's results; add --resume to "
                        "skip the datasets it finished, or name another folder with --out.")
    results = []
    for name, folder in named:
        data = folder if folder == "demo" else str(Path(folder).resolve())
        result = finished.get((name, data))
        if result is None:
            result = _transfer_one(setup, name, data, settings, workers, on_progress)
            result["identity"] = identity
            if setup.processes.is_main:
                results_file.parent.mkdir(parents=True, exist_ok=True)
                with results_file.open("a") as file:
                    file.write(json.dumps(result) + "\n")
        else:
            result = {**result, "resumed": True}
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _finished(results_file: Path, identity: dict[str, Any]) -> dict[tuple[str, str], dict]:
    """The results `results_file` holds for this encoder and these settings, by (dataset,
    folder)."""
    if not results_file.is_file():
        raise UserError(f"Nothing to resume: no {results_file}; leave out --resume.")
    finished = {}
    for number, line in enumerate(results_file.read_text().splitlines(), start=1):
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            if number == len(results_file.read_text().splitlines()):
                continue  # a line cut short by an interruption: that dataset runs again
            raise UserError(f"{results_file} line {number} is not JSON; remove that line or "
                            "leave out --resume.") from None
        if result.get("identity") == identity:
            finished[result["dataset"], result["data"]] = result
    return finished


def _transfer_one(setup: Setup, name: str, data: str, settings: TransferSettings,
                  workers: int, on_progress: Progress | None) -> dict[str, Any]:
    started = time.perf_counter()
    train, val = load_splits(data, setup.processes)
    train_features, train_labels = split_features(setup, train, settings.batch_size, workers,
                                                  on_progress)
    val_features, val_labels = split_features(setup, val, settings.batch_size, workers,
                                              on_progress)
    classes = len(train.classes)
    knn = topk_accuracy(knn_scores(train_features, train_labels, val_features, classes,
                                   k=settings.k, temperature=settings.temperature), val_labels)
    fit, held = held_out_split(train_labels, settings.held_out, settings.seed)
    choice = choose_penalty(train_features[fit], train_labels[fit], train_features[held],
                            train_labels[held], classes, settings)
    final = fit_logistic(train_features, train_labels, classes, choice.penalty,
                         settings.iterations)
    linear = topk_accuracy(final.logits(val_features.float()), val_labels)
    accuracy = {"knn_top1": knn["top1"], "knn_top5": knn["top5"],
                "linear_top1": linear["top1"], "linear_top5": linear["top5"]}
    recorded = {"dataset": name, "penalty": choice.penalty,
                "held_out_top1": choice.held_out_top1, "held_out_images": len(held),
                **dataclasses.asdict(settings)}
    return result_record("transfer", data, setup, train, val, recorded, accuracy, started)
