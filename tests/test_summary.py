"""Emergence across checkpoints: the rise of level that a late wobble, a transient spike, noise or
uneven checkpoint spacing cannot fool, found on synthetic series whose answer is known by
construction, both through the metric itself and through `probes.summarize` on result dicts of
the shape the probes write."""
from __future__ import annotations

import random
import statistics

import pytest
import torch

from probes import summarize
from probes.induction import icl_score
from probes.emergence import difference_noise, largest_log_step_rise, largest_sustained_rise
from probes.metrics import gini
from probes.summary import RISE_KEYS, THRESHOLDS, rules

DEMO_STEPS = [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300, 400, 500, 600, 700, 800]  # the demo's checkpoints
MIN_RISE = THRESHOLDS["induction_min_rise"]


def rise(steps, values, min_rise=MIN_RISE) -> dict:
    """The summary's rule with the summary's thresholds."""
    return largest_sustained_rise(steps, values, min_rise, sustain_share=THRESHOLDS["rise_sustain_share"],
                                  noise_z=THRESHOLDS["rise_noise_z"],
                                  abrupt_max_intervals=THRESHOLDS["abrupt_max_intervals"],
                                  band=THRESHOLDS["transition_band"])


def issue_series() -> list[float]:
    """The issue's example: 0.01 up to step 100, 0.35 from step 200, 0.33 -> 0.40 at 700 -> 800."""
    return [0.01 if s <= 100 else 0.35 for s in DEMO_STEPS[:-2]] + [0.33, 0.40]


def wobbly_jump(n: int, k: int, seed: int, low: float = 0.02, high: float = 0.4, wobble: float = 0.01) -> list[float]:
    """`low` before index k, `high` from k on, each value wobbling by up to +-`wobble`."""
    r = random.Random(seed)
    return [(low if i < k else high) + r.uniform(-wobble, wobble) for i in range(n)]


# -- the issue's example ------------------------------------------------------------------------
def test_the_issue_example_finds_the_jump_that_the_log_step_rule_missed():
    values = issue_series()
    old = largest_log_step_rise(DEMO_STEPS, values)
    assert (old["from_step"], old["step"]) == (700, 800) and old["rise"] == pytest.approx(0.07)  # the flaw
    found = rise(DEMO_STEPS, values)
    assert found["detected"] and found["reason"] is None
    assert (found["from_step"], found["step"]) == (100, 200)
    # levels are medians: of the nine 0.01s, and of 0.35 x5, 0.33, 0.40
    assert found["before"] == pytest.approx(0.01) and found["after"] == pytest.approx(0.35)
    assert found["rise"] == pytest.approx(0.34) and found["jump"] == pytest.approx(0.34)
    assert found["kind"] == "abrupt" and found["abrupt"] is True and found["transition_intervals"] == 1
    assert (found["transition_from_step"], found["transition_to_step"]) == (100, 200)
    assert (found["n_before"], found["n_after"]) == (9, 7) and found["note"] is None


def test_a_larger_difference_of_medians_at_the_end_does_not_win():
    """The split 700|800 has before-median 0.01 (nine 0.01s among 15 values) and after 0.40: a
    larger difference (0.39) than the real jump's 0.34. It is the fit that rules it out."""
    values = issue_series()
    late = statistics.median(values[:-1]), values[-1]
    assert late[1] - late[0] == pytest.approx(0.39)
    assert rise(DEMO_STEPS, values)["step"] == 200


# -- jumps early, in the middle and at the last pair -------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 8, 15], ids=["first-pair", "early", "middle", "last-pair"])
@pytest.mark.parametrize("seed", range(20))
def test_a_jump_followed_by_small_wobbles_is_found_at_its_pair(k, seed):
    values = wobbly_jump(16, k, seed)
    found = rise(DEMO_STEPS, values)
    msg = f"seed={seed} k={k} values={values}"
    assert found["detected"], msg
    assert (found["from_step"], found["step"]) == (DEMO_STEPS[k - 1], DEMO_STEPS[k]), msg
    assert found["rise"] == pytest.approx(0.38, abs=0.02), msg
    assert found["kind"] == "abrupt" and found["transition_intervals"] == 1, msg
    assert (found["n_before"], found["n_after"]) == (k, 16 - k), msg


