"""Per-step schedules: the key encoder's momentum and the learning rate.

Both are pure functions of the optimisation step, so a resumed run continues on the same curve.
"""

from __future__ import annotations

import math

__all__ = ["cosine_momentum", "warmup_cosine_lr"]


def _check_steps(step: int, total_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"total_steps = {total_steps!r} is not allowed: expected an integer >= 1")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step = {step!r} is not allowed: expected an integer in [0, total_steps={total_steps}]")


def cosine_momentum(step: int, total_steps: int, base: float) -> float:
    """m(t) = 1 - (1 - base) * (cos(pi * t / T) + 1) / 2: ``base`` at t = 0, rising to 1 at t = T (BYOL schedule)."""
    _check_steps(step, total_steps)
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"base = {base!r} is not allowed: expected a number in [0, 1]")
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / total_steps) + 1.0) / 2.0


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up then cosine decay to 0.

    lr(t) = base_lr * (t + 1) / W for t < W, then base_lr * (1 + cos(pi * (t - W) / (T - W))) / 2, so the first step
    already has a non-zero rate and lr(T) = 0.
    """
    _check_steps(step, total_steps)
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps = {warmup_steps!r} is not allowed: expected an integer in [0, {total_steps}]")
    if not base_lr > 0:
        raise ValueError(f"base_lr = {base_lr!r} is not allowed: expected a number > 0")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if total_steps == warmup_steps:
        return base_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / (total_steps - warmup_steps)))
