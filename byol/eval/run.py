"""The evaluations behind `byolctl eval knn` and `byolctl eval linear`.

    byolctl eval knn    --checkpoint runs/r50/last.pt --data /datasets/imagenet
    byolctl eval linear --checkpoint runs/r50/last.pt --data /datasets/imagenet

Each returns a result dict (the numbers, the protocol and the data) that
`byol.eval.session.record_result` also appends to the run folder's evaluations.jsonl.

Under torchrun, each process computes the features of its share of the images and every
process then holds them all (see `byol.distributed.gather_rows`); the full protocol's
classifier trains on every process at once, gradients averaged (DDP).
"""

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from byol.checkpoint import atomic_save
from byol.data.dali import augmentation_seed
from byol.data.labeled import LabeledLoader, Split
from byol.errors import UserError
from byol.eval.knn import KnnSettings, knn_scores, topk_accuracy
from byol.eval.linear import LinearSettings, classify, train_on_features, train_on_images
from byol.eval.session import (
    Progress,
    Setup,
    load_splits,
    result_record,
    setup_encoder,
    split_features,
    unfinished_state,
)
from byol.run_folder import LINEAR_STATE_FILE, checkpoint_run_dir, holds_run

PROTOCOLS = ("full", "cached")


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
    setup = setup_encoder(checkpoint, arch, weights, image_size, device, precision)
    train, val = load_splits(data, setup.processes)
    train_features, train_labels = split_features(setup, train, batch_size, workers, on_progress)
    val_features, val_labels = split_features(setup, val, batch_size, workers, on_progress)
    k = min(k, len(train))  # what votes (and is recorded) with fewer training images
    scores = knn_scores(train_features, train_labels, val_features, len(train.classes),
                        k=k, temperature=temperature)
    return result_record("knn", data, setup, train, val,
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
    setup = setup_encoder(checkpoint, arch, weights, image_size, device, precision)
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
        if resume:
            if state_file is None:
                raise UserError("--resume needs the checkpoint in its run folder (one that can "
                                "be written), where eval linear keeps an unfinished evaluation.")
            state = unfinished_state(state_file, identity, setup.device,
                                     "eval linear --protocol full")
        if state:
            recorded["resumed_from_epoch"] = state["epoch"]
    train, val = load_splits(data, setup.processes)

    def on_epoch(epoch: int) -> None:
        if on_progress is not None:
            on_progress("linear classifier epochs", epoch, settings.epochs)

    if protocol == "cached":
        features, labels = split_features(setup, train, settings.batch_size, workers, on_progress)
        on_epoch(0)  # each bar shows from its task's start
        classifier = train_on_features(features, labels, len(train.classes), settings,
                                       on_epoch)
    else:
        def keep(progress: dict[str, Any]) -> None:
            if state_file is not None and setup.processes.is_main:
                atomic_save({"identity": identity, **progress}, state_file)

        classifier = _train_on_images(setup, train, settings, workers, state, keep, on_epoch)
    val_features, val_labels = split_features(setup, val, settings.batch_size, workers,
                                         on_progress)
    accuracy = topk_accuracy(classify(classifier, val_features), val_labels)
    if state_file is not None and setup.processes.is_main:
        state_file.unlink(missing_ok=True)  # finished: nothing left to resume
    return result_record("linear", data, setup, train, val, recorded, accuracy, started)


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
