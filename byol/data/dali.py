"""Two-view batches decoded and augmented by NVIDIA DALI, from an image folder, WebDataset shards
or images in memory (the demo dataset).

    byolctl pretrain --data /datasets/imagenet/train
    byolctl pretrain --data '/fast/imagenet-shards/shard-{000000..000127}.tar'
    byolctl pretrain                                  # the demo dataset

Decoding runs on the GPU (`device="mixed"`) when training there, and on DALI's CPU operators
(`device_id=None`) otherwise. The augmentations are BYOL's (see `byol.data.augment`), each
random choice drawn per sample; the color jitter's adjustments come in a fixed order (see
`_color_jitter`).
"""

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dmath
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator
from PIL import Image

from byol import distributed
from byol.data.augment import IMAGENET_MEAN, IMAGENET_STD, VIEW_PROBABILITIES, blur_kernel_size
from byol.data.demo_images import CLASSES as DEMO_CLASSES
from byol.data.demo_images import demo_images
from byol.data.folders import IMAGE_EXTENSIONS, find_problems, printable, scan_image_folder
from byol.data.loaders import TwoViewBatch, TwoViewLoader, to_training_layout
from byol.data.shards import LABEL_EXTENSION, find_shards
from byol.errors import UserError, plural

READER = "reader"


def _solarize(images):
    """Invert the pixels at or above half the uint8 range, as torchvision's RandomSolarize."""
    wide = fn.cast(images, dtype=types.INT16)
    above = fn.cast(images >= 128, dtype=types.INT16)
    return fn.cast(wide + above * (255 - 2 * wide), dtype=types.UINT8)


def _brightness_contrast(images, brightness, contrast):
    """Brightness, then contrast around the image's mean gray (as torchvision's contrast; the
    official implementation pivots each channel on its own mean), in one pass saturated to
    uint8: b * (m + c * (x - m)), where m is the mean gray before brightness scales it to b * m.
    Written as arithmetic because DALI's brightness_contrast takes its pivot only from the CPU,
    and the mean of an image decoded on the GPU is on the GPU. The factors are numbers or
    per-sample CPU nodes."""
    mean_gray = fn.reductions.mean(
        fn.color_space_conversion(images, image_type=types.RGB, output_type=types.GRAY))
    if images.device == "gpu":
        brightness, contrast = (f.gpu() if hasattr(f, "gpu") else f
                                for f in (brightness, contrast))
    x = fn.cast(images, dtype=types.FLOAT)
    x = brightness * (mean_gray + contrast * (x - mean_gray))
    return fn.cast(dmath.clamp(x, 0, 255), dtype=types.UINT8)


def _color_jitter(images, brightness, contrast, saturation, hue):
    """Brightness and contrast in one pass, then saturation and hue (degrees), each pass
    saturating to uint8.

    The paper draws the order of the four per sample. Here they commute except where values
    clip at 0 or 255: brightness scales, contrast pivots on the mean luma, and DALI's
    saturation and hue scale and rotate the YIQ chroma plane, keeping luma (see the test). With
    the order drawn per sample (DALI conditionals, 16 per view), the pipeline alone delivered
    4,600 images/s at 32 px on an H100, below the 6,400 the whole trainer had reached with a
    fixed order; so the order is fixed.
    """
    images = _brightness_contrast(images, brightness, contrast)
    return fn.hsv(images, saturation=saturation, hue=hue)


