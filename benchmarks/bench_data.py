"""Images per second of the two-view DALI pipeline (decode + BYOL's augmentations).

    python benchmarks/bench_data.py --data /datasets/imagenet/train --image-size 224
    python benchmarks/bench_data.py --data .cache/cifar10/train --image-size 32 --device cpu

Each image yields two views; the rate counts images. Batches are moved to the training device
as the trainer receives them (see `byol.profiling.step.time_data`). Writes the result to
benchmarks/results/.
"""

import argparse
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, save_result  # noqa: E402

from byol.config import PretrainConfig  # noqa: E402
from byol.profiling.step import time_data  # noqa: E402

# ImageNet's usual shapes (width, height): 4:3 and 3:2 either way, and squares.
IMAGENET_SHAPES = ((500, 375), (375, 500), (500, 333), (333, 500), (640, 480), (480, 640),
                   (500, 500), (400, 300))
JPEG_QUALITY = 90
# Over a smooth gradient, noise of this spread (in 0-255 levels) gives JPEGs of ImageNet's
# size at quality 90: measured 105 KB at 500x375, 165 KB at 640x480 (ImageNet averages ~110 KB).
NOISE_STD = 25


def _imagenet_like_jpeg(path: Path, shape: tuple[int, int], seed: int) -> None:
    """A random-colored gradient under Gaussian noise, as a JPEG of (width, height) `shape`."""
    rng = np.random.default_rng(seed)
    width, height = shape
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    ramps = np.stack([x, y, (x + y) / 2], axis=-1)[..., rng.permutation(3)]  # (H, W, 3)
    image = 255 * ramps * rng.uniform(0.5, 1.0, 3) + rng.normal(0, NOISE_STD, (height, width, 3))
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=JPEG_QUALITY)


def imagenet_like_jpegs(folder: Path, count: int, scale: float = 1.0) -> Path:
    """`count` JPEGs with ImageNet's shapes (IMAGENET_SHAPES, times `scale`) and, at scale 1,
    its file sizes, in `folder/images/`, made once (in parallel) and reused: `folder`, to pass
    as data (a folder of one class)."""
    images = folder / "images"
    if len(list(images.glob("*.jpg"))) == count:
        return folder
    staging = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)
    shapes = [(round(w * scale), round(h * scale)) for w, h in IMAGENET_SHAPES]
    with ThreadPoolExecutor() as pool:  # numpy and JPEG encoding release the GIL
        list(pool.map(lambda i: _imagenet_like_jpeg(staging / "images" / f"{i:05d}.jpg",
                                                    shapes[i % len(shapes)], seed=i),
                      range(count)))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def measure(data: str, image_size: int, batch_size: int, workers: int, device: torch.device,
            warmup: int, batches: int) -> dict:
    """Images per second of the two-view pipeline over `data` (an image folder or shards),
    `batches` timed after `warmup`, delivered to `device` as the trainer receives them: the
    result."""
    config = PretrainConfig(data=data, image_size=image_size, batch_size=batch_size,
                            workers=workers, device=device.type)
    return {
        "benchmark": "two-view data pipeline",
        **environment(device),
        "data": data, "image_size": image_size, "batch_size": batch_size,
        "threads": workers, "timed_batches": batches,
        "images_per_s": time_data(config, warmup, batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="image folder or shards")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8, help="DALI threads")
    parser.add_argument("--device", choices=["cuda", "cpu"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--batches", type=int, default=20, help="timed batches")
    args = parser.parse_args()

    result = measure(args.data, args.image_size, args.batch_size, args.workers,
                     torch.device(args.device), args.warmup, args.batches)
    path = save_result(f"data-{args.image_size}px-{args.device}", result)
    for key, value in result.items():
        print(f"{key:>16}: {value}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
