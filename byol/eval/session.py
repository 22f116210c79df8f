"""What every evaluation does: load the encoder onto its device, read the dataset's splits,
compute a split's features, and describe and record the result.

    setup = setup_encoder(checkpoint, arch, weights, image_size, device, precision)
    train, val = load_splits(data, setup.processes)
    features, labels = split_features(setup, train, batch_size, workers, on_progress)

Under torchrun, each process computes the features of its share of the images and every
process then holds them all (see `byol.distributed.gather_rows`).
"""

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from byol import distributed
from byol.data.labeled import LabeledLoader, Split, eval_splits
from byol.errors import UserError, plural
from byol.eval.encoder import load_encoder
from byol.eval.features import extract_features
from byol.run_folder import EVALUATIONS_FILE
from byol.runtime import default_precision, process_device, to_runtime_layout

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


def setup_encoder(checkpoint: Path | None, arch: str | None, weights: str | None,
           image_size: int | None, device: str, precision: str | None) -> Setup:
    processes = distributed.setup(device)
    loaded = load_encoder(checkpoint, arch, weights)
    target = process_device(device, processes.local_rank, processes.enabled)
    precision = precision or default_precision(device)
    encoder = to_runtime_layout(loaded.encoder, target, precision)
    encoder.requires_grad_(False)
    return Setup(encoder, loaded.feature_dim, loaded.description(), loaded.arch,
                 image_size or loaded.image_size, target, precision, processes)


def load_splits(data: str, processes: distributed.Processes) -> tuple[Split, Split]:
    """The dataset's (train, val). Under torchrun, rank 0 alone lists and checks the files,
    and every process gets its lists: their shares must be cut from the same ones."""
    splits = distributed.decided_by_main(lambda: eval_splits(data))
    for split in splits:
        if len(split) < processes.world_size:
            raise UserError(f"The {split.name} split holds {plural(len(split), 'image')}, fewer "
                            f"than the {processes.world_size} processes; evaluate it with fewer.")
    return splits


def split_features(setup: Setup, split: Split, batch_size: int, workers: int,
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


def result_record(kind: str, data: str, setup: Setup, train: Split, val: Split,
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


def unfinished_state(state_file: Path, identity: dict[str, Any], device: torch.device,
                     command: str) -> dict[str, Any]:
    """The saved state of an unfinished evaluation with this `identity`, which `command`
    writes after every epoch; UserError if there is none."""
    if not state_file.is_file():
        raise UserError(f"Nothing to resume: no {state_file} ({command} writes it after every "
                        "epoch and removes it when done); leave out --resume.")
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


def record_result(result: dict[str, Any], run_dir: Path) -> Path:
    """Append `result` as one JSON line to the run folder's evaluations.jsonl."""
    path = run_dir / EVALUATIONS_FILE
    with path.open("a") as file:
        file.write(json.dumps(result) + "\n")
    return path
