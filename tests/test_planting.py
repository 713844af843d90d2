"""Planted repeats (train/planting.py): periods, counts, determinism, and the row shape an
induction head (and nothing positional) can predict."""
from __future__ import annotations

import numpy as np
import pytest

from train.planting import RepeatPlan, parse_period, planted_count, planted_rows, repeated_row


def smallest_period(row: np.ndarray) -> int:
    """The smallest p with row[i] == row[i - p] for every i >= p (hand-rolled reference)."""
    for p in range(1, len(row)):
        if np.array_equal(row[p:], row[:-p]):
            return p
    return len(row)


@pytest.mark.parametrize("text, expected", [("8:32", (8, 32)), ("5", (5, 5)), (" 2:2 ", (2, 2))])
def test_parse_period(text, expected):
    assert parse_period(text) == expected


@pytest.mark.parametrize("text", ["", "a:b", "1:5", "9:8", "3:4:5", "0:0"])
def test_parse_period_refuses_with_a_sentence(text):
    with pytest.raises(ValueError, match="--repeat-period"):
        parse_period(text)


def test_planted_count_keeps_a_corpus_row_and_plants_when_asked():
    assert planted_count(32, 0.0) == 0
    assert planted_count(32, 0.5) == 16
    assert planted_count(32, 0.01) == 1      # a positive fraction plants at least one row
    assert planted_count(4, 0.99) == 3       # ... and leaves at least one corpus row
    assert planted_count(1, 0.5) == 0


def test_rows_repeat_a_distinct_span_at_a_period_in_range():
    seed = 1234
    print("seed", seed)
    pool = np.arange(100, 400)
    plan = RepeatPlan(0.5, 8, 32, pool)
    rows = planted_rows(plan, seed, step=7, first=0, count=200, length=129)
    periods = [smallest_period(r) for r in rows]
    assert all(8 <= p <= 32 for p in periods)
    assert len(set(periods)) > 15, "periods must vary from row to row, or a positional shortcut would do"
    for r, p in zip(rows, periods):
        assert len(set(r[:p].tolist())) == p            # distinct within a span
        assert set(r.tolist()) <= set(pool.tolist())     # drawn from the pool only


def test_rows_depend_only_on_seed_step_and_index():
    pool = np.arange(50)
    plan = RepeatPlan(0.25, 4, 12, pool)
    whole = planted_rows(plan, 3, step=5, first=0, count=6, length=40)
    parts = np.concatenate([planted_rows(plan, 3, 5, 0, 2, 40), planted_rows(plan, 3, 5, 2, 4, 40)])
    assert np.array_equal(whole, parts)  # how rows are split over micro-batches or ranks does not matter
    assert not np.array_equal(whole, planted_rows(plan, 3, 6, 0, 6, 40))
    assert not np.array_equal(whole, planted_rows(plan, 4, 5, 0, 6, 40))


def test_small_pool_repeats_tokens_within_a_span():
    row = repeated_row(np.random.default_rng(0), np.arange(3), 20, 5, 5)
    assert smallest_period(row) <= 5 and set(row.tolist()) <= {0, 1, 2}
