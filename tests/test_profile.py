"""Profiling: every implementation it times passes the benchmarks' check against the
reference, and its result holds well-formed timings and no verdicts, at tiny sizes on the CPU
(fused kernels under the interpreter)."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from byol.profiling import ops
from byol.profiling.run import ProfileSettings, profile
from byolctl.cli import app

# benchmarks/ is a folder of scripts, not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import checks  # noqa: E402

SHAPES = [torch.Size(s) for s in [(8, 3, 3, 3), (8,), (8,), (33, 8), (5,), (7, 33)]]
CPU = torch.device("cpu")
TINY = ProfileSettings(arch="resnet18", projector_hidden=32, projector_dim=16, batch_size=4,
                       image_size=16, steps=2, warmup=1, device="cpu", precision="fp32",
                       compile=False, workers=1)


@pytest.mark.parametrize("loss_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_profiled_implementation_passes_the_check_against_the_reference(loss_dtype):
    impls = ops.implementations(SHAPES, CPU, fused=True, compiled=True)
    checks.check_implementations(impls, (SHAPES, SHAPES), (9, 16), loss_dtype, CPU)


def test_the_check_names_an_implementation_that_differs_from_the_reference():
    impls = ops.implementations(SHAPES, CPU, fused=False, compiled=False)
    impls["ema"]["another tau"] = lambda target, online: ops.foreach_ema_(
        target.views, online.views, tau=0.99)
    with pytest.raises(AssertionError, match="EMA another tau"):
        checks.check_implementations(impls, (SHAPES, SHAPES), (9, 16), torch.float32, CPU)


def test_resnet50_byol_sizes_are_what_the_targets_assume():
    online, target = ops.byol_shapes("resnet50")
    assert 34e6 < sum(s.numel() for s in online) < 36e6
    assert 32e6 < sum(s.numel() for s in target) < 34e6
    assert 160 < len(online) < 180


@pytest.fixture(scope="module")
def result():
    return profile(TINY)


def test_the_result_is_json_with_every_field(result):
    again = json.loads(json.dumps(result))
    assert set(again) == {"environment", "settings", "parameters", "copy_gb_per_s", "ops",
                          "steps", "gflop_per_image", "data_images_per_s", "not_measured"}
    assert {"device", "torch", "triton", "commit", "date"} <= set(again["environment"])
    assert [(r["op"], r["impl"]) for r in again["ops"]] == [
        ("ema", "per-tensor"), ("ema", "foreach"), ("lars", "per-tensor"),
        ("lars", "foreach"), ("loss", "eager")]
    assert [(s["kernels"], s["compile"]) for s in again["steps"]] == [("eager", False)]
    assert any("fused kernels" in line for line in again["not_measured"])


def test_times_and_rates_are_positive(result):
    assert result["copy_gb_per_s"] > 0
    for row in result["ops"]:
        assert 0 < row["p10_ms"] <= row["median_ms"] <= row["p90_ms"]
        assert row["gb_per_s"] > 0 and row["speedup"] > 0
    assert all(s["images_per_s"] > 0 and s["ms_per_step"] > 0 for s in result["steps"])


def test_byte_counts_per_operation(result):
    online, target = ops.byol_shapes("resnet18", 32, 16)
    moved = {r["op"]: r["bytes"] for r in result["ops"]}
    assert moved["ema"] == 12 * sum(s.numel() for s in target)
    assert moved["lars"] == 28 * sum(s.numel() for s in online)
    assert moved["loss"] == 10 * 4 * 16 * 4  # fp32: 4 inputs read, 4 read + 2 written back


def test_the_profile_command_writes_json_and_a_chart(tmp_path, cifar_folder):
    json_file, plot = tmp_path / "profile.json", tmp_path / "profile.png"
    result = CliRunner().invoke(app, [
        "profile", "--arch", "resnet18", "--batch-size", "4", "--image-size", "16",
        "--steps", "1", "--device", "cpu", "--no-compile", "--data", str(cifar_folder),
        "--workers", "1", "--json", str(json_file), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "Not measured: fused kernels" in result.output
    # Timings only: the verdicts are benchmarks/targets.py's.
    assert re.search(r"\bmet\b", result.output) is None
    assert json.loads(json_file.read_text())["data_images_per_s"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
