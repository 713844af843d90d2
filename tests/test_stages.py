"""The stage rule of probes/analyse/stages.py: turning points of the LLC series on series with known
boundaries, none on noise, a spike or a steady climb; and summary.json["stages"] from results."""
from __future__ import annotations

import random

import numpy as np
import pytest

from probes.analyse.stages import MIN_POINTS, STAGE_RULE, median3, stage_boundaries, stages, turning_points
from probes.analyse.summary import summarize

STEPS = [0, 1, 2, 4, 8, 16, 32, 50, 100, 150, 200, 250, 300, 350, 400, 450, 500, 550, 600, 700, 800, 900, 1000, 1200]


def piecewise(knots: list[tuple[int, float]], steps: list[int] = STEPS) -> list[float]:
    """Straight lines (over checkpoint index) between (index, value) knots."""
    out = []
    for i in range(len(steps)):
        (i0, v0), (i1, v1) = next((a, b) for a, b in zip(knots, knots[1:]) if a[0] <= i <= b[0])
        out.append(v0 + (v1 - v0) * (i - i0) / (i1 - i0))
    return out


def test_known_peak_and_trough_are_found_with_their_bracketing_checkpoints():
    rng = np.random.default_rng(0)
    clean = piecewise([(0, 5.0), (8, 40.0), (14, 25.0), (23, 60.0)])  # up to index 8, down to 14, up again
    noisy = [v + rng.normal(0, 0.5) for v in clean]
    found = stage_boundaries(STEPS, noisy)
    assert [(b["kind"], b["step"]) for b in found["boundaries"]] == [("peak", STEPS[8]), ("trough", STEPS[14])]
    peak = found["boundaries"][0]
    assert (peak["from_step"], peak["to_step"]) == (STEPS[7], STEPS[9])
    assert peak["change_before"] > 30 and peak["change_after"] < -10
    assert [s["trend"] for s in found["stages"]] == ["rising", "falling", "rising"]
    assert found["stages"][0]["from_step"] == 0 and found["stages"][-1]["to_step"] == STEPS[-1]
    assert found["reason"] is None and found["threshold"] > 0


def test_pure_noise_has_no_boundary():
    for _ in range(20):
        seed = random.randrange(2 ** 32)
        print(f"seed {seed}")
        rng = np.random.default_rng(seed)
        noise = list(30 + rng.normal(0, 1.0, len(STEPS)))
        found = stage_boundaries(STEPS, noise)
        assert found["boundaries"] == [], (seed, found)


def test_a_spike_a_steady_climb_and_a_plateau_make_no_boundary():
    climb = [float(i) for i in range(len(STEPS))]
    assert stage_boundaries(STEPS, climb)["boundaries"] == []
    spike = [10.0] * len(STEPS)
    spike[9] = 60.0  # one outlying checkpoint: the median of three removes it
    assert stage_boundaries(STEPS, spike)["boundaries"] == []
    assert median3([1, 9, 1, 1]) == [1, 1, 1, 1]


def test_chain_spread_widens_the_threshold():
    rng = np.random.default_rng(1)
    bump = [v + rng.normal(0, 0.2) for v in piecewise([(0, 10.0), (10, 14.0), (23, 10.0)])]
    assert len(stage_boundaries(STEPS, bump)["boundaries"]) == 1
    wide = stage_boundaries(STEPS, bump, spread=[3.0] * len(STEPS))  # chains disagree by more than the bump
    assert wide["boundaries"] == [] and wide["noise"] == pytest.approx(3.0)


def test_missing_values_few_points_and_bad_input():
    values = piecewise([(0, 5.0), (8, 40.0), (23, 10.0)])
    gappy = [v if i % 3 else None for i, v in enumerate(values)]
    assert [b["kind"] for b in stage_boundaries(STEPS, gappy)["boundaries"]] == ["peak"]
    few = stage_boundaries(STEPS[:MIN_POINTS - 1], values[:MIN_POINTS - 1])
    assert few["boundaries"] == [] and f"fewer than the {MIN_POINTS}" in few["reason"]
    with pytest.raises(ValueError, match="same length"):
        stage_boundaries(STEPS, values[:-1])
    with pytest.raises(ValueError, match="positive number"):
        turning_points([1.0, 2.0], 0.0)


def llc_entry(mean: float, std: float = 0.1, trusted: bool = True) -> dict:
    return {"mean": mean, "std": std, "diagnostics": {"trusted": trusted}}


def test_summary_holds_the_stages_one_value_per_step():
    values = piecewise([(0, 5.0), (8, 40.0), (23, 10.0)])
    results = {s: {"step": s, "version": 4} for s in STEPS}
    for i, s in enumerate(STEPS):
        if i != 3:  # one checkpoint without an llc result
            results[s]["llc"] = llc_entry(values[i], trusted=i != 8)
    summary = summarize(results)
    st = summary["stages"]
    assert len(st["llc"]) == len(summary["steps"]) and st["llc"][3] is None and st["llc"][0] == 5.0
    (b,) = st["boundaries"]
    assert b["step"] == STEPS[8] and b["trusted"] is False  # the peak's own estimate failed its diagnostics
    assert st["rule"] == STAGE_RULE and "zigzag" in st["rule"]
    assert not any(k.startswith("llc.trace") for k in summary["series"])
    empty = stages(STEPS, {s: {} for s in STEPS})
    assert empty["llc"] == [None] * len(STEPS) and empty["boundaries"] == [] and empty["reason"]
