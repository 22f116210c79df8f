"""Everything a lent GPU should measure, in one command that fits the loan: the GPU tests, the
kernels, whole training steps, the peers side by side, and with DALI the data pipeline and a
short quality run.

    python benchmarks/gpu_suite.py --budget-seconds 480 --archive suite.tar.gz  # a lent GPU
    python benchmarks/gpu_suite.py --tiny --device cpu     # every part CPU-sized, ~a minute
    python benchmarks/gpu_suite.py --only kernels peers    # some parts, in the suite's order

The parts run most valuable first (`PARTS`). One starts only when its estimated time fits in
what is left of the budget, and one that runs past the budget is cut off; the summary says
what was skipped or cut off and why. Each part's result is written to the results folder as
soon as it exists, and the summary - one greppable line per measurement (the first word says
what it is: tests, kernels, step, peers, data, quality; skipped, failed, cut-off), with its
target's verdict from targets.py where one applies - is rewritten after every part, so a run
stopped from outside keeps what it did; `--archive` packs all of it into one file as it goes.

Before a GPU run: `bash benchmarks/fetch_peers.sh` (the peers, into .peers/site), and for the
data parts the DALI wheels (docs/profiling.md, "The GPU suite").
"""

import argparse
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
# The lent GPU machine has the project's tree but not the project installed.
sys.path[:0] = [str(BENCHMARKS), str(REPO)]
import bench_data  # noqa: E402
import bench_kernels  # noqa: E402
import bench_step  # noqa: E402
import peers  # noqa: E402
from bench_quality import ARCHIVE as CIFAR_ARCHIVE  # noqa: E402
from common import environment, release_memory, result_path, save_result, time_loop  # noqa: E402
from targets import (  # noqa: E402
    DATA_ABOUT,
    TARGETS,
    TRAINING_VARIANT,
    Verdict,
    kernel_about,
    measured,
    peer_about,
    variant_name,
)

from byol.profiling.ops import BASELINE, byol_shapes  # noqa: E402
from byol.runtime import runtime_defaults  # noqa: E402

GPU_TESTS = ("tests/test_gpu.py", "tests/test_loss_kernel.py", "tests/test_ema_kernel.py",
             "tests/test_lars_kernel.py")
# The GPU tests stop here even with budget left, so that they cannot starve the benchmarks.
TESTS_CAP_S = 180
CACHE = REPO / ".cache"
# pytest -v's line for each test's outcome.
TEST_OUTCOME = re.compile(r"^(tests/\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", re.M)


# ---------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    """What the parts measure at: the real sizes, or --tiny's."""

    step: dict
    """Flat config fields of the main whole step (ResNet-50 at 224 px), the peers' too."""
    cifar: dict
    """Of the CIFAR-size step (ResNet-18, small stem, 32 px)."""
    warmup: int
    steps: int
    """Untimed, then timed training steps per variant."""
    kernel_arch: str
    kernel_projector: tuple[int, int]
    kernel_tensors: int | None
    """Time the operations over the model's first this many tensors only; None: all."""
    loss_shape: tuple[int, int]
    jpegs: int
    jpeg_scale: float
    data_batch: int
    data_batches: tuple[int, int]
    """Untimed, then timed data batches."""
    quality_args: tuple[str, ...]
    """bench_quality.py's options."""


FULL = Sizes(
    step={"arch": "resnet50", "image_size": 224, "batch_size": 256, "precision": "bf16"},
    cifar={"arch": "resnet18", "image_size": 32, "batch_size": 256, "precision": "bf16"},
    warmup=5, steps=20,
    kernel_arch="resnet50", kernel_projector=(4096, 256), kernel_tensors=None,
    loss_shape=(4096, 256),
    # 4 batches an epoch, so that few of the timed batches wait on the reader's reset.
    jpegs=1024, jpeg_scale=1.0, data_batch=256, data_batches=(3, 10),
    quality_args=("--epochs", "3", "--linear-epochs", "10"),
)
_TINY_MODEL = {"arch": "resnet18", "batch_size": 4, "projector_hidden": 64, "projector_dim": 32}
TINY = Sizes(
    step={**_TINY_MODEL, "image_size": 16}, cifar={**_TINY_MODEL, "image_size": 32},
    warmup=1, steps=1,
    kernel_arch="resnet18", kernel_projector=(64, 32), kernel_tensors=10, loss_shape=(256, 32),
    jpegs=16, jpeg_scale=0.2, data_batch=4, data_batches=(1, 2),
    quality_args=("--epochs", "1", "--image-size", "16", "--batch-size", "16",
                  "--train-images", "40", "--val-images", "40", "--linear-epochs", "1",
                  "--workers", "2"),
)


