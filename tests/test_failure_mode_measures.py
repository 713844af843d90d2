"""The measures the failure-mode detectors rest on, each on inputs whose answer is known by hand or
by construction: the tone (Jensen-Shannon divergence of the generations' unigrams from held-out text,
and its floor), the excess rule with its curvature noise, and one checkpoint's head inequality with
its equal-heads bound. The detectors themselves, across checkpoints, are tested in
test_failure_modes.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.analyse.emergence import SMALL_SAMPLE, curvature_noise, excess_stretches
from probes.analyse.emergence_rules import THRESHOLDS
from probes.analyse.head_inequality import head_inequality
from probes.measure.metrics import gini, jensen_shannon, ngram_counts, tone_distance, top_share
from probes.measure.repetition import tone_result


# -- the tone measure --------------------------------------------------------------------------
def test_jensen_shannon_by_hand():
    assert jensen_shannon({"a": 1, "b": 1}, {"a": 5, "b": 5}) == 0.0
    assert jensen_shannon({"a": 3}, {"b": 2}) == 1.0
    # P = (1/2, 1/2, 0), Q = (0, 1/2, 1/2): M = (1/4, 1/2, 1/4), KL(P||M) = KL(Q||M) = 1/2 bit
    assert jensen_shannon({"x": 1, "y": 1}, {"y": 1, "z": 1}) == pytest.approx(0.5)
    assert ngram_counts([[1, 2, 3], [3, 1]], 2) == {(1, 2): 1, (2, 3): 1, (3, 1): 1}  # never across rows
    with pytest.raises(ValueError):
        jensen_shannon({}, {"a": 1})


def test_tone_of_text_like_the_held_out_text_sits_at_the_floor_and_a_loop_far_above():
    gen = torch.Generator().manual_seed(0)
    held = torch.multinomial(torch.linspace(1, 20, 50), 64 * 65, replacement=True, generator=gen).view(64, 65)
    alike = torch.multinomial(torch.linspace(1, 20, 50), 4 * 60, replacement=True, generator=gen).view(4, 60)
    loop = torch.tensor([[7, 8] * 30] * 4)
    a, b = tone_result(alike, held), tone_result(loop, held)
    assert a["floor_groups"] == 16 and a["sample_tokens"] == 240 and a["reference_tokens"] == 64 * 65
    assert abs(a["jsd_unigram"] - a["floor_unigram"]) < 4 * a["floor_unigram_sd"]
    assert b["jsd_unigram"] > a["floor_unigram"] + 10 * a["floor_unigram_sd"]
    assert a["jsd_unigram"] == pytest.approx(tone_distance(alike.tolist(), held.tolist(), 1))
    assert 0 <= a["jsd_bigram"] <= 1 and a["floor_bigram_sd"] > 0


# -- the excess rule ---------------------------------------------------------------------------
def test_curvature_noise_ignores_a_change_of_slope():
    flat_then_ramp = [0.0] * 10 + [0.1 * k for k in range(1, 11)]
    assert curvature_noise(flat_then_ramp) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    noisy = rng.normal(0, 0.01, 2000)
    assert curvature_noise(list(noisy)) == pytest.approx(0.01, rel=0.1)


def test_excess_stretch_by_hand():
    values = [1.0, 0.9, 0.5, 0.52, 0.49, 0.5, 0.51, 0.5, 0.9, 0.92, 0.5, 0.5]
    found = excess_stretches(list(range(12)), values, 0.2, 6, known_noise=0.01)
    assert found["threshold"] == pytest.approx(max(0.2, 6 * 0.01 * (4 / 3) ** 0.5))
    (st,) = found["stretches"]
    assert (st["from_step"], st["step"], st["to_step"]) == (7, 8, 9)
    assert st["before"] == pytest.approx(0.5) and st["after"] == pytest.approx(0.91)
    # the same worsening while the second series (the loss) rises too is no stretch
    assert not excess_stretches(list(range(12)), values, 0.2, 6, known_noise=0.01, below=list(range(12)))["stretches"]
    # one checkpoint alone is not a stretch, nor a pair cut short by the end
    assert not excess_stretches(list(range(11)), values[:9] + [0.5, 0.5], 0.2, 6, known_noise=0.01)["stretches"]
    assert not excess_stretches(list(range(9)), values[:9], 0.2, 6, known_noise=0.01)["stretches"]
    assert SMALL_SAMPLE == THRESHOLDS["excess_small_sample"]


# -- head inequality ---------------------------------------------------------------------------
def test_head_inequality_levels_errors_and_the_equal_heads_bound():
    equal = head_inequality([0.1] * 16, [0.01] * 16)
    assert equal["gini"] == 0 and equal["exceeds"] is False and 0 < equal["equal_heads_gini"] < 0.2
    one = head_inequality([0.5] + [0.1] * 15, [0.01] * 16)
    assert one["exceeds"] and one["gini"] == pytest.approx(gini([0.5] + [0.1] * 15))
    assert one["top_share"] == pytest.approx(top_share([0.5] + [0.1] * 15))
    assert 0 < one["gini_se"] < 0.02 and 0 < one["top_share_se"] < 0.05
    # tiny effects against their errors: equal heads look unequal by noise alone, so the bound is high
    assert head_inequality([0.001] * 16, [0.01] * 16)["equal_heads_gini"] > 0.5
    # the same numbers give the same bound (fixed seed), and no errors give no bound
    assert head_inequality([0.5] + [0.1] * 15, [0.01] * 16) == one
    assert head_inequality([0.5] + [0.1] * 15, None)["equal_heads_gini"] is None