def test_a_jump_at_the_last_pair_says_its_level_rests_on_one_checkpoint():
    found = rise(DEMO_STEPS, wobbly_jump(16, 15, seed=0))
    assert found["detected"] and found["step"] == 800 and found["n_after"] == 1
    assert found["note"] == "the after level rests on one checkpoint"
    first = rise(DEMO_STEPS, wobbly_jump(16, 1, seed=0))
    assert first["note"] == "the before level rests on one checkpoint"


def test_late_wobbles_larger_than_the_minimum_do_not_hide_an_early_jump():
    """After a jump 0.02 -> 0.4 at 16 -> 32, the score wobbles by up to 0.12 checkpoint to
    checkpoint (more than min_rise): still the jump is found."""
    r = random.Random(7)
    values = [0.02] * 6 + [0.4 + r.choice([-0.06, 0.06]) for _ in range(10)]
    found = rise(DEMO_STEPS, values)
    assert found["detected"] and (found["from_step"], found["step"]) == (16, 32), values


# -- what must not count -----------------------------------------------------------------------
@pytest.mark.parametrize("n", [8, 16, 20, 40])
def test_pure_noise_is_never_detected(n):
    """Values N(0.02, 0.005): the brief's noise, far below the minimum rise."""
    for seed in range(300):
        r = random.Random(seed)
        values = [r.gauss(0.02, 0.005) for _ in range(n)]
        found = rise(list(range(0, 10 * n, 10)), values)
        assert found is None or not found["detected"], f"seed={seed} n={n} found={found}"


def test_noise_as_large_as_the_minimum_rise_is_rarely_detected():
    """N(0.3, 0.1), the noise itself as large as min_rise: the noise test, not the minimum, has to
    refuse it. Over 600 seeded series of 8-30 checkpoints, at most 1% pass (measured: 0.4% of 3000)."""
    hits = []
    for seed in range(600):
        r = random.Random(seed)
        n = r.choice([8, 12, 16, 20, 30])
        values = [r.gauss(0.3, 0.1) for _ in range(n)]
        found = rise(list(range(n)), values)
        if found and found["detected"]:
            hits.append(seed)
    assert len(hits) <= 6, f"detected on seeds {hits}"


def test_a_transient_spike_is_not_sustained():
    # two high checkpoints among six later ones do not even move the after-level
    assert rise(DEMO_STEPS, [0.01] * 10 + [0.5, 0.5] + [0.01] * 4) is None
    # a rise that falls back for three of the eight later checkpoints: 5/8 keep it, under 75%
    values = [0.01] * 8 + [0.5] * 5 + [0.01] * 3
    found = rise(DEMO_STEPS, values)
    assert not found["detected"] and found["sustained"] is False and (found["from_step"], found["step"]) == (64, 100)
    assert found["reason"] == ("not sustained: only 5 of the 8 later checkpoints keep half the rise "
                               "(at least 75% must)")
    # a spike near the end: two of the three later checkpoints keep it, fewer than 75%
    values = [0.01] * 13 + [0.5, 0.5, 0.01]
    found = rise(DEMO_STEPS, values)
    assert not found["detected"] and found["kept_share"] == pytest.approx(2 / 3)


def test_a_late_spike_does_not_hide_an_earlier_sustained_jump():
    values = [0.01] * 6 + [0.35] * 7 + [0.9, 0.9, 0.35]
    found = rise(DEMO_STEPS, values)
    assert found["detected"] and (found["from_step"], found["step"]) == (16, 32)


def test_a_rise_below_the_minimum_is_reported_with_its_reason():
    values = [0.01] * 8 + [0.06] * 8
    found = rise(DEMO_STEPS, values)
    assert not found["detected"] and (found["from_step"], found["step"]) == (64, 100)
    assert found["rise"] == pytest.approx(0.05)
    assert found["reason"] == "the level rose by 0.05, below the minimum 0.1"