# ---------------------------------------------------------------- the run


@dataclass
class Record:
    """What became of one part."""

    part: str
    status: str
    """ran, failed, cut-off or skipped."""
    reason: str = ""
    seconds: float = 0.0
    estimate_s: float = 0.0
    files: list[str] = field(default_factory=list)


@dataclass
class Suite:
    """One run: its options, its clock and what its parts measured."""

    device: torch.device
    tiny: bool
    folder: Path
    budget_s: float
    archive: Path | None
    only: tuple[str, ...] = ()
    """The parts --only names; () for all."""
    started: float = field(default_factory=time.monotonic)
    records: list[Record] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)
    """Part name -> its result."""

    @property
    def sizes(self) -> Sizes:
        return TINY if self.tiny else FULL

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def say(self, text: str) -> None:
        print(f"[{self.elapsed():5.0f} s] {text}", flush=True)

    def save(self, part: str, name: str, result: dict) -> Path:
        """Write a part's result now, and keep it for the summary."""
        self.results[part] = result
        path = save_result(name, result, self.folder)
        self.records[-1].files.append(path.name)
        return path

    def path(self, name: str, suffix: str) -> Path:
        """A further file of the running part (a log), recorded with it."""
        path = result_path(name, self.folder, suffix)
        self.records[-1].files.append(path.name)
        return path


@dataclass(frozen=True)
class Part:
    """One measurement of the suite."""

    name: str
    what: str
    estimate_s: tuple[float, float]
    """(at the real sizes on an H100/H200, with --tiny on a 2-core CPU). The GPU figures are
    guesses until a run records each part's seconds in its summary: correct them from there."""
    needs: tuple[str, ...]
    """Names in NEEDS."""
    run: Callable[[Suite], None]
    lines: Callable[[dict, Suite], list[tuple[str | None, str]]]
    """The summary's lines of its result: (what a target's `about` would name, the line)."""


class OutOfBudget(BaseException):
    """The budget ran out during a part (a BaseException, so that no `except Exception` in the
    code being measured swallows it)."""


def _out_of_budget(signum, frame):
    raise OutOfBudget


def run_part(suite: Suite, part: Part) -> Record:
    """Run `part` if what it needs is here and its estimate fits in the budget left, with a
    timer that cuts it off when the budget runs out; returns its record (also in
    `suite.records`)."""
    estimate = part.estimate_s[suite.tiny]
    record = Record(part.name, "skipped", estimate_s=estimate)
    suite.records.append(record)
    reason = next((why for need in part.needs if (why := NEEDS[need](suite, part))), None)
    if reason is None and estimate > suite.left():
        reason = (f"the budget cannot fit it: about {estimate:.0f} s needed, "
                  f"{max(suite.left(), 0):.0f} s left")
    if reason is not None:
        record.reason = reason
        suite.say(f"skip {part.name}: {reason}")
        return record
    suite.say(f"start {part.name}: {part.what} (about {estimate:.0f} s; "
              f"{suite.left():.0f} s left)")
    start = time.monotonic()
    previous = signal.signal(signal.SIGALRM, _out_of_budget)
    signal.setitimer(signal.ITIMER_REAL, max(suite.left(), 0.01))  # 0 would mean no timer
    try:
        part.run(suite)
        record.status = "ran"
    except OutOfBudget:
        record.status, record.reason = "cut-off", "the budget ran out while it ran"
    except Exception as error:  # one broken part must not stop the others
        traceback.print_exc()
        record.status = "failed"
        record.reason = f"{type(error).__name__}: {_first_line(error)}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        record.seconds = time.monotonic() - start
    suite.say(f"{'done' if record.status == 'ran' else record.status} {part.name} in "
              f"{record.seconds:.0f} s{': ' + record.reason if record.reason else ''}"
              f"{' -> ' + ', '.join(record.files) if record.files else ''}")
    return record


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "(no message)"


