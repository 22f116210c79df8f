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


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_fused_loss_compiled_on_the_gpu_matches_the_reference(dtype):
    import torch

    import kernels.loss  # noqa: F401  (registers the op)
    from kernels import reference

    dtype = getattr(torch, dtype)
    inputs = [torch.randn(300, 256, device="cuda", dtype=dtype) for _ in range(4)]
    p1, p2 = (x.clone().requires_grad_() for x in inputs[:2])
    compiled = torch.compile(lambda a, b, c, d: torch.ops.byolctl.byol_loss(a, b, c, d))
    value = compiled(p1, p2, *inputs[2:])
    value.backward()
    q1, q2 = (x.float().requires_grad_() for x in inputs[:2])
    expected = reference.byol_loss(q1, q2, *inputs[2:])
    expected.backward()
    tolerance = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2,
                                                                                 rtol=2e-2)
    torch.testing.assert_close(value, expected, **tolerance)
    torch.testing.assert_close(p1.grad.float(), q1.grad, **tolerance)


def test_a_fused_run_tracks_an_eager_run_on_the_gpu(tiny):
    # Three fp32 steps. On an H100 two eager runs of this tiny network (batch 8) with the same
    # seed agree exactly for three steps, then cuDNN's unordered sums grow chaotically (5%
    # apart by step 6), and bf16 runs drift sooner; fused and eager were 1.3e-4 apart.
    settings = {**tiny, "device": "cuda", "steps": 3, "precision": "fp32", "compile": False}
    eager = _losses({**settings, "kernels": "eager"}, "eager")
    fused = _losses({**settings, "kernels": "fused"}, "fused")
    assert fused == pytest.approx(eager, rel=1e-3)


def test_evaluation_runs_on_the_gpu(tiny):
    from byol.eval.linear import LinearSettings
    from byol.eval.run import evaluate_knn, evaluate_linear

    _losses({**tiny, "device": "cuda", "steps": 2}, "run")
    knn = evaluate_knn(Path("run/last.pt"), "demo", k=20, device="cuda", workers=2)
    linear = evaluate_linear(Path("run/last.pt"), "demo", protocol="full", device="cuda",
                             settings=LinearSettings(epochs=1), workers=2)
    assert knn["top1"] > 10 and linear["top1"] > 10


def test_running_out_of_gpu_memory_is_one_line_with_exit_status_2(tmp_path):
    from typer.testing import CliRunner

    from byolctl.cli import app

    # Far beyond any GPU: ResNet-50 activations for 512 images of 1024 px.
    result = CliRunner().invoke(app, [
        "pretrain", "--data", "random", "--arch", "resnet50", "--image-size", "1024",
        "--batch-size", "512", "--steps", "1", "--device", "cuda", "--no-compile",
        "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "Out of GPU memory" in result.output and "Traceback" not in result.output