def test_a_series_that_only_falls_has_no_rise():
    assert rise(DEMO_STEPS, [0.5 - 0.01 * i for i in range(16)]) is None
    assert rise([0], [0.3]) is None


# -- gradual change and uneven spacing ---------------------------------------------------------
def test_a_slow_ramp_is_detected_as_gradual():
    """0 -> 0.5 over 20 checkpoints in equal steps: the levels of the two halves differ by
    0.263 (medians 0.105 and 0.368 at the middle split), and the climb spans many intervals."""
    steps = list(range(0, 2000, 100))
    values = [0.5 * i / 19 for i in range(20)]
    found = rise(steps, values)
    assert found["detected"] and found["kind"] == "gradual" and found["abrupt"] is False
    assert found["rise"] == pytest.approx(0.5 * 10 / 19)
    assert found["n_before"] == 9 and found["before"] == pytest.approx(0.5 * 4 / 19)
    # from the last value within 20% of the rise above 0.105 to the first within 20% below 0.368
    assert (found["transition_from_step"], found["transition_to_step"]) == (600, 1200)
    assert found["transition_intervals"] == 6 > THRESHOLDS["abrupt_max_intervals"]


def test_a_rise_over_two_intervals_is_still_abrupt_and_over_three_is_gradual():
    two = [0.0] * 7 + [0.2] + [0.4] * 8
    found = rise(DEMO_STEPS, two)
    assert found["detected"] and found["kind"] == "abrupt" and found["transition_intervals"] == 2
    three = [0.0] * 7 + [0.13, 0.27] + [0.4] * 7
    found = rise(DEMO_STEPS, three)
    assert found["detected"] and found["kind"] == "gradual" and found["transition_intervals"] == 3


def test_uneven_checkpoint_spacing_favours_no_pair():
    """Steps 0, 1, 2, 4, ..., 512 then 1000, 2000, 3000 (log-spaced, then linear): the jump between
    1000 and 2000 is found, with an early wobble steep per unit of log(1 + step); and the answer
    depends on the checkpoints' order only, not on their steps (the same values on evenly spaced
    steps give the same split, levels and kind)."""
    steps = [0] + [2 ** i for i in range(10)] + [1000, 2000, 3000]
    even = list(range(0, 100 * len(steps), 100))
    for seed in range(20):
        values = wobbly_jump(len(steps), steps.index(2000), seed, low=0.02, high=0.3, wobble=0.01)
        values[1] = values[0] + 0.03  # a steep early wobble per unit of log(1 + step)
        found = rise(steps, values)
        assert found["detected"] and (found["from_step"], found["step"]) == (1000, 2000), f"seed={seed}"
        assert found["note"] is None and found["n_after"] == 2
        same = rise(even, values)
        assert (same["from_step"], same["step"]) == (even[11], even[12]), f"seed={seed}"
        for key in ("before", "after", "rise", "kind", "transition_intervals", "detected"):
            assert same[key] == found[key], (key, seed)


# -- the noise estimate ------------------------------------------------------------------------
def test_difference_noise_by_hand():
    # differences 0.1, -0.1, 0.1, -0.1: median 0, deviations 0.1 x4, largest left out -> mean 0.1
    assert difference_noise([0.0, 0.1, 0.0, 0.1, 0.0]) == pytest.approx(0.1 * 3.141592653589793 ** 0.5 / 2)
    # a clean jump and a clean ramp have no noise
    assert difference_noise([0.0] * 5 + [1.0] * 5) == 0.0
    assert difference_noise([0.1 * i for i in range(10)]) == pytest.approx(0.0, abs=1e-12)
    assert difference_noise([1.0, 2.0]) == 0.0


def test_difference_noise_recovers_gaussian_noise_on_a_jump():
    r = random.Random(3)
    values = [r.gauss(0.0, 0.05) for _ in range(400)] + [r.gauss(1.0, 0.05) for _ in range(400)]
    assert difference_noise(values) == pytest.approx(0.05, rel=0.1)


