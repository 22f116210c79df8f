"""Representation quality: BYOL on CIFAR-10, then kNN and linear top-1, against the same
network at random init.

    python benchmarks/bench_quality.py --epochs 100                      # on a GPU, 32 px
    python benchmarks/bench_quality.py --device cpu --epochs 3 --image-size 16 \
        --train-images 10000 --val-images 2000                           # a short CPU run
    python benchmarks/bench_quality.py --epochs 100 --run-dir .cache/q100  # resumable
    python benchmarks/bench_quality.py --epochs 100 --knn-every 975        # with a kNN curve
    python benchmarks/bench_quality.py --epochs 100 --weight-decay 5e-4    # another recipe

A run stopped by SIGTERM or Ctrl-C (a job's time limit, say) checkpoints and records nothing;
the same command with the same `--run-dir` continues it, and the recorded pretraining wall time
is the sum over its parts. With `--knn-every STEPS`, the pretraining's kNN monitor (k=20 on
at most 10,000 training and 5,000 test images) runs every that many steps, and the result
records its curve; the recorded wall time then includes the monitor.

Uses the CIFAR-10 JPEGs of the shared data folder (unpacked once into .cache/cifar10/):
ResNet-18 with the small stem and the `cifar` preset (lr 1.0 per 256, wd 1e-5, LARS eta 0.02,
tau_base 0.99); `--lr`, `--weight-decay`, `--tau-base` and `--lars-eta` replace its values,
and the result and its file name say which. The preset caps each tensor's rate at the lr
(`lars_clip`), so a very large `--lars-eta` (1e9) turns LARS into momentum SGD (weight decay
still off biases and norms). The step-0 checkpoint is the random-init baseline. kNN is
weighted (k=200, T=0.1; k=20 on small subsets); the linear classifier uses the cached
protocol. Records epochs, pretraining wall time and the accuracies in benchmarks/results/.
The GPU target: kNN top-1 of at least 85% after 100 epochs.
"""

import argparse
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, save_result  # noqa: E402

from byol.eval.linear import LinearSettings  # noqa: E402
from byol.eval.run import evaluate_knn, evaluate_linear  # noqa: E402
from byol.pretrain import prepare_run  # noqa: E402
from byol.run_folder import METRICS_FILE  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
CACHE = REPO / ".cache"
# Hyperparameters a run may set instead of the cifar preset's, to compare recipes.
RECIPE_FLAGS = ("lr", "weight_decay", "tau_base", "lars_eta")


def cifar10() -> Path:
    """The unpacked CIFAR-10 folder (train/ and test/), unpacking it the first time."""
    root = CACHE / "cifar10"
    if not (root / "test").is_dir():
        if not ARCHIVE.is_file():
            sys.exit(f"CIFAR-10 not found: expected {ARCHIVE}")
        with tarfile.open(ARCHIVE) as archive:
            archive.extractall(root, filter="data")
    return root


