"""The three hot operations at ResNet-50 BYOL sizes: per-tensor loop, foreach, compiled
foreach and fused Triton kernels, side by side, against the measured copy bandwidth.

    python benchmarks/bench_kernels.py                     # ResNet-50 sizes, on the GPU
    python benchmarks/bench_kernels.py --device cpu --arch resnet18 --loss-batch 512

Every implementation is first checked against `kernels.reference`, then timed
(`triton.testing.do_bench` on the GPU; the median of a few calls on the CPU). GB/s counts the
bytes each operation must move at least: EMA 12 per parameter (read both, write the target),
LARS 28 (norms: read w and g; update: read w, g, mu, write mu, w), the loss 10 per input
element in its dtype (forward reads 4 inputs; backward reads 4, writes 2 gradients). The fused
kernels need a GPU; on the CPU they are skipped. Results go to benchmarks/results/.
"""

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))
from common import environment, save_result  # noqa: E402

from byol.config import ModelConfig  # noqa: E402
from byol.models import BYOL  # noqa: E402
from kernels import reference  # noqa: E402

TAU = 0.996
LARS_HYPER = dict(lr=1e-3, weight_decay=1e-6, momentum=0.9, eta=1e-3)
# DESIGN's targets: fraction of copy bandwidth, and speed-up over the named baseline.
TARGETS = {"ema": (0.85, "foreach", 1.0), "lars": (0.80, "foreach", 3.0),
           "loss": (None, "eager", 2.0)}


# ----------------------------------------------------------------------------- the tensors

def byol_shapes(arch: str) -> tuple[list[torch.Size], list[torch.Size]]:
    """(online + predictor parameter shapes, target parameter shapes) of a BYOL model."""
    with torch.device("meta"):
        model = BYOL(ModelConfig(arch=arch))
    return ([p.shape for p in model.trainable_parameters()],
            [p.shape for p in model.target.parameters()])


class Tensors:
    """Tensors of `shapes` stored back to back in one flat fp32 buffer (the fused layout),
    the per-tensor views of it being what the other implementations see."""

    def __init__(self, shapes: Sequence[torch.Size], device: torch.device, seed: int):
        generator = torch.Generator(device=device).manual_seed(seed)
        numels = [s.numel() for s in shapes]
        self.flat = torch.randn(sum(numels), device=device, generator=generator)
        self.views = [f.view(s) for f, s in zip(self.flat.split(numels), shapes)]

    def clone(self) -> "Tensors":
        copy = object.__new__(Tensors)
        copy.flat = self.flat.clone()
        copy.views = [f.view(v.shape) for f, v in zip(copy.flat.split(
            [v.numel() for v in self.views]), self.views)]
        return copy


# ----------------------------------------------------------------------------- baselines

def foreach_ema_(target: list[Tensor], online: list[Tensor], tau: float) -> None:
    torch._foreach_lerp_(target, online, 1.0 - tau)


def foreach_lars_(params: list[Tensor], grads: list[Tensor], momenta: list[Tensor],
                  excluded: Sequence[bool], *, lr: float, weight_decay: float, momentum: float,
                  eta: float) -> None:
    """LARS with torch's multi-tensor (foreach) ops: the usual fast PyTorch way."""
    scaled = [i for i, skip in enumerate(excluded) if not skip]
    updates = list(grads)
    decayed = torch._foreach_add([grads[i] for i in scaled], [params[i] for i in scaled],
                                 alpha=weight_decay)
    w_norms = torch.stack(torch._foreach_norm([params[i] for i in scaled]))
    u_norms = torch.stack(torch._foreach_norm(decayed))
    trust = torch.where((w_norms > 0) & (u_norms > 0), eta * w_norms / u_norms, 1.0)
    torch._foreach_mul_(decayed, list(trust.unbind()))
    for i, update in zip(scaled, decayed):
        updates[i] = update
    torch._foreach_mul_(momenta, momentum)
    torch._foreach_add_(momenta, updates)
    torch._foreach_add_(params, momenta, alpha=-lr)


# ----------------------------------------------------------------------------- operations

def ema_implementations(fused: bool) -> dict[str, Callable]:
    """name -> fn(target: Tensors, online: Tensors)."""
    compiled = torch.compile(foreach_ema_)
    impls = {
        "per-tensor": lambda t, o: reference.ema_update_(t.views, o.views, TAU),
        "foreach": lambda t, o: foreach_ema_(t.views, o.views, TAU),
        "compiled foreach": lambda t, o: compiled(t.views, o.views, TAU),
    }
    if fused:
        from kernels import ema
        impls["fused"] = lambda t, o: ema.ema_update_(t.flat, o.flat, TAU)
    return impls