# ---------------------------------------------------------------- what parts need


def _dali_missing() -> str | None:
    try:
        importlib.import_module("nvidia.dali")
    except ImportError:
        return ("DALI is not installed (import nvidia.dali fails); carry its wheels to run "
                "this part")
    return None


def _compile_too_slow(suite: Suite) -> bool:
    return suite.tiny and suite.device.type == "cpu"


def _slow_for_tiny(suite: Suite, part: Part) -> str | None:
    if suite.tiny and part.name not in suite.only:
        return "it takes minutes even at its smallest: --tiny leaves it out unless --only names it"
    return None


# What a part may need, each with why it is missing (None: it is there).
NEEDS: dict[str, Callable[[Suite, Part], str | None]] = {
    "cuda": lambda s, p: None if s.device.type == "cuda" else "needs a CUDA GPU (--device cuda)",
    "slow": _slow_for_tiny,
    "compile": lambda s, p: ("torch.compile takes about half a minute on a CPU: --tiny "
                             "leaves it out" if _compile_too_slow(s) else None),
    "peers": lambda s, p: peers.missing(),
    "dali": lambda s, p: _dali_missing(),
    "cifar": lambda s, p: (None if CIFAR_ARCHIVE.is_file() else
                           f"CIFAR-10 is not here: expected {CIFAR_ARCHIVE}"),
}


# ---------------------------------------------------------------- the parts


def _subprocess_env() -> dict[str, str]:
    """This environment, with the project importable (it is not installed on a lent GPU)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def run_capped(command: list[str], timeout: float, env: dict[str, str], log: Path) -> int | None:
    """Run `command` in REPO with its output in `log`; its exit status, or None when it ran
    past `timeout` seconds. It runs in its own process group, which is killed whole when the
    time is up or the budget runs out (compile workers included)."""
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def run_tests(suite: Suite) -> None:
    """The GPU tests, compiled for the GPU (not the Triton interpreter), capped at
    TESTS_CAP_S; pass/fail counts from pytest's per-test lines, so a capped run still counts
    what finished."""
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *GPU_TESTS]
    log = suite.path(f"tests-{suite.device.type}", ".log")
    cap = min(TESTS_CAP_S, suite.left())
    status = run_capped(command, cap, {**_subprocess_env(), "TRITON_INTERPRET": "0"}, log)
    output = log.read_text()
    outcomes = TEST_OUTCOME.findall(output)
    suite.save("tests", f"tests-{suite.device.type}", {
        "benchmark": "GPU tests",
        **environment(suite.device),
        "command": "TRITON_INTERPRET=0 python -m pytest -v " + " ".join(GPU_TESTS),
        "exit_status": status, "stopped_at_cap": status is None, "cap_s": cap,
        "counts": dict(Counter(outcome.lower() for _, outcome in outcomes)),
        "not_passed": [f"{test} {outcome}" for test, outcome in outcomes
                       if outcome in ("FAILED", "ERROR")],
        "last_line": output.strip().splitlines()[-1] if output.strip() else "",
    })


def run_kernels(suite: Suite) -> None:
    """bench_kernels.py's checks and timings: EMA, LARS and the loss."""
    sizes = suite.sizes
    online, target = byol_shapes(sizes.kernel_arch, *sizes.kernel_projector)
    arch = sizes.kernel_arch
    if sizes.kernel_tensors is not None:
        online, target = online[:sizes.kernel_tensors], target[:sizes.kernel_tensors]
        arch = f"{arch}'s first {sizes.kernel_tensors} tensors"
    compiled = not _compile_too_slow(suite)
    result = bench_kernels.measure(arch, (online, target), sizes.loss_shape, torch.bfloat16,
                                   suite.device, compiled)
    suite.save("kernels", f"kernels-{sizes.kernel_arch}-{suite.device.type}", result)


def step_settings(suite: Suite, group: str) -> dict:
    """The flat config fields of the main ("step") or the CIFAR-size ("cifar") step."""
    return {**getattr(suite.sizes, group), "device": suite.device.type}


