"""Flat buffers: many tensors stored back to back in one fp32 buffer, each a view into it.

The fused EMA and LARS kernels update every tensor in one launch because parameters,
gradients, momenta and target parameters each live in one such buffer. The tensors the rest of
the code sees (`p.data`, `p.grad`, the optimizer's momentum buffers) are views with their
usual shapes and strides, channels_last included, so modules, autograd, torch.compile and
per-parameter state dicts work unchanged.
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class FlatBuffer:
    """One zero-filled fp32 buffer holding a tensor shaped and strided like each of `like`.

    `data` is the 1-D buffer; `views[i]` is the tensor matching `like[i]`, at `offsets[i]`.
    Two FlatBuffers built from tensors of the same shapes and strides share one layout, which
    is what lets a kernel pair up their elements without knowing the tensors.
    """

    def __init__(self, like: Sequence[Tensor]):
        if not like:
            raise ValueError("a flat buffer needs at least one tensor")
        self.numels = [t.numel() for t in like]
        self.offsets = [sum(self.numels[:i]) for i in range(len(like))]
        self.data = torch.zeros(sum(self.numels), dtype=torch.float32, device=like[0].device)
        self.views = [
            torch.as_strided(self.data, t.shape, _dense_strides(t), offset)
            for t, offset in zip(like, self.offsets)
        ]

    def has_layout_of(self, other: "FlatBuffer") -> bool:
        """Whether this buffer's tensors match the first tensors of `other` in shape and
        strides, so that `other.data[:len(self.data)]` pairs up with `self.data` elementwise."""
        return len(self.views) <= len(other.views) and all(
            a.shape == b.shape and a.stride() == b.stride()
            for a, b in zip(self.views, other.views)
        )


def flatten_parameters_(parameters: Sequence[nn.Parameter]) -> FlatBuffer:
    """Move `parameters` into one flat buffer: each `p.data` becomes a view into it.

    Call it after the module is on its device and in its memory format: `.to()` would replace
    the views with fresh tensors. The parameters must be fp32.
    """
    for p in parameters:
        if p.dtype != torch.float32:
            raise ValueError(f"flat buffers hold fp32 parameters, got {p.dtype}")
    values = FlatBuffer(parameters)
    with torch.no_grad():
        for p, view in zip(parameters, values.views):
            view.copy_(p)
            p.data = view
    return values


def attach_flat_gradients_(parameters: Sequence[nn.Parameter]) -> FlatBuffer:
    """Give each parameter a zero gradient that is a view into one flat buffer.

    Autograd then accumulates into these views in place. Zero the buffer's `data` rather than
    setting gradients to None, or the views are lost.
    """
    grads = FlatBuffer(parameters)
    for p, view in zip(parameters, grads.views):
        p.grad = view
    return grads


def _dense_strides(t: Tensor) -> tuple[int, ...]:
    """t's strides if its elements are dense (contiguous, channels_last, ...), else contiguous
    ones; empty_like keeps a dense layout and falls back otherwise."""
    return torch.empty_like(t, device="meta").stride()
