"""Checkpoint schedule and learning-rate schedule: exact values."""
import math

import pytest

from train.schedule import checkpoint_steps, learning_rate, parse_windows, window_count, window_steps


def test_schedule_log_spaced_through_warmup_then_every_ckpt_every():
    assert checkpoint_steps(1000, 100, 250) == [0, 1, 2, 4, 8, 16, 32, 64, 250, 500, 750, 1000]


def test_schedule_with_ckpt_every_equal_to_warmup():
    assert checkpoint_steps(1500, 100, 100) == [0, 1, 2, 4, 8, 16, 32, 64] + list(range(100, 1501, 100))


def test_schedule_final_step_not_a_multiple():
    assert checkpoint_steps(45, 8, 10) == [0, 1, 2, 4, 8, 10, 20, 30, 40, 45]


def test_schedule_warmup_a_power_of_two_is_included():
    assert checkpoint_steps(64, 16, 32) == [0, 1, 2, 4, 8, 16, 32, 64]


def test_schedule_without_warmup():
    assert checkpoint_steps(30, 0, 10) == [0, 10, 20, 30]


def test_schedule_shorter_than_warmup():
    assert checkpoint_steps(5, 100, 10) == [0, 1, 2, 4, 5]


def test_schedule_rejects_nonsense():
    with pytest.raises(ValueError):
        checkpoint_steps(10, 2, 0)


def test_learning_rate_warmup_and_cosine():
    lr, w, n = 1e-3, 10, 110
    assert learning_rate(1, lr, w, n) == pytest.approx(1e-4)
    assert learning_rate(10, lr, w, n) == pytest.approx(1e-3)
    # half way through the decay: min + (1 - min) / 2
    assert learning_rate(60, lr, w, n) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert learning_rate(110, lr, w, n) == pytest.approx(1e-4)
    steps = [learning_rate(s, lr, w, n) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))  # monotone decay after warm-up
    assert learning_rate(35, lr, w, n) == pytest.approx(
        1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 25 / 100))))


# -- --ckpt-window ------------------------------------------------------------------------------
def test_window_adds_its_steps_to_the_schedule():
    # hand-listed: the regular schedule of test_schedule_final_step_not_a_multiple plus 13, 16, 19
    # (22 > 21 is not reached) and 41..45 every 2, capped by --steps
    assert checkpoint_steps(45, 8, 10, [(13, 21, 3), (41, 50, 2)]) == [0, 1, 2, 4, 8, 10, 13, 16, 19, 20, 30, 40,
                                                                         41, 43, 45]


def test_parse_windows():
    assert parse_windows("") == []
    assert parse_windows("300:600:10") == [(300, 600, 10)]
    assert parse_windows(" 300:600:10 , 900:1000:20") == [(300, 600, 10), (900, 1000, 20)]
    assert window_steps(parse_windows("0:4:2,3:6:3")) == [0, 2, 3, 4, 6]
    assert window_count([(0, 10 ** 15, 1)]) == 10 ** 15 + 1  # counted, never listed


@pytest.mark.parametrize("text, needle", [
    ("300:600", "START:END:EVERY"), ("a:b:c", "START:END:EVERY"), ("1:2:3:4", "START:END:EVERY"),
    ("300:600:0", "EVERY 0"), ("300:600:-5", "EVERY -5"), ("600:300:10", "START < END"),
    ("300:300:10", "START < END"), ("-10:300:10", "0 <= START"), (",", "START:END:EVERY"),
])
def test_parse_windows_rejects(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_windows(text)
