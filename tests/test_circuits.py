"""summary.json["circuits"]: the handover rule on planted series and on seeded noise, the edge rule
on planted composition series, and the whole summary on checkpoints of the hand-built induction
circuit (tests/_induction_circuit.py) whose previous-token head forms first, whose induction head
forms later in L1H0 and then moves to L1H1: the roles appear where they were built, with the
bracketing checkpoints of the induction rule, the job's move is a handover, and the K-composition
edge rises with each induction head."""
from __future__ import annotations

import numpy as np
import pytest

from probes.analyse.circuits import edge_rises, handovers, induction_k_edge
from probes.measure.composition import composition_result
from probes.measure.head_roles import head_roles_result
from probes.measure.induction import multi_period_scores
from probes.measure.random_tokens import random_periods, random_token_sets
from probes.analyse.summary import summarize

from _induction_circuit import BOS, N_CTX, V, circuit_model

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = list(range(0, 160, 10))


def series(n: int, seed: int, noise: float, level: float = 0.2) -> np.ndarray:
    """[n, 4, 4] scores: every head at `level` plus Gaussian noise."""
    return level + noise * np.random.default_rng(seed).standard_normal((n, 4, 4))


# -- handovers ----------------------------------------------------------------------------------
def test_a_planted_handover_is_found_at_its_checkpoint():
    seed = 1
    print("seed", seed)
    m = series(12, seed, 0.02)
    m[:6, 1, 0] += 0.6   # L1H0 holds the role ...
    m[6:, 2, 1] += 0.6   # ... until L2H1 takes it at the 7th checkpoint
    steps = [10 * i for i in range(12)]
    found = handovers("induction", steps, m.tolist(), 0, (1, 0))
    assert [{k: e[k] for k in ("role", "from_head", "to_head", "step", "from_step")} for e in found] == [
        {"role": "induction", "from_head": "L1H0", "to_head": "L2H1", "step": 60, "from_step": 50}]
    assert found[0]["lead"] > found[0]["margin"] >= 0.05
    # taken back later: a second handover (one of the pair's two jumps now counts in its noise level, so
    # this one needs a longer series or a larger lead: both here)
    m = series(24, seed, 0.02)
    m[:6, 1, 0] += 0.6
    m[6:, 2, 1] += 0.6
    m[14:, 1, 0] += 1.2
    back = handovers("induction", [10 * i for i in range(24)], m.tolist(), 0, (1, 0))
    assert [(e["from_head"], e["to_head"], e["step"]) for e in back] == [("L1H0", "L2H1", 60), ("L2H1", "L1H0", 140)]


def test_a_lead_of_one_checkpoint_or_cut_short_by_the_end_is_no_handover():
    m = series(12, 2, 0.02)
    m[:, 1, 0] += 0.6
    m[5, 3, 3] += 1.0    # one checkpoint ahead, then behind again
    m[11, 0, 2] += 1.0   # ahead at the last checkpoint only: not yet
    assert handovers("r", list(range(12)), m.tolist(), 0, (1, 0)) == []
    # too few checkpoints after the role appears to tell a lead from noise
    short = series(5, 3, 0.02)
    short[2:, 2, 2] += 0.9
    assert handovers("r", list(range(5)), short.tolist(), 0, (1, 0)) == []


def test_near_equal_heads_on_noise_hand_nothing_over():
    """All 16 heads at the same level with Gaussian noise, at two noise sizes: the holder is never
    beaten beyond the margin for two checkpoints in a row (the rule's rate on such series is about
    0.05% at 20 checkpoints)."""
    seeds = range(300)
    print("seeds", seeds.start, "to", seeds.stop - 1)
    for noise in (0.02, 0.1):
        false = [s for s in seeds if handovers("r", list(range(20)), series(20, s, noise).tolist(), 0, (0, 0))]
        assert len(false) <= 1, (noise, false)


# -- edges --------------------------------------------------------------------------------------
def composition(k01: float, k02: float, threshold: float = 0.1) -> dict:
    """A composition result of 3 layers x 1 head: K-scores L0H0 -> L1H0 and L0H0 -> L2H0 given,
    every other score 0.05."""
    scores = {kind: np.full((3, 1, 3, 1), 0.05) for kind in ("q", "k", "v")}
    scores["k"][0, 0, 1, 0], scores["k"][0, 0, 2, 0] = k01, k02
    thresholds = {kind: np.full((3, 1, 3, 1), threshold).tolist() for kind in ("q", "k", "v")}
    return {**{kind: s.tolist() for kind, s in scores.items()}, "baseline": {"threshold": thresholds}}


def test_an_edge_rises_when_it_crosses_its_baseline_and_stays():
    k01 = [0.05, 0.06, 0.05, 0.2, 0.25, 0.3, 0.3]     # crosses at step 30 and stays
    k02 = [0.05, 0.2, 0.05, 0.05, 0.05, 0.05, 0.05]   # one checkpoint above: no rise
    results = {10 * i: {"composition": composition(a, b)} for i, (a, b) in enumerate(zip(k01, k02))}
    assert edge_rises(sorted(results), results) == [
        {"kind": "k", "from_head": "L0H0", "to_head": "L1H0", "step": 30, "from_step": 20, "score": 0.2,
         "threshold": 0.1}]
    above = {10 * i: {"composition": composition(0.3, 0.05)} for i in range(5)}  # above from the start: no rise
    assert edge_rises(sorted(above), above) == []