def step_part(name: str, group: str, kernels: str, compiled: bool, what: str,
              estimate_s: tuple[float, float]) -> Part:
    """A part that times whole training steps (bench_step.py) of one variant."""
    def run(suite: Suite) -> None:
        # As in a fresh process: a compiled module that met another image size before would
        # be recompiled for dynamic shapes.
        torch.compiler.reset()
        sizes = suite.sizes
        settings = {**step_settings(suite, group), "kernels": kernels, "compile": compiled}
        config = bench_step.step_config(settings, sizes.warmup, sizes.steps)
        result = bench_step.measure(config, sizes.warmup, sizes.steps)
        suite.save(name, f"step-{config.model.arch}-{config.image_size}px-{kernels}"
                         f"{'-compiled' if compiled else ''}-{suite.device.type}", result)

    needs = ("cuda",) * (kernels == "fused") + ("compile",) * compiled
    return Part(name, what, estimate_s, needs, run, step_lines)


def main_steps(suite: Suite) -> list[dict]:
    """The main step's variants timed so far, as `steps` rows."""
    return [result for name, result in suite.results.items()
            if name.startswith("step-") and name != "step-cifar"]


def run_peers(suite: Suite) -> None:
    """lightly's and byol-pytorch's steps (peers.py) at the main step's model, batch and
    device, in its precision and in fp32 as their documentation runs them."""
    sizes = suite.sizes
    config = bench_step.step_config(step_settings(suite, "step"), sizes.warmup, sizes.steps)
    model = (config.model.arch, config.image_size, config.batch_size,
             config.model.projector_hidden, config.model.projector_dim)
    rows = []
    for library in peers.LIBRARIES:
        for precision in dict.fromkeys((config.precision, "fp32")):
            row = {"library": library, "version": peers.version(library),
                   "precision": precision, "as_documented": precision == "fp32"}
            try:
                step = peers.STEPS[library](*model, precision, suite.device,
                                            sizes.warmup + sizes.steps)
                row.update(time_loop(step, config.batch_size, sizes.warmup, sizes.steps,
                                     suite.device))
            except Exception as error:  # the other peer is still worth timing
                row["error"] = f"{type(error).__name__}: {_first_line(error)}"
            finally:
                step = None  # its model and optimizer, so that the next peer starts with none
                release_memory(suite.device)
            rate = _rate(row["images_per_s"]) if "images_per_s" in row else row["error"]
            suite.say(f"  {library} {precision}: {rate}")
            rows.append(row)
    suite.save("peers", f"peers-{config.model.arch}-{config.image_size}px-"
                        f"{suite.device.type}", {
        "benchmark": "peers' training steps",
        **environment(suite.device),
        "settings": {"arch": config.model.arch, "image_size": config.image_size,
                     "batch_size": config.batch_size, "precision": config.precision,
                     "projector_hidden": config.model.projector_hidden,
                     "projector_dim": config.model.projector_dim},
        "timed_steps": sizes.steps,
        "peers": [row for row in rows if "error" not in row],
        "failed": [row for row in rows if "error" in row],
        "steps": main_steps(suite),
    })


def run_data(suite: Suite) -> None:
    """The DALI pipeline's two views at the main step's size, from ImageNet-like JPEGs made
    once into .cache/ (bench_data.py)."""
    sizes = suite.sizes
    folder = bench_data.imagenet_like_jpegs(
        CACHE / f"imagenet-like-{sizes.jpegs}-x{sizes.jpeg_scale:g}", sizes.jpegs,
        sizes.jpeg_scale)
    image_size = sizes.step["image_size"]
    workers = runtime_defaults({"device": suite.device.type})["workers"]
    result = bench_data.measure(str(folder), image_size, sizes.data_batch, workers,
                                suite.device, *sizes.data_batches)
    files = list((folder / "images").glob("*.jpg"))
    result["jpegs"] = {"count": len(files),
                       "mean_kb": sum(f.stat().st_size for f in files) / len(files) / 1000,
                       "shapes": [list(shape) for shape in bench_data.IMAGENET_SHAPES],
                       "scale": sizes.jpeg_scale, "quality": bench_data.JPEG_QUALITY}
    suite.save("data", f"data-{image_size}px-{suite.device.type}", result)


