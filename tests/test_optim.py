"""LARS as an optimizer over flat buffers: it matches the reference, keeps parameters,
gradients and momenta as views of its buffers, and round-trips its state."""

import pytest
import torch
from torch import nn

from byol import ops
from byol.optim import LARS
from kernels import reference

HYPER = dict(weight_decay=1e-4, momentum=0.9, eta=0.02)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.Flatten(),
                         nn.Linear(5 * 4 * 4, 3, bias=False))


def _shares_storage(tensor, buffer):
    return tensor.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()


@pytest.mark.parametrize("backend", ops.BACKENDS)
def test_lars_optimizer_matches_the_reference_over_several_steps(backend):
    model, copy = _model(), _model()
    optimizer = LARS(model.parameters(), lr=0.3, backend=backend, **HYPER)
    params = list(copy.parameters())
    momenta = [torch.zeros_like(p) for p in params]
    inputs = torch.randn(4, 3, 6, 6)
    for _ in range(3):
        optimizer.zero_grad()
        model(inputs).square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
        reference.lars_step_(params, grads, momenta, [p.ndim <= 1 for p in params],
                             lr=0.3, **HYPER)
    for mine, theirs in zip(model.parameters(), params):
        torch.testing.assert_close(mine, theirs)


def test_parameters_gradients_and_momenta_are_views_of_the_flat_buffers():
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = LARS(model.parameters(), lr=0.1, backend="eager", **HYPER)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    for p in model.parameters():
        assert _shares_storage(p, optimizer.flat.params.data)
        assert _shares_storage(p.grad, optimizer.flat.grads.data)
        assert _shares_storage(optimizer.state[p]["momentum_buffer"],
                               optimizer.flat.momenta.data)
    assert optimizer.flat.grads.data.abs().sum() > 0
    optimizer.zero_grad(set_to_none=True)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_channels_last_weights_keep_their_strides_in_the_flat_buffer():
    model = _model().to(memory_format=torch.channels_last)
    strides = [p.stride() for p in model.parameters()]
    optimizer = LARS(model.parameters(), lr=0.1, backend="eager", **HYPER)
    assert [p.stride() for p in model.parameters()] == strides
    assert [g.stride() for g in optimizer.flat.grads.views] == strides
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_lars_uses_the_learning_rate_set_on_its_group():
    model = _model()
    optimizer = LARS(model.parameters(), lr=1.0, backend="eager", **HYPER)
    before = [p.clone() for p in model.parameters()]
    optimizer.param_groups[0]["lr"] = 0.0
    optimizer.flat.grads.data.fill_(1.0)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_lars_state_dict_round_trips_the_momenta_into_the_flat_buffer():
    model = _model()
    optimizer = LARS(model.parameters(), lr=0.1, backend="eager", **HYPER)
    optimizer.flat.grads.data.normal_()
    optimizer.step()
    restored_model = _model()
    restored = LARS(restored_model.parameters(), lr=0.1, backend="eager", **HYPER)
    restored.load_state_dict(optimizer.state_dict())
    assert torch.equal(restored.flat.momenta.data, optimizer.flat.momenta.data)
    for p in restored_model.parameters():
        assert _shares_storage(restored.state[p]["momentum_buffer"],
                               restored.flat.momenta.data)