def _augmented_view(images, image_size: int, view: int, blur: bool):
    """(augmented view, its random choices (jitter, grayscale, blur, solarize) as 0/1).
    Without `blur`, no view is blurred."""
    blur_p, solarize_p = VIEW_PROBABILITIES[view - 1]
    blur_p = blur_p if blur else 0.0
    jitter, gray, blur, solarize = (fn.random.coin_flip(probability=p)
                                    for p in (0.8, 0.2, blur_p, solarize_p))
    x = fn.random_resized_crop(images, size=image_size, random_area=[0.08, 1.0],
                               random_aspect_ratio=[3 / 4, 4 / 3], interp_type=types.INTERP_CUBIC)
    x = fn.flip(x, horizontal=fn.random.coin_flip())
    if jitter:
        x = _color_jitter(x, brightness=fn.random.uniform(range=[0.6, 1.4]),
                          contrast=fn.random.uniform(range=[0.6, 1.4]),
                          saturation=fn.random.uniform(range=[0.8, 1.2]),
                          hue=fn.random.uniform(range=[-36.0, 36.0]))  # 0.1 of 360 degrees
    if gray:
        x = fn.hsv(x, saturation=0.0)  # grayscale (luma), kept in 3 channels
    if blur:
        x = fn.gaussian_blur(x, window_size=blur_kernel_size(image_size),
                             sigma=fn.random.uniform(range=[0.1, 2.0]))
    if solarize:
        x = _solarize(x)
    x = fn.crop_mirror_normalize(x, dtype=types.FLOAT, output_layout="CHW",
                                 mean=[255 * m for m in IMAGENET_MEAN],
                                 std=[255 * s for s in IMAGENET_STD])
    return x, fn.stack(jitter, gray, blur, solarize)


def decode_images(encoded, on_gpu: bool):
    """Decode encoded images to RGB: on the GPU (mixed) or with CPU operators."""
    return fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB)


def folder_reader(files: list[str], labels: list[int], shard_id: int, num_shards: int,
                  seed: int, on_gpu: bool):
    """Decoded images of `files`: each once per epoch across shards, reshuffled each epoch
    (the same shuffle on every shard, from `seed`)."""
    def read():
        encoded, label = fn.readers.file(files=files, labels=labels, shuffle_after_epoch=True,
                                         shard_id=shard_id, num_shards=num_shards, seed=seed,
                                         name=READER)
        return decode_images(encoded, on_gpu), label
    return read


def shard_reader(paths: list[str], index_paths: list[str] | None, shard_id: int,
                 num_shards: int, seed: int, on_gpu: bool):
    """Decoded images of WebDataset shards (see `byol.data.shards`): each shard read front to
    back in a new shard order every epoch, samples mixed in a shuffle buffer. Without
    `index_paths`, DALI first scans every archive (and says so on stderr)."""
    def read():
        encoded, label = fn.readers.webdataset(
            paths=paths, index_paths=index_paths or [],
            ext=[";".join(IMAGE_EXTENSIONS), LABEL_EXTENSION],
            dtypes=[types.UINT8, types.INT32], missing_component_behavior="error",
            case_sensitive_extensions=False, random_shuffle=True, shuffle_after_epoch=True,
            shard_id=shard_id, num_shards=num_shards, seed=seed, name=READER)
        return decode_images(encoded, on_gpu), label
    return read


def epoch_order(num_images: int, seed: int, epoch: int, shard_id: int = 0,
                num_shards: int = 1) -> np.ndarray:
    """Image indices shard `shard_id` reads in `epoch`: its share of a permutation seeded by
    (seed, epoch), so each image appears once per epoch across the shards."""
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(num_images)[shard_id::num_shards]


