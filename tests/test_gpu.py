"""On a CUDA GPU: the fast path (bf16 autocast, channels_last, torch.compile) agrees with fp32
eager execution. Skipped on machines without CUDA."""

import json
from pathlib import Path

import pytest
import torch

from byol.pretrain import prepare_run
from tests.conftest import requires_cuda

pytestmark = requires_cuda


# Two steps with no warmup: both move the weights (lr 1.6e-3, then 7.8e-4; in a warmup the
# first step's lr is 0), so the second loss is taken after an update and the weights compared
# after two. A few steps, not many: this tiny network (batch 8) is chaotic, and runs that differ
# in rounding drift further apart with every step.
MOVING = {"steps": 2, "warmup_epochs": 0, "lr": 0.05}


def _run(overrides, out):
    """Fit a fresh run; returns (trainer, its initial state dict, its losses step by step)."""
    trainer, _ = prepare_run(None, overrides, Path(out), None)
    initial = {name: t.detach().clone() for name, t in trainer.model.state_dict().items()}
    trainer.fit()
    losses = [json.loads(line)["loss"] for line in (Path(out) / "metrics.jsonl").open()]
    return trainer, initial, losses


def _losses(overrides, out):
    return _run(overrides, out)[2]


def _apart(initial: dict, expected, actual, group: str) -> float:
    """How far `actual`'s tensors (all those of a group of the state dict together) are from
    `expected`'s, as a fraction of how far `expected`'s moved from `initial`."""
    expected, actual = expected.model.state_dict(), actual.model.state_dict()
    names = [n for n, t in initial.items() if t.is_floating_point() and _group(n) == group]
    moved = torch.cat([(expected[n] - initial[n]).float().flatten() for n in names]).norm()
    apart = torch.cat([(actual[n] - expected[n]).float().flatten() for n in names]).norm()
    return (apart / moved).item()  # NaN or inf, and so no match, where nothing moved


def _group(name: str) -> str:
    if "running_" in name:
        return "BatchNorm statistics"
    return "target" if name.startswith("target.") else "online weights"


GROUPS = ("online weights", "target", "BatchNorm statistics")


def test_a_compiled_bf16_channels_last_run_tracks_an_fp32_eager_run(tiny):
    settings = {**tiny, "device": "cuda", **MOVING}
    reference, initial, reference_losses = _run(
        {**settings, "precision": "fp32", "compile": False}, "fp32")
    fast, _, fast_losses = _run({**settings, "precision": "bf16", "compile": True}, "bf16")
    assert fast_losses == pytest.approx(reference_losses, rel=5e-2)
    # bf16 keeps 8 bits of each convolution's and matmul's inputs, and the encoder's gradient
    # is ill-conditioned here (it reaches the features through BatchNorms over 8 images, and
    # most of it cancels). With bf16 autocast on the CPU (oneDNN, which like cuDNN accumulates
    # in fp32) one step's update is already 45% of its size away from fp32's (the first
    # convolution's 57%, the predictor's 11%), two steps' 45-50%, the BatchNorm statistics 1%.
    # 0.75 still fails a step lost, doubled or reversed (1 or more).
    for group in GROUPS:
        apart = _apart(initial, reference, fast, group)
        assert apart < 0.75, f"{group}: {apart:.2f} of the distance moved"


def test_a_cuda_checkpoint_resumes_on_the_cpu(tiny):
    trained, initial, _ = _run({**tiny, "device": "cuda", **MOVING}, "run")
    trainer, resumed_from = prepare_run(None, {"device": "cpu"}, None, "run/last.pt")
    assert resumed_from is not None and trainer.step == 2
    assert trainer.config.precision == "bf16"  # precision is part of the run, not the device
    # The weights the GPU moved, the target and the BatchNorm statistics, bit for bit.
    expected, actual = trained.model.state_dict(), trainer.model.state_dict()
    assert not torch.equal(expected["online.encoder.conv1.weight"].cpu(),
                           initial["online.encoder.conv1.weight"].cpu())
    for name in expected:
        assert actual[name].device.type == "cpu"
        assert torch.equal(actual[name], expected[name].cpu()), name
    for p, q in zip(trained.model.trainable_parameters(), trainer.model.trainable_parameters(),
                    strict=True):
        assert torch.equal(trainer.optimizer.state[q]["momentum_buffer"],
                           trained.optimizer.state[p]["momentum_buffer"].cpu())


@pytest.mark.parametrize("source", ["folder", "demo"])
def test_dali_decodes_and_augments_on_the_gpu_in_channels_last(source, cifar_folder):
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
    # On an H100 two eager runs of this tiny network (batch 8) with the same seed agree exactly
    # for three steps, then cuDNN's unordered sums grow chaotically (5% apart by step 6), and
    # bf16 runs drift sooner. Fused and eager differ in rounding only (the loss kernel, the
    # order LARS sums its norms in): over three warmup steps, of which only the last moved
    # the weights, their losses were 1.3e-4 apart.
    settings = {**tiny, "device": "cuda", **MOVING, "precision": "fp32", "compile": False}
    eager, initial, eager_losses = _run({**settings, "kernels": "eager"}, "eager")
    fused, _, fused_losses = _run({**settings, "kernels": "fused"}, "fused")
    assert fused_losses == pytest.approx(eager_losses, rel=1e-3)
    # Rounding differences grow through the ill-conditioned gradient of the encoder (it
    # reaches the features through BatchNorms over 8 images, and most of it cancels). On the
    # CPU, where torch.compile changes the rounding of every operation and not just these,
    # two such steps leave the weights 3% (the target 2%) of the distance they moved apart,
    # and the momenta 8% of their size. 20% still fails a step lost, doubled or applied twice
    # to the target (100% or more).
    for group in GROUPS:
        apart = _apart(initial, eager, fused, group)
        assert apart < 0.2, f"{group}: {apart:.2f} of the distance moved"
    eager_momenta = eager.optimizer.flat.momenta.data  # both laid out alike (channels_last)
    apart = (fused.optimizer.flat.momenta.data - eager_momenta).norm()
    assert apart < 0.2 * eager_momenta.norm()


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
