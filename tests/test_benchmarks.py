"""The kernel benchmark's implementations (baselines and fused) agree with the references, so
its timings compare like with like. Tiny sizes; the fused kernels run under the interpreter."""

import importlib.util

import torch

from tests.conftest import REPO

SHAPES = [torch.Size(s) for s in [(8, 3, 3, 3), (8,), (8,), (33, 8), (5,), (7, 33)]]


def _bench_kernels():
    spec = importlib.util.spec_from_file_location(
        "bench_kernels", REPO / "benchmarks" / "bench_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_benchmarked_implementation_matches_the_reference():
    bench = _bench_kernels()
    device = torch.device("cpu")
    bench.check_ema(bench.ema_implementations(fused=True), SHAPES, device)
    bench.check_lars(bench.lars_implementations(SHAPES, device, fused=True), SHAPES, device)
    for dtype in (torch.float32, torch.bfloat16):
        bench.check_loss(bench.loss_implementations(fused=True), 9, 16, dtype, device)


def test_resnet50_byol_sizes_are_what_the_targets_assume():
    online, target = _bench_kernels().byol_shapes("resnet50")
    assert 34e6 < sum(s.numel() for s in online) < 36e6
    assert 32e6 < sum(s.numel() for s in target) < 34e6
    assert 160 < len(online) < 180
