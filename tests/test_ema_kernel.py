"""The fused EMA kernel against its reference, under TRITON_INTERPRET=1 on the CPU."""

import pytest
import torch

from kernels import ema, reference
from kernels.tolerances import TOLERANCES
from tests.conftest import random_tensors

# One element, less than a block, exactly a block, and sizes just past whole blocks.
SIZES = [1, 100, ema.BLOCK, ema.BLOCK + 1, 3 * ema.BLOCK - 7]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ema_matches_the_reference(n, dtype):
    target, online = random_tensors(2, n, dtype)
    expected = target.float()
    reference.ema_update_([expected], [online.float()], tau=0.996)
    ema.ema_update_(target, online, tau=0.996)
    assert target.dtype == dtype
    torch.testing.assert_close(target.float(), expected, **TOLERANCES["ema"][dtype])


def test_ema_over_many_tensors_in_one_buffer_matches_the_per_tensor_reference():
    shapes = [(64, 3, 3, 3), (64,), (7, 5), (1,), (4096, 33)]
    sizes = [torch.Size(s).numel() for s in shapes]
    target, online = random_tensors(2, sum(sizes), torch.float32, seed=1)
    expected = [t.view(s).clone() for t, s in zip(target.split(sizes), shapes)]
    reference.ema_update_(expected, [o.view(s) for o, s in zip(online.split(sizes), shapes)],
                          tau=0.9)
    ema.ema_update_(target, online, tau=0.9)
    torch.testing.assert_close(target, torch.cat([e.flatten() for e in expected]))


@pytest.mark.parametrize("tau,expected", [(1.0, "target"), (0.0, "online")])
def test_tau_one_keeps_the_target_and_tau_zero_copies_the_online(tau, expected):
    target, online = random_tensors(2, 1000, torch.float32)
    before = {"target": target.clone(), "online": online.clone()}
    ema.ema_update_(target, online, tau=tau)
    assert torch.equal(target, before[expected])
    assert torch.equal(online, before["online"])


def test_mismatched_buffers_are_refused():
    with pytest.raises(ValueError, match="1-D buffers of one size"):
        ema.ema_update_(random_tensors(1, 10, torch.float32)[0],
                        random_tensors(1, 11, torch.float32)[0], tau=0.5)


@pytest.mark.parametrize("flag,moves", [(0, True), (1, False)])
def test_a_set_skip_flag_leaves_the_target_untouched_in_both_implementations(flag, moves):
    target, online = random_tensors(2, 3 * ema.BLOCK - 7, torch.float32)
    online[5] = float("nan")  # what a skipped step may hold; never reaches the target
    skip = torch.tensor(flag, dtype=torch.int32, device=target.device)
    fused, per_tensor = target.clone(), [target.clone()]
    ema.ema_update_(fused, online, tau=0.9, skip=skip)
    reference.ema_update_(per_tensor, [online], tau=0.9, skip=skip)
    for updated in (fused, per_tensor[0]):
        assert torch.equal(updated, target) != moves
    if moves:  # without the flag the same update as the plain call, to the bit
        plain = target.clone()
        reference.ema_update_([plain], [online], tau=0.9)
        torch.testing.assert_close(per_tensor[0], plain, rtol=0, atol=0, equal_nan=True)
