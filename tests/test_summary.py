"""Emergence across checkpoints through `probes.summarize`, on result dicts of the shape the probes
write whose answer is known by construction: the induction phase change (and in-context copying
apart from it), head concentration where heads matter, the rules and thresholds summary.json
states, and the per-token loss trajectory and induction circuit beside them. The phase-change rule
itself is tested in test_rise_rule.py."""
from __future__ import annotations

import pytest
import torch

from probes import summarize
from probes.analyse.emergence_rules import THRESHOLDS, rules
from probes.measure.induction import icl_score
from probes.measure.metrics import gini
from probes.analyse.phenomena import RISE_KEYS
from probes.analyse.trajectory import principal_trajectory

from _synthetic_series import DEMO_STEPS, issue_series, wobbly_jump


# -- through probes.summarize on result dicts of the probes' shape ------------------------------
def matrix(top: float, rest: float, L: int = 2, H: int = 4) -> list[list[float]]:
    """[L][H] with one head at `top` and the others at `rest`."""
    m = [[rest] * H for _ in range(L)]
    m[1][2] = top
    return m


def probe_result(step: int, induction: float, copying: float, icl_late_loss: float, top_head: float,
                 tokens_per_step: int = 2048) -> dict:
    """A result file's content with the keys the probes write (see probes.measure.compute and
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