def subset(root: Path, train_images: int | None, val_images: int | None) -> Path:
    """An evaluation folder of at most that many images per split, balanced over the classes,
    as links to the full dataset; the full dataset when no limit is given."""
    if train_images is None and val_images is None:
        return root
    folder = CACHE / f"cifar10-{train_images or 'all'}-{val_images or 'all'}"
    if not folder.is_dir():
        staging = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        for split, limit in (("train", train_images), ("test", val_images)):
            classes = sorted(d for d in (root / split).iterdir() if d.is_dir())
            for class_dir in classes:
                files = sorted(class_dir.glob("*.jpg"))
                if limit is not None:
                    files = files[:limit // len(classes)]
                (staging / split / class_dir.name).mkdir(parents=True)
                for file in files:
                    (staging / split / class_dir.name / file.name).symlink_to(file)
        staging.rename(folder)
    return folder


def evaluate(checkpoint: Path, data: Path, args, k: int, device: str,
             precision: str) -> dict[str, float]:
    common = dict(image_size=args.image_size, device=device, precision=precision,
                  workers=args.workers)
    knn = evaluate_knn(checkpoint, str(data), k=k, **common)
    linear = evaluate_linear(checkpoint, str(data), protocol="cached",
                             settings=LinearSettings(epochs=args.linear_epochs), **common)
    return {"knn_top1": knn["top1"], "knn_top5": knn["top5"], "linear_top1": linear["top1"],
            "linear_top5": linear["top5"]}


def _add_wall_time(run_dir: Path, seconds: float) -> float:
    """The pretraining wall time of the run in `run_dir` over all its parts, this one added."""
    record = run_dir / "pretrain_seconds.txt"
    total = seconds + (float(record.read_text()) if record.is_file() else 0.0)
    record.write_text(f"{total}\n")
    return total


def _knn_curve(run_dir: Path) -> list[dict[str, float]]:
    """The kNN monitor's checks logged during pretraining: step, epoch, top-1, top-5."""
    with (run_dir / METRICS_FILE).open() as lines:
        records = [json.loads(line) for line in lines]
    return [{key: r[key] for key in ("step", "epoch", "knn_top1", "knn_top5")}
            for r in records if "knn_top1" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--warmup-epochs", type=float,
                        help="default: 10, or a tenth of the run if that is shorter")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-images", type=int, help="use a balanced subset")
    parser.add_argument("--val-images", type=int, help="use a balanced subset")
    parser.add_argument("--linear-epochs", type=int, default=100)
    parser.add_argument("--device", choices=["cuda", "cpu"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"],
                        help="default: bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-dir", type=Path,
                        help="continue the run in this folder, if it holds one")
    parser.add_argument("--knn-every", type=int, default=0,
                        help="steps between kNN monitor checks, recorded as a curve; 0: none")
    for flag in RECIPE_FLAGS:
        parser.add_argument(f"--{flag.replace('_', '-')}", type=float,
                            help="instead of the cifar preset's value (named in the result)")
    args = parser.parse_args()

    data = subset(cifar10(), args.train_images, args.val_images)
    run_dir = args.run_dir or CACHE / "bench-quality" / time.strftime("%Y%m%d-%H%M%S")
    overrides = {"data": str(data / "train"), "arch": "resnet18", "small_stem": True,
                 "image_size": args.image_size, "batch_size": args.batch_size,
                 "epochs": args.epochs, "device": args.device,
                 "warmup_epochs": args.warmup_epochs or min(10.0, args.epochs / 10),
                 "workers": args.workers, "seed": args.seed, "knn_every": args.knn_every,
                 "probe": False}
    if args.precision:
        overrides["precision"] = args.precision
    changed = {flag: getattr(args, flag) for flag in RECIPE_FLAGS
               if getattr(args, flag) is not None}
    overrides.update(changed)
    trainer, resumed_from = prepare_run("cifar", overrides, run_dir, "auto")
    init = run_dir / "init.pt"
    if resumed_from is None:
        shutil.copyfile(trainer.save(), init)  # step 0: the random-init baseline

    started = time.perf_counter()
    summary = trainer.fit()
    pretrain_seconds = _add_wall_time(run_dir, time.perf_counter() - started)
    if summary.interrupted:  # a partial run is not the result of `--epochs`
        sys.exit(f"Interrupted at step {summary.step} of {summary.total_steps}; nothing "
                 f"recorded. Continue with --run-dir {run_dir}")
    k = 200 if (args.train_images or 50_000) >= 20_000 else 20
    # Evaluated in the pretraining's precision: bf16 also speeds up the evaluation on the CPU.
    precision = trainer.config.precision
    trained = evaluate(summary.checkpoint, data, args, k, args.device, precision)
    random_init = evaluate(init, data, args, k, args.device, precision)

    result = {
        "benchmark": "representation quality (CIFAR-10)",
        **environment(trainer.device),
        "arch": "resnet18 (small stem)", "preset": "cifar", "epochs": args.epochs,
        "warmup_epochs": trainer.config.warmup_epochs, "lars_clip": trainer.config.lars_clip,
        **{flag: getattr(trainer.config, flag) for flag in RECIPE_FLAGS},
        "changed_from_preset": sorted(changed),
        "blur": trainer.config.blur, "precision": precision, "eval_precision": precision,
        "compile": trainer.config.compile, "kernels": trainer.config.kernels,
        "steps": summary.step, "image_size": args.image_size, "batch_size": args.batch_size,
        "train_images": trainer.loader.num_images, "knn_k": k,
        "linear": f"cached protocol, {args.linear_epochs} epochs",
        "pretrain_seconds": round(pretrain_seconds, 1),
        "final_loss": summary.last_record["loss"] if summary.last_record else None,
        "trained": trained, "random_init": random_init, "knn_curve": _knn_curve(run_dir),
        "knn_gain": trained["knn_top1"] - random_init["knn_top1"],
        "linear_gain": trained["linear_top1"] - random_init["linear_top1"],
    }
    for key, value in result.items():
        print(f"{key:>18}: {value}")
    blur = "" if trainer.config.blur else "-noblur"
    recipe = "".join(f"-{flag.replace('_', '')}{value:g}" for flag, value in changed.items())
    slug = (f"quality-cifar10-{args.epochs}ep-{args.image_size}px{blur}{recipe}-"
            f"{trainer.device.type}")
    print(f"saved {save_result(slug, result)}")


if __name__ == "__main__":
    main()