def run_quality(suite: Suite) -> None:
    """A short bench_quality.py run on CIFAR-10, writing its result into the suite's folder."""
    log = suite.path(f"quality-{suite.device.type}", ".log")
    with tempfile.TemporaryDirectory(prefix="byol-quality-") as run_dir:
        command = [sys.executable, str(BENCHMARKS / "bench_quality.py"),
                   *suite.sizes.quality_args, "--device", suite.device.type,
                   "--run-dir", run_dir]
        env = {**_subprocess_env(), "BYOL_BENCHMARK_RESULTS": str(suite.folder)}
        status = run_capped(command, suite.left(), env, log)
    saved = re.findall(r"^saved (.+\.json)$", log.read_text(), re.M)
    if status != 0 or not saved:
        raise RuntimeError(f"bench_quality.py ended with exit status {status} and no result; "
                           f"see {log.name}")
    path = Path(saved[-1])
    suite.records[-1].files.append(path.name)
    suite.results["quality"] = json.loads(path.read_text())


# ---------------------------------------------------------------- the summary's lines


def _rate(images_per_s: float) -> str:
    number = f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.3g}"
    return f"{number} images/s"


def tests_lines(result: dict, suite: Suite) -> list[tuple[str | None, str]]:
    counts = ", ".join(f"{count} {outcome}" for outcome, count in sorted(result["counts"].items()))
    capped = f", stopped at its {result['cap_s']:.0f} s cap" if result["stopped_at_cap"] else ""
    lines = [(None, f"tests    {counts or 'no test finished'} (exit status "
                    f"{result['exit_status']}{capped})")]
    return lines + [(None, f"tests    {test}") for test in result["not_passed"]]


def kernels_lines(result: dict, suite: Suite) -> list[tuple[str | None, str]]:
    return [(kernel_about(row["op"]) if row["impl"] == "fused" else None,
             f"kernels  {row['op']} {row['impl']} ({result['arch']}): "
             f"{row['median_ms']:.3f} ms, {row['gb_per_s']:,.1f} GB/s, "
             f"{row['share_of_copy']:.0%} of copy, {row['speedup']:.2f}x "
             f"{BASELINE[row['op']]}") for row in result["ops"]]


def step_lines(result: dict, suite: Suite) -> list[tuple[str | None, str]]:
    variant = variant_name((result["kernels"], result["compile"]))
    extras = [f"{result['ms_per_step']:.1f} ms/step"]
    if result["mfu_bf16"] is not None:
        extras.append(f"MFU {result['mfu_bf16']:.1%}")
    if result["peak_memory_gib"] is not None:
        extras.append(f"peak {result['peak_memory_gib']:.1f} GiB")
    return [(variant, f"step     {result['arch']} {result['image_size']} px, batch "
                      f"{result['batch_size']}, {result['precision']}, {variant}: "
                      f"{_rate(result['images_per_s'])}, {', '.join(extras)}")]


def reference_step(suite: Suite) -> dict | None:
    """The main step a peer or the data pipeline is held against: the training variant
    (fused, compiled) where it was timed, else the fastest variant timed."""
    rows = main_steps(suite)
    training = [r for r in rows if (r["kernels"], r["compile"]) == TRAINING_VARIANT]
    return (training or sorted(rows, key=lambda r: r["images_per_s"]))[-1] if rows else None


def _byolctl(step: dict) -> str:
    return (f"byolctl ({variant_name((step['kernels'], step['compile']))}) "
            f"{_rate(step['images_per_s'])}")


def peers_lines(result: dict, suite: Suite) -> list[tuple[str | None, str]]:
    ours, precision = reference_step(suite), result["settings"]["precision"]
    lines = []
    for row in result["peers"]:
        documented = ", as documented" if row["as_documented"] else ""
        against = (f"; {_byolctl(ours)} = {ours['images_per_s'] / row['images_per_s']:.2f}x"
                   if ours else "; no byolctl step timed")
        lines.append((peer_about(row["library"]) if row["precision"] == precision else None,
                      f"peers    {row['library']} {row['version']} ({row['precision']}"
                      f"{documented}): {_rate(row['images_per_s'])}, "
                      f"{row['ms_per_step']:.1f} ms/step{against}"))
    return lines + [(None, f"peers    {row['library']} ({row['precision']}): failed: "
                           f"{row['error']}") for row in result["failed"]]


