"""Shared fixtures. Everything here runs on a CPU; GPU-only tests skip without CUDA."""

import os

# The Triton interpreter must be chosen before any kernel module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import tarfile  # noqa: E402
from pathlib import Path  # noqa: E402
from unittest import mock  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import byol.metrics  # noqa: E402
from byol.pretrain import prepare_run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CIFAR_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
# A few real JPEGs per class, unpacked once into a git-ignored cache.
CIFAR_SUBSET = REPO / ".cache" / "cifar10-subset"
CIFAR_CLASSES = ("cat", "dog", "ship")

# A network and batch small enough for a CPU step to take a fraction of a second.
TINY = {
    "arch": "resnet18",
    "image_size": 16,
    "batch_size": 8,
    "projector_hidden": 64,
    "projector_dim": 32,
    "steps": 6,
    "workers": 0,
    "device": "cpu",
    "knn_every": 0,  # the kNN monitor has its own tests
}

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Kernel tests run under the interpreter on the CPU; on a GPU machine,
# `TRITON_INTERPRET=0 pytest tests/test_gpu.py tests/test_*_kernel.py` runs the GPU tests and
# the same kernel tests compiled for the GPU.
KERNEL_DEVICE = ("cuda" if torch.cuda.is_available() and os.environ["TRITON_INTERPRET"] != "1"
                 else "cpu")


def random_tensors(count: int, shape, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """`count` standard-normal tensors for kernel tests, on KERNEL_DEVICE, reproducible."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator).to(KERNEL_DEVICE, dtype)
            for _ in range(count)]


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory) -> Path:
    """A 2-step pretraining run on the demo data, in its run folder (ImageNet stem, so
    torchvision loads its encoder). Evaluations record their results beside it."""
    out = tmp_path_factory.mktemp("pretrained") / "run"
    run_pretraining({**TINY, "batch_size": 16, "steps": 2, "workers": 2, "small_stem": False},
                    out=out)
    return out / "last.pt"


@pytest.fixture
def tiny() -> dict:
    """Flat config overrides for a tiny CPU run (a fresh copy per test)."""
    return dict(TINY)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Run every test in its own folder, so default run folders (runs/...) land there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def cifar_folder(cifar_eval_folder) -> Path:
    """`train/<class>/*.jpg` with 10 real CIFAR-10 JPEGs for each of CIFAR_CLASSES."""
    return cifar_eval_folder / "train"


@pytest.fixture(scope="session")
def cifar_eval_folder() -> Path:
    """An evaluation dataset: `train/` and `test/`, each with 10 real CIFAR-10 JPEGs for each
    of CIFAR_CLASSES."""
    splits = ("train", "test")
    if not all(len(list((CIFAR_SUBSET / s / c).glob("*.jpg"))) == 10
               for s in splits for c in CIFAR_CLASSES):
        if not CIFAR_ARCHIVE.is_file():
            pytest.skip(f"needs {CIFAR_ARCHIVE.name} in the shared data folder")
        wanted = {f"{s}/{c}/000{i}.jpg" for s in splits for c in CIFAR_CLASSES
                  for i in range(10)}
        with tarfile.open(CIFAR_ARCHIVE) as archive:
            members = [m for m in archive if m.name.removeprefix("./") in wanted]
            archive.extractall(CIFAR_SUBSET, members=members, filter="data")
    return CIFAR_SUBSET


def run_pretraining(overrides: dict, out="run", resume=None, stop_at=None):
    """Prepare and fit a run; with `stop_at`, request a stop once that step is logged.

    Returns (trainer, summary, checkpoint resumed from).
    """
    trainer, resumed = prepare_run(None, overrides, Path(out) if out else None, resume)

    def stop(record):
        if record["step"] == stop_at:
            trainer.request_stop()

    # Metrics (and with them the progress callback) normally flush once a second.
    with mock.patch.object(byol.metrics, "FLUSH_SECONDS", 0.0):
        return trainer, trainer.fit(stop), resumed
