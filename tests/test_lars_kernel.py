"""The fused LARS kernels against their reference, under TRITON_INTERPRET=1 on the CPU."""

import pytest
import torch

from kernels import lars, reference
from kernels.tolerances import TOLERANCES
from tests.conftest import KERNEL_DEVICE

HYPER = dict(lr=0.3, weight_decay=0.05, momentum=0.9, eta=0.02)
SMALL_BLOCK = 32  # so that small tensors still span several blocks under the interpreter
DTYPES = [torch.float32, torch.bfloat16]

# Smaller than a block, a multiple of it, just past one, 4-D, and many 1-D tensors mixed in.
SHAPES = [(3,), (32,), (5, 7), (2, 3, 4, 5), (1,), (300,), (33,), (64, 3)] + [(9,)] * 20


class Flat:
    """Random parameters, gradients and momenta for `shapes`, stored back to back."""

    def __init__(self, shapes, dtype, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.shapes = shapes
        self.sizes = [torch.Size(s).numel() for s in shapes]
        n = sum(self.sizes)
        self.params, self.grads, self.momenta = (
            torch.randn(n, generator=generator).to(KERNEL_DEVICE, dtype) for _ in range(3))
        self.excluded = [len(s) == 1 for s in shapes]  # as the optimizer flags 1-D tensors

    def views(self, buffer):
        return [b.view(s) for b, s in zip(buffer.split(self.sizes), self.shapes)]

    def table(self, block_size=SMALL_BLOCK):
        return lars.lars_table(self.sizes, self.excluded, KERNEL_DEVICE, block_size)

    def reference_step(self, **hyper):
        """The reference applied in fp32 to copies; returns (params, momenta), flat."""
        params, grads, momenta = (b.float().clone() for b in
                                  (self.params, self.grads, self.momenta))
        reference.lars_step_(self.views(params), self.views(grads), self.views(momenta),
                             self.excluded, **hyper)
        return params, momenta


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("block_size", [SMALL_BLOCK, lars.BLOCK])
@pytest.mark.parametrize("clip", [False, True])
def test_lars_matches_the_reference_over_many_tensors(dtype, block_size, clip):
    flat = Flat(SHAPES, dtype)
    grads_before = flat.grads.clone()
    hyper = {**HYPER, "clip": clip}
    expected_params, expected_momenta = flat.reference_step(**hyper)
    lars.lars_step_(flat.params, flat.grads, flat.momenta, flat.table(block_size), **hyper)
    assert flat.params.dtype == dtype
    tolerance = TOLERANCES["lars"][dtype]
    torch.testing.assert_close(flat.params.float(), expected_params, **tolerance)
    torch.testing.assert_close(flat.momenta.float(), expected_momenta, **tolerance)
    assert torch.equal(flat.grads, grads_before)


def test_a_tensor_of_many_blocks_sums_its_norm_over_all_of_them():
    # 1,000 blocks of 32: more than one pass of the update kernel's reduction loop.
    flat = Flat([(250, 128), (7,)], torch.float32)
    expected_params, _ = flat.reference_step(**HYPER)
    lars.lars_step_(flat.params, flat.grads, flat.momenta, flat.table(), **HYPER)
    torch.testing.assert_close(flat.params, expected_params)


def test_zero_weights_or_gradients_take_a_trust_ratio_of_one():
    flat = Flat([(40,), (6, 8), (6, 8)], torch.float32)
    weights, grads = flat.views(flat.params), flat.views(flat.grads)
    weights[1].zero_()
    grads[2].zero_()
    weights[2].zero_()  # u = g + wd * w = 0 as well
    expected_params, expected_momenta = flat.reference_step(**HYPER)
    lars.lars_step_(flat.params, flat.grads, flat.momenta, flat.table(), **HYPER)
    assert flat.params.isfinite().all()
    torch.testing.assert_close(flat.params, expected_params)
    torch.testing.assert_close(flat.momenta, expected_momenta)


@pytest.mark.parametrize("lr", [0.0, 0.3, 50.0])
def test_clipping_caps_the_trust_ratio_like_the_reference(lr):
    # eta large enough that trust / lr exceeds 1 for some tensors at lr 0.3, none at 50.
    flat = Flat(SHAPES, torch.float32)
    hyper = {**HYPER, "lr": lr, "eta": 0.5, "clip": True}
    expected_params, expected_momenta = flat.reference_step(**hyper)
    lars.lars_step_(flat.params, flat.grads, flat.momenta, flat.table(), **hyper)
    torch.testing.assert_close(flat.params, expected_params)
    torch.testing.assert_close(flat.momenta, expected_momenta)


def test_excluded_tensors_get_plain_momentum_sgd():
    flat = Flat([(50,)], torch.float32)
    w, g, mu = flat.params.clone(), flat.grads.clone(), flat.momenta.clone()
    lars.lars_step_(flat.params, flat.grads, flat.momenta, flat.table(), **HYPER)
    momentum = HYPER["momentum"] * mu + g
    torch.testing.assert_close(flat.momenta, momentum)
    torch.testing.assert_close(flat.params, w - HYPER["lr"] * momentum)


def test_the_step_is_deterministic():
    results = []
    for _ in range(2):
        flat = Flat(SHAPES, torch.float32, seed=3)
        lars.lars_step_(flat.params, flat.grads, flat.momenta, flat.table(), **HYPER)
        results.append(flat.params)
    assert torch.equal(*results)


def test_buffers_that_do_not_match_the_table_are_refused():
    flat = Flat(SHAPES, torch.float32)
    with pytest.raises(ValueError, match="momenta must be a contiguous 1-D buffer"):
        lars.lars_step_(flat.params, flat.grads, flat.momenta[:-1], flat.table(), **HYPER)


def test_the_block_table_maps_blocks_to_their_tensors():
    table = lars.lars_table([5, 0, 70], [True, False, False], "cpu", block_size=32)
    assert table.block_start.tolist() == [0, 5, 37, 69]
    assert table.block_tensor.tolist() == [0, 2, 2, 2]
    assert table.tensor_end.tolist() == [5, 5, 75]
    assert table.tensor_first_block.tolist() == [0, 1, 1]
    assert table.tensor_blocks.tolist() == [1, 0, 3]
    assert table.tensor_flag.tolist() == [1, 0, 0]
    assert table.numel == 75


@pytest.mark.parametrize("flag", [0, 1])
def test_a_set_skip_flag_leaves_params_and_momenta_untouched_in_both_implementations(flag):
    flat = Flat(SHAPES, torch.float32, seed=3)
    flat.grads[7] = float("nan")  # a gradient a skipped step may hold
    skip = torch.tensor(flag, dtype=torch.int32, device=KERNEL_DEVICE)
    params, momenta = flat.params.clone(), flat.momenta.clone()
    lars.lars_step_(params, flat.grads, momenta, flat.table(), **HYPER, skip=skip)
    ref_params, ref_momenta = flat.params.clone(), flat.momenta.clone()
    reference.lars_step_(flat.views(ref_params), flat.views(flat.grads),
                         flat.views(ref_momenta), flat.excluded, **HYPER, skip=skip)
    for new, old in ((params, flat.params), (momenta, flat.momenta),
                     (ref_params, flat.params), (ref_momenta, flat.momenta)):
        if flag:
            assert torch.equal(new, old)
        else:  # the NaN tensor's block is changed (to NaN) and every other moved
            assert not torch.equal(new, old)
