"""The three hot operations at ResNet-50 BYOL sizes: per-tensor loop, foreach, compiled
foreach and fused Triton kernels, side by side, against the measured copy bandwidth.

    python benchmarks/bench_kernels.py                     # ResNet-50 sizes, on the GPU
    python benchmarks/bench_kernels.py --device cpu --arch resnet18 --loss-batch 512

Every implementation is first checked against `kernels.reference` on these sizes, with the
kernel tests' per-dtype tolerances (`kernels.tolerances`, applied by checks.py), and any
mismatch stops the run; then each is timed (`triton.testing.do_bench` on the GPU; the median of
a few calls on the CPU); see `byol.profiling.ops` for the bytes each operation counts. The
fused kernels need a GPU; on the CPU they are skipped. The result, with the verdicts of the
kernel targets (benchmarks/targets.py; docs/profiling.md#performance-targets), goes to
benchmarks/results/.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from checks import check_implementations  # noqa: E402
from common import environment, save_result  # noqa: E402
from targets import Verdict, describe, verdicts  # noqa: E402

from byol.profiling.ops import byol_shapes, implementations, rows_as_dicts, time_ops  # noqa: E402


def measure(arch: str, shapes: tuple[list[torch.Size], list[torch.Size]],
            loss_shape: tuple[int, int], loss_dtype: torch.dtype, device: torch.device,
            compiled: bool) -> dict:
    """Check, then time, every implementation of the three operations on (online, target)
    parameter `shapes` (`byol_shapes(arch)`; `arch` names them in the result) and loss inputs of
    `loss_shape` (batch, dim) in `loss_dtype`: the result, with the kernel targets' verdicts.
    AssertionError, naming what differed, if an implementation disagrees with the reference."""
    impls = implementations(shapes[0], device, fused=device.type == "cuda", compiled=compiled)
    check_implementations(impls, shapes, loss_shape, loss_dtype, device)
    copy_gb_per_s, rows = time_ops(impls, shapes, loss_shape, loss_dtype, device)
    result = {
        "benchmark": "kernels",
        **environment(device),
        "arch": arch, "online_parameters": sum(s.numel() for s in shapes[0]),
        "target_parameters": sum(s.numel() for s in shapes[1]), "tensors": len(shapes[0]),
        "loss_shape": list(loss_shape), "loss_dtype": str(loss_dtype).removeprefix("torch."),
        "copy_gb_per_s": copy_gb_per_s,
        "ops": rows_as_dicts(rows),
    }
    result["verdicts"] = [dataclasses.asdict(verdict) for verdict in verdicts(result)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50", help="BYOL model whose sizes to use")
    parser.add_argument("--loss-batch", type=int, default=4096)
    parser.add_argument("--loss-dim", type=int, default=256)
    parser.add_argument("--loss-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--device", choices=["cuda", "cpu"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="include the compiled variants")
    args = parser.parse_args()
    device = torch.device(args.device)
    result = measure(args.arch, byol_shapes(args.arch), (args.loss_batch, args.loss_dim),
                     getattr(torch, args.loss_dtype), device, args.compile)
    print(f"{device} copy bandwidth: {result['copy_gb_per_s']:.0f} GB/s")
    for row in result["ops"]:
        print(f"{row['op']:>5} {row['impl']:>17}: {row['median_ms']:9.3f} ms "
              f"{row['gb_per_s']:8.1f} GB/s {100 * row['share_of_copy']:5.1f}% of copy "
              f"{row['speedup']:6.2f}x")
    for verdict in result["verdicts"]:
        print(describe(Verdict(**verdict)))
    print(f"saved {save_result(f'kernels-{args.arch}-{device.type}', result)}")


if __name__ == "__main__":
    main()
