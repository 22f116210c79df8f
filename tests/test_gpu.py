"""On a CUDA GPU: the fast path (bf16 autocast, channels_last, torch.compile) agrees with fp32
eager execution. Skipped on machines without CUDA."""

import json
from pathlib import Path

import pytest

from byol.pretrain import prepare_run
from tests.conftest import requires_cuda

pytestmark = requires_cuda


def _losses(overrides, out):
    trainer, _ = prepare_run(None, overrides, Path(out), None)
    trainer.fit()
    return [json.loads(line)["loss"] for line in (Path(out) / "metrics.jsonl").open()]


def test_a_compiled_bf16_channels_last_run_tracks_an_fp32_eager_run(tiny):
    settings = {**tiny, "device": "cuda", "steps": 3}
    reference = _losses({**settings, "precision": "fp32", "compile": False}, "fp32")
    fast = _losses({**settings, "precision": "bf16", "compile": True}, "bf16")
    assert fast == pytest.approx(reference, rel=5e-2)


def test_a_cuda_checkpoint_resumes_on_the_cpu(tiny):
    _losses({**tiny, "device": "cuda", "steps": 2}, "run")
    trainer, resumed_from = prepare_run(None, {"device": "cpu"}, None, "run/last.pt")
    assert resumed_from is not None and trainer.step == 2
    assert trainer.config.precision == "bf16"  # precision is part of the run, not the device


@pytest.mark.parametrize("source", ["folder", "demo"])
def test_dali_decodes_and_augments_on_the_gpu_in_channels_last(source, cifar_folder):
    import torch

    from byol.data.dali import demo_loader, folder_loader

    common = dict(image_size=32, batch_size=8, seed=0, workers=2, device=torch.device("cuda"))
    loader = folder_loader(cifar_folder, **common) if source == "folder" else demo_loader(**common)
    batch = next(iter(loader))
    assert batch.view1.is_cuda and batch.labels.is_cuda
    assert batch.view1.shape == (8, 3, 32, 32)
    assert batch.view1.is_contiguous(memory_format=torch.channels_last)
    assert -2.2 < batch.view1.min() and batch.view1.max() < 2.7