class _InMemorySource:
    """External-source callback: one (HWC uint8 image, [label]) per call, in `epoch_order`.

    DALI passes the position (epoch, index in epoch), so its checkpoints resume it exactly.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, samples_per_epoch: int,
                 seed: int, shard_id: int, num_shards: int):
        self.images, self.labels = images, labels
        self.samples_per_epoch = samples_per_epoch
        self.seed, self.shard_id, self.num_shards = seed, shard_id, num_shards
        self._orders: dict[int, np.ndarray] = {}

    def __call__(self, info):
        if info.idx_in_epoch >= self.samples_per_epoch:
            raise StopIteration
        if info.epoch_idx not in self._orders:
            self._orders = {info.epoch_idx: epoch_order(len(self.images), self.seed,
                                                        info.epoch_idx, self.shard_id,
                                                        self.num_shards)}
        index = self._orders[info.epoch_idx][info.idx_in_epoch]
        return self.images[index], self.labels[index:index + 1]


def in_memory_reader(images: torch.Tensor, labels: torch.Tensor, samples_per_epoch: int,
                     seed: int, shard_id: int, num_shards: int, on_gpu: bool):
    """Decoded images held in memory, (N, 3, H, W) uint8, fed to DALI one sample at a time.

    On a GPU too the images stay in host memory: DALI gathers each batch's samples into its
    own pinned staging buffer and copies the batch to the device (`.gpu()`). Feeding
    external_source from device memory (device="gpu", CUDA tensors) was not used: it is
    untested here, and a batch of 32 x 32 images is a few MB per copy."""
    source = _InMemorySource(images.permute(0, 2, 3, 1).contiguous().numpy(),
                             labels.to(torch.int32).numpy(), samples_per_epoch, seed,
                             shard_id, num_shards)

    def read():
        image, label = fn.external_source(source=source, num_outputs=2, batch=False,
                                          layout=["HWC", ""], dtype=[types.UINT8, types.INT32])
        return (image.gpu() if on_gpu else image), label
    return read


@pipeline_def(enable_conditionals=True, enable_checkpointing=True)
def two_view_pipeline(read, image_size: int, blur: bool = True, with_choices: bool = False):
    """DALI pipeline: (view1, view2, label) for each (decoded image, label) that `read()` gives.
    `with_choices` adds each view's random choices (see `_augmented_view`), to check the
    augmentation rates."""
    images, label = read()
    view1, choices1 = _augmented_view(images, image_size, 1, blur)
    view2, choices2 = _augmented_view(images, image_size, 2, blur)
    return (view1, view2, label, choices1, choices2) if with_choices else (view1, view2, label)


class DaliLoader(TwoViewLoader):
    """Two-view batches through DALI from `read` (see the `*_reader` functions); the position
    in the data is DALI's own checkpoint (reader progress and random state)."""

    def __init__(self, read, num_images: int, *, image_size: int, batch_size: int, seed: int,
                 workers: int, device: torch.device, blur: bool = True, rank: int = 0,
                 world_size: int = 1, classes: list[str] | None = None,
                 skipped: list[tuple[str, str]] | None = None, has_reader: bool = True,
                 source: str = "demo", find_bad_image: str = ""):
        """`source` and `find_bad_image` name the data and say how to find an image that
        stops the decoder, for the error message."""
        super().__init__(num_images, batch_size, world_size)
        self.source, self.find_bad_image = source, find_bad_image
        self.classes = classes
        self.skipped = skipped or []
        self._pipeline_args = dict(
            read=read, image_size=image_size, blur=blur, batch_size=batch_size,
            num_threads=max(1, workers), seed=augmentation_seed(seed, rank),
            device_id=device.index or 0 if device.type == "cuda" else None,
        )
        # Readers know their epoch size; an external source ends its epoch itself.
        self._reader_name = READER if has_reader else None
        self.device = device
        self._dali_checkpoint: str | None = None
        self._iterator: DALIGenericIterator | None = None
        # An image folder's loader reads its "files" or from "memory" (see folder_loader);
        # switch_reads(loader, how), where set, changes that to resume a checkpoint.
        self.reads: str | None = None
        self.switch_reads = None

    def _build_iterator(self) -> DALIGenericIterator:
        pipeline = two_view_pipeline(**self._pipeline_args, checkpoint=self._dali_checkpoint)
        return DALIGenericIterator([pipeline], ["view1", "view2", "labels"],
                                   reader_name=self._reader_name,
                                   last_batch_policy=LastBatchPolicy.DROP, auto_reset=True)

    def __iter__(self) -> Iterator[TwoViewBatch]:
        with undecodable_images_named(f"--data {self.source}", self.find_bad_image):
            self._iterator = self._build_iterator()  # starts decoding the first batches
            while True:
                for (batch,) in self._iterator:
                    self.position += 1
                    yield TwoViewBatch(to_training_layout(batch["view1"], self.device),
                                       to_training_layout(batch["view2"], self.device),
                                       batch["labels"].view(-1).long().to(self.device))
                self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self._iterator is not None:
            state["dali"] = self._iterator.checkpoints()[0]
        if self.reads is not None:
            state["reads"] = self.reads
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._dali_checkpoint = state.get("dali")
        # A DALI checkpoint resumes only the pipeline that wrote it; checkpoints from before
        # the in-memory path read their files.
        saved = state.get("reads", "files")
        if self.reads is not None and self._dali_checkpoint is not None and saved != self.reads:
            if self.switch_reads is None:
                raise UserError(f"This run's checkpoint read its images from "
                                f"{'memory' if saved == 'memory' else 'their files'}; resume "
                                "it without --in-memory/--no-in-memory.")
            self.switch_reads(self, saved)


