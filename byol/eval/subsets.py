"""The labeled part of a training split that semi-supervised fine-tuning learns from.

    --labels 1%      a class-balanced random 1% of each class's images, drawn with --seed
    --labels 13      13 random images of each class
    --labels F.txt   the images F lists, one per line, as the public ImageNet 1% and 10% lists
                     are written (`n01440764_10026.JPEG`, or `class/name`)

Every form names its images exactly, and `describe` writes them down, so that any result can
be reproduced.

    chosen = choose_labeled(train, "1%", seed=0)
    subset = take(train, chosen)
"""

import re
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from byol.data.labeled import Split
from byol.errors import UserError

PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")
SHOWN_NAMES = 5  # unmatched names an error shows


def choose_labeled(split: Split, labels: str, seed: int) -> np.ndarray:
    """Indices, in the split's order, of the images of `split` that `labels` (a percentage,
    images per class, or a list file) selects. UserError for a form it is not, or a subset that
    leaves a class without images."""
    if PERCENT.match(labels):
        fraction = float(PERCENT.match(labels).group(1)) / 100
        if not 0 < fraction <= 1:
            raise UserError(f"--labels {labels}: give a percentage above 0% and at most 100%.")
        chosen = _per_class(split, lambda count: round(fraction * count), seed, labels)
    elif labels.isdigit():
        chosen = _per_class(split, lambda count: int(labels), seed, labels)
    elif Path(labels).is_file():
        chosen = _listed(split, Path(labels))
    else:
        raise UserError(f"--labels {labels}: give a percentage such as 1% or 10%, a number of "
                        "images per class such as 13, or a file that lists images, one per "
                        "line.")
    empty = sorted(set(range(len(split.classes))) - set(_labels_of(split)[chosen].tolist()))
    if empty:
        raise UserError(f"--labels {labels} leaves {len(empty)} of the {len(split.classes)} "
                        f"classes without images (first: {split.classes[empty[0]]!r}); every "
                        "class needs at least one (give a larger share).")
    return chosen


def _labels_of(split: Split) -> np.ndarray:
    if split.files is not None:
        return np.asarray(split.labels)
    return split.image_labels.numpy()


def _per_class(split: Split, how_many, seed: int, labels: str) -> np.ndarray:
    """Indices of `how_many(class size)` random images of each class, drawn with `seed`."""
    rng = np.random.default_rng(seed)
    classes = _labels_of(split)
    chosen = []
    for label, name in enumerate(split.classes):
        members = np.flatnonzero(classes == label)
        count = how_many(len(members))
        if count > len(members):
            raise UserError(f"--labels {labels}: class {name!r} has only {len(members)} "
                            "images; give at most that many per class.")
        chosen.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(chosen))


def _listed(split: Split, listing: Path) -> np.ndarray:
    """Indices of the images `listing` names, by file name or `class/name`."""
    if split.files is None:
        raise UserError(f"--labels {listing}: a list of file names selects images of a folder, "
                        "not of the built-in demo data; give a percentage or a count.")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    twice = sorted(name for name, count in Counter(names).items() if count > 1)
    if twice:
        raise UserError(f"{listing} lists images more than once ({_first(twice)}); list "
                        "each once.")
    where: dict[str, list[int]] = defaultdict(list)
    for index, file in enumerate(split.files):
        path = Path(file)
        where[path.name].append(index)
        where[f"{path.parent.name}/{path.name}"].append(index)
    missing = [name for name in names if name not in where]
    if missing:
        raise UserError(f"{len(missing)} of the {len(names)} images {listing} lists are not in "
                        f"the {split.name} split ({_first(missing)}); "
                        "list files of that folder, by name or class/name.")
    ambiguous = [name for name in names if len(where[name]) > 1]
    if ambiguous:
        raise UserError(f"{len(ambiguous)} names in {listing} match files of several classes "
                        f"({_first(ambiguous)}); write them as "
                        "class/name.")
    return np.sort(np.array([where[name][0] for name in names], dtype=np.int64))


def _first(names: list[str]) -> str:
    """The first few `names`, and how many more there are."""
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")


def take(split: Split, indices: np.ndarray) -> Split:
    """The images of `split` at `indices`, keeping its classes."""
    if split.files is not None:
        return replace(split, files=[split.files[i] for i in indices],
                       labels=[split.labels[i] for i in indices])
    index = torch.from_numpy(indices)
    return replace(split, images=split.images[index], image_labels=split.image_labels[index])


def describe(split: Split, indices: np.ndarray) -> list[str]:
    """One line per chosen image: `class/name`, the form `--labels FILE` reads back, or
    `class/#index` for images held in memory (the demo data)."""
    if split.files is not None:
        return [f"{Path(split.files[i]).parent.name}/{Path(split.files[i]).name}"
                for i in indices]
    labels = _labels_of(split)
    return [f"{split.classes[labels[i]]}/#{i}" for i in indices]
