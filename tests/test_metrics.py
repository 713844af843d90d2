"""Every probe metric on inputs whose answer is known by hand."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from probes.analyse import emergence as E
from probes.measure import metrics as M

from _reference import largest_log_step_rise


def uniform_causal(P: int, H: int = 1) -> torch.Tensor:
    """[1, H, P, P] pattern where row i attends uniformly to keys 0..i."""
    mask = torch.tril(torch.ones(P, P))
    return (mask / mask.sum(-1, keepdim=True)).expand(1, H, P, P).clone()


def one_hot_pattern(P: int, key_of) -> torch.Tensor:
    """[1, 1, P, P] pattern where row q puts all its attention on key_of(q)."""
    pat = torch.zeros(1, 1, P, P)
    for q in range(P):
        pat[0, 0, q, key_of(q)] = 1.0
    return pat


# -- attention entropy ------------------------------------------------------------------------
def test_entropy_of_uniform_causal_rows_is_log_of_row_length():
    rows = M.attention_entropy_rows(uniform_causal(7))[0, 0]
    expected = torch.log(torch.arange(1, 8, dtype=torch.float64))
    assert torch.allclose(rows, expected, atol=1e-12)
    raw, norm = M.attention_entropy(uniform_causal(7, H=2))
    assert torch.allclose(raw, expected[1:].mean().expand(2), atol=1e-12)
    assert torch.allclose(norm, torch.ones(2, dtype=torch.float64), atol=1e-12)


def test_entropy_of_one_hot_rows_is_zero():
    pat = one_hot_pattern(6, lambda q: max(q - 1, 0))
    assert torch.all(M.attention_entropy_rows(pat) == 0)
    raw, norm = M.attention_entropy(pat)
    assert raw.item() == 0 and norm.item() == 0


def test_sink_mass_counts_attention_on_position_zero_from_row_one_on():
    assert M.sink_mass(one_hot_pattern(5, lambda q: 0)).item() == pytest.approx(1.0)
    assert M.sink_mass(one_hot_pattern(5, lambda q: q)).item() == pytest.approx(0.0)
    # uniform: row i puts 1/(i+1) on key 0; rows 1..4 -> mean(1/2, 1/3, 1/4, 1/5)
    assert M.sink_mass(uniform_causal(5)).item() == pytest.approx((1 / 2 + 1 / 3 + 1 / 4 + 1 / 5) / 4)


# -- induction, previous-token, duplicate-token ------------------------------------------------
PERIOD, START = 5, 1  # [BOS, r1..r5, r1..r5]: 11 positions


def test_induction_score_is_one_on_a_perfect_induction_pattern():
    P = START + 2 * PERIOD
    pat = one_hot_pattern(P, lambda q: q - PERIOD + 1 if q >= START + PERIOD else 0)
    assert M.induction_score(pat, PERIOD, START).item() == pytest.approx(1.0)
    assert M.duplicate_token_score(pat, PERIOD, START).item() == pytest.approx(0.0)
    assert M.previous_token_score(pat).item() < 0.2


def test_induction_score_is_zero_on_a_previous_token_pattern():
    P = START + 2 * PERIOD
    pat = one_hot_pattern(P, lambda q: max(q - 1, 0))
    assert M.induction_score(pat, PERIOD, START).item() == pytest.approx(0.0)
    assert M.previous_token_score(pat).item() == pytest.approx(1.0)


def test_duplicate_token_score_on_a_duplicate_token_pattern():
    P = START + 2 * PERIOD
    pat = one_hot_pattern(P, lambda q: q - PERIOD if q >= START + PERIOD else 0)
    assert M.duplicate_token_score(pat, PERIOD, START).item() == pytest.approx(1.0)
    assert M.induction_score(pat, PERIOD, START).item() == pytest.approx(0.0)


def test_induction_score_on_uniform_attention_is_the_mean_of_one_over_row_length():
    P = START + 2 * PERIOD
    expected = sum(1 / (q + 1) for q in range(START + PERIOD, P)) / PERIOD
    assert M.induction_score(uniform_causal(P), PERIOD, START).item() == pytest.approx(expected)


def test_copy_targets_find_the_token_after_an_earlier_occurrence_of_the_same_span():
    #        0  1  2  3  4  5  6  7  8
    toks = [9, 1, 2, 3, 7, 1, 2, 3, 8]
    # at q=6 the bigram (1,2) ended earlier at j=2 and tokens[3] == tokens[7] == 3 -> target 3
    # at q=7 the bigram (2,3) ended at j=3, but tokens[4]=7 != tokens[8]=8 -> no copy
    assert M.copy_targets(toks, n=2) == [(6, 3)]
    pat = torch.zeros(1, 2, 8, 8)
    pat[0, 0, 6, 3] = 1.0  # head 0 copies, head 1 does not
    pat[0, 1, 6, 5] = 1.0
    score, n = M.copying_score(pat, [M.copy_targets(toks, n=2)])
    assert n == 1 and score.tolist() == [1.0, 0.0]


def test_copying_score_without_repeated_spans_is_zero_with_count_zero():
    score, n = M.copying_score(uniform_causal(4, H=3), [M.copy_targets([1, 2, 3, 4, 5])])
    assert n == 0 and score.tolist() == [0.0, 0.0, 0.0]


# -- inequality -------------------------------------------------------------------------------
def test_gini_of_equal_importances_is_zero_and_of_one_hot_is_n_minus_one_over_n():
    assert M.gini([0.3] * 16) == pytest.approx(0.0, abs=1e-12)
    one_hot = [0.0] * 16
    one_hot[5] = 2.0
    assert M.gini(one_hot) == pytest.approx(15 / 16)
    assert M.gini([0.0] * 4) == 0.0
    assert M.gini([1.0, -3.0, 1.0, 1.0]) == pytest.approx(M.gini([1.0, 0.0, 1.0, 1.0]))  # negatives clipped
    # hand-computed: x = (1, 2, 3, 4): sum |xi - xj| over ordered pairs = 20, / (2 n^2 mean) = 20 / 80
    assert M.gini([4, 1, 3, 2]) == pytest.approx(0.25)


def test_top_share():
    assert M.top_share([1.0] * 20) == pytest.approx(2 / 20)  # top 10% of 20 heads = 2 heads
    assert M.top_share([0, 0, 0, 5.0] + [0] * 12) == pytest.approx(1.0)
    assert M.top_share([3.0, 1.0, 0.0, 0.0], fraction=0.25) == pytest.approx(0.75)
    assert M.top_share([0.0] * 10) == pytest.approx(0.1)


# -- repetition -------------------------------------------------------------------------------
def test_seq_rep_and_distinct_on_hand_written_lists():
    assert M.seq_rep_n([1, 2, 3, 4, 5, 6], 4) == 0.0
    loop = [1, 2, 3, 1, 2, 3, 1, 2, 3]  # 4-grams: 6, unique: (1,2,3,1) (2,3,1,2) (3,1,2,3) -> 3
    assert M.seq_rep_n(loop, 4) == pytest.approx(0.5)
    assert M.seq_rep_n([7] * 10, 4) == pytest.approx(1 - 1 / 7)
    assert M.distinct_n(loop, 1) == pytest.approx(3 / 9)
    assert M.distinct_n(loop, 2) == pytest.approx(3 / 8)
    assert M.distinct_n([1, 2, 3], 2) == 1.0
    assert M.seq_rep_n([1, 2], 4) == 0.0 and M.distinct_n([], 1) == 0.0


def test_repeated_ngram_mask_marks_every_later_occurrence():
    assert M.repeated_ngram_mask([5, 6, 7, 5, 6, 7, 8], 3) == [False, False, False, True, True, True, False]
    assert M.repeated_ngram_mask([1, 1, 1, 1], 2) == [False, True, True, True]
    assert M.repeated_ngram_mask([1, 2, 3], 4) == [False] * 3


def test_loop_detection():
    text = list(range(20))
    assert not M.ends_in_loop(text)
    looped = text + [7, 8, 9] * 6  # 18-token tail of period 3
    assert M.find_loop(looped) == (20, 3)  # the smallest period, from where the repeats begin
    assert M.ends_in_loop([4] * 16) and not M.ends_in_loop([4] * 15)  # min_span 16
    assert not M.ends_in_loop(list(range(30)) + [1, 2, 3, 1, 2, 3])  # too short a tail
    assert M.find_loop([9, 1, 2, 1, 2], min_repeats=2, min_span=4) == (1, 2)
    # a loop that stopped before the end is not "ending in a loop"
    assert not M.ends_in_loop([7, 8, 9] * 8 + list(range(20, 40)))


def test_rep_wrep_on_a_hand_written_batch():
    tokens = torch.tensor([[1, 2, 1, 2, 5]])          # inputs 1 2 1 2, targets 2 1 2 5
    preds = torch.tensor([[1, 1, 2, 9]])              # in context: yes yes yes no; wrong: yes no no yes
    rep, wrep = M.rep_wrep(preds, tokens, window=128)
    assert rep == pytest.approx(3 / 4) and wrep == pytest.approx(1 / 4)
    rep1, wrep1 = M.rep_wrep(preds, tokens, window=1)  # only the current input token counts
    assert rep1 == pytest.approx(1 / 4) and wrep1 == pytest.approx(1 / 4)  # position 0: 1 == 1, wrong


# -- memorization -----------------------------------------------------------------------------
def test_memorization_score():
    assert M.memorization_score([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert M.memorization_score([1, 0, 3, 0], [1, 2, 3, 4]) == 0.5
    assert M.memorization_score([1, 2, 3, 4, 5], [9, 9]) == 0.0


def test_exposure_of_a_canary_ranked_first_is_log2_of_the_candidates():
    assert M.exposure([0.5, 3.0, 2.0, 9.0, 4.0, 4.0, 8.0, 7.0]) == pytest.approx(3.0)
    assert M.exposure([10.0, 1.0, 2.0, 3.0]) == pytest.approx(0.0)  # ranked last of 4: log2 4 - log2 4
    assert M.exposure([2.5, 1.0, 2.0, 3.0]) == pytest.approx(2 - math.log2(3))
    assert M.exposure([1.0, 1.0, 2.0, 3.0]) == pytest.approx(2.0)  # a tie counts in its favour


def test_extrapolated_exposure_from_a_normal_fit():
    alternatives = [1.0, 2.0, 3.0, 4.0, 5.0]  # mean 3, sample std sqrt(2.5)
    assert M.extrapolated_exposure(3.0, alternatives) == pytest.approx(1.0)  # P = 1/2
    sd = math.sqrt(2.5)
    p = 0.5 * math.erfc(2 / math.sqrt(2))  # Phi(-2)
    assert M.extrapolated_exposure(3.0 - 2 * sd, alternatives) == pytest.approx(-math.log2(p))
    assert M.extrapolated_exposure(3.0 - 40 * sd, alternatives) > 100  # far beyond log2|R|, no overflow
    assert M.extrapolated_exposure(1.0, [2.0]) is None and M.extrapolated_exposure(1.0, [2.0, 2.0]) is None


def skewnorm_moments(xi: float, omega: float, alpha: float) -> tuple[float, float, float]:
    """Mean, variance and skewness of a skew-normal, from its textbook formulas (Azzalini)."""
    delta = alpha / math.sqrt(1 + alpha ** 2)
    b = delta * math.sqrt(2 / math.pi)
    return (xi + omega * b, omega ** 2 * (1 - b ** 2), (4 - math.pi) / 2 * b ** 3 / (1 - b ** 2) ** 1.5)


def skewnorm_log_cdf_by_quadrature(x: float, xi: float, omega: float, alpha: float) -> float:
    """log P(X <= x) by 60-digit adaptive quadrature of the density 2/omega phi(z) Phi(alpha z):
    an implementation independent of probes.measure.metrics (mpmath, not torch; the density, not a grid)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    z = (x - xi) / omega
    density = lambda t: 2 * mpmath.npdf(t) * mpmath.ncdf(alpha * t)  # noqa: E731
    lo = min(z, 0) - 60
    points = [lo] + [z - d for d in (10, 3, 1, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001) if z - d > lo] + [z]
    return float(mpmath.log(mpmath.quad(density, points)))