def augmentation_seed(seed: int, rank: int) -> int:
    """The DALI pipeline seed of process `rank` (`seed` itself on rank 0), so that ranks draw
    independent augmentations; the readers shuffle from `seed` on every rank."""
    return (seed + rank * 1_000_003) % 2**31


@contextmanager
def undecodable_images_named(source: str, find_it: str):
    """Turn DALI's error for an image it could not decode, while reading `source` (as the user
    named it), into a UserError that says how to `find_it`.

    The checks before reading (byol.data.folders) find the common damage; an image that passed
    them and still fails stops DALI's whole pipeline, and DALI does not say which file it was.
    """
    try:
        yield
    except RuntimeError as error:
        if "Critical error in pipeline" not in str(error):
            raise
        raise UserError(f"An image of {source} could not be decoded "
                        f"({_decoder_failure(error)}). {find_it}") from error


def _decoder_failure(error: RuntimeError) -> str:
    """The decoder's own words from a DALI pipeline error (the line after "encountered:")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    following = lines[lines.index("encountered:") + 1:] if "encountered:" in lines else []
    return (following or lines or ["unknown error"])[0]


def folder_loader(root: Path, *, strict: bool = False, in_memory: bool | None = None,
                  rank: int = 0, world_size: int = 1, **kwargs) -> DaliLoader:
    """A DaliLoader over `root/<class>/<image>`. Files that cannot be read (see
    `byol.data.folders`) are skipped and listed in `skipped`; with `strict`, the first one is a
    UserError. A folder of small images that fits in memory (see `small_image_reason`) is
    decoded once and fed from memory, unless `in_memory` is False; True requires it. Other
    keyword arguments as `DaliLoader`."""
    folder = scan_image_folder(root)
    files, labels, classes = folder.files, folder.labels, folder.classes
    # DALI stops the whole pipeline at one unreadable file, so they are found first.
    unreadable = find_problems(files)
    if unreadable and strict:
        path, reason = unreadable[0]
        raise UserError(f"{printable(path)}: {reason}; remove or replace it, or leave out "
                        "--strict to skip such files.")
    skipped = sorted(folder.passed_over() + unreadable)
    bad = {path for path, _ in skipped}
    usable = [(f, label) for f, label in zip(files, labels) if f not in bad]
    if not usable:
        raise UserError(f"--data {root}: none of its {plural(len(files), 'image')} can be read; "
                        "run byolctl data check on it.")
    files, labels = map(list, zip(*usable))
    reads = FolderReads(root, files, labels, skipped, strict, rank, world_size, kwargs)
    # Every rank must read the same way (the two ways order and shard differently): rank 0
    # decides, counting a copy for each process on its machine.
    why_not = None if in_memory is False else distributed.decided_by_main(
        lambda: small_image_reason(files, kwargs["workers"],
                                   copies=int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
    if in_memory and why_not:
        raise UserError(f"--in-memory: {why_not}; drop the flag to read the images from "
                        "their files.")
    loader = reads.loader("files" if in_memory is False or why_not else "memory", classes)
    # Without --in-memory/--no-in-memory, a resumed run reads the way its checkpoint did.
    loader.switch_reads = reads.switch if in_memory is None else None
    return loader


# Images at most this many pixels on a side, all of one size, are decoded once and kept in
# memory (CIFAR's 32 x 32, STL's 96 x 96 not); above it, decoding is a small share of a step.
IN_MEMORY_MAX_SIDE = 64
# The decoded images may take at most this share of the available host memory, where they are
# kept on a GPU as well (see `in_memory_reader`): the rest stays for DALI's buffers, the
# trainer, other processes on the machine and the other ranks, each holding its own copy.
IN_MEMORY_SHARE = 0.25


def available_memory() -> int:
    """Bytes of host memory available to a new allocation (Linux's MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _image_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the header; None when it cannot be read (the file path then
    meets the image and reports it as it does for any folder)."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError):
        return None


