"""Images per second of the two-view DALI pipeline (decode + BYOL's augmentations).

    python benchmarks/bench_data.py --data /datasets/imagenet/train --image-size 224
    python benchmarks/bench_data.py --data .cache/cifar10/train --image-size 32 --device cpu

Each image yields two views; the rate counts images. Batches are moved to the training device
as the trainer receives them (see `byol.profiling.step.time_data`). Writes the result to
benchmarks/results/.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, save_result  # noqa: E402

from byol.config import PretrainConfig  # noqa: E402
from byol.profiling.step import time_data  # noqa: E402


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

    config = PretrainConfig(data=args.data, image_size=args.image_size,
                            batch_size=args.batch_size, workers=args.workers, device=args.device)
    result = {
        "benchmark": "two-view data pipeline",
        **environment(torch.device(args.device)),
        "data": args.data, "image_size": args.image_size, "batch_size": args.batch_size,
        "threads": args.workers, "timed_batches": args.batches,
        "images_per_s": time_data(config, args.warmup, args.batches),
    }
    path = save_result(f"data-{args.image_size}px-{args.device}", result)
    for key, value in result.items():
        print(f"{key:>16}: {value}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
