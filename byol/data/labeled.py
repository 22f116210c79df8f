"""Single-view labeled batches through DALI, for evaluation: every image exactly once per
epoch, the last batch kept even if partial.

    train split (linear classifier):  random resized crop + flip, reshuffled every epoch
    val split, features for kNN:      resize + center crop, in file order

An evaluation dataset is a folder with `train/` and `val/` (or `test/`), each
`<class>/<image>`, or `demo` (the built-in dataset's two splits). See `eval_splits`.
"""

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator
from torch import Tensor

from byol.data.augment import IMAGENET_MEAN, IMAGENET_STD
from byol.data.dali import READER, decode_images, undecodable_images_named
from byol.data.demo_images import CLASSES as DEMO_CLASSES
from byol.data.demo_images import demo_images
from byol.data.folders import SPLIT_NAMES, find_problems, scan_image_folder
from byol.data.loaders import to_training_layout
from byol.errors import UserError

# The evaluation crop covers 87.5% of the resized image (224 of 256), the usual ImageNet
# protocol. Images of 64 px or less (CIFAR-like) are resized to the size, uncropped.
CENTER_CROP_FRACTION = 0.875
VAL_SPLITS = tuple(name for name in SPLIT_NAMES if name != "train")  # looked for in order


@dataclass
class Split:
    """One split of an evaluation dataset: encoded files with labels, or decoded images."""

    name: str
    classes: list[str]
    files: list[str] | None = None       # image paths (a folder)
    labels: list[int] | None = None
    images: Tensor | None = None         # (N, 3, H, W) uint8 (the demo dataset)
    image_labels: Tensor | None = None   # (N,) int64
    skipped: list[tuple[str, str]] | None = None  # unreadable files left out
    folder: str | None = None            # where the files are

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.images)

    def shard(self, index: int, count: int, equal: bool = False) -> "Split":
        """Process `index`'s share of `count`: items index, index + count, ... With `equal`,
        every share has len(self) // count items (the at most count - 1 left over are left
        out), so that processes training together take the same number of steps."""
        if count == 1:
            return self
        end = len(self) // count * count if equal else len(self)
        share = slice(index, end, count)
        if self.files is not None:
            return replace(self, files=self.files[share], labels=self.labels[share])
        return replace(self, images=self.images[share], image_labels=self.image_labels[share])


def eval_splits(data: str, option: str = "--data") -> tuple[Split, Split]:
    """(train, val) of an evaluation dataset: `demo`, or a folder holding `train/` and `val/`
    (or `test/`) with the same class folders. Unreadable images are left out and listed.
    `option` is the command-line option that named `data`, for error messages."""
    if data == "demo":
        return (Split("train", list(DEMO_CLASSES), images=demo_images("train")[0],
                      image_labels=demo_images("train")[1]),
                Split("val", list(DEMO_CLASSES), images=demo_images("val")[0],
                      image_labels=demo_images("val")[1]))
    root = Path(data)
    val_dir = next((root / name for name in VAL_SPLITS if (root / name).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise UserError(f"{option} {data}: expected a folder with train/ and val/ (or test/) "
                        "subfolders, each of <class>/<image> files.")
    train, val = _folder_split(root / "train"), _folder_split(val_dir)
    if train.classes != val.classes:
        raise UserError(f"{root / 'train'} and {val_dir} have different class folders; "
                        "give both the same classes.")
    return train, val


def _folder_split(path: Path) -> Split:
    folder = scan_image_folder(path)
    unreadable = find_problems(folder.files)
    bad = {f for f, _ in unreadable}
    kept = [(f, label) for f, label in zip(folder.files, folder.labels) if f not in bad]
    if not kept:
        raise UserError(f"{path}: none of its images can be read; run byolctl data check on it.")
    files, labels = map(list, zip(*kept))
    return Split(path.name, folder.classes, files=files, labels=labels,
                 skipped=sorted(folder.passed_over() + unreadable), folder=str(path))


class _ImageBatches:
    """External source for decoded images in memory: batches in order (or in a new seeded
    order each epoch), the last one partial; restarts after each StopIteration."""

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool,
                 seed: int):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC for DALI
        self.labels = labels.to(torch.int32).numpy()
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = -1

    def __iter__(self):
        self.epoch += 1
        n = len(self.images)
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(n)
                 if self.shuffle else np.arange(n))
        self.batches = iter(np.array_split(order, range(self.batch_size, n, self.batch_size)))
        return self

    def __next__(self):
        index = next(self.batches)
        return list(self.images[index]), list(self.labels[index, None])


@pipeline_def
def labeled_pipeline(read, image_size: int, augment: bool):
    """(image, label): a random resized crop with a random flip, or a center crop."""
    images, labels = read()
    if augment:
        images = fn.random_resized_crop(images, size=image_size, random_area=[0.08, 1.0],
                                        random_aspect_ratio=[3 / 4, 4 / 3],
                                        interp_type=types.INTERP_CUBIC)
        mirror = fn.random.coin_flip()
    else:
        fraction = CENTER_CROP_FRACTION if image_size > 64 else 1.0
        images = fn.resize(images, resize_shorter=round(image_size / fraction),
                           interp_type=types.INTERP_CUBIC)
        mirror = 0
    images = fn.crop_mirror_normalize(images, crop=(image_size, image_size), mirror=mirror,
                                      dtype=types.FLOAT, output_layout="CHW",
                                      mean=[255 * m for m in IMAGENET_MEAN],
                                      std=[255 * s for s in IMAGENET_STD])
    return images, labels


class LabeledLoader:
    """Iterating gives one epoch of (images (B, 3, S, S) on the device, labels (B,) int64)."""

    def __init__(self, split: Split, *, image_size: int, batch_size: int, augment: bool,
                 seed: int, workers: int, device: torch.device):
        self.split, self.device = split, device
        on_gpu = device.type == "cuda"
        if split.files is not None:
            def read():
                encoded, labels = fn.readers.file(
                    files=split.files, labels=split.labels, random_shuffle=augment,
                    pad_last_batch=True, name=READER)
                return decode_images(encoded, on_gpu), labels
        else:
            source = _ImageBatches(split.images, split.image_labels, batch_size, augment, seed)

            def read():
                images, labels = fn.external_source(
                    source=source, num_outputs=2, cycle="raise", layout=["HWC", ""],
                    dtype=[types.UINT8, types.INT32])
                return (images.gpu() if on_gpu else images), labels
        pipeline = labeled_pipeline(
            read=read, image_size=image_size, augment=augment, batch_size=batch_size,
            num_threads=max(1, workers), seed=seed, device_id=device.index or 0 if on_gpu
            else None)
        with self._undecodable_images_named():  # the iterator decodes its first batches
            self._iterator = DALIGenericIterator(
                [pipeline], ["images", "labels"],
                reader_name=READER if split.files is not None else None,
                last_batch_policy=LastBatchPolicy.PARTIAL, auto_reset=True)

    def __len__(self) -> int:
        return len(self.split)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        with self._undecodable_images_named():
            for (batch,) in self._iterator:
                yield (to_training_layout(batch["images"], self.device),
                       batch["labels"].view(-1).long().to(self.device))

    def _undecodable_images_named(self):
        folder = self.split.folder
        return undecodable_images_named(folder, f"Find it with: byolctl data check {folder} "
                                        "(which decodes every image), move it out, and run the "
                                        "command again.")