def small_image_reason(files: list[str], workers: int = 1, copies: int = 1) -> str | None:
    """Why `files` should not be decoded into memory, or None when they qualify: every image
    of one size, at most IN_MEMORY_MAX_SIDE on a side (read from the headers), and `copies` of
    the decoded uint8 pixels at most IN_MEMORY_SHARE of the available host memory."""
    first = _image_size(files[0])  # a folder of large images is turned down at its first
    if first is None:
        return f"the header of {files[0]} cannot be read"
    if max(first) > IN_MEMORY_MAX_SIDE:
        return (f"its images are larger than {IN_MEMORY_MAX_SIDE}x{IN_MEMORY_MAX_SIDE} "
                f"({files[0]} is {first[0]}x{first[1]})")
    with ThreadPoolExecutor(max_workers=max(4, workers)) as pool:
        for path, size in zip(files, pool.map(_image_size, files, chunksize=256)):
            if size is None:
                return f"the header of {path} cannot be read"
            if size != first:
                return (f"its images differ in size ({files[0]} is {first[0]}x{first[1]}, "
                        f"{path} {size[0]}x{size[1]})")
    need = len(files) * first[0] * first[1] * 3 * copies
    budget = int(IN_MEMORY_SHARE * available_memory())
    if need > budget:
        held = f" ({copies} processes each holding a copy)" if copies > 1 else ""
        return (f"its {len(files)} decoded images take {need / 2**20:.0f} MiB{held}, more "
                f"than {IN_MEMORY_SHARE:.0%} of the available memory "
                f"({budget / 2**20:.0f} MiB)")
    return None


def _decode_rgb(path: str) -> np.ndarray | str:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as error:
        return f"corrupt image ({error})"


