import torch
from torch import nn

from byol.optim import LARS, lars_param_groups
from kernels import reference

HYPER = dict(weight_decay=1e-4, momentum=0.9, eta=0.02)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3, bias=False))


def test_lars_optimizer_matches_the_reference_over_several_steps():
    model, copy = _model(), _model()
    optimizer = LARS(lars_param_groups(model.parameters()), lr=0.3, backend="eager", **HYPER)
    params = list(copy.parameters())
    momenta = [torch.zeros_like(p) for p in params]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        optimizer.step()
        reference.lars_step_(params, grads, momenta, [p.ndim <= 1 for p in params],
                             lr=0.3, **HYPER)
    for mine, theirs in zip(model.parameters(), params):
        torch.testing.assert_close(mine, theirs)


def test_lars_uses_the_learning_rate_set_on_its_groups():
    model = _model()
    optimizer = LARS(lars_param_groups(model.parameters()), lr=1.0, backend="eager", **HYPER)
    before = [p.clone() for p in model.parameters()]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_lars_state_dict_round_trips_the_momentum():
    model = _model()
    optimizer = LARS(lars_param_groups(model.parameters()), lr=0.1, backend="eager", **HYPER)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    restored = LARS(lars_param_groups(model.parameters()), lr=0.1, backend="eager", **HYPER)
    restored.load_state_dict(optimizer.state_dict())
    for p in model.parameters():
        assert torch.equal(restored.state[p]["momentum_buffer"],
                           optimizer.state[p]["momentum_buffer"])
