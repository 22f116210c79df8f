"""BYOL's performance targets (DESIGN.md, "Performance targets") as data, and their verdicts on
a measured result.

    python benchmarks/targets.py profile.json      # written by `byolctl profile --json`
    python benchmarks/targets.py benchmarks/results/kernels-resnet50-cuda-20261122.json
    python benchmarks/targets.py benchmarks/results/suite-cuda-DATE.json   # gpu_suite.py's

A result is what `byolctl profile --json` writes (`environment`, `settings`, `ops`, `steps`,
`data_images_per_s`), what bench_kernels.py and bench_step.py save (the same numbers at the
top level, and one timed step variant), or what gpu_suite.py saves (its summary in the
profile's layout, with the peers' steps as `peers` rows). A target gets a verdict only from a
result that measured what it names: the kernel targets need the fused kernels (a GPU), the
throughput targets their model, sizes and GPU, the peer and data targets byolctl's fused and
compiled step beside the peer or the pipeline. The standard library only, so that it runs
wherever the JSON is.
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DESIGN = "DESIGN.md, Performance targets"


@dataclass(frozen=True)
class Measured:
    """What the targets read from a result, whichever layout it came in."""

    device: str
    settings: dict[str, Any]
    """As the run used them: arch, image_size, batch_size, precision, ..."""
    ops: dict[tuple[str, str], dict[str, Any]]
    """(op, implementation) -> its row: median_ms, share_of_copy, ..."""
    images_per_s: dict[tuple[str, bool], float]
    """(kernels, compiled) -> whole training steps' images/s (two views each)."""
    peers: dict[str, float]
    """library -> its training steps' images/s, timed in the result's precision."""
    data_images_per_s: float | None
    """The two-view data pipeline's images/s."""


def measured(result: dict[str, Any]) -> Measured:
    """The measurements in a `byolctl profile --json` result (nested) or a benchmark's (flat)."""
    environment = result.get("environment", result)
    settings = result.get("settings", result)
    steps = result.get("steps")
    if not isinstance(steps, list):
        # bench_step.py saves its one timed variant at the top level; bench_quality.py's
        # `steps` is a count, and it times no step on its own.
        steps = [result] if {"kernels", "compile", "images_per_s"} <= result.keys() else []
    return Measured(
        device=environment.get("device", ""),
        settings=settings,
        ops={(row["op"], row["impl"]): row for row in result.get("ops", [])},
        images_per_s={(step["kernels"], step["compile"]): step["images_per_s"]
                      for step in steps},
        peers={row["library"]: row["images_per_s"] for row in result.get("peers", [])
               if row["precision"] == settings.get("precision")},
        data_images_per_s=result.get("data_images_per_s"))


@dataclass(frozen=True)
class Verdict:
    """One target judged on one result."""

    target: str
    met: bool
    measured: dict[str, float]
    """The numbers the verdict was drawn from."""
    wanted: str
    """The target's condition, in words."""
    source: str
    """Where the target's numbers come from."""


def variant_name(variant: tuple[str, bool]) -> str:
    """A whole-step variant, (kernels, compiled), in words: "fused kernels, compiled"."""
    kernels, compiled = variant
    return f"{kernels} kernels, {'compiled' if compiled else 'not compiled'}"


# The measurement a target judges, as each target's `about` names it (gpu_suite.py prints a
# verdict on the line of that measurement).
def kernel_about(op: str) -> str:
    return f"{op} fused"


def peer_about(library: str) -> str:
    return f"peer {library}"


DATA_ABOUT = "data pipeline"


@dataclass(frozen=True)
class KernelTarget:
    """A fused kernel against the measured copy bandwidth and against a baseline
    implementation timed in the same run."""

    op: str
    """The operation as the result's `ops` rows name it: "ema", "lars" or "loss"."""
    baseline: str
    min_speedup: float
    """The baseline's median time over the fused kernel's, at least."""
    min_share_of_copy: float | None
    """The fused kernel's GB/s over the copy's GB/s, at least; None: no bandwidth target."""
    source: str

    def judge(self, found: Measured) -> Verdict | None:
        """The verdict, or None where the result did not time both implementations."""
        fused, baseline = found.ops.get((self.op, "fused")), found.ops.get((self.op,
                                                                            self.baseline))
        if fused is None or baseline is None:
            return None
        share = fused["share_of_copy"]
        speedup = baseline["median_ms"] / fused["median_ms"]
        met = speedup >= self.min_speedup
        wanted = f"at least {self.min_speedup:g}x {self.baseline}"
        if self.min_share_of_copy is not None:
            met = met and share >= self.min_share_of_copy
            wanted = f"at least {self.min_share_of_copy:.0%} of the copy bandwidth and {wanted}"
        return Verdict(f"{self.op} kernel", met,
                       {"share_of_copy": share, f"speedup_vs_{self.baseline}": speedup},
                       wanted, self.source)

    @property
    def about(self) -> str:
        return kernel_about(self.op)


