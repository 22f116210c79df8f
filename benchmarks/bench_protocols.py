"""The paper's other protocols on CIFAR-10, for a pretrained checkpoint: fine-tuning on a share
of the labels against a linear classifier on the same labeled images (and on all of them), and
the transfer suite, each with its wall time.

    python benchmarks/bench_quality.py --epochs 100 --run-dir .cache/q100     # pretrain first
    python benchmarks/bench_protocols.py --checkpoint .cache/q100/last.pt --labels 10%
    python benchmarks/bench_protocols.py --checkpoint .cache/q/last.pt --device cpu \
        --train-images 10000 --val-images 2000 --finetune-epochs 10          # a short CPU run

Uses the CIFAR-10 JPEGs of the shared data folder (see bench_quality.py), at the checkpoint's
image size. The linear classifiers use the cached protocol. Records the numbers in
benchmarks/results/.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import CACHE, cifar10, subset  # noqa: E402
from common import environment, save_result  # noqa: E402

from byol.eval.finetune import IMAGES_FILE, FinetuneSettings, evaluate_finetune  # noqa: E402
from byol.eval.linear import LinearSettings  # noqa: E402
from byol.eval.run import evaluate_linear  # noqa: E402
from byol.eval.transfer import TransferSettings, evaluate_transfer  # noqa: E402


def labeled_folder(data: Path, listing: Path, folder: Path) -> Path:
    """An evaluation folder whose train split holds only the images `listing` names
    (`class/name` lines), as links; its test split is the data's."""
    for line in listing.read_text().splitlines():
        link = folder / "train" / line
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to((data / "train" / line).resolve())
    (folder / "test").symlink_to((data / "test").resolve())
    return folder


def timed(evaluate, **kwargs) -> tuple[dict, float]:
    started = time.perf_counter()
    result = evaluate(**kwargs)
    return result, round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--labels", default="10%")
    parser.add_argument("--train-images", type=int, help="use a balanced subset")
    parser.add_argument("--val-images", type=int, help="use a balanced subset")
    parser.add_argument("--finetune-epochs", type=int, default=FinetuneSettings.epochs)
    parser.add_argument("--finetune-lr", type=float, default=FinetuneSettings.lr)
    parser.add_argument("--batch-size", type=int, default=FinetuneSettings.batch_size)
    parser.add_argument("--linear-epochs", type=int, default=100)
    parser.add_argument("--device", choices=["cuda", "cpu"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"],
                        help="default: bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()

    data = subset(cifar10(), args.train_images, args.val_images)
    work = CACHE / "bench-protocols" / time.strftime("%Y%m%d-%H%M%S")
    common = dict(checkpoint=args.checkpoint, device=args.device, precision=args.precision,
                  workers=args.workers)
    settings = FinetuneSettings(epochs=args.finetune_epochs, lr=args.finetune_lr,
                                batch_size=args.batch_size)
    finetuned, finetune_seconds = timed(
        evaluate_finetune, data=str(data), labels=args.labels, settings=settings,
        out=work / "finetune", compile=args.device == "cuda", **common)
    labeled = labeled_folder(data, work / "finetune" / IMAGES_FILE, work / "labeled")
    linear = LinearSettings(epochs=args.linear_epochs)
    same_labels, same_seconds = timed(evaluate_linear, data=str(labeled), protocol="cached",
                                      settings=linear, **common)
    all_labels, all_seconds = timed(evaluate_linear, data=str(data), protocol="cached",
                                    settings=linear, **common)
    (transfer,), transfer_seconds = timed(evaluate_transfer, datasets=[str(data)],
                                          settings=TransferSettings(), out=work / "transfer",
                                          **common)

    result = {
        "benchmark": "fine-tuning and transfer protocols (CIFAR-10)",
        **environment(torch.device(args.device)),
        "checkpoint": str(args.checkpoint), "step": finetuned["step"],
        "arch": finetuned["arch"], "image_size": finetuned["image_size"],
        "precision": finetuned["precision"], "train_images": finetuned["train_images"],
        "test_images": finetuned["val_images"], "labels": args.labels,
        "labeled_images": finetuned["labeled_images"],
        "finetune": {"top1": finetuned["top1"], "top5": finetuned["top5"],
                     "epochs": settings.epochs, "lr": settings.lr,
                     "batch_size": settings.batch_size, "seconds": finetune_seconds},
        "linear_same_labels": {"top1": same_labels["top1"], "top5": same_labels["top5"],
                               "seconds": same_seconds},
        "linear_all_labels": {"top1": all_labels["top1"], "top5": all_labels["top5"],
                              "seconds": all_seconds},
        "linear": f"cached protocol, {args.linear_epochs} epochs",
        "transfer": {key: transfer[key] for key in (
            "knn_top1", "knn_top5", "linear_top1", "linear_top5", "penalty", "held_out_top1")}
        | {"seconds": transfer_seconds},
        "finetune_beats_linear_same_labels": finetuned["top1"] > same_labels["top1"],
    }
    for key, value in result.items():
        print(f"{key:>34}: {value}")
    share = args.labels.replace("%", "pct")
    print(f"saved {save_result(f'protocols-cifar10-{share}-{args.device}', result)}")


if __name__ == "__main__":
    main()