def lars_implementations(shapes: Sequence[torch.Size], device: torch.device,
                         fused: bool) -> dict[str, Callable]:
    """name -> fn(params: Tensors, grads: Tensors, momenta: Tensors)."""
    excluded = [len(s) <= 1 for s in shapes]
    compiled = torch.compile(foreach_lars_)
    impls = {
        "per-tensor": lambda w, g, m: reference.lars_step_(w.views, g.views, m.views, excluded,
                                                           **LARS_HYPER),
        "foreach": lambda w, g, m: foreach_lars_(w.views, g.views, m.views, excluded,
                                                 **LARS_HYPER),
        "compiled foreach": lambda w, g, m: compiled(w.views, g.views, m.views, excluded,
                                                     **LARS_HYPER),
    }
    if fused:
        from kernels import lars
        table = lars.lars_table([s.numel() for s in shapes], excluded, device)
        impls["fused"] = lambda w, g, m: lars.lars_step_(w.flat, g.flat, m.flat, table,
                                                         **LARS_HYPER)
    return impls


def loss_implementations(fused: bool) -> dict[str, Callable]:
    """name -> fn(online_1, online_2, target_1, target_2): forward and backward."""
    def forward_backward(loss_fn):
        def run(o1, o2, t1, t2):
            loss_fn(o1, o2, t1, t2).backward()
            return o1.grad, o2.grad
        return run

    impls = {"eager": forward_backward(reference.byol_loss),
             "compiled": forward_backward(torch.compile(reference.byol_loss))}
    if fused:
        import kernels.loss  # noqa: F401  (registers torch.ops.byolctl.byol_loss)
        impls["fused"] = forward_backward(torch.ops.byolctl.byol_loss)
    return impls


# ----------------------------------------------------------------------------- checks

def check_ema(impls: dict[str, Callable], shapes, device) -> None:
    online = Tensors(shapes, device, seed=1)
    expected = Tensors(shapes, device, seed=0)
    reference.ema_update_(expected.views, online.views, TAU)
    for name, fn in impls.items():
        target = Tensors(shapes, device, seed=0)
        fn(target, online)
        torch.testing.assert_close(target.flat, expected.flat, msg=lambda m: f"EMA {name}: {m}")


def check_lars(impls: dict[str, Callable], shapes, device) -> None:
    grads = Tensors(shapes, device, seed=1)
    expected, expected_momenta = Tensors(shapes, device, seed=0), Tensors(shapes, device, 2)
    reference.lars_step_(expected.views, grads.views, expected_momenta.views,
                         [len(s) <= 1 for s in shapes], **LARS_HYPER)
    for name, fn in impls.items():
        params, momenta = Tensors(shapes, device, seed=0), Tensors(shapes, device, 2)
        fn(params, grads, momenta)
        for mine, theirs, what in ((params, expected, "params"),
                                   (momenta, expected_momenta, "momenta")):
            torch.testing.assert_close(mine.flat, theirs.flat, atol=1e-5, rtol=1e-4,
                                       msg=lambda m: f"LARS {name} {what}: {m}")


def loss_inputs(batch: int, dim: int, dtype: torch.dtype, device) -> list[Tensor]:
    generator = torch.Generator(device=device).manual_seed(0)
    inputs = [torch.randn(batch, dim, device=device, generator=generator).to(dtype)
              for _ in range(4)]
    for online in inputs[:2]:
        online.requires_grad_()
    return inputs


def check_loss(impls: dict[str, Callable], batch, dim, dtype, device) -> None:
    expected = None
    for name, fn in impls.items():
        grads = [g.float() for g in fn(*loss_inputs(batch, dim, dtype, device))]
        expected = expected or grads
        torch.testing.assert_close(grads, expected, atol=1e-2 if dtype == torch.bfloat16
                                   else 1e-5, rtol=1e-2, msg=lambda m: f"loss {name}: {m}")


# ----------------------------------------------------------------------------- timing

