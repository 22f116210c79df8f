"""The evaluations behind `byolctl eval knn` and `byolctl eval linear`.

    byolctl eval knn    --checkpoint runs/r50/last.pt --data /datasets/imagenet
    byolctl eval linear --checkpoint runs/r50/last.pt --data /datasets/imagenet

Each returns a result dict (the numbers, the protocol and the data) that `record_result` also
appends to the run folder's evaluations.jsonl.

Under torchrun, each process computes the features of its share of the images and every
process then holds them all (see `byol.distributed.gather_rows`); the full protocol's
classifier trains on every process at once, gradients averaged (DDP).
"""

import dataclasses
import json
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from byol import distributed
from byol.checkpoint import atomic_save
from byol.data.dali import augmentation_seed
from byol.data.labeled import LabeledLoader, Split, eval_splits
from byol.errors import UserError, plural
from byol.eval.encoder import load_encoder
from byol.eval.features import extract_features
from byol.eval.knn import KnnSettings, knn_scores, topk_accuracy
from byol.eval.linear import LinearSettings, classify, train_on_features, train_on_images
from byol.run_folder import (
    EVALUATIONS_FILE,
    LINEAR_STATE_FILE,
    checkpoint_run_dir,
    holds_run,
)
from byol.runtime import default_precision, process_device, to_runtime_layout

PROTOCOLS = ("full", "cached")

# on_progress(task, completed, total): a task's progress, e.g. ("train features", 512, 50000).
Progress = Callable[[str, int, int], None]


@dataclasses.dataclass
class Setup:
    """A frozen encoder on its device, and how to run it."""

    encoder: nn.Module
    feature_dim: int
    described: dict[str, Any]  # what was evaluated (LoadedEncoder.description)
    arch: str
    image_size: int
    device: torch.device
    precision: str
    processes: distributed.Processes


def _setup(checkpoint: Path | None, arch: str | None, weights: str | None,
           image_size: int | None, device: str, precision: str | None) -> Setup:
    processes = distributed.setup(device)
    loaded = load_encoder(checkpoint, arch, weights)
    target = process_device(device, processes.local_rank, processes.enabled)
    precision = precision or default_precision(device)
    encoder = to_runtime_layout(loaded.encoder, target, precision)
    encoder.requires_grad_(False)
    return Setup(encoder, loaded.feature_dim, loaded.description(), loaded.arch,
                 image_size or loaded.image_size, target, precision, processes)


def _splits(data: str, processes: distributed.Processes) -> tuple[Split, Split]:
    """The dataset's (train, val). Under torchrun, rank 0 alone lists and checks the files,
    and every process gets its lists: their shares must be cut from the same ones."""
    splits = distributed.decided_by_main(lambda: eval_splits(data))
    for split in splits:
        if len(split) < processes.world_size:
            raise UserError(f"The {split.name} split holds {plural(len(split), 'image')}, fewer "
                            f"than the {processes.world_size} processes; evaluate it with fewer.")
    return splits


def _features(setup: Setup, split: Split, batch_size: int, workers: int,
              on_progress: Progress | None):
    """(features, labels) of the whole split, each process computing its share."""
    processes = setup.processes.world_size
    share = split.shard(setup.processes.rank, processes)
    loader = LabeledLoader(share, image_size=setup.image_size, batch_size=batch_size,
                           augment=False, seed=0, workers=workers, device=setup.device)
    task = f"{split.name} features" + (f" (a 1/{processes} share)" if processes > 1 else "")
    done = 0
    if on_progress is not None:
        on_progress(task, 0, len(share))  # the bar shows from the start

    def on_batch(size: int) -> None:
        nonlocal done
        done += size
        if on_progress is not None:
            on_progress(task, done, len(share))

    features, labels = extract_features(setup.encoder, loader, setup.precision, on_batch)
    return distributed.gather_rows(features), distributed.gather_rows(labels)