def test_a_noisy_rise_within_noise_says_so():
    r = random.Random(11)
    values = [r.gauss(0.3, 0.1) for _ in range(7)] + [0.75]  # one high value after noisy ones
    found = rise(list(range(8)), values)
    assert found["step"] == 7 and not found["detected"]
    assert found["reason"].startswith("within noise"), found


# -- through probes.summarize on result dicts of the probes' shape ------------------------------
def matrix(top: float, rest: float, L: int = 2, H: int = 4) -> list[list[float]]:
    """[L][H] with one head at `top` and the others at `rest`."""
    m = [[rest] * H for _ in range(L)]
    m[1][2] = top
    return m


def probe_result(step: int, induction: float, copying: float, icl_late_loss: float, top_head: float,
                 tokens_per_step: int = 2048) -> dict:
    """A result file's content with the keys the probes write (see probes.compute and
    tests/test_probes.REQUIRED_KEYS); the ICL entry comes from the real `icl_score`."""
    losses = torch.full((4, 128), 4.0)
    losses[:, 118:128] = icl_late_loss
    zero = matrix(top_head, 0.01)
    return {
        "step": step, "tokens": step * tokens_per_step, "version": 1, "seconds": {"pattern_pass": 0.1},
        "head_ablation": {"clean_loss": 5.0 - step / 1000, "n_sequences": 16, "n_positions": 128,
                          "zero": zero, "mean": zero, "resample": zero,
                          "gini": {k: gini([x for r in zero for x in r]) for k in ("zero", "mean", "resample")},
                          "top_share": {k: 0.3 for k in ("zero", "mean", "resample")}, "top_fraction": 0.1},
        "induction": {
            "induction": matrix(induction, 0.005), "previous_token": matrix(0.6, 0.1),
            "duplicate_token": matrix(0.02, 0.01), "in_context_copying": matrix(copying, 0.01),
            "in_context_copying_positions": 300, "in_context_copying_loss": {"copy_positions": 2.0,
                                                                           "other_positions": 4.0},
            "random_repeat_loss": {"first_half": 7.0, "second_half": 7.0 - 5 * induction},
            "random_period": 32, "n_random": 16,
            "best_induction": {"score": induction, "layer": 1, "head": 2},
            "icl_score": icl_score(losses),
        },
    }


def demo_results(values: list[float], copying: list[float] | None = None) -> dict[int, dict]:
    copying = copying or [0.03] * len(values)
    return {s: probe_result(s, v, c, icl_late_loss=4.0 - 2 * v, top_head=0.01 if s < 8 else 0.3)
            for s, v, c in zip(DEMO_STEPS, values, copying)}


def test_summarize_reports_the_issue_example_as_a_phase_change():
    summary = summarize(demo_results(issue_series()))
    em = summary["emergence"]["induction"]
    assert em["metric"] == "induction.induction.max" and em["detected"] is True
    assert (em["from_step"], em["step"]) == (100, 200)
    assert em["rise"] == pytest.approx(0.34) and em["kind"] == "abrupt" and em["abrupt"] is True
    assert em["before"] == pytest.approx(0.01) and em["after"] == pytest.approx(0.35)
    assert em["best_head"] == {"layer": 1, "head": 2, "score": 0.35}
    # ICL = loss over 118-127 minus over 45-54 = (4 - 2v) - 4: medians over the same checkpoints
    assert em["icl_before"] == pytest.approx(-0.02, abs=1e-6) and em["icl_after"] == pytest.approx(-0.70, abs=1e-6)
    assert em["icl_change"] == pytest.approx(-0.68, abs=1e-6)
    assert em["best_score_reached"] == pytest.approx(0.40)
    for key in RISE_KEYS + ("metric", "min_rise"):
        assert key in em and key in em["in_context_copying"]
    assert em["in_context_copying"]["detected"] is False  # a flat copying score
    assert em["rule"] == rules()["induction"]


@pytest.mark.parametrize("k", [2, 8, 15])
def test_summarize_finds_copying_jumps_separately(k):
    copying = wobbly_jump(16, k, seed=k, low=0.03, high=0.5)
    em = summarize(demo_results([0.01] * 16, copying))["emergence"]["induction"]
    assert em["detected"] is False and em["step"] is None and em["reason"] == "the level never rises"
    cp = em["in_context_copying"]
    assert cp["metric"] == "induction.in_context_copying.max"
    assert cp["detected"] and (cp["from_step"], cp["step"]) == (DEMO_STEPS[k - 1], DEMO_STEPS[k])