@dataclass(frozen=True)
class FasterTarget:
    """One whole-step variant faster than another, both timed in the same run."""

    name: str
    faster: tuple[str, bool]
    """(kernels, compiled) of the variant that must give more images/s."""
    slower: tuple[str, bool]
    source: str

    def judge(self, found: Measured) -> Verdict | None:
        """The verdict, or None where the result did not time both variants."""
        if not {self.faster, self.slower} <= found.images_per_s.keys():
            return None
        fast, slow = found.images_per_s[self.faster], found.images_per_s[self.slower]
        return Verdict(self.name, fast > slow,
                       {"images_per_s": fast, "baseline_images_per_s": slow},
                       f"{variant_name(self.faster)}: more images/s than "
                       f"{variant_name(self.slower)}", self.source)

    @property
    def about(self) -> str:
        return variant_name(self.faster)


@dataclass(frozen=True)
class ThroughputTarget:
    """Whole-step images/s of one variant, at least, on the model, sizes and GPU it names."""

    name: str
    variant: tuple[str, bool]
    """(kernels, compiled)."""
    settings: dict[str, Any]
    """What the run must have used: arch, image_size, ..."""
    gpu: str
    """A word of the device's name, such as "H100"."""
    min_images_per_s: float
    source: str

    def judge(self, found: Measured) -> Verdict | None:
        """The verdict, or None where the result timed another variant, model, size or GPU."""
        if (self.gpu not in found.device or self.variant not in found.images_per_s
                or any(found.settings.get(key) != value for key, value in self.settings.items())):
            return None
        images_per_s = found.images_per_s[self.variant]
        return Verdict(self.name, images_per_s >= self.min_images_per_s,
                       {"images_per_s": images_per_s},
                       f"{variant_name(self.variant)}: at least "
                       f"{self.min_images_per_s:,.0f} images/s", self.source)

    @property
    def about(self) -> str:
        return variant_name(self.variant)


# The byolctl step that the peer and data targets hold against: the one that trains.
TRAINING_VARIANT = ("fused", True)


@dataclass(frozen=True)
class PeerTarget:
    """byolctl's training step (fused kernels, compiled) against a peer library's, timed in the
    same run on the same GPU, model, batch and precision: images/s over the peer's, at least."""

    library: str
    """As the result's `peers` rows name it: "lightly", "byol-pytorch"."""
    min_ratio: float
    source: str

    def judge(self, found: Measured) -> Verdict | None:
        """The verdict, or None where the result did not time both steps."""
        ours, theirs = found.images_per_s.get(TRAINING_VARIANT), found.peers.get(self.library)
        if ours is None or theirs is None:
            return None
        return Verdict(f"{self.library} side by side", ours / theirs >= self.min_ratio,
                       {"images_per_s": ours, f"{self.library}_images_per_s": theirs,
                        "ratio": ours / theirs},
                       f"{variant_name(TRAINING_VARIANT)}: at least {self.min_ratio:g}x "
                       f"{self.library}'s images/s", self.source)

    @property
    def about(self) -> str:
        return peer_about(self.library)


@dataclass(frozen=True)
class DataTarget:
    """The two-view pipeline delivers images faster than byolctl's training step (fused
    kernels, compiled) consumes them, at the view size it names."""

    image_size: int
    source: str

    def judge(self, found: Measured) -> Verdict | None:
        """The verdict, or None where the result did not time both at that view size."""
        consumed = found.images_per_s.get(TRAINING_VARIANT)
        if (found.data_images_per_s is None or consumed is None
                or found.settings.get("image_size") != self.image_size):
            return None
        return Verdict(f"data pipeline at {self.image_size} px", found.data_images_per_s > consumed,
                       {"data_images_per_s": found.data_images_per_s,
                        "images_per_s": consumed},
                       f"more images/s than the step ({variant_name(TRAINING_VARIANT)}) "
                       "consumes", self.source)

    @property
    def about(self) -> str:
        return DATA_ABOUT


Target = KernelTarget | FasterTarget | ThroughputTarget | PeerTarget | DataTarget

