"""benchmarks/gpu_suite.py: the whole suite runs CPU-sized (--tiny), writes each part's result
as it goes and a summary at the end, names every part it skips and why, and keeps to its
budget; verdicts land on the lines of the measurements they judge. The numbers in the hand-made
results below are inputs to the summary, not measurements."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

# benchmarks/ is a folder of scripts, not an installed package.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_data  # noqa: E402
import gpu_suite  # noqa: E402
from gpu_suite import Part, Suite  # noqa: E402

H100 = "NVIDIA H100 80GB HBM3"


@pytest.mark.slow
def test_a_tiny_cpu_run_writes_each_parts_result_and_a_summary(tmp_path):
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--tiny",
                          "--device", "cpu", "--results", str(results), "--archive",
                          str(tmp_path / "suite.tar.gz")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(next(results.glob("suite-cpu-*.json")).read_text())
    records = {record["part"]: record for record in summary["parts"]}
    assert set(records) == {part.name for part in gpu_suite.PARTS}
    assert records["kernels"]["status"] == records["step-eager"]["status"] == "ran"
    for record in records.values():
        if record["status"] == "ran":
            jsons = [f for f in record["files"] if f.endswith(".json")]
            assert jsons and all(json.loads((results / f).read_text()) for f in jsons), record
        else:
            assert record["status"] == "skipped" and record["reason"], record
            assert f"skipped  {record['part']}: {record['reason']}" in run.stdout
    for part in ("tests", "step-fused-compiled", "step-cifar", "step-fused"):
        assert "CUDA" in records[part]["reason"]
    assert "--tiny" in records["quality"]["reason"]
    assert "== gpu_suite summary" in run.stdout
    assert any(line.startswith("kernels  ema foreach") for line in run.stdout.splitlines())
    assert any(line.startswith("step     resnet18 16 px") for line in run.stdout.splitlines())
    assert (results / next(results.glob("suite-cpu-*.txt")).name).read_text().splitlines() \
        == summary["lines"]
    assert (tmp_path / "suite.tar.gz").is_file()


def fake_part(name: str, estimate_s: float, run) -> Part:
    return Part(name, f"the {name} part", (estimate_s, estimate_s), (), run,
                lambda result, suite: [(None, f"fake     {name}: {result['value']}")])


def test_a_part_the_budget_cannot_fit_is_skipped_and_one_that_overruns_is_cut_off(tmp_path):
    def first(suite):
        suite.save("first", "first", {"value": 1})

    def overrun(suite):
        time.sleep(30)

    parts = (fake_part("first", 0.1, first), fake_part("too-long", 100, first),
             fake_part("overrun", 0.1, overrun))
    suite = Suite(torch.device("cpu"), tiny=True, folder=tmp_path, budget_s=1.5, archive=None)
    started = time.monotonic()
    for part in parts:
        gpu_suite.run_part(suite, part)
    lines = gpu_suite.write_summary(suite, parts)

    assert time.monotonic() - started < 10
    assert [r.status for r in suite.records] == ["ran", "skipped", "cut-off"]
    assert "the budget cannot fit it" in suite.records[1].reason
    assert json.loads(next(tmp_path.glob("first-*.json")).read_text()) == {"value": 1}
    assert "fake     first: 1" in lines
    assert any(line.startswith("skipped  too-long: the budget cannot fit it") for line in lines)
    assert any(line.startswith("cut-off  overrun") for line in lines)


def step(kernels: str, compiled: bool, images_per_s: float, **settings) -> dict:
    return {"device": H100, "arch": "resnet50", "image_size": 224, "batch_size": 256,
            "precision": "bf16", "kernels": kernels, "compile": compiled,
            "images_per_s": images_per_s, "ms_per_step": 100.0, "mfu_bf16": 0.15,
            "peak_memory_gib": 40.0, **settings}


def test_a_verdict_is_printed_on_the_line_of_the_measurement_it_judges(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_suite, "environment", lambda device: {"device": H100,
                                                                   "commit": "abc1234"})
    suite = Suite(torch.device("cpu"), tiny=False, folder=tmp_path, budget_s=480, archive=None)
    suite.results = {
        "step-fused-compiled": step("fused", True, 2000.0),
        "peers": {"settings": {"precision": "bf16"}, "failed": [], "peers": [
            {"library": "lightly", "version": "1", "precision": "bf16", "as_documented": False,
             "images_per_s": 1000.0, "ms_per_step": 256.0},
            {"library": "lightly", "version": "1", "precision": "fp32", "as_documented": True,
             "images_per_s": 500.0, "ms_per_step": 512.0},
            {"library": "byol-pytorch", "version": "1", "precision": "bf16",
             "as_documented": False, "images_per_s": 1200.0, "ms_per_step": 213.0}]},
        "step-cifar": step("fused", True, 6400.0, arch="resnet18", image_size=32),
        "step-eager": step("eager", False, 1500.0),
    }
    suite.records = [gpu_suite.Record(name, "ran") for name in suite.results]
    _, lines = gpu_suite.summary(suite)

    def line(start: str) -> str:
        return next(line for line in lines if line.startswith(start))

    assert line("step     resnet50 224 px, batch 256, bf16, fused kernels, compiled").endswith(
        "=> whole step, ResNet-50 at 224 px in bf16, on an H100: met (wanted fused kernels, "
        "compiled: at least 1,800 images/s)")
    assert "=> lightly side by side: met" in line("peers    lightly 1 (bf16)")
    assert "=>" not in line("peers    lightly 1 (fp32, as documented)")
    assert "=> byol-pytorch side by side: NOT met" in line("peers    byol-pytorch 1 (bf16)")
    assert "2,000 images/s = 1.67x" in line("peers    byol-pytorch 1 (bf16)")
    assert "20,000 images/s" in line("step     resnet18 32 px") and "NOT met" in line(
        "step     resnet18 32 px")
    assert "=>" not in line("step     resnet50 224 px, batch 256, bf16, eager kernels")


def test_asking_for_cuda_without_a_gpu_is_one_line_with_exit_status_2(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as stopped:
        gpu_suite.main(["--device", "cuda"])
    assert stopped.value.code == 2
    assert "--device cuda needs a GPU" in capsys.readouterr().err


def test_the_generated_jpegs_have_imagenets_shapes_and_file_sizes(tmp_path):
    folder = bench_data.imagenet_like_jpegs(tmp_path / "jpegs", len(bench_data.IMAGENET_SHAPES))
    files = sorted((folder / "images").glob("*.jpg"))
    assert [Image.open(f).size for f in files] == list(bench_data.IMAGENET_SHAPES)
    mean_kb = sum(f.stat().st_size for f in files) / len(files) / 1000
    assert 70 < mean_kb < 160  # ImageNet's JPEGs average about 110 KB
