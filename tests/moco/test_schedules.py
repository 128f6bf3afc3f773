"""Schedules: end points, monotonicity, invalid arguments."""

import math

import pytest

from moco.schedules import cosine_momentum, warmup_cosine_lr


def test_cosine_momentum_end_points_and_midpoint():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    values = [cosine_momentum(t, 10, 0.9) for t in range(11)]
    assert values == sorted(values)


def test_warmup_cosine_lr():
    lrs = [warmup_cosine_lr(t, 100, 10, 0.1) for t in range(101)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1) and lrs[10] == pytest.approx(0.1)
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert lrs[55] == pytest.approx(0.05 * (1 + math.cos(math.pi * 45 / 90)))
    assert lrs[10:] == sorted(lrs[10:], reverse=True)
    assert warmup_cosine_lr(0, 10, 0, 0.1) == pytest.approx(0.1)


@pytest.mark.parametrize("call,name", [
    (lambda: cosine_momentum(0, 10, 1.5), "base"), (lambda: cosine_momentum(11, 10, 0.9), "step"),
    (lambda: cosine_momentum(0, 0, 0.9), "total_steps"), (lambda: warmup_cosine_lr(0, 10, 11, 0.1), "warmup_steps"),
    (lambda: warmup_cosine_lr(0, 10, 1, 0.0), "base_lr"),
])
def test_invalid_arguments(call, name):
    with pytest.raises(ValueError, match=name):
        call()