def data_lines(result: dict, suite: Suite) -> list[tuple[str | None, str]]:
    ours, jpegs = reference_step(suite), result["jpegs"]
    against = (f"; {_byolctl(ours)} consumed: the pipeline delivers "
               f"{result['images_per_s'] / ours['images_per_s']:.2f}x" if ours
               else "; no byolctl step timed")
    return [(DATA_ABOUT, f"data     DALI, two {result['image_size']} px views from "
                         f"{jpegs['count']} JPEGs of {jpegs['mean_kb']:.0f} KB on average, "
                         f"batch {result['batch_size']}, {result['threads']} threads: "
                         f"{_rate(result['images_per_s'])}{against}")]


def quality_lines(result: dict, suite: Suite) -> list[tuple[str | None, str]]:
    trained, random_init = result["trained"], result["random_init"]
    return [(None, f"quality  CIFAR-10, {result['epochs']} epochs at {result['image_size']} px: "
                   f"kNN top-1 {trained['knn_top1']:.1f}% (random init "
                   f"{random_init['knn_top1']:.1f}%), linear top-1 {trained['linear_top1']:.1f}% "
                   f"({random_init['linear_top1']:.1f}%), pretraining "
                   f"{result['pretrain_seconds']:.0f} s")]


# Most valuable first: correctness on the GPU, then the kernel and throughput targets, the
# peers, the data pipeline, the remaining step variants, and last the slowest measurement.
PARTS: tuple[Part, ...] = (
    Part("tests", "the GPU tests, compiled for the GPU", (150, 150), ("cuda", "slow"),
         run_tests, tests_lines),
    Part("kernels", "EMA, LARS and the loss, checked then timed", (60, 5), (), run_kernels,
         kernels_lines),
    step_part("step-fused-compiled", "step", "fused", True,
              "the training step: fused kernels, compiled", (90, 30)),
    Part("peers", "lightly and byol-pytorch, same model and batch", (50, 20), ("peers",),
         run_peers, peers_lines),
    step_part("step-cifar", "cifar", "fused", True,
              "the CIFAR-size step: fused kernels, compiled", (45, 30)),
    Part("data", "the DALI pipeline against the step's consumption", (35, 5), ("dali",),
         run_data, data_lines),
    step_part("step-fused", "step", "fused", False, "fused kernels, not compiled", (20, 10)),
    step_part("step-eager", "step", "eager", False, "eager kernels, not compiled", (20, 10)),
    step_part("step-eager-compiled", "step", "eager", True, "eager kernels, compiled",
              (45, 30)),
    Part("quality", "a short CIFAR-10 quality run", (150, 60), ("slow", "dali", "cifar"),
         run_quality, quality_lines),
)


# ---------------------------------------------------------------- the summary


def combined(suite: Suite) -> dict:
    """What was measured at the main step's settings, in `byolctl profile --json`'s layout
    (targets.py judges it): `ops`, `steps`, `peers` and `data_images_per_s`."""
    config = bench_step.step_config(step_settings(suite, "step"), 0, 1)
    results = suite.results
    return {
        "environment": environment(suite.device),
        "settings": {"arch": config.model.arch, "image_size": config.image_size,
                     "batch_size": config.batch_size, "precision": config.precision},
        "ops": results.get("kernels", {}).get("ops", []),
        "steps": main_steps(suite),
        "peers": results.get("peers", {}).get("peers", []),
        "data_images_per_s": results.get("data", {}).get("images_per_s"),
    }


def judged(result: dict) -> dict[str, list[Verdict]]:
    """The verdicts of the targets that apply to `result`, by the measurement they judge."""
    found = measured(result)
    verdicts: dict[str, list[Verdict]] = {}
    for target in TARGETS:
        if (verdict := target.judge(found)) is not None:
            verdicts.setdefault(target.about, []).append(verdict)
    return verdicts


