"""When to checkpoint and what the learning rate is at each step.

Checkpoints are log-spaced through warm-up (Pythia style: 0, 1, 2, 4, ...) because that is where
the model changes fastest, then evenly spaced, plus the final step, so probes can place every
phenomenon on a time axis with resolution where it is needed.
"""
from __future__ import annotations

import math


def checkpoint_steps(steps: int, warmup: int, ckpt_every: int) -> list[int]:
    """Step 0, the powers of two up to the end of warm-up, every multiple of `ckpt_every` from the
    end of warm-up on, and the final step; all within [0, steps], sorted, without duplicates.

    checkpoint_steps(1000, 100, 250) == [0, 1, 2, 4, 8, 16, 32, 64, 250, 500, 750, 1000]
    """
    if steps < 0 or warmup < 0 or ckpt_every <= 0:
        raise ValueError("checkpoint_steps needs steps >= 0, warmup >= 0 and ckpt_every > 0.")
    out = {0, steps}
    p = 1
    while p <= min(warmup, steps):
        out.add(p)
        p *= 2
    first = max(1, math.ceil(warmup / ckpt_every)) * ckpt_every
    out.update(range(first, steps + 1, ckpt_every))
    return sorted(out)


def learning_rate(step: int, lr: float, warmup: int, steps: int, min_ratio: float = 0.1) -> float:
    """LR used by optimizer step `step` (1-based): linear warm-up to `lr` over `warmup` steps, then
    cosine decay to `min_ratio * lr` at the last step."""
    if warmup > 0 and step <= warmup:
        return lr * step / warmup
    if steps <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / (steps - warmup))
    return lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))