def test_skew_normal_fit_by_moments_reproduces_the_sample_moments():
    samples = [1.0, 2.0, 2.0, 3.0, 5.0]  # deviations -1.6 -0.6 -0.6 0.4 2.4 from the mean 2.6
    mean, var = 2.6, 9.2 / 4  # squares sum to 9.2; variance with ddof=1
    skew = (9.36 / 5) / (9.2 / 5) ** 1.5  # cubes sum to 9.36: g1 = 0.750, a skew-normal reaches 0.9953
    xi, omega, alpha = M.skewnorm_moments_fit(samples)
    m, v, g = skewnorm_moments(xi, omega, alpha)
    assert (m, v, g) == pytest.approx((mean, var, skew), rel=1e-9)
    # symmetric samples give the normal fit; skewness beyond a skew-normal's is clipped to 0.99
    assert M.skewnorm_moments_fit([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((3.0, math.sqrt(2.5), 0.0))
    _, _, g = skewnorm_moments(*M.skewnorm_moments_fit([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 10.0]))
    assert g == pytest.approx(0.99)
    assert M.skewnorm_moments_fit([2.0]) is None and M.skewnorm_moments_fit([2.0, 2.0]) is None


@pytest.mark.parametrize("alpha", [-6.0, -0.7, 0.0, 1.5, 6.0])
@pytest.mark.parametrize("z", [-150.0, -25.0, -3.0, -0.5, 0.0, 2.0])
def test_skew_normal_log_cdf_matches_quadrature_far_into_the_tail(alpha, z):
    xi, omega = 10.0, 2.5
    x = xi + omega * z
    expected = skewnorm_log_cdf_by_quadrature(x, xi, omega, alpha)
    assert M.skewnorm_logcdf(x, xi, omega, alpha) == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_extrapolated_exposure_with_a_skew_normal_fit_on_a_tiny_example():
    alternatives = [1.0, 2.0, 2.0, 3.0, 5.0]
    # the fit, by hand: skewness g = 0.750 -> delta from g^(2/3), then omega and xi from the sd and mean
    g = (9.36 / 5) / (9.2 / 5) ** 1.5
    c = ((4 - math.pi) / 2) ** (2 / 3)
    delta = math.sqrt(math.pi / 2 * g ** (2 / 3) / (g ** (2 / 3) + c))
    omega = math.sqrt(9.2 / 4) / math.sqrt(1 - 2 * delta ** 2 / math.pi)
    xi = 2.6 - omega * delta * math.sqrt(2 / math.pi)
    alpha = delta / math.sqrt(1 - delta ** 2)
    for canary in (0.5, -3.0, 2.0):
        expected = -skewnorm_log_cdf_by_quadrature(canary, xi, omega, alpha) / math.log(2)
        assert M.extrapolated_exposure(canary, alternatives, fit="skew-normal") == pytest.approx(expected, rel=1e-6)
    # right-skewed alternatives: a loss below them all is rarer than the normal fit says
    assert M.extrapolated_exposure(-3.0, alternatives, fit="skew-normal") > M.extrapolated_exposure(
        -3.0, alternatives, fit="normal")
    # "auto" fits the normal below SKEWNORM_MIN_ALTERNATIVES alternatives, the skew-normal from there on
    assert M.extrapolated_exposure(-3.0, alternatives) == M.extrapolated_exposure(-3.0, alternatives, fit="normal")
    many = [1.0, 2.0, 2.0, 3.0, 5.0] * (M.SKEWNORM_MIN_ALTERNATIVES // 5 + 1)
    assert M.extrapolated_exposure(-3.0, many) == M.extrapolated_exposure(-3.0, many, fit="skew-normal")
    # capped at log2|R| when the randomness space is known; never negative
    assert M.extrapolated_exposure(-1000.0, alternatives, max_bits=40.0) == 40.0
    assert M.extrapolated_exposure(100.0, alternatives) == 0.0
    with pytest.raises(ValueError, match="fit must be"):
        M.extrapolated_exposure(1.0, alternatives, fit="gamma")
    assert M.extrapolated_exposure(1.0, [2.0, float("nan"), 3.0]) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_extrapolated_exposure_agrees_with_the_rank_where_the_rank_can_tell(seed):
    """4096 normal losses: a canary at the 1/128 quantile has rank exposure about 7 bits (well
    under the cap of 12), and both fits must say about the same."""
    rng = np.random.default_rng(seed)
    losses = rng.normal(100.0, 8.0, size=4096)
    canary = float(np.quantile(losses, 1 / 128))
    rank = M.exposure([canary, *losses])
    for fit in ("normal", "skew-normal"):
        extrapolated = M.extrapolated_exposure(canary, losses, fit=fit)
        assert extrapolated == pytest.approx(rank, abs=0.4), f"seed {seed}, {fit}: {extrapolated} vs rank {rank}"


# -- emergence --------------------------------------------------------------------------------
STEPS = [0, 1, 2, 4, 8, 16, 32, 64]


def test_sustained_crossing_and_rise():
    values = [0.9, 0.1, 0.5, 0.1, 0.4, 0.5, 0.6, 0.2]
    assert E.sustained_crossing(STEPS, values, 0.3, persist=2) == 8
    assert E.sustained_crossing(STEPS, values, 0.3, persist=1) == 0
    assert E.sustained_rise(STEPS, values, 0.3, persist=1) == 2
    assert E.sustained_rise(STEPS, values, 0.3, persist=2) == 8
    assert E.sustained_fall(STEPS, values, 0.3, after=8, persist=1) == 64
    assert E.sustained_crossing(STEPS, [None, 0.1, 0.5, None, 0.6, 0.1, 0.1, 0.1], 0.3) == 2
    assert E.sustained_crossing(STEPS, [0.1] * 8, 0.3) is None


def test_largest_log_step_rise_normalises_by_log_step():
    """The reference rule the phase-change tests compare against (tests/_reference.py)."""
    values = [0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.9, 1.0]
    best = largest_log_step_rise(STEPS, values)
    assert best["step"] == 32 and best["from_step"] == 16
    assert best["rise"] == pytest.approx(0.7)
    assert best["rate"] == pytest.approx(0.7 / (math.log(33) - math.log(17)))
    # the same absolute rise over a wider log interval ranks lower
    assert largest_log_step_rise([0, 10, 1000], [0.0, 0.5, 1.0])["step"] == 10
    assert largest_log_step_rise([5], [1.0]) is None


def test_largest_sustained_rise_by_hand():
    # splits of [0, 0, 1, 1]: k=1 levels 0 | 1 (median of 0, 1, 1), total deviation 1; k=2 levels
    # 0 | 1, deviation 0; k=3 levels 0 | 1, deviation 1 -> k=2, between steps 4 and 8
    r = E.largest_sustained_rise([2, 4, 8, 16], [0.0, 0.0, 1.0, 1.0], min_rise=0.1)
    assert (r["from_step"], r["step"], r["before"], r["after"], r["rise"]) == (4, 8, 0.0, 1.0, 1.0)
    assert r["rate"] == pytest.approx(1.0 / (math.log(9) - math.log(5)))
    assert r["noise"] == 0.0 and r["detected"] and r["kind"] == "abrupt" and r["kept_share"] == 1.0
    # missing values are skipped; a series that never rises has no rise; the minimum is honoured
    assert E.largest_sustained_rise([0, 1, 2, 3], [0.0, None, 1.0, 1.0], 0.1)["from_step"] == 0
    assert E.largest_sustained_rise([0, 1, 2], [1.0, 0.5, 0.0], 0.1) is None
    assert E.largest_sustained_rise([0, 1, 2, 3], [0.0, 0.0, 0.05, 0.05], 0.1)["detected"] is False


@pytest.mark.parametrize("bad, words", [
    ({"min_rise": -0.1}, "min_rise must be a number >= 0"), ({"min_rise": float("nan")}, "min_rise"),
    ({"sustain_share": 0.0}, "sustain_share must be in (0, 1]"), ({"sustain_share": 1.5}, "sustain_share"),
    ({"noise_z": -1}, "noise_z must be a number >= 0"), ({"abrupt_max_intervals": 0}, "abrupt_max_intervals"),
    ({"abrupt_max_intervals": 1.5}, "whole number"), ({"band": 0.5}, "band must be in [0, 0.5)")])
def test_largest_sustained_rise_refuses_settings_that_break_its_words(bad, words):
    settings = {"min_rise": 0.1} | bad
    with pytest.raises(ValueError, match=re.escape(words)):
        E.largest_sustained_rise([0, 1, 2], [0.0, 0.0, 1.0], **settings)


def test_icl_score_averages_a_window_at_each_end():
    from probes.measure.induction import icl_score
    losses = torch.arange(128, dtype=torch.float32).repeat(3, 1)  # loss = position
    r = icl_score(losses)
    assert (r["early_position"], r["late_position"]) == (50, 127)  # 500 does not fit: the last position
    assert r["early_positions"] == [45, 55] and r["late_positions"] == [118, 128]
    assert r["value"] == pytest.approx(122.5 - 49.5) and r["note"]
    # the result says exactly which positions were averaged, matching the value
    assert r["definition"] == ("mean held-out loss over positions 118-127 minus mean over positions 45-54 "
                               "(position i predicts token i+1)")
    assert r["value"] == pytest.approx(float(losses[:, 118:128].mean() - losses[:, 45:55].mean()))
    assert icl_score(torch.ones(2, 600))["late_position"] == 500 and icl_score(torch.ones(2, 600))["note"] is None