def summary(suite: Suite, parts: tuple[Part, ...] = PARTS) -> tuple[dict, list[str]]:
    """The run's summary result (`combined`, the CIFAR step, every part's record and every
    verdict) and its lines; `parts` make the lines of their results."""
    result = combined(suite)
    main_verdicts = judged(result)
    cifar = suite.results.get("step-cifar")
    cifar_verdicts = judged(cifar) if cifar else {}
    lines = [f"== gpu_suite summary: {result['environment']['device']}, commit "
             f"{result['environment']['commit']}, {suite.elapsed():.0f} s of a "
             f"{suite.budget_s:.0f} s budget{', --tiny' if suite.tiny else ''}"]
    by_name = {part.name: part for part in parts}
    for record in suite.records:
        if record.status != "ran":
            lines.append(f"{record.status:<8} {record.part}: {record.reason}")
            continue
        verdicts = cifar_verdicts if record.part == "step-cifar" else main_verdicts
        for about, line in by_name[record.part].lines(suite.results[record.part], suite):
            lines.append(line + "".join(
                f" => {v.target}: {'met' if v.met else 'NOT met'} (wanted {v.wanted})"
                for v in verdicts.get(about, [])))
    lines += [f"time     {r.part}: {r.status} in {r.seconds:.0f} s (estimate "
              f"{r.estimate_s:.0f} s)" for r in suite.records if r.status != "skipped"]
    every_verdict = [v for found in (main_verdicts, cifar_verdicts) for vs in found.values()
                     for v in vs]
    return {**result, "benchmark": "gpu suite", "tiny": suite.tiny, "budget_s": suite.budget_s,
            "elapsed_s": suite.elapsed(), "cifar_step": cifar,
            "parts": [asdict(record) for record in suite.records],
            "verdicts": [asdict(v) for v in every_verdict], "lines": lines}, lines


def write_summary(suite: Suite, parts: tuple[Part, ...] = PARTS) -> list[str]:
    """Write the summary (JSON, and its lines as text) beside the parts' results, pack them
    all into the archive if one was asked for; returns the lines."""
    result, lines = summary(suite, parts)
    name = f"suite-{suite.device.type}"
    written = [save_result(name, result, suite.folder), result_path(name, suite.folder, ".txt")]
    written[1].write_text("\n".join(lines) + "\n")
    if suite.archive is not None:
        partial = suite.archive.with_name(suite.archive.name + ".partial")
        with tarfile.open(partial, "w:gz") as archive:
            for path in [suite.folder / f for r in suite.records for f in r.files] + written:
                if path.is_file():  # a part cut off may not have written all of its files
                    archive.add(path, arcname=path.name)
        os.replace(partial, suite.archive)  # a run stopped while packing keeps the last pack
    return lines


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-seconds", type=float, default=480,
                        help="start no part that its estimate says cannot finish in what is "
                             "left of this; cut off one that runs past it")
    parser.add_argument("--only", nargs="+", choices=[part.name for part in PARTS],
                        metavar="PART", help="run only these parts (in the suite's order): "
                        + ", ".join(part.name for part in PARTS))
    parser.add_argument("--device", choices=["cuda", "cpu"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny models, batches and step counts: the whole suite in about "
                             "a minute on a CPU (what needs CUDA is skipped)")
    parser.add_argument("--results", type=Path,
                        help="folder for the results (default: benchmarks/results/, or "
                             ".cache/gpu-suite-tiny/ with --tiny)")
    parser.add_argument("--archive", type=Path,
                        help="also pack the run's results into this .tar.gz after every part")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a GPU and none is visible; use --device cpu.")
    folder = args.results or (CACHE / "gpu-suite-tiny" if args.tiny else BENCHMARKS / "results")
    suite = Suite(torch.device(args.device), args.tiny, folder, args.budget_seconds,
                  args.archive, tuple(args.only or ()))
    suite.say(f"gpu_suite on {args.device}{' (--tiny)' if args.tiny else ''}: a "
              f"{args.budget_seconds:.0f} s budget, results in {folder}")
    for part in PARTS:
        if args.only and part.name not in args.only:
            suite.records.append(Record(part.name, "skipped", "not among --only's parts"))
            continue
        run_part(suite, part)
        write_summary(suite)
    print("\n".join(write_summary(suite)), flush=True)
    tests = suite.results.get("tests", {}).get("counts", {})
    broken = any(r.status == "failed" for r in suite.records)
    return 1 if broken or tests.get("failed") or tests.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
