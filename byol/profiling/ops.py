"""The three hot operations in every implementation, timed side by side.

    EMA:  per-tensor (the reference), foreach (`torch._foreach_lerp_`), compiled foreach, fused
    LARS: per-tensor (the reference), foreach, compiled foreach, fused
    loss: eager (the reference, forward and backward), compiled, fused

Bytes moved count what each operation must move at least: EMA 12 per parameter (read both,
write the target), LARS 28 (norms: read w and g; update: read w, g, mu, write mu and w), the
loss 10 per input element in its dtype (forward reads 4 inputs; backward reads 4 and writes
2 gradients). The tensors sit in one flat buffer, as in training, so every implementation sees
the same memory.

Whether each implementation agrees with the reference is for the kernel tests and the
benchmarks' checks (benchmarks/checks.py) to say; this module only times them.
"""

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from byol.config import ModelConfig
from byol.models import BYOL
from byol.profiling.timing import copy_bandwidth, time_call
from kernels import reference

# The values do not change the work timed; BYOL's base tau and a small lr keep the thousands
# of repeated calls on the same tensors finite.
TAU = 0.996
LARS_HYPER = dict(lr=1e-3, weight_decay=1e-6, momentum=0.9, eta=1e-3)
# Each row's `speedup` is against this implementation of the same operation.
BASELINE = {"ema": "per-tensor", "lars": "per-tensor", "loss": "eager"}


def bytes_moved(op: str, numel: int, itemsize: int = 4) -> int:
    """The least traffic of one call: see the module docstring. `numel` is parameters for
    ema and lars and elements of one loss input for loss."""
    return {"ema": 12 * numel, "lars": 28 * numel, "loss": 10 * numel * itemsize}[op]


def byol_shapes(arch: str, projector_hidden: int = 4096,
                projector_dim: int = 256) -> tuple[list[torch.Size], list[torch.Size]]:
    """(online + predictor parameter shapes, target parameter shapes) of a BYOL model."""
    with torch.device("meta"):
        model = BYOL(ModelConfig(arch=arch, projector_hidden=projector_hidden,
                                 projector_dim=projector_dim))
    return ([p.shape for p in model.trainable_parameters()],
            [p.shape for p in model.target.parameters()])


class Tensors:
    """Random tensors of `shapes` stored back to back in one flat fp32 buffer (`flat`), and
    their per-tensor views (`views`)."""

    def __init__(self, shapes: Sequence[torch.Size], device: torch.device, seed: int):
        generator = torch.Generator(device=device).manual_seed(seed)
        self.shapes = list(shapes)
        self.flat = torch.randn(sum(s.numel() for s in shapes), device=device,
                                generator=generator)
        self.views = [f.view(s) for f, s in
                      zip(self.flat.split([s.numel() for s in shapes]), shapes)]


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


# ----------------------------------------------------------------------------- implementations

def ema_implementations(fused: bool, compiled: bool) -> dict[str, Callable]:
    """name -> fn(target: Tensors, online: Tensors)."""
    impls = {
        "per-tensor": lambda t, o: reference.ema_update_(t.views, o.views, TAU),
        "foreach": lambda t, o: foreach_ema_(t.views, o.views, TAU),
    }
    if compiled:
        compiled_ema = torch.compile(foreach_ema_)
        impls["compiled foreach"] = lambda t, o: compiled_ema(t.views, o.views, TAU)
    if fused:
        from kernels import ema
        impls["fused"] = lambda t, o: ema.ema_update_(t.flat, o.flat, TAU)
    return impls


def lars_implementations(shapes: Sequence[torch.Size], device: torch.device, fused: bool,
                         compiled: bool) -> dict[str, Callable]:
    """name -> fn(params: Tensors, grads: Tensors, momenta: Tensors)."""
    excluded = [len(s) <= 1 for s in shapes]

    def with_views(step):
        return lambda w, g, m: step(w.views, g.views, m.views, excluded, **LARS_HYPER)

    impls = {"per-tensor": with_views(reference.lars_step_), "foreach": with_views(foreach_lars_)}
    if compiled:
        impls["compiled foreach"] = with_views(torch.compile(foreach_lars_))
    if fused:
        from kernels import lars
        table = lars.lars_table([s.numel() for s in shapes], excluded, device)
        impls["fused"] = lambda w, g, m: lars.lars_step_(w.flat, g.flat, m.flat, table,
                                                         **LARS_HYPER)
    return impls