def test_the_induction_k_edge_is_set_beside_the_induction_change():
    """The K-edge from the best earlier previous-token head to the induction head: its baseline
    crossing and the induction rule's rise of its score, each lined up within 15% of the change."""
    steps = list(range(0, 200, 10))
    k01 = [0.05 + 0.001 * (i % 3) + (0.2 if s >= 120 else 0.0) for i, s in enumerate(steps)]
    results = {s: {"composition": composition(k, 0.05)} for s, k in zip(steps, k01)}
    heads = {"head_roles.previous_token": [[[0.9], [0.1], [0.1]]] * len(steps)}
    change = {"detected": True, "step": 110, "from_step": 100, "best_head": {"layer": 1, "head": 0}}
    edge = induction_k_edge(steps, results, heads, change, edge_rises(steps, results))
    assert (edge["from_head"], edge["to_head"]) == ("L0H0", "L1H0")
    assert (edge["crossing_step"], edge["crossing_from_step"], edge["crossing_lines_up"]) == (120, 110, True)
    assert edge["rise"]["detected"] and edge["rise"]["step"] == 120 and edge["rise_lines_up"] is True
    late = induction_k_edge(steps, results, heads, {**change, "step": 60, "from_step": 50}, [])
    assert late["crossing_step"] is None and late["rise_lines_up"] is False  # 120 is not within 15% of 60
    in_layer_0 = induction_k_edge(steps, results, heads, {**change, "best_head": {"layer": 0, "head": 0}}, [])
    assert "layer 0" in in_layer_0["reason"]


# -- the whole summary on the hand-built circuit --------------------------------------------------
@pytest.fixture(scope="module")
def circuit_summary() -> dict:
    """16 checkpoints: L0H0 becomes a previous-token head at step 30, L1H0 an induction head at 60,
    and at 100 the induction head's weights move to L1H1. Each checkpoint's weights wobble a little."""
    sets = random_token_sets(np.arange(1, V), 4, random_periods(N_CTX), BOS, seed=0)
    results = {}
    for step in STEPS:
        model = circuit_model(previous=float(step >= 30), induction=float(60 <= step < 100),
                              moved=float(step >= 100), jitter=0.002, jitter_seed=step)
        induction = multi_period_scores(model, sets, N_CTX)
        results[step] = {"step": step, "induction": induction, "composition": composition_result(model),
                         "head_roles": head_roles_result(model, sets, induction=induction)}
    return summarize(results)


def test_roles_appear_where_the_circuit_was_built_by_the_induction_rule(circuit_summary):
    c = circuit_summary["circuits"]
    assert set(c) >= {"roles", "handovers", "edges"}
    roles = {e["role"]: e for e in c["roles"]}
    assert all(set(e) >= {"role", "head", "step", "from_step"} for e in c["roles"])
    assert {k: roles["previous_token"][k] for k in ("head", "step", "from_step")} == {
        "head": "L0H0", "step": 30, "from_step": 20}
    assert {k: roles["induction"][k] for k in ("head", "step", "from_step")} == {
        "head": "L1H0", "step": 60, "from_step": 50}
    assert roles["copying"]["head"] == "L1H0" and roles["copying"]["step"] == 60
    assert set(roles) == {"previous_token", "induction", "copying"}, c["role_rises"]
    # the same change and head as the induction entry of the summary (one rule)
    found = circuit_summary["emergence"]["induction"]
    assert (found["step"], found["from_step"]) == (60, 50)
    assert (found["best_head"]["layer"], found["best_head"]["head"]) == (1, 0)


def test_the_moved_induction_head_is_a_handover_and_its_k_edge_rises(circuit_summary):
    c = circuit_summary["circuits"]
    moved = [{k: e[k] for k in ("role", "from_head", "to_head", "step")} for e in c["handovers"]]
    assert moved == [{"role": "copying", "from_head": "L1H0", "to_head": "L1H1", "step": 100},
                     {"role": "induction", "from_head": "L1H0", "to_head": "L1H1", "step": 100}]
    edges = [{k: e[k] for k in ("kind", "from_head", "to_head", "step", "from_step")} for e in c["edges"]]
    assert edges == [{"kind": "k", "from_head": "L0H0", "to_head": "L1H0", "step": 60, "from_step": 50},
                     {"kind": "k", "from_head": "L0H0", "to_head": "L1H1", "step": 100, "from_step": 90}]
    edge = c["induction_k_edge"]
    assert (edge["from_head"], edge["to_head"], edge["induction_step"]) == ("L0H0", "L1H0", 60)
    assert edge["crossing_step"] == 60 and edge["crossing_lines_up"] is True
    # its score rises at 60 and falls back at 100, when the job moves: no sustained rise of level
    assert edge["rise"]["detected"] is False and edge["rise_lines_up"] is False
    assert c["baseline"]["chance_rms"] == pytest.approx((V + V + N_CTX - 1) ** -0.5)  # 1 / sqrt(d_model - 1)


def test_circuits_of_results_without_head_roles_or_composition_are_empty_with_reasons():
    results = {s: {"step": s, "induction": {"induction": [[0.1 * (s > 20)]], "previous_token": [[0.0]]}}
               for s in range(0, 60, 10)}
    c = summarize(results)["circuits"]
    assert c["roles"] == [] and c["handovers"] == [] and c["edges"] == [] and c["baseline"] is None
    assert c["role_rises"]["induction"]["reason"] and c["induction_k_edge"]["reason"]
