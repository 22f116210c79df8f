"""The transfer protocol's linear classifier: held-out split, L-BFGS logistic regression and
the choice of its penalty.

    pytest tests/test_transfer.py -q
"""

import torch
import torch.nn.functional as F

from byol.eval.transfer import (
    PENALTIES,
    TransferSettings,
    choose_penalty,
    fit_logistic,
    held_out_split,
)


def blobs(per_class: int = 30, classes: int = 3, dim: int = 8, spread: float = 0.5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=generator) * 3
    labels = torch.arange(classes).repeat_interleave(per_class)
    features = centers[labels] + spread * torch.randn(len(labels), dim, generator=generator)
    return features, labels


def test_the_grid_is_the_papers_45_values_from_1e_6_to_1e5():
    assert len(PENALTIES) == 45
    assert PENALTIES[0] == torch.tensor(1e-6, dtype=torch.float64).item()
    assert abs(PENALTIES[-1] - 1e5) < 1e-6


def test_held_out_part_takes_a_share_of_every_class_and_depends_on_the_seed():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 2)
    fit, held = held_out_split(labels, fraction=0.2, seed=0)
    assert torch.bincount(labels[held]).tolist() == [2, 1, 1]
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(len(labels)))
    again, _ = held_out_split(labels, fraction=0.2, seed=0)
    other, _ = held_out_split(labels, fraction=0.2, seed=1)
    assert torch.equal(fit, again) and not torch.equal(fit, other)


def test_the_fit_is_the_penalized_cross_entropys_minimum():
    features, labels = blobs(spread=2.0)
    penalty = 0.05
    fit = fit_logistic(features, labels, 3, penalty, iterations=500)
    weight = fit.weight.clone().requires_grad_(True)
    bias = fit.bias.clone().requires_grad_(True)
    standardized = (features - fit.mean) / fit.scale
    loss = (F.cross_entropy(standardized @ weight.T + bias, labels)
            + 0.5 * penalty * weight.square().sum())
    loss.backward()
    assert weight.grad.abs().max() < 1e-4 and bias.grad.abs().max() < 1e-4
    assert torch.allclose(fit.logits(features), standardized @ fit.weight.T + fit.bias)


def test_a_stronger_penalty_gives_smaller_weights():
    features, labels = blobs(spread=2.0)
    weak = fit_logistic(features, labels, 3, 1e-3, iterations=300)
    strong = fit_logistic(features, labels, 3, 10.0, iterations=300)
    assert strong.weight.norm() < weak.weight.norm() / 10


def test_separable_classes_choose_a_weak_penalty_and_classify_the_held_out_images():
    features, labels = blobs()
    fit, held = held_out_split(labels, 0.2, seed=0)
    choice = choose_penalty(features[fit], labels[fit], features[held], labels[held], 3,
                            TransferSettings(iterations=50))
    assert choice.held_out_top1 == 100.0
    assert choice.penalty < 1.0
    assert [penalty for penalty, _ in choice.curve] == PENALTIES


def test_overlapping_classes_choose_a_penalty_by_held_out_accuracy():
    features, labels = blobs(per_class=40, dim=30, spread=6.0, seed=2)
    fit, held = held_out_split(labels, 0.3, seed=0)
    choice = choose_penalty(features[fit], labels[fit], features[held], labels[held], 3,
                            TransferSettings(iterations=50))
    assert choice.held_out_top1 == max(top1 for _, top1 in choice.curve)
    assert choice.held_out_top1 > dict(choice.curve)[PENALTIES[0]]  # overfitting costs
