"""Synthetic checkpoint series whose answer is known by construction, shared by the phase-change
rule's tests (test_rise_rule.py) and the summary's (test_summary.py)."""
from __future__ import annotations

import random

DEMO_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300, 400, 500, 600, 700, 800]  # the demo's checkpoints


def issue_series() -> list[float]:
    """The issue's example: 0.01 up to step 100, 0.35 from step 200, 0.33 -> 0.40 at 700 -> 800."""
    return [0.01 if s <= 100 else 0.35 for s in DEMO_STEPS[:-2]] + [0.33, 0.40]


def wobbly_jump(n: int, k: int, seed: int, low: float = 0.02, high: float = 0.4, wobble: float = 0.01) -> list[float]:
    """`low` before index k, `high` from k on, each value wobbling by up to +-`wobble`."""
    r = random.Random(seed)
    return [(low if i < k else high) + r.uniform(-wobble, wobble) for i in range(n)]