def test_summarize_head_concentration_uses_the_same_rule_where_heads_matter():
    """Top head 0.01 nats before step 8 (heads do not matter), 0.3 from step 8: the Gini of
    importance jumps with it, but only the checkpoints where heads matter are compared; a later
    concentration jump (one head rising from 0.3 to 2.0 at step 300) is what is found."""
    results = demo_results([0.01] * 16)
    for s in DEMO_STEPS:
        top = 0.01 if s < 8 else 0.3 if s < 300 else 2.0
        zero = matrix(top, 0.01 if s < 8 else 0.2)
        results[s]["head_ablation"]["zero"] = zero
        results[s]["head_ablation"]["gini"]["zero"] = gini([x for r in zero for x in r])
    em = summarize(results)["emergence"]["head_concentration"]
    assert em["heads_matter_step"] == 8
    assert em["detected"] and (em["from_step"], em["step"]) == (200, 300) and em["kind"] == "abrupt"
    g = summarize(results)["series"]["head_ablation.gini.zero"]
    assert em["rise"] == pytest.approx(g[-1] - g[DEMO_STEPS.index(200)])


def test_summarize_states_the_rule_and_thresholds_it_used():
    summary = summarize(demo_results(issue_series()))
    assert summary["thresholds"] == THRESHOLDS
    text = summary["rules"]["induction"]
    for phrase in ("median", "sustained", "75%", "6 x noise", "least total absolute deviation", "abrupt",
                   "gradual", "at most 2 checkpoint intervals", "early_positions", "by index"):
        assert phrase in text, phrase
    assert "largest rise per unit" not in text and "largest rise per unit" not in summary["rules"]["head_concentration"]
    assert "per unit of log(1 + step), for reference only" in text
    assert summary["emergence"]["head_concentration"]["rule"] == summary["rules"]["head_concentration"]


def test_summarize_without_enough_checkpoints_says_why():
    em = summarize(demo_results([0.01]))["emergence"]["induction"]
    assert em["step"] is None and em["detected"] is False and em["reason"] == "fewer than two values"
    em = summarize(demo_results([0.3, 0.2, 0.1]))["emergence"]["induction"]
    assert em["step"] is None and em["reason"] == "the level never rises"


# -- per-token loss trajectory and the induction circuit ----------------------------------------
def known_trajectory(a: list[float], b: list[float]) -> list[list[float]]:
    """[checkpoints, 3 tokens]: per-token offsets + a[i] x v1 + b[i] x v2 with v1, v2 orthonormal,
    a and b centred and orthogonal, so the principal coordinates are a and b (up to sign)."""
    v1, v2, offset = (0.6, 0.8, 0.0), (0.8, -0.6, 0.0), (5.0, 4.0, 3.0)
    return [[o + ai * x + bi * y for o, x, y in zip(offset, v1, v2)] for ai, bi in zip(a, b)]


def test_principal_trajectory_recovers_known_components_with_the_documented_sign():
    from probes.summary import principal_trajectory
    out = principal_trajectory(known_trajectory([-3, -1, 1, 3], [1, -1, -1, 1]))
    assert out["pc1"] == pytest.approx([-3, -1, 1, 3]) and out["pc2"] == pytest.approx([1, -1, -1, 1])
    assert out["explained"] == pytest.approx([20 / 24, 4 / 24])
    # a falling first component is flipped so that it rises from the first to the last checkpoint;
    out = principal_trajectory(known_trajectory([3, 1, -1, -3], [0.5, -1.5, 1.5, -0.5]))
    assert out["pc1"] == pytest.approx([-3, -1, 1, 3]) and out["pc2"] == pytest.approx([-0.5, 1.5, -1.5, 0.5])
    assert out["explained"] == pytest.approx([20 / 25, 5 / 25])
    # a component equal at both ends (the first case's pc2, whatever sign SVD gave) starts positive
    out = principal_trajectory(known_trajectory([-3, -1, 1, 3], [-1, 1, 1, -1]))
    assert out["pc2"] == pytest.approx([1, -1, -1, 1])
    flat = principal_trajectory([[1.0, 2.0], [1.0, 2.0]])  # nothing moves: zeros, no variance explained
    assert flat["pc1"] == [0.0, 0.0] and flat["explained"] == [0.0, 0.0]


