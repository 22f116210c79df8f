"""The plain-torch references define BYOL's math: check them against the formulas."""

import pytest
import torch
import torch.nn.functional as F

from kernels import reference


def test_loss_equals_two_minus_two_cos_per_direction():
    torch.manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(7, 13) for _ in range(4))
    expected = (2 - 2 * F.cosine_similarity(p1, z2)).mean() + \
               (2 - 2 * F.cosine_similarity(p2, z1)).mean()
    torch.testing.assert_close(reference.byol_loss(p1, p2, z1, z2), expected)


def test_loss_of_identical_directions_is_zero_and_of_opposite_is_four_per_direction():
    x = torch.randn(5, 8)
    assert reference.normalized_mse(x, 3 * x).item() == pytest.approx(0.0, abs=1e-6)
    assert reference.normalized_mse(x, -x).item() == pytest.approx(4.0, abs=1e-5)


def test_only_the_online_side_gets_a_gradient():
    p1, p2, z1, z2 = (torch.randn(4, 6, requires_grad=True) for _ in range(4))
    reference.byol_loss(p1, p2, z1, z2).backward()
    assert p1.grad is not None and p2.grad is not None
    assert z1.grad is None and z2.grad is None


def test_loss_gradient_matches_autograd_of_the_cosine_form():
    torch.manual_seed(1)
    p = torch.randn(6, 10, requires_grad=True)
    z = torch.randn(6, 10)
    reference.normalized_mse(p, z).backward()
    q = p.detach().clone().requires_grad_(True)
    (2 - 2 * F.cosine_similarity(q, z)).mean().backward()
    torch.testing.assert_close(p.grad, q.grad)


def test_loss_of_a_zero_row_is_finite():
    p = torch.zeros(3, 4, requires_grad=True)
    loss = reference.normalized_mse(p, torch.randn(3, 4))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()


def test_loss_accepts_bf16_and_computes_in_fp32():
    p, z = torch.randn(4, 8), torch.randn(4, 8)
    low = reference.normalized_mse(p.bfloat16(), z.bfloat16())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, reference.normalized_mse(p, z), atol=2e-2, rtol=2e-2)


def test_ema_moves_target_by_one_minus_tau_toward_online():
    target = [torch.full((3,), 2.0), torch.zeros(2, 2)]
    online = [torch.full((3,), 4.0), torch.ones(2, 2)]
    reference.ema_update_(target, online, tau=0.75)
    torch.testing.assert_close(target[0], torch.full((3,), 2.5))
    torch.testing.assert_close(target[1], torch.full((2, 2), 0.25))


def test_ema_at_tau_one_leaves_target_unchanged():
    target, online = [torch.randn(5)], [torch.randn(5)]
    before = target[0].clone()
    reference.ema_update_(target, online, tau=1.0)
    assert torch.equal(target[0], before)


def _lars(w, g, mu, excluded, **hyper):
    w, g, mu = w.clone(), g.clone(), mu.clone()
    reference.lars_step_([w], [g], [mu], [excluded], **hyper)
    return w, mu


HYPER = dict(lr=0.5, weight_decay=0.1, momentum=0.9, eta=0.01)


def test_lars_matches_a_step_computed_by_hand():
    w = torch.tensor([3.0, 4.0])        # ||w|| = 5
    g = torch.tensor([0.7, -0.4])
    mu = torch.tensor([1.0, 2.0])
    new_w, new_mu = _lars(w, g, mu, False, **HYPER)
    update = g + 0.1 * w                 # [1.0, 0.0], norm 1
    trust = 0.01 * 5.0 / 1.0
    expected_mu = 0.9 * mu + trust * update
    torch.testing.assert_close(new_mu, expected_mu)
    torch.testing.assert_close(new_w, w - 0.5 * expected_mu)


def test_lars_leaves_excluded_tensors_unscaled_and_undecayed():
    w, g, mu = torch.tensor([3.0, 4.0]), torch.tensor([0.7, -0.4]), torch.zeros(2)
    new_w, new_mu = _lars(w, g, mu, True, **HYPER)
    torch.testing.assert_close(new_mu, g)              # no decay, trust 1
    torch.testing.assert_close(new_w, w - 0.5 * g)


@pytest.mark.parametrize("zero", ["weight", "gradient"])
def test_lars_trust_is_one_when_a_norm_is_zero(zero):
    w = torch.zeros(3) if zero == "weight" else torch.ones(3)
    g = torch.zeros(3) if zero == "gradient" else torch.ones(3)
    hyper = dict(HYPER, weight_decay=0.0)
    _, new_mu = _lars(w, g, torch.zeros(3), False, **hyper)
    torch.testing.assert_close(new_mu, g)


def test_lars_does_not_modify_gradients():
    w, g = [torch.randn(4, 3)], [torch.randn(4, 3)]
    before = g[0].clone()
    reference.lars_step_(w, g, [torch.zeros(4, 3)], [False], **HYPER)
    assert torch.equal(g[0], before)


def test_closed_form_loss_gradient_matches_autograd_including_tiny_rows():
    torch.manual_seed(2)
    p1, p2, z1, z2 = (torch.randn(6, 5) for _ in range(4))
    p1[1] = 0.0
    p2[3] = 1e-8  # below the norm floor, but not zero
    q1, q2 = p1.clone().requires_grad_(), p2.clone().requires_grad_()
    reference.byol_loss(q1, q2, z1, z2).backward(torch.tensor(1.5))
    torch.testing.assert_close(reference.byol_loss_backward(p1, p2, z1, z2, torch.tensor(1.5)),
                               (q1.grad, q2.grad))


def test_clipped_lars_caps_each_tensor_rate_at_the_global_lr():
    w, g = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.01])  # ||w|| = 5, ||g|| = 0.01
    hyper = dict(weight_decay=0.0, momentum=0.9, eta=0.02)
    # trust = 0.02 * 5 / 0.01 = 10: unclipped the step is lr * 10 * g; clipped, lr * g.
    for clip, factor in ((False, 10.0), (True, 1.0)):
        params, momenta = [w.clone()], [torch.zeros(2)]
        reference.lars_step_(params, [g], momenta, [False], lr=0.5, clip=clip, **hyper)
        torch.testing.assert_close(momenta[0], factor * g)
        torch.testing.assert_close(params[0], w - 0.5 * factor * g)
    # Below the cap the rate is the trust ratio itself: trust = 0.02 * 5 / 10 = 0.01, so the
    # momentum takes trust / lr = 0.02 of the gradient and the step is lr * 0.02 = 0.01 of it.
    params, momenta = [w.clone()], [torch.zeros(2)]
    reference.lars_step_(params, [torch.tensor([0.0, 10.0])], momenta, [False], lr=0.5,
                         clip=True, **hyper)
    torch.testing.assert_close(momenta[0], torch.tensor([0.0, 0.2]))