def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median milliseconds per call, after warmup."""
    if device.type == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
    fn()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def copy_bandwidth(numel: int, device: torch.device) -> float:
    """Measured GB/s of a device-to-device copy of `numel` fp32 values (read + write)."""
    source = torch.randn(numel, device=device)
    destination = torch.empty_like(source)
    ms = time_ms(lambda: destination.copy_(source), device)
    return 2 * 4 * numel / ms / 1e6


def rows(op: str, impls: dict[str, Callable], call: Callable[[Callable], object],
         bytes_moved: int, copy_gb_per_s: float, device) -> list[dict]:
    results = []
    for name, fn in impls.items():
        ms = time_ms(lambda fn=fn: call(fn), device)
        gb_per_s = bytes_moved / ms / 1e6
        results.append({"op": op, "impl": name, "ms": ms, "gb_per_s": gb_per_s,
                        "share_of_copy": gb_per_s / copy_gb_per_s})
    return results


def verdicts(results: list[dict]) -> dict[str, dict]:
    """The fused kernels against DESIGN's targets (meaningful on a GPU only)."""
    out = {}
    for op, (min_share, baseline, min_speedup) in TARGETS.items():
        ms = {r["impl"]: r for r in results if r["op"] == op}
        if "fused" not in ms:
            continue
        speedup = ms[baseline]["ms"] / ms["fused"]["ms"]
        share = ms["fused"]["share_of_copy"]
        out[op] = {"share_of_copy": share, "min_share": min_share,
                   f"speedup_vs_{baseline}": speedup, "min_speedup": min_speedup,
                   "met": (min_share is None or share >= min_share) and speedup >= min_speedup}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50", help="BYOL model whose sizes to use")
    parser.add_argument("--loss-batch", type=int, default=4096)
    parser.add_argument("--loss-dim", type=int, default=256)
    parser.add_argument("--loss-dtype", choices=["bfloat16", "float32"], default="bfloat16")
    parser.add_argument("--device", choices=["cuda", "cpu"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    fused = device.type == "cuda"
    online_shapes, target_shapes = byol_shapes(args.arch)
    online_numel = sum(s.numel() for s in online_shapes)
    target_numel = sum(s.numel() for s in target_shapes)
    dtype = getattr(torch, args.loss_dtype)

    ema_impls = ema_implementations(fused)
    lars_impls = lars_implementations(online_shapes, device, fused)
    loss_impls = loss_implementations(fused)
    check_ema(ema_impls, target_shapes, device)
    check_lars(lars_impls, online_shapes, device)
    check_loss(loss_impls, args.loss_batch, args.loss_dim, dtype, device)

    copy_gb_per_s = copy_bandwidth(online_numel, device)
    target, online = Tensors(target_shapes, device, 0), Tensors(target_shapes, device, 1)
    params, grads, momenta = (Tensors(online_shapes, device, seed) for seed in (0, 1, 2))
    inputs = loss_inputs(args.loss_batch, args.loss_dim, dtype, device)
    results = (
        rows("ema", ema_impls, lambda fn: fn(target, online), 12 * target_numel,
             copy_gb_per_s, device)
        + rows("lars", lars_impls, lambda fn: fn(params, grads, momenta), 28 * online_numel,
               copy_gb_per_s, device)
        + rows("loss", loss_impls, lambda fn: fn(*inputs),
               10 * args.loss_batch * args.loss_dim * dtype.itemsize, copy_gb_per_s, device)
    )
    result = {
        "benchmark": "kernels",
        **environment(device),
        "arch": args.arch, "online_parameters": online_numel,
        "target_parameters": target_numel, "tensors": len(online_shapes),
        "loss_shape": [args.loss_batch, args.loss_dim], "loss_dtype": args.loss_dtype,
        "copy_gb_per_s": copy_gb_per_s,
        "results": results,
        "targets": verdicts(results),
    }
    print(f"{device} copy bandwidth: {copy_gb_per_s:.0f} GB/s; {args.arch}: "
          f"{online_numel / 1e6:.2f}M online, {target_numel / 1e6:.2f}M target parameters in "
          f"{len(online_shapes)} tensors")
    for r in results:
        print(f"{r['op']:>5} {r['impl']:>17}: {r['ms']:9.3f} ms {r['gb_per_s']:8.1f} GB/s "
              f"{100 * r['share_of_copy']:5.1f}% of copy")
    for op, verdict in result["targets"].items():
        print(f"{op:>5} target {'met' if verdict['met'] else 'NOT met'}: {verdict}")
    print(f"saved {save_result(f'kernels-{args.arch}-{device.type}', result)}")


if __name__ == "__main__":
    main()