TARGETS: tuple[Target, ...] = (
    KernelTarget("ema", baseline="foreach", min_speedup=1.0, min_share_of_copy=0.85,
                 source=f"{DESIGN}: EMA over ResNet-50 BYOL's ~33M target parameters within 85% "
                        "of the measured copy bandwidth, and faster than torch._foreach_lerp_"),
    KernelTarget("lars", baseline="foreach", min_speedup=3.0, min_share_of_copy=0.80,
                 source=f"{DESIGN}: LARS over ~35M parameters within 80% of bandwidth, and at "
                        "least 3x a foreach-based LARS"),
    KernelTarget("loss", baseline="eager", min_speedup=2.0, min_share_of_copy=None,
                 source=f"{DESIGN}: loss forward+backward at batch 4096, dim 256, both "
                        "directions, at least 2x eager PyTorch"),
    FasterTarget("fused faster than eager", faster=("fused", False), slower=("eager", False),
                 source=f"{DESIGN}: whole step, fused faster than eager"),
    FasterTarget("compiled faster than not", faster=("eager", True), slower=("eager", False),
                 source=f"{DESIGN}: whole step, compiled faster than not"),
    ThroughputTarget("whole step, ResNet-50 at 224 px in bf16, on an H100",
                     variant=("fused", True),
                     settings={"arch": "resnet50", "image_size": 224, "precision": "bf16"},
                     gpu="H100", min_images_per_s=1800,
                     source=f"{DESIGN}: at least 1,800 images/s (two views each), aiming at "
                            "2,400: the efficiency of NVIDIA's MLPerf ResNet-50 (about 7,200 "
                            "supervised images/s per H100) applied to BYOL's cost"),
    ThroughputTarget("whole step, CIFAR ResNet-18 at 32 px, batch 256, in bf16, on an H100",
                     variant=("fused", True),
                     settings={"arch": "resnet18", "image_size": 32, "batch_size": 256,
                               "precision": "bf16"},
                     gpu="H100", min_images_per_s=20_000,
                     source=f"{DESIGN}: at least 20,000 images/s, 3x the 6,400 recorded "
                            "(bench_quality.py, 100 epochs), so 100 epochs take under 5 minutes"),
    PeerTarget("lightly", min_ratio=1.5,
               source=f"{DESIGN}: peers side by side on the same GPU, model and batch, at least "
                      "1.5x lightly's training step"),
    PeerTarget("byol-pytorch", min_ratio=2.0,
               source=f"{DESIGN}: peers side by side on the same GPU, model and batch, at least "
                      "2x byol-pytorch's training step"),
    DataTarget(image_size=224,
               source=f"{DESIGN}: the DALI pipeline on the GPU makes two 224 px views from "
                      "ImageNet-sized JPEGs faster than the trainer consumes them"),
)


def verdicts(result: dict[str, Any], targets: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    """A verdict for each of `targets` that `result` measured, in their order. `result` is
    the JSON of `byolctl profile --json`, bench_kernels.py or bench_step.py, as a dict."""
    found = measured(result)
    return [verdict for target in targets if (verdict := target.judge(found)) is not None]


def describe(verdict: Verdict) -> str:
    """One line: the target, met or NOT met, the numbers measured and what was wanted."""
    numbers = ", ".join(f"{key} {value:.3g}" if value < 1000 else f"{key} {value:,.0f}"
                        for key, value in verdict.measured.items())
    return (f"{verdict.target}: {'met' if verdict.met else 'NOT met'} ({numbers}; wanted "
            f"{verdict.wanted})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Verdicts of the performance targets on measured results.")
    parser.add_argument("results", nargs="+", type=Path,
                        help="JSON from `byolctl profile --json`, bench_kernels.py, "
                             "bench_step.py or gpu_suite.py (benchmarks/results/)")
    args = parser.parse_args(argv)
    for path in args.results:
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            parser.error(f"cannot read {path} as a result ({error}); pass the JSON file that "
                         "`byolctl profile --json` or a benchmark wrote.")
        if not isinstance(result, dict):
            parser.error(f"{path} holds no result object; pass the JSON file that "
                         "`byolctl profile --json` or a benchmark wrote.")
        found = verdicts(result)
        print(f"{path}:")
        for verdict in found:
            print(f"  {describe(verdict)}\n    target from {verdict.source}")
        if not found:
            print("  no target applies: the kernel targets need the fused kernels (timed on a "
                  "GPU), the others whole steps of their variants, model, sizes and GPU, and "
                  "the peer and data targets the fused, compiled step beside them.")


if __name__ == "__main__":
    main()
