"""Reference rules the tests compare the probes' rules against.

`largest_log_step_rise` is the naive phase-change rule: the consecutive pair of checkpoints with the
largest rise per unit of log(1 + step). Late pairs are narrow in log-step, so a small late wobble
outranks a large early jump; the tests show on the same series that
`probes.analyse.emergence.largest_sustained_rise` does not fall for it.
"""
from __future__ import annotations

import math
from typing import Sequence


def largest_log_step_rise(steps: Sequence[int], values: Sequence[float | None]) -> dict | None:
    """The consecutive pair of checkpoints with the largest rise per unit of log(1+step).

    Checkpoints are log-spaced early in training, so the rise per checkpoint interval would
    favour late, wide intervals; dividing by the change in log(1+step) compares rises at the
    speed of training's own clock. Returns {step, from_step, rise, rate} (step = the checkpoint
    where the risen value is first seen), or None with fewer than two points. Missing and
    non-finite values are skipped."""
    pairs = sorted((int(s), float(v)) for s, v in zip(steps, values) if v is not None and math.isfinite(float(v)))
    best = None
    for (s0, v0), (s1, v1) in zip(pairs, pairs[1:]):
        dlog = math.log1p(s1) - math.log1p(s0)
        if dlog <= 0:
            continue
        rate = (v1 - v0) / dlog
        if best is None or rate > best["rate"]:
            best = {"step": s1, "from_step": s0, "rise": v1 - v0, "rate": rate}
    return best
