"""Shared fixtures. Everything here runs on a CPU; GPU-only tests skip without CUDA."""

import os

# The Triton interpreter must be chosen before any kernel module is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

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
}

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def tiny() -> dict:
    """Flat config overrides for a tiny CPU run (a fresh copy per test)."""
    return dict(TINY)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Run every test in its own folder, so default run folders (runs/...) land there."""
    monkeypatch.chdir(tmp_path)
