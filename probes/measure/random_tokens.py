"""The repeated random tokens of the induction probe, and the repeat periods they are drawn at.

Split from probes.measure.inputs, which builds them into every run's `ProbeInputs` (and re-exports these
names). Each period's tokens have their own seeded generator, so adding or dropping a period never
changes another period's tokens, and the periods avoid the ones training planted repeats at.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# The random tokens' sub-seed, mixed with the run seed (probes.measure.inputs lists the other inputs' ones).
RANDOM_STREAM = 3


def random_stream(seed: int, period: int, kind: int) -> np.random.Generator:
    """The generator of one period's random tokens (kind 0: repeated, 1: fresh control), so adding
    or dropping a period never changes another period's tokens."""
    return np.random.default_rng([int(seed), RANDOM_STREAM, int(period), int(kind)])


def repeated_random_tokens(frequent: np.ndarray, n_rows: int, period: int, bos: int, seed: int) -> torch.LongTensor:
    """[n_rows, 1 + 2*period]: a BOS token, `period` random tokens, and the same tokens again.

    Tokens within a half are distinct when there are enough frequent tokens, so every query in
    the second half has exactly one earlier occurrence and one induction target."""
    rng = random_stream(seed, period, 0)
    replace = len(frequent) < period
    rows = []
    for _ in range(n_rows):
        half = rng.choice(frequent, size=period, replace=replace)
        rows.append(np.concatenate([[bos], half, half]))
    return torch.tensor(np.stack(rows), dtype=torch.long)


def fresh_random_tokens(frequent: np.ndarray, n_rows: int, period: int, bos: int, seed: int) -> torch.LongTensor:
    """[n_rows, 1 + 2*period]: a BOS token and 2*period random tokens that do NOT repeat (distinct
    when there are enough frequent tokens): the positional-shortcut control. A head that attends
    from q to q - period + 1 here does so by position alone, since no earlier token matches."""
    rng = random_stream(seed, period, 1)
    replace = len(frequent) < 2 * period
    rows = [np.concatenate([[bos], rng.choice(frequent, size=2 * period, replace=replace)]) for _ in range(n_rows)]
    return torch.tensor(np.stack(rows), dtype=torch.long)


def training_repeat_periods(train: dict) -> tuple[int, int] | None:
    """(MIN, MAX) of the repeat periods a run's training planted (run.json["train"]: `repeat_fraction`
    > 0 and `repeat_period` "MIN:MAX" or one number), or None when it planted none."""
    fraction = train.get("repeat_fraction") or 0
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise ValueError(f"run.json train.repeat_fraction must be a number, got {fraction!r}.")
    if fraction <= 0:
        return None
    spec = train.get("repeat_period")
    parts = str(spec).split(":") if isinstance(spec, (str, int)) and not isinstance(spec, bool) else []
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (None, None)
    except ValueError:
        lo = hi = None
    if lo is None or hi is None or lo < 1 or hi < lo:
        raise ValueError(f"run.json train.repeat_period must be 'MIN:MAX' with 1 <= MIN <= MAX, got {spec!r}.")
    return lo, hi


def _spread(candidates: list[int], n: int) -> list[int]:
    """`n` values spread evenly (by rank) over sorted `candidates`, both ends included."""
    if len(candidates) <= n:
        return list(candidates)
    if n == 1:
        return [candidates[-1]]
    return sorted({candidates[round(i * (len(candidates) - 1) / (n - 1))] for i in range(n)})


def random_periods(n_ctx: int, n: int = 4, avoid: tuple[int, int] | None = None) -> list[int]:
    """The repeat periods of the induction probe for a context of `n_ctx` input positions: `n`
    periods spread geometrically over [n_ctx // 8 + 1, (n_ctx - 1) // 2] (17, 26, 41, 63 for 128).

    Several periods, because a model trained on repeats at one offset can learn "attend to q -
    offset + 1" by position alone and ace an induction score measured at that offset. When
    training planted repeats with periods in `avoid` = (MIN, MAX), the periods are taken outside
    it: from the default range if it has room, else from any period in [2, (n_ctx - 1) // 2];
    when training covered every period, the default ones are kept (the result then has no unseen
    period and says so)."""
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 5:
        raise ValueError(f"the induction probe needs a context of at least 5 positions, got n_ctx={n_ctx!r}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of repeat periods must be a positive integer, got {n!r}.")
    hi = (n_ctx - 1) // 2
    lo = max(2, min(hi, n_ctx // 8 + 1))
    default = [lo] if hi == lo else sorted({round(lo * (hi / lo) ** (i / max(1, n - 1))) for i in range(n)})
    if avoid is None:
        return default
    outside = lambda t: not avoid[0] <= t <= avoid[1]
    for pool in (range(lo, hi + 1), range(2, hi + 1)):
        allowed = [t for t in pool if outside(t)]
        if allowed:
            geometric = sorted({min(allowed, key=lambda a: (abs(math.log(a / t)), a)) for t in default})
            return geometric if len(geometric) >= min(n, len(allowed)) else _spread(allowed, n)
    return default


@dataclass(frozen=True)
class RandomTokenSet:
    """One repeat period's induction inputs: `repeated` rows [BOS, r_1..r_T, r_1..r_T] and `control`
    rows [BOS, 2T fresh random tokens], both [n_random, 1 + 2T]."""

    period: int
    repeated: torch.LongTensor
    control: torch.LongTensor


def random_token_sets(frequent: np.ndarray, n_rows: int, periods: list[int], bos: int,
                      seed: int) -> list[RandomTokenSet]:
    return [RandomTokenSet(int(t), repeated_random_tokens(frequent, n_rows, t, bos, seed),
                           fresh_random_tokens(frequent, n_rows, t, bos, seed)) for t in periods]
