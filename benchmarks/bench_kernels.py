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
from targets import describe, verdicts  # noqa: E402

from byol.profiling.ops import byol_shapes, implementations, rows_as_dicts, time_ops  # noqa: E402


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
    shapes = byol_shapes(args.arch)
    loss_shape, loss_dtype = (args.loss_batch, args.loss_dim), getattr(torch, args.loss_dtype)
    impls = implementations(shapes[0], device, fused=device.type == "cuda",
                            compiled=args.compile)
    check_implementations(impls, shapes, loss_shape, loss_dtype, device)
    copy_gb_per_s, rows = time_ops(impls, shapes, loss_shape, loss_dtype, device)
    result = {
        "benchmark": "kernels",
        **environment(device),
        "arch": args.arch, "online_parameters": sum(s.numel() for s in shapes[0]),
        "target_parameters": sum(s.numel() for s in shapes[1]), "tensors": len(shapes[0]),
        "loss_shape": [args.loss_batch, args.loss_dim], "loss_dtype": args.loss_dtype,
        "copy_gb_per_s": copy_gb_per_s,
        "ops": rows_as_dicts(rows),
    }
    found = verdicts(result)
    result["verdicts"] = [dataclasses.asdict(verdict) for verdict in found]
    print(f"{device} copy bandwidth: {copy_gb_per_s:.0f} GB/s")
    for row in rows:
        print(f"{row.op:>5} {row.impl:>17}: {row.median_ms:9.3f} ms {row.gb_per_s:8.1f} GB/s "
              f"{100 * row.share_of_copy:5.1f}% of copy {row.speedup:6.2f}x")
    for verdict in found:
        print(describe(verdict))
    print(f"saved {save_result(f'kernels-{args.arch}-{device.type}', result)}")


if __name__ == "__main__":
    main()