def loss_implementations(fused: bool, compiled: bool) -> dict[str, Callable]:
    """name -> fn(online_1, online_2, target_1, target_2): forward and backward; returns the
    gradients of online_1 and online_2."""
    def forward_backward(loss_fn):
        def run(o1, o2, t1, t2):
            o1.grad = o2.grad = None
            loss_fn(o1, o2, t1, t2).backward()
            return o1.grad, o2.grad
        return run

    impls = {"eager": forward_backward(reference.byol_loss)}
    if compiled:
        impls["compiled"] = forward_backward(torch.compile(reference.byol_loss))
    if fused:
        import kernels.loss  # noqa: F401  (registers torch.ops.byolctl.byol_loss)
        impls["fused"] = forward_backward(torch.ops.byolctl.byol_loss)
    return impls


def implementations(online_shapes: Sequence[torch.Size], device: torch.device, *,
                    fused: bool, compiled: bool) -> dict[str, dict[str, Callable]]:
    """Every implementation of each operation: {"ema" | "lars" | "loss": {name: fn}} (see
    `ema_implementations`, `lars_implementations` and `loss_implementations` for each fn's
    arguments). `fused` adds the Triton kernels (a GPU, or the Triton interpreter);
    `compiled`, the torch.compile variants."""
    return {"ema": ema_implementations(fused, compiled),
            "lars": lars_implementations(online_shapes, device, fused, compiled),
            "loss": loss_implementations(fused, compiled)}


def loss_inputs(batch: int, dim: int, dtype: torch.dtype, device) -> list[Tensor]:
    """Predictions (requiring grad) and target projections, (batch, dim) each."""
    generator = torch.Generator(device=device).manual_seed(0)
    inputs = [torch.randn(batch, dim, device=device, generator=generator).to(dtype)
              for _ in range(4)]
    for online in inputs[:2]:
        online.requires_grad_()
    return inputs


# ----------------------------------------------------------------------------- timing

@dataclass
class OpRow:
    """One implementation of one operation, timed."""

    op: str
    impl: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    bytes: int
    gb_per_s: float
    share_of_copy: float
    speedup: float  # against the per-tensor (eager) baseline of the same operation


def time_ops(impls: dict[str, dict[str, Callable]],
             shapes: tuple[list[torch.Size], list[torch.Size]], loss_shape: tuple[int, int],
             loss_dtype: torch.dtype, device: torch.device) -> tuple[float, list[OpRow]]:
    """(copy GB/s, a row per operation and implementation) for `impls` from `implementations`;
    `shapes` are (online, target) parameter shapes, `loss_shape` is (batch, dim)."""
    online_shapes, target_shapes = shapes
    online_numel = sum(s.numel() for s in online_shapes)
    target_numel = sum(s.numel() for s in target_shapes)
    copy_gb_per_s = copy_bandwidth(online_numel, device)
    target, online = Tensors(target_shapes, device, 0), Tensors(target_shapes, device, 1)
    params, grads, momenta = (Tensors(online_shapes, device, seed) for seed in (0, 1, 2))
    inputs = loss_inputs(*loss_shape, loss_dtype, device)
    cases = [
        ("ema", lambda fn: fn(target, online), bytes_moved("ema", target_numel)),
        ("lars", lambda fn: fn(params, grads, momenta), bytes_moved("lars", online_numel)),
        ("loss", lambda fn: fn(*inputs),
         bytes_moved("loss", loss_shape[0] * loss_shape[1], loss_dtype.itemsize)),
    ]
    rows = []
    for op, call, moved in cases:
        timings = {name: time_call(lambda fn=fn: call(fn), device)
                   for name, fn in impls[op].items()}
        baseline = timings[BASELINE[op]].median_ms
        for name, timing in timings.items():
            gb_per_s = moved / timing.median_ms / 1e6
            rows.append(OpRow(op, name, timing.median_ms, timing.p10_ms, timing.p90_ms, moved,
                              gb_per_s, gb_per_s / copy_gb_per_s, baseline / timing.median_ms))
    return copy_gb_per_s, rows


def rows_as_dicts(rows: list[OpRow]) -> list[dict]:
    """The rows as JSON-ready dicts."""
    return [asdict(row) for row in rows]
