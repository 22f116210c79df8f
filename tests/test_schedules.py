import math

import pytest

from byol.schedules import learning_rates, target_ema_rate, target_ema_rates


def test_lr_starts_at_zero_and_rises_linearly_during_warmup():
    lr = learning_rates(peak=2.0, warmup_steps=10, total_steps=100)
    assert lr[0] == 0.0
    assert lr[5].item() == pytest.approx(1.0)
    assert lr[9].item() == pytest.approx(1.8)


def test_lr_peaks_when_warmup_ends_then_decays_on_a_cosine_to_zero():
    lr = learning_rates(peak=2.0, warmup_steps=10, total_steps=110)
    assert lr[10].item() == pytest.approx(2.0)
    assert lr[60].item() == pytest.approx(1.0)                      # half way down the cosine
    assert lr[-1].item() == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(lr[10:].tolist(), lr[11:].tolist()))


def test_lr_warmup_longer_than_the_run_is_capped_at_the_run():
    lr = learning_rates(peak=1.0, warmup_steps=50, total_steps=10)
    assert len(lr) == 10 and lr[-1].item() == pytest.approx(0.9)


def test_tau_starts_at_base_and_reaches_one_at_the_end():
    assert target_ema_rate(0, 1000, 0.996) == pytest.approx(0.996)
    assert target_ema_rate(1000, 1000, 0.996) == 1.0
    assert target_ema_rate(500, 1000, 0.99) == pytest.approx(0.995)


def test_tau_rises_monotonically_over_the_run():
    taus = target_ema_rates(0.97, 50).tolist()
    assert len(taus) == 50 and taus[0] == pytest.approx(0.97)
    assert all(a < b for a, b in zip(taus, taus[1:]))
    assert taus[-1] < 1.0
