"""Planted repeats: training rows that only an induction head can predict, mixed into any corpus.

A planted row is a span of random tokens repeated back to back to fill the context:
[r_1..r_p, r_1..r_p, r_1..]. Each row draws its own period p from PMIN..PMAX, so no fixed offset
predicts the repeats (a model trained on ONE offset learns "attend to q - offset", a positional
shortcut that scores as an induction head only at that offset); the general solution is the
induction circuit: a previous-token head, then a head that attends to the token after the
earlier occurrence of the current one. The tokens are drawn from the run's own training split
(its most frequent ids), so the option works for every data source, `text:PATH` included.

Planted rows are added to each micro-batch beside the corpus rows, never in place of them: a
micro-batch of B rows holds B - k corpus rows and k = round(B * fraction) planted rows. So the
corpus samples a step consumes (and so which sequences and canaries training saw, as the probes
recompute with store.rundata) are exactly those of data.json's corpus_rows_per_step, which counts corpus
rows only. A planted row is a pure function of (seed, step, its index in the step), so training
resumes bit-exactly and a DDP run plants what a single process plants.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLANT_STREAM = 7_7_7  # sub-seed of the planted rows, distinct from the data order's


@dataclass(frozen=True)
class RepeatPlan:
    """How to plant repeats: share of each micro-batch, the period range, and the token pool."""

    fraction: float
    period_min: int
    period_max: int
    pool: np.ndarray  # token ids the random spans are drawn from


def parse_period(text: str) -> tuple[int, int]:
    """'MIN:MAX' (or a single 'P', a fixed period) -> (MIN, MAX); ValueError naming the problem."""
    parts = str(text).strip().split(":")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, -1)
    except ValueError:
        raise ValueError(f"--repeat-period must be MIN:MAX (two integers), got {text!r}.") from None
    if len(parts) > 2 or not 2 <= lo <= hi:
        raise ValueError(f"--repeat-period must be MIN:MAX with 2 <= MIN <= MAX, got {text!r}.")
    return lo, hi


def planted_count(batch_size: int, fraction: float) -> int:
    """Planted rows in a micro-batch of `batch_size`: round(batch_size * fraction), and always at
    least one corpus row (a fraction > 0 plants at least one row)."""
    if fraction <= 0:
        return 0
    return min(batch_size - 1, max(1, int(round(batch_size * fraction))))


def repeated_row(rng: np.random.Generator, pool: np.ndarray, length: int, period_min: int, period_max: int) -> np.ndarray:
    """One row of `length` tokens: a random span of a random period in [period_min, period_max],
    repeated back to back. Tokens within a span are distinct when the pool allows, so every
    repeated token has exactly one earlier occurrence per period to copy from."""
    period = int(rng.integers(period_min, period_max + 1))
    span = rng.choice(pool, size=period, replace=len(pool) < period)
    return np.resize(span, length).astype(np.int64)


def planted_rows(plan: RepeatPlan, seed: int, step: int, first: int, count: int, length: int) -> np.ndarray:
    """Planted rows `first`..`first+count-1` of optimizer step `step`: [count, length] int64.
    Row j of a step depends only on (seed, step, j), whichever process or micro-batch makes it."""
    rows = [repeated_row(np.random.default_rng([int(seed), PLANT_STREAM, int(step), int(j)]), plan.pool, length,
                         plan.period_min, plan.period_max)
            for j in range(first, first + count)]
    return np.stack(rows) if rows else np.zeros((0, length), dtype=np.int64)
