"""The performance targets' verdicts (benchmarks/targets.py) on small hand-made results: a met
and a not-met case for each kind of target, and no verdict where a result did not measure it."""

import json
import sys
from pathlib import Path

import pytest

# benchmarks/ is a folder of scripts, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import targets  # noqa: E402

H100 = "NVIDIA H100 80GB HBM3"


def op_row(op: str, impl: str, median_ms: float, share_of_copy: float = 0.1) -> dict:
    return {"op": op, "impl": impl, "median_ms": median_ms, "share_of_copy": share_of_copy}


def step_row(kernels: str, compiled: bool, images_per_s: float) -> dict:
    return {"kernels": kernels, "compile": compiled, "images_per_s": images_per_s}


def profile_result(ops=(), steps=(), device=H100, **settings) -> dict:
    """The fields of `byolctl profile --json` that the targets read."""
    return {"environment": {"device": device},
            "settings": {"arch": "resnet50", "image_size": 224, "batch_size": 256,
                         "precision": "bf16", **settings},
            "ops": list(ops), "steps": list(steps)}


def verdict(result: dict, target: str) -> targets.Verdict | None:
    return next((v for v in targets.verdicts(result) if v.target == target), None)


@pytest.mark.parametrize("share,foreach_ms,met", [
    (0.90, 1.2, True),    # 90% of copy, 1.2x foreach
    (0.80, 1.2, False),   # below 85% of copy
    (0.90, 0.9, False),   # slower than foreach
])
def test_the_ema_kernel_needs_85_percent_of_copy_and_to_beat_foreach(share, foreach_ms, met):
    result = profile_result(ops=[op_row("ema", "foreach", foreach_ms),
                                 op_row("ema", "fused", 1.0, share)])
    found = verdict(result, "ema kernel")
    assert found.met is met
    assert found.measured == {"share_of_copy": share, "speedup_vs_foreach": foreach_ms}


@pytest.mark.parametrize("share,foreach_ms,met", [
    (0.80, 3.0, True), (0.79, 3.5, False), (0.95, 2.9, False)])
def test_the_lars_kernel_needs_80_percent_of_copy_and_3x_foreach(share, foreach_ms, met):
    result = profile_result(ops=[op_row("lars", "foreach", foreach_ms),
                                 op_row("lars", "fused", 1.0, share)])
    assert verdict(result, "lars kernel").met is met


@pytest.mark.parametrize("eager_ms,met", [(2.0, True), (1.9, False)])
def test_the_loss_kernel_needs_2x_eager_at_any_share_of_copy(eager_ms, met):
    result = profile_result(ops=[op_row("loss", "eager", eager_ms),
                                 op_row("loss", "fused", 1.0, share_of_copy=0.01)])
    assert verdict(result, "loss kernel").met is met


def test_kernels_timed_without_their_fused_version_get_no_verdict():
    result = profile_result(ops=[op_row(op, impl, 1.0) for op, impl in
                                 (("ema", "foreach"), ("lars", "foreach"), ("loss", "eager"))],
                            device="CPU (x86_64, 2 threads)")
    assert targets.verdicts(result) == []


@pytest.mark.parametrize("fused,met", [(110.0, True), (100.0, False)])
def test_fused_steps_must_be_faster_than_eager(fused, met):
    result = profile_result(steps=[step_row("eager", False, 100.0),
                                   step_row("fused", False, fused)])
    assert verdict(result, "fused faster than eager").met is met


@pytest.mark.parametrize("compiled,met", [(120.0, True), (90.0, False)])
def test_compiled_steps_must_be_faster_than_not(compiled, met):
    result = profile_result(steps=[step_row("eager", False, 100.0),
                                   step_row("eager", True, compiled)])
    assert verdict(result, "compiled faster than not").met is met


RESNET50 = "whole step, ResNet-50 at 224 px in bf16, on an H100"
CIFAR = "whole step, CIFAR ResNet-18 at 32 px, batch 256, in bf16, on an H100"