def decode_folder(files: list[str], workers: int = 1
                  ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """(images (N, H, W, 3) uint8, indices of `files` decoded, (path, reason) for those that
    failed) of images of one size, decoded with Pillow on threads (its decoder releases the
    GIL). An image that passed the quick check yet fails here is skipped as the quick check
    skips, rather than stopping the run as it would in DALI."""
    images, kept, failed = None, [], []
    with ThreadPoolExecutor(max_workers=max(4, workers)) as pool:
        for i, pixels in enumerate(pool.map(_decode_rgb, files, chunksize=64)):
            if isinstance(pixels, str):
                failed.append((files[i], pixels))
                continue
            if images is None:
                images = np.empty((len(files), *pixels.shape), dtype=np.uint8)
            images[len(kept)] = pixels
            kept.append(i)
    if images is None:
        images = np.empty((0, 1, 1, 3), dtype=np.uint8)
    return images[:len(kept)], kept, failed


class FolderReads:
    """The two ways a DaliLoader reads a folder's usable `files`: from the files, decoding
    every epoch, or decoded once into memory (`in_memory_reader`)."""

    def __init__(self, root: Path, files: list[str], labels: list[int],
                 skipped: list[tuple[str, str]], strict: bool, rank: int, world_size: int,
                 kwargs: dict):
        self.root, self.files, self.labels, self.skipped = root, files, labels, skipped
        self.strict, self.rank, self.world_size, self.kwargs = strict, rank, world_size, kwargs
        self.on_gpu = kwargs["device"].type == "cuda"

    def read(self, how: str):
        """(read, has_reader, number of images, skipped) for `how`, "files" or "memory"."""
        if how == "files":
            return (folder_reader(self.files, self.labels, self.rank, self.world_size,
                                  self.kwargs["seed"], self.on_gpu), True, len(self.files),
                    self.skipped)
        images, kept, failed = decode_folder(self.files, self.kwargs["workers"])
        if failed and self.strict:
            raise UserError(f"{printable(failed[0][0])}: {failed[0][1]}; remove or replace "
                            "it, or leave out --strict to skip such files.")
        if not kept:
            raise UserError(f"--data {self.root}: none of its images can be read; run "
                            "byolctl data check on it.")
        labels = torch.tensor([self.labels[i] for i in kept], dtype=torch.int32)
        # (N, H, W, 3) seen as (N, 3, H, W): in_memory_reader's permute back is then no copy.
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
        batch = self.kwargs["batch_size"]
        per_shard = len(kept) // (batch * self.world_size) * batch
        read = in_memory_reader(pixels, labels, per_shard, self.kwargs["seed"], self.rank,
                                self.world_size, self.on_gpu)
        skipped = sorted(self.skipped + failed, key=lambda problem: problem[0])
        return read, False, len(kept), skipped

    def loader(self, how: str, classes: list[str]) -> "DaliLoader":
        read, has_reader, num_images, skipped = self.read(how)
        loader = DaliLoader(read, num_images, classes=classes, skipped=skipped,
                            has_reader=has_reader, rank=self.rank, world_size=self.world_size,
                            source=str(self.root),
                            find_bad_image=f"Find it with: byolctl data check {self.root} "
                            "(which decodes every image), move it out, and resume with "
                            "--resume auto.", **self.kwargs)
        loader.reads = how
        return loader

    def switch(self, loader: "DaliLoader", how: str) -> None:
        """Make `loader` read `how` (to resume a checkpoint that read so)."""
        read, has_reader, num_images, skipped = self.read(how)
        if num_images != loader.num_images:
            raise UserError(f"--data {self.root}: this run's checkpoint read its images "
                            f"from {'memory' if how == 'memory' else 'their files'}, where "
                            f"{num_images} of them can be used instead of {loader.num_images};"
                            " start a new run.")
        loader._pipeline_args["read"] = read
        loader._reader_name = READER if has_reader else None
        loader.skipped, loader.reads = skipped, how


def shards_loader(data: str, *, rank: int = 0, world_size: int = 1, **kwargs) -> DaliLoader:
    """A DaliLoader over WebDataset shards (see `byol.data.shards.find_shards`)."""
    shards = find_shards(data)
    read = shard_reader(shards.paths, shards.index_paths, rank, world_size, kwargs["seed"],
                        kwargs["device"].type == "cuda")
    return DaliLoader(read, shards.images, classes=shards.classes, rank=rank,
                      world_size=world_size, source=data,
                      find_bad_image="Check the folder the shards were written from with "
                      "byolctl data check, then write them again.", **kwargs)


def in_memory_loader(images: torch.Tensor, labels: torch.Tensor, *, rank: int = 0,
                     world_size: int = 1, **kwargs) -> DaliLoader:
    """A DaliLoader over labeled uint8 images (N, 3, H, W) held in memory."""
    per_shard = len(images) // (kwargs["batch_size"] * world_size) * kwargs["batch_size"]
    read = in_memory_reader(images, labels, per_shard, kwargs["seed"], rank, world_size,
                            kwargs["device"].type == "cuda")
    return DaliLoader(read, len(images), rank=rank, world_size=world_size, has_reader=False,
                      **kwargs)


def demo_loader(**kwargs) -> DaliLoader:
    """The built-in demo dataset's training split; keyword arguments as `in_memory_loader`."""
    return in_memory_loader(*demo_images("train"), classes=list(DEMO_CLASSES), **kwargs)