def _result(kind: str, data: str, setup: Setup, train: Split, val: Split,
            settings: dict, accuracy: dict[str, float], started: float) -> dict[str, Any]:
    skipped = len(train.skipped or []) + len(val.skipped or [])
    return {
        "evaluation": kind, **accuracy, **setup.described,
        "arch": setup.arch,
        "data": data, "classes": len(train.classes),
        "train_images": len(train), "val_images": len(val),
        "val_split": val.name, "skipped_images": skipped,
        "image_size": setup.image_size, "device": str(setup.device),
        "processes": setup.processes.world_size, "precision": setup.precision, **settings,
        "seconds": round(time.perf_counter() - started, 2),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def evaluate_knn(checkpoint: Path | None, data: str, *, arch: str | None = None,
                 weights: str | None = None, k: int = KnnSettings.k,
                 temperature: float = KnnSettings.temperature,
                 batch_size: int = KnnSettings.batch_size, image_size: int | None = None,
                 device: str = "cpu",
                 precision: str | None = None, workers: int = 4,
                 on_progress: Progress | None = None) -> dict[str, Any]:
    """Weighted kNN top-1/top-5 (%) of the val split against the train split's features.
    `precision` (bf16 or fp32) defaults to bf16 on a GPU and fp32 on the CPU. The encoder is
    `checkpoint`'s or torchvision's `weights` (see `byol.eval.encoder.load_encoder`)."""
    started = time.perf_counter()
    setup = _setup(checkpoint, arch, weights, image_size, device, precision)
    train, val = _splits(data, setup.processes)
    train_features, train_labels = _features(setup, train, batch_size, workers, on_progress)
    val_features, val_labels = _features(setup, val, batch_size, workers, on_progress)
    k = min(k, len(train))  # what votes (and is recorded) with fewer training images
    scores = knn_scores(train_features, train_labels, val_features, len(train.classes),
                        k=k, temperature=temperature)
    return _result("knn", data, setup, train, val,
                   {"k": k, "temperature": temperature}, topk_accuracy(scores, val_labels),
                   started)


def linear_state_file(checkpoint: Path | None) -> Path | None:
    """Where the full protocol keeps its state between epochs (rewritten after every one): in
    the checkpoint's run folder, if it is in one that can be written."""
    if checkpoint is None:  # torchvision's weights
        return None
    run_dir = checkpoint_run_dir(checkpoint)
    if not holds_run(run_dir) or not os.access(run_dir, os.W_OK):
        return None
    return run_dir / LINEAR_STATE_FILE


def _unfinished_state(state_file: Path | None, identity: dict[str, Any],
                      device: torch.device) -> dict[str, Any]:
    """The saved state of an unfinished evaluation with this `identity`; UserError if there
    is none."""
    if state_file is None:
        raise UserError("--resume needs the checkpoint in its run folder (one that can be "
                        "written), where eval linear keeps an unfinished evaluation.")
    if not state_file.is_file():
        raise UserError(f"Nothing to resume: no {state_file} (eval linear --protocol full "
                        "writes it after every epoch and removes it when done); leave out "
                        "--resume.")
    try:
        state = torch.load(state_file, map_location=device, weights_only=True)
        saved = state["identity"]
    except Exception as error:
        raise UserError(f"{state_file} cannot be read ({type(error).__name__}); leave out "
                        "--resume to start over.") from error
    differs = [key for key, value in identity.items() if saved.get(key) != value]
    if differs:
        raise UserError(f"The unfinished evaluation in {state_file} had another "
                        f"{', '.join(differs)}; give the same to resume it, or leave out "
                        "--resume to start over.")
    return state


def evaluate_linear(checkpoint: Path | None, data: str, *, arch: str | None = None,
                    weights: str | None = None, protocol: str = "full",
                    settings: LinearSettings | None = None, image_size: int | None = None,
                    device: str = "cpu", precision: str | None = None, workers: int = 4,
                    resume: bool = False,
                    on_progress: Progress | None = None) -> dict[str, Any]:
    """Top-1/top-5 (%) on the val split of a linear classifier trained on frozen features,
    computed in `precision` (as `evaluate_knn`).

    The full protocol saves its state after every epoch (see `linear_state_file`); `resume`
    continues an unfinished evaluation of the same checkpoint, data and settings from it."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}")
    if resume and protocol != "full":
        raise UserError("--resume continues --protocol full, which saves its state after "
                        "every epoch; the cached protocol starts over.")
    settings = settings or LinearSettings()
    started = time.perf_counter()
    setup = _setup(checkpoint, arch, weights, image_size, device, precision)
    recorded = {"protocol": protocol, **dataclasses.asdict(settings)}
    state_file, state = None, None
    if protocol == "full":
        state_file = linear_state_file(checkpoint)
        data_path = data if data == "demo" else str(Path(data).resolve())
        identity = {"checkpoint": setup.described["checkpoint"],
                    "step": setup.described["step"], "data": data_path,
                    "image_size": setup.image_size, "precision": setup.precision,
                    "processes": setup.processes.world_size,
                    **dataclasses.asdict(settings)}
        # Checked before the files are listed, which takes minutes for ImageNet.
        state = _unfinished_state(state_file, identity, setup.device) if resume else None
        if state:
            recorded["resumed_from_epoch"] = state["epoch"]
    train, val = _splits(data, setup.processes)

    def on_epoch(epoch: int) -> None:
        if on_progress is not None:
            on_progress("linear classifier epochs", epoch, settings.epochs)

    if protocol == "cached":
        features, labels = _features(setup, train, settings.batch_size, workers, on_progress)
        on_epoch(0)  # each bar shows from its task's start
        classifier = train_on_features(features, labels, len(train.classes), settings,
                                       on_epoch)
    else:
        def keep(progress: dict[str, Any]) -> None:
            if state_file is not None and setup.processes.is_main:
                atomic_save({"identity": identity, **progress}, state_file)

        classifier = _train_on_images(setup, train, settings, workers, state, keep, on_epoch)
    val_features, val_labels = _features(setup, val, settings.batch_size, workers,
                                         on_progress)
    accuracy = topk_accuracy(classify(classifier, val_features), val_labels)
    if state_file is not None and setup.processes.is_main:
        state_file.unlink(missing_ok=True)  # finished: nothing left to resume
    return _result("linear", data, setup, train, val, recorded, accuracy, started)


def _train_on_images(setup: Setup, train: Split, settings: LinearSettings, workers: int,
                     state: dict[str, Any] | None, keep: Callable[[dict[str, Any]], None],
                     on_epoch: Callable[[int], None]) -> nn.Linear:
    """The full protocol's classifier, from `state` (an unfinished evaluation's) if given,
    handing its state to `keep` after every epoch."""
    rank, processes = setup.processes.rank, setup.processes.world_size
    share = train.shard(rank, processes, equal=True)  # the same steps on every rank
    start = state["epoch"] if state else 0
    # Resumed epochs draw other crops than the first epochs did.
    batches = LabeledLoader(share, image_size=setup.image_size,
                            batch_size=settings.batch_size, augment=True,
                            seed=augmentation_seed(settings.seed + start, rank),
                            workers=workers, device=setup.device)
    on_epoch(start)
    return train_on_images(setup.encoder, batches, len(share), setup.feature_dim,
                           len(train.classes), settings, setup.precision, on_epoch,
                           processes=processes, state=state, on_state=keep)


def record_result(result: dict[str, Any], run_dir: Path) -> Path:
    """Append `result` as one JSON line to the run folder's evaluations.jsonl."""
    path = run_dir / EVALUATIONS_FILE
    with path.open("a") as file:
        file.write(json.dumps(result) + "\n")
    return path