def with_token_losses(results: dict[int, dict], n_tokens: int = 6) -> dict[int, dict]:
    """Per-token losses that move along one direction with the checkpoint index."""
    for i, step in enumerate(sorted(results)):
        results[step]["induction"]["token_losses"] = {
            "values": [4.0 - 0.1 * i * (t % 3) for t in range(n_tokens)], "n_tokens": n_tokens}
        results[step]["induction"]["position_loss"] = [4.0, 3.0]
    return results


def test_summarize_writes_the_trajectory_and_names_the_circuit():
    results = with_token_losses(demo_results(issue_series()))
    for s in DEMO_STEPS:  # previous-token heads: (0, 1) best in layer 0, but (1, 3) best overall
        prev = [[0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.1, 0.9]]
        results[s]["induction"]["previous_token"] = prev
        results[s]["induction"]["induction_control"] = matrix(0.02, 0.01)
    results[DEMO_STEPS[0]]["induction"]["token_losses"]["values"] = [1.0]  # another token count: left out
    summary = summarize(results)
    t = summary["trajectory"]
    assert t["steps"] == DEMO_STEPS[1:] and t["n_tokens"] == 6 and t["reason"] is None
    # the losses move along one line: one component explains everything and rises with the index
    assert t["explained"] == pytest.approx([1.0, 0.0], abs=1e-9)
    assert t["pc1"] == sorted(t["pc1"]) and t["pc1"][0] < t["pc1"][-1]
    assert "token_losses" not in str(summary["series"].keys()) and "position_loss" not in str(summary["series"].keys())
    c = summary["induction_circuit"]
    assert c["induction_head"] == [1, 2] and c["previous_token_head"] == [0, 1]
    assert c["step"] == summary["emergence"]["induction"]["step"] == 200 and c["at_step"] == DEMO_STEPS[-1]
    assert c["control"] == pytest.approx(0.02) and c["previous_token_score"] == pytest.approx(0.7)


def test_no_trajectory_or_circuit_from_too_little_says_why():
    summary = summarize(demo_results([0.01]))
    assert summary["trajectory"]["pc1"] == [] and "needs two" in summary["trajectory"]["reason"]
    c = summarize(demo_results([0.01, 0.01, 0.01]))["induction_circuit"]
    assert c["induction_head"] == [1, 2] and c["step"] is None


def test_a_climb_over_dense_checkpoints_is_abrupt_when_short_in_steps():
    """Checkpoints every 25 steps around a change (--ckpt-window) split a climb from 650 to 800 into
    six intervals; it still takes under a quarter of the steps trained, so it is abrupt. The same
    climb counted by intervals alone would be gradual, and a ramp over most of training stays gradual."""
    from probes.emergence import largest_sustained_rise
    steps = list(range(0, 1601, 25))
    values = [0.01 if s <= 650 else 0.55 if s >= 800 else 0.01 + 0.54 * (s - 650) / 150 for s in steps]
    got = largest_sustained_rise(steps, values, 0.1)
    assert got["detected"] and got["abrupt"] and got["transition_intervals"] > 2
    # the climb counts from the last checkpoint within 20% of the rise above the before level
    # (675: 0.10 < 0.118) to the first within 20% of the after level (775: 0.46 >= 0.442)
    assert (got["transition_from_step"], got["transition_to_step"], got["transition_steps"]) == (675, 775, 100)
    assert not largest_sustained_rise(steps, values, 0.1, abrupt_max_share=0.0)["abrupt"]
    ramp = [0.01 + 0.54 * s / 1600 for s in steps]
    assert not largest_sustained_rise(steps, ramp, 0.1)["abrupt"]