@pytest.mark.parametrize("images_per_s,met", [(1800.0, True), (1799.0, False)])
def test_resnet50_steps_on_an_h100_need_1800_images_per_s(images_per_s, met):
    result = profile_result(steps=[step_row("fused", True, images_per_s)])
    assert verdict(result, RESNET50).met is met


@pytest.mark.parametrize("images_per_s,met", [(20_000.0, True), (6_400.0, False)])
def test_cifar_steps_on_an_h100_need_20000_images_per_s(images_per_s, met):
    result = profile_result(steps=[step_row("fused", True, images_per_s)], arch="resnet18",
                            image_size=32)
    assert verdict(result, CIFAR).met is met


@pytest.mark.parametrize("change", [
    {"device": "NVIDIA H200"}, {"arch": "resnet18"}, {"image_size": 160},
    {"precision": "fp32"}])
def test_throughput_on_another_gpu_model_size_or_precision_gets_no_verdict(change):
    result = profile_result(steps=[step_row("fused", True, 5000.0)], **change)
    assert verdict(result, RESNET50) is None


def test_a_bench_step_result_is_judged_like_a_profile_result():
    flat = {"benchmark": "whole training step", "device": H100, "arch": "resnet50",
            "image_size": 224, "batch_size": 256, "precision": "bf16",
            **step_row("fused", True, 1500.0)}
    assert [(v.target, v.met) for v in targets.verdicts(flat)] == [(RESNET50, False)]


def test_every_target_names_where_its_numbers_come_from():
    assert all(target.source.startswith("DESIGN.md") for target in targets.TARGETS)


def test_the_script_prints_the_verdicts_of_a_profile_json(tmp_path, capsys):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile_result(ops=[op_row("loss", "eager", 1.5),
                                                   op_row("loss", "fused", 1.0)])))
    targets.main([str(path)])
    out = capsys.readouterr().out
    assert "loss kernel: NOT met (share_of_copy 0.1, speedup_vs_eager 1.5; wanted at least " \
           "2x eager)" in out


def peer_row(library: str, images_per_s: float, precision: str = "bf16") -> dict:
    return {"library": library, "precision": precision, "images_per_s": images_per_s}


@pytest.mark.parametrize("lightly,met", [(1000.0, True), (1400.0, False)])
def test_the_training_step_needs_1_5x_lightlys(lightly, met):
    result = {**profile_result(steps=[step_row("fused", True, 1500.0)]),
              "peers": [peer_row("lightly", lightly)]}
    found = verdict(result, "lightly side by side")
    assert found.met is met
    assert found.measured["ratio"] == pytest.approx(1500.0 / lightly)


@pytest.mark.parametrize("byol_pytorch,met", [(750.0, True), (800.0, False)])
def test_the_training_step_needs_2x_byol_pytorchs(byol_pytorch, met):
    result = {**profile_result(steps=[step_row("fused", True, 1500.0)]),
              "peers": [peer_row("byol-pytorch", byol_pytorch)]}
    assert verdict(result, "byol-pytorch side by side").met is met


def test_peers_are_judged_in_the_results_precision_only_and_against_the_training_step():
    in_fp32 = {**profile_result(steps=[step_row("fused", True, 1500.0)]),
               "peers": [peer_row("lightly", 100.0, precision="fp32")]}
    not_compiled = {**profile_result(steps=[step_row("fused", False, 1500.0)]),
                    "peers": [peer_row("lightly", 100.0)]}
    assert verdict(in_fp32, "lightly side by side") is None
    assert verdict(not_compiled, "lightly side by side") is None


@pytest.mark.parametrize("pipeline,met", [(2500.0, True), (1500.0, False)])
def test_the_pipeline_at_224_px_must_outrun_the_training_step(pipeline, met):
    result = {**profile_result(steps=[step_row("fused", True, 2000.0)]),
              "data_images_per_s": pipeline}
    assert verdict(result, "data pipeline at 224 px").met is met
    assert verdict({**result, "settings": {"image_size": 32}}, "data pipeline at 224 px") is None
